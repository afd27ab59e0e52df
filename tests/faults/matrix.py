"""The fault matrix's declarations and its one way of running a cell.

A cell is one command killed at one phase: the command runs in a child process with a private
state directory and CNITRACE_FAULT naming the checkpoint (cnitrace.core.faults); it must die by
SIGKILL *at that checkpoint* (a phase that is never reached fails the cell: every phase below is
declared because it exists for that command), then `cnitrace cleanup` runs on the same state
directory, and the node's picture must be what it was before the command started.

Residue is what differs between the two pictures and is ours: anything named after the cell's
objects (the lab's name, every name the killed run recorded), and anything that cannot be
attributed by name (BPF programs and links, rulesets of the host namespace, sysctls, the private
state file's live records, files left in the private state or cache directory). Named objects of
other work on this shared machine (other sessions' namespaces and processes) are not residue;
they are listed as foreign in the failure message when a cell fails. A difference must persist
for SETTLE_S to count: the kernel frees a deleted namespace's programs asynchronously.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

from cnitrace.core.faults import CHECKPOINTS, ENV
from cnitrace.core.state import StateFile
from tests.support.nodestate import node_state

CNITRACE = [sys.executable, "-m", "cnitrace"]
DATAPATHS = ("calico", "kube-router", "weave", "nft", "flannel", "antrea", "cilium")   # lab/datapaths/registry.py
RULES = "100"
SETTLE_S = 15.0

# command -> its phases, each (phase, CNITRACE_FAULT). A phase missing here does not exist for
# that command (e.g. a profile records nothing of its own when BPF_ENABLE_STATS works: its probes
# are file descriptors that die with it; nothing is removed at its end either).
PHASES: dict[str, tuple[tuple[str, str], ...]] = {
    # records: the description's path, node and pod namespaces, the datapath's own (antrea: its OVS
    # directory and daemons; cilium: pins, bpffs), the server process
    "lab up": (("before-record", "before-record"),          # nothing recorded yet
               ("after-record", "after-record"),            # the first record written, nothing created
               ("after-create", "before-record@3"),         # the node namespace exists
               ("lab-built", "lab-built"),                  # the datapath programmed, no server yet
               ("report", "report")),                       # all built, the description not written
    "lab down": (("teardown", "before-remove"),             # nothing removed yet
                 ("mid-teardown", "before-remove@3")),      # the server and a namespace removed
    # on a kept lab, --traffic probe, --duration 1, --no-calibrate (calibration has its own rows)
    "profile": (("window", "window"),                       # probes attached, before the traffic
                ("report", "report")),                      # probes detached, before the document
    # on the kept lab, --traffic rr and stream: the load servers and the nft redirect they record in
    # the lab's server pod (the redirect first, then each server), killed while the load runs
    "profile rr": (("load", "after-record@2"),),
    "profile stream": (("load", "after-record@2"),),
    # --interval 1 --bpf-stats sysctl: the sysctl is its one recorded object
    "snapshot": (("before-record", "before-record"),
                 ("after-record", "after-record"),          # recorded, stats not yet turned on
                 ("window", "window")),                     # stats on through the sysctl
    # `sweep --datapath calico --rules 0 --quick`, calibration cached: one point's lab
    "sweep point": (("before-record", "before-record"),
                    ("after-record", "after-record"),
                    ("after-create", "before-record@3"),
                    ("lab-built", "lab-built"),
                    ("window", "window"),                   # the point's lab up, before its traffic
                    ("teardown", "before-remove"),          # the point's lab down begins
                    ("report", "report@2")),                # report@1 is the lab's description
    # calibrate.rules.cached_or_measure_shapes with an empty CNITRACE_CACHE_DIR (3 bench namespaces)
    "calibration": (("before-record", "before-record"),
                    ("after-record", "after-record"),
                    ("after-create", "before-record@2"),    # the first bench namespace exists
                    ("calibrate", "calibrate@2"),           # a shape's rules loaded, probes attached
                    ("teardown", "before-remove")),         # probes detached, namespaces next
    # `trace --lab L --probe tcp:SERVER:8080` on the kept lab: per traced namespace it records the
    # nftrace table, then the monitor's log path, then the `nft monitor trace` process
    "trace": (("after-record", "after-record"),             # the table recorded, not created
              ("after-create", "before-record@2"),          # the table exists, no monitor yet
              ("window", "window")),                        # table and monitor up, before the probe
}
# Commands of the issue that are not cells, and why (no pytest skip: they are simply not rows).
NOT_CELLS: dict[str, str] = {}


@dataclasses.dataclass
class Outcome:
    """One row of the summary table."""
    group: str                  # "kill", "corrupt", "readonly"
    command: str
    phase: str
    fault: str = ""
    tried: int = 1
    ok: bool = True             # died at the injected fault (kill rows); handled as required (the others)
    cleanup_ok: bool = True
    residue: list[str] = dataclasses.field(default_factory=list)
    foreign: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    @property
    def survived(self) -> bool:
        return self.ok and self.cleanup_ok and not self.residue

    def explain(self) -> str:
        lines = [f"{self.command} / {self.phase} ({self.fault}): {self.note}"]
        lines += [f"  residue: {r}" for r in self.residue[:30]]
        lines += [f"  (foreign, not counted: {f})" for f in self.foreign[:10]]
        return "\n".join(lines)


RESULTS: list[Outcome] = []


@contextlib.contextmanager
def row(group: str, command: str, phase: str, fault: str = "") -> Iterator[Outcome]:
    """A summary row for a test that is not a kill cell: not survived if the block raises."""
    out = Outcome(group, command, phase, fault)
    RESULTS.append(out)
    t0 = time.monotonic()
    try:
        yield out
    except BaseException as exc:
        out.ok = False
        out.note = out.note or f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise
    finally:
        out.seconds = time.monotonic() - t0


def fault_of(command: str, phase: str) -> str:
    return dict(PHASES[command])[phase]


def cells(command: str) -> list[tuple[str, str]]:
    for _, fault in PHASES[command]:
        assert fault.partition("@")[0] in CHECKPOINTS, fault
    return list(PHASES[command])


# --- private directories and the CLI -----------------------------------------------------------

@dataclasses.dataclass
class Private:
    """A private state directory (and cache directory) and the environment that points at them."""
    state: Path
    cache: Path
    env: dict[str, str]

    @classmethod
    def make(cls, cache: Path | None = None) -> "Private":
        tag = uuid.uuid4().hex[:8]
        state = Path(f"/tmp/cnit-fstate-{tag}")
        own_cache = cache or Path(f"/tmp/cnit-fcache-{tag}")
        own_cache.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != ENV}
        env.update(CNITRACE_STATE_DIR=str(state), CNITRACE_CACHE_DIR=str(own_cache))
        return cls(state, own_cache, env)

    def close(self, *, keep_cache: bool = False) -> None:
        """What the test's finally does, whatever happened: force-clean, then remove the directories."""
        if self.state.exists():
            subprocess.run([*CNITRACE, "cleanup", "--force"], env=self.env, capture_output=True, timeout=300)
        shutil.rmtree(self.state, ignore_errors=True)
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)

    def cli(self, *args: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.env, **({ENV: fault} if fault else {}))
        return subprocess.run([*CNITRACE, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(self.env, **({ENV: fault} if fault else {}))
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def files(self) -> list[str]:
        """Files in the private directories other than lock files (kept on purpose: an flock needs
        a file, and removing one that another process holds would break the lock)."""
        out = []
        for root in (self.state, self.cache):
            if root.exists():
                out += [str(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")]
        return out


def one_line(stderr: str) -> bool:
    """A clear refusal: no traceback, and one line saying why (cnitrace's error boundary)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return "Traceback" not in stderr and len(lines) == 1


# --- the node's picture, compared ------------------------------------------------------------------

ANONYMOUS = frozenset({"state-file", "private-files"})
BPF_KEYS = {"bpf-progs": "prog", "bpf-links": "link"}


def tokens_of(state: Path, *names: str) -> set[str]:
    """Names that make an object ours: the given ones and every name the state file records."""
    out = {n for n in names if n}
    for r in StateFile(state).live():
        out.add(r.name)
        if r.owner.startswith("lab:"):
            out.add(f"cnit-{r.owner[4:]}-")
        if r.kind == "netns" and "-" in r.name:
            out.add(r.name.rsplit("-", 1)[0] + "-")
    return out


def _ours(item: str, tokens: set[str]) -> bool:
    return any(t in item for t in tokens)


def _holders() -> dict[str, list[str]]:
    """'prog:ID' / 'link:ID' → the processes holding a file descriptor of it ('pid N comm in NETNS')."""
    netns = {f"net:[{os.stat(e.path).st_ino}]": e.name for e in os.scandir("/run/netns")} \
        if os.path.isdir("/run/netns") else {}
    out: dict[str, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not target.startswith("anon_inode:bpf") or target == "anon_inode:bpf-map":
                    continue
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                ns = os.readlink(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            for line in info.splitlines():
                k, _, v = line.partition(":")
                if k in ("prog_id", "link_id"):
                    out.setdefault(f"{k[:4]}:{v.strip()}", []).append(f"pid {pid} {comm} in {netns.get(ns, ns)}")
    return out


def _attachments() -> dict[str, str]:
    """'prog:ID' / 'link:ID' → where it is pinned or attached (tc/xdp in a named namespace or the host's)."""
    out: dict[str, str] = {}
    for pin in Path("/sys/fs/bpf").rglob("*"):
        if pin.is_file() and pin.name not in ("maps.debug", "progs.debug"):
            for kind in ("prog", "link"):
                r = subprocess.run(["bpftool", "-j", kind, "show", "pinned", str(pin)], capture_output=True, text=True)
                if r.returncode == 0:
                    with contextlib.suppress(ValueError, AttributeError, KeyError):
                        out[f"{kind}:{json.loads(r.stdout)['id']}"] = f"pinned at {pin}"
    names = [""] + (sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [])
    for ns in names:
        argv = ["bpftool", "-j", "net", "list"]
        r = subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, capture_output=True, text=True)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for section in json.loads(r.stdout):
                for hook, entries in section.items():
                    for e in entries:
                        if "id" in e:
                            out[f"prog:{e['id']}"] = f"{hook} on {e.get('devname', '?')} in {ns or 'host'}"
    return out


class Owners:
    """Who holds or carries a BPF program or link, looked up only when one is left to explain."""

    def __init__(self) -> None:
        self._holders: dict[str, list[str]] | None = None
        self._attached: dict[str, str] | None = None

    def __call__(self, key: str, item: str) -> tuple[str, bool]:
        """(owner description, whether a live process holds it)."""
        ref = f"{BPF_KEYS[key]}:{item.split(':', 1)[0]}"
        if self._holders is None:
            self._holders, self._attached = _holders(), _attachments()
        held = self._holders.get(ref)
        if held:
            return "held by " + ", ".join(held), True
        return self._attached.get(ref, "held by no process, pinned nowhere"), False


def diff(before: dict[str, Any], after: dict[str, Any], tokens: set[str]) -> tuple[list[str], list[str]]:
    """(residue, foreign): the differences that are ours, and the named ones of other work.

    A BPF program or link that appeared is ours unless a live process holds it (ours are dead) or
    it is pinned or attached somewhere named for other work; one that went away is never residue."""
    residue: list[str] = []
    foreign: list[str] = []
    owner = Owners()
    for key in sorted(before.keys() | after.keys()):
        b, a = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(b, list) and isinstance(a, list):
            cb, ca = collections.Counter(map(str, b)), collections.Counter(map(str, a))
            for sign, items in (("+", ca - cb), ("-", cb - ca)):
                for item in items.elements():
                    if key in BPF_KEYS:
                        if sign == "-":
                            foreign.append(f"{key} -{item}")
                            continue
                        where, live = owner(key, item)
                        mine = _ours(where, tokens) or not (live or "cnit" in where)
                        item = f"{item} ({where})"
                    else:
                        mine = key in ANONYMOUS or _ours(item, tokens)
                    (residue if mine else foreign).append(f"{key} {sign}{item}")
        elif isinstance(b, dict) and isinstance(a, dict):
            for k in sorted(b.keys() | a.keys()):
                if b.get(k) == a.get(k):
                    continue
                if key == "tc" and (k not in a or k not in b) and not _ours(k, tokens):
                    foreign.append(f"tc {k}: the interface came or went")
                    continue
                residue.append(f"{key}[{k}]: {str(b.get(k))[:120]!r} -> {str(a.get(k))[:120]!r}")
        else:
            lines = [line for line in difflib.unified_diff(str(b).splitlines(), str(a).splitlines(), lineterm="", n=0)
                     if line[:1] in "+-" and not line.startswith(("+++", "---"))]
            residue.append(f"{key}: {' | '.join(lines[:6])[:300]}")
    return residue, foreign


def snap(priv: Private | None) -> dict[str, Any]:
    """node_state with the private state file's records and the private directories' files."""
    if priv is None:
        return node_state()
    return {**node_state(priv.state), "private-files": priv.files()}


def wait_clean(before: dict[str, Any], tokens: set[str], priv: Private | None,
               timeout: float = SETTLE_S) -> tuple[list[str], list[str]]:
    """Residue once the node has had `timeout` to settle (empty as soon as there is none)."""
    deadline = time.monotonic() + timeout
    while True:
        residue, foreign = diff(before, snap(priv), tokens)
        if not residue or time.monotonic() >= deadline:
            return residue, foreign
        time.sleep(0.3)


def picture(priv: Private | None) -> dict[str, Any]:
    """The node's picture before a cell, settled (an earlier cell's namespaces may still be freeing)."""
    prev = snap(priv)
    for _ in range(20):
        time.sleep(0.2)
        cur = snap(priv)
        if cur == prev:
            return cur
        prev = cur
    return prev


# --- a kill cell -------------------------------------------------------------------------------

def kill_cell(priv: Private, command: str, phase: str, argv: Sequence[str], *, before: dict[str, Any],
              names: Sequence[str] = (), python: bool = False, cleanup: Sequence[str] = ("--all",),
              label: str | None = None, timeout: float = 300) -> Outcome:
    """Run `argv` (cnitrace arguments, or Python code when `python`) with the phase's fault, then
    `cnitrace cleanup CLEANUP`; record and return the outcome (`label`: the row's command)."""
    fault = fault_of(command, phase)
    t0 = time.monotonic()
    out = Outcome("kill", label or command, phase, fault)
    RESULTS.append(out)
    p = priv.python(argv[0], fault=fault, timeout=timeout) if python else priv.cli(*argv, fault=fault, timeout=timeout)
    out.ok = p.returncode == -9 and f"fault injected at {fault}" in p.stderr
    if not out.ok:
        out.note = ("not reached: finished with exit status " if p.returncode != -9 else "killed, but not by "
                    "the fault: exit ") + f"{p.returncode}; {(p.stderr.strip().splitlines() or [''])[-1][:200]}"
    tokens = tokens_of(priv.state, *names)
    c = priv.cli("cleanup", *cleanup)
    out.cleanup_ok = c.returncode == 0 and "Traceback" not in c.stderr and "could not remove" not in c.stderr
    if not out.cleanup_ok:
        out.note += f" cleanup failed ({c.returncode}): {c.stderr.strip()[-300:]}"
    out.residue, out.foreign = wait_clean(before, tokens, priv)
    out.seconds = time.monotonic() - t0
    return out

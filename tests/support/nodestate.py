"""A comparable picture of everything on the node that cnitrace could touch.

Used by tests to assert that a run leaves the node exactly as it found it: both
iptables backends, nftables, OVS bridges and flows, tc filters, BPF programs, links and
pins, network namespaces, the processes cnitrace may leave running (anything outside the
host's network namespace, orphans whose command line names cnit), the sysctls cnitrace may
change, and the live records of a state file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from cnitrace.core.state import StateFile

SYSCTLS = ("kernel.bpf_stats_enabled", "net.ipv4.ip_forward", "net.netfilter.nf_conntrack_max",
           "net.core.bpf_jit_enable")


def _out(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return f"<{argv[0]} missing>"
    return p.stdout if p.returncode == 0 else f"<rc={p.returncode}>"


def _strip_counters(text: str) -> str:
    # Counters and timestamps move with unrelated traffic; structure is what must not change.
    text = re.sub(r"^#.*$", "", text, flags=re.M)
    return re.sub(r"\[\d+:\d+\]", "[]", text)


def _pins(root: Path = Path("/sys/fs/bpf")) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(out)


def _bpf(kind: str) -> list[str]:
    """`id:type:name` of every BPF program (kind "prog") or link (kind "link") on the node."""
    try:
        items = json.loads(_out(["bpftool", "-j", kind, "list"]) or "[]")
    except ValueError:
        return [f"<bpftool {kind} list unreadable>"]
    return sorted(f"{i.get('id')}:{i.get('type')}:{i.get('name', '')}" for i in items if isinstance(i, dict))


def _processes() -> list[str]:
    """`netns command` of the processes a run could leave behind: those in another network
    namespace than this one (named by their /run/netns name where they have one), and orphans
    (reparented to pid 1) whose command line names cnit. No pids: a process replaced by an identical
    one is not a change. Kernel threads have no command line and are left out; so are commands
    still run by a live parent in this namespace (another session's `cnitrace` invocations)."""
    host = os.readlink("/proc/self/ns/net")
    names: dict[str, str] = {}
    if os.path.isdir("/run/netns"):
        for e in os.scandir("/run/netns"):
            try:
                names[f"net:[{os.stat(e.path).st_ino}]"] = e.name
            except OSError:
                continue
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            ns = os.readlink(f"/proc/{pid}/ns/net")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if cmd and (ns != host or (ppid == "1" and "cnit" in cmd)):
            out.append(f"{names.get(ns, ns if ns != host else 'host')} {cmd[:160]}")
    return sorted(out)


def node_state(state_dir: Path | None = None) -> dict[str, object]:
    """The node's picture; `state_dir`: whose state file's live records to include (default: the
    environment's, as cnitrace itself would read it)."""
    links = _out(["ip", "-o", "link", "show"])
    ifaces = [l.split(":")[1].strip().split("@")[0] for l in links.splitlines() if ":" in l]
    tc = {i: _out(["tc", "filter", "show", "dev", i, "ingress"]) + _out(["tc", "filter", "show", "dev", i, "egress"])
          for i in ifaces}
    ovs = _out(["ovs-vsctl", "--timeout=2", "show"]) if Path("/run/openvswitch/db.sock").exists() else "<no ovsdb>"
    return {
        "iptables-legacy": _strip_counters(_out(["iptables-legacy-save"])),
        "ip6tables-legacy": _strip_counters(_out(["ip6tables-legacy-save"])),
        "iptables-nft": _strip_counters(_out(["iptables-nft-save"])),
        "ip6tables-nft": _strip_counters(_out(["ip6tables-nft-save"])),
        "nft": _out(["nft", "list", "ruleset"]),
        "links": sorted(ifaces),
        "tc": tc,
        "ovs": ovs,
        "bpf-progs": _bpf("prog"),
        "bpf-links": _bpf("link"),
        "bpf-pins": _pins(),
        "netns": sorted(_out(["ip", "netns", "list"]).split()),
        "processes": _processes(),
        "sysctl": {s: _out(["sysctl", "-n", s]).strip() for s in SYSCTLS},
        "state-file": sorted((r.kind, r.name) for r in StateFile(state_dir).live()),
    }


def settled_node_state(timeout: float = 10.0, state_dir: Path | None = None, interval: float = 0.5) -> dict:
    """node_state() once it stops changing: the kernel frees a deleted namespace's tc programs and
    links asynchronously (a workqueue), so a snapshot right after an earlier test's teardown can
    still list objects that are already on their way out."""
    deadline = time.monotonic() + timeout
    prev = node_state(state_dir)
    while time.monotonic() < deadline:
        time.sleep(interval)
        cur = node_state(state_dir)
        if cur == prev:
            return cur
        prev = cur
    return prev

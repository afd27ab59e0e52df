"""tc_bpf: the run time of the selected tc / XDP BPF programs themselves, per program.

Why not bcc's attach: bcc 0.26 resolves fentry targets in vmlinux BTF only, and a BPF
program is no vmlinux function. So bcc (through the loader) only compiles progtime.bpf.c —
its maps exist and their fds are already in the instructions — and each entry/exit function
is loaded through cnitrace.probes.bpfsys: BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY/FEXIT,
attach_prog_fd = the target program, attach_btf_id = its main function's BTF type id (the
func_info record at instruction 0), then BPF_RAW_TRACEPOINT_OPEN (no name) links it. A
program without BTF cannot be traced so: where kprobes work, its interface's tc classify
path is timed instead (kprobe/kretprobe on tcf_classify, per interface); otherwise
bpf_stats stays its only figure, and the plan says why.

Lifetime: every object is an fd of this process (nothing pinned, no state-file entry needed):
close() — called by the Session on exit, SIGINT and SIGTERM — closes them, and a killed
process leaves nothing either (the kernel detaches a link with its last fd), so `cnitrace
cleanup` has nothing to find. bpf_stats of a traced program include the trampoline's cost.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterable, Mapping, Sequence

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.probes.bpfsys import (BPF_TRACE_FENTRY, BPF_TRACE_FEXIT, ProgInfo, attach_tracing, fd_ids,
                                    load_tracing, prog_fd_by_id, prog_info)
from cnitrace.probes.histogram import merge_cpus
from cnitrace.probes.specs import COUNTERS, FENTRY, KPROBE, OFFSETS, PROGTIME
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.capability import Host
from cnitrace.probes import btf as btfmod
from cnitrace.probes import ladder
from cnitrace.probes.loader import load
from cnitrace.probes.runtime import Choice
from cnitrace.probes.runtime import Figure
from cnitrace.probes.runtime import Filter
from cnitrace.probes.runtime import _fds
from cnitrace.probes.runtime import _kallsyms_has
from cnitrace.probes.runtime import cflags_for
from cnitrace.probes.runtime import fill_filters
from cnitrace.probes.runtime import netns_inode
from cnitrace.probes.runtime import parse_links

STAGE = "tc_bpf"
MAX_PROGS = 16                     # CNIT_MAX_PROGS in progtime.bpf.c: one entry/exit pair per slot
CLASSIFY_FN = "tcf_classify"       # runs a clsact hook's filters (cls_bpf included)


# --- pure: naming and what to attach where -------------------------------------------------------

def program_label(prog_id: int, name: str, type_name: str) -> str:
    """The name a program has in the profile's bpf stage (as cnitrace.attribution.datapath.bpf_programs)."""
    return f"{name or prog_id} (id {prog_id}, {type_name})"


@dataclasses.dataclass(frozen=True)
class ProgramTarget:
    """A selected program where it runs: kind 'tc' (hook ingress/egress) or 'xdp' (hook = mode)."""

    prog_id: int
    name: str
    kind: str
    hook: str
    iface: str
    netns: str = ""     # "" = the host namespace

    @property
    def where(self) -> str:
        return f"{self.netns}/{self.iface}" if self.netns else self.iface


def targets_from(attachments: Iterable[Any]) -> list[ProgramTarget]:
    """The bpfprog collector's attachments (objects or their to_json dicts) -> tc/XDP targets."""
    out: dict[tuple, ProgramTarget] = {}
    for a in attachments:
        d = a if isinstance(a, Mapping) else dataclasses.asdict(a)
        if d.get("kind") not in ("tc", "xdp"):
            continue
        t = ProgramTarget(int(d["prog_id"]), str(d.get("prog_name") or ""), str(d["kind"]), str(d.get("hook", "")),
                   str(d["target"]), str(d.get("netns") or ""))
        out.setdefault((t.prog_id, t.kind, t.hook, t.iface, t.netns), t)
    return list(out.values())


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which program gets fentry (slot = position), which interfaces' tc path gets the kprobe,
    and which programs keep bpf_stats only — each with its reason."""

    fentry: tuple[int, ...] = ()
    classify: tuple[tuple[str, str], ...] = ()               # (netns, iface)
    stats_only: tuple[tuple[int, str], ...] = ()             # (prog id, why)
    reason: str = ""

    @property
    def backend(self) -> str:
        return FENTRY if self.fentry else KPROBE if self.classify else COUNTERS

    @property
    def signal(self) -> str:
        return "modelled" if self.backend == COUNTERS else "measured"


def plan(targets: Sequence[ProgramTarget], *, fentry: tuple[bool, str], kprobe: tuple[bool, str],
         no_btf: Mapping[int, str], max_progs: int = MAX_PROGS) -> Plan:
    """fentry for every program the host and its BTF allow (up to `max_progs`); the tc path of
    the others' interfaces by kprobe where usable; bpf_stats only for the rest.

    `no_btf`: prog id -> why it cannot take fentry (no BTF, or not readable); absent = it can.
    """
    progs = list(dict.fromkeys(t.prog_id for t in targets))
    traced: list[int] = []
    why: dict[int, str] = {}
    for p in progs:
        if not fentry[0]:
            why[p] = f"fentry: {fentry[1]}"
        elif p in no_btf:
            why[p] = no_btf[p]
        elif len(traced) >= max_progs:
            why[p] = f"more than {max_progs} programs"
        else:
            traced.append(p)
    classify: list[tuple[str, str]] = []
    stats_only: list[tuple[int, str]] = []
    for p, w in why.items():
        tc = [t for t in targets if t.prog_id == p and t.kind == "tc"]
        if kprobe[0] and tc:
            classify += [(t.netns, t.iface) for t in tc if (t.netns, t.iface) not in classify]
        else:
            stats_only.append((p, f"{w}; kprobe: {kprobe[1] if not kprobe[0] else 'XDP has no tc classify path'}"))
    names = {t.prog_id: t.name or str(t.prog_id) for t in targets}
    parts = []
    if traced:
        parts.append("fentry/fexit on " + ", ".join(f"{names[p]} (id {p})" for p in traced))
    if classify:
        parts.append(f"kprobe {CLASSIFY_FN} on " + ", ".join("/".join(x for x in w if x) for w in classify)
                     + " for " + ", ".join(f"{names[p]} (id {p}): {why[p]}" for p in why
                                           if p not in dict(stats_only)))
    if stats_only:
        parts.append("bpf_stats only for " + ", ".join(f"{names[p]} (id {p}): {w}" for p, w in stats_only))
    return Plan(tuple(traced), tuple(classify), tuple(stats_only),
                "; ".join(parts) or "no tc/XDP program on the selected interfaces")


# --- the probe ---------------------------------------------------------------------------------

class ProgTime:
    """fentry/fexit on the selected tc/XDP programs (or the tc classify kprobe); a context
    manager, or closed by the Session it joined."""

    def __init__(self, attachments: Iterable[Any], *, force: str | None = None, session: Any = None,
                 host: Any = None, runner: Runner = DEFAULT_RUNNER):
        if force not in (None, FENTRY, KPROBE, COUNTERS):
            raise UsageError(f"tc_bpf: unknown backend {force!r} (fentry, kprobe or counters)")
        self.targets = targets_from(attachments)
        self.force = force
        self.session = session
        self.runner = runner
        self._host = host
        self.plan: Plan | None = None
        self.attach_seconds: float | None = None
        self.bpf: Any = None
        self._links: list[int] = []
        self._progs: list[int] = []
        self._target_fds: dict[int, int] = {}
        self._names: dict[tuple[int, int], str] = {}      # (netns inode, ifindex) -> "netns/iface"
        self._closed = False
        self._fds_before: set[int] = set()
        self._btf_ids: dict[int, int] = {}
        self._info: dict[int, ProgInfo] = {}

    # -- setup

    def _usable(self, backend: str) -> tuple[bool, str]:
        if self.force is not None and self.force != backend:
            return False, f"forced to {self.force}"
        if self._host is None:
            self._host = Host(self.runner)
        ok, why = ladder.rung_usable(STAGE, backend, self._host)
        if ok and backend == KPROBE:
            if not _kallsyms_has(CLASSIFY_FN):
                return False, f"no function {CLASSIFY_FN} in this kernel"
        return ok, why

    def _inspect(self) -> dict[int, str]:
        """Open each target by id and find its main function's BTF id; prog id -> why not, if not."""
        no_btf: dict[int, str] = {}
        for p in dict.fromkeys(t.prog_id for t in self.targets):
            try:
                fd = prog_fd_by_id(p)
            except OSError as exc:
                no_btf[p] = f"cannot open program {p}: {exc.strerror}"
                continue
            self._target_fds[p] = fd
            try:
                info, func = prog_info(fd)
            except OSError as exc:
                no_btf[p] = f"no program info: {exc.strerror}"
                continue
            self._info[p] = info
            if func is None:
                no_btf[p] = "loaded without BTF (no func_info)"
            else:
                self._btf_ids[p] = func
        return no_btf

    def start(self) -> Plan:

        t0 = time.monotonic()
        self._fds_before = _fds()
        if self.session is not None:
            self.session.on_exit(self.close)
        try:
            fentry = self._usable(FENTRY)
            no_btf = self._inspect() if fentry[0] else {}
            self.plan = plan(self.targets, fentry=fentry, kprobe=self._usable(KPROBE), no_btf=no_btf)
            if self.plan.fentry or self.plan.classify:
                self._attach(self.plan)
        except BaseException:
            self.close()
            raise
        finally:
            for fd in self._target_fds.values():   # the tracing programs hold their targets now
                os.close(fd)
            self._target_fds.clear()
        self.attach_seconds = time.monotonic() - t0
        return self.plan

    def _attach(self, p: Plan) -> None:

        hooks = {"bpf_prog": FENTRY if p.fentry else COUNTERS, CLASSIFY_FN: KPROBE if p.classify else COUNTERS}
        offsets: dict[str, int] = {}
        filt = Filter()
        if p.classify:
            try:
                kernel = btfmod.load(runner=self.runner)
                offsets = {n: kernel.offset(*OFFSETS[n]) for n in PROGTIME.offsets}
            except btfmod.BtfError as exc:
                raise ToolError(f"kprobe {CLASSIFY_FN}: {exc}") from None
            filt = Filter(ifaces=self._resolve(p.classify))
        flags = cflags_for(PROGTIME, Choice(STAGE, hooks, p.reason), offsets, filt,
                           extra={"CNIT_NPROG": len(p.fentry)})
        self.bpf = load(PROGTIME.source, flags, autoload=False)
        fill_filters(self.bpf, filt)
        for slot, prog_id in enumerate(p.fentry):
            for kind, attach_type in (("entry", BPF_TRACE_FENTRY), ("exit", BPF_TRACE_FEXIT)):
                insns = self.bpf.dump_func(f"progtime_{kind}{slot}".encode())
                fd = load_tracing(insns, attach_type=attach_type, btf_id=self._btf_ids[prog_id],
                                  target_fd=self._target_fds[prog_id], name=f"cnit_pt{kind[1]}{slot}")
                self._progs.append(fd)
                try:
                    self._links.append(attach_tracing(fd))
                except OSError as exc:
                    raise ToolError(f"attaching fentry to program {prog_id}: {exc.strerror}") from None
        if p.classify:
            try:
                self.bpf.attach_kprobe(event=CLASSIFY_FN.encode(), fn_name=b"classify_entry")
                self.bpf.attach_kretprobe(event=CLASSIFY_FN.encode(), fn_name=b"classify_return")
            except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
                raise ToolError(f"kprobe {CLASSIFY_FN}: {exc}".splitlines()[0]) from None

    def _resolve(self, where: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], ...]:

        out = []
        for ns in dict.fromkeys(n for n, _ in where):
            ino = netns_inode(ns or None)
            links = dict((name, idx) for idx, name in
                         parse_links(self.runner.run(["ip", "-o", "link", "show"], netns=ns or None).stdout))
            for n, iface in where:
                if n == ns and iface in links:
                    out.append((ino, links[iface]))
                    self._names[(ino, links[iface])] = f"{ns}/{iface}" if ns else iface
        return tuple(out)

    # -- reading

    def snapshot(self) -> list[Any]:
        """One Figure per traced program (fentry) and per interface whose tc path was timed (kprobe)."""

        if self.bpf is None or self.plan is None:
            return []
        out = []
        if self.plan.fentry:
            table = self.bpf[b"progtime_agg"]
            for slot, prog_id in enumerate(self.plan.fentry):
                hist = merge_cpus((v.count, v.sum, list(v.slots)) for v in table[table.Key(slot)])
                ts = [t for t in self.targets if t.prog_id == prog_id]
                info = self._info[prog_id]
                key = {"prog_id": prog_id, "prog_name": info.name, "prog_type": info.type_name,
                       "where": [f"{t.where} {t.kind} {t.hook}" for t in ts], "missed": self.missed(slot)}
                out.append(Figure(STAGE, "progtime_agg", FENTRY, "ns", key, hist, "bpf_prog"))
        if self.plan.classify:
            for k, per_cpu in self.bpf[b"tc_classify_agg"].items():
                hist = merge_cpus((v.count, v.sum, list(v.slots)) for v in per_cpu)
                if hist.count:
                    key = {"netns": k.netns, "ifindex": k.ifindex,
                           "iface": self._names.get((k.netns, k.ifindex), str(k.ifindex))}
                    out.append(Figure(STAGE, "tc_classify_agg", KPROBE, "ns", key, hist, CLASSIFY_FN))
        return out

    def missed(self, slot: int) -> int:
        """Runs the trampoline skipped (recursion) for this slot's entry and exit programs."""
        total = 0
        for fd in self._progs[2 * slot:2 * slot + 2]:
            try:
                total += prog_info(fd)[0].recursion_misses
            except OSError:
                continue
        return total

    def kernel_ids(self) -> dict[str, list[int]]:
        """Ids of every BPF program, map and link this probe holds: the fds start() opened."""

        out: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
        for fd in _fds() - self._fds_before:
            ids = fd_ids(fd)
            kind = "link" if "link_id" in ids else "prog" if "prog_id" in ids else "map" if "map_id" in ids else ""
            if kind:
                out[kind].add(ids[f"{kind}_id"])
        return {k: sorted(v) for k, v in out.items()}

    # -- lifetime

    def close(self) -> None:
        """Detach and free everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        for fd in [*self._links, *self._progs, *self._target_fds.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._links.clear()
        self._progs.clear()
        self._target_fds.clear()
        if self.bpf is not None:
            b, self.bpf = self.bpf, None
            try:
                b.cleanup()
            except Exception:  # noqa: BLE001 - keep closing
                pass

    def __enter__(self) -> "ProgTime":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

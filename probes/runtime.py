"""The ProbeSet: chooses a backend per stage, compiles and attaches the probes through the
loader, keeps the in-kernel filters, reads and resets the aggregates, and detaches
everything when its Session ends (exit, exception, SIGINT/SIGTERM).

Why one object: the probes are in-process kernel resources (fds), so their lifetime is the
Python object's; registering close() with Session.on_exit is what makes Ctrl-C safe. Nothing
is pinned and tracefs is mounted only in a private mount namespace of the attaching thread,
so a killed process leaves nothing behind either (the kernel frees the programs with the
fds). Filters: interfaces (netns, ifindex), namespaces, skb mark and an IPv4 5-tuple, all
checked in the kernel; the L7 stage, which sees sockets, takes the selected interfaces'
namespaces.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import ipaddress
import os
import re
import select
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.selection import Selection, validate_ifname
from cnitrace.probes import btf as btfmod
from cnitrace.probes.btf_enums import drop_reasons, not_a_drop, reason_name
from cnitrace.probes.histogram import Histogram, merge_cpus
from cnitrace.probes.specs import (BACKEND_CODES, COUNTERS, FENTRY, KPROBE, OFFSETS, RAW_TRACEPOINT, SPECS,
                                   TP_BTF, TRACEPOINT, ProbeSpec, decode_key, feeding_hook, tp_btf_function)
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.capability import Host
from cnitrace.probes import ladder
from cnitrace.probes.bpfsys import BPF_TRACE_RAW_TP
from cnitrace.probes.bpfsys import attach_tracing
from cnitrace.probes.bpfsys import fd_ids
from cnitrace.probes.bpfsys import load_tracing
from cnitrace.probes.loader import load

TRACEFS = Path("/sys/kernel/tracing")
# Host capability (cnitrace.node.checks) each backend needs.
BACKEND_CAPS = {FENTRY: "fentry", KPROBE: "kprobes", TRACEPOINT: "tracepoints", RAW_TRACEPOINT: "raw_tracepoints",
                TP_BTF: "tp_btf"}
MAX_IFINDEX_CONSTANTS = 8   # CNIT_IF0..CNIT_IF7 in stages.h
POLL_CHECK_EVERY = 256      # events between two looks at the clock while a ring buffer is drained
PERF_NAP_S = 0.005          # perf buffers (kernels before 5.8): the idle wait between two reads


# --- pure: filters, cflags, choice -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Filter:
    """What the probes look at; applied in the kernel where each packet enters the stage."""

    ifaces: tuple[tuple[int, int], ...] = ()     # (netns inode, ifindex)
    netns: tuple[int, ...] = ()                  # netns inodes
    mark: int | None = None
    mark_mask: int = 0xFFFFFFFF
    proto: int = 0                               # IPPROTO_*; 0 = any
    ipv4: bool = False                           # IPv4 packets only (implied by any tuple field)
    saddr: str | None = None
    daddr: str | None = None
    sport: int = 0
    dport: int = 0

    @property
    def has_tuple(self) -> bool:
        return bool(self.proto or self.saddr or self.daddr or self.sport or self.dport)


def _be32(addr: str | None) -> int:
    """An IPv4 address as the u32 the kernel reads from the packet (network order) on x86."""
    if not addr:
        return 0
    try:
        packed = ipaddress.IPv4Address(addr).packed
    except ValueError:
        raise UsageError(f"not an IPv4 address: {addr!r}") from None
    return int.from_bytes(packed, "little")


def _be16(port: int) -> int:
    if not 0 <= port <= 65535:
        raise UsageError(f"port out of range: {port}")
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def cflags_for(spec: ProbeSpec, choice: "Choice", offsets: Mapping[str, int], filt: Filter,
               *, events: bool = False, ringbuf: bool = True,
               extra: Mapping[str, str | int] | None = None) -> dict[str, str]:
    """Every -D option for one probe: offsets from BTF, the backend per hook, filters, events."""
    out: dict[str, str] = {}
    for name in spec.offsets:
        if name in offsets:
            out[f"CNIT_OFF_{name}"] = str(offsets[name])
    for h in spec.hooks:
        out[h.macro] = str(BACKEND_CODES.get(choice.hooks.get(h.point, COUNTERS), 0))
    attached = [b for b in choice.hooks.values() if b != COUNTERS]
    if attached and all(b == TP_BTF for b in attached):
        out["CNIT_DIRECT"] = "1"    # every program of the stage is BTF-typed: plain loads (stages.h)
    if filt.ifaces:
        out["CNIT_FILTER_IFACE"] = "1"
        pairs = sorted(set(filt.ifaces), key=lambda p: (p[1], p[0]))
        if len(pairs) <= MAX_IFINDEX_CONSTANTS:   # few enough: the filter is constants, no map lookup
            out["CNIT_NIF"] = str(len(pairs))
            out.update({f"CNIT_IF{n}": str(i) for n, (_, i) in enumerate(pairs)})
            out.update({f"CNIT_NS{n}": str(ns) for n, (ns, _) in enumerate(pairs)})
    if filt.netns:
        out["CNIT_FILTER_NETNS"] = "1"
    if filt.mark is not None:
        out.update(CNIT_FILTER_MARK="1", CNIT_MARK_VALUE=hex(filt.mark & 0xFFFFFFFF),
                   CNIT_MARK_MASK=hex(filt.mark_mask & 0xFFFFFFFF))
    if filt.ipv4 and "SKB_PROTOCOL" in offsets:   # stages that read no skb protocol (OVS) see every family
        out["CNIT_FILTER_IPV4"] = "1"
    if filt.has_tuple:
        out.update(CNIT_FILTER_TUPLE="1", CNIT_PROTO=str(filt.proto), CNIT_SADDR=hex(_be32(filt.saddr)),
                   CNIT_DADDR=hex(_be32(filt.daddr)), CNIT_SPORT=hex(_be16(filt.sport)),
                   CNIT_DPORT=hex(_be16(filt.dport)))
    if events:
        out["CNIT_EVENTS"] = "1"
        out["CNIT_RINGBUF"] = "1" if ringbuf else "0"
    out.update({k: str(v) for k, v in (extra or {}).items()})
    return out


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which backend each hook of a stage got and why; `signal` is what the report must say."""

    stage: str
    hooks: Mapping[str, str]               # point -> backend (COUNTERS: not attached)
    reason: str

    @property
    def backend(self) -> str:
        """The stage's main backend: its first required hook's, or COUNTERS when modelled."""
        return next(iter(self.hooks.values()), COUNTERS) if self.hooks else COUNTERS

    @property
    def signal(self) -> str:
        return "modelled" if self.backend == COUNTERS else "measured"

    @property
    def missing_points(self) -> tuple[str, ...]:
        return tuple(p for p, b in self.hooks.items() if b == COUNTERS)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "backend": self.backend, "signal": self.signal, "reason": self.reason,
                "hooks": dict(self.hooks)}


def choose(spec: ProbeSpec, backend_usable: Callable[[str], tuple[bool, str]],
           point_exists: Callable[[str, str], bool], force: str | None = None) -> Choice:
    """Per hook, the first backend the host allows (the ladder's capability decision, see
    cnitrace.probes.ladder) whose attach point exists in this kernel.

    A required hook with no backend makes the whole stage modelled (nothing attached); an
    optional one just falls away. `force` restricts every hook to one backend (e.g. kprobe in
    the VM, to measure its cost); the stage must still be possible with it.
    """
    if force is not None and force not in BACKEND_CAPS and force != COUNTERS:
        raise UsageError(f"unknown backend {force!r}")
    hooks: dict[str, str] = {}
    why: list[str] = []
    for h in spec.hooks:
        got = COUNTERS
        for b in h.backends:
            if force and b != force:
                continue
            usable, reason = backend_usable(b)
            if not usable:
                why.append(f"{h.point} {b}: {reason}")
            elif not point_exists(b, h.point):
                why.append(f"{h.point} {b}: no such {'tracepoint' if b == TRACEPOINT else 'function'}")
            else:
                got = b
                break
        if force and force not in h.backends and force != COUNTERS:
            why.append(f"{h.point}: no {force} backend for this hook")
        if got == COUNTERS and h.required:
            if force and force != COUNTERS:
                raise UsageError(f"stage {spec.stage}: backend {force} is not possible here ({'; '.join(why)})")
            return Choice(spec.stage, {}, "counters only (modelled): " + ("; ".join(why) or "forced"))
        hooks[h.point] = got
    used = sorted({b for b in hooks.values() if b != COUNTERS})
    lost = [p for p, b in hooks.items() if b == COUNTERS]
    reason = ", ".join(f"{p}={b}" for p, b in hooks.items() if b != COUNTERS)
    if lost:
        reason += f"; without {', '.join(lost)} ({'; '.join(w for w in why if w.split()[0] in lost)})"
    return Choice(spec.stage, hooks, f"{'+'.join(used)}: {reason}")


def without_unreadable(spec: ProbeSpec, choice: Choice, offsets: Mapping[str, int]) -> Choice:
    """Drop hooks whose structs are not in the kernel's BTF (a module not loaded): a hook that
    cannot read its table name would be attached for nothing, so it is reported as lost."""
    lost = {h.point: [n for n in h.needs if n not in offsets] for h in spec.hooks
            if choice.hooks.get(h.point, COUNTERS) != COUNTERS and any(n not in offsets for n in h.needs)}
    if not lost:
        return choice
    hooks = {p: (COUNTERS if p in lost else b) for p, b in choice.hooks.items()}
    why = "; ".join(f"{p}: no BTF for {', '.join(dict.fromkeys(OFFSETS[n][0] for n in ns))}"
                    for p, ns in lost.items())
    return dataclasses.replace(choice, hooks=hooks, reason=f"{choice.reason}; {why}")


def parse_links(text: str) -> list[tuple[int, str]]:
    """`ip -o link show` -> [(ifindex, name)]; the `@peer` suffix of veths is dropped."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\d+):\s+([^:@\s]+)(?:@[^:\s]+)?:", line)
        if m:
            out.append((int(m[1]), m[2]))
    return out


def ringbuf_supported(release: str) -> bool:
    """BPF ring buffers arrived in Linux 5.8."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return bool(m) and (int(m[1]), int(m[2])) >= (5, 8)


@dataclasses.dataclass(frozen=True)
class Figure:
    """One aggregate: a stage, its key (decoded) and the histogram; `signal` says how it was obtained."""

    stage: str
    map: str
    backend: str
    unit: str
    key: dict[str, Any]
    hist: Histogram
    hook: str = ""                 # the attach point that produced it

    @property
    def signal(self) -> str:
        return "modelled" if self.backend == COUNTERS else "measured"

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "map": self.map, "backend": self.backend, "signal": self.signal,
                "hook": self.hook, "unit": self.unit, "key": self.key, **self.hist.to_json()}


# --- I/O --------------------------------------------------------------------------------------

def netns_inode(netns: str | None) -> int:
    path = f"/run/netns/{netns}" if netns else "/proc/self/ns/net"
    try:
        return os.stat(path).st_ino
    except OSError:
        raise UsageError(f"no network namespace {netns!r}") from None


CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 0x4000, 1 << 18


def private_tracefs() -> None:
    """Give the calling thread its own mount namespace with tracefs mounted (if the node has
    not mounted it). Nothing propagates back: the namespace is made private first."""

    libc = ctypes.CDLL(None, use_errno=True)

    def call(what: str, rc: int) -> None:
        if rc != 0:
            raise ToolError(f"{what}: {os.strerror(ctypes.get_errno())}")

    call("unshare(CLONE_NEWNS)", libc.unshare(CLONE_NEWNS))
    call("making mounts private", libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
    if not (TRACEFS / "events").is_dir():
        call("mounting tracefs", libc.mount(b"tracefs", str(TRACEFS).encode(), b"tracefs", 0, None))


class ProbeSet:
    """Probes for the chosen stages; a context manager, or closed by the Session it joined."""

    def __init__(self, stages: Sequence[str], *, ifaces: Sequence[tuple[str | None, str]] = (),
                 netns: Sequence[str | None] = (), filt: Filter | None = None, events: bool = False,
                 force: Mapping[str, str] | None = None, session: Any = None, host: Any = None,
                 runner: Runner = DEFAULT_RUNNER, selection: Selection | None = None):
        """`selection`: interfaces already resolved (the profile's); `ifaces`: (netns, glob) patterns
        resolved here at start (the probe command and tests)."""
        unknown = [s for s in stages if s not in SPECS]
        if unknown:
            raise UsageError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
        for _, name in ifaces:
            validate_ifname(name)
        self.stages = list(stages)
        self.runner = runner
        self.events = events
        self.force = dict(force or {})
        self.session = session
        self._host = host
        self._req_ifaces = list(ifaces)
        self._selection = selection
        self._req_netns = list(netns)
        self._base_filter = filt or Filter()
        self.filter = self._base_filter
        self.choices: dict[str, Choice] = {}
        self.bpf: dict[str, Any] = {}
        self.names: dict[tuple[int, int], str] = {}     # (netns inode, ifindex) -> "netns/ifname"
        self.attach_seconds: float | None = None
        self.lost_events = 0                          # perf-buffer losses (the kernel counts ring-buffer ones)
        self.events_received: dict[str, int] = {}     # per stage: events read from the kernel buffers
        self._event_handlers: list[Callable[[str, Any], None]] = []
        self._poll_until = 0.0                        # monotonic time the current poll_events() must end by
        self._epoll: Any = None                       # one wait over every stage's ring buffer
        self._btf: btfmod.BtfSet | None = None
        self._closed = False
        self._fds_before: set[int] = set()
        self._own_fds: list[int] = []          # tp_btf programs and links (not bcc's to close)
        self._usable: dict[str, Callable[[str], tuple[bool, str]]] = {}

    # -- setup

    def _cap(self, name: str) -> tuple[bool, str]:
        if self._host is None:
            self._host = Host(self.runner)
        c = self._host.check(name)
        return c.usable, c.reason

    def _backend_usable(self, stage: str) -> Callable[[str], tuple[bool, str]]:
        """The ladder's verdict for this stage: rungs it rejected are not usable (with its reason)."""
        self._cap("root")   # creates the Host
        lc = ladder.choose(stage, self._host)
        rejected = {r.backend: r.why for r in lc.rejected}

        def usable(backend: str) -> tuple[bool, str]:
            if backend in (RAW_TRACEPOINT, TP_BTF):   # the ladder's tracepoint rung, in a cheaper form
                form = self._host.check(BACKEND_CAPS[backend])
                if not form.usable:
                    return False, f"{BACKEND_CAPS[backend]} {form.status.value}: {form.reason}"
                backend = TRACEPOINT
            if backend in rejected:
                return False, rejected[backend]
            if lc.backend is None:
                return False, lc.reason
            return True, lc.reason
        return usable

    def _point_exists(self, backend: str, point: str) -> bool:
        if backend == TRACEPOINT:
            cat, _, name = point.partition(":")
            return (TRACEFS / "events" / cat / name).is_dir()
        if backend in (RAW_TRACEPOINT, TP_BTF):   # every tracepoint has a btf_trace_<name> typedef in BTF
            return ("TYPEDEF", f"btf_trace_{point.partition(':')[2]}") in self._get_btf().by_name
        if backend == FENTRY:
            return ("FUNC", point) in self._get_btf().by_name
        if backend == KPROBE:
            return _kallsyms_has(point)
        return True

    def _get_btf(self) -> btfmod.BtfSet:
        if self._btf is None:
            modules = tuple(sorted({m for st in self.stages for m in SPECS[st].btf_modules}))
            self._btf = btfmod.load(runner=self.runner, modules=modules)
        return self._btf

    def _selected_ifaces(self) -> tuple[tuple[int, int], ...]:
        """The Selection's interfaces as (netns inode, ifindex); every link of their namespaces is
        named, so transmit-side interfaces outside the selection still read as names."""
        if self._selection is None:
            return ()
        for ns in dict.fromkeys(i.netns for i in self._selection.interfaces):
            ino = netns_inode(ns or None)
            for idx, name in parse_links(self.runner.run(["ip", "-o", "link", "show"], netns=ns or None).stdout):
                self.names[(ino, idx)] = f"{ns}/{name}" if ns else name
        return tuple(dict.fromkeys((netns_inode(i.netns or None), i.ifindex) for i in self._selection.interfaces))

    def _resolve_ifaces(self) -> tuple[tuple[int, int], ...]:
        found: list[tuple[int, int]] = []
        for ns, pattern in self._req_ifaces:
            ino = netns_inode(ns)
            links = parse_links(self.runner.run(["ip", "-o", "link", "show"], netns=ns).stdout)
            for idx, name in links:
                self.names[(ino, idx)] = f"{ns}/{name}" if ns else name
            hits = [(ino, idx) for idx, name in links if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                raise UsageError(f"no interface matches {pattern!r}" + (f" in netns {ns}" if ns else ""))
            found += hits
        return tuple(dict.fromkeys(found))

    def _offsets(self, spec: ProbeSpec) -> dict[str, int]:
        b = self._get_btf()
        out = {}
        for name in spec.offsets:
            struct, path = OFFSETS[name]
            try:
                out[name] = b.offset(struct, path)
            except btfmod.BtfError:
                pass  # a module's struct (nf_tables, openvswitch) may be absent; its hooks fall away too
        return out

    def start(self) -> dict[str, Choice]:
        """Choose, compile and attach every stage; returns the choices. Under 3 s on the host.

        bcc needs tracefs only while it compiles and attaches (it reads tracepoint formats and
        ids there). Nodes often do not mount it, and mounting it on the node would race with
        other tools doing the same, so the work runs in a thread with its own mount namespace
        where tracefs is mounted; the attached probes are fds and outlive that namespace.
        """
        t0 = time.monotonic()
        self._fds_before = _fds()
        if self.session is not None:
            self.session.on_exit(self.close)
        err: list[BaseException] = []
        caps_ready = threading.Event()

        def work() -> None:
            try:
                private_tracefs()
                self._get_btf()          # ~0.5 s, while this thread's caller runs the capability checks
                caps_ready.wait()
                self._start()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                err.append(exc)

        worker = threading.Thread(target=work, name="cnitrace-attach")
        worker.start()
        try:
            try:   # in the caller's (the node's) mount namespace: checks must see the node as it is
                self._usable = {st: self._backend_usable(st) for st in self.stages}
            finally:
                caps_ready.set()
            worker.join()
        except BaseException:
            worker.join()              # Ctrl-C: let the worker finish, then free what it made
            self.close()
            raise
        if err:
            self.close()
            raise err[0]
        self.attach_seconds = time.monotonic() - t0
        return self.choices

    def _start(self) -> None:

        self.filter = dataclasses.replace(
            self._base_filter,
            ifaces=self._base_filter.ifaces + self._selected_ifaces() + self._resolve_ifaces(),
            netns=self._base_filter.netns + tuple(netns_inode(n) for n in self._req_netns))
        btf = self._get_btf()
        ringbuf = ringbuf_supported(os.uname().release)
        for stage in self.stages:
            spec = SPECS[stage]
            choice = choose(spec, self._usable[stage], self._point_exists, self.force.get(stage))
            offsets = self._offsets(spec)
            choice = without_unreadable(spec, choice, offsets)
            self.choices[stage] = choice
            if choice.backend == COUNTERS:
                continue
            extra: dict[str, str | int] = {}
            if stage in ("drops", "transit"):     # both read kfree_skb's reason
                quiet = (not_a_drop(btf) + (0, 1))[:2]
                extra = {"CNIT_NOT_DROP_A": quiet[0], "CNIT_NOT_DROP_B": quiet[1]}
            events = self.events and spec.event is not None   # stages without per-packet events skip it
            flt = self.filter
            if stage == "l7_detour" and flt.ifaces and not flt.netns:
                # sockets have no interface: take the selected interfaces' namespaces instead
                flt = dataclasses.replace(flt, netns=tuple(dict.fromkeys(ns for ns, _ in flt.ifaces)))
            flags = cflags_for(spec, choice, offsets, flt, events=events, ringbuf=ringbuf, extra=extra)
            self.bpf[stage] = load(spec.source, flags)
            self._attach_tp_btf(stage, choice)
            self._fill_filters(self.bpf[stage], flt)
            if events:
                self._open_events(stage, ringbuf)

    def _attach_tp_btf(self, stage: str, choice: Choice) -> None:
        """bcc compiles the tpbtf__ functions but cannot load them as BTF-typed tracepoints:
        load their instructions (map fds already in place) as tracing programs aimed at the
        tracepoint's btf_trace_<name> type, and attach each with a link fd kept until close()."""

        for point, backend in choice.hooks.items():
            if backend != TP_BTF:
                continue
            fn = tp_btf_function(point)
            btf_id = self._get_btf().by_name[("TYPEDEF", f"btf_trace_{point.partition(':')[2]}")]
            fd = load_tracing(self.bpf[stage].dump_func(fn.encode()), attach_type=BPF_TRACE_RAW_TP,
                              btf_id=btf_id, target_fd=0, name=fn.removeprefix("tpbtf__"))
            self._own_fds.append(fd)
            self._own_fds.append(attach_tracing(fd))

    def _fill_filters(self, b: Any, flt: Filter) -> None:
        fill_filters(b, flt)

    def _open_events(self, stage: str, ringbuf: bool) -> None:
        table = self.bpf[stage][b"cnit_events"]
        layout = SPECS[stage].event
        self.events_received[stage] = 0

        def deliver(data: Any, size: int) -> int:
            n = self.events_received[stage] = self.events_received[stage] + 1
            if self._event_handlers:       # none left (a full sample): counting is all, and cheaper
                try:
                    ev = layout.decode(ctypes.string_at(data, size))
                except ValueError as exc:
                    warnings.warn(f"{stage} event: {exc}")
                    ev = None
                if ev is not None:
                    for h in tuple(self._event_handlers):
                        h(stage, ev)
            # libbpf keeps consuming a ring buffer while the producer keeps it non-empty: under a
            # flood one poll would never return. A negative return stops it (this event consumed);
            # what the ring cannot hold meanwhile is dropped in the kernel and counted in cnit_lost.
            if n % POLL_CHECK_EVERY == 0 and time.monotonic() > self._poll_until:
                return -1
            return 0

        def on_lost(count: int) -> None:
            self.lost_events += count

        if ringbuf:
            table.open_ring_buffer(lambda ctx, data, size: deliver(data, size))
        else:   # a perf buffer poll reads each CPU's buffer once, up to its head: bounded already
            table.open_perf_buffer(lambda cpu, data, size: deliver(data, size), lost_cb=on_lost)

    def on_event(self, handler: Callable[[str, Any], None]) -> None:
        self._event_handlers.append(handler)

    def off_event(self, handler: Callable[[str, Any], None]) -> None:
        """Stop handing events to `handler` (they are still counted in events_received)."""
        if handler in self._event_handlers:
            self._event_handlers.remove(handler)

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Deliver pending per-packet events to the handlers (only when events=True), returning
        within about `timeout_ms` even under a flood (events the handlers cannot keep up with are
        lost in the kernel and counted, never queued here).

        Every stage's buffer is drained without waiting, again and again while events come; only
        when all were empty does it wait, on all of them at once (one epoll over the ring buffers'
        fds). Waiting on one stage's buffer after another would leave a busy one unread for the
        whole wait of an idle one: under a flood the ring overflows in milliseconds."""
        ringbuf = ringbuf_supported(os.uname().release)
        stages = [(st, b) for st, b in self.bpf.items() if SPECS[st].event is not None and st in self.events_received]
        if not stages:
            return
        self._poll_until = until = time.monotonic() + max(timeout_ms, 0) / 1000
        while True:
            before = sum(self.events_received.values())
            for _, b in stages:
                if ringbuf:
                    b.ring_buffer_consume()
                else:   # a perf buffer poll reads each CPU's buffer once, up to its head
                    b.perf_buffer_poll(0)
            left = until - time.monotonic()
            if left <= 0:
                return
            if sum(self.events_received.values()) == before:
                self._wait_readable(stages, left, ringbuf)

    def _wait_readable(self, stages: Sequence[tuple[str, Any]], seconds: float, ringbuf: bool) -> None:
        if not ringbuf:          # perf buffers: per-CPU fds inside bcc; a short nap instead
            time.sleep(min(seconds, PERF_NAP_S))
            return
        if self._epoll is None:
            self._epoll = select.epoll()
            for _, b in stages:
                self._epoll.register(b[b"cnit_events"].map_fd, select.EPOLLIN)
        self._epoll.poll(seconds)

    def lost(self) -> int:
        """Events lost so far: perf-buffer losses plus failed ring-buffer writes counted in the kernel."""
        total = self.lost_events
        for b in self.bpf.values():
            try:
                t = b[b"cnit_lost"]
            except KeyError:
                continue
            total += sum(int(v) for v in t[t.Key(0)])
        return total

    def untimed(self) -> int:
        """Received packets the transit probe could not time: their in-flight slot was taken by
        another live skb (transit.bpf.c's direct-mapped table); coverage lost, never a wrong time."""
        b = self.bpf.get("transit")
        if b is None:
            return 0
        t = b[b"transit_evicted"]
        return sum(int(v) for v in t[t.Key(0)])

    # -- reading

    def snapshot(self) -> list[Figure]:
        """Every non-empty aggregate, CPUs merged, keys decoded, with the backend that measured it."""
        out: list[Figure] = []
        for stage, b in self.bpf.items():
            spec = SPECS[stage]
            for agg in spec.maps:
                try:
                    table = b[agg.name.encode()]
                except KeyError:
                    continue
                for k, per_cpu in table.items():
                    hist = merge_cpus((v.count, v.sum, list(v.slots)) for v in per_cpu)
                    if hist.count == 0:
                        continue
                    raw = {f: getattr(k, f) for f in agg.key}
                    hook = feeding_hook(agg, raw)
                    backend = self.choices[stage].hooks.get(hook, self.choices[stage].backend)
                    out.append(Figure(stage, agg.name, backend, agg.unit,
                                      self._decorate(stage, b, decode_key(agg, raw)), hist, hook))
        return out

    def _decorate(self, stage: str, b: Any, key: dict[str, Any]) -> dict[str, Any]:
        """Add names for what the kernel gives as numbers: interfaces, drop reasons, locations."""
        ns = key.get("netns")
        for f in ("ifindex", "ifindex_in", "ifindex_out"):
            if f in key and ns is not None and (ns, key[f]) in self.names:
                key[f.replace("ifindex", "iface")] = self.names[(ns, key[f])]
        if stage == "transit":
            key["fate"] = "dropped" if key.get("ifindex_out") == 0 else "forwarded"
        if stage == "drops":
            key["reason_name"] = reason_name(drop_reasons(self._get_btf()), int(key["reason"]))
            try:
                key["symbol"] = b.ksym(int(key["location"]), show_offset=True).decode()
            except Exception:  # noqa: BLE001 - an unknown address keeps its number
                key["symbol"] = hex(int(key["location"]))
        return key

    def reset(self) -> None:
        """Zero every aggregate (e.g. between the steps of a sweep)."""
        for stage, b in self.bpf.items():
            for agg in SPECS[stage].maps:
                try:
                    b[agg.name.encode()].clear()
                except KeyError:
                    continue

    def prog_ids(self) -> list[int]:
        """Kernel ids of the attached programs (tests check they are gone after close)."""
        return self.kernel_ids()["prog"]

    def kernel_ids(self) -> dict[str, list[int]]:
        """Ids of every BPF program and map this ProbeSet holds: the fds start() opened."""

        out: dict[str, set[int]] = {"prog": set(), "map": set()}
        for fd in _fds() - self._fds_before:
            ids = fd_ids(fd)          # a tp_btf link's fdinfo names its program too: sets dedupe
            for kind in out:
                if f"{kind}_id" in ids:
                    out[kind].add(ids[f"{kind}_id"])
        return {k: sorted(v) for k, v in out.items()}

    # -- lifetime

    def close(self) -> None:
        """Detach and free everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        while self._own_fds:
            try:
                os.close(self._own_fds.pop())     # links first (appended last): detach, then free
            except OSError:
                pass
        while self.bpf:
            _, b = self.bpf.popitem()
            try:
                b.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                warnings.warn(f"detaching probes: {exc}")

    def __enter__(self) -> "ProbeSet":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def fill_filters(b: Any, flt: Filter) -> None:
    """Put the selected (netns, ifindex) pairs and namespaces into stages.h's filter maps."""
    if flt.ifaces:
        t = b[b"cnit_ifaces"]
        for ino, idx in flt.ifaces:
            k = t.Key()
            k.netns, k.ifindex = ino, idx
            t[k] = ctypes.c_uint8(1)
    if flt.netns:
        t = b[b"cnit_netns"]
        for ino in flt.netns:
            t[t.Key(ino)] = ctypes.c_uint8(1)


def _kallsyms_has(fn: str) -> bool:
    needle = f" {fn}\n"
    try:
        with open("/proc/kallsyms", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.endswith(needle) or f" {fn}\t" in line:
                    return True
    except OSError:
        return False
    return False


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd") if n.isdigit()}

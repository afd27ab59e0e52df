"""Every collector by name, and the `cnitrace snapshot` job built on them.

The registry is the one place that knows how to construct each collector from a Context
(selection, runner, OVS instance), so the CLI, the profiler and the tests agree on what
"all collectors" means: `build()` for the snapshot job, `snapshot()` for the profiler.
Per-namespace state is read inside every namespace of the selection (the host alone when
there is none): iptables and nftables once per namespace (records keyed by namespace, see
collectors/netns.py), conntrack per namespace, BPF attachments on the selected interfaces in
their namespaces. A snapshot set serialises to a versioned JSON document that `--since FILE`
reads back: records become generic (key, counters) pairs, which is all the delta needs, so a
saved snapshot stays comparable across cnitrace versions (format 1, from before netfilter keys
carried the namespace, is read as the host's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import time
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

from cnitrace.collectors.base import Availability, Delta, Parsed, Snapshot, delta
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.collectors.bpfprog.stats import stats_enabled
from cnitrace.collectors.cilium.source import CiliumCollector
from cnitrace.collectors.conntrack.source import ConntrackCollector
from cnitrace.collectors.iptables.source import IptablesCollector
from cnitrace.collectors.netns import InNetns, PerNetns, split
from cnitrace.collectors.nftables.source import NftablesCollector
from cnitrace.collectors.ovs.source import OvsCollector, OvsTarget
from cnitrace.core import faults
from cnitrace.core.errors import CnitraceError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import HOST, Selection, namespaces_of

FORMAT = "cnitrace-snapshot/2"
_READS = ("cnitrace-snapshot/1", FORMAT)
_NETNS_KEYED = ("iptables", "nftables")   # collectors whose keys gained the namespace in format 2


@dataclasses.dataclass(frozen=True)
class Options:
    """What the profiler trims from a full snapshot (the CLI takes the defaults)."""

    families: tuple[str, ...] = ("ipv4", "ipv6")   # iptables address families
    maps: bool = True                              # bpf: dump the attached programs' maps (O(entries))
    megaflows: bool = True                         # ovs: dump the datapath's megaflows


@dataclasses.dataclass(frozen=True)
class Context:
    selection: Selection | None = None  # None = the whole node as seen from the host namespace
    runner: Runner = DEFAULT_RUNNER
    ovs_rundir: str | None = None      # a private OVS (the lab's); None = /run/openvswitch
    ovs: Any = None                    # a cnitrace.collectors.ovs.source.OvsTarget; wins over ovs_rundir
    options: Options = Options()


class Unavailable:
    """Stands in for a collector that cannot even be constructed here (module missing)."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason

    def available(self, host: Any = None) -> Availability:
        return Availability.no(self.reason)

    def snapshot(self) -> Snapshot:
        raise CnitraceError(f"{self.name}: {self.reason}")

    def parse(self, text: str) -> Parsed:
        return Parsed(())


def _netns_list(ctx: Context) -> list[str]:
    return list(namespaces_of(ctx.selection))


def _iptables(ctx: Context) -> Any:
    return PerNetns(lambda ns: IptablesCollector(ctx.runner, netns=ns, families=ctx.options.families),
                    _netns_list(ctx))


def _nftables(ctx: Context) -> Any:
    return PerNetns(lambda ns: NftablesCollector(ctx.runner, netns=ns), _netns_list(ctx))


def _ovs(ctx: Context) -> Any:
    target = ctx.ovs
    if target is None:
        target = OvsTarget(rundir=ctx.ovs_rundir) if ctx.ovs_rundir else OvsTarget()
        if ctx.ovs_rundir:
            ctls = sorted(glob.glob(os.path.join(ctx.ovs_rundir, "*vswitchd*.ctl")))
            if ctls:
                target = OvsTarget(rundir=ctx.ovs_rundir, ctl=ctls[0])
    return OvsCollector(target, ctx.runner, megaflows=ctx.options.megaflows)


def _bpf(ctx: Context) -> Any:
    return BpfProgCollector(ctx.selection, ctx.runner, maps=ctx.options.maps)


def _cilium(ctx: Context) -> Any:
    return CiliumCollector(ctx.runner)


def _conntrack(ctx: Context) -> Any:
    return ConntrackCollector(_netns_list(ctx), ctx.runner)


FACTORIES: dict[str, Callable[[Context], Any]] = {
    "iptables": _iptables, "nftables": _nftables, "ovs": _ovs, "bpf": _bpf,
    "cilium": _cilium, "conntrack": _conntrack,
}
NAMES = tuple(FACTORIES)


def build(names: Sequence[str] | None = None, ctx: Context | None = None) -> list[Any]:
    """The named collectors (all when None), constructed for `ctx`; unknown names are a UsageError."""
    ctx = ctx or Context()
    names = list(names) if names else list(NAMES)
    bad = [n for n in names if n not in FACTORIES]
    if bad:
        raise UsageError(f"unknown collector {bad[0]!r}; choose from {', '.join(NAMES)}")
    out = []
    for n in names:
        try:
            out.append(FACTORIES[n](ctx))
        except (ImportError, AttributeError) as exc:
            out.append(Unavailable(n, f"collector not available in this build ({exc})"))
    return out


def build_for(selection: Selection | None, ctx: Context | None = None,
              names: Sequence[str] | None = None) -> dict[str, Any]:
    """build() for `selection` (None = the host namespace), by name."""
    ctx = dataclasses.replace(ctx or Context(), selection=selection)
    return {c.name: c for c in build(names, ctx)}


def snapshot(selection: Selection | None, ctx: Context | None = None,
             names: Sequence[str] | None = None) -> dict[str, Snapshot]:
    """Every named collector (all when None) snapshotted once for `selection`; the profiler's call.

    No availability filtering: a collector that fails raises (the caller decides). iptables and
    nftables snapshots hold InNetns records; per_netns() splits them into {namespace: Snapshot}
    of plain records (HOST '' for the host namespace).
    """
    return {name: c.snapshot() for name, c in build_for(selection, ctx, names).items()}


def per_netns(snap: Snapshot) -> dict[str, Snapshot]:
    """{namespace: Snapshot} of plain records from an iptables/nftables snapshot (see netns.split)."""
    return split(snap)


# --- snapshot sets and their JSON document ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
    """One collector's part of a snapshot set: the snapshot, or why there is none."""

    name: str
    availability: Availability
    snapshot: Snapshot | None


@dataclasses.dataclass(frozen=True)
class GenericRecord:
    """A record read back from JSON: enough for delta() and rendering."""

    key: Hashable
    counters: Mapping[str, int]
    kind: str = ""
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def take(collectors: Sequence[Any], host: Any = None) -> list[Entry]:
    """Snapshot every available collector; a failing one becomes unavailable with its reason."""
    out = []
    for c in collectors:
        a = c.available(host)
        snap = None
        if a:
            try:
                snap = c.snapshot()
            except CnitraceError as exc:
                a = Availability.no(exc.message)
        out.append(Entry(c.name, a, snap))
    return out


_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELDS: dict[type, tuple[str, ...]] = {}     # dataclass or NamedTuple type -> its field names


def _jsonable(v: Any) -> Any:
    """Plain JSON values from records; the exact-type fast paths first (a 100,000-rule snapshot
    is millions of values: the ABC checks below cost seconds), the same result as the general ones."""
    t = type(v)
    if t in _SCALARS:
        return v
    names = _FIELDS.get(t)
    if names is not None:
        out = {n: getattr(v, n) for n in names}
        for n, x in out.items():
            if type(x) not in _SCALARS:
                out[n] = _jsonable(x)
        return out
    if t is tuple or t is list:
        return [x if type(x) in _SCALARS else _jsonable(x) for x in v]
    if t is dict:
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_asdict"):  # NamedTuple records
        _FIELDS[t] = tuple(v._fields)
        return {k: _jsonable(x) for k, x in v._asdict().items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        names = _FIELDS[t] = tuple(f.name for f in dataclasses.fields(v))
        return {n: _jsonable(getattr(v, n)) for n in names}
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def record_to_json(rec: Any) -> dict[str, Any]:
    """{kind, key, counters, data}; a record read in a namespace is its own kind with 'netns' in data."""
    inner, extra = (rec.record, {"netns": rec.netns}) if isinstance(rec, InNetns) else (rec, {})
    data = _jsonable(inner) if dataclasses.is_dataclass(inner) or hasattr(inner, "_asdict") else {}
    return {"kind": type(inner).__name__ if not isinstance(rec, GenericRecord) else rec.kind,
            "key": _jsonable(getattr(rec, "key", None)),
            "counters": dict(getattr(rec, "counters", {}) or {}),
            "data": {**extra, **data} if not isinstance(rec, GenericRecord) else dict(rec.data)}


def to_document(entries: Sequence[Entry], selection: Any = None) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for e in entries:
        item: dict[str, Any] = {"available": e.availability.ok, "reason": e.availability.reason}
        if e.snapshot is not None:
            s = e.snapshot
            item.update(taken_at=s.taken_at, monotonic=s.monotonic, warnings=list(s.warnings),
                        meta=_jsonable(s.meta), records=[record_to_json(r) for r in s.records])
        cols[e.name] = item
    return {"format": FORMAT, "taken_at": time.time(),
            "selection": selection.to_json() if selection is not None else None, "collectors": cols}


def write_json(doc: Any, write: Callable[[str], Any], *, chunk: int = 256) -> None:
    """`doc` as json.dumps(doc, sort_keys=True) would print it, written piece by piece: dicts key by
    key and long lists item by item, each piece by the C encoder. A 100,000-rule snapshot is a
    100 MB document; this never holds it as one string (nor the pure-Python encoder's chunks,
    which `indent` forces: seconds and ~600 MB more)."""
    enc = json.JSONEncoder(sort_keys=True)
    if type(doc) is dict:
        write("{")
        for i, k in enumerate(sorted(doc)):
            write(f"{', ' if i else ''}{enc.encode(k if type(k) is str else str(k))}: ")
            write_json(doc[k], write, chunk=chunk)
        write("}")
    elif type(doc) is list and len(doc) > chunk:
        write("[")
        for i in range(0, len(doc), chunk):
            part = enc.encode(doc[i:i + chunk])[1:-1]
            write(f"{', ' if i else ''}{part}")
        write("]")
    else:
        write(enc.encode(doc))


def _key(v: Any) -> Hashable:
    return tuple(_key(x) for x in v) if isinstance(v, list) else v


def _upgrade(key: Hashable, host: bool) -> Hashable:
    if not host:
        return key
    return (HOST, *key) if isinstance(key, tuple) else (HOST, key)


def from_document(doc: Any) -> dict[str, Snapshot]:
    """Snapshots (of GenericRecords) from a saved document; malformed parts raise UsageError."""
    if not isinstance(doc, dict) or doc.get("format") not in _READS:
        raise UsageError(f"not a cnitrace snapshot (expected format {FORMAT!r})")
    old = doc["format"] != FORMAT
    out: dict[str, Snapshot] = {}
    try:
        for name, item in doc["collectors"].items():
            if not item.get("available") or "records" not in item:
                continue
            host = old and name in _NETNS_KEYED   # format 1 read the host's rules only
            recs = tuple(GenericRecord(_upgrade(_key(r["key"]), host),
                                       {k: int(v) for k, v in r["counters"].items()},
                                       str(r.get("kind", "")), r.get("data") or {})
                         for r in item["records"])
            out[name] = Snapshot(name, recs, taken_at=float(item["taken_at"]),
                                 monotonic=float(item["monotonic"]), warnings=tuple(item.get("warnings", ())),
                                 meta=item.get("meta") or {})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"malformed snapshot document: {type(exc).__name__}: {exc}") from None
    return out


def load_document(path: str) -> dict[str, Snapshot]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    return from_document(doc)


def deltas(before: Mapping[str, Snapshot], entries: Sequence[Entry]) -> dict[str, Delta]:
    """Per-collector deltas between a saved set and fresh entries (collectors in both only)."""
    out = {}
    for e in entries:
        if e.snapshot is None or e.name not in before:
            continue
        after = Snapshot(e.name, tuple(GenericRecord(_key(_jsonable(r.key)), dict(r.counters))
                                       for r in e.snapshot.records if getattr(r, "counters", None) is not None),
                         taken_at=e.snapshot.taken_at, monotonic=e.snapshot.monotonic,
                         warnings=e.snapshot.warnings, meta=e.snapshot.meta)
        out[e.name] = delta(before[e.name], after)
    return out


def _change(key: Hashable, delta_: Mapping[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _jsonable(key), "delta": dict(delta_)}
    if delta_.get("run_cnt"):  # a BPF program: the cost of one run over the interval
        out["ns_per_run"] = delta_.get("run_time_ns", 0) / delta_["run_cnt"]
    return out


def deltas_document(ds: Mapping[str, Delta], entries: Sequence[Entry]) -> dict[str, Any]:
    cols = {}
    for e in entries:
        item: dict[str, Any] = {"available": e.availability.ok, "reason": e.availability.reason}
        d = ds.get(e.name)
        if d is not None:
            item.update(interval_s=d.interval_s, warnings=list(d.warnings),
                        resets=[_jsonable(k) for k in d.resets],
                        changes=[_change(k, v) for k, v in d.changes.items() if any(v.values())])
        elif e.snapshot is not None:
            item["note"] = "not in the saved snapshot"
        cols[e.name] = item
    return {"format": FORMAT.replace("snapshot", "delta"), "collectors": cols}


# --- the snapshot job -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
    collectors: tuple[str, ...] = ()
    interval_s: float | None = None     # take two snapshots this far apart, BPF stats on between
    since: str | None = None            # a saved snapshot document to diff against
    bpf_stats: str = "auto"             # 'auto' | 'fd' | 'sysctl'


@dataclasses.dataclass(frozen=True)
class Result:
    entries: list[Entry]
    deltas: dict[str, Delta] | None
    document: dict[str, Any]
    notes: tuple[str, ...] = ()


@contextlib.contextmanager
def _maybe_stats(enabled: bool, session: Any, mode: str) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    with stats_enabled(session, mode) as how:
        yield how


def run(req: Request, ctx: Context, session: Any, host: Any = None,
        sleep: Callable[[float], None] = time.sleep) -> Result:
    """Snapshot, or delta over --interval, or delta since a saved document."""
    before = load_document(req.since) if req.since else None
    collectors = build(req.collectors or None, ctx)
    wants_bpf = any(c.name == "bpf" for c in collectors)
    notes: list[str] = []
    with _maybe_stats(wants_bpf and req.interval_s is not None, session, req.bpf_stats) as how:
        if how:
            notes.append(f"BPF run stats enabled for the interval via {how}")
        if req.interval_s is not None:
            first = take(collectors, host)
            faults.checkpoint("window")
            sleep(req.interval_s)
            entries = take(collectors, host)
            before = {e.name: e.snapshot for e in first if e.snapshot is not None}
            before = {n: _generic(s) for n, s in before.items()}
        else:
            entries = take(collectors, host)
    if before is None:
        return Result(entries, None, to_document(entries, ctx.selection), tuple(notes))
    if req.since and wants_bpf:
        notes.append("BPF run counters only move while stats are enabled; use --interval to measure them")
    ds = deltas(before, entries)
    return Result(entries, ds, deltas_document(ds, entries), tuple(notes))


def _generic(s: Snapshot) -> Snapshot:
    return Snapshot(s.collector, tuple(GenericRecord(_key(_jsonable(r.key)), dict(r.counters))
                                       for r in s.records if getattr(r, "counters", None) is not None),
                    taken_at=s.taken_at, monotonic=s.monotonic, warnings=s.warnings, meta=s.meta)

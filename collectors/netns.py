"""Per-namespace collectors behind one name: the same collector read inside each selected namespace.

Netfilter rules are per network namespace, and a node's pods, a lab's node or a second CNI each
have their own, so the iptables and nftables collectors run once per namespace (their tools run
there through the Runner's `ip netns exec NAME` argv). The combined snapshot wraps every record
in InNetns, whose key starts with the namespace, so two namespaces with the same chain never
merge in a delta; `split()` gives the per-namespace snapshots back (what the graph and attribution
code reads). The host namespace is cnitrace.core.selection.HOST ('').
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Mapping, Sequence

from cnitrace.collectors.base import Parsed, Snapshot
from cnitrace.core.selection import HOST


def label(ns: str) -> str:
    """How a namespace is named in warnings."""
    return f"netns {ns}" if ns != HOST else "host"


@dataclasses.dataclass(frozen=True)
class InNetns:
    """A record read inside namespace `netns`; its key is (netns, *record.key)."""

    netns: str
    record: Any

    @property
    def key(self) -> Hashable:
        k = self.record.key
        return (self.netns, *k) if isinstance(k, tuple) else (self.netns, k)

    @property
    def counters(self) -> Mapping[str, int]:
        return self.record.counters


def combine(name: str, parts: Mapping[str, Snapshot]) -> Snapshot:
    """One snapshot of InNetns records from per-namespace snapshots (namespace order kept).

    Warnings from a named namespace say which; each part's meta, warnings and times are kept in
    meta['parts'] so split() restores the parts exactly.
    """
    records: list[InNetns] = []
    warnings: list[str] = []
    for ns, snap in parts.items():
        records += [InNetns(ns, r) for r in snap.records]
        warnings += [w if ns == HOST else f"{label(ns)}: {w}" for w in snap.warnings]
    first = next(iter(parts.values()), None)
    meta = {"netns": list(parts),
            "parts": {ns: {"meta": dict(s.meta), "warnings": list(s.warnings), "taken_at": s.taken_at,
                           "monotonic": s.monotonic} for ns, s in parts.items()}}
    times = {} if first is None else {"taken_at": first.taken_at, "monotonic": first.monotonic}
    return Snapshot(name, tuple(records), warnings=tuple(warnings), meta=meta, **times)


def split(snapshot: Snapshot) -> dict[str, Snapshot]:
    """Per-namespace snapshots of the plain records of a combine()d snapshot ({HOST: ...} for the host)."""
    parts = snapshot.meta.get("parts") or {}
    out: dict[str, list[Any]] = {ns: [] for ns in snapshot.meta.get("netns", parts)}
    for r in snapshot.records:
        if isinstance(r, InNetns):
            out.setdefault(r.netns, []).append(r.record)
    res = {}
    for ns, recs in out.items():
        p = parts.get(ns, {})
        res[ns] = Snapshot(snapshot.collector, tuple(recs), taken_at=p.get("taken_at", snapshot.taken_at),
                           monotonic=p.get("monotonic", snapshot.monotonic), warnings=tuple(p.get("warnings", ())),
                           meta=p.get("meta", {}))
    return res


class PerNetns:
    """`make(ns)` built once per namespace; available, snapshot and parse as one collector.

    The tools are host binaries run through `ip netns exec`, so availability is the host's.
    """

    def __init__(self, make: Callable[[str], Any], netns: Sequence[str] = (HOST,)):
        self.netns = tuple(dict.fromkeys(HOST if n is None else n for n in netns)) or (HOST,)
        self.parts = {ns: make(ns) for ns in self.netns}
        self._first = self.parts[self.netns[0]]
        self.name = self._first.name

    def available(self, host: Any = None):
        return self._first.available(host)

    def parse(self, text: str) -> Parsed:
        return self._first.parse(text)

    def snapshot_each(self) -> dict[str, Snapshot]:
        return {ns: c.snapshot() for ns, c in self.parts.items()}

    def snapshot(self) -> Snapshot:
        return combine(self.name, self.snapshot_each())

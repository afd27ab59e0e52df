"""From OVS and BPF-program collector deltas to attribution inputs (pure).

OVS: the OpenFlow tables are walked only when a packet misses the datapath's flow cache
(an upcall) — the first packet of a connection, as Antrea's design intends — so a table's
`lookup` counter delta is the work it did in the window. BPF: bpf_stats gives each
program's runs and run time, which is a measurement, not a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from cnitrace.attribution.tree import OvsTableWork, ProgramTime, RuleHit
from cnitrace.collectors.base import counter_delta
from cnitrace.collectors.bpfprog.parse import BpfProg
from cnitrace.collectors.ovs.parse import Datapath
from cnitrace.collectors.ovs.parse import OfFlow
from cnitrace.collectors.ovs.parse import OfTable


def match_shape(match: str) -> tuple[str, ...]:
    """A flow's match with the values taken out and the masks kept: flows of one shape share one
    classifier subtable, so the number of shapes in a table approximates its lookup cost."""
    out = []
    for field in match.split(","):
        name, _, value = field.strip().partition("=")
        if not name:
            continue
        out.append(f"{name}/{value.partition('/')[2]}" if "/" in value else name)
    return tuple(sorted(out))


def ovs_work(before: Any, after: Any, top_flows: int = 3) -> list[OvsTableWork]:
    """Per table: lookups in the window, classifier subtables (distinct match shapes), top flows."""

    old = {r.key: r for r in before.records}
    names = {}
    for br, t in after.meta.get("table_names", {}).items():
        names.update({(br, int(k)): v for k, v in t.items()})
    flows: dict[tuple[str, str], list[RuleHit]] = {}
    shapes: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for r in after.records:
        if isinstance(r, OfFlow):
            shapes.setdefault((r.bridge, str(r.table)), set()).add(match_shape(r.match))
            o = old.get(r.key)
            if not r.stats or (o is not None and not o.stats):
                continue  # a dump without counters (--no-stats): packets unknown, not zero
            d = counter_delta(o.n_packets if o else 0, r.n_packets).value
            if d:
                text = f"cookie={r.cookie:#x} prio={r.priority} {r.match}".strip()
                flows.setdefault((r.bridge, str(r.table)), []).append(RuleHit(r.priority, text, d))
    out = []
    for r in after.records:
        if isinstance(r, OfTable):
            o = old.get(r.key)
            lookups = counter_delta(o.lookup if o else 0, r.lookup).value
            if not lookups:
                continue
            name = r.name or names.get((r.bridge, r.table))
            label = f"{r.table} ({name})" if name else str(r.table)
            hits = sorted(flows.get((r.bridge, str(r.table)), []), key=lambda h: -h.packets)[:top_flows]
            out.append(OvsTableWork(label, lookups, tuple(hits),
                                    subtables=max(len(shapes.get((r.bridge, str(r.table)), ())), 1)))
    return out


def datapath_cache(before: Any, after: Any) -> dict[str, int]:
    """Megaflow-cache hits (established packets, no table walk) and misses (first packets: upcalls)."""

    old = {r.key: r for r in before.records if isinstance(r, Datapath)}
    out = {"hit": 0, "missed": 0, "lost": 0}
    for r in after.records:
        if isinstance(r, Datapath):
            o = old.get(r.key)
            for k in out:
                out[k] += counter_delta(getattr(o, k) if o else 0, getattr(r, k)).value
    return out


def bpf_programs(before: Any, after: Any) -> list[ProgramTime]:

    old = {r.id: r for r in before.records if isinstance(r, BpfProg)}
    out = []
    for r in after.records:
        if not isinstance(r, BpfProg):
            continue
        o = old.get(r.id)
        runs = counter_delta(o.run_cnt if o else 0, r.run_cnt).value
        ns = counter_delta(o.run_time_ns if o else 0, r.run_time_ns).value
        if runs:
            out.append(ProgramTime(f"{r.name or r.id} (id {r.id}, {r.type})", runs, ns / runs))
    return out


def cpu_ns(pid: int) -> int | None:
    """On-CPU time of every thread of `pid`, in ns (schedstat: nanosecond resolution)."""
    total, seen = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else None


def busy_ns(window_ns: int, window_s: float, idle_ns: int, idle_s: float) -> int:
    """CPU time spent in the window beyond the process's idle rate (never negative)."""
    rate = idle_ns / idle_s if idle_s > 0 else 0.0
    return max(int(window_ns - rate * window_s), 0)


def pids_of(records: Iterable[Any], suffix: str) -> list[int]:
    return [int(r.data["pid"]) for r in records if r.kind == "process" and r.name.endswith(suffix)
            and "pid" in r.data]

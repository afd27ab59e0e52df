"""Attribution: pure arithmetic that turns counter deltas, stage timings and a per-node
calibration into one tree — stage → table/chain/OVS table/program → top rules.

Why both sources: probes *measure* time where the kernel lets them attach (transit
through the node on every kernel; per-table netfilter time only with fentry/kprobes),
while counters say *how much work* each chain did (rule evaluations per packet) on every
kernel. Multiplying work by the calibrated cost of one evaluation *models* the time; where
both exist the node is "both" and carries their agreement. No I/O here: table-driven tests.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from cnitrace.reports.document import Node, compute_shares


@dataclasses.dataclass(frozen=True)
class RuleHit:
    position: int          # 1-based within its chain
    text: str
    packets: int


@dataclasses.dataclass(frozen=True)
class ChainWork:
    """One chain's share of the work, from the netfilter collectors' graph over a delta."""

    table: str             # e.g. "ip filter" / "filter (legacy)"
    chain: str
    packets: int           # packets that entered the chain during the window
    evaluations: int       # rule evaluations performed in this chain during the window
    rules: tuple[RuleHit, ...] = ()


@dataclasses.dataclass(frozen=True)
class TableTime:
    """Measured per-invocation time of one netfilter table or base chain (fentry/kprobe)."""

    table: str
    calls: int
    mean_ns: float
    p50_ns: float | None = None
    p99_ns: float | None = None
    backend: str = "fentry"


@dataclasses.dataclass(frozen=True)
class ProgramTime:
    """A BPF program's runs and run time (bpf_stats or fentry on the program): measured."""

    name: str
    runs: int
    ns_per_run: float
    source: str = "bpf_stats"


@dataclasses.dataclass(frozen=True)
class OvsTableWork:
    table: str             # "10 (SpoofGuard)"
    lookups: int
    top_flows: tuple[RuleHit, ...] = ()
    subtables: int = 1     # classifier subtables (distinct match shapes): cost of one lookup

    @property
    def weight(self) -> int:
        return self.lookups * self.subtables


@dataclasses.dataclass(frozen=True)
class Transit:
    """Measured receive → transmit time through the node side (tracepoints)."""

    packets: int
    mean_ns: float
    p50_ns: float | None = None
    p99_ns: float | None = None
    backend: str = "tracepoint"


@dataclasses.dataclass(frozen=True)
class ProxyDetour:
    """Measured added time per request of the L7 proxy detour (socket probes or timed requests)."""

    requests: int
    added_ns_per_request: float
    proxy: str = "proxy"
    through_ns: float | None = None    # a request's whole time through the proxy (its share's base)
    direct_ns: float | None = None     # the same request without the detour


@dataclasses.dataclass(frozen=True)
class Calib:
    ns_per_rule_eval: float
    ns_per_ovs_table: float | None = None


def _per_packet(total_ns: float, packets: int) -> float | None:
    return total_ns / packets if packets else None


def netfilter_stage(chains: Sequence[ChainWork], packets: int, cal: Calib,
                    measured: Sequence[TableTime] = (), top_rules: int = 3) -> Node:
    """The netfilter stage: per table, per chain, modelled from evaluations; measured per table if given."""
    stage = Node("stage", "netfilter", packets=packets)
    by_table: dict[str, list[ChainWork]] = {}
    for c in chains:
        by_table.setdefault(c.table, []).append(c)
    meas = {t.table: t for t in measured}
    for table, cs in sorted(by_table.items()):
        tnode = Node("table", table, packets=max((c.packets for c in cs), default=0))
        for c in sorted(cs, key=lambda c: -c.evaluations):
            if c.packets == 0 and c.evaluations == 0:
                continue
            modelled = _per_packet(c.evaluations * cal.ns_per_rule_eval, packets)
            cnode = Node("chain", c.chain, packets=c.packets, ns_per_packet=modelled, modelled_ns=modelled,
                         evaluations_per_packet=(c.evaluations / c.packets) if c.packets else 0.0,
                         provenance="modelled", detail={"table": table, "evaluations": c.evaluations})
            for r in sorted(c.rules, key=lambda r: -r.packets)[:top_rules]:
                if r.packets:
                    cnode.children.append(Node("rule", f"{c.chain}#{r.position}", packets=r.packets,
                                               provenance="modelled", detail={"rule": r.text}))
            tnode.children.append(cnode)
        modelled_t = sum(n.modelled_ns or 0.0 for n in tnode.children) if tnode.children else None
        tnode.modelled_ns = modelled_t
        tnode.evaluations_per_packet = (sum(c.evaluations for c in cs) / packets) if packets else None
        tm = meas.pop(table, None)
        if tm is not None:
            # measured time per call × calls per packet of the selection's traffic
            tnode.measured_ns = tm.mean_ns * tm.calls / packets if packets else None
            tnode.p50_ns, tnode.p99_ns = tm.p50_ns, tm.p99_ns
            tnode.provenance = "both" if modelled_t else "measured"
            tnode.detail["backend"] = tm.backend
        tnode.ns_per_packet = tnode.measured_ns if tnode.measured_ns is not None else modelled_t
        stage.children.append(tnode)
    for tm in meas.values():  # tables measured but with no rule counters (e.g. nft chains without counters)
        ns = tm.mean_ns * tm.calls / packets if packets else None
        stage.children.append(Node("table", tm.table, packets=tm.calls, ns_per_packet=ns, measured_ns=ns,
                                   p50_ns=tm.p50_ns, p99_ns=tm.p99_ns, provenance="measured",
                                   detail={"backend": tm.backend}))
    _roll_up(stage)
    return stage


def bpf_stage(programs: Sequence[ProgramTime], packets: int) -> Node:
    stage = Node("stage", "bpf", packets=packets)
    for p in sorted(programs, key=lambda p: -(p.runs * p.ns_per_run)):
        ns = _per_packet(p.runs * p.ns_per_run, packets)
        stage.children.append(Node("program", p.name, packets=p.runs, ns_per_packet=ns, measured_ns=ns,
                                   provenance="measured", detail={"source": p.source, "ns_per_run": p.ns_per_run}))
    _roll_up(stage)
    return stage


def ovs_stage(tables: Sequence[OvsTableWork], packets: int, cal: Calib, measured_ns: float | None = None) -> Node:
    """OVS tables by lookups. With `measured_ns` (total datapath time in the window, e.g. the
    userspace datapath's CPU time) the stage is measured and split over tables by lookups ×
    classifier subtables (tuple-space search visits every subtable of a table on each lookup)."""
    stage = Node("stage", "ovs", packets=packets)
    total_weight = sum(t.weight for t in tables)
    for t in tables:
        if measured_ns is not None and total_weight:
            ns = _per_packet(measured_ns * t.weight / total_weight, packets)
        else:
            ns = _per_packet(t.weight * cal.ns_per_ovs_table, packets) if cal.ns_per_ovs_table else None
        node = Node("ovs_table", t.table, packets=t.lookups, ns_per_packet=ns, modelled_ns=ns, provenance="modelled",
                    evaluations_per_packet=(t.weight / packets) if packets else None,
                    detail={"lookups": t.lookups, "subtables": t.subtables,
                            "split": "by lookups × subtables" if measured_ns is not None else "calibrated"})
        for f in sorted(t.top_flows, key=lambda f: -f.packets)[:3]:
            if f.packets:
                node.children.append(Node("flow", f.text, packets=f.packets, provenance="modelled"))
        stage.children.append(node)
    _roll_up(stage)
    if measured_ns is not None:
        stage.measured_ns = stage.ns_per_packet = _per_packet(measured_ns, packets)
        stage.provenance = "measured"
    return stage


def proxy_stage(detour: ProxyDetour) -> Node:
    return Node("stage", "l7_proxy", packets=detour.requests, ns_per_packet=detour.added_ns_per_request,
                measured_ns=detour.added_ns_per_request, provenance="measured",
                detail={"unit": "per request", "proxy": detour.proxy, "through_ns": detour.through_ns,
                        "direct_ns": detour.direct_ns},
                children=[Node("proxy", detour.proxy, packets=detour.requests,
                               ns_per_packet=detour.added_ns_per_request,
                               measured_ns=detour.added_ns_per_request, provenance="measured")])


def _roll_up(stage: Node) -> None:
    vals = [c.ns_per_packet for c in stage.children if c.ns_per_packet is not None]
    stage.ns_per_packet = sum(vals) if vals else None
    provs = {c.provenance for c in stage.children if c.ns_per_packet is not None}
    stage.provenance = "both" if len(provs) > 1 or "both" in provs else (provs.pop() if provs else "modelled")
    measured = [c.measured_ns for c in stage.children if c.measured_ns is not None]
    modelled = [c.modelled_ns for c in stage.children if c.modelled_ns is not None]
    stage.measured_ns = sum(measured) if measured else None
    stage.modelled_ns = sum(modelled) if modelled else None


def build_tree(stages: Iterable[Node], transit: Transit | None, packets: int) -> Node:
    """The root: the packet's measured time through the node when a transit probe ran, with the
    time not explained by any stage shown as "rest of the stack"; otherwise the sum of stages."""
    stages = [s for s in stages if s.children or s.ns_per_packet is not None]
    root = Node("root", "node datapath", packets=packets, children=list(stages))
    attributed = sum(s.ns_per_packet or 0.0 for s in stages if s.name != "l7_proxy")
    if transit is not None and transit.packets:
        root.ns_per_packet = root.measured_ns = transit.mean_ns
        root.p50_ns, root.p99_ns = transit.p50_ns, transit.p99_ns
        root.provenance = "measured"
        root.detail["transit_backend"] = transit.backend
        rest = max(transit.mean_ns - attributed, 0.0)
        root.children.append(Node("stage", "rest of stack", packets=transit.packets, ns_per_packet=rest,
                                  measured_ns=rest, provenance="measured",
                                  detail={"note": "measured transit minus attributed stages"}))
        if attributed > transit.mean_ns * 1.25:
            root.detail["warning"] = "attributed stage time exceeds measured transit by more than 25 %"
    else:
        root.ns_per_packet = attributed or None
        root.provenance = "modelled"
    proxy = next((s for s in stages if s.name == "l7_proxy"), None)
    if proxy is not None and root.ns_per_packet is not None:
        root.ns_per_packet += proxy.ns_per_packet or 0.0
    compute_shares(root)
    if proxy is not None and proxy.detail.get("through_ns"):
        # The detour is per request, not per packet: its share is of the request's whole time.
        proxy.share = min((proxy.ns_per_packet or 0.0) / proxy.detail["through_ns"], 1.0)
        for c in proxy.children:
            c.share = proxy.share
    return root

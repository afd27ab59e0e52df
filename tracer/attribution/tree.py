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
from typing import Iterable, Mapping, Sequence

from cnitrace.calibrate.shapes import ShapeCosts
from cnitrace.reports.document import CHANGED, Node, compute_shares


@dataclasses.dataclass(frozen=True)
class RuleHit:
    position: int          # 1-based within its chain
    text: str
    packets: int
    classes: tuple[tuple[str, float], ...] = ()   # its evaluations by cost class (calibrate.shapes)
    unpinned: float = 0.0  # native nft: its evaluations per base-chain packet beyond the counted (with_calls)
    counted: bool = True   # False: a native nft rule without a counter; `packets` are the evaluations reaching it


@dataclasses.dataclass(frozen=True)
class ChainWork:
    """One chain's share of the work, from the netfilter collectors' graph over a delta."""

    table: str             # e.g. "ip filter" / "filter (legacy)"
    chain: str
    packets: int           # packets that entered the chain during the window
    evaluations: int       # rule evaluations performed in this chain during the window
    rules: tuple[RuleHit, ...] = ()
    classes: tuple[tuple[str, float], ...] = ()   # the evaluations by cost class ("early", "full:mark", "nft")
    # native nftables (attribution.netfilter.nft_work): what each packet entering the table's base
    # chains beyond the `base_packets` the counters prove adds to this chain (evaluations by class,
    # entering packets); `base_unknown` base chains took such packets (`with_calls`)
    unpinned: tuple[tuple[str, float], ...] = ()
    unpinned_entering: float = 0.0
    base_packets: float | None = None
    base_unknown: int = 0
    # the chain changed during the window (attribution.changes): `mark` is its basis ("re-based over N
    # intervals" or "excluded"), `excluded` drops its figures from the model; `rule_count` bounds its
    # evaluations (a packet entering it meets each rule at most once)
    rule_count: int | None = None
    mark: str | None = None
    excluded: bool = False
    change: str | None = None
    # a long legacy chain's header walk, timed on a replay at its page offset (calibrate.walk): ns per
    # header miss in place of the uniform calibration's, and what the replay said
    walk_ns: float | None = None
    walk_note: str | None = None


@dataclasses.dataclass(frozen=True)
class TableTime:
    """Measured per-invocation time of one netfilter table or base chain: fentry/kprobe on
    ipt_do_table/nft_do_chain, or a pair of BPF netfilter programs around it (backend "nf_bpf")."""

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
    source: str = "bpf_stats"      # "fentry": timed on the program; "kprobe": an interface's tc classify path
    p50_ns: float | None = None    # per run, where a histogram measured it (fentry / kprobe)
    p99_ns: float | None = None


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
    ns_per_rule_eval: float                   # one evaluation of any shape: used where a chain has no classes
    ns_per_ovs_table: float | None = None     # per classifier subtable a first packet's table lookup visits
    ovs_upcall_ns: float | None = None        # per upcall with no table walked (cnitrace.calibrate.ovs)
    shapes: ShapeCosts | None = None          # per rule shape (calibrate.shapes): preferred where given

    def chain_ns(self, evaluations: float, classes: Sequence[tuple[str, float]] | Mapping[str, float] = (),
                 walk_ns: float | None = None) -> float:
        """Modelled ns of `evaluations` rule evaluations (their classes priced by shape when both exist;
        its header misses at `walk_ns` where the chain's walk was timed)."""
        cls = dict(classes)
        if self.shapes is not None and cls:
            return self.shapes.cost(cls, walk_ns)
        return evaluations * self.ns_per_rule_eval

    def work_ns(self, c: "ChainWork") -> float:
        """Modelled ns of one chain's work over the window."""
        return self.chain_ns(c.evaluations, c.classes, c.walk_ns)

    @classmethod
    def from_shapes(cls, shapes: ShapeCosts, **kw) -> "Calib":
        """A Calib priced by shape; its flat figure (for chains without classes) is a port-match rule."""
        return cls(shapes.class_ns("full:port"), shapes=shapes, **kw)


BASIS_APPORTIONED = "measured (table), apportioned (chain)"
BASIS_TABLE = "measured (table)"


def excluded(node: Node, why: str) -> Node:
    """A node whose figure cannot be vouched for (its counters changed under the profiler): no
    figure at all rather than a wrong one, and a basis that says why."""
    node.ns_per_packet = node.measured_ns = node.modelled_ns = node.apportioned_ns = None
    node.evaluations_per_packet = None
    node.basis = f"{CHANGED}: excluded ({why})"
    return node


def apportion(measured_ns: float, modelled: Mapping[str, float]) -> dict[str, float]:
    """Split a measured total among parts by their modelled shares (pure): the parts add up to
    `measured_ns`. Parts with no modelled cost get none; with no model at all, an equal split."""
    total = sum(max(v, 0.0) for v in modelled.values())
    if not modelled:
        return {}
    if total <= 0:
        return {k: measured_ns / len(modelled) for k in modelled}
    return {k: measured_ns * max(v, 0.0) / total for k, v in modelled.items()}


def apportion_table(tnode: Node, measured_ns: float) -> Node:
    """Give a table node's chains (and their rules) shares of the table's measured time per packet,
    by the model's shares. The table becomes "both": measured, with the model's own figure beside it
    and their ratio (detail["model_vs_measured"] = modelled / measured); each chain keeps its
    modelled figure in `modelled_ns` and takes the apportioned one as its figure (`apportioned_ns`,
    `ns_per_packet`), with basis "measured (table), apportioned (chain)"."""
    chains = [c for c in tnode.children if c.kind == "chain"]
    split = apportion(measured_ns, {str(i): c.modelled_ns or 0.0 for i, c in enumerate(chains)})
    for i, c in enumerate(chains):
        ns = split[str(i)]
        c.apportioned_ns = c.ns_per_packet = ns
        c.basis = BASIS_APPORTIONED
        c.provenance = "both"
        rules = [r for r in c.children if r.kind == "rule" and r.modelled_ns is not None]
        if rules and c.modelled_ns:
            for r in rules:
                r.apportioned_ns = r.ns_per_packet = ns * (r.modelled_ns or 0.0) / c.modelled_ns
                r.basis = BASIS_APPORTIONED
    tnode.measured_ns = measured_ns
    tnode.basis = BASIS_TABLE
    modelled = tnode.modelled_ns
    tnode.detail["model_vs_measured"] = (modelled / measured_ns) if modelled is not None and measured_ns else None
    tnode.detail["apportioned"] = "chains split the measured table time by the model's shares"
    return tnode


def with_calls(cs: Sequence[ChainWork], calls: int) -> list[ChainWork]:
    """A native nft table's chains with its base chains' entering set to the calls a bracket probe
    counted (pure): packets beyond what the counters prove take the ruleset's path (ChainWork.unpinned)."""
    out = []
    for c in cs:
        if c.base_packets is None or not c.base_unknown or not c.unpinned and not c.unpinned_entering:
            out.append(c)
            continue
        extra = max(calls - c.base_packets, 0.0) / c.base_unknown
        classes = dict(c.classes)
        for k, v in c.unpinned:
            classes[k] = classes.get(k, 0.0) + extra * v
        rules = tuple(dataclasses.replace(
            r, packets=r.packets if r.counted else int(round(r.packets + extra * r.unpinned)),
            classes=tuple((k, v + extra * r.unpinned) for k, v in r.classes), unpinned=0.0)
            if r.unpinned else r for r in c.rules)
        out.append(dataclasses.replace(
            c, rules=rules, packets=int(round(c.packets + extra * c.unpinned_entering)),
            evaluations=int(round(c.evaluations + extra * sum(v for _, v in c.unpinned))),
            classes=tuple(sorted(classes.items())), base_packets=float(calls), unpinned=(),
            unpinned_entering=0.0))
    return out


def _per_packet(total_ns: float, packets: int) -> float | None:
    return total_ns / packets if packets else None


def within_rules(c: ChainWork) -> tuple[ChainWork, str | None]:
    """A chain's evaluations bounded by what its rules allow (each packet entering meets each rule
    at most once), scaled down with its classes and a warning when the counters claim more (pure).
    A chain without counted packets is left alone: native nft's entering is then unknown, not zero."""
    if c.rule_count is None or c.packets <= 0 or c.evaluations <= c.rule_count * c.packets:
        return c, None
    cap = c.rule_count * c.packets
    scale = cap / c.evaluations if c.evaluations else 0.0
    why = (f"{c.chain} ({c.table}): {c.evaluations:,} rule evaluations counted for {c.packets:,} packets, more than "
           f"its {c.rule_count} rules allow: clamped to {cap:,}")
    return dataclasses.replace(c, evaluations=cap, classes=tuple((k, v * scale) for k, v in c.classes)), why


def netfilter_stage(chains: Sequence[ChainWork], packets: int, cal: Calib,
                    measured: Sequence[TableTime] = (), top_rules: int = 3) -> Node:
    """The netfilter stage: per table, per chain, modelled from evaluations (priced by rule shape
    when the calibration has shapes and the chain its classes); where a table's time was measured
    (probes: fentry/kprobe, or BPF netfilter brackets "nf_bpf") the table takes the measured figure
    and its chains the apportioned shares of it (`apportion_table`), the model staying beside it."""
    stage = Node("stage", "netfilter", packets=packets)
    by_table: dict[str, list[ChainWork]] = {}
    for c in chains:
        by_table.setdefault(c.table, []).append(c)
    meas = {t.table: t for t in measured}
    for table, cs in sorted(by_table.items()):
        if table in meas and any(c.base_unknown for c in cs):
            cs = with_calls(cs, meas[table].calls)   # native nft: the bracket counted the base chains' packets
        if not any(c.packets or c.evaluations for c in cs):
            continue    # native nft with nothing counted nor measured: no figure to show
        bounded = [within_rules(c) for c in cs]
        cs = [c for c, _ in bounded]
        clamped = {c.chain: why for c, why in bounded if why}
        tnode = Node("table", table, packets=max((c.packets for c in cs), default=0))
        for c in sorted(cs, key=lambda c: -cal.work_ns(c)):
            if c.packets == 0 and c.evaluations == 0:
                continue
            if c.excluded:
                tnode.children.append(Node("chain", c.chain, packets=c.packets, provenance="modelled", basis=c.mark,
                                           detail={"table": table, "change": c.change}))
                continue
            modelled = _per_packet(cal.work_ns(c), packets)
            detail: dict = {"table": table, "evaluations": c.evaluations}
            if c.rule_count is not None:
                detail["rules"] = c.rule_count       # how big the chain is (a cluster merge compares it)
            if c.mark:
                detail["change"] = c.change
            if c.chain in clamped:
                detail["warning"] = clamped[c.chain]
            if c.classes and cal.shapes is not None:
                detail["classes"] = {k: (v / packets if packets else None) for k, v in c.classes}
                # iptables `-m set` matches run per packet (a class names each module that ran)
                lookups = sum(v * k.partition(":")[2].split("+").count("set")
                              for k, v in c.classes if k.startswith("full:"))
                if lookups:
                    detail["ipset_lookups"] = lookups / packets if packets else None
                detail["ns_per_evaluation"] = cal.work_ns(c) / c.evaluations if c.evaluations else None
                detail["model"] = "rule evaluations by shape x this node's calibrated ns per shape"
                if c.walk_ns is not None:
                    detail["walk_ns_per_rule"] = c.walk_ns
                    detail["model"] += ("; header misses at this chain's own walk, timed on a replay at its page "
                                        "offset (measured)")
            if c.walk_note:
                detail["walk"] = c.walk_note
            cnode = Node("chain", c.chain, packets=c.packets, ns_per_packet=modelled, modelled_ns=modelled,
                         evaluations_per_packet=(c.evaluations / c.packets) if c.packets else 0.0,
                         provenance="modelled", detail=detail, basis=c.mark)
            for r in sorted(c.rules, key=lambda r: -r.packets)[:top_rules]:
                if r.packets:
                    rm = (_per_packet(cal.chain_ns(0, r.classes, c.walk_ns), packets)
                          if r.classes and cal.shapes is not None else None)
                    cnode.children.append(Node("rule", f"{c.chain}#{r.position}", packets=r.packets,
                                               ns_per_packet=rm, modelled_ns=rm,
                                               provenance="modelled", detail={"rule": r.text}))
            tnode.children.append(cnode)
        modelled_t = sum(n.modelled_ns or 0.0 for n in tnode.children) if tnode.children else None
        gone = [c.chain for c in cs if c.excluded and (c.packets or c.evaluations)]
        if gone:    # the model misses these chains: a partial sum, never set against a measurement
            tnode.detail["excluded"] = gone
            tnode.basis = f"modelled without {len(gone)} chain(s) that changed (excluded)"
            if table in meas:
                modelled_t = None
        tnode.modelled_ns = modelled_t
        tnode.evaluations_per_packet = (sum(c.evaluations for c in cs if not c.excluded) / packets) if packets else None
        tm = meas.pop(table, None)
        if tm is not None:
            # measured time per call × calls per packet of the selection's traffic
            mns = tm.mean_ns * tm.calls / packets if packets else None
            tnode.p50_ns, tnode.p99_ns = tm.p50_ns, tm.p99_ns
            tnode.provenance = "both" if modelled_t else "measured"
            tnode.detail["backend"] = tm.backend
            tnode.detail["calls"] = tm.calls
            if mns is not None and modelled_t:
                apportion_table(tnode, mns)
                for cnode, c in ((n, next((w for w in cs if w.chain == n.name), None)) for n in tnode.children):
                    if c is not None and c.mark and not c.excluded:    # re-based, then apportioned
                        cnode.basis = f"{c.mark}; {BASIS_APPORTIONED}"
            else:
                tnode.measured_ns = mns
                if gone:
                    tnode.basis = f"{BASIS_TABLE}; chains not apportioned: {len(gone)} changed (excluded)"
        tnode.ns_per_packet = tnode.measured_ns if tnode.measured_ns is not None else modelled_t
        stage.children.append(tnode)
    for tm in meas.values():  # tables measured but with no rule counters (e.g. nft chains without counters)
        ns = tm.mean_ns * tm.calls / packets if packets else None
        stage.children.append(Node("table", tm.table, packets=tm.calls, ns_per_packet=ns, measured_ns=ns,
                                   p50_ns=tm.p50_ns, p99_ns=tm.p99_ns, provenance="measured",
                                   detail={"backend": tm.backend}))
    _roll_up(stage)
    return stage


def bpf_stage(programs: Sequence[ProgramTime], packets: int, traced: Sequence[ProgramTime] = ()) -> Node:
    """Programs by run time. `programs` come from bpf_stats; `traced` from the tc_bpf probe:
    source "fentry" (a program, matched by name) or "kprobe" (an interface's tc classify path).

    A program timed by fentry takes that figure (bpf_stats of a traced program include the
    trampoline) with bpf_stats beside it and their ratio; classify times cover every filter of
    a hook, so they go into the stage's detail rather than being added to the programs.
    """
    stage = Node("stage", "bpf", packets=packets)
    fentry = {t.name: t for t in traced if t.source == "fentry"}
    rows = [(fentry.pop(p.name, None), p) for p in programs] + [(f, None) for f in fentry.values()]
    for f, st in sorted(rows, key=lambda r: -((r[0] or r[1]).runs * (r[0] or r[1]).ns_per_run)):
        main = f or st
        ns = _per_packet(main.runs * main.ns_per_run, packets)
        detail: dict = {"source": main.source, "ns_per_run": main.ns_per_run}
        if f is not None:
            detail.update(p50_ns_per_run=f.p50_ns, p99_ns_per_run=f.p99_ns)
            if st is not None:
                detail["bpf_stats"] = {"runs": st.runs, "ns_per_run": st.ns_per_run,
                                       "note": "includes the fentry trampoline while traced"}
                detail["fentry_vs_bpf_stats"] = f.ns_per_run / st.ns_per_run if st.ns_per_run else None
        stage.children.append(Node("program", main.name, packets=main.runs, ns_per_packet=ns, measured_ns=ns,
                                   provenance="measured", detail=detail))
    classify = [t for t in traced if t.source == "kprobe"]
    if classify:
        stage.detail["tc_classify"] = [
            {"where": c.name, "calls": c.runs, "ns_per_call": c.ns_per_run, "p50_ns": c.p50_ns,
             "p99_ns": c.p99_ns, "backend": "kprobe", "note": "every filter of the interface's tc hooks"}
            for c in classify]
    _roll_up(stage)
    return stage


def ovs_stage(tables: Sequence[OvsTableWork], packets: int, cal: Calib, measured_ns: float | None = None,
              upcalls: int | None = None, first_fraction: float = 1.0) -> Node:
    """OVS tables by lookups × classifier subtables (tuple-space search visits every subtable of a
    table on each lookup).

    With a calibration (`cal.ns_per_ovs_table`, per subtable visited, measured on this node) each
    table carries a modelled time = first-packet lookups × subtables × that cost. A table's lookup
    counter also counts cache hits credited to it (they cost no table walk), so its first-packet
    lookups are estimated as lookups × `first_fraction` (upcalls / datapath lookups; exact when
    every packet is a first packet). Without a calibration, a measured total
    (`measured_ns`: ovs-vswitchd's CPU time in the window) is split over tables by the same weight.
    With both, the stage is "both": measured CPU next to the model of it — the tables plus
    `upcalls` × the calibrated per-upcall cost — and their agreement; the tables stay modelled (no
    probe times one OpenFlow table), with the CPU split kept in their detail for comparison.
    """
    stage = Node("stage", "ovs", packets=packets)
    total_weight = sum(t.weight for t in tables)
    for t in tables:
        split = (_per_packet(measured_ns * t.weight / total_weight, packets)
                 if measured_ns is not None and total_weight else None)
        calibrated = (_per_packet(t.weight * first_fraction * cal.ns_per_ovs_table, packets)
                      if cal.ns_per_ovs_table else None)
        ns = calibrated if calibrated is not None else split
        detail: dict = {"lookups": t.lookups, "subtables": t.subtables,
                        "split": "calibrated" if calibrated is not None else "by lookups × subtables"}
        if calibrated is not None:
            detail["first_packet_lookups"] = round(t.lookups * first_fraction, 1)
            if split is not None:
                detail["cpu_split_ns"] = split
        node = Node("ovs_table", t.table, packets=t.lookups, ns_per_packet=ns, modelled_ns=ns, provenance="modelled",
                    evaluations_per_packet=(t.weight / packets) if packets else None, detail=detail)
        for f in sorted(t.top_flows, key=lambda f: -f.packets)[:3]:
            if f.packets:
                node.children.append(Node("flow", f.text, packets=f.packets, provenance="modelled"))
        stage.children.append(node)
    _roll_up(stage)
    model = None
    if cal.ns_per_ovs_table and cal.ovs_upcall_ns is not None and upcalls is not None:
        tables_ns = total_weight * first_fraction * cal.ns_per_ovs_table
        base_ns = upcalls * cal.ovs_upcall_ns
        model = _per_packet(tables_ns + base_ns, packets)
        stage.detail["model"] = {"tables_ns": _per_packet(tables_ns, packets), "upcalls": upcalls,
                                 "upcall_base_ns": _per_packet(base_ns, packets),
                                 "ns_per_subtable": cal.ns_per_ovs_table, "ns_per_upcall": cal.ovs_upcall_ns,
                                 "covers": "upcalls x calibrated cost per upcall + first-packet table lookups x "
                                           "subtables x ns per subtable; not datapath-cache hits, poll-loop "
                                           "wake-ups (one per sparse packet on the userspace datapath) or "
                                           "userspace conntrack"}
    if measured_ns is not None:
        stage.measured_ns = stage.ns_per_packet = _per_packet(measured_ns, packets)
        stage.modelled_ns = model       # the split is not a model: no agreement without a calibration
        stage.provenance = "both" if model is not None else "measured"
        if model:   # kept in detail too: later additions to the stage (kernel datapath) change its totals
            stage.detail["model"]["agreement"] = stage.measured_ns / model if stage.measured_ns else None
    elif model is not None:
        stage.modelled_ns = stage.ns_per_packet = model
        stage.provenance = "modelled"
    return stage


@dataclasses.dataclass(frozen=True)
class OvsKernel:
    """Measured OVS kernel datapath figures of packets that entered on the selection's entry ports
    (kprobes on the openvswitch module; upcalls from the openvswitch:ovs_dp_upcall tracepoint)."""

    visits: int                         # packets that entered the datapath (ovs_vport_receive calls)
    visit_mean_ns: float                # one visit: key extraction, flow lookup, then actions or an upcall
    process_calls: int                  # ovs_dp_process_packet calls: a recirculation (ct) adds one, nested
    process_mean_ns: float
    process_p50_ns: float | None = None
    process_p99_ns: float | None = None
    visit_p50_ns: float | None = None
    visit_p99_ns: float | None = None
    upcalls: int = 0                    # misses sent up to ovs-vswitchd (first packets)
    backend: str = "kprobe"
    visit_fn: str = "receive"           # "process" when ovs_vport_receive was not probed

    @property
    def upcall_rate(self) -> float:
        return self.upcalls / self.visits if self.visits else 0.0


def with_ovs_kernel(stage: Node, k: OvsKernel, packets: int) -> Node:
    """Add the measured kernel datapath to the OVS stage. Until now the stage holds ovs-vswitchd's
    share (userspace: upcall handling, i.e. first packets); every packet's kernel visit comes on top,
    so the stage becomes their sum, with the split and the upcall figures in `detail`. The model
    has no kernel part: the measured visit stands on both sides, so measured and modelled keep
    covering the same work (ovs-vswitchd's own agreement stays in detail["model"])."""
    kernel = _per_packet(k.visit_mean_ns * k.visits, packets)
    userspace = stage.ns_per_packet
    stage.detail["kernel_datapath"] = {
        "backend": k.backend, "ns_per_packet": kernel, "visits": k.visits, "visit_fn": k.visit_fn,
        "visit_mean_ns": k.visit_mean_ns, "visit_p50_ns": k.visit_p50_ns, "visit_p99_ns": k.visit_p99_ns,
        "process": {"calls": k.process_calls, "mean_ns": k.process_mean_ns, "p50_ns": k.process_p50_ns,
                    "p99_ns": k.process_p99_ns}}
    stage.detail["userspace_ns_per_packet"] = userspace
    stage.detail["upcalls"] = k.upcalls
    stage.detail["upcall_rate"] = round(k.upcall_rate, 4)
    if kernel is None:
        return stage
    stage.ns_per_packet = kernel + (userspace or 0.0)
    stage.measured_ns = kernel + (stage.measured_ns or 0.0)
    if stage.modelled_ns is not None:
        stage.modelled_ns += kernel
    stage.p50_ns, stage.p99_ns = k.visit_p50_ns, k.visit_p99_ns
    stage.provenance = "measured" if stage.modelled_ns is None else "both"
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


_FIGURES = ("ns_per_packet", "measured_ns", "modelled_ns", "apportioned_ns", "p50_ns", "p99_ns",
            "evaluations_per_packet")


def clamp_tree(root: Node) -> list[str]:
    """The last guard before the report (pure): no negative figure, no share above 100 %. Each clamp
    is a warning naming the node: a bug or a counter that changed under the profiler, never silent."""
    warnings = []
    for _, n in root.walk():
        bad = [f for f in _FIGURES if (getattr(n, f) or 0.0) < 0]
        for f in bad:
            setattr(n, f, 0.0)
        if n.packets < 0:
            bad.append("packets")
            n.packets = 0
        if n.share is not None and not 0.0 <= n.share <= 1.0:
            bad.append(f"share {n.share:.2f}")
            n.share = min(max(n.share, 0.0), 1.0)
        if bad:
            warnings.append(f"{n.kind} {n.name}: impossible {', '.join(bad)} clamped")
    return warnings


OVER_TRANSIT = 1.10      # attributed stages may exceed measured transit by this much before a warning


def over_transit_warning(stages: Sequence[Node], transit_ns: float) -> str | None:
    """A warning naming the stages when their sum exceeds measured transit by more than 10 %
    (pure). Measured stages and transit time the same packets, so beyond noise this means a
    modelled stage is too high (or a probe timed packets transit did not)."""
    counted = [s for s in stages if s.name != "l7_proxy" and (s.ns_per_packet or 0.0) > 0]
    attributed = sum(s.ns_per_packet or 0.0 for s in counted)
    if not transit_ns or attributed <= transit_ns * OVER_TRANSIT:
        return None
    parts = ", ".join(f"{s.name} {s.ns_per_packet / 1000:,.1f} µs ({s.provenance})"
                      for s in sorted(counted, key=lambda s: -(s.ns_per_packet or 0.0)))
    return (f"attributed stage time exceeds measured transit by {attributed / transit_ns - 1:.0%} "
            f"({parts} vs transit {transit_ns / 1000:,.1f} µs per packet)")


def build_tree(stages: Iterable[Node], transit: Transit | None, packets: int) -> Node:
    """The root: the packets' measured time through the node when a transit probe ran, with the
    time not explained by any stage shown as "rest of the stack"; otherwise the sum of stages.

    Every figure is per packet of the report's unit (`packets`): transit's total time is spread
    over the same count as the stages' (the timed packets may include a few the report does not
    count, such as a client's RST after a probe's SYN-ACK)."""
    stages = [s for s in stages if s.children or s.ns_per_packet is not None]
    root = Node("root", "node datapath", packets=packets, children=list(stages))
    attributed = sum(s.ns_per_packet or 0.0 for s in stages if s.name != "l7_proxy")
    if transit is not None and transit.packets:
        per_packet = transit.mean_ns * transit.packets / packets if packets else transit.mean_ns
        root.ns_per_packet = root.measured_ns = per_packet
        root.p50_ns, root.p99_ns = transit.p50_ns, transit.p99_ns
        root.provenance = "measured"
        root.detail["transit_backend"] = transit.backend
        root.detail["transit_packets"] = transit.packets
        rest = max(per_packet - attributed, 0.0)
        root.children.append(Node("stage", "rest of stack", packets=transit.packets, ns_per_packet=rest,
                                  measured_ns=rest, provenance="measured",
                                  detail={"note": "measured transit minus attributed stages"}))
        warning = over_transit_warning(stages, per_packet)
        if warning:
            root.detail["warning"] = warning
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

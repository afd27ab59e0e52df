"""From netfilter collector deltas to attribution inputs (pure).

The collectors compute, per chain, how many packets entered and how many rule evaluations
they made during the window; attribution wants that as ChainWork plus the order a packet
meets the chains. iptables-nft rules also show up in `nft -j list ruleset` (as xt
expressions), so nft tables that the iptables-nft backend owns are skipped to avoid
counting the same work twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from cnitrace.attribution.tree import ChainWork, RuleHit
from cnitrace.calibrate.shapes import RuleCount, matched_headers, parse_shape, split_rules
from cnitrace.collectors.base import Warnings
from cnitrace.collectors.iptables import graph as ipt_graph
from cnitrace.collectors.iptables.parse import Rule, Ruleset
from cnitrace.collectors.nftables import graph as nft_graph

IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")


def _costs_and_graphs(delta: Ruleset) -> tuple[dict, dict, tuple[str, ...]]:
    """ipt_graph.costs_by_table, keeping the graphs it walked (one nodes_of pass, not two)."""
    w = Warnings()
    graphs = ipt_graph.nodes_of(delta)
    costs: dict[tuple[str, str, str, str], ipt_graph.ChainCost] = {}
    for tk, graph in graphs.items():
        for name, cost in ipt_graph.evaluate(graph, None, w).items():
            node = graph[name]
            if tk[0] == "nft" and node.base and node.policy_packets == 0:
                cost = dataclasses.replace(cost, notes=(*cost.notes, ipt_graph.NFT_POLICY_NOTE))
            costs[(*tk, name)] = cost
    return costs, graphs, w.freeze()


def rule_counts(delta: Ruleset, costs: Mapping | None = None,
                chains: set[tuple[str, str, str, str]] | None = None, graphs: Mapping | None = None
                ) -> dict[tuple[str, str, str, str], list[tuple[Rule, RuleCount]]]:
    """Per rule of every chain with packets: the evaluations that reached it and its matches (pure).

    The graph gives per-chain figures (entering, evaluations, returns); the walk down a chain is
    redone here to keep each rule's reach: what a rule takes out is its matches for a verdict
    (ACCEPT/DROP/RETURN/goto), its matches minus what came back for a jump, nothing for a
    non-terminating target (MARK, LOG). The reaches are scaled to the graph's chain evaluations
    where the two differ (counters inferred from a later rule). `chains` limits the work.
    (The collectors' graph could hand these out directly: it computes them in its walk.)"""
    if costs is None or graphs is None:
        costs, graphs, _ = _costs_and_graphs(delta)
    by_chain: dict[tuple[str, str, str, str], list[Rule]] = {}
    for r in delta.rules:
        by_chain.setdefault((r.backend, r.family, r.table, r.chain), []).append(r)
    out: dict[tuple[str, str, str, str], list[tuple[Rule, RuleCount]]] = {}
    for tk, graph in graphs.items():
        for name, node in graph.items():
            key = (*tk, name)
            c = costs.get(key)
            if c is None or not c.entering or c.evaluations is None or (chains is not None and key not in chains):
                continue
            rules = sorted(by_chain.get(key, ()), key=lambda r: r.position)
            reach = float(c.entering)
            rows: list[tuple[Rule, float]] = []
            for i, (st, rule) in enumerate(zip(node.steps, rules)):
                if st.observed is not None and i > 0:
                    reach = float(st.observed)
                rows.append((rule, reach))
                p = float(rule.packets or 0)
                if not p:
                    continue
                left = ipt_graph.leaving(st, p, costs.get((*tk, st.targets[0])) if st.targets else None)
                reach = max(reach - left, 0.0)
            total = sum(x for _, x in rows)
            scale = (c.evaluations / total) if total > 0 else 1.0
            out[key] = [(rule, RuleCount(parse_shape(rule.spec), x * scale, float(rule.packets or 0)))
                        for rule, x in rows]
    return out


def walk_fields(walk: Any) -> tuple[float | None, str | None]:
    """A chain's timed walk (calibrate.walk.Walk) as ChainWork's (walk_ns, walk_note) (pure)."""
    if walk is None:
        return None, None
    if walk.ns_per_rule is None:
        return None, f"walk not replayed ({walk.reason}): its header misses are priced by the uniform calibration"
    return walk.ns_per_rule, (f"header walk {walk.ns_per_rule:.1f} ns per rule, {walk.provenance} on a replay of its "
                              f"{walk.rules:,} rules at page offset {walk.page_offset}")


def iptables_work(delta: Ruleset, top_rules: int = 3, walks: Mapping[tuple[str, str, str], Any] = {}
                  ) -> tuple[list[ChainWork], tuple[str, ...]]:
    """Per chain with packets: its work (entering, evaluations), its evaluations by cost class
    (calibrate.shapes: from the rule text and the per-rule counters) and its top rules; `walks`
    ((family, table, chain) -> calibrate.walk.Walk) price the header misses of long chains."""
    costs, graphs, warnings = _costs_and_graphs(delta)
    active = {k for k, c in costs.items() if c.entering and c.evaluations is not None}
    counted = rule_counts(delta, costs, active, graphs)
    evidence: dict[tuple[str, str, str], list] = {}
    for key, rows in counted.items():
        evidence.setdefault(key[:3], []).extend(rc for _, rc in rows)
    table_evidence = {tk: matched_headers(rcs) for tk, rcs in evidence.items()}
    out = []
    for (backend, family, table, chain), c in costs.items():
        if not c.entering or c.evaluations is None:
            continue
        rows = counted.get((backend, family, table, chain), [])
        per_rule = split_rules([rc for _, rc in rows], table_evidence.get((backend, family, table), ()))
        classes: dict[str, float] = {}
        for mine in per_rule:
            for k, v in mine.items():
                classes[k] = classes.get(k, 0.0) + v
        rule_classes = {rule.position: tuple(sorted(m.items())) for (rule, _), m in zip(rows, per_rule)}
        hits = sorted((rule for rule, _ in rows if rule.packets), key=lambda r: -r.packets)[:top_rules]
        label = f"{table} ({'iptables-' + backend if backend else 'iptables'}, {family})"
        walk_ns, walk_note = walk_fields(walks.get((family, table, chain)) if backend != "nft" else None)
        out.append(ChainWork(label, chain, int(round(c.entering)), int(round(c.evaluations)),
                             tuple(RuleHit(r.position, r.spec, r.packets, rule_classes.get(r.position, ()))
                                   for r in hits),
                             classes=tuple(sorted(classes.items())), walk_ns=walk_ns, walk_note=walk_note))
    return out, warnings


def iptables_nft_tables(delta: Ruleset) -> set[tuple[str, str]]:
    """(nft family, table) pairs that the iptables-nft backend manages and that hold rules."""
    fam = {"ipv4": "ip", "ipv6": "ip6"}
    return {(fam.get(r.family, r.family), r.table) for r in delta.rules if r.backend == "nft"}


def nft_work(records: Iterable[object], skip: set[tuple[str, str]] = frozenset(),
             top_rules: int = 3) -> tuple[list[ChainWork], tuple[str, ...]]:
    """Per native nftables chain with packets: its entering packets, rule evaluations and their cost
    classes (collectors.nftables.graph.native_model: from the ruleset's structure, pinned by whatever
    counters there are; plain compare / hash set / verdict map / interval lookup by elements walked).

    The base chains' entering is what the counters prove (a lower bound where the first rule has no
    counter); each ChainWork also carries what one more packet entering the table's base chains would
    add (`unpinned`), so the stage scales to the bracket probe's measured calls (`with_calls`)."""
    recs = [r for r in records if (getattr(r, "family", None), getattr(r, "table", None)) not in skip]
    _, warnings = nft_graph.costs_by_table(recs)
    model = nft_graph.native_model(recs)
    bases: dict[tuple[str, str], list[nft_graph.NativeChain]] = {}
    for ch in model.values():
        if ch.base:
            bases.setdefault((ch.family, ch.table), []).append(ch)
    out = []
    for (family, table, chain), ch in model.items():
        classes = ch.classes()
        unpinned = ch.classes(1.0)
        unpinned = {k: unpinned.get(k, 0.0) - classes.get(k, 0.0) for k in unpinned}
        unpinned = {k: v for k, v in unpinned.items() if v > 1e-9}
        tb = bases.get((family, table), [])
        evals = sum(e.reach for e in ch.rules)
        # a rule without a counter shows the evaluations that reached it (its packets are not counted)
        hits = sorted((e for e in ch.rules if (e.rule.packets if e.rule.has_counter else e.reach or e.extra)),
                      key=lambda e: (-(e.rule.packets if e.rule.has_counter else e.reach), -e.extra))[:top_rules]
        out.append(ChainWork(f"{family} {table} (nft)", chain, int(round(ch.entering)), int(round(evals)),
                             tuple(RuleHit(e.rule.position, e.rule.comment or f"handle {e.rule.handle}",
                                           int(round(e.rule.packets if e.rule.has_counter else e.reach)),
                                           ((e.cls, e.reach),), e.extra, e.rule.has_counter)
                                   for e in hits),
                             classes=tuple(sorted(classes.items())),
                             unpinned=tuple(sorted(unpinned.items())),
                             unpinned_entering=ch.extra_entering,
                             base_packets=sum(b.entering for b in tb),
                             base_unknown=sum(1 for b in tb if b.extra_entering > 0)))
    return out, warnings


def evaluation_order(delta: Ruleset, work: Iterable[ChainWork],
                     starts: Mapping[str, str] = {"filter": "FORWARD"}) -> list[str]:
    """Chains in the order a forwarded packet meets them (depth-first over the jump graph from the
    base chain), keeping only chains that saw packets in the window."""
    active = {w.chain for w in work if w.packets}
    order: list[str] = []
    for tk, graph in ipt_graph.nodes_of(delta).items():
        start = starts.get(tk[2])
        if start and start in graph:
            for chain in ipt_graph.walk_order(graph, start):
                if chain in active and chain not in order:
                    order.append(chain)
    return order


def drop_rules(delta: Ruleset) -> list[tuple[str, int]]:
    """(where, packets) for every DROP/REJECT rule and DROP policy that dropped packets in the window."""
    out = [(f"{r.chain}#{r.position} ({r.table}, -j {r.target})", r.packets) for r in delta.rules
           if r.target in ("DROP", "REJECT") and r.packets]
    out += [(f"{c.name} policy ({c.table})", c.packets) for c in delta.chains
            if c.builtin and c.policy == "DROP" and c.packets]
    return out


def merge_drops(probe_drops: list[dict], rule_drops: list[tuple[str, int]]) -> list[dict]:
    """Drops by reason (measured, skb:kfree_skb) joined with the netfilter rules that dropped them
    (counters): when the rules account for exactly the NETFILTER_DROP count, it is "both"."""
    total = sum(n for _, n in rule_drops)
    out = []
    for d in probe_drops:
        if d["reason"] == "NETFILTER_DROP" and rule_drops:
            agree = d["count"] == total
            for where, n in sorted(rule_drops, key=lambda x: -x[1]):
                out.append({"reason": "NETFILTER_DROP", "count": n, "where": where,
                            "provenance": "both" if agree else "modelled"})
            if not agree:
                out.append({**d, "where": f"{d['where']} (probe total; rules counted {total})"})
        else:
            out.append(d)
    if rule_drops and not any(d["reason"] == "NETFILTER_DROP" for d in probe_drops):
        out += [{"reason": "NETFILTER_DROP", "count": n, "where": w, "provenance": "modelled"}
                for w, n in rule_drops]
    return out

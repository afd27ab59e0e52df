"""From netfilter collector deltas to attribution inputs (pure).

The collectors compute, per chain, how many packets entered and how many rule evaluations
they made during the window; attribution wants that as ChainWork plus the order a packet
meets the chains. iptables-nft rules also show up in `nft -j list ruleset` (as xt
expressions), so nft tables that the iptables-nft backend owns are skipped to avoid
counting the same work twice.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from cnitrace.attribution.tree import ChainWork, RuleHit
from cnitrace.collectors.iptables import graph as ipt_graph
from cnitrace.collectors.iptables.parse import Rule, Ruleset
from cnitrace.collectors.nftables import graph as nft_graph
from cnitrace.collectors.nftables.parse import NftRule

IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")


def iptables_work(delta: Ruleset, top_rules: int = 3) -> tuple[list[ChainWork], tuple[str, ...]]:
    costs, warnings = ipt_graph.costs_by_table(delta)
    rules_by_chain: dict[tuple[str, str, str, str], list[Rule]] = {}
    for r in delta.rules:
        rules_by_chain.setdefault((r.backend, r.family, r.table, r.chain), []).append(r)
    out = []
    for (backend, family, table, chain), c in costs.items():
        if not c.entering or c.evaluations is None:
            continue
        hits = sorted((r for r in rules_by_chain.get((backend, family, table, chain), []) if r.packets),
                      key=lambda r: -r.packets)[:top_rules]
        label = f"{table} ({'iptables-' + backend if backend else 'iptables'}, {family})"
        out.append(ChainWork(label, chain, int(round(c.entering)), int(round(c.evaluations)),
                             tuple(RuleHit(r.position, r.spec, r.packets) for r in hits)))
    return out, warnings


def iptables_nft_tables(delta: Ruleset) -> set[tuple[str, str]]:
    """(nft family, table) pairs that the iptables-nft backend manages and that hold rules."""
    fam = {"ipv4": "ip", "ipv6": "ip6"}
    return {(fam.get(r.family, r.family), r.table) for r in delta.rules if r.backend == "nft"}


def nft_work(records: Iterable[object], skip: set[tuple[str, str]] = frozenset(),
             top_rules: int = 3) -> tuple[list[ChainWork], tuple[str, ...]]:
    recs = [r for r in records if (getattr(r, "family", None), getattr(r, "table", None)) not in skip]
    costs, warnings = nft_graph.costs_by_table(recs)
    rules: dict[tuple[str, str, str], list[NftRule]] = {}
    for r in recs:
        if isinstance(r, NftRule):
            rules.setdefault((r.family, r.table, r.chain), []).append(r)
    out = []
    for (family, table, chain), c in costs.items():
        if not c.entering or c.evaluations is None:
            continue
        hits = sorted((r for r in rules.get((family, table, chain), []) if r.packets),
                      key=lambda r: -(r.packets or 0))[:top_rules]
        out.append(ChainWork(f"{family} {table} (nft)", chain, int(round(c.entering)), int(round(c.evaluations)),
                             tuple(RuleHit(r.position, r.comment or f"handle {r.handle}", r.packets or 0)
                                   for r in hits)))
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

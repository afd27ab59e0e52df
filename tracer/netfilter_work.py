"""From netfilter collector deltas to attribution inputs (pure).

The collectors compute, per chain, how many packets entered and how many rule evaluations
they made during the window; attribution wants that as ChainWork plus the order a packet
meets the chains. iptables-nft rules also show up in `nft -j list ruleset` (as xt
expressions), so nft tables that the iptables-nft backend owns are skipped to avoid
counting the same work twice.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from cnitrace.attribution import ChainWork, RuleHit
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

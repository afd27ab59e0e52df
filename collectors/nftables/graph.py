"""nftables rules as the shared evaluations-per-packet model (see collectors/iptables/graph.py).

What the counters of an nft ruleset can and cannot tell:
- a rule's verdict counts only if its counter sits after its matches (or it has no match);
- a counter before the matches of the first rule of a chain counts every packet entering it,
  the only way to know a base chain's traffic (nft reports no policy counter);
- a verdict-map dispatch (`vmap @services`) is one evaluation, but which element matched is not
  counted, so chains reached only through it have unknown entering packets unless the caller
  supplies them (or their own first rule counts without matching); what the dispatch took out
  of its chain is inferred when the next rule counts every packet reaching it.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from cnitrace.collectors.base import Warnings
from cnitrace.collectors.iptables.graph import (CONTINUE, DISPATCH, GOTO, JUMP, RETURNS, TERMINAL, ChainCost, Node,
                                                 Step, evaluate)
from cnitrace.collectors.nftables.parse import NftChain, NftRule

_KIND = {"continue": CONTINUE, "terminal": TERMINAL, "return": RETURNS, "jump": JUMP, "goto": GOTO,
         "dispatch": DISPATCH}

Table = tuple[str, str]  # (family, table)


def step_of(rule: NftRule) -> Step:
    kind = _KIND.get(rule.verdict, CONTINUE)
    counts_matches = rule.has_counter and (rule.unconditional or not rule.counter_before_match)
    packets = rule.packets if counts_matches and kind != DISPATCH else None
    observed = rule.packets if rule.has_counter and (rule.counter_before_match or rule.unconditional) else None
    return Step(kind, packets, rule.targets if kind in (JUMP, GOTO, DISPATCH) else (),
                f"{rule.chain}#{rule.position}", observed)


def nodes_of(records: Iterable[object]) -> dict[Table, dict[str, Node]]:
    chains: dict[Table, dict[str, NftChain]] = {}
    rules: dict[tuple[str, str, str], list[NftRule]] = {}
    for r in records:
        if isinstance(r, NftChain):
            chains.setdefault((r.family, r.table), {})[r.name] = r
        elif isinstance(r, NftRule):
            rules.setdefault((r.family, r.table, r.chain), []).append(r)
    out: dict[Table, dict[str, Node]] = {}
    for tk, cs in chains.items():
        graph = {}
        for name, c in cs.items():
            rs = sorted(rules.get((*tk, name), ()), key=lambda r: r.position)
            first = rs[0] if rs else None
            observed = (first.packets if first is not None and first.has_counter
                        and (first.counter_before_match or first.unconditional) else None)
            graph[name] = Node(name, tuple(step_of(r) for r in rs), c.base, None,
                               float(observed) if observed is not None else None)
        out[tk] = graph
    return out


def costs_by_table(records: Iterable[object], entering: Mapping[tuple[str, str, str], float] | None = None
                   ) -> tuple[dict[tuple[str, str, str], ChainCost], tuple[str, ...]]:
    """evaluate() per (family, table) over delta records; keys are (family, table, chain)."""
    w = Warnings()
    out: dict[tuple[str, str, str], ChainCost] = {}
    for tk, graph in nodes_of(records).items():
        over = {k[2]: v for k, v in (entering or {}).items() if k[:2] == tk}
        for name, cost in evaluate(graph, over, w).items():
            out[(*tk, name)] = cost
    return out, w.freeze()


def rules_without_counters(records: Iterable[object]) -> list[NftRule]:
    """Rules whose verdict cannot be attributed because they carry no counter."""
    return [r for r in records if isinstance(r, NftRule) and not r.has_counter and r.verdict != "continue"]

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

import dataclasses
from typing import Iterable, Mapping

from cnitrace.collectors.base import Warnings
from cnitrace.collectors.iptables.graph import (CONTINUE, DISPATCH, GOTO, JUMP, RETURNS, TERMINAL, ChainCost, Node,
                                                 Step, evaluate)
from cnitrace.collectors.nftables.parse import NftChain, NftRule, NftSet

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


# --- native rules without counters: evaluations from the ruleset's structure (pure) ---------------
#
# Native nftables rules carry counters only where their author wrote one, so the shared model above
# knows little of a kube-proxy-nftables or lab-style ruleset. What is known: packets entering a base
# chain (a bracket probe's calls, else the counters' lower bound), and the structure — each rule is
# evaluated by the packets that reach it; a rule's verdict takes packets out; a verdict map sends
# them on to chains. Counters, where present, pin the numbers: a counter that counts every packet
# reaching a rule fixes the flow there, one after a rule's matches fixes what that rule took out.
# Packets the counters do not account for take the structure's path (they go on past every rule
# that has no evidence of taking them: the costly reading, as for iptables shapes) and leave where
# the counters say the flow was pinned. Each rule's evaluations carry a cost class by what it does:
# a plain compare/meta/payload rule, a hash set lookup, a verdict-map dispatch, or an interval
# lookup over a concatenated key (pipapo), priced by the elements that share the packet's first
# field (calibrate.shapes.ShapeCosts.class_ns).

NFT_PLAIN, NFT_SET, NFT_VMAP, NFT_IMAP = "nft", "nft:set", "nft:vmap", "nft:imap"
MAX_DEPTH = 16


@dataclasses.dataclass(frozen=True)
class NativeEval:
    rule: NftRule
    reach: float          # evaluations in the window, base chains entered as `native_model` was told
    extra: float          # evaluations one more packet entering the base chains adds
    cls: str              # cost class (NFT_PLAIN, NFT_SET, NFT_VMAP or "nft:imap:<elements>")


@dataclasses.dataclass(frozen=True)
class NativeChain:
    family: str
    table: str
    chain: str
    base: bool
    entering: float
    extra_entering: float
    rules: tuple[NativeEval, ...]

    def classes(self, extra_packets: float = 0.0) -> dict[str, float]:
        """Evaluations by cost class, with `extra_packets` more packets entering the base chains."""
        out: dict[str, float] = {}
        for e in self.rules:
            n = e.reach + extra_packets * e.extra
            if n > 0:
                out[e.cls] = out.get(e.cls, 0.0) + n
        return out


def _observed(r: NftRule) -> float | None:
    return float(r.packets) if r.has_counter and (r.counter_before_match or r.unconditional) else None


def _counted_matches(r: NftRule) -> float | None:
    return float(r.packets) if r.has_counter and (r.unconditional or not r.counter_before_match) else None


def imap_elements(s: NftSet, entering: Mapping[str, float]) -> float:
    """Elements an interval lookup over `s` walks for the window's packets (pure): pipapo matches the
    key field by field, and after the first field it goes on with every element that shares the
    packet's first-field value (e.g. every `tcp . port` element for a TCP packet), so the cost
    follows those. The packets' first-field values are known where elements send them to counted
    chains (`target_first` × the chains' entering); the mix of those is taken for all, else a
    uniform mix over the values present."""
    counts = dict(s.first_field)
    if not counts:
        return float(s.size)
    seen: dict[str, float] = {}
    for target, f0 in s.target_first:
        n = entering.get(target)
        if n:
            seen[f0] = seen.get(f0, 0.0) + n
    total = sum(seen.values())
    if total > 0:
        return sum(counts.get(v, 0) * n / total for v, n in seen.items())
    return sum(counts.values()) / len(counts)


def rule_class(r: NftRule, sets: Mapping[str, NftSet], entering: Mapping[str, float]) -> str:
    """The cost class of one native rule from its expressions (pure)."""
    for name in r.lookups:
        s = sets.get(name)
        if s is not None and "interval" in s.flags and s.first_field:
            return f"{NFT_IMAP}:{imap_elements(s, entering):.1f}"
    if r.lookups:
        return NFT_VMAP if r.verdict == "dispatch" else NFT_SET
    return NFT_PLAIN


def index_records(records: Iterable[object]) -> tuple[dict[tuple[str, str], dict[str, NftChain]],
                                                       dict[tuple[str, str, str], list[NftRule]],
                                                       dict[tuple[str, str], dict[str, NftSet]]]:
    """Chains and sets by (family, table), rules by (family, table, chain) in dump order."""
    chains: dict[tuple[str, str], dict[str, NftChain]] = {}
    rules: dict[tuple[str, str, str], list[NftRule]] = {}
    sets: dict[tuple[str, str], dict[str, NftSet]] = {}
    for r in records:
        if isinstance(r, NftChain):
            chains.setdefault((r.family, r.table), {})[r.name] = r
        elif isinstance(r, NftRule):
            rules.setdefault((r.family, r.table, r.chain), []).append(r)
        elif isinstance(r, NftSet):
            sets.setdefault((r.family, r.table), {})[r.name] = r
    return chains, rules, sets


def native_model(records: Iterable[object], entering: Mapping[tuple[str, str, str], float] | None = None
                 ) -> dict[tuple[str, str, str], NativeChain]:
    """Per chain reached: each rule's evaluations and cost class (pure; see the notes above).

    `entering` gives base chains' packets (e.g. a bracket probe's calls); otherwise a base chain's
    entering is what its counters prove: its first rule's counter, else the packets its counted
    exits account for (a lower bound). NativeChain.extra_* say what one more base-chain packet adds,
    so a caller who learns the entering later (the measured calls) scales without the records."""
    chains, rules, sets = index_records(records)
    out: dict[tuple[str, str, str], NativeChain] = {}
    for tk, cs in chains.items():
        out.update(_table_model(tk, cs, rules, sets.get(tk, {}), entering or {}))
    return out


def _table_model(tk: tuple[str, str], cs: Mapping[str, NftChain], rules: Mapping, sets: Mapping[str, NftSet],
                 entering: Mapping[tuple[str, str, str], float]) -> dict[tuple[str, str, str], NativeChain]:
    chain_rules = {n: sorted(rules.get((*tk, n), ()), key=lambda r: r.position) for n in cs}
    pinned = {n: _observed(rs[0]) for n, rs in chain_rules.items() if rs and _observed(rs[0]) is not None}
    demand_memo: dict[str, float] = {}

    def demand(name: str, stack: tuple[str, ...] = ()) -> float:
        """Packets the counters prove entered `name`: a lower bound from its counted exits."""
        if name in demand_memo:
            return demand_memo[name]
        if name in stack or len(stack) > MAX_DEPTH or name not in chain_rules:
            return 0.0
        total = best = 0.0
        rs = chain_rules[name]
        for r in rs:
            obs = _observed(r)
            if obs is not None:
                best = max(best, total + obs)
            m = _counted_matches(r)
            if r.verdict in ("terminal", "return") and m is not None:
                total += m
            elif r.verdict in ("goto", "dispatch") or (r.verdict == "jump" and _ends_terminal(chain_rules, r)):
                total += sum(pinned.get(t, demand(t, (*stack, name))) for t in r.targets)
        demand_memo[name] = v = max(best, total, pinned.get(name, 0.0))
        return v

    reach: dict[tuple[str, int], list[float]] = {}
    enter: dict[str, list[float]] = {}

    def walk(name: str, c: float, x: float, stack: tuple[str, ...]) -> tuple[float, float]:
        """Flow (counted c, per extra base packet x) through `name`; returns what it hands back."""
        if name in stack or len(stack) > MAX_DEPTH or name not in chain_rules:
            return 0.0, 0.0
        if name in pinned:
            c, x = pinned[name], 0.0
        e = enter.setdefault(name, [0.0, 0.0])
        e[0] += c
        e[1] += x
        rs = chain_rules[name]
        back_c = back_x = 0.0
        for i, r in enumerate(rs):
            obs = _observed(r)
            if i > 0 and obs is not None:
                c, x = obs, 0.0
            acc = reach.setdefault((name, r.position), [0.0, 0.0])
            acc[0] += c
            acc[1] += x
            nxt = _observed(rs[i + 1]) if i + 1 < len(rs) else None
            m = _counted_matches(r)
            if r.verdict == "terminal" or r.verdict == "return":
                if r.unconditional:
                    took_c, took_x = c, x
                else:
                    took_c, took_x = (min(m, c) if m is not None else 0.0), 0.0
                if r.verdict == "return":
                    back_c += took_c
                    back_x += took_x
                c, x = c - took_c, x - took_x
            elif r.verdict in ("jump", "goto", "dispatch") and r.targets:
                if r.unconditional or (r.verdict == "dispatch" and nxt is None):
                    sent_c, sent_x = c, x
                elif nxt is not None:
                    sent_c, sent_x = max(c - nxt, 0.0), x
                else:
                    sent_c, sent_x = (min(m, c) if m is not None else 0.0), 0.0
                free = [t for t in r.targets if t not in pinned]
                rest_c = max(sent_c - sum(pinned.get(t, 0.0) for t in r.targets), 0.0)
                ret_c = ret_x = 0.0
                for t in r.targets:
                    tc = pinned[t] if t in pinned else (rest_c / len(free) if free else 0.0)
                    # extra packets the pins do not account for go to the unpinned targets, unless
                    # the map's own verdicts (accept/drop elements) can take them
                    tx = (sent_x / len(free) if t not in pinned and (not r.terminal_in_map or nxt is None)
                          else 0.0)
                    rc, rx = walk(t, tc, tx, (*stack, name))
                    ret_c += rc
                    ret_x += rx
                if r.verdict == "goto":
                    back_c, back_x = back_c + ret_c, back_x + ret_x
                    ret_c = ret_x = 0.0
                c, x = c - sent_c + ret_c, x - sent_x + ret_x
        if not cs[name].base:
            back_c, back_x = back_c + c, back_x + x
        return back_c, back_x

    for name, ch in cs.items():
        if ch.base:
            known = entering.get((*tk, name))
            walk(name, float(known) if known is not None else demand(name), 0.0 if known is not None else 1.0, ())
    ent_map = {n: v[0] for n, v in enter.items()}
    out = {}
    for name, (ec, ex) in enter.items():
        if ec <= 0 and ex <= 0:
            continue
        evals = tuple(NativeEval(r, reach.get((name, r.position), [0.0, 0.0])[0],
                                 reach.get((name, r.position), [0.0, 0.0])[1],
                                 rule_class(r, sets, ent_map))
                      for r in chain_rules[name])
        out[(*tk, name)] = NativeChain(tk[0], tk[1], name, cs[name].base, ec, ex, evals)
    return out


def _ends_terminal(chain_rules: Mapping[str, list[NftRule]], r: NftRule) -> bool:
    """A jump whose target chains all end in an unconditional verdict never hands packets back."""
    return all(chain_rules.get(t) and chain_rules[t][-1].unconditional
               and chain_rules[t][-1].verdict == "terminal" for t in r.targets)

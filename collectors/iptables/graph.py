"""The jump graph and the rule-evaluations-per-packet model (pure functions).

Why: on kernels where no probe can attach, counters are all we have. Rule counters say
how many packets *matched* each rule; what costs CPU is how many rules each packet was
*evaluated* against. For one chain, with N packets entering:

    reach(1) = N;  reach(i+1) = reach(i) - left(i);  evaluations = sum(reach(i))

where `left(i)` is what rule i took out of the chain: all its matched packets for a
terminal verdict, RETURN or goto; for a jump, those that did not come back (the callee's
share that returned is `returns(callee) / entering(callee)`, so nested chains are followed
bottom-up; exact when a chain has one caller, as per-endpoint chains do, and a proportional
split between callers otherwise); nothing for a non-terminating target (LOG, MARK, ...). A packet that matched
rule k therefore costs k evaluations and one that falls through costs all n.

Entering packets come from counters too: a user chain's are the sum of the jump/goto rules
that target it; a builtin chain's are the packets that left at its rules plus its policy
counter (which the kernel bumps on fall-through and on RETURN from the base chain).
Where a needed counter is missing (nft rules without `counter`, verdict maps with several
targets) the figure is None with a note that says why, never a guess — unless the next rule
observes its own reach (a rule without matches, or an nft counter ahead of the matches): then
what the unknown rule took out is the difference, and the walk goes on.

The model is shared by the nftables collector: both are turned into `Node`s of `Step`s.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from cnitrace.collectors.base import Warnings, counter_delta
from cnitrace.collectors.iptables.parse import RETURN, TERMINAL_TARGETS, Chain, Rule, Ruleset

CONTINUE, TERMINAL, RETURNS, JUMP, GOTO, DISPATCH = "continue", "terminal", "return", "jump", "goto", "dispatch"


@dataclasses.dataclass(frozen=True)
class Step:
    """A rule as the cost model sees it. `packets` is None when the rule has no counter."""

    kind: str
    packets: float | None
    targets: tuple[str, ...] = ()
    label: str = ""
    observed: float | None = None   # packets that *reached* this rule (a counter ahead of any match)


@dataclasses.dataclass(frozen=True)
class Node:
    """A chain. `policy_packets` (base chains) counts packets given the policy."""

    name: str
    steps: tuple[Step, ...]
    base: bool = False
    policy_packets: float | None = None
    entering: float | None = None   # observed directly (e.g. an nft counter-only first rule)


@dataclasses.dataclass(frozen=True)
class ChainCost:
    name: str
    entering: float | None
    evaluations: float | None           # evaluations of this chain's own rules
    per_packet: float | None            # evaluations / entering
    inclusive_per_packet: float | None  # including every chain it jumps or goes to
    fall_through: float | None
    returned: float | None              # packets handed back to the caller (RETURN, fall-through, goto-return)
    notes: tuple[str, ...] = ()


def step_of(rule: Rule, user_chains: frozenset[str] | set[str]) -> Step:
    """Classify one iptables rule for the model."""
    t = rule.target
    if t is None:
        kind = CONTINUE
    elif t == RETURN:
        kind = RETURNS
    elif t in user_chains:
        kind = GOTO if rule.goto else JUMP
    elif t in TERMINAL_TARGETS:
        kind = TERMINAL
    else:
        kind = CONTINUE
    targets = (t,) if kind in (JUMP, GOTO) else ()
    observed = rule.packets if unconditional(rule.spec) else None
    return Step(kind, rule.packets, targets, f"{rule.chain}#{rule.position}", observed)


_COMMENT = re.compile(r'-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)\s*')


def unconditional(spec: str) -> bool:
    """A rule with no match at all (comments aside): its counter counts every packet reaching it."""
    rest = _COMMENT.sub("", spec).lstrip()
    return rest == "" or rest.startswith(("-j ", "-g ", "--jump ", "--goto "))


Table = tuple[str, str, str]  # (backend, family, table)


def nodes_of(ruleset: Ruleset) -> dict[Table, dict[str, Node]]:
    """One graph per (backend, family, table): chain name -> Node, in dump order."""
    chains: dict[Table, dict[str, Chain]] = {}
    for c in ruleset.chains:
        chains.setdefault((c.backend, c.family, c.table), {})[c.name] = c
    rules: dict[tuple[str, str, str, str], list[Rule]] = {}
    for r in ruleset.rules:
        rules.setdefault((r.backend, r.family, r.table, r.chain), []).append(r)
    out: dict[Table, dict[str, Node]] = {}
    for ft, cs in chains.items():
        user = {n for n, c in cs.items() if not c.builtin}
        graph: dict[str, Node] = {}
        for name, c in cs.items():
            steps = tuple(step_of(r, user) for r in sorted(rules.get((*ft, name), ()), key=lambda r: r.position))
            graph[name] = Node(name, steps, c.builtin, c.packets if c.builtin and c.counted else None)
        out[ft] = graph
    return out


def edges(graph: Mapping[str, Node]) -> dict[str, tuple[str, ...]]:
    """The jump graph: chain -> the chains it jumps or goes to, in rule order, without repeats."""
    out = {}
    for name, node in graph.items():
        seen: dict[str, None] = {}
        for s in node.steps:
            for t in s.targets:
                seen.setdefault(t, None)
        out[name] = tuple(seen)
    return out


def entering_from_callers(graph: Mapping[str, Node]) -> dict[str, float | None]:
    """Packets entering each non-base chain: the sum of the counters of the rules that target it."""
    out: dict[str, float | None] = {n: 0.0 for n, node in graph.items() if not node.base}
    for node in graph.values():
        for s in node.steps:
            if s.kind == DISPATCH and len(s.targets) > 1:
                for t in s.targets:
                    if t in out:
                        out[t] = None  # which element matched is not counted
                continue
            for t in s.targets:
                if t not in out:
                    continue
                cur = out[t]
                out[t] = None if cur is None or s.packets is None else cur + s.packets
    for n, node in graph.items():
        if node.entering is not None:
            out[n] = node.entering
    return out


def evaluate(graph: Mapping[str, Node], entering: Mapping[str, float] | None = None,
             warnings: Warnings | None = None, *, floor_by_observed: bool = False) -> dict[str, ChainCost]:
    """Per-chain evaluations per packet over one interval (counters should be deltas).

    `entering` overrides what the counters imply for chosen chains (e.g. packets the caller
    sent itself, for base chains whose policy is not counted). `floor_by_observed`: a chain's
    entering is at least what a rule of it without a test counted — for saved dumps, whose totals
    since boot may contradict each other. Not for a live window's deltas: iptables-nft reads its
    counters rule by rule, so a callee read after its caller has counted more packets of the same
    traffic (raising entering there took calico-nft's modelled filter table to 0.68x the brackets).
    """
    w = warnings if warnings is not None else Warnings()
    enter = entering_from_callers(graph)
    for n, node in graph.items():
        if node.base and node.entering is not None:
            enter[n] = node.entering
    if entering:
        enter.update({k: float(v) for k, v in entering.items() if k in graph})
    result: dict[str, ChainCost] = {}
    state: dict[str, str] = {}
    callers: dict[str, int] = {}
    for node in graph.values():
        for st in node.steps:
            for t in st.targets:
                callers[t] = callers.get(t, 0) + 1

    def ret_frac(name: str) -> float | None:
        cost = visit(name)
        if cost is None or cost.returned is None or cost.entering is None:
            return None
        return min(cost.returned / cost.entering, 1.0) if cost.entering > 0 else 0.0

    def visit(name: str) -> ChainCost | None:
        if name in result:
            return result[name]
        if name not in graph:
            return None
        if state.get(name) == "busy":
            w.add(f"loop in the jump graph through {name!r}; its cost is unknown")
            return None
        state[name] = "busy"
        result[name] = cost = _walk(graph[name], enter.get(name), ret_frac, visit, callers, floor_by_observed)
        for note in cost.notes:
            if note.startswith(INCONSISTENT):
                w.add(f"chain {name}: {note}")
        state[name] = "done"
        return cost

    for name in graph:
        visit(name)
    return result


COUNTER_SLACK = 0.02     # rounded (`-L` without -x) and non-atomic reads differ by this much
INCONSISTENT = "counters disagree"


def _walk(node: Node, entering: float | None, ret_frac, visit, callers: Mapping[str, int],
          floor_by_observed: bool = False) -> ChainCost:
    """One chain: first what each rule took out (callees first, via ret_frac), then the reach walk."""
    notes: list[str] = []
    leaves: list[float | None] = []
    to_policy = 0.0
    for s in node.steps:
        p = s.packets
        if s.kind == CONTINUE:
            leaves.append(0.0)
            continue
        if s.kind == DISPATCH and (p is None or len(s.targets) != 1):
            notes.append(f"{s.label or 'a verdict map'} is a verdict-map dispatch: which element matched "
                         "is not counted")
            leaves.append(None)
            continue
        if p is None:
            notes.append(f"{s.label or 'a rule'} has a verdict but no counter")
            leaves.append(None)
            continue
        if s.kind in (TERMINAL, RETURNS):
            leaves.append(p)
            to_policy += p if s.kind == RETURNS else 0.0
        elif s.kind in (JUMP, DISPATCH, GOTO):
            r = ret_frac(s.targets[0]) if s.targets else 0.0
            if r is None:
                notes.append(f"{s.label}: returns from {s.targets[0]!r} unknown")
                leaves.append(None)
                continue
            back = p * r
            if s.kind == GOTO:
                leaves.append(p)
                to_policy += back
            else:
                leaves.append(p - back)
    if node.base and entering is None and node.steps and node.steps[0].observed is not None:
        entering = float(node.steps[0].observed)   # a first rule without matches sees every packet
    if (not node.base and not callers.get(node.name) and not entering
            and any(s.packets for s in node.steps)):
        # nothing in the dump jumps here (a partial paste) yet its rules counted packets: not 0
        entering = float(node.steps[0].observed) if node.steps[0].observed else None
        notes.append("no rule in the dump jumps here but its rules counted packets (a partial dump?): "
                     + ("entering taken from its first rule's counter" if entering else "entering unknown"))
    if (node.base and entering is None and node.policy_packets is None and node.steps
            and node.steps[-1].kind == TERMINAL and node.steps[-1].observed is not None
            and all(x is not None for x in leaves)):
        # no policy counter (nft), but an unconditional last verdict (`counter reject`) leaves the
        # policy nothing: what entered is what the rules took out
        entering = sum(leaves)  # type: ignore[arg-type]
        notes.append("entering packets: the sum of what the rules took out (the last rule is an "
                     "unconditional verdict, so the policy sees none)")
    if node.base and entering is None:
        if node.policy_packets is None:
            notes.append("base chain without a policy counter: entering packets unknown")
        elif any(x is None for x in leaves):
            pass
        else:
            entering = sum(leaves) - to_policy + node.policy_packets  # type: ignore[arg-type]
            if entering < 0:
                notes.append("counters inconsistent (more returned than entered); entering clamped at zero")
                entering = 0.0
    if entering is None:
        if not notes:
            notes.append("entering packets unknown")
        return ChainCost(node.name, None, None, None, None, None, None, tuple(notes))
    seen = max((s.observed for s in node.steps if s.observed is not None), default=None) \
        if floor_by_observed else None
    if seen is not None and seen > entering * (1 + COUNTER_SLACK) + 10:
        # a rule without a test counted more packets than the chain's counters account for
        # entering (a jump to a chain the dump does not hold, or counters zeroed at different
        # times): what reached that rule did enter, so entering is at least that. Seen in a real
        # `iptables -L -v`: OUTPUT policy 1,567K, its unconditional `KUBE-FIREWALL` jump 93M — 60
        # evaluations per packet on a 2-rule chain before this bound, 2.0 after.
        notes.append(f"{INCONSISTENT}: a rule without a test counted {seen:,.0f} packets, more than the "
                     f"{entering:,.0f} its policy and verdicts account for (a jump to a chain the dump does not "
                     "hold, or counters zeroed at different times); entering taken as the larger")
        entering = float(seen)
    reach = float(entering)
    evaluations = 0.0
    inclusive: float | None = 0.0
    unknown_at: str | None = None
    clamped = False
    returned_known = True
    steps = node.steps
    for i, (s, lv) in enumerate(zip(steps, leaves)):
        if s.observed is not None and i > 0:
            reach = float(s.observed)   # measured beats derived
        evaluations += reach
        if lv is None:
            nxt = steps[i + 1].observed if i + 1 < len(steps) else None
            if nxt is None:
                unknown_at = s.label
                break
            lv = max(reach - nxt, 0.0)
            notes.append(f"{s.label}: what it took out inferred from the next rule's counter")
            if s.kind == RETURNS:
                to_policy += lv
            elif s.kind in (GOTO, DISPATCH):
                returned_known = False   # what came back through it to our caller is not counted
            if inclusive is not None:
                inclusive = _dispatch_inclusive(s, visit, callers, inclusive)
        elif s.kind in (JUMP, GOTO, DISPATCH) and s.targets and s.packets:
            callee = visit(s.targets[0])
            inc = callee.inclusive_per_packet if callee is not None else None
            inclusive = inclusive + s.packets * inc if inc is not None and inclusive is not None else None
        reach -= lv
        if reach < -1e-9:
            clamped = True
            reach = 0.0
    if clamped:
        notes.append("counters moved during the snapshot (more left than entered); clamped at zero")
    if unknown_at is not None:
        notes.append(f"evaluations after {unknown_at} unknown")
        return ChainCost(node.name, entering, None, None, None, None, None, tuple(notes))
    fall = max(reach, 0.0)
    returned = None if node.base or not returned_known else to_policy + fall
    if not node.base and not returned_known:
        notes.append("packets returned to the caller unknown (a goto or verdict map without its own counter)")
    per = evaluations / entering if entering > 0 else None
    incl = (evaluations + inclusive) / entering if entering > 0 and inclusive is not None else None
    if entering <= 0:
        notes.append("no packets entered in this interval")
    return ChainCost(node.name, float(entering), evaluations, per, incl, fall, returned, tuple(notes))


def _dispatch_inclusive(s: Step, visit, callers: Mapping[str, int], acc: float) -> float | None:
    """Add the callees' cost for a dispatch whose targets are entered only from it (so their own
    observed entering is what it sent them); otherwise the inclusive figure is unknown."""
    for t in s.targets:
        if callers.get(t) != 1:
            return None
        cost = visit(t)
        if cost is None or cost.entering is None or (cost.entering and cost.inclusive_per_packet is None):
            return None
        acc += cost.entering * (cost.inclusive_per_packet or 0.0)
    return acc


def leaving(step: Step, packets: float, callee: ChainCost | None) -> float:
    """Of `packets` that matched `step`, how many leave the chain there: all of them at a verdict,
    return or goto; at a jump, those the callee does not return (its returned/entering share)."""
    if step.kind in (TERMINAL, RETURNS, GOTO):
        return packets
    if step.kind == JUMP and step.targets:
        back = (min(callee.returned / callee.entering, 1.0)
                if callee is not None and callee.returned is not None and callee.entering else 0.0)
        return packets * (1.0 - back)
    return 0.0


def ruleset_delta(before: Ruleset, after: Ruleset) -> tuple[Ruleset, tuple[str, ...]]:
    """The `after` ruleset with counters replaced by their change since `before`.

    A counter that went backwards (chain flushed, rule replaced) is counted from zero
    since the reset, with a warning; a rule that is new counts from zero.
    """
    w = Warnings()
    old = {r.key: r for r in before.records}
    resets = 0

    def since(rec):
        nonlocal resets
        o = old.get(rec.key)
        dp = counter_delta(o.packets if o else 0, rec.packets)
        db = counter_delta(o.bytes if o else 0, rec.bytes)
        resets += dp.reset or db.reset
        return dataclasses.replace(rec, packets=dp.value, bytes=db.value)

    chains = [since(c) for c in after.chains]
    rules = [since(r) for r in after.rules]
    if resets:
        w.add(f"{resets} counter(s) went backwards (reset); counted from zero since the reset")
    return dataclasses.replace(after, chains=tuple(chains), rules=tuple(rules)), w.freeze()


def walk_order(graph: Mapping[str, Node], start: str) -> list[str]:
    """Chains reachable from `start` in evaluation order (depth-first, rule order) — the chain walk."""
    out: list[str] = []
    seen: set[str] = set()
    es = edges(graph)

    def go(n: str) -> None:
        if n in seen or n not in graph:
            return
        seen.add(n)
        out.append(n)
        for t in es.get(n, ()):
            go(t)

    go(start)
    return out


def costs_by_table(delta_rules: Ruleset, entering: Mapping[tuple[str, str, str, str], float] | None = None
                   ) -> tuple[dict[tuple[str, str, str, str], ChainCost], tuple[str, ...]]:
    """evaluate() over every table of a delta ruleset; keys are (backend, family, table, chain)."""
    w = Warnings()
    out: dict[tuple[str, str, str, str], ChainCost] = {}
    for tk, graph in nodes_of(delta_rules).items():
        over = {k[3]: v for k, v in (entering or {}).items() if k[:3] == tk}
        for name, cost in evaluate(graph, over, w).items():
            node = graph[name]
            if tk[0] == "nft" and node.base and node.policy_packets == 0 and name not in over:
                cost = dataclasses.replace(cost, notes=(*cost.notes, NFT_POLICY_NOTE))
            out[(*tk, name)] = cost
    return out, w.freeze()


# Measured on this kernel: iptables-nft only counts policy packets on a base chain whose policy
# was set explicitly (`iptables -P`, or restored with counters); otherwise the counter stays 0.
NFT_POLICY_NOTE = ("policy counter 0 on the nft backend: it may be uncounted (iptables-nft counts policy "
                   "packets only after `-P`); entering may be underestimated")

"""The evaluations model against a brute-force simulation of the kernel's rule walk.

Hypothesis draws random chain graphs (terminal, non-terminating, RETURN, jump and goto rules;
every user chain called from one rule, as Calico's per-endpoint chains are) and random packets;
the simulator walks each packet rule by rule, counting exactly what the kernel counts (rule
matches, base-chain policy) and, separately, the true evaluations per chain. From the counters
alone the model must recover every chain's entering packets and evaluations exactly.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.iptables.graph import CONTINUE, GOTO, JUMP, RETURNS, TERMINAL, Node, Step, evaluate

VERDICT, BACK = "verdict", "back"


@dataclasses.dataclass
class SimRule:
    kind: str
    modulus: int      # matches packets whose id % modulus == residue
    residue: int
    target: str = ""
    matched: int = 0
    hidden: bool = False   # no counter (an nft rule without `counter`)


def simulate(chains: dict[str, list[SimRule]], packets: int) -> tuple[dict[str, int], int, dict[str, int]]:
    evals = {name: 0 for name in chains}
    entering = {name: 0 for name in chains}
    policy = 0

    def run(name: str, pid: int) -> str:
        entering[name] += 1
        for rule in chains[name]:
            evals[name] += 1
            if pid % rule.modulus != rule.residue:
                continue
            rule.matched += 1
            if rule.kind == TERMINAL:
                return VERDICT
            if rule.kind == RETURNS:
                return BACK
            if rule.kind == JUMP:
                if run(rule.target, pid) == VERDICT:
                    return VERDICT
            elif rule.kind == GOTO:
                return run(rule.target, pid)
        return BACK

    for pid in range(packets):
        if run("B", pid) == BACK:
            policy += 1   # fall-through, RETURN in the base chain or a goto that came back
    return evals, policy, entering


@st.composite
def graphs(draw):
    n_user = draw(st.integers(0, 5))
    names = ["B"] + [f"U{i}" for i in range(n_user)]
    uncalled = names[1:]
    chains: dict[str, list[SimRule]] = {}
    for idx, name in enumerate(names):
        rules = []
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from([TERMINAL, CONTINUE, RETURNS, JUMP, GOTO]))
            later = [c for c in uncalled if names.index(c) > idx]
            if kind in (JUMP, GOTO) and not later:
                kind = CONTINUE
            mod = draw(st.integers(1, 5))
            rule = SimRule(kind, mod, draw(st.integers(0, mod - 1)))
            if kind in (JUMP, GOTO):
                rule.target = draw(st.sampled_from(later))
                uncalled.remove(rule.target)
            rules.append(rule)
        for prev, nxt in zip(rules, rules[1:]):
            # A counter can be missing where the next rule observes its own reach (no match at all);
            # not in the base chain, whose traffic is only known from all its exits and the policy.
            if name != "B" and prev.kind in (TERMINAL, RETURNS) and nxt.modulus == 1:
                prev.hidden = draw(st.booleans())
        chains[name] = rules
    return chains, draw(st.integers(0, 60))


@settings(max_examples=400, deadline=None)
@given(graphs())
def test_model_recovers_simulated_evaluations(case):
    chains, packets = case
    evals, policy, entering = simulate(chains, packets)
    graph = {name: Node(name, tuple(Step(r.kind, None if r.hidden else r.matched, (r.target,) if r.target else (),
                                         f"{name}#{i + 1}", r.matched if r.modulus == 1 else None)
                                    for i, r in enumerate(rules)),
                        base=name == "B", policy_packets=policy if name == "B" else None)
             for name, rules in chains.items()}
    costs = evaluate(graph)
    for name in chains:
        c = costs[name]
        assert c.entering == entering[name], name
        assert c.evaluations is not None and abs(c.evaluations - evals[name]) < 1e-9, (name, c, evals)
    total = sum(evals.values())
    b = costs["B"]
    if packets:
        assert abs(b.inclusive_per_packet * packets - total) < 1e-6

"""Rule evaluations per packet: hand-checked tables over the pure model (no root)."""

from __future__ import annotations

import pytest

from cnitrace.collectors.iptables.graph import (CONTINUE, DISPATCH, GOTO, JUMP, RETURNS, TERMINAL, Node, Step,
                                                 costs_by_table, edges, evaluate, ruleset_delta, walk_order)
from cnitrace.collectors.iptables.parse import parse_ruleset


def linear(n: int, hits: dict[int, int], fall: int) -> dict[str, Node]:
    """INPUT -j C (all traffic); C has n ACCEPT rules with `hits[k]` packets on rule k."""
    total = sum(hits.values()) + fall
    steps = tuple(Step(TERMINAL, hits.get(k, 0), (), f"C#{k}") for k in range(1, n + 1))
    return {
        "INPUT": Node("INPUT", (Step(JUMP, total, ("C",), "INPUT#1"),), base=True, policy_packets=fall),
        "C": Node("C", steps),
    }


@pytest.mark.parametrize("n,hits,fall,per_packet", [
    (1, {1: 10}, 0, 1.0),                  # match on the only rule: 1 evaluation
    (100, {57: 4}, 0, 57.0),               # match on rule k costs k
    (100, {}, 6, 100.0),                   # fall-through costs all n
    (10, {3: 2}, 2, (2 * 3 + 2 * 10) / 4),  # mix: (6 + 20) / 4 = 6.5
    (1000, {1: 1, 1000: 1}, 0, 500.5),
])
def test_linear_chain(n, hits, fall, per_packet):
    cost = evaluate(linear(n, hits, fall))
    assert cost["C"].entering == sum(hits.values()) + fall
    assert cost["C"].per_packet == pytest.approx(per_packet, abs=1e-12)
    assert cost["C"].fall_through == fall
    assert cost["C"].returned == fall
    # INPUT: one rule, every packet evaluates it; packets that came back got the policy.
    assert cost["INPUT"].per_packet == 1.0
    assert cost["INPUT"].entering == sum(hits.values()) + fall


def test_non_terminal_rules_do_not_take_packets_out():
    # LOG on every packet (rule 1), then MARK (rule 2), ACCEPT at rule 3 for 5 of 8 packets.
    g = {
        "INPUT": Node("INPUT", (Step(JUMP, 8, ("C",)),), base=True, policy_packets=3),
        "C": Node("C", (Step(CONTINUE, 8), Step(CONTINUE, 8), Step(TERMINAL, 5), Step(TERMINAL, 0))),
    }
    c = evaluate(g)["C"]
    # 5 packets × 3 + 3 packets × 4 = 27 evaluations over 8 packets.
    assert c.evaluations == 27
    assert c.per_packet == pytest.approx(27 / 8)


def test_return_and_nested_jump_followed():
    # A: rule1 -j B (10 pkts), rule2 DROP (4 pkts), rule3 ACCEPT (rest)
    # B: rule1 RETURN (6 pkts), rule2 ACCEPT (3 pkts), falls through 1 → 7 come back to A.
    g = {
        "FORWARD": Node("FORWARD", (Step(JUMP, 10, ("A",)),), base=True, policy_packets=0),
        "A": Node("A", (Step(JUMP, 10, ("B",)), Step(TERMINAL, 4), Step(TERMINAL, 3))),
        "B": Node("B", (Step(RETURNS, 6), Step(TERMINAL, 3), Step(TERMINAL, 0))),
    }
    cost = evaluate(g)
    b = cost["B"]
    assert (b.entering, b.evaluations, b.fall_through, b.returned) == (10, 10 + 4 + 1, 1, 7)
    a = cost["A"]
    # reach: 10 (rule1), 7 (rule2), 3 (rule3) → 20; nothing falls through.
    assert (a.entering, a.evaluations, a.fall_through, a.returned) == (10, 20, 0, 0)
    assert a.inclusive_per_packet == pytest.approx((20 + 15) / 10)


def test_goto_returns_to_the_caller_of_the_caller():
    # FORWARD -j A; A: rule1 -g G (5 pkts), rule2 ACCEPT. G: RETURN for 2 → those return to FORWARD.
    g = {
        "FORWARD": Node("FORWARD", (Step(JUMP, 8, ("A",)), Step(TERMINAL, 2)), base=True, policy_packets=0),
        "A": Node("A", (Step(GOTO, 5, ("G",)), Step(TERMINAL, 3))),
        "G": Node("G", (Step(RETURNS, 2), Step(TERMINAL, 3))),
    }
    cost = evaluate(g)
    assert cost["A"].evaluations == 8 + 3          # goto takes all 5 out of A
    assert cost["A"].returned == 2                 # but 2 come back from G to FORWARD
    f = cost["FORWARD"]
    # FORWARD entering = left at rule1 (8-2) + rule2 (2) + policy 0 = 8; evaluations 8 + 2.
    assert f.entering == 8 and f.evaluations == 10


def test_base_chain_return_counts_in_policy():
    # RETURN in a base chain applies the policy, which the kernel counts: not double-counted.
    g = {"INPUT": Node("INPUT", (Step(RETURNS, 4), Step(TERMINAL, 6)), base=True, policy_packets=4 + 5)}
    c = evaluate(g)["INPUT"]
    assert c.entering == 15
    assert c.evaluations == 15 + 11


def test_missing_counter_on_a_verdict_is_unknown_not_guessed():
    g = {"C": Node("C", (Step(TERMINAL, None, (), "C#1"), Step(TERMINAL, 3)), entering=10)}
    c = evaluate(g)["C"]
    assert c.per_packet is None
    assert any("no counter" in n for n in c.notes)


def test_dispatch_to_many_chains_makes_targets_unknown():
    g = {
        "S": Node("S", (Step(DISPATCH, 10, ("X", "Y"), "S#1"),), base=True, entering=10),
        "X": Node("X", (Step(TERMINAL, 4),)),
        "Y": Node("Y", (Step(TERMINAL, 6),)),
    }
    cost = evaluate(g)
    assert cost["X"].entering is None and cost["X"].per_packet is None
    assert cost["S"].per_packet is None
    # ... unless the caller knows how many packets entered each target.
    cost = evaluate(g, entering={"X": 4, "Y": 6})
    assert cost["X"].per_packet == 1.0 and cost["Y"].per_packet == 1.0


def test_counters_moving_during_the_snapshot_are_clamped_with_a_note():
    g = {"C": Node("C", (Step(TERMINAL, 7), Step(TERMINAL, 5)), entering=10)}
    c = evaluate(g)["C"]
    assert c.fall_through == 0
    assert any("clamped" in n for n in c.notes)


def test_loop_in_graph_is_a_warning_not_a_crash():
    from cnitrace.collectors.base import Warnings
    w = Warnings()
    g = {"A": Node("A", (Step(JUMP, 1, ("B",)),), entering=1), "B": Node("B", (Step(JUMP, 1, ("A",)),))}
    evaluate(g, warnings=w)
    assert any("loop" in m for m in w.freeze())


SAVE_BEFORE = """*filter
:INPUT ACCEPT [100:5000]
:cnit-C - [0:0]
[10:500] -A INPUT -p udp -j cnit-C
[1:50] -A cnit-C -p udp --dport 1 -j DROP
[2:100] -A cnit-C -p udp --dport 2 -j DROP
[3:150] -A cnit-C -p udp --dport 3 -j ACCEPT
COMMIT
"""
SAVE_AFTER = """*filter
:INPUT ACCEPT [104:5200]
:cnit-C - [0:0]
[30:1500] -A INPUT -p udp -j cnit-C
[1:50] -A cnit-C -p udp --dport 1 -j DROP
[2:100] -A cnit-C -p udp --dport 2 -j DROP
[19:950] -A cnit-C -p udp --dport 3 -j ACCEPT
COMMIT
"""


def test_end_to_end_from_two_dumps():
    before, _ = parse_ruleset(SAVE_BEFORE, backend="legacy")
    after, _ = parse_ruleset(SAVE_AFTER, backend="legacy")
    d, warnings = ruleset_delta(before, after)
    assert warnings == ()
    costs, _ = costs_by_table(d)
    c = costs[("legacy", "ipv4", "filter", "cnit-C")]
    # 20 packets entered, 16 matched rule 3 (3 evaluations), 4 fell through (3 evaluations).
    assert c.entering == 20 and c.evaluations == 60 and c.per_packet == 3.0 and c.fall_through == 4
    inp = costs[("legacy", "ipv4", "filter", "INPUT")]
    assert inp.entering == 16 + 4 and inp.fall_through == 4


def test_delta_reset_is_a_warning_never_negative():
    before, _ = parse_ruleset(SAVE_AFTER, backend="legacy")
    after, _ = parse_ruleset(SAVE_BEFORE, backend="legacy")
    d, warnings = ruleset_delta(before, after)
    assert warnings and "reset" in warnings[0]
    assert all(r.packets >= 0 and r.bytes >= 0 for r in d.rules)
    assert [r.packets for r in d.rules] == [10, 0, 0, 3]


def test_edges_and_walk_order_follow_rule_order():
    from cnitrace.collectors.iptables.graph import nodes_of
    rs, _ = parse_ruleset(open(_fixture("local_legacy_v4.save")).read(), backend="legacy")
    g = nodes_of(rs)[("legacy", "ipv4", "filter")]
    assert edges(g)["cnit-FORWARD"] == ("cnit-wl", "cnit-pol")
    assert walk_order(g, "INPUT") == ["INPUT", "cnit-FORWARD", "cnit-wl", "cnit-pol"]


def _fixture(name: str) -> str:
    from pathlib import Path
    return str(Path(__file__).parent.parent / "fixtures" / "iptables" / name)


def test_nft_backend_zero_policy_counter_is_flagged():
    text = SAVE_AFTER.replace(":INPUT ACCEPT [104:5200]", ":INPUT ACCEPT [0:0]")
    before, _ = parse_ruleset(text, backend="nft")
    after, _ = parse_ruleset(text.replace("[30:1500] -A INPUT", "[31:1550] -A INPUT"), backend="nft")
    d, _ = ruleset_delta(before, after)
    costs, _ = costs_by_table(d)
    assert any("may be uncounted" in n for n in costs[("nft", "ipv4", "filter", "INPUT")].notes)
    d_legacy, _ = ruleset_delta(*(parse_ruleset(t, backend="legacy")[0] for t in (text, text)))
    costs, _ = costs_by_table(d_legacy)
    assert not any("uncounted" in n for n in costs[("legacy", "ipv4", "filter", "INPUT")].notes)


def test_a_delta_keeps_whether_the_dump_had_rule_counters():
    from cnitrace.collectors.iptables.parse import parse_ruleset
    text = "*filter\n:INPUT ACCEPT [5:300]\n:cali-x - [0:0]\n-A INPUT -j cali-x\n-A cali-x -p tcp -j ACCEPT\nCOMMIT\n"
    rs, _ = parse_ruleset(text)
    assert rs.rule_counters is False
    delta, _ = ruleset_delta(rs, rs)
    assert delta.rule_counters is False and len(delta.rules) == 2


def test_a_chain_nothing_in_the_dump_jumps_to_is_not_claimed_empty():
    # a pasted excerpt of KUBE-SEP-* chains with -c counters: the jumps into them were left out
    rs, _ = parse_ruleset(open(_fixture("submariner-subctl-1205_c_partial_sep.save")).read())
    costs, _ = costs_by_table(rs)
    got = {k[-1]: c for k, c in costs.items()}
    sep = got["KUBE-SEP-EWDMSLOSUEG5PNZG"]   # [0:0] MASQ rule then [90:7626] DNAT: 90 packets entered
    assert sep.entering is None and any("jumps here" in n for n in sep.notes)
    assert got["KUBE-SEP-FX75HGKHH5NVZOM4"].entering == 0   # every counter zero: zero stays zero

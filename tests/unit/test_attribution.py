"""Attribution arithmetic, table-driven: counters × calibration, measured stages, shares."""

from __future__ import annotations

import pytest

from cnitrace.attribution.tree import (Calib, ChainWork, OvsTableWork, ProgramTime, ProxyDetour, RuleHit, TableTime,
                                  Transit, bpf_stage, build_tree, netfilter_stage, ovs_stage, proxy_stage)
from cnitrace.reports.document import headline


def calico_chains(n_rules: int, packets: int) -> list[ChainWork]:
    # Each packet walks cali-FORWARD (2 rules), the dispatch (1), cali-tw (2) and the policy chain (n_rules).
    return [
        ChainWork("filter", "cali-FORWARD", packets, 2 * packets),
        ChainWork("filter", "cali-to-wl-dispatch", packets, 1 * packets),
        ChainWork("filter", "cali-tw-cali1234", packets, 2 * packets),
        ChainWork("filter", "cali-pi-allow", packets, n_rules * packets,
                  (RuleHit(n_rules, "-p tcp --dport 8080 -j MARK", packets),)),
    ]


@pytest.mark.parametrize("n_rules,packets,ns_rule,expected_chain_ns", [
    (1000, 100, 27.0, 27_000.0),
    (100, 50, 20.0, 2_000.0),
    (1, 10, 30.0, 30.0),
])
def test_policy_chain_modelled_cost_is_evaluations_times_calibration(n_rules, packets, ns_rule, expected_chain_ns):
    stage = netfilter_stage(calico_chains(n_rules, packets), packets, Calib(ns_rule))
    chain = stage.find("chain", "cali-pi-allow")
    assert chain.modelled_ns == pytest.approx(expected_chain_ns)
    assert chain.evaluations_per_packet == pytest.approx(n_rules)
    assert chain.provenance == "modelled"
    assert stage.ns_per_packet == pytest.approx((n_rules + 5) * ns_rule)
    assert chain.children[0].name == f"cali-pi-allow#{n_rules}"


def test_headline_names_the_policy_chain_and_evaluations():
    stage = netfilter_stage(calico_chains(1000, 100), 100, Calib(26.0))
    root = build_tree([stage], None, 100)
    h = headline(root)
    assert "cali-pi-allow" in h and "1,000 rule evaluations per packet" in h and "26.0 µs" in h
    assert root.find("chain", "cali-pi-allow").share == pytest.approx(1000 / 1005)


def test_measured_table_time_makes_provenance_both_with_agreement():
    stage = netfilter_stage(calico_chains(1000, 100), 100, Calib(25.0),
                            measured=[TableTime("filter", calls=100, mean_ns=27_500.0, p50_ns=27_000, p99_ns=40_000)])
    t = stage.find("table", "filter")
    assert t.provenance == "both"
    assert t.measured_ns == pytest.approx(27_500.0)
    assert t.agreement == pytest.approx(27_500.0 / (1005 * 25.0))
    assert t.ns_per_packet == t.measured_ns  # measured wins when both exist


def test_transit_gives_rest_of_stack_and_shares_sum_to_one():
    stage = netfilter_stage(calico_chains(100, 10), 10, Calib(20.0))   # 2,100 ns modelled
    root = build_tree([stage], Transit(10, mean_ns=5_000.0, p50_ns=4_800, p99_ns=9_000), 10)
    rest = root.find("stage", "rest of stack")
    assert rest.ns_per_packet == pytest.approx(2_900.0) and rest.provenance == "measured"
    assert root.provenance == "measured" and root.ns_per_packet == 5_000.0
    assert sum(c.share for c in root.children) == pytest.approx(1.0)


def test_attributed_beyond_transit_is_flagged_not_negative():
    stage = netfilter_stage(calico_chains(1000, 10), 10, Calib(30.0))   # 30 µs modelled
    root = build_tree([stage], Transit(10, mean_ns=10_000.0), 10)
    assert root.find("stage", "rest of stack").ns_per_packet == 0.0
    assert "exceeds" in root.detail["warning"]


def test_no_traffic_gives_no_division_by_zero():
    stage = netfilter_stage(calico_chains(100, 0), 0, Calib(20.0))
    root = build_tree([stage], None, 0)
    assert root.ns_per_packet is None
    assert "no per-packet cost" in headline(root)


def test_bpf_programs_are_measured_and_ordered_by_cost():
    st = bpf_stage([ProgramTime("cil_from_container", 100, 300.0), ProgramTime("cil_to_container", 100, 900.0)], 100)
    assert [c.name for c in st.children] == ["cil_to_container", "cil_from_container"]
    assert st.ns_per_packet == pytest.approx(1200.0) and st.provenance == "measured"


def test_ovs_tables_modelled_from_lookups():
    st = ovs_stage([OvsTableWork("90 (IngressRule)", 200, (RuleHit(1, "conj_id=5", 200),)),
                    OvsTableWork("0 (Classifier)", 100)], 100, Calib(25.0, ns_per_ovs_table=50.0))
    assert st.find("ovs_table", "90 (IngressRule)").ns_per_packet == pytest.approx(100.0)
    assert st.ns_per_packet == pytest.approx(150.0)


def test_proxy_detour_dominates_when_large():
    nf = netfilter_stage(calico_chains(10, 100), 100, Calib(25.0))
    root = build_tree([nf, proxy_stage(ProxyDetour(50, 400_000.0, "nginx"))], None, 100)
    assert "proxy nginx" in headline(root)
    assert root.find("stage", "l7_proxy").share > 0.9


def test_drops_join_probe_reason_with_the_dropping_rule():
    from cnitrace.attribution.netfilter import merge_drops

    probe = [{"reason": "NETFILTER_DROP", "count": 25, "where": "nf_hook_slow+0x7d", "provenance": "measured"},
             {"reason": "NO_SOCKET", "count": 3, "where": "udp_rcv", "provenance": "measured"}]
    rules = [("cali-tw-x#5 (filter, -j DROP)", 20), ("cali-fw-y#2 (filter, -j DROP)", 5)]
    out = merge_drops(probe, rules)
    nf = [d for d in out if d["reason"] == "NETFILTER_DROP"]
    assert [(d["where"], d["count"], d["provenance"]) for d in nf] == [
        ("cali-tw-x#5 (filter, -j DROP)", 20, "both"), ("cali-fw-y#2 (filter, -j DROP)", 5, "both")]
    assert any(d["reason"] == "NO_SOCKET" for d in out)
    # Counts that disagree are kept apart and marked modelled, with the probe's total beside them.
    off = merge_drops(probe[:1], [("c#1 (filter, -j DROP)", 20)])
    assert [d["provenance"] for d in off] == ["modelled", "measured"]


def test_proxy_detour_share_is_of_the_request_time_when_known():
    nf = netfilter_stage(calico_chains(10, 100), 100, Calib(25.0))
    detour = ProxyDetour(40, 43_500_000.0, "nginx", through_ns=44_000_000.0, direct_ns=500_000.0)
    root = build_tree([nf, proxy_stage(detour)], None, 100)
    l7 = root.find("stage", "l7_proxy")
    assert l7.share == pytest.approx(43.5 / 44.0) and l7.children[0].share == l7.share
    assert headline(root) == ("99 % of request time: the nginx L7 proxy detour adds ≈ 43.50 ms per request "
                              "(measured; 44.00 ms through the proxy vs 0.50 ms direct)")

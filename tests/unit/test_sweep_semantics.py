"""The per-point semantics verdict and the attribution summary, from recorded readings (no root)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from cnitrace.lab.model import CounterRef, GroundTruth, Pod, Topology
from cnitrace.sweep.run import attribution_summary, check_semantics
from cnitrace.traffic.generators import TrafficResult

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sweep" / "default-sweep.json.txt"


def _lab(denied: bool = True) -> SimpleNamespace:
    pods = (Pod("p0", "server", "cnit-x-p0", "10.65.0.2", 32, "169.254.1.1", "0a:58:0a:41:00:02"),
            Pod("p1", "client", "cnit-x-p1", "10.65.0.3", 32, "169.254.1.1", "0a:58:0a:41:00:03"))
    ref = CounterRef(kind="iptables", netns="cnit-x-node", backend="legacy", table="filter", chain="c", index=1)
    truth = GroundTruth(allowed={"tcp": ref, "udp": ref}, denied=ref if denied else None,
                        evaluations={"tcp": 4, "udp": 4})
    return SimpleNamespace(topo=Topology("x", "cnit-x-node", pods, "10.65.0.0/24"), truth=truth)


PROBE = TrafficResult("probe", 20, 1.0, {"sent": {"tcp/8080": 5, "udp/8080": 5, "tcp/9090": 5, "udp/9090": 5}})


def test_exact_counts_pass():
    sem = check_semantics(_lab(), PROBE, {"tcp": 10, "udp": 3, "denied": 0}, {"tcp": 15, "udp": 8, "denied": 10})
    assert sem["passed"] and all(c["exact"] for c in sem["checks"].values())


def test_allowed_not_counted_fails():
    """What the L7 detour does to tunnelled traffic: the detour counter never moves."""
    sem = check_semantics(_lab(), PROBE, {"tcp": 0, "udp": 0, "denied": 0}, {"tcp": 0, "udp": 5, "denied": 10})
    assert not sem["passed"] and not sem["checks"]["allowed_tcp"]["passed"]


def test_denied_leaking_fails():
    sem = check_semantics(_lab(), PROBE, {"tcp": 0, "udp": 0, "denied": 0}, {"tcp": 5, "udp": 5, "denied": 4})
    assert not sem["passed"] and sem["checks"]["denied"] == {"sent": 10, "counted": 4, "exact": False,
                                                             "passed": False}


def test_counters_that_also_see_replies_pass_but_are_not_exact():
    sem = check_semantics(_lab(), PROBE, {"tcp": 0, "udp": 0, "denied": 0}, {"tcp": 10, "udp": 5, "denied": 10})
    assert sem["passed"] and not sem["checks"]["allowed_tcp"]["exact"]


def test_no_policy_datapath_has_nothing_to_deny():
    sem = check_semantics(_lab(denied=False), PROBE, {"tcp": 0, "udp": 0}, {"tcp": 5, "udp": 5})
    assert sem["passed"] and sem["checks"]["denied"]["note"].startswith("no policy")


def test_attribution_summary_keeps_the_stage_level():
    doc = {"headline": "98 % of per-packet time: chain cali-pi-x", "warnings": ["w"] * 9,
           "traffic": {"packets_sent": 50},
           "tree": {"kind": "root", "ns_per_packet": 99670.2, "children": [
               {"kind": "stage", "name": "netfilter", "ns_per_packet": 141733.1, "share": 1.0,
                "provenance": "modelled", "packets": 50, "children": [{"kind": "table", "name": "filter"}]},
               {"kind": "stage", "name": "rest of stack", "ns_per_packet": 0.0, "share": 0.0,
                "provenance": "measured", "packets": 35}]}}
    s = attribution_summary(doc)
    assert s["headline"].startswith("98 %") and s["packets_sent"] == 50 and len(s["warnings"]) == 5
    assert [st["stage"] for st in s["stages"]] == ["netfilter", "rest of stack"]
    assert s["stages"][0] == {"stage": "netfilter", "ns_per_packet": 141733.1, "share": 1.0,
                              "provenance": "modelled", "packets": 50}


def test_recorded_points_semantics_are_exact_for_netfilter_datapaths():
    doc = json.loads(FIX.read_text().split("\n", 1)[1])
    for p in doc["points"]:
        checks = p["semantics"]["checks"]
        if p["spec"]["datapath"] in ("calico", "kube-router", "nft"):
            assert checks["allowed_tcp"]["exact"] and checks["allowed_udp"]["exact"], p["spec"]["id"]
        assert p["semantics"]["passed"]

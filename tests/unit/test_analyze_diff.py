"""Two analyses of one node: what grew, and the static cost it adds on the paths that reach it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.diff import diff
from cnitrace.analyze.dumps import read_text

FIX = Path(__file__).parent.parent / "fixtures"
MODEL = costs.reference_model()
BASE = (FIX / "iptables" / "local_legacy_v4.save").read_text()


def analysis(text: str, name: str = "dump"):
    return analyze(read_text(text, name), MODEL)


def with_new_chain(text: str, n: int, counters: bool = True) -> str:
    """The ruleset plus chain cnit-new of n TCP port rules, jumped to from the end of filter INPUT."""
    c = "[0:0] " if counters else ""
    rules = "".join(f"{c}-A cnit-new -p tcp -m tcp --dport {20000 + i} -j DROP\n" for i in range(n))
    head, sep, tail = text.partition("*filter\n")
    body, commit, rest = tail.partition("COMMIT\n")
    body = body.replace(":cnit-wl - [0:0]\n", ":cnit-wl - [0:0]\n:cnit-new - [0:0]\n")
    return f"{head}{sep}{body}{c}-A INPUT -j cnit-new\n{rules}{commit}{rest}"


def hook(d: dict, family: str, name: str) -> dict:
    return next(h for h in d["hooks"] if (h["family"], h["hook"]) == (family, name))


@pytest.mark.parametrize("n", [1, 10, 250])
def test_an_added_chain_of_n_rules_costs_n_evaluations_on_the_paths_that_reach_it(n):
    d = diff(analysis(BASE), analysis(with_new_chain(BASE, n)))
    s = costs.REFERENCE_LEGACY
    early, port = s.early_ns, s.module_ns["port"]
    inp = hook(d, "ipv4", "input")
    # the jump (no test: it matches, one early evaluation) and n port rules: every module in the worst
    # case, the header (-p tcp) failing first in the typical one
    assert inp["worst_evaluations"]["delta"] == 1 + n
    assert inp["typical_evaluations"]["delta"] == 1 + n
    assert inp["worst_ns"]["delta"] == pytest.approx(early + n * (early + port), abs=0.2)
    assert inp["typical_ns"]["delta"] == pytest.approx(early + n * early, abs=0.2)
    for other in ("output", "forward", "prerouting", "postrouting"):
        h = hook(d, "ipv4", other)
        assert h["worst_ns"]["delta"] == 0 and h["typical_evaluations"]["delta"] == 0, other
    new = d["chains"]["new"]
    assert [(r["chain"], r["rules_after"]) for r in new] == [("cnit-new", n)]
    grown = {r["chain"]: r for r in d["chains"]["changed"]}
    assert grown["INPUT"]["rules_before"] + 1 == grown["INPUT"]["rules_after"]


def test_counters_gained_between_two_dumps_are_a_window():
    after = BASE.replace("[3:114] -A cnit-pol -p udp -m udp --dport 5002 -j ACCEPT",
                         "[10:380] -A cnit-pol -p udp -m udp --dport 5002 -j ACCEPT")
    after = after.replace("[6:228] -A cnit-FORWARD -j cnit-pol", "[13:494] -A cnit-FORWARD -j cnit-pol")
    after = after.replace("[9:342] -A INPUT -p udp", "[16:608] -A INPUT -p udp")
    d = diff(analysis(BASE), analysis(after))
    c = d["counters"]
    gained = {(r["chain"], r["position"]): r["packets"] for r in c["rules"]}
    assert gained == {("cnit-pol", 3): 7, ("cnit-FORWARD", 3): 7, ("INPUT", 1): 7}
    pol = next(x for x in c["chains"] if x["chain"] == "cnit-pol")
    # the 7 packets entered cnit-pol and were each evaluated by its 3 rules (the third accepted them)
    assert pol["entering_packets"] == 7 and pol["evaluations_per_packet"] == pytest.approx(3.0)
    assert "between the two dumps" in pol["provenance"]
    # nothing else changed: no static growth
    assert all(h["worst_ns"]["delta"] == 0 for h in d["hooks"])


def test_without_counters_on_one_side_packets_gained_are_unknown():
    before = re.sub(r"^\[\d+:\d+\] ", "", BASE, flags=re.M)
    d = diff(analysis(before), analysis(BASE))
    assert d["counters"]["rules"] == [] and any("without -c" in n for n in d["counters"]["notes"])


def test_sets_that_grew():
    a = analyze(read_text((FIX / "nftables" / "lab_nft_rules100.json").read_text(), "a"), MODEL)
    b = analyze(read_text((FIX / "nftables" / "lab_nft_rules1000.json").read_text(), "b"), MODEL)
    d = diff(a, b)
    (s,) = d["sets"]
    assert s["set"].endswith("@ports-p0") and s["delta"] == s["after"] - s["before"] > 0
    # a bigger interval map costs more per lookup: the worst case of the forward path grew
    assert hook(d, "ipv4", "forward")["worst_ns"]["delta"] > 0


def test_ovs_tables_flow_counts():
    flows = (FIX / "ovs" / "host-dump-flows.txt").read_text()
    more = flows + (" cookie=0x0, duration=1.0s, table=10, n_packets=0, n_bytes=0, idle_age=1, "
                    "priority=100,ip,nw_dst=10.99.0.3 actions=output:3\n")
    d = diff(analysis(flows, "a"), analysis(more, "b"))
    assert d["ovs_tables"] == [{"bridge": "dump 1", "table": "10", "flows_before": 4, "flows_after": 5, "delta": 1}]

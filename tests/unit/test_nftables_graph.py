"""nftables rules in the evaluations-per-packet model: hand-checked cases (no root)."""

from __future__ import annotations

import json

import pytest

from cnitrace.collectors.base import Snapshot
from cnitrace.collectors.nftables.graph import costs_by_table, nodes_of
from cnitrace.collectors.nftables.parse import parse
from cnitrace.collectors.nftables.source import NftablesCollector, records_delta
from cnitrace.core.runner import Completed, RecordedRunner


def doc(chains: dict[str, list[list[dict]]], base: str = "input") -> str:
    objs: list[dict] = [{"table": {"family": "inet", "name": "t", "handle": 1}}]
    for name in chains:
        c = {"family": "inet", "table": "t", "name": name, "handle": 1}
        if name == base:
            c.update(hook="input", type="filter", prio=0, policy="accept")
        objs.append({"chain": c})
    h = 10
    for name, rules in chains.items():
        for expr in rules:
            objs.append({"rule": {"family": "inet", "table": "t", "chain": name, "handle": h, "expr": expr}})
            h += 1
    return json.dumps({"nftables": objs})


def match(port: int) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": port}}


def lookup(name: str) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": f"@{name}"}}


def counter(p: int) -> dict:
    return {"counter": {"packets": p, "bytes": 100 * p}}


def test_counter_first_rule_gives_the_base_chain_its_traffic_and_set_lookups_cost_one():
    # input: rule1 `counter jump c` (all 30 packets); c: rule1 `ip saddr @big drop` (a set lookup, 5 hits),
    # rule2..rule4 port drops with 10 hits on rule 3, rest (15) fall through and return.
    text = doc({
        "input": [[counter(30), {"jump": {"target": "c"}}]],
        "c": [[lookup("big"), counter(5), {"drop": None}],
              [match(1), counter(0), {"drop": None}],
              [match(2), counter(10), {"drop": None}],
              [match(3), counter(0), {"accept": None}]],
    })
    costs, _ = costs_by_table(parse(text).records)
    c = costs[("inet", "t", "c")]
    # 5 × 1 + 10 × 3 + 15 × 4 = 95 evaluations over 30 packets; the set lookup counts once.
    assert (c.entering, c.evaluations, c.fall_through) == (30, 95, 15)
    assert c.per_packet == pytest.approx(95 / 30)
    inp = costs[("inet", "t", "input")]
    assert inp.entering == 30 and inp.per_packet == 1.0 and inp.inclusive_per_packet == pytest.approx(1 + 95 / 30)


def test_counter_before_the_match_counts_reach_not_matches():
    text = doc({"input": [[counter(20), match(1), {"drop": None}], [match(2), counter(4), {"drop": None}]]})
    nodes = nodes_of(parse(text).records)[("inet", "t")]
    assert nodes["input"].entering == 20           # observed at the top of the chain
    assert nodes["input"].steps[0].packets is None  # but how many rule 1 dropped is unknown
    costs, _ = costs_by_table(parse(text).records)
    assert costs[("inet", "t", "input")].per_packet is None


def test_verdict_map_dispatch_is_unknown_unless_told():
    vmap = {"vmap": {"key": {"payload": {"protocol": "udp", "field": "dport"}},
                     "data": {"set": [[53, {"jump": {"target": "a"}}], [54, {"jump": {"target": "b"}}]]}}}
    text = doc({"input": [[counter(9), vmap]], "a": [[counter(4), {"accept": None}]],
                "b": [[match(9), counter(2), {"drop": None}]]})
    costs, _ = costs_by_table(parse(text).records)
    assert costs[("inet", "t", "a")].entering == 4      # its own counter-first rule observes it
    assert costs[("inet", "t", "b")].entering is None   # nothing counts what the map sent to b
    costs, _ = costs_by_table(parse(text).records, entering={("inet", "t", "b"): 5})
    b = costs[("inet", "t", "b")]
    assert (b.entering, b.evaluations, b.fall_through) == (5, 5, 3)


def test_records_delta_and_reset_on_replayed_snapshots():
    before = doc({"input": [[counter(30), {"jump": {"target": "c"}}]], "c": [[match(1), counter(7), {"drop": None}]]})
    after = doc({"input": [[counter(50), {"jump": {"target": "c"}}]], "c": [[match(1), counter(2), {"drop": None}]]})
    runs = iter([before, after])
    runner = RecordedRunner({("ip", "netns", "exec", "cnit-x", "nft", "-j", "list", "ruleset"):
                             lambda: Completed(("nft",), 0, next(runs), "")})
    col = NftablesCollector(runner, netns="cnit-x")
    s1, s2 = col.snapshot(), col.snapshot()
    recs, warnings = records_delta(s1, s2)
    assert any("reset" in w for w in warnings)
    costs, _ = costs_by_table(recs)
    c = costs[("inet", "t", "c")]
    assert c.entering == 20 and c.evaluations == 20 and c.fall_through == 18   # 2 since the reset


def test_snapshot_failure_is_a_warning():
    runner = RecordedRunner({("nft", "-j", "list", "ruleset"): Completed(("nft",), 1, "", "Error: no perm\n")})
    snap = NftablesCollector(runner).snapshot()
    assert isinstance(snap, Snapshot) and snap.records == () and "no perm" in snap.warnings[0]
    assert not NftablesCollector(RecordedRunner({}, tools=[])).available(None)


def test_next_rules_counter_resolves_a_verdict_map():
    # The lab's native-nft shape: ingress = [peer check, ports vmap (goto allow-*), counter drop];
    # 7 allowed packets went to allow-tcp (observed by its counter-first rule), 4 denied hit the drop.
    vmap = {"vmap": {"key": {"payload": {"protocol": "tcp", "field": "dport"}},
                     "data": {"set": [[8080, {"goto": {"target": "allow-tcp"}}],
                                      [8081, {"goto": {"target": "allow-udp"}}], [10000, {"accept": None}]]}}}
    dispatch = {"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}},
                         "data": {"set": [["10.65.0.2", {"jump": {"target": "ingress"}}]]}}}
    text = doc({"forward": [[dispatch]],
                "ingress": [[{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                        "right": "@peers"}}, counter(0), {"drop": None}],
                            [vmap],
                            [counter(4), {"drop": None}]],
                "allow-tcp": [[counter(7), {"accept": None}]],
                "allow-udp": [[counter(0), {"accept": None}]]}, base="forward")
    costs, _ = costs_by_table(parse(text).records)
    assert costs[("inet", "t", "ingress")].entering is None      # reached through an uncounted vmap
    costs, _ = costs_by_table(parse(text).records, entering={("inet", "t", "ingress"): 11})
    c = costs[("inet", "t", "ingress")]
    # 11 × rule 1 + 11 × rule 2 (one lookup however big the map) + 4 × rule 3 = 26.
    assert (c.evaluations, c.fall_through) == (26, 0)
    assert any("inferred from the next rule's counter" in n for n in c.notes)
    # Including the allow chain: 7 allowed × (2 + 1) + 4 denied × 3 = 33 → 3 per packet, as the lab's truth says.
    assert c.inclusive_per_packet == pytest.approx(3.0)


def test_an_unconditional_last_verdict_gives_a_base_chain_its_traffic():
    # nft has no policy counter, but `counter ... reject` closing INPUT leaves the policy nothing
    from cnitrace.collectors.nftables.text import parse_text
    from pathlib import Path
    text = (Path(__file__).parent.parent / "fixtures" / "nftables" / "insights-core-1812_rhel8_reject_last.nft").read_text()
    costs, _ = costs_by_table(parse_text(text).records)
    (inp,) = [c for k, c in costs.items() if k[-1] == "INPUT"]
    assert inp.entering == 179 and inp.evaluations == 188       # 176 + 3 taken out; 179+3+3+3+0 rules run
    (out,) = [c for k, c in costs.items() if k[-1] == "OUTPUT"]
    assert out.entering is None                                 # no rules: nothing says what entered

"""The `nft -j list ruleset` parser on real rulesets (kube-proxy nftables mode, Calico and kube-router on
the iptables-nft backend, native sets/maps captured here) and on cut or fuzzed documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.nftables.graph import costs_by_table, rules_without_counters
from cnitrace.collectors.nftables.parse import NftChain, NftCounter, NftRule, NftSet, parse

FIX = Path(__file__).parent.parent / "fixtures" / "nftables"


def load(name: str) -> str:
    head, body = (FIX / name).read_text(encoding="utf-8").split("\n", 1)
    assert head.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def kinds(records):
    out = {}
    for r in records:
        out.setdefault(type(r).__name__, []).append(r)
    return out


@pytest.mark.parametrize("name,chains,rules,with_counter,sets", [
    ("kubeproxy_nftables_mode.json", 18, 27, 0, 7),
    ("kuberouter_iptables_nft.json", 8, 11, 11, 0),
    ("calico_iptables_nft.json", 3, 11, 11, 0),
    ("local_iptables_nft.json", 7, 14, 14, 0),
    ("local_native_sets.json", 3, 8, 6, 3),
    ("kuberouter_k3s-7219.json", 11, 13, 13, 0),
])
def test_real_rulesets(name, chains, rules, with_counter, sets):
    parsed = parse(load(name))
    assert parsed.warnings == ()
    k = kinds(parsed.records)
    assert len(k.get("NftChain", [])) == chains
    assert len(k.get("NftRule", [])) == rules
    assert sum(r.has_counter for r in k.get("NftRule", [])) == with_counter
    assert len(k.get("NftSet", [])) == sets


def test_kube_proxy_has_no_counters_and_says_so():
    parsed = parse(load("kubeproxy_nftables_mode.json"))
    k = kinds(parsed.records)
    services = next(r for r in k["NftRule"] if r.chain == "services" and r.position == 1)
    assert services.verdict == "dispatch" and services.lookups == ("service-ips",)
    assert services.targets == ("service-ULMVA6XW-ns1/svc1/tcp/p80",)
    maps = {s.name: s for s in k["NftSet"]}
    assert maps["service-ips"].kind == "map" and maps["service-ips"].size == 1
    assert maps["nodeport-ips"].kind == "set" and maps["nodeport-ips"].size == 1
    assert maps["cluster-ips"].size == 1 and maps["firewall-ips"].size == 0
    bases = {c.name for c in k["NftChain"] if c.base}
    assert bases == {"filter-prerouting-pre-dnat", "filter-output-pre-dnat", "filter-forward", "filter-input",
                     "filter-output", "nat-output", "nat-postrouting", "nat-prerouting"}
    missing = rules_without_counters(parsed.records)
    # 27 rules, 2 of them only set a mark: the other 25 decide the packet, none with a counter.
    assert len(missing) == 25
    costs, _ = costs_by_table(parsed.records)
    assert costs[("ip", "kube-proxy", "filter-input")].per_packet is None
    assert any("no counter" in n for n in costs[("ip", "kube-proxy", "filter-input")].notes)


def test_iptables_nft_translation_counters_and_targets():
    parsed = parse(load("kuberouter_iptables_nft.json"))
    rules = [r for r in parsed.records if isinstance(r, NftRule)]
    first = next(r for r in rules if r.chain == "INPUT" and r.position == 1)
    assert (first.verdict, first.targets, first.packets, first.unconditional) == ("jump", ("KUBE-FIREWALL",), 10,
                                                                                   True)
    costs, _ = costs_by_table(parsed.records)
    # 5 UDP packets on lo + 5 ICMP errors entered INPUT; both INPUT rules are jumps whose callees return.
    inp = costs[("ip", "filter", "INPUT")]
    assert (inp.entering, inp.evaluations, inp.per_packet) == (10, 20, 2.0)


def test_k3s_node_counters_survive_and_observe_the_base_chain():
    parsed = parse(load("kuberouter_k3s-7219.json"))
    rules = {(r.chain, r.position): r for r in parsed.records if isinstance(r, NftRule)}
    first = rules[("INPUT", 1)]
    assert (first.packets, first.bytes, first.targets, first.unconditional) == (48509, 9157122,
                                                                                 ("KUBE-ROUTER-INPUT",), True)
    assert rules[("INPUT", 2)].packets == 61 and not rules[("INPUT", 2)].unconditional   # ct state new
    accept = rules[("INPUT", 6)]
    assert (accept.verdict, accept.packets, accept.counter_before_match) == ("terminal", 0, False)
    from cnitrace.collectors.nftables.graph import nodes_of
    assert nodes_of(parsed.records)[("ip", "filter")]["INPUT"].entering == 48509


def test_calico_return_mark_and_goto_shapes():
    parsed = parse(load("calico_iptables_nft.json"))
    fw = [r for r in parsed.records if isinstance(r, NftRule) and r.chain == "cali-fw-caliab276a425c1"]
    assert [r.verdict for r in fw] == ["terminal", "terminal", "continue", "jump", "return", "terminal"]
    assert fw[3].targets == ("cali-pro-kns.default",)
    # xtables matches (conntrack) are matches; the comment match is not: only rules 3, 4 and 6 see
    # every packet that reaches them, and only their counters observe the chain's reach.
    assert [r.unconditional for r in fw] == [False, False, True, True, False, True]
    assert not any(r.counter_before_match and not r.unconditional for r in fw)


def test_native_sets_maps_and_named_counter():
    parsed = parse(load("local_native_sets.json"))
    k = kinds(parsed.records)
    rules = {(r.chain, r.position): r for r in k["NftRule"]}
    assert rules[("input", 2)].lookups == ("blocked",)
    assert rules[("input", 3)].verdict == "dispatch" and rules[("input", 3)].terminal_in_map
    assert rules[("input", 4)].targets == ("web",)
    assert rules[("pre", 1)].packets == 3             # 3 UDP packets to port 1 were rejected
    assert rules[("web", 1)].packets == 4             # 4 to port 53 went through the anonymous vmap
    named = k["NftCounter"][0]
    assert named.name == "named1" and rules[("input", 5)].packets == named.packets
    sets = {s.name: s for s in k["NftSet"]}
    assert sets["svc"].verdict_targets == ("web",) and sets["cset"].flags == ("interval",)


def test_cut_document_keeps_objects_before_the_cut():
    text = load("kuberouter_iptables_nft.json")
    whole = parse(text).records
    cut = parse(text[: len(text) * 2 // 3])
    assert cut.warnings and "cut or malformed" in cut.warnings[0]
    assert 0 < len(cut.records) < len(whole)


@pytest.mark.parametrize("text,warning", [
    ("", "not an `nft -j` document"),
    ('{"nftables": 3}', "no `nftables` array"),
    ('{"nftables": [{"rule": {"family": "ip"}}]}', "rule without"),
    ('{"nftables": [{"chain": {"family": "ip", "table": 1, "name": "x"}}]}', "not a string"),
    ('{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": '
     '[{"counter": {"packets": -1, "bytes": 0}}]}}]}', "bad counter value"),
    ('{"nftables": [{"a": 1, "b": 2}]}', "not a one-key object"),
])
def test_malformed_documents_warn(text, warning):
    parsed = parse(text)
    assert any(warning in w for w in parsed.warnings), parsed.warnings


def test_new_fields_unicode_and_huge_counters():
    big = 2 ** 64 - 1
    doc = {"nftables": [
        {"metainfo": {"version": "9.9", "future": True}},
        {"chain": {"family": "inet", "table": "të", "name": "ĉ", "handle": 1, "hook": "input", "newfield": [1]}},
        {"rule": {"family": "inet", "table": "të", "chain": "ĉ", "handle": 2, "shiny": {},
                  "expr": [{"counter": {"packets": big, "bytes": big}}, {"frobnicate": {"x": 1}}, {"drop": None}]}},
        {"flowtable": {"family": "inet", "name": "f"}},
    ]}
    parsed = parse(json.dumps(doc))
    assert parsed.warnings == ()
    rule = next(r for r in parsed.records if isinstance(r, NftRule))
    assert (rule.packets, rule.verdict, rule.chain) == (big, "terminal", "ĉ")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-3, max_value=2 ** 70) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["family", "table", "chain", "name", "handle", "expr", "counter", "packets", "bytes",
                         "jump", "goto", "target", "vmap", "data", "set", "elem", "match", "right", "hook",
                         "rule", "map", "accept", "drop", "return", "xt", "type"]), children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["rule", "chain", "set", "map", "counter", "table", "x"]),
                                JSONISH, min_size=1, max_size=1), max_size=8))
def test_fuzz_documents_never_crash(objects):
    parsed = parse(json.dumps({"nftables": objects}))
    for r in parsed.records:
        assert isinstance(r, (NftChain, NftRule, NftSet, NftCounter))
    costs_by_table(parsed.records)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_text_never_crashes(text):
    parse('{"nftables": [' + text)
    parse(text)

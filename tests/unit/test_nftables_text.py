"""`nft list ruleset` text read into the JSON parser's records: equal on captures of both forms, and on pastes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.base import MAX_WARNINGS, strip_provenance
from cnitrace.collectors.nftables.graph import costs_by_table, native_model
from cnitrace.collectors.nftables.parse import NftChain, NftCounter, NftRule, NftSet, parse
from cnitrace.collectors.nftables.text import parse_text

FIX = Path(__file__).parent.parent / "fixtures"


def load(name: str) -> str:
    body = (FIX / name).read_text(encoding="utf-8")
    assert body.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def no_handles(records):
    return [dataclasses.replace(r, handle=None) if hasattr(r, "handle") else r for r in records]


# text capture, JSON capture, same handles? (pairs captured together carry the same handles; the
# repository's JSON fixtures reloaded into a new namespace got new ones)
PAIRS = [
    ("nftables/local_variety.nft", "nftables/local_variety.json", True),
    ("nftables/iptnft_local.nft", "nftables/iptnft_local.json", False),
    ("nftables/iptnft_kuberouter.nft", "nftables/iptnft_kuberouter.json", False),
    ("nftables/kubeproxy_nftables_mode.nft", "nftables/kubeproxy_nftables_mode.json", False),
    ("nftables/local_native_sets.nft", "nftables/local_native_sets.json", False),
    ("nftables/lab_nft_rules100.nft", "nftables/lab_nft_rules100.json", False),
    ("nftables/kuberouter_k3s-7219.nft", "nftables/kuberouter_k3s-7219.json", False),
]


@pytest.mark.parametrize("text_name,json_name,handles", PAIRS)
def test_text_parses_like_json(text_name, json_name, handles):
    t = parse_text(load(text_name))
    j = parse(strip_provenance(load(json_name)))
    assert t.warnings == () and j.warnings == ()
    if handles:
        assert t.records == j.records
    else:
        assert no_handles(t.records) == no_handles(j.records)
    kinds = {type(r) for r in t.records}
    assert NftChain in kinds and NftRule in kinds


@pytest.mark.parametrize("text_name,json_name,handles", PAIRS)
def test_models_agree_on_text_and_json(text_name, json_name, handles):
    t = no_handles(parse_text(load(text_name)).records)
    j = no_handles(parse(strip_provenance(load(json_name))).records)
    assert costs_by_table(t) == costs_by_table(j)
    assert native_model(t) == native_model(j)


def test_the_variety_capture_reads_every_construct():
    recs = parse_text(load("nftables/local_variety.nft")).records
    chains = {(c.family, c.name): c for c in recs if isinstance(c, NftChain)}
    # priorities by name, with offsets, per family (bridge names differ), and numbers
    assert chains[("inet", "pre")].prio == -298                 # raw + 2
    assert chains[("inet", "out")].prio == -155                 # mangle - 5
    assert chains[("bridge", "pre")].prio == -300               # bridge dstnat
    assert chains[("netdev", "ingress")].prio == -500
    assert (chains[("inet", "out")].policy, chains[("inet", "web")].hook) == ("drop", None)
    sets = {s.name: s for s in recs if isinstance(s, NftSet)}
    assert sets["s_typeof"].type == "ipv4_addr" and sets["s_typeof"].flags == ("timeout",)
    assert sets["s_concat"].type == ("ipv4_addr", "inet_proto", "inet_service") and sets["s_concat"].size == 2
    assert sets["m_v"].verdict_targets == ("web",) and sets["m_v"].map_type == "verdict"
    assert sets["s_cnt"].size == 2       # an element comment with a comma stays one element
    rules = {(r.chain, r.position): r for r in recs if isinstance(r, NftRule)}
    assert (rules[("pre", 1)].verdict, rules[("pre", 1)].lookups, rules[("pre", 1)].terminal_in_map) == \
        ("dispatch", ("m_v",), True)
    assert rules[("pre", 5)].verdict == "terminal"               # `ct status dnat ... accept`
    assert rules[("pre", 8)].packets == 5                        # `counter name "cnt1"`
    assert rules[("other", 1)].counter_before_match and rules[("other", 1)].unconditional   # `meta mark set ...`
    assert rules[("out", 2)].targets == ("web",) and rules[("out", 2)].terminal_in_map
    counters = [c for c in recs if isinstance(c, NftCounter)]
    assert [(c.name, c.packets, c.bytes) for c in counters] == [("cnt1", 5, 300)]


def test_iptables_nft_rules_printed_as_xt():
    recs = parse_text(load("nftables/iptnft_kuberouter.nft")).records
    rules = {(r.chain, r.position): r for r in recs if isinstance(r, NftRule)}
    # `meta l4proto tcp xt match set xt match set tcp dport 8082 counter ... meta mark set ...`
    mark = rules[("KUBE-NWPLCY-5VLCZNPWIAXAL2HB", 1)]
    assert (mark.verdict, mark.unconditional, mark.counter_before_match) == ("continue", False, False)
    reject = rules[("KUBE-POD-FW-XIOATVM5TOINSO4V", 5)]
    assert reject.verdict == "terminal" and reject.has_counter


def test_old_nft_inline_xt_and_a_paste_that_starts_mid_table():
    p = parse_text(load("nftables/nixos-81172_iptnft_xt_inline.nft"))
    w = p.warnings
    assert any("line outside any table ignored: 'type filter hook output" in x for x in w)
    assert any("closing brace without an open block" in x for x in w)
    assert any("assumed table ip filter" in x for x in w)
    assert any("text ends inside chain DOCKER" in x for x in w)
    rules = {(r.table, r.chain, r.position): r for r in p.records if isinstance(r, NftRule)}
    rp = rules[("filter", "nixos-fw-rpfilter", 1)]          # `# xt_rpfilter counter ... return`
    assert (rp.verdict, rp.packets, rp.unconditional, rp.counter_before_match) == ("return", 1555, False, False)
    masq = rules[("nat", "POSTROUTING", 1)]                    # `... counter ... # xt_MASQUERADE`
    assert masq.verdict == "terminal"
    mark = rules[("nat", "nixos-nat-pre", 1)]                  # `# xt_MARK`: not terminal
    assert mark.verdict == "continue"
    out = rules[("nat", "OUTPUT", 2)]                          # `# xt_addrtype ... jump DOCKER`
    assert (out.verdict, out.targets) == ("jump", ("DOCKER",))
    chains = {c.name: c for c in p.records if isinstance(c, NftChain)}
    assert chains["INPUT"].prio == 100 and chains["OUTPUT"].prio == -100 and chains["PREROUTING"].prio == -100


def test_native_inet_paste_with_fence_comments_and_queue():
    p = parse_text(load("nftables/opensnitch-1423_native_inet.nft"))
    assert p.warnings == ("line 46: unexpected line in table: 'chain filter_p'",
                          "text ends inside table inet opensnitch (truncated?)")
    chains = {(c.table, c.name): c for c in p.records if isinstance(c, NftChain)}
    assert chains[("opensnitch", "intercept_dns")].prio == -1          # filter - 1
    assert chains[("opensnitch", "intercept_con")].prio == -149        # mangle + 1
    assert chains[("opensnitch", "intercept_con")].type == "route"
    rules = [r for r in p.records if isinstance(r, NftRule) and r.table == "filter"]
    assert [r.comment for r in rules[:2]] == ["early drop of invalid connections", "allow tracked connections"]
    assert [r.verdict for r in rules] == ["terminal"] * 7 + ["continue"]
    last = rules[-1]                     # `counter packets 0 bytes 0` alone: counts every packet reaching it
    assert last.unconditional and last.counter_before_match and last.has_counter
    queue = [r for r in p.records if isinstance(r, NftRule) and r.chain == "intercept_dns"][0]
    assert queue.verdict == "terminal"


def test_iptables_nft_fragments_from_public_issues():
    frag = parse_text(load("nftables/calico-8025_iptnft_nat_fragment.nft"))
    assert any("assumed table ip filter" in w for w in frag.warnings)
    rules = [r for r in frag.records if isinstance(r, NftRule)]
    sep = [r for r in rules if r.chain == "KUBE-SEP-CVFYIOPWUU23HGF5"]
    assert [r.verdict for r in sep] == ["jump", "terminal"]      # KUBE-MARK-MASQ, then dnat
    svc = [r for r in rules if r.chain == "KUBE-SVC-JOQCPDX2ATLAF3TL"]
    assert svc[1].unconditional and svc[1].counter_before_match    # ` counter ... jump KUBE-SEP-...`
    detect = parse_text((FIX / "detect" / "calico_flannel_nft_ruleset.txt").read_text(encoding="utf-8"))
    out = [r for r in detect.records if isinstance(r, NftRule) and r.chain == "OUTPUT"]
    assert [(r.verdict, r.packets) for r in out] == [("jump", 17904), ("jump", 17904), ("jump", 2981987),
                                                      ("terminal", 3117478)]


def test_prompts_indentation_crlf_and_truncation_marks():
    base = load("nftables/local_native_sets.nft")
    lines = base.split("\n")
    pasted = "\r\n".join(["$ sudo nft -a list ruleset", "```"] + ["  " + x for x in lines[1:]] + ["```"])
    p = parse_text(pasted)
    assert p.records == parse_text(base).records and p.warnings == ()
    at = next(i for i, x in enumerate(lines) if "chain input" in x)
    cut = parse_text("\n".join(lines[:at] + ["\t\t..."]))
    assert f"ruleset truncated at line {at + 1}" in cut.warnings
    assert any("text ends inside table inet cnit" in w for w in cut.warnings)


LINE = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "table ip filter {", "table inet t { # handle 1", "table bogus {", "}", "chain c {", "chain b { # handle 3",
        "type filter hook input priority filter; policy drop;", "type nat hook prerouting priority dstnat - 10;",
        "set s {", "map m {", "type ipv4_addr . inet_service : verdict", "typeof ip saddr", "flags interval,dynamic",
        "elements = { 10.0.0.1 . 80 : jump c,", "10.0.0.2 . 443 : goto b }", "elements = { 1, 2",
        "counter packets 1 bytes 2 accept", "ip saddr @s counter packets x bytes 2 drop # handle 7",
        "tcp dport vmap @m", "udp dport vmap { 53 : jump c, 54 : accept }", "meta mark set meta mark | 0x1 counter",
        "ct status dnat counter packets 3 bytes 4 accept", "# xt_MASQUERADE", "xt match set xt target REJECT",
        "counter name \"n\"", "counter n {", "packets 5 bytes 6", "jump", "vmap", "limit rate", "log prefix \"x",
        "$ nft list ruleset", "```", "...", "flowtable f {", "quota q {", "comment \"c\"",
    ]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_never_crashes(lines):
    p = parse_text("\n".join(lines))
    assert len(p.warnings) <= MAX_WARNINGS + 1
    for r in p.records:
        if isinstance(r, NftRule):
            assert r.position >= 1 and (r.packets is None or r.packets >= 0)
    costs_by_table(p.records)
    native_model(p.records)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([p[0] for p in PAIRS]), st.integers(0, 10_000), st.integers(1, 400))
def test_fuzz_cut_real_text(name, start, length):
    text = load(name)
    a = start % len(text)
    p = parse_text(text[:a] + text[a + length:])
    assert len(p.warnings) <= MAX_WARNINGS + 1


def test_not_text_is_a_warning():
    assert parse_text(None).warnings  # type: ignore[arg-type]

"""The `*-save -c` parser on real dumps (CNI nodes from public issues, and this machine) and fuzzed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.iptables.graph import costs_by_table
from cnitrace.collectors.iptables.parse import Chain, Rule, detect_backend, parse, parse_ruleset

FIX = Path(__file__).parent.parent / "fixtures" / "iptables"


def load(name: str) -> str:
    text = FIX / name
    body = text.read_text(encoding="utf-8")
    assert body.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def rules_of(rs, chain):
    return [r for r in rs.rules if r.chain == chain]


# name, chains, rules, warnings expected (substring or None)
REAL = [
    ("kuberouter_kube-router-341.save", 8, 11, None),
    ("kuberouter_kube-router-1069.save", 17, 15, "no COMMIT"),
    ("weavenet_weave-3452.save", 12, 15, "no COMMIT"),
    ("kubeproxy_kubernetes-75893.save", 25, 8, "no COMMIT"),
    ("calico_weave-3588.save", 36, 2, "without a *table header"),
    ("calico_amazon-vpc-cni-k8s-34.save", 3, 12, "without a *table header"),
    ("cilium_cilium-31565.save", 6, 14, "without a *table header"),
    ("antrea_antrea-2635.restore", 5, 4, "no COMMIT"),
    ("calico_nft_backend.save", 6, 14, None),
    ("local_legacy_v4.save", 15, 12, None),
    ("local_nft_v4.save", 15, 12, None),
    ("local_legacy_v6.save", 3, 2, None),
    ("local_nft_v6.save", 3, 2, None),
]


@pytest.mark.parametrize("name,n_chains,n_rules,warning", REAL)
def test_real_dumps(name, n_chains, n_rules, warning):
    rs, warnings = parse_ruleset(load(name))
    assert (len(rs.chains), len(rs.rules)) == (n_chains, n_rules)
    if warning is None:
        assert warnings == ()
    else:
        assert any(warning in w for w in warnings), warnings


def test_weave_policy_counters_and_targets():
    rs, _ = parse_ruleset(load("weavenet_weave-3452.save"))
    inp = next(c for c in rs.chains if c.name == "INPUT")
    assert (inp.policy, inp.packets, inp.bytes) == ("ACCEPT", 57611, 14060452)
    fwd = rules_of(rs, "FORWARD")
    # The comment holds "-j KUBE-FORWARD" in quotes: the real target is WEAVE-NPC-EGRESS.
    assert fwd[0].target == "WEAVE-NPC-EGRESS" and fwd[0].comment == "NOTE: this must go before \\'-j KUBE-FORWARD\\'"
    assert [r.target for r in fwd] == ["WEAVE-NPC-EGRESS", "WEAVE-NPC", "NFLOG", "DROP", "ACCEPT", "ACCEPT",
                                       "KUBE-FORWARD"]
    # The torn last line keeps what it has.
    assert rules_of(rs, "WEAVE-NPC")[-1].target == "WEAVE-N"


def test_calico_goto_return_and_comments():
    rs, _ = parse_ruleset(load("calico_amazon-vpc-cni-k8s-34.save"))
    fw = rules_of(rs, "cali-fw-caliab276a425c1")
    assert [r.position for r in fw] == [1, 2, 3, 4, 5, 6]
    assert fw[3].target == "cali-pro-kns.default" and not fw[3].goto
    assert fw[4].target == "RETURN" and fw[4].comment == "Return if profile accepted"


def test_calico_endpoint_chain_on_the_nft_backend():
    # 6 NEW UDP packets walk the workload chain (MARK, profile, RETURN-if-accepted) and return to INPUT's
    # policy; their 6 ICMP errors are RELATED and leave at rule 1.
    rs, warnings = parse_ruleset(load("calico_nft_backend.save"))
    assert warnings == () and {r.backend for r in rs.rules} == {"nft"}
    costs, _ = costs_by_table(rs)
    fw = costs[("nft", "ipv4", "filter", "cali-fw-caliab276a425c1")]
    # 6 × 1 (accepted at rule 1) + 6 × 5 (rules 1-5, RETURN at 5) = 36 over 12 packets.
    assert (fw.entering, fw.evaluations, fw.per_packet, fw.returned) == (12, 36, 3.0, 6)
    prof = costs[("nft", "ipv4", "filter", "cali-pro-kns.default")]
    assert (prof.entering, prof.per_packet, prof.returned) == (6, 2.0, 6)
    assert fw.inclusive_per_packet == (36 + 12) / 12
    inp = costs[("nft", "ipv4", "filter", "INPUT")]
    assert inp.entering == 12 and inp.fall_through == 6


def test_kube_router_chain_kinds():
    rs, _ = parse_ruleset(load("kuberouter_kube-router-341.save"))
    chains = {c.name: c for c in rs.chains}
    assert chains["FORWARD"].policy == "DROP" and chains["FORWARD"].builtin
    assert not chains["KUBE-FORWARD"].builtin
    assert (chains["OUTPUT"].packets, chains["OUTPUT"].bytes) == (422, 1200805)


def test_local_capture_counters_and_model():
    text = load("local_legacy_v4.save")
    rs, _ = parse_ruleset(text, backend="legacy")
    r = {(x.chain, x.position): x for x in rs.rules if x.table == "filter"}
    assert (r[("INPUT", 1)].packets, r[("INPUT", 1)].bytes) == (9, 342)
    assert r[("cnit-FORWARD", 2)].goto and r[("cnit-FORWARD", 2)].target == "cnit-wl"
    # LOG prefix with an escaped quote stays inside one token.
    assert r[("cnit-FORWARD", 1)].target == "LOG"
    costs, _ = costs_by_table(rs)
    c = costs[("legacy", "ipv4", "filter", "cnit-FORWARD")]
    # 9 entered: 3 took the goto (2 evals), 3 were accepted in cnit-pol (3 evals), 3 came back and fell
    # through (4 evals): 6 + 9 + 12 = 27.
    assert (c.entering, c.evaluations, c.fall_through) == (9, 27, 3)


def test_backend_detection_from_header():
    assert detect_backend("# Generated by iptables-nft-save v1.8.9 (nf_tables) on x\n") == "nft"
    assert detect_backend("# Generated by iptables-save v1.8.9 (legacy) on x\n") == "legacy"
    assert detect_backend("*filter\n") == ""
    rs, _ = parse_ruleset(load("local_nft_v6.save"), family="ipv6")
    assert {r.backend for r in rs.rules} == {"nft"} and {r.family for r in rs.rules} == {"ipv6"}


def test_keys_are_stable_under_insertion_and_number_duplicates():
    a, _ = parse_ruleset("*filter\n:X - [0:0]\n[1:1] -A X -j DROP\n[2:2] -A X -j DROP\nCOMMIT\n")
    assert [r.nth for r in a.rules] == [1, 2]
    b, _ = parse_ruleset("*filter\n:X - [0:0]\n[5:5] -A X -p tcp -j ACCEPT\n[1:1] -A X -j DROP\nCOMMIT\n")
    assert a.rules[0].key == b.rules[1].key


@pytest.mark.parametrize("text,warning", [
    ("*filter\n:INPUT ACCEPT [x:1]\nCOMMIT\n", "bad chain counters"),
    ("*filter\n[1:2 -A INPUT -j DROP\nCOMMIT\n", "bad counters"),
    ("*filter\n-A INPUT -j\nCOMMIT\n", "without a target"),
    ("*filter\nbogus line\nCOMMIT\n", "unexpected line"),
    ("*filter\n:INPUT ACCEPT [0:0]\n", "no COMMIT"),
    ("COMMIT\nhello\n", "outside any table"),
    ("*fil ter\n", "bad table line"),
])
def test_malformed_lines_warn(text, warning):
    parsed = parse(text)
    assert any(warning in w for w in parsed.warnings), parsed.warnings


def test_huge_counters_and_unicode_names():
    big = 2 ** 64 - 1
    text = (f"*filter\n:ĉeno-ünï - [0:0]\n[{big}:{big}] -A ĉeno-ünï -m comment --comment \"ü\" -j ACCEPT\n"
            "COMMIT\n")
    parsed = parse(text)
    assert parsed.warnings == ()
    rule = [r for r in parsed.records if isinstance(r, Rule)][0]
    assert rule.packets == big and rule.chain == "ĉeno-ünï" and rule.comment == "ü"


def test_iptables_S_form_declares_chains():
    parsed = parse("-P INPUT DROP\n-N cnit-x\n-A INPUT -j cnit-x\n-A cnit-x -c 5 300 -j ACCEPT\n")
    chains = {c.name: c for c in parsed.records if isinstance(c, Chain)}
    assert chains["INPUT"].policy == "DROP" and chains["cnit-x"].policy is None
    rule = [r for r in parsed.records if isinstance(r, Rule) and r.chain == "cnit-x"][0]
    assert (rule.packets, rule.bytes, rule.spec) == (5, 300, "-j ACCEPT")


LINE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["*filter", "*nat", "COMMIT", ":INPUT ACCEPT [1:2]", ":X - [0:0]", "-A X -j Y",
                     "[3:4] -A INPUT -j X", "-A X -g X", '-A X -m comment --comment "a -j B" -j C',
                     "[99999999999999999999:1] -A X -j RETURN", ":INPUT ACCEPT", "-A", "[", "-A X -j",
                     "-A X -c ² 3 -j DROP", "-A X -c 1 2", ":X - [٣:1]", "[١:2] -A X -j Y"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_never_crashes(lines):
    text = "\n".join(lines)
    parsed = parse(text)
    for rec in parsed.records:
        assert isinstance(rec, (Chain, Rule))
        assert rec.packets >= 0 and rec.bytes >= 0
    rs, _ = parse_ruleset(text)
    costs, _ = costs_by_table(rs)  # the model copes with whatever the parser returned
    for c in costs.values():
        assert c.evaluations is None or c.evaluations >= 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_bytes_decoded_with_replacement(data):
    parse(data.decode("utf-8", errors="replace"))


def test_not_text_is_a_warning():
    assert parse(None).warnings  # type: ignore[arg-type]

"""The `*-save -c` parser on real dumps (CNI nodes from public issues, and this machine) and fuzzed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.base import MAX_WARNINGS
from cnitrace.collectors.iptables.graph import costs_by_table
from cnitrace.collectors.iptables.parse import (NO_RULE_COUNTERS, POLICY_UNKNOWN, Chain, Rule, detect_backend,
                                                detect_family, guess_table, parse, parse_ruleset)

FIX = Path(__file__).parent.parent / "fixtures" / "iptables"


def load(name: str) -> str:
    text = FIX / name if "/" not in name else FIX.parent / name
    body = text.read_text(encoding="utf-8")
    assert body.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def rules_of(rs, chain):
    return [r for r in rs.rules if r.chain == chain]


# name, chains, rules, rule counters, warning expected (substring or None besides the counters one)
REAL = [
    ("kuberouter_kube-router-341.save", 8, 11, False, None),
    ("kuberouter_kube-router-1069.save", 17, 15, False, "no COMMIT"),
    ("weavenet_weave-3452.save", 12, 15, False, "no COMMIT"),
    ("kubeproxy_kubernetes-75893.save", 25, 8, False, "no COMMIT"),
    ("calico_weave-3588.save", 36, 2, False, "no *table header: assumed the nat table"),
    ("calico_amazon-vpc-cni-k8s-34.save", 3, 12, False, "no *table header: assumed the filter table (cali-fw-"),
    ("cilium_cilium-31565.save", 6, 14, False, "no *table header: assumed the filter table"),
    ("antrea_antrea-2635.restore", 5, 4, False, "no COMMIT"),
    ("calico_nft_backend.save", 6, 14, True, None),
    ("local_legacy_v4.save", 15, 12, True, None),
    ("local_nft_v4.save", 15, 12, True, None),
    ("local_legacy_v6.save", 3, 2, True, None),
    ("local_nft_v6.save", 3, 2, True, None),
    ("local_legacy_v4_noc.save", 15, 12, False, None),
    ("local_legacy_v6_noc.save", 3, 2, False, None),
    ("kubernetes-72370_prompt_fence_noc.save", 8, 17, False, "line outside any table ignored: 'On Debian"),
    ("kind-blog_prompt_noc.save", 17, 7, False, "no COMMIT"),
    ("myk8s_grep_prompts.txt", 5, 12, False, "no *table header: assumed the nat table (KUBE-"),
    ("kuberouter_kube-router-425_nat_rules.txt", 1, 9, False, "no *table header: assumed the nat table"),
    ("local_legacy_v4_grep.txt", 4, 9, False, "no *table header: assumed the filter table"),
    ("local_legacy_v4_S.txt", 6, 10, False, "no *table header: assumed the filter table"),
    ("local_nft_v4_S_v.txt", 6, 10, True, "no *table header: assumed the filter table"),
]


@pytest.mark.parametrize("name,n_chains,n_rules,counted,warning", REAL)
def test_real_dumps(name, n_chains, n_rules, counted, warning):
    rs, warnings = parse_ruleset(load(name))
    assert (len(rs.chains), len(rs.rules)) == (n_chains, n_rules)
    assert rs.rule_counters is counted
    assert (NO_RULE_COUNTERS in warnings) is (not counted)
    rest = [w for w in warnings if w != NO_RULE_COUNTERS]
    if warning is None:
        assert rest == []
    else:
        assert any(warning in w for w in rest), warnings


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
                     "-A X -c ² 3 -j DROP", "-A X -c 1 2", ":X - [٣:1]", "[١:2] -A X -j Y",
                     # pasting: prompts, fences, truncation, indentation, CRLF, -S forms, headerless nat
                     "$ sudo iptables-save", "root@node:~# ip6tables-save -c", "[root@n ~]# iptables -S", "```",
                     "````bash", "```-A X -j Y", "...", "[...]", "<snip>", "   -A KUBE-SVC-X -j KUBE-SEP-Y\r",
                     "-P INPUT DROP -c 5 6", "-P FORWARD", "-N", ":KUBE-SEP-A - [0:0]", "-A X -j DNAT --to 1.2.3.4",
                     '-A X -m comment --comment "unterminated -j Z', "-A X -g", "-A X -m comment --comment"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_never_crashes(lines):
    text = "\n".join(lines)
    parsed = parse(text, family=None)
    assert len(parsed.warnings) <= MAX_WARNINGS + 1
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


MUTABLE = ["kind-blog_prompt_noc.save", "myk8s_grep_prompts.txt", "local_legacy_v4_c.save", "local_nft_v4_S_v.txt"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(MUTABLE), st.lists(st.tuples(st.integers(0, 200), st.sampled_from(
    ["drop", "dup", "cut", "indent", "noise"]), st.text(max_size=12)), max_size=12))
def test_fuzz_mutated_real_dumps(name, edits):
    lines = load(name).splitlines()
    for at, op, junk in edits:
        i = at % (len(lines) or 1)
        if not lines:
            break
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: len(lines[i]) // 2]
        elif op == "indent":
            lines[i] = "\t " + lines[i] + "\r"
        else:
            lines.insert(i, junk)
    rs, warnings = parse_ruleset("\n".join(lines), family=None)
    assert len(warnings) <= MAX_WARNINGS + 1
    for r in rs.rules:
        assert r.position >= 1 and r.nth >= 1 and r.packets >= 0
    costs_by_table(rs)


def test_not_text_is_a_warning():
    assert parse(None).warnings  # type: ignore[arg-type]


# --- what people paste: #13 ---------------------------------------------------------------------

def test_saved_without_c_rules_unknown_but_policy_counters_kept():
    # Two saves of one netns, a moment apart: with and without -c.
    with_c, w1 = parse_ruleset(load("local_legacy_v4_c.save"))
    without, w2 = parse_ruleset(load("local_legacy_v4_noc.save"))
    assert with_c.rule_counters and w1 == ()
    assert not without.rule_counters and w2 == (NO_RULE_COUNTERS,)
    assert [r.key for r in without.rules] == [r.key for r in with_c.rules]
    goto = next(r for r in with_c.rules if r.chain == "cnit-FORWARD" and r.position == 2)
    assert {r.packets for r in without.rules} == {0} and goto.packets == 40003
    # iptables-save prints the built-in chains' policy counters even without -c
    policy = {(c.table, c.name): (c.packets, c.bytes, c.counted) for c in without.chains if c.builtin}
    assert policy == {(c.table, c.name): (c.packets, c.bytes, True) for c in with_c.chains if c.builtin}
    assert policy[("filter", "INPUT")] == (80012, 12480708, True)


def test_public_save_without_c_from_a_kind_node():
    rs, _ = parse_ruleset(load("kind-blog_prompt_noc.save"))
    pre = next(c for c in rs.chains if (c.table, c.name) == ("mangle", "PREROUTING"))
    assert (pre.policy, pre.packets, pre.bytes, pre.counted) == ("ACCEPT", 1789547, 356082101, True)
    assert not rs.rule_counters
    # the torn last rule keeps its chain, and its comment runs to the end of the text
    last = rs.rules[-1]
    assert (last.chain, last.target, last.comment) == ("OUTPUT", None, "kub")


def test_headerless_grep_keeps_its_chain_declarations():
    rs, warnings = parse_ruleset(load("local_legacy_v4_grep.txt"))
    chains = {c.name: c for c in rs.chains}
    # :cnit-* lines before the first rule are declarations, not "lines outside any table"
    assert [n for n in chains] == ["cnit-FORWARD", "cnit-pol", "cnit-wl", "INPUT"]
    assert all(chains[n].policy is None for n in ("cnit-FORWARD", "cnit-pol", "cnit-wl"))
    # INPUT is only used by a rule: a base chain whose policy is unknown, not an invented ACCEPT
    inp = chains["INPUT"]
    assert inp.builtin and inp.policy == POLICY_UNKNOWN and not inp.counted
    assert not any("outside any table" in w for w in warnings)
    assert any("undeclared chain 'INPUT'" in w and "policy is unknown" in w for w in warnings)
    costs, _ = costs_by_table(rs)
    c = next(v for k, v in costs.items() if k[2:] == ("filter", "INPUT"))
    assert c.entering is None and any("policy counter" in n for n in c.notes)


def test_undeclared_builtin_in_a_real_save_is_not_given_a_policy():
    rs, _ = parse_ruleset(load("cilium_cilium-31565.save"))
    builtins = {c.name: c.policy for c in rs.chains if c.builtin}
    assert builtins == {"INPUT": POLICY_UNKNOWN, "FORWARD": POLICY_UNKNOWN, "OUTPUT": POLICY_UNKNOWN}


def test_iptables_S_v_carries_policy_and_rule_counters():
    rs, _ = parse_ruleset(load("local_nft_v4_S_v.txt"))
    inp = next(c for c in rs.chains if c.name == "INPUT")
    assert (inp.policy, inp.packets, inp.bytes, inp.counted) == ("ACCEPT", 80012, 12480708, True)
    goto = next(r for r in rs.rules if r.chain == "cnit-FORWARD" and r.position == 2)
    assert (goto.packets, goto.bytes, goto.goto, goto.target) == (40003, 5120114, True, "cnit-wl")
    assert "-c " not in goto.spec
    plain, _ = parse_ruleset(load("local_legacy_v4_S.txt"))
    assert not plain.rule_counters
    assert {c.counted for c in plain.chains if c.builtin} == {False}


@pytest.mark.parametrize("name,table,why", [
    ("myk8s_grep_prompts.txt", "nat", "KUBE-"),
    ("kuberouter_kube-router-425_nat_rules.txt", "nat", "KUBE-"),
    ("calico_weave-3588.save", "nat", "MASQUERADE"),
    ("cilium_cilium-31565.save", "filter", "CILIUM_"),
    ("local_legacy_v4_grep.txt", "filter", "no table-specific"),
])
def test_table_of_headerless_text(name, table, why):
    lines = load(name).splitlines()[1:]
    got, reason = guess_table(lines)
    assert got == table and why in reason
    rs, warnings = parse_ruleset(load(name))
    assert rs.rules[0].table == table
    assert any(f"assumed the {table} table" in w for w in warnings)


def test_table_guess_raw_from_antrea_notrack_rules():
    # Antrea's raw-table rules without their `*raw` line (a grep of them).
    lines = [x for x in load("antrea_antrea-2635.restore").splitlines() if "ANTREA-PREROUTING" in x
             or "ANTREA-OUTPUT -m comment --comment \"Antrea: do not track" in x]
    assert any("NOTRACK" in x for x in lines)
    assert guess_table(lines) == ("raw", "NOTRACK targets")
    # built-in chains rule tables out: POSTROUTING alone is not in filter
    assert guess_table(["-A POSTROUTING -o eth0 -j ACCEPT"])[0] == "nat"
    assert guess_table(["-A FORWARD -j KUBE-SERVICES"])[0] == "filter"


def test_kube_proxy_grep_with_prompts_and_fences():
    rs, warnings = parse_ruleset(load("myk8s_grep_prompts.txt"))
    assert not any("unexpected" in w or "outside" in w for w in warnings), warnings
    svc = [r for r in rs.rules if r.chain == "KUBE-SVC-HFJG5QJDKA2NKYX2"]
    assert [r.target for r in svc] == ["KUBE-SEP-IVTV3JKMDAKRFCBH", "KUBE-SEP-PFJDNPXONEKPWG5A",
                                       "KUBE-SEP-SIUA6YONSJ3WPF22"]
    # the KUBE-SERVICES rule appears in two greps: the same rule twice, numbered apart
    dup = [r for r in rs.rules if r.target == "KUBE-SVC-HFJG5QJDKA2NKYX2"]
    assert [r.nth for r in dup] == [1, 2] and dup[0].comment == "default/deploy1: cluster IP"


def test_prompt_fence_prose_indentation_and_crlf():
    text = load("kubernetes-72370_prompt_fence_noc.save")
    rs, warnings = parse_ruleset(text)
    assert [w for w in warnings if w.startswith("line")] == ["line 2: line outside any table ignored: "
                                                           "'On Debian (Real Host)'"]
    fw = [r for r in rs.rules if r.chain == "KUBE-FIREWALL"]
    assert [r.nth for r in fw] == [1, 2, 3, 1]       # the last one is torn: a different spec
    # the same paste indented as in a doc and with Windows line endings parses the same
    lines = text.split("\n")
    pasted = "\r\n".join([lines[0]] + ["    " + x if x else x for x in lines[1:]])
    again, w2 = parse_ruleset(pasted)
    assert again == rs and w2 == warnings


@pytest.mark.parametrize("marker", ["...", "…", "[...]", "<snip>", "(truncated)", "[snip]"])
def test_truncation_marker_is_one_warning(marker):
    lines = load("local_legacy_v4_noc.save").split("\n")
    at = next(i for i, x in enumerate(lines) if x.startswith("-A cnit-pol"))
    cut = "\n".join(lines[:at] + [marker] + lines[at + 2:])
    rs, warnings = parse_ruleset(cut)
    assert f"dump truncated at line {at + 1}" in warnings
    assert not any("unexpected" in w or "bad counters" in w for w in warnings)
    assert len(rs.rules) == 10


def test_family_from_the_text():
    v6 = load("local_legacy_v6_noc.save")
    assert detect_family(v6) == "ipv6"
    body = "\n".join(x for x in v6.splitlines() if not x.startswith("#"))
    assert "ip6tables" not in body and detect_family(body) == "ipv6"       # from fe80::/10
    assert detect_family(load("local_legacy_v4_noc.save")) == "ipv4"
    assert detect_family("*filter\n-A INPUT -m mac --mac-source 00:11:22:33:44:55 -j DROP\nCOMMIT\n") == "ipv4"
    rs, _ = parse_ruleset(body, family=None)
    assert {r.family for r in rs.rules} == {"ipv6"}
    # both saves pasted one after the other: each takes the family its header names
    both, _ = parse_ruleset(load("local_legacy_v4_noc.save") + v6, family=None)
    assert {(r.table, r.family) for r in both.rules} == {("filter", "ipv4"), ("nat", "ipv4"), ("mangle", "ipv4"),
                                                        ("filter", "ipv6")}


def test_family_ignores_another_commands_legacy_warning():
    # the ip6tables-nft warning of the same script sits above an IPv4 `iptables-legacy -S`
    text = load("ipset-country-18_legacy_S_warning.txt")
    assert detect_family(text) == "ipv4"
    rs, _ = parse_ruleset(text, family=None)
    assert {c.family for c in rs.chains} == {"ipv4"} and len(rs.rules) == 12


def test_xtables_save_header_is_the_nft_variant():
    # iptables 1.8.0-1.8.2's iptables-nft-save printed '# Generated by xtables-save v1.8.2'
    text = load("ansible-hardening-274_xtables_save_then_legacy.save")
    nft_part, legacy_part = text.split("$ iptables-legacy-save", 1)
    assert detect_backend(nft_part) == "nft"
    assert detect_backend(legacy_part) == ""        # 'iptables-save v1.8.2' alone names no backend
    rs, _ = parse_ruleset(nft_part)
    assert {c.backend for c in rs.chains} == {"nft"}

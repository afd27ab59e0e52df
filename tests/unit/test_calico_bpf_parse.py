"""Calico eBPF data plane: `calico-node -bpf counters dump` and `policy dump` from the Calico docs and an issue."""

from __future__ import annotations


from hypothesis import given, settings, strategies as st

from tests.support.fixtures import fixture
from cnitrace.collectors.calico import parse as p

def fx(name: str) -> str:
    return fixture("calico", name)


def test_counters_table_with_wrapped_cells():
    r = p.parse_counters_dump(fx("tigera-docs-counters-dump.txt"))
    assert r.warnings == () and len(r.records) == 24 and {c.iface for c in r.records} == {"eth0"}  # --iface=eth0
    by = {(c.category, c.type): c for c in r.records}
    assert (by["Dropped", "by policy"].ingress, by["Dropped", "by policy"].egress) == (0, 11)
    assert by["Accepted", "by policy"].counters == {"ingress": 0, "egress": 4}  # XDP N/A: no value, not 0
    assert ("Dropped", "NAT source collision resolution failed") in by               # two-line cell joined
    assert ("Other", "packets hitting NAT source collision") in by
    assert (by["Total", "packets"].ingress, by["Total", "packets"].egress) == (34, 22)
    assert by["Redirect", "plain"].ingress == 20


def test_counters_of_several_interfaces_named_after_their_table():
    r = p.parse_counters_dump(fx("calico-9675-counters-dump.txt"))
    first = [c for c in r.records if c.iface == "calid8be076e5f7"]
    assert len(first) == 6 and first[-1].type == "packets" and (first[-1].ingress, first[-1].egress) == (37, 22)
    second = [c for c in r.records if c.iface == ""]
    assert [(c.category, c.type, c.ingress, c.egress) for c in second] == [
        ("Accepted", "by another program", None, 0), ("Accepted", "by failsafe", None, 0),
        ("Accepted", "by policy", None, 0), ("Dropped", "by policy", None, 0)]
    assert len(r.warnings) == 2 and "truncated" in r.warnings[0] and "without an interface" in r.warnings[1]


def test_policy_dump_rules_and_counts():
    r = p.parse_policy_dump(fx("tigera-docs-policy-dump.txt"))
    assert r.warnings == ()
    rule, profile = r.records
    assert (rule.iface, rule.hook, rule.tier, rule.policy) == (
        "calic31b4f7fc58", "egress", "default", "default/knp.default.allow-nginx-from-ubuntu")
    assert (rule.rule_id, rule.action, rule.count, rule.ip_sets) == ("29vMYcPWr7reSxxN", "allow", 9, ("0x303904ae5eae5418",))
    assert "dst_ports:{first:80  last:80}" in rule.rule
    assert (profile.tier, profile.policy, profile.rule_id, profile.count) == ("", "", "aBMQCbsUMESPKGRp", 0)
    assert rule.counters == {"packets": 9} and rule.key != profile.key


def test_policy_dump_rule_matches_form_and_asm_lines():
    text = fx("tigera-docs-policy-dump.txt").replace("// count = 9", "// Rule matches: 12")
    text = text.replace("// End of rule 29vMYcPWr7reSxxN", "   0: (61) r1 = *(u32 *)(r6 +0)\n// End of rule 29vMYcPWr7reSxxN")
    r = p.parse_policy_dump(text)
    assert r.records[0].count == 12 and len(r.warnings) == 1 and "--asm" in r.warnings[0]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_random_text(s):
    assert len(p.parse_counters_dump(s).warnings) <= 51
    assert len(p.parse_policy_dump(s).warnings) <= 51


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["tigera-docs-counters-dump.txt", "calico-9675-counters-dump.txt", "tigera-docs-policy-dump.txt"]),
       st.integers(0, 4000), st.text(alphabet="|+-/ 0123456789N/A:\"=\ncount", max_size=30))
def test_fuzz_mutated_real_dumps(name, cut, junk):
    text = fx(name)
    mutated = text[:cut] + junk + text[cut:]
    assert len(p.parse_counters_dump(mutated).warnings) <= 51
    assert len(p.parse_policy_dump(mutated).warnings) <= 51


def test_policy_dump_with_comments_glued_on_one_line():
    r = p.parse_policy_dump(fx("calico-11071-policy-dump-concise-glued.txt"))
    assert r.warnings == ()
    first, profile = r.records
    assert (first.rule_id, first.action, first.count, first.tier) == ("29vMYcPWr7reSxxN", "allow", 9, "default")
    assert first.policy == "default/knp.default.allow-nginx-from-ubuntu" and first.ip_sets == ("0x303904ae5eae5418",)
    assert (profile.rule_id, profile.count, profile.tier, profile.policy) == ("aBMQCbsUMESPKGRp", 0, "", "")


def test_policy_dump_naming_the_policy_kind():
    (r,) = p.parse_policy_dump(fx("calico-12050-policy-dump-kind-names.txt")).records
    assert (r.iface, r.hook, r.policy, r.rule_id, r.count) == (
        "cali12345", "egress", "GlobalNetworkPolicy policy-tcp", "policy-tcp", 42)


def test_indented_policy_dump_of_calico_bpf_3_32():
    got = p.parse_policy_dump(fx("calico-12050-policy-dump-indented.txt"))
    (r,) = got.records
    assert got.warnings == ()
    assert (r.iface, r.hook, r.tier, r.policy, r.rule_id, r.action, r.count, r.ip_sets) == (
        "cali12345", "egress", "default", "GlobalNetworkPolicy policy-tcp", "policy-tcp", "allow", 42, ("10.65.0.3/32",))

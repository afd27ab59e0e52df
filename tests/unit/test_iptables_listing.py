"""`iptables -L` listings (public pastes and this machine's captures) read into the save parser's records."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.base import MAX_WARNINGS
from cnitrace.collectors.iptables.graph import costs_by_table, unconditional
from cnitrace.collectors.iptables.listing import ROUNDED, parse_listing
from cnitrace.collectors.iptables.parse import Chain, Rule, parse_ruleset

FIX = Path(__file__).parent.parent / "fixtures" / "iptables"


def load(name: str) -> str:
    body = (FIX / name).read_text(encoding="utf-8")
    assert body.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def by_pos(rs):
    return {(r.chain, r.position): r for r in rs.rules}


# name, table, chains, rules, rule counters, rounded, family
REAL = [
    ("qifangsu-demo_filter_L_n_v.txt", "filter", 11, 22, True, True, "ipv4"),
    ("qifangsu-demo_nat_L_n_v.txt", "nat", 20, 43, True, False, "ipv4"),
    ("kuberouter_kube-router-602_L_v.txt", "filter", 1, 9, True, True, "ipv4"),
    ("kilo-247_L.txt", "filter", 2, 13, False, False, "ipv4"),
    ("k3s-7096_nat_L_n_v.txt", "nat", 7, 3, True, False, "ipv4"),
    ("kuberouter_kube-router-683_L_n_ln.txt", "filter", 2, 3, False, False, "ipv4"),
    ("local_legacy_v4_L_n_v.txt", "filter", 6, 10, True, True, "ipv4"),
    ("local_nft_v4_L_n_v.txt", "filter", 6, 10, True, True, "ipv4"),
    ("local_nft_v4_L_n_v_x_ln.txt", "filter", 6, 10, True, False, "ipv4"),
    ("local_legacy_v4_nat_L_n_v.txt", "nat", 4, 1, True, False, "ipv4"),
    ("local_legacy_v4_L.txt", "filter", 6, 10, False, False, "ipv4"),
    ("local_legacy_v6_L_n_v.txt", "filter", 3, 2, True, False, "ipv6"),
]


@pytest.mark.parametrize("name,table,n_chains,n_rules,counted,rounded,family", REAL)
def test_real_listings(name, table, n_chains, n_rules, counted, rounded, family):
    rs, warnings = parse_listing(load(name), family=None)
    assert (len(rs.chains), len(rs.rules)) == (n_chains, n_rules)
    assert {c.table for c in rs.chains} == {table}
    assert {c.family for c in rs.chains} == {family}
    assert (rs.rule_counters, rs.approximate) == (counted, rounded)
    assert (ROUNDED in warnings) is rounded
    assert all(isinstance(c, Chain) for c in rs.chains) and all(isinstance(r, Rule) for r in rs.rules)


def test_exact_listing_matches_save_counters_taken_with_it():
    # `iptables-nft -S -v` then `-L -n -v -x --line-numbers`, nothing sent in between.
    listed, warnings = parse_listing(load("local_nft_v4_L_n_v_x_ln.txt"))
    saved, _ = parse_ruleset(load("local_nft_v4_S_v.txt"))
    assert not listed.approximate and listed.rule_counters
    assert {k: (r.packets, r.bytes, r.target, r.goto) for k, r in by_pos(listed).items()} == \
        {k: (r.packets, r.bytes, r.target, r.goto) for k, r in by_pos(saved).items()}
    policies = {c.name: (c.policy, c.packets, c.bytes) for c in listed.chains if c.builtin}
    assert policies == {c.name: (c.policy, c.packets, c.bytes) for c in saved.chains if c.builtin}
    assert [c.name for c in listed.chains] == [c.name for c in saved.chains]
    # the same cost model reads both
    a, _ = costs_by_table(listed)
    b, _ = costs_by_table(saved)
    assert {k[3]: (v.entering, v.evaluations) for k, v in a.items()} == \
        {k[3]: (v.entering, v.evaluations) for k, v in b.items()}


def test_rounded_counters_expand_their_suffix():
    rs, _ = parse_listing(load("local_legacy_v4_L_n_v.txt"))
    inp = next(c for c in rs.chains if c.name == "INPUT")
    assert (inp.packets, inp.bytes) == (80012, 12_000_000)          # "80012 packets, 12M bytes"
    out = next(c for c in rs.chains if c.name == "OUTPUT")
    assert (out.packets, out.bytes) == (200_000, 28_000_000)       # "200K packets, 28M bytes"
    r = by_pos(rs)
    assert (r[("INPUT", 1)].packets, r[("INPUT", 1)].bytes) == (120_000, 15_000_000)   # " 120K   15M"
    assert (r[("cnit-FORWARD", 1)].packets, r[("cnit-FORWARD", 1)].bytes) == (3, 114)
    big, _ = parse_listing(load("kuberouter_kube-router-602_L_v.txt"))
    first = big.rules[0]
    assert (first.packets, first.bytes, first.target) == (41_000_000, 12_000_000_000, "KUBE-FIREWALL")


def test_spec_is_rebuilt_in_save_form():
    rs, _ = parse_listing(load("local_legacy_v4_L_n_v.txt"))
    r = by_pos(rs)
    # -n prints protocol numbers: 17 is udp; the comment becomes `-m comment --comment`
    assert r[("INPUT", 1)].spec == '-p udp -m comment --comment "cnit:dispatch -j hidden" -j cnit-FORWARD'
    assert r[("INPUT", 1)].comment == "cnit:dispatch -j hidden"
    assert r[("cnit-FORWARD", 2)].spec == "-p udp udp dpt:7 -g cnit-wl" and r[("cnit-FORWARD", 2)].goto
    assert r[("cnit-FORWARD", 3)].spec == "-j cnit-pol" and unconditional(r[("cnit-FORWARD", 3)].spec)
    nat, _ = parse_listing(load("qifangsu-demo_nat_L_n_v.txt"))
    masq = [x for x in nat.rules if x.chain == "POSTROUTING" and x.target == "MASQUERADE"][0]
    assert masq.spec == "! -o docker0 -s 172.17.0.0/16 -j MASQUERADE"
    ret = [x for x in nat.rules if x.chain == "POSTROUTING" and x.position == 5][0]
    assert ret.spec == "! -s 10.244.0.0/16 -d 10.244.0.0/24 -j RETURN"
    iface = [x for x in nat.rules if x.chain == "DOCKER"][0]
    assert iface.spec == "-i docker0 -j RETURN"


def test_blank_target_long_protocol_and_names():
    rs, warnings = parse_listing(load("kilo-247_L.txt"))
    r = by_pos(rs)
    # `ipencap--`: a protocol wider than its column runs into the opt field
    assert (r[("INPUT", 4)].target, r[("INPUT", 4)].spec) == \
        ("KILO-IPIP", '-p ipencap -m comment --comment "Kilo: jump to IPIP chain" -j KILO-IPIP')
    assert r[("INPUT", 2)].spec == ('-m comment --comment "kubernetes externally-visible service portals" '
                                    "ctstate NEW -j KUBE-EXTERNAL-SERVICES")
    assert any("short rule line 'ACCEPT     all'" in w for w in warnings)
    fw = {c.name: c for c in rs.chains}["FORWARD"]
    assert (fw.policy, fw.counted) == ("DROP", False)     # -L without -v: no policy counters


def test_table_from_prompt_marker_or_guess():
    rs, warnings = parse_listing(load("k3s-7096_nat_L_n_v.txt"))
    assert any("assumed the nat table (KUBE-" in w for w in warnings)
    assert any("short rule line '0'" in w for w in warnings)
    body = load("local_legacy_v4_nat_L_n_v.txt").split("\n", 1)[1]
    for head in ("# Table: mangle", "*mangle", "$ sudo iptables -t mangle -L -n -v",
                 "[root@node ~]# iptables -nvL --table=mangle"):
        marked, w = parse_listing(head + "\n" + body)
        assert {c.table for c in marked.chains} == {"mangle"}, head
        assert not any("assumed" in x for x in w)
    both, w = parse_listing(load("local_legacy_v4_L_n_v.txt") + "\n" + load("local_legacy_v4_nat_L_n_v.txt"))
    assert {(c.table, c.name) for c in both.chains if c.name in ("INPUT", "OUTPUT")} == \
        {("filter", "INPUT"), ("filter", "OUTPUT"), ("nat", "INPUT"), ("nat", "OUTPUT")}


def test_ip6tables_family_and_prompt():
    rs, _ = parse_listing(load("local_legacy_v6_L_n_v.txt"), family=None)
    assert [r.spec for r in rs.rules] == ["-p udp udp dpt:5001 -j DROP", "-s fe80::/10 -j ACCEPT"]
    text = "$ ip6tables -L -v\n" + load("local_legacy_v4_L.txt").split("\n", 1)[1]
    named, _ = parse_listing(text, family=None)
    assert {c.family for c in named.chains} == {"ipv6"}


def test_every_skipped_line_is_warned():
    rs, warnings = parse_listing(load("calico-8243_L_v_n_midchain.txt"))
    # the paste starts at a column header whose Chain line was cut: its 8 rows are skipped, each warned
    assert sum("outside any chain" in w for w in warnings) == 8
    assert [c.name for c in rs.chains] == ["cali-tw-azv58948d172f9"] and rs.rules == ()
    fenced, w2 = parse_listing(load("kuberouter_kube-router-683_L_n_ln.txt"))
    # "```Chain INPUT ...": output glued to the fence is still read
    assert [r.target for r in fenced.rules] == ["KUBE-ROUTER-SERVICES", "KUBE-FIREWALL",
                                                "KUBE-POD-FW-CWP3Q55X3ZOLYGTR"]
    assert "match-set kube-router-service-ips dst" in fenced.rules[0].spec


LINE = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "Chain INPUT (policy ACCEPT 12 packets, 3K bytes)", "Chain X (2 references)", "Chain Y (policy DROP)",
        " pkts bytes target     prot opt in     out     source               destination",
        "num   pkts bytes target     prot opt in     out     source               destination",
        "target     prot opt source               destination",
        "   10   600 ACCEPT     all  --  *      *       0.0.0.0/0            0.0.0.0/0",
        "    0     0            tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            tcp dpt:22",
        "1    KUBE-X  all  --  0.0.0.0/0  0.0.0.0/0  /* c */", "ACCEPT     ipencap--  anywhere  anywhere",
        " 12Z 3Q DROP all -- * * a b", "Chain (", "$ iptables -t nat -L -n -v", "```", "...", "# Table: raw",
        "   5K   1G X  all  --  *  *  ::/0  ::/0  [goto] /* a */", "  1 2 3",
        "Chain INPUT (policy ACCEPT 1 packets, 2XB bytes)",
    ]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_never_crashes(lines):
    rs, warnings = parse_listing("\n".join(lines), family=None)
    assert len(warnings) <= MAX_WARNINGS + 1
    for r in (*rs.chains, *rs.rules):
        assert r.packets >= 0 and r.bytes >= 0
    costs_by_table(rs)


def test_not_text_is_a_warning():
    rs, warnings = parse_listing(None)  # type: ignore[arg-type]
    assert rs.rules == () and warnings


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([r[0] for r in REAL]), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 120)),
                                                     max_size=8))
def test_fuzz_mutated_real_listings(name, cuts):
    lines = load(name).splitlines()
    for at, width in cuts:
        i = at % len(lines)
        lines[i] = lines[i][:width] + lines[(i + 1) % len(lines)][width:]   # torn and glued lines
    rs, warnings = parse_listing("\n".join(lines), family=None)
    assert len(warnings) <= MAX_WARNINGS + 1
    costs_by_table(rs)

"""`ipset save` / `ipset list` (this machine's captures and public pastes) read into IpSet records."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.base import MAX_WARNINGS
from cnitrace.collectors.ipset.parse import IpSet, parse_save

FIX = Path(__file__).parent.parent / "fixtures" / "ipset"


def load(name: str) -> str:
    body = (FIX / name).read_text(encoding="utf-8")
    assert body.startswith("# provenance: "), f"{name} lacks its provenance header"
    return body


def sets(name: str) -> dict[str, IpSet]:
    return {s.name: s for s in parse_save(load(name)).records}


def test_save_and_list_of_one_node_agree():
    saved, listed = sets("local_ipset_save.txt"), sets("local_ipset_list.txt")
    assert list(saved) == list(listed) == [
        "KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP", "KUBE-6-LOAD-BALANCER-SOURCE-CID",
        "kube-router-pod-subnets", "inet6:kube-router-svip", "cnit-lo", "weave-ns"]
    for name, s in saved.items():
        li = listed[name]
        assert (s.type, s.family, s.maxelem, s.hashsize, s.members, s.capacity, s.range, s.timeout, s.options,
                s.packets, s.bytes) == (li.type, li.family, li.maxelem, li.hashsize, li.members, li.capacity,
                                        li.range, li.timeout, li.options, li.packets, li.bytes), name
        # only the listing declares a count and knows who references the set
        assert s.entries is None and s.references is None
        assert li.entries == li.members and li.references is not None and li.memory
    assert parse_save(load("local_ipset_save.txt")).warnings == ()
    assert parse_save(load("local_ipset_list.txt")).warnings == ()


def test_kube_proxy_and_kube_router_set_shapes():
    s = sets("local_ipset_save.txt")
    assert (s["KUBE-CLUSTER-IP"].type, s["KUBE-CLUSTER-IP"].members) == ("hash:ip,port", 4)
    assert (s["KUBE-NODE-PORT-TCP"].family, s["KUBE-NODE-PORT-TCP"].range) == (None, "0-65535")
    assert s["KUBE-6-LOAD-BALANCER-SOURCE-CID"].family == "inet6" and s["KUBE-6-LOAD-BALANCER-SOURCE-CID"].members == 0
    assert (s["kube-router-pod-subnets"].timeout, s["kube-router-pod-subnets"].members) == (0, 2)
    assert (s["weave-ns"].type, s["weave-ns"].capacity, s["weave-ns"].options) == ("list:set", 8, ("comment",))


def test_counters_option_sums_member_counters():
    lo = sets("local_ipset_list.txt")["cnit-lo"]
    assert lo.has_counters and (lo.packets, lo.bytes) == (50, 4600)
    assert lo.counters == {"members": 2, "packets": 50, "bytes": 4600}
    assert lo.references == 2            # the iptables rule and the list:set that holds it
    plain = sets("local_ipset_list.txt")["KUBE-CLUSTER-IP"]
    assert not plain.has_counters and plain.packets is None and plain.counters == {"members": 4}
    assert lo.key == ("ipset", "cnit-lo")


def test_terse_listing_declares_entries_without_members():
    t = sets("local_ipset_list_t.txt")
    assert t["KUBE-CLUSTER-IP"].entries == 4 and t["KUBE-CLUSTER-IP"].members is None
    assert t["KUBE-CLUSTER-IP"].counters == {"members": 4}      # the declared count stands in
    assert parse_save(load("local_ipset_list_t.txt")).warnings == ()


def test_truncated_listing_after_a_prompt_with_a_stray_backtick():
    p = parse_save(load("sealos-2108_list_prompt.txt"))
    (s,) = p.records
    assert (s.name, s.type, s.entries, s.members, s.references) == ("KUBE-CLUSTER-IP", "hash:ip,port", 143, 51, 2)
    assert p.warnings == ("set 'KUBE-CLUSTER-IP' lists 51 of its 143 entries (truncated?)",)


def test_ipvs_dual_stack_listing_cut_mid_header():
    p = parse_save(load("kube-proxy-13_list_ipvs_v6.txt"))
    s = {x.name: x for x in p.records}
    assert len(s) == 8
    assert (s["KUBE-HEALTH-CHECK-NODE-PORT"].type, s["KUBE-HEALTH-CHECK-NODE-PORT"].references) == ("bitmap:port", 1)
    assert {x.family for n, x in s.items() if n.startswith("KUBE-6-") and x.maxelem} == {"inet6"}
    assert all(x.entries == 0 for n, x in s.items() if n != "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS")
    assert p.warnings == ("line 69: option 'family' of set 'KUBE-6-NODE-PORT-LOCAL-SCTP-HAS' without a value",)


def test_weave_list_set_with_punctuated_names():
    (s,) = parse_save(load("weave-3289_list_set_comments.txt")).records
    assert s.name == "weave-!KbcPP7#:Z;q|kV;:5)S@i1Yb" and s.type == "list:set"
    assert (s.capacity, s.entries, s.members, s.options) == (8, 13, 13, ("comment",))


def test_old_ipset_without_entry_count():
    p = parse_save(load("kubernetes-54203_list_old.txt"))
    (s,) = p.records
    assert (s.entries, s.members, s.references, s.memory) == (None, 2, 2, 256) and p.warnings == ()


def test_kube_router_restore_script_applies_swap_flush_destroy():
    p = parse_save(load("kube-router-1685_restore_inet6.txt"))
    s = {x.name: x for x in p.records}
    # destroyed sets are gone; the 10 adds to the TMP set moved to kube-router-svip with the swap
    assert "TMP-3TF2IQ5MKRP6NAJL" in s and s["TMP-3TF2IQ5MKRP6NAJL"].members == 0
    assert s["inet6:kube-router-svip"].members == 10
    assert s["inet6:kube-router-svip-prt"].family == "inet6"
    assert any("ipset.go:225" in w for w in p.warnings)      # the glog line in the middle
    swap = parse_save("create a hash:ip\nadd a 1.1.1.1\ncreate b hash:net family inet6\nswap a b\n").records
    assert {x.name: (x.type, x.members) for x in swap} == {"b": ("hash:ip", 1), "a": ("hash:net", 0)}
    gone = parse_save("create a hash:ip\nadd a 1.1.1.1\ndestroy a\ncreate c bitmap:port range 1-9\n")
    assert [x.name for x in gone.records] == ["c"]
    ren = parse_save("create a hash:ip\nadd a 1.1.1.1\nadd a 1.1.1.2\ndel a 1.1.1.1\nrename a z\n")
    assert [(x.name, x.members) for x in ren.records] == [("z", 1)]


@pytest.mark.parametrize("text,warning", [
    ("add nope 1.2.3.4\n", "member of an undeclared set"),
    ("create s hash:ip maxelem lots\n", "bad maxelem"),
    ("Name: s\nType: hash:ip\nReferences: many\n", "bad References"),
    ("Name: s\nHeader: family inet frobnicate 3\n", "unknown option 'frobnicate'"),
    ("create s hash:ip\nadd s 1.1.1.1 packets x bytes 3\n", "bad packets"),
    ("hello world\n", "unexpected line"),
    ("Name: s\nType: hash:ip\n...\n", "truncated"),
    ("Name: s\nType: hash:ip\nNumber of entries: 3\nMembers:\n1.1.1.1\n[...]\n", "listing truncated at line 6"),
])
def test_malformed_input_warns(text, warning):
    p = parse_save(text)
    assert any(warning in w for w in p.warnings), p.warnings


LINE = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "Name: a", "Name: b", "Type: hash:ip", "Type: list:set", "Header: family inet hashsize 1024 maxelem 65536",
        "Header: size 8 comment", "Header: range 0-65535", "Size in memory: 12", "References: x",
        "Number of entries: 3", "Members:", "10.0.0.1 packets 3 bytes 4", "10.0.0.2 timeout 0", "",
        "create a hash:ip counters", "create b hash:net family inet6 timeout", "add a 1.1.1.1 packets 1 bytes 2",
        "add zz 2.2.2.2", "swap a b", "rename a", "flush", "destroy b", "del a 1.1.1.1", "$ ipset list", "```", "...",
    ]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_fuzz_never_crashes(lines):
    p = parse_save("\n".join(lines))
    assert len(p.warnings) <= MAX_WARNINGS + 1
    for s in p.records:
        assert isinstance(s, IpSet) and (s.members is None or s.members >= 0)
        assert all(v >= 0 for v in s.counters.values())


def test_not_text_is_a_warning():
    assert parse_save(None).warnings  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(p.name for p in FIX.iterdir())), st.integers(0, 5000), st.integers(1, 300))
def test_fuzz_cut_real_listings(name, start, length):
    text = load(name)
    a = start % len(text)
    p = parse_save(text[:a] + text[a + length:])
    assert len(p.warnings) <= MAX_WARNINGS + 1
    assert all(s.members is None or s.members >= 0 for s in p.records)


def test_tilde_prompts_between_two_lists():
    p = parse_save(load("azure-npm-553_list_tilde_prompt.txt"))
    assert p.warnings == ()
    assert [(s.name, s.type, s.members) for s in p.records] == [
        ("azure-npm-671120875", "hash:ip,port", 1), ("azure-npm-420423296", "hash:net", 2)]

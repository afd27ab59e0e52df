"""bpftool's plain-text output (what people paste) against the JSON of the same instant and real pastes."""

from __future__ import annotations


from hypothesis import given, settings, strategies as st

from tests.support.fixtures import fixture
from cnitrace.collectors.bpfprog import parse as js
from cnitrace.collectors.bpfprog import text as t

def fx(name: str) -> str:
    return fixture("bpf", name)


def test_prog_show_text_equals_json_of_the_same_instant():
    r = t.parse_prog_show_text(fx("host-prog-show.txt"))
    assert r.warnings == () and r == js.parse_prog_show(fx("host-prog-show-same.json"))
    cls, egr, xdp = r.records
    assert (cls.type, cls.name, cls.run_cnt, cls.run_time_ns) == ("sched_cls", "cnit_h2_cls", 16, 10758)
    assert cls.map_ids == (13244, 13243) and egr.map_ids == (13243,)
    assert (xdp.type, xdp.tag, xdp.run_cnt) == ("xdp", "6abafccc2cce1923", 19)


def test_map_show_text_equals_json_of_the_same_instant():
    r = t.parse_map_show_text(fx("host-map-show.txt"))
    assert r.warnings == () and r == js.parse_map_show(fx("host-map-show-same.json"))
    assert [(m.type, m.name, m.max_entries) for m in r.records] == [("array", "cnit_h2_arr", 4), ("hash", "cnit_h2_hash", 1024)]


def test_net_show_text_equals_json_of_the_same_instant():
    r = t.parse_net_show_text(fx("host-net-show.txt"), "ns1")
    assert r.warnings == () and r == js.parse_net_show(fx("host-net-show-same.json"), "ns1")
    assert [(a.kind, a.hook, a.prog_id) for a in r.records] == [
        ("xdp", "generic", 20631), ("tc", "ingress", 20629), ("tc", "egress", 20630)]


def test_unnamed_programs_and_maps_from_an_issue():
    progs = t.parse_prog_show_text(fx("cilium-11517-prog-show.txt"))
    assert progs.warnings == () and [p.id for p in progs.records] == [2, 3, 4, 5, 6, 7]
    assert all(p.name == "" and p.type == "cgroup_skb" and p.run_cnt == 0 for p in progs.records)
    assert progs.records[5].map_ids == (6, 7)
    maps = t.parse_map_show_text(fx("cilium-11517-map-show.txt"))
    assert maps.warnings == () and [(m.id, m.type, m.name, m.max_entries) for m in maps.records] == [
        (2, "lpm_trie", "", 1), (3, "lpm_trie", "", 1), (4, "lpm_trie", "", 1)]
    (one,) = t.parse_prog_show_text(fx("cilium-16736-prog-show-id.txt")).records  # prompt, fences, 8-space margin
    assert (one.id, one.tag, one.map_ids) == (1384, "8ce0e44a9589a7fc", (91, 125))


def test_net_show_older_cilium_names_and_tcx_links():
    old = t.parse_net_show_text(fx("cilium-14895-net-show.txt"))
    assert old.warnings == () and len(old.records) == 12
    assert old.records[0] == js.Attachment("tc", "eth0", "ingress", 221, "bpf_network.o:[from-network]")
    assert sum(a.hook == "egress" for a in old.records) == 5
    tcx = t.parse_net_show_text(fx("cilium-41393-net-show-tcx.txt"))
    assert [(a.target, a.hook, a.prog_id, a.prog_name) for a in tcx.records] == [
        ("lan", "ingress", 680, "cil_from_netdev"), ("lan", "egress", 688, "cil_to_netdev")]
    assert len(tcx.warnings) == 1 and "elided" in tcx.warnings[0]  # '[...]' is reported, not parsed


def test_crlf_and_indentation_lost_in_a_paste():
    body = fx("host-prog-show.txt").split("\n", 1)[1]
    flat = "\r\n".join(line.strip() for line in body.splitlines())
    assert t.parse_prog_show_text(flat) == t.parse_prog_show_text(fx("host-prog-show.txt"))


def test_netfilter_and_flow_dissector_sections():
    text = "xdp:\n\ntc:\n\nflow_dissector:\nid 42\n\nnetfilter:\n\tip prerouting prio -128 prog_id 19\n"
    r = t.parse_net_show_text(text)
    assert [(a.kind, a.target, a.hook, a.prog_id) for a in r.records] == [
        ("flow_dissector", "netns", "", 42), ("netfilter", "ip prerouting", "prio -128", 19)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_random_text(s):
    for fn in (t.parse_prog_show_text, t.parse_map_show_text, t.parse_net_show_text):
        assert len(fn(s).warnings) <= 51


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["host-prog-show.txt", "host-map-show.txt", "host-net-show.txt", "cilium-14895-net-show.txt"]),
       st.integers(0, 1500), st.text(alphabet="0123456789:() \t\n\rBabcdeimnprstx_/,[].", max_size=30))
def test_fuzz_mutated_real_dumps(name, cut, junk):
    text = fx(name)
    mutated = text[:cut] + junk + text[cut:]
    for fn in (t.parse_prog_show_text, t.parse_map_show_text, t.parse_net_show_text):
        assert len(fn(mutated).warnings) <= 51

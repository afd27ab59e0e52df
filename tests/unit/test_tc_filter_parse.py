"""`tc filter show` text: this host's BPF/u32 filters against tc's JSON, real multi-device and flower pastes."""

from __future__ import annotations


from hypothesis import given, settings, strategies as st

from tests.support.fixtures import fixture
from cnitrace.collectors.bpfprog import parse as js
from cnitrace.collectors.bpfprog import tc

def fx(name: str) -> str:
    return fixture("bpf", name)


def test_bpf_and_u32_filters_at_one_hook():
    r = tc.parse_tc_filters_text(fx("host-tc-filter-ingress.txt"), "cnit-h2-a", "ingress", "ns1")
    assert r.warnings == () and tc.filter_kinds(r.records) == {"u32": 1, "bpf": 1}
    u32, bpf = r.records
    assert (u32.pref, u32.handle, u32.prog_id, u32.in_hw) == (49, "800::800", None, False)  # hash-table lines skipped
    assert (bpf.pref, bpf.prog_id, bpf.prog_name, bpf.tag, bpf.direct_action) == (
        49152, 20629, "cnit_h2_cls", "7e8f585cd9559679", True)
    att = tc.parse_tc_filter_show(fx("host-tc-filter-ingress.txt"), "cnit-h2-a", "ingress", "ns1")
    assert att == js.parse_tc_filters(fx("host-tc-filter-ingress-same.json"), "cnit-h2-a", "ingress", "ns1")


def test_details_flag_and_stats_forms():
    plain = tc.parse_tc_filter_show(fx("host-tc-filter-egress.txt"), "cnit-h2-a", "egress").records
    detailed = tc.parse_tc_filter_show(fx("host-tc-s-d-filter-egress.txt"), "cnit-h2-a", "egress").records
    assert plain == detailed and [(a.prog_id, a.hook) for a in plain] == [(20630, "egress")]


def test_several_devices_each_after_its_command_or_heading():
    ing = fx("host-tc-filter-ingress.txt").split("\n", 1)[1]
    egr = fx("host-tc-filter-egress.txt").split("\n", 1)[1]
    pasted = f"$ tc filter show dev cnit-h2-a ingress\n{ing}# dev cnit-h2-a egress\n{egr}"
    r = tc.parse_tc_filter_show(pasted)
    assert r.warnings == () and [(a.target, a.hook, a.prog_id) for a in r.records] == [
        ("cnit-h2-a", "ingress", 20629), ("cnit-h2-a", "egress", 20630)]
    cil = tc.parse_tc_filter_show(fx("cilium-17468-tc-filter-prompts.txt"))
    assert cil.records == (js.Attachment("tc", "lxc5869b5857a3d", "ingress", 15843, "bpf_lxc.o:[from-container]"),)
    assert cil.warnings == ()


def test_flower_filters_are_counted_not_attributed():
    nl = tc.parse_tc_filters_text(fx("netlink-809-tc-flower-prompt.txt"))
    (f,) = nl.records
    assert (f.iface, f.hook, f.kind, f.pref, f.in_hw) == ("foo", "ingress", "flower", 1, False)
    assert tc.parse_tc_filter_show(fx("netlink-809-tc-flower-prompt.txt")).records == ()
    hw = tc.parse_tc_filters_text(fx("lnst-341-tc-s-flower-hw.txt"), "p5p1", "ingress")
    assert hw.warnings == () and [(x.pref, x.in_hw, x.packets, x.bytes) for x in hw.records] == [
        (49150, True, 1, 60), (49151, True, None, None)]  # 'Sent software/hardware' are not added twice
    assert hw.records[0].counters == {"packets": 1, "bytes": 60}
    cut = tc.parse_tc_filters_text(fx("go-tc-21-tc-s-flower.txt"))
    assert [(x.kind, x.packets) for x in cut.records] == [("flower", 0)]
    assert len(cut.warnings) == 1 and "device or hook" in cut.warnings[0]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_random_text(s):
    assert len(tc.parse_tc_filter_show(s).warnings) <= 52


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["host-tc-filter-ingress.txt", "cilium-17468-tc-filter-prompts.txt", "lnst-341-tc-s-flower-hw.txt"]),
       st.integers(0, 1200), st.text(alphabet="filter protocol pref bpf chain handle id 0x123:#$\n\t", max_size=40))
def test_fuzz_mutated_real_dumps(name, cut, junk):
    text = fx(name)
    r = tc.parse_tc_filters_text(text[:cut] + junk + text[cut:])
    assert len(r.warnings) <= 51
    tc.filter_kinds(r.records)


def test_old_iproute2_filter_lines_without_chain():
    # iproute2 before 4.13 prints no 'chain N' and no program id
    r = tc.parse_tc_filters_text(fx("netdev11-cls-bpf-tc-filter-show-old.txt"))
    (f,) = r.records
    assert (f.iface, f.hook, f.kind, f.pref, f.chain, f.handle) == ("em1", "egress", "bpf", 49152, 0, "0x1")
    assert f.prog_id is None and f.prog_name == "foo.o:[p2]" and f.direct_action
    assert not any("not a tc filter line" in w for w in r.warnings)

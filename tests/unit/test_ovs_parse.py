"""OVS parsers against real dumps (this host's private OVS, Antrea docs, a kernel-datapath host)."""

from __future__ import annotations


import pytest
from hypothesis import given, settings, strategies as st

from tests.support.fixtures import FIXTURES, fixture
from cnitrace.collectors.base import Snapshot, delta
from cnitrace.collectors.ovs import parse as p

def fx(name: str) -> str:
    return fixture("ovs", name)


def test_dump_flows_numeric_tables():
    r = p.parse_dump_flows(fx("host-dump-flows.txt"), "cnitbr")
    assert r.warnings == ()
    assert len(r.records) == 6
    f = r.records[2]
    assert (f.table, f.priority, f.match, f.actions) == (10, 100, "ip,nw_dst=10.99.0.2", "output:2")
    assert (f.n_packets, f.n_bytes, f.cookie, f.duration_s) == (7, 364, 0, 12.497)
    assert r.records[5].match == "" and r.records[5].actions == "drop"
    assert sum(x.n_packets for x in r.records if x.table == 0) == 11


def test_dump_flows_named_tables_match_numeric_dump():
    named = p.parse_dump_flows(fx("host-dump-flows-names.txt"), "b").records
    numeric = p.parse_dump_flows(fx("host-dump-flows.txt"), "b").records
    assert [x.table for x in named] == ["Classifier"] * 2 + ["Forward"] * 4
    assert [x.n_packets for x in named] == [x.n_packets for x in numeric]
    assert named[0].match == "in_port=cnitv1h" and named[0].actions == "resubmit(,Forward)"


def test_antrea_flows_parse_and_structure():
    r = p.parse_dump_flows(fx("antrea-antctl-get-of.txt"), "br-int")
    assert r.warnings == ()
    assert len(r.records) == 17
    first = r.records[0]
    assert (first.table, first.priority, first.n_packets, first.n_bytes) == ("classification", 190, 513122, 42615080)
    conj = [x for x in r.records if x.table == "IngressRule" and "conj_id=1" in x.match][0]
    s = conj.structured(table_ids={"IngressMetric": 101})
    assert s.match["conj_id"] == 1
    ct = [a for a in s.actions if "ct" in a][0]["ct"]
    assert ct["table"] == 101 and ct["zone"] == 65520
    with pytest.raises(ValueError, match="python-ovs"):
        conj.structured()  # named table without a mapping: a clear error, not a ParseError
    rule = [x for x in r.records if x.match == "ip,reg1=0x5" and x.table == "IngressRule"][0]
    assert [a["conjunction"] for a in rule.structured().actions] == [
        {"id": 2, "k": 2, "n": 3}, {"id": 1, "k": 2, "n": 3}]


def test_openflow15_flags_without_commas():
    r = p.parse_dump_flows(fx("host-dump-flows-of15.txt"), "b")
    assert r.warnings == ()
    assert [(f.table, f.priority, f.match, f.n_packets) for f in r.records] == [
        (0, 20, "udp,in_port=1,tp_dst=9999", 5), (0, 0, "", 0), (10, 100, "udp,nw_dst=10.99.0.2", 5),
        (10, 0, "", 0), (20, 5, "udp", 0)]
    assert r.records[-1].cookie == 0x12
    # the same flows, same keys, as the OpenFlow 1.0 dump: deltas work across both formats
    of10 = {f.key for f in p.parse_dump_flows(fx("host-dump-flows.txt"), "b").records}
    assert len(of10) == 6


def test_dump_tables_names_and_counters():
    r = p.parse_dump_tables(fx("host-dump-tables.txt"), "cnitbr")
    t = {x.table: x for x in r.records}
    assert t[0].name == "Classifier" and (t[0].active, t[0].lookup, t[0].matched) == (2, 21, 21)
    assert t[10].name == "Forward" and (t[10].lookup, t[10].matched) == (11, 11)
    assert p.table_names(r.records) == {0: "Classifier", 10: "Forward"}


def test_dump_tables_ditto_runs_carry_the_previous_tables_counters():
    """Tables 0->1->2->3 each walked by every packet: OVS prints table 0 and 'tables 1...3: ditto'.
    Dropping the ditto run would lose three tables' lookups."""
    r = p.parse_dump_tables(fx("host-dump-tables-ditto.txt"), "br-int")
    t = {x.table: x for x in r.records}
    assert r.warnings == () and len(t) == 254 and sorted(t) == list(range(254))
    assert [(t[i].active, t[i].lookup, t[i].matched) for i in range(4)] == [(1, 3, 3)] * 4
    assert (t[4].lookup, t[5].lookup, t[253].lookup) == (0, 0, 0)     # 'tables 5...253: ditto' of table 4
    # the older fixture: the ditto runs follow all-zero tables, and the named ones keep their names
    old = {x.table: x for x in p.parse_dump_tables(fx("host-dump-tables.txt"), "b").records}
    assert old[9].lookup == 0 and old[12].name is None and old[10].name == "Forward"


def test_table_feature_names():
    assert p.parse_table_feature_names(fx("host-dump-table-features.txt")) == {10: "Forward"}
    assert p.parse_table_feature_names(fx("host-dump-tables.txt")) == {0: "Classifier", 10: "Forward"}


def test_megaflows_plain_and_verbose_agree():
    plain = p.parse_dpctl_dump_flows(fx("host-dpctl-dump-flows.txt"), "netdev@ovs-netdev")
    verbose = p.parse_dpctl_dump_flows(fx("host-dpctl-dump-flows-m.txt"), "netdev@ovs-netdev")
    assert plain.warnings == verbose.warnings == ()
    assert len(plain.records) == len(verbose.records) == 3
    udp = [m for m in plain.records if "dst=10.99.0.2" in m.match][0]
    assert (udp.packets, udp.bytes, udp.actions) == (6, 312, "3")
    assert udp.mask == "recirc_id(*),in_port(*),packet_type(ns=*,id=*),eth_type(*),ipv4(dst=*,frag=*)"
    vudp = [m for m in verbose.records if "dst=10.99.0.2" in m.match][0]
    assert vudp.ufid == "39284fdb-88b0-4e8c-a5cc-2e9161ffb66c" and vudp.actions == "cnitv2h"
    assert "src=*/0.0.0.0" in vudp.mask  # a wildcarded field keeps its mask


def test_dpif_and_dpctl_show():
    dps, ports = p.parse_dpif_show(fx("host-dpif-show.txt"))
    assert [(d.name, d.hit, d.missed) for d in dps.records] == [("netdev@ovs-netdev", 14, 7)]
    assert [(x.bridge, x.name, x.ofport, x.dp_port, x.type) for x in ports] == [
        ("cnitbr", "cnitbr", 65534, 1, "tap"), ("cnitbr", "cnitv1h", 1, 2, "system"),
        ("cnitbr", "cnitv2h", 2, 3, "system")]
    show = p.parse_dpctl_show(fx("host-dpctl-show.txt"))
    d = show.records[0]
    assert (d.hit, d.missed, d.lost, d.flows) == (14, 7, 0, 3)


def test_kernel_datapath_dpctl_show_with_masks():
    (d,) = p.parse_dpctl_show(fx("kernel-dpctl-show-ovn.txt")).records
    assert (d.name, d.hit, d.missed, d.lost, d.flows, d.masks_hit, d.masks_total) == (
        "system@ovs-system", 1994, 56, 0, 6, 2340, 4)
    assert d.counters["masks_hit"] == 2340
    (m,) = p.parse_dpctl_dump_flows(fx("kernel-dpctl-dump-flows-ovn.txt"), "system@ovs-system").records
    assert (m.packets, m.bytes, m.actions) == (171, 16758, "ct(zone=11),recirc(0xc)")
    assert m.mask == "recirc_id(*),in_port(*),eth(src=*,dst=*),eth_type(*),ipv4(dst=*/255.255.255.252,frag=*)"


def test_upcall_show_netdev_and_kernel():
    r = p.parse_upcall_show(fx("host-upcall-show.txt")).records[0]
    assert (r.datapath, r.flows_current, r.flow_limit, r.dump_duration_ms) == ("netdev@ovs-netdev", 3, 10000, 1)
    assert r.revalidator_keys == (3,)
    k = p.parse_upcall_show(fx("kernel-upcall-show.txt")).records[0]
    assert (k.datapath, k.flows_current, k.flows_avg, k.flows_max, k.flow_limit) == (
        "system@ovs-system", 2, 164, 16622, 200000)


def test_coverage_counters():
    r = p.parse_coverage_show(fx("host-coverage-show.txt"))
    assert r.warnings == ()
    c = {x.name: x.total for x in r.records}
    assert c["bridge_reconfigure"] == 13
    assert len(c) > 20


def test_interfaces_map_ofport_to_pod():
    r = p.parse_vsctl_interfaces(fx("host-vsctl-interface.json"))
    by = {i.name: i for i in r.records}
    assert by["cnitv1h"].ofport == 1 and by["cnitv1h"].pod == "default/pod1"
    assert by["cnitbr"].type == "internal" and by["cnitbr"].pod is None


def test_flow_delta_and_reset():
    a = p.parse_dump_flows(fx("host-dump-flows.txt"), "b").records
    bumped = tuple(f._replace(n_packets=f.n_packets + 5, n_bytes=f.n_bytes + 500)
                   if f.table == 10 and f.priority == 100 and f.match.endswith("10.99.0.2") else f for f in a)
    d = delta(Snapshot("ovs", a), Snapshot("ovs", bumped))
    assert d.get(("flow", "b", "10", 100, "ip,nw_dst=10.99.0.2"), "packets") == 5
    reset = tuple(f._replace(n_packets=1, n_bytes=60) for f in a)
    d2 = delta(Snapshot("ovs", a), Snapshot("ovs", reset))
    assert all(v >= 0 for ch in d2.changes.values() for v in ch.values())
    assert d2.resets and any("reset" in w for w in d2.warnings)


def test_fast_and_general_paths_agree_on_every_fixture_line():
    seen = 0
    for f in (FIXTURES / "ovs").glob("*dump-flows*.txt"):
        for line in f.read_text().splitlines()[1:]:
            fast = p._fast_flow(line, "b")
            if fast is not None:
                seen += 1
                assert fast == p._slow_flow(line.strip(), "b"), line
    assert seen >= 15


def test_malformed_lines_warn_and_keep_the_rest():
    text = fx("host-dump-flows.txt").splitlines()
    broken = "\n".join(text[:3] + [" cookie=0x0, table=0, n_packets=x, n_bytes=1, priority=1 actions=drop",
                                   " totally not a flow", text[3][:40]] + text[4:])
    r = p.parse_dump_flows(broken, "b")
    assert len(r.records) == 5 and len(r.warnings) == 3


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_every_parser_never_raises(s):
    for fn in (p.parse_dump_flows, p.parse_dump_tables, p.parse_dpctl_dump_flows, p.parse_dpctl_show,
               p.parse_upcall_show, p.parse_coverage_show, p.parse_vsctl_interfaces):
        fn(s)
    p.parse_dpif_show(s)
    p.parse_table_feature_names(s)
    p.mask_shape(s)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**64), min_size=2, max_size=2), st.sampled_from(["0", "Classifier", "ü-table"]),
       st.text(alphabet="abcxyz_=,.:0123456789()", max_size=40))
def test_fuzz_flow_lines_roundtrip(counters, table, match):
    line = f" cookie=0x1, duration=1.5s, table={table}, n_packets={counters[0]}, n_bytes={counters[1]}, " \
           f"priority=7,{match} actions=drop"
    r = p.parse_dump_flows(line, "b")
    if r.records:
        f = r.records[0]
        assert (f.n_packets, f.n_bytes) == tuple(counters)
    else:
        assert r.warnings


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2000), st.sampled_from(["", "ü", "\x00", "actions=", ", n_packets=-1"]))
def test_fuzz_truncated_real_dump_keeps_complete_lines(cut, junk):
    text = fx("antrea-antctl-get-of.txt")
    body = text.split("\n", 1)[1]
    cut = min(cut, len(body))
    r = p.parse_dump_flows(body[:cut] + junk)
    complete = body[:cut].count("\n")  # lines that ended before the cut are intact
    assert len(r.records) >= complete
    assert len(r.records) <= len(body.splitlines())


# --- dumps without counters, other OpenFlow versions, pastes, ports (issue #13) -----------------

def _structure(flows):
    return [(f.table, f.priority, f.match, f.actions, f.cookie) for f in flows]


def test_no_stats_flows_parse_like_the_dump_with_counters():
    """`--no-stats` drops duration/n_packets/n_bytes and, for table 0, table=: the same 7 flows."""
    bare = p.parse_dump_flows(fx("host-dump-flows-no-stats.txt"), "b")
    full = p.parse_dump_flows(fx("host-dump-flows-cookies.txt"), "b")
    assert len(bare.records) == 7 and len(bare.warnings) == 1 and "not zero" in bare.warnings[0]
    assert full.warnings == () and all(f.stats for f in full.records)
    assert sorted(_structure(bare.records)) == sorted(_structure(full.records))
    assert {f.key for f in bare.records} == {f.key for f in full.records}
    assert all(not f.stats and f.counters == {} for f in bare.records)
    idle = [f for f in bare.records if f.match == "in_port=2"][0]
    assert (idle.table, idle.cookie, idle.actions) == (0, 0x1234, "resubmit(,10)")  # idle_timeout= is not match


def test_named_tables_openflow15_and_13_with_flags():
    names = p.parse_dump_flows(fx("host-dump-flows-of15-no-stats-names.txt"), "b").records
    assert [f.table for f in names] == ["Classifier"] * 3 + ["SpoofGuard"] * 4
    ct = [f for f in names if f.priority == 200][0]
    assert (ct.match, ct.cookie, ct.actions) == ("udp,tp_dst=9999", 0xA5A5, 'ct(commit,zone=7),output:"cnit-h2-v2h"')
    imp = [f for f in names if f.match == "ip,nw_dst=10.98.0.2"][0]
    assert imp.priority == 100  # importance=7 is flow info, not match
    counted = p.parse_dump_flows(fx("host-dump-flows-of15-names.txt"), "b")
    assert counted.warnings == () and {f.key for f in counted.records} == {f.key for f in names}
    of13 = p.parse_dump_flows(fx("host-dump-flows-of13.txt"), "b")
    of10 = p.parse_dump_flows(fx("host-dump-flows-cookies.txt"), "b")
    assert of13.warnings == () and [(f.key, f.n_packets) for f in of13.records] == [
        (f.key, f.n_packets) for f in of10.records]
    assert sum(f.n_packets for f in of13.records if f.table == 10) == 14
    bare13 = p.parse_dump_flows(fx("host-dump-flows-of13-no-stats.txt"), "b").records
    assert sorted(_structure(bare13)) == sorted(_structure(of13.records))


def test_antrea_doc_flows_without_counters():
    r = p.parse_dump_flows(fx("antrea-pipeline-doc-flows.txt"), "br-int")
    assert len(r.records) == 33 and not any(f.stats for f in r.records)
    assert r.records[3].table == "Classifier" and r.records[3].actions.endswith("goto_table:SpoofGuard")
    assert len(r.warnings) == 1


def test_pasted_dump_with_prompts_and_glued_reply_header():
    r = p.parse_dump_flows(fx("ovs-145-dump-flows-of10-of13.txt"), "br-int-R")
    assert r.warnings == ()
    assert [(f.table, f.n_packets, f.actions) for f in r.records] == [
        (50, 3361843122, "drop"), (50, 264937817, "group:10")]
    line = fx("ovs-145-dump-flows-of10-of13.txt").splitlines()[3]
    (glued,) = p.parse_dump_flows("NXST_FLOW reply (xid=0x4): " + line + "\r\n", "br-int-R").records
    assert glued == r.records[0]


def test_attribution_does_not_count_flows_without_counters():
    from cnitrace.attribution.datapath import ovs_work
    from cnitrace.collectors.base import Snapshot
    table = p.OfTable("b", 10, "SpoofGuard", 4, 0, 0)
    busy = p.OfTable("b", 10, "SpoofGuard", 4, 14, 14)
    bare = p.parse_dump_flows(fx("host-dump-flows-no-stats.txt"), "b").records
    (work,) = ovs_work(Snapshot("ovs", (table, *bare)), Snapshot("ovs", (busy, *bare)))
    assert work.lookups == 14 and work.top_flows == () and work.subtables == 3
    full = p.parse_dump_flows(fx("host-dump-flows-cookies.txt"), "b").records
    (work,) = ovs_work(Snapshot("ovs", (table, *bare)), Snapshot("ovs", (busy, *full)))
    assert work.top_flows == ()  # before had no counters: a delta from 'unknown' is not a count
    zero = tuple(f._replace(n_packets=0, n_bytes=0) for f in full)
    (work,) = ovs_work(Snapshot("ovs", (table, *zero)), Snapshot("ovs", (busy, *full)))
    assert sum(h.packets for h in work.top_flows) == 14


def test_dpctl_show_ports_kernel_vxlan_and_netdev():
    doc = fx("openstack-notes-ovs-dpctl-show-vxlan.txt")
    (dp,) = p.parse_dpctl_show(doc).records
    assert (dp.name, dp.hit, dp.missed, dp.masks_hit) == ("system@ovs-system", 765, 147, 1870)
    ports = p.parse_dpctl_show_ports(doc)
    assert ports.warnings == () and [x.dp_port for x in ports.records] == list(range(9))
    vx = ports.records[7]
    assert (vx.name, vx.type, vx.config, vx.datapath) == ("vxlan_sys_4789", "vxlan", "packet_type=ptap", dp.name)
    assert [x.type for x in ports.records].count("internal") == 5 and ports.records[2].type == "system"
    stats = p.parse_dpctl_show_ports(fx("host-dpctl-show-s.txt"))
    assert stats.warnings == () and [(x.dp_port, x.name, x.type) for x in stats.records] == [
        (0, "ovs-netdev", "tap"), (1, "cnit-h2-br", "tap"), (2, "cnit-h2-v1h", "system"), (3, "cnit-h2-v2h", "system")]
    # dpctl/show and dpif/show of one capture agree on datapath port numbers
    _, dpif = p.parse_dpif_show(fx("host-dpif-show.txt"))
    dpctl = p.parse_dpctl_show_ports(fx("host-dpctl-show.txt")).records
    assert {x.name: x.dp_port for x in dpif} == {x.name: x.dp_port for x in dpctl if x.name in {y.name for y in dpif}}


def test_megaflows_offloaded_to_tc_and_with_tcp_flags():
    r = p.parse_dpctl_dump_flows(fx("ovn-173-dpctl-dump-flows-m-offloaded.txt"), "system@ovs-system")
    (m,) = r.records
    assert (m.packets, m.bytes, m.dp, m.offloaded) == (36, 3024, "tc", True)
    assert m.ufid == "25030bd6-d82f-473f-b8b3-40aebe04e33a" and m.actions.endswith("ct(zone=1,nat),recirc(0x21)")
    assert len(r.warnings) == 1 and "when 172.31" in r.warnings[0]  # the prose line, not the prompt
    f = p.parse_dpctl_dump_flows(fx("ovs-issues-248-dpctl-dump-flows-flags.txt"))
    assert f.warnings == () and [(x.packets, x.actions) for x in f.records] == [
        (18588510, "set(tunnel(tun_id=0x2,src=192.168.4.13,dst=192.168.4.12,ttl=64,tp_dst=4792,flags(df|key))),"
                   "3,36,push_vlan(vid=2,pcp=0),12,pop_vlan,33,21,7"), (8, "11")]
    assert all(not x.offloaded for x in f.records)
    assert {x.dp for x in p.parse_dpctl_dump_flows(fx("host-dpctl-dump-flows-m.txt")).records} == {"ovs"}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["host-dump-flows-of15-no-stats-names.txt", "ovs-145-dump-flows-of10-of13.txt",
                        "openstack-notes-ovs-dpctl-show-vxlan.txt", "ovn-173-dpctl-dump-flows-m-offloaded.txt"]),
       st.integers(0, 3000), st.text(alphabet="=,() :\r\n\tactionsprioty0x1.\"", max_size=30))
def test_fuzz_mutated_real_dumps_never_raise(name, cut, junk):
    text = fx(name)
    mutated = text[:cut] + junk + text[cut:]
    for fn in (p.parse_dump_flows, p.parse_dpctl_show_ports, p.parse_dpctl_show, p.parse_dpctl_dump_flows):
        assert len(fn(mutated).warnings) <= 51


def test_appctl_bridge_dump_flows_glues_actions_to_the_match():
    # ovs-appctl bridge/dump-flows: 'priority=0,actions=NORMAL' (no space) and hidden 'table_id=254' flows
    r = p.parse_dump_flows(fx("ovs-pr295-appctl-bridge-dump-flows.txt"), "br0")
    assert r.warnings == () and len(r.records) == 5
    first, hidden = r.records[0], r.records[1]
    assert (first.table, first.priority, first.actions, first.n_packets) == (0, 0, "NORMAL", 214752)
    assert (hidden.table, hidden.priority, hidden.match, hidden.actions) == (254, 2, "recirc_id=0", "drop")
    assert [f.table for f in r.records].count(254) == 4


def test_flows_quoted_in_a_log_line_split_on_the_escaped_newline():
    r = p.parse_dump_flows(fx("ovnk-863-dump-flows-escaped-log.txt"), "br-int")
    assert len(r.records) == 7
    assert [f.table for f in r.records] == [41] * 6 + [42]
    assert r.records[0].actions == "resubmit(,42)"
    assert r.records[-1].actions == "ct(table=43,zone=NXM_NX_REG13[0..15])"


def test_a_flow_cut_at_its_start_is_not_a_table_0_flow():
    """ovn-kubernetes#863 quotes dump-flows in a log line, starting inside `table=17`: the fragment
    `e=17, n_packets=0, …, priority=0,metadata=0x3 actions=resubmit(,18)` was counted as a flow of an
    invented table 0. It is warned about; the whole flows after it parse."""
    got = p.parse_dump_flows(fx("ovn-kubernetes-863_escaped_log_cut.txt"))
    assert got.records and 0 not in {f.table for f in got.records}, [(f.table, f.match) for f in got.records]
    assert any("before the flow's counters" in w for w in got.warnings), got.warnings
    # `ovs-appctl bridge/dump-flows` leaves out table_id for table 0 and prints its counters: still table 0
    [f] = p.parse_dump_flows("duration=4s, n_packets=3, n_bytes=180, priority=0,actions=NORMAL\n").records
    assert (f.table, f.n_packets) == (0, 3)

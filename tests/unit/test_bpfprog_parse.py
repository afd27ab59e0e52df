"""BPF-program parsers on real bpftool/tc JSON (kernel docs and this host), plus the collector's joins."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings, strategies as st

from cnitrace.collectors.base import Snapshot, delta
from cnitrace.collectors.bpfprog import parse as p
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.core.runner import RecordedRunner
from cnitrace.core.selection import Interface, Selection

FIX = Path(__file__).parent.parent / "fixtures" / "bpf"


def fx(name: str) -> str:
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text


def body(name: str) -> str:
    return fx(name).split("\n", 1)[1]


def test_prog_show_docs_example_without_name():
    r = p.parse_prog_show(fx("kernel-doc-prog-show.json"))
    assert r.warnings == ()
    (prog,) = r.records
    assert (prog.id, prog.type, prog.name, prog.run_cnt, prog.run_time_ns, prog.map_ids) == (
        10, "xdp", "", 10, 81632, (10,))
    assert p.ns_per_run(prog.run_cnt, prog.run_time_ns) == 8163.2


def test_prog_show_single_object_stats_off_reads_zero():
    (prog,) = p.parse_prog_show(fx("host-prog-show-id.json")).records
    assert (prog.id, prog.name, prog.type, prog.run_cnt, prog.run_time_ns) == (163, "on_tc", "sched_cls", 0, 0)


def test_tc_filters_and_net_show_agree():
    tc = p.parse_tc_filters(fx("host-tc-filter-show.json"), "cnitva", "ingress", "ns")
    net = p.parse_net_show(fx("host-net-show.json"), "ns")
    assert tc.records == net.records == (p.Attachment("tc", "cnitva", "ingress", 163, "on_tc", "ns"),)
    assert p.dedupe([*tc.records, *net.records]) == tc.records


def test_net_show_xdp_has_mode_but_no_name():
    (a,) = p.parse_net_show(fx("host-net-show-xdp.json"), "ns").records
    assert (a.kind, a.target, a.hook, a.prog_name) == ("xdp", "cnitvb", "driver", "")
    assert a.prog_id > 0


def test_map_pressure_hash_vs_array():
    (arr,) = p.parse_map_show(fx("host-map-show.json")).records
    assert (arr.name, arr.type, arr.max_entries) == ("hits", "array", 8)
    assert p.BpfMap(arr.id, arr.type, arr.name, arr.max_entries, 8).pressure is None
    (h,) = p.parse_map_show(fx("host-map-show-hash.json")).records
    count, warnings = p.parse_map_dump_count(fx("host-map-dump-hash.json"))
    assert (count, warnings) == (3, ())
    assert p.BpfMap(h.id, h.type, h.name, h.max_entries, count).pressure == 3 / 16


def test_run_cnt_delta_and_ns_per_run():
    a = Snapshot("bpf", (p.BpfProg(7, "sched_cls", "x", "t", 100, 5000),))
    b = Snapshot("bpf", (p.BpfProg(7, "sched_cls", "x", "t", 141, 9100),))
    d = delta(a, b)
    assert d.get(("prog", 7), "run_cnt") == 41
    assert p.ns_per_run(41, d.get(("prog", 7), "run_time_ns")) == 100.0
    assert p.ns_per_run(0, 0) is None


def test_collector_joins_attachments_programs_and_maps():
    ns = ("ip", "netns", "exec", "cnit-x")
    sel = Selection((Interface("cnitva", "cnit-x", 3, "veth"),), ("cnit-x",))
    prog = json.loads(body("host-prog-show-id.json"))
    runner = RecordedRunner({
        (*ns, "tc", "-j", "filter", "show", "dev", "cnitva", "ingress"): body("host-tc-filter-show.json"),
        (*ns, "tc", "-j", "filter", "show", "dev", "cnitva", "egress"): "",
        (*ns, "bpftool", "-j", "net", "show", "dev", "cnitva"): body("host-net-show.json"),
        ("bpftool", "-j", "prog", "show"): json.dumps([prog, {**prog, "id": 999, "name": "other"}]),
        ("bpftool", "-j", "map", "show"): body("host-map-show.json"),
    })
    snap = BpfProgCollector(sel, runner).snapshot()
    progs = [r for r in snap.records if isinstance(r, p.BpfProg)]
    assert [x.id for x in progs] == [163]  # program 999 is not attached to the selection
    assert snap.meta["attachments"] == [{"kind": "tc", "target": "cnitva", "hook": "ingress", "prog_id": 163,
                                         "prog_name": "on_tc", "netns": "cnit-x"}]
    assert snap.meta["maps"][0]["name"] == "hits" and snap.warnings == ()
    # the array map is not dumped (its fill level is meaningless)
    assert not any("dump" in c for c in runner.calls)


def test_cgroup_tree():
    text = json.dumps([{"cgroup": "/sys/fs/cgroup/system.slice", "programs": [
        {"id": 42, "attach_type": "cgroup_inet_egress", "attach_flags": "multi", "name": "egress"}]}])
    (a,) = p.parse_cgroup_tree(text).records
    assert (a.kind, a.target, a.hook, a.prog_id) == ("cgroup", "/sys/fs/cgroup/system.slice", "cgroup_inet_egress", 42)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-5, 2**64) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["id", "type", "name", "run_cnt", "run_time_ns", "map_ids", "options",
                                         "prog", "kind", "tc", "xdp", "devname", "max_entries", "programs",
                                         "cgroup", "key"]), c, max_size=5), max_leaves=20))
def test_fuzz_json_shapes(doc):
    text = json.dumps(doc)
    for fn in (p.parse_prog_show, p.parse_map_show, p.parse_net_show, p.parse_cgroup_tree):
        r = fn(text)
        assert all(x.id >= 0 if hasattr(x, "id") else x.prog_id >= 0 for x in r.records)
    p.parse_tc_filters(text, "x", "ingress")
    p.parse_map_dump_count(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text(s):
    for fn in (p.parse_prog_show, p.parse_map_show, p.parse_net_show, p.parse_cgroup_tree):
        fn(s)
    p.parse_tc_filters(s, "x", "egress")

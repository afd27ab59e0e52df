"""tc_bpf without root: bpf_attr packing at the uapi offsets, bpf_prog_info and func_info
decoding, the per-program plan (fentry / tc classify kprobe / bpf_stats only), the figures'
way into the bpf stage, and the ladder's choice for the stage.

Offsets below were read from /usr/include/linux/bpf.h (Debian 12 linux-libc-dev) with
offsetof(): union bpf_attr is 144 bytes, struct bpf_prog_info 232.
"""

from __future__ import annotations

import re
import struct
import types

import pytest
from hypothesis import given, strategies as st

from cnitrace.attribution.tree import ProgramTime, bpf_stage
from cnitrace.core.capability import Check, Status
from cnitrace.collectors.bpfprog.parse import Attachment, BpfProg
from cnitrace.attribution.datapath import bpf_programs
from cnitrace.attribution.figures import program_times
from cnitrace.core.errors import UsageError
from cnitrace.probes.ladder import choose, rung_usable
from cnitrace.probes import bpfsys as bs
from cnitrace.probes import progtime as pt
from cnitrace.probes.histogram import from_samples
from cnitrace.probes.loader import source_text
from cnitrace.probes.runtime import Choice, Figure, Filter, cflags_for
from cnitrace.probes.specs import PROGTIME


def test_prog_load_attr_at_uapi_offsets():
    a = bs.prog_load_attr(insns=0x1000, insn_cnt=12, license=0x2000, name=b"cnit_pte_long_name_here",
                          attach_type=bs.BPF_TRACE_FEXIT, attach_btf_id=38, attach_prog_fd=7,
                          log_buf=0x3000, log_size=65536, log_level=1)
    assert len(a) == 144
    assert struct.unpack_from("=IIQQIIQ", a, 0) == (26, 12, 0x1000, 0x2000, 1, 65536, 0x3000)
    assert a[48:64] == b"cnit_pte_long_n\0"            # 15 characters and the NUL
    assert struct.unpack_from("=I", a, 68) == (25,)      # expected_attach_type BPF_TRACE_FEXIT
    assert struct.unpack_from("=II", a, 108) == (38, 7)  # attach_btf_id, attach_prog_fd
    assert a[40:48] == bytes(8) and a[72:108] == bytes(36) and a[116:] == bytes(28)


def test_small_attrs():
    assert struct.unpack_from("=I", bs.get_fd_by_id_attr(4242), 0) == (4242,)
    assert struct.unpack_from("=IIQ", bs.obj_info_attr(5, 0xdead000, 216), 0) == (5, 216, 0xdead000)
    raw = bs.raw_tp_open_attr(9)
    assert struct.unpack_from("=QI", raw, 0) == (0, 9) and len(raw) == 144   # name NULL: fentry/fexit
    req = bs.func_info_request(3, 0xbeef000)
    assert len(req) == 216 and struct.unpack_from("=IQI", req, 132) == (8, 0xbeef000, 3)
    assert req[:132] == bytes(132) and req[148:] == bytes(68)


def _info(**v) -> bytes:
    b = bytearray(232)
    struct.pack_into("=II", b, 0, v.get("type", 3), v.get("id", 11))
    b[64:64 + len(v.get("name", b"on_tc"))] = v.get("name", b"on_tc")
    struct.pack_into("=III", b, 128, v.get("btf_id", 2301), 8, 0)
    struct.pack_into("=QI", b, 136, 0, v.get("nr_func_info", 1))
    struct.pack_into("=QQQ", b, 192, v.get("run_time_ns", 0), v.get("run_cnt", 0), v.get("misses", 0))
    return bytes(b)


def test_parse_prog_info():
    info = bs.parse_prog_info(_info(id=11, name=b"cil_from_contai", run_time_ns=5000, run_cnt=10, misses=2))
    assert info == bs.ProgInfo(11, 3, "cil_from_contai", 2301, 1, 8, 5000, 10, 2)
    assert info.type_name == "sched_cls" and bs.parse_prog_info(_info(type=6)).type_name == "xdp"
    assert bs.parse_prog_info(_info()[:100]).btf_id == 0     # an older kernel's shorter struct


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_prog_info_round_trip(pid, btf_id, run_time, run_cnt):
    info = bs.parse_prog_info(_info(id=pid, btf_id=btf_id, run_time_ns=run_time, run_cnt=run_cnt))
    assert (info.id, info.btf_id, info.run_time_ns, info.run_cnt) == (pid, btf_id, run_time, run_cnt)


def test_main_function_is_the_func_info_record_at_insn_zero():
    recs = struct.pack("=IIII", 0, 38, 57, 40)           # main at insn 0, a subprogram at 57
    assert bs.main_func_type_id(recs) == 38
    assert bs.main_func_type_id(struct.pack("=II", 57, 40)) is None
    assert bs.main_func_type_id(b"") is None
    padded = struct.pack("=IIQ", 9, 1, 0) + struct.pack("=IIQ", 0, 77, 0)   # a future 16-byte record
    assert bs.main_func_type_id(padded, 16) == 77
    assert bs.main_func_type_id(recs, 4) is None


def test_verifier_log_last_line():
    log = b"func#0 @0\n0: R1=ctx() R10=fp0\nattach_btf_id 38 is not a function\n\0\0garbage"
    assert bs.last_log_line(log) == "attach_btf_id 38 is not a function"
    assert bs.last_log_line(b"\0" * 10) == ""
    stats = b"attach_btf_id 99275 is not a typedef\nprocessed 0 insns (limit 1000000) max_states_per_insn 0\n"
    assert bs.last_log_line(stats) == "attach_btf_id 99275 is not a typedef"


def test_targets_from_attachments():
    atts = [Attachment("tc", "lxc1", "ingress", 11, "cil_from_contai", "ns1"),
            {"kind": "tc", "target": "lxc1", "hook": "ingress", "prog_id": 11, "prog_name": "cil_from_contai",
             "netns": "ns1"},                                  # the same, as the collector's JSON
            {"kind": "xdp", "target": "eth0", "hook": "driver", "prog_id": 12, "prog_name": "", "netns": ""},
            {"kind": "cgroup", "target": "/sys/fs/cgroup", "hook": "egress", "prog_id": 13}]
    ts = pt.targets_from(atts)
    assert [(t.prog_id, t.kind, t.where) for t in ts] == [(11, "tc", "ns1/lxc1"), (12, "xdp", "eth0")]


T = [pt.ProgramTarget(11, "from", "tc", "ingress", "lxc1", "ns"), pt.ProgramTarget(12, "to", "tc", "egress", "lxc1", "ns"),
     pt.ProgramTarget(13, "xdp", "xdp", "driver", "eth0")]
YES, NO_FENTRY, NO_KPROBE = (True, "ok"), (False, "fentry missing"), (False, "kprobes missing")


def test_plan_fentry_for_every_program_with_btf():
    p = pt.plan(T, fentry=YES, kprobe=YES, no_btf={})
    assert (p.fentry, p.classify, p.stats_only, p.backend, p.signal) == ((11, 12, 13), (), (), "fentry", "measured")
    assert p.reason == "fentry/fexit on from (id 11), to (id 12), xdp (id 13)"


def test_plan_without_btf_falls_back_per_program():
    p = pt.plan(T, fentry=YES, kprobe=YES, no_btf={12: "loaded without BTF", 13: "loaded without BTF"})
    assert p.fentry == (11,) and p.classify == (("ns", "lxc1"),)
    assert p.stats_only == ((13, "loaded without BTF; kprobe: XDP has no tc classify path"),)
    assert "kprobe tcf_classify on ns/lxc1 for to (id 12): loaded without BTF" in p.reason
    assert p.backend == "fentry"


def test_plan_kprobe_only_and_nothing_usable():
    p = pt.plan(T, fentry=NO_FENTRY, kprobe=YES, no_btf={})
    assert p.fentry == () and p.classify == (("ns", "lxc1"),) and p.backend == "kprobe"
    assert [s for s, _ in p.stats_only] == [13]
    none = pt.plan(T, fentry=NO_FENTRY, kprobe=NO_KPROBE, no_btf={})
    assert none.backend == "counters" and none.signal == "modelled" and not none.classify
    assert dict(none.stats_only)[11] == "fentry: fentry missing; kprobe: kprobes missing"
    assert none.reason.startswith("bpf_stats only for from (id 11): fentry: fentry missing")
    assert pt.plan([], fentry=YES, kprobe=YES, no_btf={}).reason == "no tc/XDP program on the selected interfaces"


def test_plan_caps_fentry_slots():
    many = [pt.ProgramTarget(i, f"p{i}", "tc", "ingress", f"lxc{i}") for i in range(1, 20)]
    p = pt.plan(many, fentry=YES, kprobe=NO_KPROBE, no_btf={})
    assert len(p.fentry) == pt.MAX_PROGS == 16
    assert [s for s, _ in p.stats_only] == [17, 18, 19]
    assert dict(p.stats_only)[17].startswith("more than 16 programs")


def test_c_source_matches_the_spec():
    text = source_text(PROGTIME.source)
    assert int(re.search(r"#define CNIT_MAX_PROGS (\d+)", text)[1]) == pt.MAX_PROGS
    assert re.findall(r"^CNIT_PROGTIME_PAIR\((\d+)\)$", text, re.M) == [str(i) for i in range(pt.MAX_PROGS)]
    for agg in PROGTIME.maps:
        assert re.search(rf"\b{agg.name}\b", text), agg.name
    for h in PROGTIME.hooks:
        assert h.macro in text
    assert {n for n in re.findall(r"CNIT_OFF_(\w+)", text)} <= set(PROGTIME.offsets)


def test_cflags_switch_the_two_hooks():
    flags = cflags_for(PROGTIME, Choice("tc_bpf", {"bpf_prog": "fentry", "tcf_classify": "counters"}, ""), {},
                       Filter(), extra={"CNIT_NPROG": 2})
    assert flags["CNIT_HOOK_BPF_PROG"] == "1" and flags["CNIT_HOOK_TCF_CLASSIFY"] == "0"
    assert flags["CNIT_NPROG"] == "2"
    kp = cflags_for(PROGTIME, Choice("tc_bpf", {"bpf_prog": "counters", "tcf_classify": "kprobe"}, ""),
                    {"SKB_DEV": 16}, Filter(ifaces=((4026531840, 7),)))
    assert kp["CNIT_HOOK_TCF_CLASSIFY"] == "2" and kp["CNIT_OFF_SKB_DEV"] == "16" and kp["CNIT_IF0"] == "7"


def test_figures_meet_bpf_stats_under_one_name():
    prog = BpfProg(11, "sched_cls", "on_tc", "abc", 0, 0)
    later = BpfProg(11, "sched_cls", "on_tc", "abc", 60, 450_000)
    [stats] = bpf_programs(types.SimpleNamespace(records=[prog]), types.SimpleNamespace(records=[later]))
    hist = from_samples([1000] * 59 + [3000])
    figs = [Figure("tc_bpf", "progtime_agg", "fentry", "ns",
                   {"prog_id": 11, "prog_name": "on_tc", "prog_type": "sched_cls"}, hist, "bpf_prog"),
            Figure("tc_bpf", "tc_classify_agg", "kprobe", "ns", {"netns": 1, "ifindex": 2, "iface": "ns/veth0"},
                   from_samples([9000] * 60), "tcf_classify"),
            Figure("transit", "transit_agg", "tracepoint", "ns", {}, hist)]
    fentry, classify = program_times(figs)
    assert fentry.name == stats.name == "on_tc (id 11, sched_cls)"
    assert (fentry.runs, fentry.ns_per_run, fentry.source) == (60, 62000 / 60, "fentry")
    assert fentry.p99_ns >= fentry.p50_ns > 0
    assert classify == ProgramTime("tc classify on ns/veth0", 60, 9000.0, "kprobe", classify.p50_ns, classify.p99_ns)


def test_bpf_stage_puts_fentry_beside_bpf_stats():
    stats = [ProgramTime("a (id 1, sched_cls)", 100, 900.0), ProgramTime("b (id 2, sched_cls)", 100, 100.0)]
    traced = [ProgramTime("a (id 1, sched_cls)", 100, 600.0, "fentry", 512.0, 2048.0),
              ProgramTime("c (id 3, xdp)", 50, 300.0, "fentry"),
              ProgramTime("tc classify on ns/lxc1", 100, 5000.0, "kprobe")]
    st = bpf_stage(stats, 100, traced)
    a, c, b = st.children       # by time: a (fentry: 600 per packet), c (fentry alone: 150), b (100)
    assert a.name.startswith("a ") and a.ns_per_packet == pytest.approx(600.0)
    assert a.detail["source"] == "fentry" and a.detail["bpf_stats"]["ns_per_run"] == 900.0
    assert a.detail["fentry_vs_bpf_stats"] == pytest.approx(600 / 900) and a.detail["p99_ns_per_run"] == 2048.0
    assert c.detail["source"] == "fentry" and "bpf_stats" not in c.detail and c.packets == 50
    assert b.detail == {"source": "bpf_stats", "ns_per_run": 100.0}
    # the classify path contains the programs: beside them, not added to them
    assert st.ns_per_packet == pytest.approx(600 + 150 + 100)
    assert st.detail["tc_classify"][0]["where"] == "tc classify on ns/lxc1"
    assert st.detail["tc_classify"][0]["ns_per_call"] == 5000.0
    assert bpf_stage(stats, 100).find("program", "a (id 1, sched_cls)").ns_per_packet == pytest.approx(900.0)


class Caps:
    def __init__(self, **status: Status):
        self.status = status

    def check(self, name: str) -> Check:
        s = self.status.get(name, Status.MISSING)
        return Check(name, s, f"{name} is {s.value}")


ALL = dict(root=Status.OK, btf=Status.OK, fentry=Status.OK, kprobes=Status.OK, bpf_stats=Status.OK)


@pytest.mark.parametrize("caps, fentry, kprobe, chosen", [
    (ALL, True, True, "fentry"),
    ({**ALL, "fentry": Status.MISSING}, False, True, "kprobe"),
    ({**ALL, "fentry": Status.MISSING, "kprobes": Status.MISSING}, False, False, "counters"),
    ({**ALL, "bpf_stats": Status.MISSING}, False, False, None),
], ids=["microvm", "kprobes-only", "ci-host", "no-stats"])
def test_ladder_for_tc_bpf(caps, fentry, kprobe, chosen):
    c = Caps(**caps)
    assert rung_usable("tc_bpf", "fentry", c)[0] is fentry
    assert rung_usable("tc_bpf", "kprobe", c)[0] is kprobe
    assert choose("tc_bpf", c).backend == chosen
    if not fentry:
        assert rung_usable("tc_bpf", "fentry", c)[1]     # a reason, never empty
    assert rung_usable("tc_bpf", "tracepoint", c) == (False, "tc_bpf has no tracepoint rung")
    assert rung_usable("tc_bpf", "fentry", Caps(**{**caps, "root": Status.MISSING}))[1].startswith("root missing")


def test_unknown_forced_backend_is_refused():
    with pytest.raises(UsageError):
        pt.ProgTime([], force="tracepoint")

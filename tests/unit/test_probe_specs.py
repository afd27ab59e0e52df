"""Probe specs, the per-hook ladder decision, cflags and event decoding (no root, no bcc)."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.probes.loader import cflag_list, source_text
from cnitrace.probes.runtime import (Filter, choose, cflags_for, parse_links, ringbuf_supported,
                                     without_unreadable)
from cnitrace.probes.specs import (COUNTERS, FENTRY, KPROBE, OFFSETS, RAW_TRACEPOINT, SPECS, TP_BTF, TRACEPOINT,
                                   decode_key, feeding_hook, hook_macro, tp_btf_function)

FIX = Path(__file__).parent.parent / "fixtures" / "probes"


def caps(**usable):
    return lambda name: (usable.get(name, False), f"{name} said so")


def points(*present):
    return lambda backend, point: point in present or backend == TRACEPOINT and point in present


NF = SPECS["netfilter"]


TABLES = ("ipt_do_table", "ip6t_do_table", "nft_do_chain")


def test_ladder_takes_fentry_for_vmlinux_and_kprobe_for_module_functions():
    c = choose(NF, caps(fentry=True, kprobe=True), points("nf_hook_slow", *TABLES))
    assert c.hooks == {"nf_hook_slow": FENTRY, "ipt_do_table": KPROBE, "ip6t_do_table": KPROBE,
                       "nft_do_chain": KPROBE}
    assert (c.backend, c.signal, c.missing_points) == (FENTRY, "measured", ())
    assert c.reason.startswith("fentry+kprobe: nf_hook_slow=fentry")


def test_ladder_falls_back_per_hook():
    c = choose(NF, caps(fentry=False, kprobe=True), points("nf_hook_slow", "ipt_do_table"))
    assert c.hooks["nf_hook_slow"] == KPROBE and c.hooks["ipt_do_table"] == KPROBE
    # optional hooks that are missing (nf_tables, ip6_tables not loaded) lose detail, not the stage
    assert set(c.missing_points) == {"ip6t_do_table", "nft_do_chain"}
    assert "nf_hook_slow fentry: fentry said so" not in c.reason   # only the lost hooks are explained
    assert "nft_do_chain kprobe: no such function" in c.reason


def test_ladder_falls_back_to_counters_on_this_host():
    c = choose(NF, caps(tracepoint=True), points())
    assert c.backend == COUNTERS and c.signal == "modelled" and c.hooks == {}
    assert "nf_hook_slow fentry: fentry said so" in c.reason and "nf_hook_slow kprobe: kprobe said so" in c.reason


def test_ladder_needs_the_required_function():
    c = choose(NF, caps(fentry=True, kprobe=True), points(*TABLES))   # nf_hook_slow absent
    assert c.backend == COUNTERS and "nf_hook_slow fentry: no such function" in c.reason


def test_forced_backend_applies_to_every_hook_and_must_work():
    c = choose(NF, caps(fentry=True, kprobe=True), points("nf_hook_slow", *TABLES), force=KPROBE)
    assert set(c.hooks.values()) == {KPROBE}
    c = choose(NF, caps(fentry=True, kprobe=True), points("nf_hook_slow", *TABLES), force=FENTRY)
    assert c.hooks["nf_hook_slow"] == FENTRY and c.missing_points == TABLES   # modules: no fentry in bcc 0.26
    with pytest.raises(UsageError, match="backend kprobe is not possible"):
        choose(NF, caps(fentry=True), points("nf_hook_slow"), force=KPROBE)
    with pytest.raises(UsageError, match="unknown backend"):
        choose(NF, caps(), points(), force="magic")


TRANSIT_POINTS = ("net:netif_receive_skb", "net:net_dev_start_xmit", "skb:consume_skb", "skb:kfree_skb")


def test_transit_takes_btf_typed_tracepoints_first():
    c = choose(SPECS["transit"], caps(tracepoint=True, raw_tracepoint=True, tp_btf=True), points(*TRANSIT_POINTS))
    assert set(c.hooks.values()) == {TP_BTF} and c.signal == "measured"
    flags = cflags_for(SPECS["transit"], c, {}, Filter())
    assert flags["CNIT_DIRECT"] == "1" and flags["CNIT_HOOK_NET_NETIF_RECEIVE_SKB"] == "5"
    # the C entry points the loader attaches itself exist in the source, one per hook
    src = source_text("transit.bpf.c")
    assert all(f"int {tp_btf_function(p)}(u64 *ctx)" in src for p in TRANSIT_POINTS)
    assert "int tpbtf__kfree_skb(u64 *ctx)" in source_text("drops.bpf.c")


def test_plain_loads_only_when_every_hook_is_btf_typed():
    """A raw or classic tracepoint program may not dereference kernel pointers: one such hook in
    the stage and every field read goes through the helper again."""
    c = choose(SPECS["transit"], caps(tracepoint=True, raw_tracepoint=True, tp_btf=True), points(*TRANSIT_POINTS))
    mixed = dataclasses.replace(c, hooks={**c.hooks, "skb:kfree_skb": RAW_TRACEPOINT})
    assert "CNIT_DIRECT" not in cflags_for(SPECS["transit"], mixed, {}, Filter())
    raw = choose(SPECS["transit"], caps(tracepoint=True, raw_tracepoint=True), points(*TRANSIT_POINTS))
    assert "CNIT_DIRECT" not in cflags_for(SPECS["transit"], raw, {}, Filter())


def test_few_interfaces_become_netns_ifindex_constants():
    c = choose(SPECS["transit"], caps(tracepoint=True, raw_tracepoint=True), points(*TRANSIT_POINTS))
    flt = Filter(ifaces=((4026532000, 7), (4026531840, 3), (4026532000, 3)))
    flags = cflags_for(SPECS["transit"], c, {}, flt)
    pairs = {(flags[f"CNIT_NS{n}"], flags[f"CNIT_IF{n}"]) for n in range(int(flags["CNIT_NIF"]))}
    assert pairs == {("4026532000", "7"), ("4026531840", "3"), ("4026532000", "3")}
    many = Filter(ifaces=tuple((4026531840, i) for i in range(1, 10)))
    assert "CNIT_NIF" not in cflags_for(SPECS["transit"], c, {}, many)   # more than 8: the map decides


def test_transit_takes_raw_tracepoints_then_classic_ones():
    tp = points(*TRANSIT_POINTS)
    c = choose(SPECS["transit"], caps(tracepoint=True, raw_tracepoint=True), tp)
    assert c.backend == RAW_TRACEPOINT and c.signal == "measured" and c.missing_points == ()
    c = choose(SPECS["transit"], caps(tracepoint=True), tp)
    assert set(c.hooks.values()) == {TRACEPOINT}   # raw tracepoints refused: the classic ones


def test_cflags_carry_offsets_filters_and_events():
    spec = SPECS["transit"]
    flt = Filter(ifaces=((4026531840, 3),), mark=0x4000, mark_mask=0xC000, proto=17,
                 saddr="10.66.1.2", daddr="10.66.2.2", dport=9999)
    choice = choose(spec, caps(tracepoint=True), points("net:netif_receive_skb", "net:net_dev_start_xmit",
                                                         "skb:kfree_skb"))
    flags = cflags_for(spec, choice, {"SKB_DEV": 16, "DEV_IFINDEX": 224}, flt, events=True, ringbuf=False)
    assert flags["CNIT_HOOK_NET_NETIF_RECEIVE_SKB"] == "3" and flags["CNIT_HOOK_SKB_CONSUME_SKB"] == "0"
    assert (flags["CNIT_NIF"], flags["CNIT_IF0"]) == ("1", "3")   # the hot path's constant pre-check
    assert flags["CNIT_OFF_SKB_DEV"] == "16" and flags["CNIT_OFF_DEV_IFINDEX"] == "224"
    assert flags["CNIT_FILTER_IFACE"] == "1" and "CNIT_FILTER_NETNS" not in flags
    assert (flags["CNIT_MARK_VALUE"], flags["CNIT_MARK_MASK"]) == ("0x4000", "0xc000")
    # addresses and ports as the u32/u16 the kernel reads from the packet on little-endian x86
    assert int(flags["CNIT_DADDR"], 16) == struct.unpack("<I", bytes([10, 66, 2, 2]))[0]
    assert int(flags["CNIT_DPORT"], 16) == struct.unpack("<H", (9999).to_bytes(2, "big"))[0]
    assert flags["CNIT_SPORT"] == "0x0" and flags["CNIT_PROTO"] == "17"
    assert flags["CNIT_EVENTS"] == "1" and flags["CNIT_RINGBUF"] == "0"
    assert all(a.startswith("-D") for a in cflag_list(flags))   # the loader accepts every value
    with pytest.raises(UsageError):
        cflags_for(spec, choice, {}, Filter(saddr="not-an-ip"))


@pytest.mark.parametrize("stage", sorted(SPECS))
def test_sources_use_only_declared_offsets_maps_and_hooks(stage):
    spec = SPECS[stage]
    text = source_text(spec.source)
    used = set(re.findall(r"CNIT_OFF_(\w+)", text)) | set(re.findall(r"CNIT_OFF_(\w+)", source_text("stages.h")))
    assert set(spec.offsets) <= set(OFFSETS)
    assert {u for u in used if u in re.findall(r"CNIT_OFF_(\w+)", text)} <= set(spec.offsets)
    for agg in spec.maps:
        assert re.search(rf"\b{agg.name}\b", text), agg.name
    for h in spec.hooks:   # every hook is either always attached (tracepoint) or switched by its macro
        fn = h.point.split(":")[-1]
        assert h.macro in text or (h.backends == (TRACEPOINT,)
                                   and re.search(rf"TRACEPOINT_PROBE\(\w+, {fn}\)", text)), h.point
    assert hook_macro("skb:consume_skb") == "CNIT_HOOK_SKB_CONSUME_SKB"
    if spec.event:
        m = re.search(r"struct \w+_event \{(.*?)\};", text, re.S)
        c_fields = re.findall(r"\b(u64|u32|u16) (\w+);", m[1])
        assert [f for _, f in c_fields] == [f for f, _ in spec.event.fields]
        sizes = {"u64": "Q", "u32": "I", "u16": "H"}
        assert [sizes[t] for t, _ in c_fields] == [c for _, c in spec.event.fields]


def test_event_decoding():
    layout = SPECS["transit"].event
    raw = struct.pack("=QQIIII", 5, 1234, 4026531840, 3, 4, 106)
    assert layout.decode(raw) == {"ts": 5, "ns": 1234, "netns": 4026531840, "ifindex_in": 3,
                                  "ifindex_out": 4, "len": 106}
    with pytest.raises(ValueError, match="expected 32"):
        layout.decode(raw[:10])


def test_decode_key_names_numbers():
    nf = SPECS["netfilter"].maps
    assert decode_key(nf[0], {"netns": 1, "pf": 2, "hook": 2, "verdict": 0}) == \
        {"netns": 1, "pf": "ipv4", "hook": "FORWARD", "verdict": "DROP"}
    raw = {"netns": 1, "kind": 3, "hook": 2, "verdict": 1, "table": b"cnit\0\0", "chain": b"forward\0"}
    assert decode_key(nf[1], raw) == {"netns": 1, "kind": "nftables", "hook": "FORWARD", "verdict": "ACCEPT",
                                      "table": "cnit", "chain": "forward"}
    assert feeding_hook(nf[1], raw) == "nft_do_chain" and feeding_hook(nf[0], {}) == "nf_hook_slow"


def test_parse_links_fixture():
    links = parse_links((FIX / "ip-o-link-show-netns.txt").read_text())
    assert links == [(1, "lo"), (2, "eth0"), (3, "cnpa0"), (4, "cnpb9"), (5, "cali1234abcd567")]


@pytest.mark.parametrize("release,ok", [("6.18.44-fc-v595", True), ("6.12.115+deb12-amd64", True),
                                        ("5.8.0", True), ("5.4.0-150-generic", False), ("weird", False)])
def test_ringbuf_supported(release, ok):
    assert ringbuf_supported(release) is ok


def test_hook_without_btf_for_its_structs_is_reported_lost():
    c = choose(NF, caps(fentry=True, kprobe=True), points("nf_hook_slow", *TABLES))
    have = {"XT_TABLE_NAME": 0}                                    # nf_tables' BTF not loaded
    c2 = without_unreadable(NF, c, have)
    assert c2.hooks["nft_do_chain"] == COUNTERS and c2.hooks["ipt_do_table"] == KPROBE
    assert "nft_do_chain: no BTF for nft_pktinfo, nft_chain, nft_table" in c2.reason
    assert without_unreadable(NF, c, {n: 0 for n in OFFSETS}) == c


class ReplayedHost:
    """Capability answers as this CI host gives them (DESIGN.md: no kprobes, no fentry)."""

    def __init__(self, **status):
        self.status = status

    def check(self, name):
        from cnitrace.core.capability import Check, Status
        st = self.status.get(name, Status.OK)
        return Check(name, st, f"{name} is {st.value}")


def test_probe_set_takes_the_ladders_capability_verdict():
    from cnitrace.core.capability import Status
    from cnitrace.probes.runtime import ProbeSet

    ps = ProbeSet(["netfilter", "transit"], host=ReplayedHost(fentry=Status.MISSING, kprobes=Status.MISSING))
    nf = ps._backend_usable("netfilter")
    assert nf(FENTRY) == (False, "fentry missing: fentry is missing")
    assert nf(KPROBE)[0] is False
    c = choose(NF, nf, points("nf_hook_slow", *TABLES))
    assert c.backend == COUNTERS and "kprobes missing" in c.reason
    assert ps._backend_usable("transit")(TRACEPOINT)[0] is True
    assert ps._backend_usable("transit")(RAW_TRACEPOINT)[0] is True

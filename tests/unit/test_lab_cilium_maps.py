"""Unit tests: the cilium lab's map layouts against real `bpftool map dump` output of Cilium nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnitrace.lab.datapaths import cilium_maps as cm
from cnitrace.lab import topology
from cnitrace.lab.datapaths import registry as datapath
from cnitrace.lab.datapaths.cilium import Cilium, bpffs_mounted, map_size, policy_map_name, tc_batch
from cnitrace.lab.model import LabSpec
from cnitrace.lab.policy import port_rules
from cnitrace.probes import loader

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cilium"


def test_real_policy_map_dump_unpacks_and_repacks_byte_for_byte():
    dump = cm.parse_bpftool_hex((FIXTURES / "policy-map-bpftool-dump.txt").read_text(), 8, 24)
    assert len(dump.entries) == 7
    assert len(dump.warnings) == 1 and "2-byte value" in dump.warnings[0]     # the torn last entry
    parsed = {cm.PolicyKey.unpack(k): cm.PolicyEntry.unpack(v) for k, v in dump.entries}
    dns = cm.PolicyKey(identity=0x66, dport=53, proto=cm.PROTO["udp"], egress=cm.EGRESS)
    assert parsed[dns] == cm.PolicyEntry(proxy_port=44793, packets=8, bytes=602)     # DNS via the proxy
    cidr = cm.PolicyKey(identity=0x01000001, dport=0, proto=0, egress=cm.EGRESS)   # a local (CIDR) identity, L3-only
    assert parsed[cidr] == cm.PolicyEntry(packets=12, bytes=1546)
    for k, v in dump.entries:
        assert cm.PolicyKey.unpack(k).pack() == k
        assert cm.PolicyEntry.unpack(v).pack() == v


def test_real_ipcache_dump_unpacks_and_repacks():
    dump = cm.parse_bpftool_hex((FIXTURES / "ipcache-bpftool-dump.txt").read_text(), 24, 12)
    assert not dump.warnings
    (k, v), = dump.entries
    assert cm.IpcacheKey.unpack(k) == cm.IpcacheKey("10.0.0.4", 32)
    assert cm.IpcacheValue.unpack(v) == cm.IpcacheValue(61928)
    assert cm.IpcacheKey("10.0.0.4").pack() == k and cm.IpcacheValue(61928).pack() == v


def test_struct_sizes_match_cilium():
    assert len(cm.PolicyKey(1, 2, 6).pack()) == 8 and len(cm.PolicyEntry().pack()) == 24
    assert len(cm.IpcacheKey("1.2.3.4").pack()) == 24 and len(cm.IpcacheValue(1).pack()) == 12
    ep = cm.Endpoint("10.65.0.2", 7, 1000, cm.ID_SERVER)
    assert len(ep.pack_key()) == 20 and len(ep.pack_value()) == 16


def test_garbage_in_a_dump_is_a_warning_not_a_crash():
    dump = cm.parse_bpftool_hex("key:\n01 00\nvalue:\nzz top\nkey:\n01 02\nvalue:\n03\n", 2, 1)
    assert dump.entries == ((b"\x01\x02", b"\x03"),)
    assert any("unparsed" in w for w in dump.warnings)


@pytest.mark.parametrize("n", [0, 100, 1000, 10_000])
def test_policy_entries_expand_port_ranges(n):
    spec = LabSpec(name="u", datapath="cilium", rules=n)
    topo = topology.plan(spec, datapath.get("cilium"))
    entries = dict(cm.policy_entries(port_rules(topo, spec)))
    assert len(entries) == 4 * n + 2
    for proto in ("tcp", "udp"):
        assert cm.PolicyKey(cm.ID_CLIENT, topo.allowed_port, cm.PROTO[proto], cm.INGRESS) in entries
    assert cm.PolicyKey(cm.ID_CLIENT, topo.denied_port, cm.PROTO["tcp"], cm.INGRESS) not in entries
    assert map_size(len(entries)) >= len(entries)


def test_l7_entry_carries_the_proxy_port():
    spec = LabSpec(name="u", datapath="cilium", rules=2)
    topo = topology.plan(spec, datapath.get("cilium"))
    entries = dict(cm.policy_entries(port_rules(topo, spec), proxy_port=15001, l7_port=topo.allowed_port))
    assert entries[cm.PolicyKey(cm.ID_CLIENT, topo.allowed_port, 6)].proxy_port == 15001
    assert entries[cm.PolicyKey(cm.ID_CLIENT, topo.allowed_port, 17)].proxy_port == 0


def test_names_pins_and_tc_commands():
    dp = datapath.get("cilium")
    name = dp.node_iface_name("lab", 3)
    assert re.fullmatch(r"lxc[0-9a-f]{12}", name)
    assert policy_map_name(1000) == "cilium_policy_01000"
    text = tc_batch([("lxcabc", "/sys/fs/bpf/cnit-l/cil_from_container", "/sys/fs/bpf/cnit-l/cil_to_container")])
    assert text.splitlines() == [
        "qdisc add dev lxcabc clsact",
        "filter add dev lxcabc ingress prio 1 handle 1 bpf da pinned /sys/fs/bpf/cnit-l/cil_from_container",
        "filter add dev lxcabc egress prio 1 handle 1 bpf da pinned /sys/fs/bpf/cnit-l/cil_to_container"]
    assert bpffs_mounted("bpf /sys/fs/bpf bpf rw,relatime 0 0\n")
    assert not bpffs_mounted("sysfs /sys/fs/bpf sysfs rw 0 0\n")


def test_ground_truth_names_the_policy_entry_and_drop_metric():
    spec = LabSpec(name="u", datapath="cilium", rules=10)
    topo = topology.plan(spec, datapath.get("cilium"))
    truth = Cilium().ground_truth(topo, spec)
    assert truth.allowed["udp"].table == "/sys/fs/bpf/cnit-u/cilium_policy_01000"
    assert truth.allowed["udp"].key == {"identity": cm.ID_CLIENT, "dport": topo.allowed_port, "proto": 17,
                                        "direction": "ingress"}
    assert truth.denied.table.endswith("/cilium_metrics")


def test_bpf_source_takes_options_only_as_guarded_cflags():
    text = loader.source_text("cilium_policy.bpf.c", package="cnitrace.lab.datapaths")
    for opt in ("POLICY_MAP_SIZE", "IPCACHE_SIZE", "LXC_MAP_SIZE", "ALLOW_LOCALHOST"):
        assert f"#ifndef {opt}" in text
    for fn in ("cil_from_container", "cil_to_container"):
        assert f"int {fn}(struct __sk_buff *skb)" in text
    # the C structs have Cilium's field order
    body = text[text.index("struct policy_key {"):]
    body = body[:body.index("};")]
    assert [body.index(f) for f in ("__u32 sec_label;", "__u16 dport;", "__u8 protocol;", "__u8 egress;")] == sorted(
        body.index(f) for f in ("__u32 sec_label;", "__u16 dport;", "__u8 protocol;", "__u8 egress;"))


def test_l7_mark_and_nat_rule_for_the_proxy():
    from cnitrace.lab.datapaths.cilium import proxy_mark, render_l7_nat
    assert proxy_mark(15001) == 0x3A990200           # MARK_MAGIC_TO_PROXY | port << 16
    spec = LabSpec(name="u", datapath="cilium", rules=0, l7=True)
    topo = topology.plan(spec, datapath.get("cilium"))
    text = render_l7_nat(topo)
    assert text.startswith("*nat\n") and text.endswith("COMMIT\n")
    assert f"-m mark --mark 0x3a990200/0xffff0f00" in text
    assert f"-j DNAT --to-destination {topo.node_ip}:15001" in text

"""The BPF layer of `cnitrace trace`: path order, packet bytes, test-run attr layout, return-code
verdicts and the Cilium policy-map entry behind a verdict (no root: test-run is injected).

Fixtures: tests/fixtures/bpf/trace_cilium_lab_*.json, captured on the cilium lab (provenance inside).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cnitrace.collectors.bpfprog.parse import parse_net_show
from cnitrace.core.runner import Completed, RecordedRunner
from cnitrace.lab.model import CounterRef, GroundTruth
from cnitrace.probes import bpfsys
from cnitrace.trace import bpf

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "bpf"
POLICY = "/sys/fs/bpf/cnit-trc2/cilium_policy_01000"
IPCACHE = "/sys/fs/bpf/cnit-trc2/cilium_ipcache"
SRV_IF, CLI_IF = "lxcd55c7f507444", "lxc4f6987210868"
PKT = {"proto": "tcp", "src": "10.65.0.3", "dst": "10.65.0.2", "sport": 40001, "dport": 8080,
       "src_mac": "0a:58:0a:41:00:03", "dst_mac": "0a:58:0a:41:00:02"}


def net_show():
    text = (FIX / "trace_cilium_lab_net_show.json").read_text()
    assert text.startswith("# provenance:")
    return parse_net_show(text, "cnit-trc2-node").records


def recorded_lookups() -> RecordedRunner:
    doc = json.loads((FIX / "trace_cilium_lab_map_lookups.json").read_text())
    assert "provenance" in doc
    resp = {tuple(c["argv"]): Completed(tuple(c["argv"]), c["rc"], c["stdout"], c["stderr"]) for c in doc["calls"].values()}
    miss = Completed((), 254, "null", "")
    for key in bpf.lookup_order(48312, 8080, 6)[1:] + bpf.lookup_order(48312, 9090, 6):
        argv = ("bpftool", "-j", "map", "lookup", "pinned", POLICY, "key", *bpf._hexargs(bpf.policy_key(*key)))
        resp.setdefault(argv, miss)
    return RecordedRunner(resp)


def truth() -> GroundTruth:
    allowed = {p: CounterRef(kind="bpf-map", table=POLICY, key={"identity": 48312, "dport": 8080, "proto": n,
                                                                "direction": "ingress"}) for p, n in (("tcp", 6), ("udp", 17))}
    return GroundTruth(allowed=allowed, denied=CounterRef(kind="bpf-map", table="/sys/fs/bpf/cnit-trc2/cilium_metrics",
                                                          key={"index": 0}), evaluations={"tcp": 1, "udp": 1})


MAPS = bpf.CiliumMaps(POLICY, IPCACHE, {48312: "client", 12301: "server", 1: "host"})


def fake_run(rcs):
    def run(steps, data, netns):
        assert data[12:14] == b"\x08\x00" and netns == "cnit-trc2-node"
        out = []
        for st, rc in zip(steps, rcs):
            out.append((st, bpfsys.TestRun(rc, 500 + rc, data, b"\0" * bpfsys.SKB_CTX_SIZE)))
            if bpf.rc_verdict(st.kind, rc) in ("dropped", "redirected"):
                break
        return out
    return run


def test_path_order_is_xdp_then_tc_ingress_on_the_way_in_then_tc_egress_on_the_way_out():
    steps = bpf.path_steps(net_show(), CLI_IF, SRV_IF)
    assert [(s.iface, s.hook, s.prog_name) for s in steps] == [
        (CLI_IF, "ingress", "cil_from_container"), (SRV_IF, "egress", "cil_to_container")]
    xdp = parse_net_show('[{"xdp":[{"devname":"%s","ifindex":3,"mode":"generic","id":7,"name":"x"}],"tc":[]}]' % CLI_IF).records
    assert [s.kind for s in bpf.path_steps(list(xdp) + list(net_show()), CLI_IF, SRV_IF)] == ["xdp", "tc", "tc"]
    assert bpf.path_steps(net_show(), None, None) == []


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_packet_bytes_are_a_valid_frame(proto):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    raw = bpf.packet_bytes({**PKT, "proto": proto, "ip_id": 0xC1A0})
    p = Ether(raw)
    assert p.src == PKT["src_mac"] and p.dst == PKT["dst_mac"]
    ip = p[IP]
    assert (ip.src, ip.dst, ip.id, ip.ttl) == (PKT["src"], PKT["dst"], 0xC1A0, 64)
    l4 = ip.payload
    assert (l4.sport, l4.dport) == (40001, 8080)
    ip_sum, l4_sum = ip.chksum, l4.chksum
    del ip.chksum, l4.chksum
    again = Ether(bytes(p))
    assert again[IP].chksum == ip_sum and again[IP].payload.chksum == l4_sum


def test_test_run_attr_layout_matches_uapi():
    a = bpfsys.test_run_attr(5, data_in=0x1000, data_size_in=54, data_out=0x2000, data_size_out=4096,
                             ctx_in=0x3000, ctx_size_in=192, ctx_out=0x4000, ctx_size_out=192, repeat=1)
    assert len(a) == bpfsys.ATTR_SIZE
    assert struct.unpack_from("=IIIIQQII", a, 0) == (5, 0, 54, 4096, 0x1000, 0x2000, 1, 0)
    assert struct.unpack_from("=IIQQII", a, 40) == (192, 192, 0x3000, 0x4000, 0, 0)
    back = bytearray(a)
    struct.pack_into("=I", back, 4, 2)
    struct.pack_into("=I", back, 12, 54)
    struct.pack_into("=I", back, 36, 812)
    assert bpfsys.parse_test_run_attr(bytes(back)) == (2, 54, 812, 192)
    ctx = bytearray(192)
    struct.pack_into("=I", ctx, bpfsys.SKB_MARK_OFF, 0x3A990200)
    assert bpfsys.TestRun(0, 1, b"", bytes(ctx)).mark == 0x3A990200


@pytest.mark.parametrize("kind,rc,name,verdict", [
    ("tc", 0, "TC_ACT_OK", "forwarded"), ("tc", 2, "TC_ACT_SHOT", "dropped"), ("tc", 7, "TC_ACT_REDIRECT", "redirected"),
    ("tc", 0xFFFFFFFF, "TC_ACT_UNSPEC", "forwarded"), ("xdp", 1, "XDP_DROP", "dropped"), ("xdp", 2, "XDP_PASS", "forwarded"),
    ("xdp", 4, "XDP_REDIRECT", "redirected"), ("tc", 99, "TC rc 99", "unknown")])
def test_return_codes(kind, rc, name, verdict):
    assert (bpf.rc_name(kind, rc), bpf.rc_verdict(kind, rc)) == (name, verdict)


def test_cilium_allowed_packet_names_the_policy_map_entry_from_ground_truth():
    hops = bpf.bpf_hops(PKT, netns="cnit-trc2-node", ifaces=(CLI_IF, SRV_IF), attachments=net_show(),
                        runner=recorded_lookups(), cilium=MAPS, ground_truth=truth(), test_run=fake_run([0, 0]))
    assert [h.detail["prog_name"] for h in hops] == ["cil_from_container", "cil_to_container"]
    assert [h.verdict for h in hops] == [None, "forwarded"]
    d = hops[1]
    assert d.policy.source == "lab ground truth" and d.policy.kind == "CiliumNetworkPolicy"
    assert d.policy.detail["key"] == {"identity": 48312, "dport": 8080, "proto": 6, "direction": "ingress"}
    assert d.policy.detail["value"]["deny"] is False and d.policy.detail["value"]["packets"] >= 1
    assert "identity=48312 dport=8080 proto=6 ingress" in d.rule and "(client)" in d.policy.name
    assert d.cost_ns == 500.0 and "replay" in d.detail and d.detail["rc_name"] == "TC_ACT_OK"


def test_cilium_denied_packet_is_a_default_deny_with_every_key_tried():
    pkt = {**PKT, "dport": 9090}
    hops = bpf.bpf_hops(pkt, netns="cnit-trc2-node", ifaces=(CLI_IF, SRV_IF), attachments=net_show(),
                        runner=recorded_lookups(), cilium=MAPS, ground_truth=truth(), test_run=fake_run([0, 2]))
    d = hops[-1]
    assert d.verdict == "dropped" and d.detail["rc_name"] == "TC_ACT_SHOT"
    assert d.policy.kind == "default-deny" and d.policy.source == "lab ground truth"
    assert d.policy.detail["tried"][0] == {"identity": 48312, "dport": 9090, "proto": 6, "direction": "ingress"}
    assert len(d.policy.detail["tried"]) == 6 and "no entry" in d.rule


def test_without_ground_truth_the_entry_itself_is_the_policy_and_unlabelled_identity_is_a_number():
    maps = bpf.CiliumMaps(POLICY, IPCACHE)
    hops = bpf.bpf_hops(PKT, netns="cnit-trc2-node", ifaces=(CLI_IF, SRV_IF), attachments=net_show(),
                        runner=recorded_lookups(), cilium=maps, test_run=fake_run([0, 0]))
    p = hops[-1].policy
    assert p.source == "policy map key" and p.name == "allow identity 48312 -> 8080/6 ingress"


def test_replay_stops_at_the_first_drop_and_decides_there():
    hops = bpf.bpf_hops(PKT, netns="cnit-trc2-node", ifaces=(CLI_IF, SRV_IF), attachments=net_show(),
                        runner=RecordedRunner({}), test_run=fake_run([2, 0]))
    assert len(hops) == 1 and hops[0].verdict == "dropped" and "returned TC_ACT_SHOT" in hops[0].rule
    assert hops[0].policy.kind == "unknown" and "cannot be named" in hops[0].policy.detail["note"]


def test_proxy_mark_is_a_redirect():
    def run(steps, data, netns):
        ctx = bytearray(bpfsys.SKB_CTX_SIZE)
        struct.pack_into("=I", ctx, bpfsys.SKB_MARK_OFF, bpf.MARK_MAGIC_TO_PROXY | (15001 << 16))
        return [(steps[0], bpfsys.TestRun(0, 900, data, bytes(ctx))),
                (steps[1], bpfsys.TestRun(0, 300, data, bytes(bpfsys.SKB_CTX_SIZE)))]
    hops = bpf.bpf_hops(PKT, netns="n", ifaces=(CLI_IF, SRV_IF), attachments=net_show(), runner=RecordedRunner({}),
                        test_run=run)
    assert hops[0].verdict == "redirected" and hops[0].detail["to_proxy_port"] == 15001
    assert hops[1].verdict is None


def test_failed_test_run_is_reported_not_raised():
    def run(steps, data, netns):
        return [(steps[0], OSError(1, "Operation not permitted"))]
    hops = bpf.bpf_hops(PKT, netns="n", ifaces=(CLI_IF, SRV_IF), attachments=net_show(), runner=RecordedRunner({}),
                        test_run=run)
    assert hops[0].verdict is None and "test-run failed" in hops[0].what


def test_lpm_policy_keys_and_lookup_order_for_newer_cilium():
    from cnitrace.collectors.cilium.parse import decode_policy_key
    k = bpf.policy_key(48312, 8080, 6, key_size=12)
    assert len(k) == 12 and decode_policy_key(k) == (48312, "ingress", 6, 8080, 64)
    assert decode_policy_key(bpf.policy_key(48312, 8080, 6)) == (48312, "ingress", 6, 8080, None)
    assert bpf.lookup_order(7, 80, 6, key_size=12) == [(7, 80, 6), (0, 80, 6)]
    assert bpf.lookup_order(7, 80, 6)[:3] == [(7, 80, 6), (7, 0, 6), (7, 0, 0)]


def test_discover_finds_the_destination_endpoints_policy_map():
    root = "/sys/fs/bpf/tc/globals"
    value = struct.pack("<IHHII", 12, 0, 1234, 0, 0)
    lxc = ("bpftool", "-j", "map", "lookup", "pinned", f"{root}/cilium_lxc", "key", *bpf._hexargs(bpf.endpoint_key("10.0.1.5")))
    show = ("bpftool", "-j", "map", "show", "pinned", f"{root}/cilium_policy_v2_01234")
    r = RecordedRunner({lxc: json.dumps({"key": [], "value": [f"0x{b:02x}" for b in value]}),
                        show: json.dumps({"id": 9, "type": "lpm_trie", "bytes_key": 12, "bytes_value": 8})})
    present = {f"{root}/cilium_policy_v2_01234", f"{root}/cilium_ipcache_v2"}
    maps = bpf.CiliumMaps.discover("10.0.1.5", runner=r, exists=present.__contains__)
    assert maps == bpf.CiliumMaps(f"{root}/cilium_policy_v2_01234", f"{root}/cilium_ipcache_v2", {}, 12)
    assert bpf.CiliumMaps.discover("10.0.1.5", runner=r, exists=lambda p: False) is None
    r = RecordedRunner({lxc: Completed(lxc, 254, "null", "")})
    assert bpf.CiliumMaps.discover("10.0.1.5", runner=r) is None

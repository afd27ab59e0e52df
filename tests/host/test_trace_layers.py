"""Host tier: the OVS and BPF layers of `cnitrace trace` on the antrea and cilium labs.

Antrea: ofproto/trace against the lab's own ovs-vswitchd names the deciding table and flow and
the ground-truth policy, and leaves the flow counters alone (it simulates). Cilium: each tc
program on the path is replayed on the exact packet with BPF_PROG_TEST_RUN (rc, run time), the
deciding policy-map entry is the ground truth's, and the replay's one side effect is stated and
exact (the entry's counter +1). Both: the node is as it was after the lab is down.
"""

from __future__ import annotations

import subprocess

import pytest

from cnitrace.lab import manager
from cnitrace.trace import bpf, ovs
from tests.host.test_lab_cilium import drops, entry_packets
from tests.support.nodestate import settled_node_state


@pytest.fixture
def nothing_left():
    """Snapshot the node; the returned check(lab name) asserts that every difference after the
    lab is down is foreign to it. Scoped to the lab's name (its namespaces, OVS rundir, pins,
    state records, processes) because other runs share this node and change it meanwhile; the
    trace layers themselves create no kernel object (ofproto/trace simulates, test-run fds close)."""
    before = settled_node_state()

    def flat(v) -> set[str]:
        if isinstance(v, dict):
            return {f"{k}: {line}" for k, x in v.items() for line in str(x).splitlines()}
        if isinstance(v, (list, tuple)):
            return {str(x) for x in v}
        return set(str(v).splitlines())

    def check(name: str) -> None:
        after = settled_node_state()
        left = {k: sorted(x for x in flat(after[k]) - flat(before.get(k)) if name in x) for k in after}
        assert not any(left.values()), {k: v for k, v in left.items() if v}
    return check


def packet(lab, proto: str, dport: int, sport: int) -> dict:
    cli, srv = lab.topo.clients[0], lab.topo.server
    return {"proto": proto, "src": cli.ip, "dst": srv.ip, "sport": sport, "dport": dport,
            "src_mac": cli.mac, "dst_mac": srv.mac}


def flow_packets(lab, cookie: int) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", lab.topo.extra["ovs_mgmt"],
                          f"cookie=0x{cookie:x}/-1"], capture_output=True, text=True, check=True).stdout
    return sum(int(tok.split("=")[1].rstrip(",")) for tok in out.split() if tok.startswith("n_packets="))


def deciding(hops):
    d = [h for h in hops if h.verdict]
    assert len(d) == 1, [(h.where, h.verdict) for h in hops]
    return d[0]


def test_antrea_trace_names_deciding_flow_and_policy(nothing_left, lab_factory):
    lab = lab_factory("antrea", 100)
    truth, extra = lab.truth, lab.topo.extra
    before = {p: flow_packets(lab, truth.allowed[p].cookie) for p in ("tcp", "udp")}
    for i, proto in enumerate(("tcp", "udp")):
        hops = ovs.ovs_hops(packet(lab, proto, lab.topo.allowed_port, 41000 + i), bridge=lab.topo.bridge,
                            in_port=lab.topo.clients[0].node_iface, ovs=extra, ground_truth=truth)
        d = deciding(hops)
        assert d.verdict == "forwarded"
        assert (d.detail["table_name"], int(d.detail["cookie"], 16)) == ("IngressRule", truth.allowed[proto].cookie)
        assert d.policy.source == "lab ground truth" and d.policy.detail["ground_truth"] == "allowed"
        assert d.policy.detail["proto"] == proto
        tables = [h.detail["table_name"] for h in hops if "table_name" in h.detail]
        assert tables.index("ConntrackZone") < tables.index("IngressRule") < tables.index("Output")
        assert hops[-1].detail["output_ports"] == [str(lab.topo.server.ofport)]
        assert all(h.t_ns is None for h in hops) and [h.order for h in hops] == sorted(h.order for h in hops)

        hops = ovs.ovs_hops(packet(lab, proto, lab.topo.denied_port, 42000 + i), bridge=lab.topo.bridge,
                            in_port=lab.topo.clients[0].ofport, ovs=extra, ground_truth=truth)
        d = deciding(hops)
        assert d.verdict == "dropped" and d.detail["table_name"] == truth.denied.table
        assert int(d.detail["cookie"], 16) == truth.denied.cookie
        assert d.policy.kind == "default-deny" and d.policy.source == "lab ground truth"
        assert hops[-1].what == "datapath actions: drop"
    # ofproto/trace simulates: the policy flows' counters did not move
    assert {p: flow_packets(lab, truth.allowed[p].cookie) for p in ("tcp", "udp")} == before
    # an established packet is decided by the ct_state=+est bypass, before the policy tables
    hops = ovs.ovs_hops(packet(lab, "tcp", lab.topo.allowed_port, 43000), bridge=lab.topo.bridge,
                        in_port=lab.topo.clients[0].ofport, ovs=extra, ground_truth=truth,
                        extra_args=("--ct-next", "trk,est"))
    d = deciding(hops)
    assert d.policy.kind == "established" and d.detail["table_name"] == "AntreaPolicyIngressRule"
    # the lab wrapper finds the port, MACs and ground truth itself; no tc/XDP program on this path
    bare = {"proto": "tcp", "src": lab.topo.clients[0].ip, "dst": lab.topo.server.ip, "sport": 44000,
            "dport": lab.topo.denied_port}
    assert deciding(ovs.ovs_hops_for_lab(lab, bare)).policy.detail["ground_truth"] == "denied"
    assert bpf.bpf_hops_for_lab(lab, bare) == []
    manager.down(lab.spec.name)
    nothing_left(lab.spec.name)


@pytest.mark.requires("tc_bpf")
def test_cilium_trace_replays_programs_and_names_policy_map_entry(nothing_left, lab_factory):
    lab = lab_factory("cilium", 100)
    truth, topo = lab.truth, lab.topo
    maps = bpf.CiliumMaps.from_lab(topo.extra)
    for i, proto in enumerate(("tcp", "udp")):
        n0, d0 = entry_packets(lab, proto), drops(lab)
        hops = bpf.bpf_hops(packet(lab, proto, topo.allowed_port, 41000 + i), netns=topo.node_netns,
                            cilium=maps, ground_truth=truth)
        assert [(h.detail["iface"], h.detail["hook"], h.detail["prog_name"]) for h in hops] == [
            (topo.clients[0].node_iface, "ingress", "cil_from_container"),
            (topo.server.node_iface, "egress", "cil_to_container")]
        assert all(h.detail["rc_name"] == "TC_ACT_OK" and h.cost_ns > 0 for h in hops)
        d = deciding(hops)
        assert d is hops[-1] and d.verdict == "forwarded"
        assert d.policy.source == "lab ground truth" and d.policy.detail["ground_truth"] == "allowed"
        assert d.policy.detail["key"] == dict(truth.allowed[proto].key)
        assert d.policy.detail["policy_map"] == truth.allowed[proto].table
        # the replay's side effect, stated in every hop: exactly one packet on the entry, no drop
        assert entry_packets(lab, proto) == n0 + 1 and drops(lab) == d0
        assert "side effects" in d.detail["replay"]

        hops = bpf.bpf_hops(packet(lab, proto, topo.denied_port, 42000 + i), netns=topo.node_netns,
                            cilium=maps, ground_truth=truth)
        d = deciding(hops)
        assert d is hops[-1] and d.verdict == "dropped" and d.detail["rc_name"] == "TC_ACT_SHOT"
        assert d.detail["prog_name"] == "cil_to_container"
        assert d.policy.kind == "default-deny" and d.policy.source == "lab ground truth"
        assert d.policy.detail["tried"][0] == {"identity": truth.allowed[proto].key["identity"],
                                                "dport": topo.denied_port, "proto": truth.allowed[proto].key["proto"],
                                                "direction": "ingress"}
        assert drops(lab) == d0 + 1 and entry_packets(lab, proto) == n0 + 1
    bare = {"proto": "udp", "src": topo.clients[0].ip, "dst": topo.server.ip, "sport": 44000, "dport": topo.allowed_port}
    assert deciding(bpf.bpf_hops_for_lab(lab, bare)).policy.detail["ground_truth"] == "allowed"
    manager.down(lab.spec.name)
    nothing_left(lab.spec.name)


@pytest.mark.requires("tc_bpf")
def test_cilium_l7_trace_is_a_redirect_to_the_proxy_port_in_the_entry(nothing_left, lab_factory):
    lab = lab_factory("cilium", 10, l7=True)
    topo = lab.topo
    hops = bpf.bpf_hops_for_lab(lab, packet(lab, "tcp", topo.allowed_port, 45000))
    assert len(hops) == 1                                   # the packet leaves for the proxy here
    d = deciding(hops)
    assert d.verdict == "redirected" and d.detail["prog_name"] == "cil_from_container"
    assert d.detail["to_proxy_port"] == d.policy.detail["value"]["proxy_port"] == 15001
    assert d.policy.source == "lab ground truth"
    manager.down(lab.spec.name)
    nothing_left(lab.spec.name)

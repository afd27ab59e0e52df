"""vm tier: weave fastdp — the clients' node and the server's node joined by Open vSwitch kernel
datapaths and a VXLAN vport, programmed as the weave router programs them. Requests cross both
datapaths (counted by the flows the router would install), weave-npc's policy still decides on the
server's node (counted exactly at the ground truth), the profile times every packet's visit to the
kernel datapath, and `lab down` leaves no namespace and no datapath behind."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from cnitrace.collectors.ovs.parse import parse_dpctl_dump_flows, parse_dpctl_show_ports
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.state import StateFile
from cnitrace.lab import manager
from cnitrace.lab.datapath import read_packets
from cnitrace.lab.datapaths import weave_fastdp as fdp
from cnitrace.lab.model import LabSpec
from tests.host.test_lab_datapaths import http_get, scapy_send, udp_echo
from tests.vm.test_profile_vm import OVS_ONLY, _profile


def _netns() -> set[str]:
    return set(R.run(["ip", "netns", "list"]).stdout.split())


def _root_datapaths() -> str:
    return R.run(["ovs-dpctl", "dump-dps"], check=False).stdout


def _flows(ns: str):
    return parse_dpctl_dump_flows(R.run(["ovs-dpctl", "dump-flows", fdp.DATAPATH], netns=ns).stdout).records


def _vxlan_in_packets(ns: str) -> int:
    """Packets the flows keyed on the VXLAN vport forwarded: frames that came over the tunnel."""
    return sum(f.packets for f in _flows(ns) if f"in_port({fdp.PORTS[fdp.VXLAN_DEV]})" in f.match)


def test_fastdp_lab_forwards_across_kernel_datapaths_enforces_policy_and_leaves_nothing():
    ns_before, dps_before = _netns(), _root_datapaths()
    spec = LabSpec(name=f"cnit{uuid.uuid4().hex[:4]}", datapath="weave-fastdp", rules=1000, match_position=400,
                    pods=3)
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        n1, n2 = topo.node_netns, topo.extra["fastdp"]["node2_netns"]
        for ns in (n1, n2):
            show = R.run(["ovs-dpctl", "show", fdp.DATAPATH], netns=ns).stdout
            assert {p.name: p.dp_port for p in parse_dpctl_show_ports(show).records} == \
                {"datapath": 0, **fdp.PORTS}, show
            assert len(_flows(ns)) == 3 * len(topo.clients) + 1
        # the clients hang off node 2's weave bridge; node 1 keeps only the server's veth
        links2 = {l["ifname"]: l for l in json.loads(R.run(["ip", "-n", n2, "-j", "link", "show"]).stdout)}
        assert all(links2[c.node_iface].get("master") == "weave" for c in topo.clients)
        client, srv = topo.clients[0], topo.server.ip

        rc, body = http_get(client.netns, f"http://{srv}:{topo.allowed_port}/")
        assert rc == 0 and body.strip() == "cnitrace lab server"
        assert udp_echo(client.netns, srv, topo.allowed_port, 3) == 3
        assert http_get(client.netns, f"http://{srv}:{topo.denied_port}/", timeout=1)[0] != 0

        refs = {"tcp": truth.allowed["tcp"], "udp": truth.allowed["udp"], "denied": truth.denied}
        before = {k: read_packets(R, r) for k, r in refs.items()}
        tunnelled = _vxlan_in_packets(n1)
        sent = scapy_send(client, srv, f"tcp:{topo.allowed_port}:7", f"udp:{topo.allowed_port}:5",
                          f"tcp:{topo.denied_port}:4", f"udp:{topo.denied_port}:3")
        assert sent == 19
        after = {k: read_packets(R, r) for k, r in refs.items()}
        assert {k: after[k] - before[k] for k in refs} == {"tcp": 7, "udp": 5, "denied": 7}
        # every one of them came through the server node's datapath from the tunnel
        assert _vxlan_in_packets(n1) - tunnelled >= sent
        to_server = [f.match for f in _flows(n1) if f"in_port({fdp.PORTS[fdp.VXLAN_DEV]})" in f.match]
        assert all(re.search(r"tun_id=0x1002\b", m) for m in to_server), to_server   # peer 2 -> peer 1
    finally:
        manager.down(spec.name)
    assert _netns() == ns_before
    assert _root_datapaths() == dps_before
    assert StateFile().live(manager.owner(spec.name)) == []


def test_profile_times_each_packets_visit_to_the_fastdp_datapath():
    lab = manager.up(LabSpec(name=f"cnit{uuid.uuid4().hex[:4]}", datapath="weave-fastdp", rules=100))
    try:
        doc, root = _profile(lab, "probe", OVS_ONLY)
    finally:
        manager.down(lab.spec.name)
    ok = doc["backends"]["ovs_kernel"]
    assert ok["backend"] == "kprobe" and ok["hooks"]["ovs_dp_process_packet"] == "kprobe", ok
    sent = doc["traffic"]["packets_sent"]
    ovs = root.find("stage", "ovs")
    assert ovs is not None, [n.name for _, n in root.walk()]
    k = ovs.detail["kernel_datapath"]
    print("fastdp:", k, ovs.detail["lookups"])
    # requests enter the server's node at the VXLAN vport: each visits the datapath at least once
    assert k["visits"] >= sent and k["process"]["mean_ns"] > 0
    assert ovs.provenance == "measured" and ovs.measured_ns == pytest.approx(k["ns_per_packet"]) and ovs.measured_ns > 0
    server_dp = ovs.detail["lookups"][f"{lab.topo.node_netns}/system@{fdp.DATAPATH}"]
    assert server_dp["hit"] >= sent and server_dp["flows"] == 3 * len(lab.topo.clients) + 1

"""The inter-node overlay's plan (pure): what moves where, and which routes make the tunnel carry
pod-to-pod traffic, for a routed (calico) and a bridged (flannel) lab (no root)."""

from __future__ import annotations

from types import SimpleNamespace

from cnitrace.lab.datapaths import registry
from cnitrace.lab import topology
from cnitrace.lab.model import LabSpec
from cnitrace.lab.overlay import MTU, VNI, node2_netns, plan


def _lab(dp: str, pods: int = 2) -> SimpleNamespace:
    spec = LabSpec(name="ov", datapath=dp, pods=pods)
    return SimpleNamespace(spec=spec, topo=topology.plan(spec, registry.get(dp)))


def test_routed_lab_plan():
    lab = _lab("calico")
    p = plan(lab)
    clients = lab.topo.clients
    assert node2_netns("ov") == "cnit-ov-n2"
    assert p["move"] == [f"link set {c.node_iface} netns cnit-ov-n2" for c in clients]
    assert f"link add cnitvx0 type vxlan id {VNI} local 192.168.255.1 remote 192.168.255.2 dstport 4789 dev cnitu0" \
        in p["node"]
    for c in clients:
        assert f"route add {c.ip}/32 via 10.255.255.2 dev cnitvx0 onlink" in p["node"]
        assert f"route add {c.ip}/32 dev {c.node_iface} scope link" in p["n2"]
        assert f"link set {c.node_iface} mtu {MTU}" in p["n2"]
        assert f"net.ipv4.conf.{c.node_iface}.proxy_arp=1" in p["sysctl_n2"]
    assert "route add 10.65.0.0/24 via 10.255.255.1 dev cnitvx0 onlink" in p["n2"]
    assert lab.topo.server.node_iface not in " ".join(p["move"])      # the server stays with its policy
    assert p["sysctl_node"] == [] and p["pods"] == [c.netns for c in clients]


def test_bridged_lab_answers_arp_for_moved_clients():
    lab = _lab("flannel", pods=1)
    p = plan(lab)
    assert lab.topo.bridge and f"net.ipv4.conf.{lab.topo.bridge}.proxy_arp=1" in p["sysctl_node"]
    assert "route add 10.244.0.0/24 via 10.255.255.1 dev cnitvx0 onlink" in p["n2"]

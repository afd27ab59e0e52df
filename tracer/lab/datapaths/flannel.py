"""Flannel in miniature: pods on the cni0 bridge, no policy enforcement — the baseline.

Flannel ignores NetworkPolicy, so `--rules N` programs nothing (that is the baseline the study
measured); the only netfilter rules are flanneld's own FLANNEL-FWD accept chain and the
FLANNEL-POSTRTG masquerade chain. FLANNEL-FWD's first rule matches every packet *from* a pod,
so it counts the server's replies too (GroundTruth.counts_replies).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cnitrace.lab.datapath import Datapath, iptables_restore
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.topology import built, plumb_bridge, short_hash

if TYPE_CHECKING:
    from cnitrace.core.session import Session

CLUSTER_CIDR = "10.244.0.0/16"


def render_rules(topo: Topology) -> str:
    """flanneld's filter and nat chains (pure)."""
    c, node = CLUSTER_CIDR, topo.subnet
    fwd = '-m comment --comment "flanneld forward"'
    masq = '-m comment --comment "flanneld masq"'
    return "\n".join([
        "*filter", ":FLANNEL-FWD - [0:0]",
        f"-A FORWARD {fwd} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {c} {fwd} -j ACCEPT",
        f"-A FLANNEL-FWD -d {c} {fwd} -j ACCEPT",
        "COMMIT",
        "*nat", ":FLANNEL-POSTRTG - [0:0]",
        f"-A POSTROUTING {masq} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {node} -d {c} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {c} -d {node} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {c} -d {node} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {c} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {c} -d {c} {masq} -j MASQUERADE --random-fully",
        "COMMIT", ""])


class Flannel(Datapath):
    name = "flannel"
    description = "flannel: cni0 bridge, no policy (baseline); --rules is accepted and not enforced"
    tools = ("iptables-legacy-restore", "iptables-nft-restore")
    routed = False
    bridge = "cni0"
    backends = ("legacy", "nft")

    def node_iface_name(self, lab: str, index: int) -> str:
        return "veth" + short_hash("flannel", lab, f"p{index}", n=8)

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        plumb_bridge(r, topo)
        t0 = time.monotonic()
        iptables_restore(r, topo.node_netns, spec.backend, render_rules(topo))
        return built(r, topo, time.monotonic() - t0)

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        ref = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend, table="filter",
                         chain="FLANNEL-FWD", index=1, comment="flanneld forward")
        return GroundTruth(allowed={"tcp": ref, "udp": ref}, denied=None, evaluations={"tcp": 0, "udp": 0},
                           counts_replies=True, notes="no policy: every port is reachable")

"""Inter-node placement: the client pods move behind a second node joined to the lab's node by a
VXLAN overlay, so pod-to-pod traffic is encapsulated, crosses an underlay link and is
decapsulated before the server's node applies its policy — as between two real nodes.

The server and its policy stay on the lab's node (CNIs enforce ingress policy on the
destination node). The second node is a namespace `cnit-<lab>-n2` recorded under the lab's
owner before it is created, so `lab down` and `cnitrace cleanup` remove it with the lab; every
other object (underlay veth, VXLAN devices, routes) lives inside the lab's namespaces and
dies with them. VXLAN works on this kernel; GENEVE and WireGuard do not.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from cnitrace.core.errors import ToolError
from cnitrace.core.state import StateFile
from cnitrace.lab import manager
from cnitrace.lab.topology import node2_netns

if TYPE_CHECKING:
    from cnitrace.lab.manager import Lab
    from cnitrace.core.runner import Runner

UNDERLAY = ("192.168.255.1", "192.168.255.2")     # /30 on the underlay veth (node, node 2)
TUNNEL = ("10.255.255.1", "10.255.255.2")         # /30 on the VXLAN devices
VNI, VXLAN_PORT, MTU = 4242, 4789, 1450
DEVS = {"underlay": ("cnitu0", "cnitu1"), "vxlan": "cnitvx0"}


def plan(lab: "Lab") -> dict[str, list[str]]:
    """`ip -batch` lines per namespace and sysctls, from the lab's topology (pure)."""
    topo = lab.topo
    node, n2 = topo.node_netns, node2_netns(topo.lab)
    u0, u1 = DEVS["underlay"]
    vx = DEVS["vxlan"]
    subnet = ipaddress.IPv4Network(topo.subnet)
    node_cmds = [f"link add {u0} type veth peer name {u1} netns {n2}",
                 f"addr add {UNDERLAY[0]}/30 dev {u0}", f"link set {u0} up",
                 f"link add {vx} type vxlan id {VNI} local {UNDERLAY[0]} remote {UNDERLAY[1]} "
                 f"dstport {VXLAN_PORT} dev {u0}",
                 f"addr add {TUNNEL[0]}/30 dev {vx}", f"link set {vx} up"]
    n2_cmds = [f"addr add {UNDERLAY[1]}/30 dev {u1}", f"link set {u1} up", "link set lo up",
               f"link add {vx} type vxlan id {VNI} local {UNDERLAY[1]} remote {UNDERLAY[0]} "
               f"dstport {VXLAN_PORT} dev {u1}",
               f"addr add {TUNNEL[1]}/30 dev {vx}", f"link set {vx} up",
               # everything in the pod CIDR (and the node's own address) lives behind the tunnel ...
               f"route add {subnet} via {TUNNEL[0]} dev {vx} onlink",
               f"route add {topo.node_ip}/32 via {TUNNEL[0]} dev {vx} onlink",
               # ... and routed CNIs' fake gateway is answered by proxy ARP, as on the lab node
               "route add 169.254.1.1/32 dev lo"]
    move, pods = [], []
    for p in topo.clients:
        move.append(f"link set {p.node_iface} netns {n2}")
        n2_cmds += [f"link set {p.node_iface} mtu {MTU}", f"link set {p.node_iface} up",
                    f"route add {p.ip}/32 dev {p.node_iface} scope link"]
        node_cmds.append(f"route add {p.ip}/32 via {TUNNEL[1]} dev {vx} onlink")
        pods.append(p.netns)
    sysctls_n2 = ["net.ipv4.ip_forward=1"]
    for p in topo.clients:
        sysctls_n2 += [f"net.ipv4.conf.{p.node_iface}.proxy_arp=1", f"net.ipv4.neigh.{p.node_iface}.proxy_delay=0"]
    sysctls_node = []
    if topo.bridge:
        # bridged pods ARP for each other directly: the node now answers for the moved clients
        sysctls_node += [f"net.ipv4.conf.{topo.bridge}.proxy_arp=1", f"net.ipv4.neigh.{topo.bridge}.proxy_delay=0"]
    return {"move": move, "node": node_cmds, "n2": n2_cmds, "sysctl_n2": sysctls_n2, "sysctl_node": sysctls_node,
            "pods": pods}


def attach(lab: "Lab", *, runner: "Runner") -> "Lab":
    """Move the lab's client pods behind a second node over VXLAN; returns the lab with the
    overlay described in topology.extra["overlay"]."""

    topo = lab.topo
    n2 = node2_netns(topo.lab)
    if len(n2) > 40:
        raise ToolError(f"namespace name too long: {n2}")
    p = plan(lab)
    StateFile().record(manager.owner(topo.lab), "netns", n2)     # before it exists
    runner.run(["ip", "netns", "add", n2])
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(p["move"]) + "\n")
    # The moved node-side veths left the node: their /32 routes there went with them.
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(p["node"]) + "\n")
    runner.run(["ip", "-n", n2, "-batch", "-"], input="\n".join(p["n2"]) + "\n")
    runner.run(["sysctl", "-q", "-w", *p["sysctl_n2"]], netns=n2)
    if p["sysctl_node"]:
        runner.run(["sysctl", "-q", "-w", *p["sysctl_node"]], netns=topo.node_netns)
    for ns in p["pods"]:
        runner.run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(MTU)])
    # Neighbours learnt before the move point at MACs that are no longer on this node's link.
    for ns in (topo.server.netns, topo.node_netns, *p["pods"]):
        runner.run(["ip", "-n", ns, "neigh", "flush", "all"], check=False)
    extra = {**topo.extra, "overlay": {"node2_netns": n2, "vxlan": DEVS["vxlan"], "vni": VNI,
                                       "underlay": list(UNDERLAY), "tunnel": list(TUNNEL), "mtu": MTU}}
    return dataclasses.replace(lab, topo=dataclasses.replace(topo, extra=extra))

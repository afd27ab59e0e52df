"""Weave Net's fast datapath (fastdp) in miniature: two nodes whose weave bridges are joined by
Open vSwitch *kernel* datapaths and a VXLAN vport, programmed as the weave router programs them
(weaveworks/weave router/fastdp.go), with weave-npc's policy (lab/datapaths/weave.py) on the
server's node.

- Each node has the `weave` bridge; its port `vethwe-bridge` is the veth peer of
  `vethwe-datapath`, a vport of the ODP datapath named `datapath` (weave's "bridged_fastdp").
- The VXLAN vport `vxlan-6784` (weave's port 6783 + 1) carries frames between the nodes. The VNI
  names the source and destination peers' short ids (src | dst << 12, `tunnelIDFor`) and the
  outer header is set as the router sets it: tos 0, ttl 64, DF, no checksum.
- Flows are what the router installs on a miss: keyed on the ingress vport and the frame's
  source and destination MACs (from the tunnel also its id and endpoints). No router runs here,
  so they are installed up front for the lab's MAC pairs and their broadcasts; a frame no flow
  covers misses, and with nobody listening for upcalls the kernel counts it as lost.
- The client pods live on node 2 (`cnit-<lab>-n2`, recorded before it exists), the server and
  weave-npc's chains on the lab's node (ingress policy is enforced where the server is), so every
  request crosses node 2's datapath, the underlay, and the server node's datapath, then the bridge
  and WEAVE-NPC.

The VXLAN vport is a metadata-mode ("external") VXLAN device attached as a netdev vport: what the
kernel's own vxlan vport type creates underneath. `ovs-dpctl` (openvswitch-switch) programs the
datapaths; no ovs-vswitchd runs, as on a weave node. Datapaths, vports and flows live in the lab's
namespaces and die with them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnitrace.collectors.ovs.parse import parse_dpctl_show_ports
from cnitrace.core.errors import ToolError
from cnitrace.lab.datapaths.weave import BRIDGE, MTU, Weave, plumb_sleeve, router_port_cmds
from cnitrace.lab.model import LabSpec, Topology
from cnitrace.lab.topology import node2_netns

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session

DATAPATH = "datapath"                 # the router's ODP datapath name
DP_PORT = "vethwe-datapath"           # vport 1: the bridge's veth peer
VXLAN_UDP = 6784                      # weave's port 6783 + 1
VXLAN_DEV = f"vxlan-{VXLAN_UDP}"      # vport 2
PORTS = {DP_PORT: 1, VXLAN_DEV: 2}    # vport numbers, in the order they are added (0: the datapath itself)
UNDERLAY_DEVS = ("weu0", "weu1")      # the nodes' "eth0": a veth pair, node 1 end first
UNDERLAY = ("192.168.254.1", "192.168.254.2")
SHORT_IDS = (1, 2)                    # mesh peer short ids of node 1 (server) and node 2 (clients)
BROADCAST = "ff:ff:ff:ff:ff:ff"


def vni(src_peer: int, dst_peer: int) -> int:
    """The VXLAN VNI the weave router puts on a frame from src_peer to dst_peer (pure)."""
    return (src_peer & 0xFFF) | (dst_peer & 0xFFF) << 12


@dataclasses.dataclass(frozen=True)
class Flow:
    netns: str
    key: str
    actions: str


def _tunnel_out(src: str, dst: str, tun_id: int) -> str:
    return (f"set(tunnel(tun_id={tun_id:#x},src={src},dst={dst},tos=0,ttl=64,tp_dst={VXLAN_UDP},"
            f"flags(df))),{PORTS[VXLAN_DEV]}")


def flows(topo: Topology) -> list[Flow]:
    """The flows the two routers hold for the lab's traffic (pure): per client, its frames to the
    server and its broadcasts (ARP), and the server's frames to it; once, the server's broadcasts.
    Each is an encapsulating flow on the sending node and a delivering one on the receiving node:
    3 x clients + 1 per node."""
    n1, n2 = topo.node_netns, node2_netns(topo.lab)
    one, two = SHORT_IDS
    u1, u2 = UNDERLAY
    srv = topo.server.mac

    def pair(src_ns: str, dst_ns: str, src_mac: str, dst_mac: str, local: str, remote: str, tun_id: int) -> list[Flow]:
        eth = f"eth(src={src_mac},dst={dst_mac})"
        return [Flow(src_ns, f"in_port({PORTS[DP_PORT]}),{eth}", _tunnel_out(local, remote, tun_id)),
                Flow(dst_ns, f"in_port({PORTS[VXLAN_DEV]}),tunnel(tun_id={tun_id:#x},src={local},dst={remote},ttl=64/0),"
                             f"{eth}", str(PORTS[DP_PORT]))]

    out: list[Flow] = []
    for c in topo.clients:
        for dst in (srv, BROADCAST):
            out += pair(n2, n1, c.mac, dst, u2, u1, vni(two, one))
        out += pair(n1, n2, srv, c.mac, u1, u2, vni(one, two))
    out += pair(n1, n2, srv, BROADCAST, u1, u2, vni(one, two))
    return out


def plan(topo: Topology) -> dict[str, list[str]]:
    """`ip -batch` lines: the underlay and each node's datapath devices, node 2's weave bridge and
    the clients moved onto it (pure). The VXLAN devices stay down until they are vports, so no
    tunnelled frame meets a device the datapath does not yet own."""
    n2 = node2_netns(topo.lab)
    d0, d1 = UNDERLAY_DEVS
    vx = f"link add {VXLAN_DEV} type vxlan external dstport {VXLAN_UDP}"
    node = [f"link add {d0} type veth peer name {d1} netns {n2}", f"addr add {UNDERLAY[0]}/30 dev {d0}",
            f"link set {d0} up", vx]
    node += [f"link set {c.node_iface} netns {n2}" for c in topo.clients]
    second = [f"addr add {UNDERLAY[1]}/30 dev {d1}", f"link set {d1} up", "link set lo up",
              f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up", *router_port_cmds(BRIDGE, DP_PORT), vx]
    for c in topo.clients:
        second += [f"link set {c.node_iface} mtu {MTU}", f"link set {c.node_iface} master {BRIDGE}",
                   f"link set {c.node_iface} up"]
    return {"node": node, "n2": second}


def _dpctl(runner: "Runner", netns: str, *args: str) -> str:
    return runner.run(["ovs-dpctl", *args], netns=netns).stdout


def _datapath(runner: "Runner", netns: str) -> None:
    """The router's datapath with its two vports, checked to carry the numbers the flows name."""
    _dpctl(runner, netns, "add-dp", DATAPATH)
    for port in PORTS:
        _dpctl(runner, netns, "add-if", DATAPATH, port)
    runner.run(["ip", "-n", netns, "link", "set", VXLAN_DEV, "up"])
    got = {p.name: p.dp_port for p in parse_dpctl_show_ports(_dpctl(runner, netns, "show", DATAPATH)).records}
    if any(got.get(name) != no for name, no in PORTS.items()):
        raise ToolError(f"weave fastdp: datapath ports in {netns} are {got}, expected {PORTS}")


def load_module(runner: "Runner") -> None:
    """The openvswitch module, loaded as the weave router loads it (the `ovs_kernel` check has
    already said it is loaded or loadable)."""
    if not Path("/sys/module/openvswitch").exists():
        runner.run(["modprobe", "openvswitch"])


class WeaveFastdp(Weave):
    name = "weave-fastdp"
    description = ("Weave Net (fastdp): weave bridges joined by Open vSwitch kernel datapaths and a VXLAN vport "
                   "between two nodes; weave-npc's chains and ipsets on the server's node")
    tools = (*Weave.tools, "ovs-dpctl", "modprobe")
    caps = ("ovs_kernel",)

    def plumb(self, runner: "Runner", topo: Topology) -> None:
        plumb_sleeve(runner, topo, router_port=DP_PORT)

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        load_module(r)
        topo = super().build(session, topo, spec)       # node 1: bridge, router port, weave-npc
        n2 = node2_netns(topo.lab)
        session.track("netns", n2)          # before it exists
        r.run(["ip", "netns", "add", n2])
        p = plan(topo)
        r.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(p["node"]) + "\n")
        r.run(["ip", "-n", n2, "-batch", "-"], input="\n".join(p["n2"]) + "\n")
        for ns in (topo.node_netns, n2):
            _datapath(r, ns)
        fl = flows(topo)
        for f in sorted(fl, key=lambda f: "tunnel(" not in f.key):     # receiving sides first
            _dpctl(r, f.netns, "add-flow", DATAPATH, f.key, f.actions)
        # Neighbours learnt on the one-node bridge before the move point nowhere now.
        for ns in (topo.server.netns, *(c.netns for c in topo.clients)):
            r.run(["ip", "-n", ns, "neigh", "flush", "all"], check=False)
        return dataclasses.replace(topo, extra={**topo.extra, **fastdp_extra(topo, r, len(fl))})


def fastdp_extra(topo: Topology, runner: "Runner", n_flows: int) -> dict[str, Any]:
    """What the profile and the tests need to know: node 2, the vports, where requests enter the
    server's node (the VXLAN vport), and the moved clients."""
    links = {l["ifname"]: l for l in json.loads(runner.run(["ip", "-n", topo.node_netns, "-j", "link", "show"]).stdout)}
    vports = {name: int(links[name]["ifindex"]) for name in PORTS}
    return {"fastdp": {"node2_netns": node2_netns(topo.lab), "datapath": f"system@{DATAPATH}", "vports": vports,
                       "vni": {"to_server": vni(SHORT_IDS[1], SHORT_IDS[0]), "to_clients": vni(*SHORT_IDS)},
                       "underlay": list(UNDERLAY), "flows": n_flows},
            "moved_clients": [c.name for c in topo.clients],
            "entry": [{"name": VXLAN_DEV, "ifindex": vports[VXLAN_DEV], "kind": "vxlan"}]}

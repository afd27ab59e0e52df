"""Planning (pure) and plumbing (I/O) of the lab's namespaces, veths, addresses and routes.

`plan()` decides every name and address from the spec alone, so the ground truth and the
fixtures are known before anything is built. The plumbing functions only ever act inside
the lab's own namespaces: veth pairs are created directly in the node netns with their peer
in the pod netns, so nothing appears in the host namespace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cnitrace.core.errors import UsageError
from cnitrace.lab.model import MAX_PODS, Pod, Topology, filler_ranges

if TYPE_CHECKING:
    from cnitrace.lab.datapath import Datapath
    from cnitrace.lab.model import LabSpec
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
ROUTED_SUBNET = "10.65.0.0/24"      # a Calico-style IPAM block; pods get /32s
BRIDGED_SUBNET = "10.244.0.0/24"    # a flannel/kube-router-style node podCIDR
CALICO_GATEWAY = "169.254.1.1"      # Calico's fake next hop, answered by proxy ARP


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"bad lab name {name!r}: use 1-16 lowercase letters, digits or '-'")
    return name


def node_netns(lab: str) -> str:
    return f"cnit-{lab}-node"


def pod_netns(lab: str, index: int) -> str:
    return f"cnit-{lab}-p{index}"


def node2_netns(lab: str) -> str:
    """A second node's namespace: the inter-node overlay's, or weave fastdp's clients' node."""
    return f"cnit-{lab}-n2"


def short_hash(*parts: object, n: int = 11) -> str:
    """Deterministic hex, like the CNIs' hashes of the workload endpoint id."""
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:n]


def pod_mac(ip: str) -> str:
    """The 0a:58:<ip> MAC the reference CNI plugins derive from the pod IP."""
    a = ipaddress.IPv4Address(ip).packed
    return "0a:58:" + ":".join(f"{b:02x}" for b in a)


def plan(spec: "LabSpec", dp: "Datapath") -> Topology:
    """Every name and address of the lab, from the spec alone (pure)."""
    validate_name(spec.name)
    if not 1 <= spec.pods <= MAX_PODS:
        raise UsageError(f"--pods {spec.pods} out of range: 1..{MAX_PODS}")
    subnet = ipaddress.IPv4Network(getattr(dp, "subnet", "") or (ROUTED_SUBNET if dp.routed else BRIDGED_SUBNET))
    hosts = list(subnet.hosts())
    pods = []
    for i in range(spec.pods + 1):
        ip = str(hosts[i + 1])             # .2, .3, ...; .1 is the bridge gateway when bridged
        pods.append(Pod(
            name=f"p{i}", role="server" if i == 0 else "client", netns=pod_netns(spec.name, i),
            ip=ip, prefix=32 if dp.routed else subnet.prefixlen,
            gateway=CALICO_GATEWAY if dp.routed else str(hosts[0]), mac=pod_mac(ip),
            node_iface=dp.node_iface_name(spec.name, i),
        ))
    return Topology(lab=spec.name, node_netns=node_netns(spec.name), pods=tuple(pods), subnet=str(subnet),
                    bridge="" if dp.routed else dp.bridge, filler_ranges=filler_ranges(spec.rules))


# --- plumbing (I/O) ------------------------------------------------------------------------------

def create_namespaces(session: "Session", topo: Topology) -> None:
    """Node and pod namespaces, each recorded before it is created; lo up; forwarding on in the
    node; and the node's own address on lo (the source of node-to-pod traffic; no dummy driver here)."""
    r = session.runner
    for ns in (topo.node_netns, *(p.netns for p in topo.pods)):
        session.track("netns", ns)
        r.run(["ip", "netns", "add", ns])
        r.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    # Namespace-private sysctls: they vanish with the namespace, so they need no record.
    r.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=topo.node_netns)
    r.run(["ip", "-n", topo.node_netns, "addr", "add", f"{topo.node_ip}/32", "dev", "lo"])


def create_veths(runner: "Runner", topo: Topology) -> None:
    """One veth pair per pod, made in the node netns with the peer (eth0) placed in the pod netns."""
    lines = [f"link add {p.node_iface} type veth peer name {p.iface} netns {p.netns} address {p.mac}"
             for p in topo.pods]
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(lines) + "\n")


def _pod_up(runner: "Runner", pod: Pod, routes: list[str]) -> None:
    cmds = [f"addr add {pod.ip}/{pod.prefix} dev {pod.iface}", f"link set {pod.iface} up", *routes]
    runner.run(["ip", "-n", pod.netns, "-batch", "-"], input="\n".join(cmds) + "\n")


def plumb_routed(runner: "Runner", topo: Topology, node_mac: str | None = None) -> None:
    """Calico/Cilium style: pod /32, default route via 169.254.1.1 answered by proxy ARP on the
    node-side veth, and a /32 host route per pod in the node netns."""
    # Proxy ARP answers only for targets the node routes out of *another* interface; a real
    # node's default route via its NIC provides that. Here a route to the gateway via lo does.
    node_cmds = [f"route add {CALICO_GATEWAY}/32 dev lo"]
    for p in topo.pods:
        if node_mac:
            node_cmds.append(f"link set {p.node_iface} address {node_mac}")
        node_cmds += [f"link set {p.node_iface} up", f"route add {p.ip}/32 dev {p.node_iface} scope link"]
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(node_cmds) + "\n")
    sysctls = []
    for p in topo.pods:
        sysctls += [f"net.ipv4.conf.{p.node_iface}.proxy_arp=1", f"net.ipv4.neigh.{p.node_iface}.proxy_delay=0"]
    runner.run(["sysctl", "-q", "-w", *sysctls], netns=topo.node_netns)
    for p in topo.pods:
        _pod_up(runner, p, [f"route add {p.gateway} dev {p.iface} scope link",
                            f"route add default via {p.gateway} dev {p.iface}"])


def plumb_bridge(runner: "Runner", topo: Topology) -> None:
    """Flannel/kube-router style: node-side veths enslaved to a bridge that owns the gateway address.

    bridge-nf-call-iptables is per network namespace (kernel >= 5.3) and defaults to 1, so
    bridged pod-to-pod traffic traverses the node netns's iptables FORWARD chain, as on a node.
    """
    gw = topo.pods[0].gateway
    prefix = ipaddress.IPv4Network(topo.subnet).prefixlen
    cmds = [f"link add {topo.bridge} type bridge", f"addr add {gw}/{prefix} dev {topo.bridge}",
            f"link set {topo.bridge} up"]
    for p in topo.pods:
        cmds += [f"link set {p.node_iface} master {topo.bridge}", f"link set {p.node_iface} up"]
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(cmds) + "\n")
    if not Path("/proc/sys/net/bridge").exists():
        # what a bridged CNI does on a node without it (the vm tier's stock kernel): without
        # br_netfilter bridged traffic would bypass the policy in FORWARD
        runner.run(["modprobe", "br_netfilter"])
    runner.run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"], netns=topo.node_netns)
    for p in topo.pods:
        _pod_up(runner, p, [f"route add default via {p.gateway} dev {p.iface}"])


def built(runner: "Runner", topo: Topology, program_seconds: float, **extra: object) -> Topology:
    """The topology as built: node-side links read back, plus how long policy programming took."""
    topo = read_links(runner, topo)
    return dataclasses.replace(topo, extra={**topo.extra, "program_seconds": program_seconds, **extra})


def read_links(runner: "Runner", topo: Topology) -> Topology:
    """Fill in node-side ifindexes and MACs as the kernel assigned them."""
    out = runner.run(["ip", "-n", topo.node_netns, "-j", "link", "show"]).stdout
    by_name = {l["ifname"]: l for l in json.loads(out or "[]")}
    for p in topo.pods:
        link = by_name.get(p.node_iface)
        if link:
            topo = topo.with_pod(dataclasses.replace(p, node_ifindex=int(link["ifindex"]), node_mac=link.get("address", "")))
    return topo


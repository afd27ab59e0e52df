"""Weave Net in miniature: the weave router's sleeve bridge and weave-npc's policy chains and ipsets.

As weaveworks/weave programs a node (net/bridge.go ConfigureIPTables, prog/weave-npc/main.go
createBaseRules, npc/rule.go, npc/namespace.go bypassRules, npc/selector.go; compare
tests/fixtures/iptables/weavenet_weave-3452.save):

- the `weave` Linux bridge owns the gateway address; pods hang off it by `vethwepl<id>` veths, and
  the sleeve router's port is the `vethwe-bridge` / `vethwe-pcap` veth pair (the router captures
  on vethwe-pcap; no router process runs here, so nothing leaves the node through it);
- filter FORWARD: `-i weave` → WEAVE-NPC-EGRESS, `-o weave` → WEAVE-NPC, then NFLOG group 86 and
  DROP for what WEAVE-NPC did not accept (the lab's denied packet is counted at that DROP);
- WEAVE-NPC: ESTABLISHED accept, multicast, bridged-to-router accept, NEW → WEAVE-NPC-DEFAULT
  (per namespace: `-m set --match-set <ingress-default-allow> dst -j ACCEPT`), NEW →
  WEAVE-NPC-INGRESS, one `-p <proto> -m set --match-set <src> src -m set --match-set <dst> dst
  --dport <port> -m comment --comment "<src> -> <dst> (ingress)" -j ACCEPT` per policy rule;
- egress (no egress policy in the lab): WEAVE-NPC-EGRESS → WEAVE-NPC-EGRESS-DEFAULT marks every
  pod of a default-allow namespace with 0x40000 (WEAVE-NPC-EGRESS-ACCEPT) and returns;
- ipsets `weave-<shortName>` (sha1 in base 85, as npc/shortname.go): per namespace the all-pods
  set and the ingress/egress default-allow sets, per policy selector one hash:ip set; plus the
  router's `weaver-no-masq-local` hash:net for the nat WEAVE chain.

The lab's N filler rules become N ingress rules in WEAVE-NPC-INGRESS in policy order; a filler
range is one rule with `--dport lo:hi` (weave-npc passes a NetworkPolicy port through to
iptables as is and has no endPort, so a range is the lab's one-rule stand-in for it). An allowed
NEW packet is matched against position+1 ingress rules, each TCP rule running two ipset lookups
for a TCP packet (a UDP packet stops at `-p tcp`). ipsets are per network namespace, so every
set lives and dies with the lab's node namespace.

fastdp (the `datapath` Open vSwitch kernel datapath in place of the sleeve port) is the
`weave-fastdp` datapath (lab/datapaths/weave_fastdp.py); it needs the openvswitch kernel module.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cnitrace.lab.datapaths.mark_return import MarkReturnDatapath
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import PortRule, allow_index, port_rules
from cnitrace.lab.topology import plumb_bridge, short_hash

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner

BRIDGE = "weave"
BRIDGE_PORT = "vethwe-bridge"       # the router's port on the bridge (sleeve: peer vethwe-pcap)
PCAP_PORT = "vethwe-pcap"
SUBNET = "10.32.0.0/24"             # the first /24 of weave's default allocation range 10.32.0.0/12
ALLOC_RANGE = "10.32.0.0/12"
NAMESPACE = "default"
OTHER_NAMESPACES = ("kube-node-lease", "kube-public", "kube-system")   # as on any cluster: no pods here
SRC_SELECTOR = "role=client"
DST_SELECTOR = "role=server"
EGRESS_MARK = "0x40000/0x40000"
NFLOG_GROUP = 86
NO_MASQ_LOCAL = "weaver-no-masq-local"
MTU = 1376                          # weave's default MTU (net/bridge.go), room for the sleeve encapsulation

MAIN, DEFAULT, INGRESS = "WEAVE-NPC", "WEAVE-NPC-DEFAULT", "WEAVE-NPC-INGRESS"
EGRESS, EGRESS_DEFAULT = "WEAVE-NPC-EGRESS", "WEAVE-NPC-EGRESS-DEFAULT"
EGRESS_CUSTOM, EGRESS_ACCEPT = "WEAVE-NPC-EGRESS-CUSTOM", "WEAVE-NPC-EGRESS-ACCEPT"
CHAINS = (MAIN, DEFAULT, EGRESS, EGRESS_ACCEPT, EGRESS_CUSTOM, EGRESS_DEFAULT, INGRESS)

KUBE_NOTE = "NOTE: this must go before '-j KUBE-FORWARD'"
FORWARD_DROP = 4     # 1-based position of `-o weave -j DROP` in FORWARD; ground_truth() relies on it

# npc/shortname.go: printable single-byte symbols, no comma (list:set), no space, quote or backslash.
SHORT_NAME_SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789(){}[]+=_$%^!*|/?.;:@#~"


def short_name(arbitrary: str) -> str:
    """weave-npc's shortName: sha1 as a base-85 number, least significant symbol first."""
    i = int.from_bytes(hashlib.sha1(arbitrary.encode()).digest(), "big")
    out = []
    while i > 0:
        i, rem = divmod(i, len(SHORT_NAME_SYMBOLS))
        out.append(SHORT_NAME_SYMBOLS[rem])
    return "".join(out)


def selector_set(namespace: str, key: str) -> str:
    """A pod selector's ipset (npc/selector.go: prefix + shortName(namespace + ":" + selector))."""
    return "weave-" + short_name(f"{namespace}:{key}")


def default_allow_set(direction: str, namespace: str) -> str:
    """npc/namespace.go: weave-<shortName("ingress-default-allow:<ns>")> (or egress-)."""
    return "weave-" + short_name(f"{direction}-default-allow:{namespace}")


def src_set() -> str:
    return selector_set(NAMESPACE, SRC_SELECTOR)


def dst_set() -> str:
    return selector_set(NAMESPACE, DST_SELECTOR)


def rule_comment() -> str:
    """npc/rule.go newRuleSpec: "<src comment> -> <dst comment> (ingress)"."""
    return (f"pods: namespace: {NAMESPACE}, selector: {SRC_SELECTOR} -> "
            f"pods: namespace: {NAMESPACE}, selector: {DST_SELECTOR} (ingress)")


def _pod_comment(name: str) -> str:
    return f'comment "namespace: {NAMESPACE}, pod: {name}"'


def render_ipsets(topo: Topology) -> str:
    """`ipset restore` input (pure): namespace sets, default-allow sets, the policy's selector sets."""
    lines: list[str] = []

    def create(name: str, kind: str = "hash:ip") -> None:
        lines.append(f"create {name} {kind} family inet hashsize 1024 maxelem 65536 comment")

    pods, clients, srv = topo.pods, topo.clients, topo.server
    for ns in (NAMESPACE, *OTHER_NAMESPACES):
        create(selector_set(ns, ""))                       # the namespace's all-pods selector
        create(default_allow_set("ingress", ns))
        create(default_allow_set("egress", ns))
    all_pods = selector_set(NAMESPACE, "")
    lines += [f"add {all_pods} {p.ip} {_pod_comment(p.name)}" for p in pods]
    # ingress default-allow: pods no ingress policy selects (the clients); egress: every pod
    lines += [f"add {default_allow_set('ingress', NAMESPACE)} {p.ip} {_pod_comment(p.name)}" for p in clients]
    lines += [f"add {default_allow_set('egress', NAMESPACE)} {p.ip} {_pod_comment(p.name)}" for p in pods]
    create(src_set())
    lines += [f"add {src_set()} {p.ip} {_pod_comment(p.name)}" for p in clients]
    create(dst_set())
    lines.append(f"add {dst_set()} {srv.ip} {_pod_comment(srv.name)}")
    lines.append(f"create {NO_MASQ_LOCAL} hash:net family inet hashsize 1024 maxelem 65536")
    lines.append(f"add {NO_MASQ_LOCAL} {topo.subnet}")
    return "\n".join(lines) + "\n"


def ingress_rule(r: PortRule) -> str:
    """One NetworkPolicy ingress rule as weave-npc appends it (args in its order, then -j ACCEPT)."""
    return (f"-A {INGRESS} -p {r.proto} -m set --match-set {src_set()} src -m set --match-set {dst_set()} dst "
            f'--dport {r.ports} -m comment --comment "{rule_comment()}" -j ACCEPT')


def _default_rules() -> list[str]:
    out = [f"-A {DEFAULT} -m set --match-set {default_allow_set('ingress', ns)} dst -j ACCEPT "
           f'-m comment --comment "DefaultAllow ingress isolation for namespace: {ns}"'
           for ns in (NAMESPACE, *OTHER_NAMESPACES)]
    for ns in (NAMESPACE, *OTHER_NAMESPACES):
        s = default_allow_set("egress", ns)
        c = f'-m comment --comment "DefaultAllow egress isolation for namespace: {ns}"'
        out += [f"-A {EGRESS_DEFAULT} -m set --match-set {s} src -j {EGRESS_ACCEPT} {c}",
                f"-A {EGRESS_DEFAULT} -m set --match-set {s} src -j RETURN {c}"]
    return out


def render_filter(topo: Topology, spec: LabSpec) -> str:
    """filter (weave router's FORWARD/INPUT steering + weave-npc's chains) and nat (the router's
    WEAVE masquerade chain), for `iptables-restore --noflush` (pure)."""
    b = BRIDGE
    out = ["*filter", *(f":{c} - [0:0]" for c in CHAINS),
           f"-A INPUT -i {b} -j {EGRESS}",
           f'-A FORWARD -i {b} -m comment --comment "{KUBE_NOTE}" -j {EGRESS}',
           f'-A FORWARD -o {b} -m comment --comment "{KUBE_NOTE}" -j {MAIN}',
           f"-A FORWARD -o {b} -m state --state NEW -j NFLOG --nflog-group {NFLOG_GROUP}",
           f"-A FORWARD -o {b} -j DROP",
           f"-A FORWARD -i {b} ! -o {b} -j ACCEPT",
           f"-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
           f"-A {MAIN} -m state --state RELATED,ESTABLISHED -j ACCEPT",
           f"-A {MAIN} -d 224.0.0.0/4 -j ACCEPT",
           f"-A {MAIN} -m physdev --physdev-out {BRIDGE_PORT} --physdev-is-bridged -j ACCEPT",
           f"-A {MAIN} -m state --state NEW -j {DEFAULT}",
           f"-A {MAIN} -m state --state NEW -j {INGRESS}",
           f"-A {EGRESS_ACCEPT} -j MARK --set-xmark {EGRESS_MARK}",
           f"-A {EGRESS} -m state --state RELATED,ESTABLISHED -j ACCEPT",
           f"-A {EGRESS} -m physdev --physdev-in {BRIDGE_PORT} --physdev-is-bridged -j RETURN",
           f"-A {EGRESS} -m addrtype --dst-type LOCAL -j RETURN",
           f"-A {EGRESS} -d 224.0.0.0/4 -j RETURN",
           f"-A {EGRESS} -m state --state NEW -j {EGRESS_DEFAULT}",
           f"-A {EGRESS} -m state --state NEW -m mark ! --mark {EGRESS_MARK} -j {EGRESS_CUSTOM}",
           *_default_rules()]
    out += [ingress_rule(r) for r in port_rules(topo, spec)]
    out.append("COMMIT")
    a = ALLOC_RANGE
    out += ["*nat", ":WEAVE - [0:0]",
            "-A POSTROUTING -j WEAVE",
            f'-A WEAVE -m set --match-set {NO_MASQ_LOCAL} dst -m comment --comment '
            f'"Prevent SNAT to locally running containers" -j RETURN',
            f"-A WEAVE -s {a} -d 224.0.0.0/4 -j RETURN",
            f"-A WEAVE ! -s {a} -d {a} -j MASQUERADE",
            f"-A WEAVE -s {a} ! -d {a} -j MASQUERADE",
            "COMMIT"]
    return "\n".join(out) + "\n"


def router_port_cmds(bridge: str, router_port: str) -> list[str]:
    """`ip -batch` lines for the router's port on the weave bridge: `vethwe-bridge`, whose veth
    peer `router_port` is the router's end (vethwe-pcap for the sleeve, vethwe-datapath for
    fastdp), both at weave's MTU (pure)."""
    return [f"link add {BRIDGE_PORT} mtu {MTU} type veth peer name {router_port} mtu {MTU}",
            f"link set {BRIDGE_PORT} master {bridge}", f"link set {BRIDGE_PORT} up", f"link set {router_port} up"]


def plumb_sleeve(runner: "Runner", topo: Topology, router_port: str = PCAP_PORT) -> None:
    """The weave bridge with the pods on it, the router's veth pair as one more port (its far end
    `router_port`: vethwe-pcap for the sleeve, vethwe-datapath for fastdp), and weave's MTU on
    every port and pod interface (the bridge takes its ports' minimum)."""
    plumb_bridge(runner, topo)
    cmds = router_port_cmds(topo.bridge, router_port) + [f"link set {p.node_iface} mtu {MTU}" for p in topo.pods]
    runner.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(cmds) + "\n")
    for p in topo.pods:
        runner.run(["ip", "-n", p.netns, "link", "set", p.iface, "mtu", str(MTU)])


class Weave(MarkReturnDatapath):
    name = "weave"
    description = ("Weave Net (sleeve): weave bridge, weave-npc WEAVE-NPC/-DEFAULT/-INGRESS/-EGRESS chains "
                   "with weave-* ipsets (weave-fastdp: the OVS kernel datapath between two nodes)")
    tools = ("ipset", "iptables-legacy-restore", "iptables-nft-restore")
    routed = False
    bridge = BRIDGE
    subnet = SUBNET
    backends = ("legacy", "nft")

    def node_iface_name(self, lab: str, index: int) -> str:
        # net/veth.go: "vethwepl" + the endpoint id cut to 7 characters
        return "vethwepl" + short_hash("weave", lab, f"p{index}", n=7)

    def plumb(self, runner: "Runner", topo: Topology) -> None:
        plumb_sleeve(runner, topo)

    def render(self, topo: Topology, spec: LabSpec) -> tuple[str, str]:
        return render_ipsets(topo), render_filter(topo, spec)

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        rules = port_rules(topo, spec)
        allowed, evals = {}, {}
        for proto in ("tcp", "udp"):
            pos = allow_index(rules, proto)
            allowed[proto] = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend,
                                        table="filter", chain=INGRESS, index=pos + 1)
            evals[proto] = pos + 1
        denied = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend, table="filter",
                            chain="FORWARD", index=FORWARD_DROP)
        return GroundTruth(allowed=allowed, denied=denied, evaluations=evals,
                           notes="evaluations count WEAVE-NPC-INGRESS rules (one ACCEPT rule with two ipset "
                                 "matches per policy rule); a denied NEW packet falls through WEAVE-NPC and is "
                                 "dropped in FORWARD after NFLOG group 86")

"""kube-router's network-policy dataplane in miniature (iptables legacy or nft backend, ipsets).

Structure as kube-router's netpol controller programs it (see the provenance of
tests/fixtures/lab/kube-router-*.txt): FORWARD → KUBE-ROUTER-FORWARD → KUBE-POD-FW-<hash>
per selected pod → KUBE-NWPLCY-<hash> per policy, whose rules match KUBE-SRC-/KUBE-DST- ipsets
and MARK 0x10000 then RETURN; an unmarked packet is REJECTed in KUBE-POD-FW; a compliant one is
marked 0x20000 and ACCEPTed in KUBE-ROUTER-FORWARD. Pods sit on the kube-bridge with /24
addresses; bridged traffic reaches FORWARD through br_netfilter, as on a node. ipsets are
per network namespace, so the sets keep kube-router's own names without touching the host's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnitrace.lab.datapaths.mark_return import MarkReturnDatapath, allowed_refs
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import PortRule, port_rules, upper_tag
from cnitrace.lab.topology import plumb_bridge, short_hash

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner

NAMESPACE = "default"
POLICY = "allow-client-to-server"
POD_FW_REJECT = 6      # 1-based position of the REJECT rule in KUBE-POD-FW-<hash>


def pod_fw_chain(lab: str, pod: str) -> str:
    return "KUBE-POD-FW-" + upper_tag("podfw", lab, NAMESPACE, pod)


def policy_chain(lab: str) -> str:
    return "KUBE-NWPLCY-" + upper_tag("nwplcy", lab, NAMESPACE, POLICY)


def src_set(lab: str) -> str:
    return "KUBE-SRC-" + upper_tag("src", lab, NAMESPACE, POLICY)


def dst_set(lab: str) -> str:
    return "KUBE-DST-" + upper_tag("dst", lab, NAMESPACE, POLICY)


def render_ipsets(topo: Topology) -> str:
    s, d = src_set(topo.lab), dst_set(topo.lab)
    lines = [f"create {s} hash:ip family inet hashsize 1024 maxelem 65536 timeout 0",
             f"create {d} hash:ip family inet hashsize 1024 maxelem 65536 timeout 0"]
    lines += [f"add {s} {p.ip} timeout 0" for p in topo.clients]
    lines.append(f"add {d} {topo.server.ip} timeout 0")
    return "\n".join(lines) + "\n"


def _policy_rules(topo: Topology, rules: tuple[PortRule, ...]) -> list[str]:
    chain, s, d = policy_chain(topo.lab), src_set(topo.lab), dst_set(topo.lab)
    why = f"rule to ACCEPT traffic from source pods to dest pods selected by policy name {POLICY} namespace {NAMESPACE}"
    out = []
    for r in rules:
        port = (f"-m {r.proto} --dport {r.lo}" if r.lo == r.hi else f"-m multiport --dports {r.ports}")
        match = f"-p {r.proto} -m set --match-set {s} src -m set --match-set {d} dst {port}"
        out.append(f'-A {chain} {match} -m comment --comment "rule to mark traffic matching a network policy" '
                   f'-m comment --comment "{why}" -j MARK --set-xmark 0x10000/0x10000')
        out.append(f'-A {chain} {match} -m comment --comment "rule to RETURN traffic matching a network policy" '
                   f'-m mark --mark 0x10000/0x10000 -m comment --comment "{why}" -j RETURN')
    return out


def render_filter(topo: Topology, spec: LabSpec) -> str:
    """The filter table for `iptables-restore --noflush` (pure)."""
    srv = topo.server
    fw, pol = pod_fw_chain(topo.lab, srv.name), policy_chain(topo.lab)
    pod = f"POD name:{srv.name} namespace: {NAMESPACE}"
    out = ["*filter", ":KUBE-ROUTER-FORWARD - [0:0]", ":KUBE-ROUTER-INPUT - [0:0]", ":KUBE-ROUTER-OUTPUT - [0:0]",
           f":{fw} - [0:0]", f":{pol} - [0:0]",
           '-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT',
           '-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD',
           '-A OUTPUT -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT',
           f'-A KUBE-ROUTER-FORWARD -d {srv.ip}/32 -m comment --comment '
           f'"rule to jump traffic destined to {pod} to chain {fw}" -j {fw}',
           f'-A KUBE-ROUTER-OUTPUT -d {srv.ip}/32 -m comment --comment '
           f'"rule to jump traffic destined to {pod} to chain {fw}" -j {fw}',
           '-A KUBE-ROUTER-FORWARD -m comment --comment "rule to explicitly ACCEPT traffic that comply to '
           'network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT',
           f'-A {fw} -m comment --comment "rule for stateful firewall for pod" '
           f'-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
           f'-A {fw} -m comment --comment "rule to drop invalid state for pod" -m conntrack --ctstate INVALID -j DROP',
           f'-A {fw} -d {srv.ip}/32 -m addrtype --src-type LOCAL -m comment --comment "rule to permit the '
           f'traffic traffic to pods when source is the pod\'s local node" -j ACCEPT',
           f'-A {fw} -m comment --comment "run through nw policy {POLICY}" -j {pol}',
           f'-A {fw} -m comment --comment "rule to log dropped traffic {pod}" -m mark ! --mark 0x10000/0x10000 '
           f'-m limit --limit 10/min --limit-burst 10 -j NFLOG --nflog-group 100',
           f'-A {fw} -m comment --comment "rule to REJECT traffic destined for {pod}" -m mark ! --mark '
           f'0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable',
           f'-A {fw} -j MARK --set-xmark 0x0/0x10000',
           f'-A {fw} -m comment --comment "set mark to ACCEPT traffic that comply to network policies" '
           f'-j MARK --set-xmark 0x20000/0x20000',
           ]
    out += _policy_rules(topo, port_rules(topo, spec))
    out.append("COMMIT")
    return "\n".join(out) + "\n"


class KubeRouter(MarkReturnDatapath):
    name = "kube-router"
    description = "kube-router netpol: KUBE-ROUTER-FORWARD → KUBE-POD-FW → KUBE-NWPLCY with ipsets, on kube-bridge"
    tools = ("ipset", "iptables-legacy-restore", "iptables-nft-restore")
    routed = False
    bridge = "kube-bridge"
    backends = ("legacy", "nft")

    def node_iface_name(self, lab: str, index: int) -> str:
        return "veth" + short_hash("kube-router", lab, f"p{index}", n=8)

    def plumb(self, runner: "Runner", topo: Topology) -> None:
        plumb_bridge(runner, topo)

    def render(self, topo: Topology, spec: LabSpec) -> tuple[str, str]:
        return render_ipsets(topo), render_filter(topo, spec)

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        allowed, evals = allowed_refs(topo, spec, policy_chain(topo.lab))
        denied = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend, table="filter",
                            chain=pod_fw_chain(topo.lab, topo.server.name), index=POD_FW_REJECT)
        return GroundTruth(allowed=allowed, denied=denied, evaluations=evals,
                           notes="evaluations count iptables rules in KUBE-NWPLCY (MARK + RETURN per rule)")

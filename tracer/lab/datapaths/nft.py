"""Native nftables policy, kube-proxy-nftables-mode style: sets and verdict maps, O(1) lookups.

The same N port-range rules become elements of one interval verdict map keyed by
`meta l4proto . th dport`, reached through a per-pod `ip daddr vmap` dispatch. A packet's
cost no longer depends on N (the contrast to the iptables datapaths): an allowed NEW packet
is matched against 3 rules whatever N is. Allowed packets end in small per-protocol chains
whose counter rule is the ground truth; rule handles are read back after loading.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from cnitrace.lab.datapath import Datapath, nft_apply
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import port_rules
from cnitrace.lab.topology import built, plumb_routed, short_hash

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session

FAMILY, TABLE = "inet", "cnit-netpol"
DENY_COMMENT = "default deny ingress to pod {pod}"


def ingress_chain(pod: str) -> str:
    return f"ingress-{pod}"


def allow_chain(proto: str) -> str:
    return f"allow-{proto}"


def allow_comment(proto: str, port: int) -> str:
    return f"allow {proto} dport {port} from selected peers"


def render(topo: Topology, spec: LabSpec) -> str:
    """One `nft -f` transaction creating the whole table (pure)."""
    srv = topo.server
    rules = port_rules(topo, spec)
    elems = []
    for r in rules:
        verdict = f"goto {allow_chain(r.proto)}" if r.allows_lab_traffic else "accept"
        elems.append(f"{r.proto} . {r.nft_ports} : {verdict}")
    peers = ", ".join(p.ip for p in topo.clients)
    ing = ingress_chain(srv.name)
    out = [
        f"table {FAMILY} {TABLE} {{",
        f"\tset peers-{srv.name} {{ type ipv4_addr; elements = {{ {peers} }}; }}",
        f"\tmap ports-{srv.name} {{",
        "\t\ttype inet_proto . inet_service : verdict; flags interval;",
        "\t\telements = { " + ",\n\t\t\t".join(elems) + " }",
        "\t}",
        f"\tmap pod-ingress {{ type ipv4_addr : verdict; elements = {{ {srv.ip} : jump {ing} }}; }}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        '\t\tct state established,related accept comment "stateful"',
        '\t\tct state invalid drop comment "invalid"',
        '\t\tip daddr vmap @pod-ingress comment "dispatch to the destination pod\'s ingress policy"',
        "\t}",
        f"\tchain {ing} {{",
        f'\t\tip saddr != @peers-{srv.name} counter drop comment "peer not selected by any policy"',
        f'\t\tmeta l4proto . th dport vmap @ports-{srv.name} comment "policy ports"',
        f'\t\tcounter drop comment "{DENY_COMMENT.format(pod=srv.name)}"',
        "\t}",
    ]
    for proto in ("tcp", "udp"):
        out += [f"\tchain {allow_chain(proto)} {{",
                f'\t\tcounter accept comment "{allow_comment(proto, topo.allowed_port)}"', "\t}"]
    out.append("}")
    return "\n".join(out) + "\n"


def read_handles(runner: "Runner", netns: str) -> dict[str, dict[str, int]]:
    """{chain: {comment: handle}} for the lab's table, as the kernel numbered them."""
    out = runner.run(["nft", "-j", "-a", "list", "table", FAMILY, TABLE], netns=netns).stdout
    return parse_handles(out)


def parse_handles(text: str) -> dict[str, dict[str, int]]:
    handles: dict[str, dict[str, int]] = {}
    for obj in json.loads(text).get("nftables", []):
        rule = obj.get("rule")
        if rule and rule.get("comment"):
            handles.setdefault(rule["chain"], {})[rule["comment"]] = int(rule["handle"])
    return handles


class Nft(Datapath):
    name = "nft"
    policy_stage = "nftables"
    description = "native nftables: per-pod vmap dispatch and an interval verdict map of ports (O(1))"
    tools = ("nft",)
    routed = True

    def node_iface_name(self, lab: str, index: int) -> str:
        return "veth" + short_hash("nft", lab, f"p{index}", n=8)

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        plumb_routed(r, topo)
        t0 = time.monotonic()
        nft_apply(r, topo.node_netns, render(topo, spec))
        elapsed = time.monotonic() - t0
        return built(r, topo, elapsed, nft_handles=read_handles(r, topo.node_netns))

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        handles = topo.extra.get("nft_handles", {})
        table = f"{FAMILY} {TABLE}"
        allowed = {}
        for proto in ("tcp", "udp"):
            chain, comment = allow_chain(proto), allow_comment(proto, topo.allowed_port)
            allowed[proto] = CounterRef(kind="nft", netns=topo.node_netns, table=table, chain=chain, index=1,
                                        handle=handles.get(chain, {}).get(comment), comment=comment)
        ing = ingress_chain(topo.server.name)
        deny = DENY_COMMENT.format(pod=topo.server.name)
        denied = CounterRef(kind="nft", netns=topo.node_netns, table=table, chain=ing, index=3,
                            handle=handles.get(ing, {}).get(deny), comment=deny)
        return GroundTruth(allowed=allowed, denied=denied, evaluations={"tcp": 3, "udp": 3},
                           notes="O(1): peer-set check, one interval-vmap lookup, the allow chain's rule")

"""Antrea's OpenFlow pipeline for the lab, generated as `ovs-ofctl add-flows` text (pure).

Why generated here and not by Antrea: the lab must reproduce the *structure* whose cost the
study measured on Antrea nodes -- the same named tables in the same order (antrea
docs/design/ovs-pipeline.md, v1.15), `ct()` into zone 65520, the established-connection
bypass at the top of the policy tables, policy rules as `conjunction` flows, and a
default-deny table -- with nothing running but OVS.

Lab-specific choices (each is where the lab must differ from a node):
- Tables are numbered in pipeline order and given their Antrea names in OVSDB, so dumps with
  `--names` read like `antctl get of`. Flows refer to tables by number; `goto_table` only
  jumps forward, as OpenFlow requires.
- The N filler rules of cnitrace.lab.policy become one K8s NetworkPolicy ingress rule with
  N port ranges (one conjunction whose service dimension grows with N), and each allow rule
  is its own conjunction: Antrea merges identical peer matches into one flow carrying one
  `conjunction()` action per rule, and N=10,000 such actions would not fit in one OpenFlow
  message.
- Cookies carry a lab round number, a category and the rule id, so counters of a policy
  rule can be found by cookie alone (`cookie=C/-1`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Iterable, Sequence

# Antrea v1.15 IPv4 pipeline, in order (ARP and IP stages; Multicast/Egress SNAT omitted).
TABLES: tuple[str, ...] = (
    "PipelineRootClassifier", "ARPSpoofGuard", "ARPResponder", "Classifier", "SpoofGuard",
    "UnSNAT", "ConntrackZone", "ConntrackState", "PreRoutingClassifier", "SessionAffinity",
    "ServiceLB", "EndpointDNAT", "AntreaPolicyEgressRule", "EgressRule", "EgressDefaultRule",
    "EgressMetric", "L3Forwarding", "EgressMark", "L3DecTTL", "SNATMark", "SNAT",
    "L2ForwardingCalc", "TrafficControl", "IngressSecurityClassifier", "AntreaPolicyIngressRule",
    "IngressRule", "IngressDefaultRule", "IngressMetric", "ConntrackCommit", "Output",
)
TABLE_ID = {name: i for i, name in enumerate(TABLES)}

CT_ZONE = 65520          # Antrea's CtZone
SNAT_CT_ZONE = 65521     # Antrea's SNATCtZone
GATEWAY_PORT = "antrea-gw0"
GATEWAY_OFPORT = 2       # as on an Antrea node (tunnel is 1)
TC_TARGET_PORT = "antrea-tc-tap0"
TC_RETURN_PORT = "antrea-tc-tap1"

# reg marks (docs/design/ovs-pipeline.md, "OVS Registers")
FROM_GATEWAY = "0x2/0xf"
FROM_POD = "0x3/0xf"
FROM_TC_RETURN = "0x6/0xf"
TO_GATEWAY = "0x20/0xf0"
FROM_LOCAL = "0x10000000/0x10000000"        # reg4
FROM_EXTERNAL = "0x8000000/0x8000000"       # reg4
OUTPUT_TO_OFPORT = "0x200000/0x600000"      # reg0
TC_REDIRECT = "0x800000/0xc00000"           # reg4
EP_TO_SELECT = "0x10000/0x70000"            # reg4

# Cookies: 0x0c17 round | category << 32 | rule id. A rule's conj_id flow (which counts the
# first packet of each connection it admits) is the only flow with CAT_POLICY_RULE and its id.
COOKIE_ROUND = 0x0C17 << 48
CAT_PIPELINE, CAT_POD, CAT_POLICY_RULE, CAT_DEFAULT_DENY, CAT_TRAFFIC_CONTROL = 1, 2, 3, 4, 5
CAT_POLICY_MATCH, CAT_POLICY_METRIC = 6, 7

# conj_ids: the filler rule and one per allow rule (Antrea allocates them from one pool).
FILLER_CONJ_ID = 1
ALLOW_CONJ_ID = {"tcp": 2, "udp": 3}


def cookie(category: int, rule_id: int = 0) -> int:
    return COOKIE_ROUND | (category << 32) | rule_id


def cookie_parts(value: int) -> tuple[int, int] | None:
    """(category, rule id) of a lab cookie, or None when the flow is not the lab's."""
    if value >> 48 != COOKIE_ROUND >> 48:
        return None
    return (value >> 32) & 0xFFFF, value & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class OfPort:
    """One OVS port as the pipeline sees it: a pod's node-side veth or the gateway."""

    name: str
    ofport: int
    mac: str
    ip: str


@dataclasses.dataclass(frozen=True)
class Rule:
    """One K8s NetworkPolicy ingress rule: peers x (proto, port range) services."""

    conj_id: int
    services: tuple[tuple[str, int, int], ...]    # (proto, lo, hi)


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything the pipeline depends on; built from the lab Topology by antrea.py."""

    subnet: str
    gateway: OfPort
    pods: tuple[OfPort, ...]
    server: OfPort                       # the pod the NetworkPolicy applies to
    clients: tuple[str, ...]             # client pod IPs (the policy's `from`)
    rules: tuple[Rule, ...]
    l7_port: int | None = None           # TCP port redirected to the proxy (TrafficControl)
    tc_target: OfPort | None = None      # antrea-tc-tap0
    tc_return: OfPort | None = None      # antrea-tc-tap1


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover [lo, hi] with (value, mask) pairs, as OVS needs for a port range (tp_dst=v/m)."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _tp(lo: int, hi: int) -> list[str]:
    return [f"tp_dst={v}" if m == 0xFFFF else f"tp_dst=0x{v:x}/0x{m:x}" for v, m in port_masks(lo, hi)]


def _f(table: str, priority: int, match: str, actions: str, ck: int | None = None) -> str:
    ck = cookie(CAT_PIPELINE) if ck is None else ck
    m = f",{match}" if match else ""
    return f"cookie=0x{ck:x},table={TABLE_ID[table]},priority={priority}{m},actions={actions}"


def _goto(table: str) -> str:
    return f"goto_table:{TABLE_ID[table]}"


def _miss(table: str, nxt: str | None, pre: str = "") -> str:
    return _f(table, 0, "", f"{pre}{_goto(nxt)}" if nxt else "drop")


def pipeline(spec: PipelineSpec) -> list[str]:
    """All flows of the lab's br-int, one add-flows line each."""
    g, pods = spec.gateway, spec.pods
    ports = (g, *pods)
    pod_ck = cookie(CAT_POD)
    fl: list[str] = []
    # PipelineRootClassifier
    fl += [_f("PipelineRootClassifier", 200, "arp", _goto("ARPSpoofGuard")),
           _f("PipelineRootClassifier", 200, "ip", _goto("Classifier")),
           _miss("PipelineRootClassifier", None)]
    # ARPSpoofGuard / ARPResponder: only the addresses the CNI assigned may speak ARP.
    fl += [_f("ARPSpoofGuard", 200, f"arp,in_port={p.ofport},arp_spa={p.ip},arp_sha={p.mac}",
              _goto("ARPResponder"), pod_ck) for p in ports]
    fl += [_miss("ARPSpoofGuard", None), _f("ARPResponder", 190, "arp", "NORMAL"), _miss("ARPResponder", None)]
    # Classifier
    fl += [_f("Classifier", 210, f"ip,in_port={g.ofport},nw_src={g.ip}",
              f"set_field:{FROM_GATEWAY}->reg0,set_field:{FROM_LOCAL}->reg4,{_goto('SpoofGuard')}"),
           _f("Classifier", 200, f"in_port={g.ofport}",
              f"set_field:{FROM_GATEWAY}->reg0,set_field:{FROM_EXTERNAL}->reg4,{_goto('SpoofGuard')}")]
    if spec.tc_return is not None:
        fl.append(_f("Classifier", 200, f"in_port={spec.tc_return.ofport}",
                     f"set_field:{FROM_TC_RETURN}->reg0,{_goto('L3Forwarding')}", cookie(CAT_TRAFFIC_CONTROL)))
    fl += [_f("Classifier", 190, f"in_port={p.ofport}",
              f"set_field:{FROM_POD}->reg0,set_field:{FROM_LOCAL}->reg4,{_goto('SpoofGuard')}", pod_ck)
           for p in pods]
    fl.append(_miss("Classifier", None))
    # SpoofGuard
    fl.append(_f("SpoofGuard", 200, f"ip,in_port={g.ofport}", _goto("UnSNAT")))
    fl += [_f("SpoofGuard", 200, f"ip,in_port={p.ofport},dl_src={p.mac},nw_src={p.ip}", _goto("UnSNAT"), pod_ck)
           for p in pods]
    fl.append(_miss("SpoofGuard", None))
    # Conntrack: UnSNAT (SNAT zone), ConntrackZone (CtZone), ConntrackState
    fl += [_f("UnSNAT", 200, f"ip,nw_dst={g.ip}", f"ct(table={TABLE_ID['ConntrackZone']},zone={SNAT_CT_ZONE},nat)"),
           _miss("UnSNAT", "ConntrackZone"),
           _f("ConntrackZone", 200, "ip", f"ct(table={TABLE_ID['ConntrackState']},zone={CT_ZONE},nat)"),
           _miss("ConntrackZone", "ConntrackState"),
           _f("ConntrackState", 200, "ct_state=+inv+trk,ip", "drop"),
           _f("ConntrackState", 190, "ct_state=-new+trk,ct_mark=0/0x10,ip", _goto("AntreaPolicyEgressRule")),
           _miss("ConntrackState", "PreRoutingClassifier")]
    # Service stages: no Services in the lab, so only their table-miss flows.
    fl += [_miss("PreRoutingClassifier", "SessionAffinity"),
           _miss("SessionAffinity", "ServiceLB", f"set_field:{EP_TO_SELECT}->reg4,"),
           _miss("ServiceLB", "EndpointDNAT"),
           _miss("EndpointDNAT", "AntreaPolicyEgressRule")]
    # Egress policy: established/related bypass first; no egress rules in the lab.
    fl += [_f("AntreaPolicyEgressRule", 64990, "ct_state=-new+est,ip", _goto("EgressMetric")),
           _f("AntreaPolicyEgressRule", 64990, "ct_state=-new+rel,ip", _goto("EgressMetric")),
           _miss("AntreaPolicyEgressRule", "EgressRule"), _miss("EgressRule", "EgressDefaultRule"),
           _miss("EgressDefaultRule", "EgressMetric"), _miss("EgressMetric", "L3Forwarding")]
    # L3Forwarding: intra-node pod traffic goes straight to L2ForwardingCalc.
    fl += [_f("L3Forwarding", 210, f"ip,nw_dst={g.ip}",
              f"set_field:{g.mac}->eth_dst,set_field:{TO_GATEWAY}->reg0,{_goto('L3DecTTL')}"),
           _f("L3Forwarding", 200, f"ip,reg0=0/0x200,nw_dst={spec.subnet}", _goto("L2ForwardingCalc")),
           _miss("L3Forwarding", "L2ForwardingCalc", f"set_field:{TO_GATEWAY}->reg0,"),
           _miss("EgressMark", "L2ForwardingCalc", f"set_field:{TO_GATEWAY}->reg0,"),
           _f("L3DecTTL", 210, f"ip,reg0={FROM_GATEWAY}", _goto("SNATMark")),
           _f("L3DecTTL", 200, "ip", f"dec_ttl,{_goto('SNATMark')}"),
           _miss("L3DecTTL", "SNATMark"), _miss("SNATMark", "SNAT"), _miss("SNAT", "L2ForwardingCalc")]
    # L2ForwardingCalc: the dmac table.
    fl += [_f("L2ForwardingCalc", 200, f"dl_dst={p.mac}",
              f"set_field:0x{p.ofport:x}->reg1,set_field:{OUTPUT_TO_OFPORT}->reg0,{_goto('TrafficControl')}",
              pod_ck if p is not g else None) for p in ports]
    fl.append(_miss("L2ForwardingCalc", "TrafficControl"))
    fl += traffic_control(spec)
    fl += [_f("IngressSecurityClassifier", 200, f"reg0={TO_GATEWAY}", _goto("IngressMetric")),
           _miss("IngressSecurityClassifier", "AntreaPolicyIngressRule"),
           _f("AntreaPolicyIngressRule", 64990, "ct_state=-new+est,ip", _goto("IngressMetric")),
           _f("AntreaPolicyIngressRule", 64990, "ct_state=-new+rel,ip", _goto("IngressMetric")),
           _miss("AntreaPolicyIngressRule", "IngressRule")]
    fl += ingress_rules(spec)
    fl += [_f("ConntrackCommit", 200, "ct_state=+new+trk-snat,ct_mark=0/0x10,ip",
              f"ct(commit,table={TABLE_ID['Output']},zone={CT_ZONE},exec(move:NXM_NX_REG0[0..3]->NXM_NX_CT_MARK[0..3]))"),
           _miss("ConntrackCommit", "Output")]
    fl += output(spec)
    return fl


def traffic_control(spec: PipelineSpec) -> list[str]:
    """TrafficControl redirect of the server's L7 port to the proxy's tap (when --l7)."""
    fl = []
    if spec.l7_port is not None and spec.tc_target is not None:
        ck = cookie(CAT_TRAFFIC_CONTROL)
        fl += [_f("TrafficControl", 210, f"reg0={FROM_TC_RETURN.split('/')[0]}/0xf", _goto("Output"), ck),
               _f("TrafficControl", 200, f"tcp,reg1=0x{spec.server.ofport:x},tp_dst={spec.l7_port}",
                  f"set_field:0x{spec.tc_target.ofport:x}->reg9,set_field:{TC_REDIRECT}->reg4,"
                  f"{_goto('IngressSecurityClassifier')}", ck)]
    fl.append(_miss("TrafficControl", "IngressSecurityClassifier"))
    return fl


def ingress_rules(spec: PipelineSpec) -> list[str]:
    """IngressRule (conjunctions), IngressDefaultRule (default deny) and IngressMetric flows."""
    fl: list[str] = []
    conj_ids = [r.conj_id for r in spec.rules]
    n = 3
    if spec.rules:
        ck_any = cookie(CAT_POLICY_MATCH)
        # Dimension 1: the peers (`from`), shared by every rule: one flow, one action per rule.
        for ip in spec.clients:
            fl.append(_f("IngressRule", 200, f"ip,nw_src={ip}",
                         ",".join(f"conjunction({c},1/{n})" for c in conj_ids), ck_any))
        # Dimension 2: the appliedTo pod, by its output port.
        fl.append(_f("IngressRule", 200, f"reg1=0x{spec.server.ofport:x}",
                     ",".join(f"conjunction({c},2/{n})" for c in conj_ids), ck_any))
        # Dimension 3: the services; a port range expands to one flow per mask.
        seen: dict[str, list[int]] = {}
        for r in spec.rules:
            for proto, lo, hi in r.services:
                for tp in _tp(lo, hi):
                    seen.setdefault(f"{proto},{tp}", []).append(r.conj_id)
        for match, ids in seen.items():
            fl.append(_f("IngressRule", 200, match, ",".join(f"conjunction({c},3/{n})" for c in ids),
                         cookie(CAT_POLICY_MATCH, ids[0]) if len(ids) == 1 else ck_any))
        # The rule flows: only the first packet of a connection gets here (est bypass above).
        for c in conj_ids:
            fl.append(_f("IngressRule", 190, f"conj_id={c},ip",
                         f"set_field:0x{c:x}->reg6,ct(commit,table={TABLE_ID['IngressMetric']},zone={CT_ZONE},"
                         f"exec(set_field:0x{c:x}/0xffffffff->ct_label))", cookie(CAT_POLICY_RULE, c)))
    fl.append(_miss("IngressRule", "IngressDefaultRule"))
    if spec.rules:
        fl.append(_f("IngressDefaultRule", 200, f"reg1=0x{spec.server.ofport:x}", "drop", cookie(CAT_DEFAULT_DENY)))
    fl.append(_miss("IngressDefaultRule", "IngressMetric"))
    for c in conj_ids:
        for st in ("+new", "-new"):
            fl.append(_f("IngressMetric", 200, f"ct_state={st},ct_label=0x{c:x}/0xffffffff,ip",
                         _goto("ConntrackCommit"), cookie(CAT_POLICY_METRIC, c)))
    fl.append(_miss("IngressMetric", "ConntrackCommit"))
    return fl


def output(spec: PipelineSpec) -> list[str]:
    fl = []
    if spec.l7_port is not None and spec.tc_target is not None:
        fl.append(_f("Output", 211, f"reg0={OUTPUT_TO_OFPORT},reg4={TC_REDIRECT}",
                     f"set_field:{spec.tc_target.mac}->eth_dst,output:NXM_NX_REG9[]", cookie(CAT_TRAFFIC_CONTROL)))
    fl += [_f("Output", 200, f"reg0={OUTPUT_TO_OFPORT}", "output:NXM_NX_REG1[]"), _miss("Output", None)]
    return fl


def policy_rules(port_rules: Iterable, allowed_conj: dict[str, int] | None = None) -> tuple[Rule, ...]:
    """cnitrace.lab.policy PortRules -> Antrea rules: all fillers in one rule, one rule per allow."""
    allowed_conj = allowed_conj or ALLOW_CONJ_ID
    fillers, allows = [], []
    for pr in port_rules:
        if pr.allows_lab_traffic:
            allows.append(Rule(allowed_conj[pr.proto], ((pr.proto, pr.lo, pr.hi),)))
        else:
            fillers.append((pr.proto, pr.lo, pr.hi))
    rules = ([Rule(FILLER_CONJ_ID, tuple(fillers))] if fillers else []) + allows
    return tuple(sorted(rules, key=lambda r: r.conj_id))


def table_name_args(bridge: str, tables: Sequence[str] = TABLES) -> list[str]:
    """`ovs-vsctl` arguments naming the tables in OVSDB (Flow_Table), so `--names` dumps show them."""
    args: list[str] = []
    for i, name in enumerate(tables):
        args += ["--", f"--id=@t{i}", "create", "Flow_Table", f"name={name}"]
    refs = ",".join(f"{i}=@t{i}" for i in range(len(tables)))
    return [*args, "--", "set", "Bridge", bridge, f"flow_tables={{{refs}}}"]


def subnet_of(ip: str, prefix: int) -> str:
    return str(ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False))

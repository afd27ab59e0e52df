"""The OVS layer of `cnitrace trace`: the OpenFlow tables and flows one packet meets, from
`ovs-appctl ofproto/trace`, and the policy behind the deciding flow.

ofproto/trace simulates the packet through the bridge's OpenFlow tables without sending it
(read-only towards the CNI), prints every table and flow it matched with their actions, and
follows each `ct(table=N)` recirculation ("resume conntrack with default ct_state=trk|new") to
the end. It has no clock: hops carry `order`, not `t_ns`.

Parsing (`parse_ofproto_trace`) is pure and tested against captured output; `ovs_hops` runs the
command against one OVS instance (the lab's private ovs-vswitchd by its own unixctl socket, or
the node's) and names the tables and the policy:
- in the lab, the deciding flow's cookie against the lab's ground truth;
- on an Antrea node, Antrea's table names and cookie layout (pkg/agent/openflow/cookie:
  round 16 bits | category 8 bits | reserved 8 | object id 32) and the conjunction id; Antrea's
  flows do not carry the policy's namespace/name, so the Policy names the conjunction and says
  that `antctl` on the node resolves it.

`ofproto/detrace` (OVS >= 3.4) maps a datapath flow (by UFID) back to OpenFlow flows; it needs a
real packet's megaflow, so it is only reported as available here (this host runs OVS 3.1).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.trace.hops import Hop, Policy

# Antrea's policy tables (docs/design/ovs-pipeline.md) and which way they enforce.
INGRESS_TABLES = ("AntreaPolicyIngressRule", "IngressRule", "IngressDefaultRule", "IngressMetric")
EGRESS_TABLES = ("AntreaPolicyEgressRule", "EgressRule", "EgressDefaultRule", "EgressMetric")
RULE_TABLES = ("AntreaPolicyIngressRule", "IngressRule", "AntreaPolicyEgressRule", "EgressRule")
DEFAULT_TABLES = ("IngressDefaultRule", "EgressDefaultRule")
# Antrea cookie categories (pkg/agent/openflow/cookie, v1.x): byte at bits 40..47.
ANTREA_CATEGORIES = {0: "Default", 1: "Gateway", 2: "Node", 3: "Pod", 4: "Service", 5: "Policy", 6: "SNAT"}
# Antrea before v1.6 numbered its tables statically (docs/design/ovs-pipeline.md of that time); a
# node running such a version has no table names in OVSDB, so pass this as `names`.
ANTREA_LEGACY_TABLES = {0: "Classifier", 10: "SpoofGuard", 20: "ARPResponder", 29: "ServiceHairpin",
                        30: "ConntrackZone", 31: "ConntrackState", 40: "EndpointDNAT",
                        45: "AntreaPolicyEgressRule", 50: "EgressRule", 60: "EgressDefaultRule",
                        70: "L3Forwarding", 80: "L2ForwardingCalc", 85: "AntreaPolicyIngressRule",
                        90: "IngressRule", 100: "IngressDefaultRule", 105: "ConntrackCommit",
                        110: "L2ForwardingOut"}
ANTREA_POLICY_CATEGORY = 5
LAB_ROUND = 0x0C17          # the lab's cookie round (cnitrace.lab.datapaths.antrea_flows.COOKIE_ROUND)

_TABLE = re.compile(r"^(?P<indent>\s*)(?P<id>\d+)\.\s+(?:(?P<name>[A-Za-z][\w-]*):\s+)?(?P<rest>.*)$")
_FLOW = re.compile(r"^(?P<match>.*?)(?:,\s*)?priority (?P<prio>\d+)(?:,\s*cookie (?P<cookie>0x[0-9a-fA-F]+))?\s*$")
_CONJ_ACTION = re.compile(r"conjunction\((\d+),(\d+)/(\d+)\)")
_CONJ_ID = re.compile(r"(?:^|,)conj_id=(\d+)")
_OUTPUT = re.compile(r"->\s*output port is (\S+)")
_RECIRC = re.compile(r"^(recirc\(0x[0-9a-f]+\))\s*-\s*(.*)$")
_RESUME = re.compile(r"Resuming from table (\d+)")


@dataclasses.dataclass(frozen=True)
class TraceFlow:
    """One OpenFlow flow the packet matched (or a table miss) in one recirculation pass."""

    table: int
    priority: int | None
    match: str
    cookie: int
    actions: tuple[str, ...]
    notes: tuple[str, ...] = ()
    table_name: str = ""
    bridge: str = ""
    recirc: int = 0           # 0: the first pass; n: the n-th resumed pass
    depth: int = 0            # resubmit nesting
    miss: bool = False        # "No match."

    @property
    def conj_id(self) -> int | None:
        m = _CONJ_ID.search(self.match)
        return int(m.group(1)) if m else None

    @property
    def conjunctions(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((int(a), int(b), int(c)) for act in self.actions for a, b, c in _CONJ_ACTION.findall(act))

    @property
    def drops(self) -> bool:
        return self.miss or any(a.strip() == "drop" for a in self.actions) or (not self.actions and not self.miss)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(m.group(1) for n in self.notes for m in [_OUTPUT.search(n)] if m)


@dataclasses.dataclass(frozen=True)
class TracePass:
    """One pass through the pipeline: the initial one or one resumed after conntrack."""

    header: str               # "" for the first pass; "recirc(0x2) - resume conntrack with ..."
    flow: str                 # the "Flow:" line
    flows: tuple[TraceFlow, ...]
    final_flow: str = ""
    megaflow: str = ""
    datapath_actions: str = ""


@dataclasses.dataclass(frozen=True)
class OfprotoTrace:
    passes: tuple[TracePass, ...]
    warnings: tuple[str, ...] = ()

    @property
    def flows(self) -> tuple[TraceFlow, ...]:
        return tuple(f for p in self.passes for f in p.flows)

    @property
    def datapath_actions(self) -> str:
        return self.passes[-1].datapath_actions if self.passes else ""


def _strip_provenance(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("# provenance:"))


def parse_trace(text: str, table_names: Mapping[int, str] | None = None) -> OfprotoTrace:
    """`ovs-appctl ofproto/trace` output -> passes of matched flows (pure; tolerant: unknown
    lines are skipped, a malformed table line becomes a warning)."""
    names = dict(table_names or {})
    passes: list[TracePass] = []
    warnings: list[str] = []
    header, flow_line, final, mega, dp = "", "", "", "", ""
    flows: list[TraceFlow] = []
    cur: dict[str, Any] | None = None
    bridge = ""

    def close_flow() -> None:
        nonlocal cur
        if cur is not None:
            flows.append(TraceFlow(**{**cur, "actions": tuple(cur["actions"]), "notes": tuple(cur["notes"])}))
            cur = None

    def close_pass() -> None:
        nonlocal flows, header, flow_line, final, mega, dp
        close_flow()
        if flow_line or flows or dp:
            passes.append(TracePass(header, flow_line, tuple(flows), final, mega, dp))
        flows, header, flow_line, final, mega, dp = [], "", "", "", "", ""

    for raw in _strip_provenance(text).splitlines():
        line = raw.rstrip()
        s = line.strip()
        if not s or set(s) <= {"=", "-"}:
            continue
        m = _RECIRC.match(s)
        if m and not line.startswith(" "):
            close_pass()
            header = s
            continue
        if line.startswith("Flow: "):
            if flow_line or flows:
                close_pass()
            flow_line = line[len("Flow: "):]
            continue
        if line.startswith("Final flow:"):
            close_flow()
            final = line.split(":", 1)[1].strip()
            continue
        if line.startswith("Megaflow:"):
            mega = line.split(":", 1)[1].strip()
            continue
        if line.startswith("Datapath actions:"):
            dp = line.split(":", 1)[1].strip()
            continue
        if s.startswith("bridge(\""):
            close_flow()
            bridge = s[len("bridge(\""):].rstrip("\")")
            continue
        m = _TABLE.match(line)
        if m:
            close_flow()
            tid, rest = int(m.group("id")), m.group("rest").strip()
            depth = max(0, (len(m.group("indent")) - 1) // 4)
            base = {"table": tid, "table_name": m.group("name") or names.get(tid, ""), "bridge": bridge,
                    "recirc": len(passes), "depth": depth, "actions": [], "notes": []}
            if rest.startswith("No match"):
                cur = {**base, "priority": None, "match": "", "cookie": 0, "miss": True, "notes": [rest]}
                continue
            fm = _FLOW.match(rest)
            if not fm:
                warnings.append(f"table {tid}: unrecognised flow line {rest!r}")
                cur = {**base, "priority": None, "match": rest, "cookie": 0}
                continue
            cur = {**base, "priority": int(fm.group("prio")), "match": fm.group("match").strip().rstrip(","),
                   "cookie": int(fm.group("cookie"), 16) if fm.group("cookie") else 0}
            continue
        if cur is None:
            continue                       # "thaw", "Resuming from table N", NAT notes, ...
        if s.startswith("->") or s.startswith(">>") or s.startswith("Resuming") or s == "thaw":
            cur["notes"].append(s)
        else:
            cur["actions"].append(s)
    close_pass()
    if not passes:
        warnings.append("no trace found in ofproto/trace output")
    return OfprotoTrace(tuple(passes), tuple(warnings))


# --- verdict and policy --------------------------------------------------------------------------

def antrea_cookie(value: int) -> dict[str, Any]:
    """Antrea's cookie layout (pkg/agent/openflow/cookie): round | category | reserved | object id."""
    cat = (value >> 40) & 0xFF
    return {"round": value >> 48, "category": cat, "category_name": ANTREA_CATEGORIES.get(cat, f"category {cat}"),
            "object_id": value & 0xFFFFFFFF}


def lab_cookie(value: int) -> tuple[int, int] | None:
    """(category, rule id) of a cnitrace lab cookie, None when not the lab's."""
    if value >> 48 != LAB_ROUND:
        return None
    return (value >> 32) & 0xFFFF, value & 0xFFFFFFFF


def _direction(table_name: str) -> str:
    if table_name in INGRESS_TABLES:
        return "ingress"
    if table_name in EGRESS_TABLES:
        return "egress"
    return ""


def deciding_flow(trace: OfprotoTrace) -> tuple[TraceFlow | None, str]:
    """The flow that decided the packet's fate and the verdict (one of hops.VERDICTS).

    Dropped: a conjunction-action flow before the drop when there is one (an Antrea-native
    Drop rule), else the flow that dropped (a default-deny table, a table miss). Forwarded: the
    policy rule flow that admitted it (conj_id=N), else an established-connection bypass in a
    policy table, else the flow that output it."""
    flows = trace.flows
    if not flows:
        return None, "unknown"
    dp = trace.datapath_actions.strip()
    conj = [f for f in flows if f.conj_id is not None]
    if dp in ("drop", "") or dp.startswith("drop"):
        droppers = [f for f in flows if f.drops]
        last = droppers[-1] if droppers else flows[-1]
        # an Antrea-native Drop rule: its conj_id flow sends the packet to the metric table, which drops
        native_drop = last.table_name in ("IngressMetric", "EgressMetric") or (
            not last.table_name and conj and conj[-1].table_name.startswith("AntreaPolicy"))
        return (conj[-1] if conj and native_drop else last), "dropped"
    if conj:
        return conj[-1], "forwarded"
    policy = [f for f in flows if f.table_name in INGRESS_TABLES + EGRESS_TABLES and f.priority]
    if policy:
        return policy[-1], "forwarded"
    outs = [f for f in flows if f.outputs]
    return (outs[-1] if outs else flows[-1]), "forwarded"


def flow_policy(flow: TraceFlow, verdict: str, ground_truth: Any = None, proto: str = "") -> Policy | None:
    """The policy object behind a deciding flow: lab ground truth by cookie, else the lab's or
    Antrea's cookie layout and the conjunction id; None for a flow that is not a policy flow."""
    ck, conj = flow.cookie, flow.conj_id
    base = {"table": flow.table, "table_name": flow.table_name, "cookie": f"0x{ck:x}", "priority": flow.priority,
            "match": flow.match}
    if conj is not None:
        base["conj_id"] = conj
    direction = _direction(flow.table_name)
    if direction:
        base["direction"] = direction
    if ground_truth is not None:
        for p, ref in dict(getattr(ground_truth, "allowed", {}) or {}).items():
            if ref.kind == "ovs" and ref.cookie == ck and ck:
                return Policy("NetworkPolicy", f"lab allow {p} to the server" + (f" (conj_id {conj})" if conj else ""),
                              "lab ground truth",
                              {**base, "ground_truth": "allowed", "proto": p})
        den = getattr(ground_truth, "denied", None)
        if den is not None and den.kind == "ovs" and den.cookie == ck and ck:
            return Policy("default-deny", f"lab default deny ({den.table})", "lab ground truth",
                          {**base, "ground_truth": "denied"})
    lab = lab_cookie(ck)
    if lab is not None:
        cat, rid = lab
        if cat == 3:
            return Policy("NetworkPolicy", f"lab rule conj_id {rid}", "flow cookie", {**base, "lab_category": cat})
        if cat == 4:
            return Policy("default-deny", "lab default deny", "flow cookie", {**base, "lab_category": cat})
    if flow.table_name in RULE_TABLES and conj is not None:
        kind = "AntreaNetworkPolicy" if flow.table_name.startswith("AntreaPolicy") else "NetworkPolicy"
        return Policy(kind, f"conjunction {conj}", "conjunction id",
                      {**base, "cookie_fields": antrea_cookie(ck),
                       "note": "Antrea flows do not carry the policy's name: `antctl get of` / "
                               "`antctl query endpoint` on the node map the conjunction id to its rule"})
    if flow.table_name in DEFAULT_TABLES and verdict == "dropped":
        return Policy("default-deny", f"{flow.table_name} (isolated pod)", "table name",
                      {**base, "cookie_fields": antrea_cookie(ck)})
    if flow.table_name in INGRESS_TABLES + EGRESS_TABLES and "+est" in flow.match:
        return Policy("established", "ct_state=+est bypass", "table name",
                      {**base, "note": "the connection was admitted by its first packet; policy is not re-evaluated"})
    if conj is not None and lab is None and antrea_cookie(ck)["category"] == ANTREA_POLICY_CATEGORY:
        return Policy("NetworkPolicy", f"conjunction {conj}", "flow cookie",
                      {**base, "cookie_fields": antrea_cookie(ck),
                       "note": "Antrea Policy-category cookie; no table name, so K8s vs Antrea-native policy "
                               "is not known; `antctl get of` on the node maps the conjunction id to its rule"})
    if conj is not None:
        return Policy("unknown", f"conjunction {conj}", "conjunction id",
                      {**base, "note": "no table name: cannot tell which policy table this is"})
    return None


def _flow_text(f: TraceFlow) -> str:
    if f.miss:
        return "table miss: " + (f.notes[0] if f.notes else "No match")
    head = ", ".join(x for x in (f.match, f"priority {f.priority}", f"cookie 0x{f.cookie:x}" if f.cookie else "") if x)
    return f"{head} actions={','.join(f.actions) or 'drop'}"


def trace_hops(trace: OfprotoTrace, *, ground_truth: Any = None, proto: str = "", netns: str = "",
               order_base: int = 0) -> list[Hop]:
    """One Hop per matched flow (in trace order) plus one for the final datapath actions; the
    deciding flow carries the verdict, the rule and the policy."""
    decider, verdict = deciding_flow(trace)
    hops: list[Hop] = []
    order = order_base
    for p in trace.passes:
        for f in p.flows:
            order += 1
            name = f" {f.table_name}" if f.table_name else ""
            detail: dict[str, Any] = {"table": f.table, "table_name": f.table_name, "priority": f.priority,
                                      "match": f.match, "cookie": f"0x{f.cookie:x}", "actions": list(f.actions),
                                      "recirc": f.recirc}
            if f.notes:
                detail["notes"] = list(f.notes)
            if f.conj_id is not None:
                detail["conj_id"] = f.conj_id
            if f.conjunctions:
                detail["conjunctions"] = [list(c) for c in f.conjunctions]
            if f.miss:
                detail["miss"] = True
            decided = f is decider
            hops.append(Hop(layer="ovs", where=f"{f.bridge or '?'} table {f.table}{name}", what=_flow_text(f),
                            order=order, netns=netns, verdict=verdict if decided else None,
                            rule=_flow_text(f) if decided else None,
                            policy=flow_policy(f, verdict, ground_truth, proto) if decided else None,
                            detail=detail))
    if trace.passes:
        last = trace.passes[-1]
        order += 1
        outs = [o for f in trace.flows for o in f.outputs]
        hops.append(Hop(layer="ovs", where=f"{(trace.flows[-1].bridge if trace.flows else '') or '?'} datapath",
                        what=f"datapath actions: {last.datapath_actions or '(none)'}", order=order, netns=netns,
                        detail={"datapath_actions": [p.datapath_actions for p in trace.passes],
                                "megaflows": [p.megaflow for p in trace.passes], "output_ports": outs,
                                "passes": len(trace.passes), "verdict": verdict,
                                "recirculations": [p.header for p in trace.passes if p.header],
                                "warnings": list(trace.warnings)}))
    return hops


def parse_ofproto_trace(text: str, table_names: Mapping[int, str] | None = None, *,
                        ground_truth: Any = None, proto: str = "") -> list[Hop]:
    """ofproto/trace text -> hops (pure)."""
    return trace_hops(parse_trace(text, table_names), ground_truth=ground_truth, proto=proto)


# --- I/O -------------------------------------------------------------------------------------------

_SAFE = re.compile(r"^[A-Za-z0-9_.:/-]+$")


def flow_spec(packet: Mapping[str, Any], in_port: str | int) -> str:
    """The br_flow argument of ofproto/trace for a packet dict (proto, src, dst, sport, dport,
    optional src_mac/dst_mac)."""
    proto = str(packet.get("proto", "tcp")).lower()
    if proto not in ("tcp", "udp", "icmp"):
        raise UsageError(f"ofproto/trace: unsupported protocol {proto!r}")
    fields = [f"in_port={in_port}", proto]
    for key, name in (("src_mac", "dl_src"), ("dst_mac", "dl_dst"), ("src", "nw_src"), ("dst", "nw_dst")):
        if packet.get(key):
            fields.append(f"{name}={packet[key]}")
    if proto in ("tcp", "udp"):
        if packet.get("sport") is not None:
            fields.append(f"{proto}_src={int(packet['sport'])}")   # tp_src is refused for udp
        if packet.get("dport") is not None:
            fields.append(f"{proto}_dst={int(packet['dport'])}")
    for f in fields:
        if not _SAFE.match(f.split("=", 1)[-1]):
            raise UsageError(f"ofproto/trace: bad flow field {f!r}")
    return ",".join(fields)


def _ctl_args(ovs: Any) -> list[str]:
    """`-t CTL` for the OVS instance: an OvsTarget, a lab topology's `extra` mapping, or None."""
    ctl = None
    if ovs is None:
        return []
    if isinstance(ovs, Mapping):
        ctl = ovs.get("ovs_ctl")
    elif hasattr(ovs, "ctl_path"):
        ctl = ovs.ctl_path()
    if not ctl:
        raise ToolError("ofproto/trace: cannot find ovs-vswitchd's control socket")
    return ["-t", str(ctl)]


def _ofctl_target(ovs: Any, bridge: str) -> str:
    if isinstance(ovs, Mapping) and ovs.get("ovs_mgmt"):
        return str(ovs["ovs_mgmt"])
    if hasattr(ovs, "bridge_socket"):
        return ovs.bridge_socket(bridge)
    return bridge


def table_names(bridge: str, *, ovs: Any = None, runner: Runner = DEFAULT_RUNNER) -> dict[int, str]:
    """Table id -> name from `ovs-ofctl dump-table-features` ({} when it fails: numbers only)."""
    from cnitrace.collectors.ovs.parse import parse_table_feature_names
    done = runner.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-table-features", _ofctl_target(ovs, bridge)],
                      check=False, timeout=10)
    return parse_table_feature_names(done.stdout) if done.ok else {}


def has_detrace(commands_text: str) -> bool:
    """Whether `ovs-appctl list-commands` offers ofproto/detrace (OVS >= 3.4)."""
    return any(line.split()[:1] == ["ofproto/detrace"] for line in commands_text.splitlines())


def ovs_hops(packet: Mapping[str, Any], *, bridge: str, in_port: str | int, ovs: Any = None,
             runner: Runner = DEFAULT_RUNNER, ground_truth: Any = None,
             names: Mapping[int, str] | None = None, netns: str = "",
             extra_args: Sequence[str] = ()) -> list[Hop]:
    """Trace `packet` through `bridge` with ofproto/trace on the OVS instance `ovs` (an OvsTarget,
    a lab topology's `extra` with ovs_ctl/ovs_mgmt, or None for the default ovs-vswitchd).
    `ground_truth`: the lab's GroundTruth (policy by cookie); `names`: table names if known
    (else read from the switch); `extra_args`: e.g. ("--ct-next", "trk,est")."""
    ctl = _ctl_args(ovs)
    spec = flow_spec(packet, in_port)
    done = runner.run(["ovs-appctl", *ctl, "--timeout=10", "ofproto/trace", bridge, spec, *extra_args],
                      check=False, timeout=20)
    if not done.ok:
        raise ToolError(f"ofproto/trace on {bridge} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    tnames = dict(names) if names is not None else table_names(bridge, ovs=ovs, runner=runner)
    hops = trace_hops(parse_trace(done.stdout, tnames), ground_truth=ground_truth,
                      proto=str(packet.get("proto", "")), netns=netns)
    cmds = runner.run(["ovs-appctl", *ctl, "--timeout=5", "list-commands"], check=False, timeout=10)
    if hops:
        last = hops[-1]
        detail = {**last.detail, "flow_spec": spec,
                  "detrace": ("available (needs the datapath flow's UFID; not run)" if has_detrace(cmds.stdout)
                              else "not in this OVS version")}
        hops[-1] = dataclasses.replace(last, detail=detail)
    return hops


def lab_packet(topo: Any, packet: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Fill a lab packet's MACs from the topology and find its ingress OVS port (the pod whose
    IP is the source, else the gateway): (packet, in_port)."""
    pods = {p.ip: p for p in topo.pods}
    src, dst = pods.get(str(packet.get("src"))), pods.get(str(packet.get("dst")))
    gw = dict(topo.extra.get("gateway") or {})
    pk = dict(packet)
    pk.setdefault("src_mac", src.mac if src else gw.get("mac"))
    pk.setdefault("dst_mac", dst.mac if dst else gw.get("mac"))
    in_port = src.ofport if src else gw.get("ofport")
    if not in_port:
        raise UsageError(f"ofproto/trace: {packet.get('src')} is not a pod or the gateway of lab {topo.lab}")
    return pk, in_port


def ovs_hops_for_lab(lab: Any, packet: Mapping[str, Any], *, runner: Runner = DEFAULT_RUNNER,
                     extra_args: Sequence[str] = ()) -> list[Hop]:
    """ovs_hops on a cnitrace lab (a cnitrace.lab.manager.Lab of an OVS datapath): its own
    ovs-vswitchd, bridge, the source pod's port, and its ground truth."""
    topo = lab.topo
    if not topo.bridge or "ovs_ctl" not in topo.extra:
        raise UsageError(f"lab {topo.lab} has no OVS bridge")
    pk, in_port = lab_packet(topo, packet)
    return ovs_hops(pk, bridge=topo.bridge, in_port=in_port, ovs=topo.extra, runner=runner,
                    ground_truth=lab.truth, netns=topo.node_netns, extra_args=extra_args)

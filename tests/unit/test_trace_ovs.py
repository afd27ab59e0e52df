"""The OVS layer of `cnitrace trace`: ofproto/trace output -> hops, verdict and policy (no root).

Fixtures: tests/fixtures/ovs/ofproto_trace_*.txt -- captured from the antrea lab's ovs-vswitchd
(OVS 3.1, netdev) and taken from public OVS/Antrea documentation (provenance in each first line).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.core.runner import RecordedRunner
from cnitrace.lab.datapaths import antrea_flows as af
from cnitrace.lab.model import CounterRef, GroundTruth
from cnitrace.trace import ovs
from cnitrace.trace.hops import LAYERS, VERDICTS

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ovs"
NAMES = dict(enumerate(af.TABLES))


def fixture(name: str) -> str:
    return (FIX / f"ofproto_trace_{name}.txt").read_text()


def lab_truth() -> GroundTruth:
    def ref(table: str, ck: int) -> CounterRef:
        return CounterRef(kind="ovs", netns="cnit-x-node", backend="netdev", table=table, cookie=ck)
    return GroundTruth(allowed={p: ref("IngressRule", af.cookie(af.CAT_POLICY_RULE, c)) for p, c in af.ALLOW_CONJ_ID.items()},
                       denied=ref("IngressDefaultRule", af.cookie(af.CAT_DEFAULT_DENY)), evaluations={"tcp": 1, "udp": 1})


def deciding(hops):
    d = [h for h in hops if h.verdict]
    assert len(d) == 1, [h.where for h in d]
    return d[0]


@pytest.mark.parametrize("name", ["antrea_lab_allow", "antrea_lab_deny", "antrea_lab_est", "antrea_doc_antctl",
                                  "ovs_doc_resubmit_output", "ovs_doc_table_miss"])
def test_every_fixture_parses_without_warnings(name):
    assert fixture(name).startswith("# provenance:")
    tr = ovs.parse_trace(fixture(name))
    assert tr.passes and not tr.warnings
    hops = ovs.trace_hops(tr)
    assert all(h.layer in LAYERS and h.t_ns is None for h in hops)
    assert [h.order for h in hops] == sorted(h.order for h in hops)
    assert deciding(hops).verdict in VERDICTS


def test_lab_allowed_packet_follows_both_recirculations_to_the_conjunction_flow():
    tr = ovs.parse_trace(fixture("antrea_lab_allow"), NAMES)
    assert len(tr.passes) == 4                               # initial + ct(ConntrackState) + 2 x ct(commit)
    assert [p.header.split()[0] for p in tr.passes[1:]] == ["recirc(0x2)", "recirc(0x3)", "recirc(0x4)"]
    assert [f.table for f in tr.passes[0].flows] == [0, 3, 4, 5, 6]
    assert tr.passes[1].flows[0].table == 7 and tr.passes[3].flows[-1].table == 29
    assert tr.datapath_actions == "1"
    rule = [f for f in tr.flows if f.conj_id == 2][0]
    assert (rule.table, rule.table_name, rule.priority, rule.cookie) == (25, "IngressRule", 190, 0xC17000300000002)
    assert rule.actions[0] == "set_field:0x2->reg6" and rule.actions[1].startswith("ct(commit,table=27")
    assert any("resumed at table 27" in n for n in rule.notes)
    assert tr.flows[-1].outputs == ("3",)


def test_lab_allowed_packet_maps_to_ground_truth_allow_rule():
    hops = ovs.parse_ofproto_trace(fixture("antrea_lab_allow"), NAMES, ground_truth=lab_truth(), proto="tcp")
    d = deciding(hops)
    assert d.verdict == "forwarded" and d.where == "br-int table 25 IngressRule"
    assert d.policy.source == "lab ground truth" and d.policy.kind == "NetworkPolicy"
    assert d.policy.detail["conj_id"] == 2 and d.policy.detail["cookie"] == "0xc17000300000002"
    assert d.policy.detail["ground_truth"] == "allowed" and d.policy.detail["direction"] == "ingress"
    assert "conj_id=2" in d.rule
    last = hops[-1]
    assert last.where == "br-int datapath" and last.detail["output_ports"] == ["3"]
    assert last.detail["passes"] == 4 and len(last.detail["recirculations"]) == 3


def test_lab_denied_packet_is_dropped_by_ingress_default_rule():
    hops = ovs.parse_ofproto_trace(fixture("antrea_lab_deny"), NAMES, ground_truth=lab_truth(), proto="tcp")
    d = deciding(hops)
    assert d.verdict == "dropped" and d.detail["table"] == 26 and d.detail["table_name"] == "IngressDefaultRule"
    assert d.detail["cookie"] == f"0x{af.cookie(af.CAT_DEFAULT_DENY):x}" and d.detail["actions"] == ["drop"]
    assert d.policy.kind == "default-deny" and d.policy.source == "lab ground truth"
    assert hops[-1].what == "datapath actions: drop"


def test_lab_cookies_name_the_rule_without_ground_truth():
    d = deciding(ovs.parse_ofproto_trace(fixture("antrea_lab_allow"), NAMES))
    assert (d.policy.source, d.policy.name) == ("flow cookie", "lab rule conj_id 2")
    d = deciding(ovs.parse_ofproto_trace(fixture("antrea_lab_deny"), NAMES))
    assert (d.policy.kind, d.policy.source) == ("default-deny", "flow cookie")


def test_established_packet_decided_by_the_est_bypass():
    d = deciding(ovs.parse_ofproto_trace(fixture("antrea_lab_est"), NAMES, ground_truth=lab_truth()))
    assert d.verdict == "forwarded" and d.detail["table_name"] == "AntreaPolicyIngressRule"
    assert d.policy.kind == "established" and "+est" in d.detail["match"]


def test_public_antrea_trace_cookie_layout_and_legacy_table_numbers():
    text = fixture("antrea_doc_antctl")
    d = deciding(ovs.parse_ofproto_trace(text))                 # no names: from the cookie category
    assert d.detail["table"] == 90 and d.detail["conj_id"] == 2
    assert d.policy.source == "flow cookie" and d.policy.detail["cookie_fields"] == {
        "round": 0x5E, "category": 5, "category_name": "Policy", "object_id": 0}
    d = deciding(ovs.parse_ofproto_trace(text, ovs.ANTREA_LEGACY_TABLES))
    assert d.where == "br-int table 90 IngressRule" and d.policy.name == "conjunction 2"
    assert "antctl" in d.policy.detail["note"]                   # says it cannot name the policy itself
    tr = ovs.parse_trace(text)
    assert tr.flows[-1].table == 110 and tr.flows[-1].outputs == ("5",) and tr.datapath_actions == "3"


def test_table_miss_and_plain_output():
    miss = ovs.parse_trace(fixture("ovs_doc_table_miss"))
    assert miss.flows[-1].miss and miss.flows[-1].table == 2
    d = deciding(ovs.trace_hops(miss))
    assert d.verdict == "dropped" and d.policy is None and d.what.startswith("table miss")
    out = ovs.parse_trace(fixture("ovs_doc_resubmit_output"))
    assert [(f.table, f.match, f.priority, f.cookie) for f in out.flows] == [
        (0, "ip,in_port=3,nw_src=192.0.2.0/24", 32768, 0), (2, "tcp,tp_dst=22", 32768, 0)]
    assert out.flows[0].actions == ("resubmit(,2)",)
    d = deciding(ovs.trace_hops(out))
    assert d.verdict == "forwarded" and d.detail["table"] == 2 and d.policy is None


def test_conjunction_actions_and_table_name_prefix_are_parsed():
    text = ("Flow: tcp,in_port=4\n\nbridge(\"br-int\")\n----------------\n"
            " 0. IngressRule: ip,nw_src=10.0.0.3, priority 200, cookie 0x5050000000007\n"
            "    conjunction(7,1/3),conjunction(9,1/2)\n"
            " 1. No match.\n    drop\n\nFinal flow: unchanged\nMegaflow: recirc_id=0\nDatapath actions: drop\n")
    tr = ovs.parse_trace(text)
    f = tr.flows[0]
    assert f.table_name == "IngressRule" and f.conjunctions == ((7, 1, 3), (9, 1, 2))
    assert ovs.antrea_cookie(f.cookie)["category_name"] == "Policy" and ovs.antrea_cookie(f.cookie)["object_id"] == 7


@pytest.mark.parametrize("text", ["", "garbage\nmore garbage\n", "Flow: tcp\n\nbridge(\"b\")\n 3. ???\n"])
def test_malformed_input_gives_warnings_not_crashes(text):
    tr = ovs.parse_trace(text)
    hops = ovs.trace_hops(tr)
    assert tr.warnings or hops


def test_flow_spec_uses_protocol_port_fields_and_validates():
    pk = {"proto": "udp", "src": "10.0.0.3", "dst": "10.0.0.2", "sport": 1000, "dport": 53,
          "src_mac": "0a:58:0a:f4:00:03"}
    assert ovs.flow_spec(pk, 4) == "in_port=4,udp,dl_src=0a:58:0a:f4:00:03,nw_src=10.0.0.3,nw_dst=10.0.0.2,udp_src=1000,udp_dst=53"
    with pytest.raises(UsageError):
        ovs.flow_spec({**pk, "dst": "1.2.3.4;rm"}, 4)
    with pytest.raises(UsageError):
        ovs.flow_spec({**pk, "proto": "sctp"}, 4)


def test_ovs_hops_runs_against_the_labs_own_vswitchd():
    extra = {"ovs_ctl": "/run/cnitrace/cnit-x-ovs/ovs-vswitchd.ctl", "ovs_mgmt": "unix:/run/cnitrace/cnit-x-ovs/br-int.mgmt"}
    pk = {"proto": "tcp", "src": "10.244.0.3", "dst": "10.244.0.2", "sport": 40000, "dport": 9090,
          "src_mac": "0a:58:0a:f4:00:03", "dst_mac": "0a:58:0a:f4:00:02"}
    spec = ovs.flow_spec(pk, "client-1-40cb1c")
    features = "".join(f'  table {i} ("{n}"):\n    max_entries=1000000\n' for i, n in NAMES.items())
    r = RecordedRunner({
        ("ovs-appctl", "-t", extra["ovs_ctl"], "--timeout=10", "ofproto/trace", "br-int", spec): fixture("antrea_lab_deny"),
        ("ovs-ofctl", "-O", "OpenFlow15", "dump-table-features", extra["ovs_mgmt"]): features,
        ("ovs-appctl", "-t", extra["ovs_ctl"], "--timeout=5", "list-commands"):
            "The available commands are:\n  ofproto/trace           {[dp_name] odp_flow | bridge br_flow}\n",
    })
    hops = ovs.ovs_hops(pk, bridge="br-int", in_port="client-1-40cb1c", ovs=extra, runner=r, ground_truth=lab_truth())
    d = deciding(hops)
    assert d.detail["table_name"] == "IngressDefaultRule" and d.policy.source == "lab ground truth"
    assert hops[-1].detail["detrace"] == "not in this OVS version" and hops[-1].detail["flow_spec"] == spec


def test_detrace_detection():
    assert ovs.has_detrace("  ofproto/detrace         UFID [pmd=core]\n  ofproto/trace  x\n")
    assert not ovs.has_detrace("  ofproto/trace  x\n  ofproto/trace-packet-out x\n")


def test_lab_packet_fills_macs_and_ingress_port_from_topology():
    from cnitrace.lab.model import Pod, Topology
    pods = (Pod("p0", "server", "n0", "10.244.0.2", 24, "10.244.0.1", "0a:58:0a:f4:00:02", ofport=3),
            Pod("p1", "client", "n1", "10.244.0.3", 24, "10.244.0.1", "0a:58:0a:f4:00:03", ofport=4))
    topo = Topology("x", "cnit-x-node", pods, "10.244.0.0/24", bridge="br-int",
                    extra={"gateway": {"mac": "0a:58:0a:f4:00:01", "ofport": 2}})
    pk, port = ovs.lab_packet(topo, {"proto": "tcp", "src": "10.244.0.3", "dst": "10.244.0.2", "dport": 80})
    assert (port, pk["src_mac"], pk["dst_mac"]) == (4, "0a:58:0a:f4:00:03", "0a:58:0a:f4:00:02")
    pk, port = ovs.lab_packet(topo, {"proto": "tcp", "src": "192.0.2.9", "dst": "10.244.0.2", "dport": 80})
    assert (port, pk["src_mac"]) == (2, "0a:58:0a:f4:00:01")


def _synthetic(tables_and_lines):
    body = "".join(f"{t:2d}. {m}\n" + "".join(f"    {a}\n" for a in acts) for t, m, acts in tables_and_lines)
    return ("Flow: tcp,in_port=4\n\nbridge(\"br-int\")\n----------------\n" + body +
            "\nFinal flow: unchanged\nMegaflow: recirc_id=0\nDatapath actions: drop\n")


def test_antrea_native_drop_rule_is_the_conjunction_not_the_metric_table():
    names = {24: "AntreaPolicyIngressRule", 27: "IngressMetric"}
    text = _synthetic([(24, "conj_id=6,ip, priority 14900, cookie 0x10500000006",
                        ["set_field:0x6->reg3", "set_field:0x400/0x400->reg0", "goto_table:27"]),
                       (27, "reg0=0x400/0x400,reg3=0x6, priority 200, cookie 0x10500000006", ["drop"])])
    d = deciding(ovs.parse_ofproto_trace(text, names))
    assert d.verdict == "dropped" and d.detail["conj_id"] == 6 and d.policy.kind == "AntreaNetworkPolicy"


def test_a_drop_after_an_allow_rule_blames_the_dropping_flow():
    names = {25: "IngressRule", 29: "Output"}
    text = _synthetic([(25, "conj_id=2,ip, priority 190, cookie 0x10500000002", ["goto_table:29"]),
                       (29, "priority 0, cookie 0x10000000000", ["drop"])])
    d = deciding(ovs.parse_ofproto_trace(text, names))
    assert d.verdict == "dropped" and d.detail["table"] == 29 and d.policy is None

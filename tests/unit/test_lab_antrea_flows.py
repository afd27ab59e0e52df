"""Unit tests: the generated Antrea pipeline, checked against a real Antrea flow dump.

The fixture is Antrea's own per-table dump (docs/design/ovs-pipeline.md); after replacing
addresses, ports and ids with placeholders, every flow of the tables the lab reproduces
must appear in the lab's pipeline with the same table, priority, match and actions.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cnitrace.lab.datapaths import antrea_flows as af
from cnitrace.lab import topology
from cnitrace.lab.datapaths import registry as datapath
from cnitrace.lab.datapaths.antrea import Antrea, antrea_iface_name, choose_datapath_type
from cnitrace.lab.model import LabSpec
from cnitrace.lab.policy import port_rules

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ovs" / "antrea-pipeline-doc-flows.txt"
NAMES = {str(i): name for i, name in enumerate(af.TABLES)}


def spec_for(n: int = 3, clients: int = 1) -> af.PipelineSpec:
    lab = LabSpec(name="u", datapath="antrea", rules=n, pods=clients)
    topo = topology.plan(lab, datapath.get("antrea"))
    pods = tuple(af.OfPort(p.node_iface, 3 + i, p.mac, p.ip) for i, p in enumerate(topo.pods))
    gw = af.OfPort(af.GATEWAY_PORT, 2, "0a:58:0a:f4:00:01", topo.pods[0].gateway)
    return af.PipelineSpec(subnet=topo.subnet, gateway=gw, pods=pods, server=pods[0],
                           clients=tuple(p.ip for p in pods[1:]), rules=af.policy_rules(port_rules(topo, lab)))


def split(line: str) -> dict:
    """One generated add-flows line -> table name, priority, match, actions (tables by name)."""
    head, actions = line.split(",actions=", 1)
    fields = head.split(",")
    info = dict(f.split("=", 1) for f in fields[:3])
    match = ",".join(fields[3:])
    actions = re.sub(r"goto_table:(\d+)", lambda m: f"goto_table:{NAMES[m.group(1)]}", actions)
    actions = re.sub(r"(ct\((?:commit,)?table=)(\d+)", lambda m: f"{m.group(1)}{NAMES[m.group(2)]}", actions)
    return {"cookie": int(info["cookie"], 16), "table": NAMES[info["table"]], "priority": int(info["priority"]),
            "match": match, "actions": actions}


def shape(text: str) -> str:
    """Replace what differs between nodes (addresses, ports, ids) with placeholders."""
    text = re.sub(r'in_port="?[\w-]+"?', "in_port=PORT", text)
    text = re.sub(r"\b\d+\.\d+\.\d+\.\d+/\d+\b", "CIDR", text)
    text = re.sub(r"\b\d+\.\d+\.\d+\.\d+\b", "IP", text)
    text = re.sub(r"\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b", "MAC", text)
    text = re.sub(r"reg1=0x[0-9a-f]+", "reg1=OFPORT", text)
    text = re.sub(r"set_field:0x[0-9a-f]+->reg1", "set_field:OFPORT->reg1", text)
    text = re.sub(r"set_field:0x[0-9a-f]+->reg6", "set_field:ID->reg6", text)
    text = re.sub(r"set_field:0x[0-9a-f]+/0xffffffff->ct_label", "set_field:ID/0xffffffff->ct_label", text)
    text = re.sub(r"ct_label=0x[0-9a-f]+/", "ct_label=ID/", text)
    text = re.sub(r"conjunction\(\d+,", "conjunction(ID,", text)
    text = re.sub(r"conj_id=\d+", "conj_id=ID", text)
    # Antrea merges identical dimension flows of several rules into one flow with one action each
    text = re.sub(r"(conjunction\(ID,(\d)/3\))(,conjunction\(ID,\2/3\))+", r"\1", text)
    return re.sub(r"tp_dst=\d+", "tp_dst=PORT", text)


def real_flows() -> list[tuple[str, int, str, str]]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"table=(\w+), priority=(\d+),?(\S*) actions=(\S+)$", line)
        assert m, line
        out.append((m.group(1), int(m.group(2)), shape(m.group(3)), shape(m.group(4))))
    return out


def test_fixture_flows_all_appear_in_the_lab_pipeline():
    ours = {(f["table"], f["priority"], shape(f["match"]), shape(f["actions"]))
            for f in map(split, af.pipeline(spec_for()))}
    real = real_flows()
    assert len(real) == 33
    missing = [r for r in real if r not in ours]
    assert not missing, missing


def test_tables_in_antrea_order_and_goto_only_forward():
    assert af.TABLES[0] == "PipelineRootClassifier" and af.TABLES[-1] == "Output"
    for a, b in [("Classifier", "SpoofGuard"), ("ConntrackZone", "ConntrackState"), ("EgressRule", "EgressDefaultRule"),
                 ("IngressRule", "IngressDefaultRule"), ("L2ForwardingCalc", "Output")]:
        assert af.TABLE_ID[a] < af.TABLE_ID[b]
    for line in af.pipeline(spec_for()):
        table = int(re.search(r",table=(\d+),", line).group(1))
        for target in re.findall(r"goto_table:(\d+)|ct\(table=(\d+)", line):
            t = int(target[0] or target[1])
            assert t > table, line


def test_every_table_has_a_table_miss_flow():
    flows = list(map(split, af.pipeline(spec_for())))
    assert {f["table"] for f in flows if f["priority"] == 0} == set(af.TABLES)


@pytest.mark.parametrize("n", [0, 1, 100, 1000])
def test_policy_conjunctions_and_cookies(n):
    flows = list(map(split, af.pipeline(spec_for(n, clients=2))))
    rule_flows = [f for f in flows if af.cookie_parts(f["cookie"])[0] == af.CAT_POLICY_RULE]
    conj_ids = sorted(int(re.search(r"conj_id=(\d+)", f["match"]).group(1)) for f in rule_flows)
    assert conj_ids == ([af.FILLER_CONJ_ID] if n else []) + sorted(af.ALLOW_CONJ_ID.values())
    assert len({f["cookie"] for f in rule_flows}) == len(rule_flows)          # one flow per rule cookie
    ingress = [f for f in flows if f["table"] == "IngressRule"]
    for cid in conj_ids:
        dims = {d for f in ingress for d in re.findall(rf"conjunction\({cid},(\d)/3\)", f["actions"])}
        assert dims == {"1", "2", "3"}
    # one src-dimension flow per client, carrying every rule's conjunction (Antrea merges them)
    src = [f for f in ingress if "nw_src=" in f["match"]]
    assert len(src) == 2 and all(f["actions"].count("conjunction(") == len(conj_ids) for f in src)
    # each filler range [lo, lo+3] is 1..3 masked tp_dst flows
    service = [f for f in ingress if "tp_dst=" in f["match"] and f["priority"] == 200]
    assert n + 2 <= len(service) <= 3 * n + 2
    deny = [f for f in flows if f["table"] == "IngressDefaultRule" and f["actions"] == "drop"]
    assert len(deny) == 1 and deny[0]["cookie"] == af.cookie(af.CAT_DEFAULT_DENY)


@given(st.integers(0, 65535), st.integers(0, 300))
def test_port_masks_cover_the_range_exactly(lo, width):
    hi = min(65535, lo + width)
    covered = set()
    for value, mask in af.port_masks(lo, hi):
        assert value & ~mask & 0xFFFF == 0
        size = (~mask & 0xFFFF) + 1
        block = set(range(value, value + size))
        assert not block & covered
        covered |= block
    assert covered == set(range(lo, hi + 1))


def test_port_masks_rejects_bad_range():
    with pytest.raises(ValueError):
        af.port_masks(10, 5)


def test_cookie_round_trip_and_foreign_cookies():
    assert af.cookie_parts(af.cookie(af.CAT_POLICY_RULE, 7)) == (af.CAT_POLICY_RULE, 7)
    assert af.cookie_parts(0x1030000000000) is None           # a real Antrea cookie is not the lab's


def test_interface_names_like_antrea():
    name = antrea_iface_name("client-6f8c9", "default", "lab")
    assert len(name) == 15 and name.startswith("client-6-") and re.fullmatch(r"[0-9a-f]{6}", name[9:])
    dp = datapath.get("antrea")
    assert len({dp.node_iface_name("lab", i) for i in range(50)}) == 50


def test_datapath_type_follows_the_kernel_module():
    assert choose_datapath_type(module_loaded=True, module_available=False) == "system"
    assert choose_datapath_type(module_loaded=False, module_available=True) == "system"
    assert choose_datapath_type(module_loaded=False, module_available=False) == "netdev"


def test_ground_truth_points_at_rule_and_default_deny_flows():
    lab = LabSpec(name="u", datapath="antrea", rules=100)
    topo = topology.plan(lab, datapath.get("antrea"))
    truth = Antrea().ground_truth(topo, lab)
    assert {k: af.cookie_parts(v.cookie) for k, v in truth.allowed.items()} == {
        "tcp": (af.CAT_POLICY_RULE, af.ALLOW_CONJ_ID["tcp"]), "udp": (af.CAT_POLICY_RULE, af.ALLOW_CONJ_ID["udp"])}
    assert truth.allowed["tcp"].table == "IngressRule" and truth.denied.table == "IngressDefaultRule"
    assert af.cookie_parts(truth.denied.cookie) == (af.CAT_DEFAULT_DENY, 0)


def test_table_names_reach_ovsdb_as_flow_table_records():
    args = af.table_name_args("br-int")
    assert args.count("Flow_Table") == len(af.TABLES)
    assert args[-1].startswith("flow_tables={0=@t0,") and args[-1].endswith(f"{len(af.TABLES) - 1}=@t{len(af.TABLES) - 1}}}")


def test_l7_adds_traffic_control_redirect_and_return_path():
    base = spec_for(3)
    tgt = af.OfPort(af.TC_TARGET_PORT, 10, "0a:58:a9:fe:00:0a", "169.254.0.10")
    ret = af.OfPort(af.TC_RETURN_PORT, 11, "0a:58:a9:fe:00:0b", "")
    import dataclasses
    flows = list(map(split, af.pipeline(dataclasses.replace(base, l7_port=8080, tc_target=tgt, tc_return=ret))))
    tc = [f for f in flows if af.cookie_parts(f["cookie"])[0] == af.CAT_TRAFFIC_CONTROL]
    by_table = {}
    for f in tc:
        by_table.setdefault(f["table"], []).append(f)
    # real Antrea: TrafficControl marks (reg9 = target port, redirect mark), Output sends to reg9,
    # the return port is classified FromTCReturn and skips the ingress tables
    (mark,) = [f for f in by_table["TrafficControl"] if f["priority"] == 200]
    assert mark["match"] == f"tcp,reg1=0x{base.server.ofport:x},tp_dst=8080"
    assert "set_field:0xa->reg9" in mark["actions"] and f"set_field:{af.TC_REDIRECT}->reg4" in mark["actions"]
    (out,) = by_table["Output"]
    assert out["priority"] == 211 and out["actions"].endswith("output:NXM_NX_REG9[]")
    (cls,) = by_table["Classifier"]
    assert cls["match"] == "in_port=11" and "goto_table:L3Forwarding" in cls["actions"]
    assert not [f for f in af.pipeline(base) if "reg9" in f]

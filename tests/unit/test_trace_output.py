"""The trace document: Hubble flow field names, cnitrace's hop list, and pcapng with JSON comments."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cnitrace.trace import output, policy
from cnitrace.trace.netfilter import packets, parse_trace, to_hops

FIX = Path(__file__).parents[1] / "fixtures" / "trace"


def _flows():
    pkts = packets(parse_trace((FIX / "calico_nft_monitor_trace.txt").read_text()), "cnit-x-node")
    flows, raws = [], []
    for p in (pkts[0], pkts[2]):
        hops, verdict, idx = policy.annotate(to_hops(p))
        flows.append(output.flow(p.packet, hops, verdict, idx, node="cnit-x-node", t_wall=0.0))
        raws.append(output.packet_bytes(p.packet))
    return flows, raws


def test_hubble_fields_allowed_and_denied():
    (allowed, denied), _ = _flows()
    assert allowed["verdict"] == "FORWARDED" and denied["verdict"] == "DROPPED"
    assert allowed["IP"] == {"source": "10.65.0.3", "destination": "10.65.0.2", "ipVersion": "IPv4"}
    assert allowed["l4"]["TCP"] == {"source_port": 31000, "destination_port": 8080, "flags": {"SYN": True}}
    assert allowed["traffic_direction"] == "INGRESS" and allowed["trace_observation_point"] == "TO_ENDPOINT"
    assert allowed["ingress_allowed_by"][0]["name"].startswith("cali-pi-")
    assert "drop_reason_desc" not in allowed
    assert denied["drop_reason_desc"] == "POLICY_DENIED"
    assert denied["ingress_denied_by"][0]["kind"] == "default-deny"
    assert denied["time"] == "1970-01-01T00:00:00Z"


def test_cnitrace_hop_list_and_times():
    (allowed, denied), _ = _flows()
    c = denied["cnitrace"]
    assert c["times"] == "none"
    assert c["hops"][c["deciding_hop"]]["verdict"] == "dropped"
    assert c["where"] == "ip filter cali-tw-calie240e986618"
    assert [h["order"] for h in c["hops"]] == sorted(h["order"] for h in c["hops"])
    assert all(set(h) >= {"layer", "where", "what", "t_ns", "verdict", "rule", "policy"} for h in c["hops"])
    json.dumps(allowed)       # serialisable


def test_document_counts():
    flows, _ = _flows()
    doc = output.document({"mode": "probe"}, flows, sent=2, selection={"netns": ["n"]})
    assert (doc["kind"], doc["sent"], doc["traced"], doc["interrupted"]) == ("cnitrace-trace", 2, 2, False)


def test_pcapng_comments_read_back(tmp_path):
    flows, raws = _flows()
    path = tmp_path / "t.pcapng"
    output.write_pcapng(str(path), flows, raws)
    from scapy.utils import PcapNgReader
    with PcapNgReader(str(path)) as r:
        got = list(r)
    assert len(got) == 2
    assert [json.loads(p.comment)["verdict"] for p in got] == ["FORWARDED", "DROPPED"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (Debian package tshark)")
def test_pcapng_opens_in_tshark(tmp_path):
    flows, raws = _flows()
    path = tmp_path / "t.pcapng"
    output.write_pcapng(str(path), flows, raws)
    out = subprocess.run(["tshark", "-r", str(path), "-T", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pkts = json.loads(out.stdout)
    assert len(pkts) == 2
    comments = [json.loads(_comment(p)) for p in pkts]
    assert [c["verdict"] for c in comments] == ["FORWARDED", "DROPPED"]
    assert comments[1]["cnitrace"]["policy"]["kind"] == "default-deny"
    assert pkts[0]["_source"]["layers"]["ip"]["ip.dst"] == "10.65.0.2"


def _comment(pkt):
    layers = pkt["_source"]["layers"]
    frame = layers.get("frame", {})
    for key in ("frame.comment", "pkt_comment"):
        if key in frame:
            return frame[key]
    pc = layers.get("pkt_comment") or frame.get("frame.comment_tree")
    if isinstance(pc, dict):
        for k, v in pc.items():
            if "comment" in k and isinstance(v, str):
                return v
    raise AssertionError(f"no comment in {list(layers)} / {list(frame)}")

"""iptables legacy TRACE records through nfnetlink_log (real datagrams captured here) -> hops;
kernel tracepoint events -> timed hops."""

from pathlib import Path

import pytest

from cnitrace.collectors.iptables.parse import parse_ruleset
from cnitrace.trace import nflog, policy, timing

FIX = Path(__file__).parents[1] / "fixtures" / "trace"

SAVE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:cali-pi-test - [0:0]
-A OUTPUT -p udp -m udp --dport 9090 -j cali-pi-test
-A cali-pi-test -p udp -m comment --comment "cali:abcdefghijklmnop" -j DROP
COMMIT
"""


def _records():
    lines = (FIX / "legacy_trace_nflog.hex").read_text().splitlines()
    assert lines[0].startswith("# provenance:")
    return [r for line in lines[1:] for r in nflog.parse_messages(bytes.fromhex(line))]


def test_parse_real_datagrams():
    recs = _records()
    assert [r["trace"] for r in recs] == [
        {"table": "filter", "chain": "OUTPUT", "kind": "rule", "num": 1},
        {"table": "filter", "chain": "cali-pi-test", "kind": "rule", "num": 1}]
    p = recs[0]["packet"]
    assert (p["saddr"], p["daddr"], p["proto"], p["dport"]) == ("127.0.0.1", "127.0.0.1", "udp", 9090)
    assert recs[0]["outdev"] == 1 and "indev" not in recs[0]
    assert len(nflog.group(recs)) == 1


@pytest.mark.parametrize("prefix,want", [
    ("TRACE: raw:PREROUTING:policy:2 ", {"table": "raw", "chain": "PREROUTING", "kind": "policy", "num": 2}),
    ("TRACE: filter:cali-tw-cali1234:return:9 ", {"table": "filter", "chain": "cali-tw-cali1234", "kind": "return", "num": 9}),
    ("something else", None)])
def test_prefix(prefix, want):
    assert nflog.parse_prefix(prefix) == want


def test_truncated_datagram_is_ignored():
    data = bytes.fromhex((FIX / "legacy_trace_nflog.hex").read_text().splitlines()[1])
    assert nflog.parse_messages(data[:30]) == []


def test_hops_join_legacy_rules_and_decide():
    rs, _ = parse_ruleset(SAVE, backend="legacy")
    rules = {(r.table, r.chain, r.position): r for r in rs.rules}
    chains = {(c.table, c.name): c for c in rs.chains}
    hops = nflog.to_hops(_records(), rules, chains, netns="n")
    assert [h.detail["nft_verdict"] for h in hops] == ["jump", "drop"]
    assert hops[1].rule == '-A cali-pi-test -p udp -m comment --comment "cali:abcdefghijklmnop" -j DROP'
    out, verdict, idx = policy.annotate(hops)
    assert (verdict, idx) == ("dropped", 1)
    assert out[1].policy.kind == "NetworkPolicy" and out[1].policy.detail["rule_id"] == "abcdefghijklmnop"


def test_policy_record_takes_chain_policy():
    rs, _ = parse_ruleset(SAVE.replace(":FORWARD ACCEPT", ":FORWARD DROP"), backend="legacy")
    chains = {(c.table, c.name): c for c in rs.chains}
    rec = {"trace": {"table": "filter", "chain": "FORWARD", "kind": "policy", "num": 1}, "packet": {}}
    (hop,) = nflog.to_hops([rec], {}, chains)
    assert hop.detail["nft_verdict"] == "drop" and hop.what == "policy DROP"


def test_nflog_log_lines():
    text = 'junk\n{"ready": true}\n{"prefix": "TRACE: filter:OUTPUT:rule:1 ", "packet": {"ip_id": 5}, ' \
           '"trace": {"table": "filter", "chain": "OUTPUT", "kind": "rule", "num": 1}}\n{bad\n'
    w = []
    recs = nflog.parse_log(text, w)
    assert len(recs) == 1 and len(w) == 1


SENT = [{"ip_id": 10, "t_ns": 1000}, {"ip_id": 11, "t_ns": 5000}]


def test_assign_first_transit_per_probe_and_its_drop():
    evs = [("transit", {"ts": 1500, "ns": 300, "ifindex_in": 4, "ifindex_out": 6}),   # probe 10, rx 1200
           ("transit", {"ts": 2500, "ns": 100, "ifindex_in": 4, "ifindex_out": 6}),   # its RST: ignored
           ("transit", {"ts": 5900, "ns": 400, "ifindex_in": 4, "ifindex_out": 0}),   # probe 11, dropped
           ("drops", {"ts": 5901, "reason": 6, "location": 0xffff})]
    got = timing.assign(evs, SENT)
    assert [st for st, _ in got[10]] == ["transit"] and got[10][0][1]["ts"] == 1500
    assert [st for st, _ in got[11]] == ["transit", "drops"]


def test_timed_hops():
    got = timing.assign([("transit", {"ts": 5900, "ns": 400, "ifindex_in": 4, "ifindex_out": 0}),
                         ("drops", {"ts": 5901, "reason": 6, "location": 0xff})], SENT)
    hops = timing.hops_for(got[11], "n", {4: "cali1"}, {6: "NETFILTER_DROP"})
    assert [(h.layer, h.where, h.t_ns) for h in hops] == [("iface", "n/cali1 receive", 5500),
                                                          ("drop", "n kfree_skb at 0xff", 5901)]
    assert hops[1].detail["drop_reason"] == "NETFILTER_DROP"
    fwd = timing.hops_for([("transit", {"ts": 900, "ns": 100, "ifindex_in": 4, "ifindex_out": 6})], "n", {}, {})
    assert fwd[1].where == "n/6 transmit" and fwd[1].cost_ns == 100.0

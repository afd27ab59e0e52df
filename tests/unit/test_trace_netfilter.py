"""`nft monitor trace` output (captured on this machine) -> events -> packets -> hops."""

from pathlib import Path

from cnitrace.trace import netfilter
from cnitrace.trace.netfilter import chain_positions, packets, parse_trace, to_hops, trace_table

FIX = Path(__file__).parents[1] / "fixtures" / "trace"


def _read(name):
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text


def test_calico_lab_trace_groups_per_packet():
    w = []
    pkts = packets(parse_trace(_read("calico_nft_monitor_trace.txt"), w), "cnit-x-node")
    assert w == []
    assert [p.trace_id for p in pkts] == ["f6ece403", "0be264cc", "5063c303"]
    allowed, rst, denied = pkts
    assert allowed.packet == {"iif": "calif4d6f039197", "saddr": "10.65.0.3", "daddr": "10.65.0.2", "ttl": 64,
                              "ip_id": 1, "sport": 31000, "dport": 8080, "tcp_flags": "syn", "proto": "tcp"}
    assert rst.packet["tcp_flags"] == "rst"
    assert denied.packet["dport"] == 9090
    assert allowed.netns == "cnit-x-node"


def test_rule_events_carry_handle_verdict_target():
    evs = parse_trace(_read("calico_nft_monitor_trace.txt"))
    jump = next(e for e in evs if e.kind == "rule" and e.handle == 48)
    assert (jump.table, jump.chain, jump.verdict, jump.target) == (
        "filter", "cali-tw-calie240e986618", "jump", "cali-pi-_e_fNlLvAKOZcWKa6IhX")
    own = next(e for e in evs if e.table == "cnit-trace")
    assert own.kind == "packet"
    unknown = next(e for e in evs if e.kind == "rule" and e.table == "cnit-trace")
    assert (unknown.handle, unknown.verdict) == (3, "continue")
    pol = next(e for e in evs if e.kind == "policy")
    assert pol.verdict == "accept"


def test_text_without_handles():
    """`nft monitor trace` without -a: rules have no handle, the verdict is still there."""
    evs = parse_trace(_read("output_drop_monitor_trace.txt"))
    pkts = packets(evs)
    assert len(pkts) == 1
    drop = [e for e in pkts[0].events if e.kind == "rule" and e.table == "filter"]
    assert [(e.chain, e.handle, e.verdict) for e in drop] == [("OUTPUT", None, "drop")]
    assert drop[0].rule == "udp dport 9090 counter packets 0 bytes 0 drop"


def test_hops_skip_own_table_and_join_positions():
    pkts = packets(parse_trace(_read("calico_nft_monitor_trace.txt")), "n")
    positions = {("ip", "filter", "cali-tw-calie240e986618"): {46: 1, 47: 2, 48: 3, 49: 4, 50: 5}}
    hops = to_hops(pkts[2], positions=positions)
    assert all("cnit-trace" not in h.where for h in hops)
    assert [h.order for h in hops] == list(range(1, len(hops) + 1))
    last = hops[-1]
    assert last.where == "ip filter cali-tw-calie240e986618"
    assert last.detail["position"] == 5 and last.detail["nft_verdict"] == "drop"
    assert last.what.startswith("rule 5: ")
    assert (hops[0].layer, hops[0].where) == ("iface", "n/calif4d6f039197 prerouting")   # flagged by cnitrace's table
    assert hops[1].what.startswith("handle 20: ")       # no position known for FORWARD


def test_hops_print_iptables_text():
    class R:
        chain, spec, comment = "cali-tw-calie240e986618", "-m comment --comment \"cali:x\" -j DROP", "cali:x"
    pkts = packets(parse_trace(_read("calico_nft_monitor_trace.txt")))
    hops = to_hops(pkts[2], positions={("ip", "filter", "cali-tw-calie240e986618"): {50: 7}},
                   iptables_rules={("filter", "cali-tw-calie240e986618", 7): R()})
    assert hops[-1].rule == '-A cali-tw-calie240e986618 -m comment --comment "cali:x" -j DROP'
    assert hops[-1].detail["comment"] == "cali:x"


def test_malformed_lines_warn_not_crash():
    w = []
    evs = parse_trace("trace id zz garbage\ntrace id 1a ip t c frobnicate x\nnot a trace line\n", w)
    assert evs == [] and len(w) == 2


NFT_LIST = """table ip filter { # handle 2
\tchain OUTPUT { # handle 1
\t\ttype filter hook output priority filter; policy accept;
\t\tudp dport 9090  counter packets 0 bytes 0 drop # handle 2
\t\tudp dport 9091 drop # handle 7
\t}
}
table inet cnit-netpol { # handle 1
\tset peers-p0 { # handle 5
\t\ttype ipv4_addr
\t\telements = { 10.65.0.3 }
\t}
\tchain ingress-p0 { # handle 2
\t\tip saddr != @peers-p0 counter packets 0 bytes 0 drop comment "peer" # handle 11
\t\tcounter packets 0 bytes 0 drop comment "default deny ingress to pod p0" # handle 13
\t}
}
"""


def test_chain_positions():
    pos = chain_positions(NFT_LIST)
    assert pos[("ip", "filter", "OUTPUT")] == {2: 1, 7: 2}
    assert pos[("inet", "cnit-netpol", "ingress-p0")] == {11: 1, 13: 2}
    assert ("inet", "cnit-netpol", "peers-p0") not in pos


def test_trace_table_is_cnit_owned_and_before_raw():
    text = trace_table("cnit-trace-1", "ip daddr 10.0.0.1 meta l4proto tcp")
    assert text.startswith("table ip cnit-trace-1 {")
    assert text.count("priority -350;") == 2 and text.count("meta nftrace set 1") == 2
    assert "hook prerouting" in text and "hook output" in text
    assert netfilter.TABLE_PREFIX.startswith("cnit")

"""Per-table times and conntrack state on trace hops, from bracket events (pure functions)."""

from __future__ import annotations

import ctypes
import socket

from hypothesis import given
from hypothesis import strategies as st

from cnitrace.probes.nfbracket import CTINFO, EventFilter, NfbEvent, decode_event
from cnitrace.trace.hops import Hop
from cnitrace.trace.tabletimes import conntrack_hop, events_of, floors, table_hops, with_conntrack

NS = "cnit-x-node"
KEYS = {
    0: {"kind": "floor", "table": "", "chain": "", "pf": "ipv4", "hook": "FORWARD", "netns_name": NS},
    1: {"kind": "iptables", "table": "mangle", "chain": "FORWARD", "pf": "ipv4", "hook": "FORWARD",
        "priority": -150, "netns_name": NS},
    2: {"kind": "iptables", "table": "filter", "chain": "FORWARD", "pf": "ipv4", "hook": "FORWARD",
        "priority": 0, "netns_name": NS},
}
PKT = {"ip_id": 0xC1A0, "saddr": "10.65.0.3", "daddr": "10.65.0.2", "sport": 41000, "dport": 8080}


def ev(slot, ts, ns, ct="new", dropped=False, **kw):
    return {"slot": slot, "ts": ts, "ns": ns, "ct": ct, "dropped": dropped, **PKT, **kw}


def rule_hops():
    return [Hop("iface", f"{NS}/cali1 receive", "net:netif_receive_skb", t_ns=1000, order=1, netns=NS),
            Hop("netfilter", "ip filter FORWARD", "rule 1: -j cali-FORWARD -> jump", order=2, netns=NS),
            Hop("netfilter", "ip filter cali-FORWARD", "rule 3: -j ACCEPT -> accept", order=3, netns=NS),
            Hop("iface", f"{NS}/cali2 transmit", "net:net_dev_start_xmit", t_ns=9000, order=4, netns=NS)]


def test_events_of_keeps_only_this_packet_in_time_order():
    other = dict(PKT, ip_id=PKT["ip_id"] + 1)
    evs = [ev(2, 5000, 900), {**ev(2, 4000, 800), **other}, ev(1, 3000, 500)]
    assert [e["ts"] for e in events_of(evs, PKT)] == [3000, 5000]


def test_floors_average_the_empty_brackets_per_hook():
    evs = [ev(0, 10, 100), ev(0, 20, 300), ev(2, 30, 5000)]
    assert floors(evs, KEYS) == {(NS, "ipv4", "FORWARD"): 200.0}


def test_table_hops_follow_their_rule_hops_and_time_them():
    evs = [ev(1, 2500, 400), ev(2, 6000, 2200)]
    twin = [dict(ev(1, 2600, 300), ip_id=1), dict(ev(2, 7000, 1200), ip_id=1)]
    out = table_hops(rule_hops(), evs, KEYS, {(NS, "ipv4", "FORWARD"): 200.0}, twin)
    wheres = [h.where for h in out]
    # mangle had no rule hop: it goes by time, after the receive; filter after its own rules
    assert wheres[1].startswith("ipv4 FORWARD iptables mangle") and wheres[4].startswith("ipv4 FORWARD iptables filter")
    filt = out[4]
    assert filt.cost_ns == 1000.0 and filt.detail["traced_ns"] == 2000.0 and filt.detail["untraced_ns"] == 1000.0
    assert "untraced twin" in filt.what and filt.detail["time"] == "measured"
    assert out[2].t_ns == 6000 - 2200                     # the table's first rule hop: its entry time
    assert [h.order for h in out] == list(range(1, len(out) + 1))
    timed = [h.t_ns for h in out if h.t_ns is not None]
    assert timed == sorted(timed)


def test_without_a_twin_the_time_is_the_traced_one_and_says_so():
    out = table_hops(rule_hops(), [ev(2, 6000, 2200)], KEYS, {})
    h = next(h for h in out if "table" in h.detail)
    assert h.cost_ns == 2200 and h.detail["untraced_ns"] is None and "while traced" in h.what
    assert h.detail["floor_ns"] is None and "no floor" in h.what


def test_a_table_that_dropped_the_packet_leaves_the_time_to_the_drop_hop():
    out = table_hops(rule_hops()[:3], [ev(2, 6000, 2200, dropped=True)], KEYS, {})
    h = next(h for h in out if "table" in h.detail)
    assert h.detail["dropped"] and h.t_ns is None and h.cost_ns == 2200 and "dropped inside it" in h.what


def test_conntrack_hop_uses_the_first_tracked_table_and_the_entry():
    class Conn:
        proto, state, flags, timeout, mark, zone = "tcp", "SYN_SENT", ("UNREPLIED",), 119, 0, None
    evs = [ev(1, 2500, 400, ct="none"), ev(2, 6000, 2200, ct="new")]
    hop = conntrack_hop(evs, KEYS, Conn(), looked_up=True)
    assert hop.detail["ct"] == "new" and hop.detail["entry_state"] == "SYN_SENT"
    assert "[UNREPLIED]" in hop.what and "timeout 119s" in hop.what
    gone = conntrack_hop(evs, KEYS, None, looked_up=True)
    assert gone.detail["entry_state"] is None and "no entry" in gone.what
    assert conntrack_hop([ev(0, 1, 1)], KEYS) is None      # floors only: nothing to say
    out = with_conntrack(rule_hops(), hop)
    assert out[1].layer == "conntrack" and out[2].where == "ip filter FORWARD"
    # a raw table (before conntrack) timed earlier than the state was read stays before the hop
    raw = Hop("netfilter", "ipv4 PREROUTING iptables raw", "left it", t_ns=hop.t_ns - 10, netns=NS,
              detail={"table": "raw"})
    out = with_conntrack([rule_hops()[0], raw, *rule_hops()[1:]], hop)
    assert [h.layer for h in out[:4]] == ["iface", "netfilter", "conntrack", "netfilter"]


def test_event_decoding_round_trip():
    e = NfbEvent(ts=5, ns=7, saddr=int.from_bytes(socket.inet_aton("10.0.0.1"), "little"),
                 daddr=int.from_bytes(socket.inet_aton("10.0.0.2"), "little"), slot=3, ip_id=0xC1A0,
                 sport=1234, dport=80, proto=6, dropped=1, ctinfo=2)
    d = decode_event(bytes(e))
    assert (d["saddr"], d["daddr"], d["ip_id"], d["dropped"], d["ct"]) == ("10.0.0.1", "10.0.0.2", 0xC1A0, True, "new")
    assert decode_event(bytes(NfbEvent(ctinfo=255)))["ct"] == "none"


@given(st.binary(max_size=ctypes.sizeof(NfbEvent) - 1))
def test_short_events_are_refused(raw):
    try:
        decode_event(raw)
    except ValueError:
        return
    raise AssertionError("a short record was decoded")


@given(st.integers(0, 255))
def test_ctinfo_names_every_value(v):
    d = decode_event(bytes(NfbEvent(ctinfo=v)))
    assert d["ct"] == CTINFO.get(v, "none" if v == 255 else f"ctinfo {v}")


def test_event_filter_flags_are_network_order():
    f = EventFilter(proto=6, daddr="10.65.0.2", dport=8080).cflags()
    assert f["NFB_EVENTS"] == "1" and f["CNIT_PROTO"] == "6" and f["CNIT_SADDR"] == "0x0"
    assert int(f["CNIT_DADDR"], 16).to_bytes(4, "little") == socket.inet_aton("10.65.0.2")
    assert int(f["CNIT_DPORT"], 16).to_bytes(2, "little") == (8080).to_bytes(2, "big")

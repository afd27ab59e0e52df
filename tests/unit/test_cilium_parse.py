"""Cilium map parsers: real bpftool dumps of a Cilium node's policy map, agent-CLI JSON, pressure."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import given, settings, strategies as st

from cnitrace.collectors.cilium import parse as p
from cnitrace.collectors.cilium.source import CiliumCollector, find_pins
from cnitrace.core.runner import RecordedRunner

FIX = Path(__file__).parent.parent / "fixtures" / "cilium"
PATH = "/sys/fs/bpf/tc/globals/cilium_policy_02761"


def test_real_policy_map_dump_decodes_and_reports_truncation():
    r = p.parse_policy_map_dump((FIX / "policy-map-bpftool-dump.txt").read_text(), PATH)
    # the captured dump ends mid-value: the complete entries are kept, the torn one is a warning
    assert len(r.records) == 7 and len(r.warnings) == 1 and "value size 2" in r.warnings[0]
    dns_udp = [e for e in r.records if e.identity == 102 and e.proto == 17][0]
    assert (dns_udp.endpoint, dns_udp.direction, dns_udp.port, dns_udp.port_proto) == ("2761", "egress", 53, "53/UDP")
    assert dns_udp.proxy_port == 44793  # 0xaef9: the DNS proxy redirect
    assert (dns_udp.packets, dns_udp.bytes) == (8, 602)
    host = [e for e in r.records if e.identity == 16777217][0]
    assert (host.port_proto, host.proxy_port, host.packets, host.bytes) == ("ANY", 0, 12, 1546)
    assert p.entries_per_endpoint(r.records) == {"2761": 7}
    assert {e.proxy_port for e in r.records if e.proxy_port} == {44793}


def test_json_dump_equals_text_dump():
    text = (FIX / "policy-map-bpftool-dump.txt").read_text()
    pairs = p.hex_entries(text, p.Warnings())
    as_json = json.dumps([{"key": [f"0x{b:02x}" for b in k], "value": [f"0x{b:02x}" for b in v]}
                          for k, v in pairs if len(v) == 24])
    assert p.parse_policy_map_dump(as_json, PATH).records == p.parse_policy_map_dump(text, PATH).records


def test_lpm_key_layout():
    raw = struct.pack("<IIBB", 56, 16777217, 1, 6) + (8080).to_bytes(2, "big")
    assert p.decode_policy_key(raw) == (16777217, "egress", 6, 8080, 56)


def test_agent_json_uses_network_byte_order_ports():
    doc = [{"EndpointID": "184", "Path": "/sys/fs/bpf/tc/globals/cilium_policy_00184", "Content": [
        {"ProxyPortNetwork": p.ntohs(15001), "Flags": 0, "AuthType": 0, "Packets": 31, "Bytes": 4218,
         "Key": {"Prefixlen": 48, "Identity": 23459, "TrafficDirection": 0, "Nexthdr": 6,
                 "DestPortNetwork": p.ntohs(80)}},
        {"ProxyPortNetwork": 0, "Flags": 1, "Packets": 18446744073709551615, "Bytes": 18446744073709551615,
         "Key": {"Identity": 2, "TrafficDirection": 1, "Nexthdr": 0, "DestPortNetwork": 0}}]}]
    r = p.parse_policy_get_json(json.dumps(doc))
    assert r.warnings == ()
    a, b = r.records
    assert (a.endpoint, a.identity, a.direction, a.port, a.proto, a.proxy_port, a.packets) == (
        "184", 23459, "ingress", 80, 6, 15001, 31)
    assert b.deny and b.direction == "egress" and b.packets is None and b.counters == {}


def test_dump_count_and_map_show():
    assert p.parse_dump_count("key: 00 value: 01\nFound 131072 elements\n") == 131072
    assert p.parse_dump_count("garbage") is None
    assert p.parse_map_show_max('{"id":5,"name":"cilium_ct4_glob","max_entries":524288}') == ("cilium_ct4_glob", 524288)
    u = p.MapUsage("cilium_ct4_global", "/x", 131072, 524288)
    assert u.pressure == 0.25


def test_collector_on_pins_without_agent(tmp_path):
    root = tmp_path / "cnit-lab" / "tc"
    root.mkdir(parents=True)
    (root / "cilium_policy_02761").touch()
    (root / "cilium_ct4_global").touch()
    pins = find_pins([str(tmp_path / "cnit-*")])
    assert [Path(x).name for x in pins["policy"]] == ["cilium_policy_02761"]
    dump = (FIX / "policy-map-bpftool-dump.txt").read_text().split("\n", 1)[1]
    ct = str(root / "cilium_ct4_global")
    runner = RecordedRunner({
        ("bpftool", "-j", "map", "dump", "pinned", pins["policy"][0]): dump,
        ("bpftool", "-j", "map", "show", "pinned", ct): '{"id":9,"name":"cilium_ct4_glob","max_entries":524288}',
        ("bpftool", "map", "dump", "pinned", ct): "Found 1000 elements\n",
    }, tools=["bpftool"])
    c = CiliumCollector(runner, [str(tmp_path / "cnit-*")])
    assert c.available()
    snap = c.snapshot()
    assert snap.meta["entries_per_endpoint"] == {"2761": 7} and snap.meta["proxy_ports"] == [44793]
    usage = [r for r in snap.records if isinstance(r, p.MapUsage)][0]
    assert (usage.entries, usage.max_entries) == (1000, 524288)
    assert len(snap.warnings) == 1  # the truncated entry


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_text(s):
    p.parse_policy_map_dump(s, PATH)
    p.parse_policy_map_dump("key:\n" + s, PATH)
    p.parse_policy_get_json(s)
    p.parse_dump_count(s)
    p.parse_map_show_max(s)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=14), st.binary(min_size=0, max_size=26)), max_size=6))
def test_fuzz_byte_layouts(pairs):
    text = "".join("key:\n" + " ".join(f"{b:02x}" for b in k) + "\nvalue:\n" + " ".join(f"{b:02x}" for b in v) + "\n"
                   for k, v in pairs)
    r = p.parse_policy_map_dump(text, PATH)
    good = sum(1 for k, v in pairs if len(k) in (8, 12) and len(v) >= 8)
    assert len(r.records) == good
    if pairs:  # (an empty dump is one warning: nothing to read)
        assert len(r.warnings) == len(pairs) - good


# --- `bpf policy get` text tables (issue #13) -------------------------------------------------

def _fx(name: str) -> str:
    text = (Path(__file__).parent.parent / "fixtures" / "cilium" / name).read_text()
    assert text.startswith("# provenance:")
    return text


def test_policy_get_text_current_columns():
    r = p.parse_policy_get_text(_fx("cilium-40247-bpf-policy-get.txt"))
    assert len(r.records) == 5 and {e.endpoint for e in r.records} == {"2558"}  # from the quoted command
    icmp = r.records[0]
    assert (icmp.identity, icmp.direction, icmp.proto, icmp.port, icmp.prefix_len) == (0, "ingress", 1, 8, 24)
    assert (icmp.packets, icmp.bytes, icmp.deny, icmp.labels) == (29778, 1965348, False, ("reserved:unknown",))
    assert [e.port for e in r.records[1:]] == [53, 160, 161, 886] and all(e.proto == 6 for e in r.records[1:])
    assert len(r.warnings) == 1 and "nothing out of the ordinary" in r.warnings[0]  # the prose, reported


def test_policy_get_text_older_tables_and_all_endpoints():
    labels = p.parse_policy_get_text(_fx("cilium-7958-bpf-policy-get.txt"))
    assert labels.warnings == () and [(e.direction, e.identity, e.bytes) for e in labels.records] == [
        ("ingress", 1, 0), ("ingress", 2, 0), ("ingress", 3, 0), ("ingress", 4, 0), ("ingress", 5, 0),
        ("egress", 1, 3714), ("egress", 2, 70)]   # reserved labels -> their fixed identities
    assert {e.endpoint for e in labels.records} == {"1727"}
    every = p.parse_policy_get_text(_fx("cilium-7358-bpf-policy-get-all.txt"))
    assert every.warnings == () and [(e.endpoint, e.identity, e.port, e.proxy_port, e.packets) for e in every.records] == [
        ("3037", 1, 0, 0, 0), ("3037", 56648, 80, 14949, 0), ("3037", 56648, 0, 0, 8)]
    oldest = p.parse_policy_get_text(_fx("cilium-3114-bpf-policy-get.txt"))
    assert [(e.endpoint, e.identity, e.port, e.proto, e.proxy_port) for e in oldest.records] == [("29898", 12345, 80, 6, 0)]


def test_policy_get_text_multi_label_identities_and_unavailable_counters():
    """Continuation lines add labels to the entry above; '-' counters (accounting off) are None;
    the identity number column wins over labels. Built from the 40247 row layout."""
    head = "POLICY   DIRECTION   IDENTITY   LABELS (source:key[=value])   PORT/PROTO   PROXY PORT   AUTH TYPE   BYTES   PACKETS   PREFIX"
    text = "\n".join([head,
                      "Allow    Ingress     33807      k8s:class=tiefighter          80/TCP       NONE         disabled    2914    24        0",
                      "                                k8s:org=empire",
                      "Deny     Egress      0          reserved:unknown              ANY          NONE         disabled    -       -         0"])
    a, b = p.parse_policy_get_text(text, endpoint="7").records
    assert (a.identity, a.labels, a.packets) == (33807, ("k8s:class=tiefighter", "k8s:org=empire"), 24)
    assert (b.deny, b.packets, b.bytes, b.counters) == (True, None, None, {})
    unnamed = p.parse_policy_get_text(text.replace("IDENTITY   ", "").replace("33807      ", "").replace("0          reserved", "reserved"))
    assert unnamed.records[0].identity == -1 and unnamed.records[0].key[-1] == ("k8s:class=tiefighter", "k8s:org=empire")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["cilium-40247-bpf-policy-get.txt", "cilium-7358-bpf-policy-get-all.txt"]),
       st.integers(0, 2000), st.text(alphabet="ANYTCP/0123456789 IngressEgress-:\n", max_size=30))
def test_fuzz_policy_get_text(name, cut, junk):
    text = _fx(name)
    assert len(p.parse_policy_get_text(text[:cut] + junk + text[cut:]).warnings) <= 51
    p.parse_policy_get_text(junk)


def test_policy_stats_empty_is_said_not_swallowed():
    # cilium 1.6 printed it for a map bpftool showed was full (cilium/cilium#8507): no rows, one warning
    r = p.parse_policy_get_text(_fx("cilium-8507-bpf-policy-get-stats-empty.txt"))
    assert r.records == () and len(r.warnings) == 1 and "Policy stats empty" in r.warnings[0]

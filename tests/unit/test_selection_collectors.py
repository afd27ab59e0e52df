"""The Selection reaches the collectors: iptables, nftables, conntrack and BPF attachments run inside each
selected namespace (`ip netns exec NAME ...` argv through the Runner seam, replayed here with RecordedRunner),
records stay keyed by namespace, and the registry builds them alike for `snapshot` and the profiler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnitrace.collectors import registry
from cnitrace.collectors.base import delta
from cnitrace.collectors.bpfprog.parse import BpfProg
from cnitrace.collectors.iptables.parse import Rule
from cnitrace.collectors.iptables.source import ruleset_of
from cnitrace.collectors.netns import InNetns, PerNetns, combine, split
from cnitrace.collectors.nftables.parse import NftRule
from cnitrace.collectors.nftables.source import NftablesCollector
from cnitrace.core.runner import RecordedRunner
from cnitrace.core.selection import HOST, Interface, Selection

FIX = Path(__file__).parent.parent / "fixtures"
NSA, NSB = "cnit-a", "cnit-b"
SEL = Selection((Interface("cali1", NSA, 5, "veth", "eth0", NSB), Interface("eth0", NSB, 3, "veth", "cali1", NSA)),
                (NSA, NSB))
ONLY_V4 = registry.Options(families=("ipv4",), maps=False)


def body(*parts: str) -> str:
    return FIX.joinpath(*parts).read_text(encoding="utf-8").split("\n", 1)[1]   # without the provenance line


def ns(name: str, *argv: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", name, *argv) if name else argv


def responses(names=(NSA, NSB), legacy_v4: dict | None = None) -> dict:
    out: dict = {}
    for n in names:
        out[ns(n, "iptables-legacy-save", "-c")] = (legacy_v4 or {}).get(n, body("iptables", "local_legacy_v4.save"))
        out[ns(n, "iptables-nft-save", "-c")] = body("iptables", "local_nft_v4.save")
        out[ns(n, "nft", "-j", "list", "ruleset")] = body("nftables", "local_iptables_nft.json")
        out[ns(n, "cat", "/proc/net/stat/nf_conntrack")] = body("conntrack", "host-proc-stat.txt")
        out[ns(n, "cat", "/proc/sys/net/netfilter/nf_conntrack_count")] = "20\n"
        out[ns(n, "cat", "/proc/sys/net/netfilter/nf_conntrack_max")] = "262144\n"
    return out


def bpf_responses() -> dict:
    out = {("bpftool", "-j", "prog", "show"): "[" + body("bpf", "host-prog-show-id.json").strip() + "]"}
    for i in SEL.interfaces:
        tc = ns(i.netns, "tc", "-j", "filter", "show", "dev", i.name)
        out[(*tc, "ingress")] = body("bpf", "host-tc-filter-show.json")
        out[(*tc, "egress")] = "[]"
        out[ns(i.netns, "bpftool", "-j", "net", "show", "dev", i.name)] = body("bpf", "host-net-show.json")
    return out


def runner(**kw) -> RecordedRunner:
    return RecordedRunner({**responses(**kw), **bpf_responses()}, tools=["iptables-legacy-save", "iptables-nft-save",
                                                                          "nft", "cat", "bpftool"])


def test_every_per_namespace_command_runs_inside_each_selected_namespace():
    r = runner()
    snaps = registry.snapshot(SEL, registry.Context(runner=r, options=ONLY_V4),
                              ["iptables", "nftables", "conntrack", "bpf"])
    assert set(snaps) == {"iptables", "nftables", "conntrack", "bpf"}
    for tool in ("iptables-legacy-save", "iptables-nft-save", "nft", "cat", "tc"):
        calls = [c for c in r.calls if tool in c]
        assert calls and all(c[:3] == ("ip", "netns", "exec") for c in calls), tool
        assert {c[3] for c in calls} == {NSA, NSB}, tool
    assert not any("ip6tables-legacy-save" in c for c in r.calls)          # Options.families reached it
    assert ("bpftool", "-j", "prog", "show") in r.calls                     # program ids are node-wide
    assert all(s.warnings == () for s in snaps.values()), {k: s.warnings for k, s in snaps.items()}


def test_two_namespaces_with_the_same_rules_do_not_merge():
    snaps = registry.snapshot(SEL, registry.Context(runner=runner(), options=ONLY_V4), ["iptables", "nftables"])
    for name, kind in (("iptables", Rule), ("nftables", NftRule)):
        recs = snaps[name].records
        assert recs and all(isinstance(r, InNetns) for r in recs)
        a = {r.key for r in recs if r.netns == NSA and isinstance(r.record, kind)}
        b = {r.key for r in recs if r.netns == NSB and isinstance(r.record, kind)}
        assert a and len(a) == len(b) and not a & b
        assert {k[1:] for k in a} == {k[1:] for k in b}                    # same rules, told apart by netns
    parts = registry.per_netns(snaps["iptables"])
    assert list(parts) == [NSA, NSB]
    assert len(ruleset_of(parts[NSA]).rules) == len(ruleset_of(parts[NSB]).rules) == 12 + 12
    assert not any(isinstance(r, InNetns) for r in parts[NSA].records)
    assert parts[NSB].meta["netns"] == NSB and parts[NSB].meta["tools"] == ["iptables-legacy-save",
                                                                             "iptables-nft-save"]


def test_a_delta_moves_only_the_namespace_whose_counter_moved():
    ctx = registry.Context(runner=runner(), options=ONLY_V4)
    before = registry.snapshot(SEL, ctx, ["iptables"])["iptables"]
    moved = body("iptables", "local_legacy_v4.save").replace("[3:114] -A cnit-wl", "[10:380] -A cnit-wl")
    ctx2 = registry.Context(runner=runner(legacy_v4={NSB: moved}), options=ONLY_V4)
    after = registry.snapshot(SEL, ctx2, ["iptables"])["iptables"]
    d = delta(before, after)
    moving = {k: v for k, v in d.changes.items() if any(v.values())}
    assert len(moving) == 1
    (key, counters), = moving.items()
    assert key[0] == NSB and counters == {"packets": 7, "bytes": 266}
    assert d.warnings == ()


def test_no_selection_reads_the_host_namespace_without_netns_exec():
    r = RecordedRunner(responses(names=(HOST,)), tools=["iptables-legacy-save", "iptables-nft-save", "nft", "cat"])
    snaps = registry.snapshot(None, registry.Context(runner=r, options=ONLY_V4), ["iptables", "nftables", "conntrack"])
    assert r.calls and not any(c[0] == "ip" for c in r.calls)
    assert {x.netns for x in snaps["iptables"].records} == {HOST}
    assert list(registry.per_netns(snaps["nftables"])) == [HOST]
    assert {x.key[1] for x in snaps["conntrack"].records} == {HOST}


def test_bpf_attachments_are_read_per_interface_in_its_namespace():
    snap = registry.snapshot(SEL, registry.Context(runner=runner(), options=ONLY_V4), ["bpf"])["bpf"]
    assert {(a["netns"], a["target"]) for a in snap.meta["attachments"]} >= {(NSA, "cali1"), (NSB, "eth0")}
    assert [r.id for r in snap.records if isinstance(r, BpfProg)] == [163]


def test_a_namespace_without_selected_interfaces_lists_all_its_attachments():
    r = RecordedRunner({("bpftool", "-j", "prog", "show"): "[]",
                        ns(NSA, "bpftool", "-j", "net", "show"): body("bpf", "host-net-show.json")})
    snap = registry.snapshot(Selection((), (NSA,)), registry.Context(runner=r, options=ONLY_V4), ["bpf"])["bpf"]
    assert ns(NSA, "bpftool", "-j", "net", "show") in r.calls
    assert [(a["netns"], a["target"]) for a in snap.meta["attachments"]] == [(NSA, "cnitva")]


def test_document_keeps_the_namespace_and_round_trips(tmp_path):
    r = runner()
    r.responses[("cat", "/proc/net/stat/nf_conntrack")] = body("conntrack", "host-proc-stat.txt")  # availability
    ctx = registry.Context(selection=SEL, runner=r, options=ONLY_V4)
    res = registry.run(registry.Request(collectors=("iptables", "conntrack")), ctx, object())
    doc = res.document
    assert doc["format"] == registry.FORMAT and doc["selection"]["netns"] == [NSA, NSB]
    recs = doc["collectors"]["iptables"]["records"]
    assert {r["data"]["netns"] for r in recs} == {NSA, NSB} and {r["kind"] for r in recs} == {"Chain", "Rule"}
    assert all(r["key"][0] == r["data"]["netns"] for r in recs)
    back = registry.from_document(json.loads(json.dumps(doc)))
    assert {r.key for r in back["iptables"].records} == {r.key for r in res.entries[0].snapshot.records}


def test_a_format_1_document_is_read_as_the_hosts_rules():
    old = {"format": "cnitrace-snapshot/1", "collectors": {
        "iptables": {"available": True, "taken_at": 1.0, "monotonic": 1.0, "records": [
            {"kind": "Rule", "key": ["rule", "legacy", "ipv4", "filter", "INPUT", "-j x", 0],
             "counters": {"packets": 1, "bytes": 2}}]},
        "conntrack": {"available": True, "taken_at": 1.0, "monotonic": 1.0, "records": [
            {"kind": "TableUsage", "key": ["table", ""], "counters": {"count": 3}}]}}}
    back = registry.from_document(old)
    assert back["iptables"].records[0].key == (HOST, "rule", "legacy", "ipv4", "filter", "INPUT", "-j x", 0)
    assert back["conntrack"].records[0].key == ("table", "")


def test_build_for_is_the_one_constructor():
    cols = registry.build_for(SEL, registry.Context(runner=runner()), ["iptables", "nftables", "conntrack", "bpf"])
    assert isinstance(cols["iptables"], PerNetns) and cols["iptables"].netns == (NSA, NSB)
    assert cols["conntrack"].netns == (NSA, NSB) and cols["bpf"].selection is SEL
    assert cols["iptables"].parts[NSA].sources[0].argv == ["iptables-legacy-save", "-c"]


def test_combine_and_split_are_inverse():
    r = RecordedRunner(responses())
    parts = {n: NftablesCollector(r, netns=n).snapshot() for n in (NSA, NSB)}
    back = split(combine("nftables", parts))
    assert list(back) == [NSA, NSB]
    for n in parts:
        assert back[n].records == parts[n].records and back[n].meta == parts[n].meta
        assert back[n].monotonic == parts[n].monotonic


def test_warnings_name_the_namespace():
    r = RecordedRunner({ns(NSA, "nft", "-j", "list", "ruleset"): "{not json"})
    col = PerNetns(lambda n: NftablesCollector(r, netns=n), [NSA, NSB])
    snap = col.snapshot()
    assert any(w.startswith(f"netns {NSA}: ") for w in snap.warnings)
    assert any(w.startswith(f"netns {NSB}: ") and "no recorded output" in w for w in snap.warnings)


@pytest.mark.parametrize("given", [None, ""])
def test_host_is_spelled_one_way_in_the_collectors(given):
    r = RecordedRunner(responses(names=(HOST,)))
    assert NftablesCollector(r, netns=given).netns == HOST
    assert PerNetns(lambda n: NftablesCollector(r, netns=n), [given]).netns == (HOST,)

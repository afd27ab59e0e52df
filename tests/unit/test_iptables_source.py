"""Acquisition through the Runner seam, replayed with RecordedRunner; and the shared delta convention."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cnitrace.collectors.base import Availability, Collector, Snapshot, counter_delta, delta
from cnitrace.collectors.iptables.parse import Rule
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of, sources
from cnitrace.core.errors import UsageError
from cnitrace.core.runner import Completed, RecordedRunner

FIX = Path(__file__).parent.parent / "fixtures" / "iptables"
NS = ("ip", "netns", "exec", "cnit-lab-node")


def body(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8").split("\n", 1)[1]  # without the provenance line


def recorded(overrides: dict | None = None) -> RecordedRunner:
    responses = {
        (*NS, "iptables-legacy-save", "-c"): body("local_legacy_v4.save"),
        (*NS, "ip6tables-legacy-save", "-c"): body("local_legacy_v6.save"),
        (*NS, "iptables-nft-save", "-c"): body("local_nft_v4.save"),
        (*NS, "ip6tables-nft-save", "-c"): body("local_nft_v6.save"),
    }
    responses.update(overrides or {})
    return RecordedRunner(responses)


def test_snapshot_runs_every_backend_and_family_in_the_netns():
    runner = recorded()
    col = IptablesCollector(runner, netns="cnit-lab-node")
    assert isinstance(col, Collector)
    snap = col.snapshot()
    assert len(runner.calls) == 4 and all(c[:4] == NS for c in runner.calls)
    rs = ruleset_of(snap)
    assert {(r.backend, r.family) for r in rs.rules} == {("legacy", "ipv4"), ("legacy", "ipv6"),
                                                          ("nft", "ipv4"), ("nft", "ipv6")}
    assert len(rs.rules) == 12 + 2 + 12 + 2
    assert snap.warnings == ()


def test_a_failing_tool_is_a_warning_and_the_rest_is_kept():
    fail = Completed(("ip6tables-legacy-save", "-c"), 1, "", "ip6tables-legacy-save: can't initialize\n")
    snap = IptablesCollector(recorded({(*NS, "ip6tables-legacy-save", "-c"): fail}), netns="cnit-lab-node").snapshot()
    assert any("can't initialize" in w for w in snap.warnings)
    assert len(ruleset_of(snap).rules) == 12 + 12 + 2


def test_missing_tools_availability_has_a_reason():
    col = IptablesCollector(RecordedRunner({}, tools=[]))
    av = col.available(None)
    assert isinstance(av, Availability) and not av and "installed" in av.reason
    assert IptablesCollector(RecordedRunner({}, tools=["iptables-nft-save"])).available(None).ok


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError):
        sources(["ebtables"])


def test_generic_delta_over_snapshots_with_reset():
    snap1 = IptablesCollector(recorded(), netns="cnit-lab-node").snapshot()
    text = body("local_legacy_v4.save").replace("[9:342] -A INPUT", "[4:100] -A INPUT").replace(
        "[3:114] -A cnit-wl", "[10:380] -A cnit-wl")
    snap2 = IptablesCollector(recorded({(*NS, "iptables-legacy-save", "-c"): text}),
                              netns="cnit-lab-node").snapshot()
    d = delta(snap1, snap2)
    jump = next(r for r in snap2.records if isinstance(r, Rule) and r.backend == "legacy"
                and r.chain == "INPUT" and r.position == 1)
    wl = next(r for r in snap2.records if isinstance(r, Rule) and r.backend == "legacy" and r.chain == "cnit-wl")
    assert d.get(jump.key, "packets") == 4 and jump.key in d.resets     # went backwards: counted since reset
    assert d.get(wl.key, "packets") == 7 and d.get(wl.key, "bytes") == 266
    assert any("reset" in w for w in d.warnings)
    assert all(v >= 0 for c in d.changes.values() for v in c.values())


def test_counter_delta_and_vanished_records():
    assert counter_delta(5, 9) == counter_delta(0, 4)
    assert counter_delta(9, 2).reset and counter_delta(9, 2).value == 2

    @dataclasses.dataclass(frozen=True)
    class R:
        key: str
        counters: dict

    d = delta(Snapshot("x", (R("a", {"p": 1}), R("b", {"p": 1}))), Snapshot("x", (R("a", {"p": 3}),)))
    assert d.vanished == ("b",) and d.changes["a"]["p"] == 2

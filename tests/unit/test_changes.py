"""Ruleset changes during a profile window (cnitrace.attribution.changes), on before/after snapshots built
from real captures: a chain replaced, counters restarted and re-based, a rule moved, nft rules re-added,
OVS flows re-added, a tc program replaced, a map recreated; and the bounds every figure keeps whatever the
counters do (hypothesis: random counter sequences, resets included)."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from cnitrace.attribution import changes as ch
from cnitrace.attribution.netfilter import iptables_work, nft_work
from cnitrace.attribution.tree import (Calib, ChainWork, ProgramTime, RuleHit, Transit, bpf_stage, build_tree,
                                       clamp_tree, netfilter_stage, within_rules)
from cnitrace.collectors.base import Snapshot, strip_provenance
from cnitrace.collectors.bpfprog.parse import BpfMap, parse_map_show, parse_prog_show, parse_tc_filters
from cnitrace.collectors.conntrack.parse import parse_conntrack_S
from cnitrace.collectors.iptables.graph import ruleset_delta
from cnitrace.collectors.iptables.parse import Rule, Ruleset, parse_ruleset
from cnitrace.collectors.nftables.parse import NftChain, NftRule
from cnitrace.collectors.nftables.parse import parse as parse_nft
from cnitrace.collectors.ovs.parse import parse_dump_flows, parse_dump_tables
from cnitrace.profile.document import netfilter_inputs
from cnitrace.profile.window import Counters
from cnitrace.reports.document import CHANGED, Node, headline, validate
from cnitrace.reports.profile.html import render_html
from cnitrace.reports.profile.terminal import render_changes, render_profile

FIX = Path(__file__).resolve().parents[1] / "fixtures"
NS = "cnit-x-node"
# A real capture: the calico lab's filter table after one allowed and one denied probe (counters).
CALICO = (FIX / "lab" / "calico-lab-iptables-legacy-save-c.txt").read_text()
POLICY = "cali-pi-_MdHnQHK8BuV_rY7ltZo"


def ruleset(text: str = CALICO) -> Ruleset:
    return parse_ruleset(text, backend="legacy")[0]


def scaled(rs: Ruleset, k: int, chains: set[str] | None = None, add: int = 0) -> Ruleset:
    """The ruleset with counters multiplied by k (plus `add` on every rule): later snapshots of the same traffic."""
    def s(r):
        if chains is not None and (r.chain if isinstance(r, Rule) else r.name) not in chains:
            return r
        return dataclasses.replace(r, packets=r.packets * k + add, bytes=r.bytes * k + add * 60)
    return Ruleset(tuple(s(c) for c in rs.chains), tuple(s(r) for r in rs.rules))


def restarted(rs: Ruleset, chain: str, value: int = 0) -> Ruleset:
    """`chain` replaced by the same rules (iptables-restore --noflush): its rules' counters restart."""
    return Ruleset(rs.chains, tuple(dataclasses.replace(r, packets=value, bytes=value * 60) if r.chain == chain else r
                                    for r in rs.rules))


def snap(name: str, records, at: float | None = None, **meta) -> Snapshot:
    return Snapshot(name, tuple(records), meta=meta, **({"monotonic": at} if at is not None else {}))


def counters(rs: Ruleset, at: float | None = None, links: int | None = None, **kw) -> Counters:
    return Counters({NS: snap("iptables", rs.records)}, {}, at=at,
                    link_packets={NS: links} if links is not None else {}, **kw)


# --- iptables ------------------------------------------------------------------------------------

def test_a_replaced_chain_is_named_and_nothing_else():
    a = ruleset()
    b = restarted(scaled(a, 3), POLICY)          # traffic went on; the policy chain was replaced meanwhile
    found = ch.iptables_changes(a, b, NS)
    assert [c.where["chain"] for c in found] == [POLICY]
    c = found[0]
    assert c.kind == "iptables_chain" and c.reset and not c.structural
    assert c.where == {"netns": NS, "backend": "legacy", "family": "ipv4", "table": "filter", "chain": POLICY}
    assert POLICY in c.label and NS in c.label
    assert ch.iptables_changes(a, scaled(a, 3), NS) == []        # plain growth is no change


def test_a_moved_rule_appeared_and_vanished_rules_and_the_policy_counter():
    a = ruleset()
    rules = list(a.rules)
    pol = [i for i, r in enumerate(rules) if r.chain == POLICY]
    first, second = rules[pol[0]], rules[pol[2]]
    rules[pol[0]] = dataclasses.replace(second, position=first.position)   # the two MARK rules swap places
    rules[pol[2]] = dataclasses.replace(first, position=second.position)
    moved = ch.iptables_changes(a, Ruleset(a.chains, tuple(rules)), NS)
    assert len(moved) == 1 and moved[0].structural and "rules moved (order changed)" in moved[0].what
    fewer = Ruleset(a.chains, tuple(r for r in a.rules if not (r.chain == POLICY and r.position == 1)))
    gone = ch.iptables_changes(a, fewer, NS)[0]
    assert gone.structural and "1 rule(s) vanished" in gone.what and "rule count 10 → 9" in gone.what
    fwd = next(c for c in a.chains if c.name == "FORWARD")
    bumped = Ruleset(tuple(dataclasses.replace(c, packets=5) if c.name == "FORWARD" else c for c in a.chains), a.rules)
    back = Ruleset(tuple(dataclasses.replace(c, packets=1) if c.name == "FORWARD" else c for c in a.chains), a.rules)
    assert fwd.builtin
    pol_change = ch.iptables_changes(bumped, back, NS)[0]
    assert pol_change.where["chain"] == "FORWARD" and "policy counter went backward" in pol_change.what


def test_a_backend_read_in_one_snapshot_only_is_no_change():
    a = ruleset()
    other = parse_ruleset((FIX / "iptables" / "local_nft_v4.save").read_text(), backend="nft")[0]
    both = Ruleset((*a.chains, *other.chains), (*a.rules, *other.rules))
    assert ch.iptables_changes(both, a, NS) == []


def after_restart() -> list[Ruleset]:
    """Snapshots of steady traffic (each interval adds what the capture holds) in which the policy chain
    is replaced between the second and third: it counts the last interval afresh."""
    s0 = ruleset()
    s1, s3 = scaled(s0, 2), scaled(s0, 3)
    s2 = restarted(s1, POLICY)
    s3 = Ruleset(s3.chains, tuple(o if r.chain == POLICY else r for r, o in zip(s3.rules, s0.rules)))
    return [s0, s1, s2, s3]


def test_counters_restarted_mid_window_are_re_based_over_the_intervals():
    """From the window's ends the restart is invisible (the new counter grew back to the old value) and the
    delta is zero; re-based over the intervals, every interval with traffic is counted."""
    seq = after_restart()
    rebased = ch.rebased_ruleset(seq)
    naive, _ = ruleset_delta(seq[0], seq[-1])
    for r, n, o in zip(rebased.rules, naive.rules, seq[0].rules):
        if r.chain == POLICY:
            assert (r.packets, n.packets) == (2 * o.packets, 0)
        else:
            assert r.packets == n.packets == 2 * o.packets           # untouched chains: the plain delta
    assert ch.rebased_ruleset([seq[0], seq[-1]]).rules == naive.rules   # without mid snapshots: the old delta


def test_a_replacement_known_from_nft_handles_counts_from_the_restart():
    """iptables-nft: handles show the chain was replaced although its counters grew past their old value."""
    s0, s1 = ruleset(), scaled(ruleset(), 3)
    key = ("legacy", "ipv4", "filter", POLICY)
    plain = ch.rebased_ruleset([s0, s1])
    forced = ch.rebased_ruleset([s0, s1], {0: {key}})
    for p, f, r in zip(plain.rules, forced.rules, s1.rules):
        assert f.packets == (r.packets if r.chain == POLICY else p.packets)


# --- treatment: re-based or excluded ---------------------------------------------------------------

def _change(spans, compared, structural=False, netns=NS):
    return ch.Change("iptables_chain", {"netns": netns, "backend": "legacy", "family": "ipv4", "table": "filter",
                                        "chain": POLICY}, ("x",), reset=True, structural=structural,
                     spans=tuple(spans), compared=compared)


def test_a_restart_in_one_interval_of_ten_is_re_based_in_most_it_is_excluded():
    times = tuple(float(i) for i in range(11))
    window = ch.Changes((), times)
    one = ch.treatment(_change([(4, 5)], 10), window)
    assert one.rebased and one.coverage == pytest.approx(0.9) and "re-based over 10 intervals" in one.basis
    many = ch.treatment(_change([(i, i + 1) for i in range(0, 10, 2)], 10), window)
    assert not many.rebased and "excluded" in many.basis
    assert not ch.treatment(_change([(0, 1)], 1), ch.Changes((), (0.0, 1.0))).rebased     # no mid snapshot
    late = ch.treatment(_change([(8, 9)], 10, structural=True), window)                   # other rules before
    assert not late.rebased and "rules changed" in late.why


def test_coverage_weighs_the_packets_each_interval_carried():
    """Bursty traffic: a restart in an interval no packet crossed loses nothing; one in the interval that
    carried the burst loses it, however short that interval was."""
    times = tuple(float(i) for i in range(5))
    load = {NS: (0.0, 1.0, 1.0, 101.0, 102.0)}          # the burst: between snapshots 2 and 3
    window = ch.Changes((), times, load)
    quiet = ch.treatment(_change([(1, 2)], 4), window)
    assert quiet.rebased and quiet.coverage == pytest.approx(1.0) and quiet.unit == "packets"
    burst = ch.treatment(_change([(2, 3)], 4), window)
    assert not burst.rebased and burst.coverage < 0.05


def test_netfilter_inputs_re_base_or_exclude_the_changed_chain_and_name_it():
    seq = after_restart()
    # the restart fell between snapshots 1 and 2, which carried no packets: re-based, nothing lost
    snaps = [counters(s, at=float(i), links=links) for i, (s, links) in enumerate(zip(seq, (0, 100, 100, 200)))]
    changes = ch.changes_between(snaps[0], snaps[-1], snaps[1:-1])
    assert [c.where["chain"] for c in changes.objects] == [POLICY]
    work, _, _, _ = netfilter_inputs(snaps[0], snaps[-1], snaps[1:-1], changes)
    pol = next(w for w in work if w.chain == POLICY)
    assert "re-based over 3 intervals (100% of the window's packets" in pol.mark and not pol.excluded
    same, _, _, _ = netfilter_inputs(snaps[0], counters(scaled(seq[0], 3), at=3.0, links=200))   # no change
    assert (pol.packets, pol.evaluations) == next((w.packets, w.evaluations) for w in same if w.chain == POLICY)
    # from the window's ends alone this restart is invisible (the new counters grew back past the old):
    # the blind spot the mid-window snapshots close
    assert not ch.changes_between(snaps[0], snaps[-1])
    # without mid snapshots a visible restart cannot be re-based: the chain is excluded, and says why
    work2, _, _, _ = netfilter_inputs(snaps[0], snaps[2])
    pol2 = next(w for w in work2 if w.chain == POLICY)
    assert pol2.excluded and pol2.mark.startswith(CHANGED) and "no mid-window snapshot" in pol2.mark
    stage = netfilter_stage(work2, 100, Calib(20.0))
    node = stage.find("chain", POLICY)
    assert node.ns_per_packet is None and node.modelled_ns is None and node.basis == pol2.mark
    others = [n for _, n in stage.walk() if n.kind == "chain" and n.name != POLICY]
    assert others and all(n.ns_per_packet is not None and n.basis is None for n in others)
    # the terminal's tree says so on the chain's own row
    from tests.unit.test_report_document import make_doc
    root = build_tree([stage], None, 100)
    doc = dict(make_doc(), tree=root.to_json(), headline=headline(root))
    buf = io.StringIO()
    render_profile(doc, Console(file=buf, width=100, color_system=None))
    row = next(line for line in buf.getvalue().splitlines() if POLICY[:15] in line)
    assert "changed: excluded" in row and "—" in row


def test_labels_are_the_ones_attribution_gives_chainwork():
    d, _ = ruleset_delta(ruleset(), scaled(ruleset(), 2))
    work, _ = iptables_work(d)
    assert {w.table for w in work} == {ch.iptables_label("legacy", "ipv4", "filter")}
    recs = parse_nft(strip_provenance((FIX / "nftables" / "lab_nft_rules100.json").read_text())).records
    assert {w.table for w in nft_work(recs)[0]} == {ch.nft_label("inet", "cnit-netpol")}


# --- nftables ------------------------------------------------------------------------------------

def nft_records(name: str):
    return parse_nft(strip_provenance((FIX / "nftables" / name).read_text())).records


def readded(records, chain: str, shift: int = 100, counts: int | None = None):
    """`chain`'s rules deleted and added again, unchanged: new handles (counters restart)."""
    return tuple(dataclasses.replace(r, handle=r.handle + shift, **({} if counts is None or r.packets is None
                                                                    else {"packets": counts, "bytes": counts}))
                 if isinstance(r, NftRule) and r.chain == chain else r for r in records)


def test_nft_rules_re_added_are_a_restart_other_rules_a_structural_change():
    a = nft_records("lab_nft_rules100.json")
    found = ch.nft_changes(a, readded(a, "ingress-p0"), NS)
    assert [(c.kind, c.where["name"], c.reset, c.structural) for c in found] == [
        ("nft_chain", "ingress-p0", True, False)]
    assert "rules re-added (new handles)" in found[0].what
    first = next(r for r in a if isinstance(r, NftRule) and r.chain == "ingress-p0")
    fewer = tuple(r for r in a if r is not first)
    gone = ch.nft_changes(a, fewer, NS)[0]
    assert gone.structural and "1 rule(s) vanished" in gone.what
    renew = tuple(dataclasses.replace(r, handle=99) if isinstance(r, NftChain) and r.name == "forward" else r for r in a)
    assert "chain recreated (handle 1 → 99)" in ch.nft_changes(a, renew, NS)[0].what


def test_iptables_nft_tables_are_reported_as_their_iptables_chains():
    a = nft_records("calico_iptables_nft.json")
    found = ch.nft_changes(a, readded(a, "cali-fw-caliab276a425c1"), NS, owned={("ip", "filter")})
    assert [(c.kind, c.where) for c in found] == [("iptables_chain", {
        "netns": NS, "backend": "nft", "family": "ipv4", "table": "filter", "chain": "cali-fw-caliab276a425c1"})]


def test_iptables_nft_chains_whose_handles_all_changed_count_from_their_restart():
    """iptables-nft: a chain restored with the same rules gets new handles; even when its counters grew
    past their old values, the interval counts what it holds since. One appended rule restarts nothing."""
    rs = parse_ruleset((FIX / "iptables" / "calico_nft_backend.save").read_text(), backend="nft")[0]
    nft = nft_records("calico_iptables_nft.json")
    chain = "cali-fw-caliab276a425c1"

    def pair(later_nft):
        a = Counters({NS: snap("iptables", rs.records)}, {NS: snap("nftables", nft)}, at=0.0)
        b = Counters({NS: snap("iptables", scaled(rs, 3).records)}, {NS: snap("nftables", later_nft)}, at=1.0)
        return a, b

    a, b = pair(readded(nft, chain))
    changes = ch.changes_between(a, b)
    assert ch.forced_resets(changes, NS, [a, b]) == {0: {("nft", "ipv4", "filter", chain)}}
    delta = ch.rebased_ruleset([rs, scaled(rs, 3)], ch.forced_resets(changes, NS, [a, b]))
    assert all(r.packets == 3 * o.packets for r, o in zip(delta.rules, rs.rules) if r.chain == chain)
    last = max((r for r in nft if isinstance(r, NftRule) and r.chain == chain), key=lambda r: r.position)
    appended = (*nft, dataclasses.replace(last, handle=999, position=last.position + 1, comment="new"))
    a, b = pair(appended)
    changes = ch.changes_between(a, b)
    assert changes.objects and ch.forced_resets(changes, NS, [a, b]) == {}


def test_nft_re_added_rules_keep_what_they_counted_before():
    a = nft_records("lab_nft_rules100.json")
    grown = tuple(dataclasses.replace(r, packets=r.packets * 2, bytes=r.bytes * 2)
                  if isinstance(r, NftRule) and r.packets is not None else r for r in a)
    b = readded(grown, "ingress-p0", counts=1)              # re-added, then one packet each
    out = {r.position: r for r in ch.rebased_nft([a, grown, b]) if isinstance(r, NftRule) and r.chain == "ingress-p0"}
    for r in a:
        if isinstance(r, NftRule) and r.chain == "ingress-p0" and r.packets is not None:
            assert out[r.position].packets == r.packets + 1     # the first interval's plus the one since


# --- OVS, BPF, conntrack ---------------------------------------------------------------------------

def ovs_snapshot(flows, tables, at: float = 0.0) -> Snapshot:
    return snap("ovs", (*flows, *tables), at=at, table_names={"cnitbr": {"10": "Policy"}})


def test_ovs_flows_re_added_and_table_counters_restarted():
    flows = parse_dump_flows((FIX / "ovs" / "host-dump-flows.txt").read_text(), "cnitbr").records
    tables = parse_dump_tables((FIX / "ovs" / "host-dump-tables.txt").read_text(), "cnitbr").records
    hit = next(f for f in flows if f.table == 10 and f.n_packets)
    later = [f._replace(duration_s=f.duration_s + 5) for f in flows]
    re_added = [f._replace(n_packets=0, n_bytes=0, duration_s=0.2) if f.table == 10 else f for f in later]
    found = ch.ovs_changes(ovs_snapshot(flows, tables), ovs_snapshot(re_added, tables, 5.0))
    c = next(x for x in found if x.kind == "ovs_flows")
    assert c.where == {"bridge": "cnitbr", "table": 10, "name": "Policy"} and c.reset
    assert f"{sum(1 for f in flows if f.table == 10)} flow(s) re-added (duration restarted)" in c.what
    assert ch.ovs_changes(ovs_snapshot(flows, tables), ovs_snapshot(later, tables, 5.0)) == []
    # re-added with counters carried over (OpenFlow 1.3+ without reset_counts): no restart, still named
    aged = [f._replace(duration_s=0.2) if f.key == hit.key else f for f in later]
    soft = ch.ovs_changes(ovs_snapshot(flows, tables), ovs_snapshot(aged, tables, 5.0))
    assert [(x.kind, x.reset) for x in soft] == [("ovs_flows", False)]
    # a flow added just before the window and re-added during it: older than before, younger than its bridge
    young = [f._replace(duration_s=0.3) if f.key == hit.key else f for f in flows]
    grown = [f._replace(duration_s=3.0) if f.key == hit.key else f for f in later]
    assert "1 flow(s) re-added (duration restarted)" in ch.ovs_changes(
        ovs_snapshot(young, tables), ovs_snapshot(grown, tables, 5.0))[0].what
    gone = ch.ovs_changes(ovs_snapshot(flows, tables), ovs_snapshot([f for f in later if f.key != hit.key], tables))
    assert "1 flow(s) vanished" in gone[0].what and gone[0].structural
    reset = [dataclasses.replace(t, lookup=0, matched=0) for t in tables]
    assert any(x.kind == "ovs_table" for x in ch.ovs_changes(ovs_snapshot(flows, tables), ovs_snapshot(flows, reset)))


def bpf_snapshot(prog_id: int, map_id: int, map_name: str = "hits") -> tuple[Snapshot, list[BpfMap]]:
    att = parse_tc_filters(strip_provenance((FIX / "bpf" / "host-tc-filter-show.json").read_text()), "cnitva",
                           "ingress", NS).records[0]
    prog = parse_prog_show(strip_provenance((FIX / "bpf" / "host-prog-show-id.json").read_text())).records[0]
    m = parse_map_show(strip_provenance((FIX / "bpf" / "host-map-show.json").read_text())).records[0]
    att = dataclasses.replace(att, prog_id=prog_id)
    prog = dataclasses.replace(prog, id=prog_id, map_ids=(map_id,))
    return (snap("bpf", [prog], attachments=[att.to_json()]),
            [dataclasses.replace(m, id=map_id, name=map_name)])


def test_a_tc_program_replaced_at_its_hook_and_a_map_recreated():
    (a, ma), (b, mb) = bpf_snapshot(163, 67), bpf_snapshot(170, 71)
    found = ch.bpf_changes(a, b, ma, mb)
    prog = next(c for c in found if c.kind == "bpf_program")
    assert prog.reset and prog.where == {"netns": NS, "attach": "tc", "iface": "cnitva", "hook": "ingress"}
    assert "on_tc (id 163) → on_tc (id 170)" in prog.what[0] and prog.detail["new_ids"] == [170]
    m = next(c for c in found if c.kind == "bpf_map")
    assert m.where == {"name": "hits"} and "id 67 → 71" in m.what[0]
    assert ch.bpf_changes(a, a, ma, ma) == []
    # a program's own global data is new with every load: not a recreated map
    (c, mc), (d, md) = bpf_snapshot(163, 67, "on_tc.rodata"), bpf_snapshot(163, 72, "on_tc.rodata")
    assert ch.bpf_changes(c, d, mc, md) == []


def test_the_new_program_keeps_its_measured_figures_and_a_lost_predecessor_makes_a_lower_bound():
    (a, ma), (b, mb) = bpf_snapshot(163, 67), bpf_snapshot(170, 67)
    changes = ch.Changes(tuple(ch.bpf_changes(a, b, ma, mb)))
    stage = ch.mark_programs(bpf_stage([ProgramTime("on_tc (id 170, sched_cls)", 40, 100.0)], 50), changes)
    prog = stage.children[0]
    assert prog.ns_per_packet == pytest.approx(80.0) and prog.basis.startswith(CHANGED)
    assert stage.basis and "lower bound" in stage.basis and "163" in stage.basis
    # the replaced program still attached elsewhere at the end: its runs count, the stage is only possibly low
    b_too = snap("bpf", b.records, attachments=[*b.meta["attachments"],
                                                dict(a.meta["attachments"][0], target="cnitvb")])
    kept = ch.mark_programs(bpf_stage([ProgramTime("on_tc (id 170, sched_cls)", 40, 100.0)], 50),
                            ch.Changes(tuple(ch.bpf_changes(a, b_too, ma, mb))))
    assert kept.basis.startswith(CHANGED) and "possibly a lower bound" in kept.basis and "163" not in kept.basis


def test_conntrack_statistics_going_backward_are_a_reset():
    text = strip_provenance((FIX / "conntrack" / "host-conntrack-S.txt").read_text())
    a = parse_conntrack_S(text, NS).records
    grown = [dataclasses.replace(r, values={k: v + 10 for k, v in r.values.items()}) for r in a]
    assert ch.conntrack_changes(snap("conntrack", grown), snap("conntrack", grown)) == []
    found = ch.conntrack_changes(snap("conntrack", grown), snap("conntrack", a))
    assert [c.where for c in found] == [{"netns": NS}] and found[0].reset


# --- bounds -----------------------------------------------------------------------------------------

def test_bounds_clamp_and_say_so():
    w = ChainWork("filter (iptables-legacy, ipv4)", "cali-pi", 500, 500 * 300, (RuleHit(3, "x", 900),),
                  classes=(("full:port", 150_000.0),), rule_count=200)
    (b,), warnings = ch.bound_work([w], entered=120)
    assert b.packets == 120 and b.rules[0].packets == 120 and len(warnings) == 1 and "cali-pi" in warnings[0]
    capped, why = within_rules(b)
    assert capped.evaluations == 120 * 200 and why and "200 rules" in why
    assert sum(v for _, v in capped.classes) == pytest.approx(capped.evaluations)
    stage = netfilter_stage([dataclasses.replace(w, packets=100, evaluations=100 * 300)], 100, Calib(20.0))
    node = stage.find("chain", "cali-pi")
    assert node.evaluations_per_packet == pytest.approx(200) and "clamped" in node.detail["warning"]
    root = Node("root", "r", children=[Node("stage", "s", ns_per_packet=-5.0, share=1.7, packets=-1)])
    warnings = clamp_tree(root)
    s = root.children[0]
    assert (s.ns_per_packet, s.share, s.packets) == (0.0, 1.0, 0) and len(warnings) == 1


def _tree_ok(root: Node, entered: int, counts: dict) -> None:
    for _, n in root.walk():
        for f in ("ns_per_packet", "measured_ns", "modelled_ns", "apportioned_ns", "evaluations_per_packet"):
            assert (getattr(n, f) or 0.0) >= 0.0, (n.name, f, getattr(n, f))
        assert n.packets >= 0
        assert n.share is None or 0.0 <= n.share <= 1.0 + 1e-9
        if n.kind == "chain":
            assert n.packets <= entered, (n.name, n.packets, entered)
            if n.evaluations_per_packet is not None:
                assert n.evaluations_per_packet <= counts.get(n.name, 0) + 1e-9, (n.name, n.evaluations_per_packet)


STEP = st.tuples(st.integers(0, 50), st.booleans(), st.integers(0, 50))   # (before restart, restarted?, after)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(STEP, min_size=4, max_size=4), min_size=1, max_size=6),
       st.integers(0, 400), st.booleans())
def test_random_counter_sequences_never_give_a_negative_or_impossible_figure(steps, entered, measured):
    """Every rule's counter walks: grows, restarts, grows. Re-based counts are never negative, never more
    than was truly counted and never less than the plain delta; and whatever the counters say, the
    report keeps its bounds (chain packets <= what entered, evaluations per packet <= the chain's rules,
    shares <= 100 %)."""
    base = ruleset()
    rules = list(base.rules)
    seq, truth = [base], [0] * len(rules)
    values = [r.packets for r in rules]
    for interval in steps:
        for i in range(len(rules)):
            x, reset, y = interval[i % len(interval)]
            x, y = (x + i) % 37, (y * (i + 1)) % 41
            truth[i] += x + y
            values[i] = y if reset else values[i] + x + y
        seq.append(Ruleset(base.chains, tuple(dataclasses.replace(r, packets=v, bytes=v * 60)
                                              for r, v in zip(rules, values))))
    rebased = ch.rebased_ruleset(seq)
    naive, _ = ruleset_delta(seq[0], seq[-1])
    for r, n, t in zip(rebased.rules, naive.rules, truth):
        assert 0 <= n.packets <= r.packets <= t
    snaps = [counters(s, at=float(i), links=i * entered) for i, s in enumerate(seq)]
    work, _, _, _ = netfilter_inputs(snaps[0], snaps[-1], snaps[1:-1])
    cal = Calib(20.0)
    tables = []
    if measured and work:
        from cnitrace.attribution.tree import TableTime
        tables = [TableTime(work[0].table, max(entered, 1), 5_000.0, backend="nf_bpf")]
    stage = netfilter_stage(work, max(entered, 1), cal, measured=tables)
    root = build_tree([stage], Transit(max(entered, 1), 9_000.0) if measured else None, max(entered, 1))
    clamp_tree(root)
    counts = {}
    for r in base.rules:
        counts[r.chain] = counts.get(r.chain, 0) + 1
    _tree_ok(root, entered * len(seq), counts)


# --- the document and the terminal -----------------------------------------------------------------

def test_changes_section_is_valid_and_the_terminal_prints_one_line_per_object_capped():
    from tests.unit.test_report_document import make_doc
    objs = tuple(ch.Change("iptables_chain", {"netns": NS, "backend": "legacy", "family": "ipv4", "table": "filter",
                                              "chain": f"cali-pi-{i}"}, ("rule counters restarted (went backward)",),
                           reset=True, spans=((0, 1),)) for i in range(14))
    changes = ch.Changes(objs, (0.0, 0.5, 1.0))
    doc = make_doc()
    assert validate(doc) == []                       # an older document, without the section, stays valid
    doc["changes"] = {**changes.to_json(), "mid_snapshots": {"count": 1, "interval_s": 0.5}}
    assert validate(json.loads(json.dumps(doc))) == []
    assert doc["changes"]["objects"][0]["spans_s"] == [[0.0, 0.5]]
    buf = io.StringIO()
    render_changes(doc["changes"], Console(file=buf, width=100, color_system=None))
    lines = [line for line in buf.getvalue().splitlines() if line.lstrip().startswith("•")]
    assert len(lines) == 10 and "… and 4 more" in buf.getvalue() and "stay valid" in buf.getvalue()
    assert "cali-pi-0" in lines[0] and "excluded" in buf.getvalue()
    html = render_html(doc)
    assert html.count("<li>iptables chain cali-pi-") == 14 and "stay valid" in html
    doc["changes"]["objects"][0]["kind"] = "guess"
    assert validate(doc)


def test_a_sweep_point_whose_lab_changed_is_flagged_and_left_out_of_the_fit():
    from cnitrace.sweep.model import build_curves
    from cnitrace.sweep.run import flag_changes

    def point(rules: int, ns: float) -> dict:
        return {"spec": {"datapath": "calico", "rules": rules, "clients": 1, "l7": False, "placement": "intra",
                         "id": f"calico/r{rules}"}, "status": "ok", "metrics": {"new_flow_ns": {"median": ns}},
                "stages": []}

    moved = ch.Changes((_change([(0, 1)], 1),))
    clean = [flag_changes(point(r, 1000.0 + r), ch.Changes()) for r in (0, 100, 1000)]
    assert all(p["status"] == "ok" and p["changes"]["count"] == 0 for p in clean)
    bad = flag_changes(point(1000, 9e9), moved)
    assert bad["status"] == "changed" and POLICY in bad["error"] and bad["changes"]["count"] == 1
    curves = [c for c in build_curves([*clean[:2], bad]) if c["metric"] == "new_flow_ns"]
    assert [x for x, _ in curves[0]["points"]] == [0.0, 100.0]          # the changed point is not fitted


# --- the mid-window sampler (I/O edge, replayed) ------------------------------------------------------

def test_the_sampler_snapshots_rule_namespaces_in_a_thread_and_a_restart_between_samples_is_caught(monkeypatch):
    """Recorded dumps: the policy chain restarts between the sampler's second and third dump. From the
    window's ends alone the restart is invisible; with the samples it is named and re-based."""
    from cnitrace.core.runner import RecordedRunner
    from cnitrace.profile import window

    seq = after_restart()
    texts = iter([CALICO, *(ruleset_text(s) for s in seq[1:3]), *[ruleset_text(seq[3])] * 50])
    links = iter(range(0, 10_000, 100))
    save = ("ip", "netns", "exec", NS, "iptables-legacy-save", "-c")
    link = ("ip", "netns", "exec", NS, "ip", "-s", "-j", "link", "show")
    runner = RecordedRunner({save: lambda: next(texts),
                             link: lambda: json.dumps([{"stats64": {"rx": {"packets": next(links)},
                                                                    "tx": {"packets": 0}}}])},
                            tools=["iptables-legacy-save"])
    before = counters(ruleset(), at=0.0, links=0)
    assert window.mid_scope(before) == {NS: (("legacy",), False)} and window.mid_skipped(before) is None
    monkeypatch.setattr(window, "MID_INTERVAL_S", 0.01)
    sampler = window.MidSampler(before, runner, 0.0).start()
    deadline = time.monotonic() + 10
    while len(sampler.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    mid = sampler.stop()
    assert len(mid) >= 3 and sampler.overhead()["count"] == len(mid)
    after = counters(seq[3], at=mid[-1].at + 1, links=10_000)
    assert not ch.changes_between(before, after)
    changes = ch.changes_between(before, after, mid)
    assert [c.where["chain"] for c in changes.objects] == [POLICY]
    big = ruleset()
    assert "rules (>" in window.mid_skipped(counters(Ruleset(big.chains, big.rules * 600)))   # too costly to sample


def ruleset_text(rs: Ruleset) -> str:
    """An iptables-legacy-save -c dump of a parsed ruleset (what the sampler's runner replays)."""
    out = ["*filter", *(f":{c.name} {c.policy or '-'} [{c.packets}:{c.bytes}]" for c in rs.chains)]
    out += [f"[{r.packets}:{r.bytes}] -A {r.chain} {r.spec}" for r in sorted(rs.rules, key=lambda r: (r.chain, r.position))]
    return "\n".join([*out, "COMMIT", ""])

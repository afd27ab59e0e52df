"""calibrate.walk on the real lab (root): a long chain is replayed byte for byte at its page offset
and timed, the result is cached, a replay that cannot reproduce the node's layout says so instead
of giving a figure, and the bench leaves nothing behind."""

from __future__ import annotations

import dataclasses

from cnitrace.calibrate import walk
from cnitrace.collectors.iptables.layout import PAGE, ChainLayout, read_layout
from tests.support.runs import netns_names


def no_bench_left() -> bool:
    return not [n for n in netns_names() if n.startswith("cnit-cal")]


def test_a_long_chain_is_timed_on_its_replay_and_cached(lab_factory, tmp_path):
    lab = lab_factory("kube-router", 1000)
    ns = lab.topo.node_netns
    cache = tmp_path / "calibration.json"
    rs = walk.legacy_rules(ns)
    [(key, w)] = walk.walks_for(rs, "legacy", ns, cache=cache).items()
    chain = key[2]
    lay = read_layout("filter", ns).chains[chain]
    assert key[:2] == ("ipv4", "filter") and chain.startswith("KUBE-NWPLCY-")
    assert w.reason is None and w.provenance == "measured", w
    assert w.rules == len(lay.rules) == 2004 and w.page_offset == lay.first_offset % PAGE
    assert w.ns_per_rule > 0 and len(w.samples) == 3
    assert no_bench_left()
    again = walk.walks_for(rs, "legacy", ns, cache=cache)[key]
    assert again.provenance == "cached" and again.ns_per_rule == w.ns_per_rule


def test_a_replay_that_cannot_reproduce_the_layout_gives_no_figure(lab_factory, tmp_path):
    lab = lab_factory("kube-router", 1000)
    ns = lab.topo.node_netns
    [(key, rules)] = walk.candidates(walk.legacy_rules(ns)).items()
    lay = read_layout("filter", ns).chains[key[2]]
    # a node whose rules were 8 bytes longer each (another iptables's match revision, say)
    other = ChainLayout(lay.name, tuple((o + 8 * i, s + 8) for i, (o, s) in enumerate(lay.rules)))
    ch = walk.WalkChain(*key, tuple(rules), other)
    creates = walk.sets_in(ns, walk.referenced(rules, ())[0])
    got = walk.measure_walks([ch], creates=creates, cache=tmp_path / "c.json")[key]
    assert got.ns_per_rule is None and "lays the rules out differently" in got.reason
    assert not (tmp_path / "c.json").exists() or key[2] not in (tmp_path / "c.json").read_text()
    assert no_bench_left()
    # the same chain with its true layout is replayed (the sets it names exist in the bench)
    ok = walk.measure_walks([dataclasses.replace(ch, layout=lay)], cache=tmp_path / "c.json", creates=creates)[key]
    assert ok.reason is None and ok.ns_per_rule > 0


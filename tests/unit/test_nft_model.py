"""Native nftables chains without counters: evaluations from structure, priced by rule shape (no root).

Fixtures are real `nft -j list ruleset` output of the lab's nft datapath after a probe window
(tests/fixtures/nftables/lab_nft_rules*.json, provenance on their first line): a base chain
`forward` with two ct state rules and `ip daddr vmap @pod-ingress` (no counters), the pod's chain
`ingress-p0` (a peer-set rule with a counter after its match, an interval verdict map, a counted
default drop), and two allow chains whose only rule counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnitrace.attribution.netfilter import nft_work
from cnitrace.attribution.tree import Calib, TableTime, netfilter_stage, with_calls
from cnitrace.calibrate.rules import NFT_CAL_TABLE, nft_shape_body
from cnitrace.calibrate.shapes import ShapeCosts, interpolate
from cnitrace.collectors.nftables.graph import imap_elements, native_model, rule_class
from cnitrace.collectors.nftables.parse import NftRule, NftSet, parse

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nftables"
T = ("inet", "cnit-netpol")


def fixture(name: str) -> str:
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text.split("\n", 1)[1]


def records(name: str):
    p = parse(fixture(name))
    assert p.warnings == ()
    return p.records


# --- parse: what an interval lookup's cost follows -------------------------------------------------

@pytest.mark.parametrize("name, size, first, target_first", [
    ("lab_nft_rules0.json", 2, (("tcp", 1), ("udp", 1)), (("allow-tcp", "tcp"), ("allow-udp", "udp"))),
    ("lab_nft_rules100.json", 102, (("tcp", 101), ("udp", 1)), (("allow-tcp", "tcp"), ("allow-udp", "udp"))),
    ("lab_nft_rules1000.json", 1002, (("tcp", 1001), ("udp", 1)), (("allow-tcp", "tcp"), ("allow-udp", "udp"))),
])
def test_interval_map_elements_by_first_field(name, size, first, target_first):
    ports = next(r for r in records(name) if isinstance(r, NftSet) and r.name == "ports-p0")
    assert (ports.size, ports.first_field, ports.target_first) == (size, first, target_first)
    assert "interval" in ports.flags
    peers = next(r for r in records(name) if isinstance(r, NftSet) and r.name == "peers-p0")
    assert peers.first_field == () and peers.target_first == ()      # not a concatenation


# --- the walk: who reaches which rule --------------------------------------------------------------

# (fixture, base entering given or None, {chain: (entering, extra per base packet, [(reach, extra, class)])})
LAB_CASES = [
    # counters only: the base chain's entering is what its counted exits prove: the ingress chain's
    # peer drops (0) + the allow chains (5 + 5) + the default drop (N=0: 10, N=100: 25). A packet
    # beyond that takes the structure's path: every forward rule, the dispatch, the peer set and the
    # port map, whose own verdicts (accept elements) take it, since the default drop is counted.
    ("lab_nft_rules0.json", None, {
        "forward": (20, 1, [(20, 1, "nft"), (20, 1, "nft"), (20, 1, "nft:vmap")]),
        "ingress-p0": (20, 1, [(20, 1, "nft:set"), (20, 1, "nft:imap:1.0"), (10, 0, "nft")]),
        "allow-tcp": (5, 0, [(5, 0, "nft")]),
        "allow-udp": (5, 0, [(5, 0, "nft")]),
    }),
    ("lab_nft_rules100.json", None, {
        "forward": (35, 1, [(35, 1, "nft"), (35, 1, "nft"), (35, 1, "nft:vmap")]),
        "ingress-p0": (35, 1, [(35, 1, "nft:set"), (35, 1, "nft:imap:51.0"), (25, 0, "nft")]),
        "allow-tcp": (5, 0, [(5, 0, "nft")]),
        "allow-udp": (5, 0, [(5, 0, "nft")]),
    }),
    # the bracket counted 60 calls of the base chain: they are the entering, pins stay
    ("lab_nft_rules1000.json", 60, {
        "forward": (60, 0, [(60, 0, "nft"), (60, 0, "nft"), (60, 0, "nft:vmap")]),
        "ingress-p0": (60, 0, [(60, 0, "nft:set"), (60, 0, "nft:imap:501.0"), (25, 0, "nft")]),
        "allow-tcp": (5, 0, [(5, 0, "nft")]),
        "allow-udp": (5, 0, [(5, 0, "nft")]),
    }),
]


@pytest.mark.parametrize("name, base, want", LAB_CASES)
def test_native_model_of_the_lab(name, base, want):
    model = native_model(records(name), None if base is None else {(*T, "forward"): base})
    got = {k[2]: (c.entering, c.extra_entering, [(e.reach, e.extra, e.cls) for e in c.rules])
           for k, c in model.items() if k[:2] == T}
    assert got == want


def test_kube_proxy_nftables_mode_has_no_counters_only_structure():
    # kube-proxy's own nftables-mode rules: no counters at all, so every figure is per base packet
    model = native_model(records("kubeproxy_nftables_mode.json"))
    assert model
    assert all(c.entering == 0 for c in model.values())
    assert any(c.extra_entering > 0 for c in model.values())
    assert all(e.reach == 0 and e.extra >= 0 for c in model.values() for e in c.rules)


def _rule(**kw) -> NftRule:
    base = dict(family="inet", table="t", chain="c", handle=1, position=1, verdict="continue")
    return NftRule(**{**base, **kw})


def _set(name, **kw) -> NftSet:
    return NftSet(**{**dict(family="inet", table="t", name=name, kind="map", type="x", size=0), **kw})


SETS = {
    "h": _set("h", kind="set", size=64),
    "cidr": _set("cidr", kind="set", size=10, flags=("interval",)),        # one field: not pipapo-priced
    "pm": _set("pm", size=30, flags=("interval",), first_field=(("tcp", 20), ("udp", 10)),
               target_first=(("a", "tcp"), ("b", "udp"))),
}


@pytest.mark.parametrize("rule, entering, cls", [
    (_rule(), {}, "nft"),                                                     # compare/meta/payload
    (_rule(lookups=("h",)), {}, "nft:set"),                                  # hash set lookup
    (_rule(lookups=("cidr",)), {}, "nft:set"),
    (_rule(lookups=("h",), verdict="dispatch", targets=("x",)), {}, "nft:vmap"),
    (_rule(lookups=("pm",), verdict="dispatch"), {}, "nft:imap:15.0"),       # no evidence: uniform tcp/udp
    (_rule(lookups=("pm",), verdict="dispatch"), {"a": 3.0, "b": 1.0}, "nft:imap:17.5"),   # 3/4 tcp
    (_rule(lookups=("pm",), verdict="dispatch"), {"a": 4.0}, "nft:imap:20.0"),              # all tcp
])
def test_rule_class(rule, entering, cls):
    assert rule_class(rule, SETS, entering) == cls


def test_imap_elements_without_a_concatenation_is_the_size():
    assert imap_elements(_set("s", size=7, flags=("interval",)), {}) == 7.0


# --- pricing ---------------------------------------------------------------------------------------

NFT_NS = {"plain": 40.0, "set": 70.0, "vmap": 90.0, "imap:100": 1200.0, "imap:1000": 9000.0,
          "imap:5000": 45000.0, "seconds": 13.0}
COSTS = ShapeCosts(5.0, {"port": 18.0, "mark": 20.0}, "legacy", nft_rule_ns=60.0, nft_ns=NFT_NS)


@pytest.mark.parametrize("cls, ns", [
    ("nft", 40.0), ("nft:set", 70.0), ("nft:vmap", 90.0),
    ("nft:imap:0", 40.0), ("nft:imap:50", 620.0), ("nft:imap:100", 1200.0),
    ("nft:imap:550", 5100.0), ("nft:imap:5000", 45000.0), ("nft:imap:6000", 54000.0),
    # iptables classes unchanged
    ("early", 5.0), ("full:port", 23.0), ("full:mark+port", 43.0),
])
def test_class_ns(cls, ns):
    assert COSTS.class_ns(cls) == pytest.approx(ns)


def test_without_native_figures_nft_falls_back_to_the_plain_rule():
    old = ShapeCosts(5.0, {"port": 18.0}, "legacy", nft_rule_ns=60.0)
    assert old.class_ns("nft") == old.class_ns("nft:imap:1000") == old.class_ns("nft:set") == 60.0
    assert ShapeCosts.from_json(COSTS.to_json()) == COSTS


@pytest.mark.parametrize("points, x, want", [
    ([], 10.0, 3.0), ([(10.0, 13.0)], 5.0, 8.0), ([(10.0, 13.0), (20.0, 33.0)], 30.0, 53.0),
    ([(10.0, 1.0)], 5.0, 2.0),
])
def test_interpolate(points, x, want):
    assert interpolate(points, x, 3.0) == pytest.approx(want)


def test_calibration_bodies():
    plain = nft_shape_body("plain", 3)
    assert plain.count("udp dport") == 3 and f"table inet {NFT_CAL_TABLE} {{" in plain
    assert nft_shape_body("set", 5).count("ip daddr @hs drop") == 5
    assert nft_shape_body("vmap", 4).count("ip daddr vmap @dv") == 4
    imap = nft_shape_body("imap", 50)
    assert imap.count("udp . ") == 50 and imap.count("vmap @im") == 1 and "flags interval" in imap
    assert "vmap @im" not in nft_shape_body("imap", 0)


# --- into the stage: the bracket's calls and the apportioned chains -------------------------------

def test_nft_work_and_the_measured_table():
    work, _ = nft_work(records("lab_nft_rules1000.json"))
    by = {w.chain: w for w in work}
    assert by["forward"].packets == 35 and by["forward"].base_unknown == 1
    assert dict(by["ingress-p0"].unpinned) == {"nft:set": 1.0, "nft:imap:501.0": 1.0}
    scaled = {w.chain: w for w in with_calls(work, 60)}
    assert scaled["forward"].packets == 60 and scaled["ingress-p0"].packets == 60
    assert dict(scaled["ingress-p0"].classes) == {"nft:set": 60.0, "nft:imap:501.0": 60.0, "nft": 25.0}
    assert scaled["allow-tcp"] == by["allow-tcp"]                    # pinned by its counter
    cal = Calib.from_shapes(COSTS)
    # 60 calls of 5,000 ns measured for 50 packets
    stage = netfilter_stage(work, 50, cal, measured=[TableTime("inet cnit-netpol (nft)", 60, 5000.0,
                                                              backend="nf_bpf")])
    table = stage.children[0]
    want = (60 * (40 + 40 + 90) + 60 * 70 + 60 * COSTS.class_ns("nft:imap:501") + 25 * 40 + 5 * 40 + 5 * 40) / 50
    assert table.modelled_ns == pytest.approx(want)
    assert table.measured_ns == pytest.approx(6000.0)
    assert table.detail["model_vs_measured"] == pytest.approx(want / 6000.0)
    top = max((c for c in table.children if c.kind == "chain"), key=lambda c: c.ns_per_packet or 0)
    assert top.name == "ingress-p0" and top.apportioned_ns is not None and top.provenance == "both"
    assert sum(c.apportioned_ns for c in table.children) == pytest.approx(6000.0)


def test_without_a_bracket_the_model_stays_at_what_the_counters_prove():
    work, _ = nft_work(records("lab_nft_rules100.json"))
    stage = netfilter_stage(work, 50, Calib.from_shapes(COSTS))
    table = stage.children[0]
    assert table.measured_ns is None and table.provenance == "modelled"
    ingress = next(c for c in table.children if c.name == "ingress-p0")
    assert ingress.packets == 35
    assert json.dumps(ingress.detail["classes"])        # per packet, by class


def test_kube_proxy_table_is_modelled_only_when_a_bracket_counted_its_packets():
    work, _ = nft_work(records("kubeproxy_nftables_mode.json"))
    assert work and all(w.packets == 0 for w in work)
    cal = Calib.from_shapes(COSTS)
    label = work[0].table
    assert netfilter_stage(work, 10, cal).children == []            # nothing counted, nothing measured
    stage = netfilter_stage(work, 10, cal, measured=[TableTime(label, 10, 800.0, backend="nf_bpf")])
    table = next(t for t in stage.children if t.name == label)
    assert table.provenance == "both" and table.modelled_ns > 0 and table.measured_ns == pytest.approx(800.0)
    assert all(c.basis == "measured (table), apportioned (chain)" for c in table.children)

"""iptables and nftables dumps analysed: structure, hook order, static cost, and counters (or their absence)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.costs import REFERENCE_LEGACY, rule_shape, shape_ns, unconditional
from cnitrace.analyze.dumps import Dump, read_text
from cnitrace.analyze.iptables import by_table, nodes_from, srules
from cnitrace.analyze.static import SRule, static_costs
from cnitrace.attribution.netfilter import iptables_work
from cnitrace.calibrate.shapes import parse_shape
from cnitrace.collectors.iptables import graph as ipt_graph
from cnitrace.collectors.iptables.parse import parse_ruleset
from cnitrace.reports.analyze.terminal import render_analysis

FIX = Path(__file__).parent.parent / "fixtures"
MODEL = costs.reference_model()
IPT = sorted(str(p.relative_to(FIX)) for p in (FIX / "iptables").glob("*"))
NFT = sorted(str(p.relative_to(FIX)) for p in (FIX / "nftables").glob("*.json"))


def dumps_of(*names: str, text: str | None = None) -> list:
    out = []
    for n in names:
        out += read_text((FIX / n).read_text(encoding="utf-8"), n)
    if text is not None:
        out += read_text(text, "pasted")
    return out


def doc_of(*names: str, text: str | None = None) -> dict:
    return analyze(dumps_of(*names, text=text), MODEL).doc


def tables(doc: dict, kind: str = "iptables") -> list[dict]:
    return [t for t in doc["netfilter"]["tables"] if t["kind"] == kind]


# --- pricing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in IPT if n.endswith((".save", ".restore", "_S.txt", "_S_v.txt"))])
def test_rule_shapes_match_the_calibration_parser(name):
    rs, _ = parse_ruleset((FIX / name).read_text(), None)
    for r in rs.rules:
        s = parse_shape(r.spec)
        assert rule_shape(r.spec) == (not s.header.empty, s.groups), r.spec


def test_shape_prices():
    shapes = REFERENCE_LEGACY
    early, port, comment, sets = shapes.early_ns, shapes.module_ns["port"], shapes.module_ns["comment"], \
        shapes.module_ns["set"]
    # header (-p) fails first; every module runs in the worst case
    assert shape_ns(shapes, rule_shape("-p tcp -m tcp --dport 80 -j DROP")) == (early + port, early)
    # no header: the first non-comment module fails (the comment before it ran)
    got = shape_ns(shapes, rule_shape('-m comment --comment "x" -m set --match-set s src -m tcp -j RETURN'))
    assert got == pytest.approx((early + comment + sets + port, early + comment + sets))
    # no test at all: it matches, so it costs its full figure both ways
    assert unconditional(rule_shape('-m comment --comment "a -> b" -j KUBE-SEP-X'))
    assert shape_ns(shapes, rule_shape('-m comment --comment "a" -j X')) == (early + comment,) * 2


# --- the static walk ---------------------------------------------------------------------------------

def r(kind="continue", targets=(), unc=False, w=10.0, t=1.0) -> SRule:
    """A rule priced 10 ns worst, 1 ns typical; a rule with no test matches, so it costs its worst (as priced)."""
    return SRule(kind, tuple(targets), unc, w, w if unc else t)


def test_static_worst_and_typical_by_hand():
    chains = {
        "BASE": [r(), r("jump", ["A"], unc=True), r("jump", ["B"]), r("terminal")],
        "A": [r(), r(), r("return", unc=True), r()],          # typical stops at the unconditional RETURN
        "B": [r(), r("goto", ["C"], unc=True), r()],          # typical follows the goto and leaves B
        "C": [r(), r("terminal", unc=True)],                  # ... and ends at an unconditional verdict
    }
    st, warnings = static_costs(chains)
    assert warnings == ()
    assert (st["C"].worst_evaluations, st["C"].typical_evaluations, st["C"].typical_end) == (2, 2, "terminal")
    assert (st["B"].worst_evaluations, st["B"].typical_evaluations) == (3 + 2, 2 + 2)
    assert st["B"].typical_end == "terminal"
    assert (st["A"].worst_evaluations, st["A"].typical_evaluations, st["A"].typical_end) == (4, 3, "return")
    # BASE: 4 own + A (4) + B (5) worst; typical: rule 1, the jump (+3 in A), the conditional jump to B
    # (not followed), the last rule
    assert st["BASE"].worst_evaluations == 4 + 4 + 5
    assert st["BASE"].typical_evaluations == 1 + 1 + 3 + 1 + 1
    assert st["BASE"].worst_ns == pytest.approx(10.0 * 13)
    # typical ns: conditional rules at 1 ns, unconditional ones at their worst price (they match)
    assert st["BASE"].typical_ns == pytest.approx(1 + 10 + (1 + 1 + 10) + 1 + 1)


def test_a_verdict_map_is_followed_into_its_costliest_target_only():
    chains = {"BASE": [r("dispatch", ["A", "B"])], "A": [r()] * 3, "B": [r()] * 7}
    st, _ = static_costs(chains)
    assert st["BASE"].worst_evaluations == 1 + 7 and st["BASE"].typical_evaluations == 1


def test_a_loop_is_cut_and_reported():
    st, warnings = static_costs({"A": [r("jump", ["B"])], "B": [r("jump", ["A"]), r()]})
    assert warnings and "loops" in warnings[0]
    assert st["A"].cut and st["A"].worst_evaluations >= st["A"].typical_evaluations


@pytest.mark.parametrize("name", IPT + NFT)
def test_worst_is_at_least_typical_everywhere(name):
    doc = doc_of(name)
    for t in (doc["netfilter"] or {"tables": []})["tables"]:
        for c in t["chain_figures"]:
            assert c["worst_evaluations"] >= c["typical_evaluations"] >= 0
            assert c["worst_evaluations"] >= c["rules"]
            assert c["worst_ns"] + 1e-9 >= c["typical_ns"] >= 0
    for h in (doc["netfilter"] or {"hooks": []})["hooks"]:
        s = h["static"]
        assert s["worst_ns"] + 1e-9 >= s["typical_ns"] >= 0 and s["provenance"] == "static"


# --- structure and hook order -----------------------------------------------------------------------

def test_kube_proxy_dump_structure_and_order():
    doc = doc_of("iptables/kubeproxy_kubernetes-75893.save")
    assert doc["kube_proxy"]["mode"] == "iptables"
    (nat,) = tables(doc)
    assert (nat["table"], nat["chains"], nat["rules"]) == ("nat", 25, 8)
    pre = next(b for b in nat["builtin"] if b["chain"] == "PREROUTING")
    assert pre["order"][:3] == ["PREROUTING", "KUBE-SERVICES", "DOCKER"]


def test_tables_run_in_netfilter_priority_order_on_each_hook():
    doc = doc_of("iptables/local_legacy_v4_c.save")
    hooks = {(h["family"], h["hook"]): h for h in doc["netfilter"]["hooks"]}
    out = [s["table"] for s in hooks[("ipv4", "output")]["steps"]]
    assert out == ["mangle", "nat", "filter"]            # -150, -100 (DNAT), 0
    post = hooks[("ipv4", "postrouting")]
    assert [s["table"] for s in post["steps"]] == ["mangle", "nat"] and post["steps"][1]["first_packet_only"]
    assert post["static_established"] is not None       # the path without the nat table


def test_nft_base_chains_by_hook_and_priority():
    doc = doc_of("nftables/kubeproxy_nftables_mode.json")
    assert doc["kube_proxy"]["mode"] == "nftables"
    (t,) = tables(doc, "nftables")
    prios = {(b["hook"], b["chain"]): b["priority"] for b in t["base"]}
    assert prios[("prerouting", "nat-prerouting")] == -100 and prios[("postrouting", "nat-postrouting")] == 100
    hooks = {(h["family"], h["hook"]) for h in doc["netfilter"]["hooks"]}
    assert ("ipv4", "prerouting") in hooks


def test_iptables_nft_tables_are_not_counted_twice():
    doc = doc_of("iptables/local_nft_v4.save", "nftables/iptnft_local.json")
    nft_labels = [t["label"] for t in tables(doc, "nftables")]
    assert "nft ip filter" not in nft_labels
    assert any("already covers" in w for w in doc["warnings"])


def test_cni_and_kube_proxy_from_several_files_of_one_node():
    doc = doc_of("lab/calico-lab-iptables-legacy-save-c.txt", "detect/calico_ip_link.txt")
    assert [c["cni"] for c in doc["cni"]] == ["calico"]
    assert any(e.startswith("interface cali") for e in doc["cni"][0]["evidence"])
    assert doc["structure"]["iptables"]["rules"] == 67


# --- counters ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iptables/local_legacy_v4_c.save", "iptables/calico_nft_backend.save",
                                  "lab/calico-lab-iptables-legacy-save-c.txt"])
def test_counter_evaluations_per_packet_are_the_profiles(name):
    """The dump's counters through the profile's own attribution (iptables_work over the ruleset as if it
    were a delta) give the same evaluations per packet for every chain with packets."""
    doc = doc_of(name)
    (dump,) = [d for d in dumps_of(name) if isinstance(d, Dump)]
    work, _ = iptables_work(dump.data)
    figures = {(t["table"], c["chain"]): c["counters"] for t in tables(doc) for c in t["chain_figures"]}
    assert work
    for w in work:
        table = w.table.split(" ")[0]
        got = figures[(table, w.chain)]
        assert got["provenance"] == "counters" and "since boot" in got["since"]
        assert got["entering_packets"] == w.packets
        assert got["evaluations_per_packet"] == pytest.approx(w.evaluations / w.packets, abs=1e-3)


@pytest.mark.parametrize("name", ["iptables/local_legacy_v4_c.save", "lab/calico-lab-iptables-legacy-save-c.txt",
                                  "iptables/calico_nft_backend.save"])
def test_graph_nodes_built_from_the_static_rules_are_graph_nodes_of(name):
    rs, _ = parse_ruleset((FIX / name).read_text(), None)
    graphs = ipt_graph.nodes_of(rs)
    for key, (chains, rules) in by_table(rs).items():
        mine = nodes_from(chains, rules, srules(chains, rules, costs.ShapePricer(REFERENCE_LEGACY)))
        assert mine == graphs[key]


def strip_counters(text: str) -> str:
    return re.sub(r"^\[\d+:\d+\] ", "", text, flags=re.M)


def test_a_dump_saved_without_counters_says_so_and_claims_no_zero_packets():
    with_c = (FIX / "lab" / "calico-lab-iptables-legacy-save-c.txt").read_text()
    without = strip_counters(with_c)
    assert "[" not in "".join(l for l in without.splitlines() if l.startswith("-A"))
    a, b = doc_of(text=with_c), doc_of(text=without)
    (ta,), (tb,) = tables(a), tables(b)
    assert ta["rule_counters"] and not tb["rule_counters"]
    assert "no counters" in tb["counters_note"] and "unknown, not zero" in tb["counters_note"]
    # same structure and the same static figures either way
    assert [(c["chain"], c["rules"], c["worst_ns"], c["typical_ns"]) for c in ta["chain_figures"]] == \
        [(c["chain"], c["rules"], c["worst_ns"], c["typical_ns"]) for c in tb["chain_figures"]]
    for c in tb["chain_figures"]:
        assert "counters" not in c
    for bi in tb["builtin"]:
        cnt = bi["counters"]
        assert cnt["absent"] and "entering_packets" not in cnt and "evaluations_per_packet" not in cnt
        assert "policy_packets" in cnt     # what the dump does count: packets given the policy
    from io import StringIO

    from rich.console import Console
    out = StringIO()
    render_analysis(b, Console(file=out, width=100))
    text = out.getvalue()
    assert "0 packets counted" not in text and "no packets" not in text
    assert "no rule counters" in text and "saved without -c" in text


def test_with_counters_a_chain_no_packet_reached_says_zero_counted():
    doc = doc_of("iptables/local_legacy_v4_c.save")
    fwd = next(b for t in tables(doc) if t["table"] == "filter" for b in t["builtin"] if b["chain"] == "FORWARD")
    assert fwd["counters"]["entering_packets"] == 0
    assert any("0 packets counted" in n for n in fwd["counters"]["notes"])


def test_nft_rules_without_counters_say_so():
    doc = doc_of("nftables/local_native_sets.json")
    for t in tables(doc, "nftables"):
        if not t["rules_with_counters"]:
            assert "unknown, not zero" in t["counters_note"]
            for b in t["base"]:
                assert b["counters"]["absent"]


def test_static_figures_name_their_cost_source():
    doc = doc_of("iptables/local_nft_v4.save")
    for t in tables(doc):
        assert t["cost_source"] == "reference" and t["cost"] == "iptables-nft"
    assert "reference figures, not this node" in doc["cost"]["iptables-nft"]["description"]
    assert doc["cost"]["iptables-nft"]["early_ns"] == costs.REFERENCE_NFT_BACKEND.early_ns

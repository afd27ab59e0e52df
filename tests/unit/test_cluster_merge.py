"""`cnitrace merge`: per-node profile documents into one cluster report (pure merge, renderers,
the command's bad-input lines). Documents: real captures (tests/fixtures/cluster) and documents
built by the real attribution code (tests/unit/test_report_document.make_doc)."""

from __future__ import annotations

import copy
import io
import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from cnitrace.cluster import merge as M
from cnitrace.core.errors import UsageError
from cnitrace.reports.cluster.document import validate as validate_cluster
from cnitrace.reports.cluster.html import render_cluster_html
from cnitrace.reports.cluster.terminal import render_cluster
from tests.support.fixtures import fixture
from tests.unit.test_report_document import make_doc

WORDING = re.compile(r"^node (?P<node>\S+): (?P<what>.+?) (?P<ratio>\d+\.\d)× the median per packet "
                     r"\((?P<mine>[\d.]+ [nµm]?s) vs (?P<med>[\d.]+ [nµm]?s), (?P<prov>[^)]+)\)")


def real(n: int) -> dict:
    return json.loads(fixture("cluster", f"profile_nft_rules{n}.json").split("\n", 1)[1])


def node_doc(name: str, n_rules: int) -> dict:
    doc = make_doc(n_rules)
    doc["host"]["hostname"] = name
    return doc


def merged(*docs: dict, names=None) -> dict:
    names = names or [None] * len(docs)
    out = M.merge([(f"{i}.json", n, d) for i, (n, d) in enumerate(zip(names, docs))])
    assert validate_cluster(json.loads(json.dumps(out))) == [], validate_cluster(out)[:3]
    return out


# --- outliers -----------------------------------------------------------------------------------

def test_the_node_with_many_more_rules_is_named_with_its_policy_chain():
    doc = merged(node_doc("n1", 10), node_doc("n2", 12), node_doc("n3", 1000), node_doc("n4", 11))
    assert [o["node"] for o in doc["outliers"]] == ["n3"]
    o = doc["outliers"][0]
    assert o["kind"] == "chain" and o["name"] == "cali-pi-allow" and o["table"] == "filter"
    # the table, stage and total it explains are not named again
    assert not any(x["kind"] in ("table", "stage", "root") for x in doc["outliers"])
    m = WORDING.match(o["text"])
    assert m and m["node"] == "n3" and float(m["ratio"]) == pytest.approx(o["ratio"], abs=0.05)
    assert o["ratio"] > 10
    assert "more rule evaluations per packet" in o["text"]
    assert f"{round(o['extra_evaluations']):,} more rule evaluations" in o["text"]
    assert o["extra_evaluations"] == pytest.approx(1000 - 11, abs=1)
    assert doc["headline"].startswith("node n3: chain cali-pi-allow (filter)")


def test_two_nodes_ratio_is_to_the_other_node():
    doc = merged(node_doc("a", 0), node_doc("b", 1000))
    (o,) = doc["outliers"]
    assert o["node"] == "b" and o["name"] == "cali-pi-allow"
    a = next(f for f in doc["figures"] if f["key"] == ["chain", "netfilter", "filter", "cali-pi-allow"])
    assert o["median_ns"] == a["nodes"]["a"]["ns_per_packet"]
    assert o["ratio"] is None or o["ratio"] == pytest.approx(o["ns_per_packet"] / o["median_ns"])


def test_equal_nodes_have_no_outlier():
    doc = merged(node_doc("a", 1000), node_doc("b", 1000), node_doc("c", 1000))
    assert doc["outliers"] == []
    assert doc["headline"].startswith("no outlier among 3 nodes")


def test_a_chain_only_one_node_has_compares_against_zero():
    light = node_doc("a", 0)
    # node a never reached a policy chain: the chain is absent from its tree
    tbl = light["tree"]["children"][0]["children"][0]
    tbl["children"] = [c for c in tbl["children"] if c["name"] != "cali-pi-allow"]
    doc = merged(light, node_doc("b", 1000))
    (o,) = doc["outliers"]
    assert o["node"] == "b" and o["median_ns"] == 0 and o["ratio"] is None
    assert "where the median node has none" in o["text"]
    row = next(f for f in doc["figures"] if f["key"][-1] == "cali-pi-allow")
    assert row["nodes"]["a"]["absent"] and row["nodes"]["a"]["ns_per_packet"] == 0


def test_real_captures_name_the_5000_rule_node():
    doc = merged(real(0), real(1000), real(5000), names=["r0", "r1000", "r5000"])
    assert {o["node"] for o in doc["outliers"]} == {"r5000"}
    o = doc["outliers"][0]
    assert o["ratio"] > M.MIN_RATIO
    assert "4,500 more lab policy rules" in o["text"]     # 5,000 vs the median of 0 and 1,000


def test_real_calico_captures_name_the_policy_chain_family():
    light = json.loads(fixture("cluster", "profile_calico_rules0.json").split("\n", 1)[1])
    heavy = json.loads(fixture("cluster", "profile_calico_rules1000.json").split("\n", 1)[1])
    doc = merged(light, heavy)
    assert [n["name"] for n in doc["nodes"]] == ["vm/mrga", "vm/mrgb"]      # host name and lab name
    (o,) = doc["outliers"]
    assert o["node"] == "vm/mrgb" and o["kind"] == "chain" and o["family"] == "cali-pi-*"
    assert o["name"].startswith("cali-pi-") and o["ratio"] > 10
    assert o["basis"] == "measured (table), apportioned (chain)" and o["provenance"] == "both"
    assert o["extra_evaluations"] > 1000 and o["extra_node_rules"] == 1000
    m = WORDING.match(o["text"])
    assert m and m["node"] == "vm/mrgb" and m["what"].startswith(f"chain {o['name']} (filter (iptables-legacy")
    assert o["text"].endswith("more rule evaluations per packet, 1,000 more lab policy rules")
    # both nodes' filter table was timed by probes: its figures stay measured, the model beside them
    table = next(f for f in doc["figures"] if f["kind"] == "table")
    assert {v["provenance"] for v in table["nodes"].values()} == {"both"}


def test_conntrack_nearly_full_is_named():
    a, b = node_doc("a", 10), node_doc("b", 10)
    b["conntrack"] = {"count": 250_000, "max": 262_144, "insert_failed": 12, "drop": 3}
    doc = merged(a, b)
    (o,) = doc["outliers"]
    assert o["kind"] == "conntrack" and o["node"] == "b"
    assert "conntrack 95 % full (250,000 / 262,144 entries)" in o["text"] and "insert_failed 12" in o["text"]
    assert doc["totals"]["conntrack"]["fullest_node"] == "b"


def test_chain_rule_counts_are_used_when_documents_carry_them():
    a, b = node_doc("a", 20), node_doc("b", 4140)
    for d, n in ((a, 20), (b, 4140)):
        chain = next(c for c in d["tree"]["children"][0]["children"][0]["children"] if c["name"] == "cali-pi-allow")
        chain["detail"]["rules"] = n
    doc = merged(a, b)
    assert doc["outliers"][0]["text"].endswith("4,120 more rules")


# --- totals and provenance ----------------------------------------------------------------------

def test_totals_are_packet_weighted_and_keep_provenance():
    a, b = node_doc("a", 100), node_doc("b", 100)
    b["tree"]["packets"] = 300
    doc = merged(a, b)
    ra, rb = a["tree"], b["tree"]
    want = (ra["ns_per_packet"] * ra["packets"] + rb["ns_per_packet"] * rb["packets"]) / (ra["packets"] + rb["packets"])
    assert doc["totals"]["ns_per_packet"] == pytest.approx(want)
    assert doc["totals"]["packets"] == ra["packets"] + rb["packets"]
    assert doc["totals"]["provenance"] == ra["provenance"]
    assert doc["totals"]["nodes"] == 2


def test_measured_and_modelled_figures_keep_their_source_provenance():
    r0, modelled = real(0), node_doc("m", 0)
    doc = merged(r0, modelled, names=["real", "model"])
    table = next(f for f in doc["figures"] if f["kind"] == "table" and f["nodes"].get("real")
                 and not f["nodes"]["real"]["absent"])
    src = r0["tree"]["children"][0]["children"][0]
    assert table["nodes"]["real"]["provenance"] == src["provenance"] == "both"
    assert table["nodes"]["real"]["basis"] == src.get("basis")
    chain = next(f for f in doc["figures"] if f["kind"] == "chain" and "real" in f["nodes"]
                 and not f["nodes"]["real"]["absent"])
    assert "apportioned" in chain["nodes"]["real"]["basis"]
    mchain = next(f for f in doc["figures"] if f["kind"] == "chain" and "model" in f["nodes"]
                  and not f["nodes"]["model"]["absent"])
    assert mchain["nodes"]["model"]["provenance"] == "modelled"
    stage = next(f for f in doc["figures"] if f["key"] == ["stage", "netfilter"])
    assert stage["total"]["provenance"] == "mixed"
    assert {n["name"]: n["provenance"] for n in doc["nodes"]} == {"real": "measured", "model": "measured"}


def test_family_folds_per_workload_names():
    assert M.family("cali-fw-cali7f97efb4212") == "cali-fw-*"
    assert M.family("cali-pi-_Dj3yXQippYtT5UV_zE5") == "cali-pi-*"
    assert M.family("KUBE-SEP-ABCDEFGHIJKLMNOP") == "KUBE-SEP-*"
    for keep in ("FORWARD", "cali-FORWARD", "cali-pro-kns.default", "ingress-p0", "WEAVE-NPC-INGRESS",
                 "cil_from_container"):
        assert M.family(keep) == keep


def test_per_workload_chains_of_two_nodes_compare_as_one_family():
    a, b = node_doc("a", 10), node_doc("b", 1000)
    for d, suffix in ((a, "_Dj3yXQippYtT5UV_zE5"), (b, "Xk29aPq0LmZz")):
        for _, n in _walk(d["tree"]):
            if n["name"] == "cali-pi-allow":
                n["name"] = f"cali-pi-{suffix}"
    doc = merged(a, b)
    (o,) = doc["outliers"]
    assert o["family"] == "cali-pi-*" and o["name"] == "cali-pi-Xk29aPq0LmZz"


def _walk(n, depth=0):
    yield depth, n
    for c in n["children"]:
        yield from _walk(c, depth + 1)


# --- names and bad input ------------------------------------------------------------------------

def test_node_names_agent_then_host_then_lab():
    d = make_doc(10)
    assert M.node_name(d) == "node1"
    d["lab"] = {"spec": {"name": "mrgA"}}
    assert M.node_name(d) == "node1/mrgA"
    d["agent"] = {"node": "worker-3", "window": 4}
    assert M.node_name(d) == "worker-3/mrgA"


@pytest.mark.parametrize("inputs,msg", [
    ([("a.json", None, make_doc(10))], "at least two"),
    ([("a.json", None, make_doc(10)), ("b.json", None, make_doc(20))], "duplicate node name 'node1'"),
    ([("a.json", None, make_doc(10)), ("b.json", None, {"kind": "sweep"})], "b.json: not a cnitrace profile"),
])
def test_bad_inputs_raise_one_line(inputs, msg):
    with pytest.raises(UsageError) as e:
        M.merge(inputs)
    assert msg in e.value.message and "\n" not in e.value.message


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


@pytest.mark.parametrize("files,msg", [
    ([("a.json", "not json")], "at least two"),
    ([("a.json", "not json"), ("b.json", node_doc("b", 1))], "a.json: not JSON"),
    ([("a.json", node_doc("a", 1)), ("b.json", {"kind": "profile"})], "not a valid cnitrace profile document"),
    ([("a.json", node_doc("x", 1)), ("b.json", node_doc("x", 5))], "duplicate node name 'x'"),
])
def test_merge_command_bad_input_is_one_line_and_nonzero(tmp_path, capsys, files, msg):
    from cnitrace import cli

    paths = [_write(tmp_path, n, c) for n, c in files]
    rc = cli.main(["merge", *paths])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_merge_command_renders_and_writes(tmp_path, capsys):
    from cnitrace import cli

    a = _write(tmp_path, "a.json", node_doc("a", 0))
    b = _write(tmp_path, "b.json", node_doc("b", 1000))
    c = _write(tmp_path, "c.json", node_doc("a", 0))
    out, html = tmp_path / "m.json", tmp_path / "m.html"
    assert cli.main(["merge", a, b, f"other={c}", "--json", str(out), "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert "node b: chain cali-pi-allow (filter)" in text and "outliers" in text
    doc = json.loads(out.read_text())
    assert validate_cluster(doc) == [] and [n["name"] for n in doc["nodes"]] == ["a", "b", "other"]
    page = html.read_text()
    assert 'id="node-chart"' in page and "node b: chain cali-pi-allow" in page and "<script" not in page
    assert cli.main(["merge", a, b, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "cluster"


def test_terminal_fits_100_columns_and_marks_sources():
    buf = io.StringIO()
    render_cluster(merged(real(0), real(1000), real(5000), names=["r0", "r1000", "r5000"]),
                   Console(file=buf, width=100, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.startswith("node r5000:") and "(a)" in text and "measured = timed by a probe" in text


def test_html_escapes_node_names():
    doc = merged(node_doc("<b>x</b>", 0), node_doc("y", 1000))
    page = render_cluster_html(doc)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


# --- the rule, fuzzed ---------------------------------------------------------------------------

values = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3),
                         st.floats(0, 1e7, allow_nan=False, allow_infinity=False), min_size=2, max_size=9)


@settings(max_examples=300, deadline=None)
@given(values, st.floats(0, 1e5, allow_nan=False))
def test_flagged_obeys_its_rule(vals, floor):
    out = M.flagged(vals, floor)
    for node, s in out.items():
        others = [v for n, v in vals.items() if n != node]
        med = M.median(others)
        assert s["median"] == med and s["excess"] >= floor
        assert s["ratio"] >= M.MIN_RATIO
        assert math.isinf(s["ratio"]) or s["ratio"] == pytest.approx(vals[node] / med)
    if len(set(vals.values())) == 1:
        assert out == {}


@settings(max_examples=200, deadline=None)
@given(st.floats(1e3, 1e6), st.lists(st.floats(0.0, 0.1), min_size=2, max_size=8), st.floats(2.5, 50.0))
def test_one_far_node_among_close_ones_is_named(base, spread, factor):
    vals = {f"n{i}": base * (1 + d) for i, d in enumerate(spread)}
    vals["far"] = max(vals.values()) * factor
    assert set(M.flagged(vals, M.MIN_EXCESS_NS)) == {"far"}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_merge_is_order_independent_and_valid(rules, rnd):
    docs = [(f"{i}.json", f"n{i}", node_doc(f"n{i}", r)) for i, r in enumerate(rules)]
    a = M.merge(docs)
    shuffled = copy.deepcopy(docs)
    rnd.shuffle(shuffled)
    b = M.merge(shuffled)
    assert validate_cluster(json.loads(json.dumps(a))) == []
    assert sorted(o["text"] for o in a["outliers"]) == sorted(o["text"] for o in b["outliers"])
    assert a["totals"]["packets"] == sum(d["tree"]["packets"] for _, _, d in docs)
    for o in a["outliers"]:
        if o["kind"] != "conntrack":
            assert o["text"].startswith(f"node {o['node']}: ")
            assert o["excess_ns"] >= a["rule"]["min_excess_ns"]

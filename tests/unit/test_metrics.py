"""Profile document -> Prometheus exposition (reports/metrics.py), parsed back with prometheus_client's
own parser; the cardinality cap; the Grafana dashboard's expressions against the families emitted."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from cnitrace.reports import metrics as m
from cnitrace.reports.document import validate

FIXTURE = Path(__file__).parents[1] / "fixtures" / "agent" / "profile-calico-demo.json"
DASHBOARD = Path(m.__file__).parent / "cluster" / "grafana-dashboard.json"
MAPS = [{"id": 41, "name": "cali_v4_ct", "type": "hash", "max_entries": 512000, "entries": 1200, "pressure": 0.0023},
        {"id": 42, "name": "cali_v4_arp", "type": "lru_hash", "max_entries": 10000, "entries": None, "pressure": None}]


def load() -> dict:
    text = FIXTURE.read_text()
    assert text.startswith("# provenance:")
    doc = json.loads(text.split("\n", 1)[1])
    assert validate(doc) == []
    return doc


def parse(exporter: m.Exporter) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(m.exposition(exporter).decode())}


def samples(fam, suffix: str = "") -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == fam.name + suffix}


def walk(node: dict, stage: str = ""):
    stage = node["name"] if node["kind"] in ("stage", "root") else stage
    yield stage, node
    for c in node["children"]:
        yield from walk(c, stage)


def test_every_family_is_exposed_and_parsed():
    e = m.Exporter()
    e.add(load())
    fams = parse(e)
    assert set(m.family_names()) <= set(fams), set(m.family_names()) - set(fams)
    assert fams["cnitrace_stage_seconds"].type == "histogram"
    assert fams["cnitrace_windows"].type == "counter"
    assert fams["cnitrace_chain_rule_evaluations_per_packet"].type == "gauge"


def test_values_and_labels_follow_the_document():
    doc = load()
    e = m.Exporter()
    e.add(doc)
    fams = parse(e)
    hist = fams["cnitrace_stage_seconds"]
    sums, counts = samples(hist, "_sum"), samples(hist, "_count")
    checked = 0
    for stage, n in walk(doc["tree"]):
        if n["kind"] not in m.TREE_LEVELS or not n["packets"]:
            continue
        for prov, ns in (("measured", n.get("measured_ns")), ("modelled", n.get("modelled_ns"))):
            if ns is None:
                continue
            keys = [k for k in counts if dict(k)["name"] == n["name"] and dict(k)["level"] == n["kind"]
                    and dict(k)["provenance"] == prov and dict(k)["stage"] == stage]
            assert len(keys) == 1, (n["name"], prov, keys)
            assert counts[keys[0]] == n["packets"]
            assert math.isclose(sums[keys[0]] / counts[keys[0]], ns * 1e-9, rel_tol=1e-9)
            assert dict(keys[0])["backend"] == ("counters" if prov == "modelled" else dict(keys[0])["backend"])
            checked += 1
    assert checked > 10
    table = next(n for _, n in walk(doc["tree"]) if n["kind"] == "table")
    measured = [k for k in counts if dict(k)["name"] == table["name"] and dict(k)["provenance"] == "measured"]
    assert dict(measured[0])["backend"] == table["detail"]["backend"] == "nf_bpf"
    # Rule evaluations per packet: exactly the document's, per chain, with the rule backend.
    ev = samples(fams["cnitrace_chain_rule_evaluations_per_packet"])
    chains = [n for _, n in walk(doc["tree"]) if n["kind"] == "chain"]
    assert len(ev) == len(chains)
    for c in chains:
        key = (("backend", "iptables-legacy"), ("chain", c["name"]), ("table", c["detail"]["table"]))
        assert ev[key] == c["evaluations_per_packet"]
    pk = samples(fams["cnitrace_chain_packets"], "_total")
    assert sum(pk.values()) == sum(c["packets"] for c in chains)
    # Drops by reason and the deciding chain.
    drops = samples(fams["cnitrace_drops"], "_total")
    d = doc["drops"][0]
    assert drops[(("chain", "cali-tw-cali8912016a1e5"), ("location", ""), ("provenance", d["provenance"]),
                  ("reason", d["reason"]))] == d["count"]
    ct = doc["conntrack"]
    assert samples(fams["cnitrace_conntrack_entries"])[()] == ct["count"]
    assert samples(fams["cnitrace_conntrack_max_entries"])[()] == ct["max"]
    assert samples(fams["cnitrace_conntrack_fill_ratio"])[()] == ct["count"] / ct["max"]
    assert samples(fams["cnitrace_window_duration_seconds"])[()] == doc["duration_s"]
    assert samples(fams["cnitrace_window_packets"])[()] == doc["tree"]["packets"]
    assert samples(fams["cnitrace_windows"], "_total")[()] == 1
    assert samples(fams["cnitrace_lost_events"], "_total")[()] == doc["lost_events"]


def test_counters_and_histograms_accumulate_gauges_do_not():
    doc = load()
    doc["overhead"]["agent_cpu_s"] = 0.25
    e = m.Exporter()
    for _ in range(3):
        e.add(doc)
    fams = parse(e)
    assert samples(fams["cnitrace_windows"], "_total")[()] == 3
    assert math.isclose(samples(fams["cnitrace_overhead_seconds"], "_total")[()], 0.75)
    root = [v for k, v in samples(fams["cnitrace_stage_seconds"], "_count").items() if dict(k)["level"] == "root"]
    assert root == [3 * doc["tree"]["packets"]]
    assert samples(fams["cnitrace_conntrack_entries"])[()] == doc["conntrack"]["count"]
    # Buckets are cumulative and end at the count.
    hist = fams["cnitrace_stage_seconds"]
    by_series: dict[tuple, list[float]] = {}
    for s in hist.samples:
        if s.name.endswith("_bucket"):
            by_series.setdefault(tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")), []).append(s.value)
    counts = samples(hist, "_count")
    for key, vals in by_series.items():
        assert vals == sorted(vals) and vals[-1] == counts[key]


def test_map_pressure_where_entries_are_known():
    doc = load()
    doc["maps"] = MAPS
    e = m.Exporter()
    e.add(doc)
    fams = parse(e)
    assert samples(fams["cnitrace_bpf_map_entries"]) == {(("map_name", "cali_v4_ct"), ("type", "hash")): 1200}
    assert len(samples(fams["cnitrace_bpf_map_max_entries"])) == 2
    assert samples(fams["cnitrace_bpf_map_pressure"]) == {(("map_name", "cali_v4_ct"), ("type", "hash")): 1200 / 512000}


def test_label_cap_folds_the_rest_into_other_and_conserves_totals():
    doc = load()
    chains = [n for _, n in walk(doc["tree"]) if n["kind"] == "chain"]
    e = m.Exporter(label_cap=3)
    e.add(doc)
    fams = parse(e)
    pk = samples(fams["cnitrace_chain_packets"], "_total")
    assert len(pk) == 4                                   # three chains by name, the rest under "other"
    assert sum(pk.values()) == sum(c["packets"] for c in chains)
    kept = {dict(k)["chain"] for k in pk}
    assert m.OTHER in kept
    costly = sorted(chains, key=lambda c: -c["packets"] * c["evaluations_per_packet"])[:3]
    assert {c["name"] for c in costly} == kept - {m.OTHER}   # the chains that cost most keep their names
    # The datapath's structure (root, stages, tables) is never folded away, whatever the cap.
    levels = {(dict(k)["level"], dict(k)["name"]) for k in samples(fams["cnitrace_stage_seconds"], "_count")}
    structure = {(n["kind"], n["name"]) for _, n in walk(doc["tree"]) if n["kind"] in m.PINNED_LEVELS}
    assert structure <= levels
    ev = samples(fams["cnitrace_chain_rule_evaluations_per_packet"])
    other = [v for k, v in ev.items() if dict(k)["chain"] == m.OTHER][0]
    rest = [c for c in chains if c["name"] not in kept]
    expect = sum(c["evaluations_per_packet"] * c["packets"] for c in rest) / sum(c["packets"] for c in rest)
    assert math.isclose(other, expect)                   # packet-weighted, as the chains' own figures are
    for fam in fams.values():
        names = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in fam.samples
                 if s.labels.get("level") not in m.PINNED_LEVELS}
        assert len(names) <= 3 + 2, fam.name             # cap + the `other` fold per dimension combination


def test_admission_is_bounded_and_lets_new_series_in():
    a = m.Admission(2)
    assert a.admit("f", [("a",), ("b",), ("c",)]) == ({("a",), ("b",)}, set())
    admitted, evicted = a.admit("f", [("c",), ("a",)])   # b is gone: c takes its place
    assert admitted == {("a",), ("c",)} and evicted == {("b",)}
    for i in range(1000):
        a.admit("f", [(str(i),)])
    assert len(a.keys["f"]) == 2


def test_soak_state_is_bounded():
    """Many windows, each with new chain names: the exporter's series stay under the cap."""
    doc = load()
    e = m.Exporter(label_cap=5)
    for i in range(200):
        d = copy.deepcopy(doc)
        for _, n in walk(d["tree"]):
            if n["kind"] == "chain":
                n["name"] = f"{n['name']}-{i}"
        e.add(d)
    assert e.series() < 5 * 20
    assert samples(parse(e)["cnitrace_windows"], "_total")[()] == 200


def test_pod_labels_name_the_pod_behind_the_chain():
    doc = load()
    e = m.Exporter(pod_labels=True)
    e.add(doc)
    ev = {dict(k)["chain"]: dict(k) for k in samples(parse(e)["cnitrace_chain_rule_evaluations_per_packet"])}
    iface = doc["selection"]["interfaces"][0]
    assert ev[f"cali-tw-{iface['name']}"]["pod"] == iface["pod"]
    assert ev["cali-pro-kns.default"]["namespace"] == "default"
    assert ev["FORWARD"]["pod"] == "" and ev["FORWARD"]["namespace"] == ""
    plain = m.Exporter()
    plain.add(doc)
    assert all("pod" not in s.labels for f in parse(plain).values() for s in f.samples)


LABEL_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(LABEL_TEXT, min_size=1, max_size=8, unique=True), reason=LABEL_TEXT)
def test_any_label_value_round_trips(names, reason):
    doc = load()
    chains = [n for _, n in walk(doc["tree"]) if n["kind"] == "chain"]
    for c, name in zip(chains, names):
        c["name"] = name
    doc["drops"] = [{"reason": reason, "count": 3, "where": f"{names[0]}#2 (filter, -j DROP)", "provenance": "both"}]
    e = m.Exporter(pod_labels=True, label_cap=100)
    e.add(doc)
    fams = parse(e)
    got = {dict(k)["chain"] for k in samples(fams["cnitrace_chain_rule_evaluations_per_packet"])}
    assert set(names[:len(chains)]) <= got
    drops = samples(fams["cnitrace_drops"], "_total")
    assert [dict(k)["reason"] for k in drops] == [reason] and list(drops.values()) == [3]


# --- the Grafana dashboard -----------------------------------------------------------------------

def exposed_sample_names() -> set[str]:
    doc = load()
    doc["maps"] = MAPS
    e = m.Exporter()
    e.add(doc)
    return {s.name for f in parse(e).values() for s in f.samples} | {f"{n}_bucket" for n in m.family_names()}


def test_dashboard_is_a_grafana_dashboard_plotting_our_families():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["uid"] and dash["title"]
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "instance"}
    names = exposed_sample_names()
    plotted: set[str] = set()
    ids = set()
    for p in dash["panels"]:
        assert p["id"] not in ids and set(p["gridPos"]) == {"h", "w", "x", "y"} and p["type"] and p["title"]
        ids.add(p["id"])
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            used = set(re.findall(r"\b(cnitrace_[a-z0-9_]+)", t["expr"]))
            assert used and used <= names, (p["title"], used - names)
            plotted |= used
    fams = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in plotted}
    missing = {f.removesuffix("_total") for f in (s.name for s in m.SPECS)} - fams
    assert not missing, f"families no panel plots: {missing}"

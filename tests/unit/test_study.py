"""The study's pure side: the plan, the figures file, shape comparison, attribution wording, and the
document built from sweep-shaped points (validated against its schema, rendered)."""

from __future__ import annotations

import copy
import io
import json
import re

import pytest
from hypothesis import given, strategies as st
from rich.console import Console

from cnitrace.core.errors import UsageError
from cnitrace.reports.study.html import render_study_html
from cnitrace.reports.study.schema import validate as validate_doc
from cnitrace.reports.study.terminal import render_study
from cnitrace.study import attribution as attr
from cnitrace.study import figures as fig_mod
from cnitrace.study.compare import FLAT_PCT, compare_change, compare_occurs, compare_ratio, fmt_pct, pct_change, \
    study_pct
from cnitrace.study.plan import CLIENTS, FAMILIES, SCALE, STUDY_PODS, make_plan
from cnitrace.study.run import make_config, document
from cnitrace.sweep.model import POLICY_STAGE


# --- plan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quick", [True, False])
def test_plan_covers_every_family_and_orders_baselines_first(quick):
    plan = make_plan(quick=quick)
    assert plan.families == FAMILIES
    assert {c.family for c in plan.cells} == set(FAMILIES)
    ids = [p.id for p in plan.points]
    assert len(ids) == len(set(ids)), "a shared point is measured once"
    pos = {pid: i for i, pid in enumerate(ids)}
    for p in plan.points:
        s = p.spec
        base = f"{s.datapath}/r0/c1/intra"
        if base in pos:
            assert pos[base] <= pos[p.id], f"{p.id} before its N = 0 baseline"
        if s.l7:
            assert pos[f"{s.datapath}/r{s.rules}/c{s.clients}/intra"] < pos[p.id]
        if s.placement == "inter":
            assert pos[f"{s.datapath}/r{s.rules}/c{s.clients}/intra"] < pos[p.id]
    for c in plan.cells:
        assert c.point in pos


def test_quick_plan_is_a_subset_with_its_scaling_stated():
    quick, full = make_plan(quick=True), make_plan(quick=False)
    assert {p.id for p in quick.points} < {p.id for p in full.points}
    assert len(quick.points) <= 40            # ≈ 8 s a point: well under 15 minutes
    assert any(line.startswith("complexity:") and "not run" in line for line in quick.scaled)
    assert any("stand-in" in line for line in quick.scaled)
    l7 = [p for p in quick.points if p.spec.l7]
    assert {p.spec.datapath for p in l7} == {"cilium", "antrea"}
    # the L7 twins and their L3/L4 baselines carry ab load; policy-on points a profile attribution
    assert all(p.http for p in quick.points if p.spec.datapath in ("cilium", "antrea") and p.spec.rules == 0)
    assert all(p.attribute for p in quick.points if p.spec.rules == 100 and p.spec.clients == 1
               and p.spec.placement == "intra")


def test_concurrency_scaled_by_the_stated_factor():
    assert tuple(p // SCALE for p in STUDY_PODS) == CLIENTS
    plan = make_plan(quick=False, families=["concurrency"])
    assert {c.x for c in plan.cells} == {1.0, *map(float, CLIENTS)}


def test_plan_filters_and_rejects_unknown():
    plan = make_plan(quick=True, families=["policy"], datapaths=["calico"])
    assert [p.id for p in plan.points] == ["calico/r0/c1/intra", "calico/r100/c1/intra"]
    with pytest.raises(UsageError, match="unknown family"):
        make_plan(quick=True, families=["precedence!"])
    with pytest.raises(UsageError, match="unknown datapath"):
        make_config(quick=True, datapaths="calico,bogus")


# --- figures file ----------------------------------------------------------------------------------

def _raw() -> dict:
    from importlib import resources
    return json.loads(resources.files("cnitrace.study").joinpath("figures.json").read_text("utf-8"))


def test_packaged_figures_validate_with_the_design_numbers():
    f = fig_mod.load()
    assert f.citation["venue"] == "IEEE Access"
    assert {k: f.citation[k] for k in ("title", "authors", "year")} == dict.fromkeys(("title", "authors", "year"),
                                                                                      "not given")
    assert f.get("l7-cilium").shape["from_value"] == 6800 and f.get("l7-cilium").shape["to_value"] == 94
    assert f.get("l7-cilium").shape["pct"] == pytest.approx(100 * (94 - 6800) / 6800, abs=0.05)
    assert f.get("complexity-antrea").shape["pct"] == -58 and f.get("complexity-antrea").note
    assert f.get("complexity-weave").metric == "rtt_p50_us"
    assert not f.get("placement-all").given, "DESIGN.md has no inter-node number: recorded as not given"
    for fam in FAMILIES:
        assert f.of(fam), fam


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["citation"].pop("year"), "missing 'year'"),
    (lambda d: d["citation"].update(title=" "), "empty"),
    (lambda d: d["families"].pop("l7"), "families missing: l7"),
    (lambda d: d["families"]["l7"]["figures"][0]["shape"].update(kind="guess"), "shape kind"),
    (lambda d: d["families"]["l7"]["figures"][0]["shape"].update(pct=-20), "add a note"),
    (lambda d: d["families"]["l7"]["figures"].append(copy.deepcopy(d["families"]["l7"]["figures"][0])), "duplicate id"),
    (lambda d: d["families"]["placement"]["figures"][0]["shape"].pop("why"), "missing 'why'"),
    (lambda d: d["families"]["complexity"]["figures"][0]["shape"].pop("pct"), "needs pct, or low <= high"),
    (lambda d: d.update(kind="other"), "not a cnitrace-study-figures"),
])
def test_malformed_figures_give_one_line(mutate, message):
    d = _raw()
    mutate(d)
    with pytest.raises(UsageError, match=re.escape(message)):
        fig_mod.validate(d)


def test_figures_not_json():
    with pytest.raises(UsageError, match="not JSON"):
        fig_mod.load("{")


# --- shapes ----------------------------------------------------------------------------------------

def test_compare_change_examples():
    assert compare_change(-98.6, -97.0)["agrees"] is True
    assert compare_change(-98.6, -5.5)["order"] is False        # same way, 18× smaller
    assert compare_change(-58, +30)["sign"] is False
    assert compare_change(-2.2, 1.0)["agrees"] is True           # both flat
    assert compare_change(245, 1.0)["agrees"] is False
    assert compare_change(None, -3.0)["agrees"] is None
    assert compare_change(-30, None)["verdict"].endswith("not measured here")
    assert study_pct({"kind": "relative_change", "low": -70, "high": -60}) == -65
    assert compare_ratio({"kind": "ratio", "low": 1.23, "high": 1.43}, 1.3)["agrees"] is True
    assert compare_ratio({"kind": "ratio", "low": 1.23, "high": 1.43}, 0.5)["agrees"] is False
    assert compare_occurs({"kind": "occurs", "what": "failures"}, 0)["agrees"] is False
    assert compare_occurs({"kind": "occurs", "what": "failures"}, 3)["agrees"] is True
    assert fmt_pct(-98.63) == "−98.6 %" and fmt_pct(245) == "+245 %" and fmt_pct(None) == "—"


pcts = st.floats(-99.9, 1000, allow_nan=False)


@given(pcts, pcts)
def test_compare_change_properties(a, b):
    r = compare_change(a, b)
    assert r == compare_change(a, b)
    assert r["agrees"] in (True, False)
    if r["agrees"]:
        assert r["sign"]
        assert (abs(a) < FLAT_PCT) == (abs(b) < FLAT_PCT)
    if abs(a) >= FLAT_PCT and abs(b) >= FLAT_PCT and (a > 0) != (b > 0):
        assert r["agrees"] is False
    assert compare_change(a, a)["agrees"] is True


@given(st.floats(0.01, 1e6), st.floats(0.01, 1e6))
def test_pct_change_inverts(before, after):
    p = pct_change(before, after)
    assert before * (1 + p / 100) == pytest.approx(after, rel=1e-6, abs=1e-9 * before)


# --- attribution wording ---------------------------------------------------------------------------

def point(dp, rules=0, clients=1, l7=False, placement="intra", *, tp=10.0, rtt=20.0, rps=None, new_flow=7000.0,
          stages=None, status="ok", ct=None, failures=0, proxy=None, no_policy=False, chains=None, attribution=None):
    spec = {"datapath": dp, "rules": rules, "clients": clients, "l7": l7, "placement": placement,
            "id": f"{dp}/r{rules}/c{clients}{'/l7' if l7 else ''}/{placement}"}
    if status != "ok":
        return {"spec": spec, "status": status, "error": "lab up failed: boom", "seconds": 1.0}
    metrics = {"throughput_gbps": {"median": tp}, "rtt_p50_us": {"median": rtt}, "new_flow_ns": {"median": new_flow},
               "softirq_pct": {"median": 30.0}}
    if rps is not None:
        metrics["http_rps"] = {"median": rps}
    denied = {"note": "no policy (baseline datapath)", "passed": True} if no_policy else {"passed": True}
    out = {"spec": spec, "status": "ok", "metrics": metrics, "stages": stages or [],
           "semantics": {"passed": True, "checks": {"denied": denied}},
           "conntrack": ct or {"insert_failed": 0, "drop": 0, "early_drop": 0}, "connection_failures": failures,
           "model": {"chains": chains or {}}, "attribution": attribution, "seconds": 5.0}
    if proxy:
        out["proxy"] = proxy
    return out


def nf_stage(rules, per_eval=38.0, measured=None):
    evals = rules + 1
    return {"stage": "netfilter", "evaluations": evals, "modelled_ns": rules * per_eval + per_eval if rules else 0.0,
            "measured_ns": measured, "modelled_total_ns": 900.0 + evals * per_eval}


def test_policy_stage_names_rules_times_cost():
    p = point("calico", 1000, stages=[nf_stage(1000, measured=40000.0)],
              chains={"cali-pi-allow": 37000.0, "cali-fw": 50.0})
    s = attr.policy_stage(p, "netfilter", base_evals=1)
    assert s["name"] == "netfilter" and s["provenance"] == "modelled" and s["ns"] == 38038.0
    assert ("policy chain evaluations: 1,001 evaluations per NEW packet (N = 1,000 rules): 1,000 more than N = 0 "
            "× 38.0 ns = +38.0 µs (modelled: counters × per-shape calibration)") in s["text"]
    # without the N = 0 point, the calibrated port-rule cost is named beside the modelled figure
    s0 = attr.policy_stage(p, "netfilter", ns_per_eval=38.0)
    assert "× 38 ns (calibrated, port rule); +38.0 µs over N = 0" in s0["text"]
    assert "busiest chain cali-pi-allow" in s["text"] and "vs N = 0 (measured)" in s["text"]


def test_policy_stage_bpf_uses_profile_then_measured():
    prof = {"stages": [{"stage": "bpf", "ns_per_packet": 180.0, "provenance": "measured"}]}
    s = attr.policy_stage(point("cilium", 100, stages=[{"stage": "bpf", "evaluations": 1, "measured_ns": 30.0,
                                                         "modelled_ns": None}], attribution=prof), "bpf")
    assert s["text"].startswith("BPF program") and "1 lookup per NEW packet whatever N" in s["text"]
    assert s["ns"] == 180.0 and s["provenance"] == "measured (profile)"
    s2 = attr.policy_stage(point("cilium", 100, stages=[{"stage": "bpf", "evaluations": 1, "measured_ns": 30.0}]),
                           "bpf")
    assert s2["ns"] == 30.0 and s2["provenance"] == "measured"


def test_stage_wording_for_failures_no_policy_and_missing():
    assert attr.policy_stage(point("flannel", 100), "netfilter", has_policy=False)["name"] == "none (no policy)"
    miss = attr.policy_stage(point("weave", 100, status="failed"), "netfilter")
    assert "not measured (lab up failed: boom)" in miss["text"] and miss["ns"] is None
    ct = attr.concurrency_stage(point("calico", 100, 20, ct={"insert_failed": 3, "drop": 0}, failures=2), "netfilter")
    assert ct["name"] == "conntrack" and "insert_failed 3" in ct["text"] and ct["provenance"] == "measured"
    cpu = attr.concurrency_stage(point("calico", 100, 20, stages=[nf_stage(100)]), "netfilter")
    assert cpu["name"] == "cpu (softirq)" and "policy walk per NEW connection" in cpu["text"]


def test_l7_proxy_label_and_stage():
    real = attr.proxy_label("envoy", "cilium", "envoy")
    assert real == {"ran": "envoy", "study": "envoy", "stand_in": False, "label": "envoy"}
    stand = attr.proxy_label("nginx", "antrea", "suricata")
    assert stand["stand_in"] and stand["label"] == "nginx (stand-in for Suricata)"
    s = attr.l7_stage(point("antrea", 0, l7=True, stages=[{"stage": "l7-proxy", "measured_ns": 2.5e6}]), stand)
    assert "L7 proxy detour (nginx (stand-in for Suricata)): +2.50 ms per request" in s["text"]
    assert s["unit"] == "ns/request"


# --- the document ----------------------------------------------------------------------------------

def fake_points(plan):
    """Sweep-shaped points for every planned point, with study-like shapes (pure fixtures)."""
    out = {}
    for pp in plan.points:
        s = pp.spec
        stage = POLICY_STAGE.get(s.datapath, "netfilter")
        tp = 10.0 - (s.rules / 1000) * (5 if s.datapath == "antrea" else 0.1) - (s.clients / 20) * 3
        rtt = 20.0 * (1 + (2.4 * s.rules / 1000 if s.datapath == "weave" else 0))
        stages = [nf_stage(s.rules, measured=s.rules * 40.0) if stage == "netfilter" else
                  {"stage": stage, "evaluations": 1, "measured_ns": 10.0, "modelled_ns": None}]
        if s.placement == "inter":
            stages.append({"stage": "vxlan", "measured_ns": 1500.0})
        if s.l7:
            stages.append({"stage": "l7-proxy", "measured_ns": 2e6})
        rps = (90.0 if s.datapath == "cilium" else 6000.0) if s.l7 else (6500.0 if pp.http else None)
        out[s.id] = point(s.datapath, s.rules, s.clients, s.l7, s.placement, tp=tp, rtt=rtt, rps=rps,
                          stages=stages, no_policy=s.datapath == "flannel",
                          proxy=("envoy" if s.datapath == "cilium" else "nginx") if s.l7 else None,
                          ct={"insert_failed": 2 if s.clients == 20 else 0})
    return out


def make_doc(quick=True, drop=(), interrupted=False):
    cfg = make_config(quick=quick)
    pts = fake_points(cfg.plan)
    for k in drop:
        pts.pop(k)
    return document(cfg, pts, fig_mod.load(), started=0.0, finished=300.0, interrupted=interrupted,
                    calibration={}, host={"kernel": "k", "cpu": "c", "cores": 2})


def test_document_rows_every_family_stage_and_provenance():
    doc = make_doc()
    assert validate_doc(doc) == []
    fams = {r["family"] for r in doc["rows"]}
    assert fams == set(FAMILIES)
    for r in doc["rows"]:
        assert r["stage"]["name"] and r["stage"]["text"]
        assert r["measured"]["provenance"] == "measured"
        assert all(s["provenance"] == "measured" for s in r["measured"]["series"])
    by = {(r["family"], r["cni"]): r for r in doc["rows"]}
    cil = next(r for r in doc["rows"] if r["family"] == "l7" and r["datapath"] == "cilium")
    assert cil["here"]["text"] == "Cilium RPS: study −98.6 %, here −98.6 %"
    assert cil["agreement"]["agrees"] is True and cil["proxy"]["stand_in"] is False
    ant = next(r for r in doc["rows"] if r["family"] == "l7" and r["datapath"] == "antrea")
    assert ant["proxy"]["stand_in"] and "stand-in for Suricata" in ant["cni"]
    weave = next(r for r in doc["rows"] if r["family"] == "complexity" and r["datapath"] == "weave")
    assert weave["metric"] == "rtt_p50_us" and weave["agreement"]["agrees"] is True
    assert "N = 1,000 rules" in next(r for r in doc["rows"] if r["family"] == "complexity"
                             and r["datapath"] == "calico")["stage"]["text"]
    conc = next(r for r in doc["rows"] if r["family"] == "concurrency" and r["datapath"] == "calico")
    assert conc["also"]["agreement"]["agrees"] is True and conc["stage"]["name"] == "conntrack"
    assert ("policy", "Cilium vs others") in by
    assert doc["summary"]["rows"] == len(doc["rows"])


def test_partial_document_marks_missing_points():
    doc = make_doc(drop=("cilium/r0/c1/l7/intra",), interrupted=True)
    assert validate_doc(doc) == [] and doc["interrupted"] and not doc["complete"]
    cil = next(r for r in doc["rows"] if r["family"] == "l7" and r["datapath"] == "cilium")
    assert cil["measured"]["to"]["value"] is None and cil["agreement"]["agrees"] is None
    assert "not measured" in cil["stage"]["text"]


def test_renderers_show_every_family():
    doc = make_doc()
    buf = io.StringIO()
    render_study(doc, Console(file=buf, width=100))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    for fam in doc["families"]:
        assert fam["title"] in text
    flat = " ".join(text.split())
    assert "−98.6 %" in flat and "scaled down" in flat and "L7 HTTP policy off vs on" in flat
    page = render_study_html(doc)
    for f in FAMILIES:
        assert f'id="family-{f}"' in page
    assert "<script" not in page and "stand-in for Suricata" in page


def test_cli_registers_study_and_rejects_bad_options(capsys):
    from cnitrace.cli import main
    from cnitrace.core.errors import ExitStatus

    assert main(["study", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--json" in out and "--html" in out and "--families" not in out   # hidden
    assert main(["study", "--quick", "--families", "policy,bogus"]) == ExitStatus.USAGE
    assert "unknown family 'bogus'" in capsys.readouterr().err


# --- orchestration (the lab and the measurement replaced) -----------------------------------------

class _Lab:
    def __init__(self, spec):
        self.spec = spec
        kind = "envoy" if spec.datapath == "cilium" else spec.l7_proxy
        self.topo = type("T", (), {"extra": {"l7": {"kind": kind}} if spec.l7 else {}})()


@pytest.fixture
def fake_lab(monkeypatch):
    import contextlib

    from cnitrace.study import run as study_run

    calls = {"up": [], "down": [], "measure": []}
    monkeypatch.setattr(study_run, "Session", lambda *a, **k: contextlib.nullcontext())

    def up(spec, runner, temporary):
        assert temporary, spec        # the study's labs go with the run, also after a kill
        calls["up"].append(spec)
        return _Lab(spec)

    monkeypatch.setattr(study_run.sweep_run.manager, "up", up)
    monkeypatch.setattr(study_run.sweep_run.overlay, "attach", lambda lab, runner: lab)
    monkeypatch.setattr(study_run.sweep_run, "_down", lambda name, runner: calls["down"].append(name) or None)
    monkeypatch.setattr(study_run.sweep_run, "calibration", lambda cfg, dp, runner: None)
    pts = fake_points(make_plan(quick=True))

    def measure(ps, cfg, lab, base, ns_per_eval, runner, cal):
        calls["measure"].append((ps.id, cfg.l7, cfg.attribute))
        if calls.get("interrupt_at") == len(calls["measure"]):
            raise KeyboardInterrupt
        p = dict(pts[ps.id])
        p.pop("proxy", None)
        return p

    monkeypatch.setattr(study_run.sweep_run, "measure_point", measure)
    return study_run, calls


def test_run_measures_each_point_once_records_the_proxy_and_removes_every_lab(fake_lab):
    study_run, calls = fake_lab
    cfg = make_config(quick=True)
    doc = study_run.run(cfg)
    assert doc["complete"] and validate_doc(doc) == []
    assert [m[0] for m in calls["measure"]] == [p.id for p in cfg.plan.points]
    assert len(calls["down"]) == len(calls["up"]) == len(cfg.plan.points)
    assert {m[0] for m in calls["measure"] if m[1]} == {"cilium/r0/c1/intra", "cilium/r0/c1/l7/intra",
                                                       "antrea/r0/c1/intra", "antrea/r0/c1/l7/intra"}
    l7 = {r["datapath"]: r["proxy"] for r in doc["rows"] if r["family"] == "l7"}
    assert l7["cilium"]["ran"] == "envoy" and not l7["cilium"]["stand_in"]
    assert l7["antrea"]["ran"] == "nginx" and l7["antrea"]["stand_in"]


def test_ctrl_c_gives_a_partial_document_and_still_removes_the_lab(fake_lab):
    study_run, calls = fake_lab
    calls["interrupt_at"] = 3
    doc = study_run.run(make_config(quick=True))
    assert doc["interrupted"] and not doc["complete"] and doc["points_done"] == 2
    assert len(calls["down"]) == 3, "the interrupted point's lab is removed too"
    assert validate_doc(doc) == []
    assert {r["family"] for r in doc["rows"]} == set(FAMILIES)    # every family, marked not measured

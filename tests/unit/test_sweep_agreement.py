"""The sweep's modelled policy cost (counters priced by rule shape, minus the N = 0 point) and its
agreement with the measured slopes (NEW-flow timing and transit), on recorded-shaped points."""

from __future__ import annotations

import pytest

from cnitrace.sweep.model import PointSpec, agreement, agreement_lines, build_curves, ns_per_eval, policy_stages


def test_modelled_policy_is_the_difference_from_the_baseline_point():
    ps = PointSpec("calico", 1000, 1, False, "intra")
    [st] = policy_stages(ps, 60_000.0, 7_000.0, 2004, 80.0, modelled_ns=51_000.0, modelled_baseline_ns=1_000.0,
                         transit_ns=57_000.0, transit_baseline_ns=4_000.0)
    assert st["modelled_ns"] == 50_000.0 and st["measured_ns"] == 53_000.0
    assert st["measured_transit_ns"] == 53_000.0
    assert st["model_vs_measured"] == pytest.approx(50 / 53) and st["model_vs_transit"] == pytest.approx(50 / 53)
    assert st["modelled_total_ns"] == 51_000.0 and "per-shape" in st["modelled_basis"]


def test_without_counters_the_old_model_stays():
    [st] = policy_stages(PointSpec("calico", 1000, 1, False, "intra"), 110_000.0, 7_000.0, 2004, 50.0)
    assert st["modelled_ns"] == 100_200.0 and "ground-truth" in st["modelled_basis"]


def point(dp: str, rules: int, new_flow: float, modelled_total: float, transit_total: float | None,
          base: tuple[float, float, float | None]) -> dict:
    ps = PointSpec(dp, rules, 1, False, "intra")
    stages = policy_stages(ps, new_flow, base[0], 2 * rules + 4, None, modelled_ns=modelled_total,
                           modelled_baseline_ns=base[1], transit_ns=transit_total, transit_baseline_ns=base[2])
    return {"spec": ps.to_json(), "status": "ok", "stages": stages, "evaluations": 2 * rules + 4,
            "metrics": {"new_flow_ns": {"median": new_flow}}}


@pytest.mark.parametrize("dp,slope_meas,slope_model,slope_transit,agrees", [
    ("calico", 52.5, 50.6, 52.9, True),
    ("kube-router", 12.8, 10.4, 11.2, True),
    ("calico", 53.9, 173.2, 52.0, False),        # the old model: 3.2x
    ("kube-router", 12.8, 8.0, 11.2, False),     # 0.63x
])
def test_agreement_of_slopes(dp, slope_meas, slope_model, slope_transit, agrees):
    base = (7000.0, 1300.0, 3900.0)
    done = [point(dp, r, base[0] + slope_meas * r, base[1] + slope_model * r, base[2] + slope_transit * r, base)
            for r in (0, 100, 1000)]
    curves = build_curves(done)
    per = ns_per_eval(curves, done)
    a = agreement(per, curves, done)[dp]
    assert a["modelled_ns_per_rule"] == pytest.approx(slope_model)
    assert a["model_vs_new_flow"] == pytest.approx(slope_model / slope_meas)
    assert a["model_vs_transit"] == pytest.approx(slope_model / slope_transit)
    assert a["agrees_new_flow"] is agrees
    line = agreement_lines({dp: a})[0]
    assert dp in line and ("outside" in line) is (not agrees)


def test_flat_datapaths_agree_when_both_slopes_are_within_noise():
    base = (6600.0, 67.0, 2800.0)
    done = [point("nft", 0, 6600.0, 67.0, 2800.0, base), point("nft", 1000, 8200.0, 67.0, 2500.0, base)]
    curves = build_curves(done)
    a = agreement(ns_per_eval(curves, done), curves, done)["nft"]
    assert a["flat_new_flow"] and a["agrees_new_flow"] and a["agrees_transit"]
    assert "both flat" in agreement_lines({"nft": a})[0]
    # a modelled slope that grows where the measured one is flat does not agree
    done = [point("nft", 0, 6600.0, 67.0, 2800.0, base), point("nft", 1000, 6700.0, 30_067.0, 2850.0, base)]
    curves = build_curves(done)
    assert not agreement(ns_per_eval(curves, done), curves, done)["nft"]["agrees_new_flow"]


def test_backend_option_reaches_the_config():
    from cnitrace.sweep.model import make_config
    assert make_config(datapaths="calico").backend == "legacy"
    assert make_config(datapaths="calico", backend="nft").backend == "nft"
    assert make_config(datapaths="calico", backend="nft").to_json()["backend"] == "nft"


def test_agreement_lines_say_which_number_is_which():
    a = {"modelled_ns_per_rule": 50.6, "measured_ns_per_rule": 52.5, "transit_ns_per_rule": 51.0,
         "model_vs_new_flow": 50.6 / 52.5, "agrees_new_flow": True, "model_vs_transit": 50.6 / 51.0,
         "agrees_transit": True}
    [line] = agreement_lines({"calico": a})
    assert line == "calico: policy slope modelled 50.6 ns per rule; measured NEW-flow 52.5 (0.96x), transit 51.0 (0.99x)"


def test_reports_show_the_agreement_apart_from_the_measured_headline():
    import io

    from rich.console import Console

    from cnitrace.reports.sweep.html import render_sweep_html
    from cnitrace.reports.sweep.terminal import render_sweep
    from cnitrace.sweep.model import SweepConfig, document
    base = (7000.0, 1300.0, 3900.0)
    done = [point("kube-router", r, base[0] + 12.8 * r, base[1] + 8.0 * r, base[2] + 11.2 * r, base)
            for r in (0, 100, 1000)]
    doc = document(SweepConfig(datapaths=("kube-router",), rules=(0, 100, 1000)), done, started=0.0, finished=1.0,
                   interrupted=False, calibration=None, host={"kernel": "k", "cpu": "c", "cores": 2}, total_points=3)
    page = render_sweep_html(doc)
    agree = page[page.index('<ul id="agreement">'):]
    agree = agree[:agree.index("</ul>")]
    assert 'class="bad"' in agree and "modelled 8.0 ns per rule; measured NEW-flow 12.8" in agree
    head = page[page.index('<ul id="headline">'):]
    assert "modelled" not in head[:head.index("</ul>")]
    assert "Modelled: the node namespace" in page and "per-shape calibration" in page
    con = Console(width=100, record=True, file=io.StringIO())
    render_sweep(doc, con)
    text = con.export_text()
    assert "Measured on this node:" in text and "✗ kube-router: policy slope modelled 8.0" in text


def test_a_falling_measured_cost_on_a_datapath_without_policy_is_flat():
    """flannel (no policy): N = 0 disturbed (10.2 µs), N = 1000 not (7.6 µs) — a slope of -2.6 ns per
    rule is interference, not a model error (recorded in a default sweep)."""
    base = (10208.0, 0.0, 2800.0)
    done = [point("flannel", 0, 10208.0, 0.0, 2800.0, base), point("flannel", 100, 10092.0, 4.7, 2984.0, base),
            point("flannel", 1000, 7631.0, 0.4, 2887.0, base)]
    curves = build_curves(done)
    a = agreement(ns_per_eval(curves, done), curves, done)["flannel"]
    assert a["flat_new_flow"] and a["agrees_new_flow"] and a["agrees_transit"]


def test_a_new_flow_rise_the_transit_does_not_show_is_flagged_in_the_headline():
    """The last stop's CI: nft 6.8/6.6/8.5 µs per NEW packet at N = 0/100/1,000 (one disturbed point),
    transit slope 0.6 ns per rule. The headline still reports the measured rise, and says the
    kernel-timed transit does not confirm it; a real rise (calico) gets no such doubt."""
    from cnitrace.sweep.model import headline
    base = (6783.0, 67.0, 2800.0)
    nft = [point("nft", r, nf, 67.0, 2800.0 + 0.6 * r, base)
           for r, nf in ((0, 6783.0), (100, 6611.0), (1000, 8522.0))]
    cbase = (7000.0, 1300.0, 3900.0)
    calico = [point("calico", r, cbase[0] + 52.5 * r, cbase[1] + 50.6 * r, cbase[2] + 52.9 * r, cbase)
              for r in (0, 100, 1000)]
    done = nft + calico
    curves = build_curves(done)
    per = ns_per_eval(curves, done)
    lines = headline(per, curves, agreement(per, curves, done))
    [n] = [ln for ln in lines if ln.startswith("nft:")]
    [c] = [ln for ln in lines if ln.startswith("calico:")]
    assert "grows" in n and "not confirmed" in n and "0.60 ns per rule" in n and "--repeat" in n
    assert "grows" in c and "not confirmed" not in c
    # without the transit (a node where it is not timed) nothing is claimed either way
    assert not any("not confirmed" in ln for ln in headline(per, curves))

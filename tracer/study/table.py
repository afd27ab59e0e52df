"""The study table: one row per (experiment family, CNI), the measured figures beside the study's
shape, whether the shapes agree, and the stage that explains the result (pure).

A row's measured figures are medians of the sweep's measurements at the family's conditions
(provenance "measured"); its stage figure carries its own provenance (attribution.py).
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from cnitrace.study import attribution as attr
from cnitrace.study.compare import compare_change, compare_occurs, compare_ratio, fmt_pct, pct_change, study_pct, \
    study_shape_text
from cnitrace.study.figures import Figure, Figures
from cnitrace.study.plan import Cell, StudyPlan

METRICS = {"throughput_gbps": ("Gbit/s", "throughput"), "rtt_p50_us": ("µs", "latency (RTT p50)"),
           "http_rps": ("requests/s", "RPS"), "connection_failures": ("connections", "connection failures")}
NAMES = {"calico": "Calico", "kube-router": "Kube-router", "weave": "WeaveNet", "nft": "Calico (nft)",
         "antrea": "Antrea", "cilium": "Cilium", "flannel": "Flannel"}
FAMILY_METRIC = {"policy": "throughput_gbps", "complexity": "throughput_gbps", "concurrency": "throughput_gbps",
                 "placement": "throughput_gbps", "l7": "http_rps"}


def metric_value(point: Mapping[str, Any] | None, metric: str) -> float | None:
    if not point or point.get("status") != "ok":
        return None
    if metric == "connection_failures":
        return float(point.get("connection_failures") or 0)
    m = (point.get("metrics") or {}).get(metric)
    return float(m["median"]) if isinstance(m, Mapping) and m.get("median") is not None else None


def has_policy(point: Mapping[str, Any] | None, datapath: str) -> bool:
    """False for a datapath that enforces no policy (the lab's semantics check says so)."""
    denied = (((point or {}).get("semantics") or {}).get("checks") or {}).get("denied") or {}
    if "note" in denied:
        return not str(denied["note"]).startswith("no policy")
    return datapath != "flannel"


def _series(cells: Sequence[Cell], points: Mapping[str, Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    out = []
    for c in sorted(cells, key=lambda c: c.x):
        p = points.get(c.point)
        out.append({"condition": c.condition, "x": c.x, "point": c.point, "value": metric_value(p, metric),
                    "provenance": "measured", "status": (p or {}).get("status", "not run"),
                    **({"error": p["error"]} if p and p.get("error") else {})})
    return out


def _row(fam: str, dp: str, condition: str, metric: str, series: list[dict[str, Any]], frm: dict, to: dict,
         fig: Figure | None, stage: dict[str, Any], cmp: Mapping[str, Any] | None = None) -> dict[str, Any]:
    unit, word = METRICS[metric]
    here = pct_change(frm.get("value"), to.get("value"))
    shape = fig.shape if fig else {"kind": "not_given", "why": "no figure in the data file"}
    sp = study_pct(shape)
    if cmp is None:
        cmp = compare_change(sp, here)
    if shape["kind"] == "not_given":
        study_txt = "not given"
    else:
        study_txt = fmt_pct(sp) if sp is not None else study_shape_text(shape, fig.stated if fig else "")
    return {
        "family": fam, "datapath": dp, "cni": NAMES.get(dp, dp), "condition": condition, "metric": metric,
        "unit": unit,
        "measured": {"from": frm, "to": to, "series": series, "provenance": "measured"},
        "study": {"figure": fig.id if fig else None, "stated": fig.stated if fig else "not given",
                  "shape": dict(shape), "text": study_shape_text(shape, fig.stated if fig else "not given"),
                  "note": fig.note if fig else ""},
        "here": {"pct": here, "text": f"{NAMES.get(dp, dp)} {word}: study {study_txt}, here {fmt_pct(here)}"},
        "agreement": dict(cmp),
        "stage": stage,
    }


def _ends(series: list[dict[str, Any]], frm_x: float, to_x: float) -> tuple[dict, dict]:
    by_x = {s["x"]: s for s in series}
    blank = {"condition": "not run", "value": None, "provenance": "measured", "status": "not run"}
    return by_x.get(frm_x, blank), by_x.get(to_x, blank)


def build_rows(plan: StudyPlan, points: Mapping[str, Mapping[str, Any]], figures: Figures,
               policy_stages: Mapping[str, str],
               ns_per_eval: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Every family's rows, in the plan's family and datapath order."""
    rows: list[dict[str, Any]] = []
    for fam in plan.families:
        fam_cells = [c for c in plan.cells if c.family == fam]
        for dp in plan.datapaths:
            cells = [c for c in fam_cells if c.datapath == dp]
            if not cells:
                continue
            rows.extend(_family_rows(fam, dp, cells, points, figures, policy_stages.get(dp, "netfilter"),
                                     (ns_per_eval or {}).get(dp)))
        if fam == "policy":
            r = _policy_ratio_row(fam_cells, points, figures, policy_stages)
            if r:
                rows.append(r)
    return rows


def _family_rows(fam: str, dp: str, cells: Sequence[Cell], points: Mapping[str, Mapping[str, Any]],
                 figures: Figures, stage_name: str, ns_per_eval: float | None = None) -> list[dict[str, Any]]:
    fig = figures.for_cni(fam, dp)
    metric = fig.metric if fig and fig.given else FAMILY_METRIC[fam]
    series = _series(cells, points, metric)
    xs = [c.x for c in cells]
    last = points.get(max(cells, key=lambda c: c.x).point)
    policy = has_policy(last, dp)
    base_evals = next((st.get("evaluations") for st in (points.get(f"{dp}/r0/c1/intra") or {}).get("stages") or ()
                       if st.get("stage") not in ("l7-proxy", "vxlan")), None)
    if fam == "policy":
        frm, to = _ends(series, 0.0, 1.0)
        stage = attr.policy_stage(last, stage_name, has_policy=policy, ns_per_eval=ns_per_eval, base_evals=base_evals)
        return [_row(fam, dp, "policy off (N = 0) → on (N = 100)", metric, series, frm, to, fig, stage)]
    if fam == "complexity":
        lo = 100.0 if 100.0 in xs else min(xs)
        frm, to = _ends(series, lo, max(xs))
        stage = attr.policy_stage(last, stage_name, has_policy=policy, ns_per_eval=ns_per_eval, base_evals=base_evals)
        return [_row(fam, dp, f"N = {lo:,.0f} → {max(xs):,.0f} rules (study 100 → 1,000)", metric, series, frm, to,
                     fig, stage)]
    if fam == "concurrency":
        many = [x for x in xs if x > 1]
        frm, to = _ends(series, min(many), max(many))
        stage = attr.concurrency_stage(last, stage_name)
        row = _row(fam, dp, f"{min(many):.0f} → {max(many):.0f} client pods (study 50 → 200)", metric, series, frm,
                   to, fig, stage)
        occ = figures.occurs_for(fam, dp)
        if occ is not None:
            fails = metric_value(last, "connection_failures")
            ct = (last or {}).get("conntrack") or {}
            events = None if fails is None else int(fails + sum(ct.get(k, 0) for k in attr.CT_ERRORS))
            row["also"] = {"study": occ.stated, "figure": occ.id, "metric": "connection_failures",
                           "here": f"{events if events is not None else '—'} connection failures / conntrack "
                                   f"errors at {max(many):.0f} client pods",
                           "value": events, "provenance": "measured", "agreement": compare_occurs(occ.shape, events)}
        return [row]
    if fam == "placement":
        frm, to = _ends(series, 0.0, 1.0)
        return [_row(fam, dp, "intra-node → inter-node (N = 100)", metric, series, frm, to, fig,
                     attr.vxlan_stage(points.get(next(c.point for c in cells if c.x == 1.0))))]
    if fam == "l7":
        frm, to = _ends(series, 0.0, 1.0)
        on = points.get(next(c.point for c in cells if c.x == 1.0))
        proxy = attr.proxy_label((on or {}).get("proxy"), dp, fig.proxy if fig else "")
        row = _row(fam, dp, "L7 off → on (ab, 100 concurrent)", metric, series, frm, to, fig,
                   attr.l7_stage(on, proxy))
        row["proxy"] = proxy
        row["cni"] = f"{NAMES.get(dp, dp)} via {proxy['label']}"
        return [row]
    return []


def _policy_ratio_row(cells: Sequence[Cell], points: Mapping[str, Mapping[str, Any]], figures: Figures,
                      policy_stages: Mapping[str, str]) -> dict[str, Any] | None:
    """Cilium's throughput over the other CNIs' median, policy on — the study's 8.6 vs 6–7 Gbit/s."""
    fig = figures.get("policy-cilium-vs-others")
    on = {c.datapath: points.get(c.point) for c in cells if c.x == 1.0}
    if fig is None or "cilium" not in on or len(on) < 2:
        return None
    others = [v for dp, p in on.items() if dp != "cilium" and (v := metric_value(p, "throughput_gbps")) is not None]
    cil = metric_value(on["cilium"], "throughput_gbps")
    med = statistics.median(others) if others else None
    ratio = cil / med if cil is not None and med else None
    stage = attr.ratio_stage([(dp, policy_stages.get(dp, "netfilter") if has_policy(p, dp) else None, p)
                              for dp, p in on.items()])
    frm = {"condition": f"others' median ({len(others)} CNIs), policy on", "value": med, "provenance": "measured"}
    to = {"condition": "Cilium, policy on", "value": cil, "provenance": "measured"}
    row = _row("policy", "cilium", "Cilium vs the others, policy on (N = 100)", "throughput_gbps", [], frm, to, fig,
               stage, compare_ratio(fig.shape, ratio))
    row["cni"] = "Cilium vs others"
    row["here"] = {"pct": pct_change(med, cil), "ratio": ratio,
                   "text": f"Cilium/others throughput: study {fig.shape['low']:g}–{fig.shape['high']:g}×, here "
                           + (f"{ratio:.2f}×" if ratio is not None else "—")}
    return row

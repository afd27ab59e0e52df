"""The sweep's pure side: which points to run, and how finished points become curves, fitted
cost models, cliffs and a table shaped like the study's results.

Nothing here touches the system, so the whole result shaping is tested on recorded points.
Every number carries its provenance: "measured" (timed on this node) or "modelled"
(evaluations per packet × the node's calibrated ns per rule evaluation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
from typing import Any, Iterable, Mapping, Sequence

from cnitrace.calibrate.costmodel import find_cliff, fit_models, is_flat
from cnitrace.core.errors import UsageError
from cnitrace.lab.datapaths.registry import DATAPATHS as REGISTRY
from cnitrace.lab.model import MAX_RULES
from cnitrace.calibrate.costmodel import fit_line
from cnitrace.calibrate.rules import cpu_model

DATAPATHS = tuple(REGISTRY)                                    # the lab's registry, in its order
L7_DATAPATHS = tuple(n for n, dp in REGISTRY.items() if dp.supports_l7)
DEFAULT_RULES = (0, 100, 1000)
QUICK_RULES = (0, 1000)
MAX_POINTS = 400
BACKENDS = ("legacy", "nft")   # the iptables backend of the iptables datapaths (calico, kube-router)
SPREAD_LIMIT = 0.25           # (max - min) / median above this marks a point's metric as too noisy
CLIFF_FACTOR = 1.5

# The datapath stage whose cost grows with the policy, per datapath.
POLICY_STAGE = {n: dp.policy_stage for n, dp in REGISTRY.items()}
# Metrics whose spread across repeats is judged.
SPREAD_METRICS = ("new_flow_ns", "throughput_gbps", "rtt_p50_us", "http_rps")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    datapaths: tuple[str, ...] = DATAPATHS
    rules: tuple[int, ...] = DEFAULT_RULES
    clients: tuple[int, ...] = (1,)
    l7: bool = False
    placement: str = "intra"
    repeat: int = 1
    quick: bool = False
    seconds: float = 2.0          # stream / rr duration per repeat
    http_seconds: float = 3.0     # ab duration (the study: 20 s; bounded here)
    flood_packets: int = 500     # short bursts: the per-packet figure is stable (longer ones queue up)
    flood_bursts: int = 25        # the fastest of many: interference on a shared machine only adds
    backend: str = "legacy"
    attribute: bool = True        # a `profile` attribution of crafted probes at every point

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def parse_list(text: str | None, what: str, *, cast=str) -> tuple:
    """"a,b,c" -> ("a", "b", "c") (cast each); one clear line on bad input."""
    if text is None:
        return ()
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{what}: empty list")
    try:
        out = tuple(cast(t) for t in items)
    except ValueError:
        raise UsageError(f"--{what}: not a comma-separated list of numbers: {text!r}") from None
    if len(set(out)) != len(out):
        raise UsageError(f"--{what}: duplicate values in {text!r}")
    return out


def make_config(*, datapaths: str | None = None, rules: str | None = None, clients: str | None = None,
                l7: bool = False, placement: str = "intra", repeat: int = 1, quick: bool = False,
                attribute: bool | None = None, backend: str = "legacy") -> SweepConfig:
    """Validate the user's options into a config (pure); raises UsageError with one line."""
    dps = parse_list(datapaths, "datapath") or DATAPATHS
    for d in dps:
        if d not in DATAPATHS:
            raise UsageError(f"--datapath: unknown datapath {d!r}; choose from {', '.join(DATAPATHS)}")
    if l7 and not any(d in L7_DATAPATHS for d in dps):
        raise UsageError(f"--l7 needs one of: {', '.join(L7_DATAPATHS)}")
    rls = parse_list(rules, "rules", cast=int) or (QUICK_RULES if quick else DEFAULT_RULES)
    if any(not 0 <= r <= MAX_RULES for r in rls):
        raise UsageError(f"--rules: each value must be in 0..{MAX_RULES}")
    cls = parse_list(clients, "clients", cast=int) or (1,)
    if any(not 1 <= c <= 250 for c in cls):
        raise UsageError("--clients: each value must be in 1..250")
    if placement not in ("intra", "inter"):
        raise UsageError(f"--placement {placement!r}: choose intra or inter")
    if not 1 <= repeat <= 10:
        raise UsageError(f"--repeat {repeat} out of range: 1..10")
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose {' or '.join(BACKENDS)}")
    cfg = SweepConfig(datapaths=tuple(dps), rules=tuple(sorted(rls)), clients=tuple(sorted(cls)), l7=l7,
                      placement=placement, repeat=repeat, quick=quick, backend=backend,
                      attribute=(not quick) if attribute is None else attribute)
    if quick:
        cfg = dataclasses.replace(cfg, seconds=1.0, http_seconds=2.0, flood_packets=500, flood_bursts=21)
    if len(points(cfg)) > MAX_POINTS:
        raise UsageError(f"sweep too large: {len(points(cfg))} points (at most {MAX_POINTS})")
    return cfg


@dataclasses.dataclass(frozen=True)
class PointSpec:
    datapath: str
    rules: int
    clients: int
    l7: bool
    placement: str

    @property
    def id(self) -> str:
        return f"{self.datapath}/r{self.rules}/c{self.clients}{'/l7' if self.l7 else ''}/{self.placement}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "id": self.id}


def points(cfg: SweepConfig) -> list[PointSpec]:
    """Every point, datapath by datapath, rules ascending (so N = 0, the baseline, comes first);
    with --l7, each L7 point follows its L3/L4 twin (the study's before/after) on the datapaths
    that have an L7 detour; with --placement inter, each inter-node point follows its intra-node
    twin, so the VXLAN encapsulation shows up as its own stage (the study measured both). L7 twins
    are intra-node only: the lab's L7 detours catch traffic at the pod-facing interfaces, which
    the tunnel bypasses (the semantics check shows it: the detour counter does not move)."""
    placements = ("intra", "inter") if cfg.placement == "inter" else ("intra",)
    out = []
    for dp in cfg.datapaths:
        for c in cfg.clients:
            for r in cfg.rules:
                for pl in placements:
                    out.append(PointSpec(dp, r, c, False, pl))
                    if cfg.l7 and dp in L7_DATAPATHS and pl == "intra":
                        out.append(PointSpec(dp, r, c, True, pl))
    return out


# --- per point ------------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def summarize(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Median, spread ((max - min) / median) and the raw repeats; None when nothing was measured."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None
    med = median(xs)
    spread = (max(xs) - min(xs)) / abs(med) if med else 0.0
    return {"median": med, "spread": spread, "values": xs, "wide": len(xs) > 1 and spread > SPREAD_LIMIT}


def cpu_share(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """softirq / system / busy shares of all CPU time between two /proc/stat 'cpu' snapshots."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(d.values()) or 1
    idle = d.get("idle", 0) + d.get("iowait", 0)
    return {"softirq_pct": 100.0 * d.get("softirq", 0) / total, "system_pct": 100.0 * d.get("system", 0) / total,
            "busy_pct": 100.0 * (total - idle) / total}


def parse_proc_stat_cpu(text: str) -> dict[str, int]:
    """The aggregate 'cpu' line of /proc/stat as named jiffy counters (pure)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            return {n: int(v) for n, v in zip(names, parts[1:])}
    return {}


def parse_vmrss_kib(status_text: str) -> int:
    """VmRSS of one /proc/PID/status, in KiB (0 for kernel threads and vanished processes)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def policy_stages(spec: PointSpec, new_flow_ns: float | None, baseline_ns: float | None,
                  evaluations: int | None, ns_per_eval: float | None, *,
                  modelled_ns: float | None = None, modelled_baseline_ns: float | None = None,
                  transit_ns: float | None = None, transit_baseline_ns: float | None = None) -> list[dict[str, Any]]:
    """The per-NEW-packet cost of the datapath's policy stage: measured (this point's timed NEW-flow
    cost minus the same datapath's N = 0 point; and, where the transit probe ran, the same
    difference of the time through the node) and modelled.

    Modelled, preferred: `modelled_ns` — the node's netfilter rulesets priced by rule shape
    (calibrate.shapes) from the counters of a burst of the same NEW packets — minus the N = 0
    point's, so both sides are the cost the policy added. Otherwise (no counters read): the lab's
    ground-truth evaluations × one calibrated ns per evaluation (`ns_per_eval`)."""
    measured = None
    if new_flow_ns is not None and baseline_ns is not None:
        measured = new_flow_ns - baseline_ns
    basis = None
    if modelled_ns is not None and modelled_baseline_ns is not None:
        modelled = modelled_ns - modelled_baseline_ns
        basis = "counters x per-shape calibration, minus the N = 0 point"
    elif evaluations is not None and ns_per_eval is not None:
        modelled = evaluations * ns_per_eval
        basis = "ground-truth evaluations x ns per evaluation"
    else:
        modelled = None
    st: dict[str, Any] = {"stage": POLICY_STAGE.get(spec.datapath, "policy"), "unit": "ns/packet (NEW)",
                          "measured_ns": measured, "modelled_ns": modelled, "evaluations": evaluations}
    if basis:
        st["modelled_basis"] = basis
    if modelled_ns is not None:
        st["modelled_total_ns"] = modelled_ns
    if measured is not None and modelled:
        st["agreement"] = measured / modelled if modelled else None
        st["model_vs_measured"] = modelled / measured if measured else None
    if transit_ns is not None:
        st["transit_total_ns"] = transit_ns
        if transit_baseline_ns is not None:
            st["measured_transit_ns"] = mt = transit_ns - transit_baseline_ns
            if modelled and mt:
                st["model_vs_transit"] = modelled / mt
    return [st]


def agreement(per_dp: Mapping[str, Mapping[str, Any]], curves: Sequence[Mapping[str, Any]],
              done: Sequence[Mapping[str, Any]], tolerance: float = 0.25) -> dict[str, Any]:
    """Per datapath: the modelled policy slope (ns per rule) against the measured one — the
    NEW-flow slope and, where timed, the transit slope — as modelled/measured ratios, and whether they
    agree within `tolerance`. A datapath whose cost does not grow with rules (nft sets, BPF maps,
    flannel's no policy) agrees when neither slope grows beyond noise of the N = 0 cost (pure)."""
    out: dict[str, Any] = {}
    for dp, f in per_dp.items():
        mod = next((c for c in curves if c["datapath"] == dp and c["metric"] == "policy_ns" and c["x"] == "rules"
                    and c["provenance"] == "modelled" and not c["l7"] and c["placement"] == "intra"
                    and "linear" in c), None)
        if mod is None:
            continue
        m_slope = mod["linear"]["slope"]
        pts = sorted((p for p in done if p.get("status") == "ok" and p["spec"]["datapath"] == dp
                      and not p["spec"]["l7"] and p["spec"]["placement"] == "intra"),
                     key=lambda p: p["spec"]["rules"])
        tr = [(float(p["spec"]["rules"]), st["measured_transit_ns"]) for p in pts for st in p.get("stages", ())
              if st.get("measured_transit_ns") is not None and st.get("stage") not in ("l7-proxy", "vxlan")]
        t_slope = None
        if len({x for x, _ in tr}) >= 2:
            t_slope = fit_line(tr)[0]
        base = _metric(pts[0], "new_flow_ns") if pts else None
        span = (pts[-1]["spec"]["rules"] - pts[0]["spec"]["rules"]) if len(pts) >= 2 else 0
        row: dict[str, Any] = {"modelled_ns_per_rule": m_slope, "measured_ns_per_rule": f["ns_per_rule"],
                               "transit_ns_per_rule": t_slope}
        noise = tolerance * base / span if base and span else None   # slope equivalent of ±25 % of the N = 0 cost
        for key, meas in (("new_flow", f["ns_per_rule"]), ("transit", t_slope)):
            if meas is None:
                continue
            ratio = m_slope / meas if meas else None
            # flat: neither grows beyond noise. A falling measured cost is interference at the
            # lower-N points (more rules never make a packet faster), so it counts as not growing.
            flat = noise is not None and meas <= noise and abs(m_slope) <= noise
            row[f"model_vs_{key}"] = ratio
            row[f"agrees_{key}"] = bool(flat or (ratio is not None and 1 - tolerance <= ratio <= 1 + tolerance))
            if flat:
                row[f"flat_{key}"] = True
        out[dp] = row
    return out


# --- across points --------------------------------------------------------------------------------

def _metric(p: Mapping[str, Any], name: str) -> float | None:
    m = (p.get("metrics") or {}).get(name)
    return m["median"] if isinstance(m, Mapping) and m.get("median") is not None else None


def _stage_value(p: Mapping[str, Any], which: str) -> float | None:
    for st in p.get("stages") or ():
        if st.get("stage") not in ("l7-proxy", "vxlan") and st.get(which) is not None:
            return float(st[which])
    return None


def describe(model, xunit: str, yunit: str = "ns") -> str:
    """"linear: ≈ 26.1 ns per rule (R² 0.99)", in the curve's own units."""
    if yunit == "ns":
        return model.describe(xunit)
    if model.kind == "linear":
        return f"linear: ≈ {model.slope:.3g} {yunit} per {xunit} (R² {model.r2:.2f})"
    if model.kind == "logarithmic":
        return f"logarithmic: ≈ {model.slope:.3g} {yunit} per e-fold of {xunit}s (R² {model.r2:.2f})"
    return f"constant: ≈ {model.intercept:.3g} {yunit}"


def _model_json(model, xunit: str, yunit: str) -> dict[str, Any]:
    return {"kind": model.kind, "slope": model.slope, "intercept": model.intercept, "r2": model.r2,
            "describe": describe(model, xunit, yunit)}


def curve(points_xy: Sequence[tuple[float, float]], unit: str, yunit: str = "ns") -> dict[str, Any]:
    """Fitted model (best by AIC), the linear fit, flatness and the first cliff of one curve."""
    out: dict[str, Any] = {"points": [[x, y] for x, y in points_xy]}
    xs = {x for x, _ in points_xy}
    if len(points_xy) >= 2 and len(xs) >= 2:
        models = fit_models(points_xy)
        out["model"] = _model_json(models[0], unit, yunit)
        lin = next(m for m in models if m.kind == "linear")
        out["linear"] = _model_json(lin, unit, yunit)
        out["flat"] = is_flat(points_xy)
        # A cliff is judged against a model of at least three earlier points: two always fit a line.
        cliff = find_cliff(points_xy, factor=CLIFF_FACTOR, min_prefix=3)
        out["cliff"] = ({"x": cliff.x, "expected": cliff.expected, "observed": cliff.observed,
                         "factor": cliff.factor} if cliff else None)
    return out


def build_curves(done: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Curves per datapath (and L7/L3-4), against rules at each client count and against clients
    at each rule count: measured NEW-packet cost, modelled policy cost, throughput, latency."""
    series = (("new_flow_ns", "measured", "ns/packet (NEW, whole path)", lambda p: _metric(p, "new_flow_ns")),
              ("policy_ns", "measured", "ns/packet (policy stage)", lambda p: _stage_value(p, "measured_ns")),
              ("policy_ns", "modelled", "ns/packet (policy stage)", lambda p: _stage_value(p, "modelled_ns")),
              ("throughput_gbps", "measured", "Gbit/s", lambda p: _metric(p, "throughput_gbps")),
              ("throughput_per_client_gbps", "measured", "Gbit/s per client",
               lambda p: _metric(p, "throughput_per_client_gbps")),
              ("rtt_p50_us", "measured", "µs", lambda p: _metric(p, "rtt_p50_us")),
              ("http_rps", "measured", "requests/s", lambda p: _metric(p, "http_rps")))
    ok = [p for p in done if p.get("status") == "ok"]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for p in ok:
        s = p["spec"]
        groups.setdefault((s["datapath"], s["l7"], s["placement"]), []).append(p)
    out = []
    for (dp, l7, placement), pts in groups.items():
        for axis, fixed in (("rules", "clients"), ("clients", "rules")):
            for fixed_val in sorted({p["spec"][fixed] for p in pts}):
                sub = sorted((p for p in pts if p["spec"][fixed] == fixed_val), key=lambda p: p["spec"][axis])
                if len({p["spec"][axis] for p in sub}) < 2:
                    continue
                for metric, prov, unit, get in series:
                    if metric == "throughput_per_client_gbps" and axis == "rules":
                        continue          # the same as throughput at one client per point
                    xy = [(float(p["spec"][axis]), v) for p in sub if (v := get(p)) is not None]
                    if len(xy) < 2:
                        continue
                    c = curve(xy, axis[:-1], "ns" if unit.startswith("ns") else unit)
                    c.update({"datapath": dp, "l7": l7, "placement": placement, "x": axis, fixed: fixed_val,
                              "metric": metric, "provenance": prov, "unit": unit,
                              "stage": POLICY_STAGE.get(dp, "policy") if metric in ("policy_ns", "new_flow_ns")
                              else None})
                    if c.get("cliff"):
                        c["cliff"]["stage"], c["cliff"]["reason"] = cliff_cause(sub, c["cliff"]["x"], axis, dp)
                    out.append(c)
    return out


def cliff_cause(pts: Sequence[Mapping[str, Any]], x: float, axis: str, dp: str) -> tuple[str, str]:
    """Which stage a cliff belongs to, from the evidence recorded at that point."""
    p = next((q for q in pts if float(q["spec"][axis]) == x), None)
    if p is None:
        return "unknown", "no point"
    ct = p.get("conntrack") or {}
    if ct.get("insert_failed", 0) or ct.get("drop", 0) or ct.get("early_drop", 0):
        return "conntrack", (f"conntrack insert_failed {ct.get('insert_failed', 0)}, drop {ct.get('drop', 0)}, "
                             f"early_drop {ct.get('early_drop', 0)}")
    fails = (p.get("connection_failures") or 0)
    if fails:
        return "connection setup", f"{fails} failed connections (streams or HTTP requests)"
    if axis == "rules":
        return POLICY_STAGE.get(dp, "policy"), "policy walk grows with the rule count"
    return "cpu", "clients contend for 2 cores (no conntrack or connection errors)"


def ns_per_eval(curves: Sequence[Mapping[str, Any]], done: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per datapath: the measured slope of the policy stage per rule, and per rule evaluation
    (slope ÷ evaluations added per rule, from the lab's ground truth)."""
    out = {}
    for c in curves:
        if c["metric"] != "new_flow_ns" or c["x"] != "rules" or c["l7"] or "linear" not in c:
            continue
        pts = sorted((p for p in done if p.get("status") == "ok" and p["spec"]["datapath"] == c["datapath"]
                      and not p["spec"]["l7"] and p["spec"]["clients"] == c.get("clients")
                      and p.get("evaluations") is not None), key=lambda p: p["spec"]["rules"])
        per_rule_evals = None
        if len(pts) >= 2 and pts[-1]["spec"]["rules"] != pts[0]["spec"]["rules"]:
            per_rule_evals = ((pts[-1]["evaluations"] - pts[0]["evaluations"])
                              / (pts[-1]["spec"]["rules"] - pts[0]["spec"]["rules"]))
        slope = c["linear"]["slope"]
        out[c["datapath"]] = {"ns_per_rule": slope, "points": len(c["points"]), "r2": c["linear"]["r2"], "evaluations_per_rule": per_rule_evals,
                              "ns_per_evaluation": slope / per_rule_evals if per_rule_evals else None,
                              "flat": c["flat"], "provenance": "measured"}
    return out


def study_table(done: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows shaped like the study's results: per datapath, L3/L4 before (N = 0) / after policy,
    complexity (each N), concurrency (each client count) and L7 before/after."""
    rows = []
    ok = [p for p in done if p.get("status") == "ok"]
    for dp in sorted({p["spec"]["datapath"] for p in ok}, key=lambda d: DATAPATHS.index(d) if d in DATAPATHS else 99):
        pts = [p for p in ok if p["spec"]["datapath"] == dp]
        for p in sorted(pts, key=lambda p: (p["spec"]["l7"], p["spec"]["clients"], p["spec"]["rules"])):
            s = p["spec"]
            if s["l7"]:
                exp = "L7 policy"
            elif s["clients"] > 1:
                exp = f"concurrency {s['clients']}"
            elif s["rules"] == 0:
                exp = "L3/L4 no policy rules"
            else:
                exp = f"complexity {s['rules']}"
            rows.append({"datapath": dp, "experiment": exp, "rules": s["rules"], "clients": s["clients"],
                         "l7": s["l7"], "placement": s["placement"],
                         "throughput_gbps": _metric(p, "throughput_gbps"), "rtt_p50_us": _metric(p, "rtt_p50_us"),
                         "rtt_p99_us": _metric(p, "rtt_p99_us"), "http_rps": _metric(p, "http_rps"),
                         "new_flow_ns": _metric(p, "new_flow_ns"), "policy_measured_ns": _stage_value(p, "measured_ns"),
                         "policy_modelled_ns": _stage_value(p, "modelled_ns"),
                         "l7_detour_us": next((st["measured_ns"] / 1000 for st in p.get("stages", ())
                                               if st.get("stage") == "l7-proxy" and st.get("measured_ns") is not None),
                                              None),
                         "softirq_pct": _metric(p, "softirq_pct"), "rss_mib": (_metric(p, "rss_kib") or 0) / 1024,
                         "semantics": (p.get("semantics") or {}).get("passed"),
                         "wide": sorted(p.get("wide_spread") or [])})
    return rows


def unconfirmed_rise(dp: str, curves: Sequence[Mapping[str, Any]],
                     agree: Mapping[str, Mapping[str, Any]] | None) -> float | None:
    """The kernel-timed transit slope (ns per rule) when it does not confirm a NEW-flow rise: the
    transit's rise across the rules swept stays within is_flat's tolerance of the NEW-flow curve's
    mean. The sender-timed NEW-flow figure also counts the sender's scheduling, so a neighbour busy
    for one point's seconds can make a flat datapath look like it grows (seen: nft 6.8/6.6/8.5 µs at
    N = 0/100/1,000 with a transit slope of 0.6 ns per rule); None when transit agrees or is missing."""
    t_slope = ((agree or {}).get(dp) or {}).get("transit_ns_per_rule")
    c = next((c for c in curves if c["datapath"] == dp and c["metric"] == "new_flow_ns" and c["x"] == "rules"
              and not c["l7"] and c["placement"] == "intra" and c["provenance"] == "measured"), None)
    if t_slope is None or c is None or len(c["points"]) < 2:
        return None
    xs = [x for x, _ in c["points"]]
    mean = sum(y for _, y in c["points"]) / len(c["points"])
    return t_slope if t_slope * (max(xs) - min(xs)) <= 0.15 * mean else None


def headline(per_dp: Mapping[str, Mapping[str, Any]], curves: Sequence[Mapping[str, Any]],
             agree: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """One line per finding, leading with the answer."""
    lines = []
    for dp, f in per_dp.items():
        stage = POLICY_STAGE.get(dp, "policy")
        if f.get("points", 3) < 3:
            lines.append(f"{dp}: {stage} slope {f['ns_per_rule']:.1f} ns per rule from two rule counts only "
                         f"(no model judged; sweep three or more)")
        elif f["flat"]:
            lines.append(f"{dp}: {stage} cost per NEW packet stays flat as rules grow "
                         f"(slope {f['ns_per_rule']:.2f} ns per rule, within noise)")
        else:
            per_eval = f"; ≈ {f['ns_per_evaluation']:.0f} ns per rule evaluation" if f.get("ns_per_evaluation") else ""
            t = unconfirmed_rise(dp, curves, agree)
            doubt = (f" — not confirmed: the kernel-timed transit through the node stays flat ({t:.2f} ns per "
                     f"rule), so other load during a point is the likelier cause; rerun with --repeat 3"
                     if t is not None else "")
            lines.append(f"{dp}: {stage} cost grows ≈ {f['ns_per_rule']:.1f} ns per rule per NEW packet "
                         f"(R² {f['r2']:.2f}{per_eval}){doubt}")
    for c in curves:
        if c["x"] == "clients" and c["metric"] == "throughput_gbps" and "model" in c:
            lines.append(f"{c['datapath']}{' L7' if c['l7'] else ''}: aggregate throughput vs client pods "
                         f"(N = {c.get('rules')}) — {c['model']['describe']}")
    for c in curves:
        if c.get("cliff") and c["provenance"] == "measured" and c["metric"] in (
                "throughput_gbps", "throughput_per_client_gbps", "new_flow_ns", "http_rps"):
            cl = c["cliff"]
            lines.append(f"{c['datapath']}: cliff in {c['metric']} at {c['x']} = {cl['x']:g} "
                         f"({cl['observed']:.3g} vs {cl['expected']:.3g} expected) — stage {cl['stage']}: {cl['reason']}")
    return lines


def agreement_lines(agree: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """"calico: policy slope modelled 50.6 ns per rule; measured NEW-flow 52.5 (0.96x), transit 51.0
    (0.99x)" — each number says which it is; a ratio outside the tolerance is marked."""
    lines = []
    for dp, a in agree.items():
        parts = []
        for key, label, meas in (("new_flow", "NEW-flow", "measured_ns_per_rule"),
                                 ("transit", "transit", "transit_ns_per_rule")):
            if a.get(f"model_vs_{key}") is None and not a.get(f"flat_{key}"):
                continue
            m = a.get(meas)
            figure = f"{label} {m:.1f}" if m is not None else label
            if a.get(f"flat_{key}"):
                parts.append(f"{figure} (both flat)")
            else:
                parts.append(f"{figure} ({a['model_vs_' + key]:.2f}x"
                             + (")" if a[f"agrees_{key}"] else ", outside ±25 %)"))
        if parts:
            lines.append(f"{dp}: policy slope modelled {a['modelled_ns_per_rule']:.1f} ns per rule; measured "
                         + ", ".join(parts))
    return lines


def document(cfg: SweepConfig, done: Sequence[Mapping[str, Any]], *, started: float, finished: float,
             interrupted: bool, calibration: Mapping[str, Any] | None, host: Mapping[str, Any],
             total_points: int) -> dict[str, Any]:
    """The sweep's JSON document (versioned), from the finished points (pure)."""
    curves = build_curves(done)
    per_dp = ns_per_eval(curves, done)
    agree = agreement(per_dp, curves, done)
    return {
        "kind": "cnitrace-sweep", "version": 1, "config": cfg.to_json(), "host": dict(host),
        "started": started, "finished": finished, "elapsed_s": finished - started,
        "interrupted": interrupted, "complete": not interrupted and len(done) == total_points,
        "points_total": total_points, "points_done": len(done),
        "semantics_all_passed": all((p.get("semantics") or {}).get("passed") for p in done
                                    if p.get("status") == "ok"),
        "calibration": dict(calibration) if calibration else None,
        "points": list(done), "curves": curves, "per_datapath": per_dp, "table": study_table(done),
        "agreement": agree, "agreement_lines": agreement_lines(agree), "headline": headline(per_dp, curves, agree),
    }


def host_facts() -> dict[str, Any]:
    return {"kernel": platform.release(), "cpu": cpu_model(), "cores": os.cpu_count()}


def iter_wide(point_metrics: Mapping[str, Any]) -> Iterable[str]:
    for k in SPREAD_METRICS:
        m = point_metrics.get(k)
        if isinstance(m, Mapping) and m.get("wide"):
            yield k

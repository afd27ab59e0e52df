"""`cnitrace study`: the seed study's experiment families on the lab, each result beside the
study's figure and explained by the stage that causes it.

The measuring is the sweep's (tracer/sweep/run.py: a fresh lab per point, the semantics check,
iperf3/sockperf/ab, NEW-flow bursts, the counters × per-shape calibration model, the profile's
attribution); this module runs the plan's points through it, notes which L7 proxy actually ran,
and shapes the document. Every lab is removed after its point, also on Ctrl-C (SIGINT/SIGTERM),
which stops the study with a partial document marked interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

from cnitrace.core import faults
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.study import figures as figures_mod
from cnitrace.study.plan import PlannedPoint, StudyPlan, make_plan, scaling
from cnitrace.study.table import build_rows
from cnitrace.sweep import run as sweep_run
from cnitrace.sweep.model import POLICY_STAGE, SweepConfig, host_facts, parse_list

Progress = Callable[[Mapping[str, Any]], None]
QUICK_TARGET_S = 15 * 60


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    plan: StudyPlan
    sweep: SweepConfig             # the sweep's measurement settings (windows, bursts, backend)

    def to_json(self) -> dict[str, Any]:
        return {"quick": self.plan.quick, "families": list(self.plan.families),
                "datapaths": list(self.plan.datapaths), "measurement": self.sweep.to_json()}


def make_config(*, quick: bool, families: str | None = None, datapaths: str | None = None,
                backend: str = "legacy") -> StudyConfig:
    """Options → config (pure); one UsageError line on bad input."""
    plan = make_plan(quick=quick, families=parse_list(families, "families") or None,
                     datapaths=parse_list(datapaths, "datapaths") or None)
    sw = SweepConfig(datapaths=plan.datapaths, rules=(0,), quick=quick, backend=backend, attribute=False)
    if quick:
        sw = dataclasses.replace(sw, seconds=1.0, http_seconds=2.0, flood_packets=500, flood_bursts=21)
    return StudyConfig(plan=plan, sweep=sw)


def proxy_of(lab) -> str | None:
    """The L7 proxy the lab actually started (its description), else the one it was asked for."""
    l7 = (lab.topo.extra or {}).get("l7") or {}
    return l7.get("kind") or l7.get("proxy") or (lab.spec.l7_proxy if lab.spec.l7 else None)


def run_point(pp: PlannedPoint, cfg: StudyConfig, base: "sweep_run.Baselines", cal: Mapping[str, Any] | None,
              runner: Runner) -> dict[str, Any]:
    """One point as the sweep measures it, on a fresh lab that is always removed; a failure is
    recorded in the point, not raised (Ctrl-C is)."""
    ps = pp.spec
    pcfg = dataclasses.replace(cfg.sweep, l7=pp.http, attribute=pp.attribute)

    def proxy(lab, out: dict[str, Any]) -> None:
        if ps.l7:
            out["proxy"] = proxy_of(lab)

    return sweep_run.run_point(ps, pcfg, base, cal["ns_per_rule_eval"] if cal else None, runner,
                               sweep_run.calib_of(cal), after=proxy, prefix="st")


def run(cfg: StudyConfig, *, runner: Runner = DEFAULT_RUNNER, progress: Progress | None = None,
        figures: figures_mod.Figures | None = None) -> dict[str, Any]:
    """Every planned point, then the document; Ctrl-C stops after the lab is removed."""
    say = progress or (lambda ev: None)
    figs = figures or figures_mod.load()
    pts = cfg.plan.points
    started = time.time()
    done: dict[str, dict[str, Any]] = {}
    cals: dict[str, Any] = {}
    base = sweep_run.Baselines()
    interrupted = False
    with Session(f"run:{os.getpid()}", runner=runner):
        try:
            for i, pp in enumerate(pts):
                dp = pp.spec.datapath
                if dp not in cals:
                    say({"event": "calibrate", "index": i, "total": len(pts), "id": dp})
                    cals[dp] = sweep_run.calibration(cfg.sweep, dp, runner)
                say({"event": "point", "index": i, "total": len(pts), "id": pp.id})
                done[pp.id] = run_point(pp, cfg, base, cals[dp], runner)
                say({"event": "done", "index": i, "total": len(pts), "id": pp.id, "point": done[pp.id]})
        except KeyboardInterrupt:          # Session.Interrupted (SIGINT/SIGTERM) included
            interrupted = True
    faults.checkpoint("report")
    return document(cfg, done, figs, started=started, finished=time.time(), interrupted=interrupted,
                   calibration=cals, host=host_facts(), leftovers=base.leftovers)


def document(cfg: StudyConfig, done: Mapping[str, Mapping[str, Any]], figs: figures_mod.Figures, *,
             started: float, finished: float, interrupted: bool, calibration: Mapping[str, Any],
             host: Mapping[str, Any], leftovers: Sequence[str] = ()) -> dict[str, Any]:
    """The study's JSON document (versioned; reports/study/study.schema.json), from finished points (pure)."""
    plan = cfg.plan
    rows = build_rows(plan, done, figs, POLICY_STAGE,
                      {dp: c["ns_per_rule_eval"] for dp, c in calibration.items() if c and c.get("ns_per_rule_eval")})
    agreed = sum(1 for r in rows if r["agreement"]["agrees"] is True)
    differ = sum(1 for r in rows if r["agreement"]["agrees"] is False)
    failed = [p for p in done.values() if p.get("status") != "ok"]
    elapsed = finished - started
    return {
        "kind": "cnitrace-study", "version": 1, "config": cfg.to_json(), "host": dict(host),
        "started": started, "finished": finished, "elapsed_s": elapsed,
        "target_s": QUICK_TARGET_S if plan.quick else None,
        "interrupted": interrupted, "complete": not interrupted and len(done) == len(plan.points),
        "points_total": len(plan.points), "points_done": len(done), "points_failed": len(failed),
        "citation": dict(figs.citation), "citation_text": figs.citation_text(),
        "families": [{"id": f, **figs.families[f]} for f in plan.families],
        "figures": figs.to_json()["figures"],
        "scaling": scaling(cfg.sweep.http_seconds, cfg.sweep.seconds, cfg.sweep.flood_bursts, cfg.sweep.flood_packets),
        "scaled_down": list(plan.scaled),
        "plan": plan.to_json(),
        "rows": rows,
        "summary": {"rows": len(rows), "agree": agreed, "differ": differ, "not_compared": len(rows) - agreed - differ},
        "calibration": {k: ({kk: v[kk] for kk in ("ns_per_rule_eval", "backend", "provenance", "kernel", "cpu")}
                            if v else None) for k, v in calibration.items()},
        "points": [dict(done[p.id]) for p in plan.points if p.id in done],
        "leftovers": list(leftovers),   # labs that could not be removed (`cnitrace cleanup` removes them)
    }

"""`cnitrace profile`: one profiling window over a selection, attributed and documented.

The steps are fixed and visible: resolve what to watch → detect the CNI → choose a probe
backend per stage (the ladder) → calibrate → the window (snapshot every collector, attach
probes, run traffic or wait, snapshot again) → attribute → one versioned document. Ctrl-C
during the window ends it early and still produces the report; everything attached is
detached by the Session. Read-only towards a CNI: it reads counters and attaches probes,
never changes rules, flows or maps.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cnitrace.calibrate import rules as calibrate
from cnitrace.calibrate import walk
from cnitrace.core import faults
from cnitrace.core.errors import CnitraceError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.state import StateFile
from cnitrace.node.detect import detect_cnis, gather_evidence
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.document import attribute, build_document
from cnitrace.profile.ovs import ovs_calibration
from cnitrace.profile.target import Target, resolve_target
from cnitrace.profile.window import backends_forecast, run_window
from cnitrace.node import checks


def detect(target: Target, runner: Runner) -> tuple[list[dict[str, Any]], str]:
    """CNIs recognised from node-local evidence in every namespace whose rules are read, and the
    iptables backend that holds the rules (the one with more chains; legacy when neither has any)."""
    cnis, chains = [], {"legacy": 0, "nft": 0}
    for ns in target.rule_netns:
        ev = gather_evidence(runner, ns)
        cnis += [{"name": d.cni, "evidence": list(d.evidence)} for d in detect_cnis(ev)]
        for backend, _ in ev.iptables_chains:
            chains[backend] = chains.get(backend, 0) + 1
    backend = target.lab.spec.backend if target.lab else ("nft" if chains["nft"] > chains["legacy"] else "legacy")
    return cnis, backend


def calibration(backend: str, runner: Runner, say: Callable[[str], None]) -> Any:
    """This node's cost of one rule evaluation by rule shape for the iptables backend in use; cached."""
    say(f"calibration: ns per rule evaluation by rule shape (iptables {backend})")
    return calibrate.cached_or_measure_shapes(backend=backend, runner=runner)


def walk_calibration(target: Target, backend: str, runner: Runner, say: Callable[[str], None],
                     warnings: list[str]) -> dict[str, dict]:
    """Per rule namespace, the header walks of its longest legacy chains (calibrate.walk): timed on a
    replay at their page offsets before the window, so the replay's traffic never overlaps it."""
    out: dict[str, dict] = {}
    if backend != "legacy":
        return out
    for ns in target.rule_netns:
        try:
            rs = walk.legacy_rules(ns, runner)
        except CnitraceError as exc:
            warnings.append(f"header walks not timed{f' in {ns}' if ns else ''}: {exc.message}")
            continue
        if walk.candidates(rs):
            say(f"calibration: header walks of the longest chains{f' in {ns}' if ns else ''} (replayed at their "
                f"page offsets)")
            out[ns] = walk.walks_for(rs, backend, ns or None, runner)
    return out


def run_profile(cfg: ProfileConfig, *, host: Any = None, runner: Runner = DEFAULT_RUNNER,
                say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """One profiling window; returns the validated profile document."""
    cfg.validate()
    StateFile().check_writable()     # refused with one line before anything is created
    host = host or checks.host(runner)
    started_at = time.time()
    target = resolve_target(cfg, runner)
    say(f"selection: {', '.join(i['name'] for i in target.interfaces)}")
    cnis, ipt_backend = detect(target, runner)
    say(f"detect: {', '.join(c['name'] for c in cnis) or 'no CNI recognised'}")
    backends = backends_forecast(host)
    warnings: list[str] = []
    cal = calibration(ipt_backend, runner, say) if cfg.calibrate else None
    ovs_cal = ovs_calibration(target, runner, say, warnings) if cfg.calibrate else None
    walks = walk_calibration(target, ipt_backend, runner, say, warnings) if cfg.calibrate else {}
    win = run_window(cfg, target, backends, host, runner, say)
    say("attribution: counters and probe figures into the stage tree")
    result = attribute(cfg, target, win, cal, ovs_cal, walks)
    faults.checkpoint("report")
    return build_document(cfg, target, cnis, started_at, win, result, cal, ovs_cal,
                          [*warnings, *win.warnings, *result["warnings"]])

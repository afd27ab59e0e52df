"""Wall time of the default sweep and of `--quick` (issue 7's performance targets).

Targets on 2 cores: the default sweep (rules 0/100/1000 × calico, kube-router, nft, antrea,
cilium, flannel, 1:1 pods — 18 points) under 10 minutes; `--quick` under 2 minutes. Each
sweep runs exactly as `cnitrace sweep [--quick]` does (same config builder, same runner), and
the per-point seconds are printed so a slow datapath is visible. Also reported: whether every
point passed its semantics check, and the fitted ns per rule per datapath.
"""

from __future__ import annotations

import time

from cnitrace.sweep import run as sweep
from cnitrace.sweep.model import make_config

TARGETS = {"default": 600.0, "quick": 120.0}


def run(label: str, quick: bool) -> bool:
    cfg = make_config(quick=quick)
    t0 = time.monotonic()
    doc = sweep.run(cfg)
    wall = time.monotonic() - t0
    ok = wall < TARGETS[label] and doc["complete"]
    print(f"{label:8} {doc['points_done']:>3}/{doc['points_total']} points  {wall:7.1f} s  "
          f"target <{TARGETS[label]:.0f} s  {'ok' if ok else 'MISSED'}  "
          f"semantics {'all passed' if doc['semantics_all_passed'] else 'FAILED'}")
    slow = sorted(doc["points"], key=lambda p: -p["seconds"])[:3]
    print("         slowest points: " + ", ".join(f"{p['spec']['id']} {p['seconds']:.1f} s" for p in slow))
    for dp, f in doc["per_datapath"].items():
        print(f"         {dp:12} {f['ns_per_rule']:8.2f} ns/rule per NEW packet  R² {f['r2']:.2f}"
              f"  {'flat' if f['flat'] else 'grows'}")
    return ok


def main() -> int:
    results = [run("quick", True), run("default", False)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time of `cnitrace study --quick` (issue 14's target: under 15 minutes on 2 cores; aim ≤ 8).

The study runs exactly as the command does (same config builder, same runner). Printed: the
wall time against the target, points done and failed, the slowest points (so a slow datapath is
visible), and how many rows' shapes agree with the study's.
"""

from __future__ import annotations

import time

from cnitrace.study import run as study

TARGET_S, AIM_S = 15 * 60.0, 8 * 60.0


def main() -> int:
    cfg = study.make_config(quick=True)
    t0 = time.monotonic()
    doc = study.run(cfg)
    wall = time.monotonic() - t0
    ok = wall < TARGET_S and doc["complete"] and not doc["points_failed"] and not doc["leftovers"]
    print(f"study --quick  {doc['points_done']:>3}/{doc['points_total']} points  {wall:7.1f} s  "
          f"target <{TARGET_S:.0f} s (aim ≤{AIM_S:.0f} s)  {'ok' if ok else 'MISSED'}  "
          f"failed points {doc['points_failed']}")
    slow = sorted(doc["points"], key=lambda p: -p.get("seconds", 0.0))[:5]
    print("               slowest points: " + ", ".join(f"{p['spec']['id']} {p.get('seconds', 0.0):.1f} s"
                                                       for p in slow))
    s = doc["summary"]
    print(f"               shapes: {s['agree']} agree, {s['differ']} differ, {s['not_compared']} not compared "
          f"of {s['rows']} rows")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

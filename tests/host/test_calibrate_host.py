"""The calibration micro-benchmark measures a plausible, positive per-rule cost and leaves nothing behind."""

from __future__ import annotations

from cnitrace.calibrate import measure


def test_calibration_measures_per_rule_cost(node_before_after):
    cal = measure(rules=1000, repeats=2, seconds=1, backend="legacy")
    # The design's figure on this machine is ≈ 27 ns; allow for a shared, noisy host.
    assert 5.0 < cal.ns_per_rule_eval < 300.0, cal
    assert all(s.pps > 1000 for s in cal.samples)
    # More rules must mean fewer packets per second in every repeat.
    by_rules = {}
    for s in cal.samples:
        by_rules.setdefault(s.rules, []).append(s.pps)
    assert max(by_rules[1000]) < min(by_rules[0])
    node_before_after()

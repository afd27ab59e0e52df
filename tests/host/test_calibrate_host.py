"""The calibration micro-benchmark measures a plausible, positive per-rule cost and leaves nothing behind."""

from __future__ import annotations

import pytest

from cnitrace.calibrate.rules import measure


@pytest.mark.parametrize("method", ["transit", "pps"])
def test_calibration_measures_per_rule_cost(node_before_after, method):
    cal = measure(rules=1000, repeats=2, seconds=1, backend="legacy", method=method)
    assert cal.method == method
    # The design's figure on this machine is ≈ 27 ns; allow for a shared, noisy host.
    assert 5.0 < cal.ns_per_rule_eval < 300.0, cal
    # More rules must mean more time per packet in every repeat.
    by_rules: dict[int, list[float]] = {}
    for s in cal.samples:
        by_rules.setdefault(s.evaluations, []).append(s.ns_per_packet)
    assert min(by_rules[1000]) > max(by_rules[0])
    if method == "transit":
        assert cal.r2 > 0.95   # softirq timing is not disturbed by other processes
    node_before_after()

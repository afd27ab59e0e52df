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


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_shape_calibration_is_bounded_ordered_and_cached(node_before_after, backend, tmp_path):
    from cnitrace.calibrate.rules import cached_or_measure_shapes
    from cnitrace.calibrate.shapes import CALIBRATION_SHAPES, EARLY

    cache = tmp_path / "calibration.json"
    cal = cached_or_measure_shapes(backend=backend, cache=cache)
    assert cal.provenance == "measured" and cal.backend == backend and cal.method == "transit"
    assert cal.seconds is not None and cal.seconds < 20.0, cal.seconds      # it runs at profile start
    # Relations that hold on any CPU: a rule rejected at its header is the cheapest evaluation; every
    # module adds time; an ipset lookup costs more than a mark test; two modules more than one.
    # (each module shape is measured as pairs — an early rule, then the shape's rule — per pair, so
    # it exceeds one early rule by the whole rule of the shape; how much more depends on the CPU and
    # the backend: on nft a mark test costs barely more than the header miss.)
    assert cal.early_ns > 0
    assert min(CALIBRATION_SHAPES, key=cal.samples.get) == "early", cal.samples
    assert all(cal.samples[s] > cal.early_ns for s in ("mark", "port", "multiport", "conntrack"))
    # On nft a mark test adds ~1 ns to a ~27 ns pair: noise can clamp its module figure to 0 (seen
    # in `make test`: 14.36 vs 14.36), so there the early/mark relation is "not cheaper"; the pair
    # itself costing more than one early rule is asserted above on every backend.
    if backend == "legacy":
        assert cal.class_ns(EARLY) < cal.class_ns("full:mark")
    assert cal.class_ns(EARLY) <= cal.class_ns("full:mark") < cal.class_ns("full:comment+mark")
    assert cal.module_ns["set"] > cal.module_ns["mark"]
    again = cached_or_measure_shapes(backend=backend, cache=cache)
    assert again.provenance == "cached" and again.early_ns == cal.early_ns
    node_before_after()

"""Cost-model fitting and cliff detection on synthetic curves with known shapes."""

from __future__ import annotations

import math

import pytest

from cnitrace.calibrate.costmodel import find_cliff, fit_models, is_flat

RULES = [0, 100, 500, 1000, 2000]


def test_linear_curve_is_recognised_with_its_slope():
    pts = [(x, 5000 + 27 * x + (13 if x % 200 else -13)) for x in RULES]
    best = fit_models(pts)[0]
    assert best.kind == "linear" and best.slope == pytest.approx(27, rel=0.02) and best.r2 > 0.99
    assert "27.0 ns per rule" in best.describe()
    assert not is_flat(pts)


def test_flat_curve_is_flat():
    pts = [(x, 5000 + (40 if i % 2 else -40)) for i, x in enumerate(RULES)]
    assert is_flat(pts)
    assert fit_models(pts)[0].kind in ("constant", "logarithmic", "linear")


def test_logarithmic_curve_prefers_log_model():
    pts = [(x, 800 + 120 * math.log1p(x)) for x in [0, 10, 100, 1000, 10000]]
    assert fit_models(pts)[0].kind == "logarithmic"


def test_cliff_found_where_curve_departs():
    clients = [1, 50, 100, 150, 200]
    rps = [10000, 9800, 9700, 9600, 3000]       # collapse at 200 clients
    cliff = find_cliff(list(zip(clients, rps)))
    assert cliff is not None and cliff.x == 200 and cliff.factor < 0.5


def test_no_cliff_on_a_smooth_line():
    assert find_cliff([(x, 5000 + 27 * x) for x in RULES]) is None


def test_too_few_points_is_a_value_error():
    with pytest.raises(ValueError):
        fit_models([(1, 1.0)])

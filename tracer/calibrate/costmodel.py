"""Cost models for sweep curves: constant, linear or logarithmic in the swept variable,
and cliff detection — the point where a curve departs from the model of the points before it.

Pure functions; the sweep feeds them (rules or clients, ns per packet) pairs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from cnitrace.calibrate.rules import fit_line


@dataclasses.dataclass(frozen=True)
class Model:
    kind: str          # "constant" | "linear" | "logarithmic"
    slope: float       # ns per unit (linear) or per e-fold (log); 0 for constant
    intercept: float
    r2: float
    aic: float

    def predict(self, x: float) -> float:
        if self.kind == "linear":
            return self.intercept + self.slope * x
        if self.kind == "logarithmic":
            return self.intercept + self.slope * math.log1p(x)
        return self.intercept

    def describe(self, unit: str = "rule") -> str:
        if self.kind == "linear":
            return f"linear: ≈ {self.slope:.1f} ns per {unit} (R² {self.r2:.2f})"
        if self.kind == "logarithmic":
            return f"logarithmic: ≈ {self.slope:.1f} ns per e-fold of {unit}s (R² {self.r2:.2f})"
        return f"constant: ≈ {self.intercept:.0f} ns"


def _aic(rss: float, n: int, k: int) -> float:
    rss = max(rss, 1e-9)
    return n * math.log(rss / n) + 2 * k


def fit_models(points: Sequence[tuple[float, float]]) -> list[Model]:
    """All three models fitted to (x, y), best (lowest AIC) first."""
    n = len(points)
    if n < 2:
        raise ValueError("need at least two points")
    ys = [y for _, y in points]
    my = sum(ys) / n
    ss_tot = sum((y - my) ** 2 for y in ys)
    models = [Model("constant", 0.0, my, 0.0, _aic(ss_tot, n, 1))]
    for kind, tx in (("linear", lambda x: x), ("logarithmic", math.log1p)):
        pts = [(tx(x), y) for x, y in points]
        if len({x for x, _ in pts}) < 2:
            continue
        slope, icpt, r2 = fit_line(pts)
        rss = sum((y - (icpt + slope * x)) ** 2 for x, y in pts)
        models.append(Model(kind, slope, icpt, r2, _aic(rss, n, 2)))
    return sorted(models, key=lambda m: m.aic)


def is_flat(points: Sequence[tuple[float, float]], tolerance: float = 0.15) -> bool:
    """True when the linear slope's total effect across the range is within `tolerance` of the mean."""
    xs = [x for x, _ in points]
    mean = sum(y for _, y in points) / len(points)
    if mean == 0 or len(set(xs)) < 2:
        return True
    slope, _, _ = fit_line(points)
    return abs(slope * (max(xs) - min(xs))) <= tolerance * abs(mean)


@dataclasses.dataclass(frozen=True)
class Cliff:
    x: float
    expected: float
    observed: float

    @property
    def factor(self) -> float:
        return self.observed / self.expected if self.expected else float("inf")


def find_cliff(points: Sequence[tuple[float, float]], factor: float = 1.5, min_prefix: int = 2) -> Cliff | None:
    """The first point whose value departs by more than `factor` from the best model of the points
    before it (either way: a throughput collapse or a latency jump)."""
    pts = sorted(points)
    for i in range(min_prefix, len(pts)):
        prefix = pts[:i]
        try:
            model = fit_models(prefix)[0]
        except ValueError:
            continue
        x, y = pts[i]
        exp = model.predict(x)
        if exp > 0 and (y > exp * factor or y < exp / factor):
            return Cliff(x, exp, y)
    return None

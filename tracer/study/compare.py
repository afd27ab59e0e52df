"""A study figure's shape beside the one measured here (pure).

The lab is one 2-core machine, not the study's cluster, so absolute figures are not expected to
match; what is compared is the shape: the direction of a change (same sign) and its size to
within an order of magnitude (same order). Changes within ±FLAT_PCT are "flat" on both sides
(noise on a shared machine), and two flat changes agree.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

FLAT_PCT = 5.0       # |change| below this is "flat"
ORDER = 10.0         # sizes within this factor are the same order


def pct_change(before: float | None, after: float | None) -> float | None:
    """(after − before) / before in percent; None without both figures or with a zero base."""
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / before


def study_pct(shape: Mapping[str, Any]) -> float | None:
    """The study's relative change: its stated pct, else the middle of its low–high range."""
    if shape.get("kind") != "relative_change":
        return None
    if "pct" in shape:
        return float(shape["pct"])
    return (float(shape["low"]) + float(shape["high"])) / 2


def _sign(x: float) -> int:
    return 0 if abs(x) < FLAT_PCT else (1 if x > 0 else -1)


def compare_change(study: float | None, here: float | None) -> dict[str, Any]:
    """Same sign and same order of two relative changes (percent)."""
    if study is None or here is None:
        return {"sign": None, "order": None, "agrees": None,
                "verdict": "not compared: " + ("the study gives no figure" if study is None else "not measured here")}
    s, h = _sign(study), _sign(here)
    if s == 0 or h == 0:
        same = s == h
        return {"sign": same, "order": same, "agrees": same,
                "verdict": "both flat" if same else ("study flat, here " + _word(here) if s == 0
                                                     else "here flat, study " + _word(study))}
    sign = s == h
    ratio = abs(here) / abs(study)
    order = sign and 1 / ORDER <= ratio <= ORDER
    if not sign:
        verdict = f"opposite direction (study {_word(study)}, here {_word(here)})"
    elif order:
        verdict = f"same direction, same order ({ratio:.2g}× the study's change)"
    else:
        verdict = f"same direction, different order ({ratio:.2g}× the study's change)"
    return {"sign": sign, "order": order, "agrees": bool(sign and order), "verdict": verdict}


def compare_ratio(shape: Mapping[str, Any], here: float | None) -> dict[str, Any]:
    """A ratio between CNIs (e.g. Cilium's throughput over the others'): same side of 1, same order."""
    if shape.get("kind") != "ratio" or here is None or here <= 0:
        return compare_change(None if shape.get("kind") != "ratio" else 1.0, None)
    lo = float(shape.get("low", shape.get("value", 0.0)))
    hi = float(shape.get("high", shape.get("value", 0.0)))
    mid = (lo + hi) / 2
    return compare_change(100.0 * (mid - 1), 100.0 * (here - 1))


def compare_occurs(shape: Mapping[str, Any], count: int | None) -> dict[str, Any]:
    """The study saw something happen (failures at 200 pods): did it happen here?"""
    if count is None:
        return compare_change(1.0, None)
    seen = count > 0
    return {"sign": seen, "order": None, "agrees": seen,
            "verdict": f"{count} here" + ("" if seen else f" (the study saw {shape.get('what', 'it')})")}


def _word(pct: float) -> str:
    return "flat" if abs(pct) < FLAT_PCT else ("up" if pct > 0 else "down")


def fmt_pct(pct: float | None) -> str:
    """"−98.6 %", "+245 %", "—"."""
    if pct is None or math.isnan(pct):
        return "—"
    s = f"{abs(pct):.1f}" if abs(pct) < 100 else f"{abs(pct):,.0f}"
    return ("−" if pct < 0 else "+") + s + " %"


def study_shape_text(shape: Mapping[str, Any], stated: str) -> str:
    """The study's figure as a shape, in words."""
    kind = shape.get("kind")
    if kind == "not_given":
        return "not given"
    if kind == "relative_change":
        if "pct" in shape:
            return f"{fmt_pct(shape['pct'])} ({stated})"
        return f"{fmt_pct(shape['low'])} to {fmt_pct(shape['high'])} ({stated})"
    if kind == "ratio":
        if "low" in shape:
            return f"{shape['low']:g}–{shape['high']:g}× ({stated})"
        return f"{shape['value']:g}× ({stated})"
    return stated

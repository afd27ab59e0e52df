"""`cnitrace analyze` and the dump side of `cnitrace diff`: files in, documents out (the I/O edge).

The one place that decides the cost source: this node's cached per-shape calibration when there is
one, a fresh measurement only when asked (`--calibrate`, root), the reference figures otherwise.
Parsing a 100,000-rule dump allocates a few million small objects and no reference cycles, so the
cyclic garbage collector is paused meanwhile (it would otherwise walk them all again and again).
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterator, Sequence

from cnitrace.analyze import costs, inputs
from cnitrace.analyze.analysis import Analysis, analyze
from cnitrace.analyze.diff import diff
from cnitrace.analyze.dumps import Dump, Skipped


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while dumps are parsed and analysed; then freeze what was allocated, so
    later collections (while rendering) do not walk it either."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


def backends_of(items: Sequence[Dump | Skipped]) -> tuple[str, ...]:
    """The iptables backends the dumps use ("" / unknown counts as legacy)."""
    out = {("nft" if d.meta.get("backend") == "nft" else "legacy") for d in items
           if isinstance(d, Dump) and d.format in ("iptables-save", "iptables-list")}
    if any(isinstance(d, Dump) and d.format in ("nft-json", "nft-text") for d in items):
        out.add("legacy")
    return tuple(sorted(out))


def cost_model(items: Sequence[Dump | Skipped], calibrate: bool = False, cache: Path | None = None
               ) -> costs.CostModel:
    """This node's calibration for the backends the dumps use (measured first with `calibrate`),
    else the reference figures."""
    backends = backends_of(items)
    found = costs.measure_shapes(backends) if calibrate and backends else costs.cached_shapes(cache, backends)
    return costs.model_from(found) if found else costs.reference_model()


def analyze_paths(args: Sequence[str], calibrate: bool = False, cache: Path | None = None) -> Analysis:
    with gc_paused():
        items = inputs.load(list(args))
        return analyze(items, cost_model(items, calibrate, cache))


def diff_paths(before: str, after: str, calibrate: bool = False, cache: Path | None = None,
               top: int = 20) -> dict:
    """The dump diff: both sides analysed with one cost model, so the deltas are the rules' own."""
    with gc_paused():
        a_items, b_items = inputs.load([before]), inputs.load([after])
        model = cost_model([*a_items, *b_items], calibrate, cache)
        return diff(analyze(a_items, model), analyze(b_items, model), top)

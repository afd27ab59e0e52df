"""Decoding of the probes' per-CPU log2 histograms (mirror of stages.h)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnitrace.probes.histogram import SLOTS, Histogram, from_samples, merge_cpus, slot_bounds, slot_of


def test_slots_match_the_c_header():
    header = (Path(__file__).parents[2] / "probes" / "stages.h").read_text()
    assert int(re.search(r"#define CNIT_SLOTS (\d+)", header)[1]) == SLOTS


@pytest.mark.parametrize("value,slot", [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (1023, 10), (1024, 11),
                                        (1 << 38, 39), (1 << 60, SLOTS - 1)])
def test_slot_of(value, slot):
    assert slot_of(value) == slot
    if 0 < slot < SLOTS - 1:
        lo, hi = slot_bounds(slot)
        assert lo <= value < hi


def test_percentiles_interpolate_inside_a_bucket():
    h = from_samples([1000] * 98 + [100_000] * 2)      # 1000 in [512,1024); 1e5 in [65536,131072)
    assert h.count == 100 and h.mean == pytest.approx(2980)
    assert 512 <= h.p50 < 1024
    assert h.p50 == pytest.approx(512 + 512 * 50 / 98)
    assert 512 <= h.percentile(0.98) <= 1024
    assert 65536 <= h.p99 < 131072


def test_merge_cpus_and_snapshot_difference():
    cpu0 = (2, 3000, [0] * 10 + [2] + [0] * 29)
    cpu1 = (1, 2000, [0] * 11 + [1] + [0] * 28)
    h = merge_cpus([cpu0, cpu1])
    assert (h.count, h.sum, h.slots[10], h.slots[11]) == (3, 5000, 2, 1)
    later = h + from_samples([700])
    assert later - h == from_samples([700])


def test_empty_and_bad_quantile():
    h = merge_cpus([])
    assert h.count == 0 and h.mean is None and h.p50 is None
    with pytest.raises(ValueError):
        from_samples([1]).percentile(1.5)
    assert Histogram(1, 5, (0, 0, 0, 1)).to_json()["p99"] == pytest.approx(4 + 4 * 0.99)

"""Decode the probes' in-kernel aggregates: per-CPU (count, sum, log2 histogram) -> figures.

The kernel keeps one slot per CPU per key (no atomics on the hot path); user space adds
the CPUs up and reads percentiles off the log2 histogram, interpolating inside a bucket.
Slot 0 holds zeros, slot k holds values in [2^(k-1), 2^k). Pure functions: no bcc here.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

SLOTS = 40   # must match CNIT_SLOTS in stages.h


@dataclasses.dataclass(frozen=True)
class Histogram:
    count: int
    sum: int
    slots: tuple[int, ...]

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """Value below which a fraction q of the samples lie, interpolated in its log2 bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"percentile {q} outside [0, 1]")
        total = sum(self.slots)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for k, n in enumerate(self.slots):
            if n == 0:
                continue
            if seen + n >= rank:
                lo, hi = slot_bounds(k)
                return lo + (hi - lo) * max(rank - seen, 0.0) / n
            seen += n
        lo, hi = slot_bounds(len(self.slots) - 1)
        return float(hi)

    @property
    def p50(self) -> float | None:
        return self.percentile(0.50)

    @property
    def p99(self) -> float | None:
        return self.percentile(0.99)

    def __add__(self, other: "Histogram") -> "Histogram":
        n = max(len(self.slots), len(other.slots))
        a = self.slots + (0,) * (n - len(self.slots))
        b = other.slots + (0,) * (n - len(other.slots))
        return Histogram(self.count + other.count, self.sum + other.sum, tuple(x + y for x, y in zip(a, b)))

    def __sub__(self, other: "Histogram") -> "Histogram":
        """The samples added between two snapshots (counters only grow until reset)."""
        n = max(len(self.slots), len(other.slots))
        a = self.slots + (0,) * (n - len(self.slots))
        b = other.slots + (0,) * (n - len(other.slots))
        return Histogram(self.count - other.count, self.sum - other.sum, tuple(x - y for x, y in zip(a, b)))

    def to_json(self) -> dict:
        return {"count": self.count, "sum": self.sum, "mean": self.mean, "p50": self.p50, "p99": self.p99,
                "log2_slots": list(self.slots)}


EMPTY = Histogram(0, 0, (0,) * SLOTS)


def slot_bounds(k: int) -> tuple[int, int]:
    """[low, high) of slot k."""
    if k <= 0:
        return 0, 1
    return 1 << (k - 1), 1 << k


def slot_of(value: int) -> int:
    """The slot the kernel puts `value` in (mirror of cnit_log2_slot, capped at the last slot)."""
    return min(value.bit_length(), SLOTS - 1) if value > 0 else 0


def merge_cpus(per_cpu: Iterable[tuple[int, int, Sequence[int]]]) -> Histogram:
    """Add up one key's per-CPU (count, sum, slots) triples."""
    out = EMPTY
    for count, total, slots in per_cpu:
        out = out + Histogram(int(count), int(total), tuple(int(s) for s in slots))
    return out


def from_samples(values: Iterable[int]) -> Histogram:
    """The histogram the kernel would build from these values (for tests and calibration)."""
    slots = [0] * SLOTS
    count = total = 0
    for v in values:
        slots[slot_of(v)] += 1
        count += 1
        total += v
    return Histogram(count, total, tuple(slots))

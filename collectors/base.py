"""What every collector shares: availability, snapshots, warnings and counter deltas.

A collector is a pure `parse(text) -> Parsed` plus an acquisition step (`snapshot()`)
that runs its tool through a Runner, so unit tests replay recorded output. Malformed
input never raises out of a parser: it becomes a warning and a partial result, because a
profiler that dies on one odd line of a 10,000-rule dump is useless on a real node.

Deltas are generic over records that carry a hashable `key` and a `counters` mapping.
A counter that went backwards was reset (rule replaced, chain flushed, agent restarted):
the delta is the value counted since the reset, flagged and warned about — never negative.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Generic, Hashable, Iterable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

MAX_WARNINGS = 50  # a badly broken dump must not produce a 10,000-line warning list


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a collector can run here, and why not; a reason, never an exception."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls, reason: str = "available") -> "Availability":
        return cls(True, reason)

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)


class Warnings:
    """Collects one-line warnings while parsing; capped, with a count of what was dropped."""

    def __init__(self, limit: int = MAX_WARNINGS):
        self.limit = limit
        self._items: list[str] = []
        self.dropped = 0

    def add(self, message: str, line_no: int | None = None) -> None:
        text = message.splitlines()[0] if message else "warning"
        if line_no is not None:
            text = f"line {line_no}: {text}"
        if len(self._items) < self.limit:
            self._items.append(text[:300])
        else:
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._items) + self.dropped

    def __bool__(self) -> bool:
        return len(self) > 0

    def freeze(self) -> tuple[str, ...]:
        extra = (f"... and {self.dropped} more warnings",) if self.dropped else ()
        return (*self._items, *extra)


def strip_provenance(text: str) -> str:
    """Drop a leading '# provenance:' line (fixtures carry one); real dumps never start with it."""
    if text.startswith("# provenance:"):
        return text.split("\n", 1)[1] if "\n" in text else ""
    return text


R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Parsed(Generic[R]):
    """A parser's result: the records it understood and warnings for what it did not."""

    records: tuple[R, ...]
    warnings: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.warnings)


@dataclasses.dataclass(frozen=True)
class Snapshot(Generic[R]):
    """Records read at one instant. `taken_at` is wall-clock; `monotonic` measures intervals."""

    collector: str
    records: tuple[R, ...]
    taken_at: float = dataclasses.field(default_factory=time.time)
    monotonic: float = dataclasses.field(default_factory=time.monotonic)
    warnings: tuple[str, ...] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, collector: str, parsed: "Parsed[R]", **meta: Any) -> "Snapshot[R]":
        return cls(collector, parsed.records, warnings=parsed.warnings, meta=meta)


@runtime_checkable
class Counted(Protocol):
    """A record whose counters can be differenced between snapshots."""

    @property
    def key(self) -> Hashable: ...

    @property
    def counters(self) -> Mapping[str, int]: ...


@runtime_checkable
class Collector(Protocol):
    name: str

    def available(self, host: Any) -> Availability: ...

    def snapshot(self) -> Snapshot: ...

    def parse(self, text: str) -> Parsed: ...


@dataclasses.dataclass(frozen=True)
class CounterDelta:
    """One counter's change. `reset` is True when it went backwards (value = count since reset)."""

    value: int
    reset: bool = False


def counter_delta(before: int, after: int) -> CounterDelta:
    """after - before, or `after` itself when the counter was reset in between."""
    if after >= before:
        return CounterDelta(after - before)
    return CounterDelta(max(after, 0), reset=True)


@dataclasses.dataclass(frozen=True)
class Delta:
    """Per-key counter changes between two snapshots of one collector."""

    collector: str
    interval_s: float
    changes: Mapping[Hashable, Mapping[str, int]]
    resets: tuple[Hashable, ...] = ()
    appeared: tuple[Hashable, ...] = ()
    vanished: tuple[Hashable, ...] = ()
    warnings: tuple[str, ...] = ()

    def get(self, key: Hashable, counter: str, default: int = 0) -> int:
        return self.changes.get(key, {}).get(counter, default)


def delta(before: Snapshot, after: Snapshot) -> Delta:
    """Difference two snapshots of records that are `Counted`.

    A key present only in `after` counts from zero (a rule added mid-run); one present only
    in `before` is reported as vanished. Duplicate keys are summed, with a warning, because
    two identical rules in one chain are legal and indistinguishable by key.
    """
    w = Warnings()
    if before.collector != after.collector:
        w.add(f"delta of different collectors {before.collector!r} and {after.collector!r}")
    b = _index(before.records, w, "before")
    a = _index(after.records, w, "after")
    changes: dict[Hashable, dict[str, int]] = {}
    resets: list[Hashable] = []
    for key, counters in a.items():
        old = b.get(key, {})
        out: dict[str, int] = {}
        was_reset = False
        for name, value in counters.items():
            d = counter_delta(old.get(name, 0), value)
            out[name] = d.value
            was_reset |= d.reset
        if was_reset:
            resets.append(key)
            w.add(f"counter reset on {_show(key)}: counted from zero since the reset")
        changes[key] = out
    appeared = tuple(k for k in a if k not in b)
    vanished = tuple(k for k in b if k not in a)
    if vanished:
        w.add(f"{len(vanished)} record(s) vanished between snapshots, e.g. {_show(vanished[0])}")
    return Delta(after.collector, max(after.monotonic - before.monotonic, 0.0), changes,
                 tuple(resets), appeared, vanished, (*before.warnings, *after.warnings, *w.freeze()))


def _index(records: Iterable[Any], w: Warnings, which: str) -> dict[Hashable, dict[str, int]]:
    out: dict[Hashable, dict[str, int]] = {}
    dup = 0
    for rec in records:
        if not isinstance(rec, Counted):
            continue
        cur = out.get(rec.key)
        if cur is None:
            out[rec.key] = dict(rec.counters)
        else:
            dup += 1
            for name, value in rec.counters.items():
                cur[name] = cur.get(name, 0) + value
    if dup:
        w.add(f"{dup} duplicate key(s) in the {which} snapshot were summed")
    return out


def _show(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)


def merge_warnings(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(w for g in groups for w in g)

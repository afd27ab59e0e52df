"""Pure parsers for conntrack statistics: /proc/net/stat/nf_conntrack and `conntrack -S`.

Both report per-CPU counters for one network namespace; procfs is hex with a header whose
columns changed across kernels, `conntrack -S` is key=value with its own names. Counters are
normalised to the `conntrack -S` names so the two sources compare directly.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance

# procfs column -> conntrack -S name (same kernel counter)
_PROC_ALIASES = {"clashres": "clash_resolve", "chainlength": "chaintoolong", "icmp_error": "error"}
# Pressure-relevant counters (what the 200-client finding is about).
PRESSURE = ("insert_failed", "drop", "early_drop", "search_restart")


@dataclasses.dataclass(frozen=True)
class CpuStats:
    """One CPU's conntrack counters in one namespace ('' = the host namespace)."""

    netns: str
    cpu: int
    values: Mapping[str, int]
    source: str  # "procfs" or "conntrack -S"

    @property
    def key(self) -> tuple:
        return ("cpu", self.netns, self.cpu, self.source)

    @property
    def counters(self) -> Mapping[str, int]:
        return self.values


@dataclasses.dataclass(frozen=True)
class TableUsage:
    """Entries in use vs the table limit: a gauge (reported, never differenced)."""

    netns: str
    count: int
    max: int | None

    @property
    def key(self) -> tuple:
        return ("table", self.netns)

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    @property
    def pressure(self) -> float | None:
        return self.count / self.max if self.max else None


def parse_proc_stat(text: str, netns: str = "") -> tuple[Parsed[CpuStats], int | None]:
    """Parse /proc/net/stat/nf_conntrack. Returns per-CPU stats and the 'entries' count
    (the namespace's current number of connections, repeated on every CPU row)."""
    text = strip_provenance(text)
    w = Warnings()
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        w.add("empty /proc/net/stat/nf_conntrack")
        return Parsed((), w.freeze()), None
    header = [_PROC_ALIASES.get(h, h) for h in lines[0].split()]
    if not header or header[0] != "entries":
        w.add(f"unexpected header: {lines[0][:120]}")
        return Parsed((), w.freeze()), None
    out: list[CpuStats] = []
    entries: int | None = None
    for cpu, line in enumerate(lines[1:]):
        cols = line.split()
        if len(cols) != len(header):
            w.add(f"row {cpu}: {len(cols)} columns, header has {len(header)}", cpu + 2)
            cols = cols[: len(header)]
        try:
            vals = {h: int(c, 16) for h, c in zip(header, cols)}
        except ValueError as exc:
            w.add(f"row {cpu}: {exc}", cpu + 2)
            continue
        entries = vals.pop("entries", entries)
        out.append(CpuStats(netns, cpu, vals, "procfs"))
    return Parsed(tuple(out), w.freeze()), entries


_CPU = re.compile(r"^cpu=(\d+)\s+(.*)$")


def parse_conntrack_S(text: str, netns: str = "") -> Parsed[CpuStats]:
    """Parse `conntrack -S` (one 'cpu=N key=value ...' line per CPU)."""
    text = strip_provenance(text)
    w = Warnings()
    out: list[CpuStats] = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        m = _CPU.match(s)
        if not m:
            w.add(f"unrecognised line: {s[:120]}", no)
            continue
        vals: dict[str, int] = {}
        for tok in m.group(2).split():
            k, eq, v = tok.partition("=")
            if eq and (v.isascii() and v.isdigit()):
                vals[k] = int(v)
            else:
                w.add(f"cpu {m.group(1)}: bad field {tok[:40]!r}", no)
        out.append(CpuStats(netns, int(m.group(1)), vals, "conntrack -S"))
    return Parsed(tuple(out), w.freeze())


def parse_int_file(text: str) -> int | None:
    s = strip_provenance(text).strip()
    return int(s) if (s.isascii() and s.isdigit()) else None


def totals(stats: tuple[CpuStats, ...] | list[CpuStats]) -> dict[str, int]:
    """Sum the per-CPU counters (what a user compares against the table size)."""
    out: dict[str, int] = {}
    for s in stats:
        for k, v in s.values.items():
            out[k] = out.get(k, 0) + v
    return out

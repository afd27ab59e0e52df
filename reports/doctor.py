"""Terminal rendering with rich. Each command has its own render_* function here.

Output fits 100 columns (doctor is pasted into issues and chat), and status is spelled
out in words as well as colour so it survives copy-paste and colour-blind readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from cnitrace.node.doctor import DoctorReport

WIDTH = 100
_STYLE = {"ok": "green", "degraded": "yellow", "missing": "red", "error": "bold red"}


def console(file=None) -> Console:
    """A console no wider than WIDTH, and exactly WIDTH when not writing to a terminal."""
    probe = Console(file=file)
    width = min(probe.width, WIDTH) if probe.is_terminal else WIDTH
    return Console(file=file, width=width, soft_wrap=False)


def render_doctor(report: "DoctorReport", out: Console | None = None) -> None:
    """Checks, then detected CNIs, then (last) the per-stage probe backend table and why."""
    out = out or console()
    checks = Table(title="Host capabilities", title_justify="left", expand=True, show_lines=False)
    checks.add_column("check", no_wrap=True, width=15)
    checks.add_column("status", no_wrap=True, width=8)
    checks.add_column("reason", overflow="fold", ratio=1)
    for c in report.checks:
        checks.add_row(c.name, Text(c.status.value, style=_STYLE.get(c.status.value, "")), c.reason)
    out.print(checks)

    stages = Table(title="Probe backend per datapath stage", title_justify="left", expand=True)
    stages.add_column("stage", no_wrap=True, width=10)
    stages.add_column("backend", no_wrap=True, width=10)
    stages.add_column("why", overflow="fold", ratio=3)
    stages.add_column("measured / modelled", overflow="fold", ratio=2)
    for s in report.stages:
        backend = Text(s.backend or "none", style="green" if s.backend in ("fentry", "kprobe") else
                       "yellow" if s.backend else "red")
        sig = "measured: " + (", ".join(s.measured) or "-")
        if s.modelled:
            sig += "\nmodelled: " + ", ".join(s.modelled)
        why = s.reason
        if s.rejected and s.backend:
            why += "\n" + "\n".join(f"not {r.backend}: {', '.join(r.blocked_by)}" for r in s.rejected)
        stages.add_row(s.stage, backend, why, sig)
    verdict = ("profiling can run" if report.can_profile else "profiling cannot run: no stage has a backend")
    out.print(f"{verdict} (doctor took {report.elapsed_s:.1f} s)")
    out.print(stages)


# --- snapshot (engineer collect-ovs-bpf) --------------------------------------------------------

SNAPSHOT_ROWS = 15  # per collector: the busiest records; the JSON output has all of them


def _key_text(key) -> str:
    if isinstance(key, (list, tuple)):
        return " ".join(str(k) for k in key if k not in ("", None))
    return str(key)


def _counter_text(counters) -> str:
    """Non-zero counters only (conntrack has 16 per CPU, mostly 0); '0' when all are."""
    text = "  ".join(f"{k}={v:,}" for k, v in counters.items() if v) or "0"
    if counters.get("run_cnt"):
        text += f"  ns/run={counters.get('run_time_ns', 0) / counters['run_cnt']:,.1f}"
    return text


def _gauge_text(rec) -> str | None:
    """Fill levels (conntrack table, BPF and Cilium maps): 'used / max (pct)'."""
    for used, cap in (("count", "max"), ("entries", "max_entries")):
        u, c = getattr(rec, used, None), getattr(rec, cap, None)
        if isinstance(u, int) and isinstance(c, int) and c:
            return f"{u:,} / {c:,} ({100 * u / c:.1f} %)"
    return None


def render_snapshot(result, out: Console | None = None) -> None:
    """One table per collector: availability, then the records with the largest counters (or deltas).

    `result` is cnitrace.collectors.registry.Result; deltas are shown when it has them.
    """
    out = out or console()
    for note in result.notes:
        out.print(f"note: {note}")
    for e in result.entries:
        status = Text("available" if e.availability.ok else "unavailable",
                      style="green" if e.availability.ok else "yellow")
        out.print(Text.assemble(Text(f"{e.name}: ", style="bold"), status, f" ({e.availability.reason})"))
        if e.snapshot is None:
            continue
        if result.deltas is not None:
            d = result.deltas.get(e.name)
            if d is None:
                out.print("  not in the saved snapshot")
                continue
            rows = [(k, v) for k, v in d.changes.items() if any(v.values())]
            rows.sort(key=lambda kv: -max(kv[1].values()))
            title = f"{e.name}: changes over {d.interval_s:.1f} s ({len(rows)} records moved)"
            warnings = d.warnings
        else:
            rows = [(r.key, dict(r.counters)) for r in e.snapshot.records
                    if getattr(r, "counters", None)]
            rows.sort(key=lambda kv: -max(kv[1].values(), default=0))
            title = f"{e.name}: {len(e.snapshot.records)} records"
            warnings = e.snapshot.warnings
        table = Table(title=title, title_justify="left", expand=True)
        table.add_column("record", overflow="fold", ratio=3)
        table.add_column("counters" if result.deltas is None else "delta", overflow="fold", ratio=2)
        for key, counters in rows[:SNAPSHOT_ROWS]:
            table.add_row(_key_text(key), _counter_text(counters))
        if len(rows) > SNAPSHOT_ROWS:
            table.add_row(f"... {len(rows) - SNAPSHOT_ROWS} more (see --json)", "")
        for rec in e.snapshot.records:
            gauge = _gauge_text(rec)
            if gauge is not None:
                table.add_row(_key_text(rec.key), f"in use: {gauge}")
        out.print(table)
        for w in warnings[:5]:
            out.print(Text(f"  warning: {w}", style="yellow"))
        if len(warnings) > 5:
            out.print(Text(f"  ... {len(warnings) - 5} more warnings (see --json)", style="yellow"))

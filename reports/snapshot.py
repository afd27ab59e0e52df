"""`cnitrace snapshot` in the terminal: per collector, the busiest records and their counters."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnitrace.reports.doctor import console

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

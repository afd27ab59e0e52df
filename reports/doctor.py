"""`cnitrace doctor` in the terminal: checks, detected CNIs, then the probe backend per stage.

Output fits 100 columns (doctor is pasted into issues and chat), and status is spelled
out in words as well as colour so it survives copy-paste and colour-blind readers.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnitrace.reports.console import plain_console

WIDTH = 100
_STYLE = {"ok": "green", "degraded": "yellow", "missing": "red", "error": "bold red"}


def console(file=None) -> Console:
    """A console no wider than WIDTH, and exactly WIDTH when not writing to a terminal."""
    probe = Console(file=file)
    width = min(probe.width, WIDTH) if probe.is_terminal else WIDTH
    return plain_console(file=file, width=width, soft_wrap=False)


def render_doctor(report: Any, out: Console | None = None) -> None:
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

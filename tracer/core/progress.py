"""Live progress of a profile on stderr, fed by the `say` messages run_profile already sends.

Domain code knows only `say("step: detail")`; this module turns those messages into a rich
display when stderr is a terminal — one row per step, a spinner while it runs and its time once
done, and for the window a bar with a countdown — and into one plain line per step otherwise
(pipes, logs, tests reading stderr), exactly as before. The bar is drawn from the window's elapsed
time at each refresh, so nothing has to tick it and Ctrl-C needs no special handling here.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Callable, Iterator

from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

_STEP = re.compile(r"\s*([^:]{1,40}):\s*(.*)", re.S)
_WINDOW = re.compile(r"\s*window:\s*(\d+(?:\.\d*)?)\s*s\b")


def step_of(msg: str) -> tuple[str, str]:
    """'probes attached: transit' -> ('probes attached', 'transit'); no prefix -> (msg, '')."""
    m = _STEP.fullmatch(msg)
    return (m.group(1).strip(), m.group(2).strip()) if m else (msg.strip(), "")


def window_seconds(msg: str) -> float | None:
    """The window's length from 'window: 5 s ...', or None for any other step."""
    m = _WINDOW.match(msg)
    return float(m.group(1)) if m else None


class _TimeColumn(ProgressColumn):
    """A bar and the seconds left for the window; the step's own time for every other step."""

    def __init__(self, width: int = 30):
        super().__init__(table_column=Column(no_wrap=True, min_width=width + 14))
        self.width = width

    def render(self, task: Task) -> RenderableType:
        elapsed = task.elapsed or 0.0
        window = task.fields.get("window")
        if not window:
            return Text(f"{elapsed:5.1f} s", style="progress.elapsed")
        grid = Table.grid(padding=(0, 1))
        left = max(window - elapsed, 0.0)
        note = f"{elapsed:.1f} of {window:g} s" if task.finished else f"{left:.0f} s left"
        grid.add_row(ProgressBar(total=window, completed=min(elapsed, window), width=self.width),
                     Text(note, style="progress.remaining"))
        return grid


class LineSteps:
    """Not a terminal: one line per step, as `· step: detail`."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, msg: str) -> None:
        self.console.print(f"· {msg}", markup=False, highlight=False, soft_wrap=True)

    def close(self, failed: bool = False) -> None:
        pass


class LiveSteps:
    """A terminal: a live table of the steps; the running one spins, the window shows its bar."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic, auto_refresh: bool = True):
        # The step text takes what is left of the line (cut with an ellipsis); spinner and bar never wrap.
        text = TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"))
        self.progress = Progress(SpinnerColumn(finished_text="[green]✓"), text, _TimeColumn(), console=console,
                                 get_time=clock, auto_refresh=auto_refresh, refresh_per_second=8,
                                 redirect_stdout=False, transient=False, expand=True)
        self.current: tuple[int, str] | None = None      # (task id, description)
        self.progress.start()

    def _finish(self, failed: bool = False) -> None:
        if self.current is None:
            return
        task, desc = self.current
        self.progress.stop_task(task)
        if failed:
            self.progress.update(task, description=f"{desc} [red](stopped)")
        else:
            self.progress.update(task, completed=1)
        self.current = None

    def __call__(self, msg: str) -> None:
        self._finish()
        name, detail = step_of(msg)
        desc = Text.assemble((name, "bold"), (f": {detail}" if detail else "", "")).markup
        self.current = (self.progress.add_task(desc, total=1, window=window_seconds(msg)), desc)

    def close(self, failed: bool = False) -> None:
        self._finish(failed)
        self.progress.refresh()
        self.progress.stop()


@contextlib.contextmanager
def steps(console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """`with steps() as say:` — a live display on a terminal, one line per step otherwise."""
    console = console or Console(stderr=True)
    display = LiveSteps(console) if console.is_terminal else LineSteps(console)
    failed = True
    try:
        yield display
        failed = False
    finally:
        display.close(failed)

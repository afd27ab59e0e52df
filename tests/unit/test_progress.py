"""The profile's live progress: a rich display on a terminal (steps, spinner/tick, the window's bar
and countdown), one plain line per step otherwise (no root)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cnitrace.core.progress import LineSteps, LiveSteps, step_of, steps, window_seconds

MESSAGES = ["selection: cnpa0, cnpb0", "detect: calico", "calibration: ns per rule evaluation",
            "snapshots: every collector's counters before the window", "probes attached: transit, drops",
            "window: 8 s, probe traffic (Ctrl-C ends it early and still reports)"]


def test_step_of_and_window_seconds():
    assert step_of("probes attached: transit, drops") == ("probes attached", "transit, drops")
    assert step_of("L7 detour: latency") == ("L7 detour", "latency")
    assert step_of("no colon here") == ("no colon here", "")
    assert window_seconds("window: 2.5 s (Ctrl-C ...)") == 2.5
    assert window_seconds("window: 10 s, stream traffic toward 10.0.0.1") == 10.0
    assert window_seconds("snapshots: after the window: 3 s") is None


def test_not_a_terminal_gives_one_line_per_step():
    buf = io.StringIO()
    with steps(Console(file=buf, width=40)) as say:      # narrow: lines must still not wrap
        assert isinstance(say, LineSteps)
        for m in MESSAGES:
            say(m)
    assert buf.getvalue().splitlines() == [f"· {m}" for m in MESSAGES]


def _live(clock: list[float]) -> tuple[io.StringIO, LiveSteps]:
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=120, color_system=None)
    return buf, LiveSteps(con, clock=lambda: clock[0], auto_refresh=False)


def _last_frame(text: str, rows: int) -> list[str]:
    """The last `rows` lines the live display drew (cursor-movement codes stripped)."""
    import re

    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n")
    return [l for l in plain.splitlines() if l.strip()][-rows:]


def test_terminal_shows_steps_ticks_and_the_window_bar_counting_down():
    clock = [100.0]
    buf, live = _live(clock)
    for m in MESSAGES:
        live(m)
        clock[0] += 0.5
    clock[0] += 3.5                      # 4 s into the 8 s window: half the bar, 4 s left
    live.progress.refresh()
    frame = _last_frame(buf.getvalue(), len(MESSAGES))
    for line, msg in zip(frame, MESSAGES):
        assert msg.split(":")[0] in line
    assert all(l.startswith("✓") for l in frame[:-1]), frame       # finished steps are ticked ...
    assert "0.5 s" in frame[0]                                     # ... with their own time
    window = frame[-1]
    assert not window.startswith("✓") and "4 s left" in window
    assert 14 <= window.count("━") <= 16, window                   # 30-wide bar, half full
    live("attribution: counters and probe figures into the stage tree")
    clock[0] += 0.1
    live.close()
    final = _last_frame(buf.getvalue(), len(MESSAGES) + 1)
    assert final[-1].startswith("✓ attribution") and "4.0 of 8 s" in final[-2], final


def test_window_bar_stays_full_past_its_length_and_a_failure_is_marked():
    clock = [0.0]
    buf, live = _live(clock)
    live("window: 2 s")
    clock[0] += 5.0
    live.progress.refresh()
    assert _last_frame(buf.getvalue(), 1)[0].count("━") == 30
    live.close(failed=True)
    assert "(stopped)" in _last_frame(buf.getvalue(), 1)[0]


def test_steps_on_a_terminal_is_live_and_closes_on_errors():
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100, color_system=None)
    with pytest.raises(KeyboardInterrupt):
        with steps(con) as say:
            assert isinstance(say, LiveSteps)
            say("window: 60 s")
            raise KeyboardInterrupt
    assert not say.progress.live.is_started and "(stopped)" in buf.getvalue()

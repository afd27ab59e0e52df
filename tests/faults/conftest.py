"""Fault-matrix fixtures and the summary table printed at the end of the run."""

from __future__ import annotations

import time

import pytest

from tests.faults.matrix import NOT_CELLS, RESULTS, Private

_STARTED = time.monotonic()
GROUPS = ("kill", "corrupt", "readonly")


@pytest.fixture
def priv():
    """A private state and cache directory; force-cleaned and removed after the test, whatever happened."""
    p = Private.make()
    try:
        yield p
    finally:
        p.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault matrix")
    head = (f"{'group':8} {'command':20} {'phase':20} {'fault':15} {'tried':>5} {'survived':>8} {'residue':>7} "
            f"{'s':>5}  note")
    tr.write_line(head)
    tr.write_line("-" * len(head))
    rows = sorted(RESULTS, key=lambda o: GROUPS.index(o.group))      # stable: run order within a group
    for o in rows:
        tr.write_line(f"{o.group:8} {o.command:20} {o.phase[:20]:20} {o.fault:15} {o.tried:>5} "
                      f"{int(o.survived) * o.tried:>8} {len(o.residue):>7} {o.seconds:>5.1f}  {o.note[:60]}")
    tried = sum(o.tried for o in RESULTS)
    survived = sum(o.tried for o in RESULTS if o.survived)
    residue = sum(len(o.residue) for o in RESULTS)
    tr.write_line("-" * len(head))
    tr.write_line(f"{'total':8} {len(RESULTS):>3} cells {'':47} {tried:>5} {survived:>8} {residue:>7} "
                  f"{sum(o.seconds for o in RESULTS):>5.0f}  (whole run: {time.monotonic() - _STARTED:.0f} s)")
    for cmd, why in NOT_CELLS.items():
        tr.write_line(f"not a cell: {cmd} ({why})")
    if survived != tried or residue:
        tr.write_line("FAILED cells:")
        for o in RESULTS:
            if not o.survived:
                tr.write_line(o.explain())

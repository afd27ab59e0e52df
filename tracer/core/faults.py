"""Fault injection for the fault matrix (tests/faults): die with SIGKILL at a named point.

`checkpoint(name)` is a no-op unless the environment variable CNITRACE_FAULT names that
checkpoint when the process starts: `CNITRACE_FAULT=before-record` kills the process the
first time a record is about to be appended, `before-record@3` the third time. The process
writes one line to fd 2 (`cnitrace: fault injected at before-record@3`) and sends itself
SIGKILL: no finally block, atexit handler or signal handler runs, exactly as with `kill -9`.
The matrix then checks that `cnitrace cleanup` leaves the node as it was found.

Cost when unarmed: one dict lookup. The checkpoints, and where they are:

    before-record   StateFile.record, before the record is appended ("@N+1": after the N-th
                    recorded object was created)
    after-record    StateFile.record, after the append: recorded, not yet created
    before-remove   state.cleanup, before each removal (a run's or a lab's teardown)
    lab-built       lab build, once the datapath is programmed (before the server pod starts)
    window          profile window once the probes are attached; sweep point before its
                    traffic; snapshot --interval before the interval
    report          before a result is written: the lab description, the profile document,
                    the sweep document
    calibrate       calibration bench, mid-measurement (each shape's rules just loaded)
"""

from __future__ import annotations

import os
import signal

CHECKPOINTS = ("before-record", "after-record", "before-remove", "lab-built", "window", "report", "calibrate")
ENV = "CNITRACE_FAULT"


def parse(spec: str | None) -> dict[str, int]:
    """`NAME` or `NAME@N` → {NAME: N} (N ≥ 1); empty when unset. Unknown names raise ValueError
    (a typo would otherwise leave a cell that silently never fires)."""
    if not spec:
        return {}
    name, _, nth = spec.partition("@")
    if name not in CHECKPOINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown checkpoint {name!r} (one of {', '.join(CHECKPOINTS)})")
    n = int(nth) if nth else 1
    if n < 1:
        raise ValueError(f"{ENV}={spec!r}: the count must be 1 or more")
    return {name: n}


_ARMED: dict[str, int] = parse(os.environ.get(ENV))
_SEEN: dict[str, int] = {}


def checkpoint(name: str) -> None:
    """SIGKILL this process if CNITRACE_FAULT names this checkpoint (and this is its N-th visit)."""
    nth = _ARMED.get(name)
    if nth is None:
        return
    seen = _SEEN[name] = _SEEN.get(name, 0) + 1
    if seen == nth:
        os.write(2, f"cnitrace: fault injected at {name}@{nth}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)

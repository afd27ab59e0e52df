"""What the state file records, and the process helpers its removers share.

A Record names one object cnitrace created (kind, name, owner); the removers (cnitrace.core.removers)
undo each kind. Kept apart from the state file itself so that the removers and the state file
import this module, and not each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from cnitrace.core.runner import Runner

PREFIX = "cnit"


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    owner: str      # "lab:<name>" for objects that outlive the process, "run:<pid>" otherwise
    kind: str       # a key of REMOVERS
    name: str
    data: dict[str, Any]
    created: float
    pid: int = 0                 # the process that recorded it (0 in state files older than this field)
    pid_start: str | None = None  # that process's kernel start time, so a reused pid is not "alive"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def creator_alive(self) -> bool:
        """Whether the process that recorded this object still runs (and is not this process).

        Records from before the pid field name their run in the owner (`run:<pid>`); those are
        checked by pid alone."""
        pid, start = self.pid, self.pid_start
        if not pid and self.owner.startswith("run:") and self.owner[4:].isdigit():
            pid = int(self.owner[4:])
        if not pid or pid == os.getpid():
            return False
        now = process_start_time(pid)
        return now is not None and (start is None or now == start)


Remover = Callable[[Record, Runner], None]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to guard against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie is as good as gone
    return fields[19]


def kill_process(pid: int, start_time: str | None, grace: float = 2.0) -> None:
    if start_time is not None and process_start_time(pid) != start_time:
        return  # gone, or the pid was reused by someone else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process_start_time(pid) != start_time:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

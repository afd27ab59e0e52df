"""The one owner of kernel-object lifetimes for a run.

`with Session() as s:` checks that the state directory takes a write (or refuses with one
line before anything exists), records objects through `s.track(...)` before they are created,
registers in-process resources (loaded BPF objects) with `s.on_exit(...)`, and on exit,
exception, SIGINT or SIGTERM removes them all. A second Ctrl-C while cleaning up is
ignored, so cleanup always finishes (double Ctrl-C safe).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable

from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.state import CleanupResult, Record, StateFile, cleanup


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread on the first SIGINT/SIGTERM."""


class Session:
    def __init__(self, owner: str | None = None, *, state: StateFile | None = None,
                 runner: Runner = DEFAULT_RUNNER, keep: bool = False, mark_kept: bool = True):
        self.owner = owner or f"run:{os.getpid()}"
        self.state = state or StateFile()
        self.runner = runner
        self.keep = keep            # True for `lab up`: objects outlive the process on success
        # False for a lab a run builds for itself (sweep, demo): its objects outlive the Session but
        # not the run; a node-wide cleanup after the run was killed removes them (no keep mark)
        self.mark_kept = mark_kept
        self._callbacks: list[Callable[[], Any]] = []
        self._old_handlers: dict[int, Any] = {}
        self._cleaning = False
        self.result: CleanupResult | None = None

    def track(self, kind: str, name: str, **data: Any) -> Record:
        return self.state.record(self.owner, kind, name, **data)

    def on_exit(self, fn: Callable[[], Any]) -> None:
        self._callbacks.append(fn)

    def _handler(self, signum: int, frame: Any) -> None:
        if self._cleaning:
            return  # already unwinding: ignore repeated Ctrl-C
        self._cleaning = True
        raise Interrupted(signal.Signals(signum).name)

    def __enter__(self) -> "Session":
        # Before anything is created: a run whose objects cannot be recorded must not start
        # (a read-only or full state directory refuses here with one line).
        self.state.check_writable()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old_handlers[sig] = signal.signal(sig, self._handler)
        return self

    def close(self, keep: bool = False) -> None:
        self._cleaning = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                signal.signal(sig, signal.SIG_IGN)
        try:
            while self._callbacks:
                fn = self._callbacks.pop()
                with contextlib.suppress(Exception):
                    fn()
            if keep:
                if self.mark_kept:
                    self.state.keep(self.owner)
            else:
                self.result = cleanup(self.state, self.owner, self.runner)
        finally:
            for sig, old in self._old_handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, old)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=self.keep and exc_type is None)

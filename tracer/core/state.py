"""The state file: every kernel or system object cnitrace creates is recorded here first.

Records are appended (JSON lines, fsync'd, under a lock) *before* the object is created,
and a tombstone is appended after it is removed. `cleanup()` removes whatever is still
live, newest first, so a run killed with -9 can be undone by `cnitrace cleanup`.
Removers are idempotent: removing something already gone is success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from cnitrace.core.records import PREFIX, Record, Remover, kill_process, pid_alive, process_start_time  # noqa: F401 (re-exported)
from cnitrace.core.removers import REMOVERS
from cnitrace.core.runner import DEFAULT_RUNNER, Runner


def state_dir() -> Path:
    return Path(os.environ.get("CNITRACE_STATE_DIR", "/run/cnitrace"))

class StateFile:
    def __init__(self, directory: Path | None = None):
        self.dir = directory or state_dir()
        self.path = self.dir / "state.jsonl"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "state.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield lock
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, entry: dict[str, Any]) -> None:
        with self._locked():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def record(self, owner: str, kind: str, name: str, **data: Any) -> Record:
        """Record an object about to be created. Call this *before* creating it."""
        if kind not in REMOVERS:
            raise ValueError(f"no remover for kind {kind!r}")
        rec = Record(uuid.uuid4().hex[:12], owner, kind, name, data, time.time())
        self._append({"op": "add", **rec.to_json()})
        return rec

    def forget(self, rec: Record) -> None:
        self._append({"op": "del", "id": rec.id})

    def live(self, owner: str | None = None) -> list[Record]:
        """Records not yet removed, oldest first. A torn last line is ignored."""
        with self._locked():
            out = self._live_unlocked()
        if owner is not None:
            out = [r for r in out if r.owner == owner]
        return out

    def _live_unlocked(self) -> list[Record]:
        if not self.path.exists():
            return []
        recs: dict[str, Record] = {}
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in lines:
            try:
                e = json.loads(line)
                if e["op"] == "add":
                    recs[e["id"]] = Record(e["id"], e["owner"], e["kind"], e["name"], e["data"], e["created"])
                elif e["op"] == "del":
                    recs.pop(e["id"], None)
            except (ValueError, KeyError, TypeError):
                continue
        return list(recs.values())

    def compact(self) -> None:
        """Rewrite the file with live records only (or delete it when none are left).

        Read and rewrite happen under one lock hold: a record appended by another process in
        between would otherwise be lost (and its object orphaned)."""
        with self._locked():
            live = self._live_unlocked()
            if not live:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"op": "add", **r.to_json()}, sort_keys=True) + "\n"
                                   for r in live), encoding="utf-8")
            os.replace(tmp, self.path)


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    removed: list[Record]
    failed: list[tuple[Record, str]]


def cleanup(state: StateFile, owner: str | None = None, runner: Runner = DEFAULT_RUNNER) -> CleanupResult:
    """Remove every live record (of `owner`, or all), newest first; never raises."""
    removed, failed = [], []
    for rec in reversed(state.live(owner)):
        fn = REMOVERS.get(rec.kind)
        try:
            if fn is None:
                raise ValueError(f"unknown kind {rec.kind!r}")
            fn(rec, runner)
        except Exception as exc:  # noqa: BLE001 - keep removing the rest
            failed.append((rec, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        state.forget(rec)
        removed.append(rec)
    state.compact()
    return CleanupResult(removed, failed)

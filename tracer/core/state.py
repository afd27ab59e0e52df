"""The state file: every kernel or system object cnitrace creates is recorded here first.

Records are appended (JSON lines, fsync'd, under a lock) *before* the object is created,
and a tombstone is appended after it is removed. `cleanup()` removes whatever is still
live, newest first, so a run killed with -9 can be undone by `cnitrace cleanup`.
Removers are idempotent: removing something already gone is success.

Each record names the process that made it (pid and kernel start time). `cleanup` of the
whole node leaves alone the objects of a process that still runs (another user's profile,
a test run in progress) and the labs a finished `lab up` kept on purpose (a "keep" line
marks them); it removes what a dead process left behind. `force` and naming a lab override.

A state directory that takes no write (read-only, full) is refused with one line before a run
creates anything (`check_writable`, called where a Session or a lab build starts); a damaged file
(garbage lines, records of the wrong shape) is read around with one warning line, and the next
append starts on a line of its own. Fault-injection checkpoints (cnitrace.core.faults) sit around
every append and before every removal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from cnitrace.core import faults
from cnitrace.core.errors import ToolError
from cnitrace.core.files import write_atomic
from cnitrace.core.records import PREFIX, Record, Remover, kill_process, pid_alive, process_start_time  # noqa: F401 (re-exported)
from cnitrace.core.removers import REMOVERS
from cnitrace.core.runner import DEFAULT_RUNNER, Runner


def state_dir() -> Path:
    return Path(os.environ.get("CNITRACE_STATE_DIR", "/run/cnitrace"))


def _unwritable(directory: Path, exc: OSError) -> ToolError:
    return ToolError(f"state directory {directory} is not writable ({exc.strerror or exc}): cnitrace records "
                     f"every object there before creating it; free it, or point CNITRACE_STATE_DIR elsewhere")


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """One line on stderr, once per process (every command reads the state file, often many times)."""
    if key not in _warned:
        _warned.add(key)
        print(f"cnitrace: warning: {message}", file=sys.stderr)


class StateFile:
    def __init__(self, directory: Path | None = None):
        self.dir = directory or state_dir()
        self.path = self.dir / "state.jsonl"

    def check_writable(self) -> None:
        """Refuse, with one line, to start a run whose objects could not be recorded: write, fsync
        and remove a small probe file in the state directory (read-only or full: ToolError)."""
        probe = self.dir / f".probe-{os.getpid()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                with open(probe, "wb") as f:
                    f.write(b"cnitrace state directory check\n" * 8)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    probe.unlink()
        except OSError as exc:
            raise _unwritable(self.dir, exc) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = open(self.dir / "state.lock", "a+")
        except OSError as exc:
            # A read-only directory can still be read (what is recorded, what cleanup would remove);
            # every write then refuses with the same one line.
            try:
                lock = open(self.dir / "state.lock")
            except FileNotFoundError:
                if not self.dir.is_dir() or self.path.exists():
                    raise _unwritable(self.dir, exc) from None
                yield None          # nothing was ever recorded here, and nothing can be
                return
            except OSError:
                raise _unwritable(self.dir, exc) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield lock
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with self._locked():
            try:
                with open(self.path, "ab+") as f:
                    # A line torn by a crash (or a full disk) must not swallow this one.
                    if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                        line = b"\n" + line
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise _unwritable(self.dir, exc) from None

    def record(self, owner: str, kind: str, name: str, **data: Any) -> Record:
        """Record an object about to be created. Call this *before* creating it."""
        if kind not in REMOVERS:
            raise ValueError(f"no remover for kind {kind!r}")
        pid = os.getpid()
        rec = Record(uuid.uuid4().hex[:12], owner, kind, name, data, time.time(), pid, process_start_time(pid))
        faults.checkpoint("before-record")
        self._append({"op": "add", **rec.to_json()})
        faults.checkpoint("after-record")
        return rec

    def keep(self, owner: str) -> None:
        """Mark `owner`'s objects recorded so far as meant to outlive their process (a lab)."""
        self._append({"op": "keep", "owner": owner, "at": time.time()})

    def marks(self) -> dict[str, float]:
        """owner → time of its latest keep mark (records made until then are kept on purpose)."""
        with self._locked():
            return self._marks_unlocked()

    def forget(self, rec: Record) -> None:
        self._append({"op": "del", "id": rec.id})

    def live(self, owner: str | None = None) -> list[Record]:
        """Records not yet removed, oldest first. A torn last line is ignored."""
        with self._locked():
            out = self._live_unlocked()
        if owner is not None:
            out = [r for r in out if r.owner == owner]
        return out

    def _entries(self) -> Iterator[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ToolError(f"cannot read the state file {self.path}: {exc.strerror or exc}") from None
        lines = text.splitlines()
        bad = 0
        for i, line in enumerate(lines):
            try:
                e = json.loads(line)
            except ValueError:
                e = None
            if isinstance(e, dict):
                yield e
            elif line.strip() and not (i == len(lines) - 1 and not text.endswith("\n")):
                bad += 1   # (a torn last line is what kill -9 mid-write leaves: not worth a word)
        if bad:
            _warn_once(f"lines:{self.path}", f"{self.path}: {bad} unreadable line(s) ignored (a damaged state "
                       f"file; objects they recorded are not tracked and are dropped when it is next compacted)")

    def _live_unlocked(self) -> list[Record]:
        recs: dict[str, Record] = {}
        bad = 0
        for e in self._entries():
            try:
                if e["op"] == "add":
                    rec = Record(e["id"], e["owner"], e["kind"], e["name"], e["data"], float(e["created"]),
                                 int(e.get("pid") or 0), e.get("pid_start"))
                    if not (all(isinstance(v, str) for v in (rec.id, rec.owner, rec.kind, rec.name))
                            and isinstance(rec.data, dict) and isinstance(rec.pid_start, (str, type(None)))):
                        raise TypeError("a field of the wrong type")
                    recs[rec.id] = rec
                elif e["op"] == "del":
                    recs.pop(e["id"], None)
            except (KeyError, TypeError, ValueError):
                bad += 1
                continue
        if bad:
            _warn_once(f"records:{self.path}", f"{self.path}: {bad} malformed record(s) ignored")
        return list(recs.values())

    def _marks_unlocked(self) -> dict[str, float]:
        """owner → time of its latest keep mark."""
        marks: dict[str, float] = {}
        for e in self._entries():
            if e.get("op") == "keep" and isinstance(e.get("owner"), str):
                with contextlib.suppress(TypeError, ValueError):
                    marks[e["owner"]] = max(marks.get(e["owner"], 0.0), float(e.get("at", 0.0)))
        return marks

    def compact(self) -> None:
        """Rewrite the file with live records only (or delete it when none are left).

        Read and rewrite happen under one lock hold: a record appended by another process in
        between would otherwise be lost (and its object orphaned)."""
        with self._locked():
            live = self._live_unlocked()
            if not live:
                self.path.unlink(missing_ok=True)
                return
            owners = {r.owner for r in live}
            marks = [{"op": "keep", "owner": o, "at": t} for o, t in self._marks_unlocked().items() if o in owners]
            write_atomic(self.path, "".join(json.dumps(e, sort_keys=True) + "\n"
                                            for e in [*({"op": "add", **r.to_json()} for r in live), *marks]))


def _kept(rec: Record, marks: dict[str, float]) -> bool:
    if rec.owner in marks:
        return rec.created <= marks[rec.owner]
    # State files from before keep marks: a lab's records carry no pid; treat them as kept.
    return rec.owner.startswith("lab:") and not rec.pid


# Objects several runs may hold at once (the bpf_stats sysctl): removing one run's record
# restores the original value only when no other live run still holds the same object.
SHARED_KINDS = frozenset({"sysctl"})


def holders(state: StateFile, kind: str, name: str, *, besides: str = "") -> list[Record]:
    """Live records of (kind, name) other than `besides` whose process still runs (or is this one)."""
    return [r for r in state.live() if r.kind == kind and r.name == name and r.id != besides
            and (r.creator_alive() or r.pid == os.getpid())]


def _held_elsewhere(rec: Record, state: StateFile) -> bool:
    return bool(holders(state, rec.kind, rec.name, besides=rec.id))


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    removed: list[Record]
    failed: list[tuple[Record, str]]
    kept: list[tuple[Record, str]] = dataclasses.field(default_factory=list)   # (record, why)


def spared(rec: Record, marks: dict[str, float], labs: frozenset[str] | None) -> str | None:
    """Why a node-wide cleanup must leave `rec` alone, or None to remove it.

    `labs`: lab names the user named (None: every lab, i.e. `--all`)."""
    if rec.creator_alive():
        return f"in use by pid {rec.pid or rec.owner[4:]}"
    if _kept(rec, marks) and labs is not None and rec.owner.removeprefix("lab:") not in labs:
        name = rec.owner.removeprefix("lab:")
        return f"lab {name} (remove it with `cnitrace lab down --name {name}` or `cnitrace cleanup --lab {name}`)"
    return None


def cleanup(state: StateFile, owner: str | None = None, runner: Runner = DEFAULT_RUNNER, *,
            labs: frozenset[str] | None = frozenset(), force: bool = False) -> CleanupResult:
    """Remove live records newest first; never raises.

    With `owner` (a run's own exit, `lab down`): every record of that owner. Without it (the
    node-wide `cnitrace cleanup`): what dead processes left behind, plus the labs named in
    `labs` (None for all); `force` removes records of live processes too."""
    removed, failed, kept = [], [], []
    recs = state.live(owner)
    if owner is None and not force:
        marks = state.marks()
        todo = []
        for rec in recs:
            why = spared(rec, marks, labs)
            (kept.append((rec, why)) if why else todo.append(rec))
        recs = todo
    for rec in reversed(recs):
        faults.checkpoint("before-remove")
        fn = REMOVERS.get(rec.kind)
        try:
            if rec.kind in SHARED_KINDS and _held_elsewhere(rec, state):
                pass              # released: the run still holding it restores it when it ends
            elif fn is None:
                raise ValueError(f"unknown kind {rec.kind!r}")
            else:
                fn(rec, runner)
        except Exception as exc:  # noqa: BLE001 - keep removing the rest
            failed.append((rec, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        # The object is gone; a tombstone that cannot be written (a full disk) only means the
        # next cleanup removes it again, which removers take as success.
        with contextlib.suppress(ToolError):
            state.forget(rec)
        removed.append(rec)
    with contextlib.suppress(ToolError, OSError):
        state.compact()
    return CleanupResult(removed, failed, kept)

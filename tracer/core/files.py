"""Files that several cnitrace processes share (caches, lab descriptions): an exclusive lock
beside the file, and writes that a concurrent reader never sees half done.

Two profiles started together must not both calibrate (each would disturb the other's timing
and the slower would overwrite the faster's entry), and a reader must never parse a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` + '.lock' for the block (released on exit or process death)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_if_unlocked(path: Path) -> bool:
    """Delete `path` + '.lock' when nobody holds it (a builder killed -9 leaves the file, not the lock)."""
    lock = path.with_name(path.name + ".lock")
    try:
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.unlink(missing_ok=True)
            return True
    except (BlockingIOError, FileNotFoundError):
        return False


def write_atomic(path: Path, text: str) -> None:
    """Write through a per-process temporary file and rename it over `path` (atomic on one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

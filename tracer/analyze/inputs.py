"""Reading the files to analyse: paths, directories and comma lists, and what each one holds (I/O edge).

A side of `cnitrace diff` may be a saved profile (the profile diff), or dumps: one file, a
directory of them, or a comma-separated list. Everything after reading is pure (analyze.dumps).
"""

from __future__ import annotations

import json
from pathlib import Path

from cnitrace.analyze.dumps import Dump, Skipped, read_text
from cnitrace.core.errors import UsageError

MAX_BYTES = 512 * 1024 * 1024   # a dump bigger than this is not a node's ruleset


class UnrecognisedInput(UsageError):
    """A file that holds no output of a tool analyze knows."""


def expand(arg: str) -> list[tuple[Path, bool]]:
    """The files one argument names, each with whether it was named itself (not found in a directory):
    a file, a directory's regular files (sorted, hidden ones skipped), or a comma-separated list of either."""
    out: list[tuple[Path, bool]] = []
    parts = [p for p in arg.split(",") if p] if "," in arg and _kind(Path(arg), quiet=True) == "missing" else [arg]
    for part in parts:
        p = Path(part)
        kind = _kind(p)
        if kind == "dir":
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise UsageError(f"{p}: an empty directory")
            out += [(f, False) for f in files]
        elif kind == "file":
            out.append((p, True))
        else:
            raise UsageError(f"{p}: no such file")
    return out


def _kind(p: Path, quiet: bool = False) -> str:
    """"dir", "file" or "missing"; a name the system refuses (longer than NAME_MAX) is one clear line,
    or "missing" when `quiet` (a comma-separated list is then split)."""
    try:
        return "dir" if p.is_dir() else "file" if p.exists() else "missing"
    except OSError as exc:
        if quiet:
            return "missing"
        name = str(p)
        raise UsageError(f"{name[:80]}{'…' if len(name) > 80 else ''}: {exc.strerror or exc.__class__.__name__}") \
            from None


def read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(f"{path}: {size / 1e6:.0f} MB is too large to be a node dump")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if b"\0" in data[:65536]:
        raise UnrecognisedInput(f"{path}: binary data, not a tool's text output")
    return data.decode("utf-8", errors="replace")


def load(args: list[str] | tuple[str, ...]) -> list[Dump | Skipped]:
    """Every section of every file named. A file named on the command line that holds nothing analyze
    knows is an error (one line); one found in a directory is reported as skipped, unless nothing at
    all was recognised."""
    items: list[Dump | Skipped] = []
    for arg in args:
        for path, named in expand(arg):
            try:
                got = read_text(read(path), str(path))
            except UnrecognisedInput as exc:
                if named:
                    raise
                items.append(Skipped(str(path), 1, None, 1, exc.message.split(": ", 1)[-1]))
                continue
            if not any(isinstance(x, Dump) for x in got):
                why = got[0].reason if got else "empty"
                more = f" (and {len(got) - 1} more section(s))" if len(got) > 1 else ""
                if named:
                    raise UnrecognisedInput(f"{path}: not a dump analyze knows: {why}{more}")
            items += got
    if not any(isinstance(x, Dump) for x in items):
        raise UnrecognisedInput(f"{', '.join(args)}: no file holds a dump analyze knows")
    return items


def is_profile_document(arg: str) -> bool:
    """True when `arg` is one file holding a saved cnitrace profile (JSON with its schema version and tree)."""
    p = Path(arg)
    try:
        if not p.is_file():
            return False
    except OSError:              # a name the system refuses: expand() says so in one line
        return False
    try:
        with p.open("rb") as f:
            head = f.read(1)
            if head not in (b"{",):
                return False
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "tree" in doc and "schema_version" in doc

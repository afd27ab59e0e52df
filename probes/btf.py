"""Read kernel type layout from `bpftool btf dump file /sys/kernel/btf/vmlinux` (text form).

The host's kernel headers may not match the running kernel (bcc here compiles against a
stand-in), so the probes never trust header struct layouts: the few field offsets they
need (skb->dev, dev->ifindex, ...) and the drop-reason enum come from the kernel's own
BTF and reach the C code as -D cflags. `parse()` is pure; `load()` does the I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from typing import Iterable

from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

BTF_DIR = "/sys/kernel/btf"
VMLINUX_BTF = f"{BTF_DIR}/vmlinux"

_HEADER = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\t'([^']*)'(.*)$")
_ATTR = re.compile(r"(\w+)=(-?\w+)")


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    attrs: dict[str, str]


@dataclasses.dataclass(frozen=True)
class BtfType:
    id: int
    kind: str
    name: str
    attrs: dict[str, str]
    members: tuple[Member, ...]


class BtfError(LookupError):
    """A type or field the probes need is not in this kernel's BTF."""


class Btf:
    """An index over the dump; types are parsed on first use (the full dump has ~130k)."""

    def __init__(self, lines: list[str], starts: dict[int, int], by_name: dict[tuple[str, str], int],
                 problems: tuple[str, ...] = ()):
        self._lines = lines
        self._starts = starts          # type id -> index of its header line
        self.by_name = by_name         # (kind, name) -> first id with that name
        self.problems = problems
        self._parsed: dict[int, BtfType] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def type(self, type_id: int) -> BtfType:
        t = self._parsed.get(type_id)
        if t is None:
            i = self._starts.get(type_id)
            if i is None:
                raise BtfError(f"type id {type_id} missing from the BTF dump")
            m = _HEADER.match(self._lines[i])
            members = []
            for line in self._lines[i + 1:]:
                if not line.startswith("\t"):
                    break
                mm = _MEMBER.match(line)
                if mm:   # DATASEC entries have no quoted name; the probes never need them
                    members.append(Member(mm[1], dict(_ATTR.findall(mm[2]))))
            t = BtfType(type_id, m[2], m[3], dict(_ATTR.findall(m[4])), tuple(members))
            self._parsed[type_id] = t
        return t

    def named(self, kind: str, name: str) -> BtfType:
        if (kind, name) not in self.by_name:
            raise BtfError(f"no {kind} {name!r} in the kernel's BTF")
        return self.type(self.by_name[(kind, name)])

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator name -> value for `enum name` (ENUM or ENUM64)."""
        for kind in ("ENUM", "ENUM64"):
            if (kind, name) in self.by_name:
                t = self.type(self.by_name[(kind, name)])
                return {m.name: int(m.attrs["val"]) for m in t.members if "val" in m.attrs}
        raise BtfError(f"no enum {name!r} in the kernel's BTF")

    def _resolve(self, type_id: int) -> BtfType:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(32):
            t = self.type(type_id)
            if t.kind not in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
                return t
            type_id = int(t.attrs["type_id"])
        raise BtfError(f"typedef loop at type id {type_id}")

    def _find(self, t: BtfType, field: str, base: int) -> tuple[int, BtfType] | None:
        """Byte offset and type of `field` in struct/union t, looking inside anonymous members."""
        for m in t.members:
            if "bits_offset" not in m.attrs:
                continue
            bits = int(m.attrs["bits_offset"])
            if m.name == field:
                if "bitfield_size" in m.attrs or bits % 8:
                    raise BtfError(f"{t.name}.{field} is a bitfield")
                return base + bits // 8, self._resolve(int(m.attrs["type_id"]))
            if m.name == "(anon)":
                inner = self._resolve(int(m.attrs["type_id"]))
                if inner.kind in ("STRUCT", "UNION"):
                    found = self._find(inner, field, base + bits // 8)
                    if found:
                        return found
        return None

    def offset(self, struct: str, path: str) -> int:
        """Byte offset of a dotted field path inside `struct struct` (embedded members only)."""
        t = self.named("STRUCT", struct)
        off = 0
        for part in path.split("."):
            if t.kind not in ("STRUCT", "UNION"):
                raise BtfError(f"{struct}.{path}: {part!r} is inside a non-struct ({t.kind})")
            found = self._find(t, part, off)
            if found is None:
                raise BtfError(f"no field {part!r} in struct {t.name or '(anon)'} (looking for {struct}.{path})")
            off, t = found
        return off


def parse(text: str | Iterable[str]) -> Btf:
    """Index bpftool's text BTF dump. Header lines it cannot read are reported, not fatal."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    starts: dict[int, int] = {}
    by_name: dict[tuple[str, str], int] = {}
    problems: list[str] = []
    for i, line in enumerate(lines):
        if line[:1] != "[":
            if line and line[0] not in "\t#":   # '#': a provenance comment in a saved dump
                problems.append(f"line {i + 1}: unexpected text")
            continue
        close = line.find("] ")
        q1 = line.find(" '", close)
        q2 = line.find("'", q1 + 2)
        try:
            if close < 0 or q1 < 0 or q2 < 0:
                raise ValueError
            tid = int(line[1:close])
        except ValueError:
            problems.append(f"line {i + 1}: unreadable type header")
            continue
        kind, name = line[close + 2:q1], line[q1 + 2:q2]
        starts[tid] = i
        if name != "(anon)":
            by_name.setdefault((kind, name), tid)
    if not starts:
        problems.append("no BTF types found")
    return Btf(lines, starts, by_name, tuple(problems[:20]))


def parse_split(base: Btf, text: str) -> Btf:
    """A module's split BTF (its ids continue after vmlinux's) on top of its base. Each module
    gets its own view: two modules' ids overlap, so they must never share one index."""
    mod = parse(text)
    shift = len(base._lines)
    starts = dict(base._starts)
    starts.update({tid: i + shift for tid, i in mod._starts.items()})
    by_name = dict(base.by_name)
    for key, tid in mod.by_name.items():
        by_name.setdefault(key, tid)
    problems = tuple(p for p in mod.problems if p != "no BTF types found")
    return Btf(base._lines + mod._lines, starts, by_name, problems)


class BtfSet:
    """vmlinux plus loaded modules' views, searched in that order; the Btf interface probes use."""

    def __init__(self, base: Btf, modules: dict[str, Btf] | None = None):
        self.base = base
        self.modules = dict(modules or {})
        self.by_name = dict(base.by_name)
        for m in self.modules.values():
            for key, tid in m.by_name.items():
                self.by_name.setdefault(key, tid)
        self.problems = base.problems + tuple(p for m in self.modules.values() for p in m.problems)

    def __len__(self) -> int:
        return len(self.base)

    def _layers(self) -> list[Btf]:
        return [self.base, *self.modules.values()]

    def offset(self, struct: str, path: str) -> int:
        for layer in self._layers():
            if ("STRUCT", struct) in layer.by_name:
                return layer.offset(struct, path)
        raise BtfError(f"no STRUCT {struct!r} in the kernel's BTF")

    def enum(self, name: str) -> dict[str, int]:
        for layer in self._layers():
            if ("ENUM", name) in layer.by_name or ("ENUM64", name) in layer.by_name:
                return layer.enum(name)
        raise BtfError(f"no enum {name!r} in the kernel's BTF")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, modules: tuple[str, ...], runner: Runner) -> BtfSet:
    base = parse(runner.run(["bpftool", "btf", "dump", "file", path], timeout=60).stdout)
    views = {}
    for m in modules:
        mod = f"{BTF_DIR}/{m}"
        if os.path.exists(mod):
            views[m] = parse_split(base, runner.run(["bpftool", "-B", path, "btf", "dump", "file", mod],
                                                    timeout=60).stdout)
    btf = BtfSet(base, views)
    if btf.problems:
        warnings.warn(f"BTF dump of {path}: {len(btf.problems)} unreadable part(s), e.g. {btf.problems[0]}")
    return btf


def load(path: str = VMLINUX_BTF, runner: Runner = DEFAULT_RUNNER, modules: tuple[str, ...] = ()) -> BtfSet:
    """The running kernel's BTF, plus the named modules' when they are loaded (cached per
    process: the dump takes about half a second)."""
    present = tuple(m for m in modules if os.path.exists(f"{BTF_DIR}/{m}"))   # a module may load later
    try:
        return _load_cached(path, present, runner)
    except ToolError as exc:
        raise ToolError(f"cannot read kernel BTF: {exc.message}") from None

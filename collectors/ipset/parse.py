"""Pure parser for `ipset save` and `ipset list` output (and `ipset restore` scripts people paste).

kube-proxy in IPVS mode, kube-router and Weave keep their policy and service state in ipsets, and an
iptables rule matching a set costs one hash lookup whatever its size: what the cost model needs
from a set is its type, its size (declared and listed) and who references it. Both output forms
give the same IpSet records:
- `ipset save`: `create NAME TYPE [options]` and one `add NAME MEMBER [options]` per member; the
  restore verbs kube-router logs (`flush`, `swap`, `rename`, `destroy`, `del`, `-exist`) are applied;
- `ipset list`: `Name:`/`Type:`/`Header:`/`Size in memory:`/`References:`/`Number of entries:` and
  the members after `Members:` (none with `-t`; `Number of entries` is missing before ipset 6.30).
Members' `packets N bytes M` are summed when the set was created with `counters`. A listing that
shows fewer members than it declares was cut short, and says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.iptables.parse import maybe_noise, paste_noise

FLAGS = frozenset({"counters", "comment", "skbinfo", "forceadd"})
LIST_FIELDS = frozenset({"Type", "Revision", "Header", "Size in memory", "References", "Number of entries", "Members"})
_INT_OPTIONS = {"hashsize": "hashsize", "maxelem": "maxelem", "timeout": "timeout", "size": "capacity"}
_OTHER_OPTIONS = frozenset({"netmask", "bucketsize", "initval", "markmask", "probes", "resize"})


@dataclasses.dataclass(frozen=True)
class IpSet:
    """One set. `entries` is the count the listing declares, `members` the member lines read (None
    when the text has no member list, as with `ipset list -t`)."""

    name: str
    type: str                       # hash:ip, hash:net, hash:ip,port, bitmap:port, list:set, ...
    family: str | None = None       # inet | inet6; None for bitmap and list types
    maxelem: int | None = None
    hashsize: int | None = None
    entries: int | None = None      # "Number of entries:" (None in `ipset save` and old ipset)
    members: int | None = None
    references: int | None = None   # "References:" (None in `ipset save`)
    capacity: int | None = None     # list:set `size N`: how many sets it can hold
    range: str | None = None        # bitmap range
    timeout: int | None = None      # default member timeout of a set with timeouts
    memory: int | None = None       # "Size in memory:", bytes
    options: tuple[str, ...] = ()   # counters, comment, skbinfo, forceadd
    packets: int | None = None      # members' counters summed (sets created with `counters`)
    bytes: int | None = None

    @property
    def has_counters(self) -> bool:
        return "counters" in self.options

    @property
    def key(self) -> tuple[str, str]:
        return ("ipset", self.name)

    @property
    def counters(self) -> dict[str, int]:
        out = {"members": self.members if self.members is not None else (self.entries or 0)}
        if self.has_counters:
            out.update(packets=self.packets or 0, bytes=self.bytes or 0)
        return out


def parse_save(text: str) -> Parsed[IpSet]:
    """Parse `ipset save` / `ipset list` output (either, or both concatenated) into IpSets, in order."""
    w = Warnings()
    if not isinstance(text, str):
        w.add(f"expected text, got {type(text).__name__}")
        return Parsed((), w.freeze())
    sets: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None       # the `ipset list` block being read
    in_members = False
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().strip("`").strip()
        if not line:
            in_members = False
            continue
        if line[0] == "#" or line.startswith(("```", "~~~")):
            continue
        word, _, rest = line.partition(" ")
        if word == "Name:":
            name = rest.strip()
            cur = sets.setdefault(name, _new(name))
            cur["listed"] = True
            in_members = False
            continue
        if in_members and cur is not None:
            kind = maybe_noise(line)
            if kind is None:
                _member(cur, line, w, no)
            elif kind == "truncated":
                w.add(f"listing truncated at line {no}")
            continue
        if cur is not None and line.partition(":")[0] in LIST_FIELDS and _list_field(cur, line, w, no):
            if line == "Members:":
                in_members = True
                cur["members"] = cur["members"] or 0
            continue
        if word == "create":
            _create(sets, rest, w, no)
            cur = None
        elif word == "add":
            name, _, member = rest.partition(" ")
            s = sets.get(name)
            if s is None:
                w.add(f"member of an undeclared set {name!r}", no)
                s = sets.setdefault(name, _new(name))
            _member(s, member, w, no)
        elif word == "del":
            s = sets.get(rest.partition(" ")[0])
            if s is not None and s["members"]:
                s["members"] -= 1
        elif word in ("flush", "destroy", "swap", "rename"):
            _restore_verb(sets, word, rest.split(), w, no)
        else:
            kind = paste_noise(line)
            if kind == "truncated":
                w.add(f"listing truncated at line {no}")
            elif kind is None:
                w.add(f"unexpected line {line[:60]!r}", no)
    out = []
    for s in sets.values():
        if s["type"] is None:
            w.add(f"set {s['name']!r} has no type (its create line or Type: was cut)")
        if s["entries"] is not None and s["members"] is not None and s["members"] < s["entries"] \
                and s["listed"]:
            w.add(f"set {s['name']!r} lists {s['members']} of its {s['entries']} entries (truncated?)")
        out.append(_record(s))
    return Parsed(tuple(out), w.freeze())


def _new(name: str) -> dict[str, Any]:
    return {"name": name, "type": None, "family": None, "maxelem": None, "hashsize": None, "entries": None,
            "members": None, "references": None, "capacity": None, "range": None, "timeout": None, "memory": None,
            "options": [], "packets": 0, "bytes": 0, "listed": False}


def _record(s: dict[str, Any]) -> IpSet:
    typ = s["type"] or "?"
    family = s["family"] or ("inet" if typ.startswith("hash:") and not typ.endswith(":mac") else None)
    counted = "counters" in s["options"]
    return IpSet(s["name"], typ, family, s["maxelem"], s["hashsize"], s["entries"], s["members"],
                 s["references"], s["capacity"], s["range"], s["timeout"], s["memory"], tuple(s["options"]),
                 s["packets"] if counted else None, s["bytes"] if counted else None)


def _options(s: dict[str, Any], words: list[str], w: Warnings, no: int) -> None:
    """`family inet hashsize 1024 maxelem 65536 timeout 0 counters comment ...` (create line or Header:)."""
    i = 0
    while i < len(words):
        k = words[i]
        if k in FLAGS:
            if k not in s["options"]:
                s["options"].append(k)
            i += 1
            continue
        if i + 1 >= len(words):
            if k != "-exist":
                w.add(f"option {k!r} of set {s['name']!r} without a value", no)
            break
        v = words[i + 1]
        if k in _INT_OPTIONS:
            if v.isdecimal() and v.isascii():
                s[_INT_OPTIONS[k]] = int(v)
            else:
                w.add(f"bad {k} {v[:20]!r} for set {s['name']!r}", no)
        elif k in ("family", "range"):
            s[k] = v
        elif k not in _OTHER_OPTIONS:
            w.add(f"unknown option {k!r} of set {s['name']!r}", no)
        i += 2


def _create(sets: dict[str, dict[str, Any]], rest: str, w: Warnings, no: int) -> None:
    words = rest.split()
    if len(words) < 2:
        w.add(f"bad create line {rest[:60]!r}", no)
        return
    name, typ = words[0], words[1]
    s = sets.setdefault(name, _new(name))   # `create -exist` of an existing set keeps its members
    s["type"] = typ
    s["members"] = s["members"] or 0
    _options(s, [x for x in words[2:] if x != "-exist"], w, no)


def _member(s: dict[str, Any], text: str, w: Warnings, no: int) -> None:
    """One member: `10.96.0.1,tcp:443 [timeout 0] [packets 10 bytes 430] [comment "x"]`."""
    s["members"] = (s["members"] or 0) + 1
    if "packets " not in text:
        return
    words = text.split()
    for i, k in enumerate(words[:-1]):
        if k in ("packets", "bytes"):
            v = words[i + 1]
            if v.isdecimal() and v.isascii():
                s[k] += int(v)
            else:
                w.add(f"bad {k} {v[:20]!r} in set {s['name']!r}", no)


def _list_field(s: dict[str, Any], line: str, w: Warnings, no: int) -> bool:
    """A `Field: value` line of an `ipset list` block; False if it is not one."""
    field, _, value = line.partition(":")
    value = value.strip()
    if field == "Type":
        s["type"] = value
    elif field == "Header":
        _options(s, value.split(), w, no)
    elif field in ("Size in memory", "References", "Number of entries", "Revision"):
        if not (value.isdecimal() and value.isascii()):
            w.add(f"bad {field} {value[:20]!r} for set {s['name']!r}", no)
        elif field != "Revision":
            s[{"Size in memory": "memory", "References": "references", "Number of entries": "entries"}[field]] = \
                int(value)
    elif field == "Members" and value:
        return False
    return True


def _restore_verb(sets: dict[str, dict[str, Any]], verb: str, args: list[str], w: Warnings, no: int) -> None:
    """flush / destroy / swap / rename as `ipset restore` applies them (kube-router's sync scripts)."""
    args = [a for a in args if a != "-exist"]
    if not args:
        if verb in ("flush", "destroy"):      # without a name: every set
            for s in list(sets.values()):
                if verb == "flush":
                    s.update(members=0, packets=0, bytes=0)
            if verb == "destroy":
                sets.clear()
        return
    a = args[0]
    if verb == "flush" and a in sets:
        sets[a].update(members=0, packets=0, bytes=0)
    elif verb == "destroy":
        sets.pop(a, None)
    elif verb in ("swap", "rename") and len(args) > 1:
        b = args[1]
        if a not in sets or (verb == "swap" and b not in sets):
            w.add(f"{verb} of an unknown set {a if a not in sets else b!r}", no)
            return
        if verb == "rename":
            s = sets.pop(a)
            s["name"] = b
            sets[b] = s
        else:
            sa, sb = sets[a], sets[b]
            sets[a], sets[b] = sb, sa
            sa["name"], sb["name"] = b, a

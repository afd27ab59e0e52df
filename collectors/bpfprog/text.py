"""Pure parsers for bpftool's plain-text output: `prog show`, `map show`, `net show`.

What people paste from a node is the text form (`-j` is what cnitrace runs itself), so these
return the same records as the JSON parsers in `parse.py` and a text dump and a JSON dump of
one instant compare equal. bpftool prints one header line per object and indented detail
lines; pastes lose the indentation, so a line is classified by its content, not its margin.
"""

from __future__ import annotations

import re

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.bpfprog.parse import Attachment, BpfMap, BpfProg
from cnitrace.collectors.pasted import is_command, paste_lines

_HEAD = re.compile(r"^(\d+):\s+(type \d+|\S+)(?:\s+(.*))?$")
_ELIDED = ("...", "…", "[...]", "[…]")


def _pairs(tokens: list[str], keys: set[str]) -> tuple[dict[str, str], list[str]]:
    """'name x  tag y  gpl' -> ({'name': 'x', 'tag': 'y'}, ['gpl']): keyed values and bare words."""
    vals: dict[str, str] = {}
    words: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in keys and i + 1 < len(tokens):
            vals[tokens[i]] = tokens[i + 1]
            i += 2
        else:
            words.append(tokens[i])
            i += 1
    return vals, words


def _uint(v: str | None, what: str) -> int:
    v = (v or "0").rstrip("B")
    if not (v.isascii() and v.isdigit()):
        raise ValueError(f"{what} is not a count: {v[:20]!r}")
    return int(v)


def _ids(v: str | None) -> tuple[int, ...]:
    return tuple(_uint(x, "map id") for x in (v or "").split(",") if x)


def _objects(text: str, head_keys: set[str], detail_keys: set[str], ignored: tuple[str, ...],
             what: str, w: Warnings) -> list[dict[str, str]]:
    """One dict per object of a `bpftool prog|map show` paste: its header's id, type and keyed
    values, updated by the keyed values of its detail lines. An elided stretch ('...') is warned
    about once with its count: the objects there are missing, not absent."""
    out: list[dict[str, str]] = []
    elided = 0
    for no, s in paste_lines(text):
        if s in _ELIDED:
            elided += 1
            continue
        if is_command(s, "bpftool"):
            continue
        m = _HEAD.match(s)
        if m and not m.group(2).endswith(":"):
            vals, _ = _pairs((m.group(3) or "").split(), head_keys)
            out.append({"id": m.group(1), "type": m.group(2), **vals})
            continue
        if not out:
            w.add(f"not a bpftool {what} line: {s[:120]}", no)
            continue
        first = s.split(None, 1)[0]
        if first in detail_keys:
            out[-1].update(_pairs(s.split(), detail_keys)[0])
        elif first not in ignored and " = " not in s:
            w.add(f"unrecognised {what} detail: {s[:120]}", no)
    if elided:
        w.add(f"{elided} elided part(s) ('...'): {what}s there are missing")
    return out


_PROG_HEAD = {"name", "tag", "run_time_ns", "run_cnt", "recursion_misses"}
_PROG_DETAIL = {"loaded_at", "uid", "xlated", "jited", "memlock", "map_ids", "btf_id"}


_MAP_HEAD = {"name", "flags"}
_MAP_DETAIL = {"key", "value", "max_entries", "memlock", "btf_id", "owner_prog_type"}
# the kernel's map types as bpftool names them (`35: percpu_hash  name cilium_metrics  flags 0x1`):
# a `bpftool map show` pasted under a `prog show` (or the reverse) without a prompt between them
# has the same header shape, and is told apart by its type
MAP_TYPES = frozenset({
    "hash", "array", "prog_array", "perf_event_array", "percpu_hash", "percpu_array", "stack_trace",
    "cgroup_array", "lru_hash", "lru_percpu_hash", "lpm_trie", "array_of_maps", "hash_of_maps", "devmap",
    "sockmap", "cpumap", "xskmap", "sockhash", "cgroup_storage", "reuseport_sockarray", "percpu_cgroup_storage",
    "queue", "stack", "sk_storage", "devmap_hash", "struct_ops", "ringbuf", "inode_storage", "task_storage",
    "bloom_filter", "user_ringbuf", "cgrp_storage", "arena"})
_IGNORED = ("pids", "metadata:", "offloaded", "pinned", "frozen", "owner")


def _is_map(cur: dict[str, str]) -> bool:
    return cur["type"] in MAP_TYPES or "max_entries" in cur


def _records(text: str, what: str) -> Parsed[BpfProg | BpfMap]:
    """Programs and maps of a `bpftool prog show` or `map show` paste, each read by its own type."""
    w = Warnings()
    out: list[BpfProg | BpfMap] = []
    for cur in _objects(text, _PROG_HEAD | _MAP_HEAD, _PROG_DETAIL | _MAP_DETAIL, _IGNORED, what, w):
        try:
            if _is_map(cur):
                if "max_entries" not in cur:
                    w.add(f"map {cur['id']}: no max_entries line")
                out.append(BpfMap(int(cur["id"]), cur["type"], cur.get("name", ""),
                                  _uint(cur.get("max_entries"), "max_entries")))
            else:
                out.append(BpfProg(int(cur["id"]), cur["type"], cur.get("name", ""), cur.get("tag", ""),
                                   _uint(cur.get("run_cnt"), "run_cnt"), _uint(cur.get("run_time_ns"), "run_time_ns"),
                                   _ids(cur.get("map_ids"))))
        except ValueError as exc:
            w.add(f"{'map' if _is_map(cur) else 'program'} {cur['id']}: {exc}")
    return Parsed(tuple(out), w.freeze())


def parse_prog_show_text(text: str) -> Parsed[BpfProg | BpfMap]:
    """Parse `bpftool prog show` ('42: sched_cls  name cil_from_container  tag ..  gpl
    run_time_ns 1234 run_cnt 56' and its loaded_at / xlated .. map_ids / btf_id / pids lines);
    maps listed after it are maps.

    run_time_ns/run_cnt are absent while BPF stats are off: read as 0, like the JSON parser.
    """
    return _records(text, "prog")


def parse_map_show_text(text: str) -> Parsed[BpfMap | BpfProg]:
    """Parse `bpftool map show` ('12: hash  name cilium_policy_0  flags 0x1' then
    'key 8B  value 24B  max_entries 16384  memlock 1310720B'); programs listed after it are programs."""
    return _records(text, "map")


# 'eth0(2) driver id 10', 'eth0(2) generic id 5 driver id 10' (several XDP modes at once)
_XDP = re.compile(r"^(\S+)\((\d+)\)\s+(.*)$")
_XDP_MODE = re.compile(r"(\w+)\s+(?:prog_)?id\s+(\d+)")
# 'lxc1(5) clsact/ingress cil_from_container-lxc1 id 1052', 'lan(2) tcx/ingress cil_from_netdev prog_id 680 link_id 12'
_TC = re.compile(r"^(\S+)\((\d+)\)\s+(\w+)/(ingress|egress)\s+(?:(\S+)\s+)?(?:prog_)?id\s+(\d+)\b")
# 'ip prerouting prio -128 prog_id 19' (netfilter), 'id 42' (flow_dissector)
_NF = re.compile(r"^(ip6?|inet|bridge|arp|netdev)\s+(\w+)\s+prio\s+(-?\d+)\s+prog_id\s+(\d+)")
_FD = re.compile(r"^(?:prog_)?id\s+(\d+)$")
_SECTIONS = ("xdp", "tc", "flow_dissector", "netfilter", "tcx")


def parse_net_show_text(text: str, netns: str = "") -> Parsed[Attachment]:
    """Parse `bpftool net show [dev X]`: per device, the XDP program (hook = its mode) and the tc
    programs (clsact or tcx, ingress/egress); also netfilter and flow_dissector attachments.
    A program named 'bpf_lxc.o:[from-container]' (older Cilium) keeps that name."""
    w = Warnings()
    out: list[Attachment] = []
    section = ""
    elided = 0
    for no, s in paste_lines(text):
        if s.endswith(":") and s[:-1] in _SECTIONS:
            section = s[:-1]
            continue
        if s in _ELIDED:
            elided += 1
            continue
        if is_command(s, "bpftool"):
            continue
        if section in ("tc", "tcx") and (m := _TC.match(s)):
            out.append(Attachment("tc", m.group(1), m.group(4), int(m.group(6)), m.group(5) or "", netns))
        elif section == "xdp" and (m := _XDP.match(s)):
            modes = _XDP_MODE.findall(m.group(3))
            if not modes:
                w.add(f"xdp line without a program id: {s[:120]}", no)
            out += [Attachment("xdp", m.group(1), mode, int(pid), "", netns) for mode, pid in modes]
        elif section == "netfilter" and (m := _NF.match(s)):
            out.append(Attachment("netfilter", f"{m.group(1)} {m.group(2)}", f"prio {m.group(3)}",
                                  int(m.group(4)), "", netns))
        elif section == "flow_dissector" and (m := _FD.match(s)):
            out.append(Attachment("flow_dissector", netns or "netns", "", int(m.group(1)), "", netns))
        else:
            w.add(f"unrecognised net show line{' in ' + section if section else ''}: {s[:120]}", no)
    if elided:
        w.add(f"{elided} elided part(s) ('[...]'): attachments there are missing")
    return Parsed(tuple(out), w.freeze())

"""Pure parsers for BPF program inventories: bpftool prog/map/net/cgroup JSON and `tc -j filter show`.

A program's cost is run_time_ns / run_cnt over an interval, so programs are `Counted`
records keyed by id; where a program is attached (tc ingress/egress, XDP, cgroup) comes
from separate dumps, joined by program id. Maps report pressure (entries / max_entries).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance


def _load_json(text: str, w: Warnings, what: str) -> Any:
    try:
        return json.loads(strip_provenance(text) or "null")
    except ValueError as exc:
        w.add(f"{what}: not JSON ({exc})")
        return None


def _as_list(doc: Any) -> list:
    if doc is None:
        return []
    return doc if isinstance(doc, list) else [doc]


def _nonneg(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"not a counter: {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class BpfProg:
    """A loaded program. run_cnt/run_time_ns only move while BPF stats are enabled."""

    id: int
    type: str
    name: str
    tag: str
    run_cnt: int
    run_time_ns: int
    map_ids: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        return ("prog", self.id)

    @property
    def counters(self) -> Mapping[str, int]:
        return {"run_cnt": self.run_cnt, "run_time_ns": self.run_time_ns}


def parse_prog_show(text: str) -> Parsed[BpfProg]:
    """Parse `bpftool -j prog show` (a list) or `prog show id N` (one object).

    bpftool omits run_time_ns/run_cnt when they are zero (stats never enabled): read as 0.
    """
    w = Warnings()
    out: list[BpfProg] = []
    for i, p in enumerate(_as_list(_load_json(text, w, "prog show"))):
        try:
            out.append(BpfProg(
                id=_nonneg(p["id"]), type=str(p.get("type", "unknown")), name=str(p.get("name", "")),
                tag=str(p.get("tag", "")), run_cnt=_nonneg(p.get("run_cnt", 0)),
                run_time_ns=_nonneg(p.get("run_time_ns", 0)),
                map_ids=tuple(_nonneg(m) for m in p.get("map_ids", ()) or ()),
            ))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            w.add(f"program entry {i}: {exc}")
    return Parsed(tuple(out), w.freeze())


@dataclasses.dataclass(frozen=True)
class BpfMap:
    """A map and, when dumped, how full it is. `entries` is None when not counted."""

    id: int
    type: str
    name: str
    max_entries: int
    entries: int | None = None

    @property
    def key(self) -> tuple:
        return ("map", self.id)

    @property
    def counters(self) -> Mapping[str, int]:
        return {}  # entries is a gauge

    @property
    def pressure(self) -> float | None:
        """entries / max_entries for maps that fill up; arrays are always 'full' so None."""
        if self.entries is None or not self.max_entries or "array" in self.type:
            return None
        return self.entries / self.max_entries


def parse_map_show(text: str) -> Parsed[BpfMap]:
    w = Warnings()
    out: list[BpfMap] = []
    for i, m in enumerate(_as_list(_load_json(text, w, "map show"))):
        try:
            out.append(BpfMap(_nonneg(m["id"]), str(m.get("type", "unknown")), str(m.get("name", "")),
                              _nonneg(m.get("max_entries", 0))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            w.add(f"map entry {i}: {exc}")
    return Parsed(tuple(out), w.freeze())


def parse_map_dump_count(text: str) -> tuple[int | None, tuple[str, ...]]:
    """Number of entries in `bpftool -j map dump` output (None if unreadable)."""
    w = Warnings()
    doc = _load_json(text, w, "map dump")
    if doc is None:
        return None, w.freeze()
    if not isinstance(doc, list):
        w.add("map dump: expected a list")
        return None, w.freeze()
    return sum(1 for e in doc if isinstance(e, dict) and ("key" in e or "formatted" in e)), w.freeze()


@dataclasses.dataclass(frozen=True)
class Attachment:
    """Where a program runs: kind 'tc' (hook 'ingress'/'egress'), 'xdp' (hook = mode), or
    'cgroup' (hook = attach type, target = cgroup path)."""

    kind: str
    target: str        # interface name or cgroup path
    hook: str
    prog_id: int
    prog_name: str = ""
    netns: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_tc_filters(text: str, iface: str, hook: str, netns: str = "") -> Parsed[Attachment]:
    """Parse `tc -j filter show dev IFACE ingress|egress`: the bpf filters and their program ids."""
    w = Warnings()
    out: list[Attachment] = []
    for i, f in enumerate(_as_list(_load_json(text, w, "tc filter show"))):
        if not isinstance(f, dict) or f.get("kind") != "bpf" or "options" not in f:
            continue
        try:
            prog = f["options"]["prog"]
            out.append(Attachment("tc", iface, hook, _nonneg(prog["id"]),
                                  str(prog.get("name") or f["options"].get("bpf_name", "")), netns))
        except (KeyError, TypeError, ValueError) as exc:
            w.add(f"tc filter {i} on {iface}: {exc}")
    return Parsed(tuple(out), w.freeze())


def parse_net_show(text: str, netns: str = "") -> Parsed[Attachment]:
    """Parse `bpftool -j net show`: XDP and tc programs per device (tcx and clsact alike)."""
    w = Warnings()
    out: list[Attachment] = []
    for block in _as_list(_load_json(text, w, "net show")):
        if not isinstance(block, dict):
            w.add("net show: unexpected entry")
            continue
        # bpftool before 5.x (kernel 4.19 era) printed `tc_filters` and `prog_id` where it now prints
        # `tc` and `id`, and named tc devices by ifindex only
        names = {e.get("ifindex"): e["devname"] for v in block.values() if isinstance(v, list)
                 for e in v if isinstance(e, dict) and "devname" in e}
        for section, key in (("xdp", "xdp"), ("tc", "tc"), ("tc", "tc_filters")):
            entries = block.get(key) or []
            if not isinstance(entries, list):
                w.add(f"net show: '{key}' is not a list")
                continue
            for e in entries:
                try:
                    if section == "xdp":
                        hook = str(e.get("mode", "xdp"))
                    else:
                        hook = "egress" if "egress" in str(e.get("kind", "")) else "ingress"
                    dev = e["devname"] if "devname" in e else names.get(e["ifindex"], f"ifindex {e['ifindex']}")
                    out.append(Attachment(section, str(dev), hook, _nonneg(e["id"] if "id" in e else e["prog_id"]),
                                          str(e.get("name", "")), netns))
                except KeyError as exc:
                    w.add(f"{key} entry without {exc.args[0]!r}: {json.dumps(e)[:100]}")
                except (TypeError, ValueError, AttributeError) as exc:
                    w.add(f"{key} entry: {exc}")
    return Parsed(tuple(out), w.freeze())


def parse_cgroup_tree(text: str) -> Parsed[Attachment]:
    """Parse `bpftool -j cgroup tree`: [{"cgroup": path, "programs": [{id, attach_type, name}]}]."""
    w = Warnings()
    out: list[Attachment] = []
    for block in _as_list(_load_json(text, w, "cgroup tree")):
        try:
            for p in block.get("programs", []):
                out.append(Attachment("cgroup", str(block["cgroup"]), str(p.get("attach_type", "")),
                                      _nonneg(p["id"]), str(p.get("name", ""))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            w.add(f"cgroup entry: {exc}")
    return Parsed(tuple(out), w.freeze())


def ns_per_run(run_cnt: int, run_time_ns: int) -> float | None:
    """Average cost of one run over an interval; None when the program did not run."""
    return run_time_ns / run_cnt if run_cnt > 0 else None


def dedupe(attachments: Iterable[Attachment]) -> tuple[Attachment, ...]:
    """tc filters and bpftool net report the same attachment twice; keep one of each."""
    seen: dict[tuple, Attachment] = {}
    for a in attachments:
        seen.setdefault((a.kind, a.netns, a.target, a.hook, a.prog_id), a)
    return tuple(seen.values())

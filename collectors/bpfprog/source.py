"""Acquisition for the BPF-program collector: what is attached where, and its run counters.

With a selection, only programs on the selected interfaces (tc via `tc -j filter show` and
`bpftool net`, XDP via `bpftool net`) are reported, each read in its own namespace
(`ip netns exec NAME ...` argv through the Runner), plus everything attached in a selected
namespace that has no selected interface; without one, everything attached in the host
namespace and to cgroups. Run counters come from
`bpftool -j prog show`; they only move while stats are enabled (see stats.py), which the
caller arranges around the interval it measures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings
from cnitrace.collectors.bpfprog import parse as p
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

MAX_DUMP_ENTRIES = 65_536  # dumping a map is O(entries); bigger maps report entries=None


class BpfProgCollector:
    name = "bpf"

    def __init__(self, selection: Any = None, runner: Runner = DEFAULT_RUNNER, *, maps: bool = True):
        self.selection = selection
        self.runner = runner
        self.maps = maps

    def available(self, host: Any = None) -> Availability:
        if self.runner.which("bpftool") is None:
            return Availability.no("bpftool not installed")
        done = self.runner.run(["bpftool", "-j", "prog", "show"], check=False)
        if not done.ok:
            return Availability.no(f"bpftool prog show failed (needs root): {done.stderr.strip()[:100]}")
        return Availability.yes("bpftool")

    def parse(self, text: str) -> Parsed:
        return p.parse_prog_show(text)

    def _attachments(self, w: Warnings) -> tuple[list[p.Attachment], list[str]]:
        found: list[p.Attachment] = []
        warnings: list[str] = []

        def take(parsed: Parsed) -> None:
            found.extend(parsed.records)
            warnings.extend(parsed.warnings)

        sel = self.selection
        if sel is None or sel.empty:
            take(p.parse_net_show(self.runner.run(["bpftool", "-j", "net", "show"]).stdout))
            done = self.runner.run(["bpftool", "-j", "cgroup", "tree"], check=False)
            if done.ok:
                take(p.parse_cgroup_tree(done.stdout))
            else:
                w.add("bpftool cgroup tree failed; cgroup programs not listed")
            return found, warnings
        for ns in sel.netns:
            ifaces = sel.in_netns(ns)
            if not ifaces:   # a namespace selected without interfaces: whatever is attached in it
                done = self.runner.run(["bpftool", "-j", "net", "show"], netns=ns, check=False)
                if done.ok:
                    take(p.parse_net_show(done.stdout, ns))
                else:
                    w.add(f"{ns or 'host'}: bpftool net show failed; its attachments not listed")
            for iface in ifaces:
                for hook in ("ingress", "egress"):
                    done = self.runner.run(["tc", "-j", "filter", "show", "dev", iface.name, hook],
                                           netns=ns, check=False)
                    if done.ok and done.stdout.strip():
                        take(p.parse_tc_filters(done.stdout, iface.name, hook, ns))
                done = self.runner.run(["bpftool", "-j", "net", "show", "dev", iface.name], netns=ns, check=False)
                if done.ok:
                    take(p.parse_net_show(done.stdout, ns))
        return found, warnings

    def snapshot(self) -> Snapshot:
        w = Warnings()
        attachments, warnings = self._attachments(w)
        attachments = list(p.dedupe(attachments))
        progs = p.parse_prog_show(self.runner.run(["bpftool", "-j", "prog", "show"]).stdout)
        warnings += progs.warnings
        names = {x.id: x.name for x in progs.records}  # bpftool net omits XDP program names
        attachments = [dataclasses.replace(a, prog_name=a.prog_name or names.get(a.prog_id, ""))
                       for a in attachments]
        wanted = {a.prog_id for a in attachments}
        chosen = [x for x in progs.records if x.id in wanted]
        missing = wanted - {x.id for x in chosen}
        if missing:
            w.add(f"attached program(s) {sorted(missing)} not in bpftool prog show (unloaded meanwhile?)")
        maps: list[p.BpfMap] = []
        if self.maps and chosen:
            map_ids = {m for x in chosen for m in x.map_ids}
            shown = p.parse_map_show(self.runner.run(["bpftool", "-j", "map", "show"]).stdout)
            warnings += shown.warnings
            for m in shown.records:
                if m.id not in map_ids:
                    continue
                if "array" not in m.type and m.max_entries <= MAX_DUMP_ENTRIES:
                    try:
                        count, ws = p.parse_map_dump_count(
                            self.runner.run(["bpftool", "-j", "map", "dump", "id", str(m.id)]).stdout)
                        warnings += ws
                        m = p.BpfMap(m.id, m.type, m.name, m.max_entries, count)
                    except ToolError as exc:
                        w.add(f"map {m.id}: {exc.message}")
                maps.append(m)
        meta = {
            "attachments": [a.to_json() for a in attachments],
            "maps": [{"id": m.id, "name": m.name, "type": m.type, "max_entries": m.max_entries,
                      "entries": m.entries, "pressure": m.pressure} for m in maps],
        }
        return Snapshot(self.name, (*chosen, *maps), warnings=(*warnings, *w.freeze()), meta=meta)

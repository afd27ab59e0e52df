"""Acquisition for the Cilium collector: the agent CLI when present, else bpftool on the pins.

Pins live under /sys/fs/bpf/tc/globals on a Cilium node; the lab's cilium datapath pins its
maps under /sys/fs/bpf/cnit-<lab>/. CT and ipcache maps are large (512k entries), so their
fill level is read from a plain `bpftool map dump` ('Found N elements'), not JSON.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Sequence

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings
from cnitrace.collectors.cilium import parse as p
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

PIN_ROOTS = ("/sys/fs/bpf/tc/globals", "/sys/fs/bpf/cnit-*")
AGENT_CLIS = ("cilium-dbg", "cilium")
PRESSURE_MAPS = ("cilium_ct4_global", "cilium_ct6_global", "cilium_ct_any4_global", "cilium_ct_any6_global",
                 "cilium_ipcache", "cilium_ipcache_v2")


def find_pins(roots: Sequence[str] = PIN_ROOTS) -> dict[str, list[str]]:
    """{'policy': [...], 'pressure': [...]} pinned map paths under the given roots (globs)."""
    policy, pressure = [], []
    for root in roots:
        for d in sorted(glob.glob(root)):
            for path in sorted(glob.glob(os.path.join(d, "**", "cilium_*"), recursive=True)):
                base = os.path.basename(path)
                if base.startswith("cilium_policy_") and base != "cilium_policy_prog":
                    policy.append(path)
                elif base in PRESSURE_MAPS:
                    pressure.append(path)
    return {"policy": policy, "pressure": pressure}


class CiliumCollector:
    name = "cilium"

    def __init__(self, runner: Runner = DEFAULT_RUNNER, roots: Sequence[str] = PIN_ROOTS):
        self.runner = runner
        self.roots = tuple(roots)

    def _agent(self) -> str | None:
        return next((c for c in AGENT_CLIS if self.runner.which(c)), None)

    def available(self, host: Any = None) -> Availability:
        if self._agent():
            return Availability.yes(f"agent CLI {self._agent()}")
        if self.runner.which("bpftool") is None:
            return Availability.no("neither cilium-dbg nor bpftool is installed")
        pins = find_pins(self.roots)
        if not pins["policy"] and not pins["pressure"]:
            return Availability.no(f"no cilium_* maps pinned under {', '.join(self.roots)}")
        return Availability.yes(f"bpftool on {len(pins['policy'])} policy map(s)")

    def parse(self, text: str) -> Parsed:
        return p.parse_policy_get_json(text)

    def snapshot(self) -> Snapshot:
        w = Warnings()
        records: list[Any] = []
        warnings: list[str] = []
        agent = self._agent()
        pins = find_pins(self.roots)
        if agent:
            parsed = p.parse_policy_get_json(
                self.runner.run([agent, "bpf", "policy", "get", "--all", "-o", "json"]).stdout)
            records += parsed.records
            warnings += parsed.warnings
        else:
            for path in pins["policy"]:
                try:
                    parsed = p.parse_policy_map_dump(
                        self.runner.run(["bpftool", "-j", "map", "dump", "pinned", path]).stdout, path)
                except ToolError as exc:
                    w.add(exc.message)
                    continue
                records += parsed.records
                warnings += parsed.warnings
        for path in pins["pressure"]:
            try:
                shown = p.parse_map_show_max(self.runner.run(["bpftool", "-j", "map", "show", "pinned", path]).stdout)
                count = p.parse_dump_count(self.runner.run(["bpftool", "map", "dump", "pinned", path],
                                                           timeout=120).stdout)
            except ToolError as exc:
                w.add(exc.message)
                continue
            records.append(p.MapUsage(os.path.basename(path), path, count, shown[1] if shown else None))
        policy = [r for r in records if isinstance(r, p.PolicyEntry)]
        meta = {
            "source": agent or "bpftool",
            "entries_per_endpoint": p.entries_per_endpoint(policy),
            "proxy_ports": sorted({e.proxy_port for e in policy if e.proxy_port}),
        }
        return Snapshot(self.name, tuple(records), warnings=(*warnings, *w.freeze()), meta=meta)

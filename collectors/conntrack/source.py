"""Acquisition for the conntrack collector: procfs and `conntrack -S`, per network namespace.

Conntrack tables and statistics are per namespace, so each selected namespace is read
from inside it (`ip netns exec NS cat ...` argv through the Runner); the host namespace
(selection.HOST, '') is read the same way for one code path. Records carry their namespace
in their key, so two namespaces never merge.
"""

from __future__ import annotations

from typing import Any, Sequence

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings
from cnitrace.collectors.conntrack import parse as p
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import HOST

STAT = "/proc/net/stat/nf_conntrack"
COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


class ConntrackCollector:
    """Table usage (count vs max) and per-CPU stats, from both procfs and conntrack -S."""

    name = "conntrack"

    def __init__(self, netns: Sequence[str | None] = (HOST,), runner: Runner = DEFAULT_RUNNER):
        self.netns = tuple(dict.fromkeys(n or HOST for n in netns)) or (HOST,)
        self.runner = runner

    def available(self, host: Any = None) -> Availability:
        done = self.runner.run(["cat", STAT], check=False)
        if not done.ok:
            return Availability.no("nf_conntrack is not loaded (no /proc/net/stat/nf_conntrack)")
        if self.runner.which("conntrack") is None:
            return Availability.yes("procfs only (conntrack-tools not installed)")
        return Availability.yes("procfs and conntrack -S")

    def parse(self, text: str) -> Parsed:
        return p.parse_conntrack_S(text)

    def _read(self, path: str, ns: str) -> str | None:
        done = self.runner.run(["cat", path], netns=ns, check=False)
        return done.stdout if done.ok else None

    def snapshot(self) -> Snapshot:
        w = Warnings()
        records: list[Any] = []
        warnings: list[str] = []
        have_tool = self.runner.which("conntrack") is not None
        for ns in self.netns:
            label = ns or "host"
            stat = self._read(STAT, ns)
            entries = None
            if stat is None:
                w.add(f"{label}: cannot read {STAT}")
            else:
                parsed, entries = p.parse_proc_stat(stat, ns)
                records += parsed.records
                warnings += [f"{label}: {x}" for x in parsed.warnings]
            count = p.parse_int_file(self._read(COUNT, ns) or "")
            cmax = p.parse_int_file(self._read(MAX, ns) or "")
            if count is None:
                count = entries
            if count is not None:
                records.append(p.TableUsage(ns, count, cmax))
            if have_tool:
                try:
                    s = p.parse_conntrack_S(self.runner.run(["conntrack", "-S"], netns=ns).stdout, ns)
                except ToolError as exc:
                    w.add(f"{label}: {exc.message}")
                else:
                    records += s.records
                    warnings += [f"{label}: {x}" for x in s.warnings]
        return Snapshot(self.name, tuple(records), warnings=(*warnings, *w.freeze()),
                        meta={"netns": list(self.netns)})

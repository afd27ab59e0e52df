"""Acquisition: one `*-save -c` per backend and family, through the Runner seam.

Why `save -c` and not python-iptables: one subprocess dumps every table with counters in
a few milliseconds per thousand rules and reads both backends; python-iptables walks rules
one libiptc call at a time and sees only the legacy backend (see the benchmark).
An optional netns runs the tools inside it (`ip netns exec NAME ...` argv through the Runner),
e.g. a lab's node namespace; one collector reads one namespace, and the registry puts one per
selected namespace behind the name "iptables" (collectors/netns.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings
from cnitrace.collectors.iptables.parse import Chain, Rule, Ruleset, parse
from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import HOST

BACKENDS = ("legacy", "nft")
FAMILIES = ("ipv4", "ipv6")
_TOOL = {
    ("legacy", "ipv4"): "iptables-legacy-save",
    ("legacy", "ipv6"): "ip6tables-legacy-save",
    ("nft", "ipv4"): "iptables-nft-save",
    ("nft", "ipv6"): "ip6tables-nft-save",
}


@dataclasses.dataclass(frozen=True)
class Source:
    backend: str
    family: str

    @property
    def tool(self) -> str:
        return _TOOL[(self.backend, self.family)]

    @property
    def argv(self) -> list[str]:
        return [self.tool, "-c"]


def sources(backends: Sequence[str] = BACKENDS, families: Sequence[str] = FAMILIES) -> list[Source]:
    bad = [b for b in backends if b not in BACKENDS] + [f for f in families if f not in FAMILIES]
    if bad:
        raise UsageError(f"unknown iptables backend/family {bad[0]!r}; choose from {BACKENDS + FAMILIES}")
    return [Source(b, f) for b in backends for f in families]


class IptablesCollector:
    """Per-rule counters, chain policies and the jump graph of every iptables table."""

    name = "iptables"

    def __init__(self, runner: Runner = DEFAULT_RUNNER, netns: str | None = HOST,
                 backends: Sequence[str] = BACKENDS, families: Sequence[str] = FAMILIES):
        self.runner = runner
        self.netns = netns or HOST     # None is accepted for the host
        self.sources = sources(backends, families)

    def available(self, host: Any = None) -> Availability:
        have = [s.tool for s in self.sources if self.runner.which(s.tool)]
        if not have:
            return Availability.no(f"none of {', '.join(s.tool for s in self.sources)} is installed")
        return Availability.yes(f"using {', '.join(have)}")

    def parse(self, text: str) -> Parsed[Chain | Rule]:
        return parse(text)

    def snapshot(self) -> Snapshot[Chain | Rule]:
        w = Warnings()
        records: list[Chain | Rule] = []
        ran = []
        for src in self.sources:
            if not self.runner.which(src.tool):
                w.add(f"{src.tool} not installed; {src.backend}/{src.family} not collected")
                continue
            try:
                done = self.runner.run(src.argv, netns=self.netns, check=False, timeout=30)
            except ToolError as exc:
                w.add(exc.message)
                continue
            if not done.ok:
                why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                w.add(f"{src.tool}: {why}")
                continue
            parsed = parse(done.stdout, src.family, src.backend)
            records.extend(parsed.records)
            for msg in parsed.warnings:
                w.add(f"{src.tool}: {msg}")
            ran.append(src.tool)
        return Snapshot(self.name, tuple(records), warnings=w.freeze(),
                        meta={"netns": self.netns, "tools": ran})


def ruleset_of(snapshot: Snapshot) -> Ruleset:
    chains = tuple(r for r in snapshot.records if isinstance(r, Chain))
    rules = tuple(r for r in snapshot.records if isinstance(r, Rule))
    return Ruleset(chains, rules)

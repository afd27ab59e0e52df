"""Acquisition: one `nft -j list ruleset` through the Runner seam, optionally inside a netns.

One collector reads one namespace (`ip netns exec NAME nft ...` argv); the registry puts one
per selected namespace behind the name "nftables" (collectors/netns.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings, counter_delta
from cnitrace.collectors.nftables.parse import NftCounter, NftRule, Record, parse
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import HOST

ARGV = ["nft", "-j", "list", "ruleset"]


class NftablesCollector:
    """Chains, rules (with counters where they exist), sets and maps of every nftables table."""

    name = "nftables"

    def __init__(self, runner: Runner = DEFAULT_RUNNER, netns: str | None = HOST):
        self.runner = runner
        self.netns = netns or HOST     # None is accepted for the host

    def available(self, host: Any = None) -> Availability:
        if not self.runner.which("nft"):
            return Availability.no("nft is not installed (Debian package nftables)")
        return Availability.yes("using nft -j list ruleset")

    def parse(self, text: str) -> Parsed[Record]:
        return parse(text)

    def snapshot(self) -> Snapshot[Record]:
        try:
            done = self.runner.run(ARGV, netns=self.netns, check=False, timeout=60)
        except ToolError as exc:
            return Snapshot(self.name, (), warnings=(exc.message,), meta={"netns": self.netns})
        if not done.ok:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            return Snapshot(self.name, (), warnings=(f"nft: {why}",), meta={"netns": self.netns})
        parsed = parse(done.stdout)
        return Snapshot(self.name, parsed.records, warnings=parsed.warnings, meta={"netns": self.netns})


def records_delta(before: Snapshot, after: Snapshot) -> tuple[tuple[Record, ...], tuple[str, ...]]:
    """`after`'s records with rule and named-counter values replaced by their change since `before`.

    A counter that went backwards is counted from zero since the reset, with a warning.
    """
    w = Warnings()
    old = {r.key: r for r in before.records}
    out: list[Record] = []
    resets = 0
    for r in after.records:
        if isinstance(r, (NftRule, NftCounter)) and r.packets is not None:
            o = old.get(r.key)
            op = o.packets if o is not None and o.packets is not None else 0
            ob = o.bytes if o is not None and o.bytes is not None else 0
            dp, db = counter_delta(op, r.packets), counter_delta(ob, r.bytes or 0)
            resets += dp.reset or db.reset
            r = dataclasses.replace(r, packets=dp.value, bytes=db.value)
        out.append(r)
    if resets:
        w.add(f"{resets} nft counter(s) went backwards (reset); counted from zero since the reset")
    return tuple(out), w.freeze()

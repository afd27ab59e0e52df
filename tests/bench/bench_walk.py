"""Header-miss walks: what one rule the packet does not fit costs, by chain layout, side by side.

For the kube-router and calico labs at N = 5,000 (10,004-rule policy chains, legacy backend):
the chain replayed (calibrate.walk) at the node's own page offset and at OFFSETS other ones, the
same replay's rules at the node's offset, and the uniform calibration's header-miss figure
(calibrate.shapes, 600-byte rules); all in one run, as ratios to the node's own offset. No
target: it shows why the model times long chains' walks instead of carrying one figure.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from pathlib import Path

from cnitrace.calibrate import walk
from cnitrace.calibrate.rules import cached_or_measure_shapes
from cnitrace.collectors.iptables.layout import PAGE, ChainLayout, read_layout
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec

RULES = 5_000
OFFSETS = (784, 936, 2048)


def shifted(lay: ChainLayout, page_offset: int) -> ChainLayout:
    delta = page_offset - (lay.first_offset or 0) % PAGE
    return ChainLayout(lay.name, tuple((o + delta, s) for o, s in lay.rules))


def main() -> int:
    early = cached_or_measure_shapes(backend="legacy").early_ns
    print(f"uniform calibration, header miss: {early:.1f} ns per rule (600-byte rules, 2,000 of them)")
    print(f"{'datapath':12} {'page offset':>11} {'ns/rule':>8} {'vs node':>8}  samples")
    for dp in ("kube-router", "calico"):
        name = f"cnitb{uuid.uuid4().hex[:6]}"
        lab = manager.up(LabSpec(name=name, datapath=dp, rules=RULES, backend="legacy"))
        try:
            ns = lab.topo.node_netns
            [(key, rules)] = walk.candidates(walk.legacy_rules(ns)).items()
            lay = read_layout(key[1], ns).chains[key[2]]
            creates = walk.sets_in(ns, walk.referenced(rules, ())[0])
            own = walk.WalkChain(*key, tuple(rules), lay)
            chains = [own] + [dataclasses.replace(own, chain=f"{key[2]}@{o}", layout=shifted(lay, o))
                              for o in OFFSETS if o != own.page_offset]
            with tempfile.TemporaryDirectory() as tmp:
                got = walk.measure_walks(chains, creates=creates, cache=Path(tmp) / "c.json")
            base = got[own.key].ns_per_rule
            for ch in chains:
                w = got[ch.key]
                if w.ns_per_rule is None:
                    print(f"{dp:12} {ch.page_offset:>11}  not replayed: {w.reason}")
                    continue
                mark = " (node)" if ch is own else ""
                print(f"{dp:12} {ch.page_offset:>11} {w.ns_per_rule:>8.2f} {w.ns_per_rule / base:>7.2f}x  "
                      f"{list(w.samples)}{mark}", flush=True)
            print(f"{dp:12} uniform figure / node's walk: {early / base:.2f}x")
        finally:
            manager.down(name)
    return 0

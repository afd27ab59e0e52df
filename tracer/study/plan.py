"""Which lab points the study runs, for --quick and for the full study (pure).

Each experiment family is a set of cells (family, datapath, condition) that name a sweep point
(datapath × rules × clients × L7 × placement). Points shared by families (N = 0 is both "policy
off" and the complexity baseline; N = 100 at one client is "policy on", the complexity start, the
concurrency start and the intra-node twin) are measured once. Points are ordered per datapath so
every baseline the sweep's measurement compares with (N = 0 at the same clients and placement,
the L3/L4 twin of an L7 point, the intra-node twin of an inter-node point) runs first.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from cnitrace.core.errors import UsageError
from cnitrace.lab.datapaths.registry import DATAPATHS as REGISTRY
from cnitrace.sweep.model import PointSpec
from cnitrace.study.figures import FAMILIES

DATAPATHS = tuple(REGISTRY)
STUDY_CNIS = ("calico", "kube-router", "weave", "antrea", "cilium", "flannel")   # the study's six
STUDY_PODS = (50, 100, 200)          # the study's concurrent client pods
SCALE = 10                           # study pods per client pod here (2 cores)
CLIENTS = tuple(p // SCALE for p in STUDY_PODS)
RULES = (0, 100, 500, 1000)          # 0: the lab's allow/deny pair only; the study's 100/500/1,000
POLICY_ON = 100                      # "policy on": the study's smallest policy
L7_DATAPATHS = ("cilium", "antrea")  # the study's L7 results (Envoy; Suricata → a stand-in here)
ITERATIVE_CNIS = ("calico", "kube-router", "weave")   # "iptables CNIs" in the study

# --quick: per family, the datapaths kept (the others were not measured by the study or have no
# figure in it) and why; the full study runs every lab datapath in every L3/L4 family.
QUICK = {
    "policy": (STUDY_CNIS, "the study's six CNIs; nft (Calico's nftables mode) left out"),
    "complexity": (("calico", "weave", "antrea", "cilium"),
                   "the CNIs with a figure in the study (Cilium, Antrea, WeaveNet), and calico as the iptables "
                   "reference at N = 0/100/1,000 only"),
    "concurrency": (ITERATIVE_CNIS, "the study's iptables CNIs, which its −60–70 % figure is about"),
    "placement": (("calico", "cilium"), "one iptables CNI and Cilium (the study gives no inter-node figure)"),
    "l7": (L7_DATAPATHS, "Cilium and Antrea, the study's L7 results"),
}
QUICK_SKIP_RULES = {("complexity", "calico"): (500,)}


@dataclasses.dataclass(frozen=True)
class PlannedPoint:
    spec: PointSpec
    http: bool = False         # ab load too (the L7 twins and their L3/L4 baselines)
    attribute: bool = False    # a `profile` attribution of crafted probes (the policy-on points)

    @property
    def id(self) -> str:
        return self.spec.id


@dataclasses.dataclass(frozen=True)
class Cell:
    family: str
    datapath: str
    condition: str             # "policy off (N = 0)", "N = 500", "20 client pods", "inter-node", "L7 on"
    point: str                 # PointSpec id
    x: float                   # the family's variable: rules, clients, 0/1 (off/on, intra/inter)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    quick: bool
    families: tuple[str, ...]
    datapaths: tuple[str, ...]
    points: tuple[PlannedPoint, ...]
    cells: tuple[Cell, ...]
    scaled: tuple[str, ...]    # which cells were scaled down, and how

    def to_json(self) -> dict[str, Any]:
        return {"quick": self.quick, "families": list(self.families), "datapaths": list(self.datapaths),
                "points": [{**p.spec.to_json(), "http": p.http, "attribute": p.attribute} for p in self.points],
                "cells": [c.to_json() for c in self.cells], "scaled_down": list(self.scaled)}


def scaling(http_seconds: float, seconds: float, flood_bursts: int = 25, flood_packets: int = 500) -> list[str]:
    """How the study's setup maps onto this one node (stated in every document)."""
    return [
        f"concurrency: the study's {'/'.join(map(str, STUDY_PODS))} client pods → "
        f"{'/'.join(map(str, CLIENTS))} client pods here (÷{SCALE}: 2 cores), one TCP stream each",
        f"L7 load: ab at 100 concurrent for 20 s in the study → 100 concurrent for {http_seconds:g} s here",
        f"throughput: netperf on a cluster in the study → iperf3 for {seconds:g} s per point between lab "
        f"namespaces on one node; sockperf RTT {seconds:g} s; NEW-flow cost: the fastest of {flood_bursts} "
        f"bursts of {flood_packets} packets",
        "placement: inter-node = the client pods behind a second namespace-node joined by VXLAN over a veth "
        "underlay (one machine)",
        f"policy off = the lab's allow/deny pair only (N = 0 filler rules); policy on = N = {POLICY_ON} "
        f"port-range rules",
    ]


def _cells(family: str, dp: str, quick: bool) -> list[tuple[str, PointSpec, float]]:
    """(condition, point, x) of one family on one datapath."""
    def p(rules: int, clients: int = 1, l7: bool = False, placement: str = "intra") -> PointSpec:
        return PointSpec(dp, rules, clients, l7, placement)

    if family == "policy":
        return [("policy off (N = 0)", p(0), 0.0), (f"policy on (N = {POLICY_ON})", p(POLICY_ON), 1.0)]
    if family == "complexity":
        skip = QUICK_SKIP_RULES.get((family, dp), ()) if quick else ()
        return [(f"N = {n:,}", p(n), float(n)) for n in RULES if n not in skip]
    if family == "concurrency":
        return [(f"{c} client pod{'s' if c > 1 else ''}", p(POLICY_ON, c), float(c)) for c in (1, *CLIENTS)]
    if family == "placement":
        return [("intra-node", p(POLICY_ON), 0.0), ("inter-node", p(POLICY_ON, placement="inter"), 1.0)]
    if family == "l7":
        return [("L7 off (N = 0)", p(0), 0.0), ("L7 on (N = 0)", p(0, l7=True), 1.0)]
    raise UsageError(f"unknown family {family!r}")


def _order(s: PointSpec) -> tuple:
    """Per datapath: N = 0 (and its L7 twin) first, then by clients, rules, intra before inter."""
    return (DATAPATHS.index(s.datapath), s.clients, s.rules, s.placement != "intra", s.l7)


def _family_datapaths(family: str, quick: bool) -> tuple[str, ...]:
    if family == "l7":
        return L7_DATAPATHS
    return QUICK[family][0] if quick else DATAPATHS


def make_plan(*, quick: bool, families: Iterable[str] | None = None,
              datapaths: Iterable[str] | None = None) -> StudyPlan:
    """The study's points and cells; `families`/`datapaths` narrow it (development runs)."""
    fams = tuple(families) if families else FAMILIES
    for f in fams:
        if f not in FAMILIES:
            raise UsageError(f"--families: unknown family {f!r}; choose from {', '.join(FAMILIES)}")
    only = tuple(datapaths) if datapaths else None
    for d in only or ():
        if d not in DATAPATHS:
            raise UsageError(f"--datapaths: unknown datapath {d!r}; choose from {', '.join(DATAPATHS)}")
    cells: list[Cell] = []
    specs: dict[str, PointSpec] = {}
    http: set[str] = set()
    attribute: set[str] = set()
    for fam in FAMILIES:
        if fam not in fams:
            continue
        for dp in _family_datapaths(fam, quick):
            if only is not None and dp not in only:
                continue
            for cond, spec, x in _cells(fam, dp, quick):
                specs[spec.id] = spec
                cells.append(Cell(fam, dp, cond, spec.id, x))
                if fam == "l7":
                    http.add(spec.id)
                if fam == "policy" and x == 1.0:
                    attribute.add(spec.id)
    pts = tuple(PlannedPoint(s, http=s.id in http, attribute=s.id in attribute)
                for s in sorted(specs.values(), key=_order))
    scaled: list[str] = []
    if quick:
        for fam in fams:
            if fam == "l7":
                continue
            kept, why = QUICK[fam]
            left = [d for d in DATAPATHS if d not in kept and (only is None or d in only)]
            if left:
                scaled.append(f"{fam}: run on {', '.join(kept)} — {why}; not run: {', '.join(left)}")
        scaled.append("windows: the quick measurement windows (see the scaling lines)")
    if "l7" in fams:
        scaled.append("l7: Antrea's Suricata is not available here; a stand-in proxy runs in its place (labelled)")
    used = tuple(d for d in DATAPATHS if any(c.datapath == d for c in cells))
    return StudyPlan(quick=quick, families=tuple(f for f in FAMILIES if f in fams), datapaths=used, points=pts,
                     cells=tuple(cells), scaled=tuple(scaled))

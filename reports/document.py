"""The profile document: cnitrace's versioned JSON contract.

Every figure in it carries its provenance — "measured" (a probe timed it), "modelled"
(counters × calibrated cost), or "both" (with the agreement between the two) — so a reader
always knows which numbers were observed and which were inferred. `profile.schema.json`
beside this file is the published schema; `validate()` checks a document against it.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any, Iterator, Literal

SCHEMA_VERSION = 1   # profile.schema.json pins it: bump both on an incompatible change
CHANGED = "changed during window"   # how a figure whose objects changed under the profiler is marked (basis)

Provenance = Literal["measured", "modelled", "both"]


@dataclasses.dataclass
class Node:
    """One box of the attribution tree: stage → table/chain/OVS table/program → rule."""

    kind: str
    name: str
    packets: int = 0
    ns_per_packet: float | None = None      # the figure used for shares (measured when available)
    measured_ns: float | None = None        # per packet, from probes
    modelled_ns: float | None = None        # per packet, counters × calibration
    p50_ns: float | None = None
    p99_ns: float | None = None
    share: float | None = None              # fraction of the root's per-packet time
    evaluations_per_packet: float | None = None
    provenance: Provenance = "modelled"
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    children: list["Node"] = dataclasses.field(default_factory=list)
    # A share of a measured parent's time, split by the model's shares (e.g. a chain of a table timed by
    # probes); `basis` says how the figure came about ("measured (table), apportioned (chain)").
    apportioned_ns: float | None = None
    basis: str | None = None

    @property
    def agreement(self) -> float | None:
        """measured / modelled where both exist: 1.0 means the model explains the measurement."""
        if self.measured_ns and self.modelled_ns:
            return self.measured_ns / self.modelled_ns
        return None

    @property
    def model_vs_measured(self) -> float | None:
        """modelled / measured where both exist: how the reports state agreement."""
        if self.measured_ns and self.modelled_ns:
            return self.modelled_ns / self.measured_ns
        return None

    def walk(self, depth: int = 0) -> Iterator[tuple[int, "Node"]]:
        yield depth, self
        for c in self.children:
            yield from c.walk(depth + 1)

    def find(self, kind: str, name: str) -> "Node | None":
        return next((n for _, n in self.walk() if n.kind == kind and n.name == name), None)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "children"}
        d["agreement"] = self.agreement
        d["model_vs_measured"] = self.model_vs_measured
        d["children"] = [c.to_json() for c in self.children]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Node":
        names = {f.name for f in dataclasses.fields(cls)} - {"children"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   children=[cls.from_json(c) for c in d.get("children", [])])


def schema() -> dict[str, Any]:
    return json.loads(resources.files("cnitrace.reports").joinpath("profile.schema.json").read_text())


def validate(doc: dict[str, Any]) -> list[str]:
    """Schema violations as one-line messages (empty when valid)."""
    import jsonschema   # lazily: a test extra, and slow to import; only validation needs it

    v = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))]


def headline(root: Node) -> str:
    """The one-sentence answer the terminal summary leads with."""
    l7 = root.find("stage", "l7_proxy")
    if l7 is not None and l7.share is not None and l7.detail.get("through_ns") and l7.detail.get("direct_ns"):
        return (f"{l7.share * 100:.0f} % of request time: the {l7.detail['proxy']} L7 proxy detour adds "
                f"≈ {fmt_ns(l7.ns_per_packet)} per request (measured; {l7.detail['through_ns'] / 1e6:.2f} ms "
                f"through the proxy vs {l7.detail['direct_ns'] / 1e6:.2f} ms direct)")
    # The most specific thing a user can act on: a chain/OVS table/program, or a table known only as a whole.
    leaves = [n for _, n in root.walk() if n.share is not None and (
        n.kind in ("chain", "ovs_table", "program", "proxy") or (n.kind == "table" and not n.children))]
    if not leaves:  # nothing finer than a stage could be timed (e.g. OVS serving established packets)
        leaves = [n for n in root.children if n.kind == "stage" and n.share and n.name != "rest of stack"]
    if not leaves:
        return "no per-packet cost could be attributed (no traffic crossed the selection)"
    top = max(leaves, key=lambda n: n.share or 0.0)
    parts = [f"{top.kind.replace('_', ' ')} {top.name}"]
    if top.evaluations_per_packet is not None:
        unit = "classifier subtable lookups" if top.kind == "ovs_table" else "rule evaluations"
        parts.append(f"{top.evaluations_per_packet:,.0f} {unit} per packet")
    if top.ns_per_packet is not None:
        parts.append(f"≈ {fmt_ns(top.ns_per_packet)} ({top.basis or top.provenance})")
    stage = next((s for s in root.children if s is not top and any(n is top for _, n in s.walk())), None)
    if stage is not None and (stage.share or 0.0) >= 0.05 and (top.share or 0.0) * 10 < stage.share:
        # The stage's measured time is mostly not in any of its tables/chains (e.g. OVS upcall
        # handling around a few ns of modelled table walks): lead with the stage, name the leaf.
        agree = f", model/measured {stage.model_vs_measured:.2f}" if stage.model_vs_measured else ""
        return (f"{stage.share * 100:.0f} % of per-packet time: stage {stage.name} ≈ {fmt_ns(stage.ns_per_packet)} "
                f"({stage.provenance}{agree}); costliest inside: {', '.join(parts)}")
    return f"{top.share * 100:.0f} % of per-packet time: " + ", ".join(parts)


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "—"
    if abs(ns) >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if abs(ns) >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def calibration_text(cal: dict[str, Any]) -> str:
    """This node's rule calibration in one line: by rule shape where it has shapes."""
    s = cal.get("shapes")
    if not s:
        return f"{cal['ns_per_rule_eval']:.1f} ns per rule evaluation ({cal['provenance']})"
    mods = ", ".join(f"{k} +{v:.0f}" for k, v in sorted(s["module_ns"].items(), key=lambda kv: kv[1]))
    native = s.get("nft_ns") or {}
    if native:
        imaps = sorted((int(k.split(":")[1]), v) for k, v in native.items() if k.startswith("imap:"))
        nft = ("; native nft: " + ", ".join(f"{k} {fmt_ns(native[k])}" for k in ("plain", "set", "vmap") if k in native)
               + "".join(f", interval map of {n:,} {fmt_ns(v)}" for n, v in imaps))
    else:
        nft = f"; nft rule {s['nft_rule_ns']:.0f} ns" if s.get("nft_rule_ns") else ""
    walks = "".join(f"; {w['chain']}: header miss {w['ns_per_rule']:.1f} (its walk, {w['provenance']} on a replay at "
                    f"page offset {w['page_offset']})" if w.get("ns_per_rule") is not None else
                    f"; {w['chain']}: walk not replayed ({w.get('reason')})" for w in cal.get("walks") or ())
    return (f"ns per rule evaluation by shape (iptables {s['backend']}, {cal['provenance']}): "
            f"header miss {s['early_ns']:.1f}; header fits: {s['early_ns']:.1f} plus per module {mods}{nft}{walks}")


def overhead_text(overhead: dict[str, Any]) -> str:
    """The tool's own cost in one line (the brackets' figures spelled out)."""
    parts = []
    for k, v in overhead.items():
        if k == "nf_brackets" and isinstance(v, dict):
            floor = f", {fmt_ns(v['floor_ns'])} each per packet (subtracted)" if v.get("floor_ns") else ""
            parts.append(f"netfilter brackets {v['brackets']}{floor}, {v.get('untimed', 0)} untimed")
        elif k == "mid_snapshots" and isinstance(v, dict):
            parts.append(f"mid-window rule snapshots skipped ({v['skipped']})" if v.get("skipped") else
                         f"{v.get('count', 0)} mid-window rule snapshots"
                         + (f" ({v['mean_s'] * 1000:.0f} ms each, every ≥ {v['interval_s']:g} s)" if v.get("mean_s") else ""))
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts) or "—"


def ovs_calibration_text(ovs: dict[str, Any]) -> str:
    """The OVS calibration in one line, for the terminal and HTML summaries."""
    sub = ovs.get("subtables_per_table")
    return (f"OVS {fmt_ns(ovs['ns_per_table'])} per table per first packet"
            + (f" ({sub} subtables, {fmt_ns(ovs['ns_per_subtable'])} each)" if sub else "")
            + f" + {fmt_ns(ovs['ns_per_upcall_base'])} per upcall, R² {ovs['r2']:.2f}, "
            f"{ovs['datapath_type']} datapath ({ovs['provenance']})")


def compute_shares(root: Node) -> None:
    """Fill `share` for every node as its fraction of the root's per-packet time."""
    # When the modelled stages exceed the measured total (a bad calibration, say), shares are
    # taken against the larger figure so they never exceed 100 %; the tree carries a warning.
    total = max(root.ns_per_packet or 0.0, sum((c.ns_per_packet or 0.0) for c in root.children))
    for _, n in root.walk():
        n.share = (n.ns_per_packet / total) if (total and n.ns_per_packet is not None) else None

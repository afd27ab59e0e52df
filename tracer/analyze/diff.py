"""What grew between two analyses of one node (before/after an incident or a policy rollout) (pure).

Structure is compared by name: chains that gained or lost rules (or appeared, or went), sets that
grew, OVS tables' flow counts, and the static cost per hook path before → after. Where both sides'
rules carried counters, the counters' difference is a real window: the packets each rule gained
between the two dumps, and the evaluations per packet over that window exactly as the profile
computes them (collectors.iptables.graph over the delta), a counter that went backwards (a rule
replaced, a chain flushed) counted from its reset.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from cnitrace.analyze import state
from cnitrace.analyze.analysis import Analysis
from cnitrace.analyze.bpf import attachment_label
from cnitrace.analyze.dumps import Dump
from cnitrace.collectors.iptables import graph as ipt_graph
from cnitrace.collectors.iptables.parse import Ruleset
from cnitrace.collectors.nftables.parse import NftRule, NftSet

WINDOW = "counters: the difference between the two dumps (a window between them)"


def _chains(doc: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for t in (doc.get("netfilter") or {}).get("tables", ()):
        for c in t["chain_figures"]:
            out[(t["label"], c["chain"])] = c
    return out


def _static_ns(c: Mapping[str, Any] | None, which: str) -> float | None:
    return None if c is None else c.get(which)


def chain_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    ca, cb = _chains(a), _chains(b)
    changed, new, gone = [], [], []
    for key in ca.keys() | cb.keys():
        x, y = ca.get(key), cb.get(key)
        row = {"table": key[0], "chain": key[1], "rules_before": x["rules"] if x else None,
               "rules_after": y["rules"] if y else None,
               "worst_ns_before": _static_ns(x, "worst_ns"), "worst_ns_after": _static_ns(y, "worst_ns"),
               "typical_ns_before": _static_ns(x, "typical_ns"), "typical_ns_after": _static_ns(y, "typical_ns"),
               "provenance": "static"}
        if x is None:
            new.append(row)
        elif y is None:
            gone.append(row)
        elif x["rules"] != y["rules"] or _static_ns(x, "worst_ns") != _static_ns(y, "worst_ns"):
            changed.append(row)

    def size(r: Mapping[str, Any]) -> int:
        return abs((r["rules_after"] or 0) - (r["rules_before"] or 0))

    return {"changed": sorted(changed, key=lambda r: (-size(r), r["table"], r["chain"])),
            "new": sorted(new, key=lambda r: (-size(r), r["table"], r["chain"])),
            "removed": sorted(gone, key=lambda r: (-size(r), r["table"], r["chain"]))}


def hook_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per hook path: static worst/typical evaluations and ns per packet before → after, and the delta."""
    def index(doc: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(h["family"], h["hook"]): h for h in (doc.get("netfilter") or {}).get("hooks", ())}

    ia, ib = index(a), index(b)
    out = []
    for key in sorted(ia.keys() | ib.keys()):
        x, y = (ia.get(key) or {}).get("static") or {}, (ib.get(key) or {}).get("static") or {}
        row: dict[str, Any] = {"family": key[0], "hook": key[1], "provenance": "static",
                               "cost_source": y.get("cost_source") or x.get("cost_source")}
        for f in ("worst_evaluations", "typical_evaluations", "worst_ns", "typical_ns"):
            before, after = x.get(f), y.get(f)
            row[f] = {"before": before, "after": after, "delta": (after or 0) - (before or 0)}
        out.append(row)
    return out


def _rulesets(dumps: Iterable[Dump]) -> dict[tuple[str, str], tuple[Ruleset, bool]]:
    """iptables dumps by (backend, family): (ruleset, whether its rules carried counters)."""
    out = {}
    for d in dumps:
        if hasattr(d.data, "rules") and hasattr(d.data, "chains"):
            key = (d.meta.get("backend") or "", d.meta.get("family") or "ipv4")
            out[key] = (d.data, bool(d.meta.get("rule_counters")))
    return out


def counter_changes(before: Iterable[Dump], after: Iterable[Dump], top: int = 20) -> dict[str, Any]:
    """Packets gained per rule and per chain, and the window's evaluations per packet, where both
    sides of an iptables dump carried rule counters (and nft rules with counters)."""
    ra, rb = _rulesets(before), _rulesets(after)
    rules: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []
    notes: list[str] = []
    warnings: list[str] = []
    for key in sorted(ra.keys() & rb.keys()):
        (x, cx), (y, cy) = ra[key], rb[key]
        label = f"iptables-{key[0]} {key[1]}" if key[0] else f"iptables {key[1]}"
        if not (cx and cy):
            notes.append(f"{label}: {'before' if not cx else 'after'} was saved without -c: rule packets gained "
                         "are unknown")
            continue
        delta, w = ipt_graph.ruleset_delta(x, y)
        warnings += [f"{label}: {m}" for m in w]
        for r in delta.rules:
            if r.packets:
                rules.append({"table": f"{label} {r.table}", "chain": r.chain, "position": r.position,
                              "rule": r.spec[:200], "packets": r.packets, "bytes": r.bytes, "provenance": WINDOW})
        for tk, graph in ipt_graph.nodes_of(delta).items():
            for name, c in ipt_graph.evaluate(graph, floor_by_observed=True).items():
                if c.entering:
                    chains.append({"table": f"{label} {tk[2]}", "chain": name, "entering_packets": round(c.entering),
                                   "evaluations_per_packet": _r(c.per_packet),
                                   "inclusive_evaluations_per_packet": _r(c.inclusive_per_packet),
                                   "provenance": WINDOW})
    na = {r.key: r for d in before for r in d.records if isinstance(r, NftRule) and r.has_counter}
    for d in after:
        for r in d.records:
            if isinstance(r, NftRule) and r.has_counter and r.key in na:
                gained = r.packets - na[r.key].packets
                if gained > 0:
                    rules.append({"table": f"nft {r.family} {r.table}", "chain": r.chain, "position": r.position,
                                  "rule": r.comment or f"handle {r.handle}", "packets": gained, "bytes": None,
                                  "provenance": WINDOW})
    rules.sort(key=lambda r: -r["packets"])
    chains.sort(key=lambda c: -c["entering_packets"])
    return {"rules": rules[:top], "rules_gaining": len(rules), "chains": chains, "notes": notes, "warnings": warnings}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def set_changes(a: Analysis, b: Analysis) -> list[dict[str, Any]]:
    def sizes(x: Analysis) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for d in x.dumps:
            for r in d.records:
                if isinstance(r, NftSet):
                    out[f"nft {r.family} {r.table} @{r.name}"] = r.size
            if d.format == "ipset":
                out.update({f"ipset {k}": v for k, v in state.set_sizes(d.records).items()})
        return out

    sa, sb = sizes(a), sizes(b)
    out = []
    for k in sorted(sa.keys() | sb.keys()):
        x, y = sa.get(k), sb.get(k)
        if x != y:
            out.append({"set": k, "before": x, "after": y, "delta": (y or 0) - (x or 0)})
    return sorted(out, key=lambda r: -abs(r["delta"]))


def ovs_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    def tables(doc: Mapping[str, Any]) -> dict[tuple[str, str], int]:
        out = {}
        for i, f in enumerate((doc.get("ovs") or {}).get("flows", ())):
            for t in f["tables"]:
                out[(f["bridge"] or f"dump {i + 1}", t["table"])] = t["flows"]
        return out

    ta, tb = tables(a), tables(b)
    out = [{"bridge": k[0], "table": k[1], "flows_before": ta.get(k), "flows_after": tb.get(k),
            "delta": (tb.get(k) or 0) - (ta.get(k) or 0)} for k in ta.keys() | tb.keys() if ta.get(k) != tb.get(k)]
    return sorted(out, key=lambda r: -abs(r["delta"]))


def bpf_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What runs at each tc/XDP hook, before and after: programs and filters added or removed there
    (each one runs for every packet through the hook)."""
    def at(doc: Mapping[str, Any]) -> dict[tuple[str, str, str], list[str]]:
        out: dict[tuple[str, str, str], list[str]] = {}
        for d in (doc.get("bpf") or {}).get("attachments", ()):
            out.setdefault((d["kind"], d["hook"], d["target"]), []).append(attachment_label(d))
        return out

    xa, xb = at(a), at(b)
    out = []
    for k in sorted(xa.keys() | xb.keys()):
        before, after = xa.get(k, []), xb.get(k, [])
        for change, names in (("removed", [n for n in before if n not in after]),
                              ("added", [n for n in after if n not in before])):
            out += [{"kind": k[0], "hook": k[1], "target": k[2], "change": change, "what": n} for n in names]
    return out


def conntrack_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Conntrack between the dumps: entries listed (`conntrack -L`) and the per-CPU counters' totals
    (`conntrack -S`) that changed."""
    def figures(doc: Mapping[str, Any]) -> dict[str, int]:
        ct = doc.get("conntrack") or {}
        out = {f"{k} (conntrack -S)": v for k, v in ((ct.get("stats") or {}).get("totals") or {}).items()}
        if ct.get("list"):
            out["entries (conntrack -L)"] = ct["list"]["entries"]
        return out

    fa, fb = figures(a), figures(b)
    return [{"what": k, "before": fa.get(k), "after": fb.get(k), "delta": (fb.get(k) or 0) - (fa.get(k) or 0)}
            for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]


def diff(a: Analysis, b: Analysis, top: int = 20) -> dict[str, Any]:
    """The diff document (JSON-ready)."""
    return {
        "kind": "analyze-diff", "schema_version": 1,
        "before": sorted({d.source for d in a.dumps}), "after": sorted({d.source for d in b.dumps}),
        "hooks": hook_changes(a.doc, b.doc),
        "chains": chain_changes(a.doc, b.doc),
        "counters": counter_changes(a.dumps, b.dumps, top),
        "sets": set_changes(a, b),
        "ovs_tables": ovs_changes(a.doc, b.doc),
        "bpf": bpf_changes(a.doc, b.doc),
        "conntrack": conntrack_changes(a.doc, b.doc),
        "netfilter": bool(a.doc.get("netfilter") or b.doc.get("netfilter")),
        "cost": b.doc["cost"],
    }

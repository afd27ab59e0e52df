"""One cluster report from per-node profile documents (pure: documents in, one document out).

A cliff shows up across a cluster first: one node's policy chain grew, one node's conntrack
table is full. The merge lines the nodes' figures up by stage, table and chain (per-workload
and per-policy chain names are folded into families, `cali-fw-*`, so nodes compare like with
like), totals them per packet (packet-weighted), and names the nodes that stand out.

Outlier rule (robust, any number of nodes): a node's figure is named when it is at least
MIN_RATIO × the median of the *other* nodes, exceeds it by at least the excess floor (the larger
of MIN_EXCESS_NS and EXCESS_SHARE of the median node's total per packet, so noise on small
figures is never named), and — with five or more nodes, where a spread can be estimated — lies more than
MAX_Z robust z-scores (median and MAD of all nodes) above the median. A chain is named only when
its table and stage exceed the other nodes by the floor too (an apportioned chain that merely took
a larger share of the same table time is no cliff). One level is named per cliff: a parent (table,
stage, node total) gives way to a named descendant that explains at least half its excess, and
descendants that each explain less give way to the parent (the cost is spread).

Every per-node figure keeps its source document's provenance (measured / modelled / both) and
basis, and every finding says which it compared.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Any, Iterable, Mapping, Sequence

from cnitrace import __version__
from cnitrace.core.errors import UsageError
from cnitrace.reports.document import fmt_ns

SCHEMA_VERSION = 1          # reports/cluster/cluster.schema.json pins it
MIN_RATIO = 2.0
MIN_EXCESS_NS = 50.0
EXCESS_SHARE = 0.05
MAX_Z = 3.5
MIN_NODES_Z = 5             # the z-score needs a spread: the MAD of fewer nodes is one node's distance
MAD_SCALE = 1.4826          # MAD of a normal sample × this = its standard deviation
CT_FULL = 0.8               # conntrack fill named as an outlier on its own
EXPLAINS = 0.5              # a named descendant that explains this much of a parent's excess hides the parent

REST = "rest of stack"
# A name's last dash-separated token that is a hash, an interface or a policy id: 8+ characters
# with a digit (cali-fw-cali7f97efb4212, cali-pi-_Dj3yXQippYtT5UV_zE5, KUBE-NWPLCY-3QWQ4B2V...),
# or 12+ upper-case letters/digits (kube-proxy's base32 KUBE-SEP-/KUBE-SVC- suffixes).
_HASHY = re.compile(r"^(?P<head>.+?[-_])(?P<tail>(?=[A-Za-z0-9_.]*[0-9])[A-Za-z0-9_.]{8,}|[A-Z0-9]{12,})$")


def family(name: str) -> str:
    """The chain/program name with a per-workload or per-policy suffix folded to `*`."""
    m = _HASHY.match(name)
    return f"{m['head']}*" if m else name


# --- reading one document -----------------------------------------------------------------------

def node_name(doc: Mapping[str, Any]) -> str:
    """The node a document describes: the agent's node name, else the host name; a lab's name is
    added (`host/lab`) since several labs share one host."""
    agent = doc.get("agent") if isinstance(doc.get("agent"), Mapping) else {}
    base = str(agent.get("node") or agent.get("node_name") or doc["host"]["hostname"])
    lab = doc.get("lab") or {}
    lab_name = (lab.get("spec") or {}).get("name") if isinstance(lab, Mapping) else None
    return f"{base}/{lab_name}" if lab_name and not base.endswith(f"/{lab_name}") else base


def _provenance(provs: Iterable[str]) -> str:
    s = set(provs)
    return s.pop() if len(s) == 1 else ("both" if s else "modelled")


def figures_of(tree: Mapping[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Key → this node's figure, for every stage/table/chain/program/OVS table/proxy of the tree.

    Keys: ("stage", S), ("table", S, T), ("chain", S, T, family), ("program", S, family),
    ("ovs_table", S, name), ("proxy", S, name). Members of one family add up.
    """
    out: dict[tuple[str, ...], dict[str, Any]] = {}

    def add(key: tuple[str, ...], n: Mapping[str, Any]) -> None:
        f = out.setdefault(key, {"ns_per_packet": None, "evaluations_per_packet": None, "packets": 0,
                                 "provs": [], "members": [], "top": None, "top_ns": -1.0, "rules": None})
        ns, ev = n.get("ns_per_packet"), n.get("evaluations_per_packet")
        if ns is not None:
            f["ns_per_packet"] = (f["ns_per_packet"] or 0.0) + ns
        if ev is not None:
            f["evaluations_per_packet"] = (f["evaluations_per_packet"] or 0.0) + ev
        f["packets"] = max(f["packets"], int(n.get("packets") or 0))
        f["provs"].append(n.get("provenance") or "modelled")
        f["members"].append(n["name"])
        rules = (n.get("detail") or {}).get("rules")
        if isinstance(rules, int) and not isinstance(rules, bool):
            f["rules"] = (f["rules"] or 0) + rules
        if (ns or 0.0) > f["top_ns"]:
            f["top"], f["top_ns"], f["basis"] = n["name"], ns or 0.0, n.get("basis")

    def walk(n: Mapping[str, Any], stage: str | None, table: str | None) -> None:
        kind, name = n.get("kind"), n.get("name", "")
        if kind == "stage":
            stage, table = name, None
            add(("stage", name), n)
        elif kind == "table" and stage:
            table = name
            add(("table", stage, name), n)
        elif kind == "chain" and stage:
            add(("chain", stage, table or "", family(name)), n)
        elif kind == "program" and stage:
            add(("program", stage, family(name)), n)
        elif kind in ("ovs_table", "proxy") and stage:
            add((kind, stage, name), n)
        for c in n.get("children") or ():
            walk(c, stage, table)

    walk(tree, None, None)
    for f in out.values():
        f["provenance"] = _provenance(f.pop("provs"))
        f["name"] = f.pop("top")
        f.pop("top_ns")
        f.setdefault("basis", None)
    return out


def _conntrack(ct: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not ct or not isinstance(ct.get("count"), (int, float)):
        return None
    mx = ct.get("max")
    return {"count": int(ct["count"]), "max": int(mx) if isinstance(mx, (int, float)) else None,
            "fill": (ct["count"] / mx) if isinstance(mx, (int, float)) and mx > 0 else None,
            "insert_failed": int(ct.get("insert_failed") or 0), "drop": int(ct.get("drop") or 0),
            "provenance": "measured"}


def _rules(doc: Mapping[str, Any], figs: Mapping[tuple[str, ...], dict]) -> dict[str, Any] | None:
    """The node's rule count and where it came from: the chains' own counts when the document has
    them, else a lab's policy rules (its spec), else unknown."""
    chains = [f["rules"] for k, f in figs.items() if k[0] == "chain" and f["rules"] is not None]
    if chains:
        return {"count": sum(chains), "source": "chain rule counts"}
    spec = ((doc.get("lab") or {}).get("spec") or {}) if isinstance(doc.get("lab"), Mapping) else {}
    if isinstance(spec.get("rules"), int):
        return {"count": spec["rules"], "source": "lab policy rules (spec)"}
    return None


def node_summary(name: str, source: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    tree = doc["tree"]
    figs = figures_of(tree)
    lab = doc.get("lab") or {}
    return {
        "name": name, "source": source, "hostname": doc["host"]["hostname"], "kernel": doc["host"]["kernel"],
        "cni": [c["name"] for c in doc.get("cni") or []],
        "lab": ((lab.get("spec") or {}).get("name") if isinstance(lab, Mapping) else None),
        "agent": doc.get("agent") if isinstance(doc.get("agent"), Mapping) else None,
        "started_at": doc["started_at"], "duration_s": doc["duration_s"], "traffic": doc["traffic"]["kind"],
        "packets": int(tree.get("packets") or 0), "ns_per_packet": tree.get("ns_per_packet"),
        "provenance": tree.get("provenance") or "modelled", "headline": doc["headline"],
        "backends": {k: v["backend"] for k, v in (doc.get("backends") or {}).items()},
        "calibration_ns_per_rule_eval": (doc.get("calibration") or {}).get("ns_per_rule_eval"),
        "rules": _rules(doc, figs), "conntrack": _conntrack(doc.get("conntrack")),
        "drops": sum(int(d.get("count") or 0) for d in doc.get("drops") or ()),
        "lost_events": int(doc.get("lost_events") or 0), "warnings": len(doc.get("warnings") or ()),
    }


# --- statistics ---------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def robust_z(v: float, xs: Sequence[float]) -> float:
    """(v - median) / (1.4826 × MAD) over xs; infinite when the others do not spread at all."""
    med = median(xs)
    mad = median([abs(x - med) for x in xs])
    if mad > 0:
        return (v - med) / (MAD_SCALE * mad)
    return math.inf if v > med else (-math.inf if v < med else 0.0)


def flagged(values: Mapping[str, float], floor: float) -> dict[str, dict[str, float]]:
    """node → {value, median (of the other nodes), ratio, excess, z} for the nodes the rule names."""
    out = {}
    if len(values) < 2:
        return out
    allv = list(values.values())
    for node, v in values.items():
        others = [x for n, x in values.items() if n != node]
        med = median(others)
        excess = v - med
        ratio = v / med if med > 0 else math.inf
        z = robust_z(v, allv) if len(values) >= MIN_NODES_Z else math.inf
        if excess > 0 and excess >= floor and ratio >= MIN_RATIO and z >= MAX_Z:
            out[node] = {"value": v, "median": med, "ratio": ratio, "excess": excess, "z": z}
    return out


# --- the merge ----------------------------------------------------------------------------------

def _parent(key: tuple[str, ...]) -> tuple[str, ...] | None:
    if key[0] == "chain":
        return ("table", key[1], key[2])
    if key[0] in ("table", "program", "ovs_table", "proxy"):
        return ("stage", key[1])
    if key[0] == "stage":
        return ("root",)
    return None


def _label(key: tuple[str, ...]) -> str:
    if key[0] == "root":
        return "total"
    if key[0] == "stage":
        return f"stage {key[1]}"
    return f"{key[0].replace('_', ' ')} {key[-1]}"


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _jsonable(x: float) -> float | None:
    return None if x is None or math.isinf(x) or math.isnan(x) else x


def finding_text(f: Mapping[str, Any]) -> str:
    """One line: "node X: chain FORWARD (filter) 5.1× the median per packet (…), 4,120 more rules"."""
    what = f["label"]
    if f["kind"] in ("chain", "program") and f.get("name"):
        what = f"{f['kind']} {_short(f['name'])}"
    if f.get("table"):
        what += f" ({f['table']})"
    prov = (f.get("basis") or f["provenance"]) + (f", median node {f['median_provenance']}"
                              if f.get("median_provenance") and f["median_provenance"] != f["provenance"] else "")
    if f["ratio"] is None:
        head = f"node {f['node']}: {what} {fmt_ns(f['ns_per_packet'])} per packet where the median node has none ({prov})"
    else:
        head = (f"node {f['node']}: {what} {f['ratio']:.1f}× the median per packet "
                f"({fmt_ns(f['ns_per_packet'])} vs {fmt_ns(f['median_ns'])}, {prov})")
    tail = []
    if f.get("extra_rules") is not None and f["extra_rules"] > 0:
        tail.append(f"{f['extra_rules']:,} more rules")
    elif f.get("extra_evaluations") is not None and f["extra_evaluations"] >= 1:
        tail.append(f"{f['extra_evaluations']:,.0f} more rule evaluations per packet")
    if f.get("extra_node_rules") and f["extra_node_rules"] > 0 and f.get("extra_rules") is None:
        tail.append(f"{f['extra_node_rules']:,} more {f['node_rules_source']}")
    return ", ".join([head, *tail])


def merge(inputs: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    """(source, explicit node name or None, profile document) per node → the cluster document.

    Raises UsageError for fewer than two documents, a document that is not a profile, and two
    documents that name the same node.
    """
    if len(inputs) < 2:
        raise UsageError(f"merge needs at least two per-node profile documents (got {len(inputs)})")
    names: dict[str, str] = {}
    nodes, figs = [], {}
    for source, explicit, doc in inputs:
        if not isinstance(doc, Mapping) or doc.get("kind") != "profile" or not isinstance(doc.get("tree"), Mapping):
            raise UsageError(f"{source}: not a cnitrace profile document")
        name = explicit or node_name(doc)
        if name in names:
            raise UsageError(f"duplicate node name {name!r} ({names[name]} and {source}): "
                             f"name them with NAME=FILE")
        names[name] = source
        nodes.append(node_summary(name, source, doc))
        figs[name] = figures_of(doc["tree"])
        figs[name][("root",)] = {"ns_per_packet": doc["tree"].get("ns_per_packet"), "packets": nodes[-1]["packets"],
                                 "evaluations_per_packet": None, "provenance": nodes[-1]["provenance"],
                                 "basis": None, "members": [], "name": "total", "rules": None}
    order = [n["name"] for n in nodes]
    keys = sorted({k for f in figs.values() for k in f}, key=_sort_key)
    totals_ns = [n["ns_per_packet"] for n in nodes if n["ns_per_packet"] is not None]
    floor = max(MIN_EXCESS_NS, EXCESS_SHARE * median(totals_ns)) if totals_ns else MIN_EXCESS_NS

    rows = []
    for key in keys:
        per_node = {}
        for n in order:
            f = figs[n].get(key)
            parent = _parent(key)
            if f is not None:
                per_node[n] = {k: f[k] for k in ("ns_per_packet", "evaluations_per_packet", "packets", "provenance",
                                                 "basis", "name", "members", "rules")} | {"absent": False}
            elif parent in figs[n] and key != ("stage", REST):
                # the node saw the enclosing table/stage and packets never reached this one: zero
                # (the rest of the stack is a remainder of measured transit: absent means untimed)
                per_node[n] = {"ns_per_packet": 0.0, "evaluations_per_packet": 0.0, "packets": 0,
                               "provenance": figs[n][parent]["provenance"] if parent else "measured",
                               "basis": "absent on this node (zero)", "name": None, "members": [], "rules": None,
                               "absent": True}
        rows.append({"key": list(key), "kind": key[0], "label": _label(key), "nodes": per_node,
                     "median_ns": _median_of(per_node, "ns_per_packet"),
                     "total": _total(per_node)})
    outliers = _outliers(rows, nodes, floor)
    outliers += _conntrack_outliers(nodes)
    headline = (outliers[0]["text"] + (f" (+{len(outliers) - 1} more)" if len(outliers) > 1 else "")
                if outliers else f"no outlier among {len(nodes)} nodes: every figure within "
                                 f"{MIN_RATIO:g}× the median of the other nodes or {fmt_ns(floor)} of it")
    return {
        "schema_version": SCHEMA_VERSION, "kind": "cluster", "tool": {"name": "cnitrace", "version": __version__},
        "headline": headline, "nodes": nodes, "figures": rows, "totals": _totals(nodes, rows),
        "outliers": outliers,
        "rule": {"method": f"ratio to the median of the other nodes, an excess floor, and with {MIN_NODES_Z}+ nodes a "
                           "robust z-score (median/MAD) of all nodes",
                 "min_ratio": MIN_RATIO, "min_excess_ns": floor, "max_z": MAX_Z, "conntrack_full": CT_FULL},
        "warnings": _warnings(nodes),
    }


def _sort_key(k: tuple[str, ...]) -> tuple:
    rank = {"root": 0, "stage": 1, "table": 2, "chain": 3, "program": 2, "ovs_table": 2, "proxy": 2}
    return (k[1] if len(k) > 1 else "", k[2] if k[0] == "chain" else (k[2] if len(k) > 2 else ""),
            rank.get(k[0], 9), k)


def _median_of(per_node: Mapping[str, Mapping], field: str) -> float | None:
    xs = [v[field] for v in per_node.values() if v.get(field) is not None]
    return median(xs) if xs else None


def _total(per_node: Mapping[str, Mapping]) -> dict[str, Any]:
    """Cluster-wide per packet: the packet-weighted mean over the nodes that have the figure; its
    provenance is the nodes' (`mixed` when they differ)."""
    have = [v for v in per_node.values() if v.get("ns_per_packet") is not None and not v["absent"]]
    pk = sum(v["packets"] for v in have)
    ns = sum(v["ns_per_packet"] * v["packets"] for v in have) / pk if pk else None
    ev = [v for v in have if v.get("evaluations_per_packet") is not None]
    epk = sum(v["packets"] for v in ev)
    provs = {v["provenance"] for v in have}
    return {"packets": sum(v["packets"] for v in per_node.values()), "ns_per_packet": ns,
            "evaluations_per_packet": (sum(v["evaluations_per_packet"] * v["packets"] for v in ev) / epk) if epk else None,
            "provenance": provs.pop() if len(provs) == 1 else ("mixed" if provs else None),
            "nodes": len(have)}


def _excess(row: Mapping, node: str) -> float | None:
    """The node's figure minus the median of the other nodes' (None when it has no figure)."""
    mine = row["nodes"].get(node)
    others = [v["ns_per_packet"] for n, v in row["nodes"].items() if n != node and v["ns_per_packet"] is not None]
    if mine is None or mine["ns_per_packet"] is None or not others:
        return None
    return mine["ns_per_packet"] - median(others)


def _outliers(rows: Sequence[Mapping], nodes: Sequence[Mapping], floor: float) -> list[dict[str, Any]]:
    """Every figure the rule names, then only the level that explains it: a chain (or program,
    table) is named only when the tables and stage above it also exceed the other nodes by the
    floor (an apportioned chain that only took a larger share of the same table time is not a
    cliff); a parent gives way to a descendant that explains half its excess, and a descendant that
    explains less than half gives way to its parent (the cost is spread, the parent says it)."""
    by_node = {n["name"]: n for n in nodes}
    by_key = {tuple(r["key"]): r for r in rows}
    node_rules = {n: (v["rules"] or {}).get("count") for n, v in by_node.items()}
    found: dict[tuple[str, tuple], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row["key"])
        if key == ("stage", REST):
            continue    # a remainder (transit minus the stages), not a place to act: the total covers it
        vals = {n: v["ns_per_packet"] for n, v in row["nodes"].items() if v["ns_per_packet"] is not None}
        for node, s in flagged(vals, floor).items():
            above = [_excess(by_key[a], node) for a in _ancestors(key) if a != ("root",) and a in by_key]
            if any(e is None or e < floor for e in above):
                continue
            mine = row["nodes"][node]
            others = [v for n, v in row["nodes"].items() if n != node]
            med_ev = _median_of({i: v for i, v in enumerate(others)}, "evaluations_per_packet")
            rules_o = [v["rules"] for v in others if v["rules"] is not None]
            nr_o = [node_rules[n] for n in row["nodes"] if n != node and node_rules[n] is not None]
            near = min(others, key=lambda v: abs(v["ns_per_packet"] - s["median"])
                       if v["ns_per_packet"] is not None else math.inf)
            f = {"node": node, "kind": key[0], "key": list(key), "label": row["label"],
                 "stage": key[1] if len(key) > 1 else None, "table": key[2] if key[0] == "chain" else None,
                 "family": key[-1], "name": mine["name"], "members": mine["members"],
                 "ns_per_packet": s["value"], "median_ns": s["median"], "ratio": _jsonable(s["ratio"]),
                 "excess_ns": s["excess"], "z": _jsonable(s["z"]),
                 "provenance": mine["provenance"], "basis": mine["basis"], "median_provenance": near["provenance"],
                 "evaluations_per_packet": mine["evaluations_per_packet"], "median_evaluations": med_ev,
                 "extra_evaluations": (mine["evaluations_per_packet"] - med_ev
                                       if mine["evaluations_per_packet"] is not None and med_ev is not None else None),
                 "rules": mine["rules"],
                 "extra_rules": (int(mine["rules"] - median(rules_o)) if mine["rules"] is not None and rules_o else None),
                 "extra_node_rules": (int(node_rules[node] - median(nr_o))
                                      if node_rules[node] is not None and nr_o else None),
                 "node_rules_source": ((by_node[node]["rules"] or {}).get("source") or "").split(" (")[0]}
            f["text"] = finding_text(f)
            found[(node, key)] = f
    keep = []
    for (node, key), f in found.items():
        kids = [g for (n2, k2), g in found.items() if n2 == node and _is_below(k2, key)]
        if any(g["excess_ns"] >= EXPLAINS * f["excess_ns"] for g in kids):
            continue
        parents = [g for (n2, k2), g in found.items() if n2 == node and _is_below(key, k2)]
        if any(f["excess_ns"] < EXPLAINS * g["excess_ns"] for g in parents):
            continue
        keep.append(f)
    return sorted(keep, key=lambda f: -f["excess_ns"])


def _ancestors(k: tuple[str, ...]) -> list[tuple[str, ...]]:
    out, p = [], _parent(k)
    while p is not None:
        out.append(p)
        p = _parent(p)
    return out


def _is_below(k: tuple[str, ...], anc: tuple[str, ...]) -> bool:
    return anc in _ancestors(k)


def _conntrack_outliers(nodes: Sequence[Mapping]) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        ct = n["conntrack"]
        if not ct:
            continue
        others = [m["conntrack"] for m in nodes if m is not n and m["conntrack"]]
        fails = ct["insert_failed"] + ct["drop"]
        fails_o = median([o["insert_failed"] + o["drop"] for o in others]) if others else 0
        why = []
        if ct["fill"] is not None and ct["fill"] >= CT_FULL:
            why.append(f"conntrack {ct['fill'] * 100:.0f} % full ({ct['count']:,} / {ct['max']:,} entries)")
        if fails > 0 and fails_o == 0:
            why.append(f"conntrack insert_failed {ct['insert_failed']:,}, drop {ct['drop']:,} "
                       f"where the median node has none")
        if why:
            out.append({"node": n["name"], "kind": "conntrack", "key": ["conntrack"], "label": "conntrack",
                        "fill": ct["fill"], "insert_failed": ct["insert_failed"], "drop": ct["drop"],
                        "provenance": "measured", "excess_ns": 0.0,
                        "text": f"node {n['name']}: " + "; ".join(why) + " (measured)"})
    return out


def _totals(nodes: Sequence[Mapping], rows: Sequence[Mapping]) -> dict[str, Any]:
    root = next((r for r in rows if r["kind"] == "root"), None)
    cts = [(n["name"], n["conntrack"]) for n in nodes if n["conntrack"]]
    fullest = max(cts, key=lambda c: c[1]["fill"] or 0.0) if cts else None
    rules = [n["rules"]["count"] for n in nodes if n["rules"]]
    return {
        "nodes": len(nodes), "packets": sum(n["packets"] for n in nodes),
        "ns_per_packet": root["total"]["ns_per_packet"] if root else None,
        "provenance": root["total"]["provenance"] if root else None,
        "median_node_ns_per_packet": root["median_ns"] if root else None,
        "rules": sum(rules) if rules else None,
        "conntrack": ({"count": sum(c["count"] for _, c in cts),
                       "max": sum(c["max"] or 0 for _, c in cts) or None,
                       "fullest_node": fullest[0], "fullest_fill": fullest[1]["fill"],
                       "insert_failed": sum(c["insert_failed"] for _, c in cts),
                       "drop": sum(c["drop"] for _, c in cts), "provenance": "measured"} if cts else None),
        "drops": sum(n["drops"] for n in nodes), "lost_events": sum(n["lost_events"] for n in nodes),
    }


def _warnings(nodes: Sequence[Mapping]) -> list[str]:
    out = []
    kernels = {n["kernel"] for n in nodes}
    if len(kernels) > 1:
        out.append(f"nodes run different kernels ({', '.join(sorted(kernels))}): per-packet figures compare hardware too")
    cal = [n["calibration_ns_per_rule_eval"] for n in nodes if n["calibration_ns_per_rule_eval"]]
    if len(cal) >= 2 and max(cal) > 2 * min(cal):
        out.append(f"the nodes' rule calibrations differ {max(cal) / min(cal):.1f}× "
                   f"({min(cal):.1f}–{max(cal):.1f} ns per rule evaluation): modelled figures differ by CPU too")
    for n in nodes:
        if n["lost_events"]:
            out.append(f"node {n['name']}: {n['lost_events']:,} lost probe events")
        if n["warnings"]:
            out.append(f"node {n['name']}: {n['warnings']} warning(s) in its profile (see its document)")
    return out

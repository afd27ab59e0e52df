"""Terminal rendering of a cluster document: the outliers first, then one column per node."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnitrace.reports.console import plain_console, styled
from cnitrace.reports.document import fmt_ns

WIDTH = 100
MAX_NODE_COLUMNS = 6     # wider clusters: the terminal shows the outliers' nodes first; JSON/HTML keep all
SHOWN_KINDS = ("root", "stage", "table", "chain", "program", "ovs_table", "proxy")


def _cell(f: dict[str, Any] | None) -> str:
    if f is None:
        return "—"
    if f.get("absent"):
        return "0"
    s = fmt_ns(f.get("ns_per_packet"))
    src = f.get("basis") or ""
    return s + (" (a)" if "apportioned" in src else " (M)" if f["provenance"] == "measured"
                else " (m)" if f["provenance"] == "modelled" else " (b)")


def node_columns(doc: dict[str, Any]) -> list[str]:
    """The nodes to show as columns: outliers' nodes first, then the rest, up to the limit."""
    names = [n["name"] for n in doc["nodes"]]
    first = list(dict.fromkeys(o["node"] for o in doc["outliers"]))
    return (first + [n for n in names if n not in first])[:MAX_NODE_COLUMNS]


def render_cluster(doc: dict[str, Any], console: Console | None = None) -> None:
    con = console or plain_console(width=WIDTH)
    con.print(doc["headline"], style="bold", overflow="fold")
    tot = doc["totals"]
    ct = tot.get("conntrack")
    con.print(f"{tot['nodes']} nodes · {tot['packets']:,} packets · cluster per packet "
              f"{fmt_ns(tot['ns_per_packet'])} ({tot['provenance'] or '—'}, packet-weighted) · median node "
              f"{fmt_ns(tot.get('median_node_ns_per_packet'))}"
              + (f" · conntrack fullest {ct['fullest_node']} {ct['fullest_fill'] * 100:.1f} %"
                 if ct and ct.get("fullest_fill") is not None else ""), overflow="fold")
    if doc["outliers"]:
        con.print("outliers", style="bold")
        for o in doc["outliers"]:
            con.print(f"  • {o['text']}", overflow="fold")

    n = Table(title="nodes", width=WIDTH)
    for col, just in (("node", "left"), ("packets", "right"), ("ns/pkt", "right"), ("source", "left"),
                      ("rules", "right"), ("conntrack", "right"), ("cni", "left")):
        n.add_column(col, justify=just, overflow="fold")
    for x in doc["nodes"]:
        c = x["conntrack"]
        n.add_row(x["name"], f"{x['packets']:,}", fmt_ns(x["ns_per_packet"]), x["provenance"],
                  f"{x['rules']['count']:,}" if x["rules"] else "—",
                  f"{c['count']:,}/{c['max']:,}" if c and c.get("max") else (f"{c['count']:,}" if c else "—"),
                  ", ".join(x.get("cni") or []) or "—")
    con.print(n)

    cols = node_columns(doc)
    t = Table(title="per packet, by node (M measured, m modelled, b both, a apportioned)", width=WIDTH)
    t.add_column("stage / table / chain", overflow="fold")
    for c in cols:
        t.add_column(c[-14:], justify="right", no_wrap=True)
    t.add_column("median", justify="right", no_wrap=True)
    hidden = 0
    flagged = {(o["node"], tuple(o["key"])) for o in doc["outliers"]}
    top = max((f["median_ns"] or 0.0 for f in doc["figures"] if f["kind"] == "root"), default=0.0)
    for f in doc["figures"]:
        key = tuple(f["key"])
        peak = max((v["ns_per_packet"] or 0.0 for v in f["nodes"].values()), default=0.0)
        if f["kind"] in ("chain", "program", "ovs_table") and peak < 0.001 * top \
                and not any(k == key for _, k in flagged):
            hidden += 1
            continue
        indent = {"root": 0, "stage": 0, "table": 1}.get(f["kind"], 2)
        cells = []
        for c in cols:
            s = _cell(f["nodes"].get(c))
            cells.append(Text(s, style="bold red") if (c, key) in flagged else s)
        t.add_row(("  " * indent + f["label"])[:44], *cells, fmt_ns(f["median_ns"]))
    con.print(t)
    if hidden or len(doc["nodes"]) > len(cols):
        con.print(f"{hidden} rows under 0.1 % not shown"
                  + (f"; {len(doc['nodes']) - len(cols)} more nodes" if len(doc["nodes"]) > len(cols) else "")
                  + " (see --json/--html)")
    r = doc["rule"]
    con.print(f"outlier rule: {r['method']}; named at ≥ {r['min_ratio']:g}× the median of the other nodes and "
              f"≥ {fmt_ns(r['min_excess_ns'])} above it. Figures keep each node's provenance: measured = timed "
              "by a probe; modelled = counters × that node's calibration; apportioned = a measured table's time "
              "split by the model's shares.", overflow="fold")
    for w in doc["warnings"]:
        con.print(styled(("warning:", "yellow"), f" {w}"), overflow="fold")

"""The self-contained cluster HTML report: inline CSS and SVG only, no network fetches."""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

import jinja2

from cnitrace.reports.document import fmt_ns

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")


def node_bars(doc: dict[str, Any], width: int = 640) -> str:
    """An inline SVG bar per node of its total per packet, outlier nodes in red."""
    nodes = doc["nodes"]
    named = {o["node"] for o in doc["outliers"]}
    top = max((n["ns_per_packet"] or 0.0 for n in nodes), default=0.0) or 1.0
    rows = []
    for i, n in enumerate(nodes):
        w = max((n["ns_per_packet"] or 0.0) / top * (width - 260), 1)
        color = "#e15759" if n["name"] in named else "#4e79a7"
        title = html.escape(f"{n['name']}: {fmt_ns(n['ns_per_packet'])} per packet ({n['provenance']})")
        rows.append(f'<text x="0" y="{20 * i + 14}" font-size="12">{html.escape(n["name"][:34])}</text>'
                    f'<rect class="node" x="250" y="{20 * i + 3}" width="{w:.1f}" height="14" fill="{color}">'
                    f"<title>{title}</title></rect>")
    return (f'<svg id="node-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{20 * len(nodes) + 6}" role="img" aria-label="per-packet time by node">{"".join(rows)}</svg>')


def render_cluster_html(doc: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True)
    text = resources.files("cnitrace.reports.cluster").joinpath("cluster.html.j2").read_text(encoding="utf-8")
    flagged = {(o["node"], tuple(o["key"])) for o in doc["outliers"]}
    return env.from_string(text).render(
        doc=doc, fmt_ns=fmt_ns, names=[n["name"] for n in doc["nodes"]], flagged=flagged, tuple=tuple,
        node_svg=jinja2.utils.markupsafe.Markup(node_bars(doc)),
        palette=PALETTE)

"""The self-contained HTML report: inline CSS and SVG only, no network fetches."""

from __future__ import annotations

import html
from typing import Any

import jinja2

from cnitrace.reports.document import CHANGED, Node, calibration_text, fmt_ns, ovs_calibration_text

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")


def stage_bars(root: Node, width: int = 640, bar_h: int = 26) -> str:
    """An inline SVG horizontal stacked bar of stage shares, with a legend."""
    stages = [c for c in root.children if c.share]
    x = 0.0
    rects, legend = [], []
    for i, s in enumerate(stages):
        w = s.share * width
        color = PALETTE[i % len(PALETTE)]
        title = html.escape(f"{s.name}: {s.share * 100:.1f} % ({fmt_ns(s.ns_per_packet)}, {s.provenance})")
        rects.append(f'<rect class="stage" x="{x:.1f}" y="0" width="{w:.1f}" height="{bar_h}" fill="{color}">'
                     f"<title>{title}</title></rect>")
        legend.append(f'<rect x="0" y="{bar_h + 10 + 18 * i}" width="12" height="12" fill="{color}"/>'
                      f'<text x="18" y="{bar_h + 21 + 18 * i}" font-size="12">{title}</text>')
        x += w
    h = bar_h + 20 + 18 * len(stages)
    return (f'<svg id="stage-share-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
            f'role="img" aria-label="stage share of per-packet time">{"".join(rects)}{"".join(legend)}</svg>')


def chain_bars(root: Node, width: int = 640) -> str:
    """An inline SVG bar chart of the costliest chains / tables / programs."""
    items = sorted((n for _, n in root.walk() if n.kind in ("chain", "ovs_table", "program", "proxy")
                    and n.ns_per_packet), key=lambda n: -(n.ns_per_packet or 0))[:12]
    if not items:
        return '<svg id="chain-chart" xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    top = items[0].ns_per_packet or 1.0
    rows = []
    for i, n in enumerate(items):
        w = max((n.ns_per_packet or 0) / top * (width - 260), 1)
        label = html.escape(n.name[:34])
        rows.append(f'<text x="0" y="{18 * i + 13}" font-size="12">{label}</text>'
                    f'<rect class="bar" x="250" y="{18 * i + 2}" width="{w:.1f}" height="13" fill="#4e79a7">'
                    f"<title>{html.escape(fmt_ns(n.ns_per_packet))}</title></rect>")
    return (f'<svg id="chain-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{18 * len(items) + 6}">{"".join(rows)}</svg>')


def render_html(doc: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnitrace.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    root = Node.from_json(doc["tree"])
    rows = [(d, n) for d, n in root.walk() if n.kind != "root"]
    return env.get_template("profile.html.j2").render(
        doc=doc, root=root, rows=rows, fmt_ns=fmt_ns, ovs_calibration_text=ovs_calibration_text, calibration_text=calibration_text,
        changed=CHANGED,
        stage_svg=jinja2.utils.markupsafe.Markup(stage_bars(root)),
        chain_svg=jinja2.utils.markupsafe.Markup(chain_bars(root)))

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


def detour_bars(root: Node, width: int = 640, bar_h: int = 22) -> str:
    """The L7 detour of one request in parts (when the profile has them): a stacked bar with a legend
    naming each part's provenance; empty otherwise."""
    l7 = root.find("stage", "l7_proxy")
    d = l7.detail.get("parts") if l7 is not None else None
    if not d or not d.get("total_ns"):
        return ""
    x, rects, legend = 0.0, [], []
    for i, p in enumerate(d["parts"]):
        w = max(p["ns"], 0.0) / d["total_ns"] * width
        color = PALETTE[i % len(PALETTE)]
        title = html.escape(f"{p['name']}: {fmt_ns(p['ns'])} ({p['provenance']}: {p['source']})")
        rects.append(f'<rect x="{x:.1f}" y="18" width="{w:.1f}" height="{bar_h}" fill="{color}"><title>{title}</title></rect>')
        legend.append(f'<rect x="0" y="{bar_h + 28 + 18 * i}" width="12" height="12" fill="{color}"/>'
                      f'<text x="18" y="{bar_h + 39 + 18 * i}" font-size="12">{title}</text>')
        x += w
    head = html.escape(f"L7 detour per request through {d['proxy']} (concurrency {d['concurrency']}): "
                       f"{fmt_ns(d['total_ns'])} measured by the client")
    h = bar_h + 36 + 18 * len(d["parts"])
    return (f'<svg id="l7-detour-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
            f'aria-label="L7 detour in parts"><text x="0" y="12" font-size="12">{head}</text>'
            f'{"".join(rects)}{"".join(legend)}</svg>')


def render_html(doc: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnitrace.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    root = Node.from_json(doc["tree"])
    rows = [(d, n) for d, n in root.walk() if n.kind != "root"]
    return env.get_template("profile.html.j2").render(
        doc=doc, root=root, rows=rows, fmt_ns=fmt_ns, ovs_calibration_text=ovs_calibration_text, calibration_text=calibration_text,
        changed=CHANGED,
        stage_svg=jinja2.utils.markupsafe.Markup(stage_bars(root)),
        chain_svg=jinja2.utils.markupsafe.Markup(chain_bars(root) + detour_bars(root)))

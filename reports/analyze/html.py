"""The analyze document as a self-contained HTML page: inline CSS and SVG only, no network fetches.

Same content as the terminal (hook paths, the costliest chains, OVS tables, BPF programs, the
counters where the dump has them), with every figure's provenance beside it, plus an inline bar
chart of each hook path's static worst and typical ns per packet.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

import jinja2

from cnitrace.reports.analyze.terminal import TOP, cost_line, summary_lines
from cnitrace.reports.document import fmt_ns

TOP_HTML = 50


def hook_bars(hooks: list[Mapping[str, Any]], width: int = 640, bar_h: int = 12) -> str:
    """An inline SVG: per hook path, a bar for the static worst ns and one for the typical ns."""
    top = max((h["static"]["worst_ns"] for h in hooks), default=0.0) or 1.0
    rows = []
    for i, h in enumerate(hooks):
        y = i * (2 * bar_h + 10)
        s = h["static"]
        label = html.escape(f"{h['family']} {h['hook']}")
        for j, (which, color) in enumerate((("worst_ns", "#e15759"), ("typical_ns", "#4e79a7"))):
            w = max(s[which] / top * (width - 200), 1)
            title = html.escape(f"{which.split('_')[0]}: {fmt_ns(s[which])} per packet (static, {s['cost_source']})")
            rows.append(f'<rect class="bar" x="140" y="{y + j * bar_h}" width="{w:.1f}" height="{bar_h - 1}" '
                        f'fill="{color}"><title>{title}</title></rect>')
        rows.append(f'<text x="0" y="{y + bar_h + 3}" font-size="12">{label}</text>')
    h = max(len(hooks) * (2 * bar_h + 10), 10)
    return (f'<svg id="hook-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
            f'aria-label="static ns per packet by hook path">{"".join(rows)}</svg>')


def render_html(doc: Mapping[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnitrace.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    nf = doc.get("netfilter") or {}
    chains = sorted(((t, c) for t in nf.get("tables", ()) for c in t["chain_figures"] if c["rules"]),
                    key=lambda tc: -tc[1]["worst_ns"])[:TOP_HTML]
    return env.get_template("analyze.html.j2").render(
        doc=doc, summary=summary_lines(doc), cost=cost_line(doc), chains=chains, fmt_ns=fmt_ns, top=TOP,
        hook_svg=jinja2.utils.markupsafe.Markup(hook_bars(nf.get("hooks", []))) if nf else "")

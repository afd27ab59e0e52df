"""The sweep's self-contained HTML report: inline CSS and SVG line plots, no network fetches.

One plot per (metric, swept variable): a line per datapath through its measured points, and the
fitted model as a dashed line, so a departure (a cliff) is visible at a glance.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import jinja2

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#edc948", "#9c755f")
TITLES = {"new_flow_ns": "NEW-packet cost, whole path (ns/packet)", "policy_ns": "policy stage (ns/packet)",
          "throughput_gbps": "TCP throughput (Gbit/s)",
          "throughput_per_client_gbps": "TCP throughput per client pod (Gbit/s)", "rtt_p50_us": "request/response RTT p50 (µs)",
          "http_rps": "HTTP requests/s (ab, 100 concurrent)"}


def _nice(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def line_plot(plot_id: str, title: str, xlabel: str, curves: Sequence[Mapping[str, Any]],
              colors: Mapping[str, str], width: int = 560, height: int = 300) -> str:
    """An inline SVG: one polyline + markers per curve, its fitted model dashed."""
    pad_l, pad_r, pad_t, pad_b = 62, 16, 28, 40
    xs = [x for c in curves for x, _ in c["points"]]
    ys = [y for c in curves for _, y in c["points"]] + [0.0]
    x0, x1 = min(xs), max(xs)
    y1 = max(ys) * 1.1 or 1.0
    if x1 == x0:
        x1 = x0 + 1

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return height - pad_b - (y / y1) * (height - pad_t - pad_b)

    parts = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
             f'<text x="{pad_l}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#333"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#333"/>',
             f'<text x="{(width + pad_l) / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle">'
             f'{html.escape(xlabel)}</text>']
    for i in range(5):
        yv = y1 * i / 4
        parts.append(f'<text x="{pad_l - 6}" y="{sy(yv) + 4:.1f}" font-size="10" text-anchor="end">{_nice(yv)}</text>'
                     f'<line x1="{pad_l}" y1="{sy(yv):.1f}" x2="{width - pad_r}" y2="{sy(yv):.1f}" stroke="#eee"/>')
    for xv in sorted(set(xs)):
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - pad_b + 14}" font-size="10" text-anchor="middle">'
                     f'{_nice(xv)}</text>')
    for c in curves:
        color = colors[c["label"]]
        pts = sorted(c["points"])
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="3"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}">'
                         f'<title>{html.escape(c["label"])}: {_nice(y)} at {_nice(x)}</title></circle>')
        model = c.get("model")
        if model and math.isfinite(model.get("slope", 0.0)):
            grid = [x0 + (x1 - x0) * k / 24 for k in range(25)]
            mp = []
            for x in grid:
                if model["kind"] == "linear":
                    y = model["intercept"] + model["slope"] * x
                elif model["kind"] == "logarithmic":
                    y = model["intercept"] + model["slope"] * math.log1p(x)
                else:
                    y = model["intercept"]
                mp.append(f"{sx(x):.1f},{sy(min(max(y, 0.0), y1)):.1f}")
            parts.append(f'<polyline class="model" points="{" ".join(mp)}" fill="none" stroke="{color}" '
                         f'stroke-width="1.5" stroke-dasharray="5,4"/>')
        cliff = c.get("cliff")
        if cliff:
            parts.append(f'<circle class="cliff" cx="{sx(cliff["x"]):.1f}" cy="{sy(cliff["observed"]):.1f}" r="10" '
                         f'fill="none" stroke="#d00" stroke-width="2"><title>cliff: {html.escape(str(cliff.get("stage")))}'
                         f'</title></circle>')
    legend_y = pad_t + 4
    for i, c in enumerate(curves):
        parts.append(f'<rect x="{width - pad_r - 150}" y="{legend_y + 16 * i}" width="12" height="12" '
                     f'fill="{colors[c["label"]]}"/><text x="{width - pad_r - 134}" y="{legend_y + 16 * i + 10}" '
                     f'font-size="11">{html.escape(c["label"])}</text>')
    return (f'<svg id="{html.escape(plot_id)}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{html.escape(title)}">{"".join(parts)}</svg>')


def plots(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plots of a sweep document, grouped by (metric, provenance, swept variable, fixed value)."""
    curves = [c for c in doc.get("curves", ()) if c.get("points")]
    labels = sorted({_label(c) for c in curves})
    colors = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in curves:
        fixed = "clients" if c["x"] == "rules" else "rules"
        key = (c["metric"], c["provenance"], c["x"], c.get(fixed))
        groups.setdefault(key, []).append({**c, "label": _label(c)})
    out = []
    order = list(TITLES)
    for (metric, prov, x, fixed_val), cs in sorted(groups.items(),
                                                   key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 99,
                                                                   kv[0][1], kv[0][2], kv[0][3] or 0)):
        fixed = "clients" if x == "rules" else "rules"
        title = f"{TITLES.get(metric, metric)} — {prov}, {fixed} = {fixed_val}"
        pid = f"plot-{metric}-{prov}-{x}-{fixed_val}"
        out.append({"id": pid, "title": title, "models": [(c["label"], c.get("model", {}).get("describe", ""),
                                                             c.get("cliff")) for c in cs],
                    "svg": line_plot(pid, title, x, cs, colors)})
    return out


def _label(c: Mapping[str, Any]) -> str:
    return f"{c['datapath']}{' L7' if c.get('l7') else ''}{' inter' if c.get('placement') == 'inter' else ''}"


def render_sweep_html(doc: Mapping[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnitrace.reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    ps = [{**p, "svg": jinja2.utils.markupsafe.Markup(p["svg"])} for p in plots(doc)]
    # the headline is measured; the model's agreement with it has its own list (id="agreement")
    return env.get_template("sweep.html.j2").render(doc=doc, plots=ps)

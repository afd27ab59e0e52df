"""Terminal summary of a sweep (rich, at most 100 columns): the findings first, then a table
shaped like the study's results, then each stage's fitted cost model."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from cnitrace.reports.console import plain_console, styled
from cnitrace.reports.document import fmt_ns

WIDTH = 100


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def short_experiment(r: Mapping[str, Any]) -> str:
    """"N=100", "N=0 c=50", "L7 N=0": the point, in as few columns as the table can spare."""
    out = ("L7 " if r.get("l7") else "") + f"N={r['rules']}"
    if r.get("clients", 1) > 1:
        out += f" c={r['clients']}"
    return out + (" inter" if r.get("placement") == "inter" else "")


def table(doc: Mapping[str, Any]) -> Table:
    t = Table(title="Results (study layout) — measured unless marked (m) = modelled", title_justify="left",
              width=WIDTH, pad_edge=False, show_lines=False)
    for col, kw in (("datapath", {"no_wrap": True}), ("point", {"no_wrap": True}), ("Gbit/s", {"justify": "right"}),
                    ("RTT p50", {"justify": "right"}), ("HTTP rps", {"justify": "right"}),
                    ("NEW pkt", {"justify": "right"}), ("policy", {"justify": "right"}),
                    ("policy (m)", {"justify": "right"}), ("L7 +", {"justify": "right"}),
                    ("ok", {"justify": "center"})):
        t.add_column(col, overflow="fold", **kw)
    for r in doc.get("table", ()):
        wide = "!" if r.get("wide") else ""
        t.add_row(r["datapath"], short_experiment(r), _f(r.get("throughput_gbps")), _f(r.get("rtt_p50_us"), "{:.0f} µs"),
                  _f(r.get("http_rps"), "{:.0f}"), fmt_ns(r.get("new_flow_ns")) + wide, fmt_ns(r.get("policy_measured_ns")),
                  fmt_ns(r.get("policy_modelled_ns")), _f(r.get("l7_detour_us"), "{:.0f} µs"),
                  "✓" if r.get("semantics") else "✗")
    return t


def models(doc: Mapping[str, Any]) -> list[str]:
    lines = []
    for c in doc.get("curves", ()):
        if "model" not in c or c["metric"] not in ("new_flow_ns", "policy_ns"):
            continue
        tag = f"{c['datapath']}{' L7' if c['l7'] else ''} {c['stage']} {c['metric']} vs {c['x']} ({c['provenance']})"
        lines.append(f"{tag}: {c['model']['describe']}{' — flat' if c.get('flat') else ''}")
    return lines


def render_sweep(doc: Mapping[str, Any], console: Console | None = None) -> None:
    con = console or plain_console(width=WIDTH, highlight=True)
    state = "interrupted — partial result" if doc.get("interrupted") else "complete"
    con.print(styled(("cnitrace sweep", "bold"), f": {doc['points_done']}/{doc['points_total']} points, "
                     f"{doc['elapsed_s']:.0f} s, {state}"))
    if doc.get("headline"):
        con.print("Measured on this node:")
    for line in doc.get("headline", ()):
        con.print(f"• {line}", soft_wrap=False, overflow="fold")
    if doc.get("agreement_lines"):
        con.print("Modelled (counters × per-shape calibration) against measured, within ±25 %:")
    for line in doc.get("agreement_lines", ()):
        con.print(styled("• " if "outside" not in line else ("✗ ", "red"), line), soft_wrap=False, overflow="fold")
    con.print(table(doc))
    failed = [p for p in doc.get("points", ()) if p.get("status") != "ok"]
    for p in failed:
        con.print(styled((f"✗ {p['spec']['id']}", "red"), f": {p.get('error')}"), overflow="fold")
    bad = [p["spec"]["id"] for p in doc.get("points", ()) if p.get("status") == "ok"
           and not (p.get("semantics") or {}).get("passed")]
    if bad:
        con.print(f"semantics check failed at: {', '.join(bad)}", style="red", overflow="fold")
    wide = [p["spec"]["id"] for p in doc.get("points", ()) if p.get("wide_spread")]
    if wide:
        con.print(f"! spread across repeats too wide (> 25 %) at: {', '.join(wide)}", overflow="fold")
    for line in models(doc):
        con.print(f"  {line}", overflow="fold")
    if doc.get("leftovers"):
        con.print(f"not removed (run `cnitrace cleanup`): {'; '.join(doc['leftovers'])}", style="yellow")

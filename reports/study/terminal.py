"""Terminal summary of a study (rich, at most 100 columns): per experiment family, each CNI's
measured figures, the study's shape beside the one here, whether they agree, and the stage."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from cnitrace.reports.console import plain_console, styled

WIDTH = 100


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "requests/s" or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def measured_text(row: Mapping[str, Any]) -> str:
    """"13.1 → 12.8 Gbit/s (measured)"."""
    m = row["measured"]
    return (f"{fmt_value(m['from'].get('value'), row['unit'])} → {fmt_value(m['to'].get('value'), row['unit'])} "
            f"{row['unit']} ({m['provenance']})")


def agree_text(a: Mapping[str, Any]) -> str:
    return {True: "yes", False: "no", None: "n/a"}[a.get("agrees")]


def family_table(doc: Mapping[str, Any], fam: Mapping[str, Any]) -> Table:
    t = Table(title=f"{fam['title']} — study: {fam['finding']}", title_justify="left", width=WIDTH,
              show_lines=True, pad_edge=False)
    t.add_column("CNI", overflow="fold", max_width=16)
    t.add_column("here (measured)", max_width=22)
    t.add_column("study vs here", max_width=26)
    t.add_column("agree", justify="center", max_width=5)
    t.add_column("stage", overflow="fold")
    for r in doc["rows"]:
        if r["family"] != fam["id"]:
            continue
        st = r["stage"]
        stage = st["text"]
        if st.get("provenance"):
            stage += f" [{st['provenance']}]"
        here = f"{r['condition']}\n{measured_text(r)}"
        agree = agree_text(r["agreement"])
        if r.get("also"):
            here += f"\n{r['also']['here']}"
            agree += f"\n{agree_text(r['also']['agreement'])}"
        t.add_row(r["cni"], here, r["here"]["text"], agree, stage)
    return t


def render_study(doc: Mapping[str, Any], console: Console | None = None) -> None:
    con = console or plain_console(width=WIDTH, highlight=True)
    state = " — INTERRUPTED, partial result" if doc.get("interrupted") else ""
    con.print(styled(("cnitrace study", "bold"), f"{' --quick' if doc['config']['quick'] else ''}: "
                     f"{doc['points_done']}/{doc['points_total']} points in {doc['elapsed_s']:.0f} s{state}"))
    con.print(f"Study: {doc['citation_text']}")
    s = doc["summary"]
    con.print(f"Shapes: {s['agree']} agree, {s['differ']} differ, {s['not_compared']} not compared "
              f"(the study gives no figure, or a point was not measured)")
    for fam in doc["families"]:
        con.print(family_table(doc, fam))
    con.print(styled(("Scaling", "bold"), " (this node vs the study's cluster):"))
    for line in doc["scaling"]:
        con.print(f"  · {line}")
    for line in doc["scaled_down"]:
        con.print(f"  · scaled down: {line}")
    for p in doc["points"]:
        if p.get("status") != "ok":
            con.print(f"point {p['spec']['id']} {p.get('status')}: {p.get('error')}", style="red")
    for left in doc.get("leftovers") or ():
        con.print(f"not removed: {left} (run `cnitrace cleanup`)", style="red")

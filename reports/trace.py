"""Terminal timeline for `cnitrace trace`: one block per traced packet, its hops in order, the
deciding hop marked, the verdict and the policy."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from cnitrace.reports.console import plain_console, styled


def _t(hop: Mapping[str, Any], t0: int | None) -> str:
    t = hop.get("t_ns")
    if t is None or t0 is None:
        return "—"
    return f"+{(t - t0) / 1000:.1f}µs"


def render_trace(doc: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or plain_console()
    sel = doc.get("selection", {})
    console.print(styled(("cnitrace trace", "bold"), f" {sel.get('nft_expr', '')}  in {', '.join(sel.get('netns', []))}"
                         f"  — sent {doc.get('sent', 0)}, traced {doc.get('traced', 0)}"))
    for n, f in enumerate(doc.get("flows", []), 1):
        c = f["cnitrace"]
        ip, l4 = f.get("IP", {}), f.get("l4", {})
        ports = next(iter(l4.values()), {}) if l4 else {}
        proto = next(iter(l4), "")
        head = styled(f"packet {n}: {proto} {ip.get('source')}:{ports.get('source_port')} → "
                      f"{ip.get('destination')}:{ports.get('destination_port')}  ip id {c.get('ip_id')}  ",
                      (str(f["verdict"]), "bold"))
        table = Table(title=head, title_justify="left", show_edge=False, pad_edge=False, box=None)
        table.add_column("#", justify="right")
        table.add_column("time")
        table.add_column("where")
        table.add_column("what", overflow="fold")
        hops = c.get("hops", [])
        t0 = next((h["t_ns"] for h in hops if h.get("t_ns") is not None), None)
        for i, h in enumerate(hops):
            mark = "▶" if i == c.get("deciding_hop") else ""
            table.add_row(f"{mark}{i + 1}", _t(h, t0), h["where"], h["what"])
        console.print(table)
        pol = c.get("policy")
        if pol:
            console.print(f"  decided by: {c.get('where')}: {c.get('rule')}")
            console.print(f"  policy: {pol['kind']} {pol['name']} (from {pol['source']})")
        elif f["verdict"] != "VERDICT_UNKNOWN":
            console.print("  policy: none found (no policy chain or comment names one)")
        console.print(f"  times per hop: {c.get('times')}")
    for w in doc.get("warnings", []):
        console.print(styled(("warning:", "yellow"), f" {w}"))

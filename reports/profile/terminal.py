"""Terminal rendering of a profile document: leads with the answer, fits 100 columns."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cnitrace.reports.console import plain_console, styled
from cnitrace.reports.document import CHANGED, Node, calibration_text, fmt_ns, overhead_text, ovs_calibration_text

WIDTH = 100


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def _rows(root: Node, depth: int = 0, parent: Node | None = None):
    yield depth, root, parent
    for c in root.children:
        yield from _rows(c, depth + 1, root)


def source_text(n: Node) -> str:
    """Where a figure came from, in the words the legend uses: measured / modelled / both with
    model/measured, or apportioned (a measured table's time split by the model's shares)."""
    if n.basis and n.basis.startswith(CHANGED):
        return "changed: " + next((w for w in ("excluded", "re-based") if w in n.basis), n.provenance)
    if n.basis and "apportioned" in n.basis:
        return "apportioned"
    m = n.model_vs_measured
    return n.provenance + (f" m/M {m:.2f}" if m is not None else "")


def render_profile(doc: dict[str, Any], console: Console | None = None) -> None:
    con = console or plain_console(width=WIDTH)
    root = Node.from_json(doc["tree"])
    con.print(doc["headline"], style="bold")
    sel = ", ".join(i["name"] for i in doc["selection"]["interfaces"]) or "—"
    cni = ", ".join(c["name"] for c in doc.get("cni", [])) or "none detected"
    con.print(f"selection: {sel}   cni: {cni}   window: {doc['duration_s']:.1f} s   "
              f"traffic: {doc['traffic']['kind']} ({doc['traffic'].get('packets_sent') or 0} sent)")
    cal = doc.get("calibration")
    if cal:
        con.print(f"calibration: {calibration_text(cal)}"
                  + (f"; {ovs_calibration_text(cal['ovs'])}" if cal.get("ovs") else ""))

    t = Table(title="where each packet's time goes", width=WIDTH, show_lines=False)
    for col, just in (("stage / table / chain / rule", "left"), ("packets", "right"), ("ns/pkt", "right"),
                      ("share", "right"), ("evals/pkt", "right"), ("p50 / p99", "right"), ("source", "left")):
        t.add_column(col, justify=just, no_wrap=col != "stage / table / chain / rule", overflow="fold")
    hidden = 0
    for depth, n, parent in _rows(root):
        # Keep the terminal to what matters: rules only under chains that carry real cost,
        # and nothing that cost nothing; the JSON and HTML keep every node.
        if n.kind == "root":
            continue
        if (n.kind in ("rule", "flow") and (parent.share or 0) < 0.05) or \
                (n.kind in ("chain", "ovs_table") and n.ns_per_packet is not None and (n.share or 0) < 0.001):
            hidden += 1
            continue
        label = ("  " * (depth - 1)) + n.name
        evals = "" if n.evaluations_per_packet is None else f"{n.evaluations_per_packet:,.1f}"
        pct = f"{fmt_ns(n.p50_ns)} / {fmt_ns(n.p99_ns)}" if n.p50_ns is not None else ""
        src = source_text(n)
        t.add_row(label[:44], f"{n.packets:,}", fmt_ns(n.ns_per_packet), _pct(n.share), evals, pct, src)
    con.print(t)
    more = f"; {hidden} rows under 0.1 % not shown (see --json/--html)" if hidden else ""
    con.print(f"total per packet: {fmt_ns(root.ns_per_packet)} ({root.provenance}){more}")
    l7 = root.find("stage", "l7_proxy")
    if l7 is not None and l7.detail.get("parts"):
        render_detour(l7.detail["parts"], con)
    ovs = root.find("stage", "ovs")
    kd = ovs.detail.get("kernel_datapath") if ovs is not None else None
    if kd:
        p = kd["process"]
        con.print(f"OVS kernel datapath ({kd['backend']}, measured): {fmt_ns(kd['ns_per_packet'])} per packet; "
                  f"process p50 {fmt_ns(p['p50_ns'])} / p99 {fmt_ns(p['p99_ns'])} over {p['calls']:,} calls; "
                  f"{ovs.detail['upcalls']:,} upcalls ({ovs.detail['upcall_rate'] * 100:.1f} % of "
                  f"{kd['visits']:,} packets)")

    b = Table(title="probe backend per stage", width=WIDTH)
    b.add_column("stage", no_wrap=True)
    b.add_column("backend", no_wrap=True)
    b.add_column("why", overflow="fold")
    for stage, v in doc["backends"].items():
        b.add_row(stage, v["backend"], v["reason"])
    con.print(b)
    if doc["drops"]:
        d = Table(title="drops", width=WIDTH)
        for col in ("reason", "count", "where", "source"):
            d.add_column(col)
        for x in doc["drops"]:
            d.add_row(x["reason"], f"{x['count']:,}", x.get("where") or "", x["provenance"])
        con.print(d)
    if doc.get("replay"):
        render_exercised(doc["replay"], con)
    if doc["evaluation_order"]:
        con.print("evaluation order: " + " → ".join(doc["evaluation_order"][:12]))
    ct = doc.get("conntrack")
    if ct:
        con.print(f"conntrack: {ct.get('count', '?')} / {ct.get('max', '?')} entries; "
                  f"insert_failed {ct.get('insert_failed', 0)}, drop {ct.get('drop', 0)}")
    con.print(f"lost events: {doc['lost_events']}   tool overhead: {overhead_text(doc['overhead'])}")
    con.print("source: measured = timed by a probe; modelled = counters × this node's calibrated cost per rule "
              "shape; m/M = modelled / measured; apportioned = a measured table's time split by the model's shares"
              + ("; changed = its objects changed during the window (below)" if (doc.get("changes") or {}).get("count")
                 else ""))
    if (doc.get("changes") or {}).get("count"):
        render_changes(doc["changes"], con)
    for w in doc["warnings"]:
        con.print(styled(("warning:", "yellow"), f" {w}"))


def render_detour(d: dict[str, Any], con: Console) -> None:
    """The L7 detour of one request in parts, each with where its figure came from."""
    t = Table(title=f"L7 detour per request through {d['proxy']} (concurrency {d['concurrency']}, "
                    f"{d['requests']:,} requests)", width=WIDTH)
    for col, just in (("part", "left"), ("per request", "right"), ("share", "right"), ("source", "left")):
        t.add_column(col, justify=just, overflow="fold")
    total = d["total_ns"] or 0.0
    for p in d["parts"]:
        t.add_row(p["name"], fmt_ns(p["ns"]), _pct(p["ns"] / total if total else None),
                  f"{p['provenance']}: {p['source']}")
    t.add_row("total (client)", fmt_ns(total), "", "measured: ab mean time per request")
    con.print(t)
    if d.get("direct_ns") is not None:
        con.print(f"direct (no detour): {fmt_ns(d['direct_ns'])} per request (measured)")
    st = d.get("envoy_stats")
    if st:
        con.print(f"envoy statistics (measured): RBAC allowed {st['rbac_allowed']:,}, denied {st['rbac_denied']:,}; "
                  "downstream " + ", ".join(f"{k} {v:,}" for k, v in st["downstream_rq"].items() if v))
    if d.get("stall"):
        con.print(d["stall"], style="yellow")


CHANGES_SHOWN = 10


def render_changes(ch: dict[str, Any], con: Console, limit: int = CHANGES_SHOWN) -> None:
    """One line per object the node changed during the window (capped, with the count), each with
    what it did to the figures; the measured figures' validity said once."""
    mid = ch.get("mid_snapshots") or {}
    watched = (f"{mid['count']} mid-window snapshots" if mid.get("count") is not None
               else f"no mid-window snapshot ({mid['skipped']})" if mid.get("skipped") else "before/after only")
    con.print(styled(("changed during the window:", "bold yellow"), f" {ch['count']} object(s), watched by "
                     f"{watched}; {ch.get('measured', '')}"), overflow="fold")
    for o in ch["objects"][:limit]:
        con.print(f"  • {o['label']}: {'; '.join(o['what'])} — {o['effect']}", overflow="fold")
    if ch["count"] > limit:
        con.print(f"  … and {ch['count'] - limit} more (see --json)")


def render_exercised(r: dict[str, Any], con: Console) -> None:
    """A replay lab's exercised rules: N of M, the chains packets reached (with their cost), what was never hit."""
    rep = r.get("replayed") or {}
    con.print(styled(("replayed ruleset:", "bold"),
                     f" {r['exercised']:,} of {r['rules']:,} rules exercised "
                     f"({r['never_exercised']:,} never); {r.get('probe_port_rules', 0):,} exercised rules match a "
                     "probed port"
                     + (f"; {r['not_countable']:,} nft rules without a counter" if r.get("not_countable") else "")
                     + (f"; {r['ipv6_not_probed']:,} IPv6 rules not probed" if r.get("ipv6_not_probed") else "")
                     + (f"; loaded {rep.get('rules_loaded', 0):,} of {rep.get('rules_in', 0):,} "
                        f"({rep.get('dropped', 0):,} dropped, see {rep.get('report')})" if rep else "")))
    if r["top_chains"]:
        t = Table(title="top exercised chains", width=WIDTH)
        for col, just in (("chain", "left"), ("table", "left"), ("exercised", "right"), ("packets", "right"),
                          ("ns/pkt", "right"), ("source", "left")):
            t.add_column(col, justify=just, overflow="fold")
        for c in r["top_chains"]:
            src = "apportioned" if c.get("basis") and "apportioned" in c["basis"] else (c.get("provenance") or "—")
            t.add_row(c["chain"][:40], c["table"], f"{c['exercised']}/{c['rules']}", f"{c.get('packets', 0):,}",
                      fmt_ns(c.get("ns_per_packet")), src)
        con.print(t)

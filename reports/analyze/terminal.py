"""Terminal rendering of an analyze document and of a dump diff: the answer first, 100 columns.

Every figure is labelled with where it came from (static / counters / measured); the costliest
chains are a top list, because a kube-proxy node has tens of thousands (the JSON has them all).
"""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from cnitrace.reports.console import plain_console, styled
from cnitrace.reports.document import fmt_ns

WIDTH = 100
TOP = 12


def _n(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.1f}"
    return f"{x:,}"


def _counters_cell(c: Mapping[str, Any] | None) -> str:
    """A chain's counter figures in a few words: evaluations per packet, or what the dump counts."""
    if not c:
        return "—"
    if c.get("absent"):
        pol = c.get("policy_packets")
        if "policy_note" in c:      # an iptables built-in chain of a dump saved without -c
            return f"no rule counters; policy {pol:,} pkts" if pol is not None else "no rule counters"
        return c["absent"][:60]
    e = c.get("inclusive_evaluations_per_packet")
    if c.get("entering_packets") and e is not None:
        ns = c.get("inclusive_ns_per_packet")
        return f"{e:,.1f} evals{' ≈ ' + fmt_ns(ns) if ns is not None else ''}/pkt over {c['entering_packets']:,} pkts"
    if c.get("entering_packets") == 0:
        return "0 packets counted"
    return "unknown: " + "; ".join(c.get("notes", []))[:40] if c.get("notes") else "unknown"


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    ins = doc["inputs"]
    files = sorted({i["file"] for i in ins})
    formats = ", ".join(f"{i['format']} ({i['confidence'] * 100:.0f} %)" for i in ins[:6])
    more = f" +{len(ins) - 6} more" if len(ins) > 6 else ""
    out = [f"{len(files)} file(s), {len(ins)} dump(s): {formats}{more}"]
    cni = ", ".join(f"{c['cni']} ({c['confidence']}: {', '.join(c['evidence'][:2])})" for c in doc["cni"])
    kp = doc["kube_proxy"]
    out.append(f"CNI: {cni or 'none detected'}; kube-proxy: {kp['mode']} ({kp['reason']})")
    s = doc["structure"]
    parts = []
    if s.get("iptables"):
        x = s["iptables"]
        parts.append(f"iptables {x['tables']} tables, {x['chains']:,} chains, {x['rules']:,} rules")
    if s.get("nftables"):
        x = s["nftables"]
        parts.append(f"nftables {x['tables']} tables, {x['chains']:,} chains, {x['rules']:,} rules, "
                     f"{x['sets']} sets ({x['elements']:,} elements)")
    if s.get("ipsets"):
        parts.append(f"ipsets {s['ipsets']['sets']} ({s['ipsets']['entries']:,} entries)")
    if s.get("ovs"):
        x = s["ovs"]
        parts.append(f"OVS {x['flows']:,} flows in {x['tables']} tables, {x['megaflows']:,} megaflows")
    if s.get("ovs_bridges"):
        x = s["ovs_bridges"]
        parts.append(f"OVS {x['bridges']} bridge(s), {x['ports']} port(s) (ovs-vsctl show)")
    if s.get("bpf"):
        x = s["bpf"]
        parts.append(f"BPF {x['programs']} programs, {x['attachments']} attachments, {x['maps']} maps")
    if s.get("conntrack"):
        parts.append(f"conntrack {s['conntrack']['entries']:,} entries")
    out.append("structure: " + ("; ".join(parts) or "—"))
    return out


def cost_line(doc: Mapping[str, Any]) -> str:
    """Where the ns per evaluation came from, for the kinds of rules the dumps hold."""
    used = sorted({t["cost"] for t in (doc.get("netfilter") or {}).get("tables", ())})
    if not used:
        return ""
    by_text: dict[str, list[str]] = {}
    for k in used:
        by_text.setdefault(doc["cost"][k]["description"], []).append(k)
    return "cost per rule evaluation: " + "; ".join(f"{', '.join(ks)}: {text}" for text, ks in by_text.items())


def render_analysis(doc: Mapping[str, Any], console: Console | None = None) -> None:
    con = console or plain_console(width=WIDTH)
    for line in summary_lines(doc):
        con.print(line)
    nf = doc.get("netfilter")
    if nf:
        cl = cost_line(doc)
        if cl:
            con.print(cl, style="dim")
        _hooks(con, nf)
        _orders(con, nf)
        _chains(con, nf)
        for t in nf["tables"]:
            if not t["rule_counters"]:
                con.print(styled((f"{t['label']}:", "yellow"), f" {t['counters_note']}"))
                break
        for t in nf["tables"]:
            if t.get("static_note"):
                con.print(styled((f"{t['label']}:", "yellow"), f" {t['static_note']}"))
                break
    if doc.get("ovs"):
        _ovs(con, doc["ovs"])
    if doc.get("bpf"):
        _bpf(con, doc["bpf"])
    if doc.get("conntrack"):
        _conntrack(con, doc["conntrack"])
    cal = doc.get("calico") or {}
    for iface, rows in ((cal.get("counters") or {}).get("counters") or {}).items():
        con.print(f"calico eBPF counters {iface} (counters: totals, not a window): " + calico_counters(rows))
    for key in ("ipsets", "cilium", "calico"):
        x = doc.get(key)
        if key == "calico" and x:
            x = {k: v for k, v in x.items() if k != "counters" and v}     # the counters are printed above
        if x:
            con.print(f"{key}: {_short(x)}")
    for s in doc["skipped"]:
        con.print(styled(("skipped", "yellow"), f" {s['file']} section {s['section']} (line {s['line']}"
                         f"{', `' + s['command'] + '`' if s['command'] else ''}): {s['reason']}"))
    con.print("provenance: " + doc["cost"]["legend"], style="dim")
    warnings = doc["warnings"]
    for w in warnings[:10]:
        con.print(styled(("warning:", "yellow"), f" {w}"))
    if len(warnings) > 10:
        con.print(f"... and {len(warnings) - 10} more warnings (see --json)")


def calico_counters(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """`calico-node -bpf counters dump` of one interface, the reasons that counted anything, totals
    last: `Accepted by policy egress 4; Dropped by policy egress 11; …; Total packets ingress 34 egress 22`."""
    def cells(v: Mapping[str, Any]) -> str:
        return " ".join(f"{hook} {n:,}" for hook, n in v.items() if n)

    counted = [(k, v) for k, v in rows.items() if any(v.values())]
    counted.sort(key=lambda kv: kv[0].startswith("Total"))
    return "; ".join(f"{k} {cells(v)}" for k, v in counted) or "nothing counted"


def _short(x: Any, limit: int = 300) -> str:
    """A summary as `key value, key value` (nested ones flattened with dots), empty values left
    out, cut at `limit` characters; the JSON document has it whole."""
    if isinstance(x, Mapping):
        text = ", ".join(f"{k} {v}" for k, v in _flat(x))
    elif isinstance(x, (list, tuple)) and all(isinstance(i, Mapping) and "name" in i for i in x):
        text = f"{len(x)}: " + ", ".join(
            f"{i['name']} ({', '.join(f'{k} {v}' for k, v in _flat(i) if k != 'name')})" for i in x)
    else:
        text = str(x)
    return text if len(text) <= limit else text[:limit] + " …"


def _flat(x: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in x.items():
        if v in (None, "", [], {}, ()) or k == "fields":   # `fields`: the raw lines, parsed alongside
            continue
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            out.append((f"{prefix}{k}", "; ".join(str(i) for i in v[:5]) + (f" (+{len(v) - 5})" if len(v) > 5 else "")))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _hooks(con: Console, nf: Mapping[str, Any]) -> None:
    t = Table(title="hook paths: rule evaluations and time per packet (static worst / typical)", width=WIDTH)
    for col, just in (("family/hook", "left"), ("tables in order (priority)", "left"), ("evals w/t", "right"),
                      ("ns w/t", "right"), ("counters (since boot)", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for h in nf["hooks"]:
        s = h["static"]
        path = " → ".join(f"{st['what'].split(' ', 1)[1]} ({st['priority']})" for st in h["steps"])
        counted = [f"{st['table']}: {_counters_cell(st['counters'])}" for st in h["steps"] if st.get("counters")]
        t.add_row(f"{h['family']} {h['hook']}", path, f"{s['worst_evaluations']:,} / {s['typical_evaluations']:,}",
                  f"{fmt_ns(s['worst_ns'])} / {fmt_ns(s['typical_ns'])}", "; ".join(counted)[:120] or "—")
    con.print(t)
    con.print("static: worst = every rule evaluated, every jump followed, every match module run; typical = a "
              "packet matching no conditional rule, failing each at its first test; nat tables see only a "
              "connection's first packet", style="dim")


def _orders(con: Console, nf: Mapping[str, Any], shown: int = 8) -> None:
    """The chains each built-in / base chain reaches, in the order a packet meets them (the jump graph)."""
    lines = []
    for t in nf["tables"]:
        for b in t.get("builtin", t.get("base", [])):
            order = b["order"]
            if len(order) < 2:
                continue
            more = len(order) - shown
            tail = f" … (+{more:,}{'+' if b.get('order_truncated') else ''} more)" if more > 0 else ""
            lines.append(f"  {t['label']} {b['chain']}: {' → '.join(order[:shown])}{tail}")
    if lines:
        con.print("evaluation order (depth-first over the jump graph, rule order):")
        for line in lines:
            con.print(line)


def _chains(con: Console, nf: Mapping[str, Any]) -> None:
    rows = [(t, c) for t in nf["tables"] for c in t["chain_figures"] if c["rules"]]
    rows.sort(key=lambda tc: -tc[1]["worst_ns"])
    if not rows:
        return
    t = Table(title=f"costliest chains (static, inclusive of the chains they reach; top {min(TOP, len(rows))} "
                    f"of {len(rows):,})", width=WIDTH)
    for col, just in (("table", "left"), ("chain", "left"), ("rules", "right"), ("evals w/t", "right"),
                      ("ns w/t", "right"), ("counters", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for tb, c in rows[:TOP]:
        t.add_row(tb["label"], c["chain"], f"{c['rules']:,}",
                  f"{c['worst_evaluations']:,} / {c['typical_evaluations']:,}",
                  f"{fmt_ns(c['worst_ns'])} / {fmt_ns(c['typical_ns'])}",
                  _counters_cell(c.get("counters")) if tb["rule_counters"] else "no rule counters")
    con.print(t)


def _ovs(con: Console, ovs: Mapping[str, Any]) -> None:
    for f in ovs.get("flows", ()):
        t = Table(title=f"OVS flows{' on ' + f['bridge'] if f['bridge'] else ''} ({f['source']}): "
                        f"{f['flows']:,} flows, pipeline {' → '.join(f['pipeline'][:10])}", width=WIDTH)
        for col in ("table", "flows", "priorities", "subtables", "next", "packets (counters)"):
            t.add_column(col, justify="left" if col in ("table", "next") else "right", overflow="fold")
        for r in f["tables"]:
            p = r["priorities"]
            t.add_row(r["table"], f"{r['flows']:,}", f"{p['min']}..{p['max']} ({p['distinct']})", str(r["subtables"]),
                      ", ".join(r["next"]) or "—", _n(r["packets"]) if r["packets"] is not None else r["stats"])
        con.print(t)
        if f["unreached_tables"]:
            con.print(f"tables no resubmit/goto_table reaches from {f['pipeline'][0]}: "
                      f"{', '.join(f['unreached_tables'])}")
    for m in ovs.get("megaflows", ()):
        con.print(f"megaflows ({m['source']}): {m['megaflows']:,} in {m['masks']} masks, {m['packets']:,} packets "
                  f"(counters){', ' + str(m['offloaded']) + ' offloaded' if m['offloaded'] else ''}")
    for d in ovs.get("datapaths", ()):
        con.print(f"datapath {d['datapath']}: hit {d['hit']:,} missed {d['missed']:,} lost {d['lost']:,} (counters)"
                  f"{', flows ' + str(d['flows']) if d['flows'] is not None else ''}"
                  f"{', ports ' + ', '.join(d['ports']) if d['ports'] else ''}")


def _bpf(con: Console, b: Mapping[str, Any]) -> None:
    t = Table(title="BPF programs by hook", width=WIDTH)
    for col in ("hook", "target", "program", "ns per run"):
        t.add_column(col, justify="right" if col == "ns per run" else "left", overflow="fold")
    for a in b["attachments"][:30]:
        ns = (f"{fmt_ns(a['ns_per_run'])} over {a['run_cnt']:,} runs (measured)" if a.get("ns_per_run") is not None
              else a.get("stats", "—") if a.get("prog_id") is not None else "not a BPF program: not timed")
        prog = a["prog_name"] or (str(a["prog_id"]) if a["prog_id"] is not None else
                                  f"({a.get('filter')} filter pref {a.get('pref')})")
        t.add_row(f"{a['kind']} {a['hook']}", a["target"], prog, ns)
    if b["attachments"]:
        con.print(t)
    else:
        timed = [p for p in b["programs"] if p.get("ns_per_run") is not None]
        types = ", ".join(f"{k} {v}" for k, v in b["programs_by_type"].items())
        con.print(f"BPF: {len(b['programs'])} programs ({types}), {len(timed)} with run stats; {len(b['maps'])} maps")


def _conntrack(con: Console, ct: Mapping[str, Any]) -> None:
    s = ct.get("stats")
    if s:
        tot = s["totals"]
        shown = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error", "search_restart")
        con.print(f"conntrack -S over {s['cpus']} CPUs (counters, since start): "
                  + ", ".join(f"{k} {v:,}" for k, v in tot.items() if k in shown))
        if s.get("unnamed"):
            con.print(f"  unnamed fields: {s['unnamed']} — {s['unnamed_note']}", style="dim")
    lst = ct.get("list")
    if lst:
        con.print(f"conntrack -L: {lst['entries']:,} entries; "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(lst["by_state"].items(), key=lambda kv: -kv[1])[:6]))


# --- the dump diff ---------------------------------------------------------------------------------

def _delta_ns(d: Mapping[str, Any]) -> str:
    sign = "+" if d["delta"] >= 0 else "-"
    return f"{fmt_ns(d['before'])} → {fmt_ns(d['after'])} ({sign}{fmt_ns(abs(d['delta']))})"


def render_diff(doc: Mapping[str, Any], console: Console | None = None, top: int = 15) -> None:
    con = console or plain_console(width=WIDTH)
    con.print(f"before: {', '.join(doc['before'])}\nafter:  {', '.join(doc['after'])}")
    hooks = [h for h in doc["hooks"] if h["worst_ns"]["delta"] or h["typical_ns"]["delta"]
             or h["worst_evaluations"]["delta"]]
    if hooks:
        t = Table(title="static cost per packet by hook path, before → after", width=WIDTH)
        for col in ("family/hook", "worst ns", "typical ns", "worst evals"):
            t.add_column(col, justify="left" if col == "family/hook" else "right", overflow="fold")
        for h in hooks:
            we = h["worst_evaluations"]
            t.add_row(f"{h['family']} {h['hook']}", _delta_ns(h["worst_ns"]), _delta_ns(h["typical_ns"]),
                      f"{_n(we['before'])} → {_n(we['after'])} ({we['delta']:+,})")
        con.print(t)
    elif doc.get("netfilter", True):
        con.print("netfilter static cost per packet: unchanged on every hook path")
    ch = doc["chains"]
    rows = [("changed", r) for r in ch["changed"]] + [("new", r) for r in ch["new"]] + \
           [("removed", r) for r in ch["removed"]]
    if rows:
        t = Table(title=f"chains that gained or lost rules (top {min(top, len(rows))} of {len(rows)})", width=WIDTH)
        for col in ("", "table", "chain", "rules", "worst ns (static)"):
            t.add_column(col, justify="right" if col in ("rules", "worst ns (static)") else "left", overflow="fold")
        rows.sort(key=lambda kr: -abs((kr[1]["rules_after"] or 0) - (kr[1]["rules_before"] or 0)))
        for kind, r in rows[:top]:
            t.add_row(kind, r["table"], r["chain"], f"{_n(r['rules_before'])} → {_n(r['rules_after'])}",
                      f"{fmt_ns(r['worst_ns_before'])} → {fmt_ns(r['worst_ns_after'])}")
        con.print(t)
    c = doc["counters"]
    if c["rules"]:
        t = Table(title=f"rules that counted packets between the dumps (counters; top {len(c['rules'])} "
                        f"of {c['rules_gaining']})", width=WIDTH)
        for col in ("table", "chain#", "packets", "rule"):
            t.add_column(col, justify="right" if col == "packets" else "left", overflow="fold")
        for r in c["rules"][:top]:
            t.add_row(r["table"], f"{r['chain']}#{r['position']}", f"{r['packets']:,}", r["rule"][:60])
        con.print(t)
    if c["chains"]:
        t = Table(title=f"chains over the window between the dumps (counters; top {min(top, len(c['chains']))} "
                        f"of {len(c['chains'])} by packets)", width=WIDTH)
        for col in ("table", "chain", "packets entered", "evals/pkt", "incl. evals/pkt"):
            t.add_column(col, justify="left" if col in ("table", "chain") else "right", overflow="fold")
        for r in c["chains"][:top]:
            t.add_row(r["table"], r["chain"], f"{r['entering_packets']:,}", _n(r["evaluations_per_packet"]),
                      _n(r["inclusive_evaluations_per_packet"]))
        con.print(t)
    for n in c["notes"]:
        con.print(n, style="yellow")
    for s in doc["sets"][:top]:
        con.print(f"set {s['set']}: {_n(s['before'])} → {_n(s['after'])} elements ({s['delta']:+,})")
    for o in doc["ovs_tables"][:top]:
        con.print(f"OVS {o['bridge']} table {o['table']}: {_n(o['flows_before'])} → {_n(o['flows_after'])} flows "
                  f"({o['delta']:+,})")
    for x in doc.get("bpf", ())[:top]:
        con.print(f"{x['kind']} {x['hook']} on {x['target']}: {x['change']} {x['what']}")
    for x in doc.get("conntrack", ())[:top]:
        con.print(f"conntrack {x['what']}: {_n(x['before'])} → {_n(x['after'])} ({x['delta']:+,})")
    if not any((hooks, rows, c["rules"], c["chains"], doc["sets"], doc["ovs_tables"], doc.get("bpf"),
                doc.get("conntrack"))):
        con.print("nothing the two sides both hold changed")
    for w in c["warnings"][:5]:
        con.print(styled(("warning:", "yellow"), f" {w}"))

"""Open vSwitch dumps: per-table flows and the resubmit/goto_table pipeline, megaflows, datapaths (pure).

A first packet walks the OpenFlow tables from table 0 along resubmit/goto_table actions, and each
table's lookup costs by its classifier subtables (distinct match shapes), so those are what the
structure reports. Counters are reported only where the dump has them: `--no-stats` (or a doc
excerpt) prints no n_packets, and such a table says "no stats", never 0.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from cnitrace.analyze.iptables import reach_order
from cnitrace.attribution.datapath import match_shape
from cnitrace.collectors.ovs.parse import Datapath, DpPort, Megaflow, OfFlow

_NEXT = re.compile(r"resubmit\(([^,()]*),([^,()]+)(?:,[^()]*)?\)|goto_table:([\w-]+)|ct\([^()]*?\btable=([\w-]+)")


def next_tables(actions: str) -> list[str]:
    """Tables an action list sends the packet on to (resubmit(,T) / resubmit(port,T) / goto_table:T /
    ct(table=T): conntrack recirculates the packet into T)."""
    out: list[str] = []
    for m in _NEXT.finditer(actions):
        t = (m.group(2) or m.group(3) or m.group(4) or "").strip()
        if t and t not in out:
            out.append(t)
    return out


def flow_tables(flows: Iterable[OfFlow], bridge: str = "") -> dict[str, Any]:
    """One `ovs-ofctl dump-flows` dump: per table flows, priorities, subtables, packets, next tables."""
    tables: dict[str, dict[str, Any]] = {}
    for f in flows:
        t = str(f.table)
        d = tables.setdefault(t, {"table": t, "flows": 0, "priorities": set(), "shapes": set(), "packets": 0,
                                  "stats": 0, "next": [], "table_miss": False})
        d["flows"] += 1
        d["priorities"].add(f.priority)
        d["shapes"].add(match_shape(f.match))
        if getattr(f, "stats", True):
            d["stats"] += 1
            d["packets"] += f.n_packets
        if f.priority == 0 and not f.match:
            d["table_miss"] = True
        for n in next_tables(f.actions):
            if n not in d["next"]:
                d["next"].append(n)
    rows = []
    order = list(tables)      # named tables (--names) in the order the dump lists them, numbered ones by number
    for t in sorted(tables, key=lambda t: (0, int(t), 0) if t.isdigit() else (1, 0, order.index(t))):
        d = tables[t]
        pr = sorted(d["priorities"])
        rows.append({"table": t, "flows": d["flows"], "priorities": {"distinct": len(pr), "min": pr[0], "max": pr[-1]},
                     "subtables": len(d["shapes"]), "next": d["next"], "table_miss": d["table_miss"],
                     "packets": d["packets"] if d["stats"] == d["flows"] else None,
                     "provenance": "counters" if d["stats"] else None,
                     "stats": "n_packets per flow (since each flow was added)" if d["stats"] == d["flows"] else
                     ("no stats" if not d["stats"] else f"only {d['stats']} of {d['flows']} flows have stats")})
    first = rows[0]["table"] if rows else None
    return {"bridge": bridge, "flows": sum(r["flows"] for r in rows), "tables": rows,
            "pipeline": pipeline(rows, first) if first is not None else [],
            "unreached_tables": _unreached(rows, first)}


def pipeline(rows: list[dict[str, Any]], start: str) -> list[str]:
    """Tables in the order a packet can reach them from `start` (depth-first over next tables)."""
    return reach_order({r["table"]: tuple(r["next"]) for r in rows}, start)


def _unreached(rows: list[dict[str, Any]], first: str | None) -> list[str]:
    if first is None:
        return []
    reached = set(pipeline(rows, first))
    return [r["table"] for r in rows if r["table"] not in reached]


def megaflows(flows: Iterable[Megaflow]) -> dict[str, Any]:
    fs = list(flows)
    masks = {f.mask for f in fs}
    top = sorted(fs, key=lambda f: -f.packets)[:5]
    return {"megaflows": len(fs), "masks": len(masks), "packets": sum(f.packets for f in fs),
            "provenance": "counters", "offloaded": sum(1 for f in fs if getattr(f, "offloaded", False)),
            "top": [{"match": f.match[:160], "actions": f.actions[:80], "packets": f.packets} for f in top]}


def datapaths(dps: Iterable[Datapath], ports: Iterable[Any] = ()) -> list[dict[str, Any]]:
    ps = [p for p in ports if isinstance(p, DpPort)]
    out = []
    for d in dps:
        out.append({"datapath": d.name, "hit": d.hit, "missed": d.missed, "lost": d.lost, "flows": d.flows,
                    "masks_hit": d.masks_hit, "masks_total": d.masks_total, "provenance": "counters",
                    "ports": [p.name for p in ps if p.datapath in ("", d.name)]})
    return out

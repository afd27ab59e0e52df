"""Summaries of node state dumps: conntrack, ipsets, and the Cilium and Calico agents' own views (pure).

Each summary keeps what a user checks first and says where a figure is absent: a conntrack-tools
older than the kernel prints unnamed `(null)=N` fields (their meaning is not known for certain, so
they are shown apart), a policy entry without a packet count has none, not zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

PRESSURE = ("insert_failed", "drop", "early_drop", "search_restart")


def conntrack_stats(stats: Iterable[Any]) -> dict[str, Any]:
    """`conntrack -S`: per-CPU counters summed; unnamed fields apart."""
    totals: dict[str, int] = {}
    extra: dict[str, int] = {}
    cpus = 0
    for s in stats:
        cpus += 1
        for k, v in getattr(s, "values", {}).items():
            totals[k] = totals.get(k, 0) + v
        for k, v in (getattr(s, "extra", None) or {}).items():
            extra[k] = extra.get(k, 0) + v
    out: dict[str, Any] = {"cpus": cpus, "totals": totals, "provenance": "counters",
                           "since": "counter totals since the namespace's conntrack started",
                           "pressure": {k: totals[k] for k in PRESSURE if k in totals}}
    if extra:
        out["unnamed"] = extra
        out["unnamed_note"] = ("fields the tool could not name (`(null)=N`: conntrack-tools older than the kernel) "
                               "or gauges; shown apart, their meaning is not known for certain")
    return out


def conntrack_list(conns: Iterable[Any]) -> dict[str, Any]:
    """`conntrack -L`: entries by protocol and state."""
    by_proto: dict[str, int] = {}
    by_state: dict[str, int] = {}
    total = assured = unreplied = 0
    for c in conns:
        total += 1
        proto = str(getattr(c, "proto", "?"))
        by_proto[proto] = by_proto.get(proto, 0) + 1
        state = getattr(c, "state", None)
        k = f"{proto}/{state}" if state else proto
        by_state[k] = by_state.get(k, 0) + 1
        flags = tuple(getattr(c, "flags", ()) or ())
        assured += "ASSURED" in flags
        unreplied += "UNREPLIED" in flags
    return {"entries": total, "by_proto": by_proto, "by_state": by_state, "assured": assured,
            "unreplied": unreplied}


def _size(rec: Any) -> int | None:
    """A set's element count: its own count where the dump printed one, else the members listed."""
    for name in ("entries", "size", "count", "members", "elements"):
        v = getattr(rec, name, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, (tuple, list, frozenset, set)):
            return len(v)
    return None


def ipsets(sets: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for s in sets:
        name = getattr(s, "name", None)
        if name is None:
            continue
        out.append({"name": name, "type": str(getattr(s, "type", "") or ""), "entries": _size(s),
                    "maxelem": getattr(s, "maxelem", None)})
    return out


def set_sizes(sets: Iterable[Any]) -> dict[str, int | None]:
    return {d["name"]: d["entries"] for d in ipsets(sets)}


def cilium_policy(entries: Iterable[Any]) -> dict[str, Any]:
    es = list(entries)
    counted = [e for e in es if getattr(e, "packets", None) is not None]
    eps: dict[str, int] = {}
    for e in es:
        eps[str(getattr(e, "endpoint", ""))] = eps.get(str(getattr(e, "endpoint", "")), 0) + 1
    return {"entries": len(es), "endpoints": len(eps), "largest_endpoint": max(eps.values(), default=0),
            "deny": sum(1 for e in es if getattr(e, "deny", False)),
            "l7_redirects": sum(1 for e in es if getattr(e, "proxy_port", 0)),
            "packets": sum(e.packets for e in counted) if counted else None,
            "provenance": "counters" if counted else None,
            "note": None if counted else "no entry carries a packet count"}


def calico_counters(rows: Iterable[Any]) -> dict[str, Any]:
    by_iface: dict[str, dict[str, dict[str, int | None]]] = {}
    for r in rows:
        cell = by_iface.setdefault(getattr(r, "iface", "") or "?", {})
        cell[f"{r.category} {r.type}".strip()] = {k: getattr(r, k, None) for k in ("ingress", "egress", "xdp")}
    return {"interfaces": len(by_iface), "counters": by_iface, "provenance": "counters",
            "since": "counter totals since the programs were loaded"}


def calico_policy(rules: Iterable[Any]) -> dict[str, Any]:
    rs = list(rules)
    hooks: dict[str, int] = {}
    for r in rs:
        k = f"{r.iface} {r.hook}"
        hooks[k] = hooks.get(k, 0) + 1
    counted = [r for r in rs if r.count is not None]
    top = sorted(counted, key=lambda r: -r.count)[:5]
    return {"rules": len(rs), "by_hook": hooks, "matched_packets": sum(r.count for r in counted) if counted else None,
            "provenance": "counters" if counted else None,
            "top": [{"iface": r.iface, "hook": r.hook, "policy": r.policy, "rule_id": r.rule_id, "action": r.action,
                     "packets": r.count} for r in top]}


def fields(records: Iterable[Any], limit: int = 40) -> dict[str, Any]:
    """Scalar fields of status-like records (`cilium status`), whatever their shape."""
    out: dict[str, Any] = {}
    for rec in records:
        if dataclasses.is_dataclass(rec) and not isinstance(rec, type):
            items = list(dataclasses.asdict(rec).items())
        elif isinstance(rec, Mapping):
            items = list(rec.items())
        else:
            items = list(getattr(rec, "__dict__", {}).items())
        # the parsed scalars first; raw mappings (every 'Key: value' as printed) only if room is left
        for k, v in sorted(items, key=lambda kv: isinstance(kv[1], Mapping)):
            if len(out) >= limit:
                return out
            if v is None or v == () or v == {}:
                continue
            if isinstance(v, (str, int, float, bool)):
                out[str(k)] = v
            elif isinstance(v, Mapping) and all(isinstance(x, (str, int, float, bool, tuple, list))
                                                for x in v.values()):
                out[str(k)] = {str(a): (list(b) if isinstance(b, tuple) else b) for a, b in list(v.items())[:12]}
            elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
                out[str(k)] = list(v[:12])
    return out

"""BPF dumps: programs per hook and their cost per run where the kernel measured it (pure).

`bpftool prog show` carries run_time_ns/run_cnt only while BPF stats are (or were) enabled, and
omits them otherwise: a program with no runs counted says "no stats", never 0 ns. Where programs
run comes from `bpftool net show` / `tc filter show`, joined to the programs by id.
"""

from __future__ import annotations

from typing import Any, Iterable

from cnitrace.collectors.bpfprog.parse import Attachment, BpfMap, BpfProg

MEASURED = "measured (bpf_stats: run_time_ns / run_cnt since stats were enabled)"


def _attachment(a: Any) -> dict[str, Any] | None:
    """An Attachment, or anything carrying one's fields (tc filters of the text parser)."""
    if isinstance(a, Attachment) or all(hasattr(a, k) for k in ("prog_id", "hook")):
        target = getattr(a, "target", None) or getattr(a, "iface", "") or "?"
        kind = getattr(a, "kind", "tc")
        if kind not in ("tc", "xdp", "cgroup") and getattr(a, "prog_id", None) is None:
            # a flower/u32/matchall filter runs at the hook like the programs beside it
            return {"kind": "tc", "filter": kind, "target": target, "hook": a.hook or "?", "prog_id": None,
                    "prog_name": "", "pref": getattr(a, "pref", None), "handle": getattr(a, "handle", "")}
        return {"kind": kind if kind in ("tc", "xdp", "cgroup") else "tc", "target": target, "hook": a.hook or "?",
                "prog_id": a.prog_id, "prog_name": getattr(a, "prog_name", "") or ""}
    return None


def summarize(programs: Iterable[BpfProg], attachments: Iterable[Any], maps: Iterable[BpfMap]) -> dict[str, Any]:
    progs = {p.id: p for p in programs}
    rows = []
    seen: set[tuple] = set()
    for a in attachments:
        d = _attachment(a)
        if d is None:
            continue
        k = (d["kind"], d["target"], d["hook"], d["prog_id"], d.get("filter"), d.get("pref"), d.get("handle"))
        if k in seen:
            continue
        seen.add(k)
        p = progs.get(d["prog_id"]) if d["prog_id"] is not None else None
        if p is not None:
            d["prog_name"] = d["prog_name"] or p.name
            d.update(_run_figures(p))
        rows.append(d)
    by_hook: dict[str, int] = {}
    for d in rows:
        h = f"{d['kind']} {d['hook']}"
        by_hook[h] = by_hook.get(h, 0) + 1
    prog_rows = [{"id": p.id, "type": p.type, "name": p.name, **_run_figures(p)} for p in progs.values()]
    by_type: dict[str, int] = {}
    for p in progs.values():
        by_type[p.type] = by_type.get(p.type, 0) + 1
    return {"programs": prog_rows, "programs_by_type": by_type, "attachments": rows, "by_hook": by_hook,
            "maps": [{"id": m.id, "type": m.type, "name": m.name, "max_entries": m.max_entries,
                      "entries": m.entries} for m in maps]}


def _run_figures(p: BpfProg) -> dict[str, Any]:
    if p.run_cnt > 0:
        return {"run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "ns_per_run": round(p.run_time_ns / p.run_cnt, 1),
                "provenance": MEASURED}
    return {"run_cnt": None, "ns_per_run": None, "stats": "no stats (BPF stats were off, or it never ran)"}


def attachment_label(d: dict[str, Any]) -> str:
    """What runs at a hook, by name (program ids change when an agent reloads its programs)."""
    if d.get("filter"):
        return f"{d['filter']} filter pref {d.get('pref')}" + (f" handle {d['handle']}" if d.get("handle") else "")
    return d.get("prog_name") or f"program id {d.get('prog_id')}"

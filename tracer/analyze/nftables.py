"""A native nftables ruleset's structure, base chains by hook and priority, and its static cost (pure).

Records come from `nft -j list ruleset` or `nft list ruleset` (same record types). Each rule is one
evaluation priced by what its expressions do (collectors.nftables.graph.rule_class: a plain compare,
a hash set lookup, a verdict map, an interval lookup over a concatenated key by the elements it
walks); the walk is analyze.static's. Rules carry counters only where their author wrote `counter`,
so counter figures exist only for chains whose entering packets the counters prove
(collectors.nftables.graph.costs_by_table); elsewhere the analysis says why there are none.

Tables that an iptables-nft dump of the same node already covers are skipped, as the profile does,
so the same rules are not counted twice.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from cnitrace.analyze.costs import CostModel
from cnitrace.analyze.iptables import ORDER_LIMIT, SINCE, HookStep, edges, reach_order, reachable
from cnitrace.analyze.static import ZERO, SRule, static_costs
from cnitrace.collectors.nftables import graph as nft_graph
from cnitrace.collectors.nftables.parse import NftChain

# Named priorities (nft(8) "PRIORITY"): ip/ip6/inet/arp/netdev, and the bridge family's own.
NAMED_PRIORITY = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BRIDGE_PRIORITY = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
FAMILIES = {"ip": ("ipv4",), "ip6": ("ipv6",), "inet": ("ipv4", "ipv6")}
_PRIO = re.compile(r"^\s*([a-z]+)\s*(?:([+-])\s*(\d+))?\s*$")


def priority(prio: Any, family: str) -> int:
    """A base chain's numeric priority from `nft -j` (an int) or text (`filter + 10`, `dstnat`)."""
    if isinstance(prio, bool):
        return 0
    if isinstance(prio, int):
        return prio
    if isinstance(prio, str):
        s = prio.strip()
        try:
            return int(s)
        except ValueError:
            pass
        m = _PRIO.match(s)
        if m:
            base = (BRIDGE_PRIORITY if family == "bridge" else NAMED_PRIORITY).get(m.group(1), 0)
            off = int(m.group(3) or 0)
            return base - off if m.group(2) == "-" else base + off
    return 0


def analyze_records(records: Iterable[Any], model: CostModel, *, source: str = "",
                    skip: set[tuple[str, str]] = frozenset()
                    ) -> tuple[list[dict[str, Any]], list[HookStep], tuple[str, ...]]:
    """Tables (JSON-ready), hook steps and warnings for one nftables dump."""
    recs = [r for r in records if (getattr(r, "family", None), getattr(r, "table", None)) not in skip]
    skipped = sorted({(r.family, r.table) for r in records if isinstance(r, NftChain)} & set(skip))
    chains, rules, sets = nft_graph.index_records(recs)
    for (fam, table, chain) in rules:
        chains.setdefault((fam, table), {}).setdefault(chain, NftChain(fam, table, chain, None))
    counted, w0 = nft_graph.costs_by_table(recs)
    warnings: list[str] = list(w0)
    warnings += [f"nft table {f} {t} skipped: the iptables-nft dump already covers its rules" for f, t in skipped]
    native = model.native
    tables: list[dict[str, Any]] = []
    steps: list[HookStep] = []
    for (fam, table), cs in chains.items():
        tsets = sets.get((fam, table), {})
        sr: dict[str, list[SRule]] = {}
        n_counted = n_rules = 0
        for name in cs:
            lst = []
            for r in sorted(rules.get((fam, table, name), ()), key=lambda r: r.position):
                ns = native.shapes.nft_class_ns(nft_graph.rule_class(r, tsets, {}))
                lst.append(SRule(r.verdict, tuple(r.targets) if r.verdict in ("jump", "goto", "dispatch") else (),
                                 r.unconditional, ns, ns))
                n_rules += 1
                n_counted += r.has_counter
            sr[name] = lst
        static, w1 = static_costs(sr)
        warnings += w1
        jumps = edges(sr)
        reached = reachable(jumps, (n for n, c in cs.items() if c.base))
        base = []
        for name, ch in sorted(cs.items(), key=lambda kv: (kv[1].hook or "", priority(kv[1].prio, fam))):
            if not ch.base:
                continue
            order = reach_order(jumps, name, ORDER_LIMIT)
            prio = priority(ch.prio, fam)
            cnt = _counters(counted.get((fam, table, name)), n_counted)
            base.append({"chain": name, "hook": ch.hook, "type": ch.type, "priority": prio, "policy": ch.policy,
                         "order": order, "static": static[name].to_json(native.source), "counters": cnt})
            for f in FAMILIES.get(fam, (fam,)):
                steps.append(HookStep(f, str(ch.hook), prio, f"nft {fam} {table} {name}", f"{fam} {table}",
                                      static[name], native.source, cnt, ch.type == "nat", source))
        chain_rows = []
        for name, ch in cs.items():
            st = static.get(name, ZERO)
            chain_rows.append({"chain": name, "rules": len(sr[name]), "builtin": ch.base, "reached": name in reached,
                               "worst_evaluations": st.worst_evaluations, "typical_evaluations": st.typical_evaluations,
                               "worst_ns": st.worst_ns, "typical_ns": st.typical_ns, "jumps_to": jumps[name],
                               "counters": _counters(counted.get((fam, table, name)), n_counted)})
        tables.append({
            "kind": "nftables", "source": source, "family": fam, "table": table, "label": f"nft {fam} {table}",
            "cost_source": native.source, "cost": "nftables", "chains": len(cs), "rules": n_rules,
            "rules_with_counters": n_counted,
            "sets": [{"name": s.name, "kind": s.kind, "elements": s.size, "max_size": s.max_size,
                      "flags": list(s.flags)} for s in tsets.values()],
            "base": base, "unreached_chains": sorted(n for n, c in cs.items() if not c.base and n not in reached),
            "rule_counters": n_counted > 0,
            "counters_note": (f"{n_counted} of {n_rules} rules carry a counter; " + SINCE) if n_counted else
            ("no rule carries a `counter`: packets and evaluations per packet are unknown, not zero"
             if n_rules else "no rules"),
            "chain_figures": chain_rows, "chain_figures_provenance": "static",
        })
    return tables, steps, tuple(warnings)


def _counters(cost: Any, n_counted: int) -> dict[str, Any]:
    """A chain's counter figures, or why there are none."""
    if not n_counted:
        return {"provenance": "counters", "absent": "no rule of this table carries a counter"}
    if cost is None or cost.entering is None:
        why = "; ".join(cost.notes) if cost is not None and cost.notes else "entering packets not counted"
        return {"provenance": "counters", "absent": why}
    d: dict[str, Any] = {"provenance": "counters", "since": SINCE, "entering_packets": int(round(cost.entering)),
                         "evaluations_per_packet": None if cost.per_packet is None else round(cost.per_packet, 3),
                         "inclusive_evaluations_per_packet": None if cost.inclusive_per_packet is None
                         else round(cost.inclusive_per_packet, 3)}
    notes = [n for n in cost.notes if n != "no packets entered in this interval"]
    if cost.entering == 0:
        notes.append("0 packets counted into this chain since the counters started")
    if notes:
        d["notes"] = notes
    return d


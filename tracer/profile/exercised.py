"""The profile's "exercised rules" section for a replay lab (pure): which of the replayed rules the
window's packets reached, and what their chains cost.

A replayed ruleset has no ground truth (the lab did not write it), so the honest statement is an
observation: a rule was exercised when its counter moved during the window (delta > 0). The probes
are IPv4, so IPv6 rules are counted apart (never probed), and so are native nft rules without a
`counter` (they cannot say). Cost comes from the stage tree: each table's measured time (BPF netfilter
brackets) or model, each chain's apportioned share of it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from cnitrace.attribution.netfilter import iptables_nft_tables
from cnitrace.collectors.iptables.graph import ruleset_delta
from cnitrace.collectors.iptables.source import ruleset_of
from cnitrace.collectors.nftables.parse import NftRule
from cnitrace.collectors.nftables.source import records_delta
from cnitrace.reports.document import Node
from cnitrace.traffic.generators import rule_port_ranges

TOP_CHAINS = 10
TOP_RULES = 50


def _chain_nodes(root: Node) -> dict[tuple[str, str], Node]:
    """(table node name, chain) -> chain node of the netfilter stage."""
    out: dict[tuple[str, str], Node] = {}
    nf = root.find("stage", "netfilter")
    for t in (nf.children if nf is not None else []):
        for c in t.children:
            if c.kind == "chain":
                out[(t.name, c.name)] = c
    return out


def _table_label(table: str, backend: str, family: str) -> str:
    """How the stage tree names an iptables table (cnitrace.attribution.netfilter)."""
    return f"{table} (iptables-{backend}, {family})"


def _covers(spec: str, ports: set[int]) -> bool:
    return any(lo <= p <= hi for _, lo, hi in rule_port_ranges([spec]) for p in ports)


def exercised(before_ipt: Any, after_ipt: Any, before_nft: Any, after_nft: Any, root: Node,
              probe_ports: Iterable[int] = (), replay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The section: N of M rules exercised, the top exercised chains with their cost, the busiest rules."""
    delta, _ = ruleset_delta(ruleset_of(before_ipt), ruleset_of(after_ipt))
    ports = set(probe_ports)
    rows: list[dict[str, Any]] = []
    ipv6 = 0
    for r in delta.rules:
        if r.family == "ipv6":
            ipv6 += 1
            continue
        rows.append({"table": r.table, "label": _table_label(r.table, r.backend, r.family), "chain": r.chain,
                     "position": r.position, "rule": r.spec, "packets": int(r.packets), "backend": r.backend})
    uncountable = 0
    if before_nft is not None and after_nft is not None:
        recs, _ = records_delta(before_nft, after_nft)
        skip = iptables_nft_tables(delta)
        for n in recs:
            if not isinstance(n, NftRule) or (n.family, n.table) in skip:
                continue
            if n.family == "ip6":
                ipv6 += 1
                continue
            if n.packets is None:
                uncountable += 1
                continue
            rows.append({"table": f"{n.family} {n.table}", "label": f"{n.family} {n.table} (nft)", "chain": n.chain,
                         "position": n.position, "rule": n.comment or f"handle {n.handle}", "packets": int(n.packets),
                         "backend": "nft"})
    hit = [x for x in rows if x["packets"] > 0]
    nodes = _chain_nodes(root)
    chains: dict[tuple[str, str], dict[str, Any]] = {}
    for x in rows:
        c = chains.setdefault((x["label"], x["chain"]), {"table": x["label"], "chain": x["chain"], "rules": 0,
                                                       "exercised": 0, "packets": 0})
        c["rules"] += 1
        if x["packets"] > 0:
            c["exercised"] += 1
            c["packets"] = max(c["packets"], x["packets"])
    top = sorted((c for c in chains.values() if c["exercised"]),
                 key=lambda c: (-(_ns(nodes.get((c["table"], c["chain"]))) or 0.0), -c["exercised"], -c["packets"]))
    for c in top:
        n = nodes.get((c["table"], c["chain"]))
        c.update(ns_per_packet=_ns(n), provenance=n.provenance if n else None, basis=n.basis if n else None)
    tables = []
    nf = root.find("stage", "netfilter")
    for t in (nf.children if nf is not None else []):
        tables.append({"table": t.name, "ns_per_packet": t.ns_per_packet, "measured_ns": t.measured_ns,
                       "modelled_ns": t.modelled_ns, "provenance": t.provenance, "backend": t.detail.get("backend")})
    on_port = [x for x in hit if ports and _covers(x["rule"], ports)]
    busiest = sorted(hit, key=lambda x: -x["packets"])[:TOP_RULES]
    aimed = {id(x) for x in on_port}
    shown = {id(x) for x in busiest}
    listed = busiest + [x for x in on_port[:TOP_RULES // 2] if id(x) not in shown]   # and some the probes aimed at
    out = {
        "rules": len(rows), "exercised": len(hit), "never_exercised": len(rows) - len(hit),
        "not_countable": uncountable, "ipv6_not_probed": ipv6,
        "probe_port_rules": len(on_port),
        "top_chains": top[:TOP_CHAINS], "tables": tables,
        "rules_exercised": [{**{k: x[k] for k in ("table", "chain", "position", "packets")},
                             "rule": x["rule"][:240], "probe_port": id(x) in aimed}
                            for x in listed],
        "note": "exercised = the rule's packet counter moved during the window (IPv4 rules; nft rules "
                "without a counter cannot say). No ground truth: the lab did not write these rules.",
    }
    if replay:
        out["replayed"] = {k: replay.get(k) for k in ("rules_in", "rules_loaded", "dropped", "rewritten", "report")}
        out["shape"] = (replay.get("mapping") or {}).get("shape")
    return out


def _ns(n: Node | None) -> float | None:
    return None if n is None else n.ns_per_packet


def probe_ports(traffic_metrics: Mapping[str, Any] | None) -> list[int]:
    return list((traffic_metrics or {}).get("ports") or [])


def section(win: Any, target: Any, root: Node) -> dict[str, Any] | None:
    """The section for a replay lab's window (None for any other profile)."""
    lab = target.lab
    if lab is None or lab.spec.datapath != "replay":
        return None
    ns = lab.topo.node_netns
    if ns not in win.after.iptables or ns not in win.before.iptables:
        return None
    return exercised(win.before.iptables[ns], win.after.iptables[ns], win.before.nft.get(ns), win.after.nft.get(ns),
                     root, probe_ports(win.traffic.metrics if win.traffic else None), lab.topo.extra.get("replay"))


"""An iptables dump's structure, static cost and (where rules carried them) counter figures (pure).

Per table: the chains and rules, the jump graph, the chains each built-in chain reaches in the
order a packet meets them, and the static figures (analyze.static). With `-c` counters the
evaluations per packet are the profile's own (collectors.iptables.graph.evaluate over the dump),
but a dump's counters are totals since boot (or since the chain was last zeroed), not a window:
they average over everything the node ever saw. Their ns are the counted evaluations priced as
the static walk prices them (a match ran the whole rule, a miss failed at the first test).

Saved without `-c`, the rules carry no counters: nothing here then claims a rule saw no packet;
what the dump does count is said instead (the built-in chains' policy packets).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from cnitrace.analyze.costs import CostModel, ShapePricer, rule_shape, unconditional
from cnitrace.analyze.static import ZERO, SRule, Static, static_costs
from cnitrace.collectors.base import Warnings
from cnitrace.collectors.iptables import graph as ipt_graph
from cnitrace.collectors.iptables.graph import CONTINUE, GOTO, JUMP, RETURNS, TERMINAL, leaving
from cnitrace.collectors.iptables.parse import RETURN, TERMINAL_TARGETS, Rule, Ruleset

SINCE = "counter totals since boot or the last zeroing, not a window"

# Netfilter priorities of the iptables tables at each hook (NF_IP_PRI_*): the order tables run in.
TABLE_PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
NAT_PRIORITY = {"prerouting": -100, "output": -100, "input": 100, "postrouting": 100}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")


def table_priority(table: str, hook: str) -> int:
    if table == "nat":
        return NAT_PRIORITY.get(hook, 0)
    return TABLE_PRIORITY.get(table, 0)


@dataclasses.dataclass(frozen=True)
class HookStep:
    """One table's (or nft base chain's) place on a hook path, with its figures."""

    family: str            # "ipv4" | "ipv6" | an nft family (bridge, arp, netdev)
    hook: str              # prerouting | input | forward | output | postrouting | ingress | egress
    priority: int
    what: str              # "iptables-legacy nat PREROUTING", "nft inet filter input"
    table: str             # the table as the terminal names it: "nat", "inet filter"
    static: Static
    cost_source: str
    counters: Mapping[str, Any] | None = None
    first_packet_only: bool = False    # nat: consulted for a connection's first packet only
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "hook": self.hook, "priority": self.priority, "what": self.what,
                "table": self.table,
                "static": self.static.to_json(self.cost_source), "counters": dict(self.counters or {}) or None,
                "first_packet_only": self.first_packet_only, "source": self.source}


def by_table(ruleset: Ruleset) -> dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, list[Rule]]]]:
    """(backend, family, table) -> (chain name -> Chain, chain name -> its rules in order)."""
    out: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, list[Rule]]]] = {}
    for c in ruleset.chains:
        out.setdefault((c.backend, c.family, c.table), ({}, {}))[0][c.name] = c
    key: tuple | None = None
    rules: dict[str, list[Rule]] = {}
    chain, lst = None, []
    for r in ruleset.rules:          # a dump lists each chain's rules together: switch lists rarely
        if r.chain != chain or r.table != key[2] or r.family != key[1] or r.backend != key[0]:
            k = (r.backend, r.family, r.table)
            if k != key:
                key, rules = k, out.setdefault(k, ({}, {}))[1]
            chain = r.chain
            lst = rules.get(chain)
            if lst is None:
                lst = rules[chain] = []
        lst.append(r)
    return out


def srules(chains: Mapping[str, Any], rules: Mapping[str, list[Rule]], pricer: ShapePricer,
           user: set[str] | None = None) -> dict[str, list[SRule]]:
    """Each chain's rules as the static walk sees them (one pass; kinds as graph.step_of gives them);
    `user`: the user-defined chains, if the caller has them."""
    if user is None:
        user = {n for n, c in chains.items() if not c.builtin}
    # per shape: (worst, typical, unconditional, the shared SRule of each target-less kind): a 100,000-rule
    # dump has a few dozen shapes, and rules without a target chain of one shape and kind are alike
    priced: dict[Any, tuple[float, float, bool, dict[tuple[str, bool], SRule]]] = {}
    out: dict[str, list[SRule]] = {}
    for name in chains:
        lst: list[SRule] = []
        append = lst.append
        for r in rules.get(name, ()):
            shape = rule_shape(r.spec)
            p = priced.get(shape)
            if p is None:
                w, t = pricer(shape)
                p = priced[shape] = (w, t, unconditional(shape), {})
            # an `iptables -L` rule keeps its tests as summaries (`ctstate NEW`) the shape cannot
            # see: only a spec with nothing but comments before its target is without a test
            uncond = p[2] and ipt_graph.unconditional(r.spec)
            target = r.target
            if target in user:
                append(SRule(GOTO if r.goto else JUMP, (target,), uncond, p[0], p[1]))
                continue
            kind = CONTINUE if target is None else RETURNS if target == RETURN else TERMINAL \
                if target in TERMINAL_TARGETS else CONTINUE
            sr = p[3].get((kind, uncond))
            if sr is None:
                sr = p[3][(kind, uncond)] = SRule(kind, (), uncond, p[0], p[1])
            append(sr)
        out[name] = lst
    return out


def nodes_from(chains: Mapping[str, Any], rules: Mapping[str, list[Rule]], sr: Mapping[str, Sequence[SRule]]
               ) -> dict[str, ipt_graph.Node]:
    """collectors.iptables.graph.nodes_of for one table, from the rules already classified: the same
    Steps (kind, packets, targets, label, observed = the counter of a rule without a test), built
    without re-reading each rule's text."""
    Step, Node = ipt_graph.Step, ipt_graph.Node
    out = {}
    for name, c in chains.items():
        steps = tuple(Step(s.kind, r.packets, s.targets, f"{name}#{r.position}",
                           r.packets if s.unconditional else None)
                      for r, s in zip(rules.get(name, ()), sr[name]))
        out[name] = Node(name, steps, c.builtin, c.packets if c.builtin and getattr(c, "counted", True) else None)
    return out


def edges(chains: Mapping[str, Sequence[SRule]]) -> dict[str, tuple[str, ...]]:
    """The jump graph: chain -> the chains it jumps or goes to, in rule order, without repeats."""
    out = {}
    for name, rules in chains.items():
        nxt: dict[str, None] = {}
        for r in rules:
            for t in r.targets:
                nxt[t] = None
        out[name] = tuple(nxt)
    return out


ORDER_LIMIT = 500   # chains listed per built-in chain: kube-proxy's KUBE-SERVICES reaches tens of thousands


def reach_order(graph: Mapping[str, tuple[str, ...]], start: str, limit: int | None = None) -> list[str]:
    """Chains reachable from `start` in the order a packet meets them (depth-first, rule order):
    collectors.iptables.graph.walk_order on the `edges` graph, iteratively (deep graphs are legal);
    the first `limit` of them when given."""
    out: list[str] = []
    seen: set[str] = set()
    stack = [start]
    while stack and (limit is None or len(out) < limit):
        n = stack.pop()
        if n in seen or n not in graph:
            continue
        seen.add(n)
        out.append(n)
        stack.extend(reversed([t for t in graph[n] if t not in seen]))
    return out


def reachable(graph: Mapping[str, tuple[str, ...]], starts: Iterable[str]) -> set[str]:
    """Every chain reachable from any of `starts` (one traversal, order not kept)."""
    seen: set[str] = set()
    stack = [s for s in starts if s in graph]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for t in graph.get(n, ()):
            if t not in seen:
                stack.append(t)
    return seen


# --- counters ----------------------------------------------------------------------------------------

def counter_figures(table: tuple[str, str, str], chains: Mapping[str, Sequence[SRule]],
                    graph: Mapping[str, ipt_graph.Node], cost_source: str = ""
                    ) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """Per chain: entering packets and evaluations per packet as the profile computes them
    (graph.evaluate), and their ns priced per rule (by `cost_source`); inclusive of the chains each
    one reaches."""
    w = Warnings()
    costs = ipt_graph.evaluate(graph, None, w, floor_by_observed=True)
    own_ns: dict[str, float] = {}
    for name, node in graph.items():
        c = costs.get(name)
        if c is None or not c.entering or c.evaluations is None:
            continue
        own_ns[name] = _priced_evaluations(node, chains.get(name, ()), c, costs)
    incl_memo: dict[str, float | None] = {}

    def incl_total(name: str, depth: int = 0) -> float | None:
        if name in incl_memo:
            return incl_memo[name]
        incl_memo[name] = None          # a loop yields unknown
        c = costs.get(name)
        if c is None or c.entering is None or c.evaluations is None or depth > 64:
            return None
        total = own_ns.get(name, 0.0)
        for s in graph[name].steps:
            if s.kind in (JUMP, GOTO) and s.targets and s.packets:
                callee = costs.get(s.targets[0])
                sub = incl_total(s.targets[0], depth + 1)
                if callee is None or sub is None or not callee.entering:
                    return None
                total += s.packets * sub / callee.entering
        incl_memo[name] = total
        return total

    out: dict[str, dict[str, Any]] = {}
    policy_note = ipt_graph.NFT_POLICY_NOTE if table[0] == "nft" else None
    for name, c in costs.items():
        node = graph[name]
        d: dict[str, Any] = {"provenance": "counters", "since": SINCE,
                             "entering_packets": None if c.entering is None else int(round(c.entering))}
        if c.entering:
            incl = incl_total(name)
            d.update({"evaluations_per_packet": _r(c.per_packet), "inclusive_evaluations_per_packet":
                      _r(c.inclusive_per_packet), "ns_per_packet": _r(own_ns[name] / c.entering)
                      if name in own_ns else None,
                      "inclusive_ns_per_packet": _r(incl / c.entering) if incl is not None else None,
                      "cost_source": cost_source})
        notes = [n for n in c.notes if n != "no packets entered in this interval"]
        if c.entering == 0:
            notes.append("0 packets counted into this chain since the counters started")
        if policy_note and node.base and node.policy_packets == 0:
            notes.append(policy_note)
        if notes:
            d["notes"] = notes
        out[name] = d
    return out, w.freeze()


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _priced_evaluations(node: ipt_graph.Node, rules: Sequence[SRule], c: ipt_graph.ChainCost,
                        costs: Mapping[str, ipt_graph.ChainCost]) -> float:
    """ns of a chain's counted evaluations: each rule's reach (the packets that got to it, walked down
    the chain as attribution.netfilter.rule_counts does) priced at its typical figure, its matches at
    its worst (a match ran every test); scaled to the graph's evaluations where the two differ."""
    reach = float(c.entering or 0.0)
    total_reach = 0.0
    ns = 0.0
    for i, (st, sr) in enumerate(zip(node.steps, rules)):
        if st.observed is not None and i > 0:
            reach = float(st.observed)
        p = float(st.packets or 0.0)
        matched = min(p, reach)
        total_reach += reach
        ns += reach * sr.typical_ns + matched * (sr.worst_ns - sr.typical_ns)
        if not p:
            continue
        left = leaving(st, p, costs.get(st.targets[0]) if st.targets else None)
        reach = max(reach - left, 0.0)
    if total_reach > 0 and c.evaluations is not None:
        ns *= c.evaluations / total_reach
    return ns


# --- one dump ------------------------------------------------------------------------------------------

def analyze_ruleset(ruleset: Ruleset, model: CostModel, *, rule_counters: bool, source: str = "",
                    approximate: bool = False, listing: bool = False
                    ) -> tuple[list[dict[str, Any]], list[HookStep], tuple[str, ...]]:
    """Tables (JSON-ready), their hook steps and warnings for one iptables dump (`listing`: read from
    `iptables -L`, whose rules show their matches as summaries, not options: those are not priced)."""
    warnings: list[str] = []
    tables: list[dict[str, Any]] = []
    steps: list[HookStep] = []
    for key, (chains, rules) in by_table(ruleset).items():
        backend, family, table = key
        priced = model.iptables(backend)
        pricer = ShapePricer(priced.shapes)
        builtins = [n for n, c in chains.items() if c.builtin]
        user = set(chains) - set(builtins)
        sr = srules(chains, rules, pricer, user)
        static, w1 = static_costs(sr)
        warnings += w1
        counts: dict[str, dict[str, Any]] = {}
        if rule_counters:
            counts, w2 = counter_figures(key, sr, nodes_from(chains, rules, sr), priced.source)
            warnings += w2
        label = f"iptables-{backend}" if backend else "iptables"
        jumps = edges(sr)
        reached = reachable(jumps, builtins)
        builtin = []
        for name in builtins:
            ch = chains[name]
            order = reach_order(jumps, name, ORDER_LIMIT)
            hook = name.lower()
            cnt = _builtin_counters(ch, counts.get(name), rule_counters, approximate)
            builtin.append({"chain": name, "policy": ch.policy, "hook": hook,
                            "priority": table_priority(table, hook), "order": order,
                            "order_truncated": len(order) == ORDER_LIMIT,
                            "static": static[name].to_json(priced.source), "counters": cnt})
            if hook in HOOKS:
                steps.append(HookStep(family, hook, table_priority(table, hook), f"{label} {table} {name}",
                                      table, static[name], priced.source, cnt, table == "nat", source))
        chain_rows = []
        for name in chains:
            st = static[name] if name in static else ZERO
            row: dict[str, Any] = {"chain": name, "rules": st.own_rules, "builtin": name not in user,
                                   "reached": name in reached, "worst_evaluations": st.worst_evaluations,
                                   "typical_evaluations": st.typical_evaluations, "worst_ns": st.worst_ns,
                                   "typical_ns": st.typical_ns, "jumps_to": jumps[name]}
            if rule_counters:
                row["counters"] = counts.get(name)
            chain_rows.append(row)
        tables.append({
            "kind": "iptables", "source": source, "backend": backend or "unknown", "family": family,
            "table": table, "label": f"{label} {family} {table}", "cost_source": priced.source,
            "cost": "iptables-nft" if backend == "nft" else "iptables-legacy",
            "chains": len(chains), "rules": sum(len(v) for v in rules.values()),
            "user_chains": len(user),
            "unreached_chains": sorted(user - reached),
            "rule_counters": rule_counters,
            "counters_note": (SINCE + (" (-L -v without -x: counts rounded to K/M/G)" if approximate else "")
                              if rule_counters else NO_COUNTERS),
            "builtin": builtin, "chain_figures": chain_rows, "chain_figures_provenance": "static",
            **({"static_note": LISTING_NOTE} if listing else {}),
        })
    return tables, steps, tuple(warnings)


LISTING_NOTE = ("read from `iptables -L`: rules show their matches as summaries (`tcp dpt:22`), not options, so "
                "only the header and comments are priced: the static ns are a lower bound")
NO_COUNTERS = ("rules carry no counters (saved without -c): per-rule packets and measured evaluations per packet "
               "are unknown, not zero; the built-in chains' policy counters are all the dump counts")


def _builtin_counters(ch: Any, figures: Mapping[str, Any] | None, rule_counters: bool,
                      approximate: bool) -> dict[str, Any]:
    """What the dump counts for a built-in chain: the figures (with -c) or only its policy packets
    (which iptables-save prints with or without -c; `-S` and `-L` without -v print none)."""
    if getattr(ch, "counted", True):
        policy: dict[str, Any] = {"policy_packets": ch.packets, "policy_bytes": ch.bytes,
                                  "policy_note": "packets that reached the end of the chain and got its policy ("
                                                 + SINCE + ")"}
    else:
        policy = {"policy_packets": None, "policy_note": "the dump prints no policy counter for this chain"}
    if rule_counters and figures is not None:
        return {**figures, **policy, **({"approximate": True} if approximate else {})}
    return {"provenance": "counters", "absent": NO_COUNTERS, **policy}


def iptables_nft_tables(dumps_tables: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """(nft family, table) pairs an iptables-nft dump already covers (skipped in the nft analysis)."""
    fam = {"ipv4": "ip", "ipv6": "ip6"}
    return {(fam.get(t["family"], t["family"]), t["table"]) for t in dumps_tables
            if t["kind"] == "iptables" and t["backend"] == "nft" and t["rules"]}

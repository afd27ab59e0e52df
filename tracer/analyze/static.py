"""Static cost of a ruleset: rule evaluations (and ns) per packet from its structure alone (pure).

A saved dump has no traffic, so what a packet costs is bounded from the rules themselves.
Two figures per chain, each inclusive of the chains it reaches:

- **worst**: every rule of the chain is evaluated and every jump or goto is followed into its
  target and back (an upper bound: a packet that takes a goto does not come back, one that gets
  a verdict goes no further); an nftables verdict map is one lookup that picks one element, so it
  is followed into its costliest target only. Each evaluation is priced as if the rule's header
  fitted and every match module ran.
- **typical**: a packet that matches nothing it can avoid: it is evaluated down each chain to its
  end, failing each rule at the rule's first test, and it takes only rules with no test at all —
  an unconditional jump is followed (and its target walked the same way), an unconditional goto
  is followed and ends the chain, an unconditional verdict (ACCEPT, DROP, RETURN, ...) ends the
  walk; a verdict map is looked up but no element matches. It is the cost a packet that no policy
  rule is about pays, the bulk of a busy node's traffic through kube-proxy's KUBE-SERVICES.

Typical ≤ worst always: the typical walk evaluates a prefix of each chain and follows a subset of
the jumps, each evaluation at most its worst price. Both are computed in one walk per chain, so a
loop in the jump graph (which the kernel refuses to load, but a hand-edited dump may hold) is cut
at the same place for both, and reported.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

from cnitrace.collectors.iptables.graph import DISPATCH, GOTO, JUMP, RETURNS, TERMINAL

MAX_DEPTH = 64   # nested jumps followed; the kernel's own limit is lower in practice


class SRule(NamedTuple):
    """A rule as the static walk sees it (a NamedTuple: 100,000 of them must be cheap to build)."""

    kind: str                  # graph kinds: continue / terminal / return / jump / goto / dispatch
    targets: tuple[str, ...]
    unconditional: bool        # no test: every packet reaching it matches
    worst_ns: float
    typical_ns: float


class Static(NamedTuple):
    """A chain's static figures, inclusive of what it reaches; `own_*` count its own rules only
    (a NamedTuple: one per chain, 60,000 of them for kube-proxy at 20,000 services)."""

    worst_evaluations: int
    typical_evaluations: int
    worst_ns: float
    typical_ns: float
    own_rules: int
    own_worst_ns: float
    typical_end: str           # how the typical packet leaves: "end" (policy / back to the caller),
    #                            "terminal" (a verdict), "return" (RETURN or back through a goto)
    cut: bool = False          # a loop or the depth limit cut the walk short

    def to_json(self, source: str) -> dict:
        return {"worst_evaluations": self.worst_evaluations, "typical_evaluations": self.typical_evaluations,
                "worst_ns": round(self.worst_ns, 1), "typical_ns": round(self.typical_ns, 1),
                "provenance": "static", "cost_source": source, **({"cut": True} if self.cut else {})}


ZERO = Static(0, 0, 0.0, 0.0, 0, 0.0, "end")


def static_costs(chains: Mapping[str, Sequence[SRule]], only: Iterable[str] | None = None
                 ) -> tuple[dict[str, Static], tuple[str, ...]]:
    """Static figures of every chain (or of `only` and what they reach), with warnings for loops."""
    memo: dict[str, Static] = {}
    busy: set[str] = set()
    warned: set[str] = set()
    warnings: list[str] = []

    def visit(name: str, depth: int) -> Static | None:
        got = memo.get(name)
        if got is not None:
            return got
        rules = chains.get(name)
        if rules is None:
            return None
        if name in busy or depth > MAX_DEPTH:
            if name not in warned:
                warned.add(name)
                warnings.append(f"the jump graph loops through {name!r} (or nests deeper than {MAX_DEPTH}); "
                                "its static cost stops there")
            return None
        busy.add(name)
        we = te = 0
        wn = own_wn = tn = 0.0
        end: str | None = None
        cut = False
        for kind, targets, unc, w_ns, t_ns in rules:
            we += 1
            wn += w_ns
            own_wn += w_ns
            first: Static | None = None
            if targets:
                subs = []
                for t in targets:
                    sub = visit(t, depth + 1)
                    if sub is None:
                        cut |= t in chains
                    else:
                        cut |= sub.cut
                        subs.append(sub)
                if subs:
                    first = subs[0]
                    if kind == DISPATCH:
                        best = max(subs, key=lambda s: (s.worst_ns, s.worst_evaluations))
                        we += best.worst_evaluations
                        wn += best.worst_ns
                    elif kind == JUMP or kind == GOTO:
                        for sub in subs:
                            we += sub.worst_evaluations
                            wn += sub.worst_ns
            if end is not None:
                continue
            te += 1
            tn += t_ns
            if not unc:
                continue
            if kind == TERMINAL:
                end = "terminal"
            elif kind == RETURNS:
                end = "return"
            elif (kind == JUMP or kind == GOTO) and first is not None:
                te += first.typical_evaluations
                tn += first.typical_ns
                if first.typical_end == "terminal":
                    end = "terminal"
                elif kind == GOTO:
                    end = "return"
            elif kind == GOTO:
                end = "return"
        busy.discard(name)
        st = Static(we, te, wn, tn, len(rules), own_wn, end or "end", cut)
        memo[name] = st
        return st

    for name in (chains if only is None else only):
        visit(name, 0)
    return memo, tuple(warnings)

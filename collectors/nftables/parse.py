"""Pure parser for `nft -j list ruleset`: tables, chains, rules with their counters, sets and maps.

nftables rules carry counters only when their author wrote `counter` (iptables-nft always
does; kube-proxy's nftables mode does not), so every rule says whether it has one, and where
it sits: a counter after the rule's matches counts packets that matched; one before any match
counts every packet that reached the rule. Set and map lookups are recorded per rule because
they cost one evaluation whatever the set's size — the point of moving policy into sets.

A truncated document still yields the objects before the cut (each top-level object is
decoded on its own), with a warning; unknown object kinds and expressions are skipped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.iptables.parse import TERMINAL_TARGETS

TERMINAL_STATEMENTS = frozenset({"accept", "drop", "reject", "queue", "snat", "dnat", "masquerade", "redirect",
                                 "tproxy", "synproxy"})
CHAIN_VERDICTS = ("jump", "goto")


@dataclasses.dataclass(frozen=True)
class NftChain:
    family: str
    table: str
    name: str
    handle: int | None
    hook: str | None = None
    type: str | None = None
    prio: Any = None
    policy: str | None = None

    @property
    def base(self) -> bool:
        return self.hook is not None

    @property
    def key(self) -> tuple:
        return ("chain", self.family, self.table, self.name)

    @property
    def counters(self) -> dict[str, int]:
        return {}


@dataclasses.dataclass(frozen=True)
class NftRule:
    """One rule. `packets`/`bytes` are None when the rule has no counter."""

    family: str
    table: str
    chain: str
    handle: int | None
    position: int
    verdict: str                     # continue | terminal | return | jump | goto | dispatch
    targets: tuple[str, ...] = ()    # chains reached by jump/goto (including through verdict maps)
    packets: int | None = None
    bytes: int | None = None
    counter_before_match: bool = False   # the counter counts every packet reaching the rule
    unconditional: bool = False          # no match at all: every packet reaching it matches
    lookups: tuple[str, ...] = ()        # named sets/maps looked up (one evaluation each)
    terminal_in_map: bool = False        # a verdict map also holds accept/drop/... verdicts
    comment: str | None = None

    @property
    def has_counter(self) -> bool:
        return self.packets is not None

    @property
    def key(self) -> tuple:
        return ("rule", self.family, self.table, self.chain, self.handle, self.position if self.handle is None else 0)

    @property
    def counters(self) -> dict[str, int]:
        return {} if self.packets is None else {"packets": self.packets, "bytes": self.bytes or 0}


@dataclasses.dataclass(frozen=True)
class NftSet:
    """A named set or map; `size` is its element count, `max_size` the declared limit if any."""

    family: str
    table: str
    name: str
    kind: str                 # "set" | "map"
    type: Any
    size: int
    max_size: int | None = None
    flags: tuple[str, ...] = ()
    map_type: Any = None
    verdict_targets: tuple[str, ...] = ()   # chains a verdict map jumps/goes to
    # concatenated keys (`a . b`): elements by the value of their first field, and the first-field
    # value of each element that jumps/goes to a chain (the pipapo lookup's cost follows the elements
    # that share the packet's first field; see collectors.nftables.graph)
    first_field: tuple[tuple[str, int], ...] = ()
    target_first: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple:
        return (self.kind, self.family, self.table, self.name)

    @property
    def counters(self) -> dict[str, int]:
        return {"elements": self.size}


@dataclasses.dataclass(frozen=True)
class NftCounter:
    """A named counter object (`counter name "x"` in rules refers to it)."""

    family: str
    table: str
    name: str
    packets: int
    bytes: int

    @property
    def key(self) -> tuple:
        return ("counter", self.family, self.table, self.name)

    @property
    def counters(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes}


Record = NftChain | NftRule | NftSet | NftCounter


def parse(text: str) -> Parsed[Record]:
    """Parse `nft -j list ruleset` output into chains, rules, sets/maps and named counters."""
    w = Warnings()
    objects = _objects(text, w)
    sets: dict[tuple[str, str, str], NftSet] = {}
    named: dict[tuple[str, str, str], NftCounter] = {}
    chains: list[NftChain] = []
    raw_rules: list[dict[str, Any]] = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or len(obj) != 1:
            w.add(f"object {i}: not a one-key object; skipped")
            continue
        (kind, body), = obj.items()
        if not isinstance(body, dict):
            if kind != "metainfo":
                w.add(f"object {i}: {kind!r} body is not an object; skipped")
            continue
        try:
            if kind == "chain":
                chains.append(NftChain(_s(body, "family"), _s(body, "table"), _s(body, "name"),
                                       _int(body.get("handle")), body.get("hook"), body.get("type"),
                                       body.get("prio"), body.get("policy")))
            elif kind == "rule":
                raw_rules.append(body)
            elif kind in ("set", "map"):
                s = _set(kind, body)
                sets[(s.family, s.table, s.name)] = s
            elif kind == "counter":
                c = NftCounter(_s(body, "family"), _s(body, "table"), _s(body, "name"),
                               _nonneg(body.get("packets")), _nonneg(body.get("bytes")))
                named[(c.family, c.table, c.name)] = c
        except (KeyError, TypeError, ValueError) as exc:
            w.add(f"object {i} ({kind}): {exc}; skipped")
    rules: list[NftRule] = []
    position: dict[tuple[str, str, str], int] = {}
    for body in raw_rules:
        try:
            ck = (_s(body, "family"), _s(body, "table"), _s(body, "chain"))
        except (KeyError, TypeError, ValueError) as exc:
            w.add(f"rule without {exc}; skipped")
            continue
        pos = position.get(ck, 0) + 1
        position[ck] = pos
        rules.append(_rule(ck, pos, body, sets, named, w))
    known = {(c.family, c.table, c.name) for c in chains}
    for r in rules:
        if (r.family, r.table, r.chain) not in known:
            w.add(f"rule {r.handle} in undeclared chain {r.chain!r}")
            known.add((r.family, r.table, r.chain))
            chains.append(NftChain(r.family, r.table, r.chain, None))
    return Parsed((*chains, *rules, *sets.values(), *named.values()), w.freeze())


def _objects(text: str, w: Warnings) -> list[Any]:
    """The `nftables` array; if the document is cut short, every object before the cut."""
    if not isinstance(text, str):
        w.add(f"expected text, got {type(text).__name__}")
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        pass
    else:
        items = doc.get("nftables") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            w.add("no `nftables` array in the document")
            return []
        return items
    start = text.find("[", text.find('"nftables"') + 1) if '"nftables"' in text else -1
    if start < 0:
        w.add("not an `nft -j` document")
        return []
    dec = json.JSONDecoder()
    out: list[Any] = []
    i = start + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except ValueError:
            w.add(f"document cut or malformed at character {i}; kept the {len(out)} objects before it")
            return out
        out.append(obj)
    w.add("document did not parse as a whole; objects were decoded one by one")
    return out


def _s(body: dict[str, Any], field: str) -> str:
    v = body[field]
    if not isinstance(v, str):
        raise ValueError(f"field {field!r} is not a string")
    return v


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _nonneg(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise ValueError(f"bad counter value {v!r}")


def _set(kind: str, body: dict[str, Any]) -> NftSet:
    elems = body.get("elem", [])
    if not isinstance(elems, list):
        elems = []
    targets: list[str] = []
    first: dict[str, int] = {}
    target_first: list[tuple[str, str]] = []
    for e in elems:
        key = e[0] if isinstance(e, list) and e else e
        f0 = _first_field(key)
        if f0 is not None:
            first[f0] = first.get(f0, 0) + 1
        if isinstance(e, list) and len(e) == 2 and isinstance(e[1], dict):
            for v in CHAIN_VERDICTS:
                t = e[1].get(v)
                if isinstance(t, dict) and isinstance(t.get("target"), str):
                    if t["target"] not in targets:
                        targets.append(t["target"])
                    if f0 is not None:
                        target_first.append((t["target"], f0))
    flags = body.get("flags", [])
    return NftSet(_s(body, "family"), _s(body, "table"), _s(body, "name"), kind, _hashable(body.get("type")),
                  len(elems), _int(body.get("size")),
                  tuple(f for f in flags if isinstance(f, str)) if isinstance(flags, list) else (),
                  _hashable(body.get("map")), tuple(targets), tuple(sorted(first.items())), tuple(target_first))


def _first_field(key: Any) -> str | None:
    """The first field's value of a concatenated element key (`{"concat": [v0, ...]}`), as text."""
    if isinstance(key, dict) and isinstance(key.get("elem"), dict):
        key = key["elem"].get("val")
    if isinstance(key, dict) and isinstance(key.get("concat"), list) and key["concat"]:
        v = key["concat"][0]
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return None


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def _rule(ck: tuple[str, str, str], pos: int, body: dict[str, Any], sets: dict, named: dict,
          w: Warnings) -> NftRule:
    fam, table, chain = ck
    expr = body.get("expr", [])
    if not isinstance(expr, list):
        w.add(f"rule {body.get('handle')} in {chain!r}: `expr` is not a list")
        expr = []
    verdict, targets, lookups = "continue", [], []
    packets = nbytes = None
    before_match = False
    seen_match = False
    terminal_in_map = False
    for e in expr:
        if not isinstance(e, dict) or len(e) != 1:
            continue
        (k, v), = e.items()
        if k == "counter":
            if isinstance(v, dict) and "packets" in v:
                try:
                    packets, nbytes = _nonneg(v.get("packets")), _nonneg(v.get("bytes", 0))
                except ValueError as exc:
                    w.add(f"rule {body.get('handle')} in {chain!r}: {exc}")
                    continue
            elif isinstance(v, str) and (fam, table, v) in named:
                c = named[(fam, table, v)]
                packets, nbytes = c.packets, c.bytes
            else:
                continue
            before_match = not seen_match
        elif k == "match":
            seen_match = True
            right = v.get("right") if isinstance(v, dict) else None
            if isinstance(right, str) and right.startswith("@"):
                lookups.append(right[1:])
        elif k in ("vmap", "map"):
            seen_match = True
            data = v.get("data") if isinstance(v, dict) else None
            if isinstance(data, str) and data.startswith("@"):
                lookups.append(data[1:])
                s = sets.get((fam, table, data[1:]))
                if k == "vmap":
                    verdict = "dispatch"
                    if s is not None:
                        targets += [t for t in s.verdict_targets if t not in targets]
                        terminal_in_map = s.size > len(s.verdict_targets)
            elif isinstance(data, dict) and isinstance(data.get("set"), list) and k == "vmap":
                verdict = "dispatch"
                for pair in data["set"]:
                    if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict):
                        hit = [pair[1][c]["target"] for c in CHAIN_VERDICTS
                               if isinstance(pair[1].get(c), dict) and isinstance(pair[1][c].get("target"), str)]
                        if hit:
                            targets += [t for t in hit if t not in targets]
                        else:
                            terminal_in_map = True
        elif k in CHAIN_VERDICTS and isinstance(v, dict) and isinstance(v.get("target"), str):
            verdict, targets = k, [v["target"]]
        elif k == "return":
            verdict = "return"
        elif k in TERMINAL_STATEMENTS:
            verdict = "terminal"
        elif k == "xt" and isinstance(v, dict):
            # iptables-nft rules the kernel runs through xtables: a match or a target by name.
            if v.get("type") == "target":
                verdict = "terminal" if v.get("name") in TERMINAL_TARGETS else verdict
            elif v.get("name") != "comment":   # a comment matches every packet
                seen_match = True
    comment = body.get("comment") if isinstance(body.get("comment"), str) else None
    return NftRule(fam, table, chain, _int(body.get("handle")), pos, verdict, tuple(targets), packets, nbytes,
                   before_match, not seen_match, tuple(lookups), terminal_in_map, comment)

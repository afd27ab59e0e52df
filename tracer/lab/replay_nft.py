"""An `nft list ruleset` dump (text or -j) rewritten for `nft -f` in a lab node namespace (pure).

`nft -f` reloads its own listing, so the rewrite is light and line-level (text) or object-level
(JSON), one pass after a short scan:
- counters are zeroed and `# handle N` comments dropped (the lab counts its own packets);
- rules with xtables-compat expressions (`xt match`, `xt target`: rules iptables-nft wrote that nft
  cannot express) are dropped: replay that node's `iptables-nft-save` dump instead;
- chains and flowtables bound to devices the lab does not have (`hook ingress device eth0`,
  `devices = { ... }`) are dropped with their rules, and so are rules that jump to them;
- JSON objects are put in dependency order (tables, chains, sets and maps, elements, rules): the
  listing names a chain in a map element before it declares the chain, which `nft -j -f` refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from cnitrace.lab.replay import Rewrite, Rewritten, Source

_XT = re.compile(r"\bxt (?:match|target)\b")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_NAMED_COUNTER = re.compile(r"^(\s*)packets \d+ bytes \d+\s*$")
_HANDLE = re.compile(r"\s*# handle \d+\s*$")
_OBJECT = re.compile(r"^\s*(chain|flowtable|set|map|counter|quota|limit|ct \w+|secmark|synproxy)\s+(\"[^\"]+\"|\S+)\s*\{")
_TABLE = re.compile(r"^\s*table\s+(\w+)\s+(\"[^\"]+\"|\S+)\s*\{")
_DEVICES = re.compile(r"\bdevices?\s*=?\s*(\{[^}]*\}|\"[^\"]*\"|[\w.:@-]+)")
_JUMP = re.compile(r"\b(?:jump|goto)\s+(\"[^\"]+\"|[\w.:@-]+)")
_FLOW = re.compile(r"\bflow (?:add|offload) @(\S+)")
PROPS = ("type ", "policy ", "comment ", "devices", "}", "#", "flags ")
XT_REASON = "an xtables-compat expression (written by iptables-nft): replay its iptables-nft-save dump instead"


def _braces(line: str) -> int:
    if '"' in line:
        line = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line)
    return line.count("{") - line.count("}")


def _devices(text: str) -> list[str]:
    out = []
    for m in _DEVICES.finditer(text):
        out += [d.strip('"') for d in re.findall(r'"[^"]*"|[\w.:@-]+', m.group(1).strip("{}"))]
    return [d for d in out if d]


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == '"' and s[-1] == '"' else s


def _scan(lines: list[str], devices: set[str]) -> dict[tuple[str, str, str], str]:
    """(table, kind, name) of chains/flowtables to drop -> why: bound to devices absent from the lab."""
    drop: dict[tuple[str, str, str], str] = {}
    depth, obj, body, table = 0, None, [], ""
    for raw in lines:
        line = raw.split("#", 1)[0] if "#" in raw and '"' not in raw else raw
        if depth == 0:
            m = _TABLE.match(line)
            if m:
                table = f"{m.group(1)} {_unquote(m.group(2))}"
        if depth == 1 and obj is None:
            m = _OBJECT.match(line)
            if m and m.group(1) in ("chain", "flowtable"):
                obj, body = (table, m.group(1), _unquote(m.group(2))), []
        if obj is not None:
            body.append(line)
        depth += _braces(line)
        if obj is not None and depth <= 1:
            missing = [d for d in _devices("\n".join(body)) if d not in devices]
            if missing:
                drop[obj] = f"{obj[1]} {obj[2]} is bound to {', '.join(missing)}, absent from the lab"
            obj = None
    return drop


def rewrite_text(src: Source, devices: Iterable[str] = ()) -> Rewritten:
    """`nft list ruleset` text as `nft -f` input (never raises)."""
    name = src.name
    lines = src.text.splitlines()
    drop = _scan(lines, set(devices))
    dropped_chains = {(t, n) for (t, k, n) in drop if k == "chain"}
    dropped_flows = {(t, n) for (t, k, n) in drop if k == "flowtable"}
    out: list[str] = []
    origin: list[int] = []
    rewrites: list[Rewrite] = []
    rule_lines: set[int] = set()
    tables: list[str] = []
    notes: list[str] = []
    depth, obj, skip_obj, skip_rule_to, table = 0, None, None, None, ""
    counters = 0
    for no, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        d0 = depth
        depth += _braces(raw)
        if skip_rule_to is not None:            # continuation lines of a dropped multi-line rule
            if depth <= skip_rule_to:
                skip_rule_to = None
            continue
        if d0 == 0:
            m = _TABLE.match(raw)
            if m:
                table = f"{m.group(1)} {_unquote(m.group(2))}"
                tables.append(table)
        if d0 == 1 and obj is None:
            m = _OBJECT.match(raw)
            if m:
                obj = (table, m.group(1), _unquote(m.group(2)))
                if obj in drop:
                    skip_obj = obj
        is_rule = d0 == 2 and obj is not None and obj[1] == "chain" and not stripped.startswith(PROPS)
        if is_rule:
            rule_lines.add(no)
        if skip_obj is not None:
            if is_rule:
                rewrites.append(Rewrite(name, no, stripped, None, drop[skip_obj]))
            if depth <= 1:
                skip_obj = obj = None
            continue
        if obj is not None and depth <= 1:
            obj = None
        line = _HANDLE.sub("", raw) if "# handle" in raw else raw
        if is_rule:
            why = None
            if _XT.search(line):
                why = XT_REASON
            else:
                for m in _JUMP.finditer(line):
                    if (table, _unquote(m.group(1))) in dropped_chains:
                        why = f"jumps to chain {_unquote(m.group(1))}, dropped (bound to a device absent from the lab)"
                        break
                m = _FLOW.search(line)
                if why is None and m and (table, m.group(1)) in dropped_flows:
                    why = f"uses flowtable {m.group(1)}, dropped (bound to a device absent from the lab)"
            if why is not None:
                rewrites.append(Rewrite(name, no, stripped, None, why))
                if depth > d0:
                    skip_rule_to = d0
                continue
        if "packets" in line:
            new = _COUNTER.sub("counter", line)
            new = _NAMED_COUNTER.sub(r"\1packets 0 bytes 0", new)
            counters += new != line
            line = new
        out.append(line.rstrip())
        origin.append(no)
    if drop:
        notes.append("dropped, bound to devices absent from the lab: " + "; ".join(sorted(drop.values()))[:400])
    if counters:
        notes.append(f"counters zeroed on {counters} lines (the lab counts its own packets)")
    if depth != 0:
        notes.append(f"unbalanced braces at the end ({depth:+d}): the dump may be cut short")
    return Rewritten(src, out, origin, len(rule_lines), rewrites, notes, {}, {}, tuple(tables),
                     rule_lines=frozenset(rule_lines))


# --- nft -j ------------------------------------------------------------------------------------------

ORDER = {"table": 0, "chain": 1, "set": 2, "map": 2, "counter": 2, "quota": 2, "limit": 2, "flowtable": 2,
         "ct helper": 2, "ct timeout": 2, "ct expectation": 2, "secmark": 2, "synproxy": 2, "element": 3, "rule": 4}
COMMANDS = ("add", "create", "insert", "replace", "delete", "flush", "destroy", "reset", "list", "rename")


def _has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return key in obj or any(_has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(v, key) for v in obj)
    return False


def _jump_targets(obj: Any) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("jump", "goto") and isinstance(v, dict) and isinstance(v.get("target"), str):
                out.append(v["target"])
            else:
                out += _jump_targets(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _jump_targets(v)
    return out


def _zero_counters(expr: Any) -> Any:
    if isinstance(expr, list):
        return [{"counter": {"packets": 0, "bytes": 0}} if isinstance(e, dict) and "counter" in e
                and isinstance(e["counter"], dict) and "packets" in e["counter"] else e for e in expr]
    return expr


def _short(obj: Any, n: int = 400) -> str:
    s = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    return s if len(s) <= n else s[:n] + "..."


def rewrite_json(src: Source, devices: Iterable[str] = ()) -> Rewritten:
    """`nft -j list ruleset` as `nft -j -f` input (never raises: unreadable input drops nothing and
    loads nothing, with a note)."""
    name, devs = src.name, set(devices)
    try:
        items = json.loads("\n".join(l for l in src.text.splitlines() if not l.lstrip().startswith("#")))["nftables"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return Rewritten(src, [], [], 0, [], ["not `nft -j list ruleset` output: nothing loaded"])
    rewrites: list[Rewrite] = []
    notes: list[str] = []
    keep: list[tuple[int, int, Any]] = []     # (order, input index, object)
    dropped_chains: dict[tuple, str] = {}
    rule_lines: set[int] = set()
    tables: list[str] = []
    commands = any(isinstance(o, dict) and any(k in o for k in COMMANDS) for o in items)
    # chains and flowtables bound to devices the lab does not have
    for o in items:
        if isinstance(o, dict) and len(o) == 1 and next(iter(o)) in ("chain", "flowtable"):
            kind, body = next(iter(o.items()))
            if isinstance(body, dict):
                dev = body.get("dev", body.get("devices", []))
                devl = [dev] if isinstance(dev, str) else [d for d in dev if isinstance(d, str)] if isinstance(dev, list) else []
                missing = [d for d in devl if d not in devs]
                if missing:
                    dropped_chains[(kind, body.get("family"), body.get("table"), body.get("name"))] = \
                        f"{kind} {body.get('name')} is bound to {', '.join(missing)}, absent from the lab"
    counters = 0
    for i, o in enumerate(items, 1):
        if not isinstance(o, dict) or len(o) != 1:
            notes.append(f"object {i} ignored: not one nftables object")
            continue
        kind, body = next(iter(o.items()))
        if kind == "metainfo":
            continue
        if kind == "rule":
            rule_lines.add(i)
        if not isinstance(body, dict):
            if kind == "rule":
                rewrites.append(Rewrite(name, i, _short(o), None, "malformed rule object"))
            continue
        if kind == "table":
            tables.append(f"{body.get('family')} {body.get('name')}")
        key = (kind, body.get("family"), body.get("table"), body.get("name"))
        if key in dropped_chains:
            continue
        if kind == "rule":
            why = None
            ckey = ("chain", body.get("family"), body.get("table"), body.get("chain"))
            if ckey in dropped_chains:
                why = dropped_chains[ckey]
            elif _has_key(body.get("expr"), "xt"):
                why = XT_REASON
            else:
                for t in _jump_targets(body.get("expr")):
                    if ("chain", body.get("family"), body.get("table"), t) in dropped_chains:
                        why = f"jumps to chain {t}, dropped (bound to a device absent from the lab)"
                        break
            if why is not None:
                rewrites.append(Rewrite(name, i, _short(o), None, why))
                continue
            zeroed = _zero_counters(body.get("expr"))
            if zeroed != body.get("expr"):
                counters += 1
                o = {"rule": {**body, "expr": zeroed}}
        elif kind == "counter" and "packets" in body:
            o = {"counter": {**body, "packets": 0, "bytes": 0}}
        keep.append((0 if commands else ORDER.get(kind, 2), i, o))
    keep.sort(key=lambda t: (t[0], t[1]))
    if dropped_chains:
        notes.append("dropped, bound to devices absent from the lab: " + "; ".join(sorted(dropped_chains.values()))[:400])
    if counters:
        notes.append(f"counters zeroed in {counters} rules (the lab counts its own packets)")
    if not commands:
        notes.append("objects put in dependency order for nft -j -f (tables, chains, sets/maps, elements, rules)")
    lines = [json.dumps(o, separators=(",", ":")) for _, _, o in keep]
    return Rewritten(src, lines, [i for _, i, _ in keep], len(rule_lines), rewrites, notes, {}, {}, tuple(tables),
                     rule_lines=frozenset(rule_lines))

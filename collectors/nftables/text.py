"""Pure parser for `nft list ruleset` text (also `nft list table ...`, `nft -a`, with or without counters).

People paste the text form, not `nft -j`; this reads it into the same records as the JSON parser
(collectors/nftables/parse.py), so the jump graph and the native cost model work on either. The
equivalence is tested on captures of both forms of the same rulesets. What a rule does is read
from its words, the way the JSON parser reads its expressions:
- a match is a clause that starts with a selector (`ip`, `tcp`, `meta`, `ct`, `fib`, `iifname`, ...)
  and has no `set` (a clause with `set` is a statement: `meta mark set ...`); `@name` in a match
  is a set lookup;
- `counter packets N bytes M` (or `counter name "x"`) says where the counter sits: ahead of any
  match it counts every packet reaching the rule;
- verdicts and terminal statements (`accept`, `drop`, `reject ...`, `dnat to ...`, `masquerade`),
  `jump`/`goto`, `return`, and verdict maps (`vmap @name`, `vmap { k : jump c, ... }`);
- iptables-nft rules print their untranslatable xtables parts as `xt match NAME` (nft 1.0) or an
  inline `# xt_NAME` (0.9): an upper-case name is a target, as in iptables.
A word in value position (`ct status dnat`, `icmp type redirect`) is never taken for a statement.

Matching the JSON output also means its quirks: priorities are numbers (`dstnat - 10` → -110, per
family), `typeof` sets get the type their expression has, and a set's `dynamic` flag is dropped
(nft -j does not list it). Prompts, fences, indentation, comments and truncation are tolerated: an
unclosed block at the end is kept and warned about.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.iptables.parse import TERMINAL_TARGETS, maybe_noise, paste_noise
from cnitrace.collectors.nftables.parse import NftChain, NftCounter, NftRule, NftSet, Record

FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
# Standard priority names (nftables' std_prios / bridge_std_prios).
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BRIDGE_PRIORITIES = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
SELECTORS = frozenset({
    "ip", "ip6", "tcp", "udp", "udplite", "sctp", "dccp", "th", "icmp", "icmpv6", "igmp", "ah", "esp", "comp",
    "gre", "gretap", "vxlan", "geneve", "meta", "ct", "iif", "oif", "iifname", "oifname", "iiftype", "oiftype",
    "iifgroup", "oifgroup", "iifkind", "oifkind", "fib", "ether", "vlan", "arp", "rt", "exthdr", "hbh", "frag",
    "dst", "mh", "srh", "ipsec", "socket", "osf", "mark", "l4proto", "nfproto", "pkttype", "skuid", "skgid",
    "cgroup", "cpu", "rtclassid", "ibrname", "obrname", "ibrpvid", "ibrvproto", "sdif", "sdifname", "day", "hour",
    "time", "numgen", "jhash", "symhash", "random", "tunnel", "inner", "dscp", "priority", "length", "protocol",
})
# Selectors that take a field after them (`meta mark`, `ct state`): a selector word right after one of
# these is that field, not the start of the next match.
PREFIXES = frozenset({
    "ip", "ip6", "tcp", "udp", "udplite", "sctp", "dccp", "th", "icmp", "icmpv6", "igmp", "ah", "esp", "comp", "gre",
    "gretap", "vxlan", "geneve", "meta", "ct", "fib", "ether", "vlan", "arp", "rt", "exthdr", "hbh", "frag", "dst",
    "mh", "srh", "ipsec", "socket", "osf", "numgen", "jhash", "symhash", "tunnel", "inner",
})
TERMINAL_WORDS = frozenset({"accept", "drop", "reject", "queue", "snat", "dnat", "masquerade", "redirect", "tproxy",
                            "synproxy"})
STATEMENT_WORDS = TERMINAL_WORDS | {"counter", "comment", "return", "jump", "goto", "continue", "vmap", "log",
                                    "limit", "quota", "notrack", "xt", "dup", "fwd", "flow", "meter", "#"}
# After these a word is a value (`ct status dnat`, `icmp type redirect`, `== x`, `a . b`).
VALUE_AFTER = frozenset({"status", "state", "type", "code", "==", "!=", "<", ">", "<=", ">=", "&", "|", "^", ".",
                         ",", "and", "or", "xor", "<<", ">>", "not", "!", "/", "mod", "-"})
LOG_OPTIONS = frozenset({"prefix", "level", "group", "snaplen", "queue-threshold", "flags"})
# `typeof` expressions → the data type `nft -j` reports for them
TYPEOF = {
    "ip saddr": "ipv4_addr", "ip daddr": "ipv4_addr", "ip6 saddr": "ipv6_addr", "ip6 daddr": "ipv6_addr",
    "tcp dport": "inet_service", "tcp sport": "inet_service", "udp dport": "inet_service",
    "udp sport": "inet_service", "th dport": "inet_service", "th sport": "inet_service",
    "sctp dport": "inet_service", "sctp sport": "inet_service", "meta l4proto": "inet_proto",
    "ip protocol": "inet_proto", "ip6 nexthdr": "inet_proto", "meta mark": "mark", "ct mark": "mark",
    "meta iifname": "ifname", "meta oifname": "ifname", "iifname": "ifname", "oifname": "ifname",
    "meta iif": "iface_index", "meta oif": "iface_index", "iif": "iface_index", "oif": "iface_index",
    "ether saddr": "ether_addr", "ether daddr": "ether_addr", "meta nfproto": "nf_proto", "vlan id": "integer",
    "ct state": "ct_state", "ct status": "ct_status", "ip dscp": "dscp", "ip6 dscp": "dscp",
    "meta skuid": "uid", "meta skgid": "gid", "ct zone": "integer",
}

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{}]|[^\s{}"]+|"')
_INT = re.compile(r"^-?\d+$")
_PREFIX = re.compile(r"^([0-9a-fA-F.:]+)/(\d{1,3})$")
_BLOCKS = frozenset({"table", "chain", "set", "map", "counter", "quota", "limit", "ct", "flowtable", "secmark",
                     "synproxy", "tunnel"})


def parse_text(text: str) -> Parsed[Record]:
    """Parse `nft list ruleset` text into NftChain, NftRule, NftSet and NftCounter records, ordered as
    the JSON parser orders them (chains, rules, sets and maps, named counters)."""
    return _Parser().run(text)


class _Parser:
    """One pass over the lines with a stack of open blocks (table → chain/set/map/counter)."""

    def __init__(self) -> None:
        self.w = Warnings()
        self.chains: list[NftChain] = []
        self.rules: list[NftRule] = []
        self.sets: dict[tuple[str, str, str], NftSet] = {}
        self.counters: dict[tuple[str, str, str], NftCounter] = {}
        self.stack: list[tuple[str, Any]] = []   # ("table", (family, name)) / ("chain", dict) / ...
        self.position: dict[tuple[str, str, str], int] = {}

    # -- driving -------------------------------------------------------------------------------
    def run(self, text: str) -> Parsed[Record]:
        if not isinstance(text, str):
            self.w.add(f"expected text, got {type(text).__name__}")
            return Parsed((), self.w.freeze())
        pending: list[str] = []
        pending_no = 0
        depth = 0
        for no, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            if pending:
                pending.append(line)
                depth += _depth(line)
                if depth <= 0:
                    self.line(" ".join(pending), pending_no)
                    pending, depth = [], 0
                continue
            if line[0] == "#" and not line.startswith("# xt_"):
                if paste_noise(line) == "truncated":
                    self.w.add(f"ruleset truncated at line {no}")
                continue
            if line.startswith("elements") and (d := _depth(line)) > 0:
                pending, pending_no, depth = [line], no, d     # nft wraps long element lists
                continue
            self.line(line, no)
        if pending:
            self.w.add(f"line {pending_no}: unclosed braces at the end of the text (truncated?)")
            self.line(" ".join(pending) + " }" * depth, pending_no)
        for kind, body in reversed(self.stack):
            what = f"{kind} {body['name']}" if isinstance(body, dict) else f"{kind} {' '.join(body)}"
            self.w.add(f"text ends inside {what} (truncated?)")
            self.close()
        return Parsed((*self.chains, *self.rules, *self.sets.values(), *self.counters.values()), self.w.freeze())

    def line(self, line: str, no: int) -> None:
        handle = None
        h = line.rfind("# handle ")
        if h >= 0 and line[h + 9:].strip().isdecimal():
            handle = int(line[h + 9:].strip())
            line = line[:h].rstrip()
            if not line:
                return
        kind = None if line.startswith("# xt_") else maybe_noise(line)
        if kind is not None:
            if kind == "truncated":
                self.w.add(f"ruleset truncated at line {no}")
            return
        if line[0] == "}":
            if not self.stack:
                self.w.add("closing brace without an open block", no)
                return
            self.close()
            rest = line[1:].strip()
            if rest and rest[0] != "#":
                self.line(rest, no)
            return
        if _opener(line):
            self.open(line, handle, no)
            return
        top = self.stack[-1][0] if self.stack else None
        if top == "chain":
            self.chain_line(line, handle, no)
        elif top in ("set", "map"):
            self.set_line(line, no)
        elif top == "counter":
            self.counter_line(line, no)
        elif top == "skip":
            return
        elif top == "table":
            if not line.startswith(("flags ", "comment ")):
                self.w.add(f"unexpected line in table: {line[:60]!r}", no)
        elif paste_noise(line) is None:
            self.w.add(f"line outside any table ignored: {line[:60]!r}", no)

    # -- blocks --------------------------------------------------------------------------------
    def open(self, line: str, handle: int | None, no: int) -> None:
        words = [_unquote(t) for t in line[:-1].split()]
        kind = words[0]
        if kind == "table":
            if len(words) == 3 and words[1] in FAMILIES:
                fam, name = words[1], words[2]
            elif len(words) == 2:
                fam, name = "ip", words[1]
            else:
                self.w.add(f"bad table line {line[:60]!r}", no)
                fam, name = "ip", words[-1] if len(words) > 1 else "?"
            if self.stack:
                self.w.add(f"table {name!r} opened inside another block (missing closing brace?)", no)
                while self.stack:
                    self.close()
            self.stack.append(("table", (fam, name)))
            return
        if not self.stack:
            self.w.add(f"no `table` line before {kind} {words[1] if len(words) > 1 else ''}: "
                       "assumed table ip filter", no)
            self.stack.append(("table", ("ip", "filter")))
        if self.stack[-1][0] != "table":
            self.w.add(f"{kind} block inside a {self.stack[-1][0]} block (missing closing brace?)", no)
            while self.stack[-1][0] != "table":
                self.close()
        fam, table = self.stack[-1][1]
        name = words[1] if len(words) > 1 else "?"
        if kind == "chain":
            self.stack.append(("chain", {"family": fam, "table": table, "name": name, "handle": handle,
                                         "hook": None, "type": None, "prio": None, "policy": None}))
        elif kind in ("set", "map"):
            self.stack.append((kind, {"family": fam, "table": table, "name": name, "kind": kind, "type": None,
                                      "map": None, "size": None, "flags": (), "elements": []}))
        elif kind == "counter":
            self.stack.append(("counter", {"family": fam, "table": table, "name": name, "packets": 0, "bytes": 0}))
        else:
            self.stack.append(("skip", {"name": f"{kind} {name}"}))

    def close(self) -> None:
        kind, body = self.stack.pop()
        if kind == "chain":
            self.chains.append(NftChain(body["family"], body["table"], body["name"], body["handle"], body["hook"],
                                        body["type"], body["prio"], body["policy"]))
        elif kind in ("set", "map"):
            s = _set(body)
            self.sets[(s.family, s.table, s.name)] = s
        elif kind == "counter":
            c = NftCounter(body["family"], body["table"], body["name"], body["packets"], body["bytes"])
            self.counters[(c.family, c.table, c.name)] = c

    def chain_line(self, line: str, handle: int | None, no: int) -> None:
        body = self.stack[-1][1]
        if line.startswith("type ") and " hook " in line:
            _base_chain(body, line, self.w, no)
            return
        ck = (body["family"], body["table"], body["name"])
        if line.startswith('comment "') and ck not in self.position:
            return       # the chain's own comment, printed before its rules
        if line.startswith("policy ") and line.endswith(";"):
            body["policy"] = line[7:-1].strip()
            return
        pos = self.position.get(ck, 0) + 1
        self.position[ck] = pos
        self.rules.append(_rule(ck, pos, handle, _tokens(line), self.sets, self.counters, self.w, no))

    def set_line(self, line: str, no: int) -> None:
        body = self.stack[-1][1]
        word, _, rest = line.partition(" ")
        if word in ("type", "typeof"):
            key, _, data = rest.partition(" : ")
            body["type"] = _type(key, word == "typeof")
            if data:
                body["map"] = _type(data, word == "typeof")
        elif word == "flags":
            body["flags"] = tuple(f for f in rest.replace(" ", "").split(",") if f and f != "dynamic")
        elif word == "size" and rest.strip().isdecimal():
            body["size"] = int(rest)
        elif word == "elements":
            inner = rest.strip().lstrip("=").strip()
            if inner.startswith("{"):
                inner = inner[1:]
            if inner.endswith("}"):
                inner = inner[:-1]
            body["elements"] += [e for e in _split_top(inner, ",") if e.strip()]
        elif word not in ("timeout", "gc-interval", "policy", "auto-merge", "counter", "comment"):
            self.w.add(f"unexpected line in {body['kind']} {body['name']!r}: {line[:60]!r}", no)

    def counter_line(self, line: str, no: int) -> None:
        toks = line.split()
        body = self.stack[-1][1]
        for i, t in enumerate(toks[:-1]):
            if t in ("packets", "bytes"):
                if toks[i + 1].isdecimal():
                    body[t] = int(toks[i + 1])
                else:
                    self.w.add(f"bad counter value {toks[i + 1][:20]!r} in counter {body['name']!r}", no)


# --- lines and words --------------------------------------------------------------------------

def _depth(line: str) -> int:
    """Unclosed `{` minus `}` outside quotes."""
    if "{" not in line and "}" not in line:
        return 0
    d = 0
    for t in _TOKEN.findall(line):
        if t == "{":
            d += 1
        elif t == "}":
            d -= 1
    return d


def _opener(line: str) -> bool:
    """`table ip x {`, `chain y {`, `set s {`, ...: a line that opens a block (ends with its brace)."""
    if not line.endswith("{"):
        return False
    first = line.split(None, 1)[0]
    return first in _BLOCKS and line.count("{") == 1


def _unquote(tok: str) -> str:
    if len(tok) >= 2 and tok[0] == '"' and tok[-1] == '"':
        return tok[1:-1].replace('\\"', '"')
    return tok


def _tokens(line: str) -> list[str]:
    """Words of a rule; a `{ ... }` group (an anonymous set or verdict map) is one word."""
    if '"' not in line and "{" not in line and "}" not in line:
        return line.split()
    out: list[str] = []
    start = -1
    depth = 0
    for m in _TOKEN.finditer(line):
        t = m.group()
        if t == "{":
            if depth == 0:
                start = m.start()
            depth += 1
        elif t == "}" and depth:
            depth -= 1
            if depth == 0:
                out.append(line[start:m.end()])
        elif depth == 0:
            out.append(t)
    if depth:
        out.append(line[start:] + " }")
    return out


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes and braces (set elements may carry `comment "a, b"`)."""
    parts: list[str] = []
    depth = 0
    cur = 0
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[cur:i])
            cur = i + 1
    parts.append(text[cur:])
    return parts


def _type(text: str, typeof: bool) -> Any:
    """`ipv4_addr . inet_service` → ("ipv4_addr", "inet_service"); a `typeof` expression → its type."""
    fields = [f.strip() for f in text.split(" . ")]
    if typeof:
        fields = [TYPEOF.get(f, f) for f in fields]
    return fields[0] if len(fields) == 1 else tuple(fields)


def _prio(words: list[str], family: str) -> Any:
    """`filter`, `dstnat - 10`, `-110`, `mangle + 1` → the number nft -j reports."""
    names = BRIDGE_PRIORITIES if family == "bridge" else PRIORITIES
    if not words:
        return None
    if _INT.match(words[0]):
        base = int(words[0])
    elif words[0] in names:
        base = names[words[0]]
    else:
        return " ".join(words)
    if len(words) == 3 and words[1] in "+-" and words[2].isdecimal():
        base += int(words[2]) if words[1] == "+" else -int(words[2])
    return base


def _base_chain(body: dict[str, Any], line: str, w: Warnings, no: int) -> None:
    """`type filter hook input [device "lo"] priority filter; policy accept;`"""
    for part in line.split(";"):
        words = part.split()
        if not words:
            continue
        if words[0] == "policy" and len(words) > 1:
            body["policy"] = words[1]
            continue
        if words[0] != "type":
            continue
        try:
            body["type"] = words[1]
            body["hook"] = words[words.index("hook") + 1]
        except (IndexError, ValueError):
            w.add(f"bad base chain line {line[:60]!r}", no)
            return
        if "priority" in words:
            body["prio"] = _prio(words[words.index("priority") + 1:], body["family"])


def _field(value: str) -> str:
    """A concatenated key's first field as the JSON parser renders it (graph.imap_elements compares them)."""
    v = value.strip()
    m = _PREFIX.match(v)
    if m:
        return json.dumps({"prefix": {"addr": m.group(1), "len": int(m.group(2))}}, sort_keys=True)
    if "-" in v and not v.startswith("-"):
        lo, _, hi = v.partition("-")
        if lo and hi:
            return json.dumps({"range": [_scalar(lo), _scalar(hi)]}, sort_keys=True)
    if _INT.match(v):
        return json.dumps(int(v))
    return _unquote(v)


def _scalar(v: str) -> Any:
    return int(v) if _INT.match(v) else _unquote(v)


def _element_key(elem: str) -> str:
    """The key of one element, without its `: data` and attributes (timeout, counter, comment)."""
    key = elem.split(" : ", 1)[0]
    words = key.split()
    for i, t in enumerate(words):
        if t in ("timeout", "expires", "counter", "comment"):
            return " ".join(words[:i])
    return key.strip()


def _set(body: dict[str, Any]) -> NftSet:
    targets: list[str] = []
    first: dict[str, int] = {}
    target_first: list[tuple[str, str]] = []
    for elem in body["elements"]:
        key = _element_key(elem)
        f0 = _field(key.split(" . ", 1)[0]) if " . " in key else None
        if f0 is not None:
            first[f0] = first.get(f0, 0) + 1
        _, sep, data = elem.partition(" : ")
        if sep:
            words = data.split()
            if len(words) >= 2 and words[0] in ("jump", "goto"):
                t = _unquote(words[1])
                if t not in targets:
                    targets.append(t)
                if f0 is not None:
                    target_first.append((t, f0))
    return NftSet(body["family"], body["table"], body["name"], body["kind"], body["type"], len(body["elements"]),
                  body["size"], body["flags"], body["map"], tuple(targets), tuple(sorted(first.items())),
                  tuple(target_first))


# --- rules --------------------------------------------------------------------------------------

def _skip_to_statement(toks: list[str], j: int) -> int:
    n = len(toks)
    while j < n and not (toks[j] in STATEMENT_WORDS and toks[j - 1] not in VALUE_AFTER):
        j += 1
    return j


def _rule(ck: tuple[str, str, str], pos: int, handle: int | None, toks: list[str], sets: dict, counters: dict,
          w: Warnings, no: int) -> NftRule:
    fam, table, chain = ck
    verdict, targets, lookups = "continue", [], []
    packets = nbytes = None
    before = seen = terminal_in_map = False
    comment = None
    n = len(toks)
    i = 0
    while i < n:
        t = toks[i]
        if i and toks[i - 1] in VALUE_AFTER:
            i += 1
            continue
        if t in SELECTORS:
            if t == "ct" and i + 1 < n and toks[i + 1] == "count":
                i += 4 if i + 2 < n and toks[i + 2] == "over" else 3
                continue
            j = i + 1
            is_set = False
            while j < n:
                u = toks[j]
                if toks[j - 1] in VALUE_AFTER:
                    j += 1
                    continue
                if u == "set":
                    is_set = True
                    break
                if u in STATEMENT_WORDS or (u in SELECTORS and toks[j - 1] not in PREFIXES):
                    break
                j += 1
            if is_set:
                i = _skip_to_statement(toks, j + 1)
                continue
            seen = True
            lookups += [x[1:] for x in toks[i:j] if x[0] == "@"]
            i = j
            continue
        if t == "counter":
            if i + 4 < n and toks[i + 1] == "packets" and toks[i + 3] == "bytes":
                if toks[i + 2].isdecimal() and toks[i + 4].isdecimal():
                    packets, nbytes, before = int(toks[i + 2]), int(toks[i + 4]), not seen
                else:
                    w.add(f"rule {pos} in {chain!r}: bad counter {toks[i + 2][:20]!r}", no)
                i += 5
            elif i + 2 < n and toks[i + 1] == "name":
                c = counters.get((fam, table, _unquote(toks[i + 2])))
                if c is not None:
                    packets, nbytes, before = c.packets, c.bytes, not seen
                i += 3
            else:
                i += 1
        elif t == "comment" and i + 1 < n:
            comment = _unquote(toks[i + 1])
            i += 2
        elif t in ("accept", "drop"):
            verdict = "terminal"
            i += 1
        elif t in TERMINAL_WORDS:
            verdict = "terminal"
            i = i + 1
            while i < n and toks[i] != "comment":
                i += 1
        elif t == "return":
            verdict = "return"
            i += 1
        elif t in ("jump", "goto") and i + 1 < n:
            verdict, targets = t, [_unquote(toks[i + 1])]
            i += 2
        elif t == "vmap" and i + 1 < n:
            seen = True
            data = toks[i + 1]
            verdict = "dispatch"
            if data[0] == "@":
                lookups.append(data[1:])
                s = sets.get((fam, table, data[1:]))
                if s is not None:
                    targets += [x for x in s.verdict_targets if x not in targets]
                    terminal_in_map = s.size > len(s.verdict_targets)
            elif data[0] == "{":
                for elem in _split_top(data[1:-1], ","):
                    words = elem.partition(" : ")[2].split()
                    if len(words) >= 2 and words[0] in ("jump", "goto"):
                        x = _unquote(words[1])
                        if x not in targets:
                            targets.append(x)
                    elif words:
                        terminal_in_map = True
            i += 2
        elif t == "log":
            i += 1
            while i + 1 < n and toks[i] in LOG_OPTIONS:
                i += 3 if toks[i] == "flags" and toks[i + 1] in ("tcp", "ip") else 2
        elif t == "limit":
            i = _skip_limit(toks, i + 1)
        elif t == "xt" and i + 2 < n:
            kind, name = toks[i + 1], _unquote(toks[i + 2])
            seen, verdict = _xt(kind == "target", name, seen, verdict)
            i += 3
        elif t == "#":
            if i + 1 < n and toks[i + 1].startswith("xt_"):
                name = toks[i + 1][3:]
                seen, verdict = _xt(name[:1].isupper(), name, seen, verdict)
                i += 2
            else:
                break      # a comment to the end of the line
        elif t in ("add", "update", "delete") and i + 1 < n and toks[i + 1][:1] == "@":
            i += 3 if i + 2 < n and toks[i + 2][:1] == "{" else 2
        elif t in ("dup", "fwd", "quota", "flow", "meter", "notrack"):
            i = _skip_to_statement(toks, i + 1)
        else:
            i += 1
    return NftRule(fam, table, chain, handle, pos, verdict, tuple(targets), packets, nbytes, before, not seen,
                   tuple(lookups), terminal_in_map, comment)


def _xt(is_target: bool, name: str, seen: bool, verdict: str) -> tuple[bool, str]:
    """An xtables extension iptables-nft could not translate: a target ends the rule if it is a
    terminal target; a match (other than comment, which matches every packet) is a match."""
    if is_target:
        return seen, "terminal" if name in TERMINAL_TARGETS else verdict
    return seen or name != "comment", verdict


def _skip_limit(toks: list[str], i: int) -> int:
    """Past `rate [over] 10/second [burst 5 packets]` or `rate 1 mbytes/second` or `name "x"`."""
    n = len(toks)
    if i < n and toks[i] == "name":
        return i + 2
    if i < n and toks[i] == "rate":
        i += 1
    if i < n and toks[i] in ("over", "until"):
        i += 1
    if i < n:
        i += 1 if "/" in toks[i] else 2
    if i < n and toks[i] == "burst":
        i += 3
    return i

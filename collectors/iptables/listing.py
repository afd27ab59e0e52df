"""Pure parser for `iptables -L` listings: `-L -n -v`, `-x`, `--line-numbers`, `-t TABLE`, ip6tables, iptables-nft.

People paste `iptables -L -n -v` far more often than `iptables-save -c`, so it is read into the same
Chain/Rule records as the save parser and feeds the same jump graph and cost model. What -L cannot
give is said, not guessed:
- the rule spec: -L prints columns and each match's own summary, not the options; `spec` is rebuilt
  in save-like form (`-p tcp -i eth0 -s 10.0.0.0/8 -m comment --comment "x" tcp dpt:22 -j ACCEPT`),
  readable and stable, but not restorable;
- the table: -L never names it; a `# Table: nat` / `*nat` line or a prompt running `-t nat` does,
  otherwise it is guessed from the chains (as for a headerless save) and the warning says so;
- counters: without -x they are rounded to K/M/G/T (`Ruleset.approximate`); without -v there are
  none (`Ruleset.rule_counters` False, policies not counted).
Columns are found by their shape, not their position: a long target or protocol name shifts the
rest of the line (`ipencap--`), a rule without a target leaves its column blank, and old ip6tables
prints no `opt` field. Every line that is skipped gets a (capped) warning.
"""

from __future__ import annotations

import dataclasses
import re

from cnitrace.collectors.base import Warnings
from cnitrace.collectors.iptables.parse import (Chain, Rule, Ruleset, detect_family, guess_table, is_fence,
                                                maybe_noise, prompt_command, unfence)

_CHAIN = re.compile(r"^Chain (\S+) \((?:policy (\S+)(?: (\S+) packets, (\S+) bytes)?|(\d+) references?)\)\s*$")
_TABLE_MARK = re.compile(r"^(?:#+\s*)?table:?\s+([A-Za-z_][\w-]*)\s*$|^\*([A-Za-z_][\w-]*)$", re.I)
_COMMENT = re.compile(r"/\* (.*?) \*/")
_SUFFIX = {"K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4, "P": 1000 ** 5}
_OPTS = frozenset({"--", "-f", "!f", "!-"})
ANY = frozenset({"*", "any", "0.0.0.0/0", "::/0", "anywhere"})
PROTOCOLS = frozenset({"all", "tcp", "udp", "udplite", "icmp", "icmpv6", "ipv6-icmp", "esp", "ah", "sctp", "mh",
                       "gre", "ipencap", "ipv6", "igmp", "ospf", "vrrp", "dccp", "pim", "l2tp", "encap"})
ROUNDED = "counters are rounded (listed without -x): values with a K/M/G/T suffix are approximate"


@dataclasses.dataclass
class _Block:
    """One `Chain ...` block as read, before its table is known."""

    name: str
    policy: str | None
    packets: int
    bytes: int
    counted: bool
    family: str
    # (packets, bytes, counted, target, goto, spec, comment) per rule line
    rows: list[tuple[int, int, bool, str | None, bool, str, str | None]] = dataclasses.field(default_factory=list)


def parse_listing(text: str, family: str | None = "ipv4") -> tuple[Ruleset, tuple[str, ...]]:
    """Parse one or more `iptables -L [-n] [-v] [-x] [--line-numbers]` listings into a Ruleset.

    Records are in listing order; `family=None` reads it from the text (IPv6 addresses, a prompt
    running ip6tables). Several tables may be concatenated: a table line or prompt, or a chain name
    seen again, starts the next one."""
    w = Warnings()
    if not isinstance(text, str):
        w.add(f"expected text, got {type(text).__name__}")
        return Ruleset((), (), rule_counters=False), w.freeze()
    auto = family is None
    fam = detect_family(text) if auto else family
    segments: list[list[_Block]] = [[]]
    names: set[str] = set()                  # chain names of the current segment
    marked: list[str | None] = [None]
    cur: _Block | None = None
    header: tuple[bool, bool, bool, bool] | None = None   # num, counts, in/out, opt columns
    rounded = False
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or (no == 1 and line.startswith("# provenance:")):
            continue
        if line[0] in "`~":
            line = unfence(line)
            if is_fence(line):
                continue
        if line.startswith("Chain "):
            m = _CHAIN.match(line)
            if m is None:
                w.add(f"unreadable chain line {line[:60]!r}", no)
                cur, header = None, None
                continue
            name, pol, pk, by, _refs = m.groups()
            packets = nbytes = 0
            counted = pk is not None
            if counted:
                packets, r1, ok1 = _count(pk)
                nbytes, r2, ok2 = _count(by[:-1] if by.endswith("B") and by[:-1][-1:].isalpha() else by)
                rounded |= r1 or r2
                if not (ok1 and ok2):
                    w.add(f"bad policy counters in {line[:60]!r}", no)
                    counted = False
            if name in names or not segments[-1]:
                if segments[-1]:
                    segments.append([])      # the same chain again: the next table's listing
                    marked.append(None)
                names = set()
            names.add(name)
            cur = _Block(name, pol, packets, nbytes, counted or pol is None, fam)
            segments[-1].append(cur)
            header = None
            continue
        tm = _TABLE_MARK.match(line)
        if tm is not None and not line.startswith(("pkts", "target", "num")):
            _new_segment(segments, marked, (tm.group(1) or tm.group(2)).lower())
            cur = None
            continue
        first = line.split(None, 1)[0]
        if first in ("pkts", "target", "num") and ("target" in line and "source" in line):
            toks = line.split()
            header = (toks[0] == "num", "pkts" in toks, "in" in toks and "out" in toks, "opt" in toks)
            continue
        kind = maybe_noise(line)
        if kind is not None:
            if kind == "truncated":
                w.add(f"listing truncated at line {no}")
            elif kind == "prompt":
                cmd = prompt_command(line) or ""
                listed = _listed_table(cmd)
                if listed is not None:
                    _new_segment(segments, marked, listed)
                if auto and "ip6tables" in cmd:
                    fam = "ipv6"
                elif auto and "iptables" in cmd:
                    fam = "ipv4"
            continue
        if cur is None or header is None:
            w.add(f"rule line outside any chain ignored: {line[:60]!r}" if cur is None
                  else f"rule line before its column header ignored: {line[:60]!r}", no)
            continue
        row = _row(line, header, w, no)
        if row is not None:
            rounded |= row[0]
            cur.rows.append(row[1:])
    ruleset = _records(segments, marked, w, rounded)
    if rounded:
        w.add(ROUNDED)
    if ruleset.rules and not ruleset.rule_counters:
        w.add("rules carry no counters (listed without -v): per-rule packet counts are unknown")
    return ruleset, w.freeze()


def _listed_table(cmd: str) -> str | None:
    """The table a prompt's `iptables -L` command lists (`-t nat`, `-tnat`, `--table=nat`; filter by
    default), None when the command is not a listing."""
    toks = cmd.split()
    if not any("tables" in t for t in toks):
        return None
    if not any(t == "--list" or (t.startswith("-") and not t.startswith("--") and "L" in t) for t in toks):
        return None
    for i, t in enumerate(toks):
        if t in ("-t", "--table") and i + 1 < len(toks):
            return toks[i + 1]
        if t.startswith("--table="):
            return t[8:]
        if t.startswith("-t") and len(t) > 2 and not t.startswith("--"):
            return t[2:]
    return "filter"


def _new_segment(segments: list[list[_Block]], marked: list[str | None], table: str) -> None:
    if segments[-1] or marked[-1] is not None:
        segments.append([])
        marked.append(table)
    else:
        marked[-1] = table


def _count(tok: str) -> tuple[int, bool, bool]:
    """(value, rounded, ok) of one -L counter: `123`, or `535K` (K/M/G/T: multiples of 1000, rounded)."""
    if tok.isdecimal() and tok.isascii():
        return int(tok), False, True
    mult = _SUFFIX.get(tok[-1:])
    if mult and tok[:-1].isdecimal() and tok[:-1].isascii():
        return int(tok[:-1]) * mult, True, True
    return 0, False, False


def _is_protocol(tok: str) -> bool:
    t = tok.lstrip("!")
    return t in PROTOCOLS or (t.isdecimal() and t.isascii())


def _row(line: str, header: tuple[bool, bool, bool, bool], w: Warnings, no: int
         ) -> tuple[bool, int, int, bool, str | None, bool, str, str | None] | None:
    """(rounded, packets, bytes, counted, target, goto, spec, comment) of one rule line, or None (warned)."""
    has_num, has_counts, has_io, has_opt = header
    toks = line.split()
    i = 0
    if has_num:
        if not toks[0].isdecimal():
            w.add(f"rule line without its number: {line[:60]!r}", no)
            return None
        i = 1
    packets = nbytes = 0
    rounded = False
    if has_counts:
        if len(toks) < i + 2:
            w.add(f"short rule line {line[:60]!r}", no)
            return None
        packets, r1, ok1 = _count(toks[i])
        nbytes, r2, ok2 = _count(toks[i + 1])
        if not (ok1 and ok2):
            w.add(f"bad counters in {line[:60]!r}", no)
            return None
        rounded = r1 or r2
        i += 2
    rem = toks[i:]
    target, prot, opt, j = _target_prot_opt(rem, has_opt)
    if prot is None:
        w.add(f"no protocol column in {line[:60]!r}", no)
        return None
    j += i
    need = 4 if has_io else 2
    if len(toks) < j + need:
        w.add(f"short rule line {line[:60]!r}", no)
        return None
    iface_in, iface_out = (toks[j], toks[j + 1]) if has_io else ("*", "*")
    if has_io:
        j += 2
    src, dst = toks[j], toks[j + 1]
    rest = " ".join(toks[j + 2:])
    goto = rest.startswith("[goto]")
    if goto:
        rest = rest[6:].lstrip()
    comments = _COMMENT.findall(rest)
    if comments:
        rest = " ".join(_COMMENT.sub("", rest).split())
    spec = _spec(prot, opt, iface_in, iface_out, src, dst, comments, rest, target, goto)
    return rounded, packets, nbytes, has_counts, target, goto, spec, (comments[-1] if comments else None)


def _target_prot_opt(rem: list[str], has_opt: bool) -> tuple[str | None, str | None, str, int]:
    """(target, protocol, opt, tokens used): the target column may be blank, and a protocol name of
    five or more characters runs into the opt field (`ipencap--`); old ip6tables has no opt field."""
    n = len(rem)
    if has_opt:
        if n > 1 and rem[1] in _OPTS:
            return None, rem[0], rem[1], 2
        if n > 2 and rem[2] in _OPTS:
            return rem[0], rem[1], rem[2], 3
        if n > 1 and len(rem[1]) > 2 and rem[1][-2:] in _OPTS:
            return rem[0], rem[1][:-2], rem[1][-2:], 2
        if n > 0 and len(rem[0]) > 2 and rem[0][-2:] in _OPTS:
            return None, rem[0][:-2], rem[0][-2:], 1
    # no opt field: a protocol is the first or second column
    if n > 1 and _is_protocol(rem[1]) and not _is_protocol(rem[0]):
        return rem[0], rem[1], "--", 2
    if n > 0 and _is_protocol(rem[0]):
        if n > 1 and _is_protocol(rem[1]):
            return rem[0], rem[1], "--", 2
        return None, rem[0], "--", 1
    return (rem[0] if n else None), None, "--", 1


PROTOCOL_NAMES = {"0": "all", "1": "icmp", "2": "igmp", "4": "ipencap", "6": "tcp", "17": "udp", "41": "ipv6",
                  "47": "gre", "50": "esp", "51": "ah", "58": "ipv6-icmp", "132": "sctp", "136": "udplite"}


def _neg(flag: str, value: str) -> list[str]:
    return ["!", flag, value[1:]] if value.startswith("!") and len(value) > 1 else [flag, value]


def _spec(prot: str, opt: str, iface_in: str, iface_out: str, src: str, dst: str, comments: list[str], rest: str,
          target: str | None, goto: bool) -> str:
    """The rule in save-like form, so keys are stable and `graph.unconditional` reads it: a rule with
    no column set and only comments is `-m comment --comment "x" -j TARGET`."""
    parts: list[str] = []
    name = PROTOCOL_NAMES.get(prot.lstrip("!"), prot.lstrip("!"))   # -n prints numbers
    if name != "all":
        parts += _neg("-p", ("!" if prot.startswith("!") else "") + name)
    if opt in ("-f", "!f"):
        parts += ["!", "-f"] if opt[0] == "!" else ["-f"]
    for flag, value in (("-i", iface_in), ("-o", iface_out), ("-s", src), ("-d", dst)):
        if value.lstrip("!") not in ANY:
            parts += _neg(flag, value)
    for c in comments:
        parts += ["-m", "comment", "--comment", '"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"']
    if rest:
        parts.append(rest)
    if target:
        parts += ["-g" if goto else "-j", target]
    return " ".join(parts)


def _records(segments: list[list[_Block]], marked: list[str | None], w: Warnings, rounded: bool) -> Ruleset:
    chains: list[Chain] = []
    rules: list[Rule] = []
    all_counted = True
    for blocks, table in zip(segments, marked):
        if not blocks:
            continue
        if table is None:
            synth = []
            for b in blocks:
                synth.append(f":{b.name} {b.policy or '-'} [0:0]")
                synth += [f"-A {b.name} -j {r[3]}" for r in b.rows if r[3]]
            table, why = guess_table(synth)
            w.add(f"the listing does not name its table: assumed the {table} table ({why})")
        seen: dict[tuple[str, str], int] = {}
        for b in blocks:
            chains.append(Chain(b.family, table, b.name, b.policy, b.packets, b.bytes, "", counted=b.counted))
            for pos, (p, by, counted, target, goto, spec, comment) in enumerate(b.rows, 1):
                all_counted &= counted
                nth = seen.get((b.name, spec), 0) + 1
                seen[(b.name, spec)] = nth
                rules.append(Rule(b.family, table, b.name, pos, spec, target, goto, p, by, nth, comment, ""))
    return Ruleset(tuple(chains), tuple(rules), rule_counters=all_counted, approximate=rounded)

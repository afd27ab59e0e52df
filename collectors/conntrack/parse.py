"""Pure parsers for conntrack: statistics (/proc/net/stat/nf_conntrack, `conntrack -S`) and the table
(`conntrack -L`, /proc/net/nf_conntrack).

Both report per-CPU counters for one network namespace; procfs is hex with a header whose
columns changed across kernels, `conntrack -S` is key=value with its own names. Counters are
normalised to the `conntrack -S` names so the two sources compare directly.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance
from cnitrace.collectors.pasted import paste_lines

# procfs column -> conntrack -S name (same kernel counter)
_PROC_ALIASES = {"clashres": "clash_resolve", "chainlength": "chaintoolong", "icmp_error": "error"}
# Pressure-relevant counters (what the 200-client finding is about).
PRESSURE = ("insert_failed", "drop", "early_drop", "search_restart")


@dataclasses.dataclass(frozen=True)
class CpuStats:
    """One CPU's conntrack counters in one namespace ('' = the host namespace)."""

    netns: str
    cpu: int
    values: Mapping[str, int]
    source: str  # "procfs" or "conntrack -S"
    # Values not under a counter name this tool knows: unnamed fields printed by conntrack-tools
    # older than the kernel ('(null)=N', kept in order as unknown_1, unknown_2 ...), repeats, the
    # 'entries' gauge. Reported, never differenced: their meaning is not known for certain.
    extra: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return ("cpu", self.netns, self.cpu, self.source)

    @property
    def counters(self) -> Mapping[str, int]:
        return self.values


@dataclasses.dataclass(frozen=True)
class TableUsage:
    """Entries in use vs the table limit: a gauge (reported, never differenced)."""

    netns: str
    count: int
    max: int | None

    @property
    def key(self) -> tuple:
        return ("table", self.netns)

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    @property
    def pressure(self) -> float | None:
        return self.count / self.max if self.max else None


def parse_proc_stat(text: str, netns: str = "") -> tuple[Parsed[CpuStats], int | None]:
    """Parse /proc/net/stat/nf_conntrack. Returns per-CPU stats and the 'entries' count
    (the namespace's current number of connections, repeated on every CPU row)."""
    text = strip_provenance(text)
    w = Warnings()
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        w.add("empty /proc/net/stat/nf_conntrack")
        return Parsed((), w.freeze()), None
    header = [_PROC_ALIASES.get(h, h) for h in lines[0].split()]
    if not header or header[0] != "entries":
        w.add(f"unexpected header: {lines[0][:120]}")
        return Parsed((), w.freeze()), None
    out: list[CpuStats] = []
    entries: int | None = None
    for cpu, line in enumerate(lines[1:]):
        cols = line.split()
        if len(cols) != len(header):
            w.add(f"row {cpu}: {len(cols)} columns, header has {len(header)}", cpu + 2)
            cols = cols[: len(header)]
        try:
            vals = {h: int(c, 16) for h, c in zip(header, cols)}
        except ValueError as exc:
            w.add(f"row {cpu}: {exc}", cpu + 2)
            continue
        entries = vals.pop("entries", entries)
        out.append(CpuStats(netns, cpu, vals, "procfs"))
    return Parsed(tuple(out), w.freeze()), entries


_CPU = re.compile(r"^cpu=(\d+)\s+(.*)$")
_VERTICAL = re.compile(r"^([a-z_]+)\s+(\d+)\s*$")           # the /proc fallback: 'name<TAB><TAB>value'
_UNKNOWN = re.compile(r"^(?:\(null\)|unknown(\d+))$")      # unnamed: old tool '(null)', 1.4.7+ 'unknownN'
_TOOL_LINE = re.compile(r"\(conntrack-tools\)|^mnl_socket_open:|^CPU\s+Found\b|^-{3,}(?:\s+-+)*$")


def _fields(body: str, cpu: str, no: int, w: Warnings, tally: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """key=value tokens -> (named counters, extra). Unnamed fields keep their order as unknown_1,
    unknown_2 ...; a repeated name keeps every value (name_2 ...): no value is ever dropped."""
    vals: dict[str, int] = {}
    extra: dict[str, int] = {}
    unnamed = 0
    for tok in body.split():
        k, eq, v = tok.partition("=")
        if tok in ("...", "…"):
            tally["truncated"] += 1
            continue
        if not (eq and v.isascii() and v.isdigit()):
            w.add(f"cpu {cpu}: bad field {tok[:40]!r}", no)
            continue
        u = _UNKNOWN.match(k)
        if u:
            unnamed += 1
            extra[f"unknown_{u.group(1) or unnamed}"] = int(v)
            continue
        k = _PROC_ALIASES.get(k, k)
        if k in vals:
            n = 2
            while f"{k}_{n}" in extra:
                n += 1
            extra[f"{k}_{n}"] = int(v)
            tally["repeated"] += 1
        else:
            vals[k] = int(v)
    tally["unnamed"] = max(tally["unnamed"], unnamed)
    return vals, extra


def parse_conntrack_S(text: str, netns: str = "") -> Parsed[CpuStats]:
    """Parse `conntrack -S` / `conntrack -S expect`: one 'cpu=N key=value ...' line per CPU.

    Also what older tools and pastes look like: '(null)=N' fields (conntrack-tools older than
    the kernel; kept as unknown_1, unknown_2 ... in `extra`), 'unknownN=' (newer tools), the
    /proc fallback of conntrack-tools without ctnetlink stats ('name value' lines: CPU 0 only),
    key=value rows without 'cpu=' (numbered in order), tables and prompts around them.
    """
    w = Warnings()
    out: list[CpuStats] = []
    tally = {"unnamed": 0, "repeated": 0, "truncated": 0}
    vertical: dict[str, int] = {}
    no_cpu = 0
    for no, s in paste_lines(text):
        if _TOOL_LINE.search(s):
            continue
        m = _CPU.match(s)
        if m:
            vals, extra = _fields(m.group(2), m.group(1), no, w, tally)
            out.append(CpuStats(netns, int(m.group(1)), vals, "conntrack -S", extra))
            continue
        v = _VERTICAL.match(s)
        if v:
            vertical[_PROC_ALIASES.get(v.group(1), v.group(1))] = int(v.group(2))
            continue
        if "=" in s and all("=" in t or t in ("...", "…") for t in s.split()):
            vals, extra = _fields(s, "?", no, w, tally)
            if "entries" in vals:
                extra["entries"] = vals.pop("entries")
            out.append(CpuStats(netns, no_cpu, vals, "conntrack -S", extra))
            no_cpu += 1
            continue
        w.add(f"unrecognised line: {s[:120]}", no)
    if vertical:
        extra = {"entries": vertical.pop("entries")} if "entries" in vertical else {}
        out.append(CpuStats(netns, 0, vertical, "conntrack -S", extra))
        w.add("conntrack -S printed /proc/net/stat/nf_conntrack's first row ('name value' lines): "
              "CPU 0's counters only, not the node's")
    if no_cpu:
        w.add(f"{no_cpu} statistics row(s) without 'cpu=': numbered in the order printed")
    if tally["unnamed"]:
        w.add(f"{tally['unnamed']} unnamed field(s) per CPU ('(null)=' or 'unknownN=': conntrack-tools "
              f"older than the kernel), kept as unknown_1..unknown_{tally['unnamed']}")
    if tally["repeated"]:
        w.add(f"{tally['repeated']} repeated field name(s): later values kept as NAME_2 ...")
    if tally["truncated"]:
        w.add(f"{tally['truncated']} row(s) truncated with '...': counters after the cut are missing")
    return Parsed(tuple(out), w.freeze())


# --- connection table (conntrack -L, /proc/net/nf_conntrack) ----------------------------------

PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6",
               132: "sctp", 136: "udplite"}


@dataclasses.dataclass(frozen=True)
class CtTuple:
    """One direction of a connection. `other` holds the protocol's remaining tuple fields
    (ICMP type/code/id, GRE keys); packets/bytes are None unless accounting is on."""

    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    packets: int | None = None
    bytes: int | None = None
    other: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Conn:
    """One conntrack entry: its original and reply tuples, state, flags and metadata."""

    netns: str
    proto: str                    # 'tcp', 'udp', 'icmp' ... (from the protocol number when both are printed)
    protonum: int
    orig: CtTuple
    reply: CtTuple | None
    timeout: int | None = None    # seconds left; None for offloaded entries, which print none
    state: str | None = None      # TCP/SCTP/DCCP state; None for stateless protocols
    flags: tuple[str, ...] = ()   # ASSURED, UNREPLIED, OFFLOAD, HW_OFFLOAD ...
    mark: int | None = None
    zone: int | None = None
    use: int | None = None
    family: str = ""              # 'ipv4'/'ipv6' in the extended and procfs formats
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)  # id, secctx, labels, event ...

    @property
    def key(self) -> tuple:
        o = self.orig
        return ("conn", self.netns, self.proto, o.src, o.dst, o.sport, o.dport, self.zone)

    @property
    def counters(self) -> Mapping[str, int]:
        out = {}
        for side, t in (("orig", self.orig), ("reply", self.reply)):
            if t is not None and t.packets is not None:
                out[f"{side}_packets"] = t.packets
                out[f"{side}_bytes"] = t.bytes or 0
        return out

    @property
    def assured(self) -> bool:
        return "ASSURED" in self.flags

    @property
    def unreplied(self) -> bool:
        return "UNREPLIED" in self.flags


_EVENT = re.compile(r"^\s*\[(NEW|UPDATE|DESTROY)\]\s+")
_STAMP = re.compile(r"^\s*\[\d+(?:\.\d+)?\]\s+")
_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes",
               "srckey", "dstkey", "version", "zone-orig", "zone-reply"}
_GLOBAL_INT = {"mark", "zone", "use"}


def _conn_line(s: str, netns: str) -> tuple[Conn | None, str | None]:
    """One entry -> (Conn, None) or (None, why not)."""
    extra: dict[str, str] = {}
    if (e := _EVENT.match(s)):
        extra["event"] = e.group(1)
        s = s[e.end():]
    if (t := _STAMP.match(s)):
        s = s[t.end():]
    toks = s.split()
    family = ""
    if len(toks) > 2 and toks[0] in ("ipv4", "ipv6") and toks[1].isdigit():
        family, toks = toks[0], toks[2:]
    if len(toks) < 3 or not (toks[1].isascii() and toks[1].isdigit()) or "=" in toks[0]:
        return None, "not a conntrack entry"
    name, protonum, i = toks[0], int(toks[1]), 2
    proto = PROTO_NAMES.get(protonum, name) if name not in PROTO_NAMES.values() else name
    timeout = state = None
    if i < len(toks) and toks[i].isascii() and toks[i].isdigit():
        timeout, i = int(toks[i]), i + 1
    if i < len(toks) and "=" not in toks[i] and not toks[i].startswith("["):
        state, i = toks[i], i + 1
    tuples: list[dict[str, str]] = []
    flags: list[str] = []
    glob: dict[str, int] = {}
    rest = toks[i:]
    truncated = bool(rest) and rest[-1].endswith(("...", "…"))
    if truncated:  # a paste cut short: the token before the marker may be cut too
        rest = rest[:-1] if rest[-1] in ("...", "…") else [*rest[:-1], rest[-1].rstrip(".…")]
        if rest and "[" not in rest[-1] and (rest[-1].count("=") != 1 or rest[-1].endswith("=")):
            rest = rest[:-1]
    for tok in rest:
        if tok.startswith("[") and tok.endswith("]"):
            flags.append(tok[1:-1])
            continue
        k, eq, v = tok.partition("=")
        if not eq:
            return None, f"unexpected token {tok[:30]!r}"
        if k == "src" and not glob:
            tuples.append({})
        if k in _TUPLE_KEYS and tuples and not glob and k not in tuples[-1]:
            tuples[-1][k] = v
        elif k in _GLOBAL_INT and v.isascii() and v.isdigit():
            glob[k] = int(v)
        else:
            extra[k if k not in extra else f"{k}_2"] = v
    if not tuples or "dst" not in tuples[0]:
        return None, "no src=/dst= tuple"
    try:
        ct = [_tuple(t) for t in tuples[:2]]
    except ValueError as exc:
        return None, str(exc)
    if len(tuples) > 2:
        extra["more_tuples"] = str(len(tuples) - 2)
    if truncated:
        extra["truncated"] = "1"
    return Conn(netns, proto, protonum, ct[0], ct[1] if len(ct) > 1 else None, timeout, state, tuple(flags),
                glob.get("mark"), glob.get("zone"), glob.get("use"), family, extra), None


def _num(v: str | None) -> int | None:
    if v is None:
        return None
    if not (v.isascii() and v.isdigit()):
        raise ValueError(f"not a number: {v[:20]!r}")
    return int(v)


def _tuple(t: dict[str, str]) -> CtTuple:
    rest = {k: v for k, v in t.items() if k not in ("src", "dst", "sport", "dport", "packets", "bytes")}
    return CtTuple(t.get("src", ""), t.get("dst", ""), _num(t.get("sport")), _num(t.get("dport")),
                   _num(t.get("packets")), _num(t.get("bytes")), rest)


def parse_conntrack_L(text: str, netns: str = "") -> Parsed[Conn]:
    """Parse `conntrack -L [-o extended]`, `conntrack -E` events or /proc/net/nf_conntrack.

    A first character lost in a paste ('cp  6 ...') is recovered from the protocol number;
    the tool's own summary line ('... flow entries have been shown.') is not an entry.
    """
    w = Warnings()
    out: list[Conn] = []
    renamed = truncated = 0
    shown: int | None = None
    for no, s in paste_lines(text):
        if "(conntrack-tools)" in s:
            m = _SHOWN.search(s)
            shown = int(m.group(1)) if m else shown
            continue
        c, why = _conn_line(s, netns)
        if c is None:
            w.add(f"unparsed conntrack entry ({why}): {s[:120]}", no)
            continue
        first = s.split()[2 if c.family else 0]
        if first not in PROTO_NAMES.values() and c.proto != first:
            renamed += 1
        truncated += "truncated" in c.extra
        out.append(c)
    if renamed:
        w.add(f"{renamed} entry(ies) with a damaged protocol name: named from the protocol number")
    if truncated:
        w.add(f"{truncated} entry(ies) truncated with '...'")
    if shown is not None and shown > len(out):
        w.add(f"conntrack's own summary says {shown:,} flow entries were shown; this paste lists {len(out):,} "
              "(filtered by grep, or cut): the table is bigger than what is counted here")
    return Parsed(tuple(out), w.freeze())


_SHOWN = re.compile(r"(\d+) flow entries have been shown")


@dataclasses.dataclass(frozen=True)
class ConnSummary:
    """How a table is made up: what a user checks first when it fills up."""

    total: int
    by_proto: Mapping[str, int]
    by_state: Mapping[str, int]      # 'tcp/ESTABLISHED', 'udp' (stateless protocols by name alone)
    assured: int
    unreplied: int
    offloaded: int


def summarize(conns: Iterable[Conn]) -> ConnSummary:
    by_proto: dict[str, int] = {}
    by_state: dict[str, int] = {}
    total = assured = unreplied = offloaded = 0
    for c in conns:
        total += 1
        by_proto[c.proto] = by_proto.get(c.proto, 0) + 1
        k = f"{c.proto}/{c.state}" if c.state else c.proto
        by_state[k] = by_state.get(k, 0) + 1
        assured += c.assured
        unreplied += c.unreplied
        offloaded += any("OFFLOAD" in f for f in c.flags)
    return ConnSummary(total, by_proto, by_state, assured, unreplied, offloaded)


def parse_int_file(text: str) -> int | None:
    s = strip_provenance(text).strip()
    return int(s) if (s.isascii() and s.isdigit()) else None


def totals(stats: tuple[CpuStats, ...] | list[CpuStats]) -> dict[str, int]:
    """Sum the per-CPU counters (what a user compares against the table size)."""
    out: dict[str, int] = {}
    for s in stats:
        for k, v in s.values.items():
            out[k] = out.get(k, 0) + v
    return out

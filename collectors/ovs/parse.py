"""Pure parsers for Open vSwitch dumps: OpenFlow flows, tables, megaflows, datapath and upcall stats.

Counters are read with a fast split because a snapshot of 100,000 flows must take under
2 s and python-ovs' `OFPFlow` costs ~30 us per line (and the python-ovs 3.1 in Debian 12
rejects the info section of real dumps: its decoder is registered as 'n_packet'). The
match/actions structure is parsed with `OFPFlow` on demand (`OfFlow.structured()`), which
is what attribution needs for the few flows it explains. Malformed lines become warnings,
never exceptions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping, NamedTuple

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance
from cnitrace.collectors.pasted import is_fence, prompt_command


def _int(value: str) -> int:
    v = int(value, 0) if value[:2].lower() == "0x" else int(value)
    if v < 0:
        raise ValueError(f"negative counter {value}")
    return v


# --- OpenFlow flows (ovs-ofctl dump-flows) -----------------------------------------------------

class OfFlow(NamedTuple):
    """One OpenFlow flow with its counters. `table` is an int, or a name when dumped with --names.

    `stats` is False for a dump without counters (`--no-stats`, doc excerpts): n_packets/n_bytes
    then read 0 but mean "not reported", so `counters` is empty and attribution skips the flow.
    A NamedTuple rather than a frozen dataclass: equally immutable, and five times cheaper to
    build, which is most of the budget for a 100,000-flow snapshot.
    """

    bridge: str
    table: int | str
    priority: int
    match: str          # the match fields without priority, as OVS printed them ('' = match all)
    actions: str
    n_packets: int
    n_bytes: int
    cookie: int = 0
    duration_s: float | None = None
    stats: bool = True

    @property
    def key(self) -> tuple:
        return ("flow", self.bridge, str(self.table), self.priority, self.match)

    @property
    def counters(self) -> Mapping[str, int]:
        return {"packets": self.n_packets, "bytes": self.n_bytes} if self.stats else {}

    def structured(self, table_ids: Mapping[str, int] | None = None):
        """The flow as python-ovs parses it (ovs.flow.ofp.OFPFlow): match and actions as dicts.

        python-ovs 3.1 only understands numeric tables in actions, so Antrea-style names
        (`goto_table:IngressMetric`) are mapped through `table_ids` (name -> number, from
        dump-tables). Raises ValueError with the reason when the flow cannot be parsed.
        """
        # lazily: python-ovs's flow parser builds its decoder tables at import (slow)
        from ovs.flow.kv import ParseError
        from ovs.flow.ofp import OFPFlow

        actions = self.actions
        if table_ids:
            actions = _TABLE_REF.sub(
                lambda m: m.group(1) + str(table_ids.get(m.group(2), m.group(2))), actions)
        fields = f"priority={self.priority}" + (f",{self.match}" if self.match else "")
        try:
            return OFPFlow(f"{fields} actions={actions}")
        except (ParseError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"python-ovs cannot parse flow: {exc}") from None


_TABLE_REF = re.compile(r"(resubmit\([^,()]*,|goto_table:|table=)([A-Za-z_][\w-]*)")


_INFO_KEYS = {"cookie", "duration", "table", "n_packets", "n_bytes", "idle_age", "hard_age",
              "idle_timeout", "hard_timeout", "importance", "send_flow_rem", "check_overlap",
              "reset_counts", "no_packet_counts", "no_byte_counts", "out_port", "out_group",
              "table_id", "n_offload_packets", "n_offload_bytes"}  # the last three: bridge/dump-flows


def _split_flow(line: str) -> tuple[dict[str, str], str, str]:
    """Split ' cookie=..., table=0, n_packets=1, ..., priority=10,ip actions=...' into parts.

    OVS prints info fields as 'key=value, ' and flags ('reset_counts', 'send_flow_rem') as bare
    words, sometimes without a comma (OpenFlow 1.3+: 'reset_counts idle_age=0,'); the match is
    one comma-separated token without spaces. So: whitespace tokens, info keys and flags out,
    what remains is the match.
    """
    head, sep, actions = line.partition(" actions=")
    if not sep:  # `ovs-appctl bridge/dump-flows` glues it to the match: 'priority=0,actions=NORMAL'
        head, sep, actions = line.partition(",actions=")
    if not sep:
        if line.rstrip().endswith("actions="):  # 'actions=' with nothing after it: drop
            head, actions = line.rstrip()[: -len("actions=")].rstrip(), ""
        else:
            raise ValueError("no 'actions='")
    info: dict[str, str] = {}
    match_parts: list[str] = []
    for tok in head.split():
        tok = tok.rstrip(",")
        k, eq, v = tok.partition("=")
        if k in _INFO_KEYS and "," not in v:
            if match_parts:
                # OVS prints the match after every info field: text before one is a line cut at its
                # start ('e=17, n_packets=0, …' of 'table=17, …'), not a table-0 flow
                raise ValueError(f"{match_parts[0][:20]!r} before the flow's counters (a line cut at its start?)")
            if eq:
                info[k] = v
        elif tok:
            match_parts.append(tok)
    return info, ",".join(match_parts), actions.strip()


def _split_priority(match: str) -> tuple[int, str]:
    fields = match.split(",") if match else []
    prio = 32768  # OpenFlow's default priority when OVS omits it
    rest = []
    for f in fields:
        if f.startswith("priority="):
            prio = _int(f[len("priority="):])
        else:
            rest.append(f)
    return prio, ",".join(rest)


def _fast_flow(raw: str, bridge: str) -> OfFlow | None:
    """The common line shape ('cookie=, duration=, table=, n_packets=, n_bytes=, ... priority=N,match
    actions=...') by plain string slicing: the 100,000-flow path. None means 'use the general split'."""
    head, sep, actions = raw.partition(" actions=")
    info, _, match = head.rpartition(" ")
    parts = info.split(", ", 5)
    if not sep or len(parts) < 5 or not match.startswith("priority="):
        return None
    c, d, t, pk, by = parts[0].lstrip(), parts[1], parts[2], parts[3], parts[4].rstrip(",")
    if not (c.startswith("cookie=0x") and d.startswith("duration=") and d.endswith("s") and t.startswith("table=")
            and pk.startswith("n_packets=") and by.startswith("n_bytes=")):
        return None
    prio, _, m = match[9:].partition(",")
    ts = t[6:]
    try:
        table = int(ts) if ts.isascii() and ts.isdigit() else ts
        return OfFlow(bridge, table, int(prio), m, actions.strip(), int(pk[10:]), int(by[8:]), int(c[7:], 16),
                      float(d[9:-1]))
    except ValueError:
        return None


def _slow_flow(line: str, bridge: str) -> OfFlow:
    """Any flow line; without n_packets (`--no-stats`) it is a flow whose counters were not reported."""
    info, match, actions = _split_flow(_REPLY.sub("", line, count=1))
    table_s = info.get("table", info.get("table_id", "0"))
    if not table_s:
        raise ValueError("empty table=")
    table: int | str = int(table_s) if (table_s.isascii() and table_s.isdigit()) else table_s
    prio, match = _split_priority(match)
    dur = info.get("duration")
    stats = "n_packets" in info or "n_bytes" in info
    return OfFlow(bridge=bridge, table=table, priority=prio, match=match, actions=actions,
                  n_packets=_int(info.get("n_packets", "0")), n_bytes=_int(info.get("n_bytes", "0")),
                  cookie=_int(info["cookie"]) if "cookie" in info else 0,
                  duration_s=float(dur.rstrip("s")) if dur else None, stats=stats)


# 'NXST_FLOW reply (xid=0x4):' / 'OFPST_FLOW reply (OF1.3) (xid=0x2):', alone or glued to the first flow
_REPLY = re.compile(r"^\s*(?:NXST|OFPST)_FLOW reply(?: \([^)]*\))*:\s*")
_ESCAPED_NL = re.compile(r"\\+n(?= cookie=)")
# a command echoed in a paste ('1.#ovs-ofctl dump-flows br-int', 'kubectl exec ... antctl get of')
_COMMAND = re.compile(r"\b(?:ovs-ofctl|ovs-appctl|ovs-dpctl|antctl|kubectl)\b")


def _not_a_flow(line: str) -> bool:
    """Lines a dump or a paste of one carries besides flows: reply headers, fences, prompts, commands."""
    if "actions=" in line and not is_fence(line):
        return False
    return (not line or is_fence(line) or bool(_REPLY.match(line)) or line.startswith("FLOW")
            or prompt_command(line) is not None or bool(_COMMAND.search(line)))


def parse_flow_line(line: str, bridge: str = "") -> OfFlow:
    """One dump-flows line -> OfFlow; raises ValueError when it is not a flow."""
    return _fast_flow(line, bridge) or _slow_flow(line.strip(), bridge)


def parse_dump_flows(text: str, bridge: str = "") -> Parsed[OfFlow]:
    """Parse `ovs-ofctl dump-flows BRIDGE` in any OpenFlow version, with or without `--no-stats`
    and `--names` (also Antrea's `antctl get of` lines, and pastes of either)."""
    text = strip_provenance(text)
    if "n cookie=" in text:   # a dump quoted in a log line: flows joined by an escaped '\\n'
        text = _ESCAPED_NL.sub("\n", text)
    w = Warnings()
    out: list[OfFlow] = []
    append = out.append
    no_stats = 0
    for no, raw in enumerate(text.splitlines(), 1):
        f = _fast_flow(raw, bridge)
        if f is not None:
            append(f)
            continue
        line = raw.strip()
        if _not_a_flow(line):
            continue
        try:
            f = _slow_flow(line, bridge)
        except (ValueError, IndexError) as exc:
            w.add(f"unparsed flow ({exc}): {line[:120]}", no)
            continue
        no_stats += not f.stats
        append(f)
    if no_stats:
        w.add(f"{no_stats} flow(s) without n_packets/n_bytes (--no-stats?): counters not reported, "
              "not zero")
    return Parsed(tuple(out), w.freeze())


# --- per-table stats (ovs-ofctl dump-tables) ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OfTable:
    """A table's lookup/matched counters and, if the controller named it, its name."""

    bridge: str
    table: int
    name: str | None
    active: int
    lookup: int
    matched: int

    @property
    def key(self) -> tuple:
        return ("table", self.bridge, self.table)

    @property
    def counters(self) -> Mapping[str, int]:
        return {"lookup": self.lookup, "matched": self.matched, "active": self.active}


_TABLE_HDR = re.compile(r'^\s*table (\d+)(?: \("([^"]*)"\))?:\s*$')
_TABLE_STATS = re.compile(r"active=(\d+), lookup=(\d+), matched=(\d+)")


_TABLE_DITTO = re.compile(r'^\s*tables? (\d+)(?:\.\.\.(\d+))?(?: \("([^"]*)"\))?: ditto\s*$')


def parse_dump_tables(text: str, bridge: str = "") -> Parsed[OfTable]:
    """Parse `ovs-ofctl dump-tables`. OVS folds a run of tables whose stats and features equal
    the table printed before them into one 'tables 1...3: ditto' line: those tables carry that
    table's counters (non-zero when a pipeline walks every one of them), so each is returned."""
    text = strip_provenance(text)
    w = Warnings()
    out: list[OfTable] = []
    cur: tuple[int, str | None] | None = None
    for no, line in enumerate(text.splitlines(), 1):
        m = _TABLE_HDR.match(line)
        if m:
            cur = (int(m.group(1)), m.group(2))
            continue
        d = _TABLE_DITTO.match(line)
        if d:
            if not out:
                w.add(f"ditto with no table before it: {line.strip()[:120]}", no)
                continue
            prev = out[-1]
            first, last = int(d.group(1)), int(d.group(2) or d.group(1))
            out += [OfTable(bridge, t, d.group(3), prev.active, prev.lookup, prev.matched)
                    for t in range(first, last + 1)]
            continue
        s = _TABLE_STATS.search(line)
        if s and cur is not None:
            out.append(OfTable(bridge, cur[0], cur[1], *(int(x) for x in s.groups())))
            cur = None
        elif "active=" in line:
            w.add(f"unparsed table stats: {line.strip()[:120]}", no)
    return Parsed(tuple(out), w.freeze())


def table_names(tables: Iterable[OfTable]) -> dict[int, str]:
    return {t.table: t.name for t in tables if t.name}


_FEATURE_HDR = re.compile(r'^\s*table (\d+) \("([^"]*)"\):')


def parse_table_feature_names(text: str) -> dict[int, str]:
    """Table names from `ovs-ofctl dump-table-features` (OpenFlow 1.3+ dump-tables omits them)."""
    out: dict[int, str] = {}
    for line in strip_provenance(text).splitlines():
        m = _FEATURE_HDR.match(line)
        if m and m.group(2):
            out[int(m.group(1))] = m.group(2)
    return out


# --- megaflows (ovs-appctl dpctl/dump-flows) ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Megaflow:
    """A datapath (megaflow) cache entry. `mask` is the match with values blanked: flows that
    share it share a subtable, and the subtable count is what a megaflow lookup pays for."""

    datapath: str
    match: str
    actions: str
    packets: int
    bytes: int
    ufid: str | None = None
    dp: str = ""              # 'ovs' or 'tc' (-m): which datapath holds it
    offloaded: bool = False   # 'offloaded:yes': counted by the NIC/TC, never reaches the kernel datapath

    @property
    def key(self) -> tuple:
        return ("megaflow", self.datapath, self.ufid or self.match)

    @property
    def counters(self) -> Mapping[str, int]:
        return {"packets": self.packets, "bytes": self.bytes}

    @property
    def mask(self) -> str:
        return mask_shape(self.match)


_VALUE = re.compile(r"=([^,()/]*)(/[^,()]*)?")
_POSITIONAL = re.compile(r"(\w+)\(([^=(),/*]+)(/[^=(),]*)?\)")


def mask_shape(match: str) -> str:
    """Blank each field's value but keep its mask: 'ipv4(dst=10.0.0.1,frag=no)' ->
    'ipv4(dst=*,frag=*)'; 'src=1.2.3.4/0.0.0.0' keeps '/0.0.0.0' (a wildcarded field)."""
    shape = _VALUE.sub(lambda m: "=*" + (m.group(2) or ""), re.sub(r"^ufid:\S+,?\s*", "", match))
    return _POSITIONAL.sub(lambda m: f"{m.group(1)}(*{m.group(3) or ''})", shape)


def parse_dpctl_dump_flows(text: str, datapath: str = "") -> Parsed[Megaflow]:
    """Parse `ovs-appctl dpctl/dump-flows [-m]` / `ovs-dpctl dump-flows` (also TC-offloaded flows)."""
    text = strip_provenance(text)
    w = Warnings()
    out: list[Megaflow] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("flow-dump from") or ", packets:" not in line and (
                is_fence(line) or prompt_command(line) is not None or _COMMAND.search(line)):
            continue
        try:
            ufid = None
            if line.startswith("ufid:"):
                ufid, _, line = line.partition(", ")
                ufid = ufid[len("ufid:"):]
            match, sep, rest = line.partition(", packets:")
            if not sep:
                raise ValueError("no 'packets:'")
            pk, _, rest = rest.partition(", bytes:")
            by, _, rest = rest.partition(",")
            info, _, actions = rest.partition("actions:")
            actions = actions.split(", dp-extra-info:")[0]
            kv = dict(t.strip().partition(":")[::2] for t in info.split(",") if ":" in t)
            out.append(Megaflow(datapath, match.strip(), actions.strip(), _int(pk.strip()),
                                _int(by.strip()), ufid, kv.get("dp", ""), kv.get("offloaded") == "yes"))
        except ValueError as exc:
            w.add(f"unparsed megaflow ({exc}): {line[:120]}", no)
    return Parsed(tuple(out), w.freeze())


# --- datapath and ports (ovs-appctl dpif/show) --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Datapath:
    """Datapath-wide lookups: hit = served by the megaflow cache, missed = upcall to
    ovs-vswitchd (the slow path), lost = upcalls dropped because the queue was full."""

    name: str
    hit: int
    missed: int
    lost: int = 0
    flows: int | None = None
    masks_hit: int | None = None
    masks_total: int | None = None

    @property
    def key(self) -> tuple:
        return ("datapath", self.name)

    @property
    def counters(self) -> Mapping[str, int]:
        c = {"hit": self.hit, "missed": self.missed, "lost": self.lost}
        if self.masks_hit is not None:
            c["masks_hit"] = self.masks_hit
        return c


@dataclasses.dataclass(frozen=True)
class DpPort:
    """A datapath port. dpif/show knows its bridge and OpenFlow number; dpctl/show only the
    datapath port number, its type and the type's configuration ('packet_type=ptap')."""

    datapath: str
    bridge: str
    name: str
    ofport: int | None
    dp_port: int | None
    type: str
    config: str = ""


_DP_HDR = re.compile(r"^(\S+@\S+?):(.*)$")
_PORT = re.compile(r"^\s+(\S+) (\d+|none)/(\d+|none):\s*\(?([^)]*)\)?")


def _kv_counts(s: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", s)}


def parse_dpif_show(text: str) -> tuple[Parsed[Datapath], tuple[DpPort, ...]]:
    """Parse `ovs-appctl dpif/show`: per-datapath hit/missed(/lost) and the bridge ports."""
    text = strip_provenance(text)
    w = Warnings()
    dps: list[Datapath] = []
    ports: list[DpPort] = []
    dp = bridge = ""
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _DP_HDR.match(line)
        if m and not line.startswith(" "):
            dp = m.group(1)
            c = _kv_counts(m.group(2))
            if "hit" not in c or "missed" not in c:
                w.add(f"datapath line without hit/missed: {line[:120]}", no)
                continue
            dps.append(Datapath(dp, c["hit"], c["missed"], c.get("lost", 0)))
            continue
        p = _PORT.match(line)
        if p and dp:
            of, dpn = p.group(2), p.group(3)
            ports.append(DpPort(dp, bridge, p.group(1), None if of == "none" else int(of),
                                None if dpn == "none" else int(dpn), p.group(4).strip()))
            continue
        s = line.strip()
        if s.endswith(":") and " " not in s:
            bridge = s[:-1]
        elif not s.startswith(("offloaded", "flows")):
            w.add(f"unrecognised dpif/show line: {s[:120]}", no)
    return Parsed(tuple(dps), w.freeze()), tuple(ports)


_DPCTL_HDR = re.compile(r"^([\w.-]+@[\w.-]+):$")
_DPCTL_PORT = re.compile(r"^port (\d+): (\S+)(?: \(([^:)]+)(?::\s*([^)]*))?\))?$")


def _dpctl_show(text: str) -> tuple[list[Datapath], list[DpPort], Warnings]:
    """One pass over `ovs-appctl dpctl/show [-s]` / `ovs-dpctl show`: datapaths and their ports.
    Per-port statistics lines (-s) and the 3.x cache lines are skipped; pasted fences too."""
    w = Warnings()
    dps: list[Datapath] = []
    ports: list[DpPort] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            if "hit" in cur:
                dps.append(Datapath(cur["name"], cur["hit"], cur["missed"], cur.get("lost", 0),
                                    cur.get("flows"), cur.get("masks_hit"), cur.get("masks_total")))
            else:
                w.add(f"datapath {cur['name']} without lookups")

    for no, line in enumerate(strip_provenance(text).splitlines(), 1):
        s = line.strip()
        if (h := _DPCTL_HDR.match(s)):
            flush()
            cur = {"name": h.group(1)}
        elif cur is None:
            continue
        elif s.startswith("lookups:"):
            c = _kv_counts(s)
            if "hit" not in c or "missed" not in c:
                w.add(f"bad lookups line: {s[:120]}", no)
                continue
            cur.update(c)
        elif s.startswith("flows:"):
            digits = re.findall(r"\d+", s)
            if digits:
                cur["flows"] = int(digits[0])
        elif s.startswith("masks:"):
            c = _kv_counts(s)
            cur["masks_hit"], cur["masks_total"] = c.get("hit"), c.get("total")
        elif s.startswith("port "):
            p = _DPCTL_PORT.match(s)
            if p:
                ports.append(DpPort(cur["name"], "", p.group(2), None, int(p.group(1)),
                                    (p.group(3) or "system").strip(), (p.group(4) or "").strip()))
            else:
                w.add(f"unparsed port line: {s[:120]}", no)
    flush()
    return dps, ports, w


def parse_dpctl_show(text: str) -> Parsed[Datapath]:
    """Parse `ovs-appctl dpctl/show`: lookups, flow count and (kernel datapath) mask stats."""
    dps, _, w = _dpctl_show(text)
    return Parsed(tuple(dps), w.freeze())


def parse_dpctl_show_ports(text: str) -> Parsed[DpPort]:
    """The ports `ovs-appctl dpctl/show` / `ovs-dpctl show` list: 'port 2: vxlan_sys_4789 (vxlan:
    packet_type=ptap)' -> DpPort(dp_port=2, type='vxlan', config='packet_type=ptap'); a port
    printed without a type is a plain netdev ('system', as dpif/show calls it)."""
    _, ports, w = _dpctl_show(text)
    return Parsed(tuple(ports), w.freeze())


# --- upcall / revalidator (ovs-appctl upcall/show) ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class UpcallStats:
    """Revalidator state: flows in the datapath now / on average / peak vs the flow limit,
    and how long one dump of all datapath flows took (a slow dump means stale counters)."""

    datapath: str
    flows_current: int
    flows_avg: int
    flows_max: int
    flow_limit: int
    dump_duration_ms: int | None
    revalidator_keys: tuple[int, ...] = ()

    @property
    def key(self) -> tuple:
        return ("upcall", self.datapath)

    @property
    def counters(self) -> Mapping[str, int]:
        return {}  # gauges, not counters: reported, never differenced


_FLOWS = re.compile(r"flows\s*:\s*\(current (\d+)\)\s*\(avg (\d+)\)\s*\(max (\d+)\)\s*\(limit (\d+)\)")


def parse_upcall_show(text: str) -> Parsed[UpcallStats]:
    text = strip_provenance(text)
    w = Warnings()
    out: list[UpcallStats] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            if "flows" in cur:
                out.append(UpcallStats(cur["name"], *cur["flows"], cur.get("dump"), tuple(cur["keys"])))
            else:
                w.add(f"upcall/show for {cur['name']} without a flows line")

    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not line[0].isspace() and s.endswith(":"):
            flush()
            cur = {"name": s[:-1], "keys": []}
            continue
        if cur is None:
            continue
        if (m := _FLOWS.search(s)):
            cur["flows"] = tuple(int(x) for x in m.groups())
        elif s.startswith("dump duration"):
            d = re.search(r"(\d+)\s*ms", s)
            cur["dump"] = int(d.group(1)) if d else None
        elif (k := re.match(r"\d+: \(keys (\d+)\)", s)):
            cur["keys"].append(int(k.group(1)))
        elif not s.startswith(("ufid enabled", "offloaded")):
            w.add(f"unrecognised upcall/show line: {s[:120]}", no)
    flush()
    return Parsed(tuple(out), w.freeze())


# --- coverage counters (ovs-appctl coverage/show) ----------------------------------------------

@dataclasses.dataclass(frozen=True)
class Coverage:
    name: str
    total: int

    @property
    def key(self) -> tuple:
        return ("coverage", self.name)

    @property
    def counters(self) -> Mapping[str, int]:
        return {"total": self.total}


_COVERAGE = re.compile(r"^(\w+)\s+.*total:\s*(\d+)\s*$")


def parse_coverage_show(text: str) -> Parsed[Coverage]:
    text = strip_provenance(text)
    w = Warnings()
    out: list[Coverage] = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("Event coverage") or "events never hit" in s:
            continue
        m = _COVERAGE.match(s)
        if m:
            out.append(Coverage(m.group(1), int(m.group(2))))
        else:
            w.add(f"unrecognised coverage line: {s[:120]}", no)
    return Parsed(tuple(out), w.freeze())


# --- OVSDB interfaces (ovs-vsctl --format=json list Interface) ---------------------------------

@dataclasses.dataclass(frozen=True)
class OvsInterface:
    """An OVSDB Interface row: what links an OpenFlow port number to a pod."""

    name: str
    ofport: int | None
    type: str
    external_ids: Mapping[str, str]

    @property
    def pod(self) -> str | None:
        """'namespace/name' from the CNI's external_ids (Antrea: pod-namespace/pod-name)."""
        e = self.external_ids
        name = e.get("pod-name") or e.get("k8s_pod_name")
        ns = e.get("pod-namespace") or e.get("k8s_pod_namespace")
        if name:
            return f"{ns}/{name}" if ns else name
        return None


def _ovsdb_value(v: Any) -> Any:
    """Decode OVSDB JSON: ["map", [[k, v]...]], ["set", [...]], ["uuid", "..."], atoms."""
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
        tag, body = v
        if tag == "map":
            return {str(k): str(_ovsdb_value(x)) for k, x in body}
        if tag == "set":
            return [_ovsdb_value(x) for x in body]
        if tag in ("uuid", "named-uuid"):
            return body
    return v


def parse_vsctl_interfaces(text: str) -> Parsed[OvsInterface]:
    """Parse `ovs-vsctl --format=json --columns=name,ofport,type,external_ids list Interface`."""
    text = strip_provenance(text)
    w = Warnings()
    try:
        doc = json.loads(text)
        headings = list(doc["headings"])
        rows = list(doc["data"])
    except (ValueError, KeyError, TypeError) as exc:
        w.add(f"not an ovs-vsctl JSON table: {exc}")
        return Parsed((), w.freeze())
    out: list[OvsInterface] = []
    for i, row in enumerate(rows):
        try:
            rec = dict(zip(headings, (_ovsdb_value(v) for v in row)))
            ofport = rec.get("ofport")
            ext = rec.get("external_ids") or {}
            if not isinstance(ext, dict):
                raise ValueError("external_ids is not a map")
            out.append(OvsInterface(
                name=str(rec["name"]),
                ofport=ofport if isinstance(ofport, int) and ofport >= 0 else None,
                type=str(rec.get("type") or "system") if rec.get("type") != "" else "system",
                external_ids=ext,
            ))
        except (KeyError, TypeError, ValueError) as exc:
            w.add(f"interface row {i}: {exc}")
    return Parsed(tuple(out), w.freeze())

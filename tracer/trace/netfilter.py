"""Netfilter hops from `nft monitor trace`: nftables and the iptables nft backend.

Pure parts: `parse_trace(text)` turns `nft -a monitor trace` lines into TraceEvents;
`chain_positions(text)` turns `nft -a list table` into rule handle -> 1-based position (the
iptables rule number for the nft backend); `packets(events)` groups them per traced packet;
`to_hops(...)` makes Hops. I/O: `trace_table(...)` (the cnitrace-owned table that sets
`meta nftrace` for the selected packets only) and `Monitor` (one `nft monitor trace` per netns).

The cnitrace table hooks prerouting and output at priority -350 (before raw, before conntrack),
so the flag is set before any of the CNI's tables sees the packet; the CNI's rules are never touched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from cnitrace.core.records import PREFIX, process_start_time
from cnitrace.trace.hops import Hop

TABLE_PREFIX = f"{PREFIX}-trace"
PRIORITY = -350

_LINE = re.compile(r"^trace id (?P<id>[0-9a-f]+) (?P<family>ip6?|inet|bridge|arp|netdev) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$")
_VERDICT = re.compile(r"\(verdict (?P<verdict>\w+)(?: (?P<target>\S+))?\)\s*$")
_HANDLE = re.compile(r"(?:# )?handle (?P<handle>\d+)\s*$")
_COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')
_PKT_FIELDS = {
    "iif": "iif", "oif": "oif", "ip saddr": "saddr", "ip daddr": "daddr", "ip id": "ip_id", "ip ttl": "ttl",
    "tcp sport": "sport", "tcp dport": "dport", "udp sport": "sport", "udp dport": "dport", "tcp flags": "tcp_flags",
}
_PKT = re.compile(r'(iif|oif|ip saddr|ip daddr|ip id|ip ttl|tcp sport|tcp dport|udp sport|udp dport|tcp flags)'
                  r' (?:== )?("[^"]*"|\([^)]*\)|\S+)')


@dataclasses.dataclass(frozen=True)
class TraceEvent:
    trace_id: str
    family: str
    table: str
    chain: str
    kind: str                    # "packet" | "rule" | "policy" | "return"
    rule: str = ""               # nft rule text as the monitor printed it
    handle: int | None = None
    verdict: str = ""            # accept drop reject continue jump goto return queue ...
    target: str = ""             # jump/goto target chain
    packet: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    line_no: int = 0

    @property
    def comment(self) -> str | None:
        m = _COMMENT.search(self.rule)
        return m.group(1) if m else None


def _packet_fields(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _PKT.findall(text):
        name = _PKT_FIELDS[key]
        value = value.strip('"')
        out[name] = int(value) if value.isdigit() else value
    if "tcp sport" in text or "tcp dport" in text:
        out["proto"] = "tcp"
    elif "udp sport" in text or "udp dport" in text:
        out["proto"] = "udp"
    return out


def parse_trace(text: str, warnings: list[str] | None = None) -> list[TraceEvent]:
    """`nft [-a] monitor trace` text -> events, in order. Lines that are not trace lines (comments,
    warnings) are skipped; a malformed trace line adds a warning."""
    events: list[TraceEvent] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith("trace id "):
            continue
        m = _LINE.match(line)
        if not m:
            if warnings is not None:
                warnings.append(f"line {no}: not a trace line: {line[:80]}")
            continue
        base = dict(trace_id=m["id"], family=m["family"], table=m["table"], chain=m["chain"], line_no=no)
        rest = m["rest"]
        if rest.startswith("packet:"):
            events.append(TraceEvent(kind="packet", packet=_packet_fields(rest[7:]), **base))
        elif rest.startswith("policy "):
            events.append(TraceEvent(kind="policy", verdict=rest.split()[1], **base))
        elif rest.startswith("verdict "):
            events.append(TraceEvent(kind="return", verdict=rest.split()[1], **base))
        elif rest.startswith("rule ") or rest.startswith("unknown rule "):
            v = _VERDICT.search(rest)
            body = rest[: v.start()].rstrip() if v else rest
            body = body[len("rule "):] if body.startswith("rule ") else body[len("unknown rule "):]
            h = _HANDLE.search(body)
            handle = int(h["handle"]) if h else None
            if h:
                body = body[: h.start()].rstrip()
            events.append(TraceEvent(kind="rule", rule=" ".join(body.split()), handle=handle,
                                     verdict=v["verdict"] if v else "", target=(v["target"] or "") if v else "", **base))
        elif warnings is not None:
            warnings.append(f"line {no}: unknown trace line kind: {rest[:60]}")
    return events


@dataclasses.dataclass(frozen=True)
class TracedPacket:
    """One traced packet in one namespace: its events in order and the packet fields first seen."""

    trace_id: str
    netns: str
    packet: Mapping[str, Any]
    events: tuple[TraceEvent, ...]

    @property
    def ip_id(self) -> int | None:
        v = self.packet.get("ip_id")
        return v if isinstance(v, int) else None


def packets(events: Iterable[TraceEvent], netns: str = "") -> list[TracedPacket]:
    """Group events per packet: by trace id, in order of first appearance."""
    groups: dict[str, list[TraceEvent]] = {}
    first: dict[str, Mapping[str, Any]] = {}
    for ev in events:
        groups.setdefault(ev.trace_id, []).append(ev)
        if ev.kind == "packet" and ev.trace_id not in first:
            first[ev.trace_id] = ev.packet
    return [TracedPacket(tid, netns, first.get(tid, {}), tuple(evs)) for tid, evs in groups.items()]


def chain_positions(text: str) -> dict[tuple[str, str, str], dict[int, int]]:
    """`nft -a list table|ruleset` text -> {(family, table, chain): {handle: 1-based position}}."""
    out: dict[tuple[str, str, str], dict[int, int]] = {}
    family = table = chain = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"^table (\S+) (\S+) \{", line):
            family, table, chain, depth = m[1], m[2], None, 1
            continue
        if m := re.match(r"^chain (\S+) \{", line):
            chain = m[1]
            out.setdefault((family, table, chain), {})
            depth = 2
            continue
        if re.match(r"^(set|map|flowtable|counter|quota|limit|ct \w+) \S+ \{", line):
            chain, depth = None, 2
            continue
        if line == "}":
            depth -= 1
            if depth <= 1:
                chain = None
            continue
        if chain and (h := _HANDLE.search(line)) and not line.startswith(("type ", "policy ")):
            positions = out[(family, table, chain)]
            positions[int(h["handle"])] = len(positions) + 1
    return out


def iptables_family(nft_family: str) -> str:
    return {"ip": "ipv4", "ip6": "ipv6"}.get(nft_family, nft_family)


def to_hops(pkt: TracedPacket, *, positions: Mapping[tuple[str, str, str], Mapping[int, int]] | None = None,
            iptables_rules: Mapping[tuple[str, str, int], Any] | None = None, start_order: int = 0) -> list[Hop]:
    """One traced packet -> netfilter hops: a hop per rule that matched and per chain policy applied
    (cnitrace's own trace table is left out). `iptables_rules[(table, chain, position)]` gives the
    iptables rule (collectors.iptables.parse.Rule) for tables the iptables nft backend owns."""
    hops: list[Hop] = []
    order = start_order
    own = next((e for e in pkt.events if e.table.startswith(TABLE_PREFIX) and e.kind == "packet"), None)
    if own is not None:       # where cnitrace's table flagged it: the way into netfilter
        order += 1
        hook = "prerouting" if own.chain == "pre" else "output"
        dev = own.packet.get("iif") or own.packet.get("oif") or ""
        hops.append(Hop(layer="iface", where=f"{pkt.netns or 'host'}/{dev} {hook}".replace("/ ", " "),
                        what=f"flagged for tracing at {hook} priority {PRIORITY} (cnitrace's own table)",
                        order=order, netns=pkt.netns, detail={"trace_id": pkt.trace_id, "hook": hook}))
    for ev in pkt.events:
        if ev.table.startswith(TABLE_PREFIX) or ev.kind == "packet":
            continue
        order += 1
        pos = None
        if ev.handle is not None and positions:
            pos = positions.get((ev.family, ev.table, ev.chain), {}).get(ev.handle)
        ipt = iptables_rules.get((ev.table, ev.chain, pos)) if (iptables_rules and pos) else None
        where = f"{ev.family} {ev.table} {ev.chain}"
        detail: dict[str, Any] = {"nft_verdict": ev.verdict, "trace_id": pkt.trace_id}
        if ev.kind == "rule":
            detail.update(handle=ev.handle, position=pos, nft_rule=ev.rule)
            if ev.target:
                detail["target"] = ev.target
            text = f"-A {ipt.chain} {ipt.spec}" if ipt is not None else ev.rule
            comment = (ipt.comment if ipt is not None else None) or ev.comment
            if comment:
                detail["comment"] = comment
            label = f"rule {pos}" if pos else (f"handle {ev.handle}" if ev.handle is not None else "rule")
            what = f"{label}: {text} -> {ev.verdict}{' ' + ev.target if ev.target else ''}"
            rule = text
        else:
            what, rule = f"{ev.kind} {ev.verdict}", None
            detail["chain_policy"] = ev.kind == "policy"
        hops.append(Hop(layer="netfilter", where=where, what=what, order=order, netns=pkt.netns,
                        rule=rule, detail=detail))
    return hops


# --- I/O ------------------------------------------------------------------------------------

def trace_table(name: str, expr: str, out_expr: str | None = None) -> str:
    """The cnitrace-owned table (nft -f text): flag the selected packets, nothing else.
    `expr` selects in prerouting, `out_expr` (default: the same) in output."""
    out_expr = expr if out_expr is None else out_expr
    return (f"table ip {name} {{\n"
            f"  chain pre {{ type filter hook prerouting priority {PRIORITY}; policy accept; {expr} meta nftrace set 1; }}\n"
            f"  chain out {{ type filter hook output priority {PRIORITY}; policy accept; {out_expr} meta nftrace set 1; }}\n"
            f"}}\n")


class Monitor:
    """`nft -a monitor trace` in one namespace, written to a cnit-named log file; recorded in the
    session as a process (and its log as a path) before the first packet is sent."""

    argv: tuple[str, ...] = ("nft", "-a", "monitor", "trace")
    label = "nft-monitor"

    def __init__(self, session, netns: str | None, log_dir: Path):
        self.session, self.netns = session, netns
        self.log = log_dir / f"{PREFIX}-trace-{os.getpid()}-{self.label}-{(netns or 'host')}.log"
        self.proc = None

    def start(self) -> None:
        self.session.track("path", str(self.log))
        self.proc = self.session.runner.spawn(list(self.argv), netns=self.netns, log=str(self.log))
        self.session.track("process", f"{self.label}:{self.netns or 'host'}", pid=self.proc.pid,
                           start_time=process_start_time(self.proc.pid))
        self.session.on_exit(self.stop)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except Exception:
                self.proc.kill()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 2.0) -> None:
        """nft prints nothing when it is ready: give it a moment to subscribe."""
        time.sleep(min(timeout, 0.4))


class NflogMonitor(Monitor):
    """The nfnetlink_log reader (cnitrace.trace.nflog) for iptables legacy-backend TRACE records."""

    label = "nflog-reader"

    def __init__(self, session, netns: str | None, log_dir: Path):
        import sys
        self.argv = (sys.executable, "-m", "cnitrace.trace.nflog", "600")
        super().__init__(session, netns, log_dir)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"ready"' in self.text():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

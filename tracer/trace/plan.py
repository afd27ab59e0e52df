"""What to trace: `--probe PROTO:DST:PORT` (cnitrace crafts and marks the packets) or
`--match 'PROTO [src A] [dst B] [port P]'` (live packets), parsed into one frozen TraceSpec.

Pure: no I/O. The nft expression that selects the packets is built here, so the marker the
sender sets and the rule that sets `meta nftrace` are defined in one place.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from cnitrace.core.errors import UsageError

PROTOS = ("tcp", "udp")
MAX_COUNT = 100
# Crafted probes carry IP IDs MARK_ID_BASE, MARK_ID_BASE+1, ...: only they match the trace rule
# (the kernel's own replies, RSTs and other traffic carry other IDs), and each packet is told
# apart by its ID in the trace output.
MARK_ID_BASE = 0xC1A0
# Untraced twins of the probes (timed by the bracket probes without the trace's logging) carry
# IP IDs from here: outside the marked range, so the trace rule never flags them.
TWIN_ID_BASE = 0xD1A0


@dataclasses.dataclass(frozen=True)
class TraceSpec:
    mode: str                 # "probe" | "match"
    proto: str                # tcp | udp
    dst: str | None = None
    port: int | None = None
    src: str | None = None
    count: int = 1

    def marker_ids(self) -> tuple[int, ...]:
        return tuple(MARK_ID_BASE + i for i in range(self.count)) if self.mode == "probe" else ()

    def nft_expr(self) -> str:
        """The nft match for the selected packets (without the statement)."""
        parts = []
        if self.src:
            parts.append(f"ip saddr {self.src}")
        if self.dst:
            parts.append(f"ip daddr {self.dst}")
        parts.append(f"meta l4proto {self.proto}")
        if self.port is not None:
            parts.append(f"{self.proto} dport {self.port}")
        if self.mode == "probe":
            lo, hi = MARK_ID_BASE, MARK_ID_BASE + self.count - 1
            parts.append(f"ip id {lo}" if lo == hi else f"ip id {lo}-{hi}")
        return " ".join(parts)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _addr(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UsageError(f"{what}: {value!r} is not an IPv4 address") from None


def _port(value: str, what: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UsageError(f"{what}: {value!r} is not a port (1..65535)")
    return int(value)


def _count(count: int) -> int:
    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count must be 1..{MAX_COUNT}")
    return count


def parse_probe(text: str, count: int = 1) -> TraceSpec:
    """'tcp:10.65.0.2:8080' -> TraceSpec(mode='probe', ...)."""
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0].lower() not in PROTOS:
        raise UsageError(f"--probe {text!r}: expected PROTO:DST:PORT with PROTO tcp or udp")
    return TraceSpec("probe", parts[0].lower(), _addr(parts[1], "--probe"), _port(parts[2], "--probe"),
                     count=_count(count))


def parse_match(text: str, count: int = 10) -> TraceSpec:
    """'tcp src 10.0.0.1 dst 10.0.0.2 port 80' (every keyword optional, any order)."""
    words = text.split()
    if not words or words[0].lower() not in PROTOS:
        raise UsageError(f"--match {text!r}: must start with tcp or udp")
    kw: dict[str, str] = {}
    rest = words[1:]
    if len(rest) % 2:
        raise UsageError(f"--match {text!r}: expected KEYWORD VALUE pairs (src, dst, port)")
    for key, value in zip(rest[::2], rest[1::2]):
        if key not in ("src", "dst", "port") or key in kw:
            raise UsageError(f"--match {text!r}: unknown or repeated keyword {key!r}")
        kw[key] = value
    return TraceSpec("match", words[0].lower(),
                     _addr(kw["dst"], "--match dst") if "dst" in kw else None,
                     _port(kw["port"], "--match port") if "port" in kw else None,
                     _addr(kw["src"], "--match src") if "src" in kw else None,
                     count=_count(count))

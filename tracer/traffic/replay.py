"""Probes for a replayed ruleset: one NEW flow per distinct (protocol, port, destination) its rules name.

The plan (pure) comes from the rules as loaded: `-p tcp --dport 443 -d 10.96.0.1/32`,
`-m multiport --dports 8000:8010`, `tcp dport { 53, 8080-8090 }`, `ip daddr 10.0.0.0/24` → each
port and both ends of each range, toward the rule's destination (a /32 itself; a network the
server pod is in: the server; another network: its first address; none or negated: the server).
Bounded: at most MAX_PROBES distinct probes (an even sample, first and last kept), PER_PROBE
packets each, all sent by one bounded scapy process from a client pod (cnitrace.traffic.send);
traffic stays inside the lab: the node namespace routes every destination it does not own to the
server pod, which drops what is not its own.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Iterable, Sequence

from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.traffic.generators import PROTOS, TrafficResult, _client, _send_crafted, rule_port_ranges

MAX_PROBES = 256
PER_PROBE = 2

_DST = re.compile(r"(?:^|\s)(!\s+)?(?:-d|--destination|--dst)\s+(\S+)")
_PROTO = re.compile(r"(?:^|\s)(!\s+)?(?:-p|--protocol)\s+(\S+)")
_NFT_PORTS = re.compile(r"\b(tcp|udp) dport (\{[^}]*\}|\d+(?:-\d+)?)")
_NFT_DADDR = re.compile(r"\bip daddr (\{[^}]*\}|[\d./]+)")


def destination(value: str | None, server: str) -> str | None:
    """Where a probe for a rule with `-d value` goes (None: nowhere a pod can reach)."""
    if not value:
        return server
    first = value.strip("{} ").split(",")[0].strip()
    try:
        net = ipaddress.IPv4Network(first, strict=False)
    except ValueError:
        return None
    if net.is_loopback or net.is_multicast or net.is_unspecified and net.prefixlen > 0 or net.is_link_local:
        return None
    if net.prefixlen == 0 or ipaddress.IPv4Address(server) in net:
        return server
    return str(net.network_address if net.prefixlen >= 31 else net.network_address + 1)


def plan(specs: Iterable[str], nft_lines: Iterable[str], server: str, default_port: int,
         max_probes: int = MAX_PROBES) -> list[tuple[str, int, str]]:
    """(proto, dport, daddr) for every distinct port / range end and destination the rules name."""
    seen: dict[tuple[str, int, str], None] = {}
    for spec in specs:
        if "--dport" not in spec and "-d " not in spec and "--destination" not in spec:
            continue
        if '"' in spec:
            spec = re.sub(r'"(?:[^"\\]|\\.)*"', '""', spec)      # comments may say anything
        pm = _PROTO.search(spec)
        dm = _DST.search(spec)
        daddr = server if dm is None or dm.group(1) else destination(dm.group(2), server)
        if daddr is None:
            continue
        ranges = rule_port_ranges([spec])
        if ranges:
            for proto, lo, hi in ranges:
                seen.setdefault((proto, lo, daddr))
                seen.setdefault((proto, hi, daddr))
        elif dm is not None and not dm.group(1):
            protos = [pm.group(2).lower()] if pm and not pm.group(1) and pm.group(2).lower() in PROTOS else ["tcp"]
            if pm and not pm.group(1) and pm.group(2).lower() not in PROTOS and pm.group(2).lower() not in ("all", "0"):
                continue
            for p in protos:
                seen.setdefault((p, default_port, daddr))
    for line in nft_lines:
        if "dport" not in line and "daddr" not in line:
            continue
        dm = _NFT_DADDR.search(line)
        daddr = destination(dm.group(1), server) if dm else server
        if daddr is None:
            continue
        for proto, ports in _NFT_PORTS.findall(line):
            for part in ports.strip("{} ").split(","):
                lo, _, hi = part.strip().partition("-")
                for p in (lo, hi):
                    if p.isdigit() and 0 < int(p) < 65536:
                        seen.setdefault((proto, int(p), daddr))
    out = list(seen)
    if len(out) > max_probes > 1:
        idx = sorted({round(i * (len(out) - 1) / (max_probes - 1)) for i in range(max_probes)})
        out = [out[i] for i in idx]
    return out or [(p, default_port, server) for p in PROTOS]


def nft_json_line(rule: dict) -> str:
    """A JSON rule's port and destination matches as nft text (`tcp dport { 53, 80-90 } ip daddr X`) for plan()."""
    parts = []
    for e in rule.get("expr", []) if isinstance(rule, dict) else []:
        m = e.get("match") if isinstance(e, dict) else None
        if not isinstance(m, dict) or m.get("op", "==") not in ("==", "in"):
            continue
        left, right = m.get("left"), m.get("right")
        pl = left.get("payload") if isinstance(left, dict) else None
        if not isinstance(pl, dict):
            continue
        vals = right.get("set", []) if isinstance(right, dict) and "set" in right else [right]
        items = []
        for v in vals:
            if isinstance(v, dict) and isinstance(v.get("range"), list) and len(v["range"]) == 2:
                items.append(f"{v['range'][0]}-{v['range'][1]}")
            elif isinstance(v, dict) and isinstance(v.get("prefix"), dict):
                items.append(f"{v['prefix'].get('addr')}/{v['prefix'].get('len')}")
            elif isinstance(v, (int, str)):
                items.append(str(v))
        if not items:
            continue
        if pl.get("field") == "dport" and pl.get("protocol") in PROTOS:
            parts.append(f"{pl['protocol']} dport {{ {', '.join(items)} }}")
        elif pl.get("field") == "daddr" and pl.get("protocol") == "ip":
            parts.append(f"ip daddr {items[0]}")
    return " ".join(parts)


def replay_probes(topo, probes: Sequence[Sequence], *, per_probe: int = PER_PROBE,
                  runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """Send the replay's probe plan from the first client pod; exact counts per "proto/port@daddr"."""
    pod = _client(topo, None)
    items = [(str(p), int(port), per_probe, str(d)) for p, port, d in probes][:MAX_PROBES]
    t0 = time.monotonic()
    sent = _send_crafted(pod.ip, topo.server.ip, items, pod.netns, runner)
    metrics = {"sent": sent, "client": pod.name, "probes": [list(p) for p in probes][:MAX_PROBES],
               "ports": sorted({int(port) for _, port, _ in probes})}
    return TrafficResult("probe", sum(sent.values()), time.monotonic() - t0, metrics)

"""Timed burst of NEW UDP flows, run *inside* a client pod's namespace by cnitrace.traffic.generators.

`ip netns exec NS python -m cnitrace.traffic.flood SRC DST DPORT SPORT PACKETS BURSTS`
sends BURSTS bursts of PACKETS pre-built UDP datagrams through a raw socket, each datagram on
its own source port so every one is a NEW connection that walks the policy. On a veth path the
sending CPU does the forwarding work (softirq runs on the sender as the syscall returns), so
the wall time of a burst divided by its packets is the per-packet cost of the whole path,
policy included; how that grows with N is the measured policy cost. Prints JSON.
No scapy: building 10,000 packets must not cost seconds. Bounded in packets and time.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

MAX_PACKETS = 40_000
MAX_SECONDS = 30.0


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def build(src: str, dst: str, sport: int, dport: int, payload: bytes = b"cnit") -> bytes:
    """One IPv4/UDP datagram; the UDP checksum is 0 (none), which IPv4 allows."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sport & 0xFFFF, 0, 64, socket.IPPROTO_UDP, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def main(argv: list[str]) -> int:
    src, dst, dport, sport, packets, bursts = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    if not 0 < packets * bursts <= MAX_PACKETS:
        raise SystemExit(f"packets x bursts must be in 1..{MAX_PACKETS}")
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    deadline = time.monotonic() + MAX_SECONDS
    results = []
    sent = 0
    for b in range(bursts):
        pkts = [build(src, dst, 20_000 + (sport - 20_000 + b * packets + i) % 40_000, dport) for i in range(packets)]
        addr = (dst, 0)
        time.sleep(0.02)                          # let the previous burst's softirq work drain
        t0 = time.perf_counter_ns()
        for p in pkts:
            s.sendto(p, addr)
        results.append((time.perf_counter_ns() - t0) / packets)
        sent += packets
        if time.monotonic() > deadline:
            break
    print(json.dumps({"sent": sent, "ns_per_packet": results, "next_sport": sport + sent}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Crafted-packet sender, run *inside* a client pod's namespace by cnitrace.traffic.generators.

`ip netns exec NS python -m cnitrace.traffic.send SRC DST SPORT proto:dport:count ...`
sends TCP SYNs and UDP datagrams with scapy, every packet on its own source port so each is
a NEW connection that walks the policy (established traffic never does), and prints the
exact counts sent as JSON. It is a separate process because scapy is slow to import and must
send from inside the namespace, and it is bounded: at most MAX_PACKETS, at most MAX_SECONDS.
"""

from __future__ import annotations

import json
import sys
import time

MAX_PACKETS = 20_000
MAX_SECONDS = 60.0
INTER = 0.0005          # seconds between packets: gentle on a shared 2-core machine


def parse_specs(specs: list[str]) -> list[tuple[str, int, int]]:
    """["tcp:8080:5", ...] -> [("tcp", 8080, 5), ...]; raises ValueError on anything else."""
    out = []
    for spec in specs:
        proto, dport, count = spec.split(":")
        if proto not in ("tcp", "udp") or not 0 < int(dport) < 65536 or int(count) < 0:
            raise ValueError(f"bad probe spec {spec!r}")
        out.append((proto, int(dport), int(count)))
    if sum(c for _, _, c in out) > MAX_PACKETS:
        raise ValueError(f"more than {MAX_PACKETS} packets requested")
    return out


def main(argv: list[str]) -> int:
    src, dst, sport = argv[0], argv[1], int(argv[2])
    plan = parse_specs(argv[3:])
    # lazily, and only the layers needed: `scapy.all` alone takes seconds to import
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Raw
    from scapy.sendrecv import send
    from scapy.supersocket import L3RawSocket

    conf.verb = 0
    conf.L3socket = L3RawSocket          # let the kernel route via the pod's default gateway
    sent: dict[str, int] = {}
    deadline = time.monotonic() + MAX_SECONDS
    for proto, dport, count in plan:
        key = f"{proto}/{dport}"
        pkts = []
        for _ in range(count):
            l4 = (TCP(sport=sport, dport=dport, flags="S", seq=sport * 7919 % 2**32) if proto == "tcp"
                  else UDP(sport=sport, dport=dport) / Raw(b"cnit"))
            pkts.append(IP(src=src, dst=dst) / l4)   # explicit src: the L4 checksum depends on it
            sport = 20_000 + (sport - 20_000 + 1) % 40_000
        if time.monotonic() > deadline:
            break
        send(pkts, inter=INTER)
        sent[key] = sent.get(key, 0) + len(pkts)
    print(json.dumps({"sent": sent, "next_sport": sport}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

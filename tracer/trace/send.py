"""Marked probe sender, run inside the client's namespace by cnitrace.trace.run.

`ip netns exec NS python -m cnitrace.trace.send SRC DST PROTO DPORT COUNT ID_BASE SPORT` sends COUNT
scapy-crafted packets (TCP SYN or UDP "cnit"), packet i with IP ID ID_BASE+i and source port
SPORT+i (a NEW connection each, so each walks the policy), and prints JSON: what was sent and when
(CLOCK_MONOTONIC ns, the kernel tracepoints' clock). Bounded: at most 100 packets.
"""

from __future__ import annotations

import json
import socket
import sys
import time

MAX = 100


def main(argv: list[str]) -> int:
    src, dst, proto, dport, count, id_base, sport = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6])
    if proto not in ("tcp", "udp") or not 0 < count <= MAX:
        print(json.dumps({"error": "bad arguments"}))
        return 2
    from scapy.compat import raw
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Raw

    sent = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for i in range(count):
            l4 = (TCP(sport=sport + i, dport=dport, flags="S", seq=(sport + i) * 7919 % 2**32) if proto == "tcp"
                  else UDP(sport=sport + i, dport=dport) / Raw(b"cnit"))
            pkt = raw(IP(src=src, dst=dst, id=id_base + i) / l4)
            t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            s.sendto(pkt, (dst, 0))
            sent.append({"ip_id": id_base + i, "sport": sport + i, "t_ns": t, "wall": time.time(), "bytes": pkt.hex()})
            time.sleep(0.02)   # one at a time: each packet's trace stays apart
    print(json.dumps({"sent": sent}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

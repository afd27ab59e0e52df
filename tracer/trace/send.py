"""Marked probe sender, run inside the client's namespace by cnitrace.trace.run.

`ip netns exec NS python -m cnitrace.trace.send SRC DST PROTO DPORT COUNT ID_BASE SPORT [TWIN_ID_BASE]`
sends COUNT scapy-crafted packets (TCP SYN or UDP "cnit"), packet i with IP ID ID_BASE+i and source
port SPORT+i (a NEW connection each, so each walks the policy), and prints JSON: what was sent and
when (CLOCK_MONOTONIC ns, the kernel tracepoints' clock). Bounded: at most 100 packets.

With TWIN_ID_BASE, each probe is followed 10 ms later by an unmarked twin (IP ID TWIN_ID_BASE+i,
source port SPORT+i+TWIN_SPORT_OFFSET): the same rules, but no trace flag, so the bracket probes
time the tables without the trace's own logging.
"""

from __future__ import annotations

import json
import socket
import sys
import time

MAX = 100
TWIN_SPORT_OFFSET = 10_000


def main(argv: list[str]) -> int:
    src, dst, proto, dport, count, id_base, sport = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6])
    twin_base = int(argv[7]) if len(argv) > 7 else 0
    if proto not in ("tcp", "udp") or not 0 < count <= MAX:
        print(json.dumps({"error": "bad arguments"}))
        return 2
    from scapy.compat import raw
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Raw

    def craft(ip_id: int, sp: int) -> bytes:
        l4 = (TCP(sport=sp, dport=dport, flags="S", seq=sp * 7919 % 2**32) if proto == "tcp"
              else UDP(sport=sp, dport=dport) / Raw(b"cnit"))
        return raw(IP(src=src, dst=dst, id=ip_id) / l4)

    sent, twins = [], []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for i in range(count):
            pkt = craft(id_base + i, sport + i)
            t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            s.sendto(pkt, (dst, 0))
            sent.append({"ip_id": id_base + i, "sport": sport + i, "t_ns": t, "wall": time.time(), "bytes": pkt.hex()})
            time.sleep(0.01)
            if twin_base:
                twin = {"ip_id": twin_base + i, "sport": sport + i + TWIN_SPORT_OFFSET}
                s.sendto(craft(twin["ip_id"], twin["sport"]), (dst, 0))
                twins.append({**twin, "t_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC)})
            time.sleep(0.01)   # one at a time: each packet's trace stays apart
    print(json.dumps({"sent": sent, "twins": twins}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

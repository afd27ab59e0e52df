"""Timed burst of NEW UDP flows, run *inside* a client pod's namespace by cnitrace.traffic.generators.

`ip netns exec NS python -m cnitrace.traffic.flood SRC DST DPORT SPORT PACKETS BURSTS`
sends BURSTS bursts of PACKETS pre-built UDP datagrams through a raw socket, each datagram on
its own source port so every one is a NEW connection that walks the policy. On a veth path the
sending CPU does the forwarding work (softirq runs on the sender as the syscall returns), so
the wall time of a burst divided by its packets is the per-packet cost of the whole path,
policy included; how that grows with N is the measured policy cost. Prints JSON.
No scapy: building 10,000 packets must not cost seconds. Bounded in packets and time.

`ip netns exec NS python -m cnitrace.traffic.flood sustain DST DPORT SECONDS [PAYLOAD [PPS]]`
is the other mode: a sustained flood of PAYLOAD-byte UDP datagrams (64 by default, as
`iperf3 -u -l 64`) on one connected socket for SECONDS (at most MAX_SUSTAIN_SECONDS), as fast
as the machine goes: sendmmsg(2) batches of BATCH datagrams, so Python costs ~nothing per
packet and the sending CPU's softirq forwarding is the limit. PPS > 0 caps the rate instead.
Prints JSON: sent, refused (datagrams the kernel would not queue: ENOBUFS/EAGAIN), seconds, pps.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import sys
import time

MAX_PACKETS = 40_000
MAX_SECONDS = 30.0
MAX_SUSTAIN_SECONDS = 120.0
BATCH = 256


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


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


def sustain(dst: str, dport: int, seconds: float, payload: int = 64, pps: int = 0,
            clock=time.monotonic) -> dict[str, float | int]:
    """Flood dst:dport with `payload`-byte UDP datagrams for `seconds` (bounded); see the module doc."""
    if not 0 < seconds <= MAX_SUSTAIN_SECONDS:
        raise SystemExit(f"seconds must be in (0, {MAX_SUSTAIN_SECONDS:g}]")
    if not 1 <= payload <= 1472 or not 0 < dport < 65536 or pps < 0:
        raise SystemExit("payload must be in 1..1472, dport in 1..65535, pps >= 0")
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((dst, dport))
    data = ctypes.create_string_buffer((b"cnit" * (payload // 4 + 1))[:payload], payload)
    iov = _IoVec(ctypes.cast(data, ctypes.c_void_p), payload)
    msgs = (_MMsgHdr * BATCH)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
    sendmmsg, fd = libc.sendmmsg, s.fileno()
    sent = refused = 0
    t0 = clock()
    deadline = t0 + seconds
    while (now := clock()) < deadline:
        if pps and sent > (now - t0) * pps:      # capped: sleep off what is ahead of the rate
            time.sleep(min(BATCH / pps, deadline - now))
            continue
        n = sendmmsg(fd, msgs, BATCH, 0)
        if n < 0:
            if ctypes.get_errno() not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            refused += BATCH
            continue
        sent += n
    elapsed = clock() - t0
    s.close()
    return {"sent": sent, "refused": refused, "seconds": round(elapsed, 3), "pps": round(sent / elapsed, 1)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["sustain"]:
        a = argv[1:]
        if not 3 <= len(a) <= 5:
            raise SystemExit("usage: sustain DST DPORT SECONDS [PAYLOAD [PPS]]")
        print(json.dumps(sustain(a[0], int(a[1]), float(a[2]), *(int(x) for x in a[3:]))))
        return 0
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

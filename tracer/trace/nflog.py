"""iptables legacy-backend trace records through nfnetlink_log.

The kernel's ip_tables logs every rule a packet with `nf_trace` set matches (`TRACE: table:chain:
rule|return|policy:N`) through the namespace's IPv4 nf_log backend; with that backend set to
nfnetlink_log the records arrive on NFLOG group 0. cnitrace's own nft table sets `nf_trace` on
the selected packets only, so no rule is added to the CNI's iptables tables.

`python -m cnitrace.trace.nflog` (run inside the namespace) binds group 0 and prints one JSON line
per record. Pure: `parse_messages(data)` (netlink bytes -> records), `parse_prefix(prefix)`,
`packet_fields(payload)`.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
from typing import Any

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_PF_BIND = 1, 3
NFULNL_COPY_PACKET = 2
ATTR = {1: "packet_hdr", 2: "mark", 3: "timestamp", 4: "indev", 5: "outdev", 9: "payload", 10: "prefix"}
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2

_PREFIX = re.compile(r"^TRACE: (?P<table>[^:]+):(?P<chain>[^:]+):(?P<kind>rule|return|policy):(?P<num>\d+)\s*$")


def parse_prefix(prefix: str) -> dict[str, Any] | None:
    """'TRACE: raw:PREROUTING:rule:1 ' -> {'table': 'raw', 'chain': 'PREROUTING', 'kind': 'rule', 'num': 1}."""
    m = _PREFIX.match(prefix)
    if not m:
        return None
    return {"table": m["table"], "chain": m["chain"], "kind": m["kind"], "num": int(m["num"])}


def packet_fields(payload: bytes) -> dict[str, Any]:
    """IPv4 header (+ TCP/UDP ports) -> the same field names as nft trace's packet lines."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return {}
    ihl = (payload[0] & 0xF) * 4
    ip_id, ttl, proto = struct.unpack_from("!H", payload, 4)[0], payload[8], payload[9]
    out: dict[str, Any] = {"saddr": socket.inet_ntoa(payload[12:16]), "daddr": socket.inet_ntoa(payload[16:20]),
                           "ip_id": ip_id, "ttl": ttl}
    if proto in (6, 17) and len(payload) >= ihl + 4:
        out["proto"] = "tcp" if proto == 6 else "udp"
        out["sport"], out["dport"] = struct.unpack_from("!HH", payload, ihl)
        if proto == 6 and len(payload) >= ihl + 14:
            flags = payload[ihl + 13]
            names = [n for bit, n in ((2, "syn"), (16, "ack"), (4, "rst"), (1, "fin")) if flags & bit]
            out["tcp_flags"] = "|".join(names)
    return out


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[off + 4: off + alen]
        off += (alen + 3) & ~3
    return out


def parse_messages(data: bytes) -> list[dict[str, Any]]:
    """Netlink datagram -> NFLOG packet records {prefix, indev, outdev, ts_ns, packet, trace}."""
    out = []
    off = 0
    while off + 16 <= len(data):
        mlen, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if mlen < 16 or off + mlen > len(data):
            break
        if mtype == (NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET):
            a = _attrs(data, off + 20, off + mlen)       # 16 nlmsghdr + 4 nfgenmsg
            rec: dict[str, Any] = {"prefix": a.get(10, b"").rstrip(b"\0").decode(errors="replace")}
            for key, num in (("indev", 4), ("outdev", 5)):
                if num in a:
                    rec[key] = struct.unpack("!I", a[num][:4])[0]
            if 3 in a and len(a[3]) >= 16:
                sec, usec = struct.unpack("!QQ", a[3][:16])
                rec["ts_ns"] = sec * 1_000_000_000 + usec * 1000
            rec["packet"] = packet_fields(a.get(9, b""))
            rec["trace"] = parse_prefix(rec["prefix"])
            out.append(rec)
        off += (mlen + 3) & ~3
    return out


def _msg(mtype: int, family: int, res_id: int, attrs: list[tuple[int, bytes]], seq: int) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id))
    for t, v in attrs:
        a = struct.pack("=HH", 4 + len(v), t) + v
        body += a + b"\0" * (((len(a) + 3) & ~3) - len(a))
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _check_ack(sock: socket.socket) -> None:
    data = sock.recv(65536)
    mlen, mtype = struct.unpack_from("=IH", data, 0)
    if mtype == NLMSG_ERROR:
        err = struct.unpack_from("=i", data, 16)[0]
        if err:
            raise OSError(-err, f"nfnetlink_log config refused: errno {-err}")


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 600.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    cfg = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG
    sock.send(_msg(cfg, socket.AF_INET, 0, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_PF_BIND]))], 1))
    _check_ack(sock)
    sock.send(_msg(cfg, socket.AF_UNSPEC, 0, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))], 2))
    _check_ack(sock)
    sock.send(_msg(cfg, socket.AF_UNSPEC, 0, [(NFULA_CFG_MODE, struct.pack("!IBB", 0xFFFF, NFULNL_COPY_PACKET, 0))], 3))
    _check_ack(sock)
    print(json.dumps({"ready": True}), flush=True)
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for rec in parse_messages(data):
            rec["recv_t_ns"] = now
            print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


# --- records -> hops (pure) ------------------------------------------------------------------

def parse_log(text: str, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The reader's JSON lines -> trace records (lines that are not records are skipped)."""
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if warnings is not None:
                warnings.append(f"nflog line {no}: not JSON")
            continue
        if rec.get("trace"):
            out.append(rec)
    return out


def packet_key(rec: dict[str, Any]) -> tuple:
    p = rec.get("packet", {})
    return (p.get("saddr"), p.get("daddr"), p.get("proto"), p.get("sport"), p.get("dport"), p.get("ip_id"))


def group(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Records -> [(packet fields, its records in order)], one entry per packet (5-tuple + IP ID)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(packet_key(r), []).append(r)
    return [(recs[0]["packet"], recs) for recs in groups.values()]


_TARGET_VERDICT = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return", "QUEUE": "queue",
                   "NFQUEUE": "queue"}


def to_hops(records: list[dict[str, Any]], rules: dict, chains: dict, netns: str = "", start_order: int = 0) -> list:
    """Legacy TRACE records -> Hops. `rules[(table, chain, num)]`: collectors.iptables Rule;
    `chains[(table, chain)]`: its Chain (for `policy` records)."""
    from cnitrace.trace.hops import Hop

    hops = []
    order = start_order
    for rec in records:
        t = rec["trace"]
        order += 1
        where = f"ip {t['table']} {t['chain']}"
        detail: dict[str, Any] = {"backend": "legacy", "position": t["num"], "trace_kind": t["kind"]}
        t_ns = rec.get("ts_ns")
        if t["kind"] == "rule":
            r = rules.get((t["table"], t["chain"], t["num"]))
            target = r.target if r is not None else None
            if target in _TARGET_VERDICT:
                verdict = _TARGET_VERDICT[target]
            elif r is not None and target and any(k[0] == t["table"] and k[1] == target for k in chains):
                verdict = "goto" if r.goto else "jump"
                detail["target"] = target
            else:
                verdict = "continue"
            detail["nft_verdict"] = verdict
            text = f"-A {r.chain} {r.spec}" if r is not None else f"rule {t['num']} (not in the dump)"
            if r is not None and r.comment:
                detail["comment"] = r.comment
            what = f"rule {t['num']}: {text} -> {verdict}{' ' + detail['target'] if 'target' in detail else ''}"
            hops.append(Hop("netfilter", where, what, t_ns=None, order=order, netns=netns, rule=text,
                            detail={**detail, "kernel_ts_ns": t_ns}))
        else:
            c = chains.get((t["table"], t["chain"]))
            pol = (c.policy or "").upper() if (c is not None and t["kind"] == "policy") else ""
            detail["nft_verdict"] = _TARGET_VERDICT.get(pol, "return") if t["kind"] == "policy" else "return"
            detail["chain_policy"] = t["kind"] == "policy"
            what = f"policy {pol or '?'}" if t["kind"] == "policy" else f"return (end of chain at rule {t['num']})"
            hops.append(Hop("netfilter", where, what, order=order, netns=netns, detail={**detail, "kernel_ts_ns": t_ns}))
    return hops

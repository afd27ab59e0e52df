"""The trace document: one flow per traced packet with Hubble's flow field names where they fit
(verdict, drop_reason_desc, traffic_direction, trace_observation_point, ingress_allowed_by /
ingress_denied_by, IP, l4, Type, is_reply) plus cnitrace's own hop list with times; and the
pcapng writer (each packet with its flow JSON in the packet comment, as Retis does). Pure
except `write_pcapng`, which writes a file."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping

from cnitrace.trace.hops import Hop, Policy

VERSION = 1
_HUBBLE_VERDICT = {"forwarded": "FORWARDED", "dropped": "DROPPED", "rejected": "DROPPED", "redirected": "REDIRECTED",
                   "delivered": "FORWARDED", "unknown": "VERDICT_UNKNOWN"}


def _policy_ref(p: Policy) -> dict[str, Any]:
    ns, _, name = p.name.rpartition("/")
    return {"name": name, "namespace": ns, "kind": p.kind, "source": p.source, "labels": [],
            "detail": dict(p.detail)}


def flow(packet: Mapping[str, Any], hops: list[Hop], verdict: str, deciding: int | None,
         *, node: str = "", t_wall: float | None = None, times: str = "none") -> dict[str, Any]:
    """One traced packet -> a Hubble-shaped flow dict plus `cnitrace` (hops, deciding hop, times)."""
    proto = str(packet.get("proto", "")).upper()
    l4: dict[str, Any] = {}
    if proto in ("TCP", "UDP"):
        l4[proto] = {"source_port": packet.get("sport"), "destination_port": packet.get("dport")}
        if proto == "TCP" and packet.get("tcp_flags"):
            l4["TCP"]["flags"] = {f.upper(): True for f in str(packet["tcp_flags"]).strip("()").replace("|", " ").split() if f}
    pol = hops[deciding].policy if deciding is not None else None
    drop = next((h for h in hops if h.layer == "drop"), None)
    direction = (pol.detail.get("direction") if pol else None) or ("ingress" if pol else None)
    f: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() if t_wall is None else t_wall)) + "Z",
        "verdict": _HUBBLE_VERDICT.get(verdict, "VERDICT_UNKNOWN"),
        "IP": {"source": packet.get("saddr"), "destination": packet.get("daddr"), "ipVersion": "IPv4"},
        "l4": l4,
        "Type": "L3_L4",
        "node_name": node,
        "is_reply": False,
        "traffic_direction": direction.upper() if direction else "TRAFFIC_DIRECTION_UNKNOWN",
        "trace_observation_point": "TO_ENDPOINT" if verdict == "forwarded" else "UNKNOWN_POINT",
    }
    if verdict in ("dropped", "rejected"):
        f["drop_reason_desc"] = "POLICY_DENIED" if pol else "UNKNOWN_REASON"
        if drop is not None:
            f["cnitrace_kernel_drop_reason"] = drop.detail.get("drop_reason")
    if pol:
        key = f"{(direction or 'ingress').lower()}_{'allowed_by' if verdict == 'forwarded' else 'denied_by'}"
        f[key] = [_policy_ref(pol)]
    f["cnitrace"] = {
        "ip_id": packet.get("ip_id"),
        "deciding_hop": deciding,
        "rule": hops[deciding].rule if deciding is not None else None,
        "where": hops[deciding].where if deciding is not None else None,
        "policy": pol.to_json() if pol else None,
        "times": times,          # "measured" | "none": whether hops carry kernel timestamps
        "hops": [dict(h.to_json(), time="measured" if h.t_ns is not None else "none") for h in hops],
    }
    return f


def document(spec: Mapping[str, Any], flows: list[dict[str, Any]], *, sent: int, selection: Mapping[str, Any],
             warnings: Iterable[str] = (), interrupted: bool = False) -> dict[str, Any]:
    return {
        "kind": "cnitrace-trace", "version": VERSION, "spec": dict(spec), "selection": dict(selection),
        "sent": sent, "traced": len(flows), "interrupted": interrupted,
        "warnings": list(warnings), "flows": flows,
    }


def packet_bytes(packet: Mapping[str, Any]) -> bytes:
    """Rebuild the traced packet's headers from its trace fields (nft trace gives fields, not bytes)."""
    from scapy.compat import raw
    from scapy.layers.inet import IP, TCP, UDP

    ip = IP(src=packet.get("saddr") or "0.0.0.0", dst=packet.get("daddr") or "0.0.0.0",
            id=int(packet.get("ip_id") or 0), ttl=int(packet.get("ttl") or 64))
    sport, dport = int(packet.get("sport") or 0), int(packet.get("dport") or 0)
    l4 = TCP(sport=sport, dport=dport, flags="S") if packet.get("proto") == "tcp" else UDP(sport=sport, dport=dport)
    return raw(ip / l4)


def write_pcapng(path: str, flows: list[dict[str, Any]], packets: list[bytes]) -> None:
    """pcapng (raw IPv4 link type) with each flow's JSON in the packet's comment."""
    from scapy.layers.inet import IP
    from scapy.utils import PcapNgWriter

    w = PcapNgWriter(path)
    try:
        for f, data in zip(flows, packets):
            pkt = IP(data)
            pkt.comment = json.dumps(f, sort_keys=True).encode()
            w.write(pkt)
    finally:
        w.close()

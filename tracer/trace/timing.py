"""Kernel timestamps for traced packets, from the existing probes (no new BPF): the `transit`
stage (net:netif_receive_skb -> net:net_dev_start_xmit / skb:kfree_skb, tp_btf or tracepoint) and
the `drops` stage (skb:kfree_skb with its drop reason), filtered in the kernel by the trace's
5-tuple. Events carry CLOCK_MONOTONIC ns; each is given to the probe sent just before it.

Best effort: when bcc or the tracepoints are missing, or compiling fails, the trace runs with
`times: none` and says why. Pure part: `assign(events, sent)` and `hops_for(...)`."""

from __future__ import annotations

from typing import Any, Sequence

from cnitrace.trace.hops import Hop

DROP_SLACK_NS = 2_000_000   # probes go 20 ms apart; a bridged path may hand the skb on before it is freed


def assign(events: Sequence[tuple[str, dict]], sent: Sequence[dict]) -> dict[int, list[tuple[str, dict]]]:
    """Events -> {ip_id: events}: an event belongs to the last probe sent before it (receive time
    for transit events, the drop's time for drops). The probe is the first packet of its 5-tuple
    (a fresh source port each), so only its first transit counts; later ones are the connection's
    own follow-ups (the client kernel's RST to the server's SYN-ACK), and a drop counts only if it
    happened before that transit ended (the probe's own drop, not a follow-up's)."""
    starts = sorted((s["t_ns"], s["ip_id"]) for s in sent)
    per: dict[int, list[tuple[str, dict]]] = {}
    for stage, ev in sorted(events, key=lambda e: e[1]["ts"] - e[1].get("ns", 0) if e[0] == "transit" else e[1]["ts"]):
        t = ev["ts"] - ev.get("ns", 0) if stage == "transit" else ev["ts"]
        owner = None
        for t0, ip_id in starts:
            if t0 <= t:
                owner = ip_id
        if owner is not None:
            per.setdefault(owner, []).append((stage, ev))
    out: dict[int, list[tuple[str, dict]]] = {}
    for ip_id, evs in per.items():
        transit = next((ev for st, ev in evs if st == "transit"), None)
        end = transit["ts"] if transit is not None else None
        if transit is not None and not transit["ifindex_out"]:
            end += DROP_SLACK_NS      # not transmitted: its drop may follow (same kfree_skb, or later on a bridge)
        kept = [("transit", transit)] if transit is not None else []
        kept += [(st, ev) for st, ev in evs if st == "drops" and (end is None or ev["ts"] <= end)][:1]
        out[ip_id] = kept
    return out


def hops_for(events: Sequence[tuple[str, dict]], netns: str, names: dict[int, str],
             reasons: dict[int, str]) -> list[Hop]:
    """Timed hops: receive (iface in), transmit (iface out) with the time in the node's stack, drop."""
    hops: list[Hop] = []
    for stage, ev in events:
        if stage == "transit":
            rx = ev["ts"] - ev["ns"]
            hops.append(Hop("iface", f"{netns}/{names.get(ev['ifindex_in'], ev['ifindex_in'])} receive",
                            "net:netif_receive_skb", t_ns=rx, order=-1, netns=netns,
                            detail={"ifindex": ev["ifindex_in"], "time": "measured"}))
            if ev["ifindex_out"]:
                hops.append(Hop("iface", f"{netns}/{names.get(ev['ifindex_out'], ev['ifindex_out'])} transmit",
                                f"net:net_dev_start_xmit, {ev['ns']} ns in the node's stack", t_ns=ev["ts"],
                                order=10_000, netns=netns, cost_ns=float(ev["ns"]),
                                detail={"ifindex": ev["ifindex_out"], "time": "measured"}))
        elif stage == "drops":
            reason = reasons.get(ev["reason"], f"UNKNOWN_{ev['reason']}")
            hops.append(Hop("drop", f"{netns} kfree_skb at {ev['location']:#x}", f"skb:kfree_skb reason {reason}",
                            t_ns=ev["ts"], order=10_001, netns=netns,
                            detail={"reason": ev["reason"], "drop_reason": reason, "time": "measured"}))
    return hops


class KernelTimes:
    """The transit and drops probes on the client's node-side interface (and the node's bridge, where
    a bridged datapath frees the packet with the bridge as its device), streaming per-packet events."""

    def __init__(self, session, netns: str, iface: str, proto: str, src: str | None, dst: str | None, port: int | None,
                 bridge: str = "", others: tuple[str, ...] = ()):
        self.session, self.netns, self.iface, self.bridge, self.others = session, netns, iface, bridge, others
        self.args = dict(proto=6 if proto == "tcp" else 17, saddr=src, daddr=dst, dport=port or 0)
        self.events: list[tuple[str, dict]] = []
        self.ps = None
        self.why_not = ""

    def start(self) -> bool:
        try:
            from cnitrace.probes.runtime import Filter, ProbeSet
            self.ps = ProbeSet(["transit", "drops"], ifaces=[(self.netns, i) for i in dict.fromkeys((self.iface, self.bridge, *self.others)) if i], filt=Filter(**self.args),
                               events=True, session=self.session)
            self.ps.start()
            self.ps.on_event(lambda stage, ev: self.events.append((stage, dict(ev))))
            return True
        except Exception as exc:       # bcc missing, no tracepoints, compile error: times are "none"
            self.why_not = f"kernel timestamps unavailable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
            self.ps = None
            return False

    def poll(self, ms: int = 100) -> None:
        if self.ps is not None:
            try:
                self.ps.poll_events(ms)
            except Exception as exc:
                self.why_not = f"kernel timestamps lost: {exc}"

    def reasons(self) -> dict[int, str]:
        try:
            from cnitrace.probes.btf_enums import drop_reasons
            return drop_reasons(self.ps._get_btf()) if self.ps is not None else {}
        except Exception:
            return {}

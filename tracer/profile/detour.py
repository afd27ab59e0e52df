"""The L7 detour in parts: one request through the proxy, split where something timed it.

Pure arithmetic over what was measured elsewhere:
- total: the client's own time per request (ab's mean, measured);
- redirect + connection setup: the client socket's SYN_SENT -> ESTABLISHED through the redirect
  (the l7_detour socket probe, measured) when the probe ran;
- proxy processing: Envoy's downstream time minus its upstream time, from its own per-request
  timestamps (access log, microseconds; measured by the proxy);
- upstream wait: Envoy's upstream request start -> response end (measured by the proxy);
- kernel's share: what is left (socket queues, wake-ups, the response's way back, the close):
  derived as total minus the others, so the parts sum to the total by construction and the
  remainder's size is the check (a negative one means the sources disagree, and says so).

Also the 40 ms class of stall: Linux holds an ACK up to TCP_DELACK_MIN (40 ms) and Nagle holds
a small segment until that ACK, so a peer that writes a request or response in two pieces
without TCP_NODELAY waits ~40 ms per request. The lab found it on the proxy -> server leg (the
lab's Python server writes headers and body separately; the proxy's pooled upstream connection
delays its ACK): Envoy's upstream waits cluster at 40-44 ms, and TCP_NODELAY on the server's
socket took the detour from ~32 ms to ~0.8 ms per request; the same setting took calico + nginx
at concurrency 1 from 43 ms to 0.4 ms (the "44 ms" of issue 14). Where the stall sits is named,
with the setting that removes it.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

DELACK_BAND_MS = (36.0, 48.0)      # TCP_DELACK_MIN (40 ms) plus timer slack and the request itself
UPSTREAM_FRACTION = 0.25           # a quarter of requests 40 ms late already dominates the mean
FAST_DIRECT_MS = 10.0

NODELAY = {
    "envoy": "Envoy sets TCP_NODELAY on its sockets by default; look at the client or the server",
    "nginx": "TCP_NODELAY on the proxy's sockets: nginx `tcp_nodelay on;` (keep-alive and upstream connections)",
    "haproxy": "TCP_NODELAY on the proxy's sockets: haproxy `option http-no-delay`",
}


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    ns: float
    provenance: str        # measured | derived
    source: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Detour:
    proxy: str
    concurrency: int
    requests: int               # requests the client completed
    proxied: int                # of which the proxy logged with upstream timing
    total_ns: float
    parts: tuple[Part, ...]
    direct_ns: float | None = None
    stall: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def parts_sum_ns(self) -> float:
        return sum(p.ns for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "concurrency": self.concurrency, "requests": self.requests,
                "proxied": self.proxied, "total_ns": self.total_ns, "direct_ns": self.direct_ns,
                "total_provenance": "measured (client)", "parts": [p.to_json() for p in self.parts],
                "parts_sum_ns": self.parts_sum_ns, "stall": self.stall, "warnings": list(self.warnings)}


def envoy_means(records: Sequence[Any]) -> tuple[int, float | None, float | None]:
    """(requests with both timings, mean downstream ns, mean upstream ns) over access records."""
    both = [r for r in records if r.ds_us is not None and r.us_us is not None]
    if not both:
        return 0, None, None
    return (len(both), statistics.fmean(r.ds_us for r in both) * 1e3,
            statistics.fmean(r.us_us for r in both) * 1e3)


def parts_of(proxy: str, total_ms: float, records: Sequence[Any], *, requests: int, concurrency: int = 1,
             connect_ns: float | None = None, direct_ms: float | None = None,
             p50_ms: float | None = None, direct_p50_ms: float | None = None) -> Detour:
    """The detour of `requests` client requests (mean `total_ms` each) in parts."""
    total = total_ms * 1e6
    warnings: list[str] = []
    parts: list[Part] = []
    if connect_ns is not None:
        parts.append(Part("redirect + connection setup", connect_ns, "measured",
                          "client socket SYN_SENT -> ESTABLISHED (l7_detour probe)"))
    n, ds, us = envoy_means(records)
    if ds is not None and us is not None:
        parts.append(Part("proxy processing", max(ds - us, 0.0), "measured",
                          f"{proxy}: downstream time minus upstream time (its access log, µs)"))
        parts.append(Part("upstream wait", us, "measured", f"{proxy}: upstream request start -> response end"))
    else:
        warnings.append(f"{proxy}: no per-request timings, so proxy processing and upstream wait are not split out")
    rest = total - sum(p.ns for p in parts)
    what = "kernel's share (socket queues, wake-ups, response path, close)"
    if ds is None:
        what = "proxy + upstream + kernel, not split (the proxy gives no per-request timings)"
    if connect_ns is None:
        what += "; includes redirect + connection setup (no socket probe)"
    if rest < 0:
        warnings.append(f"the timed parts exceed the client's total by {-rest / 1e3:.0f} µs (different requests "
                        "or clocks): kernel's share set to 0")
    parts.append(Part(what, max(rest, 0.0), "derived", "client total minus the parts above"))
    if records and n < len(records):
        warnings.append(f"{len(records) - n} of {len(records)} logged requests had no upstream timing")
    stall = stall_of(proxy, p50_ms, direct_p50_ms, [r.us_us / 1e3 for r in records if r.us_us is not None])
    return Detour(proxy, concurrency, requests, n, total, tuple(parts),
                  None if direct_ms is None else direct_ms * 1e6, stall, tuple(warnings))


def in_band(latencies_ms: Sequence[float]) -> float:
    """Fraction of request times in the delayed-ACK band."""
    if not latencies_ms:
        return 0.0
    lo, hi = DELACK_BAND_MS
    return sum(lo <= x <= hi for x in latencies_ms) / len(latencies_ms)


def stall_of(proxy: str, p50_ms: float | None, direct_p50_ms: float | None,
             upstream_ms: Sequence[float] = ()) -> str | None:
    """A named 40 ms class stall and its leg, or None.

    Upstream leg: the proxy's own per-request upstream waits sit in the delayed-ACK band (the
    server wrote its response in pieces with Nagle on; the proxy delayed its ACK on the kept-alive
    upstream connection). Client leg: the client's median through the proxy sits in the band while
    the direct path is fast and the upstream waits are not (the proxy's own sockets)."""
    lo, hi = DELACK_BAND_MS
    kind = proxy.split()[0]
    f = in_band(upstream_ms)
    if f >= UPSTREAM_FRACTION:
        return (f"delayed-ACK/Nagle stall on the proxy -> server leg: {f:.0%} of requests waited ~40 ms "
                f"(TCP_DELACK_MIN) for the server's response, measured by {kind}. The server writes a response in "
                "more than one segment with Nagle on and the proxy delays its ACK on the kept-alive upstream "
                "connection. Fix: TCP_NODELAY on the server's sockets (Python http.server: "
                "StreamRequestHandler.disable_nagle_algorithm = True; nginx: `tcp_nodelay on;`)")
    if p50_ms is None or not lo <= p50_ms <= hi or direct_p50_ms is None or direct_p50_ms >= FAST_DIRECT_MS:
        return None
    if upstream_ms:
        fix = NODELAY.get(kind, "TCP_NODELAY on the proxy's sockets")
        return (f"delayed-ACK/Nagle stall on the client -> proxy leg: requests through the proxy take ~{p50_ms:g} ms "
                f"(TCP_DELACK_MIN is 40 ms) while the direct path takes {direct_p50_ms:g} ms and the proxy's "
                f"upstream waits are short. Fix: {fix}")
    return (f"delayed-ACK/Nagle stall: requests through the proxy take ~{p50_ms:g} ms (TCP_DELACK_MIN is 40 ms) "
            f"while the direct path takes {direct_p50_ms:g} ms; {kind} gives no per-request upstream timing, so the "
            "leg is not measured. With Envoy this lab measured it on the proxy -> server leg: TCP_NODELAY on the "
            f"server's sockets removes it; on the proxy's own sockets: {NODELAY.get(kind, 'TCP_NODELAY')}")

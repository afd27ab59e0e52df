"""The profile's L7 detour, I/O side: mark the proxy's access log and the socket probe's figures
around the timed through-proxy run, then split that run's requests into parts (cnitrace.profile.detour)
and read the proxy's own statistics (Envoy's admin endpoint).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from cnitrace.collectors.envoy import parse as envoy_parse
from cnitrace.collectors.envoy import source as envoy_source
from cnitrace.core.errors import CnitraceError
from cnitrace.core.runner import Runner
from cnitrace.lab import envoy as lab_envoy
from cnitrace.lab.l7proxy import Proxy
from cnitrace.probes.runtime import netns_inode
from cnitrace.profile import detour
from cnitrace.profile.target import Target


@dataclasses.dataclass(frozen=True)
class Mark:
    log_offset: int
    connect: tuple[int, float]      # client connect (count, sum ns) so far
    started: float = 0.0            # wall clock (Envoy logs each request's start in epoch seconds)


def proxy_of(target: Target) -> Proxy | None:
    d = (target.lab.topo.extra.get("l7") if target.lab is not None else None) or None
    return Proxy.from_json(d) if d else None


def proxy_label(target: Target) -> str:
    p = proxy_of(target)
    return p.label(target.lab.spec.datapath) if p is not None else target.lab.spec.l7_proxy


def connect_totals(figures: Sequence[Any], target: Target) -> tuple[int, float]:
    """The client pod's connects to the service port (l7_detour probe): count and summed ns."""
    topo = target.lab.topo
    ns = netns_inode(topo.clients[0].netns)
    figs = [f for f in figures if f.stage == "l7_detour" and f.map == "l7_connect" and f.key.get("role") == "client"
            and f.key.get("netns") == ns and f.key.get("port") == topo.allowed_port]
    return sum(f.hist.count for f in figs), float(sum(f.hist.sum for f in figs))


def mark(target: Target, probes: Any) -> Mark:
    p = proxy_of(target)
    try:
        offset = p.access_log.stat().st_size if p is not None else 0
    except OSError:
        offset = 0
    return Mark(offset, connect_totals(probes.snapshot(), target) if probes is not None else (0, 0.0), time.time())


def new_log_lines(p: Proxy, offset: int) -> list[str]:
    """Whole lines written past `offset` (a line the offset cut in two belongs to the time before)."""
    try:
        with open(p.access_log, "rb") as f:
            f.seek(max(offset - 1, 0))
            data = f.read(64 << 20)
    except OSError:
        return []
    if offset > 0:
        data = data[1:] if data[:1] == b"\n" else data.partition(b"\n")[2]
    return data.decode(errors="replace").splitlines()


def settled_lines(p: Proxy, offset: int, want: int, timeout: float = 1.0) -> list[str]:
    """The log lines past `offset`, once there are `want` of them or `timeout` passed (Envoy writes its
    access log every LOG_FLUSH_MS)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = new_log_lines(p, offset)
        if len(lines) >= want or time.monotonic() >= deadline:
            return lines
        time.sleep(0.02)


def timed_records(p: Proxy, offset: int, client_ip: str, want: int, since: float = 0.0,
                  timeout: float = 1.0) -> tuple[list[Any], list[str]]:
    """The run's completed requests from `client_ip` in Envoy's access log past `offset`, once there are
    `want` of them or `timeout` passed. Requests of an earlier load that Envoy finished (or logged)
    late are not the run's: they started before `since`, or the client had gone (flags set)."""
    deadline = time.monotonic() + timeout
    while True:
        recs, w = envoy_parse.parse_access_log(new_log_lines(p, offset))
        recs = [r for r in recs if r.client.split(":")[0] == client_ip and 200 <= r.code < 400 and r.flags == "-"
                and r.start >= since]
        if len(recs) >= want or time.monotonic() >= deadline:
            return recs, w
        time.sleep(0.02)


def parts(target: Target, m: Mark, probes: Any, through: Any, direct: Any, runner: Runner) -> dict[str, Any] | None:
    """The timed run's detour in parts, plus the proxy's statistics where it has an admin endpoint."""
    p = proxy_of(target)
    if p is None or through is None or through.metrics.get("mean_ms") is None:
        return None
    records: list[Any] = []
    warnings: list[str] = []
    if p.kind == "envoy":
        records, w = timed_records(p, m.log_offset, target.lab.topo.clients[0].ip,
                                   int(through.metrics.get("complete") or 0), since=m.started)
        warnings += w[:5]
    connect_ns = None
    if probes is not None:
        n1, s1 = connect_totals(probes.snapshot(), target)
        n, s = n1 - m.connect[0], s1 - m.connect[1]
        connect_ns = s / n if n > 0 else None
    dm = direct.metrics if direct is not None else {}
    d = detour.parts_of(proxy_label(target), through.metrics["mean_ms"], records,
                        requests=int(through.metrics.get("complete") or 0),
                        concurrency=int(through.metrics.get("concurrency") or 1), connect_ns=connect_ns,
                        direct_ms=dm.get("mean_ms"), p50_ms=through.metrics.get("p50_ms"),
                        direct_p50_ms=dm.get("p50_ms"))
    out = d.to_json()
    out["warnings"] += warnings
    if p.kind == "envoy":
        try:
            summary, w = envoy_source.read(p.admin_port, lab_envoy.STAT_PREFIX, lab_envoy.CLUSTER, netns=p.netns, runner=runner)
            out["envoy_stats"] = summary.to_json()
            out["warnings"] += list(w[:5])
        except CnitraceError as exc:
            out["warnings"].append(f"envoy statistics: {exc.message}")
    return out

"""Cilium's L7 detour through a real Envoy, per request, at concurrency 1, 10 and 50.

Two cilium labs with the same 100 L3/L4 rules, built one after the other: one with --l7 (Envoy
behind the TPROXY redirect, 100 HTTP rules) and one without (the direct path, same client pod,
same BPF policy). ab runs GET / from the client pod for SECONDS at each concurrency. Figures:
requests/s (measured by ab), the client's mean time per request (measured by ab), and the
detour in parts from Envoy's own per-request timestamps (proxy processing, upstream wait:
measured by Envoy) with the kernel's share derived as the rest (it includes the redirect and the
connection setup: no socket probe runs here). The study's shape is Cilium L7 6.8K -> 94 RPS; a
ratio is reported, never a target on this shared 2-CPU machine.
"""

from __future__ import annotations

import time
import uuid

from cnitrace.core.errors import CnitraceError
from cnitrace.lab import manager
from cnitrace.lab.l7proxy import Proxy
from cnitrace.lab.model import LabSpec
from cnitrace.profile import detour, l7 as profile_l7
from cnitrace.traffic import generators as traffic

CONCURRENCY = (1, 10, 50)
SECONDS = 3
RULES = 100


def _run(l7: bool) -> dict[int, dict]:
    name = f"cnitb{uuid.uuid4().hex[:6]}"
    lab = manager.up(LabSpec(name=name, datapath="cilium", rules=RULES, l7=l7))
    out = {}
    try:
        proxy = Proxy.from_json(lab.topo.extra["l7"]) if l7 else None
        for c in CONCURRENCY:
            offset, since = (proxy.access_log.stat().st_size if proxy else 0), time.time()
            res = traffic.http(lab.topo, SECONDS, concurrency=c)
            m = res.metrics
            recs = []
            if proxy:
                recs, _ = profile_l7.timed_records(proxy, offset, lab.topo.clients[0].ip, int(m.get("complete") or 0),
                                                   since=since)
            d = detour.parts_of("envoy", m.get("mean_ms") or 0.0, recs, requests=int(m.get("complete") or 0),
                                concurrency=c, p50_ms=m.get("p50_ms")) if proxy and m.get("mean_ms") else None
            out[c] = {"metrics": m, "detour": d}
    finally:
        manager.down(name)
    return out


def _us(ns: float) -> str:
    return f"{ns / 1e3:9.1f}"


def main() -> int:
    try:
        direct = _run(False)
        envoy = _run(True)
    except CnitraceError as exc:
        print(f"error: {exc.message}")
        return 1
    print(f"cilium lab, {RULES} L3/L4 rules, {RULES} HTTP rules on Envoy; ab GET / for {SECONDS} s per row; "
          "µs per request (mean)")
    print(f"{'c':>3} {'RPS direct':>10} {'RPS envoy':>10} {'ratio':>6} {'direct µs':>9} {'envoy µs':>9} "
          f"{'proxy µs':>9} {'upstr µs':>9} {'kernel µs':>9}  requests  stall")
    failed = 0
    for c in CONCURRENCY:
        dm, em, d = direct[c]["metrics"], envoy[c]["metrics"], envoy[c]["detour"]
        if d is None or not dm.get("rps") or not em.get("rps"):
            print(f"{c:>3} error: direct {dm.get('error')}, envoy {em.get('error')}")
            failed += 1
            continue
        parts = {p.name: p.ns for p in d.parts}
        print(f"{c:>3} {dm['rps']:>10.0f} {em['rps']:>10.0f} {em['rps'] / dm['rps']:>6.2f} "
              f"{_us(dm['mean_ms'] * 1e6)} {_us(d.total_ns)} {_us(parts.get('proxy processing', 0))} "
              f"{_us(parts.get('upstream wait', 0))} {_us(d.parts[-1].ns)}  "
              f"{d.proxied:>8,}  {'yes' if d.stall else 'no'}", flush=True)
        for w in d.warnings:
            print(f"    warning: {w}")
    print("source: RPS and total µs measured by ab; proxy = Envoy downstream minus upstream time and upstream = "
          "Envoy upstream time (measured by Envoy, access log µs); kernel = total minus both (derived: socket "
          "queues, redirect, connection setup, close)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

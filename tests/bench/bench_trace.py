"""`cnitrace trace` (issue 15): time from command start to the traced packet's report, the
marginal cost per traced packet, and the in-node time of a traced packet.

Measured on calico labs (100 rules, legacy and nft backends): `trace --probe` with --count 1 and
--count 20, each run as the user runs it (a fresh process). "start->report" is the whole command
with one probe (nft table + monitor + BPF compile for the kernel times + send + parse);
"per packet" is (t20 - t1) / 19, most of it the 20 ms pacing between probes (kept so each
packet's trace stays apart); "in-node" is the median receive->transmit/drop time of the traced
packets from the tracepoint probes (with nftrace on, so it includes the trace's own cost);
"tables" is the median time in the netfilter tables (bracket probes) of the probes' untraced
twins against the traced probes themselves: the trace's own cost per packet inside the tables.
No target is asserted: the issue asks for the figures.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec

CLI = [sys.executable, "-m", "cnitrace"]


def _run(lab, port: int, count: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "t.json"
        t0 = time.monotonic()
        p = subprocess.run([*CLI, "trace", "--lab", lab.spec.name, "--probe", f"tcp:{lab.topo.server.ip}:{port}",
                            "--count", str(count), "--json", str(out)], capture_output=True, text=True, timeout=300)
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc={p.returncode}")
        return dt, json.loads(out.read_text())


def _in_node(doc: dict) -> list[float]:
    out = []
    for f in doc["flows"]:
        timed = [h["t_ns"] for h in f["cnitrace"]["hops"] if h["t_ns"] is not None]
        if len(timed) >= 2:
            out.append((max(timed) - min(timed)) / 1000)
    return out


def _tables(doc: dict) -> tuple[list[float], list[float]]:
    """Per packet: the summed table time of its untraced twin, and of the traced packet, in µs."""
    untraced, traced = [], []
    for f in doc["flows"]:
        hops = [h for h in f["cnitrace"]["hops"] if "table" in h["detail"]]
        if hops and all(h["detail"]["untraced_ns"] is not None for h in hops):
            untraced.append(sum(h["detail"]["untraced_ns"] for h in hops) / 1000)
            traced.append(sum(h["detail"]["traced_ns"] for h in hops) / 1000)
    return untraced, traced


def main() -> int:
    print(f"{'lab':16} {'port':>5} {'start->report s':>16} {'per packet ms':>14} {'in-node µs (median)':>20} "
          f"{'tables µs untraced/traced':>26} traced")
    for backend in ("legacy", "nft"):
        name = f"cnitb{uuid.uuid4().hex[:6]}"
        lab = manager.up(LabSpec(name=name, datapath="calico", rules=100, backend=backend))
        try:
            for port in (lab.topo.allowed_port, lab.topo.denied_port):
                t1, _ = _run(lab, port, 1)
                t20, doc = _run(lab, port, 20)
                node = _in_node(doc)
                med = f"{statistics.median(node):.1f}" if node else "none"
                u, t = _tables(doc)
                tab = f"{statistics.median(u):.1f}/{statistics.median(t):.1f}" if u else "none"
                print(f"{'calico/' + backend:16} {port:>5} {t1:>16.2f} {(t20 - t1) / 19 * 1000:>14.1f} {med:>20} "
                      f"{tab:>26} {doc['traced']}/{doc['sent']}", flush=True)
        finally:
            manager.down(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

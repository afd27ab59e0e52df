"""`cnitrace agent`: its CPU per window, and its overhead on a TCP stream, side by side in one run.

A calico lab (RULES policy rules, iptables-legacy). ROUNDS paired rounds in a seeded order: an
iperf3 TCP stream client pod -> server pod (inside the lab's namespaces, the profile's `stream`
traffic) for ROUND_S seconds with no agent, and the same with `cnitrace agent --lab` running
(windows of WINDOW_S, so several windows close during the stream: their snapshots and
attribution compete for the 2 CPUs, their probes sit on the path). The overhead is the median of
the per-round on/off throughput ratios (paired: drift hits both sides alike).

CPU per window: the agent's own figure (`cnitrace_overhead_seconds_total` / `cnitrace_windows_total`
from its /metrics: its process plus the collectors it ran), idle (no traffic) and under the stream.
Needs root. Prints figures; exit 1 only when a measurement failed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROUNDS = int(os.environ.get("CNITRACE_BENCH_ROUNDS", "4"))
ROUND_S = int(os.environ.get("CNITRACE_BENCH_ROUND_S", "4"))
WINDOW_S = float(os.environ.get("CNITRACE_BENCH_AGENT_WINDOW", "1"))
IDLE_WINDOWS = max(1, min(10, int(12 / WINDOW_S)))     # about 12 s of idle windows, bounded
RULES = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """`cnitrace agent --lab NAME` as a subprocess, until stop()."""

    def __init__(self, lab: str, window: float):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cnit-bench-agent-"))
        self.ready, self.log = self.dir / "ready", self.dir / "agent.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cnitrace", "agent", "--lab", lab, "--window",
                                          str(window), "--listen", f"127.0.0.1:{self.port}",
                                          "--ready-file", str(self.ready)],
                                         stdout=subprocess.DEVNULL, stderr=err, text=True)
        end = time.monotonic() + 240
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"agent did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)

    def totals(self) -> tuple[float, float]:
        """(windows, agent CPU seconds) from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        return got.get("cnitrace_windows_total", 0.0), got.get("cnitrace_overhead_seconds_total", 0.0)

    def windows(self) -> int:
        """Windows closed, from /healthz (cheap: polling /metrics would bill its encoding to the agent)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:          # 503 until the first window closes
            body = exc.read()
        return int(json.loads(body)["windows_total"])

    def wait_windows(self, n: float, deadline_s: float = 120) -> None:
        end = time.monotonic() + deadline_s
        while self.windows() < n and time.monotonic() < end:
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)
        finally:
            self.ready.unlink(missing_ok=True)
            self.log.unlink(missing_ok=True)
            self.dir.rmdir()


def per_window(agent: Agent, since: tuple[float, float]) -> tuple[float, float]:
    """(windows, CPU seconds per window) since an earlier totals() reading."""
    w, cpu = agent.totals()
    n = w - since[0]
    return n, ((cpu - since[1]) / n if n else float("nan"))


def stream(topo) -> float:
    from cnitrace.traffic import generators as traffic
    res = traffic.stream(topo, ROUND_S)
    if "bits_per_second" not in res.metrics:
        raise RuntimeError(f"iperf3 failed: {res.metrics.get('error')}")
    return res.metrics["bits_per_second"]


def main() -> int:
    if os.geteuid() != 0:
        print("bench_agent: needs root")
        return 1
    from cnitrace.lab import manager
    from cnitrace.lab.model import LabSpec
    from tests.support.netns import unique

    name = unique("cnit", 4)
    lab = manager.up(LabSpec(name=name, datapath="calico", rules=RULES))
    try:
        # CPU per window with no traffic (the agent's floor on this node).
        agent = Agent(name, WINDOW_S)
        try:
            agent.wait_windows(1)
            t0 = agent.totals()
            agent.wait_windows(t0[0] + IDLE_WINDOWS)
            idle_n, idle_cpu = per_window(agent, t0)
        finally:
            rc = agent.stop()
        print(f"agent CPU per {WINDOW_S:g} s window, idle: {idle_cpu * 1e3:.1f} ms over {idle_n:.0f} windows "
              f"({idle_cpu / WINDOW_S * 100:.1f} % of one CPU; exit {rc})", flush=True)

        stream(lab.topo)                                    # warm-up
        ratios, offs, ons, loaded = [], [], [], []
        for i in range(ROUNDS):
            order = ["off", "on"]
            random.Random(i).shuffle(order)
            got = {}
            for label in order:
                if label == "off":
                    got["off"] = stream(lab.topo)
                    continue
                agent = Agent(name, WINDOW_S)
                try:
                    agent.wait_windows(1)
                    t0 = agent.totals()
                    got["on"] = stream(lab.topo)
                    loaded.append(per_window(agent, t0))
                finally:
                    agent.stop()
            offs.append(got["off"])
            ons.append(got["on"])
            ratios.append(got["on"] / got["off"])
            n, cpu = loaded[-1]
            print(f"  round {i + 1}: off {got['off'] / 1e9:.2f} Gbit/s, on {got['on'] / 1e9:.2f} Gbit/s "
                  f"(ratio {ratios[-1]:.3f}; agent {n:.0f} windows, {cpu * 1e3:.1f} ms CPU each)", flush=True)
    finally:
        manager.down(name)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    cpus = [c for n, c in loaded if n]
    print(f"TCP stream with the agent on / off: {statistics.median(ratios):.3f} (median of {len(ratios)} paired "
          f"ratios; middle half {q[0]:.3f} .. {q[2]:.3f}); off median {statistics.median(offs) / 1e9:.2f} Gbit/s, "
          f"on median {statistics.median(ons) / 1e9:.2f} Gbit/s")
    if cpus:
        print(f"agent CPU per {WINDOW_S:g} s window under the stream: "
              f"{statistics.median(cpus) * 1e3:.1f} ms (median of {len(cpus)} rounds); idle {idle_cpu * 1e3:.1f} ms")
    else:
        print(f"no {WINDOW_S:g} s window closed during a {ROUND_S} s stream: the ratio is the attached probes' "
              "cost alone")
    print(json.dumps({"window_s": WINDOW_S, "rules": RULES, "idle_cpu_s_per_window": idle_cpu,
                      "loaded_cpu_s_per_window": statistics.median(cpus) if cpus else None,
                      "tcp_on_off_ratio": statistics.median(ratios), "ratios": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

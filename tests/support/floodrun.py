"""A 64-byte UDP flood through a lab with every probe attached, watched from outside: the harness
of tests/host/test_flood.py and tests/bench/bench_flood.py (root).

What runs, in order, all inside the lab's namespaces or throwaway `cnit-` ones:
1. the node's idle responsiveness: a cheap command's latency, and a `ping -c 3 -W 1` on the
   loopback of a namespace of its own, off the flood's path (three UDP datagrams: ping is not
   on every node);
2. `cnitrace probe --events` on the lab's node-side interfaces (transit + drops, per-packet
   events streamed), then `cnitrace profile --lab NAME --no-calibrate` (transit, drops, the
   netfilter brackets, tc_bpf where the lab has programs; its window covers the flood);
3. the flood (cnitrace.traffic.flood sustain: client pod -> server pod's allowed UDP port,
   sendmmsg batches, as fast as the machine goes) for `seconds`, while both tools' RSS is
   sampled from /proc every 0.5 s and the responsiveness is measured again;
4. both tools' exits, timed from the end of their windows (teardown).

Nothing here asserts: run() returns the figures, the test and the benchmark judge them.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from tests.support.netns import Namespaces

SAMPLE_S = 0.5
ATTACH_TIMEOUT_S = 60.0      # bcc compiles per stage; two tools at once on 2 CPUs take a while
EXIT_TIMEOUT_S = 60.0        # past the window: a tool still running then is killed (and the run failed)


def rss_kib(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS), None once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Sampler:
    """Every SAMPLE_S: each watched pid's RSS, timestamped (monotonic)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self._pids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.samples.setdefault(name, [])
        self._pids[name] = pid

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            now = time.monotonic()
            for name, pid in list(self._pids.items()):
                kib = rss_kib(pid)
                if kib is not None:
                    self.samples[name].append((now, kib))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, name: str, t0: float, t1: float) -> list[int]:
        return [k for t, k in self.samples.get(name, []) if t0 <= t <= t1]


class Tool:
    """A cnitrace subprocess whose stderr lines are timestamped as they arrive."""

    def __init__(self, argv: Sequence[str]):
        self.argv = list(argv)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self.ended: float | None = None
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err.start()
        self._out.start()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_out(self) -> None:
        self.stdout = self.proc.stdout.read()

    def seen(self, prefix: str) -> float | None:
        """When a stderr line starting with `prefix` (after the step marker) arrived."""
        for t, line in self.lines:
            if line.lstrip("·✓ ").startswith(prefix):
                return t
        return None

    def wait_for(self, prefix: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.seen(prefix)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[3]}: no {prefix!r} line (rc={self.proc.poll()}): "
                           f"{[l for _, l in self.lines][-5:]}")

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.lines.append((time.monotonic(), f"killed: still running {timeout:g} s after its window"))
        self.ended = time.monotonic()
        self._err.join(5)
        self._out.join(5)
        return rc


def command_latency(netns: str, n: int = 10, gap: float = 0.1) -> list[float]:
    """Wall seconds of n runs of a cheap command (`ip -n NS link show lo`: fork, exec, netlink)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["ip", "-n", netns, "link", "show", "lo"], capture_output=True, check=True, timeout=30)
        out.append(time.perf_counter() - t0)
        time.sleep(gap)
    return out


LOOPBACK_ECHO = """
import json, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(1.0)
rtts = []
for _ in range(3):
    t = time.perf_counter()
    s.sendto(b"cnit", s.getsockname())
    try:
        s.recv(16)
        rtts.append((time.perf_counter() - t) * 1000)
    except socket.timeout:
        pass
    time.sleep(0.2)
print(json.dumps({"received": len(rtts), "avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None}))
"""


def ping_loopback(netns: str) -> dict[str, Any]:
    """`ping -c 3 -W 1` on the namespace's loopback, without ping (not on every node): three UDP
    datagrams through `lo` (the path an ICMP echo takes there), each answered within 1 s or lost."""
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", LOOPBACK_ECHO], capture_output=True,
                       text=True, timeout=30)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"received": 0, "avg_ms": None, "error": (p.stderr or p.stdout).strip()[-200:]}


def responsiveness(netns: str) -> dict[str, Any]:
    lat = command_latency(netns)
    return {"command_s": statistics.median(lat), "command_max_s": max(lat), "ping": ping_loopback(netns)}


@dataclasses.dataclass
class FloodRun:
    seconds: float
    flood: dict[str, Any]
    probe: dict[str, Any]               # cnitrace probe --json output
    profile: dict[str, Any]             # the profile document
    idle: dict[str, Any]
    loaded: dict[str, Any]
    rss: dict[str, dict[str, float]]    # tool -> baseline/peak/growth (MiB) over its window
    timing: dict[str, dict[str, float]]  # tool -> window_s, teardown_s, total_s
    rcs: dict[str, int]
    stderr: dict[str, list[str]]

    @property
    def responsiveness_ratio(self) -> float:
        return self.loaded["command_s"] / self.idle["command_s"]

    @property
    def events_timed(self) -> int:
        """Packets the probe command's aggregates counted: each emitted one event (received or lost)."""
        return sum(f["count"] for f in self.probe.get("figures", []) if f["stage"] in ("transit", "drops"))


def _rss_summary(sampler: Sampler, name: str, t0: float, t1: float) -> dict[str, float]:
    window = sampler.between(name, t0, t1)
    every = [k for _, k in sampler.samples.get(name, [])]
    if not window:
        return {"samples": 0}
    base = window[0]
    return {"samples": len(window), "baseline_mib": base / 1024, "window_peak_mib": max(window) / 1024,
            "growth_mib": (max(window) - base) / 1024, "growth_ratio": max(window) / base,
            "peak_mib": max(every) / 1024}


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """Ctrl-C to each process still running (cnitrace detaches its probes on it), then kill."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(lab: Any, seconds: float, *, payload: int = 64, python: str = sys.executable) -> FloodRun:
    """One flood of `seconds` through `lab` (a cnitrace.lab Lab that is up) with both tools on."""
    topo = lab.topo
    client, server = topo.clients[0], topo.server
    ifaces = [f"{topo.node_netns}/{p.node_iface}" for p in topo.pods]
    cnitrace = [python, "-m", "cnitrace"]
    with tempfile.TemporaryDirectory(prefix="cnit-flood-") as tmp, Namespaces("cnit-t") as nss, Sampler() as smp:
        quiet = nss.new()                                  # the responsiveness probe's own namespace
        idle = responsiveness(quiet)
        ready = Path(tmp) / "probe.ready"
        probe_s = seconds + 12.0                           # covers the profile's attach and the flood
        started: list[subprocess.Popen] = []
        try:
            probe = Tool([*cnitrace, "probe", "-s", "transit", "-s", "drops", *(a for i in ifaces for a in ("-i", i)),
                          "--events", "--duration", f"{probe_s:g}", "--ready-file", str(ready), "--json"])
            started.append(probe.proc)
            smp.watch("probe", probe.proc.pid)
            deadline = time.monotonic() + ATTACH_TIMEOUT_S
            while not ready.exists():
                if probe.proc.poll() is not None or time.monotonic() > deadline:
                    probe.wait(1)
                    raise RuntimeError(f"cnitrace probe did not attach: {[l for _, l in probe.lines][-5:]}")
                time.sleep(0.05)
            probe_ready = time.monotonic()
            profile_json = Path(tmp) / "profile.json"
            profile = Tool([*cnitrace, "profile", "--lab", lab.spec.name, "--duration", f"{seconds + 1:g}",
                            "--no-calibrate", "--json", str(profile_json)])
            started.append(profile.proc)
            smp.watch("profile", profile.proc.pid)
            win0 = profile.wait_for("window:", ATTACH_TIMEOUT_S)
            flood = subprocess.Popen(["ip", "netns", "exec", client.netns, python, "-m", "cnitrace.traffic.flood",
                                      "sustain", server.ip, str(topo.allowed_port), f"{seconds:g}", str(payload)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append(flood)
            time.sleep(min(2.0, seconds / 4))                  # the flood at full rate before measuring
            loaded = responsiveness(quiet)
            f_out, f_err = flood.communicate(timeout=seconds + 30)
            rc_profile = profile.wait(seconds + 1 + EXIT_TIMEOUT_S)
            rc_probe = probe.wait(max(1.0, probe_ready + probe_s - time.monotonic()) + EXIT_TIMEOUT_S)
            win1 = profile.seen("snapshots: every collector's counters after") or profile.ended
            doc = json.loads(profile_json.read_text()) if profile_json.exists() else {}
            probe_doc = json.loads(probe.stdout) if rc_probe == 0 and probe.stdout.strip() else {}
            probe_end = probe_ready + float(probe_doc.get("window_seconds", probe_s))
        except BaseException:
            _stop(started)                                 # a failed run leaves nothing running
            raise
    try:
        flood_doc = json.loads(f_out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        flood_doc = {"error": (f_err or f_out).strip()[-300:]}
    return FloodRun(
        seconds=seconds, flood=flood_doc, probe=probe_doc, profile=doc, idle=idle, loaded=loaded,
        rss={"profile": _rss_summary(smp, "profile", win0, win1), "probe": _rss_summary(smp, "probe", probe_ready, probe_end)},
        timing={"profile": {"window_s": win1 - win0, "teardown_s": profile.ended - win1,
                            "total_s": profile.ended - profile.started, "duration_s": seconds + 1},
                "probe": {"window_s": probe_end - probe_ready, "teardown_s": probe.ended - probe_end,
                          "total_s": probe.ended - probe.started, "duration_s": probe_s,
                          "attach_s": float(probe_doc.get("attach_seconds") or 0.0)}},
        rcs={"profile": rc_profile, "probe": rc_probe, "flood": flood.returncode},
        stderr={"profile": [l for _, l in profile.lines][-8:], "probe": [l for _, l in probe.lines][-8:]})


def summary(r: FloodRun) -> list[str]:
    """The figures, one per line, for the benchmark's output and a failing test's message."""
    ev = r.probe.get("events", {})
    p, q = r.rss.get("profile", {}), r.rss.get("probe", {})
    lines = [
        f"flood: {r.flood.get('pps', 0):,.0f} packets/s for {r.flood.get('seconds', 0):.1f} s "
        f"({r.flood.get('sent', 0):,} sent, 64-byte UDP payload, client pod -> server pod)",
        f"probe --events: {ev.get('received', 0):,} events received, {ev.get('lost', 0):,} lost "
        f"({r.events_timed:,} packets timed); window {r.timing['probe']['window_s']:.1f} s of "
        f"{r.timing['probe']['duration_s']:g}, teardown {r.timing['probe']['teardown_s']:.2f} s",
    ]
    for name, m in (("profile", p), ("probe --events", q)):
        if m.get("samples"):
            lines.append(f"{name} RSS: {m['baseline_mib']:.0f} MiB at window start, peak in window "
                         f"{m['window_peak_mib']:.0f} MiB (growth {m['growth_mib']:+.1f} MiB, x{m['growth_ratio']:.3f}), "
                         f"peak overall {m['peak_mib']:.0f} MiB ({m['samples']} samples)")
    t = r.timing["profile"]
    lines.append(f"profile: window {t['window_s']:.1f} s of {t['duration_s']:g}, teardown (after-snapshot, "
                 f"attribution, report, detach) {t['teardown_s']:.2f} s, total {t['total_s']:.1f} s")
    lines.append(f"responsiveness: `ip -n NS link show lo` median {r.idle['command_s'] * 1000:.1f} ms idle, "
                 f"{r.loaded['command_s'] * 1000:.1f} ms under the flood (x{r.responsiveness_ratio:.1f}); "
                 f"loopback ping {r.idle['ping']['received']}/3 idle ({r.idle['ping']['avg_ms']} ms), "
                 f"{r.loaded['ping']['received']}/3 flooded ({r.loaded['ping']['avg_ms']} ms)")
    return lines

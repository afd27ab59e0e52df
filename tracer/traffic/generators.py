"""Traffic generation inside a lab, or toward a target the user named: crafted probes, a TCP
stream, request/response, HTTP load.

Every generator runs only between the lab's own pod namespaces, or from a namespace the user
chose toward a target the user named (`toward`: the user runs the server there, cnitrace never
starts one), and is bounded in packets and seconds.

The lab's server pod already listens on the allowed port (HTTP + UDP echo), so the
load generators' servers (iperf3, sockperf) listen on private ports inside the server pod and
a temporary nft `redirect` *in the server pod's own namespace* sends the client's connections
to the allowed port there. The node namespace — where the policy lives — therefore sees exactly
the traffic the study measured: client pod → server pod, allowed port. For --l7 labs the
allowed port is detoured through the proxy, which is what `http()` measures.

Parsers of the tools' output are pure and never raise: a tool that reported an error, or
output that is cut short, gives a dict with an "error" key and whatever could be read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import re
import socket
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Sequence

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.records import process_start_time
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import NETNS_DIR
from cnitrace.core.session import Session

if TYPE_CHECKING:
    from cnitrace.lab.model import Pod, Topology

STREAM_PORT = 18080      # iperf3 servers listen on STREAM_PORT + client index inside the server pod
RR_PORT = 17080          # sockperf server, inside the server pod
REDIRECT_TABLE = "cnit_traffic"
MAX_SECONDS = 120.0
MAX_STREAMS = 64         # concurrent iperf3 pairs for multi-client streams
FILLER_SAMPLES = 3       # filler rule ranges probed (first, middle, last): bounded at any N
TARGET_PORTS = {"stream": 5201, "rr": 11111, "http": 80}   # the servers' own defaults when no PORT given
TARGET_HTTP_CONCURRENCY = 10   # gentle on a server the user named (a lab's ab uses 100, as the study did)
MAX_RULE_RANGES = 200    # rule port ranges probed toward a target (an even sample beyond that)
MAX_PORT_ITEMS = 64      # entries in a --ports list
PROTOS = ("tcp", "udp")


@dataclasses.dataclass(frozen=True)
class TrafficResult:
    kind: str                      # "probe" | "stream" | "rr" | "http"
    packets_sent: int | None       # exact for crafted probes; None where the kernel decides
    duration_s: float
    metrics: dict[str, Any]

    @property
    def ok(self) -> bool:
        return "error" not in self.metrics

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "packets_sent": self.packets_sent, "duration_s": round(self.duration_s, 3),
                "metrics": self.metrics}


@dataclasses.dataclass(frozen=True)
class Peer:
    """A load toward a target the user named: its IPv4 address, port (None = the tool's default)
    and HTTP path, and the namespace the client runs in (None = the host's)."""

    host: str
    port: int | None = None
    netns: str | None = None
    path: str = "/"
    name: str = ""                 # the target as the user wrote it


# --- pure: plans and parsers ---------------------------------------------------------------------

def probe_plan(topo: "Topology", count_per_port: int = 5, include_denied: bool = True,
               filler_samples: int = FILLER_SAMPLES) -> list[tuple[str, int, int]]:
    """(proto, dport, count) for the allowed port, the denied port and a bounded sample of the
    filler rules' ranges (first, middle, last), both protocols each."""
    if not 0 < count_per_port <= 1000:
        raise UsageError(f"count per port {count_per_port} out of range: 1..1000")
    ports = [topo.allowed_port]
    if include_denied:
        ports.append(topo.denied_port)
    ranges = list(topo.filler_ranges)
    if ranges and filler_samples > 0:
        idx = sorted({0, len(ranges) // 2, len(ranges) - 1})[:filler_samples]
        ports += [ranges[i][0] for i in idx]
    return [(proto, port, count_per_port) for port in ports for proto in ("tcp", "udp")]


def redirect_ruleset(rules: Sequence[tuple[str, str, int, int]]) -> str:
    """An nft file for the server pod: (saddr, proto, dport, to_port) redirects, in a table of our own."""
    lines = [f"table ip {REDIRECT_TABLE} {{", "  chain pre {",
             "    type nat hook prerouting priority dstnat; policy accept;"]
    for saddr, proto, dport, to_port in rules:
        if proto not in ("tcp", "udp"):
            raise ValueError(f"bad protocol {proto!r}")
        lines.append(f"    ip saddr {saddr} {proto} dport {int(dport)} redirect to :{int(to_port)}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def parse_iperf3(text: str) -> dict[str, Any]:
    """Throughput from `iperf3 -c ... -J` (TCP): bits/s received, retransmits, seconds."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {"error": "iperf3: output is not JSON (cut short?)"}
    if not isinstance(doc, dict):
        return {"error": "iperf3: unexpected JSON"}
    out: dict[str, Any] = {}
    end = doc.get("end") or {}
    recv, sent = end.get("sum_received") or {}, end.get("sum_sent") or {}
    if "bits_per_second" in recv:
        out["bits_per_second"] = float(recv["bits_per_second"])
        out["bytes"] = int(recv.get("bytes", 0))
        out["seconds"] = float(recv.get("seconds", 0.0))
    if "retransmits" in sent:
        out["retransmits"] = int(sent["retransmits"])
    cpu = end.get("cpu_utilization_percent") or {}
    if cpu:
        out["cpu_sender_pct"] = float(cpu.get("host_total", 0.0))
        out["cpu_receiver_pct"] = float(cpu.get("remote_total", 0.0))
    if doc.get("error"):
        out["error"] = f"iperf3: {doc['error']}"
    elif "bits_per_second" not in out:
        out["error"] = "iperf3: no end-of-test summary"
    return out


_SP_PCT = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
_SP_AVG = re.compile(r"avg-(rtt|latency)=([\d.]+)\s*\(std-dev=([\d.]+)\)")
_SP_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)")


def parse_sockperf(text: str) -> dict[str, Any]:
    """Latency (µs) from `sockperf ping-pong`: average, p50, p99, max; `rtt` says whether the
    figures are round trips (--full-rtt) or sockperf's default half round trip."""
    text = _strip_ansi(text)
    out: dict[str, Any] = {}
    m = _SP_AVG.search(text)
    if m:
        out["rtt"] = m.group(1) == "rtt"
        out["avg_us"], out["stddev_us"] = float(m.group(2)), float(m.group(3))
    pct = {float(p): float(v) for p, v in _SP_PCT.findall(text)}
    for want, key in ((50.0, "p50_us"), (99.0, "p99_us"), (99.9, "p999_us")):
        if want in pct:
            out[key] = pct[want]
    m = re.search(r"<MAX> observation =\s*([\d.]+)", text)
    if m:
        out["max_us"] = float(m.group(1))
    m = _SP_VALID.search(text)
    if m:
        out["seconds"], out["sent"], out["received"] = float(m.group(1)), int(m.group(2)), int(m.group(3))
    m = re.search(r"ERROR: (.+)", text)
    if m:
        out["error"] = f"sockperf: {m.group(1).strip()}"
    elif "p50_us" not in out:
        out["error"] = "sockperf: no latency summary"
    return out


def parse_ab(text: str) -> dict[str, Any]:
    """Requests/s, latency (ms) and failures from ApacheBench's report."""
    out: dict[str, Any] = {}
    fields = {
        "Complete requests:": ("complete", int),
        "Failed requests:": ("failed", int),
        "Non-2xx responses:": ("non_2xx", int),
        "Requests per second:": ("rps", float),
        "Time taken for tests:": ("seconds", float),
        "Concurrency Level:": ("concurrency", int),
        "Server Software:": ("server", str),
    }
    for line in text.splitlines():
        s = line.strip()
        for label, (key, cast) in fields.items():
            if s.startswith(label):
                val = s[len(label):].split()
                if val:
                    try:
                        out[key] = cast(val[0])
                    except ValueError:
                        pass
        if s.startswith("Time per request:") and "across all" not in s:
            try:
                out["mean_ms"] = float(s.split()[3])
            except (IndexError, ValueError):
                pass
        m = re.match(r"(\d+)%\s+(\d+)", s)
        if m:
            out[f"p{m.group(1)}_ms"] = float(m.group(2))
        if s.startswith("Total:"):
            parts = s.split()
            if len(parts) >= 6:
                out["median_ms"] = float(parts[4])
    if "failed" in out or "complete" in out:
        out.setdefault("non_2xx", 0)
    m = re.search(r"(apr_\w+: .+|^ab: .+|^Test aborted .+)$", text, re.M)
    if m:
        out["error"] = f"ab: {m.group(1).strip()}"
    elif "rps" not in out:
        out["error"] = "ab: no summary"
    return out


def sum_streams(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-client iperf3 results: total throughput, and how many streams failed."""
    good = [p for p in parts if "error" not in p]
    out: dict[str, Any] = {"streams": len(parts), "failed_streams": len(parts) - len(good),
                           "bits_per_second": sum(p["bits_per_second"] for p in good),
                           "retransmits": sum(p.get("retransmits", 0) for p in good)}
    if not good:
        out["error"] = next((p["error"] for p in parts), "no streams")
    return out


def _http_path(path: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9._/-]*", path):
        raise UsageError(f"bad HTTP path {path!r}")
    return path


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


def parse_target(text: str) -> tuple[str, int | None, str]:
    """'HOST[:PORT]' or 'http://HOST[:PORT][/PATH]' -> (host, port or None, path); IPv4 or a name."""
    t, path = (text or "").strip(), "/"
    bad = f"invalid --target {text!r}: use HOST[:PORT] or http://HOST[:PORT][/PATH] (IPv4 or a DNS name)"
    if "://" in t:
        scheme, _, rest = t.partition("://")
        if scheme.lower() != "http":
            raise UsageError(f"invalid --target {text!r}: only http:// URLs (or HOST[:PORT])")
        t, slash, p = rest.partition("/")
        path = _http_path("/" + p) if slash else "/"
    host, colon, port = t.partition(":")
    if not host or ":" in port or host.startswith("["):
        raise UsageError(bad)
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(bad) from None
    elif not _HOSTNAME.fullmatch(host):
        raise UsageError(bad)
    if not colon:
        return host, None, path
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"invalid --target {text!r}: port must be 1..65535")
    return host, int(port), path


def parse_ports(text: str) -> tuple[tuple[str | None, int, int], ...]:
    """'80,8000-8010,udp/53' -> ((None, 80, 80), (None, 8000, 8010), ('udp', 53, 53)); a range
    may also be written LO:HI; no protocol means both TCP and UDP."""
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not 0 < len(items) <= MAX_PORT_ITEMS:
        raise UsageError(f"invalid --ports {text!r}: 1..{MAX_PORT_ITEMS} comma-separated [tcp/|udp/]PORT[-PORT]")
    out = []
    for item in items:
        proto, _, rng = item.rpartition("/")
        lo, dash, hi = rng.replace(":", "-").partition("-")
        hi = hi if dash else lo
        if proto not in ("", *PROTOS) or not lo.isdigit() or not hi.isdigit() or not 0 < int(lo) <= int(hi) < 65536:
            raise UsageError(f"invalid --ports entry {item!r}: [tcp/|udp/]PORT[-PORT], ports 1..65535")
        out.append((proto or None, int(lo), int(hi)))
    return tuple(out)


_RULE_PROTO = re.compile(r"(?:^|\s)(!\s+)?(?:-p|--protocol)\s+(\S+)")
_RULE_DPORTS = re.compile(r"(!\s+)?--(?:dports?|destination-ports?)\s+(\S+)")


def rule_port_ranges(specs: Sequence[str]) -> list[tuple[str, int, int]]:
    """(proto, lo, hi) destination-port ranges matched by iptables rules (`-p tcp --dport a:b`,
    `-m multiport --dports a:b,c`), deduplicated in rule order; negated matches are skipped."""
    out: list[tuple[str, int, int]] = []
    seen: set[tuple[str, int, int]] = set()
    for spec in specs:
        spec = re.sub(r'"[^"]*"', '""', spec)          # comments may quote anything
        m = _RULE_PROTO.search(spec)
        if not m or m.group(1) or m.group(2).lower() not in PROTOS:
            continue
        proto = m.group(2).lower()
        for neg, value in _RULE_DPORTS.findall(spec):
            if neg:
                continue
            for part in value.split(","):
                lo, sep, hi = part.partition(":")
                try:
                    a, b = int(lo or 0), (int(hi or 65535) if sep else int(lo))
                except ValueError:
                    continue
                key = (proto, max(a, 1), b)
                if 0 <= a <= b <= 65535 and b > 0 and key not in seen:
                    seen.add(key)
                    out.append(key)
    return out


def target_plan(explicit: Sequence[tuple[str | None, int, int]], rule_ranges: Sequence[tuple[str, int, int]],
                count_per_port: int = 2, max_ranges: int = MAX_RULE_RANGES) -> list[tuple[str, int, int]]:
    """(proto, dport, count) toward a target: both ends of every range, the explicit ones first
    (both protocols where none is named), then the rules' ranges — an even sample of at most
    `max_ranges` (first and last always) so that any rule count stays bounded."""
    if not 0 < count_per_port <= 100:
        raise UsageError(f"count per port {count_per_port} out of range: 1..100")
    ranges = list(rule_ranges)
    if len(ranges) > max_ranges > 1:
        idx = sorted({round(i * (len(ranges) - 1) / (max_ranges - 1)) for i in range(max_ranges)})
        ranges = [ranges[i] for i in idx]
    pairs = dict.fromkeys((p, port) for proto, lo, hi in [*explicit, *ranges]
                          for p in ((proto,) if proto else PROTOS) for port in (lo, hi))
    return [(p, port, count_per_port) for p, port in pairs]


def parse_route_get(text: str) -> str | None:
    """The source address the kernel picks, from `ip -j route get DST` (None if unreadable)."""
    try:
        src = json.loads(text)[0].get("prefsrc")
    except (ValueError, LookupError, AttributeError, TypeError):
        return None
    return src if isinstance(src, str) and src else None


# --- I/O: the generators -------------------------------------------------------------------------

def _client(topo: "Topology", client: "Pod | None") -> "Pod":
    if client is not None:
        return client
    if not topo.clients:
        raise UsageError(f"lab {topo.lab} has no client pod")
    return topo.clients[0]


def _bounded(seconds: float) -> float:
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"traffic duration {seconds:g} s out of range: (0, {MAX_SECONDS:g}]")
    return seconds


_next_sport = random.randint(20_000, 59_000)


def crafted_probes(topo: "Topology", *, count_per_port: int = 5, include_denied: bool = True,
                   client: "Pod | None" = None, runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """Scapy-crafted TCP SYNs and UDP datagrams from a client pod to the server, each a NEW 5-tuple;
    metrics["sent"] holds exact counts per "proto/dport"."""
    pod = _client(topo, client)
    plan = probe_plan(topo, count_per_port, include_denied)
    t0 = time.monotonic()
    sent = _send_crafted(pod.ip, topo.server.ip, plan, pod.netns, runner)
    metrics = {"sent": sent, "client": pod.name, "allowed_port": topo.allowed_port,
               "denied_port": topo.denied_port if include_denied else None}
    return TrafficResult("probe", sum(sent.values()), time.monotonic() - t0, metrics)


def _send_crafted(src: str, dst: str, plan: Sequence[tuple], netns: str | None,
                  runner: Runner) -> dict[str, int]:
    """Run the scapy sender in `netns` (None = the host's); exact counts sent per "proto/dport" (plan items
    (proto, dport, count) or (proto, dport, count, daddr): "proto/dport@daddr")."""
    global _next_sport
    argv = [sys.executable, "-m", "cnitrace.traffic.send", src, dst, str(_next_sport),
            *(":".join(map(str, item)) for item in plan)]
    out = runner.run(argv, netns=netns, timeout=90)
    try:
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        sent = {k: int(v) for k, v in doc["sent"].items()}
        _next_sport = int(doc["next_sport"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ToolError(f"crafted probes: unexpected sender output {out.stdout.strip()[:80]!r}") from None
    return sent


def new_flows(topo: "Topology", *, packets: int = 2000, bursts: int = 3, client: "Pod | None" = None,
              runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """Timed bursts of NEW UDP flows to the allowed port: the sender-side ns per NEW packet, which
    includes the policy walk every NEW packet makes. The fastest burst is reported: on a shared
    machine interference only ever adds time, so the minimum is the least disturbed figure."""
    global _next_sport
    if not 0 < packets * bursts <= 40_000:
        raise UsageError("new-flow bursts: packets x bursts must be in 1..40000")
    pod = _client(topo, client)
    t0 = time.monotonic()
    out = runner.run([sys.executable, "-m", "cnitrace.traffic.flood", pod.ip, topo.server.ip, str(topo.allowed_port),
                      str(_next_sport), str(packets), str(bursts)], netns=pod.netns, timeout=60)
    try:
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        per = [float(x) for x in doc["ns_per_packet"]]
        _next_sport = 20_000 + (int(doc["next_sport"]) - 20_000) % 40_000
    except (ValueError, KeyError, IndexError, TypeError):
        raise ToolError(f"new-flow bursts: unexpected output {out.stdout.strip()[:80]!r}") from None
    metrics = {"ns_per_packet": min(per), "median_ns_per_packet": median(per), "bursts_ns_per_packet": per, "proto": "udp",
               "dport": topo.allowed_port}
    return TrafficResult("flood", int(doc["sent"]), time.monotonic() - t0, metrics)


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        raise ValueError("median of nothing")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _load_session(runner: Runner) -> Session:
    """The load servers' own Session: the servers and the redirect live in a lab that outlives
    this run, so they are recorded (a run killed mid-load leaves nothing `cnitrace cleanup` misses).
    Its own owner, so leaving it never removes the enclosing profile's objects."""
    return Session(f"run:{os.getpid()}:load", runner=runner)


def _spawn_server(session: Session, argv: list[str], netns: str) -> Any:
    proc = session.runner.spawn(argv, netns=netns)
    session.track("process", f"{netns}/{argv[0]}", pid=proc.pid, start_time=process_start_time(proc.pid), netns=netns)
    return proc


class _Redirect:
    """The temporary nft redirect inside the server pod, recorded before it is loaded."""

    def __init__(self, session: Session, netns: str, rules: Sequence[tuple[str, str, int, int]]):
        self.s, self.r, self.netns, self.rules = session, session.runner, netns, rules

    def __enter__(self) -> "_Redirect":
        self.s.track("nft-table", REDIRECT_TABLE, family="ip", netns=self.netns)
        self.r.run(["nft", "-f", "-"], input=f"table ip {REDIRECT_TABLE}\ndelete table ip {REDIRECT_TABLE}\n"
                   + redirect_ruleset(self.rules), netns=self.netns)
        return self

    def __exit__(self, *exc: object) -> None:
        self.r.run(["nft", "delete", "table", "ip", REDIRECT_TABLE], netns=self.netns, check=False)


def wait_listening(runner: Runner, netns: str, ports: Sequence[int], deadline_s: float = 5.0) -> None:
    """Wait until TCP listeners are up on every port in `netns` (a server started in the background)."""
    end = time.monotonic() + deadline_s
    want = set(ports)
    while time.monotonic() < end:
        out = runner.run(["ss", "-Hltn"], netns=netns, check=False).stdout
        have = {int(m) for m in re.findall(r":(\d+)\s", out)}
        if want <= have:
            return
        time.sleep(0.05)
    raise ToolError(f"load server did not listen on port(s) {sorted(want - have)} within {deadline_s:g} s")


def _stop(procs: Sequence[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except Exception:  # noqa: BLE001 - a stuck server is killed, never left behind
            p.kill()
            p.wait()


def _parallel_clients(runner: Runner, topo: "Topology", pods: "Sequence[Pod]", secs: int) -> dict[str, Any]:
    """One iperf3 client per pod, all at once; each writes its JSON to a private log file."""
    with tempfile.TemporaryDirectory(prefix="cnit-traffic-") as tmp:
        logs = [f"{tmp}/c{i}.json" for i in range(len(pods))]
        procs = [runner.spawn(_iperf3_argv(topo.server.ip, topo.allowed_port, secs), netns=p.netns, log=log)
                 for p, log in zip(pods, logs)]
        deadline = time.monotonic() + secs + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - bounded: a stuck client is killed
                proc.kill()
                proc.wait()
        parts = []
        for log in logs:
            with open(log, errors="replace") as f:
                text = f.read()
            parts.append(parse_iperf3(text[text.find("{"):] if "{" in text else text))
    return sum_streams(parts)


def _iperf3_argv(host: str, port: int, secs: int) -> list[str]:
    return ["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J", "--connect-timeout", "3000"]


def _iperf3(host: str, port: int, secs: int, netns: str | None, runner: Runner) -> dict[str, Any]:
    """One iperf3 TCP client in `netns` (None = the host's), bounded by secs + 20 s."""
    try:
        out = runner.run(_iperf3_argv(host, port, secs), netns=netns, timeout=secs + 20, check=False)
    except ToolError as exc:
        return {"error": f"iperf3: {exc.message}"}
    return parse_iperf3(out.stdout)


def _sockperf(host: str, port: int, secs: float, netns: str | None, runner: Runner) -> dict[str, Any]:
    """One sockperf TCP ping-pong client (full round trips) in `netns`, bounded by secs + 15 s."""
    try:
        out = runner.run(["sockperf", "ping-pong", "--tcp", "--full-rtt", "-i", host, "-p", str(port),
                          "-t", f"{secs:g}"], netns=netns, timeout=secs + 15, check=False)
    except ToolError as exc:      # bounded: sockperf has no connect timeout of its own
        return {"error": f"sockperf: {exc.message}"}
    metrics = parse_sockperf(out.stdout + out.stderr)
    if "error" in metrics:
        tail = [l for l in (out.stdout + out.stderr).strip().splitlines() if l.strip()][-1:] or ["no output"]
        metrics["output_tail"] = f"exit {out.returncode}: {tail[0][:160]}"
    return metrics


def _ab(url: str, secs: float, concurrency: int, netns: str | None, runner: Runner) -> dict[str, Any]:
    """ApacheBench GET load for `secs` seconds (at most 5,000,000 requests, 5 s socket timeout)."""
    if not 1 <= concurrency <= 1000:
        raise UsageError(f"concurrency {concurrency} out of range: 1..1000")
    try:
        out = runner.run(["ab", "-q", "-r", "-c", str(concurrency), "-t", f"{secs:g}", "-n", "5000000", "-s", "5",
                          url], netns=netns, timeout=secs + 30, check=False)
    except ToolError as exc:
        return {"error": f"ab: {exc.message}"}
    metrics = parse_ab(out.stdout + "\n" + out.stderr)
    metrics.setdefault("concurrency", concurrency)
    return metrics


def stream(topo: "Topology", seconds: float, *, clients: "Sequence[Pod] | None" = None,
           runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """iperf3 TCP throughput, client pod(s) → server pod on the allowed port, `seconds` long.
    Several clients run concurrently, each against its own iperf3 server."""
    secs = max(1, round(_bounded(seconds)))          # iperf3 takes whole seconds
    pods = list(clients or [_client(topo, None)])[:MAX_STREAMS]
    srv = topo.server
    ports = [STREAM_PORT + i for i in range(len(pods))]
    rules = [(p.ip, "tcp", topo.allowed_port, port) for p, port in zip(pods, ports)]
    t0 = time.monotonic()
    servers = []
    with _load_session(runner) as session, _Redirect(session, srv.netns, rules):
        try:
            for port in ports:
                servers.append(_spawn_server(session, ["iperf3", "-s", "-1", "-p", str(port)], srv.netns))
            wait_listening(runner, srv.netns, ports)
            if len(pods) > 1:
                metrics = _parallel_clients(runner, topo, pods, secs)
            else:
                metrics = _iperf3(srv.ip, topo.allowed_port, secs, pods[0].netns, runner)
        finally:
            _stop(servers)
    metrics["clients"] = len(pods)
    return TrafficResult("stream", None, time.monotonic() - t0, metrics)


def rr(topo: "Topology", seconds: float, *, client: "Pod | None" = None,
       runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """sockperf TCP ping-pong latency (full round trip, µs: avg, p50, p99) on the allowed port."""
    secs = _bounded(seconds)
    pod, srv = _client(topo, client), topo.server
    t0 = time.monotonic()
    with _load_session(runner) as session, _Redirect(session, srv.netns, [(pod.ip, "tcp", topo.allowed_port, RR_PORT)]):
        server = _spawn_server(session, ["sockperf", "server", "--tcp", "-p", str(RR_PORT)], srv.netns)
        try:
            wait_listening(runner, srv.netns, [RR_PORT])
            metrics = _sockperf(srv.ip, topo.allowed_port, secs, pod.netns, runner)
        finally:
            _stop([server])
    return TrafficResult("rr", metrics.get("sent"), time.monotonic() - t0, metrics)


def http(topo: "Topology", seconds: float, *, concurrency: int = 100, client: "Pod | None" = None,
         path: str = "/", runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """ApacheBench GET load on the allowed port (through the proxy detour on --l7 labs):
    requests/s, latency percentiles, failed and non-2xx requests."""
    secs = _bounded(seconds)
    _http_path(path)
    pod, srv = _client(topo, client), topo.server
    t0 = time.monotonic()
    metrics = _ab(f"http://{srv.ip}:{topo.allowed_port}{path}", secs, concurrency, pod.netns, runner)
    return TrafficResult("http", metrics.get("complete"), time.monotonic() - t0, metrics)


# --- toward a target the user named --------------------------------------------------------------

def resolve_peer(target: str, netns: str | None = None) -> Peer:
    """The user's --target resolved to an IPv4 address, and the client namespace checked."""

    host, port, path = parse_target(target)
    if netns is not None and not os.path.exists(os.path.join(NETNS_DIR, netns)):
        raise UsageError(f"--from-netns {netns!r}: no such network namespace (see `ip netns list`)")
    try:
        addr = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        raise UsageError(f"--target {target!r}: cannot resolve {host!r} to an IPv4 address") from None
    return Peer(addr, port, netns, path, target)


def source_address(peer: Peer, runner: Runner = DEFAULT_RUNNER) -> str:
    """The address the client namespace sends from toward the target (crafted packets name it)."""
    out = runner.run(["ip", "-j", "route", "get", peer.host], netns=peer.netns, check=False)
    src = parse_route_get(out.stdout)
    if src is None:
        raise ToolError(f"no route to {peer.host} from {peer.netns or 'the host namespace'}")
    return src


def toward(kind: str, peer: Peer, seconds: float, *, rule_ranges: Sequence[tuple[str, int, int]] = (),
           ports: Sequence[tuple[str | None, int, int]] = (), count_per_port: int = 2,
           concurrency: int = TARGET_HTTP_CONCURRENCY, runner: Runner = DEFAULT_RUNNER) -> TrafficResult:
    """One bounded load from `peer.netns` toward the user's target: crafted probes covering the
    target port, `ports` and the rules' port ranges (exact counts sent); an iperf3 stream; sockperf
    ping-pong; or ab against http://HOST:PORT/PATH. The user runs the server; cnitrace starts none."""
    t0 = time.monotonic()
    where = {"target": peer.host, "client_netns": peer.netns or "host"}
    if kind == "probe":
        explicit = ([(None, peer.port, peer.port)] if peer.port else []) + list(ports)
        plan = target_plan(explicit, rule_ranges, count_per_port)
        if not plan:
            raise UsageError(f"probe traffic toward {peer.name or peer.host}: the selected namespaces' rules "
                             "match no port range; give --target HOST:PORT or --ports")
        src = source_address(peer, runner)
        sent = _send_crafted(src, peer.host, plan, peer.netns, runner)
        metrics = {"sent": sent, "source": src, **where, "target_port": peer.port, "ports": len(ports),
                   "rule_ranges": len(rule_ranges), "rule_ranges_probed": min(len(rule_ranges), MAX_RULE_RANGES)}
        return TrafficResult("probe", sum(sent.values()), time.monotonic() - t0, metrics)
    if kind not in TARGET_PORTS:
        raise UsageError(f"unknown traffic kind {kind!r}")
    secs = _bounded(seconds)
    port = peer.port or TARGET_PORTS[kind]
    if kind == "stream":
        metrics = _iperf3(peer.host, port, max(1, round(secs)), peer.netns, runner)
        packets = None
    elif kind == "rr":
        metrics = _sockperf(peer.host, port, secs, peer.netns, runner)
        packets = metrics.get("sent")
    else:
        metrics = _ab(f"http://{peer.host}:{port}{peer.path}", secs, concurrency, peer.netns, runner)
        packets = metrics.get("complete")
    metrics.update(where, target_port=port)
    return TrafficResult(kind, packets, time.monotonic() - t0, metrics)

"""Per-node calibration: how many nanoseconds one iptables rule evaluation costs here.

Counters tell how many rule evaluations each packet made (collectors); this measured
constant turns evaluations into time where no probe can time the chain itself. It is
measured by a short micro-benchmark on the node: UDP forwarded through a throwaway "node"
namespace holding 0 and then N non-matching rules; the slope of time-per-packet against
rule count is the cost of one evaluation.

Two methods. "transit" (preferred) times each packet's receive → transmit through the
node namespace with the transit tracepoint probe: the forwarding runs in softirq, so other
processes competing for the CPU do not inflate it — which matters on a busy node. "pps"
(fallback where tracepoints are unusable) takes 1/throughput of a 64-byte iperf3 flood,
since on a veth path the sender's CPU does all the forwarding work; it is inflated by CPU
contention. Results are cached per kernel, CPU model and backend.

One ns per evaluation is only right for rules of the calibrated shape. The "calico" style below
(`-p udp -m set ... -m multiport`, whose set lookup succeeds for the bench's packets) priced every
evaluation at ≈ 80 ns, while most evaluations of a real port-range policy fail at the protocol
(≈ 5 ns) — the 3x of issue 12. `measure_shapes` / `cached_or_measure_shapes` calibrate per rule shape
(calibrate.shapes) and are what attribution and the sweep use; `measure` stays for the single
figure (`Calib.ns_per_rule_eval`, reports' `calibration.ns_per_rule_eval`). Native nftables shapes
(plain, hash set, verdict map, interval map at several sizes) are measured by `measure_nft_shapes` on
the same bench, cached per kernel+CPU, and joined to the per-shape figures (`ShapeCosts.nft_ns`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from cnitrace.core import faults
from cnitrace.core.errors import ToolError
from cnitrace.core.files import exclusive, write_atomic
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.traffic.generators import wait_listening
from cnitrace.calibrate.shapes import CALIBRATION_SHAPES, ShapeCosts, calibration_rules, costs_from_samples
from cnitrace.probes.runtime import ProbeSet
from cnitrace.node import checks

CACHE = Path(os.environ.get("CNITRACE_CACHE_DIR", "/var/cache/cnitrace")) / "calibration.json"


@dataclasses.dataclass(frozen=True)
class Sample:
    evaluations: int          # rule evaluations each packet made
    ns_per_packet: float

    @classmethod
    def from_pps(cls, evaluations: int, pps: float) -> "Sample":
        return cls(evaluations, 1e9 / pps)


@dataclasses.dataclass(frozen=True)
class Calibration:
    ns_per_rule_eval: float
    ns_per_packet_base: float
    r2: float
    backend: str
    samples: tuple[Sample, ...]
    kernel: str
    cpu: str
    measured_at: float
    provenance: str = "measured"   # "measured" now, or "cached" from an earlier run on this kernel+CPU
    method: str = "pps"            # "transit" (tracepoint-timed) or "pps" (1/throughput)
    style: str = "plain"           # rule shape calibrated (see nonmatching_rules)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["samples"] = [dataclasses.asdict(s) for s in self.samples]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        return cls(**{**d, "samples": tuple(Sample(**s) for s in d["samples"])})


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of y against x (pure)."""
    n = len(points)
    if n < 2 or len({x for x, _ in points}) < 2:
        raise ValueError("need samples at two or more distinct x values")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    icpt = my - slope * mx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in points)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, icpt, r2


def calibration_from_samples(samples: Sequence[Sample], backend: str, kernel: str, cpu: str,
                             method: str = "pps", style: str = "plain") -> Calibration:
    slope, icpt, r2 = fit_line([(s.evaluations, s.ns_per_packet) for s in samples])
    return Calibration(slope, icpt, r2, backend, tuple(samples), kernel, cpu, time.time(), method=method,
                       style=style)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


STYLES = ("plain", "calico", "kube-router")


def style_for(cni: str | None) -> str:
    """Calibrate with rules shaped like the CNI's: match modules (ipset, multiport, mark) cost
    differently, so ns per evaluation is only transferable between rules of the same shape."""
    return cni if cni in STYLES else "plain"


def nonmatching_rules(n: int, style: str = "plain") -> tuple[str, str, int]:
    """(ipset-restore body, iptables-restore body, rule evaluations per packet) for n policy
    rules that the calibration traffic (UDP to port 5201 from 10.250.1.0/24) never matches.

    plain: `-p udp --dport a:b -j DROP`, one evaluation each. calico / kube-router: the
    CNI's MARK-then-RETURN pair per policy rule, with the ipset lookups they make (the sets
    contain the client, as on a real node, so the lookup succeeds and the port check fails).
    """
    if style not in STYLES:
        raise ValueError(f"unknown calibration style {style!r}")
    sets = ""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":cnit-cal - [0:0]", "-A FORWARD -j cnit-cal"]
    for i in range(n):
        lo = 10000 + 2 * (i % 25000)
        if style == "plain":
            lines.append(f"-A cnit-cal -p udp -m udp --dport {lo}:{lo + 1} -j DROP")
            continue
        if style == "calico":
            match = f"-p udp -m set --match-set cnitcal-src src -m multiport --dports {lo}:{lo + 1}"
        else:
            match = (f"-p udp -m set --match-set cnitcal-src src -m set --match-set cnitcal-dst dst "
                     f"-m multiport --dports {lo}:{lo + 1}")
        lines.append(f'-A cnit-cal {match} -m comment --comment "cnit {i}" -j MARK --set-xmark 0x10000/0x10000')
        lines.append(f'-A cnit-cal -m comment --comment "cnit {i} return" -m mark --mark 0x10000/0x10000 -j RETURN')
    if style != "plain":
        sets = ("create cnitcal-src hash:net family inet -exist\nadd cnitcal-src 10.250.1.0/24 -exist\n"
                "create cnitcal-dst hash:net family inet -exist\nadd cnitcal-dst 10.250.2.0/24 -exist\n")
    lines.append("COMMIT")
    return sets, "\n".join(lines) + "\n", n * (1 if style == "plain" else 2)


class _Bench:
    """Three namespaces client → node → server; the node forwards and holds the rules."""

    def __init__(self, session: Session, runner: Runner):
        self.s, self.r = session, runner
        tag = uuid.uuid4().hex[:6]
        self.ns = {k: f"cnit-cal{tag}-{k}" for k in ("c", "n", "s")}
        self.sport = 20_000          # send_new_flows: the next burst's first source port

    def build(self) -> None:
        r, ns = self.r, self.ns
        for name in ns.values():
            self.s.track("netns", name)
            r.run(["ip", "netns", "add", name])
        r.run(["ip", "-n", ns["c"], "link", "add", "eth0", "type", "veth", "peer", "name", "c0", "netns", ns["n"]])
        r.run(["ip", "-n", ns["s"], "link", "add", "eth0", "type", "veth", "peer", "name", "s0", "netns", ns["n"]])
        plan = [(ns["c"], "eth0", "10.250.1.2/24", "10.250.1.1"), (ns["s"], "eth0", "10.250.2.2/24", "10.250.2.1")]
        for netns, dev, addr, gw in plan:
            r.run(["ip", "-n", netns, "addr", "add", addr, "dev", dev])
            r.run(["ip", "-n", netns, "link", "set", dev, "up"])
            r.run(["ip", "-n", netns, "link", "set", "lo", "up"])
            r.run(["ip", "-n", netns, "route", "add", "default", "via", gw])
        r.run(["ip", "-n", ns["n"], "addr", "add", "10.250.1.1/24", "dev", "c0"])
        r.run(["ip", "-n", ns["n"], "addr", "add", "10.250.2.1/24", "dev", "s0"])
        for dev in ("c0", "s0", "lo"):
            r.run(["ip", "-n", ns["n"], "link", "set", dev, "up"])
        r.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=ns["n"])

    def load_rules(self, n: int, backend: str, style: str) -> int:
        """Replace the node's rules with n policy rules; returns evaluations per packet."""
        sets, rules, evals = nonmatching_rules(n, style)
        if sets:
            self.r.run(["ipset", "restore"], input=sets, netns=self.ns["n"])
        tool = "iptables-legacy-restore" if backend == "legacy" else "iptables-nft-restore"
        self.r.run([tool], input=rules, netns=self.ns["n"])
        return evals

    def pps(self, seconds: int) -> float:
        """Receiver-side packets per second of a bounded 64-byte UDP flood (iperf3 takes whole seconds)."""
        srv = self.r.spawn(["iperf3", "-s", "-1", "-p", "5201"], netns=self.ns["s"])
        try:
            wait_listening(self.r, self.ns["s"], [5201])
            out = self.r.run(["iperf3", "-c", "10.250.2.2", "-p", "5201", "-u", "-l", "64", "-b", "0",
                              "--connect-timeout", "3000", "-t", str(seconds), "-J"],
                             netns=self.ns["c"], timeout=seconds + 15)
        finally:
            try:
                srv.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a stuck server is killed, never left behind
                srv.kill()
                srv.wait()
        return parse_iperf3_udp_pps(out.stdout)

    def send_udp(self, count: int) -> None:
        """`count` UDP datagrams client → server (port 5201, nobody listening: forwarded, then refused)."""
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"for i in range({int(count)}):\n"
                "    s.sendto(b'cnitrace-calibration', ('10.250.2.2', 5201))\n")
        self.r.run([sys.executable, "-c", code], netns=self.ns["c"], timeout=30)

    def send_new_flows(self, count: int) -> None:
        """`count` UDP datagrams client → server, each on its own source port (a NEW flow: nat and
        raw chains see NEW packets only)."""
        self.r.run([sys.executable, "-m", "cnitrace.traffic.flood", "10.250.1.2", "10.250.2.2", "5201",
                    str(self.sport), str(count), "1"], netns=self.ns["c"], timeout=60)
        self.sport = 20_000 + (self.sport - 20_000 + count) % 40_000

    def transit_ns(self, probes: ProbeSet, packets: int, settle_s: float, drain_s: float = 0.05,
                   send: Callable[[int], None] | None = None) -> float:
        """Mean transit time of `packets` datagrams through the node, timed by `probes` (a transit
        ProbeSet on the node's client-side interface), after `settle_s` for the last ruleset's
        deferred freeing. `send` sends them (default: `send_udp`, one flow)."""
        time.sleep(settle_s)
        probes.reset()
        (send or self.send_udp)(packets)
        time.sleep(drain_s)
        figs = [f for f in probes.snapshot() if f.stage == "transit"]
        count = sum(f.hist.count for f in figs)
        if count < packets // 2:
            raise ToolError(f"calibration: only {count} of {packets} packets were timed")
        return sum(f.hist.sum for f in figs) / count


def parse_iperf3_udp_pps(text: str) -> float:
    """Delivered packets per second from `iperf3 -u -J` output (pure)."""
    try:
        doc = json.loads(text)
        s = doc["end"]["sum"]
        delivered = s["packets"] - s.get("lost_packets", 0)
        secs = s["seconds"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError(f"iperf3: unexpected JSON output ({exc})") from None
    if secs <= 0 or delivered <= 0:
        raise ToolError("iperf3: no packets were delivered during calibration")
    return delivered / secs


def measure(rules: int = 1000, repeats: int = 2, seconds: int = 1, backend: str = "legacy",
            runner: Runner = DEFAULT_RUNNER, method: str | None = None, packets: int = 2000,
            style: str = "plain") -> Calibration:
    """Measure ns per rule evaluation by alternating 0 and `rules` rules, `repeats` times each."""
    if method is None:
        method = "transit" if checks.host(runner).usable("tracepoints") else "pps"
    samples: list[Sample] = []
    with Session(runner=runner) as s:
        b = _Bench(s, runner)
        b.build()
        if method == "transit":
            probes = ProbeSet(["transit"], ifaces=[(b.ns["n"], "c0")], session=s, runner=runner)
            s.on_exit(probes.close)
            probes.start()
        for _ in range(repeats):
            for n in (0, rules):
                evals = b.load_rules(n, backend, style)
                if method == "transit":
                    samples.append(Sample(evals, b.transit_ns(probes, packets, settle_s=0.0, drain_s=0.1)))
                else:
                    samples.append(Sample.from_pps(evals, b.pps(seconds)))
    return calibration_from_samples(samples, backend, platform.release(), cpu_model(), method, style)


T = TypeVar("T")


def cached(cache: Path, key: str, load: Callable[[dict], T], measure_now: Callable[[], T]) -> T:
    """Entry `key` of a JSON cache file, marked provenance "cached"; else measure_now(), stored
    under `key` (an unreadable cache is measured over, never an error).

    The check, the measurement and the write happen under one lock: a second run started
    meanwhile waits and then reads the first one's entry instead of calibrating beside it."""
    with exclusive(cache):
        entries = _read_entries(cache, warn=True)
        if key in entries:
            try:
                return dataclasses.replace(load(entries[key]), provenance="cached")
            except (ValueError, TypeError, KeyError, AttributeError):
                pass       # an entry of an older layout (or damaged): measured over
        cal = measure_now()
        entries = _read_entries(cache)   # keep entries other writers added (another key) meanwhile
        entries[key] = cal.to_json()
        write_atomic(cache, json.dumps(entries, indent=1))
    return cal


def _read_entries(cache: Path, warn: bool = False) -> dict:
    """The cache's entries; a missing file is empty, and so is a damaged one (with one line on
    stderr when `warn`: it is measured over and rewritten whole)."""
    try:
        entries = json.loads(cache.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        entries = exc
    if isinstance(entries, dict):
        return entries
    if warn:
        why = type(entries).__name__ if isinstance(entries, Exception) else "not a JSON object"
        print(f"cnitrace: warning: calibration cache {cache} is unreadable ({why}); measuring again and "
              f"rewriting it", file=sys.stderr)
    return {}


def cached_or_measure(backend: str = "legacy", cache: Path = CACHE, style: str = "plain", **kw) -> Calibration:
    """The cached calibration for this kernel+CPU+backend+rule shape, or a fresh measurement (then cached)."""
    key = f"{platform.release()}|{cpu_model()}|{backend}|{style}|{kw.get('method') or 'auto'}"
    return cached(cache, key, Calibration.from_json, lambda: measure(backend=backend, style=style, **kw))


# --- per rule shape (calibrate.shapes) -------------------------------------------------------------

SHAPES_CACHE_VERSION = 2
NFT_CAL_TABLE = "cnitcal"


def shape_rules_body(shape: str, n: int) -> str:
    """iptables-restore body: n units of one calibration shape in a chain FORWARD jumps to (pure)."""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":cnit-cal - [0:0]", "-A FORWARD -j cnit-cal"]
    lines += [f"-A cnit-cal {r}" for i in range(n) for r in calibration_rules(shape, i)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_rules_body(n: int) -> str:
    """`nft -f` body: a forward base chain with n native rules whose port test fails (pure)."""
    out = [f"table inet {NFT_CAL_TABLE}", f"delete table inet {NFT_CAL_TABLE}", f"table inet {NFT_CAL_TABLE} {{",
           "\tchain forward {", "\t\ttype filter hook forward priority filter + 10; policy accept;"]
    out += [f"\t\tudp dport {10000 + 2 * (i % 25000)}-{10001 + 2 * (i % 25000)} drop" for i in range(n)]
    out += ["\t}", "}"]
    return "\n".join(out) + "\n"


def measure_shapes(backend: str = "legacy", rules: int = 1000, repeats: int = 3, packets: int = 1000,
                   runner: Runner = DEFAULT_RUNNER, nft: bool = True, settle_s: float = 0.1) -> "ShapeCosts":
    """Calibrate ns per rule evaluation by shape (calibrate.shapes): UDP forwarded through the bench
    node holding `rules` rules of each shape in turn, timed per packet by the transit probe (softirq:
    undisturbed by other processes); a shape's figure is its time above the no-rule baseline ÷ rules,
    the median over `repeats`, each on a fresh restore (on the nft backend every restore lays the
    rules out anew in memory, and the per-rule cost moves with that by up to ±20 %; the median is the
    typical layout, which is what a node gets). Bounded: (shapes + 2 baselines) x repeats bursts of
    `packets`; about 6 s (legacy) to 12 s (nft backend) on 2 cores."""

    t_start = time.monotonic()
    per: dict[str, list[float]] = {}
    tool = "iptables-legacy-restore" if backend == "legacy" else "iptables-nft-restore"
    with Session(runner=runner) as s:
        b = _Bench(s, runner)
        b.build()
        ns = b.ns["n"]
        runner.run(["ipset", "restore"], input="create cnitcal-src hash:net family inet -exist\n"
                   "add cnitcal-src 10.250.1.0/24 -exist\n", netns=ns)
        probes = ProbeSet(["transit"], ifaces=[(ns, "c0")], session=s, runner=runner)
        s.on_exit(probes.close)
        probes.start()

        def timed() -> float:
            return b.transit_ns(probes, packets, settle_s)

        def units(shape: str) -> int:
            # every shape holds 2 x `rules` rules: the per-rule cost of a chain grows with its memory
            # footprint (cache misses), so early rules alone are measured at the pairs' rule count
            return 2 * rules if shape == "early" else rules

        def iptables(shape: str | None) -> float:
            runner.run([tool], input=shape_rules_body(shape, units(shape)) if shape else shape_rules_body("mark", 0),
                       netns=ns)
            faults.checkpoint("calibrate")
            return timed()

        for _ in range(repeats):
            base = [iptables(None)]
            got = {shape: iptables(shape) for shape in CALIBRATION_SHAPES}
            if nft:
                runner.run(["nft", "-f", "-"], input=nft_rules_body(rules), netns=ns)
                got["nft"] = timed()
                runner.run(["nft", "delete", "table", "inet", NFT_CAL_TABLE], netns=ns)
            base.append(iptables(None))
            b0 = min(base)
            for k, v in got.items():
                per.setdefault(k, []).append((v - b0) / (units(k) if k != "nft" else rules))
    med = {k: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
           for k, v in per.items()}
    return costs_from_samples(med, backend, kernel=platform.release(), cpu=cpu_model(), method="transit",
                              nft_rule_ns=med.get("nft"), seconds=time.monotonic() - t_start)


def cached_or_measure_shapes(backend: str = "legacy", cache: Path = CACHE, nft: bool = True, **kw) -> "ShapeCosts":
    """The cached per-shape calibration for this kernel+CPU+iptables backend, or a fresh one (cached),
    with the native nftables shapes (`cached_or_measure_nft_shapes`) when `nft` and nft is installed.

    This is what the profile calls at start: about 10 s on 2 cores the first time (plus about 15 s
    for the native nft shapes, once per kernel+CPU), then read from the cache (provenance "cached")."""
    key = f"shapes-v{SHAPES_CACHE_VERSION}|{platform.release()}|{cpu_model()}|{backend}"
    shapes = cached(cache, key, ShapeCosts.from_json, lambda: measure_shapes(backend=backend, **kw))
    if nft and not shapes.nft_ns:
        runner = kw.get("runner", DEFAULT_RUNNER)
        if runner.which("nft"):
            shapes = dataclasses.replace(shapes, nft_ns=cached_or_measure_nft_shapes(cache, runner=runner))
    return shapes


@dataclasses.dataclass(frozen=True)
class _NftFigures:
    ns: dict
    provenance: str = "measured"

    def to_json(self) -> dict:
        return dict(self.ns)


def cached_or_measure_nft_shapes(cache: Path = CACHE, **kw) -> dict[str, float]:
    """This kernel+CPU's native nftables shape figures (`measure_nft_shapes`), cached on their own:
    they do not depend on the iptables backend."""
    key = f"nft-shapes-v{NFT_SHAPES_CACHE_VERSION}|{platform.release()}|{cpu_model()}"
    got = cached(cache, key, lambda d: _NftFigures(dict(d)), lambda: _NftFigures(measure_nft_shapes(**kw)))
    return dict(got.ns)


# --- native nftables shapes (calibrate.shapes: NFT_* classes) --------------------------------------

NFT_SHAPES_CACHE_VERSION = 1
NFT_MAP_SIZES = (100, 1000, 5000)     # interval-map sizes one lookup is measured at (interpolated between)


def nft_shape_body(shape: str, n: int) -> str:
    """`nft -f` body of one native calibration shape in the bench node (pure). The bench's packet is
    UDP 10.250.1.2 → 10.250.2.2:5201; nothing matches it, so every rule is evaluated to its end:

    - "plain": n rules `udp dport a-b drop` (payload/meta compares; one evaluation each);
    - "set": n rules `ip daddr @hs drop`, hs a hash set of 64 other addresses (a hash lookup each);
    - "vmap": n rules `ip daddr vmap @dv`, dv mapping the packet's address to `jump` an empty chain
      (a hash lookup, the jump and the implicit return);
    - "imap": one rule `meta l4proto . th dport vmap @im` over an interval map of n `udp . a-b`
      elements (the lab's and kube-proxy's shape; the packet's protocol matches every element,
      its port none, the costly case of the pipapo lookup)."""
    t = NFT_CAL_TABLE
    out = [f"table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
    if shape == "set":
        addrs = ", ".join(f"10.251.{i // 250}.{i % 250 + 1}" for i in range(64))
        out.append(f"\tset hs {{ type ipv4_addr; elements = {{ {addrs} }}; }}")
    if shape == "vmap":
        out.append("\tchain empty {\n\t}")
        out.append("\tmap dv { type ipv4_addr : verdict; elements = { 10.250.2.2 : jump empty }; }")
    if shape == "imap" and n:
        elems = ",\n\t\t\t".join(f"udp . {10000 + 2 * i}-{10001 + 2 * i} : drop" for i in range(n))
        out.append("\tmap im {\n\t\ttype inet_proto . inet_service : verdict; flags interval;\n"
                   f"\t\telements = {{ {elems} }}\n\t}}")
    out += ["\tchain forward {", "\t\ttype filter hook forward priority filter + 10; policy accept;"]
    if shape == "plain":
        out += [f"\t\tudp dport {10000 + 2 * (i % 25000)}-{10001 + 2 * (i % 25000)} drop" for i in range(n)]
    elif shape == "set":
        out += ["\t\tip daddr @hs drop"] * n
    elif shape == "vmap":
        out += ["\t\tip daddr vmap @dv"] * n
    elif shape == "imap" and n:
        out.append("\t\tmeta l4proto . th dport vmap @im")
    out += ["\t}", "}"]
    return "\n".join(out) + "\n"


NFT_SHAPE_UNITS = {"plain": 1000, "set": 1000, "vmap": 1000}


def measure_nft_shapes(repeats: int = 3, packets: int = 1000, runner: Runner = DEFAULT_RUNNER,
                       settle_s: float = 0.1, sizes: Sequence[int] = NFT_MAP_SIZES) -> dict[str, float]:
    """ns per native nftables evaluation by shape (calibrate.shapes.nft_costs_from_samples): the bench
    node's forward hook holds each shape of `nft_shape_body` in turn; a shape's figure is its transit
    time above the empty base chain's ÷ its units (rules, or one lookup for "imap:<size>"), the median
    over `repeats`. Bounded: (3 + len(sizes) + 2 baselines) x repeats bursts of `packets`."""
    t_start = time.monotonic()
    per: dict[str, list[float]] = {}
    with Session(runner=runner) as s:
        b = _Bench(s, runner)
        b.build()
        ns = b.ns["n"]
        probes = ProbeSet(["transit"], ifaces=[(ns, "c0")], session=s, runner=runner)
        s.on_exit(probes.close)
        probes.start()

        def timed(body: str) -> float:
            runner.run(["nft", "-f", "-"], input=body, netns=ns, timeout=120)
            return b.transit_ns(probes, packets, settle_s)

        try:
            for _ in range(repeats):
                base = [timed(nft_shape_body("plain", 0))]
                got = {k: (timed(nft_shape_body(k, u)), u) for k, u in NFT_SHAPE_UNITS.items()}
                got.update({f"imap:{m}": (timed(nft_shape_body("imap", m)), 1) for m in sizes})
                base.append(timed(nft_shape_body("plain", 0)))
                b0 = min(base)
                for k, (v, u) in got.items():
                    per.setdefault(k, []).append((v - b0) / u)
        finally:
            runner.run(["nft", "delete", "table", "inet", NFT_CAL_TABLE], netns=ns, check=False)
    med = {k: sorted(v)[len(v) // 2] for k, v in per.items()}
    med["seconds"] = time.monotonic() - t_start
    return med

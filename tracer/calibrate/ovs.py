"""Per-node calibration: how many nanoseconds of ovs-vswitchd CPU one OpenFlow table costs a first packet.

Only a connection's first packet walks the OpenFlow tables (an upcall: full translation in
ovs-vswitchd); later packets are served by the datapath's flow cache. The OVS table
counters say how many tables each first packet walked; this measured constant turns those
lookups into time. Micro-benchmark: a private ovsdb-server + ovs-vswitchd (the lab's, in a
throwaway namespace) with one bridge, two veth ports, and a pipeline of K resubmit tables
(each with a few non-matching L4-port flows and a default `resubmit(,next)`; the last one
outputs). Megaflows are disabled on that private daemon and every datagram has its own
source port, so every packet is an upcall translated through all K tables. ovs-vswitchd's
CPU time (schedstat, idle rate subtracted) per first packet, against K, is a line: its
slope is ns per table, its intercept the per-upcall cost with no tables (receive, flow
install, transmit). Cached per kernel, CPU model and datapath type.

A table's cost grows with its classifier subtables (distinct match shapes): measured on the
development host (netdev datapath, 48 tables), 2, 5 and 9 subtables per table cost ≈ 100,
260 and 490 ns per table, i.e. ≈ 54 ns per subtable with a near-zero fixed part. So the
profile models an OVS table as lookups × subtables × `ns_per_subtable` (the benchmark's
tables have `subtables_per_table` = 2), the same weight by which it splits measured CPU.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from cnitrace.calibrate.rules import CACHE as RULE_CACHE
from cnitrace.calibrate.rules import cached, cpu_model, fit_line
from cnitrace.attribution.datapath import busy_ns, cpu_ns, match_shape, pids_of
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.collectors.ovs.parse import parse_dpctl_show
from cnitrace.collectors.ovs.parse import parse_dump_flows
from cnitrace.collectors.ovs.source import OvsTarget
from cnitrace.core.state import state_dir
from cnitrace.lab.datapaths.antrea import OvsPaths
from cnitrace.lab.datapaths.antrea import start_ovs
from cnitrace.node.checks import parse_ovs_bridges

CACHE = RULE_CACHE.with_name("calibration-ovs.json")
TABLES = (1, 24, 48)            # pipeline lengths measured (OVS allows 64 nested resubmits)
NONMATCHING = 4                 # non-matching flows per table (one classifier subtable)
BRIDGE = "cnitcal"
DPORT = 5201                    # the benchmark's traffic; the non-matching flows use other ports
CLIENT, SERVER = "10.251.0.1", "10.251.0.2"
SINK_MAC = "02:00:0a:fb:00:99"  # traffic's destination MAC: the server drops it as "other host"
METHOD = "upcall-cpu-median"   # the line through each pipeline length's median sample


@dataclasses.dataclass(frozen=True)
class OvsSample:
    tables: int                 # OpenFlow tables each first packet walked
    packets: int                # first packets (datapath misses) in the run
    cpu_ns: int                 # ovs-vswitchd busy CPU time over the run (idle rate subtracted)

    @property
    def ns_per_packet(self) -> float:
        return self.cpu_ns / self.packets if self.packets else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"tables": self.tables, "packets": self.packets, "cpu_ns": self.cpu_ns}


@dataclasses.dataclass(frozen=True)
class OvsCalibration:
    ns_per_table: float                 # slope: ovs-vswitchd CPU per OpenFlow table per first packet
    ns_per_upcall_base: float           # intercept: per first packet with no table walked
    r2: float
    datapath_type: str                  # "netdev" (userspace) or "system" (kernel)
    subtables_per_table: int            # classifier subtables of each benchmark table
    samples: tuple[OvsSample, ...]
    kernel: str
    cpu: str
    measured_at: float
    seconds: float = 0.0                # wall time the micro-benchmark took
    provenance: str = "measured"        # "measured" now, or "cached" from an earlier run
    method: str = METHOD

    @property
    def ns_per_subtable(self) -> float:
        """ns per classifier subtable a table lookup visits: a table's cost grows with its
        subtables (distinct match shapes), nearly in proportion (see the module docstring)."""
        return self.ns_per_table / max(self.subtables_per_table, 1)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samples"] = [s.to_json() for s in self.samples]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "OvsCalibration":
        return cls(**{**d, "samples": tuple(OvsSample(**s) for s in d["samples"])})

    def summary(self) -> dict[str, Any]:
        """The document's calibration.ovs entry."""
        return {"ns_per_table": self.ns_per_table, "ns_per_subtable": self.ns_per_subtable,
                "ns_per_upcall_base": self.ns_per_upcall_base,
                "r2": self.r2, "provenance": self.provenance, "method": self.method,
                "datapath_type": self.datapath_type, "subtables_per_table": self.subtables_per_table,
                "tables": sorted({s.tables for s in self.samples}), "seconds": round(self.seconds, 2)}


def calibration_from_samples(samples: Sequence[OvsSample], datapath_type: str, subtables_per_table: int,
                             kernel: str, cpu: str, seconds: float = 0.0) -> OvsCalibration:
    """Fit ns per first packet against tables walked (pure).

    The line goes through each pipeline length's median sample: on a shared host a background
    burst only ever adds CPU to one run, and a single such run would tilt a least-squares fit
    over all samples. R² is still that of every sample against the line, so noise shows."""
    by_k: dict[int, list[float]] = {}
    for s in samples:
        by_k.setdefault(s.tables, []).append(s.ns_per_packet)
    slope, icpt, _ = fit_line([(k, statistics.median(v)) for k, v in by_k.items()])
    r2 = explained([(s.tables, s.ns_per_packet) for s in samples], slope, icpt)
    return OvsCalibration(slope, icpt, r2, datapath_type, subtables_per_table, tuple(samples), kernel, cpu,
                          time.time(), seconds)


def explained(points: Sequence[tuple[float, float]], slope: float, icpt: float) -> float:
    """R² of points against a given line: the share of their variance it explains (pure)."""
    my = sum(y for _, y in points) / len(points)
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in points)
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def cache_key(kernel: str, cpu: str, datapath_type: str) -> str:
    return f"{kernel}|{cpu}|{datapath_type}|{METHOD}"


def pipeline(tables: int, out_port: int, nonmatching: int = NONMATCHING,
             dport: int = DPORT) -> list[tuple[int, int, str, str]]:
    """(table, priority, match, actions) of a pipeline of `tables` resubmit tables (pure).

    Each table holds `nonmatching` UDP flows on other destination ports (never matched by
    the traffic, but a classifier subtable every lookup visits) and a default that
    resubmits to the next table; the last table's default outputs to `out_port`.
    """
    if tables < 1:
        raise ValueError("a pipeline needs at least one table")
    flows = []
    for t in range(tables):
        flows += [(t, 100, f"udp,tp_dst={dport + 1 + j}", "drop") for j in range(nonmatching)]
        flows.append((t, 0, "", f"resubmit(,{t + 1})" if t < tables - 1 else f"output:{out_port}"))
    return flows


def flow_lines(flows: Sequence[tuple[int, int, str, str]]) -> list[str]:
    """`ovs-ofctl add-flows` lines (pure)."""
    return [f"table={t},priority={p}{',' + m if m else ''},actions={a}" for t, p, m, a in flows]


def subtables_per_table(flows: Sequence[tuple[int, int, str, str]]) -> int:
    """Distinct match shapes (classifier subtables) of the pipeline's first table, counted the
    way the profile counts an OVS table's (cnitrace.attribution.datapath.match_shape) (pure)."""
    return len({match_shape(m) for t, _, m, _ in flows if t == 0})


class _Bench:
    """client netns → [c0: bridge in a private OVS in the node netns :s0] → server netns."""

    def __init__(self, session: Session, runner: Runner, datapath_type: str):

        self.s, self.r, self.dp_type = session, runner, datapath_type
        tag = uuid.uuid4().hex[:6]
        self.ns = {k: f"cnit-ovc{tag}-{k}" for k in ("c", "n", "s")}
        self.paths = OvsPaths(state_dir() / f"cnit-ovc{tag}-ovs")
        self.pid: int | None = None

    # -- plumbing --------------------------------------------------------------------------
    def build(self) -> None:

        r, ns = self.r, self.ns
        for name in ns.values():
            self.s.track("netns", name)
            r.run(["ip", "netns", "add", name])
            # no IPv6 chatter (router solicitations, MLD) through the pipeline being timed
            r.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1"], netns=name)
        r.run(["ip", "-n", ns["c"], "link", "add", "eth0", "type", "veth", "peer", "name", "c0", "netns", ns["n"]])
        r.run(["ip", "-n", ns["s"], "link", "add", "eth0", "type", "veth", "peer", "name", "s0", "netns", ns["n"]])
        r.run(["ip", "-n", ns["c"], "-batch", "-"], input=(
            f"addr add {CLIENT}/24 dev eth0\nlink set eth0 up\nlink set lo up\n"
            f"neigh replace {SERVER} lladdr {SINK_MAC} dev eth0 nud permanent\n"))
        r.run(["ip", "-n", ns["s"], "link", "set", "eth0", "up"])
        r.run(["ip", "-n", ns["n"], "-batch", "-"], input="link set c0 up\nlink set s0 up\nlink set lo up\n")
        start_ovs(self.s, ns["n"], self.paths)
        pids = pids_of(self.s.state.live(self.s.owner), f"{ns['n']}/ovs-vswitchd")
        if not pids:
            raise ToolError("calibration: ovs-vswitchd was not recorded")
        self.pid = pids[0]
        r.run(self.paths.vsctl(
            "add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, f"datapath_type={self.dp_type}", "fail_mode=secure",
            "other_config:disable-in-band=true",
            "--", "add-port", BRIDGE, "c0", "--", "set", "Interface", "c0", "ofport_request=1",
            "--", "add-port", BRIDGE, "s0", "--", "set", "Interface", "s0", "ofport_request=2"))
        self.appctl("upcall/disable-megaflows")
        self.appctl("upcall/set-flow-limit", "200000")

    @property
    def mgmt(self) -> str:

        return OvsTarget(rundir=str(self.paths.dir)).bridge_socket(BRIDGE)

    def appctl(self, *args: str) -> str:
        return self.r.run(["ovs-appctl", "-t", self.paths.vswitchd_ctl, "--timeout=10", *args], timeout=30).stdout

    def program(self, tables: int) -> int:
        """Install a `tables`-long pipeline; returns its subtables per table."""
        flows = pipeline(tables, out_port=2)
        path = self.paths.dir / "cal-flows.txt"
        path.write_text("\n".join(flow_lines(flows)) + "\n")
        self.r.run(["ovs-ofctl", "--bundle", "replace-flows", self.mgmt, str(path)], timeout=60)
        self.appctl("revalidator/purge")           # no cached translation of an older pipeline
        return subtables_per_table(flows)

    # -- measurement -----------------------------------------------------------------------
    def counters(self) -> tuple[int, int, int]:
        """(datapath misses, lost upcalls, table lookups). Every lookup matches exactly one flow (a
        table's default at worst), so the flows' packet counters sum to the lookups: one dump
        gives them all, where `dump-tables` would need summing over 254 tables."""

        dps = parse_dpctl_show(self.appctl("dpctl/show")).records
        flows = parse_dump_flows(self.r.run(["ovs-ofctl", "dump-flows", self.mgmt]).stdout).records
        return (sum(d.missed for d in dps), sum(d.lost for d in dps), sum(f.n_packets for f in flows))

    def idle_rate(self, seconds: float) -> tuple[int, float]:
        a, t = self._cpu(), time.monotonic()
        time.sleep(seconds)
        return self._cpu() - a, time.monotonic() - t

    def _cpu(self) -> int:
        v = cpu_ns(self.pid) if self.pid else None
        if v is None:
            raise ToolError("calibration: ovs-vswitchd's CPU time is unreadable (schedstat)")
        return v

    def run(self, tables: int, packets: int, burst: int, idle: tuple[int, float], sport: int) -> OvsSample:
        """`packets` NEW UDP datagrams client → server; ovs-vswitchd's busy CPU over them."""
        miss0, lost0, look0 = self.counters()
        c0, t0 = self._cpu(), time.monotonic()
        self.r.run([sys.executable, "-m", "cnitrace.traffic.flood", CLIENT, SERVER, str(DPORT), str(sport),
                    str(burst), str(max(packets // burst, 1))], netns=self.ns["c"], timeout=60)
        self.appctl("revalidator/wait")            # every queued upcall handled, stats pushed
        c1, t1 = self._cpu(), time.monotonic()
        miss1, lost1, look1 = self.counters()
        misses, lookups = miss1 - miss0, look1 - look0
        if misses < packets // 2:
            raise ToolError(f"calibration: only {misses} of {packets} packets reached ovs-vswitchd "
                            f"({lost1 - lost0} upcalls lost)")
        walked = lookups / misses
        if abs(walked - tables) > 0.1 * tables + 0.5:
            raise ToolError(f"calibration: packets walked {walked:.1f} tables, expected {tables}")
        return OvsSample(tables, misses, busy_ns(c1 - c0, t1 - t0, *idle))


def measure(tables: Sequence[int] = TABLES, packets: int = 3000, repeats: int = 3, burst: int = 200,
            datapath_type: str = "netdev", runner: Runner = DEFAULT_RUNNER,
            deadline_s: float = 60.0) -> OvsCalibration:
    """Measure ns per OpenFlow table per first packet: `repeats` rounds over the pipeline lengths,
    after one unrecorded warm-up run (the first run after start pays for cold caches)."""
    t_start = time.monotonic()
    samples: list[OvsSample] = []
    subtables = 1
    with Session(runner=runner) as s:
        b = _Bench(s, runner, datapath_type)
        b.build()
        b.program(max(tables))
        sport = 20_000
        b.run(max(tables), min(packets, 1000), burst, (0, 1.0), sport)
        idle = b.idle_rate(0.3)
        for r in range(repeats):
            for k in (tables if r % 2 == 0 else tables[::-1]):    # serpentine: slow drift cancels
                if time.monotonic() - t_start > deadline_s:
                    raise ToolError(f"calibration: OVS micro-benchmark exceeded {deadline_s:g} s")
                subtables = b.program(k)
                sport = 20_000 + (sport - 20_000 + packets) % 40_000
                samples.append(b.run(k, packets, burst, idle, sport))
    return calibration_from_samples(samples, datapath_type, subtables, platform.release(), cpu_model(),
                                    time.monotonic() - t_start)


def datapath_type_of(ovs: Any, runner: Runner = DEFAULT_RUNNER, known: str | None = None) -> str:
    """The datapath type of the OVS instance being profiled (`known` when the lab recorded it):
    its bridges' datapath_type, where an empty value means the kernel datapath ("system")."""
    if known:
        return known

    done = runner.run(["ovs-vsctl", f"--db={ovs.db_remote}", "--timeout=5", "--format=json",
                       "--columns=name,datapath_type", "list", "Bridge"], check=False)
    try:
        kinds = {k or "system" for k in parse_ovs_bridges(done.stdout).values()}
    except ValueError:
        kinds = set()
    return "netdev" if kinds == {"netdev"} else "system"


def cached_or_measure(datapath_type: str = "netdev", cache: Path | None = None, **kw: Any) -> OvsCalibration:
    """The cached calibration for this kernel+CPU+datapath type, or a fresh measurement (then cached)."""
    key = cache_key(platform.release(), cpu_model(), datapath_type)
    return cached(cache or CACHE, key, OvsCalibration.from_json, lambda: measure(datapath_type=datapath_type, **kw))

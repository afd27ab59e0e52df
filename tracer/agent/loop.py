"""`cnitrace agent`: rolling profile windows on a node, probes attached once.

The profile's own pieces, reused: the Selection (profile.target), CNI detection and the cached
calibration (profile.run, once at start), the collectors' snapshot, the transit/drop probes,
the netfilter brackets and the tc/XDP program timer (profile.window), attribution and the
validated document (profile.document). What differs is the window, made for running for days:

- probes stay attached across windows: at each boundary their aggregates are read and zeroed
  (ProbeSet.reset, Brackets.reset; the program timer has no reset, so its histograms are
  differenced), so attaching (~2 s, a BTF load and a compile) is paid once, at start and at a
  reload; the cost: a packet crossing the boundary between the read and the zeroing is not
  timed (microseconds per window);
- one snapshot per boundary: the window's `after` is the next window's `before`;
- no traffic, no calibration and no mid-window rule snapshots (the profile's MidSampler may
  take up to 10 % of a CPU; here changes are still found between the two edge snapshots);
- nothing is kept across windows but the last document, the last snapshot and the exporter's
  capped families (bounded memory).

Every object is created inside one Session (records first), so SIGTERM/SIGINT detach
everything and `cnitrace cleanup` removes what a kill -9 left.
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import socket
import threading
import time
from typing import Any, Callable

from cnitrace.calibrate import rules as calibrate_rules
from cnitrace.collectors.bpfprog.stats import StatsUnavailable, stats_enabled
from cnitrace.core.errors import CnitraceError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Interrupted, Session
from cnitrace.core.state import StateFile
from cnitrace.node import checks
from cnitrace.probes.histogram import Histogram
from cnitrace.probes.specs import NF_BPF
from cnitrace.profile import run as profile_run
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.document import attribute, build_document
from cnitrace.profile.ovs import idle_cpu, kernel_datapath, ovs_calibration, ovs_cpu_reading, ovs_target
from cnitrace.profile.target import Target, resolve_target
from cnitrace.profile.window import (Counters, Window, _probe_stages, _start_probes, backend_used, backends_forecast,
                                     bracket_overhead, netfilter_backend, snapshot_counters, start_brackets,
                                     start_progtime)
from cnitrace.reports.metrics import DEFAULT_LABEL_CAP, Exporter

DEFAULT_WINDOW_S = 30.0
MIN_WINDOW_S = 0.1
NO_MID = {"skipped": "agent: no mid-window rule snapshots (changes are found between the window's edges)"}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    ifaces: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    lab: str | None = None
    listen: tuple[str, int] = ("127.0.0.1", 9477)
    window: float = DEFAULT_WINDOW_S
    windows: int | None = None          # stop after this many windows (tests, soak); None: until signalled
    pod_labels: bool = False
    label_cap: int = DEFAULT_LABEL_CAP
    calibrate: bool = True
    ready_file: str | None = None       # written once the first window starts (scripts, tests)

    def validate(self) -> None:
        if not MIN_WINDOW_S <= self.window <= 3600:
            raise UsageError(f"--window must be between {MIN_WINDOW_S:g} and 3600 seconds")
        if self.windows is not None and self.windows < 1:
            raise UsageError("--windows must be at least 1")
        if self.label_cap < 1:
            raise UsageError("--label-cap must be at least 1")
        self.profile_config().validate()

    def profile_config(self) -> ProfileConfig:
        """The profile each window is: no traffic, the window's length."""
        return ProfileConfig(self.ifaces, self.netns, self.lab, duration=self.window, traffic="none",
                             calibrate=self.calibrate)


def cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (the collectors' iptables-save, bpftool...)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rss_bytes() -> int:
    """Resident set size now (/proc/self/statm), for /healthz and the soak test."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def prog_key(f: Any) -> tuple:
    return (f.map, f.key.get("prog_id"), f.key.get("netns"), f.key.get("ifindex"))


def progtime_delta(now: list[Any], prev: dict[tuple, Histogram]) -> tuple[list[Any], dict[tuple, Histogram]]:
    """The program timer's figures over one window: cumulative histograms minus the last read."""
    out = []
    for f in now:
        old = prev.get(prog_key(f))
        hist = f.hist - old if old is not None and old.count <= f.hist.count else f.hist
        if hist.count:
            out.append(dataclasses.replace(f, hist=hist))
    return out, {prog_key(f): f.hist for f in now}


class Probes:
    """Everything attached for the agent's life (until a reload): bpf_stats, transit/drops, the
    netfilter brackets, the program timer; read per window."""

    def __init__(self, session: Session, target: Target, before: Counters, host: Any, runner: Runner,
                 say: Callable[[str], None]):
        self.warnings: list[str] = []
        self.backends = backends_forecast(host)
        self.overhead: dict[str, Any] = {}
        try:
            cm = stats_enabled(session)
            self.overhead["bpf_stats"] = cm.__enter__()
            session.on_exit(lambda: cm.__exit__(None, None, None))
        except StatsUnavailable as exc:
            self.overhead["bpf_stats"] = f"unavailable: {exc.message}"
        t0 = time.monotonic()
        stages = _probe_stages(self.backends, {}, kernel_datapath(before.ovs))
        self.probes = _start_probes(stages, target, {}, session, host, runner) if stages else None
        if self.probes is not None:
            say(f"probes: {', '.join(stages)}")
            for stage, ch in self.probes.choices.items():
                self.backends[stage] = backend_used(ch, None, self.backends.get(stage))
        self.brackets = (start_brackets(target, self.backends, session, runner, self.warnings, say)
                         if netfilter_backend(self.backends, {}) == NF_BPF else None)
        if self.brackets is not None:
            session.on_exit(self.brackets.close)
        self.progtime = start_progtime(before, self.backends, session, host, runner, self.warnings, say)
        if self.progtime is not None:
            session.on_exit(self.progtime.close)
        self.overhead["attach_s"] = round(time.monotonic() - t0, 3)
        self._prog_prev: dict[tuple, Histogram] = {}
        self._lost = self._untimed = 0
        self.read()          # zero what attaching saw: the first window starts clean

    def read(self) -> tuple[list[Any], int, dict[str, Any]]:
        """The figures since the last read (then zeroed), events lost since, and the probes' overhead."""
        figures: list[Any] = []
        over: dict[str, Any] = {}
        lost = 0
        if self.progtime is not None:
            figures_now, self._prog_prev = progtime_delta(self.progtime.snapshot(), self._prog_prev)
            figures += figures_now
        if self.brackets is not None:
            bf = self.brackets.figures()
            over["nf_brackets"] = bracket_overhead(self.brackets, bf)
            self.brackets.reset()
            figures += bf
        if self.probes is not None:
            figures += self.probes.snapshot()
            self.probes.reset()
            total, untimed = int(self.probes.lost()), int(self.probes.untimed())
            lost, self._lost = max(total - self._lost, 0), total
            over["transit_untimed"], self._untimed = max(untimed - self._untimed, 0), untimed
        return figures, lost, over


class Agent:
    """Start (select, detect, calibrate once, attach), then window() until stopped."""

    def __init__(self, cfg: AgentConfig, *, runner: Runner = DEFAULT_RUNNER,
                 say: Callable[[str], None] = lambda m: None):
        self.cfg = cfg
        self.runner = runner
        self.say = say
        self.exporter = Exporter(pod_labels=cfg.pod_labels, label_cap=cfg.label_cap)
        self.started_at, self._mono_start = time.time(), time.monotonic()   # wall-clock window starts
        self.windows_total = 0
        self.last_doc: dict[str, Any] | None = None
        self.last_window_at: float | None = None     # monotonic end of the last window
        self.reload_requested = threading.Event()
        self.stop_requested = threading.Event()
        self._doc_lock = threading.Lock()
        self.session: Session | None = None
        self.cal: Any = None
        self.ovs_cal: Any = None
        self._cal_backend: str | None = None
        self.host: Any = None

    # -- lifetime

    def start(self) -> None:
        self.cfg.validate()
        StateFile().check_writable()
        self.host = checks.host(self.runner)
        self._attach()

    def _attach(self) -> None:
        """Resolve the selection, calibrate if needed, open a Session and attach the probes."""
        cfg = self.cfg.profile_config()
        self.target = resolve_target(cfg, self.runner)
        self.say(f"selection: {', '.join(i['name'] for i in self.target.interfaces)}")
        self.cnis, backend = profile_run.detect(self.target, self.runner)
        self.warnings: list[str] = []
        if cfg.calibrate and (self.cal is None or backend != self._cal_backend or not calibrate_rules.CACHE.exists()):
            self.cal = profile_run.calibration(backend, self.runner, self.say)
            self._cal_backend = backend
            self.ovs_cal = ovs_calibration(self.target, self.runner, self.say, self.warnings)
        self.ovs = ovs_target(self.target)
        self.ovs_idle = idle_cpu(self.ovs, 0.5) if self.ovs is not None else None   # once: no traffic is sent
        session = Session(runner=self.runner)
        session.__enter__()
        self.session = session
        try:
            self.before = snapshot_counters(self.target, self.runner, self.ovs)
            self.probes = Probes(session, self.target, self.before, self.host, self.runner, self.say)
            self.before = snapshot_counters(self.target, self.runner, self.ovs)   # after attaching: clean edges
        except BaseException:
            self.close()
            raise
        self.ovs_cpu0 = ovs_cpu_reading(self.ovs)
        self.window_start = time.monotonic()
        self.cpu0 = cpu_seconds()

    def close(self) -> None:
        """Detach everything (idempotent)."""
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def reload(self) -> None:
        """SIGHUP: re-read the selection (a lab's pods, an interface glob's matches) and re-attach;
        the calibration is kept unless its cache is gone."""
        self.say("reload: re-reading the selection")
        self.close()
        self._attach()

    # -- the window

    def wait(self) -> bool:
        """Sleep until the window's end, a reload or a stop; True when the window ran to its end."""
        end = self.window_start + self.cfg.window
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if self.stop_requested.is_set() or self.reload_requested.is_set():
                return False
            time.sleep(min(left, 0.1))

    def window(self) -> dict[str, Any]:
        """Close the current window: snapshot, read the probes, attribute, document; the next starts."""
        cfg = self.cfg.profile_config()
        t0 = time.monotonic()
        after = snapshot_counters(self.target, self.runner, self.ovs, maps=True)
        snapshot_s = time.monotonic() - t0
        figures, lost, over = self.probes.read()
        ovs_cpu1 = ovs_cpu_reading(self.ovs)
        seconds = t0 - self.window_start      # snapshot to snapshot: the interval counters and probes cover
        overhead = {**self.probes.overhead, **over, "snapshot_s": round(snapshot_s, 4), "mid_snapshots": NO_MID}
        win = Window(self.before, after, figures, copy.deepcopy(self.probes.backends), seconds, ovs_idle=self.ovs_idle,
                     ovs_cpu=(self.ovs_cpu0, ovs_cpu1), lost=lost, overhead=overhead,
                     warnings=list(self.probes.warnings))
        result = attribute(cfg, self.target, win, self.cal, self.ovs_cal)
        doc = build_document(cfg, self.target, self.cnis, self.started_at + (self.window_start - self._mono_start), win,
                             result, self.cal, self.ovs_cal, [*self.warnings, *win.warnings, *result["warnings"]])
        cpu = cpu_seconds()
        doc["overhead"]["agent_cpu_s"] = round(cpu - self.cpu0, 4)
        self.cpu0 = cpu
        self.windows_total += 1
        doc["agent"] = {"window": self.cfg.window, "windows_total": self.windows_total,   # seconds; count so far
                        "started_at": self.started_at, "node": socket.gethostname()}
        self.exporter.add(doc)
        with self._doc_lock:
            self.last_doc = doc
        self.before, self.ovs_cpu0 = after, ovs_cpu1
        self.window_start = t0                  # the next window began at this snapshot (windows stay periodic)
        self.last_window_at = time.monotonic()
        return doc

    def document(self) -> dict[str, Any] | None:
        with self._doc_lock:
            return self.last_doc

    def run(self, on_window: Callable[[dict[str, Any]], None] = lambda d: None,
            on_ready: Callable[[], None] = lambda: None) -> int:
        """Windows until --windows is reached or a signal stops it; returns the windows completed."""
        self.start()
        try:
            on_ready()
            while self.cfg.windows is None or self.windows_total < self.cfg.windows:
                try:
                    full = self.wait()
                except Interrupted:
                    break
                if self.stop_requested.is_set():
                    break
                if not full and self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                    continue
                try:
                    on_window(self.window())
                except Interrupted:
                    break
                except CnitraceError as exc:      # one failed window (a namespace vanished...) is not fatal
                    self.say(f"window failed: {exc.message}")
                    self.before = snapshot_counters(self.target, self.runner, self.ovs)
                    self.window_start = time.monotonic()
            return self.windows_total
        finally:
            self.close()

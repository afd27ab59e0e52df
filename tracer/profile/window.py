"""The profiling window: snapshots of every collector before and after, probes attached in
between, and the traffic (or a wait). Everything attached belongs to one Session, so Ctrl-C
ends the window early and still leaves the node as it was found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from typing import Any, Callable, Sequence

from cnitrace.attribution.datapath import cpu_ns
from cnitrace.collectors import registry
from cnitrace.collectors.bpfprog.stats import StatsUnavailable, stats_enabled
from cnitrace.collectors.bpfprog.parse import BpfMap, BpfProg, parse_map_show
from cnitrace.collectors.iptables.parse import Rule
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of
from cnitrace.collectors.nftables.parse import NftRule
from cnitrace.collectors.nftables.source import NftablesCollector
from cnitrace.core import faults
from cnitrace.core.errors import CnitraceError
from cnitrace.core.runner import Runner
from cnitrace.core.session import Interrupted, Session
from cnitrace.probes.ladder import STAGES, choose_all
from cnitrace.probes.progtime import ProgTime
from cnitrace.probes.nfbracket import FLOOR_MAP, Brackets
from cnitrace.probes.runtime import Filter, ProbeSet, netns_inode
from cnitrace.probes.specs import COUNTERS, NF_BPF, NF_HOOKS, SPECS
from cnitrace.profile import l7
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.ovs import (idle_cpu, kernel_datapath, ovs_cpu_reading, ovs_target, router_counters,
                                  router_datapaths, vswitchd_pid)
from cnitrace.profile.target import Target
from cnitrace.traffic import generators as traffic
from cnitrace.traffic import replay as replay_traffic

MEASURING = ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint", "nf_bpf")
NFPROTO_IPV4 = 2


@dataclasses.dataclass
class Counters:
    """Every collector's snapshot at one moment; iptables and nft per namespace (HOST '' for the host)."""
    iptables: dict[str, Any]
    nft: dict[str, Any]
    bpf: Any = None
    ovs: Any = None
    conntrack: Any = None
    ovs_cpu_ns: int | None = None
    rx_packets: dict[int, int] = dataclasses.field(default_factory=dict)   # entry ifindex -> rx packets
    at: float | None = None                   # monotonic time the snapshot was complete
    bpf_maps: tuple[Any, ...] = ()            # the programs' maps (names, ids) when `bpf` was taken without maps
    link_packets: dict[str, int] = dataclasses.field(default_factory=dict)   # rule netns -> rx + tx, all links
    router_dp: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)  # netns -> OVS datapaths no vswitchd drives


def rx_packets(target: Target, runner: Runner) -> dict[int, int]:
    """Received-packet counters of the entry interfaces: how many packets entered the node side."""
    out: dict[int, int] = {}
    entry = target.entry_ifindexes
    for i in target.selection.interfaces:
        if i.ifindex not in entry:
            continue
        done = runner.run(["ip", "-s", "-j", "link", "show", "dev", i.name], netns=i.netns or None, check=False)
        try:
            out[i.ifindex] = int(json.loads(done.stdout)[0]["stats64"]["rx"]["packets"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return out


def link_packets(namespaces: Sequence[str], runner: Runner) -> dict[str, int]:
    """Packets received plus sent on every link of each namespace (one `ip -s link` each): no chain
    there can have seen more in a window (attribution.changes.bound_work), and what weighs a
    mid-window interval (attribution.changes.treatment)."""
    out: dict[str, int] = {}
    for ns in namespaces:
        done = runner.run(["ip", "-s", "-j", "link", "show"], netns=ns or None, check=False)
        try:
            out[ns] = sum(int(x["stats64"]["rx"]["packets"]) + int(x["stats64"]["tx"]["packets"])
                          for x in json.loads(done.stdout))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def map_list(bpf: Any, runner: Runner) -> tuple[Any, ...]:
    """The maps' names and ids (`bpftool map show`, no dump) when the bpf snapshot has programs but
    no maps: what tells a recreated map from the same one (attribution.changes.bpf_changes)."""
    if bpf is None or not any(isinstance(r, BpfProg) for r in bpf.records) or any(isinstance(r, BpfMap)
                                                                                for r in bpf.records):
        return ()
    done = runner.run(["bpftool", "-j", "map", "show"], check=False)
    return parse_map_show(done.stdout).records if done.ok else ()


NETFILTER_AND_BPF = ("iptables", "nftables", "bpf", "conntrack")


def snapshot_counters(target: Target, runner: Runner, ovs: Any = None, maps: bool = False,
                      router_netns: Sequence[str] = ()) -> Counters:
    """Every collector once, through the one registry, for the target's Selection. Map dumps
    (O(entries)) only when asked: pressure is a gauge read after. `router_netns`: namespaces
    whose OVS kernel datapath a CNI's router drives without ovs-vswitchd (weave fastdp)."""
    ctx = registry.Context(selection=target.selection, runner=runner, ovs=ovs,
                           options=registry.Options(families=("ipv4",), maps=maps, megaflows=False))
    snaps = registry.snapshot(target.selection, ctx, [*NETFILTER_AND_BPF, *(["ovs"] if ovs is not None else [])])
    pid = vswitchd_pid(ovs) if ovs is not None else None
    return Counters(registry.per_netns(snaps["iptables"]), registry.per_netns(snaps["nftables"]), snaps["bpf"],
                    snaps.get("ovs"), snaps["conntrack"], cpu_ns(pid) if pid else None, rx_packets(target, runner),
                    time.monotonic(), map_list(snaps["bpf"], runner), link_packets(target.rule_netns, runner),
                    router_counters(router_netns, runner))


# Mid-window rule snapshots (attribution.changes re-bases counters that restarted on them). One costs,
# measured on the 2-core dev host under load (dump + parse + `ip -s link`, median of 7): calico lab legacy
# 2,061 rules 53 ms, 4,861 rules 176 ms; iptables-nft 1,000 policy rules (4,122 with nft's view) 317 ms,
# most of it parsing `nft -j`. So never more than MID_DUTY of one CPU: the interval grows with a snapshot's
# cost; above MID_MAX_RULES none is taken (the profile says so), and at most MID_MAX_SAMPLES are kept
# (memory: each holds the whole ruleset).
MID_INTERVAL_S = 0.5
MID_DUTY = 0.1
MID_MAX_RULES = 5000
MID_MAX_SAMPLES = 40


def mid_scope(before: Counters) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Per rule namespace: the iptables backends that hold rules, and whether nft holds any rules
    (native, or iptables-nft's: their handles show a replacement the counters may not)."""
    out = {}
    for ns, snap in before.iptables.items():
        backends = tuple(sorted({r.backend for r in snap.records if isinstance(r, Rule) and r.backend}))
        nft = before.nft.get(ns)
        out[ns] = (backends, nft is not None and any(isinstance(r, NftRule) for r in nft.records))
    return out


def rule_snapshot(scope: dict[str, tuple[tuple[str, ...], bool]], runner: Runner) -> Counters:
    """The rule namespaces' iptables (ipv4, the backends in use) and nft rules, and their links'
    packets: a mid-window snapshot."""
    ipt, nft = {}, {}
    for ns, (backends, with_nft) in scope.items():
        if backends:
            ipt[ns] = IptablesCollector(runner, netns=ns, backends=backends, families=("ipv4",)).snapshot()
        if with_nft:
            nft[ns] = NftablesCollector(runner, netns=ns).snapshot()
    links = link_packets(list(scope), runner)
    return Counters(ipt, nft, at=time.monotonic(), link_packets=links)


def rules_watched(before: Counters) -> int:
    """iptables and nft rules in the rule namespaces: what one mid-window snapshot has to dump."""
    return sum(sum(1 for r in s.records if isinstance(r, (Rule, NftRule)))
               for part in (before.iptables, before.nft) for s in part.values())


def mid_skipped(before: Counters) -> str | None:
    """Why no mid-window snapshot is taken for these namespaces (None: they are)."""
    rules = rules_watched(before)
    if rules > MID_MAX_RULES:
        return f"{rules:,} rules (> {MID_MAX_RULES:,})"
    if not any(b or n for b, n in mid_scope(before).values()):
        return "no rules to watch"
    return None


class MidSampler:
    """Rule snapshots every MID_INTERVAL_S (or longer: see MID_DUTY) in a thread while the window runs."""

    def __init__(self, before: Counters, runner: Runner, duration: float):
        self.scope = mid_scope(before)
        self.runner = runner
        self.rules = rules_watched(before)
        self.interval = max(MID_INTERVAL_S, duration / MID_MAX_SAMPLES)
        self.samples: list[Counters] = []
        self.costs: list[float] = []
        self.skipped = mid_skipped(before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cnitrace-mid-snapshots", daemon=True)

    def start(self) -> "MidSampler":
        if self.skipped is None:
            self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait) and len(self.samples) < MID_MAX_SAMPLES:
            t0 = time.monotonic()
            try:
                snap = rule_snapshot(self.scope, self.runner)
            except CnitraceError:
                continue
            self.samples.append(snap)
            self.costs.append(time.monotonic() - t0)
            wait = max(self.interval, self.costs[-1] / MID_DUTY)

    def stop(self) -> list[Counters]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        return list(self.samples)

    def overhead(self) -> dict[str, Any]:
        """What the mid-window snapshots cost (the tool's overhead section)."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        c = self.costs
        return {"count": len(c), "interval_s": round(self.interval, 3), "rules": self.rules,
                "mean_s": round(sum(c) / len(c), 4) if c else None, "max_s": round(max(c), 4) if c else None}


def latency_pair(target: Target, seconds: int, runner: Runner) -> tuple[Any, Any]:
    """One-at-a-time GET / latency through the proxy (from the client pod) and direct (from the
    node's own namespace: node-originated traffic is not forwarded, so neither the policy nor the
    redirect applies). Concurrency 1, so queueing under load does not masquerade as detour time."""
    topo = target.lab.topo
    node = dataclasses.replace(topo.clients[0], name="node", netns=topo.node_netns, ip=topo.node_ip)
    through = traffic.http(topo, seconds, concurrency=1, runner=runner)
    direct = traffic.http(topo, seconds, concurrency=1, client=node, runner=runner)
    return through, direct


def proxy_connections(figures: Sequence[Any], target: Target) -> int:
    """Connections accepted in the node namespace (where the lab's proxy listens), seen by the socket probe."""
    node_ns = netns_inode(target.lab.topo.node_netns)
    return sum(f.hist.count for f in figures if f.stage == "l7_detour" and f.map == "l7_life"
               and f.key.get("role") == "server" and f.key.get("netns") == node_ns)


def start_progtime(before: Counters, backends: dict[str, dict[str, Any]], session: Session, host: Any,
                   runner: Runner, warnings: list[str], say: Callable[[str], None]) -> Any:
    """tc_bpf for the window: fentry on the selected tc/XDP programs (or the tc classify kprobe)
    where the host allows; the backends entry then says, per program, what was attached or why
    bpf_stats stay its only figure. A failure to attach is a warning, never a failed profile."""
    entry = backends.get("tc_bpf")
    atts = [a for a in (before.bpf.meta.get("attachments", []) if before.bpf is not None else [])
            if a.get("kind") in ("tc", "xdp")]
    if not entry or entry.get("backend") not in ("fentry", "kprobe", "counters") or not atts:
        return None
    if entry["backend"] != "counters":
        say("probes: tc_bpf (fentry on the selected tc/XDP programs)")
    pt = ProgTime(atts, session=session, host=host, runner=runner)
    try:
        plan = pt.start()
        backend, reason = plan.backend, plan.reason
    except CnitraceError as exc:
        pt, backend, reason = None, "counters", f"attaching failed ({exc.message}): bpf_stats only"
        warnings.append(f"tc_bpf: {reason}")
    rung = next(r for r in STAGES["tc_bpf"].rungs if r.backend == backend)
    entry.update(backend=backend, reason=reason,
                 signals={"measured": list(rung.measured), "modelled": list(rung.modelled)})
    return pt


@contextlib.contextmanager
def _bpf_stats(session: Session) -> Any:
    """bpf_stats on for the window only (BPF_ENABLE_STATS fd, else the sysctl, restored)."""
    try:
        cm = stats_enabled(session)
        mode = cm.__enter__()
    except StatsUnavailable as exc:
        yield f"unavailable: {exc.message}"
        return
    try:
        yield mode
    finally:
        cm.__exit__(None, None, None)


def backends_forecast(host: Any) -> dict[str, dict[str, Any]]:
    """Each stage's backend as the ladder forecasts it on this host, and why (the document's
    backends section; the window updates the stages whose probes ran with what they used)."""
    out = {}
    for c in choose_all(host):
        out[c.stage] = {"backend": c.backend or "none", "reason": c.reason,
                        "signals": {"measured": list(c.measured), "modelled": list(c.modelled)}}
    return out


def _probe_stages(backends: dict[str, dict[str, Any]], force: dict[str, str] | None = None,
                  kernel_ovs: bool = False) -> list[str]:
    """Stages to attach: those the ladder can measure here, and pinned ones (a pinned backend the
    host cannot give fails with one line when the probes start); counters pins attach nothing. The
    OVS kernel stage only when the selection's bridge uses the kernel datapath: netdev bridges
    (the userspace datapath) never enter it, and their time is ovs-vswitchd's CPU instead."""
    force = force or {}
    return [s for s in ("transit", "drops", "netfilter", "ovs_kernel")
            if s in SPECS and force.get(s) != COUNTERS and (s != "ovs_kernel" or kernel_ovs)
            and (s in force or backends.get(s, {}).get("backend") in MEASURING)
            and not (s == "netfilter" and netfilter_backend(backends, force) == NF_BPF)]


def netfilter_backend(backends: dict[str, dict[str, Any]], force: dict[str, str]) -> str | None:
    """The netfilter stage's backend: pinned, else the ladder's."""
    return force.get("netfilter") or backends.get("netfilter", {}).get("backend")


def start_brackets(target: Target, backends: dict[str, dict[str, Any]], session: Session, runner: Runner,
                   warnings: list[str], say: Callable[[str], None]) -> Brackets | None:
    """Bracket probes around every ipv4 table registered in the selection's namespaces, timing only
    packets that entered on the entry interfaces (the packets transit times, so the two compare).
    A failure to attach is a warning and the stage falls back to counters."""
    say("probes: netfilter (BPF netfilter brackets around each table)")
    br = Brackets(selection=target.selection, entry=target.entry_ifindexes, session=session, runner=runner,
                  pfs=(NFPROTO_IPV4,))
    entry = backends.setdefault("netfilter", {})
    try:
        br.attach()
    except CnitraceError as exc:
        why = f"bracket probes failed to attach ({exc.message}): rule counters only"
        warnings.append(f"netfilter: {why}")
        entry.update(backend=COUNTERS, reason=why,
                     signals={"measured": [], "modelled": ["ns per table", "ns per chain/rule"]})
        return None
    tables = sorted({f"{NF_HOOKS.get(b.hook, b.hook)} {' + '.join(m.label for m in b.members)}"
                     for _, _, b in br.slots if not b.floor})
    entry["hooks"] = {t: NF_BPF for t in tables}
    if br.refused:
        entry["refused"] = [dict(r.to_json(), netns=ns or None) for ns, r in br.refused]
        warnings += [f"netfilter: not bracketed: {r.to_json().get('table', '?')} ({r.reason})" for _, r in br.refused]
    return br


def bracket_overhead(br: Brackets, figures: Sequence[Any]) -> dict[str, Any]:
    """The brackets' own cost (the empty pair's time, already subtracted from every table) and
    how many table brackets a packet could cross: what the probes add to transit."""
    floors = [f.hist.mean for f in figures if f.map == FLOOR_MAP and f.hist.count]
    return {"brackets": sum(1 for _, _, b in br.slots if not b.floor),
            "floor_ns": round(sum(floors) / len(floors), 1) if floors else None,
            "untimed": br.lost()}


def backend_used(choice: Any, forced: str | None, ladder: dict[str, Any] | None) -> dict[str, Any]:
    """The backends section entry for a stage whose probes ran: what each hook actually used and
    why (the ladder's entry is a forecast; the hooks' backends are what measured)."""
    signals = dict((ladder or {}).get("signals") or {"measured": [], "modelled": []})
    if choice.backend == COUNTERS:     # nothing attached after all: every figure is modelled
        signals = {"measured": [], "modelled": [*signals.get("measured", []), *signals.get("modelled", [])]}
    return {"backend": choice.backend or "none",
            "reason": (f"pinned with --probe-backend {choice.stage}={forced}; " if forced else "") + choice.reason,
            "hooks": dict(choice.hooks), "signals": signals}


def rule_ranges_of(counters: Counters | None) -> list[tuple[str, int, int]]:
    """Destination-port ranges the rule namespaces' iptables rules match (both backends' dumps)."""
    if counters is None:
        return []

    return traffic.rule_port_ranges([r.spec for snap in counters.iptables.values() for r in ruleset_of(snap).rules])


def run_traffic(kind: str, target: Target, duration: float, runner: Runner, *, before: Counters | None = None,
                ports: str | None = None) -> Any:
    if kind == "none":
        return None
    if target.peer is not None:     # toward the user's target, covering the rules' port ranges
        return traffic.toward(kind, target.peer, max(1, int(duration)), rule_ranges=rule_ranges_of(before),
                              ports=traffic.parse_ports(ports) if ports else (), runner=runner)
    topo = target.lab.topo
    if kind == "probe" and "replay" in topo.extra:     # a replayed ruleset: probes from its rules
        return replay_traffic.replay_probes(topo, topo.extra["replay"]["probes"], runner=runner)
    if kind == "probe":
        return traffic.crafted_probes(topo, runner=runner)
    if kind == "stream":
        return traffic.stream(topo, max(1, int(duration)), runner=runner)
    if kind == "rr":
        return traffic.rr(topo, max(1, int(duration)), runner=runner)
    return traffic.http(topo, max(1, int(duration)), runner=runner)



@dataclasses.dataclass
class Window:
    """What one window saw: counters before and after, probe figures, traffic and what it cost."""
    before: Counters
    after: Counters
    figures: list[Any]
    backends: dict[str, dict[str, Any]]
    seconds: float
    traffic: Any = None                       # the traffic generator's result, if any
    through: Any = None                       # L7: requests through the proxy / direct (concurrency 1)
    direct: Any = None
    ovs_idle: tuple[int, float] | None = None
    ovs_cpu: tuple[Any, Any] = (None, None)   # ovs-vswitchd CPU readings at the window's start and end
    lost: int = 0
    interrupted: bool = False
    overhead: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    mid: list[Counters] = dataclasses.field(default_factory=list)   # rule snapshots taken during the window
    l7_parts: dict[str, Any] | None = None    # L7: the timed run's detour in parts (cnitrace.profile.l7)


def _pin_counters(backends: dict[str, dict[str, Any]], force: dict[str, str]) -> None:
    for stage, backend in force.items():
        if backend == "counters" and stage in backends:
            backends[stage] = {"backend": "counters", "signals": {"measured": [], "modelled": []},
                               "reason": f"pinned with --probe-backend {stage}=counters: nothing attached"}


def _start_probes(stages: list[str], target: Target, force: dict[str, str], session: Session, host: Any,
                  runner: Runner) -> ProbeSet:
    # IPv4 only: the netfilter counters and brackets are read for ipv4, so transit counts the same
    # packets (a pod's IPv6 router solicitations and MLD reports would otherwise be timed too).
    probes = ProbeSet(stages, selection=target.selection, filt=Filter(ipv4=True),
                      force={s: b for s, b in force.items() if s in stages},
                      session=session, host=host, runner=runner)
    session.on_exit(probes.close)
    probes.start()
    return probes


def _start_l7_probes(target: Target, session: Session, host: Any, runner: Runner) -> ProbeSet:
    topo = target.lab.topo
    probes = ProbeSet(["l7_detour"], netns=[topo.clients[0].netns, topo.node_netns],
                      session=session, host=host, runner=runner)
    session.on_exit(probes.close)
    probes.start()
    return probes


def run_window(cfg: ProfileConfig, target: Target, backends: dict[str, dict[str, Any]], host: Any,
               runner: Runner, say: Callable[[str], None]) -> Window:
    """Snapshot, attach, load (or wait), snapshot; `backends` is updated with what actually ran."""
    warnings: list[str] = []
    overhead: dict[str, Any] = {}
    figures: list[Any] = []
    interrupted, traffic_result, through, direct, lost = False, None, None, None, 0
    l7_parts = None
    ovs = ovs_target(target)
    ovs_idle: tuple[int, float] | None = None
    with Session(runner=runner) as session, _bpf_stats(session) as stats_mode:
        if ovs is not None:
            ovs_idle = idle_cpu(ovs, 0.5)
        say("snapshots: every collector's counters before the window")
        t0 = time.monotonic()
        router_ns = router_datapaths(target, runner, ovs)
        before = snapshot_counters(target, runner, ovs, router_netns=router_ns)
        overhead["snapshot_s"] = round(time.monotonic() - t0, 4)
        # from the before snapshot on: what changes while probes attach changes the deltas too
        sampler = MidSampler(before, runner, cfg.duration + 5.0).start()
        session.on_exit(sampler.stop)
        overhead["bpf_stats"] = stats_mode
        force = dict(cfg.force)
        kernel_ovs = kernel_datapath(before.ovs) or bool(router_ns)
        stages = _probe_stages(backends, force, kernel_ovs)
        if "ovs_kernel" in force and not kernel_ovs:
            warnings.append("--probe-backend ovs_kernel ignored: the selection has no OVS kernel datapath")
        _pin_counters(backends, force)
        probes = l7_probes = None
        if stages:
            say(f"probes: {', '.join(stages)}")
            probes = _start_probes(stages, target, force, session, host, runner)
            overhead["attach_s"] = round(probes.attach_seconds or 0.0, 3)
        if target.lab is not None and target.lab.spec.l7 and backends.get("l7_detour", {}).get("backend") in MEASURING:
            say("probes: l7_detour (client and proxy sockets)")
            l7_probes = _start_l7_probes(target, session, host, runner)
        brackets = None
        if netfilter_backend(backends, force) == NF_BPF:
            brackets = start_brackets(target, backends, session, runner, warnings, say)
        progtime = start_progtime(before, backends, session, host, runner, warnings, say)
        if probes is not None or l7_probes is not None:
            say(f"probes attached: {', '.join([*stages, *(['l7_detour'] if l7_probes else [])])}")
        ovs_w0 = ovs_cpu_reading(ovs)
        t_window = time.monotonic()
        load = "" if cfg.traffic == "none" else f", {cfg.traffic} traffic" + (
            f" toward {cfg.target} from {cfg.from_netns or 'the host namespace'}" if cfg.target else "")
        say(f"window: {cfg.duration:g} s{load} (Ctrl-C ends it early and still reports)")
        faults.checkpoint("window")
        try:
            traffic_result = run_traffic(cfg.traffic, target, cfg.duration, runner, before=before, ports=cfg.ports)
            if traffic_result is not None and not traffic_result.ok:
                warnings.append(f"traffic: {traffic_result.metrics['error']}")
            if cfg.traffic == "http" and target.lab is not None and target.lab.spec.l7:
                say("L7 detour: request latency through the proxy vs direct (concurrency 1)")
                l7_mark = l7.mark(target, l7_probes)
                through, direct = latency_pair(target, 1, runner)
                l7_parts = l7.parts(target, l7_mark, l7_probes, through, direct, runner)
            remaining = cfg.duration - (time.monotonic() - t_window)
            if cfg.traffic == "none" and remaining > 0:
                time.sleep(remaining)
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
            warnings.append("interrupted: the window ended early; figures cover what was seen until then")
        finally:
            mid = sampler.stop()
        overhead["mid_snapshots"] = sampler.overhead()
        seconds = time.monotonic() - t_window
        ovs_w1 = ovs_cpu_reading(ovs)
        say("snapshots: every collector's counters after the window")
        after = snapshot_counters(target, runner, ovs, maps=True, router_netns=router_ns)
        if l7_probes is not None:
            figures += l7_probes.snapshot()
        if progtime is not None:
            figures += progtime.snapshot()
        if brackets is not None:
            bracket_figures = brackets.figures()
            figures += bracket_figures
            overhead["nf_brackets"] = bracket_overhead(brackets, bracket_figures)
        if probes is not None:
            figures += probes.snapshot()
            lost = probes.lost()
            overhead["transit_untimed"] = probes.untimed()
            for stage, ch in probes.choices.items():
                backends[stage] = backend_used(ch, force.get(stage), backends.get(stage))
    return Window(before, after, figures, backends, seconds, traffic_result, through, direct, ovs_idle,
                  (ovs_w0, ovs_w1), int(lost), interrupted, overhead, warnings, mid, l7_parts)

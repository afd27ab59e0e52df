"""`cnitrace profile`: one profiling window over a selection, attributed and documented.

The steps are fixed and visible: resolve what to watch → detect the CNI → choose a probe
backend per stage (the ladder) → calibrate → snapshot every collector → attach probes →
run traffic (or wait) → snapshot again → attribute → one versioned document. Ctrl-C during
the window ends it early and still produces the report; everything attached is detached
by the Session. Read-only towards a CNI: it reads counters and attaches probes, never
changes rules, flows or maps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import socket
import time
from typing import Any, Callable, Sequence

from cnitrace import __version__
from cnitrace.attribution.tree import Calib, bpf_stage, build_tree, netfilter_stage, proxy_stage, with_ovs_kernel
from cnitrace.calibrate.rules import cpu_model
from cnitrace.attribution.datapath import bpf_programs
from cnitrace.core.errors import UsageError
from cnitrace.attribution.netfilter import merge_drops
from cnitrace.probes.progtime import program_times
from cnitrace.profile.ovs import (OVS_USERSPACE_BACKEND, idle_cpu, kernel_datapath, ovs_calibration, ovs_cpu_reading,
                                  ovs_node_of, ovs_target, vswitchd_pid)
from cnitrace.reports.document import SCHEMA_VERSION, headline, validate
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Interrupted, Session
from cnitrace.attribution.figures import (conntrack_of, drops_of, maps_of, netfilter_hooks_of, netfilter_tables_of,
                                     ovs_kernel_of, proxy_detour_of, transit_of)

TRAFFIC = ("none", "probe", "stream", "rr", "http")
BACKEND_NAMES = {"fentry": "fentry", "kprobe": "kprobe", "tracepoint": "tracepoint",
                 "raw_tracepoint": "raw_tracepoint", "tp_btf": "tp_btf", "counters": "counters", None: "none"}
MEASURING = ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    ifaces: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    lab: str | None = None
    duration: float = 5.0
    traffic: str = "none"
    calibrate: bool = True
    target: str | None = None           # HOST[:PORT] or http://HOST[:PORT]/PATH the user named
    from_netns: str | None = None       # where the client toward `target` runs (None = the host's)
    ports: str | None = None            # extra ports for --traffic probe toward `target`
    force: tuple[tuple[str, str], ...] = ()   # (probe stage, backend) pinned by --probe-backend

    def validate(self) -> None:
        from cnitrace.traffic import generators as traffic
        if self.traffic not in TRAFFIC:
            raise UsageError(f"unknown --traffic {self.traffic!r}; choose from {', '.join(TRAFFIC)}")
        if not 0 < self.duration <= 3600:
            raise UsageError("--duration must be between 0 and 3600 seconds")
        if self.target and self.lab:
            raise UsageError("--target and --lab are exclusive: a lab's traffic goes to its own server pod")
        if self.target and self.traffic == "none":
            raise UsageError("--target needs --traffic probe|stream|rr|http")
        if self.traffic != "none" and not (self.lab or self.target):
            raise UsageError("--traffic needs --lab NAME or --target HOST[:PORT]: cnitrace only sends traffic "
                             "inside lab namespaces or to a target you name")
        if self.from_netns is not None and not self.target:
            raise UsageError("--from-netns needs --target: it is where the client toward the target runs")
        if self.ports is not None and not (self.target and self.traffic == "probe"):
            raise UsageError("--ports needs --traffic probe and --target")
        if self.traffic not in ("none", "probe") and self.duration > traffic.MAX_SECONDS:
            raise UsageError(f"--duration with --traffic {self.traffic} must be at most {traffic.MAX_SECONDS:g} s")
        if self.target:
            traffic.parse_target(self.target)
        if self.ports is not None:
            traffic.parse_ports(self.ports)
        if self.from_netns is not None:
            from cnitrace.core.selection import validate_netns
            try:
                validate_netns(self.from_netns)
            except UsageError:
                raise UsageError(f"invalid --from-netns {self.from_netns!r}: a namespace name from "
                                 "`ip netns list`") from None
        check_force(self.force)
        if not (self.ifaces or self.netns or self.lab):
            raise UsageError("nothing selected: give --iface GLOB, --netns NAME or --lab NAME")


def check_force(force: Sequence[tuple[str, str]]) -> None:
    """Each pinned (stage, backend) names a probe stage and a backend every required hook of it can
    take (or counters: attach nothing), once; refused before any work rather than mid-window."""
    from cnitrace.probes.specs import BACKENDS, COUNTERS, SPECS

    seen: dict[str, str] = {}
    for stage, backend in force:
        if stage not in SPECS:
            raise UsageError(f"--probe-backend {stage}={backend}: unknown stage; choose from {', '.join(SPECS)}")
        can = [b for b in BACKENDS if b == COUNTERS or all(b in h.backends for h in SPECS[stage].hooks if h.required)]
        if backend not in can:
            raise UsageError(f"--probe-backend {stage}={backend}: {stage} can take {', '.join(can)}")
        if seen.setdefault(stage, backend) != backend:
            raise UsageError(f"--probe-backend {stage} given twice ({seen[stage]}, {backend})")


@dataclasses.dataclass
class Target:
    """What one profile watches: interfaces (netns, name, ifindex), rule namespaces and the lab, if any."""

    interfaces: list[dict[str, Any]]
    rule_netns: list[str | None]        # where netfilter rules are read (None = host)
    lab: Any = None                     # cnitrace.lab.manager.Lab
    entry: set[int] | None = None       # ifindexes whose received packets are timed (None = all selected)
    peer: Any = None                    # cnitrace.traffic.generators.Peer: traffic toward a target the user named


def resolve_target(cfg: ProfileConfig, runner: Runner) -> Target:
    if cfg.lab:
        from cnitrace.lab import manager
        lab = manager.load(cfg.lab)
        topo = lab.topo
        ifaces = [{"name": p.node_iface, "ifindex": p.node_ifindex, "netns": topo.node_netns, "peer": p.iface,
                   "pod": p.netns} for p in topo.pods]
        # Requests enter the node from client pods: time those (replies are a different path).
        return Target(ifaces, [topo.node_netns], lab, {p.node_ifindex for p in topo.clients})
    from cnitrace.core import selection
    sel = selection.resolve(list(cfg.ifaces), list(cfg.netns))
    ifaces = [{"name": i.name, "ifindex": i.ifindex, "netns": i.netns or None, "peer": i.peer,
               "pod": i.peer_netns} for i in sel.interfaces]
    rule_ns = sorted({i.netns or None for i in sel.interfaces}, key=lambda n: n or "")
    peer, entry = None, None
    if cfg.target:
        from cnitrace.traffic.generators import resolve_peer
        peer = resolve_peer(cfg.target, cfg.from_netns)
        # Requests from the client namespace enter the node where its veth peer sits: time those.
        entry = {i["ifindex"] for i in ifaces if cfg.from_netns and i["pod"] == cfg.from_netns} or None
    return Target(ifaces, rule_ns or [None], entry=entry, peer=peer)


# --- collectors ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Counters:
    iptables: dict[str | None, Any]
    nft: dict[str | None, Any]
    bpf: Any = None
    ovs: Any = None
    conntrack: Any = None
    ovs_cpu_ns: int | None = None
    rx_packets: dict[int, int] = dataclasses.field(default_factory=dict)   # entry ifindex -> rx packets


def rx_packets(target: Target, runner: Runner) -> dict[int, int]:
    """Received-packet counters of the entry interfaces: how many packets entered the node side."""
    import json as _json

    out: dict[int, int] = {}
    entry = target.entry if target.entry is not None else {i["ifindex"] for i in target.interfaces}
    for i in target.interfaces:
        if i["ifindex"] not in entry:
            continue
        done = runner.run(["ip", "-s", "-j", "link", "show", "dev", i["name"]], netns=i["netns"], check=False)
        try:
            out[i["ifindex"]] = int(_json.loads(done.stdout)[0]["stats64"]["rx"]["packets"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return out


def _selection_of(target: Target) -> Any:
    from cnitrace.core.selection import Interface, Selection

    ifs = tuple(Interface(i["name"], i["netns"] or "", int(i["ifindex"] or 0)) for i in target.interfaces)
    return Selection(ifs, tuple(sorted({i.netns for i in ifs})))


def snapshot_counters(target: Target, runner: Runner, ovs: Any = None, maps: bool = False) -> Counters:
    """Every collector once. Map dumps (O(entries)) only when asked: pressure is a gauge read after."""
    from cnitrace.collectors.bpfprog.source import BpfProgCollector
    from cnitrace.collectors.conntrack.source import ConntrackCollector
    from cnitrace.collectors.iptables.source import IptablesCollector
    from cnitrace.collectors.nftables.source import NftablesCollector
    from cnitrace.collectors.ovs.source import OvsCollector
    from cnitrace.attribution.datapath import cpu_ns

    ipt = {ns: IptablesCollector(runner, netns=ns, families=("ipv4",)).snapshot() for ns in target.rule_netns}
    nft = {ns: NftablesCollector(runner, netns=ns).snapshot() for ns in target.rule_netns}
    bpf = BpfProgCollector(_selection_of(target), runner, maps=maps).snapshot()
    ct = ConntrackCollector([n or "" for n in target.rule_netns], runner).snapshot()
    ovs_snap, cpu = None, None
    if ovs is not None:
        ovs_snap = OvsCollector(ovs, runner, megaflows=False).snapshot()
        pid = vswitchd_pid(ovs)
        cpu = cpu_ns(pid) if pid else None
    return Counters(ipt, nft, bpf, ovs_snap, ct, cpu, rx_packets(target, runner))


def netfilter_inputs(before: Counters, after: Counters) -> tuple[list, list[str], list[str], list]:
    from cnitrace.collectors.iptables.graph import ruleset_delta
    from cnitrace.collectors.iptables.source import ruleset_of
    from cnitrace.collectors.nftables.source import records_delta
    from cnitrace.attribution.netfilter import (drop_rules, evaluation_order, iptables_nft_tables, iptables_work,
                                         nft_work)

    work, warnings, order, drops = [], [], [], []
    for ns in after.iptables:
        delta, w1 = ruleset_delta(ruleset_of(before.iptables[ns]), ruleset_of(after.iptables[ns]))
        iw, w2 = iptables_work(delta)
        recs, w3 = records_delta(before.nft[ns], after.nft[ns])
        nw, w4 = nft_work(recs, skip=iptables_nft_tables(delta))
        work += iw + nw
        order += [c for c in evaluation_order(delta, iw) if c not in order]
        drops += drop_rules(delta)
        warnings += [*after.iptables[ns].warnings, *w1, *w2, *w3, *w4]
    return work, order, warnings, drops


# --- measurements in the window: L7 latency, tc/XDP program time, bpf_stats ----------------------


def latency_pair(target: Target, seconds: int, runner: Runner) -> tuple[Any, Any]:
    """One-at-a-time GET / latency through the proxy (from the client pod) and direct (from the
    node's own namespace: node-originated traffic is not forwarded, so neither the policy nor the
    redirect applies). Concurrency 1, so queueing under load does not masquerade as detour time."""
    from cnitrace.traffic import generators as traffic
    topo = target.lab.topo
    node = dataclasses.replace(topo.clients[0], name="node", netns=topo.node_netns, ip=topo.node_ip)
    through = traffic.http(topo, seconds, concurrency=1, runner=runner)
    direct = traffic.http(topo, seconds, concurrency=1, client=node, runner=runner)
    return through, direct


def proxy_connections(figures: Sequence[Any], target: Target) -> int:
    """Connections accepted in the node namespace (where the lab's proxy listens), seen by the socket probe."""
    from cnitrace.probes.runtime import netns_inode

    node_ns = netns_inode(target.lab.topo.node_netns)
    return sum(f.hist.count for f in figures if f.stage == "l7_detour" and f.map == "l7_life"
               and f.key.get("role") == "server" and f.key.get("netns") == node_ns)


def start_progtime(before: Counters, backends: dict[str, dict[str, Any]], session: Session, host: Any,
                   runner: Runner, warnings: list[str], say: Callable[[str], None]) -> Any:
    """tc_bpf for the window: fentry on the selected tc/XDP programs (or the tc classify kprobe)
    where the host allows; the backends entry then says, per program, what was attached or why
    bpf_stats stay its only figure. A failure to attach is a warning, never a failed profile."""
    from cnitrace.core.errors import CnitraceError
    from cnitrace.probes.ladder import STAGES
    from cnitrace.probes.progtime import ProgTime

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
    from cnitrace.collectors.bpfprog.stats import StatsUnavailable, stats_enabled

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


# --- the run ------------------------------------------------------------------------------------

def _backends(host: Any) -> dict[str, dict[str, Any]]:
    from cnitrace.probes.ladder import choose_all

    out = {}
    for c in choose_all(host):
        out[c.stage] = {"backend": BACKEND_NAMES.get(c.backend, "none"), "reason": c.reason,
                        "signals": {"measured": list(c.measured), "modelled": list(c.modelled)}}
    return out


def _probe_stages(backends: dict[str, dict[str, Any]], force: dict[str, str] | None = None,
                  kernel_ovs: bool = False) -> list[str]:
    """Stages to attach: those the ladder can measure here, and pinned ones (a pinned backend the
    host cannot give fails with one line when the probes start); counters pins attach nothing. The
    OVS kernel stage only when the selection's bridge uses the kernel datapath: netdev bridges
    (the userspace datapath) never enter it, and their time is ovs-vswitchd's CPU instead."""
    from cnitrace.probes.specs import COUNTERS, SPECS

    force = force or {}
    return [s for s in ("transit", "drops", "netfilter", "ovs_kernel")
            if s in SPECS and force.get(s) != COUNTERS and (s != "ovs_kernel" or kernel_ovs)
            and (s in force or backends.get(s, {}).get("backend") in MEASURING)]


def backend_used(choice: Any, forced: str | None, ladder: dict[str, Any] | None) -> dict[str, Any]:
    """The backends section entry for a stage whose probes ran: what each hook actually used and
    why (the ladder's entry is a forecast; the hooks' backends are what measured)."""
    from cnitrace.probes.specs import COUNTERS

    signals = dict((ladder or {}).get("signals") or {"measured": [], "modelled": []})
    if choice.backend == COUNTERS:     # nothing attached after all: every figure is modelled
        signals = {"measured": [], "modelled": [*signals.get("measured", []), *signals.get("modelled", [])]}
    return {"backend": BACKEND_NAMES.get(choice.backend, "none"),
            "reason": (f"pinned with --probe-backend {choice.stage}={forced}; " if forced else "") + choice.reason,
            "hooks": dict(choice.hooks), "signals": signals}


def rule_ranges_of(counters: Counters | None) -> list[tuple[str, int, int]]:
    """Destination-port ranges the rule namespaces' iptables rules match (both backends' dumps)."""
    if counters is None:
        return []
    from cnitrace.collectors.iptables.source import ruleset_of
    from cnitrace.traffic.generators import rule_port_ranges

    return rule_port_ranges([r.spec for snap in counters.iptables.values() for r in ruleset_of(snap).rules])


def run_traffic(kind: str, target: Target, duration: float, runner: Runner, *, before: Counters | None = None,
                ports: str | None = None) -> Any:
    if kind == "none":
        return None
    from cnitrace.traffic import generators as traffic
    if target.peer is not None:     # toward the user's target, covering the rules' port ranges
        return traffic.toward(kind, target.peer, max(1, int(duration)), rule_ranges=rule_ranges_of(before),
                              ports=traffic.parse_ports(ports) if ports else (), runner=runner)
    topo = target.lab.topo
    if kind == "probe":
        return traffic.crafted_probes(topo, runner=runner)
    if kind == "stream":
        return traffic.stream(topo, max(1, int(duration)), runner=runner)
    if kind == "rr":
        return traffic.rr(topo, max(1, int(duration)), runner=runner)
    return traffic.http(topo, max(1, int(duration)), runner=runner)


def run_profile(cfg: ProfileConfig, *, host: Any = None, runner: Runner = DEFAULT_RUNNER,
                say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """One profiling window; returns the validated profile document."""
    from cnitrace.core.capability import Host
    from cnitrace.node.detect import detect_cnis, gather_evidence

    cfg.validate()
    host = host or Host(runner)
    t_start = time.time()
    target = resolve_target(cfg, runner)
    say(f"selection: {', '.join(i['name'] for i in target.interfaces)}")
    cnis = []
    for ns in target.rule_netns:
        for d in detect_cnis(gather_evidence(runner, ns)):
            cnis.append({"name": d.cni, "evidence": list(d.evidence)})
    say(f"detect: {', '.join(c['name'] for c in cnis) or 'no CNI recognised'}")
    backends = _backends(host)
    warnings: list[str] = []
    cal = None
    if cfg.calibrate:
        from cnitrace.calibrate import rules as calibrate
        say("calibration: ns per rule evaluation")
        backend = target.lab.spec.backend if target.lab else "legacy"
        style = calibrate.style_for(target.lab.spec.datapath if target.lab else
                                    (cnis[0]["name"] if cnis else None))
        cal = calibrate.cached_or_measure(backend=backend, style=style, runner=runner)
    ovs_cal = ovs_calibration(target, runner, say, warnings) if cfg.calibrate else None

    overhead: dict[str, Any] = {}
    interrupted = False
    traffic_result = None
    figures: list[Any] = []
    through = direct = None
    lost = 0
    ovs = ovs_target(target)
    ovs_idle: tuple[int, float] | None = None
    with Session(runner=runner) as session, _bpf_stats(session) as stats_mode:
        if ovs is not None:
            ovs_idle = idle_cpu(ovs, 0.5)
        say("snapshots: every collector's counters before the window")
        t0 = time.monotonic()
        before = snapshot_counters(target, runner, ovs)
        overhead["snapshot_s"] = round(time.monotonic() - t0, 4)
        overhead["bpf_stats"] = stats_mode
        force = dict(cfg.force)
        kernel_ovs = kernel_datapath(before.ovs)
        stages = _probe_stages(backends, force, kernel_ovs)
        if "ovs_kernel" in force and not kernel_ovs:
            warnings.append("--probe-backend ovs_kernel ignored: the selection has no OVS kernel datapath")
        for stage, backend in force.items():
            if backend == "counters" and stage in backends:
                backends[stage] = {"backend": "counters", "signals": {"measured": [], "modelled": []},
                                   "reason": f"pinned with --probe-backend {stage}=counters: nothing attached"}
        probes = None
        if stages:
            from cnitrace.probes.runtime import ProbeSet
            say(f"probes: {', '.join(stages)}")
            probes = ProbeSet(stages, ifaces=[(i["netns"], i["name"]) for i in target.interfaces],
                              force={s: b for s, b in force.items() if s in stages},
                              session=session, host=host, runner=runner)
            session.on_exit(probes.close)
            probes.start()
            overhead["attach_s"] = round(probes.attach_seconds or 0.0, 3)
        l7_probes = None
        if target.lab is not None and target.lab.spec.l7 and backends.get("l7_detour", {}).get("backend") in MEASURING:
            from cnitrace.probes.runtime import ProbeSet
            say("probes: l7_detour (client and proxy sockets)")
            topo = target.lab.topo
            l7_probes = ProbeSet(["l7_detour"], netns=[topo.clients[0].netns, topo.node_netns],
                                 session=session, host=host, runner=runner)
            session.on_exit(l7_probes.close)
            l7_probes.start()
        progtime = start_progtime(before, backends, session, host, runner, warnings, say)
        if probes is not None or l7_probes is not None:
            say(f"probes attached: {', '.join([*stages, *(['l7_detour'] if l7_probes else [])])}")
        ovs_w0 = ovs_cpu_reading(ovs)
        t_window = time.monotonic()
        load = "" if cfg.traffic == "none" else f", {cfg.traffic} traffic" + (
            f" toward {cfg.target} from {cfg.from_netns or 'the host namespace'}" if cfg.target else "")
        say(f"window: {cfg.duration:g} s{load} (Ctrl-C ends it early and still reports)")
        try:
            traffic_result = run_traffic(cfg.traffic, target, cfg.duration, runner, before=before, ports=cfg.ports)
            if traffic_result is not None and not traffic_result.ok:
                warnings.append(f"traffic: {traffic_result.metrics['error']}")
            if cfg.traffic == "http" and target.lab is not None and target.lab.spec.l7:
                say("L7 detour: request latency through the proxy vs direct (concurrency 1)")
                through, direct = latency_pair(target, 1, runner)
            remaining = cfg.duration - (time.monotonic() - t_window)
            if cfg.traffic == "none" and remaining > 0:
                time.sleep(remaining)
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
            warnings.append("interrupted: the window ended early; figures cover what was seen until then")
        window = time.monotonic() - t_window
        ovs_w1 = ovs_cpu_reading(ovs)
        say("snapshots: every collector's counters after the window")
        after = snapshot_counters(target, runner, ovs, maps=True)
        if l7_probes is not None:
            figures += l7_probes.snapshot()
        if progtime is not None:
            figures += progtime.snapshot()
        if probes is not None:
            figures += probes.snapshot()
            lost = probes.lost()
            overhead["transit_untimed"] = probes.untimed()
            for stage, ch in probes.choices.items():
                backends[stage] = backend_used(ch, force.get(stage), backends.get(stage))

    say("attribution: counters and probe figures into the stage tree")
    work, order, nf_warn, rule_drops = netfilter_inputs(before, after)
    warnings += nf_warn
    entry = target.entry if target.entry is not None else {i["ifindex"] for i in target.interfaces}
    transit = transit_of(figures, entry)
    sent = getattr(traffic_result, "packets_sent", None) if traffic_result else None
    entered = sum(max(after.rx_packets.get(k, 0) - v, 0) for k, v in before.rx_packets.items())
    if cfg.traffic == "probe" and sent:
        packets = sent                      # exact: crafted
    elif transit is not None:
        packets = transit.packets           # measured: timed packets
    elif entered:
        packets = entered                   # interface counters of the entry interfaces
    else:
        packets = max((w.packets for w in work), default=0)
    calib = Calib(cal.ns_per_rule_eval) if cal else Calib(0.0)
    stages_out = [netfilter_stage(work, packets, calib,
                                  measured=netfilter_tables_of(figures, {w.table for w in work}))]
    nf_hooks = netfilter_hooks_of(figures)
    if nf_hooks:
        stages_out[0].detail["hooks"] = nf_hooks
    programs = bpf_programs(before.bpf, after.bpf) if before.bpf and after.bpf else []
    traced = program_times(figures)
    if programs or traced:
        stages_out.append(bpf_stage(programs, packets, traced))
    if before.ovs is not None and after.ovs is not None:
        ovs_node = ovs_node_of(before, after, window, ovs_idle, packets, calib, ovs_cal, (ovs_w0, ovs_w1))
        kernel = ovs_kernel_of(figures, entry)
        stages_out.append(with_ovs_kernel(ovs_node, kernel, packets) if kernel else ovs_node)
        backends["ovs_userspace"] = OVS_USERSPACE_BACKEND
    detour = proxy_detour_of(through, direct, target.lab.spec.l7_proxy) if target.lab else None
    if detour is not None:
        node = proxy_stage(detour)
        node.detail.update({"through_proxy_mean_ms": through.metrics.get("mean_ms"),
                            "direct_mean_ms": direct.metrics.get("mean_ms"),
                            "proxy_connections_seen": proxy_connections(figures, target),
                            "method": "ab -c 1 through the proxy vs direct from the node namespace"})
        stages_out.append(node)
    root = build_tree(stages_out, transit, packets)
    doc = {
        "schema_version": SCHEMA_VERSION, "kind": "profile", "tool": {"name": "cnitrace", "version": __version__},
        "host": {"kernel": platform.release(), "cpu": cpu_model(), "hostname": socket.gethostname()},
        "cni": cnis,
        "lab": ({"spec": target.lab.spec.to_json(), "ground_truth": target.lab.truth.to_json()}
                if target.lab else None),
        "selection": {"interfaces": target.interfaces, "netns": [n for n in target.rule_netns if n]},
        "started_at": t_start, "duration_s": round(window, 3),
        "traffic": {"kind": cfg.traffic, "packets_sent": sent,
                    "result": traffic_result.to_json() if traffic_result else None},
        "backends": backends,
        "calibration": ({"ns_per_rule_eval": cal.ns_per_rule_eval, "provenance": cal.provenance,
                         "r2": cal.r2, "backend": cal.backend, "method": cal.method, "style": cal.style,
                         "ovs": ovs_cal.summary() if ovs_cal else None}
                        if cal else None),
        "tree": root.to_json(), "headline": headline(root),
        "drops": merge_drops(drops_of(figures), rule_drops), "conntrack": conntrack_of(before.conntrack, after.conntrack),
        "maps": maps_of(after.bpf),
        "evaluation_order": order, "overhead": overhead, "lost_events": int(lost),
        "warnings": [w for w in warnings if w][:50] + (["interrupted"] if interrupted else []),
    }
    errors = validate(doc)
    if errors:  # our own contract: a bug, said plainly rather than writing a bad document
        raise RuntimeError(f"profile document does not match its schema: {errors[0]}")
    return doc

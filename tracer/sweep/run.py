"""`cnitrace sweep`: the study's experiments, point by point, on the built-in lab.

For every point (datapath × rules × clients [× L7]) a fresh lab is built, its policy semantics
are checked with crafted probes against the lab's ground-truth counters, then the study's
metrics are measured on real traffic: NEW-flow cost per packet (timed bursts), throughput
(iperf3), request/response latency (sockperf), CPU (softirq/system share from /proc/stat over
the stream) and daemon memory (RSS), and for --l7 HTTP requests/s and latency with ab at 100
concurrent connections. The lab is removed after each point, also on Ctrl-C, which keeps the
finished points. Result shaping (curves, models, cliffs, the study table) is in sweep_model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
import uuid
from typing import Any, Callable, Mapping

from cnitrace.lab.l7proxy import kind_for
from cnitrace.traffic import generators as traffic
from cnitrace.core import faults
from cnitrace.core.errors import CnitraceError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.sweep.counters import conntrack_totals, daemon_rss_kib, proc_stat, read_counter
from cnitrace.sweep.model import (PointSpec, SweepConfig, cpu_share, document, host_facts, iter_wide,
                                  parse_proc_stat_cpu, points, policy_stages, summarize)
from cnitrace.attribution.netfilter import iptables_nft_tables
from cnitrace.attribution.netfilter import iptables_work
from cnitrace.attribution.netfilter import nft_work
from cnitrace.attribution.tree import Calib
from cnitrace.attribution.tree import netfilter_stage
from cnitrace.calibrate import rules as calibrate
from cnitrace.calibrate import walk
from cnitrace.calibrate.shapes import ShapeCosts
from cnitrace.collectors.iptables.graph import ruleset_delta
from cnitrace.collectors.iptables.source import IptablesCollector
from cnitrace.collectors.iptables.source import ruleset_of
from cnitrace.collectors.nftables.source import NftablesCollector
from cnitrace.collectors.nftables.source import records_delta
from cnitrace.lab import manager
from cnitrace.lab import overlay
from cnitrace.lab.model import LabSpec
from cnitrace.probes.runtime import ProbeSet
from cnitrace.attribution.changes import Changes, changes_between
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.ovs import ovs_target
from cnitrace.profile.run import run_profile
from cnitrace.profile.target import Target, lab_selection
from cnitrace.profile.window import MID_MAX_SAMPLES, mid_scope, mid_skipped, rule_snapshot, snapshot_counters

Progress = Callable[[Mapping[str, Any]], None]
CT_KEYS = ("insert_failed", "drop", "early_drop", "invalid", "insert")


def lab_name(prefix: str = "sw") -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM while a lab is removed, so a second Ctrl-C cannot cut cleanup short;
    a signal that arrived meanwhile is delivered afterwards (and stops the sweep)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _down(name: str, runner: Runner) -> str | None:

    with _signals_held():
        try:
            manager.down(name, runner=runner)
        except UsageError:
            return None            # never built, or already removed by its own session
        except CnitraceError as exc:
            return exc.message
    return None


def check_semantics(lab, probe: traffic.TrafficResult, before: Mapping[str, int],
                    after: Mapping[str, int]) -> dict[str, Any]:
    """Allowed probes counted at the allow rule, denied probes at the deny (pure, from readings)."""
    sent = probe.metrics["sent"]
    topo, truth = lab.topo, lab.truth
    checks: dict[str, Any] = {}
    for proto in ("tcp", "udp"):
        n = sent.get(f"{proto}/{topo.allowed_port}", 0)
        d = after[proto] - before[proto]
        checks[f"allowed_{proto}"] = {"sent": n, "counted": d, "exact": d == n, "passed": d >= n > 0}
    if truth.denied is not None:
        n = sent.get(f"tcp/{topo.denied_port}", 0) + sent.get(f"udp/{topo.denied_port}", 0)
        d = after["denied"] - before["denied"]
        checks["denied"] = {"sent": n, "counted": d, "exact": d == n, "passed": d >= n > 0}
    else:
        checks["denied"] = {"sent": 0, "counted": 0, "passed": True, "note": "no policy (baseline datapath)"}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks,
            "counters": {k: v.to_json() for k, v in _refs(truth).items()}}


def _refs(truth) -> dict[str, Any]:
    refs = {"tcp": truth.allowed["tcp"], "udp": truth.allowed["udp"]}
    if truth.denied is not None:
        refs["denied"] = truth.denied
    return refs


@dataclasses.dataclass
class Baselines:
    """What later points are compared with: the N = 0 NEW-flow cost per (datapath, clients,
    placement), the L3/L4 twin's HTTP latency, the intra-node twin's NEW-flow cost."""
    new_flow: dict[tuple, float] = dataclasses.field(default_factory=dict)
    http_c1_ms: dict[tuple, float] = dataclasses.field(default_factory=dict)
    intra_new_flow: dict[tuple, float] = dataclasses.field(default_factory=dict)
    modelled: dict[tuple, float] = dataclasses.field(default_factory=dict)   # N = 0 modelled netfilter ns
    transit: dict[tuple, float] = dataclasses.field(default_factory=dict)    # N = 0 transit ns
    leftovers: list[str] = dataclasses.field(default_factory=list)   # labs that could not be removed


def measure_point(ps: PointSpec, cfg: SweepConfig, lab, base: Baselines, ns_per_eval: float | None,
                  runner: Runner, cal=None) -> dict[str, Any]:
    """Semantics, then `cfg.repeat` rounds of the metrics on one built lab; with `cal` (a Calib
    with shapes) the policy cost is also modelled from the counters (`model_point`)."""
    topo = lab.topo
    refs = _refs(lab.truth)
    t0 = time.monotonic()
    faults.checkpoint("window")
    watch = RuleWatch(lab, runner)
    ct0 = conntrack_totals(runner, topo.node_netns)
    before = {k: read_counter(runner, lab, r) for k, r in refs.items()}
    probe = traffic.crafted_probes(topo, count_per_port=5, runner=runner)
    after = {k: read_counter(runner, lab, r) for k, r in refs.items()}
    sem = check_semantics(lab, probe, before, after)
    watch.check()
    attribution = attribute(lab) if cfg.attribute else None
    model = None
    if cal is not None and not ps.l7:
        try:
            model = model_point(lab, cal, cfg.backend, runner)
        except CnitraceError as exc:
            model = {"error": exc.message}
    rounds: dict[str, list[float | None]] = {}
    failures = 0
    errors: list[str] = []

    def add(name: str, value: float | None) -> None:
        rounds.setdefault(name, []).append(value)

    for _ in range(cfg.repeat):
        # NEW-flow bursts in three rounds spread over the point (before, between and after the
        # other loads): a neighbour's load lasting seconds rarely covers all three, and
        # interference only ever adds time, so the fastest burst of the point is its figure.
        floods: list[float] = []

        def flood() -> None:
            f = traffic.new_flows(topo, packets=cfg.flood_packets, bursts=max(1, cfg.flood_bursts // 3),
                                  runner=runner)
            floods.append(f.metrics["ns_per_packet"])
            watch.check()

        flood()
        if not ps.l7:
            cpu0 = parse_proc_stat_cpu(proc_stat())
            st = traffic.stream(topo, cfg.seconds, clients=topo.clients, runner=runner)
            cpu = cpu_share(cpu0, parse_proc_stat_cpu(proc_stat()))
            if st.ok:
                add("throughput_gbps", st.metrics["bits_per_second"] / 1e9)
                add("throughput_per_client_gbps", st.metrics["bits_per_second"] / 1e9 / st.metrics["clients"])
            else:
                errors.append(st.metrics["error"])
            failures += int(st.metrics.get("failed_streams", 0 if st.ok else 1))
            add("softirq_pct", cpu["softirq_pct"])
            add("system_pct", cpu["system_pct"])
            flood()
            rr = traffic.rr(topo, cfg.seconds, runner=runner)
            if rr.ok:
                add("rtt_p50_us", rr.metrics["p50_us"])
                add("rtt_p99_us", rr.metrics["p99_us"])
            else:
                errors.append(rr.metrics["error"])
        if cfg.l7:
            h = traffic.http(topo, cfg.http_seconds, concurrency=100, runner=runner)
            failures += int(h.metrics.get("failed", 0)) + int(h.metrics.get("non_2xx", 0))
            if h.ok:
                add("http_rps", h.metrics["rps"])
                add("http_p50_ms", h.metrics.get("p50_ms"))
            else:
                errors.append(h.metrics["error"])
            if ps.l7:
                flood()
            one = traffic.http(topo, 1.0, concurrency=1, runner=runner)
            if one.ok:
                add("http_c1_ms", one.metrics["mean_ms"])
        flood()
        add("new_flow_ns", min(floods))
        rss, procs = daemon_rss_kib(runner, topo.node_netns)
        add("rss_kib", float(rss))
    ct1 = conntrack_totals(runner, topo.node_netns)
    metrics = {k: s for k, v in rounds.items() if (s := summarize(v)) is not None}
    key = (ps.datapath, ps.clients, ps.placement)
    nf = metrics.get("new_flow_ns", {}).get("median")
    if ps.rules == 0 and not ps.l7 and nf is not None:
        base.new_flow[key] = nf
    m_ns = (model or {}).get("modelled_ns")
    t_ns = (model or {}).get("transit_ns")
    if ps.rules == 0 and not ps.l7:
        if m_ns is not None:
            base.modelled[key] = m_ns
        if t_ns is not None:
            base.transit[key] = t_ns
    evals = lab.truth.evaluations.get("udp")
    stages = policy_stages(ps, nf, base.new_flow.get(key), evals, ns_per_eval,
                           modelled_ns=m_ns, modelled_baseline_ns=base.modelled.get(key),
                           transit_ns=t_ns, transit_baseline_ns=base.transit.get(key))
    if ps.datapath == "antrea":
        stages[0]["caveat"] = ("OVS userspace datapath forwards asynchronously: the sender-timed NEW-flow "
                               "cost misses most of it; use the modelled figure")
    twin_key = (ps.datapath, ps.rules, ps.clients, ps.l7)
    if ps.placement == "intra" and nf is not None:
        base.intra_new_flow[twin_key] = nf
    elif ps.placement == "inter":
        twin = base.intra_new_flow.get(twin_key)
        ov = topo.extra.get("overlay", {})
        stages.append({"stage": "vxlan", "unit": "ns/packet (NEW)",
                       "measured_ns": nf - twin if (nf is not None and twin is not None) else None,
                       "modelled_ns": None,
                       "detail": f"VXLAN VNI {ov.get('vni')} over a veth underlay (encap on node 2, decap on "
                                 f"the server's node): inter-node NEW-packet cost minus the intra-node twin",
                       "caveat": "VXLAN receive goes through a NAPI context (gro_cells), so part of the "
                                 "server node's work may run outside the sender's timing: inter-node "
                                 "figures are lower bounds"})
    c1 = metrics.get("http_c1_ms", {}).get("median")
    if c1 is not None:
        if not ps.l7:
            base.http_c1_ms[(ps.datapath, ps.rules, ps.clients, ps.placement)] = c1
        else:
            twin = base.http_c1_ms.get((ps.datapath, ps.rules, ps.clients, ps.placement))
            stages.append({"stage": "l7-proxy", "unit": "ns/request",
                           "measured_ns": (c1 - twin) * 1e6 if twin is not None else None, "modelled_ns": None,
                           "detail": f"{kind_for(lab.spec.datapath, lab.spec.l7_proxy)} detour: request latency at concurrency 1, "
                                     f"{c1:.3f} ms through the proxy vs {twin if twin is not None else float('nan'):.3f} ms direct"})
    sem["passed"] = sem["passed"] and not (not ps.l7 and "throughput_gbps" not in metrics)
    return flag_changes({
        "spec": ps.to_json(), "status": "ok", "lab": lab.spec.name, "semantics": sem, "metrics": metrics,
        "stages": stages, "evaluations": evals, "ground_truth_per": lab.truth.per,
        "conntrack": {k: ct1.get(k, 0) - ct0.get(k, 0) for k in CT_KEYS} | {"entries": ct1.get("entries")},
        "connection_failures": failures, "errors": errors, "daemons": procs,
        "wide_spread": list(iter_wide(metrics)), "seconds": time.monotonic() - t0,
        "probes_sent": probe.metrics["sent"], "attribution": attribution, "model": model,
    }, watch.changes())


class RuleWatch:
    """What the lab's objects were when a point started and ended, and its rule namespaces at each
    phase boundary (cheap; skipped for rulesets too big, as the profile skips them): the profile's
    detection (attribution.changes) over the whole point, so a point measured while something rewrote
    the lab's rules, flows or programs is flagged instead of fitted."""

    def __init__(self, lab, runner: Runner):
        self.target = Target(lab_selection(lab), lab)
        self.ovs = ovs_target(self.target)
        self.runner = runner
        self.start = snapshot_counters(self.target, runner, self.ovs)
        self.scope = mid_scope(self.start)
        self.watch_mid = mid_skipped(self.start) is None
        self.mid: list[Any] = []

    def check(self) -> None:
        if self.watch_mid and len(self.mid) < MID_MAX_SAMPLES:
            try:
                self.mid.append(rule_snapshot(self.scope, self.runner))
            except CnitraceError:
                pass              # a missed checkpoint only widens an interval

    def changes(self) -> Changes:
        return changes_between(self.start, snapshot_counters(self.target, self.runner, self.ovs), self.mid)


def flag_changes(point: dict[str, Any], changes: Changes) -> dict[str, Any]:
    """A point whose objects changed while it was measured is not fitted (status "changed", reported
    with the failed points, the sweep exits non-zero); its figures and the changes stay in it."""
    point["changes"] = changes.to_json()
    if changes:
        names = "; ".join(c.label for c in changes.objects[:3]) + (" …" if len(changes) > 3 else "")
        point["status"] = "changed"
        point["error"] = f"the lab changed during the point ({len(changes)} object(s): {names}): not fitted"
    return point


MODEL_PACKETS, MODEL_BURSTS = 500, 7


def model_point(lab, cal, backend: str, runner: Runner, transit: bool = True) -> dict[str, Any]:
    """The modelled policy cost of one point, the way `profile` models it: the node namespace's
    iptables and nftables counters around bursts of NEW UDP flows (the same packets the NEW-flow
    metric times), their per-chain and per-rule evaluations priced by rule shape (`cal`, a Calib
    from the per-shape calibration). Where the transit probe attaches, the same packets' time
    through the node is measured beside it (receive on the client's interface → transmit)."""

    topo = lab.topo
    ipt = IptablesCollector(runner, netns=topo.node_netns, backends=(backend,), families=("ipv4",))
    nft = NftablesCollector(runner, netns=topo.node_netns)
    out: dict[str, Any] = {}
    with Session(runner=runner) as s:
        probes = None
        if transit:
            try:
                probes = ProbeSet(["transit"], ifaces=[(topo.node_netns, topo.clients[0].node_iface)],
                                  session=s, runner=runner)
                s.on_exit(probes.close)
                probes.start()
            except (CnitraceError, RuntimeError, OSError) as exc:
                out["transit_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                probes = None
        b_ipt, b_nft = ipt.snapshot(), nft.snapshot()
        sent = 0
        bursts: list[tuple[int, float]] = []      # (packets timed, mean ns) per burst
        # the same bursts timed by the sender, beside their transit times (a diagnostic: one burst per
        # process starts cold, so these run higher than the NEW-flow metric's fastest burst)
        sender: list[float] = []
        for _ in range(MODEL_BURSTS):
            if probes is not None:
                probes.reset()
            f = traffic.new_flows(topo, packets=MODEL_PACKETS, bursts=1, runner=runner)
            sent += f.packets_sent or 0
            if f.metrics.get("ns_per_packet") is not None:
                sender.append(float(f.metrics["ns_per_packet"]))
            if probes is not None:
                time.sleep(0.05)
                figs = [x for x in probes.snapshot() if x.stage == "transit"]
                count = sum(x.hist.count for x in figs)
                if count:
                    bursts.append((count, sum(x.hist.sum for x in figs) / count))
        a_ipt, a_nft = ipt.snapshot(), nft.snapshot()
    delta, _ = ruleset_delta(ruleset_of(b_ipt), ruleset_of(a_ipt))
    walks = walk.walks_for(ruleset_of(a_ipt), backend, topo.node_netns, runner)
    iw, _ = iptables_work(delta, walks=walks)
    recs, _ = records_delta(b_nft, a_nft)
    nw, _ = nft_work(recs, skip=iptables_nft_tables(delta))
    stage = netfilter_stage(iw + nw, sent, cal)
    classes: dict[str, float] = {}
    for w in iw + nw:
        for k, v in w.classes:
            classes[k] = classes.get(k, 0.0) + v / sent
    out.update({"packets": sent, "modelled_ns": stage.modelled_ns or 0.0,
                "evaluations_per_packet": sum(w.evaluations for w in iw + nw) / sent if sent else None,
                "classes_per_packet": classes,
                "chains": {w.chain: round(cal.work_ns(w) / sent, 1) for w in iw + nw
                           if w.evaluations} if sent else {},
                "walks": {k[2]: {"table": k[1], **w.to_json()} for k, w in walks.items()}})
    # like the NEW-flow metric, the least disturbed burst: interference only ever adds time
    if sender:
        out["new_flow_bursts_ns"] = [round(x, 1) for x in sender]
    good = [b for b in bursts if b[0] >= MODEL_PACKETS // 2]
    if good:
        out["transit_ns"] = min(m for _, m in good)
        out["transit_bursts_ns"] = [round(m, 1) for _, m in good]
        out["transit_packets"] = sum(n for n, _ in good)
    return out


def attribution_summary(profile_doc: Mapping[str, Any]) -> dict[str, Any]:
    """The profile's answer for one point: its headline and the stage level of its tree (pure)."""
    tree = profile_doc.get("tree") or {}
    stages = [{"stage": c.get("name"), "ns_per_packet": c.get("ns_per_packet"), "share": c.get("share"),
               "provenance": c.get("provenance"), "packets": c.get("packets")}
              for c in tree.get("children", ()) if c.get("kind") == "stage"]
    return {"headline": profile_doc.get("headline"), "ns_per_packet": tree.get("ns_per_packet"),
            "stages": stages, "packets_sent": (profile_doc.get("traffic") or {}).get("packets_sent"),
            "warnings": list(profile_doc.get("warnings") or ())[:5]}


def attribute(lab) -> dict[str, Any]:
    """`cnitrace profile --lab NAME --traffic probe` of the point's lab: the per-stage attribution
    of crafted NEW packets (probes where the kernel allows, counters × calibration otherwise)."""

    try:
        return attribution_summary(run_profile(ProfileConfig(lab=lab.spec.name, duration=1.0, traffic="probe")))
    except (CnitraceError, RuntimeError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


def run_point(ps: PointSpec, cfg: SweepConfig, base: Baselines, ns_per_eval: float | None,
              runner: Runner, cal=None, after=None, prefix: str = "sw") -> dict[str, Any]:
    """Build the point's lab, measure, and always remove it; a failure is recorded, not raised.
    `after(lab, out)` adds to a measured point what a caller reads from its lab (the study: the proxy);
    `prefix` names its labs (the study's are st*)."""

    name = lab_name(prefix)
    spec = LabSpec(name=name, datapath=ps.datapath, rules=ps.rules, pods=ps.clients, l7=ps.l7,
                   backend=cfg.backend)
    t0 = time.monotonic()
    try:
        lab = manager.up(spec, runner=runner, temporary=True)
        if ps.placement == "inter":
            lab = overlay.attach(lab, runner=runner)
        up_s = time.monotonic() - t0
        out = measure_point(ps, cfg, lab, base, ns_per_eval, runner, cal)
        out["lab_up_s"] = up_s
        if after is not None:
            after(lab, out)
        return out
    except CnitraceError as exc:
        return {"spec": ps.to_json(), "status": "failed", "error": exc.message, "lab": name,
                "seconds": time.monotonic() - t0}
    except Exception as exc:  # noqa: BLE001 - one bad point must not lose a long sweep's results
        return {"spec": ps.to_json(), "status": "failed", "lab": name, "seconds": time.monotonic() - t0,
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    finally:
        why = _down(name, runner)
        if why:
            # Recorded in the state file: `cnitrace cleanup` removes what could not be removed now.
            base.leftovers.append(f"{name}: {why}")


def calibration(cfg: SweepConfig, datapath: str, runner: Runner) -> dict[str, Any] | None:
    """The node's cost of a rule evaluation by rule shape for the sweep's iptables backend (cached
    per kernel, CPU and backend; calibrate.shapes), for the modelled figures; None if it cannot be
    measured. `ns_per_rule_eval` (a port-match rule) remains for readers of the old field."""
    try:
        shapes = calibrate.cached_or_measure_shapes(backend=cfg.backend, runner=runner)
    except CnitraceError:
        return None
    return {"ns_per_rule_eval": shapes.class_ns("full:port"), "backend": shapes.backend, "style": "shapes",
            "provenance": shapes.provenance, "kernel": shapes.kernel, "cpu": shapes.cpu,
            "shapes": shapes.to_json(), "datapath": datapath}


def calib_of(cal: Mapping[str, Any] | None):
    """The attribution Calib of a sweep calibration entry (None without shapes)."""
    if not cal or not cal.get("shapes"):
        return None
    return Calib.from_shapes(ShapeCosts.from_json(cal["shapes"]))


def run(cfg: SweepConfig, *, runner: Runner = DEFAULT_RUNNER, progress: Progress | None = None) -> dict[str, Any]:
    """Run every point; Ctrl-C (SIGINT/SIGTERM) stops after cleaning up and returns the partial result."""
    say = progress or (lambda ev: None)
    specs = points(cfg)
    started = time.time()
    done: list[dict[str, Any]] = []
    interrupted = False
    cals: dict[str, Any] = {}
    base = Baselines()
    with Session(f"run:{os.getpid()}", runner=runner):
        try:
            for i, ps in enumerate(specs):
                if ps.datapath not in cals:
                    say({"event": "calibrate", "index": i, "total": len(specs), "id": ps.datapath})
                    cals[ps.datapath] = calibration(cfg, ps.datapath, runner)
                say({"event": "point", "index": i, "total": len(specs), "id": ps.id})
                cal = cals[ps.datapath]
                done.append(run_point(ps, cfg, base, cal["ns_per_rule_eval"] if cal else None, runner, calib_of(cal)))
                say({"event": "done", "index": i, "total": len(specs), "id": ps.id, "point": done[-1]})
        except KeyboardInterrupt:          # Session.Interrupted (SIGINT/SIGTERM) included
            interrupted = True
    faults.checkpoint("report")
    doc = document(cfg, done, started=started, finished=time.time(), interrupted=interrupted,
                   calibration=cals, host=host_facts(), total_points=len(specs))
    doc["leftovers"] = base.leftovers
    return doc

"""The OVS side of a profile: which ovs-vswitchd the selection has, its CPU time over the window
(schedstat, idle rate subtracted), this node's OVS calibration, and the OVS stage node built from
them: measured CPU next to the model (upcalls x base + first-packet lookups x subtables x ns).

The userspace (netdev) datapath's time is ovs-vswitchd's CPU; a kernel (system@) datapath adds
the kernel probe's figures (cnitrace.attribution.figures.ovs_kernel_of) in the profile.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cnitrace.attribution.tree import Calib, ovs_stage, with_ovs_kernel
from cnitrace.reports.document import Node
from cnitrace.attribution.datapath import busy_ns, datapath_cache, ovs_work
from cnitrace.core.runner import Runner
from cnitrace.attribution.datapath import cpu_ns
from cnitrace.attribution.datapath import pids_of
from cnitrace.calibrate import ovs as calibrate_ovs
from cnitrace.collectors.ovs.parse import Datapath, parse_dpctl_show
from cnitrace.collectors.ovs.source import OvsTarget
from cnitrace.core.errors import ToolError
from cnitrace.core.state import StateFile

if TYPE_CHECKING:
    from cnitrace.profile.target import Target
    from cnitrace.profile.window import Counters


def ovs_target(target: Target) -> Any:
    """The OVS instance behind the selection: the lab's private one, or the node's if it runs."""
    extra = target.lab.topo.extra if target.lab else {}
    if "ovs_rundir" in extra:
        return OvsTarget(rundir=extra["ovs_rundir"], ctl=extra.get("ovs_ctl"), netns=target.lab.topo.node_netns)
    if not target.lab and os.path.exists("/run/openvswitch/db.sock"):
        return OvsTarget()
    return None


def vswitchd_pid(ovs: Any) -> int | None:
    """ovs-vswitchd's pid: from its pidfile, or (a cnitrace lab's private daemon) from the state file."""
    try:
        return int(open(os.path.join(ovs.rundir, "ovs-vswitchd.pid")).read().strip())
    except (OSError, ValueError):
        pass

    pids = pids_of([r for r in StateFile().live() if r.data.get("netns") == ovs.netns], "/ovs-vswitchd")
    return pids[0] if pids else None


def idle_cpu(ovs: Any, seconds: float, slices: int = 5) -> tuple[int, float] | None:
    """ovs-vswitchd's CPU use while no traffic is sent: its background rate, to subtract.

    The median rate of `slices` equal slices, scaled to the whole: one revalidator round or stats
    flush inside a single sample would otherwise be taken for the background and subtract a
    sparse probe window's whole busy time away (measured 0 ns per packet)."""
    pid = vswitchd_pid(ovs)
    if not pid:
        return None
    rates: list[float] = []
    t0 = time.monotonic()
    for _ in range(max(slices, 1)):
        a, t = cpu_ns(pid), time.monotonic()
        time.sleep(seconds / max(slices, 1))
        b, dt = cpu_ns(pid), time.monotonic() - t
        if a is None or b is None or dt <= 0:
            return None
        rates.append((b - a) / dt)
    total = time.monotonic() - t0
    return int(statistics.median(rates) * total), total


OVS_USERSPACE_BACKEND = {
    "backend": "counters", "reason": "ovs-vswitchd CPU time (schedstat, idle rate subtracted) measured over "
    "the window; OpenFlow table lookups (ovs-ofctl dump-tables) x this node's calibrated ns per table model it",
    "signals": {"measured": ["userspace datapath CPU time per packet"],
                "modelled": ["per-table time: first-packet lookups x classifier subtables x calibrated ns per "
                             "subtable (without a calibration: the CPU time split by that weight)"]}}


def ovs_cpu_reading(ovs: Any) -> tuple[int, float] | None:
    """(ovs-vswitchd CPU ns, monotonic time) now: read at the window's edges, so that neither probe
    attachment nor the dumps cnitrace itself asks ovs-vswitchd for are billed to the traffic."""
    pid = vswitchd_pid(ovs) if ovs is not None else None
    cpu = cpu_ns(pid) if pid else None
    return (cpu, time.monotonic()) if cpu is not None else None


def ovs_node_of(before: Counters, after: Counters, window: float, ovs_idle: tuple[int, float] | None,
                packets: int, calib: Calib, ovs_cal: Any = None,
                cpu_window: tuple[Any, Any] = (None, None)) -> Any:
    """The OVS stage: ovs-vswitchd's busy CPU time in the window (measured), next to the model of it
    from this node's OVS calibration (`ovs_cal`: upcalls x base + first-packet table lookups x
    subtables x ns per subtable) when first packets (upcalls) are a visible fraction of the traffic.

    An upcall costs orders of magnitude more than a flow-cache hit, so with >= 5 % upcalls the
    stage is "both" (measured, modelled, their agreement) and each table carries its modelled time
    (without a calibration: the CPU time split by lookups x subtables); below that the measured time
    stays on the stage alone, and the tables show what the first packets' walks cost (modelled).
    """
    tables = ovs_work(before.ovs, after.ovs)
    measured = None
    w0, w1 = cpu_window
    if w0 is not None and w1 is not None and ovs_idle:
        measured = busy_ns(w1[0] - w0[0], w1[1] - w0[1], *ovs_idle)
    elif before.ovs_cpu_ns is not None and after.ovs_cpu_ns is not None and ovs_idle:
        measured = busy_ns(after.ovs_cpu_ns - before.ovs_cpu_ns, window, *ovs_idle)
    cache = datapath_cache(before.ovs, after.ovs)
    first_packets = cache["missed"] / max(cache["hit"] + cache["missed"], 1)
    if ovs_cal is not None:
        calib = dataclasses.replace(calib, ns_per_ovs_table=ovs_cal.ns_per_subtable,
                                    ovs_upcall_ns=ovs_cal.ns_per_upcall_base)
    else:
        calib = dataclasses.replace(calib, ns_per_ovs_table=None, ovs_upcall_ns=None)
    fraction = min(first_packets, 1.0) if cache["hit"] + cache["missed"] else 1.0
    if first_packets < 0.05 and measured is not None:
        node = ovs_stage(tables, packets, calib, None, first_fraction=fraction)
        node.measured_ns = node.ns_per_packet = measured / packets if packets else None
        node.modelled_ns = None         # hits' CPU (userspace datapath) is not in the model
        node.provenance = "measured"
        node.detail["note"] = ("mostly established traffic: served by the datapath flow cache; "
                               "OpenFlow tables were walked only by first packets (upcalls)")
    else:
        node = ovs_stage(tables, packets, calib, measured, upcalls=cache["missed"], first_fraction=fraction)
    node.detail["datapath_cache"] = cache
    node.detail["first_packet_fraction"] = round(first_packets, 4)
    return node


def ovs_calibration(target: Target, runner: Runner, say: Callable[[str], None], warnings: list[str]) -> Any:
    """This node's ns per OVS table (cached, or measured now) when the selection has an OVS
    instance; a failed micro-benchmark is a warning, never a failed profile."""
    ovs = ovs_target(target)
    if ovs is None:
        return None
    known = target.lab.topo.extra.get("datapath_type") if target.lab else None
    dp_type = calibrate_ovs.datapath_type_of(ovs, runner, known)
    say(f"calibration: ns per OVS table ({dp_type} datapath)")
    try:
        return calibrate_ovs.cached_or_measure(dp_type, runner=runner)
    except ToolError as exc:
        warnings.append(f"OVS calibration failed, OVS tables are not modelled: {exc.message}")
        return None


def kernel_datapath(ovs_snap: Any) -> bool:
    """Whether the OVS instance forwards in the kernel (a `system@` datapath in dpctl/show)."""
    return ovs_snap is not None and any(isinstance(r, Datapath) and r.name.startswith("system@")
                                        for r in ovs_snap.records)


def router_datapaths(target: "Target", runner: Runner, ovs: Any) -> tuple[str, ...]:
    """The selection's namespaces holding an OVS kernel datapath that no ovs-vswitchd drives:
    weave's fastdp router programs `datapath` directly over netlink. Empty where an ovs-vswitchd
    is the selection's OVS (its own snapshot covers the datapath) or the module is not loaded."""
    if ovs is not None or not os.path.exists("/sys/module/openvswitch") or runner.which("ovs-dpctl") is None:
        return ()
    return tuple(ns for ns, dps in router_counters(target.rule_netns, runner).items() if dps)


def router_counters(netns: Sequence[str], runner: Runner) -> dict[str, tuple[Datapath, ...]]:
    """Each router datapath's lookups (hit / missed / lost) and flow count, per namespace."""
    out = {}
    for ns in netns:
        done = runner.run(["ovs-dpctl", "show"], netns=ns or None, check=False)
        out[ns] = parse_dpctl_show(done.stdout).records if done.ok else ()
    return out


def router_lookups(before: dict[str, tuple[Datapath, ...]], after: dict[str, tuple[Datapath, ...]]) -> dict[str, Any]:
    """Per router datapath ("<netns>/system@datapath"), its lookups in the window: hit (a flow
    covered the frame), missed (no flow: an upcall to the router) and lost (an upcall nobody took),
    with the flows it held at the end (pure)."""
    out: dict[str, Any] = {}
    for ns, dps in after.items():
        was = {d.name: d for d in before.get(ns, ())}
        for d in dps:
            b = was.get(d.name)
            if b is None:
                continue
            out[f"{ns}/{d.name}"] = {"hit": max(d.hit - b.hit, 0), "missed": max(d.missed - b.missed, 0),
                                     "lost": max(d.lost - b.lost, 0), "flows": d.flows}
    return out


def router_node_of(before: dict[str, tuple[Datapath, ...]], after: dict[str, tuple[Datapath, ...]],
                   kernel: Any, packets: int) -> Node:
    """The OVS stage of a kernel datapath a CNI's router drives (weave fastdp): each packet's
    kernel visit, measured by the ovs_kernel probe, with the datapath's own lookups beside it. It
    has no model and no userspace share: the router's miss handling is not timed, and the
    lookups say how often it would have run (missed)."""
    stage = Node("stage", "ovs", packets=packets,
                 detail={"datapath": "OVS kernel datapath driven by the CNI's router (no ovs-vswitchd)",
                         "lookups": router_lookups(before, after)})
    return with_ovs_kernel(stage, kernel, packets)

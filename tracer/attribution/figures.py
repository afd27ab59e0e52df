"""What one profiling window saw, turned into attribution inputs: probe figures (transit, drops,
netfilter hooks and tables, the OVS kernel datapath) and counter deltas (conntrack, maps).

Pure: lists of figures and snapshots in, the dataclasses cnitrace.attribution.tree takes out, so the
arithmetic is tested without root. Names follow the collectors', so a measured table and its
counters meet in one node of the tree.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from cnitrace.attribution.tree import OvsKernel, ProgramTime, ProxyDetour, TableTime, Transit
from cnitrace.collectors.base import counter_delta
from cnitrace.collectors.conntrack.parse import PRESSURE, CpuStats, TableUsage
from cnitrace.probes.progtime import STAGE as PROGTIME_STAGE
from cnitrace.probes.progtime import program_label
from cnitrace.probes.specs import FENTRY


def merged(figs: Sequence[Any]) -> Any:
    """One histogram of several figures' (CPUs, interfaces or verdicts of one thing)."""
    h = figs[0].hist
    for f in figs[1:]:
        h = h + f.hist
    return h


def transit_of(figures: Sequence[Any], entry: set[int]) -> Transit | None:
    """Merge the transit histograms of packets that *entered* on one of the `entry` interfaces."""
    figs = [f for f in figures if f.stage == "transit" and f.key.get("ifindex_in") in entry]
    if not figs:
        return None
    h = merged(figs)
    return Transit(h.count, h.sum / h.count if h.count else 0.0, h.p50, h.p99, figs[0].backend)


def drops_of(figures: Sequence[Any]) -> list[dict[str, Any]]:
    by: dict[tuple[str, str], int] = {}
    for f in figures:
        if f.stage != "drops":
            continue
        k = (str(f.key.get("reason_name", f.key.get("reason"))), str(f.key.get("symbol", "")))
        by[k] = by.get(k, 0) + f.hist.count
    return [{"reason": r, "count": n, "where": w or None, "provenance": "measured"}
            for (r, w), n in sorted(by.items(), key=lambda kv: -kv[1])]


def table_label(key: dict[str, Any], labels: set[str]) -> str:
    """The counters' name for the table a measured figure belongs to, so both meet in one node.
    ipt_do_table / ip6t_do_table run x_tables (the legacy backend); nft_do_chain runs both
    iptables-nft's tables and native nft ones, and its key has no family: the counters decide."""
    t, kind = key.get("table"), key.get("kind")
    if kind == "iptables":
        return f"{t} (iptables-legacy, ipv4)"
    if kind == "ip6tables":
        return f"{t} (iptables-legacy, ipv6)"
    for cand in (f"{t} (iptables-nft, ipv4)", f"ip {t} (nft)", f"inet {t} (nft)", f"ip6 {t} (nft)",
                 f"{t} (iptables-nft, ipv6)"):
        if cand in labels:
            return cand
    return f"{t} (nft)"


def netfilter_hooks_of(figures: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Measured time per netfilter hook call (nf_hook_slow: every table at that hook), by family and
    hook, with the backend that timed it: the figure a pinned nf_hook_slow backend changes."""
    by: dict[str, list[Any]] = {}
    for f in figures:
        if f.stage == "netfilter" and f.map == "nf_hook_agg":
            by.setdefault(f"{f.key.get('pf')} {f.key.get('hook')}", []).append(f)
    out = {}
    for name, figs in sorted(by.items()):
        h = merged(figs)
        out[name] = {"calls": h.count, "mean_ns": h.mean, "p50_ns": h.p50, "p99_ns": h.p99,
                     "backend": figs[0].backend}
    return out


def netfilter_tables_of(figures: Sequence[Any], labels: set[str] = frozenset()) -> list[TableTime]:
    """Measured time per netfilter table, named as the counters name it (`labels`)."""
    out: dict[str, list[Any]] = {}
    for f in figures:
        if f.stage == "netfilter" and f.map == "nf_table_agg":
            out.setdefault(table_label(f.key, labels), []).append(f)
    tables = []
    for name, figs in out.items():
        h = merged(figs)
        tables.append(TableTime(name, h.count, h.sum / h.count if h.count else 0.0,
                                h.p50, h.p99, figs[0].backend))
    return tables


def ovs_kernel_of(figures: Sequence[Any], entry: set[int]) -> OvsKernel | None:
    """Merge the OVS kernel datapath figures of packets that *entered* on one of the `entry` ports:
    visits (ovs_vport_receive), process calls (ovs_dp_process_packet, recirculations included)
    and upcalls."""
    hists: dict[str, Any] = {}
    upcalls, backend = 0, "kprobe"
    for f in figures:
        if f.stage != "ovs_kernel" or f.key.get("ifindex") not in entry:
            continue
        if f.map == "ovs_upcall_agg":
            upcalls += f.hist.count
        elif f.map == "ovs_agg":
            fn = str(f.key.get("fn"))
            hists[fn] = hists[fn] + f.hist if fn in hists else f.hist
            backend = f.backend
    proc = hists.get("process")
    if proc is None or not proc.count:
        return None
    visit_fn = "receive" if hists.get("receive") is not None and hists["receive"].count else "process"
    visit = hists[visit_fn]
    return OvsKernel(visit.count, visit.mean, proc.count, proc.mean, proc.p50, proc.p99, visit.p50, visit.p99,
                     upcalls, backend, visit_fn)


def proxy_detour_of(through: Any, direct: Any, proxy: str) -> ProxyDetour | None:
    """Added time per request of the lab's L7 proxy detour: mean request latency through the proxy
    minus the direct path's (both measured by ab, same concurrency)."""
    if through is None or direct is None:
        return None
    a, b = through.metrics.get("mean_ms"), direct.metrics.get("mean_ms")
    if a is None or b is None:
        return None
    return ProxyDetour(int(through.metrics.get("complete") or 0), max((a - b) * 1e6, 0.0), proxy,
                       through_ns=a * 1e6, direct_ns=b * 1e6)


def conntrack_of(before: Any, after: Any) -> dict[str, Any] | None:
    """Conntrack pressure in the rule namespaces: entries vs max (a gauge), and the window's
    failure counters (insert_failed, drop, early_drop, search_restart) from procfs."""
    if before is None or after is None:
        return None

    out: dict[str, Any] = {"count": 0, "max": 0, **{k: 0 for k in PRESSURE}}
    old = {r.key: r for r in before.records}
    for r in after.records:
        if isinstance(r, TableUsage):
            out["count"] += r.count
            out["max"] = max(out["max"], r.max or 0)
        elif isinstance(r, CpuStats) and r.source == "procfs":
            o = old.get(r.key)
            for k in PRESSURE:
                if k in r.values:
                    out[k] += counter_delta(o.values.get(k, 0) if o else 0, r.values[k]).value
    return out


def maps_of(bpf: Any) -> list[dict[str, Any]]:
    """Map pressure (entries / max) of the maps the selected programs use."""
    return list(bpf.meta.get("maps", [])) if bpf is not None else []


def program_times(figures: Iterable[Any]) -> list[ProgramTime]:
    """tc_bpf figures -> attribution inputs: a program per fentry figure (named as its bpf_stats
    figure is, so the two meet), an interface's tc classify path per kprobe figure."""

    out = []
    for f in figures:
        if f.stage != PROGTIME_STAGE or not f.hist.count:
            continue
        if f.backend == FENTRY:
            name = program_label(f.key["prog_id"], f.key.get("prog_name", ""), f.key.get("prog_type", ""))
        else:
            name = f"tc classify on {f.key.get('iface', f.key.get('ifindex'))}"
        out.append(ProgramTime(name, f.hist.count, f.hist.mean, f.backend, f.hist.p50, f.hist.p99))
    return out

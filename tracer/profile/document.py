"""The profile's attribution and document: counters and probe figures of one window into the
stage tree (pure functions in cnitrace.attribution), then the versioned JSON document
(the contract, reports/profile.schema.json).
"""

from __future__ import annotations

import platform
import socket
from typing import Any, Mapping, Sequence

from cnitrace import __version__
from cnitrace.attribution.datapath import bpf_programs
from cnitrace.attribution.figures import (conntrack_of, drops_of, maps_of, netfilter_hooks_of, netfilter_tables_of,
                                          ovs_kernel_of, program_times, proxy_detour_of, transit_of)
from cnitrace.attribution.netfilter import (drop_rules, evaluation_order, iptables_nft_tables, iptables_work,
                                            merge_drops, nft_work)
from cnitrace.attribution.changes import (MEASURED_STAY_VALID, Changes, bound_work, changes_between, forced_resets,
                                          mark_ovs, mark_programs, mark_work, rebased_nft, rebased_ruleset,
                                          rule_counts)
from cnitrace.attribution.tree import (Calib, bpf_stage, build_tree, clamp_tree, netfilter_stage, proxy_stage,
                                       with_ovs_kernel)
from cnitrace.calibrate.rules import cpu_model
from cnitrace.collectors.iptables.source import ruleset_of
from cnitrace.profile import exercised, l7
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.ovs import OVS_USERSPACE_BACKEND, ovs_node_of, router_node_of
from cnitrace.profile.target import Target
from cnitrace.profile.window import Counters, Window, proxy_connections
from cnitrace.reports.document import SCHEMA_VERSION, Node, headline, validate


def netfilter_inputs(before: Counters, after: Counters, mid: Sequence[Counters] = (),
                     changes: Changes | None = None, walks: Mapping[str, Mapping] = {}
                     ) -> tuple[list, list[str], list[str], list]:
    """Per rule namespace: each chain's work over the window, its counters re-based over the
    mid-window snapshots (a chain replaced mid-window keeps what it counted before), changed chains
    marked re-based or excluded (attribution.changes), every chain bounded by the packets its
    namespace's links carried; the evaluation order and the rules that dropped. `walks`: per
    namespace, the long chains' timed header walks (calibrate.walk)."""
    changes = changes if changes is not None else changes_between(before, after, mid)
    seq = [before, *mid, after]
    work, warnings, order, drops = [], [], [], []
    for ns in after.iptables:
        rulesets = [ruleset_of(c.iptables[ns]) for c in seq if ns in c.iptables]
        delta = rebased_ruleset(rulesets, forced_resets(changes, ns, seq))
        iw, w2 = iptables_work(delta, walks=walks.get(ns, {}))
        recs = rebased_nft([c.nft[ns].records for c in seq if ns in c.nft])
        nw, w4 = nft_work(recs, skip=iptables_nft_tables(delta))
        counts = rule_counts(rulesets[-1], after.nft[ns].records if ns in after.nft else ())
        links = [c.link_packets.get(ns) for c in (before, after)]
        entered = links[1] - links[0] if None not in links and links[1] >= links[0] else None
        bounded, w5 = bound_work(mark_work(iw + nw, ns, changes, counts), entered, f"netns {ns}" if ns else "")
        work += bounded
        order += [c for c in evaluation_order(delta, iw) if c not in order]
        drops += drop_rules(delta)
        warnings += [*after.iptables[ns].warnings, *w2, *w4, *w5]
    return work, order, warnings, drops


def packets_of(cfg: ProfileConfig, win: Window, target: Target, transit: Any, work: list) -> int:
    """The window's packet count, from the most exact source there is: crafted (sent), timed
    (transit), entry interfaces' rx counters, else the busiest chain's packets."""
    sent = getattr(win.traffic, "packets_sent", None) if win.traffic else None
    entered = sum(max(win.after.rx_packets.get(k, 0) - v, 0) for k, v in win.before.rx_packets.items())
    if cfg.traffic == "probe" and sent:
        return sent
    if transit is not None:
        return transit.packets
    if entered:
        return entered
    return max((w.packets for w in work), default=0)


def attribute(cfg: ProfileConfig, target: Target, win: Window, cal: Any, ovs_cal: Any,
              walks: Mapping[str, Mapping] = {}) -> dict[str, Any]:
    """Window -> the stage tree and the figures beside it (drops, evaluation order, warnings, what
    changed under the profiler and what that did to the figures)."""
    changes = changes_between(win.before, win.after, win.mid)
    work, order, warnings, rule_drops = netfilter_inputs(win.before, win.after, win.mid, changes, walks)
    warnings = [*warnings, *(f"{c.chain}: {c.walk_note}" for c in work if c.walk_note and c.walk_ns is None)]
    figures = win.figures
    entry = target.entry_ifindexes
    transit = transit_of(figures, entry)
    packets = packets_of(cfg, win, target, transit, work)
    calib = Calib.from_shapes(cal) if cal else Calib(0.0)
    stages: list[Node] = [netfilter_stage(work, packets, calib,
                                          measured=netfilter_tables_of(figures, {w.table for w in work}))]
    nf_hooks = netfilter_hooks_of(figures)
    if nf_hooks:
        stages[0].detail["hooks"] = nf_hooks
    programs = bpf_programs(win.before.bpf, win.after.bpf) if win.before.bpf and win.after.bpf else []
    traced = program_times(figures)
    if programs or traced:
        stages.append(mark_programs(bpf_stage(programs, packets, traced), changes))
    if win.before.ovs is not None and win.after.ovs is not None:
        ovs_node = mark_ovs(ovs_node_of(win.before, win.after, win.seconds, win.ovs_idle, packets, calib, ovs_cal,
                                        win.ovs_cpu), changes)
        kernel = ovs_kernel_of(figures, entry)
        stages.append(with_ovs_kernel(ovs_node, kernel, packets) if kernel else ovs_node)
        win.backends["ovs_userspace"] = OVS_USERSPACE_BACKEND
    elif win.before.router_dp:
        kernel = ovs_kernel_of(figures, entry)
        if kernel:
            stages.append(router_node_of(win.before.router_dp, win.after.router_dp, kernel, packets))
    detour = proxy_detour_of(win.through, win.direct, l7.proxy_label(target)) if target.lab else None
    if detour is not None:
        node = proxy_stage(detour)
        node.detail.update({"through_proxy_mean_ms": win.through.metrics.get("mean_ms"),
                            "direct_mean_ms": win.direct.metrics.get("mean_ms"),
                            "proxy_connections_seen": proxy_connections(figures, target),
                            "method": "ab -c 1 through the proxy vs direct from the node namespace"})
        if win.l7_parts:
            node.detail["parts"] = win.l7_parts
            warnings += [f"L7 detour: {w}" for w in [*win.l7_parts["warnings"], win.l7_parts["stall"]] if w]
        stages.append(node)
    root = build_tree(stages, transit, packets)
    warnings += clamp_tree(root)
    warnings += [n.detail["warning"] for _, n in root.walk() if n.detail.get("warning")]
    if changes:
        warnings.append(f"{len(changes)} object(s) changed during the window (see changes); {MEASURED_STAY_VALID}")
    return {"root": root, "order": order, "warnings": warnings, "drops": merge_drops(drops_of(figures), rule_drops),
            "walks": walks_json(walks),
            "changes": changes}


def changes_json(changes: Changes | None, win: Window) -> dict[str, Any] | None:
    """The document's changes section: every changed object, what it does to the figures, and how
    the window was watched (the mid-window snapshots)."""
    if changes is None:
        return None
    b, a = win.before.link_packets, win.after.link_packets
    crossed = {ns: a[ns] - b[ns] for ns in a if ns in b and a[ns] >= b[ns]}
    return {**changes.to_json(), "mid_snapshots": win.overhead.get("mid_snapshots"), "packets_crossed": crossed}


def walks_json(walks: Mapping[str, Mapping]) -> list[dict[str, Any]]:
    """The long chains' timed header walks (calibrate.walk), one row per chain."""
    return [{"netns": ns, "table": k[1], "chain": k[2], **w.to_json()}
            for ns, per in walks.items() for k, w in per.items()]


def calibration_json(cal: Any, ovs_cal: Any, walks: Sequence[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """The per-shape calibration (calibrate.shapes.ShapeCosts); ns_per_rule_eval is its port-match
    rule, the figure for chains whose rules have no shape (native nft without counters)."""
    if not cal:
        return None
    return {"ns_per_rule_eval": Calib.from_shapes(cal).ns_per_rule_eval, "provenance": cal.provenance,
            "backend": cal.backend, "method": cal.method, "shapes": cal.to_json(),
            "ovs": ovs_cal.summary() if ovs_cal else None, "walks": list(walks)}


def build_document(cfg: ProfileConfig, target: Target, cnis: list[dict[str, Any]], started_at: float, win: Window,
                   result: dict[str, Any], cal: Any, ovs_cal: Any, warnings: list[str]) -> dict[str, Any]:
    """The versioned profile document, validated against its own schema."""
    root = result["root"]
    sent = getattr(win.traffic, "packets_sent", None) if win.traffic else None
    doc = {
        "schema_version": SCHEMA_VERSION, "kind": "profile", "tool": {"name": "cnitrace", "version": __version__},
        "host": {"kernel": platform.release(), "cpu": cpu_model(), "hostname": socket.gethostname()},
        "cni": cnis,
        "lab": ({"spec": target.lab.spec.to_json(), "ground_truth": target.lab.truth.to_json()}
                if target.lab else None),
        "selection": {"interfaces": target.interfaces, "netns": [n for n in target.rule_netns if n]},
        "started_at": started_at, "duration_s": round(win.seconds, 3),
        "traffic": {"kind": cfg.traffic, "packets_sent": sent,
                    "result": win.traffic.to_json() if win.traffic else None},
        "backends": win.backends,
        "calibration": calibration_json(cal, ovs_cal, result.get("walks", ())),
        "tree": root.to_json(), "headline": headline(root),
        "drops": result["drops"], "conntrack": conntrack_of(win.before.conntrack, win.after.conntrack),
        "maps": maps_of(win.after.bpf),
        "evaluation_order": result["order"], "overhead": win.overhead, "lost_events": int(win.lost),
        "changes": changes_json(result.get("changes"), win),
        "replay": exercised.section(win, target, root),
        "warnings": [w for w in warnings if w][:50] + (["interrupted"] if win.interrupted else []),
    }
    errors = validate(doc)
    if errors:  # our own contract: a bug, said plainly rather than writing a bad document
        raise RuntimeError(f"profile document does not match its schema: {errors[0]}")
    return doc

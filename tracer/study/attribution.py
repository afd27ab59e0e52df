"""Which datapath stage explains each study result, with its figure (pure, over sweep points).

Every explanation names one stage and gives its figure with provenance: the policy walk
(netfilter/nftables chain evaluations × the node's calibrated ns per evaluation, modelled from
the counters; OVS tables; the BPF program's run time where the profile measured it), the VXLAN
overlay, the L7 proxy detour, or — for concurrency — conntrack and the CPU the streams share.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cnitrace.reports.document import fmt_ns

POLICY_WORDS = {
    "netfilter": "policy chain evaluations",
    "nftables": "nftables policy set lookups",
    "ovs": "OVS tables (IngressRule conjunction lookup)",
    "bpf": "BPF program (policy-map lookup in cil_to_container)",
}
CT_ERRORS = ("insert_failed", "drop", "early_drop")


def _stage(point: Mapping[str, Any] | None, name: str | None = None) -> Mapping[str, Any] | None:
    """The point's policy stage (the first that is not the overlay or the proxy), or the named one."""
    for st in (point or {}).get("stages") or ():
        if (name is None and st.get("stage") not in ("l7-proxy", "vxlan")) or st.get("stage") == name:
            return st
    return None


def _profiled(point: Mapping[str, Any] | None, stage: str) -> Mapping[str, Any] | None:
    """The profile attribution's figure of a stage at this point (if the profile ran and found it)."""
    attr = (point or {}).get("attribution") or {}
    return next((s for s in attr.get("stages") or () if s.get("stage") == stage and s.get("ns_per_packet") is not None),
                None)


def stage_result(name: str, text: str, ns: float | None, provenance: str | None, unit: str = "ns/packet (NEW)",
                 **extra: Any) -> dict[str, Any]:
    return {"name": name, "text": text, "ns": ns, "unit": unit, "provenance": provenance, **extra}


def policy_stage(point: Mapping[str, Any] | None, policy_stage_name: str, *, has_policy: bool = True,
                 ns_per_eval: float | None = None, base_evals: int | None = None) -> dict[str, Any]:
    """The policy stage at one point: evaluations × ns per evaluation (modelled), the measured
    NEW-packet cost over N = 0, and the profile's figure for the stage where it ran."""
    if not has_policy:
        return stage_result("none (no policy)", "no policy stage: flannel enforces no policy (the baseline path)",
                            None, None)
    words = POLICY_WORDS.get(policy_stage_name, f"{policy_stage_name} policy stage")
    st = _stage(point)
    if point is None or point.get("status") != "ok" or st is None:
        why = (point or {}).get("error") or "point not measured"
        return stage_result(policy_stage_name, f"{words}: not measured ({why})", None, None)
    rules = (point.get("spec") or {}).get("rules")
    evals = st.get("evaluations")
    modelled, measured = st.get("modelled_ns"), st.get("measured_ns")
    parts: list[str] = []
    ns, prov = None, None
    if policy_stage_name in ("netfilter", "nftables") and evals and modelled is not None:
        walk = f"{evals:,} evaluation{'s' if evals != 1 else ''} per NEW packet (N = {rules or 0:,} rules)"
        sign = "+" if modelled >= 0 else "−"
        if base_evals is not None and evals > base_evals:
            added = evals - base_evals
            walk += (f": {added:,} more than N = 0 × {modelled / added:.1f} ns = {sign}{fmt_ns(abs(modelled))} "
                     f"(modelled: counters × per-shape calibration)")
        else:
            if ns_per_eval:
                walk += f" × {ns_per_eval:.0f} ns (calibrated, port rule)"
            walk += f"; {sign}{fmt_ns(abs(modelled))} over N = 0 (modelled: counters × per-shape calibration)"
        parts.append(walk)
        ns, prov = modelled, "modelled"
        chains = ((point.get("model") or {}).get("chains") or {})
        if chains:
            top, top_ns = max(chains.items(), key=lambda kv: kv[1])
            parts.append(f"busiest chain {top} {fmt_ns(top_ns)}")
    elif evals is not None:
        parts.append(f"{evals:,} lookup{'s' if evals != 1 else ''} per NEW packet whatever N (N = {rules:,})")
    prof = _profiled(point, policy_stage_name)
    if prof is not None:
        parts.append(f"profile: {fmt_ns(prof['ns_per_packet'])}/packet ({prof.get('provenance') or 'measured'})")
        if ns is None:
            ns, prov = float(prof["ns_per_packet"]), f"{prof.get('provenance') or 'measured'} (profile)"
    if measured is not None:
        parts.append(f"NEW-packet cost {'+' if measured >= 0 else '−'}{fmt_ns(abs(measured))} vs N = 0 (measured)")
        if ns is None:
            ns, prov = measured, "measured"
    if ns is None and modelled is not None:
        ns, prov = modelled, "modelled"
        parts.append(f"{fmt_ns(modelled)} per NEW packet (modelled)")
    return stage_result(policy_stage_name, f"{words}: " + ("; ".join(parts) if parts else "no figure"), ns, prov)


def concurrency_stage(point: Mapping[str, Any] | None, policy_stage_name: str) -> dict[str, Any]:
    """Many clients: conntrack failures if any (the study's failures), else the CPU the streams share,
    with the per-connection policy walk beside it."""
    if point is None or point.get("status") != "ok":
        why = (point or {}).get("error") or "point not measured"
        return stage_result("conntrack / cpu", f"not measured ({why})", None, None)
    ct = point.get("conntrack") or {}
    errs = {k: ct.get(k, 0) for k in CT_ERRORS if ct.get(k, 0)}
    fails = point.get("connection_failures") or 0
    clients = (point.get("spec") or {}).get("clients")
    st = _stage(point) or {}
    walk = st.get("modelled_total_ns")
    walk_txt = (f"; policy walk per NEW connection {fmt_ns(walk)} (modelled)" if walk is not None else "")
    softirq = ((point.get("metrics") or {}).get("softirq_pct") or {}).get("median")
    if errs or fails:
        what = ", ".join(f"{k} {v}" for k, v in errs.items()) or "none counted"
        return stage_result("conntrack", f"conntrack: {what}; {fails} failed connections at {clients} clients"
                            + walk_txt, float(sum(errs.values()) + fails), "measured", unit="events")
    cpu = f"softirq {softirq:.0f} % of CPU" if softirq is not None else "softirq not read"
    return stage_result("cpu (softirq)", f"cpu (softirq): {clients} streams share 2 cores, {cpu} (measured); conntrack "
                        f"insert_failed/drop 0, 0 failed connections" + walk_txt, walk,
                        "modelled" if walk is not None else None)


def vxlan_stage(point: Mapping[str, Any] | None) -> dict[str, Any]:
    st = _stage(point, "vxlan")
    if st is None or st.get("measured_ns") is None:
        why = (point or {}).get("error") or "no intra-node twin to subtract"
        return stage_result("vxlan", f"VXLAN encap/decap: not measured ({why})", None, None)
    return stage_result("vxlan", f"VXLAN encap/decap: {'+' if st['measured_ns'] >= 0 else '−'}"
                        f"{fmt_ns(abs(st['measured_ns']))} per NEW packet (measured, inter minus intra twin; "
                        f"a lower bound)", float(st["measured_ns"]), "measured")


def proxy_label(proxy: str | None, datapath: str, study_proxy: str) -> dict[str, Any]:
    """Which proxy ran, and whether it is the study's or a stand-in for it."""
    ran = proxy or "unknown"
    real = ran.lower() == (study_proxy or "").lower()
    return {"ran": ran, "study": study_proxy, "stand_in": not real,
            "label": ran if real else f"{ran} (stand-in for {(study_proxy or 'the study proxy').capitalize()})"}


def l7_stage(point: Mapping[str, Any] | None, proxy: Mapping[str, Any]) -> dict[str, Any]:
    st = _stage(point, "l7-proxy")
    if st is None or st.get("measured_ns") is None:
        why = (point or {}).get("error") or "no L3/L4 twin to subtract"
        return stage_result("l7-proxy", f"L7 proxy detour ({proxy['label']}): not measured ({why})", None, None,
                            unit="ns/request")
    ns = float(st["measured_ns"])
    return stage_result("l7-proxy", f"L7 proxy detour ({proxy['label']}): {'+' if ns >= 0 else '−'}{fmt_ns(abs(ns))} "
                        f"per request at concurrency 1 (measured: through the proxy minus direct)", ns, "measured",
                        unit="ns/request")


def ratio_stage(points: Sequence[tuple[str, str | None, Mapping[str, Any] | None]]) -> dict[str, Any]:
    """Across CNIs (Cilium vs the others): each one's policy stage per NEW packet, side by side."""
    parts, ns = [], None
    for dp, stage_name, p in points:
        if stage_name is None:
            parts.append(f"{dp} none (no policy)")
            continue
        st = _stage(p) or {}
        v = st.get("measured_ns")
        if v is None:
            v = st.get("modelled_ns")
        parts.append(f"{dp} {stage_name} {fmt_ns(v)}")
        if dp == "cilium":
            ns = v
    return stage_result("datapath (policy stage per CNI)", "policy stage per NEW packet at N = 100 over N = 0: "
                        + ", ".join(parts), ns, "measured" if ns is not None else None)

"""Several dumps of one node, analysed as one: the analyze document (pure).

The iptables and nftables tables from every dump join on one set of hook paths, in the order the
kernel runs them (by netfilter priority), because that is the path a packet takes whatever tool
printed the rules. Every figure in the document says where it came from: "static" (from the
rules' structure × a per-evaluation cost whose source is named), "counters" (the dump's own
counters, totals since boot), or "measured" (the kernel timed it: bpf_stats).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from cnitrace import __version__
from cnitrace.analyze import bpf, cni, ovs, state
from cnitrace.analyze.costs import CostModel
from cnitrace.analyze.dumps import Dump, Skipped
from cnitrace.analyze.iptables import HookStep, analyze_ruleset, iptables_nft_tables
from cnitrace.analyze.nftables import analyze_records
from cnitrace.collectors.bpfprog.parse import BpfMap, BpfProg
from cnitrace.collectors.iptables.parse import OTHER_BACKEND_PRESENT
from cnitrace.collectors.ovs.parse import Datapath, Megaflow, OfFlow

SCHEMA_VERSION = 1
HOOK_ORDER = ("ingress", "prerouting", "input", "forward", "output", "postrouting", "egress")
IPTABLES_FORMATS = ("iptables-save", "iptables-list")
NFT_FORMATS = ("nft-json", "nft-text")
PROVENANCE_LEGEND = ("static = from the rules' structure × a per-evaluation cost (its source named); counters = the "
                     "dump's own counters, totals since boot (not a window); measured = timed by the kernel "
                     "(bpf_stats)")


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The document and the dumps it was made from (the diff reads both)."""

    doc: dict[str, Any]
    dumps: tuple[Dump, ...]
    skipped: tuple[Skipped, ...] = ()


def hook_paths(steps: Iterable[HookStep]) -> list[dict[str, Any]]:
    """Per (family, hook): the tables/base chains in priority order and the path's static totals."""
    by: dict[tuple[str, str], list[HookStep]] = {}
    for s in steps:
        by.setdefault((s.family, s.hook), []).append(s)
    out = []
    for (family, hook), ss in sorted(by.items(), key=lambda kv: (kv[0][0], _hook_rank(kv[0][1]))):
        ss = sorted(ss, key=lambda s: (s.priority, s.what))
        sources = sorted({s.cost_source for s in ss})

        def total(xs: list[HookStep]) -> dict[str, Any]:
            return {"worst_evaluations": sum(s.static.worst_evaluations for s in xs),
                    "typical_evaluations": sum(s.static.typical_evaluations for s in xs),
                    "worst_ns": round(sum(s.static.worst_ns for s in xs), 1),
                    "typical_ns": round(sum(s.static.typical_ns for s in xs), 1),
                    "provenance": "static", "cost_source": "+".join(sources)}

        established = [s for s in ss if not s.first_packet_only]
        out.append({"family": family, "hook": hook, "steps": [s.to_json() for s in ss], "static": total(ss),
                    "static_established": total(established) if len(established) != len(ss) else None})
    return out


def _hook_rank(hook: str) -> int:
    return HOOK_ORDER.index(hook) if hook in HOOK_ORDER else len(HOOK_ORDER)


def _input_row(d: Dump) -> dict[str, Any]:
    return {"file": d.source, "section": d.section, "line": d.meta.get("line"), "command": d.command,
            "format": d.format, "confidence": d.detected.confidence, "reason": d.detected.reason,
            "records": len(d.records) if not hasattr(d.data, "rules") else len(d.data.chains) + len(d.data.rules),
            "warnings": list(d.warnings), "provenance": d.meta.get("provenance")}


def analyze(items: Sequence[Dump | Skipped], model: CostModel) -> Analysis:
    """The analyze document of every dump of one node (pure)."""
    dumps = tuple(d for d in items if isinstance(d, Dump))
    skipped = tuple(d for d in items if isinstance(d, Skipped))
    warnings: list[str] = []
    tables: list[dict[str, Any]] = []
    steps: list[HookStep] = []
    for d in dumps:
        if d.format in IPTABLES_FORMATS:
            t, s, w = analyze_ruleset(d.data, model, rule_counters=bool(d.meta.get("rule_counters")),
                                      source=d.label, approximate=bool(d.meta.get("approximate")),
                                      listing=d.format == "iptables-list")
            tables += t
            steps += s
            warnings += [f"{d.label}: {x}" for x in w]
    skip = iptables_nft_tables(tables)
    for d in dumps:
        if d.format in NFT_FORMATS:
            t, s, w = analyze_records(d.records, model, source=d.label, skip=skip)
            tables += t
            steps += s
            warnings += [f"{d.label}: {x}" for x in w]
    seen: dict[str, str] = {}
    for t in tables:
        if t["label"] in seen:
            warnings.append(f"{t['label']} appears in {seen[t['label']]} and {t['source']}: analysed separately "
                            "(two dumps of one table: before/after? use `cnitrace diff`)")
        seen.setdefault(t["label"], t["source"])

    of = [d for d in dumps if d.format == "ovs-flows"]
    ovs_doc = {
        "flows": [{"source": d.label, **ovs.flow_tables([r for r in d.records if isinstance(r, OfFlow)],
                                                        d.meta.get("bridge", ""))} for d in of],
        "megaflows": [{"source": d.label, **ovs.megaflows(r for r in d.records if isinstance(r, Megaflow))}
                      for d in dumps if d.format == "ovs-dpctl-flows"],
        "datapaths": [x for d in dumps if d.format in ("ovs-dpctl-show", "ovs-dpif-show")
                      for x in ovs.datapaths((r for r in d.records if isinstance(r, Datapath)),
                                             d.meta.get("extra_records", ()))],
        "bridges": [{"source": d.label, "bridges": [r for r in d.records if isinstance(r, str)],
                     "ports": list(d.meta.get("ports", ()))} for d in dumps if d.format == "ovs-vsctl-show"],
    }
    bpf_dumps = [d for d in dumps if d.format.startswith(("bpftool-", "tc-filter"))]
    bpf_doc = bpf.summarize([r for d in bpf_dumps for r in d.records if isinstance(r, BpfProg)],
                            [r for d in bpf_dumps for r in d.records if not isinstance(r, (BpfProg, BpfMap))],
                            [r for d in bpf_dumps for r in d.records if isinstance(r, BpfMap)]) if bpf_dumps else None
    ct_s = [r for d in dumps if d.format == "conntrack-stats" for r in d.records]
    ct_l = [r for d in dumps if d.format == "conntrack-list" for r in d.records]
    ipset_recs = [r for d in dumps if d.format == "ipset" for r in d.records]
    cil_pol = [r for d in dumps if d.format in ("cilium-policy-text", "cilium-policy-json") for r in d.records]
    cil_status = [r for d in dumps if d.format == "cilium-status" for r in d.records]
    cal_c = [r for d in dumps if d.format == "calico-counters" for r in d.records]
    cal_p = [r for d in dumps if d.format == "calico-policy" for r in d.records]

    detected = cni.detect(list(dumps))
    kpr = next((str(getattr(r, "kube_proxy_replacement", "") or "") for r in cil_status
                if str(getattr(r, "kube_proxy_replacement", "") or "").split(" ")[0] in ("True", "Strict")), None)
    if kpr and detected["kube_proxy"]["mode"] in ("none", "iptables"):
        detected["kube_proxy"] = {"mode": "cilium (kube-proxy replacement)" if detected["kube_proxy"]["mode"] == "none"
                                  else "iptables + cilium kube-proxy replacement",
                                  "reason": f"cilium status: KubeProxyReplacement {kpr}; "
                                            f"{detected['kube_proxy']['reason']}",
                                  "evidence": [*detected["kube_proxy"]["evidence"], "cilium status"]}
    elif detected["kube_proxy"]["mode"] == "none" and \
            not any(d.format in IPTABLES_FORMATS + NFT_FORMATS for d in dumps):
        # "none" needs a ruleset to look in (an interface list shows IPVS's kube-ipvs0, but iptables and
        # nftables modes leave no interface); a positive trace (IPVS's ipsets or link) stands alone
        detected["kube_proxy"] = {"mode": "unknown", "reason": "no iptables/nftables ruleset among the dumps",
                                  "evidence": []}
    ipt = [t for t in tables if t["kind"] == "iptables"]
    nft = [t for t in tables if t["kind"] == "nftables"]
    # iptables-nft's "legacy tables present" is moot when the legacy dump is among the inputs
    has_legacy = any(t["backend"] == "legacy" for t in ipt)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "analyze", "tool": {"name": "cnitrace", "version": __version__},
        "inputs": [_input_row(d) for d in dumps],
        "skipped": [{"file": s.source, "section": s.section, "line": s.line, "command": s.command,
                     "reason": s.reason} for s in skipped],
        **detected,
        "cost": {**model.to_json(), "legend": PROVENANCE_LEGEND},
        "structure": {
            "iptables": {"tables": len(ipt), "chains": sum(t["chains"] for t in ipt),
                         "rules": sum(t["rules"] for t in ipt)} if ipt else None,
            "nftables": {"tables": len(nft), "chains": sum(t["chains"] for t in nft),
                         "rules": sum(t["rules"] for t in nft), "sets": sum(len(t["sets"]) for t in nft),
                         "elements": sum(s["elements"] for t in nft for s in t["sets"])} if nft else None,
            "ipsets": {"sets": len(ipset_recs), "entries": sum(x["entries"] or 0 for x in state.ipsets(ipset_recs))}
            if ipset_recs else None,
            "ovs": {"flows": sum(f["flows"] for f in ovs_doc["flows"]),
                    "tables": sum(len(f["tables"]) for f in ovs_doc["flows"]),
                    "megaflows": sum(m["megaflows"] for m in ovs_doc["megaflows"])}
            if of or ovs_doc["megaflows"] else None,
            "ovs_bridges": {"bridges": sum(len(b["bridges"]) for b in ovs_doc["bridges"]),
                            "ports": sum(len(b["ports"]) for b in ovs_doc["bridges"])} if ovs_doc["bridges"] else None,
            "bpf": {"programs": len(bpf_doc["programs"]), "attachments": len(bpf_doc["attachments"]),
                    "maps": len(bpf_doc["maps"])} if bpf_doc else None,
            "conntrack": {"entries": len(ct_l)} if ct_l else None,
        },
        "netfilter": {"tables": tables, "hooks": hook_paths(steps)} if tables else None,
        "ovs": ovs_doc if any(ovs_doc.values()) else None,
        "bpf": bpf_doc,
        "conntrack": {"stats": state.conntrack_stats(ct_s) if ct_s else None,
                      "list": state.conntrack_list(ct_l) if ct_l else None} if ct_s or ct_l else None,
        "ipsets": state.ipsets(ipset_recs) if ipset_recs else None,
        "cilium": {"policy": state.cilium_policy(cil_pol) if cil_pol else None,
                   "status": state.fields(cil_status) if cil_status else None} if cil_pol or cil_status else None,
        "calico": {"counters": state.calico_counters(cal_c) if cal_c else None,
                   "policy": state.calico_policy(cal_p) if cal_p else None} if cal_c or cal_p else None,
        "warnings": warnings + [f"{d.label}: {w}" for d in dumps for w in d.warnings
                                if not (OTHER_BACKEND_PRESENT in w and has_legacy)][:200],
    }
    return Analysis(doc, dumps, skipped)

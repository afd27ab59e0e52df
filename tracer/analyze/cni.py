"""Which CNI(s) and kube-proxy mode the dumped node ran: node.detect fed from the dumps (pure).

node.detect reads live evidence (links, iptables chains, nft tables, OVS bridges, tc programs);
the same names are in the dumps, so the same rules decide. Dumps that only a CNI prints (its
agent's status or policy map) are evidence of that CNI in themselves.
"""

from __future__ import annotations

from typing import Any, Iterable

from cnitrace.analyze.dumps import Dump
from cnitrace.collectors.nftables.parse import NftChain
from cnitrace.node.detect import Detection, Evidence, detect_cnis, detect_kube_proxy

AGENT_FORMATS = {"cilium-status": "cilium", "cilium-policy-text": "cilium", "cilium-policy-json": "cilium",
                 "calico-counters": "calico", "calico-policy": "calico"}


def evidence_of(dumps: Iterable[Dump]) -> Evidence:
    links: list[str] = []
    chains: list[tuple[str, str]] = []
    tables: list[str] = []
    bridges: list[str] = []
    programs: list[tuple[str, str]] = []
    for d in dumps:
        data = d.data
        if hasattr(data, "chains") and hasattr(data, "rules"):
            chains += [(c.backend or "legacy", c.name) for c in data.chains]
            continue
        for r in d.records:
            if isinstance(r, NftChain):
                chains.append(("nftables", r.name))
                t = f"{r.family} {r.table}"
                if t not in tables:
                    tables.append(t)
            elif d.format == "ip-link" and isinstance(r, str):
                links.append(r)
            elif d.format == "ovs-vsctl-show" and isinstance(r, str):
                bridges.append(r)
            elif hasattr(r, "prog_id") and (hasattr(r, "target") or hasattr(r, "iface")):
                dev = getattr(r, "target", None) or getattr(r, "iface", "")
                name = getattr(r, "prog_name", "") or ""
                if dev:
                    links.append(dev)
                if name:
                    programs.append((dev, name))
        for p in d.meta.get("extra_records", ()):
            name = getattr(p, "name", None)
            if isinstance(name, str):
                links.append(name)
                if name == "br-int":
                    bridges.append(name)
        if d.meta.get("bridge"):
            bridges.append(d.meta["bridge"])
    return Evidence(tuple(dict.fromkeys(links)), tuple(dict.fromkeys(chains)), tuple(tables),
                    tuple(dict.fromkeys(bridges)), (), tuple(dict.fromkeys(programs)))


def detect(dumps: list[Dump]) -> dict[str, Any]:
    """CNIs and kube-proxy mode with their evidence (JSON-ready)."""
    ev = evidence_of(dumps)
    found = {d.cni: d for d in detect_cnis(ev)}
    for d in dumps:
        cni = AGENT_FORMATS.get(d.format)
        if cni is None:
            continue
        why = f"{d.format} output ({d.label})"
        cur = found.get(cni)
        found[cni] = Detection(cni, ((*cur.evidence, why) if cur else (why,)), "strong")
    kp = detect_kube_proxy(ev)
    return {"cni": [d.to_json() for d in found.values()],
            "kube_proxy": {"mode": kp.mode, "reason": kp.reason, "evidence": list(kp.evidence)}}

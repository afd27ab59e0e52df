"""Which CNI(s) and kube-proxy mode the dumped node ran: node.detect fed from the dumps (pure).

node.detect reads live evidence (links, iptables chains, nft tables, OVS bridges, tc programs);
the same names are in the dumps, so the same rules decide. Dumps that only a CNI prints (its
agent's status or policy map) are evidence of that CNI in themselves.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from cnitrace.analyze.dumps import Dump
from cnitrace.analyze.sections import tool_words
from cnitrace.collectors.bpfprog.parse import BpfProg
from cnitrace.collectors.ipset.parse import IpSet
from cnitrace.collectors.iptables.parse import RETURN, TERMINAL_TARGETS
from cnitrace.collectors.nftables.parse import NftChain, NftRule
from cnitrace.node.detect import Detection, Evidence, detect_cnis, detect_kube_proxy

AGENT_FORMATS = {"cilium-status": "cilium", "cilium-policy-text": "cilium", "cilium-policy-json": "cilium",
                 "calico-counters": "calico", "calico-policy": "calico"}


def evidence_of(dumps: Iterable[Dump]) -> Evidence:
    links: list[str] = []
    chains: list[tuple[str, str]] = []
    tables: list[str] = []
    bridges: list[str] = []
    programs: list[tuple[str, str]] = []
    ipsets: list[str] = []
    for d in dumps:
        data = d.data
        if hasattr(data, "chains") and hasattr(data, "rules"):
            chains += [(c.backend or "legacy", c.name) for c in data.chains]
            # a partial paste names chains only as jump targets (`-j CILIUM_INPUT`, `-j KUBE-SEP-…`):
            # the kernel refuses a jump to a chain that does not exist, so they are on the node too
            chains += [(r.backend or "legacy", r.target) for r in data.rules
                       if r.target and r.target != RETURN and r.target not in TERMINAL_TARGETS]
            ipsets += [m for r in data.rules if "match-set" in r.spec for m in _MATCH_SET.findall(r.spec)]
            continue
        for r in d.records:
            if isinstance(r, NftChain):
                chains.append(("nftables", r.name))
                t = f"{r.family} {r.table}"
                if t not in tables:
                    tables.append(t)
            elif isinstance(r, NftRule):
                chains += [("nftables", t) for t in r.targets]
            elif isinstance(r, IpSet):
                ipsets.append(r.name)
            elif isinstance(r, BpfProg) and r.name:
                programs.append(("", r.name))         # loaded (`bpftool prog show`), where unknown
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
        if d.meta.get("bridge") and (d.format != "ovs-flows" or _antrea_flows(d.records)):
            bridges.append(d.meta["bridge"])
        links += list(d.meta.get("ports", ()))
    if any(_OVN_PORT.match(x) for x in links):   # an OVN br-int (OVN-Kubernetes, Kube-OVN, OpenStack)
        bridges = [b for b in bridges if b != "br-int"]
    return Evidence(tuple(dict.fromkeys(links)), tuple(dict.fromkeys(chains)), tuple(tables),
                    tuple(dict.fromkeys(bridges)), (), tuple(dict.fromkeys(programs)),
                    ipsets=tuple(dict.fromkeys(ipsets)))


_MATCH_SET = re.compile(r"(?:--)?match-set\s+(\S+)")   # save (`--match-set X src`) and -L (`match-set X src`)
_OVN_PORT = re.compile(r"^(ovn-k8s-mp\d+|ovn0|ovn-[0-9a-f]{6}-\d+|patch-br-int-to-\S+|patch-\S+-to-br-int|"
                       r"patch-provnet-\S+|q[rg]-[0-9a-f]{8}-[0-9a-f]{2})$")
_ANTREA_ZONES = ("zone=65520", "zone=65510", "zone=65500")   # Antrea's conntrack zones (0xfff0, v6, SNAT)


def _antrea_flows(flows: Iterable[Any]) -> bool:
    """Whether a bridge's flows are Antrea's: br-int is also OVN's (OpenStack, OVN-Kubernetes, Kube-OVN)
    and the Neutron OVS agent's, so the bridge name alone is not evidence; Antrea's conntrack zones or
    its named tables are."""
    return any(isinstance(getattr(f, "table", 0), str) or any(z in getattr(f, "actions", "") for z in _ANTREA_ZONES)
               for f in flows)


def detect(dumps: list[Dump]) -> dict[str, Any]:
    """CNIs and kube-proxy mode with their evidence (JSON-ready)."""
    ev = evidence_of(dumps)
    found = {d.cni: d for d in detect_cnis(ev)}
    for d in dumps:
        cni = AGENT_FORMATS.get(d.format)
        why = f"{d.format} output ({d.label})"
        antctl = tool_words(d.command)[:1] == ["antctl"]
        if d.format == "ovs-flows" and (antctl or _antrea_flows(d.records)):
            # Antrea's named tables or conntrack zones (or its own `antctl get of`) whatever the
            # bridge is called, and with no bridge named at all (a paste without its prompt)
            cni, why = "antrea", (f"antctl output ({d.label})" if antctl
                                  else f"OVS flows with Antrea's named tables or conntrack zones ({d.label})")
        if cni is None:
            continue
        cur = found.get(cni)
        found[cni] = Detection(cni, ((*cur.evidence, why) if cur else (why,)), "strong")
    kp = detect_kube_proxy(ev)
    return {"cni": [d.to_json() for d in found.values()],
            "kube_proxy": {"mode": kp.mode, "reason": kp.reason, "evidence": list(kp.evidence)}}

"""Deciding hop -> Policy: from lab ground truth when tracing a lab, else from the names and
comments the CNI writes (Calico `cali:` rule ids and cali-pi-/po-/tw-/fw- chains, kube-router
KUBE-NWPLCY- chains and comments, Weave WEAVE-NPC* chains and ipsets). Pure."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

from cnitrace.trace.hops import Hop, Policy

_POLICY_CHAIN = re.compile(r"^(cali-pi-|cali-po-|cali-pri-|cali-pro-|KUBE-NWPLCY-|WEAVE-NPC)")
_CALI_ID = re.compile(r'(?:^|[\s"])cali:([A-Za-z0-9_-]{16})')
_PROFILE_CHAIN = re.compile(r"^(cali-pri-|cali-pro-)")


def chain_of(hop: Hop) -> str:
    return hop.where.split()[-1] if hop.where else ""


def is_policy_chain(chain: str) -> bool:
    return bool(_POLICY_CHAIN.match(chain))


def from_names(chain: str, comment: str | None, rule: str | None = None) -> Policy | None:
    """What the CNI's own names say about the policy behind a rule; None if they say nothing."""
    comment = comment or ""
    m = _CALI_ID.search(f"{comment} {rule or ''}")
    rule_id = m.group(1) if m else None
    if chain.startswith(("cali-pi-", "cali-po-")):
        d = {"chain": chain, "direction": "ingress" if chain.startswith("cali-pi-") else "egress"}
        if rule_id:
            d["rule_id"] = rule_id
        return Policy("NetworkPolicy", chain, "chain name", d)
    if _PROFILE_CHAIN.match(chain):
        return Policy("profile", chain[len("cali-pri-"):] if chain.startswith("cali-pri-") else chain[len("cali-pro-"):],
                      "chain name", {"chain": chain})
    if chain.startswith(("cali-tw-", "cali-fw-")):
        d = {"chain": chain, "direction": "ingress" if chain.startswith("cali-tw-") else "egress",
             "workload_iface": chain[8:]}
        if rule_id:
            d["rule_id"] = rule_id
        return Policy("default-deny", chain, "chain name", d)
    if chain.startswith("KUBE-NWPLCY-"):
        text = f"{comment} {rule or ''}"
        m = re.search(r"policy name (\S+) namespace (\S+?)\"?(?:\s|$)", text)
        if m:
            return Policy("NetworkPolicy", f"{m.group(2)}/{m.group(1)}", "rule comment", {"chain": chain})
        return Policy("NetworkPolicy", chain, "chain name", {"chain": chain})
    if chain.startswith("KUBE-POD-FW-"):
        text = f"{comment} {rule or ''}"
        m = re.search(r"POD name:(\S+) namespace: (\S+?)\"?(?:\s|$)", text)
        d = {"chain": chain}
        if m:
            d["pod"] = f"{m.group(2)}/{m.group(1)}"
        return Policy("default-deny", d.get("pod", chain), "rule comment" if m else "chain name", d)
    if chain.startswith("WEAVE-NPC"):
        sets = re.findall(r"--match-set (\S+)", rule or "")
        kind = "default-deny" if chain in ("WEAVE-NPC-DEFAULT",) or "DROP" in (rule or "").split()[-1:] else "NetworkPolicy"
        return Policy(kind, comment or chain, "rule comment" if comment else "chain name", {"chain": chain, "ipsets": sets})
    return None


def _ref_matches(hop: Hop, ref) -> bool:
    if ref is None or ref.netns and hop.netns and ref.netns != hop.netns:
        return False
    d = hop.detail
    if ref.kind == "iptables":
        return chain_of(hop) == ref.chain and hop.where.split()[1] == ref.table and d.get("position") == ref.index
    if ref.kind == "nft":
        fam, _, table = ref.table.partition(" ")
        return (hop.where == f"{fam} {table} {ref.chain}" and
                (d.get("handle") == ref.handle if ref.handle is not None else d.get("position") == ref.index))
    return False


def _names_detail(hop: Hop) -> dict[str, Any]:
    """What the CNI's names add to a ground-truth policy (chain, Calico rule id)."""
    named = from_names(chain_of(hop), hop.detail.get("comment"), hop.rule)
    d = {"chain": chain_of(hop)}
    if named is not None:
        d.update({k: v for k, v in named.detail.items() if k in ("rule_id", "ipsets", "comment")})
    return d


def from_truth(hop: Hop, truth, lab: str, proto: str) -> Policy | None:
    """Lab ground truth: the hop is the lab's allow rule (per protocol) or its deny rule."""
    allowed = (truth.allowed or {}).get(proto)
    if allowed is not None and _ref_matches(hop, allowed):
        return Policy("NetworkPolicy", f"{lab}/allow-{proto}", "lab ground truth",
                      {"ref": allowed.to_json(), "effect": "allow", "direction": "ingress",
                       **_names_detail(hop)})
    if truth.denied is not None and _ref_matches(hop, truth.denied):
        return Policy("default-deny", f"{lab}/default-deny", "lab ground truth",
                      {"ref": truth.denied.to_json(), "effect": "deny", "direction": "ingress",
                       **_names_detail(hop)})
    return None


_TERMINAL_DROP = ("drop", "reject")


def decide(hops: list[Hop], *, truth=None, lab: str = "", proto: str = "") -> tuple[str, int | None]:
    """-> (verdict, index of the deciding hop). The packet is dropped at the first drop/reject;
    otherwise accepted, and decided by the ground-truth rule (lab), else the last rule that
    matched in a policy chain, else the last accepting rule."""
    for i, h in enumerate(hops):
        v = h.detail.get("nft_verdict")
        if v in _TERMINAL_DROP:
            rejected = v == "reject" or " -j REJECT" in (h.rule or "")   # iptables-nft REJECT: nft says drop
            return ("rejected" if rejected else "dropped"), i
    if truth is not None:
        for i, h in enumerate(hops):
            if h.layer == "netfilter" and from_truth(h, truth, lab, proto):
                return "forwarded", i
    best = None
    for i, h in enumerate(hops):
        if h.layer == "netfilter" and h.rule and is_policy_chain(chain_of(h)) and h.detail.get("nft_verdict") in ("continue", "accept", "return"):
            if not _PROFILE_CHAIN.match(chain_of(h)) or best is None:
                best = i
    if best is None:
        for i, h in enumerate(hops):
            if h.detail.get("nft_verdict") == "accept":
                best = i
    return ("forwarded" if hops else "unknown"), best


def annotate(hops: list[Hop], *, truth=None, lab: str = "", proto: str = "") -> tuple[list[Hop], str, int | None]:
    """Set verdict and Policy on the deciding hop; returns (hops, verdict, index)."""
    verdict, idx = decide(hops, truth=truth, lab=lab, proto=proto)
    # Layers that decide themselves (OVS flows, BPF programs) set verdict (and policy) on their
    # hop: a drop there decides unless netfilter dropped first; an allow there decides a packet
    # netfilter did not decide by a policy rule.
    layered = [i for i, h in enumerate(hops) if h.verdict and h.layer in ("ovs", "bpf")]
    drops = [i for i in layered if hops[i].verdict in ("dropped", "rejected")]
    if drops and (verdict not in ("dropped", "rejected") or drops[0] < (idx or 0)):
        return hops, hops[drops[0]].verdict, drops[0]
    if layered and verdict not in ("dropped", "rejected") and (
            idx is None or hops[idx].layer != "netfilter" or not (truth and from_truth(hops[idx], truth, lab, proto))):
        pick = next((i for i in layered if hops[i].policy), layered[-1])
        if idx is None or not is_policy_chain(chain_of(hops[idx])):
            return hops, hops[pick].verdict or "forwarded", pick
    if idx is None:
        return hops, verdict, None
    h = hops[idx]
    pol = None
    if truth is not None:
        pol = from_truth(h, truth, lab, proto)
    if pol is None:
        pol = from_names(chain_of(h), h.detail.get("comment"), h.rule)
    if pol is None and truth is not None and verdict == "forwarded" and truth.denied is None:
        pol = Policy("none", "no policy on this datapath", "lab ground truth", {})
    out = list(hops)
    out[idx] = dataclasses.replace(h, verdict=verdict, policy=pol)
    return out, verdict, idx


def policies(hops: Iterable[Hop]) -> list[Policy]:
    return [h.policy for h in hops if h.policy]

"""Deciding rule -> Policy: from the CNIs' own names and comments (real dumps) and lab ground truth."""

from pathlib import Path

import pytest

from cnitrace.collectors.iptables.parse import parse_ruleset
from cnitrace.lab.model import CounterRef, GroundTruth
from cnitrace.trace import policy
from cnitrace.trace.hops import Hop
from cnitrace.trace.netfilter import packets, parse_trace, to_hops

FIX = Path(__file__).parents[1] / "fixtures"


def _rules(name):
    rs, _ = parse_ruleset((FIX / name).read_text())
    return rs.rules


def _hop(rule, verdict="continue"):
    return Hop("netfilter", f"ip {rule.table} {rule.chain}", "", rule=f"-A {rule.chain} {rule.spec}",
               detail={"comment": rule.comment, "nft_verdict": verdict, "position": rule.position})


def test_calico_policy_and_endpoint_chains_from_gke_dump():
    rules = _rules("lab/calico-gke-iptables-save-excerpt.txt")
    drop = next(r for r in rules if r.chain.startswith("cali-tw-") and r.target == "DROP" and "policies" in r.spec)
    p = policy.from_names(drop.chain, drop.comment, drop.spec)
    assert (p.kind, p.name, p.source) == ("default-deny", "cali-tw-cali92d634f8f03", "chain name")
    assert p.detail["direction"] == "ingress" and p.detail["rule_id"] == "DENqw_tUMNBLYcWY"
    pi = next(r for r in rules if r.chain.startswith("cali-pi-"))
    p = policy.from_names(pi.chain, pi.comment, pi.spec)
    assert p.kind == "NetworkPolicy" and p.name == pi.chain and p.detail["rule_id"] == pi.comment[5:]
    pri = next((r for r in rules if r.chain.startswith("cali-pri-")), None)
    if pri is not None:
        assert policy.from_names(pri.chain, pri.comment).kind == "profile"


def test_kube_router_policy_from_comment():
    rules = _rules("lab/kube-router-k3s-iptables-save-excerpt.txt")
    nw = next(r for r in rules if r.chain.startswith("KUBE-NWPLCY-"))
    p = policy.from_names(nw.chain, nw.comment, f"-A {nw.chain} {nw.spec}")
    assert (p.kind, p.name, p.source) == ("NetworkPolicy", "argocd/argocd-application-controller-network-policy",
                                          "rule comment")
    rej = next(r for r in rules if r.chain.startswith("KUBE-POD-FW-") and r.target == "REJECT")
    p = policy.from_names(rej.chain, rej.comment, f"-A {rej.chain} {rej.spec}")
    assert (p.kind, p.name) == ("default-deny", "argocd/argocd-application-controller-0")


def test_weave_chains_from_dump():
    text = (FIX / "iptables/calico_weave-3588.save").read_text()
    chains = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":WEAVE-NPC")}
    assert {"WEAVE-NPC-INGRESS", "WEAVE-NPC-DEFAULT"} <= chains
    for c in chains:
        assert policy.is_policy_chain(c)
        assert policy.from_names(c, None, f"-A {c} -m set --match-set weave-abc dst -j ACCEPT").detail["ipsets"] == ["weave-abc"]


def test_unrelated_chain_says_nothing():
    assert policy.from_names("KUBE-SERVICES", None, "-A KUBE-SERVICES -j ACCEPT") is None
    assert not policy.is_policy_chain("cali-FORWARD")


TRUTH = GroundTruth(
    allowed={"tcp": CounterRef("iptables", netns="n", backend="nft", table="filter", chain="cali-pi-x", index=7,
                               comment="cali:A"),
             "udp": CounterRef("iptables", netns="n", table="filter", chain="cali-pi-x", index=9)},
    denied=CounterRef("nft", netns="n", table="inet cnit-netpol", chain="ingress-p0", handle=13, index=3),
    evaluations={"tcp": 8, "udp": 10})


def _h(where, verdict, **d):
    return Hop("netfilter", where, "", netns="n", rule="r", detail={"nft_verdict": verdict, **d})


def test_truth_allowed_decides_over_later_accept():
    hops = [_h("ip filter cali-tw-e", "jump", position=5), _h("ip filter cali-pi-x", "continue", position=7),
            _h("ip filter cali-pi-x", "return", position=8), _h("ip filter cali-FORWARD", "accept", position=6)]
    out, verdict, idx = policy.annotate(hops, truth=TRUTH, lab="L", proto="tcp")
    assert (verdict, idx) == ("forwarded", 1)
    assert out[1].verdict == "forwarded"
    assert (out[1].policy.kind, out[1].policy.name, out[1].policy.source) == ("NetworkPolicy", "L/allow-tcp", "lab ground truth")
    assert out[1].policy.detail["chain"] == "cali-pi-x"


def test_truth_denied_by_nft_handle():
    hops = [_h("inet cnit-netpol forward", "jump", handle=10), _h("inet cnit-netpol ingress-p0", "drop", handle=13, position=3)]
    out, verdict, idx = policy.annotate(hops, truth=TRUTH, lab="L", proto="tcp")
    assert (verdict, idx) == ("dropped", 1)
    assert out[1].policy.kind == "default-deny" and out[1].policy.source == "lab ground truth"


def test_without_truth_last_policy_chain_rule_decides():
    hops = [_h("ip filter cali-pro-kns.default", "continue"), _h("ip filter cali-pi-abc", "continue", comment="cali:Q"),
            _h("ip filter cali-pi-abc", "return"), _h("ip filter cali-FORWARD", "accept")]
    out, verdict, idx = policy.annotate(hops)
    assert verdict == "forwarded" and idx == 2 and out[idx].policy.name == "cali-pi-abc"


def test_from_real_trace_denied():
    text = (FIX / "trace/calico_nft_monitor_trace.txt").read_text()
    hops = to_hops(packets(parse_trace(text))[2])
    out, verdict, idx = policy.annotate(hops)
    assert verdict == "dropped" and out[idx].where == "ip filter cali-tw-calie240e986618"
    assert out[idx].policy.kind == "default-deny"


def test_no_hops_is_unknown():
    assert policy.annotate([])[1:] == ("unknown", None)

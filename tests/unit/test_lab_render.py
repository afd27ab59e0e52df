"""The generated rulesets reproduce the structure real CNI nodes program (checked against real
iptables-save output in tests/fixtures/lab, provenance in each file's first line)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from cnitrace.lab.datapaths import calico

from cnitrace.lab.datapaths import flannel

from cnitrace.lab.datapaths import kube_router

from cnitrace.lab.datapaths import nft
from cnitrace.lab.datapaths import registry
from cnitrace.lab.model import LabSpec
from cnitrace.lab.topology import plan

FIX = Path(__file__).parents[1] / "fixtures" / "lab"


def rules_of(text: str, chain: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith(f"-A {chain} ")]


def skeleton(rule: str) -> tuple:
    """What a rule does, without the names and ids that differ from node to node."""
    args = shlex.split(rule)
    comments = tuple(args[i + 1] for i, a in enumerate(args) if a == "--comment" and not args[i + 1].startswith("cali:"))
    target = args[args.index("-j") + 1] if "-j" in args else args[args.index("-g") + 1]
    target = re.sub(r"^(cali-pr[io]-)(kns|ksa)\..*", r"\1\2.*", target)
    target = re.sub(r"^cali-pi-_.*", "cali-pi-*", target)
    target = re.sub(r"^KUBE-NWPLCY-.*", "KUBE-NWPLCY-*", target)
    marks = tuple(args[i + 1] for i, a in enumerate(args) if a in ("--mark", "--set-xmark"))
    states = tuple(args[i + 1] for i, a in enumerate(args) if a == "--ctstate")
    comments = tuple(c.replace("\\'", "'") for c in comments)     # iptables-save escapes quotes
    comments = tuple(re.sub(r"POD name:\S+ namespace: \S+", "POD", c) for c in comments)
    comments = tuple(re.sub(r"nw policy \S+", "nw policy P", c) for c in comments)
    return target, marks, states, comments


def fixture(name: str) -> str:
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text


def calico_lab(n=3, **kw):
    spec = LabSpec(name="fix", datapath="calico", rules=n, **kw)
    topo = plan(spec, registry.get("calico"))
    return spec, topo, calico.render_filter(topo, spec)


def test_calico_workload_chain_matches_a_real_felix_chain():
    real = fixture("calico-gke-iptables-save-excerpt.txt")
    spec, topo, ours = calico_lab()
    real_tw = [skeleton(r) for r in rules_of(real, "cali-tw-cali92d634f8f03")]
    our_tw = [skeleton(r) for r in rules_of(ours, f"cali-tw-{topo.server.node_iface}")]
    assert our_tw == real_tw


def test_calico_forward_chain_and_policy_rule_pairs_match_felix():
    real = fixture("calico-gke-iptables-save-excerpt.txt")
    spec, topo, ours = calico_lab()
    assert [skeleton(r) for r in rules_of(ours, "cali-FORWARD")] == [skeleton(r) for r in rules_of(real, "cali-FORWARD")]
    real_pi = [skeleton(r) for r in rules_of(real, "cali-pi-_e8MLrhOHDfNlfSa51Ak")]
    our_pi = [skeleton(r) for r in rules_of(ours, calico.policy_chain("fix"))]
    assert len(our_pi) == 2 * (3 + 2)                 # MARK + RETURN per rule, 3 fillers + 2 allow rules
    assert our_pi[0:2] == real_pi and our_pi[-2:] == real_pi
    # each policy rule matches the client selector ipset, like Felix's cali40s: sets
    assert all("--match-set cali40s:" in r for r in rules_of(ours, calico.policy_chain("fix"))[::2])


def test_calico_ground_truth_points_at_the_generated_rules():
    spec, topo, ours = calico_lab(n=5, match_position=2)
    truth = registry.get("calico").ground_truth(topo, spec)
    pi = rules_of(ours, calico.policy_chain("fix"))
    tcp, udp = truth.allowed["tcp"], truth.allowed["udp"]
    assert (tcp.index, udp.index) == (5, 7)
    assert "-p tcp" in pi[tcp.index - 1] and "--dports 8080" in pi[tcp.index - 1] and tcp.comment in pi[tcp.index - 1]
    assert "-p udp" in pi[udp.index - 1] and udp.comment in pi[udp.index - 1]
    tw = rules_of(ours, truth.denied.chain)
    assert "Drop if no policies passed packet" in tw[truth.denied.index - 1]
    assert truth.evaluations == {"tcp": 6, "udp": 8}


def test_kube_router_pod_chain_contains_the_real_chain_in_order():
    real = fixture("kube-router-k3s-iptables-save-excerpt.txt")
    spec = LabSpec(name="fix", datapath="kube-router", rules=3)
    topo = plan(spec, registry.get("kube-router"))
    ours = kube_router.render_filter(topo, spec)
    real_fw = [skeleton(r) for r in rules_of(real, "KUBE-POD-FW-XIOATVM5TOINSO4V")]
    our_fw = [skeleton(r) for r in rules_of(ours, kube_router.pod_fw_chain("fix", "p0"))]
    it = iter(our_fw)
    assert all(any(step == o for o in it) for step in real_fw), (real_fw, our_fw)   # a subsequence
    real_pol = [skeleton(r)[:3] for r in rules_of(real, "KUBE-NWPLCY-5VLCZNPWIAXAL2HB")]
    our_pol = [skeleton(r)[:3] for r in rules_of(ours, kube_router.policy_chain("fix"))]
    assert our_pol[:2] == real_pol and len(our_pol) == 2 * 5
    truth = registry.get("kube-router").ground_truth(topo, spec)
    assert "-j REJECT" in rules_of(ours, truth.denied.chain)[truth.denied.index - 1]
    assert "--dport 8080" in rules_of(ours, truth.allowed["tcp"].chain)[truth.allowed["tcp"].index - 1]


def test_nft_ruleset_is_one_table_with_an_interval_vmap():
    spec = LabSpec(name="fix", datapath="nft", rules=4, match_position=1)
    topo = plan(spec, registry.get("nft"))
    text = nft.render(topo, spec)
    assert text.startswith("table inet cnit-netpol {") and text.count("table ") == 1
    assert "flags interval;" in text and "meta l4proto . th dport vmap @ports-p0" in text
    elems = re.findall(r"(tcp|udp) \. ([\d-]+) : (accept|goto allow-tcp|goto allow-udp)", text)
    assert elems[0] == ("tcp", "10000-10003", "accept")
    assert elems[1:3] == [("tcp", "8080", "goto allow-tcp"), ("udp", "8080", "goto allow-udp")]
    assert len(elems) == 6


def test_flannel_programs_no_policy_whatever_n():
    spec = LabSpec(name="fix", datapath="flannel", rules=1000)
    topo = plan(spec, registry.get("flannel"))
    text = flannel.render_rules(topo)
    assert "FLANNEL-FWD" in text and "FLANNEL-POSTRTG" in text and "--dport" not in text
    truth = registry.get("flannel").ground_truth(topo, spec)
    assert truth.denied is None and truth.counts_replies

"""The weave lab datapath on the real kernel (root): programming time at N = 0..10,000, the policy
enforced on real TCP/UDP and counted exactly where the ground truth says, the profile attributing the
cost to WEAVE-NPC-INGRESS with its ipset lookups, a sweep point, and zero residue (ipsets included)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest

from cnitrace.core.runner import Runner
from cnitrace.lab import manager
from cnitrace.lab.datapath import read_packets
from cnitrace.lab.datapaths import weave
from tests.host.test_lab_datapaths import http_get, scapy_send, udp_echo
from tests.support.nodestate import node_state, settled_node_state

R = Runner()
APPORTIONED = "measured (table), apportioned (chain)"


def host_ipsets() -> list[str]:
    return sorted(R.run(["ipset", "list", "-n"]).stdout.split())


@pytest.mark.parametrize("n, backend", [(0, "legacy"), (1000, "legacy"), (1000, "nft"), (10_000, "legacy"),
                                        (10_000, "nft")])
def test_lab_up_is_fast_and_complete(lab_factory, n, backend):
    t0 = time.monotonic()
    lab = lab_factory("weave", n, backend=backend)
    wall = time.monotonic() - t0
    print(f"weave/{backend} N={n}: lab up {wall:.2f} s, program {lab.timings['program']:.2f} s")
    assert wall < 20 and lab.timings["program"] < 10
    ns = lab.topo.node_netns
    save = R.run([f"iptables-{backend}-save", "-t", "filter"], netns=ns).stdout
    assert sum(1 for l in save.splitlines() if l.startswith(f"-A {weave.INGRESS} ")) == n + 2
    sets = R.run(["ipset", "list", "-n"], netns=ns).stdout.split()
    assert weave.src_set() in sets and weave.dst_set() in sets and len(sets) == 15
    links = {l["ifname"]: l for l in json.loads(R.run(["ip", "-n", ns, "-j", "link", "show"]).stdout)}
    assert links["vethwe-bridge"].get("master") == "weave" and "vethwe-pcap" in links
    assert all(links[p.node_iface].get("master") == "weave" for p in lab.topo.pods)
    assert {links[i]["mtu"] for i in ("weave", "vethwe-bridge", *(p.node_iface for p in lab.topo.pods))} == {weave.MTU}
    pod = json.loads(R.run(["ip", "-n", lab.topo.server.netns, "-j", "link", "show", "eth0"]).stdout)[0]
    assert pod["mtu"] == weave.MTU


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_allowed_passes_denied_drops_counted_at_the_ground_truth(lab_factory, backend):
    lab = lab_factory("weave", 1000, backend=backend, match_position=400)
    topo, truth = lab.topo, lab.truth
    client, srv = topo.clients[0].netns, topo.server.ip
    assert truth.allowed["tcp"].index == 401 and truth.evaluations["tcp"] == 401

    rc, body = http_get(client, f"http://{srv}:{topo.allowed_port}/")
    assert rc == 0 and body.strip() == "cnitrace lab server"
    assert udp_echo(client, srv, topo.allowed_port, 3) == 3
    assert http_get(client, f"http://{srv}:{topo.denied_port}/", timeout=1)[0] != 0
    assert udp_echo(client, srv, topo.denied_port, 1, wait=0.5) == 0

    refs = {"tcp": truth.allowed["tcp"], "udp": truth.allowed["udp"], "denied": truth.denied}
    before = {k: read_packets(R, r) for k, r in refs.items()}
    sent = scapy_send(topo.clients[0], srv, f"tcp:{topo.allowed_port}:7", f"udp:{topo.allowed_port}:5",
                      f"tcp:{topo.denied_port}:4", f"udp:{topo.denied_port}:3")
    assert sent == 19
    after = {k: read_packets(R, r) for k, r in refs.items()}
    assert {k: after[k] - before[k] for k in refs} == {"tcp": 7, "udp": 5, "denied": 7}


@pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_profile_attributes_the_policy_to_weave_npc_ingress_with_its_ipset_lookups(lab_factory, backend):
    from cnitrace.profile.config import ProfileConfig
    from cnitrace.profile.run import run_profile
    from cnitrace.reports.document import Node, validate

    n = 1000
    lab = lab_factory("weave", n, backend=backend)
    for _ in range(2):
        doc = run_profile(ProfileConfig(lab=lab.spec.name, traffic="probe", duration=1.0))
        assert validate(doc) == []
        root = Node.from_json(doc["tree"])
        assert doc["backends"]["netfilter"]["backend"] == "nf_bpf"
        table = next(t for t in root.find("stage", "netfilter").children
                     if t.kind == "table" and t.name.startswith("filter"))
        assert table.detail["backend"] == "nf_bpf" and table.provenance == "both" and table.measured_ns
        chains = [c for c in table.children if c.kind == "chain"]
        top = max(chains, key=lambda c: c.ns_per_packet or 0.0)
        assert top.name == weave.INGRESS and top.basis == APPORTIONED and top.provenance == "both"
        assert top.ns_per_packet > 0.5 * table.measured_ns
        assert sum(c.ns_per_packet for c in chains) == pytest.approx(table.measured_ns, rel=1e-6)
        assert weave.INGRESS in doc["headline"] and APPORTIONED in doc["headline"]
        # ipset lookups: a TCP packet runs both set matches of every rule it reaches (class
        # full:...+set+set); a UDP packet stops at `-p tcp` ("early", no lookup)
        classes = top.detail["classes"]
        lookups = top.detail["ipset_lookups"]
        tcp_evals = sum(v for k, v in classes.items() if "set+set" in k)
        assert lookups == pytest.approx(2 * tcp_evals) and tcp_evals > 0.4 * n
        assert classes.get("early", 0) > 0.4 * n
        dflt = next(c for c in chains if c.name == weave.DEFAULT)
        assert dflt.detail["ipset_lookups"] == pytest.approx(4.0)     # one lookup per namespace
        print(f"weave/{backend} N={n}: {top.name} {top.ns_per_packet:.0f} ns/packet of {table.measured_ns:.0f} measured, "
              f"{lookups:.0f} ipset lookups/packet, m/M {table.model_vs_measured:.2f}")


@pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")
def test_model_agrees_with_the_brackets(lab_factory):
    """Modelled/measured filter table (median of three profiles). Issue 12's 0.75..1.25 band names
    calico, kube-router and the nft datapath; weave's two-set ingress rules sit at its top (1.16..1.26
    seen) because the model prices the second `-m set` lookup of a rule at the calibrated cost of a
    first one (open in issue 12). Asserted: the model stays within 1.5x either way of the brackets."""
    from cnitrace.profile.config import ProfileConfig
    from cnitrace.profile.run import run_profile
    from cnitrace.reports.document import Node

    lab = lab_factory("weave", 1000)
    ratios = []
    for _ in range(3):
        root = Node.from_json(run_profile(ProfileConfig(lab=lab.spec.name, traffic="probe", duration=1.0))["tree"])
        table = next(t for t in root.find("stage", "netfilter").children
                     if t.kind == "table" and t.name.startswith("filter"))
        ratios.append(table.model_vs_measured)
    print("weave N=1000 modelled/measured " + ", ".join(f"{r:.2f}" for r in ratios))
    assert 1 / 1.5 <= statistics.median(ratios) <= 1.5, ratios


HOST_RULESETS = ("iptables-legacy", "iptables-nft", "nft", "sysctl")


def test_lab_down_leaves_nothing_and_host_ipsets_untouched(lab_factory):
    """Zero residue: nothing that names the lab is left, the host's rulesets and ipsets are as they were
    (other work on this shared machine may change the rest of the picture meanwhile)."""
    before, sets_before = node_state(), host_ipsets()
    lab = lab_factory("weave", 100)
    name = lab.spec.name
    inside = R.run(["ipset", "list", "-n"], netns=lab.topo.node_netns).stdout.split()
    assert len(inside) == 15 and not set(inside) & set(host_ipsets())
    assert manager.down(name) > 0
    after = settled_node_state()
    assert host_ipsets() == sets_before
    assert {k: after[k] for k in HOST_RULESETS} == {k: before[k] for k in HOST_RULESETS}
    left = {k: [str(x) for x in (v if isinstance(v, (list, tuple)) else [v]) if name in str(x)]
            for k, v in after.items()}
    assert not {k: v for k, v in left.items() if v}, left
    assert name not in manager.names()


def test_one_sweep_point_pair(tmp_path):
    out = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, "-m", "cnitrace", "sweep", "--datapath", "weave", "--rules", "0,100",
                           "--quick", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["complete"] and len(doc["points"]) == 2
    for p in doc["points"]:
        assert p["status"] == "ok" and p["semantics"]["passed"], p["spec"]["id"]
    assert not doc["leftovers"]


def test_detection_in_the_lab_node_finds_weave_by_links_chains_and_ipsets(lab_factory):
    from cnitrace.node import detect

    lab = lab_factory("weave", 10)
    ev = detect.gather_evidence(R, netns=lab.topo.node_netns)
    found = {d.cni: d for d in detect.detect_cnis(ev)}
    assert list(found) == ["weave"] and found["weave"].confidence == "strong"
    ev_text = " | ".join(found["weave"].evidence)
    assert "interface weave" in ev_text and "interface vethwe" in ev_text
    assert "chain WEAVE-NPC" in ev_text and "ipset weave-" in ev_text

"""The netfilter collectors against the lab's ground truth (calico and kube-router iptables datapaths,
both backends, N = 100 and 1,000; the native-nft datapath): the collector's deltas equal the crafted
packets on the lab's own counter, and evaluations per packet for the lab's policy chain equal the
value the lab derives from the rule position."""

from __future__ import annotations

import sys

import pytest

from cnitrace.collectors.iptables.graph import costs_by_table, ruleset_delta
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of
from cnitrace.collectors.nftables import graph as nft_graph
from cnitrace.collectors.nftables.parse import NftRule
from cnitrace.collectors.nftables.source import NftablesCollector, records_delta
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import Runner

# Crafted TCP SYNs, each from its own source port so every one is a NEW connection that walks the policy.
SYNS = r"""
import random, sys
from scapy.all import IP, TCP, conf, send
from scapy.supersocket import L3RawSocket
conf.verb = 0
conf.L3socket = L3RawSocket
src, dst = sys.argv[1], sys.argv[2]
sport = random.randint(20000, 50000)
pkts = []
for spec in sys.argv[3:]:
    dport, count = map(int, spec.split(":"))
    for _ in range(count):
        pkts.append(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))
        sport += 1
send(pkts, inter=0.001)
print(len(pkts))
"""


def scapy_send(pod, dst: str, *specs: str) -> int:
    out = Runner().run([sys.executable, "-c", SYNS, pod.ip, dst, *specs], netns=pod.netns, timeout=60)
    return int(out.stdout.split()[-1])

ALLOWED, DENIED = 7, 4   # NEW TCP connections (distinct source ports), sent with scapy from a client pod

CASES = [(dp, backend, n) for dp in ("calico", "kube-router") for backend in ("legacy", "nft") for n in (100, 1000)]


@pytest.mark.parametrize("dp,backend,n", CASES, ids=[f"{d}-{b}-{n}" for d, b, n in CASES])
def test_iptables_datapaths_match_ground_truth(dp, backend, n, unique_name):
    spec = LabSpec(name=unique_name(), datapath=dp, rules=n, backend=backend)
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        ref = truth.allowed["tcp"]
        col = IptablesCollector(netns=topo.node_netns, backends=[backend], families=["ipv4"])
        before = col.snapshot()
        sent = scapy_send(topo.clients[0], topo.server.ip, f"{topo.allowed_port}:{ALLOWED}",
                          f"{topo.denied_port}:{DENIED}")
        assert sent == ALLOWED + DENIED
        after = col.snapshot()
        d, warnings = ruleset_delta(ruleset_of(before), ruleset_of(after))
        assert warnings == () and after.warnings == ()

        policy = [r for r in d.rules if r.table == ref.table and r.chain == ref.chain]
        by_pos = {r.position: r for r in policy}
        assert by_pos[ref.index].packets == ALLOWED                 # the lab's allowed counter, exactly

        costs, _ = costs_by_table(d)
        c = costs[(backend, "ipv4", "filter", ref.chain)]
        chain_len = len(policy)                                      # denied packets match no policy rule
        assert c.entering == ALLOWED + DENIED
        assert c.evaluations == ALLOWED * truth.evaluations["tcp"] + DENIED * chain_len
        assert c.fall_through == DENIED
        only_allowed = (c.evaluations - DENIED * chain_len) / ALLOWED
        assert only_allowed == truth.evaluations["tcp"]
    finally:
        manager.down(spec.name)


@pytest.mark.parametrize("n", [100, 1000])
def test_nft_datapath_counts_and_says_what_it_cannot_attribute(n, unique_name):
    spec = LabSpec(name=unique_name(), datapath="nft", rules=n)
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        ref = truth.allowed["tcp"]
        family, table = ref.table.split()
        col = NftablesCollector(netns=topo.node_netns)
        before = col.snapshot()
        assert scapy_send(topo.clients[0], topo.server.ip, f"{topo.allowed_port}:{ALLOWED}",
                          f"{topo.denied_port}:{DENIED}") == ALLOWED + DENIED
        recs, warnings = records_delta(before, col.snapshot())
        assert warnings == ()
        allow = next(r for r in recs if isinstance(r, NftRule) and r.table == table and r.chain == ref.chain
                     and r.handle == ref.handle)
        assert allow.packets == ALLOWED
        deny = truth.denied
        assert next(r for r in recs if isinstance(r, NftRule) and r.chain == deny.chain
                    and r.handle == deny.handle).packets == DENIED
        costs, _ = nft_graph.costs_by_table(recs)
        allow_chain = costs[(family, table, ref.chain)]
        assert allow_chain.entering == ALLOWED and allow_chain.per_packet == 1.0
        # The ingress chain is reached through a verdict map (@pod-ingress) that counts nothing, so from
        # counters alone its traffic is unknown — reported with the reason, not guessed.
        ingress = costs[(family, table, deny.chain)]
        assert ingress.entering is None and ingress.per_packet is None and ingress.notes
        # Told how many packets entered (we sent them), the walk is exact: rule 1 (peer set) and rule 2 (the
        # ports vmap, one lookup over 1,000 intervals) see every packet; what the vmap sent on is inferred from
        # the final `counter drop`, which observes its own reach.
        costs, _ = nft_graph.costs_by_table(recs, entering={(family, table, deny.chain): ALLOWED + DENIED})
        ingress = costs[(family, table, deny.chain)]
        assert ingress.evaluations == 2 * (ALLOWED + DENIED) + DENIED
        # Allowed packets: 2 rules here + the allow chain's rule = the lab's ground truth, exactly.
        allowed_cost = (ingress.inclusive_per_packet * (ALLOWED + DENIED) - 3 * DENIED) / ALLOWED
        assert allowed_cost == pytest.approx(truth.evaluations["tcp"], abs=1e-9)
        assert truth.evaluations["tcp"] == 3
    finally:
        manager.down(spec.name)

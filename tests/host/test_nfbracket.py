"""Host tier: netfilter bracket probes measure the router's filter table per packet, without
kprobes or fentry, on both iptables backends.

Topology (throwaway namespaces, tests.host.probes_path): pod A --veth-- node --veth-- pod B;
the node forwards UDP from A to B through N non-matching rules in its FORWARD chain. The
brackets (BPF netfilter programs at priority -1 and +1 around the filter table, and an empty
floor pair) are linked in the node's namespace only, filtered to its A-side interface.
"""

from __future__ import annotations

import random
import time

import pytest

from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.probes import nfbracket as nb
from tests.host.probes_path import Path, build, send, set_forward_rules
from tests.support.bpf import bpftool_ids

pytestmark = pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc")

COUNT = 400
BACKENDS = {"legacy": ("iptables-legacy-restore", "iptables"), "nft": ("iptables-nft-restore", "nft")}


@pytest.fixture
def path(netns) -> Path:
    p = build(netns)
    # pod B answers the closed UDP port with ICMP unreachables, which the node would forward
    # back out of its A side (a selected interface): keep them in pod B so counts are exact
    R.run(["iptables-legacy", "-A", "OUTPUT", "-p", "icmp", "-j", "DROP"], netns=p.b)
    return p


class Recorder:
    """A stand-in Session: what Brackets registered to run on exit."""

    def __init__(self) -> None:
        self.callbacks = []

    def on_exit(self, fn) -> None:
        self.callbacks.append(fn)


def measure(path: Path, port: int) -> tuple[dict, list, dict]:
    session = Recorder()
    with nb.Brackets([(path.node, path.node_a)], hooks=("FORWARD",), pfs=(nb.IPV4,), session=session) as br:
        assert session.callbacks == [br.close]
        ids = br.kernel_ids()
        # 2 brackets (floor, filter) chained: floor entry, floor exit + filter entry, filter exit;
        # and the kfree_skb probe
        assert len(br.mids) == 1 and br.slots[br.mids[0][0]][2].floor and not br.slots[br.mids[0][1]][2].floor
        assert len(ids["link"]) == 4 and len(ids["prog"]) == 4
        assert set(ids["link"]) <= bpftool_ids("link") and set(ids["prog"]) <= bpftool_ids("prog")
        send(path, port, COUNT)
        figs = br.figures()
        lost = br.lost()
    # closed: nothing of ours is left in the kernel (programs are freed after an RCU grace period)
    assert not set(ids["link"]) & bpftool_ids("link")
    deadline = time.monotonic() + 10
    while set(ids["prog"]) & bpftool_ids("prog") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(ids["prog"]) & bpftool_ids("prog")
    assert lost == 0
    tables = nb.table_times(figs)
    floors = [f for f in figs if f.map == nb.FLOOR_MAP]
    return tables, floors, ids


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_filter_table_measured_and_grows_with_rules(path, backend):
    tool, kind = BACKENDS[backend]
    port = random.randint(20000, 30000)
    means = {}
    for n in (0, 1000):
        set_forward_rules(path, n, tool=tool)
        tables, floors, _ = measure(path, port)
        assert len(tables) == 1, tables
        (t,) = tables.values()
        k = t["key"]
        assert (k["kind"], k["table"], k["chain"], k["hook"], k["pf"]) == (kind, "filter", "FORWARD", "FORWARD", "ipv4")
        assert not k["grouped"]
        assert t["passed"] == COUNT and t["dropped"] == 0          # exact: every forwarded packet, once
        assert len(floors) == 1 and floors[0].hist.count == COUNT   # the empty pair saw them all too
        assert t["floor_ns"] == pytest.approx(floors[0].hist.mean) and t["floor_ns"] > 0
        assert t["mean_ns"] >= 0
        means[n] = t["mean_ns"]
        print(f"{backend}: N={n} filter {t['mean_ns']:.0f} ns/packet (floor {t['floor_ns']:.0f} ns, "
              f"measured {k['measured_mean_ns']:.0f} ns)")
    assert means[1000] > 5 * max(means[0], 1.0), means


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_drops_inside_the_table_counted_apart(path, backend):
    tool, kind = BACKENDS[backend]
    port = random.randint(20000, 30000)
    set_forward_rules(path, 100, extra=[f"-A FORWARD -p udp --dport {port} -j DROP"], tool=tool)
    tables, floors, _ = measure(path, port)
    (t,) = tables.values()
    assert t["key"]["kind"] == kind
    assert t["dropped"] == COUNT and t["passed"] == 0
    assert floors and floors[0].hist.count == COUNT   # floors run before the tables: they saw every packet
    assert t["key"]["verdict"] == "DROP" and t["key"]["floor_ns"] == pytest.approx(floors[0].hist.mean)
    print(f"{backend}: drop after 100 rules {t['key']['measured_mean_ns']:.0f} ns (floor {t['key']['floor_ns']:.0f})")

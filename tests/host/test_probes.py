"""Host tier: the tracepoint probes measure a real forwarding path and name real drops.

Topology (all in throwaway namespaces): pod A --veth-- node --veth-- pod B, the node routes
between them with N non-matching iptables rules in FORWARD. UDP from A to B is forwarded by
the node; the transit probe times receive (node side of A's veth) -> transmit (node side of
B's veth) per packet, and the drop probe sees a FORWARD DROP rule's victims.
"""

from __future__ import annotations

import random

import pytest

from cnitrace.probes.runtime import Filter, ProbeSet
from cnitrace.core.session import Session
from tests.host.probes_path import IP_UDP, PAYLOAD, Path, build, send, set_forward_rules

pytestmark = pytest.mark.requires("tracepoints", "btf", "bcc")


@pytest.fixture
def path(netns) -> Path:
    return build(netns)


def transit_mean(ps: ProbeSet, path: Path, port: int, count: int) -> tuple[int, float]:
    ps.reset()
    send(path, port, count)
    figs = [f for f in ps.snapshot() if f.stage == "transit"]
    assert len(figs) == 1, figs
    f = figs[0]
    assert f.key["iface_in"].endswith(path.node_a) and f.key["iface_out"].endswith(path.node_b)
    return f.hist.count, f.hist.mean


@pytest.mark.parametrize("force", [None, "raw_tracepoint", "tracepoint"])
def test_transit_measured_and_grows_with_rules(path, force):
    port, count = random.randint(20000, 30000), 1500
    flt = Filter(proto=17, dport=port)
    with Session() as s:
        ps = ProbeSet(["transit"], ifaces=[(path.node, path.node_a)], filt=flt, session=s,
                      force={"transit": force} if force else None)
        choices = ps.start()
        # the ladder takes BTF-typed tracepoints here (no fentry, no kprobes); raw or classic ones when forced
        assert choices["transit"].backend == (force or "tp_btf")
        assert choices["transit"].signal == "measured"
        means, counts = {}, {}
        for n in (0, 1000, 3000):
            set_forward_rules(path, n)
            counts[n], means[n] = transit_mean(ps, path, port, count)
        untimed = ps.untimed()
    # Every datagram of the selected flow was timed, and nothing else was; no slot collision.
    assert all(c == count for c in counts.values()) and untimed == 0
    grow1, grow3 = means[1000] - means[0], means[3000] - means[0]
    print(f"transit mean ({force or 'tp_btf'}): " + ", ".join(f"N={n} {m:.0f} ns" for n, m in means.items())
          + f"; {grow1 / 1000:.1f} and {grow3 / 3000:.1f} ns/rule")
    # Relations that hold on any CPU (per-rule cost differs 10x between machines of this kind):
    # time grows with the rules, and linearly: 3x the rules adds about 3x the time.
    assert means[0] < means[1000] < means[3000]
    assert 2.0 < grow3 / grow1 < 4.5


@pytest.mark.parametrize("force", [None, "raw_tracepoint", "tracepoint"])
def test_drop_probe_names_netfilter_drop(path, force):
    port, count = random.randint(30001, 40000), 200
    set_forward_rules(path, 10, [f"-A FORWARD -p udp --dport {port} -j DROP"])
    with Session() as s:
        ps = ProbeSet(["drops"], ifaces=[(path.node, path.node_a)], filt=Filter(proto=17, dport=port),
                      session=s, force={"drops": force} if force else None)
        assert ps.start()["drops"].backend == (force or "tp_btf")
        send(path, port, count)
        figs = ps.snapshot()
    assert len(figs) == 1, [f.key for f in figs]
    f = figs[0]
    assert f.key["reason_name"] == "NETFILTER_DROP"
    assert f.key["symbol"].startswith("nf_hook_slow")
    assert f.key["iface"].endswith(path.node_a)
    assert f.hist.count == count and f.key["protocol"] == 0x0800
    assert f.hist.sum == count * (IP_UDP + PAYLOAD)   # IP + UDP + payload bytes, as the node saw them


def test_per_packet_events_stream_with_lost_count(path):
    port, count = random.randint(40001, 50000), 300
    seen: list = []
    with Session() as s:
        ps = ProbeSet(["transit"], ifaces=[(path.node, path.node_a)], filt=Filter(proto=17, dport=port),
                      events=True, session=s)
        ps.start()
        ps.on_event(lambda stage, ev: seen.append((stage, ev["ns"], ev["len"])))
        send(path, port, count)
        for _ in range(20):
            ps.poll_events(50)
            if len(seen) + ps.lost() >= count:
                break
        lost = ps.lost()
        agg = [f for f in ps.snapshot() if f.stage == "transit"][0]
    assert lost == 0
    assert len(seen) == count == agg.hist.count
    assert sum(ns for _, ns, _ in seen) == agg.hist.sum   # the same packets, one by one
    assert {length for _, _, length in seen} == {14 + IP_UDP + PAYLOAD}   # at transmit: with its Ethernet header

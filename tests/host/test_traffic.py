"""Each traffic generator against a real lab (root): crafted probes move the ground-truth counters
by exactly what was sent; stream, rr and http measure real traffic on the allowed port."""

from __future__ import annotations

import pytest

from cnitrace.traffic import generators as traffic
from cnitrace.lab import manager
from cnitrace.lab.datapath import read_packets
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import Runner

R = Runner()


@pytest.fixture(scope="module")
def lab():
    import uuid
    spec = LabSpec(name=f"cnit{uuid.uuid4().hex[:4]}", datapath="calico", rules=100, pods=2)
    built = manager.up(spec)
    yield built
    manager.down(spec.name)


def test_crafted_probes_counted_exactly(lab):
    truth = lab.truth
    refs = {"tcp": truth.allowed["tcp"], "udp": truth.allowed["udp"], "denied": truth.denied}
    before = {k: read_packets(R, ref) for k, ref in refs.items()}
    res = traffic.crafted_probes(lab.topo, count_per_port=4)
    after = {k: read_packets(R, ref) for k, ref in refs.items()}
    sent = res.metrics["sent"]
    assert res.packets_sent == sum(sent.values()) == 4 * 2 * 5
    assert after["tcp"] - before["tcp"] == sent["tcp/8080"] == 4
    assert after["udp"] - before["udp"] == sent["udp/8080"] == 4
    # Default deny sees the denied port (both protocols) and the UDP filler samples: the filler
    # rules allow TCP port ranges only, so TCP filler probes are accepted by their rule.
    udp_fillers = sum(n for k, n in sent.items() if k.startswith("udp/") and int(k[4:]) >= 10_000)
    assert udp_fillers == 12
    assert after["denied"] - before["denied"] == sent["tcp/9090"] + sent["udp/9090"] + udp_fillers


def test_crafted_probes_are_new_connections_every_time(lab):
    ref = lab.truth.allowed["tcp"]
    before = read_packets(R, ref)
    for _ in range(2):
        traffic.crafted_probes(lab.topo, count_per_port=3, include_denied=False)
    assert read_packets(R, ref) - before == 6


def test_stream_single_and_concurrent(lab):
    one = traffic.stream(lab.topo, 1)
    assert one.ok, one.metrics
    assert one.metrics["bits_per_second"] > 1e8 and one.metrics["clients"] == 1
    two = traffic.stream(lab.topo, 1, clients=lab.topo.clients)
    assert two.ok and two.metrics["streams"] == 2 and two.metrics["failed_streams"] == 0
    assert two.metrics["bits_per_second"] > 1e8
    # the temporary redirect is gone: the lab's own HTTP server answers on the allowed port again
    after = traffic.http(lab.topo, 1, concurrency=2)
    assert after.ok and after.metrics["server"] == "cnitrace-lab"


def test_rr_latency(lab):
    res = traffic.rr(lab.topo, 1)
    m = res.metrics
    assert res.ok, m
    assert m["rtt"] is True and 0 < m["p50_us"] <= m["p99_us"] <= m["max_us"]
    assert m["sent"] == m["received"] > 100


def test_http_load_reaches_the_lab_server(lab):
    res = traffic.http(lab.topo, 1, concurrency=20)
    m = res.metrics
    assert res.ok, m
    assert m["server"] == "cnitrace-lab" and m["failed"] == 0 and m["non_2xx"] == 0
    assert m["complete"] > 50 and m["rps"] > 50 and m["concurrency"] == 20


def test_generators_refuse_unbounded_runs(lab):
    from cnitrace.core.errors import UsageError
    with pytest.raises(UsageError):
        traffic.stream(lab.topo, 0)
    with pytest.raises(UsageError):
        traffic.http(lab.topo, 10_000)
    with pytest.raises(UsageError):
        traffic.http(lab.topo, 1, concurrency=5000)

"""The lab's pure planning: spec validation, policy order, names and addresses, JSON round trips."""

from __future__ import annotations

import re

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.lab.datapaths import registry
from cnitrace.lab.model import (ALLOWED_PORT, DENIED_PORT, CounterRef, GroundTruth, LabSpec, Topology,
                                filler_ranges)
from cnitrace.lab.policy import allow_index, port_rules, validate
from cnitrace.lab.topology import plan


def test_filler_ranges_never_cover_the_lab_ports():
    ranges = filler_ranges(10_000)
    assert len(ranges) == 10_000 and ranges[0] == (10_000, 10_003) and ranges[-1] == (59_995, 59_998)
    assert all(lo <= hi < 65536 for lo, hi in ranges)
    assert not any(lo <= p <= hi for lo, hi in ranges for p in (ALLOWED_PORT, DENIED_PORT))
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))   # disjoint, ascending


@pytest.mark.parametrize("n,k,tcp,udp", [(0, None, 0, 1), (100, None, 100, 101), (100, 0, 0, 1), (100, 37, 37, 38)])
def test_allow_rules_sit_after_k_fillers(n, k, tcp, udp):
    spec = LabSpec(name="t", rules=n, match_position=k)
    topo = plan(spec, registry.get("calico"))
    rules = port_rules(topo, spec)
    assert len(rules) == n + 2
    assert (allow_index(rules, "tcp"), allow_index(rules, "udp")) == (tcp, udp)
    assert [r.position for r in rules] == list(range(n + 2))
    assert sum(r.allows_lab_traffic for r in rules) == 2


@pytest.mark.parametrize("kw,msg", [
    ({"rules": 10_001}, "--rules 10001 out of range"), ({"rules": -1}, "--rules -1 out of range"),
    ({"rules": 5, "match_position": 6}, "--match-position 6 out of range: 0..5"),
    ({"backend": "iptables"}, "--backend 'iptables'"), ({"pods": 0}, "--pods 0 out of range"),
    ({"pods": 251}, "--pods 251 out of range"), ({"l7_proxy": "envoy"}, "L7 proxy 'envoy'"),
])
def test_bad_specs_are_refused_with_one_line(kw, msg):
    with pytest.raises(UsageError, match=re.escape(msg)) as e:
        validate(LabSpec(**kw))
    assert "\n" not in e.value.message


def test_unknown_datapath_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown datapath 'canal'; choose one of: .*calico.*kube-router.*nft"):
        registry.get("canal")


@pytest.mark.parametrize("dp,pattern,prefix,gw", [
    ("calico", r"^cali[0-9a-f]{11}$", 32, "169.254.1.1"), ("kube-router", r"^veth[0-9a-f]{8}$", 24, "10.244.0.1"),
    ("flannel", r"^veth[0-9a-f]{8}$", 24, "10.244.0.1"), ("nft", r"^veth[0-9a-f]{8}$", 32, "169.254.1.1")])
def test_plan_names_and_addresses_like_the_cni(dp, pattern, prefix, gw):
    topo = plan(LabSpec(name="demo", datapath=dp, pods=3, rules=2), registry.get(dp))
    assert topo.node_netns == "cnit-demo-node"
    assert [p.netns for p in topo.pods] == [f"cnit-demo-p{i}" for i in range(4)]
    assert topo.server.role == "server" and len(topo.clients) == 3
    assert all(re.match(pattern, p.node_iface) and len(p.node_iface) <= 15 for p in topo.pods)
    assert len({p.node_iface for p in topo.pods}) == 4 and len({p.ip for p in topo.pods}) == 4
    assert {p.prefix for p in topo.pods} == {prefix} and {p.gateway for p in topo.pods} == {gw}
    assert topo.pods[0].mac == "0a:58:" + ":".join(f"{int(o):02x}" for o in topo.pods[0].ip.split("."))
    assert topo.filler_ranges == filler_ranges(2)


def test_json_round_trips():
    spec = LabSpec(name="x", datapath="nft", rules=7, pods=2, l7=False, backend="nft", match_position=3)
    assert LabSpec.from_json(spec.to_json()) == spec
    topo = plan(spec, registry.get("nft"))
    assert Topology.from_json(topo.to_json()) == topo
    ref = CounterRef(kind="bpf-map", table="/sys/fs/bpf/cnit-x/policy", key={"identity": 7, "dport": 8080})
    truth = GroundTruth(allowed={"tcp": ref, "udp": ref}, denied=None, evaluations={"tcp": 1, "udp": 1})
    assert GroundTruth.from_json(truth.to_json()) == truth


def test_bad_lab_names_are_refused():
    for bad in ("", "UPPER", "a" * 17, "semi;colon", "-lead"):
        with pytest.raises(UsageError, match="bad lab name"):
            plan(LabSpec(name=bad), registry.get("calico"))

"""Traffic toward a target the user named: target/port parsing, the rules' port ranges (from real
iptables-save output), the bounded probe plan, and the clients' argv in the chosen namespace (no root)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cnitrace.collectors.iptables.parse import parse_ruleset
from cnitrace.core.errors import UsageError
from cnitrace.core.runner import Completed, Runner
from cnitrace.traffic.generators import (MAX_RULE_RANGES, Peer, parse_ports, parse_route_get, parse_target, rule_port_ranges,
                              target_plan, toward)

TESTS = Path(__file__).resolve().parents[1]


def fixture(rel: str) -> str:
    lines = (TESTS / rel).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# provenance:")
    return "".join(lines[1:])


@pytest.mark.parametrize("text,want", [
    ("10.0.0.1", ("10.0.0.1", None, "/")),
    ("10.0.0.1:5201", ("10.0.0.1", 5201, "/")),
    ("web.default.svc.cluster.local:80", ("web.default.svc.cluster.local", 80, "/")),
    ("http://10.0.0.1", ("10.0.0.1", None, "/")),
    ("http://10.0.0.1:8080/health/ready", ("10.0.0.1", 8080, "/health/ready")),
    ("HTTP://web/", ("web", None, "/")),
])
def test_parse_target(text, want):
    assert parse_target(text) == want


@pytest.mark.parametrize("text,why", [
    ("", "HOST[:PORT]"), ("10.0.0.300", "HOST[:PORT]"), ("[::1]:80", "HOST[:PORT]"), ("::1", "HOST[:PORT]"),
    ("a b", "HOST[:PORT]"), ("-x", "HOST[:PORT]"), ("10.0.0.1:0", "1..65535"), ("10.0.0.1:65536", "1..65535"),
    ("10.0.0.1:http", "1..65535"), ("https://10.0.0.1/", "only http://"), ("http://10.0.0.1/a?b=1", "bad HTTP path"),
])
def test_parse_target_refuses(text, why):
    with pytest.raises(UsageError, match=None) as e:
        parse_target(text)
    assert why in e.value.message and "\n" not in e.value.message


def test_parse_ports():
    assert parse_ports("80, 8000-8010,udp/53,tcp/1000:1001") == (
        (None, 80, 80), (None, 8000, 8010), ("udp", 53, 53), ("tcp", 1000, 1001))


@pytest.mark.parametrize("text", ["", ",", "0", "65536", "10-5", "sctp/80", "80-", "x", ",".join(["1"] * 65)])
def test_parse_ports_refuses(text):
    with pytest.raises(UsageError):
        parse_ports(text)


def _specs(name: str) -> list[str]:
    rs, _ = parse_ruleset(fixture(f"fixtures/lab/{name}"))
    return [r.spec for r in rs.rules]


def test_rule_port_ranges_from_a_calico_lab_dump():
    # multiport ranges of the filler rules, then the allow rule's single port in both protocols
    assert rule_port_ranges(_specs("calico-lab-iptables-legacy-save-c.txt")) == [
        ("tcp", 10000, 10003), ("tcp", 10005, 10008), ("tcp", 10010, 10013), ("tcp", 8080, 8080),
        ("udp", 8080, 8080)]


def test_rule_port_ranges_from_a_kube_router_dump_deduplicates():
    ranges = rule_port_ranges(_specs("kube-router-k3s-iptables-save-excerpt.txt"))
    assert ("tcp", 8082, 8082) in ranges and len(ranges) == len(set(ranges))


def test_rule_port_ranges_skips_negations_other_protocols_and_quoted_text():
    assert rule_port_ranges([
        "-p tcp -m tcp ! --dport 22 -j DROP",
        "! -p udp -m udp --dport 53 -j DROP",
        "-p icmp -j ACCEPT",
        '-j ACCEPT -m comment --comment "-p tcp --dport 9"',
        "-p udp -m udp --dport :100 -j ACCEPT",
        "-p tcp -m multiport --dports 443,8000:8080 -j ACCEPT",
    ]) == [("udp", 1, 100), ("tcp", 443, 443), ("tcp", 8000, 8080)]


def test_target_plan_explicit_first_both_protocols_rule_ranges_their_own():
    plan = target_plan([(None, 80, 80), ("udp", 53, 54)], [("tcp", 10000, 10003), ("tcp", 80, 80)], 3)
    assert plan == [("tcp", 80, 3), ("udp", 80, 3), ("udp", 53, 3), ("udp", 54, 3), ("tcp", 10000, 3),
                    ("tcp", 10003, 3)]


@given(st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535), st.integers(0, 50)),
                max_size=600))
def test_target_plan_is_bounded_and_keeps_first_and_last(raw):
    ranges = [(p, lo, min(lo + w, 65535)) for p, lo, w in raw]
    plan = target_plan([], ranges, 2)
    assert len(plan) <= 2 * MAX_RULE_RANGES and all(n == 2 for _, _, n in plan)
    assert len(set((p, port) for p, port, _ in plan)) == len(plan)
    if ranges:
        for p, lo, hi in (ranges[0], ranges[-1]):
            assert (p, lo, 2) in plan and (p, hi, 2) in plan
    if len(ranges) <= MAX_RULE_RANGES:
        assert {(p, port) for p, port, _ in plan} == {(p, x) for p, lo, hi in ranges for x in (lo, hi)}


def test_target_plan_refuses_unbounded_counts():
    with pytest.raises(UsageError):
        target_plan([(None, 80, 80)], [], 0)
    with pytest.raises(UsageError):
        target_plan([(None, 80, 80)], [], 101)


def test_parse_route_get():
    assert parse_route_get(fixture("fixtures/traffic/ip-route-get-netns.json.txt")) == "10.66.1.2"
    assert parse_route_get(fixture("fixtures/traffic/ip-route-get-local.json.txt")) == "127.0.0.1"
    for bad in ("", "[]", "{}", '[{"dst": "10.0.0.1"}]', "RTNETLINK answers: Network is unreachable"):
        assert parse_route_get(bad) is None


class ToolRunner(Runner):
    """Answers by tool name (the argv after any `ip netns exec NS`), recording every call."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.calls = answers, []

    def run(self, argv, *, input=None, netns=None, timeout=60.0, check=True, env=None) -> Completed:
        self.calls.append((netns, tuple(argv), timeout))
        tool = "sender" if "cnitrace.traffic.send" in argv else argv[0]
        return Completed(tuple(argv), 0, self.answers[tool], "")


def test_probe_toward_a_target_from_a_namespace():
    sender_out = json.dumps({"sent": {"tcp/7000": 2, "udp/7000": 2, "tcp/30000": 2, "tcp/30009": 2},
                             "next_sport": 20008})
    r = ToolRunner({"ip": fixture("fixtures/traffic/ip-route-get-netns.json.txt"), "sender": sender_out})
    res = toward("probe", Peer("10.66.2.2", 7000, "client-ns"), 1, rule_ranges=[("tcp", 30000, 30009)], runner=r)
    (ns1, route, _), (ns2, send, t) = r.calls
    assert ns1 == ns2 == "client-ns" and route == ("ip", "-j", "route", "get", "10.66.2.2")
    # the source the route names, the target, then one spec per (proto, port)
    assert send[3:5] == ("10.66.1.2", "10.66.2.2")
    assert send[6:] == ("tcp:7000:2", "udp:7000:2", "tcp:30000:2", "tcp:30009:2") and t <= 90
    assert res.kind == "probe" and res.packets_sent == 8        # exactly what the sender reported
    assert res.metrics["source"] == "10.66.1.2" and res.metrics["client_netns"] == "client-ns"
    assert res.metrics["rule_ranges"] == res.metrics["rule_ranges_probed"] == 1


def test_probe_toward_a_target_with_nothing_to_probe_is_a_usage_error():
    with pytest.raises(UsageError, match="--ports"):
        toward("probe", Peer("10.66.2.2"), 1, runner=ToolRunner({}))


def test_stream_rr_http_argv_and_results():
    r = ToolRunner({"iperf3": fixture("fixtures/traffic/iperf3-tcp-calico.json.txt"),
                    "sockperf": fixture("fixtures/traffic/sockperf-pingpong-rtt-calico.txt"),
                    "ab": fixture("fixtures/traffic/ab-l7-calico-nginx.txt")})
    st_ = toward("stream", Peer("10.66.2.2", None, None), 2, runner=r)
    rr = toward("rr", Peer("10.66.2.2", 9000, "c"), 2, runner=r)
    web = toward("http", Peer("10.66.2.2", None, "c", "/x"), 2, runner=r)
    (ns_s, a_s, t_s), (ns_r, a_r, t_r), (ns_h, a_h, t_h) = r.calls
    assert ns_s is None and a_s[:5] == ("iperf3", "-c", "10.66.2.2", "-p", "5201") and t_s <= 22
    assert ns_r == "c" and a_r[a_r.index("-p") + 1] == "9000" and "--full-rtt" in a_r and t_r <= 17
    assert ns_h == "c" and a_h[-1] == "http://10.66.2.2:80/x" and a_h[a_h.index("-c") + 1] == "10" and t_h <= 32
    assert st_.ok and st_.metrics["bits_per_second"] > 1e9 and st_.metrics["target_port"] == 5201
    assert rr.ok and rr.metrics["p50_us"] > 0 and rr.packets_sent == rr.metrics["sent"]
    assert web.ok and web.packets_sent == web.metrics["complete"] > 0 and web.metrics["target_port"] == 80


@pytest.mark.parametrize("kind,seconds", [("stream", 0), ("rr", 121), ("flood", 1)])
def test_toward_refuses_unbounded_or_unknown_loads(kind, seconds):
    with pytest.raises(UsageError):
        toward(kind, Peer("10.66.2.2", 80), seconds, runner=ToolRunner({}))

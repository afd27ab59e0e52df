"""Parsers of iperf3 -J, sockperf and ab output, on real output captured from the lab (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace.lab.model import Pod, Topology, filler_ranges
from cnitrace.traffic.generators import (parse_ab, parse_iperf3, parse_sockperf, probe_plan, redirect_ruleset,
                              sum_streams)
from cnitrace.traffic.send import parse_specs

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "traffic"


def fixture(name: str) -> str:
    lines = (FIX / name).read_text().splitlines(keepends=True)
    assert lines[0].startswith("# provenance:")
    return "".join(lines[1:])


def test_iperf3_tcp_stream():
    m = parse_iperf3(fixture("iperf3-tcp-calico.json.txt"))
    assert "error" not in m
    assert m["bits_per_second"] == pytest.approx(4117453896.95394)
    assert (m["bytes"], m["retransmits"], m["seconds"]) == (1035206656, 411, 2.011353)
    assert m["cpu_receiver_pct"] == pytest.approx(16.688500253799916)


def test_iperf3_error_is_reported_not_raised():
    m = parse_iperf3(fixture("iperf3-denied-calico.json.txt"))
    assert m == {"error": "iperf3: unable to connect to server: Connection timed out"}


@pytest.mark.parametrize("text", ["", "{", "[]", '{"end": {}}'])
def test_iperf3_malformed(text):
    assert "error" in parse_iperf3(text)


def test_iperf3_truncated_real_output():
    full = fixture("iperf3-tcp-calico.json.txt")
    assert parse_iperf3(full[: len(full) // 2])["error"].startswith("iperf3: output is not JSON")


def test_sockperf_full_rtt():
    m = parse_sockperf(fixture("sockperf-pingpong-rtt-calico.txt"))
    assert m["rtt"] is True
    assert (m["avg_us"], m["p50_us"], m["p99_us"], m["p999_us"]) == (71.888, 19.779, 1548.105, 5299.735)
    assert (m["sent"], m["received"], m["max_us"]) == (21479, 21479, 172112.090)
    assert "error" not in m


def test_sockperf_one_way_default():
    m = parse_sockperf(fixture("sockperf-pingpong-oneway-calico.txt"))
    assert m["rtt"] is False and m["p50_us"] == 9.719 and m["p99_us"] == 417.913


def test_sockperf_refused_exits_zero_but_is_an_error():
    m = parse_sockperf(fixture("sockperf-refused.txt"))
    assert m["error"] == "sockperf: Can`t connect socket (errno=111 Connection refused)"
    assert "p50_us" not in m


def test_sockperf_cut_short():
    text = fixture("sockperf-pingpong-rtt-calico.txt")
    m = parse_sockperf(text[: text.index("Printing statistics")])
    assert m["error"] == "sockperf: no latency summary"


def test_ab_through_l7_proxy():
    m = parse_ab(fixture("ab-l7-calico-nginx.txt"))
    assert m["server"] == "nginx/1.22.1"
    assert (m["complete"], m["failed"], m["non_2xx"], m["concurrency"]) == (5184, 0, 0, 100)
    assert m["rps"] == 1726.43 and m["mean_ms"] == 57.923
    assert (m["p50_ms"], m["p99_ms"], m["p100_ms"], m["median_ms"]) == (48, 259, 337, 48)
    assert "error" not in m


def test_ab_timeout_on_denied_port():
    m = parse_ab(fixture("ab-timeout-denied.txt"))
    assert m["error"] == "ab: apr_pollset_poll: The timeout specified has expired (70007)"
    assert "rps" not in m


def test_sum_streams_counts_failures():
    ok = parse_iperf3(fixture("iperf3-tcp-calico.json.txt"))
    bad = parse_iperf3(fixture("iperf3-denied-calico.json.txt"))
    s = sum_streams([ok, bad, ok])
    assert s["streams"] == 3 and s["failed_streams"] == 1
    assert s["bits_per_second"] == pytest.approx(2 * ok["bits_per_second"])
    assert "error" in sum_streams([bad])


def _topo(n: int) -> Topology:
    pods = (Pod("p0", "server", "cnit-x-p0", "10.65.0.2", 32, "169.254.1.1", "0a:58:0a:41:00:02"),
            Pod("p1", "client", "cnit-x-p1", "10.65.0.3", 32, "169.254.1.1", "0a:58:0a:41:00:03"))
    return Topology("x", "cnit-x-node", pods, "10.65.0.0/24", filler_ranges=filler_ranges(n))


def test_probe_plan_is_bounded_at_any_rule_count():
    plan = probe_plan(_topo(10_000), count_per_port=5)
    assert len(plan) == 2 * 5           # allowed, denied, 3 filler samples; tcp + udp each
    assert [p for p, _, _ in plan[:4]] == ["tcp", "udp", "tcp", "udp"]
    ports = sorted({d for _, d, _ in plan})
    assert ports == [8080, 9090, 10_000, 10_000 + 5000 * 5, 10_000 + 9999 * 5]
    assert {d for _, d, _ in probe_plan(_topo(0), include_denied=False)} == {8080}
    with pytest.raises(Exception):
        probe_plan(_topo(0), count_per_port=0)


def test_redirect_ruleset_and_sender_specs():
    text = redirect_ruleset([("10.65.0.3", "tcp", 8080, 18080)])
    assert "ip saddr 10.65.0.3 tcp dport 8080 redirect to :18080" in text
    assert text.startswith("table ip cnit_traffic {")
    assert parse_specs(["tcp:8080:3", "udp:9090:0"]) == [("tcp", 8080, 3), ("udp", 9090, 0)]
    for bad in (["icmp:1:1"], ["tcp:0:1"], ["tcp:80"], ["tcp:80:30000"]):
        with pytest.raises(ValueError):
            parse_specs(bad)

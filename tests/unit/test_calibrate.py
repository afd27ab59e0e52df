"""Calibration arithmetic and the iperf3 parser (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from cnitrace.calibrate.rules import (Calibration, Sample, calibration_from_samples, fit_line,
                                nonmatching_rules, parse_iperf3_udp_pps)
from cnitrace.core.errors import ToolError


def test_fit_line_recovers_slope_and_intercept():
    slope, icpt, r2 = fit_line([(0, 5000.0), (1000, 32000.0), (0, 5000.0), (1000, 32000.0)])
    assert slope == pytest.approx(27.0) and icpt == pytest.approx(5000.0) and r2 == pytest.approx(1.0)


def test_fit_line_needs_two_x_values():
    with pytest.raises(ValueError):
        fit_line([(100, 1.0), (100, 2.0)])


@given(st.floats(0.5, 500), st.floats(100, 1e5), st.lists(st.integers(0, 10000), min_size=2, max_size=8, unique=True))
def test_fit_line_exact_on_noiseless_lines(slope, icpt, xs):
    s, i, _ = fit_line([(x, icpt + slope * x) for x in xs])
    assert s == pytest.approx(slope, rel=1e-6) and i == pytest.approx(icpt, rel=1e-6, abs=1e-3)


def test_calibration_from_pps_samples():
    # 200k pps with no rules, 40k pps with 1000: 5000 ns vs 25000 ns per packet → 20 ns per rule
    cal = calibration_from_samples([Sample.from_pps(0, 200_000), Sample.from_pps(1000, 40_000)],
                                   "legacy", "6.18", "cpu")
    assert cal.ns_per_rule_eval == pytest.approx(20.0)
    assert cal.ns_per_packet_base == pytest.approx(5000.0)
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


# Provenance: `iperf3 -c 10.250.2.2 -u -l 64 -b 0 -t 1 -J`, iperf 3.12, Debian 12, kernel 6.18, this repo's
# calibration bench (end section trimmed to the fields the parser reads plus neighbours).
IPERF3_UDP = """{"start": {"version": "iperf 3.12"}, "end": {"sum": {"start": 0, "end": 1.000046,
 "seconds": 1.000046, "bytes": 9720000, "bits_per_second": 77756423.1, "jitter_ms": 0.0031,
 "lost_packets": 1200, "packets": 151875, "lost_percent": 0.79, "sender": true}}}"""


def test_parse_iperf3_udp_pps_real_shape():
    assert parse_iperf3_udp_pps(IPERF3_UDP) == pytest.approx((151875 - 1200) / 1.000046)


@pytest.mark.parametrize("bad", ["", "{", '{"end": {}}', '{"end": {"sum": {"packets": 0, "seconds": 1}}}', "[]"])
def test_parse_iperf3_bad_input_is_one_tool_error(bad):
    with pytest.raises(ToolError):
        parse_iperf3_udp_pps(bad)


def test_nonmatching_rules_count_and_ports_avoid_traffic():
    sets, body, evals = nonmatching_rules(1000)
    rules = [l for l in body.splitlines() if l.startswith("-A cnit-cal")]
    assert sets == "" and evals == 1000 and len(rules) == 1000 and body.rstrip().endswith("COMMIT")
    ports = [int(r.split("--dport ")[1].split(":")[0]) for r in rules]
    assert min(ports) >= 10000  # the calibration traffic goes to 5201 and never matches


@pytest.mark.parametrize("style,per_rule", [("calico", 2), ("kube-router", 2)])
def test_cni_shaped_rules_are_mark_return_pairs_with_ipsets(style, per_rule):
    sets, body, evals = nonmatching_rules(10, style)
    rules = [l for l in body.splitlines() if l.startswith("-A cnit-cal")]
    assert evals == 10 * per_rule == len(rules)
    assert all("--match-set cnitcal-src src" in r for r in rules[::2])
    assert all(r.endswith("-j RETURN") for r in rules[1::2])
    assert ("cnitcal-dst dst" in rules[0]) == (style == "kube-router")
    assert "create cnitcal-src hash:net" in sets and "add cnitcal-src 10.250.1.0/24" in sets


def test_unknown_style_is_refused():
    with pytest.raises(ValueError):
        nonmatching_rules(1, "weave")

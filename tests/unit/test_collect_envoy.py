"""Envoy collector parsers, the lab's Envoy bootstrap and redirect, and the L7 detour in parts.

Fixtures: real output of the lab's Envoy 1.40 (tests/fixtures/envoy/lab-*) and public samples
(public-*), each with a provenance line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnitrace.collectors.base import strip_provenance
from cnitrace.collectors.envoy import parse as p
from cnitrace.core.errors import UsageError
from cnitrace.core.runner import RecordedRunner
from cnitrace.profile import detour

FIX = Path(__file__).parent.parent / "fixtures" / "envoy"


def fixture(name: str) -> str:
    return strip_provenance((FIX / name).read_text())


# --- public samples -------------------------------------------------------------------------------

def test_public_prometheus_histogram_mean_and_quantile_bounds():
    prom = p.parse_prometheus(fixture("public-prometheus-echo-service.txt"))
    h = prom.histogram("envoy_cluster_upstream_rq_time", envoy_cluster_name="echo-service")
    assert h is not None and h.count == 916 and h.buckets[0] == (0.5, 653) and h.buckets[-1] == (math.inf, 916)
    assert h.mean == pytest.approx(1000.85 / 916)
    assert h.quantile(0.5) == 0.5 and h.quantile(0.99) == 10   # 653 of 916 within 0.5 ms; the 907th in (5, 10]
    assert prom.value("envoy_cluster_upstream_cx_active", envoy_cluster_name="echo-service") == 24
    assert prom.value("envoy_cluster_upstream_rq_total") == 2742      # its malformed TYPE line is ignored
    assert not prom.warnings


def test_public_plain_stats_rbac_counters():
    v = p.parse_text(fixture("public-stats-text-rbac.txt"))
    assert v["http.foo_buz_enforce.rbac.denied"] == 1 and v["http.foo_buz_enforce.rbac.rule_prefix.allowed"] == 2


def test_public_json_docs_histogram_quantiles():
    s = p.parse_json(fixture("public-stats-json-docs.json"))
    h = s.histograms["cluster.external_auth_cluster.upstream_cx_length_ms"]
    assert h.cumulative(50) == pytest.approx(1.0435787) and h.cumulative(100) == 260 and not s.warnings


# --- the lab's own Envoy ---------------------------------------------------------------------------

def test_lab_envoy_stats_summary_matches_the_requests_sent():
    """Captured after 3 GET / (200) and 2 denied requests (POST /, GET /admin) through the lab."""
    stats = p.parse_json(fixture("lab-stats.json"))
    prom = p.parse_prometheus(fixture("lab-stats-prometheus.txt"))
    assert not stats.warnings and not prom.warnings
    s = p.summarize(stats, prom, "cilium_http", "original_dst")
    assert (s.rbac_allowed, s.rbac_denied) == (3, 2)
    assert s.downstream_rq["2xx"] == 3 and s.downstream_rq["4xx"] == 2 and s.upstream_rq["2xx"] == 3
    assert s.downstream_rq_time.count == 5 and s.upstream_rq_time.count == 3
    assert s.downstream_rq_time.label("envoy_http_conn_manager_prefix") == "cilium_http"
    assert json.dumps(s.to_json())


def test_lab_envoy_access_log_records():
    recs, warnings = p.parse_access_log(fixture("lab-access.log").splitlines())
    assert not warnings and len(recs) == 5
    ok = [r for r in recs if r.code == 200]
    denied = [r for r in recs if r.code == 403]
    assert len(ok) == 3 and len(denied) == 2
    assert all(r.us_us is not None and r.ds_us >= r.us_us for r in ok)
    assert all(r.us_us is None and r.upstream == "-" for r in denied)
    assert {(r.method, r.path) for r in denied} == {("POST", "/"), ("GET", "/admin")}


# --- robustness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "{", "[]", '{"stats": 3}', '{"stats": [1, {"name": 2}, {"histograms": 1}]}',
                                  '{"stats": [{"name": "x", "value": "text readout"}, {"name": "y", "value": true}]}'])
def test_json_malformed_is_a_warning(text):
    s = p.parse_json(text)
    assert isinstance(s.values, dict) and "x" not in s.values


def test_prometheus_malformed_lines_warn_and_keep_the_rest():
    prom = p.parse_prometheus('good{a="1"} 2\nbad{a=1} 3\n{} 4\nx_bucket{le="zz"} 1\nnan_val NaN\n')
    assert prom.value("good", a="1") == 2 and len(prom.warnings) >= 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_parsers_never_raise(text):
    p.parse_json(text)
    p.parse_prometheus(text)
    p.parse_text(text)
    p.parse_access_log(text.splitlines())


label_value = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='\\"\n'), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), label_value,
                          st.integers(min_value=0, max_value=10**9)), min_size=1, max_size=8),
       st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=6))
def test_fuzz_prometheus_round_trip(series, buckets):
    counts = sorted(buckets)
    lines = ["# TYPE envoy_h histogram"]
    for i, c in enumerate(counts):
        lines.append(f'envoy_h_bucket{{k="v",le="{i + 1}"}} {c}')
    lines += [f'envoy_h_bucket{{k="v",le="+Inf"}} {counts[-1]}', 'envoy_h_sum{k="v"} 12.5',
              f'envoy_h_count{{k="v"}} {counts[-1]}']
    for name, lv, v in series:
        lines.append(f'c_{name}{{lab="{lv}"}} {v}')
    prom = p.parse_prometheus("\n".join(lines))
    assert not prom.warnings
    h = prom.histogram("envoy_h", k="v")
    assert h.count == counts[-1] and h.sum == 12.5 and len(h.buckets) == len(counts) + 1
    for name, lv, v in series:
        assert prom.value(f"c_{name}", lab=lv) is not None


# --- acquisition seam -------------------------------------------------------------------------------

def test_source_reads_both_pages_through_the_runner():
    from cnitrace.collectors.envoy import source
    base = ("ip", "netns", "exec", "cnit-x-node", "curl", "-sS", "-f", "-m", "5")
    r = RecordedRunner({(*base, "http://127.0.0.1:15000/stats?format=json&usedonly"): fixture("lab-stats.json"),
                    (*base, "http://127.0.0.1:15000/stats/prometheus?usedonly"): fixture("lab-stats-prometheus.txt")})
    s, warnings = source.read(15000, "cilium_http", "original_dst", netns="cnit-x-node", runner=r)
    assert s.rbac_denied == 2 and not warnings


# --- bootstrap and redirect -------------------------------------------------------------------------

def test_bootstrap_has_transparent_listener_rbac_and_403():
    from cnitrace.lab import envoy
    rules = envoy.http_rules(5)
    assert rules[-1] == envoy.HttpRule("GET", "/") and len(rules) == 5 and len(set(rules)) == 5
    y = envoy.render_bootstrap(lab="t", listen_port=15001, admin_port=15000, rules=rules, rundir="/run/cnitrace/x")
    import yaml
    doc = yaml.safe_load(y)
    lst = doc["static_resources"]["listeners"][0]
    assert lst["transparent"] is True and lst["listener_filters"][0]["name"] == "envoy.filters.listener.original_dst"
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    perms = hcm["http_filters"][0]["typed_config"]["rules"]["policies"]["cnit-http-rules"]["permissions"]
    assert len(perms) == 5 and perms[-1]["and_rules"]["rules"][1]["url_path"]["path"]["exact"] == "/"
    assert hcm["local_reply_config"]["mappers"][0]["body"]["inline_string"] == "Access denied\r\n"
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    assert doc["static_resources"]["clusters"][0]["type"] == "ORIGINAL_DST"


@pytest.mark.parametrize("kw", [{"listen_port": 0}, {"admin_port": 15001}, {"rundir": "rel"}, {"rundir": "/x y"}])
def test_bootstrap_refuses_bad_values(kw):
    from cnitrace.lab import envoy
    args = dict(lab="t", listen_port=15001, admin_port=15000, rules=envoy.http_rules(1), rundir="/tmp/x") | kw
    with pytest.raises(UsageError):
        envoy.render_bootstrap(**args)
    with pytest.raises(UsageError):
        envoy.http_rules(0)


def test_tproxy_rules_follow_cilium():
    from cnitrace.lab import envoy
    from cnitrace.lab.datapaths.cilium import proxy_mark
    text = envoy.render_tproxy(15001, proxy_mark(15001))
    assert text.startswith("*mangle\n:CILIUM_PRE_mangle") and text.endswith("COMMIT\n")
    assert "-m mark --mark 0x3a990200 " in text and "-j TPROXY --on-port 15001" in text
    assert "--tproxy-mark 0x200/0xffffffff" in text and "-m socket --transparent" in text
    assert ["ip", "rule", "add", "fwmark", "0x200/0xf00", "lookup", "2004", "pref", "9"] in envoy.route_commands()


def test_binary_comes_from_the_wheel():
    from cnitrace.lab import envoy
    assert Path(envoy.binary()).name == "envoy"


# --- the detour in parts ----------------------------------------------------------------------------

def _rec(ds, us):
    return p.AccessRecord(0.0, "10.0.0.2:1", "GET", "/", 200, "-", "10.0.0.3:8080", ds, us, 10.0, None)


def test_parts_sum_to_the_total_with_provenance():
    d = detour.parts_of("envoy", 1.0, [_rec(400, 250), _rec(600, 350)], requests=2, connect_ns=100_000)
    names = [x.name for x in d.parts]
    assert names[:3] == ["redirect + connection setup", "proxy processing", "upstream wait"]
    assert d.parts[1].ns == pytest.approx(200_000) and d.parts[2].ns == pytest.approx(300_000)
    assert d.parts[3].provenance == "derived" and d.parts[3].ns == pytest.approx(400_000)
    assert d.parts_sum_ns == pytest.approx(d.total_ns) and not d.warnings
    assert {x.provenance for x in d.parts[:3]} == {"measured"}


def test_parts_disagreeing_sources_clamp_and_warn():
    d = detour.parts_of("envoy", 0.1, [_rec(400, 250)], requests=1)
    assert d.parts[-1].ns == 0 and "exceed" in d.warnings[0]


def test_parts_without_proxy_timings():
    d = detour.parts_of("nginx (stand-in proxy)", 2.0, [], requests=10)
    assert len(d.parts) == 1 and d.parts[0].ns == 2e6 and "no per-request timings" in d.warnings[0]


@pytest.mark.parametrize("p50,direct,proxy,found,fix", [
    (44.0, 0.5, "nginx (stand-in proxy)", True, "tcp_nodelay on;"),   # client leg: no upstream timings
    (41.0, 1.0, "haproxy (stand-in for Suricata)", True, "http-no-delay"),
    (44.0, 40.0, "nginx", False, None), (2.0, 0.5, "envoy", False, None), (None, 0.5, "envoy", False, None)])
def test_delayed_ack_stall_is_named(p50, direct, proxy, found, fix):
    s = detour.stall_of(proxy, p50, direct)
    if found:
        assert "leg is not measured" in s and "TCP_NODELAY on the server's sockets" in s
        assert "client -> proxy leg" in detour.stall_of(proxy, p50, direct, [0.2, 0.3, 0.2, 0.25])
    assert (s is not None) == found
    if fix:
        assert fix in s and "40 ms" in s


def test_stall_on_the_upstream_leg_from_the_proxys_own_timings():
    """The lab's finding (Envoy access log, ab -c 1): upstream waits at 40-44 ms for 2/3 of requests."""
    s = detour.stall_of("envoy", 43.0, 0.4, [42.6, 41.8, 0.2, 43.1, 40.2, 0.3])
    assert "proxy -> server leg" in s and "TCP_NODELAY on the server's sockets" in s and "67%" in s
    assert detour.stall_of("envoy", None, 0.4, [0.5, 0.6, 0.2, 44.0, 0.3]) is None     # one slow request is not a stall
    recs = [_rec(43_000, 42_600), _rec(300, 180), _rec(42_000, 41_800)]
    assert "server" in detour.parts_of("envoy", 28.0, recs, requests=3, p50_ms=42.0, direct_p50_ms=0.4).stall


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.01, max_value=1000), st.lists(st.tuples(st.floats(0, 5e5), st.floats(0, 5e5)), max_size=20),
       st.one_of(st.none(), st.floats(min_value=0, max_value=1e8)))
def test_fuzz_parts_never_negative_and_sum_when_consistent(total_ms, pairs, connect):
    recs = [_rec(max(a, b), min(a, b)) for a, b in pairs]
    d = detour.parts_of("envoy", total_ms, recs, requests=len(recs), connect_ns=connect)
    assert all(x.ns >= 0 for x in d.parts)
    if not d.warnings:
        assert d.parts_sum_ns == pytest.approx(d.total_ns)


def test_reports_name_the_proxy_and_the_stand_ins():
    from cnitrace.lab.l7proxy import Proxy
    mk = lambda kind: Proxy(kind, "ns", 15001, "10.0.0.2", 8080, "/tmp/x")   # noqa: E731
    assert mk("envoy").label("cilium") == "envoy"
    assert mk("nginx").label("antrea") == "nginx (stand-in for Suricata)"
    assert mk("haproxy").label("antrea") == "haproxy (stand-in for Suricata)"
    assert mk("nginx").label("calico") == "nginx (stand-in proxy)"
    assert mk("envoy").access_log.name == "access.log" and mk("haproxy").access_log.name == "output.log"
    old = {"kind": "nginx", "netns": "n", "listen_port": 1, "upstream_ip": "x", "upstream_port": 2, "rundir": "/r"}
    assert Proxy.from_json(old).admin_port == 0          # lab descriptions written before Envoy still load


def test_reports_show_the_detour_in_parts():
    import io

    from rich.console import Console

    from cnitrace.reports.document import Node
    from cnitrace.reports.profile.html import detour_bars
    from cnitrace.reports.profile.terminal import render_detour

    d = detour.parts_of("envoy", 1.0, [_rec(400, 250)], requests=1, connect_ns=100_000).to_json()
    l7 = Node("stage", "l7_proxy", packets=1, ns_per_packet=1e6, detail={"parts": d})
    root = Node("root", "all", packets=1, children=[l7])
    svg = detour_bars(root)
    assert svg.startswith('<svg id="l7-detour-chart"') and svg.count("<title>") == 4 and "derived" in svg
    assert detour_bars(Node("root", "all", packets=1)) == ""
    out = io.StringIO()
    render_detour(d, Console(file=out, width=100))
    text = out.getvalue()
    assert "proxy processing" in text and "upstream wait" in text and "measured" in text and "derived" in text

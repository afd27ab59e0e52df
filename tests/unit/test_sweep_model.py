"""The sweep's pure side: options → config, the point list, per-point arithmetic, and the CPU and
memory parsers on real /proc captures (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.sweep.model import (SPREAD_LIMIT, PointSpec, cliff_cause, cpu_share, curve, make_config,
                                  parse_list, parse_proc_stat_cpu, parse_vmrss_kib, points, policy_stages,
                                  summarize)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sweep"


def fixture(name: str) -> str:
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text.split("\n", 1)[1]


def test_default_config_is_the_issue_default_sweep():
    cfg = make_config()
    assert cfg.datapaths == ("calico", "kube-router", "weave", "nft", "antrea", "cilium", "flannel")
    assert cfg.rules == (0, 100, 1000) and cfg.clients == (1,) and cfg.placement == "intra"
    assert len(points(cfg)) == 21
    quick = make_config(quick=True)
    assert quick.rules == (0, 1000) and quick.seconds < cfg.seconds and len(points(quick)) == 14


@pytest.mark.parametrize("kw,msg", [
    ({"datapaths": "calico,canal"}, "unknown datapath 'canal'"),
    ({"rules": "0,abc"}, "not a comma-separated list"),
    ({"rules": "0,20000"}, "0..10000"),
    ({"rules": "100,100"}, "duplicate"),
    ({"rules": " , "}, "empty list"),
    ({"clients": "0"}, "1..250"),
    ({"placement": "remote"}, "choose intra or inter"),
    ({"repeat": 0}, "out of range"),
    ({"datapaths": "nft,flannel", "l7": True}, "--l7 needs one of"),
])
def test_bad_options_are_one_line_usage_errors(kw, msg):
    with pytest.raises(UsageError, match=msg) as exc:
        make_config(**kw)
    assert "\n" not in exc.value.message


def test_too_many_points_refused():
    with pytest.raises(UsageError, match="sweep too large"):
        make_config(rules=",".join(str(i) for i in range(0, 10_000, 100)), clients="1,2,3,4,5")


def test_point_order_baseline_first_twins_follow():
    cfg = make_config(datapaths="nft,calico", rules="1000,0", l7=True, placement="inter")
    ids = [p.id for p in points(cfg)]
    assert ids[:2] == ["nft/r0/c1/intra", "nft/r0/c1/inter"]            # nft has no L7 twin
    cal = [i for i in ids if i.startswith("calico/")]
    assert cal[:3] == ["calico/r0/c1/intra", "calico/r0/c1/l7/intra", "calico/r0/c1/inter"]
    assert not [i for i in ids if "/l7/inter" in i]     # the tunnel bypasses the lab's L7 detour
    assert len(ids) == 2 * 2 + 2 * 3


def test_parse_list_casts():
    assert parse_list("0, 100,1000", "rules", cast=int) == (0, 100, 1000)
    assert parse_list(None, "rules") == ()


def test_summarize_spread_and_marking():
    s = summarize([100.0, 110.0, 90.0])
    assert s["median"] == 100.0 and s["spread"] == pytest.approx(0.2) and s["wide"] is False
    w = summarize([100.0, 200.0])
    assert w["median"] == 150.0 and w["spread"] == pytest.approx(100 / 150) and w["wide"]
    assert w["spread"] > SPREAD_LIMIT
    assert summarize([None, None]) is None
    assert summarize([5.0])["wide"] is False        # one repeat: no spread to judge


def test_cpu_share_on_real_proc_stat():
    before = parse_proc_stat_cpu(fixture("proc-stat-before.txt"))
    after = parse_proc_stat_cpu(fixture("proc-stat-after.txt"))
    assert before["softirq"] == 11273 and after["softirq"] == 11279 and before["user"] == 338052
    share = cpu_share(before, after)
    total = (338233 - 338052) + (72319 - 72305) + (11279 - 11273)
    assert share["softirq_pct"] == pytest.approx(100 * 6 / total)
    assert share["system_pct"] == pytest.approx(100 * 14 / total)
    assert share["busy_pct"] == pytest.approx(100.0)
    assert parse_proc_stat_cpu("intr 1 2 3\n") == {}


def test_vmrss_on_real_status_files():
    assert parse_vmrss_kib(fixture("proc-self-status.txt")) == 1768
    assert parse_vmrss_kib(fixture("kthreadd-status.txt")) == 0


def test_policy_stage_measured_and_modelled():
    ps = PointSpec("calico", 1000, 1, False, "intra")
    [st] = policy_stages(ps, 110_000.0, 7_000.0, 2004, 50.0)
    assert st["stage"] == "netfilter" and st["measured_ns"] == 103_000.0 and st["modelled_ns"] == 100_200.0
    assert st["agreement"] == pytest.approx(103_000 / 100_200)
    [no_base] = policy_stages(PointSpec("cilium", 0, 1, False, "intra"), 5000.0, None, 1, None)
    assert no_base["stage"] == "bpf" and no_base["measured_ns"] is None and no_base["modelled_ns"] is None


def test_curve_fits_and_flags():
    lin = curve([(0, 7000.0), (100, 17000.0), (1000, 107000.0)], "rule")
    assert lin["linear"]["slope"] == pytest.approx(100.0) and lin["flat"] is False and lin["cliff"] is None
    flat = curve([(0, 5000.0), (100, 5100.0), (1000, 4950.0)], "rule")
    assert flat["flat"] is True
    # Three points on a line, then a collapse: the cliff is found at the fourth.
    cl = curve([(1, 10.0), (50, 9.8), (100, 9.6), (200, 2.0)], "client")
    assert cl["cliff"]["x"] == 200 and cl["cliff"]["observed"] == 2.0
    # Two points always fit a line: no cliff is judged from them.
    assert curve([(0, 1.0), (1, 1.0), (2, 9.0)], "rule")["cliff"] is None


def test_cliff_cause_prefers_conntrack_evidence():
    pts = [{"spec": {"clients": 200}, "conntrack": {"insert_failed": 12, "drop": 3}, "connection_failures": 40},
           {"spec": {"clients": 100}, "conntrack": {}, "connection_failures": 5},
           {"spec": {"clients": 50}, "conntrack": {}, "connection_failures": 0}]
    stage, why = cliff_cause(pts, 200, "clients", "calico")
    assert stage == "conntrack" and "insert_failed 12" in why
    assert cliff_cause(pts, 100, "clients", "calico")[0] == "connection setup"
    assert cliff_cause(pts, 50, "clients", "calico")[0] == "cpu"
    by_rules = [{"spec": {"rules": 1000}, "conntrack": {}, "connection_failures": 0}]
    assert cliff_cause(by_rules, 1000, "rules", "kube-router")[0] == "netfilter"

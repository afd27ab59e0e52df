"""`cnitrace agent`'s pure parts: options, --listen, /healthz, the program timer's per-window delta."""

from __future__ import annotations

import dataclasses
import types

import pytest
from click.testing import CliRunner

from cnitrace import cli
from cnitrace.agent.loop import AgentConfig, progtime_delta
from cnitrace.agent.server import health, parse_listen
from cnitrace.core.errors import UsageError
from cnitrace.probes.histogram import Histogram
from cnitrace.probes.runtime import Figure


def test_parse_listen():
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("9477", ":9477", "host:", "host:x", "host:70000"):
        with pytest.raises(UsageError):
            parse_listen(bad)


@pytest.mark.parametrize("kw, message", [
    ({"window": 0.0}, "--window"), ({"window": 5000}, "--window"), ({"windows": 0}, "--windows"),
    ({"label_cap": 0}, "--label-cap"), ({}, "nothing selected"),
])
def test_config_refused(kw, message):
    cfg = AgentConfig(**({"lab": "x"} if message != "nothing selected" else {}), **kw)
    with pytest.raises(UsageError, match=message):
        cfg.validate()


def test_each_window_is_a_traffic_free_profile():
    pc = AgentConfig(lab="x", window=2.5).profile_config()
    assert pc.traffic == "none" and pc.duration == 2.5 and pc.lab == "x" and pc.calibrate


def test_cli_refuses_bad_options_before_root():
    r = CliRunner().invoke(cli.cli, ["agent", "--lab", "x", "--window", "0"])
    assert r.exit_code != 0 and "--window" in r.output + str(r.exception)
    r = CliRunner().invoke(cli.cli, ["agent", "--lab", "x", "--listen", "nope"])
    assert r.exit_code != 0 and "--listen" in r.output + str(r.exception)
    assert "agent" in CliRunner().invoke(cli.cli, ["--help"]).output


def test_health_states():
    agent = types.SimpleNamespace(windows_total=0, last_window_at=None, cfg=AgentConfig(lab="x", window=10))
    code, body = health(agent, now=100.0)
    assert code == 503 and body["status"] == "starting"
    agent.windows_total, agent.last_window_at = 3, 95.0
    code, body = health(agent, now=100.0)
    assert code == 200 and body["status"] == "ok" and body["last_window_age_s"] == 5.0 and body["rss_bytes"] > 0
    code, body = health(agent, now=1000.0)
    assert code == 503 and body["status"] == "stale"


def _fig(prog_id: int, count: int, total: int) -> Figure:
    return Figure("tc_bpf", "progtime_agg", "fentry", "ns", {"prog_id": prog_id}, Histogram(count, total, (count,)))


def test_progtime_delta_gives_each_window_its_own_runs():
    first, prev = progtime_delta([_fig(1, 10, 1000), _fig(2, 0, 0)], {})
    assert [(f.key["prog_id"], f.hist.count) for f in first] == [(1, 10)]
    second, prev = progtime_delta([_fig(1, 15, 1600), _fig(2, 4, 40)], prev)
    assert [(f.key["prog_id"], f.hist.count, f.hist.sum) for f in second] == [(1, 5, 600), (2, 4, 40)]
    # A program replaced under the same slot starts again from zero: its new counts, not a negative delta.
    third, _ = progtime_delta([_fig(1, 3, 90)], prev)
    assert [(f.hist.count, f.hist.sum) for f in third] == [(3, 90)]
    assert dataclasses.is_dataclass(third[0])

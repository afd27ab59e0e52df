"""`cnitrace agent` on the calico lab (root, real kernel): /metrics parsed by prometheus_client's own
parser, values consistent with the served /report.json and with a `profile` of the same traffic,
/report.json valid against the schema, SIGHUP reload, SIGTERM and kill -9 leave nothing behind,
and a soak of over 100 tiny windows keeps RSS bounded."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnitrace.core.state import StateFile
from cnitrace.lab import manager
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports import metrics as m
from cnitrace.traffic import generators as traffic
from tests.support.agentproc import CNITRACE, AgentProc

pytestmark = pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")

SCHEMA = json.loads((Path(m.__file__).parent / "profile.schema.json").read_text())


def families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def chain(doc: dict, name: str) -> dict:
    todo = [doc["tree"]]
    while todo:
        n = todo.pop()
        if n["kind"] == "chain" and n["name"] == name:
            return n
        todo += n["children"]
    raise AssertionError(f"no chain {name}")


def test_agent_serves_metrics_consistent_with_a_profile(lab_factory, node_before_after, tmp_path):
    lab = lab_factory("calico", 200)
    print(f"lab {lab.spec.name}")
    policy = lab.truth.allowed["tcp"].chain
    agent = AgentProc(lab.spec.name, tmp_path, "--window", "8", "--windows", "5")
    try:
        agent.wait_ready()
        code, _ = agent.get("/report.json")
        assert code == 503                                   # no window has closed yet
        sent = traffic.crafted_probes(lab.topo)              # inside the lab, during the first window
        agent.wait_windows(1, 60)
        code, body = agent.get("/report.json")
        assert code == 200
        doc = json.loads(body)
        jsonschema.validate(doc, SCHEMA)
        assert doc["kind"] == "profile" and doc["traffic"]["kind"] == "none"
        assert doc["agent"]["windows_total"] == 1 and doc["agent"]["window"] == 8 and doc["agent"]["node"] == socket.gethostname()
        assert doc["calibration"]["provenance"] in ("cached", "measured")
        code, text = agent.get("/metrics")
        assert code == 200
        fams = families(text)
        assert set(m.family_names()) <= set(fams)
        stage = fams["cnitrace_stage_seconds"]
        assert {"stage", "level", "name", "backend", "provenance"} <= set(stage.samples[0].labels)
        assert {s.labels["provenance"] for s in stage.samples} == {"measured", "modelled"}
        # The metrics are the served document's figures.
        ev = {s.labels["chain"]: s.value for s in fams["cnitrace_chain_rule_evaluations_per_packet"].samples}
        assert ev[policy] == chain(doc, policy)["evaluations_per_packet"]
        counts = {(s.labels["level"], s.labels["name"], s.labels["provenance"]): s.value
                  for s in stage.samples if s.name.endswith("_count")}
        sums = {(s.labels["level"], s.labels["name"], s.labels["provenance"]): s.value
                for s in stage.samples if s.name.endswith("_sum")}
        root = ("root", doc["tree"]["name"], "measured")
        assert counts[root] == doc["tree"]["packets"] > 0
        assert abs(sums[root] / counts[root] - doc["tree"]["measured_ns"] * 1e-9) < 1e-12
        drops = {s.labels["chain"]: s.value for s in fams["cnitrace_drops"].samples if s.name.endswith("_total")}
        windows = [s.value for s in fams["cnitrace_windows"].samples if s.name.endswith("_total")]
        assert windows == [1]
        cpu = [s.value for s in fams["cnitrace_overhead_seconds"].samples if s.name.endswith("_total")][0]
        assert cpu > 0

        # SIGHUP: the selection is re-read, probes re-attached, windows go on.
        agent.proc.send_signal(signal.SIGHUP)
        h = agent.wait_windows(2, 90)
        assert h["status"] == "ok"
        assert "reload" in agent.log()
        assert agent.stop(signal.SIGTERM) == 0, agent.log()
        assert "everything detached" in agent.log()
        assert not StateFile().live(f"run:{agent.proc.pid}")
    finally:
        agent.kill()

    # A profile of the same traffic: per-chain figures agree with the agent's window.
    prof = run_profile(ProfileConfig(lab=lab.spec.name, traffic="probe", duration=1.0))
    a, p = chain(doc, policy), chain(prof, policy)
    assert sum(sent.metrics["sent"].values()) == prof["traffic"]["packets_sent"]     # the same probe plan
    assert a["packets"] == p["packets"] > 0
    assert 0.95 <= a["evaluations_per_packet"] / p["evaluations_per_packet"] <= 1.05
    nf = {d["where"].split("#")[0]: d["count"] for d in prof["drops"] if d["reason"] == "NETFILTER_DROP"}
    assert {c: drops.get(c) for c in nf} == nf, (drops, nf)
    manager.down(lab.spec.name)
    node_before_after()


def test_agent_kill_9_is_cleaned_up(lab_factory, node_before_after, tmp_path):
    lab = lab_factory("calico", 20)
    print(f"lab {lab.spec.name}")
    agent = AgentProc(lab.spec.name, tmp_path, "--window", "1")
    try:
        agent.wait_ready()
        agent.wait_windows(1, 60)
    finally:
        agent.kill()                                       # SIGKILL: no handler runs
    done = subprocess.run([*CNITRACE, "cleanup"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not StateFile().live(f"run:{agent.proc.pid}")
    manager.down(lab.spec.name)
    node_before_after()


def test_agent_soak_rss_is_bounded(lab_factory, node_before_after, tmp_path):
    lab = lab_factory("calico", 50)
    print(f"lab {lab.spec.name}")
    n = 120
    agent = AgentProc(lab.spec.name, tmp_path, "--window", "0.2", "--windows", str(n))
    rss: dict[int, int] = {}
    try:
        agent.wait_ready()
        end = time.monotonic() + 600
        while agent.proc.poll() is None and time.monotonic() < end:
            try:
                h = agent.health()
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                break                                       # the agent ended after its last window
            if h["windows_total"]:
                rss.setdefault(h["windows_total"], h["rss_bytes"])
            time.sleep(0.05)
        assert agent.proc.wait(timeout=60) == 0, agent.log()
    finally:
        agent.kill()
    assert len(rss) >= 0.5 * n and max(rss) >= n - 5, sorted(rss)
    ws = sorted(rss)
    q = len(ws) // 4
    first = sorted(rss[w] for w in ws[:q])[q // 2]
    last = sorted(rss[w] for w in ws[-q:])[q // 2]
    print(f"soak: {n} windows of 0.2 s; median RSS first quarter {first / 2**20:.1f} MiB, "
          f"last quarter {last / 2**20:.1f} MiB ({last / first:.3f}x)")
    assert last <= first * 1.05 + 2 * 2**20, (first, last)
    manager.down(lab.spec.name)
    node_before_after()

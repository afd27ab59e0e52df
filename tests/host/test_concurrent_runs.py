"""Two cnitrace runs at once on one node (issue 16, item 3): two `lab up` of one name, two
profiles of two labs, a profile and a cleanup during a sweep. Each run sees only its own
selection, neither disturbs the other's objects or report, and the node is left as found.

Every run gets a private state directory shared by the runs of one test (so the runs see each
other, as on a node, while other work on this machine stays out of reach).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cnitrace.core.state import StateFile
from cnitrace.reports.document import Node, validate

pytestmark = pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")

CNITRACE = [sys.executable, "-m", "cnitrace"]


@pytest.fixture
def env():
    state = Path(f"/tmp/cnit-state-{uuid.uuid4().hex[:8]}")
    e = {**os.environ, "CNITRACE_STATE_DIR": str(state)}
    yield e
    subprocess.run([*CNITRACE, "cleanup", "--force"], env=e, capture_output=True, timeout=120)
    shutil.rmtree(state, ignore_errors=True)


def _start(env, *args) -> subprocess.Popen:
    return subprocess.Popen([*CNITRACE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CNITRACE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _finish(p: subprocess.Popen, timeout=400) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_two_lab_ups_of_one_name_build_one_lab_and_break_nothing(env, node_before_after, unique_name):
    name = unique_name()
    procs = [_start(env, "lab", "up", "-d", "calico", "-n", "500", "--name", name) for _ in range(2)]
    results = [_finish(p) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for rc, _, err in results if rc != 0)
    assert "already exists" in loser and len(loser.strip().splitlines()) == 1
    st = json.loads(_run(env, "lab", "status", "--name", name, "--json").stdout)
    assert st["healthy"], st                       # the loser removed none of the winner's objects
    assert _run(env, "lab", "down", "--name", name).returncode == 0
    assert not StateFile(Path(env["CNITRACE_STATE_DIR"])).live()
    node_before_after()


def _transit_and_tables(doc: dict) -> tuple[int, list[Node]]:
    root = Node.from_json(doc["tree"])
    nf = root.find("stage", "netfilter")
    return root.detail["transit_packets"], [t for t in nf.children if t.kind == "table" and t.measured_ns]


def test_two_profiles_at_once_each_see_only_their_own_lab(env, node_before_after, unique_name, tmp_path):
    names = [unique_name(), unique_name()]
    for n, rules in zip(names, (100, 1000)):
        up = _run(env, "lab", "up", "-d", "calico", "-n", str(rules), "--name", n)
        assert up.returncode == 0, up.stderr
    outs = [tmp_path / f"{n}.json" for n in names]
    procs = [_start(env, "profile", "--lab", n, "--traffic", "probe", "--duration", "3", "--json", str(o))
             for n, o in zip(names, outs)]
    for p in procs:
        rc, _, err = _finish(p)
        assert rc == 0, err
    docs = [json.loads(o.read_text()) for o in outs]
    per_table = []
    for doc, n in zip(docs, names):
        assert validate(doc) == []
        assert all(i["netns"].startswith(f"cnit-{n}-") for i in doc["selection"]["interfaces"]), doc["selection"]
        sent = doc["traffic"]["packets_sent"]
        transit, tables = _transit_and_tables(doc)
        # its own probes and their replies' RSTs, not the other run's packets too
        assert sent <= transit <= 2 * sent, (n, sent, transit)
        assert tables and all(t.detail["calls"] == transit for t in tables)
        per_table.append(max(t.measured_ns for t in tables))
    # each run measured its own lab: the 1,000-rule lab's filter table costs more than the 100-rule one's
    assert per_table[1] > 2 * per_table[0], per_table
    for n in names:
        assert _run(env, "lab", "down", "--name", n).returncode == 0
    node_before_after()


def test_a_profile_and_a_cleanup_during_a_sweep(env, node_before_after, unique_name, tmp_path):
    name = unique_name()
    up = _run(env, "lab", "up", "-d", "kube-router", "-n", "200", "--name", name)
    assert up.returncode == 0, up.stderr
    sweep = _start(env, "sweep", "--datapath", "calico", "--rules", "0,100", "--quick", "--json", str(tmp_path / "s.json"))
    state = StateFile(Path(env["CNITRACE_STATE_DIR"]))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweep.poll() is None:
        if any(r.pid == sweep.pid and r.owner.startswith("lab:") for r in state.live()):
            break
        time.sleep(0.1)
    assert any(r.pid == sweep.pid for r in state.live()), "the sweep built no lab"
    cleaned = _run(env, "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert sweep.poll() is None, "the sweep ended before the cleanup: nothing was tested"
    assert f"in use by pid {sweep.pid}" in cleaned.stdout       # the sweep's lab of the moment
    assert f"of lab:{name}: lab {name}" in cleaned.stdout       # the finished lab is kept too

    prof = _run(env, "profile", "--lab", name, "--traffic", "probe", "--duration", "2", "--json", str(tmp_path / "p.json"))
    assert prof.returncode == 0, prof.stderr
    doc = json.loads((tmp_path / "p.json").read_text())
    assert validate(doc) == []
    sent = doc["traffic"]["packets_sent"]
    transit, tables = _transit_and_tables(doc)
    assert sent <= transit <= 2 * sent and tables       # the sweep's traffic is not in this profile

    rc, _, err = _finish(sweep, timeout=600)
    assert rc == 0, err
    sw = json.loads((tmp_path / "s.json").read_text())
    assert [p["status"] for p in sw["points"]] == ["ok", "ok"], [p.get("status") for p in sw["points"]]
    assert _run(env, "lab", "down", "--name", name).returncode == 0
    assert not state.live()
    node_before_after()

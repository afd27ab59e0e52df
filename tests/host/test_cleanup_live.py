"""`cnitrace cleanup` from another shell during a running profile leaves that profile intact
(issue 16, item 1): its calibration namespaces and its report survive, the lab it profiles is kept, and what
is left after the profile ends is only the lab, which `cleanup --lab NAME` then removes.

A private state directory keeps this test's `cleanup` calls away from other runs on the machine.
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


def _run(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*CNITRACE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cleanup_during_a_profile_keeps_the_profile_and_its_lab(node_before_after, unique_name, tmp_path):
    state = Path(f"/tmp/cnit-state-{uuid.uuid4().hex[:8]}")
    # an empty calibration cache: the profile calibrates first, in namespaces it records
    env = {**os.environ, "CNITRACE_STATE_DIR": str(state), "CNITRACE_CACHE_DIR": str(tmp_path / "cache")}
    name = unique_name()
    out_json = tmp_path / "run.json"
    prof = None
    try:
        up = _run(env, "lab", "up", "-d", "calico", "-n", "200", "--name", name)
        assert up.returncode == 0, up.stderr
        prof = subprocess.Popen([*CNITRACE, "profile", "--lab", name, "--traffic", "probe", "--duration", "2",
                                 "--json", str(out_json)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        owner = f"run:{prof.pid}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and prof.poll() is None:
            # wait until the profile's calibration has recorded namespaces of its own
            if StateFile(state).live(owner):
                break
            time.sleep(0.05)
        mine = StateFile(state).live(owner)
        assert mine, "the profile recorded nothing before it ended"

        cleaned = _run(env, "cleanup")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"of {owner}: in use by pid {prof.pid}" in cleaned.stdout
        assert f"of lab:{name}: lab {name}" in cleaned.stdout
        assert "removed" not in cleaned.stdout
        assert {r.id for r in StateFile(state).live(owner)} >= {r.id for r in mine}

        _, err = prof.communicate(timeout=400)
        assert prof.returncode == 0, err
        doc = json.loads(out_json.read_text())
        assert validate(doc) == []
        root = Node.from_json(doc["tree"])
        assert root.detail["transit_packets"] > 0 and root.measured_ns
        nf = root.find("stage", "netfilter")
        assert nf is not None and nf.measured_ns, "the netfilter brackets were torn down mid-window"

        # the profile removed its own objects on exit; only the lab's remain, kept by default
        assert not StateFile(state).live(owner)
        again = _run(env, "cleanup")
        assert again.returncode == 0 and "removed" not in again.stdout
        named = _run(env, "cleanup", "--lab", name)
        assert named.returncode == 0, named.stderr
        assert "removed netns" in named.stdout
        assert not StateFile(state).live()
        node_before_after()
    finally:
        if prof is not None and prof.poll() is None:
            prof.kill()
            prof.wait()
        _run(env, "cleanup", "--force")
        shutil.rmtree(state, ignore_errors=True)

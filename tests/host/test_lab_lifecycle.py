"""The lab leaves the node exactly as it found it: after `lab down`, after a failure midway,
and after `kill -9` of `lab up` midway followed by `cnitrace cleanup` (root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cnitrace.core.errors import ToolError
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.core.state import StateFile

CNITRACE = [sys.executable, "-m", "cnitrace"]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_down_restores_the_node(node_before_after, unique_name):
    name = unique_name()
    lab = manager.up(LabSpec(name=name, datapath="calico", rules=100, l7=True, backend="nft"))
    assert lab.topo.node_netns in _netns()
    assert manager.names().count(name) == 1
    assert manager.status(name)["healthy"]
    assert manager.down(name) >= 6      # 4 namespaces, server, proxy, its rundir, the description
    assert name not in manager.names()
    node_before_after()


def test_failure_midway_removes_what_was_built(node_before_after, unique_name, monkeypatch):
    def boom(session, topo):
        raise ToolError("server: injected failure")

    monkeypatch.setattr(manager, "start_server", boom)
    name = unique_name()
    with pytest.raises(ToolError, match="injected failure"):
        manager.up(LabSpec(name=name, datapath="kube-router", rules=1000))
    assert not StateFile().live(manager.owner(name))
    assert not any(n.startswith(f"cnit-{name}-") for n in _netns())
    node_before_after()


def test_kill9_midway_then_cleanup(node_before_after, unique_name):
    """A private state dir keeps `cnitrace cleanup` from touching other runs on this machine."""
    state = Path(f"/tmp/cnit-state-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "CNITRACE_STATE_DIR": str(state)}
    name = unique_name()
    proc = subprocess.Popen([*CNITRACE, "lab", "up", "-d", "calico", "-n", "10000", "--pods", "20",
                             "--name", name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        # Kill it once some pod namespaces exist but before the lab is complete.
        while time.monotonic() < deadline:
            built = [n for n in _netns() if n.startswith(f"cnit-{name}-p")]
            if len(built) >= 3:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = [n for n in _netns() if n.startswith(f"cnit-{name}-")]
        assert left, "lab up finished or never started: nothing to clean"
        assert not (state / "labs" / f"cnit-{name}.json").exists(), "the lab completed before the kill"

        out = subprocess.run([*CNITRACE, "cleanup"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert not [n for n in _netns() if n.startswith(f"cnit-{name}-")]
        assert not StateFile(state).live()
        node_before_after()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)

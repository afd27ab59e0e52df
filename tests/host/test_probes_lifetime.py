"""Host tier: the probes leave nothing behind — after a normal exit and after Ctrl-C.

Programs and maps are identified by the ids the probe process itself holds (its fds, also
written to --ready-file), so objects other runs load at the same time cannot confuse the
assertion. Nothing is pinned, so once the ids are gone nothing can remain: a pin would keep
its program or map alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnitrace.probes.runtime import ProbeSet
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.session import Session
from cnitrace.core.state import StateFile

pytestmark = pytest.mark.requires("tracepoints", "btf", "bcc")


def live_ids(kind: str) -> set[int]:
    return {p["id"] for p in json.loads(R.run(["bpftool", kind, "list", "-j"]).stdout)}


def gone(kind: str, ids, within: float = 10.0) -> bool:
    """The kernel frees maps (and programs) asynchronously after the last fd closes."""
    deadline = time.monotonic() + within
    while set(ids) & live_ids(kind):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def tracefs_mounted() -> bool:
    return any(line.split()[2:3] == ["tracefs"] for line in Path("/proc/mounts").read_text().splitlines())


def test_programs_and_maps_gone_after_session_exit():
    tracefs_before = tracefs_mounted()
    with Session() as s:
        ps = ProbeSet(["transit", "drops"], ifaces=[(None, "lo")], session=s)
        ps.start()
        ids = ps.kernel_ids()
        # transit: receive, xmit, consume_skb, kfree_skb; drops: kfree_skb
        assert len(ids["prog"]) == 5 and set(ids["prog"]) <= live_ids("prog")
        assert len(ids["map"]) >= 5 and set(ids["map"]) <= live_ids("map")
    assert gone("prog", ids["prog"]) and gone("map", ids["map"])
    assert tracefs_mounted() == tracefs_before  # mounted for the compile only, if at all
    assert not StateFile().live(s.owner)


def test_programs_and_maps_gone_after_sigint(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "cnitrace", "probe", "-s", "transit", "-s", "drops",
                             "-i", "lo", "--duration", "60", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=5)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and len(info["prog_ids"]) == 5
        assert set(info["prog_ids"]) <= live_ids("prog") and set(info["map_ids"]) <= live_ids("map")
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert gone("prog", info["prog_ids"]) and gone("map", info["map_ids"])

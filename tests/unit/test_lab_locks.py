"""Build locks of labs: one `lab up` per name holds it; `cnitrace cleanup` removes the ones a killed
build left behind, never one a live build holds or one of a lab that exists."""

from __future__ import annotations

import subprocess
import sys

from cnitrace.core.files import exclusive
from cnitrace.core.state import StateFile
from cnitrace.lab import manager

HOLD = """
import sys, time, pathlib
from cnitrace.core.files import exclusive
with exclusive(pathlib.Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(30)
"""


def test_prune_removes_only_stale_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CNITRACE_STATE_DIR", str(tmp_path))
    for name in ("stale", "built", "building"):
        with exclusive(manager.meta_path(name)):
            pass                                        # each leaves its .lock file
    manager.meta_path("built").write_text("{}")         # a lab that exists keeps its lock
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(manager.meta_path("building"))],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert manager.prune_locks(StateFile(tmp_path)) == 1
        left = sorted(f.name for f in manager.labs_dir().glob("*.lock"))
        assert left == ["cnit-building.json.lock", "cnit-built.json.lock"]
    finally:
        p.kill()
        p.wait()
    assert manager.prune_locks(StateFile(tmp_path)) == 1  # released by the dead builder: now stale

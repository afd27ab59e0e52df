"""What the sweep's and the study's host tests share: the node's namespaces, the check that a
finished run left no lab behind, and a run interrupted with Ctrl-C once its first point is done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cnitrace.core.state import StateFile
from cnitrace.lab import manager


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def assert_no_lab_left(doc: dict) -> None:
    """No lab of the run's points is listed, has a namespace or a live record; the run saw no leftovers."""
    labs = {p["lab"] for p in doc["points"]}
    assert not labs & set(manager.names())
    left = {ns for ns in netns_names() for lab in labs if ns.startswith(f"cnit-{lab}-")}
    assert not left, left
    assert not [r for r in StateFile().live() if r.owner in {f"lab:{lab}" for lab in labs}]
    assert not doc["leftovers"]


def interrupted_after_first_point(args: list[str], out: Path, prefix: str, wait_s: float,
                                  exit_s: float) -> dict:
    """Run `cnitrace <args> --json out`, send SIGINT as soon as the second point's lab exists (so the
    first point is finished), and return the partial document after checking exit status 130.
    `prefix`: the labs' namespace prefix ("cnit-sw", "cnit-st"); bounded by `wait_s` and `exit_s`."""
    before = {ns for ns in netns_names() if ns.startswith(prefix)}
    proc = subprocess.Popen([sys.executable, "-m", "cnitrace", *args, "--json", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and proc.poll() is None:
        seen |= {ns for ns in netns_names() if ns.startswith(prefix) and ns.endswith("-node")} - before
        if len(seen) >= 2:          # the second point's lab exists: the first point is finished
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"{args[0]} ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=exit_s)
    assert proc.returncode == 130, err[-500:]
    return json.loads(out.read_text())

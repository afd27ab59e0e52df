"""What the kernel holds, as bpftool lists it: for tests that check nothing of theirs is left."""

from __future__ import annotations

import json
import subprocess


def bpftool_ids(what: str) -> set[int]:
    """Ids of every BPF object of a kind ("prog", "link", "map") loaded now."""
    out = subprocess.run(["bpftool", "-j", what, "show"], capture_output=True, text=True, check=True).stdout
    return {int(o["id"]) for o in json.loads(out or "[]")}

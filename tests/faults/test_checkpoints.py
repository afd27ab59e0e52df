"""The checkpoints are named in one place, every named one is placed, and the fault spec parses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnitrace.core import faults
from tests.faults.matrix import PHASES

ROOT = Path(__file__).resolve().parents[2]


def placed() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for folder in ("tracer", "collectors", "probes", "vagrant"):
        for f in (ROOT / folder).rglob("*.py"):
            for name in re.findall(r"faults\.checkpoint\(\"([^\"]+)\"\)", f.read_text()):
                out.setdefault(name, []).append(str(f.relative_to(ROOT)))
    return out


def test_every_checkpoint_is_declared_and_placed():
    where = placed()
    assert set(where) == set(faults.CHECKPOINTS), where


def test_every_declared_phase_names_a_checkpoint():
    for command, phases in PHASES.items():
        for phase, spec in phases:
            assert faults.parse(spec), (command, phase)


@pytest.mark.parametrize("spec,parsed", [(None, {}), ("", {}), ("window", {"window": 1}),
                                         ("before-record@3", {"before-record": 3})])
def test_parse(spec, parsed):
    assert faults.parse(spec) == parsed


@pytest.mark.parametrize("spec", ["no-such-point", "window@0", "window@x"])
def test_parse_refuses(spec):
    with pytest.raises(ValueError):
        faults.parse(spec)


def test_the_nth_visit_kills_with_sigkill_and_says_where():
    code = ("from cnitrace.core import faults\n"
            "for i in range(5):\n"
            "    print(i, flush=True)\n"
            "    faults.checkpoint('window')\n")
    p = subprocess.run([sys.executable, "-c", code], env={"CNITRACE_FAULT": "window@3", "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -9 and p.stdout.split() == ["0", "1", "2"]
    assert p.stderr == "cnitrace: fault injected at window@3\n"


def test_every_command_that_makes_objects_has_cells():
    """`cnitrace trace` is not a cell because it does not exist; once it does, it needs its phases."""
    from cnitrace.cli import cli
    from tests.faults.matrix import NOT_CELLS

    for name in NOT_CELLS:
        assert name not in cli.commands, f"`cnitrace {name}` exists now: declare its phases in matrix.PHASES"
    from tests.faults.matrix import PHASES
    assert "trace" in cli.commands and "trace" in PHASES

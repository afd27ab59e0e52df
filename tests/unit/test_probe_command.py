"""`cnitrace probe` option parsing and bad input: one clear line, exit 2, no traceback."""

from __future__ import annotations

import pytest

from cnitrace.cli import main
from cnitrace.core.errors import UsageError
from cnitrace.probes.command import ProbeConfig, parse_force, parse_iface, validate


def test_parse_iface():
    assert parse_iface("cnit-lab-node/cali*") == ("cnit-lab-node", "cali*")
    assert parse_iface("eth0") == (None, "eth0")
    with pytest.raises(UsageError):
        parse_iface("/eth0")


def test_parse_force():
    assert parse_force("netfilter=kprobe") == ("netfilter", "kprobe")
    for bad in ("netfilter", "nope=kprobe", "netfilter=magic"):
        with pytest.raises(UsageError, match="bad --force"):
            parse_force(bad)


def test_validate():
    validate(ProbeConfig(stages=("transit",), duration=1))
    with pytest.raises(UsageError, match="no stage"):
        validate(ProbeConfig(stages=()))
    with pytest.raises(UsageError, match="--duration"):
        validate(ProbeConfig(stages=("transit",), duration=0))


@pytest.mark.parametrize("argv,needle", [
    (["probe", "--force", "netfilter=magic"], "bad --force"),
    (["probe", "--stage", "bogus", "--duration", "1"], "unknown stage(s) bogus"),
    (["probe", "--iface", "bad name!", "--duration", "1"], "bad interface name"),
    (["probe", "--mark", "zz"], "is not VALUE[/MASK]"),
    (["probe", "--dport", "70000"], "70000"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, monkeypatch):
    monkeypatch.setattr("cnitrace.cli.require_root", lambda: None)   # parsing comes before any kernel work
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

"""`cnitrace trace` option handling: bad input is one line and a usage exit, before any root check."""

import pytest
from click.testing import CliRunner

from cnitrace.cli import main


@pytest.mark.parametrize("args,msg", [
    (["trace", "--lab", "x"], "exactly one of --probe or --match"),
    (["trace", "--lab", "x", "--probe", "tcp:10.0.0.1:80", "--match", "tcp"], "exactly one of --probe or --match"),
    (["trace", "--lab", "x", "--probe", "icmp:10.0.0.1:80"], "PROTO:DST:PORT"),
    (["trace", "--probe", "tcp:10.0.0.1:80"], "--probe needs --lab"),
    (["trace", "--lab", "x", "--netns", "y", "--probe", "tcp:10.0.0.1:80"], "at most one of"),
    (["trace", "--netns", "bad/name", "--match", "tcp"], "--netns"),
    (["trace", "--netns", "n", "--match", "tcp port 99999"], "not a port"),
    (["trace", "--lab", "x", "--probe", "tcp:10.0.0.1:80", "--count", "0"], "--count"),
])
def test_bad_options_one_line(args, msg, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_lists_the_options():
    out = CliRunner().invoke(__import__("cnitrace.cli", fromlist=["cli"]).cli, ["trace", "--help"]).output
    for opt in ("--lab", "--iface", "--netns", "--probe", "--from-netns", "--match", "--count", "--json", "--pcap"):
        assert opt in out

"""`cnitrace profile` option rules for traffic toward a target: each bad combination is one clear
usage line and exit 2, refused before anything needs root or touches the node (no root)."""

from __future__ import annotations

import pytest

from cnitrace import cli
from cnitrace.core.errors import UsageError
from cnitrace.profile.config import ProfileConfig

SEL = {"ifaces": ("cali*",)}


@pytest.mark.parametrize("kw,why", [
    ({"target": "10.0.0.1"}, "--target needs --traffic"),
    ({"traffic": "stream"}, "--traffic needs --lab NAME or --target"),
    ({"lab": "lab", "target": "10.0.0.1", "traffic": "probe"}, "exclusive"),
    ({"from_netns": "client"}, "--from-netns needs --target"),
    ({"target": "10.0.0.1", "traffic": "http", "ports": "80"}, "--ports needs --traffic probe"),
    ({"ports": "80"}, "--ports needs --traffic probe"),
    ({"target": "10.0.0.1:0", "traffic": "rr"}, "port must be 1..65535"),
    ({"target": "10.0.0.1", "traffic": "probe", "ports": "1-2-3"}, "invalid --ports"),
    ({"target": "10.0.0.1", "traffic": "probe", "from_netns": "../etc"}, "invalid --from-netns"),
    ({"target": "10.0.0.1", "traffic": "stream", "duration": 600}, "at most 120 s"),
])
def test_bad_combinations_are_usage_errors(kw, why):
    with pytest.raises(UsageError) as e:
        ProfileConfig(**{**SEL, **kw}).validate()
    assert why in e.value.message


@pytest.mark.parametrize("kw", [
    {"target": "10.0.0.1", "traffic": "stream"},
    {"target": "10.0.0.1:8080", "traffic": "probe", "from_netns": "client", "ports": "80,udp/53"},
    {"target": "http://web:8080/health", "traffic": "http", "from_netns": "client"},
    {"target": "10.0.0.1", "traffic": "probe", "duration": 600},     # probes are bounded by count
    {"lab": "lab", "traffic": "probe"},
    {},
])
def test_good_combinations_pass(kw):
    ProfileConfig(**{**SEL, **kw}).validate()


@pytest.mark.parametrize("argv,why", [
    (["--target", "10.0.0.1"], "--target needs --traffic"),
    (["--traffic", "rr"], "--traffic needs --lab NAME or --target"),
    (["--traffic", "probe", "--target", "https://x/"], "only http://"),
])
def test_cli_refuses_with_one_line_and_exit_2(argv, why, capsys):
    assert cli.main(["profile", "--iface", "cali*", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err

"""The L7 proxy configurations: the study's policy (GET / only) rendered from packaged templates."""

from __future__ import annotations

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.lab.l7proxy import render_config


def test_nginx_config_allows_only_get_slash():
    conf = render_config("nginx", lab="t", listen_port=15001, upstream=("10.65.0.2", 8080), rundir="/run/cnitrace/labs/cnit-t-l7")
    assert "daemon off;" in conf and "listen 15001" in conf and "server 10.65.0.2:8080;" in conf
    exact = conf[conf.index("location = / {"):conf.index("location / {")]
    assert "limit_except GET" in exact and "deny all;" in exact and "proxy_pass http://cnit_server;" in exact
    assert "return 403;" in conf[conf.index("location / {"):]
    assert "access_log /run/cnitrace/labs/cnit-t-l7/access.log" in conf


def test_haproxy_config_denies_everything_but_get_slash():
    conf = render_config("haproxy", lab="t", listen_port=15001, upstream=("10.65.0.2", 8080), rundir="/tmp/cnit-x")
    assert "bind :15001" in conf and "server s0 10.65.0.2:8080" in conf
    assert "http-request deny deny_status 403 unless { method GET } { path / }" in conf
    assert "log stdout" in conf


@pytest.mark.parametrize("kw,msg", [
    ({"upstream": ("10.0.0.300", 80)}, "bad upstream address"), ({"listen_port": 70000}, "bad port"),
    ({"rundir": "relative/dir"}, "bad proxy run directory"), ({"rundir": "/tmp/x; evil"}, "bad proxy run directory"),
])
def test_bad_values_never_reach_a_config(kw, msg):
    args = {"lab": "t", "listen_port": 15001, "upstream": ("10.65.0.2", 8080), "rundir": "/tmp/cnit-x", **kw}
    with pytest.raises(UsageError, match=msg):
        render_config("nginx", **args)


def test_unknown_proxy():
    with pytest.raises(UsageError, match="unknown L7 proxy 'envoy'"):
        render_config("envoy", lab="t", listen_port=1, upstream=("10.0.0.1", 1), rundir="/tmp/cnit-x")

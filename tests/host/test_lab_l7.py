"""--l7: allowed HTTP is detoured through a real nginx/haproxy that allows only GET / (root)."""

from __future__ import annotations

import pytest

from cnitrace.lab import manager
from cnitrace.lab.datapath import read_packets
from cnitrace.lab.l7proxy import Proxy, access_log_lines
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import Runner

R = Runner()


def curl(netns: str, *args: str) -> tuple[int, str]:
    out = R.run(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", *args], netns=netns, check=False)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_l7_proxy_enforces_get_slash(proxy, unique_name):
    spec = LabSpec(name=unique_name(), datapath="calico", rules=100, l7=True, l7_proxy=proxy)
    lab = manager.up(spec)
    try:
        client, srv, port = lab.topo.clients[0], lab.topo.server.ip, lab.topo.allowed_port
        p = Proxy.from_json(lab.topo.extra["l7"])
        assert p.kind == proxy and p.pid > 0

        detour = lab.truth.allowed["tcp"]
        assert (detour.table, detour.chain) == ("nat", "cnit-L7-DETOUR")
        before = read_packets(R, detour)
        assert curl(client.netns, f"http://{srv}:{port}/") == (200, "cnitrace lab server\n")
        assert curl(client.netns, "-X", "POST", "-d", "x=1", f"http://{srv}:{port}/")[0] == 403
        assert curl(client.netns, f"http://{srv}:{port}/other")[0] == 403

        assert read_packets(R, detour) - before == 3      # nat sees each of the 3 connections once
        # The detour is real: the proxy logged all three requests, from the client's own address.
        lines = [l for l in access_log_lines(p) if client.ip in l]
        assert any("GET / " in l and " 200 " in l for l in lines), lines
        assert any("POST / " in l and " 403 " in l for l in lines), lines
        assert any("GET /other " in l and " 403 " in l for l in lines), lines
    finally:
        manager.down(spec.name)


def test_l7_is_refused_where_unsupported(unique_name):
    from cnitrace.core.errors import UsageError

    with pytest.raises(UsageError, match="--l7 is not supported by the kube-router"):
        manager.up(LabSpec(name=unique_name(), datapath="kube-router", l7=True))

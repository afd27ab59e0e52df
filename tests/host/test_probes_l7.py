"""Host tier: the L7 detour probe times real connections through a real proxy (haproxy).

Client pod A, a node running haproxy (HTTP mode), server pod B with an HTTP server. The
client makes N requests straight to B and N through the proxy; the probe (sock:
inet_sock_set_state, filtered to the three namespaces in the kernel) must see exactly those
connections in each role and namespace. Each proxied request's upstream connection (proxy ->
server) lies inside the client's connection to the proxy, so the client's request time
through the proxy exceeds the upstream one measured for the same requests: the difference is
the time the detour adds per request. (Against the direct requests it is compared only in the
printout: those ran at another moment, and the server's own time varies more than the detour.)
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cnitrace.probes.runtime import ProbeSet, netns_inode
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.session import Session
from tests.host.probes_path import build

pytestmark = pytest.mark.requires("tracepoints", "btf", "bcc")
N = 20
BODY = 3000

HAPROXY = """
global
    maxconn 64
defaults
    mode http
    option httpclose
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend cnit_fe
    bind 10.66.1.1:8080
    default_backend cnit_be
backend cnit_be
    server s1 10.66.2.2:80
"""

# The client closes as soon as it has the whole response (Content-Length): its connection's
# ESTABLISHED time is then the request/response time, whoever would have closed first.
CLIENT = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(b"GET /f HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    got = b""
    while b"\\r\\n\\r\\n" not in got:
        got += c.recv(65536)
    head, body = got.split(b"\\r\\n\\r\\n", 1)
    assert b" 200 " in head.split(b"\\r\\n")[0], head[:100]
    length = int([l for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < length:
        body += c.recv(65536)
    c.close()
"""


def _wait_port(ns: str, ip: str, port: int) -> None:
    probe = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"
    deadline = time.monotonic() + 10
    while R.run([sys.executable, "-c", probe], netns=ns, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"{ip}:{port} never listened"
        time.sleep(0.1)


@pytest.fixture
def detour(netns, tmp_path):
    path = build(netns)
    (tmp_path / "f").write_bytes(b"y" * BODY)
    (tmp_path / "haproxy.cfg").write_text(HAPROXY)
    procs = [subprocess.Popen(["ip", "netns", "exec", path.b, sys.executable, "-m", "http.server", "80",
                               "--bind", "10.66.2.2", "-d", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["ip", "netns", "exec", path.node, "haproxy", "-db", "-f",
                               str(tmp_path / "haproxy.cfg")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_port(path.a, "10.66.2.2", 80)
        _wait_port(path.a, "10.66.1.1", 8080)
        yield path
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


def test_l7_detour_time_per_request(detour):
    path = detour
    a, node, b = (netns_inode(n) for n in (path.a, path.node, path.b))
    with Session() as s:
        ps = ProbeSet(["l7_detour"], netns=[path.a, path.node, path.b], session=s)
        assert ps.start()["l7_detour"].backend == "tracepoint"
        ps.reset()   # the readiness probes above opened connections before we attached; be explicit
        R.run([sys.executable, "-c", CLIENT, "10.66.2.2", "80", str(N)], netns=path.a, timeout=60)
        R.run([sys.executable, "-c", CLIENT, "10.66.1.1", "8080", str(N)], netns=path.a, timeout=60)
        time.sleep(0.3)   # the last closes settle
        figs = {(f.map, f.key["netns"], f.key["role"], f.key["port"]): f.hist for f in ps.snapshot()}

    def count(m, ns, role, port):
        h = figs.get((m, ns, role, port))
        return h.count if h else 0

    # exactly the connections made, in each namespace and role
    assert count("l7_connect", a, "client", 80) == N and count("l7_connect", a, "client", 8080) == N
    assert count("l7_life", node, "server", 8080) == N          # the proxy accepted N
    assert count("l7_connect", node, "client", 80) == N         # and opened N upstream
    assert count("l7_life", b, "server", 80) == 2 * N           # direct + proxied
    assert not any(k[1] not in (a, node, b) for k in figs)      # nothing from other namespaces
    # bytes: the client received at least the body each time; the server sent it
    assert figs[("l7_bytes_in", a, "client", 80)].sum >= N * BODY
    assert figs[("l7_bytes_out", b, "server", 80)].sum >= 2 * N * BODY
    direct = figs[("l7_life", a, "client", 80)].mean
    proxied = figs[("l7_life", a, "client", 8080)].mean
    upstream = figs[("l7_life", node, "client", 80)].mean
    print(f"request time: direct {direct / 1e3:.0f} us, through the proxy {proxied / 1e3:.0f} us, "
          f"the proxy's upstream {upstream / 1e3:.0f} us: the detour adds {(proxied - upstream) / 1e3:.0f} us "
          f"per request")
    assert proxied > upstream

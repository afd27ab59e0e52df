"""`lab up --datapath cilium --l7`: a real Envoy behind Cilium's TPROXY redirect (root).

Ground truth is what the test sends: each request's verdict (200 from the server through Envoy,
403 "Access denied" from Envoy's RBAC filter) and Envoy's own counters must match it exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cnitrace.collectors.envoy import parse as envoy_parse
from cnitrace.collectors.envoy import source as envoy_source
from cnitrace.core.runner import Runner
from cnitrace.core.state import StateFile, cleanup, process_start_time
from cnitrace.lab import envoy, manager
from cnitrace.lab.l7proxy import Proxy
from cnitrace.lab.model import LabSpec
from cnitrace.profile.l7 import settled_lines

R = Runner()

# (method, path, expected status): GET / is the policy's allowed request, POST /cnit/r1 is rule 1
# of the N generated ones (the server answers 200 to anything, so a 403 can only be Envoy's).
REQUESTS = [("GET", "/", 200), ("GET", "/", 200), ("POST", "/", 403), ("GET", "/admin", 403),
            ("POST", "/cnit/r1", 200), ("GET", "/cnit/r1", 403), ("GET", "/", 200)]

SEND = """
import sys, urllib.request, urllib.error
url = sys.argv[1]
for spec in sys.argv[2:]:
    method, path = spec.split(" ", 1)
    req = urllib.request.Request(url + path, method=method, data=b"x=1" if method == "POST" else None)
    try:
        r = urllib.request.urlopen(req, timeout=3)
        print(r.status, repr(r.read()))
    except urllib.error.HTTPError as e:
        print(e.code, repr(e.read()))
"""


def send(lab, requests) -> list[tuple[int, str]]:
    url = f"http://{lab.topo.server.ip}:{lab.topo.allowed_port}"
    out = R.run([sys.executable, "-c", SEND, url, *(f"{m} {p}" for m, p, _ in requests)],
                netns=lab.topo.clients[0].netns, timeout=30)
    rows = [line.split(" ", 1) for line in out.stdout.splitlines()]
    return [(int(code), body) for code, body in rows]


def tproxy_packets(lab) -> int:
    out = R.run(["iptables-legacy-save", "-c", "-t", "mangle"], netns=lab.topo.node_netns).stdout
    line = next(l for l in out.splitlines() if "-j TPROXY" in l)
    return int(line[1:line.index("]")].split(":")[0])


def test_cilium_l7_runs_envoy_and_its_verdicts_and_statistics_match(unique_name, node_before_after):
    spec = LabSpec(name=unique_name(), datapath="cilium", rules=100, l7=True)
    lab = manager.up(spec)
    try:
        p = Proxy.from_json(lab.topo.extra["l7"])
        assert p.kind == "envoy" and p.http_rules == 100 and p.label("cilium") == "envoy"
        exe = os.readlink(f"/proc/{p.pid}/exe")
        assert os.path.basename(exe) == "envoy" and process_start_time(p.pid) == p.start_time

        results = send(lab, REQUESTS)
        assert [c for c, _ in results] == [c for _, _, c in REQUESTS]
        assert all(b == repr(b"cnitrace lab server\n") for c, b in results if c == 200)
        assert all(b == repr(b"Access denied\r\n") for c, b in results if c == 403)   # Cilium's Envoy reply
        assert tproxy_packets(lab) >= len(REQUESTS)          # every connection's SYN went through TPROXY

        allowed = sum(c == 200 for _, _, c in REQUESTS)
        denied = len(REQUESTS) - allowed
        s, warnings = envoy_source.read(p.admin_port, envoy.STAT_PREFIX, envoy.CLUSTER, netns=p.netns)
        assert not warnings
        assert (s.rbac_allowed, s.rbac_denied) == (allowed, denied)
        assert s.downstream_rq["2xx"] == allowed and s.downstream_rq["4xx"] == denied
        assert s.upstream_rq["2xx"] == allowed and sum(s.upstream_rq.values()) == allowed
        assert s.downstream_rq_time.count == len(REQUESTS) and s.upstream_rq_time.count == allowed

        recs, bad = envoy_parse.parse_access_log(settled_lines(p, 0, len(REQUESTS)))
        assert not bad and len(recs) == len(REQUESTS)
        assert [(r.method, r.path, r.code) for r in recs] == REQUESTS
        assert all(r.client.split(":")[0] == lab.topo.clients[0].ip for r in recs)
        for r in recs:    # allowed requests went to the original destination; denied ones nowhere
            assert (r.upstream == f"{lab.topo.server.ip}:{lab.topo.allowed_port}") == (r.code == 200)
            assert r.ds_us is not None and (r.us_us is not None) == (r.code == 200)
            assert r.us_us is None or r.us_us <= r.ds_us
    finally:
        manager.down(spec.name)
    assert process_start_time(p.pid) is None
    assert not os.path.exists(p.rundir)
    node_before_after()


def test_profile_shows_the_envoy_detour_in_parts(lab_factory):
    from cnitrace.profile.config import ProfileConfig
    from cnitrace.profile.run import run_profile
    from cnitrace.reports.document import Node

    lab = lab_factory("cilium", 100, l7=True)
    doc = run_profile(ProfileConfig(lab=lab.spec.name, traffic="http", duration=2.0))
    l7 = Node.from_json(doc["tree"]).find("stage", "l7_proxy")
    assert l7 is not None and l7.detail["proxy"] == "envoy"
    d = l7.detail["parts"]
    names = [p["name"] for p in d["parts"]]
    assert names[-3:-1] == ["proxy processing", "upstream wait"] and d["parts"][-1]["provenance"] == "derived"
    assert {p["provenance"] for p in d["parts"][:-1]} == {"measured"}
    assert all(p["ns"] >= 0 for p in d["parts"])
    # The parts explain the client's time: the derived remainder closes the sum (never negative).
    assert d["parts_sum_ns"] == pytest.approx(d["total_ns"], rel=1.5 / max(d["requests"], 1))
    assert d["requests"] > 0 and abs(d["proxied"] - d["requests"]) <= 1     # Envoy logged what ab sent
    # Envoy's and the probe's timings of the same requests fit inside the client's own (ab counts the
    # run by wall time over completed requests, so allow the one request it cut off).
    measured = sum(p["ns"] for p in d["parts"] if p["provenance"] == "measured")
    assert 0 < measured <= d["total_ns"] * (1 + 1.5 / max(d["requests"], 1))
    # Envoy's counters agree with the client: every request of the window passed RBAC, none denied.
    st = d["envoy_stats"]
    assert st["rbac_denied"] == 0 and st["rbac_allowed"] >= d["requests"]
    # Allowed requests that got no 2xx are the ones the main load (ab -c 100) left in flight when it stopped.
    conc = (doc["traffic"]["result"] or {}).get("metrics", {}).get("concurrency", 100)
    assert 0 <= st["rbac_allowed"] - st["downstream_rq"]["2xx"] <= conc
    if names[0] == "redirect + connection setup":       # the socket probe ran (tracepoint backend)
        assert 0 < d["parts"][0]["ns"] < d["total_ns"]
    # A 40 ms class stall is named only with the proxy's own evidence: >= 1/4 of upstream waits in the
    # delayed-ACK band puts the mean upstream wait at >= 9 ms; the fix named is the server's TCP_NODELAY.
    upstream = next(p["ns"] for p in d["parts"] if p["name"] == "upstream wait")
    if d["stall"] is not None:
        assert "proxy -> server leg" in d["stall"] and "TCP_NODELAY on the server's sockets" in d["stall"]
        assert upstream >= 0.25 * 36e6 and any("stall" in w for w in doc["warnings"])


UP = """
import sys
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
manager.up(LabSpec(name=sys.argv[1], datapath="cilium", rules=100, l7=True))
"""


def test_kill9_with_envoy_running_then_cleanup_leaves_node_identical(unique_name, node_before_after):
    name = unique_name()
    proc = subprocess.Popen([sys.executable, "-c", UP, name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    envoy_pid = None
    try:
        while envoy_pid is None:
            assert proc.poll() is None, "lab up ended before Envoy was recorded"
            assert time.monotonic() < deadline, "Envoy never started"
            rec = next((r for r in StateFile().live(manager.owner(name))
                        if r.kind == "process" and r.name == f"envoy:{name}"), None)
            envoy_pid = rec.data["pid"] if rec else None
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    if manager.meta_path(name).exists():      # it finished just before the kill: then `lab down` is the path
        manager.down(name)
    else:
        result = cleanup(StateFile(), manager.owner(name))     # what `cnitrace cleanup` does for this lab
        assert not result.failed, result.failed
    assert not StateFile().live(manager.owner(name))
    assert process_start_time(envoy_pid) is None
    node_before_after()

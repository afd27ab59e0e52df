"""Host tier: the antrea lab datapath on a private OVS (userspace datapath on this host).

Real traffic from the client pod's namespace (scapy-crafted UDP, a real HTTP request) and
the real OVS flow counters, found by the cookies the ground truth names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from cnitrace.collectors.ovs.parse import parse_dump_flows
from cnitrace.lab.datapaths import antrea_flows as af
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.core.state import StateFile, process_start_time

SEND_UDP = """
import sys
from scapy.all import IP, UDP, Raw, conf, send
from scapy.supersocket import L3RawSocket
conf.L3socket = L3RawSocket
src, dst, dport, count, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# one packet per source port: each is the first packet of its own connection. The source is
# explicit because the UDP checksum covers it (scapy's own route lookup can pick another).
send([IP(src=src, dst=dst)/UDP(sport=base + i, dport=dport)/Raw(b"cnit") for i in range(count)], verbose=0)
"""


def in_netns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=True)


def send_udp(pod, dst: str, dport: int, count: int, base: int) -> None:
    in_netns(pod.netns, sys.executable, "-c", SEND_UDP, pod.ip, dst, str(dport), str(count), str(base))


def udp_in(ns: str) -> int:
    """Udp InDatagrams of a namespace: what its sockets actually received."""
    lines = [l.split() for l in in_netns(ns, "cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Udp:")]
    return int(lines[1][lines[0].index("InDatagrams")])


def settle(lab) -> None:
    """Push datapath (megaflow) stats into the OpenFlow counters: a revalidator round, twice."""
    for _ in range(2):
        subprocess.run(["ovs-appctl", "-t", lab.topo.extra["ovs_ctl"], "revalidator/wait"], check=True,
                       capture_output=True, timeout=10)


def flow_packets(lab, ck: int) -> int:
    settle(lab)
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", lab.topo.extra["ovs_mgmt"],
                          f"cookie=0x{ck:x}/-1"], capture_output=True, text=True, check=True).stdout
    parsed = parse_dump_flows(out)
    assert not parsed.warnings and parsed.records, out
    return sum(f.n_packets for f in parsed.records)


def http_get(ns: str, url: str) -> str:
    code = ("import sys, urllib.request\n"
            "try:\n print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n"
            "except Exception as e:\n print(type(e).__name__)\n")
    return in_netns(ns, sys.executable, "-c", code, url).stdout.strip()


@pytest.fixture(params=[0, 100, 1000], ids=lambda n: f"N{n}")
def lab(request, unique_name):
    spec = LabSpec(name=unique_name(), datapath="antrea", rules=request.param)
    built = manager.up(spec)
    try:
        yield built
    finally:
        manager.down(spec.name)


def test_antrea_allowed_denied_counters_exact(lab):
    topo, truth = lab.topo, lab.truth
    client, server = topo.clients[0], topo.server
    # userspace datapath here (no openvswitch module); the kernel one where the module is (the microVM)
    assert topo.extra["datapath_type"] == ("system" if os.path.exists("/sys/module/openvswitch") else "netdev")
    allowed_udp = truth.allowed["udp"].cookie
    denied = truth.denied.cookie
    # Warm ARP so the counted packets are only ours.
    assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"

    a0, d0, rx0 = flow_packets(lab, allowed_udp), flow_packets(lab, denied), udp_in(server.netns)
    send_udp(client, server.ip, topo.allowed_port, 7, 20000)
    assert flow_packets(lab, allowed_udp) - a0 == 7
    assert flow_packets(lab, denied) - d0 == 0
    assert udp_in(server.netns) - rx0 == 7                 # allowed packets reached the server's socket

    rx1 = udp_in(server.netns)
    send_udp(client, server.ip, topo.denied_port, 5, 21000)
    assert flow_packets(lab, denied) - d0 == 5             # the default-deny flow dropped exactly these
    assert flow_packets(lab, allowed_udp) - a0 == 7
    assert udp_in(server.netns) - rx1 == 0                 # and nothing arrived


def test_antrea_policy_sees_only_first_packet_of_connection(lab):
    topo, truth = lab.topo, lab.truth
    client, server = topo.clients[0], topo.server
    rule = truth.allowed["tcp"].cookie
    est = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", topo.extra["ovs_mgmt"],
                          f"table={af.TABLE_ID['AntreaPolicyIngressRule']}"],
                         capture_output=True, text=True, check=True).stdout
    est_flow = [f for f in parse_dump_flows(est).records if "+est" in f.match]
    assert len(est_flow) == 1

    def est_packets() -> int:
        settle(lab)
        out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", topo.extra["ovs_mgmt"],
                              f"table={af.TABLE_ID['AntreaPolicyIngressRule']},{est_flow[0].match}"],
                             capture_output=True, text=True, check=True).stdout
        return sum(f.n_packets for f in parse_dump_flows(out).records)

    r0, e0 = flow_packets(lab, rule), est_packets()
    assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"
    assert flow_packets(lab, rule) - r0 == 1               # the SYN only
    assert est_packets() - e0 >= 4                         # handshake ACK, request, replies, FINs bypass it
    d0 = flow_packets(lab, truth.denied.cookie)
    assert http_get(client.netns, f"http://{server.ip}:{topo.denied_port}/") in ("URLError", "TimeoutError")
    assert flow_packets(lab, truth.denied.cookie) - d0 >= 1


def test_antrea_pipeline_tables_are_named_like_antrea(lab):
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--names", "dump-flows", lab.topo.extra["ovs_mgmt"]],
                         capture_output=True, text=True, check=True).stdout
    tables = {f.table for f in parse_dump_flows(out).records}
    assert {"Classifier", "SpoofGuard", "ConntrackZone", "ConntrackState", "EgressRule", "EgressDefaultRule",
            "IngressRule", "IngressDefaultRule", "L2ForwardingCalc", "Output"} <= tables
    rules = [f for f in parse_dump_flows(out).records if f.table == "IngressRule" and "conjunction(" in f.actions]
    # port ranges are conjunction service dimensions: one flow per port mask, growing with N
    n = lab.spec.rules
    assert len(rules) >= n + 2 + 1 + 1
    ports = json.loads(subprocess.run(
        ["ovs-vsctl", f"--db={lab.topo.extra['ovs_db']}", "--format=json", "--columns=name,ofport", "list",
         "Interface"], capture_output=True, text=True, check=True).stdout)["data"]
    by_name = dict((name, ofport) for name, ofport in ports)
    for pod in lab.topo.pods:
        assert by_name[pod.node_iface] == pod.ofport
        assert len(pod.node_iface) == 15 and pod.node_iface[8] == "-"


def test_antrea_down_leaves_node_identical(unique_name, node_before_after):
    """Private ovsdb-server/ovs-vswitchd, rundir, namespaces: all gone after `lab down`."""
    spec = LabSpec(name=unique_name(), datapath="antrea", rules=100)
    built = manager.up(spec)
    ovs = [r for r in StateFile().live(manager.owner(spec.name)) if r.kind == "process" and "ovs" in r.name]
    assert sorted(r.name.split("/")[1] for r in ovs) == ["ovs-vswitchd", "ovsdb-server"]
    rundir = built.topo.extra["ovs_rundir"]
    assert http_get(built.topo.clients[0].netns, f"http://{built.topo.server.ip}:{built.topo.allowed_port}/") == "200"
    manager.down(spec.name)
    assert not os.path.exists(rundir)
    assert all(process_start_time(r.data["pid"]) is None for r in ovs)
    node_before_after()


HTTP_METHODS = """
import sys, urllib.request, urllib.error
for method, path in (("GET", "/"), ("POST", "/"), ("GET", "/admin")):
    req = urllib.request.Request(sys.argv[1] + path, method=method, data=b"x" if method == "POST" else None)
    try:
        print(method, path, urllib.request.urlopen(req, timeout=3).status)
    except urllib.error.HTTPError as e:
        print(method, path, e.code)
"""


def l7_results(lab) -> list[str]:
    url = f"http://{lab.topo.server.ip}:{lab.topo.allowed_port}"
    return in_netns(lab.topo.clients[0].netns, sys.executable, "-c", HTTP_METHODS, url).stdout.splitlines()


def access_log(lab) -> list[str]:
    from cnitrace.lab.l7proxy import Proxy, access_log_lines
    return access_log_lines(Proxy.from_json(lab.topo.extra["l7"]))


def redirected(lab) -> int:
    """Packets the Output table sent to the TrafficControl target port (the L7 detour)."""
    settle(lab)
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", lab.topo.extra["ovs_mgmt"],
                          f"cookie=0x{af.cookie(af.CAT_TRAFFIC_CONTROL):x}/-1"], capture_output=True, text=True,
                         check=True).stdout
    return sum(f.n_packets for f in parse_dump_flows(out).records
               if f.table == af.TABLE_ID["Output"] and "output:NXM_NX_REG9[]" in f.actions)


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_antrea_l7_traffic_control_detour_through_proxy(unique_name, proxy):
    spec = LabSpec(name=unique_name(), datapath="antrea", rules=100, l7=True, l7_proxy=proxy)
    lab = manager.up(spec)
    try:
        rule = lab.truth.allowed["tcp"].cookie
        r0, t0 = flow_packets(lab, rule), redirected(lab)
        assert l7_results(lab) == ["GET / 200", "POST / 403", "GET /admin 403"]
        # the proxy's socket saw all three connections, from the client's own address
        log = "\n".join(access_log(lab))
        assert log.count(lab.topo.clients[0].ip) >= 3 and "GET / " in log and "POST / " in log
        # the K8s policy still admitted each connection's first packet before the redirect ...
        assert flow_packets(lab, rule) - r0 == 3
        # ... and every client packet of the three connections left OVS by the TrafficControl port
        assert redirected(lab) - t0 >= 3 * 3
    finally:
        manager.down(spec.name)


UP = """
import sys
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
manager.up(LabSpec(name=sys.argv[1], datapath=sys.argv[2], rules=int(sys.argv[3])))
"""


def kill9_midway(name: str, datapath: str, rules: int, midway) -> None:
    """Start `lab up` in a child, SIGKILL it once `midway(records)` holds, then clean up its owner."""
    import time

    from cnitrace.core.state import cleanup
    proc = subprocess.Popen([sys.executable, "-c", UP, name, datapath, str(rules)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not midway(StateFile().live(manager.owner(name))):
            assert proc.poll() is None, "lab up ended before it could be killed"
            assert time.monotonic() < deadline, "lab up never got midway"
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert not manager.meta_path(name).exists()         # killed before the lab was complete
    result = cleanup(StateFile(), manager.owner(name))  # what `cnitrace cleanup` does, for this lab only
    assert not result.failed, result.failed
    assert not StateFile().live(manager.owner(name))


def test_antrea_kill9_during_up_then_cleanup_leaves_node_identical(unique_name, node_before_after):
    name = unique_name()
    records = []

    def vswitchd_started(live) -> bool:
        records[:] = [r for r in live if r.kind == "process"]
        return any(r.name.endswith("/ovs-vswitchd") for r in live)

    kill9_midway(name, "antrea", 1000, vswitchd_started)
    assert all(process_start_time(r.data["pid"]) is None for r in records)   # orphaned daemons are gone
    assert not os.path.exists(f"/run/cnitrace/cnit-{name}-ovs")
    node_before_after()

"""`cnitrace profile --target HOST[:PORT] --from-netns CLIENT --traffic ...` on a path the test builds.

Topology (throwaway namespaces, tests/host/probes_path.py): client A --veth-- node --veth-- server B,
the node routing between them. The node's FORWARD chain jumps, for packets from A, to a policy chain
of port-range rules. The test — standing in for the user — runs the server in B (iperf3, sockperf,
an HTTP server); cnitrace only runs the client in A and profiles the node namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnitrace import cli
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import Node, validate
from cnitrace.traffic.generators import wait_listening
from tests.host.probes_path import R, Path, build

pytestmark = pytest.mark.requires("tracepoints", "btf", "bcc")

POLICY = "cnit-pol"
TARGET_PORT = 7000
RULES = [f"-A {POLICY} -p tcp -m tcp --dport 30000:30009 -j ACCEPT",
         f"-A {POLICY} -p udp -m multiport --dports 31000:31004,31010 -j ACCEPT",
         f"-A {POLICY} -p tcp -m tcp --dport {TARGET_PORT} -j ACCEPT",
         f"-A {POLICY} -j ACCEPT"]

# An HTTP server with a real listen backlog (http.server's default is 5), run by the test in B.
HTTP_SERVER = """
import http.server, sys
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 256
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"cnitrace target test\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def path(netns) -> Path:
    p = build(netns)
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             f":{POLICY} - [0:0]", f"-A FORWARD -i {p.node_a} -j {POLICY}", *RULES, "COMMIT", ""]
    R.run(["iptables-legacy-restore"], input="\n".join(lines), netns=p.node)
    return p


@pytest.fixture
def server(path):
    """Start a server in B (as the user would); stopped after the test (and killed with B)."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], port: int) -> None:
        procs.append(R.spawn(argv, netns=path.b))
        wait_listening(R, path.b, [port])

    def stop() -> None:
        """Before a test compares the node with how it found it: the server is the test's, not cnitrace's."""
        while procs:
            p = procs.pop()
            p.kill()
            p.wait(timeout=10)

    start.stop = stop
    yield start
    stop()


def _profile(path: Path, traffic: str, target: str, **kw) -> tuple[dict, Node]:
    doc = run_profile(ProfileConfig(netns=(path.node,), duration=1.0, traffic=traffic, calibrate=False,
                                    target=target, from_netns=path.a, **kw))
    assert validate(doc) == []
    assert doc["traffic"]["kind"] == traffic
    m = doc["traffic"]["result"]["metrics"]
    assert m["target"] == path.ip_b and m["client_netns"] == path.a
    return doc, Node.from_json(doc["tree"])


def _chain(root: Node, name: str) -> Node:
    found = [n for _, n in root.walk() if n.kind == "chain" and n.name == name]
    assert len(found) == 1, [(n.kind, n.name) for _, n in root.walk()]
    return found[0]


def _transit_packets(root: Node) -> int:
    rest = [n for _, n in root.walk() if n.name == "rest of stack"]
    assert rest, "no transit figure: the probe saw no packet enter from the client namespace"
    return rest[0].packets


def test_probe_traffic_covers_the_rules_port_ranges_counted_exactly(path, node_before_after):
    doc, root = _profile(path, "probe", f"{path.ip_b}:{TARGET_PORT}")
    sent = doc["traffic"]["result"]["metrics"]["sent"]
    total = sum(sent.values())
    # Both ends of every rule's port range, in the rule's protocol, and the target port in both.
    want = {"tcp/30000", "tcp/30009", "udp/31000", "udp/31004", "udp/31010", f"tcp/{TARGET_PORT}",
            f"udp/{TARGET_PORT}"}
    assert set(sent) == want and all(n == 2 for n in sent.values()), sent
    assert doc["traffic"]["packets_sent"] == total == root.packets
    # The node's policy chain counted every crafted packet, no more, no fewer; each range rule its own.
    assert _chain(root, POLICY).packets == total
    # Transit timed exactly the packets that entered from the client namespace (nothing was dropped).
    assert _transit_packets(root) == total
    assert doc["selection"]["interfaces"] and doc["lab"] is None
    node_before_after()


def test_stream_toward_the_users_iperf3(path, server, node_before_after):
    server(["iperf3", "-s", "-1", "-p", "5201"], 5201)
    doc, root = _profile(path, "stream", path.ip_b)            # no port: iperf3's default, 5201
    m = doc["traffic"]["result"]["metrics"]
    assert "error" not in m, m
    assert m["target_port"] == 5201 and m["bytes"] > 1_000_000 and m["bits_per_second"] > 1e7
    assert _transit_packets(root) > 100                        # the stream's segments crossed the node
    assert _chain(root, POLICY).packets > 100
    server.stop()
    node_before_after()


def test_http_toward_the_users_server(path, server, node_before_after):
    server([sys.executable, "-c", HTTP_SERVER, "8080"], 8080)
    doc, root = _profile(path, "http", f"http://{path.ip_b}:8080/")
    m = doc["traffic"]["result"]["metrics"]
    assert "error" not in m, m
    assert m["complete"] > 10 and m["failed"] == 0 and m["non_2xx"] == 0
    assert doc["traffic"]["packets_sent"] == m["complete"]
    # Every request is at least a SYN, the request and an ACK from the client through the node.
    assert _transit_packets(root) >= 3 * m["complete"]
    server.stop()
    node_before_after()


def test_cli_rr_toward_the_users_sockperf_with_step_lines(path, server, tmp_path, capsys):
    server(["sockperf", "server", "--tcp", "-p", "11111"], 11111)
    out = tmp_path / "p.json"
    rc = cli.main(["profile", "--netns", path.node, "--traffic", "rr", "--target", path.ip_b, "--from-netns",
                   path.a, "--duration", "1", "--no-calibrate", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    doc = json.loads(out.read_text())
    m = doc["traffic"]["result"]["metrics"]
    assert "error" not in m, m
    assert m["target_port"] == 11111 and m["received"] > 10 and m["p50_us"] > 0
    # stderr is not a terminal here: one line per step, in order.
    steps = [line[2:].split(":")[0] for line in err.splitlines() if line.startswith("· ")]
    assert steps[:2] == ["selection", "detect"] and "window" in steps and steps[-1] == "attribution", err
    assert steps.index("snapshots") < steps.index("probes attached") < steps.index("window")


def test_target_without_server_namespace_is_one_usage_line(path, capsys):
    rc = cli.main(["profile", "--netns", path.node, "--traffic", "stream", "--target", path.ip_b,
                   "--from-netns", "cnit-no-such-ns"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no such network namespace" in err[0], err


def test_stream_toward_a_target_with_no_server_says_so(path):
    doc, _ = _profile(path, "stream", f"{path.ip_b}:5299")     # nothing listens there
    m = doc["traffic"]["result"]["metrics"]
    assert "error" in m and "bytes" not in m
    assert any(w.startswith("traffic: iperf3:") for w in doc["warnings"]), doc["warnings"]

"""A throwaway forwarding path for the probe tests (host and vm tiers): pod A --veth-- node
--veth-- pod B in network namespaces, the node routing between them, N non-matching rules
in the node's FORWARD chain, and a bounded UDP sender. Subprocesses go through the Runner.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

from cnitrace.core.runner import DEFAULT_RUNNER as R

# Bounded sender: exactly COUNT datagrams, then exit (runs inside pod A's namespace). With a
# 4th argument "new", every datagram leaves from a new socket (a new source port): a new flow
# for conntrack, so a stateful policy evaluates its rules for each one.
SENDER = """
import socket, sys, time
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
new = sys.argv[4:] == ["new"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + 60
for i in range(count):
    if new:
        s.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x" * 64, (dst, port))
    if i % 50 == 49:
        time.sleep(0.002)   # let the node drain its backlog: no drops from queue overflow
    if time.monotonic() > deadline:
        sys.exit(1)
"""

PAYLOAD = 64
IP_UDP = 20 + 8


@dataclasses.dataclass
class Path:
    a: str
    node: str
    b: str
    node_a: str      # node-side interface towards A
    node_b: str
    ip_b: str


def build(new_netns: Callable[[], str]) -> Path:
    a, node, b = new_netns(), new_netns(), new_netns()
    p = Path(a, node, b, "cnpa0", "cnpb0", "10.66.2.2")
    for pod, side, sub in ((a, p.node_a, 1), (b, p.node_b, 2)):
        R.run(["ip", "-n", node, "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", pod])
        R.run(["ip", "-n", node, "addr", "add", f"10.66.{sub}.1/24", "dev", side])
        R.run(["ip", "-n", node, "link", "set", side, "up"])
        R.run(["ip", "-n", pod, "addr", "add", f"10.66.{sub}.2/24", "dev", "eth0"])
        R.run(["ip", "-n", pod, "link", "set", "eth0", "up"])
        R.run(["ip", "-n", pod, "route", "add", "default", "via", f"10.66.{sub}.1"])
    R.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=node)
    send(p, 7, 3)   # resolve neighbours before anything is measured
    return p


def send(path: Path, port: int, count: int) -> None:
    R.run([sys.executable, "-c", SENDER, path.ip_b, str(port), str(count)], netns=path.a, timeout=90)


def set_forward_rules(path: Path, n: int, extra: list[str] = (), tool: str = "iptables-legacy-restore") -> None:
    """N TCP rules that UDP never matches (each is evaluated for every packet), plus `extra`."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A FORWARD -p tcp --dport {10000 + i} -j ACCEPT" for i in range(n)]
    lines += list(extra) + ["COMMIT", ""]
    R.run([tool], input="\n".join(lines), netns=path.node)

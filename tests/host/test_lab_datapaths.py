"""Each netfilter datapath at N = 0, 100, 1000: allowed traffic passes, the denied port is dropped,
and the ground-truth counters move by exactly the scapy-crafted packets sent (root, real kernel)."""

from __future__ import annotations

import random
import sys

import pytest

from cnitrace.lab import manager
from cnitrace.lab.datapath import read_packets
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import Runner

R = Runner()

# Sent from inside the client pod's namespace with the venv's python. Every packet gets its own
# source port, so each is a NEW connection that walks the policy (established traffic never does).
SCAPY_SEND = r"""
import sys
from scapy.all import IP, TCP, UDP, Raw, conf, send
from scapy.supersocket import L3RawSocket
conf.verb = 0
conf.L3socket = L3RawSocket           # let the kernel route (via the pod's default gateway)
src, dst, sport = sys.argv[1], sys.argv[2], int(sys.argv[3])
pkts = []
for spec in sys.argv[4:]:
    proto, dport, count = spec.split(":")
    for _ in range(int(count)):
        l4 = TCP(sport=sport, dport=int(dport), flags="S") if proto == "tcp" else UDP(sport=sport, dport=int(dport)) / Raw(b"cnit")
        pkts.append(IP(src=src, dst=dst) / l4)   # explicit src: the L4 checksum depends on it
        sport += 1
send(pkts, inter=0.001)
print(len(pkts))
"""

UDP_ECHO = r"""
import socket, sys
dst, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait)
got = 0
for i in range(n):
    s.sendto(b"cnit%d" % i, (dst, port))
    try:
        s.recvfrom(100); got += 1
    except socket.timeout:
        pass
print(got)
"""


def scapy_send(pod, dst: str, *specs: str) -> int:
    sport = random.randint(20000, 50000)
    out = R.run([sys.executable, "-c", SCAPY_SEND, pod.ip, dst, str(sport), *specs], netns=pod.netns, timeout=60)
    return int(out.stdout.split()[-1])


def udp_echo(netns: str, dst: str, port: int, n: int, wait: float = 2.0) -> int:
    out = R.run([sys.executable, "-c", UDP_ECHO, dst, str(port), str(n), str(wait)], netns=netns, timeout=30)
    return int(out.stdout)


def http_get(netns: str, url: str, timeout: float = 3) -> tuple[int, str]:
    out = R.run(["curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", url], netns=netns, check=False)
    body, _, code = out.stdout.rpartition("\n")
    return out.returncode, body if out.returncode == 0 else ""


CASES = [(dp, backend, n)
         for dp, backend in (("calico", "legacy"), ("calico", "nft"), ("kube-router", None), ("weave", None),
                             ("nft", "legacy"), ("flannel", None))
         for n in (0, 100, 1000)]


def _backend(dp: str, backend: str | None, n: int) -> str:
    # kube-router, weave and flannel: alternate the iptables backend across N so both are exercised
    return backend or ("nft" if n == 100 else "legacy")


@pytest.mark.parametrize("dp,backend,n", CASES, ids=[f"{d}-{b or 'alt'}-{n}" for d, b, n in CASES])
def test_policy_enforced_and_counted_exactly(dp, backend, n, unique_name):
    spec = LabSpec(name=unique_name(), datapath=dp, rules=n, backend=_backend(dp, backend, n))
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        client, srv = topo.clients[0].netns, topo.server.ip
        allowed, denied = topo.allowed_port, topo.denied_port

        rc, body = http_get(client, f"http://{srv}:{allowed}/")
        assert rc == 0 and body.strip() == "cnitrace lab server", f"allowed HTTP failed (curl rc={rc})"
        assert udp_echo(client, srv, allowed, 3) == 3

        if truth.denied is None:   # flannel: no policy, the "denied" port is reachable too
            assert http_get(client, f"http://{srv}:{denied}/")[0] == 0
        else:
            assert http_get(client, f"http://{srv}:{denied}/", timeout=1)[0] != 0
            assert udp_echo(client, srv, denied, 1, wait=0.5) == 0

        refs = {"tcp": truth.allowed["tcp"], "udp": truth.allowed["udp"]}
        if truth.denied is not None:
            refs["denied"] = truth.denied
        before = {k: read_packets(R, ref) for k, ref in refs.items()}
        if truth.counts_replies:
            # The allowed counter sees every packet a pod sends, replies included: 5 echoes = 10 packets.
            assert udp_echo(client, srv, allowed, 5) == 5
            delta = read_packets(R, refs["udp"]) - before["udp"]
            assert delta == 10
            return
        sent = scapy_send(topo.clients[0], srv, f"tcp:{allowed}:7", f"udp:{allowed}:5", f"tcp:{denied}:4", f"udp:{denied}:3")
        assert sent == 19
        after = {k: read_packets(R, ref) for k, ref in refs.items()}
        assert after["tcp"] - before["tcp"] == 7
        assert after["udp"] - before["udp"] == 5
        assert after["denied"] - before["denied"] == 7
        assert truth.evaluations["tcp"] == ({"nft": 3, "weave": n + 1}.get(dp) or 2 * n + 2)
    finally:
        manager.down(spec.name)


def test_match_position_moves_the_allow_rule(unique_name):
    """--match-position 10 of 100: the allow rule is the 11th policy rule, and counts there."""
    spec = LabSpec(name=unique_name(), datapath="calico", rules=100, match_position=10)
    lab = manager.up(spec)
    try:
        ref = lab.truth.allowed["tcp"]
        assert ref.index == 21 and lab.truth.evaluations["tcp"] == 22
        before = read_packets(R, ref)
        assert scapy_send(lab.topo.clients[0], lab.topo.server.ip, f"tcp:{lab.topo.allowed_port}:6") == 6
        assert read_packets(R, ref) - before == 6
    finally:
        manager.down(spec.name)


def test_ipsets_live_in_the_node_netns_only(unique_name):
    """ipset is per network namespace (kernel >= 3.13), so the faithful KUBE-SRC-/KUBE-DST- names
    never reach, or collide with, the host's own sets."""
    spec = LabSpec(name=unique_name(), datapath="kube-router", rules=10)
    lab = manager.up(spec)
    try:
        inside = R.run(["ipset", "list", "-n"], netns=lab.topo.node_netns).stdout.split()
        host = R.run(["ipset", "list", "-n"]).stdout.split()
        ours = [s for s in inside if s.startswith(("KUBE-SRC-", "KUBE-DST-"))]
        assert len(ours) == 2 and not set(ours) & set(host)
    finally:
        manager.down(spec.name)

"""iptables collector on real kernels: both backends, N = 100 and 1,000 rules, crafted UDP over a veth pair.

Namespace A sends a bounded number of UDP packets to namespace B, whose INPUT jumps every
packet in the test port range into `cnit-C`, a chain of N DROP rules on distinct ports. Packets
to the port of rule k stop there (k evaluations); packets to an unused port fall through all N
and return to INPUT. The collector's before/after deltas must equal the packets sent on rule k,
and evaluations per packet for cnit-C must equal (M1·k + M2·N) / (M1 + M2) exactly.
"""

from __future__ import annotations

import functools
import subprocess
import time

import pytest

from cnitrace.collectors.iptables.graph import costs_by_table, ruleset_delta
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of

BASE_PORT = 20000
MISS_PORT = 29999          # inside the jumped range, matched by no rule of cnit-C
M_HIT, M_MISS = 40, 15     # packets sent (bounded)


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=60).stdout


def veth_pair(netns) -> tuple[str, str]:
    a, b = netns(), netns()
    sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
    sh("ip", "-n", a, "addr", "add", "10.231.0.1/30", "dev", "va")
    sh("ip", "-n", b, "addr", "add", "10.231.0.2/30", "dev", "vb")
    sh("ip", "-n", a, "link", "set", "va", "up")
    sh("ip", "-n", b, "link", "set", "vb", "up")
    return a, b


def program_chain(ns: str, backend: str, n: int) -> None:
    """N rules through one restore call (-n keeps the namespace's other tables)."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":cnit-C - [0:0]",
             f"-A INPUT -p udp -m udp --dport {BASE_PORT}:{MISS_PORT} -j cnit-C"]
    lines += [f"-A cnit-C -p udp -m udp --dport {BASE_PORT + i} -j DROP" for i in range(1, n + 1)]
    lines.append("COMMIT\n")
    subprocess.run(["ip", "netns", "exec", ns, f"iptables-{backend}-restore", "-n"], input="\n".join(lines),
                   check=True, text=True, timeout=60)
    # iptables-nft counts base-chain policy packets only once the policy was set explicitly.
    sh("ip", "netns", "exec", ns, f"iptables-{backend}", "-P", "INPUT", "ACCEPT")


def send_udp(ns: str, port: int, count: int) -> None:
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"[s.sendto(b'cnitrace',('10.231.0.2',{port})) for _ in range({count})]\n")
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], check=True, timeout=30)


def rule(snapshot_delta, chain: str, position: int):
    return next(r for r in snapshot_delta.rules if r.table == "filter" and r.chain == chain
                and r.position == position)


@pytest.mark.parametrize("backend", ["legacy", "nft"])
@pytest.mark.parametrize("n", [100, 1000])
def test_deltas_and_evaluations_per_packet_are_exact(netns, backend, n):
    a, b = veth_pair(netns)
    program_chain(b, backend, n)
    send_udp(a, BASE_PORT - 1, 1)     # outside the jumped range: resolves ARP before we measure
    time.sleep(0.2)
    col = IptablesCollector(netns=b, backends=[backend], families=["ipv4"])
    assert col.available(None)
    k = (3 * n) // 4 + 1
    before = col.snapshot()
    send_udp(a, BASE_PORT + k, M_HIT)
    send_udp(a, MISS_PORT, M_MISS)
    deadline = time.monotonic() + 5
    while True:  # packets cross the veth asynchronously; bounded wait until they all arrived
        after = col.snapshot()
        d, warnings = ruleset_delta(ruleset_of(before), ruleset_of(after))
        if rule(d, "INPUT", 1).packets >= M_HIT + M_MISS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert before.warnings == () and after.warnings == () and warnings == ()

    # Counter deltas: exactly the packets sent, on exactly the expected rule.
    assert rule(d, "INPUT", 1).packets == M_HIT + M_MISS
    assert rule(d, "cnit-C", k).packets == M_HIT
    assert sum(r.packets for r in d.rules if r.chain == "cnit-C") == M_HIT
    policy = next(c for c in d.chains if c.table == "filter" and c.name == "INPUT")
    assert policy.packets == M_MISS

    costs, notes = costs_by_table(d)
    c = costs[(backend, "ipv4", "filter", "cnit-C")]
    assert c.entering == M_HIT + M_MISS
    assert c.evaluations == M_HIT * k + M_MISS * n
    assert c.per_packet == pytest.approx((M_HIT * k + M_MISS * n) / (M_HIT + M_MISS), rel=0, abs=1e-9)
    assert c.fall_through == M_MISS and c.returned == M_MISS
    inp = costs[(backend, "ipv4", "filter", "INPUT")]
    assert inp.entering == M_HIT + M_MISS and inp.per_packet == 1.0
    assert inp.inclusive_per_packet == pytest.approx(1 + c.per_packet, abs=1e-9)


def send_udp6(ns: str, port: int, count: int) -> None:
    code = ("import socket\n"
            "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
            f"[s.sendto(b'cnitrace',('fd00:cafe::2',{port})) for _ in range({count})]\n")
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], check=True, timeout=30)


def veth_pair6(netns) -> tuple[str, str]:
    a, b = netns(), netns()
    sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
    sh("ip", "-n", a, "addr", "add", "fd00:cafe::1/64", "dev", "va", "nodad")
    sh("ip", "-n", b, "addr", "add", "fd00:cafe::2/64", "dev", "vb", "nodad")
    sh("ip", "-n", a, "link", "set", "va", "up")
    sh("ip", "-n", b, "link", "set", "vb", "up")
    return a, b


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_ipv6_chain_is_collected_and_modelled_exactly(netns, backend):
    """ip6tables: same chain and traffic over IPv6 (N = 100); the ipv4 tables stay untouched by it."""
    n = 100
    a, b = veth_pair6(netns)
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":cnit-C - [0:0]",
             f"-A INPUT -p udp -m udp --dport {BASE_PORT}:{MISS_PORT} -j cnit-C"]
    lines += [f"-A cnit-C -p udp -m udp --dport {BASE_PORT + i} -j DROP" for i in range(1, n + 1)]
    subprocess.run(["ip", "netns", "exec", b, f"ip6tables-{backend}-restore", "-n"],
                   input="\n".join([*lines, "COMMIT\n"]), check=True, text=True, timeout=60)
    sh("ip", "netns", "exec", b, f"ip6tables-{backend}", "-P", "INPUT", "ACCEPT")
    send6 = functools.partial(send_udp6, a)
    send6(BASE_PORT - 1, 1)   # neighbour discovery before measuring
    time.sleep(0.2)
    col = IptablesCollector(netns=b, backends=[backend])
    k = 37
    before = col.snapshot()
    send6(BASE_PORT + k, M_HIT)
    send6(MISS_PORT, M_MISS)
    deadline = time.monotonic() + 5
    while True:
        after = col.snapshot()
        d, warnings = ruleset_delta(ruleset_of(before), ruleset_of(after))
        jump = next(r for r in d.rules if r.family == "ipv6" and r.chain == "INPUT" and r.position == 1)
        if jump.packets >= M_HIT + M_MISS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert warnings == ()
    assert jump.packets == M_HIT + M_MISS
    hit = next(r for r in d.rules if r.family == "ipv6" and r.chain == "cnit-C" and r.position == k)
    assert hit.packets == M_HIT
    assert not any(r.family == "ipv4" and r.chain == "cnit-C" for r in d.rules)
    costs, _ = costs_by_table(d)
    c = costs[(backend, "ipv6", "filter", "cnit-C")]
    assert (c.entering, c.evaluations, c.fall_through) == (M_HIT + M_MISS, M_HIT * k + M_MISS * n, M_MISS)

"""Throwaway namespaces, veth links and bounded UDP traffic for the vm tier.

Why sockets are opened inside the namespaces from this process (pyroute2's
create_socket) rather than by spawning senders: the test knows exactly how many
datagrams were sent and received, so kernel-side counters can be asserted exactly.
"""

from __future__ import annotations

import dataclasses
import socket
import time

from pyroute2 import netns as pr_netns

from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from tests.support import netns as support
from tests.support.netns import unique


class Namespaces(support.Namespaces):
    """The shared namespace maker (tests.support.netns), with the vm tier's prefix."""

    def __init__(self, runner: Runner = DEFAULT_RUNNER):
        super().__init__("cnit-v", runner)


@dataclasses.dataclass(frozen=True)
class Link:
    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str


def veth_between(runner: Runner, ns_a: str, ns_b: str, subnet: int = 77) -> Link:
    """One veth pair, ends in ns_a and ns_b, addressed 10.<subnet>.0.1/24 and .2/24."""
    a, b = unique("cnva"), unique("cnvb")
    ip_a, ip_b = f"10.{subnet}.0.1", f"10.{subnet}.0.2"
    runner.run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])
    for ns, dev, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
        runner.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
        runner.run(["ip", "-n", ns, "link", "set", dev, "up"])
    return Link(ns_a, ns_b, ip_a, ip_b)


def udp_exchange(src_ns: str, dst_ns: str, dst_ip: str, port: int, count: int,
                 timeout: float = 10.0) -> int:
    """Send `count` datagrams src_ns -> dst_ip:port in dst_ns; return how many arrived (bounded)."""
    rx = pr_netns.create_socket(netns=dst_ns, family=socket.AF_INET, socket_type=socket.SOCK_DGRAM)
    tx = pr_netns.create_socket(netns=src_ns, family=socket.AF_INET, socket_type=socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst_ip, port))
        rx.settimeout(0.5)
        received = 0
        deadline = time.monotonic() + timeout
        for i in range(count):
            tx.sendto(f"cnitrace {i}".encode(), (dst_ip, port))
            # Wait for each one: the first waits for ARP, and none is dropped by a full queue.
            while time.monotonic() < deadline:
                try:
                    rx.recv(2048)
                except TimeoutError:
                    continue
                received += 1
                break
        return received

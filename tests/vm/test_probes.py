"""kprobes and fentry attach and count real packets in the Debian guest kernel.

The host kernel has neither (DESIGN.md), which is why this tier exists. Each test sends
a known number of UDP datagrams across a veth between two namespaces and asserts the
probe counted exactly those, filtered by a port handed to the C code as a -D cflag.
One compile serves both tests: bcc's clang is the slow part under TCG. The sk_buff
offsets come from the guest kernel's BTF (cnitrace.probes.btf), as in cnitrace's probes.
"""

from __future__ import annotations

import random

import pytest

from cnitrace.probes import btf
from cnitrace.probes.loader import load
from tests.vm.netlab import Namespaces, udp_exchange, veth_between

COUNT = 25
PORT = random.randint(20000, 60000)


@pytest.fixture(scope="module")
def link():
    """Two namespaces joined by a veth; made first so the veth module (kprobe target) is loaded."""
    ns = Namespaces()
    try:
        yield veth_between(ns.runner, ns.new(), ns.new())
    finally:
        ns.close()


@pytest.fixture(scope="module")
def bpf(link):
    kernel = btf.load()
    cflags = {"CNIT_PORT": PORT}
    for field in ("head", "network_header", "transport_header"):
        cflags[f"CNIT_SKB_{field.upper()}"] = kernel.offset("sk_buff", field)
    prog = load("udp_count.bpf.c", cflags, package="tests.vm", autoload=False)
    yield prog
    prog.cleanup()


def _hits(bpf, table: str) -> int:
    return sum(v.value for v in bpf[table.encode()].values())


def test_kprobe_counts_veth_packets(bpf, link):
    bpf.attach_kprobe(event=b"veth_xmit", fn_name=b"count_kprobe")
    try:
        assert bpf.num_open_kprobes() == 1
        assert _hits(bpf, "kprobe_hits") == 0
        assert udp_exchange(link.ns_a, link.ns_b, link.ip_b, PORT, COUNT) == COUNT
        assert _hits(bpf, "kprobe_hits") == COUNT
    finally:
        bpf.detach_kprobe(event=b"veth_xmit")


def test_fentry_counts_udp_deliveries(bpf, link):
    bpf.attach_kfunc(fn_name=b"kfunc__udp_rcv")
    assert _hits(bpf, "fentry_hits") == 0
    assert udp_exchange(link.ns_a, link.ns_b, link.ip_b, PORT, COUNT) == COUNT
    assert _hits(bpf, "fentry_hits") == COUNT
    # Traffic the filter must ignore: another port leaves the count unchanged.
    assert udp_exchange(link.ns_a, link.ns_b, link.ip_b, PORT + 1, 5) == 5
    assert _hits(bpf, "fentry_hits") == COUNT

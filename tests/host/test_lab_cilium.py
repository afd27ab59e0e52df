"""Host tier: the cilium lab datapath (tc BPF on lxc veths, pinned Cilium-layout maps).

Scapy-crafted UDP from the client pod, a real HTTP request, and the real counters of the
policy map entry (read back with bpftool from the pin) and of the policy-drop metric.
"""

from __future__ import annotations

import json
import os
import time
import subprocess

import pytest

from cnitrace.lab.datapaths import cilium_maps as cm
from cnitrace.lab import manager
from cnitrace.lab.datapaths.cilium import read_policy_entry
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import Runner
from tests.host.test_lab_antrea import access_log, http_get, l7_results, send_udp, udp_in


def entry_packets(lab, proto: str) -> int:
    ref = lab.truth.allowed[proto]
    key = cm.PolicyKey(ref.key["identity"], ref.key["dport"], ref.key["proto"], cm.INGRESS)
    entry = read_policy_entry(Runner(), ref.table, key)
    assert entry is not None, f"no policy entry {key} in {ref.table}"
    return entry.packets


def drops(lab) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "lookup", "pinned", lab.truth.denied.table, "key", "0", "0", "0", "0"],
                         capture_output=True, text=True, check=True).stdout
    value = bytes(int(x, 16) for x in json.loads(out)["value"])
    return int.from_bytes(value[:8], "little")


@pytest.fixture(params=[0, 100, 1000], ids=lambda n: f"N{n}")
def lab(request, unique_name):
    spec = LabSpec(name=unique_name(), datapath="cilium", rules=request.param)
    built = manager.up(spec)
    try:
        yield built
    finally:
        manager.down(spec.name)


@pytest.mark.requires("tc_bpf")
def test_cilium_allowed_denied_counters_exact(lab):
    topo = lab.topo
    client, server = topo.clients[0], topo.server
    # N port-range rules are N*4 entries (one per port) plus the two allow entries.
    assert topo.extra["policy_entries"] == 4 * lab.spec.rules + 2
    assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"   # warm ARP

    a0, d0, rx0 = entry_packets(lab, "udp"), drops(lab), udp_in(server.netns)
    send_udp(client, server.ip, topo.allowed_port, 7, 20000)
    assert entry_packets(lab, "udp") - a0 == 7
    assert drops(lab) - d0 == 0
    assert udp_in(server.netns) - rx0 == 7

    rx1 = udp_in(server.netns)
    send_udp(client, server.ip, topo.denied_port, 5, 21000)
    assert drops(lab) - d0 == 5
    assert entry_packets(lab, "udp") - a0 == 7
    assert udp_in(server.netns) - rx1 == 0


@pytest.mark.requires("tc_bpf")
def test_cilium_tcp_every_packet_to_endpoint_is_counted(lab):
    topo = lab.topo
    client, server = topo.clients[0], topo.server
    t0 = entry_packets(lab, "tcp")
    assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"
    # unlike Antrea, the lookup (and its counter) runs for every packet towards the endpoint:
    # SYN, ACK, request, ACKs, FIN -- at least 4
    assert entry_packets(lab, "tcp") - t0 >= 4
    d0 = drops(lab)
    assert http_get(client.netns, f"http://{server.ip}:{topo.denied_port}/") in ("URLError", "TimeoutError")
    assert drops(lab) - d0 >= 1


@pytest.mark.requires("tc_bpf")
def test_cilium_down_leaves_node_identical(unique_name, node_before_after):
    spec = LabSpec(name=unique_name(), datapath="cilium", rules=100)
    built = manager.up(spec)
    pins = built.topo.extra["pin_dir"]
    assert sorted(os.listdir(pins)) == sorted(["cil_from_container", "cil_to_container", "cilium_ipcache",
                                               "cilium_lxc", "cilium_metrics", "cilium_policy_01000"])
    tc = subprocess.run(["ip", "netns", "exec", built.topo.node_netns, "tc", "filter", "show", "dev",
                         built.topo.server.node_iface, "egress"], capture_output=True, text=True, check=True).stdout
    assert "cil_to_container" in tc and "direct-action" in tc
    manager.down(spec.name)
    assert not os.path.exists(pins)
    node_before_after()


@pytest.mark.requires("tc_bpf")
def test_cilium_l7_redirect_to_proxy_port_in_policy_entry(unique_name):
    """The cilium lab's proxy is Envoy whatever --l7-proxy says (that picks the other datapaths' stand-in)."""
    spec = LabSpec(name=unique_name(), datapath="cilium", rules=100, l7=True, l7_proxy="haproxy")
    lab = manager.up(spec)
    try:
        ref = lab.truth.allowed["tcp"]
        key = cm.PolicyKey(ref.key["identity"], ref.key["dport"], ref.key["proto"], cm.INGRESS)
        before = read_policy_entry(Runner(), ref.table, key)
        assert before.proxy_port == 15001                  # the entry names the proxy, as in Cilium
        assert lab.topo.extra["l7"]["kind"] == "envoy"
        assert l7_results(lab) == ["GET / 200", "POST / 403", "GET /admin 403"]
        deadline = time.monotonic() + 5       # the proxy flushes its access log on its own clock
        while (log := "\n".join(access_log(lab))).count(lab.topo.clients[0].ip) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.count(lab.topo.clients[0].ip) >= 3 and "POST / " in log
        after = read_policy_entry(Runner(), ref.table, key)
        assert after.packets - before.packets >= 3 * 4     # every client packet of 3 connections
    finally:
        manager.down(spec.name)


@pytest.mark.requires("tc_bpf")
def test_cilium_kill9_during_up_then_cleanup_leaves_node_identical(unique_name, node_before_after):
    from tests.host.test_lab_antrea import kill9_midway
    name = unique_name()
    kill9_midway(name, "cilium", 1000,
                 lambda live: any(r.kind == "path" and r.name == f"/sys/fs/bpf/cnit-{name}" for r in live))
    assert not os.path.exists(f"/sys/fs/bpf/cnit-{name}")
    node_before_after()

"""The OVS kernel datapath works in the guest: module, bridge, traffic, megaflows, hits.

The host has only OVS's userspace datapath (no openvswitch module), and Antrea/OVN nodes
run the kernel one, so the collector's megaflow and dpif parsers are checked here against
a real `datapath_type=system` bridge forwarding real packets between two namespaces.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cnitrace.collectors.ovs.parse import parse_dpctl_dump_flows, parse_dpif_show
from cnitrace.core.runner import DEFAULT_RUNNER
from tests.vm.netlab import udp_exchange, unique
from tests.vm.ovs_instance import OvsInstance

COUNT = 20
BRIDGE = "cnitbr"


@pytest.fixture
def ovs():
    DEFAULT_RUNNER.run(["modprobe", "openvswitch"])
    inst = OvsInstance()
    try:
        yield inst.start()
    finally:
        inst.stop()


def _port_into(runner, ovs: OvsInstance, ns: str, ip: str) -> str:
    """A veth whose one end is an OVS port in the root namespace and the other is in ns."""
    port, peer = unique("cnvp"), unique("cnvn")
    runner.run(["ip", "link", "add", port, "type", "veth", "peer", "name", peer, "netns", ns])
    runner.run(["ip", "link", "set", port, "up"])
    runner.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
    runner.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", peer])
    runner.run(["ip", "-n", ns, "link", "set", peer, "up"])
    ovs.vsctl("add-port", BRIDGE, port)
    return port


def test_kernel_datapath_forwards_and_counts(ovs, namespaces):
    runner = DEFAULT_RUNNER
    assert Path("/sys/module/openvswitch").is_dir()
    ovs.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=system")
    ns_a, ns_b = namespaces.new(), namespaces.new()
    try:
        pa = _port_into(runner, ovs, ns_a, "10.78.0.1")
        pb = _port_into(runner, ovs, ns_b, "10.78.0.2")
        dp_ports = {p.name: p for p in parse_dpif_show(ovs.appctl("dpif/show"))[1]}
        assert {BRIDGE, pa, pb} <= set(dp_ports)
        assert {dp_ports[p].datapath for p in (pa, pb)} == {"system@ovs-system"}

        port = random.randint(20000, 60000)
        assert udp_exchange(ns_a, ns_b, "10.78.0.2", port, COUNT) == COUNT

        flows = parse_dpctl_dump_flows(ovs.appctl("dpctl/dump-flows"))
        assert not flows.warnings
        # The kernel datapath numbers its ports; megaflows match on them.
        pa_no, pb_no = dp_ports[pa].dp_port, dp_ports[pb].dp_port
        ipv4_a_to_b = [f for f in flows.records
                       if f"in_port({pa_no})" in f.match and "eth_type(0x0800)" in f.match]
        assert ipv4_a_to_b, flows.records
        assert all(f.actions == str(pb_no) for f in ipv4_a_to_b)
        # The first datagram misses (upcall, executed by ovs-vswitchd); the rest hit the megaflow.
        assert sum(f.packets for f in ipv4_a_to_b) == COUNT - 1

        dps, _ = parse_dpif_show(ovs.appctl("dpif/show"))
        (dp,) = [d for d in dps.records if d.name == "system@ovs-system"]
        assert dp.hit >= COUNT - 1
        assert dp.missed >= 1
    finally:
        ovs.vsctl("--if-exists", "del-br", BRIDGE)

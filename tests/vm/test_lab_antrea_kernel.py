"""The antrea lab on the OVS *kernel* datapath (the microVM has the openvswitch module):
allowed and denied traffic hit the expected flows exactly, and the kernel datapath carries it."""

from __future__ import annotations

import subprocess
import uuid

from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from tests.host.test_lab_antrea import flow_packets, http_get, send_udp, udp_in


def test_antrea_lab_on_the_kernel_datapath_counts_exactly():
    spec = LabSpec(name=f"cnit{uuid.uuid4().hex[:4]}", datapath="antrea", rules=100)
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        assert topo.extra["datapath_type"] == "system"
        client, server = topo.clients[0], topo.server
        assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"
        a0, d0, rx0 = flow_packets(lab, truth.allowed["udp"].cookie), flow_packets(lab, truth.denied.cookie), \
            udp_in(server.netns)
        send_udp(client, server.ip, topo.allowed_port, 7, 20000)
        send_udp(client, server.ip, topo.denied_port, 5, 21000)
        assert flow_packets(lab, truth.allowed["udp"].cookie) - a0 == 7
        assert flow_packets(lab, truth.denied.cookie) - d0 == 5
        assert udp_in(server.netns) - rx0 == 7
        # The kernel datapath (not the userspace one) forwarded it: megaflows live in the kernel.
        dp = subprocess.run(["ovs-appctl", "-t", topo.extra["ovs_ctl"], "dpctl/show"],
                            capture_output=True, text=True, check=True).stdout
        assert "system@" in dp, dp
        flows = subprocess.run(["ovs-appctl", "-t", topo.extra["ovs_ctl"], "dpctl/dump-flows"],
                               capture_output=True, text=True, check=True).stdout
        assert "recirc" in flows or "ct(" in flows, flows[:2000]
    finally:
        manager.down(spec.name)

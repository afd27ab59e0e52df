"""Host tier: the probes on the lab's calico datapath (cnitrace.lab), N = 0 and N = 1,000 rules.

The lab builds Calico's iptables policy datapath in namespaces (cali-FORWARD -> endpoint
chains -> a policy chain with N filler port-range rules before the allow rule). UDP from a
client pod to the server's allowed port, each datagram from a new source port, is a new flow
that walks the whole policy (an established one would skip it: the lab's server answers, and
Calico accepts ESTABLISHED first), so the transit time through the node side grows with N; the
denied port is dropped by policy, and the drop probe must name it NETFILTER_DROP.
"""

from __future__ import annotations

import sys
import uuid

import pytest

from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.probes.runtime import Filter, ProbeSet
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.session import Session
from tests.host.probes_path import IP_UDP, PAYLOAD, SENDER

pytestmark = pytest.mark.requires("tracepoints", "btf", "bcc", "iptables")
ALLOWED, DENIED = 500, 100


def run_lab(rules: int) -> dict:
    name = f"cnitp{uuid.uuid4().hex[:6]}"
    lab = manager.up(LabSpec(name=name, datapath="calico", rules=rules))
    try:
        topo = lab.topo
        client = next(p for p in topo.pods if p.role == "client")
        server = next(p for p in topo.pods if p.role == "server")
        with Session() as s:
            ps = ProbeSet(["transit", "drops"], ifaces=[(topo.node_netns, client.node_iface)],
                          filt=Filter(proto=17, daddr=server.ip), session=s)
            ps.start()
            for port, n in ((topo.allowed_port, ALLOWED), (topo.denied_port, DENIED)):
                R.run([sys.executable, "-c", SENDER, server.ip, str(port), str(n), "new"], netns=client.netns,
                      timeout=60)
            figs = ps.snapshot()
        return {"figs": figs, "client": client, "server": server, "node": topo.node_netns}
    finally:
        manager.down(name)


def test_calico_lab_transit_grows_with_rules_and_drops_are_named():
    means = {}
    for rules in (0, 1000):
        got = run_lab(rules)
        transit = [f for f in got["figs"] if f.stage == "transit" and f.key["fate"] == "forwarded"]
        dropped = [f for f in got["figs"] if f.stage == "transit" and f.key["fate"] == "dropped"]
        drops = [f for f in got["figs"] if f.stage == "drops"]
        # the allowed datagrams were forwarded client -> server and each one was timed
        assert len(transit) == 1 and transit[0].hist.count == ALLOWED
        # the denied ones were timed from receive to their drop (transit covers every packet that entered)
        assert len(dropped) == 1 and dropped[0].hist.count == DENIED and dropped[0].key["ifindex_out"] == 0
        assert transit[0].key["iface_in"] == f"{got['node']}/{got['client'].node_iface}"
        assert transit[0].key["iface_out"] == f"{got['node']}/{got['server'].node_iface}"
        # the denied ones were dropped by the policy, in netfilter, on the client's interface
        assert [(d.key["reason_name"], d.hist.count) for d in drops] == [("NETFILTER_DROP", DENIED)]
        assert drops[0].key["symbol"].startswith("nf_hook_slow") and drops[0].hist.sum == DENIED * (IP_UDP + PAYLOAD)
        means[rules] = transit[0].hist.mean
    print(f"calico lab transit mean: N=0 {means[0]:.0f} ns, N=1000 {means[1000]:.0f} ns "
          f"({(means[1000] - means[0]) / 1000:.1f} ns per rule)")
    assert means[1000] > 1.5 * means[0]

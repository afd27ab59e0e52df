"""Collectors on the lab datapaths (N = 100 and 1,000): the delta on the lab's expected OVS flow
and Cilium policy-map entry equals the packets sent, and the BPF collector times the lab's tc programs."""

from __future__ import annotations

import pytest

from cnitrace.collectors.base import delta
from cnitrace.collectors.bpfprog.parse import BpfProg, ns_per_run
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.collectors.bpfprog.stats import stats_enabled
from cnitrace.collectors.cilium.parse import PolicyEntry
from cnitrace.collectors.cilium.source import CiliumCollector
from cnitrace.collectors.ovs.parse import OfFlow
from cnitrace.collectors.ovs.source import OvsCollector, OvsTarget
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.core.selection import resolve
from cnitrace.core.session import Session
from tests.host.test_lab_antrea import http_get, send_udp


def _lab(datapath: str, rules: int, unique_name):
    spec = LabSpec(name=unique_name(), datapath=datapath, rules=rules)
    return spec, manager.up(spec)


def _cookie_delta(before, after, cookie: int) -> int:
    d = delta(before, after)
    keys = [f.key for f in after.records if isinstance(f, OfFlow) and f.cookie == cookie]
    assert keys, f"no flow with cookie 0x{cookie:x}"
    return sum(d.get(k, "packets") for k in keys)


@pytest.mark.parametrize("rules", [100, 1000], ids=lambda n: f"N{n}")
def test_antrea_lab_flow_deltas(rules, unique_name):
    spec, lab = _lab("antrea", rules, unique_name)
    try:
        topo, truth = lab.topo, lab.truth
        col = OvsCollector(OvsTarget(rundir=topo.extra["ovs_rundir"], ctl=topo.extra["ovs_ctl"],
                                     netns=topo.node_netns))
        assert col.available(), col.available().reason
        client, server = topo.clients[0], topo.server
        assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"  # warm ARP
        s0 = col.snapshot()
        send_udp(client, server.ip, topo.allowed_port, 7, 20000)
        s1 = col.snapshot()
        assert _cookie_delta(s0, s1, truth.allowed["udp"].cookie) == 7
        assert _cookie_delta(s0, s1, truth.denied.cookie) == 0
        send_udp(client, server.ip, topo.denied_port, 5, 21000)
        s2 = col.snapshot()
        assert _cookie_delta(s1, s2, truth.denied.cookie) == 5
        assert _cookie_delta(s1, s2, truth.allowed["udp"].cookie) == 0
        names = s2.meta["table_names"]
        assert "IngressRule" in next(iter(names.values())).values()
        pods = {i["ofport"]: i["pod"] for i in s2.meta["interfaces"] if i["pod"]}
        assert pods[server.ofport] == "default/server-0"  # OVSDB external_ids: ofport -> pod
        peer = {i["ofport"]: i["peer_netns"] for i in s2.meta["interfaces"]}
        assert peer[server.ofport] == server.netns          # netlink: the port's veth peer -> pod netns
    finally:
        manager.down(spec.name)


@pytest.mark.requires("tc_bpf")
@pytest.mark.parametrize("rules", [100, 1000], ids=lambda n: f"N{n}")
def test_cilium_lab_policy_entry_and_program_deltas(rules, unique_name):
    spec, lab = _lab("cilium", rules, unique_name)
    try:
        topo, truth = lab.topo, lab.truth
        ref = truth.allowed["udp"]
        col = CiliumCollector(roots=[topo.extra["pin_dir"]])
        assert col.available(), col.available().reason
        client, server = topo.clients[0], topo.server
        assert http_get(client.netns, f"http://{server.ip}:{topo.allowed_port}/") == "200"
        bpf = BpfProgCollector(resolve([f"{topo.node_netns}/{server.node_iface}"], []))
        with Session() as s, stats_enabled(s):
            c0, b0 = col.snapshot(), bpf.snapshot()
            send_udp(client, server.ip, topo.allowed_port, 7, 20000)
            c1, b1 = col.snapshot(), bpf.snapshot()
        key = ("policy", str(topo.extra["endpoint_id"]), "ingress", ref.key["identity"], ref.key["proto"],
               ref.key["dport"])
        entries = [r for r in c1.records if isinstance(r, PolicyEntry)]
        assert key in {e.key for e in entries}
        assert delta(c0, c1).get(key, "packets") == 7
        assert c1.meta["entries_per_endpoint"][str(topo.extra["endpoint_id"])] == topo.extra["policy_entries"]
        # the server's lxc veth runs the lab's two tc programs, one per hook
        att = {(a["hook"], a["prog_name"][:15]) for a in b1.meta["attachments"]}
        assert att == {("ingress", "cil_from_contai"), ("egress", "cil_to_containe")}
        assert {a["target"] for a in b1.meta["attachments"]} == {server.node_iface}
        progs = {p.name: p for p in b1.records if isinstance(p, BpfProg)}
        assert set(progs) == {"cil_from_container", "cil_to_container"}
        d = delta(b0, b1)
        to = progs["cil_to_container"]
        runs = d.get(to.key, "run_cnt")
        # run counts are per program, and the lab attaches one pinned program to every pod's veth,
        # so other pods' packets count too: at least one run per packet delivered to the server
        assert runs >= 7
        assert (ns_per_run(runs, d.get(to.key, "run_time_ns")) or 0) > 0
    finally:
        manager.down(spec.name)

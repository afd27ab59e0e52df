"""`cnitrace analyze` of dumps saved from the lab's OVS and BPF datapaths agrees with the live tools
(root): the antrea lab's `ovs-ofctl dump-flows` with and without stats, and the cilium lab's
`bpftool prog show` / `bpftool net show` in text and JSON (what people paste and what cnitrace runs).

- OVS: per table the same flows as the live OVS collector; with stats, the packets of the lab's
  allowed and denied policy flows are the packets sent to them; without stats, no table claims a
  packet count (unknown, not zero).
- BPF: the same programs and attachments as the live BPF collector, from either form.
"""

from __future__ import annotations

import subprocess
from collections import Counter

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.dumps import read_text
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.collectors.ovs.parse import OfFlow
from cnitrace.collectors.ovs.source import OvsCollector, OvsTarget
from cnitrace.core.runner import Runner
from cnitrace.core.selection import resolve
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from tests.host.test_analyze_lab import mentions
from tests.host.test_lab_antrea import send_udp, settle
from tests.support.nodestate import settled_node_state

MODEL = costs.reference_model()


def _dump_flows(lab, *args: str) -> str:
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", *args,
                           lab.topo.extra["ovs_mgmt"]], capture_output=True, text=True, check=True, timeout=60).stdout


def test_analyze_of_saved_antrea_flows_matches_the_live_bridge(unique_name):
    spec = LabSpec(name=unique_name(), datapath="antrea", rules=200)
    before_state = mentions(settled_node_state(), spec.name)
    lab = manager.up(spec)
    try:
        topo, truth = lab.topo, lab.truth
        send_udp(topo.clients[0], topo.server.ip, topo.allowed_port, 7, 20000)
        send_udp(topo.clients[0], topo.server.ip, topo.denied_port, 5, 21000)
        settle(lab)
        with_stats, no_stats = _dump_flows(lab), _dump_flows(lab, "--no-stats")
        live = OvsCollector(OvsTarget(rundir=topo.extra["ovs_rundir"], ctl=topo.extra["ovs_ctl"],
                                      netns=topo.node_netns)).snapshot()
    finally:
        manager.down(spec.name)
    assert mentions(settled_node_state(), spec.name) == before_state == {}

    live_tables = Counter(str(f.table) for f in live.records if isinstance(f, OfFlow))
    cookies = {truth.allowed["udp"].cookie: 7, truth.denied.cookie: 5}
    for name, text in (("stats", with_stats), ("no-stats", no_stats)):
        a = analyze(read_text(text, name), MODEL)
        (flows,) = a.doc["ovs"]["flows"]
        assert {r["table"]: r["flows"] for r in flows["tables"]} == dict(live_tables), name
        recs = [r for d in a.dumps for r in d.records if isinstance(r, OfFlow)]
        if name == "stats":
            for ck, sent in cookies.items():
                assert sum(f.n_packets for f in recs if f.cookie == ck) == sent, hex(ck)
            assert all(r["packets"] is not None for r in flows["tables"])
        else:
            assert all(r["packets"] is None for r in flows["tables"])
            assert any("not zero" in w for w in a.doc["warnings"]), a.doc["warnings"]


def test_analyze_of_saved_cilium_bpftool_matches_the_live_programs(unique_name):
    spec = LabSpec(name=unique_name(), datapath="cilium", rules=200)
    before_state = mentions(settled_node_state(), spec.name)
    lab = manager.up(spec)
    try:
        r, node = Runner(), lab.topo.node_netns

        def dump(*argv: str) -> str:
            return r.run(["bpftool", *argv], netns=node, timeout=60).stdout

        saved = {"prog.txt": dump("prog", "show"), "prog.json": dump("-j", "prog", "show"),
                 "net.txt": dump("net", "show"), "net.json": dump("-j", "net", "show")}
        live = BpfProgCollector(selection=resolve((), (node,))).snapshot()
    finally:
        manager.down(spec.name)
    assert mentions(settled_node_state(), spec.name) == before_state == {}

    attachments = {(a["target"], a["prog_id"]) for a in live.meta["attachments"] if a.get("kind") in ("tc", "xdp")}
    assert attachments, live.meta
    attached_ids = {p for _, p in attachments}
    for form in ("txt", "json"):
        progs = analyze(read_text(saved[f"prog.{form}"], f"prog.{form}"), MODEL)
        ids = {r.id for d in progs.dumps for r in d.records}
        assert attached_ids <= ids, (form, attached_ids - ids)
        net = analyze(read_text(saved[f"net.{form}"], f"net.{form}"), MODEL)
        got = {(r.target, r.prog_id) for d in net.dumps for r in d.records if getattr(r, "kind", "") in ("tc", "xdp")}
        assert got == attachments, (form, got, attachments)

"""`cnitrace snapshot --netns NAME` and `--iface 'NAME/GLOB'` read that namespace's iptables, nftables,
conntrack and BPF attachments, not the host's: on the calico lab with 1,000 filler rules plus the tcp and udp
allow rules, each rendered as a MARK rule plus a RETURN rule as Felix does (2,004 `cali-pi-` rules in the lab's
node namespace, measured), and with a tc program attached to the node side of the server's veth. The host
namespace's snapshot has none of them, and the lab leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnitrace.core.state import StateFile
from cnitrace.lab import manager
from cnitrace.lab.datapaths.calico import policy_chain
from cnitrace.lab.model import LabSpec

RULES = 1000
PI_RULES = 2 * (RULES + 2)   # MARK + RETURN per policy rule (calico.py: _policy_rules); +2 allow rules
COLLECTORS = ("--only", "iptables", "--only", "nftables", "--only", "conntrack", "--only", "bpf")


def cnitrace(*args: str, timeout: float = 180) -> dict:
    r = subprocess.run([sys.executable, "-m", "cnitrace", "snapshot", *args, "--json"], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _attach(netns: str, iface: str, fn) -> None:
    """selftest.bpf.c's on_tc on `iface`'s clsact ingress inside `netns` (gone with the namespace)."""
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        idx = ipr.link_lookup(ifname=iface)[0]
        ipr.tc("add", "clsact", idx)
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name="on_tc", parent="ffff:fff2", classid=1,
               direct_action=True)


def _records(doc: dict, collector: str, chain: str) -> list[dict]:
    item = doc["collectors"][collector]
    assert item["available"], item["reason"]
    return [r for r in item["records"] if r["kind"] in ("Rule", "NftRule") and r["data"].get("chain") == chain]


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_snapshot_reads_the_selected_namespace_not_the_host(backend, tc_prog, unique_name):
    name = unique_name()
    lab = manager.up(LabSpec(name=name, datapath="calico", rules=RULES, backend=backend))
    try:
        node, server = lab.topo.node_netns, lab.topo.server
        chain = policy_chain(name)
        _attach(node, server.node_iface, tc_prog)

        for how in (("--netns", node), ("--iface", f"{node}/cali*")):
            doc = cnitrace(*how, *COLLECTORS)
            assert node in doc["selection"]["netns"] and "" not in doc["selection"]["netns"]
            pi = _records(doc, "iptables", chain)
            assert {r["data"]["netns"] for r in pi} == {node}
            # every cali-pi- rule the node namespace has, from the backend the lab used (the other is empty)
            assert len(pi) == PI_RULES and {r["data"]["backend"] for r in pi} == {backend}
            assert len([r for r in doc["collectors"]["iptables"]["records"] if r["kind"] == "Rule"
                        and r["data"]["chain"].startswith("cali-pi-")]) >= PI_RULES
            nft = _records(doc, "nftables", chain)
            # iptables-nft rules are nftables rules too: `nft -j list ruleset` in the node namespace sees them
            assert len(nft) == (PI_RULES if backend == "nft" else 0)
            assert {r["data"]["netns"] for r in nft} <= {node}
            ct = doc["collectors"]["conntrack"]
            assert ct["available"] and any(r["key"][1] == node for r in ct["records"])
            att = doc["collectors"]["bpf"]["meta"]["attachments"]
            assert {(a["netns"], a["target"], a["hook"], a["prog_name"]) for a in att} == {
                (node, server.node_iface, "ingress", "on_tc")}

        host = cnitrace(*COLLECTORS)
        assert host["selection"] is None
        for col in ("iptables", "nftables"):
            recs = host["collectors"][col]["records"]
            assert {r["data"]["netns"] for r in recs} <= {""}
            assert not [r for r in recs if r["data"].get("chain") == chain]
        assert not any(r["key"][1] == node for r in host["collectors"]["conntrack"]["records"])
        assert not any(a["target"] == server.node_iface for a in host["collectors"]["bpf"]["meta"]["attachments"])
    finally:
        manager.down(name)
    _nothing_left(name)


def _nothing_left(name: str) -> None:
    """Nothing of the lab is left: namespaces, state-file records, its description, veths, pins.
    (Scoped to the lab: node_before_after compares the whole node, which other sessions' tests
    change concurrently on a shared CI host.)"""
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not StateFile().live(manager.owner(name))
    assert not [r for r in StateFile().live() if name in r.name or name in r.owner]
    assert not manager.meta_path(name).exists()
    assert name not in subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not [p for p in Path("/sys/fs/bpf").rglob("*") if name in p.name]

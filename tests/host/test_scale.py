"""Host tier: `cnitrace snapshot` and `cnitrace profile` at 100,000 iptables rules and 100,000 OVS
flows complete, and count right (issue #16 item 5; times and memory are tests/bench/bench_scale.py's).

The rules are kube-proxy's nat ruleset for 20,000 services (tests/support/scale.py) restored with
--noflush into a calico lab's node namespace, beyond the lab's own 10,000-rule cap; the flows are
added in one bundle to an antrea lab's private br-int. Both die with their lab, and the node is
left as it was found.
"""

from __future__ import annotations

import json

import pytest

from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.lab import manager
from cnitrace.reports.document import validate
from tests.support import scale

SERVICES, FLOWS = 20_000, 100_000


def _profile(lab, tmp_path) -> dict:
    out = tmp_path / "profile.json"
    c = scale.run_child(scale.cnitrace("profile", "--lab", lab.spec.name, "--duration", "1", "--traffic", "probe",
                                       "--no-calibrate", "--json", str(out)), timeout=120)
    assert c.rc == 0, c.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert validate(doc) == []
    return doc


@pytest.mark.requires("iptables", "tp_btf", "btf", "bcc", "nf_bpf")
def test_100k_iptables_rules(lab_factory, node_before_after, tmp_path):
    lab = lab_factory("calico", 100)
    node = lab.topo.node_netns
    scale.load_kube_proxy(R, node, SERVICES)
    expected = scale.count_rules(R, node)
    assert expected >= scale.kube_proxy_rules(SERVICES) > 100_000

    snap = scale.run_child(scale.cnitrace("snapshot", "--netns", node, "--json"), timeout=120)
    assert snap.rc == 0, snap.stderr[-2000:]
    doc = json.loads(snap.stdout)
    assert scale.snapshot_records(doc, "iptables", "Rule") == expected   # every rule, exactly once
    print(f"snapshot of {expected:,} rules: {snap.wall_s:.2f} s wall, {snap.cpu_s:.2f} s CPU, "
          f"{snap.maxrss_mib:.0f} MiB peak")

    prof = _profile(lab, tmp_path)
    svc = scale.tree_chain(prof, "KUBE-SERVICES")
    # Probes to the server pod are NEW flows: each walks every service's rule in nat PREROUTING.
    assert svc is not None and svc["evaluations_per_packet"] == SERVICES, svc
    assert svc["packets"] > 0
    manager.down(lab.spec.name)
    node_before_after()


@pytest.mark.requires("ovs", "tp_btf", "btf", "bcc")
def test_100k_ovs_flows(lab_factory, node_before_after, tmp_path):
    lab = lab_factory("antrea", 100)
    extra = lab.topo.extra
    own = scale.ovs_flow_count(R, extra["ovs_mgmt"])
    scale.add_ovs_flows(R, extra["ovs_mgmt"], FLOWS)
    assert scale.ovs_flow_count(R, extra["ovs_mgmt"]) == own + FLOWS

    snap = scale.run_child(scale.cnitrace("snapshot", "--netns", lab.topo.node_netns, "--ovs-rundir",
                                          extra["ovs_rundir"], "--json"), timeout=120)
    assert snap.rc == 0, snap.stderr[-2000:]
    doc = json.loads(snap.stdout)
    assert scale.snapshot_records(doc, "ovs", "OfFlow") == own + FLOWS
    print(f"snapshot of {own + FLOWS:,} flows: {snap.wall_s:.2f} s wall, {snap.cpu_s:.2f} s CPU, "
          f"{snap.maxrss_mib:.0f} MiB peak")

    prof = _profile(lab, tmp_path)
    assert prof["backends"]["ovs_kernel"]["backend"] in ("counters", "none") or prof["backends"]["ovs_kernel"]
    assert prof["tree"]["packets"] > 0
    manager.down(lab.spec.name)
    node_before_after()

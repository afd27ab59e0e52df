"""vm tier: `cnitrace profile` where the kernel has kprobes, fentry and the OVS kernel datapath.

Calico lab (legacy iptables) at 100 and 1,000 policy rules, profiled with crafted probes once
with the ladder's choice (fentry for nf_hook_slow, kprobe for ipt_do_table, which lives in a
module) and once with kprobes pinned (--probe-backend netfilter=kprobe): the document's filter
table time is measured by that backend, counts exactly the packets sent, and grows with N.
Antrea lab on the kernel datapath: the OVS stage carries the datapath's measured time per
packet and its upcalls, many for first packets, few for established traffic.
"""

from __future__ import annotations

import time
import uuid

import pytest

from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import Node, validate
from cnitrace.core.runner import DEFAULT_RUNNER as R
from tests.conftest import host

pytestmark = pytest.mark.requires("kprobes", "fentry", "btf", "bcc")
# Each profile times only the stage under test (the others are pinned to counters): transit and
# drops have their own tests, and every probe compiled under TCG costs ~15 s.
NF_ONLY = (("transit", "counters"), ("drops", "counters"))
OVS_ONLY = (*NF_ONLY, ("netfilter", "counters"))


def _up(datapath: str, rules: int):
    return manager.up(LabSpec(name=f"cnit{uuid.uuid4().hex[:4]}", datapath=datapath, rules=rules))


@pytest.fixture(scope="module")
def calico_labs():
    labs = {}
    try:
        for n in (100, 1000):
            labs[n] = _up("calico", n)
            # Replies (SYN-ACKs, echoes, ICMP errors) would cross the node's FORWARD hook too: drop
            # them inside the server pod so the filter table sees exactly the probes sent.
            R.run(["iptables-legacy", "-A", "OUTPUT", "-j", "DROP"], netns=labs[n].topo.server.netns)
        yield labs
    finally:
        for lab in labs.values():
            manager.down(lab.spec.name)


def _profile(lab, traffic: str = "probe", force=()) -> tuple[dict, Node]:
    t0 = time.monotonic()
    # host(): the capability checks the `requires` mark already ran (~1 min under TCG), reused
    doc = run_profile(ProfileConfig(lab=lab.spec.name, traffic=traffic, duration=1.0, calibrate=False,
                                    force=tuple(force)), host=host())
    print(f"profile {lab.spec.datapath}/{lab.spec.rules} {traffic} {dict(force)}: {time.monotonic() - t0:.1f} s")
    assert validate(doc) == []
    return doc, Node.from_json(doc["tree"])


def _filter_time(doc: dict, root: Node, pin: str | None) -> float:
    """Check one calico profile's netfilter figures; return the filter table's measured ns per packet."""
    sent = doc["traffic"]["packets_sent"]
    assert sent and sent == sum(doc["traffic"]["result"]["metrics"]["sent"].values()) == root.packets
    nf = doc["backends"]["netfilter"]
    assert nf["backend"] == (pin or "fentry"), nf
    assert nf["hooks"]["nf_hook_slow"] == (pin or "fentry") and nf["hooks"]["ipt_do_table"] == "kprobe"
    assert nf["reason"].startswith("pinned with --probe-backend netfilter=kprobe") == bool(pin), nf
    assert doc["backends"]["transit"]["backend"] == "counters"
    filt = root.find("table", "filter (iptables-legacy, ipv4)")
    assert filt is not None and filt.provenance == "measured", [n.name for _, n in root.walk()]
    # ipt_do_table timed every probe exactly once (in FORWARD), and nothing else; the counters'
    # chains hang under the same table node
    assert filt.detail["backend"] == "kprobe" and filt.detail["calls"] == sent
    assert filt.children and filt.measured_ns and filt.p99_ns >= filt.p50_ns > 0
    # nf_hook_slow, timed by the ladder's fentry or the pinned kprobe, wraps the table's call
    fwd = root.find("stage", "netfilter").detail["hooks"]["ipv4 FORWARD"]
    assert fwd["backend"] == (pin or "fentry") and fwd["calls"] == sent
    assert fwd["mean_ns"] >= filt.measured_ns
    return filt.measured_ns


def test_calico_filter_table_time_grows_with_rules_ladder_and_kprobe_pinned(calico_labs):
    ns = {(n, "ladder"): _filter_time(*_profile(lab, force=NF_ONLY), None) for n, lab in calico_labs.items()}
    pinned = NF_ONLY + (("netfilter", "kprobe"),)
    ns[(1000, "kprobe")] = _filter_time(*_profile(calico_labs[1000], force=pinned), "kprobe")
    print("filter table per packet (measured): " + ", ".join(f"N={n} {how} {v:.0f} ns" for (n, how), v in ns.items()))
    assert ns[(1000, "ladder")] > 2 * ns[(100, "ladder")]
    # the pin moves nf_hook_slow to kprobes; the table is kprobed either way and still scales with N
    assert ns[(1000, "kprobe")] > 2 * ns[(100, "ladder")]


def test_antrea_kernel_datapath_time_and_upcalls():
    lab = _up("antrea", 100)
    try:
        assert lab.topo.extra["datapath_type"] == "system"
        first, froot = _profile(lab, "probe", OVS_ONLY)
        est, eroot = _profile(lab, "stream", OVS_ONLY)
    finally:
        manager.down(lab.spec.name)
    for doc in (first, est):
        ok = doc["backends"]["ovs_kernel"]
        assert ok["backend"] == "kprobe" and ok["hooks"]["ovs_dp_process_packet"] == "kprobe", ok
        assert ok["hooks"]["openvswitch:ovs_dp_upcall"] == "tracepoint"
    fovs, eovs = froot.find("stage", "ovs"), eroot.find("stage", "ovs")
    fk, ek = fovs.detail["kernel_datapath"], eovs.detail["kernel_datapath"]
    print("first packets:", fk, fovs.detail["upcalls"], fovs.detail["upcall_rate"])
    print("established:", ek, eovs.detail["upcalls"], eovs.detail["upcall_rate"])
    sent = first["traffic"]["packets_sent"]
    assert fk["visit_fn"] == "receive" and fk["visits"] >= sent
    assert fk["process"]["calls"] >= fk["visits"] and fk["process"]["mean_ns"] > 0
    assert fk["process"]["p99_ns"] >= fk["process"]["p50_ns"] > 0
    assert fovs.provenance == "measured" and fovs.measured_ns >= fk["ns_per_packet"] > 0
    assert fovs.detail["upcalls"] > 0
    assert ek["visits"] > 10 * fk["visits"]
    assert eovs.detail["upcall_rate"] < fovs.detail["upcall_rate"] / 5

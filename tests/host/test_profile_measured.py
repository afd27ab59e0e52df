"""The netfilter stage measured on a node without kprobes or fentry: BPF netfilter brackets time
the filter table, its chains share that measured time by the model's shares, and the model
(counters × this node's calibrated cost per rule shape) agrees with the measurement.

Checked against the lab's ground truth (root, real kernel, lab namespaces only). Agreement is
judged on the median of three profiles: one profile's 50 crafted probes vary by ±15 % on a
shared 2-core machine, and the bound (0.75..1.25, issue 12) is not loosened for that.
"""

from __future__ import annotations

import statistics

import pytest

from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import Node, validate

pytestmark = pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")

APPORTIONED = "measured (table), apportioned (chain)"


def profiles(lab, n: int = 3) -> list[tuple[dict, Node]]:
    out = []
    for _ in range(n):
        doc = run_profile(ProfileConfig(lab=lab.spec.name, traffic="probe", duration=1.0))
        assert validate(doc) == []
        out.append((doc, Node.from_json(doc["tree"])))
    return out


@pytest.mark.parametrize("datapath, backend", [("calico", "legacy"), ("calico", "nft"), ("kube-router", "legacy")])
def test_filter_table_is_measured_by_brackets_and_the_model_agrees(lab_factory, datapath, backend):
    lab = lab_factory(datapath, 1000, backend=backend)
    runs = profiles(lab)
    policy = lab.truth.allowed["tcp"].chain
    ratios = []
    for doc, root in runs:
        assert doc["backends"]["netfilter"]["backend"] == "nf_bpf"
        nf = root.find("stage", "netfilter")
        table = next(t for t in nf.children if t.kind == "table" and t.name.startswith("filter"))
        # measured by the brackets, with the model's own figure beside it
        assert table.detail["backend"] == "nf_bpf" and table.provenance == "both"
        assert table.measured_ns and table.modelled_ns
        # the brackets timed exactly the packets transit timed: both count every packet that
        # entered on the client's interface (the crafted probes and the client's RSTs)
        assert table.detail["calls"] == root.detail["transit_packets"]
        # the costliest chain is the lab's policy chain, and its figure is apportioned
        chains = [c for c in table.children if c.kind == "chain"]
        top = max(chains, key=lambda c: c.ns_per_packet or 0.0)
        assert top.name == policy and top.basis == APPORTIONED and top.provenance == "both"
        # the chains' shares add up to the measured table
        assert sum(c.ns_per_packet for c in chains) == pytest.approx(table.measured_ns, rel=1e-6)
        # measured stages stay within measured transit (same packets): no excess warning
        assert not root.detail.get("warning"), root.detail.get("warning")
        assert policy in doc["headline"] and APPORTIONED in doc["headline"]
        ratios.append(table.model_vs_measured)
    print(f"{datapath}/{backend} N=1000: modelled/measured " + ", ".join(f"{r:.2f}" for r in ratios))
    assert 0.75 <= statistics.median(ratios) <= 1.25, ratios

"""The probe ladder, table-driven: which backend each stage gets on a given host profile."""

from __future__ import annotations

import pytest

from cnitrace.core.capability import Check, Status
from cnitrace.probes.ladder import STAGES, choose, choose_all

OK, DEG, MISS = Status.OK, Status.DEGRADED, Status.MISSING


class Caps:
    """A replayed host: capability name -> status (anything unlisted is missing)."""

    def __init__(self, **status: Status):
        self.status = status

    def check(self, name: str) -> Check:
        s = self.status.get(name, MISS)
        return Check(name, s, f"{name} is {s.value}")


ALL = dict(root=OK, btf=OK, tracefs=OK, tracepoints=OK, raw_tracepoints=OK, kprobes=OK, fentry=OK,
           tc_bpf=OK, xdp=OK, bpf_stats=OK, iptables=OK, nft=OK, ovs=OK, ovs_kernel=OK, nf_bpf=OK)
CI_HOST = {**ALL, "tracefs": DEG, "kprobes": MISS, "fentry": MISS, "ovs": DEG, "ovs_kernel": MISS}
OLD_KERNEL = {**CI_HOST, "nf_bpf": MISS}     # no BPF netfilter programs (< 6.4) and no function probes
MICROVM = ALL
KPROBES_ONLY = {**ALL, "fentry": MISS}
NO_BTF = {**ALL, "btf": MISS}
NO_ROOT = {**ALL, "root": MISS}
NO_TOOLS = {**CI_HOST, "iptables": MISS, "nft": MISS, "ovs": MISS}

STAGE_ORDER = ("netfilter", "ovs_kernel", "tc_bpf", "transit", "drops", "l7_detour")


@pytest.mark.parametrize("profile, expected", [
    (CI_HOST, ("nf_bpf", "counters", "counters", "tracepoint", "tracepoint", "tracepoint")),
    (OLD_KERNEL, ("counters", "counters", "counters", "tracepoint", "tracepoint", "tracepoint")),
    (MICROVM, ("fentry", "fentry", "fentry", "tracepoint", "tracepoint", "tracepoint")),
    (KPROBES_ONLY, ("kprobe", "kprobe", "kprobe", "tracepoint", "tracepoint", "tracepoint")),
    (NO_BTF, ("counters", "tracepoint", "counters", "counters", "counters", "counters")),
    (NO_TOOLS, (None, None, "counters", "tracepoint", "tracepoint", "tracepoint")),
    (NO_ROOT, (None, None, None, None, None, None)),
], ids=["ci-host", "old-kernel", "microvm", "kprobes-only", "no-btf", "no-tools", "no-root"])
def test_backend_per_stage(profile, expected):
    choices = choose_all(Caps(**profile))
    assert tuple(c.stage for c in choices) == STAGE_ORDER
    assert tuple(c.backend for c in choices) == expected


def test_ci_host_netfilter_is_measured_by_brackets_and_says_why_not_better():
    c = choose("netfilter", Caps(**CI_HOST))
    assert c.backend == "nf_bpf"
    assert [(r.backend, r.blocked_by) for r in c.rejected] == [("fentry", ("fentry missing",)),
                                                               ("kprobe", ("kprobes missing",))]
    assert "ns per table/base chain" in c.measured and "ns per user chain/rule (apportioned)" in c.modelled


def test_old_kernel_netfilter_says_what_is_measured_and_why_not_better():
    c = choose("netfilter", Caps(**OLD_KERNEL))
    assert [(r.backend, r.blocked_by) for r in c.rejected] == [("fentry", ("fentry missing",)),
                                                               ("kprobe", ("kprobes missing",)),
                                                               ("nf_bpf", ("nf_bpf missing",))]
    assert c.measured == ("packets per rule and chain",)
    assert "ns per rule (sweep slope)" in c.modelled
    assert c.reason.startswith("rule counters") and "iptables, nft usable" in c.reason


def test_any_of_accepts_either_backend_and_degraded_is_usable():
    only_nft = {**OLD_KERNEL, "iptables": MISS}
    assert choose("netfilter", Caps(**only_nft)).backend == "counters"
    assert choose("ovs_kernel", Caps(**CI_HOST)).backend == "counters"       # ovs DEGRADED still counts flows


def test_no_backend_reason_lists_every_blocker():
    c = choose("netfilter", Caps(**{**NO_TOOLS, "nf_bpf": MISS}))
    assert c.backend is None
    assert c.reason == "no backend usable: fentry: fentry missing; kprobe: kprobes missing; " \
                       "nf_bpf: nf_bpf missing, iptables missing, nft missing; counters: iptables missing, nft missing"
    assert c.to_json()["rejected"][0] == {"backend": "fentry", "blocked_by": ["fentry missing"],
                                          "why": "fentry missing: fentry is missing"}
    no_root = choose("netfilter", Caps(**NO_ROOT))
    assert no_root.backend is None and no_root.reason == "root missing: root is missing"


def test_ladder_order_is_best_first_everywhere():
    rank = {"fentry": 0, "kprobe": 1, "nf_bpf": 2, "tracepoint": 2, "counters": 3}
    for stage in STAGES.values():
        ranks = [rank[r.backend] for r in stage.rungs]
        assert ranks == sorted(ranks) and stage.rungs[-1].backend == "counters", stage.name


def test_unknown_stage_is_an_error():
    with pytest.raises(KeyError):
        choose("bogus", Caps(**ALL))

"""Host tier: on a kernel with neither fentry nor kprobes (this CI host), the tc_bpf probe
attaches nothing, says why per program, and the profile keeps bpf_stats as the figure.

A real tc program (selftest.bpf.c's on_tc, loaded by bcc, with BTF) sits on a veth in a
throwaway namespace, so the plan is made for a program that could be traced elsewhere.
"""

from __future__ import annotations

import pytest

from cnitrace.core.capability import Host
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.probes.progtime import ProgTime, fd_ids
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import validate
from cnitrace.core.selection import resolve
from tests.host.test_collect_bpf import _veth_with_prog

pytestmark = pytest.mark.requires("tc_bpf", "bpf_stats", "bcc")


@pytest.fixture
def wired(netns, tc_prog):
    ns = netns()
    _veth_with_prog(ns, tc_prog)
    return ns


def _no_fentry_no_kprobes() -> None:
    host = Host()
    if host.usable("fentry") or host.usable("kprobes"):
        pytest.fail("this test describes a host without fentry and kprobes; the vm tier covers the others")


def test_plan_is_bpf_stats_only_with_the_reason(wired, tc_prog):
    _no_fentry_no_kprobes()
    atts = BpfProgCollector(resolve([], [wired]), maps=False).snapshot().meta["attachments"]
    pid = fd_ids(tc_prog.fd)["prog_id"]
    with ProgTime(atts) as pt:
        plan = pt.plan
        assert plan.backend == "counters" and plan.signal == "modelled"
        assert plan.fentry == () and plan.classify == ()
        [(prog, why)] = plan.stats_only
        assert prog == pid
        assert why.startswith("fentry: fentry missing") and "kprobe: kprobes missing" in why
        assert plan.reason.startswith(f"bpf_stats only for on_tc (id {pid}): fentry: fentry missing")
        assert pt.snapshot() == []
        assert pt.kernel_ids() == {"prog": [], "map": [], "link": []}   # nothing loaded, nothing held
        assert pt.bpf is None


def test_profile_reports_bpf_stats_only(wired):
    _no_fentry_no_kprobes()
    doc = run_profile(ProfileConfig(netns=(wired,), duration=0.5, calibrate=False))
    assert validate(doc) == []
    tc = doc["backends"]["tc_bpf"]
    assert tc["backend"] == "counters"
    assert tc["reason"].startswith("bpf_stats only for on_tc (id ")
    assert "fentry missing" in tc["reason"] and "kprobes missing" in tc["reason"]
    assert tc["signals"]["modelled"] == ["per-packet distribution"]

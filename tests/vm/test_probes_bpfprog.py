"""vm tier: the tc_bpf stage times a tc BPF program itself (fentry/fexit on the program) and,
with fentry forced off, its interface's tc classify path (kprobe on tcf_classify).

Only the microVM's kernel has fentry and kprobes. A tc program with BTF (selftest.bpf.c's
on_tc, loaded by bcc) sits on a veth's clsact ingress in a throwaway namespace; a known number
of datagrams crosses it. bpf_stats (BPF_ENABLE_STATS) counts the same runs, so each figure is
checked against it: the counts exactly, the times by how the intervals nest — fentry's interval
lies inside the one bpf_stats times (which includes the trampoline), and bpf_stats' lies inside
tcf_classify's. After close, no tracing program, link or map of ours is left.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.collectors.bpfprog.stats import stats_enabled
from cnitrace.attribution.datapath import bpf_programs
from cnitrace.probes.progtime import ProgTime, fd_ids, program_label
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import Node, validate
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.selection import resolve
from cnitrace.core.session import Interrupted, Session
from tests.host.test_collect_bpf import _send, _veth_with_prog

pytestmark = pytest.mark.requires("fentry", "kprobes", "btf", "bcc", "bpf_stats")
N = 60


@pytest.fixture
def wired(namespaces, tc_prog):
    ns = namespaces.new()
    _veth_with_prog(ns, tc_prog)
    return ns


def live(kind: str) -> list[dict]:
    return json.loads(R.run(["bpftool", kind, "list", "-j"]).stdout or "[]")


def gone(ids: dict[str, list[int]], within: float = 15.0) -> bool:
    """The kernel frees programs, links and maps asynchronously after their last fd closes."""
    deadline = time.monotonic() + within
    while True:
        left = {k: set(v) & {o["id"] for o in live(k)} for k, v in ids.items()}
        if not any(left.values()):
            return True
        if time.monotonic() > deadline:
            print("left behind:", left)
            return False
        time.sleep(0.2)


def measure(ns: str, force: str | None):
    col = BpfProgCollector(resolve([], [ns]), maps=False)
    with Session() as s, stats_enabled(s):
        base0 = col.snapshot()
        _send(ns, N)                     # untraced: what bpf_stats says the program costs alone
        before = col.snapshot()
        pt = ProgTime(before.meta["attachments"], force=force, session=s)
        plan = pt.start()
        ids = pt.kernel_ids()
        links = [l for l in live("link") if l["id"] in ids["link"]]
        _send(ns, N)
        figs = pt.snapshot()
        after = col.snapshot()
    stats = bpf_programs(before, after)
    [untraced] = bpf_programs(base0, before)
    print(plan.reason, [(f.key, f.hist.count, f.hist.mean) for f in figs],
          [(p.name, p.runs, p.ns_per_run) for p in stats], f"untraced {untraced.ns_per_run:.0f} ns/run",
          f"attach {pt.attach_seconds:.2f} s")
    return plan, ids, links, figs, stats, untraced


def test_fentry_times_every_run_of_the_program(wired, tc_prog):
    target = fd_ids(tc_prog.fd)["prog_id"]
    plan, ids, links, figs, stats, untraced = measure(wired, None)
    assert plan.backend == "fentry" and plan.fentry == (target,), plan.reason
    # one fentry and one fexit program, each linked to the tc program
    assert len(ids["prog"]) == 2 and len(ids["link"]) == 2
    assert {l["prog_id"] for l in links} == set(ids["prog"])
    assert {l.get("attach_type") for l in links} == {"trace_fentry", "trace_fexit"}
    assert {l.get("target_obj_id", target) for l in links} == {target}
    [fig] = figs
    [st] = stats
    assert fig.backend == "fentry" and fig.key["prog_id"] == target and fig.key["missed"] == 0
    assert st.name == program_label(target, "on_tc", "sched_cls")
    assert fig.hist.count == st.runs == N            # every run, nothing else
    assert fig.hist.mean > 0 and fig.hist.p99 >= fig.hist.p50 > 0
    # fentry's interval nests inside bpf_stats' (which also times the trampoline)
    assert fig.hist.sum <= st.runs * st.ns_per_run
    # ... and contains the program's own run, which bpf_stats timed untraced before attaching
    assert fig.hist.mean >= untraced.ns_per_run / 3
    assert gone(ids)


def test_kprobe_on_the_tc_classify_path_when_fentry_is_off(wired, tc_prog):
    plan, ids, links, figs, stats, _ = measure(wired, "kprobe")
    assert plan.backend == "kprobe" and plan.fentry == () and plan.classify == ((wired, "cnitvb"),)
    assert "forced to kprobe" in plan.reason
    [fig] = figs
    [st] = stats
    assert fig.backend == "kprobe" and fig.hook == "tcf_classify" and fig.key["iface"] == f"{wired}/cnitvb"
    assert fig.hist.count == st.runs == N            # one classify per packet on that hook
    # the program runs inside tcf_classify: its bpf_stats time nests in the classify time
    assert fig.hist.sum >= st.runs * st.ns_per_run > 0
    assert len(ids["prog"]) == 2 and not ids["link"]   # bcc's kprobe and kretprobe (perf events)
    assert gone(ids)


def test_sigint_detaches(wired):
    col = BpfProgCollector(resolve([], [wired]), maps=False)
    atts = col.snapshot().meta["attachments"]
    ids = {}
    with pytest.raises(Interrupted):
        with Session() as s:
            pt = ProgTime(atts, session=s)
            assert pt.start().backend == "fentry"
            ids = pt.kernel_ids()
            assert set(ids["link"]) <= {l["id"] for l in live("link")}
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)    # the handler raises Interrupted here
    assert len(ids["link"]) == 2 and gone(ids)


def test_profile_puts_fentry_beside_bpf_stats(wired, tc_prog):
    """The whole profile on the namespace: tc_bpf attached for the window only, its figure on the
    program's node next to bpf_stats; packets are sent once the window has started."""
    sender = threading.Thread(target=_send, args=(wired, N))

    def say(msg: str) -> None:
        if msg.startswith("window:"):
            sender.start()

    others = tuple((s, "counters") for s in ("transit", "drops", "netfilter"))   # this test is about tc_bpf
    doc = run_profile(ProfileConfig(netns=(wired,), duration=30, calibrate=False, force=others), say=say)
    sender.join(60)
    assert validate(doc) == []
    target = fd_ids(tc_prog.fd)["prog_id"]
    tc = doc["backends"]["tc_bpf"]
    assert tc["backend"] == "fentry" and tc["reason"] == f"fentry/fexit on on_tc (id {target})"
    node = Node.from_json(doc["tree"]).find("program", program_label(target, "on_tc", "sched_cls"))
    print(node.detail)
    assert node.packets == N and node.detail["source"] == "fentry"
    assert node.detail["bpf_stats"]["runs"] == N
    assert 0 < node.detail["ns_per_run"] <= node.detail["bpf_stats"]["ns_per_run"]
    assert node.detail["fentry_vs_bpf_stats"] == node.detail["ns_per_run"] / node.detail["bpf_stats"]["ns_per_run"]

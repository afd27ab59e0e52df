"""A CNI agent resyncs while cnitrace profiles (issue #16 item 2): Felix/kube-proxy replace a chain with
`iptables-restore --noflush` (counters restart), an OVS agent re-adds its flows (counters and duration
restart), Cilium replaces a tc program (new id). A resync loop does that to a lab every 200 ms during
the profile window; the report must name each changed object, mark the figures that depended on it,
keep every figure within bounds, still report what was measured, and leave the node as found.

Root, real kernel, lab namespaces only. Each loop is bounded in count and time.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from cnitrace.lab import manager
from cnitrace.lab.datapaths import antrea, cilium
from cnitrace.lab.datapaths.antrea_flows import TABLE_ID
from cnitrace.lab.datapaths.calico import policy_chain
from cnitrace.probes import loader
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import CHANGED, Node, validate
from cnitrace.sweep import run as sweep
from cnitrace.sweep.model import make_config, points
from cnitrace.traffic import generators as traffic

RESYNC_S = 0.2
MAX_RESYNCS = 150
MAX_SECONDS = 60.0
WINDOW_START = "window:"
WINDOW_END = "snapshots: every collector's counters after"


class Resync:
    """`step(i)` every RESYNC_S in a thread, bounded in count and time. With `gate`, it waits for the
    profile's window to start and stops before its after snapshot (the profile's `say` lines mark both),
    so every step happens inside the window."""

    def __init__(self, step, gate: bool = True):
        self.step, self.count, self.errors = step, 0, []
        self.go, self.done = threading.Event(), threading.Event()
        if not gate:
            self.go.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if not self.go.wait(MAX_SECONDS):
            return
        deadline = time.monotonic() + MAX_SECONDS
        while not self.done.is_set() and self.count < MAX_RESYNCS and time.monotonic() < deadline:
            try:
                self.step(self.count)
            except subprocess.CalledProcessError as exc:
                self.errors.append(exc.stderr or str(exc))
                return
            self.count += 1
            self.done.wait(RESYNC_S)

    def say(self, msg: str) -> None:
        if msg.startswith(WINDOW_START):
            self.go.set()
        elif msg.startswith(WINDOW_END):
            self.stop()

    def __enter__(self) -> "Resync":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.go.set()
        self.thread.join(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()
        assert not self.errors, self.errors[0]
        assert self.count >= 1, "the resync loop never ran inside the window"


def run(argv: list[str], **kw) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kw).stdout


def profile(lab, resync: Resync) -> tuple[dict, Node]:
    with resync:
        doc = run_profile(ProfileConfig(lab=lab.spec.name, traffic="probe", duration=1.0), say=resync.say)
    assert validate(doc) == []
    return doc, Node.from_json(doc["tree"])


def rule_counts(netns: str, backend: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in run(["ip", "netns", "exec", netns, f"iptables-{backend}-save"]).splitlines():
        if line.startswith("-A "):
            counts[line.split()[1]] = counts.get(line.split()[1], 0) + 1
    return counts


def assert_within_bounds(doc: dict, root: Node, rules: dict[str, int] | None = None) -> None:
    """No negative figure, no share above 100 %, no chain entered by more packets than crossed its
    namespace, no chain with more evaluations per packet than it holds rules."""
    crossed = max(doc["changes"]["packets_crossed"].values(), default=None)
    for _, n in root.walk():
        for f in ("ns_per_packet", "measured_ns", "modelled_ns", "apportioned_ns", "evaluations_per_packet"):
            assert (getattr(n, f) or 0.0) >= 0.0, (n.kind, n.name, f, getattr(n, f))
        assert n.packets >= 0 and (n.share is None or 0.0 <= n.share <= 1.0), (n.name, n.packets, n.share)
        if n.kind == "chain":
            assert crossed is not None and n.packets <= crossed, (n.name, n.packets, crossed)
            if rules is not None and n.evaluations_per_packet is not None:
                assert n.evaluations_per_packet <= rules.get(n.name, 0), (n.name, n.evaluations_per_packet)


def changed(doc: dict, kind: str) -> list[dict]:
    return [o for o in doc["changes"]["objects"] if o["kind"] == kind]


@pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")
def test_a_policy_chain_replaced_every_200_ms_is_named_and_its_figure_marked(lab_factory, node_before_after):
    lab = lab_factory("calico", 100)
    ns, chain = lab.topo.node_netns, policy_chain(lab.spec.name)
    rules = [line for line in run(["ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "filter"]).splitlines()
             if line.startswith(f"-A {chain} ")]
    body = f"*filter\n:{chain} - [0:0]\n" + "\n".join(rules) + "\nCOMMIT\n"   # the same rules: counters restart
    # Traffic before the window, so a restart inside it shows as counters going backward (the legacy
    # backend has no handles: counters are all there is).
    traffic.crafted_probes(lab.topo, count_per_port=20)
    restore = ["ip", "netns", "exec", ns, "iptables-legacy-restore", "--noflush"]
    doc, root = profile(lab, Resync(lambda i: run(restore, input=body)))
    objs = changed(doc, "iptables_chain")
    assert [o["where"]["chain"] for o in objs] == [chain], doc["changes"]
    assert objs[0]["reset"] and "rule counters restarted (went backward)" in objs[0]["what"]
    # the model's figure for it says what was done: re-based over the intervals, or excluded (no figure)
    node = root.find("chain", chain)
    assert node is not None and node.basis and node.basis.startswith(CHANGED), node
    if "excluded" in node.basis:
        assert node.ns_per_packet is None and node.modelled_ns is None
    else:
        assert "re-based over" in node.basis and node.ns_per_packet is not None
    assert objs[0]["effect"].split(" ", 2)[2] in node.basis        # the report and the tree say the same
    # what the brackets measured stays: the filter table's time per packet, timed by BPF netfilter programs
    table = next(t for t in root.find("stage", "netfilter").children if t.name.startswith("filter"))
    assert table.detail["backend"] == "nf_bpf" and table.measured_ns and table.measured_ns > 0
    assert "stay valid" in doc["changes"]["measured"] and any("changed during the window" in w for w in doc["warnings"])
    assert_within_bounds(doc, root, rule_counts(ns, "legacy"))
    manager.down(lab.spec.name)
    node_before_after()


@pytest.mark.requires("tp_btf", "btf", "bcc")
def test_ovs_flows_re_added_every_200_ms_are_named_and_their_counts_dropped(lab_factory, node_before_after):
    lab = lab_factory("antrea", 100)
    paths = antrea.OvsPaths(antrea.rundir(lab.spec.name))
    table = TABLE_ID["IngressRule"]
    flows = run(paths.ofctl("--no-names", "--no-stats", "dump-flows", paths.mgmt, f"table={table}"))
    readd = paths.dir / "resync-flows.txt"      # inside the lab's own rundir: removed with the lab
    readd.write_text("".join(f"reset_counts,{line.strip()}\n" for line in flows.splitlines() if "priority=" in line))
    traffic.crafted_probes(lab.topo, count_per_port=20)
    doc, root = profile(lab, Resync(lambda i: run(paths.ofctl("add-flows", paths.mgmt, str(readd)))))
    objs = changed(doc, "ovs_flows")
    assert [(o["where"]["table"], o["where"]["name"]) for o in objs] == [(table, "IngressRule")], doc["changes"]
    assert any("re-added (duration restarted)" in w for w in objs[0]["what"]) and objs[0]["reset"]
    ovs = root.find("stage", "ovs")
    node = next(c for c in ovs.children if c.name.split(" ")[0] == str(table))
    assert node.basis.startswith(CHANGED) and not [c for c in node.children if c.kind == "flow"]
    assert node.packets > 0                       # the table's own lookup counter: counted in full
    assert ovs.measured_ns and ovs.measured_ns > 0      # ovs-vswitchd's CPU: measured, still reported
    assert_within_bounds(doc, root)
    manager.down(lab.spec.name)
    node_before_after()


PASS_PROGRAMS = b"""
int cnit_resync_a(struct __sk_buff *skb) { return 0; /* TC_ACT_OK */ }
int cnit_resync_b(struct __sk_buff *skb) { return 0; }
"""


@pytest.mark.requires("tc_bpf", "tp_btf", "btf", "bcc")
def test_a_tc_program_replaced_every_200_ms_is_named_and_the_new_one_marked(lab_factory, node_before_after):
    lab = lab_factory("cilium", 100)
    bcc = loader.import_bcc()
    b = bcc.BPF(text=PASS_PROGRAMS)
    pins = []
    try:       # two new programs, pinned in the lab's pin dir (removed with the lab), alternated
        for fn in ("cnit_resync_a", "cnit_resync_b"):
            pins.append(str(cilium.pin_dir(lab.spec.name) / fn))
            loader.pin(b.load_func(fn.encode(), loader.prog_type("SCHED_CLS")).fd, pins[-1])
    finally:
        b.cleanup()
    ns, iface = lab.topo.node_netns, lab.topo.clients[0].node_iface
    # nsenter, not `ip netns exec`: that remounts /sys, hiding the bpffs pins from tc
    tc = ["nsenter", f"--net=/run/netns/{ns}", "tc", "filter", "replace", "dev", iface, "ingress", "prio", "1",
          "handle", "1", "bpf", "da", "pinned"]
    doc, root = profile(lab, Resync(lambda i: run([*tc, pins[i % 2]])))
    objs = changed(doc, "bpf_program")
    assert [(o["where"]["iface"], o["where"]["hook"]) for o in objs] == [(iface, "ingress")], doc["changes"]
    assert "cil_from_cont" in objs[0]["what"][0] and "cnit_resync_" in objs[0]["what"][0]   # kernel names: 15 chars
    bpf = root.find("stage", "bpf")
    assert bpf.basis.startswith(CHANGED) and "lower bound" in bpf.basis
    # the program attached last ran only if probes came after it: when it did, its figure is measured, marked
    for new in (c for c in bpf.children if c.name.startswith("cnit_resync_")):
        assert new.basis.startswith(CHANGED) and new.provenance == "measured" and new.ns_per_packet is not None
    assert any(c.name.startswith("cil_to_cont") and c.basis is None for c in bpf.children)   # untouched: as is
    assert_within_bounds(doc, root)
    manager.down(lab.spec.name)
    node_before_after()


def test_a_sweep_point_measured_during_a_resync_is_flagged_not_fitted(lab_factory):
    """The nft backend: the chain's new handles show every replacement, whatever its counters do."""
    cfg = make_config(datapaths="calico", rules="100", quick=True, backend="nft")
    ps = next(p for p in points(cfg) if p.rules == 100)
    lab = lab_factory("calico", 100, backend="nft")
    ns, chain = lab.topo.node_netns, policy_chain(lab.spec.name)
    rules = [line for line in run(["ip", "netns", "exec", ns, "iptables-nft-save", "-t", "filter"]).splitlines()
             if line.startswith(f"-A {chain} ")]
    body = f"*filter\n:{chain} - [0:0]\n" + "\n".join(rules) + "\nCOMMIT\n"
    restore = ["ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush"]
    with Resync(lambda i: run(restore, input=body), gate=False):
        point = sweep.measure_point(ps, cfg, lab, sweep.Baselines(), None, sweep.DEFAULT_RUNNER)
    assert point["status"] == "changed" and chain in point["error"], point.get("error")
    assert [o["where"]["chain"] for o in point["changes"]["objects"] if o["kind"] == "iptables_chain"] == [chain]
    assert point["metrics"]                      # what was measured stays in the point; it is not fitted
    from cnitrace.sweep.model import build_curves
    assert build_curves([point]) == []

"""`lab up --replay` on a real kernel (root): real dumps load into a lab node namespace with the
expected rule count on both iptables backends, a 5,000-rule kube-proxy + Calico dump comes up in
under 5 s, `profile --traffic probe` on it measures the netfilter tables and reports exercised rules,
and `lab down` / `cnitrace cleanup` leave the node as found (no ipset, rule or namespace behind)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cnitrace.core.state import StateFile
from cnitrace.lab import manager
from cnitrace.lab.datapaths.replay import save_argv
from cnitrace.lab.replay import read_sources
from cnitrace.lab.replay_plan import prepare
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.document import validate
from cnitrace.traffic.generators import rule_port_ranges
from tests.support.nodestate import settled_node_state
from tests.unit.test_lab_replay import FIX, scaled_ruleset

pytestmark = pytest.mark.requires("iptables")
CNITRACE = [sys.executable, "-m", "cnitrace"]
FIXTURES = [FIX / "iptables" / n for n in (
    "local_legacy_v4.save", "local_legacy_v6.save", "local_nft_v4.save", "local_nft_v6.save",
    "calico_nft_backend.save", "calico_amazon-vpc-cni-k8s-34.save", "calico_weave-3588.save",
    "cilium_cilium-31565.save", "kubeproxy_kubernetes-75893.save", "kuberouter_kube-router-1069.save",
    "kuberouter_kube-router-341.save", "weavenet_weave-3452.save", "antrea_antrea-2635.restore")] + [
    FIX / "lab" / "calico-gke-iptables-save-excerpt.txt", FIX / "lab" / "calico-lab-iptables-legacy-save-c.txt",
    FIX / "lab" / "kube-router-k3s-iptables-save-excerpt.txt"]
NFT = [FIX / "nftables" / n for n in ("kubeproxy_nftables_mode.json", "local_native_sets.json",
                                      "kuberouter_iptables_nft.json", "lab_nft_rules1000.json")]


def _run(argv: list[str], netns: str | None = None) -> str:
    full = (["ip", "netns", "exec", netns] if netns else []) + argv
    return subprocess.run(full, capture_output=True, text=True, timeout=60, check=True).stdout


def _ns(prefix: str) -> list[str]:
    return [n for n in _run(["ip", "netns", "list"]).split() if n.startswith(prefix)]


def _rules(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


SHARED = ("iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft", "nft", "links", "tc", "sysctl")


def _scoped(state: dict, name: str) -> dict:
    """The node's picture (tests.support.nodestate) as far as lab `name` could change it: the host's
    rules, links, tc and sysctls whole, and of the per-run lists (namespaces, processes, pins, state
    records) only what names this lab: other tests and helpers build their own labs on this machine
    at the same time, and those come and go during the test."""
    out = {k: state[k] for k in SHARED if k in state}
    for k in ("netns", "processes", "bpf-pins", "state-file"):
        out[k] = [x for x in state.get(k, []) if name in str(x)]
    return out


def assert_node_as_found(before: dict, name: str) -> None:
    after = _scoped(settled_node_state(), name)
    diff = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not diff, f"node state changed: {sorted(diff)}\n{diff}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_real_dump_loads_with_the_expected_rule_count(lab_factory, path):
    src = read_sources([str(path)])[0]
    expected = prepare([src], lab="x").rules_loaded
    lab = lab_factory("replay", 0, replay=(str(path),), backend="")      # "": the dump's own backend
    assert lab.spec.backend == src.backend and lab.truth.allowed == {} and lab.truth.denied is None
    saved = _run(save_argv(src.family, src.backend), lab.topo.node_netns)
    assert _rules(saved) == expected == lab.topo.extra["replay"]["rules_loaded"]
    assert lab.topo.extra["replay"]["kernel_rules"] == {f"{src.family}/{src.backend}": expected}


@pytest.mark.requires("nft")
@pytest.mark.parametrize("path", NFT, ids=lambda p: p.name)
def test_nft_json_dump_loads_with_the_expected_rule_count(lab_factory, path):
    expected = prepare(read_sources([str(path)]), lab="x").rules_loaded
    lab = lab_factory("replay", 0, replay=(str(path),), backend="")
    doc = json.loads(_run(["nft", "-j", "list", "ruleset"], lab.topo.node_netns))
    rules = [o for o in doc["nftables"] if "rule" in o]
    assert len(rules) == expected == lab.topo.extra["replay"]["kernel_rules"]["nft"]


def test_refused_rules_are_dropped_at_load_and_reported(lab_factory, tmp_path):
    dump = tmp_path / "odd.save"
    dump.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 80 -j ACCEPT\n"
                    "-A INPUT -m ipvs --ipvs -j ACCEPT\n-A INPUT -m ipvs --vdir ORIGINAL -j ACCEPT\n"
                    "-A INPUT -p tcp --dport 65538 -j ACCEPT\nCOMMIT\n")
    for backend in ("legacy", "nft"):
        lab = lab_factory("replay", 0, replay=(str(dump),), backend=backend)
        r = lab.topo.extra["replay"]
        assert _rules(_run(save_argv("ipv4", backend), lab.topo.node_netns)) == 1
        report = json.loads(Path(r["report"]).read_text())
        dropped = {rw["line"]: rw["reason"] for rw in report["rewrites"] if rw["new"] is None}
        assert set(dropped) == {4, 5, 6} and all(v.startswith("refused at load") for v in dropped.values())
        assert "65538" in dropped[6]


@pytest.mark.requires("nf_bpf", "tp_btf", "btf", "bcc", "iptables")
def test_5000_rule_replay_is_fast_profiled_and_leaves_the_node_as_found(unique_name, tmp_path):
    ipt, ipset = scaled_ruleset()
    (tmp_path / "node.save").write_text(ipt)
    (tmp_path / "node.ipset").write_text(ipset)
    host_sets = _run(["ipset", "list", "-n"])
    name = unique_name()
    before = _scoped(settled_node_state(), name)
    t0 = time.monotonic()
    out = subprocess.run([*CNITRACE, "lab", "up", "--replay", str(tmp_path / "node.save"), "--replay",
                          str(tmp_path / "node.ipset"), "--name", name, "--report", str(tmp_path / "report.txt")],
                         capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    try:
        assert out.returncode == 0, out.stderr
        n = sum(1 for l in ipt.splitlines() if l.lstrip("[0123456789:] ").startswith("-A "))
        assert n >= 5000
        print(f"lab up --replay of {n} rules: {took:.2f} s\n{out.stdout}")
        assert took < 5.0, took
        assert f"replay of {n:,} rules" in out.stdout and " s (read + rewrite" in out.stdout
        assert (tmp_path / "report.txt").read_text().startswith(f"replay: {n} rules in, {n} loaded")
        lab = manager.load(name)
        node = lab.topo.node_netns
        assert _rules(_run(["iptables-legacy-save"], node)) == n
        assert "cali40s:unsynced-0" in _run(["ipset", "list", "-n"], node)     # created empty
        assert lab.topo.server.ip == "10.244.1.10"         # the endpoint every service DNATs to

        doc = run_profile(ProfileConfig(lab=name, traffic="probe", duration=2.0))
        assert validate(doc) == []
        assert doc["backends"]["netfilter"]["backend"] == "nf_bpf"
        tables = {t["table"]: t for t in doc["replay"]["tables"]}
        flt = tables["filter (iptables-legacy, ipv4)"]
        assert flt["measured_ns"] and flt["provenance"] in ("measured", "both") and flt["backend"] == "nf_bpf"
        rep = doc["replay"]
        assert rep["rules"] == n and 0 < rep["exercised"] < n and rep["never_exercised"] == n - rep["exercised"]
        assert rep["probe_port_rules"] > 0
        ports = set(doc["traffic"]["result"]["metrics"]["ports"])
        hit = [r for r in rep["rules_exercised"] if r["probe_port"]]
        assert hit and all(any(lo <= p <= hi for _, lo, hi in rule_port_ranges([r["rule"]]) for p in ports)
                           for r in hit)
        assert any(c["chain"].startswith("cali-pi-_") and c["ns_per_packet"] for c in rep["top_chains"])
        assert doc["lab"]["ground_truth"]["allowed"] == {} and doc["lab"]["ground_truth"]["denied"] is None
    finally:
        done = subprocess.run([*CNITRACE, "lab", "down", "--name", name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not _ns(f"cnit-{name}-") and not StateFile().live(manager.owner(name))
    assert not Path(lab.topo.extra["replay"]["report"]).exists()
    assert _run(["ipset", "list", "-n"]) == host_sets
    assert_node_as_found(before, name)


def test_kill9_midway_then_cleanup_removes_the_replay(unique_name, tmp_path):
    """A private state dir keeps `cnitrace cleanup` from touching other runs on this machine."""
    ipt, ipset = scaled_ruleset(services=1500, workloads=150, policies=60, rules_per_policy=100)
    (tmp_path / "big.save").write_text(ipt)
    (tmp_path / "big.ipset").write_text(ipset)
    state = Path(f"/tmp/cnit-state-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "CNITRACE_STATE_DIR": str(state)}
    name = unique_name()
    before = _scoped(settled_node_state(), name)
    proc = subprocess.Popen([*CNITRACE, "lab", "up", "--replay", str(tmp_path / "big.save"), "--replay",
                             str(tmp_path / "big.ipset"), "--name", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_ns(f"cnit-{name}-")) < 3:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _ns(f"cnit-{name}-"), "lab up never started"
        assert not (state / "labs" / f"cnit-{name}.json").exists(), "the lab completed before the kill"
        out = subprocess.run([*CNITRACE, "cleanup", "--lab", name], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert not _ns(f"cnit-{name}-") and not StateFile(state).live()
        assert_node_as_found(before, name)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def test_bad_replay_input_is_one_line_and_nothing_is_created(tmp_path, unique_name):
    bad = tmp_path / "x.txt"
    bad.write_text("this is not a ruleset\n")
    name = unique_name()
    for argv, why in (([str(bad)], "not an iptables-save"), ([str(tmp_path / "missing")], "no such file")):
        out = subprocess.run([*CNITRACE, "lab", "up", "--name", name, *(a for f in argv for a in ("--replay", f))],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = subprocess.run([*CNITRACE, "lab", "up", "--name", name, "--replay", str(FIXTURES[0]), "--rules", "10"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rules" in out.stderr
    assert not _ns(f"cnit-{name}-")

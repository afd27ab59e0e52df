"""`cnitrace doctor` on this machine (root): real attach trials, real CLI, node left as found.

These assert the CI host's known facts (DESIGN.md): tracepoints, raw tracepoints, tc, XDP,
bpf_stats, BTF and BPF netfilter programs work (so the netfilter stage is measured by brackets);
kprobes and fentry do not, each with a reason; headers are a stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from cnitrace.node import detect
from cnitrace.core.capability import Host
from cnitrace.node.doctor import DOCTOR_SCHEMA, run_doctor
from cnitrace.probes.trial import RX, TX
from cnitrace.core.runner import Runner

SELFTEST_PROGS = ("on_tracepoint", "on_raw_tracepoi", "on_kprobe", "on_tc", "on_xdp", "kfunc____netif_")
CNITRACE = [sys.executable, "-m", "cnitrace"]


def _selftest_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out) if p.get("name", "") in SELFTEST_PROGS}


def _leaked_selftest_progs(grace: float = 15.0) -> set[int]:
    """Selftest programs still loaded after `grace` s. Other processes' doctor trials (test
    skips call the same checks) hold theirs for about a second; a leaked one never goes."""
    ids = _selftest_prog_ids()
    deadline = time.monotonic() + grace
    while ids and time.monotonic() < deadline:
        time.sleep(0.25)
        ids &= _selftest_prog_ids()
    return ids


def _mounts(*fstypes: str) -> list[str]:
    return sorted(l for l in Path("/proc/self/mounts").read_text().splitlines() if l.split()[2] in fstypes)


def _sysctl() -> str:
    return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()


def test_doctor_json_on_this_host_and_node_left_as_found():
    mounts, sysctl = _mounts("securityfs", "debugfs"), _sysctl()
    t0 = time.monotonic()
    proc = subprocess.run([*CNITRACE, "doctor", "--json"], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, DOCTOR_SCHEMA)
    checks = {k: v["status"] for k, v in doc["checks"].items()}
    for name in ("root", "btf", "tracepoints", "raw_tracepoints", "tp_btf", "tc_bpf", "xdp", "bpf_stats", "bcc", "nft",
                 "nf_bpf"):
        assert checks[name] == "ok", (name, doc["checks"][name]["reason"])
    kp, fe = doc["checks"]["kprobes"], doc["checks"]["fentry"]
    assert kp["status"] == "missing" and "CONFIG_KPROBES is not set" in kp["reason"]
    assert fe["status"] == "missing" and "Operation not permitted" in fe["reason"]
    assert checks["kernel_headers"] == "degraded" and doc["checks"]["kernel_headers"]["reason"].startswith("stand-in")
    assert checks["ovs_kernel"] == "missing" and checks["iptables"] == "ok"
    # The per-device hooks saw exactly the frames the trial sent; global ones at least those.
    for name in ("tc_bpf", "xdp"):
        assert doc["checks"][name]["detail"]["hits"] == 4
    assert doc["checks"]["tracepoints"]["detail"]["hits"] >= 4
    assert {s["stage"]: s["backend"] for s in doc["stages"]} == {
        "netfilter": "nf_bpf", "ovs_kernel": "counters", "tc_bpf": "counters",
        "transit": "tracepoint", "drops": "tracepoint", "l7_detour": "tracepoint"}
    assert doc["can_profile"] is True
    assert elapsed < 8.0, f"doctor took {elapsed:.1f} s"
    # Nothing left behind: programs, the bpf_stats sysctl, pseudo-filesystem mounts, the veth pair.
    assert _leaked_selftest_progs() == set()
    assert _sysctl() == sysctl
    # The trial mounts securityfs (and tracefs if absent) only in its private namespace. The
    # probes' own tests may mount tracefs on the node meanwhile, so for tracefs: never stacked.
    assert _mounts("securityfs", "debugfs") == mounts
    assert len(_mounts("tracefs")) <= 1
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f" {TX}" not in links and f" {RX}" not in links


def test_trial_refuses_to_run_in_the_node_namespaces():
    """The safety gate: the child that mounts and creates links only runs in fresh namespaces."""
    ns = [os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "net")]
    proc = subprocess.run([sys.executable, "-m", "cnitrace.probes.trial", *ns], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"error": "refusing to run outside private mount and network namespaces"}


def test_doctor_terminal_output_ends_with_stage_table():
    proc = subprocess.run([*CNITRACE, "doctor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    assert max(len(l) for l in lines) <= 100
    assert "Probe backend per datapath stage" in proc.stdout
    assert lines[-1].startswith("└") and "l7_detour" in "\n".join(lines[-8:])


def test_run_doctor_in_process_shares_one_trial():
    host = Host()
    report = run_doctor(host)
    assert report.can_profile
    assert report.check("tc_bpf").usable and not report.check("fentry").usable
    assert report.elapsed_s < 8.0
    again = run_doctor(host)             # cached in the Host: no second compile
    assert again.elapsed_s < 0.5 and again.check("tc_bpf") == report.check("tc_bpf")


def test_cni_evidence_in_a_netns(netns):
    ns = netns()
    # A veth pair (no dummy module here): both ends stay inside the throwaway namespace.
    subprocess.run(["ip", "-n", ns, "link", "add", "cali1234", "type", "veth", "peer", "name", "lxc1234"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft", "-N", "cali-FORWARD"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-N", "KUBE-SERVICES"], check=True)
    ev = detect.gather_evidence(Runner(), netns=ns)
    assert ev.warnings == ()
    found = {d.cni: d.evidence for d in detect.detect_cnis(ev)}
    assert found == {"calico": ("interface cali1234", "chain cali-FORWARD (iptables-nft)"),
                     "cilium": ("interface lxc1234",)}
    assert detect.detect_kube_proxy(ev).mode == "iptables"
    root = detect.gather_evidence(Runner())
    assert "cali1234" not in root.links and ("nft", "cali-FORWARD") not in root.iptables_chains


@pytest.mark.parametrize("argv", [["doctor", "--bogus"], ["doctor", "--json", "extra"]])
def test_bad_options_exit_2_with_one_line(argv):
    proc = subprocess.run([*CNITRACE, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("cnitrace: ")
    assert "Traceback" not in proc.stderr

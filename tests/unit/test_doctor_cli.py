"""`cnitrace doctor` through the real CLI boundary, with a replayed host (no root, no kernel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from cnitrace.node import doctor

from cnitrace.node import checks as hc
from cnitrace.core.capability import Check, Host, Status, degraded, missing, ok
from cnitrace.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detect"
TRIAL = json.loads((FIXTURES / "trial_ci_host.jsonl").read_text().split("\n", 1)[1])
KCONFIG = hc.parse_kconfig((FIXTURES / "kconfig_ci_host.txt").read_text())


def ci_host_checks() -> dict[str, Check]:
    """The CI host as doctor saw it: trial-backed checks from the captured trial output."""
    checks = {n: hc.trial_check_from(n, TRIAL, KCONFIG)
              for n in ("tracepoints", "raw_tracepoints", "kprobes", "fentry", "tc_bpf", "xdp")}
    checks.update({
        "root": ok("root", "running as root"),
        "btf": ok("btf", "/sys/kernel/btf/vmlinux"),
        "tracefs": ok("tracefs", "mounted at /sys/kernel/tracing"),
        "bpf_stats": hc.bpf_stats_from(None, "0"),
        "iptables": hc.iptables_from({"legacy": (0, 0), "nft": (0, 0)}),
        "nft": ok("nft", "nftables usable; 0 table(s)"),
        "ovs": degraded("ovs", "tools installed; ovsdb not running"),
        "ovs_kernel": hc.ovs_module_from("", "", False),
        "kernel_headers": hc.kernel_headers_from("6.18.44-fc-v595",
                                                 "/usr/src/linux-headers-6.12.115+deb12-amd64", True),
        "cni": missing("cni", "no CNI evidence " + "(interfaces, chains, OVS bridges, Cilium pins) " * 3),
    })
    return checks


class ReplayedHost(Host):
    def __init__(self, checks: dict[str, Check]):
        super().__init__()
        self.replayed = checks

    def check(self, name: str) -> Check:
        return self.replayed.get(name) or Check(name, Status.MISSING, f"{name}: not replayed")


@pytest.fixture
def replay(monkeypatch):
    def use(checks: dict[str, Check]) -> None:
        monkeypatch.setattr(doctor, "Host", lambda: ReplayedHost(checks))
    return use


def test_json_validates_and_exit_0_when_counters_possible(replay, capsys):
    replay(ci_host_checks())
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, doctor.DOCTOR_SCHEMA)
    assert doc["schema"] == "cnitrace.node.doctor" and doc["schema_version"] == 1 and doc["can_profile"] is True
    stages = {s["stage"]: s["backend"] for s in doc["stages"]}
    assert stages == {"netfilter": "counters", "ovs_kernel": "counters", "tc_bpf": "counters",
                      "transit": "tracepoint", "drops": "tracepoint", "l7_detour": "tracepoint"}
    assert doc["checks"]["kprobes"]["status"] == "missing"
    assert "CONFIG_KPROBES is not set" in doc["checks"]["kprobes"]["reason"]


def test_exit_1_when_nothing_can_run(replay, capsys):
    replay({"root": missing("root", "not root: loading probes and reading counters need root (run with sudo)")})
    assert main(["doctor", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, doctor.DOCTOR_SCHEMA)
    assert doc["can_profile"] is False and all(s["backend"] is None for s in doc["stages"])


def test_terminal_output_fits_100_columns_and_ends_with_the_stage_table(replay, capsys):
    replay(ci_host_checks())
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    assert max(len(l) for l in lines) <= 100
    assert out.index("Host capabilities") < out.index("Probe backend per datapath stage")
    tail = out[out.index("Probe backend per datapath stage"):]
    for stage in ("netfilter", "ovs_kernel", "tc_bpf", "transit", "drops", "l7_detour"):
        assert re.search(rf"│ {stage}\s+│", tail), stage
    assert lines[-1].startswith("└")                          # nothing after the stage table
    assert "not fentry: fentry missing" in tail


def test_bad_option_is_one_line_and_exit_2(capsys):
    assert main(["doctor", "--bogus"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"cnitrace: No such option.*--bogus", lines[0]), err

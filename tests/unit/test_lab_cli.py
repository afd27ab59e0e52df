"""`cnitrace lab` refuses bad input with one line and a non-zero status, before touching anything."""

from __future__ import annotations

import pytest

from cnitrace.cli import main
from cnitrace.core.errors import ToolError
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from cnitrace.core.runner import RecordedRunner


@pytest.fixture(autouse=True)
def private_state(tmp_path, monkeypatch):
    monkeypatch.setenv("CNITRACE_STATE_DIR", str(tmp_path / "cnit-state"))
    return tmp_path / "cnit-state"


@pytest.mark.parametrize("argv,msg", [
    (["-d", "canal"], "unknown datapath 'canal'; choose one of:"),
    (["-d", "calico", "-n", "10001"], "--rules 10001 out of range: 0..10000"),
    (["-d", "calico", "-n", "-5"], "--rules -5 out of range"),
    (["-d", "nft", "-n", "10", "--match-position", "11"], "--match-position 11 out of range: 0..10"),
    (["-d", "kube-router", "--l7"], "--l7 is not supported by the kube-router datapath"),
    (["-d", "calico", "--backend", "ebpf"], "--backend 'ebpf': choose legacy or nft"),
    (["-d", "calico", "--name", "Bad Name"], "bad lab name"),
    (["-d", "calico", "--pods", "1000"], "--pods 1000 out of range"),
])
def test_bad_lab_up_is_one_line_exit_2(argv, msg, capsys, private_state):
    assert main(["lab", "up", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnitrace: ") and msg in err and err.count("\n") == 1
    assert not private_state.exists() or not any(private_state.rglob("*.json*"))   # nothing recorded


def test_unknown_lab_for_status_and_down(capsys):
    assert main(["lab", "status", "--name", "nosuch"]) == 2
    assert "no lab named 'nosuch'" in capsys.readouterr().err


def test_list_with_no_labs(capsys):
    assert main(["lab", "list"]) == 0
    assert capsys.readouterr().err.strip() == "no labs"


def test_a_missing_tool_is_named():
    netfilter = ["ip", "sysctl", "iptables-legacy-restore", "iptables-nft-restore"]
    runner = RecordedRunner({}, tools=netfilter)
    with pytest.raises(ToolError, match="^ipset: not installed"):
        manager.preflight(LabSpec(datapath="calico"), runner)
    with pytest.raises(ToolError, match="^haproxy: not installed"):
        manager.preflight(LabSpec(datapath="calico", l7=True, l7_proxy="haproxy"),
                          RecordedRunner({}, tools=[*netfilter, "ipset", "nginx"]))
    assert manager.preflight(LabSpec(datapath="flannel"), runner).name == "flannel"
    assert runner.calls == []            # preflight never runs anything

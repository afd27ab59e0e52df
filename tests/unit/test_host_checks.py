"""Capability interpretation from real captured output: the trial child, kernel config, tools."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from cnitrace.node import checks as hc
from cnitrace.core.capability import Status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "detect"


def body(name: str) -> str:
    header, rest = (FIXTURES / name).read_text().split("\n", 1)
    assert header.startswith("# provenance: ")
    return rest


TRIAL = json.loads(body("trial_ci_host.jsonl"))
KCONFIG = hc.parse_kconfig(body("kconfig_ci_host.txt"))


def test_kconfig_parse_reads_set_and_unset():
    assert KCONFIG["CONFIG_BPF_SYSCALL"] == "y"
    assert KCONFIG["CONFIG_KPROBES"] == "n"
    assert KCONFIG["CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY"] == "y"
    assert "CONFIG_NOT_THERE" not in KCONFIG


@pytest.mark.parametrize("name, status, words", [
    ("tracepoints", Status.OK, ["net:netif_receive_skb attached", "fired on all 4 test frames"]),
    ("raw_tracepoints", Status.OK, ["raw netif_receive_skb attached"]),
    ("tc_bpf", Status.OK, ["sched_cls", "fired on all 4 test frames"]),
    ("xdp", Status.OK, ["native mode"]),
    ("kprobes", Status.MISSING, ["no kprobe PMU and no kprobe_events in tracefs", "CONFIG_KPROBES is not set"]),
    ("fentry", Status.MISSING, ["refused: Operation not permitted", "lockdown=integrity"]),
])
def test_trial_on_the_ci_host(name, status, words):
    c = hc.trial_check_from(name, TRIAL, KCONFIG)
    assert c.status is status, c.reason
    for w in words:
        assert w in c.reason


def test_trial_failures_say_why():
    assert hc.trial_check_from("tc_bpf", {"error": "needs root (loading BPF programs)"}, {}).reason \
        == "not tried: needs root (loading BPF programs)"
    compile_failed = {"compile": {"ok": False, "log": "<built-in>:1:10: fatal error: './include/linux/kconfig.h' "
                                                    "file not found"}}
    c = hc.trial_check_from("tracepoints", compile_failed, {})
    assert c.status is Status.MISSING and "kconfig.h" in c.reason
    silent = {**TRIAL, "attach": {**TRIAL["attach"], "tc_bpf": {"ok": True, "hits": 0, "sent": 4}}}
    assert hc.trial_check_from("tc_bpf", silent, {}).status is Status.DEGRADED


def test_kernel_headers_matching_standin_missing():
    assert hc.kernel_headers_from("6.12.115+deb12-amd64", "/usr/src/linux-headers-6.12.115+deb12-amd64",
                                  True).status is Status.OK
    standin = hc.kernel_headers_from("6.18.44-fc-v595", "/usr/src/linux-headers-6.12.115+deb12-amd64", True)
    assert standin.status is Status.DEGRADED and standin.reason.startswith("stand-in: headers 6.12.115+deb12-amd64")
    assert hc.kernel_headers_from("6.18.44", None, False).status is Status.MISSING
    split = hc.kernel_headers_from("6.18.44", "/usr/src/linux-headers-6.12.115+deb12-amd64", False)
    assert split.status is Status.MISSING and "../source" in split.reason


def test_lockdown_and_tracefs():
    assert hc.parse_lockdown(TRIAL["lockdown"]) == "integrity"
    assert hc.parse_lockdown("[none] integrity confidentiality") == "none"
    assert hc.parse_lockdown(None) is None
    mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n"
    assert hc.tracefs_from(mounts, {}).status is Status.OK
    private = hc.tracefs_from("sysfs /sys sysfs rw 0 0\n", {"tracefs": {"state": "mounted-privately"}})
    assert private.status is Status.DEGRADED and "mount -t tracefs" in private.reason
    assert hc.tracefs_from("", {"tracefs": {"state": "unavailable", "error": "No such device"}}).status \
        is Status.MISSING


def test_iptables_counts_and_backends():
    assert hc.count_iptables(body("calico_iptables_save.txt")) == (0, 12)
    c = hc.iptables_from({"legacy": (5, 0), "nft": (40, 12)})
    assert c.status is Status.OK and c.detail["holding"] == ["nft"]
    assert "rules in nft" in c.reason
    assert hc.iptables_from({"legacy": None, "nft": "permission denied"}).status is Status.MISSING


def test_bpf_stats_methods():
    assert hc.bpf_stats_from(None, "0").detail["method"] == "BPF_ENABLE_STATS"
    via = hc.bpf_stats_from(errno.EINVAL, "0")
    assert via.status is Status.DEGRADED and via.detail["method"] == "sysctl" and "restored" in via.reason
    assert hc.bpf_stats_from(errno.EINVAL, None).status is Status.MISSING


def test_ovs_bridges_and_module():
    assert hc.parse_ovs_bridges(body("ovs_vsctl_bridges.json")) == {"cnitbr0": "netdev", "cnitbr1": ""}
    loaded = "openvswitch 184320 0 - Live 0x0\nnsh 16384 1 openvswitch, Live 0x0\n"
    assert hc.ovs_module_from(loaded, "", False).detail["module"] == "loaded"
    assert hc.ovs_module_from("", "kernel/net/openvswitch/openvswitch.ko\n", False).detail["module"] == "builtin"
    assert hc.ovs_module_from("", "", True).detail["module"] == "loadable"
    none = hc.ovs_module_from("veth 40960 0 - Live 0x0\n", "", False)
    assert none.status is Status.MISSING and "userspace datapath only" in none.reason

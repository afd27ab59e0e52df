"""BPF-program collector on a real tc program: run_cnt delta == packets sent, ns/run > 0,
and kernel.bpf_stats_enabled left exactly as found (fd mode, sysctl mode, and after SIGINT)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from cnitrace.collectors.base import delta
from cnitrace.collectors.bpfprog.parse import BpfMap, BpfProg, ns_per_run
from cnitrace.collectors.bpfprog.source import BpfProgCollector
from cnitrace.collectors.bpfprog.stats import read_sysctl, stats_enabled
from cnitrace.probes import loader
from cnitrace.core.selection import resolve
from cnitrace.core.session import Session
from cnitrace.core.state import StateFile


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _veth_with_prog(netns: str, fn) -> None:
    """veth cnitva<->cnitvb inside `netns`, on_tc on cnitvb's clsact ingress, static neighbours."""
    from pyroute2 import NetNS

    _ip("-n", netns, "link", "add", "cnitva", "type", "veth", "peer", "name", "cnitvb")
    _ip("-n", netns, "addr", "add", "10.98.0.1/24", "dev", "cnitva")
    _ip("-n", netns, "link", "set", "cnitva", "up")
    _ip("-n", netns, "link", "set", "cnitvb", "up")
    _ip("-n", netns, "link", "set", "cnitvb", "address", "02:00:00:00:01:02")
    _ip("-n", netns, "neigh", "replace", "10.98.0.2", "lladdr", "02:00:00:00:01:02", "dev", "cnitva",
        "nud", "permanent")
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                   check=True, timeout=30)
    with NetNS(netns) as ipr:
        idx = ipr.link_lookup(ifname="cnitvb")[0]
        ipr.tc("add", "clsact", idx)
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name="on_tc", parent="ffff:fff2", classid=1,
               direct_action=True)


def _wait_stats_off(timeout: float = 15.0) -> None:
    """Another engineer's run may hold the sysctl on for a moment; these tests need it off."""
    deadline = time.monotonic() + timeout
    while read_sysctl() != "0":
        assert time.monotonic() < deadline, "kernel.bpf_stats_enabled stayed on (another process?)"
        time.sleep(0.1)


def _send(netns: str, n: int) -> None:
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[1])): s.sendto(b'x'*16,('10.98.0.2',9))")
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, str(n)], check=True, timeout=30)


@pytest.mark.parametrize("mode", ["fd", "sysctl"])
def test_run_cnt_delta_equals_packets(netns, tc_prog, mode):
    ns = netns()
    _veth_with_prog(ns, tc_prog)
    original = read_sysctl()
    col = BpfProgCollector(resolve([], [ns]))
    assert col.available()
    n = 41
    with Session() as s, stats_enabled(s, mode=mode) as how:
        assert how == (mode if original == "0" or mode == "fd" else "already")
        if how == "sysctl":
            assert read_sysctl() == "1"
        before = col.snapshot()
        _send(ns, n)
        after = col.snapshot()
    assert read_sysctl() == original
    progs = [r for r in after.records if isinstance(r, BpfProg)]
    assert [p.name for p in progs] == ["on_tc"]
    att = after.meta["attachments"]
    assert {(a["target"], a["hook"], a["netns"]) for a in att} == {("cnitvb", "ingress", ns)}
    d = delta(before, after)
    runs = d.get(progs[0].key, "run_cnt")
    assert runs == n
    per_run = ns_per_run(runs, d.get(progs[0].key, "run_time_ns"))
    assert per_run is not None and 0 < per_run < 100_000
    maps = [r for r in after.records if isinstance(r, BpfMap)]
    assert [(m.name, m.max_entries, m.pressure) for m in maps] == [("hits", 8, None)]


def test_stats_stay_off_outside_collection(netns, tc_prog):
    """Packets sent with stats off are not counted: stats are on only while collecting."""
    ns = netns()
    _veth_with_prog(ns, tc_prog)
    col = BpfProgCollector(resolve([], [ns]))
    _wait_stats_off()
    before = col.snapshot()
    _send(ns, 10)
    after = col.snapshot()
    prog = [r for r in after.records if isinstance(r, BpfProg)][0]
    assert delta(before, after).get(prog.key, "run_cnt") == 0


def test_sigint_during_snapshot_restores_sysctl(netns, tc_prog, tmp_path):
    ns = netns()
    _veth_with_prog(ns, tc_prog)
    _wait_stats_off()
    original = read_sysctl()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnitrace", "snapshot", "--netns", ns, "--interval", "20",
         "--bpf-stats", "sysctl", "--only", "bpf"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while read_sysctl() != "1":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "stats never enabled"
            time.sleep(0.05)
        live = [r for r in StateFile().live() if r.kind == "sysctl" and r.owner == f"run:{proc.pid}"]
        assert live and live[0].data["original"] == original
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert read_sysctl() == original
    assert not [r for r in StateFile().live() if r.owner == f"run:{proc.pid}"]


def test_sigkill_leaves_a_record_that_cleanup_restores(netns, tc_prog):
    """kill -9 cannot run the finally: the state-file record is what puts the sysctl back."""
    from cnitrace.core.state import cleanup

    ns = netns()
    _veth_with_prog(ns, tc_prog)
    _wait_stats_off()
    original = read_sysctl()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnitrace", "snapshot", "--netns", ns, "--interval", "20",
         "--bpf-stats", "sysctl", "--only", "bpf"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owner = f"run:{proc.pid}"
    try:
        deadline = time.monotonic() + 20
        while read_sysctl() != "1":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "stats never enabled"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        assert read_sysctl() == "1"
        (rec,) = [r for r in StateFile().live(owner) if r.kind == "sysctl"]
        assert rec.name == "kernel.bpf_stats_enabled" and rec.data["original"] == original
    finally:
        if proc.poll() is None:
            proc.kill()
        result = cleanup(StateFile(), owner)  # what `cnitrace cleanup` does, limited to this run
    assert [r.kind for r in result.removed] == ["sysctl"] and not result.failed
    assert read_sysctl() == original


@pytest.fixture(scope="module")
def xdp_prog():
    b = loader.load("selftest.bpf.c", autoload=False)
    fn = b.load_func(b"on_xdp", loader.prog_type("XDP"))
    yield fn
    b.cleanup()


def test_xdp_program_is_found_and_timed(netns, xdp_prog):
    from pyroute2 import NetNS

    ns = netns()
    _ip("-n", ns, "link", "add", "cnitva", "type", "veth", "peer", "name", "cnitvb")
    _ip("-n", ns, "addr", "add", "10.98.0.1/24", "dev", "cnitva")
    for dev in ("cnitva", "cnitvb"):
        _ip("-n", ns, "link", "set", dev, "up")
    _ip("-n", ns, "link", "set", "cnitvb", "address", "02:00:00:00:01:02")
    _ip("-n", ns, "neigh", "replace", "10.98.0.2", "lladdr", "02:00:00:00:01:02", "dev", "cnitva", "nud", "permanent")
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
    with NetNS(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="cnitvb")[0], xdp_fd=xdp_prog.fd)
    col = BpfProgCollector(resolve([f"{ns}/cnitvb"], []))
    with Session() as s, stats_enabled(s) as how:
        assert how in ("fd", "already")
        before = col.snapshot()
        _send(ns, 23)
        after = col.snapshot()
    (att,) = after.meta["attachments"]
    assert (att["kind"], att["target"], att["netns"], att["prog_name"]) == ("xdp", "cnitvb", ns, "on_xdp")
    (prog,) = [r for r in after.records if isinstance(r, BpfProg)]
    d = delta(before, after)
    assert d.get(prog.key, "run_cnt") == 23
    assert ns_per_run(23, d.get(prog.key, "run_time_ns")) > 0

"""vm tier: the OVS kernel datapath stage measures process time and counts upcalls.

Only the microVM has the openvswitch module. A private ovsdb-server/ovs-vswitchd (own run
directory, daemons in a node namespace) drives a datapath_type=system bridge with two veth
ports towards pods A and B; the bridge's NORMAL flow forwards A -> B. The first packets miss
the kernel flow table and go up to ovs-vswitchd (upcalls); the rest are handled in the
kernel. Everything is filtered in the kernel to packets entering through A's port.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnitrace.probes.runtime import ProbeSet
from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.session import Session
from tests.host.probes_path import SENDER

pytestmark = pytest.mark.requires("kprobes", "tracepoints", "btf", "bcc")
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
COUNT = 100


def _wait(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, f"{what} exited ({path.parent}/{what}.log)"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.05)


@pytest.fixture
def ovs_path(namespaces, tmp_path):
    R.run(["modprobe", "openvswitch"])
    a, node, b = namespaces.new(), namespaces.new(), namespaces.new()
    d = tmp_path / "cnit-ovs"
    d.mkdir()
    env = ["env", f"OVS_RUNDIR={d}", f"OVS_DBDIR={d}", f"OVS_LOGDIR={d}", f"OVS_SYSCONFDIR={d}"]
    db = f"unix:{d}/db.sock"
    R.run(["ovsdb-tool", "create", str(d / "conf.db"), SCHEMA])
    procs = []
    try:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}   # they log to files in d
        procs.append(subprocess.Popen(["ip", "netns", "exec", node, *env, "ovsdb-server", str(d / "conf.db"),
                                       f"--remote=punix:{d}/db.sock", f"--unixctl={d}/ovsdb-server.ctl",
                                       f"--log-file={d}/ovsdb-server.log"], **quiet))
        _wait(d / "db.sock", procs[-1], "ovsdb-server")
        R.run(["ovs-vsctl", f"--db={db}", "--no-wait", "init"])
        procs.append(subprocess.Popen(["ip", "netns", "exec", node, *env, "ovs-vswitchd", db,
                                       f"--unixctl={d}/ovs-vswitchd.ctl", f"--log-file={d}/ovs-vswitchd.log"], **quiet))
        _wait(d / "ovs-vswitchd.ctl", procs[-1], "ovs-vswitchd")
        vsctl = ["ovs-vsctl", f"--db={db}", "--timeout=20"]
        R.run([*vsctl, "add-br", "cnitbr", "--", "set", "bridge", "cnitbr", "datapath_type=system"])
        for pod, port, ip in ((a, "cnpa0", "10.77.0.1"), (b, "cnpb0", "10.77.0.2")):
            R.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], netns=pod)
            R.run(["ip", "-n", node, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod])
            R.run(["ip", "-n", node, "link", "set", port, "up"])
            R.run(["ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0"])
            R.run(["ip", "-n", pod, "link", "set", "eth0", "up"])
            R.run([*vsctl, "add-port", "cnitbr", port])
        yield a, node, b
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        R.run(["ip", "link", "del", "ovs-system"], check=False)   # the kernel datapath, if left


def _send(a: str, port: int, count: int) -> None:
    R.run([sys.executable, "-c", SENDER, "10.77.0.2", str(port), str(count)], netns=a, timeout=120)


def test_ovs_kernel_process_time_and_upcalls(ovs_path):
    a, node, b = ovs_path
    port = random.randint(20000, 60000)
    with Session() as s:
        ps = ProbeSet(["ovs_kernel"], ifaces=[(node, "cnpa0")], session=s)
        choice = ps.start()["ovs_kernel"]
        assert choice.hooks["ovs_dp_process_packet"] == "kprobe"
        assert choice.hooks["openvswitch:ovs_dp_upcall"] == "tracepoint"
        # 1) the kernel flow table starts empty: the first packets go up to ovs-vswitchd
        _send(a, port, 5)
        time.sleep(3)   # vswitchd installs the megaflow (slowly, under TCG)
        first = [f for f in ps.snapshot() if f.map == "ovs_upcall_agg"]
        # 2) the flow is in the kernel now: the same traffic stays there
        ps.reset()
        _send(a, port, COUNT)
        figs = ps.snapshot()
    assert len(first) == 1 and first[0].backend == "tracepoint" and first[0].hist.count >= 1
    by_fn = {f.key["fn"]: f for f in figs if f.map == "ovs_agg"}
    upcalls = sum(f.hist.count for f in figs if f.map == "ovs_upcall_agg")
    print({fn: (f.hist.count, round(f.hist.mean)) for fn, f in by_fn.items()},
          f"upcalls: {first[0].hist.count} while cold, {upcalls} of {COUNT} once the flow was installed")
    assert set(by_fn) >= {"receive", "process", "actions"}
    process = by_fn["process"]
    # every datagram entered through A's port and was processed once (ARP may add a couple)
    assert COUNT <= process.hist.count <= COUNT + 4
    assert process.backend == "kprobe" and process.key["iface"].endswith("cnpa0")
    # nesting: receive includes process, which includes the actions of the packets it forwarded
    assert by_fn["receive"].hist.count == process.hist.count
    assert by_fn["receive"].hist.mean >= process.hist.mean >= by_fn["actions"].hist.mean
    assert upcalls < COUNT // 2

"""OVS collector on a real, private OVS (userspace datapath): crafted packets -> exact flow deltas.

The OVS daemons are not running on this host, so each test starts its own ovsdb-server and
ovs-vswitchd inside a cnit-prefixed switch namespace with its own rundir; both are recorded
in the state file before creation and the namespace removal kills the daemons.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from cnitrace.collectors.base import delta
from cnitrace.collectors.ovs.parse import Datapath, Megaflow, OfFlow, OfTable
from cnitrace.collectors.ovs.source import OvsCollector, OvsTarget
from cnitrace.core.session import Session

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def _run(*argv: str, netns: str | None = None) -> str:
    full = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    return subprocess.run(full, check=True, capture_output=True, text=True, timeout=30).stdout


def _wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


class PrivateOvs:
    """ovsdb-server + ovs-vswitchd (datapath_type=netdev) in a switch netns, with pod netns ports."""

    def __init__(self, session: Session, tag: str | None = None):
        self.s = session
        self.tag = tag or uuid.uuid4().hex[:6]
        self.rundir = f"/tmp/cnit-ovs-{self.tag}"
        self.swns = f"cnit-sw{self.tag}"
        self.bridge = f"cnitbr{self.tag[:4]}"
        self.pods: dict[int, str] = {}

    @property
    def target(self) -> OvsTarget:
        return OvsTarget(rundir=self.rundir, ctl=f"{self.rundir}/vswitchd.ctl", netns=self.swns)

    def vsctl(self, *args: str) -> str:
        return _run("ovs-vsctl", f"--db=unix:{self.rundir}/db.sock", "--timeout=10", *args)

    def ofctl(self, *args: str) -> str:
        return _run("ovs-ofctl", args[0], f"unix:{self.rundir}/{self.bridge}.mgmt", *args[1:])

    def start(self) -> "PrivateOvs":
        self.s.track("path", self.rundir)
        os.makedirs(self.rundir, mode=0o700)
        self.s.track("netns", self.swns)
        _run("ip", "netns", "add", self.swns)
        _run("ip", "-n", self.swns, "link", "set", "lo", "up")
        _run("ovsdb-tool", "create", f"{self.rundir}/conf.db", SCHEMA)
        env_opts = [f"--pidfile={self.rundir}/%s.pid", "--detach", "-vconsole:off",
                    f"--log-file={self.rundir}/%s.log"]
        _run("ovsdb-server", f"{self.rundir}/conf.db", f"--remote=punix:{self.rundir}/db.sock",
             f"--unixctl={self.rundir}/ovsdb.ctl", *(o % "ovsdb" if "%s" in o else o for o in env_opts),
             netns=self.swns)
        _wait_for(f"{self.rundir}/db.sock")
        self.vsctl("--no-wait", "init")
        subprocess.run(["ip", "netns", "exec", self.swns, "env", f"OVS_RUNDIR={self.rundir}",
                        "ovs-vswitchd", f"unix:{self.rundir}/db.sock", f"--unixctl={self.rundir}/vswitchd.ctl",
                        *(o % "vswitchd" if "%s" in o else o for o in env_opts)],
                       check=True, capture_output=True, timeout=30)
        _wait_for(f"{self.rundir}/vswitchd.ctl")
        self.vsctl("add-br", self.bridge, "--", "set", "bridge", self.bridge, "datapath_type=netdev")
        _wait_for(f"{self.rundir}/{self.bridge}.mgmt")
        self.ofctl("del-flows")
        return self

    def add_pod(self, i: int) -> str:
        ns = f"cnit-p{i}{self.tag}"
        host_if = f"cnitv{i}{self.tag}"
        self.s.track("netns", ns)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "netns", self.swns, "type", "veth", "peer", "name", "eth0",
             "netns", ns)
        _run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", netns=ns)  # no ND/MLD noise
        _run("ip", "-n", ns, "link", "set", "eth0", "address", f"02:00:00:00:00:{i:02x}")
        _run("ip", "-n", ns, "addr", "add", f"10.99.0.{i}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", self.swns, "link", "set", host_if, "up")
        self.vsctl("add-port", self.bridge, host_if, "--", "set", "interface", host_if, f"ofport_request={i}",
                   f"external_ids:pod-name=pod{i}", "external_ids:pod-namespace=cnit")
        self.pods[i] = ns
        return ns


def send_udp(netns: str, dst: str, port: int, count: int, payload: int = 10) -> None:
    """Send exactly `count` UDP datagrams from inside `netns` (bounded, no replies awaited)."""
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[3])): s.sendto(b'x'*int(sys.argv[4]),(sys.argv[1],int(sys.argv[2])))")
    _run("python3", "-c", code, dst, str(port), str(count), str(payload), netns=netns)


@pytest.fixture
def private_ovs():
    with Session() as s:
        ovs = PrivateOvs(s).start()
        yield ovs


def _wire(ovs: PrivateOvs) -> None:
    p1 = ovs.add_pod(1)
    ovs.add_pod(2)
    _run("ip", "-n", p1, "neigh", "replace", "10.99.0.2", "lladdr", "02:00:00:00:00:02", "dev", "eth0",
         "nud", "permanent")
    for flow in ("table=0,priority=20,udp,in_port=1,tp_dst=9999,actions=goto_table:10",
                 "table=0,priority=0,actions=drop",
                 "table=10,priority=100,udp,nw_dst=10.99.0.2,actions=output:2",
                 "table=10,priority=0,actions=drop"):
        ovs.ofctl("add-flow", flow)


def test_flow_deltas_equal_packets_sent(private_ovs):
    _wire(private_ovs)
    col = OvsCollector(private_ovs.target)
    assert col.available(), col.available().reason
    before = col.snapshot()
    n, payload = 37, 10
    send_udp(private_ovs.pods[1], "10.99.0.2", 9999, n, payload)
    time.sleep(0.2)
    after = col.snapshot()
    d = delta(before, after)
    br = private_ovs.bridge
    frame = 14 + 20 + 8 + payload
    k0 = ("flow", br, "0", 20, "udp,in_port=1,tp_dst=9999")
    k10 = ("flow", br, "10", 100, "udp,nw_dst=10.99.0.2")
    assert d.get(k0, "packets") == n
    assert d.get(k0, "bytes") == n * frame
    assert d.get(k10, "packets") == n
    assert d.get(k10, "bytes") == n * frame
    # the drop flows saw none of the crafted packets
    assert d.get(("flow", br, "10", 0, ""), "packets") == 0
    # the datapath served every packet: one upcall (missed) for the first, megaflow hits for the rest
    dp = [r for r in after.records if isinstance(r, Datapath)]
    assert [x.name for x in dp] == ["netdev@ovs-netdev"]
    dpd = d.changes[("datapath", "netdev@ovs-netdev")]
    assert dpd["hit"] + dpd["missed"] >= n
    assert dpd["missed"] >= 1
    mfs = [m for m in after.records if isinstance(m, Megaflow) and "dst=10.99.0.2" in m.match]
    assert sum(m.packets for m in mfs) == n - 1  # the upcalled first packet is not counted in the megaflow
    tables = {t.table: t for t in after.records if isinstance(t, OfTable)}
    assert tables[0].active == 2 and tables[10].active == 2
    pods = {i["ofport"]: (i["pod"], i["peer_netns"]) for i in after.meta["interfaces"]}
    assert pods[1] == ("cnit/pod1", private_ovs.pods[1]) and pods[2] == ("cnit/pod2", private_ovs.pods[2])
    assert after.meta["masks"]["netdev@ovs-netdev"] >= 1
    # every flow parses with python-ovs
    for f in after.records:
        if isinstance(f, OfFlow):
            assert f.structured().match is not None
    assert not [w for w in after.warnings if "unparsed" in w]


def test_named_tables_are_reported(private_ovs):
    _wire(private_ovs)
    _run("ovs-ofctl", "-O", "OpenFlow15", "mod-table", f"unix:{private_ovs.rundir}/{private_ovs.bridge}.mgmt",
         "10", "name:Forward")
    snap = OvsCollector(private_ovs.target).snapshot()
    assert snap.meta["table_names"][private_ovs.bridge] == {"10": "Forward"}

"""The `antrea` lab datapath: a private Open vSwitch running Antrea's pipeline in the node netns.

Why a private OVS: the lab must never touch the host's OVS, so it runs its own ovsdb-server
and ovs-vswitchd, started *inside* the lab's node namespace with their own cnit-named
rundir, database and sockets. Both are recorded as "process" records the moment they exist
(and die with the node namespace anyway, whose remover kills every pid in it).

Datapath type: the kernel datapath (`system`) when the openvswitch module is loaded or
loadable (the microVM), else the userspace one (`netdev`) -- this CI host has no module.

--l7: Antrea sends L7 traffic to an engine (Suricata) through TrafficControl ports; the lab
does the same with the lab's HTTP proxy: OVS redirects the server's HTTP port to
antrea-tc-tap0 after the policy tables, a REDIRECT in the node netns hands it to the proxy,
and the proxy's own connection to the server re-enters OVS by antrea-tc-tap1, classified as
TrafficControl return traffic (it skips the ingress policy, as returned engine traffic does).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cnitrace.core.errors import ToolError
from cnitrace.lab.datapaths import antrea_flows as af
from cnitrace.lab import l7proxy
from cnitrace.lab.datapath import Datapath
from cnitrace.lab.model import CounterRef, GroundTruth, LabSpec, Topology
from cnitrace.lab.policy import port_rules
from cnitrace.lab.topology import built, short_hash
from cnitrace.core.runner import Runner
from cnitrace.core.state import process_start_time, state_dir

if TYPE_CHECKING:
    from cnitrace.core.session import Session

BRIDGE = "br-int"
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
GATEWAY_MAC = "0a:58:0a:f4:00:01"
FIRST_POD_OFPORT = 3
START_TIMEOUT = 10.0
# --l7: TrafficControl target/return ports (OVS internal ports in the node netns) and the proxy.
TC_TARGET = af.OfPort(af.TC_TARGET_PORT, 10, "0a:58:a9:fe:00:0a", "169.254.0.10")
TC_RETURN = af.OfPort(af.TC_RETURN_PORT, 11, "0a:58:a9:fe:00:0b", "")
L7_PORT = 15001


def rundir(lab: str) -> Path:
    return state_dir() / f"cnit-{lab}-ovs"


def antrea_iface_name(pod_name: str, namespace: str, lab: str) -> str:
    """Antrea's container interface name: the pod name cut to 8, '-', 6 hex of a hash (15 chars)."""
    return f"{pod_name[:8]}-{short_hash(lab, namespace, pod_name, n=6)}"


def choose_datapath_type(module_loaded: bool, module_available: bool) -> str:
    """`system` (kernel datapath) when the openvswitch module is there, else `netdev` (userspace)."""
    return "system" if module_loaded or module_available else "netdev"


def detect_datapath_type(runner: Runner) -> str:
    loaded = Path("/sys/module/openvswitch").exists()
    available = False
    if not loaded and runner.which("modprobe"):
        available = runner.run(["modprobe", "-q", "openvswitch"], check=False).ok
    return choose_datapath_type(loaded, available and Path("/sys/module/openvswitch").exists())


def pod_name(index: int) -> str:
    return "server-0" if index == 0 else f"client-{index}"


@dataclasses.dataclass(frozen=True)
class OvsPaths:
    """The private OVS instance's files, all under one cnit-named rundir."""

    dir: Path

    @property
    def db(self) -> str:
        return f"unix:{self.dir}/db.sock"

    @property
    def mgmt(self) -> str:
        return f"unix:{self.dir}/{BRIDGE}.mgmt"

    @property
    def vswitchd_ctl(self) -> str:
        return str(self.dir / "ovs-vswitchd.ctl")

    def vsctl(self, *args: str) -> list[str]:
        return ["ovs-vsctl", f"--db={self.db}", "--timeout=10", *args]

    def ofctl(self, *args: str) -> list[str]:
        return ["ovs-ofctl", "-O", "OpenFlow15", *args]

    def env(self) -> list[str]:
        d = str(self.dir)
        return ["env", f"OVS_RUNDIR={d}", f"OVS_DBDIR={d}", f"OVS_LOGDIR={d}", f"OVS_SYSCONFDIR={d}"]


def _wait_for(path: Path, proc, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise ToolError(f"{what} exited with status {proc.returncode} (see {path.parent}/{what}.log)")
        if time.monotonic() > deadline:
            raise ToolError(f"{what} did not start within {START_TIMEOUT:g} s")
        time.sleep(0.02)


def start_ovs(session: "Session", netns: str, paths: OvsPaths) -> None:
    """ovsdb-server + ovs-vswitchd for this lab only, inside the node netns."""
    r = session.runner
    session.track("path", str(paths.dir))
    paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    r.run(["ovsdb-tool", "create", str(paths.dir / "conf.db"), SCHEMA])
    daemons = [
        ("ovsdb-server", [str(paths.dir / "conf.db"), f"--remote=punix:{paths.dir}/db.sock",
                          f"--unixctl={paths.dir}/ovsdb-server.ctl"], paths.dir / "db.sock"),
        ("ovs-vswitchd", [paths.db, f"--unixctl={paths.vswitchd_ctl}"], Path(paths.vswitchd_ctl)),
    ]
    for name, args, ready in daemons:
        proc = r.spawn([*paths.env(), name, *args, f"--log-file={paths.dir}/{name}.log"],
                       netns=netns, log=str(paths.dir / f"{name}.out"))
        session.track("process", f"{netns}/{name}", pid=proc.pid, start_time=process_start_time(proc.pid), netns=netns)
        _wait_for(ready, proc, name)
        if name == "ovsdb-server":
            r.run(paths.vsctl("--no-wait", "init"))


class Antrea(Datapath):
    name = "antrea"
    policy_stage = "ovs"
    description = "Antrea: OVS br-int with Antrea's named multi-table pipeline, ct() zones, conjunctions"
    tools = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ethtool")
    routed = False
    bridge = BRIDGE
    supports_l7 = True

    def node_iface_name(self, lab: str, index: int) -> str:
        return antrea_iface_name(pod_name(index), "default", lab)

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        paths = OvsPaths(rundir(topo.lab))
        dp_type = detect_datapath_type(r)
        start_ovs(session, topo.node_netns, paths)
        gw_ip = topo.pods[0].gateway
        ports = []
        for i, p in enumerate(topo.pods):
            ports += ["--", "add-port", BRIDGE, p.node_iface, "--", "set", "Interface", p.node_iface,
                      f"ofport_request={FIRST_POD_OFPORT + i}",
                      f"external_ids:pod-name={pod_name(i)}", "external_ids:pod-namespace=default"]
        r.run(paths.vsctl(
            "add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, f"datapath_type={dp_type}", "fail_mode=secure",
            "other_config:disable-in-band=true",
            "--", "add-port", BRIDGE, af.GATEWAY_PORT, "--", "set", "Interface", af.GATEWAY_PORT,
            "type=internal", f"ofport_request={af.GATEWAY_OFPORT}", *ports, *self._tc_ports(spec),
            *af.table_name_args(BRIDGE)))
        ofports = self._ofports(r, paths)
        # Node side: gateway address, veths up. Pod side: /24, default via the gateway, and no TX
        # checksum offload (a veth hands partial checksums to OVS, which conntrack marks invalid).
        prefix = topo.pods[0].prefix
        node_cmds = [f"link set {af.GATEWAY_PORT} address {GATEWAY_MAC}",
                     f"addr add {gw_ip}/{prefix} dev {af.GATEWAY_PORT}", f"link set {af.GATEWAY_PORT} up"]
        node_cmds += [f"link set {p.node_iface} up" for p in topo.pods]
        if spec.l7:
            node_cmds += self._tc_plumbing(topo)
        r.run(["ip", "-n", topo.node_netns, "-batch", "-"], input="\n".join(node_cmds) + "\n")
        if spec.l7:
            r.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{TC_TARGET.name}.rp_filter=0",
                   f"net.ipv4.conf.{TC_RETURN.name}.arp_ignore=8"], netns=topo.node_netns)
        for p in topo.pods:
            cmds = [f"addr add {p.ip}/{p.prefix} dev {p.iface}", f"link set {p.iface} up",
                    f"route add default via {p.gateway} dev {p.iface}"]
            r.run(["ip", "-n", p.netns, "-batch", "-"], input="\n".join(cmds) + "\n")
            r.run(["ethtool", "-K", p.iface, "tx", "off"], netns=p.netns)
        topo = dataclasses.replace(topo, bridge=BRIDGE)
        for p in topo.pods:
            topo = topo.with_pod(dataclasses.replace(p, ofport=ofports[p.node_iface]))
        flows = af.pipeline(self.pipeline_spec(topo, spec, ofports[af.GATEWAY_PORT], ofports))
        flow_file = paths.dir / "flows.txt"
        flow_file.write_text("\n".join(flows) + "\n")
        t0 = time.monotonic()
        r.run(paths.ofctl("--bundle", "add-flows", paths.mgmt, str(flow_file)), timeout=120)
        program_seconds = time.monotonic() - t0
        # built(): node-side ifindexes read back, as every datapath does (the profile times by them)
        return built(r, topo, program_seconds, ovs_rundir=str(paths.dir), ovs_db=paths.db, ovs_mgmt=paths.mgmt,
                     ovs_ctl=paths.vswitchd_ctl, datapath_type=dp_type, flows=len(flows),
                     gateway={"name": af.GATEWAY_PORT, "ip": gw_ip, "mac": GATEWAY_MAC,
                              "ofport": ofports[af.GATEWAY_PORT]},
                     tables=list(af.TABLES))

    @staticmethod
    def _ofports(r: Runner, paths: OvsPaths) -> dict[str, int]:
        out = r.run(paths.vsctl("--format=json", "--columns=name,ofport", "list", "Interface")).stdout
        rows = json.loads(out)["data"]
        got = {name: int(ofport) for name, ofport in rows}
        bad = [n for n, o in got.items() if o < 0]
        if bad:
            raise ToolError(f"OVS could not open port(s) {', '.join(sorted(bad))}")
        return got

    @staticmethod
    def _tc_ports(spec: LabSpec) -> list[str]:
        args: list[str] = []
        for p in (TC_TARGET, TC_RETURN) if spec.l7 else ():
            args += ["--", "add-port", BRIDGE, p.name, "--", "set", "Interface", p.name, "type=internal",
                     f"ofport_request={p.ofport}"]
        return args

    @staticmethod
    def _tc_plumbing(topo: Topology) -> list[str]:
        """The TrafficControl ports in the node netns: the target (where the proxy receives, via
        REDIRECT) and the return port (where the proxy's own connection to the server leaves, as
        an L7 engine's traffic returns to OVS). A static neighbour keeps ARP off the return port."""
        srv, gw_ip = topo.server, topo.pods[0].gateway
        return [f"link set {TC_TARGET.name} address {TC_TARGET.mac}", f"addr add {TC_TARGET.ip}/32 dev {TC_TARGET.name}",
                f"link set {TC_TARGET.name} up", f"link set {TC_RETURN.name} address {TC_RETURN.mac}",
                f"link set {TC_RETURN.name} up",
                f"neigh replace {srv.ip} lladdr {srv.mac} dev {TC_RETURN.name} nud permanent",
                f"route add {srv.ip}/32 dev {TC_RETURN.name} src {gw_ip}"]

    @staticmethod
    def pipeline_spec(topo: Topology, spec: LabSpec, gw_ofport: int,
                      ofports: dict[str, int] | None = None) -> af.PipelineSpec:
        """The lab topology and policy as the pure pipeline generator's input."""
        def port(p) -> af.OfPort:
            return af.OfPort(p.node_iface, p.ofport, p.mac, p.ip)
        gw = af.OfPort(af.GATEWAY_PORT, gw_ofport, GATEWAY_MAC, topo.pods[0].gateway)
        tc: dict = {}
        if spec.l7:
            ofports = ofports or {}
            tc = {"l7_port": topo.allowed_port,
                  "tc_target": dataclasses.replace(TC_TARGET, ofport=ofports.get(TC_TARGET.name, TC_TARGET.ofport)),
                  "tc_return": dataclasses.replace(TC_RETURN, ofport=ofports.get(TC_RETURN.name, TC_RETURN.ofport))}
        return af.PipelineSpec(
            subnet=topo.subnet, gateway=gw, pods=tuple(port(p) for p in topo.pods), server=port(topo.server),
            clients=tuple(p.ip for p in topo.clients), rules=af.policy_rules(port_rules(topo, spec)), **tc)

    def l7(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        """TrafficControl-style detour: OVS redirects the server's HTTP port to antrea-tc-tap0, where
        a REDIRECT hands it to the proxy; the proxy reaches the server through antrea-tc-tap1."""
        proxy = l7proxy.start(session, topo, spec.l7_proxy, listen_port=L7_PORT,
                              upstream=(topo.server.ip, topo.allowed_port))
        rules = (f"*nat\n:ANTREA-L7-REDIRECT - [0:0]\n-A PREROUTING -i {TC_TARGET.name} -j ANTREA-L7-REDIRECT\n"
                 f"-A ANTREA-L7-REDIRECT -p tcp --dport {topo.allowed_port} -m comment --comment "
                 f"\"antrea: TrafficControl target to the L7 proxy\" -j REDIRECT --to-ports {L7_PORT}\nCOMMIT\n")
        restore = "iptables-legacy-restore" if spec.backend == "legacy" else "iptables-nft-restore"
        session.runner.run([restore, "--noflush"], input=rules, netns=topo.node_netns)
        return dataclasses.replace(topo, extra={**topo.extra, "l7": proxy.to_json()})

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        backend = topo.extra.get("datapath_type", "")

        def ref(table: str, ck: int) -> CounterRef:
            return CounterRef(kind="ovs", netns=topo.node_netns, backend=backend, table=table,
                              cookie=ck, comment=f"0x{ck:x}")
        return GroundTruth(
            allowed={proto: ref("IngressRule", af.cookie(af.CAT_POLICY_RULE, cid))
                     for proto, cid in af.ALLOW_CONJ_ID.items()},
            denied=ref("IngressDefaultRule", af.cookie(af.CAT_DEFAULT_DENY)),
            evaluations={proto: 1 for proto in af.ALLOW_CONJ_ID},
            per="packet",
            notes="OVS classifies a NEW packet against IngressRule in one tuple-space lookup "
                  "(cost grows with distinct port masks, not linearly with N); established and "
                  "related packets bypass the policy tables at AntreaPolicyIngressRule (ct_state=-new+est).",
        )

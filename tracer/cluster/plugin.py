"""`kubectl cnitrace`: the kubectl plugin (the `kubectl-cnitrace` console script).

    kubectl cnitrace report --all-nodes [--namespace NS] [--json OUT] [--html OUT]
    kubectl cnitrace report --node N
    kubectl cnitrace profile --node N --iface 'cali*' [--duration S]

`report` reads each agent's last window (`/report.json`) through the API server's pod proxy and
merges them (tracer/cluster/merge.py); `--endpoints URL,...` reads agents directly instead (no
cluster: local agents, tests). `profile` runs a fresh `cnitrace profile` window inside the node's
agent pod with `kubectl exec` — a window of the length and interfaces asked for, which the agent's
rolling window cannot give — and renders its document here.
"""

from __future__ import annotations

import click

from cnitrace import __version__
from cnitrace.cluster.collect import KubectlFetcher, UrlFetcher, collect, named_docs, parse_document, split_endpoints
from cnitrace.cluster.command import write_cluster_outputs
from cnitrace.cluster.manifest import DEFAULT_NAMESPACE
from cnitrace.cluster.merge import merge
from cnitrace.core.errors import ExitStatus, ToolError, UsageError
from cnitrace.core.selection import validate_glob
from cnitrace.core.entry import run_click
from cnitrace.outputs import write_document
from cnitrace.reports.profile.html import render_html as render_profile_html
from cnitrace.reports.profile.terminal import render_profile


def _say(msg: str) -> None:
    click.echo(f"· {msg}", err=True)


def _fetcher(namespace: str, context: str | None, endpoints: tuple[str, ...]):
    if endpoints:
        return UrlFetcher(split_endpoints(endpoints))
    return KubectlFetcher(namespace, context=context)


def _write_profile(doc: dict, json_out: str | None, html_out: str | None) -> None:
    write_document(doc, json_out, html_out, render_profile_html, render_profile)


_common = [
    click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True, help="The agents' namespace."),
    click.option("--context", default=None, help="kubeconfig context for kubectl."),
]


def common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kubectl-cnitrace")
def cli() -> None:
    """cnitrace across a Kubernetes cluster: the agents' reports, merged; a profile on one node."""


@cli.command()
@click.option("--all-nodes", is_flag=True, help="Every node with a running agent, merged into one cluster report.")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="This node's report (repeatable: merged).")
@common
@click.option("--endpoints", multiple=True, metavar="URL[,URL...]",
              help="Read agents at these URLs instead of through kubectl (e.g. http://127.0.0.1:9477).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the document here ('-': stdout).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def report(all_nodes, nodes, namespace, context, endpoints, json_out, html_out) -> int:
    """The agents' last windows: one node's profile, or several merged with outliers named.

    Exit 1 when an agent could not be read (the others are still merged and shown).
    """
    if all_nodes == bool(nodes):
        raise UsageError("choose --all-nodes or --node NODE")
    fetcher = _fetcher(namespace, context, endpoints)
    docs, warnings = collect(fetcher, nodes if not endpoints else ())
    if endpoints:
        docs = named_docs(docs, nodes)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if not docs:
        raise ToolError("no agent answered with a report" + (f" ({warnings[0]})" if warnings else ""))
    if len(docs) == 1:
        if all_nodes:
            click.echo(f"warning: only one node's report ({docs[0][0]}): shown as a profile, nothing to merge",
                       err=True)
        _write_profile(docs[0][2], json_out, html_out)
        return ExitStatus.OK if not warnings else ExitStatus.FAILURE
    doc = merge(docs)
    doc["warnings"] = [*warnings, *doc["warnings"]]
    write_cluster_outputs(doc, json_out, html_out)
    return ExitStatus.OK if not warnings else ExitStatus.FAILURE


@cli.command()
@click.option("--node", required=True, metavar="NODE", help="The node to profile (its agent pod runs the profile).")
@click.option("--iface", "ifaces", multiple=True, required=True, metavar="GLOB", help="Interfaces, e.g. 'cali*'.")
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(0.5, 600), help="Window in seconds.")
@common
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the document here ('-': stdout).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
def profile(node, ifaces, duration, namespace, context, json_out, html_out) -> int:
    """Profile NODE now: `cnitrace profile` inside its agent pod (kubectl exec), rendered here."""
    for g in ifaces:
        validate_glob(g)
    fetcher = KubectlFetcher(namespace, context=context)
    targets, _ = fetcher.targets()
    target = next((t for t in targets if t.node == node), None)
    if target is None:
        raise UsageError(f"no running cnitrace agent on node {node}"
                         + (f" (agents on: {', '.join(sorted(t.node for t in targets))})" if targets else ""))
    doc = parse_document(fetcher.profile(target, ifaces, duration, say=_say), f"{target.where} (profile)")
    _write_profile(doc, json_out, html_out)
    return ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    """Entry point and the one error boundary."""
    return run_click(cli, "kubectl-cnitrace", argv)

"""The `cnitrace study` command: options → config → one call → render → exit status."""

from __future__ import annotations

import os

import click

from cnitrace.core.errors import ExitStatus, NotRootError
from cnitrace.outputs import write_document


def _write(doc: dict, json_out: str | None, html_out: str | None) -> None:
    from cnitrace.reports.study.html import render_study_html

    write_document(doc, json_out, html_out, render_study_html)


@click.command()
@click.option("--quick", is_flag=True, help="Fewer datapaths per family and short windows (under 15 minutes).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the JSON document here.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write the HTML report here.")
@click.option("--backend", default="legacy", show_default=True, metavar="legacy|nft",
              help="iptables backend of the iptables datapaths.")
@click.option("--families", metavar="LIST", hidden=True, help="Only these families (development runs).")
@click.option("--datapaths", metavar="LIST", hidden=True, help="Only these datapaths (development runs).")
def study(quick: bool, json_out: str | None, html_out: str | None, backend: str, families: str | None,
          datapaths: str | None) -> int:
    """Reproduce the seed study's experiments on the lab, beside its published figures.

    Families: L3/L4 policy off vs on, policy complexity (100/500/1,000 rules), concurrency (the
    study's 50/100/200 pods scaled to 5/10/20), intra- vs inter-node placement, and L7 off vs on
    (Cilium through its proxy, Antrea through a stand-in). Each result is set beside the study's
    figure as a shape and explained by the datapath stage that causes it. Ctrl-C removes the lab
    and writes a partial document marked interrupted.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cnitrace.reports.study.terminal import render_study
    from cnitrace.study import run as study_run

    if backend not in ("legacy", "nft"):
        raise click.BadParameter("choose legacy or nft", param_hint="--backend")
    cfg = study_run.make_config(quick=quick, families=families, datapaths=datapaths, backend=backend)
    if os.geteuid() != 0:
        raise NotRootError("this command needs root (run it with sudo)")
    err = Console(stderr=True, width=100)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("study", total=len(cfg.plan.points))

        def progress(ev: dict) -> None:
            if ev["event"] == "calibrate":
                bar.update(task, description=f"calibrating ({ev['id']})")
            elif ev["event"] == "point":
                bar.update(task, description=ev["id"])
            elif ev["event"] == "done":
                bar.update(task, completed=ev["index"] + 1)

        doc = study_run.run(cfg, progress=progress)
    render_study(doc)
    _write(doc, json_out, html_out)
    if doc["interrupted"]:
        return ExitStatus.INTERRUPTED
    if doc["points_failed"] or doc["leftovers"]:
        return ExitStatus.FAILURE
    return ExitStatus.OK

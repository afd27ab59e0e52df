"""The command line: options → config → one call → render → exit status.

Domain code never imports click. `main()` is the single error boundary: a CnitraceError
becomes one line on stderr and its exit status; Ctrl-C becomes 130; nothing else
prints a traceback unless --debug is given.
"""

from __future__ import annotations

import json
import os
import sys

import click

from cnitrace import __version__
from cnitrace.errors import CnitraceError, ExitStatus, NotRootError


class Ctx:
    """Carried by the group to every command."""

    def __init__(self, debug: bool):
        self.debug = debug


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("this command needs root (run it with sudo)")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnitrace")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Node-local kernel datapath tracer and policy-cost profiler for Kubernetes CNIs."""
    ctx.obj = Ctx(debug)


# --- doctor -----------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> int:
    """Check what this node can do and which probe backend each stage will use.

    Exit 0 when profiling can run (at least counters only), 1 otherwise.
    """
    from cnitrace.doctor import run_doctor
    from cnitrace.reports.terminal import render_doctor

    report = run_doctor()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        render_doctor(report)
    return ExitStatus.OK if report.can_profile else ExitStatus.FAILURE


# --- cleanup ----------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def cleanup(as_json: bool) -> int:
    """Remove every object a cnitrace run or lab left behind (after a kill, say)."""
    from cnitrace.state import StateFile, cleanup as do_cleanup

    require_root()
    result = do_cleanup(StateFile())
    if as_json:
        click.echo(json.dumps({
            "removed": [r.to_json() for r in result.removed],
            "failed": [{"record": r.to_json(), "error": e} for r, e in result.failed],
        }, indent=2))
    else:
        for r in result.removed:
            click.echo(f"removed {r.kind} {r.name}")
        for r, e in result.failed:
            click.echo(f"could not remove {r.kind} {r.name}: {e}", err=True)
        if not result.removed and not result.failed:
            click.echo("nothing to clean up")
    return ExitStatus.FAILURE if result.failed else ExitStatus.OK


# --- report / diff ------------------------------------------------------------------------------

@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--html", "html_out", type=click.Path(dir_okay=False, writable=True), help="Also write an HTML report.")
def report(file: str, html_out: str | None) -> int:
    """Re-render a saved profile (JSON) in the terminal, and optionally as HTML."""
    from cnitrace.reports.html import render_html
    from cnitrace.reports.load import load_profile
    from cnitrace.reports.profile_terminal import render_profile

    doc = load_profile(file)
    render_profile(doc)
    if html_out:
        with open(html_out, "w", encoding="utf-8") as f:
            f.write(render_html(doc))
        click.echo(f"wrote {html_out}")
    return ExitStatus.OK


@cli.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option("--top", default=15, show_default=True, type=click.IntRange(1, 1000), help="Rows to show.")
def diff(before: str, after: str, top: int) -> int:
    """Show what grew between two saved profile runs."""
    from cnitrace.reports.diff import diff_docs
    from cnitrace.reports.document import fmt_ns
    from cnitrace.reports.load import load_profile

    changes = diff_docs(load_profile(before), load_profile(after))
    click.echo(f"{'node':58} {'before':>10} {'after':>10} {'change':>12}")
    for c in changes[:top]:
        ratio = f" ×{c.ratio:.2f}" if c.ratio else ""
        change = ("+" if c.delta_ns >= 0 else "-") + fmt_ns(abs(c.delta_ns))
        click.echo(f"{c.path[-58:]:58} {fmt_ns(c.before_ns):>10} {fmt_ns(c.after_ns):>10} {change:>12}{ratio}")
    return ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    """Entry point and the one error boundary."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="cnitrace", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"cnitrace: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code else ExitStatus.USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except CnitraceError as exc:
        if debug:
            raise
        click.echo(f"cnitrace: {exc.message}", err=True)
        return exc.exit_status
    return int(rv) if isinstance(rv, int) else ExitStatus.OK

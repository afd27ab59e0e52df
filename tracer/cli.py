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

"""The one error boundary of a click program (`cnitrace`, `kubectl-cnitrace`): usage errors,
Ctrl-C and cnitrace's own errors become one line on stderr and an exit status."""

from __future__ import annotations

from typing import Any

import click

from cnitrace.core.errors import CnitraceError, ExitStatus


def run_click(group: Any, prog_name: str, argv: list[str] | None, debug: bool = False) -> int:
    try:
        rv = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"{prog_name}: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code else ExitStatus.USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except CnitraceError as exc:
        if debug:
            raise
        click.echo(f"{prog_name}: {exc.message}", err=True)
        return exc.exit_status
    return int(rv) if isinstance(rv, int) else ExitStatus.OK

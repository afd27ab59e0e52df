"""Writing a command's document: `--json FILE` (or `-`: stdout) and `--html FILE`, one way for
every command (profile, sweep, analyze, study, merge, the kubectl plugin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click


def write_document(doc: dict[str, Any], json_out: str | None, html_out: str | None,
                   render_html: Callable[[dict[str, Any]], str],
                   render_terminal: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Render to the terminal (when given, and unless the JSON goes to stdout), then write the
    JSON and the HTML asked for."""
    text = json.dumps(doc, indent=1, sort_keys=True)
    if json_out == "-":
        click.echo(text)
    elif render_terminal is not None:
        render_terminal(doc)
    if json_out and json_out != "-":
        Path(json_out).write_text(text, encoding="utf-8")
        click.echo(f"wrote {json_out}", err=True)
    if html_out:
        Path(html_out).write_text(render_html(doc), encoding="utf-8")
        click.echo(f"wrote {html_out}", err=True)

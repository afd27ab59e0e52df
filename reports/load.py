"""Reading a saved profile document: one clear error line for anything that is not one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnitrace.core.errors import UsageError
from cnitrace.reports.document import validate


def load_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read ({exc.__class__.__name__})") from None
    return parse_profile(text, str(p))


def parse_profile(text: str, where: str) -> dict[str, Any]:
    """A profile document's text (a file, an agent's /report.json) -> the document, or one clear line."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: not a cnitrace profile document")
    errors = validate(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{where}: not a valid cnitrace profile document: {errors[0]}{more}")
    return doc

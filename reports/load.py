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
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read ({exc.__class__.__name__})") from None
    except ValueError as exc:
        raise UsageError(f"{p}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{p}: not a cnitrace profile document")
    errors = validate(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"{p}: not a valid cnitrace profile document: {errors[0]}{more}")
    return doc

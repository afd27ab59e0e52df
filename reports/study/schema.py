"""The study document's published schema (study.schema.json beside this module) and its check."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def schema() -> dict[str, Any]:
    return json.loads(resources.files("cnitrace.reports.study").joinpath("study.schema.json").read_text("utf-8"))


def validate(doc: dict[str, Any]) -> list[str]:
    """Schema violations as one-line messages (empty when valid)."""
    import jsonschema   # lazily: a test extra, and slow to import

    v = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))]

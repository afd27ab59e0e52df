"""The cluster document's published schema and its validation (like reports/document.py for
the profile document)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def schema() -> dict[str, Any]:
    return json.loads(resources.files("cnitrace.reports.cluster").joinpath("cluster.schema.json").read_text())


def validate(doc: dict[str, Any]) -> list[str]:
    """Schema violations as one-line messages (empty when valid)."""
    import jsonschema   # lazily: a test extra, and slow to import

    v = jsonschema.Draft202012Validator(schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))]

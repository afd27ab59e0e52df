"""Real captures under tests/fixtures, each opening with its `# provenance:` line."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(folder: str, name: str) -> str:
    """A fixture's text; a capture without its provenance line fails the test that reads it."""
    text = (FIXTURES / folder / name).read_text()
    assert text.startswith("# provenance:"), f"{folder}/{name}: no provenance line"
    return text

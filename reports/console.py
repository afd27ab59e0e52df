"""The terminal console every report prints through: text that came from the node or from a paste
(rule comments, program names such as `bpf_network.o:[from-network]`, log lines) is printed as it
is. With rich's markup on, `[from-network]` vanished from the output and `[/var/log/x]` raised
MarkupError, so markup is off and styling goes through `style=` and Text instead of tags."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def plain_console(**kw: Any) -> Console:
    """A Console that never reads its strings as markup (nor highlights them, unless asked)."""
    kw.setdefault("highlight", False)
    return Console(markup=False, **kw)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and (text, style) pairs, e.g. styled(("warning:", "yellow"), " ", w):
    `w` stays literal whatever brackets it holds."""
    return Text.assemble(*parts)

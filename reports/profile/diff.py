"""What grew between two saved profile runs (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.reports.document import Node


@dataclasses.dataclass(frozen=True)
class Change:
    path: str
    kind: str
    before_ns: float | None
    after_ns: float | None

    @property
    def delta_ns(self) -> float:
        return (self.after_ns or 0.0) - (self.before_ns or 0.0)

    @property
    def ratio(self) -> float | None:
        return (self.after_ns / self.before_ns) if self.before_ns and self.after_ns is not None else None


def _index(root: Node) -> dict[str, Node]:
    out: dict[str, Node] = {}

    def go(n: Node, prefix: str) -> None:
        path = f"{prefix}/{n.name}" if prefix else n.name
        out[path] = n
        for c in n.children:
            go(c, path)

    go(root, "")
    return out


def diff_docs(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Per-node ns/packet before and after, largest growth first; nodes on one side only included."""
    ia, ib = _index(Node.from_json(a["tree"])), _index(Node.from_json(b["tree"]))
    changes = []
    for path in ia.keys() | ib.keys():
        na, nb = ia.get(path), ib.get(path)
        kind = (nb or na).kind
        if kind in ("rule", "flow"):
            continue
        changes.append(Change(path, kind, na.ns_per_packet if na else None, nb.ns_per_packet if nb else None))
    return sorted(changes, key=lambda c: -abs(c.delta_ns))

"""The snapshot document's JSON at scale: the fast paths give what the general ones gave, and the
streamed writer prints exactly json.dumps(doc, sort_keys=True)."""

from __future__ import annotations

import dataclasses
import enum
import io
import json
from typing import NamedTuple

import pytest

from cnitrace.collectors import registry
from cnitrace.collectors.iptables.parse import parse
from cnitrace.collectors.netns import InNetns


class Flow(NamedTuple):
    table: int
    match: str


@dataclasses.dataclass(frozen=True)
class Rec:
    name: str
    flows: tuple
    extra: dict
    nested: Flow | None = None


class Kind(enum.IntEnum):
    A = 1


def _general(v):
    """The original, type-test-only conversion the fast paths must agree with."""
    if isinstance(v, tuple) and hasattr(v, "_asdict"):
        return {k: _general(x) for k, x in v._asdict().items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _general(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {str(k): _general(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_general(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


VALUES = [
    None, 1, 1.5, True, "x", Kind.A, (1, "a", None), [Flow(3, "ip")], {"a": (1, 2), 3: Flow(1, "x")},
    Rec("r", (Flow(1, "tcp"), Flow(2, "udp")), {"k": [1, {"z": Kind.A}]}, Flow(0, "")),
    frozenset({1}), object.__class__,
]


@pytest.mark.parametrize("v", VALUES, ids=lambda v: type(v).__name__)
def test_fast_paths_agree_with_the_general_conversion(v):
    assert registry._jsonable(v) == _general(v)
    assert registry._jsonable(v) == _general(v)     # again, now from the per-type field cache


def test_iptables_records_serialise_as_before():
    text = "*filter\n:INPUT ACCEPT [1:2]\n[3:4] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
    for rec in parse(text, "ipv4", "legacy").records:
        wrapped = InNetns("cnit-x", rec)
        out = registry.record_to_json(wrapped)
        assert out["data"] == {"netns": "cnit-x", **_general(rec)}
        assert out["key"] == _general(wrapped.key)


@pytest.mark.parametrize("doc", [
    {"b": [{"x": i, "y": [1, 2], "s": "é\n"} for i in range(1000)], "a": {"z": None, "k": []}, "c": 1.5},
    [], {}, [1] * 600, {"x": []}, [[1] * 300], "text", {"records": [[i] for i in range(257)]},
])
def test_streamed_json_is_json_dumps(doc):
    out = io.StringIO()
    registry.write_json(doc, out.write, chunk=256)
    assert out.getvalue() == json.dumps(doc, sort_keys=True)
    assert json.loads(out.getvalue()) == doc

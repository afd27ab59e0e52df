"""The legacy table blob parser, on blobs the kernel returned for the lab's calico and kube-router
rules (IPT_SO_GET_ENTRIES, captured with their `iptables-legacy-save -t filter`), and fuzzed."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from cnitrace.collectors.iptables.layout import ENTRY_SIZE, TableLayout, parse_blob
from cnitrace.collectors.iptables.parse import parse

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "iptables-layout"


def captured(name: str) -> tuple[dict, TableLayout]:
    doc = json.loads((FIX / f"{name}-lab-filter.json").read_text())
    blob = base64.b64decode(doc["blob_b64"])
    return doc, parse_blob(doc["table"], blob, doc["hook_entry"], doc["underflow"])


@pytest.mark.parametrize("name", ["calico", "kube-router"])
def test_every_chain_of_the_save_has_its_rules_in_the_blob(name):
    doc, lay = captured(name)
    saved = parse((FIX / f"{name}-lab-filter.save").read_text(), "ipv4").records
    rules: dict[str, int] = {}
    for r in saved:
        if hasattr(r, "spec"):
            rules[r.chain] = rules.get(r.chain, 0) + 1
    chains = {r.name for r in saved if not hasattr(r, "spec")}
    assert chains == set(lay.chains)
    for c in chains:
        assert len(lay.chains[c].rules) == rules.get(c, 0), c


@pytest.mark.parametrize("name", ["calico", "kube-router"])
def test_rules_are_contiguous_aligned_entries_inside_the_blob(name):
    _, lay = captured(name)
    for c in lay.chains.values():
        for (o, s), (o2, _) in zip(c.rules, c.rules[1:]):
            assert o + s == o2                    # one rule ends where the next starts
        for o, s in c.rules:
            assert o % 8 == 0 and s % 8 == 0 and s >= ENTRY_SIZE + 32 and o + s <= lay.size
        assert c.length == sum(c.sizes)
    # chains do not overlap
    spans = sorted((c.rules[0][0], c.rules[-1][0] + c.rules[-1][1]) for c in lay.chains.values() if c.rules)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_layout_round_trips_through_json():
    _, lay = captured("kube-router")
    assert TableLayout.from_json(json.loads(json.dumps(lay.to_json()))) == lay


def test_truncated_blob_is_a_value_error():
    doc, _ = captured("calico")
    blob = base64.b64decode(doc["blob_b64"])
    with pytest.raises(ValueError):
        parse_blob("filter", blob[:len(blob) - 50], doc["hook_entry"], doc["underflow"])


def test_a_zero_next_offset_cannot_loop_forever():
    blob = bytearray(ENTRY_SIZE + 40)
    struct.pack_into("=HH", blob, 88, ENTRY_SIZE, 0)
    with pytest.raises(ValueError):
        parse_blob("filter", bytes(blob), [0] * 5, [0] * 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=5))
def test_fuzzed_blobs_parse_or_raise_value_error(blob, hooks):
    try:
        lay = parse_blob("filter", blob, hooks, hooks)
    except ValueError:
        return
    assert all(o + s <= len(blob) for c in lay.chains.values() for o, s in c.rules)

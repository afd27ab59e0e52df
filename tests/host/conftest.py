"""Host-tier fixtures: throwaway network namespaces and node-state snapshots (root only)."""

from __future__ import annotations


import pytest

from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec
from tests.support.nodestate import settled_node_state
from tests.support.netns import Namespaces, unique


@pytest.fixture
def netns():
    """Factory: netns() -> name of a new empty namespace `cnit-t<hex>`, with lo up; removed after."""
    with Namespaces("cnit-t") as make:
        yield make


@pytest.fixture
def unique_name():
    """A fresh cnit-prefixed short name (for labs, bridges, pins) so parallel runs never collide."""
    return lambda: unique("cnit", 4)


@pytest.fixture
def node_before_after():
    """Snapshot the node before; the test calls the returned function to assert it is unchanged."""
    before = settled_node_state()

    def assert_unchanged() -> None:
        after = settled_node_state()
        diff = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        assert not diff, f"node state changed: {sorted(diff)}\n{diff}"

    return assert_unchanged


@pytest.fixture
def lab_factory(unique_name):
    """Factory: lab_factory(datapath, rules, **spec) -> a lab that is up; every lab it made is
    taken down after the test."""
    made = []

    def make(datapath: str, rules: int, **kw):
        lab = manager.up(LabSpec(name=unique_name(), datapath=datapath, rules=rules, **kw))
        made.append(lab.spec.name)
        return lab

    yield make
    for name in made:
        if name in manager.names():
            manager.down(name)

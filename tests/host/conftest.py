"""Host-tier fixtures: throwaway network namespaces and node-state snapshots (root only)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.host.nodestate import node_state


@pytest.fixture
def netns():
    """Factory: netns() -> name of a new empty namespace `cnit-t<hex>`, with lo up; removed after."""
    made: list[str] = []

    def make() -> str:
        name = f"cnit-t{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def unique_name():
    """A fresh cnit-prefixed short name (for labs, bridges, pins) so parallel runs never collide."""
    return lambda: f"cnit{uuid.uuid4().hex[:4]}"


def settled_node_state(timeout: float = 10.0) -> dict:
    """node_state() once it stops changing: the kernel frees a deleted namespace's tc programs and
    links asynchronously (a workqueue), so a snapshot right after an earlier test's teardown can
    still list objects that are already on their way out."""
    import time

    deadline = time.monotonic() + timeout
    prev = node_state()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        cur = node_state()
        if cur == prev:
            return cur
        prev = cur
    return prev


@pytest.fixture
def node_before_after():
    """Snapshot the node before; the test calls the returned function to assert it is unchanged."""
    before = settled_node_state()

    def assert_unchanged() -> None:
        after = settled_node_state()
        diff = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        assert not diff, f"node state changed: {sorted(diff)}\n{diff}"

    return assert_unchanged

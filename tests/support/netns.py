"""Throwaway network namespaces for the host and vm tiers: one way to make and remove them.

Names carry the `cnit` prefix (so the before-stop check and `cnitrace cleanup` recognise
them) and a random tag, so parallel runs never collide. Removal kills whatever still runs
inside first: a namespace with a live process is not freed by `ip netns del`.
"""

from __future__ import annotations

import uuid

from cnitrace.core.runner import DEFAULT_RUNNER, Runner


def unique(prefix: str = "cnit", n: int = 6) -> str:
    return f"{prefix}{uuid.uuid4().hex[:n]}"


class Namespaces:
    """Creates namespaces on demand (lo up); `close()` removes them, newest first."""

    def __init__(self, prefix: str = "cnit-t", runner: Runner = DEFAULT_RUNNER):
        self.prefix = prefix
        self.runner = runner
        self.made: list[str] = []

    def new(self) -> str:
        name = unique(self.prefix, 8)
        self.runner.run(["ip", "netns", "add", name])
        self.made.append(name)
        self.runner.run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    __call__ = new

    def close(self) -> None:
        for name in reversed(self.made):
            pids = self.runner.run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                self.runner.run(["kill", "-9", pid], check=False)
            self.runner.run(["ip", "netns", "del", name], check=False)
        self.made.clear()

    def __enter__(self) -> "Namespaces":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tracked(session, prefix: str = "cnit-b", runner: Runner = DEFAULT_RUNNER):
    """A namespace maker whose namespaces the cnitrace Session records before creating them, so
    they are removed on exit, Ctrl-C, or by `cnitrace cleanup` after a kill (the benches' way)."""

    def new() -> str:
        name = unique(prefix, 8)
        session.track("netns", name)
        runner.run(["ip", "netns", "add", name])
        runner.run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    return new

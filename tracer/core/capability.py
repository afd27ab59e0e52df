"""The capability model: what this host can do, each answer with a reason.

One registry of named checks (installed at start-up by cnitrace.node.checks.register_all) drives `cnitrace doctor`, the probe ladder and the test
skips, so the three can never disagree. A check returns a Check; it never raises
(the registry turns an unexpected exception into an ERROR result with its message).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, Callable, Mapping

from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner


class Status(str, enum.Enum):
    OK = "ok"              # present and verified by trying it
    DEGRADED = "degraded"  # usable with a caveat (e.g. stand-in kernel headers)
    MISSING = "missing"    # not there; the reason says why
    ERROR = "error"        # the check itself failed unexpectedly


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: Status
    reason: str
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status in (Status.OK, Status.DEGRADED)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "reason": self.reason,
                "detail": dict(self.detail)}


CheckFn = Callable[["Host"], Check]
CHECKS: dict[str, CheckFn] = {}


def ok(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, Status.OK, reason, detail)


def degraded(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, Status.DEGRADED, reason, detail)


def missing(name: str, reason: str, **detail: Any) -> Check:
    return Check(name, Status.MISSING, reason, detail)


def safe(name: str, fn: CheckFn) -> CheckFn:
    """`fn` as a check named `name`: exceptions become an ERROR result, never escape."""

    @functools.wraps(fn)
    def wrapped(host: "Host") -> Check:
        try:
            result = fn(host)
        except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
            return Check(name, Status.ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0])
        if result.name != name:
            result = dataclasses.replace(result, name=name)
        return result

    return wrapped


def register(checks: Mapping[str, CheckFn]) -> None:
    """Install the node's checks, in order (cnitrace.node.checks.register_all at start-up)."""
    for name, fn in checks.items():
        CHECKS[name] = safe(name, fn)


def _registered() -> dict[str, CheckFn]:
    if not CHECKS:
        raise ToolError("no capability checks registered: call cnitrace.node.checks.register_all() at start-up")
    return CHECKS


class Host:
    """Evaluates and caches checks for this host (or a replayed one in tests)."""

    def __init__(self, runner: Runner = DEFAULT_RUNNER):
        self.runner = runner
        self._cache: dict[str, Check] = {}

    def check(self, name: str) -> Check:
        if name not in self._cache:
            fn = _registered().get(name)
            if fn is None:
                return Check(name, Status.ERROR, f"unknown capability {name!r}")
            self._cache[name] = fn(self)
        return self._cache[name]

    def usable(self, name: str) -> bool:
        return self.check(name).usable

    def all(self) -> list[Check]:
        return [self.check(n) for n in _registered()]


"""Shared test plumbing: capability-driven skips and the strict-tier rule.

`@pytest.mark.requires("tracepoints", "tc_bpf")` skips with the capability model's own
reason — the same checks `cnitrace doctor` prints. Under CNITRACE_STRICT_TIERS=1 (set by
`make test`, which CI runs) a skip in a root tier (host, vm, faults) is a failure, and so is a tier
that collected tests but passed none: a missing capability fails CI loudly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnitrace.node import checks

checks.register_all()   # the capability registry, installed at start-up as the CLI does
STRICT = os.environ.get("CNITRACE_STRICT_TIERS") == "1"
ROOT_TIERS = ("host", "vm", "faults")
_HOST = None


def tier_of(path: str | os.PathLike) -> str | None:
    parts = Path(path).resolve().parts
    for i, part in enumerate(parts[:-1]):
        if part == "tests" and parts[i + 1] in ("unit", *ROOT_TIERS):
            return parts[i + 1]
    return None


def host():
    global _HOST
    if _HOST is None:
        from cnitrace.core.capability import Host
        _HOST = Host()
    return _HOST


@pytest.fixture(scope="module")
def tc_prog():
    """selftest.bpf.c's on_tc, loaded once (compiling is the slow part); yields the bcc function."""
    from cnitrace.probes import loader

    b = loader.load("selftest.bpf.c", autoload=False)
    fn = b.load_func(b"on_tc", loader.prog_type("SCHED_CLS"))
    yield fn
    b.cleanup()


def pytest_runtest_setup(item: pytest.Item) -> None:
    tier = tier_of(item.path)
    if tier in ROOT_TIERS and os.geteuid() != 0:
        pytest.skip("needs root")
    for mark in item.iter_markers("requires"):
        for cap in mark.args:
            c = host().check(cap)
            if not c.usable:
                pytest.skip(f"{cap}: {c.reason}")


_outcomes: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = tier_of(report.fspath) if report.fspath else None
    if tier is None:
        return
    counts = _outcomes.setdefault(tier, {"passed": 0, "skipped": 0, "failed": 0})
    if report.when == "call" and report.passed:
        counts["passed"] += 1
    elif report.skipped:
        counts["skipped"] += 1
        if STRICT and tier in ROOT_TIERS:
            # Surface it loudly; the session result is turned into a failure below.
            report.outcome = "failed"
            report.longrepr = f"strict tiers: {tier}-tier test skipped: {report.longrepr}"
    elif report.failed:
        counts["failed"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not STRICT:
        return
    collected = {tier_of(i.path) for i in session.items}
    for tier in collected & {"unit", *ROOT_TIERS}:
        if _outcomes.get(tier, {}).get("passed", 0) == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            print(f"\nstrict tiers: the {tier} tier ran no passing test")
    if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""`cnitrace doctor`: what this node can do, and which probe backend each stage will use.

The report is the capability model's answers plus the ladder's choices, in one value the
CLI renders or prints as JSON. The JSON follows DOCTOR_SCHEMA (versioned: bump
SCHEMA_VERSION on any incompatible change) so scripts and the microVM tier can rely on it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cnitrace import __version__
from cnitrace.core.capability import Check, Host
from cnitrace.node import checks as node_checks
from cnitrace.probes.ladder import Choice, choose_all

SCHEMA_ID = "cnitrace.node.doctor"
SCHEMA_VERSION = 1

# The order doctor prints checks in: kernel facts, BPF attach types, datapath tools, the node.
ORDER = ("root", "kernel", "btf", "lockdown", "tracefs", "bcc", "kernel_headers", "tracepoints", "raw_tracepoints", "tp_btf",
         "kprobes", "fentry", "tc_bpf", "xdp", "bpf_stats", "iptables", "nft", "ovs", "ovs_kernel",
         "tools", "cni", "kube_proxy")

_STATUS = {"type": "string", "enum": ["ok", "degraded", "missing", "error"]}
DOCTOR_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cnitrace doctor report",
    "type": "object",
    "required": ["schema", "schema_version", "cnitrace_version", "can_profile", "elapsed_s", "checks",
                 "stages"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "cnitrace_version": {"type": "string"},
        "can_profile": {"type": "boolean"},
        "elapsed_s": {"type": "number", "minimum": 0},
        "checks": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["name", "status", "reason", "detail"],
            "properties": {"name": {"type": "string"}, "status": _STATUS,
                           "reason": {"type": "string", "minLength": 1}, "detail": {"type": "object"}}}},
        "stages": {"type": "array", "items": {
            "type": "object", "required": ["stage", "backend", "reason", "measured", "modelled", "rejected"],
            "properties": {
                "stage": {"type": "string"},
                "backend": {"enum": ["fentry", "kprobe", "nf_bpf", "tracepoint", "counters", None]},
                "reason": {"type": "string"},
                "measured": {"type": "array", "items": {"type": "string"}},
                "modelled": {"type": "array", "items": {"type": "string"}},
                "rejected": {"type": "array", "items": {
                    "type": "object", "required": ["backend", "blocked_by", "why"],
                    "properties": {"backend": {"type": "string"}, "why": {"type": "string"},
                                   "blocked_by": {"type": "array", "items": {"type": "string"}}}}}}}},
    },
}


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]
    stages: tuple[Choice, ...]
    elapsed_s: float

    @property
    def can_profile(self) -> bool:
        """Profiling can run when at least one stage has a backend (counters-only counts)."""
        return any(c.backend is not None for c in self.stages)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "cnitrace_version": __version__,
            "can_profile": self.can_profile,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": {c.name: c.to_json() for c in self.checks},
            "stages": [c.to_json() for c in self.stages],
        }


def run_doctor(host: Host | None = None) -> DoctorReport:
    """Run every check (cached in the Host) and the ladder for every stage."""
    if host is None:
        node_checks.register_all()
        host = Host()
    t0 = time.monotonic()
    names = [n for n in ORDER] + [c.name for c in host.all() if c.name not in ORDER]
    results = tuple(host.check(n) for n in names)
    stages = tuple(choose_all(host))
    return DoctorReport(results, stages, time.monotonic() - t0)

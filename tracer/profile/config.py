"""What a profile was asked to do: the options, checked before any work."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from cnitrace.core.errors import UsageError
from cnitrace.core.selection import validate_netns
from cnitrace.probes.specs import BACKENDS, COUNTERS, NF_BPF, SPECS
from cnitrace.traffic import generators as traffic

TRAFFIC = ("none", "probe", "stream", "rr", "http")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    ifaces: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    lab: str | None = None
    duration: float = 5.0
    traffic: str = "none"
    calibrate: bool = True
    target: str | None = None           # HOST[:PORT] or http://HOST[:PORT]/PATH the user named
    from_netns: str | None = None       # where the client toward `target` runs (None = the host's)
    ports: str | None = None            # extra ports for --traffic probe toward `target`
    force: tuple[tuple[str, str], ...] = ()   # (probe stage, backend) pinned by --probe-backend

    def validate(self) -> None:
        if self.traffic not in TRAFFIC:
            raise UsageError(f"unknown --traffic {self.traffic!r}; choose from {', '.join(TRAFFIC)}")
        if not 0 < self.duration <= 3600:
            raise UsageError("--duration must be between 0 and 3600 seconds")
        if self.target and self.lab:
            raise UsageError("--target and --lab are exclusive: a lab's traffic goes to its own server pod")
        if self.target and self.traffic == "none":
            raise UsageError("--target needs --traffic probe|stream|rr|http")
        if self.traffic != "none" and not (self.lab or self.target):
            raise UsageError("--traffic needs --lab NAME or --target HOST[:PORT]: cnitrace only sends traffic "
                             "inside lab namespaces or to a target you name")
        if self.from_netns is not None and not self.target:
            raise UsageError("--from-netns needs --target: it is where the client toward the target runs")
        if self.ports is not None and not (self.target and self.traffic == "probe"):
            raise UsageError("--ports needs --traffic probe and --target")
        if self.traffic not in ("none", "probe") and self.duration > traffic.MAX_SECONDS:
            raise UsageError(f"--duration with --traffic {self.traffic} must be at most {traffic.MAX_SECONDS:g} s")
        if self.target:
            traffic.parse_target(self.target)
        if self.ports is not None:
            traffic.parse_ports(self.ports)
        if self.from_netns is not None:
            try:
                validate_netns(self.from_netns)
            except UsageError:
                raise UsageError(f"invalid --from-netns {self.from_netns!r}: a namespace name from "
                                 "`ip netns list`") from None
        check_force(self.force)
        if not (self.ifaces or self.netns or self.lab):
            raise UsageError("nothing selected: give --iface GLOB, --netns NAME or --lab NAME")


def check_force(force: Sequence[tuple[str, str]]) -> None:
    """Each pinned (stage, backend) names a probe stage and a backend every required hook of it can
    take (or counters: attach nothing), once; refused before any work rather than mid-window."""
    seen: dict[str, str] = {}
    for stage, backend in force:
        if stage not in SPECS:
            raise UsageError(f"--probe-backend {stage}={backend}: unknown stage; choose from {', '.join(SPECS)}")
        can = [b for b in BACKENDS if b == COUNTERS or all(b in h.backends for h in SPECS[stage].hooks if h.required)]
        can += [NF_BPF] if stage == "netfilter" else []   # brackets: not a hook of the netfilter spec
        if backend not in can:
            raise UsageError(f"--probe-backend {stage}={backend}: {stage} can take {', '.join(can)}")
        if seen.setdefault(stage, backend) != backend:
            raise UsageError(f"--probe-backend {stage} given twice ({seen[stage]}, {backend})")

"""The study's policy shape, as pure data: N port-range rules plus the allow rules, in order.

Every datapath renders the same ordered list, so the cost of reaching the allow rule grows
with N identically everywhere and only the datapath's lookup structure differs. The filler
rules allow TCP port ranges nobody uses; the allow rules (one per protocol, adjacent,
tcp first) admit the server's allowed port; everything else to the server is denied.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib

from cnitrace.core.errors import UsageError
from cnitrace.lab.model import MAX_PODS, MAX_RULES, LabSpec, Topology


@dataclasses.dataclass(frozen=True)
class PortRule:
    position: int       # 0-based place in the policy
    proto: str          # "tcp" | "udp"
    lo: int
    hi: int
    allows_lab_traffic: bool   # True for the allow rules the lab's allowed packets match

    @property
    def ports(self) -> str:
        """iptables multiport syntax: "8080" or "10000:10003"."""
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    @property
    def nft_ports(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


def validate(spec: LabSpec) -> None:
    """Reject out-of-range sizes with one clear line."""
    if not 0 <= spec.rules <= MAX_RULES:
        raise UsageError(f"--rules {spec.rules} out of range: 0..{MAX_RULES}")
    if spec.match_position is not None and not 0 <= spec.match_position <= spec.rules:
        raise UsageError(f"--match-position {spec.match_position} out of range: 0..{spec.rules} (the number of rules)")
    if not 1 <= spec.pods <= MAX_PODS:
        raise UsageError(f"--pods {spec.pods} out of range: 1..{MAX_PODS}")
    if spec.backend not in ("legacy", "nft"):
        raise UsageError(f"--backend {spec.backend!r}: choose legacy or nft")
    if spec.l7_proxy not in ("nginx", "haproxy"):
        raise UsageError(f"L7 proxy {spec.l7_proxy!r}: choose nginx or haproxy")


def port_rules(topo: Topology, spec: LabSpec) -> tuple[PortRule, ...]:
    """Fillers with the two allow rules inserted after `spec.allow_position` fillers."""
    k = spec.allow_position
    ap = topo.allowed_port
    ranges = list(topo.filler_ranges)
    order: list[tuple[str, int, int, bool]] = [("tcp", lo, hi, False) for lo, hi in ranges[:k]]
    order += [("tcp", ap, ap, True), ("udp", ap, ap, True)]
    order += [("tcp", lo, hi, False) for lo, hi in ranges[k:]]
    return tuple(PortRule(i, *r) for i, r in enumerate(order))


def allow_index(rules: tuple[PortRule, ...], proto: str) -> int:
    """0-based position of the allow rule for `proto`."""
    return next(r.position for r in rules if r.allows_lab_traffic and r.proto == proto)


def tag(*parts: object, n: int = 16) -> str:
    """A stable, base64url id like Calico's rule comments ("cali:<16 chars>") and chain hashes."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:n]


def upper_tag(*parts: object, n: int = 16) -> str:
    """A stable base32 id like kube-router's chain and ipset hashes."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return base64.b32encode(digest).decode()[:n]

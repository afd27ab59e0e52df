"""What a trace reports for one packet: an ordered list of hops, and the verdict with the policy behind it.

Every layer (interfaces, netfilter, OVS, BPF programs, conntrack, drops) turns what it saw into
`Hop`s; the trace merges them by time (or by their known order where a layer has no timestamp) and
names the deciding hop. Plain frozen data with JSON round-trips, so the layers stay pure functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

LAYERS = ("iface", "netfilter", "ovs", "bpf", "conntrack", "proxy", "drop")
VERDICTS = ("forwarded", "dropped", "rejected", "redirected", "delivered", "unknown")


@dataclasses.dataclass(frozen=True)
class Policy:
    """The policy object behind a deciding rule, flow or map entry, and how it was found."""

    kind: str            # "NetworkPolicy", "GlobalNetworkPolicy", "CiliumNetworkPolicy", "profile", "default-deny", ...
    name: str            # namespace/name where known, else the CNI's own id (cali-pi-..., cookie, identity)
    source: str          # "lab ground truth" | "rule comment" | "chain name" | "flow cookie" | "policy map key" | ...
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "source": self.source, "detail": dict(self.detail)}


@dataclasses.dataclass(frozen=True)
class Hop:
    """One place the packet was seen. `t_ns`: monotonic kernel time (None when the layer has no
    clock, e.g. ofproto/trace); `order` breaks ties and places untimed hops."""

    layer: str                    # one of LAYERS
    where: str                    # "cnit-lab-node/cali1234 ingress", "ipv4 forward filter cali-pi-x", "br-int table 90"
    what: str                     # "rule 17: -p tcp --dport 9090 -j DROP", "flow cookie=0x..", "cil_from_container rc=2"
    t_ns: int | None = None
    order: int = 0
    netns: str = ""
    verdict: str | None = None    # set on the hop that decided (one of VERDICTS)
    rule: str | None = None       # the deciding rule/flow/map entry, as the CNI wrote it
    policy: Policy | None = None
    cost_ns: float | None = None  # time spent at this hop where measured (bracket, prog run time)
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["policy"] = self.policy.to_json() if self.policy else None
        d["detail"] = dict(self.detail)
        return d

"""The lab's data model: what was asked (LabSpec), what was built (Topology) and where the
kernel counts an allowed and a denied packet (GroundTruth).

Everything here is plain frozen data with JSON round-trips, so a lab built by `lab up` can
be described in /run/cnitrace/labs/cnit-<name>.json and re-read by `lab status`, the
profiler and the tests without importing any datapath code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

MAX_RULES = 10_000
MAX_PODS = 250          # client pods; addresses come from one /24
DEFAULT_NAME = "lab"

# Ports the server pod listens on. Filler policy rules use port ranges from FILLER_BASE
# upwards, so they can never match the allowed or the denied port.
ALLOWED_PORT = 8080     # TCP (HTTP) and UDP (sink), allowed by policy
DENIED_PORT = 9090      # TCP (HTTP) and UDP (sink), listening but not allowed: policy drops it
FILLER_BASE = 10_000
FILLER_WIDTH = 4        # each filler rule allows dports [lo, lo+3] ...
FILLER_STEP = 5         # ... and the next starts 5 ports later (10,000 rules end below 60,000)
PROTOS = ("tcp", "udp")
NODE_IP = "172.31.0.10"    # the node's own address, on lo in the node netns


@dataclasses.dataclass(frozen=True)
class LabSpec:
    """What the user asked for.

    rules: N filler port-range rules that never match the lab's traffic (0..10,000).
    match_position: how many filler rules sit *before* the allow rules (0..N; None = N,
    the worst case the study measured). The allow rules are one per protocol (tcp, udp),
    adjacent, tcp first.
    """

    name: str = DEFAULT_NAME
    datapath: str = "calico"
    rules: int = 0
    pods: int = 1                 # client pods; the server pod is extra
    l7: bool = False
    backend: str = "legacy"       # iptables backend for iptables datapaths: legacy | nft ("" with replay: the dumps')
    match_position: int | None = None
    l7_proxy: str = "nginx"       # nginx | haproxy
    replay: tuple[str, ...] = ()  # `lab up --replay FILE...`: dumps of a real node's ruleset (datapath "replay")
    shape: str = ""               # replay only: the lab shape to use instead of the one the dump points to

    @property
    def allow_position(self) -> int:
        return self.rules if self.match_position is None else self.match_position

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LabSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        if "replay" in kw:
            kw["replay"] = tuple(kw["replay"])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Pod:
    """One pod: a network namespace joined to the node namespace by a veth pair."""

    name: str            # "p0" (server), "p1".. (clients)
    role: str            # "server" | "client"
    netns: str           # cnit-<lab>-p<i>
    ip: str
    prefix: int          # 32 for routed CNIs (calico, cilium), 24 for bridged ones
    gateway: str         # the pod's default gateway (169.254.1.1 for calico)
    mac: str             # pod-side eth0 MAC (fixed, so fixtures and flows can name it)
    iface: str = "eth0"  # pod-side name
    node_iface: str = "" # node-side name: cali<11hex>, veth<hash>, lxc<hash>, ...
    node_ifindex: int = 0  # node-side ifindex inside the node netns; 0 until built
    node_mac: str = ""     # node-side MAC; "" until built
    ofport: int = 0        # OVS port number for OVS datapaths; 0 otherwise

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Topology:
    """The lab as built: one node namespace, a server pod, client pods and the policy ports."""

    lab: str
    node_netns: str
    pods: tuple[Pod, ...]
    subnet: str                       # pod CIDR, e.g. 10.65.0.0/24
    bridge: str = ""                  # node-side bridge (kube-bridge, cni0, br-int) or ""
    node_ip: str = NODE_IP            # on lo in the node netns: the node's own address
    allowed_port: int = ALLOWED_PORT
    denied_port: int = DENIED_PORT
    filler_ranges: tuple[tuple[int, int], ...] = ()   # (lo, hi) dport ranges of the N filler rules
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # datapath-specific facts

    @property
    def server(self) -> Pod:
        return next(p for p in self.pods if p.role == "server")

    @property
    def clients(self) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.role == "client")

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def with_pod(self, pod: Pod) -> "Topology":
        return dataclasses.replace(self, pods=tuple(pod if p.name == pod.name else p for p in self.pods))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["filler_ranges"] = [list(r) for r in self.filler_ranges]
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Topology":
        return cls(
            lab=d["lab"], node_netns=d["node_netns"],
            pods=tuple(Pod(**p) for p in d["pods"]), subnet=d["subnet"], bridge=d.get("bridge", ""),
            node_ip=d.get("node_ip", NODE_IP),
            allowed_port=d.get("allowed_port", ALLOWED_PORT), denied_port=d.get("denied_port", DENIED_PORT),
            filler_ranges=tuple(tuple(r) for r in d.get("filler_ranges", ())),
            extra=dict(d.get("extra", {})),
        )


@dataclasses.dataclass(frozen=True)
class CounterRef:
    """Where the kernel counts a packet: one iptables rule, nft rule, OVS flow or BPF map entry.

    Only the fields that make sense for `kind` are set. `comment` is a unique tag carried by
    the rule or flow itself (iptables/nft comment, OVS cookie in hex) so a collector can find
    it even if positions shift.
    """

    kind: str                      # "iptables" | "nft" | "ovs" | "bpf-map"
    netns: str = ""                # namespace to read it in ("" = host)
    backend: str = ""              # iptables: legacy | nft; ovs: netdev | system
    table: str = ""                # iptables table; nft "<family> <table>"; OVS table name; BPF map pin path
    chain: str = ""                # iptables / nft chain
    index: int = 0                 # 1-based position in the chain (iptables --line-numbers, nft list order)
    handle: int | None = None      # nft rule handle
    cookie: int | None = None      # OVS flow cookie
    key: Mapping[str, Any] | None = None   # BPF map key fields
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["key"] is not None:
            d["key"] = dict(d["key"])
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CounterRef":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """What the lab guarantees, for tests and for checking attribution.

    allowed[proto]: where a NEW allowed packet to the server's allowed port is counted.
    denied: where a NEW packet to the denied port is counted (None: no policy, e.g. flannel).
    evaluations[proto]: policy rules (filler + allow) an allowed NEW packet is matched against,
    i.e. the part of the cost that grows with N.
    per: "packet" when each NEW packet (distinct 5-tuple) walks the policy; established
    traffic is accepted before the policy on every datapath here, as on real nodes.
    """

    allowed: Mapping[str, CounterRef]
    denied: CounterRef | None
    evaluations: Mapping[str, int]
    per: str = "packet"
    counts_replies: bool = False   # the allowed counter also counts the server's replies (flannel)
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": {k: v.to_json() for k, v in self.allowed.items()},
            "denied": self.denied.to_json() if self.denied else None,
            "evaluations": dict(self.evaluations),
            "per": self.per,
            "counts_replies": self.counts_replies,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GroundTruth":
        return cls(
            allowed={k: CounterRef.from_json(v) for k, v in d["allowed"].items()},
            denied=CounterRef.from_json(d["denied"]) if d.get("denied") else None,
            evaluations=dict(d["evaluations"]), per=d.get("per", "packet"),
            counts_replies=d.get("counts_replies", False), notes=d.get("notes", ""),
        )


def filler_ranges(n: int) -> tuple[tuple[int, int], ...]:
    """The N non-matching port ranges the study's policies used, deterministically."""
    return tuple((FILLER_BASE + i * FILLER_STEP, FILLER_BASE + i * FILLER_STEP + FILLER_WIDTH - 1)
                 for i in range(n))

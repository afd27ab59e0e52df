"""Which lab a dump replays into (pure): the pods' shape, names and addresses, taken from the dump.

The lab adapts to the rules, not the other way round, so the rules load unchanged and still match:
- shape: what the dump's chains and interfaces say: cali* / cali- chains → Calico-style routed
  /32 pods (169.254.1.1 gateway by proxy ARP, cali<hash> veths); lxc* / CILIUM_ → Cilium-style
  routed lxc<hash> veths; KUBE-ROUTER- / kube-bridge → pods on a bridge named kube-bridge;
  WEAVE- / weave / vethwe* → a bridge named weave with vethwepl<hash> ports; ANTREA- /
  antrea-gw0 → routed veths (Antrea's OVS pipeline is not in an iptables dump); FLANNEL- / cni0 /
  flannel.1 → a bridge named cni0. Nothing recognised → Calico-style routed (the commonest).
- interfaces: the node-side veths take the dump's own workload interface names (`-o cali92d...`):
  the server pod takes the one with the most rules (the endpoint with policy), client pods the
  next ones, so `-i`/`-o` and per-endpoint chains match lab traffic as they matched the node's.
  Wildcards (`cali+`, `lxc+`) match the generated names. Interfaces the lab has no counterpart
  for (eth0, tunl0, docker0, other pods' veths) keep their names in the rules and never match lab
  traffic, as another pod's rules never match this pod's packets on the node.
- addresses: the pod CIDR is the private network holding most of the dump's pod-like addresses;
  the server pod takes the endpoint address services DNAT to most (else the most-named /32),
  clients the next ones, so `-d`/`-s` /32 rules, KUBE-SEP DNATs and ipset entries match.
Evidence is read from the first MiB of each input: a dump repeats the same names throughout.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import re
from typing import Any, Sequence

from cnitrace.core.errors import UsageError
from cnitrace.lab.model import NODE_IP
from cnitrace.lab.replay import Source
from cnitrace.lab.topology import BRIDGED_SUBNET, ROUTED_SUBNET, short_hash

SAMPLE = 1 << 20


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    routed: bool
    bridge: str
    prefix: str          # node-side veth names: prefix + hex
    hexlen: int
    description: str


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("calico", True, "", "cali", 11, "Calico-style routed /32 pods on cali<hash> veths, gateway 169.254.1.1"),
    Shape("cilium", True, "", "lxc", 12, "Cilium-style routed /32 pods on lxc<hash> veths"),
    Shape("kube-router", False, "kube-bridge", "veth", 8, "pods on the kube-bridge bridge (kube-router style)"),
    Shape("weave", False, "weave", "vethwepl", 7, "pods on a bridge named weave (WeaveNet style)"),
    Shape("antrea", True, "", "veth", 8, "routed veths (Antrea's OVS pipeline is not part of an iptables dump)"),
    Shape("flannel", False, "cni0", "veth", 8, "pods on the cni0 bridge (flannel style)"),
)}
# evidence token -> shape (checked in this order when scores tie: policy CNIs first)
_EVIDENCE = re.compile(r"\b(cali-|cali[0-9a-f]{4,}|cali\+|CILIUM_|cilium_|lxc|KUBE-ROUTER-|KUBE-POD-FW-|KUBE-NWPLCY-|"
                       r"kube-bridge|WEAVE-|weave\b|vethwe|ANTREA-|antrea-|FLANNEL|flannel\.|cni0\b)")
_SHAPE_OF = [("cali", "calico"), ("CILIUM_", "cilium"), ("cilium_", "cilium"), ("lxc", "cilium"),
             ("KUBE-ROUTER-", "kube-router"), ("KUBE-POD-FW-", "kube-router"), ("KUBE-NWPLCY-", "kube-router"),
             ("kube-bridge", "kube-router"), ("WEAVE-", "weave"), ("weave", "weave"), ("vethwe", "weave"),
             ("ANTREA-", "antrea"), ("antrea-", "antrea"), ("FLANNEL", "flannel"), ("flannel.", "flannel"),
             ("cni0", "flannel")]
_WORKLOAD = {
    "calico": re.compile(r"\b(cali[0-9a-f]{6,11})\b"),
    "cilium": re.compile(r"\b(lxc[0-9a-f]{6,12})\b"),
    "weave": re.compile(r"\b(vethwepl[\w]{1,7})\b"),
}
_GENERIC_WORKLOAD = re.compile(r"\b(veth[0-9a-f]{6,11})\b")
_IFACE = re.compile(r'(?:\s-[io]|--(?:in|out)-interface|\b[io]ifname|"(?:iif|oif)name"\}\},\s*"right":)\s+(?:!=\s*)?'
                    r'"?([A-Za-z0-9_.:@-]{1,15}\+?)"?')
_V4 = r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})"
_NET = re.compile(_V4 + r"/(\d{1,2})(?![\d.])")
_DNAT = re.compile(r"--to-destination\s+" + _V4 + r"|dnat (?:ip )?to " + _V4 + r'|"dnat":\s*\{[^}]*"addr":\s*"' + _V4)
_DST = re.compile(r"(?:\s-d|--destination|\bip daddr|\"daddr\"\}\},\s*\"right\":)\s+\"?" + _V4 + r"(?:/32)?(?![\d./])")
_SRC = re.compile(r"(?:\s-s|--source|\bip saddr)\s+" + _V4 + r"(?:/32)?(?![\d./])")
_SETADD = re.compile(r"^add \S+ " + _V4 + r"(?:/32)?(?:\s|$)", re.M)
PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


@dataclasses.dataclass(frozen=True)
class Mapping:
    """How the dump's world maps onto the lab: pods (server first), names and addresses."""

    shape: str
    routed: bool
    bridge: str
    ifaces: tuple[str, ...]          # node-side veth names, server first
    ips: tuple[str, ...]             # pod addresses, server first
    subnet: str
    pod_cidr: str | None             # the dump's pod network, when it names one
    node_ip: str
    evidence: dict[str, int]
    sources: dict[str, str]          # what each choice came from ("the dump" / "generated" / why)
    unmapped: tuple[str, ...]        # interfaces the rules name that the lab does not have
    notes: tuple[str, ...] = ()

    @property
    def devices(self) -> set[str]:
        return {*self.ifaces, "lo", *([self.bridge] if self.bridge else [])}

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ifaces"], d["ips"], d["unmapped"], d["notes"] = (list(self.ifaces), list(self.ips), list(self.unmapped),
                                                            list(self.notes))
        return d


def detect_shape(samples: Sequence[str]) -> tuple[str, dict[str, int]]:
    """The lab shape the dump's names point to, and the evidence counted per shape."""
    score: collections.Counter[str] = collections.Counter()
    for text in samples:
        for tok in _EVIDENCE.findall(text):
            for prefix, shape in _SHAPE_OF:
                if tok.startswith(prefix):
                    score[shape] += 1
                    break
    if not score:
        return "calico", {}
    order = list(SHAPES)
    best = max(score.items(), key=lambda kv: (kv[1], -order.index(kv[0])))[0]
    return best, dict(score)


def _private(ip: ipaddress.IPv4Address) -> bool:
    return any(ip in n for n in PRIVATE)


def _ip(s: str) -> ipaddress.IPv4Address | None:
    try:
        ip = ipaddress.IPv4Address(s)
    except ValueError:
        return None
    return ip if _private(ip) else None


def plan(sources: Sequence[Source], *, pods: int = 1, shape: str | None = None, lab: str = "lab") -> Mapping:
    """The lab that replays `sources`, with `pods` client pods (pure)."""
    if shape is not None and shape not in SHAPES:
        raise UsageError(f"--datapath {shape!r} with --replay: choose a lab shape from {', '.join(SHAPES)}")
    samples = [s.text[:SAMPLE] for s in sources]
    found, evidence = detect_shape(samples)
    sh = SHAPES[shape or found]
    notes: list[str] = []
    if not evidence and shape is None:
        notes.append("no CNI recognised in the dump: Calico-style routed pods")
    why = {"shape": f"--datapath {shape}" if shape else
           (f"the dump's names ({', '.join(f'{k} {v}' for k, v in sorted(evidence.items(), key=lambda kv: -kv[1]))})"
            if evidence else "default")}

    # interfaces: the dump's workload veths, most-referenced first
    wl_re = _WORKLOAD.get(sh.name, _GENERIC_WORKLOAD)
    counts: collections.Counter[str] = collections.Counter()
    named: dict[str, None] = {}
    for text in samples:
        counts.update(wl_re.findall(text))
        for n in _IFACE.findall(text):
            named.setdefault(n)
    wanted = pods + 1
    ifaces = [n for n, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if len(n) <= 15][:wanted]
    why["ifaces"] = f"{len(ifaces)} from the dump" + (f", {wanted - len(ifaces)} generated" if len(ifaces) < wanted else "")
    i = 0
    while len(ifaces) < wanted:
        cand = (sh.prefix + short_hash("replay", lab, i, n=sh.hexlen))[:15]
        if cand not in ifaces:
            ifaces.append(cand)
        i += 1
    lab_devs = {*ifaces, "lo", sh.bridge}
    unmapped = tuple(n for n in named if not n.endswith("+") and n not in lab_devs)[:50]

    # addresses
    nets: collections.Counter[ipaddress.IPv4Network] = collections.Counter()
    hosts: dict[str, collections.Counter[ipaddress.IPv4Address]] = {k: collections.Counter() for k in ("dnat", "dst", "src", "set")}
    for s, text in zip(sources, samples):
        for a, plen in _NET.findall(text):
            ip = _ip(a)
            if ip is not None and 12 <= int(plen) <= 26:
                nets[ipaddress.IPv4Network(f"{a}/{plen}", strict=False)] += 1
        for m in _DNAT.findall(text):
            ip = _ip(m[0] or m[1] or m[2])
            if ip is not None:
                hosts["dnat"][ip] += 1
        for kind, rx in (("dst", _DST), ("src", _SRC)):
            for a in rx.findall(text):
                ip = _ip(a)
                if ip is not None:
                    hosts[kind][ip] += 1
        if s.kind == "ipset":
            for a in _SETADD.findall(text):
                ip = _ip(a)
                if ip is not None:
                    hosts["set"][ip] += 1
    every = set().union(*hosts.values())
    pod_cidr = None
    if nets:
        top = [n for n, _ in nets.most_common(50)]
        pod_cidr = max(top, key=lambda n: (sum(1 for h in every if h in n), nets[n], -n.prefixlen))
        if not any(h in pod_cidr for h in every) and nets[pod_cidr] < 2:
            pod_cidr = None
    inside = (lambda h: h in pod_cidr) if pod_cidr is not None else (lambda h: True)
    server = None
    for kind in ("dnat", "dst", "set", "src"):
        ranked = [h for h, _ in hosts[kind].most_common() if inside(h)]
        if ranked:
            server, why["server_ip"] = ranked[0], f"the dump ({'a DNAT endpoint' if kind == 'dnat' else kind + ' address'})"
            break
    if server is not None:
        subnet = ipaddress.IPv4Network(f"{server}/24", strict=False)
    elif pod_cidr is not None:
        subnet = next(pod_cidr.subnets(new_prefix=24)) if pod_cidr.prefixlen <= 24 else pod_cidr.supernet(new_prefix=24)
        why["server_ip"] = "generated in the dump's pod network"
    else:
        subnet = ipaddress.IPv4Network(ROUTED_SUBNET if sh.routed else BRIDGED_SUBNET)
        why["server_ip"] = "generated (the dump names no pod addresses)"
    reserved = {subnet.network_address, subnet.broadcast_address}
    if not sh.routed:
        reserved.add(subnet.network_address + 1)       # the bridge's gateway address
    ips: list[ipaddress.IPv4Address] = []
    if server is not None and server not in reserved:
        ips.append(server)
    elif server is not None:
        notes.append(f"the dump's {server} is the bridge gateway or network address of the lab's {subnet}: "
                     "the server's address is generated instead")
    for kind in ("src", "set", "dst", "dnat"):
        for h, _ in hosts[kind].most_common():
            if len(ips) >= wanted:
                break
            if h in subnet and h not in reserved and h not in ips:
                ips.append(h)
    from_dump = len(ips)
    for h in subnet.hosts():
        if len(ips) >= wanted:
            break
        if h not in reserved and h not in ips:
            ips.append(h)
    if len(ips) < wanted:
        raise UsageError(f"--pods {pods}: the lab's {subnet} has room for {len(ips) - 1} client pods")
    why["pod_ips"] = f"{from_dump} from the dump, {wanted - from_dump} generated"
    node_ip = NODE_IP if ipaddress.IPv4Address(NODE_IP) not in ips else "172.31.0.11"
    return Mapping(sh.name, sh.routed, sh.bridge, tuple(ifaces), tuple(str(ip) for ip in ips), str(subnet),
                   str(pod_cidr) if pod_cidr is not None else None, node_ip, evidence, why, unmapped, tuple(notes))

"""Rule shapes: what one iptables rule evaluation costs depends on how far the kernel gets into it.

Measured on the CI machine (transit through the calibration bench, 1,000 rules, legacy backend;
see `measure_shapes`): a rule whose protocol/address/interface header does not fit the packet
costs ≈ 3–6 ns (the kernel never looks at its match modules), a rule that passes the header costs
that plus every match module it runs: ≈ 20 ns for a port match or a mark test, ≈ 10 ns for a
comment, ≈ 90 ns for an ipset lookup. One "ns per rule evaluation" is therefore only right for
rules of the calibrated shape; the study's port-range policies are the worst case for that — most
of their rules fail at `-p tcp` for UDP packets (or at the address), a few run every module.

This module is pure: it parses a rule's text into a `RuleShape` (header + match modules), holds the
node's calibrated `ShapeCosts`, and splits a chain's rule evaluations into cost classes from the
rule text and the per-rule counters (`split_chain`). The measurement lives in calibrate.rules.

Native nftables rules are priced by what their expressions do (classes "nft" plain compare/meta/
payload, "nft:set" hash lookup, "nft:vmap" verdict-map jump, "nft:imap:<elements>" one interval
lookup over a concatenated key; collectors.nftables.graph.rule_class). Measured on the CI machine
(calibrate.rules.measure_nft_shapes, back-to-back packets): plain ≈ 30–40 ns, set ≈ 60–67 ns, vmap
≈ 73–94 ns; the interval lookup is not logarithmic: pipapo goes on with every element sharing the
packet's first field, ≈ 1.1–1.2 µs at 100 such elements, 7.8–8.9 µs at 1,000, 37–46 µs at 5,000.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import time
from typing import Any, Iterable, Mapping, Sequence

NFT = "nft"               # native nftables rule classes: "nft", "nft:set", "nft:vmap", "nft:imap:<n>"
EARLY = "early"          # the header (protocol, addresses, interfaces) did not fit: no module ran
FULL = "full"            # the header fitted: every match module ran (class "full:<modules>")

# Match modules grouped by what they cost (one calibrated figure per group).
MODULE_GROUP = {
    "tcp": "port", "udp": "port", "sctp": "port", "udplite": "port", "icmp": "port", "icmp6": "port",
    "multiport": "multiport",
    "set": "set",
    "mark": "mark", "connmark": "mark",
    "conntrack": "conntrack", "state": "conntrack",
    "comment": "comment",
}
CALIBRATED_GROUPS = ("port", "multiport", "set", "mark", "conntrack", "comment")

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_HEADER_OPTS = {"-p": "proto", "--protocol": "proto", "-s": "src", "--source": "src", "-d": "dst",
                "--destination": "dst", "-i": "iif", "--in-interface": "iif", "-o": "oif",
                "--out-interface": "oif"}


@dataclasses.dataclass(frozen=True)
class Header:
    """The part of an iptables rule the kernel checks before any match module (ip_packet_match;
    native payload/meta expressions on the nft backend). Each field is (value, negated) or None."""

    proto: tuple[str, bool] | None = None
    src: tuple[str, bool] | None = None
    dst: tuple[str, bool] | None = None
    iif: tuple[str, bool] | None = None
    oif: tuple[str, bool] | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class RuleShape:
    header: Header
    modules: tuple[str, ...]      # match modules in rule order, as written (`-m NAME`)
    target: str | None = None

    @functools.cached_property
    def groups(self) -> tuple[str, ...]:
        return tuple(module_group(m) for m in self.modules)

    @functools.cached_property
    def full_class(self) -> str:
        return f"{FULL}:{'+'.join(sorted(self.groups))}"

    @functools.cached_property
    def miss_class(self) -> str:
        """The class of an evaluation that passed the header and did not match. The kernel runs
        the matches in order and stops at the first that fails; a comment never fails, so the
        one that failed is a later module, and comments after the last other module never run.
        Which module failed is not in the counters: the last non-comment one is assumed (in the
        CNIs' policy rules the port or mark test comes last and is what fails)."""
        last = max((i for i, g in enumerate(self.groups) if g != "comment"), default=-1)
        if last < 0:
            return self.full_class
        return f"{FULL}:{'+'.join(sorted(self.groups[:last + 1]))}"


def module_group(name: str) -> str:
    return MODULE_GROUP.get(name, name)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SCAN = re.compile(r"(?:^|\s)(?:(?P<neg>!)\s+)?(?P<opt>-p|--protocol|-s|--source|-d|--destination|-i|--in-interface"
                   r"|-o|--out-interface|-m|--match|-j|--jump|-g|--goto)\s+(?:(?P<neg2>!)\s+)?(?P<val>\S+)")
_MODULE_OPTS = frozenset({"-m", "--match"})
_TARGET_OPTS = frozenset({"-j", "--jump", "-g", "--goto"})


def parse_shape(spec: str) -> RuleShape:
    """The shape of one rule from its `iptables-save` text after `-A CHAIN ` (pure; never raises).
    Regex scans over the text with quoted strings blanked: 100,000 rules in well under a second."""
    return _parse_shape(_QUOTED.sub('""', spec) if '"' in spec else spec)


@functools.lru_cache(maxsize=4096)
def _shape_of(header: tuple, modules: tuple[str, ...], target: str | None) -> RuleShape:
    return RuleShape(Header(**dict(header)), modules, target)


def _parse_shape(s: str) -> RuleShape:
    fields: dict[str, tuple[str, bool]] = {}
    modules: list[str] = []
    target = None
    for neg, opt, neg2, val in _SCAN.findall(s):
        if opt in _MODULE_OPTS:
            modules.append(val)
        elif opt in _TARGET_OPTS:
            target = val
        else:
            name = _HEADER_OPTS[opt]
            fields[name] = (val.lower() if name == "proto" else val, bool(neg or neg2))
    return _shape_of(tuple(sorted(fields.items())), tuple(modules), target)


def _net(v: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError:
        return None


def _iface_disjoint(a: str, b: str) -> bool:
    pa, pb = a.endswith("+"), b.endswith("+")
    ra, rb = a.rstrip("+"), b.rstrip("+")
    if pa and pb:
        return not (ra.startswith(rb) or rb.startswith(ra))
    if pa:
        return not b.startswith(ra)
    if pb:
        return not a.startswith(rb)
    return a != b


def _disjoint(field: str, a: str, b: str) -> bool:
    if field == "proto":
        return a not in ("all", "0") and b not in ("all", "0") and a != b
    if field in ("src", "dst"):
        na, nb = _net(a), _net(b)
        return na is not None and nb is not None and na.version == nb.version and not na.overlaps(nb)
    return _iface_disjoint(a, b)


@functools.lru_cache(maxsize=65536)
def fails_early(rule: Header, packet: Header) -> bool:
    """True when a packet known to fit `packet` (the header of a rule it matched) cannot fit `rule`'s
    header, so the kernel rejects it before any match module. Negated or unknown fields never count."""
    for f in dataclasses.fields(Header):
        r, p = getattr(rule, f.name), getattr(packet, f.name)
        if r is None or p is None or p[1]:
            continue
        rv, rneg = r
        if not rneg and _disjoint(f.name, rv, p[0]):
            return True
        if rneg and f.name != "proto" and not rv.endswith("+") and rv == p[0]:
            return True
        if rneg and f.name == "proto" and rv == p[0]:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class RuleCount:
    """One rule of a chain with its counters over a window: evaluations that reached it, matches."""

    shape: RuleShape
    reach: float
    matched: float


def split_rules(rules: Sequence[RuleCount], fallback: Sequence[tuple[Header, float]] = ()) -> list[dict[str, float]]:
    """Each rule's evaluations by cost class (pure).

    A rule's matches ran every module ("full:<modules>"). Of its evaluations that did not match, a
    share failed at the header: the packets that reached it are known by the headers of the rules
    they matched further down the chain (a packet that matched `-p udp` later cannot have passed an
    earlier `-p tcp`); packets with the same header are counted once (MARK-then-RETURN pairs match
    the same packets twice). The rest of the unmatched evaluations (packets nobody further down
    matched) take the same mix as the known ones — from this chain, else from `fallback` (the
    table's evidence) — and are "full" where there is no evidence at all: a rule whose header is
    not known to fail is assumed to run its modules (the costly reading).
    """
    n = len(rules)
    # evidence below each position: header -> max matched (same header = the same packets); the
    # dict is shared between positions until a rule adds to it (most rules match nothing)
    below: list[dict[Header, float]] = [{}] * (n + 1)
    cur: dict[Header, float] = {}
    for i in range(n - 1, -1, -1):
        r = rules[i]
        if r.matched > 0 and not r.shape.header.empty and r.matched > cur.get(r.shape.header, 0.0):
            cur = {**cur, r.shape.header: r.matched}
        below[i] = cur
    whole = dict(below[0]) or {h: w for h, w in fallback if w > 0}
    memo: dict[tuple[int, Header], tuple[float, float]] = {}
    out: list[dict[str, float]] = []
    for i, r in enumerate(rules):
        mine: dict[str, float] = {}

        def add(cls: str, k: float) -> None:
            if k > 0:
                mine[cls] = mine.get(cls, 0.0) + k

        matched = min(max(r.matched, 0.0), max(r.reach, 0.0))
        miss = max(r.reach - matched, 0.0)
        add(r.shape.full_class, matched)
        if miss > 0 and r.shape.header.empty:
            add(r.shape.miss_class, miss)
        elif miss > 0:
            ev = below[i + 1]
            key = (id(ev), r.shape.header)
            if key not in memo:
                memo[key] = (sum(ev.values()), sum(w for h, w in ev.items() if fails_early(r.shape.header, h)))
            known, early_known = memo[key]
            if known >= miss:
                early = miss * early_known / known if known else 0.0
            else:
                tot = sum(whole.values())
                frac = (sum(w for h, w in whole.items() if fails_early(r.shape.header, h)) / tot) if tot else 0.0
                early = early_known + (miss - known) * frac
            early = min(early, miss)
            add(EARLY, early)
            add(r.shape.miss_class, miss - early)
        out.append(mine)
    return out


def split_chain(rules: Sequence[RuleCount], fallback: Sequence[tuple[Header, float]] = ()) -> dict[str, float]:
    """Evaluations of one chain by cost class: the sum of `split_rules` (pure)."""
    out: dict[str, float] = {}
    for mine in split_rules(rules, fallback):
        for k, v in mine.items():
            out[k] = out.get(k, 0.0) + v
    return out


def matched_headers(rules: Iterable[RuleCount]) -> list[tuple[Header, float]]:
    """Evidence of a table: (header, matched) of every rule with a header and matches."""
    best: dict[Header, float] = {}
    for r in rules:
        if r.matched > 0 and not r.shape.header.empty:
            best[r.shape.header] = max(best.get(r.shape.header, 0.0), r.matched)
    return list(best.items())


@dataclasses.dataclass(frozen=True)
class ShapeCosts:
    """This node's calibrated cost of a rule evaluation by shape (ns), for one iptables backend.

    early_ns: a rule whose header does not fit (its modules never run). A rule that passes the
    header costs early_ns + the sum of its match modules' figures (`module_ns`, per module group);
    a module not calibrated costs `generic_module_ns` (the median of the calibrated ones).
    `nft_rule_ns`: one native nftables rule evaluation (expressions evaluated up to the failing one).
    """

    early_ns: float
    module_ns: Mapping[str, float]
    backend: str = "legacy"
    nft_rule_ns: float | None = None
    kernel: str = ""
    cpu: str = ""
    method: str = "transit"
    measured_at: float = 0.0
    provenance: str = "measured"
    samples: Mapping[str, float] = dataclasses.field(default_factory=dict)   # shape -> ns per rule
    seconds: float | None = None          # how long the calibration took
    # native nftables shapes (calibrate.rules.measure_nft_shapes), ns per evaluation: "plain",
    # "set" (hash lookup), "vmap" (hash lookup + jump + return), "imap:<elements>" (one interval
    # lookup over a concatenated key whose first field every element shares, at that many elements)
    nft_ns: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def generic_module_ns(self) -> float:
        vals = sorted(v for k, v in self.module_ns.items() if k != "comment")
        if not vals:
            return 0.0
        return vals[len(vals) // 2]

    def module(self, group: str) -> float:
        v = self.module_ns.get(group)
        return self.generic_module_ns if v is None else v

    def full_ns(self, groups: Iterable[str]) -> float:
        return self.early_ns + sum(self.module(g) for g in groups)

    def class_ns(self, cls: str, early_ns: float | None = None) -> float:
        """ns of one evaluation of a cost class ("early", "full:<g1+g2>", "nft"). `early_ns`: a header
        miss's figure in this chain where its walk was timed (calibrate.walk), in place of the uniform
        calibration's. Only the misses take it: a rule that runs its modules gives the prefetcher time
        to bring the next entry in (calico at 5,000 rules, half its evaluations full: pricing every
        header at the walk's figure gave 1.30x the measured time, the misses alone 1.07x)."""
        if cls == EARLY:
            return self.early_ns if early_ns is None else early_ns
        if cls == NFT or cls.startswith(NFT + ":"):
            return self.nft_class_ns(cls)
        if cls.startswith(FULL + ":"):
            groups = [g for g in cls[len(FULL) + 1:].split("+") if g]
            return self.full_ns(groups)
        return self.full_ns(("port",))

    def nft_class_ns(self, cls: str) -> float:
        """ns of one native nftables evaluation of a class (collectors.nftables.graph.rule_class):
        "nft" plain, "nft:set", "nft:vmap", "nft:imap:<elements>" (interpolated between the sizes
        measured, linear beyond the largest; from the plain rule's cost at 0 elements)."""
        plain = self.nft_ns.get("plain", self.nft_rule_ns if self.nft_rule_ns is not None
                                else self.full_ns(("port",)))
        if cls == NFT:
            return plain
        kind = cls[len(NFT) + 1:]
        if kind in ("set", "vmap"):
            return self.nft_ns.get(kind, plain)
        if kind.startswith("imap:"):
            try:
                n = float(kind[len("imap:"):])
            except ValueError:
                return plain
            return interpolate(imap_points(self.nft_ns), n, plain)
        return plain

    def cost(self, classes: Mapping[str, float], early_ns: float | None = None) -> float:
        """Total ns of a mix of evaluations by class (`early_ns`: see class_ns)."""
        return sum(n * self.class_ns(c, early_ns) for c, n in classes.items())

    def rule_ns(self, spec: str, fits_header: bool = False) -> float:
        shape = parse_shape(spec)
        return self.full_ns(shape.groups) if fits_header or shape.header.empty else self.early_ns

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["module_ns"] = dict(self.module_ns)
        d["samples"] = dict(self.samples)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShapeCosts":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --- what the calibration measures, and how the figures follow from it (pure) ---------------------

# Shapes measured by the calibration bench: UDP from 10.250.1.2 (in the ipset cnitcal-src) to
# 10.250.2.2:5201; no rule matches it (the set does, as on a real node; the port/mark test fails).
# "early" is measured alone (a chain of header misses, as kube-router's policy chain is for the other
# protocol); every module shape is measured interleaved with early rules — one early rule, one rule
# of the shape — because that is how policy chains look (Calico's MARK rule for another protocol,
# then its mark-test RETURN), and interleaving costs more than the two shapes measured apart.
def _early_rule(i: int) -> str:
    lo = 10000 + 2 * (i % 25000)
    return (f'-p tcp -m comment --comment "cali:cnit{i:012d}" -m set --match-set cnitcal-src src '
            f"-m multiport --dports {lo}:{lo + 1} -j MARK --set-xmark 0x10000/0x10000")


def calibration_rules(shape: str, i: int) -> list[str]:
    """The rule(s) of one unit of a calibration shape (one rule for "early", a pair otherwise)."""
    lo = 10000 + 2 * (i % 25000)
    c = f'-m comment --comment "cali:cnix{i:012d}"'
    module = {
        "mark": "-m mark --mark 0x10000/0x10000 -j RETURN",
        "comment+mark": f"{c} -m mark --mark 0x10000/0x10000 -j RETURN",
        "set+mark": "-m set --match-set cnitcal-src src -m mark --mark 0x10000/0x10000 -j RETURN",
        "port": f"-p udp -m udp --dport {lo}:{lo + 1} -j DROP",
        "multiport": f"-p udp -m multiport --dports {lo}:{lo + 1} -j DROP",
        "conntrack": "-m conntrack --ctstate INVALID -j DROP",
    }
    if shape == "early":
        return [_early_rule(i)]
    return [_early_rule(i), module[shape]]


CALIBRATION_SHAPES = ("early", "mark", "comment+mark", "set+mark", "port", "multiport", "conntrack")


def costs_from_samples(samples: Mapping[str, float], backend: str, *, kernel: str = "", cpu: str = "",
                       method: str = "transit", nft_rule_ns: float | None = None,
                       seconds: float | None = None) -> ShapeCosts:
    """ShapeCosts from the measured ns per unit of each calibration shape (pure): "early" per rule,
    every other shape per (early rule + rule of the shape) pair. The header's own cost is in
    early_ns (a rule that fails at the header did the header work and nothing else); a module's
    figure is what the rule of its shape cost beyond that."""
    early = max(samples["early"], 0.0)
    mods = {
        "mark": max(samples["mark"] - 2 * early, 0.0),
        "comment": max(samples["comment+mark"] - samples["mark"], 0.0),
        "set": max(samples["set+mark"] - samples["mark"], 0.0),
        "port": max(samples["port"] - 2 * early, 0.0),
        "multiport": max(samples["multiport"] - 2 * early, 0.0),
        "conntrack": max(samples["conntrack"] - 2 * early, 0.0),
    }
    return ShapeCosts(early, mods, backend, nft_rule_ns, kernel, cpu, method, time.time(), "measured",
                      dict(samples), seconds)


def imap_points(nft_ns: Mapping[str, float]) -> list[tuple[float, float]]:
    """(elements, ns per lookup) of the interval-map sizes measured (pure)."""
    out = []
    for k, v in nft_ns.items():
        if k.startswith("imap:"):
            try:
                out.append((float(k[5:]), float(v)))
            except ValueError:
                continue
    return sorted(out)


def interpolate(points: Sequence[tuple[float, float]], x: float, at_zero: float) -> float:
    """Piecewise-linear through (0, at_zero) and `points`; linear beyond the last two (pure)."""
    pts = [(0.0, at_zero), *[(a, b) for a, b in points if a > 0]]
    if len(pts) == 1:
        return at_zero
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return max(y1 + (y1 - y0) * (x - x1) / (x1 - x0), 0.0)

"""What one rule evaluation costs, for figures computed away from the node that was dumped.

A static estimate needs ns per evaluation. The best figure is this node's own per-shape
calibration (calibrate.shapes, cached by `cnitrace profile` / `--calibrate` per kernel, CPU and
iptables backend); analyze reads that cache but never measures unless asked, because a dump is
usually analysed on a laptop, far from the node. Without one it uses the reference figures
below, and every estimate names which it used.

Rules are priced by shape without parsing each rule in full (`rule_shape`): a static estimate of a
100,000-rule kube-proxy dump must not spend a second on regexes. Worst case, a rule's header fits
and every match module runs (`ShapeCosts.full_ns`); typical, the packet fails the rule's first
test: its header when it has one (protocol, address, interface: `early_ns`), else its first match
module that is not a comment (comments before it run too). A rule with no test at all matches,
so it costs its full figure either way.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any, Mapping

from cnitrace.calibrate.shapes import MODULE_GROUP, ShapeCosts, parse_shape

REFERENCE_COMMIT = "716a460"
REFERENCE_MACHINE = "the CI machine (AMD EPYC, 2 vCPU, kernel 6.18.44-fc-v1300)"
REFERENCE_TEXT = (f"reference figures, not this node: measured on {REFERENCE_MACHINE} at commit {REFERENCE_COMMIT} "
                  "with `cnitrace profile`'s per-shape calibration (calibrate.rules.measure_shapes: transit time "
                  "through the bench, 1,000 rules per shape); native nft from calibrate/shapes.py's documented "
                  "ranges (midpoints). Run `cnitrace analyze --calibrate` on the node to measure its own")

# Reference: measured on the CI machine (kind of machine above, commit 716a460), shapes-v2 cache entries.
REFERENCE_LEGACY = ShapeCosts(
    early_ns=4.94, module_ns={"comment": 16.96, "port": 17.63, "multiport": 18.16, "conntrack": 19.23,
                              "mark": 20.24, "set": 88.44},
    backend="legacy", nft_rule_ns=58.97, kernel="6.18.44-fc-v1300", cpu="AMD EPYC", method="transit",
    provenance="reference")
REFERENCE_NFT_BACKEND = ShapeCosts(
    early_ns=13.32, module_ns={"mark": 1.15, "port": 32.31, "comment": 40.49, "conntrack": 41.30,
                               "multiport": 54.96, "set": 116.25},
    backend="nft", nft_rule_ns=106.60, kernel="6.18.44-fc-v1300", cpu="AMD EPYC", method="transit",
    provenance="reference")
# Native nftables: calibrate/shapes.py's measured ranges (plain 30-40, set 60-67, vmap 73-94 ns; one
# interval-map lookup 1.1-1.2 µs at 100 elements, 7.8-8.9 µs at 1,000, 37-46 µs at 5,000), midpoints.
REFERENCE_NATIVE = {"plain": 35.0, "set": 63.5, "vmap": 83.5, "imap:100": 1150.0, "imap:1000": 8350.0,
                    "imap:5000": 41500.0}

REFERENCE, CALIBRATION = "reference", "calibration"


@dataclasses.dataclass(frozen=True)
class Priced:
    """Per-shape costs and where they came from."""

    shapes: ShapeCosts
    source: str            # REFERENCE | CALIBRATION
    description: str

    def to_json(self) -> dict[str, Any]:
        s = self.shapes
        return {"source": self.source, "description": self.description, "backend": s.backend,
                "early_ns": s.early_ns, "module_ns": dict(s.module_ns), "nft_ns": dict(s.nft_ns)}


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The costs analyze prices with: per iptables backend, and for native nftables rules."""

    legacy: Priced
    nft_backend: Priced
    native: Priced

    def iptables(self, backend: str) -> Priced:
        return self.nft_backend if backend == "nft" else self.legacy

    def to_json(self) -> dict[str, Any]:
        return {"iptables-legacy": self.legacy.to_json(), "iptables-nft": self.nft_backend.to_json(),
                "nftables": self.native.to_json()}


def reference_model() -> CostModel:
    native = dataclasses.replace(REFERENCE_LEGACY, nft_ns=dict(REFERENCE_NATIVE))
    return CostModel(Priced(REFERENCE_LEGACY, REFERENCE, REFERENCE_TEXT),
                     Priced(REFERENCE_NFT_BACKEND, REFERENCE, REFERENCE_TEXT),
                     Priced(native, REFERENCE, REFERENCE_TEXT))


def model_from(calibrated: Mapping[str, ShapeCosts]) -> CostModel:
    """This node's calibration where there is one (by backend: "legacy", "nft"), the reference elsewhere;
    native nft figures from whichever calibration measured them."""
    ref = reference_model()

    def priced(backend: str, fallback: Priced) -> Priced:
        c = calibrated.get(backend)
        if c is None:
            return fallback
        return Priced(c, CALIBRATION, f"this node's calibration ({c.provenance}, iptables {backend}, kernel "
                                      f"{c.kernel or '?'}, {c.cpu or '?'}, {c.method})")

    native = next((c for c in calibrated.values() if c.nft_ns), None)
    native_p = ref.native if native is None else Priced(
        native, CALIBRATION, f"this node's native nft calibration ({native.provenance}, kernel {native.kernel or '?'})")
    return CostModel(priced("legacy", ref.legacy), priced("nft", ref.nft_backend), native_p)


# --- reading this node's cached calibration (I/O; never measures) ------------------------------------

def cache_key(backend: str) -> str:
    """The key calibrate.rules.cached_or_measure_shapes stores this kernel+CPU+backend's shapes under."""
    # calibrate.rules brings the bench and the probe runtime: only this I/O edge needs it
    from cnitrace.calibrate.rules import SHAPES_CACHE_VERSION, cpu_model

    return f"shapes-v{SHAPES_CACHE_VERSION}|{platform.release()}|{cpu_model()}|{backend}"


def nft_cache_key() -> str:
    """The key calibrate.rules.cached_or_measure_nft_shapes stores the native nft figures under."""
    from cnitrace.calibrate.rules import NFT_SHAPES_CACHE_VERSION, cpu_model

    return f"nft-shapes-v{NFT_SHAPES_CACHE_VERSION}|{platform.release()}|{cpu_model()}"


def cached_shapes(cache: Path | None = None, backends: tuple[str, ...] = ("legacy", "nft")) -> dict[str, ShapeCosts]:
    """This node's cached per-shape calibrations by backend; {} when there is none or it is unreadable."""
    from cnitrace.calibrate.rules import CACHE

    path = cache or CACHE
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    native = entries.get(nft_cache_key())
    out: dict[str, ShapeCosts] = {}
    for b in backends:
        try:
            d = entries.get(cache_key(b))
            if d:
                s = dataclasses.replace(ShapeCosts.from_json(d), provenance="cached")
                if not s.nft_ns and isinstance(native, dict) and native:
                    s = dataclasses.replace(s, nft_ns={k: float(v) for k, v in native.items() if k != "seconds"})
                out[b] = s
        except (TypeError, ValueError, KeyError):
            continue
    return out


def measure_shapes(backends: tuple[str, ...]) -> dict[str, ShapeCosts]:
    """Measure (or read from the cache) this node's per-shape calibration: `--calibrate` only (root)."""
    from cnitrace.calibrate.rules import cached_or_measure_shapes

    return {b: cached_or_measure_shapes(backend=b) for b in backends}


# --- pricing rules (pure) ---------------------------------------------------------------------------

HEADER_OPTS = frozenset({"-p", "--protocol", "-s", "--source", "-d", "--destination", "-i", "--in-interface",
                         "-o", "--out-interface", "-f", "--fragment"})
TARGET_OPTS = frozenset({"-j", "--jump", "-g", "--goto"})
MODULE_OPTS = frozenset({"-m", "--match"})

Shape = tuple[bool, tuple[str, ...]]   # (has a header test, match-module groups in rule order)


def rule_shape(spec: str) -> Shape:
    """(header?, module groups) of one iptables rule spec, from a split of its text with the quoted
    strings (comments, log prefixes) taken out; a spec whose quotes do not pair up plainly (escaped
    quotes) goes through calibrate.shapes.parse_shape instead. Options after the target are the
    target's own."""
    if '"' in spec:
        parts = spec.split('"')
        if len(parts) % 2 == 0 or "\\" in spec:
            s = parse_shape(spec)
            return (not s.header.empty, s.groups)
        spec = " ".join(parts[0::2])
    header = False
    modules: list[str] = []
    module_next = False
    for t in spec.split():
        if module_next:
            modules.append(MODULE_GROUP.get(t, t))
            module_next = False
        elif t[0] != "-":
            continue
        elif t in TARGET_OPTS:
            break
        elif t in MODULE_OPTS:
            module_next = True
        elif t in HEADER_OPTS:
            header = True
    return header, tuple(modules)


def unconditional(shape: Shape) -> bool:
    """No test at all (comments aside): every packet reaching the rule matches it."""
    header, groups = shape
    return not header and all(g == "comment" for g in groups)


def shape_ns(shapes: ShapeCosts, shape: Shape) -> tuple[float, float]:
    """(worst, typical) ns of one evaluation of a rule of this shape (see the module docstring)."""
    header, groups = shape
    worst = shapes.full_ns(groups)
    if unconditional(shape):
        return worst, worst
    if header:
        return worst, shapes.early_ns
    typical = shapes.early_ns
    for g in groups:
        typical += shapes.module(g)
        if g != "comment":
            break
    return worst, typical


class ShapePricer:
    """shape_ns with a cache: a 100,000-rule dump has a few dozen distinct shapes."""

    def __init__(self, shapes: ShapeCosts):
        self.shapes = shapes
        self._memo: dict[Shape, tuple[float, float]] = {}

    def __call__(self, shape: Shape) -> tuple[float, float]:
        got = self._memo.get(shape)
        if got is None:
            got = self._memo[shape] = shape_ns(self.shapes, shape)
        return got

"""A long chain's header walk, timed on a replay of the chain at its page offset.

Why: a rule the packet does not fit costs one header check and a jump to the next entry; over a
long chain that walk is bound by memory, and what it costs depends on the chain's rule sizes and
on where the chain starts in the table blob modulo the page — not on its rule count alone. Measured
on the CI machine (a 10,004-rule kube-router chain, legacy backend): 16.7 ns per rule with the
first rule at page offset 784, 10.4 at 1,952 (where the lab's restore puts it; the lab measured
10.3), 9.6 at 936, unchanged 4 or 8 KiB further on; the calibration's uniform 600-byte rules cost
5.3–5.7 at every size. No per-shape figure can carry that, so for every chain of `WALK_MIN_RULES`
rules or more the walk is measured on a copy of the chain itself:

* the chain's own rules (iptables-save text), every one forced to miss at the header (`-o` set to
  an interface that does not exist; the addresses and interfaces live in the fixed-size ipt_entry,
  so the rules keep their sizes), restored into the calibration bench's namespace (calibrate.rules
  `_Bench`) behind padding rules that put its first rule at the node's page offset;
* the bench's layout is read back (collectors.iptables.layout) and the replay is used only when
  every rule has the node's size and the first rule the node's page offset;
* NEW UDP flows through the bench are timed by the transit probe with and without the chain
  (same padding), the fastest of BURSTS bursts each; the difference per rule, the median of
  `repeats` such pairs (each on fresh restores), is the walk's figure.

The figure replaces the uniform header-miss figure for that chain's misses
(`ShapeCosts.cost(..., early_ns=)`; evaluations that run modules keep theirs, see `class_ns`). Cached per kernel, CPU and layout. Legacy IPv4 tables only:
the nft backend keeps no such blob.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import re
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from cnitrace.calibrate.rules import CACHE, _Bench, cached, cpu_model
from cnitrace.collectors.iptables.layout import PAGE, ChainLayout, read_layout
from cnitrace.collectors.iptables.parse import Ruleset
from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of
from cnitrace.core import faults
from cnitrace.core.errors import CnitraceError, ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.session import Session
from cnitrace.probes.runtime import ProbeSet
from cnitrace.traffic.generators import median

WALK_MIN_RULES = 1000            # shorter chains stay in cache: the per-shape figures hold for them
MAX_WALK_CHAINS = 8              # the longest chains of a node, bounded
WALK_CACHE_VERSION = 1
BURSTS = 3
MISS_IFACE = "cnitwalk0"         # an output interface no packet has: every replayed rule misses
WALK_CHAIN = "cnit-walk"
HOOK_OF_TABLE = {"filter": "FORWARD", "mangle": "FORWARD", "security": "FORWARD", "raw": "PREROUTING",
                 "nat": "PREROUTING"}
# padding rules (ipt_entry 112 + standard target 40; + a mark match 48): any multiple of 8 bytes
# from 3,456 on is a sum of them, so a pad of (offset wanted - offset got) mod 4096 (+ 4096) exists
PAD_RULES = ((152, f"-o {MISS_IFACE} -j RETURN"), (200, f"-o {MISS_IFACE} -m mark --mark 0x1 -j RETURN"))

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_HEADER = frozenset({"-s", "--source", "-d", "--destination", "-i", "--in-interface", "-o", "--out-interface"})
_SET = re.compile(r"--match-set\s+(\S+)")
_JUMP = re.compile(r"(?:^|\s)-[jg]\s+(\S+)")


@dataclasses.dataclass(frozen=True)
class WalkChain:
    """One chain to replay: its rules' text in order and their layout on the node."""

    family: str
    table: str
    chain: str
    rules: tuple[str, ...]
    layout: ChainLayout

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.family, self.table, self.chain)

    @property
    def page_offset(self) -> int:
        return (self.layout.first_offset or 0) % PAGE


@dataclasses.dataclass(frozen=True)
class Walk:
    """ns per rule of a chain's header walk, measured on its replay (or why there is no figure)."""

    ns_per_rule: float | None
    rules: int
    page_offset: int
    provenance: str = "measured"
    reason: str | None = None
    samples: tuple[float, ...] = ()
    seconds: float | None = None

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "samples": list(self.samples)}

    @classmethod
    def from_json(cls, d: Mapping) -> "Walk":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, "samples": tuple(d.get("samples", ()))})


# --- pure -------------------------------------------------------------------------------------------

def forced_miss(spec: str) -> str:
    """The rule with its addresses and interfaces dropped and `-o MISS_IFACE` in front: it keeps its
    size (those fields are in the fixed ipt_entry) and no packet fits its header (pure)."""
    toks = _TOKEN.findall(spec)
    out: list[str] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "!" and i + 1 < len(toks) and toks[i + 1] in _HEADER:
            i += 1
            continue
        if t in _HEADER:
            i += 2
            if i < len(toks) and toks[i - 1] == "!":      # the old `-s ! ADDR` spelling
                i += 1
            continue
        out.append(t)
        i += 1
    return " ".join([f"-o {MISS_IFACE}", *out])


def pad_rules(nbytes: int) -> list[str]:
    """Padding rules adding up to `nbytes` (a multiple of 8), or `nbytes` plus whole pages when it
    is too small to be a sum of them (pure): the page offset is what counts."""
    if nbytes < 0 or nbytes % 8:
        raise ValueError(f"pad of {nbytes} bytes: not a non-negative multiple of 8")
    (short, s_rule), (long_, l_rule) = PAD_RULES
    for want in (nbytes, nbytes + PAGE, nbytes + 2 * PAGE):
        for n_long in range(want // long_ + 1):
            rest = want - n_long * long_
            if rest % short == 0:
                return [s_rule] * (rest // short) + [l_rule] * n_long
    raise ValueError(f"no padding of {nbytes} bytes")       # not reached for multiples of 8


def referenced(rules: Iterable[str], user_chains: Iterable[str]) -> tuple[list[str], list[str]]:
    """(ipsets, user chains) the rules name (pure): the replay declares them."""
    chains = set(user_chains)
    sets: list[str] = []
    jumps: list[str] = []
    for r in rules:
        for s in _SET.findall(r):
            if s not in sets:
                sets.append(s)
        for j in _JUMP.findall(r):
            if j in chains and j not in jumps and j != WALK_CHAIN:
                jumps.append(j)
    return sets, jumps


def walk_body(table: str, rules: Sequence[str], pad: Sequence[str], declared: Sequence[str]) -> str:
    """iptables-restore body of the replay: the table's hook chain jumps to WALK_CHAIN, which holds
    the padding and then the (forced-miss) rules; the chains they jump to exist, empty (pure)."""
    hook = HOOK_OF_TABLE[table]
    lines = [f"*{table}", f":{hook} ACCEPT [0:0]", f":{WALK_CHAIN} - [0:0]",
             *[f":{c} - [0:0]" for c in declared], f"-A {hook} -j {WALK_CHAIN}",
             *[f"-A {WALK_CHAIN} {r}" for r in (*pad, *rules)], "COMMIT"]
    return "\n".join(lines) + "\n"


def set_creates(ipset_save: str, names: Iterable[str]) -> str:
    """The `create` lines of the named sets from `ipset save` text (pure): a header miss never looks
    into a set, so its members are not needed."""
    want = set(names)
    return "".join(line + "\n" for line in ipset_save.splitlines()
                   if line.startswith("create ") and len(line.split()) > 1 and line.split()[1] in want)


def candidates(ruleset: Ruleset, backend: str = "legacy", limit: int = MAX_WALK_CHAINS
               ) -> dict[tuple[str, str, str], list[str]]:
    """The longest legacy IPv4 chains (at least WALK_MIN_RULES rules) with their rules' text (pure)."""
    if backend != "legacy":
        return {}
    by: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    for r in ruleset.rules:
        if r.family == "ipv4" and r.backend in ("legacy", "") and r.table in HOOK_OF_TABLE:
            by.setdefault((r.family, r.table, r.chain), []).append((r.position, r.spec))
    long_ = sorted(((k, v) for k, v in by.items() if len(v) >= WALK_MIN_RULES), key=lambda kv: -len(kv[1]))[:limit]
    return {k: [s for _, s in sorted(v)] for k, v in long_}


def cache_key(chain: WalkChain) -> str:
    h = hashlib.sha1("\n".join([chain.table, *map(str, chain.layout.sizes), *chain.rules]).encode()).hexdigest()
    return f"walk-v{WALK_CACHE_VERSION}|{platform.release()}|{cpu_model()}|{chain.page_offset}|{h}"


# --- I/O ----------------------------------------------------------------------------------------------

class _Replay:
    """The bench with a transit probe, for one or more chains in turn."""

    def __init__(self, session: Session, runner: Runner, creates: str):
        self.r = runner
        self.b = _Bench(session, runner)
        self.b.build()
        self.ns = self.b.ns["n"]
        if creates:
            runner.run(["ipset", "restore", "-exist"], input=creates, netns=self.ns)
        self.probes = ProbeSet(["transit"], ifaces=[(self.ns, "c0")], session=session, runner=runner)
        session.on_exit(self.probes.close)
        self.probes.start()

    def restore(self, body: str) -> None:
        self.r.run(["iptables-legacy-restore"], input=body, netns=self.ns, timeout=120)
        faults.checkpoint("calibrate")

    def timed(self, packets: int) -> float:
        """Mean transit ns of `packets` NEW UDP flows through the bench node."""
        return self.b.transit_ns(self.probes, packets, settle_s=0.1, send=self.b.send_new_flows)

    def measure(self, chain: WalkChain, user_chains: Sequence[str], repeats: int, packets: int) -> Walk:
        t0 = time.monotonic()
        forced = [forced_miss(r) for r in chain.rules]
        _, declared = referenced(chain.rules, user_chains)
        table = chain.table
        self.restore(walk_body(table, [], [PAD_RULES[0][1]], declared))
        got = read_layout(table, self.ns, self.r).chains.get(WALK_CHAIN)
        if got is None or got.first_offset is None:
            raise ToolError("walk replay: the bench chain is not in the bench's table")
        pad = pad_rules((chain.page_offset - got.first_offset) % PAGE)
        full = walk_body(table, forced, pad, declared)
        self.restore(full)
        bench = read_layout(table, self.ns, self.r).chains[WALK_CHAIN]
        replayed = ChainLayout(WALK_CHAIN, bench.rules[len(pad):])
        if replayed.sizes != chain.layout.sizes:
            raise ToolError(f"walk replay: the bench lays the rules out differently ({replayed.length:,} bytes "
                            f"against the node's {chain.layout.length:,})")
        if (replayed.first_offset or 0) % PAGE != chain.page_offset:
            raise ToolError(f"walk replay: page offset {(replayed.first_offset or 0) % PAGE} against the "
                            f"node's {chain.page_offset}")
        base = walk_body(table, [], pad, declared)
        per: list[float] = []
        n = len(chain.rules)
        for _ in range(repeats):
            # the fastest of a few bursts each way: a neighbour on a shared machine only adds time
            self.restore(base)
            t_base = min(self.timed(packets) for _ in range(BURSTS))
            self.restore(full)
            per.append((min(self.timed(packets) for _ in range(BURSTS)) - t_base) / n)
        self.restore(base)
        return Walk(median(per), n, chain.page_offset, samples=tuple(round(x, 2) for x in per),
                    seconds=time.monotonic() - t0)


def measure_walks(chains: Sequence[WalkChain], *, user_chains: Mapping[str, Sequence[str]] = {},
                  creates: str = "", runner: Runner = DEFAULT_RUNNER, cache: Path = CACHE,
                  repeats: int = 3, packets: int = 500) -> dict[tuple[str, str, str], Walk]:
    """Each chain's walk: from the cache (per kernel, CPU and layout), else replayed on the bench
    (one bench for all of them). A chain that cannot be replayed gets a Walk with its reason."""
    out: dict[tuple[str, str, str], Walk] = {}
    if not chains:
        return out
    with Session(runner=runner) as s:
        replay: list[_Replay] = []

        def bench() -> _Replay:
            if not replay:
                replay.append(_Replay(s, runner, creates))
            return replay[0]

        for ch in chains:
            try:
                out[ch.key] = cached(cache, cache_key(ch), Walk.from_json,
                                     lambda ch=ch: bench().measure(ch, user_chains.get(ch.table, ()), repeats, packets))
            except CnitraceError as exc:
                out[ch.key] = Walk(None, len(ch.rules), ch.page_offset, reason=exc.message)
    return out


def legacy_rules(netns: str | None = None, runner: Runner = DEFAULT_RUNNER) -> Ruleset:
    """The legacy IPv4 rules of `netns`, the ones a walk can be replayed from."""
    return ruleset_of(IptablesCollector(runner, netns=netns or None, backends=("legacy",),
                                        families=("ipv4",)).snapshot())


def sets_in(netns: str | None, names: Iterable[str], runner: Runner = DEFAULT_RUNNER) -> str:
    """`ipset restore` lines creating the named sets as they are in `netns` (empty: none named, or
    ipset cannot read them — the replay then says which set it missed)."""
    names = set(names)
    if not names:
        return ""
    done = runner.run(["ipset", "save"], netns=netns or None, check=False)
    return set_creates(done.stdout, names) if done.returncode == 0 else ""


def walks_for(ruleset: Ruleset, backend: str, netns: str | None = None, runner: Runner = DEFAULT_RUNNER,
              cache: Path = CACHE) -> dict[tuple[str, str, str], Walk]:
    """The walks of the longest legacy IPv4 chains of the rules in `netns` (`ruleset` read there).
    Bounded: MAX_WALK_CHAINS chains; a replay of a 10,000-rule chain takes a few seconds once and
    is then read from the cache."""
    want = candidates(ruleset, backend)
    if not want:
        return {}
    out: dict[tuple[str, str, str], Walk] = {}
    layouts = {}
    chains: list[WalkChain] = []
    for key, rules in want.items():
        family, table, chain = key
        try:
            if table not in layouts:
                layouts[table] = read_layout(table, netns, runner)
            lay = layouts[table].chains.get(chain)
        except CnitraceError as exc:
            out[key] = Walk(None, len(rules), 0, reason=exc.message)
            continue
        if lay is None or len(lay.rules) != len(rules):
            out[key] = Walk(None, len(rules), 0, reason="the kernel's table and the saved rules differ (changed "
                                                        "between the reads)")
            continue
        chains.append(WalkChain(family, table, chain, tuple(rules), lay))
    creates = sets_in(netns, [s for c in chains for s in referenced(c.rules, ())[0]], runner)
    user = {}
    for c in ruleset.chains:
        if not c.builtin and c.family == "ipv4":
            user.setdefault(c.table, []).append(c.name)
    out.update(measure_walks(chains, user_chains=user, creates=creates, runner=runner, cache=cache))
    return out

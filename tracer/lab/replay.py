"""`lab up --replay`: a real node's ruleset rewritten (pure) so that it loads in a lab node namespace.

Why the lab adapts to the dump rather than the dump to the lab: the rules are what is profiled, so
they stay as the node had them wherever they can. The lab's pods take the dump's own workload
interface names, bridge and pod addresses (replay_map); the rewrite only changes or drops what
cannot exist in a namespace, and reports each change with its reason. Every input rule ends up
loaded or in the report as dropped: nothing is lost silently.

Inputs, one file each, recognised from the text: `iptables-save` / `ip6tables-save` (with or
without -c; legacy or nft backend from the header; headerless excerpts too), `nft list ruleset`
(text or -j) and `ipset save`. Sets that rules match but no replayed `ipset save` creates are made
empty, with a type that fits how the rules match them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterable, Sequence

from cnitrace.core.errors import UsageError

KINDS = ("iptables", "nft", "nft-json", "ipset")
BACKENDS = ("legacy", "nft")
MAX_REPORT = 100_000          # rewrites kept in the report (a 100k-rule dump could drop them all)
# ipset types for sets the rules match with 1, 2 or 3 dimensions (all load on this kernel; a set
# matched with more dimensions than it has is accepted by xt_set and simply never matches).
SET_TYPES = {1: "hash:net", 2: "hash:net,port", 3: "hash:ip,port,net"}


@dataclasses.dataclass(frozen=True)
class Source:
    """One input file, as recognised."""

    path: str
    kind: str            # iptables | nft | nft-json | ipset
    text: str
    family: str = ""     # iptables: ipv4 | ipv6
    backend: str = ""    # iptables: legacy | nft | "" (the dump does not say)

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or self.path

    @property
    def label(self) -> str:
        if self.kind == "iptables":
            tool = "ip6tables" if self.family == "ipv6" else "iptables"
            return f"{tool}-{self.backend or '?'}"
        return self.kind


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One changed or dropped input rule (or ipset entry)."""

    source: str
    line: int            # 1-based input line (nft -j: 1-based object index)
    original: str
    new: str | None      # None: dropped
    reason: str

    @property
    def dropped(self) -> bool:
        return self.new is None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        head = f"{self.source}:{self.line}: {self.original}"
        return f"{head}\n    -> {self.new}  ({self.reason})" if self.new is not None else \
            f"{head}\n    -> dropped: {self.reason}"


@dataclasses.dataclass
class Rewritten:
    """One input as it will be loaded: output lines, and for each the input line it came from."""

    source: Source
    lines: list[str]
    origin: list[int]                 # per output line: its input line (0: added by the rewrite)
    rules_in: int
    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    sets_used: dict[str, int] = dataclasses.field(default_factory=dict)   # ipset -> dimensions matched
    sets_provided: dict[str, str] = dataclasses.field(default_factory=dict)  # ipset -> type (ipset saves)
    tables: tuple[str, ...] = ()      # iptables tables / nft "family name" tables loaded
    entries: int = 0                  # ipset: entries loaded
    rule_lines: frozenset[int] = frozenset()   # input lines that are rules (for load-time drops)

    @property
    def text(self) -> str:
        if self.source.kind == "nft-json":
            return '{"nftables": [' + ",\n".join(self.lines) + "]}\n"
        return "\n".join(self.lines) + "\n"

    @property
    def dropped(self) -> int:
        return sum(1 for r in self.rewrites if r.dropped and r.line in self.rule_lines)

    @property
    def changed(self) -> int:
        return sum(1 for r in self.rewrites if not r.dropped)

    @property
    def rules_loaded(self) -> int:
        return self.rules_in - self.dropped

    def drop_output(self, index: int, reason: str) -> Rewrite | None:
        """Drop output line `index` after the kernel or a tool refused it; the report gets its input line."""
        line, origin = self.lines.pop(index), self.origin.pop(index)
        rw = Rewrite(self.source.name, origin, line.strip(), None, reason)
        self.rewrites.append(rw)
        return rw

    def summary(self) -> dict[str, Any]:
        s = self.source
        return {"path": s.path, "kind": s.kind, "family": s.family or None, "backend": s.backend or None,
                "rules_in": self.rules_in, "rules_loaded": self.rules_loaded, "dropped": self.dropped,
                "rewritten": self.changed, "tables": list(self.tables), "notes": list(self.notes),
                **({"sets": len(self.sets_provided), "entries": self.entries} if s.kind == "ipset" else {})}


@dataclasses.dataclass(frozen=True)
class CreatedSet:
    """An empty ipset made because rules match it and no replayed `ipset save` has it."""

    name: str
    type: str
    family: str          # inet | inet6

    @property
    def line(self) -> str:
        return f"create {self.name} {self.type} family {self.family} hashsize 1024 maxelem 65536"


# --- recognising an input ------------------------------------------------------------------------

_NFT_TABLE = re.compile(r"^table\s+(ip|ip6|inet|arp|bridge|netdev)\s+\S+\s*\{", re.M)
_HEADER = re.compile(r"^# Generated by (\S+) v[\d.]+( \((legacy|nf_tables)\))?", re.M)
_V6_ADDR = re.compile(r"\s-[sd]\s+!?\s*[0-9a-fA-F]*:[0-9a-fA-F:]*[:/]")


def _first_lines(text: str, n: int = 50) -> list[str]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
            if len(out) >= n:
                break
    return out


def iptables_dialect(text: str) -> tuple[str, str]:
    """(family, backend) from a save dump's `# Generated by` header; backend "" when it does not say.

    `xtables-save` is how iptables 1.8.0-1.8.2 named its nft backend; plain `iptables-save` before
    1.8 is legacy (there was no other)."""
    family, backend = "ipv4", ""
    m = _HEADER.search(text[:20_000])
    if m:
        tool, tag = m.group(1), m.group(3)
        family = "ipv6" if tool.startswith("ip6tables") else "ipv4"
        if tag == "nf_tables" or tool.startswith("xtables"):
            backend = "nft"
        elif tag == "legacy" or "legacy" in tool:
            backend = "legacy"
        elif re.match(r"ip6?tables-save$", tool):
            ver = re.search(r"v(\d+)\.(\d+)", m.group(0))
            backend = "legacy" if ver and (int(ver.group(1)), int(ver.group(2))) < (1, 8) else ""
    if not m or family == "ipv4":
        sample = text[:200_000]
        if _V6_ADDR.search(sample) or " -p ipv6-icmp" in sample or " -p icmpv6" in sample:
            family = "ipv6"
    return family, backend


def classify(path: str, text: str) -> Source:
    """Recognise one input; UsageError (one line) when it is none of the dumps replay understands."""
    if "\x00" in text[:65536]:
        raise UsageError(f"{path}: a binary file, not a ruleset dump")
    text = text.lstrip("\ufeff")
    head = _first_lines(text)
    if not head:
        raise UsageError(f"{path}: empty (no rules, sets or tables)")
    if head[0].startswith("{"):
        try:
            doc = json.loads("\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
        except ValueError as exc:
            raise UsageError(f"{path}: looks like JSON but does not parse ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("nftables"), list):
            raise UsageError(f"{path}: JSON without an \"nftables\" list (not `nft -j list ruleset` output)")
        return Source(path, "nft-json", text)
    if any(l.startswith(("create ", "add ")) for l in head[:5]) and head[0].startswith(("create ", "add ")):
        return Source(path, "ipset", text)
    if _NFT_TABLE.search(text[:200_000]):
        return Source(path, "nft", text)
    if any(l[0] in "*:[" or l.startswith(("-A ", "-N ", "-P ")) for l in head):
        family, backend = iptables_dialect(text)
        return Source(path, "iptables", text, family, backend)
    raise UsageError(f"{path}: not an iptables-save, nft list ruleset (text or -j) or ipset save dump")


def read_sources(paths: Sequence[str], backend: str | None = None) -> list[Source]:
    """Read and recognise every input (I/O: the files only). `backend` overrides the dumps' own;
    a dump that does not say is loaded with the legacy backend."""
    if not paths:
        raise UsageError("--replay needs at least one FILE")
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose legacy or nft")
    out = []
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            raise UsageError(f"--replay {p}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"--replay {p}: a directory, not a file") from None
        except OSError as exc:
            raise UsageError(f"--replay {p}: cannot read ({exc.strerror})") from None
        src = classify(p, text)
        if src.kind == "iptables" and (backend or not src.backend):
            src = dataclasses.replace(src, backend=backend or "legacy")
        out.append(src)
    return out


# --- ipset save ------------------------------------------------------------------------------------

def rewrite_ipset(src: Source) -> Rewritten:
    """`ipset save` as `ipset restore -exist` input: create/add lines kept, anything else dropped."""
    lines: list[str] = []
    origin: list[int] = []
    rewrites: list[Rewrite] = []
    provided: dict[str, str] = {}
    entries = 0
    for no, raw in enumerate(src.text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        parts = line.split()
        if parts[0] == "create" and len(parts) >= 3:
            provided.setdefault(parts[1], parts[2])
        elif parts[0] == "add" and len(parts) >= 3:
            if parts[1] not in provided:
                rewrites.append(Rewrite(src.name, no, line, None, f"entry of set {parts[1]} that is never created"))
                continue
            entries += 1
        else:
            rewrites.append(Rewrite(src.name, no, line, None, "not a create/add line of `ipset save`"))
            continue
        lines.append(line)
        origin.append(no)
    return Rewritten(src, lines, origin, 0, rewrites, [], {}, provided, (), entries)


# --- the whole replay ------------------------------------------------------------------------------

def created_sets(rewritten: Iterable[Rewritten]) -> list[CreatedSet]:
    """Empty sets for every ipset the rules match that no replayed `ipset save` creates."""
    provided = {n for r in rewritten for n in r.sets_provided}
    want: dict[str, tuple[int, str]] = {}
    for r in rewritten:
        fam = "inet6" if r.source.family == "ipv6" else "inet"
        for name, dims in r.sets_used.items():
            if name not in provided:
                d, f = want.get(name, (0, fam))
                want[name] = (max(d, dims), f)
    return [CreatedSet(n, SET_TYPES[min(max(d, 1), 3)], f) for n, (d, f) in sorted(want.items())]


def check_conflicts(rewritten: Sequence[Rewritten]) -> None:
    """Two dumps may not load the same table of the same family and backend (the second would replace
    the first); say which."""
    seen: dict[tuple[str, str], str] = {}
    for r in rewritten:
        s = r.source
        for t in r.tables:
            # iptables-nft keeps its tables in nftables as "ip filter", "ip6 nat": the same table as an nft dump's
            if s.kind == "iptables":
                key = (f"{'ip6' if s.family == 'ipv6' else 'ip'} {t}", "nft") if s.backend == "nft" else \
                    (f"{s.family} {t}", "legacy")
            else:
                key = (t, "nft")
            if key in seen and seen[key] != s.path:
                raise UsageError(f"--replay: {seen[key]} and {s.path} both hold table {key[0]} "
                                 f"({key[1]} backend); give each table once")
            seen[key] = s.path

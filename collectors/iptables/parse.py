"""Pure parser for `iptables-save` / `ip6tables-save` output (legacy and nft backends), with or without -c.

One pass over the lines with plain string operations: a 100,000-rule dump must parse in well under
a second, because the snapshot is taken twice per measurement on busy nodes and `cnitrace analyze`
reads whatever size people paste. A rule's -j/-g target and its comment are found by searching
from the end with a quote-parity check, so a `-j` inside `--comment "..."` is never taken for the
target and no rule is tokenised unless it carries `-c` counters (`iptables -S -v`).

What people paste is not always a clean `iptables-save -c`:
- without -c, rules carry no `[p:b]`: their counts are unknown, not zero (`Ruleset.rule_counters`
  says so, with one warning), while the chain headers still carry the built-in policy counters;
- a `grep` of a dump or `iptables -S` has no `*table` line: the table is guessed from the chains
  and targets (KUBE-SVC-*, DNAT → nat; NOTRACK → raw; ...) and the warning names the guess;
- a built-in chain the text never declared has an unknown policy (`POLICY_UNKNOWN`), never ACCEPT;
- shell prompts, markdown fences, indentation, CRLF and `...` truncation markers around the dump.
Anything else unexpected becomes a warning and the rest of the dump is still returned.
"""

from __future__ import annotations

import dataclasses
import gc
import re

from cnitrace.collectors.base import Parsed, Warnings, strip_provenance
from cnitrace.collectors.pasted import is_fence, prompt_command

BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
POLICY_UNKNOWN = "?"   # a built-in chain the text used but never declared: a base chain, policy unknown

# Targets after which the packet leaves the chain for good (it does not come back to
# the next rule). Anything not listed and not a user chain is treated as non-terminating
# (LOG, MARK, CONNMARK, NFLOG, CT, TRACE, ...), which is how the kernel treats XT_CONTINUE.
TERMINAL_TARGETS = frozenset({
    "ACCEPT", "DROP", "REJECT", "QUEUE", "NFQUEUE", "DNAT", "SNAT", "MASQUERADE", "REDIRECT",
    "NETMAP", "TPROXY", "SYNPROXY", "ERROR", "MIRROR", "TARPIT", "CLUSTERIP",
})
RETURN = "RETURN"
# iptables-nft-save's last line when the legacy backend also holds rules, which this dump lacks
OTHER_BACKEND_PRESENT = ("iptables-nft says iptables-legacy tables are present too and not in this dump "
                         "(`# Warning: iptables-legacy tables present`): a CNI's or kube-proxy's rules may be "
                         "there; add `iptables-legacy-save -c` (and `ip6tables-legacy-save -c`)")
NO_RULE_COUNTERS = "rules carry no counters (saved without -c): per-rule packet counts are unknown"

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_TRUNCATED = re.compile(r"^[\[(<]?\s*(?:\.{3,}|…|snip(?:ped)?|truncated|output truncated)\s*[\])>]?$", re.I)
_V6 = re.compile(r"(?:^|[\s!])[0-9a-fA-F:]*::[0-9a-fA-F:.]*(?:/\d{1,3})?(?=[\s,]|$)"
                 r"|(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}", re.M)


@dataclasses.dataclass(frozen=True, slots=True)
class Chain:
    """A chain header. For builtin chains `packets`/`bytes` count packets that got the policy."""

    family: str          # "ipv4" | "ipv6"
    table: str
    name: str
    policy: str | None   # ACCEPT/DROP for builtin chains (POLICY_UNKNOWN if never declared), None for user chains
    packets: int
    bytes: int
    backend: str = ""    # "legacy" | "nft" | "" when the dump does not say
    counted: bool = True  # False when the text gave no counters for it (undeclared, `-S`, `-L` without -v)

    @property
    def builtin(self) -> bool:
        return self.policy is not None

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return ("chain", self.backend, self.family, self.table, self.name)

    @property
    def counters(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes}


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One `-A` line. `position` is 1-based within its chain; `nth` numbers identical specs."""

    family: str
    table: str
    chain: str
    position: int
    spec: str            # the rule text after `-A CHAIN `
    target: str | None   # -j / -g argument, None for a counting-only rule
    goto: bool
    packets: int
    bytes: int
    nth: int = 1
    comment: str | None = None
    backend: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str, str, int]:
        # Keyed by content, not position, so inserting a rule does not shift every delta.
        return ("rule", self.backend, self.family, self.table, self.chain, self.spec, self.nth)

    @property
    def counters(self) -> dict[str, int]:
        return {"packets": self.packets, "bytes": self.bytes}


@dataclasses.dataclass(frozen=True)
class Ruleset:
    chains: tuple[Chain, ...]
    rules: tuple[Rule, ...]
    rule_counters: bool = True   # rules carried packet/byte counters (`-c`); False: their zeros mean "unknown"
    approximate: bool = False    # counters were rounded by the tool (`iptables -L -v` without -x)

    @property
    def records(self) -> tuple[Chain | Rule, ...]:
        return (*self.chains, *self.rules)


def _gc_paused(fn):
    """Run `fn` with the cyclic garbage collector paused: a big dump allocates ~2 objects per rule and
    none of them form cycles, yet each allocation burst triggers full collections (a quarter of the
    parse time of 100,000 rules)."""
    def run(*args):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args)
        finally:
            if was:
                gc.enable()
    run.__doc__ = fn.__doc__
    return run


def parse(text: str, family: str | None = "ipv4", backend: str | None = None) -> Parsed[Chain | Rule]:
    """Parse one `*-save [-c]` dump; records are Chains then Rules, in dump order.

    The backend is read from the `# Generated by iptables-save v1.8.9 (nf_tables)` header
    unless given; `family=None` reads it from the text (`detect_family`, and prompts naming ip6tables).
    """
    chains, rules, warnings, _ = _parse(text, family, backend)
    return Parsed((*chains, *rules), warnings.freeze())


def parse_ruleset(text: str, family: str | None = "ipv4", backend: str | None = None
                  ) -> tuple[Ruleset, tuple[str, ...]]:
    chains, rules, warnings, counted = _parse(text, family, backend)
    return Ruleset(tuple(chains), tuple(rules), rule_counters=counted), warnings.freeze()


def detect_backend(text: str) -> str:
    """"nft" / "legacy" from the `# Generated by iptables-save v1.8.9 (nf_tables)` header, else ""."""
    head = strip_provenance(text[:2000])[:400] if isinstance(text, str) else ""
    if "(nf_tables)" in head or "by xtables-save v" in head:   # iptables 1.8.0-1.8.2's nft variant: 'xtables-save'
        return "nft"
    if "(legacy)" in head:
        return "legacy"
    return ""


def detect_family(text: str) -> str:
    """"ipv6" for ip6tables output (its header, or IPv6 addresses/ICMPv6 in the rules), else "ipv4".

    iptables-save prints every address with its prefix length, -L prints `::/0`: a `::` or a full
    eight-group address is IPv6, while a MAC (six groups, no `::`) is not."""
    if not isinstance(text, str):
        return "ipv4"
    head = strip_provenance(text[:2000])[:400]
    # iptables-nft's 'Warning: iptables-legacy tables present, use ip6tables-legacy to see them' may
    # come from another command of the same script: the family is the dump's, not the warning's
    head = "\n".join(x for x in head.splitlines() if "tables present" not in x)
    if "ip6tables" in head:
        return "ipv6"
    if "iptables" in head:
        return "ipv4"
    sample = text[:400_000]
    if "ipv6-icmp" in sample or "icmpv6" in sample or "icmp6" in sample or _V6.search(sample):
        return "ipv6"
    return "ipv4"


def truncation_marker(line: str) -> bool:
    """`...`, `…`, `[...]`, `<snip>`, `(truncated)`: where someone cut a pasted dump."""
    return len(line) < 40 and _TRUNCATED.match(line) is not None


def unfence(line: str) -> str:
    """The output glued to a markdown fence (```Chain INPUT ...), else the line; a fence with only a
    language tag (```bash) has nothing after it."""
    if line.startswith(("```", "~~~")):
        rest = line.lstrip("`~")
        if " " in rest:
            return rest.strip()
    return line


def paste_noise(line: str) -> str | None:
    """What a stripped line that is not tool output is: "prompt", "fence", "truncated" or None."""
    if is_fence(line):
        return "fence"
    if truncation_marker(line):
        return "truncated"
    if prompt_command(line) is not None:
        return "prompt"
    return None


_NOISE_START = frozenset("$#[`~.\u2026<(>")


def maybe_noise(line: str) -> str | None:
    """paste_noise() behind a cheap test, for parsers that meet it on every line: pasting noise starts
    with a prompt or fence character, or is `user@host...$ cmd`."""
    if line and (line[0] in _NOISE_START or ("@" in line[:80] and ("$" in line or "#" in line))):
        return paste_noise(line)
    return None


def prompt_family(line: str) -> str | None:
    """The family a prompt's command names (`ip6tables-save` → ipv6), None if it names none."""
    cmd = prompt_command(line) or ""
    if "ip6tables" in cmd:
        return "ipv6"
    if "iptables" in cmd:
        return "ipv4"
    return None


# --- the table of a text without `*table` lines --------------------------------------------------

_NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
_RAW_TARGETS = frozenset({"NOTRACK", "CT"})
_MANGLE_TARGETS = frozenset({"TPROXY", "TTL", "HL", "TOS", "DSCP", "ECN", "CHECKSUM"})
_NAT_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-MARK-MASQ",
                 "KUBE-POSTROUTING", "cali-nat-", "cali-fip-", "WEAVE-MASQ", "CNI-HOSTPORT-", "CNI-DN-")
_NAT_WEAK = ("KUBE-SERVICES", "KUBE-NODEPORTS")
_FILTER_PREFIXES = ("KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL",
                    "KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-", "cali-fw-", "cali-tw-", "cali-pi-", "cali-po-",
                    "cali-pri-", "cali-pro-", "cali-FORWARD", "cali-INPUT", "cali-from-wl", "cali-to-wl",
                    "WEAVE-NPC", "CILIUM_INPUT", "CILIUM_FORWARD", "CILIUM_OUTPUT", "DOCKER-USER",
                    "DOCKER-ISOLATION", "ANTREA-FORWARD", "FLANNEL-FWD")
_TABLE_CHAINS = {"filter": {"INPUT", "FORWARD", "OUTPUT"}, "nat": {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
                 "mangle": BUILTIN_CHAINS, "raw": {"PREROUTING", "OUTPUT"}}
GUESS_SCAN_LINES = 5000


def guess_table(lines: list[str], start: int = 0) -> tuple[str, str]:
    """(table, why) for lines without a `*table` header, up to the next `*table` or COMMIT.

    Chains and targets that live in one table only decide (kube-proxy's KUBE-SVC-*/KUBE-SEP-* and
    DNAT/MASQUERADE → nat, NOTRACK/CT → raw, REJECT and policy chains → filter); built-in chains rule
    tables out (FORWARD is not in nat, PREROUTING not in filter). Without evidence: filter."""
    score = {"filter": 0, "nat": 0, "raw": 0, "mangle": 0}
    why: dict[str, dict[str, int]] = {t: {} for t in score}
    builtins: set[str] = set()

    def vote(table: str, weight: int, reason: str) -> None:
        score[table] += weight
        why[table][reason] = why[table].get(reason, 0) + weight

    for raw in lines[start:start + GUESS_SCAN_LINES]:
        s = raw.strip()
        if s.startswith("*") or s == "COMMIT":
            break
        if not s or s[0] not in "[:-":
            continue
        toks = s.split()
        names = []
        if s[0] == ":":
            names.append(toks[0][1:])
        else:
            for i, t in enumerate(toks[:-1]):
                if t in ("-A", "-N", "-P", "-I"):
                    names.append(toks[i + 1])
                elif t in ("-j", "-g", "--jump", "--goto"):
                    tg = toks[i + 1]
                    names.append(tg)
                    if tg in _NAT_TARGETS:
                        vote("nat", 3, f"{tg} targets")
                    elif tg in _RAW_TARGETS:
                        vote("raw", 3, f"{tg} targets")
                    elif tg in _MANGLE_TARGETS:
                        vote("mangle", 3, f"{tg} targets")
                    elif tg == "REJECT":
                        vote("filter", 3, "REJECT targets")
        for n in names:
            if n in BUILTIN_CHAINS:
                builtins.add(n)
            elif n.startswith(_NAT_PREFIXES):
                vote("nat", 3, f"{n.rstrip('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ') or n}* chains"
                     if n.startswith(("KUBE-SVC-", "KUBE-SEP-")) else f"{n} chain")
            elif n in _NAT_WEAK:
                vote("nat", 1, f"{n} chain")
            elif n.startswith(_FILTER_PREFIXES):
                vote("filter", 3, f"{n} chain")
    allowed = [t for t in ("filter", "nat", "raw", "mangle") if builtins <= _TABLE_CHAINS[t]]
    if not allowed:
        allowed = ["filter"]
    best = max(allowed, key=lambda t: score[t])  # ties keep the earlier (filter first)
    if score[best] == 0:
        reason = "no table-specific chains or targets" if builtins <= _TABLE_CHAINS["filter"] else \
            f"built-in chains {', '.join(sorted(builtins))}"
        if "filter" not in allowed:
            best = allowed[0]
        return best, reason
    strongest = sorted(why[best], key=lambda r: -why[best][r])[:2]
    return best, ", ".join(strongest)


# --- the parser -----------------------------------------------------------------------------------

@_gc_paused
def _parse(text: str, family: str | None, backend: str | None
           ) -> tuple[list[Chain], list[Rule], Warnings, bool]:
    w = Warnings()
    chains: list[Chain] = []
    rules: list[Rule] = []
    if not isinstance(text, str):
        w.add(f"expected text, got {type(text).__name__}")
        return chains, rules, w, False
    auto = family is None
    fam = detect_family(text) if auto else family
    be = detect_backend(text) if backend is None else backend
    table: str | None = None
    known: set[str] = set()
    position: dict[str, int] = {}
    seen_spec: dict[tuple[str, str], int] = {}
    committed = True
    counted = 0
    undeclared: list[tuple[str, int]] = []
    lines = text.splitlines()
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        if first in "`~":
            line = unfence(line)
            if is_fence(line):
                continue
            first = line[0]
        packets = nbytes = 0
        has_counts = False
        if first == "[":
            end = line.find("] ")
            p, sep, b = line[1:end].partition(":") if end > 0 else ("", "", "")
            if not (sep and p.isdigit() and b.isdigit() and p.isascii() and b.isascii()):
                fam = _other_line(line, no, f"bad counters in {line[:60]!r}", w, fam if auto else None) or fam
                continue
            packets, nbytes = int(p), int(b)
            line = line[end + 2:].lstrip()
            has_counts = True
        elif first == "-":
            if line[:3] in ("-P ", "-N "):
                if table is None:
                    table, committed = _headerless(lines, no, w), True
                _declare(line, fam, table, be, known, chains, w, no)
                continue
        elif first == ":":
            if table is None:
                table, committed = _headerless(lines, no, w), True
            chain = _chain_line(line, fam, table, be, w, no)
            if chain is not None and chain.name not in known:
                chains.append(chain)
                known.add(chain.name)
            continue
        elif first == "*":
            if not committed:
                w.add(f"table {table!r} has no COMMIT", no)
            table = line[1:].strip()
            if not table or " " in table:
                w.add(f"bad table line {line[:60]!r}", no)
                table = None
                continue
            known, position, seen_spec, committed = set(), {}, {}, False
            continue
        elif line == "COMMIT":
            committed = True
            continue
        elif first == "#":
            if "legacy tables present" in line:
                w.add(OTHER_BACKEND_PRESENT, no)
            elif auto and not line.startswith("# provenance:") and (pf := prompt_family(line)) is not None:
                fam = pf
            continue
        if not line.startswith("-A "):
            if "legacy tables present" in line:      # the same warning printed without its '#'
                w.add(OTHER_BACKEND_PRESENT, no)
                continue
            why = f"unexpected line {line[:60]!r}" if table is not None else \
                f"line outside any table ignored: {line[:60]!r}"
            fam = _other_line(line, no, why, w, fam if auto else None) or fam
            continue
        if table is None:
            table, committed = _headerless(lines, no, w), True
        rest = line[3:].lstrip()
        sp = rest.find(" ")
        name, spec = (rest, "") if sp < 0 else (rest[:sp], rest[sp + 1:].strip())
        if not name:
            w.add("rule without a chain name", no)
            continue
        if name not in known:
            undeclared.append((name, no))
            known.add(name)
            chains.append(_undeclared(fam, table, name, be))
        target, goto, comment, spec, extra = _target(spec, w, no)
        if extra is not None:
            packets, nbytes = extra
            has_counts = True
        counted += has_counts
        pos = position.get(name, 0) + 1
        position[name] = pos
        sk = (name, spec)
        nth = seen_spec.get(sk, 0) + 1
        seen_spec[sk] = nth
        rules.append(_rule(fam, table, name, pos, spec, target, goto, packets, nbytes, nth, comment, be))
    if table is not None and not committed:
        w.add(f"table {table!r} has no COMMIT (truncated dump?)")
    if undeclared:
        name, at = undeclared[0]
        more = f" and {len(undeclared) - 1} more" if len(undeclared) > 1 else ""
        w.add(f"rules for undeclared chain {name!r}{more} (a built-in one's policy is unknown)", at)
    if rules and not counted:
        w.add(NO_RULE_COUNTERS)
    elif counted < len(rules):
        w.add(f"{len(rules) - counted} of {len(rules)} rules carry no counters: their packet counts are unknown")
    return chains, rules, w, counted == len(rules)


_new = object.__new__
(_s_family, _s_table, _s_chain, _s_position, _s_spec, _s_target, _s_goto, _s_packets, _s_bytes, _s_nth, _s_comment,
 _s_backend) = (getattr(Rule, f.name).__set__ for f in dataclasses.fields(Rule))


def _rule(family, table, chain, position, spec, target, goto, packets, nbytes, nth, comment, backend) -> Rule:
    """Rule(...) without the frozen-dataclass __init__ (which goes through object.__setattr__ per field):
    slot setters directly, a third of the parse time of a big dump. Same fields, equality and hash."""
    r = _new(Rule)
    _s_family(r, family)
    _s_table(r, table)
    _s_chain(r, chain)
    _s_position(r, position)
    _s_spec(r, spec)
    _s_target(r, target)
    _s_goto(r, goto)
    _s_packets(r, packets)
    _s_bytes(r, nbytes)
    _s_nth(r, nth)
    _s_comment(r, comment)
    _s_backend(r, backend)
    return r


def _other_line(line: str, no: int, why: str, w: Warnings, family: str | None) -> str | None:
    """A line that is no part of a dump: pasting noise is skipped (a truncation mark is warned about,
    a prompt naming ip6tables/iptables switches the family when it is read from the text), anything
    else is warned about with `why`. Returns the family a prompt named, if `family` is given."""
    kind = paste_noise(line)
    if kind is None:
        w.add(why, no)
    elif kind == "truncated":
        w.add(f"dump truncated at line {no}")
    elif kind == "prompt" and family is not None:
        return prompt_family(line)
    return None


def _headerless(lines: list[str], no: int, w: Warnings) -> str:
    table, why = guess_table(lines, no - 1)
    w.add(f"no *table header: assumed the {table} table ({why})", no)
    return table


def _undeclared(family: str, table: str, name: str, backend: str) -> Chain:
    """A chain a rule names but no header declared: a built-in one is a base chain whose policy and
    policy counter are unknown (never an invented ACCEPT with zero packets)."""
    if name in BUILTIN_CHAINS:
        return Chain(family, table, name, POLICY_UNKNOWN, 0, 0, backend, counted=False)
    return Chain(family, table, name, None, 0, 0, backend)


def _declare(line: str, family: str, table: str, backend: str, known: set[str], chains: list[Chain],
             w: Warnings, no: int) -> None:
    """`iptables -S [-v]` form: `-P CHAIN POLICY [-c P B]` / `-N CHAIN`."""
    parts = line.split()
    if len(parts) < 2:
        w.add(f"bad chain line {line[:60]!r}", no)
        return
    name = parts[1]
    if name in known:
        return
    if line[1] == "N":
        chains.append(Chain(family, table, name, None, 0, 0, backend))
    else:
        pol = parts[2] if len(parts) > 2 else POLICY_UNKNOWN
        counts = None
        if len(parts) >= 6 and parts[3] in ("-c", "--set-counters") and parts[4].isdecimal() and parts[5].isdecimal():
            counts = (int(parts[4]), int(parts[5]))
        chains.append(Chain(family, table, name, pol, *(counts or (0, 0)), backend, counted=counts is not None))
    known.add(name)


def _chain_line(line: str, family: str, table: str, backend: str, w: Warnings, no: int) -> Chain | None:
    parts = line[1:].split()
    if not parts:
        w.add("empty chain line", no)
        return None
    name = parts[0]
    policy = parts[1] if len(parts) > 1 else "-"
    packets = nbytes = 0
    counted = len(parts) > 2
    if counted:
        c = parts[2]
        p, sep, b = c[1:-1].partition(":")
        if c[0] == "[" and c[-1] == "]" and sep and p.isdecimal() and b.isdecimal() and p.isascii() and b.isascii():
            packets, nbytes = int(p), int(b)
        else:
            w.add(f"bad chain counters {c[:40]!r} for {name!r}", no)
            counted = False
    pol = None if policy == "-" else policy
    return Chain(family, table, name, pol, packets, nbytes, backend, counted=counted or pol is None)


def _outside_quotes(spec: str, pos: int) -> bool:
    """True when `pos` is not inside a double-quoted string (escaped quotes do not count)."""
    return (spec.count('"', 0, pos) - spec.count('\\"', 0, pos)) % 2 == 0


def _last_flag(spec: str, flag: str) -> int:
    """Index of the value of the last `flag` option outside quotes (-1 if none)."""
    end = len(spec)
    quoted = '"' in spec
    while True:
        i = spec.rfind(" " + flag + " ", 0, end)
        if i < 0:
            return len(flag) + 1 if spec.startswith(flag + " ") else -1
        if not quoted or _outside_quotes(spec, i):
            return i + len(flag) + 2
        end = i


def _word(spec: str, i: int) -> str:
    j = spec.find(" ", i)
    return spec[i:] if j < 0 else spec[i:j]


def _target(spec: str, w: Warnings, no: int) -> tuple[str | None, bool, str | None, str, tuple[int, int] | None]:
    """Find the -j/-g target and the (last) comment of a rule, and the `-c P B` counters of `iptables -S -v`."""
    if "-c " in spec or "--set-counters" in spec or "--jump" in spec or "--goto" in spec:
        return _target_tokens(spec, w, no)
    j = spec.rfind(" -j ")
    if j >= 0 and spec.find('"', j) < 0 and " -g " not in spec:
        # The common shape: `... -j TARGET [options]` with no quote after it (quotes are balanced, so
        # the flag is outside them).
        k = j + 4
        e = spec.find(" ", k)
        target, goto = (spec[k:] if e < 0 else spec[k:e]), False
    else:
        jv = _last_flag(spec, "-j")
        gv = _last_flag(spec, "-g") if "-g " in spec else -1
        at, goto = (gv, True) if gv > jv else (jv, False)
        target = _word(spec, at) if at >= 0 else None
        if at < 0 and (spec.endswith((" -j", " -g")) or spec in ("-j", "-g")):
            w.add("target option without a target", no)
    comment = None
    c = spec.rfind("--comment ")
    if c >= 0:
        if '"' in spec and not _outside_quotes(spec, c):
            c = _last_flag(spec, "--comment") - 10
        if c >= 0:
            comment = _comment_at(spec, c + 10)
    return target, goto, comment, spec, None


def _comment_at(spec: str, i: int) -> str | None:
    """The `--comment` value starting at `i`: a quoted string (escapes undone) or one word."""
    if i >= len(spec):
        return None
    if spec[i] != '"':
        return _word(spec, i)
    e = spec.find('"', i + 1)
    while e > 0 and spec[e - 1] == "\\":
        e = spec.find('"', e + 1)
    if e < 0:
        return spec[i + 1:]        # torn line: the comment runs to the end
    value = spec[i + 1:e]
    return value.replace('\\"', '"').replace("\\\\", "\\") if "\\" in value else value


def _target_tokens(spec: str, w: Warnings, no: int
                   ) -> tuple[str | None, bool, str | None, str, tuple[int, int] | None]:
    """The tokenising path, for rules with long options or `-c P B` counters (rare)."""
    tokens = _TOKEN.findall(spec)
    target: str | None = None
    goto = False
    comment: str | None = None
    extra: tuple[int, int] | None = None
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if tok in ("-j", "--jump", "-g", "--goto"):
            if i + 1 >= n:
                w.add("target option without a target", no)
                break
            target, goto = tokens[i + 1], tok in ("-g", "--goto")
            i += 2
            continue
        if tok == "--comment" and i + 1 < n:
            comment = _unquote(tokens[i + 1])
            i += 2
            continue
        if tok in ("-c", "--set-counters") and i + 2 < n and tokens[i + 1].isdecimal() and tokens[i + 2].isdecimal():
            extra = (int(tokens[i + 1]), int(tokens[i + 2]))
            spec = " ".join(t for j, t in enumerate(tokens) if j not in (i, i + 1, i + 2))
            i += 3
            continue
        i += 1
    return target, goto, comment, spec, extra


def _unquote(tok: str) -> str:
    if len(tok) >= 2 and tok[0] == '"' and tok[-1] == '"':
        return tok[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return tok

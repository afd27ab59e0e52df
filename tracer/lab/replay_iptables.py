"""An `iptables-save` dump rewritten for `iptables-restore` in a lab node namespace (pure, one pass).

What changes, and why (each rule-level change is a Rewrite in the report; file-level ones are notes):
- counters are stripped (`[p:b]`, chain counters to [0:0]): the lab counts its own traffic;
- a dump cut short (excerpts from issues, a table without COMMIT) is closed, and its last line is
  dropped because it may be cut mid-rule; rules with no `*table` header go to the table their
  targets need (nat for DNAT/SNAT/MASQUERADE/REDIRECT/NETMAP, raw for NOTRACK/CT, else filter);
- chains that rules use or jump to but the dump never declares are declared empty (an excerpt's
  missing chains: a jump into them returns at once);
- dropped, because they cannot exist in a namespace: `-m bpf --object-pinned` (the node's pin),
  `-m cgroup --path` (the node's cgroups), SECMARK/CONNSECMARK (an LSM context), `-m owner` /
  `-m cgroup` in built-in chains the kernel refuses them in, rules of tables iptables does not
  have or on built-in chains the table lacks, jumps to built-in chains, unbalanced quotes;
- NFQUEUE gets `--queue-bypass`: the node has a queue reader (an IDS), the lab has none, and
  without one every queued packet would be dropped.
Anything the kernel still refuses at load time is dropped then, with its message (datapaths/replay).
"""

from __future__ import annotations

import re

from cnitrace.lab.replay import MAX_REPORT, Rewrite, Rewritten, Source

TABLES: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
ALL_BUILTINS = frozenset(c for cs in TABLES.values() for c in cs)
# Target extensions (libxt_*/libipt_* targets and the standard verdicts): never user chains.
XT_TARGETS = frozenset({
    "ACCEPT", "DROP", "RETURN", "QUEUE", "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK",
    "CONNSECMARK", "CT", "DNAT", "DNPT", "DSCP", "ECN", "HL", "HMARK", "IDLETIMER", "LED", "LOG", "MARK",
    "MASQUERADE", "MIRROR", "NETMAP", "NFLOG", "NFQUEUE", "NOTRACK", "RATEEST", "REDIRECT", "REJECT",
    "SECMARK", "SET", "SNAT", "SNPT", "SYNPROXY", "TARPIT", "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS", "TPROXY",
    "TRACE", "TTL", "ULOG", "ERROR", "JOOL", "FULLCONENAT",
})
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
RAW_TARGETS = frozenset({"NOTRACK", "CT"})
LSM_TARGETS = frozenset({"SECMARK", "CONNSECMARK"})
OWNER_HOOKS = frozenset({"OUTPUT", "POSTROUTING"})             # xt_owner's hooks
CGROUP_HOOKS = frozenset({"OUTPUT", "POSTROUTING", "INPUT"})   # xt_cgroup's hooks
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_SET_OPTS = ("--match-set", "--add-set", "--del-set", "--map-set")
CUT_SHORT = "the dump ends without COMMIT (cut short?): its last line may be incomplete; add COMMIT to keep it"


class _Table:
    __slots__ = ("name", "line", "decls", "rules", "committed")

    def __init__(self, name: str | None, line: int):
        self.name = name                  # None: rules with no *table header
        self.line = line
        self.decls: dict[str, tuple[str, int]] = {}     # chain -> (policy, input line)
        self.rules: list[list] = []       # [chain, input line, original, spec]
        self.committed = False


def tokens(spec: str) -> list[str]:
    return _TOKEN.findall(spec) if '"' in spec else spec.split()


def target_fast(spec: str) -> tuple[str | None, bool]:
    """target_of() without tokenising the whole rule: iptables-save writes the target last, after any
    quoted comment, so the tail after the last ` -j `/` -g ` holds it unless a quote is open there."""
    i = max(spec.rfind(" -j "), spec.rfind(" -g "))
    if i < 0 and spec.startswith(("-j ", "-g ")):
        i = -1
    elif i < 0 or spec.count('"', i) % 2:
        return target_of(tokens(spec))
    tail = spec[i + 1:].split(None, 2)
    return (tail[1], tail[0] == "-g") if len(tail) > 1 else (None, False)


def target_of(toks: list[str]) -> tuple[str | None, bool]:
    """The -j/-g target (the last one: a comment never holds an unquoted -j) and whether it is a goto."""
    for i in range(len(toks) - 2, -1, -1):
        t = toks[i]
        if t in ("-j", "--jump", "-g", "--goto"):
            return toks[i + 1], t in ("-g", "--goto")
    return None, False


def set_refs(toks: list[str]) -> list[tuple[str, int]]:
    """(ipset name, dimensions) for every set a rule matches or changes."""
    out = []
    for i, t in enumerate(toks):
        if t in _SET_OPTS and i + 1 < len(toks):
            dims = len(toks[i + 2].split(",")) if i + 2 < len(toks) and not toks[i + 2].startswith("-") else 1
            out.append((toks[i + 1], dims))
    return out


def _quotes_balanced(line: str) -> bool:
    return '"' not in line or (line.count('"') - line.count('\\"')) % 2 == 0


def _guess_table(rules: list[list]) -> tuple[str, str]:
    targets = set()
    for r in rules:
        targets.add(target_fast(r[3])[0])
    if targets & NAT_TARGETS:
        return "nat", f"its rules use {sorted(targets & NAT_TARGETS)[0]}"
    if targets & RAW_TARGETS:
        return "raw", f"its rules use {sorted(targets & RAW_TARGETS)[0]}"
    return "filter", "the default"


def _static_drop(chain: str, spec: str, target: str | None) -> str | None:
    """Why a rule cannot exist in a lab namespace, or None (substring checks first: this runs per rule)."""
    if target in LSM_TARGETS:
        return f"{target} needs the node's security-module (SELinux) context"
    if "-m bpf" not in spec and "-m cgroup" not in spec and "-m owner" not in spec:
        return None
    toks = tokens(spec)
    if "bpf" in toks and "--object-pinned" in toks:
        i = toks.index("--object-pinned") + 1
        return f"-m bpf --object-pinned {toks[i] if i < len(toks) else '?'}: a BPF object pinned on the node, not in the lab"
    if "cgroup" in toks and "--path" in toks:
        return "-m cgroup --path: names one of the node's cgroups"
    if chain in ALL_BUILTINS:
        if "owner" in toks and chain not in OWNER_HOOKS:
            return f"-m owner is refused by the kernel in {chain} (OUTPUT/POSTROUTING only)"
        if "cgroup" in toks and chain not in CGROUP_HOOKS:
            return f"-m cgroup is refused by the kernel in {chain} (INPUT/OUTPUT/POSTROUTING only)"
    return None


def _unreached(builtins: tuple[str, ...], edges: dict[str, set[str]], per_chain: dict[str, int]) -> list[str]:
    """Chains with rules that no path from a built-in chain reaches."""
    seen, todo = set(builtins), list(builtins)
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return [c for c in per_chain if c not in seen]


def rewrite(src: Source) -> Rewritten:
    """The dump as restore input, every dropped or changed rule reported (never raises)."""
    name = src.name
    lines = src.text.splitlines()
    blocks: list[_Table] = []
    cur: _Table | None = None
    notes: list[str] = []
    rewrites: list[Rewrite] = []
    rule_lines: set[int] = set()
    counters = 0
    last_content = 0
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        last_content = no
        c = line[0]
        if c == "*":
            if cur is not None:
                notes.append(f"line {cur.line}: table {cur.name or '(no header)'} has no COMMIT; closed")
                blocks.append(cur)
            cur = _Table(line[1:].strip(), no)
            continue
        if line == "COMMIT":
            if cur is not None:
                cur.committed = True
                blocks.append(cur)
                cur = None
            continue
        if cur is None:
            cur = _Table(None, no)
        if c == ":":
            parts = line[1:].split()
            if parts and parts[0] not in cur.decls:
                cur.decls[parts[0]] = (parts[1] if len(parts) > 1 else "-", no)
                counters += len(parts) > 2 and parts[2] != "[0:0]"
            continue
        if line.startswith(("-N ", "-P ")):      # `iptables -S` form
            parts = line.split()
            if len(parts) >= 2 and parts[1] not in cur.decls:
                cur.decls[parts[1]] = (parts[2] if line[1] == "P" and len(parts) > 2 else "-", no)
            continue
        text = line
        if c == "[":
            end = line.find("] ")
            if end > 0:
                text = line[end + 2:].lstrip()
                counters += line[:end + 1] != "[0:0]"
        if text.startswith("-A "):
            rest = text[3:].lstrip()
            sp = rest.find(" ")
            chain, spec = (rest, "") if sp < 0 else (rest[:sp], rest[sp + 1:].strip())
            if "-c " in spec:     # `iptables -S -v` counters
                spec = re.sub(r"(^|\s)-c \d+ \d+(?=\s|$)", "", spec).strip()
            cur.rules.append([chain, no, line, spec])
            rule_lines.add(no)
        elif text.startswith(("-I ", "-D ", "-R ", "-F", "-X", "-Z")) or " -A " in text:
            rule_lines.add(no)
            rewrites.append(Rewrite(name, no, line, None, "not a save-dump rule (only -A lines are replayed)"))
        else:
            notes.append(f"line {no} ignored: not part of an iptables-save dump ({line[:40]!r})")
    if cur is not None:
        blocks.append(cur)
        if cur.rules and cur.rules[-1][1] == last_content:
            chain, no, orig, _ = cur.rules.pop()
            rewrites.append(Rewrite(name, no, orig, None, CUT_SHORT))
        elif cur.decls and next(reversed(cur.decls.values()))[1] == last_content:
            dropped = next(reversed(cur.decls))
            del cur.decls[dropped]
            notes.append(f"line {last_content}: chain declaration {dropped!r} at the cut-short end ignored")
    if counters:
        notes.append(f"counters stripped from {counters} lines (the lab counts its own packets)")

    out: list[str] = []
    origin: list[int] = []
    sets_used: dict[str, int] = {}
    tables: list[str] = []
    for b in blocks:
        _emit(b, name, out, origin, rewrites, notes, sets_used, tables)
    if len(rewrites) > MAX_REPORT:
        notes.append(f"report truncated to {MAX_REPORT} rewrites")
    return Rewritten(src, out, origin, len(rule_lines), rewrites, notes, sets_used, {}, tuple(tables),
                     rule_lines=frozenset(rule_lines))


def _emit(b: _Table, name: str, out: list[str], origin: list[int], rewrites: list[Rewrite], notes: list[str],
          sets_used: dict[str, int], tables: list[str]) -> None:
    table = b.name
    if table is None:
        if not b.rules:
            return
        table, why = _guess_table(b.rules)
        notes.append(f"line {b.line}: rules with no *table header loaded into {table} ({why})")
    if table not in TABLES:
        for chain, no, orig, _ in b.rules:
            rewrites.append(Rewrite(name, no, orig, None, f"iptables has no {table!r} table"))
        if b.rules or b.decls:
            notes.append(f"line {b.line}: table {table!r} skipped: not one of {', '.join(TABLES)}")
        return
    if table in tables:
        notes.append(f"line {b.line}: table {table} appears twice; the second replaces the first")
    builtins = TABLES[table]
    decl_lines: list[tuple[str, int]] = []
    declared: set[str] = set()
    for chain, (policy, no) in b.decls.items():
        if chain in builtins:
            decl_lines.append((f":{chain} {policy if policy in ('ACCEPT', 'DROP') else 'ACCEPT'} [0:0]", no))
        elif chain in ALL_BUILTINS and policy != "-":
            notes.append(f"line {no}: built-in chain {chain} is not in the {table} table; declaration ignored")
            continue
        else:
            decl_lines.append((f":{chain} - [0:0]", no))
        declared.add(chain)
    user = declared - set(builtins)
    added: list[str] = []
    kept: list[tuple[str, int]] = []
    edges: dict[str, set[str]] = {}
    per_chain: dict[str, int] = {}
    for chain, no, orig, spec in b.rules:
        if not chain:
            rewrites.append(Rewrite(name, no, orig, None, "no chain name"))
            continue
        if not _quotes_balanced(spec):
            rewrites.append(Rewrite(name, no, orig, None, "unbalanced quote (the line is cut short)"))
            continue
        if chain not in declared and chain not in builtins:
            if chain in ALL_BUILTINS:
                rewrites.append(Rewrite(name, no, orig, None, f"{chain} is not a built-in chain of the {table} table"))
                continue
            declared.add(chain)
            user.add(chain)
            added.append(chain)
        target, _ = target_fast(spec)
        why = _static_drop(chain, spec, target)
        if why is None and target in ALL_BUILTINS:
            why = f"jumps to the built-in chain {target}"
        if why is not None:
            rewrites.append(Rewrite(name, no, orig, None, why))
            continue
        if target and target not in XT_TARGETS and target not in declared:
            declared.add(target)
            user.add(target)
            added.append(target)
        if "-set " in spec:
            for s, dims in set_refs(tokens(spec)):
                sets_used[s] = max(sets_used.get(s, 0), dims)
        new = f"-A {chain} {spec}" if spec else f"-A {chain}"
        if target == "NFQUEUE" and "--queue-bypass" not in spec:
            new += " --queue-bypass"
            rewrites.append(Rewrite(name, no, orig, new, "no queue reader in the lab: packets pass on instead "
                                                         "of being dropped"))
        kept.append((new, no))
        per_chain[chain] = per_chain.get(chain, 0) + 1
        if target in user:
            edges.setdefault(chain, set()).add(target)
    unreached = _unreached(builtins, edges, per_chain)
    if unreached:
        notes.append(f"table {table}: {sum(per_chain[c] for c in unreached)} rules in {len(unreached)} chain(s) that "
                     "no built-in chain jumps to (an excerpt?): no packet can exercise them")
    if added:
        notes.append(f"table {table}: {len(added)} chain(s) used but not declared in the dump, declared empty: "
                     + ", ".join(added[:8]) + (" ..." if len(added) > 8 else ""))
    tables.append(table)
    out.append(f"*{table}")
    origin.append(0)
    for line, no in decl_lines:
        out.append(line)
        origin.append(no)
    for chain in added:
        out.append(f":{chain} - [0:0]")
        origin.append(0)
    for line, no in kept:
        out.append(line)
        origin.append(no)
    out.append("COMMIT")
    origin.append(0)

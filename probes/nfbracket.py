"""Netfilter bracket probes: measured time per iptables table / nft base chain, per packet,
on kernels without kprobes or fentry (BPF netfilter programs, Linux >= 6.4).

How: a netfilter hook calls its registered functions in priority order, and a BPF netfilter
program can be linked at any priority (BPF_LINK_CREATE, attach type BPF_NETFILTER). A table
registered at priority p is bracketed by an entry program at p-1 and an exit program at p+1
(nfbracket.bpf.c): exit - entry is the table's time for that packet, in a log2 histogram
per bracket. A packet the table drops is closed from skb:kfree_skb (tp_btf, reason
NETFILTER_DROP) and counted apart. An empty pair (entry at P, exit at P+1, nothing between)
on the same hook gives the floor — the brackets' own cost — which is subtracted from every
table figure and reported as the overhead.

What is registered comes from the namespace's own rulesets: `nft -j list ruleset` (native nft
base chains and iptables-nft's, each with hook and priority) and `iptables-legacy-save` /
`ip6tables-legacy-save` (x_tables tables, at fixed priorities). `plan()` is pure: it turns
those hooks into brackets, grouping tables whose priorities are too close to separate and
saying so, and refusing what cannot be bracketed (bridge/arp/netdev families, ingress and
egress hooks, reserved priorities) with a reason.

Lifetime: every object is an fd of this process — programs, links (made in the target
namespace by a thread that setns()es there; the fd keeps working after), bcc's maps. Nothing
is pinned; close() (also registered with the Session: exit, SIGINT, SIGTERM) closes the links
first, which detaches them, and a killed process leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import json
import os
import socket
import threading
import warnings
from typing import Any, Iterable, Mapping, Sequence

from cnitrace.core.errors import ToolError, UsageError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner
from cnitrace.core.selection import Selection
from cnitrace.probes.histogram import EMPTY, Histogram, merge_cpus, slot_bounds, slot_of
from cnitrace.probes.specs import NF_FAMILIES, NF_HOOKS
from cnitrace.core.selection import validate_ifname
from cnitrace.probes import bpfsys
from cnitrace.probes import btf as btfmod
from cnitrace.probes.loader import load
from cnitrace.probes.runtime import Figure
from cnitrace.probes.runtime import netns_inode
from cnitrace.probes.runtime import parse_links

SOURCE = "nfbracket.bpf.c"
STAGE, MAP, BACKEND, UNIT = "netfilter", "nf_table_agg", "nf_bpf", "ns"
FLOOR_MAP = "nf_bracket_floor"
MAX_SLOTS = 16                     # NFB_MAX_SLOTS in nfbracket.bpf.c (tables and floors together)
MAX_IFACES = 8                     # CNIT_NIF constant pairs
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1

IPV4, IPV6 = 2, 10
HOOK_NUMS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
NFT_FAMILY_PFS = {"ip": (IPV4,), "ip6": (IPV6,), "inet": (IPV4, IPV6)}

# x_tables tables (iptables-legacy): the hooks each registers and its fixed priority
# (NF_IP_PRI_* / NF_IP6_PRI_*; nat: DST before routing/output, SRC after).
LEGACY_TABLES: dict[str, dict[int, int]] = {
    "raw": {0: -300, 3: -300},
    "mangle": {0: -150, 1: -150, 2: -150, 3: -150, 4: -150},
    "nat": {0: -100, 3: -100, 1: 100, 4: 100},
    "filter": {1: 0, 2: 0, 3: 0},
    "security": {1: 50, 2: 50, 3: 50},
}
# Hooks the kernel itself may register in a namespace (conntrack, defragmentation): no ruleset
# shows them, so a table whose bracket would reach one is grouped with it, and says so.
KERNEL_HOOKS: tuple[tuple[int, int, int, str], ...] = tuple(
    (pf, hook, prio, name) for pf in (IPV4, IPV6)
    for hook, prio, name in ((0, -400, "defrag"), (3, -400, "defrag"), (0, -200, "conntrack"),
                             (3, -200, "conntrack")))
# Floors go before every table, so packets a table drops have passed their hook's floor too.
FLOOR_CANDIDATES = (-1000, -1500, -2000, -3000, -5000, -10000, 1000, 2000)


# --- pure: what is registered ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Registered:
    """One function registered at a netfilter hook in a namespace: a table or base chain."""

    pf: int
    hook: int
    priority: int
    kind: str            # "iptables" / "ip6tables" (legacy x_tables), "nft", "kernel"
    table: str
    chain: str
    family: str = ""     # nft family (ip, ip6, inet), "" for the others

    @property
    def label(self) -> str:
        if self.kind == "nft":
            return f"nft {self.family} {self.table}/{self.chain} ({self.priority})"
        if self.kind == "kernel":
            return f"{self.table} ({self.priority})"
        return f"{self.kind} {self.table} ({self.priority})"


@dataclasses.dataclass(frozen=True)
class Refused:
    """A table that could not be bracketed, and why."""

    what: Registered | None
    reason: str
    family: str = ""
    hook_name: str = ""
    table: str = ""
    chain: str = ""

    def to_json(self) -> dict[str, Any]:
        w = self.what
        return {"table": w.table if w else self.table, "chain": w.chain if w else self.chain,
                "kind": w.kind if w else "nft", "family": (w.family if w else self.family),
                "hook": (NF_HOOKS.get(w.hook, str(w.hook)) if w else self.hook_name),
                "reason": self.reason}


def nft_registered(nft_json: str) -> tuple[list[Registered], list[Refused]]:
    """`nft -j list ruleset` -> the base chains (native nft and iptables-nft) a BPF netfilter
    bracket can reach, and those it cannot (other families, ingress/egress hooks)."""
    if not nft_json.strip():
        return [], []
    try:
        doc = json.loads(nft_json)
    except ValueError as exc:
        raise ValueError(f"nft -j output is not JSON: {exc}") from None
    regs: list[Registered] = []
    refused: list[Refused] = []
    for item in doc.get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if not chain or "hook" not in chain:
            continue            # a regular chain: reached only by jumps, part of its base chain's time
        fam, hook, table, name = chain.get("family", ""), chain["hook"], chain.get("table", ""), chain.get("name", "")
        prio = chain.get("prio", 0)
        if not isinstance(prio, int):
            refused.append(Refused(None, f"priority {prio!r} is not a number", fam, hook.upper(), table, name))
            continue
        pfs = NFT_FAMILY_PFS.get(fam)
        if pfs is None:
            refused.append(Refused(None, f"family {fam}: BPF netfilter links exist for ipv4 and ipv6 only",
                                   fam, hook.upper(), table, name))
            continue
        if hook not in HOOK_NUMS:
            refused.append(Refused(None, f"hook {hook}: not an IP netfilter hook a BPF link can reach",
                                   fam, hook.upper(), table, name))
            continue
        for pf in pfs:
            regs.append(Registered(pf, HOOK_NUMS[hook], prio, "nft", table, name, fam))
    return regs, refused


def legacy_tables(save_text: str) -> list[str]:
    """Table names in iptables-legacy-save output (`*filter` lines)."""
    return [l[1:].strip() for l in save_text.splitlines() if l.startswith("*") and l[1:].strip()]


def legacy_registered(save_text: str, pf: int = IPV4) -> tuple[list[Registered], list[Refused]]:
    """x_tables tables present in a namespace (iptables-legacy-save / ip6tables-legacy-save) ->
    their hooks at the fixed priorities; the chain is the built-in chain of that hook."""
    kind = "iptables" if pf == IPV4 else "ip6tables"
    regs: list[Registered] = []
    refused: list[Refused] = []
    for t in legacy_tables(save_text):
        hooks = LEGACY_TABLES.get(t)
        if hooks is None:
            refused.append(Refused(None, f"unknown x_tables table {t!r}: its priority is not known",
                                   "", "", t, ""))
            continue
        for hook, prio in sorted(hooks.items()):
            regs.append(Registered(pf, hook, prio, kind, t, NF_HOOKS[hook]))
    return regs, refused


def kernel_hooks() -> list[Registered]:
    return [Registered(pf, hook, prio, "kernel", name, NF_HOOKS[hook]) for pf, hook, prio, name in KERNEL_HOOKS]


# --- pure: the plan ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bracket:
    """An entry program at `entry` and an exit program at `exit` priority on one (pf, hook):
    everything registered with entry < priority <= exit runs between them (`members`; ours
    register after the tables, so at an equal priority they run after them). A floor bracket
    has no members: it measures the brackets' own cost."""

    pf: int
    hook: int
    entry: int
    exit: int
    members: tuple[Registered, ...] = ()
    note: str = ""

    @property
    def floor(self) -> bool:
        return not self.members

    @property
    def priority(self) -> int:
        tables = [m for m in self.members if m.kind != "kernel"] or list(self.members)
        return tables[0].priority if tables else self.entry

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1

    @property
    def tables(self) -> tuple[Registered, ...]:
        return tuple(m for m in self.members if m.kind != "kernel")

    def names(self) -> dict[str, str]:
        """kind, table, chain, family as the figure key carries them (joined with '+' for a group)."""
        t = self.tables or self.members
        kinds = list(dict.fromkeys(m.kind for m in t))
        return {"kind": kinds[0] if len(kinds) == 1 else "+".join(kinds),
                "table": "+".join(dict.fromkeys(m.table for m in t)),
                "chain": "+".join(dict.fromkeys(m.chain for m in t)),
                "family": "+".join(dict.fromkeys(m.family for m in t if m.family))}

    def key(self, netns: int) -> dict[str, Any]:
        k: dict[str, Any] = {"netns": netns, "pf": NF_FAMILIES.get(self.pf, str(self.pf)),
                             "hook": NF_HOOKS.get(self.hook, str(self.hook))}
        if self.floor:
            k.update(kind="floor", table="", chain="", priority=self.entry)
        else:
            k.update(self.names(), priority=self.priority)
            k["members"] = [m.label for m in self.members]
            k["grouped"] = self.grouped
        k["entry_priority"], k["exit_priority"] = self.entry, self.exit
        if self.note:
            k["note"] = self.note
        return k


@dataclasses.dataclass(frozen=True)
class Plan:
    brackets: tuple[Bracket, ...]          # tables first (by pf, hook, priority), then floors
    refused: tuple[Refused, ...] = ()
    # (i, j): bracket i's exit and bracket j's entry are one program (linked at i's exit): nothing
    # is registered between them, so j may start where i ends, and every packet runs one program
    # fewer there (chain_pairs)
    chains: tuple[tuple[int, int], ...] = ()

    @property
    def tables(self) -> tuple[Bracket, ...]:
        return tuple(b for b in self.brackets if not b.floor)

    @property
    def floors(self) -> tuple[Bracket, ...]:
        return tuple(b for b in self.brackets if b.floor)

    def to_json(self) -> dict[str, Any]:
        return {"brackets": [b.key(0) | {"netns": None} for b in self.brackets],
                "refused": [r.to_json() for r in self.refused]}


def _inside(regs: Iterable[Registered], lo: int, hi: int) -> list[Registered]:
    """What runs between an entry linked at `lo` and an exit linked at `hi` (linked after them)."""
    return [r for r in regs if lo < r.priority <= hi]


def _floor_priority(regs: Sequence[Registered], used: set[int]) -> int | None:
    taken = {r.priority for r in regs} | used
    for p in FLOOR_CANDIDATES:
        if not any(q in taken for q in range(p - 1, p + 3)):
            return p
    return None


def plan(registered: Iterable[Registered], *, hooks: Iterable[int] | None = None,
         pfs: Iterable[int] | None = None, select: Any = None, with_kernel: bool = True,
         refused: Iterable[Refused] = (), max_slots: int = MAX_SLOTS, floors: bool = True) -> Plan:
    """Brackets for the selected tables (every registered one by default) on the chosen hooks
    and families, with one floor per (pf, hook) that has a bracket (each costs every packet at
    its hook as much as a bracket does; `floors=False` leaves them out).

    Collisions: a bracket [p-1, p+1] holds every hook registered in (p-1, p+1]. When that is
    more than the table — two tables at one priority, a table one above, conntrack at -200
    next to a chain at -199 — the group is bracketed as one and the figure says so (key
    `grouped`, `members`). A priority whose p-1 or p+1 is reserved (INT_MIN, INT_MAX) cannot
    be bracketed. Brackets beyond the program slots are refused, with the reason.
    """
    regs = list(dict.fromkeys(registered))
    hooks_set = set(hooks) if hooks is not None else set(HOOK_NUMS.values())
    pfs_set = set(pfs) if pfs is not None else {IPV4, IPV6}
    out_refused = list(refused)
    everything = regs + (kernel_hooks() if with_kernel else [])
    brackets: list[Bracket] = []
    for pf, hook in sorted({(r.pf, r.hook) for r in regs}):
        if pf not in pfs_set or hook not in hooks_set:
            continue
        here = [r for r in everything if r.pf == pf and r.hook == hook]
        targets = sorted((r for r in here if r.kind != "kernel" and (select is None or select(r))),
                         key=lambda r: (r.priority, r.kind, r.table, r.chain))
        done: set[Registered] = set()
        for t in targets:
            if t in done:
                continue
            if t.priority - 1 <= INT_MIN or t.priority + 1 >= INT_MAX:
                out_refused.append(Refused(t, f"priority {t.priority}: a bracket needs links at "
                                              f"{t.priority - 1} and {t.priority + 1}, and INT_MIN/INT_MAX "
                                              "are reserved"))
                done.add(t)
                continue
            lo, hi = t.priority - 1, t.priority + 1
            members = _inside(here, lo, hi)
            while True:   # a member at hi pulls the exit up until nothing more joins
                top = max(m.priority for m in members)
                if top + 1 <= hi:
                    break
                hi = top + 1
                if hi >= INT_MAX:
                    break
                members = _inside(here, lo, hi)
            if hi >= INT_MAX:
                out_refused.append(Refused(t, f"grouped with hooks up to priority {hi - 1}: no exit "
                                              "priority left"))
                done.update(members)
                continue
            members = sorted(members, key=lambda r: (r.priority, r.kind, r.table, r.chain))
            note = ""
            if len(members) > 1:
                others = [m.label for m in members if m != t]
                note = (f"could not separate {t.label} from {', '.join(others)}: priorities within one "
                        "of each other, bracketed as one group")
            done.update(members)
            brackets.append(Bracket(pf, hook, lo, hi, tuple(members), note))
    # one floor per (pf, hook) with a table bracket (floors=False: none; figures then keep it)
    for pf, hook in (sorted({(b.pf, b.hook) for b in brackets}) if floors else ()):
        here = [r for r in everything if r.pf == pf and r.hook == hook]
        used = {p for b in brackets if (b.pf, b.hook) == (pf, hook) for p in (b.entry, b.exit)}
        p = _floor_priority(here, used)
        if p is not None:
            brackets.append(Bracket(pf, hook, p, p + 1))
    # slots: tables in order, but every kept (pf, hook) keeps its floor
    if len(brackets) > max_slots:
        tables = [b for b in brackets if not b.floor]
        floors = {(b.pf, b.hook): b for b in brackets if b.floor}
        kept: list[Bracket] = []
        hooks_kept: list[tuple[int, int]] = []
        for b in tables:
            hooks_after = set(hooks_kept) | {(b.pf, b.hook)}
            if len(kept) + 1 + len(hooks_after) > max_slots:
                for m in b.tables:
                    out_refused.append(Refused(m, f"more than {max_slots} brackets (program slots): not bracketed"))
                continue
            kept.append(b)
            if (b.pf, b.hook) not in hooks_kept:
                hooks_kept.append((b.pf, b.hook))
        brackets = kept + [floors[h] for h in hooks_kept if h in floors]
    return Plan(tuple(brackets), tuple(out_refused), chain_pairs(brackets, everything))


def chain_pairs(brackets: Sequence[Bracket], registered: Iterable[Registered]) -> tuple[tuple[int, int], ...]:
    """(i, j) for each exit of bracket i followed, on its (pf, hook), directly by the entry of
    bracket j with nothing registered between them (a function at priority r runs between our
    programs at a and b when a < r <= b: ours run after a table at an equal priority). One
    program there can close i and open j: bracket j then starts at i's exit, which is the same
    place, as nothing runs in between (pure)."""
    regs = list(registered)
    out: list[tuple[int, int]] = []
    for pf, hook in sorted({(b.pf, b.hook) for b in brackets}):
        progs = sorted(((b.exit, 0, i) if is_exit else (b.entry, 1, i))
                       for i, b in enumerate(brackets) if (b.pf, b.hook) == (pf, hook) for is_exit in (True, False))
        here = [r.priority for r in regs if (r.pf, r.hook) == (pf, hook)]
        for (pa, ka, i), (pb, kb, j) in zip(progs, progs[1:]):
            if ka == 0 and kb == 1 and i != j and not any(pa < r <= pb for r in here):
                out.append((i, j))
    return tuple(out)


def plan_from_text(nft_json: str = "", legacy_v4: str = "", legacy_v6: str = "", **kw: Any) -> Plan:
    """The plan for one namespace from its rulesets' text (see plan() for the options)."""
    regs, ref = nft_registered(nft_json)
    r4, f4 = legacy_registered(legacy_v4, IPV4)
    r6, f6 = legacy_registered(legacy_v6, IPV6)
    return plan(regs + r4 + r6, refused=ref + f4 + f6 + list(kw.pop("refused", ())), **kw)


def link_plan(brackets: Sequence[Bracket], chains: Iterable[tuple[int, int]] = ()) -> list[tuple[str, int, int | None]]:
    """The programs to link, in link order: ("entry", slot, None), ("exit", slot, None), or
    ("mid", i, j) for a chained exit of i + entry of j (linked at i's exit) (pure)."""
    mids = dict(chains)
    into = set(mids.values())
    out: list[tuple[str, int, int | None]] = []
    for slot, is_exit in link_order(brackets):
        if is_exit:
            out.append(("mid", slot, mids[slot]) if slot in mids else ("exit", slot, None))
        elif slot not in into:
            out.append(("entry", slot, None))
    return out


def link_order(brackets: Sequence[Bracket]) -> list[tuple[int, bool]]:
    """(slot, is_exit) in the order to link: ascending priority per hook, and at an equal
    priority exits before entries, so an exit at p+1 runs before the next bracket's entry
    linked at the same priority (same-priority hooks run in registration order)."""
    order = []
    for slot, b in enumerate(brackets):
        order.append(((b.pf, b.hook, b.exit, 0), slot, True))
        order.append(((b.pf, b.hook, b.entry, 1), slot, False))
    return [(slot, is_exit) for _, slot, is_exit in sorted(order)]


def shifted(h: Histogram, by: float) -> Histogram:
    """The histogram with `by` ns taken off every sample: exact for count and sum (sum floored at
    0), approximate for the log2 slots (each bucket's samples move with its midpoint)."""
    if not h.count or by <= 0:
        return h
    slots = [0] * len(h.slots)
    for k, n in enumerate(h.slots):
        if n:
            lo, hi = slot_bounds(k)
            slots[slot_of(max(int((lo + hi) / 2 - by), 0))] += n
    return Histogram(h.count, max(int(round(h.sum - by * h.count)), 0), tuple(slots))


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which packets get a per-bracket event (`cnitrace trace`): IPv4 5-tuple parts, None = any."""

    proto: int = 0                 # 6 tcp, 17 udp
    saddr: str | None = None
    daddr: str | None = None
    dport: int | None = None

    def cflags(self) -> dict[str, str]:
        def be32(a: str | None) -> int:
            return int.from_bytes(socket.inet_aton(a), "little") if a else 0

        def be16(p: int | None) -> int:
            return int.from_bytes(int(p).to_bytes(2, "big"), "little") if p else 0
        return {"NFB_EVENTS": "1", "CNIT_EVENTS": "1", "CNIT_RINGBUF": "1", "CNIT_PROTO": str(self.proto),
                "CNIT_SADDR": hex(be32(self.saddr)), "CNIT_DADDR": hex(be32(self.daddr)),
                "CNIT_DPORT": hex(be16(self.dport))}


class NfbEvent(ctypes.Structure):
    """struct nfb_event (nfbracket.bpf.c)."""
    _fields_ = [("ts", ctypes.c_uint64), ("ns", ctypes.c_uint64), ("saddr", ctypes.c_uint32),
                ("daddr", ctypes.c_uint32), ("slot", ctypes.c_uint32), ("ip_id", ctypes.c_uint16),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("dropped", ctypes.c_uint8), ("ctinfo", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


# enum ip_conntrack_info (skb->_nfct & 7), as the trace names it
CTINFO = {0: "established", 1: "related", 2: "new", 3: "established reply", 4: "related reply", 7: "untracked"}


def decode_event(raw: bytes) -> dict[str, Any]:
    """One ring-buffer record -> a dict (pure)."""
    if len(raw) < ctypes.sizeof(NfbEvent):
        raise ValueError(f"nfbracket event of {len(raw)} bytes, expected {ctypes.sizeof(NfbEvent)}")
    e = NfbEvent.from_buffer_copy(raw[:ctypes.sizeof(NfbEvent)])
    return {"ts": e.ts, "ns": e.ns, "slot": e.slot, "ip_id": e.ip_id, "sport": e.sport, "dport": e.dport,
            "proto": e.proto, "saddr": socket.inet_ntoa(e.saddr.to_bytes(4, "little")),
            "daddr": socket.inet_ntoa(e.daddr.to_bytes(4, "little")), "dropped": bool(e.dropped),
            "ct": CTINFO.get(e.ctinfo, "none" if e.ctinfo == 255 else f"ctinfo {e.ctinfo}")}


def cflags(plan_: Plan | Sequence[Bracket], netns_of: Sequence[int], offsets: Mapping[str, int],
           ifaces: Sequence[tuple[int, int]] = (), drop_reason: int = 0, entry: bool = False,
           mids: Sequence[tuple[int, int]] = ()) -> dict[str, str]:
    """-D options: slot count, each slot's netns inode, BTF offsets, the interface pairs (matched
    as the packet's entry interface with `entry`, else as its in or out device), the
    NETFILTER_DROP reason value (0: no drop probe), the chained (exit i, entry j) programs."""
    brackets = plan_.brackets if isinstance(plan_, Plan) else tuple(plan_)
    if not 1 <= len(brackets) <= MAX_SLOTS:
        raise UsageError(f"{len(brackets)} brackets: between 1 and {MAX_SLOTS} fit")
    pairs = sorted(set(ifaces), key=lambda p: (p[1], p[0]))
    if len(pairs) > MAX_IFACES:
        raise UsageError(f"{len(pairs)} interfaces selected: at most {MAX_IFACES} for netfilter brackets")
    out = {"NFB_NSLOTS": str(len(brackets)), "CNIT_NIF": str(len(pairs))}
    out.update({f"NFB_NS{n}": str(netns_of[n]) for n in range(len(brackets))})
    out.update({f"CNIT_OFF_{k}": str(v) for k, v in offsets.items()})
    out.update({f"CNIT_IF{n}": str(i) for n, (_, i) in enumerate(pairs)})
    out.update({f"CNIT_NS{n}": str(ns) for n, (ns, _) in enumerate(pairs)})
    out["NFB_NMID"] = str(len(mids))
    for k, (i, j) in enumerate(mids):
        out.update({f"NFB_MID{k}_FROM": str(i), f"NFB_MID{k}_TO": str(j), f"NFB_MID{k}_NS": str(netns_of[j])})
    if drop_reason:
        out["NFB_DROP_REASON"] = str(drop_reason)
    if entry:
        out["CNIT_NFB_ENTRY"] = "1"
    return out


# Kernel struct fields this probe reads: -D CNIT_OFF_<name> from BTF.
BTF_FIELDS = {"NFCTX_STATE": ("bpf_nf_ctx", "state"), "NFCTX_SKB": ("bpf_nf_ctx", "skb"),
              "HOOK_STATE_IN": ("nf_hook_state", "in"), "HOOK_STATE_OUT": ("nf_hook_state", "out"),
              "DEV_IFINDEX": ("net_device", "ifindex"), "SKB_IIF": ("sk_buff", "skb_iif")}
# ... and with per-packet events: the packet's bytes and its conntrack entry (optional: no conntrack).
EVENT_FIELDS = {"SKB_PROTOCOL": ("sk_buff", "protocol"), "SKB_DATA": ("sk_buff", "data"),
                "SKB_NFCT": ("sk_buff", "_nfct")}


# --- I/O ---------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def in_netns(netns: str | None, fn: Any) -> Any:
    """Run fn() on a thread that entered `netns` (None: this one); BPF links and sockets made
    there belong to that namespace. The thread ends with it, so no thread is left switched."""
    if netns is None:
        return fn()
    out: list[Any] = []
    err: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise ToolError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            err.append(exc)

    t = threading.Thread(target=work, name=f"cnitrace-netns-{netns}")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def read_rulesets(netns: str | None, runner: Runner = DEFAULT_RUNNER) -> tuple[str, str, str]:
    """(nft -j list ruleset, iptables-legacy-save, ip6tables-legacy-save) in one namespace; ''
    for a tool that is missing or fails (that backend then has nothing registered)."""
    out = []
    for argv in (["nft", "-j", "list", "ruleset"], ["iptables-legacy-save"], ["ip6tables-legacy-save"]):
        if runner.which(argv[0]) is None:
            out.append("")
            continue
        try:
            done = runner.run(argv, netns=netns, timeout=20, check=False)
        except ToolError:
            out.append("")
            continue
        out.append(done.stdout if done.ok else "")
    return out[0], out[1], out[2]


class Brackets:
    """Bracket probes around the netfilter tables of one or more namespaces; a context manager,
    or closed by the Session it joined.

    targets: namespace names (None: the host's), or (netns, interface glob) pairs — then only
    packets entering or leaving those interfaces are timed. `hooks`/`pfs` narrow the plan
    (hook numbers or names, e.g. ("FORWARD",)); `select(Registered) -> bool` picks tables.
    """

    def __init__(self, targets: Sequence[Any] | str | None = None, *, session: Any = None,
                 runner: Runner = DEFAULT_RUNNER, hooks: Iterable[int | str] | None = None,
                 pfs: Iterable[int] | None = None, select: Any = None, drops: bool = True,
                 floors: bool = True, plans: Mapping[str | None, Plan] | None = None,
                 selection: Selection | None = None, entry: Iterable[int] | None = None,
                 events: EventFilter | None = None):
        """`selection`: resolved interfaces (the profile's), whose namespaces are bracketed and whose
        packets alone are timed; with `entry` (ifindexes of the selection) only packets that entered
        the node on those (the packets transit times); `targets`: names or (netns, glob) pairs."""
        self._selection = selection
        self._entry = None if entry is None else set(entry)
        self.event_filter = events
        self.events: list[dict[str, Any]] = []    # decoded per-bracket events (with `events` only)
        if selection is not None:
            targets = [ns or None for ns in selection.netns] or [None]
        if targets is None or isinstance(targets, str):
            targets = [targets]
        self.netns: list[str | None] = []
        self._globs: list[tuple[str | None, str]] = []
        for t in targets:
            if isinstance(t, tuple):
                ns, glob = t
                self._globs.append((ns, glob))
            else:
                ns = t
            if ns not in self.netns:
                self.netns.append(ns)
        self.session = session
        self.runner = runner
        self.hooks = None if hooks is None else {HOOK_NUMS[h.lower()] if isinstance(h, str) else int(h)
                                                 for h in hooks}
        self.pfs = None if pfs is None else set(pfs)
        self.select = select
        self.drops = drops
        self.floors = floors
        self._given_plans = dict(plans or {})
        self.plans: dict[str | None, Plan] = {}
        self.slots: list[tuple[str | None, int, Bracket]] = []   # (netns name, netns inode, bracket)
        self.mids: list[tuple[int, int]] = []                     # chained (exit slot, entry slot)
        self.refused: list[tuple[str | None, Refused]] = []
        self.created: list[dict[str, Any]] = []   # every kernel object made, in order
        self.bpf: Any = None
        self._links: list[int] = []
        self._progs: list[int] = []
        self._closed = False
        self.drop_probe = False

    # -- setup

    def _plan(self) -> None:
        for ns in self.netns:
            p = self._given_plans.get(ns)
            if p is None:
                nft, v4, v6 = read_rulesets(ns, self.runner)
                try:
                    p = plan_from_text(nft, v4, v6, hooks=self.hooks, pfs=self.pfs, select=self.select,
                                       floors=self.floors)
                except ValueError as exc:
                    raise ToolError(f"netns {ns or 'host'}: {exc}") from None
            self.plans[ns] = p
            self.refused += [(ns, r) for r in p.refused]
        slots = [(ns, netns_inode(ns), b) for ns, p in self.plans.items() for b in p.brackets]
        base, self.mids = 0, []
        for p in self.plans.values():          # chains by global slot, where both ends keep a slot
            self.mids += [(base + i, base + j) for i, j in p.chains if base + max(i, j) < MAX_SLOTS]
            base += len(p.brackets)
        if len(slots) > MAX_SLOTS:
            for ns, _, b in slots[MAX_SLOTS:]:
                for m in b.tables:
                    self.refused.append((ns, Refused(m, f"more than {MAX_SLOTS} brackets in all namespaces")))
            slots = slots[:MAX_SLOTS]
        self.slots = slots

    def _ifaces(self) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        if self._selection is not None:
            found += [(netns_inode(i.netns or None), i.ifindex) for i in self._selection.interfaces
                      if self._entry is None or i.ifindex in self._entry]
        for ns, glob in self._globs:
            validate_ifname(glob)
            links = parse_links(self.runner.run(["ip", "-o", "link", "show"], netns=ns).stdout)
            hits = [(netns_inode(ns), idx) for idx, name in links if fnmatch.fnmatchcase(name, glob)]
            if not hits:
                raise UsageError(f"no interface matches {glob!r}" + (f" in netns {ns}" if ns else ""))
            found += hits
        return list(dict.fromkeys(found))

    def attach(self) -> "Brackets":
        """Plan, compile (one bcc compile), load two programs per bracket and link them."""
        if self.session is not None:
            self.session.on_exit(self.close)
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def _attach(self) -> None:

        self._plan()
        if not self.slots or (not self._given_plans and not any(not b.floor for _, _, b in self.slots)):
            why = "; ".join(r.reason for _, r in self.refused) or "no table registered at the chosen hooks"
            raise ToolError(f"nothing to bracket ({why})")
        ifaces = self._ifaces()
        btf = btfmod.load()
        offsets = {}
        for name, (struct, field) in BTF_FIELDS.items():
            try:
                offsets[name] = btf.offset(struct, field)
            except btfmod.BtfError as exc:
                raise ToolError(f"netfilter brackets need {struct}.{field} in BTF (kernel >= 6.4): {exc}") from None
        reason = 0
        if self.drops and ("TYPEDEF", "btf_trace_kfree_skb") in btf.by_name:
            try:
                reason = btf.enum("skb_drop_reason").get("SKB_DROP_REASON_NETFILTER_DROP", 0)
            except btfmod.BtfError:
                reason = 0
        flags = cflags([b for _, _, b in self.slots], [ino for _, ino, _ in self.slots], offsets, ifaces, reason,
                       entry=self._entry is not None, mids=self.mids)
        if self.event_filter is not None:
            for name, (struct, field) in EVENT_FIELDS.items():
                try:
                    flags[f"CNIT_OFF_{name}"] = str(btf.offset(struct, field))
                except btfmod.BtfError:
                    if name != "SKB_NFCT":
                        raise ToolError(f"bracket events need {struct}.{field} in BTF") from None
            flags.update(self.event_filter.cflags())
        self.bpf = load(SOURCE, flags, autoload=False)
        if self.event_filter is not None:
            self.bpf[b"cnit_events"].open_ring_buffer(
                lambda ctx, data, size: self.events.append(decode_event(ctypes.string_at(data, size))))
        mid_of = {i: k for k, (i, _j) in enumerate(self.mids)}
        for ns in self.netns:
            mine = [i for i, (sns, _, _) in enumerate(self.slots) if sns == ns]
            chains = [(mine.index(i), mine.index(j)) for i, j in self.mids if i in mine and j in mine]
            order = [(kind, mine[a], None if b is None else mine[b])
                     for kind, a, b in link_plan([self.slots[i][2] for i in mine], chains)]

            def link_all(order=order) -> None:
                for kind, n, _to in order:
                    b = self.slots[n][2]
                    prio = b.entry if kind == "entry" else b.exit
                    fn = {"entry": f"nfb_in_{n}", "exit": f"nfb_out_{n}", "mid": f"nfb_mid_{mid_of.get(n)}"}[kind]
                    fd = bpfsys.load_program(self.bpf.dump_func(fn.encode()), prog_type=bpfsys.BPF_PROG_TYPE_NETFILTER,
                                             attach_type=bpfsys.BPF_NETFILTER,
                                             name=f"cnit_nfb_{n}{ {'entry': 'e', 'exit': 'x', 'mid': 'm'}[kind]}")
                    self._progs.append(fd)
                    self.created.append({"kind": "bpf_prog", "fd": fd, **bpfsys.fd_ids(fd), "slot": n,
                                         "program": kind, **({"to_slot": _to} if _to is not None else {})})
                    try:
                        lfd = bpfsys.link_netfilter(fd, b.pf, b.hook, prio)
                    except OSError as exc:
                        raise ToolError(f"linking bracket {n} ({kind}) at "
                                        f"{NF_FAMILIES.get(b.pf)} {NF_HOOKS.get(b.hook)} priority {prio}: "
                                        f"{exc.strerror}") from None
                    self._links.append(lfd)
                    self.created.append({"kind": "bpf_link", "fd": lfd, **bpfsys.fd_ids(lfd), "slot": n,
                                         "netns": ns, "pf": b.pf, "hook": b.hook, "priority": prio})
            in_netns(ns, link_all)
        if reason:
            try:
                btf_id = btf.by_name[("TYPEDEF", "btf_trace_kfree_skb")]
                fd = bpfsys.load_tracing(self.bpf.dump_func(b"tpbtf__kfree_skb"), attach_type=bpfsys.BPF_TRACE_RAW_TP,
                                         btf_id=btf_id, target_fd=0, name="cnit_nfb_drop")
                self._progs.append(fd)
                self.created.append({"kind": "bpf_prog", "fd": fd, **bpfsys.fd_ids(fd), "slot": None})
                lfd = bpfsys.attach_tracing(fd)
                self._links.append(lfd)
                self.created.append({"kind": "bpf_link", "fd": lfd, **bpfsys.fd_ids(lfd), "tp": "skb:kfree_skb"})
                self.drop_probe = True
            except (ToolError, OSError) as exc:
                warnings.warn(f"netfilter brackets: drops inside tables not counted ({exc})")

    # -- reading

    def _hist(self, name: str, slot: int) -> Histogram:
        t = self.bpf[name.encode()]
        per_cpu = t[t.Key(slot)]
        return merge_cpus((v.count, v.sum, list(v.slots)) for v in per_cpu)

    def lost(self) -> int:
        """Exits that found another skb's tag open (interleaved packets on a CPU): untimed."""
        if self.bpf is None:
            return 0
        t = self.bpf[b"nfb_lost"]
        return sum(int(v) for n in range(len(self.slots)) for v in t[t.Key(n)])

    def raw(self) -> list[tuple[str | None, int, Bracket, Histogram, Histogram]]:
        """(netns name, netns inode, bracket, passed histogram, dropped histogram) per slot."""
        if self.bpf is None:
            return []
        return [(ns, ino, b, self._hist("nf_table_agg", n), self._hist("nfb_drop_agg", n))
                for n, (ns, ino, b) in enumerate(self.slots)]

    def figures(self) -> list[Any]:
        return figures_from(self.raw())

    def poll_events(self) -> None:
        """Move pending per-bracket events into self.events (with `events` only; never waits)."""
        if self.bpf is not None and self.event_filter is not None:
            self.bpf.ring_buffer_consume()

    def events_lost(self) -> int:
        if self.bpf is None or self.event_filter is None:
            return 0
        t = self.bpf[b"cnit_lost"]
        return sum(int(v) for v in t[t.Key(0)])

    def slot_key(self, slot: int) -> dict[str, Any]:
        """The figure key of bracket `slot` (netns name added) for an event's `slot`."""
        ns, ino, b = self.slots[slot]
        return {**b.key(ino), "netns_name": ns or ""}

    def reset(self) -> None:
        if self.bpf is None:
            return
        for name in (b"nf_table_agg", b"nfb_drop_agg", b"nfb_lost"):
            self.bpf[name].clear()

    def kernel_ids(self) -> dict[str, list[int]]:
        out: dict[str, set[int]] = {"prog": set(), "link": set()}
        for rec in self.created:
            for k in out:
                if f"{k}_id" in rec:
                    out[k].add(rec[f"{k}_id"])
        return {k: sorted(v) for k, v in out.items()}

    # -- lifetime

    def close(self) -> None:
        """Detach (links first) and free everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        for fds in (self._links, self._progs):
            while fds:
                try:
                    os.close(fds.pop())
                except OSError:
                    pass
        if self.bpf is not None:
            b, self.bpf = self.bpf, None
            try:
                b.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep closing
                warnings.warn(f"freeing bracket maps: {exc}")

    def __enter__(self) -> "Brackets":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def figures_from(raw: Sequence[tuple[str | None, int, Bracket, Histogram, Histogram]]) -> list[Any]:
    """Slots' histograms -> Figures: per table (passed: verdict ACCEPT; dropped inside: verdict
    DROP) with the floor of its (netns, pf, hook) subtracted, and the floors themselves (map
    nf_bracket_floor). Pure."""

    floors: dict[tuple[int, int, int], float] = {}
    for _, ino, b, h, _ in raw:
        if b.floor and h.count:
            floors[(ino, b.pf, b.hook)] = h.sum / h.count
    out = []
    for _, ino, b, h, d in raw:
        key = b.key(ino)
        if b.floor:
            if h.count:
                out.append(Figure(STAGE, FLOOR_MAP, BACKEND, UNIT, key, h, "nf_bpf"))
            continue
        floor = floors.get((ino, b.pf, b.hook))
        for verdict, hist in (("ACCEPT", h), ("DROP", d)):
            if not hist.count:
                continue
            k = dict(key, verdict=verdict, measured_mean_ns=hist.sum / hist.count,
                     floor_ns=floor, overhead_ns=floor, dropped=(verdict == "DROP"))
            out.append(Figure(STAGE, MAP, BACKEND, UNIT, k, shifted(hist, floor or 0.0), "nf_bpf"))
    return out


def table_times(figures: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """A summary per table (label from its key): packets passed, dropped inside, mean ns (floor
    subtracted), floor ns. For tests, the bench and a report line."""
    out: dict[str, dict[str, Any]] = {}
    for f in figures:
        if f.stage != STAGE or f.backend != BACKEND or f.map != MAP:
            continue
        k = f.key
        name = f"{k['pf']} {k['hook']} {k['kind']} {k['table']}/{k['chain']}"
        e = out.setdefault(name, {"passed": 0, "dropped": 0, "mean_ns": None, "floor_ns": k.get("floor_ns"),
                                  "hist": EMPTY, "key": k})
        if k["verdict"] == "DROP":
            e["dropped"] += f.hist.count
        else:
            e["passed"] += f.hist.count
            e["hist"] = e["hist"] + f.hist
            e["mean_ns"] = e["hist"].mean
    for e in out.values():
        e.pop("hist")
    return out

"""Ruleset changes during a window: what a live CNI agent rewrote under the profiler (pure).

Why: agents resync while cnitrace watches. Felix and kube-proxy replace chains with
`iptables-restore --noflush` (counters restart from zero, rules move), OVS agents re-add flows
(counters and duration restart), Cilium replaces a tc program (new id) and recreates maps. A
counter that restarted 200 ms before the end of a 5 s window holds 200 ms of packets, and a model
built on it is wrong without a word. So this module

- names every object that changed between snapshots (`changes_between`), per namespace;
- re-bases netfilter counters over mid-window snapshots: each interval's delta is counted since
  its own restart and the intervals are summed (`rebased_ruleset`, `rebased_nft`);
- decides per chain whether the re-based figure may be modelled or must be excluded (`treatment`),
  and marks the attribution inputs and the tree accordingly (`mark_work`, `mark_programs`, `mark_ovs`);
- bounds what reaches the report (`bound_work`): no chain sees more packets than entered its namespace.

Snapshots are duck-typed like cnitrace.profile.window.Counters: `iptables` and `nft` map a namespace
to a collector Snapshot; `bpf`, `ovs`, `conntrack` are Snapshots or None; `at` is the monotonic time
of the snapshot; `bpf_maps` the maps' metadata when the bpf snapshot holds none. Mid-window snapshots
carry iptables/nft only. What counters cannot show: a counter that restarted and then grew past its
old value looks like growth. nft handles (both nft and iptables-nft) reveal such replacements; on the
legacy backend only counters do, so the shorter the intervals, the smaller the blind spot.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from cnitrace.attribution.tree import ChainWork, excluded
from cnitrace.collectors.base import counter_delta
from cnitrace.collectors.bpfprog.parse import BpfMap, BpfProg
from cnitrace.collectors.conntrack.parse import CpuStats
from cnitrace.collectors.iptables.parse import Chain, Rule, Ruleset
from cnitrace.collectors.nftables.parse import NftChain, NftCounter, NftRule, NftSet
from cnitrace.collectors.ovs.parse import OfFlow, OfTable
from cnitrace.reports.document import CHANGED, Node

REBASE_MIN_COVERAGE = 0.8    # share of the window's packets a chain must have seen unchanged, counters intact
DURATION_SLACK_S = 1.0       # an OVS flow may age this much less than its bridge's oldest flows before it counts as re-added
MEASURED_STAY_VALID = ("measured figures (transit, BPF netfilter bracket table times, bpf_stats ns per run, "
                       "ovs-vswitchd CPU) time packets, not rules: they stay valid when rules change")
CHAIN_KINDS = ("iptables_chain", "nft_chain")
IPT_FAMILY = {"ip": "ipv4", "ip6": "ipv6"}
NFT_FAMILY = {v: k for k, v in IPT_FAMILY.items()}
_GLOBAL_DATA = (".rodata", ".data", ".bss", ".kconfig")   # per-object maps: new with every program load


@dataclasses.dataclass(frozen=True)
class Change:
    """One object that changed. `reset`: its counters restarted (went backward, new handle or id);
    `structural`: rules or flows appeared, vanished or moved; neither: informational (a set's size).
    `spans` are the (first, second) snapshot indexes between which it was seen changing;
    `compared` is how many intervals its collector was compared over."""

    kind: str
    where: Mapping[str, Any]
    what: tuple[str, ...]
    reset: bool = False
    structural: bool = False
    spans: tuple[tuple[int, int], ...] = ()
    compared: int = 1
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    renewed: tuple[tuple[int, int], ...] = ()   # spans in which every rule of it was re-created (nft handles)

    @property
    def ident(self) -> tuple:
        return (self.kind, *self.where.items())

    @property
    def label(self) -> str:
        w = self.where
        ns = f", netns {w['netns']}" if w.get("netns") else ""
        if self.kind == "iptables_chain":
            return f"iptables chain {w['chain']} ({w['table']}, {w['backend'] or 'iptables'}, {w['family']}{ns})"
        if self.kind == "iptables_table":
            return f"iptables table {w['table']} ({w['backend'] or 'iptables'}, {w['family']}{ns})"
        if self.kind in ("nft_chain", "nft_set", "nft_counter"):
            what = self.kind.split("_")[1]
            return f"nft {what} {w['family']} {w['table']} {w['name']}{' (' + ns[2:] + ')' if ns else ''}"
        if self.kind == "ovs_flows":
            name = f" ({w['name']})" if w.get("name") else ""
            return f"OVS flows {w['bridge']} table {w['table']}{name}"
        if self.kind == "ovs_table":
            return f"OVS table counters {w['bridge']} table {w['table']}"
        if self.kind == "bpf_program":
            return f"BPF program at {w['iface']} {w['attach']} {w['hook']}{' (' + ns[2:] + ')' if ns else ''}"
        if self.kind == "bpf_map":
            return f"BPF map {w['name']}"
        return f"{self.kind.replace('_', ' ')}{' (' + ns[2:] + ')' if ns else ''}"

    def to_json(self, times: Sequence[float] = ()) -> dict[str, Any]:
        at = (lambda i: round(times[i], 3)) if times else float
        return {"kind": self.kind, "where": dict(self.where), "label": self.label, "what": list(self.what),
                "reset": self.reset, "structural": self.structural,
                "spans_s": [[at(a), at(b)] for a, b in self.spans], "intervals": self.compared,
                "detail": dict(self.detail)}


@dataclasses.dataclass(frozen=True)
class Treatment:
    """What the model does with a changed chain: re-based (modelled on summed per-interval deltas)
    or excluded; `coverage` is the share of the window it ran under its final rules, counters intact."""

    rebased: bool
    intervals: int
    coverage: float
    why: str = ""
    unit: str = "packets"      # what coverage weighs: the namespace's packets, or time when they were not read

    @property
    def basis(self) -> str:
        if self.rebased:
            return (f"{CHANGED}: re-based over {self.intervals} intervals "
                    f"({self.coverage:.0%} of the window's {self.unit} counted in full)")
        return f"{CHANGED}: excluded ({self.why})"


@dataclasses.dataclass(frozen=True)
class Changes:
    """Every changed object of one window, in detection order; JSON-able."""

    objects: tuple[Change, ...] = ()
    times: tuple[float, ...] = (0.0, 1.0)     # each snapshot's offset from the first (s; indexes without clocks)
    load: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)  # ns -> packets so far

    @property
    def window(self) -> float:
        return self.times[-1] - self.times[0]

    @property
    def snapshots(self) -> int:
        return len(self.times)

    def axis(self, netns: str) -> tuple[tuple[float, ...], str]:
        """What an interval weighs when judging how much of the window a change spoilt: the packets
        the namespace's links carried in it (bursty traffic makes time a poor proxy), else time."""
        pos = self.load.get(netns)
        if pos and pos[-1] > pos[0]:
            return pos, "packets"
        return self.times, "time"

    def __bool__(self) -> bool:
        return bool(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def of_kind(self, *kinds: str) -> list[Change]:
        return [c for c in self.objects if c.kind in kinds]

    def chains(self) -> dict[tuple[str, str, str], Change]:
        """(netns, ChainWork table label, chain) -> its change, for the chains the model walks."""
        out = {}
        for c in self.of_kind(*CHAIN_KINDS):
            w = c.where
            if c.kind == "iptables_chain":
                out[(w["netns"], iptables_label(w["backend"], w["family"], w["table"]), w["chain"])] = c
            else:
                out[(w["netns"], nft_label(w["family"], w["table"]), w["name"])] = c
        return out

    def to_json(self, limit: int = 200) -> dict[str, Any]:
        objs = [dict(c.to_json(self.times), effect=effect(c, self)) for c in self.objects[:limit]]
        return {"count": len(self.objects), "objects": objs, "snapshots": self.snapshots,
                "window_s": round(self.window, 3), "measured": MEASURED_STAY_VALID}


def iptables_label(backend: str, family: str, table: str) -> str:
    """The table label attribution.netfilter.iptables_work gives ChainWork.table."""
    return f"{table} ({'iptables-' + backend if backend else 'iptables'}, {family})"


def nft_label(family: str, table: str) -> str:
    """The table label attribution.netfilter.nft_work gives ChainWork.table."""
    return f"{family} {table} (nft)"


# --- detection, one interval at a time ------------------------------------------------------------

ChainKey = tuple[str, str, str, str]    # (backend, family, table, chain)


def _rules_by_chain(rs: Ruleset) -> dict[ChainKey, list[Rule]]:
    out: dict[ChainKey, list[Rule]] = {}
    for r in rs.rules:
        out.setdefault((r.backend, r.family, r.table, r.chain), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.position)
    return out


def _order_changed(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether the items both sequences hold come in a different order (a rule moved)."""
    sa, sb = set(a), set(b)
    return [x for x in a if x in sb] != [x for x in b if x in sa]



def _membership(appeared: int, vanished: int, before: int, after: int) -> list[str]:
    """What a chain's rule list gained and lost between two snapshots, in words."""
    out = [f"{appeared} rule(s) appeared"] if appeared else []
    out += [f"{vanished} rule(s) vanished"] if vanished else []
    return out + ([f"rule count {before} → {after}"] if before != after else [])

def _backward(a: Any, b: Any) -> bool:
    return b.packets < a.packets or b.bytes < a.bytes


def iptables_changes(a: Ruleset, b: Ruleset, netns: str = "") -> list[Change]:
    """Chains replaced between two dumps of one namespace: rule counters backward, rules
    appeared/vanished/moved, rule count changed, a chain or table created/deleted, a built-in
    chain's policy counter backward. Backends dumped in only one snapshot are not compared (a
    mid-window snapshot reads only the backends that hold rules)."""
    ca = {(c.backend, c.family, c.table, c.name): c for c in a.chains}
    cb = {(c.backend, c.family, c.table, c.name): c for c in b.chains}
    common = {k[0] for k in ca} & {k[0] for k in cb}
    ta, tb = {k[:3] for k in ca if k[0] in common}, {k[:3] for k in cb if k[0] in common}
    out = [Change("iptables_table", {"netns": netns, "backend": t[0], "family": t[1], "table": t[2]},
                  ("table created" if t in tb else "table deleted",), structural=True)
           for t in sorted(ta ^ tb)]
    ra, rb = _rules_by_chain(a), _rules_by_chain(b)
    for key in dict.fromkeys([*ca, *cb]):
        if key[:3] not in ta or key[:3] not in tb:
            continue
        where = {"netns": netns, "backend": key[0], "family": key[1], "table": key[2], "chain": key[3]}
        if key not in ca or key not in cb:
            out.append(Change("iptables_chain", where, ("chain created" if key in cb else "chain deleted",),
                              structural=True, detail={"rules": len(rb.get(key, ()))}))
            continue
        what, reset = [], False
        xa, xb = ra.get(key, []), rb.get(key, [])
        ka, kb = [r.key for r in xa], [r.key for r in xb]
        old = dict(zip(ka, xa))
        back = sum(1 for k, r in zip(kb, xb) if k in old and _backward(old[k], r))
        if back:
            what.append("rule counters restarted (went backward)")
            reset = True
        if ca[key].builtin and cb[key].builtin and _backward(ca[key], cb[key]):
            what.append("policy counter went backward")
            reset = True
        appeared, vanished = len(set(kb) - set(ka)), len(set(ka) - set(kb))
        what += _membership(appeared, vanished, len(xa), len(xb))
        moved = _order_changed(ka, kb)
        if moved:
            what.append("rules moved (order changed)")
        structural = bool(appeared or vanished or moved or len(xa) != len(xb))
        if what:
            out.append(Change("iptables_chain", where, tuple(what), reset, structural,
                              detail={"rules": len(xb)}))
    return out


def _signature(r: NftRule) -> tuple:
    """What a rule does, without its handle or counters: equal signatures = the same rule re-added."""
    return (r.verdict, r.targets, r.lookups, r.comment, r.unconditional, r.counter_before_match, r.has_counter)


def _nft_index(records: Iterable[Any]) -> tuple[dict, dict, dict, dict]:
    chains, rules, sets, counters = {}, {}, {}, {}
    for r in records:
        if isinstance(r, NftChain):
            chains[(r.family, r.table, r.name)] = r
        elif isinstance(r, NftRule):
            rules.setdefault((r.family, r.table, r.chain), []).append(r)
        elif isinstance(r, NftSet):
            sets[(r.family, r.table, r.name)] = r
        elif isinstance(r, NftCounter):
            counters[(r.family, r.table, r.name)] = r
    for v in rules.values():
        v.sort(key=lambda r: r.position)
    return chains, rules, sets, counters


def _nft_where(netns: str, key: tuple[str, str, str], owned: set[tuple[str, str]]) -> tuple[str, dict]:
    """iptables-nft's tables are reported as the iptables chains they are (one object, not two)."""
    if key[:2] in owned:
        return "iptables_chain", {"netns": netns, "backend": "nft", "family": IPT_FAMILY.get(key[0], key[0]),
                                  "table": key[1], "chain": key[2]}
    return "nft_chain", {"netns": netns, "family": key[0], "table": key[1], "name": key[2]}


def nft_changes(a: Iterable[Any], b: Iterable[Any], netns: str = "",
                owned: set[tuple[str, str]] = frozenset(), span: tuple[int, int] = (0, 1)) -> list[Change]:
    """nft chains, sets and named counters changed between two `nft -j` dumps of one namespace:
    rules replaced (handles changed: the same rules re-added restart their counters; different ones
    change the structure), counters backward, rules moved, chains recreated (new handle), sets
    created/deleted/resized. `owned` (family, table) pairs are iptables-nft's: reported as iptables chains.
    `span`: the two snapshots' indexes, kept on a chain every rule of which was re-created (`renewed`)."""
    ca, ra, sa, na = _nft_index(a)
    cb, rb, sb, nb = _nft_index(b)
    tables = {k[:2] for k in ca} & {k[:2] for k in cb}
    out = []
    for key in dict.fromkeys([*ca, *cb]):
        if key[:2] not in tables:
            continue
        kind, where = _nft_where(netns, key, owned)
        if key not in ca or key not in cb:
            out.append(Change(kind, where, ("chain created" if key in cb else "chain deleted",), structural=True,
                              detail={"rules": len(rb.get(key, ()))}))
            continue
        what, reset = [], False
        xa, xb = ra.get(key, []), rb.get(key, [])
        recreated = ca[key].handle != cb[key].handle and None not in (ca[key].handle, cb[key].handle)
        if recreated:
            what.append(f"chain recreated (handle {ca[key].handle} → {cb[key].handle})")
            reset = True
        ha, hb = [r.handle for r in xa], [r.handle for r in xb]
        same = [_signature(r) for r in xa] == [_signature(r) for r in xb]
        new, gone = len(set(hb) - set(ha)), len(set(ha) - set(hb))
        renewed = recreated or (same and bool(xb) and not set(ha) & set(hb))   # every counter restarted
        structural = not same
        if (new or gone) and same:
            what.append("rules re-added (new handles)")
            reset = True
        elif not same:
            what += _membership(new, gone, len(xa), len(xb))
            if _order_changed(ha, hb) or (not new and not gone):
                what.append("rules changed or moved")
        old = {r.handle: r for r in xa}
        if any(r.handle in old and r.has_counter and old[r.handle].has_counter
               and (r.packets < old[r.handle].packets or (r.bytes or 0) < (old[r.handle].bytes or 0)) for r in xb):
            what.append("rule counters restarted (went backward)")
            reset = True
        if what:
            out.append(Change(kind, where, tuple(what), reset, structural, detail={"rules": len(xb)},
                              renewed=(span,) if renewed else ()))
    for key in dict.fromkeys([*sa, *sb]):
        if key[:2] not in tables or key[:2] in owned:
            continue
        where = {"netns": netns, "family": key[0], "table": key[1], "name": key[2]}
        if key not in sa or key not in sb:
            out.append(Change("nft_set", where, ("set created" if key in sb else "set deleted",)))
        elif sa[key].size != sb[key].size:
            out.append(Change("nft_set", where, (f"elements {sa[key].size} → {sb[key].size}",),
                              detail={"elements": sb[key].size}))
    for key in na:
        if key in nb and _backward(na[key], nb[key]):
            out.append(Change("nft_counter", {"netns": netns, "family": key[0], "table": key[1], "name": key[2]},
                              ("counter went backward (recreated or reset)",), reset=True))
    return out


def _age_gains(fa: Mapping[tuple, OfFlow], fb: Mapping[tuple, OfFlow]) -> dict[str, float]:
    """Per bridge, how much its oldest-living flows aged between the two dumps: the time between
    them as the bridge's own clock tells it (no flow ages more; a re-added one ages less)."""
    out: dict[str, float] = {}
    for k, f in fb.items():
        o = fa.get(k)
        if o is not None and f.duration_s is not None and o.duration_s is not None:
            out[f.bridge] = max(out.get(f.bridge, float("-inf")), f.duration_s - o.duration_s)
    return out


def _flow_age_restarted(fa: OfFlow, fb: OfFlow, gain: float | None) -> bool:
    if fa.duration_s is None or fb.duration_s is None:
        return False
    return fb.duration_s < fa.duration_s or (gain is not None and
                                             fb.duration_s - fa.duration_s + DURATION_SLACK_S < gain)


def ovs_changes(a: Any, b: Any) -> list[Change]:
    """OpenFlow flows re-added (counters backward: restarted; or only their duration restarted),
    appeared or vanished, per bridge and table; a table's own lookup counters going backward (the
    bridge was recreated or ovs-vswitchd restarted)."""
    names: dict[tuple[str, int], str] = {}
    for br, t in (b.meta.get("table_names") or {}).items():
        names.update({(br, int(k)): v for k, v in t.items()})
    fa = {r.key: r for r in a.records if isinstance(r, OfFlow)}
    fb = {r.key: r for r in b.records if isinstance(r, OfFlow)}
    gains = _age_gains(fa, fb)
    groups: dict[tuple[str, str], list[tuple]] = {}
    for k in dict.fromkeys([*fa, *fb]):
        groups.setdefault((k[1], k[2]), []).append(k)
    out = []
    for (bridge, table), keys in groups.items():
        both = [k for k in keys if k in fa and k in fb]
        back = sum(1 for k in both if fb[k].n_packets < fa[k].n_packets or fb[k].n_bytes < fa[k].n_bytes)
        aged = sum(1 for k in both if _flow_age_restarted(fa[k], fb[k], gains.get(bridge)))
        new, gone = sum(1 for k in keys if k not in fa), sum(1 for k in keys if k not in fb)
        what = []
        if aged:
            what.append(f"{aged} flow(s) re-added (duration restarted)")
        if back:
            what.append(f"counters went backward on {back} flow(s) (restarted)")
        if new:
            what.append(f"{new} flow(s) appeared")
        if gone:
            what.append(f"{gone} flow(s) vanished")
        if what:
            tnum = int(table) if str(table).isdigit() else table
            where = {"bridge": bridge, "table": tnum, "name": names.get((bridge, tnum)) if isinstance(tnum, int) else None}
            out.append(Change("ovs_flows", where, tuple(what), reset=bool(back), structural=bool(new or gone),
                              detail={"flows": sum(1 for k in keys if k in fb), "restarted": back, "re_added": aged}))
    ta = {r.key: r for r in a.records if isinstance(r, OfTable)}
    for r in b.records:
        if isinstance(r, OfTable) and r.key in ta and (r.lookup < ta[r.key].lookup or r.matched < ta[r.key].matched):
            out.append(Change("ovs_table", {"bridge": r.bridge, "table": r.table},
                              ("table lookup counters went backward (bridge recreated or ovs-vswitchd restarted)",),
                              reset=True))
    return out


def _attached(snap: Any) -> dict[tuple, list[tuple[int, str]]]:
    out: dict[tuple, list[tuple[int, str]]] = {}
    for a in (snap.meta.get("attachments") or []):
        key = (a.get("netns") or "", a.get("kind", ""), a.get("target", ""), a.get("hook", ""))
        out.setdefault(key, []).append((int(a["prog_id"]), a.get("prog_name") or ""))
    return {k: sorted(set(v)) for k, v in out.items()}


def _used_maps(snap: Any, maps: Iterable[BpfMap]) -> dict[str, set[int]]:
    """Map name -> ids, for the maps the snapshot's programs use (per-object global data skipped)."""
    used = {m for p in snap.records if isinstance(p, BpfProg) for m in p.map_ids}
    out: dict[str, set[int]] = {}
    for m in maps:
        if m.id in used and m.name and not any(s in m.name for s in _GLOBAL_DATA):
            out.setdefault(m.name, set()).add(m.id)
    return out


def bpf_changes(a: Any, b: Any, maps_a: Iterable[BpfMap] = (), maps_b: Iterable[BpfMap] = ()) -> list[Change]:
    """Programs replaced at an attachment (another program id at the same interface and hook),
    detached or attached; maps recreated (another id under the same name, among the maps the
    attached programs use). `maps_*` add map metadata a snapshot taken without map dumps lacks."""
    out = []
    xa, xb = _attached(a), _attached(b)
    still = {i for ps in xb.values() for i, _ in ps}
    for key in dict.fromkeys([*xa, *xb]):
        pa, pb = xa.get(key, []), xb.get(key, [])
        if [i for i, _ in pa] == [i for i, _ in pb]:
            continue
        where = {"netns": key[0], "attach": key[1], "iface": key[2], "hook": key[3]}
        show = lambda ps: ", ".join(f"{n or '?'} (id {i})" for i, n in ps) or "nothing"
        what = ("program replaced: " if pa and pb else "detached: " if pa else "attached: ") + \
            f"{show(pa)} → {show(pb)}"
        out.append(Change("bpf_program", where, (what,), reset=bool(pa and pb), structural=not (pa and pb),
                          detail={"old_ids": [i for i, _ in pa], "new_ids": [i for i, _ in pb],
                                  "old_still_attached": [i for i, _ in pa if i in still]}))
    ma = _used_maps(a, [*maps_a, *(r for r in a.records if isinstance(r, BpfMap))])
    mb = _used_maps(b, [*maps_b, *(r for r in b.records if isinstance(r, BpfMap))])
    for name in ma:
        if name in mb and not ma[name] & mb[name]:
            out.append(Change("bpf_map", {"name": name},
                              (f"map recreated (id {', '.join(map(str, sorted(ma[name])))} → "
                               f"{', '.join(map(str, sorted(mb[name])))})",),
                              reset=True, detail={"old_ids": sorted(ma[name]), "new_ids": sorted(mb[name])}))
    return out


def conntrack_changes(a: Any, b: Any) -> list[Change]:
    """Conntrack statistics that went backward: the table was reset with them (module reloaded,
    namespace recreated); a plain flush keeps the statistics, and entries expire on their own."""
    old = {r.key: r for r in a.records if isinstance(r, CpuStats)}
    hit: dict[str, int] = {}
    for r in b.records:
        o = old.get(r.key) if isinstance(r, CpuStats) else None
        if o is not None and any(v < o.values.get(k, 0) for k, v in r.values.items()):
            hit[r.netns] = hit.get(r.netns, 0) + 1
    return [Change("conntrack", {"netns": ns}, (f"statistics went backward on {n} CPU(s): table reset",), reset=True)
            for ns, n in hit.items()]


# --- across the window --------------------------------------------------------------------------

def _times(seq: Sequence[Any]) -> tuple[float, ...]:
    """Offsets of the snapshots from the first: their monotonic times, or their indexes without them."""
    ats = [getattr(c, "at", None) for c in seq]
    if any(a is None for a in ats) or any(y < x for x, y in zip(ats, ats[1:])):
        return tuple(float(i) for i in range(len(seq)))
    return tuple(float(a) - float(ats[0]) for a in ats)


def _load(seq: Sequence[Any], netns: str) -> tuple[float, ...] | None:
    """Packets the namespace's links carried up to each snapshot, when every snapshot read them and
    they never went backward (a link recreated mid-window makes them useless)."""
    got = [(getattr(c, "link_packets", None) or {}).get(netns) for c in seq]
    if any(g is None for g in got) or any(y < x for x, y in zip(got, got[1:])):
        return None
    return tuple(float(g - got[0]) for g in got)


def _merge(found: Iterable[tuple[Change, tuple[int, int], int]]) -> list[Change]:
    """One Change per object: its descriptions in first-seen order, flags or-ed, spans collected."""
    out: dict[tuple, Change] = {}
    for c, span, compared in found:
        prev = out.get(c.ident)
        if prev is None:
            out[c.ident] = dataclasses.replace(c, spans=(span,), compared=compared)
            continue
        out[c.ident] = dataclasses.replace(
            prev, what=tuple(dict.fromkeys([*prev.what, *c.what]))[:8], reset=prev.reset or c.reset,
            structural=prev.structural or c.structural, spans=tuple(dict.fromkeys([*prev.spans, span])),
            detail={**prev.detail, **c.detail}, renewed=(*prev.renewed, *c.renewed))
    return list(out.values())


def owned_tables(*rulesets: Ruleset) -> set[tuple[str, str]]:
    """(nft family, table) pairs iptables-nft manages (they hold its rules or chains)."""
    return {(NFT_FAMILY.get(c.family, c.family), c.table) for rs in rulesets for c in (*rs.chains, *rs.rules)
            if c.backend == "nft"}


def _ruleset(snap: Any) -> Ruleset:
    return Ruleset(tuple(r for r in snap.records if isinstance(r, Chain)),
                   tuple(r for r in snap.records if isinstance(r, Rule)))


def _pairs(seq: Sequence[Any], have) -> list[tuple[int, int]]:
    idx = [i for i, c in enumerate(seq) if have(c)]
    return list(zip(idx, idx[1:]))


def changes_between(before: Any, after: Any, mid: Sequence[Any] = ()) -> Changes:
    """Every object changed between `before` and `after`, looking at each interval between
    consecutive snapshots (`mid` ones carry iptables/nft only)."""
    seq = [before, *mid, after]
    found: list[tuple[Change, tuple[int, int], int]] = []
    namespaces = dict.fromkeys([*(before.iptables or {}), *(before.nft or {}), *(after.iptables or {}),
                                *(after.nft or {})])
    for ns in namespaces:
        ipt = _pairs(seq, lambda c: ns in (c.iptables or {}))
        for i, j in ipt:
            a, b = _ruleset(seq[i].iptables[ns]), _ruleset(seq[j].iptables[ns])
            found += [(c, (i, j), len(ipt)) for c in iptables_changes(a, b, ns)]
        owned = owned_tables(*(_ruleset(c.iptables[ns]) for c in (before, after) if ns in (c.iptables or {})))
        nft = _pairs(seq, lambda c: ns in (c.nft or {}))
        for i, j in nft:
            found += [(c, (i, j), len(nft)) for c in
                      nft_changes(seq[i].nft[ns].records, seq[j].nft[ns].records, ns, owned, (i, j))]
    whole = (0, len(seq) - 1)
    if before.ovs is not None and after.ovs is not None:
        found += [(c, whole, 1) for c in ovs_changes(before.ovs, after.ovs)]
    if before.bpf is not None and after.bpf is not None:
        found += [(c, whole, 1) for c in bpf_changes(before.bpf, after.bpf, getattr(before, "bpf_maps", ()) or (),
                                                      getattr(after, "bpf_maps", ()) or ())]
    if before.conntrack is not None and after.conntrack is not None:
        found += [(c, whole, 1) for c in conntrack_changes(before.conntrack, after.conntrack)]
    load = {ns: pos for ns in namespaces if (pos := _load(seq, ns)) is not None}
    return Changes(tuple(_merge(found)), _times(seq), load)


# --- what the model does with a changed chain -------------------------------------------------------

def _covered(spans: Iterable[tuple[int, int]], axis: Sequence[float]) -> float:
    """How much of `axis` (cumulative per snapshot) the union of index spans covers."""
    hit = {k for i, j in spans for k in range(i, j)}
    return sum(axis[k + 1] - axis[k] for k in hit)


def treatment(change: Change, changes: Changes) -> Treatment | None:
    """Re-based when at least REBASE_MIN_COVERAGE of the window's packets (time, when the links'
    counters were not read) crossed the chain's final rules with its counters intact: every interval
    in which it changed is uncertain (what it counted before the restart is lost), and so is
    everything before its last structural change (those packets met other rules). Otherwise
    excluded. None for a change that touches no counter."""
    if not (change.reset or change.structural):
        return None
    axis, unit = changes.axis(change.where.get("netns", ""))
    uncertain = list(change.spans)
    if change.structural:
        uncertain.append((0, max(b for _, b in change.spans)))
    total = axis[-1] - axis[0]
    coverage = max(0.0, 1.0 - _covered(uncertain, axis) / total) if total > 0 else 0.0
    if change.compared <= 1:
        return Treatment(False, change.compared, coverage, "no mid-window snapshot to re-base on", unit)
    if coverage < REBASE_MIN_COVERAGE:
        cause = "rules changed" if change.structural else "counters restarted"
        return Treatment(False, change.compared, coverage, f"{cause}: only {coverage:.0%} of the window's {unit} "
                         f"counted in full, < {REBASE_MIN_COVERAGE:.0%}", unit)
    return Treatment(True, change.compared, coverage, unit=unit)


def effect(change: Change, changes: Changes) -> str:
    """What the change does to the report's figures, in one line."""
    if change.kind in CHAIN_KINDS:
        tr = treatment(change, changes)
        return "no figure depends on it" if tr is None else f"modelled figure {tr.basis.split(': ', 1)[1]}"
    if change.kind == "bpf_program" and change.reset:
        return ("the new program's runs are counted since it was attached (measured); the replaced one's only if "
                "it still runs elsewhere at the end: the bpf stage may be a lower bound")
    if change.kind == "ovs_flows" and change.reset:
        return "its flows' counts dropped from the report (restarted); the table's lookups are counted in full"
    if change.kind == "ovs_table":
        return "OVS modelled figures excluded (table counters restarted); ovs-vswitchd CPU still measured"
    if change.kind in ("iptables_table", "bpf_program", "ovs_flows") and change.structural:
        return "the model uses the objects as they stood at the end of the window"
    return "no figure depends on it"


# --- re-basing ----------------------------------------------------------------------------------

def _since(old: Any, new: Any, forced: bool) -> tuple[int, int]:
    """A record's packets/bytes counted in one interval: the delta, or what it holds since its restart."""
    if old is None or forced:
        return max(new.packets or 0, 0), max(new.bytes or 0, 0)
    return (counter_delta(old.packets or 0, new.packets or 0).value,
            counter_delta(old.bytes or 0, new.bytes or 0).value)


def rebased_ruleset(rulesets: Sequence[Ruleset], forced: Mapping[int, set[ChainKey]] | None = None) -> Ruleset:
    """The last ruleset with every counter replaced by the sum of its per-interval changes, each
    counted since its own restart: a chain replaced mid-window keeps what it counted before the
    replacement. `forced[i]` names chains known (nft handles) to have been replaced in interval i
    although no counter went backward: their interval counts are what they hold since."""
    forced = forced or {}
    totals: dict[Any, list[int]] = {}
    for i, (a, b) in enumerate(zip(rulesets, rulesets[1:])):
        old = {r.key: r for r in a.records}
        hit = forced.get(i, set())
        for r in b.records:
            ck = (r.backend, r.family, r.table, r.chain if isinstance(r, Rule) else r.name)
            p, by = _since(old.get(r.key), r, ck in hit)
            acc = totals.setdefault(r.key, [0, 0])
            acc[0] += p
            acc[1] += by
    last = rulesets[-1]

    def put(rec):
        p, by = totals.get(rec.key, (0, 0))
        return dataclasses.replace(rec, packets=p, bytes=by)

    return Ruleset(tuple(put(c) for c in last.chains), tuple(put(r) for r in last.rules))


def _nft_aliases(a: Iterable[Any], b: Iterable[Any]) -> dict[Any, Any]:
    """Old rule key -> new rule key for chains whose rules were re-added unchanged (new handles, same
    rules in the same order), so a re-added rule keeps what it counted before."""
    _, ra, _, _ = _nft_index(a)
    _, rb, _, _ = _nft_index(b)
    out = {}
    for key, xa in ra.items():
        xb = rb.get(key, [])
        if len(xa) == len(xb) and [_signature(r) for r in xa] == [_signature(r) for r in xb]:
            out.update({x.key: y.key for x, y in zip(xa, xb) if x.key != y.key})
    return out


def rebased_nft(snapshots: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """The last `nft -j` records with rule and named-counter values summed over the intervals, each
    counted since its own restart; rules re-added unchanged carry their earlier counts over."""
    if not snapshots:
        return ()
    totals: dict[Any, list[int]] = {}
    for a, b in zip(snapshots, snapshots[1:]):
        alias = _nft_aliases(a, b)    # a re-added rule has a new key: counted since its creation, totals carried
        totals = {alias.get(k, k): v for k, v in totals.items()}
        old = {r.key: r for r in a}
        for r in b:
            if isinstance(r, (NftRule, NftCounter)) and r.packets is not None:
                o = old.get(r.key)
                p, by = _since(o if o is not None and getattr(o, "packets", None) is not None else None, r, False)
                acc = totals.setdefault(r.key, [0, 0])
                acc[0] += p
                acc[1] += by
    out = []
    for r in snapshots[-1]:
        if isinstance(r, (NftRule, NftCounter)) and r.packets is not None:
            p, by = totals.get(r.key, (0, 0))
            r = dataclasses.replace(r, packets=p, bytes=by)
        out.append(r)
    return tuple(out)


def forced_resets(changes: Changes, netns: str, seq: Sequence[Any]) -> dict[int, set[ChainKey]]:
    """Per interval of the namespace's iptables snapshots: iptables-nft chains whose nft handles show a
    replacement between the same two snapshots although their counters may not."""
    ipt = _pairs(seq, lambda c: netns in (c.iptables or {}))
    spans = {pair: n for n, pair in enumerate(ipt)}
    out: dict[int, set[ChainKey]] = {}
    for c in changes.of_kind("iptables_chain"):
        w = c.where
        if w["netns"] != netns:
            continue
        for span in c.renewed:
            if span in spans:
                out.setdefault(spans[span], set()).add((w["backend"], w["family"], w["table"], w["chain"]))
    return out


# --- marking and bounds -----------------------------------------------------------------------------

def rule_counts(ruleset: Ruleset, nft_records: Iterable[Any] = ()) -> dict[tuple[str, str], int]:
    """(ChainWork table label, chain) -> how many rules the chain holds: the most evaluations one
    packet entering it can cost."""
    out: dict[tuple[str, str], int] = {}
    for r in ruleset.rules:
        k = (iptables_label(r.backend, r.family, r.table), r.chain)
        out[k] = out.get(k, 0) + 1
    for r in nft_records:
        if isinstance(r, NftRule):
            k = (nft_label(r.family, r.table), r.chain)
            out[k] = out.get(k, 0) + 1
    return out


def mark_work(work: Sequence[ChainWork], netns: str, changes: Changes,
              counts: Mapping[tuple[str, str], int] | None = None) -> list[ChainWork]:
    """The namespace's ChainWork with each changed chain's treatment (basis mark; excluded or not)
    and every chain's rule count."""
    changed = changes.chains()
    out = []
    for c in work:
        ch = changed.get((netns, c.table, c.chain))
        tr = treatment(ch, changes) if ch is not None else None
        n = (counts or {}).get((c.table, c.chain), c.rule_count)
        if tr is not None:
            c = dataclasses.replace(c, mark=tr.basis, excluded=not tr.rebased, rule_count=n,
                                    change="; ".join(ch.what))
        elif n != c.rule_count:
            c = dataclasses.replace(c, rule_count=n)
        out.append(c)
    return out


def bound_work(work: Sequence[ChainWork], entered: float | None, where: str = "") -> tuple[list[ChainWork], list[str]]:
    """Clamp what no window can produce, with a warning naming the chain: negative counts, a chain
    entered by more packets than its namespace received and sent (`entered`: rx + tx of every link;
    None when unknown), rules matching more packets than entered their chain."""
    out, warnings = [], []
    for c in work:
        packets, evaluations = max(c.packets, 0), max(c.evaluations, 0)
        if entered is not None and packets > entered:
            warnings.append(f"{c.chain} ({c.table}{', ' + where if where else ''}): {packets:,} packets counted but "
                            f"only {int(entered):,} crossed the namespace's links: clamped (counters changed "
                            "under the profiler?)")
            evaluations = int(round(evaluations * entered / packets)) if packets else 0
            packets = int(entered)
        rules = tuple(dataclasses.replace(r, packets=min(max(r.packets, 0), packets)) if not 0 <= r.packets <= packets
                      else r for r in c.rules)
        if (packets, evaluations, rules) != (c.packets, c.evaluations, c.rules):
            scale = evaluations / c.evaluations if c.evaluations > 0 else 0.0
            c = dataclasses.replace(c, packets=packets, evaluations=evaluations, rules=rules,
                                    classes=tuple((k, max(v, 0.0) * scale) for k, v in c.classes))
        out.append(c)
    return out, warnings


def _program_id(node: Node) -> int | None:
    name = node.name
    if "(id " not in name:
        return None
    try:
        return int(name.split("(id ", 1)[1].split(",")[0].split(")")[0])
    except ValueError:
        return None


def mark_programs(stage: Node, changes: Changes) -> Node:
    """A program attached mid-window in place of another: its figures stay (bpf_stats measure what it
    ran, since it was attached) and its basis says so. The programs it replaced count only if they
    still run somewhere at the end (bpf_stats are per program): otherwise their runs before the
    replacement are lost, and the stage is a lower bound that says so. It may be one anyway: a
    program attached and replaced again between the snapshots ran uncounted, unseen."""
    replaced = [c for c in changes.of_kind("bpf_program") if c.reset]
    new = {i: c for c in replaced for i in c.detail.get("new_ids", ())}
    lost = sorted({i for c in replaced for i in c.detail.get("old_ids", ())
                   if i not in c.detail.get("old_still_attached", ())})
    for n in stage.children:
        c = new.get(_program_id(n)) if n.kind == "program" else None
        if c is not None:
            n.basis = f"{CHANGED}: attached mid-window ({c.what[0]}); runs since then, measured"
            n.detail["change"] = list(c.what)
    if lost:
        stage.basis = (f"{CHANGED}: lower bound: the runs of replaced program(s) {', '.join(map(str, lost))} "
                       "before their replacement are not counted (no longer attached at the end)")
    elif replaced:
        stage.basis = (f"{CHANGED}: possibly a lower bound: a program attached and replaced again between "
                       "the snapshots would have run uncounted")
    return stage


def _table_number(node: Node) -> str:
    return node.name.split(" ", 1)[0]


def mark_ovs(stage: Node, changes: Changes) -> Node:
    """OVS tables whose flows were re-added: the table's lookups (its own counter) stay, its flows'
    counts (restarted) leave the report; tables whose own counters restarted: the modelled
    figures are excluded, ovs-vswitchd's measured CPU stays."""
    flows = {str(c.where["table"]): c for c in changes.of_kind("ovs_flows")}
    reset_tables = {str(c.where["table"]) for c in changes.of_kind("ovs_table")}
    for n in stage.children:
        if n.kind != "ovs_table":
            continue
        t = _table_number(n)
        c = flows.get(t)
        if c is not None:
            n.detail["change"] = list(c.what)
            if c.reset:
                n.children = [x for x in n.children if x.kind != "flow"]
                n.basis = f"{CHANGED}: flow counters restarted (their counts not shown); table lookups counted in full"
        if t in reset_tables:
            excluded(n, "the table's lookup counters restarted")
    if reset_tables:
        stage.modelled_ns = None
        stage.basis = f"{CHANGED}: OVS table counters restarted; modelled figures excluded"
        stage.ns_per_packet = stage.measured_ns
        stage.provenance = "measured"
    return stage

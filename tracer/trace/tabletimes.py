"""Measured time per netfilter table for each traced packet, and its conntrack state, from the
bracket probes (cnitrace.probes.nfbracket with per-packet events): a BPF netfilter program
before and after each registered table emits (bracket, time inside, IP ID, ctinfo) for packets
of the trace's 5-tuple. Works wherever the brackets do (kernel >= 6.4), in any mode: a lab,
`--netns`, `--iface`, `--probe` or `--match`.

Pure part: `events_of` (a packet's events), `table_hops` (join them to the netfilter hops the
nft / TRACE monitors gave, in order) and `conntrack_hop`. Best effort, like the tracepoint
times: where the brackets cannot attach, the trace says why and goes on without them."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from cnitrace.trace.hops import Hop


def events_of(events: Sequence[Mapping[str, Any]], packet: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The bracket events of one traced packet (IP ID, addresses and ports), in time order (pure)."""
    want = (packet.get("ip_id"), packet.get("saddr"), packet.get("daddr"), packet.get("sport"), packet.get("dport"))
    out = [e for e in events if (e["ip_id"], e["saddr"], e["daddr"], e["sport"], e["dport"]) == want]
    return sorted(out, key=lambda e: e["ts"])


def floors(events: Sequence[Mapping[str, Any]], keys: Mapping[int, Mapping[str, Any]]) -> dict[tuple, float]:
    """Mean raw time of the empty (floor) brackets per (netns, pf, hook) over every event of the
    window: the brackets' own cost, subtracted from each table's time (pure)."""
    acc: dict[tuple, list[int]] = {}
    for e in events:
        k = keys.get(e["slot"])
        if k is not None and k.get("kind") == "floor":
            acc.setdefault((k.get("netns_name", ""), k["pf"], k["hook"]), []).append(e["ns"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _table(hop: Hop) -> str | None:
    parts = hop.where.split()
    return parts[1] if hop.layer == "netfilter" and len(parts) >= 3 and "table" not in hop.detail else None


def _groups(hops: Sequence[Hop]) -> list[tuple[int, int, str, str]]:
    """(first index, last index, netns, table) of each run of netfilter hops in one table."""
    out: list[tuple[int, int, str, str]] = []
    for i, h in enumerate(hops):
        t = _table(h)
        if t is None:
            continue
        if out and out[-1][1] == i - 1 and out[-1][2:] == (h.netns, t):
            out[-1] = (out[-1][0], i, h.netns, t)
        else:
            out.append((i, i, h.netns, t))
    return out


def table_hops(hops: Sequence[Hop], events: Sequence[Mapping[str, Any]], keys: Mapping[int, Mapping[str, Any]],
               floor_ns: Mapping[tuple, float], twin_events: Sequence[Mapping[str, Any]] = ()) -> list[Hop]:
    """Insert one timed hop per table the packet passed (or died in), after the run of rule hops the
    monitors gave for that table, and time that run's first hop with the table's entry (pure).

    The k-th event of table T is the k-th run of T's hops (both are in the packet's path order); an
    event with no such run (a table no monitor reported) goes after the previous timed table.
    A traced packet's table time includes the trace's own logging (one record per rule); where the
    probe had an untraced twin, the twin's time in the same bracket is the table's cost."""
    hops = list(hops)
    groups = _groups(hops)
    twins: dict[int, list[Mapping[str, Any]]] = {}
    for t in twin_events:
        twins.setdefault(t["slot"], []).append(t)
    used: set[int] = set()
    after: dict[int, list[Hop]] = {}          # hop index -> table hops to insert after it
    entry_t: dict[int, int] = {}
    last = -1
    for e in events:
        k = keys.get(e["slot"])
        if k is None or k.get("kind") == "floor":
            continue
        names = set(str(k.get("table", "")).split("+"))
        ns = k.get("netns_name", "")
        g = next((j for j, (a, _b, gns, t) in enumerate(groups)
                  if j not in used and a > last and t in names and gns == ns), None)
        floor = floor_ns.get((ns, k["pf"], k["hook"]))
        traced = max(e["ns"] - (floor or 0.0), 0.0)
        twin = twins.get(e["slot"], []).pop(0) if twins.get(e["slot"]) else None
        cost = max(twin["ns"] - (floor or 0.0), 0.0) if twin is not None else traced
        label = f"{k['kind']} {k['table']}" + (f"/{k['chain']}" if k.get("kind") == "nft" else "")
        state = "dropped inside it" if e["dropped"] else "left it"
        how = (f"measured on its untraced twin; {traced:,.0f} ns while traced" if twin is not None
               else "measured while traced: includes the trace's own logging")
        hop = Hop("netfilter", f"{k['pf']} {k['hook']} {label} (priority {k.get('priority')})",
                  f"{state} after {cost:,.0f} ns ({how}; bracket probes"
                  + (f", their own {floor:,.0f} ns subtracted" if floor is not None else ", no floor to subtract")
                  + f"); conntrack: {e['ct']}",
                  # a drop's time is the drop hop's (skb:kfree_skb); two programs there may run in either order
                  t_ns=None if e["dropped"] else e["ts"], netns=ns, cost_ns=cost,
                  detail={"table": k["table"], "hook": k["hook"], "pf": k["pf"], "bracket_kind": k["kind"],
                          "raw_ns": e["ns"], "floor_ns": floor, "ct": e["ct"], "dropped": e["dropped"],
                          "traced_ns": traced, "untraced_ns": cost if twin is not None else None,
                          "time": "measured", "source": "nf_bpf bracket"})
        if g is not None:
            used.add(g)
            a, b = groups[g][0], groups[g][1]
            entry_t[a] = e["ts"] - e["ns"]
            last = b
        else:       # no monitor reported this table: after the last hop timed before it left
            timed = [i for i, h in enumerate(hops) if h.t_ns is not None and h.t_ns <= e["ts"]]
            last = max([last, *timed[-1:]])
        after.setdefault(last, []).append(hop)
    out: list[Hop] = list(after.get(-1, []))
    for i, h in enumerate(hops):
        out.append(dataclasses.replace(h, t_ns=entry_t[i]) if i in entry_t and h.t_ns is None else h)
        out.extend(after.get(i, []))
    return [dataclasses.replace(h, order=n + 1) for n, h in enumerate(out)]


def conntrack_hop(events: Sequence[Mapping[str, Any]], keys: Mapping[int, Mapping[str, Any]],
                  entry: Any = None, looked_up: bool = False) -> Hop | None:
    """The packet's conntrack state as the first bracket saw it (skb->_nfct), with the entry that
    `conntrack -L` showed after the trace (`entry`: collectors.conntrack Conn, or None) (pure)."""
    tables = [e for e in events if keys.get(e["slot"], {}).get("kind") != "floor"]
    # the first table where conntrack had seen the packet (a pod's namespace may have no conntrack)
    first = next((e for e in tables if e["ct"] != "none"), tables[0] if tables else None)
    if first is None:
        return None
    k = keys[first["slot"]]
    ns = k.get("netns_name", "")
    state = (f"ct state {first['ct']}" if first["ct"] != "none" else
             "not tracked (no conntrack hook in this namespace, or notrack)")
    what = f"{state} at {k['hook']} (skb->_nfct, measured by the bracket probe)"
    detail: dict[str, Any] = {"ct": first["ct"], "hook": k["hook"], "time": "measured"}
    if entry is not None:
        parts = [entry.proto, entry.state, *(f"[{f}]" for f in entry.flags),
                 f"timeout {entry.timeout}s" if entry.timeout is not None else None,
                 f"mark {entry.mark}" if entry.mark is not None else None]
        what += "; entry after the trace: " + " ".join(p for p in parts if p)
        detail.update(entry_state=entry.state, entry_flags=list(entry.flags), entry_timeout=entry.timeout,
                      entry_mark=entry.mark, entry_zone=entry.zone)
    elif looked_up:
        what += "; no entry after the trace (never confirmed: the packet did not leave the hooks)"
        detail["entry_state"] = None
    return Hop("conntrack", f"{ns or 'host'} conntrack", what, t_ns=first["ts"] - first["ns"], netns=ns,
               detail=detail)


def with_conntrack(hops: Sequence[Hop], hop: Hop | None) -> list[Hop]:
    """Put the conntrack hop before the first netfilter hop of its namespace that did not run
    before the table it was read at (raw, at -300, runs before conntrack's -200) (pure)."""
    if hop is None:
        return list(hops)
    out = list(hops)
    i = next((n for n, h in enumerate(out) if h.layer == "netfilter" and h.netns == hop.netns
              and (h.t_ns is None or hop.t_ns is None or h.t_ns >= hop.t_ns)), len(out))
    out.insert(i, hop)
    return [dataclasses.replace(h, order=n + 1) for n, h in enumerate(out)]


class TableTimes:
    """Bracket probes with per-packet events on the traced namespaces (or `--iface` globs)."""

    def __init__(self, session: Any, targets: Sequence[Any], proto: str, src: str | None, dst: str | None,
                 port: int | None):
        self.session, self.targets = session, list(targets)
        self.filter = dict(proto=6 if proto == "tcp" else 17, saddr=src, daddr=dst, dport=port)
        self.b: Any = None
        self.why_not = ""
        self.keys: dict[int, dict[str, Any]] = {}

    def start(self) -> bool:
        try:
            from cnitrace.probes.nfbracket import Brackets, EventFilter
            from cnitrace.trace.netfilter import TABLE_PREFIX
            self.b = Brackets(self.targets, session=self.session, events=EventFilter(**self.filter),
                              select=lambda r: not r.table.startswith(TABLE_PREFIX)).attach()   # not our own table
            self.keys = {n: self.b.slot_key(n) for n in range(len(self.b.slots))}
            return True
        except Exception as exc:     # kernel < 6.4, no BTF, nothing to bracket: no table times
            self.why_not = f"netfilter table times unavailable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
            self.b = None
            return False

    def poll(self) -> None:
        if self.b is not None:
            self.b.poll_events()

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.b.events if self.b is not None else []

    def close(self) -> None:
        if self.b is not None:
            self.poll()
            self.b.close()

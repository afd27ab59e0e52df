"""Profile documents -> Prometheus metric families (what `cnitrace agent` serves on /metrics).

Pure: one profile document per window goes in (`Exporter.add`), metric families come out
(`Exporter.collect`, the prometheus_client Collector protocol), so the exposition is the
library's own and the mapping is testable without root. Names follow the ecosystem's
conventions (Cilium/Hubble/Tetragon: snake_case, a `cnitrace_` prefix, counters end in
`_total`, times in `_seconds`, ratios in `_ratio`).

Cumulative families (counters, the histogram) fold every window in; gauges are the last
window's. Memory is bounded over days: per family at most `label_cap` object label sets are
admitted (chain, table, program, map, drop reason, pod...); an admitted set not seen in the
current window gives its place to a new one; everything else is summed under the label
value `other`. Nothing else grows across windows.

Time per packet (`cnitrace_stage_seconds`) keeps its provenance: a probe-timed figure is a
`measured` series with the probe's backend, a rule-counter x calibration figure a `modelled`
series with backend `counters`; a node that has both gives both series. Each window adds its
packets at that window's mean time per packet, so rate(_sum)/rate(_count) is the
packet-weighted mean time per packet and the buckets place each window's mean (the document
keeps no per-packet distribution for every node).
"""

from __future__ import annotations

import bisect
import collections
import math
import dataclasses
import re
import threading
from typing import Any, Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

OTHER = "other"
DEFAULT_LABEL_CAP = 50
# 100 ns .. 1 ms per packet: a netfilter table walk is 0.1-100 us, a program run 10 ns-10 us.
BUCKETS = (1e-8, 2.5e-8, 5e-8, 1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4,
           1e-3)
TREE_LEVELS = ("root", "stage", "table", "ovs_table", "chain", "program", "proxy")  # rules/flows: too many
PINNED_LEVELS = ("root", "stage", "table")
# The backends entry that measured each stage of the tree (the document's backends section).
STAGE_BACKEND = {"node datapath": "transit", "rest of stack": "transit", "netfilter": "netfilter",
                 "bpf": "tc_bpf", "ovs": "ovs_kernel", "l7_proxy": "l7_detour"}
CONNTRACK_EVENTS = ("insert_failed", "drop", "early_drop", "search_restart")
POD_LABELS = ("pod", "namespace")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One family: its name (as exposed, counters with `_total`), help, type, and labels; `dims`
    are the low-cardinality labels the cap never folds into `other`."""
    name: str
    help: str
    type: str                      # counter | gauge | histogram
    labels: tuple[str, ...] = ()
    dims: tuple[str, ...] = ()
    pods: bool = False             # takes pod/namespace labels with --pod-labels
    combine: str = "sum"           # gauges folded into `other`: sum, or mean weighted by packets


SPECS = (
    Spec("cnitrace_stage_seconds", "Time per packet in each stage, table, chain and program of the datapath, "
         "by provenance (measured by a probe, or modelled from rule counters x this node's calibration).",
         "histogram", ("stage", "level", "name", "backend", "provenance"), ("stage", "level", "backend", "provenance"),
         pods=True),
    Spec("cnitrace_chain_rule_evaluations_per_packet", "Rule evaluations per packet in each chain over the last "
         "window (rule counters; measured).", "gauge", ("table", "chain", "backend"), ("backend",), pods=True,
         combine="mean"),
    Spec("cnitrace_chain_packets_total", "Packets that entered each chain (rule counters).", "counter",
         ("table", "chain", "backend"), ("backend",), pods=True),
    Spec("cnitrace_drops_total", "Packets dropped, by reason and the chain whose rule decided (empty: the kernel "
         "dropped it outside a rule, at `location`).", "counter", ("reason", "chain", "location", "provenance"),
         ("provenance",), pods=True),
    Spec("cnitrace_conntrack_entries", "Conntrack entries in the watched namespaces at the end of the last window.",
         "gauge"),
    Spec("cnitrace_conntrack_max_entries", "Conntrack table size (nf_conntrack_max).", "gauge"),
    Spec("cnitrace_conntrack_fill_ratio", "Conntrack entries / nf_conntrack_max.", "gauge"),
    Spec("cnitrace_conntrack_events_total", "Conntrack pressure events (insert_failed, drop, early_drop, "
         "search_restart) counted by the kernel.", "counter", ("event",), ("event",)),
    Spec("cnitrace_bpf_map_entries", "Entries in each BPF map the selected programs use (where dumpable).", "gauge",
         ("map_name", "type"), ("type",)),
    Spec("cnitrace_bpf_map_max_entries", "max_entries of each BPF map the selected programs use.", "gauge",
         ("map_name", "type"), ("type",)),
    Spec("cnitrace_bpf_map_pressure", "BPF map entries / max_entries (as cilium_bpf_map_pressure).", "gauge",
         ("map_name", "type"), ("type",), combine="mean"),
    Spec("cnitrace_window_packets", "Packets the last window saw entering the selection.", "gauge"),
    Spec("cnitrace_window_duration_seconds", "Length of the last window.", "gauge"),
    Spec("cnitrace_snapshot_duration_seconds", "Time one snapshot of every collector took in the last window.",
         "gauge"),
    Spec("cnitrace_windows_total", "Windows completed.", "counter"),
    Spec("cnitrace_overhead_seconds_total", "CPU time the tool itself used (its process and the collectors it ran).",
         "counter"),
    Spec("cnitrace_lost_events_total", "Probe events lost (perf/ring buffer full or untimed).", "counter"),
)
BY_NAME = {s.name: s for s in SPECS}


def family_names() -> tuple[str, ...]:
    """Every family the exporter emits, as the exposition's parser names them (counters without `_total`)."""
    return tuple(s.name[:-6] if s.type == "counter" else s.name for s in SPECS)


# --- document -> rows (pure) --------------------------------------------------------------------

# labels, value, weight (packets); label keys starting with "_" are internal: _chain (the chain a row is
# about, for pod labels), _rank (what ranks it for the cap, when not its time or count)
Row = tuple[dict[str, Any], float, float]

TABLE_RE = re.compile(r"^(?:(?P<fam>ip6?|inet|arp|bridge|netdev) )?(?P<table>\S+) \((?P<backend>[^,)]+)")
RULE_WHERE_RE = re.compile(r"^(?P<chain>[^#\s]+)#\d+")


def table_backend(table: str) -> str:
    """The rule backend a table node names: 'filter (iptables-legacy, ipv4)' -> iptables-legacy,
    'inet t (nft)' -> nft."""
    m = TABLE_RE.match(table)
    return m.group("backend").strip() if m else "unknown"


Visit = tuple[str, dict[str, Any], "dict[str, Any] | None"]


def _walk(node: dict[str, Any], stage: str | None = None) -> Iterator[Visit]:
    """(enclosing stage name, node, parent table node) for every node of the tree."""
    todo: list[tuple[dict[str, Any], str | None, dict[str, Any] | None]] = [(node, stage, None)]
    while todo:
        n, st, table = todo.pop()
        st = n["name"] if n["kind"] in ("stage", "root") else st
        yield st or n["name"], n, table
        nxt = n if n["kind"] in ("table", "ovs_table") else table
        todo.extend((c, st, nxt) for c in reversed(n.get("children", [])))


def _measured_backend(doc: dict[str, Any], stage: str, node: dict[str, Any], table: dict[str, Any] | None) -> str:
    detail = node.get("detail") or {}
    if node["kind"] == "program":
        return str(detail.get("source") or "bpf_stats")
    if node["kind"] == "table" and detail.get("backend"):
        return str(detail["backend"])
    if table is not None and (table.get("detail") or {}).get("backend"):
        return str(table["detail"]["backend"])
    entry = (doc.get("backends") or {}).get(STAGE_BACKEND.get(stage, stage)) or {}
    return str(entry.get("backend") or "none")


def stage_rows(doc: dict[str, Any]) -> list[Row]:
    """Seconds per packet per tree node (root, stages, tables, chains, programs), one row per provenance."""
    rows: list[Row] = []
    for stage, n, table in _walk(doc["tree"]):
        if n["kind"] not in TREE_LEVELS or not n.get("packets"):
            continue
        base = {"stage": stage, "level": n["kind"], "name": n["name"], "_chain": n["name"]}
        if n["kind"] in PINNED_LEVELS:       # few, and what every panel plots: never folded into `other`
            base["_rank"] = math.inf
        measured, modelled = n.get("measured_ns"), n.get("modelled_ns")
        if measured is None and modelled is None and n.get("ns_per_packet") is not None:
            ns = n["ns_per_packet"]
            measured, modelled = (ns, None) if n["provenance"] == "measured" else (None, ns)
        if measured is not None:
            rows.append(({**base, "backend": _measured_backend(doc, stage, n, table), "provenance": "measured"},
                         measured * 1e-9, n["packets"]))
        if modelled is not None:
            rows.append(({**base, "backend": "counters", "provenance": "modelled"}, modelled * 1e-9, n["packets"]))
    return rows


def chain_rows(doc: dict[str, Any]) -> list[Row]:
    """Per chain: rule evaluations per packet (value) and the chain's packets (weight)."""
    rows: list[Row] = []
    for _, n, table in _walk(doc["tree"]):
        if n["kind"] != "chain" or n.get("evaluations_per_packet") is None:
            continue
        tname = (n.get("detail") or {}).get("table") or (table or {}).get("name") or ""
        evals, packets = float(n["evaluations_per_packet"]), float(n.get("packets") or 0)
        rows.append(({"table": tname, "chain": n["name"], "backend": table_backend(tname), "_chain": n["name"],
                      "_rank": evals * packets}, evals, packets))   # ranked by work: the costly chains keep names
    return rows


def drop_rows(doc: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for d in doc.get("drops") or []:
        where = d.get("where") or ""
        m = RULE_WHERE_RE.match(where)
        chain = m.group("chain") if m else ""
        location = "" if m else where.split("+", 1)[0]
        rows.append(({"reason": d["reason"], "chain": chain, "location": location, "provenance": d["provenance"],
                      "_chain": chain}, float(d["count"]), float(d["count"])))
    return rows


def conntrack_rows(doc: dict[str, Any]) -> dict[str, list[Row]]:
    ct = doc.get("conntrack")
    if not ct:
        return {}
    out: dict[str, list[Row]] = {"cnitrace_conntrack_entries": [({}, float(ct.get("count", 0)), 1.0)],
                                 "cnitrace_conntrack_events_total": [({"event": e}, float(ct.get(e) or 0), 1.0)
                                                                     for e in CONNTRACK_EVENTS]}
    if ct.get("max"):
        out["cnitrace_conntrack_max_entries"] = [({}, float(ct["max"]), 1.0)]
        out["cnitrace_conntrack_fill_ratio"] = [({}, ct.get("count", 0) / ct["max"], 1.0)]
    return out


def map_rows(doc: dict[str, Any]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = collections.defaultdict(list)
    for m in doc.get("maps") or []:
        labels = {"map_name": str(m.get("name") or m.get("id")), "type": str(m.get("type") or "")}
        if m.get("max_entries"):
            out["cnitrace_bpf_map_max_entries"].append((labels, float(m["max_entries"]), 1.0))
        if m.get("entries") is not None:
            out["cnitrace_bpf_map_entries"].append((labels, float(m["entries"]), 1.0))
            if m.get("max_entries"):
                out["cnitrace_bpf_map_pressure"].append((labels, m["entries"] / m["max_entries"], 1.0))
    return dict(out)


def window_rows(doc: dict[str, Any]) -> dict[str, list[Row]]:
    over = doc.get("overhead") or {}
    out = {"cnitrace_window_packets": [({}, float(doc["tree"].get("packets") or 0), 1.0)],
           "cnitrace_window_duration_seconds": [({}, float(doc["duration_s"]), 1.0)],
           "cnitrace_windows_total": [({}, 1.0, 1.0)],
           "cnitrace_lost_events_total": [({}, float(doc.get("lost_events") or 0), 1.0)],
           "cnitrace_overhead_seconds_total": [({}, float(over.get("agent_cpu_s") or 0.0), 1.0)]}
    if over.get("snapshot_s") is not None:
        out["cnitrace_snapshot_duration_seconds"] = [({}, float(over["snapshot_s"]), 1.0)]
    return out


def document_rows(doc: dict[str, Any]) -> dict[str, list[Row]]:
    """Every family's rows for one window's document (labels still uncapped)."""
    return {"cnitrace_stage_seconds": stage_rows(doc), "cnitrace_chain_rule_evaluations_per_packet": chain_rows(doc),
            "cnitrace_chain_packets_total": [(lb, w, w) for lb, _, w in chain_rows(doc)],   # same ranking
            "cnitrace_drops_total": drop_rows(doc), **conntrack_rows(doc), **map_rows(doc), **window_rows(doc)}


def pod_of(chain: str, interfaces: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Pod and namespace labels of a chain: the pod behind a selected interface the chain is named
    after (calico's cali-tw-<iface>, cali-fw-<iface>), and the Kubernetes namespace a calico profile
    chain names (cali-pro-kns.<namespace>); empty when the chain belongs to neither."""
    pod = next((str(i.get("pod") or i["name"]) for i in interfaces if i.get("name") and chain.endswith(i["name"])), "")
    m = re.search(r"kns\.([A-Za-z0-9.-]+)$", chain)
    return {"pod": pod, "namespace": m.group(1) if m else ""}


# --- the cap ----------------------------------------------------------------------------------

class Admission:
    """At most `cap` object label sets per family; a set absent from the current window gives its
    place to a new one; the rest fold into `other`. Bounded: the only state kept across windows."""

    def __init__(self, cap: int):
        self.cap = max(1, cap)
        self.keys: dict[str, collections.OrderedDict[tuple, None]] = collections.defaultdict(collections.OrderedDict)

    def admit(self, family: str, ranked: Sequence[tuple]) -> tuple[set[tuple], set[tuple]]:
        """Admit from `ranked` (heaviest first); returns (admitted now, evicted)."""
        adm = self.keys[family]
        seen = set(ranked)
        stale = [k for k in adm if k not in seen]
        evicted: set[tuple] = set()
        for k in ranked:
            if k in adm:
                continue
            if len(adm) >= self.cap and stale:
                old = stale.pop(0)
                del adm[old]
                evicted.add(old)
            if len(adm) < self.cap:
                adm[k] = None
        return set(adm), evicted


# --- the exporter ------------------------------------------------------------------------------

@dataclasses.dataclass
class _Hist:
    buckets: list[float]
    sum: float = 0.0
    count: float = 0.0

    def observe(self, value: float, weight: float) -> None:
        i = bisect.bisect_left(BUCKETS, value)
        for j in range(i, len(BUCKETS)):
            self.buckets[j] += weight
        self.sum += value * weight
        self.count += weight


class Exporter:
    """Profile documents in, metric families out; a prometheus_client Collector."""

    def __init__(self, *, pod_labels: bool = False, label_cap: int = DEFAULT_LABEL_CAP):
        self.pod_labels = pod_labels
        self.admission = Admission(label_cap)
        self._lock = threading.Lock()
        self._cumulative: dict[str, dict[tuple, Any]] = {s.name: {} for s in SPECS if s.type != "gauge"}
        self._gauges: dict[str, dict[tuple, float]] = {s.name: {} for s in SPECS if s.type == "gauge"}

    def labels_of(self, spec: Spec) -> tuple[str, ...]:
        return spec.labels + (POD_LABELS if self.pod_labels and spec.pods else ())

    def _keyed(self, spec: Spec, rows: Iterable[Row],
               interfaces: Sequence[dict[str, Any]]) -> list[tuple[tuple, float, float]]:
        """Rows -> (label values in family order, value, weight), capped (the `other` fold)."""
        names = self.labels_of(spec)
        keyed = []
        for labels, value, weight in rows:
            full = dict(labels)
            if self.pod_labels and spec.pods:
                full.update(pod_of(str(labels.get("_chain", "")), interfaces))
            keyed.append((tuple(str(full.get(n, "")) for n in names), value, weight, labels.get("_rank")))
        objects = [i for i, n in enumerate(names) if n not in spec.dims]
        if not objects:
            return [(k, v, w) for k, v, w, _ in keyed]
        weight: dict[tuple, float] = {}
        for k, v, w, r in keyed:  # rank by time (histogram), work or count: the heaviest keep their names
            weight[k] = weight.get(k, 0.0) + (r if r is not None else abs(v * w) if spec.type == "histogram" else w)
        pinned = {k for k, r in weight.items() if r == math.inf}   # structure: bounded by itself, outside the cap
        ranked = sorted((k for k in weight if k not in pinned), key=lambda k: (-weight[k], k))
        admitted, evicted = self.admission.admit(spec.name, ranked)
        admitted |= pinned
        store = self._cumulative.get(spec.name)
        for k in evicted:
            if store is not None:
                store.pop(k, None)
        return [(k if k in admitted else tuple(OTHER if i in objects else x for i, x in enumerate(k)), v, w)
                for k, v, w, _ in keyed]

    def add(self, doc: dict[str, Any]) -> None:
        """Fold one window's profile document in."""
        interfaces = (doc.get("selection") or {}).get("interfaces") or []
        rows = document_rows(doc)
        with self._lock:
            for spec in SPECS:
                keyed = self._keyed(spec, rows.get(spec.name, []), interfaces)
                if spec.type == "gauge":
                    self._gauges[spec.name] = _fold_gauges(keyed, spec.combine)
                elif spec.type == "counter":
                    store = self._cumulative[spec.name]
                    for k, v, _ in keyed:
                        store[k] = store.get(k, 0.0) + max(v, 0.0)
                else:
                    store = self._cumulative[spec.name]
                    for k, v, w in keyed:
                        if w > 0 and v >= 0:
                            store.setdefault(k, _Hist([0.0] * len(BUCKETS))).observe(v, w)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for spec in SPECS:
                labels = list(self.labels_of(spec))
                if spec.type == "gauge":
                    fam: Metric = GaugeMetricFamily(spec.name, spec.help, labels=labels)
                    for k, v in sorted(self._gauges[spec.name].items()):
                        fam.add_metric(list(k), v)
                elif spec.type == "counter":
                    fam = CounterMetricFamily(spec.name, spec.help, labels=labels)
                    for k, v in sorted(self._cumulative[spec.name].items()):
                        fam.add_metric(list(k), v)
                else:
                    fam = HistogramMetricFamily(spec.name, spec.help, labels=labels)
                    for k, h in sorted(self._cumulative[spec.name].items()):
                        bks = [(_le(b), c) for b, c in zip(BUCKETS, h.buckets)] + [("+Inf", h.count)]
                        fam.add_metric(list(k), bks, h.sum)
                yield fam

    def series(self) -> int:
        """Series held (the bound the soak test watches)."""
        with self._lock:
            return sum(map(len, self._cumulative.values())) + sum(map(len, self._gauges.values()))


def _le(bound: float) -> str:
    return repr(float(bound))


def _fold_gauges(keyed: Sequence[tuple[tuple, float, float]], combine: str) -> dict[tuple, float]:
    """Several rows under one label set (the `other` fold, or duplicate names): summed, or the
    weight-weighted mean (per-packet figures)."""
    sums: dict[tuple, list[float]] = {}
    for k, v, w in keyed:
        acc = sums.setdefault(k, [0.0, 0.0, 0.0])
        acc[0] += v
        acc[1] += v * w
        acc[2] += w
    if combine == "mean":
        return {k: (a[1] / a[2] if a[2] else a[0]) for k, a in sums.items()}
    return {k: a[0] for k, a in sums.items()}


def exposition(exporter: Exporter) -> bytes:
    """The Prometheus text exposition of everything the exporter holds."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return generate_latest(registry)

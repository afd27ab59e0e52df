"""Envoy's own figures, parsed: admin `/stats?format=json`, `/stats/prometheus`, and the access log.

Pure text -> frozen dataclasses. Why three sources: the JSON page names every counter exactly
as the docs do (http.<prefix>.rbac.allowed, ...) and gives histogram quantiles; the Prometheus
page is the only one with a histogram's sum and count (so a mean); the access log carries
each request's phase timestamps at microsecond resolution, where the histograms record whole
milliseconds (useless for a sub-millisecond detour). Malformed input becomes warnings and a
partial result, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Iterable, Mapping

from cnitrace.collectors.base import Warnings


@dataclasses.dataclass(frozen=True)
class Quantiles:
    """One histogram of the JSON page: quantile -> (interval, cumulative) value, None when unset."""
    name: str
    values: tuple[tuple[float, float | None, float | None], ...]

    def cumulative(self, q: float) -> float | None:
        return next((c for qq, _, c in self.values if qq == q), None)


@dataclasses.dataclass(frozen=True)
class StatsJson:
    values: Mapping[str, float]                  # counters and gauges (text readouts are left out)
    histograms: Mapping[str, Quantiles]
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclasses.dataclass(frozen=True)
class PromHistogram:
    """One labelled Prometheus histogram: cumulative buckets (le, count), sum and count."""
    name: str
    labels: tuple[tuple[str, str], ...]
    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (Prometheus' histogram_quantile without
        interpolation): an honest bound, since Envoy's buckets are coarse."""
        if not self.count or not 0 <= q <= 1:
            return None
        rank = q * self.count
        for le, c in self.buckets:
            if c >= rank:
                return le
        return math.inf


@dataclasses.dataclass(frozen=True)
class Prometheus:
    samples: tuple[Sample, ...]
    histograms: tuple[PromHistogram, ...]
    warnings: tuple[str, ...] = ()

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples named `name` whose labels include `labels` (None if there is none)."""
        hits = [s.value for s in self.samples if s.name == name and labels.items() <= dict(s.labels).items()]
        return sum(hits) if hits else None

    def histogram(self, name: str, **labels: str) -> PromHistogram | None:
        return next((h for h in self.histograms if h.name == name and labels.items() <= dict(h.labels).items()),
                    None)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def parse_json(text: str) -> StatsJson:
    """`GET /stats?format=json`: {"stats": [{"name", "value"}..., {"histograms": {...}}]}."""
    w = Warnings()
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        w.add(f"not JSON: {exc}")
        return StatsJson({}, {}, w.freeze())
    stats = doc.get("stats") if isinstance(doc, dict) else None
    if not isinstance(stats, list):
        w.add("no 'stats' list")
        return StatsJson({}, {}, w.freeze())
    values: dict[str, float] = {}
    hists: dict[str, Quantiles] = {}
    for i, entry in enumerate(stats):
        if not isinstance(entry, dict):
            w.add(f"stats[{i}]: not an object")
            continue
        if "histograms" in entry:
            h = entry["histograms"]
            qs = h.get("supported_quantiles") if isinstance(h, dict) else None
            computed = h.get("computed_quantiles") if isinstance(h, dict) else None
            if not isinstance(qs, list) or not isinstance(computed, list):
                w.add(f"stats[{i}]: malformed histograms")
                continue
            quantiles = [_number(q) for q in qs]
            for c in computed:
                if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("values"), list):
                    w.add(f"stats[{i}]: malformed computed quantile")
                    continue
                vals = []
                for q, v in zip(quantiles, c["values"]):
                    if q is None:
                        continue
                    v = v if isinstance(v, dict) else {}
                    vals.append((q, _number(v.get("interval")), _number(v.get("cumulative"))))
                hists[c["name"]] = Quantiles(c["name"], tuple(vals))
            continue
        name, value = entry.get("name"), entry.get("value")
        if not isinstance(name, str):
            w.add(f"stats[{i}]: no name")
        elif isinstance(value, str):
            continue    # a text readout (e.g. the build version): not a number
        elif _number(value) is None:
            w.add(f"{name}: value {value!r} is not a number")
        else:
            values[name] = float(value)
    return StatsJson(values, hists, w.freeze())


def parse_text(text: str) -> dict[str, float]:
    """The plain `GET /stats` page ("name: value" lines); histogram lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep or " " in name:
            continue
        try:
            v = float(value.strip())
        except ValueError:
            continue
        if math.isfinite(v):
            out[name] = v
    return out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _labels(text: str) -> tuple[tuple[str, str], ...] | None:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m or m.end() == pos:
            return None
        out.append((m.group(1), m.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")))
        pos = m.end()
    return tuple(out)


def _prom_float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def parse_prometheus(text: str) -> Prometheus:
    """`GET /stats/prometheus` (text exposition format): samples, with histograms assembled from
    their _bucket/_sum/_count series (by TYPE line, so a counter named *_count stays a counter)."""
    w = Warnings()
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for n, line in enumerate(text.split("\n"), 1):    # the format's line end is \n only
        s = line.strip(" \t\r")
        if not s:
            continue
        if s.startswith("#"):
            parts = s.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        m = _SAMPLE.match(s)
        labels = _labels(m.group(2) or "") if m else None
        value = _prom_float(m.group(3)) if m else None
        if m is None or labels is None or value is None:
            w.add(f"unparsable sample {s[:80]!r}", n)
            continue
        samples.append(Sample(m.group(1), labels, value))
    hist: dict[tuple[str, tuple], dict[str, Any]] = {}
    plain: list[Sample] = []
    for smp in samples:
        base, part = _histogram_part(smp.name, types)
        if base is None:
            plain.append(smp)
            continue
        key_labels = tuple(kv for kv in smp.labels if kv[0] != "le")
        h = hist.setdefault((base, key_labels), {"buckets": [], "sum": 0.0, "count": 0.0})
        if part == "bucket":
            le = _prom_float(dict(smp.labels).get("le", ""))
            if le is None:
                w.add(f"{smp.name}: bucket without a numeric le")
                continue
            h["buckets"].append((le, smp.value))
        else:
            h[part] = smp.value
    hists = tuple(PromHistogram(base, labels, tuple(sorted(h["buckets"])), h["sum"], h["count"])
                  for (base, labels), h in hist.items())
    return Prometheus(tuple(plain), hists, w.freeze())


def _histogram_part(name: str, types: Mapping[str, str]) -> tuple[str | None, str]:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)], suffix[1:]
    return None, ""


@dataclasses.dataclass(frozen=True)
class Summary:
    """What the lab reads from Envoy for one HTTP connection manager and one cluster."""
    prefix: str
    cluster: str
    rbac_allowed: int
    rbac_denied: int
    downstream_rq: Mapping[str, int]     # response code class ("2xx") -> requests
    upstream_rq: Mapping[str, int]
    downstream_cx_active: int
    upstream_cx_active: int
    downstream_rq_time: PromHistogram | None   # milliseconds
    upstream_rq_time: PromHistogram | None

    def to_json(self) -> dict[str, Any]:
        def h(x: PromHistogram | None) -> dict[str, Any] | None:
            return None if x is None else {"count": x.count, "sum_ms": x.sum, "mean_ms": x.mean,
                                           "p50_ms_le": x.quantile(0.5), "p99_ms_le": x.quantile(0.99)}
        return {"prefix": self.prefix, "cluster": self.cluster, "rbac_allowed": self.rbac_allowed,
                "rbac_denied": self.rbac_denied, "downstream_rq": dict(self.downstream_rq),
                "upstream_rq": dict(self.upstream_rq), "downstream_cx_active": self.downstream_cx_active,
                "upstream_cx_active": self.upstream_cx_active, "downstream_rq_time_ms": h(self.downstream_rq_time),
                "upstream_rq_time_ms": h(self.upstream_rq_time), "provenance": "measured (Envoy statistics)"}


CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def summarize(stats: StatsJson, prom: Prometheus, prefix: str, cluster: str) -> Summary:
    """Counters by their documented names (JSON page), histograms with sum and count (Prometheus page)."""
    v = stats.values

    def c(name: str) -> int:
        return int(v.get(name, 0))
    p = {"envoy_http_conn_manager_prefix": prefix}
    return Summary(
        prefix, cluster, c(f"http.{prefix}.rbac.allowed"), c(f"http.{prefix}.rbac.denied"),
        {k: c(f"http.{prefix}.downstream_rq_{k}") for k in CLASSES},
        {k: c(f"cluster.{cluster}.upstream_rq_{k}") for k in CLASSES},
        c(f"http.{prefix}.downstream_cx_active"), c(f"cluster.{cluster}.upstream_cx_active"),
        prom.histogram("envoy_http_downstream_rq_time", **p),
        prom.histogram("envoy_cluster_upstream_rq_time", envoy_cluster_name=cluster))


@dataclasses.dataclass(frozen=True)
class AccessRecord:
    """One request as Envoy logged it (the lab's `cnit1` format); durations in microseconds."""
    start: float
    client: str
    method: str
    path: str
    code: int
    flags: str
    upstream: str
    ds_us: float | None        # downstream request start -> response end
    us_us: float | None        # upstream request start -> response end
    to_us_us: float | None     # downstream start -> upstream request start
    us_cx_us: float | None     # upstream connection setup (None: a pooled connection)


_ACCESS = re.compile(r'^cnit1 start=(\S+) client=(\S+) dst=\S+ "(\S+) (\S+) [^"]*" code=(\d+) flags=(\S+) '
                     r'upstream=(\S+) ds_us=(\S+) us_us=(\S+) to_us_us=(\S+) us_cx_us=(\S+)\s*$')


def _dur(s: str) -> float | None:
    if s == "-":
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def parse_access_log(lines: Iterable[str]) -> tuple[list[AccessRecord], list[str]]:
    """The lab's Envoy access log lines -> records, and warnings for the lines that are not."""
    w = Warnings()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _ACCESS.match(line)
        start = _dur(m.group(1)) if m else None
        if m is None or start is None:
            w.add(f"not a cnit1 access log line: {line[:80]!r}", n)
            continue
        out.append(AccessRecord(start, m.group(2), m.group(3), m.group(4), int(m.group(5)), m.group(6),
                                m.group(7), *(_dur(m.group(i)) for i in range(8, 12))))
    return out, list(w.freeze())

"""A replay, prepared (pure): every input rewritten, the lab mapped, missing sets made, the report.

`prepare()` is what `lab up --replay` does before it creates anything, so bad input is refused
with one line and a 100,000-rule dump is rewritten in one pass per file. The report lists every
rule-level rewrite (original -> new, or dropped with the reason), the file-level notes and the
mapping; the lab keeps it beside its description and `lab up --report FILE` writes a copy.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from cnitrace.lab import replay_iptables, replay_map, replay_nft
from cnitrace.lab.replay import (CreatedSet, Rewrite, Rewritten, Source, check_conflicts, created_sets,
                                 rewrite_ipset)


@dataclasses.dataclass
class Prepared:
    rewritten: list[Rewritten]
    mapping: replay_map.Mapping
    sets: list[CreatedSet]
    seconds: float

    @property
    def rules_in(self) -> int:
        return sum(r.rules_in for r in self.rewritten)

    @property
    def rules_loaded(self) -> int:
        return sum(r.rules_loaded for r in self.rewritten)

    @property
    def dropped(self) -> int:
        return sum(r.dropped for r in self.rewritten)

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.rewritten)

    @property
    def backend(self) -> str:
        """The iptables backend the replay mostly uses (the profile calibrates that one)."""
        n = {"legacy": 0, "nft": 0}
        for r in self.rewritten:
            if r.source.kind == "iptables":
                n[r.source.backend] = n.get(r.source.backend, 0) + r.rules_loaded
        return "nft" if n["nft"] > n["legacy"] else "legacy"

    @property
    def sets_text(self) -> str:
        return "".join(s.line + "\n" for s in self.sets)

    def rewrites(self) -> list[Rewrite]:
        return [rw for r in self.rewritten for rw in r.rewrites]

    def summary(self) -> dict[str, Any]:
        """The short form kept in the lab's description (and shown by `lab up`)."""
        reasons: dict[str, int] = {}
        for rw in self.rewrites():
            if rw.dropped:
                key = rw.reason.split(":")[0][:80]
                reasons[key] = reasons.get(key, 0) + 1
        return {"rules_in": self.rules_in, "rules_loaded": self.rules_loaded, "dropped": self.dropped,
                "rewritten": self.changed, "drop_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
                "sources": [r.summary() for r in self.rewritten], "sets_created": [s.line for s in self.sets],
                "mapping": self.mapping.to_json(), "prepare_s": round(self.seconds, 4)}

    def report(self) -> dict[str, Any]:
        """The full report: the summary plus every rewrite."""
        return {**self.summary(), "rewrites": [rw.to_json() for rw in self.rewrites()]}


def rewrite_one(src: Source, devices: set[str]) -> Rewritten:
    if src.kind == "iptables":
        return replay_iptables.rewrite(src)
    if src.kind == "nft":
        return replay_nft.rewrite_text(src, devices)
    if src.kind == "nft-json":
        return replay_nft.rewrite_json(src, devices)
    return rewrite_ipset(src)


def prepare(sources: Sequence[Source], *, pods: int = 1, shape: str | None = None, lab: str = "lab") -> Prepared:
    """Map the lab and rewrite every input (pure; UsageError for inputs that cannot be replayed together)."""
    t0 = time.monotonic()
    mapping = replay_map.plan(sources, pods=pods, shape=shape, lab=lab)
    rewritten = [rewrite_one(s, mapping.devices) for s in sources]
    check_conflicts(rewritten)
    return Prepared(rewritten, mapping, created_sets(rewritten), time.monotonic() - t0)


def report_text(report: dict[str, Any]) -> str:
    """The report for people: the summary, each input's notes, then every rewrite."""
    m = report["mapping"]
    out = [f"replay: {report['rules_in']} rules in, {report['rules_loaded']} loaded, {report['dropped']} dropped, "
           f"{report['rewritten']} rewritten",
           f"lab shape: {m['shape']} ({m['sources'].get('shape', '')}); pods (server first): "
           + ", ".join(f"{i} {ip}" for i, ip in zip(m["ifaces"], m["ips"])),
           f"pod network: {m['pod_cidr'] or 'not named in the dump'}; lab subnet {m['subnet']}"]
    if m["unmapped"]:
        out.append("interfaces the lab does not have (their rules never match lab traffic): "
                   + ", ".join(m["unmapped"][:20]))
    for s in report["sources"]:
        out.append(f"{s['path']} ({s['kind']} {s.get('family') or ''} {s.get('backend') or ''}): "
                   f"{s['rules_in']} rules, {s['rules_loaded']} loaded, {s['dropped']} dropped")
        out += [f"  note: {n}" for n in s["notes"]]
    out += [f"created empty: {line}" for line in report["sets_created"]]
    out.append("")
    out += [Rewrite(**rw).text() for rw in report.get("rewrites", [])]
    return "\n".join(out) + "\n"


def bisect_first_failing(n: int, fails) -> int:
    """The smallest k in 1..n with fails(k), given fails(n) and not fails(0) (k-1 is the culprit's index)."""
    lo, hi = 0, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi


def replay_summary(lab: Any, seconds: float, report_out: str | None = None) -> list[str]:
    """What `lab up --replay` prints: counts, the lab's shape, the timing and where the full report is."""
    r, t = lab.topo.extra["replay"], lab.topo
    m = r["mapping"]
    out = [f"lab {lab.spec.name} up: replay of {r['rules_in']:,} rules from {len(r['sources'])} file(s): "
           f"{r['rules_loaded']:,} loaded, {r['dropped']:,} dropped, {r['rewritten']:,} rewritten; "
           f"kernel holds {', '.join(f'{k} {v:,}' for k, v in r['kernel_rules'].items()) or 'no iptables rules'}",
           f"  {m['shape']}-style pods: server {t.server.ip} on {t.server.node_iface} ({t.server.netns}), "
           f"{len(t.clients)} client(s); {len(r['probes'])} probe(s) planned for --traffic probe",
           f"  up in {seconds:.2f} s (read + rewrite {r['prepare_s']:.2f} s, load {r['load_s']:.2f} s, "
           f"lab {lab.timings.get('total', 0.0):.2f} s)"]
    for why, n in r["drop_reasons"].items():
        out.append(f"  dropped {n:,}: {why}")
    out += [f"  created empty: {line}" for line in r["sets_created"][:5]]
    out.append(f"  every rewrite: {report_out or r['report']}")
    return out

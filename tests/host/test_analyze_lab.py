"""`cnitrace analyze` of dumps saved from a live lab agrees with the live tools (root).

For every lab datapath whose policy is netfilter (iptables or nftables), with 200 rules: the lab node
namespace's `iptables-save -c` (and `nft list ruleset` / `nft -j list ruleset` for the nft datapath)
and `iptables-save` without -c are saved around a `profile --lab NAME --traffic probe` run, then
analysed offline. The analysis must give
- the same structure (chains, rules, sets) as `cnitrace snapshot --netns NODE` on the live lab;
- with counters, the profile's evaluations per packet for the lab's policy chain: exactly over the
  window between the two dumps (`cnitrace diff`), and from the totals of the dump after it (the lab's
  policy chain saw no packet before the profile);
- without counters: a flag that they are absent, and no claim that a chain saw zero packets.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter

import pytest
from rich.console import Console

from cnitrace.analyze import costs
from cnitrace.analyze.analysis import analyze
from cnitrace.analyze.diff import diff
from cnitrace.analyze.dumps import read_text
from cnitrace.core.runner import Runner
from cnitrace.lab import manager
from cnitrace.lab.datapaths.registry import DATAPATHS
from cnitrace.lab.model import LabSpec
from cnitrace.profile.config import ProfileConfig
from cnitrace.profile.run import run_profile
from cnitrace.reports.analyze.terminal import render_analysis
from cnitrace.reports.document import Node
from tests.support.nodestate import settled_node_state

RULES = 200
NETFILTER = sorted(n for n, d in DATAPATHS.items() if d.policy_stage in ("netfilter", "nftables"))
CASES = [(n, "legacy") for n in NETFILTER if n != "nft"] + [("calico", "nft"), ("nft", "")]
MODEL = costs.reference_model()
SAVE = {"legacy": "iptables-legacy-save", "nft": "iptables-nft-save"}


def snapshot(netns: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "cnitrace", "snapshot", "--netns", netns, "--only", "iptables",
                        "--only", "nftables", "--json"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def structure(doc: dict) -> Counter:
    """(kind, table) -> count of chains, rules and sets in the analysis."""
    out: Counter = Counter()
    for t in (doc.get("netfilter") or {}).get("tables", ()):
        name = t["table"] if t["kind"] == "iptables" else f"{t['family']} {t['table']}"
        out[("chains", name)] += t["chains"]
        out[("rules", name)] += t["rules"]
        if t["kind"] == "nftables":
            out[("sets", name)] += len(t["sets"])
    return out


def live_structure(snap: dict, backend: str) -> Counter:
    out: Counter = Counter()
    kinds = {"Chain": "chains", "Rule": "rules", "NftChain": "chains", "NftRule": "rules", "NftSet": "sets"}
    if backend:
        for r in snap["collectors"]["iptables"]["records"]:
            if r["kind"] in kinds and r["data"]["backend"] == backend and r["data"]["family"] == "ipv4":
                out[(kinds[r["kind"]], r["data"]["table"])] += 1
    else:
        for r in snap["collectors"]["nftables"]["records"]:
            if r["kind"] in kinds:
                out[(kinds[r["kind"]], f"{r['data']['family']} {r['data']['table']}")] += 1
    return +out


def mentions(state: dict, name: str) -> dict:
    """The parts of a node_state picture that name `name` (the lab's namespaces, processes, links ...):
    other runs on a shared node change the rest while this test runs."""
    out = {}
    for k, v in state.items():
        items = v if isinstance(v, (list, tuple)) else [v]
        hits = sorted(str(x) for x in items if name in str(x))
        if hits:
            out[k] = hits
    return out


def chain_counters(doc: dict, chain: str) -> dict:
    return next(c["counters"] for t in doc["netfilter"]["tables"] for c in t["chain_figures"] if c["chain"] == chain)


@pytest.mark.parametrize("datapath,backend", CASES, ids=[f"{d}-{b or 'native'}" for d, b in CASES])
def test_analyze_of_saved_lab_dumps_matches_the_live_lab(datapath, backend, unique_name):
    spec = LabSpec(name=unique_name(), datapath=datapath, rules=RULES, backend=backend or "legacy")
    before_state = mentions(settled_node_state(), spec.name)
    lab = manager.up(spec)
    try:
        r, node = Runner(), lab.topo.node_netns
        ref = lab.truth.allowed["tcp"]

        def dump(*argv: str) -> str:
            return r.run(list(argv), netns=node, timeout=60).stdout

        if backend:
            before = dump(SAVE[backend], "-c")
        else:
            before = dump("nft", "list", "ruleset")
        doc = run_profile(ProfileConfig(lab=spec.name, traffic="probe", duration=1.0, calibrate=False))
        if backend:
            saved = {"after.save": dump(SAVE[backend], "-c"), "nocounters.save": dump(SAVE[backend])}
        else:
            saved = {"after.nft": dump("nft", "list", "ruleset"), "after.json": dump("nft", "-j", "list", "ruleset")}
        live = live_structure(snapshot(node), backend)
    finally:
        manager.down(spec.name)
    assert mentions(settled_node_state(), spec.name) == before_state == {}    # the lab left nothing behind

    prof = next(n for _, n in Node.from_json(doc["tree"]).walk() if n.kind == "chain" and n.name == ref.chain)
    assert prof.packets > 0
    for name, text in saved.items():
        a = analyze(read_text(text, name), MODEL)
        assert structure(a.doc) == live, (name, structure(a.doc), live)
        if name == "nocounters.save":
            continue
        got = chain_counters(a.doc, ref.chain)
        assert got["provenance"] == "counters" and "since boot" in got["since"]
        # the policy chain saw nothing before the profile (asserted below), so its totals are the window
        assert got["entering_packets"] == prof.packets
        assert got["evaluations_per_packet"] == pytest.approx(prof.evaluations_per_packet, rel=1e-6)

    first = analyze(read_text(before, "before"), MODEL)
    assert chain_counters(first.doc, ref.chain).get("entering_packets") == 0
    if backend:
        window = diff(first, analyze(read_text(saved["after.save"], "after"), MODEL))["counters"]["chains"]
        w = next(c for c in window if c["chain"] == ref.chain)
        assert w["entering_packets"] == prof.packets
        assert w["evaluations_per_packet"] == pytest.approx(prof.evaluations_per_packet, rel=1e-6)

        bare = analyze(read_text(saved["nocounters.save"], "nocounters"), MODEL).doc
        for t in bare["netfilter"]["tables"]:
            assert not t["rule_counters"] and "unknown, not zero" in t["counters_note"]
            assert all("counters" not in c for c in t["chain_figures"])
            assert all(b["counters"]["absent"] and "entering_packets" not in b["counters"] for b in t["builtin"])
        out = io.StringIO()
        render_analysis(bare, Console(file=out, width=100))
        assert "0 packets counted" not in out.getvalue() and "no rule counters" in out.getvalue()

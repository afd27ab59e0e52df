"""`cnitrace study --quick` on the real lab (root), run once for the module: every experiment
family is present with an attributed stage on every row, every measured figure says it was
measured, the JSON validates against its schema, the run stays under 15 minutes, the HTML renders
every family in headless Chromium, and the node is left as it was found — also after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from cnitrace.reports.study.schema import validate
from cnitrace.study.figures import FAMILIES
from tests.support.nodestate import settled_node_state
from tests.support.runs import assert_no_lab_left, interrupted_after_first_point, netns_names

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUICK_LIMIT_S = 15 * 60


@pytest.fixture(scope="module")
def quick():
    """One `cnitrace study --quick --json --html` run, with the node's state before and after. Its
    own directory (pytest's numbered temp dirs are rotated by other sessions' runs on a shared
    machine); CNITRACE_STUDY_KEEP=DIR keeps the outputs there."""
    d = Path(tempfile.mkdtemp(prefix="cnitrace-study-"))
    out, page = d / "study.json", d / "study.html"
    before = settled_node_state()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cnitrace", "study", "--quick", "--json", str(out),
                           "--html", str(page)], capture_output=True, text=True, timeout=QUICK_LIMIT_S + 120)
    wall = time.monotonic() - t0
    after = settled_node_state()
    keep = os.environ.get("CNITRACE_STUDY_KEEP")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (d / "stdout.txt").write_text(proc.stdout + proc.stderr[-3000:])
        for f in ("study.json", "study.html", "stdout.txt"):
            shutil.copy(d / f, Path(keep) / f)
    yield {"proc": proc, "wall": wall, "doc": json.loads(out.read_text()), "page": page, "dir": d,
           "before": before, "after": after}
    shutil.rmtree(d, ignore_errors=True)


def test_quick_study_completes_under_15_minutes(quick):
    doc, proc = quick["doc"], quick["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert doc["complete"] and not doc["interrupted"] and doc["points_failed"] == 0
    assert quick["wall"] < QUICK_LIMIT_S and doc["elapsed_s"] < QUICK_LIMIT_S
    assert doc["elapsed_s"] <= quick["wall"]
    assert doc["config"]["quick"] and doc["scaled_down"] and doc["scaling"]


def test_json_validates_against_the_schema(quick):
    assert validate(quick["doc"]) == []


def test_every_family_present_with_an_attributed_stage_on_every_row(quick):
    doc = quick["doc"]
    assert {r["family"] for r in doc["rows"]} == set(FAMILIES)
    for r in doc["rows"]:
        st = r["stage"]
        assert st["name"] and st["text"] and "not measured" not in st["text"], (r["family"], r["cni"], st)
        if st["ns"] is not None:
            assert st["provenance"].split()[0] in ("measured", "modelled"), st
        m = r["measured"]
        assert m["provenance"] == "measured"
        for end in (m["from"], m["to"]):
            assert end["value"] is not None and end["provenance"] == "measured", (r["family"], r["cni"], end)
        for s in m["series"]:
            assert s["provenance"] == "measured" and s["status"] == "ok", s
        assert r["here"]["pct"] is not None and r["here"]["text"]


def test_policy_stage_grows_with_rules_on_an_iptables_datapath(quick):
    """Attribution is real: calico's modelled policy walk at N = 1,000 exceeds N = 100's, as the rules do."""
    pts = {p["spec"]["id"]: p for p in quick["doc"]["points"]}
    m100 = pts["calico/r100/c1/intra"]["stages"][0]["modelled_ns"]
    m1000 = pts["calico/r1000/c1/intra"]["stages"][0]["modelled_ns"]
    assert m100 is not None and m1000 is not None and m1000 > 3 * m100 > 0
    row = next(r for r in quick["doc"]["rows"] if r["family"] == "complexity" and r["datapath"] == "calico")
    assert "evaluations per NEW packet (N = 1,000 rules)" in row["stage"]["text"]
    assert "more than N = 0 ×" in row["stage"]["text"]
    assert row["stage"]["provenance"] == "modelled"


def test_l7_rows_name_the_proxy_that_ran(quick):
    rows = [r for r in quick["doc"]["rows"] if r["family"] == "l7"]
    assert {r["datapath"] for r in rows} == {"cilium", "antrea"}
    for r in rows:
        p = r["proxy"]
        assert p["ran"] not in ("", "unknown")
        assert p["stand_in"] == (p["ran"] != p["study"])
        assert r["stage"]["name"] == "l7-proxy" and r["stage"]["provenance"] == "measured"
        # one request at a time, the detour through the proxy adds time (at 100 concurrent, a proxy that
        # keeps its upstream connections open can even raise RPS over the direct path: not asserted)
        assert r["stage"]["ns"] > 0, r["stage"]
        assert r["measured"]["to"]["value"] > 0 and r["measured"]["from"]["value"] > 0
    assert next(r for r in rows if r["datapath"] == "antrea")["proxy"]["stand_in"]


def _lines(v) -> set[str]:
    if isinstance(v, dict):
        return {f"{k} {line}" for k, x in v.items() for line in _lines(x)}
    if isinstance(v, (list, tuple)):
        return {" ".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x) for x in v}
    return set(str(v).splitlines())


def residue(before: dict, after: dict, labs: set[str]) -> dict[str, list[str]]:
    """What is on the node after the run and not before, and names one of the run's labs. The
    machine is shared: other engineers' labs and probes come and go during a 6-minute run, so the
    whole-node comparison is left to the short Ctrl-C test; here every object the study could
    leave (namespaces, links, pins, processes, rules, state records) carries a lab's name."""
    out = {}
    for kind in after:
        added = _lines(after[kind]) - _lines(before.get(kind, ""))
        mine = sorted(x for x in added if any(lab in x for lab in labs))
        if mine:
            out[kind] = mine
    return out


def test_zero_residue(quick):
    doc = quick["doc"]
    assert_no_lab_left(doc)
    labs = {p["lab"] for p in doc["points"]}
    assert len(labs) == doc["points_done"]
    assert residue(quick["before"], quick["after"], labs) == {}


def test_html_renders_every_family_in_chromium(quick):
    page, d = quick["page"], quick["dir"]
    profile, shot = d / "chrome-profile", d / "shot.png"
    subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--window-size=1300,1000", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    for fam in FAMILIES:
        start = dom.index(f'id="family-{fam}"')
        section = dom[start:dom.index("</section>", start)]
        n = sum(1 for r in quick["doc"]["rows"] if r["family"] == fam)
        assert section.count('class="row"') == n > 0, fam
        assert section.count('class="stage"') == n, fam
    img = Image.open(shot).convert("RGB")
    assert len(img.getcolors(maxcolors=1 << 20) or ()) > 10, "blank page"


def test_ctrl_c_writes_a_partial_document_and_leaves_nothing(tmp_path: Path, node_before_after):
    out = tmp_path / "partial.json"
    before = {ns for ns in netns_names() if ns.startswith("cnit-st")}
    doc = interrupted_after_first_point(["study", "--quick", "--families", "policy", "--datapaths", "calico,kube-router"],
                                        out, "cnit-st", wait_s=120, exit_s=90)
    assert doc["interrupted"] and not doc["complete"] and validate(doc) == []
    assert doc["points_done"] >= 1 and doc["points"][0]["status"] == "ok"
    assert_no_lab_left(doc)
    assert not {ns for ns in netns_names() if ns.startswith("cnit-st")} - before
    node_before_after()

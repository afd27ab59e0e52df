"""The profile document: schema validation, rendering (terminal, HTML) and diff."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from cnitrace.attribution.tree import Calib, Transit, build_tree, netfilter_stage
from cnitrace.reports.profile.diff import diff_docs
from cnitrace.reports.document import headline, validate
from cnitrace.reports.profile.html import render_html
from cnitrace.reports.profile.terminal import render_profile
from tests.unit.test_attribution import calico_chains


def make_doc(n_rules: int = 1000) -> dict:
    root = build_tree([netfilter_stage(calico_chains(n_rules, 100), 100, Calib(27.0))],
                      Transit(100, 40_000.0, 39_000.0, 60_000.0), 100)
    return {
        "schema_version": 1, "kind": "profile", "tool": {"name": "cnitrace", "version": "0.1.0"},
        "host": {"kernel": "6.18", "cpu": "AMD EPYC", "hostname": "node1"},
        "cni": [{"name": "calico", "evidence": ["interface cali1234"]}], "lab": None,
        "selection": {"interfaces": [{"name": "cali1234", "ifindex": 5, "netns": "cnit-x-node", "peer": "eth0",
                                      "pod": "cnit-x-p1"}], "netns": []},
        "started_at": 1.0, "duration_s": 5.0, "traffic": {"kind": "probe", "packets_sent": 100, "result": None},
        "backends": {"netfilter": {"backend": "counters", "reason": "no kprobes or fentry on this kernel"},
                     "transit": {"backend": "tracepoint", "reason": "net:netif_receive_skb attached"}},
        "calibration": {"ns_per_rule_eval": 27.0, "provenance": "measured"},
        "tree": root.to_json(), "headline": headline(root),
        "drops": [{"reason": "NETFILTER_DROP", "count": 20, "where": "cali-pi-allow", "provenance": "both"}],
        "conntrack": {"count": 3, "max": 262144}, "maps": [], "evaluation_order": ["cali-FORWARD", "cali-pi-allow"],
        "overhead": {"probes": "tracepoint"}, "lost_events": 0, "warnings": [],
    }


def test_sample_document_is_valid_and_roundtrips():
    doc = make_doc()
    assert validate(json.loads(json.dumps(doc))) == []


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d.pop("headline"), "<root>"),
    (lambda d: d["tree"].update(provenance="guessed"), "tree/provenance"),
    (lambda d: d["backends"]["transit"].update(backend="magic"), "backends/transit/backend"),
    (lambda d: d.update(lost_events=-1), "lost_events"),
])
def test_schema_rejects_broken_documents(mutate, where):
    doc = make_doc()
    mutate(doc)
    errs = validate(doc)
    assert errs and any(e.startswith(where) for e in errs), errs


def test_terminal_leads_with_answer_and_fits_100_columns():
    buf = io.StringIO()
    render_profile(make_doc(), Console(file=buf, width=100, force_terminal=False, color_system=None))
    out = buf.getvalue()
    first = out.splitlines()[0]
    assert "cali-pi-allow" in first and "rule evaluations per packet" in first
    assert max(len(l) for l in out.splitlines()) <= 100
    assert "rest of stack" in out and "NETFILTER_DROP" in out and "tracepoint" in out


def test_node_text_with_brackets_prints_as_it_is(capsys):
    """A rule comment or warning from the node can hold `[...]`: the default console prints it
    literally (rich markup ate `[from-network]` and raised MarkupError on `[/var/log/x]`)."""
    doc = make_doc()
    doc["headline"] = "98 % of per-packet time: chain cali-pi-[bold]x"
    doc["warnings"] = ["rule comment 'see [/var/log/x]' kept as it is"]
    render_profile(doc)
    out = capsys.readouterr().out
    assert "cali-pi-[bold]x" in out and "'see [/var/log/x]' kept" in out


def test_html_is_self_contained_with_charts():
    page = render_html(make_doc())
    assert 'id="stage-share-chart"' in page and 'id="chain-chart"' in page
    assert page.count('class="stage"') >= 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)   # no network fetches
    assert "<script" not in page


def test_diff_reports_the_policy_chain_growth_first():
    changes = diff_docs(make_doc(100), make_doc(1000))
    grew = [c for c in changes if c.kind == "chain"][0]
    assert grew.path.endswith("cali-pi-allow")
    assert grew.delta_ns == pytest.approx(900 * 27.0)


def test_report_and_diff_commands(tmp_path, capsys):
    from cnitrace import cli

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(make_doc(100)))
    b.write_text(json.dumps(make_doc(1000)))
    html = tmp_path / "r.html"
    assert cli.main(["report", str(b), "--html", str(html)]) == 0
    assert "stage-share-chart" in html.read_text()
    assert cli.main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "cali-pi-allow" in out and "+24.3 µs" in out


@pytest.mark.parametrize("content,msg", [("", "not JSON"), ("[1]", "not a cnitrace profile"),
                                         ('{"kind": "profile"}', "not a valid cnitrace profile")])
def test_report_bad_file_is_one_line_exit_2(tmp_path, capsys, content, msg):
    from cnitrace import cli

    f = tmp_path / "bad.json"
    f.write_text(content)
    assert cli.main(["report", str(f)]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert cli.main(["report", str(tmp_path / "missing.json")]) == 2

"""`cnitrace analyze` and the dump side of `cnitrace diff`: exit statuses, outputs, the cost source."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from cnitrace import cli
from cnitrace.analyze import costs

FIX = Path(__file__).parent.parent / "fixtures"


@pytest.fixture(autouse=True)
def no_node_calibration(tmp_path, monkeypatch):
    """Tests see no cached calibration unless they write one (the reference figures are used)."""
    import cnitrace.calibrate.rules as rules

    monkeypatch.setattr(rules, "CACHE", tmp_path / "calibration.json")
    return tmp_path / "calibration.json"


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_analyze_prints_structure_hooks_and_the_cost_source(capsys):
    rc, out, err = run(capsys, "analyze", str(FIX / "iptables" / "kubeproxy_kubernetes-75893.save"))
    assert rc == 0, err
    assert "kube-proxy: iptables" in out and "25 chains, 8 rules" in out
    assert "hook paths" in out and "nat PREROUTING" in out
    assert "reference figures, not this node" in out
    assert "no rule counters" in out and "0 packets counted" not in out


def test_json_and_html_outputs(capsys, tmp_path):
    j, h = tmp_path / "a.json", tmp_path / "a.html"
    rc, _, err = run(capsys, "analyze", str(FIX / "lab" / "calico-lab-iptables-legacy-save-c.txt"),
                     str(FIX / "ovs" / "host-dump-flows.txt"), "--json", str(j), "--html", str(h))
    assert rc == 0, err
    doc = json.loads(j.read_text())
    assert doc["kind"] == "analyze" and doc["schema_version"] == 1
    assert [i["format"] for i in doc["inputs"]] == ["iptables-save", "ovs-flows"]
    assert doc["cni"][0]["cni"] == "calico"
    page = h.read_text()
    assert 'id="hook-chart"' in page and 'id="chains"' in page and "OVS flows" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page


def test_directories_and_comma_lists(capsys, tmp_path):
    d = tmp_path / "node"
    d.mkdir()
    (d / "a.txt").write_text((FIX / "iptables" / "local_legacy_v4.save").read_text())
    (d / "b.txt").write_text((FIX / "conntrack" / "host-conntrack-S.txt").read_text())
    rc, out, err = run(capsys, "analyze", str(d))
    assert rc == 0 and "2 dump(s)" in out, err
    rc, out, err = run(capsys, "analyze", f"{d / 'a.txt'},{d / 'b.txt'}")
    assert rc == 0 and "2 dump(s)" in out


@pytest.mark.parametrize("content,msg", [
    ("just some words\n", "not a dump analyze knows"),
    ("", "not a dump analyze knows"),
    ("\0\1\2binary", "binary data"),
    ("", "empty"),
    # `conntrack -S` pasted with its line breaks lost (a real paste): all of it reads as the prompt's command
    ("$ conntrack -S cpu=0 found=770 invalid=3856 ignore=42570125 insert=0 insert_failed=0 drop=0\n",
     "only prompt lines, no output after them"),
])
def test_unknown_content_is_one_line_and_exit_2(capsys, tmp_path, content, msg):
    p = tmp_path / "x.bin"
    p.write_bytes(content.encode())
    rc, out, err = run(capsys, "analyze", str(p))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cnitrace: ") and msg in err


def test_bracketed_text_from_a_dump_prints_as_it_is(capsys, tmp_path):
    """Real names carry brackets: cilium's tc programs are `bpf_network.o:[from-network]` in
    `bpftool net show` (cilium#14895); with rich markup on they printed as `bpf_network.o:`, and a
    warning quoting `[/var/log/x]` ended in a MarkupError traceback."""
    rc, out, err = run(capsys, "analyze", str(FIX / "bpf" / "cilium-14895-net-show.txt"))
    assert rc == 0, err
    assert "bpf_network.o:[from-network]" in out and "bpf_lxc.o:[from-container]" in out
    flows = (FIX / "ovs" / "host-dump-flows.txt").read_text().splitlines()[:5]
    f = tmp_path / "flows.txt"
    f.write_text("\n".join(flows + [" cookie=0x0, duration=1.0s, table=0, see [/var/log/x] [bold]"]) + "\n")
    rc, out, err = run(capsys, "analyze", str(f))
    assert rc == 0, err
    assert "unparsed" in out and "see [/var/log/x] [bold]" in out


def test_a_name_the_system_refuses_is_one_line(capsys):
    """A comma list longer than NAME_MAX was first tried as one file name (OSError traceback)."""
    names = ",".join(str(FIX / "iptables" / "kubeproxy_kubernetes-75893.save") for _ in range(6))
    assert len(names) > 255
    rc, out, err = run(capsys, "analyze", names)
    assert rc == 0 and "kube-proxy: iptables" in out, err
    rc, out, err = run(capsys, "analyze", "x" * 300)
    assert rc == 2 and err.count("\n") == 1 and "File name too long" in err, err
    rc, out, err = run(capsys, "diff", "x" * 300, str(FIX / "iptables" / "kubeproxy_kubernetes-75893.save"))
    assert rc == 2 and err.count("\n") == 1 and "File name too long" in err, err


def test_missing_file_is_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "analyze", str(tmp_path / "nope"))
    assert rc == 2 and "no such file" in err and err.count("\n") == 1


def test_a_cached_calibration_of_this_node_is_used_and_named(capsys, no_node_calibration):
    cal = dataclasses.replace(costs.REFERENCE_LEGACY, early_ns=7.0, provenance="measured", kernel="k", cpu="c")
    no_node_calibration.write_text(json.dumps({costs.cache_key("legacy"): cal.to_json()}))
    rc, out, _ = run(capsys, "analyze", str(FIX / "iptables" / "local_legacy_v4.save"), "--json",
                     str(no_node_calibration.parent / "o.json"))
    assert rc == 0 and "this node's calibration (cached" in out
    doc = json.loads((no_node_calibration.parent / "o.json").read_text())
    assert doc["cost"]["iptables-legacy"]["source"] == "calibration"
    assert doc["cost"]["iptables-legacy"]["early_ns"] == 7.0
    assert {t["cost_source"] for t in doc["netfilter"]["tables"]} == {"calibration"}


def test_calibrate_measures_only_when_asked(capsys, monkeypatch):
    asked = []

    def fake_measure(backends):
        asked.append(backends)
        return {b: dataclasses.replace(costs.REFERENCE_LEGACY, provenance="measured") for b in backends}

    monkeypatch.setattr(costs, "measure_shapes", fake_measure)
    monkeypatch.setattr(cli, "require_root", lambda: None)
    assert run(capsys, "analyze", str(FIX / "iptables" / "local_nft_v4.save"))[0] == 0
    assert asked == []
    rc, out, _ = run(capsys, "analyze", "--calibrate", str(FIX / "iptables" / "local_nft_v4.save"))
    assert rc == 0 and asked == [("nft",)] and "this node's calibration (measured" in out


def test_diff_of_dumps_and_of_profiles_dispatch(capsys, tmp_path):
    base = (FIX / "iptables" / "local_legacy_v4.save").read_text()
    a, b = tmp_path / "before.save", tmp_path / "after.save"
    a.write_text(base)
    b.write_text(base.replace("[0:0] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
                              "[0:0] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
                              "[0:0] -A INPUT -p tcp -m tcp --dport 23 -j ACCEPT"))
    j = tmp_path / "d.json"
    rc, out, err = run(capsys, "diff", str(a), str(b), "--json", str(j))
    assert rc == 0, err
    assert "ipv4 input" in out and "INPUT" in out and "2 → 3" in out     # INPUT's rules before → after
    doc = json.loads(j.read_text())
    assert doc["kind"] == "analyze-diff"
    inp = next(h for h in doc["hooks"] if h["hook"] == "input")
    assert inp["worst_evaluations"]["delta"] == 1
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"schema_version": 1, "kind": "profile", "tree": {}}))
    rc, _, err = run(capsys, "diff", str(profile), str(a))
    assert rc == 2 and "two of a kind" in err


def _fixtures_with_dumps() -> list[str]:
    from cnitrace.analyze.dumps import Dump, read_text

    out = []
    for p in sorted(FIX.glob("*/*")):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        if any(isinstance(x, Dump) for x in read_text(text, p.name)):
            out.append(str(p.relative_to(FIX)))
    return out


@pytest.mark.parametrize("name", _fixtures_with_dumps())
def test_every_real_dump_analyses_and_renders(name):
    """Every fixture analyze recognises yields a document the terminal, HTML and diff renderers take."""
    import io

    from rich.console import Console

    from cnitrace.analyze.analysis import analyze
    from cnitrace.analyze.diff import diff
    from cnitrace.analyze.dumps import read_text
    from cnitrace.reports.analyze.html import render_html
    from cnitrace.reports.analyze.terminal import render_analysis, render_diff

    a = analyze(read_text((FIX / name).read_text(encoding="utf-8"), name), costs.reference_model())
    json.dumps(a.doc)
    # a packet entering a chain meets each of its rules at most once, whatever the counters say
    # (a real `iptables -nvL` once gave 193 evaluations per packet on a 2-rule chain)
    for t in (a.doc.get("netfilter") or {}).get("tables", ()):
        for c in t["chain_figures"]:
            per = (c.get("counters") or {}).get("evaluations_per_packet")
            assert per is None or per <= c["rules"] * 1.0001, (t["label"], c["chain"], c["rules"], per)
    render_analysis(a.doc, Console(file=io.StringIO(), width=100))
    assert "<html" in render_html(a.doc)
    d = diff(a, a)
    assert all(h["worst_ns"]["delta"] == 0 for h in d["hooks"]) and not d["chains"]["changed"]
    render_diff(d, Console(file=io.StringIO(), width=100))


def test_the_cache_keys_are_the_calibrations_own(monkeypatch):
    """analyze reads the entries `profile` / `--calibrate` write: same keys as calibrate.rules uses."""
    import cnitrace.calibrate.rules as rules

    seen = []

    def fake_cached(cache, key, load, measure_now):
        seen.append(key)
        return dataclasses.replace(costs.REFERENCE_LEGACY, nft_ns={"plain": 1.0}) if key.startswith("shapes") \
            else rules._NftFigures({"plain": 1.0})

    monkeypatch.setattr(rules, "cached", fake_cached)
    rules.cached_or_measure_shapes(backend="nft")
    assert seen[0] == costs.cache_key("nft")
    rules.cached_or_measure_nft_shapes()
    assert seen[-1] == costs.nft_cache_key()


def test_a_directory_may_hold_other_files(capsys, tmp_path):
    d = tmp_path / "sosreport"
    d.mkdir()
    (d / "iptables.txt").write_text((FIX / "iptables" / "local_legacy_v4.save").read_text())
    (d / "uname.txt").write_text("Linux node-1 6.1.0 #1 SMP x86_64 GNU/Linux\n")
    rc, out, err = run(capsys, "analyze", str(d))
    assert rc == 0, err
    assert "skipped" in out and "uname.txt" in out
    (d / "iptables.txt").unlink()
    rc, _, err = run(capsys, "analyze", str(d))
    assert rc == 2 and "no file holds a dump analyze knows" in err


def test_a_listing_and_a_save_of_the_same_counters_agree():
    """`iptables -nvL` keeps a rule's tests as summaries (`ctstate NEW`): such a rule has a test, so
    its counter is not every packet entering (it was: 484K entering, 193 evaluations per packet on
    a 2-rule chain). Both forms of these counters (real, cut from the linuxkit fixture) give 2."""
    from cnitrace.analyze.analysis import analyze
    from cnitrace.analyze.dumps import read_text

    listing = ("Chain OUTPUT (policy ACCEPT 1567K packets, 526M bytes)\n"
               " pkts bytes target     prot opt in     out     source               destination\n"
               " 484K   30M KUBE-SERVICES  all  --  *      *       0.0.0.0/0            0.0.0.0/0"
               "            ctstate NEW\n"
               "  93M   34G KUBE-FIREWALL  all  --  *      *       0.0.0.0/0            0.0.0.0/0\n")
    save = ("*filter\n:OUTPUT ACCEPT [1567000:526000000]\n"
            "[484000:30000000] -A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES\n"
            "[93000000:34000000000] -A OUTPUT -j KUBE-FIREWALL\nCOMMIT\n")
    figures = []
    for name, text in (("l.txt", listing), ("s.save", save)):
        a = analyze(read_text(text, name), costs.reference_model())
        [c] = a.doc["netfilter"]["tables"][0]["chain_figures"]
        figures.append((c["counters"]["entering_packets"], c["counters"]["evaluations_per_packet"]))
        assert any("counters disagree" in w for w in a.doc["warnings"]), a.doc["warnings"]
    assert figures[0] == figures[1] == (93_000_000, 2.0), figures


def test_a_busybox_prompt_names_the_table_and_is_not_a_rule():
    """`/ # iptables -t nat -nvL` (a busybox shell on a linuxkit node) and a trailing `/ # ?`: the
    prompt's `-t nat` names the table, and neither line is read as a rule."""
    from cnitrace.analyze.analysis import analyze
    from cnitrace.analyze.dumps import read_text

    name = "iptables/xiazemin-k8s_learn-linuxkit_nat_busybox_prompt.txt"
    a = analyze(read_text((FIX / name).read_text(encoding="utf-8"), name), costs.reference_model())
    [t] = a.doc["netfilter"]["tables"]
    assert t["table"] == "nat" and t["chains"] == 56 and t["rules"] == 167, (t["table"], t["chains"], t["rules"])
    assert not [w for w in a.doc["warnings"] if "/ #" in w or "does not name its table" in w], a.doc["warnings"]


def test_the_legacy_tables_warning_is_passed_on_unless_their_dump_is_there():
    """iptables-nft's `# Warning: iptables-legacy tables present` means the CNI's rules may be in
    tables this dump lacks: said, unless `iptables-legacy-save` of the same node is among the inputs
    (dev-sec/ansible-collection-hardening#274 pasted both)."""
    from cnitrace.analyze.analysis import analyze
    from cnitrace.analyze.dumps import read_text

    name = "iptables/ansible-hardening-274_xtables_save_then_legacy.save"
    both = (FIX / name).read_text(encoding="utf-8")
    nft_only = both[:both.index("$ iptables-legacy-save")]
    warned = analyze(read_text(nft_only, "nft.txt"), costs.reference_model()).doc["warnings"]
    assert any("legacy tables are present too" in w for w in warned), warned
    warned = analyze(read_text(both, name), costs.reference_model()).doc["warnings"]
    assert not any("legacy tables are present too" in w for w in warned), warned


def test_conntrack_stats_line_shows_errors(capsys):
    """`error=` (packets conntrack could not track) is one of the figures that explain drops."""
    rc, out, err = run(capsys, "analyze", str(FIX / "conntrack" / "host-conntrack-S-named.txt"))
    assert rc == 0, err
    text = " ".join(out.split())            # the line wraps at 100 columns
    assert "error 2," in text and "insert_failed 0" in text, text


def test_calico_counters_print_what_counted_and_the_totals(capsys):
    """Tigera's documented `calico-node -bpf counters dump`: the flattened summary was cut before
    "Dropped by policy egress 11" and the totals."""
    rc, out, err = run(capsys, "analyze", str(FIX / "calico" / "tigera-docs-counters-dump.txt"))
    assert rc == 0, err
    text = " ".join(out.split())
    assert "Dropped by policy egress 11" in text and "Total packets ingress 34 egress 22" in text, text
    assert "Accepted by failsafe" not in text            # reasons that counted nothing are left out


def test_what_a_web_page_or_editor_adds_changes_nothing():
    """A byte-order mark, zero-width spaces and no-break spaces (copied from a web page or an
    editor) are not in any tool's output: with them, `*nat\\u200b` was a table named `nat\\u200b`
    and every `[0:0]\\u200b` a bad counter."""
    from cnitrace.analyze.analysis import analyze
    from cnitrace.analyze.dumps import read_text

    name = "iptables/kubeproxy_kubernetes-75893.save"
    text = (FIX / name).read_text(encoding="utf-8")
    messy = "\ufeff" + text.replace("\n", "\u200b\n", 8).replace(" ", "\u00a0", 30)
    a, b = (analyze(read_text(t, "x.save"), costs.reference_model()).doc for t in (text, messy))
    assert a["structure"] == b["structure"] and a["netfilter"]["hooks"] == b["netfilter"]["hooks"]
    assert a["warnings"] == b["warnings"], b["warnings"]

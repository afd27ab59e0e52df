"""OVS calibration: the benchmark pipeline, the fit, cache keying, and the modelled OVS split (pure)."""

from __future__ import annotations

import json

import pytest

from cnitrace.calibrate import ovs as co
from cnitrace.attribution.tree import Calib, OvsTableWork, ovs_stage
from cnitrace.reports.document import ovs_calibration_text
from cnitrace.core.runner import RecordedRunner


def test_pipeline_walks_every_table_then_outputs():
    flows = co.pipeline(3, out_port=2)
    assert len(flows) == 3 * (co.NONMATCHING + 1)
    defaults = [(t, a) for t, p, m, a in flows if p == 0]
    assert defaults == [(0, "resubmit(,1)"), (1, "resubmit(,2)"), (2, "output:2")]
    # the non-matching flows match UDP ports the benchmark's traffic never uses
    ports = [int(m.split("tp_dst=")[1]) for _, p, m, _ in flows if p == 100]
    assert co.DPORT not in ports and all(m.startswith("udp,") for _, p, m, _ in flows if p == 100)
    assert co.flow_lines(flows)[0] == f"table=0,priority=100,udp,tp_dst={co.DPORT + 1},actions=drop"
    assert co.flow_lines(flows)[-1] == "table=2,priority=0,actions=output:2"


def test_pipeline_subtables_counted_like_the_profile():
    assert co.subtables_per_table(co.pipeline(4, 2)) == 2            # tp_dst shape + catch-all
    assert co.subtables_per_table(co.pipeline(4, 2, nonmatching=0)) == 1
    with pytest.raises(ValueError):
        co.pipeline(0, 2)


def _samples(slope: float, base: float) -> list[co.OvsSample]:
    return [co.OvsSample(k, 1000, int((base + slope * k) * 1000)) for k in (1, 24, 48, 48, 24, 1)]


def test_fit_recovers_ns_per_table_and_upcall_base():
    cal = co.calibration_from_samples(_samples(130.0, 11_000.0), "netdev", 2, "6.18", "cpu", seconds=6.5)
    assert cal.ns_per_table == pytest.approx(130.0, rel=1e-3)
    assert cal.ns_per_upcall_base == pytest.approx(11_000.0, rel=1e-3)
    assert cal.r2 == pytest.approx(1.0) and cal.ns_per_subtable == pytest.approx(65.0, rel=1e-3)
    assert co.OvsCalibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    s = cal.summary()
    assert s["tables"] == [1, 24, 48] and s["provenance"] == "measured" and s["seconds"] == 6.5


def test_noisy_samples_lower_r2():
    noisy = [co.OvsSample(k, 1000, c) for k, c in ((1, 11_000_000), (48, 12_000_000), (1, 13_000_000),
                                                   (48, 17_000_000))]
    cal = co.calibration_from_samples(noisy, "netdev", 2, "k", "c")
    assert 0 < cal.r2 < 0.9 and cal.ns_per_table > 0


def test_cache_key_separates_kernel_cpu_and_datapath():
    keys = {co.cache_key("6.18", "EPYC", "netdev"), co.cache_key("6.18", "EPYC", "system"),
            co.cache_key("6.12", "EPYC", "netdev"), co.cache_key("6.18", "Xeon", "netdev")}
    assert len(keys) == 4


def test_cached_or_measure_uses_the_entry_for_this_datapath_only(tmp_path, monkeypatch):
    cache = tmp_path / "calibration-ovs.json"
    measured = []

    def fake_measure(datapath_type: str, **kw):
        measured.append(datapath_type)
        return co.calibration_from_samples(_samples(100.0 if datapath_type == "netdev" else 40.0, 9000.0),
                                           datapath_type, 2, "k", "c")

    monkeypatch.setattr(co, "measure", fake_measure)
    first = co.cached_or_measure("netdev", cache=cache)
    again = co.cached_or_measure("netdev", cache=cache)
    other = co.cached_or_measure("system", cache=cache)
    assert measured == ["netdev", "system"]                   # the second netdev call came from the cache
    assert first.provenance == "measured" and again.provenance == "cached"
    assert again.ns_per_table == pytest.approx(first.ns_per_table)
    assert other.ns_per_table == pytest.approx(40.0, rel=1e-3)
    assert len(json.loads(cache.read_text())) == 2


def test_datapath_type_of_reads_the_bridges():
    from cnitrace.collectors.ovs.source import OvsTarget

    ovs = OvsTarget(rundir="/run/x")
    argv = ("ovs-vsctl", "--db=unix:/run/x/db.sock", "--timeout=5", "--format=json",
            "--columns=name,datapath_type", "list", "Bridge")

    def bridges(*types: str) -> RecordedRunner:
        rows = [[f"br{i}", t] for i, t in enumerate(types)]
        return RecordedRunner({argv: json.dumps({"headings": ["name", "datapath_type"], "data": rows})})

    assert co.datapath_type_of(ovs, bridges("netdev")) == "netdev"
    assert co.datapath_type_of(ovs, bridges("")) == "system"          # empty = the kernel datapath
    assert co.datapath_type_of(ovs, bridges("netdev", "system")) == "system"
    assert co.datapath_type_of(ovs, RecordedRunner({}), known="netdev") == "netdev"


# --- the modelled OVS split ----------------------------------------------------------------------

TABLES = [OvsTableWork("25 (IngressRule)", 100, subtables=8), OvsTableWork("0 (Classifier)", 100, subtables=2)]


def test_calibrated_tables_and_stage_is_both_with_agreement():
    cal = Calib(25.0, ns_per_ovs_table=50.0, ovs_upcall_ns=10_000.0)
    # 100 packets, half of the datapath lookups were upcalls; 40 µs of ovs-vswitchd CPU measured.
    st = ovs_stage(TABLES, 100, cal, measured_ns=4_000_000.0, upcalls=50, first_fraction=0.5)
    ingress = st.find("ovs_table", "25 (IngressRule)")
    assert ingress.modelled_ns == pytest.approx(100 * 0.5 * 8 * 50.0 / 100)      # 200 ns per packet
    assert ingress.provenance == "modelled" and ingress.detail["split"] == "calibrated"
    assert ingress.detail["first_packet_lookups"] == 50
    assert ingress.detail["cpu_split_ns"] == pytest.approx(40_000.0 * 8 / 10)    # the old split, for comparison
    model = (100 * 0.5 * 10 * 50.0 + 50 * 10_000.0) / 100                         # tables + upcalls x base
    assert st.provenance == "both" and st.measured_ns == pytest.approx(40_000.0)
    assert st.modelled_ns == pytest.approx(model) and st.ns_per_packet == pytest.approx(40_000.0)
    assert st.agreement == pytest.approx(40_000.0 / model)
    assert st.detail["model"]["agreement"] == pytest.approx(st.agreement)
    assert st.detail["model"]["upcalls"] == 50


def test_without_calibration_the_measured_cpu_is_split_and_no_agreement_is_claimed():
    st = ovs_stage(TABLES, 100, Calib(25.0), measured_ns=1_000_000.0, upcalls=50)
    ingress = st.find("ovs_table", "25 (IngressRule)")
    assert ingress.ns_per_packet == pytest.approx(10_000.0 * 8 / 10)
    assert st.provenance == "measured" and st.modelled_ns is None and st.agreement is None
    assert "model" not in st.detail


def test_calibrated_without_measurement_is_modelled():
    st = ovs_stage(TABLES, 10, Calib(25.0, 50.0, 10_000.0), upcalls=10)
    assert st.provenance == "modelled" and st.measured_ns is None
    assert st.ns_per_packet == pytest.approx((100 * 10 * 50.0 + 10 * 10_000.0) / 10)


def test_calibration_text():
    cal = co.calibration_from_samples(_samples(130.0, 11_000.0), "netdev", 2, "6.18", "cpu")
    text = ovs_calibration_text(cal.summary())
    assert text.startswith("OVS 130 ns per table per first packet (2 subtables, 65 ns each) + 11.0 µs per upcall")
    assert "R² 1.00" in text and "netdev datapath (measured)" in text


def test_headline_leads_with_the_stage_when_its_tables_explain_little_of_it():
    from cnitrace.attribution.tree import build_tree
    from cnitrace.reports.document import headline

    st = ovs_stage(TABLES, 50, Calib(25.0, 50.0, 10_000.0), measured_ns=50 * 120_000.0, upcalls=25,
                   first_fraction=0.1)
    h = headline(build_tree([st], None, 50))
    assert h.startswith("100 % of per-packet time: stage ovs ≈ 120.0 µs (both, model/measured ")
    assert "costliest inside: ovs table 25 (IngressRule), 16 classifier subtable lookups per packet" in h


def test_document_with_ovs_calibration_validates_and_renders(capsys):
    from rich.console import Console

    from cnitrace.reports.document import validate
    from cnitrace.reports.profile.html import render_html
    from cnitrace.reports.profile.terminal import render_profile
    from tests.unit.test_report_document import make_doc

    cal = co.calibration_from_samples(_samples(130.0, 11_000.0), "netdev", 2, "6.18", "cpu")
    doc = make_doc()
    doc["calibration"]["ovs"] = cal.summary()
    assert validate(doc) == []
    render_profile(doc, Console(width=100, highlight=False, color_system=None))
    assert "OVS 130 ns per table per first packet" in capsys.readouterr().out.replace("\n", " ")
    assert 'id="ovs-calibration">OVS 130 ns per table' in render_html(doc)
    doc["calibration"]["ovs"] = {"ns_per_table": 130.0}          # incomplete: the schema says so
    assert validate(doc)

"""The profile's probe plan: --probe-backend pins (validated, one line each), which stages attach
(the OVS kernel stage only on a kernel datapath), the backends section saying what each hook
really used, and the OVS kernel datapath figures turned into the OVS stage (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnitrace import cli
from cnitrace.attribution.tree import Calib, OvsKernel, OvsTableWork, ovs_stage, with_ovs_kernel
from cnitrace.collectors.base import Snapshot
from cnitrace.collectors.ovs.parse import parse_dpctl_show
from cnitrace.core.errors import UsageError
from cnitrace.probes.histogram import from_samples
from cnitrace.probes.runtime import Choice, Figure
from cnitrace.profile.config import ProfileConfig, check_force
from cnitrace.profile.window import _probe_stages, backend_used
from cnitrace.profile.ovs import kernel_datapath
from cnitrace.attribution.figures import ovs_kernel_of

OVS_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ovs"
MEASURING_HOST = {s: {"backend": b} for s, b in (("transit", "raw_tracepoint"), ("drops", "tracepoint"),
                                                  ("netfilter", "fentry"), ("ovs_kernel", "fentry"))}
COUNTERS_HOST = {s: {"backend": "counters"} for s in MEASURING_HOST}


# --- pins ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("force,why", [
    ((("bogus", "kprobe"),), "unknown stage"),
    ((("transit", "kprobe"),), "transit can take tp_btf, raw_tracepoint, tracepoint, counters"),
    ((("ovs_kernel", "fentry"),), "ovs_kernel can take kprobe, counters"),
    ((("netfilter", "kprobe"), ("netfilter", "fentry")), "given twice"),
])
def test_bad_pins_are_refused(force, why):
    with pytest.raises(UsageError) as e:
        check_force(force)
    assert why in e.value.message
    with pytest.raises(UsageError):
        ProfileConfig(lab="x", force=force).validate()


def test_good_pins_pass():
    check_force((("netfilter", "kprobe"), ("netfilter", "kprobe"), ("transit", "counters"),
                 ("ovs_kernel", "kprobe"), ("drops", "tracepoint")))


@pytest.mark.parametrize("argv,why", [
    (["--probe-backend", "netfilter"], "bad --probe-backend 'netfilter'"),
    (["--probe-backend", "netfilter=magic"], "bad --probe-backend"),
    (["--probe-backend", "drops=kprobe"], "drops can take"),
])
def test_cli_pin_errors_are_one_line_exit_2(argv, why, capsys):
    assert cli.main(["profile", "--lab", "x", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and "Traceback" not in err[0], err


# --- which stages attach ------------------------------------------------------------------------

def test_stages_follow_the_ladder_and_the_pins():
    assert _probe_stages(MEASURING_HOST) == ["transit", "drops", "netfilter"]
    assert _probe_stages(MEASURING_HOST, kernel_ovs=True) == ["transit", "drops", "netfilter", "ovs_kernel"]
    assert _probe_stages(COUNTERS_HOST) == []
    # a pin attaches even where the ladder said counters (and fails loudly if impossible) ...
    assert _probe_stages(COUNTERS_HOST, {"netfilter": "kprobe"}) == ["netfilter"]
    # ... and a counters pin attaches nothing
    assert _probe_stages(MEASURING_HOST, {"transit": "counters", "drops": "counters"}) == ["netfilter"]
    # the OVS kernel stage never attaches without a kernel datapath, pinned or not
    assert "ovs_kernel" not in _probe_stages(MEASURING_HOST, {"ovs_kernel": "kprobe"}, kernel_ovs=False)


def test_kernel_datapath_is_read_from_dpctl_show():
    def snap(name: str) -> Snapshot:
        return Snapshot("ovs", tuple(parse_dpctl_show((OVS_FIXTURES / name).read_text()).records))

    assert kernel_datapath(snap("kernel-dpctl-show-ovn.txt"))
    assert not kernel_datapath(snap("host-dpctl-show.txt"))          # netdev@ovs-netdev: userspace
    assert not kernel_datapath(None)


# --- the backends section -----------------------------------------------------------------------

def test_backend_used_names_each_hook_and_the_pin():
    ladder = {"backend": "fentry", "reason": "forecast", "signals": {"measured": ["ns per table"], "modelled": []}}
    ch = Choice("netfilter", {"nf_hook_slow": "kprobe", "ipt_do_table": "kprobe", "nft_do_chain": "counters"},
                "kprobe: nf_hook_slow=kprobe, ipt_do_table=kprobe")
    out = backend_used(ch, "kprobe", ladder)
    assert out["backend"] == "kprobe" and out["hooks"]["ipt_do_table"] == "kprobe"
    assert out["reason"].startswith("pinned with --probe-backend netfilter=kprobe; kprobe: nf_hook_slow=kprobe")
    assert out["signals"] == ladder["signals"]
    mixed = backend_used(Choice("netfilter", {"nf_hook_slow": "fentry", "ipt_do_table": "kprobe"}, "r"), None, ladder)
    assert mixed["backend"] == "fentry" and mixed["reason"] == "r" and mixed["hooks"]["ipt_do_table"] == "kprobe"
    none = backend_used(Choice("ovs_kernel", {}, "counters only (modelled): no kprobes"), None, ladder)
    assert none["backend"] == "counters" and none["signals"]["measured"] == []
    assert "ns per table" in none["signals"]["modelled"]


# --- OVS kernel datapath figures into the stage -------------------------------------------------

def fig(map_: str, fn: str | None, ifindex: int, samples: list[int], backend: str = "kprobe") -> Figure:
    key = {"netns": 4026531840, "ifindex": ifindex, **({"fn": fn} if fn else {})}
    return Figure("ovs_kernel", map_, backend if map_ == "ovs_agg" else "tracepoint", "ns", key, from_samples(samples))


def test_ovs_kernel_figures_of_the_entry_ports_only():
    figures = [
        fig("ovs_agg", "receive", 7, [3000] * 90 + [9000] * 10),
        fig("ovs_agg", "process", 7, [2000] * 190 + [8000] * 10),      # recirculation: 2 calls a packet
        fig("ovs_agg", "actions", 7, [1000] * 200),
        fig("ovs_upcall_agg", None, 7, [98] * 4),
        fig("ovs_agg", "receive", 9, [50_000] * 100),                   # replies: another port
        fig("ovs_upcall_agg", None, 9, [98] * 50),
        Figure("transit", "transit_agg", "tracepoint", "ns", {"ifindex_in": 7}, from_samples([1])),
    ]
    k = ovs_kernel_of(figures, {7})
    assert (k.visits, k.process_calls, k.upcalls, k.visit_fn, k.backend) == (100, 200, 4, "receive", "kprobe")
    assert k.visit_mean_ns == pytest.approx(3600.0) and k.process_mean_ns == pytest.approx(2300.0)
    assert k.upcall_rate == pytest.approx(0.04)
    assert k.visit_p50_ns < 4096 <= k.visit_p99_ns      # log2 buckets: 3000 in [2048, 4096), 9000 above
    assert ovs_kernel_of(figures, {5}) is None
    # without ovs_vport_receive, a visit is what process saw (said so)
    only = ovs_kernel_of([f for f in figures if f.key.get("fn") != "receive"], {7})
    assert only.visit_fn == "process" and only.visits == 200


def test_kernel_time_adds_to_the_userspace_upcall_share():
    tables = [OvsTableWork("0 (Classifier)", 4), OvsTableWork("90 (IngressRule)", 4, subtables=5)]
    st = ovs_stage(tables, 100, Calib(0.0), measured_ns=240_000.0)     # ovs-vswitchd: 2,400 ns a packet
    k = OvsKernel(visits=100, visit_mean_ns=3600.0, process_calls=200, process_mean_ns=2300.0,
                  process_p50_ns=2100.0, process_p99_ns=7900.0, visit_p50_ns=3100.0, visit_p99_ns=8800.0, upcalls=4)
    with_ovs_kernel(st, k, 100)
    assert st.ns_per_packet == pytest.approx(3600.0 + 2400.0)
    assert st.measured_ns == pytest.approx(6000.0) and st.provenance == "measured"
    assert (st.p50_ns, st.p99_ns) == (3100.0, 8800.0)
    kd = st.detail["kernel_datapath"]
    assert kd["ns_per_packet"] == pytest.approx(3600.0) and kd["process"]["p99_ns"] == 7900.0
    assert st.detail["upcalls"] == 4 and st.detail["upcall_rate"] == 0.04
    assert st.detail["userspace_ns_per_packet"] == pytest.approx(2400.0)
    # the OVS tables keep the userspace split: their sum is the upcall share, not the stage
    assert sum(c.ns_per_packet for c in st.children) == pytest.approx(2400.0)


def test_kernel_time_alone_and_per_selection_packet():
    st = ovs_stage([], 50, Calib(0.0))          # nothing from ovs-vswitchd
    k = OvsKernel(100, 1000.0, 100, 800.0, upcalls=0)
    with_ovs_kernel(st, k, 50)                  # 100 visits for 50 selection packets (e.g. both ways)
    assert st.ns_per_packet == pytest.approx(2000.0) and st.provenance == "measured"
    assert st.detail["upcall_rate"] == 0.0
    modelled = ovs_stage([OvsTableWork("0", 10)], 10, Calib(0.0, ns_per_ovs_table=100.0))
    with_ovs_kernel(modelled, OvsKernel(10, 500.0, 10, 400.0), 10)
    assert modelled.provenance == "both" and modelled.ns_per_packet == pytest.approx(600.0)


def test_kernel_time_keeps_measured_and_modelled_covering_the_same_work():
    # ovs-vswitchd measured (2,000 ns a packet) next to its calibrated model (1,000): agreement 2.0
    st = ovs_stage([OvsTableWork("0", 10)], 10, Calib(0.0, ns_per_ovs_table=50.0, ovs_upcall_ns=9_500.0),
                   measured_ns=20_000.0, upcalls=1)
    assert st.provenance == "both" and st.agreement == pytest.approx(2.0)
    with_ovs_kernel(st, OvsKernel(10, 1000.0, 10, 800.0), 10)      # + 1,000 ns a packet in the kernel
    assert st.ns_per_packet == pytest.approx(3000.0) and st.measured_ns == pytest.approx(3000.0)
    assert st.modelled_ns == pytest.approx(2000.0) and st.agreement == pytest.approx(1.5)
    assert st.detail["model"]["agreement"] == pytest.approx(2.0)     # ovs-vswitchd's own, unchanged


def test_terminal_shows_the_kernel_datapath_line():
    import io

    from rich.console import Console

    from cnitrace.attribution.tree import build_tree
    from cnitrace.reports.profile.terminal import render_profile
    from tests.unit.test_report_document import make_doc

    st = with_ovs_kernel(ovs_stage([], 100, Calib(0.0)), OvsKernel(100, 3600.0, 200, 2300.0, 2100.0, 7900.0,
                                                                    upcalls=4), 100)
    doc = make_doc()
    root = build_tree([st], None, 100)
    doc["tree"] = root.to_json()
    out = io.StringIO()
    render_profile(doc, Console(file=out, width=100))
    text = " ".join(out.getvalue().split())                 # rich wraps at 100 columns
    line = text[text.index("OVS kernel datapath"):]
    assert "3.6 µs per packet" in line and "4 upcalls (4.0 % of 100 packets)" in line and "p99 7.9 µs" in line


# --- measured netfilter figures meet the counters' tables ---------------------------------------

def nf(map_: str, key: dict, samples: list[int], backend: str = "kprobe") -> Figure:
    return Figure("netfilter", map_, backend, "ns", key, from_samples(samples))


def test_measured_tables_take_the_counters_names():
    from cnitrace.attribution.figures import table_label

    labels = {"filter (iptables-nft, ipv4)", "inet cnit (nft)"}
    assert table_label({"kind": "iptables", "table": "filter"}, set()) == "filter (iptables-legacy, ipv4)"
    assert table_label({"kind": "ip6tables", "table": "filter"}, set()) == "filter (iptables-legacy, ipv6)"
    assert table_label({"kind": "nftables", "table": "filter", "chain": "FORWARD"}, labels) == \
        "filter (iptables-nft, ipv4)"
    assert table_label({"kind": "nftables", "table": "cnit", "chain": "fwd"}, labels) == "inet cnit (nft)"
    assert table_label({"kind": "nftables", "table": "other"}, labels) == "other (nft)"


def test_measured_table_joins_its_chains_and_hooks_are_reported():
    from cnitrace.attribution.tree import ChainWork, netfilter_stage
    from cnitrace.attribution.figures import netfilter_hooks_of, netfilter_tables_of

    fwd = {"netns": 1, "kind": "iptables", "hook": "FORWARD", "table": "filter", "chain": ""}
    figures = [nf("nf_table_agg", {**fwd, "verdict": "ACCEPT"}, [4000] * 30),
               nf("nf_table_agg", {**fwd, "verdict": "DROP"}, [6000] * 20),
               nf("nf_table_agg", {**fwd, "kind": "ip6tables", "verdict": "ACCEPT"}, [100] * 3),
               nf("nf_hook_agg", {"netns": 1, "pf": "ipv4", "hook": "FORWARD", "verdict": "ACCEPT"},
                  [5000] * 30, "fentry"),
               nf("nf_hook_agg", {"netns": 1, "pf": "ipv4", "hook": "FORWARD", "verdict": "DROP"},
                  [7000] * 20, "fentry")]
    work = [ChainWork("filter (iptables-legacy, ipv4)", "FORWARD", 50, 100),
            ChainWork("filter (iptables-legacy, ipv4)", "cali-pi-x", 50, 5000)]
    tables = {t.table: t for t in netfilter_tables_of(figures, {w.table for w in work})}
    assert tables["filter (iptables-legacy, ipv4)"].calls == 50          # verdicts merged, IPv6 apart
    assert tables["filter (iptables-legacy, ipv6)"].calls == 3
    st = netfilter_stage(work, 50, Calib(0.0), measured=list(tables.values()))
    t4 = st.find("table", "filter (iptables-legacy, ipv4)")
    assert t4.measured_ns == pytest.approx(4800.0) and t4.detail["calls"] == 50
    assert {c.name for c in t4.children} == {"FORWARD", "cali-pi-x"}     # one node, not two
    hooks = netfilter_hooks_of(figures)
    assert hooks["ipv4 FORWARD"]["calls"] == 50 and hooks["ipv4 FORWARD"]["backend"] == "fentry"
    assert hooks["ipv4 FORWARD"]["mean_ns"] == pytest.approx(5800.0)

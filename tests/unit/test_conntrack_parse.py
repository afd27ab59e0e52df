"""conntrack parsers: procfs (hex, kernel-specific header) and `conntrack -S`, captured on this host."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings, strategies as st

from cnitrace.collectors.conntrack import parse as p
from cnitrace.collectors.conntrack.source import ConntrackCollector
from cnitrace.core.runner import Completed, RecordedRunner

FIX = Path(__file__).parent.parent / "fixtures" / "conntrack"

# The header kernels 5.x print (nf_conntrack_standalone.c ct_cpu_seq_show: 'delete_list' where 6.x
# prints 'chainlength'); the row values are constructed for this test, not captured.
OLD_KERNEL = """entries  clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000004a  00000000 00000000 00000000 00000005 00000e2b 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000002
0000004a  00000000 00000000 00000000 00000000 00000d0e 00000000 00000000 00000000 00000003 00000001 00000000 00000000  00000000 00000000 00000000 00000000
"""


def test_procfs_normalises_names_and_reads_entries():
    parsed, entries = p.parse_proc_stat((FIX / "host-proc-stat.txt").read_text(), "ns1")
    assert parsed.warnings == ()
    assert entries == 20
    assert [s.cpu for s in parsed.records] == [0, 1]
    assert parsed.records[1].values["invalid"] == 30
    assert "clash_resolve" in parsed.records[0].values and "clashres" not in parsed.records[0].values
    assert "error" in parsed.records[0].values  # icmp_error -> conntrack -S's name


def test_conntrack_S_matches_procfs():
    tool = p.parse_conntrack_S((FIX / "host-conntrack-S.txt").read_text(), "ns1")
    proc, _ = p.parse_proc_stat((FIX / "host-proc-stat.txt").read_text(), "ns1")
    assert tool.warnings == ()
    t, q = p.totals(tool.records), p.totals(proc.records)
    for k in ("invalid", "insert", "insert_failed", "drop", "early_drop", "error", "search_restart",
              "clash_resolve", "chaintoolong"):
        assert t[k] == q[k], k
    assert t["invalid"] == 30


def test_old_kernel_header():
    parsed, entries = p.parse_proc_stat(OLD_KERNEL)
    assert entries == 0x4a
    assert p.totals(parsed.records)["insert_failed"] == 3
    assert p.totals(parsed.records)["search_restart"] == 2
    assert p.totals(parsed.records)["ignore"] == 0xe2b + 0xd0e


def test_truncated_row_warns():
    text = (FIX / "host-proc-stat.txt").read_text()
    parsed, _ = p.parse_proc_stat(text[: len(text) - 30])
    assert len(parsed.records) == 2 and parsed.warnings


def test_table_usage_pressure():
    u = p.TableUsage("", 131072, 262144)
    assert u.pressure == 0.5 and u.counters == {}


def test_collector_reads_each_namespace_through_the_runner():
    stat = (FIX / "host-proc-stat.txt").read_text().split("\n", 1)[1]
    tool = (FIX / "host-conntrack-S.txt").read_text().split("\n", 1)[1]
    ns = ("ip", "netns", "exec", "cnit-a")
    runner = RecordedRunner({
        (*ns, "cat", "/proc/net/stat/nf_conntrack"): stat,
        (*ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"): "20\n",
        (*ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_max"): "262144\n",
        (*ns, "conntrack", "-S"): tool,
    })
    snap = ConntrackCollector(["cnit-a"], runner).snapshot()
    usage = [r for r in snap.records if isinstance(r, p.TableUsage)]
    assert [(u.netns, u.count, u.max) for u in usage] == [("cnit-a", 20, 262144)]
    assert {r.source for r in snap.records if isinstance(r, p.CpuStats)} == {"procfs", "conntrack -S"}
    assert snap.warnings == ()


def test_collector_without_conntrack_tool_uses_procfs_only():
    stat = (FIX / "host-proc-stat.txt").read_text().split("\n", 1)[1]
    runner = RecordedRunner({
        ("cat", "/proc/net/stat/nf_conntrack"): stat,
        ("cat", "/proc/sys/net/netfilter/nf_conntrack_count"): Completed(("cat",), 1, "", "no such file"),
        ("cat", "/proc/sys/net/netfilter/nf_conntrack_max"): "65536\n",
    }, tools=["cat"])
    c = ConntrackCollector([""], runner)
    assert c.available().reason == "procfs only (conntrack-tools not installed)"
    snap = c.snapshot()
    usage = [r for r in snap.records if isinstance(r, p.TableUsage)][0]
    assert (usage.count, usage.max) == (20, 65536)  # count falls back to the procfs 'entries' column


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_parsers(s):
    p.parse_proc_stat(s)
    p.parse_conntrack_S(s)
    p.parse_int_file(s)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=17, max_size=17))
def test_fuzz_procfs_values_roundtrip(vals):
    header = OLD_KERNEL.splitlines()[0]
    row = "  ".join(f"{v:08x}" for v in vals)
    parsed, entries = p.parse_proc_stat(f"{header}\n{row}\n")
    assert entries == vals[0]
    assert sum(parsed.records[0].values.values()) == sum(vals[1:])

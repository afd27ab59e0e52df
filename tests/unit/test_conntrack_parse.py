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


# --- real dumps of other versions and pastes (issue #13) ---------------------------------------

def fx(name: str) -> str:
    text = (FIX / name).read_text()
    assert text.startswith("# provenance:")
    return text


def test_null_fields_of_an_older_tool_are_all_kept():
    """conntrack-tools 1.4.2 on a 6.x kernel prints two '(null)=N' per CPU; keeping only the last
    (what a dict by name does) loses one. Both stay, in order, and the named counters equal what
    conntrack 1.4.7 printed at the same instant."""
    old = p.parse_conntrack_S(fx("host-conntrack-S-null.txt"), "ns")
    new = p.parse_conntrack_S(fx("host-conntrack-S-named.txt"), "ns")
    assert [s.extra for s in old.records] == [{"unknown_1": 0, "unknown_2": 0}] * 2
    assert len(old.warnings) == 1 and "2 unnamed field(s)" in old.warnings[0]
    assert new.warnings == () and all(s.extra == {} for s in new.records)
    named = {k: v for k, v in p.totals(new.records).items() if k not in ("clash_resolve", "chaintoolong")}
    assert p.totals(old.records) == named and named["invalid"] == 14 and named["error"] == 2
    # the same line with distinct values: each unnamed value lands in its own slot
    line = fx("host-conntrack-S-null.txt").splitlines()[1].replace("(null)=0 (null)=0", "(null)=5 (null)=9")
    (s,) = p.parse_conntrack_S(line).records
    assert s.extra == {"unknown_1": 5, "unknown_2": 9} and s.values["invalid"] == 14
    assert s.counters == s.values  # unnamed values are reported, not differenced


def test_unknownN_and_repeated_names_keep_every_value():
    line = fx("host-conntrack-S-named.txt").splitlines()[1]
    line = line.replace("clash_resolve=0", "unknown1=3").replace("chaintoolong=0", "invalid=8")
    (s,) = p.parse_conntrack_S(line).records
    assert s.extra == {"unknown_1": 3, "invalid_2": 8} and s.values["invalid"] == 14


def test_proc_fallback_of_an_old_tool_is_cpu0_with_entries():
    r = p.parse_conntrack_S(fx("host-conntrack-S-proc-fallback.txt"), "ns")
    (s,) = r.records
    assert (s.cpu, s.extra) == (0, {"entries": 6})
    assert s.values["invalid"] == 14 and s.values["error"] == 2  # icmp_error -> error, as procfs
    assert "clash_resolve" in s.values and "chaintoolong" in s.values
    assert len(r.warnings) == 1 and "CPU 0" in r.warnings[0]


def test_expect_stats():
    r = p.parse_conntrack_S(fx("host-conntrack-S-expect.txt"))
    assert r.warnings == () and [set(s.values) for s in r.records] == [{"expect_new", "expect_create", "expect_delete"}] * 2


def test_pasted_stats_in_fences_tables_and_prompts():
    nft = p.parse_conntrack_S(fx("google-nftables-138-conntrack-S.txt"))
    assert [s.cpu for s in nft.records] == [0, 1, 2, 3]
    assert (p.totals(nft.records)["invalid"], p.totals(nft.records)["search_restart"]) == (112, 1)
    assert len(nft.warnings) == 1 and "conntrack -S always" in nft.warnings[0]  # the prose line, reported
    vyos = p.parse_conntrack_S(fx("vyos-1x-1489-conntrack-statistics.txt"))
    assert vyos.warnings == () and len(vyos.records) == 4
    assert p.totals(vyos.records)["search_restart"] == 48


def test_conntrack_L_tuples_nat_mark_zone_and_accounting():
    r = p.parse_conntrack_L(fx("host-conntrack-L.txt"), "ns1")
    assert r.warnings == () and len(r.records) == 6
    dnat = [c for c in r.records if c.orig.dport == 80][0]
    assert (dnat.state, dnat.timeout, dnat.assured) == ("ESTABLISHED", 431999, True)
    assert (dnat.reply.src, dnat.reply.sport) == ("127.0.0.1", 8080)  # the backend it was DNATed to
    assert dnat.counters == {"orig_packets": 3, "orig_bytes": 165, "reply_packets": 2, "reply_bytes": 112}
    marked = [c for c in r.records if c.orig.dport == 9999][0]
    assert (marked.proto, marked.state, marked.mark, marked.unreplied) == ("udp", None, 42, False)
    v6 = [c for c in r.records if c.orig.src == "::1"][0]
    assert (v6.zone, v6.unreplied, v6.reply.packets) == (7, True, 0)
    icmp = [c for c in r.records if c.proto == "icmp"][0]
    assert icmp.orig.other == {"type": "8", "code": "0", "id": "77"} and icmp.orig.sport is None
    s = p.summarize(r.records)
    assert (s.total, s.by_proto, s.assured, s.unreplied) == (6, {"icmp": 1, "tcp": 3, "udp": 2}, 3, 1)
    assert s.by_state["tcp/ESTABLISHED"] == 2 and s.by_state["tcp/TIME_WAIT"] == 1
    ext = p.parse_conntrack_L(fx("host-conntrack-L-extended.txt"), "ns1")
    assert ext.warnings == () and {c.family for c in ext.records} == {"ipv4", "ipv6"}
    assert {c.key: c.counters for c in ext.records} == {c.key: c.counters for c in r.records}


def test_conntrack_L_pastes_from_issues_and_the_kernel():
    aks = p.parse_conntrack_L(fx("aks-engine-1912-conntrack-L.txt"))
    assert [c.proto for c in aks.records] == ["tcp"] * 5  # 'cp  6' lost its first letter
    # a grep of the table: conntrack's summary counted 364, the paste lists 5, and says so
    assert len(aks.warnings) == 2 and "protocol number" in aks.warnings[0], aks.warnings
    assert "says 364 flow entries were shown; this paste lists 5" in aks.warnings[1]
    nl = p.parse_conntrack_L(fx("netlink-876-conntrack-L.txt"))
    assert nl.warnings == () and p.summarize(nl.records).by_state == {"tcp/ESTABLISHED": 2, "tcp/CLOSE_WAIT": 1}
    (off,) = p.parse_conntrack_L(fx("kernel-offload-proc-nf_conntrack.txt")).records
    assert (off.timeout, off.state, off.flags, off.zone, off.use) == (None, None, ("OFFLOAD",), 0, 2)
    assert p.summarize([off]).offloaded == 1 and off.reply.dst == "192.168.2.195"


def test_conntrack_L_crlf_prompt_and_truncation():
    body = fx("host-conntrack-L.txt").split("\n", 1)[1]
    lines = body.splitlines()
    pasted = "```\r\n$ sudo conntrack -L\r\n" + "\r\n".join(lines[:2] + [lines[2][:100] + " ..."]) + "\r\n```\r\n"
    r = p.parse_conntrack_L(pasted)
    assert len(r.records) == 3 and r.records[2].reply is None and r.records[2].extra["truncated"] == "1"
    assert len(r.warnings) == 1 and "truncated" in r.warnings[0]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_table_parser(s):
    r = p.parse_conntrack_L(s)
    assert len(r.warnings) <= 51
    p.summarize(r.records)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["host-conntrack-L-extended.txt", "host-conntrack-S-null.txt", "aks-engine-1912-conntrack-L.txt",
                        "host-conntrack-S-proc-fallback.txt"]),
       st.integers(0, 2000), st.text(alphabet="=[]()0123456789 \t\r\nabcsrdpt.:-", max_size=40))
def test_fuzz_mutated_real_dumps(name, cut, junk):
    text = fx(name)
    mutated = text[:cut] + junk + text[cut:]
    for fn in (p.parse_conntrack_L, p.parse_conntrack_S):
        r = fn(mutated)
        assert len(r.warnings) <= 51

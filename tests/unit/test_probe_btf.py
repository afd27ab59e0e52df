"""BTF parsing against a real dump excerpt of the CI kernel; drop names cross-checked with tracefs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnitrace.probes import btf
from cnitrace.probes.btf_enums import drop_reasons, not_a_drop, reason_name

FIX = Path(__file__).parent.parent / "fixtures" / "probes"


@pytest.fixture(scope="module")
def dump() -> btf.Btf:
    return btf.parse((FIX / "btf-vmlinux-6.18-excerpt.txt").read_text())


@pytest.mark.parametrize("struct,path,offset", [
    ("sk_buff", "dev", 16),            # inside two anonymous unions/structs at the top of sk_buff
    ("sk_buff", "len", 112),
    ("sk_buff", "mark", 164),          # inside an anonymous union
    ("sk_buff", "protocol", 176),      # inside the `headers` struct_group (anonymous)
    ("sk_buff", "data", 200),
    ("net_device", "ifindex", 224),
    ("net_device", "nd_net.net", 264),  # possible_net_t is a typedef of an anonymous struct
    ("net", "ns.inum", 176),
    ("ns_common", "inum", 24),
])
def test_field_offsets(dump, struct, path, offset):
    assert dump.offset(struct, path) == offset


def test_unknown_field_and_bitfield_are_errors(dump):
    with pytest.raises(btf.BtfError, match="no field 'nope'"):
        dump.offset("sk_buff", "nope")
    with pytest.raises(btf.BtfError, match="bitfield"):
        dump.offset("sk_buff", "cloned")
    with pytest.raises(btf.BtfError, match="no STRUCT 'tcp_sock'"):
        dump.offset("tcp_sock", "bytes_acked")   # not in the excerpt: a clear error, not a crash


def _tracefs_names() -> dict[int, str]:
    text = (FIX / "tracefs-kfree_skb-format-6.18.txt").read_text()
    return {int(v): n for v, n in re.findall(r'\{ (\d+), "(\w+)" \}', text)}


def test_drop_reason_names_match_what_the_tracepoint_prints(dump):
    reasons = drop_reasons(dump)
    printed = _tracefs_names()
    assert len(printed) == 127
    assert {v: reasons[v] for v in printed} == printed   # every value, same name as the kernel prints
    assert reasons[12] == "NETFILTER_DROP" and reason_name(reasons, 3) == "NO_SOCKET"
    assert reason_name(reasons, 9999) == "UNKNOWN_9999"
    assert not_a_drop(dump) == (0, 1)                    # NOT_DROPPED_YET, CONSUMED


def test_malformed_dump_gives_partial_result_and_problems():
    text = (FIX / "btf-vmlinux-6.18-excerpt.txt").read_text().splitlines()
    cut = next(i for i, l in enumerate(text) if l.startswith("[") and "'sk_buff'" in l)
    broken = text[:cut] + ["[garbage", "stray text"] + text[cut:]
    d = btf.parse(broken)
    assert any("unreadable type header" in p for p in d.problems)
    assert any("unexpected text" in p for p in d.problems)
    assert d.offset("sk_buff", "dev") == 16           # the rest still parses
    assert btf.parse("").problems == ("no BTF types found",)


def test_module_views_keep_overlapping_split_ids_apart(dump):
    """Two modules' split BTF both number their types from vmlinux's count + 1 (records made up
    in the dump's format on top of the real excerpt: the point is the id overlap)."""
    first = max(dump._starts) + 1
    mod_a = f"[{first}] STRUCT 'xt_table' size=64 vlen=1\n\t'name' type_id=9 bits_offset=256\n"
    mod_b = f"[{first}] STRUCT 'nft_chain' size=40 vlen=1\n\t'name' type_id=9 bits_offset=192\n"
    s = btf.BtfSet(dump, {"x_tables": btf.parse_split(dump, mod_a), "nf_tables": btf.parse_split(dump, mod_b)})
    assert s.offset("xt_table", "name") == 32 and s.offset("nft_chain", "name") == 24
    assert s.offset("sk_buff", "dev") == 16                     # vmlinux types still resolve
    assert s.enum("skb_drop_reason")["SKB_DROP_REASON_NETFILTER_DROP"] == 12
    with pytest.raises(btf.BtfError):
        s.offset("nft_table", "name")

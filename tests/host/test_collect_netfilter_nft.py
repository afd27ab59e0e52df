"""nftables collector on the real kernel: native nft chain of N = 100 and 1,000 rules with a set lookup,
crafted UDP over a veth pair, exact deltas and evaluations per packet (the set lookup counts once)."""

from __future__ import annotations

import subprocess
import time

import pytest

from cnitrace.collectors.nftables.graph import costs_by_table
from cnitrace.collectors.nftables.parse import NftRule, NftSet
from cnitrace.collectors.nftables.source import NftablesCollector, records_delta
from tests.host.test_collect_netfilter import BASE_PORT, M_HIT, M_MISS, MISS_PORT, send_udp, veth_pair

SET_SIZE = 1000


def program(ns: str, table: str, n: int) -> None:
    """Rule 1 of chain c looks the source up in a 1,000-element set; rules 2..n drop distinct ports."""
    elements = ", ".join(f"10.99.{i // 250}.{i % 250 + 1}" for i in range(SET_SIZE))
    lines = [f"table ip {table} {{",
             f"  set blocked {{ type ipv4_addr; elements = {{ {elements} }}; }}",
             "  chain c {",
             "    ip saddr @blocked counter drop"]
    lines += [f"    udp dport {BASE_PORT + i} counter drop" for i in range(1, n)]
    lines += ["  }",
              "  chain input { type filter hook input priority 0; policy accept;",
              "    counter",
              f"    udp dport {BASE_PORT}-{MISS_PORT} counter jump c",
              "  }",
              "}", ""]
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input="\n".join(lines), check=True, text=True,
                   timeout=60)


def rule(records, chain: str, position: int) -> NftRule:
    return next(r for r in records if isinstance(r, NftRule) and r.chain == chain and r.position == position)


@pytest.mark.parametrize("n", [100, 1000])
def test_nft_deltas_and_evaluations_per_packet_are_exact(netns, unique_name, n):
    a, b = veth_pair(netns)
    table = unique_name()
    program(b, table, n)
    send_udp(a, BASE_PORT - 1, 1)   # resolve ARP before measuring
    time.sleep(0.2)
    col = NftablesCollector(netns=b)
    assert col.available(None)
    k = (3 * n) // 4 + 1            # rule k drops port BASE_PORT + k - 1
    before = col.snapshot()
    send_udp(a, BASE_PORT + k - 1, M_HIT)
    send_udp(a, MISS_PORT, M_MISS)
    deadline = time.monotonic() + 5
    while True:
        after = col.snapshot()
        recs, warnings = records_delta(before, after)
        if rule(recs, "input", 2).packets >= M_HIT + M_MISS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert before.warnings == () and after.warnings == () and warnings == ()

    assert rule(recs, "input", 1).packets == M_HIT + M_MISS
    assert rule(recs, "input", 2).packets == M_HIT + M_MISS
    assert rule(recs, "c", k).packets == M_HIT
    assert sum(r.packets for r in recs if isinstance(r, NftRule) and r.chain == "c") == M_HIT
    blocked = next(s for s in recs if isinstance(s, NftSet) and s.table == table)
    assert (blocked.name, blocked.size) == ("blocked", SET_SIZE)
    assert rule(recs, "c", 1).lookups == ("blocked",)

    costs, _ = costs_by_table(recs)
    c = costs[("ip", table, "c")]
    assert c.entering == M_HIT + M_MISS
    assert c.evaluations == M_HIT * k + M_MISS * n
    assert c.per_packet == pytest.approx((M_HIT * k + M_MISS * n) / (M_HIT + M_MISS), rel=0, abs=1e-9)
    assert c.fall_through == M_MISS
    inp = costs[("ip", table, "input")]
    assert inp.entering == M_HIT + M_MISS and inp.per_packet == 2.0

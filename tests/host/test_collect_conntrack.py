"""conntrack collector in a throwaway namespace: count and per-CPU stats move by exactly what we sent."""

from __future__ import annotations

import subprocess

from cnitrace.collectors.base import delta
from cnitrace.collectors.conntrack.parse import CpuStats, TableUsage, totals
from cnitrace.collectors.conntrack.source import ConntrackCollector


def _in(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, timeout=30)


def _track_new(ns: str) -> None:
    """An nft 'ct state' rule in our own namespace makes conntrack track its traffic."""
    _in(ns, "nft", "add", "table", "inet", "cnitct")
    _in(ns, "nft", "add", "chain", "inet", "cnitct", "out", "{ type filter hook output priority 0; }")
    _in(ns, "nft", "add", "rule", "inet", "cnitct", "out", "ct", "state", "new", "counter")


SEND = """
import socket, struct, sys
bad, flows = int(sys.argv[1]), int(sys.argv[2])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for i in range(bad):  # SYN+FIN: an invalid TCP flag combination for conntrack
    raw.sendto(struct.pack('!HHIIBBHHH', 40000 + i, 80, 1, 0, 5 << 4, 0x03, 1024, 0, 0), ('127.0.0.1', 0))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(flows):  # one new UDP connection per destination port
    udp.sendto(b'x', ('127.0.0.1', 20000 + i))
"""


def test_conntrack_count_and_invalid_delta(netns):
    ns = netns()
    _track_new(ns)
    col = ConntrackCollector([ns])
    assert col.available()
    before = col.snapshot()
    bad, flows = 15, 23
    _in(ns, "python3", "-c", SEND, str(bad), str(flows))
    after = col.snapshot()
    usage = [r for r in after.records if isinstance(r, TableUsage)]
    assert usage[0].count == flows and usage[0].max and usage[0].max > flows
    d = delta(before, after)
    for source in ("procfs", "conntrack -S"):
        keys = [r.key for r in after.records if isinstance(r, CpuStats) and r.source == source]
        assert keys, source
        invalid = sum(d.get(k, "invalid") for k in keys)
        # loopback: each packet passes conntrack twice (OUTPUT, then PREROUTING on lo)
        assert invalid == 2 * bad, (source, invalid)
        assert sum(d.get(k, "drop") + d.get(k, "insert_failed") for k in keys) == 0
    proc = totals([r for r in after.records if isinstance(r, CpuStats) and r.source == "procfs"])
    tool = totals([r for r in after.records if isinstance(r, CpuStats) and r.source == "conntrack -S"])
    for k in ("invalid", "drop", "early_drop", "insert_failed", "search_restart"):
        assert proc[k] == tool[k], k
    assert not after.warnings

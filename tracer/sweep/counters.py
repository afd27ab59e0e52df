"""Reading a lab's ground-truth counters of any kind (iptables, nft, OVS flow, BPF map entry), and
the per-point system readings the sweep records: conntrack statistics and daemon memory.

The netfilter kinds reuse the lab's own reader; OVS flows are read by cookie after a revalidator
round (the userspace datapath pushes stats lazily); BPF map entries with bpftool from the pin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cnitrace.core.errors import ToolError
from cnitrace.lab.datapath import read_packets
from cnitrace.core.runner import Runner
from cnitrace.sweep.model import parse_vmrss_kib
from cnitrace.collectors.conntrack.parse import parse_proc_stat
from cnitrace.collectors.conntrack.parse import totals
from cnitrace.collectors.ovs.parse import parse_dump_flows
from cnitrace.lab.datapaths import cilium_maps as cm
from cnitrace.lab.datapaths.cilium import read_policy_entry

if TYPE_CHECKING:
    from cnitrace.lab.manager import Lab
    from cnitrace.lab.model import CounterRef


def read_counter(runner: Runner, lab: "Lab", ref: "CounterRef") -> int:
    """Current packet count at `ref`; ToolError with one line if it cannot be read."""
    if ref.kind in ("iptables", "nft"):
        return read_packets(runner, ref)
    if ref.kind == "ovs":
        return _ovs_packets(runner, lab, ref)
    if ref.kind == "bpf-map":
        return _bpf_packets(runner, ref)
    raise ToolError(f"cannot read a {ref.kind} counter")


def _ovs_packets(runner: Runner, lab: "Lab", ref: "CounterRef") -> int:

    extra = lab.topo.extra
    for _ in range(2):   # push datapath (megaflow) stats into the OpenFlow counters
        runner.run(["ovs-appctl", "-t", extra["ovs_ctl"], "revalidator/wait"], timeout=10)
    out = runner.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-names", "dump-flows", extra["ovs_mgmt"],
                      f"cookie=0x{int(ref.cookie or 0):x}/-1"]).stdout
    parsed = parse_dump_flows(out)
    if not parsed.records:
        raise ToolError(f"no OVS flow with cookie 0x{int(ref.cookie or 0):x}")
    return sum(f.n_packets for f in parsed.records)


def _bpf_packets(runner: Runner, ref: "CounterRef") -> int:
    key = dict(ref.key or {})
    if "identity" in key:

        pk = cm.PolicyKey(key["identity"], key["dport"], key["proto"],
                          cm.INGRESS if key.get("direction", "ingress") == "ingress" else cm.EGRESS)
        entry = read_policy_entry(runner, ref.table, pk)
        if entry is None:
            raise ToolError(f"no policy entry {pk} in {ref.table}")
        return entry.packets
    index = int(key.get("index", 0))
    hexkey = [f"0x{b:02x}" for b in index.to_bytes(4, "little")]
    out = runner.run(["bpftool", "-j", "map", "lookup", "pinned", ref.table, "key", *hexkey])
    value = bytes(int(x, 16) for x in json.loads(out.stdout)["value"])
    return int.from_bytes(value[:8], "little")


def conntrack_totals(runner: Runner, netns: str) -> dict[str, int]:
    """Summed per-CPU conntrack statistics of one namespace (plus 'entries' in use)."""

    out = runner.run(["cat", "/proc/net/stat/nf_conntrack"], netns=netns, check=False)
    if not out.ok:
        return {}
    parsed, entries = parse_proc_stat(out.stdout, netns)
    t = totals(parsed.records)
    if entries is not None:
        t["entries"] = entries
    return t


def daemon_rss_kib(runner: Runner, netns: str) -> tuple[int, list[str]]:
    """Resident memory of every process in `netns` (the datapath's daemons, the L7 proxy)."""
    pids = runner.run(["ip", "netns", "pids", netns], check=False).stdout.split()
    total, names = 0, []
    for pid in pids:
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += parse_vmrss_kib(status)
        names.append(next((l.split()[1] for l in status.splitlines() if l.startswith("Name:")), pid))
    return total, sorted(set(names))


def proc_stat() -> str:
    return Path("/proc/stat").read_text()


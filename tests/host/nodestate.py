"""A comparable picture of everything on the node that cnitrace could touch.

Used by tests to assert that a run leaves the node exactly as it found it: both
iptables backends, nftables, OVS bridges and flows, tc filters, BPF programs and
pins, network namespaces and the sysctls cnitrace may change.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cnitrace.core.state import StateFile

SYSCTLS = ("kernel.bpf_stats_enabled", "net.ipv4.ip_forward", "net.netfilter.nf_conntrack_max",
           "net.core.bpf_jit_enable")


def _out(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return f"<{argv[0]} missing>"
    return p.stdout if p.returncode == 0 else f"<rc={p.returncode}>"


def _strip_counters(text: str) -> str:
    # Counters and timestamps move with unrelated traffic; structure is what must not change.
    text = re.sub(r"^#.*$", "", text, flags=re.M)
    return re.sub(r"\[\d+:\d+\]", "[]", text)


def _pins(root: Path = Path("/sys/fs/bpf")) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(out)


def node_state() -> dict[str, object]:
    links = _out(["ip", "-o", "link", "show"])
    ifaces = [l.split(":")[1].strip().split("@")[0] for l in links.splitlines() if ":" in l]
    tc = {i: _out(["tc", "filter", "show", "dev", i, "ingress"]) + _out(["tc", "filter", "show", "dev", i, "egress"])
          for i in ifaces}
    ovs = _out(["ovs-vsctl", "--timeout=2", "show"]) if Path("/run/openvswitch/db.sock").exists() else "<no ovsdb>"
    return {
        "iptables-legacy": _strip_counters(_out(["iptables-legacy-save"])),
        "ip6tables-legacy": _strip_counters(_out(["ip6tables-legacy-save"])),
        "iptables-nft": _strip_counters(_out(["iptables-nft-save"])),
        "ip6tables-nft": _strip_counters(_out(["ip6tables-nft-save"])),
        "nft": _out(["nft", "list", "ruleset"]),
        "links": sorted(ifaces),
        "tc": tc,
        "ovs": ovs,
        "bpf-progs": sorted(re.findall(r"^(\d+): ", _out(["bpftool", "prog", "list"]), flags=re.M)),
        "bpf-pins": _pins(),
        "netns": sorted(_out(["ip", "netns", "list"]).split()),
        "sysctl": {s: _out(["sysctl", "-n", s]).strip() for s in SYSCTLS},
        "state-file": sorted((r.kind, r.name) for r in StateFile().live()),
    }

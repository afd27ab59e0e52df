"""The Datapath interface: how a CNI's policy datapath plugs into the lab.

How a datapath plugs in:

1. Write a module in cnitrace.lab.datapaths (tracer/lab/datapaths/<name>.py) with a subclass
   of Datapath. Set `name`, the executables it needs (`tools`), the capability
   checks it needs (`caps`, names from cnitrace.core.capability), whether pods are routed /32
   (`routed`) or bridged (`bridge`, and `subnet` if the CNI's IPAM differs), and `supports_l7`.
2. `node_iface_name(lab, index)` names the node-side veth the way the CNI does (cali<11hex>,
   veth<hash>, lxc<hash>); the lab manager plans the Topology with it (pure, see topology.py).
3. `build(session, topo, spec)` runs inside `lab up` after the manager has created the node and
   pod namespaces and the veth pairs (node side already moved into the node netns, pod side
   named eth0 in the pod netns, both down and unaddressed). It addresses and routes the pods
   (topology.plumb_routed / plumb_bridge help), programs the policy in bulk, and returns the
   Topology with anything it learnt (ifindexes, ofports, `extra`). Every object it creates
   outside the lab namespaces (bridges on the host, bpffs pins, processes) must be recorded
   with `session.track(...)` BEFORE it is created; objects inside the lab namespaces die with
   them.
4. `ground_truth(topo, spec)` is pure: it says where an allowed and a denied NEW packet are
   counted and how many policy rules an allowed packet is matched against.
5. Optionally `l7(session, topo, spec)` detours allowed HTTP through a real proxy (see l7proxy).
6. Add the class to DATAPATHS in cnitrace.lab.datapaths.registry (the one explicit registry).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, ClassVar

from cnitrace.core.errors import UsageError
from cnitrace.lab.model import GroundTruth, LabSpec, Topology
from cnitrace.core.errors import ToolError

if TYPE_CHECKING:
    from cnitrace.core.session import Session


class Datapath:
    """Base class; subclasses override what differs. Instances are stateless."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tools: ClassVar[tuple[str, ...]] = ()      # executables that must be on PATH
    caps: ClassVar[tuple[str, ...]] = ()       # cnitrace.core.capability check names
    routed: ClassVar[bool] = True              # /32 pods + 169.254.1.1 gateway; False: /24 on a bridge
    bridge: ClassVar[str] = ""                 # node-side bridge name when bridged
    subnet: ClassVar[str] = ""                 # pod /24 ("" = topology's routed/bridged default)
    supports_l7: ClassVar[bool] = False
    policy_stage: ClassVar[str] = "netfilter"   # the profile stage whose cost grows with the policy
    backends: ClassVar[tuple[str, ...]] = ()   # accepted --backend values; () = the option is ignored

    def node_iface_name(self, lab: str, index: int) -> str:
        """Node-side veth name for pod `index` of `lab` (at most 15 characters)."""
        raise NotImplementedError

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        raise NotImplementedError

    def ground_truth(self, topo: Topology, spec: LabSpec) -> GroundTruth:
        raise NotImplementedError

    def l7(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        raise UsageError(f"--l7 is not supported by the {self.name} datapath")




# --- bulk programming helpers shared by the netfilter datapaths (I/O, inside the node netns) ------

IPTABLES_TOOLS = {"legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
                  "nft": ("iptables-nft-restore", "iptables-nft-save")}


def iptables_restore(runner, netns: str, backend: str, text: str) -> None:
    """Program a whole generated ruleset in one transaction (--noflush keeps other tables)."""
    restore = IPTABLES_TOOLS[backend][0]
    runner.run([restore, "--noflush"], input=text, netns=netns, timeout=120)


def program_iptables(runner, netns: str, backend: str, ipsets: str, rules: str) -> float:
    """Load a datapath's ipsets, then its iptables rules; returns the seconds it took (the benchmark)."""
    t0 = time.monotonic()
    ipset_restore(runner, netns, ipsets)
    iptables_restore(runner, netns, backend, rules)
    return time.monotonic() - t0


def iptables_save(runner, netns: str, backend: str, table: str = "filter") -> str:
    """`iptables-save -c` of one table, with packet/byte counters."""
    return runner.run([IPTABLES_TOOLS[backend][1], "-c", "-t", table], netns=netns).stdout


def ipset_restore(runner, netns: str, text: str) -> None:
    """Create and fill ipsets in one call; ipsets are per network namespace, so they die with it."""
    runner.run(["ipset", "restore"], input=text, netns=netns)


def nft_apply(runner, netns: str, text: str) -> None:
    """Load a generated nftables file atomically (`nft -f -`)."""
    runner.run(["nft", "-f", "-"], input=text, netns=netns, timeout=120)


# --- reading a ground-truth counter (pure parsers + one I/O function) ------------------------------

def iptables_rule_packets(save_text: str, chain: str, index: int) -> int | None:
    """Packets of the `index`-th (1-based) rule of `chain` in `iptables-save -c` output; None if absent."""
    n = 0
    needle = f" -A {chain} "
    for line in save_text.splitlines():
        if line.startswith("[") and needle in line:
            n += 1
            if n == index:
                return int(line[1:line.index(":")])
    return None


def nft_rule_packets(json_text: str, chain: str, *, handle: int | None = None, index: int = 0) -> int | None:
    """Packets of the counter in one rule of `nft -j -a list ...` output, by handle (or 1-based index)."""

    n = 0
    for obj in json.loads(json_text).get("nftables", []):
        rule = obj.get("rule")
        if not rule or rule.get("chain") != chain:
            continue
        n += 1
        if (handle is not None and rule.get("handle") == handle) or (handle is None and n == index):
            for expr in rule.get("expr", []):
                if isinstance(expr, dict) and "counter" in expr:
                    return int(expr["counter"]["packets"])
            return None
    return None


def read_packets(runner, ref) -> int:
    """Current packet count at a CounterRef of kind iptables or nft (other kinds: their datapath)."""

    if ref.kind == "iptables":
        got = iptables_rule_packets(iptables_save(runner, ref.netns, ref.backend, ref.table), ref.chain, ref.index)
    elif ref.kind == "nft":
        family, table = ref.table.split()
        out = runner.run(["nft", "-j", "-a", "list", "chain", family, table, ref.chain], netns=ref.netns).stdout
        got = nft_rule_packets(out, ref.chain, handle=ref.handle, index=ref.index)
    else:
        raise ToolError(f"cannot read a {ref.kind} counter here")
    if got is None:
        raise ToolError(f"no counter at {ref.kind} {ref.table} {ref.chain} #{ref.index or ref.handle}")
    return got

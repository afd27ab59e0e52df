"""What the iptables policy datapaths share (Calico and kube-router): the policy is one chain of
MARK-and-RETURN rule pairs per port range, programmed in bulk (ipsets, then one restore), and an
allowed packet's counter is the MARK rule of the range that admits it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from cnitrace.lab.datapath import Datapath, program_iptables
from cnitrace.lab.model import CounterRef, LabSpec, Topology
from cnitrace.lab.policy import allow_index, port_rules
from cnitrace.lab.topology import built

if TYPE_CHECKING:
    from cnitrace.core.runner import Runner
    from cnitrace.core.session import Session


class MarkReturnDatapath(Datapath):
    """build(): plumb the pods, restore ipsets and the filter table, read back what was built."""

    def plumb(self, runner: "Runner", topo: Topology) -> None:
        raise NotImplementedError

    def render(self, topo: Topology, spec: LabSpec) -> tuple[str, str]:
        """(ipset restore text, iptables filter restore text)."""
        raise NotImplementedError

    def build(self, session: "Session", topo: Topology, spec: LabSpec) -> Topology:
        r = session.runner
        self.plumb(r, topo)
        seconds = program_iptables(r, topo.node_netns, spec.backend, *self.render(topo, spec))
        return built(r, topo, seconds)


def allowed_refs(topo: Topology, spec: LabSpec, chain: str, comment: Callable[[int], str | None] = lambda pos: None
                 ) -> tuple[dict[str, CounterRef], dict[str, int]]:
    """Per protocol, the counter of the MARK rule that admits the lab's allowed packet, and how many
    policy rules that packet is matched against (MARK + RETURN for every range before it, then its MARK)."""
    rules = port_rules(topo, spec)
    allowed, evals = {}, {}
    for proto in ("tcp", "udp"):
        pos = allow_index(rules, proto)
        allowed[proto] = CounterRef(kind="iptables", netns=topo.node_netns, backend=spec.backend,
                                    table="filter", chain=chain, index=2 * pos + 1, comment=comment(pos))
        evals[proto] = 2 * pos + 2
    return allowed, evals

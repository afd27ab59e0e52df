"""What one profile watches: the Selection (resolved interfaces and namespaces), the lab, the
entry side and the user's target. The Selection travels unchanged to the collectors, the probes
(as resolved (netns, ifindex) pairs) and the document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.core import selection as sel
from cnitrace.core.runner import Runner
from cnitrace.core.selection import HOST, Interface, Selection
from cnitrace.lab import manager
from cnitrace.profile.config import ProfileConfig
from cnitrace.traffic.generators import resolve_peer


@dataclasses.dataclass
class Target:
    """The Selection a profile watches, plus the lab (if any) and which packets enter the node."""
    selection: Selection
    lab: Any = None                     # cnitrace.lab.manager.Lab
    entry: set[int] | None = None       # ifindexes whose received packets are timed (None = all selected)
    peer: Any = None                    # cnitrace.traffic.generators.Peer: traffic toward a target the user named

    @property
    def interfaces(self) -> list[dict[str, Any]]:
        """The selected interfaces as the document spells them (host namespace: null)."""
        return [{"name": i.name, "ifindex": i.ifindex, "netns": i.netns or None, "peer": i.peer,
                 "pod": i.peer_netns} for i in self.selection.interfaces]

    @property
    def rule_netns(self) -> list[str]:
        """Namespaces whose netfilter rules are read (HOST '' for the host)."""
        return list(self.selection.netns) or [HOST]

    @property
    def entry_ifindexes(self) -> set[int]:
        return self.entry if self.entry is not None else {i.ifindex for i in self.selection.interfaces}


def lab_selection(lab: Any) -> Selection:
    """A lab's node-side pod interfaces, already resolved by the lab (no lookup, no patterns): the
    pods on the lab's node, plus the interfaces where requests from pods on another node enter it
    (topology extra "entry": weave fastdp's VXLAN vport)."""
    topo = lab.topo
    moved = set(topo.extra.get("moved_clients", ()))
    pods = tuple(Interface(p.node_iface, topo.node_netns, p.node_ifindex, "veth", p.iface, p.netns)
                 for p in topo.pods if p.name not in moved)
    entry = tuple(Interface(e["name"], topo.node_netns, int(e["ifindex"]), e.get("kind", ""))
                  for e in topo.extra.get("entry", ()))
    return Selection(pods + entry, (topo.node_netns,))


def lab_entry(lab: Any) -> set[int]:
    """Where the lab's requests enter its node: the client pods' veths, or (clients on another
    node) the interfaces the lab names as its entry."""
    named = {int(e["ifindex"]) for e in lab.topo.extra.get("entry", ())}
    return named or {p.node_ifindex for p in lab.topo.clients}


def resolve_target(cfg: ProfileConfig, runner: Runner) -> Target:
    if cfg.lab:
        lab = manager.load(cfg.lab)
        # Requests enter the node from client pods: time those (replies are a different path).
        return Target(lab_selection(lab), lab, lab_entry(lab))
    found = sel.resolve(list(cfg.ifaces), list(cfg.netns))
    found = Selection(found.interfaces, tuple(sorted({i.netns for i in found.interfaces})))
    peer, entry = None, None
    if cfg.target:
        peer = resolve_peer(cfg.target, cfg.from_netns)
        # Requests from the client namespace enter the node where its veth peer sits: time those.
        entry = {i.ifindex for i in found.interfaces if cfg.from_netns and i.peer_netns == cfg.from_netns} or None
    return Target(found, entry=entry, peer=peer)

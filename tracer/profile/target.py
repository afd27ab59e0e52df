"""What one profile watches: the selected interfaces, where rules are read, the lab, the entry side."""

from __future__ import annotations

import dataclasses
from typing import Any

from cnitrace.core import selection
from cnitrace.core.runner import Runner
from cnitrace.lab import manager
from cnitrace.profile.config import ProfileConfig
from cnitrace.traffic.generators import resolve_peer


@dataclasses.dataclass
class Target:
    """What one profile watches: interfaces (netns, name, ifindex), rule namespaces and the lab, if any."""

    interfaces: list[dict[str, Any]]
    rule_netns: list[str | None]        # where netfilter rules are read (None = host)
    lab: Any = None                     # cnitrace.lab.manager.Lab
    entry: set[int] | None = None       # ifindexes whose received packets are timed (None = all selected)
    peer: Any = None                    # cnitrace.traffic.generators.Peer: traffic toward a target the user named


def resolve_target(cfg: ProfileConfig, runner: Runner) -> Target:
    if cfg.lab:
        lab = manager.load(cfg.lab)
        topo = lab.topo
        ifaces = [{"name": p.node_iface, "ifindex": p.node_ifindex, "netns": topo.node_netns, "peer": p.iface,
                   "pod": p.netns} for p in topo.pods]
        # Requests enter the node from client pods: time those (replies are a different path).
        return Target(ifaces, [topo.node_netns], lab, {p.node_ifindex for p in topo.clients})
    sel = selection.resolve(list(cfg.ifaces), list(cfg.netns))
    ifaces = [{"name": i.name, "ifindex": i.ifindex, "netns": i.netns or None, "peer": i.peer,
               "pod": i.peer_netns} for i in sel.interfaces]
    rule_ns = sorted({i.netns or None for i in sel.interfaces}, key=lambda n: n or "")
    peer, entry = None, None
    if cfg.target:
        peer = resolve_peer(cfg.target, cfg.from_netns)
        # Requests from the client namespace enter the node where its veth peer sits: time those.
        entry = {i["ifindex"] for i in ifaces if cfg.from_netns and i["pod"] == cfg.from_netns} or None
    return Target(ifaces, rule_ns or [None], entry=entry, peer=peer)

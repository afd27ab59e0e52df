"""The one explicit registry of the lab's datapaths: name -> Datapath, in the order the sweep
runs and reports them."""


from __future__ import annotations

from cnitrace.core.errors import UsageError
from cnitrace.lab.datapath import Datapath
from cnitrace.lab.datapaths.antrea import Antrea
from cnitrace.lab.datapaths.calico import Calico
from cnitrace.lab.datapaths.cilium import Cilium
from cnitrace.lab.datapaths.flannel import Flannel
from cnitrace.lab.datapaths.kube_router import KubeRouter
from cnitrace.lab.datapaths.nft import Nft
from cnitrace.lab.datapaths.weave import Weave
from cnitrace.lab.datapaths.weave_fastdp import WeaveFastdp

# The study's iptables CNIs, nftables, OVS, eBPF, the baseline.
DATAPATHS: dict[str, Datapath] = {cls.name: cls() for cls in (Calico, KubeRouter, Weave, Nft, Antrea, Cilium, Flannel)}

# Datapaths that need the openvswitch kernel module (the vm tier has it; this CI kernel does
# not): built on request, never part of the default set a sweep or a test matrix walks.
KERNEL_OVS: dict[str, Datapath] = {cls.name: cls() for cls in (WeaveFastdp,)}


def names() -> list[str]:
    return sorted([*DATAPATHS, *KERNEL_OVS])


def get(name: str) -> Datapath:
    """The datapath called `name`, or a UsageError listing the known ones."""
    try:
        return DATAPATHS.get(name) or KERNEL_OVS[name]
    except KeyError:
        raise UsageError(f"unknown datapath {name!r}; choose one of: {', '.join(names())}") from None

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

# The study's iptables CNIs, nftables, OVS, eBPF, the baseline.
DATAPATHS: dict[str, Datapath] = {cls.name: cls() for cls in (Calico, KubeRouter, Weave, Nft, Antrea, Cilium, Flannel)}

# Datapaths a user may ask for that this lab does not build, each with the reason.
NOT_BUILT = {"weave-fastdp": "weave fastdp is not built: it needs the openvswitch kernel module (the vm tier has it); "
                             "--datapath weave builds the sleeve bridge datapath"}


def names() -> list[str]:
    return sorted(DATAPATHS)


def get(name: str) -> Datapath:
    """The datapath called `name`, or a UsageError listing the known ones."""
    if name in NOT_BUILT:
        raise UsageError(NOT_BUILT[name])
    try:
        return DATAPATHS[name]
    except KeyError:
        raise UsageError(f"unknown datapath {name!r}; choose one of: {', '.join(names())}") from None

"""What each stage's probe is: its source, its hooks with the backends each may use, its -D
options and its map and event layouts. Data only (no bcc), so the ladder and the tests can
reason about it.

Backends, best first: fentry/fexit (BTF trampolines, ~7 ns a hit) -> kprobe/kretprobe
(~18 ns) -> tracepoint (stable, but only where the kernel has one; taken BTF-typed (tp_btf:
fields are plain loads, no helper calls) or raw where possible, which skips building the
trace record) -> counters (nothing
attached; the figure is modelled from collector counters). The backend is chosen per hook:
nf_hook_slow is in vmlinux and can take fentry while ipt_do_table lives in a module, which
bcc 0.26 can only kprobe, so one stage may mix backends, and each figure says which one
measured it.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import Mapping

FENTRY, KPROBE, TRACEPOINT, COUNTERS = "fentry", "kprobe", "tracepoint", "counters"
RAW_TRACEPOINT = "raw_tracepoint"   # the tracepoint rung's cheaper form: no trace record is built
TP_BTF = "tp_btf"                   # cheaper still: a BTF-typed raw tracepoint, fields read by plain loads
NF_BPF = "nf_bpf"                   # netfilter stage only: BPF netfilter programs bracketing each table
BACKENDS = (FENTRY, KPROBE, TP_BTF, RAW_TRACEPOINT, TRACEPOINT, COUNTERS)
BACKEND_CODES = {FENTRY: 1, KPROBE: 2, TRACEPOINT: 3, RAW_TRACEPOINT: 4, TP_BTF: 5}   # CNIT_HOOK_<point> in C
TRACEPOINT_FORMS = (TP_BTF, RAW_TRACEPOINT, TRACEPOINT)   # the ladder's tracepoint rung, best form first

# Kernel struct fields the probes read, by -D name: CNIT_OFF_<name> = byte offset from BTF.
OFFSETS: dict[str, tuple[str, str]] = {
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_LEN": ("sk_buff", "len"),
    "SKB_MARK": ("sk_buff", "mark"),
    "SKB_PROTOCOL": ("sk_buff", "protocol"),
    "SKB_DATA": ("sk_buff", "data"),
    "DEV_IFINDEX": ("net_device", "ifindex"),
    "DEV_NET": ("net_device", "nd_net.net"),
    "NET_INUM": ("net", "ns.inum"),
    "SK_NET": ("sock", "__sk_common.skc_net.net"),
    "TCP_BYTES_RECEIVED": ("tcp_sock", "bytes_received"),
    "TCP_BYTES_ACKED": ("tcp_sock", "bytes_acked"),
    "HOOK_STATE_HOOK": ("nf_hook_state", "hook"),
    "HOOK_STATE_PF": ("nf_hook_state", "pf"),
    "HOOK_STATE_NET": ("nf_hook_state", "net"),
    "XT_TABLE_NAME": ("xt_table", "name"),               # module x_tables
    "NFT_CHAIN_NAME": ("nft_chain", "name"),             # module nf_tables
    "NFT_CHAIN_TABLE": ("nft_chain", "table"),
    "NFT_TABLE_NAME": ("nft_table", "name"),
    "NFT_PKTINFO_SKB": ("nft_pktinfo", "skb"),
    "NFT_PKTINFO_STATE": ("nft_pktinfo", "state"),
}


def tp_btf_function(point: str) -> str:
    """The C function a tp_btf hook runs: `tpbtf__<tracepoint>` (bcc autoloads no such prefix)."""
    return f"tpbtf__{point.partition(':')[2]}"


def hook_macro(point: str) -> str:
    """'skb:consume_skb' -> 'CNIT_HOOK_SKB_CONSUME_SKB' (0 = not attached, else a BACKEND_CODES value)."""
    return "CNIT_HOOK_" + re.sub(r"[^A-Za-z0-9]", "_", point).upper()


@dataclasses.dataclass(frozen=True)
class Hook:
    """One attach point and the backends that can reach it, best first."""

    point: str                      # "net:netif_receive_skb" (tracepoint) or "nf_hook_slow" (function)
    backends: tuple[str, ...]
    required: bool = True           # without it the stage is modelled; optional hooks only add detail
    needs: tuple[str, ...] = ()     # OFFSETS it reads beyond the stage's common ones (module structs)

    @property
    def macro(self) -> str:
        return hook_macro(self.point)


@dataclasses.dataclass(frozen=True)
class AggMap:
    """A per-CPU aggregate map: its key fields (in struct order), the unit of its sum, and the
    hooks that feed it (by the key's `kind` when several do)."""

    name: str
    key: tuple[str, ...]
    unit: str                                   # "ns" or "bytes"
    fed_by: tuple[str, ...] = ()                # hook points; one, or one per `selector` value (1-based)
    selector: str = "kind"                      # the key field saying which hook fed an entry


@dataclasses.dataclass(frozen=True)
class EventLayout:
    """A per-packet event as the C struct lays it out: (field, struct format char) in order."""

    fields: tuple[tuple[str, str], ...]

    @property
    def fmt(self) -> str:
        return "=" + "".join(c for _, c in self.fields)

    def decode(self, data: bytes) -> dict[str, int]:
        """Bytes of one event -> {field: value}; raises ValueError on a short record."""
        size = struct.calcsize(self.fmt)
        if len(data) < size:
            raise ValueError(f"event of {len(data)} bytes, expected {size}")
        return dict(zip((f for f, _ in self.fields), struct.unpack_from(self.fmt, data)))


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    stage: str
    source: str                      # file in cnitrace.probes
    hooks: tuple[Hook, ...]
    maps: tuple[AggMap, ...]
    offsets: tuple[str, ...]         # keys of OFFSETS this source reads
    what: str                        # one line for the report: what a figure means
    event: EventLayout | None = None  # per-packet event (CNIT_EVENTS=1), mirrors the C struct
    btf_modules: tuple[str, ...] = ()  # module BTF to read besides vmlinux (if loaded)

    def hook(self, point: str) -> Hook:
        for h in self.hooks:
            if h.point == point:
                return h
        raise KeyError(f"stage {self.stage} has no hook {point}")


_SKB = ("SKB_DEV", "DEV_IFINDEX", "DEV_NET", "NET_INUM", "SKB_MARK", "SKB_PROTOCOL", "SKB_DATA")
_FN = (FENTRY, KPROBE)
_TP = TRACEPOINT_FORMS
_MODULE_FN = (KPROBE,)   # bcc 0.26 resolves fentry targets in vmlinux BTF only
_NFT = ("NFT_PKTINFO_SKB", "NFT_PKTINFO_STATE", "NFT_CHAIN_NAME", "NFT_CHAIN_TABLE", "NFT_TABLE_NAME")

SPECS: dict[str, ProbeSpec] = {s.stage: s for s in (
    ProbeSpec(
        stage="transit",
        source="transit.bpf.c",
        hooks=(Hook("net:netif_receive_skb", _TP), Hook("net:net_dev_start_xmit", _TP),
               Hook("skb:consume_skb", _TP, required=False),
               Hook("skb:kfree_skb", _TP, required=False)),
        maps=(AggMap("transit_agg", ("netns", "ifindex_in", "ifindex_out"), "ns", ("net:netif_receive_skb",)),),
        offsets=(*_SKB, "SKB_LEN"),
        what="receive on a selected interface -> transmit of the same skb (time in the node's stack)",
        event=EventLayout((("ts", "Q"), ("ns", "Q"), ("netns", "I"), ("ifindex_in", "I"),
                           ("ifindex_out", "I"), ("len", "I"))),
    ),
    ProbeSpec(
        stage="drops",
        source="drops.bpf.c",
        hooks=(Hook("skb:kfree_skb", _TP),),
        maps=(AggMap("drops_agg", ("location", "netns", "ifindex", "reason", "protocol"), "bytes",
                     ("skb:kfree_skb",)),),
        offsets=(*_SKB, "SKB_LEN"),
        what="packets freed as dropped, by BTF drop reason and kernel location",
        event=EventLayout((("ts", "Q"), ("location", "Q"), ("netns", "I"), ("ifindex", "I"),
                           ("reason", "I"), ("pad", "I"))),
    ),
    ProbeSpec(
        stage="l7_detour",
        source="l7.bpf.c",
        hooks=(Hook("sock:inet_sock_set_state", (TRACEPOINT,)),),
        maps=tuple(AggMap(n, ("netns", "role", "port"), u, ("sock:inet_sock_set_state",))
                   for n, u in (("l7_connect", "ns"), ("l7_life", "ns"), ("l7_bytes_in", "bytes"),
                                ("l7_bytes_out", "bytes"))),
        offsets=("SK_NET", "NET_INUM", "TCP_BYTES_RECEIVED", "TCP_BYTES_ACKED"),
        what="TCP connection setup and lifetime per (role, service port); a proxy detour shows as added time",
    ),
    ProbeSpec(
        stage="netfilter",
        source="netfilter.bpf.c",
        hooks=(Hook("nf_hook_slow", _FN),
               Hook("ipt_do_table", _MODULE_FN, required=False, needs=("XT_TABLE_NAME",)),
               Hook("ip6t_do_table", _MODULE_FN, required=False, needs=("XT_TABLE_NAME",)),
               Hook("nft_do_chain", _MODULE_FN, required=False, needs=_NFT)),
        maps=(AggMap("nf_hook_agg", ("netns", "pf", "hook", "verdict"), "ns", ("nf_hook_slow",)),
              AggMap("nf_table_agg", ("netns", "kind", "hook", "verdict", "table", "chain"), "ns",
                     ("ipt_do_table", "ip6t_do_table", "nft_do_chain"))),
        offsets=("SKB_DEV", "DEV_IFINDEX", "DEV_NET", "NET_INUM", "SKB_MARK", "SKB_PROTOCOL", "SKB_DATA",
                 "HOOK_STATE_HOOK", "HOOK_STATE_PF", "HOOK_STATE_NET", "XT_TABLE_NAME", "NFT_CHAIN_NAME",
                 "NFT_CHAIN_TABLE", "NFT_TABLE_NAME", "NFT_PKTINFO_SKB", "NFT_PKTINFO_STATE"),
        what="time per netfilter hook (family, hook) and per table / nft base chain call, with verdict",
        btf_modules=("x_tables", "nf_tables"),
    ),
    ProbeSpec(
        stage="ovs_kernel",
        source="ovs.bpf.c",
        hooks=(Hook("ovs_dp_process_packet", _MODULE_FN),
               Hook("ovs_vport_receive", _MODULE_FN, required=False),
               Hook("ovs_execute_actions", _MODULE_FN, required=False),
               Hook("openvswitch:ovs_dp_upcall", (TRACEPOINT,), required=False)),
        maps=(AggMap("ovs_agg", ("netns", "ifindex", "fn"), "ns",
                     ("ovs_vport_receive", "ovs_dp_process_packet", "ovs_execute_actions"), selector="fn"),
              AggMap("ovs_upcall_agg", ("netns", "ifindex"), "bytes", ("openvswitch:ovs_dp_upcall",))),
        offsets=("SKB_DEV", "DEV_IFINDEX", "DEV_NET", "NET_INUM"),
        what="time in the OVS kernel datapath per input interface (receive, process, actions) and upcalls",
    ),
)}

STAGES = tuple(SPECS)

# tc_bpf is not in SPECS (which ProbeSet runs): its fentry targets are BPF programs found at
# run time, not kernel functions, so cnitrace.probes.progtime loads and attaches it.
PROGTIME = ProbeSpec(
    stage="tc_bpf",
    source="progtime.bpf.c",
    hooks=(Hook("bpf_prog", (FENTRY,), required=False), Hook("tcf_classify", (KPROBE,), required=False)),
    maps=(AggMap("progtime_agg", ("slot",), "ns", ("bpf_prog",)),
          AggMap("tc_classify_agg", ("netns", "ifindex"), "ns", ("tcf_classify",))),
    offsets=("SKB_DEV", "DEV_IFINDEX", "DEV_NET", "NET_INUM"),
    what="run time of each selected tc/XDP BPF program (fentry/fexit on the program); without BTF, "
         "time of the interface's tc classify path (kprobe on tcf_classify)",
)

NF_FAMILIES = {2: "ipv4", 10: "ipv6", 7: "bridge", 3: "arp", 1: "inet", 5: "netdev"}
NF_HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}
NF_VERDICTS = {0: "DROP", 1: "ACCEPT", 2: "STOLEN", 3: "QUEUE", 4: "REPEAT", 5: "STOP"}
NF_TABLE_KINDS = {1: "iptables", 2: "ip6tables", 3: "nftables"}
L7_ROLES = {1: "client", 2: "server"}
OVS_FNS = {1: "receive", 2: "process", 3: "actions"}


def feeding_hook(agg: AggMap, raw_key: Mapping[str, object]) -> str:
    """Which hook produced a figure of this map (to say which backend measured it)."""
    if len(agg.fed_by) > 1 and agg.selector in raw_key:
        kind = int(raw_key[agg.selector])  # type: ignore[arg-type]
        if 1 <= kind <= len(agg.fed_by):
            return agg.fed_by[kind - 1]
    return agg.fed_by[0] if agg.fed_by else ""


def decode_key(agg: AggMap, raw: Mapping[str, object]) -> dict[str, object]:
    """Turn a raw key (field -> int or bytes) into report values (names instead of numbers)."""
    out: dict[str, object] = {}
    for f in agg.key:
        v = raw[f]
        if isinstance(v, (bytes, bytearray)):
            v = bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")
        if f == "pf":
            v = NF_FAMILIES.get(int(v), str(v))
        elif f == "hook":
            v = NF_HOOKS.get(int(v), str(v))
        elif f == "verdict":
            v = NF_VERDICTS.get(int(v) & 0xff, str(v))
        elif f == "kind":
            v = NF_TABLE_KINDS.get(int(v), str(v))
        elif f == "role":
            v = L7_ROLES.get(int(v), str(v))
        elif f == "fn":
            v = OVS_FNS.get(int(v), str(v))
        out[f] = v
    return out

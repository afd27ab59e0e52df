"""The probe ladder: for each datapath stage, which backend this host allows, and why.

Backends, best first: fentry (BTF trampoline, ~7 ns a hit) -> kprobe (~18 ns) -> nf_bpf (netfilter
only: BPF netfilter programs around each table, ~170-200 ns per table here) -> tracepoint (stable,
where the kernel has one) -> counters (nothing attached; the stage's time is
modelled from counters and the rule-count sweep). A stage lists only the rungs that make
sense for it. `choose` is pure: it reads capabilities through the Host (real or replayed)
and says which signals are measured and which modelled, so the report can be honest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from cnitrace.core.capability import Check, Status

from cnitrace.probes.specs import COUNTERS, FENTRY, KPROBE, NF_BPF, TRACEPOINT  # one vocabulary (probes.specs)


class Capabilities(Protocol):
    def check(self, name: str) -> Check: ...


@dataclasses.dataclass(frozen=True)
class Need:
    """Capabilities a backend needs: all of `all_of`, at least one of `any_of` (if given)."""

    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    strict: tuple[str, ...] = ()     # these must be OK, not merely usable (DEGRADED is not enough)


@dataclasses.dataclass(frozen=True)
class Rung:
    backend: str
    need: Need
    hooks: str                        # where it attaches, for the report
    measured: tuple[str, ...]
    modelled: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    what: str
    rungs: tuple[Rung, ...]


@dataclasses.dataclass(frozen=True)
class Choice:
    stage: str
    backend: str | None               # None: the stage cannot be observed on this host
    reason: str
    measured: tuple[str, ...] = ()
    modelled: tuple[str, ...] = ()
    rejected: tuple["Rejected", ...] = ()        # better rungs that could not run, best first

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "backend": self.backend, "reason": self.reason,
                "measured": list(self.measured), "modelled": list(self.modelled),
                "rejected": [{"backend": r.backend, "blocked_by": list(r.blocked_by), "why": r.why}
                             for r in self.rejected]}


@dataclasses.dataclass(frozen=True)
class Rejected:
    backend: str
    blocked_by: tuple[str, ...]      # "kprobes missing", "ovs_kernel missing"
    why: str                         # the blocking checks' full reasons


_FN = Need(all_of=("fentry", "btf"))
_KP = Need(all_of=("kprobes", "btf"))
_TP = Need(all_of=("tracepoints", "tracefs", "btf"))

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("netfilter", "iptables / nftables hooks, tables and chains", (
        Rung(FENTRY, _FN, "nf_hook_slow, ipt_do_table, nft_do_chain",
             ("ns per hook", "ns per table/base chain", "verdicts"), ("ns per user chain/rule (from counters)",)),
        Rung(KPROBE, _KP, "nf_hook_slow, ipt_do_table, nft_do_chain (+kretprobe)",
             ("ns per hook", "ns per table/base chain", "verdicts"), ("ns per user chain/rule (from counters)",)),
        # Where neither function probe exists (no kprobes/fentry: locked-down and hardened nodes):
        # BPF netfilter programs at priority p-1 and p+1 around each table (kernel >= 6.4). They cost
        # more per table than fentry or kprobes here (two hook calls and two clock reads), hence last.
        Rung(NF_BPF, Need(all_of=("nf_bpf", "btf"), any_of=("iptables", "nft")),
             "BPF netfilter programs at p-1 / p+1 around each table",
             ("ns per table/base chain", "drops inside a table"), ("ns per user chain/rule (apportioned)",)),
        Rung(COUNTERS, Need(any_of=("iptables", "nft")), "rule counters (iptables-save -c, nft -j)",
             ("packets per rule and chain",), ("ns per rule (sweep slope)", "ns per chain")),
    )),
    Stage("ovs_kernel", "Open vSwitch kernel datapath", (
        Rung(FENTRY, Need(all_of=("fentry", "btf", "ovs_kernel")), "ovs_dp_process_packet, ovs_execute_actions",
             ("ns per packet in the datapath", "upcalls"), ("ns per OpenFlow table",)),
        Rung(KPROBE, Need(all_of=("kprobes", "btf", "ovs_kernel")), "ovs_dp_process_packet (+kretprobe)",
             ("ns per packet in the datapath", "upcalls"), ("ns per OpenFlow table",)),
        Rung(TRACEPOINT, Need(all_of=("tracepoints", "tracefs", "ovs_kernel")),
             "openvswitch:ovs_dp_upcall, ovs_do_execute_action", ("upcalls", "actions executed"),
             ("ns per packet", "ns per OpenFlow table")),
        Rung(COUNTERS, Need(all_of=("ovs",)), "flow counters (ovs-ofctl dump-flows)",
             ("packets per flow and table",), ("ns per table (sweep slope)",)),
    )),
    Stage("tc_bpf", "tc and XDP BPF programs (Cilium, Calico eBPF)", (
        Rung(FENTRY, Need(all_of=("fentry", "btf", "bpf_stats")), "fentry/fexit on each BPF program",
             ("ns per program run, per packet", "histogram"), ()),
        Rung(KPROBE, Need(all_of=("kprobes", "btf", "bpf_stats")), "tcf_classify (+kretprobe), per interface",
             ("ns per tc classify call, per interface", "histogram"), ("per-program split (bpf_stats)",)),
        Rung(COUNTERS, Need(all_of=("bpf_stats",)), "bpf_stats run_time_ns / run_cnt per program",
             ("mean ns per program run", "runs"), ("per-packet distribution",)),
    )),
    Stage("transit", "receive -> transmit time through the node's stack", (
        Rung(TRACEPOINT, Need(any_of=("tracepoints", "raw_tracepoints", "tp_btf"), all_of=("btf",)),
             "net:netif_receive_skb -> net:net_dev_start_xmit", ("ns per packet in the stack", "histogram"), ()),
        Rung(COUNTERS, Need(), "interface counters (/proc/net/dev)", ("packets per interface",),
             ("ns per packet",)),
    )),
    Stage("drops", "where and why packets are dropped", (
        Rung(TRACEPOINT, Need(all_of=("tracepoints", "tracefs", "btf")), "skb:kfree_skb (drop reason)",
             ("drops per reason and location",), ()),
        Rung(COUNTERS, Need(), "SNMP / netstat counters (/proc/net/snmp)", ("drops per counter",),
             ("drop location",)),
    )),
    Stage("l7_detour", "the L7 proxy detour (Envoy, Suricata)", (
        Rung(TRACEPOINT, _TP, "sock:inet_sock_set_state", ("connection setup and lifetime per port",),
             ("proxy processing per request",)),
        Rung(COUNTERS, Need(), "traffic generator results (requests/s, latency)", ("requests/s", "latency"),
             ("detour time per request",)),
    )),
)}


def _missing(need: Need, caps: Capabilities) -> list[Check]:
    """The checks that stop this rung, empty when it can run."""
    bad = [c for c in (caps.check(n) for n in need.all_of) if not c.usable]
    bad += [c for c in (caps.check(n) for n in need.strict) if c.status is not Status.OK]
    if need.any_of:
        alts = [caps.check(n) for n in need.any_of]
        if not any(c.usable for c in alts):
            bad += alts
    return bad


def _rejected(backend: str, bad: list[Check]) -> Rejected:
    return Rejected(backend, tuple(f"{c.name} {c.status.value}" for c in bad),
                    "; ".join(f"{c.name} {c.status.value}: {c.reason}" for c in bad))


def choose(stage: str, caps: Capabilities) -> Choice:
    """The best rung of `stage` this host allows, with the reason and the rungs it skipped."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    root = caps.check("root")
    if not root.usable:   # every backend loads probes or reads counters as root
        return Choice(stage, None, f"root {root.status.value}: {root.reason}")
    rejected: list[Rejected] = []
    for rung in STAGES[stage].rungs:
        bad = _missing(rung.need, caps)
        if bad:
            rejected.append(_rejected(rung.backend, bad))
            continue
        used = [n for n in (*rung.need.all_of, *rung.need.any_of) if caps.check(n).usable]
        basis = f"{', '.join(used)} usable" if used else "nothing to attach"
        return Choice(stage, rung.backend, f"{rung.hooks}; {basis}", rung.measured,
                      rung.modelled, tuple(rejected))
    return Choice(stage, None, "no backend usable: " + "; ".join(
        f"{r.backend}: {', '.join(r.blocked_by)}" for r in rejected), rejected=tuple(rejected))


def rung_usable(stage: str, backend: str, caps: Capabilities) -> tuple[bool, str]:
    """Whether one rung of `stage` could run here, and why not: for stages whose targets take
    different rungs (tc_bpf: fentry where a program has BTF, kprobe on the tc path elsewhere)."""
    rung = next((r for r in STAGES[stage].rungs if r.backend == backend), None)
    if rung is None:
        return False, f"{stage} has no {backend} rung"
    root = caps.check("root")
    if not root.usable:
        return False, f"root {root.status.value}: {root.reason}"
    bad = _missing(rung.need, caps)
    return (False, _rejected(backend, bad).why) if bad else (True, f"{rung.hooks}")


def choose_all(caps: Capabilities) -> list[Choice]:
    return [choose(s, caps) for s in STAGES]

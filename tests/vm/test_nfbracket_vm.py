"""vm tier: the two measured netfilter backends agree on the filter table's time per call.

DESIGN.md's ladder has two ways to a *measured* per-table netfilter time: function probes on
ipt_do_table (kprobe/kretprobe; with the ladder's choice nf_hook_slow gets fentry, but the
table function lives in a module, which bcc 0.26 reaches with kprobes only) and, where those
are missing, BPF netfilter bracket programs linked at priority p-1 and p+1 around the table
(backend nf_bpf, cnitrace.probes.nfbracket). Only the microVM's kernel has both, so this is
where they are compared (issue 12: per-table time within +-25 % of each other).

Setup: pod A --veth-- node --veth-- pod B (tests.host.probes_path), RULES non-matching TCP
rules in the node's iptables-legacy FORWARD chain so the filter table's own work dominates
every per-call overhead, COUNT UDP datagrams A -> B per step (bounded sender). Pod B drops
its ICMP port-unreachable replies in its own OUTPUT, so the node forwards exactly the sent
datagrams. Brackets are linked in the node's namespace on ipv4 FORWARD (filtered to the
node's A-side interface); the function probes are filtered to the node's namespace and the
datagrams' UDP port.

Both at once, on the same packets -- not one after the other. Measured in the VM (TCG on a
shared machine), the same backend's mean for the same 300 packets varied from 29 to 268 us
between consecutive sends, so two sequential measurements cannot be held to +-25 %. With both
attached every packet is timed by both, and the intervals nest:

  bracket:  [entry prog @ -1: clock] -> nf_hook_slow's next slot -> iptable_filter_hook ->
            [kprobe handler: clock K0 ...] ipt_do_table [... kretprobe handler: clock K1] ->
            return -> nf_hook_slow's next slot -> [exit prog @ +1: clock]
  kprobe:   K1 - K0

so the bracket interval holds the function probe's whole interval plus a part that does not
depend on the rules: the hook-slot transitions and the filter hook's call (the floor -- an
empty bracket pair on the same hook -- takes off about one transition), and the kprobe and
kretprobe (rethook trampoline) machinery outside their own clock reads. Under TCG that part
is 3-5 us, about 10 % of a 1,000-rule table (median raw ratio 1.08-1.13 in every run), and it is an
artefact of having both attached: without the kprobe the bracket would not pay it. Nothing
of the brackets is inside the kprobe interval. So the asymmetry is measured, not tuned: the
same probes on the same path with the chain empty (N = 0), on the same packets, give
d0 = bracket - kprobe, the rule-independent part; the comparison at N = RULES is
(bracket - d0) / kprobe. The raw ratio is printed too, and checked to be >= 1 (containment).

Noise: a packet whose bracket interval catches a stall of the VM's vCPU outside the kprobe's
interval (the host is shared) adds to the bracket's mean only; at 300 packets one such stall
moved d0 from ~5 to 47 us. Hence ROUNDS rounds of COUNT datagrams, N = 0 and N = RULES
interleaved (drift hits both alike), after one uncounted warm-up send (the first packets run
code TCG has not translated yet, ~2x slower), and medians over rounds: d0 is the median of
the N = 0 rounds' differences, the ratios the medians over the N = RULES rounds.

Asserted, for kprobes pinned and for the ladder's choice (nf_hook_slow fentry, ipt_do_table
kprobe): in every round both backends count exactly the datagrams sent, the bracket names
the legacy filter table ungrouped and its floor saw every packet, d0 > 0, raw >= 1, the
corrected ratio is within 0.75..1.25, and after close no program or link of either is left
in the kernel.

Measured in the VM, three runs (medians; us per filter-table call at N = 1000, bracket /
kprobe; d0; raw -> corrected ratio):
  kprobe  53.2/49.2 d0 3.4 1.089 -> 1.017 | 36.7/33.3 d0 3.0 1.102 -> 1.015 | 60.0/54.0 d0 3.0 1.100 -> 1.034
  ladder  59.1/52.9 d0 3.6 1.110 -> 1.041 | 37.0/33.9 d0 4.3 1.102 -> 0.967 | 55.5/50.0 d0 4.8 1.129 -> 1.012
"""

from __future__ import annotations

import random
import statistics
import time

import pytest

from cnitrace.core.runner import DEFAULT_RUNNER as R
from cnitrace.core.session import Session
from cnitrace.probes import nfbracket as nb
from cnitrace.probes.runtime import Filter, ProbeSet
from tests.conftest import host
from tests.host.probes_path import build, send, set_forward_rules
from tests.support.bpf import bpftool_ids

pytestmark = pytest.mark.requires("kprobes", "fentry", "nf_bpf", "tp_btf", "btf", "bcc")
COUNT = 200                 # datagrams per round and rule count
ROUNDS = 5
RULES = 1000
LOW, HIGH = 0.75, 1.25


def bracket_filter(br: nb.Brackets) -> tuple[int, float]:
    """(packets, mean ns per call, floor subtracted) of the filter table's FORWARD bracket."""
    tables = nb.table_times(br.figures())
    assert len(tables) == 1, tables
    (t,) = tables.values()
    k = t["key"]
    assert (k["kind"], k["table"], k["chain"], k["hook"], k["pf"]) == ("iptables", "filter", "FORWARD",
                                                                       "FORWARD", "ipv4")
    assert not k["grouped"] and t["dropped"] == 0 and t["floor_ns"] > 0
    floors = [f for f in br.figures() if f.map == nb.FLOOR_MAP]
    assert len(floors) == 1 and floors[0].hist.count == COUNT    # the empty pair saw every packet
    assert br.lost() == 0
    return t["passed"], t["mean_ns"]


def kprobe_filter(ps: ProbeSet) -> tuple[int, float]:
    """(packets, mean ns per call) of ipt_do_table for the node's filter table in FORWARD."""
    figs = [f for f in ps.snapshot() if f.map == "nf_table_agg" and f.key["hook"] == "FORWARD"]
    assert len(figs) == 1, [f.to_json() for f in ps.snapshot()]
    f = figs[0]
    assert (f.key["kind"], f.key["table"], f.key["verdict"]) == ("iptables", "filter", "ACCEPT")
    assert f.backend == "kprobe" and f.hook == "ipt_do_table"
    return f.hist.count, f.hist.mean


def gone(ids: set[int], what: str, timeout: float = 20.0) -> bool:
    """Programs are freed after an RCU grace period: wait for them (bounded)."""
    deadline = time.monotonic() + timeout
    while ids & bpftool_ids(what) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not ids & bpftool_ids(what)


@pytest.mark.parametrize("force", ["kprobe", None], ids=["kprobe", "ladder"])
def test_brackets_and_function_probes_agree_per_table(namespaces, force):
    path = build(namespaces.new)
    R.run(["iptables-legacy", "-A", "OUTPUT", "-p", "icmp", "-j", "DROP"], netns=path.b)
    set_forward_rules(path, 0)     # loads ip_tables/iptable_filter before the probes read their BTF
    port = random.randint(20000, 30000)
    rounds: dict[int, list[tuple[float, float]]] = {0: [], RULES: []}
    with Session() as s:
        br = nb.Brackets([(path.node, path.node_a)], hooks=("FORWARD",), pfs=(nb.IPV4,), session=s).attach()
        br_ids = br.kernel_ids()
        # floor and table chained (floor entry, floor exit + table entry, table exit), kfree_skb
        assert len(br.mids) == 1 and len(br_ids["link"]) == 4 and len(br_ids["prog"]) == 4
        ps = ProbeSet(["netfilter"], netns=[path.node], filt=Filter(proto=17, dport=port),
                      force={"netfilter": force} if force else None, session=s, host=host())
        choice = ps.start()["netfilter"]
        assert choice.hooks["nf_hook_slow"] == (force or "fentry")
        assert choice.hooks["ipt_do_table"] == "kprobe"
        ps_progs = set(ps.kernel_ids()["prog"])
        assert ps_progs
        send(path, port, COUNT)    # warm-up, not counted: the first packets run code TCG has not translated yet
        for r in range(ROUNDS):
            for n in (0, RULES):   # interleaved: slow drift of the VM's speed hits both alike
                set_forward_rules(path, n)
                br.reset()
                ps.reset()
                send(path, port, COUNT)
                (b_count, b_mean), (k_count, k_mean) = bracket_filter(br), kprobe_filter(ps)
                assert b_count == COUNT and k_count == COUNT      # exact, both, same packets
                rounds[n].append((b_mean, k_mean))
        ps.close()
        br.close()
    # closed: nothing of either is left in the kernel
    assert not set(br_ids["link"]) & bpftool_ids("link")
    assert gone(set(br_ids["prog"]), "prog") and gone(ps_progs, "prog")

    # per round: d0 = bracket - kprobe with no rules; at RULES the raw and the corrected ratio
    d0 = statistics.median(b0 - k0 for b0, k0 in rounds[0])
    raw = statistics.median(b / k for b, k in rounds[RULES])
    corrected = statistics.median((b - d0) / k for b, k in rounds[RULES])
    b, k = (statistics.median(x[i] for x in rounds[RULES]) for i in (0, 1))
    detail = "; ".join(f"N={n}: " + ", ".join(f"{b_ / 1e3:.1f}/{k_ / 1e3:.1f}" for b_, k_ in rounds[n])
                       for n in rounds)
    line = (f"{force or 'ladder'}: d0 {d0 / 1e3:.2f} us; N={RULES} bracket {b / 1e3:.1f} us kprobe {k / 1e3:.1f} us "
            f"(medians); ratio raw {raw:.3f} corrected {corrected:.3f} [bracket/kprobe us per round: {detail}]")
    print(line)
    assert d0 > 0, line
    assert raw >= 1.0, line        # the bracket interval contains the kprobe's
    assert LOW <= corrected <= HIGH, line

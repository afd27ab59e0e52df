"""Netfilter bracket probes: what one bracket costs a packet, and what brackets cost a TCP stream.

Pod A -> node -> pod B in network namespaces (the probe tests' path), the node's filter table
(iptables-legacy, N=0 rules) forwarding; brackets linked in the node's namespace only.

1. Cost per table per packet, in the kernel, paired in one run: two empty outer pairs (A at
   -1001/-998, B at -2001/-1998) on the same packets, and an inner bracket pair — exactly what
   a bracket adds to a table's hook — inside one of them, then inside the other (alternating
   attachments). The outer holding it minus the one without is the inner pair's full cost per
   packet: both programs and the two extra hook-slot calls nf_hook_slow makes for them. Also
   the inner pair's bpf_stats run time (programs only, stats' clock reads included). Then the
   same A/B for a bracket chained to its neighbour (one program and one hook slot): what each
   further table costs where nothing else is registered between tables.
2. TCP stream (iperf3, pinned to CPUs 0,1) with brackets on every table of the node (the plan
   for the namespace, filtered to the A-side interface) vs none: ROUNDS paired rounds in a
   seeded order; the loss is the median of per-round on/off ratios.
Targets (DESIGN.md): <= 30 ns per table per packet; <= 5 % TCP stream loss. Exit 1 if missed.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import time

ROUNDS = int(os.environ.get("CNITRACE_BENCH_ROUNDS", "4"))
ROUND_S = 2
PACKETS = 3000
PAIRS = 2
TARGETS = {"ns_per_table": 30.0, "loss_pct": 5.0}


def cost_plan(inner_in: int):
    """Two empty outer pairs on ipv4 FORWARD, A (-1001, -998) and B (-2001, -1998), and an inner
    bracket pair inside one of them (slot 2). Swapping which outer holds it cancels any cost of
    position in the hook's list."""
    from cnitrace.probes import nfbracket as nb
    base = -1000 if inner_in == 0 else -2000
    return nb.Plan((nb.Bracket(nb.IPV4, 2, -1001, -998), nb.Bracket(nb.IPV4, 2, -2001, -1998),
                    nb.Bracket(nb.IPV4, 2, base, base + 1)))


def prog_run(fds) -> tuple[int, int]:
    from cnitrace.probes.bpfsys import prog_info
    t = n = 0
    for fd in fds:
        info, _ = prog_info(fd)
        t, n = t + info.run_time_ns, n + info.run_cnt
    return t, n


def per_packet_cost(path, r) -> dict:
    """A bracket's full cost per packet: (A with inner - B) and (B with inner - A), averaged over
    PAIRS alternating attachments; and the inner programs' bpf_stats run time."""
    from cnitrace.collectors.bpfprog.stats import enable_stats_fd
    from cnitrace.probes import nfbracket as nb
    from tests.host.probes_path import send

    diffs, stats, counts, inner_ns = [], [], [], []
    for i in range(2 * PAIRS):
        holder = i % 2
        with nb.Brackets([(path.node, path.node_a)], plans={path.node: cost_plan(holder)}, drops=False) as br:
            send(path, 9, PACKETS)                          # no stats: the A/B in the kernel
            a, b, inner = (h for _, _, _, h, _ in br.raw())
            with_inner, without = (a, b) if holder == 0 else (b, a)
            diffs.append(with_inner.mean - without.mean)
            counts.append(with_inner.count)
            inner_ns.append(inner.mean)
            fds = [rec["fd"] for rec in br.created if rec["kind"] == "bpf_prog" and rec.get("slot") == 2]
            fd = enable_stats_fd()
            try:
                t0, n0 = prog_run(fds)
                send(path, 9, PACKETS // 3)
                t1, n1 = prog_run(fds)
            finally:
                os.close(fd)
            stats.append((t1 - t0) / max((n1 - n0) / 2, 1))   # entry + exit per packet
    return {"ns_per_table": statistics.median(diffs), "diffs": diffs, "count": min(counts),
            "stats_ns_per_table": statistics.median(stats), "interval_ns": statistics.median(inner_ns)}


def chained_plan(holder: int):
    """Outer empty pairs A (-1010, -990) and B (-2010, -1990), each holding one inner bracket;
    the holder's is followed by a second one chained to it (one program closes the first and
    opens the second), the way the plan links tables with nothing registered between them."""
    from cnitrace.probes import nfbracket as nb
    brackets = [nb.Bracket(nb.IPV4, 2, -1010, -990), nb.Bracket(nb.IPV4, 2, -2010, -1990),
                nb.Bracket(nb.IPV4, 2, -1000, -999), nb.Bracket(nb.IPV4, 2, -2000, -1999)]
    base = -1000 if holder == 0 else -2000
    brackets.append(nb.Bracket(nb.IPV4, 2, base + 2, base + 3))
    return nb.Plan(tuple(brackets), chains=((2 + holder, 4),))


def chained_cost(path) -> dict:
    """What one more bracket costs a packet where it chains to its neighbour (one program and one
    hook slot instead of two of each): outer A/B means, with and without the chained second."""
    from cnitrace.probes import nfbracket as nb
    from tests.host.probes_path import send

    diffs = []
    for i in range(2 * PAIRS):
        holder = i % 2
        with nb.Brackets([(path.node, path.node_a)], plans={path.node: chained_plan(holder)}, drops=False) as br:
            assert br.mids == [(2 + holder, 4)]
            send(path, 9, PACKETS)
            a, b = (h for _, _, _, h, _ in br.raw()[:2])
            with_second, without = (a, b) if holder == 0 else (b, a)
            diffs.append(with_second.mean - without.mean)
    return {"ns_per_table": statistics.median(diffs), "diffs": diffs}


# BPF_MOV64_IMM(r0, 1) (NF_ACCEPT); BPF_EXIT_INSN(): a netfilter program that does nothing
NULL_PROG = bytes([0xb7, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x95, 0, 0, 0, 0, 0, 0, 0])


def dispatch_cost(path) -> dict:
    """What the kernel charges for any two programs on a hook, whatever they do: outer A/B as
    above, the holder also running two do-nothing programs (two hook slots, two program runs).
    Bounds what any pair of bracket programs can cost from below (and one, a chained table)."""
    from cnitrace.probes import bpfsys
    from cnitrace.probes import nfbracket as nb
    from tests.host.probes_path import send

    diffs = []
    outer = nb.Plan((nb.Bracket(nb.IPV4, 2, -1010, -990), nb.Bracket(nb.IPV4, 2, -2010, -1990)))
    for i in range(2 * PAIRS):
        holder = i % 2
        base = -1000 if holder == 0 else -2000
        fds: list[int] = []
        with nb.Brackets([(path.node, path.node_a)], plans={path.node: outer}, drops=False) as br:
            try:
                def link() -> None:
                    for prio in (base, base + 1):
                        prog = bpfsys.load_program(NULL_PROG, prog_type=bpfsys.BPF_PROG_TYPE_NETFILTER,
                                                   attach_type=bpfsys.BPF_NETFILTER, name="cnit_nfb_null")
                        fds.append(prog)
                        fds.append(bpfsys.link_netfilter(prog, nb.IPV4, 2, prio))
                nb.in_netns(path.node, link)
                send(path, 9, PACKETS)
                a, b = (h for _, _, _, h, _ in br.raw())
                with_null, without = (a, b) if holder == 0 else (b, a)
                diffs.append(with_null.mean - without.mean)
            finally:
                for fd in reversed(fds):
                    os.close(fd)
    return {"ns_per_pair": statistics.median(diffs), "diffs": diffs}


def iperf(r, path, seconds: int) -> float:
    from tests.bench.bench_probe_overhead import _iperf
    return _iperf(r, path, seconds)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_nfbracket: needs root")
        return 1
    from cnitrace.core.capability import Host
    from cnitrace.core.runner import DEFAULT_RUNNER as r
    from cnitrace.core.session import Session
    from cnitrace.probes import nfbracket as nb
    from tests.host.probes_path import build, set_forward_rules
    from tests.support.netns import tracked

    if not Host().check("nf_bpf").usable:
        print(f"bench_nfbracket: nf_bpf unusable: {Host().check('nf_bpf').reason}")
        return 1
    with Session() as s:
        path = build(tracked(s))            # namespaces recorded before they exist: removed on exit or Ctrl-C
        set_forward_rules(path, 0)
        r.run(["iptables-legacy", "-A", "OUTPUT", "-p", "icmp", "-j", "DROP"], netns=path.b)

        cost = per_packet_cost(path, r)
        print(f"per table per packet (in-kernel A/B, >= {cost['count']} packets per run): "
              f"{cost['ns_per_table']:.1f} ns (median of {', '.join(f'{d:.0f}' for d in cost['diffs'])}); "
              f"an empty bracket's own interval (the floor) {cost['interval_ns']:.0f} ns")
        print(f"  bpf_stats run time of a bracket's two programs: {cost['stats_ns_per_table']:.1f} ns per packet "
              "(programs only, stats clock reads included)")
        null = dispatch_cost(path)
        print(f"the kernel's own charge for two do-nothing programs on a hook (two hook slots, two runs): "
              f"{null['ns_per_pair']:.1f} ns per packet (median of {', '.join(f'{d:.0f}' for d in null['diffs'])}): "
              f"the floor under any pair of bracket programs, and half of it under a chained one")
        chained = chained_cost(path)
        print(f"per table per packet where brackets chain (nothing registered between tables; the floor "
              f"chains to the first table): {chained['ns_per_table']:.1f} ns "
              f"(median of {', '.join(f'{d:.0f}' for d in chained['diffs'])})")

        server = subprocess.Popen(["ip", "netns", "exec", path.b, "iperf3", "-s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s.on_exit(lambda: (server.terminate(), server.wait(5)))
        time.sleep(0.5)
        iperf(r, path, 1)                                   # warm-up
        ratios, offs, ons, nslots = [], [], [], 0
        for i in range(ROUNDS):
            order = ["off", "on"]
            random.Random(i).shuffle(order)
            got = {}
            for label in order:
                if label == "off":
                    got[label] = iperf(r, path, ROUND_S)
                    continue
                with nb.Brackets([(path.node, path.node_a)], session=s) as br:
                    nslots = len(br.slots)
                    got[label] = iperf(r, path, ROUND_S)
            offs.append(got["off"])
            ons.append(got["on"])
            ratios.append(got["on"] / got["off"])
            print(f"  round {i + 1}: off {got['off'] / 1e9:.2f} Gbit/s, on {got['on'] / 1e9:.2f} Gbit/s "
                  f"({nslots} brackets)", flush=True)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        loss = (1 - statistics.median(ratios)) * 100
        print(f"TCP stream loss with brackets on every table: {loss:.2f} % (median of {len(ratios)} paired ratios; "
              f"middle half {(1 - q[2]) * 100:.2f} .. {(1 - q[0]) * 100:.2f} %); "
              f"off median {statistics.median(offs) / 1e9:.2f} Gbit/s")
    best = min(cost["ns_per_table"], chained["ns_per_table"])
    ok = best <= TARGETS["ns_per_table"] and loss <= TARGETS["loss_pct"]
    print(f"targets: <= {TARGETS['ns_per_table']:.0f} ns per table per packet: "
          f"{'met' if best <= TARGETS['ns_per_table'] else 'MISSED'} (pair {cost['ns_per_table']:.0f}, "
          f"chained {chained['ns_per_table']:.0f}); "
          f"<= {TARGETS['loss_pct']:.0f} % loss: {'met' if loss <= TARGETS['loss_pct'] else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

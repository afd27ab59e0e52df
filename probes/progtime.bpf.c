/* tc_bpf: run time of the tc / XDP BPF programs on the selected interfaces.
 *
 * fentry/fexit on each program itself (CNIT_HOOK_BPF_PROG): BTF trampolines on the target
 * program, loaded by cnitrace.probes.progtime through bpf(2) with attach_prog_fd (bcc's own
 * kfunc attach only resolves vmlinux functions). A loaded tracing program has exactly one
 * target, so each target takes a slot: progtime_entry<N> / progtime_exit<N> share one body
 * with the slot as a constant. Entry timestamps are kept per CPU and per slot (a program
 * runs to completion on its CPU; nesting of one program on one CPU is not expected on the
 * tc path), and the aggregate is a per-CPU count / sum / log2 histogram per slot.
 *
 * Fallback (CNIT_HOOK_TCF_CLASSIFY): a kprobe/kretprobe pair on tcf_classify, the tc
 * classify path that runs the bpf filters of a clsact hook, filtered in the kernel to the
 * selected (netns, ifindex): per interface, all filters of the hook, not per program.
 */
#include "stages.h"

#ifndef CNIT_HOOK_BPF_PROG
#define CNIT_HOOK_BPF_PROG 0
#endif
#ifndef CNIT_HOOK_TCF_CLASSIFY
#define CNIT_HOOK_TCF_CLASSIFY 0
#endif
#ifndef CNIT_NPROG
#define CNIT_NPROG 0
#endif
#define CNIT_MAX_PROGS 16     /* cnitrace.probes.progtime.MAX_PROGS */

#if CNIT_HOOK_BPF_PROG
BPF_PERCPU_ARRAY(progtime_start, u64, CNIT_MAX_PROGS);
BPF_PERCPU_ARRAY(progtime_agg, struct cnit_agg, CNIT_MAX_PROGS);

static __always_inline int progtime_enter(u32 slot)
{
    u64 *ts = progtime_start.lookup(&slot);
    if (ts)
        *ts = bpf_ktime_get_ns();
    return 0;
}

static __always_inline int progtime_leave(u32 slot)
{
    u64 now = bpf_ktime_get_ns();   /* first: keep the lookup out of the timed interval */
    u64 *ts = progtime_start.lookup(&slot);
    if (!ts || !*ts)
        return 0;            /* attached while the program was running */
    u64 ns = now - *ts;
    *ts = 0;
    struct cnit_agg *a = progtime_agg.lookup(&slot);
    if (a)
        cnit_agg_add(a, ns);
    return 0;
}

/* One entry/exit pair per slot; the macro holds no map call (bcc cannot rewrite those). */
#define CNIT_PROGTIME_PAIR(n) \
    int progtime_entry##n(void *ctx) { return progtime_enter(n); } \
    int progtime_exit##n(void *ctx) { return progtime_leave(n); }

#if CNIT_NPROG > 0
CNIT_PROGTIME_PAIR(0)
#endif
#if CNIT_NPROG > 1
CNIT_PROGTIME_PAIR(1)
#endif
#if CNIT_NPROG > 2
CNIT_PROGTIME_PAIR(2)
#endif
#if CNIT_NPROG > 3
CNIT_PROGTIME_PAIR(3)
#endif
#if CNIT_NPROG > 4
CNIT_PROGTIME_PAIR(4)
#endif
#if CNIT_NPROG > 5
CNIT_PROGTIME_PAIR(5)
#endif
#if CNIT_NPROG > 6
CNIT_PROGTIME_PAIR(6)
#endif
#if CNIT_NPROG > 7
CNIT_PROGTIME_PAIR(7)
#endif
#if CNIT_NPROG > 8
CNIT_PROGTIME_PAIR(8)
#endif
#if CNIT_NPROG > 9
CNIT_PROGTIME_PAIR(9)
#endif
#if CNIT_NPROG > 10
CNIT_PROGTIME_PAIR(10)
#endif
#if CNIT_NPROG > 11
CNIT_PROGTIME_PAIR(11)
#endif
#if CNIT_NPROG > 12
CNIT_PROGTIME_PAIR(12)
#endif
#if CNIT_NPROG > 13
CNIT_PROGTIME_PAIR(13)
#endif
#if CNIT_NPROG > 14
CNIT_PROGTIME_PAIR(14)
#endif
#if CNIT_NPROG > 15
CNIT_PROGTIME_PAIR(15)
#endif
#endif /* CNIT_HOOK_BPF_PROG */

#if CNIT_HOOK_TCF_CLASSIFY
struct classify_start {
    u64 ts;
    struct cnit_where w;
};

BPF_PERCPU_ARRAY(classify_start, struct classify_start, 1);
BPF_PERCPU_HASH(tc_classify_agg, struct cnit_where, struct cnit_agg, 256);

int classify_entry(struct pt_regs *ctx, void *skb)
{
    int z = 0;
    struct classify_start *s = classify_start.lookup(&z);
    if (!s)
        return 0;
    s->ts = 0;
    struct cnit_where w = cnit_skb_where(skb);
    if (!cnit_ifindex_candidate(w.ifindex))
        return 0;
    if (CNIT_FILTER_IFACE && !cnit_ifaces.lookup(&w))
        return 0;
    if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&w.netns))
        return 0;
    s->w = w;
    s->ts = bpf_ktime_get_ns();
    return 0;
}

int classify_return(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns();
    int z = 0;
    struct classify_start *s = classify_start.lookup(&z);
    if (!s || !s->ts)
        return 0;
    u64 ns = now - s->ts;
    s->ts = 0;
    struct cnit_agg zero = {};
    struct cnit_agg *a = tc_classify_agg.lookup_or_try_init(&s->w, &zero);
    if (a)
        cnit_agg_add(a, ns);
    return 0;
}
#endif /* CNIT_HOOK_TCF_CLASSIFY */

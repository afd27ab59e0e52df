/* nfbracket: measured time per iptables table / nft base chain without kprobes or fentry.
 *
 * A netfilter hook runs its registered functions in priority order. Two BPF netfilter
 * programs (BPF_PROG_TYPE_NETFILTER, kernel >= 6.4) linked at priority p-1 and p+1 around a
 * table registered at p bracket it: the entry program stores the time and the skb (a tag)
 * in this CPU's slot of the bracket, the exit program adds exit - entry to the bracket's
 * log2 histogram. A packet the table drops never reaches p+1: skb:kfree_skb (tp_btf) with
 * reason NETFILTER_DROP closes its interval into the bracket's drop histogram instead.
 *
 * One compile serves every bracket: NFB_NSLOTS pairs nfb_in_<n> / nfb_out_<n>, each bound to
 * its slot at compile time; the loader (cnitrace.probes.nfbracket) loads their instructions
 * as netfilter programs and links each at its (pf, hook, priority) in the bracket's netns,
 * so the hook and namespace filters cost nothing at run time. The interface filter is
 * compile-time constants (NFB_NS<n>, CNIT_NIF pairs CNIT_NS<i>/CNIT_IF<i>) checked against
 * the hook state's in/out devices. Struct fields are read at BTF offsets (-D CNIT_OFF_*) by
 * plain loads: the ctx's state/skb are BTF-typed pointers (as in a tp_btf program).
 * Every program returns NF_ACCEPT (1): a bracket never changes a verdict.
 */
#define CNIT_DIRECT 1
#include "stages.h"

#ifndef NFB_NSLOTS
#define NFB_NSLOTS 1
#endif
#ifndef NFB_DROP_REASON
#define NFB_DROP_REASON 0          /* SKB_DROP_REASON_NETFILTER_DROP from BTF; 0 = no drop probe */
#endif
#ifndef NFB_MAX_NS
#define NFB_MAX_NS 10000000ULL     /* an interval longer than 10 ms is a stale tag, not a table */
#endif
#define NFB_MAX_SLOTS 16
#define NF_ACCEPT 1

struct nfb_open {
    u64 skb;        /* tag: the skb in the bracket on this CPU, 0 when none */
    u64 ts;
};

BPF_PERCPU_ARRAY(nfb_open, struct nfb_open, NFB_MAX_SLOTS);
BPF_PERCPU_ARRAY(nf_table_agg, struct cnit_agg, NFB_MAX_SLOTS);  /* per slot: passed the table */
BPF_PERCPU_ARRAY(nfb_drop_agg, struct cnit_agg, NFB_MAX_SLOTS);  /* per slot: dropped inside it */
BPF_PERCPU_ARRAY(nfb_lost, u64, NFB_MAX_SLOTS);                  /* exits of another skb than the tag */

#ifndef CNIT_NFB_ENTRY
#define CNIT_NFB_ENTRY 0
#endif

/* Is a packet at this hook in namespace `ns` on a selected interface (in or out)? The pairs
 * are constants: for one slot (constant ns) the compiler keeps only that namespace's ifindexes. */
#define NFB_HIT(n) if (ns == CNIT_NS##n && (in == CNIT_IF##n || (out && out == CNIT_IF##n))) return 1;
static __always_inline int nfb_pair_hit(u32 ns, u32 in, u32 out)
{
#if CNIT_NIF > 0
    NFB_HIT(0)
#endif
#if CNIT_NIF > 1
    NFB_HIT(1)
#endif
#if CNIT_NIF > 2
    NFB_HIT(2)
#endif
#if CNIT_NIF > 3
    NFB_HIT(3)
#endif
#if CNIT_NIF > 4
    NFB_HIT(4)
#endif
#if CNIT_NIF > 5
    NFB_HIT(5)
#endif
#if CNIT_NIF > 6
    NFB_HIT(6)
#endif
#if CNIT_NIF > 7
    NFB_HIT(7)
#endif
    return 0;
}

/* CNIT_NFB_ENTRY: only packets that entered the node on a selected interface (skb->skb_iif,
 * kept through forwarding), the packets a transit probe times; else in or out device. */
static __always_inline int nfb_selected(const void *state, const void *skb, u32 ns)
{
#if CNIT_NIF == 0
    return 1;
#elif CNIT_NFB_ENTRY
    u32 iif = 0;
    CNIT_READ(iif, skb, CNIT_OFF_SKB_IIF);
    return nfb_pair_hit(ns, iif, 0);
#else
    void *dev = 0;
    u32 in = 0, out = 0;
    CNIT_READ(dev, state, CNIT_OFF_HOOK_STATE_IN);
    if (dev)
        CNIT_READ(in, dev, CNIT_OFF_DEV_IFINDEX);
    CNIT_READ(dev, state, CNIT_OFF_HOOK_STATE_OUT);
    if (dev)
        CNIT_READ(out, dev, CNIT_OFF_DEV_IFINDEX);
    return nfb_pair_hit(ns, in, out);
#endif
}

/* NFB_EVENTS (for `cnitrace trace`): one ring-buffer event per bracket a packet of the trace's
 * IPv4 5-tuple (CNIT_PROTO/SADDR/DADDR/DPORT constants, 0 = any) passes or dies in, with its IP ID
 * (which probe it is) and its conntrack info at that point (skb->_nfct & 7, 255 = untracked).
 * Read with the helper throughout: on the drop path the skb is a plain number. Netfilter
 * programs may call ringbuf_output (a base helper), not perf_submit: ring buffer only. */
#ifndef NFB_EVENTS
#define NFB_EVENTS 0
#endif
#if NFB_EVENTS
struct nfb_event {
    u64 ts;         /* exit (or drop) time, CLOCK_MONOTONIC */
    u64 ns;         /* time inside the bracket (floor not subtracted) */
    u32 saddr, daddr;
    u32 slot;
    u16 ip_id;      /* host order */
    u16 sport, dport;
    u8 proto, dropped, ctinfo, pad;
};

static __always_inline void nfb_emit(void *ctx, u64 skb, u32 slot, u64 now, u64 ns, u8 dropped)
{
    u16 l3 = 0;
    u64 data = 0;
    u8 iph[20] = {};
    u16 ports[2] = {};
    if (bpf_probe_read_kernel(&l3, sizeof(l3), (void *)(skb + CNIT_OFF_SKB_PROTOCOL)) || l3 != htons(0x0800))
        return;
    if (bpf_probe_read_kernel(&data, sizeof(data), (void *)(skb + CNIT_OFF_SKB_DATA)) || !data ||
        bpf_probe_read_kernel(iph, sizeof(iph), (void *)data))
        return;
    if (CNIT_PROTO && iph[9] != CNIT_PROTO)
        return;
    if (CNIT_SADDR && *(u32 *)&iph[12] != (u32)CNIT_SADDR)
        return;
    if (CNIT_DADDR && *(u32 *)&iph[16] != (u32)CNIT_DADDR)
        return;
    if (bpf_probe_read_kernel(ports, sizeof(ports), (void *)(data + (iph[0] & 0x0f) * 4)))
        return;
    if (CNIT_DPORT && ports[1] != (u16)CNIT_DPORT)
        return;
    struct nfb_event e = {};
    e.ts = now;
    e.ns = ns;
    e.saddr = *(u32 *)&iph[12];
    e.daddr = *(u32 *)&iph[16];
    e.slot = slot;
    e.ip_id = ((u16)iph[4] << 8) | iph[5];
    e.sport = ntohs(ports[0]);
    e.dport = ntohs(ports[1]);
    e.proto = iph[9];
    e.dropped = dropped;
    e.ctinfo = 255;
#ifdef CNIT_OFF_SKB_NFCT
    u64 nfct = 0;
    if (!bpf_probe_read_kernel(&nfct, sizeof(nfct), (void *)(skb + CNIT_OFF_SKB_NFCT)) && nfct)
        e.ctinfo = nfct & 7;
#endif
    if (cnit_events.ringbuf_output(&e, sizeof(e), 0)) {
        int zero = 0;
        u64 *lost = cnit_lost.lookup(&zero);
        if (lost)
            *lost += 1;
    }
}
#endif

static __always_inline int nfb_enter(void *ctx, u32 slot, u32 ns)
{
    void *state = 0, *skb = 0;
    CNIT_READ(state, ctx, CNIT_OFF_NFCTX_STATE);
    CNIT_READ(skb, ctx, CNIT_OFF_NFCTX_SKB);
    if (!nfb_selected(state, skb, ns))
        return NF_ACCEPT;
    struct nfb_open *o = nfb_open.lookup(&slot);
    if (!o)
        return NF_ACCEPT;
    o->skb = (u64)skb;
    o->ts = bpf_ktime_get_ns();
    return NF_ACCEPT;
}

static __always_inline int nfb_exit(void *ctx, u32 slot)
{
    u64 now = bpf_ktime_get_ns();
    void *skb = 0;
    struct nfb_open *o = nfb_open.lookup(&slot);
    if (!o || !o->skb)
        return NF_ACCEPT;
    CNIT_READ(skb, ctx, CNIT_OFF_NFCTX_SKB);
    if (o->skb != (u64)skb) {
        u64 *lost = nfb_lost.lookup(&slot);
        if (lost)
            *lost += 1;
        o->skb = 0;
        return NF_ACCEPT;
    }
    o->skb = 0;
    u64 ns = now - o->ts;
    if (ns > NFB_MAX_NS)
        return NF_ACCEPT;
    struct cnit_agg *a = nf_table_agg.lookup(&slot);
    if (a)
        cnit_agg_add(a, ns);
#if NFB_EVENTS
    nfb_emit(ctx, (u64)skb, slot, now, ns, 0);
#endif
    return NF_ACCEPT;
}

#ifndef NFB_NS0
#define NFB_NS0 0
#endif
/* One pair per slot; bcc rewrites map calls only outside macros, so these only call. */
#define NFB_PAIR(n) \
    int nfb_in_##n(void *ctx) { return nfb_enter(ctx, n, NFB_NS##n); } \
    int nfb_out_##n(void *ctx) { return nfb_exit(ctx, n); }

NFB_PAIR(0)
#if NFB_NSLOTS > 1
NFB_PAIR(1)
#endif
#if NFB_NSLOTS > 2
NFB_PAIR(2)
#endif
#if NFB_NSLOTS > 3
NFB_PAIR(3)
#endif
#if NFB_NSLOTS > 4
NFB_PAIR(4)
#endif
#if NFB_NSLOTS > 5
NFB_PAIR(5)
#endif
#if NFB_NSLOTS > 6
NFB_PAIR(6)
#endif
#if NFB_NSLOTS > 7
NFB_PAIR(7)
#endif
#if NFB_NSLOTS > 8
NFB_PAIR(8)
#endif
#if NFB_NSLOTS > 9
NFB_PAIR(9)
#endif
#if NFB_NSLOTS > 10
NFB_PAIR(10)
#endif
#if NFB_NSLOTS > 11
NFB_PAIR(11)
#endif
#if NFB_NSLOTS > 12
NFB_PAIR(12)
#endif
#if NFB_NSLOTS > 13
NFB_PAIR(13)
#endif
#if NFB_NSLOTS > 14
NFB_PAIR(14)
#endif
#if NFB_NSLOTS > 15
NFB_PAIR(15)
#endif

/* Chained brackets (NFB_NMID): where bracket j's entry would directly follow bracket i's exit
 * on a hook, one program linked at i's exit closes i and then opens j (its time taken after
 * closing i), so each packet runs one program fewer there. NFB_MID<k>_FROM/_TO/_NS: i, j and
 * j's namespace inode. */
#ifndef NFB_NMID
#define NFB_NMID 0
#endif
#define NFB_MIDP(k) \
    int nfb_mid_##k(void *ctx) { nfb_exit(ctx, NFB_MID##k##_FROM); return nfb_enter(ctx, NFB_MID##k##_TO, NFB_MID##k##_NS); }
#if NFB_NMID > 0
NFB_MIDP(0)
#endif
#if NFB_NMID > 1
NFB_MIDP(1)
#endif
#if NFB_NMID > 2
NFB_MIDP(2)
#endif
#if NFB_NMID > 3
NFB_MIDP(3)
#endif
#if NFB_NMID > 4
NFB_MIDP(4)
#endif
#if NFB_NMID > 5
NFB_MIDP(5)
#endif
#if NFB_NMID > 6
NFB_MIDP(6)
#endif
#if NFB_NMID > 7
NFB_MIDP(7)
#endif
#if NFB_NMID > 8
NFB_MIDP(8)
#endif
#if NFB_NMID > 9
NFB_MIDP(9)
#endif
#if NFB_NMID > 10
NFB_MIDP(10)
#endif
#if NFB_NMID > 11
NFB_MIDP(11)
#endif
#if NFB_NMID > 12
NFB_MIDP(12)
#endif
#if NFB_NMID > 13
NFB_MIDP(13)
#endif
#if NFB_NMID > 14
NFB_MIDP(14)
#endif

/* A packet dropped inside a table: nf_hook_slow frees it with NETFILTER_DROP on the same CPU,
 * before any later hook runs. The open slot tagged with this skb is the bracket it died in. */
static __always_inline void nfb_dropped(void *ctx, u64 skb, u32 slot, u64 now)
{
    struct nfb_open *o = nfb_open.lookup(&slot);
    if (!o || o->skb != skb)
        return;
    o->skb = 0;
    u64 ns = now - o->ts;
    if (ns > NFB_MAX_NS)
        return;
    struct cnit_agg *a = nfb_drop_agg.lookup(&slot);
    if (a)
        cnit_agg_add(a, ns);
#if NFB_EVENTS
    nfb_emit(ctx, skb, slot, now, ns, 1);
#endif
}

#if NFB_DROP_REASON
BPF_PERCPU_ARRAY(nfb_scratch, u64, 1);
int tpbtf__kfree_skb(u64 *ctx)
{
    if ((u32)ctx[2] != NFB_DROP_REASON)
        return 0;
    /* the skb as a plain number (written to a map value and read back), to compare with tags */
    int zero = 0;
    u64 *s = nfb_scratch.lookup(&zero);
    if (!s)
        return 0;
    *(volatile u64 *)s = ctx[0];
    u64 skb = *(volatile u64 *)s;
    u64 now = bpf_ktime_get_ns();
#pragma unroll
    for (u32 i = 0; i < NFB_NSLOTS; i++)
        nfb_dropped(ctx, skb, i, now);
    return 0;
}
#endif

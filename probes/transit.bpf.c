/* transit: receive -> transmit time per interface pair, keyed by skb address.
 *
 * The host has neither kprobes nor fentry, but the net tracepoints fire on it: the time
 * from net:netif_receive_skb on a selected interface to net:net_dev_start_xmit of the
 * same skb is the packet's time in the node's stack (routing, netfilter, OVS or tc):
 * measured, not modelled.
 * Filters (interfaces, netns, mark, 5-tuple) apply where the packet is received.
 */
#include <net/dropreason-core.h>   /* the kfree_skb tracepoint's reason field type (values: BTF) */
#include "stages.h"

/* Map calls must be in the main file for bcc: the filter lookups and the event emit. */
static __always_inline int selected(const void *skb, struct cnit_where *w)
{
#if CNIT_NIF > 0
    if (CNIT_FILTER_IFACE && !cnit_pair_selected(w))
        return 0;
#else
    if (CNIT_FILTER_IFACE && !cnit_ifaces.lookup(w))
        return 0;
#endif
    if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&w->netns))
        return 0;
    return cnit_packet_match(skb);
}

#if CNIT_EVENTS
static __always_inline void emit(void *ctx, void *ev, u32 size)
{
#if CNIT_RINGBUF
    int err = cnit_events.ringbuf_output(ev, size, 0);
#else
    int err = cnit_events.perf_submit(ctx, ev, size);
#endif
    if (err) {
        int zero = 0;
        u64 *lost = cnit_lost.lookup(&zero);
        if (lost)
            *lost += 1;
    }
}
#endif

#ifndef CNIT_HOOK_SKB_CONSUME_SKB
#define CNIT_HOOK_SKB_CONSUME_SKB 3
#endif
#ifndef CNIT_HOOK_SKB_KFREE_SKB
#define CNIT_HOOK_SKB_KFREE_SKB 3
#endif

#ifndef CNIT_TRANSIT_MAX_NS
#define CNIT_TRANSIT_MAX_NS 1000000000ULL   /* older entries are stale (skb freed, address reused) */
#endif

/* In-flight receives: a direct-mapped table indexed by the skb's address, tagged with it.
 * An array slot is found by arithmetic (the verifier inlines array lookups), where a hash
 * or LRU map costs a locked bucket walk, and an LRU update hundreds of ns on this path.
 * A slot taken by another live skb is overwritten (that packet goes untimed, counted in
 * transit_evicted): coverage, not correctness, is what a collision costs. */
#ifndef CNIT_TRANSIT_SLOTS_LOG2
#define CNIT_TRANSIT_SLOTS_LOG2 16
#endif
#define CNIT_TRANSIT_SLOTS (1U << CNIT_TRANSIT_SLOTS_LOG2)

struct inflight {
    u64 skb;          /* tag: the skb address, 0 when free */
    u64 ts;
    struct cnit_where in;
};

struct transit_key {
    u32 netns;
    u32 ifindex_in;
    u32 ifindex_out;
    u32 pad;
};

struct transit_event {
    u64 ts;
    u64 ns;
    u32 netns;
    u32 ifindex_in;
    u32 ifindex_out;
    u32 len;
};

BPF_ARRAY(transit_inflight, struct inflight, CNIT_TRANSIT_SLOTS);
BPF_PERCPU_ARRAY(transit_evicted, u64, 1);
BPF_PERCPU_HASH(transit_agg, struct transit_key, struct cnit_agg, 1024);

/* The skb's address as a number. A BTF-typed argument is a pointer the verifier tracks and
 * will not let us shift or hash; written to a map value and read back, it is a plain u64
 * (an inlined per-CPU array access, a few ns). */
#if CNIT_DIRECT
BPF_PERCPU_ARRAY(transit_scratch, u64, 1);
#endif
static __always_inline u64 transit_addr(const void *skb)
{
#if CNIT_DIRECT
    int zero = 0;
    u64 *s = transit_scratch.lookup(&zero);
    if (!s)
        return 0;
    *(volatile u64 *)s = (u64)skb;
    return *(volatile u64 *)s;
#else
    return (u64)skb;
#endif
}

/* skbs come from a slab of 256-byte objects: the low bits carry nothing */
static __always_inline u32 transit_slot(u64 addr)
{
    return (u32)((addr >> 8) ^ (addr >> (8 + CNIT_TRANSIT_SLOTS_LOG2))) & (CNIT_TRANSIT_SLOTS - 1);
}

static __always_inline int transit_start(const void *skb)
{
    void *dev = 0;
    struct cnit_where w = {};
    CNIT_READ(dev, skb, CNIT_OFF_SKB_DEV);
    if (!dev)
        return 0;
    CNIT_READ(w.ifindex, dev, CNIT_OFF_DEV_IFINDEX);
    if (!cnit_ifindex_candidate(w.ifindex))
        return 0;
    w.netns = cnit_dev_netns(dev);
    if (!selected(skb, &w))
        return 0;
    u64 addr = transit_addr(skb);
    u32 i = transit_slot(addr);
    struct inflight *f = transit_inflight.lookup(&i);
    if (!f)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (f->skb && f->skb != addr && now - f->ts < CNIT_TRANSIT_MAX_NS) {
        int zero = 0;
        u64 *n = transit_evicted.lookup(&zero);
        if (n)
            *n += 1;
    }
    *(volatile u64 *)&f->skb = 0;    /* the tag last: a reader never pairs a new tag with an old time */
    f->ts = now;
    f->in = w;
    *(volatile u64 *)&f->skb = addr;
    return 0;
}

/* A timed packet's end: transmitted (ifindex_out is the device it leaves on) or dropped inside
 * the node (ifindex_out 0: its time from receive to the drop, so that per-packet stage times,
 * which include dropped packets' work, compare with a transit that includes them too). */
static __always_inline int transit_done(void *ctx, const void *skb, int dropped)
{
    u64 addr = transit_addr(skb);
    u32 i = transit_slot(addr);
    struct inflight *f = transit_inflight.lookup(&i);
    if (!f || f->skb != addr)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 ns = now - f->ts;
    struct transit_key k = { .netns = f->in.netns, .ifindex_in = f->in.ifindex };
    f->skb = 0;
    if (ns > CNIT_TRANSIT_MAX_NS)
        return 0;
    void *dev = 0;
    if (!dropped)
        CNIT_READ(dev, skb, CNIT_OFF_SKB_DEV);
    if (dev)
        CNIT_READ(k.ifindex_out, dev, CNIT_OFF_DEV_IFINDEX);
    struct cnit_agg zero = {};
    struct cnit_agg *a = transit_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, ns);
#if CNIT_EVENTS
    u32 len = 0;
    CNIT_READ(len, skb, CNIT_OFF_SKB_LEN);
    struct transit_event e = { .ts = now, .ns = ns, .netns = k.netns, .ifindex_in = k.ifindex_in,
                               .ifindex_out = k.ifindex_out, .len = len };
    emit(ctx, &e, sizeof(e));
#endif
    return 0;
}

/* Backends per hook: CNIT_HOOK_<point> = 5 BTF-typed tracepoint (tp_btf: no trace record,
 * fields read by plain loads; the loader attaches the tpbtf__ functions itself, bcc cannot),
 * 4 raw tracepoint (no trace record is built), 3 classic tracepoint, 0 not attached. */
#if CNIT_HOOK_NET_NETIF_RECEIVE_SKB == 5
int tpbtf__netif_receive_skb(u64 *ctx)
{
    return transit_start((const void *)ctx[0]);
}
#elif CNIT_HOOK_NET_NETIF_RECEIVE_SKB == 4
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    return transit_start((const void *)ctx->args[0]);
}
#else
TRACEPOINT_PROBE(net, netif_receive_skb)
{
    return transit_start(args->skbaddr);
}
#endif

#if CNIT_HOOK_NET_NET_DEV_START_XMIT == 5
int tpbtf__net_dev_start_xmit(u64 *ctx)
{
    return transit_done(ctx, (const void *)ctx[0], 0);
}
#elif CNIT_HOOK_NET_NET_DEV_START_XMIT == 4
RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    return transit_done(ctx, (const void *)ctx->args[0], 0);
}
#else
TRACEPOINT_PROBE(net, net_dev_start_xmit)
{
    return transit_done(args, args->skbaddr, 0);
}
#endif

/* A received skb that is delivered locally never reaches a transmit; forget it when it is
 * consumed, so its address, once reused for an outgoing packet, is not mistaken for a transit.
 * A dropped one (skb:kfree_skb) ends its transit at the drop (transit_done, dropped). */
static __always_inline int transit_forget(const void *skb)
{
    u64 addr = transit_addr(skb);
    u32 i = transit_slot(addr);
    struct inflight *f = transit_inflight.lookup(&i);
    if (f && f->skb == addr)
        f->skb = 0;
    return 0;
}

#if CNIT_HOOK_SKB_CONSUME_SKB == 5
int tpbtf__consume_skb(u64 *ctx)
{
    return transit_forget((const void *)ctx[0]);
}
#elif CNIT_HOOK_SKB_CONSUME_SKB == 4
RAW_TRACEPOINT_PROBE(consume_skb)
{
    return transit_forget((const void *)ctx->args[0]);
}
#elif CNIT_HOOK_SKB_CONSUME_SKB == 3
TRACEPOINT_PROBE(skb, consume_skb)
{
    return transit_forget(args->skbaddr);
}
#endif

/* skb:kfree_skb: a drop ends the packet's transit there; a free that is not a drop (reasons
 * NOT_DROPPED_YET / CONSUMED, values from BTF) only forgets it. Args as in drops.bpf.c. */
static __always_inline int transit_freed(void *ctx, const void *skb, u32 reason)
{
    if (reason == CNIT_NOT_DROP_A || reason == CNIT_NOT_DROP_B)
        return transit_forget(skb);
    return transit_done(ctx, skb, 1);
}

#if CNIT_HOOK_SKB_KFREE_SKB == 5
int tpbtf__kfree_skb(u64 *ctx)
{
    return transit_freed(ctx, (const void *)ctx[0], (u32)ctx[2]);
}
#elif CNIT_HOOK_SKB_KFREE_SKB == 4
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    return transit_freed(ctx, (const void *)ctx->args[0], (u32)ctx->args[2]);
}
#elif CNIT_HOOK_SKB_KFREE_SKB == 3
TRACEPOINT_PROBE(skb, kfree_skb)
{
    return transit_freed(args, args->skbaddr, args->reason);
}
#endif

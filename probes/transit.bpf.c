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
    if (CNIT_FILTER_IFACE && !cnit_ifaces.lookup(w))
        return 0;
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

struct inflight {
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

/* per-CPU LRU lists: no global lock on the hot path (receive and transmit of a forwarded
 * skb run on the same CPU, and lookups still see every CPU's entries) */
BPF_F_TABLE("lru_hash", u64, struct inflight, transit_inflight, 16384, BPF_F_NO_COMMON_LRU);
BPF_PERCPU_HASH(transit_agg, struct transit_key, struct cnit_agg, 1024);

static __always_inline int transit_start(const void *skb)
{
    void *dev = 0;
    struct cnit_where w = {};
    bpf_probe_read_kernel(&dev, sizeof(dev), (const char *)skb + CNIT_OFF_SKB_DEV);
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&w.ifindex, sizeof(w.ifindex), (char *)dev + CNIT_OFF_DEV_IFINDEX);
    if (!cnit_ifindex_candidate(w.ifindex))
        return 0;
    w.netns = cnit_dev_netns(dev);
    if (!selected(skb, &w))
        return 0;
    u64 addr = (u64)skb;
    struct inflight f = { .ts = bpf_ktime_get_ns(), .in = w };
    transit_inflight.update(&addr, &f);
    return 0;
}

static __always_inline int transit_done(void *ctx, const void *skb)
{
    u64 addr = (u64)skb;
    struct inflight *f = transit_inflight.lookup(&addr);
    if (!f)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 ns = now - f->ts;
    u32 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), (const char *)skb + CNIT_OFF_SKB_LEN);
    struct cnit_where out = cnit_skb_where(skb);
    struct transit_key k = { .netns = f->in.netns, .ifindex_in = f->in.ifindex, .ifindex_out = out.ifindex };
    transit_inflight.delete(&addr);
    if (ns > CNIT_TRANSIT_MAX_NS)
        return 0;
    struct cnit_agg zero = {};
    struct cnit_agg *a = transit_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, ns);
#if CNIT_EVENTS
    struct transit_event e = { .ts = now, .ns = ns, .netns = k.netns, .ifindex_in = k.ifindex_in,
                               .ifindex_out = k.ifindex_out, .len = len };
    emit(ctx, &e, sizeof(e));
#endif
    return 0;
}

/* Backends per hook: CNIT_HOOK_<point> = 4 raw tracepoint (no trace record is built, the
 * cheapest hook on a kernel without fentry), 3 classic tracepoint, 0 not attached. */
#if CNIT_HOOK_NET_NETIF_RECEIVE_SKB == 4
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

#if CNIT_HOOK_NET_NET_DEV_START_XMIT == 4
RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    return transit_done(ctx, (const void *)ctx->args[0]);
}
#else
TRACEPOINT_PROBE(net, net_dev_start_xmit)
{
    return transit_done(args, args->skbaddr);
}
#endif

/* A received skb that is delivered locally or dropped never reaches a transmit; forget it
 * when it is freed, so its address, once reused for an outgoing packet, is not mistaken
 * for a transit. */
static __always_inline int transit_forget(const void *skb)
{
    u64 addr = (u64)skb;
    transit_inflight.delete(&addr);
    return 0;
}

#if CNIT_HOOK_SKB_CONSUME_SKB == 4
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

#if CNIT_HOOK_SKB_KFREE_SKB == 4
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    return transit_forget((const void *)ctx->args[0]);
}
#elif CNIT_HOOK_SKB_KFREE_SKB == 3
TRACEPOINT_PROBE(skb, kfree_skb)
{
    return transit_forget(args->skbaddr);
}
#endif

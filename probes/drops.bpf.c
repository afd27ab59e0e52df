/* drops: skb:kfree_skb by drop reason and kernel location, on the selected interfaces.
 *
 * The reason is the kernel's enum skb_drop_reason (names read from BTF in user space); the
 * location is the caller's address, symbolised in user space. Frees that are not drops
 * (NOT_DROPPED_YET, CONSUMED: values from BTF as CNIT_NOT_DROP_A/B) are ignored in the kernel.
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

struct drop_key {
    u64 location;
    u32 netns;
    u32 ifindex;
    u32 reason;
    u16 protocol;
    u16 pad;
};

struct drop_event {
    u64 ts;
    u64 location;
    u32 netns;
    u32 ifindex;
    u32 reason;
    u32 pad;
};

/* value: count of drops and the sum/histogram of their lengths in bytes */
BPF_PERCPU_HASH(drops_agg, struct drop_key, struct cnit_agg, 4096);

static __always_inline int drop_seen(void *ctx, const void *skb, u64 location, u32 reason)
{
    if (reason == CNIT_NOT_DROP_A || reason == CNIT_NOT_DROP_B)
        return 0;
    void *dev = 0;
    struct cnit_where w = {};
    CNIT_READ(dev, skb, CNIT_OFF_SKB_DEV);
    if (dev) {
        CNIT_READ(w.ifindex, dev, CNIT_OFF_DEV_IFINDEX);
        if (!cnit_ifindex_candidate(w.ifindex))
            return 0;
        w.netns = cnit_dev_netns(dev);
    }
    if (!selected(skb, &w))
        return 0;
    u32 len = 0;
    u16 protocol = 0;
    CNIT_READ(len, skb, CNIT_OFF_SKB_LEN);
    CNIT_READ(protocol, skb, CNIT_OFF_SKB_PROTOCOL);
    struct drop_key k = { .location = location, .netns = w.netns, .ifindex = w.ifindex,
                          .reason = reason, .protocol = ntohs(protocol) };
    struct cnit_agg zero = {};
    struct cnit_agg *a = drops_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, len);
#if CNIT_EVENTS
    struct drop_event e = { .ts = bpf_ktime_get_ns(), .location = k.location, .netns = k.netns,
                            .ifindex = k.ifindex, .reason = reason };
    emit(ctx, &e, sizeof(e));
#endif
    return 0;
}

/* CNIT_HOOK_SKB_KFREE_SKB = 4: raw tracepoint, args (skb, location, reason, ...) as in
 * TP_PROTO since 5.17; 3: the classic tracepoint's record. */
#if CNIT_HOOK_SKB_KFREE_SKB == 5
int tpbtf__kfree_skb(u64 *ctx)
{
    return drop_seen(ctx, (const void *)ctx[0], ctx[1], (u32)ctx[2]);
}
#elif CNIT_HOOK_SKB_KFREE_SKB == 4
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    return drop_seen(ctx, (const void *)ctx->args[0], ctx->args[1], (u32)ctx->args[2]);
}
#else
TRACEPOINT_PROBE(skb, kfree_skb)
{
    return drop_seen(args, args->skbaddr, (u64)args->location, args->reason);
}
#endif

/* Shared by the per-stage probes: in-kernel aggregation and the in-kernel filters.
 *
 * Why aggregation here: one map update per packet (count, sum, log2 histogram in a per-CPU
 * slot) costs tens of ns, where streaming each packet to user space would cost microseconds.
 * Struct offsets (CNIT_OFF_*) come from the running kernel's BTF as -D cflags, because the
 * headers bcc compiles against may belong to another kernel version.
 */
#ifndef CNIT_STAGES_H
#define CNIT_STAGES_H

#include "cnitrace.h"

#define CNIT_SLOTS 40   /* slot 0: v == 0; slot k: 2^(k-1) <= v < 2^k; the last slot takes the rest */

struct cnit_agg {
    u64 count;
    u64 sum;
    u64 slots[CNIT_SLOTS];
};

static __always_inline u32 cnit_log2_slot(u64 v)
{
    u32 r = 0;
    if (v >= (1ULL << 32)) { v >>= 32; r += 32; }
    if (v >= (1ULL << 16)) { v >>= 16; r += 16; }
    if (v >= (1ULL << 8))  { v >>= 8;  r += 8; }
    if (v >= (1ULL << 4))  { v >>= 4;  r += 4; }
    if (v >= (1ULL << 2))  { v >>= 2;  r += 2; }
    if (v >= (1ULL << 1))  { r += 1; }
    return v ? r + 1 : 0;   /* v is >= 1 here unless it was 0 */
}

/* bcc rewrites map calls only in the main source file and never inside macros, so each
 * probe looks its slot up itself (map.lookup_or_try_init) and adds through this. */
static __always_inline void cnit_agg_add(struct cnit_agg *a, u64 v)
{
    u32 s = cnit_log2_slot(v);
    if (s >= CNIT_SLOTS)
        s = CNIT_SLOTS - 1;
    a->count += 1;
    a->sum += v;
    a->slots[s] += 1;
}

/* Reading a kernel struct field at a BTF offset. In a BTF-typed tracepoint program
 * (CNIT_DIRECT=1, backend tp_btf) the arguments are typed pointers: a field is a plain load
 * the verifier checks against BTF (a fault reads 0), a few ns where bpf_probe_read_kernel is
 * a helper call of 15-30 ns. Elsewhere (raw and classic tracepoints, kprobes) the helper. */
#ifndef CNIT_DIRECT
#define CNIT_DIRECT 0
#endif
#if CNIT_DIRECT
#define CNIT_READ(dst, base, off) ((dst) = *(typeof(dst) *)((const char *)(base) + (off)))
#else
#define CNIT_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))
#endif

/* Where an skb is: its device's network namespace inode and ifindex. */
struct cnit_where {
    u32 netns;
    u32 ifindex;
};

#ifdef CNIT_OFF_SKB_DEV   /* probes that see skbs */
static __always_inline u32 cnit_dev_netns(void *dev)
{
    void *net = 0;
    u32 inum = 0;
    CNIT_READ(net, dev, CNIT_OFF_DEV_NET);
    if (net)
        CNIT_READ(inum, net, CNIT_OFF_NET_INUM);
    return inum;
}

static __always_inline struct cnit_where cnit_skb_where(const void *skb)
{
    struct cnit_where w = {};
    void *dev = 0;
    CNIT_READ(dev, skb, CNIT_OFF_SKB_DEV);
    if (!dev)
        return w;
    CNIT_READ(w.ifindex, dev, CNIT_OFF_DEV_IFINDEX);
    w.netns = cnit_dev_netns(dev);
    return w;
}
#endif

/* A cheap first cut on the hot path: the selected interfaces' ifindexes as constants
 * (CNIT_NIF of them, CNIT_IF0..CNIT_IF7), compared before any map lookup or netns read;
 * the (netns, ifindex) map lookup then settles it. CNIT_NIF=0: no pre-check. */
#ifndef CNIT_NIF
#define CNIT_NIF 0
#endif
static __always_inline int cnit_ifindex_candidate(u32 ifindex)
{
#if CNIT_NIF == 0
    return 1;
#else
    if (ifindex == CNIT_IF0) return 1;
#if CNIT_NIF > 1
    if (ifindex == CNIT_IF1) return 1;
#endif
#if CNIT_NIF > 2
    if (ifindex == CNIT_IF2) return 1;
#endif
#if CNIT_NIF > 3
    if (ifindex == CNIT_IF3) return 1;
#endif
#if CNIT_NIF > 4
    if (ifindex == CNIT_IF4) return 1;
#endif
#if CNIT_NIF > 5
    if (ifindex == CNIT_IF5) return 1;
#endif
#if CNIT_NIF > 6
    if (ifindex == CNIT_IF6) return 1;
#endif
#if CNIT_NIF > 7
    if (ifindex == CNIT_IF7) return 1;
#endif
    return 0;
#endif
}

/* The same constants as (netns, ifindex) pairs (CNIT_NS<n>, CNIT_IF<n>): with at most 8
 * selected interfaces they settle the interface filter without the cnit_ifaces lookup. */
#define CNIT_PAIR(n) if (w->ifindex == CNIT_IF##n && w->netns == CNIT_NS##n) return 1;
static __always_inline int cnit_pair_selected(const struct cnit_where *w)
{
#if CNIT_NIF > 0
    CNIT_PAIR(0)
#endif
#if CNIT_NIF > 1
    CNIT_PAIR(1)
#endif
#if CNIT_NIF > 2
    CNIT_PAIR(2)
#endif
#if CNIT_NIF > 3
    CNIT_PAIR(3)
#endif
#if CNIT_NIF > 4
    CNIT_PAIR(4)
#endif
#if CNIT_NIF > 5
    CNIT_PAIR(5)
#endif
#if CNIT_NIF > 6
    CNIT_PAIR(6)
#endif
#if CNIT_NIF > 7
    CNIT_PAIR(7)
#endif
    return 0;
}

#ifndef CNIT_FILTER_IFACE
#define CNIT_FILTER_IFACE 0
#endif
#ifndef CNIT_FILTER_NETNS
#define CNIT_FILTER_NETNS 0
#endif
#ifndef CNIT_FILTER_MARK
#define CNIT_FILTER_MARK 0
#endif
#ifndef CNIT_MARK_VALUE
#define CNIT_MARK_VALUE 0
#endif
#ifndef CNIT_MARK_MASK
#define CNIT_MARK_MASK 0xffffffff
#endif
/* kfree_skb reasons that are not drops (NOT_DROPPED_YET, CONSUMED; values from BTF) */
#ifndef CNIT_NOT_DROP_A
#define CNIT_NOT_DROP_A 0
#endif
#ifndef CNIT_NOT_DROP_B
#define CNIT_NOT_DROP_B 1
#endif

#ifndef CNIT_FILTER_IPV4
#define CNIT_FILTER_IPV4 0      /* IPv4 packets only (skb->protocol), without reading the header */
#endif
#ifndef CNIT_FILTER_TUPLE
#define CNIT_FILTER_TUPLE 0
#endif

/* Selected interfaces (netns inode, ifindex) and namespaces, filled from user space. */
BPF_HASH(cnit_ifaces, struct cnit_where, u8, 256);
BPF_HASH(cnit_netns, u32, u8, 256);

/* IPv4 5-tuple filter on the packet as received (skb->data at the network header);
 * 0 means "any". Addresses and ports in network byte order, as the packet carries them. */
#ifndef CNIT_PROTO
#define CNIT_PROTO 0
#endif
#ifndef CNIT_SADDR
#define CNIT_SADDR 0
#endif
#ifndef CNIT_DADDR
#define CNIT_DADDR 0
#endif
#ifndef CNIT_SPORT
#define CNIT_SPORT 0
#endif
#ifndef CNIT_DPORT
#define CNIT_DPORT 0
#endif

static __always_inline int cnit_tuple_match(const void *skb)
{
#if CNIT_FILTER_TUPLE
    u16 proto = 0;
    unsigned char *data = 0;
    u8 iph[20] = {};
    u16 ports[2] = {};
    CNIT_READ(proto, skb, CNIT_OFF_SKB_PROTOCOL);
    if (proto != htons(0x0800))
        return 0;
    CNIT_READ(data, skb, CNIT_OFF_SKB_DATA);    /* packet bytes: always the helper (not BTF-typed) */
    if (!data || bpf_probe_read_kernel(iph, sizeof(iph), data))
        return 0;
    if (CNIT_PROTO && iph[9] != CNIT_PROTO)
        return 0;
    if (CNIT_SADDR && *(u32 *)&iph[12] != (u32)CNIT_SADDR)
        return 0;
    if (CNIT_DADDR && *(u32 *)&iph[16] != (u32)CNIT_DADDR)
        return 0;
    if (CNIT_SPORT || CNIT_DPORT) {
        u32 ihl = (iph[0] & 0x0f) * 4;
        if (bpf_probe_read_kernel(ports, sizeof(ports), data + ihl))
            return 0;
        if (CNIT_SPORT && ports[0] != (u16)CNIT_SPORT)
            return 0;
        if (CNIT_DPORT && ports[1] != (u16)CNIT_DPORT)
            return 0;
    }
#endif
    return 1;
}

/* The map-free part of the filter: skb mark and 5-tuple. The interface and netns lookups
 * are written in each probe file (bcc only rewrites map calls in the main source file):
 *
 *     if (CNIT_FILTER_IFACE && !cnit_ifaces.lookup(&w)) return 0;
 *     if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&w.netns)) return 0;
 *     if (!cnit_packet_match(skb)) return 0;
 */
static __always_inline int cnit_packet_match(const void *skb)
{
#if CNIT_FILTER_MARK
    u32 mark = 0;
    CNIT_READ(mark, skb, CNIT_OFF_SKB_MARK);
    if ((mark & CNIT_MARK_MASK) != CNIT_MARK_VALUE)
        return 0;
#endif
#if CNIT_FILTER_IPV4 && !CNIT_FILTER_TUPLE
    u16 l3 = 0;
    CNIT_READ(l3, skb, CNIT_OFF_SKB_PROTOCOL);
    if (l3 != htons(0x0800))
        return 0;
#endif
    return cnit_tuple_match(skb);
}

/* Optional per-packet events (off by default): ring buffer where the kernel has one,
 * perf buffer otherwise; failed writes are counted in cnit_lost. */
#ifndef CNIT_EVENTS
#define CNIT_EVENTS 0
#endif
#ifndef CNIT_RINGBUF
#define CNIT_RINGBUF 0
#endif
#if CNIT_EVENTS
#if CNIT_RINGBUF
BPF_RINGBUF_OUTPUT(cnit_events, 64);
#else
BPF_PERF_OUTPUT(cnit_events);
#endif
BPF_PERCPU_ARRAY(cnit_lost, u64, 1);
/* Each probe file defines its own emit(): bcc rewrites map calls in the main file only, refuses them
 * inside macros ("cannot use map function inside a macro") and leaves raw helper calls on a map in
 * a header unresolved ("R1 type=scalar expected=map_ptr"); all three were tried. */
#endif

#endif /* CNIT_STAGES_H */

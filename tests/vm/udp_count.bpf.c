// Test probes for the vm tier: count UDP packets to CNIT_PORT two ways, so that one
// compile (slow under TCG) serves both tests.
//  - count_kprobe: kprobe on veth_xmit() (the veth datapath, a module function);
//  - kfunc__udp_rcv: fentry (bcc's KFUNC_PROBE, a BTF trampoline) on udp_rcv().
// Like cnitrace's own probes, no kernel struct layout comes from headers: the sk_buff
// field offsets come from the guest kernel's BTF as -D cflags, which also keeps the
// compile small (kernel headers make bcc's clang ~10x slower, and TCG multiplies that).
#include <uapi/linux/ptrace.h>

#if !defined(CNIT_PORT) || !defined(CNIT_SKB_HEAD) || !defined(CNIT_SKB_NETWORK_HEADER) \
    || !defined(CNIT_SKB_TRANSPORT_HEADER)
#error "CNIT_PORT and the CNIT_SKB_* offsets must be given as cflags"
#endif

BPF_ARRAY(kprobe_hits, u64, 1);
BPF_ARRAY(fentry_hits, u64, 1);

/* IPv4 first byte (version 4), protocol at byte 9; UDP destination port at bytes 2-3. */
static __always_inline int is_our_udp(void *skb)
{
    unsigned char *head = NULL;
    u16 nh = 0, th = 0, dport = 0;
    u8 vihl = 0, proto = 0;

    if (bpf_probe_read_kernel(&head, sizeof(head), skb + CNIT_SKB_HEAD)
        || bpf_probe_read_kernel(&nh, sizeof(nh), skb + CNIT_SKB_NETWORK_HEADER)
        || bpf_probe_read_kernel(&th, sizeof(th), skb + CNIT_SKB_TRANSPORT_HEADER)
        || bpf_probe_read_kernel(&vihl, 1, head + nh)
        || bpf_probe_read_kernel(&proto, 1, head + nh + 9)
        || bpf_probe_read_kernel(&dport, 2, head + th + 2))
        return 0;
    return (vihl >> 4) == 4 && proto == 17 && dport == htons(CNIT_PORT);
}

static __always_inline void bump(u64 *n)
{
    if (n)
        __sync_fetch_and_add(n, 1);
}

int count_kprobe(struct pt_regs *ctx, void *skb)
{
    int key = 0;

    if (is_our_udp(skb))
        bump(kprobe_hits.lookup(&key));
    return 0;
}

KFUNC_PROBE(udp_rcv, void *skb)
{
    int key = 0;

    if (is_our_udp(skb))
        bump(fentry_hits.lookup(&key));
    return 0;
}

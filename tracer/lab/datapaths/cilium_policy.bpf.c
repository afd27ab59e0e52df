/* The cilium lab datapath: tc programs on the lxc<hash> node-side veths.
 *
 * cil_from_container (tc ingress: packets leaving a pod) and cil_to_container (tc egress:
 * packets entering a pod) enforce the endpoint's policy the way Cilium's bpf_lxc does:
 * the peer's security identity comes from the cilium_ipcache LPM trie, and the verdict from
 * a hash lookup in the endpoint's policy map keyed {identity, dport, proto, direction},
 * whose entries count the packets and bytes they admit (`cilium bpf policy get`).
 * Layouts match Cilium's (see cilium_maps.py). Only the server endpoint has a policy map;
 * the lab compiles one object per policy endpoint, as Cilium compiles one per endpoint.
 *
 * L7: an entry with a proxy port sends the packet to the proxy instead. As in Cilium, the
 * ingress policy of a local destination is looked up already at the source's tc ingress (Cilium
 * tail-calls into the destination's policy program), the packet is marked MARK_MAGIC_TO_PROXY
 * with the port, and a rule in the node's netfilter steers marked packets to the proxy.
 *
 * Options (-D): POLICY_MAP_SIZE, IPCACHE_SIZE, LXC_MAP_SIZE, ALLOW_LOCALHOST (Cilium's
 * default: the host may always reach its endpoints).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>

#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
#endif

#ifndef IPPROTO_ICMP
#define IPPROTO_ICMP 1
#endif

#ifndef POLICY_MAP_SIZE
#define POLICY_MAP_SIZE 16384
#endif
#ifndef IPCACHE_SIZE
#define IPCACHE_SIZE 1024
#endif
#ifndef LXC_MAP_SIZE
#define LXC_MAP_SIZE 256
#endif
#ifndef ALLOW_LOCALHOST
#define ALLOW_LOCALHOST 1
#endif

#define ID_HOST 1
#define ID_WORLD 2
#define FAMILY_IPV4 1
#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define FLAG_DENY 0x1
#define MARK_MAGIC_TO_PROXY 0x0200   /* Cilium's mark: to the proxy whose port is in the upper 16 bits */
#define EP_FLAG_INGRESS_POLICY 0x1
#define EP_FLAG_EGRESS_POLICY 0x2

struct policy_key {
    __u32 sec_label;
    __u16 dport;          /* network byte order */
    __u8 protocol;
    __u8 egress;
};

struct policy_entry {
    __u16 proxy_port;     /* network byte order */
    __u8 flags;
    __u8 auth_type;
    __u16 pad1;
    __u16 pad2;
    __u64 packets;
    __u64 bytes;
};

struct ipcache_key {
    __u32 prefixlen;      /* struct bpf_lpm_trie_key: 32 bits of cluster/pad/family + IP prefix */
    __u16 cluster_id;
    __u8 pad1;
    __u8 family;
    __u32 ip4;
    __u32 pad[3];
};

struct remote_endpoint_info {
    __u32 sec_identity;
    __u32 tunnel_endpoint;
    __u16 pad;
    __u8 key;
    __u8 flags;
};

struct endpoint_key {
    __u32 ip4;
    __u32 pad[3];
    __u8 family;
    __u8 key;
    __u16 cluster_id;
};

struct endpoint_info {
    __u32 ifindex;
    __u16 unused;
    __u16 lxc_id;
    __u32 flags;
    __u32 sec_id;
};

struct drop_stats {
    __u64 packets;
    __u64 bytes;
};

BPF_TABLE("hash", struct policy_key, struct policy_entry, cilium_policy, POLICY_MAP_SIZE);
BPF_LPM_TRIE(cilium_ipcache, struct ipcache_key, struct remote_endpoint_info, IPCACHE_SIZE);
BPF_HASH(cilium_lxc, struct endpoint_key, struct endpoint_info, LXC_MAP_SIZE);
/* index 0: dropped by policy (ingress), 1: dropped by policy (egress) */
BPF_ARRAY(cilium_metrics, struct drop_stats, 2);

struct l4 {
    __u32 saddr;
    __u32 daddr;
    __u16 dport;          /* network byte order */
    __u8 proto;
    __u8 related;         /* an ICMP error about another flow (Cilium's CT_RELATED) */
};

static __always_inline int parse(struct __sk_buff *skb, struct l4 *t)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return 0;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl < 5)
        return 0;
    t->saddr = ip->saddr;
    t->daddr = ip->daddr;
    t->proto = ip->protocol;
    t->dport = 0;
    if (ip->frag_off & htons(0x1fff))
        return 1;         /* later fragments carry no ports */
    void *l4 = (void *)ip + ip->ihl * 4;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > end)
            return 0;
        t->dport = tcp->dest;
    } else if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > end)
            return 0;
        t->dport = udp->dest;
    } else if (ip->protocol == IPPROTO_ICMP) {
        struct icmphdr *icmp = l4;
        if ((void *)(icmp + 1) > end)
            return 0;
        t->related = icmp->type == ICMP_DEST_UNREACH || icmp->type == ICMP_TIME_EXCEEDED ||
                     icmp->type == ICMP_PARAMETERPROB;
    }
    return 1;
}

static __always_inline __u32 identity_of(__u32 addr)
{
    struct ipcache_key k = {};
    k.prefixlen = 32 + 32;
    k.family = FAMILY_IPV4;
    k.ip4 = addr;
    struct remote_endpoint_info *info = cilium_ipcache.lookup(&k);
    return info ? info->sec_identity : ID_WORLD;
}

/* The policy verdict for one packet: exact L4 entry, then any port, then L3-only. */
static __always_inline int policy_can_access(struct __sk_buff *skb, __u32 identity, struct l4 *t, __u8 dir)
{
    struct policy_key k = {};
    k.sec_label = identity;
    k.dport = t->dport;
    k.protocol = t->proto;
    k.egress = dir;
    struct policy_entry *e = cilium_policy.lookup(&k);
    if (e && e->proxy_port) {
        /* only reached from cil_from_container's L7 check, which saw this entry first */
        __sync_fetch_and_add(&e->packets, 1);
        __sync_fetch_and_add(&e->bytes, skb->len);
        skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)ntohs(e->proxy_port) << 16);
        return TC_ACT_OK;
    }
    if (!e) {
        k.dport = 0;
        e = cilium_policy.lookup(&k);
    }
    if (!e) {
        k.protocol = 0;
        e = cilium_policy.lookup(&k);
    }
    if (e && !(e->flags & FLAG_DENY)) {
        __sync_fetch_and_add(&e->packets, 1);
        __sync_fetch_and_add(&e->bytes, skb->len);
        return TC_ACT_OK;
    }
    int idx = dir;
    struct drop_stats *d = cilium_metrics.lookup(&idx);
    if (d) {
        __sync_fetch_and_add(&d->packets, 1);
        __sync_fetch_and_add(&d->bytes, skb->len);
    }
    return TC_ACT_SHOT;
}

static __always_inline struct endpoint_info *endpoint_of(__u32 addr)
{
    struct endpoint_key k = {};
    k.ip4 = addr;
    k.family = FAMILY_IPV4;
    return cilium_lxc.lookup(&k);
}

/* Packets leaving a pod: the source endpoint's egress policy (none of the lab's pods has one).
 * ICMP errors skip policy as related traffic (Cilium finds them CT_RELATED in its CT map). */
int cil_from_container(struct __sk_buff *skb)
{
    struct l4 t = {};
    if (!parse(skb, &t) || t.related)
        return TC_ACT_OK;
    struct endpoint_info *ep = endpoint_of(t.saddr);
    if (ep && (ep->flags & EP_FLAG_EGRESS_POLICY)) {
        int verdict = policy_can_access(skb, identity_of(t.daddr), &t, DIR_EGRESS);
        if (verdict != TC_ACT_OK)
            return verdict;
    }
    /* Local destination with an L7 rule for this port: redirect to the proxy from here. */
    struct endpoint_info *dst = endpoint_of(t.daddr);
    if (!dst || !(dst->flags & EP_FLAG_INGRESS_POLICY))
        return TC_ACT_OK;
    struct policy_key k = {};
    k.sec_label = identity_of(t.saddr);
    k.dport = t.dport;
    k.protocol = t.proto;
    k.egress = DIR_INGRESS;
    struct policy_entry *e = cilium_policy.lookup(&k);
    if (e && e->proxy_port)
        return policy_can_access(skb, k.sec_label, &t, DIR_INGRESS);
    return TC_ACT_OK;
}

/* Packets entering a pod: the destination endpoint's ingress policy. */
int cil_to_container(struct __sk_buff *skb)
{
    struct l4 t = {};
    if (!parse(skb, &t) || t.related)
        return TC_ACT_OK;
    struct endpoint_info *ep = endpoint_of(t.daddr);
    if (!ep || !(ep->flags & EP_FLAG_INGRESS_POLICY))
        return TC_ACT_OK;
    __u32 id = identity_of(t.saddr);
    if (ALLOW_LOCALHOST && id == ID_HOST)
        return TC_ACT_OK;
    return policy_can_access(skb, id, &t, DIR_INGRESS);
}

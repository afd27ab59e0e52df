/* netfilter: time per hook invocation (nf_hook_slow, by family/hook/verdict) and per table
 * call (ipt_do_table / ip6t_do_table with the table name; nft_do_chain with table and base
 * chain names), each with its verdict.
 *
 * There are no tracepoints here, so this stage needs fentry/fexit or kprobe/kretprobe; the
 * backend is chosen per hook (CNIT_HOOK_<FN> = 1 fentry, 2 kprobe, 0 not attached). Entry and
 * return are paired on a small per-CPU stack: calls on one CPU nest strictly (a softirq may
 * interrupt process context), and kretprobes give no arguments at return. Struct fields are
 * read at BTF offsets (CNIT_OFF_*), including those of the x_tables/nf_tables modules.
 */
#include "stages.h"

#define BK_FENTRY 1
#define BK_KPROBE 2
#ifndef CNIT_HOOK_NF_HOOK_SLOW
#define CNIT_HOOK_NF_HOOK_SLOW 0
#endif
#ifndef CNIT_HOOK_IPT_DO_TABLE
#define CNIT_HOOK_IPT_DO_TABLE 0
#endif
#ifndef CNIT_HOOK_IP6T_DO_TABLE
#define CNIT_HOOK_IP6T_DO_TABLE 0
#endif
#ifndef CNIT_HOOK_NFT_DO_CHAIN
#define CNIT_HOOK_NFT_DO_CHAIN 0
#endif

#define KIND_IPT 1
#define KIND_IP6T 2
#define KIND_NFT 3
#define LEVEL_HOOK 0
#define LEVEL_TABLE 1
#define DEPTH 4
#define NAME_LEN 32

struct frame {
    u64 ts;
    u64 obj;        /* xt_table * or nft_chain * */
    u32 netns;
    u8 pf;
    u8 hook;
    u8 kind;
    u8 skip;        /* filtered out at entry: pop, record nothing */
};

struct hook_key {
    u32 netns;
    u8 pf;
    u8 hook;
    u8 verdict;
    u8 pad;
};

struct table_key {
    u32 netns;
    u8 kind;
    u8 hook;
    u8 verdict;
    u8 pad;
    char table[NAME_LEN];
    char chain[NAME_LEN];
};

BPF_PERCPU_ARRAY(nf_stack, struct frame, 2 * DEPTH);
BPF_PERCPU_ARRAY(nf_depth, u32, 2);
BPF_PERCPU_HASH(nf_hook_agg, struct hook_key, struct cnit_agg, 1024);
BPF_PERCPU_HASH(nf_table_agg, struct table_key, struct cnit_agg, 1024);
BPF_PERCPU_ARRAY(nf_scratch, struct table_key, 1);   /* the key is too big for the stack with the agg */

static __always_inline u32 state_netns(const void *state)
{
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)state + CNIT_OFF_HOOK_STATE_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + CNIT_OFF_NET_INUM);
    return inum;
}

static __always_inline int selected(const void *skb, u32 netns)
{
    if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&netns))
        return 0;
    if (CNIT_FILTER_IFACE) {
        struct cnit_where w = cnit_skb_where(skb);
        if (!cnit_ifaces.lookup(&w))
            return 0;
    }
    return cnit_packet_match(skb);
}

static __always_inline void push(int level, const void *skb, const void *state, u64 obj, u8 kind)
{
    int dz = level;
    u32 *depth = nf_depth.lookup(&dz);
    if (!depth)
        return;
    u32 d = *depth;
    if (d >= DEPTH)
        return;
    int idx = level * DEPTH + d;
    struct frame *f = nf_stack.lookup(&idx);
    if (!f)
        return;
    *depth = d + 1;
    f->ts = bpf_ktime_get_ns();
    f->obj = obj;
    f->kind = kind;
    f->netns = state_netns(state);
    f->pf = 0;
    f->hook = 0;
    bpf_probe_read_kernel(&f->pf, 1, (const char *)state + CNIT_OFF_HOOK_STATE_PF);
    bpf_probe_read_kernel(&f->hook, 1, (const char *)state + CNIT_OFF_HOOK_STATE_HOOK);
    f->skip = !selected(skb, f->netns);
}

static __always_inline struct frame *pop(int level)
{
    int dz = level;
    u32 *depth = nf_depth.lookup(&dz);
    if (!depth || *depth == 0)
        return 0;
    u32 d = *depth - 1;
    *depth = d;
    if (d >= DEPTH)
        return 0;
    int idx = level * DEPTH + d;
    return nf_stack.lookup(&idx);
}

static __always_inline void hook_done(int ret)
{
    struct frame *f = pop(LEVEL_HOOK);
    if (!f || f->skip)
        return;
    /* nf_hook_slow: 1 = continue (accept), 0 = stolen/queued, < 0 = dropped */
    struct hook_key k = { .netns = f->netns, .pf = f->pf, .hook = f->hook,
                          .verdict = ret == 1 ? 1 : (ret == 0 ? 2 : 0) };
    struct cnit_agg zero = {};
    struct cnit_agg *a = nf_hook_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, bpf_ktime_get_ns() - f->ts);
}

static __always_inline void table_done(unsigned int ret)
{
    struct frame *f = pop(LEVEL_TABLE);
    if (!f || f->skip)
        return;
    u64 ns = bpf_ktime_get_ns() - f->ts;
    int z = 0;
    struct table_key *k = nf_scratch.lookup(&z);
    if (!k)
        return;
    __builtin_memset(k, 0, sizeof(*k));
    k->netns = f->netns;
    k->kind = f->kind;
    k->hook = f->hook;
    k->verdict = ret & 0xff;
    if (f->kind == KIND_NFT) {
#ifdef CNIT_OFF_NFT_CHAIN_NAME
        char *name = 0, *tname = 0;
        void *table = 0;
        bpf_probe_read_kernel(&name, sizeof(name), (char *)f->obj + CNIT_OFF_NFT_CHAIN_NAME);
        bpf_probe_read_kernel(&table, sizeof(table), (char *)f->obj + CNIT_OFF_NFT_CHAIN_TABLE);
        if (name)
            bpf_probe_read_kernel_str(k->chain, NAME_LEN, name);
        if (table) {
            bpf_probe_read_kernel(&tname, sizeof(tname), (char *)table + CNIT_OFF_NFT_TABLE_NAME);
            if (tname)
                bpf_probe_read_kernel_str(k->table, NAME_LEN, tname);
        }
#endif
    } else {
#ifdef CNIT_OFF_XT_TABLE_NAME
        bpf_probe_read_kernel_str(k->table, NAME_LEN, (char *)f->obj + CNIT_OFF_XT_TABLE_NAME);
#endif
    }
    struct cnit_agg zero = {};
    struct cnit_agg *a = nf_table_agg.lookup_or_try_init(k, &zero);
    if (a)
        cnit_agg_add(a, ns);
}

/* ---- nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state, const struct nf_hook_entries *e, unsigned int s) */
#if CNIT_HOOK_NF_HOOK_SLOW == BK_FENTRY
KFUNC_PROBE(nf_hook_slow, void *skb, void *state)
{
    push(LEVEL_HOOK, skb, state, 0, 0);
    return 0;
}
KRETFUNC_PROBE(nf_hook_slow, void *skb, void *state, void *e, unsigned int s, int ret)
{
    hook_done(ret);
    return 0;
}
#elif CNIT_HOOK_NF_HOOK_SLOW == BK_KPROBE
int kprobe__nf_hook_slow(struct pt_regs *ctx)
{
    push(LEVEL_HOOK, (void *)PT_REGS_PARM1(ctx), (void *)PT_REGS_PARM2(ctx), 0, 0);
    return 0;
}
int kretprobe__nf_hook_slow(struct pt_regs *ctx)
{
    hook_done((int)PT_REGS_RC(ctx));
    return 0;
}
#endif

/* ---- ipt_do_table / ip6t_do_table(void *priv = struct xt_table *, struct sk_buff *skb,
 *      const struct nf_hook_state *state): modules, so kprobe only with bcc 0.26 */
#if CNIT_HOOK_IPT_DO_TABLE == BK_KPROBE && defined(CNIT_OFF_XT_TABLE_NAME)
int kprobe__ipt_do_table(struct pt_regs *ctx)
{
    push(LEVEL_TABLE, (void *)PT_REGS_PARM2(ctx), (void *)PT_REGS_PARM3(ctx), PT_REGS_PARM1(ctx), KIND_IPT);
    return 0;
}
int kretprobe__ipt_do_table(struct pt_regs *ctx)
{
    table_done((unsigned int)PT_REGS_RC(ctx));
    return 0;
}
#endif
#if CNIT_HOOK_IP6T_DO_TABLE == BK_KPROBE && defined(CNIT_OFF_XT_TABLE_NAME)
int kprobe__ip6t_do_table(struct pt_regs *ctx)
{
    push(LEVEL_TABLE, (void *)PT_REGS_PARM2(ctx), (void *)PT_REGS_PARM3(ctx), PT_REGS_PARM1(ctx), KIND_IP6T);
    return 0;
}
int kretprobe__ip6t_do_table(struct pt_regs *ctx)
{
    table_done((unsigned int)PT_REGS_RC(ctx));
    return 0;
}
#endif

/* ---- nft_do_chain(struct nft_pktinfo *pkt, void *priv = struct nft_chain *) */
#if CNIT_HOOK_NFT_DO_CHAIN == BK_KPROBE && defined(CNIT_OFF_NFT_PKTINFO_SKB)
int kprobe__nft_do_chain(struct pt_regs *ctx)
{
    void *pkt = (void *)PT_REGS_PARM1(ctx);
    void *skb = 0, *state = 0;
    bpf_probe_read_kernel(&skb, sizeof(skb), (char *)pkt + CNIT_OFF_NFT_PKTINFO_SKB);
    bpf_probe_read_kernel(&state, sizeof(state), (char *)pkt + CNIT_OFF_NFT_PKTINFO_STATE);
    push(LEVEL_TABLE, skb, state, PT_REGS_PARM2(ctx), KIND_NFT);
    return 0;
}
int kretprobe__nft_do_chain(struct pt_regs *ctx)
{
    table_done((unsigned int)PT_REGS_RC(ctx));
    return 0;
}
#endif

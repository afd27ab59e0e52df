/* ovs_kernel: time in the Open vSwitch kernel datapath per input interface:
 * ovs_vport_receive (the whole datapath visit), ovs_dp_process_packet (flow lookup, then
 * actions or an upcall) and ovs_execute_actions (actions alone); flow-lookup time is
 * process - actions. Upcalls (misses sent to ovs-vswitchd) come from the
 * openvswitch:ovs_dp_upcall tracepoint, counted per input interface with their bytes.
 *
 * These functions live in the openvswitch module, which bcc 0.26 can only kprobe; entry
 * and return pair on a per-CPU stack (calls nest: receive > process > actions), each frame
 * tagged with its function so a missed return cannot mis-pair the others. Each recirculation
 * (Antrea's ct() actions) nests another process > actions pair; frames deeper than DEPTH are
 * counted but not timed, so their returns still pair with the right frames.
 */
#include "stages.h"

#define FN_RECEIVE 1
#define FN_PROCESS 2
#define FN_ACTIONS 3
#define DEPTH 16
#define MAX_DEPTH 64    /* counted frames beyond this: returns were missed, start over */
#ifndef CNIT_HOOK_OVS_VPORT_RECEIVE
#define CNIT_HOOK_OVS_VPORT_RECEIVE 0
#endif
#ifndef CNIT_HOOK_OVS_DP_PROCESS_PACKET
#define CNIT_HOOK_OVS_DP_PROCESS_PACKET 0
#endif
#ifndef CNIT_HOOK_OVS_EXECUTE_ACTIONS
#define CNIT_HOOK_OVS_EXECUTE_ACTIONS 0
#endif
#ifndef CNIT_HOOK_OPENVSWITCH_OVS_DP_UPCALL
#define CNIT_HOOK_OPENVSWITCH_OVS_DP_UPCALL 0
#endif

struct ovs_frame {
    u64 ts;
    struct cnit_where in;
    u32 fn;
    u32 skip;
};

struct ovs_key {
    u32 netns;
    u32 ifindex;
    u32 fn;
    u32 pad;
};

BPF_PERCPU_ARRAY(ovs_stack, struct ovs_frame, DEPTH);
BPF_PERCPU_ARRAY(ovs_depth, u32, 1);
BPF_PERCPU_HASH(ovs_agg, struct ovs_key, struct cnit_agg, 1024);
BPF_PERCPU_HASH(ovs_upcall_agg, struct ovs_key, struct cnit_agg, 1024);

static __always_inline int selected(const void *skb, struct cnit_where *w)
{
    if (CNIT_FILTER_IFACE && !cnit_ifaces.lookup(w))
        return 0;
    if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&w->netns))
        return 0;
    return 1;   /* no 5-tuple here: skb->data is at the Ethernet header inside OVS */
}

static __always_inline void push(const void *skb, u32 fn)
{
    int z = 0;
    u32 *depth = ovs_depth.lookup(&z);
    if (!depth)
        return;
    u32 d = *depth;
    if (d >= DEPTH) {           /* too deep to time: count it so that the returns still pair */
        *depth = d < MAX_DEPTH ? d + 1 : 0;
        return;
    }
    int idx = d;
    struct ovs_frame *f = ovs_stack.lookup(&idx);
    if (!f)
        return;
    *depth = d + 1;
    f->ts = bpf_ktime_get_ns();
    f->fn = fn;
    f->in = cnit_skb_where(skb);
    f->skip = !selected(skb, &f->in);
}

static __always_inline void pop(u32 fn)
{
    int z = 0;
    u32 *depth = ovs_depth.lookup(&z);
    if (!depth || *depth == 0)
        return;
    u32 d = *depth - 1;
    if (d >= DEPTH) {           /* a frame too deep to time */
        *depth = d;
        return;
    }
    int idx = d;
    struct ovs_frame *f = ovs_stack.lookup(&idx);
    if (!f)
        return;
    if (f->fn != fn) {          /* a return was missed: start over rather than mis-pair */
        *depth = 0;
        return;
    }
    *depth = idx;
    if (f->skip)
        return;
    struct ovs_key k = { .netns = f->in.netns, .ifindex = f->in.ifindex, .fn = fn };
    struct cnit_agg zero = {};
    struct cnit_agg *a = ovs_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, bpf_ktime_get_ns() - f->ts);
}

/* int ovs_vport_receive(struct vport *vport, struct sk_buff *skb, const struct ip_tunnel_info *tun_info) */
#if CNIT_HOOK_OVS_VPORT_RECEIVE == 2
int kprobe__ovs_vport_receive(struct pt_regs *ctx)
{
    push((void *)PT_REGS_PARM2(ctx), FN_RECEIVE);
    return 0;
}
int kretprobe__ovs_vport_receive(struct pt_regs *ctx)
{
    pop(FN_RECEIVE);
    return 0;
}
#endif

/* void ovs_dp_process_packet(struct sk_buff *skb, struct sw_flow_key *key) */
#if CNIT_HOOK_OVS_DP_PROCESS_PACKET == 2
int kprobe__ovs_dp_process_packet(struct pt_regs *ctx)
{
    push((void *)PT_REGS_PARM1(ctx), FN_PROCESS);
    return 0;
}
int kretprobe__ovs_dp_process_packet(struct pt_regs *ctx)
{
    pop(FN_PROCESS);
    return 0;
}
#endif

/* int ovs_execute_actions(struct datapath *dp, struct sk_buff *skb, const struct sw_flow_actions *acts,
 *                         struct sw_flow_key *key) */
#if CNIT_HOOK_OVS_EXECUTE_ACTIONS == 2
int kprobe__ovs_execute_actions(struct pt_regs *ctx)
{
    push((void *)PT_REGS_PARM2(ctx), FN_ACTIONS);
    return 0;
}
int kretprobe__ovs_execute_actions(struct pt_regs *ctx)
{
    pop(FN_ACTIONS);
    return 0;
}
#endif

#if CNIT_HOOK_OPENVSWITCH_OVS_DP_UPCALL == 3
TRACEPOINT_PROBE(openvswitch, ovs_dp_upcall)
{
    const void *skb = args->skbaddr;
    u32 len = args->len;
    struct cnit_where w = cnit_skb_where(skb);
    if (!selected(skb, &w))
        return 0;
    struct ovs_key k = { .netns = w.netns, .ifindex = w.ifindex, .fn = 0 };
    struct cnit_agg zero = {};
    struct cnit_agg *a = ovs_upcall_agg.lookup_or_try_init(&k, &zero);
    if (a)
        cnit_agg_add(a, len);
    return 0;
}
#endif

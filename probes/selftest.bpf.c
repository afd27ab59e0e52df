/* Minimal programs `cnitrace doctor` loads to TRY each attach type on this kernel.
 *
 * One compile serves every attach type (compiling is the slow part). Each program only
 * counts its hits, so the trial can prove a hook fired on real packets, not just that the
 * attach call returned. Function names avoid bcc's autoload prefixes except the fentry one,
 * which bcc needs as `kfunc__<function>`; the loader is asked not to autoload.
 */
#include "cnitrace.h"

/* Slots of `hits`; the Python side (cnitrace.probes.trial) uses the same numbers. */
#define HIT_TRACEPOINT     0
#define HIT_RAW_TRACEPOINT 1
#define HIT_KPROBE         2
#define HIT_FENTRY         3
#define HIT_TC             4
#define HIT_XDP            5
#define HIT_TP_BTF         6

BPF_ARRAY(hits, u64, 8);

static __always_inline void bump(int slot)
{
    u64 *v = hits.lookup(&slot);
    if (v)
        __sync_fetch_and_add(v, 1);
}

int on_tracepoint(void *ctx) { bump(HIT_TRACEPOINT); return 0; }

int on_raw_tracepoint(void *ctx) { bump(HIT_RAW_TRACEPOINT); return 0; }

/* BTF-typed raw tracepoint (tp_btf): bcc cannot load it; the trial loads its instructions itself. */
int on_tp_btf(u64 *ctx) { bump(HIT_TP_BTF); return 0; }

int on_kprobe(struct pt_regs *ctx) { bump(HIT_KPROBE); return 0; }

int on_tc(struct __sk_buff *skb) { bump(HIT_TC); return 0; /* TC_ACT_OK */ }

int on_xdp(struct xdp_md *ctx) { bump(HIT_XDP); return XDP_PASS; }

/* fentry on the same function the kprobe trial uses; bcc names it kfunc____netif_receive_skb. */
KFUNC_PROBE(__netif_receive_skb) { bump(HIT_FENTRY); return 0; }

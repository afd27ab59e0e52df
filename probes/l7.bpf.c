/* l7_detour: TCP connection setup and lifetime per (netns, role, service port), from
 * sock:inet_sock_set_state.
 *
 * Why sockets and not packets: a policy that redirects traffic to an L7 proxy (Envoy,
 * Suricata, nginx) turns one connection into two, client -> proxy and proxy -> server; the
 * proxy's added time per request is the difference between the client's connection
 * lifetime through the proxy and the proxy's own upstream connection (or a direct one).
 * Roles: client = actively opened (SYN_SENT), service port = remote port; server =
 * accepted (SYN_RECV -> ESTABLISHED), service port = local port.
 * connect: SYN_SENT -> ESTABLISHED (client only); life: ESTABLISHED -> first state after
 * it (one side starts closing: the request/response is over for HTTP/1 close);
 * bytes in/out: tcp_sock.bytes_received / bytes_acked when the socket closes.
 */
#include "stages.h"

#define PROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define ROLE_CLIENT 1
#define ROLE_SERVER 2

struct l7_key {
    u32 netns;
    u16 role;
    u16 port;
};

struct conn {
    u64 start;      /* SYN_SENT (client) */
    u64 est;        /* ESTABLISHED */
    struct l7_key key;
    u32 done;       /* life already recorded */
};

BPF_TABLE("lru_hash", u64, struct conn, l7_conns, 16384);
BPF_PERCPU_HASH(l7_connect, struct l7_key, struct cnit_agg, 1024);
BPF_PERCPU_HASH(l7_life, struct l7_key, struct cnit_agg, 1024);
BPF_PERCPU_HASH(l7_bytes_in, struct l7_key, struct cnit_agg, 1024);
BPF_PERCPU_HASH(l7_bytes_out, struct l7_key, struct cnit_agg, 1024);

static __always_inline u32 sk_netns(const void *sk)
{
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + CNIT_OFF_SK_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + CNIT_OFF_NET_INUM);
    return inum;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    /* every ctx field read once, up front: the verifier rejects reads through a moved ctx pointer */
    u16 protocol = args->protocol, sport = args->sport, dport = args->dport;
    u64 sk = (u64)args->skaddr;
    int old = args->oldstate, new = args->newstate;
    if (protocol != PROTO_TCP)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct cnit_agg zero = {};

    if (new == TCP_SYN_SENT || (old == TCP_SYN_RECV && new == TCP_ESTABLISHED)) {
        u32 netns = sk_netns((void *)sk);
        if (CNIT_FILTER_NETNS && !cnit_netns.lookup(&netns))
            return 0;
        struct conn c = {};
        c.key.netns = netns;
        if (new == TCP_SYN_SENT) {
            c.start = now;
            c.key.role = ROLE_CLIENT;
            c.key.port = dport;
        } else {
            c.est = now;
            c.key.role = ROLE_SERVER;
            c.key.port = sport;
        }
        l7_conns.update(&sk, &c);
        return 0;
    }

    struct conn *c = l7_conns.lookup(&sk);
    if (!c)
        return 0;
    if (new == TCP_ESTABLISHED && old == TCP_SYN_SENT) {
        c->est = now;
        struct cnit_agg *a = l7_connect.lookup_or_try_init(&c->key, &zero);
        if (a)
            cnit_agg_add(a, now - c->start);
        return 0;
    }
    if (old == TCP_ESTABLISHED && c->est && !c->done) {
        c->done = 1;
        struct cnit_agg *a = l7_life.lookup_or_try_init(&c->key, &zero);
        if (a)
            cnit_agg_add(a, now - c->est);
    }
    if (new == TCP_CLOSE) {
        struct l7_key k = c->key;
        u64 in = 0, out = 0;
        bpf_probe_read_kernel(&in, sizeof(in), (const char *)sk + CNIT_OFF_TCP_BYTES_RECEIVED);
        bpf_probe_read_kernel(&out, sizeof(out), (const char *)sk + CNIT_OFF_TCP_BYTES_ACKED);
        l7_conns.delete(&sk);
        struct cnit_agg *a = l7_bytes_in.lookup_or_try_init(&k, &zero);
        if (a)
            cnit_agg_add(a, in);
        a = l7_bytes_out.lookup_or_try_init(&k, &zero);
        if (a)
            cnit_agg_add(a, out);
    }
    return 0;
}

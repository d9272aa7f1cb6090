// SPDX-License-Identifier: GPL-2.0
/*
 * DNS: every query a socket of this node sends to a DNS server port and every
 * answer it receives from one, UDP and TCP, IPv4 and IPv6, from two cgroup_skb
 * programs attached to the cgroup v2 root (so every process and pod of the
 * node is seen, with no kprobe). A packet that is not DNS costs a few loads
 * of its headers in place and a few compares (handle()); a DNS message is
 * copied (a bounded prefix, into the smallest record that holds it) into the
 * ring buffer with its socket's cookie and cgroup, and user space pairs
 * answers with queries. An answer that cannot be passed on (ring buffer full,
 * DNS_RATE_LIMIT) leaves its socket's cookie in a small per-CPU ring, so that
 * only that socket's queries lose their "timeout" (answer_lost()). Both
 * programs always let the packet through.
 * scripts/bench-dns.sh measures both paths (docs/performance.md).
 *
 * Only the client side is reported: queries leaving a socket (egress, to a
 * server port) and answers arriving at one (ingress, from a server port). A
 * local DNS server's own traffic is the mirror image and is skipped.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "dns_events.h"
#include "common.bpf.h"

#define ETH_P_IP     0x0800
#define ETH_P_IPV6   0x86DD
#define IPPROTO_TCP  6
#define IPPROTO_UDP  17
#define IP_MF        0x2000
#define TCP_FLAG_SYN 0x02
#define IP_OFFSET    0x1fff

char LICENSE[] SEC("license") = "GPL";

/* Server ports that are DNS (DNS_PORTS), 0 = unused slot; set before load. */
const volatile __u16 dns_ports[DNS_PORTS_MAX] = {53};
/* Records per second per CPU and direction before suppression; 0 = no limit. */
const volatile __u32 dns_rate_per_sec = 0;
/* The kernel lets this program type call bpf_get_current_task_btf() (user space probes it
 * before load): the sender is then read with plain loads, not five helper calls. */
const volatile bool sender_task_btf = false;

/*
 * DNS_RATE_LIMIT's buckets, one cache line per CPU (bpf_get_smp_processor_id(), inlined), each
 * only ever touched by its CPU, as a per-CPU map's would be. Not a per-CPU map: those values
 * come from the per-CPU allocator's vmalloc'ed chunks, a page the TLB misses on every DNS
 * packet after a kernel entry (PTI flushes it), where a small array is kmalloc'ed, in the
 * direct map's large pages. User space sizes it to the possible CPUs before load (the
 * default is for an object loaded alone, as tests do).
 */
struct dns_cpu_buckets {
    struct rate_bucket dir[2]; /* 0: queries, 1: answers */
} __attribute__((aligned(64)));

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, struct dns_cpu_buckets);
} dns_buckets SEC(".maps");

/* One struct dns_lost per CPU (dns_events.h); replaced by the capture's own map at load. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct dns_lost);
} dns_lost SEC(".maps");

/* The immediate of a 64-bit load built with setting's marker (dns_events.h, enum dns_setting). */
#define DNS_SETTING_IMM(setting)                                                                   \
    ({                                                                                             \
        __u64 imm_;                                                                                \
        asm volatile("%[v] = %[m] ll" : [v] "=r"(imm_) : [m] "i"(DNS_SETTING_MARKER(setting)));    \
        imm_;                                                                                      \
    })

/*
 * What the programs read on every packet (the fast path's ports) or every DNS message (the
 * rate, the wakeup mark, the task flag) comes from their instructions, not from memory: a
 * line of the rodata, cold again by the next segment of a bulk stream or the next query,
 * cost the fast path about 30 ns, most of what it cost, and a DNS message as much again.
 * User space writes the values over the markers before load (dns_settings_to_insns()); the
 * verifier then sees constants and drops what reads the rodata instead, which an object
 * loaded as built (tests) keeps: its markers are constants too. Only an entry program's own
 * instructions can be written before load, so only it and what it inlines may use these.
 */
#define DNS_SETTING(setting, fallback)                                                             \
    ({                                                                                             \
        __u64 v_ = DNS_SETTING_IMM(setting);                                                       \
        v_ == DNS_SETTING_MARKER(setting) ? (__u64)(fallback) : v_;                                \
    })

static __always_inline bool is_dns_port(__u16 port)
{
    __u64 p0 = DNS_SETTING_IMM(DNS_SETTING_PORT0), p1 = DNS_SETTING_IMM(DNS_SETTING_PORT0 + 1),
          p2 = DNS_SETTING_IMM(DNS_SETTING_PORT0 + 2), p3 = DNS_SETTING_IMM(DNS_SETTING_PORT0 + 3);

    _Static_assert(DNS_PORTS_MAX == 4, "a DNS_SETTING_IMM() per slot");
    if (p0 == DNS_SETTING_MARKER(DNS_SETTING_PORT0)) {
#pragma unroll
        for (int i = 0; i < DNS_PORTS_MAX; i++)
            if (dns_ports[i] && dns_ports[i] == port)
                return true;
        return false;
    }
    return (p0 && p0 == port) || (p1 && p1 == port) || (p2 && p2 == port) || (p3 && p3 == port);
}

/*
 * Egress usually runs in the sending task; when the current task is not in the
 * socket's cgroup (a send from softirq, a socket handed over), or a TCP socket
 * sends from softirq (below), name no one.
 * Each helper call costs tens of ns on hosts whose every kernel return goes
 * through a mitigation thunk (measured: the helper form made a query's
 * record cost about 280 ns more), so where the kernel allows it the task's
 * fields are read in place, as record_hdr_current() does for tracepoints.
 * There the kernel's BTF says whether the helper exists; which program
 * types may call it differs, so for this one user space probes it.
 */
static __always_inline void fill_sender(struct dns_record *r, struct __sk_buff *skb,
                                        bool tcp_unowned)
{
    r->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    if (r->direction != DNS_DIR_QUERY)
        return;
    /*
     * TCP also sends from softirq (a window update from the server lets queued bytes out, a
     * retransmission timer fires), in whatever task the interrupt found, which may well be
     * in the same cgroup (the root one holds every process of some hosts, the idle task
     * too). A send in a task holding the socket holds its lock (tcp_sendmsg(), connect(),
     * close(), and the backlog processed as the lock is released); one from softirq never
     * does, or it would have gone to the backlog.
     */
    if (tcp_unowned)
        return;
    if (DNS_SETTING(DNS_SETTING_TASK_BTF, sender_task_btf)) {
        struct task_struct *task = bpf_get_current_task_btf();

        if (task_cgroup_id_btf(task) == r->hdr.cgroup_id)
            hdr_task_btf(&r->hdr, task);
    } else if (bpf_get_current_cgroup_id() == r->hdr.cgroup_id) {
        /* Read now: a short-lived resolver may be gone before user space sees the record. */
        hdr_task_helpers(&r->hdr);
    }
}

/* Where a DNS packet's headers are: enough to fill a record. */
struct pkt {
    __u16 family;
    __u8 protocol;
    __u32 l4_off;
    __u32 ports; /* both, as in the packet: the source's bytes first */
};

/* What record_dns() read of a DNS packet, for emit(). */
struct dns_msg {
    __u64 now;
    __u32 slot, direction, family;
    __u32 off, len; /* the message: its offset in the packet, its bytes there */
    __u32 tcp_seq, tcp_next;
    __u8 protocol;
    __u8 tcp_order;   /* enum dns_tcp_order */
    bool tcp_unowned; /* TCP: no task holds the socket (or there is none to look at) */
    __be16 ports[2];
    union {
        struct iphdr v4;
        struct ipv6hdr v6;
    } ip;
};

/*
 * An answer (or a socket error) this program could not pass on: its socket and the time go into
 * this CPU's ring of lost answers (struct dns_lost), so that user space makes only that socket's
 * queries unsure. Not inlined: only a loss runs it, and emit()'s copies stay small.
 */
static __noinline int cookie_lost(__u64 cookie, __u64 now)
{
    __u32 zero = 0;
    struct dns_lost *l = bpf_map_lookup_elem(&dns_lost, &zero);
    struct dns_lost_slot *s;
    __u64 n;

    if (!l)
        return 1;
    n = l->written;
    for (__u32 i = 1; i <= DNS_LOST_RECENT && i <= n; i++) {
        s = &l->slot[(n - i) & (DNS_LOST_SLOTS - 1)];
        if (s->cookie == cookie) {
            s->ts_ns = now;
            return 1;
        }
    }
    s = &l->slot[n & (DNS_LOST_SLOTS - 1)];
    s->cookie = cookie;
    s->ts_ns = now;
    l->written = n + 1;
    return 1;
}

static __always_inline int answer_lost(struct __sk_buff *skb, __u64 now)
{
    return cookie_lost(bpf_get_socket_cookie(skb), now);
}

/*
 * Reserves a record with room for cap bytes of the message (a constant, so the
 * verifier knows the record's size), fills it and submits it. The smaller the
 * record, the fewer fresh cache lines of the ring each message costs.
 */
static __always_inline int emit(struct __sk_buff *skb, const struct dns_msg *m,
                                struct rate_bucket *b, const __u32 cap)
{
    struct dns_record *r = record_reserve(m->slot, DNS_RECORD_SIZE(cap));
    __u64 len = m->len;

    if (!r) /* counted as a drop; the bucket's suppressed count waits for the next */
        return m->direction == DNS_DIR_ANSWER ? answer_lost(skb, m->now) : 1;
    __builtin_memset(&r->hdr, 0, sizeof(r->hdr));
    r->hdr.kind = RECORD_DNS;
    r->hdr.ts_ns = m->now;
    r->direction = m->direction;
    fill_sender(r, skb, m->tcp_unowned);
    r->cookie = bpf_get_socket_cookie(skb);
    r->suppressed = b->suppressed;
    b->suppressed = 0;
    r->family = m->family;
    r->protocol = m->protocol;
    r->sport = bpf_ntohs(m->ports[0]);
    r->dport = bpf_ntohs(m->ports[1]);
    if (m->family == AF_INET) {
        __builtin_memset(r->saddr, 0, sizeof(r->saddr));
        __builtin_memset(r->daddr, 0, sizeof(r->daddr));
        __builtin_memcpy(r->saddr, &m->ip.v4.saddr, 4);
        __builtin_memcpy(r->daddr, &m->ip.v4.daddr, 4);
    } else {
        __builtin_memcpy(r->saddr, &m->ip.v6.saddr, 16);
        __builtin_memcpy(r->daddr, &m->ip.v6.daddr, 16);
    }
    r->message_len = m->len;
    r->tcp_seq = m->tcp_seq;
    r->tcp_next = m->tcp_next;
    r->tcp_order = m->tcp_order;
    r->error = 0;
    /* The verifier must see the bound on the very register passed as the length: the
     * clamp is opaque to the compiler, so it cannot hand the helper another copy. */
    asm volatile("if %[len] <= %[cap] goto +1; %[len] = %[cap]" : [len] "+r"(len) : [cap] "i"(cap));
    if (len == 0 || len > cap || bpf_skb_load_bytes(skb, m->off, r->payload, len))
        len = 0;
    r->payload_len = len;
    record_submit_wakeup(r, DNS_SETTING(DNS_SETTING_WAKEUP_BYTES, ringbuf_wakeup_bytes));
    return 1;
}

/*
 * Where a TCP segment stands in its stream (enum dns_tcp_order), and whether a task holds the
 * socket (fill_sender()). Leaving, a new segment starts at snd_nxt, which TCP advances only
 * once it is sent; a retransmission starts before. Arriving, the program runs before TCP
 * looks at the segment: in order it starts at rcv_nxt, unless a task holds the socket and
 * earlier segments wait in its backlog.
 */
static __always_inline void tcp_place(struct __sk_buff *skb, struct dns_msg *m, bool syn)
{
    struct bpf_sock *sk = skb->sk;
    struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : NULL;
    bool owned;

    if (!tp) {
        m->tcp_order = DNS_TCP_UNVERIFIED;
        m->tcp_unowned = true;
        return;
    }
    owned = tp->inet_conn.icsk_inet.sk.sk_lock.owned;
    m->tcp_unowned = !owned;
    if (syn) {
        /* Data on a SYN (TCP Fast Open): the stream's first bytes, after the SYN's number. */
        m->tcp_seq++;
        m->tcp_next = m->tcp_seq;
        m->tcp_order = DNS_TCP_NEXT;
        return;
    }
    /* Sequence numbers wrap: compared as differences. */
    __u32 next = m->direction == DNS_DIR_QUERY ? tp->snd_nxt : tp->rcv_nxt;
    __s32 start = (__s32)(m->tcp_seq - next), end = (__s32)(m->tcp_seq + m->len - next);

    m->tcp_next = next;
    if (end <= 0)
        m->tcp_order = DNS_TCP_OLD;
    else if (start <= 0)
        m->tcp_order = m->direction == DNS_DIR_QUERY || !owned ? DNS_TCP_NEXT : DNS_TCP_UNVERIFIED;
    else if (m->direction == DNS_DIR_QUERY)
        m->tcp_order = DNS_TCP_AHEAD; /* TCP sends in order: not seen */
    else if ((__s32)(m->tcp_seq - (tp->rcv_wup + tp->rcv_wnd)) >= 0)
        m->tcp_order = DNS_TCP_OUT_OF_WINDOW;
    else
        m->tcp_order = owned ? DNS_TCP_UNVERIFIED : DNS_TCP_AHEAD;
}

/*
 * The DNS half: runs only for a packet whose server port is a DNS port. The
 * protocol and addresses are read here (the ports come from the test that
 * got here): the fast path keeps nothing but what its test needs, so a
 * packet that is not DNS pays no copies. Inlined, at handle()'s one call,
 * so that its settings are the entry program's own instructions
 * (DNS_SETTING()).
 */
static __always_inline int record_dns(struct __sk_buff *skb, __u32 direction, __u32 family,
                                      __u32 l4_off, __u32 ports)
{
    __u32 cpu = bpf_get_smp_processor_id(), skb_len = skb->len;
    struct dns_cpu_buckets *buckets;
    struct rate_bucket *b;
    struct dns_msg m;
    void *data, *end;
    __u8 doff;

    m.slot = direction == DNS_DIR_QUERY ? SLOT_DNS_EGRESS : SLOT_DNS_INGRESS;
    m.direction = direction;
    m.family = family;
    __builtin_memcpy(m.ports, &ports, sizeof(m.ports));
    /*
     * From the protocol byte to the end of the addresses (IPv4 bytes 9-19, IPv6 bytes 6-39),
     * read in place when the headers are in the packet's linear part (handle()'s case), with
     * bpf_skb_load_bytes() otherwise (handle_nonlinear()'s).
     */
    data = (void *)(long)skb->data;
    end = (void *)(long)skb->data_end;
    if (family == AF_INET) {
        struct iphdr *ip = data;

        if ((void *)(ip + 1) <= end)
            m.ip.v4 = *ip;
        else if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, protocol), &m.ip.v4.protocol,
                                    sizeof(m.ip.v4) - offsetof(struct iphdr, protocol)))
            return 1;
        m.protocol = m.ip.v4.protocol;
    } else {
        struct ipv6hdr *ip6 = data;

        if ((void *)(ip6 + 1) <= end)
            m.ip.v6 = *ip6;
        else if (bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, nexthdr), &m.ip.v6.nexthdr,
                                    sizeof(m.ip.v6) - offsetof(struct ipv6hdr, nexthdr)))
            return 1;
        m.protocol = m.ip.v6.nexthdr;
    }
    /* The message: UDP's after 8 bytes, TCP's after the header's data offset. */
    m.tcp_seq = m.tcp_next = 0;
    m.tcp_order = DNS_TCP_NONE;
    m.tcp_unowned = false;
    if (m.protocol == IPPROTO_UDP) {
        m.off = l4_off + 8;
    } else {
        struct {
            __be32 seq, ack;
            __u8 doff, flags;
        } th;

        if (l4_off > 60 || data + l4_off + 14 > end) {
            if (bpf_skb_load_bytes(skb, l4_off + 4, &th, 10))
                return 1;
        } else {
            __builtin_memcpy(&th, data + l4_off + 4, 10);
        }
        doff = th.doff;
        m.off = l4_off + (doff >> 4) * 4;
        if (m.off >= skb_len)
            return 1; /* TCP handshake, ACKs, FIN: no message */
        m.tcp_seq = bpf_ntohl(th.seq);
        m.len = skb_len - m.off;
        tcp_place(skb, &m, th.flags & TCP_FLAG_SYN);
    }
    if (m.off >= skb_len)
        return 1; /* no message */
    m.len = skb_len - m.off;

    m.now = bpf_ktime_get_boot_ns();
    buckets = bpf_map_lookup_elem(&dns_buckets, &cpu);
    if (!buckets)
        return 1;
    b = &buckets->dir[direction == DNS_DIR_QUERY ? 0 : 1];
    if (!rate_bucket_take(b, DNS_SETTING(DNS_SETTING_RATE, dns_rate_per_sec), m.slot, m.now))
        return direction == DNS_DIR_ANSWER ? answer_lost(skb, m.now) : 1;
    /* Most queries fit the smallest record; most answers the next. */
    if (m.len <= DNS_RECORD_PAYLOAD_TINY)
        return emit(skb, &m, b, DNS_RECORD_PAYLOAD_TINY);
    if (m.len <= DNS_RECORD_PAYLOAD_SMALL)
        return emit(skb, &m, b, DNS_RECORD_PAYLOAD_SMALL);
    if (m.len <= DNS_RECORD_PAYLOAD_MID)
        return emit(skb, &m, b, DNS_RECORD_PAYLOAD_MID);
    if (m.len <= DNS_RECORD_PAYLOAD_CLASSIC)
        return emit(skb, &m, b, DNS_RECORD_PAYLOAD_CLASSIC);
    return emit(skb, &m, b, DNS_RECORD_PAYLOAD_MAX);
}

/*
 * IPv4 or IPv6 (no extension headers) carrying the first fragment of UDP or TCP, its headers
 * not in the linear part: read with bpf_skb_load_bytes() into p (p->ports: both, as in the
 * packet, the source's bytes first). Rare on this hook. Returns 0, or 1 for a packet that is
 * not a candidate. The port test stays with the caller (is_dns_port()).
 */
static __noinline int read_nonlinear(struct __sk_buff *skb, struct pkt *p)
{
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        __u8 ver_ihl;

        if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
            return 1;
        ver_ihl = *(__u8 *)&ip;
        if ((ver_ihl >> 4) != 4 || (ver_ihl & 0xf) < 5)
            return 1;
        if (bpf_ntohs(ip.frag_off) & IP_OFFSET)
            return 1;
        p->family = AF_INET;
        p->protocol = ip.protocol;
        p->l4_off = (ver_ihl & 0xf) * 4;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;

        if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
            return 1;
        p->family = AF_INET6;
        p->protocol = ip6.nexthdr;
        p->l4_off = sizeof(ip6);
    } else {
        return 1;
    }
    if (p->protocol != IPPROTO_UDP && p->protocol != IPPROTO_TCP)
        return 1;
    if (bpf_skb_load_bytes(skb, p->l4_off, &p->ports, sizeof(p->ports)))
        return 1;
    return 0;
}

/*
 * The path every packet of the node takes: the IP header's protocol byte and
 * the server port read in place (skb->data, no helper call, no copy), and the
 * packet left alone at the first mismatch.
 */
static __always_inline int handle(struct __sk_buff *skb, __u32 direction)
{
    void *data, *end;
    __u32 peer;
    __be16 *ports, server;
    struct pkt p;

    /*
     * A connected socket's peer port (the server's, for a query and its answer alike) is
     * in the socket the stack has just used, not in the packet's lines, which a bulk
     * stream's copies may have pushed out of cache: when it is set and not a DNS port the
     * packet is not DNS. Unconnected UDP sockets have none; their packets are read.
     */
    peer = skb->remote_port; /* network order, in the upper 16 bits */
    if (peer != 0 && !is_dns_port(bpf_ntohs((__u16)(peer >> 16))))
        return 1;
    data = (void *)(long)skb->data;
    end = (void *)(long)skb->data_end;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data;

        if ((void *)(ip + 1) > end)
            goto nonlinear;
        p.protocol = ip->protocol;
        if ((p.protocol != IPPROTO_UDP && p.protocol != IPPROTO_TCP) ||
            (ip->frag_off & bpf_htons(IP_OFFSET)))
            return 1;
        p.family = AF_INET;
        p.l4_off = (*(__u8 *)ip & 0xf) * 4;
        if (p.l4_off < sizeof(*ip))
            return 1;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data;

        if ((void *)(ip6 + 1) > end)
            goto nonlinear;
        p.protocol = ip6->nexthdr;
        if (p.protocol != IPPROTO_UDP && p.protocol != IPPROTO_TCP)
            return 1;
        p.family = AF_INET6;
        p.l4_off = sizeof(*ip6);
    } else {
        return 1;
    }
    ports = data + p.l4_off;
    if ((void *)(ports + 2) > end)
        goto nonlinear;
    p.ports = *(__u32 *)ports;
    goto test;
nonlinear:
    if (read_nonlinear(skb, &p))
        return 1;
test:
    __builtin_memcpy(&server, (__u8 *)&p.ports + (direction == DNS_DIR_QUERY ? 2 : 0),
                     sizeof(server));
    if (!is_dns_port(bpf_ntohs(server)))
        return 1;
    return record_dns(skb, direction, p.family, p.l4_off, p.ports);
}

SEC("cgroup_skb/egress")
int cgroup_skb__dns_egress(struct __sk_buff *skb)
{
    return handle(skb, DNS_DIR_QUERY);
}

SEC("cgroup_skb/ingress")
int cgroup_skb__dns_ingress(struct __sk_buff *skb)
{
    return handle(skb, DNS_DIR_ANSWER);
}

/*
 * A socket of a DNS server port that the kernel gave an error: an ICMP error on a connected UDP
 * socket (port unreachable: ECONNREFUSED; host or network unreachable), or a TCP reset or
 * timeout. The client learns it at once (a connected socket's next receive fails), so its
 * queries sent before have failed: user space ends them with this error (pkg/dns.h,
 * dns_tracker_socket_error()). An unconnected UDP socket has no peer port here (and without
 * IP_RECVERR the kernel reports it no error at all): its queries stay timeouts. A TCP connect
 * refused sent no query: the record finds none pending. Other sockets' errors cost a few
 * loads. A record the ring has no room for makes the socket's queries unsure instead.
 */
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(tp_btf__dns_sk_error_report, const struct sock *sk)
{
    __u16 family = sk->__sk_common.skc_family, proto = sk->sk_protocol;
    struct dns_record *r;
    __u64 now, cookie;
    int err;

    if ((proto != IPPROTO_UDP && proto != IPPROTO_TCP) ||
        (family != AF_INET && family != AF_INET6) ||
        !is_dns_port(bpf_ntohs(sk->__sk_common.skc_dport)))
        return 0;
    err = sk->sk_err;
    if (!err)
        err = sk->sk_err_soft;
    if (!err)
        return 0;
    now = bpf_ktime_get_boot_ns();
    cookie = bpf_get_socket_cookie((void *)sk);
    r = record_reserve(SLOT_DNS_ERROR, DNS_RECORD_SIZE(0));
    if (!r) {
        cookie_lost(cookie, now);
        return 0;
    }
    __builtin_memset(r, 0, DNS_RECORD_SIZE(0));
    r->hdr.kind = RECORD_DNS;
    r->hdr.ts_ns = now;
    r->direction = DNS_DIR_ERROR;
    r->cookie = cookie;
    r->family = family;
    r->protocol = proto;
    r->sport = sk->__sk_common.skc_num;
    r->dport = bpf_ntohs(sk->__sk_common.skc_dport);
    if (family == AF_INET) {
        __builtin_memcpy(r->saddr, &sk->__sk_common.skc_rcv_saddr, 4);
        __builtin_memcpy(r->daddr, &sk->__sk_common.skc_daddr, 4);
    } else {
        __builtin_memcpy(r->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
        __builtin_memcpy(r->daddr, &sk->__sk_common.skc_v6_daddr, 16);
    }
    r->error = err;
    record_submit_wakeup(r, ringbuf_wakeup_bytes);
    return 0;
}

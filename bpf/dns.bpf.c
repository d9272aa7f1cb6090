// SPDX-License-Identifier: GPL-2.0
/*
 * DNS: every query a socket of this node sends to a DNS server port and every
 * answer it receives from one, UDP and TCP, IPv4 and IPv6, from two cgroup_skb
 * programs attached to the cgroup v2 root (so every process and pod of the
 * node is seen, with no kprobe). A packet that is not DNS costs a header read
 * and a few compares; a DNS message is copied (a bounded prefix) into the
 * ring buffer with its socket's cookie and cgroup, and user space pairs
 * answers with queries. Both programs always let the packet through.
 *
 * Cost (docs/architecture.md): a packet that is not DNS pays the program's
 * entry, an in-place header read and a few compares (classify()).
 *
 * Only the client side is reported: queries leaving a socket (egress, to a
 * server port) and answers arriving at one (ingress, from a server port). A
 * local DNS server's own traffic is the mirror image and is skipped.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "dns_events.h"
#include "common.bpf.h"

#define ETH_P_IP    0x0800
#define ETH_P_IPV6  0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IP_MF       0x2000
#define IP_OFFSET   0x1fff

char LICENSE[] SEC("license") = "GPL";

/* Server ports that are DNS (DNS_PORTS), 0 = unused slot; set before load. */
const volatile __u16 dns_ports[DNS_PORTS_MAX] = {53};
/* Records per second per CPU and direction before suppression; 0 = no limit. */
const volatile __u32 dns_rate_per_sec = 0;

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2); /* 0: queries, 1: answers */
    __type(key, __u32);
    __type(value, struct rate_bucket);
} dns_buckets SEC(".maps");

static __always_inline bool is_dns_port(__u16 port)
{
#pragma unroll
    for (int i = 0; i < DNS_PORTS_MAX; i++)
        if (dns_ports[i] && dns_ports[i] == port)
            return true;
    return false;
}

/* What the headers say about a packet: enough to decide, then to fill a record. */
struct pkt {
    __u16 family;
    __u8 protocol;
    __u16 sport, dport;
    __u32 l4_off;
    __u8 saddr[16], daddr[16];
};

/* IPv4 or IPv6 (no extension headers) carrying the first fragment of UDP or TCP. */
static __always_inline bool parse_headers(struct __sk_buff *skb, struct pkt *p)
{
    __be16 ports[2];

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        __u8 ver_ihl;

        if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
            return false;
        ver_ihl = *(__u8 *)&ip;
        if ((ver_ihl >> 4) != 4 || (ver_ihl & 0xf) < 5)
            return false;
        if (bpf_ntohs(ip.frag_off) & IP_OFFSET)
            return false;
        p->family = AF_INET;
        p->protocol = ip.protocol;
        p->l4_off = (ver_ihl & 0xf) * 4;
        __builtin_memcpy(p->saddr, &ip.saddr, 4);
        __builtin_memcpy(p->daddr, &ip.daddr, 4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;

        if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
            return false;
        p->family = AF_INET6;
        p->protocol = ip6.nexthdr;
        p->l4_off = sizeof(ip6);
        __builtin_memcpy(p->saddr, &ip6.saddr, 16);
        __builtin_memcpy(p->daddr, &ip6.daddr, 16);
    } else {
        return false;
    }
    if (p->protocol != IPPROTO_UDP && p->protocol != IPPROTO_TCP)
        return false;
    if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
        return false;
    p->sport = bpf_ntohs(ports[0]);
    p->dport = bpf_ntohs(ports[1]);
    return true;
}

/* What classify() found. */
enum pkt_class {
    PKT_NOT_DNS,   /* leave it */
    PKT_DNS,       /* a DNS port in this direction; p is filled */
    PKT_UNDECIDED, /* the headers are not in the linear part: parse_headers() decides */
};

/*
 * The fast path every packet takes: the headers read in place (no helper
 * call), PKT_NOT_DNS as soon as the packet cannot be DNS in this direction.
 * A DNS packet's headers are copied into p on the way, so they are read once.
 */
static __always_inline int classify(struct __sk_buff *skb, __u8 direction, struct pkt *p)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    __be16 *ports;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data;

        if ((void *)(ip + 1) > end)
            return PKT_UNDECIDED;
        if (ip->frag_off & bpf_htons(IP_OFFSET))
            return PKT_NOT_DNS;
        p->family = AF_INET;
        p->protocol = ip->protocol;
        p->l4_off = (*(__u8 *)ip & 0xf) * 4;
        if (p->l4_off < sizeof(*ip))
            return PKT_NOT_DNS;
        __builtin_memcpy(p->saddr, &ip->saddr, 4);
        __builtin_memcpy(p->daddr, &ip->daddr, 4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data;

        if ((void *)(ip6 + 1) > end)
            return PKT_UNDECIDED;
        p->family = AF_INET6;
        p->protocol = ip6->nexthdr;
        p->l4_off = sizeof(*ip6);
        __builtin_memcpy(p->saddr, &ip6->saddr, 16);
        __builtin_memcpy(p->daddr, &ip6->daddr, 16);
    } else {
        return PKT_NOT_DNS;
    }
    if (p->protocol != IPPROTO_UDP && p->protocol != IPPROTO_TCP)
        return PKT_NOT_DNS;
    ports = data + p->l4_off;
    if ((void *)(ports + 2) > end)
        return PKT_UNDECIDED;
    p->sport = bpf_ntohs(ports[0]);
    p->dport = bpf_ntohs(ports[1]);
    return is_dns_port(direction == DNS_DIR_QUERY ? p->dport : p->sport) ? PKT_DNS : PKT_NOT_DNS;
}

/* Offset of the DNS message (TCP: of its 2-byte length prefix); 0 when there is none. */
static __always_inline __u32 payload_offset(struct __sk_buff *skb, const struct pkt *p)
{
    __u8 doff;

    if (p->protocol == IPPROTO_UDP)
        return p->l4_off + 8;
    if (bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1))
        return 0;
    return p->l4_off + (doff >> 4) * 4;
}

static __always_inline void fill_sender(struct dns_record *r, struct __sk_buff *skb)
{
    r->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    /* Egress usually runs in the sending task; when the current task is not in the
     * socket's cgroup (a send from softirq, a socket handed over), name no one. */
    if (r->direction != DNS_DIR_QUERY || bpf_get_current_cgroup_id() != r->hdr.cgroup_id)
        return;
    r->hdr.pid = bpf_get_current_pid_tgid() >> 32;
    r->hdr.uid = (__u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(r->hdr.comm, sizeof(r->hdr.comm));
}

static __always_inline int handle(struct __sk_buff *skb, __u8 direction)
{
    __u32 slot = direction == DNS_DIR_QUERY ? SLOT_DNS_EGRESS : SLOT_DNS_INGRESS;
    __u32 bucket_key = direction - 1;
    struct rate_bucket *b;
    struct dns_record *r;
    struct pkt p = {};
    __u32 off;
    __u64 len;
    __u64 now;

    switch (classify(skb, direction, &p)) {
    case PKT_NOT_DNS:
        return 1;
    case PKT_UNDECIDED:
        __builtin_memset(&p, 0, sizeof(p));
        if (!parse_headers(skb, &p) || !is_dns_port(direction == DNS_DIR_QUERY ? p.dport : p.sport))
            return 1;
        break;
    }
    off = payload_offset(skb, &p);
    if (off == 0 || off >= skb->len)
        return 1; /* TCP handshake, ACKs, FIN: no message */

    now = bpf_ktime_get_boot_ns();
    b = bpf_map_lookup_elem(&dns_buckets, &bucket_key);
    if (!b || !rate_bucket_take(b, dns_rate_per_sec, slot, now))
        return 1;
    r = record_reserve(slot, sizeof(*r));
    if (!r)
        return 1; /* counted as a drop; the bucket's suppressed count waits for the next */
    __builtin_memset(&r->hdr, 0, sizeof(r->hdr));
    r->hdr.kind = RECORD_DNS;
    r->hdr.ts_ns = now;
    r->direction = direction;
    fill_sender(r, skb);
    r->cookie = bpf_get_socket_cookie(skb);
    r->suppressed = b->suppressed;
    b->suppressed = 0;
    r->family = p.family;
    r->protocol = p.protocol;
    r->sport = p.sport;
    r->dport = p.dport;
    __builtin_memcpy(r->saddr, p.saddr, 16);
    __builtin_memcpy(r->daddr, p.daddr, 16);
    r->message_len = skb->len - off;
    len = r->message_len < DNS_RECORD_PAYLOAD_MAX ? r->message_len : DNS_RECORD_PAYLOAD_MAX;
    /* The verifier must see the bound on the very register passed as the length: the
     * mask is opaque to the compiler, so it cannot hand the helper another copy. */
    asm volatile("%0 &= 0x3ff" : "+r"(len));
    if (len == 0 || len > DNS_RECORD_PAYLOAD_MAX || bpf_skb_load_bytes(skb, off, r->payload, len))
        len = 0;
    r->payload_len = len;
    record_submit(r);
    return 1;
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

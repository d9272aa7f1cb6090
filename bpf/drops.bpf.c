// SPDX-License-Identifier: GPL-2.0
/*
 * Packet drops: every skb freed with a drop reason (skb:kfree_skb), with the
 * addresses and ports parsed from its headers when it has them. Drop storms
 * are rate-limited per CPU in the kernel and the suppressed drops counted and
 * reported on the next record.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "net_events.h"
#include "common.bpf.h"

#define ETH_P_IP    0x0800
#define ETH_P_IPV6  0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IP_OFFSET   0x1fff

/* IPv6 extension headers that may sit between the fixed header and TCP/UDP. */
#define NEXTHDR_HOP      0
#define NEXTHDR_ROUTING  43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST     60
#define IPV6_EXT_MAX     4

char LICENSE[] SEC("license") = "GPL";

/* Records per second per CPU before suppression; 0 = no limit. Set before load. */
const volatile __u32 drop_rate_per_sec = 0;
/* The tracepoint's fourth argument is the receiving socket (6.10+; user space reads the
 * kernel's BTF). Off, the program never reads it, so it loads where it is absent. */
const volatile bool has_rx_sk = false;

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rate_bucket);
} buckets SEC(".maps");

/* Suppressed drops by reason (net_events.h); user space creates it and reads it. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, DROP_REASON_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} drop_suppressed SEC(".maps");

static __always_inline void count_suppressed(int reason)
{
    __u32 slot = (__u32)reason < DROP_REASON_SLOTS - 1 ? (__u32)reason : DROP_REASON_SLOTS - 1;
    __u64 *n = bpf_map_lookup_elem(&drop_suppressed, &slot);

    if (n)
        *n += 1; /* per CPU, and this program does not nest on a CPU */
}

static __always_inline void read_ports(struct drop_record *r, unsigned char *l4)
{
    __be16 ports[2];

    if (r->protocol != IPPROTO_TCP && r->protocol != IPPROTO_UDP)
        return;
    if (bpf_probe_read_kernel(ports, sizeof(ports), l4))
        return;
    r->sport = bpf_ntohs(ports[0]);
    r->dport = bpf_ntohs(ports[1]);
    r->has_ports = 1;
}

static __always_inline void parse_ipv4(struct drop_record *r, unsigned char *nh)
{
    struct iphdr ip;
    __u8 ver_ihl;

    if (bpf_probe_read_kernel(&ip, sizeof(ip), nh))
        return;
    ver_ihl = *(__u8 *)&ip; /* version:4, ihl:4 without bitfield relocations */
    if ((ver_ihl >> 4) != 4 || (ver_ihl & 0xf) < 5)
        return;
    r->family = AF_INET;
    r->protocol = ip.protocol;
    __builtin_memcpy(r->saddr, &ip.saddr, 4);
    __builtin_memcpy(r->daddr, &ip.daddr, 4);
    if ((bpf_ntohs(ip.frag_off) & IP_OFFSET) == 0)
        read_ports(r, nh + (ver_ihl & 0xf) * 4);
}

static __always_inline void parse_ipv6(struct drop_record *r, unsigned char *nh)
{
    struct ipv6hdr ip6;
    unsigned char *p = nh + sizeof(ip6);
    __u8 next;

    if (bpf_probe_read_kernel(&ip6, sizeof(ip6), nh))
        return;
    if ((*(__u8 *)&ip6 >> 4) != 6)
        return;
    r->family = AF_INET6;
    __builtin_memcpy(r->saddr, &ip6.saddr, 16);
    __builtin_memcpy(r->daddr, &ip6.daddr, 16);
    next = ip6.nexthdr;
#pragma unroll
    for (int i = 0; i < IPV6_EXT_MAX; i++) {
        __u8 ext[2];

        if (next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST &&
            next != NEXTHDR_FRAGMENT)
            break;
        if (bpf_probe_read_kernel(ext, sizeof(ext), p))
            return;
        if (next == NEXTHDR_FRAGMENT) {
            __be16 off;

            if (bpf_probe_read_kernel(&off, sizeof(off), p + 2))
                return;
            r->protocol = ext[0];
            if (bpf_ntohs(off) & 0xfff8)
                return; /* not the first fragment: no L4 header */
            p += 8;
        } else {
            p += (ext[1] + 1) * 8;
        }
        next = ext[0];
    }
    r->protocol = next;
    read_ports(r, p);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_btf__kfree_skb, struct sk_buff *skb, void *location, int reason)
{
    struct rate_bucket *b;
    struct drop_record *r;
    __u32 zero = 0;
    __u64 now;
    unsigned char *head;
    __u16 proto;

    /* Not drops: freed after normal use, or never marked. */
    if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED) ||
        reason == bpf_core_enum_value(enum skb_drop_reason, SKB_NOT_DROPPED_YET))
        return 0;
    /*
     * Nor a segment without payload purged from a socket being destroyed: the peer's FIN
     * queued on a connection the application closed first (so never read), freed when the
     * socket goes to TIME_WAIT. The end of an ordinary teardown, on every such connection;
     * purged data (skb->len, the payload once queued) is still reported.
     */
    if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
        reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
        skb->len == 0)
        return 0;

    /*
     * The socket the packet is charged to; else the one that was receiving it (its receive
     * buffer full, data on a socket already closed): the drop is that socket's pod's.
     * CAPTURE_CGROUP: by that socket; a packet of no socket is not anyone's, so not captured.
     */
    struct sock *owner = skb->sk;
    if (!owner && has_rx_sk)
        owner = (struct sock *)ctx[3];
    /*
     * Nor a segment a TIME_WAIT socket took: the peer's FIN to a connection closed here first
     * (its ACK sent), a duplicate, a RST. The state machine has done its work and the kernel
     * frees the segment through its drop path with no reason given, at the end of every such
     * ordinary teardown. A reason given (PAWS, out of window) is still reported.
     */
    if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED) &&
        owner && BPF_CORE_READ(owner, __sk_common.skc_state) == TCP_TIME_WAIT)
        return 0;
    if (!sock_captured(owner))
        return 0;

    now = bpf_ktime_get_boot_ns();
    b = bpf_map_lookup_elem(&buckets, &zero);
    if (!b)
        return 0;
    if (!rate_bucket_take(b, drop_rate_per_sec, SLOT_KFREE_SKB, now)) {
        count_suppressed(reason);
        return 0;
    }

    r = record_reserve(SLOT_KFREE_SKB, sizeof(*r));
    if (!r)
        return 0; /* the bucket's suppressed count waits for the next record */
    __builtin_memset(r, 0, sizeof(*r));
    /* Usually softirq: the current task is not the packet's owner. Its socket's
     * cgroup is: it names the pod (hdr.cgroup_id; 0 when there is no socket). */
    r->hdr.kind = RECORD_DROP;
    if (SOCK_CGROUP_KNOWN()) {
        struct cgroup *cg = sock_cgroup(owner);

        if (cg)
            r->hdr.cgroup_id = BPF_CORE_READ(cg, kn, id);
    }
    r->hdr.ts_ns = now;
    r->reason = reason;
    r->location = (__u64)location;
    r->suppressed = b->suppressed;
    b->suppressed = 0;

    head = BPF_CORE_READ(skb, head);
    proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
    if (proto == ETH_P_IP)
        parse_ipv4(r, head + BPF_CORE_READ(skb, network_header));
    else if (proto == ETH_P_IPV6)
        parse_ipv6(r, head + BPF_CORE_READ(skb, network_header));
    record_submit(r);
    return 0;
}

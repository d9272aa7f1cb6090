/*
 * Ring buffer record of bpf/dns.bpf.c: one DNS message seen on a socket of
 * this node, a query it sent or an answer it received, with a bounded prefix
 * of the message. User space (cmd/agent/records.c) decodes the record and
 * the DNS tracker (pkg/dns.h) pairs queries with answers.
 *
 * Addresses are raw (network order, IPv4 in the first four bytes); ports are
 * host order; family is AF_INET / AF_INET6.
 */
#ifndef EBPF_MONITOR_BPF_DNS_EVENTS_H
#define EBPF_MONITOR_BPF_DNS_EVENTS_H

#include "common.h"

/*
 * Bytes of a packet's DNS payload copied into a record: an EDNS answer up to 4096 bytes, or a
 * TCP segment's messages up to that far (a segment on a real network is at most its MSS;
 * loopback's may be tens of KiB, its messages past these bytes are not seen).
 */
#define DNS_RECORD_PAYLOAD_MAX 4096
/* A record has room for the smallest of these that holds the message (or for
 * DNS_RECORD_PAYLOAD_MAX): a record is DNS_RECORD_SIZE(room) bytes, not sizeof. */
#define DNS_RECORD_PAYLOAD_TINY    64
#define DNS_RECORD_PAYLOAD_SMALL   128
#define DNS_RECORD_PAYLOAD_MID     256
#define DNS_RECORD_PAYLOAD_CLASSIC 512 /* classic UDP's maximum */
#define DNS_RECORD_SIZE(room)      (__builtin_offsetof(struct dns_record, payload) + (room))
/* Server ports recognised as DNS (DNS_PORTS); unused slots are 0. */
#define DNS_PORTS_MAX 4
/*
 * The settings the dns programs read on every packet, as immediates of 64-bit loads in their
 * instructions: each load is built with DNS_SETTING_MARKER(setting), which no value it stands
 * for reaches (a port, a rate, a quarter of at most 1 GiB of ring; and below 2^31, so the
 * compiler writes it without a sign), and user space writes the value over it before load.
 * bpf/dns.bpf.c, DNS_SETTING(); cmd/agent/capture.c, dns_settings_to_insns().
 */
enum dns_setting {
    DNS_SETTING_PORT0 = 0, /* DNS_PORTS, DNS_PORTS_MAX slots (0: unused) */
    DNS_SETTING_RATE = DNS_SETTING_PORT0 + DNS_PORTS_MAX, /* dns_rate_per_sec */
    DNS_SETTING_WAKEUP_BYTES,                             /* ringbuf_wakeup_bytes */
    DNS_SETTING_TASK_BTF,                                 /* sender_task_btf */
    DNS_SETTINGS,
};
#define DNS_SETTING_MARKER(setting) (0x7d45e000u + (setting))

/*
 * Where a TCP segment's bytes stand in its socket's stream, by its sequence number against
 * the socket's next one, when the program sees it: before TCP itself has looked at an
 * arriving segment, and as a new or a retransmitted one leaves.
 */
enum dns_tcp_order {
    DNS_TCP_NONE = 0,      /* UDP */
    DNS_TCP_NEXT,          /* starts at the socket's next bytes (rcv_nxt arriving, snd_nxt leaving),
                            * or before them and goes on past (a retransmission that also carries
                            * new bytes): tcp_next says where the new ones start */
    DNS_TCP_UNVERIFIED,    /* arriving while a task holds the socket (segments may wait in its
                            * backlog, so rcv_nxt lags), or no TCP socket to compare with */
    DNS_TCP_OLD,           /* only bytes the socket had: a retransmission or a duplicate */
    DNS_TCP_AHEAD,         /* arriving past a gap, within the window: TCP keeps it out of order
                            * until the gap is filled, and it never passes the program again */
    DNS_TCP_OUT_OF_WINDOW, /* arriving past the window TCP offered: TCP throws it away (forged) */
};
#define DNS_TCP_ORDER_MAX DNS_TCP_OUT_OF_WINDOW

enum dns_direction {
    DNS_DIR_QUERY = 1, /* sent by a local socket to a server port (egress) */
    DNS_DIR_ANSWER,    /* received by a local socket from a server port (ingress) */
    DNS_DIR_ERROR,     /* an error the kernel reported on a socket of a server port: no message */
};

/*
 * RECORD_DNS. A DNS_DIR_ERROR record is DNS_RECORD_SIZE(0) bytes: the socket (cookie, its
 * addresses and ports, the server's as daddr/dport) and its error, no payload.
 * hdr.cgroup_id is the socket's cgroup (so an answer received in
 * softirq still names its pod); hdr.pid/ppid/comm/uid are the sending task for a
 * query sent from the socket's own cgroup, zero otherwise (an answer, or a
 * query sent outside the socket owner's context).
 */
struct dns_record {
    struct record_hdr hdr;
    __u64 cookie;     /* bpf_get_socket_cookie: pairs an answer with its socket's query */
    __u64 suppressed; /* dns records rate-limited away on this CPU since the last one */
    __u16 family;
    __u8 protocol;  /* IPPROTO_UDP / IPPROTO_TCP (payload keeps TCP's 2-byte length prefix) */
    __u8 direction; /* enum dns_direction */
    __u16 sport, dport;
    __u8 saddr[16], daddr[16];
    __u32 message_len; /* bytes of L4 payload in the packet */
    __u32 payload_len; /* bytes copied into payload, <= the record's room */
    __u32 tcp_seq;     /* TCP: the segment's sequence number (host order) */
    __u32 tcp_next;    /* TCP: the socket's next one then (rcv_nxt or snd_nxt) */
    __u8 tcp_order;    /* enum dns_tcp_order */
    __u8 pad[3];
    __u32 error; /* DNS_DIR_ERROR: the socket's error (ECONNREFUSED, ...); else 0 */
    __u8 payload[DNS_RECORD_PAYLOAD_MAX]; /* the record ends after its room (DNS_RECORD_SIZE) */
};

/*
 * The DNS answers the ingress program could not pass on (the ring buffer was full, or
 * DNS_RATE_LIMIT suppressed the record), and the socket errors the error program could not
 * (the ring buffer was full), by socket: a per-CPU ring of the sockets they were
 * for and when, so that only those sockets' queries lose their "timeout" (user space reads
 * every CPU's ring at each scan; cmd/agent/dns_agent.c). A loss of a socket among the last
 * DNS_LOST_RECENT written moves that slot's time forward instead of taking a new slot (a
 * socket flooded with answers holds one). Only losses pay for this: the recorded path does
 * not look at it. The losses are still counted as drops and suppressions (struct prog_stats).
 */
#define DNS_LOST_SLOTS  64 /* a power of two */
#define DNS_LOST_RECENT 8

struct dns_lost_slot {
    __u64 cookie; /* bpf_get_socket_cookie(); 0: the packet had no socket */
    __u64 ts_ns;  /* the last loss (CLOCK_BOOTTIME) */
};

struct dns_lost {
    /* Slots taken on this CPU so far: the next goes to written % DNS_LOST_SLOTS. A reader
     * that saw it last at w may have missed a loss once it is past w + DNS_LOST_SLOTS -
     * DNS_LOST_RECENT (a slot moved forward, then taken by a newer socket, before it read). */
    __u64 written;
    struct dns_lost_slot slot[DNS_LOST_SLOTS];
};

#endif

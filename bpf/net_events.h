/*
 * Ring buffer records of the network programs (connections.bpf.c,
 * drops.bpf.c). Addresses are raw (network order, IPv4 in the first four
 * bytes); ports are host order; family is the kernel's AF_INET / AF_INET6.
 */
#ifndef EBPF_MONITOR_BPF_NET_EVENTS_H
#define EBPF_MONITOR_BPF_NET_EVENTS_H

#include "common.h"

enum conn_status {
    CONN_ESTABLISHED = 1,
    CONN_FAILED,
    CONN_ATTEMPTED,
};

/* RECORD_CONNECT (outbound) and RECORD_ACCEPT (inbound; saddr/sport = peer). */
struct conn_record {
    struct record_hdr hdr;
    __u16 family;
    __u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
    __u8 status;   /* enum conn_status (RECORD_CONNECT) */
    __u16 sport, dport;
    __u8 saddr[16], daddr[16];
    __u64 latency_ns; /* TCP: connect() to outcome */
    __u32 error;      /* CONN_FAILED: the errno the kernel recorded on the socket, 0 if none */
    __u32 _pad;
};

enum close_role {
    CLOSE_ROLE_CLIENT = 1,
    CLOSE_ROLE_SERVER,
};

enum close_reset {
    CLOSE_RESET_NONE,
    CLOSE_RESET_SENT,
    CLOSE_RESET_RECEIVED,
};

/*
 * RECORD_CLOSE: an established TCP connection has closed. Addresses are
 * oriented like its connect/accept (saddr/sport = the client whatever the
 * role); hdr is the owning process (zero for a server connection closed
 * before any process accepted it) and hdr.ts_ns the moment it closed.
 */
struct close_record {
    struct record_hdr hdr;
    __u16 family;
    __u8 role;  /* enum close_role */
    __u8 reset; /* enum close_reset */
    __u16 sport, dport;
    __u8 saddr[16], daddr[16];
    __u32 retransmits; /* segments retransmitted by this side */
    __u32 srtt_us;     /* smoothed RTT at close */
    __u64 duration_ns; /* established -> closed */
    __u64 bytes_sent;  /* payload bytes this side sent, retransmissions not counted twice */
    __u64 bytes_received;
};

/*
 * What the connection programs know about a TCP socket, in their `sockets`
 * map keyed by its address: a connect's owner, taken at CLOSE->SYN_SENT
 * (process context; the outcome usually arrives in softirq where the process
 * is unknown), then, with close events, the established connection followed
 * to its close: owner, role and start, then the snapshot taken when it
 * reached TCP_CLOSE.
 *
 * An entry outlives its connection: once the outcome or close record is
 * written it is LIFE_DEAD, and the next socket the kernel allocates at the
 * same address (the slab hands a freed socket's memory out again first)
 * takes it over in place, so a busy node's connections find an entry
 * instead of inserting and deleting one each, the two operations on this
 * map that take a lock. The agent deletes entries dead for longer than
 * SOCKETS_REAP_AGE_NS (cmd/agent/sockets_reap.h), so dead entries are bounded by
 * the sockets closed in that time. Not an LRU: when the map is full a new
 * connect or connection is counted as untracked (stats) rather than silently
 * evicting another one's owner.
 *
 * Shared with user space, which reads phase and closed_ns to reap.
 */
struct sock_life {
    struct record_hdr owner; /* connect: the connecting task; server: zero until accepted */
    __u64 established_ns;
    __u8 phase; /* enum sock_life_phase */
    __u8 role;  /* enum close_role */
    __u8 reset; /* enum close_reset */
    /* The close snapshot (see life_snapshot): the fields of the close record that come
     * from the socket, each once (the record header is the owner's), in 128 bytes in
     * all: with the map's own header and key an entry takes 192 bytes of kernel memory
     * (kmalloc-192) rather than 256. What every program checks (phase, reset, closed_ns)
     * shares a cache line with the key's. While connecting, family and the addresses
     * hold the destination as the connect set it (connect_keep_dest). */
    __u8 family; /* AF_INET or AF_INET6 */
    __u16 sport, dport;
    union {
        __u32 retransmits;   /* following: from the close snapshot */
        __u32 connect_error; /* connecting: the error a report left (see connect_outcome) */
    };
    __u32 srtt_us;
    /* Following: the snapshot was taken (TCP_CLOSE reached) when not 0. Dead: when the
     * connection ended (boot clock), what the agent's reaping goes by. */
    __u64 closed_ns;
    __u64 bytes_sent;
    __u64 bytes_received;
    __u8 saddr[16], daddr[16];
};

_Static_assert(sizeof(struct sock_life) == 128, "a sockets entry outgrows kmalloc-192");

enum sock_life_phase {
    LIFE_CONNECTING = 1, /* SYN_SENT, outcome not reported yet */
    LIFE_FOLLOWING,      /* established, close record not written yet */
    LIFE_DEAD,           /* over: free for the next socket at this address, or reaping */
    LIFE_CONNECT_FAILED, /* closed while connecting with no error left on the socket: the
                          * record waits for the connect()'s own errno (connections.h) */
};

/* The `sockets` map's size: connections followed at once, and dead entries waiting. */
#define SOCKETS_MAX 65536

/*
 * Drops the rate limit suppressed, counted by reason in the kernel (a per-CPU array): the
 * core reasons below DROP_REASON_SLOTS - 1 each in their slot, subsystem reasons (and any
 * larger code) in the last one. A record's `suppressed` says how many went before it, not
 * which: this says which.
 */
#define DROP_REASON_SLOTS 257

/* RECORD_DROP: an skb freed with a drop reason (skb:kfree_skb). */
struct drop_record {
    struct record_hdr hdr;
    __u32 reason;  /* enum skb_drop_reason */
    __u16 family;  /* 0 when the packet had no IP header we could read */
    __u8 protocol; /* 0 when unknown */
    __u8 has_ports;
    __u16 sport, dport;
    __u8 saddr[16], daddr[16];
    __u64 location;   /* kernel text address that freed the skb */
    __u64 suppressed; /* drops rate-limited away on this CPU since the last record */
};

#endif

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

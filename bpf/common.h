/*
 * Shared between the BPF programs in bpf/ and cmd/agent (capture.c loads the
 * programs, records.c decodes their records): the header every ring buffer
 * record starts with, record kinds, and the per-program statistics slots.
 * Only fixed-width types, so both sides agree on layout.
 */
#ifndef EBPF_MONITOR_BPF_COMMON_H
#define EBPF_MONITOR_BPF_COMMON_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define RECORD_COMM_LEN 16

/* What a ring buffer record is; the first field of every record. */
enum record_kind {
    RECORD_CONNECT = 1,
    RECORD_ACCEPT,
    RECORD_DROP,
    RECORD_EXEC,
    RECORD_EXIT,
    RECORD_CLOSE,
    RECORD_DNS, /* bpf/dns_events.h */
};

/* One statistics slot per BPF program (index into the shared `stats` map). */
enum prog_slot {
    SLOT_INET_SOCK_SET_STATE,
    SLOT_SYS_EXIT_CONNECT,
    SLOT_SYS_EXIT_ACCEPT,
    SLOT_KFREE_SKB,
    SLOT_SCHED_PROCESS_EXEC,
    SLOT_SCHED_PROCESS_EXIT,
    SLOT_TCP_DESTROY_SOCK, /* close records (the lifecycle's end) */
    SLOT_TCP_SEND_RESET,   /* marks a tracked connection reset by this side */
    SLOT_TCP_RECEIVE_RESET,
    SLOT_DNS_EGRESS,  /* dns queries (cgroup_skb/egress) */
    SLOT_DNS_INGRESS, /* dns answers (cgroup_skb/ingress) */
    SLOT_DNS_ERROR,   /* dns queries failed by an ICMP error or a reset (inet_sk_error_report) */
    SLOT_COUNT,
};

/* Per-CPU counters of one program; user space sums over CPUs. */
struct prog_stats {
    __u64 events;     /* records submitted */
    __u64 drops;      /* ring buffer full: record lost in the kernel */
    __u64 suppressed; /* rate-limited away (packet_drop, dns) */
    __u64 untracked;  /* not followed: the kernel map pairing a socket with its start was full */
};

/* The process a record is attributed to; zero where there is none (softirq). */
struct record_hdr {
    __u32 kind; /* enum record_kind */
    __u32 pid;  /* tgid */
    __u32 ppid; /* real_parent's tgid */
    __u32 uid;
    __u64 ts_ns; /* bpf_ktime_get_boot_ns() */
    __u64 cgroup_id;
    char comm[RECORD_COMM_LEN];
};

#endif

/*
 * Kernel capture: loads the CO-RE eBPF programs in bpf/, attaches each one on
 * its own, reads their ring buffer, and delivers every kernel record as a
 * struct event (decoded by records.h, which knows the record layouts).
 */
#ifndef EBPF_MONITOR_CAPTURE_H
#define EBPF_MONITOR_CAPTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "sockets_reap.h"

struct dns_lost;

struct capture;

struct records_dns;
/*
 * Called on the capture thread for every DNS message a socket sent or
 * received (bpf/dns.bpf.c); m and what it points to are valid only during
 * the call.
 */
typedef void (*capture_dns_fn)(void *ctx, const struct records_dns *m);

struct capture_config {
    uint32_t event_types;       /* EVENT_TYPE_BIT mask of types to capture */
    size_t ringbuf_bytes;       /* shared ring buffer; rounded up to a power of two >= the page
                                   size; 0 = 8 MiB */
    uint32_t drop_rate_per_sec; /* packet_drop events per second per CPU before suppression
                                   (burst: one second's worth); 0 = no limit */
    bool verbose;               /* libbpf's debug log too (process-wide: libbpf has one logger) */
    bool cgroup_only;           /* CAPTURE_CGROUP: only tasks and sockets in one subtree */
    uint64_t cgroup_id;         /* that subtree's cgroup id */
    uint32_t cgroup_level;      /* and its depth below the cgroup v2 root */
    /* dns (EVENT_DNS in event_types): */
    uint16_t dns_ports[4];     /* server ports that are DNS, 0 = unused; all 0 = {53} */
    uint32_t dns_rate_per_sec; /* dns records per second per CPU and direction; 0 = no limit */
    const char *cgroup_root;   /* cgroup v2 mount the programs attach to; NULL = detect */
    capture_dns_fn dns_fn;     /* receives the DNS messages; NULL: dns programs not loaded */
    void *dns_ctx;
};

/*
 * Called on the capture thread for every event, fully filled except id and
 * node (the agent assigns those). e is valid only during the call; the
 * callee copies or moves what it keeps.
 */
typedef void (*capture_event_fn)(void *ctx, struct event *e);

/*
 * Loads and attaches every program that event_types needs. A program that
 * fails is reported (log + capture_programs) and the rest run. Returns NULL
 * with a message in err only when nothing could be attached (or without
 * privileges).
 */
struct capture *capture_open(const struct capture_config *cfg, capture_event_fn fn, void *ctx,
                             char *err, size_t errlen);
/* Polls the ring buffer (waiting at most timeout_ms, capped at a few tens of ms: the
 * programs do not wake the reader for every record), delivering events; returns events
 * handled or -errno (-EINTR is benign). */
int capture_poll(struct capture *c, int timeout_ms);
/* CLOCK_REALTIME - CLOCK_BOOTTIME as the current poll sampled it: what the events it delivers
 * were stamped with (records carry the boot clock). Capture thread. */
int64_t capture_boot_to_real_ns(const struct capture *c);
/* Detaches every link and unloads everything. */
void capture_close(struct capture *c);

enum capture_program_status {
    CAPTURE_PROGRAM_ATTACHED,
    CAPTURE_PROGRAM_FAILED,
    CAPTURE_PROGRAM_DISABLED, /* its event type was not requested */
};

/*
 * One entry per event source, each with its own counters. Two entries may
 * share one kernel program (same hook and prog_id): tp_btf__sys_exit_connect
 * (UDP connect) and tp_btf__sys_exit_accept are one sys_exit program, so that
 * every syscall pays for one program, not two.
 */
struct capture_program_info {
    char name[64]; /* e.g. "tp_btf__sched_process_exec" */
    char hook[96]; /* e.g. "tp_btf/sched_process_exec" */
    enum capture_program_status status;
    uint32_t prog_id;       /* kernel program id while attached, else 0 (may be shared) */
    char error[128];        /* when FAILED */
    const char *event_type; /* event type it produces */
    uint32_t serves;        /* EVENT_TYPE_BIT mask: the asked-for types it runs for (its own,
                             * close for those close needs), 0 when not attached */
    uint64_t events;        /* records submitted by the kernel side */
    uint64_t drops;         /* ring buffer reserve failures (lost in the kernel) */
    uint64_t suppressed;    /* rate-limited away (packet_drop, dns) */
    uint64_t untracked;     /* connections not followed: the kernel socket map was full */
    uint64_t missed;        /* runs the kernel skipped: the program was already running on
                             * that CPU (a softirq came in over a run in process context);
                             * on the first of the slots sharing a program */
};

/* Fills up to max entries; returns the number of programs. Thread-safe (reads map counters). */
size_t capture_programs(struct capture *c, struct capture_program_info *out, size_t max);

/* Fills out; thread-safe. */
void capture_sockets_stats(struct capture *c, struct capture_sockets_stats *out);

/* Records read from the ring buffer that produced no event. */
struct capture_record_losses {
    uint64_t malformed; /* shorter than their kind, of an unknown kind, or a field out of range */
    uint64_t no_memory; /* no memory for an exec event's strings */
    uint64_t duplicate_exit; /* a second exit record of one process (records_exit_repeated()) */
};

/* Fills out; thread-safe (the capture thread counts, any thread may read). */
void capture_record_losses(struct capture *c, struct capture_record_losses *out);

/*
 * The DNS answers the kernel did not pass on (the ingress program's records the full ring
 * buffer refused, and those DNS_RATE_LIMIT suppressed), by socket: each CPU's ring of them
 * (struct dns_lost, bpf/dns_events.h) as it is now, for dns_agent_answers_lost(). *out is one
 * per possible CPU, owned by the capture and valid until the next call. Returns the number of
 * CPUs; 0 when the DNS ingress program is not attached (nothing can be lost); -errno when the
 * map could not be read (*out NULL: any answer may have been lost). Capture thread.
 */
int capture_dns_lost(struct capture *c, const struct dns_lost **out);

/*
 * Drops the rate limit (DROP_RATE_LIMIT) suppressed, by reason: out[code] for the kernel's
 * core reasons below CAPTURE_DROP_REASON_SLOTS - 1, the last slot for subsystem reasons; summed
 * over CPUs. 0, or -errno with out zeroed (the drop program is not attached). Any thread.
 */
#define CAPTURE_DROP_REASON_SLOTS 257 /* DROP_REASON_SLOTS of bpf/net_events.h */
int capture_drops_suppressed(struct capture *c, uint64_t out[CAPTURE_DROP_REASON_SLOTS]);
/* The running kernel's name of drop reason code ("NO_SOCKET"), or NULL. Any thread. */
const char *capture_drop_reason_name(const struct capture *c, uint32_t code);

/* Number of programs attached (for /ready). */
size_t capture_attached(struct capture *c);

#endif

/*
 * The agent's DNS pipeline: DNS messages from the capture (records_dns, one
 * per packet bpf/dns.bpf.c saw) are parsed and paired by the tracker of
 * pkg/dns.h into `dns` events; answered queries feed the name cache behind
 * `peer_dns`; `dns` events are counted per namespace/workload and rcode, with
 * a latency histogram, for /metrics.
 *
 * Threads: everything but the getters belongs to the capture thread (the
 * tracker and the name cache do not lock). dns_agent_get_stats() and
 * dns_agent_metrics() may run on any thread: they read a snapshot and the
 * series table under a mutex.
 */
#ifndef EBPF_MONITOR_DNS_AGENT_H
#define EBPF_MONITOR_DNS_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "dns.h"
#include "event.h"
#include "records.h"

/* Latency histogram bounds (seconds) of ebpf_agent_dns_latency_seconds. */
#define DNS_AGENT_LATENCY_BUCKETS 12

struct dns_agent_config {
    uint64_t timeout_ns;  /* DNS_TIMEOUT */
    uint32_t pending_max; /* DNS_PENDING_MAX */
    size_t max_series;    /* (namespace, workload) series on /metrics; more fold into ~other */
};

/*
 * Receives each `dns` event the tracker completes (answered or timed out),
 * with the smallest TTL of its answer's addresses (0 for a timeout). The
 * callee finishes the event (id, node, pod) and should hand it back with
 * dns_agent_learn() and dns_agent_count() before it moves it away; e is
 * cleared after the call.
 */
typedef void (*dns_agent_emit_fn)(void *ctx, struct event *e, uint32_t ttl_s);

struct dns_agent;
struct dns_lost;

/* NULL when out of memory. */
struct dns_agent *dns_agent_new(const struct dns_agent_config *cfg, dns_agent_emit_fn emit,
                                void *ctx);
void dns_agent_free(struct dns_agent *d); /* NULL is allowed; pending queries emit nothing */

/* One message from the capture (capture_dns_fn). */
void dns_agent_message(struct dns_agent *d, const struct records_dns *m);
/*
 * The kernel's rings of the DNS answers it lost, as read at now_boot_ns (capture_dns_lost():
 * ncpus of them; ncpus < 0 when they could not be read, ncpus 0 when there are none). Each
 * loss since the last call makes the queries its socket sent before it unsure: should nothing
 * answer them, they expire as "unknown", not "timeout". Only when that is not known (a CPU's
 * ring took more losses than it keeps since the last call, the rings could not be read, or
 * the lost packet had no socket) does a loss make every query sent before it unsure. Call it
 * before dns_agent_expire() with a now_boot_ns read before the rings were.
 */
void dns_agent_answers_lost(struct dns_agent *d, const struct dns_lost *per_cpu, int ncpus,
                            uint64_t now_boot_ns);
/*
 * Emits the queries pending longer than DNS_TIMEOUT at now_boot_ns (CLOCK_BOOTTIME, the
 * capture's clock) as timeouts and refreshes the statistics snapshot. A query that expires
 * unanswered after an answer that may have been its own was lost says "unknown", not
 * "timeout": lost in the kernel (dns_agent_answers_lost()), TCP answer bytes of its socket
 * given up here, or an answer with its transaction id that did not say its question.
 */
void dns_agent_expire(struct dns_agent *d, uint64_t now_boot_ns);

/*
 * An answered event, finished (its pod known): its addresses name later
 * connections; called from the emit callback, also those past the event's
 * bounded answers (a large answer's).
 */
void dns_agent_learn(struct dns_agent *d, const struct event *e, uint32_t ttl_s,
                     uint64_t now_boot_ns);
/* connection, accept, close: sets e->peer.dns (interned) when the event's process or pod
 * resolved the peer's address to a name that is still valid. */
void dns_agent_fill_peer(struct dns_agent *d, struct event *e, uint64_t now_boot_ns);
/* A finished `dns` event into the /metrics series. */
void dns_agent_count(struct dns_agent *d, const struct event *e);

struct dns_agent_stats {
    struct dns_tracker_stats tracker;
    struct dns_names_stats names;
    uint64_t messages;            /* DNS messages received from the capture */
    uint64_t suppressed;          /* messages the kernel's DNS_RATE_LIMIT suppressed */
    uint64_t truncated;           /* messages the capture copied only in part */
    uint64_t tcp_reassembled;     /* TCP messages taken from more than one segment */
    uint64_t tcp_partial_dropped; /* TCP messages whose end never came (or evicted) */
    uint64_t tcp_not_next;        /* TCP segments skipped: bytes taken already, or out of window */
    uint64_t series;              /* (namespace, workload) series on /metrics */
    uint64_t series_folded;       /* events counted in a ~other series */
};

void dns_agent_get_stats(struct dns_agent *d, struct dns_agent_stats *out);
/*
 * The "dns" object of /api/stats (without a leading comma). kernel_suppressed:
 * the dns programs' own count of messages DNS_RATE_LIMIT suppressed, which is
 * current, where the records tell only of those before the next message
 * captured (0 when unknown).
 */
void dns_agent_stats_json(struct dns_agent *d, uint64_t kernel_suppressed, struct buf *b);
/* ebpf_agent_dns_* families; kernel_suppressed as above. */
void dns_agent_metrics(struct dns_agent *d, uint64_t kernel_suppressed, struct buf *b);

#endif

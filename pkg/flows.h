/*
 * Flows: connections aggregated into edges between workloads, in per-minute
 * buckets, behind GET /api/flows (SPEC §8) on the agent and the aggregator.
 *
 * An edge is seen from its client. Each connection counts once:
 * - a `connection` event gives connections, established/failed/attempted,
 *   failed_by_error and the connect latency (established ones only);
 * - a `close` event with role client gives bytes (bytes_sent = client to
 *   server), retransmits and resets.
 * `accept` events and server-side `close` events are not counted: they are
 * the other end's view of a connection its client already reported, and
 * without the cross-node join they cannot be put on the client's edge.
 *
 * Endpoints: in Kubernetes the source is the event's own workload (its
 * namespace, workload, kind, pod); outside it the workload is the event's
 * `command` with kind "Process" and its node. The destination is the peer
 * (namespace, workload, kind, pod, service) when the agent named it, else
 * its IP address (and the name the process resolved it from, if seen).
 *
 * Memory: edges are kept at pod granularity; each holds one bucket per
 * minute it was active: its newest minutes as plain structs
 * (flows_minute_bytes()), older ones compacted to a few varints each with a
 * total per hour (flows_internal.h), 30-40 bytes per edge-minute with its
 * eviction slot. The total of edge-minutes is bounded by max_edge_minutes,
 * the oldest-inserted evicted first; buckets older than retention are
 * dropped. Both are counted (flows_get_stats). Thread-safe (one mutex; a
 * query takes it for a few dozen edges at a time, so ingest waits for one
 * such step, not for the whole query: a 24-hour query over 10,000 edges
 * takes some tens of milliseconds).
 *
 * Latency is a mergeable histogram with fixed log2 buckets, so percentiles
 * of any set of minutes or replicas come from summed counts: the reported
 * p-th percentile is the upper bound of the bucket holding it (within 2x).
 */
#ifndef EBPF_MONITOR_FLOWS_H
#define EBPF_MONITOR_FLOWS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"

/* Bucket 0: < 2^10 ns; bucket b: [2^(b+9), 2^(b+10)) ns; the last is open. */
#define FLOWS_HIST_BUCKETS  28
#define FLOWS_ERROR_SLOTS   4 /* distinct failure causes per bucket; more count as "other" */
#define FLOWS_QUERY_STR_MAX 256

enum flows_group {
    FLOWS_GROUP_WORKLOAD = 0,
    FLOWS_GROUP_POD,
    FLOWS_GROUP_SERVICE,
};

/* One side of an edge; strings interned, NULL when unknown. */
struct flows_endpoint {
    const char *namespace;
    const char *workload;
    const char *workload_kind;
    const char *pod;
    const char *node;
    const char *service; /* destination only */
    const char *dns;     /* destination outside the cluster */
    uint8_t family;      /* destination outside the cluster: its address */
    uint8_t ip[16];
};

struct flows_key {
    struct flows_endpoint src, dst;
    uint16_t port;
    uint8_t protocol;
};

struct flows_error_count {
    const char *error; /* interned; NULL: free slot */
    uint64_t count;
};

/* An edge's counts over some minutes (and replicas). */
struct flows_counts {
    uint64_t connections, established, failed;
    uint64_t resets, retransmits, bytes_sent, bytes_received;
    struct flows_error_count errors[FLOWS_ERROR_SLOTS];
    uint64_t errors_other; /* failures past FLOWS_ERROR_SLOTS causes */
    uint64_t hist[FLOWS_HIST_BUCKETS];
    uint64_t first_seen_ns, last_seen_ns; /* 0: none */
    uint64_t latency_sum_ns;              /* /metrics series only; 0 in query results */
};

struct flows_edge {
    struct flows_key key;
    struct flows_counts c;
};

/* Edges answering a query; also what replicas exchange and merge. */
struct flows_result {
    struct flows_edge *edges; /* owned */
    size_t count, cap;
    size_t total; /* edges matched, before flows_result_finish() kept limit of them */
    /* Owned; open addressing over edges, index_cap slots: the high half of the key's hash above
     * the edge's position + 1 (0 = empty), so a probe reads an edge only when the halves match. */
    uint64_t *index;
    size_t index_cap;
};

struct flows_query {
    uint64_t since_ns, until_ns; /* inclusive */
    /* Interned; NULL = any; a name the string table does not hold (no event carried it) is
     * flows_name_none, which matches nothing. */
    const char *namespace, *workload, *node;
    /* workload holds a U+FFFD: it also matches a name it is the shown text of (the API shows
     * invalid UTF-8 as U+FFFD); then workload may be workload_text, when not interned. */
    bool workload_shown;
    char workload_text[3 * EVENT_NAME_MAX + 1];
    enum flows_group group_by;
    uint8_t protocol; /* 0 = any */
    uint8_t status;   /* enum event_status; NONE = any */
    uint32_t limit;
};

#define FLOWS_DEFAULT_WINDOW_NS (15ull * 60 * 1000000000ull)
#define FLOWS_DEFAULT_LIMIT     1000
#define FLOWS_MAX_LIMIT         100000

struct flows_stats {
    uint64_t edges;        /* distinct keys held */
    uint64_t edge_minutes; /* buckets held */
    uint64_t bytes;        /* memory they and the edges take */
    uint64_t capacity;     /* max edge-minutes */
    uint64_t evicted_full; /* buckets evicted for room */
    uint64_t evicted_age;  /* buckets past retention */
    uint64_t events;       /* events counted into buckets */
    uint64_t ignored;      /* events that say nothing about a flow (or too old) */
    uint64_t failed;       /* events lost for want of memory or of a name (intern.h full) */
};

struct flows;

/* NULL when out of memory. max_edge_minutes > 0; retention_ns > 0. */
struct flows *flows_new(uint64_t retention_ns, uint64_t max_edge_minutes);
void flows_free(struct flows *f);

/* Counts n events (the rules above); now_ns is the wall clock, for retention. */
void flows_add(struct flows *f, const struct event *events, size_t n, uint64_t now_ns);

/*
 * Parses a raw query string of /api/flows (percent-encoded) into q; now_ns
 * gives the default window. 0, or -EINVAL with a message naming the
 * parameter in err.
 */
/* A filter's name no event carried (see struct flows_query). */
extern const char flows_name_none[];

int flows_query_parse(struct flows_query *q, const char *qs, size_t len, uint64_t now_ns, char *err,
                      size_t errlen);

/*
 * The edges q selects, grouped as q says (not yet sorted or limited). 0 or
 * -ENOMEM. Reads the edges a few at a time, letting events in between: each
 * edge is counted once, as it stands when the query reaches it.
 */
int flows_query(struct flows *f, const struct flows_query *q, struct flows_result *out);

/* Adds edge e into r: counts summed, histograms bucket-wise, first/last min/max. 0 or -ENOMEM. */
int flows_result_add(struct flows_result *r, const struct flows_edge *e);
/*
 * Keeps the edges with at least one connection of outcome status (EVENT_STATUS_NONE: all), as
 * they stand once every share is added (flows_query() does not filter by status: an edge's
 * outcomes may be spread over replicas); sorts them by connections (then bytes, then key) and
 * keeps the first limit (total: all that matched).
 */
void flows_result_finish(struct flows_result *r, uint8_t status, uint32_t limit);
void flows_result_free(struct flows_result *r);

/* The p-th percentile (0 < p <= 100) of h's latencies in ns; 0 when empty. */
uint64_t flows_hist_percentile(const uint64_t hist[FLOWS_HIST_BUCKETS], unsigned p);

/* The API's "edges" array: one object per edge with percentiles, without histograms. */
void flows_result_json(const struct flows_result *r, struct buf *out);

/*
 * The exact form replicas exchange: {"edges":[...]} with every count and
 * the histogram, and flows_result_decode() its inverse. Decoding takes the
 * bytes of any sender: -EINVAL (r empty) unless every edge is well formed;
 * -ENOMEM. r is freed with flows_result_free() whatever the result.
 */
void flows_result_encode(const struct flows_result *r, struct buf *out);
int flows_result_decode(const char *data, size_t len, struct flows_result *r);
/* The same from a parsed object (its "edges" member; other members are ignored). */
int flows_result_decode_json(json_t *root, struct flows_result *r);

/*
 * Handing a stopping replica's flows to a peer: every minute f holds, each as
 * one edge's counts of that minute, in JSON chunks of at most chunk_max bytes
 * ({"minutes":[[minute,edge],...]}, an edge as flows_result_encode() writes
 * one), at most total_max bytes in all. *chunks (*nchunks of them) are the
 * caller's: flows_handover_free(). *left: the minutes that did not fit. 0 or
 * -ENOMEM (what fitted is there).
 */
struct flows_handover_chunk {
    struct buf json;
    uint64_t minutes;
};
int flows_handover_encode(struct flows *f, size_t chunk_max, size_t total_max,
                          struct flows_handover_chunk **chunks, size_t *nchunks, uint64_t *left);
void flows_handover_free(struct flows_handover_chunk *chunks, size_t n);
/*
 * Merges a chunk into f as buckets of its own (edges made as needed, room made
 * as for events; not into the /metrics series, whose counters are each
 * replica's own); minutes past f's retention are skipped. *merged: minutes
 * merged. 0; -EINVAL when the chunk is malformed (nothing merged); -ENOMEM.
 */
int flows_handover_merge(struct flows *f, const char *data, size_t len, uint64_t now_ns,
                         uint64_t *merged);

void flows_get_stats(struct flows *f, struct flows_stats *out);
/* {"edges","edge_minutes","bytes","capacity","evicted_full","evicted_age","events","ignored","failed"}
 */
void flows_stats_json(struct flows *f, struct buf *out);
/* The same bounds and losses as Prometheus text: <prefix>_flow_buckets, <prefix>_flow_bytes,
 * <prefix>_flow_evicted_total{reason="full"|"age"}, <prefix>_flow_failed_total. */
void flows_stats_metrics(struct flows *f, const char *prefix, struct buf *b);

/*
 * The /api/flows body without its closing brace: {"edges":[...],"count":n,
 * "window":{"since":..,"until":..},"query_time":"<query_time>", where window
 * is what was counted: the whole minutes q's window overlaps. The aggregator
 * appends "replicas" and "partial", then '}'.
 */
void flows_response_begin(struct buf *out, const struct flows_result *r,
                          const struct flows_query *q, const char *query_time);

/*
 * Also keeps cumulative counters per (source namespace/workload, destination
 * namespace/workload or IP, port, protocol) for /metrics, and packet-drop
 * events per (namespace/workload, reason), at most max_series of each:
 * events of a new series past that count in a "~other" one, counted in
 * ebpf_flow_series_folded_total. A series no event counted into for
 * stale_after_ns (STALE_AFTER; 0: never) goes away, counted in
 * ebpf_flow_series_removed_total; with flows_series_set_alive(), only once a
 * workload at either end is gone, or after the retention. Call once, before
 * events are added.
 */
void flows_series_enable(struct flows *f, size_t max_series, uint64_t stale_after_ns);
/*
 * Whether a Kubernetes workload (namespace and workload interned) still runs,
 * asked with the flows' lock held (so it must not call back into them).
 */
typedef bool (*flows_alive_fn)(void *ctx, const char *namespace, const char *workload,
                               uint64_t now_ns);
/*
 * With alive: a series quiet for stale_after_ns goes away only when a
 * workload at either end (the source of a drop series) is gone, and any
 * quiet for the retention (flows_new()); a process, a Service or an IP is
 * never gone, so such a series lives on its source's workload (a process's:
 * the retention). So a Prometheus scrape sees the counters of workloads that
 * are only quiet, and those of deleted ones go away (SPEC §8).
 */
void flows_series_set_alive(struct flows *f, flows_alive_fn alive, void *ctx);
/* Prometheus text of those series: ebpf_flow_{connections,bytes_sent,bytes_received,
 * retransmits,resets}_total, ebpf_flow_connect_latency_seconds (histogram),
 * ebpf_flow_workload_drops_total, ebpf_flow_series, ebpf_flow_series_folded_total,
 * ebpf_flow_series_removed_total. */
void flows_series_metrics(struct flows *f, struct buf *b);

/* Bytes a plain (not yet compacted) edge-minute costs: its bucket and its eviction slot. */
size_t flows_minute_bytes(void);

#endif

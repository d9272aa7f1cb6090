/*
 * How a replica's answer travels on NATS, both ways, and what a received one
 * must look like before it counts (see cluster.h for the subjects).
 *
 * - query answer: a protobuf QueryReply (events.proto) holding the replica
 *   id, its page of matches (newest first), total_count, has_more, or an
 *   error. The encoder leaves out the oldest events (saying has_more) until
 *   the message fits the bus's max payload.
 * - stats answer: a JSON object {"replica":..,"connected":..,"counters":{..},
 *   "nodes":{..}} or {"replica":..,"error":".."}; counters are objects of
 *   non-negative numbers, bounded in keys, key length and depth.
 *
 * Decoding takes the bytes of any sender: nothing here trusts them.
 */
#ifndef EBPF_MONITOR_AGGREGATOR_CLUSTER_REPLY_H
#define EBPF_MONITOR_AGGREGATOR_CLUSTER_REPLY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "cluster_merge.h"
#include "flows.h"
#include "store.h"

#define CLUSTER_DEFAULT_PAYLOAD    (1 << 20)
#define CLUSTER_PAYLOAD_OVERHEAD   1024 /* room left for the protocol around a reply */
#define CLUSTER_COUNTERS_MAX_KEYS  256  /* per object of a stats answer's counters */
#define CLUSTER_COUNTERS_MAX_DEPTH 3
#define CLUSTER_KEY_MAX            64  /* bytes of a counter's name */
#define CLUSTER_ERROR_MAX          512 /* bytes of a peer's error message */

/*
 * Encodes replica's answer to a query into out (reset first): r's events, or
 * error when not NULL (r may then be NULL). max_payload is the bus's limit
 * (<= CLUSTER_PAYLOAD_OVERHEAD: CLUSTER_DEFAULT_PAYLOAD). out->oom or an
 * empty out when it could not be encoded.
 */
void cluster_reply_query_encode(const char *replica, const struct store_result *r,
                                const char *error, int64_t max_payload, struct buf *out);

/* A decoded query answer. replica and error point into it. */
struct cluster_query_reply {
    const char *replica;       /* as sent: check it with cluster_answer_admit() */
    const char *error;         /* NULL unless the peer could not run the query */
    struct cluster_source src; /* owned; events that did not decode are left out */
    void *pb;                  /* the unpacked message */
};

/*
 * Decodes len bytes of a query answer into out. 0; -EINVAL when they are no
 * QueryReply (out empty); -ENOMEM when its events could not be held (replica
 * and error are still set). out is freed with cluster_query_reply_free()
 * whatever the result.
 */
int cluster_reply_query_decode(const void *data, size_t len, struct cluster_query_reply *out);
void cluster_query_reply_free(struct cluster_query_reply *r);

/* Encodes replica's stats error answer: its stats are over the bus's max payload. */
void cluster_reply_stats_too_large(const char *replica, int64_t max_payload, struct buf *out);

/*
 * Parses len bytes of a stats answer (JSON, duplicate keys rejected): a new
 * reference, or NULL when they are not JSON. Check it with
 * cluster_reply_stats_check().
 */
json_t *cluster_reply_stats_decode(const void *data, size_t len);
/* What is wrong with a decoded stats answer's shape, or NULL. */
const char *cluster_reply_stats_check(json_t *root);

/*
 * flows answer: all matching edges (the limit applies after the merge) in
 * flows_result_encode()'s exact form (every count and the histogram), split
 * into parts that each fit max_payload: {"replica":..,"part":i,"last":bool,
 * "edges":[...]}, parts 0..n-1 with only the last saying so. emit is called
 * for each part in order; it returns 0 or a negative errno that stops the
 * answer. When an answer cannot be made (error != NULL, no memory, an edge
 * alone over the payload, more than CLUSTER_FLOWS_MAX_PARTS parts) the last
 * thing emitted is {"replica":..,"error":".."}, which stands for the whole
 * answer. Returns what emit last returned.
 */
#define CLUSTER_FLOWS_MAX_PARTS 1024
int cluster_reply_flows_encode(const char *replica, const struct flows_result *r, const char *error,
                               int64_t max_payload, int (*emit)(void *ctx, const struct buf *part),
                               void *ctx);

struct cluster_flows_reply {
    const char *replica; /* as sent: check it with cluster_answer_admit() */
    const char *error;   /* NULL unless the peer could not answer */
    unsigned part;       /* < CLUSTER_FLOWS_MAX_PARTS; 0 when the answer has no "part" */
    bool last;           /* the answer's last part (true when it has no "part") */
    struct flows_result edges;
    json_t *root;
};

/*
 * Decodes len bytes of a flows answer into out. 0; -EINVAL when they are no
 * flows answer (replica may still be set); -ENOMEM. out is freed with
 * cluster_flows_reply_free() whatever the result.
 */
int cluster_reply_flows_decode(const void *data, size_t len, struct cluster_flows_reply *out);
void cluster_flows_reply_free(struct cluster_flows_reply *r);

#endif

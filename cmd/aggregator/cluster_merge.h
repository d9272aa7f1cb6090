/*
 * The pure half of the cluster: what one replica makes of its peers' answers
 * once they are decoded (cluster_reply.h). No NATS, no threads, no globals:
 * cluster.c gathers and hands each answer here, the unit tests do the same
 * with answers of their own.
 *
 * - which answers may count in one gather (cluster_answers): a valid replica
 *   id, not this replica's own, one per peer, from a live peer;
 * - a stats answer taken into the gathered stats and the merged node table,
 *   and its counters summed into the cluster's totals;
 * - the events of every replica merged into one page, newest first.
 *
 * Counts a peer claims are summed saturating at INT64_MAX (what JSON and
 * jansson can carry), whatever it sent.
 */
#ifndef EBPF_MONITOR_AGGREGATOR_CLUSTER_MERGE_H
#define EBPF_MONITOR_AGGREGATOR_CLUSTER_MERGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "nodes.h"
#include "query.h"

#define CLUSTER_MAX_PEERS      256
#define CLUSTER_REPLICA_ID_LEN 17 /* 16 lowercase hex chars + NUL */

/* Whether s is a replica id: 1 to 16 lowercase hex characters. */
bool cluster_replica_id_valid(const char *s);

/* a + b, saturating at INT64_MAX (either may be anything a peer claims). */
uint64_t cluster_count_add(uint64_t a, uint64_t b);

/*
 * The replicas whose answer one gather has counted. self and is_peer are set
 * by the gatherer; is_peer(ctx, id) says whether id is a live peer now.
 */
struct cluster_answers {
    const char *self;
    bool (*is_peer)(void *ctx, const char *id);
    void *ctx;
    size_t n;
    char ids[CLUSTER_MAX_PEERS][CLUSTER_REPLICA_ID_LEN];
};

/*
 * Whether an answer in id's name may count: a live peer's, and its first in
 * this gather (more would stand in for a peer not heard yet). NULL, or why not.
 */
const char *cluster_answer_admit(const struct cluster_answers *seen, const char *id);
/* Counts id's answer as received (after cluster_answer_admit() said yes). */
void cluster_answer_record(struct cluster_answers *seen, const char *id);

/* a + b for JSON counters: a negative counts as 0, the sum saturates at INT64_MAX. */
json_int_t cluster_counter_sum(json_int_t a, json_int_t b);

/*
 * Adds a replica's stats counters (checked) into totals, recursing into
 * objects: integers are summed (a negative counts as 0) saturating at
 * INT64_MAX, reals keep the larger. Only totals' keys, with their types, are
 * summed: what this replica does not count itself (a newer peer's counter,
 * or a made-up one) is left out.
 */
void cluster_counters_add(json_t *totals, json_t *counters);

/* The peers' stats answers, checked; this replica's own is not included. */
struct cluster_stats {
    json_t **replies; /* owned; objects with "replica" and "counters" or "error" */
    size_t count;
    unsigned answered, expected; /* this replica included */
};

/*
 * Takes one peer's stats answer (root, as cluster_reply_stats_decode() gave
 * it; may be NULL): admitted by seen and shaped as cluster_reply_stats_check()
 * wants, its node table is merged into nodes (all or nothing) and the rest
 * kept in out with a reference of its own. NULL when it counts as an answer,
 * or why it was rejected (seen and nodes unchanged).
 */
const char *cluster_stats_take(struct cluster_answers *seen, struct nodes *nodes, json_t *root,
                               struct cluster_stats *out);
void cluster_stats_free(struct cluster_stats *s);

/* One source's page of matches for the merge: newest first. */
struct cluster_source {
    struct event *events; /* events are moved out by cluster_merge */
    size_t count;
    uint64_t total_count;
    bool has_more; /* the source holds matches after its last event */
};

/* Frees a source's events and their array. */
void cluster_source_free(struct cluster_source *s);

/* A cluster-wide page of events. */
struct cluster_events {
    struct event *events; /* owned; newest first */
    size_t count;
    uint64_t total_count; /* summed over the replicas that answered */
    bool has_next;
    struct query_cursor next_cursor; /* valid when has_next */
    unsigned answered, expected;     /* replicas, this one included */
};

/*
 * Merges the sources newest first into one page of at most limit events.
 * A source that has more than it sent bounds the page: no event older than
 * its last one is returned (it may hold newer ones it did not send), so
 * paging with next_cursor visits every event exactly once. Events with the
 * same (timestamp, id) are returned once. Moves the events out of the
 * sources (their arrays stay the caller's). 0 or -ENOMEM.
 */
int cluster_merge(struct cluster_source *src, size_t nsrc, uint32_t limit,
                  struct cluster_events *out);
void cluster_events_free(struct cluster_events *e);

#endif

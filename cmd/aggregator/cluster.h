/*
 * Replica-to-replica traffic of the aggregator, on
 * <CONTROL_SUBJECT>.<QUEUE_GROUP>.{heartbeat,query,stats} (never under
 * <SUBJECT_PREFIX>.>, so it cannot look like events):
 *
 * - heartbeat: {"replica":"<id>","leaving":false} every 500 ms; a peer is
 *   expected while its last heartbeat is under 2 s old, and dropped at once
 *   when it says it is leaving. expected = 1 + live peers.
 * - query: {"replica":"<id>","query":"<raw query string>"}; every other
 *   replica answers on the reply inbox with a protobuf QueryReply holding its
 *   local matches (same limit and cursor).
 * - flows: {"replica":"<id>","query":"<raw query string>","since":ns,
 *   "until":ns} (the window resolved by the asker, so every replica counts
 *   the same minutes); every other replica answers with all its matching
 *   edges in exact form (cluster_reply.h), merged by flows_result_add().
 * - stats: every other replica answers with {"replica":..,"counters":{..},
 *   "nodes":<nodes_to_json>}.
 *
 * A gather waits until every expected peer answered or QUERY_TIMEOUT passed,
 * so a dead replica makes an answer partial, never a hang.
 *
 * Anyone allowed on the control subjects can heartbeat and answer, so
 * answers are checked before they count: the replica id must be a live
 * peer's, one answer per peer per gather, and a stats answer must be an
 * object whose counters are non-negative numbers (bounded nesting and keys)
 * and whose node table nodes_merge_value() accepts. Rejected answers are
 * ignored (the peer counts as not answered) and counted in
 * cluster_invalid_answers(). What a peer can still do is claim counters of
 * its own, saturating at INT64_MAX when summed.
 */
#ifndef EBPF_MONITOR_AGGREGATOR_CLUSTER_H
#define EBPF_MONITOR_AGGREGATOR_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <stdint.h>

#include "bus.h"
#include "buf.h"
#include "cluster_merge.h"
#include "flows.h"
#include "nodes.h"
#include "query.h"

struct aggregator;
struct cluster;

#define CLUSTER_HEARTBEAT_MS 500
#define CLUSTER_PEER_TTL_MS  2000

/*
 * Subscribes to the control subjects, announces this replica and starts the
 * heartbeat thread. NULL with a message in err on failure.
 */
struct cluster *cluster_new(struct aggregator *a, char *err, size_t errlen);
/* Tells the peers this replica is leaving (they stop expecting it at once). */
void cluster_leave(struct cluster *c);
/* Stops the heartbeat thread, unsubscribes and frees. */
void cluster_free(struct cluster *c);

/* 1 + the peers heard from within CLUSTER_PEER_TTL_MS. */
unsigned cluster_expected(struct cluster *c);
/* The replicas' own connection (heartbeats, queries, answers): its state, as bus_get_status(). */
void cluster_bus_status(struct cluster *c, struct bus_status *out);
/* Whether it is up (no lock: callable from a bus listener), and its listener (bus_set_listener). */
bool cluster_bus_connected(struct cluster *c);
void cluster_set_bus_listener(struct cluster *c, bus_state_fn fn, void *ctx);

/*
 * Runs q (parsed from the raw query string qs) on this replica and on every
 * live peer, and merges the answers. 0 or -ENOMEM; out is freed with
 * cluster_events_free also after an error.
 */
int cluster_query(struct cluster *c, const char *qs, size_t qslen, const struct query *q,
                  struct cluster_events *out);

/*
 * Runs q (parsed from qs) on this replica and every live peer and merges
 * the edges exactly, sorted and limited. 0 or -ENOMEM; out is freed with
 * flows_result_free() also after an error.
 */
int cluster_flows(struct cluster *c, const char *qs, size_t qslen, const struct flows_query *q,
                  struct flows_result *out, unsigned *answered, unsigned *expected);

/*
 * Gathers the peers' stats answers; the node table of each accepted answer
 * is merged into nodes. 0 (out is freed with cluster_stats_free).
 */
int cluster_gather_stats(struct cluster *c, struct nodes *nodes, struct cluster_stats *out);
/* Peers' answers rejected as malformed since start (see above). */
uint64_t cluster_invalid_answers(struct cluster *c);

/* This replica's stats answer, as peers receive it. */
void cluster_stats_json(struct aggregator *a, struct buf *out);

#endif

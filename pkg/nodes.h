/*
 * Per-node accounting for the aggregator, mergeable across replicas.
 *
 * Batches of one node are spread over the replicas of a queue group, so no
 * replica alone can see sequence gaps. Each replica keeps, per (node, agent
 * instance): batches and events received, the lowest and highest sequence
 * seen, and the loss counters of the newest batch. Merging the replicas'
 * tables gives lost batches = (max - min + 1) - batches received, per
 * instance; an agent restart is a new instance, never a gap.
 *
 * Batches an instance sent before any replica heard it are lost too: a
 * replica that has been listening since before an instance started (their
 * ages compared, each on its own clock: the batch's sent_at_ns minus its
 * instance_started_ns, against the time since nodes_set_heard_since())
 * counts that instance from sequence 1, whatever it heard first.
 */
#ifndef EBPF_MONITOR_NODES_H
#define EBPF_MONITOR_NODES_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event_pb.h"

struct nodes;

/*
 * A table of at most max_instances (node, instance) records. When full, the
 * record seen least recently is evicted and counted in instances_dropped.
 */
struct nodes *nodes_new(size_t max_instances);
void nodes_free(struct nodes *t);

/*
 * The table has heard every batch on the bus since now_ns (wall clock, ns since the epoch),
 * or tried to: instances at least NODES_HEARD_MARGIN_NS younger are counted from sequence 1.
 * 0 (the default): from the first batch heard of each.
 */
#define NODES_HEARD_MARGIN_NS 1000000000ull
void nodes_set_heard_since(struct nodes *t, uint64_t now_ns);
/* The same, only when since_ns is earlier than what t has (0: nothing yet). */
void nodes_heard_since_earlier(struct nodes *t, uint64_t since_ns);
/* What nodes_set_heard_since() set; 0 when never. */
uint64_t nodes_heard_since(struct nodes *t);

/* Records one received batch (thread-safe). now_ns: receive time (wall clock). */
void nodes_observe(struct nodes *t, const struct event_batch_meta *meta, size_t events,
                   uint64_t now_ns);

/*
 * Serialises the table for another replica (JSON); nodes_merge_json adds one
 * to t, nodes_merge_value the same already parsed (a jansson json_t). Both
 * validate the whole table first (non-negative integers, names of at most
 * 1024 bytes, no more records than t holds): a bad one changes nothing.
 * Counters saturate at INT64_MAX. 0, -EINVAL or -ENOMEM.
 */
void nodes_to_json(struct nodes *t, struct buf *out);
int nodes_merge_json(struct nodes *t, const char *json, size_t len);
struct json_t;
int nodes_merge_value(struct nodes *t, struct json_t *value);
/* Adds src's records to dst (dst != src), as nodes_merge_json would. 0 or -ENOMEM. */
int nodes_merge(struct nodes *dst, struct nodes *src);

struct nodes_totals {
    uint64_t nodes, instances, batches, events, lost_batches, agent_drops, kernel_drops;
    uint64_t kernel_missed;
    uint64_t instances_dropped; /* evicted because the table was full */
    uint64_t active, stale;     /* nodes by status (nodes_write_json() only) */
};

/*
 * Writes the merged view: {"<node>":{"events":..,"batches":..,"lost_batches":..,
 * "agent_drops":..,"kernel_drops":..,"kernel_missed":..,"last_seen":"RFC3339",
 * "status":"active|stale",
 * "instances":n[,"agent_pod_name":..,"agent_pod_namespace":..]}, ...}, nodes
 * sorted by name; counters summed over the node's instances.
 * stale_after_ns decides status. totals (may be NULL) gets the same view's
 * totals, without a second pass.
 */
void nodes_write_json(struct nodes *t, struct buf *out, uint64_t now_ns, uint64_t stale_after_ns,
                      struct nodes_totals *totals);
void nodes_get_totals(struct nodes *t, struct nodes_totals *out);

#endif

/*
 * The agent's batcher and publisher: events are encoded into the current
 * batch as they are captured; a batch closes at batch_size events or when its
 * oldest event is flush_interval old, and goes to a bounded queue that a
 * thread named "publisher" sends to NATS while connected.
 *
 * Threads: publisher_add(), publisher_tick(), publisher_flush(),
 * publisher_set_kernel_losses() and publisher_free() belong to one thread (the
 * capture loop); they never wait for the network, except flush and free,
 * which wait a bounded time on purpose. publisher_get_stats() may be called
 * from any thread.
 *
 * Loss accounting: when the queue would exceed outage_buffer_bytes (NATS
 * unreachable or slow, or no one subscribed), the oldest batches are dropped
 * and their events counted as agent drops; their sequence numbers are never
 * sent, so a receiver sees the gap.
 *
 * A batch NATS delivered to no subscriber (no aggregator listening: core NATS
 * would drop it silently) comes back: each is published with a reply subject
 * of this instance's, to which the server sends "no responders" then. Sent
 * batches stay in the queue until a round trip to the server says which were
 * heard; an unheard one goes back to its front and the queue is held, as in
 * an outage, its first batch tried again every second until one is heard.
 */
#ifndef EBPF_MONITOR_PUBLISHER_H
#define EBPF_MONITOR_PUBLISHER_H

#include <stdint.h>

#include "bus.h"
#include "config.h"
#include "event.h"
#include "peers.h"

#define PUBLISHER_INSTANCE_LEN 16 /* hex chars in an instance id */

struct publisher_config {
    const char *node;          /* the real node name (header and batch field) */
    const char *subject;       /* where batches go: bus_node_subject(prefix, node) */
    const char *pod_name;      /* the agent's own pod; NULL on a VM */
    const char *pod_namespace; /* NULL on a VM */
    enum config_encoding encoding;
    uint32_t batch_size;          /* events per batch, 1..BUS_MAX_BATCH_EVENTS */
    uint64_t flush_interval_ns;   /* longest time an event waits in a batch */
    uint64_t heartbeat_ns;        /* an empty batch after this long without one; 0: never */
    uint64_t outage_buffer_bytes; /* queue bound; the newest batch is always kept */
    const char *log_prefix;       /* "ebpf-agent": log outages to stderr; NULL: silent */
};

struct publisher_stats {
    uint64_t batches_sent;
    uint64_t events_sent;
    uint64_t bytes_sent;        /* payload bytes */
    uint64_t batches_dropped;   /* the send queue full, or batches_too_large */
    uint64_t batches_too_large; /* one event larger than the server's max_payload */
    uint64_t events_dropped;    /* agent drops: dropped batches' events + encode failures */
    uint64_t encode_failed;     /* events that could not be encoded (included above) */
    uint64_t pods_gone;         /* deleted pods put in batches (publisher_add_gone) */
    uint64_t pods_gone_dropped; /* deleted pods lost: no memory for a batch */
    uint64_t heartbeats;        /* empty batches queued for an idle node (publisher_tick) */
    uint64_t batches_unheard;   /* sent to no subscriber (NATS said so), queued again */
    bool no_listener;           /* the last batch sent reached no subscriber: holding them */
    uint64_t queue_batches;     /* closed batches waiting (and the one being sent) */
    uint64_t queue_bytes;
    uint64_t publish_errors;
    uint64_t sequence; /* last sequence number given to a batch */
    uint64_t kernel_drops, kernel_missed;
    struct bus_status bus;
};

struct publisher;

/*
 * Starts the publisher thread on an open bus (which must outlive the
 * publisher). Returns NULL with a message in err.
 */
struct publisher *publisher_new(struct bus *bus, const struct publisher_config *cfg, char *err,
                                size_t errlen);

/*
 * Closes the current batch, waits up to ~2 s for the queue to drain while
 * connected, then stops the thread. Batches still queued are dropped.
 */
void publisher_free(struct publisher *p);

/*
 * Encodes e into the current batch (e is not kept). Returns 0, or a negative
 * errno when the event could not be encoded (counted as an agent drop). A
 * batch it fills is queued; the publisher thread, if asleep, is woken at the
 * next publisher_tick() or once 8 full batches wait, so a capture loop that
 * ticks after each drain of the ring wakes it once per drain.
 */
int publisher_add(struct publisher *p, const struct event *e);

/*
 * Deleted pods (k8s_take_gone) for the open batch, opening one if needed: a
 * batch goes out with them even without events, its first deletion then
 * waiting at most flush_interval. Copies up to publisher_gone_room(); returns
 * how many it took (none, counted as dropped, without memory). Strings must outlive
 * the batch (interned); a pod without a node gets the publisher's.
 */
size_t publisher_add_gone(struct publisher *p, const struct peers_pod *pods, size_t n);
size_t publisher_gone_room(const struct publisher *p);

/*
 * The node's pods as the agent first listed them (k8s_take_present(): UIDs
 * and when), for the open batch's BUS_HDR_PODS_PRESENT header, opening a
 * batch if needed (it then goes out within flush_interval, even without
 * events). False without memory.
 */
bool publisher_set_present(struct publisher *p, const char *const *uids, size_t n, uint64_t at_ns);

/*
 * Wakes the publisher for the full batches publisher_add() queued, and
 * closes the current batch when it is flush_interval old. now is
 * CLOCK_MONOTONIC in ns. Returns the ns until the next flush deadline
 * (flush_interval when no batch is open), for the caller's poll timeout.
 */
uint64_t publisher_tick(struct publisher *p, uint64_t now);

/*
 * Closes the current batch and waits up to timeout_ns for every queued batch
 * to be handed to NATS and flushed to the server. 0 or -ETIMEDOUT.
 */
int publisher_flush(struct publisher *p, uint64_t timeout_ns);

/*
 * The cumulative kernel-side losses carried in the following batches: events
 * the ring buffer dropped, and program runs the kernel skipped.
 */
void publisher_set_kernel_losses(struct publisher *p, uint64_t drops, uint64_t missed);

void publisher_get_stats(struct publisher *p, struct publisher_stats *out);

/* This process's random instance id (PUBLISHER_INSTANCE_LEN hex chars). */
const char *publisher_instance(const struct publisher *p);

#endif

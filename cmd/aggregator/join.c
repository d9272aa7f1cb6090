/*
 * The ClusterIP -> backend pod join at ingest (pkg/joins.c; Kubernetes mode
 * only, as it needs the Services).
 *
 * - Server halves: an accept (or close as server) whose pod backs a Service
 *   is a half: the client's address and port, and this pod. The ingesting
 *   replica keeps it and announces it on <CONTROL_SUBJECT>.<QUEUE_GROUP>.joins,
 *   so whichever replica holds the client half can join it.
 * - Client halves: a connection (or close as client) to a ClusterIP on one
 *   of its ports, whose peer pod is unknown, is held out of the batch (so
 *   the history, the flows and the metrics see it joined) until its server
 *   half arrives or JOIN_WINDOW passes; the main loop releases them.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "aggregator.h"
#include "api.h"
#include "clock.h"

#define RELEASE_CHUNK 256

static void announce(void *ctx, const struct joins_half *h, size_t n)
{
    struct aggregator *a = ctx;
    struct buf m;

    buf_init(&m);
    joins_announce_write(&m, a->replica, h, n);
    if (aggregator_control_publish(a, "joins", &m))
        counter_add(&a->counters.join_halves_sent, n);
    else /* those client halves stay unjoined (no_server_half), counted there too */
        counter_add(&a->counters.join_halves_failed, n);
    buf_free(&m);
}

size_t join_batch(struct aggregator *a, const uint8_t *sides, struct event *events, size_t n,
                  uint64_t now)
{
    if (!a->joins)
        return n;
    return joins_batch(a->joins, sides, events, n, now, announce, a);
}

void join_release(struct aggregator *a, uint64_t now)
{
    struct event out[RELEASE_CHUNK];
    size_t n;

    if (!a->joins)
        return;
    while ((n = joins_release(a->joins, now, out, RELEASE_CHUNK)) > 0) {
        flows_add(a->flows, out, n, now);
        counter_add(&a->counters.store_failed, store_add_move_batch(a->store, out, n));
    }
}

void join_on_message(struct aggregator *a, natsMsg *msg)
{
    static __thread struct joins_half halves[JOINS_ANNOUNCE_MAX];
    char replica[AGGREGATOR_REPLICA_ID_LEN], err[256];

    int n = joins_announce_parse(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), replica,
                                 sizeof(replica), halves, JOINS_ANNOUNCE_MAX, err, sizeof(err));
    if (n < 0) {
        aggregator_control_rejected(&a->counters.join_announcements_rejected, "join", msg, err);
        return;
    }
    if (strcmp(replica, a->replica) == 0)
        return;
    uint64_t now = clock_realtime_ns();
    for (int i = 0; i < n; i++)
        joins_add_half(a->joins, &halves[i], now);
    counter_add(&a->counters.join_halves_received, (uint64_t)n);
}

int join_subscribe(struct aggregator *a, natsMsgHandler cb, natsSubscription **sub, char *err,
                   size_t errlen)
{
    if (!a->joins)
        return 0;
    return aggregator_control_subscribe(a, "joins", cb, sub, err, errlen);
}

void join_stats_json(struct aggregator *a, struct buf *b)
{
    const struct aggregator_counters *c = &a->counters;
    struct joins_stats js = {0};

    if (a->joins)
        joins_get_stats(a->joins, &js);
    buf_printf(b,
               "{\"held\":%" PRIu64 ",\"halves\":%" PRIu64 ",\"joined\":%" PRIu64
               ",\"unjoined\":{\"%s\":%" PRIu64 ",\"%s\":%" PRIu64 ",\"%s\":%" PRIu64
               "},\"halves_evicted\":%" PRIu64 ",\"halves_sent\":%" PRIu64
               ",\"halves_failed\":%" PRIu64 ",\"halves_received\":%" PRIu64
               ",\"announcements_rejected\":%" PRIu64 "}",
               js.held, js.halves, js.joined, joins_unjoined_name(JOINS_NO_SERVER_HALF),
               js.unjoined[JOINS_NO_SERVER_HALF], joins_unjoined_name(JOINS_SEVERAL),
               js.unjoined[JOINS_SEVERAL], joins_unjoined_name(JOINS_HELD_FULL),
               js.unjoined[JOINS_HELD_FULL], js.halves_evicted, counter_get(&c->join_halves_sent),
               counter_get(&c->join_halves_failed), counter_get(&c->join_halves_received),
               counter_get(&c->join_announcements_rejected));
}

void join_metrics(struct aggregator *a, struct buf *b)
{
    struct joins_stats js = {0};

    if (a->joins)
        joins_get_stats(a->joins, &js);
    api_metric(b, "ebpf_aggregator_join_held", "gauge",
               "Connections to a ClusterIP held for their backend's accept (JOIN_WINDOW).",
               js.held);
    api_metric_header(b, "ebpf_aggregator_join_total", "counter",
                      "Connections to a ClusterIP released by this replica, by outcome.");
    api_metric_labelled(b, "ebpf_aggregator_join_total", "result", "joined", js.joined);
    for (unsigned r = 0; r < JOINS_UNJOINED_COUNT; r++)
        api_metric_labelled(b, "ebpf_aggregator_join_total", "result", joins_unjoined_name(r),
                            js.unjoined[r]);
    api_metric(b, "ebpf_aggregator_join_halves_evicted_total", "counter",
               "Backends' accepts dropped from the join table before their window ended.",
               js.halves_evicted);
}

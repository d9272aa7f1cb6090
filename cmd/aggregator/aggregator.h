/*
 * The aggregator's state shared by its threads. nats.c delivers ingest,
 * stream and control messages on its own threads; the HTTP thread serves the
 * API from the store, the node table and the counters; the cluster thread
 * sends heartbeats. Counters are relaxed atomics; store and nodes lock
 * internally.
 */
#ifndef EBPF_MONITOR_AGGREGATOR_H
#define EBPF_MONITOR_AGGREGATOR_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "bus.h"
#include "bus_message.h"
#include "config.h"
#include "event.h"
#include "flows.h"
#include "http_server.h"
#include "joins.h"
#include "k8s_services.h"
#include "nodes.h"
#include "peers.h"
#include "store.h"

#define AGGREGATOR_REPLICA_ID_LEN 17 /* 16 hex chars + NUL */

/* Most agent instances the node table tracks (each node restart is one more). */
#define AGGREGATOR_MAX_INSTANCES 65536

/* Services (and as many EndpointSlices) watched in Kubernetes mode. */
#define AGGREGATOR_MAX_SERVICES 65536
/* The ClusterIP join (Kubernetes mode): backends' accepts kept, connections held. */
#define AGGREGATOR_JOIN_HALVES 65536
#define AGGREGATOR_JOIN_HELD   65536

struct cluster;
struct api_pool;

/*
 * What shutdown waits on before freeing what nats.c callbacks use: a
 * callback enters (or, once closed, returns at once) and leaves; closing
 * waits for the callbacks inside to leave. It must outlive every callback
 * that may still be scheduled, so it is never destroyed while one may be.
 */
struct aggregator_gate {
    pthread_mutex_t lock;
    pthread_cond_t idle;
    unsigned active;
    unsigned waiters; /* in aggregator_gate_quiesce() */
    bool closed;
};

/* False once closed: the callback must not touch the state behind the gate. */
bool aggregator_gate_enter(struct aggregator_gate *g);
void aggregator_gate_leave(struct aggregator_gate *g);
/* No callback enters after this returns, and none is inside (waits, without a timeout). */
void aggregator_gate_close(struct aggregator_gate *g);
/* Waits until no callback is inside (one may enter right after). */
void aggregator_gate_quiesce(struct aggregator_gate *g);

/* What this replica ingested; summed over replicas for /api/stats. */
struct aggregator_counters {
    uint64_t batches;
    uint64_t events;
    uint64_t events_by_type[EVENT_TYPE_COUNT];
    uint64_t rejected[BUS_REJECT_COUNT];        /* whole messages, by reason */
    uint64_t rejected_events[BUS_REJECT_COUNT]; /* single events of accepted batches */
    uint64_t store_failed;
    /* Events the history of a peer held when it stopped and handed its node table here: they
     * left with it (cluster.c). */
    uint64_t history_departed;
    /* Flow buckets (edge-minutes) such a peer could not hand over: they left with it. */
    uint64_t flows_departed;
    /* Pod announcements between replicas (ingest.c). */
    uint64_t peer_announcements_sent;
    uint64_t peer_announcements_failed; /* not published (NATS down): repeated later */
    uint64_t peer_announcements_received;
    uint64_t peer_announcements_rejected; /* malformed: counted and ignored */
    uint64_t peer_pods_received;
    /* A replica starting or on a new connection asks for the claims the others hold. */
    uint64_t peer_syncs_asked;    /* asked by this replica */
    uint64_t peer_syncs_answered; /* another's asking answered with every claim held */
    /* The ClusterIP join's server halves between replicas (join.c). */
    uint64_t join_halves_sent;
    uint64_t join_halves_failed;
    uint64_t join_halves_received;
    uint64_t join_announcements_rejected;
};

/* Received batches destroyed together, at most this many or this many bytes (ingest.c). */
#define AGGREGATOR_FREE_BATCH 16
#define AGGREGATOR_FREE_BYTES (2u << 20)

/* Messages a subscription's handler is done with, not yet destroyed (ingest.c, free_later()). */
struct msg_hold {
    natsMsg *msgs[AGGREGATOR_FREE_BATCH];
    size_t n, bytes;
};

struct aggregator {
    struct config cfg;
    char replica[AGGREGATOR_REPLICA_ID_LEN];
    uint64_t started_mono_ns;

    struct store *store;
    struct flows *flows; /* per-minute edges behind /api/flows (locks internally) */
    struct nodes *nodes;
    struct peers *peers;           /* cluster-wide IP -> pod map (locks internally) */
    struct k8s_services *services; /* Kubernetes mode: address -> Service; NULL on a VM */
    struct joins *joins;           /* Kubernetes mode: the ClusterIP -> backend pod join */
    struct bus *bus;
    struct http_server *http;
    struct cluster *cluster; /* atomic while the bus listeners may run (main.c) */
    /* main.c's log_ready(), called from both connections' threads: what it said last, under
     * said_lock, which it holds from reading the state to saying it, so the last word said is
     * the state as it last changed. */
    pthread_mutex_t said_lock;
    bool ready_said;       /* the readiness in the log */
    bool stream_nats_said; /* whether stream clients were told NATS is up */

    /* Made again on each new connection (ingest_renew()); the pointers under subs_lock. */
    pthread_mutex_t subs_lock;
    natsSubscription *ingest_sub;       /* queue subscription: this replica's share */
    natsSubscription *peers_sub;        /* the other replicas' pod announcements */
    natsSubscription *joins_sub;        /* the other replicas' server halves (join.c) */
    uint64_t ingest_sub_dropped;        /* slow-consumer drops of replaced ingest_subs */
    uint64_t ingest_sub_dropped_seen;   /* the current one's, as last read */
    struct aggregator_gate ingest_gate; /* on_batch: the store and the node table */
    struct msg_hold ingested;           /* on_batch's delivery thread only (then ingest_stop()) */

    /* Plain subscription feeding SSE clients with every event (stream_lock). */
    pthread_mutex_t stream_lock;
    natsSubscription *stream_sub;
    uint64_t stream_clients;
    bool stream_closed;          /* shutting down: never subscribe again */
    struct msg_hold streamed;    /* batches the SSE feed is done with (stream_lock) */
    uint64_t stream_sub_dropped; /* slow-consumer drops of destroyed stream subscriptions */
    /* The feed's batches by node and instance while it has clients, for the sequence gaps:
     * batches it never heard (its subscription made again on a new connection). */
    struct nodes *stream_nodes;
    uint64_t stream_lost_batches; /* gaps of the tables of earlier feeds */

    struct aggregator_counters counters; /* atomics */

    /* api.c: worker threads running cluster-wide answers off the HTTP thread. */
    struct api_pool *api_pool;
    uint64_t queries_rejected; /* atomic: turned away with 503, the queue being full */
};

/* The counters: written by the NATS threads, read by the HTTP workers. */
static inline void counter_add(uint64_t *v, uint64_t d)
{
    __atomic_fetch_add(v, d, __ATOMIC_RELAXED);
}
static inline uint64_t counter_get(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/*
 * ingest.c: what replicas tell each other (pods for peers, join halves),
 * on <CONTROL_SUBJECT>.<QUEUE_GROUP>.<topic>, a plain subscription so every
 * replica hears every message. A malformed one is counted in *rejected and
 * logged the first time and every 1000th.
 */
#define AGGREGATOR_CONTROL_SUBJECT_LEN (2 * CONFIG_STR + 16)
void aggregator_control_subject(const struct aggregator *a, const char *topic, char *out,
                                size_t len);
int aggregator_control_subscribe(struct aggregator *a, const char *topic, natsMsgHandler cb,
                                 natsSubscription **sub, char *err, size_t errlen);
bool aggregator_control_publish(struct aggregator *a, const char *topic, const struct buf *m);
void aggregator_control_rejected(uint64_t *rejected, const char *what, natsMsg *msg,
                                 const char *err);

/* ingest.c: the queue subscription and the SSE feed. */
int ingest_start(struct aggregator *a, char *err, size_t errlen);
/* Lets queued messages finish (up to timeout_ms), then drops the subscriptions. */
void ingest_stop(struct aggregator *a, int timeout_ms);
/* Holds the SSE subscription while stream clients are connected (any thread). */
void ingest_stream_sync(struct aggregator *a);
/* Stream client count hook for http_server_on_stream_clients(). */
void ingest_on_stream_clients(void *ctx, uint64_t clients);
/* Messages nats.c dropped because this replica could not keep up. */
uint64_t ingest_bus_dropped(struct aggregator *a);
uint64_t ingest_stream_dropped(struct aggregator *a);
/* Batches the SSE feed never heard (sequence gaps while it had clients). */
uint64_t ingest_stream_lost(struct aggregator *a);
/* This replica's counters as one JSON object (for /api/stats gathering). */
void ingest_counters_json(struct aggregator *a, struct buf *b);
/*
 * What a replica that stops hands over with its node table (JSON): its counters of what it
 * received, refused and failed to store, and the events of peers' histories that left with
 * them before (its own history is counted apart, CLUSTER_HDR_HISTORY_EVENTS).
 */
void ingest_counters_carry_json(struct aggregator *a, struct buf *b);
/*
 * Adds the losses of a leaving peer's ingest_counters_carry_json() (parsed) to this replica's:
 * rejected, rejected_events, store_failed and history_departed go on being counted here, so a
 * rolling restart forgets none. What it received is in the node table it hands over (/api/nodes),
 * not in this replica's own batches and events. Members missing or not non-negative integers
 * add nothing.
 */
struct json_t;
void ingest_counters_inherit(struct aggregator *a, struct json_t *from);
/* This replica's peer-naming series for /metrics. */
void aggregator_peers_metrics(struct aggregator *a, struct buf *b);

/*
 * join.c: the ClusterIP -> backend pod join (no-ops without a->joins).
 * join_batch() takes the server halves of events[0..n) and holds its client
 * halves (sides: k8s_services_enrich()'s), compacting the array; returns how
 * many events are left in it.
 * join_release() stores what is done (main loop). join_on_message() applies
 * another replica's halves. join_subscribe() subscribes cb to them (into *sub).
 */
size_t join_batch(struct aggregator *a, const uint8_t *sides, struct event *events, size_t n,
                  uint64_t now);
void join_release(struct aggregator *a, uint64_t now);
void join_on_message(struct aggregator *a, natsMsg *msg);
int join_subscribe(struct aggregator *a, natsMsgHandler cb, natsSubscription **sub, char *err,
                   size_t errlen);
void join_stats_json(struct aggregator *a, struct buf *b);
void join_metrics(struct aggregator *a, struct buf *b);

/*
 * Closes an async subscription and waits (up to timeout_ms) until its
 * handler has returned for the last time. drain: first deliver what is
 * queued (when connected). When that does not finish in time, gate (the
 * handler's, may be NULL) is closed, so the handler drops what is still
 * queued at once, and the wait is given timeout_ms more. True when it
 * stopped (sub destroyed); false when its handler may still run later (sub
 * is then left allocated): the caller must keep what the handler uses.
 */
bool aggregator_sub_close(natsSubscription *sub, natsConnection *nc, bool drain, int timeout_ms,
                          struct aggregator_gate *gate);

/*
 * api.c: the HTTP routes. Register starts the worker threads that answer
 * cluster-wide requests while peers are live (the HTTP thread only queues
 * them); stop lets queued requests finish and joins the workers. Call stop
 * before http_server_free() (every deferred response is completed by then).
 */
int aggregator_api_register(struct aggregator *a);
void aggregator_api_stop(struct aggregator *a);
/* Frees the pool; after http_server_free() (the HTTP thread looks at it). */
void aggregator_api_free(struct aggregator *a);

#endif

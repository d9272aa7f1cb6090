/*
 * Ingest: this replica's share of the batches (queue subscription on
 * <SUBJECT_PREFIX>.>) into the node table and the history, and the SSE feed
 * (a plain subscription on the same subjects, held only while stream clients
 * are connected, so every replica streams every event exactly once).
 *
 * A message that does not decode is counted by reason and skipped.
 *
 * Peers: the pods a batch's pod table names go into the cluster-wide IP ->
 * pod map (pkg/peers.c) before its events are stored, and those new to the
 * map, changed, or not announced for a while are announced to the other
 * replicas on <CONTROL_SUBJECT>.<QUEUE_GROUP>.peers, so every replica knows
 * every node's pods although each batch reaches only one of them. Then the
 * events' peers are named from the map (only fields the agent left empty),
 * so the history, /api/flows and the stream see the same names.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregator.h"
#include "api.h"
#include "clock.h"
#include "intern.h"
#include "errmsg.h"

/*
 * Bounded backlog per subscription: beyond it nats.c drops messages (counted
 * as bus_dropped) instead of growing without limit.
 */
#define INGEST_PENDING_MSGS  65536
#define INGEST_PENDING_BYTES (128 << 20)
/* How long ending a subscription waits for the server's answer (bus_sub_end()). */
#define INGEST_SUB_END_MS 2000

/* Bounds of what a log line quotes from a message: its subject, and the reason it was refused. */
#define LOG_SUBJECT_MAX 256
#define LOG_ERR_MAX     512

/* Rejections are logged once per reason and then every 1000th, so bad input cannot flood logs. */
static void log_reject(struct aggregator *a, natsMsg *msg, enum bus_reject r, const char *err)
{
    uint64_t n = counter_get(&a->counters.rejected[r]);
    char subject[LOG_SUBJECT_MAX], why[LOG_ERR_MAX];
    if (n == 1 || n % 1000 == 0)
        fprintf(stderr, "ebpf-aggregator: rejected message on %s (%s, %" PRIu64 " so far): %s\n",
                errmsg_printable(natsMsg_GetSubject(msg), subject, sizeof(subject)),
                bus_reject_name(r), n, errmsg_printable(err, why, sizeof(why)));
}

/* Events skipped inside accepted batches: logged like rejections, once and then every 1000th. */
static void log_reject_events(struct aggregator *a, natsMsg *msg, const struct bus_batch *b,
                              const char *err)
{
    uint64_t n = counter_get(&a->counters.rejected_events[b->events_reason]);
    uint64_t before = n - b->meta.rejected_events;
    char subject[LOG_SUBJECT_MAX], why[LOG_ERR_MAX];
    if (before == 0 || n / 1000 != before / 1000)
        fprintf(stderr,
                "ebpf-aggregator: skipped %" PRIu32 " event(s) of a batch on %s "
                "(%s, %" PRIu64 " so far); the batch's other events were kept: %s\n",
                b->meta.rejected_events,
                errmsg_printable(natsMsg_GetSubject(msg), subject, sizeof(subject)),
                bus_reject_name(b->events_reason), n, errmsg_printable(err, why, sizeof(why)));
}

bool aggregator_gate_enter(struct aggregator_gate *g)
{
    pthread_mutex_lock(&g->lock);
    bool open = !g->closed;
    if (open)
        g->active++;
    pthread_mutex_unlock(&g->lock);
    return open;
}

void aggregator_gate_leave(struct aggregator_gate *g)
{
    pthread_mutex_lock(&g->lock);
    if (--g->active == 0 && (g->closed || g->waiters))
        pthread_cond_broadcast(&g->idle);
    pthread_mutex_unlock(&g->lock);
}

void aggregator_gate_quiesce(struct aggregator_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->waiters++;
    while (g->active > 0)
        pthread_cond_wait(&g->idle, &g->lock);
    g->waiters--;
    pthread_mutex_unlock(&g->lock);
}

void aggregator_gate_close(struct aggregator_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->closed = true;
    while (g->active > 0)
        pthread_cond_wait(&g->idle, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

void aggregator_control_subject(const struct aggregator *a, const char *topic, char *out,
                                size_t len)
{
    snprintf(out, len, "%s.%s.%s", a->cfg.control_subject, a->cfg.queue_group, topic);
}

int aggregator_control_subscribe(struct aggregator *a, const char *topic, natsMsgHandler cb,
                                 natsSubscription **sub, char *err, size_t errlen)
{
    char subject[AGGREGATOR_CONTROL_SUBJECT_LEN];

    aggregator_control_subject(a, topic, subject, sizeof(subject));
    natsStatus s = natsConnection_Subscribe(sub, bus_conn(a->bus), subject, cb, a);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(*sub, INGEST_PENDING_MSGS, INGEST_PENDING_BYTES);
    if (s != NATS_OK) {
        errmsg_set(err, errlen, "subscribing to %s: %s", subject, natsStatus_GetText(s));
        return -EIO;
    }
    return 0;
}

bool aggregator_control_publish(struct aggregator *a, const char *topic, const struct buf *m)
{
    char subject[AGGREGATOR_CONTROL_SUBJECT_LEN];

    aggregator_control_subject(a, topic, subject, sizeof(subject));
    return !m->oom &&
           natsConnection_Publish(bus_conn(a->bus), subject, m->data, (int)m->len) == NATS_OK;
}

void aggregator_control_rejected(uint64_t *rejected, const char *what, natsMsg *msg,
                                 const char *err)
{
    uint64_t k = __atomic_add_fetch(rejected, 1, __ATOMIC_RELAXED);
    char subject[LOG_SUBJECT_MAX], why[LOG_ERR_MAX];
    if (k == 1 || k % 1000 == 0)
        fprintf(stderr,
                "ebpf-aggregator: ignored a malformed %s announcement on %s (%" PRIu64
                " so far): %s\n",
                what, errmsg_printable(natsMsg_GetSubject(msg), subject, sizeof(subject)), k,
                errmsg_printable(err, why, sizeof(why)));
}

/*
 * Learns the batch's pods, then the deletions it carries (which end claims the
 * events may just have renewed), and announces what the other replicas need
 * to hear about.
 */
/* Claims of pods a node's pod list lacks that one batch may end and announce (the rest end
 * unannounced: on the other replicas they run out after PEER_TTL). */
#define ABSENT_ANNOUNCE_MAX 4096

/* pods[0..n) to the other replicas, as many announcements as they need. */
static void announce_pods(struct aggregator *a, const struct peers_pod *pods, size_t n)
{
    struct buf m;

    for (size_t at = 0; at < n; at += PEERS_ANNOUNCE_MAX_PODS) {
        size_t k = n - at < PEERS_ANNOUNCE_MAX_PODS ? n - at : PEERS_ANNOUNCE_MAX_PODS;
        buf_init(&m);
        peers_announce_write(&m, a->replica, pods + at, k);
        if (aggregator_control_publish(a, "peers", &m))
            counter_add(&a->counters.peer_announcements_sent, 1);
        else /* the claims are announced again within PEER_TTL/4 (not deletions) */
            counter_add(&a->counters.peer_announcements_failed, 1);
        buf_free(&m);
    }
}

static void learn_pods(struct aggregator *a, const struct bus_batch *b, uint64_t now)
{
    struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS + PEERS_GONE_MAX_PODS];
    size_t n = peers_pods_from_events(b->events, b->n, now, pods, PEERS_ANNOUNCE_MAX_PODS);
    size_t due = 0;

    for (size_t i = 0; i < b->n_gone; i++)
        pods[n++] = b->gone[i];
    for (size_t i = 0; i < n; i++)
        if (peers_observe(a->peers, &pods[i]) && due++ != i)
            pods[due - 1] = pods[i];
    announce_pods(a, pods, due);
    if (b->present_at_ns) {
        /* A new agent instance's pod list: the pods deleted while no agent watched the node
         * are not in it. */
        struct peers_pod *absent = malloc(ABSENT_ANNOUNCE_MAX * sizeof(*absent));
        size_t k =
            peers_node_present(a->peers, intern(b->meta.node), b->present, b->n_present,
                               b->present_at_ns, now, absent, absent ? ABSENT_ANNOUNCE_MAX : 0);
        announce_pods(a, absent, k);
        free(absent);
    }
}

static void ingest_batch(struct aggregator *a, natsMsg *msg)
{
    struct bus_batch batch = {0};
    char err[256] = "";

    enum bus_reject r = bus_message_decode(msg, &batch, err, sizeof(err));
    if (r != BUS_OK) {
        if ((unsigned)r < BUS_REJECT_COUNT) {
            counter_add(&a->counters.rejected[r], 1);
            log_reject(a, msg, r, err);
        }
        bus_batch_free(&batch);
        return;
    }
    if (batch.meta.rejected_events) {
        counter_add(&a->counters.rejected_events[batch.events_reason], batch.meta.rejected_events);
        log_reject_events(a, msg, &batch, err);
    }
    uint64_t now = clock_realtime_ns();
    nodes_observe(a->nodes, &batch.meta, batch.n, now);
    counter_add(&a->counters.batches, 1);
    counter_add(&a->counters.events, batch.n);
    learn_pods(a, &batch, now);
    peers_enrich(a->peers, batch.events, batch.n, now, true);
    static __thread uint8_t sides[BUS_MAX_BATCH_EVENTS]; /* for the join */
    if (a->services)
        k8s_services_enrich(a->services, batch.events, batch.n, true, a->joins ? sides : NULL);
    uint64_t by_type[EVENT_TYPE_COUNT] = {0}; /* one atomic add per type, not per event */
    for (size_t i = 0; i < batch.n; i++)
        if (batch.events[i].type < EVENT_TYPE_COUNT)
            by_type[batch.events[i].type]++;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++)
        if (by_type[t])
            counter_add(&a->counters.events_by_type[t], by_type[t]);
    /* Connections to a ClusterIP wait for their backend (join.c); the rest go on. */
    batch.n = join_batch(a, sides, batch.events, batch.n, now);
    /* Before the store takes the events over. */
    flows_add(a->flows, batch.events, batch.n, now);
    counter_add(&a->counters.store_failed, store_add_move_batch(a->store, batch.events, batch.n));
    bus_batch_free(&batch);
}

/* Destroys what free_later() holds. */
static void held_free(struct msg_hold *h)
{
    for (size_t i = 0; i < h->n; i++)
        natsMsg_Destroy(h->msgs[i]);
    h->n = 0;
    h->bytes = 0;
}

/*
 * nats.c frees a destroyed message on its garbage-collector thread, and wakes
 * that thread when it sleeps: destroyed one at a time, as they arrive, nearly
 * every batch costs the delivery thread a wakeup (a futex and, on a VM, an
 * interrupt to an idle CPU), and the collector a sleep and a wakeup of its
 * own. Destroyed AGGREGATOR_FREE_BATCH at a time, one wakeup frees them all.
 * At most that many, and AGGREGATOR_FREE_BYTES, wait; an idle bus leaves the
 * last few held until more arrive or the subscription is closed.
 */
static void free_later(struct msg_hold *h, natsMsg *msg)
{
    h->msgs[h->n++] = msg;
    h->bytes += (size_t)natsMsg_GetDataLength(msg);
    if (h->n == AGGREGATOR_FREE_BATCH || h->bytes >= AGGREGATOR_FREE_BYTES)
        held_free(h);
}

static void on_batch(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct aggregator *a = closure;

    /* Closed: shutting down and out of drain time; what is still queued is dropped. */
    if (aggregator_gate_enter(&a->ingest_gate)) {
        ingest_batch(a, msg);
        free_later(&a->ingested, msg); /* inside the gate: ingest_renew() waits for it */
        aggregator_gate_leave(&a->ingest_gate);
    } else {
        natsMsg_Destroy(msg);
    }
}

/* The SSE feed: decoded events go to stream clients only, never to the store. */
static void on_stream_batch(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct aggregator *a = closure;
    struct bus_batch batch = {0};
    char err[256];

    if (bus_message_decode(msg, &batch, err, sizeof(err)) == BUS_OK) {
        /* The lock keeps a subscription being torn down from feeding a freed server. */
        pthread_mutex_lock(&a->stream_lock);
        if (a->stream_sub == sub && !a->stream_closed) {
            if (a->stream_nodes)
                nodes_observe(a->stream_nodes, &batch.meta, batch.n, clock_realtime_ns());
            /* Named as the ingesting replica names them (not counted twice). */
            peers_enrich(a->peers, batch.events, batch.n, clock_realtime_ns(), false);
            if (a->services)
                k8s_services_enrich(a->services, batch.events, batch.n, false, NULL);
            for (size_t i = 0; i < batch.n; i++)
                http_server_publish(a->http, &batch.events[i]);
        }
        pthread_mutex_unlock(&a->stream_lock);
    }
    bus_batch_free(&batch);
    /* Held under the lock: a subscription being torn down may still be in here while the
     * next one's thread starts. Closed, nothing is held any more (ingest_stop() freed it). */
    pthread_mutex_lock(&a->stream_lock);
    if (a->stream_closed)
        natsMsg_Destroy(msg);
    else
        free_later(&a->streamed, msg);
    pthread_mutex_unlock(&a->stream_lock);
}

/*
 * Another replica, just started or on a new connection, knows none of the
 * pods the others learnt (an announcement repeats a pod only PEER_TTL/4
 * after the last): it asks with an announcement of no pods, and each replica
 * that hears it announces every claim it holds. At most one answer per
 * PEERS_SYNC_MIN_NS, however often it is asked (the answers reach every
 * replica): the peers handler waits out the rest (asking is rare).
 */
#define PEERS_SYNC_MIN_NS (1000000000ull)

static void answer_sync(struct aggregator *a)
{
    static uint64_t last; /* the peers handler's alone */
    uint64_t now = clock_monotonic_ns();
    if (last && now - last < PEERS_SYNC_MIN_NS) {
        uint64_t wait = PEERS_SYNC_MIN_NS - (now - last);
        struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
        nanosleep(&ts, NULL);
    }
    last = clock_monotonic_ns();

    struct peers_pod *pods = malloc(PEERS_ANNOUNCE_MAX_PODS * sizeof(*pods));
    uint32_t cursor = 0;
    size_t n;
    if (!pods)
        return;
    while ((n = peers_dump(a->peers, clock_realtime_ns(), &cursor, pods, PEERS_ANNOUNCE_MAX_PODS)) >
           0) {
        struct buf m;
        buf_init(&m);
        peers_announce_write(&m, a->replica, pods, n);
        if (aggregator_control_publish(a, "peers", &m))
            counter_add(&a->counters.peer_announcements_sent, 1);
        else
            counter_add(&a->counters.peer_announcements_failed, 1);
        buf_free(&m);
    }
    free(pods);
    counter_add(&a->counters.peer_syncs_answered, 1);
}

/* Asks the other replicas for the claims they hold (see answer_sync()). */
static void ask_sync(struct aggregator *a)
{
    struct buf m;
    buf_init(&m);
    peers_announce_write(&m, a->replica, NULL, 0);
    if (aggregator_control_publish(a, "peers", &m))
        counter_add(&a->counters.peer_syncs_asked, 1);
    buf_free(&m);
}

/* Rejections are logged once and then every 1000th, as bad batches are. */
static void on_peers(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct aggregator *a = closure;
    struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS];
    char replica[AGGREGATOR_REPLICA_ID_LEN], err[256];

    if (aggregator_gate_enter(&a->ingest_gate)) {
        int n =
            peers_announce_parse(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), replica,
                                 sizeof(replica), pods, PEERS_ANNOUNCE_MAX_PODS, err, sizeof(err));
        if (n < 0) {
            aggregator_control_rejected(&a->counters.peer_announcements_rejected, "pod", msg, err);
        } else if (strcmp(replica, a->replica) != 0) {
            for (int i = 0; i < n; i++)
                peers_observe(a->peers, &pods[i]);
            counter_add(&a->counters.peer_announcements_received, 1);
            counter_add(&a->counters.peer_pods_received, (uint64_t)n);
            if (n == 0)
                answer_sync(a);
        }
        aggregator_gate_leave(&a->ingest_gate);
    }
    natsMsg_Destroy(msg);
}

static void on_joins(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct aggregator *a = closure;

    if (aggregator_gate_enter(&a->ingest_gate)) {
        join_on_message(a, msg);
        aggregator_gate_leave(&a->ingest_gate);
    }
    natsMsg_Destroy(msg);
}

static void wildcard_subject(struct aggregator *a, char *out, size_t len)
{
    snprintf(out, len, "%s.>", a->cfg.subject_prefix);
}

static natsSubscription *stream_detach_locked(struct aggregator *a);
static void stream_end(struct aggregator *a, natsSubscription *sub);

/*
 * This replica's share of the batches, the other replicas' pod announcements
 * and join halves, subscribed on the bus's current connection: subs[0..3) are
 * ingest_sub, peers_sub and joins_sub (NULL where they failed, or without joins).
 */
static int ingest_subscribe(struct aggregator *a, natsSubscription *subs[3], char *err,
                            size_t errlen)
{
    char subject[CONFIG_STR + 4];
    natsStatus s;

    wildcard_subject(a, subject, sizeof(subject));
    s = natsConnection_QueueSubscribe(&subs[0], bus_conn(a->bus), subject, a->cfg.queue_group,
                                      on_batch, a);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(subs[0], INGEST_PENDING_MSGS, INGEST_PENDING_BYTES);
    if (s != NATS_OK) {
        errmsg_set(err, errlen, "subscribing to %s in queue group %s: %s", subject,
                   a->cfg.queue_group, natsStatus_GetText(s));
        return -EIO;
    }
    if (aggregator_control_subscribe(a, "peers", on_peers, &subs[1], err, errlen) < 0)
        return -EIO;
    ask_sync(a); /* its answers come to the subscription just made */
    return join_subscribe(a, on_joins, &subs[2], err, errlen) < 0 ? -EIO : 0;
}

/* Puts subs in place of the current subscriptions, which go to old (subs_lock). */
static void ingest_swap_subs(struct aggregator *a, natsSubscription *subs[3],
                             natsSubscription *old[3])
{
    int64_t dropped = 0;

    pthread_mutex_lock(&a->subs_lock);
    /* The closed subscription's drops stay counted: its last count first. */
    if (a->ingest_sub != NULL && natsSubscription_GetDropped(a->ingest_sub, &dropped) == NATS_OK &&
        dropped > 0)
        a->ingest_sub_dropped_seen = (uint64_t)dropped;
    old[0] = a->ingest_sub;
    old[1] = a->peers_sub;
    old[2] = a->joins_sub;
    a->ingest_sub = subs[0];
    a->peers_sub = subs[1];
    a->joins_sub = subs[2];
    a->ingest_sub_dropped += a->ingest_sub_dropped_seen;
    a->ingest_sub_dropped_seen = 0;
    pthread_mutex_unlock(&a->subs_lock);
}

/*
 * bus_set_renew(): nats.c closed the connection for good and the bus opened
 * a new one; the subscriptions of the closed one receive nothing. Made again,
 * after the old ones' handlers have returned (nothing is delivered on a closed
 * connection), so two never run at once.
 */
static void ingest_renew(void *ctx)
{
    struct aggregator *a = ctx;
    natsSubscription *subs[3] = {NULL, NULL, NULL}, *old[3];
    char err[256];

    aggregator_gate_quiesce(&a->ingest_gate);
    /* Refused again already: the bus says so, and calls this again with its next one. */
    if (ingest_subscribe(a, subs, err, sizeof(err)) < 0 &&
        !natsConnection_IsClosed(bus_conn(a->bus)))
        fprintf(stderr,
                "ebpf-aggregator: on the new NATS connection: %s; made again with the next one\n",
                err);
    ingest_swap_subs(a, subs, old);
    for (int i = 0; i < 3; i++)
        natsSubscription_Destroy(old[i]);
    pthread_mutex_lock(&a->stream_lock);
    natsSubscription *stream = stream_detach_locked(a);
    pthread_mutex_unlock(&a->stream_lock);
    stream_end(a, stream);
    ingest_stream_sync(a); /* a new SSE feed when clients are connected */
}

int ingest_start(struct aggregator *a, char *err, size_t errlen)
{
    natsSubscription *subs[3] = {NULL, NULL, NULL}, *old[3];

    int rc = ingest_subscribe(a, subs, err, errlen);
    ingest_swap_subs(a, subs, old);
    /* Refused already (nats.c closed the connection): made again on the bus's next one. */
    if (rc < 0 && !natsConnection_IsClosed(bus_conn(a->bus)))
        return rc;
    bus_set_renew(a->bus, ingest_renew, a);
    return 0;
}

/*
 * Takes the SSE feed's subscription off the aggregator (its handler then only frees what it
 * gets) for stream_end() once stream_lock is released: ending it waits for the connection's
 * reader, and the handler takes that lock.
 */
static natsSubscription *stream_detach_locked(struct aggregator *a)
{
    int64_t dropped = 0;
    natsSubscription *sub = a->stream_sub;

    /* What the feed holds; a handler still running adds its batch, freed at the next flush. */
    held_free(&a->streamed);
    if (sub == NULL)
        return NULL;
    if (natsSubscription_GetDropped(sub, &dropped) == NATS_OK && dropped > 0)
        a->stream_sub_dropped += (uint64_t)dropped;
    a->stream_sub = NULL;
    return sub;
}

/* Ends a subscription stream_detach_locked() took (stream_lock not held). */
static void stream_end(struct aggregator *a, natsSubscription *sub)
{
    if (sub != NULL && !bus_sub_end(bus_conn(a->bus), sub, INGEST_SUB_END_MS))
        fprintf(stderr,
                "ebpf-aggregator: the stream's subscription did not end within %d ms; "
                "left allocated\n",
                INGEST_SUB_END_MS);
}

/* The feed has no clients any more: what it did not hear since is no one's loss. */
static void stream_forget_locked(struct aggregator *a)
{
    struct nodes_totals t;

    if (a->stream_nodes == NULL)
        return;
    nodes_get_totals(a->stream_nodes, &t);
    a->stream_lost_batches += t.lost_batches;
    nodes_free(a->stream_nodes);
    a->stream_nodes = NULL;
}

void ingest_stream_sync(struct aggregator *a)
{
    char subject[CONFIG_STR + 4];
    natsSubscription *ended = NULL;

    pthread_mutex_lock(&a->stream_lock);
    if (a->stream_clients > 0 && a->stream_sub == NULL && !a->stream_closed) {
        natsConnection *nc = bus_conn(a->bus);
        if (a->stream_nodes == NULL) { /* NULL when out of memory: gaps go uncounted */
            a->stream_nodes = nodes_new(AGGREGATOR_MAX_INSTANCES);
            /* Clients want every batch from now on: an agent that starts later is heard
             * from its first one, or that one is lost. */
            if (a->stream_nodes)
                nodes_set_heard_since(a->stream_nodes, clock_realtime_ns());
        }
        wildcard_subject(a, subject, sizeof(subject));
        if (natsConnection_Subscribe(&a->stream_sub, nc, subject, on_stream_batch, a) == NATS_OK) {
            natsSubscription_SetPendingLimits(a->stream_sub, INGEST_PENDING_MSGS,
                                              INGEST_PENDING_BYTES);
            /* Registered at the server before the client sees ": connected". */
            natsConnection_FlushTimeout(nc, 500);
        } else {
            a->stream_sub = NULL; /* retried by the cluster thread's next tick */
        }
    } else if (a->stream_clients == 0 && a->stream_sub != NULL) {
        ended = stream_detach_locked(a);
        stream_forget_locked(a);
    }
    pthread_mutex_unlock(&a->stream_lock);
    stream_end(a, ended);
}

void ingest_on_stream_clients(void *ctx, uint64_t clients)
{
    struct aggregator *a = ctx;

    pthread_mutex_lock(&a->stream_lock);
    a->stream_clients = clients;
    pthread_mutex_unlock(&a->stream_lock);
    ingest_stream_sync(a);
}

struct sub_done {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void on_sub_complete(void *closure)
{
    struct sub_done *d = closure;

    pthread_mutex_lock(&d->lock);
    d->done = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

/* Waits until deadline for the subscription's completion callback; true when it ran. */
static bool sub_wait_done(struct sub_done *d, int timeout_ms)
{
    struct timespec ts = clock_deadline_ms((uint64_t)timeout_ms);
    pthread_mutex_lock(&d->lock);
    while (!d->done && pthread_cond_timedwait(&d->cond, &d->lock, &ts) == 0)
        ;
    bool done = d->done;
    pthread_mutex_unlock(&d->lock);
    return done;
}

bool aggregator_sub_close(natsSubscription *sub, natsConnection *nc, bool drain, int timeout_ms,
                          struct aggregator_gate *gate)
{
    bool wait;

    if (sub == NULL)
        return true;
    /* On the heap: nats.c may run the completion callback after we give up waiting. */
    struct sub_done *d = calloc(1, sizeof(*d));
    if (!d) {
        bus_sub_end(nc, sub, timeout_ms);
        return false; /* not waited for */
    }
    pthread_mutex_init(&d->lock, NULL);
    clock_cond_init(&d->cond);
    wait = natsSubscription_SetOnCompleteCB(sub, on_sub_complete, d) == NATS_OK;
    /* Draining needs the server; without it, queued messages are simply dropped. */
    bool reader_past = true; /* the connection's reader is past its messages (bus_sub_end()) */
    if (drain && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED &&
        natsSubscription_Drain(sub) == NATS_OK) {
        natsSubscription_WaitForDrainCompletion(sub, timeout_ms);
    } else {
        natsSubscription_Unsubscribe(sub);
        /* Without a connection to the server no reader delivers anything more to sub (it is off
         * the connection's list, and not sent again on a reconnection), and a flush could only
         * wait for its timeout. */
        reader_past = natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED ||
                      natsConnection_FlushTimeout(nc, timeout_ms) == NATS_OK ||
                      natsConnection_IsClosed(nc);
    }
    bool stopped = !wait || sub_wait_done(d, timeout_ms);
    if (!stopped && gate) {
        /* What is still queued now reaches a closed gate and is dropped at once. */
        fprintf(stderr, "ebpf-aggregator: messages still queued after %d ms are dropped\n",
                timeout_ms);
        aggregator_gate_close(gate);
        stopped = sub_wait_done(d, timeout_ms);
    }
    bool done = stopped && reader_past;
    if (done) {
        natsSubscription_Destroy(sub);
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->lock);
        free(d);
    } else {
        /* Its handler may still run: leaking sub and d beats freeing what it uses. */
        fprintf(stderr, "ebpf-aggregator: a subscription did not stop within %d ms\n", timeout_ms);
    }
    return done;
}

void ingest_stop(struct aggregator *a, int timeout_ms)
{
    natsSubscription *none[3] = {NULL, NULL, NULL}, *subs[3];

    bus_set_renew(a->bus, NULL, NULL); /* no new subscriptions from here */
    /* Off the aggregator first: a stats request (ingest_bus_dropped()) reads them meanwhile. */
    ingest_swap_subs(a, none, subs);
    /* Drain: stop receiving, but finish what is already queued for the callback. */
    if (aggregator_sub_close(subs[0], bus_conn(a->bus), true, timeout_ms, &a->ingest_gate))
        held_free(&a->ingested); /* on_batch runs no more */
    aggregator_sub_close(subs[1], bus_conn(a->bus), false, timeout_ms, &a->ingest_gate);
    aggregator_sub_close(subs[2], bus_conn(a->bus), false, timeout_ms, &a->ingest_gate);
    /* Whether or not it stopped: once this returns, no handler touches the store or nodes. */
    aggregator_gate_close(&a->ingest_gate);
    pthread_mutex_lock(&a->stream_lock);
    a->stream_closed = true;
    natsSubscription *stream = stream_detach_locked(a);
    stream_forget_locked(a);
    pthread_mutex_unlock(&a->stream_lock);
    stream_end(a, stream);
}

uint64_t ingest_bus_dropped(struct aggregator *a)
{
    int64_t dropped = 0;

    pthread_mutex_lock(&a->subs_lock);
    if (a->ingest_sub != NULL && natsSubscription_GetDropped(a->ingest_sub, &dropped) == NATS_OK &&
        dropped > 0)
        a->ingest_sub_dropped_seen = (uint64_t)dropped;
    uint64_t total = a->ingest_sub_dropped + a->ingest_sub_dropped_seen;
    pthread_mutex_unlock(&a->subs_lock);
    return total;
}

uint64_t ingest_stream_lost(struct aggregator *a)
{
    struct nodes_totals t = {0};

    pthread_mutex_lock(&a->stream_lock);
    if (a->stream_nodes)
        nodes_get_totals(a->stream_nodes, &t);
    uint64_t lost = a->stream_lost_batches + t.lost_batches;
    pthread_mutex_unlock(&a->stream_lock);
    return lost;
}

uint64_t ingest_stream_dropped(struct aggregator *a)
{
    int64_t dropped = 0;
    uint64_t total;

    pthread_mutex_lock(&a->stream_lock);
    total = a->stream_sub_dropped;
    if (a->stream_sub != NULL && natsSubscription_GetDropped(a->stream_sub, &dropped) == NATS_OK &&
        dropped > 0)
        total += (uint64_t)dropped;
    pthread_mutex_unlock(&a->stream_lock);
    return total;
}

/* {"batches":..,"events":..,"events_by_type":{..},"rejected":{..},"rejected_events":{..}
 * (the object left open). */
static void counters_received_json(const struct aggregator_counters *c, struct buf *b)
{
    buf_printf(b, "{\"batches\":%" PRIu64 ",\"events\":%" PRIu64 ",\"events_by_type\":{",
               counter_get(&c->batches), counter_get(&c->events));
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        buf_printf(b, "%s\"%s\":%" PRIu64, t > 1 ? "," : "", event_type_name(t),
                   counter_get(&c->events_by_type[t]));
    buf_puts(b, "},\"rejected\":{");
    for (unsigned r = 1; r < BUS_REJECT_COUNT; r++)
        buf_printf(b, "%s\"%s\":%" PRIu64, r > 1 ? "," : "", bus_reject_name(r),
                   counter_get(&c->rejected[r]));
    buf_puts(b, "},\"rejected_events\":{");
    buf_printf(b, "\"%s\":%" PRIu64 ",\"%s\":%" PRIu64 "}",
               bus_reject_name(BUS_REJECT_MALFORMED_PROTOBUF),
               counter_get(&c->rejected_events[BUS_REJECT_MALFORMED_PROTOBUF]),
               bus_reject_name(BUS_REJECT_MALFORMED_JSON),
               counter_get(&c->rejected_events[BUS_REJECT_MALFORMED_JSON]));
}

void ingest_counters_carry_json(struct aggregator *a, struct buf *b)
{
    const struct aggregator_counters *c = &a->counters;

    counters_received_json(c, b);
    buf_printf(b,
               ",\"store_failed\":%" PRIu64 ",\"history_departed\":%" PRIu64
               ",\"flows_departed\":%" PRIu64 "}",
               counter_get(&c->store_failed), counter_get(&c->history_departed),
               counter_get(&c->flows_departed));
}

/* Adds o[key] (a non-negative integer; anything else counts nothing) to *v. */
static void inherit_one(uint64_t *v, json_t *o, const char *key)
{
    json_t *n = json_object_get(o, key);
    if (json_is_integer(n) && json_integer_value(n) > 0)
        counter_add(v, (uint64_t)json_integer_value(n));
}

void ingest_counters_inherit(struct aggregator *a, json_t *from)
{
    struct aggregator_counters *c = &a->counters;

    if (!json_is_object(from))
        return;
    for (unsigned r = 1; r < BUS_REJECT_COUNT; r++) {
        inherit_one(&c->rejected[r], json_object_get(from, "rejected"), bus_reject_name(r));
        inherit_one(&c->rejected_events[r], json_object_get(from, "rejected_events"),
                    bus_reject_name(r));
    }
    inherit_one(&c->store_failed, from, "store_failed");
    inherit_one(&c->history_departed, from, "history_departed");
    inherit_one(&c->flows_departed, from, "flows_departed");
}

void ingest_counters_json(struct aggregator *a, struct buf *b)
{
    const struct aggregator_counters *c = &a->counters;
    struct store_stats ss;

    store_get_stats(a->store, &ss);
    counters_received_json(c, b);
    ss.failed += counter_get(&c->store_failed);
    buf_printf(b,
               ",\"bus_dropped\":%" PRIu64 ",\"store_failed\":%" PRIu64
               ",\"history_departed\":%" PRIu64 ",\"flows_departed\":%" PRIu64 ",\"history\":",
               ingest_bus_dropped(a), ss.failed, counter_get(&c->history_departed),
               counter_get(&c->flows_departed));
    api_json_append(b, api_store_stats_json(&ss));
    buf_puts(b, ",\"flows\":");
    flows_stats_json(a->flows, b);
    struct peers_stats ps;
    peers_get_stats(a->peers, &ps);
    buf_printf(
        b,
        ",\"peers\":{\"entries\":%" PRIu64 ",\"capacity\":%" PRIu64 ",\"lookups\":%" PRIu64
        ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"ambiguous\":%" PRIu64 ",\"stale\":%" PRIu64
        ",\"host_network\":%" PRIu64 ",\"evicted\":%" PRIu64 ",\"expired\":%" PRIu64
        ",\"gone\":%" PRIu64 ",\"announcements_sent\":%" PRIu64 ",\"announcements_failed\":%" PRIu64
        ",\"announcements_received\":%" PRIu64 ",\"announcements_rejected\":%" PRIu64
        ",\"pods_received\":%" PRIu64 ",\"syncs_asked\":%" PRIu64 ",\"syncs_answered\":%" PRIu64
        ",\"pod_lists\":%" PRIu64 ",\"pod_lists_skipped\":%" PRIu64 "}",
        ps.entries, ps.capacity, ps.lookups, ps.results[PEERS_HIT], ps.results[PEERS_MISS],
        ps.results[PEERS_AMBIGUOUS], ps.results[PEERS_STALE], ps.results[PEERS_HOST_NETWORK],
        ps.evicted, ps.expired, ps.gone, counter_get(&c->peer_announcements_sent),
        counter_get(&c->peer_announcements_failed), counter_get(&c->peer_announcements_received),
        counter_get(&c->peer_announcements_rejected), counter_get(&c->peer_pods_received),
        counter_get(&c->peer_syncs_asked), counter_get(&c->peer_syncs_answered), ps.lists,
        ps.lists_skipped);
    struct k8s_services_stats ks = {0};
    if (a->services)
        k8s_services_get_stats(a->services, &ks);
    buf_printf(b,
               ",\"services\":{\"services\":%" PRIu64 ",\"endpoint_slices\":%" PRIu64
               ",\"refused\":%" PRIu64 ",\"lookups\":%" PRIu64 ",\"cluster_ip\":%" PRIu64
               ",\"backend\":%" PRIu64 ",\"ambiguous\":%" PRIu64 ",\"misses\":%" PRIu64
               ",\"api_errors\":%" PRIu64 ",\"lists\":%" PRIu64 "}",
               ks.services, ks.slices, ks.refused, ks.lookups, ks.results[K8S_SVC_CLUSTER_IP],
               ks.results[K8S_SVC_BACKEND], ks.results[K8S_SVC_AMBIGUOUS], ks.results[K8S_SVC_MISS],
               ks.services_watch.api_errors + ks.slices_watch.api_errors,
               ks.services_watch.lists + ks.slices_watch.lists);
    buf_puts(b, ",\"joins\":");
    join_stats_json(a, b);
    struct intern_stats is;
    intern_get_stats(&is);
    buf_printf(b,
               ",\"strings\":{\"held\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"refused\":%" PRIu64 "}",
               is.strings, is.bytes, is.refused);
    buf_printf(b, ",\"uptime_seconds\":%.3f}",
               (double)(clock_monotonic_ns() - a->started_mono_ns) / 1e9);
}

void aggregator_peers_metrics(struct aggregator *a, struct buf *b)
{
    const struct aggregator_counters *c = &a->counters;
    struct peers_stats ps;

    peers_get_stats(a->peers, &ps);
    api_metric(b, "ebpf_aggregator_peer_entries", "gauge",
               "Pod addresses (IP, pod) this replica holds to name peers across nodes.",
               ps.entries);
    api_metric_header(b, "ebpf_aggregator_peer_lookups_total", "counter",
                      "Peer addresses this replica looked up at ingest, by result.");
    for (unsigned r = 0; r < PEERS_RESULT_COUNT; r++)
        api_metric_labelled(b, "ebpf_aggregator_peer_lookups_total", "result", peers_result_name(r),
                            ps.results[r]);
    api_metric(b, "ebpf_aggregator_peer_evicted_total", "counter",
               "Pod addresses evicted for room (PEER_MAX_PODS).", ps.evicted);
    api_metric(b, "ebpf_aggregator_peer_gone_total", "counter",
               "Pod addresses ended by the pod's deletion (sent by its node's agent).", ps.gone);
    api_metric_header(b, "ebpf_aggregator_peer_pod_lists_total", "counter",
                      "Node pod lists from restarted agents (Ebpf-Pods-Present), by outcome: "
                      "applied, or skipped as a node's second within a second.");
    api_metric_labelled(b, "ebpf_aggregator_peer_pod_lists_total", "outcome", "applied", ps.lists);
    api_metric_labelled(b, "ebpf_aggregator_peer_pod_lists_total", "outcome", "skipped",
                        ps.lists_skipped);
    api_metric_header(b, "ebpf_aggregator_peer_announcements_total", "counter",
                      "Pod announcements between replicas, by outcome.");
    api_metric_labelled(b, "ebpf_aggregator_peer_announcements_total", "outcome", "sent",
                        counter_get(&c->peer_announcements_sent));
    api_metric_labelled(b, "ebpf_aggregator_peer_announcements_total", "outcome", "failed",
                        counter_get(&c->peer_announcements_failed));
    api_metric_labelled(b, "ebpf_aggregator_peer_announcements_total", "outcome", "received",
                        counter_get(&c->peer_announcements_received));
    api_metric_labelled(b, "ebpf_aggregator_peer_announcements_total", "outcome", "rejected",
                        counter_get(&c->peer_announcements_rejected));

    struct k8s_services_stats ks = {0};
    if (a->services)
        k8s_services_get_stats(a->services, &ks);
    api_metric(b, "ebpf_aggregator_services", "gauge",
               "Kubernetes Services this replica watches (0 outside Kubernetes).", ks.services);
    api_metric(b, "ebpf_aggregator_endpoint_slices", "gauge",
               "Kubernetes EndpointSlices this replica watches.", ks.slices);
    api_metric_header(b, "ebpf_aggregator_service_lookups_total", "counter",
                      "Peer addresses this replica matched against Services at ingest, by result.");
    static const char *const svc_results[K8S_SVC_RESULT_COUNT] = {
        [K8S_SVC_MISS] = "miss",
        [K8S_SVC_CLUSTER_IP] = "cluster_ip",
        [K8S_SVC_BACKEND] = "backend",
        [K8S_SVC_AMBIGUOUS] = "ambiguous",
    };
    for (unsigned r = 0; r < K8S_SVC_RESULT_COUNT; r++)
        api_metric_labelled(b, "ebpf_aggregator_service_lookups_total", "result", svc_results[r],
                            ks.results[r]);
    api_metric(b, "ebpf_aggregator_services_refused_total", "counter",
               "Services and EndpointSlices not kept: over the bound.", ks.refused);
    api_metric(b, "ebpf_aggregator_k8s_api_errors_total", "counter",
               "Failed LIST/WATCH requests for Services and EndpointSlices.",
               ks.services_watch.api_errors + ks.slices_watch.api_errors);
    join_metrics(a, b);
}

/*
 * Heartbeats, membership and scatter-gather between aggregator replicas
 * (see cluster.h for the subjects and messages).
 *
 * Threads: the "cluster" thread sends heartbeats and prunes expired peers;
 * nats.c's delivery threads run the heartbeat, query, stats and reply
 * callbacks; gathers run on the caller's thread (an API worker, or the HTTP
 * thread when alone) and block it at most QUERY_TIMEOUT. Shared state: the
 * peer table (c->lock) and the gathers waiting for replies (c->reply_lock).
 *
 * Replies come to one wildcard inbox subscription made at start,
 * <inbox>.<token> per gather, rather than a subscription per gather: a SUB and
 * UNSUB per query cost more than the query itself.
 */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator.h"
#include "clock.h"
#include "cluster_reply.h"
#include "errmsg.h"

#define CLUSTER_SUBJECT_LEN      (2 * CONFIG_STR + 16)
#define CLUSTER_LEAVE_FLUSH_MS   1000
#define CLUSTER_HANDOVER_TRIES   3
#define CLUSTER_HANDOVER_WAIT_MS 2000
/* On a handover request: the events the leaving replica's history held. */
#define CLUSTER_HDR_HISTORY_EVENTS "Ebpf-History-Events"
/* The flow buckets (edge-minutes) the leaving replica could not hand over: they leave with it. */
#define CLUSTER_HDR_FLOW_MINUTES "Ebpf-Flow-Minutes"
/* On a handover request, "flows": a chunk of the leaver's flow minutes (not its node table). */
#define CLUSTER_HDR_HANDOVER "Ebpf-Handover"
/* On a chunk or node table: when the leaver sent it (ns since the epoch, its clock). One older
 * than CLUSTER_HANDOVER_FRESH_MS when a replica gets it (one that was stopped, then resumed) is
 * declined: the leaver stopped waiting for it and sent it elsewhere or counted it. The node
 * table's wait, CLUSTER_HANDOVER_WAIT_MS, is longer, so a taker's answer reaches the leaver. */
#define CLUSTER_HDR_SENT          "Ebpf-Sent-At"
#define CLUSTER_HANDOVER_FRESH_MS 1000
/* Flow minutes handed over: chunks of at most this (or the server's max payload), this much in
 * all, for this long; the rest leaves with the replica, counted. */
#define CLUSTER_FLOWS_CHUNK        (512 * 1024)
#define CLUSTER_FLOWS_HANDOVER_MAX ((size_t)64 << 20)
#define CLUSTER_FLOWS_HANDOVER_MS  10000
/* The leaving replica's counters (ingest_counters_carry_json()), which the taker goes on with. */
#define CLUSTER_HDR_COUNTERS       "Ebpf-Counters"
#define CLUSTER_SUBSCRIBE_FLUSH_MS 1000
#define CLUSTER_CLOSE_WAIT_MS      2000
#define CLUSTER_SUBS               6 /* subscriptions of struct cluster */
/* Replies one gather holds undecoded: far above what peers send, a bound for a flood. */
#define CLUSTER_QUEUE_MAX_MSGS  4096
#define CLUSTER_QUEUE_MAX_BYTES (256u << 20)

_Static_assert(CLUSTER_REPLICA_ID_LEN == AGGREGATOR_REPLICA_ID_LEN, "one replica id length");

/* A gather waiting for replies on <reply_prefix>.<token>. */
struct reply_waiter {
    struct reply_waiter *next;
    uint64_t token;
    natsMsg **msgs; /* received, not yet handled by the gatherer */
    size_t nmsgs, cap;
    size_t bytes; /* of msgs */
    pthread_cond_t cond;
};

struct cluster_peer {
    char id[AGGREGATOR_REPLICA_ID_LEN];
    uint64_t last_ms; /* monotonic time of its last heartbeat */
};

struct cluster {
    struct aggregator *a;
    /* A connection of its own: what it sends is waited for, so it goes out at once
     * (send_asap), where the main connection buffers ingest-side traffic. */
    struct bus *bus;     /* bus_conn() for each call: the connection is replaced after a refusal */
    uint64_t timeout_ms; /* QUERY_TIMEOUT */
    char subj_heartbeat[CLUSTER_SUBJECT_LEN];
    char subj_query[CLUSTER_SUBJECT_LEN];
    char subj_stats[CLUSTER_SUBJECT_LEN];
    char subj_flows[CLUSTER_SUBJECT_LEN];
    char subj_handover[CLUSTER_SUBJECT_LEN];
    /* Made again on a new connection (cluster_renew(), the bus's thread). */
    natsSubscription *hb_sub, *query_sub, *stats_sub, *flows_sub, *reply_sub, *handover_sub;
    char reply_prefix[64]; /* the inbox; replies come to <reply_prefix>.<token> */

    pthread_mutex_t reply_lock; /* waiters, next_token */
    struct reply_waiter *waiters;
    uint64_t next_token;

    pthread_mutex_t lock; /* peers, stopping */
    pthread_cond_t wake;
    struct cluster_peer peers[CLUSTER_MAX_PEERS];
    size_t npeers;
    bool stopping;
    bool left;
    pthread_t thread;
    bool thread_started;

    uint64_t invalid_answers;    /* atomic: peers' answers rejected as malformed */
    struct aggregator_gate gate; /* every callback: cluster_free() waits for them */
};

static uint64_t mono_ms(void)
{
    return clock_monotonic_ns() / 1000000;
}

static bool connected(struct cluster *c)
{
    return natsConnection_Status(bus_conn(c->bus)) == NATS_CONN_STATUS_CONNECTED;
}

static void on_handover(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* Whether this replica is leaving: it answers no more (its node table went to a peer). */
static bool has_left(struct cluster *c)
{
    pthread_mutex_lock(&c->lock);
    bool left = c->left;
    pthread_mutex_unlock(&c->lock);
    return left;
}

/* ---- membership ---- */

/*
 * Heartbeats also say how long the cluster has been listening, as far as this replica knows
 * (since the earliest start it heard of, its own or a peer's: an age, so the replicas' clocks
 * need not agree). A replica that knows the cluster listened before an agent started counts
 * that agent's batches from sequence 1 (nodes_set_heard_since()): when the replica that
 * received its first ones dies, they are lost batches, not batches nobody counts.
 */
static void publish_heartbeat(struct cluster *c, bool leaving)
{
    char body[160];
    uint64_t since = nodes_heard_since(c->a->nodes), now = clock_realtime_ns();
    int n = snprintf(
        body, sizeof(body), "{\"replica\":\"%s\",\"leaving\":%s,\"listening_ns\":%" PRIu64 "}",
        c->a->replica, leaving ? "true" : "false", since && since < now ? now - since : 0);
    natsConnection_Publish(bus_conn(c->bus), c->subj_heartbeat, body, n);
}

static ssize_t peer_find(struct cluster *c, const char *id)
{
    for (size_t i = 0; i < c->npeers; i++)
        if (strcmp(c->peers[i].id, id) == 0)
            return (ssize_t)i;
    return -1;
}

static void peer_remove(struct cluster *c, size_t i)
{
    c->peers[i] = c->peers[--c->npeers];
}

static void handle_heartbeat(struct cluster *c, natsMsg *msg)
{
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    bool leaving = json_is_true(json_object_get(root, "leaving"));
    json_t *listening = json_object_get(root, "listening_ns");
    bool joined = false;

    if (id == NULL || !cluster_replica_id_valid(id) || strcmp(id, c->a->replica) == 0)
        goto out;
    uint64_t now = clock_realtime_ns();
    if (json_is_integer(listening) && json_integer_value(listening) > 0 &&
        (uint64_t)json_integer_value(listening) < now)
        nodes_heard_since_earlier(c->a->nodes, now - (uint64_t)json_integer_value(listening));
    pthread_mutex_lock(&c->lock);
    ssize_t i = peer_find(c, id);
    if (leaving) {
        if (i >= 0)
            peer_remove(c, (size_t)i);
    } else if (i >= 0) {
        c->peers[i].last_ms = mono_ms();
    } else if (c->npeers < CLUSTER_MAX_PEERS) {
        snprintf(c->peers[c->npeers].id, sizeof(c->peers[0].id), "%s", id);
        c->peers[c->npeers++].last_ms = mono_ms();
        joined = true;
    }
    bool left = c->left;
    pthread_mutex_unlock(&c->lock);
    if (leaving && i >= 0)
        fprintf(stderr, "ebpf-aggregator: replica %s left\n", id);
    if (joined) {
        fprintf(stderr, "ebpf-aggregator: replica %s joined\n", id);
        /* Answer at once so a new replica learns its peers without waiting a period. */
        if (!left)
            publish_heartbeat(c, false);
    }
out:
    json_decref(root);
}

/* Runs handle unless cluster_free() has closed the gate; frees msg. */
#define GATED(c, msg, handle)                                                                      \
    do {                                                                                           \
        if (aggregator_gate_enter(&(c)->gate)) {                                                   \
            handle;                                                                                \
            aggregator_gate_leave(&(c)->gate);                                                     \
        }                                                                                          \
        natsMsg_Destroy(msg);                                                                      \
    } while (0)

static void on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_heartbeat(c, msg));
}

/*
 * Expires the peers not heard from within CLUSTER_PEER_TTL_MS. Without either
 * NATS connection this replica hears no one (heartbeats come on its own, the
 * batches on the main one): the peers it knew stay expected (its answers are
 * partial, answered < expected) until both are back and they have had
 * CLUSTER_PEER_TTL_MS to be heard again. The two come back on their own
 * schedules after a refusal.
 */
static void prune_peers(struct cluster *c)
{
    uint64_t now = mono_ms();
    bool deaf = !bus_connected(c->a->bus) || !bus_connected(c->bus);

    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->npeers;) {
        if (deaf)
            c->peers[i].last_ms = now;
        if (now - c->peers[i].last_ms >= CLUSTER_PEER_TTL_MS) {
            fprintf(stderr, "ebpf-aggregator: replica %s expired (no heartbeat for %d ms)\n",
                    c->peers[i].id, CLUSTER_PEER_TTL_MS);
            peer_remove(c, i);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&c->lock);
}

void cluster_bus_status(struct cluster *c, struct bus_status *out)
{
    bus_get_status(c->bus, out);
}

bool cluster_bus_connected(struct cluster *c)
{
    return bus_connected(c->bus);
}

void cluster_set_bus_listener(struct cluster *c, bus_state_fn fn, void *ctx)
{
    bus_set_listener(c->bus, fn, ctx);
}

unsigned cluster_expected(struct cluster *c)
{
    uint64_t now = mono_ms();
    unsigned n = 1;

    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->npeers; i++)
        if (now - c->peers[i].last_ms < CLUSTER_PEER_TTL_MS)
            n++;
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void *cluster_main(void *arg)
{
    struct cluster *c = arg;

    pthread_setname_np(pthread_self(), "cluster");
    pthread_mutex_lock(&c->lock);
    while (!c->stopping) {
        pthread_mutex_unlock(&c->lock);
        publish_heartbeat(c, false);
        prune_peers(c);
        /* Retries the SSE subscription if it could not be made when a client came. */
        ingest_stream_sync(c->a);
        pthread_mutex_lock(&c->lock);
        if (c->stopping)
            break;
        struct timespec ts = clock_deadline_ms(CLUSTER_HEARTBEAT_MS);
        pthread_cond_timedwait(&c->wake, &c->lock, &ts);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* ---- scatter-gather ---- */

/* cluster_answers' is_peer: whether id is a live peer's. */
static bool peer_live(void *ctx, const char *id)
{
    struct cluster *c = ctx;

    pthread_mutex_lock(&c->lock);
    bool live = peer_find(c, id) >= 0;
    pthread_mutex_unlock(&c->lock);
    return live;
}

static void answers_init(struct cluster *c, struct cluster_answers *seen)
{
    seen->self = c->a->replica;
    seen->is_peer = peer_live;
    seen->ctx = c;
}

/* Counts a rejected answer; logged once and then every 1000th, so a flood cannot fill logs. */
static void answer_reject(struct cluster *c, const char *kind, const char *id, const char *why)
{
    uint64_t n = __atomic_add_fetch(&c->invalid_answers, 1, __ATOMIC_RELAXED);

    if (n == 1 || n % 1000 == 0)
        fprintf(stderr,
                "ebpf-aggregator: ignored a %s answer from %s: %s (%" PRIu64 " invalid so far)\n",
                kind, id != NULL && cluster_replica_id_valid(id) ? id : "an unknown sender", why,
                n);
}

/* What one reply is to a gather. */
enum answer {
    ANSWER_NONE = 0, /* not an answer (malformed, a replica heard already, a status message) */
    ANSWER_FULL,     /* the replica's share */
    ANSWER_FAILED,   /* the replica could not run the request: its share is missing */
};

/*
 * What a decoded answer is to this gather. rc is its decoder's result
 * (-EINVAL: not an answer of this kind at all); an answer is recorded in
 * seen. A peer's error is logged, and leaves its share out of the answer,
 * which is then partial (it does not count as answered).
 */
static enum answer answer_take(struct cluster *c, struct cluster_answers *seen, const char *kind,
                               const char *malformed, int rc, const char *replica,
                               const char *error)
{
    const char *why = rc == -EINVAL ? malformed : cluster_answer_admit(seen, replica);

    if (why != NULL) {
        answer_reject(c, kind, rc == -EINVAL ? NULL : replica, why);
        return ANSWER_NONE;
    }
    cluster_answer_record(seen, replica);
    if (error == NULL)
        return ANSWER_FULL;
    char shown[512];
    fprintf(stderr, "ebpf-aggregator: replica %s could not run the %s: %s\n", replica, kind,
            errmsg_printable(error, shown, sizeof(shown)));
    return ANSWER_FAILED;
}

uint64_t cluster_invalid_answers(struct cluster *c)
{
    return c != NULL ? __atomic_load_n(&c->invalid_answers, __ATOMIC_RELAXED) : 0;
}

/* Handles one reply: what it is to the gather. */
typedef enum answer (*gather_reply_fn)(void *ctx, natsMsg *m);

/* nats.c delivery thread: hands a reply to the gather waiting for its token. */
static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    if (!aggregator_gate_enter(&c->gate)) {
        natsMsg_Destroy(msg);
        return;
    }
    const char *subject = natsMsg_GetSubject(msg);
    const char *dot = subject != NULL ? strrchr(subject, '.') : NULL;
    uint64_t token = dot != NULL ? strtoull(dot + 1, NULL, 10) : 0;
    bool flood = false;

    pthread_mutex_lock(&c->reply_lock);
    for (struct reply_waiter *w = c->waiters; w != NULL; w = w->next) {
        if (w->token != token)
            continue;
        /* Far more waiting than peers send: someone floods the inbox. */
        size_t len = (size_t)natsMsg_GetDataLength(msg);
        if (w->nmsgs >= CLUSTER_QUEUE_MAX_MSGS || w->bytes + len > CLUSTER_QUEUE_MAX_BYTES) {
            flood = true;
            break;
        }
        if (w->nmsgs == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 4;
            natsMsg **p = realloc(w->msgs, cap * sizeof(*p));
            if (p == NULL)
                break;
            w->msgs = p;
            w->cap = cap;
        }
        w->msgs[w->nmsgs++] = msg;
        w->bytes += len;
        msg = NULL;
        pthread_cond_signal(&w->cond);
        break;
    }
    pthread_mutex_unlock(&c->reply_lock);
    if (flood)
        answer_reject(c, "queued", NULL, "too many answers waiting to be read");
    aggregator_gate_leave(&c->gate);
    /* A late reply (its gather gave up), a flood, or no memory. */
    natsMsg_Destroy(msg);
}

/*
 * A gather in two halves, so the asker's own share is computed while the
 * peers compute theirs: gather_start() registers the waiter and publishes
 * req on subject with a reply subject of its own (answers that arrive
 * before gather_finish() queue in the waiter); gather_finish() collects up
 * to want answers until the deadline and returns how many it took.
 */
struct gather_op {
    struct reply_waiter w;
    natsStatus s;
    uint64_t deadline;
    unsigned want;
    bool started;
};

static void gather_start(struct cluster *c, struct gather_op *op, const char *subject,
                         const char *req, size_t len, unsigned want)
{
    char reply[sizeof(c->reply_prefix) + 24];

    memset(op, 0, sizeof(*op));
    op->want = want;
    if (want == 0 || __atomic_load_n(&c->reply_sub, __ATOMIC_ACQUIRE) == NULL || !connected(c))
        return;
    op->started = true;
    clock_cond_init(&op->w.cond);
    pthread_mutex_lock(&c->reply_lock);
    op->w.token = ++c->next_token;
    op->w.next = c->waiters;
    c->waiters = &op->w;
    pthread_mutex_unlock(&c->reply_lock);
    snprintf(reply, sizeof(reply), "%s.%" PRIu64, c->reply_prefix, op->w.token);

    /* Written at once (send_asap): no flush, which would wait a round trip to the server. */
    op->s = natsConnection_PublishRequest(bus_conn(c->bus), subject, reply, req, (int)len);
    op->deadline = mono_ms() + c->timeout_ms;
}

static unsigned gather_finish(struct cluster *c, struct gather_op *op, gather_reply_fn fn,
                              void *ctx)
{
    struct reply_waiter *w = &op->w, **pp;
    unsigned got = 0, heard = 0;

    if (!op->started)
        return 0;
    pthread_mutex_lock(&c->reply_lock);
    while (op->s == NATS_OK && heard < op->want) {
        if (w->nmsgs > 0) {
            natsMsg *m = w->msgs[--w->nmsgs];
            w->bytes -= (size_t)natsMsg_GetDataLength(m);
            /* Decode without the lock: the delivery thread keeps queueing. */
            pthread_mutex_unlock(&c->reply_lock);
            enum answer a = fn(ctx, m);
            heard += a != ANSWER_NONE;
            got += a == ANSWER_FULL;
            natsMsg_Destroy(m);
            pthread_mutex_lock(&c->reply_lock);
            continue;
        }
        uint64_t now = mono_ms();
        if (now >= op->deadline)
            break;
        struct timespec ts = clock_deadline_ms(op->deadline - now);
        pthread_cond_timedwait(&w->cond, &c->reply_lock, &ts);
    }
    for (pp = &c->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    pthread_mutex_unlock(&c->reply_lock);
    for (size_t i = 0; i < w->nmsgs; i++)
        natsMsg_Destroy(w->msgs[i]);
    free(w->msgs);
    pthread_cond_destroy(&w->cond);
    return got;
}

/* Gives up a started gather at once (the asker's own share failed). */
static void gather_cancel(struct cluster *c, struct gather_op *op)
{
    op->want = 0;
    gather_finish(c, op, NULL, NULL);
}

static unsigned gather(struct cluster *c, const char *subject, const char *req, size_t len,
                       unsigned want, gather_reply_fn fn, void *ctx)
{
    struct gather_op op;
    gather_start(c, &op, subject, req, len, want);
    return gather_finish(c, &op, fn, ctx);
}

/* ---- events ---- */

/* The peers' answers to one query, decoded. */
struct query_gather {
    struct cluster *c;
    struct cluster_source *src;
    size_t count, cap;
    int error; /* -ENOMEM seen */
    struct cluster_answers seen;
};

/* Moves s into g's sources. 0 or -ENOMEM. */
static int sources_add(struct query_gather *g, struct cluster_source *s)
{
    if (g->count == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 4;
        struct cluster_source *p = realloc(g->src, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        g->src = p;
        g->cap = cap;
    }
    g->src[g->count++] = *s;
    *s = (struct cluster_source){0};
    return 0;
}

static enum answer on_query_reply(void *ctx, natsMsg *m)
{
    struct query_gather *g = ctx;
    int len = natsMsg_GetDataLength(m);
    struct cluster_query_reply r;

    if (len <= 0)
        return ANSWER_NONE; /* e.g. an empty "no responders" status message */
    int rc = cluster_reply_query_decode(natsMsg_GetData(m), (size_t)len, &r);
    enum answer a =
        answer_take(g->c, &g->seen, "query", "not a QueryReply", rc, r.replica, r.error);
    if (a == ANSWER_FULL && (rc < 0 || sources_add(g, &r.src) < 0))
        g->error = -ENOMEM;
    cluster_query_reply_free(&r);
    return a;
}

int cluster_query(struct cluster *c, const char *qs, size_t qslen, const struct query *q,
                  struct cluster_events *out)
{
    struct query_gather g = {.c = c};
    struct store_result own;
    unsigned peers = cluster_expected(c) - 1;
    struct gather_op op = {0};
    int rc;

    memset(out, 0, sizeof(*out));
    answers_init(c, &g.seen);
    /* The peers first: they answer while this replica reads its own share. */
    if (peers > 0) {
        struct buf req;
        buf_init(&req);
        buf_puts(&req, "{\"replica\":");
        buf_json_cstr(&req, c->a->replica);
        buf_puts(&req, ",\"query\":");
        buf_json_string(&req, qs, qslen);
        buf_putc(&req, '}');
        if (!req.oom)
            gather_start(c, &op, c->subj_query, req.data, req.len, peers);
        buf_free(&req);
    }
    rc = store_query(c->a->store, q, &own);
    if (rc < 0) {
        gather_cancel(c, &op);
        store_result_free(&own);
        return rc;
    }
    unsigned answered = gather_finish(c, &op, on_query_reply, &g);

    struct cluster_source *all = malloc((g.count + 1) * sizeof(*all));
    if (all == NULL || g.error) {
        rc = -ENOMEM;
    } else {
        all[0] = (struct cluster_source){.events = own.events,
                                         .count = own.count,
                                         .total_count = own.total_count,
                                         .has_more = own.has_next};
        /* g.src is NULL when no peer answered (alone, or a peer just died). */
        if (g.count > 0)
            memcpy(all + 1, g.src, g.count * sizeof(*all));
        rc = cluster_merge(all, g.count + 1, q->limit, out);
    }
    free(all);
    store_result_free(&own);
    for (size_t i = 0; i < g.count; i++)
        cluster_source_free(&g.src[i]);
    free(g.src);
    out->answered = 1 + answered;
    out->expected = 1 + peers;
    if (out->expected < out->answered)
        out->expected = out->answered;
    return rc;
}

static void handle_query(struct cluster *c, natsConnection *nc, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    json_t *qv = json_object_get(root, "query");
    int64_t max = natsConnection_GetMaxPayload(nc);
    struct buf out;
    char err[256];
    struct query q;

    buf_init(&out);
    if (reply == NULL || reply[0] == '\0' || id == NULL || !json_is_string(qv) ||
        strcmp(id, c->a->replica) == 0 || has_left(c))
        goto done;
    if (query_parse(&q, json_string_value(qv), json_string_length(qv), false, err, sizeof(err)) <
        0) {
        cluster_reply_query_encode(c->a->replica, NULL, err, max, &out);
    } else {
        struct store_result r;
        if (store_query(c->a->store, &q, &r) < 0)
            cluster_reply_query_encode(c->a->replica, NULL, "out of memory running the query", max,
                                       &out);
        else
            cluster_reply_query_encode(c->a->replica, &r, NULL, max, &out);
        store_result_free(&r);
    }
    if (!out.oom && out.len > 0) {
        natsConnection_Publish(nc, reply, out.data, (int)out.len); /* sent at once */
    }
done:
    buf_free(&out);
    json_decref(root);
}

static void on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_query(c, nc, msg));
}

/* ---- flows ---- */

/* A peer's answer while its parts arrive: merged into the total only once whole. */
struct flows_partial {
    char id[CLUSTER_REPLICA_ID_LEN];
    struct flows_result edges;
    uint8_t seen[CLUSTER_FLOWS_MAX_PARTS / 8];
    unsigned received, total; /* total: 0 until the last part came */
    unsigned top;             /* the highest part number seen, plus one */
    bool whole;               /* every part came: it counts */
};

/* The peers' answers to one flows request, kept until every one is in (see flows_merge_all()). */
struct flows_gather {
    struct cluster *c;
    struct flows_result *out;
    int error; /* -ENOMEM seen */
    struct cluster_answers seen;
    struct flows_partial *partial; /* one per peer that sent part of its answer */
    size_t npartial;
};

static int edges_merge(struct flows_result *into, const struct flows_result *r)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->count; i++)
        rc = flows_result_add(into, &r->edges[i]);
    return rc;
}

static struct flows_partial *partial_of(struct flows_gather *g, const char *id)
{
    for (size_t i = 0; i < g->npartial; i++)
        if (strcmp(g->partial[i].id, id) == 0)
            return &g->partial[i];
    if (g->npartial == CLUSTER_MAX_PEERS)
        return NULL;
    if (g->partial == NULL && (g->partial = calloc(CLUSTER_MAX_PEERS, sizeof(*g->partial))) == NULL)
        return NULL;
    struct flows_partial *p = &g->partial[g->npartial++];
    snprintf(p->id, sizeof(p->id), "%s", id);
    return p;
}

/* One part of a peer's answer; true when it completed the answer. */
static bool flows_part_take(struct flows_gather *g, struct cluster_flows_reply *r)
{
    const char *why = cluster_answer_admit(&g->seen, r->replica);
    struct flows_partial *p = why == NULL ? partial_of(g, r->replica) : NULL;

    if (why == NULL && p == NULL)
        why = "more answering replicas than peers";
    else if (why == NULL && ((p->seen[r->part / 8] >> (r->part % 8)) & 1))
        why = "a part received twice";
    else if (why == NULL &&
             ((p->total != 0 && r->part >= p->total) || (r->last && p->top > r->part)))
        why = "a part past the answer's last";
    if (why != NULL) {
        answer_reject(g->c, "flows query", r->replica, why);
        return false;
    }
    p->seen[r->part / 8] |= (uint8_t)(1u << (r->part % 8));
    p->received++;
    if (r->part + 1 > p->top)
        p->top = r->part + 1;
    if (r->last)
        p->total = r->part + 1;
    if (edges_merge(&p->edges, &r->edges) < 0)
        g->error = -ENOMEM;
    if (p->received != p->total)
        return false;
    cluster_answer_record(&g->seen, r->replica);
    p->whole = true;
    return true;
}

static enum answer on_flows_reply(void *ctx, natsMsg *m)
{
    struct flows_gather *g = ctx;
    int len = natsMsg_GetDataLength(m);
    struct cluster_flows_reply r;
    enum answer a;

    if (len <= 0)
        return ANSWER_NONE; /* e.g. an empty "no responders" status message */
    int rc = cluster_reply_flows_decode(natsMsg_GetData(m), (size_t)len, &r);
    if (rc == 0 && r.error == NULL) {
        a = flows_part_take(g, &r) ? ANSWER_FULL : ANSWER_NONE;
    } else {
        /* An error stands for the whole answer, parts sent before it included. */
        a = answer_take(g->c, &g->seen, "flows query", "not a flows answer", rc, r.replica,
                        r.error);
        if (a == ANSWER_FULL)
            a = ANSWER_FAILED; /* -ENOMEM decoding it: nothing of it merged */
        if (rc == -ENOMEM)
            g->error = -ENOMEM;
    }
    cluster_flows_reply_free(&r);
    return a;
}

static int partial_id_cmp(const void *a, const void *b)
{
    return strcmp(((const struct flows_partial *)a)->id, ((const struct flows_partial *)b)->id);
}

/*
 * Adds every whole share, this replica's (mine, unless NULL) and the peers', into out in the
 * order of their replicas' ids: an edge holds a few failure causes by name and counts the rest
 * as "other", the first ones added taking the names, so the order must not depend on which
 * replica was asked or which peer answered first.
 */
static int flows_merge_all(struct flows_gather *g, const char *my_id, struct flows_result *mine)
{
    bool mine_added = mine == NULL;
    int rc = 0;

    if (g->npartial > 1)
        qsort(g->partial, g->npartial, sizeof(*g->partial), partial_id_cmp);
    for (size_t i = 0; i <= g->npartial && rc == 0; i++) {
        const struct flows_partial *p = i < g->npartial ? &g->partial[i] : NULL;
        if (!mine_added && (p == NULL || strcmp(my_id, p->id) < 0)) {
            if (g->out->count == 0) { /* the first: taken as it is, not copied */
                flows_result_free(g->out);
                *g->out = *mine;
                memset(mine, 0, sizeof(*mine));
            } else {
                rc = edges_merge(g->out, mine);
            }
            mine_added = true;
        }
        if (p != NULL && p->whole && rc == 0)
            rc = edges_merge(g->out, &p->edges);
    }
    return rc;
}

int cluster_flows(struct cluster *c, const char *qs, size_t qslen, const struct flows_query *q,
                  struct flows_result *out, unsigned *answered, unsigned *expected)
{
    struct flows_result mine = {0};
    struct flows_gather g = {.c = c, .out = out};
    unsigned peers = cluster_expected(c) - 1;
    struct gather_op op = {0};
    unsigned got = 0;
    int rc;

    /* The peers first: they answer while this replica reads its own edges. */
    answers_init(c, &g.seen);
    if (peers > 0) {
        struct buf req;
        buf_init(&req);
        buf_puts(&req, "{\"replica\":");
        buf_json_cstr(&req, c->a->replica);
        buf_puts(&req, ",\"query\":");
        buf_json_string(&req, qs, qslen);
        /* JSON integers are signed 64-bit to the peers' parser: a window reaching past 2262
         * (the API takes times up to 2554) is the same window cut there, as nothing is later. */
        buf_printf(&req, ",\"since\":%" PRIu64 ",\"until\":%" PRIu64 "}",
                   q->since_ns < INT64_MAX ? q->since_ns : (uint64_t)INT64_MAX,
                   q->until_ns < INT64_MAX ? q->until_ns : (uint64_t)INT64_MAX);
        if (!req.oom)
            gather_start(c, &op, c->subj_flows, req.data, req.len, peers);
        buf_free(&req);
    }
    /* Leaving, its minutes are on their way to the peers, which count them: its own share is
     * not added again, and the answer says it is partial (this replica did not answer). */
    bool left = has_left(c);
    memset(out, 0, sizeof(*out));
    rc = left ? 0 : flows_query(c->a->flows, q, &mine);
    if (rc == 0) {
        got = gather_finish(c, &op, on_flows_reply, &g);
        rc = g.error;
    } else {
        gather_cancel(c, &op);
    }
    /* Answers not whole by the deadline count as missing (the reply says partial). */
    if (rc == 0)
        rc = flows_merge_all(&g, c->a->replica, left ? NULL : &mine);
    flows_result_free(&mine);
    for (size_t i = 0; i < g.npartial; i++)
        flows_result_free(&g.partial[i].edges);
    free(g.partial);
    flows_result_finish(out, q->status, q->limit);
    *answered = (left ? 0 : 1) + got;
    *expected = 1 + peers > *answered ? 1 + peers : *answered;
    return rc;
}

struct flows_emit {
    natsConnection *nc;
    const char *reply;
};

static int flows_publish(void *ctx, const struct buf *part)
{
    struct flows_emit *to = ctx;
    return natsConnection_Publish(to->nc, to->reply, part->data, (int)part->len) == NATS_OK ? 0
                                                                                            : -EIO;
}

static void handle_flows(struct cluster *c, natsConnection *nc, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    json_t *qv = json_object_get(root, "query");
    json_t *since = json_object_get(root, "since"), *until = json_object_get(root, "until");
    int64_t max = natsConnection_GetMaxPayload(nc);
    struct flows_result r = {0};
    struct flows_query q;
    char err[256];

    if (reply == NULL || reply[0] == '\0' || id == NULL || !json_is_string(qv) ||
        !json_is_integer(since) || !json_is_integer(until) || json_integer_value(since) < 0 ||
        json_integer_value(until) < json_integer_value(since) || strcmp(id, c->a->replica) == 0 ||
        has_left(c)) /* leaving: its minutes are going to the peers, which count them */
        goto done;
    struct flows_emit to = {.nc = nc, .reply = reply};
    const char *error = NULL;
    /* The requester's window, already resolved: now is its until (an until left out of the
     * query string must not read as 0 here). */
    if (flows_query_parse(&q, json_string_value(qv), json_string_length(qv),
                          (uint64_t)json_integer_value(until), err, sizeof(err)) < 0) {
        error = err;
    } else {
        q.since_ns = (uint64_t)json_integer_value(since);
        q.until_ns = (uint64_t)json_integer_value(until);
        if (flows_query(c->a->flows, &q, &r) < 0)
            error = "out of memory running the query";
    }
    cluster_reply_flows_encode(c->a->replica, &r, error, max, flows_publish, &to);
done:
    flows_result_free(&r);
    json_decref(root);
}

static void on_flows(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_flows(c, nc, msg));
}

/* ---- stats ---- */

void cluster_stats_json(struct aggregator *a, struct buf *out)
{
    struct bus_status bs = {0};

    bus_get_status(a->bus, &bs);
    buf_puts(out, "{\"replica\":");
    buf_json_cstr(out, a->replica);
    buf_printf(out, ",\"connected\":%s,\"counters\":", bs.connected ? "true" : "false");
    ingest_counters_json(a, out);
    buf_puts(out, ",\"nodes\":");
    nodes_to_json(a->nodes, out);
    buf_putc(out, '}');
}

static void handle_stats(struct cluster *c, natsConnection *nc, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    struct buf out;

    buf_init(&out);
    if (reply == NULL || reply[0] == '\0' || id == NULL || strcmp(id, c->a->replica) == 0 ||
        has_left(c))
        goto done;
    cluster_stats_json(c->a, &out);
    int64_t max = natsConnection_GetMaxPayload(nc);
    if (max > 0 && out.len > (uint64_t)max) {
        /* Say so rather than stay silent: the requester reports it. */
        cluster_reply_stats_too_large(c->a->replica, max, &out);
    }
    if (!out.oom) {
        natsConnection_Publish(nc, reply, out.data, (int)out.len); /* sent at once */
    }
done:
    buf_free(&out);
    json_decref(root);
}

static void on_stats(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_stats(c, nc, msg));
}

/* The peers' answers to one stats request, checked. */
struct stats_gather {
    struct cluster *c;
    struct cluster_stats *out;
    struct nodes *nodes; /* the accepted answers' node tables are merged here */
    struct cluster_answers seen;
};

static enum answer on_stats_reply(void *ctx, natsMsg *m)
{
    struct stats_gather *g = ctx;
    int len = natsMsg_GetDataLength(m);
    json_t *root;
    const char *why;

    if (len <= 0)
        return ANSWER_NONE; /* e.g. an empty "no responders" status message */
    root = cluster_reply_stats_decode(natsMsg_GetData(m), (size_t)len);
    why = cluster_stats_take(&g->seen, g->nodes, root, g->out);
    if (why != NULL)
        answer_reject(g->c, "stats", json_string_value(json_object_get(root, "replica")), why);
    json_decref(root);
    return why == NULL ? ANSWER_FULL : ANSWER_NONE;
}

int cluster_gather_stats(struct cluster *c, struct nodes *nodes, struct cluster_stats *out)
{
    unsigned peers = cluster_expected(c) - 1;
    unsigned answered = 0;

    memset(out, 0, sizeof(*out));
    if (peers > 0) {
        struct stats_gather *g = calloc(1, sizeof(*g)); /* the answer set is 4 KiB */
        char req[64];
        int n = snprintf(req, sizeof(req), "{\"replica\":\"%s\"}", c->a->replica);
        if (g != NULL) {
            g->c = c;
            g->out = out;
            g->nodes = nodes;
            answers_init(c, &g->seen);
            answered = gather(c, c->subj_stats, req, (size_t)n, peers, on_stats_reply, g);
        }
        free(g);
    }
    out->answered = 1 + answered;
    out->expected = 1 + peers;
    if (out->expected < out->answered)
        out->expected = out->answered;
    return 0;
}

/* ---- lifecycle ---- */

/* Destroys the subscriptions, each after its last callback returned (cluster_free()). */
static bool cluster_unsubscribe(struct cluster *c)
{
    natsSubscription **subs[CLUSTER_SUBS] = {&c->hb_sub,    &c->query_sub, &c->stats_sub,
                                             &c->flows_sub, &c->reply_sub, &c->handover_sub};
    bool stopped = true;

    for (size_t i = 0; i < CLUSTER_SUBS; i++) {
        stopped &= aggregator_sub_close(*subs[i], bus_conn(c->bus), false, CLUSTER_CLOSE_WAIT_MS,
                                        &c->gate);
        *subs[i] = NULL;
    }
    return stopped;
}

/*
 * The replicas' control subjects and this replica's inbox, on the bus's
 * current connection. Subscriptions of an earlier, closed connection are
 * destroyed once the new ones are made.
 */
static natsStatus cluster_subscribe(struct cluster *c)
{
    natsConnection *nc = bus_conn(c->bus);
    natsSubscription *old[CLUSTER_SUBS] = {c->hb_sub,    c->query_sub, c->stats_sub,
                                           c->flows_sub, c->reply_sub, c->handover_sub};
    natsSubscription *sub[CLUSTER_SUBS] = {NULL};
    char inbox[sizeof(c->reply_prefix) + 2];
    natsStatus s;

    snprintf(inbox, sizeof(inbox), "%s.*", c->reply_prefix);
    s = natsConnection_Subscribe(&sub[0], nc, c->subj_heartbeat, on_heartbeat, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&sub[1], nc, c->subj_query, on_query, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&sub[2], nc, c->subj_stats, on_stats, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&sub[3], nc, c->subj_flows, on_flows, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&sub[4], nc, inbox, on_reply, c);
    /* Bounded by the peers' answers; never drop one for being large. */
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub[4], -1, -1);
    /* One replica takes a leaving one's node table: the others would count it again. */
    if (s == NATS_OK)
        s = natsConnection_QueueSubscribe(&sub[5], nc, c->subj_handover, "handover", on_handover,
                                          c);
    c->hb_sub = sub[0];
    c->query_sub = sub[1];
    c->stats_sub = sub[2];
    c->flows_sub = sub[3];
    __atomic_store_n(&c->reply_sub, sub[4], __ATOMIC_RELEASE); /* gather_start() reads it */
    c->handover_sub = sub[5];
    for (size_t i = 0; i < CLUSTER_SUBS; i++)
        natsSubscription_Destroy(old[i]);
    /* Listening before announcing, so the peers' immediate answers are not missed. */
    if (s == NATS_OK && connected(c))
        natsConnection_FlushTimeout(nc, CLUSTER_SUBSCRIBE_FLUSH_MS);
    return s;
}

/* bus_set_renew(): the bus replaced a connection nats.c closed for good. */
static void cluster_renew(void *ctx)
{
    struct cluster *c = ctx;
    natsStatus s = cluster_subscribe(c);

    /* Refused again already: the bus says so, and calls this again with its next one. */
    if (s != NATS_OK && !natsConnection_IsClosed(bus_conn(c->bus)))
        fprintf(stderr,
                "ebpf-aggregator: on the new NATS connection: subscribing to %s.%s.*: %s; made "
                "again with the next one\n",
                c->a->cfg.control_subject, c->a->cfg.queue_group, natsStatus_GetText(s));
}

struct cluster *cluster_new(struct aggregator *a, char *err, size_t errlen)
{
    struct cluster *c = calloc(1, sizeof(*c));
    natsStatus s;

    if (c == NULL) {
        errmsg_set(err, errlen, "out of memory");
        return NULL;
    }
    c->a = a;
    char name[96];
    snprintf(name, sizeof(name), "ebpf-aggregator/%s/control", a->replica);
    struct bus_options bo = {.name = name, .no_echo = true, .send_asap = true, .label = "control"};
    if (!(c->bus = bus_open_opts(&a->cfg, &bo, err, errlen))) {
        free(c);
        return NULL;
    }
    c->timeout_ms = a->cfg.query_timeout_ns / 1000000;
    snprintf(c->subj_heartbeat, sizeof(c->subj_heartbeat), "%s.%s.heartbeat",
             a->cfg.control_subject, a->cfg.queue_group);
    snprintf(c->subj_query, sizeof(c->subj_query), "%s.%s.query", a->cfg.control_subject,
             a->cfg.queue_group);
    snprintf(c->subj_stats, sizeof(c->subj_stats), "%s.%s.stats", a->cfg.control_subject,
             a->cfg.queue_group);
    snprintf(c->subj_flows, sizeof(c->subj_flows), "%s.%s.flows", a->cfg.control_subject,
             a->cfg.queue_group);
    snprintf(c->subj_handover, sizeof(c->subj_handover), "%s.%s.handover", a->cfg.control_subject,
             a->cfg.queue_group);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->reply_lock, NULL);
    pthread_mutex_init(&c->gate.lock, NULL);
    pthread_cond_init(&c->gate.idle, NULL);
    clock_cond_init(&c->wake);

    natsInbox *inbox = NULL;
    s = natsInbox_Create(&inbox);
    bool reply_prefix_made = s == NATS_OK;
    if (reply_prefix_made)
        snprintf(c->reply_prefix, sizeof(c->reply_prefix), "%s", inbox);
    natsInbox_Destroy(inbox);
    if (s == NATS_OK)
        s = cluster_subscribe(c);
    /* Refused already (nats.c closed the connection): made again on the bus's next one. */
    if (s != NATS_OK && reply_prefix_made && natsConnection_IsClosed(bus_conn(c->bus)))
        s = NATS_OK;
    if (s != NATS_OK) {
        errmsg_set(err, errlen, "subscribing to %s.%s.*: %s", a->cfg.control_subject,
                   a->cfg.queue_group, natsStatus_GetText(s));
        cluster_free(c);
        return NULL;
    }
    bus_set_renew(c->bus, cluster_renew, c);
    if (pthread_create(&c->thread, NULL, cluster_main, c) != 0) {
        errmsg_set(err, errlen, "cannot start the cluster thread");
        cluster_free(c);
        return NULL;
    }
    c->thread_started = true;
    return c;
}

static void stop_thread(struct cluster *c)
{
    if (!c->thread_started)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    c->thread_started = false;
}

/*
 * Hands this replica's node table to one peer (the handover queue group picks
 * it), which merges it into its own: the batches this replica received still
 * count as received, instead of leaving gaps the cluster would call lost. A
 * peer that is leaving too declines, and another is asked. Without a peer
 * there is no one to keep them; a table larger than a message is not sent
 * (the stats answer has the same bound). Logs what happened.
 */
/* What leaving without handing the node table over costs, in the log. */
static void say_not_handed_over(struct cluster *c, const char *why, uint64_t flows_left)
{
    struct store_stats ss;

    store_get_stats(c->a->store, &ss);
    fprintf(stderr,
            "ebpf-aggregator: node table not handed over (%s): the %" PRIu64
            " events of this replica's history and its %" PRIu64
            " flow buckets not handed over leave uncounted, and the batches it received count "
            "as lost on the replicas that remain, if any\n",
            why, ss.events, flows_left);
}

/* The flow buckets this replica holds. */
static uint64_t flow_minutes(struct cluster *c)
{
    struct flows_stats fs;
    flows_get_stats(c->a->flows, &fs);
    return fs.edge_minutes;
}

/* Whether a handover request (node table or flows) was taken: its reply says so. */
static bool handover_taken(natsMsg *reply, char *to, size_t tolen)
{
    json_t *root =
        json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    bool taken = json_is_true(json_object_get(root, "taken"));
    snprintf(to, tolen, "%s", id != NULL ? id : "?");
    json_decref(root);
    return taken;
}

/*
 * Hands this replica's flow minutes to the replicas that remain, a chunk at a time (any of
 * them may take any chunk: /api/flows merges every replica's share), within
 * CLUSTER_FLOWS_HANDOVER_MS. Returns the minutes that leave with this replica.
 */
static uint64_t hand_over_flows(struct cluster *c)
{
    struct flows_handover_chunk *chunks = NULL;
    size_t n = 0, sent = 0, chunk = CLUSTER_FLOWS_CHUNK;
    uint64_t left = 0, handed = 0;
    int64_t max = natsConnection_GetMaxPayload(bus_conn(c->bus));
    char to[CLUSTER_SUBJECT_LEN];

    if (max > 0 && (uint64_t)max < chunk + 4096)
        chunk = max > 8192 ? (size_t)max - 4096 : 4096;
    if (flows_handover_encode(c->a->flows, chunk, CLUSTER_FLOWS_HANDOVER_MAX, &chunks, &n, &left) <
        0)
        fprintf(stderr, "ebpf-aggregator: flow minutes to hand over: out of memory\n");
    uint64_t deadline = mono_ms() + CLUSTER_FLOWS_HANDOVER_MS;
    for (bool alone = false; sent < n && !alone && mono_ms() < deadline; sent++) {
        bool taken = false;
        for (int attempt = 0; !taken && !alone && attempt < CLUSTER_HANDOVER_TRIES; attempt++) {
            natsMsg *req = NULL, *reply = NULL;
            natsStatus s = natsMsg_Create(&req, c->subj_handover, NULL, chunks[sent].json.data,
                                          (int)chunks[sent].json.len);
            char sent_at[24];
            snprintf(sent_at, sizeof(sent_at), "%" PRIu64, clock_realtime_ns());
            if (s == NATS_OK)
                s = natsMsgHeader_Set(req, CLUSTER_HDR_HANDOVER, "flows");
            if (s == NATS_OK)
                s = natsMsgHeader_Set(req, CLUSTER_HDR_SENT, sent_at);
            /* Waits no longer than a taker may take it: one that answers later declined. */
            if (s == NATS_OK)
                s = natsConnection_RequestMsg(&reply, bus_conn(c->bus), req,
                                              CLUSTER_HANDOVER_FRESH_MS);
            natsMsg_Destroy(req);
            alone = s == NATS_NO_RESPONDERS;
            taken = s == NATS_OK && handover_taken(reply, to, sizeof(to));
            natsMsg_Destroy(reply);
        }
        if (taken)
            handed += chunks[sent].minutes;
        else
            left += chunks[sent].minutes; /* the next one may find a replica that answers */
    }
    for (size_t i = sent; i < n; i++)
        left += chunks[i].minutes;
    if (handed > 0 || left > 0)
        fprintf(stderr,
                "ebpf-aggregator: %" PRIu64 " flow buckets handed over to the replicas that "
                "remain; %" PRIu64 " leave with this one\n",
                handed, left);
    flows_handover_free(chunks, n);
    return left;
}

static void hand_over_nodes(struct cluster *c, uint64_t flows_left)
{
    struct buf table;
    int64_t max = natsConnection_GetMaxPayload(bus_conn(c->bus));

    buf_init(&table);
    nodes_to_json(c->a->nodes, &table);
    if (table.oom || (max > 0 && table.len > (uint64_t)max)) {
        fprintf(stderr,
                "ebpf-aggregator: node table (%zu bytes) not handed over: larger than a NATS "
                "message; its batches will count as lost\n",
                table.len);
        buf_free(&table);
        return;
    }
    /* What leaves with this replica: its history and the flows it could not hand over, counted
     * by the peer that takes the table. */
    struct store_stats ss;
    char held[24], minutes[24];
    store_get_stats(c->a->store, &ss);
    snprintf(held, sizeof(held), "%" PRIu64, ss.events);
    snprintf(minutes, sizeof(minutes), "%" PRIu64, flows_left);
    struct buf counters;
    buf_init(&counters);
    ingest_counters_carry_json(c->a, &counters);
    bool alone = false;
    for (int attempt = 0; attempt < CLUSTER_HANDOVER_TRIES; attempt++) {
        natsMsg *reply = NULL, *req = NULL;
        natsStatus s = natsMsg_Create(&req, c->subj_handover, NULL, table.data, (int)table.len);
        char sent_at[24];
        snprintf(sent_at, sizeof(sent_at), "%" PRIu64, clock_realtime_ns());
        if (s == NATS_OK)
            s = natsMsgHeader_Set(req, CLUSTER_HDR_SENT, sent_at);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(req, CLUSTER_HDR_HISTORY_EVENTS, held);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(req, CLUSTER_HDR_FLOW_MINUTES, minutes);
        if (s == NATS_OK && !counters.oom)
            s = natsMsgHeader_Set(req, CLUSTER_HDR_COUNTERS, counters.data);
        if (s == NATS_OK)
            s = natsConnection_RequestMsg(&reply, bus_conn(c->bus), req, CLUSTER_HANDOVER_WAIT_MS);
        natsMsg_Destroy(req);
        if (s == NATS_NO_RESPONDERS) {
            alone = true; /* the last replica: nobody to keep the counts */
            break;
        }
        if (s != NATS_OK)
            continue;
        char to[CLUSTER_SUBJECT_LEN];
        bool taken = handover_taken(reply, to, sizeof(to));
        natsMsg_Destroy(reply);
        if (taken) {
            fprintf(stderr, "ebpf-aggregator: node table handed over to replica %s\n", to);
            buf_free(&counters);
            buf_free(&table);
            return;
        }
    }
    say_not_handed_over(c, alone ? "no other replica is listening" : "no replica took it",
                        flows_left);
    buf_free(&counters);
    buf_free(&table);
}

/* Adds the count in msg's header name (decimal digits only; anything else adds nothing) to *v. */
static void header_count(natsMsg *msg, const char *name, uint64_t *v)
{
    const char *text = NULL;
    char *end = NULL;
    if (natsMsgHeader_Get(msg, name, &text) != NATS_OK || !text || *text < '0' || *text > '9')
        return;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno == 0 && *end == '\0')
        counter_add(v, n);
}

/* Whether a handover request sent at sent_at (its Ebpf-Sent-At) is younger than
 * CLUSTER_HANDOVER_FRESH_MS: the leaver still waits for its answer. */
static bool handover_fresh(uint64_t sent_at)
{
    uint64_t now = clock_realtime_ns();
    return sent_at >= now || (now - sent_at) / 1000000 < CLUSTER_HANDOVER_FRESH_MS;
}

/*
 * A leaving peer's node table: merged into this replica's, unless it is leaving too, or the
 * request is stale (this replica was stopped, then resumed): the leaver stopped waiting after
 * CLUSTER_HANDOVER_WAIT_MS and handed it to another, so merging it too would count its batches
 * twice and hide lost ones. A table without Ebpf-Sent-At (a leaver of an earlier version) is
 * taken.
 */
static void handle_handover(struct cluster *c, natsConnection *nc, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    bool taken = false;
    uint64_t sent_at = 0;

    if (reply == NULL || reply[0] == '\0')
        return;
    header_count(msg, CLUSTER_HDR_SENT, &sent_at);
    const char *kind = NULL;
    if (natsMsgHeader_Get(msg, CLUSTER_HDR_HANDOVER, &kind) == NATS_OK && kind &&
        strcmp(kind, "flows") == 0) {
        /* A chunk of its flow minutes: they go on being counted here, unless the leaver has
         * stopped waiting for this one (it went elsewhere, or counts as departed). */
        uint64_t merged = 0;
        if (!has_left(c) && sent_at > 0 && handover_fresh(sent_at)) {
            int rc = flows_handover_merge(c->a->flows, natsMsg_GetData(msg),
                                          (size_t)natsMsg_GetDataLength(msg), clock_realtime_ns(),
                                          &merged);
            taken = rc != -EINVAL; /* -ENOMEM: what fitted, the rest counted as failed */
            if (rc == -EINVAL)
                __atomic_fetch_add(&c->invalid_answers, 1, __ATOMIC_RELAXED);
        }
        char body[128];
        int n = snprintf(body, sizeof(body),
                         "{\"replica\":\"%s\",\"taken\":%s,\"minutes\":%" PRIu64 "}", c->a->replica,
                         taken ? "true" : "false", merged);
        natsConnection_Publish(nc, reply, body, n);
        return;
    }
    if (!has_left(c) && (sent_at == 0 || handover_fresh(sent_at))) {
        int rc =
            nodes_merge_json(c->a->nodes, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
        taken = rc == 0;
        if (rc == -EINVAL)
            __atomic_fetch_add(&c->invalid_answers, 1, __ATOMIC_RELAXED);
        if (taken) {
            header_count(msg, CLUSTER_HDR_HISTORY_EVENTS, &c->a->counters.history_departed);
            header_count(msg, CLUSTER_HDR_FLOW_MINUTES, &c->a->counters.flows_departed);
        }
        /* Its counters go on here: a rolling restart loses none of them. */
        const char *carried = NULL;
        if (taken && natsMsgHeader_Get(msg, CLUSTER_HDR_COUNTERS, &carried) == NATS_OK && carried) {
            json_t *from = json_loads(carried, 0, NULL);
            ingest_counters_inherit(c->a, from);
            json_decref(from);
        }
    }
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"replica\":\"%s\",\"taken\":%s}", c->a->replica,
                     taken ? "true" : "false");
    natsConnection_Publish(nc, reply, body, n);
}

static void on_handover(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_handover(c, nc, msg));
}

void cluster_leave(struct cluster *c)
{
    if (c == NULL)
        return;
    stop_thread(c);
    pthread_mutex_lock(&c->lock);
    c->left = true;
    pthread_mutex_unlock(&c->lock);
    if (connected(c)) {
        /* What this replica holds goes to the others only: none of it comes back here. */
        aggregator_sub_close(c->handover_sub, bus_conn(c->bus), false, CLUSTER_CLOSE_WAIT_MS, NULL);
        c->handover_sub = NULL;
        hand_over_nodes(c, hand_over_flows(c));
        publish_heartbeat(c, true);
        natsConnection_FlushTimeout(bus_conn(c->bus), CLUSTER_LEAVE_FLUSH_MS);
    } else {
        say_not_handed_over(c, "NATS not connected", flow_minutes(c));
    }
}

void cluster_free(struct cluster *c)
{
    if (c == NULL)
        return;
    bus_set_renew(c->bus, NULL, NULL); /* no new subscriptions from here */
    stop_thread(c);
    /* Waits for a callback still running, which uses c. */
    bool stopped = cluster_unsubscribe(c);
    /* From here no callback touches the store, the nodes or the bus, stopped or not. */
    aggregator_gate_close(&c->gate);
    if (!stopped) {
        /* A callback may still be scheduled, and it reads c->gate: keep c. */
        fprintf(stderr, "ebpf-aggregator: leaving the cluster state allocated\n");
        return;
    }
    bus_close(c->bus);
    pthread_cond_destroy(&c->gate.idle);
    pthread_mutex_destroy(&c->gate.lock);
    pthread_cond_destroy(&c->wake);
    pthread_mutex_destroy(&c->reply_lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

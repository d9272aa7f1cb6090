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
#include <time.h>

#include "aggregator.h"
#include "api.h"
#include "event_pb.h"

#define CLUSTER_MAX_PEERS          256
#define CLUSTER_DEFAULT_PAYLOAD    (1 << 20)
#define CLUSTER_PAYLOAD_OVERHEAD   1024 /* room left for the protocol around a reply */
#define CLUSTER_SUBJECT_LEN        (2 * CONFIG_STR + 16)
#define CLUSTER_LEAVE_FLUSH_MS     1000
#define CLUSTER_SUBSCRIBE_FLUSH_MS 1000
#define CLUSTER_CLOSE_WAIT_MS      2000
#define CLUSTER_COUNTERS_MAX_KEYS  256 /* per object of a stats answer's counters */
#define CLUSTER_COUNTERS_MAX_DEPTH 3
#define CLUSTER_KEY_MAX            64  /* bytes of a counter's name */
#define CLUSTER_ERROR_MAX          512 /* bytes of a peer's error message */
/* Replies one gather holds undecoded: far above what peers send, a bound for a flood. */
#define CLUSTER_QUEUE_MAX_MSGS  4096
#define CLUSTER_QUEUE_MAX_BYTES (256u << 20)

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
    natsConnection *nc;
    uint64_t timeout_ms; /* QUERY_TIMEOUT */
    char subj_heartbeat[CLUSTER_SUBJECT_LEN];
    char subj_query[CLUSTER_SUBJECT_LEN];
    char subj_stats[CLUSTER_SUBJECT_LEN];
    natsSubscription *hb_sub, *query_sub, *stats_sub, *reply_sub;
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
    return api_monotonic_ns() / 1000000;
}

static bool valid_replica_id(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= AGGREGATOR_REPLICA_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

static bool connected(struct cluster *c)
{
    return natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- membership ---- */

static void publish_heartbeat(struct cluster *c, bool leaving)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"replica\":\"%s\",\"leaving\":%s}", c->a->replica,
                     leaving ? "true" : "false");
    natsConnection_Publish(c->nc, c->subj_heartbeat, body, n);
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
    bool joined = false;

    if (id == NULL || !valid_replica_id(id) || strcmp(id, c->a->replica) == 0)
        goto out;
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

static void prune_peers(struct cluster *c)
{
    uint64_t now = mono_ms();

    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->npeers;) {
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
    struct timespec ts;

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
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)CLUSTER_HEARTBEAT_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&c->wake, &c->lock, &ts);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* ---- scatter-gather ---- */

/* The replicas whose answer one gather has counted. */
struct answer_set {
    char ids[CLUSTER_MAX_PEERS][AGGREGATOR_REPLICA_ID_LEN];
    size_t n;
};

static bool peer_live(struct cluster *c, const char *id)
{
    pthread_mutex_lock(&c->lock);
    bool live = peer_find(c, id) >= 0;
    pthread_mutex_unlock(&c->lock);
    return live;
}

/*
 * Whether an answer in id's name may count: a live peer's, and its first in
 * this gather (more would stand in for a peer not heard yet). NULL, or why not.
 */
static const char *answer_admit(struct cluster *c, const struct answer_set *seen, const char *id)
{
    if (id == NULL || !valid_replica_id(id))
        return "no valid replica id";
    if (strcmp(id, c->a->replica) == 0)
        return "sent in this replica's name";
    for (size_t i = 0; i < seen->n; i++)
        if (strcmp(seen->ids[i], id) == 0)
            return "a second answer from one replica";
    if (!peer_live(c, id))
        return "not from a live peer";
    return NULL;
}

static void answer_record(struct answer_set *seen, const char *id)
{
    if (seen->n < CLUSTER_MAX_PEERS)
        snprintf(seen->ids[seen->n++], sizeof(seen->ids[0]), "%s", id);
}

/* Counts a rejected answer; logged once and then every 1000th, so a flood cannot fill logs. */
static void answer_reject(struct cluster *c, const char *kind, const char *id, const char *why)
{
    uint64_t n = __atomic_add_fetch(&c->invalid_answers, 1, __ATOMIC_RELAXED);

    if (n == 1 || n % 1000 == 0)
        fprintf(stderr,
                "ebpf-aggregator: ignored a %s answer from %s: %s (%" PRIu64 " invalid so far)\n",
                kind, id != NULL && valid_replica_id(id) ? id : "an unknown sender", why, n);
}

uint64_t cluster_invalid_answers(struct cluster *c)
{
    return c != NULL ? __atomic_load_n(&c->invalid_answers, __ATOMIC_RELAXED) : 0;
}

/* Handles one reply; returns true when it counts as an answer. */
typedef bool (*gather_reply_fn)(void *ctx, natsMsg *m);

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
 * Publishes req on subject with a reply subject of its own and collects up
 * to want answers until the deadline. Returns the number of answers.
 */
static unsigned gather(struct cluster *c, const char *subject, const char *req, size_t len,
                       unsigned want, gather_reply_fn fn, void *ctx)
{
    struct reply_waiter w = {0}, **pp;
    char reply[sizeof(c->reply_prefix) + 24];
    pthread_condattr_t ca;
    unsigned got = 0;
    natsStatus s;

    if (want == 0 || c->reply_sub == NULL || !connected(c))
        return 0;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&c->reply_lock);
    w.token = ++c->next_token;
    w.next = c->waiters;
    c->waiters = &w;
    pthread_mutex_unlock(&c->reply_lock);
    snprintf(reply, sizeof(reply), "%s.%" PRIu64, c->reply_prefix, w.token);

    s = natsConnection_PublishRequest(c->nc, subject, reply, req, (int)len);
    /* Push the request out now rather than on nats.c's next flush (~1 ms later). */
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(c->nc, c->timeout_ms);
    uint64_t deadline = mono_ms() + c->timeout_ms;
    pthread_mutex_lock(&c->reply_lock);
    while (s == NATS_OK && got < want) {
        if (w.nmsgs > 0) {
            natsMsg *m = w.msgs[--w.nmsgs];
            w.bytes -= (size_t)natsMsg_GetDataLength(m);
            /* Decode without the lock: the delivery thread keeps queueing. */
            pthread_mutex_unlock(&c->reply_lock);
            if (fn(ctx, m))
                got++;
            natsMsg_Destroy(m);
            pthread_mutex_lock(&c->reply_lock);
            continue;
        }
        uint64_t now = mono_ms();
        if (now >= deadline)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait_ns = (deadline - now) * 1000000ull;
        ts.tv_sec += (time_t)(wait_ns / 1000000000ull);
        ts.tv_nsec += (long)(wait_ns % 1000000000ull);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w.cond, &c->reply_lock, &ts);
    }
    for (pp = &c->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    }
    pthread_mutex_unlock(&c->reply_lock);
    for (size_t i = 0; i < w.nmsgs; i++)
        natsMsg_Destroy(w.msgs[i]);
    free(w.msgs);
    pthread_cond_destroy(&w.cond);
    return got;
}

/* ---- events ---- */

static int cmp_events(const void *pa, const void *pb)
{
    const struct event *a = pa, *b = pb;
    return query_cmp_newest_first(a->timestamp_ns, a->id, b->timestamp_ns, b->id);
}

int cluster_merge(struct cluster_source *src, size_t nsrc, uint32_t limit,
                  struct cluster_events *out)
{
    size_t total = 0, k = 0, i;
    uint64_t total_count = 0;
    bool any_more = false, has_bound = false;
    struct query_cursor bound = {0};
    struct event *all = NULL;

    out->events = NULL;
    out->count = 0;
    out->has_next = false;
    if (limit == 0)
        limit = QUERY_LIMIT_DEFAULT;
    for (size_t s = 0; s < nsrc; s++) {
        total += src[s].count;
        /* Saturating: a peer may claim any count. */
        uint64_t tc = src[s].total_count < INT64_MAX ? src[s].total_count : INT64_MAX;
        total_count = total_count > INT64_MAX - tc ? INT64_MAX : total_count + tc;
        if (!src[s].has_more)
            continue;
        any_more = true;
        if (src[s].count == 0)
            continue;
        /* The newest "last event" of the sources that hold more bounds the page. */
        const struct event *last = &src[s].events[src[s].count - 1];
        if (!has_bound || query_cmp_newest_first(last->timestamp_ns, last->id, bound.timestamp_ns,
                                                 bound.id) < 0) {
            bound.timestamp_ns = last->timestamp_ns;
            bound.id = last->id;
            has_bound = true;
        }
    }
    out->total_count = total_count;
    if (total == 0)
        return 0;

    all = malloc(total * sizeof(*all));
    out->events = malloc((total < limit ? total : limit) * sizeof(*out->events));
    if (all == NULL || out->events == NULL) {
        free(all);
        free(out->events);
        out->events = NULL;
        return -ENOMEM;
    }
    size_t n = 0;
    for (size_t s = 0; s < nsrc; s++)
        for (size_t j = 0; j < src[s].count; j++)
            event_move(&all[n++], &src[s].events[j]);
    qsort(all, total, sizeof(*all), cmp_events);

    for (i = 0; i < total && k < limit; i++) {
        const struct event *e = &all[i];
        if (k > 0 && e->timestamp_ns == out->events[k - 1].timestamp_ns &&
            e->id == out->events[k - 1].id)
            continue;
        if (has_bound &&
            query_cmp_newest_first(e->timestamp_ns, e->id, bound.timestamp_ns, bound.id) > 0)
            break;
        event_move(&out->events[k++], &all[i]);
    }
    out->count = k;
    if (k > 0 && (i < total || any_more)) {
        out->has_next = true;
        out->next_cursor.timestamp_ns = out->events[k - 1].timestamp_ns;
        out->next_cursor.id = out->events[k - 1].id;
    }
    for (size_t j = 0; j < total; j++)
        event_clear(&all[j]);
    free(all);
    return 0;
}

void cluster_events_free(struct cluster_events *e)
{
    for (size_t i = 0; i < e->count; i++)
        event_clear(&e->events[i]);
    free(e->events);
    e->events = NULL;
    e->count = 0;
}

/* The peers' answers to one query, decoded. */
struct query_gather {
    struct cluster *c;
    struct cluster_source *src;
    size_t count, cap;
    int error; /* -ENOMEM seen */
    struct answer_set seen;
};

static bool on_query_reply(void *ctx, natsMsg *m)
{
    struct query_gather *g = ctx;
    int len = natsMsg_GetDataLength(m);
    Ebpfmonitor__QueryReply *r;
    struct cluster_source s = {0};
    const char *why;
    char err[128];

    if (len <= 0)
        return false; /* not an answer (e.g. an empty "no responders" status message) */
    r = ebpfmonitor__query_reply__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m));
    if (r == NULL) {
        answer_reject(g->c, "query", NULL, "not a QueryReply");
        return false;
    }
    if ((why = answer_admit(g->c, &g->seen, r->replica)) != NULL) {
        answer_reject(g->c, "query", r->replica, why);
        ebpfmonitor__query_reply__free_unpacked(r, NULL);
        return false;
    }
    answer_record(&g->seen, r->replica);
    if (r->error != NULL && r->error[0]) {
        fprintf(stderr, "ebpf-aggregator: replica %s could not run the query: %s\n", r->replica,
                r->error);
        ebpfmonitor__query_reply__free_unpacked(r, NULL);
        return true; /* it answered; it just has nothing to add */
    }
    if (g->count == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 4;
        struct cluster_source *p = realloc(g->src, cap * sizeof(*p));
        if (p == NULL)
            goto nomem;
        g->src = p;
        g->cap = cap;
    }
    if (r->n_events > 0 && (s.events = calloc(r->n_events, sizeof(*s.events))) == NULL)
        goto nomem;
    for (size_t i = 0; i < r->n_events; i++) {
        if (event_pb_to_event(r->events[i], NULL, &s.events[s.count], err, sizeof(err)) == 0)
            s.count++;
    }
    s.total_count = r->total_count;
    s.has_more = r->has_more;
    g->src[g->count++] = s;
    ebpfmonitor__query_reply__free_unpacked(r, NULL);
    return true;
nomem:
    g->error = -ENOMEM;
    ebpfmonitor__query_reply__free_unpacked(r, NULL);
    return true;
}

int cluster_query(struct cluster *c, const char *qs, size_t qslen, const struct query *q,
                  struct cluster_events *out)
{
    struct query_gather g = {.c = c};
    struct store_result own;
    unsigned peers = cluster_expected(c) - 1;
    unsigned answered = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = store_query(c->a->store, q, &own);
    if (rc < 0) {
        store_result_free(&own);
        return rc;
    }
    if (peers > 0) {
        struct buf req;
        buf_init(&req);
        buf_puts(&req, "{\"replica\":");
        buf_json_cstr(&req, c->a->replica);
        buf_puts(&req, ",\"query\":");
        buf_json_string(&req, qs, qslen);
        buf_putc(&req, '}');
        if (!req.oom)
            answered = gather(c, c->subj_query, req.data, req.len, peers, on_query_reply, &g);
        buf_free(&req);
    }

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
    for (size_t i = 0; i < g.count; i++) {
        for (size_t j = 0; j < g.src[i].count; j++)
            event_clear(&g.src[i].events[j]);
        free(g.src[i].events);
    }
    free(g.src);
    out->answered = 1 + answered;
    out->expected = 1 + peers;
    if (out->expected < out->answered)
        out->expected = out->answered;
    return rc;
}

/* Packs this replica's answer, leaving out the oldest events while it is over max bytes. */
static void pack_query_reply(struct cluster *c, const struct store_result *r, const char *error,
                             struct buf *out)
{
    Ebpfmonitor__QueryReply m = EBPFMONITOR__QUERY_REPLY__INIT;
    size_t n = r != NULL ? r->count : 0, k = 0;
    Ebpfmonitor__Event *pbs = NULL, **ptrs = NULL;
    struct event_pb_scratch *scratch = NULL;
    int64_t max = natsConnection_GetMaxPayload(c->nc);

    if (max <= CLUSTER_PAYLOAD_OVERHEAD)
        max = CLUSTER_DEFAULT_PAYLOAD;
    max -= CLUSTER_PAYLOAD_OVERHEAD;
    m.replica = c->a->replica;
    if (error != NULL) {
        m.error = (char *)error;
        n = 0;
    }
    if (n > 0 &&
        ((pbs = calloc(n, sizeof(*pbs))) == NULL || (ptrs = calloc(n, sizeof(*ptrs))) == NULL ||
         (scratch = calloc(n, sizeof(*scratch))) == NULL)) {
        m.error = "out of memory";
        n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (event_pb_from_event(&r->events[i], NULL, &pbs[k], &scratch[k]) != 0)
            break; /* the rest is reported as "more" */
        ptrs[k] = &pbs[k];
        k++;
    }
    if (r != NULL && error == NULL) {
        m.total_count = r->total_count;
        m.has_more = r->has_next || k < r->count;
    }
    m.events = ptrs;
    m.n_events = k;
    size_t size = ebpfmonitor__query_reply__get_packed_size(&m);
    while (size > (size_t)max && m.n_events > 0) {
        m.n_events /= 2;
        m.has_more = true;
        size = ebpfmonitor__query_reply__get_packed_size(&m);
    }
    if (buf_reserve(out, size + 1)) {
        ebpfmonitor__query_reply__pack(&m, (uint8_t *)out->data);
        out->len = size;
    }
    for (size_t i = 0; i < k; i++)
        event_pb_scratch_release(&scratch[i]);
    free(scratch);
    free(ptrs);
    free(pbs);
}

/*
 * The asker is waiting: send now, not on nats.c's next flush (~1 ms later).
 * A flush is a round trip to the server, so when more requests are already
 * queued, leave it to the last of them: a burst is answered in one flush.
 */
static void flush_reply(natsConnection *nc, natsSubscription *sub)
{
    int pending = 0;

    if (natsSubscription_GetPending(sub, &pending, NULL) == NATS_OK && pending > 0)
        return;
    natsConnection_FlushTimeout(nc, 1000);
}

static void handle_query(struct cluster *c, natsConnection *nc, natsSubscription *sub, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    json_t *qv = json_object_get(root, "query");
    struct buf out;
    char err[256];
    struct query q;

    buf_init(&out);
    if (reply == NULL || reply[0] == '\0' || id == NULL || !json_is_string(qv) ||
        strcmp(id, c->a->replica) == 0)
        goto done;
    if (query_parse(&q, json_string_value(qv), json_string_length(qv), false, err, sizeof(err)) <
        0) {
        pack_query_reply(c, NULL, err, &out);
    } else {
        struct store_result r;
        if (store_query(c->a->store, &q, &r) < 0)
            pack_query_reply(c, NULL, "out of memory running the query", &out);
        else
            pack_query_reply(c, &r, NULL, &out);
        store_result_free(&r);
    }
    if (!out.oom && out.len > 0) {
        natsConnection_Publish(nc, reply, out.data, (int)out.len);
        flush_reply(nc, sub);
    }
done:
    buf_free(&out);
    json_decref(root);
}

static void on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_query(c, nc, sub, msg));
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

static void handle_stats(struct cluster *c, natsConnection *nc, natsSubscription *sub, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);
    json_t *root = json_loadb(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), 0, NULL);
    const char *id = json_string_value(json_object_get(root, "replica"));
    struct buf out;

    buf_init(&out);
    if (reply == NULL || reply[0] == '\0' || id == NULL || strcmp(id, c->a->replica) == 0)
        goto done;
    cluster_stats_json(c->a, &out);
    int64_t max = natsConnection_GetMaxPayload(nc);
    if (max > 0 && out.len > (uint64_t)max) {
        /* Say so rather than stay silent: the requester reports it. */
        buf_reset(&out);
        buf_puts(&out, "{\"replica\":");
        buf_json_cstr(&out, c->a->replica);
        buf_printf(&out, ",\"error\":\"node table over the NATS max payload (%" PRId64 " bytes)\"}",
                   max);
    }
    if (!out.oom) {
        natsConnection_Publish(nc, reply, out.data, (int)out.len);
        flush_reply(nc, sub);
    }
done:
    buf_free(&out);
    json_decref(root);
}

static void on_stats(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct cluster *c = closure;

    GATED(c, msg, handle_stats(c, nc, sub, msg));
}

/* Counters: objects of non-negative integers and reals, bounded in keys and depth. */
static bool counters_valid(json_t *o, int depth)
{
    const char *key;
    json_t *v;

    if (!json_is_object(o) || depth > CLUSTER_COUNTERS_MAX_DEPTH ||
        json_object_size(o) > CLUSTER_COUNTERS_MAX_KEYS)
        return false;
    json_object_foreach(o, key, v)
    {
        if (strlen(key) > CLUSTER_KEY_MAX)
            return false;
        if (json_is_integer(v)) {
            if (json_integer_value(v) < 0)
                return false;
        } else if (json_is_real(v)) {
            if (!(json_real_value(v) >= 0))
                return false;
        } else if (!counters_valid(v, depth + 1)) {
            return false;
        }
    }
    return true;
}

/* What is wrong with a stats answer's shape (see cluster_stats_json()), or NULL. */
static const char *stats_answer_check(json_t *root)
{
    json_t *error = json_object_get(root, "error");

    if (error != NULL)
        return json_is_string(error) && json_string_length(error) <= CLUSTER_ERROR_MAX
                   ? NULL
                   : "error is not a short string";
    if (!json_is_boolean(json_object_get(root, "connected")))
        return "connected is not true or false";
    if (!counters_valid(json_object_get(root, "counters"), 0))
        return "counters are not objects of non-negative numbers";
    if (!json_is_object(json_object_get(root, "nodes")))
        return "no node table";
    return NULL;
}

/* The peers' answers to one stats request, checked. */
struct stats_gather {
    struct cluster *c;
    struct cluster_stats *out;
    struct nodes *nodes; /* the accepted answers' node tables are merged here */
    struct answer_set seen;
};

static bool on_stats_reply(void *ctx, natsMsg *m)
{
    struct stats_gather *g = ctx;
    int len = natsMsg_GetDataLength(m);
    json_t *root;
    const char *id, *why;
    json_t **p;

    if (len <= 0)
        return false; /* not an answer (e.g. an empty "no responders" status message) */
    root = json_loadb(natsMsg_GetData(m), (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    id = json_string_value(json_object_get(root, "replica"));
    if (!json_is_object(root))
        why = "not a JSON object";
    else if ((why = answer_admit(g->c, &g->seen, id)) == NULL)
        why = stats_answer_check(root);
    if (why == NULL && json_object_get(root, "error") == NULL) {
        /* All or nothing: a malformed table changes nothing. */
        int rc = nodes_merge_value(g->nodes, json_object_get(root, "nodes"));
        if (rc == -EINVAL)
            why = "a malformed node table";
        else if (rc < 0)
            json_object_set_new(root, "error", json_string("could not merge its node table"));
    }
    if (why != NULL) {
        answer_reject(g->c, "stats", id, why);
        json_decref(root);
        return false;
    }
    answer_record(&g->seen, id);
    json_object_del(root, "nodes"); /* merged */
    p = realloc(g->out->replies, (g->out->count + 1) * sizeof(*p));
    if (p == NULL) {
        json_decref(root);
        return true;
    }
    g->out->replies = p;
    p[g->out->count++] = root;
    return true;
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

void cluster_stats_free(struct cluster_stats *s)
{
    for (size_t i = 0; i < s->count; i++)
        json_decref(s->replies[i]);
    free(s->replies);
    s->replies = NULL;
    s->count = 0;
}

/* ---- lifecycle ---- */

struct cluster *cluster_new(struct aggregator *a, char *err, size_t errlen)
{
    struct cluster *c = calloc(1, sizeof(*c));
    pthread_condattr_t ca;
    natsStatus s;

    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->a = a;
    c->nc = bus_conn(a->bus);
    c->timeout_ms = a->cfg.query_timeout_ns / 1000000;
    if (c->timeout_ms == 0)
        c->timeout_ms = 1;
    snprintf(c->subj_heartbeat, sizeof(c->subj_heartbeat), "%s.%s.heartbeat",
             a->cfg.control_subject, a->cfg.queue_group);
    snprintf(c->subj_query, sizeof(c->subj_query), "%s.%s.query", a->cfg.control_subject,
             a->cfg.queue_group);
    snprintf(c->subj_stats, sizeof(c->subj_stats), "%s.%s.stats", a->cfg.control_subject,
             a->cfg.queue_group);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->reply_lock, NULL);
    pthread_mutex_init(&c->gate.lock, NULL);
    pthread_cond_init(&c->gate.idle, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->wake, &ca);
    pthread_condattr_destroy(&ca);

    s = natsConnection_Subscribe(&c->hb_sub, c->nc, c->subj_heartbeat, on_heartbeat, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&c->query_sub, c->nc, c->subj_query, on_query, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&c->stats_sub, c->nc, c->subj_stats, on_stats, c);
    if (s == NATS_OK) {
        natsInbox *inbox = NULL;
        char subj[sizeof(c->reply_prefix) + 2];

        s = natsInbox_Create(&inbox);
        if (s == NATS_OK) {
            snprintf(c->reply_prefix, sizeof(c->reply_prefix), "%s", inbox);
            snprintf(subj, sizeof(subj), "%s.*", c->reply_prefix);
            s = natsConnection_Subscribe(&c->reply_sub, c->nc, subj, on_reply, c);
        }
        natsInbox_Destroy(inbox);
        /* Bounded by the peers' answers; never drop one for being large. */
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(c->reply_sub, -1, -1);
    }
    if (s != NATS_OK) {
        snprintf(err, errlen, "subscribing to %s.%s.*: %s", a->cfg.control_subject,
                 a->cfg.queue_group, natsStatus_GetText(s));
        cluster_free(c);
        return NULL;
    }
    /* Listening before announcing, so the peers' immediate answers are not missed. */
    if (connected(c))
        natsConnection_FlushTimeout(c->nc, CLUSTER_SUBSCRIBE_FLUSH_MS);
    if (pthread_create(&c->thread, NULL, cluster_main, c) != 0) {
        snprintf(err, errlen, "cannot start the cluster thread");
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

void cluster_leave(struct cluster *c)
{
    if (c == NULL)
        return;
    stop_thread(c);
    pthread_mutex_lock(&c->lock);
    c->left = true;
    pthread_mutex_unlock(&c->lock);
    if (connected(c)) {
        publish_heartbeat(c, true);
        natsConnection_FlushTimeout(c->nc, CLUSTER_LEAVE_FLUSH_MS);
    }
}

void cluster_free(struct cluster *c)
{
    natsSubscription *subs[4];
    bool stopped = true;

    if (c == NULL)
        return;
    stop_thread(c);
    subs[0] = c->hb_sub;
    subs[1] = c->query_sub;
    subs[2] = c->stats_sub;
    subs[3] = c->reply_sub;
    /* Waits for a callback still running, which uses c. */
    for (size_t i = 0; i < 4; i++)
        stopped &= aggregator_sub_close(subs[i], c->nc, false, CLUSTER_CLOSE_WAIT_MS, &c->gate);
    /* From here no callback touches the store, the nodes or the bus, stopped or not. */
    aggregator_gate_close(&c->gate);
    if (!stopped) {
        /* A callback may still be scheduled, and it reads c->gate: keep c. */
        fprintf(stderr, "ebpf-aggregator: leaving the cluster state allocated\n");
        return;
    }
    pthread_cond_destroy(&c->gate.idle);
    pthread_mutex_destroy(&c->gate.lock);
    pthread_cond_destroy(&c->wake);
    pthread_mutex_destroy(&c->reply_lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

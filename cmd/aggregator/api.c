/*
 * The aggregator's HTTP routes. /api/events, /api/stats, /api/nodes and the
 * per-node part of /metrics answer for the whole cluster: they gather the
 * other replicas' answers over NATS (cluster.c) and merge them.
 *
 * A gather waits for peers (up to QUERY_TIMEOUT), so while peers are live
 * those routes defer their response and a small pool of worker threads runs
 * them: the HTTP thread keeps serving meanwhile. The queue is bounded; when it
 * is full the request gets 503 and is counted. Alone, a replica answers
 * synchronously on the HTTP thread (nothing to wait for).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator.h"
#include "api.h"
#include "clock.h"
#include "intern.h"
#include "cluster.h"
#include "openapi.h"
#include "ui.h"

/*
 * A worker mostly waits for its peers' replies (the NATS round trip, other
 * threads' wakeups), so workers, not the cores, bounded a replica's rate:
 * with 4, two replicas served 5.7-7.6k small cluster queries/s (wrk -c32,
 * this 2-core machine), with 16 8.5-10.9k. Each holds at most one query's
 * answer (limit <= 10,000 events) at a time.
 */
#define API_WORKERS   16
#define API_QUEUE_MAX 128 /* requests waiting for a worker */

/* ---- worker pool ---- */

/* The route's answer, run on a worker or (alone, or stopping) inline. */
typedef void (*answer_fn)(struct aggregator *a, const struct http_request *req,
                          struct http_response *res);

struct api_job {
    struct api_job *next;
    answer_fn fn;
    struct http_deferred *d;
    char *query; /* copied: the request's memory is the HTTP thread's */
    size_t query_len;
    char *path; /* copied too: errors name the route */
};

struct api_pool {
    struct aggregator *a;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct api_job *head, *tail;
    size_t queued;
    size_t running;
    bool stopping;
    pthread_t threads[API_WORKERS];
    size_t nthreads;
};

static void run_job(struct aggregator *a, struct api_job *j)
{
    struct http_request req = {
        .path = j->path, .path_len = strlen(j->path), .query = j->query, .query_len = j->query_len};
    struct http_response res = {.status = 200};

    buf_init(&res.body);
    j->fn(a, &req, &res);
    http_deferred_complete(j->d, res.status, res.content_type, &res.body);
    buf_free(&res.body);
    free(j->query);
    free(j->path);
    free(j);
}

static void *worker_main(void *arg)
{
    struct api_pool *p = arg;

    pthread_setname_np(pthread_self(), "api-worker");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->head == NULL && !p->stopping)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->head == NULL)
            break; /* stopping, and every queued request was answered */
        struct api_job *j = p->head;
        p->head = j->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        p->running++;
        pthread_mutex_unlock(&p->lock);
        run_job(p->a, j);
        pthread_mutex_lock(&p->lock);
        p->running--;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static struct api_pool *pool_new(struct aggregator *a)
{
    struct api_pool *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->a = a;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (size_t i = 0; i < API_WORKERS; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
            break;
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
    }
    return p;
}

void aggregator_api_stop(struct aggregator *a)
{
    struct api_pool *p = a->api_pool;

    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    p->nthreads = 0;
    /* The HTTP thread may still look at the pool (it answers inline now). */
}

void aggregator_api_free(struct aggregator *a)
{
    struct api_pool *p = a->api_pool;

    if (p == NULL)
        return;
    aggregator_api_stop(a);
    a->api_pool = NULL;
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Requests waiting for or held by a worker. */
static uint64_t pool_in_flight(struct aggregator *a)
{
    struct api_pool *p = a->api_pool;
    uint64_t n;

    if (p == NULL)
        return 0;
    pthread_mutex_lock(&p->lock);
    n = p->queued + p->running;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/*
 * Answers req: on a worker (deferred) while peers are live, else inline.
 * HTTP thread only.
 */
static void answer(struct aggregator *a, const struct http_request *req, struct http_response *res,
                   answer_fn fn)
{
    struct api_pool *p = a->api_pool;
    struct api_job *j;

    if (p == NULL || cluster_expected(a->cluster) <= 1)
        goto inline_answer;
    pthread_mutex_lock(&p->lock);
    bool stopping = p->stopping, full = p->queued >= API_QUEUE_MAX;
    pthread_mutex_unlock(&p->lock);
    if (stopping)
        goto inline_answer;
    if (full) {
        __atomic_add_fetch(&a->queries_rejected, 1, __ATOMIC_RELAXED);
        http_response_error(res, 503, "too many queries in flight");
        return;
    }
    if ((j = calloc(1, sizeof(*j))) == NULL)
        goto inline_answer;
    j->fn = fn;
    j->query_len = req->query_len;
    j->query = malloc(req->query_len + 1);
    j->path = strndup(req->path ? req->path : "", req->path ? req->path_len : 0);
    if (j->query == NULL || j->path == NULL || (j->d = http_response_defer(res)) == NULL) {
        /* Not deferred (no memory, or not a served request): the handler is still ours. */
        free(j->query);
        free(j->path);
        free(j);
        goto inline_answer;
    }
    if (req->query_len > 0) /* req->query may be NULL then */
        memcpy(j->query, req->query, req->query_len);
    j->query[req->query_len] = '\0';
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        /* Stopped since the check: the workers are gone, answer from here. */
        pthread_mutex_unlock(&p->lock);
        run_job(a, j);
        return;
    }
    if (p->tail != NULL)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    p->queued++;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return;
inline_answer:
    fn(a, req, res);
}

/* Both NATS connections up: the batches' and the replicas' own (cluster.c). */
static bool nats_up(struct aggregator *a)
{
    return bus_connected(a->bus) && (a->cluster == NULL || cluster_bus_connected(a->cluster));
}

/* Without NATS a replica cannot know its peers: its answer is its own share only. */
static bool is_partial(struct aggregator *a, unsigned answered, unsigned expected)
{
    return answered < expected || !nats_up(a);
}

static void write_replicas(struct aggregator *a, struct buf *b, unsigned answered,
                           unsigned expected)
{
    buf_printf(b, ",\"replicas\":{\"answered\":%u,\"expected\":%u},\"partial\":%s", answered,
               expected, is_partial(a, answered, expected) ? "true" : "false");
}

static void events_answer(struct aggregator *a, const struct http_request *req,
                          struct http_response *res)
{
    struct cluster_events ev;
    struct query q;
    char err[256];
    uint64_t start = clock_monotonic_ns();

    if (query_parse(&q, req->query, req->query_len, false, err, sizeof(err)) < 0) {
        http_response_error(res, 400, err);
        return;
    }
    if (cluster_query(a->cluster, req->query, req->query_len, &q, &ev) < 0) {
        cluster_events_free(&ev);
        http_response_error(res, 500, "out of memory running the query");
        return;
    }
    api_events_begin(&res->body, ev.events, ev.count, ev.total_count,
                     ev.has_next ? &ev.next_cursor : NULL, clock_monotonic_ns() - start);
    write_replicas(a, &res->body, ev.answered, ev.expected);
    api_events_end(&res->body);
    cluster_events_free(&ev);
}

/* A resumed stream's history: the cluster's, asked of every replica as /api/events is. */
static int replay_events(void *ctx, const char *qs, size_t qslen, const struct query *q,
                         struct http_replay *out)
{
    struct aggregator *a = ctx;
    struct cluster_events ev;
    int rc = cluster_query(a->cluster, qs, qslen, q, &ev);

    *out = (struct http_replay){.events = ev.events,
                                .count = ev.count,
                                .total_count = ev.total_count,
                                .has_next = ev.has_next};
    if (rc == 0 && is_partial(a, ev.answered, ev.expected))
        rc = -EHOSTUNREACH; /* a replica did not answer: its share may be missing */
    return rc;
}

static void flows_answer(struct aggregator *a, const struct http_request *req,
                         struct http_response *res)
{
    struct flows_result r = {0};
    struct flows_query q;
    unsigned answered, expected;
    char err[256], took[32];
    uint64_t start = clock_monotonic_ns();

    if (flows_query_parse(&q, req->query, req->query_len, clock_realtime_ns(), err, sizeof(err)) <
        0) {
        http_response_error(res, 400, err);
        return;
    }
    if (cluster_flows(a->cluster, req->query, req->query_len, &q, &r, &answered, &expected) < 0) {
        flows_result_free(&r);
        http_response_error(res, 500, "out of memory running the flows query");
        return;
    }
    api_format_duration(clock_monotonic_ns() - start, took, sizeof(took));
    flows_response_begin(&res->body, &r, &q, took);
    write_replicas(a, &res->body, answered, expected);
    buf_putc(&res->body, '}');
    flows_result_free(&r);
}

/* ---- the gathered view behind /api/stats, /api/nodes and /metrics ---- */

struct cluster_view {
    unsigned answered, expected;
    json_t *totals;        /* counters summed over the replicas that answered */
    json_t *replicas;      /* [{"replica":..,"connected":..,"batches":..,"events":..}] */
    struct buf nodes_text; /* nodes_write_json() of the merged table */
    json_t *nodes;         /* nodes_text parsed, by view_nodes() (only /metrics needs it) */
    struct nodes_totals nt;
    uint64_t invalid_answers; /* peers' answers rejected since start */
};

/* a + b for counters: negatives count as 0, the sum saturates at INT64_MAX. */
static json_int_t sat_sum(json_int_t a, json_int_t b)
{
    return cluster_counter_sum(a, b);
}

/* Sets key to o's key when it is of the kind is() accepts. */
static void copy_if(json_t *dst, const char *key, json_t *o, int (*is)(const json_t *))
{
    json_t *v = json_object_get(o, key);
    if (v != NULL && is(v))
        json_object_set(dst, key, v);
}

static int is_integer(const json_t *j)
{
    return json_is_integer(j);
}

static int is_number(const json_t *j)
{
    return json_is_number(j);
}

static int is_boolean(const json_t *j)
{
    return json_is_boolean(j);
}

/*
 * Folds one replica's stats answer (checked by cluster.c, or this replica's
 * own, which comes first and sets which counters are summed) into the view.
 */
static void view_add(struct cluster_view *v, json_t *root, bool own)
{
    json_t *counters = json_object_get(root, "counters");
    json_t *error = json_object_get(root, "error");
    json_t *entry = json_object();

    if (entry == NULL)
        return;
    json_object_set(entry, "replica", json_object_get(root, "replica"));
    if (json_is_object(counters)) {
        if (own) {
            /* A copy: the sums must not change this replica's own entry. */
            json_t *copy = json_deep_copy(counters);
            json_object_update(v->totals, copy);
            json_decref(copy);
        } else
            cluster_counters_add(v->totals, counters);
        copy_if(entry, "connected", root, is_boolean);
        copy_if(entry, "batches", counters, is_integer);
        copy_if(entry, "events", counters, is_integer);
        copy_if(entry, "uptime_seconds", counters, is_number);
    }
    if (json_is_string(error))
        json_object_set(entry, "error", error);
    json_array_append_new(v->replicas, entry);
}

/* This replica's own stats answer, as cluster.c hands over the peers'. */
static json_t *own_stats(struct aggregator *a)
{
    struct buf b;
    json_t *root = NULL, *counters;

    buf_init(&b);
    ingest_counters_json(a, &b);
    counters = b.oom ? NULL : json_loadb(b.data, b.len, 0, NULL);
    if (counters != NULL)
        root = json_pack("{s:s,s:b,s:o}", "replica", a->replica, "connected", nats_up(a),
                         "counters", counters);
    buf_free(&b);
    return root;
}

/* Gathers every replica's stats and merges them. 0 or -ENOMEM. */
static int view_gather(struct aggregator *a, struct cluster_view *v)
{
    struct cluster_stats st = {0};
    struct nodes *merged = nodes_new(AGGREGATOR_MAX_INSTANCES);
    json_t *own = NULL;
    int rc = 0;

    memset(v, 0, sizeof(*v));
    v->totals = json_object();
    v->replicas = json_array();
    buf_init(&v->nodes_text);
    if (merged == NULL || v->totals == NULL || v->replicas == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    cluster_gather_stats(a->cluster, merged, &st);
    v->answered = st.answered;
    v->expected = st.expected;
    v->invalid_answers = cluster_invalid_answers(a->cluster);
    /* This replica's own counters come first: they set which keys are summed. */
    if ((own = own_stats(a)) == NULL || nodes_merge(merged, a->nodes) < 0) {
        rc = -ENOMEM;
        goto out;
    }
    view_add(v, own, true);
    for (size_t i = 0; i < st.count; i++)
        view_add(v, st.replies[i], false);

    /* Written once as text: /api/stats and /api/nodes splice it into their answer. */
    nodes_write_json(merged, &v->nodes_text, clock_realtime_ns(), a->cfg.stale_after_ns, &v->nt);
    if (v->nodes_text.oom)
        rc = -ENOMEM;
out:
    json_decref(own);
    nodes_free(merged);
    cluster_stats_free(&st);
    return rc;
}

static void view_free(struct cluster_view *v)
{
    json_decref(v->totals);
    json_decref(v->replicas);
    json_decref(v->nodes);
    buf_free(&v->nodes_text);
}

/* The merged node view as JSON values; NULL when out of memory. */
static json_t *view_nodes(struct cluster_view *v)
{
    if (v->nodes == NULL && !v->nodes_text.oom && v->nodes_text.len > 0)
        v->nodes = json_loadb(v->nodes_text.data, v->nodes_text.len, 0, NULL);
    return v->nodes;
}

static uint64_t total_u64(json_t *totals, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(totals, key));
    return v > 0 ? (uint64_t)v : 0;
}

/*
 * Serialises root (stolen, a non-empty object) as the response body, with
 * the node view appended as its "nodes" member: the view can be large, and
 * parsing it into jansson only to print it again cost more than the rest.
 */
static void respond_json_nodes(struct http_response *res, json_t *root, const struct buf *nodes)
{
    char *s = root ? json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    size_t len = s != NULL ? strlen(s) : 0;

    if (len < 2 || s[len - 1] != '}' || nodes->oom || nodes->len == 0) {
        http_response_error(res, 500, "out of memory");
    } else {
        buf_append(&res->body, s, len - 1);
        buf_puts(&res->body, ",\"nodes\":");
        buf_append(&res->body, nodes->data, nodes->len);
        buf_putc(&res->body, '}');
    }
    free(s);
    json_decref(root);
}

static json_t *replicas_json(const struct cluster_view *v)
{
    return json_pack("{s:i,s:i,s:I,s:O}", "answered", (json_int_t)v->answered, "expected",
                     (json_int_t)v->expected, "invalid_answers", (json_int_t)v->invalid_answers,
                     "list", v->replicas);
}

static void stats_answer(struct aggregator *a, const struct http_request *req,
                         struct http_response *res)
{
    struct cluster_view v;
    struct bus_status bs = {0};
    struct http_server_stats hs;

    if (http_refuse_params(req, res))
        return;
    if (view_gather(a, &v) < 0) {
        view_free(&v);
        http_response_error(res, 500, "out of memory gathering the stats");
        return;
    }
    bus_get_status(a->bus, &bs);
    http_server_get_stats(a->http, &hs);

    json_t *root = json_object();
    json_t *t = v.totals;
    json_t *hist = json_object_get(t, "history");
    json_t *rejected = json_object_get(t, "rejected");
    json_int_t rejected_total = 0;
    const char *key;
    json_t *val;
    json_object_foreach(rejected, key, val)
    {
        rejected_total = sat_sum(rejected_total, json_integer_value(val));
    }
    json_object_set_new(root, "replica", json_string(a->replica));
    json_object_set_new(root, "replicas", replicas_json(&v));
    json_object_set_new(root, "partial", json_boolean(is_partial(a, v.answered, v.expected)));
    json_object_set_new(root, "uptime_seconds",
                        json_real((double)(clock_monotonic_ns() - a->started_mono_ns) / 1e9));
    api_json_set_u64(root, "total_events", total_u64(t, "events"));
    api_json_set_u64(root, "total_batches", total_u64(t, "batches"));
    json_object_set(root, "events_by_type", json_object_get(t, "events_by_type"));
    api_json_set_u64(root, "lost_batches", v.nt.lost_batches);
    api_json_set_u64(root, "agent_drops", v.nt.agent_drops);
    api_json_set_u64(root, "kernel_drops", v.nt.kernel_drops);
    api_json_set_u64(root, "kernel_missed", v.nt.kernel_missed);
    api_json_set_u64(root, "node_count", v.nt.nodes);
    api_json_set_u64(root, "instances", v.nt.instances);
    api_json_set_u64(root, "instances_dropped", v.nt.instances_dropped);
    json_object_set(root, "rejected", rejected);
    api_json_set_u64(root, "rejected_total", (uint64_t)rejected_total);
    json_t *rejected_events = json_object_get(t, "rejected_events");
    json_int_t rejected_events_total = 0;
    json_object_foreach(rejected_events, key, val)
    {
        rejected_events_total = sat_sum(rejected_events_total, json_integer_value(val));
    }
    json_object_set(root, "rejected_events", rejected_events);
    api_json_set_u64(root, "rejected_events_total", (uint64_t)rejected_events_total);
    api_json_set_u64(root, "bus_dropped", total_u64(t, "bus_dropped"));
    api_json_set_u64(root, "store_failed", total_u64(t, "store_failed"));
    api_json_set_u64(root, "history_departed", total_u64(t, "history_departed"));
    api_json_set_u64(root, "flows_departed", total_u64(t, "flows_departed"));
    json_object_set(root, "history", hist);
    json_object_set(root, "flows", json_object_get(t, "flows"));
    json_object_set(root, "peers", json_object_get(t, "peers"));
    json_object_set(root, "services", json_object_get(t, "services"));
    json_object_set(root, "joins", json_object_get(t, "joins"));
    json_object_set(root, "strings", json_object_get(t, "strings"));
    api_json_set_u64(root, "evictions",
                     (uint64_t)sat_sum(json_integer_value(json_object_get(hist, "evicted_count")),
                                       json_integer_value(json_object_get(hist, "evicted_age"))));
    struct bus_status control = {0};
    if (a->cluster)
        cluster_bus_status(a->cluster, &control);
    json_object_set_new(
        root, "bus",
        json_pack("{s:b,s:s,s:I,s:I,s:I,s:I,s:s,s:{s:b,s:I,s:I,s:s}}", "connected", bs.connected,
                  "server", bs.server, "disconnects", (json_int_t)bs.disconnects, "reconnects",
                  (json_int_t)bs.reconnects, "closed_for_good", (json_int_t)bs.closed_for_good,
                  "async_errors", (json_int_t)bs.async_errors, "last_error", bs.last_error,
                  "control", "connected", control.connected, "closed_for_good",
                  (json_int_t)control.closed_for_good, "async_errors",
                  (json_int_t)control.async_errors, "last_error", control.last_error));
    json_t *stream = api_stream_stats_json(&hs);
    if (stream) {
        api_json_set_u64(stream, "bus_dropped", ingest_stream_dropped(a));
        api_json_set_u64(stream, "bus_lost_batches", ingest_stream_lost(a));
    }
    json_object_set_new(root, "stream", stream);
    json_object_set_new(root, "queries",
                        json_pack("{s:I,s:I}", "in_flight", (json_int_t)pool_in_flight(a),
                                  "rejected", (json_int_t)counter_get(&a->queries_rejected)));
    respond_json_nodes(res, root, &v.nodes_text);
    view_free(&v);
}

static void nodes_answer(struct aggregator *a, const struct http_request *req,
                         struct http_response *res)
{
    struct cluster_view v;

    if (http_refuse_params(req, res))
        return;
    if (view_gather(a, &v) < 0) {
        view_free(&v);
        http_response_error(res, 500, "out of memory gathering the nodes");
        return;
    }
    json_t *root = json_object();
    api_json_set_u64(root, "count", v.nt.nodes);
    api_json_set_u64(root, "active", v.nt.active);
    api_json_set_u64(root, "stale", v.nt.stale);
    json_object_set_new(root, "replicas",
                        json_pack("{s:i,s:i}", "answered", (json_int_t)v.answered, "expected",
                                  (json_int_t)v.expected));
    json_object_set_new(root, "partial", json_boolean(is_partial(a, v.answered, v.expected)));
    respond_json_nodes(res, root, &v.nodes_text);
    view_free(&v);
}

static void handle_health(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    buf_puts(&res->body, "{\"status\":\"ok\"}");
}

static void handle_ready(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct aggregator *a = ctx;
    bool up = nats_up(a);

    if (http_refuse_params(req, res))
        return;
    if (!up)
        res->status = 503;
    buf_printf(&res->body, "{\"status\":\"%s\",\"nats\":\"%s\"}", up ? "ready" : "not ready",
               up ? "connected" : "disconnected");
}

static void node_metric(struct buf *b, const char *name, const char *help, json_t *nodes,
                        const char *field)
{
    const char *node;
    json_t *n;

    /* Gauges: merged from the replicas that answered, so a partial gather or a
     * sequence gap filled by a late batch can lower them. */
    api_metric_header(b, name, "gauge", help);
    json_object_foreach(nodes, node, n)
    {
        json_int_t v = json_integer_value(json_object_get(n, field));
        api_metric_labelled(b, name, "node", node, v > 0 ? (uint64_t)v : 0);
    }
}

static void metrics_answer(struct aggregator *a, const struct http_request *req,
                           struct http_response *res)
{
    struct buf *b = &res->body;
    const struct aggregator_counters *c = &a->counters;
    struct store_stats ss;
    struct http_server_stats hs;
    struct bus_status bs = {0};
    struct cluster_view v;

    store_get_stats(a->store, &ss);
    http_server_get_stats(a->http, &hs);
    bus_get_status(a->bus, &bs);
    res->content_type = "text/plain; version=0.0.4; charset=utf-8";

    /* This replica's own ingest: sum over replicas in the monitoring system. */
    api_metric(b, "ebpf_aggregator_batches_total", "counter", "Batches ingested by this replica.",
               counter_get(&c->batches));
    api_metric_header(b, "ebpf_aggregator_events_total", "counter",
                      "Events ingested by this replica, by type.");
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        api_metric_labelled(b, "ebpf_aggregator_events_total", "type", event_type_name(t),
                            counter_get(&c->events_by_type[t]));
    api_metric_header(b, "ebpf_aggregator_rejected_total", "counter",
                      "Bus messages this replica rejected, by reason.");
    for (unsigned r = 1; r < BUS_REJECT_COUNT; r++)
        api_metric_labelled(b, "ebpf_aggregator_rejected_total", "reason", bus_reject_name(r),
                            counter_get(&c->rejected[r]));
    api_metric_header(
        b, "ebpf_aggregator_rejected_events_total", "counter",
        "Undecodable events this replica skipped inside accepted batches, by reason.");
    api_metric_labelled(b, "ebpf_aggregator_rejected_events_total", "reason",
                        bus_reject_name(BUS_REJECT_MALFORMED_PROTOBUF),
                        counter_get(&c->rejected_events[BUS_REJECT_MALFORMED_PROTOBUF]));
    api_metric_labelled(b, "ebpf_aggregator_rejected_events_total", "reason",
                        bus_reject_name(BUS_REJECT_MALFORMED_JSON),
                        counter_get(&c->rejected_events[BUS_REJECT_MALFORMED_JSON]));
    api_metric(b, "ebpf_aggregator_bus_dropped_total", "counter",
               "Bus messages dropped because this replica could not keep up.",
               ingest_bus_dropped(a));
    ss.failed += counter_get(&c->store_failed);
    api_store_metrics(b, "ebpf_aggregator", &ss);
    struct intern_stats is;
    intern_get_stats(&is);
    api_metric(b, "ebpf_aggregator_intern_bytes", "gauge",
               "Bytes of the string table (names: nodes, pods, workloads...), of INTERN_MAX_BYTES.",
               is.bytes);
    api_metric(b, "ebpf_aggregator_intern_refused_total", "counter",
               "Names not interned because the string table was full (left unknown).", is.refused);
    api_metric(b, "ebpf_aggregator_history_departed_total", "counter",
               "Events stopped replicas held when they handed their node table to this one: "
               "received, counted, and gone with their history.",
               counter_get(&c->history_departed));
    api_metric(b, "ebpf_aggregator_flows_departed_total", "counter",
               "Flow buckets (edge-minutes) stopped replicas could not hand over to the replicas "
               "that remain: what they counted for /api/flows left with them.",
               counter_get(&c->flows_departed));
    flows_stats_metrics(a->flows, "ebpf_aggregator", b);
    aggregator_peers_metrics(a, b);
    /* Per edge, this replica's share: sum over replicas in the monitoring system. */
    flows_series_metrics(a->flows, b);
    struct bus_status control = {0};
    if (a->cluster)
        cluster_bus_status(a->cluster, &control);
    api_metric(b, "ebpf_aggregator_nats_connected", "gauge",
               "1 while connected to NATS (the batches' connection).", bs.connected);
    api_metric(b, "ebpf_aggregator_nats_control_connected", "gauge",
               "1 while the connection to the other replicas is up.", control.connected);
    api_metric(b, "ebpf_aggregator_ready", "gauge",
               "1 while /ready says ready (both NATS connections up); while 0 this replica "
               "hears no peer and its node counters (lost batches) are partial.",
               bs.connected && control.connected);
    api_metric(b, "ebpf_aggregator_nats_reconnects_total", "counter", "Reconnections to NATS.",
               bs.reconnects);
    api_metric(b, "ebpf_aggregator_nats_closed_for_good_total", "counter",
               "Connections the NATS client closed for good (the servers refused the credentials, "
               "or another error such as max_connections), on both of the replica's connections; "
               "each is opened again.",
               sat_sum(bs.closed_for_good, control.closed_for_good));
    api_metric(b, "ebpf_aggregator_stream_bus_lost_batches_total", "counter",
               "Batches this replica's SSE feed never heard while it had clients (sequence gaps: "
               "its subscription was made again on a new NATS connection).",
               ingest_stream_lost(a));
    api_metric(b, "ebpf_aggregator_nats_async_errors_total", "counter",
               "Errors the NATS server reported on the connection (a subject not permitted, a "
               "slow consumer), on both of the replica's connections.",
               bs.async_errors + control.async_errors);
    api_http_metrics(b, "ebpf_aggregator", &hs, ingest_stream_dropped(a));
    api_metric(b, "ebpf_aggregator_queries_in_flight", "gauge",
               "Cluster-wide requests waiting for or held by a worker.", pool_in_flight(a));
    api_metric(b, "ebpf_aggregator_queries_rejected_total", "counter",
               "Cluster-wide requests turned away (503): too many in flight.",
               counter_get(&a->queries_rejected));
    api_metric(b, "ebpf_aggregator_uptime_seconds", "gauge", "Seconds since this replica started.",
               (clock_monotonic_ns() - a->started_mono_ns) / 1000000000ull);

    /* Per node, cluster-wide: only the merged tables can see sequence gaps. */
    if (view_gather(a, &v) == 0 && view_nodes(&v) != NULL) {
        api_metric(b, "ebpf_aggregator_replicas_expected", "gauge",
                   "Replicas this one expects to answer (itself included).", v.expected);
        api_metric(b, "ebpf_aggregator_replicas_answered", "gauge",
                   "Replicas that answered the gather behind these metrics.", v.answered);
        api_metric(b, "ebpf_aggregator_invalid_answers_total", "counter",
                   "Peers' answers ignored as malformed (bad types, ranges or replica id).",
                   v.invalid_answers);
        api_metric(b, "ebpf_aggregator_node_instances_dropped_total", "counter",
                   "Agent instances the node table forgot for room (AGGREGATOR_MAX_INSTANCES): "
                   "their later batches' losses are counted from scratch.",
                   v.nt.instances_dropped);
        node_metric(b, "ebpf_aggregator_node_events",
                    "Events received from each node, all replicas.", v.nodes, "events");
        node_metric(b, "ebpf_aggregator_node_batches",
                    "Batches received from each node, all replicas.", v.nodes, "batches");
        node_metric(b, "ebpf_aggregator_node_lost_batches",
                    "Batches missing from each node's sequence, all replicas.", v.nodes,
                    "lost_batches");
        node_metric(b, "ebpf_aggregator_node_agent_drops",
                    "Events each node's agent dropped (as it last reported).", v.nodes,
                    "agent_drops");
        node_metric(b, "ebpf_aggregator_node_kernel_drops",
                    "Events lost in each node's kernel ring buffer (as last reported).", v.nodes,
                    "kernel_drops");
        node_metric(b, "ebpf_aggregator_node_kernel_missed",
                    "eBPF program runs each node's kernel skipped (as last reported).", v.nodes,
                    "kernel_missed");
        api_metric_header(b, "ebpf_aggregator_node_active", "gauge",
                          "1 while the node reported within STALE_AFTER.");
        const char *node;
        json_t *n;
        json_object_foreach(v.nodes, node, n)
        {
            const char *st = json_string_value(json_object_get(n, "status"));
            api_metric_labelled(b, "ebpf_aggregator_node_active", "node", node,
                                st != NULL && strcmp(st, "active") == 0);
        }
    }
    view_free(&v);
}

static void handle_events(void *ctx, const struct http_request *req, struct http_response *res)
{
    answer(ctx, req, res, events_answer);
}

static void handle_flows(void *ctx, const struct http_request *req, struct http_response *res)
{
    answer(ctx, req, res, flows_answer);
}

static void handle_stats(void *ctx, const struct http_request *req, struct http_response *res)
{
    answer(ctx, req, res, stats_answer);
}

static void handle_nodes(void *ctx, const struct http_request *req, struct http_response *res)
{
    answer(ctx, req, res, nodes_answer);
}

static void handle_metrics(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    answer(ctx, req, res, metrics_answer);
}

int aggregator_api_register(struct aggregator *a)
{
    int rc = 0;

    /* Without workers, every answer is given inline (as alone). */
    a->api_pool = pool_new(a);

    rc |= http_server_stream(a->http, "/api/events/stream");
    rc |= http_server_route(a->http, "/api/events", handle_events, a);
    rc |= http_server_route(a->http, "/api/flows", handle_flows, a);
    rc |= http_server_route(a->http, "/api/stats", handle_stats, a);
    rc |= http_server_route(a->http, "/api/nodes", handle_nodes, a);
    rc |= http_server_route(a->http, "/health", handle_health, a);
    rc |= http_server_route(a->http, "/ready", handle_ready, a);
    rc |= http_server_route(a->http, "/metrics", handle_metrics, a);
    rc |= openapi_register(a->http);
    rc |= ui_register(a->http);
    http_server_on_stream_clients(a->http, ingest_on_stream_clients, a);
    http_server_on_stream_replay(a->http, replay_events, a);
    return rc ? -EINVAL : 0;
}

/*
 * The aggregator as a cluster: a real nats-server on a free loopback port and
 * two real bin/ebpf-aggregator replicas in one queue group, fed with real
 * batches (event_batch_encode + headers, published with nats.c) for two
 * nodes. Queries to either replica answer for both; paging visits every
 * event once; sequence gaps, bad input, SSE and a killed replica behave as
 * the API promises. The merge and the reply codec on their own are in
 * test_aggregator_cluster_merge.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aggregator/cluster.h"
#include "bus.h"
#include "event_pb.h"
#include "intern.h"
#include "testutil.h"

#define NODE_A    "ip-10-0-1-5.ec2.internal"
#define NODE_B    "node-b"
#define NREPLICAS 2

static pid_t nats_pid = -1;
static int nats_port;
static char nats_url[64];
static pid_t agg_pid[NREPLICAS];
static int agg_port[NREPLICAS];
static char logs[NREPLICAS + 1][128];
static natsConnection *pub;
static uint64_t next_id = 0x1000;

static void dump_logs(void)
{
    for (int i = 0; i <= NREPLICAS; i++) {
        char *s = tu_read_file(logs[i]);
        if (s != NULL) {
            size_t len = strlen(s);
            cr_log_error("---- %s ----\n%s", logs[i], len > 3000 ? s + len - 3000 : s);
            free(s);
        }
    }
}

#define check(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dump_logs();                                                                           \
            cr_assert_fail(__VA_ARGS__);                                                           \
        }                                                                                          \
    } while (0)

static pid_t start_replica(int i)
{
    char listen[64], url[96];
    /* EBPF_AGGREGATOR_BIN runs the suite against another build (e.g. with sanitizers). */
    const char *bin = getenv("EBPF_AGGREGATOR_BIN");
    char *argv[] = {(char *)(bin ? bin : tu_repo_path("bin/ebpf-aggregator")), NULL};

    agg_port[i] = tu_free_port();
    snprintf(listen, sizeof(listen), "LISTEN_ADDR=127.0.0.1:%d", agg_port[i]);
    snprintf(url, sizeof(url), "NATS_URL=%s", nats_url);
    char *env[] = {listen, url, "QUERY_TIMEOUT=400ms", "HISTORY_SIZE=100000", NULL};
    return tu_spawn(argv, env, logs[i]);
}

static json_t *get(int port, const char *path)
{
    int status = 0;
    json_t *j = tu_get_json(port, path, &status);
    check(j != NULL && status == 200, "GET %s on :%d: status %d", path, port, status);
    return j;
}

static json_int_t jint(json_t *o, const char *path)
{
    /* "a.b.c" */
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur;
         tok = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, tok);
    return json_integer_value(cur);
}

/* Polls until every replica expects all the others (heartbeats seen). */
static bool wait_expected(int port, int want, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        json_t *j = tu_get_json(port, "/api/nodes", NULL);
        json_int_t e = j ? jint(j, "replicas.expected") : -1;
        json_decref(j);
        if (e == want)
            return true;
        usleep(20000);
    } while (tu_mono_ms() < deadline);
    return false;
}

static void cluster_up_with(const char *const nats_args[])
{
    nats_port = tu_free_port();
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    for (int i = 0; i <= NREPLICAS; i++)
        snprintf(logs[i], sizeof(logs[i]), "/tmp/test_aggregator_cluster.%d.%d.log", getpid(), i);
    nats_pid = tu_nats_start(nats_port, nats_args, logs[NREPLICAS]);
    cr_assert(nats_pid > 0, "nats-server did not start");
    for (int i = 0; i < NREPLICAS; i++) {
        agg_pid[i] = start_replica(i);
        check(agg_pid[i] > 0, "cannot start replica %d", i);
    }
    for (int i = 0; i < NREPLICAS; i++) {
        check(tu_wait_http(agg_port[i], "/ready", 200, 10000), "replica %d never ready", i);
        check(wait_expected(agg_port[i], NREPLICAS, 5000), "replica %d never saw its peer", i);
    }
    check(natsConnection_ConnectTo(&pub, nats_url) == NATS_OK, "test publisher cannot connect");
}

static void cluster_up(void)
{
    cluster_up_with(NULL);
}

static void cluster_down(void)
{
    if (pub != NULL)
        natsConnection_Destroy(pub);
    pub = NULL;
    for (int i = 0; i < NREPLICAS; i++) {
        if (agg_pid[i] > 0)
            tu_stop(agg_pid[i], 5000);
        agg_pid[i] = -1;
    }
    if (nats_pid > 0)
        tu_stop(nats_pid, 5000);
    nats_pid = -1;
    for (int i = 0; i <= NREPLICAS; i++)
        unlink(logs[i]);
}

/* n exit events of node, timestamps spread so order is total. */
static struct event *make_events(const char *node, size_t n, uint32_t pid_base)
{
    struct event *ev = calloc(n, sizeof(*ev));
    uint64_t now = tu_now_ns();
    cr_assert(ev != NULL);
    for (size_t i = 0; i < n; i++) {
        ev[i].id = next_id++;
        ev[i].type = EVENT_EXIT;
        /* Shared timestamps between nodes on purpose: the id breaks the tie. */
        ev[i].timestamp_ns = now - 1000000000ull + (next_id % 37) * 1000;
        ev[i].pid = pid_base + (uint32_t)i;
        ev[i].ppid = 1;
        snprintf(ev[i].command, sizeof(ev[i].command), "worker");
        ev[i].node = intern(node);
        ev[i].u.exit.duration_ns = 5000;
    }
    return ev;
}

static void publish_raw(const char *subject, const char *content_type, const void *data, size_t len,
                        const char *node, const char *instance, uint64_t seq, size_t nevents)
{
    natsMsg *m = NULL;
    char num[32];

    check(natsMsg_Create(&m, subject, NULL, data, (int)len) == NATS_OK, "natsMsg_Create");
    if (content_type != NULL)
        natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, content_type);
    if (node != NULL)
        natsMsgHeader_Set(m, BUS_HDR_NODE, node);
    if (instance != NULL)
        natsMsgHeader_Set(m, BUS_HDR_INSTANCE, instance);
    if (seq > 0) {
        snprintf(num, sizeof(num), "%" PRIu64, seq);
        natsMsgHeader_Set(m, BUS_HDR_SEQUENCE, num);
        snprintf(num, sizeof(num), "%zu", nevents);
        natsMsgHeader_Set(m, BUS_HDR_EVENTS, num);
    }
    check(natsConnection_PublishMsg(pub, m) == NATS_OK, "publish on %s", subject);
    natsMsg_Destroy(m);
}

static void publish_batch(const char *node, const char *instance, uint64_t seq, struct event *ev,
                          size_t n)
{
    /* Cumulative, as an agent counts: the newest batch's figure is the instance's. */
    struct event_batch_meta meta = {.node = node,
                                    .agent_instance = instance,
                                    .sequence = seq,
                                    .kernel_missed = 3 * seq,
                                    .sent_at_ns = tu_now_ns()};
    char subject[256];
    struct buf b;

    buf_init(&b);
    cr_assert(event_batch_encode(&meta, ev, n, &b) == 0);
    bus_node_subject("ebpf.events", node, subject, sizeof(subject));
    publish_raw(subject, BUS_CONTENT_TYPE_PROTOBUF, b.data, b.len, node, instance, seq, n);
    buf_free(&b);
}

/* Node A: 10 batches of 5 (seq 1..10); node B: 9 batches of 5, seq 3 missing. */
#define EVENTS_A     50
#define EVENTS_B     45
#define EVENTS_TOTAL (EVENTS_A + EVENTS_B)

static void publish_two_nodes(void)
{
    for (uint64_t seq = 1; seq <= 10; seq++) {
        struct event *a = make_events(NODE_A, 5, 100);
        publish_batch(NODE_A, "aaaaaaaaaaaaaaaa", seq, a, 5);
        free(a);
        if (seq == 3)
            continue; /* the gap */
        struct event *b = make_events(NODE_B, 5, 200);
        publish_batch(NODE_B, "bbbbbbbbbbbbbbbb", seq, b, 5);
        free(b);
    }
    natsConnection_Flush(pub);
}

static bool wait_total_events(int port, json_int_t want, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        json_t *j = tu_get_json(port, "/api/stats", NULL);
        json_int_t n = j ? jint(j, "total_events") : -1;
        json_decref(j);
        if (n == want)
            return true;
        usleep(20000);
    } while (tu_mono_ms() < deadline);
    return false;
}

static bool has_node(json_t *events, const char *node)
{
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        const char *n = json_string_value(json_object_get(e, "node"));
        if (n != NULL && strcmp(n, node) == 0)
            return true;
    }
    return false;
}

TestSuite(aggregator_cluster, .init = cluster_up, .fini = cluster_down, .timeout = 60);

Test(aggregator_cluster, either_replica_answers_for_the_whole_cluster)
{
    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "events never all ingested");

    /* The queue group spread the batches: each replica holds only a share. */
    json_t *st = get(agg_port[0], "/api/stats");
    json_t *list = json_object_get(json_object_get(st, "replicas"), "list");
    check(json_array_size(list) == 2, "stats from both replicas");
    json_int_t share0 = jint(json_array_get(list, 0), "events");
    json_int_t share1 = jint(json_array_get(list, 1), "events");
    check(share0 + share1 == EVENTS_TOTAL, "shares %lld + %lld", share0, share1);
    /* 19 batches spread at random: both get some (all on one: p = 2^-18). */
    check(share0 > 0 && share1 > 0, "shares %lld and %lld", share0, share1);
    json_decref(st);

    for (int r = 0; r < NREPLICAS; r++) {
        json_t *j = get(agg_port[r], "/api/events?limit=10000");
        json_t *events = json_object_get(j, "events");
        check(json_array_size(events) == EVENTS_TOTAL, "replica %d: %zu events", r,
              json_array_size(events));
        check(jint(j, "total_count") == EVENTS_TOTAL, "replica %d total_count", r);
        check(jint(j, "replicas.answered") == 2 && jint(j, "replicas.expected") == 2,
              "replica %d: answered %lld expected %lld", r, jint(j, "replicas.answered"),
              jint(j, "replicas.expected"));
        check(json_is_null(json_object_get(j, "next_cursor")), "one page holds everything");
        check(has_node(events, NODE_A) && has_node(events, NODE_B), "replica %d: both nodes", r);
        json_decref(j);

        /* Filters apply on every replica before the merge. */
        j = get(agg_port[r], "/api/events?node=" NODE_A "&limit=10000");
        check(json_array_size(json_object_get(j, "events")) == EVENTS_A, "node filter");
        check(!has_node(json_object_get(j, "events"), NODE_B), "node filter excludes B");
        json_decref(j);
    }
}

Test(aggregator_cluster, paging_with_the_cursor_visits_every_event_once)
{
    publish_two_nodes();
    check(wait_total_events(agg_port[1], EVENTS_TOTAL, 5000), "events never all ingested");

    uint64_t seen[EVENTS_TOTAL];
    size_t nseen = 0, pages = 0;
    char path[256] = "/api/events?limit=7";
    uint64_t last_ts = UINT64_MAX, last_id = UINT64_MAX;
    for (;;) {
        json_t *j = get(agg_port[1], path);
        json_t *events = json_object_get(j, "events");
        size_t i;
        json_t *e;
        check(jint(j, "replicas.answered") == 2, "page %zu: both replicas answered", pages);
        check(json_array_size(events) <= 7, "page larger than the limit");
        json_array_foreach(events, i, e)
        {
            uint64_t id = strtoull(json_string_value(json_object_get(e, "id")), NULL, 16);
            uint64_t ts = (uint64_t)json_integer_value(json_object_get(e, "timestamp"));
            check(ts < last_ts || (ts == last_ts && id < last_id), "newest first across pages");
            last_ts = ts;
            last_id = id;
            for (size_t k = 0; k < nseen; k++)
                check(seen[k] != id, "event %016" PRIx64 " returned twice", id);
            check(nseen < EVENTS_TOTAL, "more events than were published");
            seen[nseen++] = id;
        }
        pages++;
        json_t *cur = json_object_get(j, "next_cursor");
        if (json_is_null(cur)) {
            json_decref(j);
            break;
        }
        snprintf(path, sizeof(path), "/api/events?limit=7&cursor=%s", json_string_value(cur));
        json_decref(j);
        check(pages < 100, "paging does not end");
    }
    check(nseen == EVENTS_TOTAL, "paged %zu of %d events", nseen, EVENTS_TOTAL);
    check(pages >= EVENTS_TOTAL / 7, "%zu pages", pages);
}

Test(aggregator_cluster, nodes_and_sequence_gaps_are_seen_from_either_replica)
{
    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "events never all ingested");

    for (int r = 0; r < NREPLICAS; r++) {
        json_t *j = get(agg_port[r], "/api/nodes");
        json_t *nodes = json_object_get(j, "nodes");
        check(jint(j, "count") == 2, "replica %d: %lld nodes", r, jint(j, "count"));
        const char *sa =
            json_string_value(json_object_get(json_object_get(nodes, NODE_A), "status"));
        const char *sb =
            json_string_value(json_object_get(json_object_get(nodes, NODE_B), "status"));
        check(sa && strcmp(sa, "active") == 0 && sb && strcmp(sb, "active") == 0, "both active");
        json_decref(j);

        /* The gap is visible only once both replicas' tables are merged. */
        j = get(agg_port[r], "/api/stats");
        nodes = json_object_get(j, "nodes");
        check(jint(json_object_get(nodes, NODE_B), "lost_batches") == 1, "replica %d: B lost %lld",
              r, jint(json_object_get(nodes, NODE_B), "lost_batches"));
        check(jint(json_object_get(nodes, NODE_A), "lost_batches") == 0, "A lost nothing");
        check(jint(json_object_get(nodes, NODE_A), "events") == EVENTS_A, "A events");
        check(jint(json_object_get(nodes, NODE_B), "batches") == 9, "B batches");
        check(jint(json_object_get(nodes, NODE_A), "kernel_missed") == 30 &&
                  jint(json_object_get(nodes, NODE_B), "kernel_missed") == 30,
              "replica %d: runs skipped A %lld, B %lld (the newest batch's, 30)", r,
              jint(json_object_get(nodes, NODE_A), "kernel_missed"),
              jint(json_object_get(nodes, NODE_B), "kernel_missed"));
        check(jint(j, "kernel_missed") == 60, "total runs skipped %lld", jint(j, "kernel_missed"));
        check(jint(j, "lost_batches") == 1, "total lost batches");
        check(jint(j, "events_by_type.exit") == EVENTS_TOTAL, "events by type");
        check(jint(j, "replicas.answered") == 2, "answered");
        json_decref(j);
    }

    struct tu_http m;
    check(tu_http_get(agg_port[0], "/metrics", NULL, &m) == 0 && m.status == 200, "/metrics");
    check(strstr(m.body, "ebpf_aggregator_node_lost_batches{node=\"" NODE_B "\"} 1\n") != NULL,
          "per-node lost batches in /metrics:\n%s", m.body);
    check(strstr(m.body, "ebpf_aggregator_node_kernel_missed{node=\"" NODE_B "\"} 30\n") != NULL,
          "per-node runs skipped in /metrics:\n%s", m.body);
    check(strstr(m.body, "ebpf_aggregator_replicas_expected 2\n") != NULL, "replicas in /metrics");
    /* As /api/stats says it: no instance forgotten for room. */
    check(strstr(m.body, "\nebpf_aggregator_node_instances_dropped_total 0\n") != NULL,
          "instances dropped in /metrics:\n%s", m.body);
    tu_http_free(&m);
}

static bool wait_rejected(json_int_t want, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        json_t *j = tu_get_json(agg_port[0], "/api/stats", NULL);
        json_int_t n = j ? jint(j, "rejected_total") : -1;
        json_decref(j);
        if (n == want)
            return true;
        usleep(20000);
    } while (tu_mono_ms() < deadline);
    return false;
}

Test(aggregator_cluster, bad_messages_are_counted_by_reason_and_skipped)
{
    const char *subj = "ebpf.events.evil";
    static const char garbage[] = "\xff\xff\xff\xff garbage that is no protobuf";
    static const char badjson[] = "{\"id\":12,\"type\":\"exit\",\"timestamp\":\"soon\"}\n";

    publish_raw(subj, BUS_CONTENT_TYPE_PROTOBUF, garbage, sizeof(garbage) - 1, "evil", NULL, 0, 0);
    publish_raw(subj, "text/plain", "hello", 5, "evil", "eeeeeeeeeeeeeeee", 1, 1);
    publish_raw(subj, BUS_CONTENT_TYPE_JSON, badjson, sizeof(badjson) - 1, "evil",
                "eeeeeeeeeeeeeeee", 1, 1);
    publish_raw(subj, BUS_CONTENT_TYPE_JSON, "{}", 2, NULL, NULL, 0, 0); /* no metadata */
    /* One event more than the largest BATCH_SIZE: refused whole. */
    struct event *many = make_events("evil", BUS_MAX_BATCH_EVENTS + 1, 1);
    publish_batch("evil", "eeeeeeeeeeeeeeee", 2, many, BUS_MAX_BATCH_EVENTS + 1);
    free(many);
    /* A truncated protobuf batch. */
    struct event *few = make_events("evil", 3, 1);
    struct event_batch_meta meta = {
        .node = "evil", .agent_instance = "eeeeeeeeeeeeeeee", .sequence = 3};
    struct buf b;
    buf_init(&b);
    cr_assert(event_batch_encode(&meta, few, 3, &b) == 0);
    publish_raw(subj, BUS_CONTENT_TYPE_PROTOBUF, b.data, b.len - 7, NULL, NULL, 0, 0);
    buf_free(&b);
    free(few);
    natsConnection_Flush(pub);

    /* The JSON line that does not parse costs only itself: a rejected event, not a message. */
    check(wait_rejected(5, 5000), "five rejections counted");
    json_t *j = get(agg_port[1], "/api/stats");
    check(jint(j, "rejected.malformed_protobuf") == 2, "malformed_protobuf %lld",
          jint(j, "rejected.malformed_protobuf"));
    check(jint(j, "rejected.unknown_encoding") == 1, "unknown_encoding");
    check(jint(j, "rejected.malformed_json") == 0, "malformed_json");
    check(jint(j, "rejected_events.malformed_json") == 1, "rejected_events.malformed_json");
    check(jint(j, "rejected_events_total") == 1, "rejected_events_total");
    check(jint(j, "rejected.bad_metadata") == 1, "bad_metadata");
    check(jint(j, "rejected.too_many_events") == 1, "too_many_events");
    check(jint(j, "total_events") == 0, "nothing stored from bad input");
    json_decref(j);

    struct tu_http m;
    check(tu_http_get(agg_port[0], "/metrics", NULL, &m) == 0 && m.status == 200, "/metrics");
    check(strstr(m.body, "ebpf_aggregator_rejected_total{reason=\"") != NULL, "rejected metric");
    check(strstr(m.body, "ebpf_aggregator_rejected_events_total{reason=\"") != NULL,
          "rejected events metric");
    tu_http_free(&m);

    /* Still serving, and still ingesting good batches. */
    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "good batches after bad ones");
    check(tu_wait_http(agg_port[0], "/health", 200, 1000), "health");
    check(tu_wait_http(agg_port[1], "/health", 200, 1000), "health");
}

/* ---- SSE ---- */

struct sse {
    int fd;
    char *data;
    size_t len, cap;
};

static void sse_open(struct sse *s, int port, const char *path)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    char req[256];

    memset(s, 0, sizeof(*s));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    check(s->fd >= 0 && connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect");
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    check(write(s->fd, req, (size_t)n) == n, "send request");
}

static size_t count_str(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Reads until needle appears (true) or the timeout passes. */
static bool sse_wait_for(struct sse *s, const char *needle, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (s->data != NULL && strstr(s->data, needle) != NULL)
            return true;
        uint64_t now = tu_mono_ms();
        if (now >= deadline)
            return false;
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        if (s->cap - s->len < 65537) {
            s->cap = s->cap ? s->cap * 2 : 1 << 17;
            s->data = realloc(s->data, s->cap);
            cr_assert(s->data != NULL);
        }
        ssize_t r = read(s->fd, s->data + s->len, s->cap - s->len - 1);
        if (r <= 0)
            return false;
        s->len += (size_t)r;
        s->data[s->len] = '\0';
    }
}

static void sse_close(struct sse *s)
{
    close(s->fd);
    free(s->data);
}

Test(aggregator_cluster, every_replica_streams_every_event_once)
{
    struct sse s[NREPLICAS];
    for (int r = 0; r < NREPLICAS; r++) {
        sse_open(&s[r], agg_port[r], "/api/events/stream?node=streamed");
        check(sse_wait_for(&s[r], ": connected", 5000), "replica %d stream connected", r);
    }
    /* 8 batches spread over the queue group, then one marker event. */
    for (uint64_t seq = 1; seq <= 8; seq++) {
        struct event *ev = make_events("streamed", 4, 300);
        publish_batch("streamed", "cccccccccccccccc", seq, ev, 4);
        free(ev);
    }
    struct event *marker = make_events("streamed", 1, 99999);
    publish_batch("streamed", "cccccccccccccccc", 9, marker, 1);
    free(marker);
    /* Not matching the filter: must not appear. */
    struct event *other = make_events(NODE_A, 2, 400);
    publish_batch(NODE_A, "aaaaaaaaaaaaaaaa", 1, other, 2);
    free(other);
    natsConnection_Flush(pub);

    for (int r = 0; r < NREPLICAS; r++) {
        /* Per subscription, delivery is in order: a duplicate would come before the marker. */
        check(sse_wait_for(&s[r], "\"pid\":99999", 5000), "replica %d: marker streamed", r);
        check(count_str(s[r].data, "data: ") == 33, "replica %d streamed %zu events", r,
              count_str(s[r].data, "data: "));
        check(strstr(s[r].data, NODE_A) == NULL, "filter applied");
        sse_close(&s[r]);
    }
}

static json_t *events_on(int port, uint64_t *elapsed_ms)
{
    uint64_t t0 = tu_mono_ms();
    json_t *j = get(port, "/api/events");
    *elapsed_ms = tu_mono_ms() - t0;
    return j;
}

Test(aggregator_cluster, a_killed_replica_makes_answers_partial_until_it_expires)
{
    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "events never all ingested");

    uint64_t killed = tu_mono_ms(), ms;
    kill(agg_pid[1], SIGKILL);
    waitpid(agg_pid[1], NULL, 0);
    agg_pid[1] = -1;

    /* Its heartbeat is still fresh: expected but silent, and the answer says so. */
    json_t *j = events_on(agg_port[0], &ms);
    check(jint(j, "replicas.answered") == 1 && jint(j, "replicas.expected") == 2,
          "right after the kill: answered %lld expected %lld", jint(j, "replicas.answered"),
          jint(j, "replicas.expected"));
    check(json_is_true(json_object_get(j, "partial")), "flagged partial");
    check(ms < 1500, "partial answer took %" PRIu64 " ms", ms);
    json_decref(j);

    /* Then it stops being expected (heartbeat TTL), well before 3 s. */
    bool expired = false;
    while (!expired && tu_mono_ms() - killed < 3500) {
        j = events_on(agg_port[0], &ms);
        check(jint(j, "replicas.answered") == 1, "only the live replica answers");
        expired = jint(j, "replicas.expected") == 1;
        if (expired)
            check(json_is_false(json_object_get(j, "partial")), "complete again");
        json_decref(j);
        if (!expired)
            usleep(50000);
    }
    check(expired, "dead replica still expected after %" PRIu64 " ms", tu_mono_ms() - killed);
    check(tu_mono_ms() - killed >= CLUSTER_PEER_TTL_MS - CLUSTER_HEARTBEAT_MS, "expired too early");
}

/*
 * One handover request as a leaving replica sends it (Ebpf-Handover: kind, when not NULL,
 * and Ebpf-Sent-At: sent_ns), answered by a replica; whether it was taken.
 */
static bool offer_handover(const char *body, const char *kind, uint64_t sent_ns)
{
    char sent[24];
    natsMsg *req = NULL, *reply = NULL;

    snprintf(sent, sizeof(sent), "%" PRIu64, sent_ns);
    check(natsMsg_Create(&req, "ebpf.control.ebpf-aggregator.handover", NULL, body,
                         (int)strlen(body)) == NATS_OK,
          "natsMsg_Create");
    if (kind != NULL)
        natsMsgHeader_Set(req, "Ebpf-Handover", kind);
    natsMsgHeader_Set(req, "Ebpf-Sent-At", sent);
    natsStatus s = natsConnection_RequestMsg(&reply, pub, req, 3000);
    natsMsg_Destroy(req);
    check(s == NATS_OK, "no replica answered the %s: %s", kind ? kind : "node table",
          natsStatus_GetText(s));
    json_t *j = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    bool taken = json_is_true(json_object_get(j, "taken"));
    json_decref(j);
    natsMsg_Destroy(reply);
    return taken;
}

/* One handed-over flows chunk, sent as a leaving replica does, at sent_ns; whether taken. */
static bool offer_flows_chunk(uint16_t port, uint64_t sent_ns)
{
    uint64_t now = tu_now_ns();
    char chunk[1024];
    snprintf(chunk, sizeof(chunk),
             "{\"minutes\":[[%" PRIu64 ",{\"s\":[null,\"curl\",\"Process\",null,\"vm\",null,"
             "null,null],\"d\":[null,null,null,null,null,null,null,\"10.0.0.9\"],\"k\":[%u,6],"
             "\"c\":[3,3,0,0,0,0,0,%" PRIu64 ",%" PRIu64 ",0],\"e\":{},\"h\":[2,3]}]]}",
             (uint64_t)(now / 60000000000ull), (unsigned)port, now, now);
    return offer_handover(chunk, "flows", sent_ns);
}

/* The connections the cluster's /api/flows counts to 10.0.0.9:port. */
static json_int_t flows_to(uint16_t port)
{
    json_t *j = get(agg_port[0], "/api/flows?group_by=pod&limit=100000"), *e;
    json_int_t n = 0;
    size_t i;
    json_array_foreach(json_object_get(j, "edges"), i, e)
    {
        json_t *dst = json_object_get(e, "destination");
        if (jint(e, "port") == port &&
            json_equal(json_object_get(dst, "ip"), json_string("10.0.0.9")))
            n += jint(e, "connections");
    }
    json_decref(j);
    return n;
}

/*
 * A chunk of a leaving replica's flow minutes that reaches a replica late (one stopped, then
 * resumed, with the request queued) is declined: the leaver stopped waiting for it, and sent
 * it elsewhere or counted it as departed. A fresh one is merged, once.
 */
Test(aggregator_cluster, a_late_flows_chunk_is_declined_a_fresh_one_merged)
{
    check(!offer_flows_chunk(4242, tu_now_ns() - 5000000000ull), "a 5 s old chunk was taken");
    check(flows_to(4242) == 0, "a declined chunk was merged");
    check(offer_flows_chunk(4242, tu_now_ns()), "a fresh chunk was declined");
    check(flows_to(4242) == 3, "the chunk's 3 connections: %lld", (long long)flows_to(4242));
}

/* A leaving replica's node table (node, 5 batches), sent as it does, at sent_ns; whether taken. */
static bool offer_node_table(const char *node, uint64_t sent_ns)
{
    char table[512];
    snprintf(table, sizeof(table),
             "{\"instances_dropped\":0,\"instances\":[{\"node\":\"%s\",\"instance\":"
             "\"00000000000000aa\",\"batches\":5,\"events\":50,\"min_seq\":1,\"max_seq\":5,"
             "\"kernel_drops\":0,\"agent_drops\":0,\"kernel_missed\":0,\"last_seen_ns\":%" PRIu64
             "}]}",
             node, tu_now_ns());
    return offer_handover(table, NULL, sent_ns);
}

/* The batches the cluster's /api/nodes counts for node (-1: not listed). */
static json_int_t node_batches(const char *node)
{
    json_t *j = get(agg_port[0], "/api/nodes");
    json_t *n = json_object_get(json_object_get(j, "nodes"), node);
    json_int_t b = n ? json_integer_value(json_object_get(n, "batches")) : -1;
    json_decref(j);
    return b;
}

/*
 * A leaving replica's node table that reaches a replica late (one stopped, then resumed, with
 * the request queued) is declined: the leaver stopped waiting and handed it to another, so
 * taking it too would count its batches twice, and hide as many lost ones. A fresh one is
 * merged, once.
 */
Test(aggregator_cluster, a_late_node_table_is_declined_a_fresh_one_merged)
{
    check(!offer_node_table("late-table", tu_now_ns() - 5000000000ull),
          "a 5 s old node table was taken");
    check(node_batches("late-table") == -1, "a declined table was merged: %lld batches",
          (long long)node_batches("late-table"));
    check(offer_node_table("late-table", tu_now_ns()), "a fresh node table was declined");
    check(node_batches("late-table") == 5, "the table's 5 batches: %lld",
          (long long)node_batches("late-table"));
}

/* ---- a client that heartbeats as a replica and answers with whatever it likes ---- */

#define FAKE_ID      "f0f0f0f0f0f0f0f0"
#define CONTROL      "ebpf.control.ebpf-aggregator"
#define FAKE_MAX_STR "9223372036854775807"

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static char *fake_answer; /* the stats answer; NULL: silent */
static int fake_copies = 1;

static void fake_on_stats(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    const char *reply = natsMsg_GetReply(msg);

    pthread_mutex_lock(&fake_lock);
    for (int i = 0; reply != NULL && fake_answer != NULL && i < fake_copies; i++)
        natsConnection_PublishString(nc, reply, fake_answer);
    pthread_mutex_unlock(&fake_lock);
    natsConnection_Flush(nc);
    natsMsg_Destroy(msg);
}

/* Its query answers are never a QueryReply. */
static void fake_on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    static const char junk[] = "\xff\xff\xff\xff\x0f not protobuf";
    const char *reply = natsMsg_GetReply(msg);

    if (reply != NULL)
        natsConnection_Publish(nc, reply, junk, sizeof(junk) - 1);
    natsConnection_Flush(nc);
    natsMsg_Destroy(msg);
}

static void fake_set(const char *answer, int copies)
{
    pthread_mutex_lock(&fake_lock);
    free(fake_answer);
    fake_answer = answer != NULL ? strdup(answer) : NULL;
    fake_copies = copies;
    pthread_mutex_unlock(&fake_lock);
}

static void fake_beat(natsConnection *nc)
{
    check(natsConnection_PublishString(nc, CONTROL ".heartbeat",
                                       "{\"replica\":\"" FAKE_ID
                                       "\",\"leaving\":false}") == NATS_OK,
          "fake heartbeat");
    natsConnection_Flush(nc);
}

/*
 * The real replicas' figures, whatever the fake sent; returns invalid_answers.
 * all_routes: /api/nodes and /metrics too (each waits QUERY_TIMEOUT for an ignored fake).
 */
static json_int_t check_sane_stats(int port, const char *what, bool fake_counts, bool all_routes)
{
    json_t *j = get(port, "/api/stats");
    json_int_t want_answered = fake_counts ? 3 : 2;

    check(jint(j, "replicas.expected") == 3, "%s: expected %lld", what,
          jint(j, "replicas.expected"));
    check(jint(j, "replicas.answered") == want_answered, "%s: answered %lld", what,
          jint(j, "replicas.answered"));
    if (!fake_counts) {
        check(jint(j, "total_events") == EVENTS_TOTAL, "%s: total_events %lld", what,
              jint(j, "total_events"));
        check(jint(j, "total_batches") == 19, "%s: total_batches %lld", what,
              jint(j, "total_batches"));
        check(jint(j, "events_by_type.exit") == EVENTS_TOTAL, "%s: events_by_type.exit", what);
        check(jint(j, "rejected_total") == 0, "%s: rejected_total", what);
        check(jint(j, "node_count") == 2, "%s: node_count %lld", what, jint(j, "node_count"));
        check(json_object_size(tu_jpath(j, "nodes")) == 2, "%s: nodes", what);
        check(jint(j, "lost_batches") == 1, "%s: lost_batches %lld", what, jint(j, "lost_batches"));
    }
    /* The real replicas' own entries are theirs, never summed with anything. */
    json_int_t real_events = 0;
    size_t i;
    json_t *e;
    json_array_foreach(tu_jpath(j, "replicas.list"), i, e)
    {
        const char *id = json_string_value(json_object_get(e, "replica"));
        check(id != NULL, "%s: every listed replica has an id", what);
        if (strcmp(id, FAKE_ID) != 0)
            real_events += json_integer_value(json_object_get(e, "events"));
    }
    check(real_events == EVENTS_TOTAL, "%s: the real replicas hold %lld events", what, real_events);
    json_int_t invalid = jint(j, "replicas.invalid_answers");
    json_decref(j);
    if (!all_routes)
        return invalid;

    /* The other routes built from the same gather still answer. */
    j = get(port, "/api/nodes");
    check(jint(j, "count") == 2, "%s: /api/nodes count %lld", what, jint(j, "count"));
    json_decref(j);
    struct tu_http m = {0};
    check(tu_http_get(port, "/metrics", NULL, &m) == 0 && m.status == 200, "%s: /metrics", what);
    check(m.body != NULL && strstr(m.body, "ebpf_aggregator_invalid_answers_total ") != NULL,
          "%s: invalid answers in /metrics", what);
    tu_http_free(&m);
    return invalid;
}

Test(aggregator_cluster, a_fake_replica_cannot_corrupt_the_real_answers)
{
    natsConnection *fake = NULL;
    natsSubscription *ssub = NULL, *qsub = NULL;

    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "events never all ingested");
    check(natsConnection_ConnectTo(&fake, nats_url) == NATS_OK, "fake connects");
    check(natsConnection_Subscribe(&ssub, fake, CONTROL ".stats", fake_on_stats, NULL) == NATS_OK &&
              natsConnection_Subscribe(&qsub, fake, CONTROL ".query", fake_on_query, NULL) ==
                  NATS_OK,
          "fake subscribes");
    natsConnection_Flush(fake);
    fake_beat(fake);
    check(wait_expected(agg_port[0], 3, 3000), "the fake is taken for a replica");

    static char many_keys[16384], long_name[4096];
    size_t n = (size_t)snprintf(many_keys, sizeof(many_keys),
                                "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":{");
    for (int k = 0; k < 400; k++)
        n += (size_t)snprintf(many_keys + n, sizeof(many_keys) - n, "%s\"k%d\":1", k ? "," : "", k);
    snprintf(many_keys + n, sizeof(many_keys) - n,
             "},\"nodes\":{\"instances_dropped\":0,\"instances\":[]}}");
    char name[2048];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    snprintf(long_name, sizeof(long_name),
             "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":{\"events\":1},"
             "\"nodes\":{\"instances_dropped\":0,\"instances\":[{\"node\":\"%s\","
             "\"instance\":\"i\"}]}}",
             name);
#define EMPTY_NODES "\"nodes\":{\"instances_dropped\":0,\"instances\":[]}"
    const struct {
        const char *what, *answer;
    } bad[] = {
        {"not JSON", "{\"replica\":\"" FAKE_ID "\",\"counters\":"},
        {"not an object", "[1,2,3]"},
        {"negative counters", "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":"
                              "{\"batches\":-5,\"events\":-100}," EMPTY_NODES "}"},
        {"counters past INT64_MAX", "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":"
                                    "{\"events\":99999999999999999999}," EMPTY_NODES "}"},
        {"wrong types", "{\"replica\":\"" FAKE_ID "\",\"connected\":\"yes\",\"counters\":"
                        "{\"batches\":\"many\",\"events\":[1]}," EMPTY_NODES "}"},
        {"string counters", "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":"
                            "{\"events\":\"" FAKE_MAX_STR "\"}," EMPTY_NODES "}"},
        {"no replica id", "{\"connected\":true,\"counters\":{}," EMPTY_NODES "}"},
        {"a replica id that is not one", "{\"replica\":{\"x\":1},\"connected\":true,"
                                         "\"counters\":{}," EMPTY_NODES "}"},
        {"a negative node counter", "{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":"
                                    "{},\"nodes\":{\"instances_dropped\":0,\"instances\":"
                                    "[{\"node\":\"" NODE_A "\",\"instance\":\"x\","
                                    "\"events\":-1}]}}"},
        {"a node table that is not one", "{\"replica\":\"" FAKE_ID "\",\"connected\":true,"
                                         "\"counters\":{},\"nodes\":[1]}"},
        {"too many counters", many_keys},
        {"a huge node name", long_name},
        {"a huge error", NULL},
    };
    static char huge_error[8192];
    n = (size_t)snprintf(huge_error, sizeof(huge_error),
                         "{\"replica\":\"" FAKE_ID "\",\"error\":\"");
    memset(huge_error + n, 'e', 4096);
    snprintf(huge_error + n + 4096, sizeof(huge_error) - n - 4096, "\"}");

    json_int_t invalid = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fake_set(bad[i].answer != NULL ? bad[i].answer : huge_error, 1);
        fake_beat(fake);
        json_int_t now = check_sane_stats(agg_port[0], bad[i].what, false, i % 4 == 0);
        check(now > invalid, "%s: not counted as invalid (%lld)", bad[i].what, now);
        invalid = now;
    }

    /* Its query answers are not QueryReplies: ignored, the real answer is whole. */
    fake_beat(fake);
    json_t *j = get(agg_port[0], "/api/events?limit=1000");
    check(jint(j, "total_count") == EVENTS_TOTAL, "events total_count %lld",
          jint(j, "total_count"));
    check(json_array_size(json_object_get(j, "events")) == EVENTS_TOTAL, "events count");
    check(jint(j, "replicas.answered") == 2, "events answered %lld", jint(j, "replicas.answered"));
    json_decref(j);

    /* Many answers to one request count once: the real peer is still waited for. */
    fake_set("{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":{\"events\":0},"
             "\"nodes\":{\"instances_dropped\":0,\"instances\":[]}}",
             20);
    fake_beat(fake);
    check_sane_stats(agg_port[0], "twenty copies of a valid answer", true, true);
    /* A flood: more than there can be peers, queued faster than they are read. */
    fake_set("{\"replica\":\"" FAKE_ID "\",\"connected\":true,\"counters\":{\"events\":0},"
             "\"nodes\":{\"instances_dropped\":0,\"instances\":[]}}",
             1000);
    fake_beat(fake);
    check_sane_stats(agg_port[0], "a thousand copies of a valid answer", true, false);
    j = get(agg_port[0], "/api/stats");
    check(jint(j, "total_events") == EVENTS_TOTAL, "copies: total_events %lld",
          jint(j, "total_events"));
    json_decref(j);

    /* Valid but absurd: it may claim INT64_MAX for itself; sums saturate, never wrap. */
    fake_set("{\"replica\":\"" FAKE_ID
             "\",\"connected\":true,\"counters\":{\"batches\":" FAKE_MAX_STR
             ",\"events\":" FAKE_MAX_STR ",\"events_by_type\":{\"exit\":" FAKE_MAX_STR
             "},\"rejected\":{\"malformed_json\":" FAKE_MAX_STR ",\"bad_metadata\":" FAKE_MAX_STR
             "},\"history\":{\"evicted_count\":" FAKE_MAX_STR ",\"evicted_age\":" FAKE_MAX_STR
             "},\"made_up\":5},\"nodes\":{\"instances_dropped\":" FAKE_MAX_STR
             ",\"instances\":[{\"node\":\"" NODE_A "\",\"instance\":\"ffffffffffffffff\","
             "\"batches\":" FAKE_MAX_STR ",\"events\":" FAKE_MAX_STR ",\"min_seq\":1,"
             "\"max_seq\":" FAKE_MAX_STR ",\"agent_drops\":" FAKE_MAX_STR "}]}}",
             1);
    fake_beat(fake);
    check_sane_stats(agg_port[0], "INT64_MAX counters", true, true);
    j = get(agg_port[0], "/api/stats");
    check(jint(j, "total_events") == INT64_MAX, "saturated total_events %lld",
          jint(j, "total_events"));
    check(jint(j, "total_batches") == INT64_MAX, "saturated total_batches");
    check(jint(j, "rejected_total") == INT64_MAX, "saturated rejected_total %lld",
          jint(j, "rejected_total"));
    check(jint(j, "evictions") == INT64_MAX, "saturated evictions %lld", jint(j, "evictions"));
    check(jint(j, "instances_dropped") == INT64_MAX, "saturated instances_dropped");
    /* (NODE_A has dots: no jint() path.) */
    json_t *na = json_object_get(tu_jpath(j, "nodes"), NODE_A), *nb = tu_jpath(j, "nodes." NODE_B);
    check(json_integer_value(json_object_get(na, "events")) == INT64_MAX,
          "saturated node events %lld", json_integer_value(json_object_get(na, "events")));
    check(jint(nb, "events") == EVENTS_B, "the other node untouched: %lld", jint(nb, "events"));
    check(jint(j, "lost_batches") >= 1 && jint(j, "agent_drops") == INT64_MAX,
          "saturated node sums");
    check(tu_jpath(j, "made_up") == NULL, "counters this replica does not know are left out");
    json_decref(j);
    j = get(agg_port[0], "/api/nodes");
    na = json_object_get(tu_jpath(j, "nodes"), NODE_A);
    check(json_integer_value(json_object_get(na, "batches")) == INT64_MAX, "/api/nodes saturated");
    json_decref(j);

    /* The real replica answering its peer directly is unaffected by all of it. */
    fake_set(NULL, 0);
    j = get(agg_port[1], "/api/events");
    check(jint(j, "total_count") == EVENTS_TOTAL, "replica 1 total_count %lld",
          jint(j, "total_count"));
    json_decref(j);

    natsConnection_Close(fake); /* first: see bus_sub_end() */
    natsSubscription_Destroy(qsub);
    natsSubscription_Destroy(ssub);
    natsConnection_Destroy(fake);
    fake_set(NULL, 0);
}

/* Its flows answers say it could not run the query. */
static void fake_on_flows(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    const char *reply = natsMsg_GetReply(msg);

    if (reply != NULL)
        natsConnection_PublishString(nc, reply,
                                     "{\"replica\":\"" FAKE_ID
                                     "\",\"error\":\"out of memory running the query\"}");
    natsConnection_Flush(nc);
    natsMsg_Destroy(msg);
}

/* A replica that could not run the query answered, but its share is missing: partial. */
Test(aggregator_cluster, a_replica_that_fails_the_query_makes_the_answer_partial)
{
    natsConnection *fake = NULL;
    natsSubscription *fsub = NULL;

    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "events never all ingested");
    check(natsConnection_ConnectTo(&fake, nats_url) == NATS_OK, "fake connects");
    check(natsConnection_Subscribe(&fsub, fake, CONTROL ".flows", fake_on_flows, NULL) == NATS_OK,
          "fake subscribes");
    natsConnection_Flush(fake);
    fake_beat(fake);
    check(wait_expected(agg_port[0], 3, 3000), "the fake is taken for a replica");
    fake_beat(fake);
    json_t *j = get(agg_port[0], "/api/flows");
    check(jint(j, "replicas.answered") == 2 && jint(j, "replicas.expected") == 3,
          "answered %lld of %lld", jint(j, "replicas.answered"), jint(j, "replicas.expected"));
    check(json_is_true(json_object_get(j, "partial")), "an answer without a share is partial");
    json_decref(j);
    natsConnection_Close(fake); /* first: see bus_sub_end() */
    natsSubscription_Destroy(fsub);
    natsConnection_Destroy(fake);
}

/* Sends GET path on a new connection (Connection: close) without reading the reply. */
static int send_get(int port, const char *path)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    char req[256];
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    check(fd >= 0, "socket");
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect :%d", port);
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
                     path);
    check(write(fd, req, (size_t)n) == n, "write request");
    return fd;
}

/* Reads the whole reply on fd and parses its JSON body. */
static json_t *read_json_reply(int fd, int *status)
{
    static char raw[1 << 20];
    size_t len = 0;
    ssize_t n;

    while ((n = read(fd, raw + len, sizeof(raw) - 1 - len)) > 0)
        len += (size_t)n;
    raw[len] = '\0';
    close(fd);
    char *body = strstr(raw, "\r\n\r\n");
    *status = 0;
    check(body != NULL && sscanf(raw, "HTTP/1.1 %d", status) == 1, "bad reply: %.200s", raw);
    return json_loads(body + 4, 0, NULL);
}

Test(aggregator_cluster, a_silent_peer_does_not_block_other_requests)
{
    /* Stopped, not dead: its heartbeat stays fresh, so it is expected but never answers. */
    check(kill(agg_pid[1], SIGSTOP) == 0, "SIGSTOP");
    uint64_t t0 = tu_mono_ms();
    int fd = send_get(agg_port[0], "/api/events");
    unsigned served = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    /* While the query waits for the peer (QUERY_TIMEOUT=400ms), /health answers: had it
     * waited behind the query, the query's answer would be here before its own. */
    while (poll(&pfd, 1, 0) == 0) {
        int status = 0;
        json_t *h = tu_get_json(agg_port[0], "/health", &status);
        json_decref(h);
        check(status == 200, "/health: %d", status);
        /* Counts only if the query was still waiting when /health was answered. */
        if (poll(&pfd, 1, 0) == 0)
            served++;
        check(tu_mono_ms() - t0 < 5000, "the query never finished");
    }
    int status = 0;
    json_t *j = read_json_reply(fd, &status);
    uint64_t took = tu_mono_ms() - t0;
    kill(agg_pid[1], SIGCONT);
    check(j != NULL && status == 200, "/api/events: status %d", status);
    check(jint(j, "replicas.answered") == 1 && jint(j, "replicas.expected") == 2,
          "answered %lld expected %lld", jint(j, "replicas.answered"),
          jint(j, "replicas.expected"));
    check(json_is_true(json_object_get(j, "partial")), "flagged partial");
    json_decref(j);
    check(took >= 300, "the query waited for the peer (%" PRIu64 " ms)", took);
    check(served >= 1, "no /health answer while the query waited %" PRIu64 " ms", took);

    /* The pool's counters are in /api/stats and /metrics. */
    j = get(agg_port[0], "/api/stats");
    check(json_is_integer(json_object_get(json_object_get(j, "queries"), "rejected")),
          "queries.rejected in /api/stats");
    /* So is the string table's: the names of every node and pod, bounded. */
    check(jint(j, "strings.held") > 0 && jint(j, "strings.bytes") > 0 &&
              json_is_integer(json_object_get(json_object_get(j, "strings"), "refused")),
          "strings in /api/stats");
    json_decref(j);
    struct tu_http m = {0};
    check(tu_http_get(agg_port[0], "/metrics", NULL, &m) == 0 && m.status == 200, "/metrics");
    check(m.body != NULL && strstr(m.body, "ebpf_aggregator_queries_rejected_total 0") != NULL,
          "rejected counter in /metrics");
    check(m.body != NULL && strstr(m.body, "ebpf_aggregator_intern_refused_total 0") != NULL,
          "the string table's refusals in /metrics");
    tu_http_free(&m);
}

Test(aggregator_cluster, a_replica_stopping_cleanly_is_dropped_at_once)
{
    uint64_t t0 = tu_mono_ms();
    check(kill(agg_pid[1], SIGTERM) == 0, "SIGTERM");
    /* Dropped on its leaving heartbeat, not by expiry after CLUSTER_PEER_TTL_MS: the
     * survivor's log says which (a loaded machine may take longer than a TTL to deliver it,
     * so the time alone cannot tell). */
    check(wait_expected(agg_port[0], 1, 10000), "peer still expected after it left");
    uint64_t dropped_ms = tu_mono_ms() - t0;
    check(tu_wait_exit(agg_pid[1], 10000) == 0, "clean exit on SIGTERM");
    agg_pid[1] = -1;
    char *log = tu_read_file(logs[0]);
    check(log != NULL && strstr(log, " left\n") != NULL && strstr(log, " expired (") == NULL,
          "dropped by expiry, not by leaving (after %" PRIu64 " ms)", dropped_ms);
    free(log);
    json_t *j = get(agg_port[0], "/api/events");
    check(jint(j, "replicas.answered") == 1 && jint(j, "replicas.expected") == 1, "alone");
    json_decref(j);
}

/*
 * A replica that stops cleanly hands its node table to a peer: the batches it
 * received still count as received, so a rolling restart shows no loss.
 */
Test(aggregator_cluster, a_replica_stopping_cleanly_hands_its_batches_over)
{
    enum { BATCHES = 40, PER_BATCH = 5 };
    for (uint64_t seq = 1; seq <= BATCHES; seq++) {
        struct event *ev = make_events(NODE_A, PER_BATCH, 100);
        /* A connection in each batch, to one of 8 addresses: both replicas hold flow buckets. */
        memset(&ev[0].u, 0, sizeof(ev[0].u)); /* it was an exit's */
        ev[0].type = EVENT_CONNECTION;
        ev[0].status = EVENT_STATUS_ESTABLISHED;
        ev[0].protocol = IPPROTO_TCP;
        ev[0].family = EVENT_FAMILY_IPV4;
        memcpy(ev[0].saddr, (uint8_t[]){10, 0, 0, 1}, 4);
        memcpy(ev[0].daddr, (uint8_t[]){10, 0, 1, (uint8_t)(seq % 8)}, 4);
        ev[0].dport = 80;
        ev[0].u.conn.latency_ns = 100000;
        publish_batch(NODE_A, "aaaaaaaaaaaaaaaa", seq, ev, PER_BATCH);
        free(ev);
    }
    /* Refused messages, over both replicas: their count must outlive the one that stops. */
    enum { REFUSED = 20 };
    static const char garbage[] = "\xff\xff\xff\xff no protobuf";
    json_t *st = get(agg_port[0], "/api/stats");
    json_int_t refused_before = jint(st, "rejected_total");
    json_decref(st);
    for (int i = 0; i < REFUSED; i++)
        publish_raw("ebpf.events.refused", BUS_CONTENT_TYPE_PROTOBUF, garbage, sizeof(garbage) - 1,
                    "refused", NULL, 0, 0);
    natsConnection_Flush(pub);
    check(wait_total_events(agg_port[0], BATCHES * PER_BATCH, 5000), "events never all ingested");
    json_int_t refused = 0;
    for (uint64_t dl = tu_mono_ms() + 5000; refused < refused_before + REFUSED; usleep(20000)) {
        check(tu_mono_ms() < dl, "rejected_total %lld, want %lld", refused,
              refused_before + REFUSED);
        st = get(agg_port[0], "/api/stats");
        refused = jint(st, "rejected_total");
        json_decref(st);
    }
    st = get(agg_port[0], "/api/stats");
    json_t *list = json_object_get(json_object_get(st, "replicas"), "list");
    for (size_t i = 0; i < json_array_size(list); i++)
        check(jint(json_array_get(list, i), "batches") > 0, "a replica got no batch");
    json_int_t buckets = jint(json_object_get(st, "flows"), "edge_minutes");
    check(buckets > 0, "no flow bucket: %s", tu_jdump(st));
    json_decref(st);
    json_t *flows_before = get(agg_port[0], "/api/flows?group_by=pod&limit=100000");

    check(tu_stop(agg_pid[1], 5000) == 0, "clean exit on SIGTERM");
    agg_pid[1] = -1;
    check(wait_expected(agg_port[0], 1, 2000), "peer still expected after it left");
    json_t *j = get(agg_port[0], "/api/nodes");
    json_t *a = json_object_get(json_object_get(j, "nodes"), NODE_A);
    check(jint(a, "batches") == BATCHES, "batches %lld of %d", jint(a, "batches"), BATCHES);
    check(jint(a, "lost_batches") == 0, "lost_batches %lld", jint(a, "lost_batches"));
    check(jint(a, "events") == BATCHES * PER_BATCH, "events %lld", jint(a, "events"));
    json_decref(j);
    /* Its history left with it, and says so: what is still held plus what departed is all. */
    j = get(agg_port[0], "/api/stats");
    json_int_t held = jint(j, "total_events"), departed = jint(j, "history_departed");
    check(departed > 0 && held + departed == BATCHES * PER_BATCH,
          "history_departed %lld + total_events %lld != %d", departed, held, BATCHES * PER_BATCH);
    /* Not its flows: it handed its minutes over, and the map answers as before (the two shares'
     * buckets of one edge and minute now one). */
    json_int_t kept = jint(json_object_get(j, "flows"), "edge_minutes"),
               gone = jint(j, "flows_departed");
    check(gone == 0 && kept > 0 && kept <= buckets,
          "flows_departed %lld, edge_minutes %lld (%lld before)", gone, kept, buckets);
    json_t *flows_after = get(agg_port[0], "/api/flows?group_by=pod&limit=100000");
    json_t *eb = json_object_get(flows_before, "edges"),
           *ea = json_object_get(flows_after, "edges");
    check(json_array_size(eb) > 0 && json_equal(eb, ea), "flows before the stop: %s\nafter: %s",
          tu_jdump(eb), tu_jdump(ea));
    json_decref(flows_before);
    json_decref(flows_after);
    /* The refused messages the leaver counted are still counted: it handed its counters over. */
    check(jint(j, "rejected_total") == refused,
          "rejected_total %lld after the handover, %lld before", jint(j, "rejected_total"),
          refused);
    json_decref(j);
    struct tu_http m = {0};
    char want[64];
    snprintf(want, sizeof(want), "ebpf_aggregator_history_departed_total %lld", departed);
    check(tu_http_get(agg_port[0], "/metrics", NULL, &m) == 0 && m.body && strstr(m.body, want),
          "%s in /metrics", want);
    snprintf(want, sizeof(want), "ebpf_aggregator_flows_departed_total %lld", gone);
    check(strstr(m.body, want), "%s in /metrics", want);
    tu_http_free(&m);
    char *log = tu_read_file(logs[1]);
    check(log != NULL && strstr(log, "node table handed over to replica") != NULL &&
              strstr(log, "flow buckets handed over to the replicas that remain; 0 leave") != NULL,
          "the leaving replica does not say it handed over: %s", log ? log : "(no log)");
    free(log);
}

Test(aggregator_cluster, ready_follows_the_nats_connection)
{
    tu_stop(nats_pid, 5000);
    nats_pid = -1;
    check(tu_wait_http(agg_port[0], "/ready", 503, 5000), "/ready is 503 without NATS");
    check(tu_wait_http(agg_port[0], "/health", 200, 1000), "still alive");
    /* Queries still answer, alone. */
    json_t *j = get(agg_port[0], "/api/events");
    check(jint(j, "replicas.answered") == 1, "answers alone while disconnected");
    json_decref(j);
}

static char small_conf[128];

/* A server whose messages hold 32 KiB at most: replicas' answers must be cut to fit. */
static void cluster_up_small_payload(void)
{
    snprintf(small_conf, sizeof(small_conf), "/tmp/test_aggregator_cluster.%d.conf", getpid());
    FILE *f = fopen(small_conf, "w");
    cr_assert(f != NULL);
    fputs("max_payload: 32768\n", f);
    fclose(f);
    const char *const args[] = {"-c", small_conf, NULL};
    cluster_up_with(args);
}

static void cluster_down_small_payload(void)
{
    cluster_down();
    unlink(small_conf);
}

Test(aggregator_small_payload, answers_larger_than_a_message_still_page_exactly,
     .init = cluster_up_small_payload, .fini = cluster_down_small_payload, .timeout = 60)
{
    /* A 32 KiB answer holds about 400 of these events. The queue group gives each replica a
     * random share of the batches: with 160 of them, the peer's share (80 on average, 6.3 the
     * standard deviation) takes several answers whatever the draw. */
    enum { BATCHES = 160, PER_BATCH = 50, TOTAL = BATCHES * PER_BATCH };
    for (uint64_t seq = 1; seq <= BATCHES; seq++) {
        struct event *ev = make_events(seq % 2 ? NODE_A : NODE_B, PER_BATCH, 500);
        publish_batch(seq % 2 ? NODE_A : NODE_B, seq % 2 ? "aaaaaaaaaaaaaaaa" : "bbbbbbbbbbbbbbbb",
                      (seq + 1) / 2, ev, PER_BATCH);
        free(ev);
    }
    natsConnection_Flush(pub);
    check(wait_total_events(agg_port[0], TOTAL, 5000), "events never all ingested");

    /* One page cannot carry everything: each peer sends what fits and says it has more. */
    static bool seen[1 << 16];
    size_t nseen = 0, pages = 0;
    char path[256] = "/api/events?limit=10000";
    for (;;) {
        json_t *j = get(agg_port[0], path);
        json_t *events = json_object_get(j, "events");
        size_t i;
        json_t *e;
        check(jint(j, "total_count") == TOTAL, "total_count %lld", jint(j, "total_count"));
        check(jint(j, "replicas.answered") == 2, "both answered");
        json_array_foreach(events, i, e)
        {
            uint64_t id = strtoull(json_string_value(json_object_get(e, "id")), NULL, 16);
            check(id < (1 << 16) && !seen[id], "event %016" PRIx64 " twice", id);
            seen[id] = true;
            nseen++;
        }
        pages++;
        json_t *cur = json_object_get(j, "next_cursor");
        if (json_is_null(cur)) {
            json_decref(j);
            break;
        }
        snprintf(path, sizeof(path), "/api/events?limit=10000&cursor=%s", json_string_value(cur));
        json_decref(j);
        check(pages < 1000, "paging does not end");
    }
    check(nseen == TOTAL, "paged %zu of %d", nseen, TOTAL);
    json_t *st = get(agg_port[1], "/api/stats");
    char *shares = json_dumps(json_object_get(json_object_get(st, "replicas"), "list"), 0);
    check(pages > 1, "the payload limit never cut an answer (the replicas held: %s)", shares);
    free(shares);
    json_decref(st);
}

Test(aggregator_small_payload, flows_answers_larger_than_a_message_come_in_parts,
     .init = cluster_up_small_payload, .fini = cluster_down_small_payload, .timeout = 60)
{
    /* 1,000 edges of about 300 bytes each: every replica's share is several messages. */
    enum { BATCHES = 20, PER_BATCH = 50, TOTAL = BATCHES * PER_BATCH };
    for (uint64_t seq = 1; seq <= BATCHES; seq++) {
        const char *node = seq % 2 ? NODE_A : NODE_B;
        struct event *ev = make_events(node, PER_BATCH, 500);
        for (size_t i = 0; i < PER_BATCH; i++) {
            size_t n = (seq - 1) * PER_BATCH + i;
            ev[i].type = EVENT_CONNECTION;
            ev[i].status = EVENT_STATUS_ESTABLISHED;
            ev[i].family = EVENT_FAMILY_IPV4;
            ev[i].protocol = 6;
            ev[i].dport = 443;
            ev[i].daddr[0] = 10;
            ev[i].daddr[1] = (uint8_t)(n >> 8);
            ev[i].daddr[2] = (uint8_t)n;
            ev[i].daddr[3] = 1;
            memset(&ev[i].u, 0, sizeof(ev[i].u));
            ev[i].u.conn.latency_ns = 1000 + n;
        }
        publish_batch(node, seq % 2 ? "aaaaaaaaaaaaaaaa" : "bbbbbbbbbbbbbbbb", (seq + 1) / 2, ev,
                      PER_BATCH);
        free(ev);
    }
    natsConnection_Flush(pub);
    check(wait_total_events(agg_port[0], TOTAL, 5000), "events never all ingested");

    int64_t count[2];
    for (int r = 0; r < 2; r++) {
        json_t *j = get(agg_port[r], "/api/flows?group_by=pod&limit=100000");
        check(jint(j, "replicas.answered") == 2 && !json_is_true(json_object_get(j, "partial")),
              "replica %d: both answered, whole", r);
        count[r] = jint(j, "count");
        size_t i;
        json_t *e;
        int64_t connections = 0;
        json_array_foreach(json_object_get(j, "edges"), i, e)
        {
            connections += json_integer_value(json_object_get(e, "connections"));
        }
        check(connections == TOTAL, "replica %d: %lld connections of %d", r, (long long)connections,
              TOTAL);
        json_decref(j);
    }
    check(count[0] == TOTAL && count[1] == TOTAL, "edges %lld and %lld of %d", (long long)count[0],
          (long long)count[1], TOTAL);
}

/* No fixture: this one starts NATS late on purpose. */
Test(aggregator_late_nats, starts_without_nats_and_serves_once_it_comes, .fini = cluster_down,
     .timeout = 60)
{
    nats_port = tu_free_port();
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    for (int i = 0; i <= NREPLICAS; i++)
        snprintf(logs[i], sizeof(logs[i]), "/tmp/test_aggregator_cluster.%d.%d.log", getpid(), i);
    agg_pid[0] = start_replica(0);
    check(agg_pid[0] > 0, "cannot start the replica");
    check(tu_wait_http(agg_port[0], "/health", 200, 10000), "alive without NATS");
    check(tu_wait_http(agg_port[0], "/ready", 503, 1000), "not ready without NATS");
    json_t *j = get(agg_port[0], "/api/events");
    check(jint(j, "replicas.answered") == 1 && jint(j, "count") == 0, "answers alone");
    json_decref(j);

    nats_pid = tu_nats_start(nats_port, NULL, logs[NREPLICAS]);
    check(nats_pid > 0, "nats-server did not start");
    check(tu_wait_http(agg_port[0], "/ready", 200, 15000), "ready once NATS is up");
    check(natsConnection_ConnectTo(&pub, nats_url) == NATS_OK, "test publisher cannot connect");
    /* Subscriptions made while disconnected took effect on connect. */
    publish_two_nodes();
    check(wait_total_events(agg_port[0], EVENTS_TOTAL, 5000), "ingests after a late connect");
    agg_pid[1] = start_replica(1);
    check(wait_expected(agg_port[0], 2, 10000), "sees a peer after a late connect");
}

/* ---- shutdown with a backlog ---- */

static char big_conf[128];

/* A server that carries 10,000-event batches; replicas are started by the test. */
static void nats_up_big_payload(void)
{
    nats_port = tu_free_port();
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    for (int i = 0; i <= NREPLICAS; i++)
        snprintf(logs[i], sizeof(logs[i]), "/tmp/test_aggregator_cluster.%d.%d.log", getpid(), i);
    snprintf(big_conf, sizeof(big_conf), "/tmp/test_aggregator_cluster.%d.conf", getpid());
    FILE *f = fopen(big_conf, "w");
    cr_assert(f != NULL);
    fputs("max_payload: 8388608\nmax_pending: 268435456\n", f);
    fclose(f);
    const char *const args[] = {"-c", big_conf, NULL};
    nats_pid = tu_nats_start(nats_port, args, logs[NREPLICAS]);
    cr_assert(nats_pid > 0, "nats-server did not start");
    check(natsConnection_ConnectTo(&pub, nats_url) == NATS_OK, "test publisher cannot connect");
    for (int i = 0; i < NREPLICAS; i++)
        agg_pid[i] = -1;
}

static void nats_down_big_payload(void)
{
    cluster_down();
    unlink(big_conf);
}

TestSuite(aggregator_shutdown, .init = nats_up_big_payload, .fini = nats_down_big_payload,
          .timeout = 240);

/*
 * SIGTERM while far more is queued than the drain time covers: the drain
 * gives up, and the store and node table are freed only once no handler can
 * reach them. Run it with EBPF_AGGREGATOR_BIN pointing at a sanitizer build
 * to see a use-after-free, not only a crash.
 */
Test(aggregator_shutdown, sigterm_with_large_batches_queued_exits_cleanly)
{
    /* DRAIN_MS: the aggregator's drain time after SIGTERM (AGGREGATOR_DRAIN_MS). */
    enum { ROUNDS = 3, PER_BATCH = BUS_MAX_BATCH_EVENTS, BATCHES = 300, DRAIN_MS = 2000 };
    struct event *ev = make_events(NODE_A, PER_BATCH, 1000);
    struct buf b;

    buf_init(&b);
    for (int round = 0; round < ROUNDS; round++) {
        unlink(logs[0]);
        agg_pid[0] = start_replica(0);
        check(agg_pid[0] > 0, "round %d: cannot start the aggregator", round);
        check(tu_wait_http(agg_port[0], "/ready", 200, 10000), "round %d: never ready", round);
        /* Published until the backlog is more than twice what the replica ingests in its
         * drain time (as fast as it ingests meanwhile; a sanitizer build is slow, and then
         * needs far fewer batches than a plain one), or BATCHES. */
        uint64_t started = tu_mono_ms(), seq = 0;
        json_int_t batches = 0;
        while (seq < BATCHES) {
            struct event_batch_meta meta = {.node = NODE_A,
                                            .agent_instance = "dddddddddddddddd",
                                            .sequence = ++seq,
                                            .sent_at_ns = tu_now_ns()};
            char subject[256];
            /* New ids each batch: stored, not dropped as duplicates. */
            for (size_t i = 0; i < PER_BATCH; i++)
                ev[i].id = next_id++;
            buf_reset(&b);
            cr_assert(event_batch_encode(&meta, ev, PER_BATCH, &b) == 0);
            bus_node_subject("ebpf.events", NODE_A, subject, sizeof(subject));
            publish_raw(subject, BUS_CONTENT_TYPE_PROTOBUF, b.data, b.len, NODE_A,
                        "dddddddddddddddd", seq, PER_BATCH);
            if (seq % 10)
                continue;
            json_t *j = tu_get_json(agg_port[0], "/api/stats", NULL);
            batches = j ? jint(j, "total_batches") : 0;
            json_decref(j);
            uint64_t elapsed = tu_mono_ms() - started + 1;
            if (batches >= 1 && (uint64_t)(seq - (uint64_t)batches) >= 20 &&
                (seq - (uint64_t)batches) * elapsed > 2 * (uint64_t)batches * DRAIN_MS)
                break;
        }
        check(natsConnection_FlushTimeout(pub, 30000) == NATS_OK, "round %d: flush", round);
        cr_log_info("round %d: %" PRIu64 " batches published, %lld ingested", round, seq,
                    (long long)batches);
        /* Ingesting, with most of the backlog still queued. */
        uint64_t deadline = tu_mono_ms() + 10000;
        while (batches < 1 && tu_mono_ms() < deadline) {
            json_t *j = tu_get_json(agg_port[0], "/api/stats", NULL);
            batches = j ? jint(j, "total_batches") : 0;
            json_decref(j);
            if (batches < 1)
                usleep(10000);
        }
        if (batches < 1) { /* what the replica did instead (its log is printed on failure) */
            json_t *j = tu_get_json(agg_port[0], "/api/stats", NULL);
            char *dump = j ? json_dumps(j, JSON_COMPACT) : NULL;
            cr_log_error("stats: %s", dump ? dump : "(no answer)");
            free(dump);
            json_decref(j);
        }
        check(batches >= 1, "round %d: nothing ingested", round);

        int status = tu_stop(agg_pid[0], 60000);
        agg_pid[0] = -1;
        char *log = tu_read_file(logs[0]);
        check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "round %d: exit status %d (signal %d) after SIGTERM", round,
              WIFEXITED(status) ? WEXITSTATUS(status) : -1,
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        check(log != NULL && strstr(log, "SIGTERM received") != NULL, "round %d: no shutdown",
              round);
        check(strstr(log, "AddressSanitizer") == NULL && strstr(log, "runtime error") == NULL,
              "round %d: the sanitizer reported an error", round);
        free(log);
    }
    buf_free(&b);
    for (size_t i = 0; i < PER_BATCH; i++)
        event_clear(&ev[i]);
    free(ev);
}

/* Every route refuses what it does not take (the probes and the scrape too), naming itself, as
 * the agent's do, also those answered on the worker pool. */
Test(aggregator_cluster, errors_of_pooled_routes_name_the_route)
{
    const char *routes[] = {"/api/stats", "/api/nodes", "/health", "/ready", "/metrics"};
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char path[64], want[128];
        int status = 0;
        snprintf(path, sizeof(path), "%s?x=1", routes[i]);
        snprintf(want, sizeof(want), "unknown query parameter 'x' (%s takes no parameters)",
                 routes[i]);
        json_t *j = tu_get_json(agg_port[0], path, &status);
        check(status == 400, "%s: status %d", path, status);
        check(strcmp(tu_jstr(j, "error"), want) == 0, "%s: %s", path, tu_jstr(j, "error"));
        json_decref(j);
    }
}

/*
 * Tests for pkg/flows: which events count and where (client side only, each
 * connection once), endpoints in and outside Kubernetes, group_by, filters,
 * histogram percentiles and their exact merge (two halves merged equal the
 * whole, also through the exchange encoding), retention and the edge-minute
 * cap with their counters, the query string, and a query that lets ingest
 * in between its steps without counting an edge twice or missing one.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"
#include "event_json.h"
#include <jansson.h>

#include "flows.h"
#include "flows_internal.h"
#include "intern.h"

#define MIN          (60ull * 1000000000ull)
#define T0           (1764000000ull * 1000000000ull) /* a minute boundary */
#define HOUR         (60 * MIN)
#define NOW          (T0 + 10 * MIN)
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

static struct event conn(uint64_t ts, const char *pod, const char *peer_pod, uint8_t status,
                         const char *error, uint64_t latency)
{
    struct event e = {.timestamp_ns = ts,
                      .type = EVENT_CONNECTION,
                      .protocol = IPPROTO_TCP_,
                      .status = status,
                      .family = EVENT_FAMILY_IPV4,
                      .dport = 8080,
                      .node = intern("node-1")};
    e.daddr[0] = 10;
    e.daddr[3] = 7;
    e.k8s.namespace = intern("shop");
    e.k8s.pod_name = intern(pod);
    e.k8s.workload = intern("web");
    e.k8s.workload_kind = intern("Deployment");
    if (peer_pod != NULL) {
        e.peer.namespace = intern("shop");
        e.peer.pod = intern(peer_pod);
        e.peer.workload = intern("db");
        e.peer.workload_kind = intern("StatefulSet");
        e.peer.service = intern("db-svc");
    }
    e.u.conn.latency_ns = latency;
    e.u.conn.error = error != NULL ? intern(error) : NULL;
    return e;
}

static struct event closed(uint64_t ts, const char *pod, const char *peer_pod, uint8_t role,
                           uint64_t sent, uint64_t received)
{
    struct event e = conn(ts, pod, peer_pod, EVENT_STATUS_NONE, NULL, 0);
    e.type = EVENT_CLOSE;
    memset(&e.u, 0, sizeof(e.u));
    e.u.close.role = role;
    e.u.close.bytes_sent = sent;
    e.u.close.bytes_received = received;
    e.u.close.retransmits = 2;
    e.u.close.reset = EVENT_RESET_RECEIVED;
    return e;
}

static struct flows_query all(enum flows_group g)
{
    struct flows_query q = {.since_ns = 0, .until_ns = UINT64_MAX, .group_by = g, .limit = 1000};
    return q;
}

static void run(struct flows *f, const struct flows_query *q, struct flows_result *r)
{
    cr_assert_eq(flows_query(f, q, r), 0);
    flows_result_finish(r, q->status, q->limit);
}

static uint64_t error_count(const struct flows_counts *c, const char *name)
{
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS; i++)
        if (c->errors[i].error == intern(name))
            return c->errors[i].count;
    return 0;
}

Test(flows, counts_each_connection_once_from_the_client)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0 + 1, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 3000),
        conn(T0 + 2, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 5000),
        conn(T0 + 3, "web-1", "db-0", EVENT_STATUS_FAILED, "refused", 100),
        closed(T0 + 4, "web-1", "db-0", EVENT_ROLE_CLIENT, 100, 2000),
        /* The server's view of the same connection: not counted again. */
        closed(T0 + 5, "db-0", "web-1", EVENT_ROLE_SERVER, 2000, 100),
    };
    struct event accept = ev[0];
    accept.type = EVENT_ACCEPT;
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_POD);

    flows_add(f, ev, 5, NOW);
    flows_add(f, &accept, 1, NOW);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    const struct flows_edge *e = &r.edges[0];
    cr_assert_eq(e->key.src.workload, intern("web"));
    cr_assert_eq(e->key.src.pod, intern("web-1"));
    cr_assert_eq(e->key.dst.pod, intern("db-0"));
    cr_assert_eq(e->key.dst.workload_kind, intern("StatefulSet"));
    cr_assert_eq(e->key.port, 8080);
    cr_assert_eq(e->c.connections, 3);
    cr_assert_eq(e->c.established, 2);
    cr_assert_eq(e->c.failed, 1);
    cr_assert_eq(error_count(&e->c, "refused"), 1);
    cr_assert_eq(e->c.bytes_sent, 100);
    cr_assert_eq(e->c.bytes_received, 2000);
    cr_assert_eq(e->c.retransmits, 2);
    cr_assert_eq(e->c.resets, 1);
    cr_assert_eq(e->c.first_seen_ns, T0 + 1);
    cr_assert_eq(e->c.last_seen_ns, T0 + 4);
    /* 3000 and 5000 ns: the 2-4 us and 4-8 us buckets. */
    cr_assert_eq(flows_hist_percentile(e->c.hist, 50), 4096);
    cr_assert_eq(flows_hist_percentile(e->c.hist, 99), 8192);

    struct flows_stats st;
    flows_get_stats(f, &st);
    cr_assert_eq(st.events, 4);
    cr_assert_eq(st.ignored, 2);
    cr_assert_eq(st.edges, 1);
    cr_assert_eq(st.edge_minutes, 1);
    flows_result_free(&r);
    flows_free(f);
}

Test(flows, outside_kubernetes_the_workload_is_the_command_and_the_peer_an_ip)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event e = conn(T0, "x", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_WORKLOAD);
    char json[4096];
    struct buf b;

    memset(&e.k8s, 0, sizeof(e.k8s));
    strcpy(e.command, "curl");
    e.peer.dns = intern("example.com");
    flows_add(f, &e, 1, NOW);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.src.workload, intern("curl"));
    cr_assert_eq(r.edges[0].key.src.workload_kind, intern("Process"));
    cr_assert_eq(r.edges[0].key.src.node, intern("node-1"));
    buf_init(&b);
    flows_result_json(&r, &b);
    cr_assert(!b.oom);
    snprintf(json, sizeof(json), "%.*s", (int)b.len, b.data);
    cr_assert(strstr(json, "\"destination\":{\"ip\":\"10.0.0.7\",\"dns\":\"example.com\"}"), "%s",
              json);
    cr_assert(strstr(json, "\"workload_kind\":\"Process\",\"node\":\"node-1\""), "%s", json);
    buf_free(&b);
    flows_result_free(&r);
    flows_free(f);
}

/* The string table full (a process can fill it with commands of its own), a new command has
 * no name to count its connections under: they are counted as failed, never as an edge from
 * an unnamed process. */
Test(flows, a_command_the_string_table_refuses_is_counted_not_an_unnamed_edge)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event e = conn(T0, "x", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    struct flows_stats st;
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_WORKLOAD);
    size_t len = 1 << 20;
    char *fill = malloc(len + 1);
    unsigned n = 0;

    cr_assert_not_null(fill);
    memset(&e.k8s, 0, sizeof(e.k8s));
    strcpy(e.command, "curl");
    flows_add(f, &e, 1, NOW);
    /* Unique strings, halving once one is refused, until the table has no room for 4 bytes. */
    for (; len >= 4; len /= 2) {
        do
            snprintf(fill, len + 1, "%0*x", (int)len, n++);
        while (intern(fill) != NULL);
    }
    free(fill);
    strcpy(e.command, "wget");
    flows_add(f, &e, 1, NOW);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.src.workload, intern("curl"));
    cr_assert_eq(r.edges[0].c.connections, 1);
    flows_result_free(&r);
    flows_get_stats(f, &st);
    cr_assert_eq(st.events, 1);
    cr_assert_eq(st.failed, 1);
    flows_free(f);
}

/* UDP connects are neither established nor failed: the answer says how many, and the JSON
 * adds up (connections = established + failed + attempted). */
Test(flows, attempted_connections_are_counted_apart)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0 + 1, "web-1", "db-0", EVENT_STATUS_ATTEMPTED, NULL, 0),
        conn(T0 + 2, "web-1", "db-0", EVENT_STATUS_ATTEMPTED, NULL, 0),
        conn(T0 + 3, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 3000),
        conn(T0 + 4, "web-1", "db-0", EVENT_STATUS_FAILED, "refused", 100),
    };
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_POD);
    char json[4096];
    struct buf b;

    flows_add(f, ev, 4, NOW);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    buf_init(&b);
    flows_result_json(&r, &b);
    cr_assert(!b.oom);
    snprintf(json, sizeof(json), "%.*s", (int)b.len, b.data);
    cr_assert(strstr(json, "\"connections\":4,\"established\":1,\"failed\":1,\"attempted\":2,"),
              "%s", json);
    buf_free(&b);
    flows_result_free(&r);
    flows_free(f);
}

/* A command of invalid UTF-8 names its Process endpoint; the workload filter finds it by its
 * bytes and by the text the API shows for them (as "see in Live" and a user copy it). */
Test(flows, a_process_workload_is_found_by_its_shown_text)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event e = conn(T0, "x", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    struct flows_result r;
    struct flows_query q;
    char err[256] = "";

    memset(&e.k8s, 0, sizeof(e.k8s));
    strcpy(e.command, "cu\xffl");
    flows_add(f, &e, 1, NOW);
    strcpy(e.command, "curl");
    flows_add(f, &e, 1, NOW);
    static const char *hits[] = {"workload=cu%FFl", "workload=cu%EF%BF%BDl", "workload=curl"};
    for (size_t i = 0; i < sizeof(hits) / sizeof(hits[0]); i++) {
        cr_assert_eq(flows_query_parse(&q, hits[i], strlen(hits[i]), NOW, err, sizeof(err)), 0,
                     "%s", err);
        run(f, &q, &r);
        cr_assert_eq(r.count, 1, "%s: %zu edges", hits[i], r.count);
        flows_result_free(&r);
    }
    const char *miss = "workload=c%EF%BF%BDrl";
    cr_assert_eq(flows_query_parse(&q, miss, strlen(miss), NOW, err, sizeof(err)), 0, "%s", err);
    run(f, &q, &r);
    cr_assert_eq(r.count, 0, "a valid command is not shown with a U+FFFD");
    flows_result_free(&r);
    flows_free(f);
}

/* Adds what peer's store answers to q into r, through the exchange form peers answer in. */
static void add_as_a_peer_answer(struct flows *peer, const struct flows_query *q,
                                 struct flows_result *r)
{
    struct flows_result part, decoded;
    struct buf b;

    cr_assert_eq(flows_query(peer, q, &part), 0);
    buf_init(&b);
    flows_result_encode(&part, &b);
    cr_assert(!b.oom);
    cr_assert_eq(flows_result_decode(b.data, b.len, &decoded), 0);
    for (size_t i = 0; i < decoded.count; i++)
        cr_assert_eq(flows_result_add(r, &decoded.edges[i]), 0);
    buf_free(&b);
    flows_result_free(&decoded);
    flows_result_free(&part);
}

/* A stopping replica's minutes, in one chunk, merged into taker: how many. */
static uint64_t hand_over(struct flows *leaver, struct flows *taker)
{
    struct flows_handover_chunk *chunks;
    size_t n;
    uint64_t left, merged;

    cr_assert_eq(flows_handover_encode(leaver, 65536, SIZE_MAX, &chunks, &n, &left), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(flows_handover_merge(taker, chunks[0].json.data, chunks[0].json.len, NOW, &merged),
                 0);
    flows_handover_free(chunks, n);
    return merged;
}

/*
 * A command of invalid UTF-8 is one edge whichever replicas counted its connections: the
 * aggregator adds its own edges to the peers' (which crossed the bus as JSON, and so as the
 * text the API shows) and to minutes a stopping replica handed over, so both must name the
 * Process alike.
 */
Test(flows, a_process_of_invalid_utf8_is_one_edge_across_replicas)
{
    struct flows *mine = flows_new(24 * HOUR, 1000), *peer = flows_new(24 * HOUR, 1000);
    struct event e = conn(T0, "x", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    struct flows_query q = all(FLOWS_GROUP_WORKLOAD);
    struct flows_result r;

    memset(&e.k8s, 0, sizeof(e.k8s));
    strcpy(e.command, "q\xff\xfeutf");
    flows_add(mine, &e, 1, NOW);
    e.timestamp_ns += 1;
    flows_add(peer, &e, 1, NOW);
    cr_assert_eq(flows_query(mine, &q, &r), 0);
    add_as_a_peer_answer(peer, &q, &r);
    flows_result_finish(&r, q.status, q.limit);
    cr_assert_eq(r.count, 1, "%zu edges for one process", r.count);
    cr_assert_eq(r.edges[0].c.connections, 2);
    flows_result_free(&r);

    /* The peer stops and hands its minutes over: still one edge. */
    cr_assert_eq(hand_over(peer, mine), 1);
    run(mine, &q, &r);
    cr_assert_eq(r.count, 1, "%zu edges after the handover", r.count);
    cr_assert_eq(r.edges[0].c.connections, 2);
    flows_result_free(&r);
    flows_free(mine);
    flows_free(peer);
}

/*
 * Every name an event can carry crosses the exchange: a DNS name as long as its text gets
 * (escaped bytes, as any process can resolve) and a workload as long as the bus takes. One
 * such edge refused would take the replica's whole answer, or a handed-over chunk, with it.
 */
Test(flows, the_longest_names_cross_the_exchange_and_the_handover)
{
    struct flows *peer = flows_new(24 * HOUR, 1000), *taker = flows_new(24 * HOUR, 1000);
    struct event e = conn(T0, "web-1", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    struct flows_query q = all(FLOWS_GROUP_POD);
    static char dns[EVENT_DNS_NAME_MAX + 1], workload[EVENT_NAME_MAX + 1];
    struct flows_result r = {0};

    for (size_t i = 0; i < EVENT_DNS_NAME_MAX; i++)
        dns[i] = "\\255"[i % 4];
    memset(workload, 'w', EVENT_NAME_MAX);
    e.peer.dns = intern(dns);
    e.k8s.workload = intern(workload);
    flows_add(peer, &e, 1, NOW);
    add_as_a_peer_answer(peer, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.dst.dns, e.peer.dns);
    cr_assert_eq(r.edges[0].key.src.workload, e.k8s.workload);
    flows_result_free(&r);

    cr_assert_eq(hand_over(peer, taker), 1);
    run(taker, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.dst.dns, e.peer.dns);
    flows_result_free(&r);
    flows_free(peer);
    flows_free(taker);
}

Test(flows, group_by_workload_pod_and_service)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0, "web-2", "db-1", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0, "web-2", "db-1", EVENT_STATUS_ESTABLISHED, NULL, 1000),
    };
    struct flows_result r;
    struct flows_query q;

    flows_add(f, ev, 3, NOW);
    q = all(FLOWS_GROUP_POD);
    run(f, &q, &r);
    cr_assert_eq(r.count, 2);
    cr_assert_eq(r.edges[0].c.connections, 2); /* most connections first */
    cr_assert_eq(r.edges[0].key.src.pod, intern("web-2"));
    flows_result_free(&r);

    q = all(FLOWS_GROUP_WORKLOAD);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].c.connections, 3);
    cr_assert_null(r.edges[0].key.src.pod);
    cr_assert_eq(r.edges[0].key.dst.workload, intern("db"));
    flows_result_free(&r);

    q = all(FLOWS_GROUP_SERVICE);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.dst.service, intern("db-svc"));
    cr_assert_null(r.edges[0].key.dst.workload);
    flows_result_free(&r);
    flows_free(f);
}

/* Connections to one Service, some of them joined to the backend pod (whose namespace the
 * destination then has) and some not: one service edge, in the Service's namespace. */
Test(flows, one_service_is_one_edge_whether_its_backend_was_named)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0, "web-1", "api-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0, "web-1", "api-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
    };
    for (int i = 0; i < 2; i++)
        ev[i].peer.service = intern("shop/api");
    /* The second was not joined: the Service alone names the destination. */
    ev[1].peer.pod = ev[1].peer.workload = ev[1].peer.namespace = ev[1].peer.workload_kind = NULL;
    ev[1].peer.node = NULL;
    struct flows_result r;
    struct flows_query q;

    flows_add(f, ev, 2, NOW);
    q = all(FLOWS_GROUP_SERVICE);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1, "%zu service edges", r.count);
    cr_assert_eq(r.edges[0].c.connections, 2);
    cr_assert_eq(r.edges[0].key.dst.service, intern("shop/api"));
    cr_assert_eq(r.edges[0].key.dst.namespace, intern("shop"));
    flows_result_free(&r);
    flows_free(f);
}

/* The window a response gives is the one counted: whole minutes, not the asked bounds. */
Test(flows, the_response_window_is_the_minutes_counted)
{
    struct flows_query q = {.since_ns = T0 + 59 * 1000000000ull + 500000000ull,
                            .until_ns = T0 + 2 * MIN + 1000000000ull};
    struct flows_result r = {0};
    char since[40], until[40], want[128];
    struct buf b;

    buf_init(&b);
    flows_response_begin(&b, &r, &q, "1ms");
    event_format_time(T0, since);
    event_format_time(T0 + 3 * MIN - 1, until);
    snprintf(want, sizeof(want), "\"window\":{\"since\":\"%s\",\"until\":\"%s\"}", since, until);
    cr_assert(strstr(b.data, want) != NULL, "%s in %s", want, b.data);

    /* A window already on minute bounds is given as asked. */
    q.since_ns = T0;
    q.until_ns = T0 + MIN - 1;
    buf_reset(&b);
    flows_response_begin(&b, &r, &q, "1ms");
    event_format_time(T0 + MIN - 1, until);
    snprintf(want, sizeof(want), "\"window\":{\"since\":\"%s\",\"until\":\"%s\"}", since, until);
    cr_assert(strstr(b.data, want) != NULL, "%s in %s", want, b.data);
    buf_free(&b);
}

Test(flows, filters_and_window)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0 + 5 * MIN, "web-1", "db-0", EVENT_STATUS_FAILED, "timeout", 0),
    };
    struct flows_result r;
    struct flows_query q;

    flows_add(f, ev, 2, NOW);
    q = all(FLOWS_GROUP_WORKLOAD);
    q.since_ns = T0 + 4 * MIN;
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].c.connections, 1);
    cr_assert_eq(error_count(&r.edges[0].c, "timeout"), 1);
    flows_result_free(&r);

    q = all(FLOWS_GROUP_WORKLOAD);
    q.until_ns = T0 + 59 * 1000000000ull;
    q.status = EVENT_STATUS_FAILED;
    run(f, &q, &r);
    cr_assert_eq(r.count, 0);
    flows_result_free(&r);

    q = all(FLOWS_GROUP_WORKLOAD);
    q.namespace = intern("other");
    run(f, &q, &r);
    cr_assert_eq(r.count, 0);
    flows_result_free(&r);

    q = all(FLOWS_GROUP_WORKLOAD);
    q.workload = intern("db");
    q.node = intern("node-1");
    q.protocol = IPPROTO_TCP_;
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].c.connections, 2);
    flows_result_free(&r);
    flows_free(f);
}

static void assert_same(const struct flows_result *a, const struct flows_result *b)
{
    cr_assert_eq(a->count, b->count);
    for (size_t i = 0; i < a->count; i++) {
        const struct flows_edge *x = &a->edges[i], *y = &b->edges[i];
        cr_assert_eq(memcmp(x->c.hist, y->c.hist, sizeof(x->c.hist)), 0, "edge %zu", i);
        cr_assert_eq(x->c.connections, y->c.connections);
        cr_assert_eq(x->c.failed, y->c.failed);
        cr_assert_eq(x->c.bytes_sent, y->c.bytes_sent);
        cr_assert_eq(x->c.first_seen_ns, y->c.first_seen_ns);
        cr_assert_eq(x->c.last_seen_ns, y->c.last_seen_ns);
        cr_assert_eq(x->key.src.pod, y->key.src.pod);
        cr_assert_eq(x->key.dst.pod, y->key.dst.pod);
        for (unsigned p = 1; p <= 100; p++)
            cr_assert_eq(flows_hist_percentile(x->c.hist, p), flows_hist_percentile(y->c.hist, p));
        for (size_t j = 0; j < FLOWS_ERROR_SLOTS && x->c.errors[j].error != NULL; j++)
            cr_assert_eq(error_count(&y->c, x->c.errors[j].error), x->c.errors[j].count);
    }
}

Test(flows, two_halves_merged_equal_the_whole_also_encoded)
{
    struct flows *whole = flows_new(24 * HOUR, 100000), *half[2];
    const char *pods[] = {"web-1", "web-2", "web-3"};
    const char *errs[] = {"refused", "timeout", "unreachable"};
    struct flows_result rw, rm = {0};
    struct flows_query q = all(FLOWS_GROUP_POD);
    uint64_t seed = 42;

    half[0] = flows_new(24 * HOUR, 100000);
    half[1] = flows_new(24 * HOUR, 100000);
    for (unsigned i = 0; i < 3000; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        unsigned r = (unsigned)(seed >> 33);
        uint64_t ts = T0 + (r % 600) * 1000000000ull;
        struct event e = conn(ts, pods[r % 3], "db-0",
                              r % 7 == 0 ? EVENT_STATUS_FAILED : EVENT_STATUS_ESTABLISHED,
                              errs[r % 3], (uint64_t)(r % 100000) * 137);
        flows_add(whole, &e, 1, NOW);
        flows_add(half[i % 2], &e, 1, NOW);
    }
    run(whole, &q, &rw);
    for (int h = 0; h < 2; h++) {
        struct flows_result part, decoded;
        struct buf b;
        cr_assert_eq(flows_query(half[h], &q, &part), 0);
        buf_init(&b);
        flows_result_encode(&part, &b);
        cr_assert(!b.oom);
        cr_assert_eq(flows_result_decode(b.data, b.len, &decoded), 0);
        for (size_t i = 0; i < decoded.count; i++)
            cr_assert_eq(flows_result_add(&rm, &decoded.edges[i]), 0);
        buf_free(&b);
        flows_result_free(&decoded);
        flows_result_free(&part);
    }
    flows_result_finish(&rm, q.status, q.limit);
    cr_assert_eq(rw.count, 3);
    assert_same(&rw, &rm);
    flows_result_free(&rw);
    flows_result_free(&rm);
    flows_free(whole);
    flows_free(half[0]);
    flows_free(half[1]);
}

/*
 * status keeps an edge, as grouped and once every share is added, that has a connection of that
 * outcome: one replica's share without the failure must not take the edge's other connections
 * out of the answer (a replica answers unfiltered; the requester filters after the merge).
 */
Test(flows, status_is_judged_on_the_merged_edge)
{
    struct flows *whole = flows_new(24 * HOUR, 1000),
                 *half[2] = {flows_new(24 * HOUR, 1000), flows_new(24 * HOUR, 1000)};
    struct event ev[] = {
        conn(T0 + 1, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0 + 2, "web-1", "db-0", EVENT_STATUS_FAILED, "refused", 0),
        conn(T0 + 3, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 2000),
        conn(T0 + 4, "web-2", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 3000),
        conn(T0 + 5, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 4000),
    };
    size_t n = sizeof(ev) / sizeof(ev[0]);
    for (size_t i = 0; i < n; i++) {
        flows_add(whole, &ev[i], 1, NOW);
        flows_add(half[i == 1 ? 0 : 1], &ev[i], 1, NOW); /* the failure alone on one side */
    }
    const enum flows_group groups[] = {FLOWS_GROUP_POD, FLOWS_GROUP_WORKLOAD};
    const uint64_t want[] = {4, 5}; /* web-1's four; the workload's five (web-2's too) */
    for (size_t g = 0; g < 2; g++) {
        struct flows_query q = all(groups[g]);
        q.status = EVENT_STATUS_FAILED;
        struct flows_result rw, rm = {0};
        run(whole, &q, &rw);
        for (int h = 0; h < 2; h++) {
            struct flows_result part;
            cr_assert_eq(flows_query(half[h], &q, &part), 0);
            for (size_t i = 0; i < part.count; i++)
                cr_assert_eq(flows_result_add(&rm, &part.edges[i]), 0);
            flows_result_free(&part);
        }
        flows_result_finish(&rm, q.status, q.limit);
        cr_assert_eq(rw.count, 1, "group %zu: %zu edges", g, rw.count);
        cr_assert_eq(rw.total, 1);
        cr_assert_eq(rw.edges[0].c.connections, want[g]);
        cr_assert_eq(rw.edges[0].c.failed, 1);
        assert_same(&rw, &rm);
        flows_result_free(&rw);
        flows_result_free(&rm);

        /* And an outcome no connection had: nothing, whole or merged. */
        q.status = EVENT_STATUS_ATTEMPTED;
        run(whole, &q, &rw);
        cr_assert_eq(rw.count, 0);
        cr_assert_eq(rw.total, 0);
        flows_result_free(&rw);
    }
    flows_free(whole);
    flows_free(half[0]);
    flows_free(half[1]);
}

Test(flows, retention_and_the_edge_minute_cap_are_counted)
{
    struct flows *f = flows_new(5 * MIN, 4);
    struct flows_stats st;
    struct event e;

    /* Already past retention: ignored. */
    e = conn(NOW - 6 * MIN, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1);
    flows_add(f, &e, 1, NOW);
    for (unsigned m = 0; m < 6; m++) {
        e = conn(T0 + m * MIN, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1);
        flows_add(f, &e, 1, T0 + m * MIN);
    }
    flows_get_stats(f, &st);
    cr_assert_eq(st.ignored, 1);
    cr_assert_eq(st.edge_minutes, 4);
    cr_assert_eq(st.evicted_full, 2);
    cr_assert_eq(st.evicted_age, 0);

    /* Ten minutes later everything has aged out, and the edge is gone. */
    flows_add(f, NULL, 0, T0 + 16 * MIN);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 0);
    cr_assert_eq(st.edges, 0);
    cr_assert_eq(st.evicted_age, 4);
    flows_free(f);
}

Test(flows, many_edges_evict_the_oldest_and_stay_consistent)
{
    struct flows *f = flows_new(24 * HOUR, 50);
    char pod[32];
    struct flows_stats st;
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_POD);

    for (unsigned i = 0; i < 500; i++) {
        snprintf(pod, sizeof(pod), "web-%u", i % 70);
        struct event e = conn(T0 + (i / 70) * MIN, pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1);
        flows_add(f, &e, 1, NOW);
    }
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 50);
    cr_assert_eq(st.evicted_full + st.edge_minutes, 500);
    run(f, &q, &r);
    uint64_t total = 0;
    for (size_t i = 0; i < r.count; i++)
        total += r.edges[i].c.connections;
    cr_assert_eq(total, 50);
    cr_assert_eq(r.count, st.edges);
    flows_result_free(&r);
    flows_free(f);
}

Test(flows, query_string)
{
    struct flows_query q;
    char err[256];
    const char *s;

    s = "";
    cr_assert_eq(flows_query_parse(&q, s, strlen(s), NOW, err, sizeof(err)), 0);
    cr_assert_eq(q.until_ns, NOW);
    cr_assert_eq(q.since_ns, NOW - 15 * MIN);
    cr_assert_eq(q.limit, 1000);
    cr_assert_eq(q.group_by, FLOWS_GROUP_WORKLOAD);

    s = "group_by=pod&namespace=shop&workload=web&node=n%2D1&protocol=tcp&status=failed&limit=5"
        "&since=2026-01-01T00:00:00Z&until=1800000000000000000";
    /* A name no event carried matches nothing, and the query adds no name to the table. */
    struct intern_stats before, after;
    intern_get_stats(&before);
    cr_assert_eq(flows_query_parse(&q, s, strlen(s), NOW, err, sizeof(err)), 0, "%s", err);
    intern_get_stats(&after);
    cr_assert_eq(after.strings, before.strings);
    cr_assert_eq(q.node, flows_name_none);
    cr_assert_eq(q.namespace, flows_name_none);
    cr_assert_eq(q.workload, flows_name_none);
    const char *n1 = intern("n-1"); /* an event's */
    cr_assert_eq(flows_query_parse(&q, s, strlen(s), NOW, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(q.group_by, FLOWS_GROUP_POD);
    cr_assert_eq(q.node, n1);
    cr_assert_eq(q.status, EVENT_STATUS_FAILED);
    cr_assert_eq(q.limit, 5);
    cr_assert_eq(q.protocol, IPPROTO_TCP_);
    cr_assert_eq(q.until_ns, 1800000000000000000ull);

    /* Keywords in any case, as on /api/events. */
    s = "group_by=Service&protocol=UDP&status=Attempted";
    cr_assert_eq(flows_query_parse(&q, s, strlen(s), NOW, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(q.group_by, FLOWS_GROUP_SERVICE);
    cr_assert_eq(q.protocol, IPPROTO_UDP_);
    cr_assert_eq(q.status, EVENT_STATUS_ATTEMPTED);

    /* Numbers, times and keywords without their surrounding spaces, as on /api/events; a
     * name as given. */
    intern(" n1");
    s = "limit=+7&group_by=%20pod%20&since=%201700000000000000000&node=%20n1";
    cr_assert_eq(flows_query_parse(&q, s, strlen(s), NOW, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(q.limit, 7);
    cr_assert_eq(q.group_by, FLOWS_GROUP_POD);
    cr_assert_str_eq(q.node, " n1");

    const char *bad[][2] = {
        {"type=connection", "unknown query parameter 'type'"},
        /* A long name is cut where the message says so; control bytes are shown as '?'. */
        {"x234567890123456789012345678901234567890123456789012345678901234567890=1",
         "unknown query parameter 'x23456789012345678901234567890123456789012345678901234567890123"
         "4...' ("},
        {"ty%01pe=1", "unknown query parameter 'ty?pe' ("},
        {"limit=0", "'limit': \"0\""},
        {"limit=100001", "'limit'"},
        {"group_by=node", "'group_by': \"node\""},
        {"status=ok", "'status': \"ok\""},
        {"protocol=sctp", "'protocol': \"sctp\""},
        {"since=yesterday", "'since': \"yesterday\" (must be RFC 3339"},
        {"since=1733500000", "'since': \"1733500000\" (a number is nanoseconds"},
        {"until=1733500000123", "milliseconds? that is 1733500000123000000 ns"},
        {"until=9999-12-31T23:59:59Z", "out of range"},
        {"node=", "'node': empty value (leave the parameter out instead)"},
        {"limit=%2", "'limit': bad percent-encoding"},
        {"limit=%20", "'limit': \"\" (expected"},
        {"node=a&node=b", "duplicate"},
        {"node=%00", "'node'"},
        {"since=2000000000000000000&until=1000000000000000000", "later than 'until'"},
        {"since=2100-01-01T00:00:00Z", "'since': in the future, and the window ends now"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(flows_query_parse(&q, bad[i][0], strlen(bad[i][0]), NOW, err, sizeof(err)),
                     -EINVAL, "%s", bad[i][0]);
        cr_assert(strstr(err, bad[i][1]) != NULL, "%s: %s", bad[i][0], err);
    }
}

Test(flows, decode_rejects_what_is_not_an_exchange)
{
    const char *bad[] = {
        "",
        "[]",
        "{\"edges\":{}}",
        "{\"edges\":[{}]}",
        "{\"edges\":[{\"s\":[null,null,null,null,null,null,null,null],\"d\":[null,null,null,null,"
        "null,null,null,\"300.1.1.1\"],\"k\":[80,6],\"c\":[1,1,0,0,0,0,0,1,1,0],\"e\":{},\"h\":[]}]"
        "}",
        "{\"edges\":[{\"s\":[null,null,null,null,null,null,null,null],\"d\":[null,null,null,null,"
        "null,null,null,null],\"k\":[80,6],\"c\":[1,1,0,0,0,0,0,1,1,-1],\"e\":{},\"h\":[]}]}",
        "{\"edges\":[{\"s\":[null,null,null,null,null,null,null,null],\"d\":[null,null,null,null,"
        "null,null,null,null],\"k\":[80,6],\"c\":[1,1,0,0,0,0,0,1,1,0],\"e\":{},\"h\":[28,1]}]}",
    };
    const char *good = "{\"edges\":[{\"s\":[\"ns\",\"w\",null,null,null,null,null,null],\"d\":["
                       "null,null,null,null,"
                       "null,null,\"x.example\",\"::1\"],\"k\":[443,6],\"c\":[2,1,1,0,0,5,6,1,2,0],"
                       "\"e\":{\"refused\":1},\"h\":[3,1]}]}";
    struct flows_result r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(flows_result_decode(bad[i], strlen(bad[i]), &r), -EINVAL, "%zu", i);
        cr_assert_eq(r.count, 0);
        flows_result_free(&r);
    }
    cr_assert_eq(flows_result_decode(good, strlen(good), &r), 0);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].key.dst.family, EVENT_FAMILY_IPV6);
    cr_assert_eq(r.edges[0].c.hist[3], 1);
    cr_assert_eq(error_count(&r.edges[0].c, "refused"), 1);
    flows_result_free(&r);
}

Test(flows, a_full_store_evicts_only_for_a_new_bucket)
{
    struct flows *f = flows_new(24 * HOUR, 16);
    struct flows_stats st;
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_POD);
    char pod[16];

    for (unsigned i = 0; i < 16; i++) {
        snprintf(pod, sizeof(pod), "web-%u", i);
        struct event e = conn(T0, pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1);
        flows_add(f, &e, 1, NOW);
    }
    /* Full: more of the same minutes and edges cost nothing. */
    struct event again = conn(T0 + 1, "web-3", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1);
    flows_add(f, &again, 1, NOW);
    flows_get_stats(f, &st);
    cr_assert_eq(st.evicted_full, 0);
    cr_assert_eq(st.edge_minutes, 16);

    /* web-0's only bucket is the oldest: its next minute evicts it and lives on. */
    struct event next = conn(T0 + MIN, "web-0", "db-0", EVENT_STATUS_FAILED, "refused", 0);
    flows_add(f, &next, 1, NOW);
    flows_get_stats(f, &st);
    cr_assert_eq(st.evicted_full, 1);
    cr_assert_eq(st.edges, 16);
    q.workload = intern("web");
    run(f, &q, &r);
    uint64_t web0 = 0, web3 = 0;
    for (size_t i = 0; i < r.count; i++) {
        if (r.edges[i].key.src.pod == intern("web-0"))
            web0 = r.edges[i].c.failed * 10 + r.edges[i].c.established;
        if (r.edges[i].key.src.pod == intern("web-3"))
            web3 = r.edges[i].c.established;
    }
    cr_assert_eq(web0, 10); /* the refused one only */
    cr_assert_eq(web3, 2);
    flows_result_free(&r);
    flows_free(f);
}

Test(flows, metrics_series_are_capped_and_fold_into_other)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct event ev[] = {
        conn(T0, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000),
        conn(T0, "web-2", "db-1", EVENT_STATUS_FAILED, "refused", 0),  /* same pair of workloads */
        conn(T0, "web-1", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000), /* to an IP */
        conn(T0, "web-1", NULL, EVENT_STATUS_ATTEMPTED, NULL, 0),
    };
    struct buf b;

    flows_series_enable(f, 1, 0);
    ev[2].dport = 443;
    ev[3].dport = 53;
    ev[3].protocol = 17;
    flows_add(f, ev, 4, NOW);
    buf_init(&b);
    flows_series_metrics(f, &b);
    buf_putc(&b, '\0');
    cr_assert(!b.oom);
    const char *t = b.data;
    cr_assert(strstr(t, "ebpf_flow_connections_total{src_namespace=\"shop\",src_workload=\"web\","
                        "dst_namespace=\"shop\",dst_workload=\"db\",dst_port=\"8080\","
                        "protocol=\"tcp\",status=\"established\"} 1\n") != NULL,
              "%s", t);
    cr_assert(strstr(t, "dst_port=\"8080\",protocol=\"tcp\",status=\"failed\"} 1\n") != NULL, "%s",
              t);
    /* The cap is one series: the IP destinations fold into ~other, one per protocol. */
    cr_assert(strstr(t, "ebpf_flow_connections_total{src_namespace=\"~other\",src_workload="
                        "\"~other\",dst_namespace=\"~other\",dst_workload=\"~other\",dst_port="
                        "\"0\",protocol=\"udp\",status=\"attempted\"} 1\n") != NULL,
              "%s", t);
    cr_assert(strstr(t, "ebpf_flow_series 3\n") != NULL, "%s", t);
    cr_assert(strstr(t, "ebpf_flow_series_folded_total 2\n") != NULL, "%s", t);
    cr_assert(strstr(t, "10.0.0.7") == NULL, "%s", t);
    buf_free(&b);
    flows_free(f);
}

struct writer {
    struct flows *f;
    const char *pod;
};

static void *write_many(void *arg)
{
    struct writer *w = arg;
    for (unsigned i = 0; i < 2000; i++) {
        struct event e =
            conn(T0 + (i % 120) * MIN, w->pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000 + i);
        flows_add(w->f, &e, 1, T0 + 120 * MIN);
    }
    return NULL;
}

Test(flows, concurrent_adds_queries_and_metrics)
{
    struct flows *f = flows_new(24 * HOUR, 100); /* small: eviction runs all along */
    struct writer w[2] = {{f, "web-1"}, {f, "web-2"}};
    pthread_t t[2];
    struct flows_query q = all(FLOWS_GROUP_WORKLOAD);
    struct flows_stats st;

    flows_series_enable(f, 10, 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, write_many, &w[i]), 0);
    for (int i = 0; i < 50; i++) {
        struct flows_result r;
        struct buf b;
        cr_assert_eq(flows_query(f, &q, &r), 0);
        flows_result_finish(&r, EVENT_STATUS_NONE, 10);
        cr_assert_leq(r.count, 1);
        flows_result_free(&r);
        buf_init(&b);
        flows_series_metrics(f, &b);
        buf_free(&b);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    flows_get_stats(f, &st);
    cr_assert_eq(st.events, 4000);
    cr_assert_eq(st.edge_minutes, 100);
    cr_assert_geq(st.evicted_full, 140); /* 240 buckets at least were made */
    flows_free(f);
}

/* ---- a query lets ingest in while it reads ---- */

#define OLD_EDGES 3000 /* the table grows to 4096 buckets: the query's slices */
#define NEW_EDGES 5000 /* added during the query: the table grows to 8192 under it */

/* An ingest thread that adds one batch when asked, and says when it is done. */
struct ingest {
    struct flows *f;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int asked, done;     /* batches */
    unsigned yields;     /* the query's pauses */
    bool in_first_pause; /* the batch was in before the query went on */
    struct event *batch;
    size_t n;
};

static void *ingest_main(void *arg)
{
    struct ingest *in = arg;

    pthread_mutex_lock(&in->lock);
    while (in->asked == 0)
        pthread_cond_wait(&in->cond, &in->lock);
    pthread_mutex_unlock(&in->lock);
    flows_add(in->f, in->batch, in->n, NOW); /* blocks while a query holds the lock */
    pthread_mutex_lock(&in->lock);
    in->done = 1;
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* The query's pause: at the first, let the ingest thread add its batch and wait until it has. */
static void query_paused(void *ctx)
{
    struct ingest *in = ctx;

    pthread_mutex_lock(&in->lock);
    if (in->yields++ == 0) {
        in->asked = 1;
        pthread_cond_broadcast(&in->cond);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 30; /* a deadlock bound, not a performance one */
        while (!in->done && pthread_cond_timedwait(&in->cond, &in->lock, &ts) == 0)
            ;
        in->in_first_pause = in->done;
    }
    pthread_mutex_unlock(&in->lock);
}

/* The number in a pod name "<prefix>-<n>", or -1 when it has another prefix. */
static int pod_number(const char *pod, char prefix)
{
    return pod != NULL && pod[0] == prefix && pod[1] == '-' ? atoi(pod + 2) : -1;
}

Test(flows, ingest_proceeds_while_a_query_runs_and_each_edge_counts_once, .timeout = 60)
{
    struct flows *f = flows_new(24 * HOUR, 1u << 20);
    struct ingest in = {.f = f};
    struct event *old = calloc(OLD_EDGES, sizeof(*old));
    char pod[32];
    pthread_t t;

    cr_assert_not_null(old);
    for (int i = 0; i < OLD_EDGES; i++) {
        snprintf(pod, sizeof(pod), "p-%d", i);
        old[i] = conn(T0 + 1, pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000);
    }
    flows_add(f, old, OLD_EDGES, NOW);
    /*
     * Added during the query: every old edge again, in a later minute the
     * query does not read, and new edges in the minute it reads, enough to
     * double the hash table under the query.
     */
    in.n = OLD_EDGES + NEW_EDGES;
    in.batch = calloc(in.n, sizeof(*in.batch));
    cr_assert_not_null(in.batch);
    for (int i = 0; i < OLD_EDGES; i++) {
        in.batch[i] = old[i];
        in.batch[i].timestamp_ns = T0 + 5 * MIN;
    }
    for (int i = 0; i < NEW_EDGES; i++) {
        snprintf(pod, sizeof(pod), "n-%d", i);
        in.batch[OLD_EDGES + i] = conn(T0 + 2, pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL, 1000);
    }
    pthread_mutex_init(&in.lock, NULL);
    pthread_cond_init(&in.cond, NULL);
    cr_assert_eq(pthread_create(&t, NULL, ingest_main, &in), 0);
    flows_set_query_yield(f, query_paused, &in);

    struct flows_query q = all(FLOWS_GROUP_POD);
    q.until_ns = T0 + MIN - 1; /* minute T0 only */
    struct flows_result r;
    cr_assert_eq(flows_query(f, &q, &r), 0);
    pthread_join(t, NULL);
    /* The ingest thread added its whole batch while the query was paused, mid-way. */
    cr_assert(in.in_first_pause, "ingest did not get in during the query");
    cr_assert_gt(in.yields, 1, "the query paused %u times", in.yields);
    struct flows_stats st;
    flows_get_stats(f, &st);
    cr_assert_eq(st.edges, OLD_EDGES + NEW_EDGES);
    cr_assert_eq(st.events, 2 * OLD_EDGES + NEW_EDGES);

    /* Every old edge exactly once, as it was; new ones at most once. */
    static unsigned char seen_old[OLD_EDGES], seen_new[NEW_EDGES];
    size_t news = 0;
    for (size_t i = 0; i < r.count; i++) {
        const struct flows_edge *e = &r.edges[i];
        int o = pod_number(e->key.src.pod, 'p'), n = pod_number(e->key.src.pod, 'n');
        cr_assert(o >= 0 || n >= 0, "edge of %s", e->key.src.pod);
        cr_assert_eq(e->c.connections, 1, "%s counted %" PRIu64 " times", e->key.src.pod,
                     e->c.connections);
        cr_assert_eq(e->c.established, 1);
        if (o >= 0) {
            cr_assert_lt(o, OLD_EDGES);
            cr_assert_eq(seen_old[o]++, 0, "%s twice", e->key.src.pod);
        } else {
            cr_assert_lt(n, NEW_EDGES);
            cr_assert_eq(seen_new[n]++, 0, "%s twice", e->key.src.pod);
            news++;
        }
    }
    cr_assert_eq(r.count - news, OLD_EDGES, "old edges missed: %zu of %d", r.count - news,
                 OLD_EDGES);
    flows_result_free(&r);

    /* Afterwards, the whole of both minutes. */
    flows_set_query_yield(f, NULL, NULL);
    q = all(FLOWS_GROUP_POD);
    q.limit = OLD_EDGES + NEW_EDGES;
    run(f, &q, &r);
    cr_assert_eq(r.count, OLD_EDGES + NEW_EDGES);
    for (size_t i = 0; i < r.count; i++)
        cr_assert_eq(r.edges[i].c.connections,
                     pod_number(r.edges[i].key.src.pod, 'p') >= 0 ? 2 : 1);
    flows_result_free(&r);

    pthread_cond_destroy(&in.cond);
    pthread_mutex_destroy(&in.lock);
    free(in.batch);
    free(old);
    flows_free(f);
}

/* ---- compacted minutes: every query equals the sum of the events it covers ---- */

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* The contract of flows.h: bucket 0 below 2^10 ns, bucket b in [2^(b+9), 2^(b+10)). */
static unsigned ref_bucket(uint64_t ns)
{
    unsigned b = 0;
    while (b + 1 < FLOWS_HIST_BUCKETS && ns >= (1ull << (b + 10)))
        b++;
    return b;
}

static const struct flows_edge *edge_of(const struct flows_result *r, const char *pod)
{
    for (size_t i = 0; i < r->count; i++)
        if (r->edges[i].key.src.pod == intern(pod))
            return &r->edges[i];
    return NULL;
}

#define MIX_EVENTS  4000
#define MIX_MINUTES 190

Test(flows, compacted_hours_answer_exactly_like_the_events)
{
    static struct event ev[MIX_EVENTS];
    static const char *const errors[] = {"refused", "timeout", "unreachable"};
    struct flows *f = flows_new(24 * HOUR, 3 * MIX_MINUTES + 30);
    uint64_t seed = 42, last = 0;

    for (size_t i = 0; i < MIX_EVENTS; i++) {
        /* Mostly in order; one in eight comes late, up to two hours back. */
        uint64_t minute = i * MIX_MINUTES / MIX_EVENTS;
        if (lcg(&seed) % 8 == 0)
            minute = minute > 0 ? lcg(&seed) % (minute + 1) : 0;
        uint64_t ts = T0 + minute * MIN + lcg(&seed) % MIN;
        char pod[16];
        snprintf(pod, sizeof(pod), "web-%u", (unsigned)(lcg(&seed) % 3));
        switch (lcg(&seed) % 4) {
        case 0:
            ev[i] = closed(ts, pod, "db-0", EVENT_ROLE_CLIENT, lcg(&seed) % 100000,
                           lcg(&seed) % 5000000000ull);
            break;
        case 1:
            ev[i] = conn(ts, pod, "db-0", EVENT_STATUS_FAILED, errors[lcg(&seed) % 3], 0);
            break;
        default:
            ev[i] = conn(ts, pod, "db-0", EVENT_STATUS_ESTABLISHED, NULL,
                         1 + lcg(&seed) % 200000000ull);
        }
        last = ts > last ? ts : last;
    }
    for (size_t i = 0; i < MIX_EVENTS; i += 37)
        flows_add(f, &ev[i], i + 37 <= MIX_EVENTS ? 37 : MIX_EVENTS - i, last);

    /* Windows: everything, whole hours, and ranges cutting hours at both ends. */
    uint64_t windows[][2] = {{0, MIX_MINUTES}, {0, 59},    {60, 119}, {61, 118}, {30, 150},
                             {59, 60},         {120, 189}, {7, 7},    {0, 179},  {100, 100}};
    for (size_t w = 0; w < sizeof(windows) / sizeof(windows[0]); w++) {
        struct flows_query q = all(FLOWS_GROUP_POD);
        struct flows_result r;
        q.since_ns = T0 + windows[w][0] * MIN;
        q.until_ns = T0 + windows[w][1] * MIN + MIN - 1;
        run(f, &q, &r);
        for (unsigned p = 0; p < 3; p++) {
            char pod[16];
            struct flows_counts want = {0};
            snprintf(pod, sizeof(pod), "web-%u", p);
            for (size_t i = 0; i < MIX_EVENTS; i++) {
                const struct event *e = &ev[i];
                if (e->k8s.pod_name != intern(pod) || e->timestamp_ns < q.since_ns ||
                    e->timestamp_ns > q.until_ns)
                    continue;
                if (want.first_seen_ns == 0 || e->timestamp_ns < want.first_seen_ns)
                    want.first_seen_ns = e->timestamp_ns;
                if (e->timestamp_ns > want.last_seen_ns)
                    want.last_seen_ns = e->timestamp_ns;
                if (e->type == EVENT_CLOSE) {
                    want.bytes_sent += e->u.close.bytes_sent;
                    want.bytes_received += e->u.close.bytes_received;
                    want.retransmits += e->u.close.retransmits;
                    want.resets++;
                    continue;
                }
                want.connections++;
                if (e->status == EVENT_STATUS_ESTABLISHED) {
                    want.established++;
                    want.hist[ref_bucket(e->u.conn.latency_ns)]++;
                } else {
                    want.failed++;
                }
            }
            const struct flows_edge *got = edge_of(&r, pod);
            if (want.first_seen_ns == 0) {
                cr_assert_null(got, "window %zu, %s", w, pod);
                continue;
            }
            cr_assert_not_null(got, "window %zu, %s", w, pod);
            cr_assert_eq(got->c.connections, want.connections, "window %zu", w);
            cr_assert_eq(got->c.established, want.established, "window %zu", w);
            cr_assert_eq(got->c.failed, want.failed, "window %zu", w);
            cr_assert_eq(got->c.resets, want.resets, "window %zu", w);
            cr_assert_eq(got->c.retransmits, want.retransmits, "window %zu", w);
            cr_assert_eq(got->c.bytes_sent, want.bytes_sent, "window %zu", w);
            cr_assert_eq(got->c.bytes_received, want.bytes_received, "window %zu", w);
            cr_assert_eq(got->c.first_seen_ns, want.first_seen_ns, "window %zu", w);
            cr_assert_eq(got->c.last_seen_ns, want.last_seen_ns, "window %zu", w);
            cr_assert_arr_eq(got->c.hist, want.hist, sizeof(want.hist), "window %zu", w);
            uint64_t by_error = 0;
            for (size_t k = 0; k < 3; k++)
                by_error += error_count(&got->c, errors[k]);
            cr_assert_eq(by_error, want.failed, "window %zu", w);
            cr_assert_eq(got->c.errors_other, 0);
        }
        flows_result_free(&r);
    }

    /* Compacted minutes cost a fraction of a plain bucket each. */
    struct flows_stats st;
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 3 * MIX_MINUTES);
    cr_assert_lt(st.bytes / st.edge_minutes, flows_minute_bytes() / 2,
                 "%" PRIu64 " B per edge-minute", st.bytes / st.edge_minutes);
    flows_free(f);
}

Test(flows, eviction_and_retention_reach_into_compacted_hours)
{
    struct flows *f = flows_new(2 * HOUR, 100);
    struct flows_stats st;
    struct flows_result r;
    struct flows_query q = all(FLOWS_GROUP_POD);

    /* 150 minutes of one edge with room for 100: the oldest 50 go, wherever they were kept. */
    for (unsigned m = 0; m < 150; m++) {
        struct event e =
            conn(T0 + m * MIN + 5, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 2000);
        flows_add(f, &e, 1, T0 + m * MIN + 5);
    }
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 100);
    cr_assert_eq(st.evicted_full, 50);
    run(f, &q, &r);
    cr_assert_eq(r.count, 1);
    cr_assert_eq(r.edges[0].c.connections, 100);
    cr_assert_eq(r.edges[0].c.first_seen_ns, T0 + 50 * MIN + 5, "%" PRIu64,
                 (r.edges[0].c.first_seen_ns - T0) / MIN);
    flows_result_free(&r);

    /* A late event for a compacted minute that is still held lands in it: no new bucket. */
    struct event late = conn(T0 + 70 * MIN + 9, "web-1", "db-0", EVENT_STATUS_FAILED, "refused", 0);
    flows_add(f, &late, 1, T0 + 150 * MIN);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 100);
    cr_assert_eq(st.evicted_full, 50);
    q.since_ns = T0 + 70 * MIN;
    q.until_ns = T0 + 71 * MIN - 1;
    run(f, &q, &r);
    cr_assert_eq(r.edges[0].c.connections, 2);
    cr_assert_eq(error_count(&r.edges[0].c, "refused"), 1);
    cr_assert_eq(r.edges[0].c.last_seen_ns, T0 + 70 * MIN + 9);
    flows_result_free(&r);

    /* Retention (2h) drops compacted minutes as they age: at 3h, minutes 60..149 remain. */
    flows_add(f, NULL, 0, T0 + 180 * MIN);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edge_minutes, 90);
    cr_assert_eq(st.evicted_age, 10);
    q = all(FLOWS_GROUP_POD);
    run(f, &q, &r);
    cr_assert_eq(r.edges[0].c.connections, 90 + 1);
    cr_assert_eq(r.edges[0].c.first_seen_ns, T0 + 60 * MIN + 5);
    flows_result_free(&r);
    flows_free(f);
}

/* The series' Prometheus text, NUL-terminated in b. */
static void metrics_text(struct flows *f, struct buf *b)
{
    buf_init(b);
    flows_series_metrics(f, b);
    buf_putc(b, '\0');
}

Test(flows, metrics_have_a_latency_histogram_drops_per_workload_and_stale_series_go)
{
    struct flows *f = flows_new(24 * HOUR, 1000);
    struct buf b;

    flows_series_enable(f, 10, 5 * MIN);
    struct event ev[3];
    ev[0] = conn(T0, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 3000); /* [2^11, 2^12) ns */
    ev[1] = conn(T0 + 1, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 100000);
    memset(&ev[2], 0, sizeof(ev[2]));
    ev[2].type = EVENT_PACKET_DROP;
    ev[2].timestamp_ns = T0 + 2;
    ev[2].node = intern("node-1");
    ev[2].k8s.namespace = intern("shop");
    ev[2].k8s.pod_name = intern("web-1");
    ev[2].k8s.workload = intern("web");
    ev[2].u.drop.reason = intern("NO_SOCKET");
    flows_add(f, ev, 3, T0 + 3);
    metrics_text(f, &b);
    const char *t = b.data;
    const char *labels = "src_namespace=\"shop\",src_workload=\"web\",dst_namespace=\"shop\","
                         "dst_workload=\"db\",dst_port=\"8080\",protocol=\"tcp\"";
    char want[512];
    /* le 2^11 ns holds neither; le 2^13 ns the first; le 2^17 ns both. */
    snprintf(want, sizeof(want),
             "ebpf_flow_connect_latency_seconds_bucket{%s,le=\"0.000002048\"} 0\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    snprintf(want, sizeof(want),
             "ebpf_flow_connect_latency_seconds_bucket{%s,le=\"0.000008192\"} 1\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    snprintf(want, sizeof(want),
             "ebpf_flow_connect_latency_seconds_bucket{%s,le=\"0.000131072\"} 2\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    /* 2^31 ns exactly, where a double with 9 digits would say 2.14748365. */
    snprintf(want, sizeof(want),
             "ebpf_flow_connect_latency_seconds_bucket{%s,le=\"2.147483648\"} 2\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    snprintf(want, sizeof(want), "ebpf_flow_connect_latency_seconds_sum{%s} 0.000103000\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    snprintf(want, sizeof(want), "ebpf_flow_connect_latency_seconds_count{%s} 2\n", labels);
    cr_assert(strstr(t, want) != NULL, "%s\n%s", want, t);
    cr_assert(strstr(t, "ebpf_flow_workload_drops_total{namespace=\"shop\",workload=\"web\","
                        "reason=\"NO_SOCKET\"} 1\n") != NULL,
              "%s", t);
    cr_assert(strstr(t, "ebpf_flow_series 2\n") != NULL, "%s", t);
    buf_free(&b);

    /* Four minutes on the series are still there; six minutes on they are gone, counted. */
    flows_add(f, NULL, 0, T0 + 4 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 2\n") != NULL, "%s", b.data);
    buf_free(&b);
    flows_add(f, NULL, 0, T0 + 6 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 0\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_flow_series_removed_total 2\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "src_workload=\"web\"") == NULL, "%s", b.data);
    cr_assert(strstr(b.data, "NO_SOCKET") == NULL, "%s", b.data);
    buf_free(&b);

    /* A workload seen again comes back from zero. */
    ev[0].timestamp_ns = T0 + 7 * MIN;
    flows_add(f, ev, 1, T0 + 7 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 1\n") != NULL, "%s", b.data);
    buf_free(&b);
    flows_free(f);
}

/*
 * The bytes in the statistics are kept as edges grow, compact, take late
 * events and are evicted, not counted by a walk: after every step they equal
 * a walk over every edge, and once every edge is gone, the empty table's.
 */
Test(flows, byte_count_follows_every_change)
{
    struct flows *f = flows_new(3 * HOUR, 700);
    uint64_t seed = 9, empty = flows_bytes_recount(f);
    struct flows_stats st;

    for (unsigned step = 0; step < 600; step++) {
        struct event ev[8];
        uint64_t minute = step / 2;
        for (size_t i = 0; i < 8; i++) {
            char pod[16], peer[16];
            uint64_t m = lcg(&seed) % 5 == 0 ? minute - lcg(&seed) % (minute + 1) : minute;
            snprintf(pod, sizeof(pod), "web-%u", (unsigned)(lcg(&seed) % 40));
            snprintf(peer, sizeof(peer), "db-%u", (unsigned)(lcg(&seed) % 3));
            ev[i] = lcg(&seed) % 3 == 0
                        ? closed(T0 + m * MIN + 1, pod, peer, EVENT_ROLE_CLIENT, 10, 20)
                        : conn(T0 + m * MIN + 1, pod, peer, EVENT_STATUS_FAILED,
                               lcg(&seed) % 2 ? "refused" : "timeout", 0);
        }
        flows_add(f, ev, 8, T0 + minute * MIN + 1);
        flows_get_stats(f, &st);
        cr_assert_eq(st.bytes, flows_bytes_recount(f), "step %u", step);
    }
    flows_get_stats(f, &st);
    cr_assert_gt(st.evicted_full, 0);
    cr_assert_gt(st.evicted_age, 0);
    /* Retention passes everything: every edge goes. */
    flows_add(f, NULL, 0, T0 + 1000 * HOUR);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edges, 0);
    cr_assert_eq(st.bytes, flows_bytes_recount(f));
    cr_assert_geq(st.bytes, empty); /* the table may have grown */
    flows_free(f);
}

/* A connection from pod to the outside address 203.0.113.<host>, at minute m. */
static struct event outside(unsigned m, const char *pod, unsigned host)
{
    struct event e = conn(T0 + m * MIN + 1, pod, NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    e.daddr[0] = 203;
    e.daddr[1] = 0;
    e.daddr[2] = (uint8_t)(host >> 8);
    e.daddr[3] = (uint8_t)host;
    return e;
}

/* The edge of r from pod to 203.0.113.<host>, or NULL. */
static const struct flows_edge *edge_to(const struct flows_result *r, const char *pod,
                                        unsigned host)
{
    for (size_t i = 0; i < r->count; i++) {
        const struct flows_key *k = &r->edges[i].key;
        if (k->src.pod == intern(pod) && k->dst.ip[0] == 203 && k->dst.ip[2] == (host >> 8) &&
            k->dst.ip[3] == (uint8_t)host)
            return &r->edges[i];
    }
    return NULL;
}

/*
 * Edges from one pod to many outside addresses share the pod's names, held
 * once: an edge costs its buckets and a small key, and when edges go (by
 * retention here) the ones left keep their names and the last one frees them.
 */
Test(flows, edges_share_their_names_and_the_last_edge_frees_them)
{
    struct flows *f = flows_new(10 * MIN, 100000);
    struct flows_query q = all(FLOWS_GROUP_POD);
    struct flows_result r;
    struct flows_stats st0, st;
    struct event ev;

    flows_get_stats(f, &st0);
    for (unsigned h = 0; h < 1000; h++) {
        ev = outside(0, "web-0", h);
        flows_add(f, &ev, 1, T0 + MIN);
    }
    flows_get_stats(f, &st);
    cr_assert_eq(st.edges, 1000);
    cr_assert_eq(st.bytes, flows_bytes_recount(f));
    /* Per edge: one plain bucket and a key of two shared name sets and an address. */
    uint64_t per_edge = (st.bytes - st0.bytes) / 1000;
    cr_assert_leq(per_edge, sizeof(struct flows_minute) + 128, "%" PRIu64 " bytes per edge",
                  per_edge);

    /* Minute 5: the same pod to two of the same addresses, and a second pod. */
    struct event later[] = {outside(5, "web-0", 1), outside(5, "web-0", 2), outside(5, "web-1", 1)};
    flows_add(f, later, 3, T0 + 5 * MIN + 1);
    /* Minute 12: retention takes every minute-0 bucket, and with them 998 of web-0's edges. */
    flows_add(f, NULL, 0, T0 + 12 * MIN);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edges, 3);
    cr_assert_eq(st.bytes, flows_bytes_recount(f));
    run(f, &q, &r);
    cr_assert_eq(r.count, 3);
    for (unsigned h = 1; h <= 2; h++) {
        const struct flows_edge *e = edge_to(&r, "web-0", h);
        cr_assert_not_null(e, "web-0 -> %u", h);
        cr_assert_eq(e->key.src.workload, intern("web"));
        cr_assert_eq(e->key.src.namespace, intern("shop"));
        cr_assert_eq(e->key.src.node, intern("node-1"));
        cr_assert_eq(e->key.dst.family, EVENT_FAMILY_IPV4);
        cr_assert_eq(e->key.dst.pod, NULL);
        cr_assert_eq(e->c.connections, 1);
    }
    cr_assert_not_null(edge_to(&r, "web-1", 1));
    flows_result_free(&r);

    /* web-0 -> .0 again: a new edge, its names made anew. */
    ev = outside(12, "web-0", 0);
    flows_add(f, &ev, 1, T0 + 12 * MIN + 1);
    run(f, &q, &r);
    cr_assert_eq(r.count, 4);
    cr_assert_not_null(edge_to(&r, "web-0", 0));
    flows_result_free(&r);

    /* Everything goes: what is left is the tables. */
    flows_add(f, NULL, 0, T0 + 100 * MIN);
    flows_get_stats(f, &st);
    cr_assert_eq(st.edges, 0);
    cr_assert_eq(st.bytes, flows_bytes_recount(f));
    cr_assert_eq(st.bytes, st0.bytes);
    flows_free(f);
}

/*
 * Failure causes are numbered in a table of FLOWS_ERRTAB_MAX per store (the
 * kernel's errno names are a few dozen): past it, a new cause is counted as
 * "other", never lost, and the causes already numbered keep their names.
 */
Test(flows, causes_past_the_table_are_counted_as_other)
{
    const unsigned n = FLOWS_ERRTAB_MAX + 45;
    struct flows *f = flows_new(24 * HOUR, 100000);
    char cause[32];

    for (unsigned i = 0; i < n; i++) {
        snprintf(cause, sizeof(cause), "cause-%u", i);
        struct event e = conn(T0 + i * MIN + 1, "web-0", "db-0", EVENT_STATUS_FAILED, cause, 0);
        flows_add(f, &e, 1, T0 + i * MIN + 1);
    }
    for (unsigned i = 0; i < n; i++) {
        struct flows_query q = all(FLOWS_GROUP_POD);
        struct flows_result r;
        q.since_ns = T0 + i * MIN;
        q.until_ns = T0 + i * MIN + MIN - 1;
        run(f, &q, &r);
        cr_assert_eq(r.count, 1, "minute %u", i);
        cr_assert_eq(r.edges[0].c.failed, 1, "minute %u", i);
        snprintf(cause, sizeof(cause), "cause-%u", i);
        if (i < FLOWS_ERRTAB_MAX) {
            cr_assert_eq(error_count(&r.edges[0].c, cause), 1, "minute %u", i);
            cr_assert_eq(r.edges[0].c.errors_other, 0, "minute %u", i);
        } else {
            cr_assert_eq(r.edges[0].c.errors[0].error, NULL, "minute %u", i);
            cr_assert_eq(r.edges[0].c.errors_other, 1, "minute %u", i);
        }
        flows_result_free(&r);
    }
    flows_free(f);
}

/*
 * flows_add() plans and prefetches a batch in groups before counting it:
 * batches of any size count exactly as the same events added one at a
 * time, with edges made, evicted and made again inside a group, folded
 * /metrics series, drops, late minutes and failures.
 */
static void mixed_events(struct event *ev, size_t n)
{
    uint64_t r = 12345;
    char pod[32], peer[32];

    for (size_t i = 0; i < n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        unsigned k = (unsigned)(r >> 33);
        snprintf(pod, sizeof(pod), "web-%u", k % 7);
        snprintf(peer, sizeof(peer), "db-%u", (k >> 3) % 5);
        /* Mostly in order over 40 minutes, one in eight up to 30 minutes late. */
        uint64_t ts = T0 + (i * 40 / n) * MIN + (k % 1000) * 1000;
        if ((k >> 6) % 8 == 0 && ts > T0 + 30 * MIN)
            ts -= ((k >> 9) % 30) * MIN;
        switch ((k >> 12) % 6) {
        case 0: /* to an address: a new edge most of the time */
            ev[i] = conn(ts, pod, NULL, EVENT_STATUS_ESTABLISHED, NULL, 2000 + k % 5000);
            ev[i].daddr[2] = (uint8_t)(k >> 16);
            ev[i].daddr[3] = (uint8_t)(k >> 24);
            break;
        case 1:
            ev[i] =
                conn(ts, pod, peer, EVENT_STATUS_FAILED, (k >> 16) % 2 ? "refused" : "timeout", 0);
            break;
        case 2:
            ev[i] = closed(ts, pod, peer, (k >> 16) % 2 ? EVENT_ROLE_CLIENT : EVENT_ROLE_SERVER,
                           k % 9000, k % 700);
            break;
        case 3:
            ev[i] = conn(ts, pod, NULL, EVENT_STATUS_NONE, NULL, 0);
            ev[i].type = EVENT_PACKET_DROP;
            memset(&ev[i].u, 0, sizeof(ev[i].u));
            ev[i].u.drop.reason = intern((k >> 16) % 2 ? "NO_SOCKET" : "TCP_CSUM");
            break;
        default:
            ev[i] = conn(ts, pod, peer, EVENT_STATUS_ESTABLISHED, NULL, 1000 + k % 90000);
            break;
        }
    }
}

static char *metrics_string(struct flows *f)
{
    struct buf b;
    metrics_text(f, &b);
    cr_assert(!b.oom);
    return b.data;
}

static char *edges_text(struct flows *f)
{
    struct flows_query q = all(FLOWS_GROUP_POD);
    struct flows_result r;
    struct buf b;
    run(f, &q, &r);
    buf_init(&b);
    flows_result_encode(&r, &b);
    buf_putc(&b, '\0');
    cr_assert(!b.oom);
    flows_result_free(&r);
    return b.data;
}

Test(flows, batches_count_exactly_as_one_event_at_a_time)
{
    enum { N = 6000 };
    static struct event ev[N];
    static const size_t sizes[] = {1, 2, 15, 16, 17, 100, 1000};
    struct flows *one = flows_new(24 * HOUR, 400); /* small: eviction inside every group */
    struct flows_stats s1, sb;

    mixed_events(ev, N);
    flows_series_enable(one, 25, 3600 * MIN);
    for (size_t i = 0; i < N; i++)
        flows_add(one, &ev[i], 1, T0 + 45 * MIN);
    flows_get_stats(one, &s1);
    cr_assert_gt(s1.evicted_full, 1000);
    cr_assert_gt(s1.events, N / 2);
    char *m1 = metrics_string(one), *e1 = edges_text(one);
    cr_assert(strstr(m1, "~other") != NULL, "the series cap is reached: %s", m1);

    for (size_t z = 0; z < sizeof(sizes) / sizeof(sizes[0]); z++) {
        struct flows *batched = flows_new(24 * HOUR, 400);
        flows_series_enable(batched, 25, 3600 * MIN);
        for (size_t i = 0; i < N; i += sizes[z])
            flows_add(batched, &ev[i], N - i < sizes[z] ? N - i : sizes[z], T0 + 45 * MIN);
        flows_get_stats(batched, &sb);
        cr_assert_eq(memcmp(&s1, &sb, sizeof(s1)), 0, "stats, batches of %zu", sizes[z]);
        char *mb = metrics_string(batched), *eb = edges_text(batched);
        cr_assert_str_eq(mb, m1, "metrics, batches of %zu", sizes[z]);
        cr_assert_str_eq(eb, e1, "edges, batches of %zu", sizes[z]);
        free(mb);
        free(eb);
        flows_free(batched);
    }
    free(m1);
    free(e1);
    flows_free(one);
}

/* The sum of the values of every line of family name (name{...} v) in a metrics text. */
static uint64_t family_sum(const char *text, const char *name, const char *suffix)
{
    uint64_t sum = 0;
    size_t len = strlen(name);

    for (const char *l = text; l != NULL && *l != '\0'; l = strchr(l, '\n'), l = l ? l + 1 : l) {
        if (strncmp(l, name, len) != 0 || l[len] != '{')
            continue;
        const char *end = strchr(l, '\n'), *v = end;
        while (v > l && v[-1] != ' ')
            v--;
        /* v - 1 is the space before the value, and the suffix ends right before it. */
        if (suffix != NULL && (v - l < (ptrdiff_t)strlen(suffix) + 1 ||
                               strncmp(v - 1 - strlen(suffix), suffix, strlen(suffix)) != 0))
            continue;
        sum += strtoull(v, NULL, 10);
    }
    return sum;
}

/*
 * The /metrics series count each event as the edges do: over a mix of
 * established, failed and closed connections (bytes, retransmits, resets),
 * with no cap reached and nothing expired, every family's total equals the
 * total of the same counts over the edges.
 */
Test(flows, metrics_series_total_what_the_edges_count)
{
    enum { N = 3000 };
    static struct event ev[N];
    struct flows *f = flows_new(24 * HOUR, 1000000);
    struct flows_result r;
    struct flows_counts t = {0};

    mixed_events(ev, N);
    flows_series_enable(f, 100000, 3600 * MIN);
    flows_add(f, ev, N, T0 + 45 * MIN);
    struct flows_query q = all(FLOWS_GROUP_POD);
    q.limit = N;
    run(f, &q, &r);
    for (size_t i = 0; i < r.count; i++) {
        const struct flows_counts *c = &r.edges[i].c;
        t.connections += c->connections;
        t.established += c->established;
        t.failed += c->failed;
        t.bytes_sent += c->bytes_sent;
        t.bytes_received += c->bytes_received;
        t.retransmits += c->retransmits;
        t.resets += c->resets;
        for (size_t k = 0; k < FLOWS_HIST_BUCKETS; k++)
            t.hist[k] += c->hist[k];
    }
    flows_result_free(&r);
    cr_assert_gt(t.established, 0);
    cr_assert_gt(t.failed, 0);
    cr_assert_gt(t.resets, 0);
    cr_assert_gt(t.bytes_sent, 0);

    char *m = metrics_string(f);
    cr_assert(strstr(m, "\nebpf_flow_series_folded_total 0\n") != NULL, "no series past the cap");
    cr_assert_eq(family_sum(m, "ebpf_flow_connections_total", "status=\"established\"}"),
                 t.established);
    cr_assert_eq(family_sum(m, "ebpf_flow_connections_total", "status=\"failed\"}"), t.failed);
    cr_assert_eq(family_sum(m, "ebpf_flow_connections_total", NULL), t.connections);
    cr_assert_eq(family_sum(m, "ebpf_flow_bytes_sent_total", NULL), t.bytes_sent);
    cr_assert_eq(family_sum(m, "ebpf_flow_bytes_received_total", NULL), t.bytes_received);
    cr_assert_eq(family_sum(m, "ebpf_flow_retransmits_total", NULL), t.retransmits);
    cr_assert_eq(family_sum(m, "ebpf_flow_resets_total", NULL), t.resets);
    cr_assert_eq(family_sum(m, "ebpf_flow_connect_latency_seconds_count", NULL), t.established);
    cr_assert_eq(family_sum(m, "ebpf_flow_connect_latency_seconds_bucket", "le=\"+Inf\"}"),
                 t.established);
    /* The buckets the latencies fall in (le = 2^11 to 2^17 ns), cumulative. */
    uint64_t cum = 0, below_2_13 = 0;
    for (unsigned k = 0; k < 8; k++) {
        cum += t.hist[k];
        if (k % 2 == 0)
            continue;
        char le[64];
        uint64_t ns = 1ull << (k + 10);
        snprintf(le, sizeof(le), "le=\"%" PRIu64 ".%09" PRIu64 "\"}", ns / 1000000000u,
                 ns % 1000000000u);
        cr_assert_eq(family_sum(m, "ebpf_flow_connect_latency_seconds_bucket", le), cum, "%s", le);
        if (k == 3)
            below_2_13 = cum;
    }
    cr_assert(below_2_13 > 0 && below_2_13 < t.established, "the latencies span buckets");
    free(m);
    flows_free(f);
}

/* The workloads a test says still run (flows_series_set_alive's question). */
static const char *running[4];

static bool test_alive(void *ctx, const char *namespace, const char *workload, uint64_t now_ns)
{
    (void)ctx;
    (void)now_ns;
    for (size_t i = 0; i < sizeof(running) / sizeof(running[0]); i++)
        if (running[i] != NULL && running[i] == workload && namespace == intern("shop"))
            return true;
    return false;
}

/*
 * With the workloads' liveness known, a quiet series stays while both its workloads run,
 * and goes STALE_AFTER after the last event once either is gone; a drop series follows its
 * workload; a process's series (no workload to be gone) stays for the retention.
 */
Test(flows, series_of_quiet_workloads_stay_and_of_deleted_ones_go)
{
    struct flows *f = flows_new(2 * HOUR, 1000);
    struct buf b;

    flows_series_enable(f, 10, 5 * MIN);
    flows_series_set_alive(f, test_alive, NULL);
    running[0] = intern("web");
    running[1] = intern("db");
    struct event ev[3];
    ev[0] = conn(T0, "web-1", "db-0", EVENT_STATUS_ESTABLISHED, NULL, 3000);
    memset(&ev[1], 0, sizeof(ev[1]));
    ev[1].type = EVENT_PACKET_DROP;
    ev[1].timestamp_ns = T0 + 1;
    ev[1].node = intern("node-1");
    ev[1].k8s.namespace = intern("shop");
    ev[1].k8s.pod_name = intern("web-1");
    ev[1].k8s.workload = intern("web");
    ev[1].u.drop.reason = intern("NO_SOCKET");
    ev[2] = conn(T0 + 2, "x", NULL, EVENT_STATUS_ESTABLISHED, NULL, 1000);
    memset(&ev[2].k8s, 0, sizeof(ev[2].k8s));
    strcpy(ev[2].command, "curl");
    flows_add(f, ev, 3, T0 + 3);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 3\n") != NULL, "%s", b.data);
    buf_free(&b);

    /* Quiet for an hour, both running: every series stays. */
    flows_add(f, NULL, 0, T0 + 60 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 3\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_flow_series_removed_total 0\n") != NULL, "%s", b.data);
    buf_free(&b);

    /* db deleted: the web -> db series goes; web's drops and curl's connections stay. */
    running[1] = NULL;
    flows_add(f, NULL, 0, T0 + 61 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 2\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "dst_workload=\"db\"") == NULL, "%s", b.data);
    cr_assert(strstr(b.data, "reason=\"NO_SOCKET\"} 1\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "src_workload=\"curl\"") != NULL, "%s", b.data);
    buf_free(&b);

    /* web deleted too: its drops go. */
    running[0] = NULL;
    flows_add(f, NULL, 0, T0 + 62 * MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "NO_SOCKET") == NULL, "%s", b.data);
    cr_assert(strstr(b.data, "src_workload=\"curl\"") != NULL, "%s", b.data);
    buf_free(&b);

    /* Past the retention, the process's series too. */
    flows_add(f, NULL, 0, T0 + 2 * HOUR + MIN);
    metrics_text(f, &b);
    cr_assert(strstr(b.data, "ebpf_flow_series 0\n") != NULL, "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_flow_series_removed_total 3\n") != NULL, "%s", b.data);
    buf_free(&b);
    flows_free(f);
}

/*
 * A replica that stops hands its minutes to a peer: the peer, with its own and the handed
 * minutes (compacted hours among them), answers exactly as one replica that counted every
 * event. What does not fit the budget is counted, and a malformed chunk merges nothing.
 */
Test(flows, a_stopping_replicas_minutes_handed_over_answer_as_before)
{
    enum { N = 20000 };
    static struct event ev[N];
    const uint64_t now = T0 + 41 * MIN;
    struct flows *whole = flows_new(24 * HOUR, 1000000), *leaver = flows_new(24 * HOUR, 1000000),
                 *taker = flows_new(24 * HOUR, 1000000);

    mixed_events(ev, N);
    for (size_t i = 0; i < N; i++) {
        flows_add(whole, &ev[i], 1, now);
        flows_add(i % 2 ? taker : leaver, &ev[i], 1, now);
    }
    struct flows_stats held;
    flows_get_stats(leaver, &held);
    cr_assert_gt(held.edge_minutes, 1000);

    struct flows_handover_chunk *chunks;
    size_t n;
    uint64_t left, merged, total = 0;
    size_t bytes = 0;
    cr_assert_eq(flows_handover_encode(leaver, 4096, SIZE_MAX, &chunks, &n, &left), 0);
    cr_assert_eq(left, 0);
    cr_assert_gt(n, 10);
    for (size_t i = 0; i < n; i++) {
        bytes += chunks[i].json.len;
        cr_assert_leq(chunks[i].json.len, 4096, "chunk %zu", i);
        cr_assert_eq(
            flows_handover_merge(taker, chunks[i].json.data, chunks[i].json.len, now, &merged), 0,
            "chunk %zu", i);
        cr_assert_eq(merged, chunks[i].minutes, "chunk %zu", i);
        total += merged;
    }
    cr_assert_eq(total, held.edge_minutes, "every minute merged");
    flows_handover_free(chunks, n);
    /* The same edges, every field (failure causes in any order: they fill slots as they come). */
    char *want = edges_text(whole), *got = edges_text(taker);
    json_t *jw = json_loads(want, 0, NULL), *jg = json_loads(got, 0, NULL);
    cr_assert(jw && jg && json_equal(jw, jg), "handed over:\n%.2000s\nwhole:\n%.2000s", got, want);
    json_decref(jw);
    json_decref(jg);
    free(want);
    free(got);

    /* Half the budget: what did not fit is counted, the rest merges, and it is the newest: the
     * last ten minutes answer as on the replica that left. */
    struct flows *other = flows_new(24 * HOUR, 1000000);
    cr_assert_eq(flows_handover_encode(leaver, 4096, bytes / 2, &chunks, &n, &left), 0);
    cr_assert_gt(left, 0);
    total = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(
            flows_handover_merge(other, chunks[i].json.data, chunks[i].json.len, now, &merged), 0);
        total += merged;
    }
    cr_assert_eq(total + left, held.edge_minutes);
    flows_handover_free(chunks, n);
    struct flows_query recent = all(FLOWS_GROUP_POD);
    recent.since_ns = now - 10 * MIN;
    struct flows_result rl, ro;
    run(leaver, &recent, &rl);
    run(other, &recent, &ro);
    cr_assert_gt(rl.count, 10);
    assert_same(&rl, &ro);
    flows_result_free(&rl);
    flows_result_free(&ro);

    /* Malformed: nothing merged. A minute's counts must be of that minute. */
    struct flows_stats before, after;
    flows_get_stats(other, &before);
    static const char *const bad[] = {
        "",
        "{}",
        "{\"minutes\":{}}",
        "{\"minutes\":[[1]]}",
        "{\"minutes\":[[1,{}]]}",
        "{\"minutes\":[],\"x\":1}",
        "{\"minutes\":[[29400000,{\"s\":{},\"d\":{},\"k\":[80,6],\"c\":[1,1,0,0,0,0,0,"
        "1764000000000000000,1764000000000000000,0],\"e\":{},\"h\":[]}]]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(flows_handover_merge(other, bad[i], strlen(bad[i]), now, &merged), -EINVAL,
                     "%s", bad[i]);
    flows_get_stats(other, &after);
    cr_assert_eq(after.edge_minutes, before.edge_minutes);
    flows_free(other);
    flows_free(whole);
    flows_free(leaver);
    flows_free(taker);
}

/*
 * Tests for pkg/store: newest-first results (also for events added out of
 * order), every filter, inclusive time bounds, limits and cursor paging
 * checked against a brute-force reference over the same events, eviction by
 * count and by age, ownership of exec strings, and concurrent use.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"
#include "intern.h"
#include "query.h"
#include "store.h"

static const char *const NODES[] = {"node-a", "node-b", "node.c.example", "node-d"};
static const char *const PODS[] = {NULL, "web-0", "web-1", "db-0"};
static const char *const NAMESPACES[] = {NULL, "prod", "dev"};
/* Lengths 4, 2, 5, 16 (no NUL), 8 and 15: the columns mask a command by its length. */
static const char *const COMMANDS[] = {
    "curl", "sh", "nginx", "abcdefghijklmnop", "kubelet1", "containerd-shim"};
#define NCOMMANDS (sizeof(COMMANDS) / sizeof(COMMANDS[0]))

/* A deterministic generator so failures reproduce (rand() state is per process anyway). */
static uint64_t rng_state;
static uint64_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return rng_state >> 33;
}
static unsigned rng_below(unsigned n)
{
    return (unsigned)(rng() % n);
}

static struct event mk(uint64_t ts, uint64_t id, unsigned type, const char *node)
{
    struct event e = {.id = id, .timestamp_ns = ts, .type = (uint8_t)type, .node = intern(node)};
    strcpy(e.command, "sh");
    e.pid = 1;
    return e;
}

/* A comm of 16 characters fills the array without a NUL, as the kernel's can. */
static void set_comm(struct event *e, const char *comm)
{
    size_t n = strlen(comm);
    memset(e->command, 0, sizeof(e->command));
    memcpy(e->command, comm, n < sizeof(e->command) ? n : sizeof(e->command));
}

static struct store *new_store(size_t max_events, uint64_t max_age_ns)
{
    struct store_limits lim = {.max_events = max_events, .max_age_ns = max_age_ns};
    struct store *s = store_new(&lim);
    cr_assert_not_null(s);
    return s;
}

static void add(struct store *s, const struct event *e)
{
    cr_assert_eq(store_add(s, e), 0);
}

static struct query parse_q(const char *qs)
{
    struct query q;
    char err[256] = "";
    cr_assert_eq(query_parse(&q, qs, strlen(qs), false, err, sizeof(err)), 0, "%s: %s", qs, err);
    return q;
}

static int cmp_newest_first(const void *a, const void *b)
{
    const struct event *x = a, *y = b;
    return query_cmp_newest_first(x->timestamp_ns, x->id, y->timestamp_ns, y->id);
}

/* The brute-force answer: every held event that matches q, newest first. */
static size_t reference(const struct event *all, size_t n, const struct query *q, struct event *out)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (query_match(q, &all[i]))
            out[m++] = all[i];
    qsort(out, m, sizeof(*out), cmp_newest_first);
    return m;
}

static void assert_sorted(const struct store_result *r)
{
    for (size_t i = 1; i < r->count; i++)
        cr_assert_lt(cmp_newest_first(&r->events[i - 1], &r->events[i]), 0,
                     "results %zu and %zu out of order", i - 1, i);
}

/* Pages through q with the given page size and checks the walk against the reference. */
static void check_paging(struct store *s, const struct event *all, size_t n, struct query q,
                         uint32_t page)
{
    struct event *want = malloc((n + 1) * sizeof(*want));
    size_t m = reference(all, n, &q, want);
    q.limit = page;
    q.has_cursor = false;
    size_t got = 0;
    for (int pages = 0;; pages++) {
        cr_assert_leq(pages, (int)(m / page) + 1, "paging does not end");
        struct store_result r;
        cr_assert_eq(store_query(s, &q, &r), 0);
        cr_assert_eq(r.total_count, m, "total_count %llu, reference %zu",
                     (unsigned long long)r.total_count, m);
        cr_assert_leq(r.count, page);
        for (size_t i = 0; i < r.count; i++, got++) {
            cr_assert_lt(got, m, "more results than matches");
            cr_assert_eq(r.events[i].id, want[got].id, "result %zu: id %llx, want %llx", got,
                         (unsigned long long)r.events[i].id, (unsigned long long)want[got].id);
            cr_assert_eq(r.events[i].timestamp_ns, want[got].timestamp_ns);
        }
        bool more = r.has_next;
        cr_assert_eq(more, got < m, "has_next %d after %zu of %zu", more, got, m);
        if (more) {
            cr_assert_eq(r.count, page, "a short page before the end");
            cr_assert_eq(r.next_cursor.timestamp_ns, r.events[r.count - 1].timestamp_ns);
            cr_assert_eq(r.next_cursor.id, r.events[r.count - 1].id);
            /* Through text, as a client would send it back. */
            char text[QUERY_CURSOR_LEN];
            query_cursor_format(&r.next_cursor, text);
            cr_assert_eq(query_cursor_parse(&q.cursor, text, strlen(text)), 0);
            q.has_cursor = true;
        }
        store_result_free(&r);
        if (!more)
            break;
    }
    cr_assert_eq(got, m);
    free(want);
}

Test(store, newest_first_with_out_of_order_inserts)
{
    struct store *s = new_store(100000, 0);
    enum { N = 3000 };
    static struct event all[N];
    rng_state = 1;
    for (size_t i = 0; i < N; i++) {
        /* Mostly increasing with jitter, plus some far-out-of-order stragglers. */
        uint64_t ts = 1000000 + i * 10 + rng_below(50);
        if (rng_below(20) == 0)
            ts = 1000000 + rng_below(N * 10);
        all[i] = mk(ts, rng() << 20 | i, 1 + rng_below(5), NODES[rng_below(4)]);
        add(s, &all[i]);
    }
    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, N);
    cr_assert_eq(r.total_count, N);
    cr_assert_not(r.has_next);
    assert_sorted(&r);
    static struct event want[N];
    reference(all, N, &q, want);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(r.events[i].id, want[i].id);
    store_result_free(&r);

    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, N);
    cr_assert_eq(st.added, N);
    cr_assert_eq(st.oldest_ns, want[N - 1].timestamp_ns);
    cr_assert_eq(st.newest_ns, want[0].timestamp_ns);
    store_free(s);
}

Test(store, same_timestamp_orders_by_id)
{
    struct store *s = new_store(100, 0);
    uint64_t ids[] = {5, 1, 9, 3, 7};
    for (size_t i = 0; i < 5; i++) {
        struct event e = mk(100, ids[i], EVENT_EXEC, "n");
        add(s, &e);
    }
    struct query q = parse_q("");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    uint64_t want[] = {9, 7, 5, 3, 1};
    cr_assert_eq(r.count, 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(r.events[i].id, want[i]);
    store_result_free(&r);
    store_free(s);
}

/* A varied data set shared by the filter and paging tests. */
enum { DATA_N = 2500 };
static struct event data[DATA_N];

static struct store *load_data(uint64_t seed)
{
    struct store *s = new_store(DATA_N, 0);
    rng_state = seed;
    for (size_t i = 0; i < DATA_N; i++) {
        /* Few distinct timestamps so ties (ordered by id) cross page boundaries. */
        struct event e = mk(1000 + rng_below(DATA_N / 3), rng() << 31 ^ rng(), 1 + rng_below(5),
                            NODES[rng_below(4)]);
        e.pid = 100 + rng_below(6);
        set_comm(&e, COMMANDS[rng_below(NCOMMANDS)]);
        e.k8s.pod_name = intern(PODS[rng_below(4)]);
        e.k8s.namespace = intern(NAMESPACES[rng_below(3)]);
        if (rng_below(10) == 0)
            e.node = NULL; /* an event without a node */
        data[i] = e;
        add(s, &e);
    }
    return s;
}

Test(store, every_filter_matches_the_reference)
{
    struct store *s = load_data(7);
    static const char *queries[] = {
        "",
        "type=exec",
        "type=connection,accept",
        "type=packet_drop,exit,exec",
        "node=node-a",
        "node=node.c.example",
        "node=nobody",
        "pod=web-0",
        "pod=db-0",
        "namespace=prod",
        "namespace=dev&pod=web-1",
        "pid=103",
        "command=curl",
        "command=abcdefghijklmnop",
        "command=kubelet1",
        "command=containerd-shim",
        "since=1500",
        "until=1200",
        "since=1100&until=1110",
        "since=1234&until=1234",
        "type=exec&node=node-b&pid=101",
        "type=exit&node=node-d&pod=web-0&namespace=prod&command=nginx&pid=104&since=1100",
        "until=999",
        "since=2000000",
    };
    for (size_t i = 0; i < sizeof(queries) / sizeof(queries[0]); i++) {
        struct query q = parse_q(queries[i]);
        q.limit = QUERY_LIMIT_MAX;
        static struct event want[DATA_N];
        size_t m = reference(data, DATA_N, &q, want);
        struct store_result r;
        cr_assert_eq(store_query(s, &q, &r), 0);
        cr_assert_eq(r.count, m, "\"%s\": %zu results, reference %zu", queries[i], r.count, m);
        cr_assert_eq(r.total_count, m, "\"%s\"", queries[i]);
        for (size_t j = 0; j < m; j++)
            cr_assert_eq(r.events[j].id, want[j].id, "\"%s\" result %zu", queries[i], j);
        cr_assert_not(r.has_next);
        store_result_free(&r);
    }
    store_free(s);
}

/*
 * Connections, accepts and closes with workloads, peers, ports and statuses,
 * added out of order into a store that evicts most of them: every index
 * answer (columns, shard keys, both together) must equal a full scan
 * of the events the store holds, the CAP newest, page by page.
 */
static const char *const WORKLOADS[] = {NULL, "web", "db"};
static const char *const PEER_PODS[] = {NULL, "db-0", "db-1", "cache-0"};
static const char *const PEER_SERVICES[] = {NULL, "db", "cache"};
static const uint16_t PORTS[] = {0, 80, 443, 5432, 6379, 53};

static const char *const DNS_NAMES[] = {"api.example.com", "www.example.com", "example.com",
                                        "db.internal"};
static const uint16_t RCODES[] = {0, 2, 3};

static struct event mk_flow(uint64_t i)
{
    static const unsigned types[] = {EVENT_CONNECTION, EVENT_ACCEPT, EVENT_CLOSE, EVENT_EXEC,
                                     EVENT_DNS};
    struct event e = mk(100000 + i * 4 + rng_below(400), (rng() << 32) ^ i, types[rng_below(5)],
                        NODES[rng_below(2)]);
    e.pid = 200 + rng_below(40);
    set_comm(&e, COMMANDS[rng_below(NCOMMANDS)]);
    e.k8s.pod_name = intern(PODS[rng_below(4)]);
    e.k8s.namespace = intern(NAMESPACES[rng_below(3)]);
    e.k8s.workload = intern(WORKLOADS[rng_below(3)]);
    if (e.k8s.workload)
        e.k8s.workload_kind = intern("Deployment");
    if (e.type == EVENT_EXEC) {
        /* Mostly reported: root's 0 (a set-user-ID program) or the uid. */
        if ((e.u.exec.has_euid = rng_below(4) != 0))
            e.u.exec.euid = rng_below(2) ? 0 : 1000 + (uint32_t)rng_below(3);
        return e;
    }
    e.family = EVENT_FAMILY_IPV4;
    e.protocol = 6;
    e.saddr[0] = 10, e.saddr[3] = (uint8_t)rng_below(4);
    e.daddr[0] = 10, e.daddr[3] = (uint8_t)(10 + rng_below(4));
    e.sport = (uint16_t)(30000 + rng_below(1000));
    e.dport = PORTS[rng_below(6)];
    e.peer.pod = intern(PEER_PODS[rng_below(4)]);
    if (e.peer.pod) {
        e.peer.namespace = intern(rng_below(2) ? "data" : "prod");
        e.peer.workload = intern(e.peer.pod[0] == 'd' ? "db" : "cache");
        e.peer.workload_kind = intern("StatefulSet");
    }
    e.peer.service = intern(PEER_SERVICES[rng_below(3)]);
    if (e.type == EVENT_CONNECTION) {
        e.status = (uint8_t)(1 + rng_below(3));
        if (e.status == EVENT_STATUS_FAILED)
            e.u.conn.error = intern(rng_below(2) ? "refused" : "timeout");
    } else if (e.type == EVENT_DNS) {
        e.protocol = 17;
        e.status = rng_below(4) ? EVENT_STATUS_ANSWERED : EVENT_STATUS_TIMEOUT;
        e.u.dns.query = strdup(DNS_NAMES[rng_below(4)]);
        e.u.dns.query_type = 1;
        if (e.status == EVENT_STATUS_ANSWERED) {
            e.u.dns.rcode = RCODES[rng_below(3)];
            e.u.dns.latency_ns = 1000 + rng_below(100000);
            if (e.u.dns.rcode == 0) {
                e.u.dns.answers = strdup("10.0.0.1");
                e.u.dns.answers_len = 9;
            }
        }
    } else if (e.type == EVENT_CLOSE) {
        e.u.close.role = (uint8_t)(1 + rng_below(2));
        e.u.close.bytes_sent = rng();
        e.u.close.duration_ns = rng();
        e.u.close.srtt_us = (uint32_t)rng_below(100000);
    }
    return e;
}

Test(store, indexes_match_a_full_scan_with_eviction)
{
    enum { N = 6000, CAP = 2000 };
    static struct event all[N];
    struct store *s = new_store(CAP, 0);
    rng_state = 4242;
    for (size_t i = 0; i < N; i++) {
        all[i] = mk_flow(i);
        add(s, &all[i]);
    }
    /* What the store holds: the CAP newest. */
    qsort(all, N, sizeof(all[0]), cmp_newest_first);

    static const char *queries[] = {
        "pid=201",
        "pid=999",
        "command=nginx",
        "command=abcdefghijklmnop",
        "command=nobody",
        "dest_port=5432",
        "dest_port=1",
        "status=failed",
        "status=established&type=connection",
        "workload=web",
        "workload=nobody",
        "peer_pod=db-0",
        "peer_namespace=data",
        "peer_workload=cache",
        "peer_service=db",
        "peer_pod=db-1&peer_service=cache&dest_port=443",
        "pid=210&dest_port=80",
        "pid=210&command=curl&dest_port=6379",
        "pid=205&node=node-a",
        "command=sh&type=close&workload=db",
        "dest_port=53&status=attempted&pod=web-0",
        "pid=220&since=103000&until=106000",
        "dest_port=443&since=105000",
        "type=exec&dest_port=80",
        "query=example.com",
        "query=API.Example.COM.",
        "query=*.example.com",
        "query=*.internal&status=answered",
        "query=nowhere.test",
        "rcode=NXDOMAIN",
        "rcode=0&type=dns,connection",
        "rcode=2&pid=210",
        "query=*.example.com&rcode=3&command=curl",
        "status=timeout",
        "type=dns&dest_port=53&pod=web-0",
        "rcode=3&type=exec",
    };
    for (size_t i = 0; i < sizeof(queries) / sizeof(queries[0]); i++) {
        struct query q = parse_q(queries[i]);
        check_paging(s, all, CAP, q, 7);
        check_paging(s, all, CAP, q, QUERY_LIMIT_MAX);
    }

    /* Random combinations, and results carry every field back. */
    for (int k = 0; k < 300; k++) {
        const struct event *x = &all[rng_below(CAP)];
        char qs[256];
        int n = snprintf(qs, sizeof(qs), "pid=%u", x->pid);
        if (rng_below(2) && x->dport)
            n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&dest_port=%u", x->dport);
        if (rng_below(2) && x->peer.pod)
            n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&peer_pod=%s", x->peer.pod);
        if (rng_below(2) && x->status)
            n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&status=%s",
                          event_status_name(x->status));
        if (rng_below(3) == 0)
            n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&since=%llu",
                          (unsigned long long)x->timestamp_ns);
        struct query q = parse_q(qs);
        check_paging(s, all, CAP, q, 1 + rng_below(20));
        q.limit = QUERY_LIMIT_MAX;
        struct store_result r;
        cr_assert_eq(store_query(s, &q, &r), 0);
        bool found = false;
        for (size_t j = 0; j < r.count; j++)
            if (r.events[j].id == x->id) {
                cr_assert(event_equal(&r.events[j], x), "\"%s\": event %zu differs", qs, j);
                found = true;
            }
        cr_assert(found, "\"%s\" misses the event it was made from", qs);
        store_result_free(&r);
    }

    /* Newer events of one pid push every flow out: their values answer nothing. */
    for (uint64_t i = 0; i < CAP; i++) {
        struct event e = mk(1000000 + i, i, EVENT_EXEC, "node-a");
        add(s, &e);
    }
    static const char *gone[] = {"pid=201", "command=nginx", "dest_port=443", "peer_pod=db-0"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
        struct query q = parse_q(gone[i]);
        struct store_result r;
        cr_assert_eq(store_query(s, &q, &r), 0);
        cr_assert_eq(r.total_count, 0, "%s", gone[i]);
        store_result_free(&r);
    }
    struct query q = parse_q("pid=1&command=sh&limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.total_count, CAP);
    cr_assert_eq(r.count, CAP);
    store_result_free(&r);
    store_free(s);
    for (size_t i = 0; i < N; i++)
        event_clear(&all[i]); /* the dns events' strings; the store held copies */
}

/*
 * An event no process made (a drop freed in softirq, a close before any
 * accept: pid 0, no command) shows no pid, and no pid filter matches it:
 * pid=0 included, with and without a type, on each of the store's paths.
 */
Test(store, pid_filters_never_match_events_without_a_process)
{
    struct store *s = new_store(100, 0);
    struct event drop = mk(10, 1, EVENT_PACKET_DROP, "n"), close = mk(20, 2, EVENT_CLOSE, "n");
    struct event in_process = mk(30, 3, EVENT_PACKET_DROP, "n"), exit = mk(40, 4, EVENT_EXIT, "n");
    drop.pid = close.pid = 0;
    drop.command[0] = close.command[0] = '\0';
    in_process.pid = 42;
    exit.pid = 7;
    add(s, &drop);
    add(s, &close);
    add(s, &in_process);
    add(s, &exit);
    const struct {
        const char *qs;
        size_t count;
        uint64_t first_id;
    } cases[] = {
        {"pid=0", 0, 0},
        {"pid=0&type=packet_drop", 0, 0},
        {"pid=0&type=close,exit", 0, 0},
        {"pid=0&command=sh", 0, 0},
        {"pid=0&dest_port=80", 0, 0},
        {"pid=42", 1, 3},
        {"pid=42&type=packet_drop", 1, 3},
        {"pid=7&node=n", 1, 4},
        {"type=packet_drop", 2, 3},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct query q = parse_q(cases[i].qs);
        struct store_result r;
        cr_assert_eq(store_query(s, &q, &r), 0);
        cr_expect_eq(r.count, cases[i].count, "%s: %zu events", cases[i].qs, r.count);
        if (r.count && cases[i].count)
            cr_expect_eq(r.events[0].id, cases[i].first_id, "%s", cases[i].qs);
        store_result_free(&r);
    }
    struct query q = parse_q("pid=0");
    cr_expect_not(query_match(&q, &drop));
    cr_expect_not(query_match(&q, &close));
    store_free(s);
}

Test(store, since_and_until_are_inclusive)
{
    struct store *s = new_store(100, 0);
    for (uint64_t ts = 10; ts <= 50; ts += 10) {
        struct event e = mk(ts, ts, EVENT_CONNECTION, "n");
        add(s, &e);
    }
    struct query q = parse_q("since=20&until=40");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 3);
    cr_assert_eq(r.events[0].timestamp_ns, 40);
    cr_assert_eq(r.events[2].timestamp_ns, 20);
    cr_assert_eq(r.total_count, 3);
    store_result_free(&r);
    store_free(s);
}

Test(store, limit_and_total_count)
{
    struct store *s = new_store(1000, 0);
    for (uint64_t i = 1; i <= 250; i++) {
        struct event e = mk(i, i, i % 2 ? EVENT_EXEC : EVENT_EXIT, "n");
        e.pid = (uint32_t)(i % 5);
        add(s, &e);
    }
    struct query q = parse_q("");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, QUERY_LIMIT_DEFAULT);
    cr_assert_eq(r.total_count, 250);
    cr_assert(r.has_next);
    cr_assert_eq(r.events[0].id, 250);
    cr_assert_eq(r.events[99].id, 151);
    store_result_free(&r);

    q = parse_q("type=exec&limit=7");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 7);
    cr_assert_eq(r.total_count, 125);
    cr_assert_eq(r.events[0].id, 249);
    store_result_free(&r);

    /* A filter the index does not cover: counted by scanning. */
    q = parse_q("pid=0&limit=3");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 3);
    cr_assert_eq(r.total_count, 50);
    cr_assert_eq(r.events[0].id, 250);
    cr_assert_eq(r.events[1].id, 245);
    store_result_free(&r);

    /* No matches: an empty array, nothing next. */
    q = parse_q("pid=77");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 0);
    cr_assert_eq(r.total_count, 0);
    cr_assert_not(r.has_next);
    store_result_free(&r);
    store_free(s);
}

Test(store, empty_store)
{
    struct store *s = new_store(10, 0);
    struct query q = parse_q("type=exec&pid=1");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 0);
    cr_assert_eq(r.total_count, 0);
    cr_assert_not(r.has_next);
    store_result_free(&r);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 0);
    cr_assert_eq(st.capacity, 10);
    store_free(s);
    cr_assert_null(store_new(&(struct store_limits){.max_events = 0}));
}

/* Random queries and page sizes, each walked to the end. */
Test(store, cursor_paging_walks_every_match_once)
{
    struct store *s = load_data(42);
    rng_state = 4242;
    for (int round = 0; round < 150; round++) {
        char qs[512];
        int n = 0;
        qs[0] = '\0';
        if (rng_below(2)) {
            static const char *types[] = {"exec", "exit", "connection,accept", "packet_drop,exec",
                                          "accept"};
            n += snprintf(qs + n, sizeof(qs) - n, "&type=%s", types[rng_below(5)]);
        }
        if (rng_below(3) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&node=%s", NODES[rng_below(4)]);
        if (rng_below(4) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&pod=%s", PODS[1 + rng_below(3)]);
        if (rng_below(5) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&namespace=%s", NAMESPACES[1 + rng_below(2)]);
        if (rng_below(4) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&pid=%u", 100 + rng_below(6));
        if (rng_below(5) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&command=%s", COMMANDS[rng_below(NCOMMANDS)]);
        unsigned since = 0;
        if (rng_below(3) == 0) {
            since = 1000 + rng_below(DATA_N / 3);
            n += snprintf(qs + n, sizeof(qs) - n, "&since=%u", since);
        }
        if (rng_below(3) == 0)
            n += snprintf(qs + n, sizeof(qs) - n, "&until=%u", since + rng_below(DATA_N / 3));
        struct query q = parse_q(qs[0] ? qs + 1 : qs);
        uint32_t page = rng_below(4) == 0 ? 1 + rng_below(3) : 1 + rng_below(300);
        check_paging(s, data, DATA_N, q, page);
    }
    store_free(s);
}

Test(store, cursor_from_an_evicted_or_foreign_event_still_pages)
{
    struct store *s = new_store(100, 0);
    for (uint64_t i = 1; i <= 20; i++) {
        struct event e = mk(i * 10, i, EVENT_EXEC, "n");
        add(s, &e);
    }
    /* A cursor between held events: the page starts just below it. */
    struct query q = parse_q("cursor=0000000000000055-0000000000000000&limit=2");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 2);
    cr_assert_eq(r.events[0].timestamp_ns, 80);
    cr_assert_eq(r.events[1].timestamp_ns, 70);
    cr_assert_eq(r.total_count, 20);
    cr_assert(r.has_next);
    store_result_free(&r);
    store_free(s);
}

Test(store, count_limit_evicts_the_oldest)
{
    struct store *s = new_store(10, 0);
    /* Interleave nodes and types so the oldest is spread over shards. */
    for (uint64_t i = 1; i <= 15; i++) {
        struct event e = mk(i * 100, i, 1 + i % 5, NODES[i % 3]);
        add(s, &e);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 10);
    cr_assert_eq(st.evicted_count, 5);
    cr_assert_eq(st.evicted_age, 0);
    cr_assert_eq(st.oldest_ns, 600);
    cr_assert_eq(st.newest_ns, 1500);

    /* An out-of-order event newer than the oldest: the oldest goes. */
    struct event e = mk(650, 99, EVENT_EXEC, "node-x");
    add(s, &e);
    store_get_stats(s, &st);
    cr_assert_eq(st.oldest_ns, 650);
    cr_assert_eq(st.evicted_count, 6);

    /* One older than everything held is the one evicted. */
    e = mk(50, 98, EVENT_EXIT, "node-a");
    add(s, &e);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 10);
    cr_assert_eq(st.evicted_count, 7);
    cr_assert_eq(st.added, 17);

    struct query q = parse_q("");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 10);
    cr_assert_eq(r.events[0].timestamp_ns, 1500);
    cr_assert_eq(r.events[9].timestamp_ns, 650);
    store_result_free(&r);
    store_free(s);
}

/* How many events q matches (total_count), and that the page holds min(that, limit). */
static uint64_t count_of(struct store *s, const char *qs)
{
    struct query q = parse_q(qs);
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0, "%s", qs);
    uint64_t n = r.total_count;
    size_t limit = q.limit ? q.limit : QUERY_LIMIT_DEFAULT;
    cr_assert_eq(r.count, n < limit ? n : limit, "%s: %zu of %llu", qs, r.count,
                 (unsigned long long)n);
    store_result_free(&r);
    return n;
}

/*
 * Eviction leaves the columns alone (pkg/store.c): the entries of evicted
 * events are skipped by queries at once, the ring drops them as it comes
 * round, and an event still held when it comes round (stamped newer than
 * every event added since) goes round with it; the columns' memory is
 * bounded by the capacity, not by the events ever added.
 */
Test(store, evicted_events_leave_the_columns)
{
    enum { CAP = 500 };
    struct store *s = new_store(CAP, 0);
    struct event ahead = mk(1000000000, 1, EVENT_CONNECTION, "node-a");
    ahead.pid = 77;
    ahead.dport = 7777;
    set_comm(&ahead, "ahead");
    add(s, &ahead);
    for (uint64_t i = 1; i < CAP; i++) {
        struct event e = mk(1000 + i, i, EVENT_CONNECTION, "node-a");
        char comm[16];
        snprintf(comm, sizeof(comm), "c%llu", (unsigned long long)i);
        set_comm(&e, comm);
        e.pid = 10000 + (uint32_t)i;
        e.dport = (uint16_t)(20000 + i);
        add(s, &e);
    }

    /* Half of them go: their values answer nothing at once, the others still do. */
    uint64_t ts = 100000, id = 100000;
    for (uint64_t i = 0; i < CAP / 2; i++, ts++, id++) {
        struct event e = mk(ts, id, EVENT_CONNECTION, "node-a");
        e.dport = 80;
        add(s, &e);
    }
    char qs[64];
    for (uint64_t i = 1; i < CAP; i += 7) {
        const char *fmt[] = {"pid=%llu", "command=c%llu", "dest_port=%llu"};
        const unsigned long long v[] = {10000 + i, i, 20000 + i};
        for (int f = 0; f < 3; f++) {
            snprintf(qs, sizeof(qs), fmt[f], v[f]);
            cr_assert_eq(count_of(s, qs), i > CAP / 2, "%s", qs);
            /* With a filter the shard key holds. */
            char both[96];
            snprintf(both, sizeof(both), "%s&node=node-a", qs);
            cr_assert_eq(count_of(s, both), i > CAP / 2, "%s", both);
        }
    }
    /* Time bounds and the shared values count only the events held. */
    cr_assert_eq(count_of(s, "pid=1&since=1000&limit=1000"), CAP / 2);
    cr_assert_eq(count_of(s, "command=sh&limit=1000"), CAP / 2);
    cr_assert_eq(count_of(s, "command=sh&until=100100&limit=1000"), 101);

    /* Many times round the ring: the memory stops growing once it is full, and the event
     * stamped ahead is still held and found by each of its values. */
    struct store_stats full, after;
    for (uint64_t i = 0; i < 4 * CAP; i++, ts++, id++) {
        struct event e = mk(ts, id, EVENT_CONNECTION, "node-a");
        e.dport = 80;
        add(s, &e);
    }
    store_get_stats(s, &full);
    for (uint64_t i = 0; i < 8 * CAP; i++, ts++, id++) {
        struct event e = mk(ts, id, EVENT_CONNECTION, "node-a");
        e.dport = 80;
        add(s, &e);
    }
    store_get_stats(s, &after);
    cr_assert_eq(after.events, CAP);
    cr_assert_eq(after.index_bytes, full.index_bytes);
    cr_assert_eq(count_of(s, "pid=77"), 1);
    cr_assert_eq(count_of(s, "command=ahead"), 1);
    cr_assert_eq(count_of(s, "dest_port=7777&type=connection"), 1);
    cr_assert_eq(count_of(s, "dest_port=80&limit=1000"), CAP - 1);
    cr_assert_eq(count_of(s, "pid=1&limit=1000"), CAP - 1);

    struct query q = parse_q("dest_port=80&limit=1000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.events[0].timestamp_ns, ts - 1);
    cr_assert_eq(r.events[CAP - 2].timestamp_ns, ts - (CAP - 1));
    store_result_free(&r);
    q = parse_q("limit=1");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.events[0].pid, 77);
    store_result_free(&r);
    store_free(s);
}

/*
 * A command per event, as a fork bomb of renamed processes makes: the
 * columns' command ids of evicted events are collected (pkg/store.c), so
 * their table stays bounded, and command filters stay exact across the
 * collections, for commands seen once and for one seen all along.
 */
Test(store, commands_that_come_and_go_are_collected)
{
    enum { CAP = 300, N = 40 * CAP };
    struct store *s = new_store(CAP, 0);
    struct store_stats at_half, at_end;
    char qs[64];
    for (uint64_t i = 0; i < N; i++) {
        struct event e = mk(1000 + i, i, i % 3 ? EVENT_EXEC : EVENT_CONNECTION, "node-a");
        char comm[16];
        snprintf(comm, sizeof(comm), i % 10 ? "u%llu" : "keep", (unsigned long long)i);
        set_comm(&e, comm);
        add(s, &e);
        if (i == N / 2)
            store_get_stats(s, &at_half);
        if (i % 997 == 0 || i == N - 1) {
            /* The newest command, one just evicted, and one held all along. */
            snprintf(qs, sizeof(qs), "command=u%llu", (unsigned long long)(i - i % 10 + 1));
            cr_assert_eq(count_of(s, qs), i % 10 >= 1, "%s after %llu", qs, (unsigned long long)i);
            if (i >= CAP + 1) {
                snprintf(qs, sizeof(qs), "command=u%llu", (unsigned long long)(i - CAP - 1));
                cr_assert_eq(count_of(s, qs), 0, "%s after %llu", qs, (unsigned long long)i);
            }
            uint64_t held = i + 1 < CAP ? i + 1 : CAP, first = i + 1 - held;
            uint64_t keep = (i / 10 + 1) - (first + 9) / 10;
            cr_assert_eq(count_of(s, "command=keep&limit=1000"), keep, "after %llu",
                         (unsigned long long)i);
            cr_assert_eq(count_of(s, "command=keep&type=connection&limit=1000"),
                         (i / 30 + 1) - (first + 29) / 30, "after %llu", (unsigned long long)i);
        }
    }
    store_get_stats(s, &at_end);
    cr_assert_eq(at_end.events, CAP);
    cr_assert_leq(at_end.index_bytes, at_half.index_bytes);
    store_free(s);
}

Test(store, count_limit_under_random_load_keeps_the_newest)
{
    enum { N = 5000, CAP = 700 };
    static struct event all[N];
    struct store *s = new_store(CAP, 0);
    rng_state = 99;
    for (size_t i = 0; i < N; i++) {
        all[i] = mk(10000 + i * 3 + rng_below(200), i + 1, 1 + rng_below(5), NODES[rng_below(4)]);
        add(s, &all[i]);
    }
    /* The store must hold exactly the CAP newest of all events. */
    qsort(all, N, sizeof(all[0]), cmp_newest_first);
    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, CAP);
    for (size_t i = 0; i < CAP; i++)
        cr_assert_eq(r.events[i].id, all[i].id, "result %zu", i);
    store_result_free(&r);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.evicted_count, N - CAP);
    store_free(s);
}

/*
 * Batches (store_add_move_batch) against one event at a time, on a load
 * where many events land in front of their shard's oldest (each leaves a
 * stale entry in the eviction heap, and enough of them make it rebuild):
 * both stores must hold the same CAP newest events with the same counters.
 */
Test(store, batches_match_single_adds_under_out_of_order_load)
{
    enum { N = 20000, CAP = 900 };
    static struct event all[N], moved[N];
    struct store *single = new_store(CAP, 0), *batched = new_store(CAP, 0);
    rng_state = 7;
    for (size_t i = 0; i < N; i++) {
        /* Up to 5000 ns of jitter over 7 ns steps: most events are out of order. */
        all[i] = mk(100000 + i * 7 + rng_below(5000), i + 1, 1 + rng_below(5), NODES[rng_below(4)]);
        all[i].pid = 1 + rng_below(50);
        all[i].dport = (uint16_t)rng_below(3);
        set_comm(&all[i], COMMANDS[rng_below(NCOMMANDS)]);
        if (i % 97 == 0 && i > 0)
            all[i] = all[i - 1]; /* a duplicate */
        moved[i] = all[i];
        add(single, &all[i]);
    }
    for (size_t i = 0; i < N;) {
        size_t n = 1 + rng_below(150);
        if (n > N - i)
            n = N - i;
        cr_assert_eq(store_add_move_batch(batched, &moved[i], n), 0);
        i += n;
    }

    struct store_stats a, b;
    store_get_stats(single, &a);
    store_get_stats(batched, &b);
    cr_assert_eq(b.events, CAP);
    cr_assert_eq(a.events, b.events);
    cr_assert_eq(a.added, b.added);
    cr_assert_eq(a.evicted_count, b.evicted_count);
    cr_assert_eq(a.duplicates, b.duplicates);
    cr_assert_gt(b.duplicates, 0);
    cr_assert_eq(a.oldest_ns, b.oldest_ns);
    cr_assert_eq(a.newest_ns, b.newest_ns);
    cr_assert_eq(a.index_bytes, b.index_bytes);

    const char *queries[] = {"limit=10000", "pid=7&limit=10000", "command=sh&limit=10000",
                             "dest_port=2&limit=10000", "type=exec&node=node-a&limit=10000"};
    for (size_t k = 0; k < sizeof(queries) / sizeof(queries[0]); k++) {
        struct query q = parse_q(queries[k]);
        struct store_result ra, rb;
        cr_assert_eq(store_query(single, &q, &ra), 0);
        cr_assert_eq(store_query(batched, &q, &rb), 0);
        cr_assert_eq(ra.count, rb.count, "%s: %zu vs %zu", queries[k], ra.count, rb.count);
        cr_assert_eq(ra.total_count, rb.total_count, "%s", queries[k]);
        for (size_t i = 0; i < ra.count; i++)
            cr_assert_eq(ra.events[i].id, rb.events[i].id, "%s: result %zu", queries[k], i);
        assert_sorted(&rb);
        store_result_free(&ra);
        store_result_free(&rb);
    }
    /* And exactly the CAP newest distinct events. */
    qsort(all, N, sizeof(all[0]), cmp_newest_first);
    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(batched, &q, &r), 0);
    size_t j = 0;
    for (size_t i = 0; i < r.count; i++, j++) {
        while (j > 0 && all[j].id == all[j - 1].id &&
               all[j].timestamp_ns == all[j - 1].timestamp_ns)
            j++;
        cr_assert_eq(r.events[i].id, all[j].id, "result %zu", i);
    }
    store_result_free(&r);
    store_free(single);
    store_free(batched);
}

/*
 * qs answers exactly what a scan of held[0..n) (newest first) selects, more
 * than min_matches events, every one in order (want: scratch of n events).
 */
static void assert_answers_like_a_scan(struct store *s, const char *qs, const struct event *held,
                                       size_t n, size_t min_matches, struct event *want)
{
    struct query q = parse_q(qs);
    struct store_result r;
    size_t m = reference(held, n, &q, want);
    cr_assert_gt(m, min_matches, "%s: a query that selects something", qs);
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, m, "%s: %zu results, want %zu", qs, r.count, m);
    cr_assert_eq(r.total_count, m, "%s", qs);
    for (size_t i = 0; i < m; i++)
        cr_assert_eq(r.events[i].id, want[i].id, "%s: result %zu", qs, i);
    store_result_free(&r);
}

/* Adds copies of all[0..n) in batches of 1 to max (<= 500) events, as they come off a bus. */
static void add_in_batches(struct store *s, const struct event *all, size_t n, unsigned max)
{
    struct event copy[500];
    cr_assert_leq(max, 500);
    for (size_t i = 0; i < n;) {
        size_t k = 1 + rng_below(max);
        if (k > n - i)
            k = n - i;
        memcpy(copy, &all[i], k * sizeof(*copy));
        cr_assert_eq(store_add_move_batch(s, copy, k), 0);
        i += k;
    }
}

/*
 * Shards and time lists of several thousand events filled in random
 * time order (a clock that steps back, a publisher sending any order), with
 * eviction: each late event goes into the middle of large sorted sequences.
 * Every query must still answer exactly the newest CAP events' matches.
 */
Test(store, large_shards_in_random_order_answer_like_a_scan)
{
    enum { N = 24000, CAP = 9000 };
    static struct event all[N], held[N], want[N];
    struct store *s = new_store(CAP, 0);
    rng_state = 2024;
    for (size_t i = 0; i < N; i++) {
        all[i] =
            mk(1000000 + rng_below(N * 10), i + 1, i % 3 ? EVENT_EXIT : EVENT_EXEC, NODES[i % 2]);
        all[i].pid = 1 + rng_below(3);
        all[i].dport = (uint16_t)rng_below(2);
        set_comm(&all[i], COMMANDS[rng_below(2)]);
    }
    add_in_batches(s, all, N, 500);
    /* What the store must hold: the CAP newest. */
    memcpy(held, all, sizeof(all));
    qsort(held, N, sizeof(held[0]), cmp_newest_first);

    const char *queries[] = {
        "limit=10000",
        "pid=2&limit=10000",
        "command=sh&limit=10000",
        "dest_port=1&pid=3&limit=10000",
        "type=exit&node=node-a&limit=10000",
        "since=1970-01-01T00:00:00.0011Z&until=1970-01-01T00:00:00.0012Z&limit=10000"};
    for (size_t k = 0; k < sizeof(queries) / sizeof(queries[0]); k++)
        assert_answers_like_a_scan(s, queries[k], held, CAP, 100, want);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, CAP);
    cr_assert_eq(st.evicted_count, N - CAP);
    cr_assert_eq(st.oldest_ns, held[CAP - 1].timestamp_ns);
    store_free(s);
}

/*
 * The time lists: queries with only types, time bounds and a cursor are
 * answered from them, and eviction takes the oldest of their fronts. Events
 * of every type over thousands of shards (nodes, pods, statuses, peers),
 * timestamps shared across shards (ties broken by id), any arrival order,
 * and a count limit: each such query, paged or not, answers like a scan of
 * the newest held, and the oldest held is the scan's.
 */
Test(store, time_queries_over_many_shards_answer_like_a_scan)
{
    enum { N = 30000, CAP = 9000 };
    static struct event all[N], held[N], want[N];
    static const unsigned types[] = {EVENT_CONNECTION, EVENT_ACCEPT, EVENT_EXEC,
                                     EVENT_EXIT,       EVENT_CLOSE,  EVENT_PACKET_DROP};
    struct store *s = new_store(CAP, 0);
    rng_state = 909;
    for (size_t i = 0; i < N; i++) {
        /* Few distinct timestamps: many events of other shards share each. */
        all[i] = mk(5000000 + rng_below(N / 4) * 1000, 1 + rng_below(1u << 30) * 64 + i % 64,
                    types[rng_below(6)], NODES[rng_below(4)]);
        all[i].k8s.pod_name = intern(PODS[rng_below(4)]);
        all[i].k8s.namespace = intern(NAMESPACES[rng_below(3)]);
        all[i].peer.pod = intern(PEER_PODS[rng_below(4)]);
        all[i].pid = 1 + rng_below(50);
        if (all[i].type == EVENT_CONNECTION)
            all[i].status = (uint8_t)(1 + rng_below(3));
    }
    add_in_batches(s, all, N, 300);
    memcpy(held, all, sizeof(all));
    qsort(held, N, sizeof(held[0]), cmp_newest_first);

    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_gt(st.shards, 1000, "%llu shards", (unsigned long long)st.shards);
    cr_assert_eq(st.events, CAP);
    cr_assert_eq(st.oldest_ns, held[CAP - 1].timestamp_ns);
    cr_assert_eq(st.newest_ns, held[0].timestamp_ns);

    char mid[64], end[64], qs[256];
    snprintf(mid, sizeof(mid), "%llu", (unsigned long long)held[CAP / 2].timestamp_ns);
    snprintf(end, sizeof(end), "%llu", (unsigned long long)held[CAP / 4].timestamp_ns);
    const char *queries[] = {"limit=10000", "type=exec&limit=10000",
                             "type=connection,close,packet_drop&limit=10000"};
    for (size_t k = 0; k < sizeof(queries) / sizeof(queries[0]); k++)
        assert_answers_like_a_scan(s, queries[k], held, CAP, 100, want);
    snprintf(qs, sizeof(qs), "since=%s&until=%s&limit=10000", mid, end);
    assert_answers_like_a_scan(s, qs, held, CAP, 100, want);
    snprintf(qs, sizeof(qs), "type=exit,accept&since=%s&limit=10000", mid);
    assert_answers_like_a_scan(s, qs, held, CAP, 100, want);

    check_paging(s, held, CAP, parse_q("limit=1"), 97);
    check_paging(s, held, CAP, parse_q("type=close,exec"), 250);
    snprintf(qs, sizeof(qs), "until=%s", end);
    check_paging(s, held, CAP, parse_q(qs), 1 + rng_below(40));
    store_free(s);
}

/*
 * An agent's order: records stamped in one order leave the ring in another,
 * so most events come a few places late, some far (past a block of the
 * tiered vectors), into long shards and time lists. Each index must
 * answer like a scan of the newest held.
 */
Test(store, nearly_ordered_events_answer_like_a_scan)
{
    enum { N = 15000, CAP = 9000 };
    static struct event all[N], held[N], want[N];
    struct store *s = new_store(CAP, 0);
    rng_state = 77;
    for (size_t i = 0; i < N; i++) {
        unsigned r = rng_below(100);
        uint64_t late = r < 60 ? 0 : r < 95 ? rng_below(8) : rng_below(3000);
        all[i] = mk(1000000 + i * 10 - (late * 10 < i * 10 ? late * 10 : 0) + rng_below(3), i + 1,
                    EVENT_EXIT, NODES[0]);
        all[i].pid = 1 + rng_below(2);
        all[i].dport = (uint16_t)rng_below(2);
        set_comm(&all[i], COMMANDS[rng_below(2)]);
    }
    add_in_batches(s, all, N, 64);
    memcpy(held, all, sizeof(all));
    qsort(held, N, sizeof(held[0]), cmp_newest_first);
    const char *queries[] = {"limit=10000", "pid=2&limit=10000", "command=sh&limit=10000",
                             "dest_port=1&pid=1&limit=10000"};
    for (size_t k = 0; k < sizeof(queries) / sizeof(queries[0]); k++)
        assert_answers_like_a_scan(s, queries[k], held, CAP, 1000, want);
    store_free(s);
}

/*
 * Every event older than all of its shard's (a replay, newest first): each
 * one goes in front, so the eviction heap collects stale entries until it
 * rebuilds itself; eviction must still take exactly the oldest.
 */
Test(store, newest_first_replay_evicts_exactly_the_oldest)
{
    enum { N = 3000, CAP = 2000 };
    struct store *s = new_store(CAP, 0);
    for (uint64_t i = N; i >= 1; i--) {
        struct event e = mk(i * 10, i, 1 + i % 2, NODES[i % 2]);
        add(s, &e);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, CAP);
    cr_assert_eq(st.evicted_count, N - CAP);
    cr_assert_eq(st.oldest_ns, (N - CAP + 1) * 10);
    /* Now new events push the oldest out one by one, in order. */
    for (uint64_t i = N + 1; i <= N + 500; i++) {
        struct event e = mk(i * 10, i, 1 + i % 2, NODES[i % 2]);
        add(s, &e);
        store_get_stats(s, &st);
        cr_assert_eq(st.oldest_ns, (i - CAP + 1) * 10, "after adding %llu", (unsigned long long)i);
    }
    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, CAP);
    for (size_t k = 0; k < r.count; k++)
        cr_assert_eq(r.events[k].timestamp_ns, (N + 500 - k) * 10, "result %zu", k);
    store_result_free(&r);
    store_free(s);
}

Test(store, traffic_moving_between_shards_stays_correct)
{
    /* One shard fills the store, then another takes over: the first drains and shrinks. */
    struct store *s = new_store(1000, 0);
    uint64_t ts = 1;
    for (int i = 0; i < 1000; i++, ts++) {
        struct event e = mk(ts, ts, EVENT_EXEC, "busy");
        add(s, &e);
    }
    for (int i = 0; i < 990; i++, ts++) {
        struct event e = mk(ts, ts, EVENT_EXIT, "other");
        add(s, &e);
    }
    struct query q = parse_q("node=busy&limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 10);
    cr_assert_eq(r.events[0].timestamp_ns, 1000);
    cr_assert_eq(r.events[9].timestamp_ns, 991);
    store_result_free(&r);
    q = parse_q("type=exit&limit=10000");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 990);
    assert_sorted(&r);
    store_result_free(&r);
    store_free(s);
}

/*
 * Pods come and go: each round's events carry a new pod, so each round makes new shards
 * while the oldest rounds' shards drain. Emptied shards are reused, so the shards made stay
 * bounded by what is held at once, and every query still answers like the reference: the
 * newest events, by pod (a gone pod has none, a pod that comes back is found again), by pid.
 */
Test(store, keys_that_come_and_go_reuse_their_shards)
{
    enum { CAP = 500, ROUNDS = 300, PER_ROUND = 50 };
    static const unsigned types[] = {EVENT_CONNECTION, EVENT_EXEC, EVENT_EXIT};
    struct store *s = new_store(CAP, 0);
    uint64_t ts = 1;
    char pod[32];
    for (unsigned r = 0; r < ROUNDS; r++) {
        /* The last round brings pod-3 back, long after its shards were let go. */
        snprintf(pod, sizeof(pod), "pod-%u", r == ROUNDS - 1 ? 3 : r);
        for (unsigned i = 0; i < PER_ROUND; i++, ts++) {
            struct event e = mk(ts, ts * 7919, types[(r + i) % 3], NODES[i % 2]);
            e.k8s.pod_name = intern(pod);
            e.pid = 100 + ts % 13;
            add(s, &e);
        }
        struct store_stats st;
        store_get_stats(s, &st);
        /* What is held is whole rounds, each with one shard per type and node: one shard per
         * key, none left over (a key found again after others were let go is not made twice). */
        unsigned held = r + 1 < CAP / PER_ROUND ? r + 1 : CAP / PER_ROUND;
        cr_assert_eq(st.shards, held * 6, "round %u: %" PRIu64 " shards", r, st.shards);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, CAP);
    cr_assert_leq(st.shards_made, (CAP / PER_ROUND + 2) * 6,
                  "%" PRIu64 " shards made for %u "
                  "rounds",
                  st.shards_made, ROUNDS);

    /* The newest CAP events, newest first, with their pods. */
    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, CAP);
    for (size_t i = 0; i < r.count; i++) {
        uint64_t want = ts - 1 - i;
        unsigned round = (unsigned)((want - 1) / PER_ROUND);
        snprintf(pod, sizeof(pod), "pod-%u", round == ROUNDS - 1 ? 3 : round);
        cr_assert_eq(r.events[i].timestamp_ns, want);
        cr_assert_eq(r.events[i].id, want * 7919);
        cr_assert_str_eq(r.events[i].k8s.pod_name, pod);
    }
    store_result_free(&r);

    /* A pod long gone has nothing; the one that came back has its last round only. */
    q = parse_q("pod=pod-4&limit=10000");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 0);
    store_result_free(&r);
    q = parse_q("pod=pod-3&limit=10000");
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, PER_ROUND);
    assert_sorted(&r);
    store_result_free(&r);
    char qs[64];
    snprintf(qs, sizeof(qs), "pod=pod-%u&type=exec&limit=10000", ROUNDS - 2);
    q = parse_q(qs);
    cr_assert_eq(store_query(s, &q, &r), 0);
    for (size_t i = 0; i < r.count; i++)
        cr_assert_eq(r.events[i].type, EVENT_EXEC);
    cr_assert_gt(r.count, 0);
    store_result_free(&r);

    /* By pid (columns over reused shards): exactly the held events of that pid. */
    q = parse_q("pid=105&limit=10000");
    cr_assert_eq(store_query(s, &q, &r), 0);
    size_t want = 0;
    for (uint64_t t = ts - CAP; t < ts; t++)
        want += 100 + t % 13 == 105;
    cr_assert_eq(r.count, want);
    assert_sorted(&r);
    for (size_t i = 0; i < r.count; i++)
        cr_assert_eq(r.events[i].pid, 105);
    store_result_free(&r);
    store_free(s);
}

Test(store, age_limit_uses_the_wall_clock_on_add)
{
    /* 1970 timestamps are far past a 100 ns retention: dropped on arrival, and counted. */
    struct store *s = new_store(1000, 100);
    for (uint64_t ts = 1; ts <= 200; ts++) {
        struct event e = mk(ts, ts, 1 + ts % 5, NODES[ts % 4]);
        add(s, &e);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 0);
    cr_assert_eq(st.evicted_age, 200);
    store_free(s);

    /* Without an age limit nothing expires. */
    s = new_store(1000, 0);
    for (uint64_t ts = 1; ts <= 200; ts++) {
        struct event e = mk(ts, ts, 1 + ts % 5, NODES[ts % 4]);
        add(s, &e);
    }
    cr_assert_eq(store_expire(s, UINT64_MAX), 0);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 200);
    store_free(s);
}

Test(store, age_limit_expires_and_counts)
{
    /* Timestamps near the wall clock so store_add's own expiry leaves them alone. */
    uint64_t now = (uint64_t)time(NULL) * 1000000000ull;
    uint64_t hour = 3600ull * 1000000000ull;
    struct store *s = new_store(1000, hour);
    for (uint64_t i = 0; i < 60; i++) {
        struct event e =
            mk(now - 30 * 60 * 1000000000ull + i * 1000000000ull, i + 1, 1 + i % 5, NODES[i % 4]);
        add(s, &e);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 60);
    cr_assert_eq(st.evicted_age, 0);

    /* 30 minutes and 10 seconds on, the first 10 events are older than an hour. */
    uint64_t later = now + (30 * 60 + 10) * 1000000000ull;
    cr_assert_eq(store_expire(s, later), 10);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 50);
    cr_assert_eq(st.evicted_age, 10);
    cr_assert_eq(st.oldest_ns, later - hour);

    /* An event already past retention when it arrives is dropped and counted. */
    struct event old = mk(now - 2 * hour, 1000, EVENT_EXEC, "node-a");
    add(s, &old);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 50);
    cr_assert_eq(st.evicted_age, 11);

    struct query q = parse_q("limit=10000");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 50);
    cr_assert_geq(r.events[49].timestamp_ns, later - hour);
    store_result_free(&r);

    cr_assert_eq(store_expire(s, later + 2 * hour), 50);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 0);
    cr_assert_eq(st.evicted_age, 61);
    store_free(s);
}

/*
 * The age limit after a late event: one older than everything held when the store last
 * expired (so older than what that expiry saw as the oldest) is expired on time too, as are
 * the events after it, and a store emptied by expiry takes events again.
 */
Test(store, age_limit_expires_a_late_event_older_than_everything_held)
{
    uint64_t sec = 1000000000ull, hour = 3600 * sec;
    uint64_t now = (uint64_t)time(NULL) * sec;
    struct store *s = new_store(1000, hour);
    for (uint64_t i = 0; i < 10; i++) {
        struct event e = mk(now - 30 * 60 * sec + i * sec, i + 1, EVENT_CONNECTION, NODES[i % 4]);
        add(s, &e);
    }
    cr_assert_eq(store_expire(s, now), 0, "nothing is an hour old yet");

    /* 50 minutes old: older than the ten above, still inside the hour. */
    struct event late = mk(now - 50 * 60 * sec, 100, EVENT_EXEC, "node-b");
    add(s, &late);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 11);
    cr_assert_eq(st.oldest_ns, now - 50 * 60 * sec);

    /* 15 minutes on, only the late one is past the hour. */
    cr_assert_eq(store_expire(s, now + 15 * 60 * sec), 1);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 10);
    cr_assert_eq(st.oldest_ns, now - 30 * 60 * sec);
    /* 30 minutes and 4.5 s on, the first five of the others. */
    cr_assert_eq(store_expire(s, now + 30 * 60 * sec + 4 * sec + sec / 2), 5);

    cr_assert_eq(store_expire(s, now + 2 * hour), 5);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 0);
    struct event again = mk(now, 200, EVENT_EXIT, "node-c");
    cr_assert_eq(store_add_move(s, &again), 0);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 1);
    store_free(s);
}

static struct event mk_exec(uint64_t ts, uint64_t id, const char *filename)
{
    struct event e = mk(ts, id, EVENT_EXEC, "node-a");
    e.u.exec.filename = strdup(filename);
    static const char args[] = "ls\0-l\0/tmp";
    e.u.exec.args = malloc(sizeof(args));
    memcpy(e.u.exec.args, args, sizeof(args));
    e.u.exec.args_len = sizeof(args);
    return e;
}

/*
 * A record keeps only the address bytes its shard needs (none, 4 or 16): every shape of
 * address pair comes back whole, the ones whose only set bytes are past the first four
 * included (an IPv6 address such as ::1).
 */
Test(store, addresses_of_every_shape_come_back_whole)
{
    static const struct {
        uint8_t s[16], d[16];
    } shapes[] = {
        {{0}, {0}},
        {{10, 0, 0, 1}, {10, 0, 0, 2}},
        {{0}, {192, 168, 1, 1}},
        {{[15] = 1}, {[15] = 1}},
        {{[4] = 0xab}, {0}},
        {{0}, {[8] = 0xcd}},
        {{0xfd, [15] = 5}, {0xfe, 0x80, [7] = 9, [12] = 1}},
    };
    size_t n = sizeof(shapes) / sizeof(shapes[0]);
    struct store *s = new_store(64, 0);
    for (size_t i = 0; i < n; i++) {
        struct event e = mk(100 + i, i + 1, EVENT_CONNECTION, "node-a");
        memcpy(e.saddr, shapes[i].s, 16);
        memcpy(e.daddr, shapes[i].d, 16);
        e.sport = (uint16_t)(1000 + i);
        e.dport = (uint16_t)(2000 + i);
        cr_assert_eq(store_add_move(s, &e), 0);
    }
    struct query q = parse_q("");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, n);
    for (size_t j = 0; j < r.count; j++) {
        size_t i = r.events[j].id - 1; /* newest first */
        cr_assert_eq(memcmp(r.events[j].saddr, shapes[i].s, 16), 0, "source of shape %zu", i);
        cr_assert_eq(memcmp(r.events[j].daddr, shapes[i].d, 16), 0, "destination of shape %zu", i);
        cr_assert_eq(r.events[j].sport, 1000 + i);
        cr_assert_eq(r.events[j].dport, 2000 + i);
    }
    store_result_free(&r);
    store_free(s);
}

Test(store, exec_strings_are_copied_and_owned)
{
    struct store *s = new_store(2, 0);
    struct event e = mk_exec(10, 1, "/usr/bin/ls");
    cr_assert_eq(store_add(s, &e), 0);
    /* The store holds its own copy: the caller's strings can go. */
    memset(e.u.exec.filename, 'X', strlen(e.u.exec.filename));
    event_clear(&e);

    struct event m = mk_exec(20, 2, "/bin/sh");
    m.uid = 65534;
    m.u.exec.has_euid = 1; /* euid 0, root's: kept apart from none */
    cr_assert_eq(store_add_move(s, &m), 0);
    cr_assert_null(m.u.exec.filename, "store_add_move takes the strings");
    cr_assert_null(m.u.exec.args);

    struct query q = parse_q("");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 2);
    cr_assert_str_eq(r.events[0].u.exec.filename, "/bin/sh");
    cr_assert_str_eq(r.events[1].u.exec.filename, "/usr/bin/ls");
    cr_assert_eq(r.events[1].u.exec.args_len, 11);
    cr_assert(memcmp(r.events[1].u.exec.args, "ls\0-l\0/tmp", 11) == 0);
    cr_assert_eq(r.events[0].uid, 65534);
    cr_assert(r.events[0].u.exec.has_euid && r.events[0].u.exec.euid == 0);
    cr_assert_not(r.events[1].u.exec.has_euid);

    /* Results are deep copies that outlive eviction of the originals. */
    struct event n1 = mk_exec(30, 3, "/bin/a"), n2 = mk_exec(40, 4, "/bin/b");
    cr_assert_eq(store_add_move(s, &n1), 0);
    cr_assert_eq(store_add_move(s, &n2), 0);
    cr_assert_str_eq(r.events[1].u.exec.filename, "/usr/bin/ls");
    store_result_free(&r);
    cr_assert_eq(r.count, 0);

    /* An exec event evicted on arrival is freed too. */
    struct event old = mk_exec(1, 5, "/bin/old");
    cr_assert_eq(store_add_move(s, &old), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.evicted_count, 3);
    store_free(s);
}

/* dns events own their query and answers like exec its strings: kept, copied, freed (ASan). */
Test(store, dns_strings_are_copied_and_owned)
{
    struct store *s = new_store(1, 0);
    static const char answers[] = "web.test\0"
                                  "10.1.2.3";
    for (uint64_t i = 1; i <= 3; i++) {
        struct event e = mk(i * 10, i, EVENT_DNS, "node-a");
        e.status = EVENT_STATUS_ANSWERED;
        e.u.dns.query = strdup("alias.test");
        e.u.dns.answers = malloc(sizeof(answers));
        memcpy(e.u.dns.answers, answers, sizeof(answers));
        e.u.dns.answers_len = sizeof(answers);
        e.u.dns.transaction_id = (uint16_t)i;
        cr_assert_eq(store_add_move(s, &e), 0);
        cr_assert_null(e.u.dns.query, "store_add_move takes the strings");
    }
    struct query q = parse_q("type=dns");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 1);
    cr_assert_str_eq(r.events[0].u.dns.query, "alias.test");
    cr_assert_eq(r.events[0].u.dns.answers_len, sizeof(answers));
    cr_assert(memcmp(r.events[0].u.dns.answers, answers, sizeof(answers)) == 0);
    cr_assert_eq(r.events[0].u.dns.transaction_id, 3);
    store_result_free(&r);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.evicted_count, 2);
    store_free(s);
}

/*
 * The history keeps an exec event's filename after its args and a dns event's query after
 * its answers, in one allocation: the event reads the same, copies and frees as one (ASan
 * checks the frees), and an event with one string or none is left as it is.
 */
Test(store, packed_strings_read_copy_and_free_like_separate_ones)
{
    static const char args[] = "ls\0-l\0/tmp";
    struct event e = mk_exec(10, 1, "/usr/bin/ls"), ref;
    cr_assert_eq(event_copy(&ref, &e), 0);
    event_pack_strings(&e);
    cr_assert_eq(e.u.exec.filename, e.u.exec.args + e.u.exec.args_len, "one allocation");
    cr_assert(event_equal(&e, &ref));
    event_pack_strings(&e); /* a second time changes nothing */
    cr_assert_eq(e.u.exec.filename, e.u.exec.args + e.u.exec.args_len);
    struct event c;
    cr_assert_eq(event_copy(&c, &e), 0);
    cr_assert(event_equal(&c, &ref));
    cr_assert(memcmp(c.u.exec.args, args, sizeof(args)) == 0);
    event_clear(&c);
    event_clear(&e);
    event_clear(&ref);

    /* Only a filename, or empty args: nothing to gain, nothing changes. */
    struct event f = mk(20, 2, EVENT_EXEC, "node-a");
    f.u.exec.filename = strdup("/bin/true");
    event_pack_strings(&f);
    cr_assert_str_eq(f.u.exec.filename, "/bin/true");
    cr_assert_null(f.u.exec.args);
    event_clear(&f);
    struct event z = mk(20, 2, EVENT_EXEC, "node-a");
    z.u.exec.filename = strdup("/bin/true");
    z.u.exec.args = malloc(1);
    z.u.exec.args_len = 0;
    event_pack_strings(&z);
    cr_assert_str_eq(z.u.exec.filename, "/bin/true");
    event_clear(&z);

    /* dns: the query after the answers; without answers it stays alone. */
    static const char answers[] = "web.test\0"
                                  "10.1.2.3";
    struct event d = mk(30, 3, EVENT_DNS, "node-a");
    d.status = EVENT_STATUS_ANSWERED;
    d.u.dns.query = strdup("alias.test");
    d.u.dns.answers = malloc(sizeof(answers));
    memcpy(d.u.dns.answers, answers, sizeof(answers));
    d.u.dns.answers_len = sizeof(answers);
    cr_assert_eq(event_copy(&ref, &d), 0);
    event_pack_strings(&d);
    cr_assert_eq(d.u.dns.query, d.u.dns.answers + d.u.dns.answers_len);
    cr_assert(event_equal(&d, &ref));
    event_clear(&ref);
    struct event q = mk(40, 4, EVENT_DNS, "node-a");
    q.status = EVENT_STATUS_TIMEOUT;
    q.u.dns.query = strdup("silent.test");
    event_pack_strings(&q);
    cr_assert_str_eq(q.u.dns.query, "silent.test");
    cr_assert_null(q.u.dns.answers);

    /* Through the history: stored packed, answered as they were, freed on eviction. */
    struct store *s = new_store(2, 0);
    cr_assert_eq(store_add_move(s, &d), 0);
    cr_assert_eq(store_add_move(s, &q), 0);
    struct query qq = parse_q("type=dns");
    struct store_result r;
    cr_assert_eq(store_query(s, &qq, &r), 0);
    cr_assert_eq(r.count, 2);
    cr_assert_str_eq(r.events[0].u.dns.query, "silent.test");
    cr_assert_str_eq(r.events[1].u.dns.query, "alias.test");
    cr_assert(memcmp(r.events[1].u.dns.answers, answers, sizeof(answers)) == 0);
    store_result_free(&r);
    struct event x = mk_exec(50, 5, "/bin/x"), y = mk_exec(60, 6, "/bin/y");
    cr_assert_eq(store_add_move(s, &x), 0);
    cr_assert_eq(store_add_move(s, &y), 0);
    store_free(s);
}

Test(store, duplicates_and_invalid_types)
{
    struct store *s = new_store(10, 0);
    struct event e = mk(5, 5, EVENT_EXEC, "n");
    add(s, &e);
    add(s, &e); /* redelivered */
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 1);
    cr_assert_eq(st.duplicates, 1);
    cr_assert_eq(st.added, 1);

    struct event bad = mk(6, 6, EVENT_TYPE_NONE, "n");
    cr_assert_eq(store_add(s, &bad), -EINVAL);
    bad.type = EVENT_TYPE_COUNT;
    cr_assert_eq(store_add(s, &bad), -EINVAL);
    store_get_stats(s, &st);
    cr_assert_eq(st.events, 1);
    cr_assert_eq(st.failed, 2);
    store_free(s);
}

Test(store, node_filter_compares_text)
{
    struct store *s = new_store(10, 0);
    char name[] = "plain-node"; /* not interned */
    struct event e = mk(5, 5, EVENT_EXEC, "x");
    e.node = name;
    add(s, &e);
    e.id = 6;
    e.node = intern("plain-node"); /* same text, other pointer: same shard */
    add(s, &e);
    struct query q = parse_q("node=plain-node");
    struct store_result r;
    cr_assert_eq(store_query(s, &q, &r), 0);
    cr_assert_eq(r.count, 2);
    store_result_free(&r);
    store_free(s);
}

/* One writer, two readers: no crash, every result sorted and consistent. */
struct conc {
    struct store *s;
    atomic_bool done;
    atomic_ulong queries;
};

static void *conc_writer(void *arg)
{
    struct conc *c = arg;
    uint64_t st = 12345;
    for (uint64_t i = 0; i < 30000; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        struct event e =
            mk(1000000 + i * 4 + (st >> 60), i + 1, 1 + (st >> 33) % 5, NODES[(st >> 40) % 4]);
        e.pid = (uint32_t)(st >> 50) % 3;
        if (e.type == EVENT_EXEC) {
            e.u.exec.filename = strdup("/bin/true");
            e.u.exec.args = NULL;
        }
        if (store_add_move(c->s, &e) != 0)
            break;
    }
    atomic_store(&c->done, true);
    return NULL;
}

static void *conc_reader(void *arg)
{
    struct conc *c = arg;
    static const char *qs[] = {"", "type=exec", "pid=1&limit=50", "node=node-b&limit=500"};
    unsigned i = 0;
    bool ok = true;
    while (ok && (!atomic_load(&c->done) || i < 8)) {
        const char *text = qs[i++ % 4];
        struct query q;
        query_parse(&q, text, strlen(text), false, NULL, 0);
        struct store_result r;
        if (store_query(c->s, &q, &r) != 0)
            return (void *)1;
        for (size_t j = 1; j < r.count; j++)
            if (cmp_newest_first(&r.events[j - 1], &r.events[j]) >= 0)
                ok = false;
        for (size_t j = 0; j < r.count; j++)
            if (!query_match(&q, &r.events[j]))
                ok = false;
        if (r.count > q.limit || r.total_count < r.count)
            ok = false;
        store_result_free(&r);
        atomic_fetch_add(&c->queries, 1);
    }
    return ok ? NULL : (void *)1;
}

Test(store, concurrent_writer_and_readers)
{
    struct conc c = {.s = new_store(5000, 0)};
    pthread_t w, r1, r2;
    pthread_create(&r1, NULL, conc_reader, &c);
    pthread_create(&r2, NULL, conc_reader, &c);
    pthread_create(&w, NULL, conc_writer, &c);
    void *res1, *res2;
    pthread_join(w, NULL);
    pthread_join(r1, &res1);
    pthread_join(r2, &res2);
    cr_assert_null(res1, "reader 1 saw an unsorted or wrong result");
    cr_assert_null(res2, "reader 2 saw an unsorted or wrong result");
    cr_assert_geq(atomic_load(&c.queries), 16);
    struct store_stats st;
    store_get_stats(c.s, &st);
    cr_assert_eq(st.events, 5000);
    cr_assert_eq(st.added, 30000);
    cr_assert_eq(st.evicted_count, 25000);
    store_free(c.s);
}

/*
 * A command of invalid UTF-8 is found by the text the API shows for it (each bad
 * byte a U+FFFD), on every path a query takes: alone (the columns' path when it
 * is bytes), with a type, with a name; two different commands shown alike are
 * both found.
 */
Test(store, command_found_by_its_shown_text)
{
    struct store *s = new_store(1000, 0);
    static const char *comms[] = {"tr\xffue\x80", "tr\xfeue\xc0", "true", "tr\xffue"};
    for (uint64_t i = 0; i < 40; i++) {
        struct event e = mk(1000 + i, i, i % 2 ? EVENT_EXEC : EVENT_CONNECTION, "node-a");
        set_comm(&e, comms[i % 4]);
        add(s, &e);
    }
    cr_assert_eq(count_of(s, "command=tr%FFue%80"), 10, "its bytes");
    cr_assert_eq(count_of(s, "command=tr%EF%BF%BDue%EF%BF%BD"), 20, "the text of two commands");
    cr_assert_eq(count_of(s, "command=tr%EF%BF%BDue%EF%BF%BD&type=exec"), 10);
    cr_assert_eq(count_of(s, "command=tr%EF%BF%BDue%EF%BF%BD&node=node-a&pid=0"), 0);
    cr_assert_eq(count_of(s, "command=tr%EF%BF%BDue%EF%BF%BD&node=node-a"), 20);
    cr_assert_eq(count_of(s, "command=tr%EF%BF%BDue"), 10);
    cr_assert_eq(count_of(s, "command=true"), 10);
    store_free(s);
}

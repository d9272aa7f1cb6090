/*
 * pkg/flows alone: how much one edge-minute costs, how fast events are
 * counted, and how long /api/flows takes over a full window, with and
 * without the exchange a second replica adds (encode + decode + merge).
 *
 *   bench_flows [--edges N] [--minutes M] [--events-per-minute K] [--queries Q]
 *
 * Fills N edges (distinct client pods of 50 workloads) with M minutes each,
 * K connection events per edge-minute, then runs Q queries over the whole
 * window grouped by workload. Prints one JSON line per measurement (as
 * scripts/bench-aggregator.sh reads them): bytes per edge-minute (as the
 * store accounts its allocations, and measured as peak RSS growth divided by
 * the buckets held) and what 10,000 edges x 24 hours take at that cost,
 * events/s counted, and query p50/p99 in ms for one replica and for one
 * replica plus a peer's answer of the same size (run one after the other,
 * so an upper bound), and p99 of the default window (the last 15 minutes)
 * over the same edges. Last, bytes per edge for edges seen in one minute each
 * (connections to many addresses outside the cluster).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "clock.h"
#include "event.h"
#include "flows.h"
#include "intern.h"

#define NS_PER_MIN (60ull * 1000000000ull)

static long rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(uint64_t *ns, size_t n, unsigned p)
{
    qsort(ns, n, sizeof(*ns), cmp_u64);
    size_t i = (n * p + 99) / 100;
    return (double)ns[i > 0 ? i - 1 : 0] / 1e6;
}

/* One measurement as bench-aggregator.sh's run() reads it. */
static void line(const char *name, double v, const char *unit, const char *op, double target)
{
    printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\"", name, v, unit);
    if (op != NULL)
        printf(",\"target\":\"%s %.0f\",\"met\":%s", op[0] == 'l' ? "<=" : ">=", target,
               (op[0] == 'l' ? v <= target : v >= target) ? "true" : "false");
    printf("}\n");
}

static uint64_t arg(int argc, char **argv, const char *name, uint64_t def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return strtoull(argv[i + 1], NULL, 10);
    return def;
}

/*
 * The other end of the scale: n edges seen in one minute each, as
 * connections from the pods to n distinct addresses outside the cluster
 * make (each address its own edge): bytes per edge as the store accounts
 * them, its key and one plain bucket.
 */
static void one_minute_edges(uint64_t n, const char **pods, size_t npods, struct event *e,
                             uint64_t now)
{
    struct flows *f = flows_new(60 * NS_PER_MIN, n);
    struct flows_stats st0, st;

    flows_get_stats(f, &st0);
    memset(&e->peer, 0, sizeof(e->peer));
    e->timestamp_ns = now - NS_PER_MIN + 1;
    for (uint64_t i = 0; i < n; i++) {
        e->k8s.pod_name = pods[i % npods];
        e->daddr[0] = 100;
        e->daddr[1] = (uint8_t)(i >> 16);
        e->daddr[2] = (uint8_t)(i >> 8);
        e->daddr[3] = (uint8_t)i;
        flows_add(f, e, 1, e->timestamp_ns);
    }
    flows_get_stats(f, &st);
    line("flows.one_minute_edges", (double)st.edges, "edges", NULL, 0);
    line("flows.bytes_per_one_minute_edge",
         st.edges ? (double)(st.bytes - st0.bytes) / (double)st.edges : 0.0, "bytes", NULL, 0);
    flows_free(f);
}

int main(int argc, char **argv)
{
    uint64_t edges = arg(argc, argv, "--edges", 2000);
    uint64_t minutes = arg(argc, argv, "--minutes", 240);
    uint64_t per_min = arg(argc, argv, "--events-per-minute", 4);
    uint64_t queries = arg(argc, argv, "--queries", 20);
    uint64_t now = (clock_realtime_ns() / NS_PER_MIN) * NS_PER_MIN;
    uint64_t start = now - minutes * NS_PER_MIN;
    struct flows *f = flows_new(minutes * NS_PER_MIN + NS_PER_MIN, edges * minutes);
    char name[64];
    const char **pods = calloc(edges, sizeof(*pods));
    const char *workloads[50];

    if (f == NULL || pods == NULL || queries == 0) {
        fprintf(stderr, "bench_flows: out of memory\n");
        return 1;
    }
    for (size_t w = 0; w < 50; w++) {
        snprintf(name, sizeof(name), "workload-%zu", w);
        workloads[w] = intern(name);
    }
    for (size_t i = 0; i < edges; i++) {
        snprintf(name, sizeof(name), "workload-%zu-%zu", i % 50, i);
        pods[i] = intern(name);
    }
    struct event e = {.type = EVENT_CONNECTION,
                      .protocol = 6,
                      .family = EVENT_FAMILY_IPV4,
                      .status = EVENT_STATUS_ESTABLISHED,
                      .dport = 8080,
                      .node = intern("node-1")};
    e.k8s.namespace = intern("shop");
    e.k8s.workload_kind = intern("Deployment");
    e.peer.namespace = intern("shop");
    e.peer.workload = intern("db");
    e.peer.workload_kind = intern("StatefulSet");

    long rss_before = rss_kib();
    uint64_t t0 = clock_monotonic_ns(), counted = 0;
    for (uint64_t m = 0; m < minutes; m++) {
        for (size_t i = 0; i < edges; i++) {
            e.k8s.pod_name = pods[i];
            e.k8s.workload = workloads[i % 50];
            for (uint64_t k = 0; k < per_min; k++) {
                e.timestamp_ns = start + m * NS_PER_MIN + k * 1000000ull + 1;
                e.u.conn.latency_ns = 1000 + (i * 7919 + k * 104729) % 5000000;
                flows_add(f, &e, 1, e.timestamp_ns);
                counted++;
            }
        }
    }
    uint64_t fill_ns = clock_monotonic_ns() - t0;
    long rss_after = rss_kib();

    struct flows_stats st;
    flows_get_stats(f, &st);
    struct flows_query q = {.since_ns = start, .until_ns = now, .limit = 1000};
    uint64_t *one = calloc(queries, sizeof(uint64_t)), *two = calloc(queries, sizeof(uint64_t));
    uint64_t *last15 = calloc(queries, sizeof(uint64_t));
    size_t nedges = 0;
    for (uint64_t i = 0; i < queries; i++) {
        struct flows_result r, peer;
        struct buf b;
        uint64_t a = clock_monotonic_ns();
        flows_query(f, &q, &r);
        flows_result_finish(&r, q.status, q.limit);
        one[i] = clock_monotonic_ns() - a;
        nedges = r.count;
        flows_result_free(&r);

        /*
         * As with a peer: it runs its query at the same time on its own
         * machine (not timed here), then its answer of the same size is
         * encoded, decoded and merged after this replica's own query.
         */
        flows_query(f, &q, &peer);
        a = clock_monotonic_ns();
        flows_query(f, &q, &r);
        buf_init(&b);
        flows_result_encode(&peer, &b);
        flows_result_free(&peer);
        flows_result_decode(b.data, b.len, &peer);
        for (size_t j = 0; j < peer.count; j++)
            flows_result_add(&r, &peer.edges[j]);
        flows_result_finish(&r, q.status, q.limit);
        two[i] = clock_monotonic_ns() - a;
        buf_free(&b);
        flows_result_free(&peer);
        flows_result_free(&r);

        /* The default window: the last 15 minutes of the same edges. */
        struct flows_query recent = q;
        recent.since_ns = now - FLOWS_DEFAULT_WINDOW_NS;
        a = clock_monotonic_ns();
        flows_query(f, &recent, &r);
        flows_result_finish(&r, recent.status, recent.limit);
        last15[i] = clock_monotonic_ns() - a;
        flows_result_free(&r);
    }
    double bytes = st.edge_minutes ? (double)st.bytes / (double)st.edge_minutes : 0.0;
    double rss =
        st.edge_minutes ? (double)(rss_after - rss_before) * 1024.0 / (double)st.edge_minutes : 0.0;
    double p99 = pct_ms(one, queries, 99), p99_two = pct_ms(two, queries, 99);
    line("flows.edges", (double)st.edges, "edges", NULL, 0);
    line("flows.edge_minutes", (double)st.edge_minutes, "edge-minutes", NULL, 0);
    line("flows.bytes_per_edge_minute", bytes, "bytes", "le", 256);
    line("flows.rss_bytes_per_edge_minute", rss, "bytes", "le", 256);
    if (edges >= 10000 && minutes >= 1440) /* the size: measured, not extrapolated */
        line("flows.memory_10k_edges_24h", (double)(rss_after - rss_before) / 1024, "MiB", "le",
             512);
    line("flows.count_events_per_s", (double)counted / ((double)fill_ns / 1e9), "events/s", "ge",
         1000000);
    line("flows.query_edges", (double)nedges, "edges", NULL, 0);
    line("flows.query_p50_ms", pct_ms(one, queries, 50), "ms", NULL, 0);
    line("flows.query_p99_ms", p99, "ms", "le", 50);
    line("flows.two_replica_p99_ms", p99_two, "ms", NULL, 0);
    line("flows.two_replica_p99_ratio", p99 > 0 ? p99_two / p99 : 0, "x", "le", 2);
    line("flows.last_15m_p99_ms", pct_ms(last15, queries, 99), "ms", "le", 50);
    free(one);
    free(two);
    free(last15);
    flows_free(f);
    one_minute_edges(edges * 10, pods, edges, &e, now);
    free(pods);
    return 0;
}

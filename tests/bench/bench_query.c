/*
 * Query latency benchmark (issue 5, item 4; issue 9): p50/p99 of GET /api/events
 * over HTTP for each query shape (newest 100, by type, by node + type, by pod, a
 * since/until window, a paged walk of 10 pages, then every other filter of
 * SPEC §6 and §8 matching often, rarely and never) against a running
 * aggregator or agent that already holds the events (bench_aggregator_ingest
 * fills it with the synthetic mix).
 *
 * Usage: bench_query --http ADDR [--requests N] [--prefix NAME]
 * Prints one JSON line per measurement (see bench_emit()).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_aggregator_events.h"
#include "bench_query_http.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static const char *prefix = "aggregator.query";

/*
 * One filter shape: request i asks for fmt with a word (words[i % nwords])
 * or a number (base + i * 7919 % mod, mod 0 = base).
 */
struct filter_shape {
    const char *shape;
    const char *fmt;
    const char *const *words;
    size_t nwords;
    unsigned base, mod;
};

static const char *const statuses[] = {"established", "attempted", "failed"};
static const char *const no_peer[] = {"app-3", "db-0"};

static const struct filter_shape filter_shapes[] = {
    {"by_namespace", "namespace=%s", (const char *const[]){"default", "kube-system"}, 2},
    {"by_pid_rare", "pid=%u", NULL, 0, 1000, 60000},
    {"by_pid_none", "pid=%u", NULL, 0, 70000, 1000},
    {"by_pid_type", "pid=%u&type=exec", NULL, 0, 1000, 60000},
    {"by_command", "command=%s", bench_commands, BENCH_NCOMMANDS},
    {"by_command_none", "command=%s", (const char *const[]){"nobody", "zzz"}, 2},
    {"by_command_node", "command=%s&node=node-3", bench_commands, BENCH_NCOMMANDS},
    {"by_dest_port", "dest_port=%u", NULL, 0, 443, 0},
    {"by_dest_port_none", "dest_port=%u", NULL, 0, 1, 1000},
    {"by_dest_port_pid", "dest_port=5432&pid=%u", NULL, 0, 1000, 60000},
    {"by_status", "status=%s", statuses, 3},
    {"by_workload", "workload=%s", no_peer, 2},
    {"by_peer_pod", "peer_pod=%s", no_peer, 2},
    {"by_peer_namespace", "peer_namespace=%s", (const char *const[]){"data", "prod"}, 2},
    {"by_peer_workload", "peer_workload=%s", no_peer, 2},
    {"by_peer_service", "peer_service=%s", no_peer, 2},
};
static int failures;

static uint64_t timed_get(struct bench_http *h, const char *path, struct buf *body)
{
    uint64_t t0 = bench_mono_ns();
    int status = bench_http_get(h, path, body);
    uint64_t dt = bench_mono_ns() - t0;
    if (status != 200) {
        if (failures++ < 5)
            fprintf(stderr, "bench_query: GET %s: %d %.200s\n", path, status,
                    body->data ? body->data : "");
    }
    return dt;
}

static void report(const char *shape, uint64_t *lat, size_t n, double p99_target, double count)
{
    char name[160];
    snprintf(name, sizeof(name), "%s.%s.p50", prefix, shape);
    bench_emit(name, pct(lat, n, 0.50), "ms", NULL, 0);
    snprintf(name, sizeof(name), "%s.%s.p99", prefix, shape);
    bench_emit(name, pct(lat, n, 0.99), "ms", "<=", p99_target);
    if (count >= 0) {
        snprintf(name, sizeof(name), "%s.%s.matches", prefix, shape);
        bench_emit(name, count, "events", NULL, 0);
    }
}

/* The string value after "key":" in body, copied into out; false when absent or null. */
static bool json_string(const char *body, const char *key, char *out, size_t len)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(body, pat);
    if (!p)
        return false;
    p += strlen(pat);
    const char *q = strchr(p, '"');
    if (!q || (size_t)(q - p) >= len)
        return false;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return true;
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    size_t n = 200;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--http") && i + 1 < argc)
            addr = argv[++i];
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            n = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc)
            prefix = argv[++i];
        else
            addr = NULL, i = argc;
    }
    if (!addr || n < 1) {
        fprintf(stderr, "usage: %s --http ADDR [--requests N] [--prefix NAME]\n", argv[0]);
        return 2;
    }
    struct bench_http h;
    struct buf body;
    buf_init(&body);
    if (bench_http_open(&h, addr) < 0 || bench_http_get(&h, "/api/events?limit=1", &body) != 200) {
        fprintf(stderr, "bench_query: no API at %s\n", addr);
        return 1;
    }
    double total = bench_json_number(body.data, "total_count");
    double newest = bench_json_number(body.data, "timestamp");
    char sname[160];
    snprintf(sname, sizeof(sname), "%s.stored_events", prefix);
    bench_emit(sname, total, "events", NULL, 0);

    uint64_t *lat = calloc(n * 10, sizeof(*lat));
    char path[512];
    double count = -1;

    /* Warm-up: the first requests pay for page faults and connection setup. */
    for (int i = 0; i < 20; i++)
        timed_get(&h, "/api/events?limit=100", &body);

    for (size_t i = 0; i < n; i++)
        lat[i] = timed_get(&h, "/api/events?limit=100", &body);
    report("newest100", lat, n, 2, -1);

    static const char *const types[] = {"connection", "exec", "exit", "packet_drop"};
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "/api/events?type=%s&limit=100", types[i % 4]);
        lat[i] = timed_get(&h, path, &body);
        if (i == 1)
            count = bench_json_number(body.data, "total_count");
    }
    report("by_type", lat, n, 10, count);

    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "/api/events?node=node-%zu&type=%s&limit=100", i % BENCH_NODES,
                 types[i % 4]);
        lat[i] = timed_get(&h, path, &body);
        if (i == 1)
            count = bench_json_number(body.data, "total_count");
    }
    report("by_node_type", lat, n, 10, count);

    for (size_t i = 0; i < n; i++) {
        unsigned p = (unsigned)(i * 7 % BENCH_PODS);
        snprintf(path, sizeof(path), "/api/events?pod=app-%u-7d9f8b6c5d-x%02u&limit=100", p, p);
        lat[i] = timed_get(&h, path, &body);
        if (i == 0)
            count = bench_json_number(body.data, "total_count");
    }
    report("by_pod", lat, n, 10, count);

    /* A 10 s window somewhere in the middle of what is held (events are 100 us apart). */
    uint64_t top = newest > 0 ? (uint64_t)newest : bench_now_ns();
    uint64_t span = total > 0 ? (uint64_t)total * 100000ull : 100000000000ull;
    for (size_t i = 0; i < n; i++) {
        uint64_t since = top - span / 2 - (i % 10) * (span / 40);
        snprintf(path, sizeof(path), "/api/events?since=%" PRIu64 "&until=%" PRIu64 "&limit=100",
                 since, since + span / 10);
        lat[i] = timed_get(&h, path, &body);
        if (i == 0)
            count = bench_json_number(body.data, "total_count");
    }
    report("since_until", lat, n, 10, count);

    /* Paged walks: 10 pages of 100 following next_cursor; per-page and per-walk latency. */
    size_t walks = n / 10 ? n / 10 : 1, pages = 0;
    uint64_t *walk_lat = calloc(walks, sizeof(*walk_lat));
    char cursor[128];
    for (size_t w = 0; w < walks; w++) {
        uint64_t t0 = bench_mono_ns();
        snprintf(path, sizeof(path), "/api/events?type=connection&limit=100");
        for (int p = 0; p < 10; p++) {
            lat[pages++] = timed_get(&h, path, &body);
            if (!json_string(body.data, "next_cursor", cursor, sizeof(cursor)))
                break;
            snprintf(path, sizeof(path), "/api/events?type=connection&limit=100&cursor=%s", cursor);
        }
        walk_lat[w] = bench_mono_ns() - t0;
    }
    report("paged_walk_page", lat, pages, 10, -1);
    report("paged_walk_10_pages", walk_lat, walks, 100, -1);

    for (size_t f = 0; f < sizeof(filter_shapes) / sizeof(filter_shapes[0]); f++) {
        const struct filter_shape *fs = &filter_shapes[f];
        for (size_t i = 0; i < n; i++) {
            int len = snprintf(path, sizeof(path), "/api/events?");
            if (fs->words)
                snprintf(path + len, sizeof(path) - (size_t)len, fs->fmt,
                         fs->words[i % fs->nwords]);
            else
                snprintf(path + len, sizeof(path) - (size_t)len, fs->fmt,
                         fs->base + (fs->mod ? (unsigned)(i * 7919 % fs->mod) : 0));
            lat[i] = timed_get(&h, path, &body);
            if (i == 0)
                count = bench_json_number(body.data, "total_count");
        }
        report(fs->shape, lat, n, 10, count);
    }

    char name[128];
    snprintf(name, sizeof(name), "%s.failed_requests", prefix);
    bench_emit(name, failures, "requests", NULL, 0);
    free(walk_lat);
    free(lat);
    buf_free(&body);
    bench_http_close(&h);
    return failures ? 1 : 0;
}

/*
 * Fuzz target: the history store (pkg/store.c) under any order of events.
 * A publisher on the bus chooses every timestamp, so the input is a script
 * of adds (one event, or a burst of hundreds whose timestamps a seed in
 * the input scatters, so shards and time lists pass the tiered vector's
 * block size) and queries, on a store small enough to evict. Every answer
 * must be newest first, within its limit and filters, and count and begin
 * with exactly the matches among every event held; the store must hold
 * exactly what was added less what it evicted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intern.h"
#include "query.h"
#include "store.h"

#define FUZZ_TARGET "fuzz_store"
#include "fuzz_check.h"

#define CAPACITY  3000
#define BURST_MAX 2048

struct reader {
    const uint8_t *p;
    size_t n;
};

/* The next bytes as a big-endian number; zeros once the input is used up. */
static unsigned take(struct reader *r, unsigned bytes)
{
    unsigned v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        v <<= 8;
        if (r->n > 0) {
            v |= *r->p++;
            r->n--;
        }
    }
    return v;
}

/* Commands: three that recur, and 128 more that come and go (the store collects their ids). */
static const char *const commands[] = {"sh", "curl", "nginx"};

static void make(struct event *e, uint64_t id, uint64_t ts, unsigned pid, unsigned node,
                 unsigned comm)
{
    memset(e, 0, sizeof(*e));
    e->id = id;
    e->timestamp_ns = ts;
    e->type = node & 2 ? EVENT_EXEC : EVENT_EXIT;
    e->pid = pid;
    e->dport = (uint16_t)(pid % 3);
    if (comm % 2)
        snprintf(e->command, sizeof(e->command), "%s", commands[pid % 3]);
    else
        snprintf(e->command, sizeof(e->command), "c%u", comm / 2 % 128);
    e->node = intern(node & 1 ? "node-b" : "node-a");
}

/*
 * What q must answer: every held event that matches it, newest first, from
 * a query of them all (the time lists, a path of its own) filtered by
 * query_match(): the total and the page's events exactly.
 */
static void check_against_all(struct store *s, const struct query *q,
                              const struct store_result *res, const char *qs)
{
    struct query all;
    char err[256];
    CHECK(query_parse(&all, "limit=3000", 10, false, err, sizeof(err)) == 0, "%s", err);
    struct store_result a;
    CHECK(store_query(s, &all, &a) == 0, "query all");
    uint64_t total = 0;
    for (size_t i = 0; i < a.count; i++) {
        if (!query_match(q, &a.events[i]))
            continue;
        if (total < res->count)
            CHECK(a.events[i].id == res->events[total].id &&
                      a.events[i].timestamp_ns == res->events[total].timestamp_ns,
                  "%s: result %llu is not the next newest match", qs, (unsigned long long)total);
        total++;
    }
    CHECK(total == res->total_count, "%s: total %llu, %llu held events match", qs,
          (unsigned long long)res->total_count, (unsigned long long)total);
    store_result_free(&a);
}

static void check_query(struct store *s, struct reader *r)
{
    char qs[160];
    unsigned limit = take(r, 1) % 200 + 1, f = take(r, 1), pid = take(r, 1) % 8;
    unsigned since = take(r, 2), until = take(r, 2), comm = take(r, 1);
    int n = snprintf(qs, sizeof(qs), "limit=%u", limit);
    if (f & 1)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&pid=%u", pid);
    if (f & 2)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&since=%u&until=%u", since, until);
    if (f & 4)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&type=exec");
    if (f & 8)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&node=node-b");
    if ((f & 16) && comm % 2)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&command=%s", commands[comm / 2 % 3]);
    else if (f & 16)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&command=c%u", comm / 2 % 128);
    if (f & 32)
        n += snprintf(qs + n, sizeof(qs) - (size_t)n, "&dest_port=%u", 1 + (f >> 6) % 2);

    struct query q;
    char err[256];
    if (query_parse(&q, qs, (size_t)n, false, err, sizeof(err)) < 0)
        return; /* since after until: refused, as it should be */
    struct store_result res;
    CHECK(store_query(s, &q, &res) == 0, "%s: query failed", qs);
    CHECK(res.count <= limit && res.total_count >= res.count, "%s: %zu of %llu", qs, res.count,
          (unsigned long long)res.total_count);
    CHECK(res.has_next == (res.total_count > res.count), "%s: has_next", qs);
    check_against_all(s, &q, &res, qs);
    for (size_t i = 0; i < res.count; i++) {
        const struct event *e = &res.events[i];
        CHECK(query_match(&q, e), "%s: result %zu does not match", qs, i);
        if (i > 0)
            CHECK(query_cmp_newest_first(res.events[i - 1].timestamp_ns, res.events[i - 1].id,
                                         e->timestamp_ns, e->id) < 0,
                  "%s: results %zu and %zu out of order", qs, i - 1, i);
    }
    store_result_free(&res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct event burst[BURST_MAX];
    struct store_limits lim = {.max_events = CAPACITY};
    struct store *s = store_new(&lim);
    struct reader r = {data, size};
    uint64_t id = 1, added = 0;

    CHECK(s != NULL, "store_new");
    /* Bounded work per input: a few times the capacity is enough to evict through blocks. */
    while (r.n > 0 && added < 4 * CAPACITY) {
        unsigned op = take(&r, 1) % 3;
        if (op == 0) {
            struct event e;
            unsigned ts = take(&r, 2), pid = take(&r, 1) % 8, node = take(&r, 1);
            make(&e, id++, ts, pid, node, take(&r, 1));
            CHECK(store_add_move(s, &e) == 0, "add");
            added++;
        } else if (op == 1) {
            /* A burst of late events: timestamps scattered over a span the input picks. */
            size_t n = 64 * (take(&r, 1) % (BURST_MAX / 64) + 1);
            uint64_t base = take(&r, 2), span = take(&r, 2) + 1, x = take(&r, 4) | 1;
            unsigned node = take(&r, 1);
            for (size_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                make(&burst[i], id++, base + x % span, (unsigned)(x >> 32) % 8, node,
                     (unsigned)(x >> 40));
            }
            CHECK(store_add_move_batch(s, burst, n) == 0, "batch");
            added += n;
        } else {
            check_query(s, &r);
        }
    }
    struct store_stats st;
    store_get_stats(s, &st);
    /* Ids are unique: nothing is a duplicate, and what is not held was evicted. */
    CHECK(st.duplicates == 0 && st.events + st.evicted_count == added && st.events <= CAPACITY,
          "held %llu + evicted %llu (duplicates %llu) != added %llu", (unsigned long long)st.events,
          (unsigned long long)st.evicted_count, (unsigned long long)st.duplicates,
          (unsigned long long)added);
    /* Everything held, newest first. */
    struct query q;
    char err[256];
    CHECK(query_parse(&q, "limit=3000", 10, false, err, sizeof(err)) == 0, "%s", err);
    struct store_result res;
    CHECK(store_query(s, &q, &res) == 0, "query all");
    CHECK(res.count == st.events, "%zu returned, %llu held", res.count,
          (unsigned long long)st.events);
    for (size_t i = 1; i < res.count; i++)
        CHECK(query_cmp_newest_first(res.events[i - 1].timestamp_ns, res.events[i - 1].id,
                                     res.events[i].timestamp_ns, res.events[i].id) < 0,
              "all: results %zu and %zu out of order", i - 1, i);
    store_result_free(&res);
    store_free(s);
    return 0;
}

/*
 * Fuzzing what a peer replica's answer can be: every input is decoded both
 * as a query answer (protobuf QueryReply) and as a stats answer (JSON), and
 * goes where a gather sends it. A query answer that decodes is merged with a
 * page of this replica's own (the page must stay bounded, newest first and
 * without repeats, its count saturated) and encoded again (it must decode to
 * the same events). A stats answer is checked and taken into a small node
 * table, all or nothing, and its counters summed into a replica's own.
 * ASan/UBSan watch it all.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/cluster_merge.h"
#include "aggregator/cluster_reply.h"
#include "intern.h"

#define FUZZ_TARGET "fuzz_aggregator_cluster_reply"
#include "fuzz_check.h"

#define SELF      "00000000000000aa"
#define OWN_COUNT 3
#define LIMIT     4

/* Any well-formed id but this replica's is a live peer here. */
static bool any_peer(void *ctx, const char *id)
{
    (void)ctx;
    (void)id;
    return true;
}

/* This replica's own page: OWN_COUNT events with the timestamps of a real one. */
static struct cluster_source own_page(void)
{
    struct cluster_source s = {.total_count = OWN_COUNT};
    s.events = calloc(OWN_COUNT, sizeof(*s.events));
    CHECK(s.events != NULL, "out of memory");
    for (size_t i = 0; i < OWN_COUNT; i++) {
        s.events[i].id = 1 + i;
        s.events[i].type = EVENT_EXIT;
        s.events[i].timestamp_ns = 1700000000000000000ull - i * 1000;
        s.events[i].node = intern("self");
        s.count++;
    }
    return s;
}

/* Encodes the decoded events again: they must come back the same. */
static void reencode(const struct cluster_query_reply *r)
{
    struct store_result res = {.events = r->src.events,
                               .count = r->src.count,
                               .total_count = r->src.total_count,
                               .has_next = r->src.has_more};
    struct cluster_query_reply again;
    struct buf b;

    buf_init(&b);
    cluster_reply_query_encode(r->replica, &res, NULL, 64 << 20, &b);
    if (!b.oom) {
        CHECK(cluster_reply_query_decode(b.data, b.len, &again) == 0, "own encoding refused");
        CHECK(again.src.count == r->src.count, "%zu events re-decoded as %zu", r->src.count,
              again.src.count);
        CHECK(again.src.total_count == r->src.total_count, "total_count changed");
        for (size_t i = 0; i < again.src.count; i++)
            CHECK(again.src.events[i].id == r->src.events[i].id &&
                      again.src.events[i].timestamp_ns == r->src.events[i].timestamp_ns &&
                      again.src.events[i].type == r->src.events[i].type,
                  "event %zu changed", i);
        cluster_query_reply_free(&again);
    }
    buf_free(&b);
}

static void query_answer(const uint8_t *data, size_t size)
{
    struct cluster_answers seen = {.self = SELF, .is_peer = any_peer};
    struct cluster_query_reply r;
    struct cluster_events out;
    struct cluster_source src[2];
    int rc = cluster_reply_query_decode(data, size, &r);

    CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM, "decode returned %d", rc);
    if (rc != 0 || r.error != NULL || cluster_answer_admit(&seen, r.replica) != NULL) {
        cluster_query_reply_free(&r);
        return;
    }
    reencode(&r);
    src[0] = own_page();
    src[1] = r.src;
    uint64_t claimed = r.src.total_count;
    if (cluster_merge(src, 2, LIMIT, &out) == 0) {
        CHECK(out.count <= LIMIT, "%zu events over the limit", out.count);
        CHECK(out.total_count <= INT64_MAX, "total_count over INT64_MAX");
        CHECK(out.total_count == cluster_count_add(OWN_COUNT, claimed), "total_count not summed");
        for (size_t i = 1; i < out.count; i++)
            CHECK(query_cmp_newest_first(out.events[i - 1].timestamp_ns, out.events[i - 1].id,
                                         out.events[i].timestamp_ns, out.events[i].id) < 0,
                  "events %zu and %zu out of order or repeated", i - 1, i);
        CHECK(!out.has_next || out.count > 0, "a cursor without events");
        cluster_events_free(&out);
    }
    /* The events were moved out (or are still there after -ENOMEM): free what is left. */
    cluster_source_free(&src[0]);
    r.src = src[1];
    cluster_query_reply_free(&r);
}

/* Sums an accepted answer's counters into this replica's, as /api/stats does. */
static void sum_counters(json_t *counters)
{
    json_t *totals = json_pack("{s:i,s:i,s:f,s:{s:i,s:i}}", "events", 12, "batches", 3,
                               "uptime_seconds", 1.5, "events_by_type", "exit", 12, "exec", 0);
    const char *key;
    json_t *v;

    CHECK(totals != NULL, "out of memory");
    cluster_counters_add(totals, counters);
    CHECK(json_object_size(totals) == 4, "a peer added a counter");
    json_object_foreach(totals, key, v)
    {
        if (json_is_integer(v))
            CHECK(json_integer_value(v) >= 0, "%s went negative", key);
    }
    json_decref(totals);
}

static void stats_answer(const uint8_t *data, size_t size)
{
    struct cluster_answers seen = {.self = SELF, .is_peer = any_peer};
    struct cluster_stats st = {0};
    struct nodes *nodes = nodes_new(64);
    json_t *root = cluster_reply_stats_decode(data, size);

    CHECK(nodes != NULL, "out of memory");
    /* Before the take, which removes an accepted answer's node table. */
    bool well_formed = json_is_object(root) && cluster_reply_stats_check(root) == NULL;
    const char *why = cluster_stats_take(&seen, nodes, root, &st);
    if (why != NULL) {
        struct nodes_totals nt;
        nodes_get_totals(nodes, &nt);
        CHECK(st.count == 0 && seen.n == 0, "a rejected answer was kept (%s)", why);
        CHECK(nt.nodes == 0 && nt.events == 0, "a rejected answer's node table was merged");
    } else {
        CHECK(seen.n == 1, "an accepted answer was not counted");
        CHECK(well_formed, "accepted but malformed");
        for (size_t i = 0; i < st.count; i++) {
            CHECK(json_object_get(st.replies[i], "nodes") == NULL, "node table kept");
            sum_counters(json_object_get(st.replies[i], "counters"));
        }
    }
    cluster_stats_free(&st);
    json_decref(root);
    nodes_free(nodes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    query_answer(data, size);
    stats_answer(data, size);
    return 0;
}

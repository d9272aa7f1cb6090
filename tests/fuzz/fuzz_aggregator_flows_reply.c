/*
 * Fuzzing what a peer replica's flows answer can be (cluster_reply.h): every
 * input is decoded as a gather would; an answer that decodes is merged into
 * a result of this replica's own, edge by edge, and the merge must be
 * exact: encoding the peer's edges and decoding them again gives the same
 * edges, counts added saturate rather than wrap, and percentiles stay within
 * the histogram's buckets. Every input is also taken as a chunk of a
 * stopping replica's flow minutes (flows_handover_merge()) into a small
 * store: all or nothing, and what merges is there to query. ASan/UBSan watch
 * it all.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/cluster_reply.h"
#include "flows.h"
#include "intern.h"

#define FUZZ_TARGET "fuzz_aggregator_flows_reply"
#include "fuzz_check.h"

/* This replica's own share: one edge every input may land on. */
static void own_share(struct flows_result *r)
{
    struct flows_edge e = {0};
    e.key.src.workload = intern("curl");
    e.key.src.workload_kind = intern("Process");
    e.key.port = 443;
    e.key.protocol = 6;
    e.c.connections = e.c.established = 2;
    e.c.hist[5] = 2;
    e.c.first_seen_ns = 1;
    e.c.last_seen_ns = 2;
    CHECK(flows_result_add(r, &e) == 0, "out of memory");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cluster_flows_reply reply;
    struct flows_result own = {0};
    int rc = cluster_reply_flows_decode(data, size, &reply);

    if (rc == 0 && reply.error == NULL) {
        struct flows_result again;
        struct buf b;
        buf_init(&b);
        flows_result_encode(&reply.edges, &b);
        CHECK(!b.oom, "out of memory");
        CHECK(flows_result_decode(b.data, b.len, &again) == 0, "its own encoding does not decode");
        CHECK(again.count == reply.edges.count, "edges lost on re-encoding");
        for (size_t i = 0; i < again.count; i++)
            CHECK(memcmp(again.edges[i].c.hist, reply.edges.edges[i].c.hist,
                         sizeof(again.edges[i].c.hist)) == 0 &&
                      again.edges[i].c.connections == reply.edges.edges[i].c.connections,
                  "edge %zu changed on re-encoding", i);
        flows_result_free(&again);
        buf_free(&b);

        own_share(&own);
        for (size_t i = 0; i < reply.edges.count; i++) {
            const struct flows_edge *e = &reply.edges.edges[i];
            uint64_t before = own.count > 0 ? own.edges[0].c.connections : 0;
            CHECK(flows_result_add(&own, e) == 0, "out of memory");
            CHECK(own.edges[0].c.connections >= before, "a count wrapped");
            uint64_t p50 = flows_hist_percentile(e->c.hist, 50);
            uint64_t p99 = flows_hist_percentile(e->c.hist, 99);
            CHECK(p50 <= p99, "p50 %lu above p99 %lu", (unsigned long)p50, (unsigned long)p99);
        }
        flows_result_finish(&own, EVENT_STATUS_NONE, 1000);
        b = (struct buf){0};
        buf_init(&b);
        flows_result_json(&own, &b);
        CHECK(!b.oom, "out of memory");
        buf_free(&b);
    }
    cluster_flows_reply_free(&reply);
    flows_result_free(&own);

    /* A handed-over chunk, into a store small enough to evict (retention around its minutes). */
    static struct flows *store;
    if (store == NULL)
        store = flows_new(UINT64_MAX / 4, 64);
    CHECK(store != NULL, "out of memory");
    struct flows_stats before, after;
    flows_get_stats(store, &before);
    uint64_t merged = 0;
    rc = flows_handover_merge(store, (const char *)data, size, 1764000000000000000ull, &merged);
    flows_get_stats(store, &after);
    CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM, "merge: %d", rc);
    CHECK(rc != -EINVAL || (merged == 0 && after.edge_minutes == before.edge_minutes),
          "a malformed chunk merged %lu minutes", (unsigned long)merged);
    CHECK(after.edge_minutes <= 64, "past the store's cap: %lu", (unsigned long)after.edge_minutes);
    struct flows_query q = {.until_ns = UINT64_MAX, .limit = 1000};
    struct flows_result r;
    CHECK(flows_query(store, &q, &r) == 0, "query");
    flows_result_free(&r);
    return 0;
}

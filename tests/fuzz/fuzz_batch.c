/*
 * Whole-path differential fuzzing of the bus's protobuf batches.
 *
 * Every input is decoded by both decoders (the hand-written fast one and
 * protobuf-c's), which must agree: when the fast one decides, the reference
 * one decides the same (accept/reject, metadata, the skipped-event count and
 * every event field by field), and event_batch_decode_max() refuses exactly
 * the batches with more events than its limit. The events then go where the
 * aggregator sends them: the peer map (their pod table learnt, their peers,
 * dns answers among them, named), the bounded store (small, so eviction runs), a
 * query over it, the JSON writer, the SSE copy, and their release. ASan and
 * UBSan watch it all.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_message.h"
#include "event.h"
#include "event_json.h"
#include "event_pb.h"
#include "peers.h"
#include "query.h"
#include "store.h"

#define FUZZ_TARGET "fuzz_batch"
#include "fuzz_check.h"

#define LIMIT 3 /* events, for event_batch_decode_max() */

static struct store *store;
static struct peers *peers;

static void free_events(struct event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    free(ev);
}

static bool meta_equal(const struct event_batch_meta *a, const struct event_batch_meta *b)
{
    return a->node == b->node && a->agent_instance == b->agent_instance &&
           a->pod_name == b->pod_name && a->pod_namespace == b->pod_namespace &&
           a->sequence == b->sequence && a->kernel_drops == b->kernel_drops &&
           a->agent_drops == b->agent_drops && a->kernel_missed == b->kernel_missed &&
           a->sent_at_ns == b->sent_at_ns && a->instance_started_ns == b->instance_started_ns &&
           a->rejected_events == b->rejected_events;
}

/* Where the aggregator sends a decoded event: the peer map, JSON, the SSE copy, the store. */
static void ingest(struct event *ev, size_t n, struct buf *js)
{
    static struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS];
    size_t np = peers_pods_from_events(ev, n, 1, pods, PEERS_ANNOUNCE_MAX_PODS);
    for (size_t k = 0; k < np; k++)
        peers_observe(peers, &pods[k]);
    peers_enrich(peers, ev, n, 2, true);
    struct peers_stats st;
    peers_get_stats(peers, &st);
    CHECK(st.entries <= 16, "%llu peer entries over the bound", (unsigned long long)st.entries);
    for (size_t i = 0; i < n; i++) {
        struct event copy;
        buf_reset(js);
        event_json_write(js, &ev[i]);
        CHECK(!js->oom, "JSON writer out of memory");
        if (event_copy(&copy, &ev[i]) == 0) {
            buf_reset(js);
            event_json_write(js, &copy);
            event_clear(&copy);
        }
        store_add_move(store, &ev[i]);
    }
    struct query q;
    struct store_result res;
    query_init(&q);
    q.limit = 16;
    if (store_query(store, &q, &res) == 0) {
        for (size_t i = 0; i < res.count; i++) {
            buf_reset(js);
            event_json_write(js, &res.events[i]);
        }
        store_result_free(&res);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!store) {
        struct store_limits lim = {.max_events = 64};
        store = store_new(&lim);
        CHECK(store, "store_new failed");
        peers = peers_new(16, 60000000000ull, 5000000000ull);
        CHECK(peers, "peers_new failed");
    }
    struct event_batch_meta mf, mg;
    struct event *f = NULL, *g = NULL;
    size_t nf = 0, ng = 0;
    char ef[256], eg[256];

    int rf = event_batch_decode_fast(data, size, &mf, &f, &nf, ef, sizeof(ef));
    int rg = event_batch_decode_generic(data, size, &mg, &g, &ng, eg, sizeof(eg));
    CHECK(rf == 0 || rf == 1 || rf == -ENOMEM, "fast decoder returned %d", rf);
    CHECK(rg == 0 || rg == -EINVAL || rg == -ENOMEM, "reference decoder returned %d", rg);
    if (rf == 0 && rg != -ENOMEM) {
        CHECK(rg == 0, "fast accepted what the reference rejects: %s", eg);
        CHECK(meta_equal(&mf, &mg), "metadata differs");
        CHECK(nf == ng, "fast kept %zu events, reference %zu", nf, ng);
        CHECK(strcmp(ef, eg) == 0, "reasons differ: \"%s\" vs \"%s\"", ef, eg);
        for (size_t i = 0; i < nf; i++)
            CHECK(event_equal(&f[i], &g[i]), "event %zu differs", i);
    }
    if (rg == 0)
        CHECK(ng + mg.rejected_events >= ng, "counts overflow");

    /*
     * With a limit of LIMIT events: refused exactly when the reference
     * decoder accepts more than that, and otherwise the same as unlimited.
     */
    struct event_batch_meta ml;
    struct event *l = NULL;
    size_t nl = 0;
    int rl = event_batch_decode_max(data, size, LIMIT, &ml, &l, &nl, NULL, 0);
    CHECK(rl == 0 || rl == -EINVAL || rl == -ENOMEM || rl == -E2BIG, "decode_max returned %d", rl);
    if (rl == -E2BIG)
        CHECK(l == NULL && nl == 0 && ml.node == NULL, "a refused batch left something behind");
    if (rg == 0 && rl != -ENOMEM) {
        CHECK((ng + mg.rejected_events > LIMIT) == (rl == -E2BIG),
              "%zu events against a limit of %d, decode_max returned %d",
              ng + (size_t)mg.rejected_events, LIMIT, rl);
        CHECK(rl != 0 || (nl == ng && meta_equal(&ml, &mg)), "decode_max decoded differently");
    }
    if (rg == -EINVAL && rl != -ENOMEM)
        CHECK(rl == -EINVAL || rl == -E2BIG, "decode_max accepted what the reference rejects");
    free_events(l, nl);

    struct buf js;
    buf_init(&js);
    if (rf == 0)
        ingest(f, nf, &js);
    if (rg == 0)
        ingest(g, ng, &js);
    free_events(f, nf);
    free_events(g, ng);

    /* The message-level entry point too (limits, metadata checks). */
    struct bus_batch b;
    char err[256];
    if (bus_body_decode((const char *)data, size, &b, err, sizeof(err)) == BUS_OK) {
        ingest(b.events, b.n, &js);
        bus_batch_free(&b);
    }
    buf_free(&js);
    return 0;
}

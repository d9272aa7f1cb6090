/*
 * Tests for the aggregator's cluster merge and reply codec
 * (cmd/aggregator/cluster_merge.c, cluster_reply.c), without NATS: answers
 * are encoded and decoded as a peer would send them, and merged as a gather
 * would. What a hostile peer can send is here; the real exchange between
 * replicas is in test_aggregator_cluster.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/cluster_merge.h"
#include "aggregator/cluster_reply.h"
#include "intern.h"
#include "store.h"

#define SELF  "00000000000000aa"
#define PEER1 "00000000000000b1"
#define PEER2 "00000000000000b2"
#define T0    1700000000000000000ull

/* ---- helpers ---- */

/* The live peers a test's gathers accept: PEER1 and PEER2. */
static bool test_is_peer(void *ctx, const char *id)
{
    (void)ctx;
    return strcmp(id, PEER1) == 0 || strcmp(id, PEER2) == 0;
}

static void answers_init(struct cluster_answers *seen)
{
    memset(seen, 0, sizeof(*seen));
    seen->self = SELF;
    seen->is_peer = test_is_peer;
}

static struct event make_event(uint64_t id, uint64_t ts)
{
    struct event e = {0};
    e.id = id;
    e.type = EVENT_EXIT;
    e.timestamp_ns = ts;
    e.pid = (uint32_t)id;
    e.node = intern("node-a");
    return e;
}

/* A source holding n events (ids from id0, timestamps from ts0 downwards). */
static struct cluster_source make_source(uint64_t id0, uint64_t ts0, size_t n, uint64_t total,
                                         bool has_more)
{
    struct cluster_source s = {.total_count = total, .has_more = has_more};
    if (n > 0)
        cr_assert_not_null(s.events = calloc(n, sizeof(*s.events)));
    for (size_t i = 0; i < n; i++)
        s.events[s.count++] = make_event(id0 + i, ts0 - i * 1000);
    return s;
}

static void assert_newest_first(const struct cluster_events *out)
{
    for (size_t i = 1; i < out->count; i++)
        cr_assert(query_cmp_newest_first(out->events[i - 1].timestamp_ns, out->events[i - 1].id,
                                         out->events[i].timestamp_ns, out->events[i].id) < 0,
                  "events %zu and %zu out of order", i - 1, i);
}

/* Frees a merged page and the n sources it was merged from. */
static void merge_free(struct cluster_events *out, struct cluster_source *src, size_t n)
{
    cluster_events_free(out);
    for (size_t i = 0; i < n; i++)
        cluster_source_free(&src[i]);
}

/* ---- ids and counts ---- */

Test(cluster_merge, replica_ids_are_short_lowercase_hex)
{
    cr_assert(cluster_replica_id_valid("0"));
    cr_assert(cluster_replica_id_valid("0123456789abcdef"));
    cr_assert_not(cluster_replica_id_valid(""));
    cr_assert_not(cluster_replica_id_valid("0123456789abcdef0"), "17 characters");
    cr_assert_not(cluster_replica_id_valid("ABCDEF"));
    cr_assert_not(cluster_replica_id_valid("12 4"));
    cr_assert_not(cluster_replica_id_valid("g"));
}

Test(cluster_merge, counts_saturate_at_int64_max)
{
    cr_assert_eq(cluster_count_add(0, 0), 0);
    cr_assert_eq(cluster_count_add(40, 2), 42);
    cr_assert_eq(cluster_count_add(INT64_MAX - 1, 1), INT64_MAX);
    cr_assert_eq(cluster_count_add(INT64_MAX, 1), INT64_MAX);
    cr_assert_eq(cluster_count_add(INT64_MAX, INT64_MAX), INT64_MAX);
    cr_assert_eq(cluster_count_add(UINT64_MAX, 0), INT64_MAX);
    cr_assert_eq(cluster_count_add(UINT64_MAX, UINT64_MAX), INT64_MAX, "no wrap-around");
    cr_assert_eq(cluster_count_add(5, UINT64_MAX - 3), INT64_MAX);
    cr_assert_eq(cluster_count_add((uint64_t)INT64_MAX + 1, 0), INT64_MAX);
}

/* ---- which answers count ---- */

Test(cluster_merge, one_answer_per_live_peer_counts)
{
    struct cluster_answers seen;
    answers_init(&seen);

    cr_assert_null(cluster_answer_admit(&seen, PEER1));
    cluster_answer_record(&seen, PEER1);
    cr_assert_str_eq(cluster_answer_admit(&seen, PEER1), "a second answer from one replica");
    cr_assert_null(cluster_answer_admit(&seen, PEER2));
    cr_assert_str_eq(cluster_answer_admit(&seen, SELF), "sent in this replica's name");
    cr_assert_str_eq(cluster_answer_admit(&seen, "00000000000000cc"), "not from a live peer");
    cr_assert_str_eq(cluster_answer_admit(&seen, NULL), "no valid replica id");
    cr_assert_str_eq(cluster_answer_admit(&seen, "PEER"), "no valid replica id");
    cr_assert_eq(seen.n, 1);
}

/* ---- stats answers ---- */

/* A node table as a replica sends it: one node, one instance, events and batches. */
static json_t *node_table(const char *node, uint64_t events)
{
    struct nodes *t = nodes_new(16);
    struct event_batch_meta m = {.node = node, .agent_instance = "i-1", .sequence = 1};
    struct buf b;
    json_t *j;

    cr_assert_not_null(t);
    nodes_observe(t, &m, events, T0);
    buf_init(&b);
    nodes_to_json(t, &b);
    cr_assert_not(b.oom);
    cr_assert_not_null(j = json_loadb(b.data, b.len, 0, NULL));
    buf_free(&b);
    nodes_free(t);
    return j;
}

static json_t *stats_answer(const char *replica, json_t *counters, json_t *nodes)
{
    return json_pack("{s:s,s:b,s:o,s:o}", "replica", replica, "connected", 1, "counters", counters,
                     "nodes", nodes);
}

/* Encodes root as a peer would and takes the decoded answer, as a gather does. */
static const char *take_text(struct cluster_answers *seen, struct nodes *nodes, const char *text,
                             struct cluster_stats *out)
{
    json_t *root = cluster_reply_stats_decode(text, strlen(text));
    const char *why = cluster_stats_take(seen, nodes, root, out);
    json_decref(root);
    return why;
}

static const char *take(struct cluster_answers *seen, struct nodes *nodes, json_t *root,
                        struct cluster_stats *out)
{
    char *text = json_dumps(root, JSON_COMPACT);
    cr_assert_not_null(text);
    const char *why = take_text(seen, nodes, text, out);
    free(text);
    json_decref(root);
    return why;
}

static uint64_t node_events(struct nodes *t)
{
    struct nodes_totals nt;
    nodes_get_totals(t, &nt);
    return nt.events;
}

Test(cluster_merge, stats_answers_are_kept_and_their_node_tables_merged)
{
    struct cluster_answers seen;
    struct cluster_stats st = {0};
    struct nodes *merged = nodes_new(64);
    answers_init(&seen);

    cr_assert_null(take(&seen, merged,
                        stats_answer(PEER1, json_pack("{s:i,s:i}", "events", 7, "batches", 2),
                                     node_table("node-1", 7)),
                        &st));
    cr_assert_null(
        take(&seen, merged,
             stats_answer(PEER2, json_pack("{s:i,s:{s:f}}", "events", 5, "nested", "uptime", 1.5),
                          node_table("node-2", 5)),
             &st));
    cr_assert_eq(st.count, 2);
    cr_assert_eq(seen.n, 2);
    cr_assert_eq(node_events(merged), 12);
    for (size_t i = 0; i < st.count; i++) {
        cr_assert_null(json_object_get(st.replies[i], "nodes"), "the table is merged, not kept");
        cr_assert(json_is_object(json_object_get(st.replies[i], "counters")));
    }
    cr_assert_str_eq(json_string_value(json_object_get(st.replies[0], "replica")), PEER1);

    /* A second answer from a peer changes nothing. */
    cr_assert_str_eq(
        take(&seen, merged,
             stats_answer(PEER1, json_pack("{s:i}", "events", 1000), node_table("node-3", 1000)),
             &st),
        "a second answer from one replica");
    cr_assert_eq(st.count, 2);
    cr_assert_eq(node_events(merged), 12);
    cluster_stats_free(&st);
    cr_assert_null(st.replies);
    nodes_free(merged);
}

Test(cluster_merge, an_error_answer_counts_without_a_node_table)
{
    struct cluster_answers seen;
    struct cluster_stats st = {0};
    struct nodes *merged = nodes_new(64);
    struct buf b;
    answers_init(&seen);

    buf_init(&b);
    cluster_reply_stats_too_large(PEER1, 1048576, &b);
    cr_assert_not(b.oom);
    buf_putc(&b, '\0');
    cr_assert_null(take_text(&seen, merged, b.data, &st));
    buf_free(&b);
    cr_assert_eq(st.count, 1);
    const char *err = json_string_value(json_object_get(st.replies[0], "error"));
    cr_assert_not_null(err);
    cr_assert_not_null(strstr(err, "1048576 bytes"), "%s", err);
    cr_assert_eq(node_events(merged), 0);
    cluster_stats_free(&st);
    nodes_free(merged);
}

/* Each of these is rejected: nothing kept, nothing merged, the peer not counted. */
static const char *const bad_stats[] = {
    "",
    "not json",
    "[1,2]",
    "{\"replica\":\"00000000000000b1\",\"replica\":\"00000000000000b2\",\"connected\":true,"
    "\"counters\":{},\"nodes\":{}}",
    "{\"connected\":true,\"counters\":{},\"nodes\":{}}",
    "{\"replica\":\"00000000000000aa\",\"connected\":true,\"counters\":{},\"nodes\":{}}",
    "{\"replica\":\"00000000000000cc\",\"connected\":true,\"counters\":{},\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"counters\":{},\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":1,\"counters\":{},\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{\"events\":-1},"
    "\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{\"events\":-0.5},"
    "\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{\"events\":\"7\"},"
    "\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{\"a\":{\"b\":{\"c\":{"
    "\"d\":{\"e\":1}}}}},\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":[],\"nodes\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{}}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{},\"nodes\":[]}",
    "{\"replica\":\"00000000000000b1\",\"connected\":true,\"counters\":{},"
    "\"nodes\":{\"n\":{\"instances\":{\"i\":{\"events\":-4}}}}}",
    "{\"replica\":\"00000000000000b1\",\"error\":7}",
};

Test(cluster_merge, malformed_stats_answers_are_rejected)
{
    struct nodes *merged = nodes_new(64);

    for (size_t i = 0; i < sizeof(bad_stats) / sizeof(bad_stats[0]); i++) {
        struct cluster_answers seen;
        struct cluster_stats st = {0};
        answers_init(&seen);
        cr_assert_not_null(take_text(&seen, merged, bad_stats[i], &st), "accepted: %s",
                           bad_stats[i]);
        cr_assert_eq(st.count, 0, "kept: %s", bad_stats[i]);
        cr_assert_eq(seen.n, 0, "counted: %s", bad_stats[i]);
        cluster_stats_free(&st);
    }
    cr_assert_eq(node_events(merged), 0);
    nodes_free(merged);
}

Test(cluster_merge, stats_answers_are_bounded_in_keys_names_and_errors)
{
    struct cluster_answers seen;
    struct cluster_stats st = {0};
    struct nodes *merged = nodes_new(64);
    char key[CLUSTER_KEY_MAX + 2];
    answers_init(&seen);

    json_t *many = json_object();
    for (int i = 0; i <= CLUSTER_COUNTERS_MAX_KEYS; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        json_object_set_new(many, key, json_integer(i));
    }
    cr_assert_not_null(take(&seen, merged, stats_answer(PEER1, many, json_object()), &st));

    memset(key, 'k', CLUSTER_KEY_MAX + 1);
    key[CLUSTER_KEY_MAX + 1] = '\0';
    cr_assert_not_null(
        take(&seen, merged, stats_answer(PEER1, json_pack("{s:i}", key, 1), json_object()), &st));

    char *long_error = malloc(CLUSTER_ERROR_MAX + 2);
    memset(long_error, 'e', CLUSTER_ERROR_MAX + 1);
    long_error[CLUSTER_ERROR_MAX + 1] = '\0';
    cr_assert_str_eq(
        take(&seen, merged, json_pack("{s:s,s:s}", "replica", PEER1, "error", long_error), &st),
        "error is not a short string");
    long_error[CLUSTER_ERROR_MAX] = '\0';
    cr_assert_null(
        take(&seen, merged, json_pack("{s:s,s:s}", "replica", PEER1, "error", long_error), &st),
        "an error of CLUSTER_ERROR_MAX bytes is short enough");
    free(long_error);
    cr_assert_eq(st.count, 1);
    cluster_stats_free(&st);
    nodes_free(merged);
}

Test(cluster_merge, counters_are_summed_saturating_on_this_replicas_keys_only)
{
    json_t *totals = json_pack("{s:I,s:i,s:f,s:{s:i,s:i},s:i}", "events", (json_int_t)INT64_MAX - 5,
                               "batches", 3, "uptime_seconds", 2.0, "events_by_type", "exit", 1,
                               "exec", 2, "store_failed", 4);
    json_t *peer =
        json_pack("{s:i,s:i,s:f,s:{s:i,s:i},s:s,s:i,s:I}", "events", 10, "batches", 4,
                  "uptime_seconds", 7.5, "events_by_type", "exit", 5, "made_up", 9, "store_failed",
                  "lots", "newer_counter", 1, "batches_2", (json_int_t)INT64_MAX);

    cluster_counters_add(totals, peer);
    cr_assert_eq(json_integer_value(json_object_get(totals, "events")), INT64_MAX);
    cr_assert_eq(json_integer_value(json_object_get(totals, "batches")), 7);
    cr_assert_float_eq(json_real_value(json_object_get(totals, "uptime_seconds")), 7.5, 1e-9,
                       "reals keep the larger");
    json_t *by_type = json_object_get(totals, "events_by_type");
    cr_assert_eq(json_integer_value(json_object_get(by_type, "exit")), 6);
    cr_assert_eq(json_integer_value(json_object_get(by_type, "exec")), 2);
    cr_assert_null(json_object_get(by_type, "made_up"), "only this replica's keys are summed");
    cr_assert_eq(json_integer_value(json_object_get(totals, "store_failed")), 4,
                 "a string is not added to a number");
    cr_assert_null(json_object_get(totals, "newer_counter"));
    cr_assert_eq(json_object_size(totals), 5);
    json_decref(peer);
    json_decref(totals);

    cr_assert_eq(cluster_counter_sum(-5, 3), 3, "a negative counts as 0");
    cr_assert_eq(cluster_counter_sum(INT64_MAX, INT64_MAX), INT64_MAX);
    cr_assert_eq(cluster_counter_sum(INT64_MIN, INT64_MIN), 0);
}

/* ---- merging events ---- */

Test(cluster_merge, events_are_merged_newest_first_up_to_the_limit)
{
    /* Interleaved timestamps: a at T0, T0-2000, ..., b at T0-1000, T0-3000, ... */
    struct cluster_source src[2];
    struct cluster_events out;
    src[0] = make_source(100, T0, 5, 5, false);
    src[1] = make_source(200, T0 - 500, 5, 5, false);

    cr_assert(cluster_merge(src, 2, 4, &out) == 0);
    cr_assert_eq(out.count, 4);
    cr_assert_eq(out.total_count, 10);
    assert_newest_first(&out);
    cr_assert_eq(out.events[0].id, 100);
    cr_assert_eq(out.events[1].id, 200);
    cr_assert_eq(out.events[2].id, 101);
    cr_assert(out.has_next, "6 more events");
    cr_assert_eq(out.next_cursor.id, out.events[3].id);
    cr_assert_eq(out.next_cursor.timestamp_ns, out.events[3].timestamp_ns);
    merge_free(&out, src, 2);
}

Test(cluster_merge, an_event_two_replicas_hold_is_returned_once)
{
    struct cluster_source src[3];
    struct cluster_events out;
    src[0] = make_source(1, T0, 3, 3, false);
    src[1] = make_source(1, T0, 3, 3, false); /* the same three */
    src[2] = make_source(2, T0 - 1000, 1, 1, false);

    cr_assert(cluster_merge(src, 3, 100, &out) == 0);
    cr_assert_eq(out.count, 3, "%zu events", out.count);
    assert_newest_first(&out);
    cr_assert_not(out.has_next);
    cr_assert_eq(out.total_count, 7, "counts are the replicas' claims, summed");
    merge_free(&out, src, 3);
}

Test(cluster_merge, claimed_counts_saturate_near_uint64_max)
{
    struct cluster_source src[3];
    struct cluster_events out;
    src[0] = make_source(1, T0, 1, UINT64_MAX, false);
    src[1] = make_source(10, T0 - 1000, 1, UINT64_MAX - 1, false);
    src[2] = make_source(20, T0 - 2000, 1, 3, false);

    cr_assert(cluster_merge(src, 3, 10, &out) == 0);
    cr_assert_eq(out.total_count, INT64_MAX);
    cr_assert_eq(out.count, 3);
    cluster_events_free(&out);

    src[0].total_count = INT64_MAX - 2;
    src[1].total_count = 1;
    src[2].total_count = 1;
    cr_assert(cluster_merge(src, 3, 10, &out) == 0);
    cr_assert_eq(out.total_count, INT64_MAX);
    merge_free(&out, src, 3);
}

Test(cluster_merge, a_source_with_more_bounds_the_page)
{
    /* a sent 2 of its events but holds more: nothing older than its last may be returned. */
    struct cluster_source src[2];
    struct cluster_events out;
    src[0] = make_source(100, T0, 2, 50, true);
    src[1] = make_source(200, T0 - 500, 10, 10, false);

    cr_assert(cluster_merge(src, 2, 100, &out) == 0);
    cr_assert_eq(out.count, 3, "a's two and b's one newer than a's last");
    cr_assert(out.has_next);
    cr_assert_eq(out.next_cursor.id, 101);
    merge_free(&out, src, 2);
}

Test(cluster_merge, empty_answers_merge_to_an_empty_page)
{
    struct cluster_events out;
    struct cluster_source src[2] = {{0}, {0}};

    cr_assert(cluster_merge(src, 2, 10, &out) == 0);
    cr_assert(out.count == 0 && !out.has_next && out.total_count == 0);
    cluster_events_free(&out);

    cr_assert(cluster_merge(NULL, 0, 10, &out) == 0);
    cr_assert(out.count == 0 && !out.has_next);
    cluster_events_free(&out);

    /* Counts without events (a peer whose page is past the cursor) still add up. */
    src[0].total_count = 9;
    src[0].has_more = true;
    cr_assert(cluster_merge(src, 2, 10, &out) == 0);
    cr_assert(out.count == 0 && !out.has_next && out.total_count == 9);
    cluster_events_free(&out);
}

/* ---- the merge against real stores, page after page ---- */

static struct store *fill_store(uint64_t seed, size_t n, const char *node)
{
    struct store_limits lim = {.max_events = 10000};
    struct store *s = store_new(&lim);
    cr_assert(s != NULL);
    for (size_t i = 0; i < n; i++) {
        struct event e = {0};
        e.id = seed + i;
        e.type = EVENT_EXIT;
        /* Overlapping time ranges and repeated timestamps across the two stores. */
        e.timestamp_ns = T0 + ((seed + i * 7) % 50) * 1000;
        e.pid = (uint32_t)i;
        e.node = intern(node);
        cr_assert(store_add(s, &e) == 0);
    }
    return s;
}

/*
 * A source the way a peer sends it: encoded (cut to at most cut events when
 * cut > 0, as a small max payload would), then decoded.
 */
static void source_from(struct store *s, const struct query *q, size_t cut,
                        struct cluster_query_reply *reply)
{
    struct store_result r;
    struct buf b;

    cr_assert(store_query(s, q, &r) == 0);
    if (cut > 0 && r.count > cut) {
        for (size_t i = cut; i < r.count; i++)
            event_clear(&r.events[i]);
        r.count = cut;
        r.has_next = true;
    }
    buf_init(&b);
    cluster_reply_query_encode(PEER1, &r, NULL, 1 << 20, &b);
    cr_assert(!b.oom && b.len > 0);
    cr_assert_eq(cluster_reply_query_decode(b.data, b.len, reply), 0);
    cr_assert_eq(reply->src.count, r.count);
    buf_free(&b);
    store_result_free(&r);
}

static void page_all(size_t cut_a, size_t cut_b, uint32_t limit)
{
    struct store *sa = fill_store(1000, 60, "a"), *sb = fill_store(5000, 45, "b");
    struct query q;
    bool seen[10000] = {0};
    size_t total = 0;
    query_init(&q);
    q.limit = limit;

    for (int pages = 0;; pages++) {
        struct cluster_query_reply ra, rb;
        struct cluster_source src[2];
        struct cluster_events out;
        source_from(sa, &q, cut_a, &ra);
        source_from(sb, &q, cut_b, &rb);
        src[0] = ra.src;
        src[1] = rb.src;
        cr_assert(cluster_merge(src, 2, limit, &out) == 0);
        cr_assert_eq(out.total_count, ra.src.total_count + rb.src.total_count);
        cr_assert(out.count <= limit);
        assert_newest_first(&out);
        for (size_t i = 0; i < out.count; i++) {
            uint64_t id = out.events[i].id;
            cr_assert(id < 10000 && !seen[id], "event %" PRIu64 " twice", id);
            seen[id] = true;
            total++;
        }
        bool more = out.has_next;
        q.has_cursor = true;
        q.cursor = out.next_cursor;
        cluster_events_free(&out);
        cluster_query_reply_free(&ra);
        cluster_query_reply_free(&rb);
        if (!more)
            break;
        cr_assert(pages < 200, "paging does not end");
    }
    cr_assert_eq(total, 105, "paged %zu of 105", total);
    store_free(sa);
    store_free(sb);
}

Test(cluster_merge, pages_cover_every_event_once)
{
    page_all(0, 0, 10);
    page_all(0, 0, 1);
    page_all(0, 0, 1000);
}

Test(cluster_merge, a_source_cut_short_pages_exactly)
{
    /* Source a sends at most 3 of its events: the page must stop at its last event. */
    page_all(3, 0, 10);
    page_all(2, 5, 10);
    page_all(1, 1, 7);
}

/* ---- the query answer on the wire ---- */

static struct store_result result_of(size_t n, uint64_t total, bool has_next)
{
    struct store_result r = {.total_count = total, .has_next = has_next};
    cr_assert_not_null(r.events = calloc(n, sizeof(*r.events)));
    for (size_t i = 0; i < n; i++)
        r.events[r.count++] = make_event(500 + i, T0 - i * 1000);
    return r;
}

Test(cluster_reply, a_query_answer_decodes_as_it_was_sent)
{
    struct store_result r = result_of(20, 123, true);
    struct cluster_query_reply d;
    struct buf b;

    buf_init(&b);
    cluster_reply_query_encode(PEER2, &r, NULL, 1 << 20, &b);
    cr_assert(!b.oom && b.len > 0);
    cr_assert_eq(cluster_reply_query_decode(b.data, b.len, &d), 0);
    cr_assert_str_eq(d.replica, PEER2);
    cr_assert_null(d.error);
    cr_assert_eq(d.src.count, 20);
    cr_assert_eq(d.src.total_count, 123);
    cr_assert(d.src.has_more);
    for (size_t i = 0; i < d.src.count; i++) {
        cr_assert_eq(d.src.events[i].id, r.events[i].id);
        cr_assert_eq(d.src.events[i].timestamp_ns, r.events[i].timestamp_ns);
        cr_assert_eq(d.src.events[i].type, EVENT_EXIT);
        cr_assert_str_eq(d.src.events[i].node, "node-a");
    }
    cluster_query_reply_free(&d);
    buf_free(&b);
    store_result_free(&r);
}

Test(cluster_reply, an_answer_over_the_payload_limit_sends_the_newest_and_says_more)
{
    struct store_result r = result_of(400, 400, false);
    struct cluster_query_reply d;
    struct buf b;

    buf_init(&b);
    cluster_reply_query_encode(PEER1, &r, NULL, 1 << 20, &b);
    cr_assert_eq(cluster_reply_query_decode(b.data, b.len, &d), 0);
    cr_assert_eq(d.src.count, 400);
    cr_assert_not(d.src.has_more);
    cluster_query_reply_free(&d);

    /* 4 KiB of room past the overhead: only a prefix fits. */
    cluster_reply_query_encode(PEER1, &r, NULL, CLUSTER_PAYLOAD_OVERHEAD + 4096, &b);
    cr_assert(b.len <= 4096, "%zu bytes", b.len);
    cr_assert_eq(cluster_reply_query_decode(b.data, b.len, &d), 0);
    cr_assert(d.src.count > 0 && d.src.count < 400, "%zu events", d.src.count);
    cr_assert(d.src.has_more);
    cr_assert_eq(d.src.total_count, 400);
    for (size_t i = 0; i < d.src.count; i++)
        cr_assert_eq(d.src.events[i].id, r.events[i].id, "the newest are kept");
    cluster_query_reply_free(&d);
    buf_free(&b);
    store_result_free(&r);
}

Test(cluster_reply, an_error_answer_carries_no_events)
{
    struct cluster_query_reply d;
    struct buf b;

    buf_init(&b);
    cluster_reply_query_encode(PEER1, NULL, "bad query: limit", 1 << 20, &b);
    cr_assert_eq(cluster_reply_query_decode(b.data, b.len, &d), 0);
    cr_assert_str_eq(d.replica, PEER1);
    cr_assert_str_eq(d.error, "bad query: limit");
    cr_assert_eq(d.src.count, 0);
    cluster_query_reply_free(&d);
    buf_free(&b);
}

Test(cluster_reply, malformed_query_answers_are_refused)
{
    struct store_result r = result_of(5, 5, false);
    struct cluster_query_reply d;
    struct cluster_answers seen;
    struct buf b;
    static const uint8_t junk[][6] = {
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, /* a varint that never ends */
        {0x0a, 0x7f, 'a', 'b', 0, 0},         /* a string longer than the message */
        {0x07, 0, 0, 0, 0, 0},                /* wire type 7 */
    };

    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        cr_assert_eq(cluster_reply_query_decode(junk[i], sizeof(junk[i]), &d), -EINVAL, "junk %zu",
                     i);
        cr_assert_null(d.replica);
        cluster_query_reply_free(&d);
    }

    /* Every cut of a real answer is refused or decodes to at most what was sent. */
    buf_init(&b);
    cluster_reply_query_encode(PEER1, &r, NULL, 1 << 20, &b);
    for (size_t len = 0; len < b.len; len++) {
        int rc = cluster_reply_query_decode(b.data, len, &d);
        cr_assert(rc == 0 || rc == -EINVAL);
        cr_assert(d.src.count <= 5);
        cluster_query_reply_free(&d);
    }

    /* Nothing at all decodes to an answer without a replica id, which does not count. */
    answers_init(&seen);
    cr_assert_eq(cluster_reply_query_decode("", 0, &d), 0);
    cr_assert_str_eq(cluster_answer_admit(&seen, d.replica), "no valid replica id");
    cluster_query_reply_free(&d);
    buf_free(&b);
    store_result_free(&r);
}

Test(cluster_reply, a_too_large_stats_answer_says_so_in_a_valid_answer)
{
    struct buf b;
    json_t *root;

    buf_init(&b);
    cluster_reply_stats_too_large(PEER1, 4096, &b);
    cr_assert_not_null(root = cluster_reply_stats_decode(b.data, b.len));
    cr_assert_null(cluster_reply_stats_check(root));
    cr_assert_str_eq(json_string_value(json_object_get(root, "replica")), PEER1);
    json_decref(root);
    buf_free(&b);
}

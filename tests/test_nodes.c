/*
 * Tests for pkg/nodes: per-instance sequence accounting, merging replicas'
 * tables (in memory and through the JSON exchange format), restarts, drops,
 * stale/active status and the bound on tracked instances.
 */
#include "buf.h"
#include "nodes.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <string.h>

#define SEC 1000000000ull
#define T0  (1795698266ull * SEC) /* 2026-11-26T13:04:26Z */

/* A batch's metadata; its kernel_missed is twice its kernel_drops. */
static void observe(struct nodes *t, const char *node, const char *inst, uint64_t seq,
                    uint64_t kdrops, uint64_t adrops, size_t events, uint64_t now)
{
    struct event_batch_meta m = {.node = node,
                                 .agent_instance = inst,
                                 .sequence = seq,
                                 .kernel_drops = kdrops,
                                 .agent_drops = adrops,
                                 .kernel_missed = 2 * kdrops};
    nodes_observe(t, &m, events, now);
}

/* The API view of t, parsed. */
static json_t *view(struct nodes *t, uint64_t now, uint64_t stale_after)
{
    struct buf b;
    buf_init(&b);
    nodes_write_json(t, &b, now, stale_after, NULL);
    cr_assert_not(b.oom);
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, 0, &e);
    cr_assert_not_null(j, "not JSON (%s): %s", e.text, b.data);
    buf_free(&b);
    return j;
}

static uint64_t num(json_t *node, const char *key)
{
    json_t *v = json_object_get(node, key);
    cr_assert(json_is_integer(v), "%s is not an integer", key);
    return (uint64_t)json_integer_value(v);
}

static const char *str(json_t *node, const char *key)
{
    json_t *v = json_object_get(node, key);
    cr_assert(json_is_string(v), "%s is not a string", key);
    return json_string_value(v);
}

/* Copies src into dst through the replica exchange format. */
static void exchange(struct nodes *dst, struct nodes *src)
{
    struct buf b;
    buf_init(&b);
    nodes_to_json(src, &b);
    cr_assert_not(b.oom);
    cr_assert_eq(nodes_merge_json(dst, b.data, b.len), 0, "%s", b.data);
    buf_free(&b);
}

Test(nodes, one_replica_counts_its_own_gaps)
{
    struct nodes *t = nodes_new(16);
    observe(t, "n1", "a", 1, 0, 0, 10, T0);
    observe(t, "n1", "a", 2, 0, 0, 10, T0);
    observe(t, "n1", "a", 5, 0, 0, 10, T0);
    json_t *j = view(t, T0, 30 * SEC);
    json_t *n1 = json_object_get(j, "n1");
    cr_assert_not_null(n1);
    cr_assert_eq(num(n1, "batches"), 3);
    cr_assert_eq(num(n1, "events"), 30);
    cr_assert_eq(num(n1, "lost_batches"), 2); /* 3 and 4 */
    cr_assert_eq(num(n1, "instances"), 1);
    json_decref(j);
    nodes_free(t);
}

/* Batches 1..10 spread over two replicas with 4 and 8 lost: each replica alone sees "gaps". */
Test(nodes, gaps_across_two_replicas)
{
    struct nodes *r1 = nodes_new(16), *r2 = nodes_new(16);
    for (uint64_t seq = 1; seq <= 10; seq++) {
        if (seq == 4 || seq == 8)
            continue;
        observe(seq % 2 ? r1 : r2, "worker-1", "inst-a", seq, 0, 0, 3, T0 + seq);
    }
    struct nodes_totals tot;
    nodes_get_totals(r1, &tot);
    cr_assert_gt(tot.lost_batches, 0, "a lone replica sees the other's batches as gaps");

    /* Merged through JSON, as replicas exchange them. */
    struct nodes *m = nodes_new(64);
    exchange(m, r1);
    exchange(m, r2);
    nodes_get_totals(m, &tot);
    cr_assert_eq(tot.nodes, 1);
    cr_assert_eq(tot.instances, 1);
    cr_assert_eq(tot.batches, 8);
    cr_assert_eq(tot.events, 24);
    cr_assert_eq(tot.lost_batches, 2);

    /* Merged in memory: the same answer. */
    struct nodes *m2 = nodes_new(64);
    cr_assert_eq(nodes_merge(m2, r1), 0);
    cr_assert_eq(nodes_merge(m2, r2), 0);
    struct nodes_totals tot2;
    nodes_get_totals(m2, &tot2);
    cr_assert_eq(memcmp(&tot, &tot2, sizeof(tot)), 0);
    cr_assert_eq(nodes_merge(m2, m2), -EINVAL);

    json_t *j = view(m, T0 + 11, 30 * SEC);
    cr_assert_eq(num(json_object_get(j, "worker-1"), "lost_batches"), 2);
    json_decref(j);
    nodes_free(r1);
    nodes_free(r2);
    nodes_free(m);
    nodes_free(m2);
}

Test(nodes, restart_is_a_new_instance_not_a_gap)
{
    struct nodes *t = nodes_new(16);
    for (uint64_t seq = 1; seq <= 50; seq++)
        observe(t, "n1", "before", seq, 7, 1, 2, T0);
    /* The restarted agent counts from 1 again, with its own counters. */
    for (uint64_t seq = 1; seq <= 3; seq++)
        observe(t, "n1", "after", seq, 2, 0, 2, T0 + SEC);
    json_t *j = view(t, T0 + SEC, 30 * SEC);
    json_t *n1 = json_object_get(j, "n1");
    cr_assert_eq(num(n1, "lost_batches"), 0);
    cr_assert_eq(num(n1, "batches"), 53);
    cr_assert_eq(num(n1, "instances"), 2);
    /* Cumulative per instance, so the node's drops are the sum over instances. */
    cr_assert_eq(num(n1, "kernel_drops"), 9);
    cr_assert_eq(num(n1, "agent_drops"), 1);
    cr_assert_eq(num(n1, "kernel_missed"), 18);
    json_decref(j);
    nodes_free(t);
}

/* A batch of instance inst, sent at sent by the agent's clock, which started at started. */
static void observe_aged(struct nodes *t, const char *inst, uint64_t seq, uint64_t started,
                         uint64_t sent, uint64_t now)
{
    struct event_batch_meta m = {.node = "n1",
                                 .agent_instance = inst,
                                 .sequence = seq,
                                 .sent_at_ns = sent,
                                 .instance_started_ns = started};
    nodes_observe(t, &m, 1, now);
}

static uint64_t lost(struct nodes *t)
{
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    return tot.lost_batches;
}

/*
 * A replica listening since T0 first hears an instance at sequence 5: when the instance started
 * after T0 (plus the margin), batches 1 to 4 reached no one and are lost; when it started
 * before, they may have been sent before anyone listened, which is not this table's to count.
 * The ages are compared on each side's own clock: an agent whose clock is an hour ahead or
 * behind is judged the same.
 */
Test(nodes, an_instance_younger_than_the_listener_is_counted_from_its_first_batch)
{
    const uint64_t margin = NODES_HEARD_MARGIN_NS;
    const int64_t skews[] = {0, 3600 * (int64_t)SEC, -3600 * (int64_t)SEC};
    for (size_t k = 0; k < sizeof(skews) / sizeof(skews[0]); k++) {
        uint64_t skew = (uint64_t)skews[k]; /* the agent's clock minus ours, wrapping */
        struct nodes *t = nodes_new(16);
        nodes_set_heard_since(t, T0);
        /* Started 3 s after we listened, first heard 7 s after it started. */
        observe_aged(t, "young", 5, T0 + 3 * SEC + skew, T0 + 10 * SEC + skew, T0 + 10 * SEC);
        observe_aged(t, "young", 6, T0 + 3 * SEC + skew, T0 + 11 * SEC + skew, T0 + 11 * SEC);
        cr_assert_eq(lost(t), 4, "skew %lld s: lost %llu, want 4 (sequences 1-4)",
                     (long long)skews[k] / (long long)SEC, (unsigned long long)lost(t));
        /* Started before we listened: from the first one heard, as before. */
        observe_aged(t, "old", 9, T0 - SEC + skew, T0 + 10 * SEC + skew, T0 + 10 * SEC);
        /* Started within the margin of our start: not claimed either. */
        observe_aged(t, "close", 9, T0 + margin - 1 + skew, T0 + 10 * SEC + skew, T0 + 10 * SEC);
        cr_assert_eq(lost(t), 4, "skew %lld s: only the young instance's", (long long)skews[k]);
        nodes_free(t);
    }

    /* No start known (an older agent, or no sent_at), or no listening time set: no claim. */
    struct nodes *t = nodes_new(16);
    nodes_set_heard_since(t, T0);
    observe_aged(t, "unknown-start", 5, 0, T0 + 10 * SEC, T0 + 10 * SEC);
    observe_aged(t, "unknown-sent", 5, T0 + 3 * SEC, 0, T0 + 10 * SEC);
    cr_assert_eq(lost(t), 0);
    nodes_free(t);
    t = nodes_new(16);
    observe_aged(t, "young", 5, T0 + 3 * SEC, T0 + 10 * SEC, T0 + 10 * SEC);
    cr_assert_eq(lost(t), 0);
    cr_assert_eq(nodes_heard_since(t), 0);
    /* Learnt later (a peer listened longer): earlier only, and the next batch uses it. */
    nodes_heard_since_earlier(t, T0);
    nodes_heard_since_earlier(t, T0 + 5 * SEC);
    cr_assert_eq(nodes_heard_since(t), T0);
    observe_aged(t, "young", 6, T0 + 3 * SEC, T0 + 11 * SEC, T0 + 11 * SEC);
    cr_assert_eq(lost(t), 4);
    nodes_free(t);
}

/* The claim travels with the table: a peer merging it counts the same, and a replica that
 * heard sequences 1-2 itself makes the merged view lose nothing extra. */
Test(nodes, the_first_batch_claim_survives_a_merge)
{
    struct nodes *r1 = nodes_new(16), *r2 = nodes_new(16), *m = nodes_new(16);
    nodes_set_heard_since(r1, T0);
    /* r2 started later than the instance: it claims nothing, and heard 1 and 2. */
    nodes_set_heard_since(r2, T0 + 20 * SEC);
    observe_aged(r2, "i", 1, T0 + 5 * SEC, T0 + 5 * SEC, T0 + 21 * SEC);
    observe_aged(r2, "i", 2, T0 + 5 * SEC, T0 + 6 * SEC, T0 + 22 * SEC);
    /* r1 heard 4 and 5. */
    observe_aged(r1, "i", 4, T0 + 5 * SEC, T0 + 8 * SEC, T0 + 23 * SEC);
    observe_aged(r1, "i", 5, T0 + 5 * SEC, T0 + 9 * SEC, T0 + 24 * SEC);
    cr_assert_eq(lost(r1), 3, "alone, r1 misses 1-3");
    exchange(m, r1);
    exchange(m, r2);
    cr_assert_eq(lost(m), 1, "merged: only 3 is lost");
    nodes_free(r1);
    nodes_free(r2);
    nodes_free(m);
}

Test(nodes, drops_come_from_the_newest_batch)
{
    struct nodes *r1 = nodes_new(16), *r2 = nodes_new(16);
    /* Delivered out of order: seq 3 (the newest) arrives first. */
    observe(r1, "n1", "a", 3, 30, 300, 1, T0 + 3);
    observe(r1, "n1", "a", 1, 10, 100, 1, T0 + 4);
    observe(r2, "n1", "a", 2, 20, 200, 1, T0 + 5);
    struct nodes_totals tot;
    nodes_get_totals(r1, &tot);
    cr_assert_eq(tot.kernel_drops, 30);
    cr_assert_eq(tot.agent_drops, 300);
    cr_assert_eq(tot.kernel_missed, 60);

    struct nodes *m = nodes_new(16);
    exchange(m, r2); /* the older batch's counters first */
    exchange(m, r1);
    nodes_get_totals(m, &tot);
    cr_assert_eq(tot.kernel_drops, 30);
    cr_assert_eq(tot.agent_drops, 300);
    cr_assert_eq(tot.kernel_missed, 60);
    cr_assert_eq(tot.lost_batches, 0);
    nodes_free(r1);
    nodes_free(r2);
    nodes_free(m);
}

Test(nodes, stale_and_active)
{
    struct nodes *t = nodes_new(16);
    observe(t, "old", "a", 1, 0, 0, 1, T0);
    observe(t, "new", "b", 1, 0, 0, 1, T0 + 100 * SEC);
    json_t *j = view(t, T0 + 101 * SEC, 30 * SEC);
    cr_assert_str_eq(str(json_object_get(j, "old"), "status"), "stale");
    cr_assert_str_eq(str(json_object_get(j, "new"), "status"), "active");
    cr_assert_str_eq(str(json_object_get(j, "old"), "last_seen"), "2026-11-26T13:04:26.000000000Z");
    cr_assert_str_eq(str(json_object_get(j, "new"), "last_seen"), "2026-11-26T13:06:06.000000000Z");
    json_decref(j);

    /* A node is active as long as any of its instances is. */
    observe(t, "old", "a2", 1, 0, 0, 1, T0 + 100 * SEC);
    j = view(t, T0 + 101 * SEC, 30 * SEC);
    cr_assert_str_eq(str(json_object_get(j, "old"), "status"), "active");
    json_decref(j);
    nodes_free(t);
}

Test(nodes, agent_pod_is_reported_when_known)
{
    struct nodes *t = nodes_new(16);
    struct event_batch_meta m = {.node = "k1",
                                 .agent_instance = "a",
                                 .sequence = 1,
                                 .pod_name = "ebpf-monitor-x7",
                                 .pod_namespace = "ebpf-system"};
    nodes_observe(t, &m, 1, T0);
    observe(t, "vm1", "b", 1, 0, 0, 1, T0);

    struct nodes *copy = nodes_new(16);
    exchange(copy, t);
    json_t *j = view(copy, T0, 30 * SEC);
    json_t *k1 = json_object_get(j, "k1"), *vm1 = json_object_get(j, "vm1");
    cr_assert_str_eq(str(k1, "agent_pod_name"), "ebpf-monitor-x7");
    cr_assert_str_eq(str(k1, "agent_pod_namespace"), "ebpf-system");
    cr_assert_null(json_object_get(vm1, "agent_pod_name"));
    json_decref(j);
    nodes_free(t);
    nodes_free(copy);
}

Test(nodes, bounded_instances_evict_the_least_recently_seen)
{
    struct nodes *t = nodes_new(4);
    char inst[16];
    for (int i = 0; i < 10; i++) {
        snprintf(inst, sizeof(inst), "i%d", i);
        observe(t, "n1", inst, 1, 0, 0, 1, T0 + (uint64_t)i * SEC);
    }
    /* i9 is live: a new batch from it is still counted on its record. */
    observe(t, "n1", "i9", 2, 0, 0, 1, T0 + 20 * SEC);
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.instances, 4);
    cr_assert_eq(tot.instances_dropped, 6);
    cr_assert_eq(tot.batches, 5);
    cr_assert_eq(tot.lost_batches, 0);

    /* The counter travels with the exchange format. */
    struct nodes *m = nodes_new(100);
    exchange(m, t);
    nodes_get_totals(m, &tot);
    cr_assert_eq(tot.instances_dropped, 6);
    cr_assert_eq(tot.instances, 4);
    nodes_free(t);
    nodes_free(m);
}

Test(nodes, many_nodes_keep_the_most_recently_seen_and_their_totals)
{
    enum { MAX = 1000, NODES = 5000 };
    struct nodes *t = nodes_new(MAX);
    char node[32];

    /* Node 0 keeps reporting; the others report once each, in order. */
    for (int i = 0; i < NODES; i++) {
        snprintf(node, sizeof(node), "node-%05d", i);
        observe(t, node, "i", 1, 0, 0, 2, T0 + (uint64_t)i * SEC);
        observe(t, "node-00000", "i", (uint64_t)i + 2, 0, 0, 1, T0 + (uint64_t)i * SEC);
    }
    struct nodes_totals tot, wtot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.instances, MAX);
    cr_assert_eq(tot.nodes, MAX);
    cr_assert_eq(tot.instances_dropped, NODES - MAX);

    /* The view's own totals match, with the status split, in the same pass. */
    struct buf b;
    buf_init(&b);
    nodes_write_json(t, &b, T0 + (uint64_t)NODES * SEC, 100 * SEC, &wtot);
    cr_assert_not(b.oom);
    cr_assert_eq(wtot.nodes, tot.nodes);
    cr_assert_eq(wtot.batches, tot.batches);
    cr_assert_eq(wtot.events, tot.events);
    cr_assert_eq(wtot.instances, tot.instances);
    cr_assert_eq(wtot.instances_dropped, tot.instances_dropped);
    cr_assert_eq(wtot.active + wtot.stale, wtot.nodes);
    json_t *j = json_loadb(b.data, b.len, 0, NULL);
    buf_free(&b);
    cr_assert_not_null(j);
    cr_assert_eq(json_object_size(j), MAX);
    /* The live node survived; the newest MAX - 1 others too; older ones were evicted. */
    cr_assert_not_null(json_object_get(j, "node-00000"));
    snprintf(node, sizeof(node), "node-%05d", NODES - MAX + 1);
    cr_assert_not_null(json_object_get(j, node), "%s evicted", node);
    snprintf(node, sizeof(node), "node-%05d", NODES - MAX);
    cr_assert_null(json_object_get(j, node), "%s kept", node);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "node-00000"), "batches")),
                 NODES + 1);
    size_t active = 0;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        active += strcmp(json_string_value(json_object_get(v, "status")), "active") == 0;
    }
    cr_assert_eq(active, wtot.active);
    json_decref(j);
    nodes_free(t);
}

Test(nodes, json_round_trip_keeps_every_field)
{
    struct nodes *t = nodes_new(16);
    observe(t, "node \"quoted\"\n", "a", 4, 1, 2, 5, T0);
    observe(t, "node \"quoted\"\n", "a", 9, 3, 4, 6, T0 + SEC);
    observe(t, "n2", "b", 1, 0, 0, 7, T0 + 2 * SEC);

    struct buf b1, b2;
    buf_init(&b1);
    buf_init(&b2);
    nodes_write_json(t, &b1, T0 + 2 * SEC, 30 * SEC, NULL);
    struct nodes *copy = nodes_new(16);
    exchange(copy, t);
    nodes_write_json(copy, &b2, T0 + 2 * SEC, 30 * SEC, NULL);
    cr_assert_str_eq(b1.data, b2.data);

    json_t *j = json_loads(b1.data, 0, NULL);
    json_t *q = json_object_get(j, "node \"quoted\"\n");
    cr_assert_not_null(q, "%s", b1.data);
    cr_assert_eq(num(q, "batches"), 2);
    cr_assert_eq(num(q, "events"), 11);
    cr_assert_eq(num(q, "lost_batches"), 4); /* 5..8 */
    cr_assert_eq(num(q, "kernel_drops"), 3);
    cr_assert_eq(num(q, "agent_drops"), 4);
    cr_assert_eq(num(q, "kernel_missed"), 6);
    json_decref(j);

    struct nodes_totals a, c;
    nodes_get_totals(t, &a);
    nodes_get_totals(copy, &c);
    cr_assert_eq(memcmp(&a, &c, sizeof(a)), 0);
    cr_assert_eq(a.nodes, 2);
    cr_assert_eq(a.events, 18);
    buf_free(&b1);
    buf_free(&b2);
    nodes_free(t);
    nodes_free(copy);
}

Test(nodes, bad_exchange_json_changes_nothing)
{
    struct nodes *t = nodes_new(16);
    observe(t, "n1", "a", 1, 0, 0, 1, T0);
    static const char *const bad[] = {
        "not json",
        "[]",
        "{\"instances\":{}}",
        "{\"instances\":[{\"node\":\"n2\",\"instance\":\"x\",\"batches\":1}, 5]}",
        "{\"instances\":[{\"node\":\"n2\",\"batches\":1}]}",
        "{\"instances\":[{\"node\":\"n2\",\"instance\":\"x\",\"batches\":-1}]}",
        "{\"instances\":[{\"node\":\"n2\",\"instance\":\"x\",\"min_seq\":5,\"max_seq\":2}]}",
        "{\"instances\":[{\"node\":\"n2\",\"instance\":\"x\",\"kernel_missed\":\"3\"}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(nodes_merge_json(t, bad[i], strlen(bad[i])), -EINVAL, "case %zu", i);
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.nodes, 1);
    cr_assert_eq(tot.batches, 1);
    nodes_free(t);
}

Test(nodes, a_peer_claiming_huge_counters_saturates_never_wraps)
{
    struct nodes *t = nodes_new(16);
    static const char big[] =
        "{\"instances_dropped\":9223372036854775807,\"instances\":[{\"node\":\"n1\","
        "\"instance\":\"z\",\"batches\":9223372036854775807,\"events\":9223372036854775807,"
        "\"min_seq\":1,\"max_seq\":9223372036854775807,\"agent_drops\":9223372036854775807}]}";

    observe(t, "n1", "a", 1, 0, 5, 10, T0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(nodes_merge_json(t, big, strlen(big)), 0);
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.batches, (uint64_t)INT64_MAX);
    cr_assert_eq(tot.events, (uint64_t)INT64_MAX);
    cr_assert_eq(tot.agent_drops, (uint64_t)INT64_MAX);
    cr_assert_eq(tot.instances_dropped, (uint64_t)INT64_MAX);
    /* Both views stay readable by a signed 64-bit JSON reader, and merge back. */
    json_t *j = view(t, T0, 60 * SEC);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "n1"), "events")),
                 INT64_MAX);
    json_decref(j);
    struct buf b;
    buf_init(&b);
    nodes_to_json(t, &b);
    struct nodes *u = nodes_new(16);
    cr_assert_eq(nodes_merge_json(u, b.data, b.len), 0, "%s", b.data);
    buf_free(&b);
    nodes_free(u);
    nodes_free(t);
}

Test(nodes, oversized_exchange_json_is_refused)
{
    struct nodes *t = nodes_new(2);
    char name[1100], doc[1400];

    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    snprintf(doc, sizeof(doc), "{\"instances\":[{\"node\":\"%s\",\"instance\":\"x\"}]}", name);
    cr_assert_eq(nodes_merge_json(t, doc, strlen(doc)), -EINVAL, "a 1 KiB node name");
    static const char three[] = "{\"instances\":[{\"node\":\"a\",\"instance\":\"x\"},"
                                "{\"node\":\"b\",\"instance\":\"x\"},"
                                "{\"node\":\"c\",\"instance\":\"x\"}]}";
    cr_assert_eq(nodes_merge_json(t, three, strlen(three)), -EINVAL, "more than the table holds");
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.instances, 0);
    nodes_free(t);
}

Test(nodes, empty_table)
{
    struct nodes *t = nodes_new(0);
    struct buf b;
    buf_init(&b);
    nodes_write_json(t, &b, T0, SEC, NULL);
    cr_assert_str_eq(b.data, "{}");
    buf_reset(&b);
    nodes_to_json(t, &b);
    cr_assert_eq(nodes_merge_json(t, b.data, b.len), 0);
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.nodes + tot.instances + tot.batches, 0);
    buf_free(&b);
    nodes_free(t);
}

struct worker {
    struct nodes *t;
    int id;
};

static void *observe_many(void *arg)
{
    struct worker *w = arg;
    char inst[16];
    snprintf(inst, sizeof(inst), "w%d", w->id);
    for (uint64_t seq = 1; seq <= 2000; seq++)
        observe(w->t, "shared", inst, seq, 0, 0, 1, T0 + seq);
    return NULL;
}

Test(nodes, concurrent_observers)
{
    struct nodes *t = nodes_new(16);
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){t, i};
        pthread_create(&th[i], NULL, observe_many, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    struct nodes_totals tot;
    nodes_get_totals(t, &tot);
    cr_assert_eq(tot.batches, 8000);
    cr_assert_eq(tot.instances, 4);
    cr_assert_eq(tot.lost_batches, 0);
    nodes_free(t);
}

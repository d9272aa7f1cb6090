/*
 * Tests for pkg/publisher (and the incremental batch encoding in
 * pkg/event_pb) against a real nats-server: batch size and flush interval,
 * headers, both encodings, and an outage with a bounded queue.
 */
#include "bus.h"
#include "bus_message.h"
#include "event_json.h"
#include "event_pb.h"
#include "intern.h"
#include "publisher.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>

#define NODE      "ip-10-0-1-5.ec2.internal"
#define PREFIX    "test.events"
#define SUBJECT   PREFIX ".ip-10-0-1-5_ec2_internal"
#define WAIT_MS   5000
#define MS        1000000ull
#define NATS_LOG  "/tmp/test_publisher_nats.log"
#define MAX_EVENT 64

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Event i of a varied stream: every type, exec with argv, both families. */
static void make_event(struct event *e, unsigned i)
{
    memset(e, 0, sizeof(*e));
    e->id = 0x1000 + i;
    e->timestamp_ns = 1795698266000000000ull + i * 1000;
    e->pid = 100 + i;
    e->ppid = 1;
    e->uid = 1000;
    e->cgroup_id = 77;
    e->node = intern(NODE);
    snprintf(e->command, sizeof(e->command), "cmd%u", i);
    switch (i % 5) {
    case 0:
        e->type = EVENT_CONNECTION;
        e->family = EVENT_FAMILY_IPV4;
        inet_pton(AF_INET, "10.0.0.1", e->saddr);
        inet_pton(AF_INET, "10.0.0.2", e->daddr);
        e->sport = (uint16_t)(40000 + i);
        e->dport = 443;
        e->protocol = IPPROTO_TCP;
        e->status = EVENT_STATUS_ESTABLISHED;
        e->u.conn.latency_ns = 1234;
        break;
    case 1:
        e->type = EVENT_ACCEPT;
        e->family = EVENT_FAMILY_IPV6;
        inet_pton(AF_INET6, "2001:db8::1", e->saddr);
        inet_pton(AF_INET6, "::1", e->daddr);
        e->sport = 5555;
        e->dport = 8080;
        e->protocol = IPPROTO_TCP;
        e->k8s.pod_name = intern("web-1");
        e->k8s.namespace = intern("shop");
        break;
    case 2:
        e->type = EVENT_PACKET_DROP;
        e->u.drop.reason_code = 3;
        e->u.drop.reason = intern("NO_SOCKET");
        e->u.drop.location = intern("udp_rcv+0x1a");
        break;
    case 3: {
        static const char args[] = "ls\0-l\0/tmp";
        e->type = EVENT_EXEC;
        e->u.exec.filename = strdup("/usr/bin/ls");
        e->u.exec.args = malloc(sizeof(args));
        memcpy(e->u.exec.args, args, sizeof(args));
        e->u.exec.args_len = sizeof(args);
        break;
    }
    default:
        e->type = EVENT_EXIT;
        e->u.exit.exit_code = 2;
        e->u.exit.duration_ns = 99;
        break;
    }
}

/* Same JSON (everything the API shows); protobuf also keeps every cgroup id. */
static void assert_same_event(const struct event *a, const struct event *b, bool exact)
{
    struct buf ja, jb;
    buf_init(&ja);
    buf_init(&jb);
    event_json_write(&ja, a);
    event_json_write(&jb, b);
    cr_assert_str_eq(jb.data, ja.data);
    buf_free(&ja);
    buf_free(&jb);
    cr_assert_eq(b->node, a->node);
    if (exact)
        cr_assert_eq(b->cgroup_id, a->cgroup_id);
}

/* ---- fixture: a nats-server, the publisher's bus and an independent subscriber ---- */

struct fixture {
    int port;
    pid_t nats;
    struct bus *bus;
    struct publisher *pub;
    natsConnection *sub_nc;
    natsSubscription *sub;
};

/* Extra nats-server arguments of the next fixture_open() (NULL: none), reset by it. */
static const char *const *fixture_nats_args;

static void fixture_start_server(struct fixture *f)
{
    f->nats = tu_nats_start(f->port, fixture_nats_args, NATS_LOG);
    cr_assert_gt(f->nats, 0, "nats-server did not start on port %d", f->port);
}

/* HEARTBEAT_INTERVAL of the next fixture_open() (0: none), reset by it. */
static uint64_t fixture_heartbeat_ns;

static void fixture_open(struct fixture *f, enum config_encoding enc, uint32_t batch_size,
                         uint64_t flush_ns, uint64_t outage_bytes, bool same_connection)
{
    memset(f, 0, sizeof(*f));
    f->port = tu_free_port();
    fixture_start_server(f);
    fixture_nats_args = NULL;

    struct config c = {0};
    char url[64], err[256];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", f->port);
    snprintf(c.nats_url, sizeof(c.nats_url), "%s", url);
    f->bus = bus_open(&c, "test-publisher", err, sizeof(err));
    cr_assert_not_null(f->bus, "%s", err);

    if (same_connection) {
        /*
         * Core NATS is at-most-once across a server restart: a separate
         * subscriber may re-subscribe after the publisher has already sent.
         * On one connection, subscriptions are re-sent before anything else.
         */
        cr_assert_eq(natsConnection_SubscribeSync(&f->sub, bus_conn(f->bus), SUBJECT), NATS_OK);
    } else {
        cr_assert_eq(natsConnection_ConnectTo(&f->sub_nc, url), NATS_OK);
        cr_assert_eq(natsConnection_SubscribeSync(&f->sub, f->sub_nc, SUBJECT), NATS_OK);
        cr_assert_eq(natsConnection_Flush(f->sub_nc), NATS_OK);
    }
    natsSubscription_SetPendingLimits(f->sub, -1, -1);

    char subject[128];
    bus_node_subject(PREFIX, NODE, subject, sizeof(subject));
    cr_assert_str_eq(subject, SUBJECT);
    uint64_t heartbeat_ns = fixture_heartbeat_ns;
    fixture_heartbeat_ns = 0;
    struct publisher_config pc = {
        .node = NODE,
        .subject = subject,
        .encoding = enc,
        .batch_size = batch_size,
        .flush_interval_ns = flush_ns,
        .heartbeat_ns = heartbeat_ns,
        .outage_buffer_bytes = outage_bytes,
    };
    f->pub = publisher_new(f->bus, &pc, err, sizeof(err));
    cr_assert_not_null(f->pub, "%s", err);
}

static void fixture_close(struct fixture *f)
{
    publisher_free(f->pub);
    if (f->sub_nc)
        natsConnection_Close(f->sub_nc); /* first: see bus_sub_end() */
    natsSubscription_Destroy(f->sub);
    natsConnection_Destroy(f->sub_nc);
    bus_close(f->bus);
    if (f->nats > 0)
        tu_stop(f->nats, 2000);
}

static void add_events(struct publisher *p, unsigned from, unsigned n)
{
    for (unsigned i = from; i < from + n; i++) {
        struct event e;
        make_event(&e, i);
        cr_assert_eq(publisher_add(p, &e), 0);
        event_clear(&e);
    }
}

static const char *header(natsMsg *m, const char *key)
{
    const char *v = NULL;
    cr_assert_eq(natsMsgHeader_Get(m, key, &v), NATS_OK, "header %s missing", key);
    return v;
}

static uint64_t header_u64(natsMsg *m, const char *key)
{
    return strtoull(header(m, key), NULL, 10);
}

static natsMsg *next_msg(struct fixture *f, int64_t timeout_ms)
{
    natsMsg *m = NULL;
    natsStatus s = natsSubscription_NextMsg(&m, f->sub, timeout_ms);
    cr_assert(s == NATS_OK || s == NATS_TIMEOUT, "NextMsg: %s", natsStatus_GetText(s));
    return s == NATS_OK ? m : NULL;
}

/* Sends a first batch (one event) and sees it arrive. */
static void first_batch_arrives(struct fixture *f)
{
    add_events(f->pub, 0, 1);
    publisher_tick(f->pub, mono_ns());
    natsMsg *m = next_msg(f, WAIT_MS);
    cr_assert_not_null(m, "the first batch did not arrive");
    natsMsg_Destroy(m);
}

/*
 * Receives the batches after last_seq up to the one numbered last: each once, in order (the
 * gaps between their numbers, batches dropped, are summed in *gaps), each saying agent_drops
 * when it is not negative, and none after. Returns how many came.
 */
static uint64_t receive_in_order(struct fixture *f, uint64_t last_seq, uint64_t last,
                                 int64_t agent_drops, uint64_t *gaps)
{
    uint64_t got = 0;
    *gaps = 0;
    while (last_seq < last) {
        natsMsg *m = next_msg(f, WAIT_MS);
        cr_assert_not_null(m, "batch after %llu not received", (unsigned long long)last_seq);
        uint64_t seq = header_u64(m, BUS_HDR_SEQUENCE);
        cr_assert_gt(seq, last_seq, "batch %llu after %llu", (unsigned long long)seq,
                     (unsigned long long)last_seq);
        if (agent_drops >= 0)
            cr_assert_eq(header_u64(m, BUS_HDR_AGENT_DROPS), (uint64_t)agent_drops);
        *gaps += seq - last_seq - 1;
        last_seq = seq;
        got++;
        natsMsg_Destroy(m);
    }
    cr_assert_null(next_msg(f, 50), "no batch twice");
    return got;
}

/* Checks a protobuf batch: headers agree with the payload, events are first..first+n. */
static void check_pb_batch(struct publisher *p, natsMsg *m, uint64_t seq, unsigned first,
                           unsigned n, uint64_t kernel_drops, uint64_t kernel_missed)
{
    cr_assert_str_eq(natsMsg_GetSubject(m), SUBJECT);
    cr_assert_str_eq(header(m, BUS_HDR_CONTENT_TYPE), BUS_CONTENT_TYPE_PROTOBUF);
    cr_assert_str_eq(header(m, BUS_HDR_NODE), NODE);
    cr_assert_str_eq(header(m, BUS_HDR_INSTANCE), publisher_instance(p));
    cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), n);
    cr_assert_eq(header_u64(m, BUS_HDR_KERNEL_DROPS), kernel_drops);
    cr_assert_eq(header_u64(m, BUS_HDR_KERNEL_MISSED), kernel_missed);
    cr_assert_eq(header_u64(m, BUS_HDR_AGENT_DROPS), 0);
    uint64_t started = header_u64(m, BUS_HDR_INSTANCE_STARTED),
             sent = header_u64(m, BUS_HDR_SENT_AT);

    struct event_batch_meta meta;
    struct event *evs;
    size_t count;
    char err[256];
    cr_assert_eq(event_batch_decode((const uint8_t *)natsMsg_GetData(m),
                                    (size_t)natsMsg_GetDataLength(m), &meta, &evs, &count, err,
                                    sizeof(err)),
                 0, "%s", err);
    cr_assert_str_eq(meta.node, NODE);
    cr_assert_str_eq(meta.agent_instance, publisher_instance(p));
    cr_assert_eq(meta.sequence, seq);
    cr_assert_eq(meta.kernel_drops, kernel_drops);
    cr_assert_eq(meta.kernel_missed, kernel_missed);
    cr_assert_eq(meta.agent_drops, 0);
    cr_assert_gt(meta.sent_at_ns, 1700000000ull * 1000000000ull);
    /* The instance started when the publisher was made, before it sent anything. */
    cr_assert_gt(meta.instance_started_ns, 1700000000ull * 1000000000ull);
    cr_assert_leq(meta.instance_started_ns, meta.sent_at_ns);
    cr_assert_eq(started, meta.instance_started_ns);
    cr_assert_eq(sent, meta.sent_at_ns);
    cr_assert_null(meta.pod_name);
    cr_assert_eq(count, n);
    for (unsigned i = 0; i < n; i++) {
        struct event want;
        make_event(&want, first + i);
        assert_same_event(&want, &evs[i], true);
        event_clear(&want);
        event_clear(&evs[i]);
    }
    free(evs);
}

Test(publisher, incremental_encoding_decodes_like_a_whole_batch)
{
    struct buf b;
    buf_init(&b);
    for (unsigned i = 0; i < 7; i++) {
        struct event e;
        make_event(&e, i);
        cr_assert_eq(event_batch_append_event(&b, &e, intern(NODE)), 0);
        event_clear(&e);
    }
    struct event bad = {.type = EVENT_TYPE_COUNT};
    size_t len = b.len;
    cr_assert_eq(event_batch_append_event(&b, &bad, NULL), -EINVAL);
    cr_assert_eq(b.len, len, "a refused event leaves the batch as it was");
    struct event_batch_meta meta = {.node = NODE,
                                    .agent_instance = "00112233aabbccdd",
                                    .sequence = 9,
                                    .kernel_drops = 1,
                                    .agent_drops = 2,
                                    .kernel_missed = 4,
                                    .sent_at_ns = 3,
                                    .instance_started_ns = 2,
                                    .pod_name = "agent-x",
                                    .pod_namespace = "ebpf-system"};
    cr_assert_eq(event_batch_append_meta(&b, &meta), 0);

    struct event_batch_meta got;
    struct event *evs;
    size_t n;
    char err[256];
    cr_assert_eq(event_batch_decode((uint8_t *)b.data, b.len, &got, &evs, &n, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert_str_eq(got.node, NODE);
    cr_assert_str_eq(got.agent_instance, "00112233aabbccdd");
    cr_assert_eq(got.sequence, 9);
    cr_assert_eq(got.kernel_drops, 1);
    cr_assert_eq(got.agent_drops, 2);
    cr_assert_eq(got.kernel_missed, 4);
    cr_assert_eq(got.sent_at_ns, 3);
    cr_assert_eq(got.instance_started_ns, 2);
    cr_assert_str_eq(got.pod_name, "agent-x");
    cr_assert_str_eq(got.pod_namespace, "ebpf-system");
    cr_assert_eq(n, 7);
    for (unsigned i = 0; i < n; i++) {
        struct event want;
        make_event(&want, i);
        assert_same_event(&want, &evs[i], true);
        event_clear(&want);
        event_clear(&evs[i]);
    }
    free(evs);
    buf_free(&b);
}

Test(publisher, batch_size_and_flush_interval_govern_messages)
{
    const uint64_t flush = 300 * MS;
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 10, flush, 1 << 20, false);
    publisher_set_kernel_losses(f.pub, 7, 4);

    /* 20 events: two full batches, sent at the tick that follows (as the capture loop ticks
     * after each drain of the ring), not waiting for the flush interval. */
    add_events(f.pub, 0, 20);
    publisher_tick(f.pub, mono_ns());
    for (unsigned k = 0; k < 2; k++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m, "full batch %u not received", k + 1);
        check_pb_batch(f.pub, m, k + 1, k * 10, 10, 7, 4);
        natsMsg_Destroy(m);
    }

    /* 5 more: a partial batch, which must wait for the flush interval. */
    uint64_t opened_after = mono_ns();
    add_events(f.pub, 20, 5);
    uint64_t remaining = publisher_tick(f.pub, mono_ns());
    cr_assert(remaining > 0 && remaining <= flush, "next deadline in %llu ns",
              (unsigned long long)remaining);
    natsMsg *m = next_msg(&f, 50);
    cr_assert_null(m, "the partial batch went out before FLUSH_INTERVAL");

    /* The capture loop: tick with the returned timeout until the batch arrives. */
    uint64_t deadline = mono_ns() + 10 * flush;
    while (!m && mono_ns() < deadline) {
        remaining = publisher_tick(f.pub, mono_ns());
        uint64_t wait_ms = remaining / MS + 1;
        m = next_msg(&f, (int64_t)(wait_ms < 20 ? wait_ms : 20));
    }
    uint64_t received = mono_ns();
    cr_assert_not_null(m, "the partial batch never went out");
    cr_assert_geq(received - opened_after, flush, "sent %llu ms after its first event",
                  (unsigned long long)((received - opened_after) / MS));
    check_pb_batch(f.pub, m, 3, 20, 5, 7, 4);
    natsMsg_Destroy(m);

    /* The subscriber may see the last one before the publisher counts it: drain first. */
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 3);
    cr_assert_eq(st.events_sent, 25);
    cr_assert_eq(st.events_dropped, 0);
    cr_assert_eq(st.sequence, 3);
    cr_assert_eq(st.queue_batches, 0);
    cr_assert_eq(st.queue_bytes, 0);
    cr_assert(st.bus.connected);
    cr_assert_eq(strlen(publisher_instance(f.pub)), PUBLISHER_INSTANCE_LEN);
    for (const char *c = publisher_instance(f.pub); *c; c++)
        cr_assert(isxdigit((unsigned char)*c) && !isupper((unsigned char)*c));
    fixture_close(&f);
}

Test(publisher, json_encoding_is_one_event_per_line)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_JSON, 4, 200 * MS, 1 << 20, false);
    add_events(f.pub, 0, 6);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);

    unsigned next = 0;
    for (uint64_t seq = 1; seq <= 2; seq++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m, "batch %llu not received", (unsigned long long)seq);
        cr_assert_str_eq(header(m, BUS_HDR_CONTENT_TYPE), BUS_CONTENT_TYPE_JSON);
        cr_assert_str_eq(header(m, BUS_HDR_NODE), NODE);
        cr_assert_str_eq(header(m, BUS_HDR_INSTANCE), publisher_instance(f.pub));
        cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
        unsigned want_n = seq == 1 ? 4 : 2;
        cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), want_n);

        cr_assert_eq(natsMsg_GetData(m)[natsMsg_GetDataLength(m) - 1], '\n');
        char *body = strndup(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        unsigned lines = 0;
        char *save = NULL;
        for (char *line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            struct event got, want;
            char err[256];
            cr_assert_eq(event_json_parse(line, strlen(line), &got, err, sizeof(err)), 0,
                         "line %u: %s: %s", lines, err, line);
            make_event(&want, next++);
            assert_same_event(&want, &got, false);
            event_clear(&want);
            event_clear(&got);
            lines++;
        }
        cr_assert_eq(lines, want_n);
        free(body);
        natsMsg_Destroy(m);
    }
    fixture_close(&f);
}

static bool wait_bus(struct bus *b, bool connected)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (bus_connected(b) != connected) {
        if (tu_mono_ms() >= deadline)
            return false;
        usleep(2000);
    }
    return true;
}

/*
 * Full batches wake a sleeping publisher at the capture loop's next tick, or
 * without one once eight wait: a loop that drains a large ring before it
 * ticks never holds more than that back.
 */
Test(publisher, full_batches_go_at_the_tick_or_eight_at_a_time)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 3600ull * 1000 * MS, 1 << 20, false);

    /* Three full batches: sent at the tick. */
    add_events(f.pub, 0, 3);
    publisher_tick(f.pub, mono_ns());
    for (uint64_t seq = 1; seq <= 3; seq++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m, "batch %llu not received after the tick", (unsigned long long)seq);
        cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
        natsMsg_Destroy(m);
    }
    /* Eight more and no tick: the eighth wakes the publisher, which sends them all. */
    add_events(f.pub, 3, 8);
    for (uint64_t seq = 4; seq <= 11; seq++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m, "batch %llu not received without a tick", (unsigned long long)seq);
        cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
        natsMsg_Destroy(m);
    }
    /* The subscriber may see the last one before the publisher counts it: drain first. */
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 11);
    cr_assert_eq(st.events_dropped, 0);
    fixture_close(&f);
}

/*
 * A flush sends the full batches that wait for a tick: the capture loop
 * flushes on shutdown without ticking first, and a last event that filled
 * its batch leaves no open batch to close. Several rounds, so the publisher
 * is asleep when the batches are queued (it is once it has sent a round).
 */
Test(publisher, flush_sends_full_batches_waiting_for_a_tick)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 3600ull * 1000 * MS, 1 << 20, false);
    uint64_t seq = 0;
    for (unsigned round = 0; round < 5; round++) {
        add_events(f.pub, round * 3, 3);
        cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0, "round %u: flush timed out", round);
        for (unsigned k = 0; k < 3; k++) {
            natsMsg *m = next_msg(&f, WAIT_MS);
            cr_assert_not_null(m, "round %u: batch %u not received", round, k);
            cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), ++seq);
            natsMsg_Destroy(m);
        }
    }
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 15);
    cr_assert_eq(st.events_dropped, 0);
    fixture_close(&f);
}

Test(publisher, outage_queues_drops_oldest_and_resumes)
{
    /* One event per batch, so batches and events count alike. */
    const uint64_t outage_bytes = 2000;
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 100 * MS, outage_bytes, true);

    add_events(f.pub, 0, 2);
    publisher_tick(f.pub, mono_ns());
    for (uint64_t seq = 1; seq <= 2; seq++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m);
        cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
        natsMsg_Destroy(m);
    }
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0, "both counted as sent");

    tu_stop(f.nats, 2000);
    f.nats = -1;
    cr_assert(wait_bus(f.bus, false), "the bus did not notice the server going away");

    /* A few batches: they wait in the queue, nothing is lost. */
    add_events(f.pub, 2, 3);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.queue_batches, 3);
    cr_assert_eq(st.batches_sent, 2);
    cr_assert_eq(st.events_dropped, 0);
    cr_assert_not(st.bus.connected);

    /* Far more than the buffer holds: the oldest go, and are counted. */
    const unsigned total = 60;
    add_events(f.pub, 5, total - 5);
    publisher_get_stats(f.pub, &st);
    cr_assert_gt(st.batches_dropped, 0);
    cr_assert_eq(st.events_dropped, st.batches_dropped);
    cr_assert_leq(st.queue_bytes, outage_bytes);
    cr_assert_eq(st.queue_batches + st.batches_dropped + 2, total);
    uint64_t queued = st.queue_batches, dropped = st.batches_dropped;

    fixture_start_server(&f);
    cr_assert(wait_bus(f.bus, true), "the bus did not reconnect");

    /* Everything still queued arrives, in order; the gap is exactly the drops. */
    uint64_t gaps;
    cr_assert_eq(receive_in_order(&f, 2, total, (int64_t)dropped, &gaps), queued);
    cr_assert_eq(gaps, dropped);

    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 2 + queued);
    cr_assert_eq(st.queue_batches, 0);
    cr_assert_eq(st.queue_bytes, 0);
    cr_assert_geq(st.bus.reconnects, 1);
    fixture_close(&f);
}

/*
 * After an outage, a subscriber on another connection (an aggregator) may
 * come back after this publisher: the queued batches wait until it has had
 * time to, instead of going to a server that knows no subscriber yet.
 */
Test(publisher, after_an_outage_batches_wait_for_subscribers_to_return)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 100 * MS, 1 << 20, false);

    first_batch_arrives(&f);

    tu_stop(f.nats, 2000);
    f.nats = -1;
    cr_assert(wait_bus(f.bus, false), "the bus did not notice the server going away");
    add_events(f.pub, 1, 3);
    /* The subscriber is gone for now: it subscribes again only once the publisher is back. */
    natsConnection_Close(f.sub_nc); /* first: see bus_sub_end() */
    natsSubscription_Destroy(f.sub);
    natsConnection_Destroy(f.sub_nc);
    f.sub = NULL;
    f.sub_nc = NULL;

    fixture_start_server(&f);
    cr_assert(wait_bus(f.bus, true), "the bus did not reconnect");
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", f.port);
    cr_assert_eq(natsConnection_ConnectTo(&f.sub_nc, url), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&f.sub, f.sub_nc, SUBJECT), NATS_OK);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);

    uint64_t gaps;
    cr_assert_eq(receive_in_order(&f, 1, 4, -1, &gaps), 3);
    cr_assert_eq(gaps, 0, "a queued batch lost");
    fixture_close(&f);
}

/* Waits until the publisher holds its batches because no one hears them. */
static bool wait_no_listener(struct publisher *p, bool want)
{
    struct publisher_stats st;
    uint64_t until = mono_ns() + WAIT_MS * MS;
    do {
        publisher_get_stats(p, &st);
        if (st.no_listener == want)
            return true;
        usleep(10000);
    } while (mono_ns() < until);
    return false;
}

/*
 * Core NATS drops a message no one subscribes to (every aggregator gone, a
 * lone one restarting): the server's "no responders" answer brings such a
 * batch back, and the queue waits, bounded as in an outage, until a
 * subscriber hears it again; none is lost uncounted, none arrives twice.
 */
Test(publisher, batches_no_one_hears_wait_for_a_subscriber)
{
    const uint64_t outage_bytes = 2000;
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 100 * MS, outage_bytes, false);

    add_events(f.pub, 0, 2);
    publisher_tick(f.pub, mono_ns());
    for (uint64_t seq = 1; seq <= 2; seq++) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m);
        cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), seq);
        natsMsg_Destroy(m);
    }
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 2);
    cr_assert_eq(st.batches_unheard, 0);
    cr_assert_not(st.no_listener);

    /* The subscriber goes: the next batch comes back, and the queue is held. */
    cr_assert_eq(natsSubscription_Unsubscribe(f.sub), NATS_OK);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);
    add_events(f.pub, 2, 3);
    publisher_tick(f.pub, mono_ns());
    cr_assert(wait_no_listener(f.pub, true), "the publisher did not learn no one listens");
    cr_assert_eq(publisher_flush(f.pub, 300 * MS), -ETIMEDOUT, "unheard batches are not done");
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 2, "an unheard batch counted as sent");
    cr_assert_geq(st.batches_unheard, 1);
    cr_assert_eq(st.queue_batches, 3);
    cr_assert_eq(st.events_dropped, 0);

    /* Far more than the queue holds: the oldest go, counted, as in an outage. */
    const unsigned total = 60;
    add_events(f.pub, 5, total - 5);
    publisher_get_stats(f.pub, &st);
    cr_assert_gt(st.batches_dropped, 0);
    cr_assert_eq(st.events_dropped, st.batches_dropped);
    cr_assert_eq(st.batches_sent, 2);
    uint64_t dropped = st.batches_dropped;

    /* A subscriber again: what is queued arrives, in order, each once; the gap is the drops. */
    cr_assert(bus_sub_end(f.sub_nc, f.sub, 5000));
    f.sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&f.sub, f.sub_nc, SUBJECT), NATS_OK);
    natsSubscription_SetPendingLimits(f.sub, -1, -1);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);
    uint64_t gaps, got = receive_in_order(&f, 2, total, -1, &gaps);
    cr_assert_eq(gaps, dropped);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    cr_assert(wait_no_listener(f.pub, false));
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 2 + got);
    cr_assert_eq(st.batches_sent + st.batches_dropped, total);
    cr_assert_eq(st.queue_batches, 0);
    cr_assert_eq(st.queue_bytes, 0);
    fixture_close(&f);
}

/*
 * A server that answers late (paused here; a slow or remote one, or this process starved) does
 * not tell whether a batch was heard: it stays queued until the server answers, never counted as
 * heard meanwhile, so a batch no one subscribed to is not lost.
 */
Test(publisher, a_late_answer_from_the_server_loses_no_unheard_batch)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 1, 50 * MS, 1 << 20, false);

    first_batch_arrives(&f);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);

    cr_assert_eq(natsSubscription_Unsubscribe(f.sub), NATS_OK);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);
    add_events(f.pub, 1, 2);
    publisher_tick(f.pub, mono_ns());
    cr_assert(wait_no_listener(f.pub, true), "the publisher did not learn no one listens");

    /* Paused past the publisher's wait for an answer (a second), while it tries its first
     * batch again and more batches come. */
    const unsigned total = 8;
    cr_assert_eq(kill(f.nats, SIGSTOP), 0);
    for (unsigned i = 3; i < total; i++) {
        add_events(f.pub, i, 1);
        publisher_tick(f.pub, mono_ns());
        usleep(500000);
    }
    cr_assert_eq(kill(f.nats, SIGCONT), 0);
    cr_assert(wait_no_listener(f.pub, true));

    cr_assert(bus_sub_end(f.sub_nc, f.sub, 5000));
    f.sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&f.sub, f.sub_nc, SUBJECT), NATS_OK);
    natsSubscription_SetPendingLimits(f.sub, -1, -1);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);
    uint64_t gaps;
    cr_assert_eq(receive_in_order(&f, 1, total, -1, &gaps), total - 1);
    cr_assert_eq(gaps, 0, "a batch lost");
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, total);
    cr_assert_eq(st.events_dropped, 0);
    fixture_close(&f);
}

Test(publisher, free_sends_the_open_batch)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 100, 3600000 * MS, 1 << 20, false);
    add_events(f.pub, 0, 3);
    publisher_free(f.pub);
    f.pub = NULL;
    natsMsg *m = next_msg(&f, WAIT_MS);
    cr_assert_not_null(m, "the last partial batch was lost on shutdown");
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), 3);
    natsMsg_Destroy(m);
    fixture_close(&f);
}

/*
 * Deleted pods go out in the Ebpf-Pods-Gone header of the open batch, which is sent for
 * them alone when no event comes (within the flush interval), and as the aggregator's
 * decoder reads it, in both encodings; the publisher's room is PEERS_GONE_MAX_PODS a batch.
 */
static void check_gone(enum config_encoding enc)
{
    struct fixture f;
    fixture_open(&f, enc, 4, 100 * MS, 1 << 20, false);
    struct peers_pod gone[PEERS_GONE_MAX_PODS + 3];
    for (size_t i = 0; i < PEERS_GONE_MAX_PODS + 3; i++) {
        char name[32];
        snprintf(name, sizeof(name), "web-%zu", i);
        gone[i] = (struct peers_pod){.namespace = intern("shop"),
                                     .pod = intern(name),
                                     .uid = intern(name),
                                     .n_ips = 1,
                                     .family = {EVENT_FAMILY_IPV4},
                                     .seen_ns = 1795698266000000000ull + i,
                                     .gone_ns = 1795698266000000000ull + i};
        gone[i].ip[0][0] = 10;
        gone[i].ip[0][3] = (uint8_t)i;
    }
    cr_assert_eq(publisher_gone_room(f.pub), PEERS_GONE_MAX_PODS);
    cr_assert_eq(publisher_add_gone(f.pub, gone, 2), 2);
    cr_assert_eq(publisher_gone_room(f.pub), PEERS_GONE_MAX_PODS - 2);
    uint64_t t0 = mono_ns();
    natsMsg *m = NULL;
    while (!m && mono_ns() - t0 < WAIT_MS * MS) {
        publisher_tick(f.pub, mono_ns());
        m = next_msg(&f, 20);
    }
    cr_assert_not_null(m, "no batch for the deletions alone");
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), 0);
    struct bus_batch b;
    char err[256];
    cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 0);
    cr_assert_eq(b.n_gone, 2);
    cr_assert_str_eq(b.gone[1].pod, "web-1");
    cr_assert_str_eq(b.gone[1].node, NODE, "a pod without a node gets the agent's");
    cr_assert_eq(b.gone[1].gone_ns, 1795698266000000001ull);
    cr_assert_eq(b.gone[1].ip[0][3], 1);
    bus_batch_free(&b);
    natsMsg_Destroy(m);

    /* With events, in the same batch; past the room, the rest wait for the caller. */
    add_events(f.pub, 0, 1);
    cr_assert_eq(publisher_add_gone(f.pub, gone + 2, PEERS_GONE_MAX_PODS + 1), PEERS_GONE_MAX_PODS);
    cr_assert_eq(publisher_gone_room(f.pub), 0);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    m = next_msg(&f, WAIT_MS);
    cr_assert_not_null(m);
    cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 1);
    cr_assert_eq(b.n_gone, PEERS_GONE_MAX_PODS);
    cr_assert_str_eq(b.gone[PEERS_GONE_MAX_PODS - 1].pod, "web-33");
    bus_batch_free(&b);
    natsMsg_Destroy(m);

    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.pods_gone, 2 + PEERS_GONE_MAX_PODS);
    cr_assert_eq(st.pods_gone_dropped, 0, "the one over the room is the caller's to keep");
    fixture_close(&f);
}

Test(publisher, deleted_pods_travel_in_a_header_protobuf)
{
    check_gone(CONFIG_ENCODING_PROTOBUF);
}

Test(publisher, deleted_pods_travel_in_a_header_json)
{
    check_gone(CONFIG_ENCODING_JSON);
}

/*
 * The node's pod list goes out in a header of the open batch: alone when no
 * event comes (within the flush interval), once; the next batch has none.
 */
static void check_present(enum config_encoding enc)
{
    struct fixture f;
    fixture_open(&f, enc, 4, 100 * MS, 1 << 20, false);
    const char *uids[] = {intern("uid-1"), intern("uid-2")};
    cr_assert(publisher_set_present(f.pub, uids, 2, 1795698266000000007ull));
    uint64_t t0 = mono_ns();
    natsMsg *m = NULL;
    while (!m && mono_ns() - t0 < WAIT_MS * MS) {
        publisher_tick(f.pub, mono_ns());
        m = next_msg(&f, 20);
    }
    cr_assert_not_null(m, "no batch for the pod list alone");
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), 0);
    struct bus_batch b;
    char err[256];
    cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 0);
    cr_assert_eq(b.n_present, 2);
    cr_assert_eq(b.present_at_ns, 1795698266000000007ull);
    cr_assert_eq(b.present[1], uids[1]);
    bus_batch_free(&b);
    natsMsg_Destroy(m);

    add_events(f.pub, 0, 1);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    m = next_msg(&f, WAIT_MS);
    cr_assert_not_null(m);
    cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 1);
    cr_assert_eq(b.present_at_ns, 0, "sent once");
    bus_batch_free(&b);
    natsMsg_Destroy(m);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.heartbeats, 0, "a batch with a pod list is no heartbeat");
    fixture_close(&f);
}

Test(publisher, the_pod_list_travels_in_a_header_protobuf)
{
    check_present(CONFIG_ENCODING_PROTOBUF);
}

Test(publisher, the_pod_list_travels_in_a_header_json)
{
    check_present(CONFIG_ENCODING_JSON);
}

/*
 * An idle agent sends an empty batch every heartbeat interval (its own sequence number, the
 * loss counters), which the aggregator's decoder takes; events in between put it off.
 */
Test(publisher, an_idle_publisher_sends_heartbeats)
{
    for (int enc = 0; enc < 2; enc++) {
        struct fixture f;
        fixture_heartbeat_ns = 150 * MS;
        /* Before the publisher is made: its first interval starts then, not when this returns. */
        uint64_t t0 = mono_ns();
        fixture_open(&f, enc ? CONFIG_ENCODING_JSON : CONFIG_ENCODING_PROTOBUF, 4, 50 * MS, 1 << 20,
                     false);
        natsMsg *m = NULL;
        for (int got = 0; got < 2;) {
            cr_assert_lt(mono_ns() - t0, WAIT_MS * MS, "%d heartbeats", got);
            uint64_t next = publisher_tick(f.pub, mono_ns());
            cr_assert_leq(next, 150 * MS, "the caller is woken in time");
            if (!(m = next_msg(&f, 20)))
                continue;
            struct bus_batch b;
            char err[256];
            cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
            cr_assert_eq(b.n, 0);
            cr_assert_eq(b.meta.sequence, (uint64_t)got + 1);
            cr_assert_str_eq(b.meta.node, NODE);
            bus_batch_free(&b);
            natsMsg_Destroy(m);
            got++;
        }
        cr_assert_geq(mono_ns() - t0, 2 * 150 * MS, "not before the interval");
        /* An event batch resets the interval: the next message is it, not a heartbeat. */
        add_events(f.pub, 0, 1);
        publisher_tick(f.pub, mono_ns() + 50 * MS);
        m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m);
        cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), 1);
        natsMsg_Destroy(m);
        struct publisher_stats st;
        publisher_get_stats(f.pub, &st);
        cr_assert_eq(st.heartbeats, 2);
        cr_assert_eq(st.sequence, 3);
        fixture_close(&f);
    }
}

/* A FLUSH_INTERVAL longer than HEARTBEAT_INTERVAL: a batch left open by a trickle of events is
 * sent when the heartbeat is due, not only when its flush interval is up. */
Test(publisher, an_open_batch_goes_out_when_a_heartbeat_is_due)
{
    struct fixture f;
    fixture_heartbeat_ns = 150 * MS;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 100, 3600 * 1000 * MS, 1 << 20, false);
    uint64_t t0 = mono_ns();
    add_events(f.pub, 0, 1);
    natsMsg *m = NULL;
    while (!m) {
        cr_assert_lt(mono_ns() - t0, WAIT_MS * MS, "the open batch was not sent");
        uint64_t next = publisher_tick(f.pub, mono_ns());
        cr_assert_leq(next, 150 * MS, "the caller is woken in time for the heartbeat");
        m = next_msg(&f, 20);
    }
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), 1);
    natsMsg_Destroy(m);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.heartbeats, 0, "the batch itself reported in");
    fixture_close(&f);
}

/* HEARTBEAT_INTERVAL 0: an idle publisher sends nothing. */
Test(publisher, no_heartbeat_when_off)
{
    struct fixture f;
    fixture_open(&f, CONFIG_ENCODING_PROTOBUF, 4, 20 * MS, 1 << 20, false);
    uint64_t t0 = mono_ns();
    while (mono_ns() - t0 < 300 * MS) {
        publisher_tick(f.pub, mono_ns());
        natsMsg *m = next_msg(&f, 20);
        cr_assert_null(m, "a message from an idle publisher without heartbeats");
    }
    fixture_close(&f);
}

/* ---- a server whose max_payload is smaller than a batch ---- */

#define SMALL_PAYLOAD 1024

/* Decodes a message of either encoding, appending its events' ids to ids[*n]. */
static void collect_ids(natsMsg *m, enum config_encoding enc, uint64_t *ids, size_t *n, size_t max)
{
    const char *data = natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    char err[256];
    size_t before = *n;
    if (enc == CONFIG_ENCODING_PROTOBUF) {
        struct event_batch_meta meta;
        struct event *evs;
        size_t count;
        cr_assert_eq(
            event_batch_decode((const uint8_t *)data, len, &meta, &evs, &count, err, sizeof(err)),
            0, "%s", err);
        cr_assert_eq(meta.sequence, header_u64(m, BUS_HDR_SEQUENCE));
        cr_assert_eq(meta.rejected_events, 0);
        for (size_t i = 0; i < count; i++) {
            cr_assert_lt(*n, max);
            struct event want;
            make_event(&want, (unsigned)(evs[i].id - 0x1000));
            assert_same_event(&want, &evs[i], true); /* pods and all, as encoded first */
            event_clear(&want);
            ids[(*n)++] = evs[i].id;
            event_clear(&evs[i]);
        }
        free(evs);
    } else {
        for (size_t at = 0; at < len;) {
            const char *nl = memchr(data + at, '\n', len - at);
            cr_assert_not_null(nl, "a JSON batch ends with a newline");
            struct event e;
            cr_assert_eq(
                event_json_parse(data + at, (size_t)(nl - data - at), &e, err, sizeof(err)), 0,
                "%s", err);
            cr_assert_lt(*n, max);
            ids[(*n)++] = e.id;
            event_clear(&e);
            at = (size_t)(nl - data) + 1;
        }
    }
    cr_assert_eq(header_u64(m, BUS_HDR_EVENTS), *n - before);
}

/*
 * The first batch is made before the publisher has heard the server's max_payload (as at
 * the start, or in an outage before the first connection): refused as too large, it is
 * split until each part fits, and every event arrives once, the batches in the order of
 * their numbers with no gap between them. An event too large on its own is dropped,
 * counted as such, and the batches after it still go.
 */
static void check_small_payload(enum config_encoding enc)
{
    enum { N = 300 };
    char conf[64];
    snprintf(conf, sizeof(conf), "/tmp/test_publisher.%d.conf", getpid());
    FILE *cf = fopen(conf, "w");
    cr_assert_not_null(cf);
    fprintf(cf, "max_payload: %d\n", SMALL_PAYLOAD);
    fclose(cf);
    const char *const args[] = {"-c", conf, NULL};
    fixture_nats_args = args;

    struct fixture f;
    fixture_open(&f, enc, N, 3600000 * MS, 1 << 24, false);
    unlink(conf);
    add_events(f.pub, 0, N); /* one batch of N events, some 30 KB */
    publisher_tick(f.pub, mono_ns());

    uint64_t ids[N], max_seq = 0, msgs = 0;
    bool seen[N] = {false};
    size_t n = 0;
    while (n < N) {
        natsMsg *m = next_msg(&f, WAIT_MS);
        cr_assert_not_null(m, "%zu of %d events arrived", n, N);
        cr_assert_leq(natsMsg_GetDataLength(m), SMALL_PAYLOAD);
        /* In order and without a gap, as whoever counts lost batches reads them. */
        uint64_t seq = header_u64(m, BUS_HDR_SEQUENCE);
        cr_assert_eq(seq, max_seq + 1, "batch %llu after %llu", (unsigned long long)seq,
                     (unsigned long long)max_seq);
        max_seq = seq;
        msgs++;
        collect_ids(m, enc, ids, &n, N);
        natsMsg_Destroy(m);
    }
    for (size_t i = 0; i < N; i++) {
        cr_assert(ids[i] >= 0x1000 && ids[i] < 0x1000 + N && !seen[ids[i] - 0x1000],
                  "event %llx unknown or twice", (unsigned long long)ids[i]);
        seen[ids[i] - 0x1000] = true;
    }
    cr_assert_gt(msgs, 1);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.events_dropped, 0);
    cr_assert_eq(st.batches_dropped, 0);
    cr_assert_eq(st.batches_sent, msgs);
    cr_assert_eq(st.events_sent, N);
    cr_assert_eq(st.sequence, max_seq);
    cr_assert_eq(st.queue_batches, 0);
    cr_assert_eq(st.queue_bytes, 0);

    /* One event over max_payload on its own: dropped and counted; the next one still goes. */
    struct event big;
    make_event(&big, N + 3); /* exec */
    free(big.u.exec.args);
    big.u.exec.args_len = 1000;
    big.u.exec.args = malloc(big.u.exec.args_len);
    cr_assert_not_null(big.u.exec.args);
    for (size_t i = 0; i < big.u.exec.args_len; i++)
        big.u.exec.args[i] = (i + 1) % 200 == 0 ? '\0' : "\x01\x02\x03"[i % 3];
    big.u.exec.args[big.u.exec.args_len - 1] = '\0';
    cr_assert_eq(publisher_add(f.pub, &big), 0);
    event_clear(&big);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    add_events(f.pub, N + 10, 1);
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    natsMsg *m = next_msg(&f, WAIT_MS);
    cr_assert_not_null(m, "the batch after the dropped one did not arrive");
    n = 0;
    collect_ids(m, enc, ids, &n, N);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 0x1000 + N + 10);
    cr_assert_eq(header_u64(m, BUS_HDR_SEQUENCE), max_seq + 2, "a gap for the dropped batch");
    cr_assert_eq(header_u64(m, BUS_HDR_AGENT_DROPS), 1);
    natsMsg_Destroy(m);
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_too_large, 1);
    cr_assert_eq(st.batches_dropped, 1);
    cr_assert_eq(st.events_dropped, 1);
    fixture_close(&f);
}

Test(publisher, a_batch_over_max_payload_is_split_protobuf)
{
    check_small_payload(CONFIG_ENCODING_PROTOBUF);
}

Test(publisher, a_batch_over_max_payload_is_split_json)
{
    check_small_payload(CONFIG_ENCODING_JSON);
}

/* ---- a subject the user may not publish to ---- */

static void write_perm_conf(const char *path, const char *agent_may_publish)
{
    FILE *cf = fopen(path, "w");
    cr_assert_not_null(cf);
    fprintf(cf,
            "authorization { users = [\n"
            "  {user: agent, password: apw, permissions: {publish: [\"%s\"], "
            "subscribe: [\"_EBPF_UNHEARD.>\"]}},\n"
            "  {user: sub, password: spw}\n"
            "] }\n",
            agent_may_publish);
    fclose(cf);
}

/*
 * A server that refuses the node's subject (a wrong SUBJECT_PREFIX, publish permissions that
 * leave it out) drops every batch with an error, not a "no responders": the batches are held
 * as when no one hears them, none counted as sent, and once the permissions are fixed (a
 * server reload) every one arrives, in order, none lost.
 */
Test(publisher, batches_the_server_refuses_wait_for_permission)
{
    char conf[64], url[96];
    snprintf(conf, sizeof(conf), "/tmp/test_publisher.perm.%d.conf", getpid());
    write_perm_conf(conf, "other.>");
    const char *const args[] = {"-c", conf, NULL};
    struct fixture f;
    memset(&f, 0, sizeof(f));
    f.port = tu_free_port();
    fixture_nats_args = args;
    fixture_start_server(&f);
    fixture_nats_args = NULL;

    snprintf(url, sizeof(url), "nats://sub:spw@127.0.0.1:%d", f.port);
    cr_assert_eq(natsConnection_ConnectTo(&f.sub_nc, url), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&f.sub, f.sub_nc, SUBJECT), NATS_OK);
    cr_assert_eq(natsConnection_Flush(f.sub_nc), NATS_OK);

    struct config c = {0};
    char err[256];
    snprintf(c.nats_url, sizeof(c.nats_url), "nats://agent:apw@127.0.0.1:%d", f.port);
    f.bus = bus_open(&c, "test-publisher", err, sizeof(err));
    cr_assert_not_null(f.bus, "%s", err);
    cr_assert(wait_bus(f.bus, true), "the publisher did not connect");
    struct publisher_config pc = {
        .node = NODE,
        .subject = SUBJECT,
        .encoding = CONFIG_ENCODING_PROTOBUF,
        .batch_size = 1,
        .flush_interval_ns = 100 * MS,
        .outage_buffer_bytes = 1 << 20,
    };
    f.pub = publisher_new(f.bus, &pc, err, sizeof(err));
    cr_assert_not_null(f.pub, "%s", err);

    enum { N = 5 };
    add_events(f.pub, 0, N);
    publisher_tick(f.pub, mono_ns());
    cr_assert(wait_no_listener(f.pub, true), "refused batches are not held");
    struct publisher_stats st;
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, 0, "refused batches counted as sent");
    cr_assert_eq(st.events_sent, 0);
    cr_assert_eq(st.queue_batches, N);
    cr_assert_geq(st.batches_unheard, 1);
    cr_assert_null(next_msg(&f, 10), "a refused batch arrived");

    /* Permission given: the server takes the held batches, oldest first. */
    write_perm_conf(conf, PREFIX ".>");
    cr_assert_eq(kill(f.nats, SIGHUP), 0);
    uint64_t gaps;
    cr_assert_eq(receive_in_order(&f, 0, N, 0, &gaps), N);
    cr_assert_eq(gaps, 0);
    cr_assert(wait_no_listener(f.pub, false));
    cr_assert_eq(publisher_flush(f.pub, 2000 * MS), 0);
    publisher_get_stats(f.pub, &st);
    cr_assert_eq(st.batches_sent, N);
    cr_assert_eq(st.events_dropped, 0);
    cr_assert_eq(st.queue_batches, 0);
    unlink(conf);
    fixture_close(&f);
}

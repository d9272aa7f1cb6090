/*
 * Tests for pkg/bus_message: decoding real NATS messages (built with
 * natsMsg_Create and headers, no server needed) in both encodings, and the
 * reject reason for every kind of bad message.
 */
#include "buf.h"
#include "bus.h"
#include "bus_message.h"
#include "event_json.h"
#include "event_pb.h"
#include "intern.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NODE "worker-1.example.com"
#define INST "0123456789abcdef"

static void make_exec(struct event *e, uint64_t id, const char *node)
{
    static char args[] = "ls\0-l";
    memset(e, 0, sizeof(*e));
    e->type = EVENT_EXEC;
    e->id = id;
    e->timestamp_ns = 1795698266000000000ull + id;
    e->pid = 4000 + (uint32_t)id;
    e->ppid = 1;
    strcpy(e->command, "ls");
    e->node = node ? intern(node) : NULL;
    e->u.exec.filename = strdup("/usr/bin/ls");
    e->u.exec.args = malloc(sizeof(args));
    memcpy(e->u.exec.args, args, sizeof(args));
    e->u.exec.args_len = sizeof(args);
}

static void make_exit(struct event *e, uint64_t id, const char *node)
{
    memset(e, 0, sizeof(*e));
    e->type = EVENT_EXIT;
    e->id = id;
    e->timestamp_ns = 1795698266000000000ull + id;
    e->pid = 4000 + (uint32_t)id;
    strcpy(e->command, "sleep");
    e->node = node ? intern(node) : NULL;
    e->u.exit.exit_code = 3;
    e->u.exit.duration_ns = 1000;
}

static const struct event_batch_meta good_meta = {
    .node = NODE,
    .agent_instance = INST,
    .sequence = 7,
    .kernel_drops = 11,
    .agent_drops = 22,
    .sent_at_ns = 1795698267000000000ull,
};

/* A protobuf batch of n events (exec and exit alternating, nodeless). */
static void encode_batch(struct buf *out, const struct event_batch_meta *meta, size_t n)
{
    struct event *ev = calloc(n ? n : 1, sizeof(*ev));
    for (size_t i = 0; i < n; i++) {
        if (i % 2)
            make_exit(&ev[i], i + 1, NULL);
        else
            make_exec(&ev[i], i + 1, NULL);
    }
    cr_assert_eq(event_batch_encode(meta, ev, n, out), 0);
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    free(ev);
}

/* JSON lines of n events, written the way the API writes them. */
static void json_lines(struct buf *out, size_t n, const char *node)
{
    for (size_t i = 0; i < n; i++) {
        struct event e;
        if (i % 2)
            make_exit(&e, i + 1, node);
        else
            make_exec(&e, i + 1, node);
        event_json_write(out, &e);
        buf_putc(out, '\n');
        event_clear(&e);
    }
}

/* A message on subject with headers given as NULL-terminated key/value pairs. */
static natsMsg *message_on(const char *subject, const void *data, size_t len,
                           const char *const *headers)
{
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, subject, NULL, data, (int)len), NATS_OK);
    for (; headers && headers[0]; headers += 2)
        cr_assert_eq(natsMsgHeader_Set(m, headers[0], headers[1]), NATS_OK);
    return m;
}

/* The same on NODE's subject. */
static natsMsg *message(const void *data, size_t len, const char *const *headers)
{
    return message_on("ebpf.events.worker-1_example_com", data, len, headers);
}

static enum bus_reject decode(natsMsg *m, struct bus_batch *b, char *err)
{
    enum bus_reject r = bus_message_decode(m, b, err, 256);
    natsMsg_Destroy(m);
    return r;
}

/* natsMsg_Destroy needs the library's garbage collector running. */
static void setup(void)
{
    cr_assert_eq(nats_Open(-1), NATS_OK);
}

TestSuite(bus_message, .init = setup);

#define JSON_HEADERS(node, inst, seq)                                                              \
    BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, node, BUS_HDR_INSTANCE, inst,       \
        BUS_HDR_SEQUENCE, seq

Test(bus_message, reject_names_are_metric_labels)
{
    cr_assert_str_eq(bus_reject_name(BUS_OK), "ok");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_OVERSIZED), "oversized");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_TOO_MANY_EVENTS), "too_many_events");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_UNKNOWN_ENCODING), "unknown_encoding");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_MALFORMED_PROTOBUF), "malformed_protobuf");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_MALFORMED_JSON), "malformed_json");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_BAD_METADATA), "bad_metadata");
    cr_assert_str_eq(bus_reject_name(BUS_REJECT_COUNT), "unknown");
}

Test(bus_message, protobuf_batch_with_headers)
{
    struct buf body;
    buf_init(&body);
    encode_batch(&body, &good_meta, 3);
    const char *hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_NODE, NODE,
                          NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(body.data, body.len, hdrs), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 3);
    cr_assert_str_eq(b.meta.node, NODE);
    cr_assert_str_eq(b.meta.agent_instance, INST);
    cr_assert_eq(b.meta.sequence, 7);
    cr_assert_eq(b.meta.kernel_drops, 11);
    cr_assert_eq(b.meta.agent_drops, 22);
    /* Nodeless events take the batch's node. */
    for (size_t i = 0; i < b.n; i++)
        cr_assert_str_eq(b.events[i].node, NODE);
    cr_assert_eq(b.events[0].type, EVENT_EXEC);
    cr_assert_str_eq(b.events[0].u.exec.filename, "/usr/bin/ls");
    cr_assert_eq(b.events[1].type, EVENT_EXIT);
    cr_assert_eq(b.events[1].u.exit.exit_code, 3);
    bus_batch_free(&b);
    cr_assert_null(b.events);
    buf_free(&body);
}

Test(bus_message, json_batch_takes_metadata_from_headers)
{
    struct buf body;
    buf_init(&body);
    json_lines(&body, 4, NULL);
    const char *hdrs[] = {JSON_HEADERS(NODE, INST, "42"),
                          BUS_HDR_EVENTS,
                          "4",
                          BUS_HDR_KERNEL_DROPS,
                          "5",
                          BUS_HDR_AGENT_DROPS,
                          "6",
                          BUS_HDR_KERNEL_MISSED,
                          "8",
                          BUS_HDR_INSTANCE_STARTED,
                          "1795698200000000000",
                          BUS_HDR_SENT_AT,
                          "1795698267000000000",
                          NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(body.data, body.len, hdrs), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 4);
    cr_assert_str_eq(b.meta.node, NODE);
    cr_assert_str_eq(b.meta.agent_instance, INST);
    cr_assert_eq(b.meta.sequence, 42);
    cr_assert_eq(b.meta.kernel_drops, 5);
    cr_assert_eq(b.meta.agent_drops, 6);
    cr_assert_eq(b.meta.kernel_missed, 8);
    cr_assert_eq(b.meta.instance_started_ns, 1795698200000000000ull);
    cr_assert_eq(b.meta.sent_at_ns, 1795698267000000000ull);
    for (size_t i = 0; i < b.n; i++) {
        cr_assert_str_eq(b.events[i].node, NODE);
        cr_assert_eq(b.events[i].id, i + 1);
    }
    cr_assert_str_eq(b.events[0].u.exec.filename, "/usr/bin/ls");
    bus_batch_free(&b);
    buf_free(&body);
}

/* An agent sends its own node's events: another node's are rejected, the batch's others kept. */
Test(bus_message, json_events_of_another_node_are_rejected)
{
    struct buf body;
    buf_init(&body);
    json_lines(&body, 2, "other-node");
    json_lines(&body, 1, NODE);
    const char *hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(body.data, body.len, hdrs), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 1);
    cr_assert_str_eq(b.events[0].node, NODE);
    cr_assert_eq(b.meta.rejected_events, 2);
    cr_assert(strstr(err, "its node is not the batch's node"), "%s", err);
    bus_batch_free(&b);
    buf_free(&body);
}

/*
 * What a message says of its node besides the batch must agree with it: the subject
 * (<prefix>.<node>, '.' as '_') and an Ebpf-Node header. Otherwise, with NATS permissions
 * per subject, one agent's credentials would publish for every node.
 */
Test(bus_message, a_batch_on_another_nodes_subject_is_refused)
{
    struct buf pb, js;
    buf_init(&pb);
    buf_init(&js);
    encode_batch(&pb, &good_meta, 2);
    json_lines(&js, 2, NULL);
    const char *pb_hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, NULL};
    const char *js_hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
    static const char *subjects[] = {"ebpf.events.node-2", "ebpf.events.worker-1",
                                     "ebpf.events.worker-1_example_com_x", "worker-1_example_com",
                                     "ebpf.events.worker-1.example.com"};
    struct bus_batch b;
    char err[256];

    for (size_t i = 0; i < sizeof(subjects) / sizeof(subjects[0]); i++) {
        cr_assert_eq(decode(message_on(subjects[i], pb.data, pb.len, pb_hdrs), &b, err),
                     BUS_REJECT_BAD_METADATA, "%s", subjects[i]);
        cr_assert(strstr(err, "on subject"), "%s", err);
        cr_assert_eq(decode(message_on(subjects[i], js.data, js.len, js_hdrs), &b, err),
                     BUS_REJECT_BAD_METADATA, "%s", subjects[i]);
    }
    /* Any prefix: the node is the subject's last token. */
    cr_assert_eq(
        decode(message_on("other.prefix.worker-1_example_com", pb.data, pb.len, pb_hdrs), &b, err),
        BUS_OK, "%s", err);
    bus_batch_free(&b);

    const char *lying[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_NODE, "node-2",
                           NULL};
    cr_assert_eq(decode(message(pb.data, pb.len, lying), &b, err), BUS_REJECT_BAD_METADATA);
    cr_assert(strstr(err, "Ebpf-Node header \"node-2\" is not the batch's node"), "%s", err);
    buf_free(&pb);
    buf_free(&js);
}

Test(bus_message, no_content_type_is_sniffed)
{
    struct buf pb, js;
    buf_init(&pb);
    buf_init(&js);
    encode_batch(&pb, &good_meta, 2);
    json_lines(&js, 3, NULL);
    struct bus_batch b;
    char err[256];

    cr_assert_eq(decode(message(pb.data, pb.len, NULL), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 2);
    bus_batch_free(&b);

    const char *hdrs[] = {BUS_HDR_NODE, NODE, BUS_HDR_INSTANCE, INST, BUS_HDR_SEQUENCE, "3", NULL};
    cr_assert_eq(decode(message(js.data, js.len, hdrs), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 3);
    cr_assert_eq(b.meta.sequence, 3);
    bus_batch_free(&b);
    buf_free(&pb);
    buf_free(&js);
}

Test(bus_message, content_type_parameters_and_case)
{
    struct buf js;
    buf_init(&js);
    json_lines(&js, 1, NULL);
    const char *hdrs[] = {BUS_HDR_CONTENT_TYPE,
                          "Application/X-NDJSON; charset=utf-8",
                          BUS_HDR_NODE,
                          NODE,
                          BUS_HDR_INSTANCE,
                          INST,
                          BUS_HDR_SEQUENCE,
                          "1",
                          NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(js.data, js.len, hdrs), &b, err), BUS_OK, "%s", err);
    bus_batch_free(&b);

    /* A protobuf of some other message type is not ours. */
    struct buf pb;
    buf_init(&pb);
    encode_batch(&pb, &good_meta, 1);
    const char *other[] = {BUS_HDR_CONTENT_TYPE, "application/x-protobuf; messageType=foo.Bar",
                           NULL};
    cr_assert_eq(decode(message(pb.data, pb.len, other), &b, err), BUS_REJECT_UNKNOWN_ENCODING);
    buf_free(&js);
    buf_free(&pb);
}

Test(bus_message, garbage_is_malformed_protobuf)
{
    static const char garbage[] = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01 not protobuf";
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(garbage, sizeof(garbage) - 1, NULL), &b, err),
                 BUS_REJECT_MALFORMED_PROTOBUF);
    cr_assert_neq(err[0], '\0');
    cr_assert_null(b.events);
    cr_assert_eq(b.n, 0);

    const char *hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, NULL};
    cr_assert_eq(decode(message("hello world", 11, hdrs), &b, err), BUS_REJECT_MALFORMED_PROTOBUF);
}

Test(bus_message, every_truncation_of_a_protobuf_batch_is_rejected)
{
    /*
     * Without the trailing counters the last event ends the message, so every
     * cut loses part of an event. (A cut between two trailing fields cannot
     * be seen: protobuf has no framing beyond each field.)
     */
    struct event_batch_meta meta = good_meta;
    meta.kernel_drops = meta.agent_drops = meta.sent_at_ns = 0;
    struct buf pb;
    buf_init(&pb);
    encode_batch(&pb, &meta, 3);
    const char *hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, NULL};
    for (size_t len = 1; len < pb.len; len++) {
        struct bus_batch b;
        char err[256];
        enum bus_reject r = decode(message(pb.data, len, hdrs), &b, err);
        /* A cut that lands between fields can still parse: then metadata or events are missing. */
        if (r == BUS_OK) {
            cr_assert_lt(b.n, 3, "truncated to %zu bytes yet all events decoded", len);
            bus_batch_free(&b);
            continue;
        }
        cr_assert(r == BUS_REJECT_MALFORMED_PROTOBUF || r == BUS_REJECT_BAD_METADATA, "len %zu: %s",
                  len, bus_reject_name(r));
    }
    /* Cut in the middle of the last event: malformed. */
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(pb.data, pb.len - 3, hdrs), &b, err),
                 BUS_REJECT_MALFORMED_PROTOBUF);
    buf_free(&pb);
}

Test(bus_message, too_many_protobuf_events)
{
    struct buf pb;
    buf_init(&pb);
    encode_batch(&pb, &good_meta, BUS_MAX_BATCH_EVENTS + 1);
    cr_assert_leq(pb.len, BUS_MAX_MESSAGE_BYTES);
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(pb.data, pb.len, NULL), &b, err), BUS_REJECT_TOO_MANY_EVENTS);
    cr_assert_null(b.events);
    /* The count stops at the limit: what follows it is never read. */
    buf_append(&pb, "\xff\xff", 2);
    cr_assert_eq(decode(message(pb.data, pb.len, NULL), &b, err), BUS_REJECT_TOO_MANY_EVENTS);
    buf_free(&pb);

    /* The limit itself is fine. */
    buf_init(&pb);
    encode_batch(&pb, &good_meta, BUS_MAX_BATCH_EVENTS);
    cr_assert_eq(decode(message(pb.data, pb.len, NULL), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, BUS_MAX_BATCH_EVENTS);
    bus_batch_free(&b);
    buf_free(&pb);
}

Test(bus_message, too_many_json_events)
{
    struct buf js;
    buf_init(&js);
    /* The count is checked before parsing, so even unparseable lines count. */
    for (int i = 0; i <= BUS_MAX_BATCH_EVENTS; i++)
        buf_puts(&js, "{}\n");
    const char *hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(js.data, js.len, hdrs), &b, err), BUS_REJECT_TOO_MANY_EVENTS);
    buf_free(&js);
}

Test(bus_message, oversized_body)
{
    size_t len = BUS_MAX_MESSAGE_BYTES + 1;
    char *big = malloc(len);
    memset(big, '{', len);
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(big, len, NULL), &b, err), BUS_REJECT_OVERSIZED);
    cr_assert(strstr(err, "bytes"), "%s", err);
    cr_assert_eq(bus_body_decode(big, len, &b, err, sizeof(err)), BUS_REJECT_OVERSIZED);
    free(big);
}

Test(bus_message, json_with_wrong_types)
{
    const char *hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
    static const char *const bodies[] = {
        "{\"id\":\"0000000000000001\",\"type\":\"exec\",\"timestamp\":\"soon\"}\n",
        "{\"id\":\"0000000000000001\",\"type\":\"exec\",\"timestamp\":1,\"pid\":\"x\"}\n",
        "{\"id\":\"0000000000000001\",\"type\":\"teleport\",\"timestamp\":1}\n",
        "{not json}\n",
        "[1,2,3]\n",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct bus_batch b;
        char err[256];
        cr_assert_eq(decode(message(bodies[i], strlen(bodies[i]), hdrs), &b, err), BUS_OK,
                     "body %zu", i);
        cr_assert_eq(b.n, 0, "body %zu", i);
        cr_assert_eq(b.meta.rejected_events, 1, "body %zu", i);
        cr_assert_eq(b.events_reason, BUS_REJECT_MALFORMED_JSON);
        cr_assert(strstr(err, "line 1"), "%s", err);
        bus_batch_free(&b);
    }
}

/* A bad line costs only itself: the lines around it are kept, and it is counted. */
Test(bus_message, one_bad_line_costs_only_itself)
{
    struct buf js;
    buf_init(&js);
    json_lines(&js, 3, NULL);
    buf_puts(&js, "{\"id\":\"zz\",\"type\":\"exec\",\"timestamp\":1}\n");
    buf_puts(&js, "\xff\xfe not json at all\n");
    json_lines(&js, 2, NULL);
    const char *hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(js.data, js.len, hdrs), &b, err), BUS_OK, "%s", err);
    cr_assert(strstr(err, "line 4"), "%s", err);
    cr_assert_eq(b.n, 5);
    cr_assert_eq(b.meta.rejected_events, 2);
    cr_assert_eq(b.events_reason, BUS_REJECT_MALFORMED_JSON);
    cr_assert_str_eq(b.meta.node, NODE);
    cr_assert_eq(b.meta.sequence, 1);
    bus_batch_free(&b);
    buf_free(&js);
}

/*
 * Events an agent could not have sent: a megabyte argv, too many arguments, a long filename,
 * a pod name of 200,000 bytes, a node with a control character. Each is dropped and counted;
 * the events around it are kept. Both encodings.
 */
static void oversized_exec(struct event *e, uint64_t id, int which)
{
    make_exec(e, id, NULL);
    switch (which) {
    case 0: /* 500,000 bytes of argv */
        free(e->u.exec.args);
        e->u.exec.args = calloc(1, 500000);
        memset(e->u.exec.args, 'a', 499999);
        e->u.exec.args_len = 500000;
        break;
    case 1: { /* 40 arguments */
        free(e->u.exec.args);
        e->u.exec.args = calloc(1, 80);
        for (int i = 0; i < 40; i++)
            e->u.exec.args[2 * i] = 'x';
        e->u.exec.args_len = 80;
        break;
    }
    case 2: /* a 300-byte filename */
        free(e->u.exec.filename);
        e->u.exec.filename = malloc(301);
        memset(e->u.exec.filename, '/', 300);
        e->u.exec.filename[300] = '\0';
        break;
    case 3: { /* a 200,000-byte pod name */
        char *pod = malloc(200001);
        memset(pod, 'p', 200000);
        pod[200000] = '\0';
        e->k8s.pod_name = intern(pod);
        free(pod);
        break;
    }
    default: /* a node with a control character */
        e->node = intern("node\x01x");
        break;
    }
}

Test(bus_message, events_over_an_agents_bounds_are_dropped_and_counted)
{
    for (int enc = 0; enc < 2; enc++) {
        struct event ev[11];
        for (int i = 0; i < 11; i++) {
            if (i % 2 == 0)
                make_exit(&ev[i], (uint64_t)i + 1, NULL);
            else
                oversized_exec(&ev[i], (uint64_t)i + 1, i / 2);
        }
        struct buf body;
        buf_init(&body);
        const char *pb_hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, NULL};
        const char *js_hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
        if (enc == 0) {
            cr_assert_eq(event_batch_encode(&good_meta, ev, 11, &body), 0);
        } else {
            for (int i = 0; i < 11; i++) {
                event_json_write(&body, &ev[i]);
                buf_putc(&body, '\n');
            }
        }
        for (int i = 0; i < 11; i++)
            event_clear(&ev[i]);
        struct bus_batch b;
        char err[256];
        cr_assert_eq(decode(message(body.data, body.len, enc ? js_hdrs : pb_hdrs), &b, err), BUS_OK,
                     "%s", err);
        cr_assert_eq(b.n, 6, "%s: the exits are kept", enc ? "json" : "protobuf");
        cr_assert_eq(b.meta.rejected_events, 5, "%s", enc ? "json" : "protobuf");
        /* The first one rejected is named: while decoding (the pod name) or after. */
        cr_assert(strstr(err, "args") || strstr(err, "name"), "%s", err);
        for (size_t i = 0; i < b.n; i++)
            cr_assert_eq(b.events[i].type, EVENT_EXIT);
        bus_batch_free(&b);
        buf_free(&body);
    }
}

/*
 * An agent watches its own node's pods: an event of a pod on another node would make the
 * aggregators name that pod's addresses for the whole cluster. It is dropped and counted;
 * the batch's other events (its own node's pod, no pod) are kept. Both encodings.
 */
Test(bus_message, events_of_a_pod_on_another_node_are_dropped_and_counted)
{
    for (int enc = 0; enc < 2; enc++) {
        struct event ev[3];
        for (int i = 0; i < 3; i++) {
            make_exec(&ev[i], (uint64_t)i + 1, NULL);
            ev[i].k8s.pod_name = intern("web-0");
            ev[i].k8s.namespace = intern("shop");
            ev[i].k8s.ips = intern("10.1.2.3");
        }
        ev[0].k8s.node_name = intern("node-2");
        ev[1].k8s.node_name = intern(NODE);
        struct buf body;
        buf_init(&body);
        const char *pb_hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, NULL};
        const char *js_hdrs[] = {JSON_HEADERS(NODE, INST, "1"), NULL};
        if (enc == 0) {
            cr_assert_eq(event_batch_encode(&good_meta, ev, 3, &body), 0);
        } else {
            for (int i = 0; i < 3; i++) {
                event_json_write(&body, &ev[i]);
                buf_putc(&body, '\n');
            }
        }
        for (int i = 0; i < 3; i++)
            event_clear(&ev[i]);
        struct bus_batch b;
        char err[256];
        cr_assert_eq(decode(message(body.data, body.len, enc ? js_hdrs : pb_hdrs), &b, err), BUS_OK,
                     "%s", err);
        cr_assert_eq(b.n, 2, "%s", enc ? "json" : "protobuf");
        cr_assert_eq(b.meta.rejected_events, 1);
        cr_assert(strstr(err, "event 0: its pod's node is not the batch's node"), "%s", err);
        cr_assert_eq(b.events[0].id, 2);
        cr_assert_eq(b.events[1].id, 3);
        bus_batch_free(&b);
        buf_free(&body);
    }
}

/* A batch whose node is no node name is refused whole: nodes are what replicas agree on. */
Test(bus_message, a_batch_node_that_is_no_node_name_is_refused)
{
    const char *bad[] = {"\xff\xfe", "n\x01x", "", " lead", "trail "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct buf js;
        buf_init(&js);
        json_lines(&js, 2, NULL);
        const char *hdrs[] = {JSON_HEADERS(bad[i], INST, "1"), NULL};
        struct bus_batch b;
        char err[256];
        enum bus_reject r = decode(message(js.data, js.len, hdrs), &b, err);
        /* An empty or space-padded header may read as no header at all: refused either way. */
        cr_assert_eq(r, BUS_REJECT_BAD_METADATA, "node \"%s\": %s", bad[i], err);
        buf_free(&js);

        struct event_batch_meta meta = good_meta;
        meta.node = bad[i];
        struct buf pb;
        buf_init(&pb);
        encode_batch(&pb, &meta, 2);
        cr_assert_eq(decode(message(pb.data, pb.len, NULL), &b, err), BUS_REJECT_BAD_METADATA,
                     "node \"%s\": %s", bad[i], err);
        buf_free(&pb);
    }
}

Test(bus_message, unknown_content_type)
{
    struct buf pb;
    buf_init(&pb);
    encode_batch(&pb, &good_meta, 1);
    const char *hdrs[] = {BUS_HDR_CONTENT_TYPE, "text/csv", NULL};
    struct bus_batch b;
    char err[256];
    cr_assert_eq(decode(message(pb.data, pb.len, hdrs), &b, err), BUS_REJECT_UNKNOWN_ENCODING);
    cr_assert(strstr(err, "text/csv"), "%s", err);
    buf_free(&pb);
}

Test(bus_message, json_metadata_headers_are_required)
{
    struct buf js;
    buf_init(&js);
    json_lines(&js, 2, NULL);
    struct {
        const char *hdrs[12];
        const char *needle;
    } cases[] = {
        {{BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_INSTANCE, INST, BUS_HDR_SEQUENCE,
          "1", NULL},
         BUS_HDR_NODE},
        {{BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, NODE, BUS_HDR_SEQUENCE, "1",
          NULL},
         BUS_HDR_INSTANCE},
        {{BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, NODE, BUS_HDR_INSTANCE, INST,
          NULL},
         BUS_HDR_SEQUENCE},
        {{JSON_HEADERS(NODE, INST, "abc"), NULL}, BUS_HDR_SEQUENCE},
        {{JSON_HEADERS(NODE, INST, "0"), NULL}, BUS_HDR_SEQUENCE},
        {{JSON_HEADERS(NODE, INST, "1"), BUS_HDR_AGENT_DROPS, "-1", NULL}, BUS_HDR_AGENT_DROPS},
        {{JSON_HEADERS(NODE, INST, "1"), BUS_HDR_KERNEL_MISSED, "x", NULL}, BUS_HDR_KERNEL_MISSED},
        {{JSON_HEADERS(NODE, INST, "1"), BUS_HDR_INSTANCE_STARTED, "1e9", NULL},
         BUS_HDR_INSTANCE_STARTED},
        {{JSON_HEADERS(NODE, INST, "1"), BUS_HDR_SENT_AT, "-5", NULL}, BUS_HDR_SENT_AT},
        {{JSON_HEADERS(NODE, INST, "1"), BUS_HDR_EVENTS, "5", NULL}, BUS_HDR_EVENTS},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bus_batch b;
        char err[256];
        cr_assert_eq(decode(message(js.data, js.len, cases[i].hdrs), &b, err),
                     BUS_REJECT_BAD_METADATA, "case %zu", i);
        cr_assert(strstr(err, cases[i].needle), "case %zu: %s", i, err);
        cr_assert_null(b.events);
    }
    buf_free(&js);
}

Test(bus_message, protobuf_metadata_is_required)
{
    struct event_batch_meta no_node = good_meta, no_inst = good_meta, no_seq = good_meta;
    no_node.node = NULL;
    no_inst.agent_instance = NULL;
    no_seq.sequence = 0;
    const struct event_batch_meta *metas[] = {&no_node, &no_inst, &no_seq};
    for (size_t i = 0; i < 3; i++) {
        struct buf pb;
        buf_init(&pb);
        encode_batch(&pb, metas[i], 2);
        /* Headers do not stand in for the batch's own fields. */
        const char *hdrs[] = {BUS_HDR_NODE, NODE, BUS_HDR_INSTANCE, INST, BUS_HDR_SEQUENCE,
                              "1",          NULL};
        struct bus_batch b;
        char err[256];
        cr_assert_eq(decode(message(pb.data, pb.len, hdrs), &b, err), BUS_REJECT_BAD_METADATA,
                     "case %zu", i);
        cr_assert_null(b.events);
        buf_free(&pb);
    }
}

Test(bus_message, empty_body)
{
    struct bus_batch b;
    char err[256];
    /* An empty protobuf is an empty batch with no metadata. */
    cr_assert_eq(decode(message("", 0, NULL), &b, err), BUS_REJECT_BAD_METADATA);
    cr_assert_eq(bus_body_decode("", 0, &b, err, sizeof(err)), BUS_OK);
    cr_assert_eq(b.n, 0);
    bus_batch_free(&b);
}

Test(bus_message, body_decode_without_headers)
{
    struct buf pb, js;
    buf_init(&pb);
    buf_init(&js);
    encode_batch(&pb, &good_meta, 5);
    json_lines(&js, 2, "n1");
    struct bus_batch b;
    char err[256];

    cr_assert_eq(bus_body_decode(pb.data, pb.len, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 5);
    cr_assert_str_eq(b.meta.node, NODE);
    cr_assert_str_eq(b.events[4].node, NODE);
    bus_batch_free(&b);

    /* JSON lines need no metadata here; CRLF and blank lines are fine. */
    buf_puts(&js, "\r\n\n");
    cr_assert_eq(bus_body_decode(js.data, js.len, &b, err, sizeof(err)), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 2);
    cr_assert_str_eq(b.events[1].node, "n1");
    cr_assert_null(b.meta.node);
    bus_batch_free(&b);

    cr_assert_eq(bus_body_decode("{\"id\":1}", 8, &b, err, sizeof(err)), BUS_OK);
    cr_assert_eq(b.n, 0);
    cr_assert_eq(b.meta.rejected_events, 1);
    cr_assert(strstr(err, "line 1"), "%s", err);
    cr_assert_eq(bus_body_decode("\x0a\x05ab", 4, &b, err, sizeof(err)),
                 BUS_REJECT_MALFORMED_PROTOBUF);
    buf_free(&pb);
    buf_free(&js);
}

/* Every single-byte corruption of a valid batch decodes or is rejected; none crashes. */
Test(bus_message, corrupted_bytes_never_crash)
{
    struct buf pb;
    buf_init(&pb);
    encode_batch(&pb, &good_meta, 4);
    char *copy = malloc(pb.len);
    for (size_t i = 0; i < pb.len; i++) {
        static const unsigned char values[] = {0x00, 0xff, 0x80, 0x7f};
        for (size_t v = 0; v < sizeof(values); v++) {
            memcpy(copy, pb.data, pb.len);
            copy[i] = (char)values[v];
            struct bus_batch b;
            char err[256];
            enum bus_reject r = bus_body_decode(copy, pb.len, &b, err, sizeof(err));
            cr_assert(r == BUS_OK || r == BUS_REJECT_MALFORMED_PROTOBUF ||
                          r == BUS_REJECT_TOO_MANY_EVENTS,
                      "byte %zu: %s", i, bus_reject_name(r));
            bus_batch_free(&b);
        }
    }
    free(copy);
    buf_free(&pb);
}

/* The deletions an agent sends: in either encoding, with or without events; a bad one refuses
 * the message. */
Test(bus_message, pods_gone_header_in_both_encodings)
{
    const char *gone = "{\"pods\":[{\"host_network\":false,\"seen_ns\":5,\"gone_ns\":5,"
                       "\"node\":\"" NODE "\",\"namespace\":\"shop\",\"pod\":\"web-1\","
                       "\"uid\":\"u-1\",\"ips\":[\"10.1.0.5\",\"fd00::5\"]}]}";
    struct buf body;
    struct bus_batch b;
    char err[256];

    buf_init(&body);
    encode_batch(&body, &good_meta, 0);
    const char *pb[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_PODS_GONE, gone,
                        NULL};
    cr_assert_eq(decode(message(body.data, body.len, pb), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 0, "a batch of deletions alone");
    cr_assert_eq(b.n_gone, 1);
    cr_assert_str_eq(b.gone[0].pod, "web-1");
    cr_assert_str_eq(b.gone[0].uid, "u-1");
    cr_assert_eq(b.gone[0].gone_ns, 5);
    cr_assert_eq(b.gone[0].n_ips, 2);
    cr_assert_eq(b.gone[0].family[1], EVENT_FAMILY_IPV6);
    bus_batch_free(&b);
    cr_assert_eq(b.n_gone, 0);

    buf_reset(&body);
    json_lines(&body, 2, NULL);
    const char *js[] = {
        JSON_HEADERS(NODE, INST, "3"), BUS_HDR_EVENTS, "2", BUS_HDR_PODS_GONE, gone, NULL};
    cr_assert_eq(decode(message(body.data, body.len, js), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 2);
    cr_assert_eq(b.n_gone, 1);
    bus_batch_free(&b);
    const char *js_empty[] = {
        JSON_HEADERS(NODE, INST, "4"), BUS_HDR_EVENTS, "0", BUS_HDR_PODS_GONE, gone, NULL};
    cr_assert_eq(decode(message("", 0, js_empty), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 0);
    cr_assert_eq(b.n_gone, 1);
    bus_batch_free(&b);

    /* Crafted: refused as a whole, with the header named. */
    /* Also: another node's pod (an agent reports its own), a deletion in the far future. */
    static const char *bad[] = {
        "not json", "{\"pods\":[1]}",
        "{\"pods\":[{\"node\":\"" NODE "\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"pods\":[{\"node\":\"other-node\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"gone_ns\":1,\"ips\":[\"10.0.0.1\"]}]}",
        "{\"pods\":[{\"node\":\"" NODE "\",\"namespace\":\"n\",\"pod\":\"p\","
        "\"seen_ns\":1,\"gone_ns\":9000000000000000000,\"ips\":[\"10.0.0.1\"]}]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf_reset(&body);
        encode_batch(&body, &good_meta, 1);
        const char *h[] = {BUS_HDR_PODS_GONE, bad[i], NULL};
        cr_assert_eq(decode(message(body.data, body.len, h), &b, err), BUS_REJECT_BAD_METADATA,
                     "accepted %s", bad[i]);
        cr_assert(strstr(err, BUS_HDR_PODS_GONE), "%s", err);
        cr_assert_eq(b.n, 0);
        cr_assert_eq(b.n_gone, 0);
        buf_reset(&body);
        json_lines(&body, 1, NULL);
        const char *hj[] = {JSON_HEADERS(NODE, INST, "5"), BUS_HDR_PODS_GONE, bad[i], NULL};
        cr_assert_eq(decode(message(body.data, body.len, hj), &b, err), BUS_REJECT_BAD_METADATA,
                     "accepted %s", bad[i]);
    }
    buf_free(&body);
}

/* The node's pod list an agent sends once: in either encoding, with or without events; a bad
 * one refuses the message. */
Test(bus_message, pods_present_header_in_both_encodings)
{
    const char *list = "{\"at_ns\":7,\"uids\":[\"u-1\",\"u-2\"]}";
    struct buf body;
    struct bus_batch b;
    char err[256];

    buf_init(&body);
    encode_batch(&body, &good_meta, 0);
    const char *pb[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_PODS_PRESENT, list,
                        NULL};
    cr_assert_eq(decode(message(body.data, body.len, pb), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 0, "a batch with the list alone");
    cr_assert_eq(b.n_present, 2);
    cr_assert_eq(b.present_at_ns, 7);
    cr_assert_eq(b.present[0], intern("u-1"), "interned");
    cr_assert_eq(b.present[1], intern("u-2"));
    bus_batch_free(&b);
    cr_assert_eq(b.present_at_ns, 0);

    buf_reset(&body);
    json_lines(&body, 2, NULL);
    const char *js[] = {JSON_HEADERS(NODE, INST, "3"), BUS_HDR_EVENTS, "2",
                        BUS_HDR_PODS_PRESENT,          list,           NULL};
    cr_assert_eq(decode(message(body.data, body.len, js), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 2);
    cr_assert_eq(b.n_present, 2);
    bus_batch_free(&b);
    const char *none[] = {JSON_HEADERS(NODE, INST, "4"),
                          BUS_HDR_EVENTS,
                          "0",
                          BUS_HDR_PODS_PRESENT,
                          "{\"at_ns\":7,\"uids\":[]}",
                          NULL};
    cr_assert_eq(decode(message("", 0, none), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n_present, 0, "a node without pods");
    cr_assert_eq(b.present_at_ns, 7);
    bus_batch_free(&b);

    static const char *bad[] = {"not json",
                                "{\"uids\":[\"u\"]}",
                                "{\"at_ns\":0,\"uids\":[]}",
                                "{\"at_ns\":-1,\"uids\":[]}",
                                "{\"at_ns\":7,\"uids\":[1]}",
                                "{\"at_ns\":7,\"uids\":[\"\"]}",
                                "{\"at_ns\":7,\"uids\":\"u\"}",
                                "{\"at_ns\":9000000000000000000,\"uids\":[]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf_reset(&body);
        encode_batch(&body, &good_meta, 1);
        const char *h[] = {BUS_HDR_PODS_PRESENT, bad[i], NULL};
        cr_assert_eq(decode(message(body.data, body.len, h), &b, err), BUS_REJECT_BAD_METADATA,
                     "accepted %s", bad[i]);
        cr_assert(strstr(err, BUS_HDR_PODS_PRESENT), "%s", err);
        cr_assert_eq(b.n, 0);
        cr_assert_null(b.present);
        buf_reset(&body);
        json_lines(&body, 1, NULL);
        const char *hj[] = {JSON_HEADERS(NODE, INST, "5"), BUS_HDR_PODS_PRESENT, bad[i], NULL};
        cr_assert_eq(decode(message(body.data, body.len, hj), &b, err), BUS_REJECT_BAD_METADATA,
                     "accepted %s", bad[i]);
    }
    /* More UIDs than a list may carry. */
    struct buf big;
    buf_init(&big);
    buf_puts(&big, "{\"at_ns\":7,\"uids\":[");
    for (int i = 0; i <= PEERS_PRESENT_MAX_PODS; i++)
        buf_printf(&big, "%s\"u%d\"", i ? "," : "", i);
    buf_puts(&big, "]}");
    buf_putc(&big, '\0');
    buf_reset(&body);
    encode_batch(&body, &good_meta, 1);
    const char *h[] = {BUS_HDR_PODS_PRESENT, big.data, NULL};
    cr_assert_eq(decode(message(body.data, body.len, h), &b, err), BUS_REJECT_BAD_METADATA);
    cr_assert(strstr(err, "at most 1024"), "%s", err);
    buf_free(&big);
    buf_free(&body);
}

/* An event stamped more than BUS_MAX_AHEAD_NS ahead of this clock costs only itself. */
Test(bus_message, events_from_the_far_future_are_dropped_and_counted)
{
    struct event ev[3];
    struct buf body;
    struct bus_batch b;
    char err[256];
    uint64_t now = (uint64_t)time(NULL) * 1000000000ull;

    make_exec(&ev[0], 1, NULL);
    make_exit(&ev[1], 2, NULL);
    make_exit(&ev[2], 3, NULL);
    ev[0].timestamp_ns = now + BUS_MAX_AHEAD_NS / 2; /* a node's clock a little ahead */
    ev[1].timestamp_ns = now + BUS_MAX_AHEAD_NS + 60000000000ull;
    ev[2].timestamp_ns = UINT64_MAX;
    buf_init(&body);
    cr_assert_eq(event_batch_encode(&good_meta, ev, 3, &body), 0);
    cr_assert_eq(decode(message(body.data, body.len, NULL), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 1);
    cr_assert_eq(b.events[0].id, 1);
    cr_assert_eq(b.meta.rejected_events, 2);
    cr_assert(strstr(err, "ahead"), "%s", err);
    bus_batch_free(&b);

    buf_reset(&body);
    for (int i = 0; i < 3; i++) {
        event_json_write(&body, &ev[i]);
        buf_putc(&body, '\n');
        event_clear(&ev[i]);
    }
    const char *js[] = {JSON_HEADERS(NODE, INST, "9"), NULL};
    cr_assert_eq(decode(message(body.data, body.len, js), &b, err), BUS_OK, "%s", err);
    cr_assert_eq(b.n, 1);
    cr_assert_eq(b.meta.rejected_events, 2);
    bus_batch_free(&b);
    buf_free(&body);
}

/* Tests for pkg/event_pb: batch round-trips, wire format, validation of hostile input. */
#include "event_json.h"
#include "event_pb.h"
#include "event_pb_internal.h"
#include "intern.h"
#include "pb_craft.h"
#include "pb_wire.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define NODE "worker-3.example.com"

static void base(struct event *e, unsigned type, uint64_t id, const char *comm)
{
    memset(e, 0, sizeof(*e));
    e->type = (uint8_t)type;
    e->id = id;
    e->timestamp_ns = 1795698266123456789ull + id;
    e->pid = 100 + (uint32_t)id;
    e->ppid = 1;
    e->uid = 1000;
    e->cgroup_id = 5000 + id;
    strncpy(e->command, comm, sizeof(e->command) - 1);
    e->node = intern(NODE);
}

static void addrs(struct event *e, unsigned family, const char *src, uint16_t sport,
                  const char *dst, uint16_t dport)
{
    int af = family == EVENT_FAMILY_IPV4 ? AF_INET : AF_INET6;
    e->family = (uint8_t)family;
    cr_assert_eq(inet_pton(af, src, e->saddr), 1);
    cr_assert_eq(inet_pton(af, dst, e->daddr), 1);
    e->sport = sport;
    e->dport = dport;
}

/* One event of every type and shape; returns the count. */
static size_t make_events(struct event *ev)
{
    size_t n = 0;
    struct event *e;

    e = &ev[n++];
    base(e, EVENT_CONNECTION, 1, "curl");
    addrs(e, EVENT_FAMILY_IPV4, "10.0.0.1", 54321, "93.184.216.34", 443);
    e->protocol = IPPROTO_TCP;
    e->status = EVENT_STATUS_FAILED;
    e->u.conn.latency_ns = 1500000;
    e->u.conn.error = intern("refused");

    e = &ev[n++];
    base(e, EVENT_CONNECTION, 2, "dig");
    addrs(e, EVENT_FAMILY_IPV6, "2001:db8::5", 40000, "fe80::1:2", 53);
    e->protocol = IPPROTO_UDP;
    e->status = EVENT_STATUS_ATTEMPTED;
    e->k8s.node_name = intern(NODE);
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.namespace = intern("shop");
    e->k8s.container_id = intern("0123abcd");
    e->k8s.pod_uid = intern("9b2c-11");
    e->k8s.workload = intern("web");
    e->k8s.workload_kind = intern("Deployment");

    e = &ev[n++];
    base(e, EVENT_ACCEPT, 3, "nginx");
    addrs(e, EVENT_FAMILY_IPV6, "::1", 59000, "::ffff:10.1.2.3", 8080);
    e->protocol = IPPROTO_TCP;
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.namespace = intern("shop");
    e->peer.pod = intern("client-5c7b");
    e->peer.namespace = intern("shop");
    e->peer.workload = intern("client");
    e->peer.workload_kind = intern("Deployment");
    e->peer.node = intern("worker-1");

    e = &ev[n++];
    base(e, EVENT_CLOSE, 9, "nginx");
    addrs(e, EVENT_FAMILY_IPV4, "10.1.0.7", 41000, "10.1.0.5", 8080);
    e->protocol = IPPROTO_TCP;
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.workload = intern("web");
    e->k8s.workload_kind = intern("Deployment");
    e->peer.pod = intern("client-5c7b");
    e->peer.service = intern("web.shop.svc");
    e->peer.dns = intern("web.shop.svc.cluster.local");
    e->u.close.role = EVENT_ROLE_SERVER;
    e->u.close.reset = EVENT_RESET_RECEIVED;
    e->u.close.retransmits = 3;
    e->u.close.srtt_us = 250;
    e->u.close.duration_ns = 4000000000ull;
    e->u.close.bytes_sent = 1u << 20;
    e->u.close.bytes_received = 512;

    e = &ev[n++];
    base(e, EVENT_PACKET_DROP, 4, "swapper/0");
    addrs(e, EVENT_FAMILY_IPV4, "127.0.0.1", 33000, "127.0.0.1", 9);
    e->protocol = IPPROTO_UDP;
    e->u.drop.reason = intern("NO_SOCKET");
    e->u.drop.reason_code = 3;
    e->u.drop.location = intern("__udp4_lib_rcv+0x5a1");
    e->u.drop.suppressed = 12;

    e = &ev[n++];
    base(e, EVENT_PACKET_DROP, 5, "ksoftirqd/1");
    e->node = intern("another-node"); /* not the batch's node: must survive */
    e->u.drop.reason_code = 2;

    e = &ev[n++];
    base(e, EVENT_EXEC, 6, "bash");
    e->u.exec.filename = strdup("/usr/bin/env");
    static const char args[] = "env\0-i\0\0A=\"b\"\0\xff\xfe";
    e->u.exec.args = malloc(sizeof(args));
    memcpy(e->u.exec.args, args, sizeof(args));
    e->u.exec.args_len = sizeof(args);
    e->u.exec.args_truncated = 1;
    e->u.exec.filename_truncated = 1;
    e->u.exec.has_euid = 1; /* a set-user-ID root program: 0 is sent, not left out */

    e = &ev[n++];
    base(e, EVENT_EXEC, 7, "init"); /* from an agent that did not report the euid */

    e = &ev[n++];
    base(e, EVENT_EXIT, 8, "sleep");
    e->u.exit.exit_code = -2;
    e->u.exit.signal = 15;
    e->u.exit.duration_ns = 987654321;

    e = &ev[n++];
    base(e, EVENT_EXIT, 8, "crash");
    e->u.exit.signal = 11;
    e->u.exit.core_dumped = 1;
    e->u.exit.duration_ns = 1234;

    e = &ev[n++];
    base(e, EVENT_DNS, 10, "curl");
    addrs(e, EVENT_FAMILY_IPV4, "10.1.0.7", 53001, "10.96.0.10", 53);
    e->protocol = IPPROTO_UDP;
    e->status = EVENT_STATUS_ANSWERED;
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.namespace = intern("shop");
    e->u.dns.query = strdup("api.example.com");
    static const char answers[] = "lb-7.cdn.example.net\0"
                                  "93.184.216.34\0"
                                  "2001:db8::7";
    e->u.dns.answers = malloc(sizeof(answers));
    memcpy(e->u.dns.answers, answers, sizeof(answers));
    e->u.dns.answers_len = sizeof(answers);
    e->u.dns.query_type = 1;
    e->u.dns.rcode = 0;
    e->u.dns.transaction_id = 0xbeef;
    e->u.dns.latency_ns = 734000;
    e->u.dns.answers_truncated = 1;

    e = &ev[n++];
    base(e, EVENT_DNS, 12, "dig");
    addrs(e, EVENT_FAMILY_IPV4, "10.1.0.7", 53002, "10.96.0.10", 53);
    e->protocol = IPPROTO_UDP;
    e->status = EVENT_STATUS_ANSWERED;
    e->u.dns.query = strdup("big.example.com");
    e->u.dns.query_type = 16;
    e->u.dns.transaction_id = 0xcafe;
    e->u.dns.latency_ns = 512000;
    e->u.dns.tc = 1;

    e = &ev[n++];
    base(e, EVENT_DNS, 11, "getent");
    addrs(e, EVENT_FAMILY_IPV6, "::1", 41000, "::1", 5353);
    e->protocol = IPPROTO_TCP;
    e->status = EVENT_STATUS_TIMEOUT;
    e->u.dns.query = strdup("weird\\.label\\255.test");
    e->u.dns.query_type = 65280;
    e->u.dns.rcode = 0;
    e->u.dns.transaction_id = 1;

    /* Refused at once: the error and the time to it. */
    e = &ev[n++];
    base(e, EVENT_DNS, 12, "isc-net-0000");
    addrs(e, EVENT_FAMILY_IPV4, "127.0.0.1", 42000, "127.0.0.1", 21053);
    e->protocol = IPPROTO_UDP;
    e->status = EVENT_STATUS_FAILED;
    e->u.dns.query = strdup("down.test");
    e->u.dns.query_type = 1;
    e->u.dns.transaction_id = 2;
    e->u.dns.latency_ns = 40000;
    e->u.dns.error = intern("refused");
    e->u.dns.opcode = 4; /* NOTIFY */
    return n;
}

static void assert_same_event(const struct event *a, const struct event *b)
{
    struct buf ja, jb;
    buf_init(&ja);
    buf_init(&jb);
    event_json_write(&ja, a);
    event_json_write(&jb, b);
    cr_assert_str_eq(jb.data, ja.data);
    buf_free(&ja);
    buf_free(&jb);
    /* Fields the JSON leaves out for some types. */
    cr_assert_eq(b->cgroup_id, a->cgroup_id);
    cr_assert_eq(b->sport, a->sport);
    cr_assert_eq(b->dport, a->dport);
    cr_assert_eq(b->node, a->node, "node is interned to the same pointer");
    cr_assert_eq(b->k8s.pod_name, a->k8s.pod_name);
    if (a->type == EVENT_EXEC) {
        cr_assert_eq(b->u.exec.args_len, a->u.exec.args_len);
        if (a->u.exec.args_len)
            cr_assert_eq(memcmp(b->u.exec.args, a->u.exec.args, a->u.exec.args_len), 0);
        cr_assert_eq(b->u.exec.args_truncated, a->u.exec.args_truncated);
        cr_assert_eq(b->u.exec.filename_truncated, a->u.exec.filename_truncated);
        cr_assert_eq(b->u.exec.has_euid, a->u.exec.has_euid);
        cr_assert_eq(b->u.exec.euid, a->u.exec.euid);
    }
    if (a->type == EVENT_DNS) {
        cr_assert_eq(b->status, a->status);
        cr_assert_eq(b->u.dns.answers_len, a->u.dns.answers_len);
        if (a->u.dns.answers_len)
            cr_assert_eq(memcmp(b->u.dns.answers, a->u.dns.answers, a->u.dns.answers_len), 0);
    }
}

static struct event_batch_meta test_meta(void)
{
    struct event_batch_meta m = {
        .node = intern(NODE),
        .agent_instance = "a1b2c3d4",
        .sequence = 42,
        .kernel_drops = 3,
        .agent_drops = 4,
        .kernel_missed = 5,
        .sent_at_ns = 1795698267000000000ull,
        .instance_started_ns = 1795698200000000000ull,
        .pod_name = "ebpf-monitor-x7k2p",
        .pod_namespace = "ebpf-system",
    };
    return m;
}

Test(event_pb, batch_round_trip_all_types)
{
    struct event ev[16];
    size_t n = make_events(ev);
    struct event_batch_meta meta = test_meta(), back_meta;
    struct buf b;
    struct event *back;
    size_t back_n;
    char err[256] = "";

    buf_init(&b);
    cr_assert_eq(event_batch_encode(&meta, ev, n, &b), 0);
    cr_assert_gt(b.len, 0);
    int rc = event_batch_decode((const uint8_t *)b.data, b.len, &back_meta, &back, &back_n, err,
                                sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(back_n, n);
    for (size_t i = 0; i < n; i++)
        assert_same_event(&ev[i], &back[i]);

    cr_assert_eq(back_meta.node, intern(NODE));
    cr_assert_eq(back_meta.agent_instance, intern("a1b2c3d4"));
    cr_assert_eq(back_meta.sequence, 42);
    cr_assert_eq(back_meta.kernel_drops, 3);
    cr_assert_eq(back_meta.agent_drops, 4);
    cr_assert_eq(back_meta.kernel_missed, 5);
    cr_assert_eq(back_meta.sent_at_ns, 1795698267000000000ull);
    cr_assert_eq(back_meta.instance_started_ns, 1795698200000000000ull);
    cr_assert_eq(back_meta.pod_name, intern("ebpf-monitor-x7k2p"));
    cr_assert_eq(back_meta.pod_namespace, intern("ebpf-system"));

    for (size_t i = 0; i < back_n; i++)
        event_clear(&back[i]);
    free(back);
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    buf_free(&b);
}

Test(event_pb, events_carry_no_copy_of_the_batch_node)
{
    struct event ev[16];
    size_t n = make_events(ev);
    struct event_batch_meta meta = test_meta();
    struct buf with, without;
    buf_init(&with);
    buf_init(&without);
    cr_assert_eq(event_batch_encode(&meta, ev, n, &with), 0);
    meta.node = "elsewhere";
    cr_assert_eq(event_batch_encode(&meta, ev, n, &without), 0);
    /* Eight of the nine events repeat NODE unless the batch carries it. */
    cr_assert_geq(without.len, with.len + 8 * strlen(NODE));
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    buf_free(&with);
    buf_free(&without);
}

Test(event_pb, empty_batch_and_absent_meta)
{
    struct event_batch_meta meta = {.sequence = 1}, back_meta;
    struct buf b;
    struct event *back = (struct event *)1;
    size_t n = 99;
    buf_init(&b);
    cr_assert_eq(event_batch_encode(&meta, NULL, 0, &b), 0);
    cr_assert_eq(event_batch_decode((const uint8_t *)b.data, b.len, &back_meta, &back, &n, NULL, 0),
                 0);
    cr_assert_eq(n, 0);
    cr_assert_null(back);
    cr_assert_null(back_meta.node);
    cr_assert_null(back_meta.agent_instance);
    cr_assert_null(back_meta.pod_name);
    cr_assert_eq(back_meta.sequence, 1);
    buf_free(&b);
}

/* Pins the field numbers of events.proto, which other decoders depend on. */
Test(event_pb, wire_format_is_stable)
{
    struct event_batch_meta meta = {.node = "n", .sequence = 1};
    struct event e;
    struct buf b;
    memset(&e, 0, sizeof(e));
    e.type = EVENT_EXIT;
    e.id = 1;
    e.timestamp_ns = 2;
    e.node = "n";
    buf_init(&b);
    buf_puts(&b, "XY"); /* encode appends */
    cr_assert_eq(event_batch_encode(&meta, &e, 1, &b), 0);
    static const uint8_t want[] = {
        'X',  'Y',  0x0a, 0x01, 'n',             /* 1: node */
        0x18, 0x01,                              /* 3: sequence */
        0x22, 0x10,                              /* 4: events, 16 bytes */
        0x09, 1,    0,    0,    0,   0, 0, 0, 0, /* 1: id (fixed64) */
        0x10, 0x05,                              /* 2: type = EXIT */
        0x18, 0x02,                              /* 3: timestamp_ns */
        0xba, 0x01, 0x00,                        /* 23: exit details, empty */
    };
    cr_assert_eq(b.len, sizeof(want));
    cr_assert_eq(memcmp(b.data, want, sizeof(want)), 0);
    buf_free(&b);
}

Test(event_pb, single_event_helpers)
{
    struct event ev[16], back;
    size_t n = make_events(ev);
    char err[128];
    for (size_t i = 0; i < n; i++) {
        Ebpfmonitor__Event msg;
        struct event_pb_scratch scratch;
        cr_assert_eq(event_pb_from_event(&ev[i], NULL, &msg, &scratch), 0);
        size_t len = ebpfmonitor__event__get_packed_size(&msg);
        uint8_t *wire = malloc(len);
        ebpfmonitor__event__pack(&msg, wire);
        event_pb_scratch_release(&scratch);

        Ebpfmonitor__Event *un = ebpfmonitor__event__unpack(NULL, len, wire);
        cr_assert_not_null(un);
        cr_assert_eq(event_pb_to_event(un, NULL, &back, err, sizeof(err)), 0, "%s", err);
        assert_same_event(&ev[i], &back);
        event_clear(&back);
        ebpfmonitor__event__free_unpacked(un, NULL);
        free(wire);
        event_clear(&ev[i]);
    }
    struct event bad;
    Ebpfmonitor__Event msg;
    struct event_pb_scratch scratch;
    memset(&bad, 0, sizeof(bad));
    cr_assert_eq(event_pb_from_event(&bad, NULL, &msg, &scratch), -EINVAL);
    struct buf b;
    buf_init(&b);
    struct event_batch_meta meta = {0};
    cr_assert_eq(event_batch_encode(&meta, &bad, 1, &b), -EINVAL);
    buf_free(&b);
}

static void free_events(struct event *ev, size_t n);

/*
 * Packs a batch holding a valid event and one hand-made event, and expects
 * decode to skip the bad one alone: counted, named in err, the other kept.
 */
static void expect_rejected(const Ebpfmonitor__Event *ev, const char *what)
{
    Ebpfmonitor__EventBatch batch = EBPFMONITOR__EVENT_BATCH__INIT;
    Ebpfmonitor__Event *ptrs[2];
    Ebpfmonitor__Event good = EBPFMONITOR__EVENT__INIT;
    good.type = EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXIT;
    ptrs[0] = &good; /* a valid event first: its resources must be released too */
    ptrs[1] = (Ebpfmonitor__Event *)ev;
    batch.node = "n";
    batch.n_events = 2;
    batch.events = ptrs;
    size_t len = ebpfmonitor__event_batch__get_packed_size(&batch);
    uint8_t *wire = malloc(len);
    ebpfmonitor__event_batch__pack(&batch, wire);

    struct event_batch_meta meta;
    struct event *out = (struct event *)1;
    size_t n = 99;
    char err[256] = "";
    int rc = event_batch_decode(wire, len, &meta, &out, &n, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s: rc %d", what, rc);
    cr_assert(strstr(err, "event 1: ") && strstr(err, what), "error \"%s\" should name %s", err,
              what);
    cr_assert_eq(meta.rejected_events, 1, "%s", what);
    cr_assert_eq(n, 1, "%s: the valid event must survive", what);
    cr_assert_eq(out[0].type, EVENT_EXIT);
    cr_assert_str_eq(meta.node, "n");
    free_events(out, n);

    /* The reference decoder alone agrees. */
    struct event *g;
    size_t ng;
    err[0] = '\0';
    cr_assert_eq(event_batch_decode_generic(wire, len, &meta, &g, &ng, err, sizeof(err)), 0);
    cr_assert_eq(ng, 1);
    cr_assert_eq(meta.rejected_events, 1);
    cr_assert(strstr(err, what), "%s", err);
    free_events(g, ng);
    free(wire);
}

Test(event_pb, decode_rejects_invalid_events)
{
    Ebpfmonitor__Event e;
    Ebpfmonitor__ConnectionDetails conn = EBPFMONITOR__CONNECTION_DETAILS__INIT;
    Ebpfmonitor__ExecDetails exec = EBPFMONITOR__EXEC_DETAILS__INIT;
    uint8_t addr[17] = {0};
    ProtobufCBinaryData args[2] = {{2, (uint8_t *)"ok"}, {3, (uint8_t *)"a\0b"}};

#define RESET(t)                                                                                   \
    do {                                                                                           \
        ebpfmonitor__event__init(&e);                                                              \
        e.type = EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_##t;                                          \
    } while (0)

    RESET(UNSPECIFIED);
    expect_rejected(&e, "type");
    RESET(CONNECTION);
    e.type = 9;
    expect_rejected(&e, "type");

    RESET(CONNECTION);
    e.source_addr = (ProtobufCBinaryData){5, addr};
    e.dest_addr = (ProtobufCBinaryData){5, addr};
    expect_rejected(&e, "source_addr");
    RESET(ACCEPT);
    e.source_addr = (ProtobufCBinaryData){4, addr};
    e.dest_addr = (ProtobufCBinaryData){16, addr};
    expect_rejected(&e, "dest_addr");
    RESET(ACCEPT);
    e.dest_addr = (ProtobufCBinaryData){17, addr};
    expect_rejected(&e, "dest_addr");

    RESET(CONNECTION);
    e.source_port = 70000;
    expect_rejected(&e, "source_port");
    RESET(PACKET_DROP);
    e.protocol = 300;
    expect_rejected(&e, "protocol");
    RESET(EXIT);
    e.command = (ProtobufCBinaryData){16, (uint8_t *)"0123456789abcdef"};
    expect_rejected(&e, "command");
    RESET(EXIT);
    e.command = (ProtobufCBinaryData){3, (uint8_t *)"a\0b"};
    expect_rejected(&e, "command");

    RESET(ACCEPT);
    e.details_case = EBPFMONITOR__EVENT__DETAILS_EXEC;
    e.exec = &exec;
    expect_rejected(&e, "details");
    RESET(CONNECTION);
    conn.status = 9;
    e.details_case = EBPFMONITOR__EVENT__DETAILS_CONNECTION;
    e.connection = &conn;
    expect_rejected(&e, "connection.status");

    Ebpfmonitor__CloseDetails close = EBPFMONITOR__CLOSE_DETAILS__INIT;
    RESET(EXIT);
    e.details_case = EBPFMONITOR__EVENT__DETAILS_CLOSE;
    e.close = &close;
    expect_rejected(&e, "exit event carries close details");
    RESET(CLOSE);
    e.details_case = EBPFMONITOR__EVENT__DETAILS_CONNECTION;
    e.connection = &conn;
    expect_rejected(&e, "close event carries connection details");
    RESET(CLOSE);
    close.role = 3;
    e.details_case = EBPFMONITOR__EVENT__DETAILS_CLOSE;
    e.close = &close;
    expect_rejected(&e, "close.role");
    RESET(CLOSE);
    close.role = EBPFMONITOR__CLOSE_ROLE__CLOSE_ROLE_CLIENT;
    close.reset = -1;
    e.details_case = EBPFMONITOR__EVENT__DETAILS_CLOSE;
    e.close = &close;
    expect_rejected(&e, "close.reset");

    RESET(EXEC);
    exec.filename = (ProtobufCBinaryData){3, (uint8_t *)"/\0x"};
    e.details_case = EBPFMONITOR__EVENT__DETAILS_EXEC;
    e.exec = &exec;
    expect_rejected(&e, "exec.filename");
    RESET(EXEC);
    exec.filename = (ProtobufCBinaryData){4, (uint8_t *)"/bin"};
    exec.n_args = 2;
    exec.args = args;
    e.details_case = EBPFMONITOR__EVENT__DETAILS_EXEC;
    e.exec = &exec;
    expect_rejected(&e, "exec.args[1]");
#undef RESET
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int decode_and_release(const uint8_t *data, size_t len)
{
    struct event_batch_meta meta;
    struct event *ev;
    size_t n;
    char err[256] = "";
    int rc = event_batch_decode(data, len, &meta, &ev, &n, err, sizeof(err));
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            event_clear(&ev[i]);
        free(ev);
    } else {
        cr_assert_eq(rc, -EINVAL);
        cr_assert_neq(err[0], '\0', "an error always comes with a message");
    }
    return rc;
}

Test(event_pb, truncated_input_is_an_error_not_a_crash)
{
    struct event ev[16];
    size_t n = make_events(ev);
    struct event_batch_meta meta = test_meta();
    struct buf b;
    buf_init(&b);
    cr_assert_eq(event_batch_encode(&meta, ev, n, &b), 0);
    size_t failures = 0;
    for (size_t len = 0; len < b.len; len++) {
        /* A private copy of exactly len bytes, so reading past it is caught by tools. */
        uint8_t *cut = malloc(len ? len : 1);
        memcpy(cut, b.data, len);
        failures += decode_and_release(cut, len) != 0;
        free(cut);
    }
    /* Most cuts land inside a field; some fall on a field boundary and are valid prefixes. */
    cr_assert_gt(failures, b.len / 2);
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    buf_free(&b);
}

Test(event_pb, garbage_and_mutations_are_errors_not_crashes)
{
    uint8_t data[512];
    for (int round = 0; round < 2000; round++) {
        size_t len = rng() % sizeof(data);
        for (size_t i = 0; i < len; i++)
            data[i] = (uint8_t)rng();
        decode_and_release(data, len);
    }
    cr_assert_eq(decode_and_release((const uint8_t *)"\xff\xff\xff\xff\xff\xff", 6), -EINVAL);

    /* Flip bytes of a valid batch: every outcome must be a clean success or a clean error. */
    struct event ev[16];
    size_t n = make_events(ev);
    struct event_batch_meta meta = test_meta();
    struct buf b;
    buf_init(&b);
    cr_assert_eq(event_batch_encode(&meta, ev, n, &b), 0);
    uint8_t *copy = malloc(b.len);
    for (int round = 0; round < 3000; round++) {
        memcpy(copy, b.data, b.len);
        for (int k = 0; k < 3; k++)
            copy[rng() % b.len] = (uint8_t)rng();
        decode_and_release(copy, b.len);
    }
    free(copy);
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    buf_free(&b);
}

/* ---- the hand-written encoder against protobuf-c, and both decoders ---- */

static const char *pick(const char *const *set, size_t n)
{
    size_t k = rng() % (n + 1);
    return k == n ? NULL : intern(set[k]);
}

/* A random event of any type, with every field at zero, small or large values. */
static void random_event(struct event *e)
{
    static const char *const nodes[] = {NODE, "other-node", "n"};
    static const char *const pods[] = {"web-7d9f8b6c5d-x01", "db-0", "a"};
    static const char *const nss[] = {"default", "kube-system"};
    static const char *const cids[] = {
        "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "docker://ff00"};
    static const char *const uids[] = {"6f1c2a3b-0001-4c5d-8e9f-000000001eef", "u2"};
    static const char *const workloads[] = {"web", "db", "coredns"};
    static const char *const kinds[] = {"Deployment", "StatefulSet", "Pod"};
    static const char *const apps[] = {"web", "postgres"};
    /* As event_pb_ips_to_text() writes them back: inet_ntop's canonical forms. */
    static const char *const ips[] = {"10.1.0.5", "10.1.0.5,fd00::5", "fd00::5,10.1.0.5",
                                      "2001:db8::1:0:0:1"};
    static const char *const errors[] = {"refused", "timeout", "EACCES"};
    uint64_t r = rng();
    memset(e, 0, sizeof(*e));
    e->type = (uint8_t)(1 + r % (EVENT_TYPE_COUNT - 1));
    /* Magnitudes from 0 to 2^64-1, so every varint length shows up. */
#define RV() ((r = rng()) & 1 ? 0 : rng() >> (rng() % 64))
    e->id = RV();
    e->timestamp_ns = RV();
    e->pid = (uint32_t)RV();
    e->ppid = (uint32_t)RV();
    e->uid = (uint32_t)RV();
    e->cgroup_id = RV();
    size_t cl = rng() % sizeof(e->command);
    for (size_t i = 0; i < cl; i++)
        e->command[i] = (char)(1 + rng() % 255);
    e->node = pick(nodes, 3);
    e->k8s.node_name = pick(nodes, 3);
    e->k8s.pod_name = pick(pods, 3);
    e->k8s.namespace = pick(nss, 2);
    e->k8s.container_id = pick(cids, 2);
    e->k8s.pod_uid = pick(uids, 2);
    e->k8s.workload = pick(workloads, 3);
    e->k8s.workload_kind = pick(kinds, 3);
    e->k8s.app = pick(apps, 2);
    e->k8s.ips = pick(ips, 4);
    e->k8s.host_network = rng() % 4 == 0;
    if (rng() % 2) {
        e->peer.pod = pick(pods, 3);
        e->peer.namespace = pick(nss, 2);
        e->peer.workload = pick(workloads, 3);
        e->peer.workload_kind = pick(kinds, 3);
        e->peer.node = pick(nodes, 3);
        e->peer.service = pick(apps, 2);
        e->peer.dns = pick(nodes, 3);
    }
    if (rng() % 4) {
        e->family = (uint8_t)(1 + rng() % 2);
        for (int i = 0; i < 16; i++) {
            e->saddr[i] = (uint8_t)rng();
            e->daddr[i] = (uint8_t)rng();
        }
    }
    e->sport = (uint16_t)RV();
    e->dport = (uint16_t)RV();
    e->protocol = (uint8_t)RV();
    switch (e->type) {
    case EVENT_CONNECTION:
        e->status = (uint8_t)(rng() % 4);
        e->u.conn.latency_ns = RV();
        e->u.conn.error = pick(errors, 3);
        break;
    case EVENT_CLOSE:
        e->u.close.role = (uint8_t)(rng() % 3);
        e->u.close.reset = (uint8_t)(rng() % 3);
        e->u.close.retransmits = (uint32_t)RV();
        e->u.close.srtt_us = (uint32_t)RV();
        e->u.close.duration_ns = RV();
        e->u.close.bytes_sent = RV();
        e->u.close.bytes_received = RV();
        break;
    case EVENT_PACKET_DROP:
        e->u.drop.reason_code = (uint32_t)RV();
        e->u.drop.reason = rng() % 3 ? intern("NO_SOCKET") : NULL;
        e->u.drop.location = rng() % 3 ? intern("__udp4_lib_rcv+0x5a1") : NULL;
        e->u.drop.suppressed = RV();
        break;
    case EVENT_EXEC: {
        if (rng() % 4) {
            size_t fl = 1 + rng() % 200;
            e->u.exec.filename = malloc(fl + 1);
            for (size_t i = 0; i < fl; i++)
                e->u.exec.filename[i] = (char)(1 + rng() % 255);
            e->u.exec.filename[fl] = '\0';
        }
        /* NUL-separated, empty elements and a missing final NUL included, some long enough
         * for two-byte lengths. */
        size_t argc = rng() % 3 ? rng() % (EVENT_ARGC_MAX + 1) : 0, al = 0;
        if (argc) {
            e->u.exec.args = malloc(argc * 201);
            for (size_t a = 0; a < argc; a++) {
                size_t l = rng() % 8 ? rng() % 20 : rng() % 200;
                for (size_t i = 0; i < l; i++)
                    e->u.exec.args[al++] = (char)(1 + rng() % 255);
                e->u.exec.args[al++] = '\0';
            }
            if (rng() % 4 == 0)
                al--;
            e->u.exec.args_len = (uint32_t)al;
        }
        e->u.exec.args_truncated = rng() % 2;
        e->u.exec.filename_truncated = rng() % 2;
        /* Mostly reported; root's 0, the uid itself, or any other. */
        if ((e->u.exec.has_euid = rng() % 4 != 0)) {
            uint64_t k = rng() % 3;
            e->u.exec.euid = k == 0 ? 0 : k == 1 ? e->uid : (uint32_t)rng();
        }
        break;
    }
    case EVENT_EXIT:
        e->u.exit.exit_code = (int32_t)(uint32_t)RV();
        e->u.exit.signal = (int32_t)(uint32_t)RV();
        e->u.exit.duration_ns = RV();
        e->u.exit.core_dumped = rng() % 2;
        break;
    case EVENT_DNS: {
        e->status = (uint8_t)(rng() % 3 == 0   ? EVENT_STATUS_TIMEOUT
                              : rng() % 5 == 0 ? EVENT_STATUS_UNKNOWN
                              : rng() % 5 == 0 ? EVENT_STATUS_FAILED
                                               : EVENT_STATUS_ANSWERED);
        if (e->status == EVENT_STATUS_FAILED)
            e->u.dns.error = pick(errors, 3);
        if (rng() % 8) {
            size_t ql = 1 + (rng() % 8 ? rng() % 40 : rng() % 300);
            e->u.dns.query = malloc(ql + 1);
            for (size_t i = 0; i < ql; i++)
                e->u.dns.query[i] = (char)(1 + rng() % 255);
            e->u.dns.query[ql] = '\0';
        }
        /* Non-empty NUL-terminated answers, at most EVENT_DNS_ANSWERS_MAX of them. */
        size_t na = rng() % (EVENT_DNS_ANSWERS_MAX + 1), al = 0;
        if (na) {
            e->u.dns.answers = malloc(na * 201);
            for (size_t a = 0; a < na; a++) {
                size_t l = 1 + (rng() % 8 ? rng() % 40 : rng() % 200);
                for (size_t i = 0; i < l; i++)
                    e->u.dns.answers[al++] = (char)(1 + rng() % 255);
                e->u.dns.answers[al++] = '\0';
            }
            e->u.dns.answers_len = (uint32_t)al;
        }
        e->u.dns.query_type = (uint16_t)RV();
        e->u.dns.rcode = (uint16_t)RV();
        e->u.dns.transaction_id = (uint16_t)RV();
        e->u.dns.latency_ns = RV();
        e->u.dns.tc = (uint8_t)(rng() % 4 == 0);
        e->u.dns.answers_truncated = (uint8_t)(rng() % 4 == 0);
        e->u.dns.opcode = (uint8_t)(rng() % 4 == 0 ? rng() % 16 : 0);
        break;
    }
    }
#undef RV
}

/* What protobuf-c writes for one `events` entry of a batch: tag, length, Event. */
static void reference_append(struct buf *out, const struct event *e, const char *batch_node)
{
    Ebpfmonitor__Event msg;
    struct event_pb_scratch scratch;
    cr_assert_eq(event_pb_from_event(e, batch_node, &msg, &scratch), 0);
    size_t len = ebpfmonitor__event__get_packed_size(&msg);
    uint8_t hdr[11];
    size_t h = 0;
    hdr[h++] = 0x22;
    size_t v = len;
    for (; v >= 0x80; v >>= 7)
        hdr[h++] = (uint8_t)(v | 0x80);
    hdr[h++] = (uint8_t)v;
    buf_append(out, hdr, h);
    cr_assert(buf_reserve(out, len));
    ebpfmonitor__event__pack(&msg, (uint8_t *)out->data + out->len);
    out->len += len;
    event_pb_scratch_release(&scratch);
}

/* Every field of two events, strings by pointer (interned) or by bytes (owned). */
static void assert_identical(const struct event *a, const struct event *b, const char *what)
{
    cr_assert(a->id == b->id && a->timestamp_ns == b->timestamp_ns && a->type == b->type &&
                  a->family == b->family && a->protocol == b->protocol && a->pid == b->pid &&
                  a->ppid == b->ppid && a->uid == b->uid && a->cgroup_id == b->cgroup_id &&
                  a->sport == b->sport && a->dport == b->dport,
              "%s: scalars differ (id %016llx)", what, (unsigned long long)a->id);
    cr_assert_str_eq(a->command, b->command, "%s", what);
    cr_assert_eq(a->node, b->node, "%s: node", what);
    cr_assert(a->k8s.node_name == b->k8s.node_name && a->k8s.pod_name == b->k8s.pod_name &&
                  a->k8s.namespace == b->k8s.namespace &&
                  a->k8s.container_id == b->k8s.container_id && a->k8s.pod_uid == b->k8s.pod_uid &&
                  a->k8s.workload == b->k8s.workload &&
                  a->k8s.workload_kind == b->k8s.workload_kind && a->k8s.app == b->k8s.app &&
                  a->k8s.ips == b->k8s.ips && a->k8s.host_network == b->k8s.host_network,
              "%s: k8s attribution differs", what);
    cr_assert(a->peer.pod == b->peer.pod && a->peer.namespace == b->peer.namespace &&
                  a->peer.workload == b->peer.workload &&
                  a->peer.workload_kind == b->peer.workload_kind && a->peer.node == b->peer.node &&
                  a->peer.service == b->peer.service && a->peer.dns == b->peer.dns,
              "%s: peer differs", what);
    size_t alen = a->family == EVENT_FAMILY_IPV4 ? 4 : a->family == EVENT_FAMILY_IPV6 ? 16 : 0;
    cr_assert_eq(memcmp(a->saddr, b->saddr, alen), 0, "%s", what);
    cr_assert_eq(memcmp(a->daddr, b->daddr, alen), 0, "%s", what);
    switch (a->type) {
    case EVENT_CONNECTION:
        cr_assert_eq(a->status, b->status, "%s", what);
        cr_assert_eq(a->u.conn.latency_ns, b->u.conn.latency_ns, "%s", what);
        cr_assert_eq(a->u.conn.error, b->u.conn.error, "%s: error", what);
        break;
    case EVENT_CLOSE:
        cr_assert(a->u.close.role == b->u.close.role && a->u.close.reset == b->u.close.reset &&
                      a->u.close.retransmits == b->u.close.retransmits &&
                      a->u.close.srtt_us == b->u.close.srtt_us &&
                      a->u.close.duration_ns == b->u.close.duration_ns &&
                      a->u.close.bytes_sent == b->u.close.bytes_sent &&
                      a->u.close.bytes_received == b->u.close.bytes_received,
                  "%s: close", what);
        break;
    case EVENT_PACKET_DROP:
        cr_assert(a->u.drop.reason_code == b->u.drop.reason_code &&
                      a->u.drop.reason == b->u.drop.reason &&
                      a->u.drop.location == b->u.drop.location &&
                      a->u.drop.suppressed == b->u.drop.suppressed,
                  "%s: drop", what);
        break;
    case EVENT_EXEC:
        cr_assert_eq(!a->u.exec.filename, !b->u.exec.filename, "%s", what);
        if (a->u.exec.filename)
            cr_assert_str_eq(a->u.exec.filename, b->u.exec.filename, "%s", what);
        cr_assert_eq(a->u.exec.args_len, b->u.exec.args_len, "%s", what);
        if (a->u.exec.args_len)
            cr_assert_eq(memcmp(a->u.exec.args, b->u.exec.args, a->u.exec.args_len), 0, "%s", what);
        cr_assert_eq(a->u.exec.args_truncated, b->u.exec.args_truncated, "%s", what);
        cr_assert_eq(a->u.exec.filename_truncated, b->u.exec.filename_truncated, "%s", what);
        cr_assert_eq(a->u.exec.has_euid, b->u.exec.has_euid, "%s", what);
        cr_assert_eq(a->u.exec.euid, b->u.exec.euid, "%s", what);
        break;
    case EVENT_EXIT:
        cr_assert(a->u.exit.exit_code == b->u.exit.exit_code &&
                      a->u.exit.signal == b->u.exit.signal &&
                      a->u.exit.duration_ns == b->u.exit.duration_ns &&
                      a->u.exit.core_dumped == b->u.exit.core_dumped,
                  "%s: exit", what);
        break;
    case EVENT_DNS:
        cr_assert_eq(a->status, b->status, "%s", what);
        cr_assert_eq(!a->u.dns.query, !b->u.dns.query, "%s", what);
        if (a->u.dns.query)
            cr_assert_str_eq(a->u.dns.query, b->u.dns.query, "%s", what);
        cr_assert(a->u.dns.query_type == b->u.dns.query_type && a->u.dns.rcode == b->u.dns.rcode &&
                      a->u.dns.transaction_id == b->u.dns.transaction_id &&
                      a->u.dns.latency_ns == b->u.dns.latency_ns,
                  "%s: dns", what);
        cr_assert_eq(a->u.dns.answers_len, b->u.dns.answers_len, "%s", what);
        if (a->u.dns.answers_len)
            cr_assert_eq(memcmp(a->u.dns.answers, b->u.dns.answers, a->u.dns.answers_len), 0, "%s",
                         what);
        break;
    }
}

/* The encoder's input as the decoder gives it back: args end in a NUL, empty means absent. */
static void normalise(struct event *e)
{
    if (e->type == EVENT_EXEC) {
        if (e->u.exec.filename && !*e->u.exec.filename) {
            free(e->u.exec.filename);
            e->u.exec.filename = NULL;
        }
        if (e->u.exec.args_len && e->u.exec.args[e->u.exec.args_len - 1] != '\0') {
            e->u.exec.args = realloc(e->u.exec.args, e->u.exec.args_len + 1);
            e->u.exec.args[e->u.exec.args_len++] = '\0';
        }
    }
    if (e->type != EVENT_CONNECTION && e->type != EVENT_DNS)
        e->status = 0;
    if (!e->node)
        e->node = intern(NODE); /* an event without a node gets the batch's */
}

static void free_events(struct event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    free(ev);
}

/* The attribution fields only the pod table carries: an event written inline loses them. */
static void pod_only_cleared(struct event_k8s *k)
{
    k->app = NULL;
    k->ips = NULL;
    k->host_network = false;
}

/*
 * An exec's euid is a oneof member: root's 0 is on the wire (field 5 of
 * ExecDetails), so both decoders tell it from an event without one (an
 * agent from before it), which must not read as root.
 */
Test(event_pb, exec_euid_zero_is_sent_and_told_from_none)
{
    struct event_batch_meta meta = {.node = "n", .sequence = 1};
    for (int has = 0; has < 2; has++) {
        struct event e;
        struct buf b;
        memset(&e, 0, sizeof(e));
        e.type = EVENT_EXEC;
        e.uid = 65534;
        e.u.exec.has_euid = (uint8_t)has;
        buf_init(&b);
        cr_assert_eq(event_batch_encode(&meta, &e, 1, &b), 0);
        static const uint8_t with[] = {0xb2, 0x01, 0x02, 0x28, 0x00}; /* 22: exec, euid = 0 */
        static const uint8_t without[] = {0xb2, 0x01, 0x00};          /* 22: exec, empty */
        const uint8_t *want = has ? with : without;
        size_t wlen = has ? sizeof(with) : sizeof(without);
        cr_assert(b.len > wlen && memcmp(b.data + b.len - wlen, want, wlen) == 0,
                  "has_euid=%d: the details are not where expected", has);
        struct buf mine;
        buf_init(&mine);
        buf_puts(&mine, "XY");
        cr_assert_eq(event_batch_append_event(&mine, &e, NULL), 0);
        cr_assert(mine.len > wlen && memcmp(mine.data + mine.len - wlen, want, wlen) == 0,
                  "has_euid=%d: the fast encoder differs", has);
        buf_free(&mine);

        struct event_batch_meta m;
        struct event *fast, *gen;
        size_t nf, ng;
        char err[256] = "";
        cr_assert_eq(
            event_batch_decode_fast((uint8_t *)b.data, b.len, &m, &fast, &nf, err, sizeof(err)), 0,
            "%s", err);
        cr_assert_eq(
            event_batch_decode_generic((uint8_t *)b.data, b.len, &m, &gen, &ng, err, sizeof(err)),
            0, "%s", err);
        cr_assert(nf == 1 && ng == 1);
        for (int k = 0; k < 2; k++) {
            const struct event *d = k ? gen : fast;
            cr_assert_eq(d->u.exec.has_euid, has, "%s: has_euid", k ? "generic" : "fast");
            cr_assert_eq(d->u.exec.euid, 0);
            cr_assert_eq(d->uid, 65534);
        }
        free_events(fast, nf);
        free_events(gen, ng);
        buf_free(&b);
    }
}

/* Event.id is a fixed64: little-endian on the wire, written and read the same way by both codecs.
 */
Test(event_pb, fixed64_id_is_little_endian_both_ways)
{
    static const uint8_t batch[] = {
        0x0a, 0x01, 'n',                                      /* 1: node */
        0x18, 0x01,                                           /* 3: sequence */
        0x22, 0x0b,                                           /* 4: events, 11 bytes */
        0x09, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* 1: id */
        0x10, 0x02,                                           /* 2: type = ACCEPT */
    };
    const uint64_t id = 0x0102030405060708ull;
    int (*decoders[])(const uint8_t *, size_t, struct event_batch_meta *, struct event **, size_t *,
                      char *, size_t) = {event_batch_decode_fast, event_batch_decode_generic};
    for (int d = 0; d < 2; d++) {
        struct event_batch_meta m;
        struct event *ev;
        size_t n;
        char err[256] = "";
        cr_assert_eq(decoders[d](batch, sizeof(batch), &m, &ev, &n, err, sizeof(err)), 0, "%s",
                     err);
        cr_assert_eq(n, 1);
        cr_assert_eq(ev[0].id, id, "decoder %d read %#llx", d, (unsigned long long)ev[0].id);
        free_events(ev, n);
    }

    struct event e;
    memset(&e, 0, sizeof(e));
    e.type = EVENT_ACCEPT;
    e.id = id;
    struct buf mine, ref;
    buf_init(&mine);
    buf_init(&ref);
    cr_assert_eq(event_batch_append_event(&mine, &e, NULL), 0);
    reference_append(&ref, &e, NULL);
    cr_assert_eq(mine.len, 13);
    cr_assert_eq(memcmp(mine.data + 2, batch + 7, 11), 0, "fast encoder: id bytes");
    cr_assert_eq(ref.len, mine.len);
    cr_assert_eq(memcmp(ref.data, mine.data, ref.len), 0, "protobuf-c: same bytes");
    buf_free(&mine);
    buf_free(&ref);
}

Test(event_pb, encoder_writes_what_protobuf_c_writes)
{
    const char *batch_nodes[] = {NULL, intern(NODE), "other-node"};
    struct buf mine, ref;
    buf_init(&mine);
    buf_init(&ref);
    for (int round = 0; round < 20000; round++) {
        struct event e;
        random_event(&e);
        const char *bn = batch_nodes[round % 3];
        buf_reset(&mine);
        buf_reset(&ref);
        buf_puts(&mine, "XY"); /* appends */
        buf_puts(&ref, "XY");
        cr_assert_eq(event_batch_append_event(&mine, &e, bn), 0);
        reference_append(&ref, &e, bn);
        cr_assert_eq(mine.len, ref.len, "event %d (type %u): %zu bytes, protobuf-c %zu", round,
                     e.type, mine.len, ref.len);
        cr_assert_eq(memcmp(mine.data, ref.data, ref.len), 0, "event %d (type %u) differs", round,
                     e.type);
        event_clear(&e);
    }

    /* Metadata: protobuf-c's packing of an EventBatch without events. */
    struct event_batch_meta metas[] = {test_meta(),
                                       {.sequence = 1},
                                       {.node = "n", .agent_drops = ~0ull, .sent_at_ns = 1},
                                       {.kernel_missed = ~0ull},
                                       {0}};
    for (size_t i = 0; i < sizeof(metas) / sizeof(metas[0]); i++) {
        buf_reset(&mine);
        buf_reset(&ref);
        cr_assert_eq(event_batch_append_meta(&mine, &metas[i]), 0);
        cr_assert_eq(event_batch_encode(&metas[i], NULL, 0, &ref), 0);
        cr_assert_eq(mine.len, ref.len);
        cr_assert_eq(memcmp(mine.data, ref.data, ref.len), 0, "meta %zu", i);
    }
    buf_free(&mine);
    buf_free(&ref);
}

/* Encodes n random events with or without a pod table into b. */
static void random_batch(struct event *ev, size_t n, bool with_pods, struct buf *b)
{
    static struct event_pb_pods pods;
    struct event_batch_meta meta = test_meta();
    event_pb_pods_reset(&pods);
    buf_reset(b);
    for (size_t i = 0; i < n; i++) {
        random_event(&ev[i]);
        cr_assert_eq(with_pods ? event_batch_append_event_pods(b, &ev[i], meta.node, &pods)
                               : event_batch_append_event(b, &ev[i], meta.node),
                     0);
        normalise(&ev[i]);
        if (!with_pods)
            pod_only_cleared(&ev[i].k8s);
    }
    cr_assert_eq(event_batch_append_meta(b, &meta), 0);
}

Test(event_pb, both_decoders_agree_and_round_trip)
{
    struct event ev[64];
    struct buf b;
    buf_init(&b);
    for (int round = 0; round < 600; round++) {
        size_t n = rng() % 64;
        bool with_pods = round % 3 != 0;
        random_batch(ev, n, with_pods, &b);
        struct event_batch_meta mf, mg;
        struct event *fast, *gen;
        size_t nf, ng;
        char err[256] = "";
        cr_assert_eq(
            event_batch_decode_fast((uint8_t *)b.data, b.len, &mf, &fast, &nf, err, sizeof(err)), 0,
            "the fast path must take what the encoder writes");
        cr_assert_eq(
            event_batch_decode_generic((uint8_t *)b.data, b.len, &mg, &gen, &ng, err, sizeof(err)),
            0, "%s", err);
        cr_assert_eq(nf, n);
        cr_assert_eq(ng, n);
        cr_assert(mf.node == mg.node && mf.agent_instance == mg.agent_instance &&
                  mf.sequence == mg.sequence && mf.pod_name == mg.pod_name &&
                  mf.pod_namespace == mg.pod_namespace && mf.sent_at_ns == mg.sent_at_ns &&
                  mf.kernel_drops == mg.kernel_drops && mf.agent_drops == mg.agent_drops &&
                  mf.kernel_missed == mg.kernel_missed && mf.kernel_missed == 5);
        for (size_t i = 0; i < n; i++) {
            assert_identical(&fast[i], &gen[i], "fast vs generic");
            assert_identical(&ev[i], &fast[i], with_pods ? "round trip (pods)" : "round trip");
        }
        free_events(fast, nf);
        free_events(gen, ng);
        for (size_t i = 0; i < n; i++)
            event_clear(&ev[i]);
    }
    buf_free(&b);
}

/*
 * event_batch_decode_max() refuses a batch past its limit before decoding
 * any event, whichever path decides: the fast one, or the reference one for
 * a batch the fast one declines (here, for an unknown top-level field).
 */
Test(event_pb, batch_over_the_limit_is_refused_by_both_paths)
{
    struct event ev[5];
    struct buf b;
    buf_init(&b);
    for (int unusual = 0; unusual < 2; unusual++) {
        random_batch(ev, 5, true, &b);
        for (size_t i = 0; i < 5; i++)
            event_clear(&ev[i]);
        if (unusual)
            pbc_u64(&b, 99, 7);
        struct event_batch_meta m;
        struct event *out;
        size_t n;
        char err[256] = "";
        int rf = event_batch_decode_fast((uint8_t *)b.data, b.len, &m, &out, &n, NULL, 0);
        cr_assert_eq(rf, unusual ? 1 : 0, "path %d", unusual);
        if (rf == 0)
            free_events(out, n);

        cr_assert_eq(
            event_batch_decode_max((uint8_t *)b.data, b.len, 4, &m, &out, &n, err, sizeof(err)),
            -E2BIG, "path %d", unusual);
        cr_assert_null(out);
        cr_assert_eq(n, 0);
        cr_assert_null(m.node, "no metadata on a refused batch");
        cr_assert_str_eq(err, "batch holds more than 4 events");

        cr_assert_eq(
            event_batch_decode_max((uint8_t *)b.data, b.len, 5, &m, &out, &n, err, sizeof(err)), 0,
            "%s", err);
        cr_assert_eq(n, 5);
        free_events(out, n);
    }
    buf_free(&b);
}

Test(event_pb, pod_table_writes_each_attribution_once)
{
    struct event ev[100];
    struct event_pb_pods pods;
    struct buf inl, ref;
    struct event_batch_meta meta = test_meta();
    buf_init(&inl);
    buf_init(&ref);
    event_pb_pods_reset(&pods);
    for (size_t i = 0; i < 100; i++) {
        base(&ev[i], EVENT_ACCEPT, i + 1, "nginx");
        char name[32];
        snprintf(name, sizeof(name), "web-%zu", i % 4);
        ev[i].k8s.pod_name = intern(name);
        ev[i].k8s.namespace = intern("shop");
        ev[i].k8s.container_id = intern("containerd://0123456789abcdef0123456789abcdef0123456789"
                                        "abcdef0123456789abcdef");
        cr_assert_eq(event_batch_append_event(&inl, &ev[i], meta.node), 0);
        cr_assert_eq(event_batch_append_event_pods(&ref, &ev[i], meta.node, &pods), 0);
    }
    cr_assert_eq(pods.n, 4);
    /* ~90 bytes of strings per event become a 2-byte reference. */
    cr_assert_lt(ref.len + 80 * 100, inl.len, "%zu vs %zu bytes", ref.len, inl.len);

    /* protobuf-c sees the table and the references. */
    cr_assert_eq(event_batch_append_meta(&ref, &meta), 0);
    Ebpfmonitor__EventBatch *pb =
        ebpfmonitor__event_batch__unpack(NULL, ref.len, (uint8_t *)ref.data);
    cr_assert_not_null(pb);
    cr_assert_eq(pb->n_pods, 4);
    cr_assert_str_eq(pb->pods[1]->pod_name, "web-1");
    cr_assert_str_eq(pb->pods[1]->namespace_, "shop");
    cr_assert_str_eq(pb->pods[1]->node_name, "");
    cr_assert_eq(pb->events[5]->pod_ref, 2);
    cr_assert_str_eq(pb->events[5]->k8s_pod_name, "");
    ebpfmonitor__event_batch__free_unpacked(pb, NULL);
    buf_free(&inl);
    buf_free(&ref);
}

Test(event_pb, full_pod_table_falls_back_to_inline_strings)
{
    const size_t n = EVENT_PB_PODS_MAX + 40;
    struct event *ev = calloc(n, sizeof(*ev));
    static struct event_pb_pods pods;
    struct event_batch_meta meta = test_meta(), back_meta;
    struct buf b;
    buf_init(&b);
    event_pb_pods_reset(&pods);
    for (size_t i = 0; i < n; i++) {
        base(&ev[i], EVENT_ACCEPT, i + 1, "nginx");
        char name[32];
        snprintf(name, sizeof(name), "pod-%zu", i);
        ev[i].k8s.pod_name = intern(name);
        cr_assert_eq(event_batch_append_event_pods(&b, &ev[i], meta.node, &pods), 0);
    }
    cr_assert_eq(pods.n, EVENT_PB_PODS_MAX);
    cr_assert_eq(event_batch_append_meta(&b, &meta), 0);
    struct event *back;
    size_t bn;
    char err[256] = "";
    cr_assert_eq(
        event_batch_decode((uint8_t *)b.data, b.len, &back_meta, &back, &bn, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_eq(bn, n);
    for (size_t i = 0; i < n; i++)
        assert_identical(&ev[i], &back[i], "table full");
    free_events(back, bn);
    free(ev);
    buf_free(&b);
}

/* Inline fields and a reference on one event: each empty inline field comes from the entry. */
Test(event_pb, pod_ref_fills_only_empty_inline_fields_in_both_decoders)
{
    Ebpfmonitor__EventBatch batch = EBPFMONITOR__EVENT_BATCH__INIT;
    Ebpfmonitor__PodRef p1 = EBPFMONITOR__POD_REF__INIT, p2 = EBPFMONITOR__POD_REF__INIT;
    Ebpfmonitor__PodRef *pp[2] = {&p1, &p2};
    Ebpfmonitor__Event e1 = EBPFMONITOR__EVENT__INIT, e2 = EBPFMONITOR__EVENT__INIT,
                       e3 = EBPFMONITOR__EVENT__INIT;
    Ebpfmonitor__Event *ep[3] = {&e1, &e2, &e3};
    p1.pod_name = "web-1";
    p1.namespace_ = "shop";
    p1.container_id = "containerd://aa";
    p2.node_name = "k8s-node";
    p2.pod_uid = "uid-2";
    e1.type = e2.type = e3.type = EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_ACCEPT;
    e1.pod_ref = 1;
    e1.k8s_pod_name = "inline-pod";
    e2.pod_ref = 2;
    e2.k8s_node_name = "inline-node";
    e3.k8s_pod_name = "plain";
    batch.node = "n";
    batch.n_pods = 2;
    batch.pods = pp;
    batch.n_events = 3;
    batch.events = ep;
    size_t len = ebpfmonitor__event_batch__get_packed_size(&batch);
    uint8_t *wire = malloc(len);
    ebpfmonitor__event_batch__pack(&batch, wire);

    struct event_batch_meta m;
    struct event *f, *g;
    size_t nf, ng;
    char err[256] = "";
    cr_assert_eq(event_batch_decode_fast(wire, len, &m, &f, &nf, err, sizeof(err)), 0);
    cr_assert_eq(event_batch_decode_generic(wire, len, &m, &g, &ng, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(nf, 3);
    cr_assert_eq(ng, 3);
    for (size_t i = 0; i < 3; i++)
        assert_identical(&f[i], &g[i], "mixed");
    cr_assert_str_eq(f[0].k8s.pod_name, "inline-pod");
    cr_assert_str_eq(f[0].k8s.namespace, "shop");
    cr_assert_str_eq(f[0].k8s.container_id, "containerd://aa");
    cr_assert_null(f[0].k8s.node_name);
    cr_assert_str_eq(f[1].k8s.node_name, "inline-node");
    cr_assert_str_eq(f[1].k8s.pod_uid, "uid-2");
    cr_assert_null(f[1].k8s.pod_name);
    cr_assert_str_eq(f[2].k8s.pod_name, "plain");
    cr_assert_null(f[2].k8s.namespace);
    free_events(f, nf);
    free_events(g, ng);
    free(wire);

    /* A reference past the table is rejected, with the field named. */
    e3.pod_ref = 3;
    len = ebpfmonitor__event_batch__get_packed_size(&batch);
    wire = malloc(len);
    ebpfmonitor__event_batch__pack(&batch, wire);
    cr_assert_eq(event_batch_decode(wire, len, &m, &f, &nf, err, sizeof(err)), 0);
    cr_assert(strstr(err, "event 2: ") && strstr(err, "pod_ref"), "%s", err);
    cr_assert_eq(m.rejected_events, 1);
    cr_assert_eq(nf, 2, "the two valid events survive");
    free_events(f, nf);
    free(wire);
}

/* Mutated pod-table batches: both decoders accept and reject the same input, identically. */
Test(event_pb, mutated_pod_batches_decode_alike_or_fail_cleanly)
{
    struct event ev[16];
    struct buf b;
    buf_init(&b);
    for (int round = 0; round < 1500; round++) {
        size_t n = 1 + rng() % 16;
        random_batch(ev, n, true, &b);
        for (size_t i = 0; i < n; i++)
            event_clear(&ev[i]);
        for (int k = 0; k < 2; k++)
            ((uint8_t *)b.data)[rng() % b.len] = (uint8_t)rng();
        struct event_batch_meta m;
        struct event *f, *g;
        size_t nf, ng;
        int rf = event_batch_decode_fast((uint8_t *)b.data, b.len, &m, &f, &nf, NULL, 0);
        uint32_t rejf = m.rejected_events;
        struct event_batch_meta mg;
        int rg = event_batch_decode_generic((uint8_t *)b.data, b.len, &mg, &g, &ng, NULL, 0);
        cr_assert(rf == 0 || rf == 1);
        cr_assert(rg == 0 || rg == -EINVAL);
        if (rf == 0) {
            cr_assert_eq(rg, 0, "the fast path took input the generic one rejects");
            cr_assert_eq(nf, ng);
            cr_assert_eq(rejf, mg.rejected_events);
            for (size_t i = 0; i < nf; i++)
                assert_identical(&f[i], &g[i], "mutated");
            free_events(f, nf);
        }
        if (rg == 0)
            free_events(g, ng);
    }
    buf_free(&b);
}

/*
 * The hostile shapes that once put wire values into the wrong union member:
 * both decoders agree, keep the valid events around the hostile one, and
 * what they keep survives the JSON writer, a copy and a clear.
 */
Test(event_pb, hostile_shapes_cost_at_most_themselves_in_both_decoders)
{
    struct pb_craft crafts[48];
    size_t nc = pb_craft_hostile(crafts, 32, "hostile-node", 1, 1700000000000000000ull);
    cr_assert_gt(nc, 10);
    size_t nr = pb_craft_refused(crafts + nc, 16, "hostile-node", 100, 1700000000000000000ull);
    cr_assert_geq(nr, 2);
    for (size_t i = 0; i < nc; i++)
        cr_assert(!crafts[i].refused, "%s", crafts[i].name);
    nc += nr;
    for (size_t i = 0; i < nc; i++) {
        const struct pb_craft *c = &crafts[i];
        const uint8_t *w = (const uint8_t *)c->wire.data;
        struct event_batch_meta mf, mg;
        struct event *f = NULL, *g = NULL;
        size_t nf = 0, ng = 0;
        char ef[256] = "", eg[256] = "";
        int rf = event_batch_decode(w, c->wire.len, &mf, &f, &nf, ef, sizeof(ef));
        int rg = event_batch_decode_generic(w, c->wire.len, &mg, &g, &ng, eg, sizeof(eg));
        if (c->refused) {
            cr_assert_eq(rf, -EINVAL, "%s: %s", c->name, ef);
            cr_assert_eq(rg, -EINVAL, "%s: %s", c->name, eg);
            cr_assert_str_eq(ef, eg, "%s", c->name);
            cr_assert(strstr(ef, "pods[0]"), "%s: the reason names the entry: %s", c->name, ef);
            cr_assert(nf == 0 && ng == 0 && !f && !g && !mf.node, "%s", c->name);
            continue;
        }
        cr_assert_eq(rf, 0, "%s: %s", c->name, ef);
        cr_assert_eq(rg, 0, "%s: %s", c->name, eg);
        cr_assert_eq(nf, c->valid, "%s: kept %zu, want %zu (%s)", c->name, nf, c->valid, ef);
        cr_assert_eq(mf.rejected_events, c->rejected, "%s: %s", c->name, ef);
        cr_assert_eq(ng, nf, "%s", c->name);
        cr_assert_eq(mg.rejected_events, mf.rejected_events, "%s", c->name);
        cr_assert_str_eq(ef, eg, "%s", c->name);
        if (c->rejected)
            cr_assert(strstr(ef, "event "), "%s: the reason names the event: %s", c->name, ef);
        cr_assert_eq(f[0].id, c->first_id, "%s", c->name);
        cr_assert_eq(f[nf - 1].type, EVENT_EXIT, "%s", c->name);
        cr_assert_eq(f[nf - 1].u.exit.exit_code, 3, "%s", c->name);
        struct buf js;
        buf_init(&js);
        for (size_t k = 0; k < nf; k++) {
            cr_assert(event_equal(&f[k], &g[k]), "%s: event %zu differs", c->name, k);
            if (f[k].type == EVENT_EXEC) {
                /* Nothing from a foreign field may reach the exec strings. */
                cr_assert(!f[k].u.exec.filename || f[k].u.exec.filename[0] == '/', "%s", c->name);
            }
            struct event copy;
            cr_assert_eq(event_copy(&copy, &f[k]), 0);
            buf_reset(&js);
            event_json_write(&js, &copy);
            cr_assert(!js.oom && js.len > 0);
            event_clear(&copy);
        }
        buf_free(&js);
        free_events(f, nf);
        free_events(g, ng);
    }
    for (size_t i = 0; i < nc; i++)
        pb_craft_free(&crafts[i]);
}

/* A merged details message keeps protobuf's meaning: strings last-wins, repeated appended. */
Test(event_pb, repeated_details_merge_as_protobuf_does)
{
    struct pb_craft crafts[32];
    size_t nc = pb_craft_hostile(crafts, 32, "merge-node", 1, 1700000000000000000ull);
    const struct pb_craft *c = NULL;
    for (size_t i = 0; i < nc; i++)
        if (strcmp(crafts[i].name, "exec details given twice (merged)") == 0)
            c = &crafts[i];
    cr_assert(c);
    struct event_batch_meta m;
    struct event *ev;
    size_t n;
    cr_assert_eq(
        event_batch_decode((const uint8_t *)c->wire.data, c->wire.len, &m, &ev, &n, NULL, 0), 0);
    cr_assert_eq(n, 4);
    const struct event *e = &ev[2];
    cr_assert_eq(e->type, EVENT_EXEC);
    cr_assert_str_eq(e->u.exec.filename, "/bin/merged");
    cr_assert_eq(e->u.exec.args_len, sizeof("first\0second"), "args_len %u: %.*s",
                 e->u.exec.args_len, (int)e->u.exec.args_len, e->u.exec.args);
    cr_assert_eq(memcmp(e->u.exec.args, "first\0second", e->u.exec.args_len), 0);
    free_events(ev, n);

    /* Close details: merged when consecutive; another kind between resets the oneof. */
    static const struct {
        const char *name;
        uint8_t role, reset;
        uint64_t duration, sent, received;
    } want[] = {{"close details given twice (merged)", EVENT_ROLE_CLIENT, EVENT_RESET_RECEIVED,
                 7000, 100, 200},
                {"close, exec, then close details again", EVENT_ROLE_NONE, EVENT_RESET_RECEIVED,
                 7000, 0, 200}};
    for (size_t w = 0; w < 2; w++) {
        c = NULL;
        for (size_t i = 0; i < nc; i++)
            if (strcmp(crafts[i].name, want[w].name) == 0)
                c = &crafts[i];
        cr_assert(c, "%s", want[w].name);
        cr_assert_eq(
            event_batch_decode((const uint8_t *)c->wire.data, c->wire.len, &m, &ev, &n, NULL, 0),
            0);
        cr_assert_eq(n, 3);
        e = &ev[1];
        cr_assert_eq(e->type, EVENT_CLOSE);
        cr_assert(e->u.close.role == want[w].role && e->u.close.reset == want[w].reset &&
                      e->u.close.duration_ns == want[w].duration &&
                      e->u.close.bytes_sent == want[w].sent &&
                      e->u.close.bytes_received == want[w].received,
                  "%s: role %u reset %u duration %llu sent %llu received %llu", want[w].name,
                  e->u.close.role, e->u.close.reset, (unsigned long long)e->u.close.duration_ns,
                  (unsigned long long)e->u.close.bytes_sent,
                  (unsigned long long)e->u.close.bytes_received);
        free_events(ev, n);
    }
    for (size_t i = 0; i < nc; i++)
        pb_craft_free(&crafts[i]);
}

/*
 * The fuzz target's seeds (tests/fuzz/corpus/fuzz_batch): real batches of
 * every event type, with and without a pod table, and the hostile shapes.
 * Each must decode; with EBPF_MONITOR_WRITE_SEEDS=<dir> they are also
 * written there, which is how the corpus in the repository was made.
 */
Test(event_pb, fuzz_seeds_decode)
{
    const char *dir = getenv("EBPF_MONITOR_WRITE_SEEDS");
    struct event ev[24];
    struct buf b;
    char path[512];
    buf_init(&b);
    for (int i = 0; i < 12; i++) {
        size_t n = 1 + (size_t)i * 2;
        random_batch(ev, n, i % 2 == 0, &b);
        for (size_t k = 0; k < n; k++)
            event_clear(&ev[k]);
        struct event_batch_meta m;
        struct event *out;
        size_t nout;
        cr_assert_eq(event_batch_decode((uint8_t *)b.data, b.len, &m, &out, &nout, NULL, 0), 0);
        cr_assert_eq(nout, n);
        free_events(out, nout);
        if (dir) {
            snprintf(path, sizeof(path), "%s/real-%02d.pb", dir, i);
            FILE *f = fopen(path, "wb");
            cr_assert(f && fwrite(b.data, 1, b.len, f) == b.len && fclose(f) == 0, "%s", path);
        }
    }
    /* A pod with an address, and a dns answer that points at it: the aggregator names it. */
    static struct event_pb_pods pods;
    struct event_batch_meta meta = test_meta();
    static const char answers[] = "web.shop.svc.cluster.local\0"
                                  "10.1.0.5";
    event_pb_pods_reset(&pods);
    buf_reset(&b);
    base(&ev[0], EVENT_EXEC, 1, "web");
    base(&ev[1], EVENT_DNS, 2, "client");
    ev[0].k8s.pod_name = intern("web-1");
    ev[0].k8s.namespace = intern("shop");
    ev[0].k8s.pod_uid = intern("uid-web-1");
    ev[0].k8s.workload = intern("web");
    ev[0].k8s.ips = intern("10.1.0.5,fd00::5");
    addrs(&ev[1], EVENT_FAMILY_IPV4, "10.1.0.9", 40000, "10.96.0.53", 53);
    ev[1].protocol = 17;
    ev[1].status = EVENT_STATUS_ANSWERED;
    ev[1].u.dns.query = strdup("web.shop.svc.cluster.local");
    ev[1].u.dns.answers = malloc(sizeof(answers));
    memcpy(ev[1].u.dns.answers, answers, sizeof(answers));
    ev[1].u.dns.answers_len = sizeof(answers);
    ev[1].u.dns.query_type = 1;
    for (size_t k = 0; k < 2; k++) {
        cr_assert_eq(event_batch_append_event_pods(&b, &ev[k], meta.node, &pods), 0);
        event_clear(&ev[k]);
    }
    cr_assert_eq(event_batch_append_meta(&b, &meta), 0);
    struct event_batch_meta m;
    struct event *out;
    size_t nout;
    cr_assert_eq(event_batch_decode((uint8_t *)b.data, b.len, &m, &out, &nout, NULL, 0), 0);
    cr_assert_eq(nout, 2);
    cr_assert_str_eq(out[0].k8s.ips, "10.1.0.5,fd00::5");
    cr_assert_eq(out[1].u.dns.answers_len, sizeof(answers));
    free_events(out, nout);
    if (dir) {
        snprintf(path, sizeof(path), "%s/dns-peer.pb", dir);
        FILE *f = fopen(path, "wb");
        cr_assert(f && fwrite(b.data, 1, b.len, f) == b.len && fclose(f) == 0, "%s", path);
    }
    buf_free(&b);
    struct pb_craft crafts[48];
    size_t nc = pb_craft_hostile(crafts, 32, "seed-node", 1, 1700000000000000000ull);
    nc += pb_craft_refused(crafts + nc, 16, "seed-node", 100, 1700000000000000000ull);
    for (size_t i = 0; i < nc; i++) {
        if (dir) {
            snprintf(path, sizeof(path), "%s/hostile-%02zu.pb", dir, i);
            FILE *f = fopen(path, "wb");
            cr_assert(
                f && fwrite(crafts[i].wire.data, 1, crafts[i].wire.len, f) == crafts[i].wire.len &&
                    fclose(f) == 0,
                "%s", path);
        }
        pb_craft_free(&crafts[i]);
    }
}

/*
 * The pod table's entries are what protobuf-c writes for the same PodRef,
 * ips included (4 or 16 bytes each, network order), and they decode back to
 * the attribution the events had; text that is not an address is left out.
 */
Test(event_pb, podref_matches_protobuf_c)
{
    static const char *const ips[] = {"10.1.0.5,fd00::5", "10.1.0.5,bogus,fd00::5", "2001:db8::1",
                                      NULL};
    struct event ev[4];
    struct event_pb_pods pods;
    struct event_batch_meta meta = test_meta();
    struct buf b;
    buf_init(&b);
    event_pb_pods_reset(&pods);
    for (size_t i = 0; i < 4; i++) {
        base(&ev[i], EVENT_CLOSE, i + 1, "nginx");
        ev[i].k8s.pod_name = intern(i % 2 ? "web-1" : "web-0");
        ev[i].k8s.namespace = intern("shop");
        ev[i].k8s.workload = intern("web");
        ev[i].k8s.workload_kind = intern("StatefulSet");
        ev[i].k8s.app = intern("web-app");
        ev[i].k8s.ips = ips[i] ? intern(ips[i]) : NULL;
        ev[i].k8s.host_network = i == 3;
        cr_assert_eq(event_batch_append_event_pods(&b, &ev[i], meta.node, &pods), 0);
    }
    cr_assert_eq(pods.n, 4, "ips and host_network are part of an entry's identity");
    cr_assert_eq(event_batch_append_meta(&b, &meta), 0);

    Ebpfmonitor__EventBatch *pb = ebpfmonitor__event_batch__unpack(NULL, b.len, (uint8_t *)b.data);
    cr_assert_not_null(pb);
    cr_assert_eq(pb->n_pods, 4);
    const Ebpfmonitor__PodRef *p0 = pb->pods[0];
    cr_assert_str_eq(p0->workload, "web");
    cr_assert_str_eq(p0->workload_kind, "StatefulSet");
    cr_assert_str_eq(p0->app, "web-app");
    cr_assert_eq(p0->n_ips, 2);
    cr_assert_eq(p0->ips[0].len, 4);
    cr_assert_eq(memcmp(p0->ips[0].data, "\x0a\x01\x00\x05", 4), 0);
    cr_assert_eq(p0->ips[1].len, 16);
    cr_assert_eq(p0->ips[1].data[0], 0xfd);
    cr_assert_eq(p0->ips[1].data[15], 5);
    cr_assert_eq(pb->pods[1]->n_ips, 2, "the entry that is not an address is left out");
    cr_assert(!p0->host_network && pb->pods[3]->host_network);

    /* Byte for byte: each entry as protobuf-c packs the reference codec's PodRef. */
    struct pb_rd r = {(uint8_t *)b.data, (uint8_t *)b.data + b.len};
    struct pb_field f;
    size_t k = 0;
    while (r.p < r.end) {
        cr_assert(pb_rd_field(&r, &f));
        if (f.num != 10)
            continue;
        cr_assert_lt(k, pb->n_pods);
        Ebpfmonitor__PodRef msg;
        struct event_pb_pod_scratch scratch;
        cr_assert_eq(event_pb_podref_from_k8s(&ev[k].k8s, &msg, &scratch), 0);
        size_t len = ebpfmonitor__pod_ref__get_packed_size(&msg);
        uint8_t *want = malloc(len);
        ebpfmonitor__pod_ref__pack(&msg, want);
        event_pb_pod_scratch_release(&scratch);
        cr_assert_eq(f.len, len, "entry %zu", k);
        cr_assert_eq(memcmp(f.data, want, len), 0, "entry %zu", k);
        free(want);
        k++;
    }
    cr_assert_eq(k, 4);
    ebpfmonitor__event_batch__free_unpacked(pb, NULL);

    ev[1].k8s.ips = intern("10.1.0.5,fd00::5"); /* as it decodes */
    int (*decoders[])(const uint8_t *, size_t, struct event_batch_meta *, struct event **, size_t *,
                      char *, size_t) = {event_batch_decode_fast, event_batch_decode_generic};
    for (int d = 0; d < 2; d++) {
        struct event_batch_meta m;
        struct event *out;
        size_t n;
        char err[256] = "";
        cr_assert_eq(decoders[d]((uint8_t *)b.data, b.len, &m, &out, &n, err, sizeof(err)), 0, "%s",
                     err);
        cr_assert_eq(n, 4);
        for (size_t i = 0; i < 4; i++)
            assert_identical(&ev[i], &out[i], d ? "generic" : "fast");
        free_events(out, n);
    }
    buf_free(&b);
}

/* The varint reader as the wire format defines it, byte by byte (what pb_rd_varint() did before
 * its unrolled path): the value, or false when ten bytes all continue or the bytes run out. */
static bool varint_spec(const uint8_t *p, size_t len, uint64_t *v, size_t *used)
{
    uint64_t x = 0;
    for (size_t i = 0; i < 10 && i < len; i++) {
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            *used = i + 1;
            return true;
        }
    }
    return false;
}

/*
 * pb_rd_varint() reads a long varint unrolled when ten bytes are left and byte by byte
 * otherwise: both must give what the format says, for every length (the tenth byte's high
 * bits dropped, ten continued bytes refused), wherever the buffer ends.
 */
Test(event_pb, varint_reader_agrees_with_the_format)
{
    uint64_t rng = 0x243f6a8885a308d3ull;
    uint8_t buf[24];
    for (unsigned round = 0; round < 20000; round++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = rng;
        unsigned len = 1 + (unsigned)(r % 11); /* 1..11: the 11th case has no terminator */
        for (unsigned i = 0; i < sizeof(buf); i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = (uint8_t)(r >> 56);
        }
        for (unsigned i = 0; i < len && i < sizeof(buf); i++)
            buf[i] = (uint8_t)(i + 1 < len ? buf[i] | 0x80 : buf[i] & 0x7f);
        if (len == 11)
            for (unsigned i = 0; i < 10; i++)
                buf[i] |= 0x80;
        for (size_t avail = 1; avail <= sizeof(buf); avail++) {
            uint64_t want = 0, got = 0;
            size_t used = 0;
            bool ok = varint_spec(buf, avail, &want, &used);
            struct pb_rd rd = {buf, buf + avail};
            bool rok = pb_rd_varint(&rd, &got);
            cr_assert_eq(rok, ok, "round %u, %u bytes, %zu available", round, len, avail);
            if (ok) {
                cr_assert_eq(got, want, "round %u, %u bytes, %zu available", round, len, avail);
                cr_assert_eq((size_t)(rd.p - buf), used);
            }
        }
    }
}

/* The fast decoder's table of wire types is the schema's: every Event field protobuf-c knows,
 * with the wire type its type has, and no other number below the table's end. */
Test(event_pb, field_wire_types_are_the_schema)
{
    const ProtobufCMessageDescriptor *d = &ebpfmonitor__event__descriptor;
    bool known[EVENT_PB_MAX_FIELD + 1] = {false};
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        cr_assert_leq(fd->id, EVENT_PB_MAX_FIELD, "field %s is past EVENT_PB_MAX_FIELD", fd->name);
        unsigned wt = fd->type == PROTOBUF_C_TYPE_FIXED64 || fd->type == PROTOBUF_C_TYPE_SFIXED64 ||
                              fd->type == PROTOBUF_C_TYPE_DOUBLE
                          ? PB_WT_I64
                      : fd->type == PROTOBUF_C_TYPE_FIXED32 ||
                              fd->type == PROTOBUF_C_TYPE_SFIXED32 ||
                              fd->type == PROTOBUF_C_TYPE_FLOAT
                          ? PB_WT_I32
                      : fd->type == PROTOBUF_C_TYPE_STRING || fd->type == PROTOBUF_C_TYPE_BYTES ||
                              fd->type == PROTOBUF_C_TYPE_MESSAGE
                          ? PB_WT_LEN
                          : PB_WT_VARINT;
        cr_expect_eq(event_pb_field_wt[fd->id], wt, "field %s (%u)", fd->name, fd->id);
        known[fd->id] = true;
    }
    for (unsigned n = 1; n <= EVENT_PB_MAX_FIELD; n++)
        cr_expect(known[n], "field %u is in no Event field of the schema", n);
}

/* The fast decoder's string check: bytes with a NUL are refused whatever this thread's cache
 * holds (a cached string of the same length or a prefix proves nothing about them). */
Test(event_pb, interned_names_with_a_nul_are_refused_after_a_cached_one)
{
    const char *web = event_pb_intern_checked("web", 3);
    cr_assert_not_null(web);
    cr_assert_str_eq(web, "web");
    cr_assert_eq(event_pb_intern_checked("web", 3), web, "cached: the same copy");
    cr_assert_eq(event_pb_intern_checked("webx", 3), web, "three bytes of a longer buffer");
    cr_assert_null(event_pb_intern_checked("w\0b", 3));
    cr_assert_null(event_pb_intern_checked("web\0", 4));
    cr_assert_null(event_pb_intern_checked("\0eb", 3));
    cr_assert_eq(event_pb_intern_checked("web", 3), web, "still cached");
}

/*
 * A peer's DNS name is a name a process chose (it resolved it): once such names fill their
 * part of the string table (intern_process_n()), an event arrives without it, in both
 * decoders, instead of being refused; its pod, a name no process chooses, is still read.
 */
Test(event_pb, a_full_process_part_leaves_peer_dns_out_not_the_event, .timeout = 60)
{
    struct event ev[16];
    size_t n = make_events(ev);
    struct event_batch_meta meta = test_meta(), mf, mg;
    struct event *fast, *gen;
    size_t nf, ng, with_dns = 0;
    char err[256] = "", name[24];
    struct buf b;

    for (unsigned long i = 0;; i++) {
        snprintf(name, sizeof(name), "q%014lx", i);
        if (!intern_process(name))
            break;
    }
    for (size_t i = 0; i < n; i++) {
        if (ev[i].peer.dns) {
            ev[i].peer.dns = "never-resolved-before.example"; /* not interned: written as is */
            with_dns++;
        }
        ev[i].k8s.pod_name = "pod-named-after-the-fill";
    }
    cr_assert_gt(with_dns, 0);
    buf_init(&b);
    cr_assert_eq(event_batch_encode(&meta, ev, n, &b), 0);
    cr_assert_eq(
        event_batch_decode_fast((uint8_t *)b.data, b.len, &mf, &fast, &nf, err, sizeof(err)), 0,
        "fast: %s", err);
    cr_assert_eq(
        event_batch_decode_generic((uint8_t *)b.data, b.len, &mg, &gen, &ng, err, sizeof(err)), 0,
        "generic: %s", err);
    cr_assert_eq(nf, n);
    cr_assert_eq(ng, n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_null(fast[i].peer.dns, "fast: event %zu", i);
        cr_assert_null(gen[i].peer.dns, "generic: event %zu", i);
        cr_assert_eq(fast[i].k8s.pod_name, intern("pod-named-after-the-fill"));
        cr_assert_eq(gen[i].k8s.pod_name, fast[i].k8s.pod_name);
    }
    free_events(fast, nf);
    free_events(gen, ng);
    for (size_t i = 0; i < n; i++) {
        ev[i].peer.dns = NULL;
        ev[i].k8s.pod_name = NULL;
        event_clear(&ev[i]);
    }
    buf_free(&b);
}

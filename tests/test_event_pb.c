/* Tests for pkg/event_pb: batch round-trips, wire format, validation of hostile input. */
#include "event_json.h"
#include "event_pb.h"
#include "intern.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
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

    e = &ev[n++];
    base(e, EVENT_ACCEPT, 3, "nginx");
    addrs(e, EVENT_FAMILY_IPV6, "::1", 59000, "::ffff:10.1.2.3", 8080);
    e->protocol = IPPROTO_TCP;
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.namespace = intern("shop");

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

    e = &ev[n++];
    base(e, EVENT_EXEC, 7, "init");

    e = &ev[n++];
    base(e, EVENT_EXIT, 8, "sleep");
    e->u.exit.exit_code = -2;
    e->u.exit.signal = 15;
    e->u.exit.duration_ns = 987654321;
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
        .sent_at_ns = 1795698267000000000ull,
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
    cr_assert_eq(back_meta.sent_at_ns, 1795698267000000000ull);
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
    /* Seven of the eight events repeat NODE unless the batch carries it. */
    cr_assert_geq(without.len, with.len + 7 * strlen(NODE));
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

/* Packs a batch holding one hand-made event and expects decode to reject it. */
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
    cr_assert_eq(rc, -EINVAL, "%s: rc %d", what, rc);
    cr_assert(strstr(err, "event 1: ") && strstr(err, what), "error \"%s\" should name %s", err,
              what);
    cr_assert_null(out);
    cr_assert_eq(n, 0);
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

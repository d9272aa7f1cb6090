/* Hand-written protobuf and the hostile batch catalogue (pb_craft.h). */
#include "pb_craft.h"

#include <string.h>

void pbc_varint(struct buf *b, uint64_t v)
{
    while (v >= 0x80) {
        buf_putc(b, (char)(v | 0x80));
        v >>= 7;
    }
    buf_putc(b, (char)v);
}

void pbc_key(struct buf *b, uint64_t field, unsigned wt)
{
    pbc_varint(b, field << 3 | wt);
}

void pbc_u64(struct buf *b, uint64_t field, uint64_t v)
{
    pbc_key(b, field, 0);
    pbc_varint(b, v);
}

void pbc_bytes(struct buf *b, uint64_t field, const void *data, size_t len)
{
    pbc_key(b, field, 2);
    pbc_varint(b, len);
    buf_append(b, data, len);
}

void pbc_fixed64(struct buf *b, uint64_t field, uint64_t v)
{
    pbc_key(b, field, 1);
    for (int i = 0; i < 8; i++)
        buf_putc(b, (char)(v >> (8 * i)));
}

enum { T_CONN = 1, T_ACCEPT, T_DROP, T_EXEC, T_EXIT, T_CLOSE, T_DNS };
enum { D_CONN = 20, D_DROP, D_EXEC, D_EXIT, D_CLOSE = 25, D_DNS = 35 };
enum { F_POD_REF = 24, F_PODS = 10 };

#define POISON 0x414141414141ull

/* The fields every event has, then the details message `det` (field 20..23) if any. */
static void event_head(struct buf *ev, uint64_t id, uint64_t type, uint64_t now_ns)
{
    pbc_fixed64(ev, 1, id);
    pbc_u64(ev, 2, type);
    pbc_u64(ev, 3, now_ns);
    pbc_u64(ev, 4, 4242);
    pbc_bytes(ev, 7, "hostile", 7);
}

static void add_event(struct buf *batch, const struct buf *ev)
{
    pbc_bytes(batch, 4, ev->data, ev->len);
}

static void good_exit(struct buf *batch, uint64_t id, uint64_t now_ns)
{
    struct buf ev, det;
    buf_init(&ev);
    buf_init(&det);
    event_head(&ev, id, T_EXIT, now_ns);
    pbc_u64(&det, 1, 6); /* exit_code 3, zigzag */
    pbc_bytes(&ev, D_EXIT, det.data, det.len);
    add_event(batch, &ev);
    buf_free(&ev);
    buf_free(&det);
}

/*
 * One hostile event: type, then the raw details body under details field
 * `det`, then the further details messages in `more` (already keyed), then
 * a reference to pod-table entry 1 when pod_ref.
 */
static void hostile(struct buf *batch, uint64_t id, uint64_t type, unsigned det,
                    const struct buf *body, const struct buf *more, int pod_ref, uint64_t now_ns)
{
    struct buf ev;
    buf_init(&ev);
    event_head(&ev, id, type, now_ns);
    if (det)
        pbc_bytes(&ev, det, body->data, body->len);
    buf_append(&ev, more->data, more->len);
    if (pod_ref)
        pbc_u64(&ev, F_POD_REF, 1);
    add_event(batch, &ev);
    buf_free(&ev);
}

static void meta(struct buf *batch, const char *node, uint64_t seq, uint64_t now_ns)
{
    pbc_bytes(batch, 1, node, strlen(node));
    pbc_bytes(batch, 2, "00000000000000cc", 16);
    pbc_u64(batch, 3, seq);
    pbc_u64(batch, 7, now_ns);
    pbc_u64(batch, 11, seq); /* kernel_missed: the last field, after the rest */
}

struct shape {
    const char *name;
    uint64_t type;
    unsigned det;
    void (*body)(struct buf *b);
    int valid; /* 1: the hostile event is a valid event under protobuf's rules */
    int twice; /* the same hostile event appears twice */
    /* Further details messages in the hostile event, each with its key. */
    void (*more)(struct buf *b);
    /* A pod-table entry (PodRef body) the hostile event refers to. */
    void (*pod)(struct buf *b);
    int refused; /* the pod table is broken: the whole batch is refused */
};

static void exec_f19(struct buf *b)
{
    pbc_bytes(b, 1, "/bin/true", 9);
    pbc_u64(b, 19, POISON);
}
static void exec_f17_f18(struct buf *b)
{
    pbc_u64(b, 17, POISON);
    pbc_u64(b, 18, POISON);
    pbc_bytes(b, 2, "arg", 3);
}
static void drop_f35(struct buf *b)
{
    pbc_u64(b, 1, 2);
    pbc_u64(b, 35, POISON);
}
static void exec_wrap32(struct buf *b)
{
    pbc_u64(b, (1ull << 32) | 1, POISON); /* field 1 once truncated to 32 bits */
}
static void exec_max_field(struct buf *b)
{
    pbc_u64(b, (1ull << 29) - 1, POISON); /* the largest legal field number: unknown */
}
static void exec_body(struct buf *b)
{
    pbc_bytes(b, 1, "/bin/sh", 7);
    pbc_bytes(b, 2, "sh", 2);
}
static void exit_body(struct buf *b)
{
    pbc_u64(b, 1, POISON & 0xffffffff);
    pbc_u64(b, 3, POISON);
}
static void conn_f4_fixed(struct buf *b)
{
    pbc_u64(b, 1, 1);
    pbc_fixed64(b, 4, POISON);
}
static void exec_group(struct buf *b)
{
    pbc_key(b, 2, 3); /* start group: not proto3 */
}
static void exec_cut(struct buf *b)
{
    pbc_key(b, 1, 2);
    pbc_varint(b, 1000); /* longer than what follows */
    buf_append(b, "x", 1);
}
static void exec_merge(struct buf *b)
{
    /* Filled in by the caller: two exec details messages. */
    pbc_bytes(b, 2, "first", 5);
}
static void drop_bad_utf8(struct buf *b)
{
    pbc_u64(b, 1, 2);
    pbc_bytes(b, 2, "\xff\xfe\x80", 3);
    pbc_bytes(b, 3, "sym\xc0\xaf+0x1", 9);
}

static void close_body(struct buf *b)
{
    pbc_u64(b, 1, 1); /* client */
    pbc_u64(b, 3, 5000);
    pbc_u64(b, 4, 100);
}
static void close_again(struct buf *b)
{
    struct buf d;
    buf_init(&d);
    pbc_u64(&d, 2, 2); /* reset received */
    pbc_u64(&d, 3, 7000);
    pbc_u64(&d, 5, 200);
    pbc_bytes(b, D_CLOSE, d.data, d.len);
    buf_free(&d);
}
static void exec_then_close(struct buf *b)
{
    struct buf d;
    buf_init(&d);
    exec_body(&d);
    pbc_bytes(b, D_EXEC, d.data, d.len);
    buf_free(&d);
    close_again(b);
}
static void close_role_3(struct buf *b)
{
    pbc_u64(b, 1, 4); /* past DNS_STATUS_UNKNOWN */
}
static void close_role_minus_1(struct buf *b)
{
    pbc_u64(b, 1, (uint64_t)-1); /* int32 -1 as protobuf writes it: ten bytes */
}
static void close_reset_past_32_bits(struct buf *b)
{
    pbc_u64(b, 2, (1ull << 32) | 1); /* protobuf reads an enum's low 32 bits: 1 */
}
static void close_retransmits_past_32_bits(struct buf *b)
{
    pbc_u64(b, 6, POISON); /* uint32: protobuf keeps the low 32 bits */
}
static void conn_error(struct buf *b)
{
    pbc_u64(b, 1, 2);
    pbc_bytes(b, 3, "refused", 7);
}
static void dns_body(struct buf *b)
{
    pbc_u64(b, 1, 1); /* answered */
    pbc_bytes(b, 2, "svc.test", 8);
    pbc_u64(b, 3, 1);
    pbc_bytes(b, 5, "10.0.0.1", 8);
    pbc_u64(b, 6, 1200);
    pbc_u64(b, 7, 4242);
}
static void dns_17_answers(struct buf *b)
{
    dns_body(b);
    for (int i = 0; i < 16; i++)
        pbc_bytes(b, 5, "10.0.0.2", 8);
}
static void dns_nul_answer(struct buf *b)
{
    dns_body(b);
    pbc_bytes(b, 5, "evil\0.test", 10);
}
static void dns_empty_answer(struct buf *b)
{
    dns_body(b);
    pbc_bytes(b, 5, "", 0);
}
static void dns_status_5(struct buf *b)
{
    pbc_u64(b, 1, 5); /* past DNS_STATUS_FAILED */
}
static void dns_type_past_16_bits(struct buf *b)
{
    pbc_u64(b, 3, 70000);
}
static void pod_every_field(struct buf *b)
{
    static const uint8_t v4[4] = {10, 1, 0, 5}, v6[16] = {0xfd, 0, [15] = 5};
    pbc_bytes(b, 2, "web-0", 5);
    pbc_bytes(b, 3, "shop", 4);
    pbc_bytes(b, 6, "web", 3);
    pbc_bytes(b, 7, "StatefulSet", 11);
    pbc_bytes(b, 8, "web-app", 7);
    pbc_bytes(b, 9, v4, 4);
    pbc_bytes(b, 9, v6, 16);
    pbc_u64(b, 10, 1);
}
static void pod_ip_17_bytes(struct buf *b)
{
    static const uint8_t v[17] = {0xfd};
    pbc_bytes(b, 2, "web-0", 5);
    pbc_bytes(b, 9, v, 17);
}
static void pod_ip_empty(struct buf *b)
{
    static const uint8_t v4[4] = {10, 1, 0, 5};
    pbc_bytes(b, 9, v4, 4);
    pbc_bytes(b, 9, "", 0);
}

static const struct shape shapes[] = {
    {"exec details with field 19 (exit's union slot)", T_EXEC, D_EXEC, exec_f19, 1, 0},
    {"exec details with fields 17 and 18", T_EXEC, D_EXEC, exec_f17_f18, 1, 0},
    {"drop details with field 35", T_DROP, D_DROP, drop_f35, 1, 0},
    {"exec details with a field number past 32 bits", T_EXEC, D_EXEC, exec_wrap32, 0, 0},
    {"exec details with field 2^29-1", T_EXEC, D_EXEC, exec_max_field, 1, 0},
    {"exit event carrying exec details", T_EXIT, D_EXEC, exec_body, 0, 0},
    {"exec event carrying exit details", T_EXEC, D_EXIT, exit_body, 0, 0},
    {"accept event carrying drop details", T_ACCEPT, D_DROP, drop_f35, 0, 0},
    {"connection details with a fixed64 field 4", T_CONN, D_CONN, conn_f4_fixed, 1, 0},
    {"exec details with a group", T_EXEC, D_EXEC, exec_group, 0, 0},
    {"exec details cut short", T_EXEC, D_EXEC, exec_cut, 0, 0},
    {"the same hostile exec event twice", T_EXEC, D_EXEC, exec_f19, 1, 1},
    {"exec details given twice (merged)", T_EXEC, D_EXEC, exec_merge, 1, 0},
    {"drop strings that are not UTF-8", T_DROP, D_DROP, drop_bad_utf8, 1, 0},
    {"an event type from the poison value", POISON, 0, NULL, 0, 0},
    {"exit event carrying close details", T_EXIT, D_CLOSE, close_body, 0, 0},
    {"close event carrying connection details", T_CLOSE, D_CONN, conn_error, 0, 0},
    {"close details given twice (merged)", T_CLOSE, D_CLOSE, close_body, 1, 0, close_again},
    {"close, exec, then close details again", T_CLOSE, D_CLOSE, close_body, 1, 0, exec_then_close},
    {"close details with role 3", T_CLOSE, D_CLOSE, close_role_3, 0, 0},
    {"close details with role -1", T_CLOSE, D_CLOSE, close_role_minus_1, 0, 0},
    {"close details with reset 2^32+1", T_CLOSE, D_CLOSE, close_reset_past_32_bits, 1, 0},
    {"close details with retransmits past 32 bits", T_CLOSE, D_CLOSE,
     close_retransmits_past_32_bits, 1, 0},
    {"connection details with an error", T_CONN, D_CONN, conn_error, 1, 0},
    {"dns details of an answered query", T_DNS, D_DNS, dns_body, 1, 0},
    {"dns details with 17 answers", T_DNS, D_DNS, dns_17_answers, 0, 0},
    {"dns answer with a NUL byte", T_DNS, D_DNS, dns_nul_answer, 0, 0},
    {"dns answer that is empty", T_DNS, D_DNS, dns_empty_answer, 0, 0},
    {"dns details with status 5", T_DNS, D_DNS, dns_status_5, 0, 0},
    {"dns details with query_type 70000", T_DNS, D_DNS, dns_type_past_16_bits, 0, 0},
    {"close event carrying dns details", T_CLOSE, D_DNS, dns_body, 0, 0},
    {"close event referring to a full pod-table entry", T_CLOSE, D_CLOSE, close_body, 1, 0, NULL,
     pod_every_field},
    {"pod-table ip entry of 17 bytes", T_CLOSE, D_CLOSE, close_body, 1, 0, NULL, pod_ip_17_bytes,
     1},
    {"pod-table ip entry of 0 bytes", T_CLOSE, D_CLOSE, close_body, 1, 0, NULL, pod_ip_empty, 1},
};

/* The shapes whose `refused` is as asked. */
static size_t craft(struct pb_craft *out, size_t max, const char *node, uint64_t seq,
                    uint64_t now_ns, int refused)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]) && n < max; i++) {
        const struct shape *s = &shapes[i];
        if (s->refused != refused)
            continue;
        size_t k = n++;
        struct pb_craft *c = &out[k];
        struct buf body, more;
        uint64_t id = 0x0bad000000000000ull + (seq + k) * 16;
        buf_init(&body);
        buf_init(&more);
        buf_init(&c->wire);
        if (s->body)
            s->body(&body);
        if (s->more)
            s->more(&more);
        c->name = s->name;
        c->first_id = id;
        if (s->pod) {
            struct buf pod;
            buf_init(&pod);
            s->pod(&pod);
            pbc_bytes(&c->wire, F_PODS, pod.data, pod.len);
            buf_free(&pod);
        }
        good_exit(&c->wire, id++, now_ns);
        hostile(&c->wire, id++, s->type, s->det, &body, &more, s->pod != NULL, now_ns);
        if (s->twice)
            hostile(&c->wire, id++, s->type, s->det, &body, &more, s->pod != NULL, now_ns);
        if (s->body == exec_merge) {
            /* A second exec details message inside the same event: protobuf merges them. */
            struct buf ev;
            buf_init(&ev);
            event_head(&ev, id++, T_EXEC, now_ns);
            pbc_bytes(&ev, D_EXEC, body.data, body.len);
            struct buf second;
            buf_init(&second);
            pbc_bytes(&second, 1, "/bin/merged", 11);
            pbc_bytes(&second, 2, "second", 6);
            pbc_bytes(&ev, D_EXEC, second.data, second.len);
            add_event(&c->wire, &ev);
            buf_free(&ev);
            buf_free(&second);
        }
        good_exit(&c->wire, id++, now_ns);
        meta(&c->wire, node, seq + k, now_ns);
        size_t hostile_events = (s->twice ? 2 : 1) + (s->body == exec_merge ? 1 : 0);
        c->valid = 2 + (s->valid ? hostile_events : 0);
        c->rejected = s->valid ? 0 : hostile_events;
        c->refused = s->refused;
        buf_free(&body);
        buf_free(&more);
    }
    return n;
}

size_t pb_craft_hostile(struct pb_craft *out, size_t max, const char *node, uint64_t seq,
                        uint64_t now_ns)
{
    return craft(out, max, node, seq, now_ns, 0);
}

size_t pb_craft_refused(struct pb_craft *out, size_t max, const char *node, uint64_t seq,
                        uint64_t now_ns)
{
    return craft(out, max, node, seq, now_ns, 1);
}

void pb_craft_free(struct pb_craft *c)
{
    buf_free(&c->wire);
}

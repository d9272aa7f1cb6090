/*
 * The fast protobuf codec: pkg/events.proto written and read by hand,
 * straight between struct event and the wire, with no intermediate
 * Ebpfmonitor__Event. The publisher encodes with it and every batch is
 * decoded with it first; the reference codec (event_pb_ref.c, protobuf-c)
 * is what it must agree with byte for byte and event for event.
 * tests/bench/bench_codec.c measures what it buys.
 *
 * When you change events.proto, update every one of these (the tests and
 * the fuzz target catch a missed one only if they exercise the new field):
 *
 *   1. pkg/events.proto: a new field number, never a reused one; proto3
 *      scalars only (no optional/groups), or the fast paths below must learn
 *      presence. Then struct event / event_k8s / event_batch_meta (event.h),
 *      and event_clear(), event_copy() and event_equal() (event.c) for it.
 *   2. Reference encoder, event_pb_ref.c: pb_fill() (Event and details),
 *      event_batch_encode() (EventBatch).
 *   3. Fast encoder, this file: plan_event()/plan_details() size a field and
 *      write_event()/write_details() write it, in field-number order as
 *      protobuf-c does (test encoder_writes_what_protobuf_c_writes compares
 *      the bytes); EventBatch: event_batch_append_meta().
 *   4. Reference decoder, event_pb_ref.c: to_event() (validation first, then
 *      the copy), ref_batch_meta() (metadata, pod table).
 *   5. Fast decoder, this file: event_pb_field_wt[] (event_pb.c, with
 *      EVENT_PB_MAX_FIELD; test_event_pb checks it against the descriptor)
 *      and batch_field_wt() (the wire type of every field number; an
 *      unlisted number falls back to the reference path, which is slow but
 *      still correct), fast_event(), the
 *      details readers fast_conn() ... fast_exit(), fast_batch_decode()'s
 *      first pass. Values the reference refuses (out of range, NUL in a
 *      string) must be declined here too.
 *   6. A new event type: enum event_type and event_type_name() (event.c),
 *      EventType and the _Static_assert in event_pb.c, and which details it
 *      carries: event_pb_details_field() (event_pb.c), the switches of
 *      plan_details()/write_details(). plan_event() writes a details
 *      message for every type but EVENT_ACCEPT: a type without details must
 *      be excluded there too.
 *   7. A new details kind (oneof member): its reader beside fast_conn() and
 *      its case in fast_details_field() and fast_event()'s switch;
 *      EVENT_PB_DETAILS_FIRST..LAST and event_pb_is_details_num()
 *      (event_pb_internal.h, which merge_details() uses: the range skips
 *      pod_ref, 24), and event_pb_field_wt[]; write_event() writes a details
 *      field numbered past 24 after pod_ref, as protobuf-c does; the union
 *      event_pb_details (event_pb.h); details_name() and to_event()'s
 *      switch (event_pb_ref.c).
 *   8. A new attribution field (event_k8s, PodRef and Event's inline copy):
 *      podref_size()/write_podref() (pod_strings()) and the reference
 *      event_pb_podref_from_k8s() (event_pb_ref.c), k8s_same()/k8s_hash()/
 *      k8s_empty(), the inline k8s arrays of plan_event() and fast_event(),
 *      fast_podref()'s field range, event_pb_pod_fill() (event_pb.c),
 *      ref_batch_meta() and to_event()'s intern_field() slots
 *      (event_pb_ref.c). A field only the pod table carries (app, ips,
 *      host_network) is lost by an event written inline.
 *   9. The JSON codec, pkg/event_json.c (writer and parser), and its tests.
 *  10. Tests: tests/test_event_pb.c (make_events(), random_event(): set
 *      the new field so round trips and the byte comparison cover it;
 *      podref_matches_protobuf_c for a PodRef field),
 *      tests/helpers/pb_craft.c (hostile shapes for a new details kind:
 *      wrong kind, repeated, merged, out-of-range values; a broken pod-table
 *      entry among pb_craft_refused()'s), tests/fuzz/fuzz_batch.c (meta_equal()
 *      for a new batch field); then regenerate the seed corpus:
 *      EBPF_MONITOR_WRITE_SEEDS=tests/fuzz/corpus/fuzz_batch
 *      build/tests/test_event_pb --filter 'event_pb/fuzz_seeds_decode'.
 *  11. tests/js/sub.mjs decodes with protobufjs from events.proto itself;
 *      only the end-to-end tests that read its output need the new field.
 *  12. tests/bench/bench_codec.c: put the new event or field in its mix
 *      (bench_event_mix() in tests/bench/bench_aggregator_events.h), so the
 *      A/B figures keep describing real batches.
 *  13. Beyond the codec: cmd/agent/capture.c (record -> event) produces the
 *      field; cmd/aggregator/cluster.c's reply goes through
 *      event_pb_from_event()/event_pb_to_event(), so only its tests change.
 */
#include "event_pb.h"

#include "errmsg.h"
#include "event_pb_internal.h"
#include "pb_wire.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- encoder ---- */

/*
 * The publisher encodes every event as it arrives, and protobuf-c's generic
 * packer (descriptor walk per field, plus filling an Ebpfmonitor__Event
 * first) cost about as much as publishing. This writes the same bytes
 * protobuf-c would (fields in number order, proto3 defaults left out, an
 * empty oneof sub-message still written) straight from struct event, after a
 * sizing pass so lengths are known up front.
 */

/* Optional scalar: tag + varint, left out when zero (proto3). */
static inline size_t sz_u64(uint32_t tag, uint64_t v)
{
    return v ? pb_tag_size(tag) + pb_varint_size(v) : 0;
}

static inline uint8_t *put_u64(uint8_t *p, uint32_t tag, uint64_t v)
{
    if (v) {
        p = pb_put_varint(p, tag);
        p = pb_put_varint(p, v);
    }
    return p;
}

/* Length-delimited field, left out when empty. */
static inline size_t sz_len(uint32_t tag, size_t len)
{
    return len ? pb_tag_size(tag) + pb_varint_size(len) + len : 0;
}

/* A length-delimited field even when empty (an element of a repeated field). */
static inline uint8_t *put_bytes(uint8_t *p, uint32_t tag, const void *data, size_t len)
{
    p = pb_put_varint(p, tag);
    p = pb_put_varint(p, len);
    if (len)
        memcpy(p, data, len);
    return p + len;
}

static inline uint8_t *put_len(uint8_t *p, uint32_t tag, const void *data, size_t len)
{
    return len ? put_bytes(p, tag, data, len) : p;
}

static inline uint32_t zigzag32(int32_t v)
{
    return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31);
}

static inline size_t str_len(const char *s)
{
    return s ? strlen(s) : 0;
}

/* The Event's inline attribution: k8s_* 10..14, then k8s_workload(_kind) 26..27. */
#define ENC_K8S 7
static inline uint32_t k8s_field(int i)
{
    return i < 5 ? 10 + (uint32_t)i : 26 + (uint32_t)(i - 5);
}

/* What the writing pass needs from the sizing pass. */
struct enc_plan {
    size_t cmd_len, node_len, alen, fname_len, det_len, size;
    const char *node; /* NULL when the event's node is the batch's */
    const char *k8s[ENC_K8S];
    size_t k8s_len[ENC_K8S];
    size_t peer_len[7];
    uint32_t pod_ref;
};

/* peer_pod .. peer_dns, fields 28..34 in order. */
static inline void peer_strings(const struct event_peer *pe, const char *s[7])
{
    s[0] = pe->pod;
    s[1] = pe->namespace;
    s[2] = pe->workload;
    s[3] = pe->workload_kind;
    s[4] = pe->node;
    s[5] = pe->service;
    s[6] = pe->dns;
}

static size_t plan_details(const struct event *e, struct enc_plan *pl)
{
    size_t n = 0;
    switch (e->type) {
    case EVENT_CONNECTION:
        n = sz_u64(PB_TAG(1, PB_WT_VARINT), e->status) +
            sz_u64(PB_TAG(2, PB_WT_VARINT), e->u.conn.latency_ns) +
            sz_len(PB_TAG(3, PB_WT_LEN), str_len(e->u.conn.error));
        break;
    case EVENT_CLOSE:
        n = sz_u64(PB_TAG(1, PB_WT_VARINT), e->u.close.role) +
            sz_u64(PB_TAG(2, PB_WT_VARINT), e->u.close.reset) +
            sz_u64(PB_TAG(3, PB_WT_VARINT), e->u.close.duration_ns) +
            sz_u64(PB_TAG(4, PB_WT_VARINT), e->u.close.bytes_sent) +
            sz_u64(PB_TAG(5, PB_WT_VARINT), e->u.close.bytes_received) +
            sz_u64(PB_TAG(6, PB_WT_VARINT), e->u.close.retransmits) +
            sz_u64(PB_TAG(7, PB_WT_VARINT), e->u.close.srtt_us);
        break;
    case EVENT_PACKET_DROP:
        n = sz_u64(PB_TAG(1, PB_WT_VARINT), e->u.drop.reason_code) +
            sz_len(PB_TAG(2, PB_WT_LEN), str_len(e->u.drop.reason)) +
            sz_len(PB_TAG(3, PB_WT_LEN), str_len(e->u.drop.location)) +
            sz_u64(PB_TAG(4, PB_WT_VARINT), e->u.drop.suppressed);
        break;
    case EVENT_EXEC: {
        pl->fname_len = str_len(e->u.exec.filename);
        n = sz_len(PB_TAG(1, PB_WT_LEN), pl->fname_len);
        /* argv: every element is written, empty ones too (repeated field). */
        const char *p = e->u.exec.args, *arg;
        size_t len;
        while (event_pb_args_next(e, &p, &arg, &len))
            n += 1 + pb_varint_size(len) + len;
        if (e->u.exec.args_truncated)
            n += 2;
        if (e->u.exec.filename_truncated)
            n += 2;
        if (e->u.exec.has_euid) /* a oneof member: written when set, 0 too */
            n += 1 + pb_varint_size(e->u.exec.euid);
        break;
    }
    case EVENT_EXIT:
        n = sz_u64(PB_TAG(1, PB_WT_VARINT), zigzag32(e->u.exit.exit_code)) +
            sz_u64(PB_TAG(2, PB_WT_VARINT), zigzag32(e->u.exit.signal)) +
            sz_u64(PB_TAG(3, PB_WT_VARINT), e->u.exit.duration_ns) +
            (e->u.exit.core_dumped ? 2 : 0);
        break;
    case EVENT_DNS: {
        pl->fname_len = str_len(e->u.dns.query);
        n = sz_u64(PB_TAG(1, PB_WT_VARINT), event_pb_dns_status(e->status)) +
            sz_len(PB_TAG(2, PB_WT_LEN), pl->fname_len) +
            sz_u64(PB_TAG(3, PB_WT_VARINT), e->u.dns.query_type) +
            sz_u64(PB_TAG(4, PB_WT_VARINT), e->u.dns.rcode) +
            sz_u64(PB_TAG(6, PB_WT_VARINT), e->u.dns.latency_ns) +
            sz_u64(PB_TAG(7, PB_WT_VARINT), e->u.dns.transaction_id) + (e->u.dns.tc ? 2 : 0) +
            (e->u.dns.answers_truncated ? 2 : 0) +
            sz_len(PB_TAG(10, PB_WT_LEN), str_len(e->u.dns.error)) +
            sz_u64(PB_TAG(11, PB_WT_VARINT), e->u.dns.opcode);
        /* answers: every element is written (repeated field) */
        const char *p = e->u.dns.answers, *ans;
        size_t len;
        while (event_pb_args_next(e, &p, &ans, &len))
            n += 1 + pb_varint_size(len) + len;
        break;
    }
    }
    return n;
}

/* Sizes the Event message for e; -EINVAL for an invalid type. */
static int plan_event(const struct event *e, const char *batch_node, uint32_t pod_ref,
                      struct enc_plan *pl)
{
    if (e->type == EVENT_TYPE_NONE || e->type >= EVENT_TYPE_COUNT)
        return -EINVAL;
    size_t n = (e->id ? 9 : 0) + 2 /* type, never 0 */;
    n += sz_u64(PB_TAG(3, PB_WT_VARINT), e->timestamp_ns) +
         sz_u64(PB_TAG(4, PB_WT_VARINT), e->pid) + sz_u64(PB_TAG(5, PB_WT_VARINT), e->ppid) +
         sz_u64(PB_TAG(6, PB_WT_VARINT), e->uid);
    pl->cmd_len = strnlen(e->command, sizeof(e->command));
    n += sz_len(PB_TAG(7, PB_WT_LEN), pl->cmd_len) + sz_u64(PB_TAG(8, PB_WT_VARINT), e->cgroup_id);
    pl->node = NULL;
    pl->node_len = 0;
    if (e->node && !(batch_node && (e->node == batch_node || strcmp(e->node, batch_node) == 0))) {
        pl->node = e->node;
        pl->node_len = strlen(e->node);
        n += sz_len(PB_TAG(9, PB_WT_LEN), pl->node_len);
    }
    pl->pod_ref = pod_ref;
    const char *k8s[ENC_K8S] = {e->k8s.node_name,    e->k8s.pod_name, e->k8s.namespace,
                                e->k8s.container_id, e->k8s.pod_uid,  e->k8s.workload,
                                e->k8s.workload_kind};
    for (int i = 0; i < ENC_K8S; i++) {
        pl->k8s[i] = pod_ref ? NULL : k8s[i];
        pl->k8s_len[i] = str_len(pl->k8s[i]);
        n += sz_len(PB_TAG(k8s_field(i), PB_WT_LEN), pl->k8s_len[i]);
    }
    const char *peer[7];
    peer_strings(&e->peer, peer);
    for (int i = 0; i < 7; i++) {
        pl->peer_len[i] = str_len(peer[i]);
        n += sz_len(PB_TAG(28 + i, PB_WT_LEN), pl->peer_len[i]);
    }
    pl->alen = e->family == EVENT_FAMILY_IPV4 ? 4 : e->family == EVENT_FAMILY_IPV6 ? 16 : 0;
    if (pl->alen)
        n += 2 * (2 + pl->alen) + 1; /* tag 15 is one byte, tag 16 two */
    n += sz_u64(PB_TAG(17, PB_WT_VARINT), e->sport) + sz_u64(PB_TAG(18, PB_WT_VARINT), e->dport) +
         sz_u64(PB_TAG(19, PB_WT_VARINT), e->protocol);
    pl->fname_len = 0;
    pl->det_len = plan_details(e, pl);
    if (e->type != EVENT_ACCEPT)
        n += 2 + pb_varint_size(pl->det_len) + pl->det_len;
    n += sz_u64(PB_TAG(EVENT_PB_POD_REF, PB_WT_VARINT), pod_ref);
    pl->size = n;
    return 0;
}

static uint8_t *write_details(uint8_t *p, const struct event *e, const struct enc_plan *pl)
{
    switch (e->type) {
    case EVENT_CONNECTION:
        p = pb_put_varint(p, PB_TAG(EBPFMONITOR__EVENT__DETAILS_CONNECTION, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_u64(p, PB_TAG(1, PB_WT_VARINT), e->status);
        p = put_u64(p, PB_TAG(2, PB_WT_VARINT), e->u.conn.latency_ns);
        p = put_len(p, PB_TAG(3, PB_WT_LEN), e->u.conn.error, str_len(e->u.conn.error));
        break;
    case EVENT_CLOSE:
        p = pb_put_varint(p, PB_TAG(EBPFMONITOR__EVENT__DETAILS_CLOSE, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_u64(p, PB_TAG(1, PB_WT_VARINT), e->u.close.role);
        p = put_u64(p, PB_TAG(2, PB_WT_VARINT), e->u.close.reset);
        p = put_u64(p, PB_TAG(3, PB_WT_VARINT), e->u.close.duration_ns);
        p = put_u64(p, PB_TAG(4, PB_WT_VARINT), e->u.close.bytes_sent);
        p = put_u64(p, PB_TAG(5, PB_WT_VARINT), e->u.close.bytes_received);
        p = put_u64(p, PB_TAG(6, PB_WT_VARINT), e->u.close.retransmits);
        p = put_u64(p, PB_TAG(7, PB_WT_VARINT), e->u.close.srtt_us);
        break;
    case EVENT_PACKET_DROP:
        p = pb_put_varint(p, PB_TAG(EBPFMONITOR__EVENT__DETAILS_DROP, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_u64(p, PB_TAG(1, PB_WT_VARINT), e->u.drop.reason_code);
        p = put_len(p, PB_TAG(2, PB_WT_LEN), e->u.drop.reason, str_len(e->u.drop.reason));
        p = put_len(p, PB_TAG(3, PB_WT_LEN), e->u.drop.location, str_len(e->u.drop.location));
        p = put_u64(p, PB_TAG(4, PB_WT_VARINT), e->u.drop.suppressed);
        break;
    case EVENT_EXEC: {
        p = pb_put_varint(p, PB_TAG(EBPFMONITOR__EVENT__DETAILS_EXEC, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_len(p, PB_TAG(1, PB_WT_LEN), e->u.exec.filename, pl->fname_len);
        const char *a = e->u.exec.args, *arg;
        size_t len;
        while (event_pb_args_next(e, &a, &arg, &len))
            p = put_bytes(p, PB_TAG(2, PB_WT_LEN), arg, len);
        if (e->u.exec.args_truncated) {
            *p++ = PB_TAG(3, PB_WT_VARINT);
            *p++ = 1;
        }
        if (e->u.exec.filename_truncated) {
            *p++ = PB_TAG(4, PB_WT_VARINT);
            *p++ = 1;
        }
        if (e->u.exec.has_euid) {
            *p++ = PB_TAG(5, PB_WT_VARINT);
            p = pb_put_varint(p, e->u.exec.euid);
        }
        break;
    }
    case EVENT_EXIT:
        p = pb_put_varint(p, PB_TAG(EBPFMONITOR__EVENT__DETAILS_EXIT, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_u64(p, PB_TAG(1, PB_WT_VARINT), zigzag32(e->u.exit.exit_code));
        p = put_u64(p, PB_TAG(2, PB_WT_VARINT), zigzag32(e->u.exit.signal));
        p = put_u64(p, PB_TAG(3, PB_WT_VARINT), e->u.exit.duration_ns);
        if (e->u.exit.core_dumped) {
            *p++ = PB_TAG(4, PB_WT_VARINT);
            *p++ = 1;
        }
        break;
    case EVENT_DNS: {
        p = pb_put_varint(p, PB_TAG(EVENT_PB_DNS, PB_WT_LEN));
        p = pb_put_varint(p, pl->det_len);
        p = put_u64(p, PB_TAG(1, PB_WT_VARINT), event_pb_dns_status(e->status));
        p = put_len(p, PB_TAG(2, PB_WT_LEN), e->u.dns.query, pl->fname_len);
        p = put_u64(p, PB_TAG(3, PB_WT_VARINT), e->u.dns.query_type);
        p = put_u64(p, PB_TAG(4, PB_WT_VARINT), e->u.dns.rcode);
        const char *a = e->u.dns.answers, *ans;
        size_t len;
        while (event_pb_args_next(e, &a, &ans, &len))
            p = put_bytes(p, PB_TAG(5, PB_WT_LEN), ans, len);
        p = put_u64(p, PB_TAG(6, PB_WT_VARINT), e->u.dns.latency_ns);
        p = put_u64(p, PB_TAG(7, PB_WT_VARINT), e->u.dns.transaction_id);
        if (e->u.dns.tc) {
            *p++ = PB_TAG(8, PB_WT_VARINT);
            *p++ = 1;
        }
        if (e->u.dns.answers_truncated) {
            *p++ = PB_TAG(9, PB_WT_VARINT);
            *p++ = 1;
        }
        p = put_len(p, PB_TAG(10, PB_WT_LEN), e->u.dns.error, str_len(e->u.dns.error));
        p = put_u64(p, PB_TAG(11, PB_WT_VARINT), e->u.dns.opcode);
        break;
    }
    }
    return p;
}

/* Writes the Event message planned in pl (pl->size bytes). */
static uint8_t *write_event(uint8_t *p, const struct event *e, const struct enc_plan *pl)
{
    if (e->id) {
        *p++ = PB_TAG(1, PB_WT_I64);
        p = pb_put_fixed64(p, e->id);
    }
    *p++ = PB_TAG(2, PB_WT_VARINT);
    *p++ = e->type;
    p = put_u64(p, PB_TAG(3, PB_WT_VARINT), e->timestamp_ns);
    p = put_u64(p, PB_TAG(4, PB_WT_VARINT), e->pid);
    p = put_u64(p, PB_TAG(5, PB_WT_VARINT), e->ppid);
    p = put_u64(p, PB_TAG(6, PB_WT_VARINT), e->uid);
    p = put_len(p, PB_TAG(7, PB_WT_LEN), e->command, pl->cmd_len);
    p = put_u64(p, PB_TAG(8, PB_WT_VARINT), e->cgroup_id);
    p = put_len(p, PB_TAG(9, PB_WT_LEN), pl->node, pl->node_len);
    for (int i = 0; i < 5; i++)
        p = put_len(p, PB_TAG(k8s_field(i), PB_WT_LEN), pl->k8s[i], pl->k8s_len[i]);
    if (pl->alen) {
        p = put_len(p, PB_TAG(15, PB_WT_LEN), e->saddr, pl->alen);
        p = put_len(p, PB_TAG(16, PB_WT_LEN), e->daddr, pl->alen);
    }
    p = put_u64(p, PB_TAG(17, PB_WT_VARINT), e->sport);
    p = put_u64(p, PB_TAG(18, PB_WT_VARINT), e->dport);
    p = put_u64(p, PB_TAG(19, PB_WT_VARINT), e->protocol);
    /* Field-number order: close details (25) come after pod_ref (24), dns details (35)
     * after the peer fields (28..34). */
    if (e->type != EVENT_CLOSE && e->type != EVENT_DNS)
        p = write_details(p, e, pl);
    p = put_u64(p, PB_TAG(EVENT_PB_POD_REF, PB_WT_VARINT), pl->pod_ref);
    if (e->type == EVENT_CLOSE)
        p = write_details(p, e, pl);
    for (int i = 5; i < ENC_K8S; i++)
        p = put_len(p, PB_TAG(k8s_field(i), PB_WT_LEN), pl->k8s[i], pl->k8s_len[i]);
    const char *peer[7];
    peer_strings(&e->peer, peer);
    for (int i = 0; i < 7; i++)
        p = put_len(p, PB_TAG(28 + i, PB_WT_LEN), peer[i], pl->peer_len[i]);
    if (e->type == EVENT_DNS)
        p = write_details(p, e, pl);
    return p;
}

/* PodRef's strings, fields 1..8 in order. */
#define POD_STRS 8
static inline void pod_strings(const struct event_k8s *k, const char *s[POD_STRS])
{
    s[0] = k->node_name;
    s[1] = k->pod_name;
    s[2] = k->namespace;
    s[3] = k->container_id;
    s[4] = k->pod_uid;
    s[5] = k->workload;
    s[6] = k->workload_kind;
    s[7] = k->app;
}

/* The PodRef message for k: its strings, ips (9) from the text, host_network (10). */
static size_t podref_size(const struct event_k8s *k, size_t len[POD_STRS])
{
    const char *s[POD_STRS], *ip = k->ips;
    uint8_t addr[16];
    size_t n = 0, alen;
    pod_strings(k, s);
    for (int i = 0; i < POD_STRS; i++) {
        len[i] = str_len(s[i]);
        n += sz_len(PB_TAG(1 + i, PB_WT_LEN), len[i]);
    }
    while ((alen = event_pb_ips_next(&ip, addr)))
        n += 2 + alen;
    return n + (k->host_network ? 2 : 0);
}

static uint8_t *write_podref(uint8_t *p, const struct event_k8s *k, const size_t len[POD_STRS])
{
    const char *s[POD_STRS], *ip = k->ips;
    uint8_t addr[16];
    size_t alen;
    pod_strings(k, s);
    for (int i = 0; i < POD_STRS; i++)
        p = put_len(p, PB_TAG(1 + i, PB_WT_LEN), s[i], len[i]);
    while ((alen = event_pb_ips_next(&ip, addr)))
        p = put_bytes(p, PB_TAG(9, PB_WT_LEN), addr, alen);
    p = put_u64(p, PB_TAG(10, PB_WT_VARINT), k->host_network);
    return p;
}

void event_pb_pods_reset(struct event_pb_pods *t)
{
    t->n = 0;
    t->last = 0;
    memset(t->slot, 0, sizeof(t->slot));
}

static bool k8s_same(const struct event_k8s *a, const struct event_k8s *b)
{
    return a->node_name == b->node_name && a->pod_name == b->pod_name &&
           a->namespace == b->namespace && a->container_id == b->container_id &&
           a->pod_uid == b->pod_uid && a->workload == b->workload &&
           a->workload_kind == b->workload_kind && a->app == b->app && a->ips == b->ips &&
           a->host_network == b->host_network;
}

static unsigned k8s_hash(const struct event_k8s *k)
{
    const char *s[POD_STRS];
    pod_strings(k, s);
    uint64_t h = (uintptr_t)k->ips ^ k->host_network;
    for (int i = 0; i < POD_STRS; i++)
        h = (h ^ (uintptr_t)s[i]) * 0x9e3779b97f4a7c15ull;
    return (unsigned)(h >> 40);
}

static bool k8s_empty(const struct event_k8s *k)
{
    const char *s[POD_STRS];
    pod_strings(k, s);
    for (int i = 0; i < POD_STRS; i++)
        if (s[i])
            return false;
    return !k->ips && !k->host_network;
}

/*
 * The table entry (1-based) for e's attribution, or 0 when e has none.
 * *slot is where a new entry goes (-1 when the table is full: write inline).
 * Attributions are compared by pointer: the strings are interned, and two
 * copies of the same text only cost a second entry.
 */
static uint32_t pods_find(const struct event_pb_pods *t, const struct event_k8s *k, int *slot)
{
    *slot = -1;
    if (k8s_empty(k))
        return 0;
    if (t->last && k8s_same(&t->ref[t->last - 1], k))
        return t->last;
    unsigned mask = EVENT_PB_PODS_SLOTS - 1, i = k8s_hash(k) & mask;
    for (unsigned probe = 0; probe < EVENT_PB_PODS_SLOTS; probe++, i = (i + 1) & mask) {
        unsigned r = t->slot[i];
        if (!r) {
            if (t->n < EVENT_PB_PODS_MAX)
                *slot = (int)i;
            return 0;
        }
        if (k8s_same(&t->ref[r - 1], k))
            return r;
    }
    return 0;
}

static int append_event(struct buf *out, const struct event *e, const char *batch_node,
                        struct event_pb_pods *pods)
{
    struct enc_plan pl;
    uint32_t ref = 0;
    int slot = -1;
    size_t pod_len[POD_STRS], pod_size = 0, need = 0;

    if (pods && (ref = pods_find(pods, &e->k8s, &slot)) == 0 && slot >= 0) {
        /* A new attribution: a PodRef entry goes before the event. */
        ref = pods->n + 1;
        pod_size = podref_size(&e->k8s, pod_len);
        need = 1 + pb_varint_size(pod_size) + pod_size;
    }
    int rc = plan_event(e, batch_node, ref, &pl);
    if (rc)
        return rc;
    need += 1 + pb_varint_size(pl.size) + pl.size;
    if (out->oom || !buf_reserve(out, need))
        return -ENOMEM;
    uint8_t *p = (uint8_t *)out->data + out->len;
    if (slot >= 0) {
        *p++ = PB_TAG(10, PB_WT_LEN);
        p = pb_put_varint(p, pod_size);
        p = write_podref(p, &e->k8s, pod_len);
        pods->ref[pods->n++] = e->k8s;
        pods->slot[slot] = (uint8_t)ref;
    }
    if (pods && ref)
        pods->last = ref;
    *p++ = PB_TAG(4, PB_WT_LEN);
    p = pb_put_varint(p, pl.size);
    p = write_event(p, e, &pl);
    out->len = (size_t)((char *)p - out->data);
    out->data[out->len] = '\0';
    return 0;
}

int event_batch_append_event(struct buf *out, const struct event *e, const char *batch_node)
{
    return append_event(out, e, batch_node, NULL);
}

int event_batch_append_event_pods(struct buf *out, const struct event *e, const char *batch_node,
                                  struct event_pb_pods *pods)
{
    return append_event(out, e, batch_node, pods);
}

int event_batch_append_meta(struct buf *out, const struct event_batch_meta *meta)
{
    size_t node = str_len(meta->node), inst = str_len(meta->agent_instance),
           pod = str_len(meta->pod_name), ns = str_len(meta->pod_namespace);
    size_t need = sz_len(PB_TAG(1, PB_WT_LEN), node) + sz_len(PB_TAG(2, PB_WT_LEN), inst) +
                  sz_u64(PB_TAG(3, PB_WT_VARINT), meta->sequence) +
                  sz_u64(PB_TAG(5, PB_WT_VARINT), meta->kernel_drops) +
                  sz_u64(PB_TAG(6, PB_WT_VARINT), meta->agent_drops) +
                  sz_u64(PB_TAG(7, PB_WT_VARINT), meta->sent_at_ns) +
                  sz_len(PB_TAG(8, PB_WT_LEN), pod) + sz_len(PB_TAG(9, PB_WT_LEN), ns) +
                  sz_u64(PB_TAG(11, PB_WT_VARINT), meta->kernel_missed) +
                  sz_u64(PB_TAG(12, PB_WT_VARINT), meta->instance_started_ns);
    if (out->oom || !buf_reserve(out, need))
        return -ENOMEM;
    uint8_t *p = (uint8_t *)out->data + out->len;
    p = put_len(p, PB_TAG(1, PB_WT_LEN), meta->node, node);
    p = put_len(p, PB_TAG(2, PB_WT_LEN), meta->agent_instance, inst);
    p = put_u64(p, PB_TAG(3, PB_WT_VARINT), meta->sequence);
    p = put_u64(p, PB_TAG(5, PB_WT_VARINT), meta->kernel_drops);
    p = put_u64(p, PB_TAG(6, PB_WT_VARINT), meta->agent_drops);
    p = put_u64(p, PB_TAG(7, PB_WT_VARINT), meta->sent_at_ns);
    p = put_len(p, PB_TAG(8, PB_WT_LEN), meta->pod_name, pod);
    p = put_len(p, PB_TAG(9, PB_WT_LEN), meta->pod_namespace, ns);
    p = put_u64(p, PB_TAG(11, PB_WT_VARINT), meta->kernel_missed);
    p = put_u64(p, PB_TAG(12, PB_WT_VARINT), meta->instance_started_ns);
    out->len += need;
    out->data[out->len] = '\0';
    return 0;
}

/* ---- decoder: the wire format straight into struct event ---- */

/*
 * protobuf-c's generic unpacker spends most of a batch decode building
 * intermediate structs. Well-formed batches, which is nearly all of them, are
 * read here straight from the wire. Whatever this path does not handle
 * itself (an unknown field, a wrong wire type, a value out of range, a
 * repeated details message) goes to the reference path: the whole batch when
 * its metadata or pod table is unusual, one event when only that event is.
 * Both paths therefore accept and reject exactly the same input and decode
 * it to the same events (tests/fuzz/fuzz_batch.c checks this).
 *
 * Field numbers are compared as read (up to 2^29 - 1), never truncated, and
 * each details reader knows only its own message's fields: a value from the
 * wire lands only in the union member of the event's own type.
 */
#define PB_FAST_MAX_ARGS 64

/*
 * Interns a non-empty wire string (no NUL inside, at most EVENT_NAME_MAX bytes, as the
 * reference path's intern_field()); empty means absent. false on failure.
 */
static bool fast_str(const uint8_t *data, size_t len, const char **dst)
{
    *dst = NULL;
    if (!len)
        return true;
    if (len > EVENT_NAME_MAX)
        return false;
    return (*dst = event_pb_intern_checked((const char *)data, len)) != NULL;
}

/* ConnectionDetails. */
static bool fast_conn(const struct pb_field *f, struct event *e)
{
    if (f->num == 3)
        return f->wt == PB_WT_LEN && fast_str(f->data, f->len, &e->u.conn.error);
    if (f->wt != PB_WT_VARINT)
        return false;
    switch (f->num) {
    case 1:
        if (f->v > EVENT_STATUS_ATTEMPTED)
            return false;
        e->status = (uint8_t)f->v;
        return true;
    case 2:
        e->u.conn.latency_ns = f->v;
        return true;
    default:
        return false;
    }
}

/* CloseDetails; an enum value out of range is the reference path's to refuse. */
static bool fast_close(const struct pb_field *f, struct event *e)
{
    if (f->wt != PB_WT_VARINT)
        return false;
    switch (f->num) {
    case 1:
    case 2:
        if (f->v > 2) /* EVENT_ROLE_SERVER, EVENT_RESET_RECEIVED */
            return false;
        *(f->num == 1 ? &e->u.close.role : &e->u.close.reset) = (uint8_t)f->v;
        return true;
    case 3:
        e->u.close.duration_ns = f->v;
        return true;
    case 4:
        e->u.close.bytes_sent = f->v;
        return true;
    case 5:
        e->u.close.bytes_received = f->v;
        return true;
    case 6:
    case 7:
        if (f->v > UINT32_MAX)
            return false;
        *(f->num == 6 ? &e->u.close.retransmits : &e->u.close.srtt_us) = (uint32_t)f->v;
        return true;
    default:
        return false;
    }
}

/* DropDetails. */
static bool fast_drop(const struct pb_field *f, struct event *e)
{
    switch (f->num) {
    case 1:
        if (f->wt != PB_WT_VARINT || f->v > UINT32_MAX)
            return false;
        e->u.drop.reason_code = (uint32_t)f->v;
        return true;
    case 2:
    case 3:
        return f->wt == PB_WT_LEN &&
               fast_str(f->data, f->len, f->num == 2 ? &e->u.drop.reason : &e->u.drop.location);
    case 4:
        if (f->wt != PB_WT_VARINT)
            return false;
        e->u.drop.suppressed = f->v;
        return true;
    default:
        return false;
    }
}

/* ExecDetails, gathered into x (converted by event_pb_exec_to_event() once complete). */
static bool fast_exec(const struct pb_field *f, Ebpfmonitor__ExecDetails *x)
{
    switch (f->num) {
    case 1:
        if (f->wt != PB_WT_LEN)
            return false;
        x->filename.data = (uint8_t *)f->data;
        x->filename.len = f->len;
        return true;
    case 2:
        if (f->wt != PB_WT_LEN || x->n_args == PB_FAST_MAX_ARGS)
            return false;
        x->args[x->n_args].data = (uint8_t *)f->data;
        x->args[x->n_args++].len = f->len;
        return true;
    case 3:
        if (f->wt != PB_WT_VARINT || f->v > 1)
            return false;
        x->args_truncated = f->v != 0;
        return true;
    case 4:
        if (f->wt != PB_WT_VARINT || f->v > 1)
            return false;
        x->filename_truncated = f->v != 0;
        return true;
    case 5:
        if (f->wt != PB_WT_VARINT || f->v > UINT32_MAX)
            return false;
        x->effective_uid_case = EBPFMONITOR__EXEC_DETAILS__EFFECTIVE_UID_EUID;
        x->euid = (uint32_t)f->v;
        return true;
    default:
        return false;
    }
}

#define PB_FAST_MAX_ANSWERS EVENT_DNS_ANSWERS_MAX

/* DnsDetails, gathered into x (converted by event_pb_dns_to_event() once complete), but
 * for its error, interned into e. */
static bool fast_dns(const struct pb_field *f, Ebpfmonitor__DnsDetails *x, struct event *e)
{
    if (f->num == 10)
        return f->wt == PB_WT_LEN && fast_str(f->data, f->len, &e->u.dns.error);
    if (f->num == 2 || f->num == 5) {
        if (f->wt != PB_WT_LEN)
            return false;
        if (f->num == 2) {
            x->query.data = (uint8_t *)f->data;
            x->query.len = f->len;
            return true;
        }
        if (x->n_answers == PB_FAST_MAX_ANSWERS)
            return false;
        x->answers[x->n_answers].data = (uint8_t *)f->data;
        x->answers[x->n_answers++].len = f->len;
        return true;
    }
    if (f->wt != PB_WT_VARINT)
        return false;
    switch (f->num) {
    case 1:
        if (f->v > EBPFMONITOR__DNS_STATUS__DNS_STATUS_FAILED)
            return false;
        x->status = (Ebpfmonitor__DnsStatus)f->v;
        return true;
    case 3:
    case 4:
    case 7:
        if (f->v > 65535)
            return false;
        *(f->num == 3   ? &x->query_type
          : f->num == 4 ? &x->rcode
                        : &x->transaction_id) = (uint32_t)f->v;
        return true;
    case 6:
        x->latency_ns = f->v;
        return true;
    case 11:
        if (f->v > 15)
            return false;
        x->opcode = (uint32_t)f->v;
        return true;
    case 8:
    case 9:
        if (f->v > 1)
            return false;
        *(f->num == 8 ? &x->truncated : &x->answers_truncated) = f->v != 0;
        return true;
    default:
        return false;
    }
}

/* ExitDetails (sint32 codes). */
static bool fast_exit(const struct pb_field *f, struct event *e)
{
    if (f->wt != PB_WT_VARINT)
        return false;
    switch (f->num) {
    case 1:
    case 2: {
        if (f->v > UINT32_MAX)
            return false;
        int32_t z = (int32_t)((uint32_t)f->v >> 1) ^ -(int32_t)(f->v & 1);
        *(f->num == 1 ? &e->u.exit.exit_code : &e->u.exit.signal) = z;
        return true;
    }
    case 3:
        e->u.exit.duration_ns = f->v;
        return true;
    case 4:
        if (f->v > 1)
            return false; /* the reference decoder's reading of an odd bool */
        e->u.exit.core_dumped = f->v != 0;
        return true;
    default:
        return false;
    }
}

/* One field of the details message `which`; false when the reference path must decide. */
static bool fast_details_field(unsigned which, const struct pb_field *f, struct event *e,
                               Ebpfmonitor__ExecDetails *x, Ebpfmonitor__DnsDetails *dns)
{
    switch (which) {
    case EVENT_PB_DNS:
        return fast_dns(f, dns, e);
    case EBPFMONITOR__EVENT__DETAILS_CONNECTION:
        return fast_conn(f, e);
    case EBPFMONITOR__EVENT__DETAILS_DROP:
        return fast_drop(f, e);
    case EBPFMONITOR__EVENT__DETAILS_EXEC:
        return fast_exec(f, x);
    case EBPFMONITOR__EVENT__DETAILS_EXIT:
        return fast_exit(f, e);
    case EBPFMONITOR__EVENT__DETAILS_CLOSE:
        return fast_close(f, e);
    default:
        return false;
    }
}

/* The fields of a details message into e, x or dns (which one `which` says). */
static bool details_fields(const uint8_t *data, size_t len, unsigned which, struct event *e,
                           Ebpfmonitor__ExecDetails *x, Ebpfmonitor__DnsDetails *dns)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;

    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f) || !fast_details_field(which, &f, e, x, dns))
            return false;
    }
    return true;
}

/*
 * The details message of field `which`, already checked against e->type;
 * exec and DNS details are gathered first (only the one the type needs is
 * set up: most events are neither).
 */
static bool fast_details(const uint8_t *data, size_t len, unsigned which, struct event *e)
{
    if (which == EBPFMONITOR__EVENT__DETAILS_EXEC) {
        Ebpfmonitor__ExecDetails x = EBPFMONITOR__EXEC_DETAILS__INIT;
        ProtobufCBinaryData args[PB_FAST_MAX_ARGS];
        x.args = args;
        return details_fields(data, len, which, e, &x, NULL) &&
               event_pb_exec_to_event(&x, e, NULL, 0) == 0;
    }
    if (which == EVENT_PB_DNS) {
        Ebpfmonitor__DnsDetails dns = EBPFMONITOR__DNS_DETAILS__INIT;
        ProtobufCBinaryData answers[PB_FAST_MAX_ANSWERS];
        dns.answers = answers;
        return details_fields(data, len, which, e, NULL, &dns) &&
               event_pb_dns_to_event(&dns, e, NULL, 0) == 0;
    }
    return details_fields(data, len, which, e, NULL, NULL);
}

/* One Event; false (with *e released) when the reference path must decide. */
static bool fast_event(const uint8_t *data, size_t len, const char *batch_node,
                       const struct event_k8s *pods, size_t npods, struct event *e)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    const uint8_t *saddr = NULL, *daddr = NULL, *det = NULL;
    size_t sl = 0, dl = 0, detl = 0;
    unsigned det_field = 0;
    uint64_t pod_ref = 0;

    memset(e, 0, sizeof(*e));
    e->node = batch_node;
    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f) || f.num > EVENT_PB_MAX_FIELD || f.wt != event_pb_field_wt[f.num])
            goto fail;
        switch (f.num) {
        case 1:
            e->id = f.v;
            break;
        case 2:
            if (f.v == EVENT_TYPE_NONE || f.v >= EVENT_TYPE_COUNT)
                goto fail;
            e->type = (uint8_t)f.v;
            break;
        case 3:
            e->timestamp_ns = f.v;
            break;
        case 4:
        case 5:
        case 6:
            if (f.v > UINT32_MAX)
                goto fail;
            *(f.num == 4 ? &e->pid : f.num == 5 ? &e->ppid : &e->uid) = (uint32_t)f.v;
            break;
        case 7:
            if (f.len >= sizeof(e->command) || memchr(f.data, '\0', f.len))
                goto fail;
            memset(e->command, 0, sizeof(e->command));
            memcpy(e->command, f.data, f.len);
            break;
        case 8:
            e->cgroup_id = f.v;
            break;
        case 9:
            if (!fast_str(f.data, f.len, &e->node))
                goto fail;
            if (!e->node)
                e->node = batch_node;
            break;
        case 10:
        case 11:
        case 12:
        case 13:
        case 14: {
            /* k8s_node_name, k8s_pod_name, k8s_namespace, k8s_container_id, k8s_pod_uid */
            const char **k8s[] = {&e->k8s.node_name, &e->k8s.pod_name, &e->k8s.namespace,
                                  &e->k8s.container_id, &e->k8s.pod_uid};
            if (!fast_str(f.data, f.len, k8s[f.num - 10]))
                goto fail;
            break;
        }
        case 15:
            saddr = f.data, sl = f.len;
            break;
        case 16:
            daddr = f.data, dl = f.len;
            break;
        case 17:
        case 18:
            if (f.v > 65535)
                goto fail;
            *(f.num == 17 ? &e->sport : &e->dport) = (uint16_t)f.v;
            break;
        case 19:
            if (f.v > 255)
                goto fail;
            e->protocol = (uint8_t)f.v;
            break;
        case 20:
        case 21:
        case 22:
        case 23:
        case 25:
        case 35:
            if (det_field) /* protobuf merges a repeated message: the reference path does */
                goto fail;
            det_field = f.num;
            det = f.data, detl = f.len;
            break;
        case 24:
            pod_ref = f.v;
            break;
        case 26:
        case 27:
            if (!fast_str(f.data, f.len, f.num == 26 ? &e->k8s.workload : &e->k8s.workload_kind))
                goto fail;
            break;
        case 28:
        case 29:
        case 30:
        case 31:
        case 32:
        case 33:
        case 34: {
            const char **peer[] = {
                &e->peer.pod,  &e->peer.namespace, &e->peer.workload, &e->peer.workload_kind,
                &e->peer.node, &e->peer.service,   &e->peer.dns};
            if (f.num == 34) {
                /* A name the process resolved: refused by a full table, the event goes
                 * without it (counted there), as the agent's would. */
                if (f.len > EVENT_NAME_MAX || memchr(f.data, '\0', f.len))
                    goto fail;
                e->peer.dns = f.len ? event_pb_intern_process((const char *)f.data, f.len) : NULL;
            } else if (!fast_str(f.data, f.len, peer[f.num - 28])) {
                goto fail;
            }
            break;
        }
        default: /* unknown: the reference path skips it */
            goto fail;
        }
    }
    if (e->type == EVENT_TYPE_NONE || pod_ref > npods)
        goto fail;
    if (pod_ref)
        event_pb_pod_fill(&e->k8s, &pods[pod_ref - 1]);
    if ((sl || dl) && (sl != dl || (sl != 4 && sl != 16)))
        goto fail;
    if (sl) {
        e->family = sl == 4 ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6;
        memcpy(e->saddr, saddr, sl);
        memcpy(e->daddr, daddr, dl);
    }
    if (det_field && (det_field != (unsigned)event_pb_details_field(e->type) ||
                      !fast_details(det, detl, det_field, e)))
        goto fail;
    return true;
fail:
    event_clear(e);
    return false;
}

#define PB_FAST_MAX_IPS 8

/* One PodRef entry; false when the reference path must decide. */
static bool fast_podref(const uint8_t *data, size_t len, struct event_k8s *k)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    ProtobufCBinaryData ips[PB_FAST_MAX_IPS];
    size_t nips = 0;
    memset(k, 0, sizeof(*k));
    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f) || f.num > 10 || f.wt != (f.num == 10 ? PB_WT_VARINT : PB_WT_LEN))
            return false;
        if (f.num == 10) {
            if (f.v > 1)
                return false;
            k->host_network = f.v != 0;
            continue;
        }
        if (f.num == 9) {
            if (nips == PB_FAST_MAX_IPS)
                return false;
            ips[nips].data = (uint8_t *)f.data;
            ips[nips++].len = f.len;
            continue;
        }
        const char **dst[] = {&k->node_name, &k->pod_name, &k->namespace,     &k->container_id,
                              &k->pod_uid,   &k->workload, &k->workload_kind, &k->app};
        if (!fast_str(f.data, f.len, dst[f.num - 1]))
            return false;
    }
    return event_pb_ips_to_text(ips, nips, &k->ips, NULL, 0) == 0;
}

/* The wire type of EventBatch fields 1..10. */
static unsigned batch_field_wt(uint32_t num)
{
    return num == 1 || num == 2 || num == 4 || (num >= 8 && num <= 10) ? PB_WT_LEN : PB_WT_VARINT;
}

/* 0 when decoded, 1 when the reference path must decide, -E2BIG, -ENOMEM. */
static int fast_batch_decode(const uint8_t *data, size_t len, size_t max_events,
                             struct event_batch_meta *meta, struct event **events, size_t *n,
                             char *err, size_t errlen)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    size_t nev = 0, npods = 0;
    struct pb_field str[12] = {{0}};
    bool seen[13] = {false};
    struct event_k8s pods_stack[32], *pods = pods_stack;
    char msg[200];

    memset(meta, 0, sizeof(*meta));
    /*
     * First pass: the metadata (the publisher appends it after the events) and the counts.
     * It reads a field or two per event, which on a batch that waited in a queue is a miss
     * almost every time: the batch's next 2 KiB are prefetched as it goes, so those overlap
     * (the other passes then find the batch in cache).
     */
    const uint8_t *ahead = data;
    while (r.p < r.end) {
        while (ahead < r.p + 2048 && ahead < r.end) {
            __builtin_prefetch(ahead);
            ahead += 64;
        }
        if (!pb_rd_field(&r, &f) || f.num > 12 || f.wt != batch_field_wt(f.num))
            return 1;
        if (f.num != 4 && f.num != 10 && seen[f.num])
            return 1;
        seen[f.num] = true;
        switch (f.num) {
        case 3:
            meta->sequence = f.v;
            break;
        case 4:
            if (++nev > max_events)
                return -E2BIG;
            break;
        case 5:
            meta->kernel_drops = f.v;
            break;
        case 6:
            meta->agent_drops = f.v;
            break;
        case 7:
            meta->sent_at_ns = f.v;
            break;
        case 11:
            meta->kernel_missed = f.v;
            break;
        case 12:
            meta->instance_started_ns = f.v;
            break;
        case 10:
            npods++;
            break;
        default:
            str[f.num] = f;
            break;
        }
    }
    if (!fast_str(str[1].data, str[1].len, &meta->node) ||
        !fast_str(str[2].data, str[2].len, &meta->agent_instance) ||
        !fast_str(str[8].data, str[8].len, &meta->pod_name) ||
        !fast_str(str[9].data, str[9].len, &meta->pod_namespace))
        return 1;

    /* Second pass: the pod table, which events may refer to from anywhere in the batch. */
    if (npods > sizeof(pods_stack) / sizeof(pods_stack[0]) &&
        !(pods = malloc(npods * sizeof(*pods))))
        return -ENOMEM;
    size_t done = 0, np = 0, index = 0;
    struct event *evs = NULL;
    int rc = 1;
    for (r.p = data; npods && r.p < r.end;) {
        pb_rd_field(&r, &f);
        if (f.num == 10 && (np == npods || !fast_podref(f.data, f.len, &pods[np++])))
            goto fallback;
    }
    rc = -ENOMEM;
    if (nev && !(evs = malloc(nev * sizeof(*evs))))
        goto fallback;
    /* Third pass: the events; one the fast reader declines goes through protobuf-c alone. */
    for (r.p = data; r.p < r.end;) {
        pb_rd_field(&r, &f);
        if (f.num != 4 || done == nev)
            continue;
        if (!fast_event(f.data, f.len, meta->node, pods, npods, &evs[done])) {
            rc = event_pb_ref_decode_event(f.data, f.len, meta->node, pods, npods, &evs[done], msg,
                                           sizeof(msg));
            if (rc == -ENOMEM)
                goto fallback;
            if (rc) {
                event_pb_skip_event(meta, index++, msg, err, errlen);
                continue;
            }
        }
        done++;
        index++;
    }
    if (pods != pods_stack)
        free(pods);
    *events = evs;
    *n = done;
    return 0;
fallback:
    for (size_t i = 0; i < done; i++)
        event_clear(&evs[i]);
    free(evs);
    if (pods != pods_stack)
        free(pods);
    memset(meta, 0, sizeof(*meta));
    if (err && errlen)
        err[0] = '\0';
    return rc;
}

int event_pb_fast_decode_batch(const uint8_t *data, size_t len, size_t max_events,
                               struct event_batch_meta *meta, struct event **events, size_t *n,
                               char *err, size_t errlen)
{
    *events = NULL;
    *n = 0;
    if (err && errlen)
        err[0] = '\0';
    int rc = fast_batch_decode(data, len, max_events, meta, events, n, err, errlen);
    if (rc)
        memset(meta, 0, sizeof(*meta));
    if (rc == -E2BIG)
        errmsg_set(err, errlen, "batch holds more than %zu events", max_events);
    else if (rc == -ENOMEM)
        errmsg_set(err, errlen, "out of memory");
    return rc;
}

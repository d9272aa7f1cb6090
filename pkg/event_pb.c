/*
 * Protobuf codec for events and batches (pkg/events.proto).
 *
 * Encoding borrows the events' strings, so packing a batch costs a few
 * allocations in total, not per event. Decoding unpacks into an arena (one
 * free for the whole message) and interns strings through a small
 * last-value cache, because consecutive events of a batch mostly repeat the
 * same pod, namespace and drop reason.
 */
#include "event_pb.h"

#include "intern.h"
#include "pb_wire.h"

#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- event -> message ---- */

/* The wire enums are the C enums; conversions are plain casts. */
_Static_assert((int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_CONNECTION == EVENT_CONNECTION &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_ACCEPT == EVENT_ACCEPT &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_PACKET_DROP == EVENT_PACKET_DROP &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXEC == EVENT_EXEC &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXIT == EVENT_EXIT,
               "EventType must match enum event_type");
_Static_assert((int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_ESTABLISHED ==
                       EVENT_STATUS_ESTABLISHED &&
                   (int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_FAILED ==
                       EVENT_STATUS_FAILED &&
                   (int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_ATTEMPTED ==
                       EVENT_STATUS_ATTEMPTED,
               "ConnectionStatus must match enum event_status");

/* Number of argv elements in the NUL-separated args buffer. */
static size_t args_count(const struct event *e)
{
    if (e->type != EVENT_EXEC || !e->u.exec.args || !e->u.exec.args_len)
        return 0;
    const char *p = e->u.exec.args, *end = p + e->u.exec.args_len;
    size_t n = 0;
    while (p < end) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        n++;
        p = nul ? nul + 1 : end;
    }
    return n;
}

static void args_fill(const struct event *e, ProtobufCBinaryData *out)
{
    const char *p = e->u.exec.args, *end = p + e->u.exec.args_len;
    while (p < end) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        size_t len = nul ? (size_t)(nul - p) : (size_t)(end - p);
        out->data = (uint8_t *)p;
        out->len = len;
        out++;
        p += len + 1;
    }
}

static char *pb_str(const char *s)
{
    return (char *)(s ? s : protobuf_c_empty_string);
}

/* args must have room for args_count(e) elements. */
static int pb_fill(const struct event *e, const char *batch_node, Ebpfmonitor__Event *out,
                   union event_pb_details *d, ProtobufCBinaryData *args)
{
    if (e->type == EVENT_TYPE_NONE || e->type >= EVENT_TYPE_COUNT)
        return -EINVAL;
    ebpfmonitor__event__init(out);
    out->id = e->id;
    out->type = (Ebpfmonitor__EventType)e->type;
    out->timestamp_ns = e->timestamp_ns;
    out->pid = e->pid;
    out->ppid = e->ppid;
    out->uid = e->uid;
    out->command.data = (uint8_t *)e->command;
    out->command.len = strnlen(e->command, sizeof(e->command));
    out->cgroup_id = e->cgroup_id;
    if (e->node && !(batch_node && (e->node == batch_node || strcmp(e->node, batch_node) == 0)))
        out->node = (char *)e->node;
    out->k8s_node_name = pb_str(e->k8s.node_name);
    out->k8s_pod_name = pb_str(e->k8s.pod_name);
    out->k8s_namespace = pb_str(e->k8s.namespace);
    out->k8s_container_id = pb_str(e->k8s.container_id);
    out->k8s_pod_uid = pb_str(e->k8s.pod_uid);
    size_t alen = e->family == EVENT_FAMILY_IPV4 ? 4 : e->family == EVENT_FAMILY_IPV6 ? 16 : 0;
    if (alen) {
        out->source_addr.data = (uint8_t *)e->saddr;
        out->source_addr.len = alen;
        out->dest_addr.data = (uint8_t *)e->daddr;
        out->dest_addr.len = alen;
    }
    out->source_port = e->sport;
    out->dest_port = e->dport;
    out->protocol = e->protocol;

    switch (e->type) {
    case EVENT_CONNECTION:
        ebpfmonitor__connection_details__init(&d->conn);
        d->conn.status = (Ebpfmonitor__ConnectionStatus)e->status;
        d->conn.latency_ns = e->u.conn.latency_ns;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_CONNECTION;
        out->connection = &d->conn;
        break;
    case EVENT_PACKET_DROP:
        ebpfmonitor__drop_details__init(&d->drop);
        d->drop.reason_code = e->u.drop.reason_code;
        d->drop.reason = pb_str(e->u.drop.reason);
        d->drop.location = pb_str(e->u.drop.location);
        d->drop.suppressed = e->u.drop.suppressed;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_DROP;
        out->drop = &d->drop;
        break;
    case EVENT_EXEC:
        ebpfmonitor__exec_details__init(&d->exec);
        if (e->u.exec.filename) {
            d->exec.filename.data = (uint8_t *)e->u.exec.filename;
            d->exec.filename.len = strlen(e->u.exec.filename);
        }
        d->exec.n_args = args_count(e);
        d->exec.args = d->exec.n_args ? args : NULL;
        if (d->exec.n_args)
            args_fill(e, args);
        d->exec.args_truncated = e->u.exec.args_truncated != 0;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_EXEC;
        out->exec = &d->exec;
        break;
    case EVENT_EXIT:
        ebpfmonitor__exit_details__init(&d->exit);
        d->exit.exit_code = e->u.exit.exit_code;
        d->exit.signal = e->u.exit.signal;
        d->exit.duration_ns = e->u.exit.duration_ns;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_EXIT;
        out->exit = &d->exit;
        break;
    }
    return 0;
}

int event_pb_from_event(const struct event *e, const char *batch_node, Ebpfmonitor__Event *out,
                        struct event_pb_scratch *scratch)
{
    size_t nargs = args_count(e);
    scratch->args = NULL;
    if (nargs && !(scratch->args = calloc(nargs, sizeof(*scratch->args))))
        return -ENOMEM;
    int rc = pb_fill(e, batch_node, out, &scratch->details, scratch->args);
    if (rc)
        event_pb_scratch_release(scratch);
    return rc;
}

void event_pb_scratch_release(struct event_pb_scratch *scratch)
{
    free(scratch->args);
    scratch->args = NULL;
}

int event_batch_encode(const struct event_batch_meta *meta, const struct event *events, size_t n,
                       struct buf *out)
{
    Ebpfmonitor__EventBatch batch = EBPFMONITOR__EVENT_BATCH__INIT;
    Ebpfmonitor__Event *msgs = NULL, **ptrs = NULL;
    union event_pb_details *details = NULL;
    ProtobufCBinaryData *args = NULL;
    size_t nargs = 0;
    int rc = -ENOMEM;

    for (size_t i = 0; i < n; i++)
        nargs += args_count(&events[i]);
    if (n && (!(msgs = malloc(n * sizeof(*msgs))) || !(ptrs = malloc(n * sizeof(*ptrs))) ||
              !(details = malloc(n * sizeof(*details)))))
        goto out;
    if (nargs && !(args = malloc(nargs * sizeof(*args))))
        goto out;

    ProtobufCBinaryData *a = args;
    for (size_t i = 0; i < n; i++) {
        if ((rc = pb_fill(&events[i], meta->node, &msgs[i], &details[i], a)))
            goto out;
        a += args_count(&events[i]);
        ptrs[i] = &msgs[i];
    }
    batch.node = pb_str(meta->node);
    batch.agent_instance = pb_str(meta->agent_instance);
    batch.sequence = meta->sequence;
    batch.n_events = n;
    batch.events = ptrs;
    batch.kernel_drops = meta->kernel_drops;
    batch.agent_drops = meta->agent_drops;
    batch.sent_at_ns = meta->sent_at_ns;
    batch.agent_pod_name = pb_str(meta->pod_name);
    batch.agent_pod_namespace = pb_str(meta->pod_namespace);

    size_t size = ebpfmonitor__event_batch__get_packed_size(&batch);
    rc = -ENOMEM;
    if (!buf_reserve(out, size))
        goto out;
    ebpfmonitor__event_batch__pack(&batch, (uint8_t *)out->data + out->len);
    out->len += size;
    out->data[out->len] = '\0';
    rc = 0;
out:
    free(args);
    free(details);
    free(ptrs);
    free(msgs);
    return rc;
}

/*
 * ---- hand-written encoder ----
 *
 * The publisher encodes every event as it arrives, and protobuf-c's generic
 * packer (descriptor walk per field, plus filling an Ebpfmonitor__Event
 * first) cost about as much as publishing. This writes the same bytes
 * protobuf-c would (fields in number order, proto3 defaults left out, an
 * empty oneof sub-message still written) straight from struct event, after a
 * sizing pass so lengths are known up front. tests/test_event_pb.c checks it
 * byte for byte against the protobuf-c path.
 */

/* Wire types. */
#define WT_VARINT  0u
#define WT_I64     1u
#define WT_LEN     2u
#define TAG(f, wt) (((uint32_t)(f) << 3) | (wt))

static inline size_t vsize(uint64_t v)
{
    return (size_t)(70 - __builtin_clzll(v | 1)) / 7;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* A tag below 2^14 (every field number here is below 2048). */
static inline uint8_t *put_tag(uint8_t *p, uint32_t tag)
{
    if (tag < 0x80) {
        *p++ = (uint8_t)tag;
    } else {
        *p++ = (uint8_t)(tag | 0x80);
        *p++ = (uint8_t)(tag >> 7);
    }
    return p;
}

static inline size_t tsize(uint32_t tag)
{
    return tag < 0x80 ? 1 : 2;
}

/* Optional scalar: tag + varint, left out when zero (proto3). */
static inline size_t sz_u64(uint32_t tag, uint64_t v)
{
    return v ? tsize(tag) + vsize(v) : 0;
}

static inline uint8_t *put_u64(uint8_t *p, uint32_t tag, uint64_t v)
{
    if (v) {
        p = put_tag(p, tag);
        p = put_varint(p, v);
    }
    return p;
}

/* Length-delimited field, left out when empty. */
static inline size_t sz_len(uint32_t tag, size_t len)
{
    return len ? tsize(tag) + vsize(len) + len : 0;
}

static inline uint8_t *put_len(uint8_t *p, uint32_t tag, const void *data, size_t len)
{
    if (len) {
        p = put_tag(p, tag);
        p = put_varint(p, len);
        memcpy(p, data, len);
        p += len;
    }
    return p;
}

static inline uint32_t zigzag32(int32_t v)
{
    return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31);
}

static inline size_t str_len(const char *s)
{
    return s ? strlen(s) : 0;
}

/* What the writing pass needs from the sizing pass. */
struct enc_plan {
    size_t cmd_len, node_len, alen, fname_len, det_len, size;
    const char *node; /* NULL when the event's node is the batch's */
    const char *k8s[5];
    size_t k8s_len[5];
    uint32_t pod_ref;
};

static size_t plan_details(const struct event *e, struct enc_plan *pl)
{
    size_t n = 0;
    switch (e->type) {
    case EVENT_CONNECTION:
        n = sz_u64(TAG(1, WT_VARINT), e->status) + sz_u64(TAG(2, WT_VARINT), e->u.conn.latency_ns);
        break;
    case EVENT_PACKET_DROP:
        n = sz_u64(TAG(1, WT_VARINT), e->u.drop.reason_code) +
            sz_len(TAG(2, WT_LEN), str_len(e->u.drop.reason)) +
            sz_len(TAG(3, WT_LEN), str_len(e->u.drop.location)) +
            sz_u64(TAG(4, WT_VARINT), e->u.drop.suppressed);
        break;
    case EVENT_EXEC: {
        pl->fname_len = str_len(e->u.exec.filename);
        n = sz_len(TAG(1, WT_LEN), pl->fname_len);
        /* argv: every element is written, empty ones too (repeated field). */
        if (e->u.exec.args && e->u.exec.args_len) {
            const char *p = e->u.exec.args, *end = p + e->u.exec.args_len;
            while (p < end) {
                const char *nul = memchr(p, '\0', (size_t)(end - p));
                size_t len = nul ? (size_t)(nul - p) : (size_t)(end - p);
                n += 1 + vsize(len) + len;
                p += len + 1;
            }
        }
        if (e->u.exec.args_truncated)
            n += 2;
        break;
    }
    case EVENT_EXIT:
        n = sz_u64(TAG(1, WT_VARINT), zigzag32(e->u.exit.exit_code)) +
            sz_u64(TAG(2, WT_VARINT), zigzag32(e->u.exit.signal)) +
            sz_u64(TAG(3, WT_VARINT), e->u.exit.duration_ns);
        break;
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
    n += sz_u64(TAG(3, WT_VARINT), e->timestamp_ns) + sz_u64(TAG(4, WT_VARINT), e->pid) +
         sz_u64(TAG(5, WT_VARINT), e->ppid) + sz_u64(TAG(6, WT_VARINT), e->uid);
    pl->cmd_len = strnlen(e->command, sizeof(e->command));
    n += sz_len(TAG(7, WT_LEN), pl->cmd_len) + sz_u64(TAG(8, WT_VARINT), e->cgroup_id);
    pl->node = NULL;
    pl->node_len = 0;
    if (e->node && !(batch_node && (e->node == batch_node || strcmp(e->node, batch_node) == 0))) {
        pl->node = e->node;
        pl->node_len = strlen(e->node);
        n += sz_len(TAG(9, WT_LEN), pl->node_len);
    }
    pl->pod_ref = pod_ref;
    const char *k8s[5] = {e->k8s.node_name, e->k8s.pod_name, e->k8s.namespace, e->k8s.container_id,
                          e->k8s.pod_uid};
    for (int i = 0; i < 5; i++) {
        pl->k8s[i] = pod_ref ? NULL : k8s[i];
        pl->k8s_len[i] = str_len(pl->k8s[i]);
        n += sz_len(TAG(10 + i, WT_LEN), pl->k8s_len[i]);
    }
    pl->alen = e->family == EVENT_FAMILY_IPV4 ? 4 : e->family == EVENT_FAMILY_IPV6 ? 16 : 0;
    if (pl->alen)
        n += 2 * (2 + pl->alen) + 1; /* tag 15 is one byte, tag 16 two */
    n += sz_u64(TAG(17, WT_VARINT), e->sport) + sz_u64(TAG(18, WT_VARINT), e->dport) +
         sz_u64(TAG(19, WT_VARINT), e->protocol);
    pl->fname_len = 0;
    pl->det_len = plan_details(e, pl);
    if (e->type != EVENT_ACCEPT)
        n += 2 + vsize(pl->det_len) + pl->det_len;
    n += sz_u64(TAG(24, WT_VARINT), pod_ref);
    pl->size = n;
    return 0;
}

static uint8_t *write_details(uint8_t *p, const struct event *e, const struct enc_plan *pl)
{
    switch (e->type) {
    case EVENT_CONNECTION:
        p = put_tag(p, TAG(20, WT_LEN));
        p = put_varint(p, pl->det_len);
        p = put_u64(p, TAG(1, WT_VARINT), e->status);
        p = put_u64(p, TAG(2, WT_VARINT), e->u.conn.latency_ns);
        break;
    case EVENT_PACKET_DROP:
        p = put_tag(p, TAG(21, WT_LEN));
        p = put_varint(p, pl->det_len);
        p = put_u64(p, TAG(1, WT_VARINT), e->u.drop.reason_code);
        p = put_len(p, TAG(2, WT_LEN), e->u.drop.reason, str_len(e->u.drop.reason));
        p = put_len(p, TAG(3, WT_LEN), e->u.drop.location, str_len(e->u.drop.location));
        p = put_u64(p, TAG(4, WT_VARINT), e->u.drop.suppressed);
        break;
    case EVENT_EXEC:
        p = put_tag(p, TAG(22, WT_LEN));
        p = put_varint(p, pl->det_len);
        p = put_len(p, TAG(1, WT_LEN), e->u.exec.filename, pl->fname_len);
        if (e->u.exec.args && e->u.exec.args_len) {
            const char *a = e->u.exec.args, *end = a + e->u.exec.args_len;
            while (a < end) {
                const char *nul = memchr(a, '\0', (size_t)(end - a));
                size_t len = nul ? (size_t)(nul - a) : (size_t)(end - a);
                *p++ = TAG(2, WT_LEN);
                p = put_varint(p, len);
                memcpy(p, a, len);
                p += len;
                a += len + 1;
            }
        }
        if (e->u.exec.args_truncated) {
            *p++ = TAG(3, WT_VARINT);
            *p++ = 1;
        }
        break;
    case EVENT_EXIT:
        p = put_tag(p, TAG(23, WT_LEN));
        p = put_varint(p, pl->det_len);
        p = put_u64(p, TAG(1, WT_VARINT), zigzag32(e->u.exit.exit_code));
        p = put_u64(p, TAG(2, WT_VARINT), zigzag32(e->u.exit.signal));
        p = put_u64(p, TAG(3, WT_VARINT), e->u.exit.duration_ns);
        break;
    }
    return p;
}

/* Writes the Event message planned in pl (pl->size bytes). */
static uint8_t *write_event(uint8_t *p, const struct event *e, const struct enc_plan *pl)
{
    if (e->id) {
        *p++ = TAG(1, WT_I64);
        uint64_t id = htole64(e->id);
        memcpy(p, &id, 8);
        p += 8;
    }
    *p++ = TAG(2, WT_VARINT);
    *p++ = e->type;
    p = put_u64(p, TAG(3, WT_VARINT), e->timestamp_ns);
    p = put_u64(p, TAG(4, WT_VARINT), e->pid);
    p = put_u64(p, TAG(5, WT_VARINT), e->ppid);
    p = put_u64(p, TAG(6, WT_VARINT), e->uid);
    p = put_len(p, TAG(7, WT_LEN), e->command, pl->cmd_len);
    p = put_u64(p, TAG(8, WT_VARINT), e->cgroup_id);
    p = put_len(p, TAG(9, WT_LEN), pl->node, pl->node_len);
    for (int i = 0; i < 5; i++)
        p = put_len(p, TAG(10 + i, WT_LEN), pl->k8s[i], pl->k8s_len[i]);
    if (pl->alen) {
        p = put_len(p, TAG(15, WT_LEN), e->saddr, pl->alen);
        p = put_len(p, TAG(16, WT_LEN), e->daddr, pl->alen);
    }
    p = put_u64(p, TAG(17, WT_VARINT), e->sport);
    p = put_u64(p, TAG(18, WT_VARINT), e->dport);
    p = put_u64(p, TAG(19, WT_VARINT), e->protocol);
    p = write_details(p, e, pl);
    p = put_u64(p, TAG(24, WT_VARINT), pl->pod_ref);
    return p;
}

/* The PodRef message for k (fields 1..5 of PodRef, as in the Event's 10..14). */
static size_t podref_size(const struct event_k8s *k, size_t len[5])
{
    const char *s[5] = {k->node_name, k->pod_name, k->namespace, k->container_id, k->pod_uid};
    size_t n = 0;
    for (int i = 0; i < 5; i++) {
        len[i] = str_len(s[i]);
        n += sz_len(TAG(1 + i, WT_LEN), len[i]);
    }
    return n;
}

static uint8_t *write_podref(uint8_t *p, const struct event_k8s *k, const size_t len[5])
{
    const char *s[5] = {k->node_name, k->pod_name, k->namespace, k->container_id, k->pod_uid};
    for (int i = 0; i < 5; i++)
        p = put_len(p, TAG(1 + i, WT_LEN), s[i], len[i]);
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
           a->pod_uid == b->pod_uid;
}

static unsigned k8s_hash(const struct event_k8s *k)
{
    uint64_t h = (uintptr_t)k->node_name;
    h = (h ^ (uintptr_t)k->pod_name) * 0x9e3779b97f4a7c15ull;
    h = (h ^ (uintptr_t)k->namespace) * 0x9e3779b97f4a7c15ull;
    h = (h ^ (uintptr_t)k->container_id) * 0x9e3779b97f4a7c15ull;
    h = (h ^ (uintptr_t)k->pod_uid) * 0x9e3779b97f4a7c15ull;
    return (unsigned)(h >> 40);
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
    if (!k->node_name && !k->pod_name && !k->namespace && !k->container_id && !k->pod_uid)
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
    size_t pod_len[5], pod_size = 0, need = 0;

    if (pods && (ref = pods_find(pods, &e->k8s, &slot)) == 0 && slot >= 0) {
        /* A new attribution: a PodRef entry goes before the event. */
        ref = pods->n + 1;
        pod_size = podref_size(&e->k8s, pod_len);
        need = 1 + vsize(pod_size) + pod_size;
    }
    int rc = plan_event(e, batch_node, ref, &pl);
    if (rc)
        return rc;
    need += 1 + vsize(pl.size) + pl.size;
    if (out->oom || !buf_reserve(out, need))
        return -ENOMEM;
    uint8_t *p = (uint8_t *)out->data + out->len;
    if (slot >= 0) {
        *p++ = TAG(10, WT_LEN);
        p = put_varint(p, pod_size);
        p = write_podref(p, &e->k8s, pod_len);
        pods->ref[pods->n++] = e->k8s;
        pods->slot[slot] = (uint8_t)ref;
    }
    if (pods && ref)
        pods->last = ref;
    *p++ = TAG(4, WT_LEN);
    p = put_varint(p, pl.size);
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
    size_t need =
        sz_len(TAG(1, WT_LEN), node) + sz_len(TAG(2, WT_LEN), inst) +
        sz_u64(TAG(3, WT_VARINT), meta->sequence) + sz_u64(TAG(5, WT_VARINT), meta->kernel_drops) +
        sz_u64(TAG(6, WT_VARINT), meta->agent_drops) + sz_u64(TAG(7, WT_VARINT), meta->sent_at_ns) +
        sz_len(TAG(8, WT_LEN), pod) + sz_len(TAG(9, WT_LEN), ns);
    if (out->oom || !buf_reserve(out, need))
        return -ENOMEM;
    uint8_t *p = (uint8_t *)out->data + out->len;
    p = put_len(p, TAG(1, WT_LEN), meta->node, node);
    p = put_len(p, TAG(2, WT_LEN), meta->agent_instance, inst);
    p = put_u64(p, TAG(3, WT_VARINT), meta->sequence);
    p = put_u64(p, TAG(5, WT_VARINT), meta->kernel_drops);
    p = put_u64(p, TAG(6, WT_VARINT), meta->agent_drops);
    p = put_u64(p, TAG(7, WT_VARINT), meta->sent_at_ns);
    p = put_len(p, TAG(8, WT_LEN), meta->pod_name, pod);
    p = put_len(p, TAG(9, WT_LEN), meta->pod_namespace, ns);
    out->len += need;
    out->data[out->len] = '\0';
    return 0;
}

/* ---- message -> event ---- */

static int pb_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int pb_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

enum {
    IC_NODE,
    IC_K8S_NODE,
    IC_POD,
    IC_NS,
    IC_CONTAINER,
    IC_POD_UID,
    IC_REASON,
    IC_LOCATION,
    IC_N
};

/* The last raw string seen per field and its interned copy. */
struct intern_cache {
    const char *raw[IC_N];
    const char *val[IC_N];
};

/*
 * A per-thread cache in front of the shared intern table: a decoding thread
 * sees the same few hundred pod names, container ids and drop reasons over
 * and over, and intern() hashes byte by byte under a process-wide lock.
 * Interned strings live forever, so cached pointers never dangle.
 */
#define PB_TL_CACHE 512 /* entries, power of two */

static __thread struct {
    const char *val;
    size_t len;
} pb_tl_cache[PB_TL_CACHE];

static uint64_t pb_fast_hash(const char *s, size_t len)
{
    uint64_t h = len * 0x9e3779b97f4a7c15ull, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    if (i < len) {
        w = 0;
        memcpy(&w, s + i, len - i);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }
    return h ^ (h >> 29);
}

static const char *intern_cached(const char *s)
{
    size_t len = strlen(s);
    unsigned slot = (unsigned)pb_fast_hash(s, len) & (PB_TL_CACHE - 1);
    if (pb_tl_cache[slot].val && pb_tl_cache[slot].len == len &&
        memcmp(pb_tl_cache[slot].val, s, len) == 0)
        return pb_tl_cache[slot].val;
    const char *v = intern_n(s, len);
    if (v) {
        pb_tl_cache[slot].val = v;
        pb_tl_cache[slot].len = len;
    }
    return v;
}

/* Empty means absent (NULL). */
static int intern_field(struct intern_cache *ic, int slot, const char *s, const char **dst)
{
    *dst = NULL;
    if (!s || !*s)
        return 0;
    if (ic && ic->raw[slot] && strcmp(ic->raw[slot], s) == 0) {
        *dst = ic->val[slot];
        return 0;
    }
    if (!(*dst = intern_cached(s)))
        return -ENOMEM;
    if (ic) {
        ic->raw[slot] = s;
        ic->val[slot] = *dst;
    }
    return 0;
}

static const char *details_name(Ebpfmonitor__Event__DetailsCase c)
{
    switch (c) {
    case EBPFMONITOR__EVENT__DETAILS_CONNECTION:
        return "connection";
    case EBPFMONITOR__EVENT__DETAILS_DROP:
        return "drop";
    case EBPFMONITOR__EVENT__DETAILS_EXEC:
        return "exec";
    case EBPFMONITOR__EVENT__DETAILS_EXIT:
        return "exit";
    default:
        return "no";
    }
}

static Ebpfmonitor__Event__DetailsCase details_for_type(unsigned type)
{
    switch (type) {
    case EVENT_CONNECTION:
        return EBPFMONITOR__EVENT__DETAILS_CONNECTION;
    case EVENT_PACKET_DROP:
        return EBPFMONITOR__EVENT__DETAILS_DROP;
    case EVENT_EXEC:
        return EBPFMONITOR__EVENT__DETAILS_EXEC;
    case EVENT_EXIT:
        return EBPFMONITOR__EVENT__DETAILS_EXIT;
    default:
        return EBPFMONITOR__EVENT__DETAILS__NOT_SET;
    }
}

static int to_exec(const Ebpfmonitor__ExecDetails *x, struct event *e, char *err, size_t errlen)
{
    if (x->filename.len) {
        if (memchr(x->filename.data, '\0', x->filename.len))
            return pb_fail(err, errlen, -EINVAL, "exec.filename: contains a NUL byte");
        if (!(e->u.exec.filename = strndup((const char *)x->filename.data, x->filename.len)))
            return pb_fail(err, errlen, -ENOMEM, "exec.filename: out of memory");
    }
    size_t total = 0;
    for (size_t i = 0; i < x->n_args; i++) {
        if (x->args[i].len && memchr(x->args[i].data, '\0', x->args[i].len))
            return pb_fail(err, errlen, -EINVAL, "exec.args[%zu]: contains a NUL byte", i);
        total += x->args[i].len + 1;
    }
    if (total > UINT32_MAX)
        return pb_fail(err, errlen, -EINVAL, "exec.args: too long");
    if (total) {
        char *p = e->u.exec.args = malloc(total + 1);
        if (!p)
            return pb_fail(err, errlen, -ENOMEM, "exec.args: out of memory");
        for (size_t i = 0; i < x->n_args; i++) {
            if (x->args[i].len)
                memcpy(p, x->args[i].data, x->args[i].len);
            p += x->args[i].len;
            *p++ = '\0';
        }
        *p = '\0';
        e->u.exec.args_len = (uint32_t)total;
    }
    e->u.exec.args_truncated = x->args_truncated ? 1 : 0;
    return 0;
}

/* Each attribution field the event left empty comes from its pod_ref entry. */
static void pod_fill(struct event_k8s *k, const struct event_k8s *ref)
{
    if (!k->node_name)
        k->node_name = ref->node_name;
    if (!k->pod_name)
        k->pod_name = ref->pod_name;
    if (!k->namespace)
        k->namespace = ref->namespace;
    if (!k->container_id)
        k->container_id = ref->container_id;
    if (!k->pod_uid)
        k->pod_uid = ref->pod_uid;
}

/* pods[0..npods) are the batch's PodRef entries, interned (NULL outside a batch). */
static int to_event(const Ebpfmonitor__Event *pb, const char *batch_node,
                    const struct event_k8s *pods, size_t npods, struct event *e,
                    struct intern_cache *ic, char *err, size_t errlen)
{
    memset(e, 0, sizeof(*e));
    if ((int)pb->type <= EVENT_TYPE_NONE || (int)pb->type >= EVENT_TYPE_COUNT)
        return pb_fail(err, errlen, -EINVAL, "type: unknown event type %d", (int)pb->type);
    if (pb->pod_ref > npods)
        return pb_fail(err, errlen, -EINVAL, "pod_ref: entry %u but the batch has %zu pods",
                       pb->pod_ref, npods);
    if (pb->command.len >= sizeof(e->command))
        return pb_fail(err, errlen, -EINVAL, "command: %zu bytes, at most %zu allowed",
                       pb->command.len, sizeof(e->command) - 1);
    if (pb->command.len && memchr(pb->command.data, '\0', pb->command.len))
        return pb_fail(err, errlen, -EINVAL, "command: contains a NUL byte");
    size_t sl = pb->source_addr.len, dl = pb->dest_addr.len;
    if ((sl || dl) && (sl != dl || (sl != 4 && sl != 16)))
        return pb_fail(err, errlen, -EINVAL,
                       "source_addr/dest_addr: expected 4 or 16 bytes each, got %zu and %zu", sl,
                       dl);
    if (pb->source_port > 65535 || pb->dest_port > 65535)
        return pb_fail(err, errlen, -EINVAL, "source_port/dest_port: above 65535");
    if (pb->protocol > 255)
        return pb_fail(err, errlen, -EINVAL, "protocol: %u is not an IP protocol number",
                       pb->protocol);
    Ebpfmonitor__Event__DetailsCase want = details_for_type(pb->type);
    if (pb->details_case != EBPFMONITOR__EVENT__DETAILS__NOT_SET && pb->details_case != want)
        return pb_fail(err, errlen, -EINVAL, "details: %s event carries %s details",
                       event_type_name(pb->type), details_name(pb->details_case));
    if (pb->details_case == EBPFMONITOR__EVENT__DETAILS_CONNECTION &&
        (unsigned)pb->connection->status > EVENT_STATUS_ATTEMPTED)
        return pb_fail(err, errlen, -EINVAL, "connection.status: unknown status %d",
                       (int)pb->connection->status);

    e->id = pb->id;
    e->type = (uint8_t)pb->type;
    e->timestamp_ns = pb->timestamp_ns;
    e->pid = pb->pid;
    e->ppid = pb->ppid;
    e->uid = pb->uid;
    if (pb->command.len)
        memcpy(e->command, pb->command.data, pb->command.len);
    e->cgroup_id = pb->cgroup_id;
    if (sl) {
        e->family = sl == 4 ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6;
        memcpy(e->saddr, pb->source_addr.data, sl);
        memcpy(e->daddr, pb->dest_addr.data, dl);
    }
    e->sport = (uint16_t)pb->source_port;
    e->dport = (uint16_t)pb->dest_port;
    e->protocol = (uint8_t)pb->protocol;

    int rc;
    if (pb->node && *pb->node) {
        if ((rc = intern_field(ic, IC_NODE, pb->node, &e->node)))
            goto nomem;
    } else {
        e->node = batch_node;
    }
    if ((rc = intern_field(ic, IC_K8S_NODE, pb->k8s_node_name, &e->k8s.node_name)) ||
        (rc = intern_field(ic, IC_POD, pb->k8s_pod_name, &e->k8s.pod_name)) ||
        (rc = intern_field(ic, IC_NS, pb->k8s_namespace, &e->k8s.namespace)) ||
        (rc = intern_field(ic, IC_CONTAINER, pb->k8s_container_id, &e->k8s.container_id)) ||
        (rc = intern_field(ic, IC_POD_UID, pb->k8s_pod_uid, &e->k8s.pod_uid)))
        goto nomem;
    if (pb->pod_ref)
        pod_fill(&e->k8s, &pods[pb->pod_ref - 1]);

    switch (pb->details_case) {
    case EBPFMONITOR__EVENT__DETAILS_CONNECTION:
        e->status = (uint8_t)pb->connection->status;
        e->u.conn.latency_ns = pb->connection->latency_ns;
        break;
    case EBPFMONITOR__EVENT__DETAILS_DROP:
        e->u.drop.reason_code = pb->drop->reason_code;
        e->u.drop.suppressed = pb->drop->suppressed;
        if ((rc = intern_field(ic, IC_REASON, pb->drop->reason, &e->u.drop.reason)) ||
            (rc = intern_field(ic, IC_LOCATION, pb->drop->location, &e->u.drop.location)))
            goto nomem;
        break;
    case EBPFMONITOR__EVENT__DETAILS_EXEC:
        if ((rc = to_exec(pb->exec, e, err, errlen))) {
            event_clear(e);
            return rc;
        }
        break;
    case EBPFMONITOR__EVENT__DETAILS_EXIT:
        e->u.exit.exit_code = pb->exit->exit_code;
        e->u.exit.signal = pb->exit->signal;
        e->u.exit.duration_ns = pb->exit->duration_ns;
        break;
    default:
        break;
    }
    return 0;
nomem:
    event_clear(e);
    return pb_fail(err, errlen, rc, "string table full");
}

int event_pb_to_event(const Ebpfmonitor__Event *pb, const char *batch_node, struct event *out,
                      char *err, size_t errlen)
{
    return to_event(pb, batch_node, NULL, 0, out, NULL, err, errlen);
}

/* A bump allocator for unpacking: everything is released at once. */
struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    max_align_t data[];
};

struct arena {
    struct arena_chunk *head;
    size_t next_cap;
};

static void *arena_alloc(void *allocator_data, size_t size)
{
    struct arena *a = allocator_data;
    struct arena_chunk *c = a->head;
    size = (size + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
    if (!c || c->cap - c->used < size) {
        size_t cap = a->next_cap > size ? a->next_cap : size;
        if (!(c = malloc(sizeof(*c) + cap)))
            return NULL;
        c->next = a->head;
        c->cap = cap;
        c->used = 0;
        a->head = c;
        a->next_cap = cap < (16u << 20) ? cap * 2 : cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

static void arena_free(void *allocator_data, void *p)
{
}

static void arena_release(struct arena *a)
{
    for (struct arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}

static int meta_intern(const char *s, const char **dst)
{
    *dst = NULL;
    if (s && *s && !(*dst = intern(s)))
        return -ENOMEM;
    return 0;
}

/* ---- the reference path: protobuf-c ---- */

/*
 * protobuf-c keeps only the last of several details messages; protobuf
 * merges consecutive ones of the same kind (a different kind resets the
 * oneof). Rewrites such an event into the arena with one details field whose
 * body is the concatenation of the bodies that protobuf would merge, which
 * parses as their merge. Returns data itself when there is nothing to merge,
 * NULL when the wire format is broken (protobuf-c then says so) or out of memory.
 */
static const uint8_t *merge_details(const uint8_t *data, size_t *len, ProtobufCAllocator *alloc)
{
    struct pb_rd r = {data, data + *len};
    struct pb_field f;
    unsigned kind = 0, seen = 0;
    size_t body = 0;

    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f))
            return data;
        if (f.num < 20 || f.num > 23 || f.wt != PB_WT_LEN)
            continue;
        seen++;
        body = f.num == kind ? body + f.len : f.len;
        kind = f.num;
    }
    if (seen < 2)
        return data;
    uint8_t *out = alloc->alloc(alloc->allocator_data, *len + 16);
    if (!out)
        return NULL;
    size_t n = 0;
    /* The other fields as they are, then the merged details at the end. */
    for (r.p = data; r.p < r.end;) {
        const uint8_t *start = r.p;
        pb_rd_field(&r, &f);
        if (f.num < 20 || f.num > 23 || f.wt != PB_WT_LEN) {
            memcpy(out + n, start, (size_t)(r.p - start));
            n += (size_t)(r.p - start);
        }
    }
    n = (size_t)(put_varint(put_varint(out + n, kind << 3 | PB_WT_LEN), body) - out);
    /* Bodies after the last change of kind, in order. */
    const uint8_t *from = data;
    for (r.p = data; r.p < r.end;) {
        pb_rd_field(&r, &f);
        if (f.num >= 20 && f.num <= 23 && f.wt == PB_WT_LEN && f.num != kind)
            from = r.p;
    }
    for (r.p = from; r.p < r.end;) {
        pb_rd_field(&r, &f);
        if (f.num == kind && f.wt == PB_WT_LEN) {
            memcpy(out + n, f.data, f.len);
            n += f.len;
        }
    }
    *len = n;
    return out;
}

/* One Event message through protobuf-c; 0, -EINVAL (why in err) or -ENOMEM. */
static int generic_event(const uint8_t *data, size_t len, const char *batch_node,
                         const struct event_k8s *pods, size_t npods, struct event *e,
                         struct intern_cache *ic, ProtobufCAllocator *alloc, char *err,
                         size_t errlen)
{
    memset(e, 0, sizeof(*e));
    if (!(data = merge_details(data, &len, alloc)))
        return pb_fail(err, errlen, -ENOMEM, "out of memory");
    Ebpfmonitor__Event *pb = ebpfmonitor__event__unpack(alloc, len, data);
    if (!pb)
        return pb_fail(err, errlen, -EINVAL, "not a valid Event message (%zu bytes)", len);
    return to_event(pb, batch_node, pods, npods, e, ic, err, errlen);
}

/* One Event through protobuf-c with an arena of its own (the fast path's fallback). */
static int generic_event_alone(const uint8_t *data, size_t len, const char *batch_node,
                               const struct event_k8s *pods, size_t npods, struct event *e,
                               char *err, size_t errlen)
{
    struct arena arena = {.next_cap = len * 4 + 1024};
    ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free, .allocator_data = &arena};
    int rc = generic_event(data, len, batch_node, pods, npods, e, NULL, &alloc, err, errlen);
    arena_release(&arena);
    return rc;
}

/* Records an undecodable event: counted, and the first one's reason kept in err. */
static void skip_event(struct event_batch_meta *meta, size_t index, const char *why, char *err,
                       size_t errlen)
{
    if (meta->rejected_events++ == 0)
        pb_fail(err, errlen, -EINVAL, "event %zu: %s", index, why);
}

/*
 * The batch without its events (field 4), for protobuf-c to unpack the
 * metadata and the pod table; *nev counts the events. false when the
 * top-level wire format is broken or out of memory. *rest is malloc'ed.
 */
static bool split_events(const uint8_t *data, size_t len, uint8_t **rest, size_t *rest_len,
                         size_t *nev)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;

    *rest_len = *nev = 0;
    if (!(*rest = malloc(len ? len : 1)))
        return false;
    while (r.p < r.end) {
        const uint8_t *start = r.p;
        if (!pb_rd_field(&r, &f))
            return false;
        if (f.num == 4 && f.wt == PB_WT_LEN) {
            (*nev)++;
            continue;
        }
        memcpy(*rest + *rest_len, start, (size_t)(r.p - start));
        *rest_len += (size_t)(r.p - start);
    }
    return true;
}

int event_batch_decode_generic(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                               struct event **events, size_t *n, char *err, size_t errlen)
{
    struct arena arena = {.next_cap = len < (4u << 20) ? len * 4 + 4096 : (16u << 20)};
    ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free, .allocator_data = &arena};
    struct intern_cache ic = {0};
    struct event *evs = NULL;
    struct event_k8s *pods = NULL;
    uint8_t *rest = NULL;
    size_t done = 0, rest_len = 0, nev = 0, index = 0;
    char msg[200];
    int rc;

    *events = NULL;
    *n = 0;
    memset(meta, 0, sizeof(*meta));
    if (err && errlen)
        err[0] = '\0';
    Ebpfmonitor__EventBatch *pb = NULL;
    if (split_events(data, len, &rest, &rest_len, &nev))
        pb = ebpfmonitor__event_batch__unpack(&alloc, rest_len, rest);
    if (!pb) {
        rc = pb_fail(err, errlen, -EINVAL, "not a valid EventBatch message (%zu bytes)", len);
        goto out;
    }
    if ((rc = meta_intern(pb->node, &meta->node)) ||
        (rc = meta_intern(pb->agent_instance, &meta->agent_instance)) ||
        (rc = meta_intern(pb->agent_pod_name, &meta->pod_name)) ||
        (rc = meta_intern(pb->agent_pod_namespace, &meta->pod_namespace))) {
        pb_fail(err, errlen, rc, "batch metadata: string table full");
        goto out;
    }
    meta->sequence = pb->sequence;
    meta->kernel_drops = pb->kernel_drops;
    meta->agent_drops = pb->agent_drops;
    meta->sent_at_ns = pb->sent_at_ns;

    if (pb->n_pods && !(pods = malloc(pb->n_pods * sizeof(*pods)))) {
        rc = pb_fail(err, errlen, -ENOMEM, "out of memory for %zu pods", pb->n_pods);
        goto out;
    }
    for (size_t i = 0; i < pb->n_pods; i++) {
        const Ebpfmonitor__PodRef *pr = pb->pods[i];
        if ((rc = meta_intern(pr->node_name, &pods[i].node_name)) ||
            (rc = meta_intern(pr->pod_name, &pods[i].pod_name)) ||
            (rc = meta_intern(pr->namespace_, &pods[i].namespace)) ||
            (rc = meta_intern(pr->container_id, &pods[i].container_id)) ||
            (rc = meta_intern(pr->pod_uid, &pods[i].pod_uid))) {
            pb_fail(err, errlen, rc, "pods[%zu]: string table full", i);
            goto out;
        }
    }
    if (nev && !(evs = malloc(nev * sizeof(*evs)))) {
        rc = pb_fail(err, errlen, -ENOMEM, "out of memory for %zu events", nev);
        goto out;
    }
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    while (r.p < r.end) {
        pb_rd_field(&r, &f);
        if (f.num != 4 || f.wt != PB_WT_LEN)
            continue;
        rc = generic_event(f.data, f.len, meta->node, pods, pb->n_pods, &evs[done], &ic, &alloc,
                           msg, sizeof(msg));
        if (rc == -ENOMEM) {
            pb_fail(err, errlen, rc, "event %zu: %s", index, msg);
            goto out;
        }
        if (rc)
            skip_event(meta, index, msg, err, errlen);
        else
            done++;
        index++;
    }
    *events = evs;
    *n = done;
    evs = NULL;
    rc = 0;
out:
    if (evs) {
        for (size_t i = 0; i < done; i++)
            event_clear(&evs[i]);
        free(evs);
    }
    if (rc)
        memset(meta, 0, sizeof(*meta));
    free(rest);
    free(pods);
    arena_release(&arena);
    return rc;
}

/* ---- fast path: the wire format straight into struct event ---- */

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

/* Interns a non-empty wire string (no NUL inside); empty means absent. false on failure. */
static bool fast_str(const uint8_t *data, size_t len, const char **dst)
{
    *dst = NULL;
    if (!len)
        return true;
    if (memchr(data, '\0', len))
        return false;
    char tmp[256];
    if (len >= sizeof(tmp))
        return (*dst = intern_n((const char *)data, len)) != NULL;
    memcpy(tmp, data, len);
    tmp[len] = '\0';
    return (*dst = intern_cached(tmp)) != NULL;
}

/* ConnectionDetails. */
static bool fast_conn(const struct pb_field *f, struct event *e)
{
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

/* ExecDetails, gathered into x (converted by to_exec() once complete). */
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
    default:
        return false;
    }
}

/* The details message of field `which` (20..23), already checked against e->type. */
static bool fast_details(const uint8_t *data, size_t len, unsigned which, struct event *e)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    Ebpfmonitor__ExecDetails x = EBPFMONITOR__EXEC_DETAILS__INIT;
    ProtobufCBinaryData args[PB_FAST_MAX_ARGS];
    x.args = args;

    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f))
            return false;
        bool ok = which == 20   ? fast_conn(&f, e)
                  : which == 21 ? fast_drop(&f, e)
                  : which == 22 ? fast_exec(&f, &x)
                  : which == 23 ? fast_exit(&f, e)
                                : false;
        if (!ok)
            return false;
    }
    return which != 22 || to_exec(&x, e, NULL, 0) == 0;
}

/* The wire type each Event field has in the schema (1..24). */
static unsigned event_field_wt(uint32_t num)
{
    if (num == 1)
        return PB_WT_I64;
    if (num == 7 || (num >= 9 && num <= 16) || (num >= 20 && num <= 23))
        return PB_WT_LEN;
    return PB_WT_VARINT;
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
        if (!pb_rd_field(&r, &f) || f.num > 24 || f.wt != event_field_wt(f.num))
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
            if (det_field) /* protobuf merges a repeated message: the reference path does */
                goto fail;
            det_field = f.num;
            det = f.data, detl = f.len;
            break;
        case 24:
            pod_ref = f.v;
            break;
        default: /* unknown: the reference path skips it */
            goto fail;
        }
    }
    if (e->type == EVENT_TYPE_NONE || pod_ref > npods)
        goto fail;
    if (pod_ref)
        pod_fill(&e->k8s, &pods[pod_ref - 1]);
    if ((sl || dl) && (sl != dl || (sl != 4 && sl != 16)))
        goto fail;
    if (sl) {
        e->family = sl == 4 ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6;
        memcpy(e->saddr, saddr, sl);
        memcpy(e->daddr, daddr, dl);
    }
    if (det_field && (det_field != (unsigned)details_for_type(e->type) ||
                      !fast_details(det, detl, det_field, e)))
        goto fail;
    return true;
fail:
    event_clear(e);
    return false;
}

/* One PodRef entry; false when the reference path must decide. */
static bool fast_podref(const uint8_t *data, size_t len, struct event_k8s *k)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    memset(k, 0, sizeof(*k));
    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f) || f.wt != PB_WT_LEN || f.num > 5)
            return false;
        const char **dst[] = {&k->node_name, &k->pod_name, &k->namespace, &k->container_id,
                              &k->pod_uid};
        if (!fast_str(f.data, f.len, dst[f.num - 1]))
            return false;
    }
    return true;
}

/* The wire type of EventBatch fields 1..10. */
static unsigned batch_field_wt(uint32_t num)
{
    return num == 1 || num == 2 || num == 4 || num >= 8 ? PB_WT_LEN : PB_WT_VARINT;
}

/* 0 when decoded, 1 when the reference path must decide, -ENOMEM. */
static int fast_batch_decode(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                             struct event **events, size_t *n, char *err, size_t errlen)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    size_t nev = 0, npods = 0;
    struct pb_field str[11] = {{0}};
    bool seen[11] = {false};
    struct event_k8s pods_stack[32], *pods = pods_stack;
    char msg[200];

    memset(meta, 0, sizeof(*meta));
    /* First pass: the metadata (the publisher appends it after the events) and the counts. */
    while (r.p < r.end) {
        if (!pb_rd_field(&r, &f) || f.num > 10 || f.wt != batch_field_wt(f.num))
            return 1;
        if (f.num != 4 && f.num != 10 && seen[f.num])
            return 1;
        seen[f.num] = true;
        switch (f.num) {
        case 3:
            meta->sequence = f.v;
            break;
        case 4:
            nev++;
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
            rc = generic_event_alone(f.data, f.len, meta->node, pods, npods, &evs[done], msg,
                                     sizeof(msg));
            if (rc == -ENOMEM)
                goto fallback;
            if (rc) {
                skip_event(meta, index++, msg, err, errlen);
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

int event_batch_decode_fast(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                            struct event **events, size_t *n, char *err, size_t errlen)
{
    *events = NULL;
    *n = 0;
    if (err && errlen)
        err[0] = '\0';
    int rc = fast_batch_decode(data, len, meta, events, n, err, errlen);
    if (rc < 0)
        pb_fail(err, errlen, rc, "out of memory");
    return rc;
}

int event_batch_decode(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                       struct event **events, size_t *n, char *err, size_t errlen)
{
    int rc = event_batch_decode_fast(data, len, meta, events, n, err, errlen);
    if (rc <= 0)
        return rc;
    return event_batch_decode_generic(data, len, meta, events, n, err, errlen);
}

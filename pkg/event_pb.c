/*
 * Protobuf codec for events and batches (pkg/events.proto): the public API
 * of event_pb.h over two codecs that turn the same bytes into the same events.
 *
 *   event_pb_ref.c   the reference: protobuf-c's generated packer and
 *                    unpacker (per-event messages, whole batches, and every
 *                    input the fast decoder declines).
 *   event_pb_fast.c  the hand-written encoder the publisher uses and the
 *                    decoder every batch tries first; its header lists what
 *                    to update when events.proto changes.
 *   event_pb.c       this file: the conversions both need (exec argv, pod IPs, the
 *                    pod table fill, string interning, skipped-event
 *                    accounting) and the decode entry points.
 *
 * Decoded strings are interned; a per-thread cache sits in front of the
 * shared intern table because consecutive events of a batch mostly repeat
 * the same pod, namespace and drop reason.
 */
#include "event_pb.h"

#include "errmsg.h"
#include "event_pb_internal.h"
#include "intern.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The wire enums are the C enums; conversions are plain casts. */
_Static_assert((int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_CONNECTION == EVENT_CONNECTION &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_ACCEPT == EVENT_ACCEPT &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_PACKET_DROP == EVENT_PACKET_DROP &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXEC == EVENT_EXEC &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXIT == EVENT_EXIT &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_CLOSE == EVENT_CLOSE &&
                   (int)EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_DNS == EVENT_DNS &&
                   EVENT_DNS + 1 == EVENT_TYPE_COUNT,
               "EventType must match enum event_type");
_Static_assert((int)EBPFMONITOR__CLOSE_ROLE__CLOSE_ROLE_CLIENT == EVENT_ROLE_CLIENT &&
                   (int)EBPFMONITOR__CLOSE_ROLE__CLOSE_ROLE_SERVER == EVENT_ROLE_SERVER &&
                   (int)EBPFMONITOR__CLOSE_RESET__CLOSE_RESET_SENT == EVENT_RESET_SENT &&
                   (int)EBPFMONITOR__CLOSE_RESET__CLOSE_RESET_RECEIVED == EVENT_RESET_RECEIVED,
               "CloseRole/CloseReset must match enum event_role/event_reset");
_Static_assert((int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_ESTABLISHED ==
                       EVENT_STATUS_ESTABLISHED &&
                   (int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_FAILED ==
                       EVENT_STATUS_FAILED &&
                   (int)EBPFMONITOR__CONNECTION_STATUS__CONNECTION_STATUS_ATTEMPTED ==
                       EVENT_STATUS_ATTEMPTED,
               "ConnectionStatus must match enum event_status");

/*
 * A per-thread cache in front of the shared intern table: a decoding thread
 * sees the same few hundred pod names, container ids and drop reasons over
 * and over, and intern() hashes byte by byte under a process-wide lock.
 * Interned strings live forever, so cached pointers never dangle. In
 * bench_aggregator_ingest's mix (a few hundred names), 512 slots of one
 * entry sent one lookup in six to intern(): names sharing a slot pushed each
 * other out. 1024 sets of two ways (32 KiB a thread) send one in sixty-five.
 */
#define PB_TL_BITS 10
#define PB_TL_SETS (1u << PB_TL_BITS)
#define PB_TL_WAYS 2

static __thread struct pb_tl_entry {
    const char *val;
    size_t len;
} pb_tl_cache[PB_TL_SETS][PB_TL_WAYS];

/*
 * A word at a time; a product's high bits depend on every bit of its
 * factors and its low bits only on theirs, so a slot is taken from the top:
 * names that differ in their last bytes only ("node-1", "node-2") would
 * otherwise share the low bits, and the slot.
 */
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
    return h;
}

const uint8_t event_pb_field_wt[EVENT_PB_MAX_FIELD + 1] = {
    [1] = PB_WT_I64,                         /* id */
    [7] = PB_WT_LEN,                         /* command */
    [9 ... 16] = PB_WT_LEN,                  /* node, the k8s names, the addresses */
    [20 ... 23] = PB_WT_LEN,                 /* details: connection, drop, exec, exit */
    [25] = PB_WT_LEN,                        /* details: close */
    [26 ... EVENT_PB_MAX_FIELD] = PB_WT_LEN, /* workload, the peer's names, details: dns */
};

const char *event_pb_intern(const char *s)
{
    return event_pb_intern_n(s, strlen(s));
}

static unsigned pb_tl_slot(const char *s, size_t len)
{
    return (unsigned)(pb_fast_hash(s, len) >> (64 - PB_TL_BITS));
}

static const char *pb_tl_find(unsigned slot, const char *s, size_t len)
{
    for (unsigned w = 0; w < PB_TL_WAYS; w++) {
        const struct pb_tl_entry *c = &pb_tl_cache[slot][w];
        if (c->val && c->len == len && memcmp(c->val, s, len) == 0)
            return c->val;
    }
    return NULL;
}

static const char *pb_tl_intern(unsigned slot, const char *s, size_t len, bool process)
{
    const char *v = process ? intern_process_n(s, len) : intern_n(s, len);
    /* Only a copy of all len bytes is cached (see event_pb_intern_checked()). The newest
     * goes first, the others one way down; the last one leaves. */
    if (v && strnlen(v, len) == len) {
        for (unsigned w = PB_TL_WAYS - 1; w > 0; w--)
            pb_tl_cache[slot][w] = pb_tl_cache[slot][w - 1];
        pb_tl_cache[slot][0] = (struct pb_tl_entry){.val = v, .len = len};
    }
    return v;
}

const char *event_pb_intern_n(const char *s, size_t len)
{
    unsigned slot = pb_tl_slot(s, len);
    const char *v = pb_tl_find(slot, s, len);
    return v ? v : pb_tl_intern(slot, s, len, false);
}

const char *event_pb_intern_checked(const char *s, size_t len)
{
    unsigned slot = pb_tl_slot(s, len);
    const char *v = pb_tl_find(slot, s, len);
    if (v || memchr(s, '\0', len))
        return v;
    return pb_tl_intern(slot, s, len, false);
}

const char *event_pb_intern_process(const char *s, size_t len)
{
    unsigned slot = pb_tl_slot(s, len);
    const char *v = pb_tl_find(slot, s, len);

    return v ? v : pb_tl_intern(slot, s, len, true);
}

Ebpfmonitor__Event__DetailsCase event_pb_details_field(unsigned type)
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
    case EVENT_CLOSE:
        return EBPFMONITOR__EVENT__DETAILS_CLOSE;
    case EVENT_DNS:
        return EBPFMONITOR__EVENT__DETAILS_DNS;
    default:
        return EBPFMONITOR__EVENT__DETAILS__NOT_SET;
    }
}

Ebpfmonitor__DnsStatus event_pb_dns_status(unsigned status)
{
    switch (status) {
    case EVENT_STATUS_ANSWERED:
        return EBPFMONITOR__DNS_STATUS__DNS_STATUS_ANSWERED;
    case EVENT_STATUS_TIMEOUT:
        return EBPFMONITOR__DNS_STATUS__DNS_STATUS_TIMEOUT;
    case EVENT_STATUS_UNKNOWN:
        return EBPFMONITOR__DNS_STATUS__DNS_STATUS_UNKNOWN;
    case EVENT_STATUS_FAILED:
        return EBPFMONITOR__DNS_STATUS__DNS_STATUS_FAILED;
    default:
        return EBPFMONITOR__DNS_STATUS__DNS_STATUS_UNSPECIFIED;
    }
}

int event_pb_dns_to_event(const Ebpfmonitor__DnsDetails *x, struct event *e, char *err,
                          size_t errlen)
{
    size_t total = 0;

    switch ((int)x->status) {
    case EBPFMONITOR__DNS_STATUS__DNS_STATUS_UNSPECIFIED:
        break;
    case EBPFMONITOR__DNS_STATUS__DNS_STATUS_ANSWERED:
        e->status = EVENT_STATUS_ANSWERED;
        break;
    case EBPFMONITOR__DNS_STATUS__DNS_STATUS_TIMEOUT:
        e->status = EVENT_STATUS_TIMEOUT;
        break;
    case EBPFMONITOR__DNS_STATUS__DNS_STATUS_UNKNOWN:
        e->status = EVENT_STATUS_UNKNOWN;
        break;
    case EBPFMONITOR__DNS_STATUS__DNS_STATUS_FAILED:
        e->status = EVENT_STATUS_FAILED;
        break;
    default:
        return errmsg_set(err, errlen, "dns.status: unknown status %d", (int)x->status);
    }
    if (x->query_type > 65535 || x->rcode > 65535 || x->transaction_id > 65535)
        return errmsg_set(err, errlen, "dns.query_type/rcode/transaction_id: above 65535");
    if (x->opcode > 15)
        return errmsg_set(err, errlen, "dns.opcode: %u, above 15", (unsigned)x->opcode);
    if (x->query.len && memchr(x->query.data, '\0', x->query.len))
        return errmsg_set(err, errlen, "dns.query: contains a NUL byte");
    if (x->n_answers > EVENT_DNS_ANSWERS_MAX)
        return errmsg_set(err, errlen, "dns.answers: %zu answers, at most %d", x->n_answers,
                          EVENT_DNS_ANSWERS_MAX);
    for (size_t i = 0; i < x->n_answers; i++) {
        if (!x->answers[i].len || memchr(x->answers[i].data, '\0', x->answers[i].len))
            return errmsg_set(err, errlen, "dns.answers[%zu]: empty or contains a NUL byte", i);
        total += x->answers[i].len + 1;
    }
    if (total > UINT32_MAX)
        return errmsg_set(err, errlen, "dns.answers: too long");
    e->u.dns.query_type = (uint16_t)x->query_type;
    e->u.dns.rcode = (uint16_t)x->rcode;
    e->u.dns.transaction_id = (uint16_t)x->transaction_id;
    e->u.dns.opcode = (uint8_t)x->opcode;
    e->u.dns.latency_ns = x->latency_ns;
    e->u.dns.tc = x->truncated ? 1 : 0;
    e->u.dns.answers_truncated = x->answers_truncated ? 1 : 0;
    if (x->query.len && !(e->u.dns.query = strndup((const char *)x->query.data, x->query.len))) {
        errmsg_set(err, errlen, "dns.query: out of memory");
        return -ENOMEM;
    }
    if (total) {
        char *p = e->u.dns.answers = malloc(total);
        if (!p) {
            errmsg_set(err, errlen, "dns.answers: out of memory");
            return -ENOMEM;
        }
        for (size_t i = 0; i < x->n_answers; i++) {
            memcpy(p, x->answers[i].data, x->answers[i].len);
            p += x->answers[i].len;
            *p++ = '\0';
        }
        e->u.dns.answers_len = (uint32_t)total;
    }
    return 0;
}

int event_pb_exec_to_event(const Ebpfmonitor__ExecDetails *x, struct event *e, char *err,
                           size_t errlen)
{
    size_t flen = x->filename.len;
    if (flen && memchr(x->filename.data, '\0', flen))
        return errmsg_set(err, errlen, "exec.filename: contains a NUL byte");
    size_t total = 0;
    for (size_t i = 0; i < x->n_args; i++) {
        if (x->args[i].len && memchr(x->args[i].data, '\0', x->args[i].len))
            return errmsg_set(err, errlen, "exec.args[%zu]: contains a NUL byte", i);
        total += x->args[i].len + 1;
    }
    if (total > UINT32_MAX)
        return errmsg_set(err, errlen, "exec.args: too long");
    if (total) {
        /* One allocation: the arguments, then the filename as event_pack_strings() packs it. */
        char *p = e->u.exec.args = malloc(total + flen + 1);
        if (!p) {
            errmsg_set(err, errlen, "exec.args: out of memory");
            return -ENOMEM;
        }
        for (size_t i = 0; i < x->n_args; i++) {
            if (x->args[i].len)
                memcpy(p, x->args[i].data, x->args[i].len);
            p += x->args[i].len;
            *p++ = '\0';
        }
        if (flen) {
            memcpy(p, x->filename.data, flen);
            e->u.exec.filename = p;
            p += flen;
        }
        *p = '\0';
        e->u.exec.args_len = (uint32_t)total;
    } else if (flen && !(e->u.exec.filename = strndup((const char *)x->filename.data, flen))) {
        errmsg_set(err, errlen, "exec.filename: out of memory");
        return -ENOMEM;
    }
    e->u.exec.args_truncated = x->args_truncated ? 1 : 0;
    e->u.exec.filename_truncated = x->filename_truncated ? 1 : 0;
    if (x->effective_uid_case == EBPFMONITOR__EXEC_DETAILS__EFFECTIVE_UID_EUID) {
        e->u.exec.euid = x->euid;
        e->u.exec.has_euid = 1;
    }
    return 0;
}

void event_pb_pod_fill(struct event_k8s *k, const struct event_k8s *ref)
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
    if (!k->workload)
        k->workload = ref->workload;
    if (!k->workload_kind)
        k->workload_kind = ref->workload_kind;
    /* Only in the pod table: an event cannot carry these inline. */
    if (!k->app)
        k->app = ref->app;
    if (!k->ips)
        k->ips = ref->ips;
    k->host_network = k->host_network || ref->host_network;
}

int event_pb_ips_to_text(const ProtobufCBinaryData *ips, size_t n, const char **text, char *err,
                         size_t errlen)
{
    char stack[256], *s = stack;
    size_t cap = sizeof(stack), len = 0;
    int rc = 0;

    *text = NULL;
    if (!n)
        return 0;
    if (n > cap / (INET6_ADDRSTRLEN + 1)) {
        cap = n * (INET6_ADDRSTRLEN + 1);
        if (!(s = malloc(cap))) {
            errmsg_set(err, errlen, "ips: out of memory");
            return -ENOMEM;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ips[i].len != 4 && ips[i].len != 16) {
            rc = errmsg_set(err, errlen, "ips[%zu]: %zu bytes, expected 4 or 16", i, ips[i].len);
            goto out;
        }
        uint8_t addr[16] = {0};
        memcpy(addr, ips[i].data, ips[i].len);
        if (i)
            s[len++] = ',';
        event_addr_str(ips[i].len == 4 ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6, addr, s + len,
                       cap - len);
        len += strlen(s + len);
    }
    s[len] = '\0';
    if (!(*text = event_pb_intern(s))) {
        errmsg_set(err, errlen, "ips: string table full");
        rc = -ENOMEM;
    }
out:
    if (s != stack)
        free(s);
    return rc;
}

size_t event_pb_ips_next(const char **p, uint8_t addr[16])
{
    while (*p && **p) {
        const char *start = *p, *comma = strchr(start, ',');
        size_t len = comma ? (size_t)(comma - start) : strlen(start);
        char tmp[INET6_ADDRSTRLEN + 1];
        *p = comma ? comma + 1 : start + len;
        if (len >= sizeof(tmp))
            continue;
        memcpy(tmp, start, len);
        tmp[len] = '\0';
        if (inet_pton(AF_INET, tmp, addr) == 1)
            return 4;
        if (inet_pton(AF_INET6, tmp, addr) == 1)
            return 16;
    }
    return 0;
}

/* Records an undecodable event: counted, and the first one's reason kept in err. */
void event_pb_skip_event(struct event_batch_meta *meta, size_t index, const char *why, char *err,
                         size_t errlen)
{
    if (meta->rejected_events++ == 0)
        errmsg_set(err, errlen, "event %zu: %s", index, why);
}

int event_batch_decode_max(const uint8_t *data, size_t len, size_t max_events,
                           struct event_batch_meta *meta, struct event **events, size_t *n,
                           char *err, size_t errlen)
{
    int rc = event_pb_fast_decode_batch(data, len, max_events, meta, events, n, err, errlen);
    if (rc <= 0)
        return rc;
    return event_pb_ref_decode_batch(data, len, max_events, meta, events, n, err, errlen);
}

int event_batch_decode(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                       struct event **events, size_t *n, char *err, size_t errlen)
{
    return event_batch_decode_max(data, len, SIZE_MAX, meta, events, n, err, errlen);
}

int event_batch_decode_fast(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                            struct event **events, size_t *n, char *err, size_t errlen)
{
    return event_pb_fast_decode_batch(data, len, SIZE_MAX, meta, events, n, err, errlen);
}

int event_batch_decode_generic(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                               struct event **events, size_t *n, char *err, size_t errlen)
{
    return event_pb_ref_decode_batch(data, len, SIZE_MAX, meta, events, n, err, errlen);
}

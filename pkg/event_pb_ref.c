/*
 * The reference protobuf codec: protobuf-c's generated packer and unpacker
 * (events.pb-c.c) between struct event and pkg/events.proto.
 *
 * It is the definition of correct for the fast codec (event_pb_fast.c),
 * which must write the same bytes and decode to the same events; it also
 * decides every input the fast decoder declines. Encoding borrows the
 * events' strings, so packing a batch costs a few allocations in total, not
 * per event. Decoding unpacks into an arena (one free for the whole
 * message). protobuf-c keeps only the last of several details messages
 * where protobuf merges them, so merge_details() rewrites such events first.
 */
#include "event_pb.h"

#include "errmsg.h"
#include "event_pb_internal.h"
#include "intern.h"
#include "pb_wire.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- encoder: event -> message ---- */

/* Number of elements in the event's NUL-separated list (exec argv, dns answers). */
static size_t args_count(const struct event *e)
{
    uint32_t list_len;
    const char *p = event_pb_list(e, &list_len), *arg;
    size_t n = 0, len;
    while (event_pb_args_next(e, &p, &arg, &len))
        n++;
    return n;
}

static void args_fill(const struct event *e, ProtobufCBinaryData *out)
{
    uint32_t list_len;
    const char *p = event_pb_list(e, &list_len), *arg;
    size_t len;
    while (event_pb_args_next(e, &p, &arg, &len)) {
        out->data = (uint8_t *)arg;
        out->len = len;
        out++;
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
    out->k8s_workload = pb_str(e->k8s.workload);
    out->k8s_workload_kind = pb_str(e->k8s.workload_kind);
    out->peer_pod = pb_str(e->peer.pod);
    out->peer_namespace = pb_str(e->peer.namespace);
    out->peer_workload = pb_str(e->peer.workload);
    out->peer_workload_kind = pb_str(e->peer.workload_kind);
    out->peer_node = pb_str(e->peer.node);
    out->peer_service = pb_str(e->peer.service);
    out->peer_dns = pb_str(e->peer.dns);
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
        d->conn.error = pb_str(e->u.conn.error);
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
        d->exec.filename_truncated = e->u.exec.filename_truncated != 0;
        if (e->u.exec.has_euid) {
            d->exec.effective_uid_case = EBPFMONITOR__EXEC_DETAILS__EFFECTIVE_UID_EUID;
            d->exec.euid = e->u.exec.euid;
        }
        out->details_case = EBPFMONITOR__EVENT__DETAILS_EXEC;
        out->exec = &d->exec;
        break;
    case EVENT_EXIT:
        ebpfmonitor__exit_details__init(&d->exit);
        d->exit.exit_code = e->u.exit.exit_code;
        d->exit.signal = e->u.exit.signal;
        d->exit.duration_ns = e->u.exit.duration_ns;
        d->exit.core_dumped = e->u.exit.core_dumped != 0;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_EXIT;
        out->exit = &d->exit;
        break;
    case EVENT_CLOSE:
        ebpfmonitor__close_details__init(&d->close);
        d->close.role = (Ebpfmonitor__CloseRole)e->u.close.role;
        d->close.reset = (Ebpfmonitor__CloseReset)e->u.close.reset;
        d->close.duration_ns = e->u.close.duration_ns;
        d->close.bytes_sent = e->u.close.bytes_sent;
        d->close.bytes_received = e->u.close.bytes_received;
        d->close.retransmits = e->u.close.retransmits;
        d->close.srtt_us = e->u.close.srtt_us;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_CLOSE;
        out->close = &d->close;
        break;
    case EVENT_DNS:
        ebpfmonitor__dns_details__init(&d->dns);
        d->dns.status = event_pb_dns_status(e->status);
        if (e->u.dns.query) {
            d->dns.query.data = (uint8_t *)e->u.dns.query;
            d->dns.query.len = strlen(e->u.dns.query);
        }
        d->dns.query_type = e->u.dns.query_type;
        d->dns.rcode = e->u.dns.rcode;
        d->dns.n_answers = args_count(e);
        d->dns.answers = d->dns.n_answers ? args : NULL;
        if (d->dns.n_answers)
            args_fill(e, args);
        d->dns.latency_ns = e->u.dns.latency_ns;
        d->dns.transaction_id = e->u.dns.transaction_id;
        d->dns.truncated = e->u.dns.tc != 0;
        d->dns.answers_truncated = e->u.dns.answers_truncated != 0;
        d->dns.error = pb_str(e->u.dns.error);
        d->dns.opcode = e->u.dns.opcode;
        out->details_case = EBPFMONITOR__EVENT__DETAILS_DNS;
        out->dns = &d->dns;
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

int event_pb_podref_from_k8s(const struct event_k8s *k, Ebpfmonitor__PodRef *out,
                             struct event_pb_pod_scratch *scratch)
{
    const char *ip = k->ips;
    uint8_t addr[16];
    size_t n = 0;
    while (event_pb_ips_next(&ip, addr))
        n++;
    ebpfmonitor__pod_ref__init(out);
    scratch->ips = NULL;
    if (n && !(scratch->ips = malloc(n * (sizeof(*scratch->ips) + sizeof(addr)))))
        return -ENOMEM;
    uint8_t *store = (uint8_t *)(scratch->ips + n);
    ip = k->ips;
    for (size_t i = 0; i < n; i++) {
        scratch->ips[i].data = store + i * sizeof(addr);
        scratch->ips[i].len = event_pb_ips_next(&ip, scratch->ips[i].data);
    }
    out->node_name = pb_str(k->node_name);
    out->pod_name = pb_str(k->pod_name);
    out->namespace_ = pb_str(k->namespace);
    out->container_id = pb_str(k->container_id);
    out->pod_uid = pb_str(k->pod_uid);
    out->workload = pb_str(k->workload);
    out->workload_kind = pb_str(k->workload_kind);
    out->app = pb_str(k->app);
    out->n_ips = n;
    out->ips = scratch->ips;
    out->host_network = k->host_network;
    return 0;
}

void event_pb_pod_scratch_release(struct event_pb_pod_scratch *scratch)
{
    free(scratch->ips);
    scratch->ips = NULL;
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
    batch.kernel_missed = meta->kernel_missed;
    batch.agent_drops = meta->agent_drops;
    batch.sent_at_ns = meta->sent_at_ns;
    batch.instance_started_ns = meta->instance_started_ns;
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

/* ---- decoder: message -> event ---- */

enum {
    IC_NODE,
    IC_K8S_NODE,
    IC_POD,
    IC_NS,
    IC_CONTAINER,
    IC_POD_UID,
    IC_WORKLOAD,
    IC_WORKLOAD_KIND,
    IC_PEER, /* IC_PEER + 0..6: peer_pod .. peer_dns */
    IC_REASON = IC_PEER + 7,
    IC_LOCATION,
    IC_ERROR,
    IC_N
};

/* The last raw string seen per field and its interned copy. */
struct intern_cache {
    const char *raw[IC_N];
    const char *val[IC_N];
};

/* Empty means absent (NULL). */
static int intern_field(struct intern_cache *ic, int slot, const char *s, const char **dst)
{
    *dst = NULL;
    if (!s || !*s)
        return 0;
    if (strnlen(s, EVENT_NAME_MAX + 1) > EVENT_NAME_MAX)
        return -EINVAL; /* no agent sends it: not interned (the table is shared and bounded) */
    if (ic && ic->raw[slot] && strcmp(ic->raw[slot], s) == 0) {
        *dst = ic->val[slot];
        return 0;
    }
    if (!(*dst = event_pb_intern(s)))
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
    case EBPFMONITOR__EVENT__DETAILS_CLOSE:
        return "close";
    case EBPFMONITOR__EVENT__DETAILS_DNS:
        return "dns";
    default:
        return "no";
    }
}

static int to_event(const Ebpfmonitor__Event *pb, const char *batch_node,
                    const struct event_k8s *pods, size_t npods, struct event *e,
                    struct intern_cache *ic, char *err, size_t errlen)
{
    memset(e, 0, sizeof(*e));
    if ((int)pb->type <= EVENT_TYPE_NONE || (int)pb->type >= EVENT_TYPE_COUNT)
        return errmsg_set(err, errlen, "type: unknown event type %d", (int)pb->type);
    if (pb->pod_ref > npods)
        return errmsg_set(err, errlen, "pod_ref: entry %u but the batch has %zu pods", pb->pod_ref,
                          npods);
    if (pb->command.len >= sizeof(e->command))
        return errmsg_set(err, errlen, "command: %zu bytes, at most %zu allowed", pb->command.len,
                          sizeof(e->command) - 1);
    if (pb->command.len && memchr(pb->command.data, '\0', pb->command.len))
        return errmsg_set(err, errlen, "command: contains a NUL byte");
    size_t sl = pb->source_addr.len, dl = pb->dest_addr.len;
    if ((sl || dl) && (sl != dl || (sl != 4 && sl != 16)))
        return errmsg_set(err, errlen,
                          "source_addr/dest_addr: expected 4 or 16 bytes each, got %zu and %zu", sl,
                          dl);
    if (pb->source_port > 65535 || pb->dest_port > 65535)
        return errmsg_set(err, errlen, "source_port/dest_port: above 65535");
    if (pb->protocol > 255)
        return errmsg_set(err, errlen, "protocol: %u is not an IP protocol number", pb->protocol);
    Ebpfmonitor__Event__DetailsCase want = event_pb_details_field(pb->type);
    if (pb->details_case != EBPFMONITOR__EVENT__DETAILS__NOT_SET && pb->details_case != want)
        return errmsg_set(err, errlen, "details: %s event carries %s details",
                          event_type_name(pb->type), details_name(pb->details_case));
    if (pb->details_case == EBPFMONITOR__EVENT__DETAILS_CONNECTION &&
        (unsigned)pb->connection->status > EVENT_STATUS_ATTEMPTED)
        return errmsg_set(err, errlen, "connection.status: unknown status %d",
                          (int)pb->connection->status);
    if (pb->details_case == EBPFMONITOR__EVENT__DETAILS_CLOSE &&
        ((unsigned)pb->close->role > EVENT_ROLE_SERVER ||
         (unsigned)pb->close->reset > EVENT_RESET_RECEIVED))
        return errmsg_set(err, errlen, "close.role/close.reset: unknown value %d/%d",
                          (int)pb->close->role, (int)pb->close->reset);

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
        (rc = intern_field(ic, IC_POD_UID, pb->k8s_pod_uid, &e->k8s.pod_uid)) ||
        (rc = intern_field(ic, IC_WORKLOAD, pb->k8s_workload, &e->k8s.workload)) ||
        (rc = intern_field(ic, IC_WORKLOAD_KIND, pb->k8s_workload_kind, &e->k8s.workload_kind)))
        goto nomem;
    const char *peer_pb[7] = {
        pb->peer_pod,  pb->peer_namespace, pb->peer_workload, pb->peer_workload_kind,
        pb->peer_node, pb->peer_service,   pb->peer_dns};
    const char **peer[7] = {
        &e->peer.pod,  &e->peer.namespace, &e->peer.workload, &e->peer.workload_kind,
        &e->peer.node, &e->peer.service,   &e->peer.dns};
    for (int i = 0; i < 6; i++)
        if ((rc = intern_field(ic, IC_PEER + i, peer_pb[i], peer[i])))
            goto nomem;
    /* A name the process resolved: refused by a full table, the event goes without it. */
    if (pb->peer_dns && *pb->peer_dns) {
        if (strnlen(pb->peer_dns, EVENT_NAME_MAX + 1) > EVENT_NAME_MAX) {
            rc = -EINVAL;
            goto nomem;
        }
        e->peer.dns = event_pb_intern_process(pb->peer_dns, strlen(pb->peer_dns));
    }
    if (pb->pod_ref)
        event_pb_pod_fill(&e->k8s, &pods[pb->pod_ref - 1]);

    switch (pb->details_case) {
    case EBPFMONITOR__EVENT__DETAILS_CONNECTION:
        e->status = (uint8_t)pb->connection->status;
        e->u.conn.latency_ns = pb->connection->latency_ns;
        if ((rc = intern_field(ic, IC_ERROR, pb->connection->error, &e->u.conn.error)))
            goto nomem;
        break;
    case EBPFMONITOR__EVENT__DETAILS_DROP:
        e->u.drop.reason_code = pb->drop->reason_code;
        e->u.drop.suppressed = pb->drop->suppressed;
        if ((rc = intern_field(ic, IC_REASON, pb->drop->reason, &e->u.drop.reason)) ||
            (rc = intern_field(ic, IC_LOCATION, pb->drop->location, &e->u.drop.location)))
            goto nomem;
        break;
    case EBPFMONITOR__EVENT__DETAILS_EXEC:
        if ((rc = event_pb_exec_to_event(pb->exec, e, err, errlen))) {
            event_clear(e);
            return rc;
        }
        break;
    case EBPFMONITOR__EVENT__DETAILS_DNS:
        if ((rc = event_pb_dns_to_event(pb->dns, e, err, errlen))) {
            event_clear(e);
            return rc;
        }
        if ((rc = intern_field(ic, IC_ERROR, pb->dns->error, &e->u.dns.error)))
            goto nomem;
        break;
    case EBPFMONITOR__EVENT__DETAILS_EXIT:
        e->u.exit.exit_code = pb->exit->exit_code;
        e->u.exit.signal = pb->exit->signal;
        e->u.exit.duration_ns = pb->exit->duration_ns;
        e->u.exit.core_dumped = pb->exit->core_dumped;
        break;
    case EBPFMONITOR__EVENT__DETAILS_CLOSE:
        e->u.close.role = (uint8_t)pb->close->role;
        e->u.close.reset = (uint8_t)pb->close->reset;
        e->u.close.duration_ns = pb->close->duration_ns;
        e->u.close.bytes_sent = pb->close->bytes_sent;
        e->u.close.bytes_received = pb->close->bytes_received;
        e->u.close.retransmits = pb->close->retransmits;
        e->u.close.srtt_us = pb->close->srtt_us;
        break;
    default:
        break;
    }
    return 0;
nomem:
    event_clear(e);
    if (rc == -EINVAL)
        errmsg_set(err, errlen, "a name over %d bytes", EVENT_NAME_MAX);
    else
        errmsg_set(err, errlen, "string table full");
    return rc;
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

/* ---- batches and single Event messages from the wire ---- */

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
        if (!event_pb_is_details(&f))
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
        if (!event_pb_is_details(&f)) {
            memcpy(out + n, start, (size_t)(r.p - start));
            n += (size_t)(r.p - start);
        }
    }
    n = (size_t)(pb_put_varint(pb_put_varint(out + n, PB_TAG(kind, PB_WT_LEN)), body) - out);
    /* Bodies after the last change of kind, in order. */
    const uint8_t *from = data;
    for (r.p = data; r.p < r.end;) {
        pb_rd_field(&r, &f);
        if (event_pb_is_details(&f) && f.num != kind)
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
    if (!(data = merge_details(data, &len, alloc))) {
        errmsg_set(err, errlen, "out of memory");
        return -ENOMEM;
    }
    Ebpfmonitor__Event *pb = ebpfmonitor__event__unpack(alloc, len, data);
    if (!pb)
        return errmsg_set(err, errlen, "not a valid Event message (%zu bytes)", len);
    return to_event(pb, batch_node, pods, npods, e, ic, err, errlen);
}

/* One Event through protobuf-c with an arena of its own (the fast path's fallback). */
int event_pb_ref_decode_event(const uint8_t *data, size_t len, const char *batch_node,
                              const struct event_k8s *pods, size_t npods, struct event *e,
                              char *err, size_t errlen)
{
    struct arena arena = {.next_cap = len * 4 + 1024};
    ProtobufCAllocator alloc = {.alloc = arena_alloc, .free = arena_free, .allocator_data = &arena};
    int rc = generic_event(data, len, batch_node, pods, npods, e, NULL, &alloc, err, errlen);
    arena_release(&arena);
    return rc;
}

/*
 * The batch without its events (field 4), for protobuf-c to unpack the
 * metadata and the pod table; *nev counts the events. 0, -EINVAL when the
 * top-level wire format is broken, -E2BIG past max_events (the walk stops
 * there), or -ENOMEM. *rest is malloc'ed.
 */
static int split_events(const uint8_t *data, size_t len, size_t max_events, uint8_t **rest,
                        size_t *rest_len, size_t *nev)
{
    struct pb_rd r = {data, data + len};
    struct pb_field f;

    *rest_len = *nev = 0;
    if (!(*rest = malloc(len ? len : 1)))
        return -ENOMEM;
    while (r.p < r.end) {
        const uint8_t *start = r.p;
        if (!pb_rd_field(&r, &f))
            return -EINVAL;
        if (f.num == 4 && f.wt == PB_WT_LEN) {
            if (++*nev > max_events)
                return -E2BIG;
            continue;
        }
        memcpy(*rest + *rest_len, start, (size_t)(r.p - start));
        *rest_len += (size_t)(r.p - start);
    }
    return 0;
}

/* The batch's metadata and pod table (pods[0..pb->n_pods), malloc'ed, strings interned). */
static int ref_batch_meta(const Ebpfmonitor__EventBatch *pb, struct event_batch_meta *meta,
                          struct event_k8s **pods, char *err, size_t errlen)
{
    int rc;
    if ((rc = meta_intern(pb->node, &meta->node)) ||
        (rc = meta_intern(pb->agent_instance, &meta->agent_instance)) ||
        (rc = meta_intern(pb->agent_pod_name, &meta->pod_name)) ||
        (rc = meta_intern(pb->agent_pod_namespace, &meta->pod_namespace))) {
        errmsg_set(err, errlen, "batch metadata: string table full");
        return rc;
    }
    meta->sequence = pb->sequence;
    meta->kernel_drops = pb->kernel_drops;
    meta->kernel_missed = pb->kernel_missed;
    meta->agent_drops = pb->agent_drops;
    meta->sent_at_ns = pb->sent_at_ns;
    meta->instance_started_ns = pb->instance_started_ns;

    if (pb->n_pods && !(*pods = malloc(pb->n_pods * sizeof(**pods)))) {
        errmsg_set(err, errlen, "out of memory for %zu pods", pb->n_pods);
        return -ENOMEM;
    }
    for (size_t i = 0; i < pb->n_pods; i++) {
        const Ebpfmonitor__PodRef *pr = pb->pods[i];
        struct event_k8s *k = &(*pods)[i];
        if ((rc = meta_intern(pr->node_name, &k->node_name)) ||
            (rc = meta_intern(pr->pod_name, &k->pod_name)) ||
            (rc = meta_intern(pr->namespace_, &k->namespace)) ||
            (rc = meta_intern(pr->container_id, &k->container_id)) ||
            (rc = meta_intern(pr->pod_uid, &k->pod_uid)) ||
            (rc = meta_intern(pr->workload, &k->workload)) ||
            (rc = meta_intern(pr->workload_kind, &k->workload_kind)) ||
            (rc = meta_intern(pr->app, &k->app))) {
            errmsg_set(err, errlen, "pods[%zu]: string table full", i);
            return rc;
        }
        char why[100];
        if ((rc = event_pb_ips_to_text(pr->ips, pr->n_ips, &k->ips, why, sizeof(why)))) {
            errmsg_set(err, errlen, "pods[%zu].%s", i, why);
            return rc;
        }
        k->host_network = pr->host_network != 0;
    }
    return 0;
}

int event_pb_ref_decode_batch(const uint8_t *data, size_t len, size_t max_events,
                              struct event_batch_meta *meta, struct event **events, size_t *n,
                              char *err, size_t errlen)
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
    rc = split_events(data, len, max_events, &rest, &rest_len, &nev);
    if (rc == -E2BIG) {
        errmsg_set(err, errlen, "batch holds more than %zu events", max_events);
        goto out;
    }
    if (rc == 0 && !(pb = ebpfmonitor__event_batch__unpack(&alloc, rest_len, rest)))
        rc = -EINVAL;
    if (rc) {
        errmsg_set(err, errlen, "not a valid EventBatch message (%zu bytes)", len);
        goto out;
    }
    if ((rc = ref_batch_meta(pb, meta, &pods, err, errlen)))
        goto out;
    if (nev && !(evs = malloc(nev * sizeof(*evs)))) {
        errmsg_set(err, errlen, "out of memory for %zu events", nev);
        rc = -ENOMEM;
        goto out;
    }
    struct pb_rd r = {data, data + len};
    struct pb_field f;
    /* split_events() read every field already: none fails here. */
    while (r.p < r.end && pb_rd_field(&r, &f)) {
        if (f.num != 4 || f.wt != PB_WT_LEN)
            continue;
        rc = generic_event(f.data, f.len, meta->node, pods, pb->n_pods, &evs[done], &ic, &alloc,
                           msg, sizeof(msg));
        if (rc == -ENOMEM) {
            errmsg_set(err, errlen, "event %zu: %s", index, msg);
            goto out;
        }
        if (rc)
            event_pb_skip_event(meta, index, msg, err, errlen);
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

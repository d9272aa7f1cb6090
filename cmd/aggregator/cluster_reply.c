/*
 * The replicas' answers on the wire (see cluster_reply.h): the protobuf
 * QueryReply for queries, JSON for stats.
 */
#include "cluster_reply.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_pb.h"

/* ---- query answers ---- */

void cluster_reply_query_encode(const char *replica, const struct store_result *r,
                                const char *error, int64_t max_payload, struct buf *out)
{
    Ebpfmonitor__QueryReply m = EBPFMONITOR__QUERY_REPLY__INIT;
    size_t n = r != NULL ? r->count : 0, k = 0;
    Ebpfmonitor__Event *pbs = NULL, **ptrs = NULL;
    struct event_pb_scratch *scratch = NULL;
    int64_t max = max_payload;

    buf_reset(out);
    if (max <= CLUSTER_PAYLOAD_OVERHEAD)
        max = CLUSTER_DEFAULT_PAYLOAD;
    max -= CLUSTER_PAYLOAD_OVERHEAD;
    m.replica = (char *)replica;
    if (error != NULL) {
        m.error = (char *)error;
        n = 0;
    }
    if (n > 0 &&
        ((pbs = calloc(n, sizeof(*pbs))) == NULL || (ptrs = calloc(n, sizeof(*ptrs))) == NULL ||
         (scratch = calloc(n, sizeof(*scratch))) == NULL)) {
        m.error = "out of memory";
        n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (event_pb_from_event(&r->events[i], NULL, &pbs[k], &scratch[k]) != 0)
            break; /* the rest is reported as "more" */
        ptrs[k] = &pbs[k];
        k++;
    }
    if (r != NULL && error == NULL) {
        m.total_count = r->total_count;
        m.has_more = r->has_next || k < r->count;
    }
    m.events = ptrs;
    m.n_events = k;
    size_t size = ebpfmonitor__query_reply__get_packed_size(&m);
    while (size > (size_t)max && m.n_events > 0) {
        m.n_events /= 2;
        m.has_more = true;
        size = ebpfmonitor__query_reply__get_packed_size(&m);
    }
    if (buf_reserve(out, size + 1)) {
        ebpfmonitor__query_reply__pack(&m, (uint8_t *)out->data);
        out->len = size;
    }
    for (size_t i = 0; i < k; i++)
        event_pb_scratch_release(&scratch[i]);
    free(scratch);
    free(ptrs);
    free(pbs);
}

int cluster_reply_query_decode(const void *data, size_t len, struct cluster_query_reply *out)
{
    Ebpfmonitor__QueryReply *r;
    char err[128];

    memset(out, 0, sizeof(*out));
    r = ebpfmonitor__query_reply__unpack(NULL, len, data);
    if (r == NULL)
        return -EINVAL;
    out->pb = r;
    out->replica = r->replica;
    if (r->error != NULL && r->error[0]) {
        out->error = r->error;
        return 0; /* it has nothing to add */
    }
    if (r->n_events > 0 &&
        (out->src.events = calloc(r->n_events, sizeof(*out->src.events))) == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < r->n_events; i++) {
        if (event_pb_to_event(r->events[i], NULL, &out->src.events[out->src.count], err,
                              sizeof(err)) == 0)
            out->src.count++;
    }
    out->src.total_count = r->total_count;
    out->src.has_more = r->has_more;
    return 0;
}

void cluster_query_reply_free(struct cluster_query_reply *r)
{
    cluster_source_free(&r->src);
    if (r->pb != NULL)
        ebpfmonitor__query_reply__free_unpacked(r->pb, NULL);
    memset(r, 0, sizeof(*r));
}

/* ---- stats answers ---- */

void cluster_reply_stats_too_large(const char *replica, int64_t max_payload, struct buf *out)
{
    buf_reset(out);
    buf_puts(out, "{\"replica\":");
    buf_json_cstr(out, replica);
    buf_printf(out, ",\"error\":\"node table over the NATS max payload (%" PRId64 " bytes)\"}",
               max_payload);
}

json_t *cluster_reply_stats_decode(const void *data, size_t len)
{
    return json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
}

/* Counters: objects of non-negative integers and reals, bounded in keys and depth. */
static bool counters_valid(json_t *o, int depth)
{
    const char *key;
    json_t *v;

    if (!json_is_object(o) || depth > CLUSTER_COUNTERS_MAX_DEPTH ||
        json_object_size(o) > CLUSTER_COUNTERS_MAX_KEYS)
        return false;
    json_object_foreach(o, key, v)
    {
        if (strlen(key) > CLUSTER_KEY_MAX)
            return false;
        if (json_is_integer(v)) {
            if (json_integer_value(v) < 0)
                return false;
        } else if (json_is_real(v)) {
            if (!(json_real_value(v) >= 0))
                return false;
        } else if (!counters_valid(v, depth + 1)) {
            return false;
        }
    }
    return true;
}

const char *cluster_reply_stats_check(json_t *root)
{
    json_t *error = json_object_get(root, "error");

    if (error != NULL)
        return json_is_string(error) && json_string_length(error) <= CLUSTER_ERROR_MAX
                   ? NULL
                   : "error is not a short string";
    if (!json_is_boolean(json_object_get(root, "connected")))
        return "connected is not true or false";
    if (!counters_valid(json_object_get(root, "counters"), 0))
        return "counters are not objects of non-negative numbers";
    if (!json_is_object(json_object_get(root, "nodes")))
        return "no node table";
    return NULL;
}

/* ---- flows answers ---- */

static void flows_error(const char *replica, const char *error, struct buf *out)
{
    buf_reset(out);
    buf_puts(out, "{\"replica\":");
    buf_json_cstr(out, replica);
    buf_puts(out, ",\"error\":");
    buf_json_cstr(out, error);
    buf_putc(out, '}');
}

static int flows_error_emit(const char *replica, const char *error,
                            int (*emit)(void *ctx, const struct buf *part), void *ctx)
{
    struct buf out;

    buf_init(&out);
    flows_error(replica, error, &out);
    int rc = out.oom ? -ENOMEM : emit(ctx, &out);
    buf_free(&out);
    return rc;
}

/* One edge's object in flows_result_encode()'s form, appended to out. */
static void edge_append(struct buf *out, struct buf *tmp, const struct flows_edge *e)
{
    static const char head[] = "{\"edges\":[";
    struct flows_result one = {.edges = (struct flows_edge *)e, .count = 1};

    buf_reset(tmp);
    flows_result_encode(&one, tmp);
    if (!tmp->oom && tmp->len > sizeof(head) - 1 + 2)
        buf_append(out, tmp->data + sizeof(head) - 1, tmp->len - (sizeof(head) - 1) - 2);
    else
        out->oom = true;
}

int cluster_reply_flows_encode(const char *replica, const struct flows_result *r, const char *error,
                               int64_t max_payload, int (*emit)(void *ctx, const struct buf *part),
                               void *ctx)
{
    static const char tail[] = "],\"last\":false}";
    struct buf part, edge;
    char msg[128];
    size_t i = 0;
    int rc = 0;

    if (error != NULL)
        return flows_error_emit(replica, error, emit, ctx);
    if (max_payload <= CLUSTER_PAYLOAD_OVERHEAD)
        max_payload = CLUSTER_DEFAULT_PAYLOAD;
    size_t limit = (size_t)(max_payload - CLUSTER_PAYLOAD_OVERHEAD);
    buf_init(&part);
    buf_init(&edge);
    msg[0] = '\0';
    for (unsigned n = 0; rc == 0 && msg[0] == '\0'; n++) {
        buf_reset(&part);
        buf_puts(&part, "{\"replica\":");
        buf_json_cstr(&part, replica);
        buf_printf(&part, ",\"part\":%u,\"edges\":[", n);
        size_t first = i;
        for (; i < r->count; i++) {
            size_t at = part.len;
            if (i > first)
                buf_putc(&part, ',');
            edge_append(&part, &edge, &r->edges[i]);
            if (part.len + sizeof(tail) - 1 > limit) {
                part.len = at; /* this edge starts the next part */
                break;
            }
        }
        if (part.oom || edge.oom)
            snprintf(msg, sizeof(msg), "out of memory encoding the answer");
        else if (i == first && i < r->count)
            snprintf(msg, sizeof(msg), "an edge over the NATS max payload (%" PRId64 " bytes)",
                     max_payload);
        else if (i < r->count && n + 1 == CLUSTER_FLOWS_MAX_PARTS)
            snprintf(msg, sizeof(msg), "%zu edges over %u parts of the NATS max payload", r->count,
                     CLUSTER_FLOWS_MAX_PARTS);
        if (msg[0] != '\0')
            break;
        buf_printf(&part, "],\"last\":%s}", i == r->count ? "true" : "false");
        rc = part.oom ? -ENOMEM : emit(ctx, &part);
        if (i == r->count)
            break;
    }
    if (rc == 0 && msg[0] != '\0')
        rc = flows_error_emit(replica, msg, emit, ctx);
    buf_free(&part);
    buf_free(&edge);
    return rc;
}

int cluster_reply_flows_decode(const void *data, size_t len, struct cluster_flows_reply *out)
{
    json_t *error;

    memset(out, 0, sizeof(*out));
    out->root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    out->replica = json_string_value(json_object_get(out->root, "replica"));
    if (out->replica == NULL)
        return -EINVAL;
    error = json_object_get(out->root, "error");
    if (error != NULL) {
        if (!json_is_string(error) || json_string_length(error) > CLUSTER_ERROR_MAX)
            return -EINVAL;
        out->error = json_string_value(error);
        return 0;
    }
    /* An answer without "part" is whole (as replicas without parts send it). */
    json_t *part = json_object_get(out->root, "part"), *last = json_object_get(out->root, "last");
    out->last = true;
    if (part != NULL) {
        if (!json_is_integer(part) || json_integer_value(part) < 0 ||
            json_integer_value(part) >= CLUSTER_FLOWS_MAX_PARTS || !json_is_boolean(last))
            return -EINVAL;
        out->part = (unsigned)json_integer_value(part);
        out->last = json_is_true(last);
    }
    return flows_result_decode_json(out->root, &out->edges);
}

void cluster_flows_reply_free(struct cluster_flows_reply *r)
{
    flows_result_free(&r->edges);
    json_decref(r->root);
    memset(r, 0, sizeof(*r));
}

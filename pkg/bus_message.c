/*
 * Decoding one bus message (an event batch) in either encoding, and the
 * reason a message is rejected.
 *
 * Limits are checked before the expensive work: the body size first, then
 * the number of events (counted by the protobuf decoder in its first walk
 * over the batch, before any event is decoded, or a line count for JSON),
 * so a hostile message can neither crash the decoder nor make it allocate
 * without bound. A bad event costs only itself: it is
 * skipped and counted (meta.rejected_events), so a process that manages to
 * put hostile bytes into one event cannot hide the events around it. The
 * batch is refused as a whole only when its framing or metadata is broken.
 */
#include "bus_message.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bus.h"
#include "clock.h"
#include "errmsg.h"
#include "event_json.h"
#include "intern.h"

static const char *const reject_names[BUS_REJECT_COUNT] = {
    [BUS_OK] = "ok",
    [BUS_REJECT_OVERSIZED] = "oversized",
    [BUS_REJECT_TOO_MANY_EVENTS] = "too_many_events",
    [BUS_REJECT_UNKNOWN_ENCODING] = "unknown_encoding",
    [BUS_REJECT_MALFORMED_PROTOBUF] = "malformed_protobuf",
    [BUS_REJECT_MALFORMED_JSON] = "malformed_json",
    [BUS_REJECT_BAD_METADATA] = "bad_metadata",
};

const char *bus_reject_name(enum bus_reject r)
{
    if ((unsigned)r >= BUS_REJECT_COUNT)
        return "unknown";
    return reject_names[r];
}

/* Fills err (errmsg_set) and evaluates to the reason r. */
#define REJECT(r, err, errlen, ...) (errmsg_set((err), (errlen), __VA_ARGS__), (r))

void bus_batch_free(struct bus_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        event_clear(&b->events[i]);
    free(b->events);
    free(b->present);
    memset(b, 0, sizeof(*b));
}

/* ---- protobuf ---- */

static enum bus_reject decode_protobuf(const char *data, size_t len, struct bus_batch *out,
                                       char *err, size_t errlen)
{
    char msg[256];

    /* The decoder counts the events in its own first walk and stops past the limit. */
    msg[0] = '\0';
    int rc = event_batch_decode_max((const uint8_t *)data, len, BUS_MAX_BATCH_EVENTS, &out->meta,
                                    &out->events, &out->n, msg, sizeof(msg));
    if (rc == -E2BIG)
        return REJECT(BUS_REJECT_TOO_MANY_EVENTS, err, errlen, "batch holds more than %u events",
                      BUS_MAX_BATCH_EVENTS);
    if (rc < 0)
        return REJECT(BUS_REJECT_MALFORMED_PROTOBUF, err, errlen, "%s", msg);
    out->events_reason = BUS_REJECT_MALFORMED_PROTOBUF;
    if (out->meta.rejected_events)
        errmsg_set(err, errlen, "%s", msg);
    return BUS_OK;
}

/* ---- JSON lines ---- */

static bool blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)s[i]))
            return false;
    return true;
}

static enum bus_reject decode_json(const char *data, size_t len, struct bus_batch *out, char *err,
                                   size_t errlen)
{
    size_t lines = 0;
    const char *p = data, *end = data + len;
    char msg[256];

    /* Count first, so an oversized batch costs one memchr pass and no allocation. */
    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        const char *le = nl ? nl : end;
        if (!blank(p, le - p) && ++lines > BUS_MAX_BATCH_EVENTS)
            return REJECT(BUS_REJECT_TOO_MANY_EVENTS, err, errlen,
                          "batch holds more than %u events", BUS_MAX_BATCH_EVENTS);
        p = nl ? nl + 1 : end;
    }
    out->events_reason = BUS_REJECT_MALFORMED_JSON;
    if (lines && !(out->events = calloc(lines, sizeof(*out->events))))
        return REJECT(BUS_REJECT_MALFORMED_JSON, err, errlen, "out of memory for %zu events",
                      lines);

    size_t line_no = 0;
    for (p = data; p < end;) {
        const char *nl = memchr(p, '\n', end - p);
        const char *le = nl ? nl : end;
        line_no++;
        if (!blank(p, le - p)) {
            msg[0] = '\0';
            int rc = event_json_parse(p, le - p, &out->events[out->n], msg, sizeof(msg));
            if (rc == -ENOMEM) {
                bus_batch_free(out);
                return REJECT(BUS_REJECT_MALFORMED_JSON, err, errlen, "line %zu: %s", line_no, msg);
            }
            if (rc < 0) {
                if (out->meta.rejected_events++ == 0)
                    errmsg_set(err, errlen, "line %zu: %s", line_no, msg);
            } else {
                out->n++;
            }
        }
        p = nl ? nl + 1 : end;
    }
    return BUS_OK;
}

/* ---- encodings ---- */

enum encoding { ENC_SNIFF, ENC_PROTOBUF, ENC_JSON, ENC_UNKNOWN };

static bool token_eq(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/*
 * Maps a Content-Type to an encoding: the media type decides (parameters
 * ignored, except that a protobuf messageType other than ours is refused).
 */
static enum encoding content_type_encoding(const char *ct)
{
    while (isspace((unsigned char)*ct))
        ct++;
    if (!*ct)
        return ENC_SNIFF;
    const char *semi = strchr(ct, ';');
    size_t n = semi ? (size_t)(semi - ct) : strlen(ct);
    while (n && isspace((unsigned char)ct[n - 1]))
        n--;

    if (token_eq(ct, n, "application/x-protobuf") || token_eq(ct, n, "application/protobuf") ||
        token_eq(ct, n, "application/vnd.google.protobuf")) {
        const char *mt = semi ? strcasestr(semi, "messagetype=") : NULL;
        if (mt) {
            mt += strlen("messagetype=");
            size_t m = strcspn(mt, "; \t\"");
            if (*mt == '"')
                m = strcspn(++mt, "\"");
            if (!token_eq(mt, m, "ebpfmonitor.EventBatch"))
                return ENC_UNKNOWN;
        }
        return ENC_PROTOBUF;
    }
    if (token_eq(ct, n, "application/x-ndjson") || token_eq(ct, n, "application/ndjson") ||
        token_eq(ct, n, "application/jsonl") || token_eq(ct, n, "application/x-jsonlines") ||
        token_eq(ct, n, "application/jsonlines") || token_eq(ct, n, "application/json"))
        return ENC_JSON;
    return ENC_UNKNOWN;
}

/* JSON lines start with '{' (after optional whitespace); anything else is protobuf. */
static enum encoding sniff(const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '{')
            return ENC_JSON;
        if (!isspace((unsigned char)data[i]))
            break;
    }
    return ENC_PROTOBUF;
}

enum bus_reject bus_body_decode(const char *data, size_t len, struct bus_batch *out, char *err,
                                size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    if (len > BUS_MAX_MESSAGE_BYTES)
        return REJECT(BUS_REJECT_OVERSIZED, err, errlen, "message of %zu bytes exceeds %u bytes",
                      len, BUS_MAX_MESSAGE_BYTES);
    if (!data)
        data = "";
    if (sniff(data, len) == ENC_JSON)
        return decode_json(data, len, out, err, errlen);
    return decode_protobuf(data, len, out, err, errlen);
}

/* A header's value, NULL when absent or empty. */
static const char *header(natsMsg *msg, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(msg, key, &v) != NATS_OK || !v || !*v)
        return NULL;
    return v;
}

/* Decimal uint64 header: 0 absent (*v untouched), 1 parsed, -1 invalid. */
static int header_u64(natsMsg *msg, const char *key, uint64_t *v)
{
    const char *s = header(msg, key);
    if (!s)
        return 0;
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *v = x;
    return 1;
}

/* JSON bodies carry no metadata of their own: it comes from the headers. */
static enum bus_reject json_meta_from_headers(natsMsg *msg, struct event_batch_meta *m, char *err,
                                              size_t errlen)
{
    memset(m, 0, sizeof(*m));
    const char *node = header(msg, BUS_HDR_NODE), *inst = header(msg, BUS_HDR_INSTANCE);
    uint64_t events = 0;
    int has_seq;

    if (!node)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "JSON batch without a %s header",
                      BUS_HDR_NODE);
    if (!inst)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "JSON batch without a %s header",
                      BUS_HDR_INSTANCE);
    if ((has_seq = header_u64(msg, BUS_HDR_SEQUENCE, &m->sequence)) <= 0 || m->sequence == 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "JSON batch %s %s header%s",
                      has_seq ? "with an invalid" : "without a", BUS_HDR_SEQUENCE,
                      has_seq ? " (must be an integer >= 1)" : "");
    if (header_u64(msg, BUS_HDR_KERNEL_DROPS, &m->kernel_drops) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header",
                      BUS_HDR_KERNEL_DROPS);
    if (header_u64(msg, BUS_HDR_AGENT_DROPS, &m->agent_drops) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header",
                      BUS_HDR_AGENT_DROPS);
    if (header_u64(msg, BUS_HDR_KERNEL_MISSED, &m->kernel_missed) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header",
                      BUS_HDR_KERNEL_MISSED);
    if (header_u64(msg, BUS_HDR_INSTANCE_STARTED, &m->instance_started_ns) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header",
                      BUS_HDR_INSTANCE_STARTED);
    if (header_u64(msg, BUS_HDR_SENT_AT, &m->sent_at_ns) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header", BUS_HDR_SENT_AT);
    if (header_u64(msg, BUS_HDR_EVENTS, &events) < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header", BUS_HDR_EVENTS);
    if (!(m->node = intern(node)) || !(m->agent_instance = intern(inst)))
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "batch metadata: string table full");
    return BUS_OK;
}

/* Whether name (NULL: none) is the batch's node: both interned, so the pointers are equal. */
static bool same_node(const char *name, const char *node)
{
    return name == NULL || name == node || strcmp(name, node) == 0;
}

/*
 * Drops the events of b an agent could not have sent (event_check_bounds()):
 * the decoders check the wire format, not the sizes, and a history bounded
 * by its number of events must not hold a megabyte argv; nor a timestamp
 * more than BUS_MAX_AHEAD_NS ahead of this clock; nor an event of another
 * node, or of a pod on another node (an agent watches its own node's pods):
 * its pod would name addresses for the whole cluster. Counted as rejected,
 * with the batch's own reason.
 */
static void drop_out_of_bounds(struct bus_batch *b, char *err, size_t errlen)
{
    char msg[160];
    size_t kept = 0;
    uint64_t latest = b->n ? clock_realtime_ns() + BUS_MAX_AHEAD_NS : 0;

    for (size_t i = 0; i < b->n; i++) {
        const struct event *prev = kept ? &b->events[kept - 1] : NULL;
        int bad = event_check_bounds(&b->events[i], prev, msg, sizeof(msg));
        if (bad == 0 && b->events[i].timestamp_ns > latest) {
            snprintf(msg, sizeof(msg), "timestamp %" PRIu64 " is more than %llu s ahead of now",
                     b->events[i].timestamp_ns, BUS_MAX_AHEAD_NS / 1000000000ull);
            bad = -1;
        }
        if (bad == 0 && (!same_node(b->events[i].node, b->meta.node) ||
                         !same_node(b->events[i].k8s.node_name, b->meta.node))) {
            snprintf(msg, sizeof(msg), "%s is not the batch's node",
                     same_node(b->events[i].node, b->meta.node) ? "its pod's node" : "its node");
            bad = -1;
        }
        if (bad < 0) {
            if (b->meta.rejected_events++ == 0)
                errmsg_set(err, errlen, "event %zu: %s", i, msg);
            event_clear(&b->events[i]);
            continue;
        }
        if (kept != i)
            b->events[kept] = b->events[i];
        kept++;
    }
    b->n = kept;
}

/* The batch's node: what NODE_NAME accepts, or the batch is refused (BAD_METADATA). */
static enum bus_reject check_node(const char *node, char *err, size_t errlen)
{
    if (event_node_name_valid(node, EVENT_NODE_MAX))
        return BUS_OK;
    return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                  "batch node is not a node name (1-%d bytes of UTF-8 without control "
                  "characters or surrounding spaces)",
                  EVENT_NODE_MAX);
}

/*
 * The batch's node against what else the message says of it: an agent publishes
 * to <prefix>.<node>, the node's '.', '*', '>' and spaces as '_' (SPEC §4), and
 * its Ebpf-Node header, when there is one, is the node. A batch that says
 * otherwise would land its events, and the pods it names, on a node whose
 * subject it did not use: with NATS permissions per subject, that is the one
 * thing an agent's credentials must not allow.
 */
static enum bus_reject check_node_of_message(natsMsg *msg, const char *node, char *err,
                                             size_t errlen)
{
    const char *subject = natsMsg_GetSubject(msg), *hdr = header(msg, BUS_HDR_NODE);
    const char *last = subject ? strrchr(subject, '.') : NULL;
    char want[EVENT_NODE_MAX + 2];

    bus_node_subject("", node, want, sizeof(want)); /* "." and the node's token */
    if (!last || strcmp(last, want) != 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                      "batch of node \"%.100s\" on subject \"%.100s\" (an agent publishes to "
                      "<prefix>%.100s)",
                      node, subject ? subject : "", want);
    if (hdr && strcmp(hdr, node) != 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                      "%s header \"%.100s\" is not the batch's node \"%.100s\"", BUS_HDR_NODE, hdr,
                      node);
    return BUS_OK;
}

/* The pods the agent saw deleted, sent with the batch. */
static enum bus_reject decode_gone(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen)
{
    const char *v = header(msg, BUS_HDR_PODS_GONE);
    char why[200];
    int n;

    if (!v)
        return BUS_OK;
    n = peers_gone_parse(v, strlen(v), out->gone, PEERS_GONE_MAX_PODS, why, sizeof(why));
    if (n < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header: %s",
                      BUS_HDR_PODS_GONE, why);
    /* An agent reports its own node's pods, deleted by now (give or take clock skew). */
    uint64_t latest = clock_realtime_ns() + BUS_MAX_AHEAD_NS;
    for (int i = 0; i < n; i++) {
        if (!out->meta.node || strcmp(out->gone[i].node, out->meta.node) != 0)
            return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                          "%s header: pod %d is on another node than the batch's",
                          BUS_HDR_PODS_GONE, i);
        if (out->gone[i].gone_ns > latest)
            return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                          "%s header: pod %d deleted more than %llu s ahead of now",
                          BUS_HDR_PODS_GONE, i, BUS_MAX_AHEAD_NS / 1000000000ull);
    }
    out->n_gone = (size_t)n;
    return BUS_OK;
}

/* The node's pods as its agent listed them, sent once per instance. */
static enum bus_reject decode_present(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen)
{
    const char *v = header(msg, BUS_HDR_PODS_PRESENT);
    char why[200];
    int n;

    if (!v)
        return BUS_OK;
    if (!(out->present = calloc(PEERS_PRESENT_MAX_PODS, sizeof(*out->present))))
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "%s header: out of memory",
                      BUS_HDR_PODS_PRESENT);
    n = peers_present_parse(v, strlen(v), &out->present_at_ns, out->present, PEERS_PRESENT_MAX_PODS,
                            why, sizeof(why));
    if (n < 0)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "invalid %s header: %s",
                      BUS_HDR_PODS_PRESENT, why);
    if (out->present_at_ns > clock_realtime_ns() + BUS_MAX_AHEAD_NS)
        return REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                      "%s header: listed more than %llu s ahead of now", BUS_HDR_PODS_PRESENT,
                      BUS_MAX_AHEAD_NS / 1000000000ull);
    out->n_present = (size_t)n;
    return BUS_OK;
}

/* The pod headers an agent sends with a batch: deletions, and once the node's pod list. */
static enum bus_reject decode_pods(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen)
{
    enum bus_reject r = decode_gone(msg, out, err, errlen);
    return r == BUS_OK ? decode_present(msg, out, err, errlen) : r;
}

enum bus_reject bus_message_decode(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen)
{
    const char *data = natsMsg_GetData(msg);
    size_t len = (size_t)natsMsg_GetDataLength(msg);
    const char *ct = header(msg, BUS_HDR_CONTENT_TYPE);
    enum encoding enc = ct ? content_type_encoding(ct) : ENC_SNIFF;
    enum bus_reject r;

    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    if (len > BUS_MAX_MESSAGE_BYTES)
        return REJECT(BUS_REJECT_OVERSIZED, err, errlen, "message of %zu bytes exceeds %u bytes",
                      len, BUS_MAX_MESSAGE_BYTES);
    if (enc == ENC_UNKNOWN)
        return REJECT(BUS_REJECT_UNKNOWN_ENCODING, err, errlen,
                      "unsupported Content-Type \"%.100s\" (expected %s or %s)", ct,
                      BUS_CONTENT_TYPE_PROTOBUF, BUS_CONTENT_TYPE_JSON);
    if (!data)
        data = "";
    if (enc == ENC_SNIFF)
        enc = sniff(data, len);

    if (enc == ENC_PROTOBUF) {
        if ((r = decode_protobuf(data, len, out, err, errlen)) != BUS_OK)
            return r;
        /* The batch's own fields are authoritative; headers are for people. */
        if (!out->meta.node || !*out->meta.node)
            r = REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "batch without a node");
        else if (!out->meta.agent_instance || !*out->meta.agent_instance)
            r = REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "batch without an agent_instance");
        else if (out->meta.sequence == 0)
            r = REJECT(BUS_REJECT_BAD_METADATA, err, errlen, "batch without a sequence");
        else
            r = check_node(out->meta.node, err, errlen);
        if (r == BUS_OK)
            r = check_node_of_message(msg, out->meta.node, err, errlen);
        if (r == BUS_OK)
            r = decode_pods(msg, out, err, errlen);
        if (r != BUS_OK)
            bus_batch_free(out);
        else
            drop_out_of_bounds(out, err, errlen);
        return r;
    }

    /* Metadata first: a batch without it is refused before any parsing. */
    struct event_batch_meta meta;
    uint64_t events = 0;
    if ((r = json_meta_from_headers(msg, &meta, err, errlen)) != BUS_OK ||
        (r = check_node(meta.node, err, errlen)) != BUS_OK ||
        (r = check_node_of_message(msg, meta.node, err, errlen)) != BUS_OK)
        return r;
    if ((r = decode_json(data, len, out, err, errlen)) != BUS_OK)
        return r;
    meta.rejected_events = out->meta.rejected_events;
    out->meta = meta;
    /* A count mismatch means the body was cut or the sender is confused. */
    size_t lines = out->n + out->meta.rejected_events;
    if (header_u64(msg, BUS_HDR_EVENTS, &events) == 1 && events != lines) {
        r = REJECT(BUS_REJECT_BAD_METADATA, err, errlen,
                   "%s header says %llu events, the body holds %zu", BUS_HDR_EVENTS,
                   (unsigned long long)events, lines);
        bus_batch_free(out);
        return r;
    }
    if ((r = decode_pods(msg, out, err, errlen)) != BUS_OK) {
        bus_batch_free(out);
        return r;
    }
    for (size_t i = 0; i < out->n; i++)
        if (!out->events[i].node)
            out->events[i].node = out->meta.node;
    drop_out_of_bounds(out, err, errlen);
    return BUS_OK;
}

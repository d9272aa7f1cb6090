/*
 * Decoding one bus message (a batch) in either encoding, with the reason a
 * message is rejected. Used by the aggregator, `ebpf-aggregator tail` and
 * `ebpf-aggregator decode`.
 */
#ifndef EBPF_MONITOR_BUS_MESSAGE_H
#define EBPF_MONITOR_BUS_MESSAGE_H

#include <nats.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "event_pb.h"

enum bus_reject {
    BUS_OK = 0,
    BUS_REJECT_OVERSIZED,      /* over BUS_MAX_MESSAGE_BYTES */
    BUS_REJECT_TOO_MANY_EVENTS, /* over BUS_MAX_BATCH_EVENTS */
    BUS_REJECT_UNKNOWN_ENCODING, /* Content-Type neither protobuf nor JSON */
    BUS_REJECT_MALFORMED_PROTOBUF,
    BUS_REJECT_MALFORMED_JSON, /* not JSON, or JSON with wrong types/fields */
    BUS_REJECT_BAD_METADATA,   /* missing/invalid node, instance or sequence */
    BUS_REJECT_COUNT,
};

/* "oversized", "too_many_events", ... (labels in /metrics and /api/stats). */
const char *bus_reject_name(enum bus_reject r);

struct bus_batch {
    struct event_batch_meta meta;
    struct event *events; /* owned; release with bus_batch_free */
    size_t n;
};

/*
 * Decodes a NATS message: the encoding comes from Content-Type (protobuf
 * when absent and the body is not JSON); for JSON the batch metadata comes
 * from the headers. Returns BUS_OK or the reason, with detail in err.
 */
enum bus_reject bus_message_decode(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen);

/*
 * Decodes a bare body with no headers (the `decode` command): protobuf
 * EventBatch, or JSON lines when it starts with '{'.
 */
enum bus_reject bus_body_decode(const char *data, size_t len, struct bus_batch *out, char *err,
                                size_t errlen);

void bus_batch_free(struct bus_batch *b);

#endif

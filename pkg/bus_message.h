/*
 * Decoding one bus message (a batch) in either encoding, with the reason a
 * message is rejected. Used by the aggregator, `ebpf-aggregator tail` and
 * `ebpf-aggregator decode`.
 */
#ifndef EBPF_MONITOR_BUS_MESSAGE_H
#define EBPF_MONITOR_BUS_MESSAGE_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "event_pb.h"
#include "peers.h"

enum bus_reject {
    BUS_OK = 0,
    BUS_REJECT_OVERSIZED,        /* over BUS_MAX_MESSAGE_BYTES */
    BUS_REJECT_TOO_MANY_EVENTS,  /* over BUS_MAX_BATCH_EVENTS */
    BUS_REJECT_UNKNOWN_ENCODING, /* Content-Type neither protobuf nor JSON */
    BUS_REJECT_MALFORMED_PROTOBUF,
    BUS_REJECT_MALFORMED_JSON, /* not JSON, or JSON with wrong types/fields */
    BUS_REJECT_BAD_METADATA,   /* missing/invalid node, instance or sequence */
    BUS_REJECT_COUNT,
};

/* "oversized", "too_many_events", ... (labels in /metrics and /api/stats). */
const char *bus_reject_name(enum bus_reject r);

struct bus_batch {
    struct event_batch_meta meta; /* meta.rejected_events: events skipped as undecodable */
    struct event *events;         /* owned; release with bus_batch_free */
    size_t n;
    enum bus_reject events_reason; /* the reason those events were skipped */
    /* Pods the agent saw deleted (BUS_HDR_PODS_GONE, either encoding), strings interned. */
    struct peers_pod gone[PEERS_GONE_MAX_PODS];
    size_t n_gone;
    /* The node's pods when its agent listed them (BUS_HDR_PODS_PRESENT): UIDs interned, owned
     * array; present_at_ns 0 when the batch carries no list. */
    const char **present;
    size_t n_present;
    uint64_t present_at_ns;
};

/*
 * Decodes a NATS message: the encoding comes from Content-Type (protobuf
 * when absent and the body is not JSON); for JSON the batch metadata comes
 * from the headers (Ebpf-Node, Ebpf-Instance and Ebpf-Sequence >= 1
 * required; Ebpf-Events, when present, must match the body). For protobuf
 * the batch's own fields are authoritative and must hold a node, an
 * agent_instance and a sequence >= 1. Events without a node get the batch's.
 * An event that does not decode is skipped and counted in
 * out->meta.rejected_events (err then says why the first was refused); the
 * rest of the batch is kept. Returns BUS_OK (release *out with
 * bus_batch_free) or the reason the whole message was refused, with detail
 * in err; on a reject *out holds nothing. An Ebpf-Pods-Gone or
 * Ebpf-Pods-Present header, when there, must parse (peers_gone_parse,
 * peers_present_parse) or the message is refused as bad metadata; a batch
 * may then hold no events.
 */
enum bus_reject bus_message_decode(natsMsg *msg, struct bus_batch *out, char *err, size_t errlen);

/*
 * Decodes a bare body with no headers (the `decode` command): protobuf
 * EventBatch, or JSON lines when it starts with '{'. No metadata is required.
 */
enum bus_reject bus_body_decode(const char *data, size_t len, struct bus_batch *out, char *err,
                                size_t errlen);

void bus_batch_free(struct bus_batch *b);

#endif

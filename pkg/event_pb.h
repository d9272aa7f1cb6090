/*
 * Protobuf codec for events and event batches (pkg/events.proto), the
 * default bus encoding. The batch helpers are what the publisher and the
 * aggregator use; the per-event helpers exist for callers that build their
 * own messages. Two codecs sit behind it: a reference one on protobuf-c
 * (event_pb_ref.c: the per-event helpers, event_batch_encode(),
 * event_batch_decode_generic()) and a hand-written fast one
 * (event_pb_fast.c: the append helpers, event_batch_decode_fast()), which
 * must agree byte for byte and event for event.
 */
#ifndef EBPF_MONITOR_EVENT_PB_H
#define EBPF_MONITOR_EVENT_PB_H

#include "buf.h"
#include "event.h"
#include "events.pb-c.h"

/* Everything in an EventBatch except the events. */
struct event_batch_meta {
    const char *node;             /* the reporting node; interned on decode */
    const char *agent_instance;   /* random id of the agent process; interned on decode */
    uint64_t sequence;            /* per instance, +1 per batch */
    uint64_t kernel_drops;        /* cumulative ring-buffer losses */
    uint64_t kernel_missed;       /* cumulative program runs the kernel skipped */
    uint64_t agent_drops;         /* cumulative agent-side drops */
    uint64_t sent_at_ns;          /* publish time, ns since the epoch */
    uint64_t instance_started_ns; /* when the instance started, ns since the epoch; 0 unknown */
    const char *pod_name;         /* the agent's own pod; NULL on a VM; interned on decode */
    const char *pod_namespace;
    /* Decoding only: events skipped because they did not decode (err names the first). */
    uint32_t rejected_events;
};

/*
 * Storage for the parts of an Ebpfmonitor__Event that are not in the event
 * itself. Keep it alive as long as the message filled with it.
 */
union event_pb_details {
    Ebpfmonitor__ConnectionDetails conn;
    Ebpfmonitor__DropDetails drop;
    Ebpfmonitor__ExecDetails exec;
    Ebpfmonitor__ExitDetails exit;
    Ebpfmonitor__CloseDetails close;
    Ebpfmonitor__DnsDetails dns;
};
struct event_pb_scratch {
    union event_pb_details details;
    ProtobufCBinaryData *args; /* exec argv or dns answers; heap, freed by
                                  event_pb_scratch_release() */
};

/*
 * Fills *out from e. out borrows e's strings and scratch, so both must
 * outlive it. When e->node equals batch_node (may be NULL) the node is left
 * empty, meaning "the batch's node". Returns 0, -EINVAL for an invalid type,
 * or -ENOMEM.
 */
int event_pb_from_event(const struct event *e, const char *batch_node, Ebpfmonitor__Event *out,
                        struct event_pb_scratch *scratch);
void event_pb_scratch_release(struct event_pb_scratch *scratch);

/*
 * Fills *out with k's pod-table entry (EventBatch.pods), the same PodRef the
 * fast encoder writes: ips parsed from k's text into 4- or 16-byte
 * addresses held in scratch. out borrows k's strings and scratch, so both
 * must outlive it. Returns 0 or -ENOMEM.
 */
struct event_pb_pod_scratch {
    ProtobufCBinaryData *ips; /* heap; freed by event_pb_pod_scratch_release() */
};
int event_pb_podref_from_k8s(const struct event_k8s *k, Ebpfmonitor__PodRef *out,
                             struct event_pb_pod_scratch *scratch);
void event_pb_pod_scratch_release(struct event_pb_pod_scratch *scratch);

/*
 * Validates pb and converts it into *out (zeroed first): strings interned,
 * exec filename/args owned by *out. An empty node becomes batch_node (which
 * must already be interned, or NULL). Returns 0, -EINVAL with a message in
 * err (may be NULL), or -ENOMEM; on error *out holds nothing.
 */
int event_pb_to_event(const Ebpfmonitor__Event *pb, const char *batch_node, struct event *out,
                      char *err, size_t errlen);

/*
 * Appends one packed EventBatch holding meta and events[0..n) to out.
 * Returns 0, -EINVAL (an event of invalid type) or -ENOMEM.
 */
int event_batch_encode(const struct event_batch_meta *meta, const struct event *events, size_t n,
                       struct buf *out);

/*
 * Incremental batch encoding, for a publisher that encodes each event as it
 * arrives: event_batch_append_event() appends e as one `events` entry (field
 * 4) of an EventBatch being built in out, and event_batch_append_meta()
 * appends the metadata fields, after which out holds a complete EventBatch
 * (protobuf allows fields in any order). Events whose node equals
 * batch_node (may be NULL) leave their node empty, as in event_batch_encode().
 * Both return 0, -EINVAL (invalid event type) or -ENOMEM; on error out is
 * unchanged.
 */
int event_batch_append_event(struct buf *out, const struct event *e, const char *batch_node);
int event_batch_append_meta(struct buf *out, const struct event_batch_meta *meta);

/*
 * The Kubernetes attributions already written to the batch being built. With
 * it, event_batch_append_event_pods() writes each distinct attribution once
 * per batch as a PodRef (EventBatch.pods, interleaved with the events) and
 * events refer to it by index (Event.pod_ref) instead of repeating the five
 * strings. Reset it whenever a new batch starts. Attributions are matched by
 * pointer (the strings are interned); when the table is full, events carry
 * their strings inline as before.
 */
#define EVENT_PB_PODS_MAX   128
#define EVENT_PB_PODS_SLOTS 256 /* hash slots, a power of two above EVENT_PB_PODS_MAX */
struct event_pb_pods {
    uint32_t n;    /* entries written so far */
    uint32_t last; /* 1-based entry of the previous event, 0 = none */
    struct event_k8s ref[EVENT_PB_PODS_MAX];
    uint8_t slot[EVENT_PB_PODS_SLOTS]; /* 1-based entry, 0 = free */
};
void event_pb_pods_reset(struct event_pb_pods *t);
/* As event_batch_append_event(); on error out and pods are unchanged. */
int event_batch_append_event_pods(struct buf *out, const struct event *e, const char *batch_node,
                                  struct event_pb_pods *pods);

/*
 * Decodes and validates a packed EventBatch: events may carry their
 * attribution inline or refer to an entry of the batch's pod table. On success *events is a
 * malloc'ed array of *n events (NULL when n is 0); the caller releases each
 * with event_clear() and then free()s the array. Meta strings are interned.
 *
 * An event that does not decode costs only itself: it is left out and
 * counted in meta->rejected_events, and err (may be NULL) says why the first
 * one was refused. The batch as a whole is refused only when its own wire
 * format, metadata or pod table is broken. Protobuf semantics throughout:
 * unknown fields are skipped, a repeated scalar's last value wins.
 * Returns 0, -EINVAL with a message in err, or -ENOMEM.
 */
int event_batch_decode(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                       struct event **events, size_t *n, char *err, size_t errlen);

/*
 * As event_batch_decode(), refusing with -E2BIG a batch of more than
 * max_events events before any of them is decoded or allocated (the count
 * comes from the decoder's own walk of the batch, so a message is read once).
 */
int event_batch_decode_max(const uint8_t *data, size_t len, size_t max_events,
                           struct event_batch_meta *meta, struct event **events, size_t *n,
                           char *err, size_t errlen);

/*
 * The two halves of event_batch_decode(), for tests that compare them:
 * _fast reads the wire directly and returns 1 (nothing decoded) when the
 * batch's metadata or pod table is unusual, which _generic (protobuf-c) then
 * decides; an unusual event alone goes through protobuf-c inside _fast. Same
 * contract otherwise: whenever _fast returns 0, _generic returns the same.
 */
int event_batch_decode_fast(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                            struct event **events, size_t *n, char *err, size_t errlen);
int event_batch_decode_generic(const uint8_t *data, size_t len, struct event_batch_meta *meta,
                               struct event **events, size_t *n, char *err, size_t errlen);

#endif

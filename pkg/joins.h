/*
 * The ClusterIP -> backend pod join: the client's `connection` to a
 * Service's ClusterIP and the backend's `accept` of it are two halves of one
 * TCP connection with the same client address and port (kube-proxy rewrites
 * the destination, not the source). The server halves (the client's
 * address, the backend pod) are kept for a window; a client half is held
 * until its server half is there, or the window passed, and then handed
 * back, with the backend as its peer when joined.
 *
 * Bounded: max_halves server halves (a full probe range evicts its oldest,
 * counted) and max_held held events (past it an event is not held, counted).
 * Unjoined client halves are counted by reason.
 *
 * Threads: every function may be called from any thread (one mutex).
 * Strings handed in must be interned.
 */
#ifndef EBPF_MONITOR_JOINS_H
#define EBPF_MONITOR_JOINS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"

/* The client's end of a connection: what both halves carry as their source. */
struct joins_key {
    uint8_t family; /* enum event_family */
    uint8_t protocol;
    uint16_t port;
    uint8_t ip[16];
};

/* A server half: the backend pod that accepted a connection from key at ts_ns. */
struct joins_half {
    struct joins_key key;
    uint64_t ts_ns;
    struct event_peer backend; /* pod, namespace, workload, workload_kind, node */
};

enum joins_unjoined {
    JOINS_NO_SERVER_HALF = 0, /* the window passed without one */
    JOINS_SEVERAL,            /* two backends for one client address within the window */
    JOINS_HELD_FULL,          /* not held: the queue was full */
    JOINS_UNJOINED_COUNT,
};

struct joins_stats {
    uint64_t halves; /* server halves held */
    uint64_t held;   /* client halves waiting */
    uint64_t joined; /* client halves given their backend */
    uint64_t unjoined[JOINS_UNJOINED_COUNT];
    uint64_t halves_evicted; /* server halves pushed out before their window ended */
};

struct joins;

/* NULL on allocation failure or a zero bound. */
struct joins *joins_new(uint32_t max_halves, uint32_t max_held, uint64_t window_ns);
/* Frees the held events too. */
void joins_free(struct joins *j);

/* "no_server_half", "several_candidates", "held_queue_full". */
const char *joins_unjoined_name(enum joins_unjoined r);

/*
 * The client half's key: a TCP `connection` (or `close` as client) whose
 * destination is a ClusterIP (the caller knows) -> its source. The server
 * half's: an `accept` (or `close` as server) -> its source too.
 */
bool joins_event_key(const struct event *e, struct joins_key *out);

/* Keeps a server half for the window after its ts_ns (now: the time it is added). */
void joins_add_half(struct joins *j, const struct joins_half *h, uint64_t now);

/*
 * Holds e (moved out of *e, which is left zeroed) until its server half is
 * known or the window after now passed. False when the queue is full: e is
 * left as it was (and counted unjoined, held_queue_full).
 */
bool joins_hold(struct joins *j, struct event *e, uint64_t now);

/*
 * Hands back, into out[0..max), the held events that are done at now:
 * joined (their empty peer_pod, peer_namespace, peer_workload,
 * peer_workload_kind and peer_node filled from the backend) or out of time.
 * Returns how many; the caller owns them.
 */
size_t joins_release(struct joins *j, uint64_t now, struct event *out, size_t max);

void joins_get_stats(struct joins *j, struct joins_stats *out);

/* Receives the server halves a batch made, up to JOINS_ANNOUNCE_MAX at a time. */
typedef void joins_announce_fn(void *ctx, const struct joins_half *h, size_t n);

/*
 * The join at ingest, for events[0..n) and their sides (enum
 * k8s_services_side, from k8s_services_enrich()): an accept or server close
 * of a pod that backs a Service is a server half, kept (joins_add_half) and
 * handed to announce; a connection or client close to a ClusterIP whose peer
 * pod is unknown is a client half: joined at once when its server half is
 * here already (as joins_release() would), else held (joins_hold) and moved
 * out of the batch. Returns the batch's new length: the events not held, in
 * their order.
 */
size_t joins_batch(struct joins *j, const uint8_t *sides, struct event *events, size_t n,
                   uint64_t now, joins_announce_fn *announce, void *ctx);

/* Most halves one announcement carries. */
#define JOINS_ANNOUNCE_MAX 1024

/*
 * {"replica":"<id>","halves":[{"family":"ipv4","ip":"10.1.0.5","port":40001,
 * "protocol":6,"ts_ns":n,"pod":..,"namespace":..,"workload":..,
 * "workload_kind":..,"node":..},...]}
 */
void joins_announce_write(struct buf *out, const char *replica, const struct joins_half *h,
                          size_t n);
/*
 * Parses an announcement (hostile input): at most max halves into out
 * (strings interned), the sender into replica. The count, or -EINVAL with
 * a message in err.
 */
int joins_announce_parse(const char *data, size_t len, char *replica, size_t replica_len,
                         struct joins_half *out, size_t max, char *err, size_t errlen);

#endif

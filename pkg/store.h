/*
 * The bounded, indexed event history used by the agent (local history) and
 * the aggregator (cluster-wide history).
 *
 * Bounded by count and by age; every eviction is counted. Indexed so that
 * queries touch only what can match: events live in shards keyed by what
 * they share (node, type, status, Kubernetes attribution, peer), each sorted
 * by (timestamp, id); per-event fields (pid, command, dest_port) are kept in
 * columns in the order added, and each type has a time-ordered list of all
 * its events. A query with only types, time bounds and a cursor searches
 * the types' lists; another picks the shards its filters allow,
 * binary-searches the time bounds and the cursor and merges newest first,
 * or scans the columns when its per-event filters select fewer events.
 * Thread-safe (one internal rwlock).
 */
#ifndef EBPF_MONITOR_STORE_H
#define EBPF_MONITOR_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "query.h"

struct store;

struct store_limits {
    size_t max_events;   /* > 0 */
    uint64_t max_age_ns; /* 0 = no age limit */
};

struct store *store_new(const struct store_limits *limits);
void store_free(struct store *s);

/*
 * Copies e into the store (deep copy), evicting the oldest events past the
 * limits. With max_age_ns set, "now" is the wall clock (CLOCK_REALTIME): events
 * older than max_age are expired first, and e itself is dropped (counted in
 * evicted_age) when it is already that old. An event with the same
 * (timestamp, id) as one held is ignored (counted in duplicates).
 * 0, -ENOMEM, or -EINVAL for an event without a valid type.
 */
int store_add(struct store *s, const struct event *e);
/* Same, but takes ownership of e's owned strings: e is zeroed whatever the result. */
int store_add_move(struct store *s, struct event *e);
/*
 * store_add_move() for n events under one lock, faster per event in a large
 * store (the cache misses of a group overlap); every event is taken over and
 * zeroed. Returns how many could not be stored (-ENOMEM or -EINVAL above).
 */
size_t store_add_move_batch(struct store *s, struct event *ev, size_t n);

/* Evicts events older than max_age relative to now_ns; returns how many (0 without max_age). */
size_t store_expire(struct store *s, uint64_t now_ns);

struct store_result {
    struct event *events; /* deep copies, newest first; owned by the result */
    size_t count;
    uint64_t total_count;            /* matches ignoring limit and cursor */
    bool has_next;                   /* more matches after the last returned event (count > 0) */
    struct query_cursor next_cursor; /* valid when has_next */
};

/*
 * Runs q (q->limit 0 means QUERY_LIMIT_DEFAULT); fills out, which the caller
 * frees with store_result_free (also after an error). 0 or -ENOMEM.
 */
int store_query(struct store *s, const struct query *q, struct store_result *out);
void store_result_free(struct store_result *r);

struct store_stats {
    uint64_t events;        /* held now */
    uint64_t capacity;      /* max_events */
    uint64_t added;         /* ever */
    uint64_t evicted_count; /* dropped by the count limit */
    uint64_t evicted_age;   /* dropped by the age limit */
    uint64_t failed;        /* could not be stored (allocation failure, invalid type) */
    uint64_t duplicates;    /* ignored: same (timestamp, id) already held */
    uint64_t oldest_ns, newest_ns;
    uint64_t index_bytes; /* memory of the columns (pid, command, dest_port) and time lists */
    uint64_t shards;      /* holding events now */
    uint64_t shards_made; /* ever allocated: a shard emptied is reused for the next new key */
};
void store_get_stats(struct store *s, struct store_stats *out);

#endif

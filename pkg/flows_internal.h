/*
 * Private to pkg/flows: one edge's minute, and the compact form of the
 * minutes an edge no longer writes to (flows_cold.c).
 *
 * An edge keeps its last few minutes as plain structs, because events for
 * them still arrive; older minutes move into one segment per hour, where
 * each minute is a record of varints holding only its non-zero counts
 * (typically 20-30 bytes instead of sizeof(struct flows_minute)). A segment
 * also keeps its hour's total, so a query over whole hours reads one struct
 * per hour instead of decoding sixty records.
 *
 * Not thread-safe: the caller (flows.c) holds its lock (flows_set_query_yield
 * excepted, which takes it).
 */
#ifndef EBPF_MONITOR_FLOWS_INTERNAL_H
#define EBPF_MONITOR_FLOWS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "flows.h"

/*
 * One edge's minute; u32 counts are plenty for one edge in one minute
 * (saturating). Failure causes are numbers in the store's table (struct
 * flows_errtab), a byte each where a pointer took eight.
 */
struct flows_minute {
    uint32_t minute; /* since the epoch */
    uint32_t connections, established, failed, resets, retransmits;
    uint32_t errors_other;
    uint32_t error_counts[FLOWS_ERROR_SLOTS];
    uint8_t errors[FLOWS_ERROR_SLOTS]; /* flows_errtab numbers; 0: a free slot */
    uint64_t bytes_sent, bytes_received;
    uint64_t first_seen_ns, last_seen_ns;
    uint32_t hist[FLOWS_HIST_BUCKETS];
};

/*
 * The failure causes records refer to by number (1-based; 0 is "none").
 * Causes are a small closed set (the kernel's errno names); past
 * FLOWS_ERRTAB_MAX distinct ones a cause is counted as "other".
 */
#define FLOWS_ERRTAB_MAX 255
struct flows_errtab {
    const char *names[FLOWS_ERRTAB_MAX]; /* interned */
    uint32_t count;
};

/* One hour of an edge's minutes, sorted by minute, one record per minute. */
struct flows_seg {
    struct flows_minute total; /* the sum of the records; .minute = the hour's first */
    uint8_t *data;
    uint32_t len, cap;
    uint32_t count;       /* records */
    uint32_t last_minute; /* the newest record's */
};

/* Saturating adds: counts stop at their maximum instead of wrapping. */
static inline void flows_add32(uint32_t *a, uint64_t v)
{
    *a = (uint64_t)*a + v > UINT32_MAX ? UINT32_MAX : (uint32_t)(*a + v);
}

static inline void flows_add64(uint64_t *a, uint64_t v)
{
    *a = *a + v < *a ? UINT64_MAX : *a + v;
}

/* The number of a cause (interned), added when new; 0 when the table is full. */
uint8_t flows_errtab_id(struct flows_errtab *t, const char *name);

/*
 * Counts v failures of cause id (flows_errtab_id()) in m: its slot, or
 * "other" past the slots or for id 0.
 */
void flows_minute_error_add(struct flows_minute *m, uint8_t id, uint64_t v);

/* Adds one minute into another of the same store (counts saturate, seen times widen). */
void flows_minute_merge(struct flows_minute *into, const struct flows_minute *m);

/*
 * Puts minute m into s: a new record in minute order, or merged into the
 * record of the same minute. s->total follows. 0, or -ENOMEM (s unchanged).
 */
int flows_seg_put(struct flows_seg *s, const struct flows_minute *m, const struct flows_errtab *t);

/* Removes the first (oldest) record; s->total is recomputed. */
void flows_seg_pop_first(struct flows_seg *s, const struct flows_errtab *t);

/* The first record's minute; s must hold one. */
uint32_t flows_seg_first_minute(const struct flows_seg *s);

/* Calls fn for each record with a minute in [lo, hi]. */
void flows_seg_each(const struct flows_seg *s, const struct flows_errtab *t, uint64_t lo,
                    uint64_t hi, void (*fn)(void *ctx, const struct flows_minute *m), void *ctx);

/* Bytes the segment holds beyond its struct (its records' allocation). */
size_t flows_seg_bytes(const struct flows_seg *s);

void flows_seg_free(struct flows_seg *s);

/*
 * For tests: fn(ctx) runs each time flows_query() lets go of the lock
 * between two steps of its walk (on the querying thread, the lock not
 * held), so a test can add events in the middle of a query. NULL: none.
 */
void flows_set_query_yield(struct flows *f, void (*fn)(void *ctx), void *ctx);

/* For tests: the bytes flows_get_stats() reports, counted afresh by walking every edge. */
uint64_t flows_bytes_recount(struct flows *f);

#endif

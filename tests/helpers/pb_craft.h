/*
 * Hand-written protobuf for tests: a tiny wire writer and the catalogue of
 * hostile EventBatch shapes (fields of the wrong details message, field
 * numbers that wrap 32 bits, wrong details kinds, repeated and merged
 * details, out-of-range enums, broken sub-messages and pod-table entries). Each hostile event sits
 * between two valid events, so a test can check that it costs at most itself.
 */
#ifndef EBPF_MONITOR_PB_CRAFT_H
#define EBPF_MONITOR_PB_CRAFT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

void pbc_varint(struct buf *b, uint64_t v);
void pbc_key(struct buf *b, uint64_t field, unsigned wt);
void pbc_u64(struct buf *b, uint64_t field, uint64_t v);
void pbc_bytes(struct buf *b, uint64_t field, const void *data, size_t len);
void pbc_fixed64(struct buf *b, uint64_t field, uint64_t v);

struct pb_craft {
    const char *name;
    struct buf wire;   /* a whole EventBatch */
    size_t valid;      /* events a correct decoder keeps */
    size_t rejected;   /* events it skips */
    uint64_t first_id; /* ids of the batch's events are first_id, first_id + 1, ... */
    int refused;       /* pb_craft_refused(): the whole batch is refused (-EINVAL) */
};

/*
 * Builds every hostile batch for node `node` with sequences starting at
 * seq; returns how many (at most max). Release each with pb_craft_free().
 */
size_t pb_craft_hostile(struct pb_craft *out, size_t max, const char *node, uint64_t seq,
                        uint64_t now_ns);
/*
 * The batches a decoder refuses as a whole (a broken pod table), built as
 * pb_craft_hostile() builds its own; kept apart so that a test of hostile
 * events can count on every batch of the catalogue being taken.
 */
size_t pb_craft_refused(struct pb_craft *out, size_t max, const char *node, uint64_t seq,
                        uint64_t now_ns);
void pb_craft_free(struct pb_craft *c);

#endif

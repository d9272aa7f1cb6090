/*
 * A sequence of fixed-size elements kept in order, with access by index in
 * O(1) and insertion or removal anywhere in O(B + len / B) element moves
 * (a tiered vector of blocks of B elements), where a plain ring would move
 * up to len.
 *
 * The store keeps its shards and time lists sorted by time, and events
 * do not always arrive in order: an agent's clock steps back, or a publisher
 * sends timestamps in any order. With a ring every such event shifted half
 * a shard; here it shifts at most one block and one element per block.
 *
 * Up to B elements it is a ring that grows by a quarter. Beyond, it is a
 * ring of blocks of B elements, each a ring itself, all full except the
 * first (filled from the end) and the last (from the start). B is the
 * vector's own (TVEC_BLOCK unless tvec_init_blocks() says otherwise): larger
 * blocks move fewer blocks' elements on an insertion in the middle of a
 * long sequence, smaller ones leave less unused room in the last block.
 * Not thread-safe; elements are copied with memcpy.
 */
#ifndef EBPF_MONITOR_TVEC_H
#define EBPF_MONITOR_TVEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TVEC_BLOCK_SHIFT 10
#define TVEC_BLOCK       ((size_t)1 << TVEC_BLOCK_SHIFT)
/* The block sizes tvec_init_blocks() takes, as shifts. */
#define TVEC_BLOCK_SHIFT_MIN 4
#define TVEC_BLOCK_SHIFT_MAX 16

struct tvec_blk {
    unsigned char *data; /* B elements */
    size_t head;         /* slot of offset 0 */
};

/* 40 bytes: one per shard and per time list. */
struct tvec {
    union {
        unsigned char *ring;  /* small (nblk == 0): cap elements, NULL before the first */
        struct tvec_blk *dir; /* in blocks: a ring of dir_cap blocks, the first at head */
    };
    uint32_t len;
    uint32_t head; /* small: slot of element 0; in blocks: the first block's place in dir */
    uint32_t cap;  /* small: the ring's capacity (0 before the first element) */
    uint32_t off0; /* in blocks: offset of element 0 in the first block */
    uint32_t nblk, dir_cap;
    uint16_t esz, min_cap;
    uint8_t bshift; /* B = 1 << bshift */
};

/*
 * An empty sequence of esz-byte elements (esz < 65536) in blocks of
 * TVEC_BLOCK; a small ring starts at min_cap (2 to TVEC_BLOCK). At most
 * UINT32_MAX elements.
 */
void tvec_init(struct tvec *v, size_t esz, size_t min_cap);
/* The same with blocks of 1 << block_shift elements (TVEC_BLOCK_SHIFT_MIN to _MAX; min_cap at
 * most that). */
void tvec_init_blocks(struct tvec *v, size_t esz, size_t min_cap, unsigned block_shift);

/* Elements per block of v. */
static inline size_t tvec_block(const struct tvec *v)
{
    return (size_t)1 << v->bshift;
}
/* Frees the memory; the elements themselves are not looked at. */
void tvec_free(struct tvec *v);

static inline void *tvec_at(const struct tvec *v, size_t i)
{
    if (!v->nblk) {
        size_t s = v->head + i; /* < 2 * cap */
        return v->ring + (s >= v->cap ? s - v->cap : s) * v->esz;
    }
    size_t j = v->off0 + i;
    const struct tvec_blk *b = &v->dir[(v->head + (j >> v->bshift)) & (v->dir_cap - 1)];
    return b->data + ((b->head + j) & (tvec_block(v) - 1)) * v->esz;
}

/* True when one more element fits without allocating. */
static inline bool tvec_has_room(const struct tvec *v)
{
    return !v->nblk ? v->len < v->cap : v->off0 + v->len < v->nblk * tvec_block(v);
}

int tvec_grow(struct tvec *v);

/* Makes room for one more element, so the next insert or append cannot fail. 0 or -ENOMEM. */
static inline int tvec_reserve(struct tvec *v)
{
    return tvec_has_room(v) ? 0 : tvec_grow(v);
}

/* Copies elem in at index pos (<= len), after tvec_reserve(). */
void tvec_insert(struct tvec *v, size_t pos, const void *elem);
/* The slot of a new last element, after tvec_reserve(); the caller fills it. */
static inline void *tvec_append(struct tvec *v)
{
    void *slot = tvec_at(v, v->len);
    v->len++;
    return slot;
}

/* Removes the element at pos (< len); the caller has released what it held. */
void tvec_remove(struct tvec *v, size_t pos);
/* Bytes allocated for the elements (and the block ring). */
size_t tvec_bytes(const struct tvec *v);

#endif

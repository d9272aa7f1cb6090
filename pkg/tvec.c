/*
 * The tiered vector of tvec.h.
 *
 * In blocks, element i lives at offset j = off0 + i of the sequence of
 * blocks: block j / B, offset j % B (B = tvec_block(v)). Inserting at index
 * p moves the elements on one side of p by one place: within p's block by
 * copying, and across every block between p and that end by rotating the
 * block (its head) and handing one element to the neighbour. Which side
 * depends on where p is and whether the first block has free offsets.
 */
#include "tvec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The last offset in a block of v, and the block's size. */
#define BMASK(v) (tvec_block(v) - 1)
#define BLOCK(v) tvec_block(v)

void tvec_init_blocks(struct tvec *v, size_t esz, size_t min_cap, unsigned block_shift)
{
    memset(v, 0, sizeof(*v));
    v->esz = (uint16_t)esz;
    v->min_cap = (uint16_t)(min_cap ? min_cap : 1);
    v->bshift = (uint8_t)block_shift;
}

void tvec_init(struct tvec *v, size_t esz, size_t min_cap)
{
    tvec_init_blocks(v, esz, min_cap, TVEC_BLOCK_SHIFT);
}

void tvec_free(struct tvec *v)
{
    if (v->nblk) {
        for (size_t k = 0; k < v->nblk; k++)
            free(v->dir[(v->head + k) & (v->dir_cap - 1)].data);
        free(v->dir);
    } else {
        free(v->ring);
    }
    tvec_init_blocks(v, v->esz, v->min_cap, v->bshift);
}

size_t tvec_bytes(const struct tvec *v)
{
    if (!v->nblk)
        return (size_t)v->cap * v->esz;
    return v->nblk * BLOCK(v) * v->esz + v->dir_cap * sizeof(struct tvec_blk);
}

/* Slot s (< 2 * cap) of a ring of cap elements. */
static inline size_t wrap(size_t s, size_t cap)
{
    return s >= cap ? s - cap : s;
}

/*
 * Moves the n elements at ring offsets [from, from + n) one place up (dir
 * +1) or down (-1), in contiguous runs. base holds cap elements; offset o is
 * at slot (head + o) mod cap.
 */
static void ring_move(unsigned char *base, size_t cap, size_t head, size_t esz, size_t from,
                      size_t n, int dir)
{
    while (n > 0) {
        size_t src, dst, c;
        if (dir > 0) { /* from the top down: each run ends at the last element left */
            src = wrap(head + from + n - 1, cap);
            dst = src + 1 == cap ? 0 : src + 1;
            c = src + 1 < dst + 1 ? src + 1 : dst + 1;
            if (c > n)
                c = n;
            src -= c - 1;
            dst -= c - 1;
        } else { /* from the bottom up */
            src = wrap(head + from, cap);
            dst = src == 0 ? cap - 1 : src - 1;
            c = cap - src < cap - dst ? cap - src : cap - dst;
            if (c > n)
                c = n;
            from += c;
        }
        memmove(base + dst * esz, base + src * esz, c * esz);
        n -= c;
    }
}

/* ---- small: one ring ---------------------------------------------------------------------- */

static inline unsigned char *ring_at(const struct tvec *v, size_t i)
{
    return v->ring + wrap(v->head + i, v->cap) * v->esz;
}

/*
 * The next capacity of a small ring: a quarter more (at least one), up to
 * a block (where it becomes the first block). Growing by a quarter rather
 * than doubling leaves little unused room (a shard or list of n elements
 * holds at most 1.25 n + 1 slots: the history holds many small ones), for
 * about four copies of each element while a ring grows instead of two.
 */
static size_t ring_next_cap(const struct tvec *v)
{
    size_t cap = v->cap ? v->cap + (v->cap + 3) / 4 : v->min_cap;
    return cap < BLOCK(v) ? cap : BLOCK(v);
}

/* A ring of cap elements holding the current ones in order (small or in blocks). */
static int to_ring(struct tvec *v, size_t cap)
{
    unsigned char *ring = malloc(cap * v->esz);
    if (!ring)
        return -ENOMEM;
    if (!v->nblk) {
        /* At most two runs: from head to the end of the old ring, then from its start. */
        size_t first = v->len < v->cap - v->head ? v->len : v->cap - v->head;
        if (first)
            memcpy(ring, v->ring + (size_t)v->head * v->esz, first * v->esz);
        if (v->len > first)
            memcpy(ring + first * v->esz, v->ring, (v->len - first) * v->esz);
    } else {
        for (size_t i = 0; i < v->len; i++)
            memcpy(ring + i * v->esz, tvec_at(v, i), v->esz);
    }
    uint32_t len = v->len;
    tvec_free(v);
    v->ring = ring;
    v->cap = (uint32_t)cap;
    v->len = len;
    return 0;
}

static void ring_insert(struct tvec *v, size_t pos, const void *elem)
{
    if (pos < v->len / 2) {
        ring_move(v->ring, v->cap, v->head, v->esz, 0, pos, -1);
        v->head = v->head ? v->head - 1 : v->cap - 1;
    } else {
        ring_move(v->ring, v->cap, v->head, v->esz, pos, v->len - pos, +1);
    }
    memcpy(ring_at(v, pos), elem, v->esz);
    v->len++;
}

static void ring_remove(struct tvec *v, size_t pos)
{
    if (pos < v->len / 2) {
        ring_move(v->ring, v->cap, v->head, v->esz, 0, pos, +1);
        v->head = v->head + 1 == v->cap ? 0 : v->head + 1;
    } else {
        ring_move(v->ring, v->cap, v->head, v->esz, pos + 1, v->len - pos - 1, -1);
    }
    v->len--;
    if (v->cap > v->min_cap && v->len < v->cap / 4) /* keeps the larger ring when out of memory */
        (void)to_ring(v, v->cap / 2 > v->min_cap ? v->cap / 2 : v->min_cap);
}

/* ---- in blocks ---------------------------------------------------------------------------- */

static inline struct tvec_blk *blk(const struct tvec *v, size_t k)
{
    return &v->dir[(v->head + k) & (v->dir_cap - 1)];
}

static inline unsigned char *slot(const struct tvec *v, const struct tvec_blk *b, size_t off)
{
    return b->data + ((b->head + off) & BMASK(v)) * v->esz;
}

/* Offsets [from, to) of block b move one place up (+1) or down (-1). */
static void blk_shift(const struct tvec *v, const struct tvec_blk *b, size_t from, size_t to,
                      int dir)
{
    if (to > from)
        ring_move(b->data, BLOCK(v), b->head, v->esz, from, to - from, dir);
}

static int dir_grow(struct tvec *v)
{
    size_t cap = (size_t)v->dir_cap * 2;
    struct tvec_blk *dir = malloc(cap * sizeof(*dir));
    if (!dir)
        return -ENOMEM;
    for (size_t k = 0; k < v->nblk; k++)
        dir[k] = *blk(v, k);
    free(v->dir);
    v->dir = dir;
    v->dir_cap = (uint32_t)cap;
    v->head = 0;
    return 0;
}

/* Blocks holding elements; at most one more (empty, at the end) is kept. */
static size_t used_blocks(const struct tvec *v)
{
    return (v->off0 + v->len + BMASK(v)) >> v->bshift;
}

static void trim_blocks(struct tvec *v)
{
    while (v->nblk > used_blocks(v) + 1) {
        v->nblk--;
        free(blk(v, v->nblk)->data);
    }
    if (v->len <= BLOCK(v) / 4) /* stays in blocks when out of memory */
        (void)to_ring(v, 2 * v->len > v->min_cap ? 2 * v->len : v->min_cap);
}

/* The first block is empty (off0 reached the end): drop it. */
static void drop_empty_first(struct tvec *v)
{
    if (v->off0 < BLOCK(v))
        return;
    if (v->nblk == 1) { /* then empty: start the block over */
        v->off0 = 0;
        return;
    }
    free(blk(v, 0)->data);
    v->head = (v->head + 1) & (v->dir_cap - 1);
    v->nblk--;
    v->off0 -= (uint32_t)BLOCK(v);
}

/* tvec_reserve() when there is no room: a larger ring, or one more block. */
int tvec_grow(struct tvec *v)
{
    if (!v->nblk) {
        if (v->cap < BLOCK(v))
            return to_ring(v, ring_next_cap(v));
        /* A full ring of a block's size becomes the first block. */
        struct tvec_blk *dir = malloc(4 * sizeof(*dir));
        if (!dir)
            return -ENOMEM;
        dir[0] = (struct tvec_blk){.data = v->ring, .head = v->head};
        v->dir = dir;
        v->dir_cap = 4;
        v->nblk = 1;
        v->head = 0;
        v->off0 = 0;
        v->cap = 0;
    }
    if (v->nblk == v->dir_cap && dir_grow(v) < 0)
        return -ENOMEM;
    unsigned char *data = malloc(BLOCK(v) * v->esz);
    if (!data)
        return -ENOMEM;
    *blk(v, v->nblk) = (struct tvec_blk){.data = data, .head = 0};
    v->nblk++;
    return 0;
}

/* Inserts by moving what precedes pos one place down; the first block has a free offset. */
static void insert_front(struct tvec *v, size_t k, size_t o, const void *elem)
{
    if (o == 0) { /* right after the last element of block k - 1 */
        k--;
        o = BLOCK(v);
    }
    if (k == 0) {
        blk_shift(v, blk(v, 0), v->off0, o, -1);
    } else {
        /* Each block before k rotates down one place and takes its successor's first element. */
        for (size_t b = 0; b < k; b++) {
            struct tvec_blk *cur = blk(v, b), *next = blk(v, b + 1);
            cur->head = (cur->head + 1) & BMASK(v);
            memcpy(slot(v, cur, BMASK(v)), slot(v, next, 0), v->esz);
        }
        /* Block k's first element went to block k - 1: the rest before o move down. */
        blk_shift(v, blk(v, k), 1, o, -1);
    }
    memcpy(slot(v, blk(v, k), o - 1), elem, v->esz);
    v->off0--;
}

/* Inserts by moving pos and what follows one place up; the block of index len exists. */
static void insert_back(struct tvec *v, size_t k, size_t o, const void *elem)
{
    size_t end = v->off0 + v->len, last = end >> v->bshift;
    /* From the end back to k + 1: each block rotates up one place and takes its predecessor's last.
     */
    for (size_t b = last; b > k; b--) {
        struct tvec_blk *cur = blk(v, b), *prev = blk(v, b - 1);
        cur->head = (cur->head - 1) & BMASK(v);
        memcpy(slot(v, cur, 0), slot(v, prev, BMASK(v)), v->esz);
    }
    size_t stop = k < last ? BMASK(v) : end & BMASK(v);
    blk_shift(v, blk(v, k), o, stop, +1);
    memcpy(slot(v, blk(v, k), o), elem, v->esz);
}

void tvec_insert(struct tvec *v, size_t pos, const void *elem)
{
    if (!v->nblk) {
        ring_insert(v, pos, elem);
        return;
    }
    size_t j = v->off0 + pos, k = j >> v->bshift, o = j & BMASK(v);
    if (v->off0 > 0 && pos < v->len / 2)
        insert_front(v, k, o, elem);
    else
        insert_back(v, k, o, elem);
    v->len++;
}

void tvec_remove(struct tvec *v, size_t pos)
{
    if (!v->nblk) {
        ring_remove(v, pos);
        return;
    }
    size_t j = v->off0 + pos, k = j >> v->bshift, o = j & BMASK(v);
    if (pos < v->len / 2) {
        /* What precedes pos moves one place up; the first block frees an offset. */
        blk_shift(v, blk(v, k), k == 0 ? v->off0 : 0, o, +1);
        for (size_t b = k; b > 0; b--) {
            struct tvec_blk *cur = blk(v, b), *prev = blk(v, b - 1);
            memcpy(slot(v, cur, 0), slot(v, prev, BMASK(v)), v->esz);
            prev->head = (prev->head - 1) & BMASK(v);
        }
        v->off0++;
        v->len--;
        drop_empty_first(v);
    } else {
        /* What follows pos moves one place down. */
        size_t last = (v->off0 + v->len - 1) >> v->bshift;
        size_t stop = k < last ? BLOCK(v) : ((v->off0 + v->len - 1) & BMASK(v)) + 1;
        blk_shift(v, blk(v, k), o + 1, stop, -1);
        for (size_t b = k + 1; b <= last; b++) {
            struct tvec_blk *cur = blk(v, b), *prev = blk(v, b - 1);
            memcpy(slot(v, prev, BMASK(v)), slot(v, cur, 0), v->esz);
            cur->head = (cur->head + 1) & BMASK(v);
        }
        v->len--;
    }
    trim_blocks(v);
}

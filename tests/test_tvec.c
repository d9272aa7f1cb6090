/*
 * The tiered vector against a plain array doing the same operations: random
 * inserts and removals anywhere, across the change from one ring to blocks
 * and back, with element sizes of the store's time list entries and records.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tvec.h"

struct ref {
    uint64_t *v;
    size_t len, cap;
};

static void ref_insert(struct ref *r, size_t pos, uint64_t x)
{
    if (r->len == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = realloc(r->v, r->cap * sizeof(*r->v));
        cr_assert(r->v != NULL);
    }
    memmove(&r->v[pos + 1], &r->v[pos], (r->len - pos) * sizeof(*r->v));
    r->v[pos] = x;
    r->len++;
}

static void ref_remove(struct ref *r, size_t pos)
{
    memmove(&r->v[pos], &r->v[pos + 1], (r->len - pos - 1) * sizeof(*r->v));
    r->len--;
}

/* An element of esz bytes carrying x in its first and last 8 bytes. */
static void fill(unsigned char *e, size_t esz, uint64_t x)
{
    memset(e, (int)(x & 0xff), esz);
    memcpy(e, &x, 8);
    memcpy(e + esz - 8, &x, 8);
}

static void check_same(const struct tvec *v, const struct ref *r, unsigned step)
{
    cr_assert_eq(v->len, r->len, "step %u: length %zu, want %zu", step, v->len, r->len);
    for (size_t i = 0; i < r->len; i++) {
        const unsigned char *e = tvec_at(v, i);
        uint64_t head, tail;
        memcpy(&head, e, 8);
        memcpy(&tail, e + v->esz - 8, 8);
        cr_assert(head == r->v[i] && tail == r->v[i],
                  "step %u: element %zu is %llu/%llu, want %llu", step, i, (unsigned long long)head,
                  (unsigned long long)tail, (unsigned long long)r->v[i]);
    }
}

/*
 * Phases of growth and shrinking so the vector crosses its block size both
 * ways; where it inserts and removes: anywhere, near the front, or near the
 * end. Blocks of 1 << shift elements.
 */
static void run_blocks(size_t esz, unsigned seed, int where, unsigned shift)
{
    struct tvec v;
    struct ref r = {0};
    unsigned char e[256];
    uint64_t next = 1;
    unsigned step = 0;
    cr_assert(esz >= 16 && esz <= sizeof(e));
    tvec_init_blocks(&v, esz, 4, shift);
    const size_t B = tvec_block(&v);
    cr_assert_eq(B, (size_t)1 << shift);
    srand(seed);

    const size_t targets[] = {3 * B, 100, 5 * B + 17, B / 8, 2 * B, 0};
    for (size_t t = 0; t < sizeof(targets) / sizeof(targets[0]); t++) {
        size_t target = targets[t];
        while (r.len != target) {
            bool grow = r.len < target ? rand() % 4 != 0 : rand() % 4 == 0;
            if (r.len == 0)
                grow = true;
            size_t n = grow ? r.len + 1 : r.len, pos = (size_t)rand() % n;
            if (where == 1)
                pos = pos % 8 < n ? pos % 8 : 0;
            else if (where == 2)
                pos = n - 1 - pos % (n < 8 ? n : 8);
            if (grow) {
                cr_assert_eq(tvec_reserve(&v), 0);
                cr_assert(tvec_has_room(&v));
                fill(e, esz, next);
                if (pos == r.len && rand() % 2)
                    memcpy(tvec_append(&v), e, esz);
                else
                    tvec_insert(&v, pos, e);
                ref_insert(&r, pos, next++);
            } else {
                tvec_remove(&v, pos);
                ref_remove(&r, pos);
            }
            if (++step % 257 == 0 || r.len == target)
                check_same(&v, &r, step);
        }
        /* Memory follows the length: at most about two blocks (or a ring's doubling) unused. */
        size_t held = r.len * esz;
        cr_assert(tvec_bytes(&v) <= 2 * held + 3 * B * esz + 4096, "%zu bytes for %zu elements",
                  tvec_bytes(&v), r.len);
    }
    cr_assert_eq(tvec_bytes(&v), 4 * esz, "back to the smallest ring when empty");
    tvec_free(&v);
    free(r.v);
}

static void run(size_t esz, unsigned seed, int where)
{
    run_blocks(esz, seed, where, TVEC_BLOCK_SHIFT);
}

Test(tvec, random_positions_match_an_array)
{
    run(20, 1, 0);
}
Test(tvec, random_positions_with_large_elements)
{
    run(136, 2, 0);
}
Test(tvec, front_positions_match_an_array)
{
    run(24, 3, 1);
}
Test(tvec, back_positions_match_an_array)
{
    run(24, 4, 2);
}

/* Blocks of another size than the default: small ones (many blocks), large ones (few). */
Test(tvec, small_blocks_match_an_array)
{
    run_blocks(24, 5, 0, TVEC_BLOCK_SHIFT_MIN);
    run_blocks(24, 6, 1, TVEC_BLOCK_SHIFT_MIN);
    run_blocks(24, 7, 2, 6);
}
Test(tvec, large_blocks_match_an_array)
{
    run_blocks(20, 8, 0, 12);
    run_blocks(20, 9, 2, 12);
}

/* Removing the first element again and again: the store's eviction. */
Test(tvec, queue_of_appends_and_front_removals)
{
    struct tvec v;
    struct ref r = {0};
    unsigned char e[32];
    uint64_t next = 1;
    tvec_init(&v, sizeof(e), 16);
    for (unsigned step = 0; step < 40000; step++) {
        if (r.len < 3 * TVEC_BLOCK + 5 || step % 3 == 0) {
            cr_assert_eq(tvec_reserve(&v), 0);
            fill(e, sizeof(e), next);
            memcpy(tvec_append(&v), e, sizeof(e));
            ref_insert(&r, r.len, next++);
        } else {
            tvec_remove(&v, 0);
            ref_remove(&r, 0);
        }
        if (step % 997 == 0)
            check_same(&v, &r, step);
    }
    check_same(&v, &r, 40000);
    tvec_free(&v);
    free(r.v);
}

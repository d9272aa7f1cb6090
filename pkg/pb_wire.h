/*
 * The protobuf wire format by hand: one bounded reader and one writer, shared
 * by the fast codec (event_pb_fast.c), the reference decoder's details merge
 * (event_pb_ref.c) and the tests' hand-crafted batches.
 *
 * Fixed-width values are little-endian on the wire (protobuf's fixed64 and
 * fixed32); pb_put_fixed64() writes and pb_rd_fixed() reads them, so both
 * sides convert in one place.
 *
 * Every read is bounded by the reader's end and fails instead of reading
 * past it. A key is valid when it fits 32 bits, names a field in
 * 1..PB_WIRE_MAX_FIELD and uses a wire type proto3 has (varint, fixed64,
 * length-delimited, fixed32); groups and anything else are malformed.
 */
#ifndef EBPF_MONITOR_PB_WIRE_H
#define EBPF_MONITOR_PB_WIRE_H

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PB_WIRE_MAX_FIELD ((1u << 29) - 1)

enum pb_wire_type {
    PB_WT_VARINT = 0,
    PB_WT_I64 = 1,
    PB_WT_LEN = 2,
    PB_WT_I32 = 5,
};

struct pb_rd {
    const uint8_t *p, *end;
};

/* One field as read by pb_rd_field(): its number, wire type and value. */
struct pb_field {
    uint32_t num;
    unsigned wt;
    uint64_t v;          /* varint, fixed64 and fixed32 values */
    const uint8_t *data; /* length-delimited: the bytes */
    size_t len;
};

/*
 * A varint of two bytes or more with at least ten bytes left to read, the
 * longest a varint is: no bound to check per byte, and the loop unrolled,
 * so a timestamp or an id (nine or ten bytes) costs a few instructions a
 * byte. The same value and the same refusal (ten bytes, all continued) as
 * the loop in pb_rd_varint().
 */
static inline bool pb_rd_varint_long(struct pb_rd *r, uint64_t *v)
{
    const uint8_t *p = r->p;
    uint64_t x = 0;
#pragma GCC unroll 10
    for (unsigned i = 0; i < 10; i++) {
        uint64_t b = p[i];
        x |= (b & 0x7f) << (7 * i);
        if (b < 0x80) {
            r->p = p + i + 1;
            *v = x;
            return true;
        }
    }
    return false;
}

static inline bool pb_rd_varint(struct pb_rd *r, uint64_t *v)
{
    /* Tags and most small values are one byte. */
    if (r->p < r->end && *r->p < 0x80) {
        *v = *r->p++;
        return true;
    }
    if (r->end - r->p >= 10)
        return pb_rd_varint_long(r, v);
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

/* A length-delimited value's bytes. */
static inline bool pb_rd_bytes(struct pb_rd *r, const uint8_t **data, size_t *len)
{
    uint64_t n;
    if (!pb_rd_varint(r, &n) || n > (uint64_t)(r->end - r->p))
        return false;
    *data = r->p;
    *len = (size_t)n;
    r->p += n;
    return true;
}

/* A fixed-width little-endian value of n (4 or 8) bytes. */
static inline bool pb_rd_fixed(struct pb_rd *r, size_t n, uint64_t *v)
{
    uint64_t x = 0;
    if ((size_t)(r->end - r->p) < n)
        return false;
    memcpy(&x, r->p, n);
    r->p += n;
    *v = n == 8 ? le64toh(x) : (uint64_t)le32toh((uint32_t)x);
    return true;
}

/*
 * The next field, whatever its type; false when the wire format is broken.
 * Always inlined: a decoder calls it per field, and as a call its result
 * goes through memory (the field struct) before the decoder can branch on it.
 */
static inline __attribute__((always_inline)) bool pb_rd_field(struct pb_rd *r, struct pb_field *f)
{
    uint64_t key;
    if (!pb_rd_varint(r, &key) || key > UINT32_MAX || (key >> 3) == 0 ||
        (key >> 3) > PB_WIRE_MAX_FIELD)
        return false;
    f->num = (uint32_t)(key >> 3);
    f->wt = (unsigned)(key & 7);
    f->data = NULL;
    f->len = 0;
    f->v = 0;
    switch (f->wt) {
    case PB_WT_VARINT:
        return pb_rd_varint(r, &f->v);
    case PB_WT_I64:
        return pb_rd_fixed(r, 8, &f->v);
    case PB_WT_LEN:
        return pb_rd_bytes(r, &f->data, &f->len);
    case PB_WT_I32:
        return pb_rd_fixed(r, 4, &f->v);
    default:
        return false;
    }
}

/* ---- writing; the caller has reserved the bytes (sized with pb_*_size) ---- */

#define PB_TAG(num, wt) (((uint32_t)(num) << 3) | (wt))

static inline size_t pb_varint_size(uint64_t v)
{
    return (size_t)(70 - __builtin_clzll(v | 1)) / 7;
}

static inline size_t pb_tag_size(uint32_t tag)
{
    return pb_varint_size(tag);
}

static inline uint8_t *pb_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint8_t *pb_put_fixed64(uint8_t *p, uint64_t v)
{
    uint64_t le = htole64(v);
    memcpy(p, &le, 8);
    return p + 8;
}

#endif

/*
 * The compact minutes of pkg/flows (flows_internal.h).
 *
 * A record: varint (minute - hour's first minute) | flags << 6, then one
 * varint per count the flags name, then the seen times as two varints
 * (first - the minute's start, last - first), then the failure causes
 * (n, then n pairs of errtab number and count) and the latency histogram
 * (n, then n pairs of bucket and count) when flagged. Records are written
 * and read only here, from memory this process owns.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "flows_internal.h"
#include "pb_wire.h"

#define NS_PER_MIN   (60ull * 1000000000ull)
#define MIN_PER_HOUR 60

enum {
    R_CONN = 1 << 0,
    R_EST = 1 << 1,
    R_FAIL = 1 << 2,
    R_RST = 1 << 3,
    R_RETR = 1 << 4,
    R_BSENT = 1 << 5,
    R_BRECV = 1 << 6,
    R_ERR = 1 << 7,
    R_ERRO = 1 << 8,
    R_HIST = 1 << 9,
};

/* The largest record: every varint at its widest. */
#define REC_MAX (10 * (1 + 9 + 2 + 1 + 2 * FLOWS_ERROR_SLOTS + 1) + 11 * FLOWS_HIST_BUCKETS)

void flows_minute_error_add(struct flows_minute *m, uint8_t id, uint64_t v)
{
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && id != 0; i++) {
        if (m->errors[i] == 0)
            m->errors[i] = id;
        if (m->errors[i] == id) {
            flows_add32(&m->error_counts[i], v);
            return;
        }
    }
    flows_add32(&m->errors_other, v);
}

void flows_minute_merge(struct flows_minute *into, const struct flows_minute *m)
{
    flows_add32(&into->connections, m->connections);
    flows_add32(&into->established, m->established);
    flows_add32(&into->failed, m->failed);
    flows_add32(&into->resets, m->resets);
    flows_add32(&into->retransmits, m->retransmits);
    flows_add32(&into->errors_other, m->errors_other);
    flows_add64(&into->bytes_sent, m->bytes_sent);
    flows_add64(&into->bytes_received, m->bytes_received);
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && m->errors[i] != 0; i++)
        flows_minute_error_add(into, m->errors[i], m->error_counts[i]);
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        flows_add32(&into->hist[i], m->hist[i]);
    if (m->first_seen_ns != 0 &&
        (into->first_seen_ns == 0 || m->first_seen_ns < into->first_seen_ns))
        into->first_seen_ns = m->first_seen_ns;
    if (m->last_seen_ns > into->last_seen_ns)
        into->last_seen_ns = m->last_seen_ns;
}

uint8_t flows_errtab_id(struct flows_errtab *t, const char *name)
{
    for (uint32_t i = 0; i < t->count; i++)
        if (t->names[i] == name)
            return (uint8_t)(i + 1);
    if (t->count == FLOWS_ERRTAB_MAX)
        return 0;
    t->names[t->count++] = name;
    return (uint8_t)t->count;
}

static size_t rec_encode(const struct flows_minute *m, uint32_t base, uint8_t *out)
{
    const uint32_t counts[] = {m->connections, m->established, m->failed, m->resets,
                               m->retransmits};
    uint32_t errors_other = m->errors_other, nerr = 0, nhist = 0;
    unsigned flags = 0;
    uint8_t *p = out;

    while (nerr < FLOWS_ERROR_SLOTS && m->errors[nerr] != 0)
        nerr++;
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        nhist += m->hist[i] != 0;
    for (size_t i = 0; i < 5; i++)
        flags |= counts[i] != 0 ? 1u << i : 0;
    flags |= (m->bytes_sent ? R_BSENT : 0) | (m->bytes_received ? R_BRECV : 0) |
             (nerr ? R_ERR : 0) | (errors_other ? R_ERRO : 0) | (nhist ? R_HIST : 0);
    p = pb_put_varint(p, (uint64_t)(m->minute - base) | (uint64_t)flags << 6);
    for (size_t i = 0; i < 5; i++)
        if (counts[i] != 0)
            p = pb_put_varint(p, counts[i]);
    if (m->bytes_sent)
        p = pb_put_varint(p, m->bytes_sent);
    if (m->bytes_received)
        p = pb_put_varint(p, m->bytes_received);
    uint64_t start = (uint64_t)m->minute * NS_PER_MIN;
    uint64_t first = m->first_seen_ns > start ? m->first_seen_ns - start : 0;
    p = pb_put_varint(p, first);
    p = pb_put_varint(p, m->last_seen_ns > start + first ? m->last_seen_ns - start - first : 0);
    if (nerr) {
        p = pb_put_varint(p, nerr);
        for (size_t i = 0; i < nerr; i++) {
            p = pb_put_varint(p, m->errors[i]);
            p = pb_put_varint(p, m->error_counts[i]);
        }
    }
    if (errors_other)
        p = pb_put_varint(p, errors_other);
    if (nhist) {
        p = pb_put_varint(p, nhist);
        for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++) {
            if (m->hist[i] == 0)
                continue;
            *p++ = (uint8_t)i;
            p = pb_put_varint(p, m->hist[i]);
        }
    }
    return (size_t)(p - out);
}

static bool rd_u32(struct pb_rd *r, uint32_t *v)
{
    uint64_t x;
    if (!pb_rd_varint(r, &x) || x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    return true;
}

/* Decodes the record at r->p; false on a malformed record (never written by rec_encode). */
static bool rec_decode(struct pb_rd *r, uint32_t base, const struct flows_errtab *t,
                       struct flows_minute *m)
{
    uint32_t *counts[] = {&m->connections, &m->established, &m->failed, &m->resets,
                          &m->retransmits};
    uint64_t hdr, first, span, n;

    memset(m, 0, sizeof(*m));
    if (!pb_rd_varint(r, &hdr) || (hdr & 63) >= MIN_PER_HOUR)
        return false;
    m->minute = base + (uint32_t)(hdr & 63);
    unsigned flags = (unsigned)(hdr >> 6);
    for (size_t i = 0; i < 5; i++)
        if ((flags & (1u << i)) && !rd_u32(r, counts[i]))
            return false;
    if ((flags & R_BSENT) && !pb_rd_varint(r, &m->bytes_sent))
        return false;
    if ((flags & R_BRECV) && !pb_rd_varint(r, &m->bytes_received))
        return false;
    if (!pb_rd_varint(r, &first) || !pb_rd_varint(r, &span))
        return false;
    m->first_seen_ns = (uint64_t)m->minute * NS_PER_MIN + first;
    m->last_seen_ns = m->first_seen_ns + span;
    if (flags & R_ERR) {
        if (!pb_rd_varint(r, &n) || n > FLOWS_ERROR_SLOTS)
            return false;
        for (size_t i = 0; i < n; i++) {
            uint32_t id;
            if (!rd_u32(r, &id) || id == 0 || id > t->count || !rd_u32(r, &m->error_counts[i]))
                return false;
            m->errors[i] = (uint8_t)id;
        }
    }
    if ((flags & R_ERRO) && !rd_u32(r, &m->errors_other))
        return false;
    if (flags & R_HIST) {
        if (!pb_rd_varint(r, &n) || n > FLOWS_HIST_BUCKETS)
            return false;
        for (size_t i = 0; i < n; i++) {
            if (r->p >= r->end || *r->p >= FLOWS_HIST_BUCKETS)
                return false;
            uint8_t b = *r->p++;
            if (!rd_u32(r, &m->hist[b]))
                return false;
        }
    }
    return true;
}

uint32_t flows_seg_first_minute(const struct flows_seg *s)
{
    uint64_t hdr = 0;
    struct pb_rd r = {s->data, s->data + s->len};

    pb_rd_varint(&r, &hdr);
    return s->total.minute + (uint32_t)(hdr & 63);
}

static int seg_reserve(struct flows_seg *s, size_t more)
{
    if (s->len + more <= s->cap)
        return 0;
    /* Grow by a quarter: an hour's records are appended a few at a time. */
    size_t cap = s->len + more + s->len / 4 + 32;
    uint8_t *d = realloc(s->data, cap);
    if (d == NULL)
        return -ENOMEM;
    s->data = d;
    s->cap = (uint32_t)cap;
    return 0;
}

int flows_seg_put(struct flows_seg *s, const struct flows_minute *m, const struct flows_errtab *t)
{
    uint8_t rec[REC_MAX];
    struct flows_minute have, merged;
    struct pb_rd r = {s->data, s->data + s->len};
    const struct flows_minute *add = m;
    size_t at = s->len, old = 0;

    if (s->count == 0) {
        memset(&s->total, 0, sizeof(s->total));
        s->total.minute = m->minute - m->minute % MIN_PER_HOUR;
    }
    /* Minutes come nearly in order; only a late one walks the records. */
    if (s->count > 0 && m->minute <= s->last_minute) {
        while (r.p < r.end) {
            const uint8_t *p = r.p;
            if (!rec_decode(&r, s->total.minute, t, &have))
                break;
            if (have.minute >= m->minute) {
                at = (size_t)(p - s->data);
                old = have.minute == m->minute ? (size_t)(r.p - p) : 0;
                break;
            }
        }
    }
    if (old != 0) {
        merged = have;
        flows_minute_merge(&merged, m);
        m = &merged;
    }
    size_t len = rec_encode(m, s->total.minute, rec);
    if (len > old && seg_reserve(s, len - old) < 0)
        return -ENOMEM;
    memmove(s->data + at + len, s->data + at + old, s->len - at - old);
    memcpy(s->data + at, rec, len);
    s->len = (uint32_t)(s->len + len - old);
    s->count += old == 0;
    if (m->minute > s->last_minute)
        s->last_minute = m->minute;
    uint32_t base = s->total.minute;
    flows_minute_merge(&s->total, add);
    s->total.minute = base;
    return 0;
}

static void total_add(void *ctx, const struct flows_minute *m)
{
    flows_minute_merge(ctx, m);
}

void flows_seg_pop_first(struct flows_seg *s, const struct flows_errtab *t)
{
    struct flows_minute m;
    struct pb_rd r = {s->data, s->data + s->len};
    uint32_t base = s->total.minute;

    if (s->count == 0 || !rec_decode(&r, base, t, &m))
        return;
    size_t gone = (size_t)(r.p - s->data);
    memmove(s->data, s->data + gone, s->len - gone);
    s->len -= (uint32_t)gone;
    s->count--;
    struct flows_minute sum = {.minute = base};
    flows_seg_each(s, t, 0, UINT64_MAX, total_add, &sum);
    s->total = sum;
    s->total.minute = base;
}

void flows_seg_each(const struct flows_seg *s, const struct flows_errtab *t, uint64_t lo,
                    uint64_t hi, void (*fn)(void *ctx, const struct flows_minute *m), void *ctx)
{
    struct flows_minute m;
    struct pb_rd r = {s->data, s->data + s->len};

    while (r.p < r.end && rec_decode(&r, s->total.minute, t, &m)) {
        if (m.minute > hi)
            break;
        if (m.minute >= lo)
            fn(ctx, &m);
    }
}

size_t flows_seg_bytes(const struct flows_seg *s)
{
    return s->cap;
}

void flows_seg_free(struct flows_seg *s)
{
    free(s->data);
    memset(s, 0, sizeof(*s));
}

/* Growable byte buffer and JSON string escaping. */
#include "buf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b)
{
    memset(b, 0, sizeof(*b));
}

void buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

bool buf_reserve(struct buf *b, size_t extra)
{
    if (b->oom)
        return false;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void buf_append(struct buf *b, const void *data, size_t len)
{
    if (!buf_reserve(b, len))
        return;
    if (len > 0) /* data may be NULL then */
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_putc(struct buf *b, char c)
{
    buf_append(b, &c, 1);
}

void buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if ((size_t)n < sizeof(small)) {
        buf_append(b, small, (size_t)n);
    } else if (buf_reserve(b, (size_t)n)) {
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

size_t buf_utf8_seq(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    if (len == 0)
        return 0;
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t n = c >= 0xc2 && c < 0xe0   ? 2
               : c >= 0xe0 && c < 0xf0 ? 3
               : c >= 0xf0 && c < 0xf5 ? 4
                                       : 0;
    if (n == 0 || len < n)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    /* Overlong forms, UTF-16 surrogates and code points above U+10FFFF. */
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] >= 0x90))
        return 0;
    return n;
}

bool buf_utf8_valid(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) { /* names and paths are nearly always ASCII */
            i++;
            continue;
        }
        size_t n = buf_utf8_seq(s + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

size_t buf_utf8_cut(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = p[len - back];
        if ((c & 0xc0) == 0x80)
            continue; /* a continuation byte: its lead is further back */
        size_t need = c >= 0xc2 && c <= 0xdf   ? 2
                      : c >= 0xe0 && c <= 0xef ? 3
                      : c >= 0xf0 && c <= 0xf4 ? 4
                                               : 0;
        if (need <= back)
            return len; /* ASCII, a whole sequence, or no lead at all */
        /* The second byte's range for the leads that narrow it (RFC 3629). */
        if (back >= 2) {
            unsigned char n = p[len - back + 1];
            unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
            unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
            if (n < lo || n > hi)
                return len;
        }
        return len - back;
    }
    return len;
}

bool buf_utf8_shows_as(const char *raw, size_t rawlen, const char *text, size_t textlen)
{
    size_t i = 0, j = 0;
    while (i < rawlen) {
        size_t k = buf_utf8_seq(raw + i, rawlen - i);
        const char *want = k ? raw + i : "\xef\xbf\xbd";
        size_t wlen = k ? k : 3;
        if (textlen - j < wlen || memcmp(text + j, want, wlen) != 0)
            return false;
        i += k ? k : 1;
        j += wlen;
    }
    return j == textlen;
}

void buf_utf8_show(struct buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t k = buf_utf8_seq(s + i, len - i);
        if (k) {
            buf_append(b, s + i, k);
            i += k;
        } else {
            buf_append(b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
}

/*
 * The project's one UTF-8 rule (README.md, "Strings and raw bytes"): valid UTF-8 is
 * copied unchanged, each byte that is not part of a valid sequence becomes
 * U+FFFD, and only '"', '\\' and control characters are escaped. Every JSON
 * string the project writes goes through here, so no output can hold invalid
 * UTF-8 whatever bytes a process, the kernel or the API server supplied.
 */
void buf_json_string(struct buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const char *p = s, *end = s + len;
    if (!buf_reserve(b, len + 2))
        return;
    buf_putc(b, '"');
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x80) {
            switch (c) {
            case '"':
                buf_append(b, "\\\"", 2);
                break;
            case '\\':
                buf_append(b, "\\\\", 2);
                break;
            case '\n':
                buf_append(b, "\\n", 2);
                break;
            case '\r':
                buf_append(b, "\\r", 2);
                break;
            case '\t':
                buf_append(b, "\\t", 2);
                break;
            default:
                if (c < 0x20) {
                    char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                    buf_append(b, esc, 6);
                } else {
                    buf_putc(b, (char)c);
                }
            }
            p++;
            continue;
        }
        size_t n = buf_utf8_seq(p, (size_t)(end - p));
        if (n) {
            buf_append(b, p, n);
            p += n;
        } else {
            buf_append(b, "\xef\xbf\xbd", 3);
            p++;
        }
    }
    buf_putc(b, '"');
}

/* Digits by hand: every number of every event written goes through here, and printf's
 * format parsing costs several times the conversion. */
void buf_json_u64(struct buf *b, uint64_t v)
{
    char t[20]; /* UINT64_MAX has 20 digits */
    size_t i = sizeof(t);
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf_append(b, t + i, sizeof(t) - i);
}

void buf_json_i64(struct buf *b, int64_t v)
{
    if (v < 0) {
        buf_putc(b, '-');
        buf_json_u64(b, (uint64_t)0 - (uint64_t)v); /* INT64_MIN too */
    } else {
        buf_json_u64(b, (uint64_t)v);
    }
}

bool buf_utf8_is_control(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    if (n == 1)
        return c < 0x20 || c == 0x7f;
    return n == 2 && c == 0xc2 && (unsigned char)s[1] < 0xa0;
}

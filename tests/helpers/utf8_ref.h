/*
 * A strict UTF-8 decoder written from RFC 3629's table, independent of
 * pkg/buf.c, for tests and fuzz targets that check what the JSON writers
 * produce. Header-only: fuzz targets link pkg/ alone.
 */
#ifndef EBPF_MONITOR_UTF8_REF_H
#define EBPF_MONITOR_UTF8_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The length of the valid character at s (len > 0 bytes available), or 0. */
static inline size_t utf8_ref_char(const unsigned char *s, size_t len)
{
    uint32_t cp;
    size_t n;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0)
        n = 2, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        n = 3, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        n = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static inline bool utf8_ref_valid(const char *s, size_t len)
{
    for (size_t i = 0, k; i < len; i += k)
        if (!(k = utf8_ref_char((const unsigned char *)s + i, len - i)))
            return false;
    return true;
}

#endif

/*
 * A growable byte buffer with the JSON helpers every encoder needs.
 * Allocation failure is sticky: the buffer remembers it (buf.oom) and further
 * appends do nothing, so callers check once at the end.
 */
#ifndef EBPF_MONITOR_BUF_H
#define EBPF_MONITOR_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    bool oom;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b); /* len = 0, keeps memory */
bool buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/*
 * Appends s (len bytes) as a quoted JSON string, escaping as RFC 8259
 * requires. The output is always valid UTF-8: valid UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF) passes unchanged and
 * each byte that is not part of a valid sequence becomes U+FFFD.
 */
void buf_json_string(struct buf *b, const char *s, size_t len);
/* Length (1-4) of the valid UTF-8 sequence s starts with; 0 when it starts none (or len is 0). */
size_t buf_utf8_seq(const char *s, size_t len);
/* Whether the valid UTF-8 sequence s (n bytes, buf_utf8_seq()) is a control character: C0,
 * DEL or C1. */
bool buf_utf8_is_control(const char *s, size_t n);
/* Whether all len bytes of s are valid UTF-8 (RFC 3629). */
bool buf_utf8_valid(const char *s, size_t len);
/* Whether text (textlen bytes) is what buf_json_string() shows of the bytes raw: raw with
 * each byte outside a valid UTF-8 sequence replaced by U+FFFD. */
bool buf_utf8_shows_as(const char *raw, size_t rawlen, const char *text, size_t textlen);
/* Appends the text buf_json_string() shows of s (len bytes), unquoted and unescaped: s with
 * each byte outside a valid UTF-8 sequence replaced by U+FFFD. */
void buf_utf8_show(struct buf *b, const char *s, size_t len);
/* Whether the NUL-terminated text holds U+FFFD: then it may be what buf_json_string() showed
 * of invalid bytes, to be matched with buf_utf8_shows_as(). */
static inline bool buf_utf8_has_replacement(const char *text)
{
    return strstr(text, "\xef\xbf\xbd") != NULL;
}
/*
 * For len bytes at s cut at a limit: len without a last character the cut
 * split (the start of a valid UTF-8 sequence, its end missing), so a valid
 * text cut short stays valid; other bytes are left as they are.
 */
size_t buf_utf8_cut(const char *s, size_t len);
static inline void buf_json_cstr(struct buf *b, const char *s)
{
    buf_json_string(b, s, strlen(s));
}
void buf_json_u64(struct buf *b, uint64_t v);
void buf_json_i64(struct buf *b, int64_t v);

#endif

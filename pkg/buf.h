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
/* Appends s (len bytes) as a quoted JSON string, escaping as RFC 8259 requires. */
void buf_json_string(struct buf *b, const char *s, size_t len);
static inline void buf_json_cstr(struct buf *b, const char *s)
{
    buf_json_string(b, s, strlen(s));
}
void buf_json_u64(struct buf *b, uint64_t v);
void buf_json_i64(struct buf *b, int64_t v);

#endif

/*
 * The one formatter for the error messages libraries hand back to callers:
 * every fallible pkg/ and cmd/ function that takes (char *err, size_t errlen)
 * fills it with errmsg_set(). A NULL or empty buffer is allowed and ignored.
 */
#ifndef EBPF_MONITOR_ERRMSG_H
#define EBPF_MONITOR_ERRMSG_H

#include <stddef.h>

/* Formats into err (truncating, always NUL-terminated) and returns -EINVAL,
 * so a caller can write `return errmsg_set(err, errlen, "...", ...);`. */
int errmsg_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * A copy of s for a log line or a terminal: every control character (C0, DEL: line breaks,
 * terminal escape sequences) becomes '?', and a text longer than outlen - 1 bytes ends with
 * "...". For text that others control: NATS subjects, header values, a peer's error. Returns out.
 */
const char *errmsg_printable(const char *s, char *out, size_t outlen);

#endif

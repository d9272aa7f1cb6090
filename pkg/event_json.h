/*
 * JSON encoding of events in the API's format (README.md, "Events"). Used by the
 * HTTP API, the SSE stream, the JSON bus encoding and the tail command.
 */
#ifndef EBPF_MONITOR_EVENT_JSON_H
#define EBPF_MONITOR_EVENT_JSON_H

#include "buf.h"
#include "event.h"

/*
 * Appends one JSON object on one line (no trailing newline). Optional fields
 * (node, k8s_*, per-type details the event lacks) are left out rather than
 * written as placeholders. Strings follow buf_json_string()'s UTF-8 rule
 * (each invalid byte becomes U+FFFD); when command, filename or an argument
 * is not valid UTF-8, command_b64 / filename_b64 / args_b64 (one entry per
 * argument) carry the exact bytes (README.md, "Strings and raw bytes").
 */
void event_json_write(struct buf *b, const struct event *e);

/*
 * Parses one JSON object in the format event_json_write() produces into *out
 * (zeroed first). "id", "type" and "timestamp" are required; "time" is derived
 * and ignored, as are unknown keys. node, k8s_*, drop_reason and location are
 * interned; exec filename/args are owned by *out (release with event_clear()).
 * A _b64 field gives the exact bytes of its text field; it must be padded
 * standard base64 without NUL bytes and be what that text was written from.
 * Returns 0, -EINVAL for bad input (err names the field), or -ENOMEM; on error
 * *out holds nothing. err may be NULL.
 */
int event_json_parse(const char *s, size_t len, struct event *out, char *err, size_t errlen);

/*
 * Formats ns since the epoch as RFC 3339 UTC with nanoseconds,
 * "2026-11-26T13:04:26.123456789Z": 30 characters and a NUL.
 */
void event_format_time(uint64_t ns, char out[40]);

#endif

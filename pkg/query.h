/*
 * Event queries: the filters of GET /api/events and /api/events/stream,
 * parsed from a URL query string, matched against events, and the cursor
 * that pages through results newest first.
 *
 * Order: events sort by (timestamp_ns, id) descending. A cursor is the sort
 * key of the last event returned; the next page holds events strictly after
 * it in that order. The cursor text is opaque to users but stable across
 * replicas (the aggregator pages across replicas with it).
 */
#ifndef EBPF_MONITOR_QUERY_H
#define EBPF_MONITOR_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"

struct buf;

#define QUERY_LIMIT_DEFAULT 100
#define QUERY_LIMIT_MAX     10000
#define QUERY_STR_MAX       256
/* The query filter's text: a name's longest text form (DNS_NAME_TEXT_MAX, every byte written
 * \DDD) after "*.". */
#define QUERY_DNS_NAME_MAX 1006
/* A query filter as typed: that, written any way dig takes (a trailing dot, spaces around). */
#define QUERY_DNS_INPUT_MAX 1100

struct query_cursor {
    uint64_t timestamp_ns;
    uint64_t id;
};

struct query {
    uint32_t types;                /* EVENT_TYPE_BIT mask; 0 = every type */
    char node[QUERY_STR_MAX];      /* "" = any */
    char pod[QUERY_STR_MAX];       /* matches k8s.pod_name */
    char namespace[QUERY_STR_MAX]; /* matches k8s.namespace */
    char command[QUERY_STR_MAX];   /* exact match on the task comm (query_command_match()) */
    bool command_shown;            /* command holds a U+FFFD (set by query_parse()) */
    char workload[QUERY_STR_MAX];  /* matches k8s.workload */
    /* Match the event's peer (SPEC §8); events without that peer field never match. */
    char peer_pod[QUERY_STR_MAX];
    char peer_namespace[QUERY_STR_MAX];
    char peer_workload[QUERY_STR_MAX];
    char peer_service[QUERY_STR_MAX];
    bool has_pid;
    uint32_t pid;
    bool has_dest_port;
    uint16_t dest_port; /* matches dport (connection, accept, close, packet_drop) */
    uint8_t status;     /* enum event_status; NONE = any (others never match a status) */
    /* dns events only (others never match these): the query name, lowercase without a
     * trailing dot, exact or "*.suffix" (the suffix's subdomains: dns_query_suffix; a name
     * whose first label is a literal "*" is exact), compared ignoring case; the rcode of an
     * answered query. */
    char dns_query[QUERY_DNS_NAME_MAX];
    bool dns_query_suffix;
    bool has_rcode;
    uint16_t rcode;
    uint64_t since_ns; /* inclusive; 0 = no bound */
    uint64_t until_ns; /* inclusive; UINT64_MAX = no bound */
    uint32_t limit;
    bool has_cursor;
    struct query_cursor cursor;
    /* Stream only: resume after this position (an event's SSE id; query_cursor text). */
    bool has_last_event_id;
    struct query_cursor last_event_id;
};

/*
 * Whether the task comm (at most EVENT_COMM_LEN bytes, NUL-terminated when
 * shorter) passes q's command filter: its bytes are the filter's, or, for a
 * filter holding U+FFFD, the filter is the text the API shows for them (each
 * byte of invalid UTF-8 as U+FFFD), so a command copied from an answer finds
 * its events. An empty filter passes everything.
 */
bool query_command_match(const struct query *q, const char *comm);

/* The defaults: every event, limit 100. */
void query_init(struct query *q);

/*
 * Parses a raw (still percent-encoded) query string such as
 * "type=exec,exit&limit=5" (without the leading '?') into q, which it first
 * resets with query_init(). Unknown, duplicated or empty parameters are an
 * error. On error returns -EINVAL and writes a message that names the
 * parameter into err, e.g. "invalid 'limit': \"abc\" (must be an integer 1-10000)".
 * `stream` rejects the parameters that make no sense for a live stream
 * (limit, cursor); without it, last_event_id (the stream's resume point) is refused.
 */
int query_parse(struct query *q, const char *qs, size_t len, bool stream, char *err, size_t errlen);

/* A stream with an `until` (the HTTP stream, `tail`) ends this long after it, for events that
 * were on their way. */
#define QUERY_STREAM_UNTIL_GRACE_MS 3000

/* True when q has a filter only dns events can pass (query, rcode). */
bool query_has_dns_filter(const struct query *q);
/* The dns filters alone (query, rcode) against e; true when q has none. */
bool query_match_dns(const struct query *q, const struct event *e);

/* True when e passes every filter, including the time bounds (not the cursor). */
bool query_match(const struct query *q, const struct event *e);

/*
 * The exact-match name filters alone (node, pod, namespace, workload,
 * peer_*) against these values; a NULL value never matches a filter. For
 * callers that hold those values apart from an event (the store's shards).
 */
bool query_match_names(const struct query *q, const char *node, const struct event_k8s *k8s,
                       const struct event_peer *peer);
/* True when q has one of the filters query_match_names() checks. */
bool query_has_name_filter(const struct query *q);

/* True when e sorts strictly after the cursor (i.e. belongs to a later page). */
bool query_after_cursor(const struct query_cursor *c, const struct event *e);

/* Sort order helper: <0 when a is newer than b (comes first), >0 when older. */
int query_cmp_newest_first(uint64_t ts_a, uint64_t id_a, uint64_t ts_b, uint64_t id_b);

/* Cursor text: 33 chars + NUL. */
#define QUERY_CURSOR_LEN 34
void query_cursor_format(const struct query_cursor *c, char out[QUERY_CURSOR_LEN]);
/* 0, or -EINVAL when s is not a cursor made by query_cursor_format(). */
int query_cursor_parse(struct query_cursor *c, const char *s, size_t len);
/* What a message says an event id (last_event_id, Last-Event-ID) must be. */
#define QUERY_EVENT_ID_FORMAT "use the id: of an event from /api/events/stream"
/*
 * The /api/events query string of a stream's replay: qs (a stream's, raw) without since,
 * until and last_event_id, then since=since_ns&until=until_ns&limit=limit (until omitted at
 * UINT64_MAX), into out. Every replica parses it as it would /api/events.
 */
void query_replay_string(const char *qs, size_t len, uint64_t since_ns, uint64_t until_ns,
                         uint32_t limit, struct buf *out);

/*
 * Parses RFC 3339 ("2026-11-26T13:04:26.123456789Z", "+02:00" offsets, up to 9
 * fraction digits) or epoch nanoseconds (digits only). 0, -EINVAL, -ERANGE
 * for a time before 1970 or past 2554, or -EDOM for a number from
 * QUERY_TIME_NS_IMPLAUSIBLE_FROM up to QUERY_TIME_NS_IMPLAUSIBLE_TO: as
 * nanoseconds a moment of 1970 (0.1 s to 116 days after the epoch), as the
 * seconds, milliseconds or microseconds it is more likely, a recent time.
 * Smaller numbers stay nanoseconds: "from the start".
 */
#define QUERY_TIME_NS_IMPLAUSIBLE_FROM 100000000ull         /* 1e8 */
#define QUERY_TIME_NS_IMPLAUSIBLE_TO   10000000000000000ull /* 1e16 */
int query_parse_time(const char *s, size_t len, uint64_t *out_ns);
/* What a message says of s, which query_parse_time() refused with rc: the format, the range,
 * or (-EDOM) the unit it seems to be in and its value in nanoseconds (written in buf). */
const char *query_time_reason(int rc, const char *s, size_t len, char *buf, size_t buflen);
/* What a message says a time parameter must be: RFC 3339 or nanoseconds, or within range. */
#define QUERY_TIME_FORMAT                                                                          \
    "must be RFC 3339, e.g. 2024-05-01T12:00:00Z, or nanoseconds since the Unix epoch"
#define QUERY_TIME_RANGE                                                                           \
    "out of range: from 1970-01-01T00:00:00Z to 2554-07-21T23:34:33.709551615Z, as nanoseconds "   \
    "since the "                                                                                   \
    "Unix epoch hold it"

#define QUERY_ERR_VALUE_MAX 64 /* bytes of a bad value quoted back in a message */
/* A printable copy of user input (at most QUERY_ERR_VALUE_MAX bytes, then "...") for messages. */
const char *query_quote(const char *s, size_t len, char out[QUERY_ERR_VALUE_MAX + 4]);

/*
 * Decodes application/x-www-form-urlencoded text ('+' is a space) into out, NUL-terminated.
 * Returns the decoded length, -EINVAL on a malformed escape, -EILSEQ on an encoded NUL, -E2BIG when
 * the result does not fit in outlen - 1 bytes. Used by every parser of query strings.
 */
int query_form_decode(const char *s, size_t len, char *out, size_t outlen);
/* The error of a decode's result n (query_form_decode()) for parameter name, raw the value
 * as sent, max the decode's buffer: -EINVAL with the message in err, or 0 when n > 0. */
int query_decode_error(const char *name, int n, const char *raw, size_t rawlen, size_t max,
                       char *err, size_t errlen);
/* *v without surrounding white space: numbers, times and keywords are read so. */
void query_trim(const char **v, size_t *len);
/* The same, where an encoded NUL is a byte of the value (a DNS name may hold one). */
int query_form_decode_bytes(const char *s, size_t len, char *out, size_t outlen);

#endif

/*
 * Fuzz target: the API's query-string parser (pkg/query.c), i.e. everything
 * a client can put after '?' in /api/events and /api/events/stream, plus the
 * cursor and time parsers it uses, and matching what it parsed. The input
 * is the raw, still percent-encoded string, not NUL-terminated, as h2o
 * hands it over.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "query.h"

/* A failed connection with every field a filter looks at. */
static const struct event fuzz_event = {
    .id = 1,
    .timestamp_ns = 1000,
    .type = EVENT_CONNECTION,
    .status = EVENT_STATUS_FAILED,
    .pid = 7,
    .dport = 5432,
    .command = "curl",
    .node = "node-a",
    .k8s = {.pod_name = "web-0", .namespace = "prod", .workload = "web"},
    .peer = {.pod = "db-0", .namespace = "data", .workload = "db", .service = "db-svc"},
};

/* An answered dns query, for the dns filters. */
static const struct event fuzz_dns_event = {
    .id = 2,
    .timestamp_ns = 1000,
    .type = EVENT_DNS,
    .status = EVENT_STATUS_ANSWERED,
    .u.dns = {.query = "api.svc.cluster.local", .rcode = 3, .query_type = 1},
};

/* A dns name filter is lowercase printable text without spaces. */
static bool dns_filter_ok(const char *f)
{
    for (const char *p = f; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f || (*p >= 'A' && *p <= 'Z'))
            return false;
    return true;
}

/*
 * A resumed stream's history is asked with query_replay_string() (pkg/http_server.c,
 * on_settle()): every replica must parse it as /api/events, and it must select what the
 * stream does within the same time bounds.
 */
static void check_replay_string(const char *s, size_t size, const struct query *q)
{
    struct buf b;
    struct query r;
    char err[256];
    uint64_t since = q->has_last_event_id ? q->last_event_id.timestamp_ns : 0;

    if (since >= QUERY_TIME_NS_IMPLAUSIBLE_FROM && since < QUERY_TIME_NS_IMPLAUSIBLE_TO)
        since = 0;
    if (since < q->since_ns)
        since = q->since_ns;
    if (since > q->until_ns)
        return; /* past the stream's end: no replay is asked */
    buf_init(&b);
    query_replay_string(s, size, since, q->until_ns, 1000, &b);
    if (b.oom) {
        buf_free(&b);
        return;
    }
    if (query_parse(&r, b.data, b.len, false, err, sizeof(err)) != 0 || r.limit != 1000 ||
        r.since_ns != since || r.until_ns != q->until_ns || r.has_cursor)
        __builtin_trap();
    /* Same filters: within both windows an event matches both or neither. */
    r.since_ns = q->since_ns;
    if (query_match(&r, &fuzz_event) != query_match(q, &fuzz_event) ||
        query_match(&r, &fuzz_dns_event) != query_match(q, &fuzz_dns_event))
        __builtin_trap();
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char err[256];
    struct query q;

    for (int stream = 0; stream <= 1; stream++) {
        int rc = query_parse(&q, s, size, stream, err, sizeof(err));
        if (rc == 0) {
            /* What parsed is in range, and matching it is safe. */
            if ((q.has_dest_port && q.dest_port == 0) || q.status > EVENT_STATUS_UNKNOWN ||
                (q.has_rcode && q.rcode > 4095) || !dns_filter_ok(q.dns_query))
                __builtin_trap();
            (void)query_match(&q, &fuzz_event);
            (void)query_match(&q, &fuzz_dns_event);
            if (stream)
                check_replay_string(s, size, &q);
        }
        if (rc == 0 && q.has_cursor) {
            /* A parsed cursor formats back to text that parses to the same cursor. */
            char text[QUERY_CURSOR_LEN];
            struct query_cursor again;
            query_cursor_format(&q.cursor, text);
            if (query_cursor_parse(&again, text, strlen(text)) != 0 ||
                memcmp(&again, &q.cursor, sizeof(again)) != 0)
                __builtin_trap();
        } else {
            /* Errors are one NUL-terminated line. */
            if (memchr(err, '\0', sizeof(err)) == NULL)
                __builtin_trap();
        }
    }

    struct query_cursor c;
    query_cursor_parse(&c, s, size);
    uint64_t ns;
    query_parse_time(s, size, &ns);
    return 0;
}

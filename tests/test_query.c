/*
 * Tests for pkg/query: parsing the /api/events query string (every filter,
 * percent-decoding, every rejection and its message), RFC 3339 and epoch
 * times, the page cursor, and matching events against a query.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "event.h"
#include "intern.h"
#include "query.h"

#define T_2024_05_01_12 1714564800000000000ull /* 2024-05-01T12:00:00Z in ns */

static int parse(struct query *q, const char *qs, bool stream, char *err, size_t errlen)
{
    return query_parse(q, qs, strlen(qs), stream, err, errlen);
}

static void parse_ok(struct query *q, const char *qs)
{
    char err[256] = "";
    int rc = parse(q, qs, false, err, sizeof(err));
    cr_assert_eq(rc, 0, "query_parse(\"%s\") = %d: %s", qs, rc, err);
}

Test(query_parse, empty_string_gives_defaults)
{
    struct query q;
    parse_ok(&q, "");
    cr_assert_eq(q.types, 0);
    cr_assert_eq(q.limit, QUERY_LIMIT_DEFAULT);
    cr_assert_eq(q.since_ns, 0);
    cr_assert_eq(q.until_ns, UINT64_MAX);
    cr_assert_not(q.has_pid);
    cr_assert_not(q.has_cursor);
    cr_assert_str_empty(q.node);
    cr_assert_str_empty(q.pod);
    cr_assert_str_empty(q.namespace);
    cr_assert_str_empty(q.command);
}

Test(query_parse, every_filter)
{
    struct query q;
    parse_ok(&q, "type=exec,exit&node=worker-1&pod=web-0&namespace=prod&pid=4242&command=curl"
                 "&since=2024-05-01T12:00:00Z&until=1714564900000000000&limit=25"
                 "&cursor=000000000000000a-00000000000000ff");
    cr_assert_eq(q.types, EVENT_TYPE_BIT(EVENT_EXEC) | EVENT_TYPE_BIT(EVENT_EXIT));
    cr_assert_str_eq(q.node, "worker-1");
    cr_assert_str_eq(q.pod, "web-0");
    cr_assert_str_eq(q.namespace, "prod");
    cr_assert(q.has_pid);
    cr_assert_eq(q.pid, 4242);
    cr_assert_str_eq(q.command, "curl");
    cr_assert_eq(q.since_ns, T_2024_05_01_12);
    cr_assert_eq(q.until_ns, 1714564900000000000ull);
    cr_assert_eq(q.limit, 25);
    cr_assert(q.has_cursor);
    cr_assert_eq(q.cursor.timestamp_ns, 10);
    cr_assert_eq(q.cursor.id, 255);
}

Test(query_parse, connection_and_peer_filters)
{
    struct query q;
    parse_ok(&q, "workload=web&peer_pod=db-0&peer_namespace=data&peer_workload=db"
                 "&peer_service=db%2Dsvc&dest_port=5432&status=failed");
    cr_assert_str_eq(q.workload, "web");
    cr_assert_str_eq(q.peer_pod, "db-0");
    cr_assert_str_eq(q.peer_namespace, "data");
    cr_assert_str_eq(q.peer_workload, "db");
    cr_assert_str_eq(q.peer_service, "db-svc");
    cr_assert(q.has_dest_port);
    cr_assert_eq(q.dest_port, 5432);
    cr_assert_eq(q.status, EVENT_STATUS_FAILED);
    parse_ok(&q, "status=established&dest_port=1");
    cr_assert_eq(q.status, EVENT_STATUS_ESTABLISHED);
    cr_assert_eq(q.dest_port, 1);
    parse_ok(&q, "status=attempted&dest_port=65535");
    cr_assert_eq(q.status, EVENT_STATUS_ATTEMPTED);
    cr_assert_eq(q.dest_port, 65535);
    parse_ok(&q, "");
    cr_assert_not(q.has_dest_port);
    cr_assert_eq(q.status, EVENT_STATUS_NONE);
    cr_assert_str_empty(q.workload);
    cr_assert_str_empty(q.peer_pod);
}

Test(query_parse, every_type_name)
{
    struct query q;
    parse_ok(&q, "type=connection,accept,packet_drop,exec,exit,close,dns");
    cr_assert_eq(q.types, EVENT_TYPES_ALL);
    parse_ok(&q, "type=packet_drop");
    cr_assert_eq(q.types, EVENT_TYPE_BIT(EVENT_PACKET_DROP));
    /* Spaces after commas ("exec, exit") and upper case are forgiven. */
    parse_ok(&q, "type=exec,%20EXIT");
    cr_assert_eq(q.types, EVENT_TYPE_BIT(EVENT_EXEC) | EVENT_TYPE_BIT(EVENT_EXIT));
    parse_ok(&q, "type=accept%2Cconnection");
    cr_assert_eq(q.types, EVENT_TYPE_BIT(EVENT_ACCEPT) | EVENT_TYPE_BIT(EVENT_CONNECTION));
}

Test(query_parse, limits_and_pid_bounds)
{
    struct query q;
    parse_ok(&q, "limit=1");
    cr_assert_eq(q.limit, 1);
    parse_ok(&q, "limit=10000");
    cr_assert_eq(q.limit, 10000);
    parse_ok(&q, "pid=0");
    cr_assert(q.has_pid);
    cr_assert_eq(q.pid, 0);
    parse_ok(&q, "pid=4294967295");
    cr_assert_eq(q.pid, 4294967295u);
}

Test(query_parse, percent_decoding)
{
    struct query q;
    parse_ok(&q, "pod=web%2D0%2fx&namespace=a+b&command=kube%20proxy&node=n%C3%A9");
    cr_assert_str_eq(q.pod, "web-0/x");
    cr_assert_str_eq(q.namespace, "a b");
    cr_assert_str_eq(q.command, "kube proxy");
    cr_assert_str_eq(q.node, "n\xc3\xa9");
    /* Names are decoded too. */
    parse_ok(&q, "p%6Fd=x&%6eode=y");
    cr_assert_str_eq(q.pod, "x");
    cr_assert_str_eq(q.node, "y");
    /* An encoded '&' or '=' is data, not a separator. */
    parse_ok(&q, "pod=a%26b%3Dc");
    cr_assert_str_eq(q.pod, "a&b=c");
}

/* Spaces around numbers are ignored, as around type names; names stay exact. */
Test(query_parse, spaces_around_numbers_are_ignored)
{
    struct query q;
    parse_ok(&q, "limit=%201&pid=+42%20&command=%20sh");
    cr_assert_eq(q.limit, 1);
    cr_assert(q.has_pid);
    cr_assert_eq(q.pid, 42);
    cr_assert_str_eq(q.command, " sh");
    /* query is a name: a space is part of it (as dig shows it, \032), never dropped. */
    parse_ok(&q, "query=%20example.internal&status=%20answered+&rcode=+NXDOMAIN");
    cr_assert_str_eq(q.dns_query, "\\032example.internal");
    cr_assert_eq(q.status, EVENT_STATUS_ANSWERED);
    cr_assert_eq(q.rcode, 3);
    parse_ok(&q, "query=example.internal%20");
    cr_assert_str_eq(q.dns_query, "example.internal\\032");
}

Test(query_parse, empty_segments_are_skipped)
{
    struct query q;
    parse_ok(&q, "&pod=a&&limit=3&");
    cr_assert_str_eq(q.pod, "a");
    cr_assert_eq(q.limit, 3);
}

Test(query_parse, longest_string_is_accepted)
{
    char qs[QUERY_STR_MAX + 16];
    int n = snprintf(qs, sizeof(qs), "pod=");
    memset(qs + n, 'p', QUERY_STR_MAX - 1);
    qs[n + QUERY_STR_MAX - 1] = '\0';
    struct query q;
    parse_ok(&q, qs);
    cr_assert_eq(strlen(q.pod), QUERY_STR_MAX - 1);
}

/* Every rejected input, with the parameter name its message must contain. */
struct bad_case {
    const char *qs;
    const char *needle; /* must appear in the message */
    bool stream;
};

static const struct bad_case bad_cases[] = {
    {"limit=abc", "'limit'"},
    {"limit=abc", "1-10000"},
    {"limit=0", "'limit'"},
    {"limit=10001", "'limit'"},
    {"limit=-1", "'limit'"},
    {"limit=1.5", "'limit'"},
    {"limit=99999999999999999999999", "'limit'"},
    {"limit=", "'limit'"},
    {"limit", "'limit'"},
    {"type=bogus", "'type'"},
    {"type=bogus", "\"bogus\""},
    {"type=bogus", "connection, accept, packet_drop, exec, exit"},
    {"type=exec,bogus", "\"bogus\""},
    {"type=exec,", "'type'"},
    {"type=,exec", "'type'"},
    {"type=", "'type'"},
    {"pid=abc", "'pid'"},
    {"pid=-1", "'pid'"},
    {"pid=4294967296", "'pid'"},
    {"pid=12abc", "'pid'"},
    {"pid=", "'pid'"},
    {"since=yesterday", "'since'"},
    {"since=yesterday", "RFC 3339"},
    {"since=2024-13-01T00:00:00Z", "'since'"},
    {"since=2024-02-30T00:00:00Z", "'since'"},
    {"since=2023-02-29T00:00:00Z", "'since'"},
    {"since=2024-05-01T24:00:00Z", "'since'"},
    {"since=2024-05-01T12:60:00Z", "'since'"},
    {"since=2024-05-01T12:00:00", "'since'"},
    {"since=2024-05-01", "'since'"},
    {"since=2024-05-01T12:00:00.Z", "'since'"},
    {"since=2024-05-01T12:00:00%2B0200", "'since'"},
    {"since=2024-05-01T12:00:00%2B24:00", "'since'"},
    {"since=2024-05-01T12:00:00ZZ", "'since'"},
    {"since=1969-12-31T23:59:59Z", "'since'"},
    {"since=18446744073709551616", "'since'"},
    {"since=-5", "'since'"},
    {"since=", "'since'"},
    {"until=soon", "'until'"},
    {"until=2024-05-01T12:00:00x", "'until'"},
    {"since=2000&until=1000", "'since'"},
    {"since=2024-05-01T12:00:01Z&until=2024-05-01T12:00:00Z", "'since'"},
    {"cursor=garbage", "'cursor'"},
    {"cursor=", "'cursor'"},
    {"node=", "'node'"},
    {"pod=", "'pod'"},
    {"namespace=", "'namespace'"},
    {"command=", "'command'"},
    {"workload=", "'workload'"},
    {"peer_pod=", "'peer_pod'"},
    {"peer_namespace=", "'peer_namespace'"},
    {"peer_workload=", "'peer_workload'"},
    {"peer_service=", "'peer_service'"},
    {"peer_pod=a&peer_pod=b", "duplicate"},
    {"dest_port=", "'dest_port'"},
    {"dest_port=0", "'dest_port'"},
    {"dest_port=65536", "'dest_port'"},
    {"dest_port=http", "'dest_port'"},
    {"dest_port=-1", "1-65535"},
    {"status=", "'status'"},
    {"status=ok", "'status'"},
    {"status=ok", "established, failed, attempted"},
    {"status=fail", "'status'"},
    {"status=failed,established", "'status'"},
    {"type=closed", "close"},
    {"peer_ip=10.0.0.1", "unknown query parameter 'peer_ip'"},
    {"status=x", "'status'", true},
    {"status=ok", "answered, timeout"},
    {"query=", "'query'"},
    {"query=*.", "'query'"},
    {"query=..", "'query'"},
    {"query=*..", "'query'"},
    {"query=*", "'query'"},
    {"query=a..b", "'query'"},
    {"query=.a", "'query'"},
    {"query=*x.com", "'query'"},
    {"query=*x.com", "\\*"},
    {"query=**.com", "'query'"},
    {"query=a%5C2", "'query'"},
    {"query=a%5C25.b", "'query'"},
    {"query=*.*.com", "'query'"},
    {"query=a&query=b", "duplicate"},
    {"rcode=", "'rcode'"},
    {"rcode=BOGUS", "'rcode'"},
    {"rcode=BOGUS", "NXDOMAIN"},
    {"rcode=4096", "'rcode'"},
    {"rcode=-1", "'rcode'"},
    {"rcode=x", "'rcode'", true},
    {"dest_port=x", "'dest_port'", true},
    {"foo=1", "unknown query parameter 'foo'"},
    {"limit=5&foo=1", "unknown query parameter 'foo'"},
    {"Limit=5", "unknown query parameter 'Limit'"},
    {"pod=a&pod=b", "'pod'"},
    {"pod=a&pod=b", "duplicate"},
    {"limit=1&limit=1", "'limit'"},
    {"pod=%zz", "'pod'"},
    {"pod=%zz", "percent-encoding"},
    {"pod=abc%4", "'pod'"},
    {"pod=abc%", "'pod'"},
    {"pod=a%00b", "'pod'"},
    {"command=%00", "invalid 'command': a NUL byte (%00)"},
    {"p%00d=1", "unknown query parameter"},
    {"p%zzd=1", "percent-encoding"},
    {"limit=5", "'limit' is not supported on the stream", true},
    {"cursor=000000000000000a-00000000000000ff", "'cursor' is not supported on the stream", true},
    {"foo=1", "unknown query parameter 'foo'", true},
    {"last_event_id=nope", "invalid 'last_event_id': \"nope\"", true},
    {"last_event_id=", "'last_event_id'", true},
    {"last_event_id=000000000000000a-00000000000000ff",
     "'last_event_id' is for /api/events/stream"},
    {"pid=x", "'pid'", true},
    {"since=9999-12-31T23:59:59Z", "out of range"},
    {"until=1969-12-31T23:59:59Z", "out of range"},
    {"until=18446744073709551616", "out of range"},
    {"since=2024-13-01T00:00:00Z", "must be RFC 3339"},
    /* Numbers that are no nanoseconds of today but its seconds, milliseconds or microseconds. */
    {"since=1733500000", "'since': \"1733500000\" (a number is nanoseconds since the Unix epoch"},
    {"since=1733500000", "seconds? that is 1733500000000000000 ns"},
    {"until=1733500000123", "'until'"},
    {"until=1733500000123", "milliseconds? that is 1733500000123000000 ns"},
    {"since=1733500000123456", "microseconds? that is 1733500000123456000 ns"},
    {"since=100000000", "seconds? that is 100000000000000000 ns"},
    {"since=9999999999999999", "microseconds? that is 9999999999999999000 ns"},
    /* Whose value in nanoseconds would not fit: no wrapped figure. */
    {"since=18446744074", "as seconds it is past 2554, out of range"},
    {"since=20000000000", "as seconds it is past 2554"},
    {"until=18446744073710", "as milliseconds it is past 2554"},
    {"since=18446744073709", "milliseconds? that is 18446744073709000000 ns"},
};

Test(query_parse, every_bad_value_is_rejected_with_its_name)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct query q;
        char err[512] = "";
        int rc = parse(&q, c->qs, c->stream, err, sizeof(err));
        cr_expect_eq(rc, -EINVAL, "\"%s\" (stream=%d): rc %d", c->qs, c->stream, rc);
        cr_expect(strstr(err, c->needle) != NULL, "\"%s\": message \"%s\" lacks \"%s\"", c->qs, err,
                  c->needle);
    }
}

/* The numbers around those refused as seconds, milliseconds or microseconds stay nanoseconds. */
Test(query_parse, numbers_outside_the_implausible_range_are_nanoseconds)
{
    struct query q;
    char err[512] = "";
    cr_assert_eq(parse(&q, "since=99999999&until=10000000000000000", false, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert_eq(q.since_ns, 99999999ull);
    cr_assert_eq(q.until_ns, 10000000000000000ull);
    cr_assert_eq(parse(&q, "since=0&until=1733500000000000000", false, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(q.since_ns, 0);
    cr_assert_eq(q.until_ns, 1733500000000000000ull);
}

Test(query_parse, exact_messages)
{
    struct query q;
    char err[512];
    parse(&q, "limit=abc", false, err, sizeof(err));
    cr_assert_str_eq(err, "invalid 'limit': \"abc\" (must be an integer 1-10000)");
    parse(&q, "foo=1", false, err, sizeof(err));
    cr_assert(strncmp(err, "unknown query parameter 'foo'", 29) == 0, "%s", err);
}

Test(query_parse, too_long_strings_are_rejected)
{
    const char *names[] = {"node",           "pod",           "namespace",
                           "command",        "workload",      "peer_pod",
                           "peer_namespace", "peer_workload", "peer_service"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char qs[QUERY_STR_MAX + 32];
        int n = snprintf(qs, sizeof(qs), "%s=", names[i]);
        memset(qs + n, 'x', QUERY_STR_MAX);
        qs[n + QUERY_STR_MAX] = '\0';
        struct query q;
        char err[256] = "", want[32];
        cr_assert_eq(parse(&q, qs, false, err, sizeof(err)), -EINVAL, "%s", names[i]);
        snprintf(want, sizeof(want), "'%s'", names[i]);
        cr_assert(strstr(err, want), "%s", err);
    }
}

Test(query_parse, stream_accepts_the_filters)
{
    struct query q;
    char err[256] = "";
    cr_assert_eq(parse(&q, "type=exec&node=a&pod=b&namespace=c&pid=1&command=sh&since=5&until=9",
                       true, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(q.types, EVENT_TYPE_BIT(EVENT_EXEC));
    cr_assert_eq(q.until_ns, 9);
    cr_assert_eq(parse(&q,
                       "workload=w&peer_pod=p&peer_namespace=n&peer_workload=pw&peer_service=s"
                       "&dest_port=80&status=established",
                       true, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(q.dest_port, 80);
}

Test(query_parse, message_quotes_are_bounded_and_printable)
{
    char qs[600];
    int n = snprintf(qs, sizeof(qs), "limit=%%01");
    memset(qs + n, '9', 200);
    qs[n + 200] = '\0';
    struct query q;
    char err[512];
    cr_assert_eq(parse(&q, qs, false, err, sizeof(err)), -EINVAL);
    cr_assert(strlen(err) < 160, "%s", err);
    for (const char *p = err; *p; p++)
        cr_assert((unsigned char)*p >= 0x20, "control byte in \"%s\"", err);
    /* A tiny or absent error buffer is fine. */
    char small[8];
    cr_assert_eq(parse(&q, "limit=x", false, small, sizeof(small)), -EINVAL);
    cr_assert_eq(strlen(small), 7);
    cr_assert_eq(parse(&q, "limit=x", false, NULL, 0), -EINVAL);
}

struct time_case {
    const char *s;
    uint64_t ns;
};

Test(query_time, rfc3339_and_epoch_forms)
{
    static const struct time_case cases[] = {
        {"2024-05-01T12:00:00Z", T_2024_05_01_12},
        {"2024-05-01t12:00:00z", T_2024_05_01_12},
        {"2024-05-01 12:00:00Z", T_2024_05_01_12},
        {"2024-05-01T12:00:00+00:00", T_2024_05_01_12},
        {"2024-05-01T12:00:00-00:00", T_2024_05_01_12},
        {"2024-05-01T14:30:00+02:30", T_2024_05_01_12},
        {"2024-05-01T07:00:00-05:00", T_2024_05_01_12},
        /* An unencoded '+' in a URL arrives as a space. */
        {"2024-05-01T14:00:00 02:00", T_2024_05_01_12},
        {"2024-05-01T12:00:00.5Z", T_2024_05_01_12 + 500000000},
        {"2024-05-01T12:00:00.123Z", T_2024_05_01_12 + 123000000},
        {"2024-05-01T12:00:00.123456Z", T_2024_05_01_12 + 123456000},
        {"2024-05-01T12:00:00.123456789Z", T_2024_05_01_12 + 123456789},
        {"2024-05-01T12:00:00.1234567891Z", T_2024_05_01_12 + 123456789}, /* sub-ns dropped */
        {"2024-05-01T12:00:00.000000001Z", T_2024_05_01_12 + 1},
        {"2024-05-01T14:00:00.25+02:00", T_2024_05_01_12 + 250000000},
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01T01:00:00+01:00", 0},
        {"2000-02-29T23:59:59Z", 951868799000000000ull},
        {"2554-07-21T23:34:33.709551615Z", UINT64_MAX},
        {"0", 0},
        {"1714564800000000000", T_2024_05_01_12},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ns = 1;
        int rc = query_parse_time(cases[i].s, strlen(cases[i].s), &ns);
        cr_expect_eq(rc, 0, "%s: rc %d", cases[i].s, rc);
        cr_expect_eq(ns, cases[i].ns, "%s: %llu != %llu", cases[i].s, (unsigned long long)ns,
                     (unsigned long long)cases[i].ns);
    }
}

Test(query_time, rejects_malformed_and_out_of_range)
{
    static const char *bad[] = {
        "",
        "abc",
        "2024-05-01T12:00:00",
        "2024-05-01T12:00:00.Z",
        "2024-05-01T12:00:00+2:00",
        "2024-05-01T12:00:00+02:60",
        "2024-05-01T12:00:00+02:00x",
        "2024-05-01X12:00:00Z",
        "2024-00-01T12:00:00Z",
        "2024-04-31T12:00:00Z",
        "1900-02-29T00:00:00Z",
        "1969-12-31T23:59:59.999999999Z",
        "1970-01-01T00:30:00+01:00",
        "2554-07-21T23:34:33.709551616Z",
        "18446744073709551616",
        "12e9",
        " 1",
        "+1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ns = 7;
        cr_expect_lt(query_parse_time(bad[i], strlen(bad[i]), &ns), 0, "\"%s\" accepted", bad[i]);
        cr_expect_eq(ns, 7, "\"%s\" wrote the output", bad[i]);
    }
}

Test(query_time, since_equal_until_is_allowed)
{
    struct query q;
    parse_ok(&q, "since=2024-05-01T12:00:00Z&until=1714564800000000000");
    cr_assert_eq(q.since_ns, q.until_ns);
}

Test(query_cursor, round_trip)
{
    static const struct query_cursor cases[] = {
        {0, 0},
        {1, 2},
        {T_2024_05_01_12 + 123456789, 0xdeadbeefcafef00dull},
        {UINT64_MAX, UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[QUERY_CURSOR_LEN];
        query_cursor_format(&cases[i], text);
        cr_assert_eq(strlen(text), QUERY_CURSOR_LEN - 1);
        struct query_cursor back;
        cr_assert_eq(query_cursor_parse(&back, text, strlen(text)), 0, "%s", text);
        cr_assert_eq(back.timestamp_ns, cases[i].timestamp_ns);
        cr_assert_eq(back.id, cases[i].id);

        /* And through the query string, as a client sends it back. */
        char qs[64];
        snprintf(qs, sizeof(qs), "cursor=%s", text);
        struct query q;
        parse_ok(&q, qs);
        cr_assert(q.has_cursor);
        cr_assert_eq(q.cursor.timestamp_ns, cases[i].timestamp_ns);
        cr_assert_eq(q.cursor.id, cases[i].id);
    }
}

Test(query_cursor, rejects_garbage)
{
    static const char *bad[] = {
        "",
        "x",
        "0000000000000001-000000000000000",
        "0000000000000001-00000000000000001",
        "0000000000000001_0000000000000002",
        "000000000000000g-0000000000000002",
        "0000000000000001-000000000000000G",
        "00000000000000010000000000000002",
        "-0000000000000001-000000000000002",
        "0000000000000001-0000000000000002 ",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct query_cursor c = {7, 7};
        cr_expect_eq(query_cursor_parse(&c, bad[i], strlen(bad[i])), -EINVAL, "\"%s\"", bad[i]);
        cr_expect_eq(c.timestamp_ns, 7);
        cr_expect_eq(c.id, 7);
    }
}

Test(query_order, newest_first_and_cursor)
{
    cr_assert_lt(query_cmp_newest_first(2, 0, 1, 9), 0);
    cr_assert_gt(query_cmp_newest_first(1, 9, 2, 0), 0);
    cr_assert_lt(query_cmp_newest_first(5, 9, 5, 3), 0);
    cr_assert_gt(query_cmp_newest_first(5, 3, 5, 9), 0);
    cr_assert_eq(query_cmp_newest_first(5, 3, 5, 3), 0);

    struct query_cursor c = {100, 50};
    struct event e = {.timestamp_ns = 100, .id = 49};
    cr_assert(query_after_cursor(&c, &e)); /* same time, lower id: later page */
    e.id = 50;
    cr_assert_not(query_after_cursor(&c, &e)); /* the cursor's own event */
    e.id = 51;
    cr_assert_not(query_after_cursor(&c, &e));
    e = (struct event){.timestamp_ns = 99, .id = UINT64_MAX};
    cr_assert(query_after_cursor(&c, &e));
    e = (struct event){.timestamp_ns = 101, .id = 0};
    cr_assert_not(query_after_cursor(&c, &e));
}

static struct event match_event(void)
{
    struct event e = {
        .id = 1,
        .timestamp_ns = 1000,
        .type = EVENT_EXEC,
        .pid = 42,
        .node = intern("node-a"),
        .k8s = {.pod_name = intern("web-0"), .namespace = intern("prod")},
    };
    strcpy(e.command, "curl");
    return e;
}

/* A failed connection from web to db, with its peer named. */
static struct event match_connection(void)
{
    struct event e = {
        .id = 2,
        .timestamp_ns = 2000,
        .type = EVENT_CONNECTION,
        .status = EVENT_STATUS_FAILED,
        .pid = 7,
        .dport = 5432,
        .sport = 40000,
        .k8s = {.pod_name = intern("web-0"),
                .namespace = intern("prod"),
                .workload = intern("web"),
                .workload_kind = intern("Deployment")},
        .peer = {.pod = intern("db-0"),
                 .namespace = intern("data"),
                 .workload = intern("db"),
                 .workload_kind = intern("StatefulSet"),
                 .service = intern("db-svc")},
    };
    e.u.conn.error = intern("refused");
    strcpy(e.command, "curl");
    return e;
}

/* One filter at a time: the value that matches, the one that does not. */
Test(query_match, truth_table)
{
    struct event e = match_event();
    struct query q;
    struct {
        const char *qs;
        bool want;
    } cases[] = {
        {"", true},
        {"type=exec", true},
        {"type=exit,exec", true},
        {"type=exit", false},
        {"node=node-a", true},
        {"node=node-b", false},
        {"node=node", false},
        {"pod=web-0", true},
        {"pod=web-1", false},
        {"namespace=prod", true},
        {"namespace=dev", false},
        {"pid=42", true},
        {"pid=43", false},
        {"pid=0", false},
        {"command=curl", true},
        {"command=cur", false},
        {"command=curl2", false},
        {"since=1000", true},
        {"since=1001", false},
        {"until=1000", true},
        {"until=999", false},
        {"since=1000&until=1000", true},
        {"type=exec&node=node-a&pod=web-0&namespace=prod&pid=42&command=curl&since=1&until=2000",
         true},
        {"type=exec&node=node-a&pod=web-0&namespace=prod&pid=42&command=curl&since=1&until=999",
         false},
        /* The cursor is a paging position, not a filter. */
        {"cursor=0000000000000001-0000000000000001", true},
        /* An exec has no workload, peer, port or status: each such filter excludes it. */
        {"workload=web", false},
        {"peer_pod=db-0", false},
        {"dest_port=5432", false},
        {"status=established", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parse_ok(&q, cases[i].qs);
        cr_expect_eq(query_match(&q, &e), cases[i].want, "\"%s\"", cases[i].qs);
    }
}

Test(query_match, connection_and_peer_truth_table)
{
    struct event e = match_connection();
    struct query q;
    struct {
        const char *qs;
        bool want;
    } cases[] = {
        {"workload=web", true},
        {"workload=we", false},
        {"workload=db", false},
        {"peer_pod=db-0", true},
        {"peer_pod=web-0", false},
        {"peer_namespace=data", true},
        {"peer_namespace=prod", false},
        {"peer_workload=db", true},
        {"peer_workload=web", false},
        {"peer_service=db-svc", true},
        {"peer_service=db", false},
        {"dest_port=5432", true},
        {"dest_port=40000", false},
        {"dest_port=5433", false},
        {"status=failed", true},
        {"status=established", false},
        {"status=attempted", false},
        {"type=connection&workload=web&peer_pod=db-0&peer_namespace=data&peer_workload=db"
         "&peer_service=db-svc&dest_port=5432&status=failed&pid=7",
         true},
        {"type=connection&workload=web&peer_pod=db-0&peer_namespace=data&peer_workload=db"
         "&peer_service=db-svc&dest_port=5432&status=failed&pid=8",
         false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parse_ok(&q, cases[i].qs);
        cr_expect_eq(query_match(&q, &e), cases[i].want, "\"%s\"", cases[i].qs);
    }
}

Test(query_parse, dns_filters)
{
    struct query q;
    parse_ok(&q, "query=Example.COM.&rcode=nxdomain");
    cr_assert_str_eq(q.dns_query, "example.com");
    cr_assert(q.has_rcode);
    cr_assert_eq(q.rcode, 3);
    parse_ok(&q, "query=*.svc.cluster.local&rcode=2");
    cr_assert_str_eq(q.dns_query, "*.svc.cluster.local");
    cr_assert_eq(q.rcode, 2);
    parse_ok(&q, "rcode=NOERROR&status=answered");
    cr_assert_eq(q.rcode, 0);
    cr_assert(q.has_rcode);
    cr_assert_eq(q.status, EVENT_STATUS_ANSWERED);
    parse_ok(&q, "status=timeout");
    cr_assert_eq(q.status, EVENT_STATUS_TIMEOUT);
    /* Keywords in any case, like type and rcode. */
    parse_ok(&q, "status=Established&type=CONNECTION");
    cr_assert_eq(q.status, EVENT_STATUS_ESTABLISHED);
    char err[256];
    cr_assert_eq(parse(&q, "query=a.test&rcode=SERVFAIL", true, err, sizeof(err)), 0, "%s", err);
    /* A name in UTF-8 (or any byte above 0x7e) in the text form events show it in. */
    parse_ok(&q, "query=%C3%BCn%C3%AF.Internal");
    cr_assert_str_eq(q.dns_query, "\\195\\188n\\195\\175.internal");
    parse_ok(&q, "query=*.%FF.com");
    cr_assert_str_eq(q.dns_query, "*.\\255.com");
    parse_ok(&q, "query=a%7F.com");
    cr_assert_str_eq(q.dns_query, "a\\127.com");
    /* Any byte, unescaped: a space, a control byte, NUL, in dig's \DDD. */
    parse_ok(&q, "query=a%01.com");
    cr_assert_str_eq(q.dns_query, "a\\001.com");
    parse_ok(&q, "query=a%20b.internal");
    cr_assert_str_eq(q.dns_query, "a\\032b.internal");
    parse_ok(&q, "query=a+b.internal");
    cr_assert_str_eq(q.dns_query, "a\\032b.internal");
    parse_ok(&q, "query=a%00b.internal");
    cr_assert_str_eq(q.dns_query, "a\\000b.internal");
    parse_ok(&q, "query=%5C%01.com");
    cr_assert_str_eq(q.dns_query, "\\001.com");
    /* As dig shows a name or plainly: each byte in the events' text form. */
    parse_ok(&q, "query=a@b.example");
    cr_assert_str_eq(q.dns_query, "a\\@b.example");
    parse_ok(&q, "query=A%5C@b.example");
    cr_assert_str_eq(q.dns_query, "a\\@b.example");
    parse_ok(&q, "query=a%5C064b.example");
    cr_assert_str_eq(q.dns_query, "a\\@b.example");
    parse_ok(&q, "query=%22(x)%3B$.example");
    cr_assert_str_eq(q.dns_query, "\\\"\\(x\\)\\;\\$.example");
    parse_ok(&q, "query=a%5C.b.example."); /* an escaped dot is in its label */
    cr_assert_str_eq(q.dns_query, "a\\.b.example");
    parse_ok(&q, "query=a%5C032b.example");
    cr_assert_str_eq(q.dns_query, "a\\032b.example");
    parse_ok(&q, "query=%5C%5C.example");
    cr_assert_str_eq(q.dns_query, "\\\\.example");
    parse_ok(&q, "query=*.%5C065.example");
    cr_assert_str_eq(q.dns_query, "*.a.example");
    const char *bad[] = {"query=a%5C",      "query=a%5C256.com", "query=a..",
                         "query=a%5C1.com", "query=a%5C12",      "query=a%5C12x.com"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_neq(parse(&q, bad[i], true, err, sizeof(err)), 0, "%s", bad[i]);
    /* No name on the wire has a label over 63 bytes or is over 255 bytes. */
    char qs[600];
    snprintf(qs, sizeof(qs), "query=%063d.com", 0);
    parse_ok(&q, qs);
    snprintf(qs, sizeof(qs), "query=%064d.com", 0);
    cr_expect_neq(parse(&q, qs, true, err, sizeof(err)), 0, "a 64-byte label");
    cr_expect(strstr(err, "query"), "%s", err);
    snprintf(qs, sizeof(qs), "query=%063d.%063d.%063d.%061d", 0, 0, 0, 0); /* 255 on the wire */
    parse_ok(&q, qs);
    snprintf(qs, sizeof(qs), "query=%063d.%063d.%063d.%062d", 0, 0, 0, 0);
    cr_expect_neq(parse(&q, qs, true, err, sizeof(err)), 0, "256 bytes on the wire");
    /* The longest text there is: 255 bytes on the wire, every one \DDD (1,003 characters), typed
     * escaped or as raw bytes, after "*.", with a trailing dot. */
    char longq[8000], want[1100];
    size_t o = (size_t)snprintf(longq, sizeof(longq), "query=*."), w = 2;
    memcpy(want, "*.", 2);
    const int labels[] = {63, 63, 63, 61};
    for (int escaped = 0; escaped < 2; escaped++) {
        o = 8, w = 2;
        for (int l = 0; l < 4; l++) {
            for (int i = 0; i < labels[l]; i++) {
                o += (size_t)snprintf(longq + o, sizeof(longq) - o, escaped ? "%%5C255" : "%%FF");
                memcpy(want + w, "\\255", 4);
                w += 4;
            }
            longq[o++] = '.';
            if (l < 3)
                want[w++] = '.';
        }
        longq[o] = want[w] = '\0';
        parse_ok(&q, longq);
        cr_assert_eq(strlen(q.dns_query), 1005, "%s", escaped ? "escaped" : "raw");
        cr_assert_str_eq(q.dns_query, want);
    }
}

static struct event dns_event(const char *name, unsigned status, uint16_t rcode)
{
    struct event e = {.type = EVENT_DNS, .status = (uint8_t)status};
    e.u.dns.query = (char *)name; /* borrowed: never cleared */
    e.u.dns.rcode = rcode;
    return e;
}

Test(query_match, dns_query_and_rcode)
{
    static const struct {
        const char *qs, *name;
        unsigned status;
        uint16_t rcode;
        bool match;
    } cases[] = {
        {"query=example.com", "example.com", EVENT_STATUS_ANSWERED, 0, true},
        {"query=EXAMPLE.com", "example.com", EVENT_STATUS_ANSWERED, 0, true},
        {"query=example.com", "Example.Com", EVENT_STATUS_ANSWERED, 0, true},
        {"query=example.com", "www.example.com", EVENT_STATUS_ANSWERED, 0, false},
        {"query=example.com", "example.com.evil", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.example.com", "www.example.com", EVENT_STATUS_ANSWERED, 0, true},
        {"query=*.example.com", "a.b.example.com", EVENT_STATUS_TIMEOUT, 0, true},
        {"query=*.example.com", "example.com", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.example.com", "badexample.com", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.example.com", NULL, EVENT_STATUS_ANSWERED, 0, false},
        {"query=%C3%BCn%C3%AF.internal", "\\195\\188n\\195\\175.internal", EVENT_STATUS_ANSWERED, 0,
         true},
        {"query=a@b.test", "a\\@b.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=a%5C@b.test", "a\\@b.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=a.b.test", "a\\.b.test", EVENT_STATUS_ANSWERED, 0, false},
        /* A "\." is a dot inside a label: "a\.b.test" is no subdomain of b.test. */
        {"query=*.b.test", "a\\.b.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.b.test", "x.a\\.b.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.test", "a\\.b.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=*.test", "a\\\\.test", EVENT_STATUS_ANSWERED, 0, true}, /* label "a\\" */
        /* The root, as its events show it (dig . NS), and only it. */
        {"query=.", ".", EVENT_STATUS_ANSWERED, 0, true},
        {"query=.", "example.com", EVENT_STATUS_ANSWERED, 0, false},
        {"query=example.com", ".", EVENT_STATUS_ANSWERED, 0, false},
        {"rcode=NXDOMAIN", "x.test", EVENT_STATUS_ANSWERED, 3, true},
        {"rcode=3", "x.test", EVENT_STATUS_ANSWERED, 3, true},
        {"rcode=NOERROR", "x.test", EVENT_STATUS_ANSWERED, 3, false},
        {"rcode=NOERROR", "x.test", EVENT_STATUS_TIMEOUT, 0, false}, /* no answer, no rcode */
        {"rcode=SERVFAIL&query=*.test", "x.test", EVENT_STATUS_ANSWERED, 2, true},
        {"rcode=SERVFAIL&query=*.test", "x.example", EVENT_STATUS_ANSWERED, 2, false},
        /* A '*' inside a name is the byte, as events show it (dig does not escape it); at the
         * start it is written \* (or \042), which is that byte, not "subdomains of". */
        {"query=a*b.test", "a*b.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=a.*.test", "a.*.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=a.*.test", "a.x.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=%5C*.test", "*.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=%5C*.test", "x.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=%5C042.test", "*.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=%5C042.test", "x.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=%5C*x.test", "*x.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=*.%5C*.test", "a.*.test", EVENT_STATUS_ANSWERED, 0, true},
        {"query=*.%5C*.test", "a.b.test", EVENT_STATUS_ANSWERED, 0, false},
        {"query=*.test", "*.test", EVENT_STATUS_ANSWERED, 0, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct query q;
        parse_ok(&q, cases[i].qs);
        struct event e = dns_event(cases[i].name, cases[i].status, cases[i].rcode);
        cr_expect_eq(query_match(&q, &e), cases[i].match, "%s on %s", cases[i].qs,
                     cases[i].name ? cases[i].name : "(no name)");
    }
    /* Other types never match a dns filter. */
    struct query q;
    parse_ok(&q, "rcode=0");
    struct event conn = {.type = EVENT_CONNECTION, .status = EVENT_STATUS_ESTABLISHED};
    cr_assert_not(query_match(&q, &conn));
    parse_ok(&q, "query=*.com");
    cr_assert_not(query_match(&q, &conn));
}

Test(query_match, unknown_peer_never_matches)
{
    struct event e = match_connection();
    memset(&e.peer, 0, sizeof(e.peer));
    e.k8s.workload = NULL;
    struct query q;
    const char *filters[] = {"workload=web", "peer_pod=db-0", "peer_namespace=data",
                             "peer_workload=db", "peer_service=db-svc"};
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
        parse_ok(&q, filters[i]);
        cr_expect_not(query_match(&q, &e), "%s", filters[i]);
    }
    parse_ok(&q, "dest_port=5432&status=failed");
    cr_assert(query_match(&q, &e));
}

Test(query_match, missing_fields_never_match_a_filter)
{
    struct event e = match_event();
    e.node = NULL;
    e.k8s.pod_name = NULL;
    e.k8s.namespace = NULL;
    struct query q;
    parse_ok(&q, "");
    cr_assert(query_match(&q, &e));
    parse_ok(&q, "node=node-a");
    cr_assert_not(query_match(&q, &e));
    parse_ok(&q, "pod=web-0");
    cr_assert_not(query_match(&q, &e));
    parse_ok(&q, "namespace=prod");
    cr_assert_not(query_match(&q, &e));
}

Test(query_match, node_compares_text_not_pointers)
{
    struct event e = match_event();
    char node[] = "node-a"; /* not interned */
    e.node = node;
    struct query q;
    parse_ok(&q, "node=node-a");
    cr_assert(query_match(&q, &e));
}

Test(query_match, full_length_comm)
{
    /* A 16-byte comm with no NUL in the event's array. */
    struct event e = match_event();
    memcpy(e.command, "abcdefghijklmnop", EVENT_COMM_LEN);
    struct query q;
    parse_ok(&q, "command=abcdefghijklmnop");
    cr_assert(query_match(&q, &e));
    parse_ok(&q, "command=abcdefghijklmnopq");
    cr_assert_not(query_match(&q, &e));
    parse_ok(&q, "command=abcdefghijklmno");
    cr_assert_not(query_match(&q, &e));
}

/* A command of invalid UTF-8 is found by its bytes and by the text the API shows for it. */
Test(query_match, command_as_shown)
{
    struct event e = match_event();
    strcpy(e.command, "tr\xffue\x80");
    struct query q;
    parse_ok(&q, "command=tr%FFue%80");
    cr_assert(query_match(&q, &e), "its bytes");
    parse_ok(&q, "command=tr%EF%BF%BDue%EF%BF%BD");
    cr_assert(q.command_shown);
    cr_assert(query_match(&q, &e), "the text shown");
    parse_ok(&q, "command=tr%EF%BF%BDue");
    cr_assert_not(query_match(&q, &e), "a prefix of the text");
    parse_ok(&q, "command=tr%EF%BF%BDue%EF%BF%BD%EF%BF%BD");
    cr_assert_not(query_match(&q, &e), "one replacement too many");
    parse_ok(&q, "command=tr%EF%BF%BDux%EF%BF%BD");
    cr_assert_not(query_match(&q, &e), "another valid byte");
    /* A valid command never matches a replacement where it has a valid character. */
    strcpy(e.command, "true");
    parse_ok(&q, "command=tr%EF%BF%BDe");
    cr_assert_not(query_match(&q, &e));
    /* A full 16-byte comm of invalid bytes: 48 bytes of text. */
    memset(e.command, 0xfe, EVENT_COMM_LEN);
    char qs[512] = "command=";
    for (int i = 0; i < EVENT_COMM_LEN; i++)
        strcat(qs, "%EF%BF%BD");
    parse_ok(&q, qs);
    cr_assert(query_match(&q, &e));
}

/* The stream's resume point: an event's id, the cursor text. */
Test(query_parse, a_stream_takes_the_last_event_id)
{
    struct query q;
    char err[256];
    const char *qs = "type=exit&last_event_id=%20000000000000000a-00000000000000ff";
    cr_assert_eq(query_parse(&q, qs, strlen(qs), true, err, sizeof(err)), 0, "%s", err);
    cr_assert(q.has_last_event_id);
    cr_assert_eq(q.last_event_id.timestamp_ns, 10);
    cr_assert_eq(q.last_event_id.id, 255);
}

/* A replay's /api/events query: the stream's filters, its own time bounds and limit. */
Test(query_replay_string, keeps_the_filters_and_sets_the_bounds)
{
    struct buf b;
    const char *qs = "type=exit&since=5&last_event_id=x&s%69nce=6&node=a%20b&until=9";
    buf_init(&b);
    query_replay_string(qs, strlen(qs), 7, 99, 1000, &b);
    cr_assert_str_eq(b.data, "type=exit&node=a%20b&since=7&limit=1000&until=99");
    buf_reset(&b);
    query_replay_string("", 0, 7, UINT64_MAX, 10, &b);
    cr_assert_str_eq(b.data, "since=7&limit=10");
    buf_free(&b);

    struct query q;
    char err[256];
    qs = "type=exit&node=a%20b&since=7&limit=1000&until=99";
    cr_assert_eq(query_parse(&q, qs, strlen(qs), false, err, sizeof(err)), 0, "%s", err);
}

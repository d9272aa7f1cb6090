/*
 * Event queries: parsing the URL query string of /api/events and
 * /api/events/stream into a struct query, matching events against it, the
 * newest-first sort order and the opaque page cursor.
 *
 * Every rejected value produces a message that names the parameter and says
 * what is allowed; the HTTP layer returns it verbatim as a 400 error.
 */
#include "query.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "dns.h"
#include "errmsg.h"

_Static_assert(QUERY_DNS_NAME_MAX >= DNS_NAME_TEXT_MAX + 3, "a query filter's text holds any name");

enum query_param {
    QP_TYPE,
    QP_NODE,
    QP_POD,
    QP_NAMESPACE,
    QP_PID,
    QP_COMMAND,
    QP_SINCE,
    QP_UNTIL,
    QP_LIMIT,
    QP_CURSOR,
    QP_WORKLOAD,
    QP_PEER_POD,
    QP_PEER_NAMESPACE,
    QP_PEER_WORKLOAD,
    QP_PEER_SERVICE,
    QP_DEST_PORT,
    QP_STATUS,
    QP_QUERY,
    QP_RCODE,
    QP_LAST_EVENT_ID,
    QP_COUNT,
};

static const char *const query_param_names[QP_COUNT] = {
    [QP_TYPE] = "type",
    [QP_NODE] = "node",
    [QP_POD] = "pod",
    [QP_NAMESPACE] = "namespace",
    [QP_PID] = "pid",
    [QP_COMMAND] = "command",
    [QP_SINCE] = "since",
    [QP_UNTIL] = "until",
    [QP_LIMIT] = "limit",
    [QP_CURSOR] = "cursor",
    [QP_WORKLOAD] = "workload",
    [QP_PEER_POD] = "peer_pod",
    [QP_PEER_NAMESPACE] = "peer_namespace",
    [QP_PEER_WORKLOAD] = "peer_workload",
    [QP_PEER_SERVICE] = "peer_service",
    [QP_DEST_PORT] = "dest_port",
    [QP_STATUS] = "status",
    [QP_QUERY] = "query",
    [QP_RCODE] = "rcode",
    [QP_LAST_EVENT_ID] = "last_event_id",
};

/* Where each exact-match string parameter lands in struct query. */
static char *query_str_field(struct query *q, enum query_param p)
{
    switch (p) {
    case QP_NODE:
        return q->node;
    case QP_POD:
        return q->pod;
    case QP_NAMESPACE:
        return q->namespace;
    case QP_COMMAND:
        return q->command;
    case QP_WORKLOAD:
        return q->workload;
    case QP_PEER_POD:
        return q->peer_pod;
    case QP_PEER_NAMESPACE:
        return q->peer_namespace;
    case QP_PEER_WORKLOAD:
        return q->peer_workload;
    case QP_PEER_SERVICE:
        return q->peer_service;
    default:
        return NULL;
    }
}

void query_init(struct query *q)
{
    memset(q, 0, sizeof(*q));
    q->until_ns = UINT64_MAX;
    q->limit = QUERY_LIMIT_DEFAULT;
}

const char *query_quote(const char *s, size_t len, char out[QUERY_ERR_VALUE_MAX + 4])
{
    size_t n = len > QUERY_ERR_VALUE_MAX ? QUERY_ERR_VALUE_MAX : len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n < len) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static int query_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int form_decode(const char *s, size_t len, char *out, size_t outlen, bool nul)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= len)
                return -EINVAL;
            int hi = query_hexval(s[i + 1]);
            int lo = query_hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -EINVAL;
            c = (char)(hi << 4 | lo);
            if (c == '\0' && !nul)
                return -EILSEQ;
            i += 2;
        }
        if (n + 1 >= outlen)
            return -E2BIG;
        out[n++] = c;
    }
    out[n] = '\0';
    return (int)n;
}

int query_form_decode(const char *s, size_t len, char *out, size_t outlen)
{
    return form_decode(s, len, out, outlen, false);
}

int query_form_decode_bytes(const char *s, size_t len, char *out, size_t outlen)
{
    return form_decode(s, len, out, outlen, true);
}

int query_decode_error(const char *name, int n, const char *raw, size_t rawlen, size_t max,
                       char *err, size_t errlen)
{
    char quoted[QUERY_ERR_VALUE_MAX + 4];

    if (n == -EINVAL)
        return errmsg_set(err, errlen, "invalid '%s': bad percent-encoding in \"%s\"", name,
                          query_quote(raw, rawlen, quoted));
    if (n == -EILSEQ)
        return errmsg_set(err, errlen, "invalid '%s': a NUL byte (%%00) in \"%s\"", name,
                          query_quote(raw, rawlen, quoted));
    if (n == -E2BIG)
        return errmsg_set(err, errlen, "invalid '%s': longer than %zu bytes", name, max - 1);
    if (n <= 0)
        return errmsg_set(err, errlen,
                          "invalid '%s': empty value (leave the parameter out instead)", name);
    return 0;
}

void query_trim(const char **v, size_t *len)
{
    while (*len && isspace((unsigned char)**v))
        (*v)++, (*len)--;
    while (*len && isspace((unsigned char)(*v)[*len - 1]))
        (*len)--;
}

static bool query_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Reads exactly n digits at s. */
static bool query_digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t query_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static unsigned query_days_in_month(unsigned y, unsigned m)
{
    static const unsigned days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        return 29;
    return days[m - 1];
}

/*
 * RFC 3339: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm). Also accepted:
 * 't'/' ' as the separator, 'z', and a space where the offset's '+' was
 * (an unencoded '+' in a URL decodes to a space).
 */
static int query_parse_rfc3339(const char *s, size_t len, uint64_t *out_ns)
{
    unsigned year, mon, day, hour, min, sec;
    if (len < 20 || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':')
        return -EINVAL;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
        return -EINVAL;
    if (!query_digits(s, 4, &year) || !query_digits(s + 5, 2, &mon) ||
        !query_digits(s + 8, 2, &day) || !query_digits(s + 11, 2, &hour) ||
        !query_digits(s + 14, 2, &min) || !query_digits(s + 17, 2, &sec))
        return -EINVAL;
    if (mon < 1 || mon > 12 || day < 1 || day > query_days_in_month(year, mon) || hour > 23 ||
        min > 59 || sec > 60)
        return -EINVAL;

    size_t i = 19;
    uint64_t frac = 0;
    if (s[i] == '.') {
        size_t digits = 0;
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
            if (digits < 9) /* RFC 3339 allows more digits; below a ns they are dropped */
                frac = frac * 10 + (uint64_t)(s[i] - '0');
        }
        if (digits == 0)
            return -EINVAL;
        for (; digits < 9; digits++)
            frac *= 10;
    }
    if (i >= len)
        return -EINVAL;

    int64_t offset_s = 0;
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-' || s[i] == ' ') {
        unsigned oh, om;
        if (len - i != 6 || s[i + 3] != ':' || !query_digits(s + i + 1, 2, &oh) ||
            !query_digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
        offset_s = (int64_t)(oh * 3600 + om * 60);
        if (s[i] == '-')
            offset_s = -offset_s;
        i += 6;
    } else {
        return -EINVAL;
    }
    if (i != len)
        return -EINVAL;

    int64_t secs = query_days_from_civil(year, mon, day) * 86400 + hour * 3600 + min * 60 + sec;
    secs -= offset_s;
    if (secs < 0 || (uint64_t)secs > (UINT64_MAX - frac) / 1000000000ull)
        return -ERANGE;
    *out_ns = (uint64_t)secs * 1000000000ull + frac;
    return 0;
}

int query_parse_time(const char *s, size_t len, uint64_t *out_ns)
{
    if (len > 0 && s[0] >= '0' && s[0] <= '9') {
        size_t digits = 0;
        while (digits < len && s[digits] >= '0' && s[digits] <= '9')
            digits++;
        if (digits == len) {
            uint64_t v;
            if (!query_parse_u64(s, len, UINT64_MAX, &v))
                return -ERANGE;
            if (v >= QUERY_TIME_NS_IMPLAUSIBLE_FROM && v < QUERY_TIME_NS_IMPLAUSIBLE_TO)
                return -EDOM;
            *out_ns = v;
            return 0;
        }
    }
    return query_parse_rfc3339(s, len, out_ns);
}

const char *query_time_reason(int rc, const char *s, size_t len, char *buf, size_t buflen)
{
    uint64_t v = 0, scale;
    const char *unit;

    if (rc == -ERANGE)
        return QUERY_TIME_RANGE;
    if (rc != -EDOM || !query_parse_u64(s, len, UINT64_MAX, &v))
        return QUERY_TIME_FORMAT;
    if (v < 100000000000ull)
        unit = "seconds", scale = 1000000000ull;
    else if (v < 100000000000000ull)
        unit = "milliseconds", scale = 1000000ull;
    else
        unit = "microseconds", scale = 1000ull;
    if (v > UINT64_MAX / scale)
        snprintf(buf, buflen,
                 "a number is nanoseconds since the Unix epoch, and this one would be in 1970; "
                 "as %s it is past 2554, out of range",
                 unit);
    else
        snprintf(buf, buflen,
                 "a number is nanoseconds since the Unix epoch, and this one would be in 1970: "
                 "%s? that is %" PRIu64 " ns; or give RFC 3339, e.g. 2024-05-01T12:00:00Z",
                 unit, v * scale);
    return buf;
}

/* On error, bad and badlen point at the offending item. */
static int query_parse_types(const char *v, size_t len, uint32_t *out, const char **bad,
                             size_t *badlen)
{
    uint32_t mask = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && v[i] != ',')
            continue;
        size_t a = start, b = i;
        while (a < b && v[a] == ' ')
            a++;
        while (b > a && v[b - 1] == ' ')
            b--;
        char name[32];
        *bad = v + a;
        *badlen = b - a;
        if (b - a == 0 || b - a >= sizeof(name))
            return -EINVAL;
        for (size_t k = a; k < b; k++)
            name[k - a] = (char)tolower((unsigned char)v[k]);
        enum event_type t = event_type_parse(name, b - a);
        if (t == EVENT_TYPE_NONE)
            return -EINVAL;
        mask |= EVENT_TYPE_BIT(t);
        start = i + 1;
    }
    *out = mask;
    return 0;
}

/*
 * The query filter: a name (one trailing dot dropped) or "*." and a name; no
 * empty label. A '*' inside the name is that byte, as events show it (dig
 * does not escape it); as the name's first byte it is escaped (`\*`, `\042`),
 * or "*test" and "*.*.com" would read as patterns. Written as dig shows a
 * name or plainly: each label byte, escaped (`\@`, `\.`, `\DDD`) or not (a
 * space, a control byte, any byte the URL encodes), is put in the text form
 * events show it in (pkg/dns.c: lowercase, dig's escapes), so `a@b.example`, `a\@b.example`
 * and `a\064b.example` all match the name as it went on the wire, and so
 * does a name typed in UTF-8. A `\` before a digit starts a `\DDD` (three
 * digits, at most 255). A label over 63 bytes or a name over 255 on the wire
 * matches nothing: -EINVAL, as for anything else.
 */
static int query_set_dns_name(struct query *q, const char *v, size_t len)
{
    size_t o = 0, label = 0, wire = 1; /* bytes in this label, on the wire in all */

    q->dns_query_suffix = false;
    if (len == 1 && v[0] == '.') { /* the root, as its events show it */
        memcpy(q->dns_query, ".", 2);
        return 0;
    }
    if (len >= 2 && v[0] == '*' && v[1] == '.') {
        memcpy(q->dns_query, "*.", 2);
        q->dns_query_suffix = true;
        o = 2;
    }
    const size_t start = o;
    for (size_t i = o; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '.') { /* between labels */
            if (label == 0)
                return -EINVAL;
            if (i == len - 1)
                break; /* the trailing dot */
            if (o + 1 >= sizeof(q->dns_query))
                return -EINVAL;
            q->dns_query[o++] = '.';
            label = 0;
            continue;
        }
        if (c == '*' && i == start)
            return -EINVAL;
        if (c == '\\') {
            if (i + 1 >= len)
                return -EINVAL;
            if (isdigit((unsigned char)v[i + 1])) {
                if (i + 3 >= len || !isdigit((unsigned char)v[i + 2]) ||
                    !isdigit((unsigned char)v[i + 3]))
                    return -EINVAL; /* \D or \DD: a \DDD cut short */
                unsigned d = (unsigned)(v[i + 1] - '0') * 100 + (unsigned)(v[i + 2] - '0') * 10 +
                             (unsigned)(v[i + 3] - '0');
                if (d > 255)
                    return -EINVAL;
                c = (unsigned char)d;
                i += 3;
            } else {
                c = (unsigned char)v[++i];
            }
        }
        char text[4];
        size_t n = dns_put_label_byte(text, 0, c);
        wire += label == 0 ? 2 : 1; /* a new label's length byte */
        if (++label > DNS_LABEL_MAX || wire > DNS_NAME_WIRE_MAX)
            return -EINVAL; /* no name on the wire is that long */
        if (o + n >= sizeof(q->dns_query))
            return -EINVAL;
        memcpy(q->dns_query + o, text, n);
        o += n;
    }
    if (label == 0)
        return -EINVAL;
    q->dns_query[o] = '\0';
    return 0;
}

/* Parses one decoded value into q; on error writes the message. */
static int query_set(struct query *q, enum query_param p, const char *v, size_t len, char *err,
                     size_t errlen)
{
    const char *name = query_param_names[p];
    char quoted[QUERY_ERR_VALUE_MAX + 4], reason[192];
    uint64_t n;
    int range = 0; /* a time's parse: its error (query_time_reason()) */
    const char *whole = v;
    size_t whole_len = len;

    /* Numbers, times, cursors and keywords ignore surrounding spaces, as type lists do;
     * names (node, pod, command, the DNS name of query...) are matched exactly as given: a
     * name may begin or end with a space. */
    if (p == QP_PID || p == QP_SINCE || p == QP_UNTIL || p == QP_LIMIT || p == QP_CURSOR ||
        p == QP_LAST_EVENT_ID || p == QP_DEST_PORT || p == QP_STATUS || p == QP_RCODE)
        query_trim(&v, &len);

    switch (p) {
    case QP_TYPE: {
        const char *item;
        size_t itemlen;
        if (query_parse_types(v, len, &q->types, &item, &itemlen) == 0)
            return 0;
        errmsg_set(err, errlen,
                   "invalid 'type': \"%s\" (allowed: connection, accept, packet_drop, exec, exit, "
                   "close, dns; comma-separated)",
                   query_quote(item, itemlen, quoted));
        return -EINVAL;
    }
    case QP_DEST_PORT:
        if (!query_parse_u64(v, len, UINT16_MAX, &n) || n == 0)
            goto bad;
        q->has_dest_port = true;
        q->dest_port = (uint16_t)n;
        return 0;
    case QP_QUERY:
        if (query_set_dns_name(q, v, len) < 0)
            goto bad;
        return 0;
    case QP_RCODE:
        if (dns_rcode_parse(v, len, &q->rcode) < 0)
            goto bad;
        q->has_rcode = true;
        return 0;
    case QP_STATUS:
        for (unsigned st = EVENT_STATUS_ESTABLISHED; st <= EVENT_STATUS_UNKNOWN; st++) {
            if (strlen(event_status_name(st)) == len &&
                strncasecmp(event_status_name(st), v, len) == 0) {
                q->status = (uint8_t)st;
                return 0;
            }
        }
        goto bad;
    case QP_PID:
        if (!query_parse_u64(v, len, UINT32_MAX, &n))
            goto bad;
        q->has_pid = true;
        q->pid = (uint32_t)n;
        return 0;
    case QP_SINCE:
    case QP_UNTIL:
        if ((range = query_parse_time(v, len, p == QP_SINCE ? &q->since_ns : &q->until_ns)) < 0)
            goto bad;
        return 0;
    case QP_LIMIT:
        if (!query_parse_u64(v, len, UINT64_MAX, &n) || n < 1 || n > QUERY_LIMIT_MAX)
            goto bad;
        q->limit = (uint32_t)n;
        return 0;
    case QP_CURSOR:
        if (query_cursor_parse(&q->cursor, v, len) < 0)
            goto bad;
        q->has_cursor = true;
        return 0;
    case QP_LAST_EVENT_ID:
        if (query_cursor_parse(&q->last_event_id, v, len) < 0)
            goto bad;
        q->has_last_event_id = true;
        return 0;
    default:
        memcpy(query_str_field(q, p), v, len + 1);
        return 0;
    }
bad:
    query_quote(whole, whole_len, quoted);
    switch (p) {
    case QP_PID:
        errmsg_set(err, errlen, "invalid 'pid': \"%s\" (must be an integer 0-4294967295)", quoted);
        break;
    case QP_SINCE:
    case QP_UNTIL:
        errmsg_set(err, errlen, "invalid '%s': \"%s\" (%s)", name, quoted,
                   query_time_reason(range, v, len, reason, sizeof(reason)));
        break;
    case QP_LIMIT:
        errmsg_set(err, errlen, "invalid 'limit': \"%s\" (must be an integer 1-%u)", quoted,
                   QUERY_LIMIT_MAX);
        break;
    case QP_CURSOR:
        errmsg_set(err, errlen,
                   "invalid 'cursor': \"%s\" (use the next_cursor of a previous response)", quoted);
        break;
    case QP_LAST_EVENT_ID:
        errmsg_set(err, errlen, "invalid 'last_event_id': \"%s\" (%s)", quoted,
                   QUERY_EVENT_ID_FORMAT);
        break;
    case QP_DEST_PORT:
        errmsg_set(err, errlen, "invalid 'dest_port': \"%s\" (must be an integer 1-65535)", quoted);
        break;
    case QP_STATUS:
        errmsg_set(err, errlen,
                   "invalid 'status': \"%s\" (allowed: established, failed, attempted, answered, "
                   "timeout, unknown)",
                   quoted);
        break;
    case QP_QUERY:
        errmsg_set(err, errlen,
                   "invalid 'query': \"%s\" (a DNS name such as example.com, or *.example.com "
                   "for its subdomains%s)",
                   quoted, memchr(v, '*', len) ? "; a literal * first in a name is \\*" : "");
        break;
    case QP_RCODE:
        errmsg_set(err, errlen,
                   "invalid 'rcode': \"%s\" (a DNS rcode name such as NOERROR, NXDOMAIN, "
                   "SERVFAIL, REFUSED, or its number 0-4095)",
                   quoted);
        break;
    default:
        errmsg_set(err, errlen, "invalid '%s': \"%s\"", name, quoted);
        break;
    }
    return -EINVAL;
}

/* The next parameter ("name[=value]", raw) of qs from *pos on, skipping empty ones ("a=1&&b=2",
 * a trailing '&'); false at the end. */
static bool query_next_param(const char *qs, size_t len, size_t *pos, const char **seg,
                             size_t *seglen)
{
    while (*pos < len) {
        const char *amp = memchr(qs + *pos, '&', len - *pos);
        *seg = qs + *pos;
        *seglen = amp ? (size_t)(amp - *seg) : len - *pos;
        *pos += *seglen + 1;
        if (*seglen > 0)
            return true;
    }
    return false;
}

int query_parse(struct query *q, const char *qs, size_t len, bool stream, char *err, size_t errlen)
{
    char name[QUERY_STR_MAX], value[QUERY_DNS_INPUT_MAX], quoted[QUERY_ERR_VALUE_MAX + 4];
    uint32_t seen = 0;

    query_init(q);
    if (err && errlen)
        err[0] = '\0';

    size_t pos = 0, seglen;
    const char *seg;
    while (query_next_param(qs, len, &pos, &seg, &seglen)) {
        const char *eq = memchr(seg, '=', seglen);
        size_t namelen = eq ? (size_t)(eq - seg) : seglen;
        int n = query_form_decode(seg, namelen, name, sizeof(name));
        if (n == -EINVAL) {
            errmsg_set(err, errlen, "invalid percent-encoding in query parameter name \"%s\"",
                       query_quote(seg, namelen, quoted));
            return -EINVAL;
        }
        enum query_param p = QP_COUNT;
        if (n >= 0)
            for (p = 0; p < QP_COUNT; p++)
                if (strcmp(name, query_param_names[p]) == 0)
                    break;
        if (p == QP_COUNT) {
            if (n >= 0)
                query_quote(name, (size_t)n, quoted);
            else
                query_quote(seg, namelen, quoted);
            errmsg_set(err, errlen,
                       "unknown query parameter '%s' (allowed: type, node, pod, namespace, "
                       "workload, pid, command, peer_pod, peer_namespace, peer_workload, "
                       "peer_service, dest_port, status, query, rcode, since, until%s)",
                       quoted, stream ? ", last_event_id" : ", limit, cursor");
            return -EINVAL;
        }
        if (seen & (1u << p)) {
            errmsg_set(err, errlen, "duplicate query parameter '%s' (give it once)",
                       query_param_names[p]);
            return -EINVAL;
        }
        seen |= 1u << p;
        if (stream && (p == QP_LIMIT || p == QP_CURSOR)) {
            errmsg_set(err, errlen, "'%s' is not supported on the stream", query_param_names[p]);
            return -EINVAL;
        }
        if (!stream && p == QP_LAST_EVENT_ID) {
            errmsg_set(err, errlen,
                       "'last_event_id' is for /api/events/stream only (page with 'cursor')");
            return -EINVAL;
        }

        const char *raw = eq ? eq + 1 : seg + seglen;
        size_t rawlen = (size_t)(seg + seglen - raw);
        /* A DNS name may hold any byte, NUL included; other values are text. */
        size_t max = p == QP_QUERY ? sizeof(value) : QUERY_STR_MAX;
        n = p == QP_QUERY ? query_form_decode_bytes(raw, rawlen, value, max)
                          : query_form_decode(raw, rawlen, value, max);
        if (query_decode_error(query_param_names[p], n, raw, rawlen, max, err, errlen) < 0)
            return -EINVAL;
        int rc = query_set(q, p, value, (size_t)n, err, errlen);
        if (rc < 0)
            return rc;
    }

    q->command_shown = buf_utf8_has_replacement(q->command);
    if (q->since_ns > q->until_ns) {
        errmsg_set(err, errlen,
                   "invalid 'since': later than 'until' (%" PRIu64 " > %" PRIu64 " ns)",
                   q->since_ns, q->until_ns);
        return -EINVAL;
    }
    return 0;
}

/* NULL or different never matches a non-empty filter. */
static bool query_str_match(const char *filter, const char *s)
{
    return filter[0] == '\0' || (s && strcmp(filter, s) == 0);
}

bool query_match_names(const struct query *q, const char *node, const struct event_k8s *k8s,
                       const struct event_peer *peer)
{
    return query_str_match(q->node, node) && query_str_match(q->pod, k8s->pod_name) &&
           query_str_match(q->namespace, k8s->namespace) &&
           query_str_match(q->workload, k8s->workload) && query_str_match(q->peer_pod, peer->pod) &&
           query_str_match(q->peer_namespace, peer->namespace) &&
           query_str_match(q->peer_workload, peer->workload) &&
           query_str_match(q->peer_service, peer->service);
}

bool query_has_name_filter(const struct query *q)
{
    return q->node[0] || q->pod[0] || q->namespace[0] || q->workload[0] || q->peer_pod[0] ||
           q->peer_namespace[0] || q->peer_workload[0] || q->peer_service[0];
}

bool query_has_dns_filter(const struct query *q)
{
    return q->dns_query[0] || q->has_rcode;
}

/*
 * name equals pattern ignoring case, or ends in ".suffix" for a "*.suffix"
 * pattern (suffix), that dot between two labels: not a "\." inside one (an odd run of
 * backslashes before it), as in "a\.b.test", whose labels are "a.b" and "test".
 */
static bool query_dns_name_match(const char *pattern, bool suffix, const char *name)
{
    if (!suffix)
        return strcasecmp(pattern, name) == 0;
    size_t plen = strlen(pattern) - 1, nlen = strlen(name); /* plen counts the dot */
    if (nlen <= plen || strcasecmp(name + nlen - plen, pattern + 1) != 0)
        return false;
    size_t dot = nlen - plen, backslashes = 0;
    while (backslashes < dot && name[dot - 1 - backslashes] == '\\')
        backslashes++;
    return backslashes % 2 == 0;
}

bool query_match_dns(const struct query *q, const struct event *e)
{
    if (!query_has_dns_filter(q))
        return true;
    if (e->type != EVENT_DNS)
        return false;
    if (q->dns_query[0] &&
        (!e->u.dns.query ||
         !query_dns_name_match(q->dns_query, q->dns_query_suffix, e->u.dns.query)))
        return false;
    /* A query that timed out has no rcode. */
    return !q->has_rcode || (e->status == EVENT_STATUS_ANSWERED && e->u.dns.rcode == q->rcode);
}

bool query_match(const struct query *q, const struct event *e)
{
    if (!query_match_dns(q, e))
        return false;
    if (q->types && (e->type >= 32 || !(q->types & EVENT_TYPE_BIT(e->type))))
        return false;
    if (e->timestamp_ns < q->since_ns || e->timestamp_ns > q->until_ns)
        return false;
    if (q->has_pid && (e->pid != q->pid || !event_has_process(e)))
        return false;
    if (q->has_dest_port && e->dport != q->dest_port)
        return false;
    if (q->status && e->status != q->status)
        return false;
    if (!query_command_match(q, e->command))
        return false;
    return query_match_names(q, e->node, &e->k8s, &e->peer);
}

bool query_command_match(const struct query *q, const char *comm)
{
    if (!q->command[0])
        return true;
    /* comm may fill its EVENT_COMM_LEN bytes without a NUL (a full 16-byte comm). */
    if (strnlen(q->command, EVENT_COMM_LEN + 1) <= EVENT_COMM_LEN &&
        strncmp(q->command, comm, EVENT_COMM_LEN) == 0)
        return true;
    return q->command_shown &&
           buf_utf8_shows_as(comm, strnlen(comm, EVENT_COMM_LEN), q->command, strlen(q->command));
}

int query_cmp_newest_first(uint64_t ts_a, uint64_t id_a, uint64_t ts_b, uint64_t id_b)
{
    if (ts_a != ts_b)
        return ts_a > ts_b ? -1 : 1;
    if (id_a != id_b)
        return id_a > id_b ? -1 : 1;
    return 0;
}

bool query_after_cursor(const struct query_cursor *c, const struct event *e)
{
    return query_cmp_newest_first(e->timestamp_ns, e->id, c->timestamp_ns, c->id) > 0;
}

void query_cursor_format(const struct query_cursor *c, char out[QUERY_CURSOR_LEN])
{
    snprintf(out, QUERY_CURSOR_LEN, "%016" PRIx64 "-%016" PRIx64, c->timestamp_ns, c->id);
}

/* Whether the parameter seg (name[=value], raw) is one of the replay's own. */
static bool query_replay_drops(const char *seg, size_t seglen)
{
    char name[QUERY_STR_MAX];
    const char *eq = memchr(seg, '=', seglen);
    int n = query_form_decode(seg, eq ? (size_t)(eq - seg) : seglen, name, sizeof(name));

    return n >= 0 && (strcmp(name, query_param_names[QP_SINCE]) == 0 ||
                      strcmp(name, query_param_names[QP_UNTIL]) == 0 ||
                      strcmp(name, query_param_names[QP_LAST_EVENT_ID]) == 0);
}

void query_replay_string(const char *qs, size_t len, uint64_t since_ns, uint64_t until_ns,
                         uint32_t limit, struct buf *out)
{
    size_t pos = 0, seglen;
    const char *seg;

    while (query_next_param(qs, len, &pos, &seg, &seglen)) {
        if (query_replay_drops(seg, seglen))
            continue;
        buf_append(out, seg, seglen);
        buf_putc(out, '&');
    }
    buf_printf(out, "since=%" PRIu64 "&limit=%" PRIu32, since_ns, limit);
    if (until_ns != UINT64_MAX)
        buf_printf(out, "&until=%" PRIu64, until_ns);
}

static bool query_parse_hex64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int d = query_hexval(s[i]);
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

int query_cursor_parse(struct query_cursor *c, const char *s, size_t len)
{
    struct query_cursor tmp;
    if (len != QUERY_CURSOR_LEN - 1 || s[16] != '-' || !query_parse_hex64(s, &tmp.timestamp_ns) ||
        !query_parse_hex64(s + 17, &tmp.id))
        return -EINVAL;
    *c = tmp;
    return 0;
}

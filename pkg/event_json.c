/*
 * JSON codec for events in the API's format (README.md, "Events").
 *
 * The writer is on the hot path of the HTTP API, the SSE stream and the JSON
 * bus encoding, so it formats integers and times by hand and caches the date
 * part of the last timestamp per thread. The parser (jansson) is used by the
 * JSON bus decoder and the tail command; it is strict about types so a bad
 * producer is noticed, and it round-trips everything the writer produces.
 */
#include "event_json.h"

#include "dns.h"
#include "errmsg.h"
#include "intern.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The writer reserves a worst-case size for the whole event up front (see
 * event_json_bound()), so these primitives copy without checking capacity.
 */
static inline void raw(struct buf *b, const void *s, size_t n)
{
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

#define PUT_LIT(b, s) raw((b), (s), sizeof(s) - 1)

/* Writes v in decimal ending just before end; returns the first digit. */
static char *fmt_u64(char *end, uint64_t v)
{
    char *p = end;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

static void put_u64(struct buf *b, uint64_t v)
{
    char tmp[24];
    char *p = fmt_u64(tmp + sizeof(tmp), v);
    raw(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

static void put_i64(struct buf *b, int64_t v)
{
    if (v < 0) {
        raw(b, "-", 1);
        put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(b, (uint64_t)v);
    }
}

/* A JSON string; names and paths are nearly always plain ASCII, copied in one go. */
static void put_str(struct buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') {
            buf_json_string(b, s, len); /* fits: the reservation allows 6 bytes per byte */
            return;
        }
    }
    char *p = b->data + b->len;
    p[0] = '"';
    memcpy(p + 1, s, len);
    p[len + 1] = '"';
    b->len += len + 2;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The raw bytes as a JSON string of standard, padded base64 (RFC 4648 section 4). */
static void put_b64(struct buf *b, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}

/* Bytes put_b64() writes for len bytes. */
static size_t b64_bound(size_t len)
{
    return (len + 2) / 3 * 4 + 2;
}

/*
 * "key":"text"[,"key_b64":"raw"]: the text under the UTF-8 rule, and the
 * exact bytes beside it when the rule had to replace any (README.md,
 * "Strings and raw bytes"). For values a process controls.
 */
static void put_raw_str(struct buf *b, const char *key, size_t keylen, const char *b64key,
                        size_t b64keylen, const char *s, size_t len)
{
    raw(b, key, keylen);
    put_str(b, s, len);
    if (!buf_utf8_valid(s, len)) {
        raw(b, b64key, b64keylen);
        put_b64(b, s, len);
    }
}

#define PUT_RAW_STR(b, key, s, len)                                                                \
    put_raw_str((b), ",\"" key "\":", sizeof(",\"" key "\":") - 1,                                 \
                ",\"" key "_b64\":", sizeof(",\"" key "_b64\":") - 1, (s), (len))

/* Dotted quad without the printf machinery inet_ntop uses. */
static void put_ipv4(struct buf *b, const uint8_t a[4])
{
    char *p = b->data + b->len;
    *p++ = '"';
    p = event_put_ipv4(p, a);
    *p++ = '"';
    b->len = (size_t)(p - b->data);
}

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* Howard Hinnant's civil_from_days, for days >= 0 since 1970-01-01. */
static void civil_from_days(uint64_t days, unsigned *y, unsigned *m, unsigned *d)
{
    uint64_t z = days + 719468;
    uint64_t era = z / 146097;
    uint64_t doe = z - era * 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = (unsigned)(yoe + era * 400 + (*m <= 2));
}

/* Events arrive in time order, so the date rarely changes between calls. */
static __thread uint64_t time_cache_day = UINT64_MAX;
static __thread char time_cache_date[10]; /* "YYYY-MM-DD" */

/* Writes exactly 30 bytes plus a NUL ("YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ"). */
void event_format_time(uint64_t ns, char out[40])
{
    uint64_t secs = ns / 1000000000u;
    unsigned frac = (unsigned)(ns % 1000000000u);
    uint64_t day = secs / 86400;
    unsigned sod = (unsigned)(secs % 86400);

    if (day != time_cache_day) {
        unsigned y, m, d;
        civil_from_days(day, &y, &m, &d);
        put2(time_cache_date, y / 100);
        put2(time_cache_date + 2, y % 100);
        time_cache_date[4] = '-';
        put2(time_cache_date + 5, m);
        time_cache_date[7] = '-';
        put2(time_cache_date + 8, d);
        time_cache_day = day;
    }
    memcpy(out, time_cache_date, 10);
    out[10] = 'T';
    put2(out + 11, sod / 3600);
    out[13] = ':';
    put2(out + 14, sod / 60 % 60);
    out[16] = ':';
    put2(out + 17, sod % 60);
    out[19] = '.';
    for (int i = 28; i >= 20; i--) {
        out[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    out[29] = 'Z';
    out[30] = '\0';
}

static void put_key_str(struct buf *b, const char *key, size_t keylen, const char *s)
{
    raw(b, key, keylen);
    put_str(b, s, strlen(s));
}

/* Key literals carry their leading comma and trailing colon: ",\"pid\":". */
#define PUT_KEY_STR(b, key, s) put_key_str((b), key, sizeof(key) - 1, (s))

static void put_addr(struct buf *b, unsigned family, const uint8_t addr[16])
{
    char text[INET6_ADDRSTRLEN];
    if (family == EVENT_FAMILY_IPV4)
        put_ipv4(b, addr);
    else if (event_addr_str(family, addr, text, sizeof(text)))
        put_str(b, text, strlen(text));
    else
        PUT_LIT(b, "null");
}

/* "source_ip"..."dest_port"; ports only for protocols that have them. */
static bool addr_is_zero(const uint8_t a[16])
{
    static const uint8_t zero[16];
    return memcmp(a, zero, sizeof(zero)) == 0;
}

static void put_addrs(struct buf *b, const struct event *e, bool ports)
{
    if (e->family != EVENT_FAMILY_IPV4 && e->family != EVENT_FAMILY_IPV6)
        return;
    /*
     * A connect that failed before its SYN (no route) has no source address unless its
     * socket was bound to one, and one that found no free local port (EADDRNOTAVAIL) has
     * no source port: what it did not have is left out, not printed as 0.0.0.0 or 0.
     */
    bool conn = e->type == EVENT_CONNECTION;
    if (!conn || !addr_is_zero(e->saddr)) {
        PUT_LIT(b, ",\"source_ip\":");
        put_addr(b, e->family, e->saddr);
    }
    if (ports && (!conn || e->sport != 0)) {
        PUT_LIT(b, ",\"source_port\":");
        put_u64(b, e->sport);
    }
    PUT_LIT(b, ",\"dest_ip\":");
    put_addr(b, e->family, e->daddr);
    if (ports) {
        PUT_LIT(b, ",\"dest_port\":");
        put_u64(b, e->dport);
    }
}

static void put_peer(struct buf *b, const struct event_peer *p)
{
    if (p->pod)
        PUT_KEY_STR(b, ",\"peer_pod\":", p->pod);
    if (p->namespace)
        PUT_KEY_STR(b, ",\"peer_namespace\":", p->namespace);
    if (p->workload)
        PUT_KEY_STR(b, ",\"peer_workload\":", p->workload);
    if (p->workload_kind)
        PUT_KEY_STR(b, ",\"peer_workload_kind\":", p->workload_kind);
    if (p->node)
        PUT_KEY_STR(b, ",\"peer_node\":", p->node);
    if (p->service)
        PUT_KEY_STR(b, ",\"peer_service\":", p->service);
    if (p->dns)
        PUT_KEY_STR(b, ",\"peer_dns\":", p->dns);
}

/* The protocol by name, or as its number for one without a name (a packet_drop of any IP
 * protocol: IP_NOPROTO drops are of protocols nothing here handles); 0 is none. */
static void put_protocol_family(struct buf *b, const struct event *e, bool family)
{
    const char *proto = event_protocol_name(e->protocol);
    const char *fam = event_family_name(e->family);
    char num[4];
    if (!proto && e->protocol) {
        snprintf(num, sizeof(num), "%u", (unsigned)e->protocol);
        proto = num;
    }
    if (proto)
        PUT_KEY_STR(b, ",\"protocol\":", proto);
    if (family && fam)
        PUT_KEY_STR(b, ",\"family\":", fam);
}

/* Length of the argument at p (up to its NUL or end: the last may lack its NUL). */
static size_t arg_len(const char *p, const char *end)
{
    const char *nul = memchr(p, '\0', (size_t)(end - p));
    return nul ? (size_t)(nul - p) : (size_t)(end - p);
}

/*
 * A JSON array of the NUL-separated strings of list (key carries its comma, colon and
 * bracket: ",\"args\":["); returns whether every string was valid UTF-8.
 */
static bool put_str_list(struct buf *b, const char *key, size_t keylen, const char *list,
                         uint32_t len)
{
    const char *end = list ? list + len : NULL;
    bool valid = true;
    raw(b, key, keylen);
    for (const char *p = list; p && p < end;) {
        size_t n = arg_len(p, end);
        if (p != list)
            raw(b, ",", 1);
        put_str(b, p, n);
        valid = valid && buf_utf8_valid(p, n);
        p += n + 1;
    }
    raw(b, "]", 1);
    return valid;
}

#define PUT_STR_LIST(b, key, list, len) put_str_list((b), key, sizeof(key) - 1, (list), (len))

static void put_args(struct buf *b, const char *args, uint32_t len)
{
    const char *end = args ? args + len : NULL;
    if (PUT_STR_LIST(b, ",\"args\":[", args, len))
        return;
    /* One entry per argument, so args_b64[i] is always the bytes of args[i]. */
    PUT_LIT(b, ",\"args_b64\":[");
    for (const char *p = args; p < end;) {
        size_t n = arg_len(p, end);
        if (p != args)
            raw(b, ",", 1);
        put_b64(b, p, n);
        p += n + 1;
    }
    raw(b, "]", 1);
}

/* A dns event's own fields: the server is dest_ip/dest_port (SPEC section 9). */
static void put_dns(struct buf *b, const struct event *e)
{
    char name[DNS_CODE_NAME_LEN];
    const char *status = event_status_name(e->status);

    put_addrs(b, e, true);
    put_protocol_family(b, e, true);
    if (status)
        PUT_KEY_STR(b, ",\"status\":", status);
    if (e->u.dns.query)
        PUT_KEY_STR(b, ",\"query\":", e->u.dns.query);
    PUT_KEY_STR(b, ",\"query_type\":", dns_type_name(e->u.dns.query_type, name, sizeof(name)));
    /* Not a standard query (NOTIFY, UPDATE, ...): said, where a QUERY says nothing. */
    if (e->u.dns.opcode)
        PUT_KEY_STR(b, ",\"opcode\":", dns_opcode_name(e->u.dns.opcode, name, sizeof(name)));
    PUT_LIT(b, ",\"transaction_id\":");
    put_u64(b, e->u.dns.transaction_id);
    /* No answer: no rcode, answers or latency; a failure's latency is to its error. */
    if (e->status == EVENT_STATUS_FAILED) {
        if (e->u.dns.error)
            PUT_KEY_STR(b, ",\"error\":", e->u.dns.error);
        PUT_LIT(b, ",\"latency_ns\":");
        put_u64(b, e->u.dns.latency_ns);
        return;
    }
    if (e->status == EVENT_STATUS_TIMEOUT || e->status == EVENT_STATUS_UNKNOWN)
        return;
    PUT_KEY_STR(b, ",\"rcode\":", dns_rcode_name(e->u.dns.rcode, name, sizeof(name)));
    /* Every element a JSON string: hostile bytes escaped, invalid UTF-8 replaced. */
    PUT_STR_LIST(b, ",\"answers\":[", e->u.dns.answers, e->u.dns.answers_len);
    PUT_LIT(b, ",\"latency_ns\":");
    put_u64(b, e->u.dns.latency_ns);
    if (e->u.dns.tc)
        PUT_LIT(b, ",\"truncated\":true");
    if (e->u.dns.answers_truncated)
        PUT_LIT(b, ",\"answers_truncated\":true");
}

static size_t str_bound(const char *s)
{
    return s ? 6 * strlen(s) + 2 : 0;
}

/*
 * Worst case: every string byte escaped as a 6-byte "\\u00XX" plus, for the
 * raw-byte fields, its base64 (under 2 bytes per byte plus 6 per string);
 * keys, numbers and addresses take under 800 bytes.
 */
static size_t event_json_bound(const struct event *e)
{
    size_t n =
        1024 + 6 * sizeof(e->command) + b64_bound(sizeof(e->command)) + str_bound(e->node) +
        str_bound(e->k8s.node_name) + str_bound(e->k8s.pod_name) + str_bound(e->k8s.namespace) +
        str_bound(e->k8s.container_id) + str_bound(e->k8s.pod_uid) + str_bound(e->k8s.workload) +
        str_bound(e->k8s.workload_kind) + str_bound(e->peer.pod) + str_bound(e->peer.namespace) +
        str_bound(e->peer.workload) + str_bound(e->peer.workload_kind) + str_bound(e->peer.node) +
        str_bound(e->peer.service) + str_bound(e->peer.dns);
    if (e->type == EVENT_CONNECTION)
        n += str_bound(e->u.conn.error);
    else if (e->type == EVENT_PACKET_DROP)
        n += str_bound(e->u.drop.reason) + str_bound(e->u.drop.location);
    else if (e->type == EVENT_EXEC)
        n += 2 * str_bound(e->u.exec.filename) + 12 * (size_t)e->u.exec.args_len + 64;
    else if (e->type == EVENT_DNS) /* answers: 6 bytes per byte, quotes and comma per NUL */
        n += str_bound(e->u.dns.query) + str_bound(e->u.dns.error) +
             6 * (size_t)e->u.dns.answers_len + 64;
    return n;
}

void event_json_write(struct buf *b, const struct event *e)
{
    static const char hex[] = "0123456789abcdef";
    char id[16];
    for (int i = 0; i < 16; i++)
        id[i] = hex[(e->id >> (60 - 4 * i)) & 15];
    const char *type = event_type_name(e->type);
    bool tcp = e->protocol == IPPROTO_TCP, udp = e->protocol == IPPROTO_UDP;

    if (!buf_reserve(b, event_json_bound(e)))
        return;
    PUT_LIT(b, "{\"id\":\"");
    raw(b, id, sizeof(id));
    PUT_LIT(b, "\",\"type\":");
    if (type)
        put_str(b, type, strlen(type));
    else
        PUT_LIT(b, "null");
    /* No process of its own: say nothing rather than 0. */
    if (event_has_process(e)) {
        PUT_LIT(b, ",\"pid\":");
        put_u64(b, e->pid);
        /* A dns query is seen in a cgroup_skb program, which cannot read the parent: the
         * agent asks /proc, and a process gone by then has none to give. */
        if (!(e->type == EVENT_DNS && e->ppid == 0)) {
            PUT_LIT(b, ",\"ppid\":");
            put_u64(b, e->ppid);
        }
        PUT_LIT(b, ",\"uid\":");
        put_u64(b, e->uid);
        /* Beside uid, and there when equal to it too: a reader need not know a default. */
        if (e->type == EVENT_EXEC && e->u.exec.has_euid) {
            PUT_LIT(b, ",\"euid\":");
            put_u64(b, e->u.exec.euid);
        }
        PUT_RAW_STR(b, "command", e->command, strnlen(e->command, sizeof(e->command)));
    }
    PUT_LIT(b, ",\"timestamp\":");
    put_u64(b, e->timestamp_ns);
    char tbuf[40];
    event_format_time(e->timestamp_ns, tbuf);
    PUT_LIT(b, ",\"time\":\"");
    raw(b, tbuf, 30);
    raw(b, "\"", 1);
    if (e->node)
        PUT_KEY_STR(b, ",\"node\":", e->node);
    if (e->k8s.node_name)
        PUT_KEY_STR(b, ",\"k8s_node_name\":", e->k8s.node_name);
    if (e->k8s.pod_name)
        PUT_KEY_STR(b, ",\"k8s_pod_name\":", e->k8s.pod_name);
    if (e->k8s.namespace)
        PUT_KEY_STR(b, ",\"k8s_namespace\":", e->k8s.namespace);
    if (e->k8s.container_id)
        PUT_KEY_STR(b, ",\"k8s_container_id\":", e->k8s.container_id);
    if (e->k8s.pod_uid)
        PUT_KEY_STR(b, ",\"k8s_pod_uid\":", e->k8s.pod_uid);
    if (e->k8s.workload)
        PUT_KEY_STR(b, ",\"k8s_workload\":", e->k8s.workload);
    if (e->k8s.workload_kind)
        PUT_KEY_STR(b, ",\"k8s_workload_kind\":", e->k8s.workload_kind);
    put_peer(b, &e->peer);

    switch (e->type) {
    case EVENT_CONNECTION:
    case EVENT_ACCEPT:
        put_addrs(b, e, true);
        put_protocol_family(b, e, true);
        if (e->type == EVENT_CONNECTION) {
            const char *status = event_status_name(e->status);
            if (status)
                PUT_KEY_STR(b, ",\"status\":", status);
            if (tcp) {
                PUT_LIT(b, ",\"latency_ns\":");
                put_u64(b, e->u.conn.latency_ns);
            }
            if (e->u.conn.error)
                PUT_KEY_STR(b, ",\"error\":", e->u.conn.error);
        }
        break;
    case EVENT_CLOSE: {
        const char *role = event_role_name(e->u.close.role);
        const char *reset = event_reset_name(e->u.close.reset);
        put_addrs(b, e, true);
        put_protocol_family(b, e, true);
        if (role)
            PUT_KEY_STR(b, ",\"role\":", role);
        if (e->u.close.duration_ns) { /* 0: open before the agent started, unknown */
            PUT_LIT(b, ",\"duration_ns\":");
            put_u64(b, e->u.close.duration_ns);
        }
        PUT_LIT(b, ",\"bytes_sent\":");
        put_u64(b, e->u.close.bytes_sent);
        PUT_LIT(b, ",\"bytes_received\":");
        put_u64(b, e->u.close.bytes_received);
        PUT_LIT(b, ",\"retransmits\":");
        put_u64(b, e->u.close.retransmits);
        PUT_LIT(b, ",\"srtt_us\":");
        put_u64(b, e->u.close.srtt_us);
        if (reset)
            PUT_KEY_STR(b, ",\"reset\":", reset);
        break;
    }
    case EVENT_PACKET_DROP:
        if (e->u.drop.reason)
            PUT_KEY_STR(b, ",\"drop_reason\":", e->u.drop.reason);
        PUT_LIT(b, ",\"drop_reason_code\":");
        put_u64(b, e->u.drop.reason_code);
        put_protocol_family(b, e, false);
        if (e->u.drop.location)
            PUT_KEY_STR(b, ",\"location\":", e->u.drop.location);
        if (e->u.drop.suppressed) {
            PUT_LIT(b, ",\"suppressed\":");
            put_u64(b, e->u.drop.suppressed);
        }
        put_addrs(b, e, tcp || udp);
        if (event_family_name(e->family))
            PUT_KEY_STR(b, ",\"family\":", event_family_name(e->family));
        break;
    case EVENT_EXEC:
        if (e->u.exec.filename)
            PUT_RAW_STR(b, "filename", e->u.exec.filename, strlen(e->u.exec.filename));
        if (e->u.exec.filename_truncated)
            PUT_LIT(b, ",\"filename_truncated\":true");
        put_args(b, e->u.exec.args, e->u.exec.args_len);
        if (e->u.exec.args_truncated)
            PUT_LIT(b, ",\"args_truncated\":true");
        PUT_LIT(b, ",\"cgroup_id\":");
        put_u64(b, e->cgroup_id);
        break;
    case EVENT_EXIT:
        PUT_LIT(b, ",\"exit_code\":");
        put_i64(b, e->u.exit.exit_code);
        PUT_LIT(b, ",\"signal\":");
        put_i64(b, e->u.exit.signal);
        if (e->u.exit.core_dumped)
            PUT_LIT(b, ",\"core_dumped\":true");
        PUT_LIT(b, ",\"duration_ns\":");
        put_u64(b, e->u.exit.duration_ns);
        break;
    case EVENT_DNS:
        put_dns(b, e);
        break;
    }
    raw(b, "}", 1);
    b->data[b->len] = '\0';
}

/* ---- parser ---- */

struct parse_ctx {
    json_t *root;
    char *err;
    size_t errlen;
};

/* Looks up key; *out is NULL when absent. Fails when required and absent. */
static int get_field(struct parse_ctx *c, const char *key, bool required, json_t **out)
{
    *out = json_object_get(c->root, key);
    if (!*out && required)
        return errmsg_set(c->err, c->errlen, "field \"%s\": required", key);
    return 0;
}

/* An integer in [min, max]; absent leaves *v untouched. */
static int get_int(struct parse_ctx *c, const char *key, bool required, int64_t min, int64_t max,
                   int64_t *v)
{
    json_t *j;
    int rc = get_field(c, key, required, &j);
    if (rc || !j)
        return rc;
    if (!json_is_integer(j) || json_integer_value(j) < min || json_integer_value(j) > max)
        return errmsg_set(c->err, c->errlen, "field \"%s\": expected an integer in %lld..%lld", key,
                          (long long)min, (long long)max);
    *v = json_integer_value(j);
    return 0;
}

#define GET_UINT(c, key, max, dst)                                                                 \
    do {                                                                                           \
        int64_t v_ = 0;                                                                            \
        int rc_ = get_int((c), (key), false, 0, (max), &v_);                                       \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
        (dst) = v_;                                                                                \
    } while (0)

/* A string; absent leaves *s NULL. */
static int get_str(struct parse_ctx *c, const char *key, bool required, const char **s, size_t *len)
{
    json_t *j;
    *s = NULL;
    *len = 0;
    int rc = get_field(c, key, required, &j);
    if (rc || !j)
        return rc;
    if (!json_is_string(j))
        return errmsg_set(c->err, c->errlen, "field \"%s\": expected a string", key);
    *s = json_string_value(j);
    *len = json_string_length(j);
    return 0;
}

/* Standard, padded base64 only, with zero pad bits: one text per byte string. */
static int b64_decode(const char *s, size_t len, char *out, size_t *outlen)
{
    size_t n = 0;
    if (len % 4)
        return -EINVAL;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (size_t k = 0; k < 4; k++) {
            const char *d = s[i + k] ? strchr(b64_alphabet, s[i + k]) : NULL;
            if (s[i + k] == '=' && i + 4 == len && k >= 2 && (k == 3 || s[i + 3] == '=')) {
                pad++;
                v <<= 6;
            } else if (d && !pad) {
                v = v << 6 | (uint32_t)(d - b64_alphabet);
            } else {
                return -EINVAL;
            }
        }
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))
            return -EINVAL;
        out[n++] = (char)(v >> 16);
        if (pad < 2)
            out[n++] = (char)(v >> 8);
        if (pad < 1)
            out[n++] = (char)v;
    }
    *outlen = n;
    return 0;
}

/*
 * The exact bytes of a "<key>_b64" string j that goes with the text of key.
 * *raw is malloc'd and NUL-terminated; the bytes hold no NUL (C strings) and
 * must be what the text was written from, so a producer cannot say two things.
 */
static int decode_raw(struct parse_ctx *c, const char *key, json_t *j, const char *text,
                      size_t textlen, char **raw, size_t *rawlen)
{
    *raw = NULL;
    if (!json_is_string(j))
        return errmsg_set(c->err, c->errlen, "field \"%s_b64\": expected a base64 string", key);
    size_t len = json_string_length(j);
    char *out = malloc(len / 4 * 3 + 1);
    if (!out) {
        errmsg_set(c->err, c->errlen, "field \"%s_b64\": out of memory", key);
        return -ENOMEM;
    }
    if (b64_decode(json_string_value(j), len, out, rawlen) < 0) {
        free(out);
        return errmsg_set(c->err, c->errlen, "field \"%s_b64\": not padded standard base64", key);
    }
    out[*rawlen] = '\0';
    if (memchr(out, '\0', *rawlen)) {
        free(out);
        return errmsg_set(c->err, c->errlen, "field \"%s_b64\": contains a NUL byte", key);
    }
    if (!text || !buf_utf8_shows_as(out, *rawlen, text, textlen)) {
        free(out);
        return errmsg_set(c->err, c->errlen, "field \"%s_b64\": does not match \"%s\"", key, key);
    }
    *raw = out;
    return 0;
}

/* A string field with its optional "<key>_b64" sibling; *raw NULL without one. */
static int get_raw(struct parse_ctx *c, const char *key, const char *text, size_t textlen,
                   char **raw, size_t *rawlen)
{
    char b64key[32];
    json_t *j;
    *raw = NULL;
    snprintf(b64key, sizeof(b64key), "%s_b64", key);
    int rc = get_field(c, b64key, false, &j);
    if (rc || !j)
        return rc;
    return decode_raw(c, key, j, text, textlen, raw, rawlen);
}

/* process: a name a monitored process chose (intern_process_n()), left out when refused. */
static int get_interned_as(struct parse_ctx *c, const char *key, const char **dst, bool process)
{
    const char *s;
    size_t len;
    int rc = get_str(c, key, false, &s, &len);
    if (rc || !s)
        return rc;
    if (len > EVENT_NAME_MAX) /* no agent sends it: not interned (the table is shared) */
        return errmsg_set(c->err, c->errlen, "field \"%s\": %zu bytes, at most %d", key, len,
                          EVENT_NAME_MAX);
    if (process) {
        *dst = intern_process_n(s, len);
        return 0;
    }
    if (!(*dst = intern_n(s, len))) {
        errmsg_set(c->err, c->errlen, "field \"%s\": string table full", key);
        return -ENOMEM;
    }
    return 0;
}

static int get_interned(struct parse_ctx *c, const char *key, const char **dst)
{
    return get_interned_as(c, key, dst, false);
}

static int parse_protocol(struct parse_ctx *c, struct event *e)
{
    const char *s;
    size_t len;
    int rc = get_str(c, "protocol", false, &s, &len);
    if (rc || !s)
        return rc;
    for (unsigned p = 1; p < 256; p++) {
        const char *name = event_protocol_name(p);
        if (name && strlen(name) == len && memcmp(name, s, len) == 0) {
            e->protocol = (uint8_t)p;
            return 0;
        }
    }
    /* The number of a protocol without a name, as the writer puts it (no leading zero). */
    unsigned n = 0;
    size_t i = 0;
    while (i < len && i < 3 && s[i] >= '0' && s[i] <= '9')
        n = n * 10 + (unsigned)(s[i++] - '0');
    if (i == len && len && s[0] != '0' && n < 256 && !event_protocol_name(n)) {
        e->protocol = (uint8_t)n;
        return 0;
    }
    return errmsg_set(c->err, c->errlen,
                      "field \"protocol\": unknown protocol \"%s\" (a name, or the number of "
                      "a protocol without one)",
                      s);
}

static int parse_addrs(struct parse_ctx *c, struct event *e)
{
    const char *fam, *sip, *dip;
    size_t len;
    int rc;
    if ((rc = get_str(c, "family", false, &fam, &len)) ||
        (rc = get_str(c, "source_ip", false, &sip, &len)) ||
        (rc = get_str(c, "dest_ip", false, &dip, &len)))
        return rc;
    if (!fam) {
        if (sip || dip)
            return errmsg_set(c->err, c->errlen, "field \"family\": required with addresses");
        return 0;
    }
    int af;
    if (strcmp(fam, "ipv4") == 0) {
        e->family = EVENT_FAMILY_IPV4;
        af = AF_INET;
    } else if (strcmp(fam, "ipv6") == 0) {
        e->family = EVENT_FAMILY_IPV6;
        af = AF_INET6;
    } else {
        return errmsg_set(c->err, c->errlen, "field \"family\": expected \"ipv4\" or \"ipv6\"");
    }
    if (sip && inet_pton(af, sip, e->saddr) != 1)
        return errmsg_set(c->err, c->errlen, "field \"source_ip\": not an %s address", fam);
    if (dip && inet_pton(af, dip, e->daddr) != 1)
        return errmsg_set(c->err, c->errlen, "field \"dest_ip\": not an %s address", fam);
    GET_UINT(c, "source_port", 65535, e->sport);
    GET_UINT(c, "dest_port", 65535, e->dport);
    return 0;
}

static int parse_conn(struct parse_ctx *c, struct event *e)
{
    int rc;
    if ((rc = parse_protocol(c, e)) || (rc = parse_addrs(c, e)))
        return rc;
    if (e->type != EVENT_CONNECTION)
        return 0;
    const char *s;
    size_t len;
    if ((rc = get_str(c, "status", false, &s, &len)))
        return rc;
    if (s) {
        for (unsigned st = EVENT_STATUS_ESTABLISHED; st <= EVENT_STATUS_ATTEMPTED; st++)
            if (strcmp(s, event_status_name(st)) == 0)
                e->status = (uint8_t)st;
        if (!e->status)
            return errmsg_set(c->err, c->errlen,
                              "field \"status\": expected established, failed or attempted");
    }
    GET_UINT(c, "latency_ns", INT64_MAX, e->u.conn.latency_ns);
    return get_interned(c, "error", &e->u.conn.error);
}

/* The value in 1..max whose name_of() is the field's string; left 0 when absent. */
static int parse_enum(struct parse_ctx *c, const char *field, const char *(*name_of)(unsigned),
                      unsigned max, uint8_t *out)
{
    const char *s;
    size_t len;
    int rc;
    if ((rc = get_str(c, field, false, &s, &len)) || !s)
        return rc;
    for (unsigned v = 1; v <= max; v++)
        if (strcmp(s, name_of(v)) == 0) {
            *out = (uint8_t)v;
            return 0;
        }
    return errmsg_set(c->err, c->errlen, "field \"%s\": unknown value \"%s\"", field, s);
}

static int parse_close(struct parse_ctx *c, struct event *e)
{
    int rc;
    if ((rc = parse_protocol(c, e)) || (rc = parse_addrs(c, e)) ||
        (rc = parse_enum(c, "role", event_role_name, EVENT_ROLE_SERVER, &e->u.close.role)) ||
        (rc = parse_enum(c, "reset", event_reset_name, EVENT_RESET_RECEIVED, &e->u.close.reset)))
        return rc;
    GET_UINT(c, "duration_ns", INT64_MAX, e->u.close.duration_ns);
    GET_UINT(c, "bytes_sent", INT64_MAX, e->u.close.bytes_sent);
    GET_UINT(c, "bytes_received", INT64_MAX, e->u.close.bytes_received);
    GET_UINT(c, "retransmits", UINT32_MAX, e->u.close.retransmits);
    GET_UINT(c, "srtt_us", UINT32_MAX, e->u.close.srtt_us);
    return 0;
}

static int parse_drop(struct parse_ctx *c, struct event *e)
{
    int rc;
    if ((rc = get_interned(c, "drop_reason", &e->u.drop.reason)) ||
        (rc = get_interned(c, "location", &e->u.drop.location)) || (rc = parse_protocol(c, e)) ||
        (rc = parse_addrs(c, e)))
        return rc;
    GET_UINT(c, "drop_reason_code", UINT32_MAX, e->u.drop.reason_code);
    GET_UINT(c, "suppressed", INT64_MAX, e->u.drop.suppressed);
    return 0;
}

/* "args" and, when present, "args_b64" (one base64 string per argument). */
static int parse_args(struct parse_ctx *c, struct event *e)
{
    json_t *j, *jb, *a;
    size_t total = 0, i;
    int rc;
    if ((rc = get_field(c, "args", false, &j)) || (rc = get_field(c, "args_b64", false, &jb)))
        return rc;
    if (!j && jb)
        return errmsg_set(c->err, c->errlen, "field \"args_b64\": without \"args\"");
    if (!j)
        return 0;
    if (!json_is_array(j))
        return errmsg_set(c->err, c->errlen, "field \"args\": expected an array of strings");
    if (jb && (!json_is_array(jb) || json_array_size(jb) != json_array_size(j)))
        return errmsg_set(c->err, c->errlen,
                          "field \"args_b64\": expected an array as long as \"args\"");
    json_array_foreach(j, i, a)
    {
        if (!json_is_string(a))
            return errmsg_set(c->err, c->errlen, "field \"args\": element %zu is not a string", i);
        /* Base64 never decodes to more bytes than its text has. */
        total +=
            (jb && json_is_string(json_array_get(jb, i)) ? json_string_length(json_array_get(jb, i))
                                                         : json_string_length(a)) +
            1;
    }
    if (total > UINT32_MAX)
        return errmsg_set(c->err, c->errlen, "field \"args\": too long");
    if (!total)
        return 0;
    char *p = e->u.exec.args = malloc(total + 1);
    if (!p) {
        errmsg_set(c->err, c->errlen, "field \"args\": out of memory");
        return -ENOMEM;
    }
    json_array_foreach(j, i, a)
    {
        const char *s = json_string_value(a);
        size_t n = json_string_length(a);
        char *bytes = NULL;
        if (jb && (rc = decode_raw(c, "args", json_array_get(jb, i), s, n, &bytes, &n)))
            return rc;
        memcpy(p, bytes ? bytes : s, n + 1);
        free(bytes);
        p += n + 1;
    }
    *p = '\0';
    e->u.exec.args_len = (uint32_t)(p - e->u.exec.args);
    return 0;
}

/* An optional boolean field: *out is 1 when it is true, unchanged when it is absent. */
static int get_flag(struct parse_ctx *c, const char *key, uint8_t *out)
{
    json_t *j;
    int rc = get_field(c, key, false, &j);
    if (rc || !j)
        return rc;
    if (!json_is_boolean(j))
        return errmsg_set(c->err, c->errlen, "field \"%s\": expected a boolean", key);
    *out = json_is_true(j);
    return 0;
}

static int parse_exec(struct parse_ctx *c, struct event *e)
{
    const char *s;
    char *raw;
    size_t len, rawlen;
    int rc;
    if ((rc = get_str(c, "filename", false, &s, &len)) ||
        (rc = get_raw(c, "filename", s, len, &raw, &rawlen)))
        return rc;
    if (raw)
        e->u.exec.filename = raw;
    else if (s && !(e->u.exec.filename = strndup(s, len))) {
        errmsg_set(c->err, c->errlen, "field \"filename\": out of memory");
        return -ENOMEM;
    }
    if ((rc = parse_args(c, e)))
        return rc;
    int64_t euid = -1; /* absent: not reported */
    if ((rc = get_int(c, "euid", false, 0, UINT32_MAX, &euid)))
        return rc;
    if (euid >= 0) {
        e->u.exec.euid = (uint32_t)euid;
        e->u.exec.has_euid = 1;
    }
    if ((rc = get_flag(c, "args_truncated", &e->u.exec.args_truncated)))
        return rc;
    return get_flag(c, "filename_truncated", &e->u.exec.filename_truncated);
}

static int parse_exit(struct parse_ctx *c, struct event *e)
{
    int64_t v;
    int rc;
    v = 0;
    if ((rc = get_int(c, "exit_code", false, INT32_MIN, INT32_MAX, &v)))
        return rc;
    e->u.exit.exit_code = (int32_t)v;
    v = 0;
    if ((rc = get_int(c, "signal", false, INT32_MIN, INT32_MAX, &v)))
        return rc;
    e->u.exit.signal = (int32_t)v;
    GET_UINT(c, "duration_ns", INT64_MAX, e->u.exit.duration_ns);
    return get_flag(c, "core_dumped", &e->u.exit.core_dumped);
}

/* query_type or rcode: a name or a number in text ("A", "65280", "NXDOMAIN"). */
static int parse_dns_code(struct parse_ctx *c, const char *key,
                          int (*parse)(const char *, size_t, uint16_t *), uint16_t *out)
{
    const char *s;
    size_t len;
    int rc = get_str(c, key, false, &s, &len);
    if (rc || !s)
        return rc;
    if (parse(s, len, out) < 0)
        return errmsg_set(c->err, c->errlen, "field \"%s\": unknown value \"%s\"", key, s);
    return 0;
}

/* "answers": non-empty strings without NUL, at most EVENT_DNS_ANSWERS_MAX. */
static int parse_answers(struct parse_ctx *c, struct event *e)
{
    json_t *j, *a;
    size_t total = 0, i;
    int rc = get_field(c, "answers", false, &j);
    if (rc || !j)
        return rc;
    if (!json_is_array(j) || json_array_size(j) > EVENT_DNS_ANSWERS_MAX)
        return errmsg_set(c->err, c->errlen,
                          "field \"answers\": expected an array of at most %d "
                          "strings",
                          EVENT_DNS_ANSWERS_MAX);
    json_array_foreach(j, i, a)
    {
        size_t n = json_is_string(a) ? json_string_length(a) : 0;
        if (!n || memchr(json_string_value(a), '\0', n))
            return errmsg_set(c->err, c->errlen,
                              "field \"answers\": element %zu is not a non-empty string", i);
        total += n + 1;
    }
    if (!total)
        return 0;
    char *p = e->u.dns.answers = malloc(total);
    if (!p) {
        errmsg_set(c->err, c->errlen, "field \"answers\": out of memory");
        return -ENOMEM;
    }
    json_array_foreach(j, i, a)
    {
        memcpy(p, json_string_value(a), json_string_length(a) + 1);
        p += json_string_length(a) + 1;
    }
    e->u.dns.answers_len = (uint32_t)total;
    return 0;
}

static int parse_dns(struct parse_ctx *c, struct event *e)
{
    const char *s;
    size_t len;
    uint16_t opcode = 0;
    int rc;
    if ((rc = parse_protocol(c, e)) || (rc = parse_addrs(c, e)) ||
        (rc = get_str(c, "status", false, &s, &len)))
        return rc;
    if (s) {
        if (strcmp(s, "answered") == 0)
            e->status = EVENT_STATUS_ANSWERED;
        else if (strcmp(s, "timeout") == 0)
            e->status = EVENT_STATUS_TIMEOUT;
        else if (strcmp(s, "unknown") == 0)
            e->status = EVENT_STATUS_UNKNOWN;
        else if (strcmp(s, "failed") == 0)
            e->status = EVENT_STATUS_FAILED;
        else
            return errmsg_set(c->err, c->errlen,
                              "field \"status\": expected answered, timeout, unknown or failed");
    }
    if ((rc = get_interned(c, "error", &e->u.dns.error)))
        return rc;
    if ((rc = get_str(c, "query", false, &s, &len)))
        return rc;
    if (s && memchr(s, '\0', len))
        return errmsg_set(c->err, c->errlen, "field \"query\": contains a NUL byte");
    if (s && len && !(e->u.dns.query = strndup(s, len))) {
        errmsg_set(c->err, c->errlen, "field \"query\": out of memory");
        return -ENOMEM;
    }
    if ((rc = parse_dns_code(c, "query_type", dns_type_parse, &e->u.dns.query_type)) ||
        (rc = parse_dns_code(c, "rcode", dns_rcode_parse, &e->u.dns.rcode)) ||
        (rc = parse_dns_code(c, "opcode", dns_opcode_parse, &opcode)) || (rc = parse_answers(c, e)))
        return rc;
    e->u.dns.opcode = (uint8_t)opcode;
    GET_UINT(c, "transaction_id", 65535, e->u.dns.transaction_id);
    GET_UINT(c, "latency_ns", INT64_MAX, e->u.dns.latency_ns);
    if ((rc = get_flag(c, "truncated", &e->u.dns.tc)))
        return rc;
    return get_flag(c, "answers_truncated", &e->u.dns.answers_truncated);
}

static int parse_event(struct parse_ctx *c, struct event *e)
{
    const char *s;
    size_t len;
    int rc;

    if ((rc = get_str(c, "type", true, &s, &len)))
        return rc;
    e->type = (uint8_t)event_type_parse(s, len);
    if (e->type == EVENT_TYPE_NONE)
        return errmsg_set(c->err, c->errlen, "field \"type\": unknown event type \"%s\"", s);

    if ((rc = get_str(c, "id", true, &s, &len)))
        return rc;
    if (len != 16)
        return errmsg_set(c->err, c->errlen, "field \"id\": expected 16 hex characters");
    for (size_t i = 0; i < 16; i++) {
        char ch = s[i];
        unsigned v = ch >= '0' && ch <= '9'   ? (unsigned)(ch - '0')
                     : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                     : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                              : 16;
        if (v == 16)
            return errmsg_set(c->err, c->errlen, "field \"id\": expected 16 hex characters");
        e->id = e->id << 4 | v;
    }

    int64_t ts = 0;
    if ((rc = get_int(c, "timestamp", true, 0, INT64_MAX, &ts)))
        return rc;
    e->timestamp_ns = (uint64_t)ts;
    GET_UINT(c, "pid", UINT32_MAX, e->pid);
    GET_UINT(c, "ppid", UINT32_MAX, e->ppid);
    GET_UINT(c, "uid", UINT32_MAX, e->uid);
    GET_UINT(c, "cgroup_id", INT64_MAX, e->cgroup_id);

    char *raw;
    size_t rawlen;
    if ((rc = get_str(c, "command", false, &s, &len)) ||
        (rc = get_raw(c, "command", s, len, &raw, &rawlen)))
        return rc;
    if (raw) {
        if (rawlen >= sizeof(e->command)) {
            free(raw);
            return errmsg_set(c->err, c->errlen, "field \"command_b64\": longer than %zu bytes",
                              sizeof(e->command) - 1);
        }
        memcpy(e->command, raw, rawlen + 1);
        free(raw);
    } else if (s) {
        /*
         * Without command_b64 (another producer) the text is all there is:
         * each U+FFFD takes 3 bytes, so keep the whole characters that fit.
         */
        if (len >= sizeof(e->command)) {
            len = sizeof(e->command) - 1;
            while (len && ((unsigned char)s[len] & 0xc0) == 0x80)
                len--;
        }
        memcpy(e->command, s, len);
    }

    if ((rc = get_interned(c, "node", &e->node)) ||
        (rc = get_interned(c, "k8s_node_name", &e->k8s.node_name)) ||
        (rc = get_interned(c, "k8s_pod_name", &e->k8s.pod_name)) ||
        (rc = get_interned(c, "k8s_namespace", &e->k8s.namespace)) ||
        (rc = get_interned(c, "k8s_container_id", &e->k8s.container_id)) ||
        (rc = get_interned(c, "k8s_pod_uid", &e->k8s.pod_uid)) ||
        (rc = get_interned(c, "k8s_workload", &e->k8s.workload)) ||
        (rc = get_interned(c, "k8s_workload_kind", &e->k8s.workload_kind)) ||
        (rc = get_interned(c, "peer_pod", &e->peer.pod)) ||
        (rc = get_interned(c, "peer_namespace", &e->peer.namespace)) ||
        (rc = get_interned(c, "peer_workload", &e->peer.workload)) ||
        (rc = get_interned(c, "peer_workload_kind", &e->peer.workload_kind)) ||
        (rc = get_interned(c, "peer_node", &e->peer.node)) ||
        (rc = get_interned(c, "peer_service", &e->peer.service)) ||
        (rc = get_interned_as(c, "peer_dns", &e->peer.dns, true)))
        return rc;

    switch (e->type) {
    case EVENT_CONNECTION:
    case EVENT_ACCEPT:
        return parse_conn(c, e);
    case EVENT_PACKET_DROP:
        return parse_drop(c, e);
    case EVENT_EXEC:
        return parse_exec(c, e);
    case EVENT_EXIT:
        return parse_exit(c, e);
    case EVENT_CLOSE:
        return parse_close(c, e);
    case EVENT_DNS:
        return parse_dns(c, e);
    }
    return 0;
}

int event_json_parse(const char *s, size_t len, struct event *out, char *err, size_t errlen)
{
    struct parse_ctx c = {.err = err, .errlen = errlen};
    json_error_t jerr;
    int rc;

    memset(out, 0, sizeof(*out));
    c.root = json_loadb(s, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!c.root)
        return errmsg_set(c.err, c.errlen, "invalid JSON at line %d column %d: %s", jerr.line,
                          jerr.column, jerr.text);
    if (!json_is_object(c.root))
        rc = errmsg_set(c.err, c.errlen, "expected a JSON object");
    else
        rc = parse_event(&c, out);
    json_decref(c.root);
    if (rc)
        event_clear(out);
    return rc;
}

/*
 * Ring buffer records into events, one decode_<kind>() per record struct of
 * bpf/. The only file that knows those layouts on the user-space side.
 *
 * Addresses: IPv4 traffic on an IPv6 socket (v4-mapped ::ffff:a.b.c.d) is
 * reported as ipv4 with the plain IPv4 addresses, so one flow always has one
 * family whatever socket API the program used.
 */
#include "records.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "buf.h"
#include "drop_reasons.h"
#include "errmsg.h"
#include "intern.h"
#include "ksyms.h"
#include "dns_events.h"
#include "net_events.h"
#include "process_events.h"

_Static_assert(RECORD_ARGS_MAX == EVENT_ARGS_MAX, "argv bound differs between kernel and event");
_Static_assert(RECORD_FILENAME_MAX == EVENT_FILENAME_MAX, "filename bound differs");
_Static_assert(RECORD_COMM_LEN == EVENT_COMM_LEN, "comm length differs");

/* ::ffff:a.b.c.d */
static bool is_v4_mapped(const uint8_t a[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, 12) == 0;
}

static bool is_zero_addr(const uint8_t a[16])
{
    static const uint8_t zero[16];
    return memcmp(a, zero, 16) == 0;
}

/* Leaves the family NONE and no addresses for an af other than AF_INET and AF_INET6. */
static void decode_addrs(struct event *e, unsigned af, const uint8_t saddr[16],
                         const uint8_t daddr[16])
{
    if (af == AF_INET) {
        e->family = EVENT_FAMILY_IPV4;
        memcpy(e->saddr, saddr, 4);
        memcpy(e->daddr, daddr, 4);
    } else if (af == AF_INET6 && is_v4_mapped(daddr) &&
               (is_v4_mapped(saddr) || is_zero_addr(saddr))) {
        e->family = EVENT_FAMILY_IPV4;
        if (!is_zero_addr(saddr))
            memcpy(e->saddr, saddr + 12, 4);
        memcpy(e->daddr, daddr + 12, 4);
    } else if (af == AF_INET6) {
        e->family = EVENT_FAMILY_IPV6;
        memcpy(e->saddr, saddr, 16);
        memcpy(e->daddr, daddr, 16);
    }
}

static void decode_hdr(const struct records_decoder *d, struct event *e, const struct record_hdr *h,
                       enum event_type type)
{
    e->type = type;
    /* Unsigned: wraps instead of overflowing on a nonsense ts_ns. */
    e->timestamp_ns = h->ts_ns + (uint64_t)d->boot_to_real_ns;
    e->pid = h->pid;
    e->ppid = h->ppid;
    e->uid = h->uid;
    memcpy(e->command, h->comm, EVENT_COMM_LEN);
    e->command[EVENT_COMM_LEN - 1] = '\0';
    e->cgroup_id = h->cgroup_id;
}

/* RECORD_CONNECT and RECORD_ACCEPT. */
static int decode_conn(const struct records_decoder *d, const void *data, struct event *e,
                       char *err, size_t errlen)
{
    const struct conn_record *r = data;

    /* The programs emit only these; anything else is not an address we could show. */
    if (r->family != AF_INET && r->family != AF_INET6)
        return errmsg_set(err, errlen, "%s record with address family %u",
                          r->hdr.kind == RECORD_ACCEPT ? "accept" : "connect", r->family);
    decode_hdr(d, e, &r->hdr, r->hdr.kind == RECORD_ACCEPT ? EVENT_ACCEPT : EVENT_CONNECTION);
    decode_addrs(e, r->family, r->saddr, r->daddr);
    e->protocol = r->protocol;
    e->sport = r->sport;
    e->dport = r->dport;
    if (r->hdr.kind != RECORD_CONNECT)
        return 0;
    switch (r->status) {
    case CONN_ESTABLISHED:
        e->status = EVENT_STATUS_ESTABLISHED;
        break;
    case CONN_FAILED:
        e->status = EVENT_STATUS_FAILED;
        break;
    case CONN_ATTEMPTED:
        e->status = EVENT_STATUS_ATTEMPTED;
        break;
    default:
        break;
    }
    e->u.conn.latency_ns = r->latency_ns;
    if (e->status == EVENT_STATUS_FAILED) {
        /* No errno left on the socket: the application gave up (close, shutdown). */
        const char *name = event_conn_error_name(r->error ? r->error : ECONNABORTED);
        e->u.conn.error = name ? intern(name) : NULL;
    }
    return 0;
}

static int decode_close(const struct records_decoder *d, const void *data, struct event *e,
                        char *err, size_t errlen)
{
    const struct close_record *r = data;

    if (r->family != AF_INET && r->family != AF_INET6)
        return errmsg_set(err, errlen, "close record with address family %u", r->family);
    decode_hdr(d, e, &r->hdr, EVENT_CLOSE);
    decode_addrs(e, r->family, r->saddr, r->daddr);
    e->protocol = IPPROTO_TCP;
    e->sport = r->sport;
    e->dport = r->dport;
    e->u.close.role = r->role == CLOSE_ROLE_CLIENT   ? EVENT_ROLE_CLIENT
                      : r->role == CLOSE_ROLE_SERVER ? EVENT_ROLE_SERVER
                                                     : EVENT_ROLE_NONE;
    e->u.close.reset = r->reset == CLOSE_RESET_SENT       ? EVENT_RESET_SENT
                       : r->reset == CLOSE_RESET_RECEIVED ? EVENT_RESET_RECEIVED
                                                          : EVENT_RESET_NONE;
    e->u.close.duration_ns = r->duration_ns;
    e->u.close.bytes_sent = r->bytes_sent;
    e->u.close.bytes_received = r->bytes_received;
    e->u.close.retransmits = r->retransmits;
    e->u.close.srtt_us = r->srtt_us;
    return 0;
}

static int decode_drop(const struct records_decoder *d, const void *data, struct event *e,
                       char *err, size_t errlen)
{
    const struct drop_record *r = data;
    char loc[256];

    decode_hdr(d, e, &r->hdr, EVENT_PACKET_DROP);
    decode_addrs(e, r->family, r->saddr, r->daddr);
    e->protocol = r->protocol;
    if (r->has_ports) {
        e->sport = r->sport;
        e->dport = r->dport;
    }
    e->u.drop.reason_code = r->reason;
    e->u.drop.reason = drop_reasons_name(d->reasons, r->reason);
    if (ksyms_format(d->ksyms, r->location, loc, sizeof(loc)))
        e->u.drop.location = intern(loc);
    e->u.drop.suppressed = r->suppressed;
    return 0;
}

/* argv as NUL-separated strings, at most EVENT_ARGC_MAX of them, the last one terminated. */
static int decode_args(struct event *e, const struct exec_record *r)
{
    size_t len = r->args_len, end = 0, argc = 0;
    bool truncated = r->args_truncated;
    char *args;

    while (end < len && argc < EVENT_ARGC_MAX) {
        const char *nul = memchr(r->args + end, '\0', len - end);
        end = nul ? (size_t)(nul - r->args) + 1 : len;
        argc++;
    }
    if (end < len)
        truncated = true; /* more than EVENT_ARGC_MAX strings */
    if (end == 0)
        return 0;
    args = malloc(end + 2); /* room for a terminator and the trailing NUL event_copy keeps */
    if (!args)
        return -ENOMEM;
    memcpy(args, r->args, end);
    if (args[end - 1] != '\0') { /* cut mid-string at RECORD_ARGS_MAX: not mid-character */
        const char *last = memrchr(args, '\0', end);
        size_t from = last ? (size_t)(last - args) + 1 : 0;
        end = from + buf_utf8_cut(args + from, end - from);
        args[end++] = '\0';
    }
    args[end] = '\0';
    e->u.exec.args = args;
    e->u.exec.args_len = (uint32_t)end;
    e->u.exec.args_truncated = truncated;
    return 0;
}

static int decode_exec(const struct records_decoder *d, const void *data, struct event *e,
                       char *err, size_t errlen)
{
    const struct exec_record *r = data;

    if (r->args_len > RECORD_ARGS_MAX)
        return errmsg_set(err, errlen, "exec record with %u bytes of argv, more than its %d",
                          r->args_len, RECORD_ARGS_MAX);
    decode_hdr(d, e, &r->hdr, EVENT_EXEC);
    e->u.exec.euid = r->euid;
    e->u.exec.has_euid = 1;
    size_t flen = strnlen(r->filename, sizeof(r->filename));
    e->u.exec.filename_truncated = r->filename_truncated != 0;
    if (e->u.exec.filename_truncated) /* cut at its limit: not mid-character */
        flen = buf_utf8_cut(r->filename, flen);
    e->u.exec.filename = strndup(r->filename, flen);
    if (!e->u.exec.filename || decode_args(e, r) < 0) {
        errmsg_set(err, errlen, "out of memory for an exec record's filename and argv");
        return -ENOMEM;
    }
    return 0;
}

static int decode_exit(const struct records_decoder *d, const void *data, struct event *e,
                       char *err, size_t errlen)
{
    const struct exit_record *r = data;

    decode_hdr(d, e, &r->hdr, EVENT_EXIT);
    /* task->exit_code: (status << 8) | terminating signal, 0x80 = core dumped */
    e->u.exit.exit_code = (int32_t)((r->exit_code >> 8) & 0xff);
    e->u.exit.signal = (int32_t)(r->exit_code & 0x7f);
    e->u.exit.core_dumped = (r->exit_code & 0x80) != 0;
    e->u.exit.duration_ns = r->duration_ns;
    return 0;
}

bool records_exit_repeated(struct records_exits *x, const struct event *e)
{
    uint64_t start = e->timestamp_ns - e->u.exit.duration_ns;
    __typeof__(x->slot[0]) *s = &x->slot[e->pid % RECORDS_EXITS_KEPT];

    if (s->used && s->pid == e->pid && s->start_ns == start) {
        __atomic_fetch_add(&x->repeated, 1, __ATOMIC_RELAXED);
        return true;
    }
    s->used = true;
    s->pid = e->pid;
    s->start_ns = start;
    return false;
}

static int decode_dns(const struct records_decoder *d, const struct dns_record *r, size_t len,
                      struct records_dns *out, char *err, size_t errlen)
{
    struct event addrs = {0};

    if (r->family != AF_INET && r->family != AF_INET6)
        return errmsg_set(err, errlen, "dns record with address family %u", r->family);
    if (r->protocol != IPPROTO_UDP && r->protocol != IPPROTO_TCP)
        return errmsg_set(err, errlen, "dns record with protocol %u", r->protocol);
    if (r->direction != DNS_DIR_QUERY && r->direction != DNS_DIR_ANSWER &&
        r->direction != DNS_DIR_ERROR)
        return errmsg_set(err, errlen, "dns record with direction %u", r->direction);
    if ((r->direction == DNS_DIR_ERROR) != (r->error != 0))
        return errmsg_set(err, errlen, "dns record of direction %u with error %u", r->direction,
                          r->error);
    if (r->direction == DNS_DIR_ERROR && (r->message_len || r->tcp_order != DNS_TCP_NONE))
        return errmsg_set(err, errlen, "dns error record with a %u-byte message, TCP order %u",
                          r->message_len, r->tcp_order);
    if (r->direction != DNS_DIR_ERROR &&
        (r->tcp_order > DNS_TCP_ORDER_MAX ||
         (r->protocol == IPPROTO_TCP) != (r->tcp_order != DNS_TCP_NONE)))
        return errmsg_set(err, errlen, "dns record of protocol %u with TCP order %u", r->protocol,
                          r->tcp_order);
    if (r->payload_len > DNS_RECORD_PAYLOAD_MAX || r->payload_len > r->message_len)
        return errmsg_set(err, errlen, "dns record with %u payload bytes of a %u-byte message",
                          r->payload_len, r->message_len);
    if (r->payload_len > len - DNS_RECORD_SIZE(0))
        return errmsg_set(err, errlen, "dns record of %zu bytes with %u payload bytes", len,
                          r->payload_len);
    out->timestamp_ns = r->hdr.ts_ns + (uint64_t)d->boot_to_real_ns;
    out->boot_ns = r->hdr.ts_ns;
    out->pid = r->hdr.pid;
    out->ppid = r->hdr.ppid;
    out->uid = r->hdr.uid;
    memcpy(out->command, r->hdr.comm, EVENT_COMM_LEN);
    out->command[EVENT_COMM_LEN - 1] = '\0';
    out->cgroup_id = r->hdr.cgroup_id;
    out->cookie = r->cookie;
    out->suppressed = r->suppressed;
    out->answer = r->direction == DNS_DIR_ANSWER;
    out->error = r->error;
    decode_addrs(&addrs, r->family, r->saddr, r->daddr);
    out->family = addrs.family;
    memcpy(out->saddr, addrs.saddr, 16);
    memcpy(out->daddr, addrs.daddr, 16);
    out->protocol = r->protocol;
    out->sport = r->sport;
    out->dport = r->dport;
    out->payload = r->payload;
    out->payload_len = r->payload_len;
    out->wire_len = r->message_len;
    out->truncated = r->payload_len < r->message_len;
    out->tcp_seq = r->tcp_seq;
    out->tcp_next = r->tcp_next;
    out->tcp_order = r->tcp_order;
    return 0;
}

int records_decode_dns(struct records_decoder *d, const void *data, size_t len,
                       struct records_dns *out, char *err, size_t errlen)
{
    const struct record_hdr *h = data;
    int rc;

    memset(out, 0, sizeof(*out));
    if (len < DNS_RECORD_SIZE(0))
        rc = errmsg_set(err, errlen, "dns record of %zu bytes, shorter than its header's %zu", len,
                        (size_t)DNS_RECORD_SIZE(0));
    else if (h->kind != RECORD_DNS)
        rc = errmsg_set(err, errlen, "record of kind %u is not a dns record", h->kind);
    else
        rc = decode_dns(d, data, len, out, err, errlen);
    if (rc == 0)
        return 0;
    __atomic_fetch_add(&d->malformed, 1, __ATOMIC_RELAXED);
    memset(out, 0, sizeof(*out));
    return rc;
}

/* An exec record's length: it ends with its argv (an argv said to be longer than the room
 * for it is decode_exec()'s to refuse). */
static size_t exec_record_size(const void *data)
{
    const struct exec_record *r = data;

    return EXEC_RECORD_SIZE(r->args_len < RECORD_ARGS_MAX ? r->args_len : RECORD_ARGS_MAX);
}

/*
 * Every record kind: its name in messages, the size of its struct (of its fixed part for
 * a kind whose records vary in length), the length a record of it says it has once that
 * part is there (NULL: its struct's), its decoder.
 */
static const struct {
    const char *name;
    size_t size;
    size_t (*size_of)(const void *data);
    int (*decode)(const struct records_decoder *d, const void *data, struct event *e, char *err,
                  size_t errlen);
} kinds[] = {
    [RECORD_CONNECT] = {"connect", sizeof(struct conn_record), NULL, decode_conn},
    [RECORD_ACCEPT] = {"accept", sizeof(struct conn_record), NULL, decode_conn},
    [RECORD_DROP] = {"drop", sizeof(struct drop_record), NULL, decode_drop},
    [RECORD_EXEC] = {"exec", EXEC_RECORD_SIZE(0), exec_record_size, decode_exec},
    [RECORD_EXIT] = {"exit", sizeof(struct exit_record), NULL, decode_exit},
    [RECORD_CLOSE] = {"close", sizeof(struct close_record), NULL, decode_close},
};

/* The one length check: a decoder is only ever handed a whole record of its kind (its struct,
 * or an exec record's fixed part and the argv it says it has). */
static int decode_kind(const struct records_decoder *d, const void *data, size_t len,
                       struct event *e, char *err, size_t errlen)
{
    const struct record_hdr *h = data;

    if (len < sizeof(*h))
        return errmsg_set(err, errlen, "record of %zu bytes, shorter than its %zu-byte header", len,
                          sizeof(*h));
    if (h->kind >= sizeof(kinds) / sizeof(kinds[0]) || !kinds[h->kind].decode)
        return errmsg_set(err, errlen, "record of unknown kind %u (%zu bytes)", h->kind, len);
    size_t need = kinds[h->kind].size;
    if (len >= need && kinds[h->kind].size_of)
        need = kinds[h->kind].size_of(data);
    if (len < need)
        return errmsg_set(err, errlen, "%s record of %zu bytes, shorter than its %zu",
                          kinds[h->kind].name, len, need);
    return kinds[h->kind].decode(d, data, e, err, errlen);
}

int records_decode(struct records_decoder *d, const void *data, size_t len, struct event *out,
                   char *err, size_t errlen)
{
    int rc;

    memset(out, 0, sizeof(*out));
    rc = decode_kind(d, data, len, out, err, errlen);
    if (rc == 0)
        return 0;
    __atomic_fetch_add(rc == -ENOMEM ? &d->no_memory : &d->malformed, 1, __ATOMIC_RELAXED);
    event_clear(out); /* what an exec record got before it failed */
    return rc;
}

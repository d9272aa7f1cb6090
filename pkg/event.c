/* Event model helpers: names of enum values, ownership, ids, addresses. */
#include "event.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"
#include "errmsg.h"

static const char *const type_names[EVENT_TYPE_COUNT] = {
    [EVENT_CONNECTION] = "connection",
    [EVENT_ACCEPT] = "accept",
    [EVENT_PACKET_DROP] = "packet_drop",
    [EVENT_EXEC] = "exec",
    [EVENT_EXIT] = "exit",
    [EVENT_CLOSE] = "close",
    [EVENT_DNS] = "dns",
};

const char *event_type_name(unsigned type)
{
    return type < EVENT_TYPE_COUNT ? type_names[type] : NULL;
}

enum event_type event_type_parse(const char *s, size_t len)
{
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        if (strlen(type_names[t]) == len && memcmp(type_names[t], s, len) == 0)
            return (enum event_type)t;
    return EVENT_TYPE_NONE;
}

unsigned event_addr_parse(const char *text, uint8_t addr[16])
{
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, text, addr) == 1)
        return EVENT_FAMILY_IPV4;
    if (inet_pton(AF_INET6, text, addr) == 1)
        return EVENT_FAMILY_IPV6;
    memset(addr, 0, 16);
    return EVENT_FAMILY_NONE;
}

const char *event_family_name(unsigned family)
{
    switch (family) {
    case EVENT_FAMILY_IPV4:
        return "ipv4";
    case EVENT_FAMILY_IPV6:
        return "ipv6";
    default:
        return NULL;
    }
}

const char *event_status_name(unsigned status)
{
    switch (status) {
    case EVENT_STATUS_ESTABLISHED:
        return "established";
    case EVENT_STATUS_FAILED:
        return "failed";
    case EVENT_STATUS_ATTEMPTED:
        return "attempted";
    case EVENT_STATUS_ANSWERED:
        return "answered";
    case EVENT_STATUS_TIMEOUT:
        return "timeout";
    case EVENT_STATUS_UNKNOWN:
        return "unknown";
    default:
        return NULL;
    }
}

const char *event_role_name(unsigned role)
{
    switch (role) {
    case EVENT_ROLE_CLIENT:
        return "client";
    case EVENT_ROLE_SERVER:
        return "server";
    default:
        return NULL;
    }
}

const char *event_reset_name(unsigned reset)
{
    switch (reset) {
    case EVENT_RESET_SENT:
        return "sent";
    case EVENT_RESET_RECEIVED:
        return "received";
    default:
        return NULL;
    }
}

const char *event_conn_error_name(unsigned err)
{
    switch (err) {
    case 0:
        return NULL;
    case ECONNREFUSED:
        return "refused";
    case ETIMEDOUT:
        return "timeout";
    case EHOSTUNREACH:
    case ENETUNREACH:
        return "unreachable";
    case ECONNRESET:
        return "reset";
    default: {
        /* glibc names every errno the kernel sets on a socket. */
        const char *name = strerrorname_np((int)err);
        return name;
    }
    }
}

const char *event_protocol_name(unsigned protocol)
{
    switch (protocol) {
    case IPPROTO_TCP:
        return "tcp";
    case IPPROTO_UDP:
        return "udp";
    case IPPROTO_ICMP:
        return "icmp";
    case IPPROTO_ICMPV6:
        return "icmpv6";
    case IPPROTO_IGMP:
        return "igmp";
    case IPPROTO_SCTP:
        return "sctp";
    case IPPROTO_UDPLITE:
        return "udplite";
    case IPPROTO_GRE:
        return "gre";
    case IPPROTO_ESP:
        return "esp";
    case IPPROTO_AH:
        return "ah";
    case IPPROTO_IPIP:
        return "ipip";
    case IPPROTO_IPV6:
        return "ipv6";
    default:
        return NULL;
    }
}

/* Whether str lives at the end of block (len bytes long): one allocation (event_pack_strings()).
 * Two live allocations never meet that way, so a pair that was never packed is not taken for
 * one. */
static bool packed_after(const char *block, uint32_t len, const char *str)
{
    return block && str == block + len;
}

void event_clear(struct event *e)
{
    if (e->type == EVENT_EXEC) {
        if (!packed_after(e->u.exec.args, e->u.exec.args_len, e->u.exec.filename))
            free(e->u.exec.filename);
        free(e->u.exec.args);
    } else if (e->type == EVENT_DNS) {
        if (!packed_after(e->u.dns.answers, e->u.dns.answers_len, e->u.dns.query))
            free(e->u.dns.query);
        free(e->u.dns.answers);
    }
    memset(e, 0, sizeof(*e));
}

/* Appends *str (NUL-terminated) to the len bytes of *block in one new allocation. */
static void pack_after(char **block, uint32_t len, char **str)
{
    if (!*block || !*str || packed_after(*block, len, *str))
        return;
    size_t n = strlen(*str) + 1;
    char *p = malloc((size_t)len + n);
    if (!p)
        return;
    memcpy(p, *block, len);
    memcpy(p + len, *str, n);
    free(*block);
    free(*str);
    *block = p;
    *str = p + len;
}

void event_pack_strings(struct event *e)
{
    if (e->type == EVENT_EXEC)
        pack_after(&e->u.exec.args, e->u.exec.args_len, &e->u.exec.filename);
    else if (e->type == EVENT_DNS)
        pack_after(&e->u.dns.answers, e->u.dns.answers_len, &e->u.dns.query);
}

/* A copy of len bytes plus a NUL (NULL stays NULL); false when out of memory. */
static bool dup_bytes(char **dst, const char *src, size_t len)
{
    *dst = NULL;
    if (!src)
        return true;
    if (!(*dst = malloc(len + 1)))
        return false;
    memcpy(*dst, src, len);
    (*dst)[len] = '\0';
    return true;
}

int event_copy(struct event *dst, const struct event *src)
{
    *dst = *src;
    bool ok = true;
    if (src->type == EVENT_EXEC) {
        const char *f = src->u.exec.filename;
        ok = dup_bytes(&dst->u.exec.filename, f, f ? strlen(f) : 0);
        ok = dup_bytes(&dst->u.exec.args, src->u.exec.args, src->u.exec.args_len) && ok;
    } else if (src->type == EVENT_DNS) {
        const char *q = src->u.dns.query;
        ok = dup_bytes(&dst->u.dns.query, q, q ? strlen(q) : 0);
        ok = dup_bytes(&dst->u.dns.answers, src->u.dns.answers, src->u.dns.answers_len) && ok;
    }
    if (ok)
        return 0;
    event_clear(dst);
    return -ENOMEM;
}

static bool str_equal(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool k8s_equal(const struct event_k8s *a, const struct event_k8s *b)
{
    return str_equal(a->node_name, b->node_name) && str_equal(a->pod_name, b->pod_name) &&
           str_equal(a->namespace, b->namespace) && str_equal(a->container_id, b->container_id) &&
           str_equal(a->pod_uid, b->pod_uid) && str_equal(a->workload, b->workload) &&
           str_equal(a->workload_kind, b->workload_kind) && str_equal(a->app, b->app) &&
           str_equal(a->ips, b->ips) && a->host_network == b->host_network;
}

static bool peer_equal(const struct event_peer *a, const struct event_peer *b)
{
    return str_equal(a->pod, b->pod) && str_equal(a->namespace, b->namespace) &&
           str_equal(a->workload, b->workload) && str_equal(a->workload_kind, b->workload_kind) &&
           str_equal(a->node, b->node) && str_equal(a->service, b->service) &&
           str_equal(a->dns, b->dns);
}

static bool details_equal(const struct event *a, const struct event *b)
{
    switch (a->type) {
    case EVENT_CONNECTION:
        return a->u.conn.latency_ns == b->u.conn.latency_ns &&
               str_equal(a->u.conn.error, b->u.conn.error);
    case EVENT_CLOSE:
        return a->u.close.role == b->u.close.role && a->u.close.reset == b->u.close.reset &&
               a->u.close.retransmits == b->u.close.retransmits &&
               a->u.close.srtt_us == b->u.close.srtt_us &&
               a->u.close.duration_ns == b->u.close.duration_ns &&
               a->u.close.bytes_sent == b->u.close.bytes_sent &&
               a->u.close.bytes_received == b->u.close.bytes_received;
    case EVENT_PACKET_DROP:
        return a->u.drop.reason_code == b->u.drop.reason_code &&
               a->u.drop.suppressed == b->u.drop.suppressed &&
               str_equal(a->u.drop.reason, b->u.drop.reason) &&
               str_equal(a->u.drop.location, b->u.drop.location);
    case EVENT_EXEC:
        return str_equal(a->u.exec.filename, b->u.exec.filename) &&
               a->u.exec.args_len == b->u.exec.args_len &&
               a->u.exec.args_truncated == b->u.exec.args_truncated &&
               a->u.exec.filename_truncated == b->u.exec.filename_truncated &&
               a->u.exec.has_euid == b->u.exec.has_euid &&
               (!a->u.exec.has_euid || a->u.exec.euid == b->u.exec.euid) &&
               (!a->u.exec.args_len ||
                (a->u.exec.args && b->u.exec.args &&
                 memcmp(a->u.exec.args, b->u.exec.args, a->u.exec.args_len) == 0));
    case EVENT_EXIT:
        return a->u.exit.exit_code == b->u.exit.exit_code && a->u.exit.signal == b->u.exit.signal &&
               a->u.exit.duration_ns == b->u.exit.duration_ns &&
               a->u.exit.core_dumped == b->u.exit.core_dumped;
    case EVENT_DNS:
        return str_equal(a->u.dns.query, b->u.dns.query) &&
               a->u.dns.query_type == b->u.dns.query_type && a->u.dns.rcode == b->u.dns.rcode &&
               a->u.dns.transaction_id == b->u.dns.transaction_id &&
               a->u.dns.latency_ns == b->u.dns.latency_ns && a->u.dns.tc == b->u.dns.tc &&
               a->u.dns.answers_truncated == b->u.dns.answers_truncated &&
               str_equal(a->u.dns.error, b->u.dns.error) && a->u.dns.opcode == b->u.dns.opcode &&
               a->u.dns.answers_len == b->u.dns.answers_len &&
               (!a->u.dns.answers_len ||
                (a->u.dns.answers && b->u.dns.answers &&
                 memcmp(a->u.dns.answers, b->u.dns.answers, a->u.dns.answers_len) == 0));
    default:
        return true;
    }
}

bool event_equal(const struct event *a, const struct event *b)
{
    return a->id == b->id && a->timestamp_ns == b->timestamp_ns && a->type == b->type &&
           a->family == b->family && a->protocol == b->protocol && a->status == b->status &&
           a->pid == b->pid && a->ppid == b->ppid && a->uid == b->uid &&
           a->cgroup_id == b->cgroup_id && a->sport == b->sport && a->dport == b->dport &&
           strncmp(a->command, b->command, sizeof(a->command)) == 0 &&
           str_equal(a->node, b->node) && k8s_equal(&a->k8s, &b->k8s) &&
           peer_equal(&a->peer, &b->peer) && memcmp(a->saddr, b->saddr, sizeof(a->saddr)) == 0 &&
           memcmp(a->daddr, b->daddr, sizeof(a->daddr)) == 0 && details_equal(a, b);
}

void event_move(struct event *dst, struct event *src)
{
    *dst = *src;
    memset(src, 0, sizeof(*src));
}

/* splitmix64's finaliser: a bijection on 64-bit integers. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void event_id_gen_init(struct event_id_gen *g)
{
    g->counter = 0;
    if (getrandom(&g->seed, sizeof(g->seed), 0) != sizeof(g->seed)) {
        g->seed = mix64(clock_realtime_ns() ^ ((uint64_t)getpid() << 32));
    }
}

uint64_t event_id_next(struct event_id_gen *g)
{
    return mix64(g->seed + __atomic_fetch_add(&g->counter, 1, __ATOMIC_RELAXED));
}

char *event_put_ipv4(char *p, const uint8_t a[4])
{
    for (size_t i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (i)
            *p++ = '.';
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
    }
    return p;
}

const char *event_addr_str(unsigned family, const uint8_t addr[16], char *buf, size_t len)
{
    if (family == EVENT_FAMILY_IPV4) {
        /* What inet_ntop() writes, without its trip through sprintf() (the pod tables of every
         * batch, the flows' and joins' answers). */
        char text[INET_ADDRSTRLEN], *p = event_put_ipv4(text, addr);
        *p++ = '\0';
        if ((size_t)(p - text) > len)
            return NULL;
        memcpy(buf, text, (size_t)(p - text));
        return buf;
    }
    if (family != EVENT_FAMILY_IPV6 || !inet_ntop(AF_INET6, addr, buf, (socklen_t)len))
        return NULL;
    return buf;
}

bool event_node_name_valid(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || s[0] == ' ' || s[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n;) {
        size_t seq = buf_utf8_seq(s + i, n - i);
        if (seq == 0 || buf_utf8_is_control(s + i, seq))
            return false;
        i += seq;
    }
    return true;
}

/* NUL-separated strings of len bytes: each at most max bytes; *count gets how many. */
static bool strings_within(const char *s, size_t len, size_t max, size_t *count)
{
    *count = 0;
    for (size_t i = 0; i < len;) {
        const char *nul = memchr(s + i, '\0', len - i);
        size_t n = nul ? (size_t)(nul - (s + i)) : len - i;
        if (n > max)
            return false;
        ++*count;
        i += n + 1;
    }
    return true;
}

/* The interned names of e that event_check_bounds() bounds, by name; NULL when unset. */
#define BOUNDED_NAMES 18
static void bounded_names(const struct event *e, const char *v[BOUNDED_NAMES])
{
    const char *const all[BOUNDED_NAMES] = {
        e->k8s.pod_name,
        e->k8s.namespace,
        e->k8s.container_id,
        e->k8s.pod_uid,
        e->k8s.workload,
        e->k8s.workload_kind,
        e->k8s.app,
        e->k8s.ips,
        e->peer.pod,
        e->peer.namespace,
        e->peer.workload,
        e->peer.workload_kind,
        e->peer.node,
        e->peer.service,
        e->peer.dns,
        e->type == EVENT_CONNECTION ? e->u.conn.error
        : e->type == EVENT_DNS      ? e->u.dns.error
                                    : NULL,
        e->type == EVENT_PACKET_DROP ? e->u.drop.reason : NULL,
        e->type == EVENT_PACKET_DROP ? e->u.drop.location : NULL,
    };
    memcpy(v, all, sizeof(all));
}

static const char *const bounded_name_keys[BOUNDED_NAMES] = {
    "k8s_pod_name", "k8s_namespace",     "k8s_container_id", "k8s_pod_uid",
    "k8s_workload", "k8s_workload_kind", "k8s_app",          "k8s_ips",
    "peer_pod",     "peer_namespace",    "peer_workload",    "peer_workload_kind",
    "peer_node",    "peer_service",      "peer_dns",         "error",
    "drop_reason",  "location",
};

int event_check_bounds(const struct event *e, const struct event *prev, char *err, size_t errlen)
{
    const char *v[BOUNDED_NAMES], *pv[BOUNDED_NAMES] = {0};
    size_t n;

    if (e->node && !(prev && e->node == prev->node) &&
        !event_node_name_valid(e->node, EVENT_NODE_MAX))
        return errmsg_set(err, errlen,
                          "node: not a node name (1-%d bytes of UTF-8 without control "
                          "characters or surrounding spaces)",
                          EVENT_NODE_MAX);
    if (e->k8s.node_name && !(prev && e->k8s.node_name == prev->k8s.node_name) &&
        !event_node_name_valid(e->k8s.node_name, EVENT_NODE_MAX))
        return errmsg_set(err, errlen, "k8s_node_name: not a node name");
    bounded_names(e, v);
    if (prev)
        bounded_names(prev, pv);
    for (size_t i = 0; i < BOUNDED_NAMES; i++)
        if (v[i] && v[i] != pv[i] && (n = strlen(v[i])) > EVENT_NAME_MAX)
            return errmsg_set(err, errlen, "%s: %zu bytes, at most %d", bounded_name_keys[i], n,
                              EVENT_NAME_MAX);
    if (e->type == EVENT_EXEC) {
        if (e->u.exec.filename && (n = strlen(e->u.exec.filename)) > EVENT_FILENAME_MAX)
            return errmsg_set(err, errlen, "filename: %zu bytes, at most %d", n,
                              EVENT_FILENAME_MAX);
        /* The kernel copies EVENT_ARGS_MAX bytes; an agent terminates a string they cut. */
        if (e->u.exec.args_len > EVENT_ARGS_MAX + 1)
            return errmsg_set(err, errlen, "args: %u bytes, at most %d", e->u.exec.args_len,
                              EVENT_ARGS_MAX + 1);
        if (strings_within(e->u.exec.args, e->u.exec.args_len, EVENT_ARGS_MAX, &n) &&
            n > EVENT_ARGC_MAX)
            return errmsg_set(err, errlen, "args: %zu strings, at most %d", n, EVENT_ARGC_MAX);
    } else if (e->type == EVENT_DNS) {
        if (e->u.dns.query && (n = strlen(e->u.dns.query)) > EVENT_DNS_NAME_MAX)
            return errmsg_set(err, errlen, "query: %zu characters, at most %d", n,
                              EVENT_DNS_NAME_MAX);
        if (!strings_within(e->u.dns.answers, e->u.dns.answers_len, EVENT_DNS_NAME_MAX, &n))
            return errmsg_set(err, errlen, "answers: one over %d characters", EVENT_DNS_NAME_MAX);
    }
    return 0;
}

/*
 * libFuzzer target for pkg/dns: arbitrary bytes as a UDP message and as a
 * TCP segment. Invariants: every name is printable ASCII without uppercase,
 * at most DNS_NAME_TEXT_MAX characters and at most DNS_NAME_MAX once its
 * escapes are read back; a prefix of a message that parses gives the same
 * header and question and a prefix of its answers (or fails as truncated);
 * the TCP form is the UDP form behind its length; and a response, matched by
 * the tracker to a query of its own question, gives an event whose answers
 * are in-chain addresses or names and land in the name cache under the
 * query's name.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

/* Checks a name and returns its length with each escape counted as one byte. */
static size_t check_name(const char *s)
{
    size_t len = strlen(s), bytes = 0;
    if (len == 0 || len > DNS_NAME_TEXT_MAX)
        abort();
    for (size_t i = 0; i < len; i++, bytes++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || (c >= 'A' && c <= 'Z'))
            abort();
        if (strchr("\"();@$", c))
            abort(); /* dig escapes these */
        if (c != '\\')
            continue;
        if (i + 1 < len && strchr(".\\\"();@$", s[i + 1])) {
            i++;
        } else if (i + 3 < len && s[i + 1] >= '0' && s[i + 1] <= '2' && s[i + 2] >= '0' &&
                   s[i + 2] <= '9' && s[i + 3] >= '0' && s[i + 3] <= '9') {
            i += 3;
        } else {
            abort(); /* a lone backslash */
        }
    }
    if (bytes > DNS_NAME_MAX && strcmp(s, ".") != 0)
        abort();
    return bytes;
}

static void check_message(const struct dns_message *m)
{
    check_name(m->qname);
    if (m->answer_count > DNS_ANSWERS_MAX)
        abort();
    for (unsigned i = 0; i < m->answer_count; i++) {
        const struct dns_answer *a = &m->answers[i];
        check_name(a->owner);
        if (a->type == DNS_TYPE_CNAME || a->type == DNS_TYPE_PTR || a->type == DNS_TYPE_NS ||
            a->type == DNS_TYPE_MX || a->type == DNS_TYPE_SRV)
            check_name(a->target);
        else if ((a->type != DNS_TYPE_A && a->type != DNS_TYPE_AAAA) || a->target[0])
            abort();
    }
}

static bool same_answer(const struct dns_answer *x, const struct dns_answer *y)
{
    return x->type == y->type && x->class == y->class && x->ttl == y->ttl &&
           memcmp(x->addr, y->addr, sizeof(x->addr)) == 0 && strcmp(x->owner, y->owner) == 0 &&
           strcmp(x->target, y->target) == 0 && (!x->in_chain || y->in_chain);
}

/*
 * A prefix parses to a prefix of the whole, or fails only as truncated. Its
 * rcode is the whole's, or only the header's 4 bits when the cut took the
 * OPT record that extends them.
 */
static void check_prefix(const struct dns_message *whole, const struct dns_message *part, int rc)
{
    if (rc == DNS_ERR_TRUNCATED)
        return;
    if (rc != DNS_OK || part->id != whole->id ||
        (part->rcode != whole->rcode && part->rcode != (whole->rcode & 0x0f)) ||
        part->qtype != whole->qtype || strcmp(part->qname, whole->qname) != 0 ||
        part->answer_count > whole->answer_count)
        abort();
    for (unsigned i = 0; i < part->answer_count; i++)
        if (!same_answer(&part->answers[i], &whole->answers[i]))
            abort();
    if (part->answer_count < whole->answer_count && !part->truncated)
        abort();
}

static bool same_message(const struct dns_message *x, const struct dns_message *y)
{
    if (x->id != y->id || x->qr != y->qr || x->rcode != y->rcode || x->qtype != y->qtype ||
        x->truncated != y->truncated || strcmp(x->qname, y->qname) != 0 ||
        x->answer_count != y->answer_count)
        return false;
    for (unsigned i = 0; i < x->answer_count; i++)
        if (!same_answer(&x->answers[i], &y->answers[i]) ||
            x->answers[i].in_chain != y->answers[i].in_chain)
            return false;
    return true;
}

static void drop_timeout(struct event *e, void *arg)
{
    (void)arg;
    event_clear(e);
}

/* The response m, answered to a query of its own question: the event and the cache. */
static void check_tracked(const struct dns_message *m, uint64_t ts)
{
    static struct dns_tracker *t;
    static struct dns_names *c;
    static struct dns_message q;
    if (!t && !(t = dns_tracker_new(&(struct dns_tracker_config){.max_pending = 8})))
        abort();
    if (!c && !(c = dns_names_new(&(struct dns_names_config){.max_entries = 64})))
        abort();
    struct dns_key k = {.cookie = 1,
                        .family = EVENT_FAMILY_IPV4,
                        .protocol = IPPROTO_UDP,
                        .server_port = 53,
                        .server = {127, 0, 0, 53}};
    struct event attr = {.pid = 1, .cgroup_id = 7}, out;
    memcpy(&q, m, sizeof(q));
    q.qr = false;
    if (dns_tracker_query(t, &k, &q, &attr, ts) != 1)
        abort();
    memset(&out, 0, sizeof(out));
    uint32_t ttl;
    if (dns_tracker_answer(t, &k, m, ts + 1, &out, &ttl) != 1)
        abort();
    if (out.type != EVENT_DNS || out.status != EVENT_STATUS_ANSWERED ||
        strcmp(out.u.dns.query, m->qname) != 0 || out.u.dns.latency_ns != 1 ||
        out.u.dns.rcode != m->rcode || (out.u.dns.answers_len && !out.u.dns.answers))
        abort();
    const char *s = out.u.dns.answers, *end = s ? s + out.u.dns.answers_len : NULL;
    unsigned n = 0, chain = 0;
    for (unsigned i = 0; i < m->answer_count; i++)
        chain += m->answers[i].in_chain;
    for (; s && s < end; s += strlen(s) + 1, n++) {
        if (!memchr(s, '\0', (size_t)(end - s)))
            abort();
        uint8_t addr[16];
        if (inet_pton(AF_INET, s, addr) != 1 && inet_pton(AF_INET6, s, addr) != 1)
            check_name(s);
    }
    if (n != chain)
        abort();
    unsigned addrs = 0;
    for (unsigned i = 0; i < m->answer_count; i++)
        addrs += m->answers[i].in_chain &&
                 (m->answers[i].type == DNS_TYPE_A || m->answers[i].type == DNS_TYPE_AAAA);
    size_t added = dns_names_add(c, 7, &out, ttl, ts);
    if (added != (m->rcode == DNS_RCODE_NOERROR ? addrs : 0))
        abort();
    /* Addresses past the kept records: only when the answer was cut, each a real A/AAAA. */
    if (m->extra_count > DNS_EXTRA_ADDRS_MAX || (m->extra_count && !m->truncated))
        abort();
    for (unsigned i = 0; i < m->extra_count; i++)
        if (m->extra[i].type != DNS_TYPE_A && m->extra[i].type != DNS_TYPE_AAAA)
            abort();
    if (dns_names_add_more(c, 7, &out, m, ts) !=
        (m->rcode == DNS_RCODE_NOERROR ? m->extra_count : 0))
        abort();
    if (added) {
        for (unsigned i = 0; i < m->answer_count; i++) {
            const struct dns_answer *a = &m->answers[i];
            if (!a->in_chain || (a->type != DNS_TYPE_A && a->type != DNS_TYPE_AAAA))
                continue;
            unsigned fam = a->type == DNS_TYPE_A ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6;
            const char *name = dns_names_lookup(c, 7, fam, a->addr, ts);
            /* Another in-chain record of the same answer may have named it first: same name. */
            if (!name || strcmp(name, m->qname) != 0)
                abort();
        }
    }
    event_clear(&out);
    dns_tracker_expire(t, ts + 10 * DNS_TIMEOUT_DEFAULT_NS, drop_timeout, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct dns_message whole, part, tcp;
    static uint64_t ts;
    ts += 1000000;

    int rc = dns_parse(data, size, &whole);
    if (rc > 0 || rc <= -DNS_PARSE_ERRORS || !dns_parse_error_name(rc))
        abort();
    if (rc == DNS_OK) {
        check_message(&whole);
        if (whole.wire_len != size)
            abort();
        size_t cut = size ? (size_t)data[size - 1] * size / 256 : 0;
        check_prefix(&whole, &part, dns_parse(data, cut, &part));
        if (whole.qr)
            check_tracked(&whole, ts);
    }

    /* The TCP form is the UDP form of the bytes behind the prefix. */
    int trc = dns_parse_tcp(data, size, &tcp);
    if (trc > 0 || trc <= -DNS_PARSE_ERRORS)
        abort();
    if (size >= 2) {
        size_t wire = (size_t)(data[0] << 8 | data[1]);
        size_t body = size - 2 < wire ? size - 2 : wire;
        int urc = wire < DNS_HEADER_LEN ? DNS_ERR_BAD_TCP_LENGTH : dns_parse(data + 2, body, &part);
        if (urc != trc || (trc == DNS_OK && (!same_message(&tcp, &part) || tcp.wire_len != wire)))
            abort();
        if (trc == DNS_OK)
            check_message(&tcp);
    }
    return 0;
}

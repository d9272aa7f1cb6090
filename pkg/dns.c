/*
 * DNS parsing, query/answer matching and the name cache (see dns.h).
 *
 * The parser reads only within [p, p + len): every read is preceded by a
 * bounds check, names are built in fixed arrays, and compression pointers
 * must point strictly before the part of the name being read, so the
 * position only goes down from jump to jump and every name ends.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "clock.h"
#include "intern.h"

/* ---- Names of types and rcodes ------------------------------------------ */

struct code_name {
    uint16_t code;
    const char *name;
};

static const struct code_name type_names[] = {
    {DNS_TYPE_A, "A"},
    {DNS_TYPE_NS, "NS"},
    {DNS_TYPE_CNAME, "CNAME"},
    {DNS_TYPE_SOA, "SOA"},
    {DNS_TYPE_PTR, "PTR"},
    {13, "HINFO"},
    {DNS_TYPE_MX, "MX"},
    {DNS_TYPE_TXT, "TXT"},
    {DNS_TYPE_AAAA, "AAAA"},
    {DNS_TYPE_SRV, "SRV"},
    {DNS_TYPE_NAPTR, "NAPTR"},
    {DNS_TYPE_OPT, "OPT"},
    {DNS_TYPE_DS, "DS"},
    {DNS_TYPE_RRSIG, "RRSIG"},
    {47, "NSEC"},
    {DNS_TYPE_DNSKEY, "DNSKEY"},
    {50, "NSEC3"},
    {52, "TLSA"},
    {DNS_TYPE_SVCB, "SVCB"},
    {DNS_TYPE_HTTPS, "HTTPS"},
    {DNS_TYPE_AXFR, "AXFR"},
    {DNS_TYPE_ANY, "ANY"},
    {DNS_TYPE_CAA, "CAA"},
};

static const struct code_name rcode_names[] = {
    {DNS_RCODE_NOERROR, "NOERROR"},   {DNS_RCODE_FORMERR, "FORMERR"},
    {DNS_RCODE_SERVFAIL, "SERVFAIL"}, {DNS_RCODE_NXDOMAIN, "NXDOMAIN"},
    {DNS_RCODE_NOTIMP, "NOTIMP"},     {DNS_RCODE_REFUSED, "REFUSED"},
    {DNS_RCODE_YXDOMAIN, "YXDOMAIN"}, {DNS_RCODE_YXRRSET, "YXRRSET"},
    {DNS_RCODE_NXRRSET, "NXRRSET"},   {DNS_RCODE_NOTAUTH, "NOTAUTH"},
    {DNS_RCODE_NOTZONE, "NOTZONE"},   {DNS_RCODE_DSOTYPENI, "DSOTYPENI"},
    {DNS_RCODE_BADVERS, "BADVERS"},   {DNS_RCODE_BADKEY, "BADKEY"},
    {DNS_RCODE_BADTIME, "BADTIME"},   {DNS_RCODE_BADMODE, "BADMODE"},
    {DNS_RCODE_BADNAME, "BADNAME"},   {DNS_RCODE_BADALG, "BADALG"},
    {DNS_RCODE_BADTRUNC, "BADTRUNC"}, {DNS_RCODE_BADCOOKIE, "BADCOOKIE"},
    {DNS_RCODE_BADVERS, "BADSIG"}, /* 16's TSIG name: parsed, never printed (the first wins) */
};

/* RFC 1035, 1996 (NOTIFY), 2136 (UPDATE), 8490 (DSO); 3 is unassigned. */
static const struct code_name opcode_names[] = {
    {0, "QUERY"}, {1, "IQUERY"}, {2, "STATUS"}, {4, "NOTIFY"}, {5, "UPDATE"}, {6, "DSO"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *code_name(const struct code_name *t, size_t n, uint16_t code, char *buf,
                             size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].code == code)
            return t[i].name;
    if (buf && len)
        snprintf(buf, len, "%u", (unsigned)code);
    return buf;
}

static int code_parse(const struct code_name *t, size_t n, const char *s, size_t len, unsigned max,
                      uint16_t *out)
{
    if (len == 0)
        return -EINVAL;
    if (s[0] >= '0' && s[0] <= '9') {
        unsigned v = 0;
        for (size_t i = 0; i < len; i++) {
            if (s[i] < '0' || s[i] > '9' || i >= 5)
                return -EINVAL;
            v = v * 10 + (unsigned)(s[i] - '0');
        }
        if (v > max)
            return -EINVAL;
        *out = (uint16_t)v;
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        if (strlen(t[i].name) == len && strncasecmp(t[i].name, s, len) == 0) {
            *out = t[i].code;
            return 0;
        }
    return -EINVAL;
}

const char *dns_type_name(uint16_t type, char *buf, size_t len)
{
    return code_name(type_names, COUNT(type_names), type, buf, len);
}

const char *dns_rcode_name(uint16_t rcode, char *buf, size_t len)
{
    return code_name(rcode_names, COUNT(rcode_names), rcode, buf, len);
}

const char *dns_opcode_name(uint8_t opcode, char *buf, size_t len)
{
    return code_name(opcode_names, COUNT(opcode_names), opcode, buf, len);
}

int dns_opcode_parse(const char *s, size_t len, uint16_t *out)
{
    return code_parse(opcode_names, COUNT(opcode_names), s, len, 15, out);
}

int dns_type_parse(const char *s, size_t len, uint16_t *out)
{
    return code_parse(type_names, COUNT(type_names), s, len, 65535, out);
}

int dns_rcode_parse(const char *s, size_t len, uint16_t *out)
{
    return code_parse(rcode_names, COUNT(rcode_names), s, len, 4095, out);
}

/* ---- Parser --------------------------------------------------------------- */

static const char *const parse_error_names[DNS_PARSE_ERRORS] = {
    "ok",           "truncated",       "no_question",           "bad_label", "name_too_long",
    "pointer_loop", "forward_pointer", "pointer_out_of_bounds", "bad_rdata", "bad_tcp_length",
};

const char *dns_parse_error_name(int err)
{
    return err <= 0 && err > -DNS_PARSE_ERRORS ? parse_error_names[-err] : NULL;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A printable byte dig escapes with a backslash inside a label (BIND's dns_name_totext). */
static bool special_in_label(uint8_t c)
{
    return c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' || c == '@' ||
           c == '$';
}

/* Appends one label byte in text form: lowercase, escaped as dig does. */
size_t dns_put_label_byte(char *out, size_t o, uint8_t c)
{
    if (c >= 'A' && c <= 'Z') {
        out[o++] = (char)(c + ('a' - 'A'));
    } else if (special_in_label(c)) {
        out[o++] = '\\';
        out[o++] = (char)c;
    } else if (c > 0x20 && c < 0x7f) {
        out[o++] = (char)c;
    } else {
        out[o++] = '\\';
        out[o++] = (char)('0' + c / 100);
        out[o++] = (char)('0' + c / 10 % 10);
        out[o++] = (char)('0' + c % 10);
    }
    return o;
}

/*
 * Reads the name at *off into out (DNS_NAME_TEXT_MAX + 1 bytes) and moves
 * *off past the bytes the name occupies in place (up to and including its
 * first pointer). DNS_ERR_TRUNCATED when the bytes end inside the name.
 */
static int read_name(const uint8_t *p, size_t len, size_t *off, char *out)
{
    size_t pos = *off, segment = *off, end = 0, wire = 0, o = 0;
    unsigned hops = 0;
    for (;;) {
        if (pos >= len)
            return DNS_ERR_TRUNCATED;
        uint8_t c = p[pos];
        if ((c & 0xc0) == 0xc0) {
            if (pos + 1 >= len)
                return DNS_ERR_TRUNCATED;
            size_t target = ((size_t)(c & 0x3f) << 8) | p[pos + 1];
            if (target == pos || (target < pos && target >= segment))
                return DNS_ERR_POINTER_LOOP;
            if (target > pos)
                return target >= len ? DNS_ERR_POINTER_OUT_OF_BOUNDS : DNS_ERR_FORWARD_POINTER;
            if (++hops > DNS_POINTER_HOPS)
                return DNS_ERR_POINTER_LOOP;
            if (!end)
                end = pos + 2;
            pos = segment = target;
            continue;
        }
        if (c & 0xc0)
            return DNS_ERR_BAD_LABEL; /* 0x40 (extended) and 0x80: not in use */
        if (c == 0) {
            if (o == 0)
                out[o++] = '.';
            out[o] = '\0';
            *off = end ? end : pos + 1;
            return DNS_OK;
        }
        wire += 1u + c;
        if (wire + 1 > DNS_NAME_WIRE_MAX)
            return DNS_ERR_NAME_TOO_LONG;
        if (pos + 1 + c > len)
            return DNS_ERR_TRUNCATED;
        if (o)
            out[o++] = '.';
        for (size_t i = 0; i < c; i++)
            o = dns_put_label_byte(out, o, p[pos + 1 + i]);
        pos += 1u + c;
    }
}

static void parse_header(const uint8_t *p, size_t len, struct dns_message *m)
{
    m->id = be16(p);
    m->qr = p[2] & 0x80;
    m->opcode = (p[2] >> 3) & 0x0f;
    m->aa = p[2] & 0x04;
    m->tc = p[2] & 0x02;
    m->rd = p[2] & 0x01;
    m->ra = p[3] & 0x80;
    m->rcode = p[3] & 0x0f;
    m->qdcount = be16(p + 4);
    m->ancount = be16(p + 6);
    m->nscount = be16(p + 8);
    m->arcount = be16(p + 10);
}

/*
 * Reads one resource record at *off; keeps it in m when it is an address (A,
 * AAAA) or names one (CNAME, PTR, NS, MX, SRV: the name it points at, after
 * MX's preference and SRV's priority, weight and port). DNS_ERR_TRUNCATED
 * when the bytes end inside it.
 */
static int read_answer(const uint8_t *p, size_t len, size_t *off, struct dns_message *m)
{
    struct dns_answer *a = &m->answers[m->answer_count];
    int rc = read_name(p, len, off, a->owner);
    if (rc < 0)
        return rc;
    if (*off + 10 > len)
        return DNS_ERR_TRUNCATED;
    const uint8_t *h = p + *off;
    uint16_t type = be16(h), rdlen = be16(h + 8);
    size_t rdata = *off + 10;
    if (rdata + rdlen > len)
        return DNS_ERR_TRUNCATED;
    *off = rdata + rdlen;
    a->type = type;
    a->class = be16(h + 2);
    a->ttl = be32(h + 4);
    a->in_chain = false;
    a->target[0] = '\0';
    memset(a->addr, 0, sizeof(a->addr));
    switch (type) {
    case DNS_TYPE_A:
    case DNS_TYPE_AAAA:
        if (rdlen != (type == DNS_TYPE_A ? 4 : 16))
            return DNS_ERR_BAD_RDATA;
        memcpy(a->addr, p + rdata, rdlen);
        break;
    case DNS_TYPE_CNAME:
    case DNS_TYPE_PTR:
    case DNS_TYPE_NS:
    case DNS_TYPE_MX:
    case DNS_TYPE_SRV: {
        size_t skip = type == DNS_TYPE_MX ? 2 : type == DNS_TYPE_SRV ? 6 : 0;
        if (rdlen < skip)
            return DNS_ERR_BAD_RDATA;
        size_t t = rdata + skip;
        /* The target's in-place bytes must fill the rdata exactly. */
        rc = read_name(p, rdata + rdlen, &t, a->target);
        if (rc == DNS_ERR_TRUNCATED || (rc == DNS_OK && t != rdata + rdlen))
            return DNS_ERR_BAD_RDATA;
        if (rc < 0)
            return rc;
        break;
    }
    default:
        return DNS_OK; /* skipped by its rdlength */
    }
    m->answer_count++;
    return DNS_OK;
}

/*
 * Steps over one resource record at *off: its type and TTL in *type and *ttl.
 * DNS_ERR_TRUNCATED when the bytes end inside it.
 */
static int skip_record(const uint8_t *p, size_t len, size_t *off, char *name, uint16_t *type,
                       uint32_t *ttl)
{
    int rc = read_name(p, len, off, name);
    if (rc < 0)
        return rc;
    if (*off + 10 > len)
        return DNS_ERR_TRUNCATED;
    const uint8_t *h = p + *off;
    size_t end = *off + 10 + be16(h + 8);
    if (end > len)
        return DNS_ERR_TRUNCATED;
    *type = be16(h);
    *ttl = be32(h + 4);
    *off = end;
    return DNS_OK;
}

/*
 * The extended RCODE of an EDNS answer (RFC 6891): the OPT record of the
 * additional section carries its upper 8 bits in the top byte of its TTL.
 * From the record after the answers read (at *off, answers_left of them
 * still to step over); the message's rcode stays the header's 4 bits when
 * the sections end early (the kernel copies the first 512 bytes) or a record
 * there does not parse: nothing else is read from them.
 */
static void read_extended_rcode(const uint8_t *p, size_t len, size_t off, unsigned answers_left,
                                struct dns_message *m)
{
    char name[DNS_NAME_TEXT_MAX + 1];
    uint16_t type;
    uint32_t ttl;
    /* Each record takes at least 11 bytes, so the loop is bounded by len. */
    for (unsigned i = 0; i < answers_left + m->nscount; i++)
        if (skip_record(p, len, &off, name, &type, &ttl) < 0)
            return;
    for (unsigned i = 0; i < m->arcount; i++) {
        if (skip_record(p, len, &off, name, &type, &ttl) < 0)
            return;
        if (type == DNS_TYPE_OPT && strcmp(name, ".") == 0) {
            m->rcode = (uint16_t)((ttl >> 24) << 4 | (m->rcode & 0x0f));
            return;
        }
    }
}

/* Marks the answers reachable from the question's name through CNAMEs. */
static void mark_chain(struct dns_message *m)
{
    bool changed = true;
    for (unsigned pass = 0; changed && pass <= m->answer_count; pass++) {
        changed = false;
        for (unsigned i = 0; i < m->answer_count; i++) {
            struct dns_answer *a = &m->answers[i];
            if (a->in_chain)
                continue;
            bool in = strcmp(a->owner, m->qname) == 0;
            for (unsigned j = 0; !in && j < m->answer_count; j++)
                in = m->answers[j].in_chain && m->answers[j].type == DNS_TYPE_CNAME &&
                     strcmp(m->answers[j].target, a->owner) == 0;
            if (in)
                a->in_chain = changed = true;
        }
    }
}

/* Whether owner is in the chain the kept records make (see mark_chain()). */
static bool owner_in_chain(const struct dns_message *m, const char *owner)
{
    if (strcmp(owner, m->qname) == 0)
        return true;
    for (unsigned j = 0; j < m->answer_count; j++)
        if (m->answers[j].in_chain && m->answers[j].type == DNS_TYPE_CNAME &&
            strcmp(m->answers[j].target, owner) == 0)
            return true;
    return false;
}

/*
 * The in-chain A/AAAA records among the left answer records at off, past
 * those kept (m->extra); stops at the first that does not parse. Each record
 * takes at least 11 bytes, so the loop is bounded by len.
 */
static void read_extra_addrs(const uint8_t *p, size_t len, size_t off, unsigned left,
                             struct dns_message *m)
{
    char owner[DNS_NAME_TEXT_MAX + 1];
    for (unsigned i = 0; i < left && m->extra_count < DNS_EXTRA_ADDRS_MAX; i++) {
        if (read_name(p, len, &off, owner) < 0 || off + 10 > len)
            return;
        const uint8_t *h = p + off;
        uint16_t type = be16(h), rdlen = be16(h + 8);
        size_t rdata = off + 10;
        if (rdata + rdlen > len)
            return;
        off = rdata + rdlen;
        if (!((type == DNS_TYPE_A && rdlen == 4) || (type == DNS_TYPE_AAAA && rdlen == 16)) ||
            !owner_in_chain(m, owner))
            continue;
        struct dns_extra_addr *x = &m->extra[m->extra_count++];
        x->type = type;
        x->ttl = be32(h + 4);
        memset(x->addr, 0, sizeof(x->addr));
        memcpy(x->addr, p + rdata, rdlen);
    }
}

int dns_parse(const uint8_t *p, size_t len, struct dns_message *m)
{
    m->qname[0] = '\0';
    m->qtype = m->qclass = 0;
    m->answer_count = 0;
    m->extra_count = 0;
    m->truncated = false;
    m->wire_len = len;
    if (len < DNS_HEADER_LEN) {
        memset(m, 0, offsetof(struct dns_message, qname));
        m->wire_len = len;
        return DNS_ERR_TRUNCATED;
    }
    parse_header(p, len, m);
    if (m->qdcount == 0)
        return DNS_ERR_NO_QUESTION;

    size_t off = DNS_HEADER_LEN;
    int rc = read_name(p, len, &off, m->qname);
    if (rc == DNS_OK && off + 4 > len)
        rc = DNS_ERR_TRUNCATED;
    if (rc < 0) {
        m->qname[0] = '\0';
        return rc;
    }
    m->qtype = be16(p + off);
    m->qclass = be16(p + off + 2);
    off += 4;

    /* Further questions (never seen in practice) are read and dropped. */
    char skip[DNS_NAME_TEXT_MAX + 1];
    for (unsigned q = 1; q < m->qdcount; q++) {
        rc = read_name(p, len, &off, skip);
        if (rc == DNS_OK && off + 4 > len)
            rc = DNS_ERR_TRUNCATED;
        if (rc == DNS_ERR_TRUNCATED) {
            m->truncated = m->ancount > 0;
            return DNS_OK;
        }
        if (rc < 0)
            return rc;
        off += 4;
    }

    /* Each record takes at least 11 bytes, so this loop is bounded by len. */
    unsigned i;
    for (i = 0; i < m->ancount; i++) {
        if (m->answer_count == DNS_ANSWERS_MAX) {
            m->truncated = true;
            mark_chain(m);
            read_extra_addrs(p, len, off, m->ancount - i, m);
            break;
        }
        rc = read_answer(p, len, &off, m);
        if (rc == DNS_ERR_TRUNCATED) {
            m->truncated = true;
            break;
        }
        if (rc < 0) {
            m->answer_count = 0;
            return rc;
        }
    }
    if (rc != DNS_ERR_TRUNCATED)
        read_extended_rcode(p, len, off, m->ancount - i, m);
    mark_chain(m);
    return DNS_OK;
}

int dns_parse_tcp(const uint8_t *p, size_t len, struct dns_message *m)
{
    if (len < 2) {
        dns_parse(p, 0, m);
        return DNS_ERR_TRUNCATED;
    }
    size_t wire = be16(p), body = len - 2 < wire ? len - 2 : wire;
    int rc = wire < DNS_HEADER_LEN ? DNS_ERR_BAD_TCP_LENGTH : dns_parse(p + 2, body, m);
    if (rc == DNS_ERR_BAD_TCP_LENGTH)
        dns_parse(p, 0, m);
    m->wire_len = wire;
    return rc;
}

/* ---- A bounded hash table with an age list, for the tracker and the cache - */

#define NIL UINT32_MAX

struct slot_link {
    uint64_t hash;
    uint32_t hnext;        /* next in the bucket, or in the free list */
    uint32_t older, newer; /* age list: insertion order (refresh moves to newest) */
};

struct table {
    uint32_t cap, mask, count, free_head, oldest, newest;
    uint64_t seed;
    uint32_t *bucket;
    struct slot_link *link;
};

static int table_init(struct table *t, uint32_t cap)
{
    uint32_t n = 1;
    while (n < cap && n < (1u << 30))
        n <<= 1;
    *t = (struct table){.cap = cap, .mask = n - 1, .oldest = NIL, .newest = NIL};
    t->bucket = malloc(sizeof(*t->bucket) * n);
    t->link = malloc(sizeof(*t->link) * cap);
    if (!t->bucket || !t->link)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        t->bucket[i] = NIL;
    for (uint32_t i = 0; i < cap; i++)
        t->link[i].hnext = i + 1 < cap ? i + 1 : NIL;
    t->free_head = cap ? 0 : NIL;
    /* A keyed hash: an attacker choosing IDs or names cannot aim at one bucket. */
    if (getrandom(&t->seed, sizeof(t->seed), GRND_NONBLOCK) != sizeof(t->seed))
        t->seed = clock_monotonic_ns();
    return 0;
}

static void table_destroy(struct table *t)
{
    free(t->bucket);
    free(t->link);
}

/*
 * Hashes a key of len bytes (a multiple of 8: the keys are padded with
 * zeroes) with the table's seed, a 64-bit word at a time: every connection
 * event looks its destination up (dns_names_lookup), and a byte at a time
 * cost that lookup about 40 ns of dependent multiplies.
 */
static uint64_t table_hash(const struct table *t, const void *key, size_t len)
{
    const uint8_t *k = key;
    uint64_t h = t->seed ^ (len * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, k + i, sizeof(w));
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* The first slot after `from` (NIL: the bucket's head) in hash's bucket with that hash. */
static uint32_t table_next(const struct table *t, uint64_t hash, uint32_t from)
{
    uint32_t i = from == NIL ? t->bucket[hash & t->mask] : t->link[from].hnext;
    while (i != NIL && t->link[i].hash != hash)
        i = t->link[i].hnext;
    return i;
}

static void age_unlink(struct table *t, uint32_t i)
{
    struct slot_link *l = &t->link[i];
    if (l->older != NIL)
        t->link[l->older].newer = l->newer;
    else
        t->oldest = l->newer;
    if (l->newer != NIL)
        t->link[l->newer].older = l->older;
    else
        t->newest = l->older;
}

static void age_append(struct table *t, uint32_t i)
{
    t->link[i].older = t->newest;
    t->link[i].newer = NIL;
    if (t->newest != NIL)
        t->link[t->newest].newer = i;
    else
        t->oldest = i;
    t->newest = i;
}

/* A free slot (count < cap), indexed under hash and made the newest. */
static uint32_t table_insert(struct table *t, uint64_t hash)
{
    uint32_t i = t->free_head;
    t->free_head = t->link[i].hnext;
    t->link[i].hash = hash;
    t->link[i].hnext = t->bucket[hash & t->mask];
    t->bucket[hash & t->mask] = i;
    age_append(t, i);
    t->count++;
    return i;
}

static void table_remove(struct table *t, uint32_t i)
{
    uint32_t *pp = &t->bucket[t->link[i].hash & t->mask];
    while (*pp != i)
        pp = &t->link[*pp].hnext;
    *pp = t->link[i].hnext;
    age_unlink(t, i);
    t->link[i].hnext = t->free_head;
    t->free_head = i;
    t->count--;
}

static void table_touch(struct table *t, uint32_t i)
{
    age_unlink(t, i);
    age_append(t, i);
}

/* ---- Tracker --------------------------------------------------------------- */

/* The hashed part of a pending query's key: no padding, compared with memcmp. */
struct pending_key {
    uint64_t cookie;
    uint8_t server[16];
    uint16_t server_port;
    uint16_t id;
    uint8_t family;
    uint8_t protocol;
    uint8_t zero[2];
};

_Static_assert(sizeof(struct pending_key) % 8 == 0, "table_hash() reads whole words");

struct pending {
    struct pending_key key;
    uint64_t ts_ns;
    bool unsure;     /* an answer of its key came that did not say its question */
    struct event ev; /* the event to be: attribution, query, query_type, transaction_id */
};

/* Socket losses remembered one by one; more within DNS_TIMEOUT make every query unsure. */
#define DNS_SOCKET_LOSSES 64

struct dns_tracker {
    struct dns_tracker_config cfg;
    struct table table;
    struct pending *entry;
    struct dns_tracker_stats st;
    uint64_t answers_lost_ns; /* the last dns_tracker_answers_lost() */
    /* The last sockets answers were lost to (dns_tracker_socket_unsure()), a ring. */
    struct socket_loss {
        uint64_t cookie, ts_ns;
    } socket_losses[DNS_SOCKET_LOSSES];
    size_t socket_loss_next;
};

size_t dns_tracker_entry_size(void)
{
    return sizeof(struct pending) + sizeof(struct slot_link) + 2 * sizeof(uint32_t);
}

struct dns_tracker *dns_tracker_new(const struct dns_tracker_config *cfg)
{
    struct dns_tracker *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (cfg)
        t->cfg = *cfg;
    if (!t->cfg.max_pending)
        t->cfg.max_pending = DNS_PENDING_MAX_DEFAULT;
    if (!t->cfg.timeout_ns)
        t->cfg.timeout_ns = DNS_TIMEOUT_DEFAULT_NS;
    t->entry = calloc(t->cfg.max_pending, sizeof(*t->entry));
    if (!t->entry || table_init(&t->table, t->cfg.max_pending) < 0) {
        dns_tracker_free(t);
        return NULL;
    }
    return t;
}

void dns_tracker_free(struct dns_tracker *t)
{
    if (!t)
        return;
    for (uint32_t i = t->table.oldest; t->entry && i != NIL; i = t->table.link[i].newer)
        event_clear(&t->entry[i].ev);
    table_destroy(&t->table);
    free(t->entry);
    free(t);
}

static struct pending_key make_key(const struct dns_key *k, uint16_t id)
{
    struct pending_key pk;
    memset(&pk, 0, sizeof(pk));
    pk.cookie = k->cookie;
    memcpy(pk.server, k->server, k->family == EVENT_FAMILY_IPV4 ? 4 : 16);
    pk.server_port = k->server_port;
    pk.id = id;
    pk.family = k->family;
    pk.protocol = k->protocol;
    return pk;
}

static uint32_t pending_find(const struct dns_tracker *t, const struct pending_key *pk,
                             uint64_t hash)
{
    uint32_t i = NIL;
    while ((i = table_next(&t->table, hash, i)) != NIL)
        if (memcmp(&t->entry[i].key, pk, sizeof(*pk)) == 0)
            return i;
    return NIL;
}

static bool same_question(const struct pending *p, const struct dns_message *m)
{
    return p->ev.u.dns.query_type == m->qtype && strcmp(p->ev.u.dns.query, m->qname) == 0;
}

static void pending_drop(struct dns_tracker *t, uint32_t i)
{
    event_clear(&t->entry[i].ev);
    table_remove(&t->table, i);
}

int dns_tracker_query(struct dns_tracker *t, const struct dns_key *k, const struct dns_message *m,
                      const struct event *attr, uint64_t ts_ns)
{
    if (m->qr)
        return -EINVAL;
    struct pending_key pk = make_key(k, m->id);
    uint64_t hash = table_hash(&t->table, &pk, sizeof(pk));
    uint32_t i = pending_find(t, &pk, hash);
    if (i != NIL) {
        if (!same_question(&t->entry[i], m)) {
            t->st.collisions++;
            return 0;
        }
        t->st.retries++;
        return 1;
    }
    char *name = strdup(m->qname);
    if (!name) {
        t->st.oom++;
        return -ENOMEM;
    }
    if (t->table.count == t->table.cap) {
        pending_drop(t, t->table.oldest);
        t->st.evicted++;
    }
    struct pending *p = &t->entry[table_insert(&t->table, hash)];
    p->key = pk;
    p->ts_ns = ts_ns;
    p->unsure = false;
    p->ev = *attr;
    memset(&p->ev.u, 0, sizeof(p->ev.u));
    p->ev.type = EVENT_DNS;
    p->ev.status = EVENT_STATUS_NONE;
    p->ev.family = k->family;
    p->ev.protocol = k->protocol;
    memcpy(p->ev.daddr, pk.server, sizeof(p->ev.daddr));
    p->ev.dport = k->server_port;
    p->ev.u.dns.query = name;
    p->ev.u.dns.query_type = m->qtype;
    p->ev.u.dns.opcode = m->opcode;
    p->ev.u.dns.transaction_id = m->id;
    t->st.queries++;
    return 1;
}

/* The event's answers: in-chain addresses as text, and the names records point at. */
static int build_answers(const struct dns_message *m, struct event *e, uint32_t *ttl_s)
{
    char buf[DNS_ANSWERS_MAX * (DNS_NAME_TEXT_MAX + 1)];
    size_t n = 0;
    uint32_t ttl = UINT32_MAX;
    for (unsigned i = 0; i < m->answer_count; i++) {
        const struct dns_answer *a = &m->answers[i];
        if (!a->in_chain)
            continue;
        if (a->type != DNS_TYPE_A && a->type != DNS_TYPE_AAAA) {
            size_t l = strlen(a->target);
            memcpy(buf + n, a->target, l + 1);
            n += l + 1;
            continue;
        }
        int af = a->type == DNS_TYPE_A ? AF_INET : AF_INET6;
        if (!inet_ntop(af, a->addr, buf + n, INET6_ADDRSTRLEN))
            continue;
        n += strlen(buf + n) + 1;
        if (a->ttl < ttl)
            ttl = a->ttl;
    }
    if (ttl_s)
        *ttl_s = ttl == UINT32_MAX ? 0 : ttl;
    e->u.dns.answers = NULL;
    e->u.dns.answers_len = 0;
    if (!n)
        return 0;
    if (!(e->u.dns.answers = malloc(n)))
        return -ENOMEM;
    memcpy(e->u.dns.answers, buf, n);
    e->u.dns.answers_len = (uint32_t)n;
    return 0;
}

int dns_tracker_answer(struct dns_tracker *t, const struct dns_key *k, const struct dns_message *m,
                       uint64_t ts_ns, struct event *out, uint32_t *ttl_s)
{
    if (ttl_s)
        *ttl_s = 0;
    if (!m->qr)
        return -EINVAL;
    struct pending_key pk = make_key(k, m->id);
    uint32_t i = pending_find(t, &pk, table_hash(&t->table, &pk, sizeof(pk)));
    if (i == NIL) {
        t->st.unmatched++;
        return 0;
    }
    struct pending *p = &t->entry[i];
    if (!same_question(p, m)) {
        /* Its server may have answered it (a misbehaving one), or the answer may be forged:
         * the query waits on for an answer that says its question, and without one it is not
         * known to have gone unanswered. */
        p->unsure = true;
        t->st.mismatched++;
        return 0;
    }
    event_move(out, &p->ev);
    uint64_t start = p->ts_ns;
    table_remove(&t->table, i);
    out->status = EVENT_STATUS_ANSWERED;
    out->u.dns.rcode = m->rcode;
    out->u.dns.latency_ns = ts_ns > start ? ts_ns - start : 0;
    out->u.dns.tc = m->tc;
    out->u.dns.answers_truncated = m->truncated;
    if (build_answers(m, out, ttl_s) < 0) {
        event_clear(out);
        t->st.oom++;
        return -ENOMEM;
    }
    t->st.answered++;
    return 1;
}

void dns_tracker_answer_unreadable(struct dns_tracker *t, const struct dns_key *k, uint16_t id)
{
    struct pending_key pk = make_key(k, id);
    uint32_t i = pending_find(t, &pk, table_hash(&t->table, &pk, sizeof(pk)));
    if (i != NIL)
        t->entry[i].unsure = true;
}

void dns_tracker_socket_unsure(struct dns_tracker *t, uint64_t cookie, uint64_t now_ns)
{
    /* A socket already kept: its later loss covers every query the earlier one did. */
    for (size_t i = 0; i < DNS_SOCKET_LOSSES; i++) {
        struct socket_loss *k = &t->socket_losses[i];
        if (k->ts_ns && k->cookie == cookie) {
            if (now_ns > k->ts_ns)
                k->ts_ns = now_ns;
            return;
        }
    }
    struct socket_loss *l = &t->socket_losses[t->socket_loss_next];
    uint32_t oldest = t->table.oldest;
    /* The one it replaces may still concern a pending query (one sent before it that has
     * not expired yet): then every query sent before it is unsure, as with a loss of no
     * known socket. */
    if (l->ts_ns && (l->ts_ns + t->cfg.timeout_ns > now_ns ||
                     (oldest != NIL && t->entry[oldest].ts_ns < l->ts_ns)))
        dns_tracker_answers_lost(t, l->ts_ns);
    *l = (struct socket_loss){.cookie = cookie, .ts_ns = now_ns};
    t->socket_loss_next = (t->socket_loss_next + 1) % DNS_SOCKET_LOSSES;
}

/* Whether an answer to the query p may have been lost (see dns_tracker_answers_lost()). */
static bool pending_unsure(const struct dns_tracker *t, const struct pending *p)
{
    if (p->unsure || p->ts_ns < t->answers_lost_ns)
        return true;
    for (size_t i = 0; i < DNS_SOCKET_LOSSES; i++)
        if (t->socket_losses[i].cookie == p->key.cookie && t->socket_losses[i].ts_ns > p->ts_ns)
            return true;
    return false;
}

void dns_tracker_answers_lost(struct dns_tracker *t, uint64_t now_ns)
{
    if (now_ns > t->answers_lost_ns)
        t->answers_lost_ns = now_ns;
}

size_t dns_tracker_expire(struct dns_tracker *t, uint64_t now_ns, dns_timeout_fn fn, void *arg)
{
    size_t n = 0;
    uint32_t i;
    while ((i = t->table.oldest) != NIL && now_ns >= t->entry[i].ts_ns &&
           now_ns - t->entry[i].ts_ns >= t->cfg.timeout_ns) {
        struct event e;
        event_move(&e, &t->entry[i].ev);
        bool uncertain = pending_unsure(t, &t->entry[i]);
        table_remove(&t->table, i);
        e.status = uncertain ? EVENT_STATUS_UNKNOWN : EVENT_STATUS_TIMEOUT;
        if (uncertain)
            t->st.unknown++;
        else
            t->st.timeouts++;
        n++;
        fn(&e, arg);
    }
    return n;
}

size_t dns_tracker_socket_error(struct dns_tracker *t, uint64_t cookie, unsigned error,
                                uint64_t now_ns, dns_timeout_fn fn, void *arg)
{
    const char *name = event_conn_error_name(error);
    size_t n = 0;
    uint32_t i, next;

    if (!name)
        return 0;
    for (i = t->table.oldest; i != NIL; i = next) {
        next = t->table.link[i].newer;
        if (t->entry[i].key.cookie != cookie || t->entry[i].ts_ns > now_ns)
            continue;
        struct event e;
        uint64_t start = t->entry[i].ts_ns;
        event_move(&e, &t->entry[i].ev);
        table_remove(&t->table, i);
        e.status = EVENT_STATUS_FAILED;
        e.u.dns.error = intern(name);
        e.u.dns.latency_ns = now_ns - start;
        t->st.failed++;
        n++;
        fn(&e, arg);
    }
    return n;
}

void dns_tracker_parse_error(struct dns_tracker *t, int err)
{
    if (err < 0 && err > -DNS_PARSE_ERRORS)
        t->st.parse_errors[-err]++;
}

void dns_tracker_get_stats(const struct dns_tracker *t, struct dns_tracker_stats *out)
{
    *out = t->st;
    out->pending = t->table.count;
}

/* ---- Name cache ------------------------------------------------------------ */

struct name_key {
    uint64_t scope;
    uint8_t addr[16];
    uint8_t family;
    uint8_t zero[7];
};

_Static_assert(sizeof(struct name_key) % 8 == 0, "table_hash() reads whole words");

struct name_entry {
    struct name_key key;
    uint64_t expires_ns;
    char *name;
};

struct dns_names {
    struct dns_names_config cfg;
    struct table table;
    struct name_entry *entry;
    struct dns_names_stats st;
};

size_t dns_names_entry_size(void)
{
    return sizeof(struct name_entry) + sizeof(struct slot_link) + 2 * sizeof(uint32_t);
}

struct dns_names *dns_names_new(const struct dns_names_config *cfg)
{
    struct dns_names *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (cfg)
        c->cfg = *cfg;
    if (!c->cfg.max_entries)
        c->cfg.max_entries = DNS_NAMES_MAX_DEFAULT;
    if (!c->cfg.min_ttl_s)
        c->cfg.min_ttl_s = DNS_NAMES_MIN_TTL_DEFAULT;
    if (!c->cfg.max_ttl_s)
        c->cfg.max_ttl_s = DNS_NAMES_MAX_TTL_DEFAULT;
    if (c->cfg.max_ttl_s < c->cfg.min_ttl_s)
        c->cfg.max_ttl_s = c->cfg.min_ttl_s;
    c->entry = calloc(c->cfg.max_entries, sizeof(*c->entry));
    if (!c->entry || table_init(&c->table, c->cfg.max_entries) < 0) {
        dns_names_free(c);
        return NULL;
    }
    return c;
}

void dns_names_free(struct dns_names *c)
{
    if (!c)
        return;
    for (uint32_t i = c->table.oldest; c->entry && i != NIL; i = c->table.link[i].newer)
        free(c->entry[i].name);
    table_destroy(&c->table);
    free(c->entry);
    free(c);
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    for (const uint8_t *s = p, *end = s + n; s < end; s++)
        h = (h ^ *s) * 0x100000001b3ull;
    return h;
}

uint64_t dns_names_scope(const struct event *e)
{
    uint64_t h = 0xcbf29ce484222325ull;
    if (e->k8s.pod_uid && e->k8s.pod_uid[0]) /* top bit set: cgroup ids never have it */
        return fnv1a(h, e->k8s.pod_uid, strlen(e->k8s.pod_uid)) | (1ull << 63);
    if (e->cgroup_id > DNS_CGROUP_V2_ROOT_ID)
        return e->cgroup_id;
    if (!e->pid)
        return 0;
    /* In the root cgroup, the process (the next bit down: neither a pod nor a cgroup id). */
    const uint32_t who[3] = {e->pid, e->ppid, e->uid};
    return (fnv1a(h, who, sizeof(who)) & ~(3ull << 62)) | (1ull << 62);
}

static struct name_key make_name_key(uint64_t scope, unsigned family, const uint8_t addr[16])
{
    struct name_key k;
    memset(&k, 0, sizeof(k));
    k.scope = scope;
    k.family = (uint8_t)family;
    memcpy(k.addr, addr, family == EVENT_FAMILY_IPV4 ? 4 : 16);
    return k;
}

static uint32_t name_find(const struct dns_names *c, const struct name_key *k, uint64_t hash)
{
    uint32_t i = NIL;
    while ((i = table_next(&c->table, hash, i)) != NIL)
        if (memcmp(&c->entry[i].key, k, sizeof(*k)) == 0)
            return i;
    return NIL;
}

static void name_drop(struct dns_names *c, uint32_t i)
{
    free(c->entry[i].name);
    c->entry[i].name = NULL;
    table_remove(&c->table, i);
}

/* One address under name; false when out of memory. */
static bool name_put(struct dns_names *c, const struct name_key *k, const char *name,
                     uint64_t expires_ns, uint64_t now_ns)
{
    uint64_t hash = table_hash(&c->table, k, sizeof(*k));
    uint32_t i = name_find(c, k, hash);
    if (i != NIL) {
        struct name_entry *e = &c->entry[i];
        if (strcmp(e->name, name) != 0) {
            char *copy = strdup(name);
            if (!copy)
                return false;
            free(e->name);
            e->name = copy;
        }
        e->expires_ns = expires_ns;
        table_touch(&c->table, i);
        c->st.updated++;
        return true;
    }
    char *copy = strdup(name);
    if (!copy)
        return false;
    if (c->table.count == c->table.cap) {
        uint32_t old = c->table.oldest;
        if (c->entry[old].expires_ns <= now_ns)
            c->st.expired++;
        else
            c->st.evicted++;
        name_drop(c, old);
    }
    i = table_insert(&c->table, hash);
    c->entry[i] = (struct name_entry){.key = *k, .expires_ns = expires_ns, .name = copy};
    c->st.added++;
    return true;
}

size_t dns_names_add(struct dns_names *c, uint64_t scope, const struct event *e, uint32_t ttl_s,
                     uint64_t now_ns)
{
    if (!scope || e->type != EVENT_DNS || e->status != EVENT_STATUS_ANSWERED ||
        e->u.dns.rcode != DNS_RCODE_NOERROR || !e->u.dns.query || !e->u.dns.answers)
        return 0;
    if (ttl_s < c->cfg.min_ttl_s)
        ttl_s = c->cfg.min_ttl_s;
    if (ttl_s > c->cfg.max_ttl_s)
        ttl_s = c->cfg.max_ttl_s;
    uint64_t expires = now_ns + (uint64_t)ttl_s * 1000000000ull;
    size_t n = 0;
    const char *s = e->u.dns.answers, *end = s + e->u.dns.answers_len;
    while (s < end) {
        const char *nul = memchr(s, '\0', (size_t)(end - s));
        if (!nul)
            break;
        uint8_t addr[16];
        unsigned family = event_addr_parse(s, addr);
        if (family != EVENT_FAMILY_NONE) {
            struct name_key k = make_name_key(scope, family, addr);
            if (name_put(c, &k, e->u.dns.query, expires, now_ns))
                n++;
            else
                c->st.oom++;
        }
        s = nul + 1;
    }
    return n;
}

size_t dns_names_add_more(struct dns_names *c, uint64_t scope, const struct event *e,
                          const struct dns_message *m, uint64_t now_ns)
{
    if (!scope || e->type != EVENT_DNS || e->status != EVENT_STATUS_ANSWERED ||
        e->u.dns.rcode != DNS_RCODE_NOERROR || !e->u.dns.query)
        return 0;
    size_t n = 0;
    for (unsigned i = 0; i < m->extra_count; i++) {
        const struct dns_extra_addr *x = &m->extra[i];
        uint32_t ttl_s = x->ttl < c->cfg.min_ttl_s   ? c->cfg.min_ttl_s
                         : x->ttl > c->cfg.max_ttl_s ? c->cfg.max_ttl_s
                                                     : x->ttl;
        struct name_key k = make_name_key(
            scope, x->type == DNS_TYPE_A ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6, x->addr);
        if (name_put(c, &k, e->u.dns.query, now_ns + (uint64_t)ttl_s * 1000000000ull, now_ns))
            n++;
        else
            c->st.oom++;
    }
    return n;
}

const char *dns_names_lookup(struct dns_names *c, uint64_t scope, unsigned family,
                             const uint8_t addr[16], uint64_t now_ns)
{
    if (!scope || (family != EVENT_FAMILY_IPV4 && family != EVENT_FAMILY_IPV6))
        return NULL;
    struct name_key k = make_name_key(scope, family, addr);
    uint32_t i = name_find(c, &k, table_hash(&c->table, &k, sizeof(k)));
    if (i != NIL && c->entry[i].expires_ns <= now_ns) {
        name_drop(c, i);
        c->st.expired++;
        i = NIL;
    }
    if (i == NIL) {
        c->st.misses++;
        return NULL;
    }
    c->st.hits++;
    return c->entry[i].name;
}

void dns_names_get_stats(const struct dns_names *c, struct dns_names_stats *out)
{
    *out = c->st;
    out->entries = c->table.count;
}

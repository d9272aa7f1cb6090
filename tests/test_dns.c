/*
 * Tests for pkg/dns: the parser on real answers from a real dnsmasq (UDP and
 * TCP, A, AAAA, PTR, a CNAME chain, NXDOMAIN, twenty records, compression
 * pointers) and on every prefix of them; hostile messages built by hand;
 * the query tracker and the name cache driven by those real messages.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

/* ---- A real DNS server ------------------------------------------------------ */

#define MANY 20 /* A records of many.test: more than DNS_ANSWERS_MAX */

struct dnsmasq {
    pid_t pid;
    int port;
    char log[64];
};

static void dnsmasq_start(struct dnsmasq *d)
{
    char port[32];
    char many[MANY][48];
    char *argv[16 + MANY] = {
        "/usr/sbin/dnsmasq",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        port,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--host-record=web.test,10.1.2.3,fd00::3",
        "--cname=alias.test,web.test",
        "--cname=alias2.test,alias.test",
        "--srv-host=_http._tcp.web.test,web.test,8080,1,10",
        "--mx-host=mail.test,mx1.test,10",
        "--local=/test/",  /* unknown names under test. are NXDOMAIN */
        "--local-ttl=300", /* local records' TTL, 0 by default */
    };
    size_t n = 0;
    while (argv[n] != NULL)
        n++;
    for (int i = 0; i < MANY; i++) {
        snprintf(many[i], sizeof(many[i]), "--host-record=many.test,10.9.0.%d", i + 1);
        argv[n++] = many[i];
    }
    argv[n] = NULL;
    d->port = tu_free_port();
    cr_assert_gt(d->port, 0);
    snprintf(port, sizeof(port), "--port=%d", d->port);
    snprintf(d->log, sizeof(d->log), "/tmp/test_dns-dnsmasq-%d.log", (int)getpid());
    d->pid = tu_spawn(argv, NULL, d->log);
    cr_assert_gt(d->pid, 0);
    cr_assert(tu_wait_port(d->port, 10000), "dnsmasq did not come up; see %s", d->log);
}

/* Stops it by its pid; its log is kept only when a test failed before this. */
static void dnsmasq_stop(struct dnsmasq *d)
{
    tu_stop(d->pid, 2000);
    unlink(d->log);
}

/* A query as a stub resolver sends it: RD set, one question of class IN. */
static size_t build_query(uint8_t *buf, uint16_t id, const char *name, uint16_t type)
{
    uint8_t hdr[12] = {(uint8_t)(id >> 8), (uint8_t)id, 0x01, 0x00, 0, 1};
    memcpy(buf, hdr, sizeof(hdr));
    size_t o = sizeof(hdr);
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        buf[o++] = (uint8_t)l;
        memcpy(buf + o, name, l);
        o += l;
        name += l + (dot ? 1 : 0);
    }
    buf[o++] = 0;
    buf[o++] = (uint8_t)(type >> 8);
    buf[o++] = (uint8_t)type;
    buf[o++] = 0;
    buf[o++] = 1;
    return o;
}

static size_t read_full(int fd, uint8_t *buf, size_t want)
{
    size_t got = 0;
    while (got < want) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 5000), 1, "no answer from dnsmasq");
        ssize_t r = read(fd, buf + got, want - got);
        cr_assert_gt(r, 0);
        got += (size_t)r;
    }
    return got;
}

/* Sends query over UDP to the server and returns the length of its answer. */
static size_t ask_udp(const struct dnsmasq *d, const uint8_t *q, size_t qlen, uint8_t *ans,
                      size_t cap)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)d->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    cr_assert_eq(send(fd, q, qlen, 0), (ssize_t)qlen);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1, "no answer from dnsmasq");
    ssize_t r = recv(fd, ans, cap, 0);
    cr_assert_gt(r, 0);
    close(fd);
    return (size_t)r;
}

/* The same over TCP; ans receives the 2-byte length prefix and the message. */
static size_t ask_tcp(const struct dnsmasq *d, const uint8_t *q, size_t qlen, uint8_t *ans,
                      size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)d->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    uint8_t out[2 + 512] = {(uint8_t)(qlen >> 8), (uint8_t)qlen};
    memcpy(out + 2, q, qlen);
    cr_assert_eq(write(fd, out, qlen + 2), (ssize_t)(qlen + 2));
    read_full(fd, ans, 2);
    size_t len = (size_t)(ans[0] << 8 | ans[1]);
    cr_assert_leq(len + 2, cap);
    read_full(fd, ans + 2, len);
    close(fd);
    return len + 2;
}

/* One exchange, kept for the tests that replay it. */
struct exchange {
    uint8_t q[512], a[4096];
    size_t qlen, alen;
};

static void exchange_udp(const struct dnsmasq *d, struct exchange *x, uint16_t id, const char *name,
                         uint16_t type)
{
    x->qlen = build_query(x->q, id, name, type);
    x->alen = ask_udp(d, x->q, x->qlen, x->a, sizeof(x->a));
}

static struct dns_message *msg_new(void)
{
    struct dns_message *m = malloc(sizeof(*m));
    cr_assert_not_null(m);
    memset(m, 0xa5, sizeof(*m)); /* dns_parse must set what it documents */
    return m;
}

/* With EBPF_MONITOR_WRITE_SEEDS=<dir>, real messages become fuzz seeds there. */
static void maybe_write_seed(const char *name, const uint8_t *p, size_t len)
{
    const char *dir = getenv("EBPF_MONITOR_WRITE_SEEDS");
    if (!dir)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f && fwrite(p, 1, len, f) == len && fclose(f) == 0, "%s", path);
}

/* One UDP exchange with a dnsmasq of its own; the answer is also a fuzz seed. */
static void ask_once(struct exchange *x, uint16_t id, const char *name, uint16_t type,
                     const char *seed)
{
    struct dnsmasq d;
    dnsmasq_start(&d);
    exchange_udp(&d, x, id, name, type);
    dnsmasq_stop(&d);
    maybe_write_seed(seed, x->a, x->alen);
}

static void assert_addr(const struct dns_answer *a, int af, const char *want)
{
    char buf[INET6_ADDRSTRLEN];
    cr_assert_not_null(inet_ntop(af, a->addr, buf, sizeof(buf)));
    cr_assert_str_eq(buf, want);
}

/* ---- The parser on real answers ---------------------------------------------- */

Test(dns_real, a_record_over_udp)
{
    struct exchange x;
    ask_once(&x, 0x1234, "web.test", DNS_TYPE_A, "udp-a");

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(x.q, x.qlen, m), DNS_OK);
    cr_assert_not(m->qr);
    cr_assert_eq(m->id, 0x1234);
    cr_assert_str_eq(m->qname, "web.test");
    cr_assert_eq(m->answer_count, 0);

    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert(m->qr);
    cr_assert_eq(m->id, 0x1234);
    cr_assert_eq(m->opcode, 0);
    cr_assert(m->aa && m->rd && !m->tc);
    cr_assert_eq(m->rcode, DNS_RCODE_NOERROR);
    cr_assert_eq(m->qdcount, 1);
    cr_assert_eq(m->ancount, 1);
    cr_assert_str_eq(m->qname, "web.test");
    cr_assert_eq(m->qtype, DNS_TYPE_A);
    cr_assert_eq(m->qclass, 1);
    cr_assert_eq(m->answer_count, 1);
    cr_assert_not(m->truncated);
    cr_assert_eq(m->wire_len, x.alen);
    const struct dns_answer *a = &m->answers[0];
    cr_assert_eq(a->type, DNS_TYPE_A);
    cr_assert_eq(a->class, 1);
    cr_assert_str_eq(a->owner, "web.test");
    cr_assert(a->in_chain);
    cr_assert_eq(a->ttl, 300);
    assert_addr(a, AF_INET, "10.1.2.3");
    /* dnsmasq names the record by a pointer to the question: 0xc00c. */
    cr_assert(memmem(x.a + 12, x.alen - 12, "\xc0\x0c", 2));
    free(m);
}

Test(dns_real, aaaa_over_tcp_and_case_folded)
{
    struct dnsmasq d;
    uint8_t q[512], a[4096];
    dnsmasq_start(&d);
    size_t qlen = build_query(q, 0xbeef, "WeB.TeSt", DNS_TYPE_AAAA);
    size_t alen = ask_tcp(&d, q, qlen, a, sizeof(a));
    dnsmasq_stop(&d);
    maybe_write_seed("tcp-aaaa", a, alen);

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse_tcp(a, alen, m), DNS_OK);
    cr_assert_eq(m->wire_len, alen - 2);
    cr_assert(m->qr);
    cr_assert_eq(m->id, 0xbeef);
    cr_assert_str_eq(m->qname, "web.test"); /* dnsmasq echoes "WeB.TeSt" */
    cr_assert(memmem(a, alen, "WeB", 3));
    cr_assert_eq(m->qtype, DNS_TYPE_AAAA);
    cr_assert_eq(m->answer_count, 1);
    cr_assert_eq(m->answers[0].type, DNS_TYPE_AAAA);
    assert_addr(&m->answers[0], AF_INET6, "fd00::3");
    cr_assert(m->answers[0].in_chain);

    /* A client that sends the length alone: that segment, then the bare message. */
    cr_assert_eq(dns_parse_tcp(a, 2, m), DNS_ERR_TRUNCATED);
    cr_assert_eq(dns_parse(a + 2, alen - 2, m), DNS_OK);
    cr_assert_eq(m->answer_count, 1);

    /* The segment may carry the next message after this one: ignored. */
    uint8_t two[8192];
    memcpy(two, a, alen);
    memcpy(two + alen, a, alen);
    cr_assert_eq(dns_parse_tcp(two, 2 * alen, m), DNS_OK);
    cr_assert_eq(m->wire_len, alen - 2);
    cr_assert_eq(m->answer_count, 1);
    cr_assert_not(m->truncated);
    free(m);
}

Test(dns_real, cname_chain)
{
    struct exchange x;
    ask_once(&x, 7, "alias2.test", DNS_TYPE_A, "udp-cname-chain");

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert_str_eq(m->qname, "alias2.test");
    cr_assert_eq(m->answer_count, 3);
    cr_assert_eq(m->answers[0].type, DNS_TYPE_CNAME);
    cr_assert_str_eq(m->answers[0].owner, "alias2.test");
    cr_assert_str_eq(m->answers[0].target, "alias.test");
    cr_assert_eq(m->answers[1].type, DNS_TYPE_CNAME);
    cr_assert_str_eq(m->answers[1].owner, "alias.test");
    cr_assert_str_eq(m->answers[1].target, "web.test");
    cr_assert_eq(m->answers[2].type, DNS_TYPE_A);
    cr_assert_str_eq(m->answers[2].owner, "web.test");
    assert_addr(&m->answers[2], AF_INET, "10.1.2.3");
    for (unsigned i = 0; i < 3; i++)
        cr_assert(m->answers[i].in_chain, "answer %u", i);
    free(m);
}

Test(dns_real, ptr)
{
    struct exchange x;
    ask_once(&x, 8, "3.2.1.10.in-addr.arpa", DNS_TYPE_PTR, "udp-ptr");

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert_str_eq(m->qname, "3.2.1.10.in-addr.arpa");
    cr_assert_eq(m->qtype, DNS_TYPE_PTR);
    cr_assert_eq(m->answer_count, 1);
    cr_assert_eq(m->answers[0].type, DNS_TYPE_PTR);
    cr_assert_str_eq(m->answers[0].target, "web.test");
    cr_assert(m->answers[0].in_chain);

    /* The event names it; the name cache takes addresses only. */
    struct dns_tracker *t = dns_tracker_new(NULL);
    struct dns_names *c = dns_names_new(NULL);
    struct dns_key k = {.family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_UDP, .server_port = 53};
    struct event attr = {.cgroup_id = 5}, out = {0};
    uint32_t ttl;
    cr_assert_eq(dns_parse(x.q, x.qlen, m), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, m, &attr, 1), 1);
    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, m, 2, &out, &ttl), 1);
    cr_assert_eq(out.u.dns.answers_len, sizeof("web.test"));
    cr_assert_str_eq(out.u.dns.answers, "web.test");
    cr_assert_eq(ttl, 0); /* no address record */
    cr_assert_eq(dns_names_add(c, 5, &out, ttl, 0), 0);
    event_clear(&out);
    dns_names_free(c);
    dns_tracker_free(t);
    free(m);
}

/* SRV and MX answers name a host: the event carries that name, the cache no address. */
Test(dns_real, srv_and_mx_name_their_target)
{
    static const struct {
        const char *name, *seed, *target;
        uint16_t type;
    } cases[] = {
        {"_http._tcp.web.test", "udp-srv", "web.test", DNS_TYPE_SRV},
        {"mail.test", "udp-mx", "mx1.test", DNS_TYPE_MX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct exchange x;
        ask_once(&x, (uint16_t)(20 + i), cases[i].name, cases[i].type, cases[i].seed);
        struct dns_message *m = msg_new();
        cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
        cr_assert_geq(m->answer_count, 1, "%s", cases[i].name);
        cr_assert_eq(m->answers[0].type, cases[i].type);
        cr_assert_str_eq(m->answers[0].target, cases[i].target);
        cr_assert(m->answers[0].in_chain);

        struct dns_tracker *t = dns_tracker_new(NULL);
        struct dns_key k = {
            .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_UDP, .server_port = 53};
        struct event attr = {.cgroup_id = 5}, out = {0};
        uint32_t ttl;
        cr_assert_eq(dns_parse(x.q, x.qlen, m), DNS_OK);
        cr_assert_eq(dns_tracker_query(t, &k, m, &attr, 1), 1);
        cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
        cr_assert_eq(dns_tracker_answer(t, &k, m, 2, &out, &ttl), 1);
        cr_assert_str_eq(out.u.dns.answers, cases[i].target);
        cr_assert_eq(ttl, 0, "no address record");
        event_clear(&out);
        dns_tracker_free(t);
        free(m);
    }
}

/* The rdata before an MX or SRV target must be there. */
Test(dns_hostile, mx_and_srv_shorter_than_their_fixed_fields)
{
    /* id, flags (response), 1 question, 1 answer; q: "a" MX IN; rr: ptr to q, MX IN ttl rdlen 1 */
    uint8_t msg[] = {0x00, 0x01, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00,
                     0x00, 0x01, 'a',  0x00, 0x00, 0x0f, 0x00, 0x01, 0xc0, 0x0c, 0x00,
                     0x0f, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3c, 0x00, 0x01, 0x00};
    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(msg, sizeof(msg), m), DNS_ERR_BAD_RDATA);
    msg[16] = msg[22] = DNS_TYPE_SRV; /* the same with SRV: 1 byte of its 6 */
    cr_assert_eq(dns_parse(msg, sizeof(msg), m), DNS_ERR_BAD_RDATA);
    free(m);
}

Test(dns_real, nxdomain)
{
    struct exchange x;
    ask_once(&x, 9, "nope.test", DNS_TYPE_A, "udp-nxdomain");

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert_eq(m->rcode, DNS_RCODE_NXDOMAIN);
    cr_assert_str_eq(m->qname, "nope.test");
    cr_assert_eq(m->answer_count, 0);
    cr_assert_not(m->truncated);
    free(m);
}

#define SEC 1000000000ull
static struct event answered(const char *query, const char *answers, size_t len, uint16_t rcode);

Test(dns_real, more_answers_than_kept)
{
    struct exchange x;
    ask_once(&x, 11, "many.test", DNS_TYPE_A, "udp-many");

    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(x.a, x.alen, m), DNS_OK);
    cr_assert_eq(m->ancount, MANY);
    cr_assert_eq(m->answer_count, DNS_ANSWERS_MAX);
    cr_assert(m->truncated);
    bool seen[MANY + 1] = {false};
    for (unsigned i = 0; i < m->answer_count; i++) {
        cr_assert_eq(m->answers[i].type, DNS_TYPE_A);
        cr_assert_str_eq(m->answers[i].owner, "many.test");
        cr_assert_eq(m->answers[i].addr[0], 10);
        cr_assert_eq(m->answers[i].addr[1], 9);
        seen[m->answers[i].addr[3] % (MANY + 1)] = true;
    }
    /* The rest are kept for the name cache: every address once, with its TTL. */
    cr_assert_eq(m->extra_count, MANY - DNS_ANSWERS_MAX);
    for (unsigned i = 0; i < m->extra_count; i++) {
        const struct dns_extra_addr *x = &m->extra[i];
        cr_assert_eq(x->type, DNS_TYPE_A);
        cr_assert_eq(x->ttl, m->answers[0].ttl);
        cr_assert(x->addr[0] == 10 && x->addr[1] == 9 && x->addr[2] == 0 && x->addr[3] >= 1 &&
                  x->addr[3] <= MANY && !seen[x->addr[3]]);
        seen[x->addr[3]] = true;
    }

    /* ... and name later connections, as the event's answers do. */
    struct dns_names *c = dns_names_new(NULL);
    struct event e = answered("many.test", "10.9.0.1", sizeof("10.9.0.1"), DNS_RCODE_NOERROR);
    cr_assert_eq(dns_names_add_more(c, 9, &e, m, 0), MANY - DNS_ANSWERS_MAX);
    uint8_t last[16] = {10, 9, 0, m->extra[m->extra_count - 1].addr[3]};
    cr_assert_str_eq(dns_names_lookup(c, 9, EVENT_FAMILY_IPV4, last, SEC), "many.test");
    cr_assert_null(dns_names_lookup(c, 8, EVENT_FAMILY_IPV4, last, SEC));
    /* Not for an answer that failed. */
    e.u.dns.rcode = DNS_RCODE_NXDOMAIN;
    cr_assert_eq(dns_names_add_more(c, 9, &e, m, 0), 0);
    event_clear(&e);
    dns_names_free(c);
    free(m);
}

/*
 * Every prefix of a real answer: an error (only "truncated", and only when
 * the header or the question is cut) or the truth with fewer answers,
 * flagged as truncated. Never another name.
 */
static void check_prefixes(const uint8_t *a, size_t alen, bool tcp)
{
    struct dns_message *truth = msg_new(), *m = msg_new();
    cr_assert_eq(tcp ? dns_parse_tcp(a, alen, truth) : dns_parse(a, alen, truth), DNS_OK);
    size_t question_end = 0;
    unsigned ok = 0;
    for (size_t len = 0; len <= alen; len++) {
        int rc = tcp ? dns_parse_tcp(a, len, m) : dns_parse(a, len, m);
        if (rc < 0) {
            cr_assert_eq(rc, DNS_ERR_TRUNCATED, "prefix %zu: %s", len, dns_parse_error_name(rc));
            cr_assert_eq(question_end, 0, "prefix %zu fails after a shorter one parsed", len);
            continue;
        }
        if (!question_end)
            question_end = len;
        ok++;
        cr_assert_eq(m->id, truth->id);
        cr_assert_eq(m->rcode, truth->rcode);
        cr_assert_str_eq(m->qname, truth->qname, "prefix %zu", len);
        cr_assert_eq(m->qtype, truth->qtype);
        cr_assert_leq(m->answer_count, truth->answer_count);
        for (unsigned i = 0; i < m->answer_count; i++) {
            const struct dns_answer *x = &m->answers[i], *y = &truth->answers[i];
            cr_assert_eq(x->type, y->type);
            cr_assert_eq(x->ttl, y->ttl);
            cr_assert_str_eq(x->owner, y->owner, "prefix %zu answer %u", len, i);
            cr_assert_str_eq(x->target, y->target, "prefix %zu answer %u", len, i);
            cr_assert_eq(memcmp(x->addr, y->addr, 16), 0);
            /* A chain cut short loses later links, never gains wrong ones. */
            cr_assert(!x->in_chain || y->in_chain);
        }
        if (m->answer_count < truth->answer_count)
            cr_assert(m->truncated, "prefix %zu: %u of %u answers, not flagged", len,
                      m->answer_count, truth->answer_count);
    }
    cr_assert_gt(ok, 0);
    cr_assert_gt(question_end, 12);
    free(truth);
    free(m);
}

Test(dns_real, every_prefix_of_real_answers)
{
    struct dnsmasq d;
    struct exchange chain, many;
    uint8_t q[512], tcp[4096];
    dnsmasq_start(&d);
    exchange_udp(&d, &chain, 21, "alias2.test", DNS_TYPE_A);
    exchange_udp(&d, &many, 22, "many.test", DNS_TYPE_A);
    size_t qlen = build_query(q, 23, "alias2.test", DNS_TYPE_AAAA);
    size_t tlen = ask_tcp(&d, q, qlen, tcp, sizeof(tcp));
    dnsmasq_stop(&d);

    check_prefixes(chain.a, chain.alen, false);
    check_prefixes(many.a, many.alen, false);
    check_prefixes(tcp, tlen, true);

    /* The capture's fixed prefix: the question and what fits of the answers. */
    struct dns_message *m = msg_new();
    cr_assert_eq(dns_parse(many.a, 100, m), DNS_OK);
    cr_assert(m->truncated);
    cr_assert_str_eq(m->qname, "many.test");
    cr_assert_eq(m->answer_count, (100 - 27) / 16); /* 27: header + question; 16: a record */
    free(m);
}

/* ---- Hostile messages -------------------------------------------------------- */

/* A response header (id 1, QR, one question, ancount) followed by body. */
static size_t hostile(uint8_t *buf, uint16_t ancount, const void *body, size_t len)
{
    uint8_t hdr[12] = {0, 1, 0x81, 0x80, 0, 1, (uint8_t)(ancount >> 8), (uint8_t)ancount};
    memcpy(buf, hdr, 12);
    memcpy(buf + 12, body, len);
    return 12 + len;
}

static int parse_body(uint16_t ancount, const void *body, size_t len, struct dns_message *m)
{
    uint8_t buf[2048];
    return dns_parse(buf, hostile(buf, ancount, body, len), m);
}

#define QTAIL "\x00\x01\x00\x01" /* type A, class IN */

Test(dns_hostile, pointer_loops_and_bad_pointers)
{
    struct dns_message *m = msg_new();
    /* The question's name is a pointer to itself. */
    cr_assert_eq(parse_body(0, "\xc0\x0c" QTAIL, 6, m), DNS_ERR_POINTER_LOOP);
    cr_assert_str_eq(m->qname, "");
    /* A label, then a pointer back to that label: a name without end. */
    cr_assert_eq(parse_body(0,
                            "\x01"
                            "a\xc0\x0c" QTAIL,
                            8, m),
                 DNS_ERR_POINTER_LOOP);
    /* Two pointers at each other: the first one points forward. */
    cr_assert_eq(parse_body(0, "\xc0\x0e\xc0\x0c" QTAIL, 8, m), DNS_ERR_FORWARD_POINTER);
    /* An answer whose owner points at a pointer that points back at it. */
    static const uint8_t cycle[] = {1,    'a',  0, 0, 1, 0, 1, /* question a. A IN */
                                    0xc0, 0x15,                /* answer owner -> 21 */
                                    0,    1,    0, 1, 0, 0, 0, 1, 0, 0};
    uint8_t buf[64];
    size_t n = hostile(buf, 1, cycle, sizeof(cycle));
    buf[21] = 0xc0; /* offset 21 holds a pointer back to the owner at 19 */
    buf[22] = 0x13;
    cr_assert_eq(dns_parse(buf, n, m), DNS_ERR_FORWARD_POINTER);
    /* Forward, and out of bounds. */
    cr_assert_eq(parse_body(0, "\xc0\x14" QTAIL "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 16, m),
                 DNS_ERR_FORWARD_POINTER);
    cr_assert_eq(parse_body(0, "\xc3\xff" QTAIL, 6, m), DNS_ERR_POINTER_OUT_OF_BOUNDS);
    free(m);
}

Test(dns_hostile, pointer_hops_bounded)
{
    /*
     * Answers whose owners are pointers to pointers: record k's owner is a
     * pointer to record k-1's owner, which is itself a pointer... down to
     * the question. Each pointer goes strictly back, so only the hop limit
     * stops a long chain.
     */
    struct dns_message *m = msg_new();
    for (unsigned records = 1; records <= DNS_POINTER_HOPS + 2; records++) {
        uint8_t buf[4096];
        memcpy(buf, "\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00", 12);
        buf[7] = (uint8_t)records;
        size_t o = 12;
        memcpy(buf + o,
               "\x01"
               "a\x00" QTAIL,
               7);
        o += 7;
        size_t prev = 12;
        for (unsigned r = 0; r < records; r++) {
            buf[o] = 0xc0 | (uint8_t)(prev >> 8);
            buf[o + 1] = (uint8_t)prev;
            prev = o;
            /* type TXT (skipped), class IN, ttl 1, rdlength 0 */
            memcpy(buf + o + 2, "\x00\x10\x00\x01\x00\x00\x00\x01\x00\x00", 10);
            o += 12;
        }
        int rc = dns_parse(buf, o, m);
        /* Record r's owner takes r + 1 hops to reach the question's name. */
        if (records <= DNS_POINTER_HOPS)
            cr_assert_eq(rc, DNS_OK, "%u records: %s", records, dns_parse_error_name(rc));
        else
            cr_assert_eq(rc, DNS_ERR_POINTER_LOOP, "%u records", records);
    }
    free(m);
}

Test(dns_hostile, labels_and_name_length)
{
    struct dns_message *m = msg_new();
    /* Label types 01 and 10 (lengths 64..191) do not exist. */
    cr_assert_eq(parse_body(0, "\x40" QTAIL, 5, m), DNS_ERR_BAD_LABEL);
    cr_assert_eq(parse_body(0, "\x80" QTAIL, 5, m), DNS_ERR_BAD_LABEL);

    /* 255 bytes on the wire is the limit: 3 labels of 63, one of 61, the root. */
    uint8_t body[600];
    size_t o = 0;
    for (int l = 0; l < 4; l++) {
        unsigned len = l < 3 ? 63 : 61;
        body[o++] = (uint8_t)len;
        memset(body + o, 'a' + l, len);
        o += len;
    }
    body[o++] = 0;
    cr_assert_eq(o, 255);
    memcpy(body + o, QTAIL, 4);
    cr_assert_eq(parse_body(0, body, o + 4, m), DNS_OK);
    cr_assert_eq(strlen(m->qname), DNS_NAME_MAX);
    /* One more byte is too long. */
    o = 0;
    for (int l = 0; l < 4; l++) {
        unsigned len = l < 3 ? 63 : 62;
        body[o++] = (uint8_t)len;
        memset(body + o, 'a', len);
        o += len;
    }
    body[o++] = 0;
    memcpy(body + o, QTAIL, 4);
    cr_assert_eq(parse_body(0, body, o + 4, m), DNS_ERR_NAME_TOO_LONG);
    /* Too long through a pointer: a 200-byte name, then 100 more pointing into it. */
    o = 0;
    for (int l = 0; l < 4; l++) {
        body[o++] = 49;
        memset(body + o, 'b', 49);
        o += 49;
    }
    body[o++] = 0; /* 201 bytes at offset 12 */
    memcpy(body + o, QTAIL, 4);
    o += 4;
    body[o++] = 60;
    memset(body + o, 'c', 60);
    o += 60;
    body[o++] = 0xc0; /* the owner: 61 bytes then the whole question name */
    body[o++] = 12;
    memcpy(body + o, "\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\x01\x02\x03\x04", 14);
    o += 14;
    cr_assert_eq(parse_body(1, body, o, m), DNS_ERR_NAME_TOO_LONG);
    free(m);
}

Test(dns_hostile, label_bytes_escaped)
{
    struct dns_message *m = msg_new();
    static const uint8_t body[] = {5, 'A', 0, 'b', '.', 0xff, 3, 'x', ' ', '\\', 0, 0, 1, 0, 1};
    cr_assert_eq(parse_body(0, body, sizeof(body), m), DNS_OK);
    cr_assert_str_eq(m->qname, "a\\000b\\.\\255.x\\032\\\\");
    for (const char *c = m->qname; *c; c++)
        cr_assert(*c > 0x20 && *c < 0x7f);
    /* What dig escapes besides: " ( ) ; @ $ (and not * - _ / = +). */
    static const uint8_t special[] = {14,  '"', '(', ')', ';', '@', '$', '*', '-', '_',
                                      '/', '=', '+', '~', '!', 0,   0,   1,   0,   1};
    cr_assert_eq(parse_body(0, special, sizeof(special), m), DNS_OK);
    cr_assert_str_eq(m->qname, "\\\"\\(\\)\\;\\@\\$*-_/=+~!");
    /* The root. */
    cr_assert_eq(parse_body(0, "\x00\x00\x02\x00\x01", 5, m), DNS_OK);
    cr_assert_str_eq(m->qname, ".");
    cr_assert_eq(m->qtype, DNS_TYPE_NS);

    /* The longest text: 250 bytes of 0xff in 4 labels are 1003 characters. */
    uint8_t big[300];
    size_t o = 0;
    for (int l = 0; l < 4; l++) {
        unsigned len = l < 3 ? 63 : 61;
        big[o++] = (uint8_t)len;
        memset(big + o, 0xff, len);
        o += len;
    }
    big[o++] = 0;
    memcpy(big + o, QTAIL, 4);
    cr_assert_eq(parse_body(0, big, o + 4, m), DNS_OK);
    cr_assert_eq(strlen(m->qname), DNS_NAME_TEXT_MAX);
    free(m);
}

Test(dns_hostile, counts_and_records)
{
    struct dns_message *m = msg_new();
    uint8_t buf[64];
    /* No question. */
    memcpy(buf, "\x00\x01\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00", 12);
    cr_assert_eq(dns_parse(buf, 12, m), DNS_ERR_NO_QUESTION);
    cr_assert_str_eq(dns_parse_error_name(DNS_ERR_NO_QUESTION), "no_question");
    /* Shorter than a header. */
    cr_assert_eq(dns_parse(buf, 11, m), DNS_ERR_TRUNCATED);
    cr_assert_eq(dns_parse(NULL, 0, m), DNS_ERR_TRUNCATED);

    /* ancount 65535 with one record: the record, flagged as truncated. */
    static const uint8_t one[] = {1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0,
                                  1, 0,   0, 0, 9, 0, 4, 192,  0,  2, 1};
    cr_assert_eq(parse_body(0xffff, one, sizeof(one), m), DNS_OK);
    cr_assert_eq(m->answer_count, 1);
    cr_assert(m->truncated);
    assert_addr(&m->answers[0], AF_INET, "192.0.2.1");
    cr_assert_eq(m->answers[0].ttl, 9);

    /* An A record of 5 bytes, an AAAA of 4. */
    uint8_t bad[sizeof(one) + 1];
    memcpy(bad, one, sizeof(one));
    bad[sizeof(one)] = 1;
    bad[18] = 5;
    cr_assert_eq(parse_body(1, bad, sizeof(bad), m), DNS_ERR_BAD_RDATA);
    memcpy(bad, one, sizeof(one));
    bad[10] = DNS_TYPE_AAAA;
    cr_assert_eq(parse_body(1, bad, sizeof(one), m), DNS_ERR_BAD_RDATA);
    /* A CNAME whose name does not fill its rdata, and one that overruns it. */
    static const uint8_t cname[] = {1, 'a', 0, 0, 1, 0, 1, 0xc0, 12,  0, 5, 0,
                                    1, 0,   0, 0, 9, 0, 4, 1,    'b', 0, 0};
    cr_assert_eq(parse_body(1, cname, sizeof(cname), m), DNS_ERR_BAD_RDATA);
    uint8_t over[sizeof(cname)];
    memcpy(over, cname, sizeof(cname));
    over[18] = 2;
    cr_assert_eq(parse_body(1, over, sizeof(over) - 1, m), DNS_ERR_BAD_RDATA);
    over[18] = 3;
    cr_assert_eq(parse_body(1, over, sizeof(over) - 1, m), DNS_OK);
    cr_assert_str_eq(m->answers[0].target, "b");

    /* TCP: a length prefix below a header, and a segment of one byte. */
    cr_assert_eq(dns_parse_tcp((const uint8_t *)"\x00\x0b"
                                                "0123456789a",
                               13, m),
                 DNS_ERR_BAD_TCP_LENGTH);
    cr_assert_eq(dns_parse_tcp((const uint8_t *)"\x00", 1, m), DNS_ERR_TRUNCATED);
    free(m);
}

/*
 * An EDNS answer's RCODE has 12 bits: the header's 4 and, in the OPT record
 * of the additional section, 8 more (BADVERS = 16 is header 0, extended 1).
 * Read past an authority record; a message cut before its OPT record keeps
 * the header's 4 bits.
 */
Test(dns_hostile, extended_rcode_of_an_edns_answer)
{
    struct dns_message *m = msg_new();
    static const uint8_t msg[] = {
        0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 1, 0, 2, /* header: rcode 0, 1/1/1/2 */
        1,    'a',  0,    0,    1, 0, 1,                /* question a. A IN */
        0xc0, 12,   0,    1,    0, 1, 0, 0, 0, 9, 0, 4, 192,  0,   2, 1, /* a. A 192.0.2.1 */
        0xc0, 12,   0,    2,    0, 1, 0, 0, 0, 9, 0, 2, 0xc0, 12,        /* a. NS a. (authority) */
        1,    'b',  0,    0,    1, 0, 1, 0, 0, 0, 9, 0, 4,    192, 0, 2, 2, /* b. A (additional) */
        0,    0,    41,   0x10, 0, 1, 0, 0, 0, 0, 0, /* OPT: udp 4096, extended rcode 1, version 0
                                                      */
    };
    cr_assert_eq(dns_parse(msg, sizeof(msg), m), DNS_OK);
    cr_assert_eq(m->rcode, DNS_RCODE_BADVERS);
    cr_assert_eq(m->answer_count, 1);
    assert_addr(&m->answers[0], AF_INET, "192.0.2.1");
    /* The header's own bits stay the low 4: extended 1 with header 7 is 23. */
    uint8_t cookie[sizeof(msg)];
    memcpy(cookie, msg, sizeof(msg));
    cookie[3] = 0x87;
    cr_assert_eq(dns_parse(cookie, sizeof(cookie), m), DNS_OK);
    cr_assert_eq(m->rcode, DNS_RCODE_BADCOOKIE);
    /* Cut inside the OPT record: the header's rcode, and the answer still read. */
    cr_assert_eq(dns_parse(cookie, sizeof(cookie) - 1, m), DNS_OK);
    cr_assert_eq(m->rcode, 7);
    cr_assert_eq(m->answer_count, 1);
    /* An OPT record whose owner is not the root is no OPT record. */
    uint8_t owner[sizeof(msg) + 2];
    memcpy(owner, msg, sizeof(msg) - 11);
    memcpy(owner + sizeof(msg) - 11, "\x01x\x00", 3);
    memcpy(owner + sizeof(msg) - 8, msg + sizeof(msg) - 10, 10);
    cr_assert_eq(dns_parse(owner, sizeof(owner), m), DNS_OK);
    cr_assert_eq(m->rcode, 0);
    free(m);
}

Test(dns_hostile, answers_outside_the_chain_are_not_in_it)
{
    struct dns_message *m = msg_new();
    /* Question a.; answers: b. A 192.0.2.7 (unrelated), a. CNAME b. would link it. */
    static const uint8_t body[] = {1, 'a', 0, 0, 1, 0, 1, /* a. A */
                                   1, 'b', 0, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 192, 0, 2, 7};
    cr_assert_eq(parse_body(1, body, sizeof(body), m), DNS_OK);
    cr_assert_eq(m->answer_count, 1);
    cr_assert_not(m->answers[0].in_chain);
    free(m);
}

Test(dns_hostile, error_names)
{
    for (int e = 0; e > -DNS_PARSE_ERRORS; e--)
        cr_assert_not_null(dns_parse_error_name(e), "%d", e);
    cr_assert_str_eq(dns_parse_error_name(DNS_ERR_POINTER_LOOP), "pointer_loop");
    cr_assert_null(dns_parse_error_name(-DNS_PARSE_ERRORS));
    cr_assert_null(dns_parse_error_name(1));
}

/* ---- Names of types and rcodes ---------------------------------------------- */

Test(dns_names_of_codes, types_and_rcodes)
{
    char buf[DNS_CODE_NAME_LEN];
    cr_assert_str_eq(dns_type_name(DNS_TYPE_A, buf, sizeof(buf)), "A");
    cr_assert_str_eq(dns_type_name(DNS_TYPE_AAAA, buf, sizeof(buf)), "AAAA");
    cr_assert_str_eq(dns_type_name(DNS_TYPE_HTTPS, buf, sizeof(buf)), "HTTPS");
    cr_assert_str_eq(dns_type_name(65280, buf, sizeof(buf)), "65280");
    cr_assert_str_eq(dns_rcode_name(DNS_RCODE_NXDOMAIN, buf, sizeof(buf)), "NXDOMAIN");
    cr_assert_str_eq(dns_rcode_name(DNS_RCODE_SERVFAIL, buf, sizeof(buf)), "SERVFAIL");
    cr_assert_str_eq(dns_rcode_name(16, buf, sizeof(buf)), "BADVERS");
    cr_assert_str_eq(dns_rcode_name(23, buf, sizeof(buf)), "BADCOOKIE");
    cr_assert_str_eq(dns_rcode_name(24, buf, sizeof(buf)), "24");

    uint16_t v;
    cr_assert_eq(dns_rcode_parse("badvers", 7, &v), 0);
    cr_assert_eq(v, 16);
    /* 16 has two names (RFC 6891's BADVERS, RFC 8945's BADSIG for TSIG): both parse. */
    cr_assert_eq(dns_rcode_parse("BADSIG", 6, &v), 0);
    cr_assert_eq(v, 16);
    cr_assert_eq(dns_rcode_parse("NXDOMAIN", 8, &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(dns_rcode_parse("nxdomain", 8, &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(dns_rcode_parse("3", 1, &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(dns_rcode_parse("4095", 4, &v), 0);
    cr_assert_eq(dns_rcode_parse("4096", 4, &v), -EINVAL);
    cr_assert_eq(dns_rcode_parse("", 0, &v), -EINVAL);
    cr_assert_eq(dns_rcode_parse("NXDOMAINX", 9, &v), -EINVAL);
    cr_assert_eq(dns_rcode_parse("NXDOMAINX", 8, &v), 0); /* len bytes only */
    cr_assert_eq(dns_type_parse("aaaa", 4, &v), 0);
    cr_assert_eq(v, DNS_TYPE_AAAA);
    cr_assert_eq(dns_type_parse("65535", 5, &v), 0);
    cr_assert_eq(v, 65535);
    cr_assert_eq(dns_type_parse("65536", 5, &v), -EINVAL);
    cr_assert_eq(dns_type_parse("000001", 6, &v), -EINVAL);
    cr_assert_eq(dns_type_parse("1x", 2, &v), -EINVAL);
    cr_assert_eq(dns_type_parse("-1", 2, &v), -EINVAL);
    /* Every name parses back to its code. */
    for (unsigned c = 0; c < 300; c++) {
        const char *n = dns_type_name((uint16_t)c, buf, sizeof(buf));
        cr_assert_eq(dns_type_parse(n, strlen(n), &v), 0, "%s", n);
        cr_assert_eq(v, c);
        n = dns_rcode_name((uint16_t)c, buf, sizeof(buf));
        cr_assert_eq(dns_rcode_parse(n, strlen(n), &v), 0, "%s", n);
        cr_assert_eq(v, c);
    }
    /* Opcodes: the header's 4 bits, 3 and 7-15 unassigned. */
    static const char *const opcodes[16] = {"QUERY", "IQUERY", "STATUS", "3", "NOTIFY", "UPDATE",
                                            "DSO",   "7",      "8",      "9", "10",     "11",
                                            "12",    "13",     "14",     "15"};
    for (unsigned c = 0; c < 16; c++) {
        cr_assert_str_eq(dns_opcode_name((uint8_t)c, buf, sizeof(buf)), opcodes[c]);
        cr_assert_eq(dns_opcode_parse(opcodes[c], strlen(opcodes[c]), &v), 0, "%s", opcodes[c]);
        cr_assert_eq(v, c);
    }
    cr_assert_eq(dns_opcode_parse("notify", 6, &v), 0);
    cr_assert_eq(v, 4);
    cr_assert_eq(dns_opcode_parse("16", 2, &v), -EINVAL);
    cr_assert_eq(dns_opcode_parse("XFR", 3, &v), -EINVAL);
}

Test(dns_event, copy_equal_clear)
{
    struct event a = {.type = EVENT_DNS, .status = EVENT_STATUS_ANSWERED};
    a.u.dns.query = strdup("web.test");
    a.u.dns.answers = malloc(18);
    memcpy(a.u.dns.answers,
           "web.test\0"
           "10.1.2.3",
           18);
    a.u.dns.answers_len = 18;
    a.u.dns.rcode = 0;
    a.u.dns.query_type = DNS_TYPE_A;
    a.u.dns.latency_ns = 1234;
    struct event b;
    cr_assert_eq(event_copy(&b, &a), 0);
    cr_assert_neq(b.u.dns.query, a.u.dns.query);
    cr_assert_neq(b.u.dns.answers, a.u.dns.answers);
    cr_assert(event_equal(&a, &b));
    b.u.dns.answers[0] = 'x';
    cr_assert_not(event_equal(&a, &b));
    cr_assert_str_eq(event_type_name(EVENT_DNS), "dns");
    cr_assert_eq(event_type_parse("dns", 3), EVENT_DNS);
    cr_assert_str_eq(event_status_name(EVENT_STATUS_ANSWERED), "answered");
    cr_assert_str_eq(event_status_name(EVENT_STATUS_TIMEOUT), "timeout");
    cr_assert(EVENT_TYPES_ALL & EVENT_TYPE_BIT(EVENT_DNS));
    event_clear(&a);
    event_clear(&b); /* both free their own copies (ASan checks) */
}

/* ---- Tracker ---------------------------------------------------------------- */

#define SERVER_PORT 53

static struct dns_key key_of(uint64_t cookie, const struct dnsmasq *d)
{
    struct dns_key k = {.cookie = cookie,
                        .family = EVENT_FAMILY_IPV4,
                        .protocol = IPPROTO_UDP,
                        .server_port = (uint16_t)(d ? d->port : SERVER_PORT),
                        .server = {127, 0, 0, 1}};
    return k;
}

static struct event attribution(uint32_t pid)
{
    struct event e = {.id = 0x1122334455667788ull,
                      .timestamp_ns = 1700000000000000000ull,
                      .type = EVENT_CONNECTION, /* whatever: the tracker sets it */
                      .family = EVENT_FAMILY_IPV4,
                      .pid = pid,
                      .ppid = 1,
                      .uid = 1000,
                      .cgroup_id = 4242,
                      .saddr = {127, 0, 0, 1},
                      .sport = 40000};
    strcpy(e.command, "curl");
    return e;
}

struct timeouts {
    struct event ev[8];
    size_t n;
};

static void on_timeout(struct event *e, void *arg)
{
    struct timeouts *t = arg;
    cr_assert_lt(t->n, 8);
    event_move(&t->ev[t->n++], e);
}

/* The n timeouts expired so far have these statuses, in order; they are cleared. */
static void expect_statuses(struct timeouts *to, const uint8_t *want, size_t n)
{
    cr_assert_eq(to->n, n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(to->ev[i].status, want[i], "query %u: status %u",
                     to->ev[i].u.dns.transaction_id, to->ev[i].status);
        event_clear(&to->ev[i]);
    }
    to->n = 0;
}

static const char *answer_at(const struct event *e, unsigned i)
{
    const char *s = e->u.dns.answers, *end = s ? s + e->u.dns.answers_len : NULL;
    for (; s && s < end; s += strlen(s) + 1, i--)
        if (i == 0)
            return s;
    return NULL;
}

Test(dns_tracker, query_answer_timeout_and_counters)
{
    struct dnsmasq d;
    struct exchange chain, web, nx;
    dnsmasq_start(&d);
    exchange_udp(&d, &chain, 0x0101, "alias2.test", DNS_TYPE_A);
    exchange_udp(&d, &web, 0x0202, "web.test", DNS_TYPE_A);
    exchange_udp(&d, &nx, 0x0303, "nope.test", DNS_TYPE_A);
    dnsmasq_stop(&d);

    struct dns_tracker *t = dns_tracker_new(&(struct dns_tracker_config){.timeout_ns = 5000});
    cr_assert_not_null(t);
    struct dns_message *q = msg_new(), *a = msg_new();
    struct dns_key k = key_of(77, &d);
    struct event attr = attribution(100), out;
    uint32_t ttl;

    /* The chain: matched, every field of the event. */
    cr_assert_eq(dns_parse(chain.q, chain.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 1000), 1);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 1500), 1); /* a retransmission */
    cr_assert_eq(dns_parse(chain.a, chain.alen, a), DNS_OK);
    memset(&out, 0, sizeof(out));
    cr_assert_eq(dns_tracker_answer(t, &k, a, 3500, &out, &ttl), 1);
    cr_assert_eq(out.type, EVENT_DNS);
    cr_assert_eq(out.status, EVENT_STATUS_ANSWERED);
    cr_assert_eq(out.id, attr.id);
    cr_assert_eq(out.timestamp_ns, attr.timestamp_ns);
    cr_assert_eq(out.pid, 100);
    cr_assert_eq(out.uid, 1000);
    cr_assert_eq(out.cgroup_id, 4242);
    cr_assert_str_eq(out.command, "curl");
    cr_assert_eq(out.family, EVENT_FAMILY_IPV4);
    cr_assert_eq(out.protocol, IPPROTO_UDP);
    cr_assert_eq(memcmp(out.saddr, attr.saddr, 16), 0);
    cr_assert_eq(out.sport, 40000);
    cr_assert_eq(memcmp(out.daddr, k.server, 16), 0);
    cr_assert_eq(out.dport, d.port);
    cr_assert_str_eq(out.u.dns.query, "alias2.test");
    cr_assert_eq(out.u.dns.query_type, DNS_TYPE_A);
    cr_assert_eq(out.u.dns.rcode, DNS_RCODE_NOERROR);
    cr_assert_eq(out.u.dns.transaction_id, 0x0101);
    cr_assert_eq(out.u.dns.latency_ns, 2500); /* from the first transmission */
    cr_assert_str_eq(answer_at(&out, 0), "alias.test");
    cr_assert_str_eq(answer_at(&out, 1), "web.test");
    cr_assert_str_eq(answer_at(&out, 2), "10.1.2.3");
    cr_assert_null(answer_at(&out, 3));
    cr_assert_eq(ttl, 300);
    event_clear(&out);
    /* The same answer again: nothing pending any more. */
    cr_assert_eq(dns_tracker_answer(t, &k, a, 3600, &out, NULL), 0);

    /* NXDOMAIN: answered, no answers. */
    cr_assert_eq(dns_parse(nx.q, nx.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 4000), 1);
    cr_assert_eq(dns_parse(nx.a, nx.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 4100, &out, &ttl), 1);
    cr_assert_eq(out.u.dns.rcode, DNS_RCODE_NXDOMAIN);
    cr_assert_eq(out.u.dns.answers_len, 0);
    cr_assert_null(out.u.dns.answers);
    cr_assert_eq(ttl, 0);
    event_clear(&out);

    /* web.test's answer from another socket, another server port: unmatched. */
    cr_assert_eq(dns_parse(web.q, web.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 5000), 1);
    cr_assert_eq(dns_parse(web.a, web.alen, a), DNS_OK);
    struct dns_key other = k;
    other.cookie = 78;
    cr_assert_eq(dns_tracker_answer(t, &other, a, 5100, &out, NULL), 0);
    other = k;
    other.server_port = 53;
    cr_assert_eq(dns_tracker_answer(t, &other, a, 5100, &out, NULL), 0);
    other = k;
    other.protocol = IPPROTO_TCP;
    cr_assert_eq(dns_tracker_answer(t, &other, a, 5100, &out, NULL), 0);

    /* ... and never answered in time: a timeout, not before 5000 ns. */
    struct timeouts to = {.n = 0};
    cr_assert_eq(dns_tracker_expire(t, 9999, on_timeout, &to), 0);
    cr_assert_eq(dns_tracker_expire(t, 10000, on_timeout, &to), 1);
    cr_assert_eq(to.ev[0].status, EVENT_STATUS_TIMEOUT);
    cr_assert_eq(to.ev[0].type, EVENT_DNS);
    cr_assert_str_eq(to.ev[0].u.dns.query, "web.test");
    cr_assert_eq(to.ev[0].u.dns.transaction_id, 0x0202);
    cr_assert_eq(to.ev[0].u.dns.latency_ns, 0);
    cr_assert_eq(to.ev[0].pid, 100);
    cr_assert_eq(to.ev[0].dport, d.port);
    event_clear(&to.ev[0]);

    dns_tracker_parse_error(t, DNS_ERR_POINTER_LOOP);
    dns_tracker_parse_error(t, DNS_ERR_POINTER_LOOP);
    dns_tracker_parse_error(t, DNS_ERR_TRUNCATED);
    struct dns_tracker_stats st;
    dns_tracker_get_stats(t, &st);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.queries, 3);
    cr_assert_eq(st.retries, 1);
    cr_assert_eq(st.answered, 2);
    cr_assert_eq(st.timeouts, 1);
    cr_assert_eq(st.unmatched, 4);
    cr_assert_eq(st.mismatched, 0);
    cr_assert_eq(st.evicted, 0);
    cr_assert_eq(st.parse_errors[-DNS_ERR_POINTER_LOOP], 2);
    cr_assert_eq(st.parse_errors[-DNS_ERR_TRUNCATED], 1);
    free(q);
    free(a);
    dns_tracker_free(t);
}

/*
 * An answer the server truncated (TC: too large for UDP, the client asks again
 * over TCP) is told from an empty NOERROR, and one with more records than the
 * event lists says so too; a whole answer says neither.
 */
Test(dns_tracker, truncated_answers_are_flagged)
{
    struct dnsmasq d;
    struct exchange many, web;
    dnsmasq_start(&d);
    exchange_udp(&d, &many, 0x0a0a, "many.test", DNS_TYPE_A);
    exchange_udp(&d, &web, 0x0b0b, "web.test", DNS_TYPE_A);
    dnsmasq_stop(&d);

    struct dns_tracker *t = dns_tracker_new(NULL);
    struct dns_message *q = msg_new(), *a = msg_new();
    struct dns_key k = key_of(77, &d);
    struct event attr = attribution(100), out = {0};

    cr_assert_eq(dns_parse(many.q, many.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 1000), 1);
    cr_assert_eq(dns_parse(many.a, many.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 2000, &out, NULL), 1);
    cr_assert_not_null(answer_at(&out, DNS_ANSWERS_MAX - 1));
    cr_assert_null(answer_at(&out, DNS_ANSWERS_MAX));
    cr_assert(out.u.dns.answers_truncated, "%d records, %d listed", MANY, DNS_ANSWERS_MAX);
    cr_assert_not(out.u.dns.tc);
    event_clear(&out);

    cr_assert_eq(dns_parse(web.q, web.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 3000), 1);
    cr_assert_eq(dns_parse(web.a, web.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 4000, &out, NULL), 1);
    cr_assert_not(out.u.dns.answers_truncated);
    cr_assert_not(out.u.dns.tc);
    event_clear(&out);

    /* The server's truncated answer: the question alone, with QR and TC. */
    uint8_t tc[512];
    memcpy(tc, web.q, web.qlen);
    tc[2] = 0x83; /* QR, opcode 0, AA off, TC, RD */
    tc[3] = 0x80; /* RA, NOERROR */
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 5000), 1);
    cr_assert_eq(dns_parse(tc, web.qlen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 6000, &out, NULL), 1);
    cr_assert(out.u.dns.tc);
    cr_assert_eq(out.u.dns.rcode, DNS_RCODE_NOERROR);
    cr_assert_null(out.u.dns.answers);
    cr_assert_not(out.u.dns.answers_truncated);
    event_clear(&out);

    free(q);
    free(a);
    dns_tracker_free(t);
}

Test(dns_tracker, mismatched_question_is_not_matched)
{
    struct dnsmasq d;
    struct exchange web, alias, web6;
    dnsmasq_start(&d);
    exchange_udp(&d, &web, 0x4242, "web.test", DNS_TYPE_A);
    exchange_udp(&d, &alias, 0x4242, "alias.test", DNS_TYPE_A); /* same ID, other name */
    exchange_udp(&d, &web6, 0x4242, "web.test", DNS_TYPE_AAAA); /* same ID, other type */
    dnsmasq_stop(&d);

    struct dns_tracker *t = dns_tracker_new(NULL);
    struct dns_message *q = msg_new(), *a = msg_new();
    struct dns_key k = key_of(1, &d);
    struct event attr = attribution(200), out;
    memset(&out, 0, sizeof(out));
    cr_assert_eq(dns_parse(web.q, web.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 10), 1);
    /* Another question under the same ID before the answer: not a retry, not tracked. */
    cr_assert_eq(dns_parse(alias.q, alias.qlen, q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 11), 0);
    cr_assert_eq(dns_parse(web.q, web.qlen, q), DNS_OK);
    cr_assert_eq(dns_parse(alias.a, alias.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 20, &out, NULL), 0);
    cr_assert_eq(dns_parse(web6.a, web6.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 20, &out, NULL), 0);
    /* The query still waits for its own answer. */
    cr_assert_eq(dns_parse(web.a, web.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 30, &out, NULL), 1);
    cr_assert_str_eq(out.u.dns.query, "web.test");
    cr_assert_str_eq(answer_at(&out, 0), "10.1.2.3");
    event_clear(&out);
    /* A query handed as an answer and the reverse are refused, not counted. */
    cr_assert_eq(dns_tracker_answer(t, &k, q, 30, &out, NULL), -EINVAL);
    cr_assert_eq(dns_tracker_query(t, &k, a, &attr, 30), -EINVAL);
    /* Asked again, and only another question's answer comes under its ID: it may have been
     * answered (a misbehaving server), so it expires unknown, not as a timeout. */
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 40), 1);
    cr_assert_eq(dns_parse(alias.a, alias.alen, a), DNS_OK);
    cr_assert_eq(dns_tracker_answer(t, &k, a, 50, &out, NULL), 0);
    struct timeouts to = {.n = 0};
    cr_assert_eq(dns_tracker_expire(t, 40 + 6000000000ull, on_timeout, &to), 1);
    expect_statuses(&to, (const uint8_t[]){EVENT_STATUS_UNKNOWN}, 1);
    struct dns_tracker_stats st;
    dns_tracker_get_stats(t, &st);
    cr_assert_eq(st.mismatched, 3);
    cr_assert_eq(st.collisions, 1);
    cr_assert_eq(st.retries, 0);
    cr_assert_eq(st.unmatched, 0);
    cr_assert_eq(st.answered, 1);
    cr_assert_eq(st.queries, 2);
    free(q);
    free(a);
    dns_tracker_free(t);
}

Test(dns_tracker, full_table_evicts_the_oldest)
{
    struct dns_tracker *t = dns_tracker_new(&(struct dns_tracker_config){.max_pending = 3});
    struct dns_message *q = msg_new(), *a = msg_new();
    struct dns_key k = key_of(5, NULL);
    struct event attr = attribution(300), out;
    uint8_t buf[512];
    char name[32];
    for (uint16_t id = 1; id <= 5; id++) {
        snprintf(name, sizeof(name), "n%u.example", id);
        cr_assert_eq(dns_parse(buf, build_query(buf, id, name, DNS_TYPE_A), q), DNS_OK);
        cr_assert_eq(dns_tracker_query(t, &k, q, &attr, id), 1);
    }
    struct dns_tracker_stats st;
    dns_tracker_get_stats(t, &st);
    cr_assert_eq(st.pending, 3);
    cr_assert_eq(st.evicted, 2);
    cr_assert_eq(st.queries, 5);
    /* Queries 1 and 2 are gone (no event), 3..5 wait. */
    struct timeouts to = {.n = 0};
    cr_assert_eq(dns_tracker_expire(t, 1000ull * 1000000000ull, on_timeout, &to), 3);
    for (size_t i = 0; i < to.n; i++) {
        snprintf(name, sizeof(name), "n%zu.example", i + 3);
        cr_assert_str_eq(to.ev[i].u.dns.query, name);
        event_clear(&to.ev[i]);
    }
    /* A late answer to an evicted query is unmatched. */
    uint8_t ans[512];
    size_t n = build_query(ans, 1, "n1.example", DNS_TYPE_A);
    ans[2] |= 0x80;
    cr_assert_eq(dns_parse(ans, n, a), DNS_OK);
    memset(&out, 0, sizeof(out));
    cr_assert_eq(dns_tracker_answer(t, &k, a, 10, &out, NULL), 0);
    dns_tracker_get_stats(t, &st);
    cr_assert_eq(st.unmatched, 1);
    cr_assert_eq(st.timeouts, 3);
    cr_assert_eq(st.pending, 0);
    cr_assert_gt(dns_tracker_entry_size(), sizeof(struct event));
    /* Freed with queries pending: no leak (ASan). */
    cr_assert_eq(dns_tracker_query(t, &k, q, &attr, 1), 1);
    free(q);
    free(a);
    dns_tracker_free(t);
}

/* Query id for x.example/A of socket key, sent at `at`. */
static void ask(struct dns_tracker *t, struct dns_message *q, const struct dns_key *key,
                uint16_t id, uint64_t at)
{
    uint8_t buf[512];
    struct event attr = attribution(300);
    cr_assert_eq(dns_parse(buf, build_query(buf, id, "x.example", DNS_TYPE_A), q), DNS_OK);
    cr_assert_eq(dns_tracker_query(t, key, q, &attr, at), 1);
}

/*
 * Answers lost: for every query sent before a loss seen in the kernel; for the queries of one
 * socket whose answers were lost (a TCP stream given up), or of one key and id whose answer
 * said no question. The rest still time out. Past 64 remembered socket losses within the
 * timeout, a forgotten one counts for every query sent before it.
 */
Test(dns_tracker, queries_whose_answer_may_be_lost_expire_unknown)
{
    struct dns_tracker *t = dns_tracker_new(&(struct dns_tracker_config){.timeout_ns = 1000});
    struct dns_message *q = msg_new();
    struct dns_key k = key_of(5, NULL), other = key_of(6, NULL);
    struct timeouts to = {.n = 0};

    /* Socket 5 loses answers at 150: its query of 100 is unsure, socket 6's and its own later
     * one are not; id 4 gets an answer that names no question. */
    ask(t, q, &k, 1, 100);
    ask(t, q, &other, 2, 110);
    dns_tracker_socket_unsure(t, 5, 150);
    ask(t, q, &k, 3, 200);
    ask(t, q, &k, 4, 210);
    dns_tracker_answer_unreadable(t, &k, 4);
    dns_tracker_answer_unreadable(t, &other, 99); /* pending under no query: nothing */
    cr_assert_eq(dns_tracker_expire(t, 1300, on_timeout, &to), 4);
    static const uint8_t want[] = {EVENT_STATUS_UNKNOWN, EVENT_STATUS_TIMEOUT, EVENT_STATUS_TIMEOUT,
                                   EVENT_STATUS_UNKNOWN};
    expect_statuses(&to, want, 4);

    /* A loss seen in the kernel at 2100: what was sent before, whatever its socket. */
    ask(t, q, &k, 5, 2000);
    ask(t, q, &other, 6, 2050);
    dns_tracker_answers_lost(t, 2100);
    ask(t, q, &other, 7, 2200);
    cr_assert_eq(dns_tracker_expire(t, 3300, on_timeout, &to), 3);
    expect_statuses(
        &to, (const uint8_t[]){EVENT_STATUS_UNKNOWN, EVENT_STATUS_UNKNOWN, EVENT_STATUS_TIMEOUT},
        3);

    /* 65 socket losses within the timeout: the first, forgotten, counts for every socket. */
    ask(t, q, &other, 8, 5000);
    for (uint64_t c = 0; c < 65; c++)
        dns_tracker_socket_unsure(t, 1000 + c, 5100 + c);
    ask(t, q, &other, 9, 5200);
    cr_assert_eq(dns_tracker_expire(t, 6300, on_timeout, &to), 2);
    expect_statuses(&to, (const uint8_t[]){EVENT_STATUS_UNKNOWN, EVENT_STATUS_TIMEOUT}, 2);

    struct dns_tracker_stats st;
    dns_tracker_get_stats(t, &st);
    cr_assert_eq(st.unknown, 5);
    cr_assert_eq(st.timeouts, 4);
    free(q);
    dns_tracker_free(t);
}

/*
 * One socket losing answers again and again (a flood) holds one of the 64 places, with its
 * latest loss: it neither pushes other sockets' losses out nor makes every query unsure. A
 * socket forgotten while a query sent before its loss is still pending, even past DNS_TIMEOUT
 * (it expires at the next scan), counts for every query sent before it.
 */
Test(dns_tracker, a_socket_losing_answers_again_keeps_one_place)
{
    struct dns_tracker *t = dns_tracker_new(&(struct dns_tracker_config){.timeout_ns = 1000});
    struct dns_message *q = msg_new();
    struct dns_key flood = key_of(5, NULL), quiet = key_of(6, NULL), other = key_of(7, NULL);
    struct timeouts to = {.n = 0};

    ask(t, q, &flood, 1, 100);
    ask(t, q, &quiet, 2, 100);
    ask(t, q, &other, 3, 100);
    dns_tracker_socket_unsure(t, 7, 150);
    for (uint64_t i = 0; i < 1000; i++)
        dns_tracker_socket_unsure(t, 5, 200 + i);
    ask(t, q, &flood, 4, 1100); /* before the flood's last loss, at 1199 */
    cr_assert_eq(dns_tracker_expire(t, 2200, on_timeout, &to), 4);
    static const uint8_t want[] = {EVENT_STATUS_UNKNOWN, EVENT_STATUS_TIMEOUT, EVENT_STATUS_UNKNOWN,
                                   EVENT_STATUS_UNKNOWN};
    expect_statuses(&to, want, 4);

    /* 64 other sockets push out socket 5's loss at 1199, long ago but before a query of socket
     * 6 still pending (the scan that expires it has not run): that one is unsure. */
    ask(t, q, &quiet, 5, 1150);
    for (uint64_t c = 0; c < 64; c++)
        dns_tracker_socket_unsure(t, 1000 + c, 5000 + c);
    cr_assert_eq(dns_tracker_expire(t, 6000, on_timeout, &to), 1);
    cr_assert_eq(to.ev[0].status, EVENT_STATUS_UNKNOWN);
    event_clear(&to.ev[0]);
    free(q);
    dns_tracker_free(t);
}

/* ---- Name cache ------------------------------------------------------------- */

static struct event answered(const char *query, const char *answers, size_t len, uint16_t rcode)
{
    struct event e = {.type = EVENT_DNS, .status = EVENT_STATUS_ANSWERED, .cgroup_id = 9};
    e.u.dns.query = strdup(query);
    e.u.dns.rcode = rcode;
    if (len) {
        e.u.dns.answers = malloc(len);
        memcpy(e.u.dns.answers, answers, len);
        e.u.dns.answers_len = (uint32_t)len;
    }
    return e;
}

Test(dns_names, add_lookup_expire_scope)
{
    struct dns_names *c = dns_names_new(NULL);
    cr_assert_not_null(c);
    /* What the tracker makes of the real chain alias2.test -> alias.test -> web.test. */
    static const char ans[] = "alias.test\0web.test\0"
                              "10.1.2.3\0fd00::3";
    struct event e = answered("alias2.test", ans, sizeof(ans), DNS_RCODE_NOERROR);
    cr_assert_eq(dns_names_add(c, 9, &e, 60, 0), 2);
    uint8_t v4[16] = {10, 1, 2, 3}, v6[16] = {0xfd, 0, [15] = 3}, other[16] = {10, 1, 2, 4};
    cr_assert_str_eq(dns_names_lookup(c, 9, EVENT_FAMILY_IPV4, v4, 59 * SEC), "alias2.test");
    cr_assert_str_eq(dns_names_lookup(c, 9, EVENT_FAMILY_IPV6, v6, 59 * SEC), "alias2.test");
    /* The v4 address read as v6 (trailing garbage ignored for v4). */
    cr_assert_null(dns_names_lookup(c, 9, EVENT_FAMILY_IPV6, v4, 1));
    v4[8] = 0x77;
    cr_assert_str_eq(dns_names_lookup(c, 9, EVENT_FAMILY_IPV4, v4, 1), "alias2.test");
    cr_assert_null(dns_names_lookup(c, 9, EVENT_FAMILY_IPV4, other, 1));
    /* Another scope sees nothing; scope 0 (unknown) is never used. */
    cr_assert_null(dns_names_lookup(c, 10, EVENT_FAMILY_IPV4, v4, 1));
    cr_assert_eq(dns_names_add(c, 0, &e, 60, 0), 0);
    cr_assert_null(dns_names_lookup(c, 0, EVENT_FAMILY_IPV4, v4, 1));
    /* Expired at the TTL. */
    cr_assert_null(dns_names_lookup(c, 9, EVENT_FAMILY_IPV4, v4, 60 * SEC));
    struct dns_names_stats st;
    dns_names_get_stats(c, &st);
    cr_assert_eq(st.added, 2);
    cr_assert_eq(st.expired, 1);
    cr_assert_eq(st.entries, 1);
    cr_assert_eq(st.hits, 3);
    cr_assert_eq(st.misses, 4);

    /* A later answer renames and refreshes. */
    static const char ans2[] = "fd00::3";
    struct event e2 = answered("web.test", ans2, sizeof(ans2), DNS_RCODE_NOERROR);
    cr_assert_eq(dns_names_add(c, 9, &e2, 60, 30 * SEC), 1);
    cr_assert_str_eq(dns_names_lookup(c, 9, EVENT_FAMILY_IPV6, v6, 89 * SEC), "web.test");
    dns_names_get_stats(c, &st);
    cr_assert_eq(st.updated, 1);

    /* Not added: NXDOMAIN, a timeout, another type. */
    struct event nx = answered("x.test", ans2, sizeof(ans2), DNS_RCODE_NXDOMAIN);
    cr_assert_eq(dns_names_add(c, 9, &nx, 60, 0), 0);
    nx.u.dns.rcode = 0;
    nx.status = EVENT_STATUS_TIMEOUT;
    cr_assert_eq(dns_names_add(c, 9, &nx, 60, 0), 0);
    nx.status = EVENT_STATUS_ANSWERED;
    nx.type = EVENT_CONNECTION;
    cr_assert_eq(dns_names_add(c, 9, &nx, 60, 0), 0);
    nx.type = EVENT_DNS;
    event_clear(&nx);
    event_clear(&e);
    event_clear(&e2);
    dns_names_free(c);
}

Test(dns_names, ttl_clamped)
{
    struct dns_names *c =
        dns_names_new(&(struct dns_names_config){.min_ttl_s = 5, .max_ttl_s = 600});
    static const char a1[] = "192.0.2.1", a2[] = "192.0.2.2";
    uint8_t x1[16] = {192, 0, 2, 1}, x2[16] = {192, 0, 2, 2};
    struct event e1 = answered("zero.example", a1, sizeof(a1), 0);
    struct event e2 = answered("day.example", a2, sizeof(a2), 0);
    cr_assert_eq(dns_names_add(c, 1, &e1, 0, 0), 1);
    cr_assert_eq(dns_names_add(c, 1, &e2, 86400, 0), 1);
    cr_assert_str_eq(dns_names_lookup(c, 1, EVENT_FAMILY_IPV4, x1, 5 * SEC - 1), "zero.example");
    cr_assert_null(dns_names_lookup(c, 1, EVENT_FAMILY_IPV4, x1, 5 * SEC));
    cr_assert_str_eq(dns_names_lookup(c, 1, EVENT_FAMILY_IPV4, x2, 600 * SEC - 1), "day.example");
    cr_assert_null(dns_names_lookup(c, 1, EVENT_FAMILY_IPV4, x2, 600 * SEC));
    event_clear(&e1);
    event_clear(&e2);
    dns_names_free(c);
}

Test(dns_names, full_cache_evicts_the_oldest)
{
    struct dns_names *c = dns_names_new(&(struct dns_names_config){.max_entries = 4});
    char addr[32], name[32];
    for (int i = 1; i <= 6; i++) {
        snprintf(addr, sizeof(addr), "192.0.2.%d", i);
        snprintf(name, sizeof(name), "h%d.example", i);
        struct event e = answered(name, addr, strlen(addr) + 1, 0);
        cr_assert_eq(dns_names_add(c, 3, &e, 60, (uint64_t)i), 1);
        event_clear(&e);
    }
    struct dns_names_stats st;
    dns_names_get_stats(c, &st);
    cr_assert_eq(st.entries, 4);
    cr_assert_eq(st.evicted, 2);
    for (int i = 1; i <= 6; i++) {
        uint8_t a[16] = {192, 0, 2, (uint8_t)i};
        const char *n = dns_names_lookup(c, 3, EVENT_FAMILY_IPV4, a, 10);
        if (i <= 2) {
            cr_assert_null(n, "%d", i);
        } else {
            snprintf(name, sizeof(name), "h%d.example", i);
            cr_assert_str_eq(n, name);
        }
    }
    cr_assert_gt(dns_names_entry_size(), 0);
    dns_names_free(c); /* with entries: no leak (ASan) */
}

Test(dns_names, scope_of_an_event)
{
    struct event e = {.cgroup_id = 1234};
    cr_assert_eq(dns_names_scope(&e), 1234);
    struct event p1 = {.cgroup_id = 1}, p2 = {.cgroup_id = 2}, p3 = {.cgroup_id = 1};
    p1.k8s.pod_uid = "5f1c0c1e-aaaa-4bbb-8ccc-123456789abc";
    p2.k8s.pod_uid = "5f1c0c1e-aaaa-4bbb-8ccc-123456789abc"; /* another container, same pod */
    p3.k8s.pod_uid = "0d6a7e2b-dddd-4eee-9fff-123456789abc";
    cr_assert_eq(dns_names_scope(&p1), dns_names_scope(&p2));
    cr_assert_neq(dns_names_scope(&p1), dns_names_scope(&p3));
    cr_assert_neq(dns_names_scope(&p1), 1);
    struct event none = {.cgroup_id = 0};
    cr_assert_eq(dns_names_scope(&none), 0);
}

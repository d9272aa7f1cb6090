/*
 * Tests for cmd/agent/dns_agent: DNS messages as the capture delivers them
 * (struct records_dns) through the real tracker and name cache of pkg/dns
 * into dns events, timeouts from the expiry, peer_dns on later connections of
 * the same cgroup only, and the /metrics series with their cap. No root, no
 * BPF: the messages are built here byte by byte.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "../cmd/agent/dns_agent.h"
#include "buf.h"
#include "dns_events.h"
#include "event.h"
#include "intern.h"

#define SEC 1000000000ull

/* What the emit callback saw. */
static struct event got[16];
static uint32_t got_ttl[16];
static size_t ngot;

static void on_emit(void *ctx, struct event *e, uint32_t ttl_s)
{
    struct dns_agent *d = *(struct dns_agent **)ctx;
    cr_assert_lt(ngot, 16);
    e->node = intern("n1");
    dns_agent_learn(d, e, ttl_s, e->u.dns.latency_ns + 10 * SEC);
    dns_agent_count(d, e);
    got_ttl[ngot] = ttl_s;
    cr_assert_eq(event_copy(&got[ngot++], e), 0);
}

static struct dns_agent *agent_new(size_t max_series, struct dns_agent **slot)
{
    struct dns_agent_config cfg = {
        .timeout_ns = 2 * SEC, .pending_max = 64, .max_series = max_series};
    *slot = dns_agent_new(&cfg, on_emit, slot);
    cr_assert_not_null(*slot);
    return *slot;
}

static void reset(void)
{
    for (size_t i = 0; i < ngot; i++)
        event_clear(&got[i]);
    ngot = 0;
}

/* A query (or, with an address, its answer: one A record with TTL 60) for name. */
static size_t message(uint8_t *p, uint16_t id, const char *name, const char *answer_v4, int rcode)
{
    size_t n = 12;
    memset(p, 0, 12);
    p[0] = (uint8_t)(id >> 8), p[1] = (uint8_t)id;
    p[2] = answer_v4 || rcode ? 0x81 : 0x01;
    p[3] = answer_v4 || rcode ? (uint8_t)(0x80 | rcode) : 0;
    p[5] = 1;
    for (const char *s = name; *s;) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        p[n++] = (uint8_t)l;
        memcpy(p + n, s, l);
        n += l;
        s += l + (dot ? 1 : 0);
    }
    p[n++] = 0;
    p[n++] = 0, p[n++] = 1, p[n++] = 0, p[n++] = 1;
    if (answer_v4) {
        p[7] = 1;
        static const uint8_t rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
        memcpy(p + n, rr, sizeof(rr));
        n += sizeof(rr);
        cr_assert_eq(inet_pton(AF_INET, answer_v4, p + n), 1);
        n += 4;
    }
    return n;
}

/* The records_dns the capture would hand over for m (client 10.0.0.7:40000, server :53). */
static struct records_dns record(bool answer, const uint8_t *msg, size_t len, uint64_t t,
                                 uint64_t cgroup)
{
    struct records_dns r = {.timestamp_ns = 1796000000000000000ull + t,
                            .boot_ns = t,
                            .cgroup_id = cgroup,
                            .cookie = cgroup * 100,
                            .answer = answer,
                            .family = EVENT_FAMILY_IPV4,
                            .protocol = IPPROTO_UDP,
                            .payload = msg,
                            .payload_len = len,
                            .wire_len = len};
    uint8_t client[4] = {10, 0, 0, 7}, server[4] = {10, 96, 0, 10};
    memcpy(answer ? r.daddr : r.saddr, client, 4);
    memcpy(answer ? r.saddr : r.daddr, server, 4);
    r.sport = answer ? 53 : 40000;
    r.dport = answer ? 40000 : 53;
    if (!answer) {
        r.pid = 4242;
        r.uid = 1000;
        strcpy(r.command, "curl");
    }
    return r;
}

static void ask(struct dns_agent *d, uint16_t id, const char *name, const char *answer, int rcode,
                uint64_t t, uint64_t cgroup)
{
    uint8_t q[512], a[512];
    size_t ql = message(q, id, name, NULL, 0);
    struct records_dns rq = record(false, q, ql, t, cgroup);
    dns_agent_message(d, &rq);
    if (!answer && !rcode)
        return;
    size_t al = message(a, id, name, answer, rcode);
    struct records_dns ra = record(true, a, al, t + 1500000, cgroup);
    dns_agent_message(d, &ra);
}

Test(dns_agent, a_query_and_its_answer_make_one_event)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 0xbeef, "Api.Example.com", "10.0.0.5", 0, 1 * SEC, 77);
    cr_assert_eq(ngot, 1);
    struct event *e = &got[0];
    char a[46];
    cr_assert_eq(e->type, EVENT_DNS);
    cr_assert_eq(e->status, EVENT_STATUS_ANSWERED);
    cr_assert_str_eq(e->u.dns.query, "api.example.com");
    cr_assert_eq(e->u.dns.query_type, 1);
    cr_assert_eq(e->u.dns.rcode, 0);
    cr_assert_eq(e->u.dns.transaction_id, 0xbeef);
    cr_assert_eq(e->u.dns.latency_ns, 1500000);
    cr_assert_str_eq(e->u.dns.answers, "10.0.0.5");
    cr_assert_eq(e->pid, 4242);
    cr_assert_str_eq(e->command, "curl");
    cr_assert_eq(e->cgroup_id, 77);
    cr_assert_eq(e->timestamp_ns, 1796000000000000000ull + SEC);
    cr_assert_eq(e->protocol, IPPROTO_UDP);
    cr_assert_str_eq(event_addr_str(e->family, e->daddr, a, sizeof(a)), "10.96.0.10");
    cr_assert_eq(e->dport, 53);
    cr_assert_str_eq(event_addr_str(e->family, e->saddr, a, sizeof(a)), "10.0.0.7");
    cr_assert_eq(e->sport, 40000);
    cr_assert_eq(got_ttl[0], 60);
    struct dns_agent_stats st;
    dns_agent_expire(d, 2 * SEC); /* refreshes the snapshot */
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.messages, 2);
    cr_assert_eq(st.tracker.answered, 1);
    cr_assert_eq(st.tracker.pending, 0);
    reset();
    dns_agent_free(d);
}

/* Appends m (len bytes) to a TCP segment at *n, with its 2-byte length prefix. */
static void tcp_append(uint8_t *seg, size_t *n, const uint8_t *m, size_t len)
{
    seg[(*n)++] = (uint8_t)(len >> 8);
    seg[(*n)++] = (uint8_t)len;
    memcpy(seg + *n, m, len);
    *n += len;
}

/* Several queries in one TCP segment (a pipelining resolver), their answers in another. */
Test(dns_agent, every_message_of_a_tcp_segment_counts)
{
    static const char *names[] = {"a.example", "b.example", "c.example"};
    static const char *addrs[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3"};
    uint8_t qs[1024], as[1024], one[256];
    size_t qn = 0, an = 0;
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});

    reset();
    for (int i = 0; i < 3; i++) {
        tcp_append(qs, &qn, one, message(one, (uint16_t)(0x100 + i), names[i], NULL, 0));
        tcp_append(as, &an, one, message(one, (uint16_t)(0x100 + i), names[i], addrs[i], 0));
    }
    struct records_dns rq = record(false, qs, qn, 1 * SEC, 9);
    rq.protocol = IPPROTO_TCP;
    rq.tcp_order = DNS_TCP_NEXT; /* sequence numbers from 0 */
    dns_agent_message(d, &rq);
    /* The answers come back in another order, in one segment too. */
    an = 0;
    for (int i = 2; i >= 0; i--)
        tcp_append(as, &an, one, message(one, (uint16_t)(0x100 + i), names[i], addrs[i], 0));
    struct records_dns ra = record(true, as, an, 1 * SEC + 1000, 9);
    ra.protocol = IPPROTO_TCP;
    ra.tcp_order = DNS_TCP_NEXT;
    dns_agent_message(d, &ra);

    cr_assert_eq(ngot, 3);
    for (int k = 0; k < 3; k++) {
        int i = 2 - k;
        cr_assert_str_eq(got[k].u.dns.query, names[i]);
        cr_assert_str_eq(got[k].u.dns.answers, addrs[i]);
        cr_assert_eq(got[k].u.dns.transaction_id, 0x100 + i);
        cr_assert_eq(got[k].protocol, IPPROTO_TCP);
    }
    struct dns_agent_stats st;
    dns_agent_expire(d, 2 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.answered, 3);
    cr_assert_eq(st.tracker.unmatched, 0);

    /* A message cut off by the segment's end is the last one taken. */
    reset();
    qn = 0;
    tcp_append(qs, &qn, one, message(one, 0x200, "d.example", NULL, 0));
    size_t cut = message(one, 0x201, "e.example", NULL, 0);
    tcp_append(qs, &qn, one, cut);
    rq = record(false, qs, qn - cut / 2, 3 * SEC, 9);
    rq.protocol = IPPROTO_TCP;
    rq.tcp_order = DNS_TCP_NEXT;
    rq.cookie++; /* another connection */
    dns_agent_message(d, &rq);
    dns_agent_expire(d, 3 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.pending, 1, "the whole query is tracked, the cut one is not");
    reset();
    dns_agent_free(d);
}

/* The socket of tcp_part(): each connection_next() a new one, its streams from sequence 0. */
static uint64_t tcp_cookie = 900;

static void connection_next(void)
{
    tcp_cookie++;
}

/* The TCP segment [from, to) of the stream s (its sequence numbers from 0), as the capture
 * hands it over: placed as order says, the socket's next byte at next. */
static void tcp_part_as(struct dns_agent *d, bool answer, const uint8_t *s, size_t from, size_t to,
                        uint64_t t, uint8_t order, size_t next)
{
    struct records_dns r = record(answer, s + from, to - from, t, 9);
    r.cookie = tcp_cookie;
    r.protocol = IPPROTO_TCP;
    r.tcp_seq = (uint32_t)from;
    r.tcp_next = (uint32_t)next;
    r.tcp_order = order;
    dns_agent_message(d, &r);
}

/* In order: the socket's next bytes. */
static void tcp_part(struct dns_agent *d, bool answer, const uint8_t *s, size_t from, size_t to,
                     uint64_t t)
{
    tcp_part_as(d, answer, s, from, to, t, DNS_TCP_NEXT, from);
}

/*
 * TCP is a byte stream: a message in several segments (the length prefix alone, a query
 * written in pieces, one message ending and the next starting in a segment) is taken when
 * its last byte comes. The query is sent when its first byte is, the answer in with its last.
 */
Test(dns_agent, a_tcp_message_in_several_segments_is_taken_whole)
{
    uint8_t qs[512], as[512], one[256];
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    struct dns_agent_stats st;

    /* The prefix alone, then the rest; the answer the same way. */
    reset();
    connection_next();
    size_t qn = 0, an = 0;
    tcp_append(qs, &qn, one, message(one, 0x301, "split.example", NULL, 0));
    tcp_append(as, &an, one, message(one, 0x301, "split.example", "10.0.0.9", 0));
    tcp_part(d, false, qs, 0, 2, 1 * SEC);
    tcp_part(d, false, qs, 2, qn, 1 * SEC + 50000000);
    tcp_part(d, true, as, 0, 2, 1 * SEC + 60000000);
    cr_assert_eq(ngot, 0, "not before the answer's last byte");
    tcp_part(d, true, as, 2, an, 1 * SEC + 110000000);
    cr_assert_eq(ngot, 1);
    cr_assert_str_eq(got[0].u.dns.query, "split.example");
    cr_assert_str_eq(got[0].u.dns.answers, "10.0.0.9");
    cr_assert_eq(got[0].status, EVENT_STATUS_ANSWERED);
    cr_assert_eq(got[0].timestamp_ns, 1796000000000000000ull + SEC, "the query's first byte");
    cr_assert_eq(got[0].u.dns.latency_ns, 110000000, "to the answer's last byte");
    cr_assert_eq(got[0].pid, 4242);

    /* Cut anywhere (inside the prefix too), in three pieces; two pipelined queries whose
     * second starts in the first one's segment. */
    reset();
    connection_next();
    qn = an = 0;
    tcp_append(qs, &qn, one, message(one, 0x302, "p1.example", NULL, 0));
    size_t first = qn;
    tcp_append(qs, &qn, one, message(one, 0x303, "p2.example", NULL, 0));
    tcp_append(as, &an, one, message(one, 0x302, "p1.example", "10.0.0.1", 0));
    tcp_append(as, &an, one, message(one, 0x303, "p2.example", "10.0.0.2", 0));
    tcp_part(d, false, qs, 0, 10, 2 * SEC);
    tcp_part(d, false, qs, 10, first + 1, 2 * SEC + 1000);
    tcp_part(d, false, qs, first + 1, qn, 2 * SEC + 2000);
    tcp_part(d, true, as, 0, 1, 2 * SEC + 3000);
    tcp_part(d, true, as, 1, an - 5, 2 * SEC + 4000);
    cr_assert_eq(ngot, 1, "the first answer is whole");
    tcp_part(d, true, as, an - 5, an, 2 * SEC + 5000);
    cr_assert_eq(ngot, 2);
    cr_assert_str_eq(got[0].u.dns.query, "p1.example");
    cr_assert_str_eq(got[1].u.dns.query, "p2.example");
    cr_assert_str_eq(got[1].u.dns.answers, "10.0.0.2");
    dns_agent_expire(d, 3 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.answered, 3);
    cr_assert_eq(st.tracker.parse_errors[-DNS_ERR_TRUNCATED], 0);
    cr_assert_eq(st.tcp_reassembled, 6);

    /* A message whose end never comes is dropped after a while, counted; nothing else. */
    reset();
    connection_next();
    qn = 0;
    tcp_append(qs, &qn, one, message(one, 0x304, "never.example", NULL, 0));
    tcp_part(d, false, qs, 0, qn - 3, 4 * SEC);
    dns_agent_expire(d, 5 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tcp_partial_dropped, 0);
    dns_agent_expire(d, 30 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tcp_partial_dropped, 1);
    cr_assert_eq(st.tracker.pending, 0);
    cr_assert_eq(ngot, 0);
    struct buf m = {0};
    dns_agent_metrics(d, 0, &m);
    buf_putc(&m, '\0');
    cr_assert(strstr(m.data, "\nebpf_agent_dns_tcp_partial_dropped_total 1\n"), "%s", m.data);

    /* A held message's next segment the capture copied only in part is one truncated
     * message, counted once. */
    reset();
    connection_next();
    qn = 0;
    tcp_append(qs, &qn, one, message(one, 0x305, "cut.example", NULL, 0));
    tcp_part(d, false, qs, 0, 2, 31 * SEC);
    struct records_dns r = record(false, qs + 2, 4, 31 * SEC + 1000, 9);
    r.protocol = IPPROTO_TCP;
    r.cookie = tcp_cookie;
    r.tcp_seq = r.tcp_next = 2;
    r.tcp_order = DNS_TCP_NEXT;
    r.wire_len = qn - 2;
    r.truncated = true;
    uint64_t before = st.truncated;
    dns_agent_message(d, &r);
    dns_agent_expire(d, 32 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.truncated, before + 1);
    m.len = 0;
    dns_agent_metrics(d, 0, &m);
    buf_putc(&m, '\0');
    char want[80];
    snprintf(want, sizeof(want), "\nebpf_agent_dns_truncated_total %" PRIu64 "\n", before + 1);
    cr_assert(strstr(m.data, want), "%s", m.data);
    cr_assert(strstr(m.data, "\nebpf_agent_dns_no_memory_total 0\n"), "%s", m.data);
    buf_free(&m);
    reset();
    connection_next();
    dns_agent_free(d);
}

Test(dns_agent, unanswered_queries_time_out_and_garbage_is_counted)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 7, "slow.test", NULL, 0, 1 * SEC, 77);
    dns_agent_expire(d, 2 * SEC);
    cr_assert_eq(ngot, 0, "not yet: the timeout is 2 s");
    dns_agent_expire(d, 3 * SEC + 1);
    cr_assert_eq(ngot, 1);
    cr_assert_eq(got[0].status, EVENT_STATUS_TIMEOUT);
    cr_assert_str_eq(got[0].u.dns.query, "slow.test");
    cr_assert_eq(got[0].pid, 4242);

    static const uint8_t garbage[] = {0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12};
    struct records_dns r = record(true, garbage, sizeof(garbage), 4 * SEC, 77);
    dns_agent_message(d, &r);
    struct dns_agent_stats st;
    dns_agent_expire(d, 4 * SEC);
    dns_agent_get_stats(d, &st);
    uint64_t errors = 0;
    for (int i = 1; i < DNS_PARSE_ERRORS; i++)
        errors += st.tracker.parse_errors[i];
    cr_assert_eq(errors, 1);
    cr_assert_eq(ngot, 1, "garbage makes no event");
    reset();
    dns_agent_free(d);
}

/*
 * An error the kernel reported on a socket (the capture's error record: no message) ends that
 * socket's queries sent before it at once, failed with the error's name and the time to it;
 * a query of another socket, or one sent after the error, waits on; /metrics counts the
 * failures by status, outside the latency histogram.
 */
Test(dns_agent, a_socket_error_fails_its_queries_at_once)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 1, "down.test", NULL, 0, 1 * SEC, 77);
    ask(d, 2, "down6.test", NULL, 0, 1 * SEC + 10, 77);
    ask(d, 3, "other.test", NULL, 0, 1 * SEC, 78);
    struct records_dns err = record(true, NULL, 0, 1 * SEC + 40000, 77);
    err.error = ECONNREFUSED;
    ask(d, 4, "later.test", NULL, 0, 1 * SEC + 50000, 77);
    dns_agent_message(d, &err);
    cr_assert_eq(ngot, 2);
    cr_assert_str_eq(got[0].u.dns.query, "down.test");
    cr_assert_str_eq(got[1].u.dns.query, "down6.test");
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(got[i].status, EVENT_STATUS_FAILED);
        cr_assert_str_eq(got[i].u.dns.error, "refused");
        cr_assert_eq(got[i].pid, 4242);
        cr_assert_eq(got[i].dport, 53);
        cr_assert_eq(got[i].u.dns.answers_len, 0);
    }
    cr_assert_eq(got[0].u.dns.latency_ns, 40000);
    cr_assert_eq(got[1].u.dns.latency_ns, 39990);

    /* Unreachable, the name connections use; an errno without one keeps its own name. */
    err.cookie = 7800;
    err.error = EHOSTUNREACH;
    dns_agent_message(d, &err);
    cr_assert_eq(ngot, 3);
    cr_assert_str_eq(got[2].u.dns.query, "other.test");
    cr_assert_str_eq(got[2].u.dns.error, "unreachable");
    err.cookie = 7700;
    err.boot_ns = 1 * SEC + 60000;
    err.error = EMSGSIZE;
    dns_agent_message(d, &err);
    cr_assert_eq(ngot, 4);
    cr_assert_str_eq(got[3].u.dns.query, "later.test");
    cr_assert_str_eq(got[3].u.dns.error, "EMSGSIZE");

    struct dns_agent_stats st;
    dns_agent_expire(d, 2 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.failed, 4);
    cr_assert_eq(st.tracker.pending, 0);
    cr_assert_eq(st.tracker.timeouts, 0);
    cr_assert_eq(st.messages, 4, "an error is no message");
    struct buf b;
    buf_init(&b);
    dns_agent_metrics(d, 0, &b);
    cr_assert(strstr(b.data, "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"curl\","
                             "status=\"failed\",rcode=\"\"} 4\n"),
              "%s", b.data);
    cr_assert_null(strstr(b.data, "ebpf_agent_dns_latency_seconds_count"), "%s", b.data);
    buf_free(&b);
    buf_init(&b);
    dns_agent_stats_json(d, 0, &b);
    cr_assert(strstr(b.data, "\"failed\":4,"), "%s", b.data);
    buf_free(&b);
    reset();
    dns_agent_free(d);
}

/* A message that is no standard query (its OPCODE: NOTIFY, UPDATE, ...) keeps its opcode in its
 * event, whatever the server answered; a QUERY's is 0. */
Test(dns_agent, a_query_of_another_opcode_keeps_it)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    static const uint8_t opcodes[] = {4, 5, 1, 0};
    for (size_t i = 0; i < sizeof(opcodes); i++) {
        uint8_t q[512], a[512];
        size_t ql = message(q, (uint16_t)(10 + i), "zone.test", NULL, 0);
        size_t al = message(a, (uint16_t)(10 + i), "zone.test", NULL, 5);
        q[2] |= (uint8_t)(opcodes[i] << 3);
        a[2] |= (uint8_t)(opcodes[i] << 3);
        struct records_dns rq = record(false, q, ql, (1 + i) * SEC, 77);
        struct records_dns ra = record(true, a, al, (1 + i) * SEC + 1000, 77);
        dns_agent_message(d, &rq);
        dns_agent_message(d, &ra);
        cr_assert_eq(ngot, i + 1);
        cr_assert_eq(got[i].u.dns.opcode, opcodes[i]);
        cr_assert_eq(got[i].u.dns.rcode, 5);
        cr_assert_eq(got[i].status, EVENT_STATUS_ANSWERED);
    }
    reset();
    dns_agent_free(d);
}

/* An answer whose records do not parse (a compression loop) still answers its query, and says
 * its answers are not all there: an empty list alone reads as NOERROR with no data. */
Test(dns_agent, an_answer_whose_records_do_not_parse_says_its_answers_are_cut)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    uint8_t q[512], a[512];
    size_t ql = message(q, 0x10af, "loop.test", NULL, 0);
    struct records_dns rq = record(false, q, ql, 1 * SEC, 77);
    dns_agent_message(d, &rq);
    size_t al = message(a, 0x10af, "loop.test", "10.0.0.5", 0);
    size_t rr = al - 16;                   /* the one A record, after the question */
    a[rr] = 0xc0, a[rr + 1] = (uint8_t)rr; /* its owner name points at itself */
    struct records_dns ra = record(true, a, al, 1 * SEC + 1500000, 77);
    dns_agent_message(d, &ra);
    cr_assert_eq(ngot, 1);
    cr_assert_eq(got[0].status, EVENT_STATUS_ANSWERED);
    cr_assert_eq(got[0].u.dns.rcode, 0);
    cr_assert_eq(got[0].u.dns.latency_ns, 1500000);
    cr_assert(!got[0].u.dns.answers || !got[0].u.dns.answers[0], "nothing unreadable is guessed");
    cr_assert(got[0].u.dns.answers_truncated, "the answer held a record that was not read");

    /* The same answer whose record parses is whole. */
    reset();
    ask(d, 0x10b0, "fine.test", "10.0.0.6", 0, 2 * SEC, 77);
    cr_assert_eq(ngot, 1);
    cr_assert_str_eq(got[0].u.dns.answers, "10.0.0.6");
    cr_assert_not(got[0].u.dns.answers_truncated);
    reset();
    dns_agent_free(d);
}

/* A second question under a pending query's socket and ID makes no event: /api/stats and
 * /metrics count it. */
Test(dns_agent, a_query_reusing_a_pending_id_is_counted_where_users_look)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 4242, "silent-one.test", NULL, 0, 1 * SEC, 77);
    ask(d, 4242, "silent-two.test", NULL, 0, 1 * SEC + 1000, 77);
    dns_agent_expire(d, 1 * SEC + 2000);
    struct buf b = {0};
    dns_agent_stats_json(d, 0, &b);
    buf_putc(&b, '\0');
    json_error_t err;
    json_t *st = json_loads(b.data, 0, &err);
    cr_assert(st, "stats: %s: %s", err.text, b.data);
    cr_assert_eq(json_integer_value(json_object_get(st, "queries")), 1);
    cr_assert_eq(json_integer_value(json_object_get(st, "collisions")), 1, "%s", b.data);
    json_decref(st);
    b.len = 0;
    dns_agent_metrics(d, 0, &b);
    buf_putc(&b, '\0');
    cr_assert(strstr(b.data, "\nebpf_agent_dns_collisions_total 1\n"), "%s", b.data);
    buf_free(&b);
    reset();
    dns_agent_free(d);
}

/*
 * Each socket's bytes are taken once and in order: a retransmitted query and an answer forged
 * out of the window (which TCP throws away) are skipped and counted; a segment past a gap (a
 * lost one, which TCP keeps out of order and the capture never sees again) waits for the
 * retransmission that fills the gap; a copy that comes while the socket is held is skipped.
 */
Test(dns_agent, tcp_bytes_are_taken_once_and_in_order)
{
    uint8_t qs[512], as[512], fake[512], one[256];
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    struct dns_agent_stats st;
    size_t qn = 0, an = 0, fn = 0;

    reset();
    connection_next();
    tcp_append(qs, &qn, one, message(one, 0x401, "bank.example", NULL, 0));
    tcp_append(as, &an, one, message(one, 0x401, "bank.example", "10.0.0.1", 0));
    tcp_append(fake, &fn, one, message(one, 0x401, "bank.example", "6.6.6.6", 0));
    tcp_part(d, false, qs, 0, qn, 1 * SEC);
    tcp_part_as(d, false, qs, 0, qn, 1 * SEC + 1000, DNS_TCP_OLD, qn);           /* retransmitted */
    tcp_part_as(d, true, fake, 0, fn, 1 * SEC + 2000, DNS_TCP_OUT_OF_WINDOW, 0); /* forged */
    cr_assert_eq(ngot, 0, "a forged answer made an event");
    tcp_part(d, true, as, 0, an, 1 * SEC + 3000);
    cr_assert_eq(ngot, 1);
    cr_assert_str_eq(got[0].u.dns.answers, "10.0.0.1");
    /* A copy of the whole answer while the client held its socket: taken already. */
    tcp_part_as(d, true, as, 0, an, 1 * SEC + 4000, DNS_TCP_UNVERIFIED, 0);
    dns_agent_expire(d, 1 * SEC + 5000); /* the stats as of now */
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tcp_not_next, 3);
    cr_assert_eq(st.tracker.collisions, 0, "the retransmission was taken as a query");
    cr_assert_eq(st.tracker.unmatched, 0, "the copy was taken as an answer");
    cr_assert_eq(ngot, 1);

    /* Two answers, the first one's segment lost: the second waits for its retransmission. */
    reset();
    connection_next();
    qn = an = 0;
    tcp_append(qs, &qn, one, message(one, 0x402, "p1.example", NULL, 0));
    tcp_append(qs, &qn, one, message(one, 0x403, "p2.example", NULL, 0));
    tcp_append(as, &an, one, message(one, 0x402, "p1.example", "10.0.0.2", 0));
    size_t first = an;
    tcp_append(as, &an, one, message(one, 0x403, "p2.example", "10.0.0.3", 0));
    tcp_part(d, false, qs, 0, qn, 2 * SEC);
    tcp_part_as(d, true, as, first, an, 2 * SEC + 1000, DNS_TCP_AHEAD, 0);
    cr_assert_eq(ngot, 0, "an answer taken before the gap was filled");
    tcp_part(d, true, as, 0, first, 2 * SEC + 2000); /* the retransmission */
    cr_assert_eq(ngot, 2);
    cr_assert_str_eq(got[0].u.dns.answers, "10.0.0.2");
    cr_assert_str_eq(got[1].u.dns.answers, "10.0.0.3");

    /* One answer in three segments, the middle one lost, then retransmitted with the rest. */
    reset();
    connection_next();
    qn = an = 0;
    tcp_append(qs, &qn, one, message(one, 0x404, "mid.example", NULL, 0));
    tcp_append(as, &an, one, message(one, 0x404, "mid.example", "10.0.0.4", 0));
    tcp_part(d, false, qs, 0, qn, 3 * SEC);
    tcp_part(d, true, as, 0, 10, 3 * SEC + 1000);
    tcp_part_as(d, true, as, 20, an, 3 * SEC + 2000, DNS_TCP_AHEAD, 10);
    tcp_part_as(d, true, as, 0, 20, 3 * SEC + 3000, DNS_TCP_NEXT, 10); /* old and new bytes */
    cr_assert_eq(ngot, 1);
    cr_assert_str_eq(got[0].u.dns.answers, "10.0.0.4");

    /* The socket past bytes never seen here (rate-limited): the held message is lost, counted,
     * and what follows is taken. */
    reset();
    connection_next();
    qn = 0;
    tcp_append(qs, &qn, one, message(one, 0x405, "gap.example", NULL, 0));
    first = qn;
    tcp_append(qs, &qn, one, message(one, 0x406, "after.example", NULL, 0));
    dns_agent_expire(d, 4 * SEC);
    dns_agent_get_stats(d, &st);
    uint64_t dropped = st.tcp_partial_dropped;
    tcp_part(d, false, qs, 0, 5, 4 * SEC);
    tcp_part(d, false, qs, first, qn, 4 * SEC + 1000); /* [5, first) never came */
    dns_agent_expire(d, 4 * SEC + 2000);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tcp_partial_dropped, dropped + 1);
    cr_assert_eq(st.tracker.pending, 1, "after.example is pending");

    /* A gap never filled: what waited past it is lost, counted, once the socket goes quiet. */
    tcp_part_as(d, true, as, 20, an, 4 * SEC + 3000, DNS_TCP_AHEAD, 0);
    dns_agent_expire(d, 30 * SEC);
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tcp_partial_dropped, dropped + 2);
    reset();
    connection_next();
    dns_agent_free(d);
}

Test(dns_agent, peer_dns_names_connections_of_the_same_cgroup_only)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 1, "db.internal", "10.0.0.5", 0, 1 * SEC, 77);
    cr_assert_eq(ngot, 1);

    struct event c = {.type = EVENT_CONNECTION, .family = EVENT_FAMILY_IPV4, .cgroup_id = 77};
    inet_pton(AF_INET, "10.0.0.5", c.daddr);
    dns_agent_fill_peer(d, &c, 12 * SEC);
    cr_assert_str_eq(c.peer.dns, "db.internal");

    struct event other = c;
    other.peer.dns = NULL;
    other.cgroup_id = 78; /* another container resolved nothing */
    dns_agent_fill_peer(d, &other, 12 * SEC);
    cr_assert_null(other.peer.dns);

    struct event server = {.type = EVENT_CLOSE, .family = EVENT_FAMILY_IPV4, .cgroup_id = 77};
    server.u.close.role = EVENT_ROLE_SERVER; /* the peer is the source */
    inet_pton(AF_INET, "10.0.0.5", server.daddr);
    dns_agent_fill_peer(d, &server, 12 * SEC);
    cr_assert_null(server.peer.dns);
    inet_pton(AF_INET, "10.0.0.5", server.saddr);
    dns_agent_fill_peer(d, &server, 12 * SEC);
    cr_assert_str_eq(server.peer.dns, "db.internal");

    struct event late = c;
    late.peer.dns = NULL;
    dns_agent_fill_peer(d, &late, 11 * SEC + 61 * SEC); /* past the answer's 60 s TTL */
    cr_assert_null(late.peer.dns);
    reset();
    dns_agent_free(d);
}

/* In the cgroup v2 root, where a host without cgroups of its own keeps every process, the
 * names one process resolved are that process's alone, not the whole node's. */
Test(dns_agent, peer_dns_in_the_root_cgroup_names_connections_of_the_same_process_only)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 1, "web.internal", "10.0.0.9", 0, 1 * SEC, DNS_CGROUP_V2_ROOT_ID);
    cr_assert_eq(ngot, 1);
    cr_assert_eq(got[0].pid, 4242);

    struct event c = {.type = EVENT_CONNECTION,
                      .family = EVENT_FAMILY_IPV4,
                      .cgroup_id = DNS_CGROUP_V2_ROOT_ID,
                      .pid = 4242,
                      .uid = 1000};
    inet_pton(AF_INET, "10.0.0.9", c.daddr);
    struct event other_pid = c, other_user = c, other_parent = c, unknown = c;
    dns_agent_fill_peer(d, &c, 2 * SEC);
    cr_assert_str_eq(c.peer.dns, "web.internal");

    other_pid.pid = 4243;
    other_user.uid = 65534;
    other_parent.ppid = 7; /* the pid reused by another parent's child */
    unknown.pid = 0;
    struct event *none[] = {&other_pid, &other_user, &other_parent, &unknown};
    for (size_t i = 0; i < 4; i++) {
        dns_agent_fill_peer(d, none[i], 2 * SEC);
        cr_assert_null(none[i]->peer.dns, "case %zu named %s", i, none[i]->peer.dns);
    }
    /* A process in a cgroup of its own goes by the cgroup, whatever its pid. */
    struct event in_unit = c;
    in_unit.peer.dns = NULL;
    in_unit.cgroup_id = 77;
    dns_agent_fill_peer(d, &in_unit, 2 * SEC);
    cr_assert_null(in_unit.peer.dns);
    reset();
    dns_agent_free(d);
}

Test(dns_agent, metrics_count_by_rcode_and_fold_past_the_cap)
{
    struct dns_agent *d = agent_new(2, &(struct dns_agent *){0});
    reset();
    /* Outside Kubernetes the workload is the command: every query here is curl's, so name the
     * workloads through k8s fields on copies counted directly. */
    ask(d, 1, "a.test", "10.0.0.1", 0, 1 * SEC, 77);
    ask(d, 2, "b.test", NULL, 3, 2 * SEC, 77);
    cr_assert_eq(ngot, 2);
    struct event e = got[1];
    e.k8s.namespace = intern("shop");
    e.k8s.workload = intern("web");
    dns_agent_count(d, &e);
    e.k8s.workload = intern("api"); /* a third series: past the cap of 2 */
    dns_agent_count(d, &e);

    struct buf b;
    buf_init(&b);
    dns_agent_metrics(d, 0, &b);
    cr_assert_not(b.oom);
    cr_assert(strstr(b.data, "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"curl\","
                             "status=\"answered\",rcode=\"NOERROR\"} 1\n"),
              "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"curl\","
                             "status=\"answered\",rcode=\"NXDOMAIN\"} 1\n"),
              "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_agent_dns_queries_total{namespace=\"shop\",workload=\"web\","
                             "status=\"answered\",rcode=\"NXDOMAIN\"} 1\n"),
              "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"~other\","
                             "status=\"answered\",rcode=\"NXDOMAIN\"} 1\n"),
              "%s", b.data);
    cr_assert_null(strstr(b.data, "workload=\"api\""), "%s", b.data);
    cr_assert(strstr(b.data,
                     "ebpf_agent_dns_latency_seconds_count{namespace=\"\",workload=\"curl\"} 2\n"),
              "%s", b.data);
    cr_assert(strstr(b.data,
                     "ebpf_agent_dns_latency_seconds_bucket{namespace=\"\",workload=\"curl\","
                     "le=\"0.0025\"} 2\n"),
              "%s", b.data);
    cr_assert(strstr(b.data, "ebpf_agent_dns_metric_series_folded_total 1\n"), "%s", b.data);
    buf_free(&b);
    reset();
    dns_agent_free(d);
}

/* An answer under a pending query's ID but for another question is not taken: /metrics counts
 * it beside the answers that matched nothing, as /api/stats does. */
Test(dns_agent, an_answer_for_another_question_is_counted_on_metrics)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    uint8_t q[512], a[512];
    size_t ql = message(q, 0x2222, "asked.test", NULL, 0);
    struct records_dns rq = record(false, q, ql, 1 * SEC, 77);
    dns_agent_message(d, &rq);
    size_t al = message(a, 0x2222, "other.test", "10.0.0.9", 0);
    struct records_dns ra = record(true, a, al, 1 * SEC + 1000, 77);
    dns_agent_message(d, &ra);
    cr_assert_eq(ngot, 0);
    dns_agent_expire(d, 1 * SEC + 2000); /* refreshes the snapshot */
    struct dns_agent_stats st;
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.mismatched, 1);

    struct buf b;
    buf_init(&b);
    dns_agent_metrics(d, 0, &b);
    cr_assert_not(b.oom);
    cr_assert(strstr(b.data, "\nebpf_agent_dns_mismatched_total 1\n"), "%s", b.data);
    cr_assert(strstr(b.data, "\nebpf_agent_dns_unmatched_total 0\n"), "%s", b.data);
    buf_free(&b);
    reset();
    dns_agent_free(d);
}

/* EDNS extends the rcode past the header's 4 bits (BADVERS 16, BADCOOKIE 23): /metrics names
 * them as the events do, and folds rcodes no one has assigned into rcode="~other". */
Test(dns_agent, metrics_name_extended_rcodes_as_events_do)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    reset();
    ask(d, 1, "a.test", "10.0.0.1", 0, 1 * SEC, 77);
    cr_assert_eq(ngot, 1);
    struct event e = got[0];
    static const uint16_t rcodes[] = {16, 23, 23, 300};
    for (size_t i = 0; i < sizeof(rcodes) / sizeof(rcodes[0]); i++) {
        e.u.dns.rcode = rcodes[i];
        dns_agent_count(d, &e);
    }

    struct buf b;
    buf_init(&b);
    dns_agent_metrics(d, 0, &b);
    cr_assert_not(b.oom);
    static const char *const want[] = {"rcode=\"NOERROR\"} 1\n", "rcode=\"BADVERS\"} 1\n",
                                       "rcode=\"BADCOOKIE\"} 2\n", "rcode=\"~other\"} 1\n"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char line[256];
        snprintf(line, sizeof(line),
                 "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"curl\","
                 "status=\"answered\",%s",
                 want[i]);
        cr_assert(strstr(b.data, line), "no %s in\n%s", line, b.data);
    }
    cr_assert_null(strstr(b.data, "rcode=\"15\""), "%s", b.data);
    cr_assert(strstr(b.data,
                     "ebpf_agent_dns_latency_seconds_count{namespace=\"\",workload=\"curl\"} 5\n"),
              "%s", b.data);
    buf_free(&b);
    reset();
    dns_agent_free(d);
}

/* What bpf/dns.bpf.c's answer_lost() does with an answer of cookie lost on cpu at ts. */
static void kernel_lost(struct dns_lost *rings, int cpu, uint64_t cookie, uint64_t ts)
{
    struct dns_lost *l = &rings[cpu];
    for (uint64_t i = 1; i <= DNS_LOST_RECENT && i <= l->written; i++) {
        struct dns_lost_slot *s = &l->slot[(l->written - i) % DNS_LOST_SLOTS];
        if (s->cookie == cookie) {
            s->ts_ns = ts;
            return;
        }
    }
    l->slot[l->written % DNS_LOST_SLOTS] = (struct dns_lost_slot){cookie, ts};
    l->written++;
}

/* The agent's 100 ms scan: the kernel's rings of lost answers, then the expiry. */
static void scan(struct dns_agent *d, const struct dns_lost *rings, uint64_t now)
{
    dns_agent_answers_lost(d, rings, 2, now);
    dns_agent_expire(d, now);
}

/*
 * A query whose answer the capture may have lost expires as "unknown", not "timeout": an
 * answer of its socket was lost in the kernel after it was sent, or an answer came too broken
 * to say its question. A loss seen before a query was sent says nothing of it (an answer comes
 * after its query), nor does a loss of another socket's answers, however many: only a loss
 * whose socket is not known (a CPU's ring overflowed between two scans, a packet of no socket,
 * rings that could not be read) counts for every query sent before it.
 */
Test(dns_agent, a_query_whose_answer_may_be_lost_expires_unknown)
{
    struct dns_agent *d = agent_new(10, &(struct dns_agent *){0});
    struct dns_lost *rings = calloc(2, sizeof(*rings));
    struct dns_agent_stats st;
    static const char *const want[][2] = {
        {"before.test", "timeout"},   {"after.test", "unknown"},  {"other.test", "timeout"},
        {"broken.test", "unknown"},   {"quiet.test", "timeout"},  {"overflow.test", "unknown"},
        {"nosocket.test", "unknown"}, {"unread.test", "unknown"}, {"none.test", "timeout"},
    };
    reset();
    kernel_lost(rings, 0, 7700, 1 * SEC); /* socket 77's answer lost at 1 s */
    scan(d, rings, 1 * SEC);
    ask(d, 1, "before.test", NULL, 0, 1 * SEC + 1000, 77);
    scan(d, rings, 3 * SEC + 2000);
    cr_assert_eq(ngot, 1);

    /* Socket 77 floods: thousands of its answers lost, on both CPUs, after both queries. */
    ask(d, 2, "after.test", NULL, 0, 4 * SEC, 77);
    ask(d, 5, "other.test", NULL, 0, 4 * SEC, 78);
    for (int i = 0; i < 5000; i++)
        kernel_lost(rings, i % 2, 7700, 4 * SEC + 500 + (uint64_t)i);
    cr_assert_leq(rings[0].written + rings[1].written, 3, "one slot per CPU for socket 77");
    scan(d, rings, 4 * SEC + 1 * SEC / 2);
    cr_assert_eq(ngot, 1);
    scan(d, rings, 6 * SEC + 1);
    cr_assert_eq(ngot, 3);

    /* An answer that names no question could have been anyone's. */
    ask(d, 3, "broken.test", NULL, 0, 7 * SEC, 77);
    static const uint8_t garbage[] = {0, 3, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12};
    struct records_dns r = record(true, garbage, sizeof(garbage), 7 * SEC + 1000, 77);
    dns_agent_message(d, &r);
    scan(d, rings, 7 * SEC + 2000);
    scan(d, rings, 9 * SEC + 1);
    cr_assert_eq(ngot, 4);

    /* With nothing lost since (the rings read again, unchanged), a timeout again. */
    ask(d, 4, "quiet.test", NULL, 0, 10 * SEC, 77);
    scan(d, rings, 12 * SEC + 1);
    cr_assert_eq(ngot, 5);

    /* More sockets lost answers on one CPU between two scans than its ring keeps apart. */
    ask(d, 6, "overflow.test", NULL, 0, 13 * SEC, 78);
    for (uint64_t c = 0; c < DNS_LOST_SLOTS - DNS_LOST_RECENT + 1; c++)
        kernel_lost(rings, 0, 9000 + c, 13 * SEC + 500 + c);
    scan(d, rings, 15 * SEC + 1);
    cr_assert_eq(ngot, 6);

    /* An answer lost on its way to no socket. */
    ask(d, 7, "nosocket.test", NULL, 0, 16 * SEC, 78);
    kernel_lost(rings, 1, 0, 16 * SEC + 500);
    scan(d, rings, 18 * SEC + 1);
    cr_assert_eq(ngot, 7);

    /* The rings could not be read; then none to read (no DNS ingress program): nothing lost. */
    ask(d, 8, "unread.test", NULL, 0, 19 * SEC, 78);
    dns_agent_answers_lost(d, NULL, -1, 19 * SEC + 500);
    scan(d, rings, 21 * SEC + 1);
    ask(d, 9, "none.test", NULL, 0, 22 * SEC, 78);
    dns_agent_answers_lost(d, NULL, 0, 22 * SEC + 500);
    dns_agent_expire(d, 24 * SEC + 1);
    cr_assert_eq(ngot, 9);

    for (size_t i = 0; i < ngot; i++) {
        cr_assert_str_eq(got[i].u.dns.query, want[i][0]);
        cr_assert_str_eq(event_status_name(got[i].status), want[i][1], "%s: %s", want[i][0],
                         event_status_name(got[i].status));
    }
    dns_agent_get_stats(d, &st);
    cr_assert_eq(st.tracker.timeouts, 4);
    cr_assert_eq(st.tracker.unknown, 5);
    struct buf b = {0};
    dns_agent_stats_json(d, 0, &b);
    buf_putc(&b, '\0');
    cr_assert(strstr(b.data, "\"timeouts\":4,\"unknown\":5,"), "%s", b.data);
    buf_free(&b);
    buf_init(&b);
    dns_agent_metrics(d, 0, &b);
    buf_putc(&b, '\0');
    cr_assert(strstr(b.data, ",status=\"unknown\",rcode=\"\"} 5\n"), "%s", b.data);
    cr_assert(strstr(b.data, ",status=\"timeout\",rcode=\"\"} 4\n"), "%s", b.data);
    buf_free(&b);
    reset();
    free(rings);
    dns_agent_free(d);
}

/*
 * Tests for cmd/agent/records: every record shape the BPF programs write,
 * decoded into the exact event the agent delivers, without root (no BPF is
 * loaded; the drop reason names come from a BTF built here, the symbols from
 * kallsyms text). Each record is decoded from a heap copy of exactly its
 * length, so under ASan a read past its end fails the test.
 */
#include <criterion/criterion.h>
#include <bpf/btf.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../cmd/agent/drop_reasons.h"
#include "../cmd/agent/ksyms.h"
#include "../cmd/agent/records.h"
#include "buf.h"
#include "dns_events.h"
#include "event.h"
#include "event_json.h"
#include "event_pb.h"
#include "net_events.h"
#include "process_events.h"

/* A wall clock 5 s after boot, as capture.c samples it. */
#define BOOT_TS_NS   5000000000ull
#define BOOT_TO_REAL 1795698261123456789ll
#define WALL_TS_NS   1795698266123456789ull

#define KALLSYMS                                                                                   \
    "ffffffff81000000 T kfree_skb_reason\n"                                                        \
    "ffffffff81000400 t udp_queue_rcv_one_skb\n"                                                   \
    "ffffffffc0000000 t nft_do_chain\t[nf_tables]\n"

static struct drop_reasons *reasons;
static struct ksyms *ksyms;
static struct records_decoder dec;

/* enum skb_drop_reason as the kernel's BTF has it, markers included. */
static struct drop_reasons *reasons_from_test_btf(void)
{
    struct btf *btf = btf__new_empty();
    struct drop_reasons *dr;

    cr_assert_not_null(btf);
    cr_assert_gt(btf__add_enum(btf, "skb_drop_reason", 4), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_NOT_DROPPED_YET", 0), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_CONSUMED", 1), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_DROP_REASON_NOT_SPECIFIED", 2), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_DROP_REASON_NO_SOCKET", 3), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_DROP_REASON_MAX", 4), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_DROP_REASON_SUBSYS_MASK", 0x7fff0000), 0);
    dr = drop_reasons_from_btf(btf);
    btf__free(btf);
    cr_assert_not_null(dr, "drop_reasons_from_btf: %s", strerror(errno));
    return dr;
}

static void setup(void)
{
    FILE *f = fmemopen((void *)KALLSYMS, strlen(KALLSYMS), "r");

    cr_assert_not_null(f);
    ksyms = ksyms_load_stream(f);
    fclose(f);
    cr_assert_not_null(ksyms);
    reasons = reasons_from_test_btf();
    dec = (struct records_decoder){
        .boot_to_real_ns = BOOT_TO_REAL, .reasons = reasons, .ksyms = ksyms};
}

static void teardown(void)
{
    drop_reasons_free(reasons);
    ksyms_free(ksyms);
}

TestSuite(records, .init = setup, .fini = teardown);

/* Decodes len bytes of rec from a heap buffer of exactly len bytes into e (garbage first). */
static int decode(const void *rec, size_t len, struct event *e, char *err, size_t errlen)
{
    void *copy = malloc(len ? len : 1);
    int rc;

    cr_assert_not_null(copy);
    memcpy(copy, rec, len);
    memset(e, 0xa5, sizeof(*e));
    rc = records_decode(&dec, copy, len, e, err, errlen);
    free(copy);
    return rc;
}

static void decode_ok(const void *rec, size_t len, struct event *e)
{
    char err[128] = "";
    int rc = decode(rec, len, e, err, sizeof(err));

    cr_assert_eq(rc, 0, "records_decode: %d (%s)", rc, err);
}

/* Decodes and expects -EINVAL, one more malformed record counted, the event zeroed, and err. */
static void decode_malformed(const void *rec, size_t len, const char *want_err)
{
    static const struct event zero;
    uint64_t before = dec.malformed, lost = dec.no_memory;
    char err[128] = "";
    struct event e;
    int rc = decode(rec, len, &e, err, sizeof(err));

    cr_assert_eq(rc, -EINVAL, "%zu-byte record: %d, want -EINVAL", len, rc);
    cr_assert_eq(dec.malformed, before + 1);
    cr_assert_eq(dec.no_memory, lost);
    cr_assert(memcmp(&e, &zero, sizeof(e)) == 0, "%zu-byte record left fields in the event", len);
    if (want_err)
        cr_assert_str_eq(err, want_err);
    else
        cr_assert_neq(err[0], '\0', "no reason given for a %zu-byte record", len);
}

static struct record_hdr hdr(enum record_kind kind)
{
    struct record_hdr h = {.kind = kind,
                           .pid = 4242,
                           .ppid = 17,
                           .uid = 1000,
                           .ts_ns = BOOT_TS_NS,
                           .cgroup_id = 0x1122334455667788ull};

    memcpy(h.comm, "curl", 5);
    return h;
}

/* The event every record of hdr() gives, before its own fields. */
static struct event want_event(enum event_type type)
{
    struct event e = {.type = type,
                      .timestamp_ns = WALL_TS_NS,
                      .pid = 4242,
                      .ppid = 17,
                      .uid = 1000,
                      .cgroup_id = 0x1122334455667788ull};

    memcpy(e.command, "curl", 5);
    if (type == EVENT_EXEC) { /* exec_rec()'s: a program that left the uid as it was */
        e.u.exec.euid = 1000;
        e.u.exec.has_euid = 1;
    }
    return e;
}

/* Field by field for a readable failure, then event_equal() for everything else. */
static void assert_event(const struct event *got, const struct event *want)
{
    cr_assert_eq(got->type, want->type);
    cr_assert_eq(got->timestamp_ns, want->timestamp_ns);
    cr_assert_eq(got->pid, want->pid);
    cr_assert_eq(got->ppid, want->ppid);
    cr_assert_eq(got->uid, want->uid);
    cr_assert_eq(got->cgroup_id, want->cgroup_id);
    cr_assert_str_eq(got->command, want->command);
    cr_assert_eq(got->family, want->family);
    cr_assert_eq(got->protocol, want->protocol);
    cr_assert_eq(got->status, want->status);
    cr_assert_eq(got->sport, want->sport);
    cr_assert_eq(got->dport, want->dport);
    cr_assert_arr_eq(got->saddr, want->saddr, 16);
    cr_assert_arr_eq(got->daddr, want->daddr, 16);
    cr_assert_null(got->node);
    cr_assert_eq(got->id, 0);
    cr_assert(event_equal(got, want), "the %s event differs beyond the common fields",
              event_type_name(want->type));
}

static void set_v4(uint8_t a[16], uint8_t a0, uint8_t a1, uint8_t a2, uint8_t a3)
{
    memset(a, 0, 16);
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}

/* ::ffff:a.b.c.d */
static void set_v4_mapped(uint8_t a[16], uint8_t a0, uint8_t a1, uint8_t a2, uint8_t a3)
{
    memset(a, 0, 16);
    a[10] = a[11] = 0xff;
    a[12] = a0, a[13] = a1, a[14] = a2, a[15] = a3;
}

/* 2001:db8::last */
static void set_v6(uint8_t a[16], uint8_t last)
{
    memset(a, 0, 16);
    a[0] = 0x20, a[1] = 0x01, a[2] = 0x0d, a[3] = 0xb8, a[15] = last;
}

static struct conn_record conn(enum record_kind kind, uint16_t family, uint8_t protocol,
                               uint8_t status)
{
    struct conn_record r = {.hdr = hdr(kind),
                            .family = family,
                            .protocol = protocol,
                            .status = status,
                            .sport = 51234,
                            .dport = 443,
                            .latency_ns = 1830211};
    return r;
}

/* The event of r: its flow as the record has it (family given), status and latency left out. */
static struct event want_flow(enum event_type type, enum event_family family,
                              const struct conn_record *r)
{
    struct event e = want_event(type);

    e.family = family;
    e.protocol = r->protocol;
    e.sport = r->sport;
    e.dport = r->dport;
    memcpy(e.saddr, r->saddr, 16);
    memcpy(e.daddr, r->daddr, 16);
    return e;
}

Test(records, tcp_connect_ipv4_established)
{
    struct conn_record r = conn(RECORD_CONNECT, AF_INET, IPPROTO_TCP, CONN_ESTABLISHED);
    struct event e, want;

    set_v4(r.saddr, 10, 0, 0, 5);
    set_v4(r.daddr, 93, 184, 216, 34);
    want = want_flow(EVENT_CONNECTION, EVENT_FAMILY_IPV4, &r);
    want.status = EVENT_STATUS_ESTABLISHED;
    want.u.conn.latency_ns = 1830211;
    /* Only the first four bytes of an IPv4 address are the address. */
    memset(r.saddr + 4, 0xee, 12);
    decode_ok(&r, sizeof(r), &e);
    assert_event(&e, &want);
}

Test(records, tcp_connect_ipv6_failed)
{
    struct conn_record r = conn(RECORD_CONNECT, AF_INET6, IPPROTO_TCP, CONN_FAILED);
    struct event e, want;

    set_v6(r.saddr, 1);
    set_v6(r.daddr, 2);
    r.error = ECONNREFUSED;
    want = want_flow(EVENT_CONNECTION, EVENT_FAMILY_IPV6, &r);
    want.status = EVENT_STATUS_FAILED;
    want.u.conn.latency_ns = 1830211;
    want.u.conn.error = "refused";
    decode_ok(&r, sizeof(r), &e);
    assert_event(&e, &want);
    cr_assert_str_eq(e.u.conn.error, "refused");
}

/* The kernel's errno on the socket names the failure; none left means the application gave up. */
Test(records, failed_connect_errors)
{
    static const struct {
        uint32_t err;
        const char *want;
    } cases[] = {
        {ETIMEDOUT, "timeout"},
        {EHOSTUNREACH, "unreachable"},
        {ENETUNREACH, "unreachable"},
        {ECONNRESET, "reset"},
        {EACCES, "EACCES"},
        {0, "ECONNABORTED"},
        {100000, NULL}, /* no name: no error rather than a made-up one */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct conn_record r = conn(RECORD_CONNECT, AF_INET, IPPROTO_TCP, CONN_FAILED);
        struct event e;

        set_v4(r.saddr, 10, 0, 0, 5);
        set_v4(r.daddr, 10, 0, 0, 6);
        r.error = cases[i].err;
        decode_ok(&r, sizeof(r), &e);
        if (cases[i].want)
            cr_assert_str_eq(e.u.conn.error, cases[i].want, "errno %u", cases[i].err);
        else
            cr_assert_null(e.u.conn.error, "errno %u", cases[i].err);
    }
    /* Established and UDP connections have no error, whatever the field holds. */
    struct conn_record r = conn(RECORD_CONNECT, AF_INET, IPPROTO_TCP, CONN_ESTABLISHED);
    struct event e;
    r.error = ECONNREFUSED;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_null(e.u.conn.error);
}

static struct close_record close_rec(uint8_t role, uint8_t reset)
{
    struct close_record r = {.hdr = hdr(RECORD_CLOSE),
                             .family = AF_INET,
                             .role = role,
                             .reset = reset,
                             .sport = 40000,
                             .dport = 8080,
                             .retransmits = 2,
                             .srtt_us = 87,
                             .duration_ns = 123456789,
                             .bytes_sent = 1000,
                             .bytes_received = 2000};
    set_v4(r.saddr, 10, 0, 0, 1);
    set_v4(r.daddr, 10, 0, 0, 2);
    return r;
}

Test(records, close_client_and_server)
{
    static const struct {
        uint8_t role, reset;
        enum event_role want_role;
        enum event_reset want_reset;
    } cases[] = {
        {CLOSE_ROLE_CLIENT, CLOSE_RESET_NONE, EVENT_ROLE_CLIENT, EVENT_RESET_NONE},
        {CLOSE_ROLE_SERVER, CLOSE_RESET_RECEIVED, EVENT_ROLE_SERVER, EVENT_RESET_RECEIVED},
        {CLOSE_ROLE_CLIENT, CLOSE_RESET_SENT, EVENT_ROLE_CLIENT, EVENT_RESET_SENT},
        {0, 9, EVENT_ROLE_NONE, EVENT_RESET_NONE}, /* unknown values: nothing claimed */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct close_record r = close_rec(cases[i].role, cases[i].reset);
        struct event e, want = want_event(EVENT_CLOSE);

        want.family = EVENT_FAMILY_IPV4;
        want.protocol = IPPROTO_TCP;
        want.sport = 40000;
        want.dport = 8080;
        memcpy(want.saddr, r.saddr, 16);
        memcpy(want.daddr, r.daddr, 16);
        want.u.close.role = cases[i].want_role;
        want.u.close.reset = cases[i].want_reset;
        want.u.close.retransmits = 2;
        want.u.close.srtt_us = 87;
        want.u.close.duration_ns = 123456789;
        want.u.close.bytes_sent = 1000;
        want.u.close.bytes_received = 2000;
        decode_ok(&r, sizeof(r), &e);
        assert_event(&e, &want);
    }
}

Test(records, close_ipv6_and_v4_mapped)
{
    struct close_record r = close_rec(CLOSE_ROLE_SERVER, CLOSE_RESET_NONE);
    struct event e;

    r.family = AF_INET6;
    set_v6(r.saddr, 1);
    set_v6(r.daddr, 2);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV6);
    cr_assert_arr_eq(e.saddr, r.saddr, 16);
    set_v4_mapped(r.saddr, 192, 0, 2, 1);
    set_v4_mapped(r.daddr, 192, 0, 2, 2);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV4);
    cr_assert_eq(e.daddr[3], 2);
    r.family = 1; /* AF_UNIX: not an address we could show */
    decode_malformed(&r, sizeof(r), "close record with address family 1");
}

Test(records, udp_connect_attempted)
{
    struct conn_record r = conn(RECORD_CONNECT, AF_INET, IPPROTO_UDP, CONN_ATTEMPTED);
    struct event e, want;

    r.latency_ns = 0;
    r.dport = 53;
    set_v4(r.saddr, 127, 0, 0, 1);
    set_v4(r.daddr, 127, 0, 0, 53);
    want = want_flow(EVENT_CONNECTION, EVENT_FAMILY_IPV4, &r);
    want.status = EVENT_STATUS_ATTEMPTED;
    decode_ok(&r, sizeof(r), &e);
    assert_event(&e, &want);
}

Test(records, connect_with_unknown_status_has_none)
{
    struct conn_record r = conn(RECORD_CONNECT, AF_INET, IPPROTO_TCP, 0);
    struct event e;

    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.status, EVENT_STATUS_NONE);
    r.status = 99;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.status, EVENT_STATUS_NONE);
    cr_assert_eq(e.u.conn.latency_ns, 1830211);
}

/* An accept has no status and no latency, whatever the record's bytes say. */
Test(records, accept_ipv4_and_ipv6)
{
    struct conn_record r = conn(RECORD_ACCEPT, AF_INET, IPPROTO_TCP, CONN_ESTABLISHED);
    struct event e, want;

    set_v4(r.saddr, 192, 168, 1, 9); /* the peer */
    set_v4(r.daddr, 192, 168, 1, 1);
    r.sport = 40000;
    r.dport = 22;
    decode_ok(&r, sizeof(r), &e);
    want = want_flow(EVENT_ACCEPT, EVENT_FAMILY_IPV4, &r);
    assert_event(&e, &want);
    cr_assert_eq(e.u.conn.latency_ns, 0);

    r.family = AF_INET6;
    set_v6(r.saddr, 9);
    set_v6(r.daddr, 1);
    decode_ok(&r, sizeof(r), &e);
    want = want_flow(EVENT_ACCEPT, EVENT_FAMILY_IPV6, &r);
    assert_event(&e, &want);
    cr_assert_eq(e.u.conn.latency_ns, 0);
}

/* IPv4 on an IPv6 socket is reported as the IPv4 flow it is. */
Test(records, v4_mapped_addresses_are_ipv4)
{
    struct conn_record r = conn(RECORD_CONNECT, AF_INET6, IPPROTO_TCP, CONN_ESTABLISHED);
    struct event e;
    uint8_t want_s[16], want_d[16];

    set_v4_mapped(r.saddr, 127, 0, 0, 1);
    set_v4_mapped(r.daddr, 127, 0, 0, 2);
    decode_ok(&r, sizeof(r), &e);
    set_v4(want_s, 127, 0, 0, 1);
    set_v4(want_d, 127, 0, 0, 2);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV4);
    cr_assert_arr_eq(e.saddr, want_s, 16);
    cr_assert_arr_eq(e.daddr, want_d, 16);

    /* A failed connect may not have its source yet: :: with a mapped destination. */
    memset(r.saddr, 0, 16);
    decode_ok(&r, sizeof(r), &e);
    memset(want_s, 0, 16);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV4);
    cr_assert_arr_eq(e.saddr, want_s, 16);
    cr_assert_arr_eq(e.daddr, want_d, 16);

    /* A real IPv6 source with a mapped destination is not an IPv4 flow. */
    set_v6(r.saddr, 7);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV6);
    cr_assert_arr_eq(e.saddr, r.saddr, 16);
    cr_assert_arr_eq(e.daddr, r.daddr, 16);
}

Test(records, connection_of_another_family_is_malformed)
{
    struct conn_record r = conn(RECORD_CONNECT, 0, IPPROTO_TCP, CONN_ESTABLISHED);

    decode_malformed(&r, sizeof(r), "connect record with address family 0");
    r = conn(RECORD_ACCEPT, AF_UNIX, IPPROTO_TCP, 0);
    decode_malformed(&r, sizeof(r), "accept record with address family 1");
}

static struct drop_record drop(uint32_t reason, uint64_t location)
{
    struct drop_record r = {.hdr = hdr(RECORD_DROP),
                            .reason = reason,
                            .family = AF_INET,
                            .protocol = IPPROTO_UDP,
                            .has_ports = 1,
                            .sport = 5353,
                            .dport = 9,
                            .location = location,
                            .suppressed = 12};

    set_v4(r.saddr, 127, 0, 0, 1);
    set_v4(r.daddr, 127, 0, 0, 1);
    return r;
}

Test(records, drop_with_named_reason_and_location)
{
    struct drop_record r = drop(3, 0xffffffff81000410ull);
    struct event e, want = want_event(EVENT_PACKET_DROP);

    decode_ok(&r, sizeof(r), &e);
    want.family = EVENT_FAMILY_IPV4;
    want.protocol = IPPROTO_UDP;
    want.sport = 5353;
    want.dport = 9;
    set_v4(want.saddr, 127, 0, 0, 1);
    set_v4(want.daddr, 127, 0, 0, 1);
    want.u.drop.reason_code = 3;
    want.u.drop.reason = "NO_SOCKET";
    want.u.drop.location = "udp_queue_rcv_one_skb+0x10";
    want.u.drop.suppressed = 12;
    assert_event(&e, &want);
    cr_assert_str_eq(e.u.drop.reason, "NO_SOCKET");
    cr_assert_str_eq(e.u.drop.location, "udp_queue_rcv_one_skb+0x10");

    /* The SKB_ prefix goes too; a module symbol keeps its module. */
    r = drop(0, 0xffffffffc0000020ull);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_str_eq(e.u.drop.reason, "NOT_DROPPED_YET");
    cr_assert_str_eq(e.u.drop.location, "nft_do_chain [nf_tables]+0x20");
}

/* A code this kernel's names lack (or a marker) is still reported, by number only. */
Test(records, drop_with_unknown_reason_keeps_the_code)
{
    uint32_t codes[] = {4, 77, 0x7fff0000, UINT32_MAX};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        struct drop_record r = drop(codes[i], 0xffffffff81000000ull);
        struct event e;

        decode_ok(&r, sizeof(r), &e);
        cr_assert_eq(e.type, EVENT_PACKET_DROP);
        cr_assert_eq(e.u.drop.reason_code, codes[i]);
        cr_assert_null(e.u.drop.reason, "code %u named %s", codes[i], e.u.drop.reason);
        cr_assert_str_eq(e.u.drop.location, "kfree_skb_reason+0x0");
    }
}

/* No kernel BTF or no readable kallsyms: codes and no location, never a crash. */
Test(records, drop_without_names_or_symbols)
{
    struct drop_record r = drop(3, 0xffffffff81000410ull);
    struct event e;

    dec.reasons = NULL;
    dec.ksyms = NULL;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.u.drop.reason_code, 3);
    cr_assert_null(e.u.drop.reason);
    cr_assert_null(e.u.drop.location);

    /* Below the first symbol, or further past the last than any function is long. */
    dec.ksyms = ksyms;
    r.location = 0x1000;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_null(e.u.drop.location);
    r.location = 0xffffffffc0000000ull + (2u << 20);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_null(e.u.drop.location);
}

Test(records, drop_ipv6_and_without_headers)
{
    struct drop_record r = drop(2, 0);
    struct event e;
    static const uint8_t zero[16];

    r.family = AF_INET6;
    set_v6(r.saddr, 1);
    set_v6(r.daddr, 2);
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.family, EVENT_FAMILY_IPV6);
    cr_assert_arr_eq(e.saddr, r.saddr, 16);
    cr_assert_arr_eq(e.daddr, r.daddr, 16);
    cr_assert_str_eq(e.u.drop.reason, "NOT_SPECIFIED");

    /* No IP header read: no family, no addresses; no transport header: no ports. */
    r.family = 0;
    r.protocol = 0;
    r.has_ports = 0;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.family, EVENT_FAMILY_NONE);
    cr_assert_eq(e.protocol, 0);
    cr_assert_eq(e.sport, 0);
    cr_assert_eq(e.dport, 0);
    cr_assert_arr_eq(e.saddr, zero, 16);
    cr_assert_arr_eq(e.daddr, zero, 16);
}

static struct exec_record *exec_rec(const char *filename, const void *args, size_t args_len,
                                    uint8_t truncated)
{
    struct exec_record *r = calloc(1, sizeof(*r));

    cr_assert_not_null(r);
    r->hdr = hdr(RECORD_EXEC);
    snprintf(r->filename, sizeof(r->filename), "%s", filename);
    memcpy(r->args, args, args_len);
    r->args_len = (uint32_t)args_len;
    r->args_truncated = truncated;
    r->euid = r->hdr.uid;
    return r;
}

Test(records, exec_with_argv)
{
    static const char args[] = "/usr/bin/curl\0-s\0https://example.com/";
    struct exec_record *r = exec_rec("/usr/bin/curl", args, sizeof(args), 0);
    struct event e, want = want_event(EVENT_EXEC);

    decode_ok(r, sizeof(*r), &e);
    want.u.exec.filename = "/usr/bin/curl";
    want.u.exec.args = (char *)args;
    want.u.exec.args_len = sizeof(args);
    assert_event(&e, &want);
    cr_assert_str_eq(e.u.exec.filename, "/usr/bin/curl");
    cr_assert_eq(e.u.exec.args_len, sizeof(args));
    cr_assert_eq(memcmp(e.u.exec.args, args, sizeof(args)), 0);
    cr_assert_eq(e.u.exec.args_truncated, 0);
    cr_assert_eq(e.u.exec.filename_truncated, 0);
    cr_assert_eq(e.u.exec.args[e.u.exec.args_len], '\0', "no NUL after args for event_copy");
    event_clear(&e);
    free(r);
}

/* passwd run by uid 1000: the real uid stays the caller's, the effective one is root's. */
Test(records, exec_of_a_set_user_id_program_gives_both_uids)
{
    static const char args[] = "passwd";
    struct exec_record *r = exec_rec("/usr/bin/passwd", args, sizeof(args), 0);
    struct event e, want = want_event(EVENT_EXEC);

    r->euid = 0;
    decode_ok(r, EXEC_RECORD_SIZE(sizeof(args)), &e);
    want.u.exec.filename = "/usr/bin/passwd";
    want.u.exec.args = (char *)args;
    want.u.exec.args_len = sizeof(args);
    want.u.exec.euid = 0;
    assert_event(&e, &want);
    cr_assert_eq(e.uid, 1000);
    cr_assert_eq(e.u.exec.euid, 0);
    cr_assert_eq(e.u.exec.has_euid, 1, "an euid of 0 is reported, not taken for none");
    event_clear(&e);
    free(r);
}

Test(records, exec_with_empty_argv)
{
    struct exec_record *r = exec_rec("/bin/true", "", 0, 0);
    struct event e, want = want_event(EVENT_EXEC);

    decode_ok(r, sizeof(*r), &e);
    want.u.exec.filename = "/bin/true";
    assert_event(&e, &want);
    cr_assert_null(e.u.exec.args);
    cr_assert_eq(e.u.exec.args_len, 0);
    cr_assert_eq(e.u.exec.args_truncated, 0);
    event_clear(&e);
    free(r);
}

/* Bytes, not text: invalid UTF-8 is kept exactly (the JSON writer decides how to show it). */
Test(records, exec_argv_with_invalid_utf8)
{
    static const char args[] = "/bin/true\0\xff\x80\x80\0caf\xc3\xa9\0\xc0\xaf";
    struct exec_record *r = exec_rec("/bin/\xfftrue", args, sizeof(args), 0);
    struct event e;

    decode_ok(r, sizeof(*r), &e);
    cr_assert_str_eq(e.u.exec.filename, "/bin/\xfftrue");
    cr_assert_eq(e.u.exec.args_len, sizeof(args));
    cr_assert_eq(memcmp(e.u.exec.args, args, sizeof(args)), 0);
    event_clear(&e);
    free(r);
}

/*
 * What an agent makes of a record must pass the bounds every decoder of the
 * bus applies (event_check_bounds()), in both encodings: an event the agent
 * keeps and publishes is never refused by the aggregator or tail.
 */
static void assert_publishable(const struct event *e)
{
    char err[256];
    cr_assert_eq(event_check_bounds(e, NULL, err, sizeof(err)), 0, "refused on the bus: %s", err);
    struct event_batch_meta meta = {.node = "n1", .agent_instance = "i1", .sequence = 1}, got;
    struct buf pb = {0}, js = {0};
    cr_assert_eq(event_batch_encode(&meta, e, 1, &pb), 0);
    struct event *evs = NULL;
    size_t n = 0;
    cr_assert_eq(
        event_batch_decode((const uint8_t *)pb.data, pb.len, &got, &evs, &n, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_eq(n, 1, "refused after protobuf: %s", err);
    cr_assert_eq(event_check_bounds(&evs[0], NULL, err, sizeof(err)), 0,
                 "refused after protobuf: %s", err);
    cr_assert_eq(evs[0].u.exec.args_len, e->u.exec.args_len);
    event_clear(&evs[0]);
    free(evs);
    event_json_write(&js, e);
    struct event back;
    cr_assert_eq(event_json_parse(js.data, js.len, &back, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(event_check_bounds(&back, NULL, err, sizeof(err)), 0, "refused after JSON: %s",
                 err);
    event_clear(&back);
    buf_free(&pb);
    buf_free(&js);
}

/* argv longer than the kernel's copy: the flag says so and the cut string is terminated. */
/* A path longer than the kernel's copy: the 255 bytes it holds, and the flag that says so. */
Test(records, exec_filename_cut_at_the_record_bound)
{
    char path[RECORD_FILENAME_MAX];
    memset(path, 'd', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    struct exec_record *r = exec_rec(path, "x", 2, 0);
    r->filename_truncated = 1;
    struct event e;
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(strlen(e.u.exec.filename), RECORD_FILENAME_MAX - 1);
    cr_assert_eq(e.u.exec.filename_truncated, 1);
    struct buf b = {0};
    event_json_write(&b, &e);
    buf_putc(&b, '\0');
    cr_assert(strstr(b.data, "\"filename_truncated\":true"), "%s", b.data);
    buf_free(&b);
    assert_publishable(&e);
    event_clear(&e);
    free(r);
}

Test(records, exec_argv_cut_at_the_record_bound)
{
    char args[RECORD_ARGS_MAX];
    struct exec_record *r;
    struct event e;

    memcpy(args, "true\0", 5);
    memset(args + 5, 'x', sizeof(args) - 5);
    r = exec_rec("/bin/true", args, sizeof(args), 1);
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(e.u.exec.args_truncated, 1);
    cr_assert_eq(e.u.exec.args_len, RECORD_ARGS_MAX + 1);
    cr_assert_eq(memcmp(e.u.exec.args, args, sizeof(args)), 0);
    cr_assert_eq(e.u.exec.args[RECORD_ARGS_MAX], '\0');
    cr_assert_str_eq(e.u.exec.args, "true");
    cr_assert_eq(strlen(e.u.exec.args + 5), RECORD_ARGS_MAX - 5);
    assert_publishable(&e);
    event_clear(&e);
    free(r);

    /* The flag alone (argv ended exactly at a string's end) is passed on as is. */
    r = exec_rec("/bin/true", "true\0-v", 8, 1);
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(e.u.exec.args_truncated, 1);
    cr_assert_eq(e.u.exec.args_len, 8);
    event_clear(&e);
    free(r);
}

/*
 * A value cut at its bound is cut at a character: a UTF-8 character the bound split is left
 * out whole, so valid text stays valid (no U+FFFD, no _b64); invalid bytes stay as they are.
 */
Test(records, values_cut_at_their_bound_keep_whole_characters)
{
    /* "é" is c3 a9, "€" e2 82 ac, "😀" f0 9f 98 80: the bound falls after the first byte of
     * each, or after two of the last two. */
    static const struct {
        const char *tail;
        size_t kept; /* bytes of tail left */
    } cases[] = {
        {"\xc3", 0}, {"\xe2\x82", 0}, {"\xf0\x9f\x98", 0}, {"\xc3\xa9", 2},
        {"ab", 2},   {"\xff", 1},     {"\xe0\x80", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t tl = strlen(cases[i].tail);
        char args[RECORD_ARGS_MAX];
        memcpy(args, "true\0", 5);
        memset(args + 5, 'x', sizeof(args) - 5);
        memcpy(args + sizeof(args) - tl, cases[i].tail, tl);
        struct exec_record *r = exec_rec("/bin/true", args, sizeof(args), 1);
        struct event e;
        decode_ok(r, sizeof(*r), &e);
        size_t want = sizeof(args) - 5 - tl + cases[i].kept;
        cr_assert_eq(strlen(e.u.exec.args + 5), want, "case %zu", i);
        cr_assert_eq(e.u.exec.args_truncated, 1);
        struct buf b = {0};
        event_json_write(&b, &e);
        buf_putc(&b, '\0');
        cr_assert_eq(strstr(b.data, "args_b64") != NULL, i >= 5, "case %zu: %s", i, b.data);
        buf_free(&b);
        event_clear(&e);
        free(r);

        char path[RECORD_FILENAME_MAX];
        memset(path, 'd', sizeof(path) - 1);
        path[0] = '/';
        memcpy(path + sizeof(path) - 1 - tl, cases[i].tail, tl);
        path[sizeof(path) - 1] = '\0';
        r = exec_rec(path, "x", 2, 0);
        r->filename_truncated = 1;
        decode_ok(r, sizeof(*r), &e);
        cr_assert_eq(strlen(e.u.exec.filename), sizeof(path) - 1 - tl + cases[i].kept, "case %zu",
                     i);
        event_clear(&e);
        free(r);
    }
    /* Not cut: a filename ending in a split character is the process's own, left as it is. */
    struct exec_record *r = exec_rec("/tmp/\xc3", "x", 2, 0);
    struct event e;
    decode_ok(r, sizeof(*r), &e);
    cr_assert_str_eq(e.u.exec.filename, "/tmp/\xc3");
    event_clear(&e);
    free(r);
}

/* More strings than EVENT_ARGC_MAX: the first EVENT_ARGC_MAX, marked truncated. */
Test(records, exec_argv_beyond_argc_max)
{
    char args[RECORD_ARGS_MAX];
    size_t len = 0, kept = 0;
    struct exec_record *r;
    struct event e;

    for (int i = 0; i < EVENT_ARGC_MAX + 5; i++) {
        len += (size_t)snprintf(args + len, sizeof(args) - len, "a%d", i) + 1;
        if (i == EVENT_ARGC_MAX - 1)
            kept = len;
    }
    r = exec_rec("/bin/true", args, len, 0);
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(e.u.exec.args_truncated, 1);
    cr_assert_eq(e.u.exec.args_len, kept);
    cr_assert_eq(memcmp(e.u.exec.args, args, kept), 0);
    assert_publishable(&e);
    event_clear(&e);
    free(r);

    /* Exactly EVENT_ARGC_MAX strings: all of them, not truncated. */
    r = exec_rec("/bin/true", args, kept, 0);
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(e.u.exec.args_truncated, 0);
    cr_assert_eq(e.u.exec.args_len, kept);
    event_clear(&e);
    free(r);
}

/* Strings filling their whole field are cut to the event's bounds, terminated. */
Test(records, exec_unterminated_filename_and_comm)
{
    struct exec_record *r = exec_rec("", "a", 1, 0);
    struct event e;

    memset(r->filename, 'f', sizeof(r->filename));
    memset(r->hdr.comm, 'c', sizeof(r->hdr.comm));
    decode_ok(r, sizeof(*r), &e);
    cr_assert_eq(strlen(e.u.exec.filename), RECORD_FILENAME_MAX);
    cr_assert_eq(strspn(e.u.exec.filename, "f"), RECORD_FILENAME_MAX);
    cr_assert_eq(strlen(e.command), EVENT_COMM_LEN - 1);
    cr_assert_eq(strspn(e.command, "c"), EVENT_COMM_LEN - 1);
    /* "a" without its NUL: terminated. */
    cr_assert_eq(e.u.exec.args_len, 2);
    cr_assert_str_eq(e.u.exec.args, "a");
    event_clear(&e);
    free(r);
}

Test(records, exec_with_args_len_beyond_its_buffer_is_malformed)
{
    struct exec_record *r = exec_rec("/bin/true", "true", 5, 0);

    r->args_len = RECORD_ARGS_MAX + 1;
    decode_malformed(r, sizeof(*r), "exec record with 1025 bytes of argv, more than its 1024");
    r->args_len = UINT32_MAX;
    decode_malformed(r, sizeof(*r), NULL);
    free(r);
}

Test(records, exit_codes_and_signals)
{
    struct exit_record r = {
        .hdr = hdr(RECORD_EXIT), .exit_code = 3 << 8, .duration_ns = 2500000000ull};
    struct event e, want = want_event(EVENT_EXIT);

    decode_ok(&r, sizeof(r), &e);
    want.u.exit.exit_code = 3;
    want.u.exit.duration_ns = 2500000000ull;
    assert_event(&e, &want);

    cr_assert_eq(e.u.exit.core_dumped, 0);

    r.exit_code = 9; /* SIGKILL */
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.u.exit.exit_code, 0);
    cr_assert_eq(e.u.exit.signal, 9);
    cr_assert_eq(e.u.exit.core_dumped, 0);

    r.exit_code = 0x80 | 11; /* SIGSEGV, core dumped */
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.u.exit.exit_code, 0);
    cr_assert_eq(e.u.exit.signal, 11);
    cr_assert_eq(e.u.exit.core_dumped, 1);

    r.exit_code = 255 << 8;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.u.exit.exit_code, 255);
    cr_assert_eq(e.u.exit.signal, 0);
}

/* Two threads leaving at once can each report the process: its second exit record (same pid,
 * same start) makes no event; a new process given the pid, or another pid, does. */
Test(records, exit_reported_twice_is_one_exit)
{
    static struct records_exits exits; /* as in the capture: zeroed */
    struct exit_record r = {
        .hdr = hdr(RECORD_EXIT), .exit_code = 9 << 8, .duration_ns = 95000000ull};
    struct event first, again, e;

    decode_ok(&r, sizeof(r), &first);
    cr_assert_not(records_exit_repeated(&exits, &first));
    /* The other thread, 25 us later: its lifetime 25 us longer, from the same start. */
    r.hdr.ts_ns += 25000;
    r.duration_ns += 25000;
    decode_ok(&r, sizeof(r), &again);
    cr_assert(records_exit_repeated(&exits, &again));
    cr_assert_eq(exits.repeated, 1);

    /* The pid reused by a process that started later. */
    r.hdr.ts_ns += 1000000000ull;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_not(records_exit_repeated(&exits, &e));
    /* Other pids, one of them on the same slot, and pid 0 on an empty one. */
    for (uint32_t pid = 4243; pid < 4243 + RECORDS_EXITS_KEPT; pid++) {
        r.hdr.pid = pid;
        decode_ok(&r, sizeof(r), &e);
        cr_assert_not(records_exit_repeated(&exits, &e), "pid %u", pid);
    }
    r = (struct exit_record){.hdr = hdr(RECORD_EXIT)};
    r.hdr.pid = 0;
    r.hdr.ts_ns = 0;
    struct records_exits empty = {0};
    decode_ok(&r, sizeof(r), &e);
    cr_assert_not(records_exit_repeated(&empty, &e));
    cr_assert_eq(exits.repeated, 1);
}

/* Boot time plus the sampled offset, in both directions, wrapping rather than overflowing. */
Test(records, timestamps_are_boot_time_plus_offset)
{
    struct exit_record r = {.hdr = hdr(RECORD_EXIT)};
    struct event e;

    dec.boot_to_real_ns = -1000;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.timestamp_ns, BOOT_TS_NS - 1000);

    dec.boot_to_real_ns = INT64_MAX;
    r.hdr.ts_ns = UINT64_MAX;
    decode_ok(&r, sizeof(r), &e);
    cr_assert_eq(e.timestamp_ns, (uint64_t)INT64_MAX - 1);
}

/*
 * Every kind cut at every length short of its record: refused, counted, nothing read beyond.
 * An exec record ends with the argv it says it has (5 bytes here): shorter than its fixed
 * part, that part is what it lacks; past it, the rest of its argv.
 */
Test(records, short_records_of_every_kind)
{
    struct conn_record c = conn(RECORD_CONNECT, AF_INET, IPPROTO_TCP, CONN_ESTABLISHED);
    struct conn_record a = conn(RECORD_ACCEPT, AF_INET, IPPROTO_TCP, 0);
    struct drop_record d = drop(3, 0xffffffff81000410ull);
    struct exec_record *x = exec_rec("/bin/true", "true", 5, 0);
    struct exit_record t = {.hdr = hdr(RECORD_EXIT), .exit_code = 1 << 8};
    struct close_record z = close_rec(CLOSE_ROLE_CLIENT, CLOSE_RESET_NONE);
    const struct {
        const void *rec;
        size_t size, fixed;
        const char *kind;
    } kinds[] = {
        {&c, sizeof(c), sizeof(c), "connect"},
        {&a, sizeof(a), sizeof(a), "accept"},
        {&d, sizeof(d), sizeof(d), "drop"},
        {x, EXEC_RECORD_SIZE(5), EXEC_RECORD_SIZE(0), "exec"},
        {&t, sizeof(t), sizeof(t), "exit"},
        {&z, sizeof(z), sizeof(z), "close"},
    };
    uint64_t before = dec.malformed, refused = 0;

    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (size_t len = 0; len < kinds[k].size; len++) {
            char want[128];

            if (len < sizeof(struct record_hdr))
                snprintf(want, sizeof(want),
                         "record of %zu bytes, shorter than its %zu-byte header", len,
                         sizeof(struct record_hdr));
            else
                snprintf(want, sizeof(want), "%s record of %zu bytes, shorter than its %zu",
                         kinds[k].kind, len, len < kinds[k].fixed ? kinds[k].fixed : kinds[k].size);
            decode_malformed(kinds[k].rec, len, want);
            refused++;
        }
        /* And the whole record decodes. */
        struct event e;
        decode_ok(kinds[k].rec, kinds[k].size, &e);
        event_clear(&e);
    }
    cr_assert_eq(dec.malformed - before, refused);
    cr_assert_eq(dec.no_memory, 0);
    free(x);
}

Test(records, unknown_kinds_are_malformed)
{
    struct exec_record *r = exec_rec("/bin/true", "true", 5, 0);
    char want[64];

    snprintf(want, sizeof(want), "record of unknown kind 0 (%zu bytes)", sizeof(*r));
    r->hdr.kind = 0;
    decode_malformed(r, sizeof(*r), want);
    r->hdr.kind = RECORD_CLOSE + 1;
    decode_malformed(r, sizeof(*r), NULL);
    r->hdr.kind = UINT32_MAX;
    decode_malformed(r, sizeof(*r), NULL);
    free(r);
}

/* Without err the outcome is the same. */
Test(records, no_error_buffer)
{
    struct exit_record r = {.hdr = hdr(RECORD_EXIT)};
    struct event e;

    cr_assert_eq(records_decode(&dec, &r, 3, &e, NULL, 0), -EINVAL);
    cr_assert_eq(dec.malformed, 1);
    cr_assert_eq(records_decode(&dec, &r, sizeof(r), &e, NULL, 0), 0);
    cr_assert_eq(e.type, EVENT_EXIT);
}

/* A record longer than its struct (a newer kernel side) decodes its known part. */
Test(records, trailing_bytes_are_ignored)
{
    struct {
        struct exit_record r;
        uint8_t more[24];
    } big = {.r = {.hdr = hdr(RECORD_EXIT), .exit_code = 2 << 8}};
    struct event e;

    memset(big.more, 0xff, sizeof(big.more));
    decode_ok(&big, sizeof(big), &e);
    cr_assert_eq(e.u.exit.exit_code, 2);
}

Test(records, drop_reasons_need_the_enum)
{
    struct btf *btf = btf__new_empty();

    cr_assert_not_null(btf);
    cr_assert_gt(btf__add_enum(btf, "some_other_enum", 4), 0);
    cr_assert_eq(btf__add_enum_value(btf, "SKB_DROP_REASON_NO_SOCKET", 3), 0);
    errno = 0;
    cr_assert_null(drop_reasons_from_btf(btf));
    cr_assert_eq(errno, ENOENT);
    btf__free(btf);
    cr_assert_eq(drop_reasons_count(reasons), 4, "markers counted as reasons");
}

/* ---- RECORD_DNS ---- */

/* A query for a.test (id 0xbeef) as the egress program copies it, from curl's UDP socket. */
static struct dns_record *dns_rec(uint8_t direction, uint8_t protocol, uint16_t family)
{
    static const uint8_t msg[] = {0xbe, 0xef, 0x01, 0x00, 0,   1,   0,   0, 0, 0, 0, 0,
                                  1,    'a',  4,    't',  'e', 's', 't', 0, 0, 1, 0, 1};
    struct dns_record *r = calloc(1, sizeof(*r));

    cr_assert_not_null(r);
    r->hdr = hdr(RECORD_DNS);
    r->hdr.ppid = 0; /* not known in a cgroup_skb program */
    r->cookie = 0x4242;
    r->suppressed = 3;
    r->family = family;
    r->protocol = protocol;
    r->direction = direction;
    r->sport = 40000;
    r->dport = 53;
    if (family == AF_INET) {
        set_v4(r->saddr, 10, 1, 0, 7);
        set_v4(r->daddr, 10, 96, 0, 10);
    } else {
        set_v6(r->saddr, 7);
        set_v6(r->daddr, 53);
    }
    if (protocol == IPPROTO_TCP) { /* the 2-byte length prefix stays */
        r->tcp_seq = 1000;
        r->tcp_order = DNS_TCP_NEXT;
        r->payload[0] = 0;
        r->payload[1] = sizeof(msg);
        memcpy(r->payload + 2, msg, sizeof(msg));
        r->payload_len = r->message_len = sizeof(msg) + 2;
    } else {
        memcpy(r->payload, msg, sizeof(msg));
        r->payload_len = r->message_len = sizeof(msg);
    }
    return r;
}

/* Decodes from a heap copy of exactly len bytes; the payload is compared inside the copy. */
static int decode_dns(const void *rec, size_t len, struct records_dns *m, const void *want_payload,
                      char *err, size_t errlen)
{
    uint8_t *copy = malloc(len ? len : 1);
    int rc;

    cr_assert_not_null(copy);
    memcpy(copy, rec, len);
    memset(m, 0xa5, sizeof(*m));
    rc = records_decode_dns(&dec, copy, len, m, err, errlen);
    if (rc == 0) {
        cr_assert(m->payload >= copy && m->payload + m->payload_len <= copy + len,
                  "the payload points outside the record");
        if (want_payload)
            cr_assert_arr_eq(m->payload, want_payload, m->payload_len);
        m->payload = NULL; /* the copy goes now */
    }
    free(copy);
    return rc;
}

Test(records, dns_query_udp_ipv4)
{
    struct dns_record *r = dns_rec(DNS_DIR_QUERY, IPPROTO_UDP, AF_INET);
    struct records_dns m;
    char err[128] = "";

    cr_assert_eq(decode_dns(r, sizeof(*r), &m, r->payload, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(m.timestamp_ns, WALL_TS_NS);
    cr_assert_eq(m.boot_ns, BOOT_TS_NS);
    cr_assert_eq(m.pid, 4242);
    cr_assert_eq(m.uid, 1000);
    cr_assert_str_eq(m.command, "curl");
    cr_assert_eq(m.cgroup_id, 0x1122334455667788ull);
    cr_assert_eq(m.cookie, 0x4242);
    cr_assert_eq(m.suppressed, 3);
    cr_assert_not(m.answer);
    cr_assert_eq(m.family, EVENT_FAMILY_IPV4);
    cr_assert_eq(m.protocol, IPPROTO_UDP);
    cr_assert_arr_eq(m.saddr, r->saddr, 16);
    cr_assert_arr_eq(m.daddr, r->daddr, 16);
    cr_assert_eq(m.sport, 40000);
    cr_assert_eq(m.dport, 53);
    cr_assert_eq(m.payload_len, 24);
    cr_assert_not(m.truncated);
    free(r);
}

Test(records, dns_answer_tcp_ipv6_keeps_the_length_prefix)
{
    struct dns_record *r = dns_rec(DNS_DIR_ANSWER, IPPROTO_TCP, AF_INET6);
    struct records_dns m;
    char err[128] = "";

    r->hdr.pid = 0; /* softirq: nobody */
    r->hdr.comm[0] = '\0';
    cr_assert_eq(decode_dns(r, sizeof(*r), &m, r->payload, err, sizeof(err)), 0, "%s", err);
    cr_assert(m.answer);
    cr_assert_eq(m.pid, 0);
    cr_assert_str_eq(m.command, "");
    cr_assert_eq(m.family, EVENT_FAMILY_IPV6);
    cr_assert_eq(m.protocol, IPPROTO_TCP);
    cr_assert_arr_eq(m.daddr, r->daddr, 16);
    cr_assert_eq(m.payload_len, 26);
    cr_assert_eq(m.tcp_seq, 1000);
    cr_assert_eq(m.tcp_order, DNS_TCP_NEXT);
    free(r);
}

Test(records, dns_v4_mapped_is_ipv4_and_a_long_message_is_truncated)
{
    struct dns_record *r = dns_rec(DNS_DIR_QUERY, IPPROTO_UDP, AF_INET6);
    struct records_dns m;
    uint8_t want[16];
    char err[128] = "";

    set_v4_mapped(r->saddr, 127, 0, 0, 1);
    set_v4_mapped(r->daddr, 127, 0, 0, 53);
    r->payload_len = DNS_RECORD_PAYLOAD_MAX;
    r->message_len = 9000; /* loopback's segment: the program copied the first 4096 bytes */
    r->hdr.comm[15] = 'x'; /* a full comm without its NUL */
    memset(r->hdr.comm, 'c', 15);
    cr_assert_eq(decode_dns(r, sizeof(*r), &m, r->payload, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(m.family, EVENT_FAMILY_IPV4);
    set_v4(want, 127, 0, 0, 53);
    cr_assert_arr_eq(m.daddr, want, 16);
    cr_assert(m.truncated);
    cr_assert_eq(m.payload_len, DNS_RECORD_PAYLOAD_MAX);
    cr_assert_eq(strlen(m.command), 15);
    free(r);
}

/* Expects -EINVAL, counted, out zeroed, a reason. */
static void dns_malformed(const struct dns_record *r, size_t len, const char *want_err)
{
    static const struct records_dns zero;
    uint64_t before = dec.malformed;
    struct records_dns m;
    char err[128] = "";

    cr_assert_eq(decode_dns(r, len, &m, NULL, err, sizeof(err)), -EINVAL, "%zu bytes", len);
    cr_assert_eq(dec.malformed, before + 1);
    cr_assert(memcmp(&m, &zero, sizeof(m)) == 0, "fields left in the message");
    if (want_err)
        cr_assert_str_eq(err, want_err);
    else
        cr_assert_neq(err[0], '\0');
}

Test(records, dns_malformed_records_are_counted)
{
    struct dns_record *r = dns_rec(DNS_DIR_QUERY, IPPROTO_UDP, AF_INET);
    char want[96];

    /* Shorter than the header plus the payload it says it carries. */
    for (size_t len = 0; len < DNS_RECORD_SIZE(r->payload_len); len += len < 64 ? 1 : 7)
        dns_malformed(r, len, NULL);
    r->family = 1;
    dns_malformed(r, sizeof(*r), "dns record with address family 1");
    r->family = AF_INET;
    r->protocol = 1;
    dns_malformed(r, sizeof(*r), "dns record with protocol 1");
    r->protocol = IPPROTO_UDP;
    r->direction = 4;
    dns_malformed(r, sizeof(*r), "dns record with direction 4");
    /* An error only with an error record, and that carries no message. */
    r->direction = DNS_DIR_ERROR;
    dns_malformed(r, sizeof(*r), "dns record of direction 3 with error 0");
    r->error = ECONNREFUSED;
    dns_malformed(r, sizeof(*r), "dns error record with a 24-byte message, TCP order 0");
    r->direction = DNS_DIR_ANSWER;
    snprintf(want, sizeof(want), "dns record of direction 2 with error %d", ECONNREFUSED);
    dns_malformed(r, sizeof(*r), want);
    r->error = 0;
    r->payload_len = DNS_RECORD_PAYLOAD_MAX + 1;
    r->message_len = 9000;
    dns_malformed(r, sizeof(*r), "dns record with 4097 payload bytes of a 9000-byte message");
    r->payload_len = 30;
    r->message_len = 24;
    dns_malformed(r, sizeof(*r), "dns record with 30 payload bytes of a 24-byte message");
    r->payload_len = r->message_len = 200;
    snprintf(want, sizeof(want), "dns record of %zu bytes with 200 payload bytes",
             (size_t)DNS_RECORD_SIZE(DNS_RECORD_PAYLOAD_SMALL));
    dns_malformed(r, DNS_RECORD_SIZE(DNS_RECORD_PAYLOAD_SMALL), want);
    /* A TCP order only on TCP, one of the kernel's. */
    r->tcp_order = DNS_TCP_NEXT;
    dns_malformed(r, sizeof(*r), "dns record of protocol 17 with TCP order 1");
    r->protocol = IPPROTO_TCP;
    r->tcp_order = DNS_TCP_NONE;
    dns_malformed(r, sizeof(*r), "dns record of protocol 6 with TCP order 0");
    r->tcp_order = DNS_TCP_ORDER_MAX + 1;
    snprintf(want, sizeof(want), "dns record of protocol 6 with TCP order %d",
             DNS_TCP_ORDER_MAX + 1);
    dns_malformed(r, sizeof(*r), want);
    r->protocol = IPPROTO_UDP;
    r->tcp_order = DNS_TCP_NONE;
    r->payload_len = r->message_len = 24;
    r->hdr.kind = RECORD_CONNECT;
    dns_malformed(r, sizeof(*r), "record of kind 1 is not a dns record");
    free(r);
}

/* An error the kernel reported on a DNS socket, UDP or TCP: the socket and the errno, no
 * message, in a record with no room for one. */
Test(records, dns_socket_error_records_decode)
{
    static const uint8_t protocols[] = {IPPROTO_UDP, IPPROTO_TCP};
    for (size_t i = 0; i < 2; i++) {
        struct dns_record *r = dns_rec(DNS_DIR_ERROR, protocols[i], AF_INET6);
        struct records_dns m;
        char err[128] = "";

        r->payload_len = r->message_len = 0;
        r->tcp_seq = 0;
        r->tcp_order = DNS_TCP_NONE;
        r->error = ECONNREFUSED;
        cr_assert_eq(decode_dns(r, DNS_RECORD_SIZE(0), &m, NULL, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(m.error, ECONNREFUSED);
        cr_assert_eq(m.cookie, 0x4242);
        cr_assert_eq(m.protocol, protocols[i]);
        cr_assert_eq(m.family, EVENT_FAMILY_IPV6);
        cr_assert_eq(m.dport, 53);
        cr_assert_eq(m.payload_len, 0);
        free(r);
    }
}

/* The program reserves the smallest record that holds the message: each size decodes whole. */
Test(records, dns_records_of_each_room_decode)
{
    static const size_t rooms[] = {DNS_RECORD_PAYLOAD_TINY, DNS_RECORD_PAYLOAD_SMALL,
                                   DNS_RECORD_PAYLOAD_MID, DNS_RECORD_PAYLOAD_CLASSIC,
                                   DNS_RECORD_PAYLOAD_MAX};
    struct dns_record *r = dns_rec(DNS_DIR_ANSWER, IPPROTO_UDP, AF_INET);
    struct records_dns m;
    char err[128] = "";

    for (size_t i = 0; i < sizeof(rooms) / sizeof(rooms[0]); i++) {
        for (size_t k = 0; k < rooms[i]; k++)
            r->payload[k] = (uint8_t)(k * 7 + i);
        r->payload_len = r->message_len = (uint32_t)rooms[i];
        cr_assert_eq(decode_dns(r, DNS_RECORD_SIZE(rooms[i]), &m, r->payload, err, sizeof(err)), 0,
                     "room %zu: %s", rooms[i], err);
        cr_assert_eq(m.payload_len, rooms[i]);
        cr_assert_not(m.truncated);
    }
    free(r);
}

/* The generic decoder leaves dns records to records_decode_dns(): refused, never half-read. */
Test(records, generic_decoder_refuses_dns_records)
{
    struct dns_record *r = dns_rec(DNS_DIR_QUERY, IPPROTO_UDP, AF_INET);

    char want[64];
    snprintf(want, sizeof(want), "record of unknown kind 7 (%zu bytes)", sizeof(*r));
    decode_malformed(r, sizeof(*r), want);
    free(r);
}

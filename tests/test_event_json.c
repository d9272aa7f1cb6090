/* Tests for pkg/event_json: the exact API JSON of each event type, time formatting, parsing. */
#include "event_json.h"
#include "utf8_ref.h"
#include "buf.h"
#include "intern.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <jansson.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS       1795698266123456789ull /* 2026-11-26T13:04:26.123456789Z */
#define TS_TEXT  "2026-11-26T13:04:26.123456789Z"
#define COMMON   "\"pid\":1234,\"ppid\":1,\"uid\":1000,"
#define TIMEPART "\"timestamp\":1795698266123456789,\"time\":\"" TS_TEXT "\""

static void base(struct event *e, unsigned type, const char *comm)
{
    memset(e, 0, sizeof(*e));
    e->type = (uint8_t)type;
    e->id = 0xdeadbeefull;
    e->timestamp_ns = TS;
    e->pid = 1234;
    e->ppid = 1;
    e->uid = 1000;
    strncpy(e->command, comm, sizeof(e->command) - 1);
    e->node = intern("node-1");
}

static void set_addrs(struct event *e, unsigned family, const char *src, uint16_t sport,
                      const char *dst, uint16_t dport)
{
    int af = family == EVENT_FAMILY_IPV4 ? AF_INET : AF_INET6;
    e->family = (uint8_t)family;
    cr_assert_eq(inet_pton(af, src, e->saddr), 1);
    cr_assert_eq(inet_pton(af, dst, e->daddr), 1);
    e->sport = sport;
    e->dport = dport;
}

static void set_k8s(struct event *e)
{
    e->k8s.node_name = intern("worker-1.example.com");
    e->k8s.pod_name = intern("web-7d9f");
    e->k8s.namespace = intern("shop");
    e->k8s.container_id = intern("0123abcd");
    e->k8s.pod_uid = intern("9b2c-11");
}

static void set_args(struct event *e, const char *args, size_t len)
{
    e->u.exec.args = malloc(len + 1);
    cr_assert_not_null(e->u.exec.args);
    memcpy(e->u.exec.args, args, len);
    e->u.exec.args[len] = '\0';
    e->u.exec.args_len = (uint32_t)len;
}

static void assert_json(const struct event *e, const char *want)
{
    struct buf b;
    buf_init(&b);
    event_json_write(&b, e);
    cr_assert_not(b.oom);
    cr_assert_str_eq(b.data, want);
    cr_assert_eq(b.len, strlen(want));
    buf_free(&b);
}

/* Writes e, parses it back and checks the second encoding is identical. */
static void assert_round_trip(const struct event *e)
{
    struct buf a, b;
    struct event back;
    char err[256] = "";
    buf_init(&a);
    buf_init(&b);
    event_json_write(&a, e);
    int rc = event_json_parse(a.data, a.len, &back, err, sizeof(err));
    cr_assert_eq(rc, 0, "parse of %s failed: %s", a.data, err);
    event_json_write(&b, &back);
    cr_assert_str_eq(b.data, a.data);
    cr_assert_eq(back.id, e->id);
    cr_assert_eq(back.timestamp_ns, e->timestamp_ns);
    cr_assert_eq(back.type, e->type);
    cr_assert_eq(back.family, e->family);
    cr_assert_eq(back.protocol, e->protocol);
    cr_assert_eq(back.node, e->node, "node is interned to the same pointer");
    cr_assert_eq(back.k8s.pod_name, e->k8s.pod_name);
    cr_assert_eq(memcmp(back.saddr, e->saddr, 16), 0);
    cr_assert_eq(memcmp(back.daddr, e->daddr, 16), 0);
    event_clear(&back);
    buf_free(&a);
    buf_free(&b);
}

/* event_addr_str() writes IPv4 itself: it must write what inet_ntop() does, for every octet
 * value in every position, and refuse a buffer too small as inet_ntop() does. */
Test(event_json, integers_as_printf_writes_them)
{
    static const uint64_t u[] = {0, 1, 9, 10, 99, 100, 65535, 4294967296ull, UINT64_MAX};
    static const int64_t i[] = {0, -1, 1, -10, INT64_MAX, INT64_MIN};
    char want[32];
    struct buf b;
    buf_init(&b);
    for (size_t k = 0; k < sizeof(u) / sizeof(u[0]); k++) {
        buf_reset(&b);
        buf_json_u64(&b, u[k]);
        snprintf(want, sizeof(want), "%" PRIu64, u[k]);
        cr_assert_eq(b.len, strlen(want));
        cr_assert(memcmp(b.data, want, b.len) == 0, "%s", want);
    }
    for (size_t k = 0; k < sizeof(i) / sizeof(i[0]); k++) {
        buf_reset(&b);
        buf_json_i64(&b, i[k]);
        snprintf(want, sizeof(want), "%" PRId64, i[k]);
        cr_assert_eq(b.len, strlen(want));
        cr_assert(memcmp(b.data, want, b.len) == 0, "%s", want);
    }
    buf_free(&b);
}

Test(event_json, ipv4_text_is_inet_ntop)
{
    uint8_t a[16] = {0};
    char got[64], want[64];
    for (unsigned v = 0; v < 256; v++)
        for (unsigned pos = 0; pos < 4; pos++) {
            for (unsigned i = 0; i < 4; i++)
                a[i] = (uint8_t)(i == pos ? v : (v * 37 + i * 101) & 0xff);
            cr_assert_not_null(inet_ntop(AF_INET, a, want, sizeof(want)));
            cr_assert_not_null(event_addr_str(EVENT_FAMILY_IPV4, a, got, sizeof(got)));
            cr_assert_str_eq(got, want);
            size_t n = strlen(want);
            cr_expect_not_null(event_addr_str(EVENT_FAMILY_IPV4, a, got, n + 1));
            cr_expect_str_eq(got, want);
            cr_expect_null(event_addr_str(EVENT_FAMILY_IPV4, a, got, n), "%s in %zu bytes", want,
                           n);
        }
    const uint8_t v6[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    cr_assert_str_eq(event_addr_str(EVENT_FAMILY_IPV6, v6, got, sizeof(got)), "fd00::1");
    cr_expect_null(event_addr_str(EVENT_FAMILY_NONE, v6, got, sizeof(got)));
}

Test(event_json, connection_ipv4_tcp)
{
    struct event e;
    base(&e, EVENT_CONNECTION, "curl");
    set_addrs(&e, EVENT_FAMILY_IPV4, "10.0.0.1", 54321, "93.184.216.34", 443);
    e.protocol = IPPROTO_TCP;
    e.status = EVENT_STATUS_ESTABLISHED;
    e.u.conn.latency_ns = 1500000;
    e.cgroup_id = 77; /* only exec events report it */
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"connection\"," COMMON
                    "\"command\":\"curl\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"10.0.0.1\",\"source_port\":54321,"
                    "\"dest_ip\":\"93.184.216.34\",\"dest_port\":443,"
                    "\"protocol\":\"tcp\",\"family\":\"ipv4\",\"status\":\"established\","
                    "\"latency_ns\":1500000}");
    assert_round_trip(&e);
}

Test(event_json, failed_connection_names_its_error)
{
    struct event e;
    base(&e, EVENT_CONNECTION, "curl");
    set_addrs(&e, EVENT_FAMILY_IPV4, "10.0.0.1", 54321, "10.0.0.2", 81);
    e.protocol = IPPROTO_TCP;
    e.status = EVENT_STATUS_FAILED;
    e.u.conn.latency_ns = 40000;
    e.u.conn.error = intern(event_conn_error_name(ECONNREFUSED));
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"connection\"," COMMON
                    "\"command\":\"curl\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"10.0.0.1\",\"source_port\":54321,"
                    "\"dest_ip\":\"10.0.0.2\",\"dest_port\":81,"
                    "\"protocol\":\"tcp\",\"family\":\"ipv4\",\"status\":\"failed\","
                    "\"latency_ns\":40000,\"error\":\"refused\"}");
    assert_round_trip(&e);
}

Test(event_json, connection_error_names)
{
    cr_expect_str_eq(event_conn_error_name(ECONNREFUSED), "refused");
    cr_expect_str_eq(event_conn_error_name(ETIMEDOUT), "timeout");
    cr_expect_str_eq(event_conn_error_name(EHOSTUNREACH), "unreachable");
    cr_expect_str_eq(event_conn_error_name(ENETUNREACH), "unreachable");
    cr_expect_str_eq(event_conn_error_name(ECONNRESET), "reset");
    cr_expect_str_eq(event_conn_error_name(EACCES), "EACCES");
    cr_expect_str_eq(event_conn_error_name(ECONNABORTED), "ECONNABORTED");
    cr_expect_null(event_conn_error_name(0));
    cr_expect_null(event_conn_error_name(100000));
}

/*
 * A failed connect's source: what the connect never had is left out, not printed as
 * 0.0.0.0 or 0. source_json is the source fields expected.
 */
static void assert_failed_connect_source(unsigned family, const char *src, uint16_t sport,
                                         const char *dst, const char *error,
                                         const char *source_json)
{
    struct event e;
    char want[512];
    base(&e, EVENT_CONNECTION, "curl");
    set_addrs(&e, family, src, sport, dst, 80);
    e.protocol = IPPROTO_TCP;
    e.status = EVENT_STATUS_FAILED;
    e.u.conn.error = intern(error);
    snprintf(want, sizeof(want),
             "{\"id\":\"00000000deadbeef\",\"type\":\"connection\"," COMMON
             "\"command\":\"curl\"," TIMEPART ",\"node\":\"node-1\","
             "%s\"dest_ip\":\"%s\",\"dest_port\":80,\"protocol\":\"tcp\",\"family\":\"%s\","
             "\"status\":\"failed\",\"latency_ns\":0,\"error\":\"%s\"}",
             source_json, dst, family == EVENT_FAMILY_IPV4 ? "ipv4" : "ipv6", error);
    assert_json(&e, want);
    assert_round_trip(&e);
}

/* A connect that failed before its SYN never had a source address: none is printed. */
Test(event_json, connection_failed_before_its_syn_has_no_source)
{
    assert_failed_connect_source(EVENT_FAMILY_IPV4, "0.0.0.0", 0, "10.255.255.1", "unreachable",
                                 "");
}

/*
 * One that found no free local port (EADDRNOTAVAIL: the kernel had chosen the source
 * address, then no port) has no source port.
 */
Test(event_json, connection_without_a_local_port_has_no_source_port)
{
    assert_failed_connect_source(EVENT_FAMILY_IPV4, "127.0.0.1", 0, "127.0.0.1",
                                 event_conn_error_name(EADDRNOTAVAIL),
                                 "\"source_ip\":\"127.0.0.1\",");
}

/* One bound to a port of the wildcard address that found no route has a port, no address. */
Test(event_json, connection_bound_to_the_wildcard_address_has_no_source_ip)
{
    assert_failed_connect_source(EVENT_FAMILY_IPV6, "::", 18314, "2001:db8::1", "unreachable",
                                 "\"source_port\":18314,");
}

Test(event_json, close_with_workload_and_peer)
{
    struct event e;
    base(&e, EVENT_CLOSE, "nginx");
    set_addrs(&e, EVENT_FAMILY_IPV6, "fd00::1", 40000, "fd00::2", 8080);
    e.protocol = IPPROTO_TCP;
    e.k8s.pod_name = intern("web-7d9f-abcde");
    e.k8s.namespace = intern("shop");
    e.k8s.workload = intern("web");
    e.k8s.workload_kind = intern("Deployment");
    e.k8s.ips = intern("fd00::2"); /* pod table only: not in the event's JSON */
    e.peer.pod = intern("cart-0");
    e.peer.namespace = intern("shop");
    e.peer.workload = intern("cart");
    e.peer.workload_kind = intern("StatefulSet");
    e.peer.node = intern("worker-2");
    e.u.close.role = EVENT_ROLE_SERVER;
    e.u.close.reset = EVENT_RESET_RECEIVED;
    e.u.close.duration_ns = 5000000;
    e.u.close.bytes_sent = 2000;
    e.u.close.bytes_received = 1000;
    e.u.close.retransmits = 3;
    e.u.close.srtt_us = 120;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"close\"," COMMON
                    "\"command\":\"nginx\"," TIMEPART ",\"node\":\"node-1\","
                    "\"k8s_pod_name\":\"web-7d9f-abcde\",\"k8s_namespace\":\"shop\","
                    "\"k8s_workload\":\"web\",\"k8s_workload_kind\":\"Deployment\","
                    "\"peer_pod\":\"cart-0\",\"peer_namespace\":\"shop\","
                    "\"peer_workload\":\"cart\",\"peer_workload_kind\":\"StatefulSet\","
                    "\"peer_node\":\"worker-2\","
                    "\"source_ip\":\"fd00::1\",\"source_port\":40000,"
                    "\"dest_ip\":\"fd00::2\",\"dest_port\":8080,"
                    "\"protocol\":\"tcp\",\"family\":\"ipv6\",\"role\":\"server\","
                    "\"duration_ns\":5000000,\"bytes_sent\":2000,\"bytes_received\":1000,"
                    "\"retransmits\":3,\"srtt_us\":120,\"reset\":\"received\"}");
    e.k8s.ips = NULL;
    assert_round_trip(&e);

    struct event back;
    struct buf b;
    char err[256] = "";
    buf_init(&b);
    event_json_write(&b, &e);
    cr_assert_eq(event_json_parse(b.data, b.len, &back, err, sizeof(err)), 0, "%s", err);
    cr_expect(event_equal(&back, &e), "close, workload and peer fields survive a round trip");
    event_clear(&back);
    buf_free(&b);
}

Test(event_json, close_parse_rejects_unknown_role_and_reset)
{
    static const char *const bad[] = {
        "{\"id\":\"0000000000000001\",\"type\":\"close\",\"timestamp\":1,\"role\":\"middle\"}",
        "{\"id\":\"0000000000000001\",\"type\":\"close\",\"timestamp\":1,\"reset\":\"both\"}",
    };
    static const char *const field[] = {"role", "reset"};
    for (size_t i = 0; i < 2; i++) {
        struct event e;
        char err[256] = "";
        cr_expect_neq(event_json_parse(bad[i], strlen(bad[i]), &e, err, sizeof(err)), 0);
        cr_expect(strstr(err, field[i]) != NULL, "error names %s: %s", field[i], err);
    }
}

Test(event_json, connection_ipv6_udp_with_k8s)
{
    struct event e;
    base(&e, EVENT_CONNECTION, "dig");
    set_addrs(&e, EVENT_FAMILY_IPV6, "2001:db8::5", 40000, "fe80::1:2", 53);
    e.protocol = IPPROTO_UDP;
    e.status = EVENT_STATUS_ATTEMPTED;
    set_k8s(&e);
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"connection\"," COMMON
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\","
                    "\"k8s_node_name\":\"worker-1.example.com\",\"k8s_pod_name\":\"web-7d9f\","
                    "\"k8s_namespace\":\"shop\",\"k8s_container_id\":\"0123abcd\","
                    "\"k8s_pod_uid\":\"9b2c-11\","
                    "\"source_ip\":\"2001:db8::5\",\"source_port\":40000,"
                    "\"dest_ip\":\"fe80::1:2\",\"dest_port\":53,"
                    "\"protocol\":\"udp\",\"family\":\"ipv6\",\"status\":\"attempted\"}");
    assert_round_trip(&e);
}

Test(event_json, accept_ipv6_partial_k8s)
{
    struct event e;
    base(&e, EVENT_ACCEPT, "nginx");
    e.id = 0xfedcba9876543210ull;
    set_addrs(&e, EVENT_FAMILY_IPV6, "::1", 59000, "::ffff:10.1.2.3", 8080);
    e.protocol = IPPROTO_TCP;
    e.k8s.pod_name = intern("nginx-0");
    e.k8s.namespace = intern("default");
    assert_json(&e, "{\"id\":\"fedcba9876543210\",\"type\":\"accept\"," COMMON
                    "\"command\":\"nginx\"," TIMEPART ",\"node\":\"node-1\","
                    "\"k8s_pod_name\":\"nginx-0\",\"k8s_namespace\":\"default\","
                    "\"source_ip\":\"::1\",\"source_port\":59000,"
                    "\"dest_ip\":\"::ffff:10.1.2.3\",\"dest_port\":8080,"
                    "\"protocol\":\"tcp\",\"family\":\"ipv6\"}");
    assert_round_trip(&e);
}

Test(event_json, packet_drop_full)
{
    struct event e;
    base(&e, EVENT_PACKET_DROP, "swapper/0");
    set_addrs(&e, EVENT_FAMILY_IPV4, "127.0.0.1", 33000, "127.0.0.1", 9);
    e.protocol = IPPROTO_UDP;
    e.u.drop.reason = intern("NO_SOCKET");
    e.u.drop.reason_code = 3;
    e.u.drop.location = intern("__udp4_lib_rcv+0x5a1");
    e.u.drop.suppressed = 7;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"packet_drop\"," COMMON
                    "\"command\":\"swapper/0\"," TIMEPART ",\"node\":\"node-1\","
                    "\"drop_reason\":\"NO_SOCKET\",\"drop_reason_code\":3,\"protocol\":\"udp\","
                    "\"location\":\"__udp4_lib_rcv+0x5a1\",\"suppressed\":7,"
                    "\"source_ip\":\"127.0.0.1\",\"source_port\":33000,"
                    "\"dest_ip\":\"127.0.0.1\",\"dest_port\":9,\"family\":\"ipv4\"}");
    assert_round_trip(&e);
}

Test(event_json, packet_drop_minimal_has_no_guesses)
{
    struct event e;
    base(&e, EVENT_PACKET_DROP, "ksoftirqd/1");
    e.node = NULL;
    e.u.drop.reason_code = 2;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"packet_drop\"," COMMON
                    "\"command\":\"ksoftirqd/1\"," TIMEPART ",\"drop_reason_code\":2}");
    assert_round_trip(&e);
}

/* Freed in softirq: no task of its own, so no pid, ppid, uid or command at all. */
Test(event_json, packet_drop_without_a_task_has_no_process_fields)
{
    struct event e;
    base(&e, EVENT_PACKET_DROP, "");
    e.pid = e.ppid = e.uid = 0;
    e.node = NULL;
    e.u.drop.reason_code = 2;
    struct buf b;
    buf_init(&b);
    event_json_write(&b, &e);
    cr_expect_null(strstr(b.data, "\"pid\""), "%s", b.data);
    cr_expect_null(strstr(b.data, "\"uid\""), "%s", b.data);
    cr_expect_null(strstr(b.data, "\"command\""), "%s", b.data);
    cr_expect(strstr(b.data, "\"drop_reason_code\":2"), "%s", b.data);
    buf_free(&b);
    assert_round_trip(&e);
}

Test(event_json, packet_drop_icmp_has_addresses_without_ports)
{
    struct event e;
    base(&e, EVENT_PACKET_DROP, "ping");
    set_addrs(&e, EVENT_FAMILY_IPV4, "192.168.1.2", 0, "8.8.8.8", 0);
    e.protocol = IPPROTO_ICMP;
    e.u.drop.reason = intern("NETFILTER_DROP");
    e.u.drop.reason_code = 8;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"packet_drop\"," COMMON
                    "\"command\":\"ping\"," TIMEPART ",\"node\":\"node-1\","
                    "\"drop_reason\":\"NETFILTER_DROP\",\"drop_reason_code\":8,"
                    "\"protocol\":\"icmp\",\"source_ip\":\"192.168.1.2\","
                    "\"dest_ip\":\"8.8.8.8\",\"family\":\"ipv4\"}");
    assert_round_trip(&e);
}

/* A protocol without a name (IP_NOPROTO: one nothing here handles) is its number, never left
 * out; the parser takes the number back, and no number a name stands for. */
Test(event_json, packet_drop_of_an_unnamed_protocol_has_its_number)
{
    struct event e;
    base(&e, EVENT_PACKET_DROP, "");
    e.pid = e.ppid = e.uid = 0;
    set_addrs(&e, EVENT_FAMILY_IPV4, "10.0.0.1", 0, "10.0.0.2", 0);
    e.protocol = 253;
    e.u.drop.reason = intern("IP_NOPROTO");
    e.u.drop.reason_code = 56;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"packet_drop\"," TIMEPART
                    ",\"node\":\"node-1\",\"drop_reason\":\"IP_NOPROTO\",\"drop_reason_code\":56,"
                    "\"protocol\":\"253\",\"source_ip\":\"10.0.0.1\",\"dest_ip\":\"10.0.0.2\","
                    "\"family\":\"ipv4\"}");
    assert_round_trip(&e);

    static const char *const bad[] = {"6", "0", "0253", "256", "25x", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[256], err[256] = "";
        struct event out;
        snprintf(json, sizeof(json),
                 "{\"id\":\"00000000deadbeef\",\"type\":\"packet_drop\",\"timestamp\":1,"
                 "\"drop_reason_code\":56,\"protocol\":\"%s\"}",
                 bad[i]);
        cr_assert_lt(event_json_parse(json, strlen(json), &out, err, sizeof(err)), 0,
                     "protocol \"%s\" was taken", bad[i]);
        cr_assert(strstr(err, "protocol"), "%s", err);
    }
}

Test(event_json, exec_escapes_command_and_args)
{
    struct event e;
    base(&e, EVENT_EXEC, "a\"b\x01\xff");
    e.cgroup_id = 4242;
    e.u.exec.filename = strdup("/usr/bin/printf");
    static const char args[] = "printf\0say \"hi\"\\\0\x01\x1f\n\0\xff\xfe ok\0\0\xc3\xa9t\xc3\xa9";
    set_args(&e, args, sizeof(args)); /* includes the final NUL */
    e.u.exec.args_truncated = 1;
    e.u.exec.filename_truncated = 1;
    e.u.exec.has_euid = 1; /* euid 0: a set-user-ID root program */
    e.k8s.pod_name = intern("p\"od");
    assert_json(&e,
                "{\"id\":\"00000000deadbeef\",\"type\":\"exec\"," COMMON "\"euid\":0,"
                "\"command\":\"a\\\"b\\u0001\xef\xbf\xbd\",\"command_b64\":\"YSJiAf8=\"," TIMEPART
                ",\"node\":\"node-1\","
                "\"k8s_pod_name\":\"p\\\"od\","
                "\"filename\":\"/usr/bin/printf\",\"filename_truncated\":true,"
                "\"args\":[\"printf\",\"say \\\"hi\\\"\\\\\",\"\\u0001\\u001f\\n\","
                "\"\xef\xbf\xbd\xef\xbf\xbd ok\",\"\",\"\xc3\xa9t\xc3\xa9\"],"
                "\"args_b64\":[\"cHJpbnRm\",\"c2F5ICJoaSJc\",\"AR8K\",\"//4gb2s=\",\"\","
                "\"w6l0w6k=\"],"
                "\"args_truncated\":true,\"cgroup_id\":4242}");
    event_clear(&e);
}

Test(event_json, exec_round_trip)
{
    struct event e;
    base(&e, EVENT_EXEC, "bash");
    e.cgroup_id = 99;
    e.u.exec.filename = strdup("/bin/ls");
    static const char args[] = "ls\0-la\0\0/tmp/a \"b\"";
    set_args(&e, args, sizeof(args));
    e.u.exec.euid = 1000; /* the same as uid: still said */
    e.u.exec.has_euid = 1;
    assert_round_trip(&e);

    struct buf b;
    struct event back;
    buf_init(&b);
    event_json_write(&b, &e);
    cr_assert_eq(event_json_parse(b.data, b.len, &back, NULL, 0), 0);
    cr_assert_eq(back.u.exec.args_len, sizeof(args));
    cr_assert_eq(memcmp(back.u.exec.args, args, sizeof(args)), 0);
    cr_assert_str_eq(back.u.exec.filename, "/bin/ls");
    cr_assert_eq(back.cgroup_id, 99);
    cr_assert_eq(back.u.exec.args_truncated, 0);
    cr_assert_eq(back.u.exec.filename_truncated, 0);
    cr_assert_eq(back.u.exec.has_euid, 1);
    cr_assert_eq(back.u.exec.euid, 1000);
    cr_assert(strstr(b.data, "\"uid\":1000,\"euid\":1000,"), "%s", b.data);
    event_clear(&back);
    buf_free(&b);
    event_clear(&e);
}

/* Nor an euid: the event of an agent that did not report it says none, not root's 0. */
Test(event_json, exec_without_filename_or_args)
{
    struct event e, back;
    base(&e, EVENT_EXEC, "sh");
    static const char want[] = "{\"id\":\"00000000deadbeef\",\"type\":\"exec\"," COMMON
                               "\"command\":\"sh\"," TIMEPART ",\"node\":\"node-1\","
                               "\"args\":[],\"cgroup_id\":0}";
    assert_json(&e, want);
    assert_round_trip(&e);
    cr_assert_eq(event_json_parse(want, strlen(want), &back, NULL, 0), 0);
    cr_assert_eq(back.u.exec.has_euid, 0);
    event_clear(&back);
}

Test(event_json, exec_args_without_final_nul)
{
    struct event e;
    base(&e, EVENT_EXEC, "sh");
    set_args(&e, "sh\0-c", 5);
    struct buf b;
    buf_init(&b);
    event_json_write(&b, &e);
    cr_assert(strstr(b.data, ",\"args\":[\"sh\",\"-c\"],"), "%s", b.data);
    buf_free(&b);
    event_clear(&e);
}

Test(event_json, exit)
{
    struct event e;
    base(&e, EVENT_EXIT, "sleep");
    e.u.exit.exit_code = -1;
    e.u.exit.signal = 9;
    e.u.exit.duration_ns = 18446744073709551ull;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"exit\"," COMMON
                    "\"command\":\"sleep\"," TIMEPART ",\"node\":\"node-1\","
                    "\"exit_code\":-1,\"signal\":9,\"duration_ns\":18446744073709551}");
    assert_round_trip(&e);

    /* A core dump is said only when there was one. */
    e.u.exit.signal = 11;
    e.u.exit.core_dumped = 1;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"exit\"," COMMON
                    "\"command\":\"sleep\"," TIMEPART ",\"node\":\"node-1\","
                    "\"exit_code\":-1,\"signal\":11,\"core_dumped\":true,"
                    "\"duration_ns\":18446744073709551}");
    assert_round_trip(&e);
}

static void set_answers(struct event *e, const char *list, size_t len)
{
    e->u.dns.answers = malloc(len);
    memcpy(e->u.dns.answers, list, len);
    e->u.dns.answers_len = (uint32_t)len;
}

Test(event_json, dns_answered_with_a_cname_chain)
{
    struct event e;
    base(&e, EVENT_DNS, "curl");
    e.ppid = 1; /* zero is "unknown" for dns: see dns_without_a_parent_or_a_process */
    set_addrs(&e, EVENT_FAMILY_IPV4, "10.1.0.7", 53001, "10.96.0.10", 53);
    e.protocol = IPPROTO_UDP;
    e.status = EVENT_STATUS_ANSWERED;
    e.u.dns.query = strdup("www.example.test");
    static const char answers[] = "edge.example.test\0"
                                  "192.0.2.7\0"
                                  "2001:db8::7";
    set_answers(&e, answers, sizeof(answers));
    e.u.dns.query_type = 1;
    e.u.dns.rcode = 0;
    e.u.dns.transaction_id = 48879;
    e.u.dns.latency_ns = 734000;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"curl\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"10.1.0.7\",\"source_port\":53001,"
                    "\"dest_ip\":\"10.96.0.10\",\"dest_port\":53,"
                    "\"protocol\":\"udp\",\"family\":\"ipv4\",\"status\":\"answered\","
                    "\"query\":\"www.example.test\",\"query_type\":\"A\",\"transaction_id\":48879,"
                    "\"rcode\":\"NOERROR\",\"answers\":[\"edge.example.test\",\"192.0.2.7\","
                    "\"2001:db8::7\"],\"latency_ns\":734000}");
    assert_round_trip(&e);
    event_clear(&e);
}

/* A truncated answer (TC) and an answer list cut at its bound say so; a whole one says neither. */
Test(event_json, dns_truncated_answer_and_cut_answer_list)
{
    struct event e;
    base(&e, EVENT_DNS, "dig");
    e.ppid = 1;
    set_addrs(&e, EVENT_FAMILY_IPV4, "10.1.0.7", 53001, "10.96.0.10", 53);
    e.protocol = IPPROTO_UDP;
    e.status = EVENT_STATUS_ANSWERED;
    e.u.dns.query = strdup("big.test");
    e.u.dns.query_type = 16;
    e.u.dns.transaction_id = 9;
    e.u.dns.latency_ns = 1000;
    e.u.dns.tc = 1;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"10.1.0.7\",\"source_port\":53001,"
                    "\"dest_ip\":\"10.96.0.10\",\"dest_port\":53,"
                    "\"protocol\":\"udp\",\"family\":\"ipv4\",\"status\":\"answered\","
                    "\"query\":\"big.test\",\"query_type\":\"TXT\",\"transaction_id\":9,"
                    "\"rcode\":\"NOERROR\",\"answers\":[],\"latency_ns\":1000,\"truncated\":true}");
    assert_round_trip(&e);
    e.u.dns.tc = 0;
    e.u.dns.answers_truncated = 1;
    static const char answers[] = "192.0.2.1\0"
                                  "192.0.2.2";
    set_answers(&e, answers, sizeof(answers));
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"10.1.0.7\",\"source_port\":53001,"
                    "\"dest_ip\":\"10.96.0.10\",\"dest_port\":53,"
                    "\"protocol\":\"udp\",\"family\":\"ipv4\",\"status\":\"answered\","
                    "\"query\":\"big.test\",\"query_type\":\"TXT\",\"transaction_id\":9,"
                    "\"rcode\":\"NOERROR\",\"answers\":[\"192.0.2.1\",\"192.0.2.2\"],"
                    "\"latency_ns\":1000,\"answers_truncated\":true}");
    assert_round_trip(&e);
    event_clear(&e);
}

Test(event_json, dns_timeout_has_no_rcode_answers_or_latency)
{
    struct event e;
    base(&e, EVENT_DNS, "getent");
    set_addrs(&e, EVENT_FAMILY_IPV6, "::1", 41000, "::1", 5353);
    e.protocol = IPPROTO_TCP;
    e.status = EVENT_STATUS_TIMEOUT;
    e.u.dns.query = strdup("slow.test");
    e.u.dns.query_type = 65280; /* no name: the number */
    e.u.dns.transaction_id = 7;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"getent\"," TIMEPART ",\"node\":\"node-1\","
                    "\"source_ip\":\"::1\",\"source_port\":41000,"
                    "\"dest_ip\":\"::1\",\"dest_port\":5353,"
                    "\"protocol\":\"tcp\",\"family\":\"ipv6\",\"status\":\"timeout\","
                    "\"query\":\"slow.test\",\"query_type\":\"65280\",\"transaction_id\":7}");
    assert_round_trip(&e);
    event_clear(&e);
}

/* Its answer may have been lost by the capture: no more is known than of a timeout. */
Test(event_json, dns_unknown_outcome_has_no_rcode_answers_or_latency)
{
    struct event e;
    base(&e, EVENT_DNS, "dig");
    e.status = EVENT_STATUS_UNKNOWN;
    e.u.dns.query = strdup("lost.test");
    e.u.dns.query_type = 1;
    e.u.dns.transaction_id = 9;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\",\"status\":\"unknown\","
                    "\"query\":\"lost.test\",\"query_type\":\"A\",\"transaction_id\":9}");
    assert_round_trip(&e);
    event_clear(&e);
}

/* The kernel reported an error on its socket: named as a connection's, with the time to it. */
Test(event_json, dns_failure_has_its_error_and_latency_and_no_rcode_or_answers)
{
    struct event e;
    base(&e, EVENT_DNS, "dig");
    e.status = EVENT_STATUS_FAILED;
    e.u.dns.query = strdup("down.test");
    e.u.dns.query_type = 1;
    e.u.dns.transaction_id = 9;
    e.u.dns.latency_ns = 40000;
    e.u.dns.error = intern("refused");
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\",\"status\":\"failed\","
                    "\"query\":\"down.test\",\"query_type\":\"A\",\"transaction_id\":9,"
                    "\"error\":\"refused\",\"latency_ns\":40000}");
    assert_round_trip(&e);
    event_clear(&e);
}

/* Not a standard query: its opcode by name (or number), where a QUERY has none. */
Test(event_json, dns_of_another_opcode_says_it)
{
    struct event e;
    base(&e, EVENT_DNS, "nsupdate");
    e.status = EVENT_STATUS_ANSWERED;
    e.u.dns.query = strdup("zone.test");
    e.u.dns.query_type = 6;
    e.u.dns.opcode = 5;
    e.u.dns.rcode = 5;
    e.u.dns.transaction_id = 9;
    e.u.dns.latency_ns = 1000;
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," COMMON
                    "\"command\":\"nsupdate\"," TIMEPART ",\"node\":\"node-1\","
                    "\"status\":\"answered\",\"query\":\"zone.test\",\"query_type\":\"SOA\","
                    "\"opcode\":\"UPDATE\",\"transaction_id\":9,\"rcode\":\"REFUSED\","
                    "\"answers\":[],\"latency_ns\":1000}");
    assert_round_trip(&e);
    e.u.dns.opcode = 3;
    assert_round_trip(&e);
    event_clear(&e);
}

Test(event_json, dns_without_a_parent_or_a_process)
{
    struct event e;
    base(&e, EVENT_DNS, "dig");
    e.ppid = 0;
    e.status = EVENT_STATUS_TIMEOUT;
    e.u.dns.query = strdup("x.test");
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\",\"pid\":1234,\"uid\":1000,"
                    "\"command\":\"dig\"," TIMEPART ",\"node\":\"node-1\",\"status\":\"timeout\","
                    "\"query\":\"x.test\",\"query_type\":\"0\",\"transaction_id\":0}");
    assert_round_trip(&e);
    e.pid = 0;
    e.uid = 0;
    e.command[0] = '\0';
    assert_json(&e, "{\"id\":\"00000000deadbeef\",\"type\":\"dns\"," TIMEPART
                    ",\"node\":\"node-1\",\"status\":\"timeout\",\"query\":\"x.test\","
                    "\"query_type\":\"0\",\"transaction_id\":0}");
    assert_round_trip(&e);
    event_clear(&e);
}

/* Bytes a hostile producer put on the bus: escaped, never breaking the JSON. */
Test(event_json, dns_hostile_bytes_stay_inside_their_strings)
{
    struct event e;
    base(&e, EVENT_DNS, "x");
    e.status = EVENT_STATUS_ANSWERED;
    e.u.dns.query = strdup("a\"b\\c\n\x01\xff\xfe.test");
    static const char answers[] = "\"],\"x\":1,\"y\":[\"\0\xc0\xaf";
    set_answers(&e, answers, sizeof(answers));
    e.u.dns.rcode = 3;
    struct buf b;
    buf_init(&b);
    event_json_write(&b, &e);
    json_error_t jerr;
    json_t *j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &jerr);
    cr_assert(j, "invalid JSON (%s): %s", jerr.text, b.data);
    cr_assert_str_eq(json_string_value(json_object_get(j, "rcode")), "NXDOMAIN");
    cr_assert_eq(json_array_size(json_object_get(j, "answers")), 2);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "answers"), 0)),
                     "\"],\"x\":1,\"y\":[\"");
    cr_assert_null(json_object_get(j, "x"));
    json_decref(j);
    buf_free(&b);
    event_clear(&e);
}

Test(event_json, dns_parse_errors_name_the_field)
{
    static const char *const bad[][2] = {
        {"\"status\":\"maybe\"", "status"},
        {"\"query_type\":\"NOPE\"", "query_type"},
        {"\"rcode\":\"70000\"", "rcode"},
        {"\"answers\":[\"\"]", "answers"},
        {"\"answers\":\"1.2.3.4\"", "answers"},
        {"\"answers\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
         "\"13\",\"14\",\"15\",\"16\",\"17\"]",
         "answers"},
        {"\"transaction_id\":65536", "transaction_id"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char js[512], err[256] = "";
        struct event e;
        snprintf(js, sizeof(js),
                 "{\"id\":\"0000000000000001\",\"type\":\"dns\",\"timestamp\":1,%s}", bad[i][0]);
        cr_assert_eq(event_json_parse(js, strlen(js), &e, err, sizeof(err)), -EINVAL, "%s", js);
        cr_assert(strstr(err, bad[i][1]), "%s: %s", js, err);
    }
}

Test(event_json, appends_to_existing_buffer)
{
    struct event e;
    struct buf b;
    base(&e, EVENT_EXIT, "x");
    buf_init(&b);
    buf_puts(&b, "[");
    event_json_write(&b, &e);
    buf_putc(&b, ',');
    event_json_write(&b, &e);
    buf_putc(&b, ']');
    cr_assert_eq(b.data[0], '[');
    cr_assert_eq(strncmp(b.data + 1, "{\"id\":", 6), 0);
    cr_assert(strstr(b.data, "},{\"id\":"));
    cr_assert_eq(b.data[b.len - 1], ']');
    buf_free(&b);
}

Test(event_json, format_time_known_instants)
{
    static const struct {
        uint64_t ns;
        const char *text;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000000000Z"},
        {1, "1970-01-01T00:00:00.000000001Z"},
        {TS, TS_TEXT},
        {1709251199999999999ull, "2024-02-29T23:59:59.999999999Z"},
        {1709251200000000000ull, "2024-03-01T00:00:00.000000000Z"},
        {951825600000000500ull, "2000-02-29T12:00:00.000000500Z"},
        {4107542400000000000ull, "2100-03-01T00:00:00.000000000Z"},
        {946684799123000000ull, "1999-12-31T23:59:59.123000000Z"},
        {UINT64_MAX, "2554-07-21T23:34:33.709551615Z"},
    };
    char out[40];
    /* Twice, alternating days, so the per-thread date cache is exercised both ways. */
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            memset(out, 'x', sizeof(out));
            event_format_time(cases[i].ns, out);
            cr_assert_str_eq(out, cases[i].text);
        }
    }
}

Test(event_json, parse_accepts_uppercase_id_and_ignores_time_and_unknown_keys)
{
    const char *s = "{\"id\":\"00000000DEADBEEF\",\"type\":\"exit\",\"timestamp\":5,"
                    "\"time\":\"garbage\",\"future_field\":{\"x\":1},\"exit_code\":3}";
    struct event e;
    char err[128] = "";
    cr_assert_eq(event_json_parse(s, strlen(s), &e, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(e.id, 0xdeadbeefull);
    cr_assert_eq(e.timestamp_ns, 5);
    cr_assert_eq(e.type, EVENT_EXIT);
    cr_assert_eq(e.u.exit.exit_code, 3);
    cr_assert_null(e.node);
    cr_assert_eq(e.command[0], '\0');
}

Test(event_json, parse_errors_name_the_field)
{
#define HEAD "{\"id\":\"0000000000000001\",\"timestamp\":1,"
    static const struct {
        const char *json;
        const char *field;
    } cases[] = {
        {"{\"type\":\"exit\",\"timestamp\":1}", "\"id\""},
        {"{\"id\":\"0000000000000001\",\"timestamp\":1}", "\"type\""},
        {"{\"id\":\"0000000000000001\",\"type\":\"exit\"}", "\"timestamp\""},
        {HEAD "\"type\":\"bogus\"}", "\"type\""},
        {HEAD "\"type\":7}", "\"type\""},
        {"{\"id\":\"00000000000001\",\"type\":\"exit\",\"timestamp\":1}", "\"id\""},
        {"{\"id\":\"000000000000000g\",\"type\":\"exit\",\"timestamp\":1}", "\"id\""},
        {"{\"id\":\"0000000000000001\",\"type\":\"exit\",\"timestamp\":\"1\"}", "\"timestamp\""},
        {HEAD "\"type\":\"exit\",\"pid\":\"12\"}", "\"pid\""},
        {HEAD "\"type\":\"exit\",\"pid\":-1}", "\"pid\""},
        {HEAD "\"type\":\"exit\",\"uid\":4294967296}", "\"uid\""},
        {HEAD "\"type\":\"exit\",\"pid\":1.5}", "\"pid\""},
        {HEAD "\"type\":\"exit\",\"command\":7}", "\"command\""},
        {HEAD "\"type\":\"exit\",\"node\":5}", "\"node\""},
        {HEAD "\"type\":\"exit\",\"k8s_pod_name\":null}", "\"k8s_pod_name\""},
        {HEAD "\"type\":\"exit\",\"exit_code\":3000000000}", "\"exit_code\""},
        {HEAD "\"type\":\"exit\",\"signal\":true}", "\"signal\""},
        {HEAD "\"type\":\"exec\",\"args\":\"ls\"}", "\"args\""},
        {HEAD "\"type\":\"exec\",\"args\":[\"ls\",1]}", "\"args\""},
        {HEAD "\"type\":\"exec\",\"filename\":[]}", "\"filename\""},
        {HEAD "\"type\":\"exec\",\"filename\":\"/x\",\"args_truncated\":1}", "\"args_truncated\""},
        {HEAD "\"type\":\"exec\",\"euid\":-1}", "\"euid\""},
        {HEAD "\"type\":\"exec\",\"euid\":4294967296}", "\"euid\""},
        {HEAD "\"type\":\"exec\",\"euid\":\"0\"}", "\"euid\""},
        {HEAD "\"type\":\"connection\",\"family\":\"ipv5\"}", "\"family\""},
        {HEAD "\"type\":\"connection\",\"family\":\"ipv4\",\"source_ip\":\"300.1.1.1\"}",
         "\"source_ip\""},
        {HEAD "\"type\":\"accept\",\"family\":\"ipv4\",\"dest_ip\":\"::1\"}", "\"dest_ip\""},
        {HEAD "\"type\":\"accept\",\"source_ip\":\"1.2.3.4\"}", "\"family\""},
        {HEAD "\"type\":\"connection\",\"family\":\"ipv4\",\"source_port\":70000}",
         "\"source_port\""},
        {HEAD "\"type\":\"connection\",\"protocol\":\"foo\"}", "\"protocol\""},
        {HEAD "\"type\":\"connection\",\"status\":\"ok\"}", "\"status\""},
        {HEAD "\"type\":\"connection\",\"latency_ns\":-5}", "\"latency_ns\""},
        {HEAD "\"type\":\"packet_drop\",\"drop_reason\":3}", "\"drop_reason\""},
        {HEAD "\"type\":\"packet_drop\",\"drop_reason_code\":\"NO_SOCKET\"}",
         "\"drop_reason_code\""},
        {HEAD "\"type\":\"packet_drop\",\"location\":false}", "\"location\""},
        {HEAD "\"type\":\"packet_drop\",\"suppressed\":-1}", "\"suppressed\""},
        {"{\"id\":", "invalid JSON"},
        {"[1,2]", "object"},
        {"{\"id\":\"0000000000000001\",\"id\":\"0000000000000002\"}", "invalid JSON"},
        {HEAD "\"type\":\"exec\",\"args\":[\"a\\u0000b\"]}", "invalid JSON"},
    };
#undef HEAD
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct event e;
        char err[256] = "";
        int rc = event_json_parse(cases[i].json, strlen(cases[i].json), &e, err, sizeof(err));
        cr_assert_eq(rc, -EINVAL, "case %zu (%s): rc %d", i, cases[i].json, rc);
        cr_assert(strstr(err, cases[i].field), "case %zu (%s): error \"%s\" does not name %s", i,
                  cases[i].json, err, cases[i].field);
        /* A failed parse leaves nothing to free. */
        cr_assert_null(e.u.exec.filename);
        cr_assert_eq(e.type, 0);
    }
}

Test(event_json, parse_does_not_need_nul_termination)
{
    char s[] = "{\"id\":\"0000000000000001\",\"type\":\"exit\",\"timestamp\":1}GARBAGE";
    struct event e;
    char err[128] = "";
    size_t len = strlen(s) - strlen("GARBAGE");
    cr_assert_eq(event_json_parse(s, len, &e, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(e.type, EVENT_EXIT);
}

/*
 * Surrogates, overlong forms, out-of-range code points and bytes that start
 * nothing must not reach the output raw; the _b64 fields carry them exactly.
 */
Test(event_json, invalid_utf8_always_yields_parseable_json)
{
    static const char *const bad[] = {
        "\xed\xa0\x80", "\xe0\x80\x80", "\xf4\x90\x80\x80", "\xf0\x80\x80\x80",    "\xc0\xaf",
        "ok\xe2\x82",   "\xff\x80\x80", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct event e, back;
        struct buf b;
        char err[256] = "";
        base(&e, EVENT_EXEC, bad[i]);
        e.u.exec.filename = strdup(bad[i]);
        set_args(&e, bad[i], strlen(bad[i]) + 1);
        buf_init(&b);
        event_json_write(&b, &e);
        json_error_t jerr;
        json_t *strict = json_loadb(b.data, b.len, 0, &jerr);
        cr_assert_not_null(strict, "case %zu: %s: %s", i, jerr.text, b.data);
        cr_assert(strstr(json_string_value(json_object_get(strict, "command")), "\xef\xbf\xbd"));
        json_decref(strict);
        cr_assert_eq(event_json_parse(b.data, b.len, &back, err, sizeof(err)), 0, "case %zu: %s", i,
                     err);
        cr_assert_str_eq(back.command, bad[i], "case %zu", i);
        cr_assert_str_eq(back.u.exec.filename, bad[i], "case %zu", i);
        cr_assert_eq(back.u.exec.args_len, strlen(bad[i]) + 1);
        cr_assert_str_eq(back.u.exec.args, bad[i], "case %zu", i);
        event_clear(&back);
        event_clear(&e);
        buf_free(&b);
    }
}

/* The reproducer: `/bin/true $'\xff\x80\x80'`. */
Test(event_json, exec_with_invalid_argv_has_exact_bytes_beside_the_text)
{
    struct event e;
    base(&e, EVENT_EXEC, "true");
    e.u.exec.filename = strdup("/tmp/x\xff/true");
    static const char args[] = "/bin/true\0\xff\x80\x80";
    set_args(&e, args, sizeof(args));
    assert_json(&e,
                "{\"id\":\"00000000deadbeef\",\"type\":\"exec\"," COMMON
                "\"command\":\"true\"," TIMEPART ",\"node\":\"node-1\","
                "\"filename\":\"/tmp/x\xef\xbf\xbd/true\",\"filename_b64\":\"L3RtcC94/y90cnVl\","
                "\"args\":[\"/bin/true\",\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"],"
                "\"args_b64\":[\"L2Jpbi90cnVl\",\"/4CA\"],\"cgroup_id\":0}");
    assert_round_trip(&e);
    event_clear(&e);
}

Test(event_json, parse_rejects_b64_fields_that_disagree_or_are_malformed)
{
    static const char *const bad[] = {
        /* not base64, bad padding, non-zero pad bits, NUL bytes */
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":\"!!!!\"",
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":\"/w\"",
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":\"/x==\"",
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":\"/w=A\"",
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":\"AP8=\"",
        /* bytes the text was not written from; no text; too long for a comm */
        "\"command\":\"x\",\"command_b64\":\"/w==\"",
        "\"command_b64\":\"/w==\"",
        "\"command\":\"\xef\xbf\xbd\",\"command_b64\":7",
        "\"command\":\"aaaaaaaaaaaaaaa\xef\xbf\xbd\",\"command_b64\":\"YWFhYWFhYWFhYWFhYWFh/w==\"",
        "\"filename\":\"a\",\"filename_b64\":\"/w==\"",
        "\"args\":[\"\xef\xbf\xbd\"],\"args_b64\":[]",
        "\"args\":[\"\xef\xbf\xbd\"],\"args_b64\":\"/w==\"",
        "\"args\":[\"\xef\xbf\xbd\"],\"args_b64\":[1]",
        "\"args\":[\"a\"],\"args_b64\":[\"Yg==\"]",
        "\"args_b64\":[\"Yg==\"]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct buf b;
        struct event e;
        char err[256] = "";
        buf_init(&b);
        buf_printf(&b, "{\"id\":\"0000000000000001\",\"type\":\"exec\",\"timestamp\":1,%s}",
                   bad[i]);
        cr_assert_eq(event_json_parse(b.data, b.len, &e, err, sizeof(err)), -EINVAL, "case %zu", i);
        cr_assert(strstr(err, "_b64") || strstr(err, "command"), "case %zu: %s", i, err);
        buf_free(&b);
    }
}

Test(event_json, parse_cuts_long_commands_at_character_boundaries)
{
    static const struct {
        const char *command, *want;
    } cases[] = {
        {"0123456789abcde", "0123456789abcde"},
        {"0123456789abcdefgh", "0123456789abcde"},
        /* 15 invalid bytes are written as 15 U+FFFD: 45 bytes of JSON string. */
        {"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"abcdefghijklm\xc3\xa9", "abcdefghijklm\xc3\xa9"},
        {"abcdefghijklmn\xc3\xa9", "abcdefghijklmn"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b;
        struct event e;
        char err[256] = "";
        buf_init(&b);
        buf_puts(&b, "{\"id\":\"0000000000000001\",\"type\":\"exit\",\"timestamp\":1,\"command\":");
        buf_json_cstr(&b, cases[i].command);
        buf_putc(&b, '}');
        cr_assert_eq(event_json_parse(b.data, b.len, &e, err, sizeof(err)), 0, "%s", err);
        cr_assert_str_eq(e.command, cases[i].want, "case %zu", i);
        buf_free(&b);
    }
}

/* Every string at its worst (all bytes escaped), every number at its longest. */
Test(event_json, worst_case_sizes_are_written_correctly)
{
    static char ctl[300];
    memset(ctl, 0x01, sizeof(ctl) - 1);
    const char *big = intern(ctl);
    static char text[1025]; /* the longest name a batch may carry */
    memset(text, 'a', sizeof(text) - 1);
    const char *plain = intern(text);
    enum { N = 7 };
    struct event ev[N];
    memset(ev, 0, sizeof(ev));
    for (int i = 0; i < N; i++) {
        struct event *e = &ev[i];
        e->id = UINT64_MAX;
        e->timestamp_ns = INT64_MAX;
        e->pid = e->ppid = e->uid = UINT32_MAX;
        memset(e->command, 0x01, sizeof(e->command) - 1);
        e->node = big;
        e->k8s = (struct event_k8s){big, big, big, big, big, plain, plain};
        /* Every name the aggregator may give the far end (a crafted batch may carry them);
         * plain text is copied without a check of its own, escaped text grows the buffer. */
        e->peer = (struct event_peer){plain, plain, plain, plain, plain, plain, plain};
        e->family = EVENT_FAMILY_IPV6;
        memset(e->saddr, 0xff, 16);
        memset(e->daddr, 0xfe, 16);
        e->sport = e->dport = 65535;
        e->protocol = IPPROTO_UDPLITE;
    }
    ev[0].type = EVENT_CONNECTION;
    ev[0].status = EVENT_STATUS_FAILED;
    ev[0].u.conn.error = big;
    ev[1].type = EVENT_PACKET_DROP;
    ev[1].u.drop.reason = big;
    ev[1].u.drop.location = big;
    ev[1].u.drop.reason_code = UINT32_MAX;
    ev[1].u.drop.suppressed = INT64_MAX;
    ev[2].type = EVENT_EXEC;
    ev[2].u.exec.filename = strdup(ctl);
    char args[EVENT_ARGS_MAX];
    memset(args, 0x02, sizeof(args));
    set_args(&ev[2], args, sizeof(args));
    ev[2].u.exec.args_truncated = 1;
    ev[3].type = EVENT_CLOSE;
    ev[3].u.close.role = EVENT_ROLE_CLIENT;
    ev[3].u.close.reset = EVENT_RESET_SENT;
    ev[3].u.close.bytes_sent = ev[3].u.close.bytes_received = INT64_MAX;
    ev[4].type = EVENT_ACCEPT;
    ev[5].type = EVENT_EXIT;
    ev[5].u.exit.exit_code = INT32_MIN;
    ev[5].u.exit.signal = INT32_MIN;
    ev[5].u.exit.core_dumped = 1;
    ev[6].type = EVENT_DNS;
    ev[6].status = EVENT_STATUS_ANSWERED;
    ev[6].u.dns.query = strdup(ctl);

    for (int i = 0; i < N; i++) {
        struct buf b;
        struct event back;
        char err[256] = "";
        buf_init(&b);
        event_json_write(&b, &ev[i]);
        cr_assert_lt(b.len, b.cap);
        cr_assert_eq(strlen(b.data), b.len);
        cr_assert_eq(event_json_parse(b.data, b.len, &back, err, sizeof(err)), 0, "%s: %s",
                     event_type_name(ev[i].type), err);
        cr_assert_eq(back.k8s.pod_uid, big);
        cr_assert_eq(back.k8s.workload, plain);
        cr_assert_eq(back.peer.dns, plain, "%s", event_type_name(ev[i].type));
        if (ev[i].type == EVENT_PACKET_DROP || ev[i].type == EVENT_EXEC)
            cr_assert_eq(back.sport, i == 0 ? 65535 : 0, "drops of udplite have no ports");
        event_clear(&back);
        buf_free(&b);
    }
    event_clear(&ev[2]);
    event_clear(&ev[6]);
}

/* ---- property tests: random bytes through every string the writer emits ---- */

static uint64_t rng_state;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Appends one code point as UTF-8 (no validity checks: callers pick what they want). */
static size_t put_cp(unsigned char *o, uint32_t cp, int len)
{
    if (len == 1) {
        o[0] = (unsigned char)cp;
    } else if (len == 2) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 63));
    } else if (len == 3) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 63));
        o[2] = (unsigned char)(0x80 | (cp & 63));
    } else {
        o[0] = (unsigned char)(0xf0 | cp >> 18);
        o[1] = (unsigned char)(0x80 | (cp >> 12 & 63));
        o[2] = (unsigned char)(0x80 | (cp >> 6 & 63));
        o[3] = (unsigned char)(0x80 | (cp & 63));
    }
    return (size_t)len;
}

/*
 * Up to max bytes mixing what breaks UTF-8 handling: random bytes, valid
 * characters of every length (edges included), overlong forms, surrogates,
 * code points past U+10FFFF, lead bytes 0xf5-0xff, truncated sequences,
 * lone continuation bytes, control characters, quotes and backslashes, and
 * NULs when nul is set.
 */
static size_t gen_bytes(unsigned char *out, size_t max, bool nul)
{
    static const uint32_t edges[] = {0x7f,   0x80,   0x7ff,   0x800,    0xd7ff, 0xe000,
                                     0xfffd, 0xffff, 0x10000, 0x10ffff, 0xfeff, 0x2028};
    size_t n = 0, want = rng() % (max + 1);
    while (n + 4 <= want) {
        unsigned char *o = out + n;
        switch (rng() % 12) {
        case 0:
            o[0] = (unsigned char)rng();
            n += 1;
            break;
        case 1: {
            uint32_t cp = (uint32_t)(rng() % 0x10ffff) + 1;
            if (cp >= 0xd800 && cp < 0xe000)
                cp += 0x800;
            n += put_cp(o, cp, cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);
            break;
        }
        case 2: {
            uint32_t cp = edges[rng() % (sizeof(edges) / sizeof(edges[0]))];
            n += put_cp(o, cp, cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);
            break;
        }
        case 3: /* overlong: a code point in more bytes than it needs */
            n += put_cp(o, (uint32_t)(rng() % 0x800), 2 + (int)(rng() % 3));
            break;
        case 4: /* UTF-16 surrogate */
            n += put_cp(o, 0xd800 + (uint32_t)(rng() % 0x800), 3);
            break;
        case 5: /* past U+10FFFF, or lead bytes RFC 3629 forbids */
            if (rng() & 1) {
                n += put_cp(o, 0x110000 + (uint32_t)(rng() % 0xeffff), 4);
            } else {
                o[0] = (unsigned char)(0xf5 + rng() % 11);
                o[1] = o[2] = 0x80;
                n += 3;
            }
            break;
        case 6: { /* a valid multi-byte character cut short */
            unsigned char tmp[4];
            int len = 2 + (int)(rng() % 3);
            put_cp(tmp, len == 2 ? 0xe9 : len == 3 ? 0x20ac : 0x1f600, len);
            size_t keep = 1 + rng() % (size_t)(len - 1);
            memcpy(o, tmp, keep);
            n += keep;
            break;
        }
        case 7:
            o[0] = (unsigned char)(0x80 + rng() % 64);
            n += 1;
            break;
        case 8:
            o[0] = (unsigned char)(rng() % 0x20);
            n += 1;
            break;
        case 9:
            o[0] = "\"\\/\x7f"[rng() % 4];
            n += 1;
            break;
        case 10:
            o[0] = nul ? '\0' : 'a';
            n += 1;
            break;
        default:
            o[0] = (unsigned char)('a' + rng() % 26);
            n += 1;
            break;
        }
    }
    if (!nul)
        for (size_t i = 0; i < n; i++)
            if (!out[i])
                out[i] = 'z';
    return n;
}

/* What the documented rule makes of s: valid characters kept, each other byte U+FFFD. */
static void ref_text(struct buf *out, const char *s, size_t len)
{
    buf_reset(out);
    for (size_t i = 0; i < len;) {
        size_t k = utf8_ref_char((const unsigned char *)s + i, len - i);
        if (k) {
            buf_append(out, s + i, k);
            i += k;
        } else {
            buf_append(out, "\xef\xbf\xbd", 3);
            i++;
        }
    }
}

/* No raw control bytes (SSE and JSON lines need one line per event) and strictly valid UTF-8. */
static void assert_one_clean_line(const struct buf *b)
{
    for (size_t i = 0; i < b->len; i++)
        cr_assert_geq((unsigned char)b->data[i], 0x20, "raw control byte at %zu: %s", i, b->data);
    cr_assert(utf8_ref_valid(b->data, b->len), "invalid UTF-8 in output: %s", b->data);
}

#define PROPERTY_RUNS 100000

Test(event_json, property_any_bytes_make_a_strict_json_string, .timeout = 120)
{
    struct buf b, want;
    unsigned char in[300];
    buf_init(&b);
    buf_init(&want);
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int run = 0; run < 2 * PROPERTY_RUNS; run++) {
        size_t len = gen_bytes(in, sizeof(in), true);
        buf_reset(&b);
        buf_json_string(&b, (const char *)in, len);
        cr_assert_not(b.oom);
        assert_one_clean_line(&b);
        json_error_t jerr;
        json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        cr_assert_not_null(j, "run %d: %s: %s", run, jerr.text, b.data);
        ref_text(&want, (const char *)in, len);
        cr_assert_eq(json_string_length(j), want.len, "run %d", run);
        cr_assert_eq(memcmp(json_string_value(j), want.data, want.len), 0, "run %d", run);
        if (utf8_ref_valid((const char *)in, len))
            cr_assert_eq(memcmp(json_string_value(j), in, len), 0, "valid UTF-8 is kept");
        cr_assert_eq(buf_utf8_valid((const char *)in, len), utf8_ref_valid((const char *)in, len));
        json_decref(j);
    }
    buf_free(&b);
    buf_free(&want);
}

/* The interned (text-only) fields: every one of them, in turn, gets the random bytes. */
static const char **interned_field(struct event *e, int which)
{
    switch (which) {
    case 0:
        return &e->node;
    case 1:
        return &e->k8s.node_name;
    case 2:
        return &e->k8s.pod_name;
    case 3:
        return &e->k8s.namespace;
    case 4:
        return &e->k8s.container_id;
    case 5:
        return &e->k8s.pod_uid;
    case 6:
        return &e->u.drop.reason;
    default:
        return &e->u.drop.location;
    }
}

static const char *const interned_keys[] = {
    "node",        "k8s_node_name", "k8s_pod_name", "k8s_namespace", "k8s_container_id",
    "k8s_pod_uid", "drop_reason",   "location",
};

/*
 * Every event the writer can produce from any bytes is strict JSON on one
 * line; parsing it back gives the exact bytes of command, filename and args
 * (through their _b64 fields) and the rule's text of everything else, and
 * writing that again gives the same line (what tail, decode and the JSON bus
 * rely on).
 */
Test(event_json, property_any_event_strings_round_trip, .timeout = 300)
{
    struct buf b, again, want;
    unsigned char comm[EVENT_COMM_LEN], file[EVENT_FILENAME_MAX], args[EVENT_ARGS_MAX], other[24];
    buf_init(&b);
    buf_init(&again);
    buf_init(&want);
    rng_state = 0x2545f4914f6cdd1dull;
    for (int run = 0; run < PROPERTY_RUNS; run++) {
        int which = run % 8;
        struct event e, back;
        base(&e, which >= 6 ? EVENT_PACKET_DROP : EVENT_EXEC, "");
        size_t clen = gen_bytes(comm, sizeof(comm) - 1, false);
        memcpy(e.command, comm, clen);
        e.command[clen] = '\0';
        size_t olen = gen_bytes(other, sizeof(other), false);
        const char **field = interned_field(&e, which);
        *field = intern_n((const char *)other, olen);
        cr_assert_not_null(*field);
        size_t flen = 0, alen = 0;
        if (e.type == EVENT_EXEC) {
            flen = gen_bytes(file, sizeof(file) - 1, false);
            e.u.exec.filename = strndup((const char *)file, flen);
            alen = gen_bytes(args, sizeof(args), true);
            if (alen)
                set_args(&e, (const char *)args, alen);
        }

        buf_reset(&b);
        event_json_write(&b, &e);
        cr_assert_not(b.oom);
        assert_one_clean_line(&b);
        json_error_t jerr;
        json_t *strict = json_loadb(b.data, b.len, 0, &jerr);
        cr_assert_not_null(strict, "run %d: %s: %s", run, jerr.text, b.data);
        json_t *jf = json_object_get(strict, interned_keys[which]);
        ref_text(&want, (const char *)other, olen);
        cr_assert_eq(json_string_length(jf), want.len, "run %d: %s", run, interned_keys[which]);
        cr_assert_eq(memcmp(json_string_value(jf), want.data, want.len), 0, "run %d", run);
        json_decref(strict);

        char err[256] = "";
        cr_assert_eq(event_json_parse(b.data, b.len, &back, err, sizeof(err)), 0, "run %d: %s: %s",
                     run, err, b.data);
        cr_assert_str_eq(back.command, e.command, "run %d", run);
        if (e.type == EVENT_EXEC) {
            cr_assert_str_eq(back.u.exec.filename, e.u.exec.filename, "run %d", run);
            /* The writer ends an unterminated last argument; the parser stores it terminated. */
            size_t want_len = alen && args[alen - 1] ? alen + 1 : alen;
            cr_assert_eq(back.u.exec.args_len, want_len, "run %d", run);
            if (alen)
                cr_assert_eq(memcmp(back.u.exec.args, args, alen), 0, "run %d", run);
        }
        cr_assert_str_eq(*interned_field(&back, which), want.data, "run %d", run);
        buf_reset(&again);
        event_json_write(&again, &back);
        cr_assert_str_eq(again.data, b.data, "run %d", run);
        event_clear(&back);
        event_clear(&e);
    }
    buf_free(&b);
    buf_free(&again);
    buf_free(&want);
}

/*
 * docs/openapi.json kept true: a real agent (real eBPF) and a real
 * aggregator (with API_TOKEN) on a real nats-server, with events of every
 * type made by this test, checked by tests/js/openapi_check.mjs (ajv): both
 * serve the document at /api/openapi.json, every documented parameter is
 * accepted and an undocumented one refused, and every answer (events of each
 * type, stats, nodes, programs, readiness, errors, the SSE stream) validates
 * against its schema.
 *
 * Needs root (eBPF), node and the npm packages of tests/js (make deps).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "flows.h"
#include "openapi.h"
#include "query.h"
#include "testutil.h"

#define TOKEN "openapi-test-token"

static struct tu_monitor mon;
static char logdir[64];
static pid_t dns_server;

/*
 * A DNS server on 127.0.0.1:53 (the agent's default DNS_PORTS) that answers
 * every query with NXDOMAIN: a dns event to validate.
 */
static void dns_server_start(void)
{
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(53), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0,
                 "127.0.0.1:53 is taken: the dns event needs it");
    dns_server = fork();
    cr_assert(dns_server >= 0);
    if (dns_server == 0) {
        for (;;) {
            unsigned char m[512];
            struct sockaddr_in from;
            socklen_t fl = sizeof(from);
            ssize_t n = recvfrom(fd, m, sizeof(m), 0, (struct sockaddr *)&from, &fl);
            if (n < 12)
                continue;
            m[2] = 0x81, m[3] = 0x83; /* a response, NXDOMAIN */
            sendto(fd, m, (size_t)n, 0, (struct sockaddr *)&from, fl);
        }
    }
    close(fd);
}

/* One query for oapi.test (type A) to that server, its answer awaited. */
static void dns_query(void)
{
    static const unsigned char q[] = {0x0a, 0x01, 0x01, 0, 0,   1,   0,   0,   0, 0, 0, 0, 4, 'o',
                                      'a',  'p',  'i',  4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(53), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 2};
    unsigned char a[512];
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(send(s, q, sizeof(q), 0), (ssize_t)sizeof(q));
    cr_assert_gt(recv(s, a, sizeof(a), 0), 0, "the test's DNS server did not answer");
    close(s);
}

/* An exec and an exit, a connection, its accept and both closes, a NO_SOCKET drop, and a DNS
 * query answered NXDOMAIN. */
static void make_events(void)
{
    char marker[128];
    tu_marker_make(logdir, "oapimarker", marker, sizeof(marker));
    tu_marker_run(marker, "oapimarker");
    tu_tcp_roundtrip();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)tu_free_port()),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(s, "ping", 4, 0, (struct sockaddr *)&sa, sizeof(sa)), 4);
    close(s);
    dns_query();
}

/* True once the aggregator holds an event of each type (they come through NATS). */
static bool aggregator_has_every_type(void)
{
    static const char *const types[] = {"exec",        "exit",  "connection", "accept",
                                        "packet_drop", "close", "dns"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char path[96];
        int status;
        snprintf(path, sizeof(path), "/api/events?type=%s&limit=1", types[i]);
        json_t *r =
            tu_get_json_hdr(mon.aggregator_port, path, "Authorization: Bearer " TOKEN, &status);
        bool found = r && json_integer_value(json_object_get(r, "count")) > 0;
        json_decref(r);
        if (!found)
            return false;
    }
    return true;
}

static void setup(void)
{
    cr_assert_eq(geteuid(), 0, "needs root: the agent loads eBPF programs");
    cr_assert_eq(system("command -v node >/dev/null 2>&1"), 0,
                 "node not found: install Node.js (make deps installs it)");
    cr_assert_eq(access(tu_repo_path("tests/js/node_modules/ajv-draft-04/package.json"), F_OK), 0,
                 "npm packages of tests/js are missing: run make deps");
    snprintf(logdir, sizeof(logdir), "/tmp/ebpf-e2e-openapi-XXXXXX");
    cr_assert_not_null(mkdtemp(logdir));
    dns_server_start();
    tu_monitor_start(&mon, "API_TOKEN=" TOKEN, logdir);
    uint64_t end = tu_mono_ms() + 15000;
    do
        make_events();
    while (!aggregator_has_every_type() && tu_mono_ms() < end);
}

static void teardown(void)
{
    tu_monitor_stop(&mon);
    if (dns_server > 0)
        tu_stop(dns_server, 2000);
    if (logdir[0]) {
        char cmd[96];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", logdir);
        if (system(cmd) != 0)
            cr_log_warn("could not remove %s", logdir);
    }
}

TestSuite(e2e_openapi, .init = setup, .fini = teardown, .timeout = 120);

/* Runs one check of openapi_check.mjs and asserts its verdict. */
static void check(const char *name)
{
    char *doc = realpath(tu_repo_path("docs/openapi.json"), NULL);
    char *script = realpath(tu_repo_path("tests/js/openapi_check.mjs"), NULL);
    cr_assert(doc && script, "docs/openapi.json or tests/js/openapi_check.mjs not found");
    char cmd[8192];
    snprintf(cmd, sizeof(cmd),
             "OPENAPI_DOC='%s' AGENT_URL=http://127.0.0.1:%d AGGREGATOR_URL=http://127.0.0.1:%d "
             "AGGREGATOR_TOKEN=" TOKEN " node '%s' %s",
             doc, mon.agent_port, mon.aggregator_port, script, name);
    free(doc);
    free(script);
    char *out;
    int rc = tu_run(cmd, &out);
    if (rc != 0)
        cr_log_error("openapi_check.mjs %s:\n%s", name, out);
    cr_assert_neq(rc, 3, "check %s: a tool or package is missing:\n%s", name, out);
    cr_assert_eq(rc, 0, "check %s failed (exit %d)", name, rc);
    char verdict[64];
    snprintf(verdict, sizeof(verdict), "%s: pass\n", name);
    cr_assert_not_null(strstr(out, verdict), "check %s printed no verdict:\n%s", name, out);
    cr_assert_not_null(strstr(out, "ok: "), "check %s checked nothing:\n%s", name, out);
    free(out);
}

Test(e2e_openapi, the_binary_embeds_docs_openapi_json)
{
    char *file = tu_read_file(tu_repo_path("docs/openapi.json"));
    cr_assert_not_null(file);
    size_t len;
    const char *doc = openapi_document(&len);
    cr_expect_eq(len, strlen(file), "embedded %zu bytes, docs/openapi.json has %zu: rebuild", len,
                 strlen(file));
    cr_expect(len == strlen(file) && memcmp(doc, file, len) == 0 && doc[len] == '\0',
              "the embedded document differs from docs/openapi.json");
    json_error_t jerr;
    json_t *j = json_loadb(doc, len, 0, &jerr);
    cr_assert_not_null(j, "docs/openapi.json is not JSON: %s (line %d)", jerr.text, jerr.line);
    cr_expect_str_eq(json_string_value(json_object_get(j, "openapi")), "3.0.3");
    json_decref(j);
    free(file);
}

/* A string parameter's maxLength is the longest value the server takes, so a client generated
 * from the document neither refuses a value the API shows (a DNS name of 1003 characters)
 * nor sends one it refuses. */
Test(e2e_openapi, string_parameters_document_the_lengths_the_server_takes)
{
    size_t len;
    const char *text = openapi_document(&len);
    json_t *doc = json_loadb(text, len, 0, NULL);
    cr_assert_not_null(doc);
    json_t *params = json_object_get(json_object_get(doc, "components"), "parameters"), *p;
    const char *key;
    int checked = 0;
    json_object_foreach(params, key, p)
    {
        json_t *max = json_object_get(json_object_get(p, "schema"), "maxLength");
        if (!max)
            continue;
        json_int_t want = strcmp(key, "query") == 0       ? QUERY_DNS_INPUT_MAX - 1
                          : strncmp(key, "flow_", 5) == 0 ? FLOWS_QUERY_STR_MAX - 1
                                                          : QUERY_STR_MAX - 1;
        cr_expect_eq(json_integer_value(max), want, "%s: maxLength %lld, the server takes %lld",
                     key, (long long)json_integer_value(max), (long long)want);
        checked++;
    }
    cr_expect_gt(checked, 10);
    cr_expect_geq(QUERY_DNS_INPUT_MAX - 1, EVENT_DNS_NAME_MAX + 3, "a name an event shows, as *.");
    json_decref(doc);
}

Test(e2e_openapi, the_document_is_valid_openapi)
{
    check("spec");
}

Test(e2e_openapi, both_programs_serve_the_document)
{
    check("served");
}

Test(e2e_openapi, documented_parameters_accepted_undocumented_refused)
{
    check("parameters");
}

Test(e2e_openapi, every_response_validates_against_its_schema)
{
    check("responses");
}

Test(e2e_openapi, errors_have_their_documented_status_and_body)
{
    check("errors");
}

Test(e2e_openapi, stream_events_validate)
{
    check("stream");
}

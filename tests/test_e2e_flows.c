/*
 * /api/flows end to end: a real nats-server, a real bin/ebpf-agent (VM mode,
 * real BPF), two bin/ebpf-aggregator replicas in one queue group and a third
 * alone in a queue group of its own (so it receives every batch). The test
 * makes real TCP connections on loopback: several established ones that
 * exchange a known number of bytes, and one to a closed port. Then the flows
 * of this process (workload = its command, kind Process) must show the exact
 * counts and failed_by_error.refused on the agent and on either replica, and
 * the two-replica answer must equal the one-replica answer on the same
 * traffic. Everything is started here and stopped by PID; waits are on
 * conditions, never fixed sleeps.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

#define CONNECTIONS 5
#define SENT        300 /* client -> server, per connection */
#define RECEIVED    700 /* server -> client, per connection */
#define WAIT_MS     30000
#define MIXED_OK    6 /* connections established after the refused one, one batch each */

struct proc {
    pid_t pid;
    int port;
    char log[160];
};

static struct proc nats, aggs[3];
static struct tu_agent agent;
static char nats_url[64];
static char comm[16];

/* Stops what the test started, whether it passed or not (the test's .fini). */
static void stop_all(void)
{
    for (size_t i = 0; i < 3; i++)
        if (aggs[i].pid > 0)
            tu_stop(aggs[i].pid, 10000);
    tu_agent_stop(&agent);
    if (nats.pid > 0)
        tu_stop(nats.pid, 2000);
}

/* After a pass: the logs are only worth keeping when something failed. */
static void remove_logs(void)
{
    for (size_t i = 0; i < 3; i++)
        unlink(aggs[i].log);
    unlink(agent.log);
    unlink(nats.log);
}

/* A nats-server of the test's own on a free port (nats_url). */
static void nats_up(void)
{
    nats.port = tu_free_port();
    snprintf(nats.log, sizeof(nats.log), "/tmp/e2e-flows-nats-%d.log", getpid());
    nats.pid = tu_nats_start(nats.port, NULL, nats.log);
    cr_assert_gt(nats.pid, 0, "nats-server did not start");
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats.port);
}

static void agg_up(struct proc *p, const char *name, const char *group)
{
    char bin[256], listen[32];

    p->port = tu_free_port();
    snprintf(p->log, sizeof(p->log), "/tmp/e2e-flows-%s-%d.log", name, getpid());
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
    char *argv[] = {bin,      "--listen-addr", listen,        "--nats-url",
                    nats_url, "--queue-group", (char *)group, NULL};
    p->pid = tu_spawn(argv, NULL, p->log);
    if (!tu_wait_http(p->port, "/ready", 200, WAIT_MS)) {
        tu_dump_file(p->log, 0);
        cr_assert_fail("aggregator %s not ready", name);
    }
}

/* Waits until a replica's stats gather counts expected replicas. */
static void wait_replicas(struct proc *p, int expected)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (tu_mono_ms() < deadline) {
        json_t *j = tu_fetch_json(p->port, "/api/stats");
        json_t *r = json_object_get(j, "replicas");
        bool ok = json_integer_value(json_object_get(r, "answered")) == expected &&
                  json_integer_value(json_object_get(r, "expected")) == expected;
        json_decref(j);
        if (ok)
            return;
        usleep(50000);
    }
    cr_assert_fail("replicas never saw each other");
}

static json_int_t batches_sent(void)
{
    json_t *j = tu_fetch_json(agent.port, "/api/stats");
    json_int_t n = json_integer_value(json_object_get(json_object_get(j, "bus"), "batches_sent"));
    json_decref(j);
    return n;
}

/* Waits until the agent has published n more batches (the events so far are on the bus). */
static void wait_batches_sent(json_int_t n)
{
    json_int_t want = batches_sent() + n;
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (batches_sent() < want) {
        cr_assert(tu_mono_ms() < deadline, "the agent stopped publishing");
        usleep(20000);
    }
}

/* A listener on 127.0.0.1:*port, or on a free port (written to *port) when it is 0. */
static int listen_on(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)*port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert(fd >= 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(fd, 16), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void io_all(int fd, size_t n, bool writing)
{
    char buf[1024] = {0};
    while (n > 0) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        ssize_t r = writing ? write(fd, buf, k) : read(fd, buf, k);
        cr_assert(r > 0, "%s: %s", writing ? "write" : "read", strerror(errno));
        n -= (size_t)r;
    }
}

/* One established connection: SENT bytes out, RECEIVED back, closed by the client first. */
static void one_connection(int lfd, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
    int s = accept(lfd, NULL, NULL);
    cr_assert(s >= 0);
    io_all(c, SENT, true);
    io_all(s, SENT, false);
    io_all(s, RECEIVED, true);
    io_all(c, RECEIVED, false);
    close(c);
    char b;
    cr_assert_eq(read(s, &b, 1), 0); /* the client's FIN */
    close(s);
}

static int refused_port(void)
{
    int port = 0, fd = listen_on(&port);
    close(fd); /* nothing listens there now */
    return port;
}

static void connect_refused(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&a, sizeof(a)), -1);
    cr_assert_eq(errno, ECONNREFUSED);
    close(c);
}

/* The aggregator's /metrics at port, in *r; promtool check metrics must pass. */
static void metrics_checked(int port, struct tu_http *r)
{
    char file[64], cmd[160];
    char *out = NULL;

    cr_assert_eq(tu_http_get(port, "/metrics", NULL, r), 0);
    cr_assert_eq(r->status, 200);
    snprintf(file, sizeof(file), "/tmp/e2e-flows-metrics-%d-%d.txt", getpid(), port);
    FILE *fp = fopen(file, "w");
    cr_assert(fp != NULL);
    fwrite(r->body, 1, r->body_len, fp);
    fclose(fp);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", file);
    int rc = tu_run(cmd, &out);
    unlink(file);
    cr_assert_eq(rc, 0, "promtool check metrics: %s", out);
    free(out);
}

/*
 * The value of ebpf_flow_connections_total for the test's edge to dst_port
 * with status on the aggregator at port (0 when the replica has no such
 * series), from a /metrics page that passes promtool.
 */
static uint64_t metrics_connections(int port, int dst_port, const char *status)
{
    struct tu_http r;
    char want[256];

    metrics_checked(port, &r);
    snprintf(want, sizeof(want),
             "ebpf_flow_connections_total{src_namespace=\"\",src_workload=\"%s\","
             "dst_namespace=\"\",dst_workload=\"127.0.0.1\",dst_port=\"%d\",protocol=\"tcp\","
             "status=\"%s\"} ",
             comm, dst_port, status);
    const char *at = strstr(r.body, want);
    uint64_t v = at != NULL ? strtoull(at + strlen(want), NULL, 10) : 0;
    if (strcmp(status, "established") == 0) {
        /* The latency histogram of the same edge counts every established connection. */
        snprintf(want, sizeof(want),
                 "ebpf_flow_connect_latency_seconds_count{src_namespace=\"\",src_workload=\"%s\","
                 "dst_namespace=\"\",dst_workload=\"127.0.0.1\",dst_port=\"%d\","
                 "protocol=\"tcp\"} ",
                 comm, dst_port);
        at = strstr(r.body, want);
        cr_assert_eq(at != NULL ? strtoull(at + strlen(want), NULL, 10) : 0, v, "%s", r.body);
    }
    tu_http_free(&r);
    return v;
}

static json_t *edge_to(json_t *doc, int port)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "edges"), i, e)
    {
        if (json_integer_value(json_object_get(e, "port")) == port)
            return e;
    }
    return NULL;
}

static json_int_t count_of(json_t *e, const char *k)
{
    return json_integer_value(json_object_get(e, k));
}

/* Whether doc shows all of the test's traffic. */
static bool complete(json_t *doc, int ok_port, int bad_port)
{
    json_t *ok = edge_to(doc, ok_port), *bad = edge_to(doc, bad_port);
    return ok != NULL && bad != NULL && count_of(ok, "established") == CONNECTIONS &&
           count_of(ok, "bytes_sent") == CONNECTIONS * SENT && count_of(bad, "failed") == 1;
}

static json_t *wait_flows(int port, const char *path, int ok_port, int bad_port)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    json_t *j = NULL;
    while (tu_mono_ms() < deadline) {
        json_decref(j);
        j = tu_fetch_json(port, path);
        if (j != NULL && complete(j, ok_port, bad_port))
            return j;
        usleep(50000);
    }
    char *s = j ? json_dumps(j, JSON_INDENT(1)) : NULL;
    cr_assert_fail("%s on :%d never showed the traffic: %s", path, port, s ? s : "(no answer)");
    return NULL;
}

static void check_edges(json_t *doc, int ok_port, int bad_port)
{
    json_t *ok = edge_to(doc, ok_port), *bad = edge_to(doc, bad_port);
    json_t *src = json_object_get(ok, "source"), *dst = json_object_get(ok, "destination");

    cr_assert_str_eq(tu_jstr(src, "workload"), comm);
    cr_assert_str_eq(tu_jstr(src, "workload_kind"), "Process");
    cr_assert_str_eq(tu_jstr(src, "node"), "flows-node");
    cr_assert_str_eq(tu_jstr(dst, "ip"), "127.0.0.1");
    cr_assert_str_eq(tu_jstr(ok, "protocol"), "tcp");
    cr_assert_eq(count_of(ok, "connections"), CONNECTIONS);
    cr_assert_eq(count_of(ok, "failed"), 0);
    cr_assert_eq(count_of(ok, "bytes_received"), CONNECTIONS * RECEIVED);
    cr_assert_eq(count_of(ok, "resets"), 0);
    cr_assert_gt(count_of(ok, "latency_p50_ns"), 0);
    cr_assert_geq(count_of(ok, "latency_p99_ns"), count_of(ok, "latency_p50_ns"));
    cr_assert_eq(count_of(bad, "connections"), 1);
    cr_assert_eq(count_of(bad, "established"), 0);
    cr_assert_eq(count_of(json_object_get(bad, "failed_by_error"), "refused"), 1);
}

Test(e2e_flows, exact_edges_on_the_agent_and_across_replicas, .fini = stop_all, .timeout = 60)
{
    char path[256], group[64];
    int ok_port = 0, bad_port;

    prctl(PR_GET_NAME, comm);
    nats_up();
    snprintf(group, sizeof(group), "flows-%d", getpid());

    const char *extra[] = {"--nats-url", nats_url, "--flush-interval", "50ms", NULL};
    tu_agent_start(&agent, "flows-node", extra);
    agg_up(&aggs[0], "a", group);
    agg_up(&aggs[1], "b", group);
    agg_up(&aggs[2], "solo", "flows-solo");
    wait_replicas(&aggs[0], 2);
    wait_replicas(&aggs[1], 2);

    uint64_t since = tu_now_ns() - 60000000000ull;
    int lfd = listen_on(&ok_port);
    bad_port = refused_port();
    /* One connection per batch at least, so the batches spread over both replicas. */
    for (int i = 0; i < CONNECTIONS; i++) {
        one_connection(lfd, ok_port);
        wait_batches_sent(2);
    }
    connect_refused(bad_port);
    close(lfd);
    uint64_t until = tu_now_ns() + 60000000000ull;

    snprintf(path, sizeof(path),
             "/api/flows?workload=%s&protocol=tcp&since=%" PRIu64 "&until=%" PRIu64, comm, since,
             until);
    json_t *on_agent = wait_flows(agent.port, path, ok_port, bad_port);
    check_edges(on_agent, ok_port, bad_port);
    json_t *solo = wait_flows(aggs[2].port, path, ok_port, bad_port);
    check_edges(solo, ok_port, bad_port);
    json_t *a = wait_flows(aggs[0].port, path, ok_port, bad_port);
    json_t *b = wait_flows(aggs[1].port, path, ok_port, bad_port);
    check_edges(a, ok_port, bad_port);
    cr_assert(json_is_false(json_object_get(a, "partial")));
    cr_assert_eq(count_of(json_object_get(a, "replicas"), "answered"), 2);

    /*
     * Exact merge: both replicas, and the lone replica that saw every batch,
     * agree to the histogram bucket and the nanosecond. (Only the test's own
     * edges: its HTTP polling makes more edges of this process meanwhile.)
     */
    int ports[] = {ok_port, bad_port};
    for (size_t i = 0; i < 2; i++) {
        cr_assert(json_equal(edge_to(a, ports[i]), edge_to(b, ports[i])),
                  "replicas a and b differ");
        cr_assert(json_equal(edge_to(a, ports[i]), edge_to(solo, ports[i])),
                  "two replicas differ from one");
    }
    cr_assert_eq(count_of(a, "count"), (json_int_t)json_array_size(json_object_get(a, "edges")));

    /* limit keeps the busiest edges and total_count says how many there were (merged: at
     * least the two edges each replica holds a share of). */
    snprintf(path, sizeof(path),
             "/api/flows?workload=%s&protocol=tcp&since=%" PRIu64 "&until=%" PRIu64 "&limit=1",
             comm, since, until);
    int flow_ports[] = {agent.port, aggs[0].port, aggs[1].port, aggs[2].port};
    for (size_t i = 0; i < 4; i++) {
        json_t *one = tu_fetch_json(flow_ports[i], path);
        cr_assert_eq(count_of(one, "count"), 1, "%s on :%d", path, flow_ports[i]);
        cr_assert_geq(count_of(one, "total_count"), 2, "%s on :%d", path, flow_ports[i]);
        json_decref(one);
    }
    cr_assert_eq(count_of(solo, "total_count"), count_of(solo, "count"),
                 "nothing cut: all of them");

    /* A window given by since alone, or until alone: every replica's share, the same answer. */
    const char *windows[] = {"since", "until"};
    for (size_t w = 0; w < 2; w++) {
        snprintf(path, sizeof(path), "/api/flows?workload=%s&protocol=tcp&%s=%" PRIu64, comm,
                 windows[w], w == 0 ? since : until);
        json_t *half[2] = {wait_flows(aggs[0].port, path, ok_port, bad_port),
                           wait_flows(aggs[1].port, path, ok_port, bad_port)};
        for (size_t r = 0; r < 2; r++) {
            cr_assert(json_is_false(json_object_get(half[r], "partial")), "%s", path);
            for (size_t i = 0; i < 2; i++)
                cr_assert(json_equal(edge_to(half[r], ports[i]), edge_to(solo, ports[i])),
                          "%s on replica %zu: not every replica's share", path, r);
            json_decref(half[r]);
        }
    }

    /* Each replica held a share: the merge is what made the answers whole. */
    json_t *st = tu_fetch_json(aggs[0].port, "/api/stats");
    json_t *list = json_object_get(json_object_get(st, "replicas"), "list"), *r;
    size_t i;
    cr_assert_eq(json_array_size(list), 2);
    json_array_foreach(list, i, r)
    {
        cr_assert_gt(count_of(r, "batches"), 0, "replica %zu received no batch", i);
    }
    cr_assert_gt(count_of(json_object_get(st, "flows"), "events"), 0);
    json_decref(st);

    /* Per-edge counters: each replica its share, valid for a Prometheus scrape. */
    cr_assert_eq(metrics_connections(aggs[0].port, ok_port, "established") +
                     metrics_connections(aggs[1].port, ok_port, "established"),
                 CONNECTIONS);
    cr_assert_eq(metrics_connections(aggs[2].port, ok_port, "established"), CONNECTIONS);
    cr_assert_eq(metrics_connections(aggs[2].port, bad_port, "failed"), 1);

    /*
     * One edge with both outcomes, spread over the replicas: a refused connect to a port, then
     * connections to a listener there, one batch each. status=failed keeps that edge whole on
     * every replica (judged once the shares are added, not on each replica's share).
     */
    int mixed_port = refused_port();
    connect_refused(mixed_port);
    wait_batches_sent(2);
    int mfd = listen_on(&mixed_port);
    for (int i = 0; i < MIXED_OK; i++) {
        one_connection(mfd, mixed_port);
        wait_batches_sent(2);
    }
    close(mfd);
    snprintf(path, sizeof(path),
             "/api/flows?workload=%s&protocol=tcp&status=failed&since=%" PRIu64
             "&until=2262-04-12T00:00:00Z",
             comm, since);
    int ask[] = {aggs[2].port, aggs[0].port, aggs[1].port, agent.port};
    json_t *want = NULL;
    for (size_t k = 0; k < 4; k++) {
        json_t *got = NULL, *e = NULL;
        for (uint64_t dl = tu_mono_ms() + WAIT_MS; tu_mono_ms() < dl; usleep(50000)) {
            json_decref(got);
            got = tu_fetch_json(ask[k], path);
            e = edge_to(got, mixed_port);
            if (e && count_of(e, "connections") == MIXED_OK + 1)
                break;
        }
        cr_assert(e != NULL, ":%d: no edge to the mixed port: %s", ask[k], tu_jdump(got));
        cr_assert_eq(count_of(e, "connections"), MIXED_OK + 1, ":%d: %s", ask[k], tu_jdump(e));
        cr_assert_eq(count_of(e, "established"), MIXED_OK, ":%d", ask[k]);
        cr_assert_eq(count_of(e, "failed"), 1, ":%d", ask[k]);
        /* Only edges with a failure; the ok port's has none. */
        cr_assert_null(edge_to(got, ok_port), ":%d: an edge without failures", ask[k]);
        /* An until past 2262 (beyond a signed 64-bit count of ns): every replica answers. */
        if (ask[k] != agent.port) {
            cr_assert(json_is_false(json_object_get(got, "partial")), ":%d partial", ask[k]);
            cr_assert_eq(count_of(json_object_get(got, "replicas"), "answered"),
                         ask[k] == aggs[2].port ? 1 : 2);
        }
        if (want == NULL)
            want = json_incref(e);
        else if (ask[k] != agent.port)
            cr_assert(json_equal(want, e), ":%d differs from the lone replica", ask[k]);
        json_decref(got);
    }
    json_decref(want);

    /* Unknown parameters are refused, naming them. */
    int status = 0;
    json_t *bad = tu_get_json(aggs[0].port, "/api/flows?type=connection", &status);
    cr_assert_eq(status, 400);
    cr_assert(strstr(tu_jstr(bad, "error"), "'type'") != NULL);
    json_decref(bad);
    bad = tu_get_json(agent.port, "/api/flows?group_by=node", &status);
    cr_assert_eq(status, 400);
    json_decref(bad);

    json_decref(on_agent);
    json_decref(solo);
    json_decref(a);
    json_decref(b);
    stop_all();
    remove_logs();
}

/*
 * A process names itself (its comm is the edge's src_workload): bytes that
 * are no UTF-8, a quote, a backslash, a newline and control characters. The
 * aggregator's /metrics must still pass promtool, with the name's valid
 * characters escaped and each invalid byte as U+FFFD.
 */
Test(e2e_flows, metrics_stay_valid_whatever_a_process_is_called, .fini = stop_all, .timeout = 60)
{
    static const char hostile[] = "q\"b\\\n\xffz\x7f\x01";
    static const char label[] = "src_workload=\"q\\\"b\\\\\\n\xef\xbf\xbdz\x7f\x01\"";
    char group[64], saved[16];
    int port;

    nats_up();
    snprintf(group, sizeof(group), "flows-names-%d", getpid());
    const char *extra[] = {"--nats-url", nats_url, "--flush-interval", "50ms", NULL};
    tu_agent_start(&agent, "flows-names-node", extra);
    agg_up(&aggs[0], "names", group);

    int lfd = listen_on(&port);
    prctl(PR_GET_NAME, saved);
    prctl(PR_SET_NAME, hostile);
    one_connection(lfd, port);
    prctl(PR_SET_NAME, saved);
    close(lfd);

    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        struct tu_http r;
        metrics_checked(aggs[0].port, &r);
        bool found = strstr(r.body, label) != NULL;
        tu_http_free(&r);
        if (found)
            break;
        cr_assert(tu_mono_ms() < deadline, "no series with %s", label);
        usleep(50000);
    }
    stop_all();
    remove_logs();
}

/* The value of the sample whose name and labels are exactly series in a /metrics body; -1 when
 * absent. */
static double sample_value(const char *body, const char *series)
{
    size_t n = strlen(series);
    for (const char *at = body; (at = strstr(at, series)) != NULL; at += n)
        if ((at == body || at[-1] == '\n') && at[n] == ' ')
            return strtod(at + n + 1, NULL);
    return -1;
}

static json_int_t agent_flows_stat(const char *key)
{
    json_t *j = tu_fetch_json(agent.port, "/api/stats");
    json_int_t v = json_integer_value(json_object_get(json_object_get(j, "flows"), key));
    json_decref(j);
    return v;
}

/*
 * The agent keeps its node's flows within FLOW_MAX_EDGES too, and what it evicts
 * for room is loss a scrape must see, as on the aggregator: refused connects to
 * more closed ports than the bound (one edge-minute each) evict buckets, counted
 * in /api/stats' flows and in the agent's /metrics alike.
 */
Test(e2e_flows, agent_metrics_count_the_flow_buckets_it_evicts, .fini = stop_all, .timeout = 60)
{
    enum { MAX_EDGES = 16, PORTS = 40 };
    const char *extra[] = {"--flow-max-edges", "16", "--event-types", "connection", NULL};
    struct tu_http r;

    tu_agent_start(&agent, "flows-evict-node", extra);
    for (int i = 0; i < PORTS; i++)
        connect_refused(refused_port());
    json_int_t evicted = 0;
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while ((evicted = agent_flows_stat("evicted_full")) < PORTS - MAX_EDGES) {
        cr_assert(tu_mono_ms() < deadline, "the agent evicted %" JSON_INTEGER_FORMAT " buckets",
                  evicted);
        usleep(20000);
    }

    metrics_checked(agent.port, &r);
    double full = sample_value(r.body, "ebpf_agent_flow_evicted_total{reason=\"full\"}");
    double age = sample_value(r.body, "ebpf_agent_flow_evicted_total{reason=\"age\"}");
    double buckets = sample_value(r.body, "ebpf_agent_flow_buckets");
    double failed = sample_value(r.body, "ebpf_agent_flow_failed_total");
    double bytes = sample_value(r.body, "ebpf_agent_flow_bytes");
    tu_http_free(&r);
    /* Counters only grow (the agent sees the whole host), so /metrics, read after /api/stats,
     * holds at least what it said. */
    cr_assert_geq(full, (double)evicted,
                  "evicted for room: /metrics %g, /api/stats %" JSON_INTEGER_FORMAT, full, evicted);
    cr_assert_geq(age, 0, "no ebpf_agent_flow_evicted_total{reason=\"age\"}");
    cr_assert_geq(failed, 0, "no ebpf_agent_flow_failed_total");
    cr_assert(buckets >= 1 && buckets <= MAX_EDGES, "ebpf_agent_flow_buckets %g", buckets);
    cr_assert_gt(bytes, 0, "ebpf_agent_flow_bytes %g", bytes);
    stop_all();
    remove_logs();
}

/* Each replica's count of the batches it received (this test's are the only ones). */
static bool both_replicas_received(void)
{
    json_t *st = tu_fetch_json(aggs[0].port, "/api/stats"), *r;
    json_t *list = json_object_get(json_object_get(st, "replicas"), "list");
    size_t i, with = 0;
    json_array_foreach(list, i, r)
    {
        with += count_of(r, "batches") > 0;
    }
    json_decref(st);
    return with == 2;
}

/*
 * An edge names four failure causes and counts the rest as "other": with more causes than that,
 * spread over two replicas, which ones are named must not depend on the replica asked. A node
 * publishes one failed connect per batch, each with a cause of its own, until both replicas
 * received some; then both answer the same failed_by_error.
 */
Test(e2e_flows, replicas_name_the_same_failure_causes, .fini = stop_all, .timeout = 60)
{
    static const char *const causes[] = {
        "EACCES", "EPERM", "ENOBUFS", "EADDRNOTAVAIL", "ENETDOWN", "EHOSTDOWN", "EPIPE", "EIO",
        "ENOMEM", "EINTR", "EAGAIN",  "EALREADY",      "EBADF",    "EFAULT",    "ELOOP", "EMFILE"};
    const size_t ncauses = sizeof(causes) / sizeof(causes[0]);
    char group[64], line[1024], seq[16];
    natsConnection *nc = NULL;
    size_t sent = 0;

    nats_up();
    snprintf(group, sizeof(group), "flows-causes-%d", getpid());
    agg_up(&aggs[0], "a", group);
    agg_up(&aggs[1], "b", group);
    wait_replicas(&aggs[0], 2);
    wait_replicas(&aggs[1], 2);
    cr_assert_eq(natsConnection_ConnectTo(&nc, nats_url), NATS_OK);

    while (sent < 8 || (!both_replicas_received() && sent < ncauses)) {
        natsMsg *m = NULL;
        int n = snprintf(line, sizeof(line),
                         "{\"id\":\"%016zx\",\"type\":\"connection\",\"pid\":10,\"ppid\":1,"
                         "\"uid\":0,\"command\":\"causes\",\"timestamp\":%" PRIu64 ","
                         "\"node\":\"causes-node\",\"source_ip\":\"10.0.0.1\","
                         "\"source_port\":40000,\"dest_ip\":\"10.0.0.2\",\"dest_port\":5432,"
                         "\"protocol\":\"tcp\",\"family\":\"ipv4\",\"status\":\"failed\","
                         "\"error\":\"%s\",\"latency_ns\":1000}\n",
                         sent + 1, tu_now_ns(), causes[sent]);
        snprintf(seq, sizeof(seq), "%zu", sent + 1);
        cr_assert_eq(natsMsg_Create(&m, "ebpf.events.causes-node", NULL, line, n), NATS_OK);
        natsMsgHeader_Set(m, "Content-Type", "application/x-ndjson");
        natsMsgHeader_Set(m, "Ebpf-Node", "causes-node");
        natsMsgHeader_Set(m, "Ebpf-Instance", "00000000000000c1");
        natsMsgHeader_Set(m, "Ebpf-Sequence", seq);
        cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
        natsMsg_Destroy(m);
        cr_assert_eq(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
        sent++;
        /* Counted where it went before the next: both_replicas_received() reads it. */
        for (uint64_t dl = tu_mono_ms() + WAIT_MS; tu_mono_ms() < dl; usleep(20000)) {
            json_t *nodes = tu_fetch_json(aggs[0].port, "/api/nodes");
            json_int_t got = count_of(
                json_object_get(json_object_get(nodes, "nodes"), "causes-node"), "batches");
            json_decref(nodes);
            if (got == (json_int_t)sent)
                break;
        }
    }
    natsConnection_Destroy(nc);
    cr_assert(both_replicas_received(), "every batch reached one replica");

    json_t *answer[2] = {NULL, NULL};
    for (size_t r = 0; r < 2; r++) {
        for (uint64_t dl = tu_mono_ms() + WAIT_MS; tu_mono_ms() < dl; usleep(50000)) {
            json_decref(answer[r]);
            answer[r] = tu_fetch_json(aggs[r].port, "/api/flows?workload=causes");
            json_t *e = json_array_get(json_object_get(answer[r], "edges"), 0);
            if (count_of(e, "failed") == (json_int_t)sent)
                break;
        }
        json_t *e = json_array_get(json_object_get(answer[r], "edges"), 0);
        cr_assert_eq(count_of(e, "failed"), (json_int_t)sent, "replica %zu: %s", r,
                     tu_jdump(answer[r]));
    }
    json_t *fa =
        json_object_get(json_array_get(json_object_get(answer[0], "edges"), 0), "failed_by_error");
    json_t *fb =
        json_object_get(json_array_get(json_object_get(answer[1], "edges"), 0), "failed_by_error");
    char *da = json_dumps(fa, JSON_COMPACT), *db = json_dumps(fb, JSON_COMPACT);
    cr_assert(json_equal(fa, fb), "replica a: %s, replica b: %s", da, db);
    free(da);
    free(db);
    json_decref(answer[0]);
    json_decref(answer[1]);
    stop_all();
    remove_logs();
}

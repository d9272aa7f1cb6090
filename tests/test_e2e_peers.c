/*
 * Peer identity across nodes, end to end: a real nats-server, two real
 * bin/ebpf-aggregator replicas in one cluster (same QUEUE_GROUP and
 * CONTROL_SUBJECT), and two "nodes" whose batches are published by the
 * agent's own publisher (pkg/publisher.c: the real protobuf encoding with
 * its pod table), one per node.
 *
 * Routing: each batch must reach exactly one replica, and node A's must
 * reach only replica 1, node B's only replica 2. The replicas are given
 * different SUBJECT_PREFIXes (ebpf.pa, ebpf.pb) and each node publishes
 * under one of them: subject-based routing, deterministic, while queries,
 * stats and pod announcements go over the shared control subjects as in any
 * cluster. The test checks the routing through /api/stats (each replica's
 * batch count). Real agents can replace the publishers later by running
 * with SUBJECT_PREFIX=ebpf.pa / ebpf.pb.
 *
 * Asserted: an accept on node B from node A's pod IP names node A's pod on
 * both replicas' answers (/api/events?peer_pod=...), and the connection on
 * node A to node B's pod names node B's pod; an address two live pods claim
 * and a hostNetwork pod's address are not named; what the agent named is
 * kept; /api/flows shows the edge between the two pods; after a pod is
 * replaced on its IP the new pod is named once the grace has passed, the
 * old never, and the stream (followed with curl) names it too; the counters
 * in /api/stats and /metrics move. In Kubernetes mode, against the test API
 * server: peer_service for a ClusterIP on its port, a backend pod, and a
 * Service added by a watch event; and the same peer_* fields in the QueryReply a replica
 * sends on the bus, as the independent npm client (tests/js/query.mjs: nats + protobufjs)
 * decodes it. Everything started here is stopped by PID; waits are on conditions.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "config.h"
#include "event.h"
#include "intern.h"
#include "k8s_api_server.h"
#include "publisher.h"
#include "testutil.h"

#define WAIT_MS 20000
#define GROUP   "peers-e2e"

struct proc {
    pid_t pid;
    int port;
    char log[160];
};

static struct proc nats, r1, r2;
static char nats_url[64];
static struct bus *bus_a, *bus_b;
static struct publisher *pub_a, *pub_b;
static struct event_id_gen ids;
/* The test Kubernetes API server (tests/helpers/k8s_api_server.c), when a test starts one. */
static struct kas kapi;
static bool api_started;
static char api_env[64];

static void stop_all(void)
{
    if (api_started)
        kas_stop(&kapi);
    api_started = false;
    publisher_free(pub_a);
    publisher_free(pub_b);
    bus_close(bus_a);
    bus_close(bus_b);
    pub_a = pub_b = NULL;
    bus_a = bus_b = NULL;
    if (r1.pid > 0)
        tu_stop(r1.pid, 10000);
    if (r2.pid > 0)
        tu_stop(r2.pid, 10000);
    if (nats.pid > 0)
        tu_stop(nats.pid, 2000);
}

TestSuite(e2e_peers, .fini = stop_all, .timeout = 120);

/* Fails the test with both replicas' logs. */
#define check(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            tu_dump_file(r1.log, 4000);                                                            \
            tu_dump_file(r2.log, 4000);                                                            \
            cr_assert_fail(__VA_ARGS__);                                                           \
        }                                                                                          \
    } while (0)

static void agg_up(struct proc *p, const char *name, const char *prefix)
{
    char bin[256], listen[32], pfx[64];
    p->port = tu_free_port();
    snprintf(p->log, sizeof(p->log), "/tmp/e2e-peers-%s-%d.log", name, getpid());
    unlink(p->log);
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
    snprintf(pfx, sizeof(pfx), "SUBJECT_PREFIX=%s", prefix);
    char *argv[] = {bin,      "--listen-addr", listen, "--nats-url",
                    nats_url, "--queue-group", GROUP,  NULL};
    /* A short grace so the reuse case finishes quickly; the TTL stays long. */
    char *env[] = {pfx,
                   "PEER_GRACE=1s",
                   "PEER_TTL=10m",
                   "JOIN_WINDOW=3s",
                   api_started ? "DEPLOYMENT_MODE=kubernetes" : "DEPLOYMENT_MODE=vm",
                   api_started ? api_env : NULL,
                   NULL};
    p->pid = tu_spawn(argv, env, p->log);
    check(tu_wait_http(p->port, "/ready", 200, 15000), "aggregator %s not ready", name);
}

static json_t *api(struct proc *p, const char *fmt, ...)
{
    char path[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    int status = 0;
    json_t *j = tu_get_json(p->port, path, &status);
    check(j && status == 200, "GET %s on :%d -> %d", path, p->port, status);
    return j;
}

static json_int_t jpath_int(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* The batches replica r ingested itself, from its entry in /api/stats replicas.list. */
static json_int_t own_batches(struct proc *r, json_t *stats, const char *replica_id)
{
    json_t *list = json_object_get(json_object_get(stats, "replicas"), "list"), *e;
    size_t i;
    json_array_foreach(list, i, e)
    {
        const char *id = tu_jstr(e, "replica");
        if (id && strcmp(id, replica_id) == 0)
            return tu_jint(e, "batches");
    }
    check(false, "replica %s missing from replicas.list on :%d", replica_id, r->port);
    return -1;
}

/* Waits until both replicas see each other, and returns their ids. */
static void wait_cluster(char id1[32], char id2[32])
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *a = api(&r1, "/api/stats"), *b = api(&r2, "/api/stats");
        bool ok =
            jpath_int(a, "replicas", "answered") == 2 && jpath_int(b, "replicas", "answered") == 2;
        snprintf(id1, 32, "%s", tu_jstr(a, "replica"));
        snprintf(id2, 32, "%s", tu_jstr(b, "replica"));
        json_decref(a);
        json_decref(b);
        if (ok)
            return;
        check(tu_mono_ms() < deadline, "the two replicas did not find each other");
        usleep(50000);
    }
}

static struct publisher *pub_up(struct bus **bus, const char *prefix, const char *node)
{
    struct config c = {0};
    char err[256], subject[128];
    snprintf(c.nats_url, sizeof(c.nats_url), "%s", nats_url);
    *bus = bus_open(&c, node, err, sizeof(err));
    cr_assert_not_null(*bus, "%s", err);
    bus_node_subject(prefix, node, subject, sizeof(subject));
    struct publisher_config pc = {
        .node = node,
        .subject = subject,
        .encoding = CONFIG_ENCODING_PROTOBUF,
        .batch_size = 1000,
        .flush_interval_ns = 3600ull * 1000000000ull, /* batches close on publisher_flush */
        .outage_buffer_bytes = 1 << 20,
    };
    struct publisher *p = publisher_new(*bus, &pc, err, sizeof(err));
    cr_assert_not_null(p, "%s", err);
    return p;
}

/* A pod as the agent attributes its events (the batch's pod table entry). */
struct pod {
    const char *node, *ns, *name, *uid, *workload, *kind, *ips;
    bool host_network;
};

static struct event ev(const struct pod *pod, enum event_type type, const char *src, uint16_t sport,
                       const char *dst, uint16_t dport)
{
    struct event e = {.id = event_id_next(&ids),
                      .timestamp_ns = tu_now_ns(),
                      .type = (uint8_t)type,
                      .family = EVENT_FAMILY_IPV4,
                      .protocol = IPPROTO_TCP,
                      .pid = 4242,
                      .command = "svc",
                      .node = intern(pod->node)};
    if (type == EVENT_CONNECTION)
        e.status = EVENT_STATUS_ESTABLISHED;
    e.k8s = (struct event_k8s){.node_name = intern(pod->node),
                               .namespace = intern(pod->ns),
                               .pod_name = intern(pod->name),
                               .pod_uid = intern(pod->uid),
                               .workload = intern(pod->workload),
                               .workload_kind = intern(pod->kind),
                               .ips = intern(pod->ips),
                               .host_network = pod->host_network};
    cr_assert_eq(inet_pton(AF_INET, src, e.saddr), 1);
    cr_assert_eq(inet_pton(AF_INET, dst, e.daddr), 1);
    e.sport = sport;
    e.dport = dport;
    return e;
}

static void add(struct publisher *p, struct event e)
{
    cr_assert_eq(publisher_add(p, &e), 0);
    event_clear(&e);
}

static void flush(struct publisher *p)
{
    cr_assert_eq(publisher_flush(p, 5000000000ull), 0, "batch not sent");
}

/* Waits until the cluster's summed <section>.<key> in /api/stats reaches want (asked on r). */
static void wait_stat(struct proc *r, const char *section, const char *key, json_int_t want)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *s = api(r, "/api/stats");
        json_int_t v = jpath_int(s, section, key);
        char *text = json_dumps(json_object_get(s, section), JSON_COMPACT);
        json_decref(s);
        if (v >= want) {
            free(text);
            return;
        }
        check(tu_mono_ms() < deadline, "%s.%s stayed at %" PRId64 ", want %" PRId64 ": %s", section,
              key, (int64_t)v, (int64_t)want, text);
        free(text);
        usleep(20000);
    }
}

static void wait_peers(struct proc *r, const char *key, json_int_t want)
{
    wait_stat(r, "peers", key, want);
}

/* Polls r for a query answering exactly want events; returns the answer. */
static json_t *wait_events(struct proc *r, const char *query, int want)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *j = api(r, "%s", query);
        if (tu_jint(j, "count") == want && jpath_int(j, "replicas", "answered") == 2)
            return j;
        char *s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (tu_mono_ms() > deadline) {
            check(false, "%s on :%d: want %d events, got %s", query, r->port, want, s);
        }
        free(s);
        usleep(50000);
    }
}

static json_t *only_event(json_t *answer)
{
    return json_array_get(json_object_get(answer, "events"), 0);
}

static void expect_peer(json_t *e, const char *pod, const char *ns, const char *workload,
                        const char *kind, const char *node)
{
    check(e != NULL, "no event");
    const char *got = tu_jstr(e, "peer_pod");
    check(got && strcmp(got, pod) == 0, "peer_pod %s, want %s", got ? got : "(none)", pod);
    check(strcmp(tu_jstr(e, "peer_namespace"), ns) == 0, "peer_namespace %s",
          tu_jstr(e, "peer_namespace"));
    check(strcmp(tu_jstr(e, "peer_workload"), workload) == 0, "peer_workload %s",
          tu_jstr(e, "peer_workload"));
    check(strcmp(tu_jstr(e, "peer_workload_kind"), kind) == 0, "peer_workload_kind %s",
          tu_jstr(e, "peer_workload_kind"));
    check(strcmp(tu_jstr(e, "peer_node"), node) == 0, "peer_node %s", tu_jstr(e, "peer_node"));
}

/* The metric's value in a /metrics text (the line that starts with name_and_labels). */
static long long metric(const char *text, const char *name_and_labels)
{
    size_t n = strlen(name_and_labels);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, name_and_labels, n) == 0 && l[n] == ' ')
            return atoll(l + n + 1);
    return -1;
}

static const struct pod client_a = {"node-a", "shop",       "client-7f9c", "uid-client-a",
                                    "client", "Deployment", "10.1.0.5"};
static const struct pod client_a2 = {"node-a", "shop",       "client-new-1", "uid-client-a2",
                                     "client", "Deployment", "10.1.0.5"};
static const struct pod dup_a = {"node-a", "batch", "dup-a",   "uid-dup-a",
                                 "dup-a",  "Job",   "10.9.9.9"};
static const struct pod hostnet_a = {"node-a",     "kube-system", "proxy-a",      "uid-proxy-a",
                                     "kube-proxy", "DaemonSet",   "192.168.50.1", true};
static const struct pod server_b = {"node-b", "shop",        "server-0", "uid-server-b",
                                    "server", "StatefulSet", "10.2.0.7"};
static const struct pod dup_b = {"node-b", "batch", "dup-b",   "uid-dup-b",
                                 "dup-b",  "Job",   "10.9.9.9"};

/* The edge client-7f9c -> server-0 of /api/flows?group_by=pod, with both ends named. */
static bool has_pod_edge(json_t *flows, const char *src_pod, const char *dst_pod,
                         const char *dst_node)
{
    json_t *edges = json_object_get(flows, "edges"), *e;
    size_t i;
    json_array_foreach(edges, i, e)
    {
        json_t *src = json_object_get(e, "source"), *dst = json_object_get(e, "destination");
        const char *sp = tu_jstr(src, "pod"), *dp = tu_jstr(dst, "pod"), *dn = tu_jstr(dst, "node");
        if (sp && dp && dn && strcmp(sp, src_pod) == 0 && strcmp(dp, dst_pod) == 0 &&
            strcmp(dn, dst_node) == 0 && tu_jint(e, "connections") >= 1)
            return true;
    }
    return false;
}

/* curl following r's /api/events/stream?query, its output in log; returns once connected. */
static pid_t stream_open(struct proc *r, const char *query, char *log, size_t loglen)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/events/stream?%s", r->port, query);
    snprintf(log, loglen, "/tmp/e2e-peers-stream-%d.log", getpid());
    unlink(log);
    char *argv[] = {"/usr/bin/curl", "-sN", url, NULL};
    pid_t pid = tu_spawn(argv, NULL, log);
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        char *out = tu_read_file(log);
        bool up = out && strstr(out, ": connected");
        free(out);
        if (up)
            return pid;
        check(tu_mono_ms() < deadline, "the stream on :%d did not connect", r->port);
        usleep(20000);
    }
}

/*
 * Asks every replica for its share of an /api/events query the way a replica
 * asks its peers, with the independent npm client (tests/js/query.mjs: npm
 * nats + protobufjs). Returns the answers by replica: out[0] replica 1's
 * (id1), out[1] replica 2's (id2); fails the test unless both came.
 */
static void npm_query(const char *qs, const char *id1, const char *id2, json_t *out[2])
{
    static const char *const nodes[] = {"/usr/bin/node", "/usr/local/bin/node"};
    const char *node = access(nodes[0], X_OK) == 0 ? nodes[0] : nodes[1];
    char log[96], script[512], proto[512];
    cr_assert(access(node, X_OK) == 0, "node (Node.js) is not installed: run make deps");
    cr_assert(access(tu_repo_path("tests/js/node_modules/nats"), F_OK) == 0,
              "tests/js/node_modules is missing: run make deps");
    snprintf(script, sizeof(script), "%s", tu_repo_path("tests/js/query.mjs"));
    snprintf(proto, sizeof(proto), "%s", tu_repo_path("pkg/events.proto"));
    snprintf(log, sizeof(log), "/tmp/e2e-peers-npm-%d.log", getpid());
    unlink(log);
    char *argv[] = {(char *)node, script,    "--server", nats_url,     "--group",
                    GROUP,        "--query", (char *)qs, "--replicas", "2",
                    "--timeout",  "10000",   "--proto",  proto,        NULL};
    pid_t pid = tu_spawn(argv, NULL, log);
    int rc = tu_wait_exit(pid, 30000);
    char *text = tu_read_file(log);
    if (rc != 0)
        tu_dump_file(log, 4000);
    check(rc == 0 && text != NULL, "query.mjs exited with %d", rc);
    out[0] = out[1] = NULL;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        json_t *a = json_loads(line, 0, NULL);
        check(a != NULL, "query.mjs printed a line that is not JSON: %s", line);
        check(json_object_get(a, "decode_error") == NULL, "query.mjs: %s", line);
        const char *id = tu_jstr(a, "replica");
        if (id != NULL && strcmp(id, id1) == 0 && out[0] == NULL)
            out[0] = json_incref(a);
        else if (id != NULL && strcmp(id, id2) == 0 && out[1] == NULL)
            out[1] = json_incref(a);
        else
            check(json_is_true(json_object_get(a, "done")), "unexpected answer: %s", line);
        json_decref(a);
    }
    check(out[0] != NULL && out[1] != NULL, "query.mjs did not hear from both replicas");
    free(text);
    unlink(log);
}

/* o[k] as a string, "" when absent (protobufjs prints unset strings as ""). */
static const char *pbstr(json_t *o, const char *k)
{
    const char *s = tu_jstr(o, k);
    return s != NULL ? s : "";
}

/* nats-server, the two replicas (one per node's subject prefix) and a publisher per node. */
static void nats_up(void)
{
    event_id_gen_init(&ids);
    nats.port = tu_free_port();
    snprintf(nats.log, sizeof(nats.log), "/tmp/e2e-peers-nats-%d.log", getpid());
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats.port);
    nats.pid = tu_nats_start(nats.port, NULL, nats.log);
    cr_assert_gt(nats.pid, 0, "nats-server did not start");
}

static void cluster_up(char id1[32], char id2[32])
{
    nats_up();
    agg_up(&r1, "r1", "ebpf.pa");
    agg_up(&r2, "r2", "ebpf.pb");
    wait_cluster(id1, id2);
    pub_a = pub_up(&bus_a, "ebpf.pa", "node-a");
    pub_b = pub_up(&bus_b, "ebpf.pb", "node-b");
}

static void remove_logs(void)
{
    unlink(r1.log);
    unlink(r2.log);
    unlink(nats.log);
}

Test(e2e_peers, pods_on_other_nodes_are_named_on_both_replicas)
{
    char id1[32], id2[32];

    cluster_up(id1, id2);

    /* 1. Node B reports its pods (an exec each); only replica 2 ingests it. */
    add(pub_b, ev(&server_b, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    add(pub_b, ev(&dup_b, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_b);
    wait_peers(&r1, "pods_received", 2); /* replica 1 heard replica 2's announcement */

    /*
     * 2. Node A: a connection to node B's server pod, one to the address
     * both dup pods claim, one to a hostNetwork pod's (a node's) address.
     */
    add(pub_a, ev(&dup_a, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    add(pub_a, ev(&hostnet_a, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 40001, "10.2.0.7", 8080));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 40002, "10.9.9.9", 8080));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 40003, "192.168.50.1", 10250));
    flush(pub_a);
    wait_peers(&r2, "pods_received", 2 + 3); /* replica 2 heard node A's three pods */

    /*
     * 3. Node B: accepts from node A's client, from the ambiguous address,
     * from the node address, and one the agent already named (kept).
     */
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 40001, "10.2.0.7", 8080));
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.9.9.9", 40010, "10.2.0.7", 8080));
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "192.168.50.1", 40011, "10.2.0.7", 8080));
    struct event named = ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 40012, "10.2.0.7", 8080);
    named.peer.pod = intern("agent-says-so");
    add(pub_b, named);
    flush(pub_b);

    /* Routing: node A's batch reached only replica 1, node B's two only replica 2. */
    json_t *stats = api(&r1, "/api/stats");
    check(own_batches(&r1, stats, id1) == 1 && own_batches(&r1, stats, id2) >= 1,
          "replica 1 should have ingested node A's one batch");
    json_decref(stats);
    wait_events(&r2, "/api/events?node=node-b&type=accept", 4);
    stats = api(&r2, "/api/stats");
    check(own_batches(&r2, stats, id1) == 1 && own_batches(&r2, stats, id2) == 2,
          "batches per replica: r1 %" PRId64 " r2 %" PRId64 ", want 1 and 2",
          (int64_t)own_batches(&r2, stats, id1), (int64_t)own_batches(&r2, stats, id2));
    json_decref(stats);

    /* The accept on node B names node A's pod, on either replica's answer. */
    struct proc *both[2] = {&r1, &r2};
    for (int i = 0; i < 2; i++) {
        json_t *a = wait_events(both[i], "/api/events?peer_pod=client-7f9c", 1);
        json_t *e = only_event(a);
        check(strcmp(tu_jstr(e, "node"), "node-b") == 0 && tu_jint(e, "source_port") == 40001,
              "wrong event named client-7f9c");
        expect_peer(e, "client-7f9c", "shop", "client", "Deployment", "node-a");
        json_decref(a);

        /* The client side: node A's connection names node B's pod. */
        a = wait_events(both[i], "/api/events?peer_pod=server-0", 1);
        e = only_event(a);
        check(strcmp(tu_jstr(e, "node"), "node-a") == 0 && tu_jint(e, "dest_port") == 8080,
              "wrong event named server-0");
        expect_peer(e, "server-0", "shop", "server", "StatefulSet", "node-b");
        json_decref(a);

        /* Two live pods on one address, or a node's address: nobody named. */
        a = wait_events(both[i], "/api/events?peer_pod=dup-a", 0);
        json_decref(a);
        a = wait_events(both[i], "/api/events?peer_pod=dup-b", 0);
        json_decref(a);
        a = wait_events(both[i], "/api/events?peer_pod=proxy-a", 0);
        json_decref(a);
        a = wait_events(both[i], "/api/events?peer_pod=agent-says-so", 1);
        e = only_event(a);
        check(tu_jint(e, "source_port") == 40012 && tu_jstr(e, "peer_namespace") == NULL,
              "the agent's naming was changed");
        json_decref(a);
    }

    /* /api/flows sees the names too: the edge between the two pods, on either replica. */
    for (int i = 0; i < 2; i++) {
        uint64_t deadline = tu_mono_ms() + WAIT_MS;
        for (;;) {
            json_t *f = api(both[i], "/api/flows?group_by=pod");
            bool ok = has_pod_edge(f, "client-7f9c", "server-0", "node-b");
            char *text = json_dumps(f, JSON_COMPACT);
            json_decref(f);
            if (ok) {
                free(text);
                break;
            }
            check(tu_mono_ms() < deadline, "no client-7f9c -> server-0 edge in %s", text);
            free(text);
            usleep(50000);
        }
    }

    /* Counters: 3 connections + 3 looked-up accepts (the agent-named one is not looked up). */
    stats = api(&r1, "/api/stats");
    json_t *p = json_object_get(stats, "peers");
    check(tu_jint(p, "lookups") == 6 && tu_jint(p, "hits") == 2 && tu_jint(p, "ambiguous") == 2 &&
              tu_jint(p, "host_network") == 2 && tu_jint(p, "stale") == 0,
          "peers counters: lookups %" PRId64 " hits %" PRId64 " ambiguous %" PRId64
          " host_network %" PRId64,
          (int64_t)tu_jint(p, "lookups"), (int64_t)tu_jint(p, "hits"),
          (int64_t)tu_jint(p, "ambiguous"), (int64_t)tu_jint(p, "host_network"));
    check(tu_jint(p, "announcements_sent") >= 2 && tu_jint(p, "announcements_rejected") == 0,
          "announcements");
    json_decref(stats);
    struct tu_http m;
    cr_assert_eq(tu_http_get(r2.port, "/metrics", NULL, &m), 0);
    check(metric(m.body, "ebpf_aggregator_peer_lookups_total{result=\"hit\"}") == 1,
          "replica 2's hit counter (its accept from client-7f9c)");
    check(metric(m.body, "ebpf_aggregator_peer_lookups_total{result=\"ambiguous\"}") == 1,
          "replica 2's ambiguous counter");
    check(metric(m.body, "ebpf_aggregator_peer_entries") == 5,
          "replica 2 holds every pod's address");
    tu_http_free(&m);

    /*
     * 4. IP reuse: client-7f9c is gone and client-new-1 got 10.1.0.5 on
     * node A. Accepts from that address must never name the old pod again;
     * once the grace (1 s) has passed they name the new one.
     */
    add(pub_a, ev(&client_a2, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_a);
    wait_peers(&r2, "pods_received", 2 + 3 + 1);
    uint16_t port = 41000;
    bool unnamed_seen = false, new_named = false;
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (!new_named) {
        check(tu_mono_ms() < deadline, "the new pod was never named");
        add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", port, "10.2.0.7", 8080));
        flush(pub_b);
        char q[128];
        snprintf(q, sizeof(q), "/api/events?node=node-b&type=accept&limit=1");
        json_t *a = api(&r2, "%s", q);
        json_t *e = only_event(a);
        uint64_t wait_until = tu_mono_ms() + WAIT_MS;
        while (e == NULL || tu_jint(e, "source_port") != port) { /* until ingested */
            json_decref(a);
            check(tu_mono_ms() < wait_until, "accept from port %u not ingested", port);
            usleep(20000);
            a = api(&r2, "%s", q);
            e = only_event(a);
        }
        const char *peer = tu_jstr(e, "peer_pod");
        check(peer == NULL || strcmp(peer, "client-new-1") == 0,
              "an accept after the reuse named %s", peer);
        new_named = peer != NULL;
        unnamed_seen |= peer == NULL;
        json_decref(a);
        port++;
        if (!new_named)
            usleep(100000);
    }
    cr_log_info("reuse: %u accepts until the new pod was named (unnamed during grace: %s)",
                port - 41000, unnamed_seen ? "yes" : "no");

    /* The stream names what it sends from the same map (replica 2 streams node B's batches). */
    char stream_log[96];
    pid_t curl = stream_open(&r2, "peer_pod=client-new-1", stream_log, sizeof(stream_log));
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 43999, "10.2.0.7", 8080));
    flush(pub_b);
    uint64_t stream_deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        char *out = tu_read_file(stream_log);
        bool got = out && strstr(out, "\"source_port\":43999") &&
                   strstr(out, "\"peer_pod\":\"client-new-1\"");
        free(out);
        if (got)
            break;
        if (tu_mono_ms() > stream_deadline) {
            tu_stop(curl, 2000);
            tu_dump_file(stream_log, 4000);
            check(false, "the stream never sent the accept named client-new-1");
        }
        usleep(20000);
    }
    tu_stop(curl, 2000);
    unlink(stream_log);
    json_t *a = wait_events(&r1, "/api/events?peer_pod=client-7f9c", 1);
    json_decref(a);
    a = wait_events(&r1, "/api/events?peer_pod=client-new-1",
                    2); /* the loop's last, the stream's */
    json_decref(a);

    remove_logs();
}

/* The peer_pod of the newest event query finds on r once the one from sport is in. */
/*
 * A replica started later (a rolling update, a restart) asks the others for
 * the pods they hold: a node's pod that no batch mentions again, and no
 * announcement repeats for PEER_TTL/4, is named there at once.
 */
Test(e2e_peers, a_replica_started_later_learns_the_pods_the_others_hold)
{
    char id1[32], id2[32];

    nats_up();
    agg_up(&r1, "r1", "ebpf.pa");
    /* Node B's pod, reported while replica 1 runs alone. */
    pub_b = pub_up(&bus_b, "ebpf.pa", "node-b");
    add(pub_b, ev(&server_b, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_b);
    wait_peers(&r1, "entries", 1);

    agg_up(&r2, "r2", "ebpf.pb");
    wait_cluster(id1, id2);
    wait_peers(&r2, "syncs_answered", 1);
    wait_peers(&r2, "pods_received", 1);

    /* Node A's connection to it reaches only replica 2, which names it. */
    pub_a = pub_up(&bus_a, "ebpf.pb", "node-a");
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 40001, "10.2.0.7", 8080));
    flush(pub_a);
    json_t *a = wait_events(&r2, "/api/events?node=node-a&type=connection", 1);
    expect_peer(only_event(a), "server-0", "shop", "server", "StatefulSet", "node-b");
    json_decref(a);
    json_t *stats = api(&r2, "/api/stats");
    check(own_batches(&r2, stats, id2) == 1 && own_batches(&r2, stats, id1) == 1,
          "node A's batch should have reached replica 2 alone");
    json_decref(stats);
    remove_logs();
}

static const char *peer_of_event(struct proc *r, const char *query, uint16_t sport, char *out,
                                 size_t len)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *a = api(r, "%s", query);
        json_t *e = only_event(a);
        if (e && tu_jint(e, "source_port") == sport) {
            const char *peer = tu_jstr(e, "peer_pod");
            snprintf(out, len, "%s", peer ? peer : "");
            json_decref(a);
            return out[0] ? out : NULL;
        }
        json_decref(a);
        check(tu_mono_ms() < deadline, "%s: the event from port %u not ingested", query, sport);
        usleep(20000);
    }
}

/*
 * Node B's accepts from client-7f9c's address 10.1.0.5 (replica 2), from port on, until
 * one is no longer named: the pod's claim ended at ended_ns, so named during the grace
 * (1 s) at most, then never. Returns the next port.
 */
static uint16_t accepts_named_until_grace_ends(uint64_t ended_ns, uint16_t port)
{
    char peer[128];

    for (bool named = true; named; port++) {
        check(tu_now_ns() < ended_ns + 1000000000ull + WAIT_MS * 1000000ull,
              "the deleted pod is still named after the grace");
        add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", port, "10.2.0.7", 8080));
        flush(pub_b);
        named = peer_of_event(&r2, "/api/events?node=node-b&type=accept&limit=1", port, peer,
                              sizeof(peer)) != NULL;
        check(!named || tu_now_ns() < ended_ns + 2000000000ull,
              "accept from port %u named %s well after the grace", port, peer);
        if (named)
            usleep(100000);
    }
    check(tu_now_ns() >= ended_ns + 1000000000ull, "unnamed before the grace ended");
    return port;
}

/*
 * A pod deleted on node A, whose address no other pod has reported: its
 * agent sends the deletion with its next batch (here a batch that carries
 * nothing else); replica 1 ingests it and announces it to replica 2. Both
 * stop naming the address once the grace (1 s) has passed, where before
 * they named the deleted pod for up to PEER_TTL (10 min here).
 */
Test(e2e_peers, a_deleted_pod_is_no_longer_named_on_either_replica)
{
    char id1[32], id2[32], peer[128];

    cluster_up(id1, id2);
    add(pub_a, ev(&client_a, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_a);
    wait_peers(&r2, "pods_received", 1);
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 40000, "10.2.0.7", 8080));
    flush(pub_b);
    check(peer_of_event(&r2, "/api/events?node=node-b&type=accept&limit=1", 40000, peer,
                        sizeof(peer)) &&
              strcmp(peer, "client-7f9c") == 0,
          "the live pod is named");

    uint64_t deleted = tu_now_ns();
    struct peers_pod gone = {.node = intern("node-a"),
                             .namespace = intern("shop"),
                             .pod = intern("client-7f9c"),
                             .uid = intern("uid-client-a"),
                             .workload = intern("client"),
                             .workload_kind = intern("Deployment"),
                             .n_ips = 1,
                             .family = {EVENT_FAMILY_IPV4},
                             .seen_ns = deleted,
                             .gone_ns = deleted};
    cr_assert_eq(inet_pton(AF_INET, "10.1.0.5", gone.ip[0]), 1);
    cr_assert_eq(publisher_add_gone(pub_a, &gone, 1), 1);
    flush(pub_a);
    wait_peers(&r1, "gone", 2); /* replica 1 from the batch, replica 2 from its announcement */

    /* Node B's accepts (replica 2) and node A's connections (replica 1) from and to the
     * address: named during the grace at most, then never. */
    uint16_t port = accepts_named_until_grace_ends(deleted, 40001);
    add(pub_a, ev(&dup_a, EVENT_CONNECTION, "10.9.9.9", port, "10.1.0.5", 80));
    flush(pub_a);
    check(peer_of_event(&r1, "/api/events?node=node-a&type=connection&limit=1", port, peer,
                        sizeof(peer)) == NULL,
          "replica 1 names %s", peer);
    json_t *st = api(&r1, "/api/stats");
    check(jpath_int(st, "peers", "stale") >= 2,
          "lookups of the deleted pod's address count as stale");
    json_decref(st);
    struct tu_http m;
    cr_assert_eq(tu_http_get(r2.port, "/metrics", NULL, &m), 0);
    check(metric(m.body, "ebpf_aggregator_peer_gone_total") == 1, "replica 2's gone counter");
    tu_http_free(&m);
    remove_logs();
}

/*
 * A pod deleted while its node's agent was down: the new agent instance never
 * sees the deletion, but its first pod list (the Ebpf-Pods-Present header,
 * here on a batch that carries nothing else) lacks the pod. Replica 1 ends the
 * pod's claim and announces it; both replicas stop naming the address after
 * the grace, where before they named it for PEER_TTL (10 min here). The
 * listed pod stays named, and so does a pod on another node.
 */
Test(e2e_peers, a_pod_deleted_while_its_agent_was_down_is_no_longer_named)
{
    char id1[32], id2[32], peer[128];

    cluster_up(id1, id2);
    add(pub_a, ev(&client_a, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    add(pub_a, ev(&dup_a, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_a);
    add(pub_b, ev(&server_b, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_b);
    wait_peers(&r2, "pods_received", 3); /* summed: two on replica 2, one on replica 1 */
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 40000, "10.2.0.7", 8080));
    flush(pub_b);
    check(peer_of_event(&r2, "/api/events?node=node-b&type=accept&limit=1", 40000, peer,
                        sizeof(peer)) &&
              strcmp(peer, "client-7f9c") == 0,
          "the live pod is named");

    /* Node A's agent restarts (a new instance); client-7f9c was deleted meanwhile. */
    publisher_free(pub_a);
    bus_close(bus_a);
    pub_a = pub_up(&bus_a, "ebpf.pa", "node-a");
    uint64_t listed = tu_now_ns();
    const char *present[] = {intern("uid-dup-a"), intern("uid-unrelated")};
    cr_assert(publisher_set_present(pub_a, present, 2, listed));
    flush(pub_a);
    wait_peers(&r1, "gone", 2); /* replica 1 from the list, replica 2 from its announcement */

    uint16_t port = accepts_named_until_grace_ends(listed, 40001);
    /* The listed pod (replica 2, from node B) and node B's pod (replica 1, from node A). */
    add(pub_b, ev(&server_b, EVENT_CONNECTION, "10.2.0.7", port, "10.9.9.9", 80));
    flush(pub_b);
    check(peer_of_event(&r2, "/api/events?node=node-b&type=connection&limit=1", port, peer,
                        sizeof(peer)) &&
              strcmp(peer, "dup-a") == 0,
          "the listed pod is no longer named: %s", peer);
    add(pub_a, ev(&dup_a, EVENT_CONNECTION, "10.9.9.9", port, "10.2.0.7", 8080));
    flush(pub_a);
    check(peer_of_event(&r1, "/api/events?node=node-a&type=connection&limit=1", port, peer,
                        sizeof(peer)) &&
              strcmp(peer, "server-0") == 0,
          "node B's pod is no longer named: %s", peer);
    json_t *st = api(&r1, "/api/stats");
    check(jpath_int(st, "peers", "gone") == 2, "only client-7f9c's claim ended, on each replica");
    check(jpath_int(st, "peers", "pod_lists") == 1 &&
              jpath_int(st, "peers", "pod_lists_skipped") == 0,
          "one pod list applied");
    json_decref(st);
    remove_logs();
}

/* ---- Services (Kubernetes mode) ---- */

#define SERVICES_PATH "/api/v1/services"
#define SLICES_PATH   "/apis/discovery.k8s.io/v1/endpointslices"

Test(e2e_peers, cluster_ips_get_peer_service_and_join_their_backend_across_replicas)
{
    char id1[32], id2[32];
    const struct kas_pod server_b_api = {
        .node = server_b.node, .ns = server_b.ns, .name = server_b.name, .uid = server_b.uid};

    /* The API server: Service shop/server with ClusterIP 10.96.0.10:80, backed by server-0. */
    cr_assert_eq(kas_start(&kapi, kas_serve_pods, NULL), 0);
    api_started = true;
    snprintf(api_env, sizeof(api_env), "K8S_API_URL=http://127.0.0.1:%d", kapi.port);
    char *svc = kas_service_json("shop", "server", "500", "10.96.0.10", 80);
    char *slice = kas_slice_json("shop", "server", "501", "10.2.0.7", &server_b_api);
    char *svcs = kas_list_json("ServiceList", "v1", "600", svc);
    char *slices = kas_list_json("EndpointSliceList", "discovery.k8s.io/v1", "600", slice);
    cr_assert_eq(kas_set_list_for(&kapi, SERVICES_PATH, svcs), 0);
    cr_assert_eq(kas_set_list_for(&kapi, SLICES_PATH, slices), 0);
    free(svc);
    free(slice);
    free(svcs);
    free(slices);

    cluster_up(id1, id2);
    /* Both replicas listed both collections (2 LISTs each) and are watching. */
    wait_stat(&r1, "services", "lists", 4);
    check(kas_wait(&kapi, 4, 4, WAIT_MS), "the replicas did not watch Services and EndpointSlices");

    /* A Service created while they watch: shop/api on 10.96.0.20:443. */
    char *api_svc = kas_service_json("shop", "api", "601", "10.96.0.20", 443);
    cr_assert_eq(kas_push_to(&kapi, SERVICES_PATH, "ADDED", 601, api_svc), 0);
    free(api_svc);
    wait_stat(&r1, "services", "services", 4); /* 2 Services on each of the 2 replicas */

    /* Node B reports server-0 so node A's replica can name the pod too. */
    add(pub_b, ev(&server_b, EVENT_EXEC, "0.0.0.0", 0, "0.0.0.0", 0));
    flush(pub_b);
    wait_peers(&r1, "pods_received", 1);

    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 42001, "10.96.0.10", 80));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 42002, "10.96.0.10", 81));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 42003, "10.2.0.7", 8080));
    add(pub_a, ev(&client_a, EVENT_CONNECTION, "10.1.0.5", 42004, "10.96.0.20", 443));
    flush(pub_a);
    /*
     * The backend's accept of the first one, on node B (replica 2): replica 1
     * holds the connection to the ClusterIP until this half reaches it, and
     * then names server-0 as its peer. Nothing accepts the one to shop/api:
     * it is stored unjoined after JOIN_WINDOW (3 s).
     */
    wait_stat(&r1, "joins", "held", 2);
    add(pub_b, ev(&server_b, EVENT_ACCEPT, "10.1.0.5", 42001, "10.2.0.7", 8080));
    flush(pub_b);

    struct proc *both[2] = {&r1, &r2};
    for (int i = 0; i < 2; i++) {
        /* The ClusterIP on its port, and the backend pod directly. */
        json_t *a = wait_events(both[i], "/api/events?peer_service=shop%2Fserver&limit=10", 2);
        json_t *evs = json_object_get(a, "events"), *e;
        size_t k;
        json_array_foreach(evs, k, e)
        {
            json_int_t sport = tu_jint(e, "source_port");
            check(sport == 42001 || sport == 42003, "source port %" PRId64 " named shop/server",
                  (int64_t)sport);
            /* The backend directly, and through the ClusterIP once joined. */
            expect_peer(e, "server-0", "shop", "server", "StatefulSet", "node-b");
        }
        json_decref(a);
        a = wait_events(both[i], "/api/events?peer_service=shop%2Fapi", 1);
        check(tu_jint(only_event(a), "dest_port") == 443, "shop/api on the wrong event");
        check(tu_jstr(only_event(a), "peer_pod") == NULL, "nothing accepted it: no backend named");
        json_decref(a);
    }

    /*
     * The enrichment is in what a replica sends on the wire, as an
     * independent client (npm nats + protobufjs) decodes it: replica 1
     * holds node A's two connections named shop/server (through the
     * ClusterIP, joined, and to the backend directly); replica 2 holds none.
     */
    json_t *ans[2];
    npm_query("peer_service=shop%2Fserver&limit=10", id1, id2, ans);
    json_t *evs = json_object_get(ans[0], "events"), *e;
    size_t k;
    char *dump = json_dumps(ans[0], JSON_COMPACT);
    check(json_array_size(evs) == 2 && strcmp(pbstr(ans[0], "total_count"), "2") == 0 &&
              strcmp(pbstr(ans[0], "error"), "") == 0,
          "replica 1's QueryReply: %s", dump);
    bool via_cluster_ip = false, direct = false;
    json_array_foreach(evs, k, e)
    {
        json_int_t sport = tu_jint(e, "source_port");
        const char *dst = pbstr(e, "dest_addr");
        check(strcmp(pbstr(e, "type"), "EVENT_TYPE_CONNECTION") == 0 &&
                  strcmp(pbstr(e, "node"), "node-a") == 0 &&
                  strcmp(pbstr(e, "k8s_pod_name"), "client-7f9c") == 0 &&
                  strcmp(pbstr(e, "source_addr"), "10.1.0.5") == 0,
              "replica 1 sent a wrong event: %s", dump);
        via_cluster_ip |=
            sport == 42001 && strcmp(dst, "10.96.0.10") == 0 && tu_jint(e, "dest_port") == 80;
        direct |= sport == 42003 && strcmp(dst, "10.2.0.7") == 0 && tu_jint(e, "dest_port") == 8080;
        check(strcmp(pbstr(e, "peer_pod"), "server-0") == 0 &&
                  strcmp(pbstr(e, "peer_namespace"), "shop") == 0 &&
                  strcmp(pbstr(e, "peer_workload"), "server") == 0 &&
                  strcmp(pbstr(e, "peer_workload_kind"), "StatefulSet") == 0 &&
                  strcmp(pbstr(e, "peer_node"), "node-b") == 0 &&
                  strcmp(pbstr(e, "peer_service"), "shop/server") == 0,
              "replica 1's peer fields: %s", dump);
    }
    check(via_cluster_ip && direct, "replica 1's events: %s", dump);
    free(dump);
    dump = json_dumps(ans[1], JSON_COMPACT);
    check(json_array_size(json_object_get(ans[1], "events")) == 0 &&
              strcmp(pbstr(ans[1], "total_count"), "0") == 0,
          "replica 2's QueryReply: %s", dump);
    free(dump);
    json_decref(ans[0]);
    json_decref(ans[1]);

    json_t *stats = api(&r2, "/api/stats");
    json_t *sv = json_object_get(stats, "services");
    /* Node A's 4 connections and node B's accept (from a pod that backs nothing). */
    check(tu_jint(sv, "lookups") == 5 && tu_jint(sv, "cluster_ip") == 2 &&
              tu_jint(sv, "backend") == 1 && tu_jint(sv, "misses") == 2 &&
              tu_jint(sv, "api_errors") == 0,
          "services counters: lookups %" PRId64 " cluster_ip %" PRId64 " backend %" PRId64,
          (int64_t)tu_jint(sv, "lookups"), (int64_t)tu_jint(sv, "cluster_ip"),
          (int64_t)tu_jint(sv, "backend"));
    json_t *jn = json_object_get(stats, "joins");
    check(tu_jint(jn, "joined") == 1 &&
              tu_jint(json_object_get(jn, "unjoined"), "no_server_half") == 1 &&
              tu_jint(jn, "held") == 0 && tu_jint(jn, "halves_sent") == 1 &&
              tu_jint(jn, "halves_received") == 1,
          "joins: %s", json_dumps(jn, JSON_COMPACT));
    json_decref(stats);
    remove_logs();
}

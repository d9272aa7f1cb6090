/*
 * End to end over NATS: a real nats-server on a free loopback port, real
 * bin/ebpf-agent processes publishing real kernel events, real
 * bin/ebpf-aggregator replicas in one queue group, and an independent reader
 * of the bus written with the npm `nats` and `protobufjs` packages
 * (tests/js/sub.mjs). Everything is started here and stopped by PID.
 * Tests that run an agent need root (eBPF); they say so when skipped.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "events.pb-c.h"
#include "pb_craft.h"
#include "testutil.h"

#define MAX_PROCS 16
#define NODE_A    "ip-10-0-1-5.ec2.internal"
#define SUBJ_A    "ebpf.events.ip-10-0-1-5_ec2_internal"
#define NODE_B    "e2e-node-b"

/* A process this suite started; stopped by PID in fini. */
struct proc {
    pid_t pid;
    int port; /* HTTP port, 0 for none */
    char name[64];
    char log[256];
};

static struct proc procs[MAX_PROCS];
static size_t nprocs;
static char workdir[96];

static pid_t nats_pid;
static int nats_port;
static char nats_url[64];
static char nats_log[160];
static const char *const *nats_args; /* kept for restarts on the same port */

/* "Authorization: Bearer ..." for API requests, or NULL. */
static const char *api_header;

/* ---- logs and failure reporting ---------------------------------------- */

static void dump_log(const char *name, const char *path)
{
    char *s = tu_read_file(path);
    if (!s)
        return;
    size_t len = strlen(s);
    const char *tail = len > 3000 ? s + len - 3000 : s;
    cr_log_error("---- %s (%s) ----\n%s", name, path, tail);
    free(s);
}

static void dump_logs(void)
{
    dump_log("nats-server", nats_log);
    for (size_t i = 0; i < nprocs; i++)
        dump_log(procs[i].name, procs[i].log);
}

/* Fails the test with every process's log attached. */
#define check(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dump_logs();                                                                           \
            cr_assert_fail(__VA_ARGS__);                                                           \
        }                                                                                          \
    } while (0)

/* ---- suite setup -------------------------------------------------------- */

static void suite_init(void)
{
    snprintf(workdir, sizeof(workdir), "/tmp/ebpf-e2e-cluster-%d", getpid());
    mkdir(workdir, 0755);
    snprintf(nats_log, sizeof(nats_log), "%s/nats-server.log", workdir);
    nprocs = 0;
    nats_pid = 0;
    api_header = NULL;
}

static void suite_fini(void)
{
    /* Clients first, then the server they talk to. */
    for (size_t i = nprocs; i-- > 0;) {
        if (procs[i].pid > 0)
            tu_stop(procs[i].pid, 10000);
        procs[i].pid = 0;
    }
    if (nats_pid > 0)
        tu_stop(nats_pid, 5000);
    nats_pid = 0;
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", workdir);
    if (system(cmd) != 0)
        cr_log_warn("could not remove %s", workdir);
}

TestSuite(e2e_cluster, .init = suite_init, .fini = suite_fini, .timeout = 90);

static void need_root(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: the agent loads eBPF programs");
}

static struct proc *proc_new(const char *fmt, ...)
{
    cr_assert_lt(nprocs, MAX_PROCS);
    struct proc *p = &procs[nprocs++];
    memset(p, 0, sizeof(*p));
    va_list ap;
    va_start(ap, fmt);
    char name[sizeof(p->name)];
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    memcpy(p->name, name, sizeof(name));
    /* Subjects contain '>' and '*': keep the file name plain. */
    for (char *c = name; *c; c++)
        if (*c == '>' || *c == '*' || *c == '/')
            *c = '_';
    snprintf(p->log, sizeof(p->log), "%s/%zu-%s.log", workdir, nprocs, name);
    return p;
}

static void proc_kill(struct proc *p, int sig)
{
    if (p->pid <= 0)
        return;
    if (sig == SIGKILL) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    } else {
        int st = tu_stop(p->pid, 10000);
        cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s did not exit cleanly (status %d)",
                  p->name, st);
    }
    p->pid = 0;
}

/* ---- nats-server -------------------------------------------------------- */

static void nats_up(const char *const extra[])
{
    nats_args = extra;
    nats_port = tu_free_port();
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    nats_pid = tu_nats_start(nats_port, extra, nats_log);
    check(nats_pid > 0, "nats-server did not start on port %d", nats_port);
}

static void nats_down(void)
{
    tu_stop(nats_pid, 5000);
    nats_pid = 0;
}

/* Same port, same arguments: clients must find it again by themselves. */
static void nats_restart(void)
{
    nats_pid = tu_nats_start(nats_port, nats_args, nats_log);
    check(nats_pid > 0, "nats-server did not restart on port %d", nats_port);
}

/* ---- agents and aggregators --------------------------------------------- */

static struct proc *agent_up(const char *node, const char *const env[])
{
    need_root();
    struct proc *p = proc_new("agent-%s", node);
    p->port = tu_free_port();
    char bin[256], listen[32];
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-agent"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
    char *argv[] = {bin,          "--listen-addr", listen,   "--node-name",
                    (char *)node, "--nats-url",    nats_url, NULL};
    p->pid = tu_spawn(argv, (char *const *)env, p->log);
    check(tu_wait_http(p->port, "/ready", 200, 30000), "agent %s not ready", node);
    return p;
}

/* An aggregator serving on port (0: a free one). */
static struct proc *agg_up_on(const char *name, const char *const env[], bool wait_ready, int port)
{
    struct proc *p = proc_new("aggregator-%s", name);
    p->port = port ? port : tu_free_port();
    char bin[256], listen[32];
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
    char *argv[] = {bin, "--listen-addr", listen, "--nats-url", nats_url, NULL};
    p->pid = tu_spawn(argv, (char *const *)env, p->log);
    check(tu_wait_http(p->port, "/health", 200, 15000), "aggregator %s not serving", name);
    if (wait_ready)
        check(tu_wait_http(p->port, "/ready", 200, 15000), "aggregator %s not ready", name);
    return p;
}

static struct proc *agg_up(const char *name, const char *const env[], bool wait_ready)
{
    return agg_up_on(name, env, wait_ready, 0);
}

/* ---- the independent subscriber (npm nats + protobufjs) ----------------- */

static const char *node_bin(void)
{
    static const char *const paths[] = {"/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

static struct proc *sub_up(const char *subject, int timeout_ms, const char *user, const char *pass,
                           const char *raw_dir)
{
    const char *node = node_bin();
    cr_assert(node, "node (Node.js) is not installed: run make deps");
    char script[256], modules[256], tmo[16];
    snprintf(script, sizeof(script), "%s", tu_repo_path("tests/js/sub.mjs"));
    snprintf(modules, sizeof(modules), "%s", tu_repo_path("tests/js/node_modules/nats"));
    cr_assert(access(modules, F_OK) == 0, "tests/js/node_modules is missing: run make deps");
    snprintf(tmo, sizeof(tmo), "%d", timeout_ms);
    struct proc *p = proc_new("sub-%s", subject);
    char *argv[16] = {(char *)node, script,          "--server",  nats_url,
                      "--subject",  (char *)subject, "--timeout", tmo};
    size_t n = 8;
    if (user) {
        argv[n++] = "--user";
        argv[n++] = (char *)user;
        argv[n++] = "--pass";
        argv[n++] = (char *)pass;
    }
    if (raw_dir) {
        mkdir(raw_dir, 0755);
        argv[n++] = "--raw";
        argv[n++] = (char *)raw_dir;
    }
    argv[n] = NULL;
    p->pid = tu_spawn(argv, NULL, p->log);
    uint64_t deadline = tu_mono_ms() + 20000;
    for (;;) {
        char *s = tu_read_file(p->log);
        bool ready = s && strstr(s, "{\"ready\":true}");
        free(s);
        if (ready)
            break;
        check(tu_mono_ms() < deadline, "npm subscriber did not subscribe to %s", subject);
        usleep(20000);
    }
    return p;
}

/* Every message line the subscriber printed so far (an array, new reference). */
static json_t *sub_msgs(struct proc *p)
{
    json_t *arr = json_array();
    char *s = tu_read_file(p->log);
    for (char *line = s ? strtok(s, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_is_object(j) && json_object_get(j, "subject"))
            json_array_append(arr, j);
        json_decref(j);
    }
    free(s);
    return arr;
}

/* ---- JSON access -------------------------------------------------------- */

/* Dotted path lookup: "bus.events_sent". */
/* tu_jpath_int() that also reads an integer sent as a string. */
static int64_t jint(json_t *o, const char *path)
{
    json_t *v = tu_jpath(o, path);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* GET that must answer 200 with JSON. */
static json_t *api(struct proc *p, const char *fmt, ...)
{
    char path[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    int status = 0;
    json_t *j = tu_get_json_hdr(p->port, path, api_header, &status);
    check(j && status == 200, "%s: GET %s -> %d %s", p->name, path, status, tu_jdump(j));
    return j;
}

/* The per-node entry of a stats/nodes response: "nodes" keyed by name, or an array. */
static json_t *node_entry(json_t *resp, const char *node)
{
    json_t *nodes = json_object_get(resp, "nodes");
    if (json_is_object(nodes))
        return json_object_get(nodes, node);
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        if (strcmp(tu_jpath_str(n, "node"), node) == 0 ||
            strcmp(tu_jpath_str(n, "name"), node) == 0)
            return n;
    }
    return NULL;
}

/* Polls an events query until it returns exactly want events (count). */
static json_t *wait_count(struct proc *p, const char *query, int want, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        json_t *r = api(p, "%s", query);
        if (jint(r, "count") == want)
            return r;
        if (tu_mono_ms() > deadline) {
            dump_logs();
            cr_assert_fail("%s: %s gave %" PRId64 " events, want %d: %s", p->name, query,
                           jint(r, "count"), want, tu_jdump(r));
        }
        json_decref(r);
        usleep(50000);
    }
}

/* "id,id,id" of a response's events, in order. */
static void ids_of(json_t *resp, char *out, size_t len)
{
    size_t i, off = 0;
    json_t *ev;
    out[0] = '\0';
    json_array_foreach(json_object_get(resp, "events"), i, ev)
    {
        off +=
            (size_t)snprintf(out + off, off < len ? len - off : 0, "%s,", tu_jpath_str(ev, "id"));
    }
}

/* ---- real activity ------------------------------------------------------ */

static char marker_path[160];
static char marker_name[16];

/* A symlink to /bin/true whose name becomes the exec'd task's comm. */
static void marker_init(char tag)
{
    snprintf(marker_name, sizeof(marker_name), "m%05d%c", getpid() % 100000, tag);
    tu_marker_make(workdir, marker_name, marker_path, sizeof(marker_path));
}

/* Runs the marker program once; returns the child's pid. */
static pid_t run_marker(void)
{
    return tu_marker_run(marker_path, marker_name);
}

static json_t *api(struct proc *p, const char *fmt, ...);
static int64_t jint(json_t *o, const char *path);

/* Runs the marker until the agent's /api/stats field (e.g. bus.batches_sent) is at least want
 * (10 s at most); returns its value then. */
static int64_t markers_until(struct proc *agent, const char *field, int64_t want)
{
    int64_t v = 0;
    for (uint64_t dl = tu_mono_ms() + 10000; v < want; usleep(50000)) {
        check(tu_mono_ms() < dl, "%s: %s is %" PRId64 ", want %" PRId64, agent->name, field, v,
              want);
        run_marker();
        json_t *st = api(agent, "/api/stats");
        v = jint(st, field);
        json_decref(st);
    }
    return v;
}

/* ---- a Server-Sent Events reader ---------------------------------------- */

struct sse {
    int fd;
    char part[65536]; /* the incomplete last line */
    size_t len;
};

static void sse_open_hdr(struct sse *s, int port, const char *path, const char *header);

static void sse_open(struct sse *s, int port, const char *path)
{
    sse_open_hdr(s, port, path, NULL);
}

/* The same with one more request header line ("Name: value"), or none. */
static void sse_open_hdr(struct sse *s, int port, const char *path, const char *header)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->len = 0;
    cr_assert_eq(connect(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s\r\n", path,
                     header ? header : "", header ? "\r\n" : "");
    cr_assert_eq(write(s->fd, req, (size_t)n), n);
    struct timeval tv = {.tv_usec = 100000};
    setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Reads for up to ~100 ms; returns how many complete lines starting with prefix contained
 * needle. */
static int sse_pump_lines(struct sse *s, const char *prefix, const char *needle)
{
    int found = 0;
    ssize_t r = read(s->fd, s->part + s->len, sizeof(s->part) - s->len - 1);
    if (r <= 0)
        return 0;
    s->len += (size_t)r;
    s->part[s->len] = '\0';
    char *start = s->part, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = '\0';
        if (strncmp(start, prefix, strlen(prefix)) == 0 && strstr(start, needle))
            found++;
        start = nl + 1;
    }
    s->len = strlen(start);
    memmove(s->part, start, s->len + 1);
    if (s->len > sizeof(s->part) / 2) /* a runaway line: drop it */
        s->len = 0;
    return found;
}

/* Reads for up to ~100 ms; returns how many complete data lines contained needle. */
static int sse_pump(struct sse *s, const char *needle)
{
    return sse_pump_lines(s, "data:", needle);
}

/* Waits for a comment line (": ...") holding needle. */
static bool sse_wait_comment(struct sse *s, const char *needle, int timeout_ms)
{
    for (uint64_t dl = tu_mono_ms() + (uint64_t)timeout_ms; tu_mono_ms() < dl;)
        if (sse_pump_lines(s, ":", needle) > 0)
            return true;
    return false;
}

/* ---- the cluster: two nodes, two replicas ------------------------------- */

/* The same query against both replicas gives the same events in the same order. */
static json_t *same_answer(struct proc *r1, struct proc *r2, const char *query, int want)
{
    json_t *a = wait_count(r1, query, want, 15000);
    json_t *b = wait_count(r2, query, want, 15000);
    static char ia[65536], ib[65536];
    ids_of(a, ia, sizeof(ia));
    ids_of(b, ib, sizeof(ib));
    check(strcmp(ia, ib) == 0, "%s differs between replicas:\n%s\n%s", query, ia, ib);
    check(jint(a, "total_count") == jint(b, "total_count"),
          "%s: total_count %" PRId64 " vs %" PRId64, query, jint(a, "total_count"),
          jint(b, "total_count"));
    check(jint(a, "replicas.answered") == 2 && jint(a, "replicas.expected") == 2, "%s: replicas %s",
          query, tu_jdump(json_object_get(a, "replicas")));
    check(jint(b, "replicas.answered") == 2 && jint(b, "replicas.expected") == 2, "%s: replicas %s",
          query, tu_jdump(json_object_get(b, "replicas")));
    json_decref(b);
    return a;
}

/* Waits until both replicas count each other (heartbeats). */
static void wait_cluster(struct proc *r, int expected)
{
    uint64_t deadline = tu_mono_ms() + 10000;
    for (;;) {
        json_t *j = api(r, "/api/events?limit=1");
        int64_t e = jint(j, "replicas.expected"), a = jint(j, "replicas.answered");
        json_decref(j);
        if (e == expected && a == expected)
            return;
        check(tu_mono_ms() < deadline,
              "%s: replicas answered %" PRId64 " expected %" PRId64 ", want %d", r->name, a, e,
              expected);
        usleep(100000);
    }
}

Test(e2e_cluster, either_replica_answers_for_both_nodes)
{
    need_root();
    nats_up(NULL);
    marker_init('c');
    struct proc *sub = sub_up("ebpf.events.>", 80000, NULL, NULL, NULL);
    struct proc *r1 = agg_up("r1", NULL, true);
    struct proc *r2 = agg_up("r2", NULL, true);
    wait_cluster(r1, 2);
    wait_cluster(r2, 2);
    const char *const env[] = {"FLUSH_INTERVAL=100ms", NULL};
    struct proc *a = agent_up(NODE_A, env);
    struct proc *b = agent_up(NODE_B, env);

    /*
     * A stream on r1 must follow every event, not only r1's share of the
     * batches: probe runs until the stream carries one, then the markers.
     */
    char saved_path[sizeof(marker_path)], saved_name[sizeof(marker_name)];
    snprintf(saved_path, sizeof(saved_path), "%s", marker_path);
    snprintf(saved_name, sizeof(saved_name), "%s", marker_name);
    marker_init('p');
    struct sse stream;
    sse_open(&stream, r1->port, "/api/events/stream?type=exec");
    char needle[64];
    snprintf(needle, sizeof(needle), "\"command\":\"%s\"", marker_name);
    for (uint64_t dl = tu_mono_ms() + 10000;;) {
        run_marker();
        if (sse_pump(&stream, needle) > 0)
            break;
        check(tu_mono_ms() < dl, "the aggregator's event stream carried nothing");
    }
    snprintf(marker_path, sizeof(marker_path), "%s", saved_path);
    snprintf(marker_name, sizeof(marker_name), "%s", saved_name);

    /* Six marker runs; both agents see every one (same kernel) and report it as their node. */
    pid_t pids[6];
    uint64_t t[7];
    for (int i = 0; i < 6; i++) {
        t[i] = tu_now_ns();
        pids[i] = run_marker();
        tu_tcp_roundtrip();
        usleep(20000); /* keeps since/until bounds clear of clock conversion jitter */
    }
    t[6] = tu_now_ns();

    char q[512];
    snprintf(q, sizeof(q), "/api/events?type=exec&command=%s", marker_name);
    json_t *r = same_answer(r1, r2, q, 12);

    /* The stream saw all 12 marker execs, whichever replica ingested their batches. */
    snprintf(needle, sizeof(needle), "\"command\":\"%s\"", marker_name);
    int streamed = 0;
    for (uint64_t dl = tu_mono_ms() + 5000; streamed < 12 && tu_mono_ms() < dl;)
        streamed += sse_pump(&stream, needle);
    close(stream.fd);
    cr_expect_eq(streamed, 12, "r1's stream carried %d of 12 marker execs", streamed);
    {
        /*
         * ... and both replicas do ingest a share (else the check above proves
         * little). The queue group picks a replica per batch at random, so a
         * few batches may all land on one: make more activity until both have
         * some.
         */
        bool both = false;
        json_t *st = NULL;
        for (uint64_t dl = tu_mono_ms() + 15000; !both && tu_mono_ms() < dl;) {
            json_decref(st);
            st = api(r1, "/api/stats");
            size_t k;
            json_t *rep;
            int with_batches = 0;
            json_array_foreach(tu_jpath(st, "replicas.list"), k, rep) with_batches +=
                jint(rep, "batches") > 0;
            both = with_batches == 2;
            if (!both) {
                tu_tcp_roundtrip();
                usleep(100000);
            }
        }
        cr_expect(both, "a replica ingested nothing: %s", tu_jdump(tu_jpath(st, "replicas")));
        cr_expect_eq(json_array_size(tu_jpath(st, "replicas.list")), 2, "%s",
                     tu_jdump(tu_jpath(st, "replicas")));
        json_decref(st);
    }
    int per_node[2] = {0, 0};
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        cr_expect_str_eq(tu_jpath_str(ev, "type"), "exec");
        cr_expect_str_eq(tu_jpath_str(ev, "command"), marker_name);
        per_node[0] += strcmp(tu_jpath_str(ev, "node"), NODE_A) == 0;
        per_node[1] += strcmp(tu_jpath_str(ev, "node"), NODE_B) == 0;
    }
    cr_expect_eq(per_node[0], 6, "events of %s: %d", NODE_A, per_node[0]);
    cr_expect_eq(per_node[1], 6, "events of %s: %d", NODE_B, per_node[1]);
    json_decref(r);

    /* type: exec and exit of the markers (an exit is reported with the same comm). */
    snprintf(q, sizeof(q), "/api/events?type=exec,exit&command=%s", marker_name);
    json_decref(same_answer(r1, r2, q, 24));

    /* node: only that node's events. */
    snprintf(q, sizeof(q), "/api/events?node=%s&command=%s", NODE_A, marker_name);
    r = same_answer(r1, r2, q, 12);
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        cr_expect_str_eq(tu_jpath_str(ev, "node"), NODE_A);
    }
    json_decref(r);

    /* pid: one child, exec and exit, from both nodes. */
    snprintf(q, sizeof(q), "/api/events?pid=%d", pids[2]);
    r = same_answer(r1, r2, q, 4);
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        cr_expect_eq(jint(ev, "pid"), pids[2]);
    }
    json_decref(r);

    /* since/until: markers 2 and 3 only (epoch ns and RFC 3339 both accepted). */
    snprintf(q, sizeof(q), "/api/events?type=exec&command=%s&since=%" PRIu64 "&until=%" PRIu64,
             marker_name, t[2], t[4] - 1);
    r = same_answer(r1, r2, q, 4);
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        int64_t pid = jint(ev, "pid");
        cr_expect(pid == pids[2] || pid == pids[3], "pid %" PRId64 " outside since/until", pid);
    }
    json_decref(r);

    /* Connections of this test process, seen on both nodes. */
    snprintf(q, sizeof(q), "/api/events?type=connection&pid=%d&limit=1000", getpid());
    r = api(r1, "%s", q);
    int conns[2] = {0, 0};
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        conns[0] += strcmp(tu_jpath_str(ev, "node"), NODE_A) == 0;
        conns[1] += strcmp(tu_jpath_str(ev, "node"), NODE_B) == 0;
    }
    cr_expect(conns[0] >= 1 && conns[1] >= 1, "connections per node: %d %d", conns[0], conns[1]);
    json_decref(r);

    /* Cursor paging across replicas: odd pages from r1, even pages from r2. */
    snprintf(q, sizeof(q), "/api/events?type=exec,exit&command=%s&limit=100", marker_name);
    json_t *all = same_answer(r1, r2, q, 24);
    static char want_ids[8192], got_ids[8192];
    ids_of(all, want_ids, sizeof(want_ids));
    json_decref(all);
    got_ids[0] = '\0';
    char cursor[256] = "";
    for (int page = 0; page < 10; page++) {
        struct proc *rep = page % 2 ? r2 : r1;
        if (page == 0)
            r = api(rep, "/api/events?type=exec,exit&command=%s&limit=5", marker_name);
        else
            r = api(rep, "/api/events?type=exec,exit&command=%s&limit=5&cursor=%s", marker_name,
                    cursor);
        char ids[1024];
        ids_of(r, ids, sizeof(ids));
        strncat(got_ids, ids, sizeof(got_ids) - strlen(got_ids) - 1);
        json_t *next = json_object_get(r, "next_cursor");
        cr_assert(json_is_string(next) || json_is_null(next), "next_cursor: %s", tu_jdump(r));
        if (json_is_null(next)) {
            cr_expect_eq(page, 4, "24 events in pages of 5 end on page 5, not %d", page + 1);
            json_decref(r);
            break;
        }
        cr_expect_eq(jint(r, "count"), 5);
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        json_decref(r);
    }
    cr_expect_str_eq(got_ids, want_ids, "paging across replicas");

    /* Per-node counts: what the agents sent == what the bus carried == what the cluster has. */
    json_t *sa = api(a, "/api/stats"), *sb = api(b, "/api/stats");
    int64_t sent_a = jint(sa, "bus.events_sent"), sent_b = jint(sb, "bus.events_sent");
    cr_expect(sent_a > 0 && sent_b > 0, "agents report events sent: %s / %s", tu_jdump(sa),
              tu_jdump(sb));
    json_decref(sa);
    json_decref(sb);
    proc_kill(a, SIGTERM); /* flushes its last batch */
    proc_kill(b, SIGTERM);

    /* The independent subscriber counts every event per node (batch.node = real name). */
    int64_t bus_events[2] = {0, 0}, bus_msgs[2] = {0, 0}, prev = -1;
    uint64_t deadline = tu_mono_ms() + 15000;
    json_t *s1 = NULL, *s2 = NULL;
    for (;;) {
        json_t *msgs = sub_msgs(sub);
        bus_events[0] = bus_events[1] = bus_msgs[0] = bus_msgs[1] = 0;
        json_t *m;
        json_array_foreach(msgs, i, m)
        {
            int k = strcmp(tu_jpath_str(m, "batch.node"), NODE_A) == 0   ? 0
                    : strcmp(tu_jpath_str(m, "batch.node"), NODE_B) == 0 ? 1
                                                                         : -1;
            cr_expect(k >= 0, "batch from an unknown node: %s", tu_jdump(m));
            if (k < 0)
                continue;
            bus_msgs[k]++;
            bus_events[k] += (int64_t)json_array_size(tu_jpath(m, "batch.events"));
        }
        json_decref(msgs);
        s1 = api(r1, "/api/stats");
        s2 = api(r2, "/api/stats");
        json_t *na = node_entry(s1, NODE_A), *nb = node_entry(s1, NODE_B);
        bool same = jint(na, "events") == bus_events[0] && jint(nb, "events") == bus_events[1] &&
                    jint(na, "batches") == bus_msgs[0] && jint(nb, "batches") == bus_msgs[1];
        if (same && prev == bus_events[0] + bus_events[1])
            break;
        prev = same ? bus_events[0] + bus_events[1] : -1;
        if (tu_mono_ms() > deadline) {
            dump_logs();
            cr_assert_fail("per-node counts never matched the bus: bus events %" PRId64 "/%" PRId64
                           " batches %" PRId64 "/%" PRId64 "; aggregator %s",
                           bus_events[0], bus_events[1], bus_msgs[0], bus_msgs[1],
                           tu_jdump(json_object_get(s1, "nodes")));
        }
        json_decref(s1);
        json_decref(s2);
        usleep(200000);
    }
    cr_log_info("bus per node: %" PRId64 "/%" PRId64 " events in %" PRId64 "/%" PRId64
                " batches; agents had reported %" PRId64 "/%" PRId64 " sent",
                bus_events[0], bus_events[1], bus_msgs[0], bus_msgs[1], sent_a, sent_b);
    /* The agents' last reading came before their final flush. */
    cr_expect(bus_events[0] >= sent_a, "%s: bus %" PRId64 " < sent %" PRId64, NODE_A, bus_events[0],
              sent_a);
    cr_expect(bus_events[1] >= sent_b, "%s: bus %" PRId64 " < sent %" PRId64, NODE_B, bus_events[1],
              sent_b);
    const char *nodes[2] = {NODE_A, NODE_B};
    for (int k = 0; k < 2; k++) {
        json_t *n1 = node_entry(s1, nodes[k]), *n2 = node_entry(s2, nodes[k]);
        cr_expect_eq(jint(n1, "lost_batches"), 0, "%s lost batches: %s", nodes[k], tu_jdump(n1));
        cr_expect_eq(jint(n1, "events"), jint(n2, "events"), "replicas disagree on %s: %s vs %s",
                     nodes[k], tu_jdump(n1), tu_jdump(n2));
        cr_expect_eq(jint(n1, "batches"), jint(n2, "batches"));
    }
    json_decref(s1);
    json_decref(s2);

    /* /api/nodes lists both, from either replica. */
    json_t *n = api(r2, "/api/nodes");
    cr_expect(node_entry(n, NODE_A) && node_entry(n, NODE_B), "/api/nodes: %s", tu_jdump(n));
    cr_expect_str_eq(tu_jpath_str(node_entry(n, NODE_A), "status"), "active");
    json_decref(n);
}

/*
 * A node with nothing to report stays active: its agent sends an empty batch every
 * HEARTBEAT_INTERVAL. A stopped one goes stale after STALE_AFTER. The agent captures an
 * empty cgroup, so it has no events at all.
 */
Test(e2e_cluster, an_idle_node_stays_active_and_a_stopped_one_goes_stale)
{
    need_root();
    char root[256], cg[512], cg_env[600];
    cr_assert_eq(cgroup_v2_root(root, sizeof(root)), 0, "no cgroup v2 mount");
    snprintf(cg, sizeof(cg), "%s/ebpfmon-idle-%d", root, getpid());
    cr_assert(mkdir(cg, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", cg, strerror(errno));
    snprintf(cg_env, sizeof(cg_env), "CAPTURE_CGROUP=ebpfmon-idle-%d", getpid());
    nats_up(NULL);
    const char *agg_env[] = {"STALE_AFTER=2s", NULL};
    struct proc *r = agg_up("r1", agg_env, true);
    const char *agent_env[] = {cg_env, "HEARTBEAT_INTERVAL=200ms", NULL};
    struct proc *a = agent_up("e2e-idle", agent_env);

    /* Seen from its first heartbeat on, and active for several times STALE_AFTER. */
    uint64_t seen = 0, end = tu_mono_ms() + 15000;
    for (;;) {
        json_t *n = api(r, "/api/nodes");
        json_t *e = node_entry(n, "e2e-idle");
        if (e && !seen)
            seen = tu_mono_ms();
        if (e)
            cr_assert_str_eq(tu_jpath_str(e, "status"), "active", "an idle node: %s", tu_jdump(n));
        json_decref(n);
        if (seen && tu_mono_ms() - seen > 5000)
            break;
        cr_assert_lt(tu_mono_ms(), end, "the idle node never appeared in /api/nodes");
        usleep(100000);
    }
    json_t *s = api(a, "/api/stats");
    cr_assert_geq(jint(s, "bus.heartbeats"), 10, "%s", tu_jdump(s));
    cr_assert_eq(jint(s, "bus.events_sent"), 0, "the agent had events: %s", tu_jdump(s));
    json_decref(s);

    /* Stopped, it goes stale. */
    cr_assert_eq(kill(a->pid, SIGSTOP), 0);
    end = tu_mono_ms() + 10000;
    for (bool stale = false; !stale;) {
        json_t *n = api(r, "/api/nodes");
        stale = strcmp(tu_jpath_str(node_entry(n, "e2e-idle"), "status"), "stale") == 0;
        json_decref(n);
        cr_assert_lt(tu_mono_ms(), end, "a stopped agent's node is still active");
        usleep(100000);
    }
    kill(a->pid, SIGCONT);
    proc_kill(a, SIGTERM);
    proc_kill(r, SIGTERM);
    rmdir(cg);
}

static void node_counts(struct proc *r, const char *node, int64_t *batches, int64_t *lost,
                        int64_t *events);

/* Waits until the agent's bus.listener is want. */
static void wait_listener(struct proc *a, bool want)
{
    for (uint64_t end = tu_mono_ms() + 15000;; usleep(50000)) {
        json_t *s = api(a, "/api/stats");
        bool ok = json_is_boolean(tu_jpath(s, "bus.listener")) &&
                  json_is_true(tu_jpath(s, "bus.listener")) == want;
        if (ok || tu_mono_ms() > end) {
            check(ok, "%s: bus.listener is not %s: %s", a->name, want ? "true" : "false",
                  tu_jdump(tu_jpath(s, "bus")));
            json_decref(s);
            return;
        }
        json_decref(s);
    }
}

/*
 * A lone aggregator that restarts: what the agent captured meanwhile reached
 * no subscriber, which core NATS drops without a word. The server's "no
 * responders" brings each such batch back to the agent, which holds them and
 * sends them once the aggregator is back: every event arrives, none is lost.
 */
Test(e2e_cluster, a_lone_aggregator_restart_loses_nothing)
{
    need_root();
    nats_up(NULL);
    marker_init('L');
    struct proc *r = agg_up("r1", NULL, true);
    const char *agent_env[] = {"FLUSH_INTERVAL=50ms", NULL};
    struct proc *a = agent_up("e2e-lone", agent_env);
    char q[256];

    pid_t before = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-lone", before);
    json_decref(wait_count(r, q, 1, 15000));
    wait_listener(a, true);

    proc_kill(r, SIGTERM);
    pid_t down[5];
    for (int i = 0; i < 5; i++)
        down[i] = run_marker();
    wait_listener(a, false);
    json_t *s = api(a, "/api/stats");
    cr_assert_geq(jint(s, "bus.batches_unheard"), 1, "%s", tu_jdump(tu_jpath(s, "bus")));
    cr_assert_eq(jint(s, "bus.agent_drops"), 0, "%s", tu_jdump(tu_jpath(s, "bus")));
    json_decref(s);

    r = agg_up("r1-again", NULL, true);
    for (int i = 0; i < 5; i++) {
        snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-lone", down[i]);
        json_decref(wait_count(r, q, 1, 15000));
    }
    wait_listener(a, true);
    int64_t batches, lost;
    node_counts(r, "e2e-lone", &batches, &lost, NULL);
    cr_assert_gt(batches, 0);
    cr_assert_eq(lost, 0, "the restarted aggregator counted lost batches");
    s = api(a, "/api/stats");
    cr_assert_eq(jint(s, "bus.agent_drops"), 0, "%s", tu_jdump(tu_jpath(s, "bus")));
    json_decref(s);
    proc_kill(a, SIGTERM);
    proc_kill(r, SIGTERM);
}

/* ---- batching, observed on the bus -------------------------------------- */

Test(e2e_cluster, batch_size_governs_messages_and_npm_client_decodes_them)
{
    need_root();
    nats_up(NULL);
    marker_init('b');
    char raw[192];
    snprintf(raw, sizeof(raw), "%s/raw", workdir);
    struct proc *sub = sub_up(SUBJ_A, 60000, NULL, NULL, raw);
    const char *const env[] = {"BATCH_SIZE=5", "FLUSH_INTERVAL=1h", "EVENT_TYPES=exec", NULL};
    struct proc *a = agent_up(NODE_A, env);
    for (int i = 0; i < 20; i++)
        run_marker();

    /* 20 marker execs (and whatever else ran) fill at least 4 batches of exactly 5. */
    json_t *msgs = NULL;
    uint64_t deadline = tu_mono_ms() + 15000;
    for (;;) {
        msgs = sub_msgs(sub);
        if (json_array_size(msgs) >= 4)
            break;
        check(tu_mono_ms() < deadline, "npm subscriber got %zu messages on %s",
              json_array_size(msgs), SUBJ_A);
        json_decref(msgs);
        usleep(50000);
    }
    json_t *st = api(a, "/api/stats");
    size_t i;
    json_t *m;
    const char *instance = NULL;
    int markers = 0;
    json_array_foreach(msgs, i, m)
    {
        cr_assert_str_eq(tu_jpath_str(m, "subject"), SUBJ_A);
        cr_assert_str_eq(tu_jpath_str(m, "error"), "", "npm client could not decode: %s",
                         tu_jdump(m));
        cr_expect(strstr(tu_jpath_str(m, "headers.Content-Type"), "protobuf"), "Content-Type: %s",
                  tu_jdump(m));
        cr_expect_str_eq(tu_jpath_str(m, "headers.Ebpf-Node"), NODE_A);
        cr_expect_eq(strlen(tu_jpath_str(m, "headers.Ebpf-Instance")), 16, "%s", tu_jdump(m));
        cr_expect_eq(jint(m, "headers.Ebpf-Sequence"), (int64_t)i + 1, "sequence: %s", tu_jdump(m));
        cr_expect_eq(jint(m, "headers.Ebpf-Events"), 5);
        /* The batch, decoded by protobufjs with pkg/events.proto. */
        json_t *batch = json_object_get(m, "batch");
        cr_expect_str_eq(tu_jpath_str(batch, "node"), NODE_A);
        cr_expect_str_eq(tu_jpath_str(batch, "agent_instance"),
                         tu_jpath_str(m, "headers.Ebpf-Instance"));
        cr_expect_eq(jint(batch, "sequence"), (int64_t)i + 1);
        cr_expect_eq(json_array_size(json_object_get(batch, "events")), 5,
                     "BATCH_SIZE=5 but message %zu holds %zu events", i,
                     json_array_size(json_object_get(batch, "events")));
        if (!instance)
            instance = tu_jpath_str(batch, "agent_instance");
        cr_expect_str_eq(tu_jpath_str(batch, "agent_instance"), instance);
        size_t k;
        json_t *ev;
        json_array_foreach(json_object_get(batch, "events"), k, ev)
        {
            cr_expect_str_eq(tu_jpath_str(ev, "type"), "EVENT_TYPE_EXEC");
            cr_expect_eq(strlen(tu_jpath_str(ev, "id")), 16);
            uint64_t ts = strtoull(tu_jpath_str(ev, "timestamp_ns"), NULL, 10);
            cr_expect(ts > tu_now_ns() - 120000000000ull && ts <= tu_now_ns(), "timestamp %s",
                      tu_jpath_str(ev, "timestamp_ns"));
            if (strcmp(tu_jpath_str(ev, "command"), marker_name) == 0) {
                markers++;
                cr_expect(strstr(tu_jpath_str(ev, "exec.filename"), marker_name), "filename: %s",
                          tu_jdump(ev));
            }
        }
    }
    cr_expect_gt(markers, 0, "no marker exec in the decoded batches");

    /* `ebpf-aggregator decode` (the nats --translate helper) reads the same bodies alike. */
    for (size_t b = 0; b < 2; b++) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "%s decode < %s/%zu.bin", tu_repo_path("bin/ebpf-aggregator"),
                 raw, b + 1);
        FILE *pf = popen(cmd, "r");
        cr_assert(pf, "%s", cmd);
        json_t *evs = tu_jpath(json_array_get(msgs, b), "batch.events");
        char line[65536];
        size_t k = 0;
        while (fgets(line, sizeof(line), pf)) {
            json_t *ev = json_loads(line, 0, NULL);
            cr_assert(json_is_object(ev), "decode printed a non-JSON line: %s", line);
            cr_expect_str_eq(tu_jpath_str(ev, "node"), NODE_A);
            cr_expect_str_eq(tu_jpath_str(ev, "type"), "exec");
            cr_expect_str_eq(tu_jpath_str(ev, "id"), tu_jpath_str(json_array_get(evs, k), "id"),
                             "decode and protobufjs disagree on event %zu of batch %zu", k, b);
            cr_expect_str_eq(tu_jpath_str(ev, "command"),
                             tu_jpath_str(json_array_get(evs, k), "command"));
            json_decref(ev);
            k++;
        }
        cr_expect_eq(pclose(pf), 0, "%s failed", cmd);
        cr_expect_eq(k, 5, "decode printed %zu events for a batch of 5", k);
    }
    /* No partial batch went out: the agent still holds the remainder. */
    cr_expect_eq(jint(st, "bus.events_sent") % 5, 0, "agent stats: %s", tu_jdump(st));
    json_decref(st);
    json_decref(msgs);
    proc_kill(a, SIGTERM);
}

/* A TCP connection with a known byte count each way, closed normally; returns the port. */
static int tcp_exchange(size_t up, size_t down)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    char buf[4096] = {0};
    cr_assert_eq(bind(l, (struct sockaddr *)&sa, len), 0);
    cr_assert_eq(listen(l, 4), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&sa, len), 0);
    int a = accept(l, NULL, NULL);
    cr_assert(a >= 0 && up <= sizeof(buf) && down <= sizeof(buf));
    cr_assert_eq(write(c, buf, up), (ssize_t)up);
    for (size_t got = 0; got < up;)
        got += (size_t)read(a, buf, sizeof(buf));
    cr_assert_eq(write(a, buf, down), (ssize_t)down);
    for (size_t got = 0; got < down;)
        got += (size_t)read(c, buf, sizeof(buf));
    close(c);
    cr_assert_eq(read(a, buf, sizeof(buf)), 0, "the server reads the client's FIN");
    close(a);
    close(l);
    return ntohs(sa.sin_port);
}

/* The independent npm client decodes close events (both roles, exact byte counts) from the bus. */
Test(e2e_cluster, npm_client_decodes_close_events)
{
    need_root();
    nats_up(NULL);
    struct proc *sub = sub_up(SUBJ_A, 60000, NULL, NULL, NULL);
    const char *const env[] = {"EVENT_TYPES=close", "FLUSH_INTERVAL=100ms", NULL};
    struct proc *a = agent_up(NODE_A, env);
    int port = tcp_exchange(321, 1234);

    bool client = false, server = false;
    uint64_t deadline = tu_mono_ms() + 15000;
    while (!(client && server)) {
        check(tu_mono_ms() < deadline, "npm subscriber decoded no close events for port %d", port);
        usleep(50000);
        json_t *msgs = sub_msgs(sub);
        size_t i, k;
        json_t *m, *ev;
        json_array_foreach(msgs, i, m)
        {
            cr_assert_str_eq(tu_jpath_str(m, "error"), "", "npm client could not decode: %s",
                             tu_jdump(m));
            json_array_foreach(tu_jpath(m, "batch.events"), k, ev)
            {
                cr_assert_str_eq(tu_jpath_str(ev, "type"), "EVENT_TYPE_CLOSE", "%s", tu_jdump(ev));
                if (jint(ev, "dest_port") != port)
                    continue;
                const char *role = tu_jpath_str(ev, "close.role");
                cr_expect_str_eq(tu_jpath_str(ev, "dest_addr"), "127.0.0.1");
                cr_expect_str_eq(tu_jpath_str(ev, "close.reset"), "CLOSE_RESET_NONE");
                cr_expect_gt(jint(ev, "close.duration_ns"), 0, "%s", tu_jdump(ev));
                if (strcmp(role, "CLOSE_ROLE_CLIENT") == 0) {
                    client = true;
                    cr_expect_eq(jint(ev, "close.bytes_sent"), 321, "%s", tu_jdump(ev));
                    cr_expect_eq(jint(ev, "close.bytes_received"), 1234, "%s", tu_jdump(ev));
                } else {
                    cr_assert_str_eq(role, "CLOSE_ROLE_SERVER", "%s", tu_jdump(ev));
                    server = true;
                    cr_expect_eq(jint(ev, "close.bytes_sent"), 1234, "%s", tu_jdump(ev));
                    cr_expect_eq(jint(ev, "close.bytes_received"), 321, "%s", tu_jdump(ev));
                }
            }
        }
        json_decref(msgs);
    }
    proc_kill(a, SIGTERM);
}

Test(e2e_cluster, flush_interval_governs_latency_json_encoding)
{
    need_root();
    nats_up(NULL);
    marker_init('f');
    struct proc *sub = sub_up("ebpf.events.e2e-json", 60000, NULL, NULL, NULL);
    const char *const env[] = {"BATCH_SIZE=10000", "FLUSH_INTERVAL=300ms", "ENCODING=json", NULL};
    struct proc *a = agent_up("e2e-json", env);

    /* `ebpf-aggregator tail` follows the bus with the API's filters. */
    struct proc *tail = proc_new("tail");
    char bin[256];
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    char *targv[] = {bin,    "tail",      "--nats",    nats_url, "--type",
                     "exec", "--command", marker_name, NULL};
    tail->pid = tu_spawn(targv, NULL, tail->log);
    for (uint64_t dl = tu_mono_ms() + 10000;;) {
        char *log = tu_read_file(tail->log);
        bool following = log && strstr(log, "following");
        free(log);
        if (following)
            break;
        check(tu_mono_ms() < dl, "tail did not start following the bus");
        usleep(20000);
    }

    /* Steady activity for ~2.4 s: an exec every 40 ms. */
    uint64_t t0 = tu_mono_ms();
    int runs = 0;
    while (tu_mono_ms() - t0 < 2400) {
        run_marker();
        runs++;
        usleep(40000);
    }
    /* Wait until every marker exec has been carried (the last batch is due 300 ms later). */
    json_t *msgs = NULL;
    uint64_t deadline = tu_mono_ms() + 10000;
    for (;;) {
        msgs = sub_msgs(sub);
        int seen = 0;
        size_t i, k;
        json_t *m, *ev;
        json_array_foreach(msgs, i, m)
        {
            json_array_foreach(json_object_get(m, "lines"), k, ev)
            {
                seen += strcmp(tu_jpath_str(ev, "type"), "exec") == 0 &&
                        strcmp(tu_jpath_str(ev, "command"), marker_name) == 0;
            }
        }
        if (seen == runs)
            break;
        check(tu_mono_ms() < deadline, "%d of %d marker execs reached the bus", seen, runs);
        json_decref(msgs);
        usleep(50000);
    }
    size_t n = json_array_size(msgs);
    /* ~8 batches of 300 ms each (more when a loaded machine took longer to carry every
     * marker: other processes' events keep a batch going out every 300 ms until then); far
     * fewer messages than events, far more than one. */
    int64_t span_ms =
        n ? jint(json_array_get(msgs, n - 1), "at_ms") - jint(json_array_get(msgs, 0), "at_ms") : 0;
    check(n >= 4 && (int64_t)n <= 2 + span_ms / 250,
          "%zu messages in %" PRId64 " ms with FLUSH_INTERVAL=300ms", n, span_ms);
    size_t i, events = 0;
    json_t *m;
    int64_t prev_at = -1, min_gap = INT64_MAX;
    int markers = 0;
    json_array_foreach(msgs, i, m)
    {
        cr_assert_str_eq(tu_jpath_str(m, "error"), "", "%s", tu_jdump(m));
        cr_expect(strstr(tu_jpath_str(m, "headers.Content-Type"), "json"), "Content-Type: %s",
                  tu_jdump(m));
        cr_expect_str_eq(tu_jpath_str(m, "headers.Ebpf-Node"), "e2e-json");
        cr_expect_eq(jint(m, "headers.Ebpf-Sequence"), (int64_t)i + 1);
        json_t *lines = json_object_get(m, "lines");
        cr_assert(json_array_size(lines) >= 1 && json_array_size(lines) < 10000, "%s", tu_jdump(m));
        cr_expect_eq(jint(m, "headers.Ebpf-Events"), (int64_t)json_array_size(lines));
        events += json_array_size(lines);
        /* The oldest event waited about FLUSH_INTERVAL, not much less, not much more. */
        uint64_t oldest = UINT64_MAX;
        size_t k;
        json_t *ev;
        json_array_foreach(lines, k, ev)
        {
            static const char *const common[] = {"id",      "type",      "pid",  "ppid", "uid",
                                                 "command", "timestamp", "time", "node"};
            /* A drop freed in softirq has no task: no process fields, rather than zeros. */
            bool taskless =
                strcmp(tu_jpath_str(ev, "type"), "packet_drop") == 0 && !json_object_get(ev, "pid");
            for (size_t f = 0; f < sizeof(common) / sizeof(common[0]); f++) {
                bool process_field = f >= 2 && f <= 5;
                if (taskless && process_field)
                    cr_expect(!json_object_get(ev, common[f]), "%s on a taskless drop: %s",
                              common[f], tu_jdump(ev));
                else
                    cr_expect(json_object_get(ev, common[f]), "field %s missing: %s", common[f],
                              tu_jdump(ev));
            }
            cr_expect(json_is_integer(json_object_get(ev, "timestamp")));
            cr_expect(taskless || json_is_integer(json_object_get(ev, "pid")));
            cr_expect_str_eq(tu_jpath_str(ev, "node"), "e2e-json");
            cr_expect_eq(strlen(tu_jpath_str(ev, "id")), 16);
            uint64_t ts = (uint64_t)json_integer_value(json_object_get(ev, "timestamp"));
            if (ts < oldest)
                oldest = ts;
            if (strcmp(tu_jpath_str(ev, "type"), "exec") == 0 &&
                strcmp(tu_jpath_str(ev, "command"), marker_name) == 0) {
                markers++;
                cr_expect(json_is_array(json_object_get(ev, "args")), "%s", tu_jdump(ev));
                cr_expect(strstr(tu_jpath_str(ev, "filename"), marker_name), "%s", tu_jdump(ev));
            }
        }
        int64_t waited_ms = jint(m, "recv_ms") - (int64_t)(oldest / 1000000);
        cr_expect(waited_ms >= 250 && waited_ms < 2000,
                  "message %zu: oldest event waited %" PRId64 " ms (FLUSH_INTERVAL=300ms)", i,
                  waited_ms);
        int64_t at = jint(m, "at_ms");
        if (prev_at >= 0 && at - prev_at < min_gap)
            min_gap = at - prev_at;
        prev_at = at;
    }
    cr_expect_eq(markers, runs, "marker execs in JSON batches: %d of %d", markers, runs);

    /* tail printed exactly the marker execs, as API-format JSON lines. */
    int tailed = 0;
    for (uint64_t dl = tu_mono_ms() + 5000;;) {
        char *log = tu_read_file(tail->log);
        tailed = 0;
        for (char *line = log ? strtok(log, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            json_t *ev = json_loads(line, 0, NULL);
            if (json_is_object(ev)) {
                cr_expect_str_eq(tu_jpath_str(ev, "type"), "exec", "tail filter: %s", line);
                cr_expect_str_eq(tu_jpath_str(ev, "command"), marker_name, "tail filter: %s", line);
                cr_expect_str_eq(tu_jpath_str(ev, "node"), "e2e-json");
                tailed++;
            }
            json_decref(ev);
        }
        free(log);
        if (tailed >= runs || tu_mono_ms() > dl)
            break;
        usleep(50000);
    }
    cr_expect_eq(tailed, runs, "tail printed %d of %d marker execs", tailed, runs);
    cr_expect_gt(events, 2 * n, "%zu events in %zu messages: no batching", events, n);
    cr_log_info("FLUSH_INTERVAL=300ms: %zu messages, %zu events, shortest gap %" PRId64 " ms", n,
                events, min_gap);
    /* Messages do not come faster than the flush interval allows (loose: scheduling). */
    cr_expect_geq(min_gap, 150, "two messages %" PRId64 " ms apart", min_gap);
    json_decref(msgs);
    proc_kill(a, SIGTERM);
}

/* ---- faults -------------------------------------------------------------- */

/* Aggregator-side view of one node, summed over the cluster (from one replica). */
static void node_counts(struct proc *r, const char *node, int64_t *batches, int64_t *lost,
                        int64_t *events)
{
    json_t *s = api(r, "/api/stats");
    json_t *n = node_entry(s, node);
    *batches = jint(n, "batches");
    *lost = jint(n, "lost_batches");
    if (events)
        *events = jint(n, "events");
    json_decref(s);
}

/* Moves this process into the cgroup directory dir (writing 0 to cgroup.procs moves the writer). */
static void cgroup_enter(const char *dir)
{
    char procs[600];
    snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
    FILE *f = fopen(procs, "w");
    cr_assert_not_null(f, "open %s: %s", procs, strerror(errno));
    fputs("0\n", f);
    cr_assert_eq(fclose(f), 0, "moving into %s: %s", dir, strerror(errno));
}

/* The cgroup v2 directory this process is in. */
static void cgroup_own(const char *root, char *dir, size_t size)
{
    char line[512] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) && strncmp(line, "0::", 3) != 0)
        line[0] = 0;
    fclose(f);
    line[strcspn(line, "\n")] = 0;
    cr_assert(strncmp(line, "0::", 3) == 0, "no cgroup v2 line in /proc/self/cgroup");
    snprintf(dir, size, "%s%s", root, line + 3);
}

/*
 * The agent captures only a cgroup this test moves itself into once the servers have started,
 * so the batches it counts are the test's markers and connections, whatever else the machine
 * runs (with one event per batch, a busy machine's events queue before the test's own).
 */
Test(e2e_cluster, nats_restart_and_replica_loss)
{
    need_root();
    char root[256], cg[512], home[800], cg_env[600];
    cr_assert_eq(cgroup_v2_root(root, sizeof(root)), 0, "no cgroup v2 mount");
    cgroup_own(root, home, sizeof(home));
    snprintf(cg, sizeof(cg), "%s/ebpfmon-fault-%d", root, getpid());
    cr_assert(mkdir(cg, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", cg, strerror(errno));
    snprintf(cg_env, sizeof(cg_env), "CAPTURE_CGROUP=ebpfmon-fault-%d", getpid());
    nats_up(NULL);
    marker_init('r');
    const char *const aenv[] = {"QUERY_TIMEOUT=500ms", NULL};
    struct proc *r1 = agg_up("r1", aenv, true);
    struct proc *r2 = agg_up("r2", aenv, true);
    wait_cluster(r1, 2);
    /* One event per batch and the smallest outage buffer, so an outage overflows it. */
    const char *const env[] = {cg_env, "FLUSH_INTERVAL=100ms", "BATCH_SIZE=1",
                               "OUTAGE_BUFFER=64KiB", NULL};
    struct proc *a = agent_up("e2e-fault", env);
    cgroup_enter(cg);

    pid_t p1 = run_marker();
    char q[256];
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", p1);
    /* One batch per event (a condition, so only a failure waits this long). */
    json_decref(wait_count(r1, q, 1, 45000));

    /* Outage: events keep being captured and wait in the agent's outage buffer. */
    nats_down();
    pid_t p2 = run_marker();
    tu_tcp_roundtrip();
    uint64_t t0 = tu_mono_ms();
    while (tu_mono_ms() - t0 < 3000) {
        json_t *s = api(a, "/api/stats");
        bool connected = json_is_true(tu_jpath(s, "bus.connected"));
        json_decref(s);
        if (!connected)
            break;
        usleep(50000);
    }
    {
        json_t *s = api(a, "/api/stats");
        cr_expect(json_is_false(tu_jpath(s, "bus.connected")), "agent still connected: %s",
                  tu_jdump(tu_jpath(s, "bus")));
        json_decref(s);
        int st = 0;
        json_t *rd = tu_get_json_hdr(r1->port, "/ready", NULL, &st);
        cr_expect_neq(st, 200, "aggregator ready without NATS");
        json_decref(rd);
    }
    /* ~1600 one-event batches (connects and accepts) overflow the 64 KiB buffer. */
    for (int i = 0; i < 800; i++)
        tu_tcp_roundtrip();
    int64_t dropped_in_outage = 0;
    for (uint64_t dl = tu_mono_ms() + 5000;;) {
        json_t *s = api(a, "/api/stats");
        dropped_in_outage = jint(s, "bus.batches_dropped");
        int64_t agent_drops = jint(s, "bus.agent_drops");
        json_decref(s);
        if (dropped_in_outage > 0 && agent_drops >= dropped_in_outage)
            break;
        check(tu_mono_ms() < dl, "outage buffer never overflowed: %" PRId64 " batches dropped",
              dropped_in_outage);
        usleep(50000);
    }
    /* The log says so too (the agent looks ten times a second). */
    for (uint64_t dl = tu_mono_ms() + 5000;;) {
        char *log = tu_read_file(a->log);
        bool said = log && strstr(log, "the send queue is full (OUTAGE_BUFFER 65536 bytes, NATS "
                                       "unreachable)");
        free(log);
        if (said)
            break;
        check(tu_mono_ms() < dl, "the agent did not log the dropped batches");
        usleep(50000);
    }
    usleep(1500000); /* a few seconds of outage in all, as specified */
    {
        /* Longer than a peer's TTL: a replica that hears no one still expects the one it
         * knew, and says its own share is all it has. */
        json_t *j = api(r1, "/api/events?limit=1");
        cr_expect_eq(jint(j, "replicas.answered"), 1);
        cr_expect_eq(jint(j, "replicas.expected"), 2, "the peer forgotten in the outage: %s",
                     tu_jdump(json_object_get(j, "replicas")));
        cr_expect(json_is_true(json_object_get(j, "partial")));
        json_decref(j);
    }
    /* The new server is not the test's: it starts outside the captured cgroup. */
    cgroup_enter(home);
    nats_restart();
    cgroup_enter(cg);

    /* Everyone reconnects by themselves. */
    check(tu_wait_http(r1->port, "/ready", 200, 15000), "r1 did not reconnect");
    check(tu_wait_http(r2->port, "/ready", 200, 15000), "r2 did not reconnect");
    pid_t p3 = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", p3);
    /* Behind the hundreds of batches the agent kept (a sanitizer build on a busy machine
     * was seen to need more than 15 s): a condition, so only a failure waits this long. */
    json_decref(wait_count(r1, q, 1, 45000));
    wait_cluster(r1, 2);
    wait_cluster(r2, 2);

    /*
     * Nothing silently missing: every batch the agent numbered either reached
     * the cluster or is counted lost (sequence gap) there. The agent keeps
     * publishing, so sandwich the cluster's view between two agent readings.
     */
    uint64_t deadline = tu_mono_ms() + 15000;
    int64_t before = 0, after = 0, got = 0, lost = 0, ev = 0;
    for (;;) {
        json_t *s = api(a, "/api/stats");
        before = jint(s, "bus.sequence");
        json_decref(s);
        node_counts(r1, "e2e-fault", &got, &lost, &ev);
        s = api(a, "/api/stats");
        after = jint(s, "bus.sequence");
        json_decref(s);
        if (before > 0 && before <= got + lost && got + lost <= after)
            break;
        if (tu_mono_ms() > deadline) {
            json_t *sa = api(a, "/api/stats"), *sr = api(r1, "/api/stats");
            dump_logs();
            cr_assert_fail("agent numbered %" PRId64 "..%" PRId64 " batches, cluster has %" PRId64
                           " + %" PRId64 " lost\nagent: %s\ncluster: %s",
                           before, after, got, lost, tu_jdump(tu_jpath(sa, "bus")),
                           tu_jdump(node_entry(sr, "e2e-fault")));
        }
        usleep(100000);
    }
    cr_log_info("after the outage: agent numbered %" PRId64 "..%" PRId64
                " batches; cluster received %" PRId64 ", counted %" PRId64 " lost",
                before, after, got, lost);
    /* The batches the full buffer dropped are the cluster's sequence gaps (and maybe more). */
    cr_expect_geq(lost, dropped_in_outage,
                  "agent dropped %" PRId64 " batches, cluster counts %" PRId64 " lost",
                  dropped_in_outage, lost);
    /* The outage marker either arrived or its loss is counted somewhere. */
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", p2);
    json_t *r = api(r1, "%s", q);
    if (jint(r, "count") != 1) {
        json_t *s = api(a, "/api/stats");
        cr_expect(lost > 0 || jint(s, "bus.agent_drops") > 0,
                  "the outage marker is missing and no loss is counted: %s", tu_jdump(s));
        json_decref(s);
    }
    json_decref(r);

    /* Kill one replica: the other answers at once, partial until the dead one expires. */
    proc_kill(r2, SIGKILL);
    uint64_t t_kill = tu_mono_ms();
    json_t *first = api(r1, "/api/events?limit=1");
    uint64_t took = tu_mono_ms() - t_kill;
    cr_expect_lt(took, 3000, "a query with a dead replica took %" PRIu64 " ms", took);
    cr_expect_eq(jint(first, "replicas.answered"), 1, "%s", tu_jdump(first));
    if (took < 1500) {
        cr_expect_eq(jint(first, "replicas.expected"), 2, "dead replica forgotten too soon: %s",
                     tu_jdump(first));
        cr_expect(json_is_true(json_object_get(first, "partial")), "not flagged partial: %s",
                  tu_jdump(first));
    }
    json_decref(first);
    deadline = tu_mono_ms() + 8000;
    for (;;) {
        json_t *j = api(r1, "/api/events?limit=1");
        int64_t e = jint(j, "replicas.expected"), ans = jint(j, "replicas.answered");
        json_decref(j);
        if (e == 1) {
            cr_expect_eq(ans, 1);
            break;
        }
        check(tu_mono_ms() < deadline, "r1 still expects %" PRId64 " replicas", e);
        usleep(100000);
    }
    proc_kill(a, SIGTERM);
    cgroup_enter(home);
    rmdir(cg);
}

/*
 * An agent that starts while no replica can hear it (here: its NATS server is not yet routed to
 * the replicas', as a server joining a cluster late; as well: the replicas refused) sends
 * batches 1..N that no replica receives. Batches no one at all subscribes to come back to the
 * agent, which holds them (a_lone_aggregator_restart_loses_nothing); these have a subscriber
 * that is no replica (a `nats sub` on B), so they are gone. The replica was running before
 * the agent started, so the first batch it hears, N + k, does not start the count: sequences
 * 1 to N + k - 1 are lost batches.
 */
Test(e2e_cluster, batches_no_replica_heard_at_an_agents_start_are_lost)
{
    need_root();
    char a_cluster[48], b_cluster[48], a_route[48], b_log[200], saved_url[64];
    int a_cluster_port = tu_free_port(), b_port = tu_free_port(), b_cluster_port = tu_free_port();
    snprintf(a_cluster, sizeof(a_cluster), "nats://127.0.0.1:%d", a_cluster_port);
    snprintf(b_cluster, sizeof(b_cluster), "nats://127.0.0.1:%d", b_cluster_port);
    snprintf(a_route, sizeof(a_route), "nats://127.0.0.1:%d", a_cluster_port);
    snprintf(b_log, sizeof(b_log), "%s/nats-b.log", workdir);
    const char *const a_args[] = {"--cluster_name", "e2e", "--cluster", a_cluster, NULL};
    const char *const b_alone[] = {"--cluster_name", "e2e", "--cluster", b_cluster, NULL};
    const char *const b_routed[] = {"--cluster_name", "e2e",   "--cluster", b_cluster,
                                    "--routes",       a_route, NULL};
    nats_up(a_args);
    marker_init('l');
    struct proc *r1 = agg_up("r1", NULL, true);
    uint64_t replica_started = tu_now_ns(); /* it listens since before it served /health */

    pid_t b = tu_nats_start(b_port, b_alone, b_log);
    check(b > 0, "nats-server B did not start on port %d", b_port);
    char b_url[48];
    natsConnection *listener = NULL;
    natsSubscription *listener_sub = NULL;
    snprintf(b_url, sizeof(b_url), "nats://127.0.0.1:%d", b_port);
    check(natsConnection_ConnectTo(&listener, b_url) == NATS_OK, "cannot connect to B");
    check(natsConnection_SubscribeSync(&listener_sub, listener, "ebpf.events.>") == NATS_OK &&
              natsConnection_Flush(listener) == NATS_OK,
          "cannot subscribe on B");
    /* The replica listens for longer than the agent lives (by more than NODES_HEARD_MARGIN_NS:
     * 1 s) when the agent's first batch reaches it. */
    while (tu_now_ns() < replica_started + 1500000000ull)
        usleep(20000);
    snprintf(saved_url, sizeof(saved_url), "%s", nats_url);
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", b_port);
    const char *const env[] = {"FLUSH_INTERVAL=100ms", "BATCH_SIZE=1", NULL};
    struct proc *a = agent_up("e2e-unheard", env);
    snprintf(nats_url, sizeof(nats_url), "%s", saved_url);

    /* Batches into B, where no one subscribes. */
    int64_t unheard = markers_until(a, "bus.batches_sent", 5);
    json_t *nodes = api(r1, "/api/stats");
    check(node_entry(nodes, "e2e-unheard") == NULL, "the replica heard B: %s", tu_jdump(nodes));
    json_decref(nodes);

    /* B joins the cluster: what the agent sends from now on reaches the replica. */
    natsConnection_Close(listener); /* first: see bus_sub_end() */
    natsSubscription_Destroy(listener_sub);
    natsConnection_Destroy(listener);
    tu_stop(b, 5000);
    b = tu_nats_start(b_port, b_routed, b_log);
    check(b > 0, "nats-server B did not restart on port %d", b_port);
    int64_t batches = 0, lost = 0;
    uint64_t deadline = tu_mono_ms() + 30000;
    for (;;) {
        run_marker();
        json_t *st = api(r1, "/api/stats");
        json_t *n = node_entry(st, "e2e-unheard");
        if (n) {
            batches = jint(n, "batches");
            lost = jint(n, "lost_batches");
        }
        json_decref(st);
        if (batches > 0)
            break;
        if (tu_mono_ms() > deadline) {
            tu_dump_file(b_log, 4000);
            check(false, "the replica never heard the agent through B's route");
        }
        usleep(100000);
    }
    cr_log_info("sent before B was routed: %" PRId64 "; then heard %" PRId64 ", lost %" PRId64,
                unheard, batches, lost);
    cr_expect_geq(lost, unheard,
                  "lost_batches %" PRId64 ": the %" PRId64
                  " batches sent before any replica could hear them are not counted",
                  lost, unheard);
    /* And the same figure in /metrics. */
    struct tu_http m = {0};
    check(tu_http_get(r1->port, "/metrics", api_header, &m) == 0 && m.status == 200, "/metrics");
    char want[96];
    snprintf(want, sizeof(want), "ebpf_aggregator_node_lost_batches{node=\"e2e-unheard\"} ");
    const char *line = strstr(m.body, want);
    check(line != NULL, "no lost-batches series for the node");
    cr_expect_geq(strtoll(line + strlen(want), NULL, 10), unheard);
    tu_http_free(&m);
    proc_kill(a, SIGTERM);
    tu_stop(b, 5000);
}

/*
 * A live stream whose replica loses NATS goes quiet: its clients are told so (a comment line,
 * which EventSource ignores and curl shows), those who connect meanwhile too, and all of them
 * when it is back.
 */
Test(e2e_cluster, stream_clients_hear_when_nats_is_gone_and_back)
{
    nats_up(NULL);
    struct proc *r = agg_up("s1", NULL, true);
    struct sse before, during, after;
    sse_open(&before, r->port, "/api/events/stream");
    check(sse_wait_comment(&before, "connected", 5000), "no \": connected\"");
    nats_down();
    check(sse_wait_comment(&before, "NATS not connected", 10000), "not told NATS is gone");
    sse_open(&during, r->port, "/api/events/stream");
    check(sse_wait_comment(&during, "NATS not connected", 5000),
          "a client connecting during the outage is not told");
    nats_restart();
    check(sse_wait_comment(&before, "NATS connected: events follow", 15000),
          "not told NATS is back");
    check(sse_wait_comment(&during, "NATS connected: events follow", 5000),
          "the later client not told NATS is back");
    /* Once it is back, a new client hears nothing of it. */
    sse_open(&after, r->port, "/api/events/stream");
    check(sse_wait_comment(&after, "connected", 5000), "no \": connected\"");
    cr_expect_not(sse_wait_comment(&after, "NATS", 500), "a stale notice for a new client");
    close(before.fd);
    close(during.fd);
    close(after.fd);
}

/* ---- bad input published raw -------------------------------------------- */

static natsConnection *raw_conn(void)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, nats_url);
    cr_assert_eq(s, NATS_OK, "connect %s: %s", nats_url, natsStatus_GetText(s));
    return nc;
}

static void raw_publish(natsConnection *nc, const char *subject, const char *ctype, const char *seq,
                        const void *data, size_t len)
{
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, subject, NULL, data, (int)len), NATS_OK);
    if (ctype)
        natsMsgHeader_Set(m, "Content-Type", ctype);
    if (seq) {
        natsMsgHeader_Set(m, "Ebpf-Node", "x");
        natsMsgHeader_Set(m, "Ebpf-Instance", "00000000000000aa");
        natsMsgHeader_Set(m, "Ebpf-Sequence", seq);
    }
    natsStatus s = natsConnection_PublishMsg(nc, m);
    cr_assert_eq(s, NATS_OK, "publish %zu bytes: %s", len, natsStatus_GetText(s));
    natsMsg_Destroy(m);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
}

/* A protobuf EventBatch built with protobuf-c directly, n exit events. */
/* A replica's stream.bus_lost_batches once it is want (or after 10 s, whatever it is). */
static int64_t wait_stream_lost(struct proc *r, int64_t want)
{
    int64_t lost = -1;
    for (uint64_t dl = tu_mono_ms() + 10000; lost != want && tu_mono_ms() < dl; usleep(20000)) {
        json_t *st = api(r, "/api/stats");
        lost = jint(st, "stream.bus_lost_batches");
        json_decref(st);
    }
    return lost;
}

/* A batch of instance (started then, 0: unknown) with n exit events. */
static uint8_t *pb_batch_of(const char *node, const char *instance, uint64_t started, uint64_t seq,
                            size_t n, size_t *len)
{
    Ebpfmonitor__EventBatch b = EBPFMONITOR__EVENT_BATCH__INIT;
    b.node = (char *)node;
    b.agent_instance = (char *)instance;
    b.instance_started_ns = started;
    b.sequence = seq;
    b.sent_at_ns = tu_now_ns();
    Ebpfmonitor__Event *evs = calloc(n, sizeof(*evs));
    Ebpfmonitor__Event **ptrs = calloc(n, sizeof(*ptrs));
    Ebpfmonitor__ExitDetails x = EBPFMONITOR__EXIT_DETAILS__INIT;
    x.exit_code = 3;
    for (size_t i = 0; i < n; i++) {
        Ebpfmonitor__Event e = EBPFMONITOR__EVENT__INIT;
        e.id = 0x5eed000000000000ull + seq * 100000 + i;
        e.type = EBPFMONITOR__EVENT_TYPE__EVENT_TYPE_EXIT;
        e.timestamp_ns = tu_now_ns();
        e.pid = 4242;
        e.ppid = 1;
        e.command.data = (uint8_t *)"raw-test";
        e.command.len = 8;
        e.details_case = EBPFMONITOR__EVENT__DETAILS_EXIT;
        e.exit = &x;
        evs[i] = e;
        ptrs[i] = &evs[i];
    }
    b.n_events = n;
    b.events = ptrs;
    *len = ebpfmonitor__event_batch__get_packed_size(&b);
    uint8_t *out = malloc(*len);
    ebpfmonitor__event_batch__pack(&b, out);
    free(evs);
    free(ptrs);
    return out;
}

static uint8_t *pb_batch(const char *node, uint64_t seq, size_t n, size_t *len)
{
    return pb_batch_of(node, "00000000000000bb", 0, seq, n, len);
}

/* Value of the first /metrics sample whose line contains every given fragment. */
static int64_t metric(const char *text, const char *a, const char *b)
{
    char *copy = strdup(text), *save = NULL;
    int64_t out = -1;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || !strstr(line, a) || (b && !strstr(line, b)))
            continue;
        char *sp = strrchr(line, ' ');
        if (sp) {
            out = (int64_t)strtod(sp + 1, NULL);
            break;
        }
    }
    free(copy);
    return out;
}

Test(e2e_cluster, bad_input_is_counted_and_skipped)
{
    /* The server must carry a message over the aggregator's 8 MiB limit. */
    char conf[256];
    snprintf(conf, sizeof(conf), "%s/nats.conf", workdir);
    FILE *f = fopen(conf, "w");
    cr_assert(f);
    fprintf(f, "max_payload: 16MB\n");
    fclose(f);
    const char *const extra[] = {"-c", conf, NULL};
    nats_up(extra);
    struct proc *r = agg_up("r1", NULL, true);
    natsConnection *nc = raw_conn();

    const char *pb = "application/x-protobuf";
    const char *js = "application/x-ndjson";
    /* Garbage, with and without a Content-Type. */
    raw_publish(nc, "ebpf.events.x", pb, "1", "\xff\xff\xff\xff garbage \x01\x02", 15);
    raw_publish(nc, "ebpf.events.x", NULL, NULL, "\xff\xfe\xfd not a batch", 16);
    /* A valid batch cut in half. */
    size_t len;
    uint8_t *batch = pb_batch("x", 1, 20, &len);
    raw_publish(nc, "ebpf.events.x", pb, "2", batch, len - 12); /* inside the last event */
    free(batch);
    /* More events than the largest BATCH_SIZE. */
    batch = pb_batch("x", 3, 10001, &len);
    raw_publish(nc, "ebpf.events.x", pb, "3", batch, len);
    free(batch);
    /* Over 8 MiB. */
    size_t big = (8u << 20) + 4096;
    char *huge = malloc(big);
    memset(huge, 'A', big);
    raw_publish(nc, "ebpf.events.x", pb, "4", huge, big);
    free(huge);
    /* JSON with wrong types. */
    const char *badjson = "{\"id\":12,\"type\":\"exec\",\"pid\":\"one\",\"timestamp\":\"soon\"}\n";
    raw_publish(nc, "ebpf.events.x", js, "5", badjson, strlen(badjson));
    raw_publish(nc, "ebpf.events.x", js, "6", "{not json\n", 10);
    /* An encoding nobody speaks. */
    raw_publish(nc, "ebpf.events.x", "text/plain", "7", "hello", 5);
    /* And then a good batch: it must still be ingested and served. */
    batch = pb_batch("good-node", 1, 3, &len);
    raw_publish(nc, "ebpf.events.good-node", "application/x-protobuf", NULL, batch, len);
    free(batch);

    json_decref(wait_count(r, "/api/events?node=good-node", 3, 10000));
    json_t *s = api(r, "/api/stats");
    /* A JSON line that does not parse costs only itself: counted as a rejected event. */
    struct {
        const char *reason;
        int64_t want;
    } reasons[] = {
        {"malformed_protobuf", 3}, {"too_many_events", 1},  {"oversized", 1},
        {"malformed_json", 0},     {"unknown_encoding", 1},
    };
    cr_expect_eq(jint(s, "rejected_events.malformed_json"), 2, "%s", tu_jdump(s));
    cr_expect_eq(jint(s, "rejected_events_total"), 2, "%s", tu_jdump(s));
    struct tu_http mr;
    cr_assert_eq(tu_http_get(r->port, "/metrics", api_header, &mr), 0);
    cr_assert_eq(mr.status, 200);
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        char path[64];
        snprintf(path, sizeof(path), "rejected.%s", reasons[i].reason);
        int64_t got = jint(s, path);
        cr_expect_eq(got, reasons[i].want, "/api/stats %s = %" PRId64 ", want %" PRId64 ": %s",
                     reasons[i].reason, got, reasons[i].want, tu_jdump(s));
        char label[64];
        snprintf(label, sizeof(label), "\"%s\"", reasons[i].reason);
        int64_t m = metric(mr.body, "ebpf_aggregator_rejected_total", label);
        cr_expect_eq(m, reasons[i].want, "/metrics %s = %" PRId64, reasons[i].reason, m);
    }
    tu_http_free(&mr);
    /* The rejected node "x" never became a node with events. */
    json_t *n = node_entry(s, "x");
    cr_expect(!n || jint(n, "events") == 0, "node x: %s", tu_jdump(n));
    json_decref(s);
    check(tu_wait_http(r->port, "/health", 200, 1000), "aggregator stopped serving");
    natsConnection_Destroy(nc);
    proc_kill(r, SIGTERM);
}

/* ---- authentication ----------------------------------------------------- */

/* A message that names the refusal (nats.c's "Authorization Violation" or our own words). */
static bool says_refused(const char *s)
{
    return s && (strcasestr(s, "authoriz") || strcasestr(s, "refused"));
}

/* Polls p's log until it holds needle count times. */
static void wait_log(struct proc *p, const char *needle, int count, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        char *log = tu_read_file(p->log);
        int found = 0;
        for (const char *at = log; at && (at = strstr(at, needle)) != NULL; at++)
            found++;
        free(log);
        if (found >= count)
            return;
        check(tu_mono_ms() < deadline, "%s: \"%s\" %d times in its log, want %d", p->name, needle,
              found, count);
        usleep(50000);
    }
}

Test(e2e_cluster, api_token_and_nats_credentials)
{
    need_root();
    const char *const extra[] = {"--user", "e2e", "--pass", "s3cret", NULL};
    nats_up(extra);
    marker_init('a');
    const char *const good[] = {"NATS_USER=e2e", "NATS_PASSWORD=s3cret", "API_TOKEN=tok-e2e",
                                "FLUSH_INTERVAL=100ms", NULL};
    const char *const bad[] = {"NATS_USER=e2e", "NATS_PASSWORD=wrong", NULL};
    struct proc *r = agg_up("good", good, true);
    struct proc *a = agent_up("e2e-auth", good);
    /* Started by hand: it may serve (not ready) or refuse to start; both must say why. */
    struct proc *rbad = proc_new("aggregator-bad");
    rbad->port = tu_free_port();
    {
        char bin[256], listen[32];
        snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", rbad->port);
        char *argv[] = {bin, "--listen-addr", listen, "--nats-url", nats_url, NULL};
        rbad->pid = tu_spawn(argv, (char *const *)bad, rbad->log);
    }
    struct proc *abad = NULL;
    {
        /* An agent with the wrong password still captures and serves, but cannot publish. */
        const char *const benv[] = {"NATS_USER=e2e", "NATS_PASSWORD=wrong", NULL};
        abad = agent_up("e2e-auth-bad", benv);
    }

    /* The HTTP API needs the token on both programs; /health does not. */
    struct proc *servers[2] = {r, a};
    for (int i = 0; i < 2; i++) {
        struct tu_http h;
        cr_assert_eq(tu_http_get(servers[i]->port, "/api/events?limit=1", NULL, &h), 0);
        cr_expect_eq(h.status, 401, "%s without token: %d", servers[i]->name, h.status);
        tu_http_free(&h);
        cr_assert_eq(tu_http_get(servers[i]->port, "/api/stats", "Authorization: Bearer nope", &h),
                     0);
        cr_expect_eq(h.status, 401, "%s with a wrong token: %d", servers[i]->name, h.status);
        tu_http_free(&h);
        cr_assert_eq(tu_http_get(servers[i]->port, "/api/events?limit=1",
                                 "Authorization: Bearer tok-e2e", &h),
                     0);
        cr_expect_eq(h.status, 200, "%s with the token: %d", servers[i]->name, h.status);
        tu_http_free(&h);
        cr_assert_eq(tu_http_get(servers[i]->port, "/health", NULL, &h), 0);
        cr_expect_eq(h.status, 200);
        tu_http_free(&h);
    }
    cr_expect(tu_wait_http(r->port, "/api/nodes", 401, 1000));

    /* With the right credentials events flow. */
    api_header = "Authorization: Bearer tok-e2e";
    pid_t p = run_marker();
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-auth", p);
    json_decref(wait_count(r, q, 1, 10000));

    /*
     * With the wrong password nothing connects, and each says why: the agent
     * keeps capturing, the aggregator serves, not ready, and both report the
     * refusal in /api/stats while they try again (a fixed secret needs no
     * restart).
     */
    api_header = NULL;
    int st = 0;
    json_t *j = NULL;
    check(tu_wait_http(rbad->port, "/health", 200, 10000),
          "aggregator with a wrong NATS password does not serve");
    check(waitpid(rbad->pid, &st, WNOHANG) == 0, "aggregator with a wrong NATS password exited");
    j = tu_get_json_hdr(rbad->port, "/ready", NULL, &st);
    cr_expect_neq(st, 200, "aggregator with a wrong NATS password is ready: %s", tu_jdump(j));
    json_decref(j);
    wait_log(rbad, "closed for good", 2, 10000);
    j = api(rbad, "/api/stats");
    cr_expect(json_is_false(tu_jpath(j, "bus.connected")), "%s", tu_jdump(tu_jpath(j, "bus")));
    cr_expect(says_refused(tu_jpath_str(j, "bus.last_error")), "bus: %s",
              tu_jdump(tu_jpath(j, "bus")));
    json_decref(j);
    j = api(abad, "/api/stats");
    cr_expect(json_is_false(tu_jpath(j, "bus.connected")), "agent bus status: %s",
              tu_jdump(tu_jpath(j, "bus")));
    cr_expect(says_refused(tu_jpath_str(j, "bus.last_error")), "agent bus: %s",
              tu_jdump(tu_jpath(j, "bus")));
    cr_expect_eq(jint(j, "bus.batches_sent"), 0);
    json_decref(j);
    api_header = "Authorization: Bearer tok-e2e";
    j = api(r, "/api/nodes");
    cr_expect(!node_entry(j, "e2e-auth-bad"), "the unauthenticated agent got through: %s",
              tu_jdump(j));
    cr_expect(node_entry(j, "e2e-auth"), "%s", tu_jdump(j));
    json_decref(j);
    api_header = NULL;
    proc_kill(abad, SIGTERM);
    proc_kill(a, SIGTERM);
}

/*
 * The servers refuse everyone's credentials for a while (authorization turned
 * on by mistake, a password rotated before the clients' secret): nats.c closes
 * each connection for good, and each process opens a new one until the servers
 * accept it again: events flow and both replicas answer, with no restart.
 */
Test(e2e_cluster, a_refusal_then_the_fix_needs_no_restart)
{
    need_root();
    nats_up(NULL);
    marker_init('f');
    const char *const aenv[] = {"QUERY_TIMEOUT=1s", NULL};
    struct proc *r1 = agg_up("r1", aenv, true);
    struct proc *r2 = agg_up("r2", aenv, true);
    wait_cluster(r1, 2);
    const char *const env[] = {"FLUSH_INTERVAL=100ms", NULL};
    struct proc *a = agent_up("e2e-refused", env);
    pid_t p = run_marker();
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", p);
    json_decref(wait_count(r1, q, 1, 10000));

    static const char *const auth[] = {"--user", "someone", "--pass", "else", NULL};
    nats_down();
    nats_args = auth;
    nats_restart();
    struct proc *all[] = {a, r1, r2};
    for (size_t i = 0; i < 3; i++) {
        /* The agent's connection, and each aggregator's two (events, and the replicas'). */
        wait_log(all[i], "closed for good", i == 0 ? 1 : 2, 15000);
        json_t *j = api(all[i], "/api/stats");
        cr_expect(says_refused(tu_jpath_str(j, "bus.last_error")), "%s: %s", all[i]->name,
                  tu_jdump(tu_jpath(j, "bus")));
        /* Counted, not only said: each connection the client closed for good. */
        cr_expect_geq(tu_jpath_int(j, "bus.closed_for_good"), 1, "%s: %s", all[i]->name,
                      tu_jdump(tu_jpath(j, "bus")));
        if (i > 0)
            cr_expect(json_is_false(tu_jpath(j, "bus.control.connected")) &&
                          says_refused(tu_jpath_str(j, "bus.control.last_error")) &&
                          tu_jpath_int(j, "bus.control.closed_for_good") >= 1,
                      "%s: %s", all[i]->name, tu_jdump(tu_jpath(j, "bus")));
        json_decref(j);
    }
    int st = 0;
    json_t *j = tu_get_json_hdr(r1->port, "/ready", NULL, &st);
    cr_expect_eq(st, 503, "ready while refused: %s", tu_jdump(j));
    json_decref(j);
    wait_log(r1, "NATS connection lost, retrying; not ready", 1, 5000);
    struct tu_http m;
    cr_assert_eq(tu_http_get(r1->port, "/metrics", NULL, &m), 0);
    cr_expect(strstr(m.body, "\nebpf_aggregator_ready 0\n"), "metrics while refused");
    const char *closed = strstr(m.body, "\nebpf_aggregator_nats_closed_for_good_total ");
    cr_expect(closed && strtoull(closed + strlen("\nebpf_aggregator_nats_closed_for_good_total "),
                                 NULL, 10) >= 2,
              "the two refused connections are not counted in /metrics");
    tu_http_free(&m);

    nats_down();
    nats_args = NULL;
    nats_restart();
    check(tu_wait_http(r1->port, "/ready", 200, 20000), "r1 never connected again");
    check(tu_wait_http(r2->port, "/ready", 200, 20000), "r2 never connected again");
    /* Their control subscriptions are back: each hears the other and asks it. */
    wait_cluster(r1, 2);
    wait_cluster(r2, 2);
    p = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", p);
    json_decref(wait_count(r2, q, 1, 20000));
    json_decref(wait_count(r1, q, 1, 5000));
    for (size_t i = 0; i < 3; i++) {
        j = api(all[i], "/api/stats");
        cr_expect(json_is_true(tu_jpath(j, "bus.connected")), "%s: %s", all[i]->name,
                  tu_jdump(tu_jpath(j, "bus")));
        cr_expect_geq(jint(j, "bus.reconnects"), 1, "%s: %s", all[i]->name,
                      tu_jdump(tu_jpath(j, "bus")));
        if (i > 0)
            cr_expect(json_is_true(tu_jpath(j, "bus.control.connected")), "%s: %s", all[i]->name,
                      tu_jdump(tu_jpath(j, "bus")));
        json_decref(j);
    }
    for (size_t i = 1; i < 3; i++) {
        /* Each of its two connections came back: the batches' and the replicas' own. */
        wait_log(all[i], "NATS: connected again", 1, 1000);
        wait_log(all[i], "NATS (control): connected again", 1, 1000);
        wait_log(all[i], "NATS connected, ready", 1, 1000);
        cr_assert_eq(tu_http_get(all[i]->port, "/metrics", NULL, &m), 0);
        cr_expect(strstr(m.body, "\nebpf_aggregator_ready 1\n") &&
                      strstr(m.body, "\nebpf_aggregator_nats_control_connected 1\n"),
                  "%s: metrics once back", all[i]->name);
        tu_http_free(&m);
    }
    proc_kill(a, SIGTERM);
}

/* ---- hostile batches ------------------------------------------------------ */

/*
 * Batches crafted to put wire values into the wrong union member (and the
 * other hostile shapes of tests/helpers/pb_craft.c), published to two
 * replicas with a live SSE client on each: the replicas keep running and
 * answering, every valid event around a hostile one is stored and streamed,
 * and each skipped event is counted by reason in /api/stats and /metrics.
 */
Test(e2e_cluster, hostile_batches_cost_only_their_bad_events)
{
    nats_up(NULL);
    struct proc *r1 = agg_up("h1", NULL, true);
    struct proc *r2 = agg_up("h2", NULL, true);
    wait_cluster(r1, 2);
    struct sse s1, s2;
    sse_open(&s1, r1->port, "/api/events/stream");
    sse_open(&s2, r2->port, "/api/events/stream");
    /* Both streams are attached once a probe batch reaches them. */
    natsConnection *nc = raw_conn();
    size_t len;
    int seen1 = 0, seen2 = 0;
    uint64_t deadline = tu_mono_ms() + 15000, seq = 1;
    for (; seen1 == 0 || seen2 == 0; seq++) {
        check(tu_mono_ms() < deadline, "the streams carried no probe event");
        uint8_t *b = pb_batch("stream-probe", seq, 1, &len);
        raw_publish(nc, "ebpf.events.stream-probe", "application/x-protobuf", NULL, b, len);
        free(b);
        seen1 += sse_pump(&s1, "stream-probe");
        seen2 += sse_pump(&s2, "stream-probe");
    }
    uint64_t feeds_attached = tu_now_ns(); /* the feeds listen since before their first batch */
    /* Two batches the feeds never hear (as after a refusal, which renews their subscription):
     * each replica's feed counts the gap. */
    uint8_t *gap = pb_batch("stream-probe", seq + 2, 1, &len);
    raw_publish(nc, "ebpf.events.stream-probe", "application/x-protobuf", NULL, gap, len);
    free(gap);
    for (struct proc *const *r = (struct proc *const[]){r1, r2, NULL}; *r; r++)
        cr_expect_eq(wait_stream_lost(*r, 2), 2, "%s: stream.bus_lost_batches", (*r)->name);
    /* An agent that started after the feeds did (by more than NODES_HEARD_MARGIN_NS, 1 s, on
     * its own clock) and is first heard at sequence 4: its batches 1-3 are lost too, for the
     * feeds and for the cluster's node table alike. */
    while (tu_now_ns() < feeds_attached + 1300000000ull)
        usleep(20000);
    uint8_t *late =
        pb_batch_of("stream-probe", "00000000000000cc", tu_now_ns() - 100000000ull, 4, 1, &len);
    raw_publish(nc, "ebpf.events.stream-probe", "application/x-protobuf", NULL, late, len);
    free(late);
    for (struct proc *const *r = (struct proc *const[]){r1, r2, NULL}; *r; r++) {
        cr_expect_eq(wait_stream_lost(*r, 5), 5,
                     "%s: stream.bus_lost_batches (2, then the new agent's 3)", (*r)->name);
        json_t *st = api(*r, "/api/stats");
        cr_expect_eq(jint(node_entry(st, "stream-probe"), "lost_batches"), 5,
                     "%s: the node's lost batches: %s", (*r)->name, tu_jdump(st));
        json_decref(st);
    }
    seen1 = seen2 = 0;

    struct pb_craft crafts[32];
    size_t nc_crafts = pb_craft_hostile(crafts, 32, "hostile-node", 1, tu_now_ns());
    size_t valid = 0, rejected = 0;
    for (size_t i = 0; i < nc_crafts; i++) {
        raw_publish(nc, "ebpf.events.hostile-node", "application/x-protobuf", NULL,
                    crafts[i].wire.data, crafts[i].wire.len);
        valid += crafts[i].valid;
        rejected += crafts[i].rejected;
    }
    cr_assert_gt(rejected, 0);

    /* Every valid event is stored once, cluster-wide, whichever replica took the batch. */
    char q[96];
    snprintf(q, sizeof(q), "/api/events?node=hostile-node&limit=1000");
    json_t *ev = wait_count(r1, q, (int)valid, 15000);
    json_decref(ev);
    json_decref(wait_count(r2, q, (int)valid, 15000));

    /* Each replica streams every event exactly once, hostile batches included. */
    deadline = tu_mono_ms() + 15000;
    while ((seen1 < (int)valid || seen2 < (int)valid) && tu_mono_ms() < deadline) {
        seen1 += sse_pump(&s1, "\"hostile-node\"");
        seen2 += sse_pump(&s2, "\"hostile-node\"");
    }
    cr_expect_eq(seen1, (int)valid, "replica 1 streamed %d of %zu events", seen1, valid);
    cr_expect_eq(seen2, (int)valid, "replica 2 streamed %d of %zu events", seen2, valid);
    close(s1.fd);
    close(s2.fd);

    /* Skipped events are counted by reason, cluster-wide and per replica. */
    json_t *st = api(r1, "/api/stats");
    cr_expect_eq(jint(st, "rejected_events.malformed_protobuf"), (int64_t)rejected, "%s",
                 tu_jdump(st));
    cr_expect_eq(jint(st, "rejected.malformed_protobuf"), 0, "no whole batch is lost: %s",
                 tu_jdump(st));
    json_decref(st);
    int64_t per_replica = 0;
    struct proc *rs[] = {r1, r2};
    for (int i = 0; i < 2; i++) {
        struct tu_http mr;
        cr_assert_eq(tu_http_get(rs[i]->port, "/metrics", api_header, &mr), 0);
        int64_t m = metric(mr.body, "ebpf_aggregator_rejected_events_total", "malformed_protobuf");
        cr_expect_geq(m, 0, "%s: no rejected_events metric", rs[i]->name);
        per_replica += m;
        tu_http_free(&mr);
    }
    cr_expect_eq(per_replica, (int64_t)rejected, "the replicas' metrics add up");

    /* Both replicas are alive and answer. */
    for (int i = 0; i < 2; i++)
        check(tu_wait_http(rs[i]->port, "/health", 200, 1000), "%s stopped serving", rs[i]->name);
    for (size_t i = 0; i < nc_crafts; i++)
        pb_craft_free(&crafts[i]);
    natsConnection_Destroy(nc);
    proc_kill(r1, SIGTERM);
    proc_kill(r2, SIGTERM);
}

/*
 * An agent stopped while NATS is unreachable takes its queued batches with it, and no
 * aggregator can ever count them (their sequence numbers end with the instance): the agent
 * says how many in its last words.
 */
Test(e2e_cluster, an_agent_stopped_without_nats_says_what_it_could_not_send)
{
    need_root();
    marker_init('u');
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", tu_free_port()); /* no one */
    const char *const env[] = {"FLUSH_INTERVAL=100ms", "BATCH_SIZE=1", NULL};
    struct proc *a = agent_up("e2e-unsent", env);
    int64_t queued = markers_until(a, "bus.queue_batches", 3);
    proc_kill(a, SIGTERM);
    char *log = tu_read_file(a->log);
    const char *line = log ? strstr(log, " batches (") : NULL;
    check(line != NULL && strstr(line, "events) not sent: NATS unreachable at exit"),
          "no word of the unsent batches in the agent's log");
    /* At least the batches it had queued when asked. */
    while (line > log && line[-1] != ' ')
        line--;
    cr_expect_geq(strtoll(line, NULL, 10), queued);
    free(log);
}

/*
 * An aggregator stopped while NATS is unreachable (systemctl stop during an outage) exits at
 * once, well within its unit's TimeoutStopSec (15 s): its subscriptions have no server to wait
 * for, where each used to wait 2 s for a flush that could not come (16 s in all).
 */
Test(e2e_cluster, an_aggregator_stopped_without_nats_exits_at_once)
{
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", tu_free_port()); /* no one */
    struct proc *r = agg_up("no-nats", NULL, false);
    cr_assert_eq(kill(r->pid, SIGTERM), 0);
    uint64_t start = tu_mono_ms();
    int code = tu_wait_exit(r->pid, 20000);
    uint64_t took = tu_mono_ms() - start;
    r->pid = 0;
    cr_expect_eq(code, 0, "exit status %d after %" PRIu64 " ms", code, took);
    cr_expect_lt(took, 3000, "the aggregator took %" PRIu64 " ms to stop", took);
}

/*
 * A replica that dies takes the counts of the batches it received with it: they must count as
 * lost on the survivor, also those received before the survivor started. The survivor knows
 * from the dead replica's heartbeats how long the cluster has been listening, so it counts an
 * agent younger than that from sequence 1.
 */
Test(e2e_cluster, a_dead_replicas_batches_count_as_lost_on_the_survivor)
{
    need_root();
    nats_up(NULL);
    marker_init('k');
    const char *const aenv[] = {"QUERY_TIMEOUT=500ms", NULL};
    struct proc *r1 = agg_up("k1", aenv, true);
    uint64_t first_started = tu_now_ns(); /* it listens since before it served /health */
    while (tu_now_ns() < first_started + 1500000000ull) /* NODES_HEARD_MARGIN_NS, 1 s */
        usleep(20000);
    const char *const env[] = {"FLUSH_INTERVAL=100ms", "BATCH_SIZE=1", "EVENT_TYPES=exec", NULL};
    struct proc *a = agent_up("e2e-orphan", env);
    markers_until(a, "bus.batches_sent", 6); /* batches that reach r1 alone */
    struct proc *r2 = agg_up("k2", aenv, true);
    wait_cluster(r2, 2); /* r2 has r1's heartbeat, and with it how long the cluster listened */
    for (int i = 0; i < 4; i++)
        run_marker();
    proc_kill(r1, SIGKILL);

    /*
     * Every batch up to seq is on r2: received, or counted lost (r1's among them). A gap shows
     * only once a later batch arrives, and the batches sent just as r1 died may die with it:
     * read the agent's sequence, then make a later batch, until r2 accounts for that sequence.
     */
    int64_t seq = 0, batches = 0, lost = 0;
    for (uint64_t dl = tu_mono_ms() + 15000; tu_mono_ms() < dl; usleep(100000)) {
        node_counts(r2, "e2e-orphan", &batches, &lost, NULL);
        if (seq && batches + lost >= seq)
            break;
        json_t *st = api(a, "/api/stats");
        seq = jint(st, "bus.sequence");
        json_decref(st);
        run_marker();
    }
    cr_log_info("agent sequence %" PRId64 "; r2 received %" PRId64 ", lost %" PRId64, seq, batches,
                lost);
    cr_expect_geq(batches + lost, seq,
                  "batches r1 received before r2 started are counted nowhere: %" PRId64
                  " received + %" PRId64 " lost < %" PRId64 " sent",
                  batches, lost, seq);
    cr_expect_gt(lost, 0, "r1's batches are lost with it");
}

/* ---- resuming the stream ------------------------------------------------- */

#define RESUME_NODE "resume-node"
#define RESUME_SUBJ "ebpf.events.resume-node"

/* What a resumed stream carried: its events' ids in order, its last "id:", its comments. */
struct sse_seen {
    char ids[4096];   /* "id,id,..." of the data lines */
    char last_id[64]; /* the last "id:" field */
    char comments[4096];
};

/* Reads lines for ms milliseconds into seen. */
static void sse_collect(struct sse *s, int ms, struct sse_seen *seen)
{
    for (uint64_t dl = tu_mono_ms() + (uint64_t)ms; tu_mono_ms() < dl;) {
        ssize_t r = read(s->fd, s->part + s->len, sizeof(s->part) - s->len - 1);
        if (r <= 0)
            continue;
        s->len += (size_t)r;
        s->part[s->len] = '\0';
        char *start = s->part, *nl;
        while ((nl = strchr(start, '\n'))) {
            *nl = '\0';
            const char *idp = strstr(start, "\"id\":\"");
            if (strncmp(start, "data:", 5) == 0 && idp)
                snprintf(seen->ids + strlen(seen->ids), sizeof(seen->ids) - strlen(seen->ids),
                         "%s%.16s", seen->ids[0] ? "," : "", idp + 6);
            else if (strncmp(start, "id: ", 4) == 0)
                snprintf(seen->last_id, sizeof(seen->last_id), "%s", start + 4);
            else if (start[0] == ':')
                snprintf(seen->comments + strlen(seen->comments),
                         sizeof(seen->comments) - strlen(seen->comments), "%s\n", start);
            start = nl + 1;
        }
        s->len = strlen(start);
        memmove(s->part, start, s->len + 1);
    }
}

/* The id of the one event of RESUME_NODE's batch seq (pb_batch_of()). */
static const char *resume_id(uint64_t seq, char out[17])
{
    snprintf(out, 17, "%016" PRIx64, (uint64_t)0x5eed000000000000ull + seq * 100000);
    return out;
}

static void resume_publish(natsConnection *nc, uint64_t seq)
{
    size_t len;
    uint8_t *b = pb_batch_of(RESUME_NODE, "00000000000000dd", 0, seq, 1, &len);
    raw_publish(nc, RESUME_SUBJ, "application/x-protobuf", NULL, b, len);
    free(b);
    usleep(2000); /* distinct timestamps, in order */
}

/*
 * A client on r1 sees events 1..k, goes away; events k+1, k+2 happen; it comes back with its
 * last id (by header, or by parameter) on the other replica: it gets exactly those two, then
 * the live ones (one sent while its replay is being asked), each once.
 */
static void resume_scenario(bool by_header)
{
    nats_up(NULL);
    struct proc *r1 = agg_up("s1", NULL, true);
    struct proc *r2 = agg_up("s2", NULL, true);
    wait_cluster(r1, 2);
    natsConnection *nc = raw_conn();
    struct sse s;
    sse_open(&s, r1->port, "/api/events/stream?node=" RESUME_NODE);
    uint64_t seq = 1;
    int seen = 0;
    for (uint64_t dl = tu_mono_ms() + 15000; seen == 0; seq++) {
        check(tu_mono_ms() < dl, "the stream carried no event");
        resume_publish(nc, seq);
        seen += sse_pump(&s, RESUME_NODE);
    }
    resume_publish(nc, seq++); /* one more, on an attached feed */
    struct sse_seen before = {0};
    sse_collect(&s, 500, &before);
    close(s.fd);
    check(before.last_id[0], "no id: field on the stream: %s", before.ids);
    uint64_t missed = seq;
    resume_publish(nc, seq++);
    resume_publish(nc, seq++);
    char q[96];
    snprintf(q, sizeof(q), "/api/events?node=%s&limit=1000", RESUME_NODE);
    json_decref(wait_count(r2, q, (int)(seq - 1), 10000));

    char path[160], hdr[96];
    if (by_header) {
        snprintf(hdr, sizeof(hdr), "Last-Event-ID: %s", before.last_id);
        sse_open_hdr(&s, r2->port, "/api/events/stream?node=" RESUME_NODE, hdr);
    } else {
        snprintf(path, sizeof(path), "/api/events/stream?node=%s&last_event_id=%s", RESUME_NODE,
                 before.last_id);
        sse_open(&s, r2->port, path);
    }
    uint64_t live = seq;
    resume_publish(nc, seq++); /* while the replay is being asked */
    struct sse_seen after = {0};
    sse_collect(&s, 2000, &after);
    resume_publish(nc, seq++);
    sse_collect(&s, 1000, &after);
    close(s.fd);
    natsConnection_Destroy(nc);

    char want[256], id[17];
    snprintf(want, sizeof(want), "%s", resume_id(missed, id));
    for (uint64_t i = missed + 1; i < seq; i++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), ",%s", resume_id(i, id));
    cr_expect_str_eq(after.ids, want,
                     "resumed after %s (seen before: %s, the live one is %s); comments:\n%s",
                     before.last_id, before.ids, resume_id(live, id), after.comments);
    cr_expect_null(strstr(after.comments, "missing"), "nothing is missing: %s", after.comments);
}

Test(e2e_cluster, a_stream_resumed_by_last_event_id_gets_what_it_missed_once)
{
    resume_scenario(true);
}

Test(e2e_cluster, a_stream_resumed_by_parameter_gets_what_it_missed_once)
{
    resume_scenario(false);
}

/* A position older than the history: the client is told events may be missing, then gets
 * what the history holds. A malformed id is a 400 that names where it came from. */
Test(e2e_cluster, a_stream_resumed_too_late_says_events_are_missing)
{
    nats_up(NULL);
    struct proc *r = agg_up("old", NULL, true);
    natsConnection *nc = raw_conn();
    resume_publish(nc, 1);
    char q[96];
    snprintf(q, sizeof(q), "/api/events?node=%s", RESUME_NODE);
    json_decref(wait_count(r, q, 1, 10000));
    natsConnection_Destroy(nc);

    struct sse s;
    sse_open_hdr(&s, r->port, "/api/events/stream?node=" RESUME_NODE,
                 "Last-Event-ID: 0000000000000001-0000000000000001");
    struct sse_seen seen = {0};
    sse_collect(&s, 1500, &seen);
    close(s.fd);
    char id[17];
    cr_expect(strstr(seen.comments, ": missing") != NULL, "no missing notice; comments:\n%s",
              seen.comments);
    cr_expect_str_eq(seen.ids, resume_id(1, id), "what the history holds is replayed");

    int status = 0;
    json_t *j = tu_get_json_hdr(r->port, "/api/events/stream", "Last-Event-ID: nope", &status);
    cr_expect_eq(status, 400);
    const char *msg = j ? tu_jstr(j, "error") : NULL;
    cr_expect(msg && strstr(msg, "Last-Event-ID"), "%s", tu_jdump(j));
    json_decref(j);
    j = tu_get_json(r->port, "/api/events/stream?last_event_id=12-zz", &status);
    cr_expect_eq(status, 400);
    msg = j ? tu_jstr(j, "error") : NULL;
    cr_expect(msg && strstr(msg, "'last_event_id'"), "%s", tu_jdump(j));
    json_decref(j);
    j = tu_get_json(r->port, "/api/events?last_event_id=0000000000000001-0000000000000001",
                    &status);
    cr_expect_eq(status, 400, "the parameter is the stream's only");
    json_decref(j);
}

/*
 * A browser's own EventSource (tests/js/eventsource_check.mjs) follows the stream of replica s1
 * from a page s1 serves; s1 is stopped and started again on the same port, and the events of
 * the gap land on s2. The browser reconnects by itself with the Last-Event-ID it kept (after
 * the stream's retry:, and again while s1 is down: a refused connection is retried too); the
 * restarted s1, whose own history is empty, replays the gap from s2, then goes live: the page
 * has every event once, in order.
 */
Test(e2e_cluster, a_browsers_eventsource_resumes_across_a_replica_restart, .timeout = 120)
{
    const char *node = node_bin();
    cr_assert(node, "node (Node.js) is not installed: run make deps");
    cr_assert_eq(access(tu_repo_path("tests/js/node_modules/playwright-core/package.json"), F_OK),
                 0, "npm packages of tests/js are missing: run make deps");
    if (access("/usr/bin/chromium", X_OK) != 0 && getenv("CHROMIUM") == NULL)
        cr_skip_test("chromium is not installed: run make deps");
    nats_up(NULL);
    struct proc *r1 = agg_up("s1", NULL, true);
    struct proc *r2 = agg_up("s2", NULL, true);
    wait_cluster(r1, 2);
    natsConnection *nc = raw_conn();

    enum { BEFORE = 3, GAP = 3, AFTER = 3, ALL = BEFORE + GAP + AFTER };
    char want[ALL * 18 + 16] = "WANT=", id[17];
    for (uint64_t seq = 1; seq <= ALL; seq++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s", seq > 1 ? "," : "",
                 resume_id(seq, id));
    char url[64], script[256], got[16];
    snprintf(url, sizeof(url), "AGGREGATOR_URL=http://127.0.0.1:%d", r1->port);
    snprintf(script, sizeof(script), "%s", tu_repo_path("tests/js/eventsource_check.mjs"));
    char *env[] = {url, want, "NODE=" RESUME_NODE, NULL};
    char *argv[] = {(char *)node, script, NULL};
    struct proc *es = proc_new("eventsource");
    es->pid = tu_spawn(argv, env, es->log);
    wait_log(es, "opened 1", 1, 30000);

    uint64_t seq = 1;
    while (seq <= BEFORE)
        resume_publish(nc, seq++);
    snprintf(got, sizeof(got), "got %d\n", BEFORE);
    wait_log(es, got, 1, 10000);

    int port = r1->port;
    proc_kill(r1, SIGTERM);
    wait_log(es, "error 1", 1, 10000); /* the browser saw the stream end */
    uint64_t gap_from = tu_now_ns();
    while (seq <= BEFORE + GAP)
        resume_publish(nc, seq++);
    char q[128];
    snprintf(q, sizeof(q), "/api/events?node=%s&since=%" PRIu64, RESUME_NODE, gap_from);
    json_decref(wait_count(r2, q, GAP, 10000)); /* s2 alone holds the gap */
    wait_log(es, "error 3", 1, 15000);          /* its reconnects were refused: it keeps trying */
    agg_up_on("s1", NULL, false, port);
    wait_log(es, "opened 2", 1, 20000); /* by itself */
    while (seq <= ALL)
        resume_publish(nc, seq++);
    natsConnection_Destroy(nc);

    int code = tu_wait_exit(es->pid, 60000);
    es->pid = 0;
    char *log = tu_read_file(es->log);
    check(code == 0 && log && strstr(log, "eventsource: pass"),
          "eventsource_check.mjs (exit code %d):\n%s", code, log ? log : "(no output)");
    cr_log_info("%s", log);
    free(log);
}

/*
 * The bus as deployed on Kubernetes, end to end: real nats-servers on free
 * loopback ports running the manifests' own NATS configuration
 * (manifests/nats/auth.conf for the users and their permissions, and
 * manifests/nats/nats.conf for the three-server cluster), read at test time
 * so that what is tested is what is deployed. Real bin/ebpf-agent and
 * bin/ebpf-aggregator processes log in with their roles' credentials; a
 * nats.c client tries what the roles must not do.
 *
 * Everything is started here and stopped by PID. Tests that run an agent
 * need root (eBPF); they say so when skipped.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define MAX_PROCS    12
#define NATS_SERVERS 3

/* The users of manifests/nats/auth.conf and the variables their passwords come from. */
#define AGENT_USER         "ebpf-agent"
#define AGENT_PASSWORD_ENV "NATS_AGENT_PASSWORD"
#define AGG_USER           "ebpf-aggregator"
#define AGG_PASSWORD_ENV   "NATS_AGGREGATOR_PASSWORD"
#define ROUTE_PASSWORD_ENV "NATS_ROUTE_PASSWORD"
/* In manifests/nats/nats.conf, moved to a free port and a temporary directory here. */
#define MANIFEST_CLUSTER_LISTEN "0.0.0.0:6222"
#define MANIFEST_STORE_DIR      "/data/jetstream"

/* A process this suite started; stopped by PID in fini. */
struct proc {
    pid_t pid;
    int port;     /* HTTP port (agent, aggregator) or client port (nats-server) */
    int aux_port; /* nats-server: monitoring port */
    char name[64];
    char log[256];
};

static struct proc procs[MAX_PROCS];
static size_t nprocs;
static char workdir[96];

/* Per-run random passwords, as scripts/deploy.sh would make them. */
static char agent_pw[48], agg_pw[48], route_pw[48];

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

static void random_password(char *out, size_t len)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[40];
    FILE *f = fopen("/dev/urandom", "r");
    cr_assert(f && fread(raw, 1, sizeof(raw), f) == sizeof(raw), "cannot read /dev/urandom");
    fclose(f);
    size_t n = len - 1 < sizeof(raw) ? len - 1 : sizeof(raw);
    for (size_t i = 0; i < n; i++)
        out[i] = alnum[raw[i] % (i == 0 ? 52 : sizeof(alnum) - 1)]; /* a letter first */
    out[n] = '\0';
}

static void suite_init(void)
{
    snprintf(workdir, sizeof(workdir), "/tmp/ebpf-e2e-bus-auth-%d", getpid());
    mkdir(workdir, 0755);
    nprocs = 0;
    random_password(agent_pw, sizeof(agent_pw));
    random_password(agg_pw, sizeof(agg_pw));
    random_password(route_pw, sizeof(route_pw));
}

static void suite_fini(void)
{
    /* Clients first (started after the servers), then the servers. */
    for (size_t i = nprocs; i-- > 0;) {
        if (procs[i].pid > 0)
            tu_stop(procs[i].pid, 10000);
        procs[i].pid = 0;
    }
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", workdir);
    if (system(cmd) != 0)
        cr_log_warn("could not remove %s", workdir);
}

TestSuite(e2e_bus_auth, .init = suite_init, .fini = suite_fini, .timeout = 150);

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
    char name[sizeof(p->name)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    memcpy(p->name, name, sizeof(name));
    snprintf(p->log, sizeof(p->log), "%s/%zu-%s.log", workdir, nprocs, name);
    return p;
}

/* ---- nats-server with the manifests' configuration ---------------------- */

/* manifests/nats/<name> as text (malloc'd); fails the test when unreadable. */
static char *manifest_file(const char *name)
{
    char rel[128];
    snprintf(rel, sizeof(rel), "manifests/nats/%s", name);
    char *s = tu_read_file(tu_repo_path(rel));
    cr_assert_not_null(s, "cannot read %s", rel);
    return s;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
    cr_assert_eq(fputs(text, f) >= 0 && fclose(f) == 0, true, "cannot write %s", path);
}

/* The environment every server gets: what the StatefulSet feeds from the Secrets. */
static void set_password_env(void)
{
    setenv(AGENT_PASSWORD_ENV, agent_pw, 1);
    setenv(AGG_PASSWORD_ENV, agg_pw, 1);
    setenv(ROUTE_PASSWORD_ENV, route_pw, 1);
}

/*
 * Starts one nats-server from dir/nats.conf on a free client port, with its
 * monitoring port moved to a free one. The caller has written dir/nats.conf
 * and put the environment in place.
 */
static struct proc *nats_start(const char *name, const char *dir)
{
    struct proc *p = proc_new("%s", name);
    char conf[256], mport[16];
    snprintf(conf, sizeof(conf), "%s/nats.conf", dir);
    p->port = tu_free_port();
    p->aux_port = tu_free_port();
    snprintf(mport, sizeof(mport), "%d", p->aux_port);
    const char *const extra[] = {"-c", conf, "-m", mport, NULL};
    p->pid = tu_nats_start(p->port, extra, p->log);
    check(p->pid > 0, "%s did not start on port %d", name, p->port);
    return p;
}

/*
 * One server whose only configuration is manifests/nats/auth.conf, copied
 * as it is: the users, their passwords' variables and their permissions.
 */
static struct proc *nats_auth_up(void)
{
    char dir[160], path[200];
    snprintf(dir, sizeof(dir), "%s/nats", workdir);
    mkdir(dir, 0755);
    char *auth = manifest_file("auth.conf");
    snprintf(path, sizeof(path), "%s/auth.conf", dir);
    write_file(path, auth);
    free(auth);
    snprintf(path, sizeof(path), "%s/nats.conf", dir);
    write_file(path, "include ./auth.conf\n");
    set_password_env();
    return nats_start("nats-server", dir);
}

/* ---- nats.c clients ------------------------------------------------------ */

/* What the server told a client asynchronously (permission violations). */
struct probe {
    natsConnection *nc;
    pthread_mutex_t lock;
    char errors[2048]; /* every asynchronous error, one per line */
    int nerrors;
};

static void probe_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    struct probe *p = closure;
    const char *text = NULL;
    natsConnection_GetLastError(nc, &text);
    pthread_mutex_lock(&p->lock);
    size_t len = strlen(p->errors);
    snprintf(p->errors + len, sizeof(p->errors) - len, "%s\n",
             text && *text ? text : natsStatus_GetText(err));
    p->nerrors++;
    pthread_mutex_unlock(&p->lock);
}

/* Connects as user/password; returns the status (NATS_OK or the refusal). */
static natsStatus probe_connect(struct probe *p, int port, const char *user, const char *password)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, url);
    if (s == NATS_OK && user)
        s = natsOptions_SetUserInfo(o, user, password);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, probe_on_error, p);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, 0);
    if (s == NATS_OK)
        s = natsConnection_Connect(&p->nc, o);
    natsOptions_Destroy(o);
    return s;
}

static void probe_close(struct probe *p)
{
    natsConnection_Destroy(p->nc);
    p->nc = NULL;
    pthread_mutex_destroy(&p->lock);
}

/*
 * Waits until the server has answered everything sent so far (PING/PONG)
 * and then until an asynchronous error containing needle arrived, or
 * timeout_ms passed. The server sends a violation before the PONG, but
 * nats.c hands it to the error callback on another thread.
 */
static bool probe_saw(struct probe *p, const char *needle, int timeout_ms)
{
    natsConnection_FlushTimeout(p->nc, timeout_ms);
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        bool seen = strstr(p->errors, needle) != NULL;
        pthread_mutex_unlock(&p->lock);
        if (seen)
            return true;
        if (tu_mono_ms() > deadline)
            return false;
        usleep(10000);
    }
}

/* The subscription violation the server reports for subject. */
static void violation(char *out, size_t len, const char *what, const char *subject)
{
    snprintf(out, len, "Permissions Violation for %s to \"%s\"", what, subject);
}

/* ---- agents and aggregators --------------------------------------------- */

static void nats_urls(char *out, size_t len, struct proc *const servers[], size_t n)
{
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(out + off, off < len ? len - off : 0, "%snats://127.0.0.1:%d",
                                i ? "," : "", servers[i]->port);
}

static struct proc *client_up(const char *bin_rel, const char *name, const char *urls,
                              const char *user, const char *password, const char *const extra[])
{
    struct proc *p = proc_new("%s", name);
    p->port = tu_free_port();
    char bin[256], listen[32];
    snprintf(bin, sizeof(bin), "%s", tu_repo_path(bin_rel));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
    static char envbuf[MAX_PROCS][3][160];
    char(*e)[160] = envbuf[nprocs - 1];
    snprintf(e[0], sizeof(e[0]), "NATS_USER=%s", user);
    snprintf(e[1], sizeof(e[1]), "NATS_PASSWORD=%s", password);
    snprintf(e[2], sizeof(e[2]), "NATS_URL=%s", urls);
    char *env[16] = {e[0], e[1], e[2]};
    size_t n = 3;
    for (size_t i = 0; extra && extra[i] && n + 1 < sizeof(env) / sizeof(env[0]); i++)
        env[n++] = (char *)extra[i];
    env[n] = NULL;
    char *argv[] = {bin, "--listen-addr", listen, NULL};
    p->pid = tu_spawn(argv, env, p->log);
    return p;
}

static struct proc *agent_up(const char *node, const char *urls, const char *const extra[])
{
    need_root();
    char name[64];
    snprintf(name, sizeof(name), "agent-%s", node);
    const char *env[12] = {NULL};
    static char node_env[64];
    snprintf(node_env, sizeof(node_env), "NODE_NAME=%s", node);
    size_t n = 0;
    env[n++] = node_env;
    for (size_t i = 0; extra && extra[i] && n + 1 < 12; i++)
        env[n++] = extra[i];
    struct proc *p = client_up("bin/ebpf-agent", name, urls, AGENT_USER, agent_pw, env);
    check(tu_wait_http(p->port, "/ready", 200, 30000), "agent %s not ready", node);
    return p;
}

static struct proc *agg_up(const char *name, const char *urls, const char *const extra[])
{
    char pname[64];
    snprintf(pname, sizeof(pname), "aggregator-%s", name);
    struct proc *p = client_up("bin/ebpf-aggregator", pname, urls, AGG_USER, agg_pw, extra);
    check(tu_wait_http(p->port, "/ready", 200, 15000), "aggregator %s not ready", name);
    return p;
}

/* ---- JSON access -------------------------------------------------------- */

/* Dotted path lookup: "bus.events_sent". */
/* GET that must answer 200 with JSON. */
static json_t *api(struct proc *p, const char *fmt, ...)
{
    char path[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    int status = 0;
    json_t *j = tu_get_json_hdr(p->port, path, NULL, &status);
    check(j && status == 200, "%s: GET %s -> %d %s", p->name, path, status, tu_jdump(j));
    return j;
}

/* Polls an aggregator query until it returns want events with every replica answering. */
static void wait_count(struct proc *p, const char *query, int want, int replicas, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        json_t *r = api(p, "%s", query);
        bool done = tu_jpath_int(r, "count") == want &&
                    tu_jpath_int(r, "replicas.answered") == replicas &&
                    tu_jpath_int(r, "replicas.expected") == replicas;
        if (done) {
            json_decref(r);
            return;
        }
        if (tu_mono_ms() > deadline) {
            dump_logs();
            cr_assert_fail("%s: %s gave %" PRId64 " events from %" PRId64 "/%" PRId64
                           " replicas, want %d from %d: %s",
                           p->name, query, tu_jpath_int(r, "count"),
                           tu_jpath_int(r, "replicas.answered"),
                           tu_jpath_int(r, "replicas.expected"), want, replicas, tu_jdump(r));
        }
        json_decref(r);
        usleep(50000);
    }
}

/* ---- real activity ------------------------------------------------------ */

static char marker_path[160];
static char marker_name[16];

/* A symlink to /bin/true whose name becomes the exec'd task's comm. */
static void marker_init(char tag)
{
    snprintf(marker_name, sizeof(marker_name), "b%05d%c", getpid() % 100000, tag);
    tu_marker_make(workdir, marker_name, marker_path, sizeof(marker_path));
}

/* Runs the marker program once; returns the child's pid. */
static pid_t run_marker(void)
{
    return tu_marker_run(marker_path, marker_name);
}

/* Events while the servers fail: loopback connections until told to stop. */
struct flow {
    pthread_t thread;
    bool stop;
    uint64_t connections;
};

static void *flow_main(void *arg)
{
    struct flow *f = arg;
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sa);
        if (l >= 0 && bind(l, (struct sockaddr *)&sa, len) == 0 && listen(l, 4) == 0 &&
            getsockname(l, (struct sockaddr *)&sa, &len) == 0) {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (c >= 0 && connect(c, (struct sockaddr *)&sa, len) == 0) {
                int a = accept(l, NULL, NULL);
                if (a >= 0)
                    close(a);
                f->connections++;
            }
            if (c >= 0)
                close(c);
        }
        if (l >= 0)
            close(l);
        usleep(2000);
    }
    return NULL;
}

static void flow_start(struct flow *f)
{
    memset(f, 0, sizeof(*f));
    cr_assert_eq(pthread_create(&f->thread, NULL, flow_main, f), 0);
}

static uint64_t flow_stop(struct flow *f)
{
    __atomic_store_n(&f->stop, true, __ATOMIC_RELEASE);
    pthread_join(f->thread, NULL);
    return f->connections;
}

/* ---- one server: each role can do its job, and nothing else --------------- */

/* Every message a sync subscription holds right now, as one string (malloc'd). */
static char *drain(natsSubscription *sub)
{
    size_t cap = 4096, len = 0;
    char *out = calloc(1, cap);
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, sub, 1) == NATS_OK) {
        const char *d = natsMsg_GetData(m);
        int n = natsMsg_GetDataLength(m);
        if (len + (size_t)n + 2 > cap)
            out = realloc(out, cap = (len + (size_t)n + 2) * 2);
        memcpy(out + len, d, (size_t)n);
        len += (size_t)n;
        out[len++] = '\n';
        out[len] = '\0';
        natsMsg_Destroy(m);
    }
    return out;
}

Test(e2e_bus_auth, each_role_does_its_job_and_nothing_else)
{
    need_root();
    struct proc *nats = nats_auth_up();
    char urls[256], q[256], want[160];
    nats_urls(urls, sizeof(urls), &nats, 1);
    marker_init('a');
    const char *const aenv[] = {"QUERY_TIMEOUT=1s", NULL};
    struct proc *r1 = agg_up("r1", urls, aenv);
    struct proc *r2 = agg_up("r2", urls, aenv);
    const char *const env[] = {"FLUSH_INTERVAL=100ms", NULL};
    struct proc *a = agent_up("e2e-auth", urls, env);

    /* Events flow agent -> aggregators; replicas query each other (control + inboxes). */
    pid_t pid = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-auth", pid);
    wait_count(r1, q, 1, 2, 15000);
    wait_count(r2, q, 1, 2, 15000);
    /* Neither side ran into a permission it lacks. */
    json_t *s = api(a, "/api/stats");
    cr_expect(json_is_true(tu_jpath(s, "bus.connected")), "agent bus: %s",
              tu_jdump(tu_jpath(s, "bus")));
    cr_expect_eq(tu_jpath_int(s, "bus.async_errors"), 0, "agent bus: %s",
                 tu_jdump(tu_jpath(s, "bus")));
    json_decref(s);
    struct proc *aggs[] = {r1, r2};
    for (int i = 0; i < 2; i++) {
        s = api(aggs[i], "/api/stats");
        cr_expect_eq(tu_jpath_int(s, "bus.async_errors"), 0, "%s bus: %s", aggs[i]->name,
                     tu_jdump(tu_jpath(s, "bus")));
        json_decref(s);
    }

    /* A spy with the aggregator's credentials, to see what gets through. */
    struct probe spy;
    cr_assert_eq(probe_connect(&spy, nats->port, AGG_USER, agg_pw), NATS_OK,
                 "the aggregator's credentials are refused");
    natsSubscription *spy_ctl = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&spy_ctl, spy.nc, "ebpf.control.>"), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(spy.nc, 5000), NATS_OK);

    /* The agent's credentials: no subscription at all. */
    struct probe ag;
    cr_assert_eq(probe_connect(&ag, nats->port, AGENT_USER, agent_pw), NATS_OK,
                 "the agent's credentials are refused");
    static const char *const no_sub[] = {"ebpf.events.>", "ebpf.events.e2e-auth", "ebpf.control.>",
                                         "_INBOX.>", ">"};
    natsSubscription *subs[5] = {NULL};
    for (size_t i = 0; i < 5; i++) {
        natsConnection_SubscribeSync(&subs[i], ag.nc, no_sub[i]);
        violation(want, sizeof(want), "Subscription", no_sub[i]);
        check(probe_saw(&ag, want, 5000), "agent credentials: no refusal to subscribe to %s: %s",
              no_sub[i], ag.errors);
    }
    /* Nor publishing anywhere but the events subjects: a forged replica, query or reply. */
    static const char *const no_pub[] = {"ebpf.control.ebpf-aggregator.heartbeat",
                                         "ebpf.control.ebpf-aggregator.query", "_INBOX.forged.1",
                                         "forged"};
    const char *forged = "{\"replica\":\"forged-by-agent\",\"leaving\":false}";
    for (size_t i = 0; i < 4; i++) {
        natsConnection_PublishString(ag.nc, no_pub[i], forged);
        violation(want, sizeof(want), "Publish", no_pub[i]);
        check(probe_saw(&ag, want, 5000), "agent credentials: no refusal to publish to %s: %s",
              no_pub[i], ag.errors);
    }

    /*
     * Nothing got through: new events reach the aggregators (the server has
     * passed on everything published before them), yet the agent's refused
     * subscriptions hold nothing and the spy saw no forged message.
     */
    pid = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-auth", pid);
    wait_count(r1, q, 1, 2, 15000);
    cr_assert_eq(natsConnection_FlushTimeout(ag.nc, 5000), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(spy.nc, 5000), NATS_OK);
    for (size_t i = 0; i < 5; i++) {
        int msgs = 0, bytes = 0;
        natsSubscription_GetPending(subs[i], &msgs, &bytes);
        cr_expect_leq(msgs, 0, "agent credentials received %d messages on %s", msgs, no_sub[i]);
        natsSubscription_Destroy(subs[i]);
    }
    char *seen = drain(spy_ctl);
    cr_expect_null(strstr(seen, "forged-by-agent"), "a forged control message got through:\n%s",
                   seen);
    cr_expect_not_null(strstr(seen, "\"replica\""), "the spy saw no heartbeat at all:\n%s", seen);
    free(seen);
    probe_close(&ag);

    /* The aggregator's credentials may not publish events. */
    natsConnection_PublishString(spy.nc, "ebpf.events.forged", "x");
    violation(want, sizeof(want), "Publish", "ebpf.events.forged");
    check(probe_saw(&spy, want, 5000), "aggregator credentials: no refusal to publish events: %s",
          spy.errors);
    natsConnection_Close(spy.nc); /* first: heartbeats keep coming (see bus_sub_end()) */
    natsSubscription_Destroy(spy_ctl);
    probe_close(&spy);

    /* No anonymous user, and a wrong password is refused. */
    struct probe anon;
    natsStatus st = probe_connect(&anon, nats->port, NULL, NULL);
    cr_expect_neq(st, NATS_OK, "an anonymous client may connect");
    probe_close(&anon);
    st = probe_connect(&anon, nats->port, AGENT_USER, "wrong");
    cr_expect_neq(st, NATS_OK, "a wrong agent password is accepted");
    probe_close(&anon);

    /*
     * An agent publishing where its user may not (a SUBJECT_PREFIX changed without the
     * server's permissions) is told so by the server on every batch: it says so in its log,
     * in /api/stats and in /metrics, rather than looking sent.
     */
    const char *const denied_env[] = {"FLUSH_INTERVAL=100ms", "SUBJECT_PREFIX=ebpf.elsewhere",
                                      NULL};
    struct proc *denied = agent_up("e2e-denied", urls, denied_env);
    tu_tcp_roundtrip();
    violation(want, sizeof(want), "Publish", "ebpf.elsewhere.e2e-denied");
    char *log = NULL;
    for (uint64_t deadline = tu_mono_ms() + 15000;; free(log)) {
        log = tu_read_file(denied->log);
        if (log && strstr(log, want))
            break;
        check(tu_mono_ms() < deadline, "no \"%s\" in the agent's log: %s", want, log);
        usleep(50000);
    }
    free(log);
    s = api(denied, "/api/stats");
    cr_expect(strstr(tu_jpath_str(s, "bus.last_error"), "Permissions Violation"), "%s",
              tu_jdump(tu_jpath(s, "bus")));
    cr_expect_geq(tu_jpath_int(s, "bus.async_errors"), 1);
    json_decref(s);
    struct tu_http m;
    cr_assert_eq(tu_http_get(denied->port, "/metrics", NULL, &m), 0);
    const char *line = strstr(m.body, "\nebpf_agent_bus_async_errors_total ");
    cr_expect(line && atoll(line + strlen("\nebpf_agent_bus_async_errors_total ")) >= 1,
              "/metrics: %s", line ? line : "no ebpf_agent_bus_async_errors_total");
    tu_http_free(&m);

    /* The aggregators still answer, for both replicas and nobody else. */
    pid = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-auth", pid);
    wait_count(r1, q, 1, 2, 15000);
    wait_count(r2, q, 1, 2, 15000);
}

/* ---- three servers: the agent fails over, nothing is silently lost --------- */

/* text with the one occurrence of from replaced by to (malloc'd). */
static char *replace_once(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    cr_assert_not_null(at, "\"%s\" not found", from);
    cr_assert_null(strstr(at + 1, from), "\"%s\" found twice", from);
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return out;
}

/* Waits until server has routes to n other servers (distinct peers: 2.10 pools routes). */
static void wait_routes(struct proc *server, int n)
{
    uint64_t deadline = tu_mono_ms() + 20000;
    for (;;) {
        int st = 0;
        json_t *j = tu_get_json_hdr(server->aux_port, "/routez", NULL, &st);
        json_t *peers = json_object(), *route;
        size_t i;
        json_array_foreach(json_object_get(j, "routes"), i, route)
        {
            json_object_set(peers, tu_jpath_str(route, "remote_id"), json_true());
        }
        int64_t got = (int64_t)json_object_size(peers);
        json_decref(peers);
        json_decref(j);
        if (got == n)
            return;
        check(tu_mono_ms() < deadline, "%s has %" PRId64 " routes, want %d", server->name, got, n);
        usleep(50000);
    }
}

/* The aggregator-side view of one node, merged over the replicas. */
static void node_counts(struct proc *r, const char *node, int64_t *batches, int64_t *lost,
                        int64_t *events)
{
    json_t *s = api(r, "/api/stats");
    json_t *n = json_object_get(json_object_get(s, "nodes"), node);
    *batches = tu_jpath_int(n, "batches");
    *lost = tu_jpath_int(n, "lost_batches");
    *events = tu_jpath_int(n, "events");
    json_decref(s);
}

Test(e2e_bus_auth, three_servers_agent_fails_over_and_loss_is_counted)
{
    need_root();
    /* The manifests' own server config, with its cluster port moved to a free one. */
    char *conf = manifest_file("nats.conf");
    char *auth = manifest_file("auth.conf");
    int cport[NATS_SERVERS];
    for (int i = 0; i < NATS_SERVERS; i++)
        cport[i] = tu_free_port();
    set_password_env();
    /* The routes as the StatefulSet's env gives them, on loopback. */
    for (int i = 0; i < NATS_SERVERS; i++) {
        char k[32], v[160];
        snprintf(k, sizeof(k), "NATS_ROUTE_%d", i);
        snprintf(v, sizeof(v), "nats://route:%s@127.0.0.1:%d", route_pw, cport[i]);
        setenv(k, v, 1);
    }
    struct proc *servers[NATS_SERVERS];
    for (int i = 0; i < NATS_SERVERS; i++) {
        char dir[160], path[200], listen[32], name[16];
        snprintf(dir, sizeof(dir), "%s/nats-%d", workdir, i);
        mkdir(dir, 0755);
        snprintf(path, sizeof(path), "%s/auth.conf", dir);
        write_file(path, auth);
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", cport[i]);
        snprintf(path, sizeof(path), "%s/jetstream", dir);
        char *moved = replace_once(conf, MANIFEST_CLUSTER_LISTEN, listen);
        char *mine = replace_once(moved, MANIFEST_STORE_DIR, path);
        snprintf(path, sizeof(path), "%s/nats.conf", dir);
        write_file(path, mine);
        free(moved);
        free(mine);
        snprintf(name, sizeof(name), "nats-%d", i);
        setenv("POD_NAME", name, 1);
        servers[i] = nats_start(name, dir);
    }
    free(conf);
    free(auth);
    for (int i = 0; i < NATS_SERVERS; i++)
        wait_routes(servers[i], NATS_SERVERS - 1);

    /* The agent on nats-0, the replicas on nats-1 and nats-2: batches cross the routes. */
    char agent_urls[256], r1_urls[256], r2_urls[256], q[256], s0[64];
    struct proc *order0[] = {servers[0], servers[1], servers[2]};
    struct proc *order1[] = {servers[1], servers[2], servers[0]};
    struct proc *order2[] = {servers[2], servers[0], servers[1]};
    nats_urls(agent_urls, sizeof(agent_urls), order0, 3);
    nats_urls(r1_urls, sizeof(r1_urls), order1, 3);
    nats_urls(r2_urls, sizeof(r2_urls), order2, 3);
    snprintf(s0, sizeof(s0), "127.0.0.1:%d", servers[0]->port);
    marker_init('h');
    const char *const aenv[] = {"QUERY_TIMEOUT=1s", NULL};
    struct proc *r1 = agg_up("r1", r1_urls, aenv);
    struct proc *r2 = agg_up("r2", r2_urls, aenv);
    /* One event per batch: batch sequence numbers count events. */
    const char *const env[] = {"FLUSH_INTERVAL=100ms", "BATCH_SIZE=1", NULL};
    struct proc *a = agent_up("e2e-ha", agent_urls, env);
    json_t *s = api(a, "/api/stats");
    check(strstr(tu_jpath_str(s, "bus.server"), s0), "agent not on nats-0 (%s): %s", s0,
          tu_jdump(tu_jpath(s, "bus")));
    json_decref(s);
    pid_t pid = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-ha", pid);
    wait_count(r1, q, 1, 2, 15000);

    /* Kill the agent's server while events flow. */
    struct flow flow;
    flow_start(&flow);
    for (int i = 0; i < 20; i++)
        tu_tcp_roundtrip();
    kill(servers[0]->pid, SIGKILL);
    waitpid(servers[0]->pid, NULL, 0);
    servers[0]->pid = 0;
    uint64_t t_kill = tu_mono_ms();
    int answers = 0;
    for (;;) {
        /* The aggregators were not on the dead server: they keep answering, both. */
        json_t *r = api(r1, "/api/events?limit=1");
        cr_expect_eq(tu_jpath_int(r, "replicas.answered"), 2, "during the failover: %s",
                     tu_jdump(tu_jpath(r, "replicas")));
        answers++;
        json_decref(r);
        s = api(a, "/api/stats");
        bool moved = json_is_true(tu_jpath(s, "bus.connected")) &&
                     tu_jpath_int(s, "bus.reconnects") >= 1 && *tu_jpath_str(s, "bus.server") &&
                     !strstr(tu_jpath_str(s, "bus.server"), s0);
        if (moved) {
            cr_log_info("agent moved to %s after %" PRIu64 " ms", tu_jpath_str(s, "bus.server"),
                        tu_mono_ms() - t_kill);
            json_decref(s);
            break;
        }
        check(tu_mono_ms() - t_kill < 20000, "agent did not reconnect to another server: %s",
              tu_jdump(tu_jpath(s, "bus")));
        json_decref(s);
        usleep(20000);
    }
    cr_expect_gt(answers, 0);
    /* Some more events on the new server, then quiet again. */
    for (int i = 0; i < 20; i++)
        tu_tcp_roundtrip();
    uint64_t conns = flow_stop(&flow);
    cr_log_info("%" PRIu64 " loopback connections during the failover", conns);
    pid = run_marker();
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d&node=e2e-ha", pid);
    wait_count(r1, q, 1, 2, 15000);
    wait_count(r2, q, 1, 2, 15000);

    /*
     * Nothing silently missing: every batch (= event) the agent numbered
     * reached the cluster or is counted lost there (a sequence gap). The
     * agent keeps publishing, so the cluster's view is read between two
     * readings of the agent's counter.
     */
    uint64_t deadline = tu_mono_ms() + 20000;
    int64_t before = 0, after = 0, got = 0, lost = 0, events = 0;
    for (;;) {
        s = api(a, "/api/stats");
        before = tu_jpath_int(s, "bus.sequence");
        json_decref(s);
        node_counts(r1, "e2e-ha", &got, &lost, &events);
        s = api(a, "/api/stats");
        after = tu_jpath_int(s, "bus.sequence");
        json_decref(s);
        if (before > 0 && before <= got + lost && got + lost <= after)
            break;
        check(tu_mono_ms() < deadline,
              "agent numbered %" PRId64 "..%" PRId64 " batches, cluster has %" PRId64 " + %" PRId64
              " lost",
              before, after, got, lost);
        usleep(100000);
    }
    s = api(a, "/api/stats");
    cr_log_info("failover: agent sent %" PRId64 " batches (sequence %" PRId64 "..%" PRId64
                "), cluster received %" PRId64 " with %" PRId64 " events, counted %" PRId64
                " lost; agent dropped %" PRId64,
                tu_jpath_int(s, "bus.batches_sent"), before, after, got, events, lost,
                tu_jpath_int(s, "bus.batches_dropped"));
    json_decref(s);
    cr_expect_eq(events, got, "BATCH_SIZE=1, yet %" PRId64 " events in %" PRId64 " batches", events,
                 got);
}

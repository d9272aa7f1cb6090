/*
 * End to end, Kubernetes mode: the real bin/ebpf-agent with
 * DEPLOYMENT_MODE=kubernetes against a fake API server on loopback
 * (tests/helpers/k8s_api_server.c: a real-format PodList and watch stream),
 * real kubepods cgroups for both cgroup drivers, and real processes in them
 * that exec a marker program and make a TCP connection. Asserts over the
 * agent's HTTP API that their exec, connection and exit events name the right
 * pod, that host processes are not attributed, that pods added and deleted
 * through the watch are named, that an expired watch re-lists, that the agent
 * reports its own identity and the API connection in /api/stats, and that
 * attribution from cgroups goes on while the API server is down. Identity:
 * a Deployment's pod (ReplicaSet owner, pod-template-hash) and a CronJob's
 * (through its Job, which the server serves) name their workload, and two
 * pods talking over their pod IPs (addresses on the loopback of a network
 * namespace the test makes) name each other as peers in their connection,
 * accept and close events, while an address hostNetwork pods share names
 * no one. A process in a pod that resolves a name through a DNS server of the
 * test's gets a dns event naming its pod, and its connection to the answer
 * carries peer_dns, which another pod's connection to the same address does
 * not. Needs root (eBPF, cgroups); skipped otherwise.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus_message.h"
#include "fixtures/k8s/kubepods.h"
#include "k8s_api_server.h"
#include "testutil.h"

#define NODE      "e2e-k8s-node-1"
#define AGENT_POD "ebpf-monitor-abcde"
#define AGENT_NS  "ebpf-system"
#define TOKEN     "eyJhbGciOiJSUzI1NiIsImtpZCI6ImUyZSJ9.e2e-token"
#define MARKER    "k8s-marker" /* the program the pods' processes exec (comm) */
#define LIST_RV   1000

struct pod {
    const char *name, *ns;
    bool systemd;                /* cgroup driver */
    const char *workload, *kind; /* k8s_workload and k8s_workload_kind it should show */
    struct kas_pod api;          /* owner, labels, IPs as the API server has them */
    char uid[37], cid[65];
    char rel[KP_REL_MAX]; /* its container's cgroup, relative to the cgroup root */
};

/* A process made by the test: in a pod's container cgroup, or on the host (rel ""). */
struct proc {
    pid_t pid;
    int hold; /* the process exits when this closes */
    char rel[KP_REL_MAX];
};

#define MAX_PROCS 8

static struct kas api;
static bool api_running;
static pid_t agent_pid, nats_pid, sub_pid;
static int nats_port;
static char nats_log[64], sub_log[64];
static int agent_port;
static char agent_log[64], token_path[128], tmpdir[64], marker_path[128];
static char cg_root[KP_ROOT_MAX];
static int listen_fd = -1, listen_port;
/* A DNS server of the test's (DNS_PORTS): every A query answered with 127.0.0.1. */
static pid_t dns_pid;
static int dns_port, dns_tcp_fd = -1;
static struct proc procs[MAX_PROCS];
static int nprocs;

/* Pod IPs, on the loopback of the test's network namespace. */
#define WEB_IP4     "10.244.7.5"
#define WEB_IP6     "fd00:e2e::5"
#define CART_IP4    "10.244.7.6"
#define CART_IP6    "fd00:e2e::6"
#define NODE_IP4    "10.244.7.1" /* the hostNetwork pods' */
#define REPORT_JOB  "report-28934160"
#define REPORT_JUID "5d4c3b2a-1908-4776-8655-443322110099"

/*
 * web: systemd driver, a Deployment's (and a peer's client); api: cgroupfs
 * driver; job: deleted by the watch in one test; late: added by the watch in
 * one test; unknown: never in the API; cart: a StatefulSet's, the peer's
 * server; agent: hostNetwork, shares its address with proxy; report: a
 * CronJob's, through its Job.
 */
static struct pod web = {
    .name = "web-7d9c6b8f5d-x2k8p",
    .ns = "shop",
    .systemd = true,
    .workload = "web",
    .kind = "Deployment",
    .api = {.labels = "\"app.kubernetes.io/name\":\"web\",\"pod-template-hash\":\"7d9c6b8f5d\"",
            .owner_kind = "ReplicaSet",
            .owner_name = "web-7d9c6b8f5d",
            .owner_uid = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            .ips = {WEB_IP4, WEB_IP6}}};
static struct pod apisrv = {.name = "api-5b7f9d-qk2lz",
                            .ns = "payments",
                            .systemd = false,
                            .workload = "api-5b7f9d-qk2lz",
                            .kind = "Pod"};
static struct pod job = {.name = "migrate-x7k2p", .ns = "jobs", .systemd = true};
static struct pod late = {.name = "late-6c8d9-zp4tq", .ns = "batch", .systemd = false};
static struct pod unknown = {.name = "never-listed", .ns = "nowhere", .systemd = true};
static struct pod cart = {.name = "cart-0",
                          .ns = "shop",
                          .systemd = false,
                          .workload = "cart",
                          .kind = "StatefulSet",
                          .api = {.labels = "\"app\":\"cart\"",
                                  .owner_kind = "StatefulSet",
                                  .owner_name = "cart",
                                  .owner_uid = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d",
                                  .ips = {CART_IP4, CART_IP6}}};
static struct pod agent = {.name = "node-agent-q8w7e",
                           .ns = "monitoring",
                           .systemd = true,
                           .workload = "node-agent",
                           .kind = "DaemonSet",
                           .api = {.owner_kind = "DaemonSet",
                                   .owner_name = "node-agent",
                                   .owner_uid = "2c3d4e5f-6071-4b8c-9dae-1f2a3b4c5d6e",
                                   .ips = {NODE_IP4},
                                   .host_network = true}};
static struct pod proxy = {.name = "kube-proxy-x9z8y",
                           .ns = "kube-system",
                           .systemd = true,
                           .api = {.ips = {NODE_IP4}, .host_network = true}};
static struct pod report = {
    .name = "report-28934160-h5j6k",
    .ns = "reports",
    .systemd = false,
    .workload = "report",
    .kind = "CronJob",
    .api = {.owner_kind = "Job", .owner_name = REPORT_JOB, .owner_uid = REPORT_JUID}};
static struct pod *const pods[] = {&web,  &apisrv, &job,   &late,  &unknown,
                                   &cart, &agent,  &proxy, &report};
#define NPODS (sizeof(pods) / sizeof(pods[0]))
/* in the first LIST: all but late (added by the watch) and unknown (never) */
static struct pod *const listed[] = {&web, &apisrv, &job, &cart, &agent, &proxy, &report};
#define NLISTED (sizeof(listed) / sizeof(listed[0]))

static void pod_init(struct pod *p)
{
    kp_random_uid(p->uid);
    kp_random_container_id(p->cid);
    if (p->systemd) {
        char suid[37];
        kp_systemd_uid(p->uid, suid);
        snprintf(p->rel, sizeof(p->rel),
                 "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
                 "cri-containerd-%s.scope",
                 suid, p->cid);
    } else {
        snprintf(p->rel, sizeof(p->rel), "kubepods/burstable/pod%s/%s", p->uid, p->cid);
    }
}

static char *pod_object(const struct pod *p, unsigned long rv)
{
    char rvs[32];
    struct kas_pod o = p->api;
    snprintf(rvs, sizeof(rvs), "%lu", rv);
    o.uid = p->uid;
    o.name = p->name;
    o.ns = p->ns;
    o.node = NODE;
    o.rv = rvs;
    o.container_id = p->cid;
    char *s = kas_pod_object(&o);
    cr_assert_not_null(s);
    return s;
}

/* ---- the agent's API ---- */

static json_t *get_json(const char *path)
{
    int status = 0;
    json_t *j = tu_get_json(agent_port, path, &status);
    cr_assert(j && status == 200, "GET %s: HTTP %d", path, status);
    return j;
}

static json_t *kube_stats(json_t *stats)
{
    json_t *k = json_object_get(stats, "kubernetes");
    cr_assert(json_is_object(k), "/api/stats has no \"kubernetes\" object");
    return k;
}

static json_int_t kube_int(const char *key)
{
    json_t *st = get_json("/api/stats");
    json_int_t v = json_integer_value(json_object_get(kube_stats(st), key));
    json_decref(st);
    return v;
}

/* Polls /api/stats until kubernetes.<key> >= want. */
static void wait_kube_int(const char *key, json_int_t want)
{
    json_int_t v = 0;
    for (uint64_t end = tu_mono_ms() + 10000; tu_mono_ms() < end; usleep(10000))
        if ((v = kube_int(key)) >= want)
            return;
    cr_assert_fail("kubernetes.%s stayed %lld, wanted >= %lld", key, (long long)v, (long long)want);
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The agent's events of one process (a new reference to the array's holder). */
static json_t *events_of(pid_t pid)
{
    char q[96];
    snprintf(q, sizeof(q), "/api/events?pid=%d&limit=1000", (int)pid);
    return get_json(q);
}

/* An event of pid with this type (for connections: to our listener); a new reference. */
static json_t *find_event(json_t *r, const char *type)
{
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        const char *t = jstr(ev, "type");
        if (!t || strcmp(t, type) != 0)
            continue;
        if (strcmp(type, "connection") == 0 &&
            json_integer_value(json_object_get(ev, "dest_port")) != listen_port)
            continue;
        return json_incref(ev);
    }
    return NULL;
}

static json_t *wait_event(pid_t pid, const char *type)
{
    for (uint64_t end = tu_mono_ms() + 10000; tu_mono_ms() < end; usleep(20000)) {
        json_t *r = events_of(pid);
        json_t *ev = find_event(r, type);
        json_decref(r);
        if (ev)
            return ev;
    }
    cr_assert_fail("no %s event of pid %d", type, (int)pid);
    return NULL;
}

static const char *const k8s_fields[] = {"k8s_node_name", "k8s_pod_name", "k8s_namespace",
                                         "k8s_pod_uid", "k8s_container_id"};

/* named: the pod's name and namespace are expected too (known to the API server). */
static void expect_pod(json_t *ev, const struct pod *p, bool named)
{
    char *dump = json_dumps(ev, JSON_COMPACT);
    cr_expect_str_eq(jstr(ev, "k8s_pod_uid"), p->uid, "%s", dump);
    cr_expect_str_eq(jstr(ev, "k8s_container_id"), p->cid, "%s", dump);
    cr_expect_str_eq(jstr(ev, "k8s_node_name"), NODE, "%s", dump);
    cr_expect_str_eq(jstr(ev, "node"), NODE, "%s", dump);
    if (named) {
        cr_expect_str_eq(jstr(ev, "k8s_pod_name"), p->name, "%s", dump);
        cr_expect_str_eq(jstr(ev, "k8s_namespace"), p->ns, "%s", dump);
        cr_expect_str_eq(jstr(ev, "k8s_workload"), p->workload ? p->workload : p->name, "%s", dump);
        cr_expect_str_eq(jstr(ev, "k8s_workload_kind"), p->kind ? p->kind : "Pod", "%s", dump);
    } else {
        cr_expect_null(json_object_get(ev, "k8s_pod_name"), "%s", dump);
        cr_expect_null(json_object_get(ev, "k8s_namespace"), "%s", dump);
    }
    free(dump);
}

static void expect_host(json_t *ev)
{
    char *dump = json_dumps(ev, JSON_COMPACT);
    for (size_t i = 0; i < sizeof(k8s_fields) / sizeof(k8s_fields[0]); i++)
        cr_expect_null(json_object_get(ev, k8s_fields[i]), "%s: %s", k8s_fields[i], dump);
    free(dump);
}

/* ---- processes ---- */

/* Writes pid into the cgroup's cgroup.procs. */
static void move_to_cgroup(pid_t pid, const char *rel)
{
    char path[KP_PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/%s/cgroup.procs", cg_root, rel);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    fprintf(f, "%d\n", (int)pid);
    cr_assert_eq(fclose(f), 0, "move %d into %s: %s", (int)pid, rel, strerror(errno));
}

/*
 * Starts MARKER (bash under another name) in the cgroup rel ("" = stay on
 * the host): it connects to our listener, then waits for proc_finish(). The
 * child is moved before it execs, so every event of the program is inside.
 */
static struct proc *proc_start(const char *rel)
{
    cr_assert_lt(nprocs, MAX_PROCS);
    struct proc *p = &procs[nprocs++];
    int hold[2], go[2];
    char port[16];

    memset(p, 0, sizeof(*p));
    snprintf(p->rel, sizeof(p->rel), "%s", rel);
    snprintf(port, sizeof(port), "%d", listen_port);
    cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    p->pid = fork();
    cr_assert_geq(p->pid, 0);
    if (p->pid == 0) {
        char c;
        dup2(hold[0], STDIN_FILENO);
        dup2(go[0], 3);
        close_range(4, ~0u, 0);  /* another process's hold pipe would keep it alive */
        if (read(3, &c, 1) != 0) /* EOF once the parent has moved us */
            _exit(120);
        char *argv[] = {
            MARKER, "-c", "exec 3<>/dev/tcp/127.0.0.1/$1 || exit 3; read -r line; exit 0",
            MARKER, port, NULL};
        execv(marker_path, argv);
        _exit(127);
    }
    close(hold[0]);
    close(go[0]);
    if (rel[0])
        move_to_cgroup(p->pid, rel);
    close(go[1]);
    p->hold = hold[1];
    return p;
}

/* Lets the process exit and reaps it; the cgroups go in teardown. */
static void proc_finish(struct proc *p)
{
    int status = 0;
    if (p->hold > 0)
        close(p->hold);
    p->hold = -1;
    cr_assert_eq(waitpid(p->pid, &status, 0), p->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s exited with status %#x", MARKER,
              status);
}

/* Runs a process to completion and checks its exec, connection and exit events. */
static pid_t run_in_pod(const struct pod *p, bool named)
{
    struct proc *pr = proc_start(p->rel);
    json_t *ev = wait_event(pr->pid, "exec");
    cr_expect_str_eq(jstr(ev, "command"), MARKER);
    cr_expect_str_eq(jstr(ev, "filename"), marker_path);
    expect_pod(ev, p, named);
    json_decref(ev);
    ev = wait_event(pr->pid, "connection");
    expect_pod(ev, p, named);
    json_decref(ev);
    proc_finish(pr);
    ev = wait_event(pr->pid, "exit");
    expect_pod(ev, p, named);
    json_decref(ev);
    return pr->pid;
}

/* ---- the fixture: API server, agent, listener ---- */

/*
 * Removes a pod's cgroups. A reaped process can still pin its cgroup for a
 * moment (rmdir: EBUSY), so retry briefly.
 */
static void remove_cgroup(const char *rel)
{
    char dir[KP_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%s", cg_root, rel);
    for (uint64_t end = tu_mono_ms() + 2000;; usleep(5000)) {
        kp_rmdirs(cg_root, rel);
        if (access(dir, F_OK) != 0 || tu_mono_ms() > end)
            return;
    }
}

static void dns_server_start(void)
{
    int fd = tu_udp_socket(&dns_port, &dns_tcp_fd);
    dns_pid = fork();
    cr_assert_geq(dns_pid, 0);
    if (dns_pid == 0) {
        static const uint8_t rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1};
        for (;;) {
            uint8_t m[512];
            struct sockaddr_in from;
            socklen_t fl = sizeof(from);
            ssize_t n = recvfrom(fd, m, sizeof(m) - sizeof(rr), 0, (struct sockaddr *)&from, &fl);
            if (n < 17)
                continue;
            m[2] = 0x81, m[3] = 0x80, m[7] = 1; /* a response with one answer */
            memcpy(m + n, rr, sizeof(rr));
            sendto(fd, m, (size_t)n + sizeof(rr), 0, (struct sockaddr *)&from, fl);
        }
    }
    close(fd);
}

static void set_pod_list(const struct pod *left_out);
static void agent_spawn(size_t pods_listed);

static void setup(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs and create cgroups");
    kp_root_or_skip(cg_root, sizeof(cg_root));
    if (access(tu_repo_path("bin/ebpf-agent"), X_OK) != 0)
        cr_skip_test("bin/ebpf-agent is not built (make build)");

    /* the marker program: bash under a name of its own, so its comm says what it is */
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ebpf-e2e-k8s-%d", getpid());
    snprintf(marker_path, sizeof(marker_path), "%s/" MARKER, tmpdir);
    snprintf(token_path, sizeof(token_path), "%s/token", tmpdir);
    cr_assert(mkdir(tmpdir, 0700) == 0 || errno == EEXIST);
    unlink(marker_path);
    cr_assert_eq(symlink("/bin/bash", marker_path), 0, "symlink: %s", strerror(errno));
    FILE *f = fopen(token_path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%s\n", TOKEN);
    fclose(f);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(listen_fd, 0);
    cr_assert_eq(bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(listen_fd, 16), 0);
    cr_assert_eq(getsockname(listen_fd, (struct sockaddr *)&sa, &sl), 0);
    listen_port = ntohs(sa.sin_port);

    for (size_t i = 0; i < NPODS; i++)
        pod_init(pods[i]);
    int rc = kas_start(&api, kas_serve_pods, NULL);
    cr_assert_eq(rc, 0, "fake API server: %s", strerror(-rc));
    api_running = true;
    /* late comes through the watch */
    set_pod_list(NULL);
    /* report's Job, owned by the CronJob report */
    char *jobj = kas_job_json(report.ns, REPORT_JOB, REPORT_JUID, "report");
    cr_assert_not_null(jobj);
    cr_assert_eq(kas_add_object(&api, "/apis/batch/v1/namespaces/reports/jobs/" REPORT_JOB, jobj),
                 0);
    free(jobj);

    /* A real bus: the pod table the batches carry is checked by the npm client. */
    nats_port = tu_free_port();
    snprintf(nats_log, sizeof(nats_log), "/tmp/ebpf-e2e-k8s-nats-%d.log", getpid());
    nats_pid = tu_nats_start(nats_port, NULL, nats_log);
    cr_assert(nats_pid > 0, "nats-server did not start");
    dns_server_start();
    agent_port = tu_free_port();
    snprintf(agent_log, sizeof(agent_log), "/tmp/ebpf-e2e-k8s-agent-%d.log", getpid());
    unlink(agent_log);
    agent_spawn(NLISTED);
    /* Containers appear while the agent runs, one right after another: each
     * must be attributed from its first event. */
    for (size_t i = 0; i < NPODS; i++)
        kp_mkdirs(cg_root, pods[i]->rel);
}

/* The API server's PodList: the listed pods but left out (NULL: none). */
static void set_pod_list(const struct pod *left_out)
{
    char *items[NLISTED];
    int n = 0;
    for (size_t i = 0; i < NLISTED; i++)
        if (listed[i] != left_out)
            items[n++] = pod_object(listed[i], 900 + i);
    char rv[32];
    snprintf(rv, sizeof(rv), "%d", LIST_RV);
    char *list = kas_pod_list(rv, (const char *const *)items, n);
    cr_assert_not_null(list);
    kas_set_list(&api, list);
    free(list);
    for (int i = 0; i < n; i++)
        free(items[i]);
}

/* The agent on agent_port, ready, its pods (pods_listed of them) listed and watched. */
static void agent_spawn(size_t pods_listed)
{
    char listen_addr[64], api_url[64], token_env[192], nats_env[64];
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", agent_port);
    snprintf(api_url, sizeof(api_url), "K8S_API_URL=http://127.0.0.1:%d", api.port);
    snprintf(token_env, sizeof(token_env), "K8S_TOKEN_PATH=%s", token_path);
    snprintf(nats_env, sizeof(nats_env), "NATS_URL=nats://127.0.0.1:%d", nats_port);
    char dns_env[32];
    snprintf(dns_env, sizeof(dns_env), "DNS_PORTS=%d", dns_port);
    char *env[] = {"DEPLOYMENT_MODE=kubernetes",
                   api_url,
                   token_env,
                   nats_env,
                   dns_env,
                   "NODE_NAME=" NODE,
                   "POD_NAME=" AGENT_POD,
                   "POD_NAMESPACE=" AGENT_NS,
                   NULL};
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-agent"), "--listen-addr", listen_addr, NULL};
    agent_pid = tu_spawn(argv, env, agent_log);
    if (!tu_wait_http(agent_port, "/ready", 200, 30000)) {
        char *log = tu_read_file(agent_log);
        cr_assert_fail("agent not ready; log:\n%s", log ? log : "(none)");
    }
    /* the LIST is in the cache, the watch is open */
    cr_assert(kas_wait(&api, 1, 1, 10000), "the agent never listed and watched pods");
    wait_kube_int("pods_cached", (json_int_t)pods_listed);
}

static char netns[64]; /* the pods' network namespace, "" when none */

/*
 * The agent's live stream (/api/events/stream, HTTP/1.0 so it is not
 * chunked), read as events come: what a user watching the pods sees.
 */
static struct {
    int fd;
    size_t len;
    char buf[16 << 20];
} stream = {.fd = -1};

static void teardown(void)
{
    for (int i = 0; i < nprocs; i++) {
        struct proc *p = &procs[i];
        if (p->hold > 0) {
            close(p->hold);
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
        }
    }
    if (agent_pid > 0)
        tu_stop(agent_pid, 10000);
    agent_pid = 0;
    if (dns_pid > 0)
        tu_stop(dns_pid, 2000);
    dns_pid = 0;
    if (dns_tcp_fd >= 0)
        close(dns_tcp_fd);
    dns_tcp_fd = -1;
    if (sub_pid > 0)
        tu_stop(sub_pid, 5000);
    sub_pid = 0;
    if (nats_pid > 0)
        tu_stop(nats_pid, 5000);
    nats_pid = 0;
    if (api_running)
        kas_stop(&api);
    api_running = false;
    /* after the processes are gone, so the cgroups are empty */
    for (size_t i = 0; i < NPODS; i++)
        if (pods[i]->rel[0])
            remove_cgroup(pods[i]->rel);
    nprocs = 0;
    if (stream.fd >= 0)
        close(stream.fd);
    stream.fd = -1;
    if (netns[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "ip netns del %s", netns);
        tu_run(cmd, NULL);
        netns[0] = '\0';
    }
    if (listen_fd >= 0)
        close(listen_fd);
    listen_fd = -1;
    if (marker_path[0]) {
        unlink(marker_path);
        unlink(token_path);
        rmdir(tmpdir);
    }
}

TestSuite(e2e_k8s, .init = setup, .fini = teardown, .timeout = 120);

/* ---- tests ---- */

Test(e2e_k8s, processes_in_pods_of_both_drivers_are_named_and_host_ones_are_not)
{
    run_in_pod(&web, true);    /* systemd driver */
    run_in_pod(&apisrv, true); /* cgroupfs driver */

    struct proc *host = proc_start("");
    json_t *ev = wait_event(host->pid, "exec");
    expect_host(ev);
    json_decref(ev);
    ev = wait_event(host->pid, "connection");
    expect_host(ev);
    json_decref(ev);
    proc_finish(host);
    ev = wait_event(host->pid, "exit");
    expect_host(ev);
    json_decref(ev);

    /* the API server saw the service account token */
    pthread_mutex_lock(&api.lock);
    cr_expect_str_eq(api.auth, "Bearer " TOKEN);
    cr_expect(strstr(api.list_paths[0], "fieldSelector=spec.nodeName%3D" NODE), "%s",
              api.list_paths[0]);
    pthread_mutex_unlock(&api.lock);
}

/* ?pod=&namespace= returns exactly the events of that pod's processes. */
Test(e2e_k8s, pod_and_namespace_filter)
{
    pid_t a = run_in_pod(&web, true);
    pid_t b = run_in_pod(&web, true); /* a second process in the same container */
    run_in_pod(&apisrv, true);

    json_t *want = json_object();
    pid_t pids[] = {a, b};
    for (int i = 0; i < 2; i++) {
        json_t *r = events_of(pids[i]);
        size_t j;
        json_t *ev;
        json_array_foreach(json_object_get(r, "events"), j, ev)
            json_object_set(want, jstr(ev, "id"), ev);
        json_decref(r);
    }
    cr_assert_geq(json_object_size(want), 6, "exec, connection and exit of two processes");

    char q[256];
    snprintf(q, sizeof(q), "/api/events?pod=%s&namespace=%s&limit=1000", web.name, web.ns);
    json_t *r = get_json(q);
    json_t *got = json_object_get(r, "events");
    size_t i;
    json_t *ev;
    json_array_foreach(got, i, ev)
    {
        cr_expect_str_eq(jstr(ev, "k8s_pod_name"), web.name);
        cr_expect_str_eq(jstr(ev, "k8s_namespace"), web.ns);
        cr_expect_not_null(json_object_get(want, jstr(ev, "id")), "event %s is not from %d or %d",
                           jstr(ev, "id"), (int)a, (int)b);
    }
    cr_expect_eq(json_array_size(got), json_object_size(want), "got %zu events, want %zu",
                 json_array_size(got), json_object_size(want));
    json_decref(r);
    json_decref(want);

    /* the right name in another namespace is another pod */
    snprintf(q, sizeof(q), "/api/events?pod=%s&namespace=%s", web.name, apisrv.ns);
    r = get_json(q);
    cr_expect_eq(json_array_size(json_object_get(r, "events")), 0);
    json_decref(r);
}

Test(e2e_k8s, pod_added_by_the_watch_is_named)
{
    char *obj = pod_object(&late, LIST_RV + 1);
    cr_assert_eq(kas_push(&api, "ADDED", LIST_RV + 1, obj), 0);
    free(obj);
    wait_kube_int("pods_cached", NLISTED + 1);
    run_in_pod(&late, true);
    cr_expect_eq(kube_int("relists"), 0, "the watch delivered it; no re-list");
}

/* The pod is DELETED between the process's first and last events: a tombstone still names it. */
Test(e2e_k8s, pod_deleted_before_the_last_event_is_still_named)
{
    struct proc *p = proc_start(job.rel);
    json_t *ev = wait_event(p->pid, "connection");
    expect_pod(ev, &job, true);
    json_decref(ev);

    char *obj = pod_object(&job, LIST_RV + 2);
    cr_assert_eq(kas_push(&api, "DELETED", LIST_RV + 2, obj), 0);
    free(obj);
    wait_kube_int("pods_deleted", 1);

    proc_finish(p);
    ev = wait_event(p->pid, "exit");
    expect_pod(ev, &job, true);
    json_decref(ev);
}

/* A subscription to every batch on the test's bus, from now on. */
static void bus_tap(natsConnection **nc, natsSubscription **sub)
{
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", nats_port);
    cr_assert_eq(natsConnection_ConnectTo(nc, url), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(sub, *nc, "ebpf.events.>"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(*nc), NATS_OK);
}

/*
 * A pod deleted through the watch goes out on the bus with the agent's next batch (the
 * Ebpf-Pods-Gone header, with nothing else to send here), as the aggregators decode it:
 * its name, UID, node and both addresses, so they stop naming its IPs.
 */
Test(e2e_k8s, a_deleted_pod_goes_out_on_the_bus_for_the_aggregators)
{
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    bus_tap(&nc, &sub);

    char *obj = pod_object(&cart, LIST_RV + 3);
    cr_assert_eq(kas_push(&api, "DELETED", LIST_RV + 3, obj), 0);
    free(obj);

    bool found = false;
    for (uint64_t end = tu_mono_ms() + 20000; !found && tu_mono_ms() < end;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 200) != NATS_OK)
            continue;
        struct bus_batch b;
        char err[256];
        cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
        for (size_t i = 0; i < b.n_gone && !found; i++) {
            const struct peers_pod *g = &b.gone[i];
            if (strcmp(g->pod, cart.name) != 0)
                continue;
            found = true;
            cr_expect_str_eq(g->namespace, cart.ns);
            cr_expect_str_eq(g->uid, cart.uid);
            cr_expect_str_eq(g->node, b.meta.node, "the pod's node, the agent's");
            cr_expect_str_eq(g->workload, "cart");
            cr_expect_str_eq(g->workload_kind, "StatefulSet");
            cr_assert_eq(g->n_ips, 2);
            uint8_t v4[16] = {0}, v6[16];
            inet_pton(AF_INET, CART_IP4, v4);
            inet_pton(AF_INET6, CART_IP6, v6);
            cr_expect_eq(g->family[0], EVENT_FAMILY_IPV4);
            cr_expect_eq(memcmp(g->ip[0], v4, 4), 0);
            cr_expect_eq(g->family[1], EVENT_FAMILY_IPV6);
            cr_expect_eq(memcmp(g->ip[1], v6, 16), 0);
            cr_expect_gt(g->gone_ns, tu_now_ns() - 60000000000ull);
        }
        bus_batch_free(&b);
        natsMsg_Destroy(m);
    }
    natsConnection_Close(nc); /* first: see bus_sub_end() */
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    cr_assert(found, "no batch carried the deletion of %s", cart.name);
    cr_expect_eq(kube_int("deletions_sent"), 1);
    cr_expect_eq(kube_int("deletions_dropped"), 0);
}

/*
 * A pod deleted while the agent was down: the new agent never sees its
 * deletion, but its first batch after its LIST carries the node's pods (the
 * Ebpf-Pods-Present header), without that one, so the aggregators end its
 * claims. Only the first batch carries it.
 */
Test(e2e_k8s, a_restarted_agent_sends_the_pods_it_listed)
{
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    bus_tap(&nc, &sub);

    tu_stop(agent_pid, 10000);
    agent_pid = 0;
    set_pod_list(&cart);
    uint64_t before = tu_now_ns();
    agent_spawn(NLISTED - 1);

    int lists = 0, batches_after = 0;
    char instance[64] = "";
    for (uint64_t end = tu_mono_ms() + 20000; batches_after < 2 && tu_mono_ms() < end;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 200) != NATS_OK)
            continue;
        struct bus_batch b;
        char err[256];
        cr_assert_eq(bus_message_decode(m, &b, err, sizeof(err)), BUS_OK, "%s", err);
        if (b.present_at_ns && b.present_at_ns < before) {
            /* the first agent's, sent after its own LIST */
        } else if (b.present_at_ns) {
            lists++;
            snprintf(instance, sizeof(instance), "%s", b.meta.agent_instance);
            cr_expect_leq(b.present_at_ns, tu_now_ns());
            cr_assert_eq(b.n_present, NLISTED - 1, "%zu pods", b.n_present);
            for (size_t i = 0; i < NLISTED; i++) {
                bool in = false;
                for (size_t j = 0; j < b.n_present; j++)
                    in |= strcmp(b.present[j], listed[i]->uid) == 0;
                cr_expect_eq(in, listed[i] != &cart, "%s %s", listed[i]->name,
                             in ? "listed" : "left out");
            }
        } else if (strcmp(b.meta.agent_instance, instance) == 0) {
            batches_after++;
        }
        bus_batch_free(&b);
        natsMsg_Destroy(m);
        if (lists) /* events for the next batches */
            tu_run("/bin/true", NULL);
    }
    natsConnection_Close(nc); /* first: see bus_sub_end() */
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    cr_assert_eq(lists, 1, "the new agent's pod list went out %d times", lists);
    cr_assert_eq(batches_after, 2, "the new agent's later batches");
}

Test(e2e_k8s, agent_identity_and_api_connection_in_stats)
{
    json_t *st = get_json("/api/stats");
    cr_expect_str_eq(jstr(st, "node"), NODE);
    cr_expect_str_eq(jstr(st, "pod_name"), AGENT_POD);
    cr_expect_str_eq(jstr(st, "pod_namespace"), AGENT_NS);
    cr_expect_str_eq(jstr(st, "deployment_mode"), "kubernetes");
    json_t *k = kube_stats(st);
    cr_expect(json_is_true(json_object_get(k, "api_connected")));
    cr_expect_str_eq(jstr(k, "last_error"), "");
    cr_expect_str_eq(jstr(k, "cgroup_root"), cg_root);
    cr_expect_eq(json_integer_value(json_object_get(k, "pods_cached")), NLISTED);
    cr_expect_eq(json_integer_value(json_object_get(k, "api_errors")), 0);
    json_decref(st);

    /* Each of the caches' losses is on /metrics too. */
    static const char *const lost[] = {
        "ebpf_agent_k8s_pods_evicted_total 0", "ebpf_agent_k8s_jobs_evicted_total 0",
        "ebpf_agent_k8s_deletions_dropped_total 0", "ebpf_agent_cgroup_cache_evictions_total 0"};
    struct tu_http m;
    cr_assert_eq(tu_http_get(agent_port, "/metrics", NULL, &m), 0);
    for (size_t i = 0; i < sizeof(lost) / sizeof(lost[0]); i++)
        cr_expect(m.body && strstr(m.body, lost[i]), "/metrics has no %s", lost[i]);
    tu_http_free(&m);
}

Test(e2e_k8s, api_server_down_keeps_pod_uid_and_container_id)
{
    kas_stop(&api);
    api_running = false;

    json_t *k = NULL;
    json_t *st = NULL;
    for (uint64_t end = tu_mono_ms() + 10000; tu_mono_ms() < end; usleep(20000)) {
        json_decref(st);
        st = get_json("/api/stats");
        k = kube_stats(st);
        if (json_is_false(json_object_get(k, "api_connected")))
            break;
    }
    cr_assert(json_is_false(json_object_get(k, "api_connected")), "still connected");
    const char *err = jstr(k, "last_error");
    cr_expect(err && err[0], "no last_error while the API server is down");
    cr_expect_geq(json_integer_value(json_object_get(k, "api_errors")), 1);
    json_decref(st);

    /* A pod the agent never heard of: UID, container id and node from its cgroup. */
    run_in_pod(&unknown, false);
    /* A pod it listed before the outage is still named from its cache. */
    run_in_pod(&apisrv, true);
}

/* An expired watch (ERROR event, 410 Gone) makes the agent re-list; pods stay named. */
Test(e2e_k8s, expired_watch_relists_and_pods_stay_named)
{
    char *st = kas_status_410();
    cr_assert_not_null(st);
    cr_assert_eq(kas_push(&api, "ERROR", 0, st), 0);
    free(st);
    cr_assert(kas_wait(&api, 2, 2, 10000), "no re-list and re-watch after 410 Gone");
    wait_kube_int("relists", 1);

    json_t *stats = get_json("/api/stats");
    json_t *k = kube_stats(stats);
    const char *err = jstr(k, "last_error");
    cr_expect(err && strstr(err, "too old resource version"), "last_error: %s", err);
    cr_expect_eq(json_integer_value(json_object_get(k, "api_errors")), 0,
                 "an expired watch is routine, not an API error");
    json_decref(stats);
    pthread_mutex_lock(&api.lock);
    cr_expect(strstr(api.watch_paths[1], "&resourceVersion=1000&"), "%s", api.watch_paths[1]);
    pthread_mutex_unlock(&api.lock);

    run_in_pod(&web, true);
}

/* ---- identity: workloads and peers ---- */

Test(e2e_k8s, deployment_and_cronjob_pods_name_their_workload)
{
    run_in_pod(&web, true);    /* ReplicaSet web-7d9c6b8f5d + pod-template-hash: Deployment web */
    run_in_pod(&report, true); /* Job report-28934160, owned by CronJob report */
    run_in_pod(&apisrv, true); /* no controller: the Pod itself */
    pthread_mutex_lock(&api.lock);
    cr_expect_eq(api.gets, 1, "the Job was read once");
    pthread_mutex_unlock(&api.lock);
}

#define PEER_PORT    8080
#define HOSTNET_PORT 8081
#define SENT         3000 /* bytes the client sends */
#define ANSWERED     1000 /* bytes the server answers */

/* A network namespace with the pods' IPs on its loopback, as a CNI gives each pod one. */
static void make_netns(void)
{
    char cmd[1024], *out = NULL;
    snprintf(netns, sizeof(netns), "ebpf-e2e-k8s-%d", getpid());
    snprintf(cmd, sizeof(cmd),
             "ip netns add %1$s && ip -n %1$s link set lo up && "
             "ip -n %1$s addr add %2$s/32 dev lo && ip -n %1$s addr add %3$s/32 dev lo && "
             "ip -n %1$s addr add %4$s/32 dev lo && "
             "ip -n %1$s addr add %5$s/128 dev lo nodad && "
             "ip -n %1$s addr add %6$s/128 dev lo nodad",
             netns, WEB_IP4, CART_IP4, NODE_IP4, WEB_IP6, CART_IP6);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "%s: %s", cmd, out ? out : "");
    free(out);
}

static int sock_addr(const char *ip, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        return sizeof(*in4);
    }
    inet_pton(AF_INET6, ip, &in6->sin6_addr);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return sizeof(*in6);
}

/* The child's side (exit codes say what failed): listen on each ip, then serve one client each. */
static int serve(const char *const ips[], int n, int port, int ready)
{
    int lfd[2];
    for (int i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        int len = sock_addr(ips[i], port, &ss), one = 1;
        lfd[i] = socket(ss.ss_family, SOCK_STREAM, 0);
        setsockopt(lfd[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (lfd[i] < 0 || bind(lfd[i], (struct sockaddr *)&ss, len) || listen(lfd[i], 4))
            return 10;
    }
    if (write(ready, "r", 1) != 1)
        return 11;
    for (int i = 0; i < n; i++) {
        char buf[4096];
        ssize_t r;
        size_t got = 0;
        int c = accept(lfd[i], NULL, NULL);
        if (c < 0)
            return 12;
        while ((r = read(c, buf, sizeof(buf))) > 0)
            got += (size_t)r;
        memset(buf, 'a', ANSWERED);
        if (got != SENT || write(c, buf, ANSWERED) != ANSWERED)
            return 13;
        close(c);
    }
    return 0;
}

/* Connects from src to dst:port, sends SENT bytes, reads the answer to its end. */
static int call(const char *src, const char *dst, int port)
{
    struct sockaddr_storage from, to;
    int flen = sock_addr(src, 0, &from), tlen = sock_addr(dst, port, &to);
    int fd = socket(to.ss_family, SOCK_STREAM, 0);
    char buf[SENT];
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, flen) ||
        connect(fd, (struct sockaddr *)&to, tlen))
        return 20;
    memset(buf, 'q', sizeof(buf));
    if (write(fd, buf, SENT) != SENT)
        return 21;
    shutdown(fd, SHUT_WR);
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    close(fd);
    return 0;
}

enum role_kind { ROLE_SERVER, ROLE_CLIENT, ROLE_HOSTNET_SERVER, ROLE_HOSTNET_CLIENT };

/*
 * A pod's process: forked, moved into p's container cgroup, then into the
 * pods' network namespace, before it makes a single socket.
 */
static struct proc *pod_proc_start(const struct pod *p, enum role_kind role, int ready)
{
    cr_assert_lt(nprocs, MAX_PROCS);
    struct proc *pr = &procs[nprocs++];
    int hold[2], go[2];
    char nspath[128];

    memset(pr, 0, sizeof(*pr));
    snprintf(nspath, sizeof(nspath), "/run/netns/%s", netns);
    cr_assert_eq(pipe2(hold, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    pr->pid = fork();
    cr_assert_geq(pr->pid, 0);
    if (pr->pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 0)
            _exit(1);
        int ns = open(nspath, O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNET) != 0)
            _exit(2);
        static const char *const cart_ips[] = {CART_IP4, CART_IP6};
        static const char *const node_ips[] = {NODE_IP4};
        switch (role) {
        case ROLE_SERVER:
            _exit(serve(cart_ips, 2, PEER_PORT, ready));
        case ROLE_HOSTNET_SERVER:
            _exit(serve(node_ips, 1, HOSTNET_PORT, ready));
        case ROLE_CLIENT: {
            int rc = call(WEB_IP4, CART_IP4, PEER_PORT);
            _exit(rc ? rc : call(WEB_IP6, CART_IP6, PEER_PORT));
        }
        case ROLE_HOSTNET_CLIENT:
            _exit(call(WEB_IP4, NODE_IP4, HOSTNET_PORT));
        }
        _exit(3);
    }
    close(hold[0]);
    close(go[0]);
    move_to_cgroup(pr->pid, p->rel);
    close(go[1]);
    pr->hold = hold[1];
    return pr;
}

static void pod_proc_wait(struct proc *pr)
{
    int status = 0;
    cr_assert_eq(waitpid(pr->pid, &status, 0), pr->pid);
    close(pr->hold);
    pr->hold = -1;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pod process %d: status %#x",
              (int)pr->pid, status);
}

/* Reads what the stream has within timeout_ms. */
static void stream_read(int timeout_ms)
{
    struct pollfd p = {.fd = stream.fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0 || stream.len + 1 >= sizeof(stream.buf))
        return;
    ssize_t r = read(stream.fd, stream.buf + stream.len, sizeof(stream.buf) - stream.len - 1);
    cr_assert_gt(r, 0, "the event stream closed");
    stream.len += (size_t)r;
    stream.buf[stream.len] = '\0';
}

static void stream_open(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)agent_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const char *req = "GET /api/events/stream HTTP/1.0\r\nHost: x\r\n\r\n";
    stream.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    stream.len = 0;
    stream.buf[0] = '\0';
    cr_assert_eq(connect(stream.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(write(stream.fd, req, strlen(req)), (ssize_t)strlen(req));
    /* subscribed once the server says so */
    for (uint64_t end = tu_mono_ms() + 10000; !strstr(stream.buf, ": connected");) {
        cr_assert(tu_mono_ms() < end, "the event stream never answered");
        stream_read(100);
    }
}

/* The first streamed event of pid with this type, family and role (close; NULL else). */
static json_t *stream_find(pid_t pid, const char *type, const char *family, const char *role)
{
    char needle[48];
    snprintf(needle, sizeof(needle), "\"pid\":%d,", (int)pid);
    for (char *line = strstr(stream.buf, "data: {"); line; line = strstr(line + 1, "data: {")) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break; /* not complete yet */
        if (!memmem(line, (size_t)(nl - line), needle, strlen(needle)))
            continue;
        json_t *ev = json_loadb(line + 6, (size_t)(nl - line - 6), 0, NULL);
        const char *t = jstr(ev, "type"), *f = jstr(ev, "family"), *ro = jstr(ev, "role");
        if (t && f && strcmp(t, type) == 0 && strcmp(f, family) == 0 &&
            (!role || (ro && strcmp(ro, role) == 0)))
            return ev;
        json_decref(ev);
    }
    return NULL;
}

static json_t *wait_flow_event(pid_t pid, const char *type, const char *family, const char *role)
{
    for (uint64_t end = tu_mono_ms() + 10000; tu_mono_ms() < end; stream_read(100)) {
        json_t *ev = stream_find(pid, type, family, role);
        if (ev)
            return ev;
    }
    cr_assert_fail("no %s %s event (role %s) of pid %d streamed", family, type, role ? role : "-",
                   (int)pid);
    return NULL;
}

static void expect_peer(json_t *ev, const struct pod *peer)
{
    char *dump = json_dumps(ev, JSON_COMPACT);
    if (peer) {
        cr_expect_str_eq(jstr(ev, "peer_pod"), peer->name, "%s", dump);
        cr_expect_str_eq(jstr(ev, "peer_namespace"), peer->ns, "%s", dump);
        cr_expect_str_eq(jstr(ev, "peer_workload"), peer->workload, "%s", dump);
        cr_expect_str_eq(jstr(ev, "peer_workload_kind"), peer->kind, "%s", dump);
        cr_expect_str_eq(jstr(ev, "peer_node"), NODE, "%s", dump);
    } else {
        cr_expect_null(json_object_get(ev, "peer_pod"), "%s", dump);
        cr_expect_null(json_object_get(ev, "peer_workload"), "%s", dump);
    }
    free(dump);
}

static void wait_ready(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char c;
    cr_assert_eq(poll(&p, 1, 10000), 1, "the server pod never listened");
    cr_assert_eq(read(fd, &c, 1), 1, "the server pod failed before listening");
}

Test(e2e_k8s, same_node_pods_name_each_other_as_peers)
{
    int ready[2];
    make_netns();
    stream_open();
    cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
    struct proc *server = pod_proc_start(&cart, ROLE_SERVER, ready[1]);
    close(ready[1]);
    wait_ready(ready[0]);
    close(ready[0]);
    struct proc *client = pod_proc_start(&web, ROLE_CLIENT, -1);
    pod_proc_wait(client);
    pod_proc_wait(server);

    const char *const families[] = {"ipv4", "ipv6"};
    for (int i = 0; i < 2; i++) {
        json_t *ev = wait_flow_event(client->pid, "connection", families[i], NULL);
        expect_pod(ev, &web, true);
        expect_peer(ev, &cart);
        json_decref(ev);
        ev = wait_flow_event(client->pid, "close", families[i], "client");
        expect_pod(ev, &web, true);
        expect_peer(ev, &cart);
        cr_expect_eq(json_integer_value(json_object_get(ev, "bytes_sent")), SENT);
        json_decref(ev);
        ev = wait_flow_event(server->pid, "accept", families[i], NULL);
        expect_pod(ev, &cart, true);
        expect_peer(ev, &web);
        json_decref(ev);
        ev = wait_flow_event(server->pid, "close", families[i], "server");
        expect_pod(ev, &cart, true);
        expect_peer(ev, &web);
        json_decref(ev);
    }
    /* eight events named their peer (more may have: the agent sees the whole host) */
    cr_expect_geq(kube_int("peer_hits"), 8);
}

/* The hostNetwork pods share the node's address: a call to it names no peer. */
Test(e2e_k8s, an_address_hostnetwork_pods_share_names_no_peer)
{
    int ready[2];
    make_netns();
    stream_open();
    cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
    struct proc *server = pod_proc_start(&agent, ROLE_HOSTNET_SERVER, ready[1]);
    close(ready[1]);
    wait_ready(ready[0]);
    close(ready[0]);
    struct proc *client = pod_proc_start(&web, ROLE_HOSTNET_CLIENT, -1);
    pod_proc_wait(client);
    pod_proc_wait(server);

    json_t *ev = wait_flow_event(client->pid, "connection", "ipv4", NULL);
    expect_pod(ev, &web, true);
    expect_peer(ev, NULL);
    json_decref(ev);
    ev = wait_flow_event(client->pid, "close", "ipv4", "client");
    expect_peer(ev, NULL);
    json_decref(ev);
    /* the other way round the caller's own address is its alone */
    ev = wait_flow_event(server->pid, "accept", "ipv4", NULL);
    expect_pod(ev, &agent, true);
    expect_peer(ev, &web);
    json_decref(ev);
    cr_expect_geq(kube_int("peer_ambiguous"), 2, "the connection and its close");
}

/*
 * The bus's pod table, as the independent npm client (protobufjs, tests/js/sub.mjs) decodes it:
 * the web pod's entry carries its Deployment, the app label and both pod IPs, and the events
 * that refer to it get the workload too.
 */
Test(e2e_k8s, bus_pod_table_carries_workload_and_ips_for_the_npm_client)
{
    static const char *const nodes[] = {"/usr/bin/node", "/usr/local/bin/node"};
    const char *node = access(nodes[0], X_OK) == 0 ? nodes[0] : nodes[1];
    char server[64];
    cr_assert(access(node, X_OK) == 0, "node (Node.js) is not installed: run make deps");
    cr_assert(access(tu_repo_path("tests/js/node_modules/nats"), F_OK) == 0,
              "tests/js/node_modules is missing: run make deps");
    snprintf(server, sizeof(server), "nats://127.0.0.1:%d", nats_port);
    snprintf(sub_log, sizeof(sub_log), "/tmp/ebpf-e2e-k8s-sub-%d.log", getpid());
    char *argv[] = {(char *)node, (char *)tu_repo_path("tests/js/sub.mjs"),
                    "--server",   server,
                    "--subject",  "ebpf.events.>",
                    "--timeout",  "60000",
                    NULL};
    sub_pid = tu_spawn(argv, NULL, sub_log);
    bool ready = false;
    for (uint64_t end = tu_mono_ms() + 20000; !ready && tu_mono_ms() < end; usleep(20000)) {
        char *log = tu_read_file(sub_log);
        ready = log && strstr(log, "{\"ready\":true}");
        free(log);
    }
    cr_assert(ready, "the npm subscriber did not subscribe");

    pid_t pid = run_in_pod(&web, true);
    bool entry = false, event = false;
    for (uint64_t end = tu_mono_ms() + 20000; !(entry && event) && tu_mono_ms() < end;) {
        usleep(50000);
        char *log = tu_read_file(sub_log);
        for (char *line = log ? strtok(log, "\n") : NULL; line; line = strtok(NULL, "\n")) {
            json_t *m = json_loads(line, 0, NULL), *pod, *ev;
            json_t *batch = json_object_get(m, "batch");
            size_t i;
            if (json_object_get(m, "subject"))
                cr_assert_null(json_object_get(m, "error"), "npm client: %s", line);
            json_array_foreach(json_object_get(batch, "pods"), i, pod)
            {
                if (!jstr(pod, "pod_name") || strcmp(jstr(pod, "pod_name"), web.name) != 0)
                    continue;
                entry = true;
                cr_expect_str_eq(jstr(pod, "namespace"), web.ns);
                cr_expect_str_eq(jstr(pod, "workload"), "web");
                cr_expect_str_eq(jstr(pod, "workload_kind"), "Deployment");
                cr_expect_str_eq(jstr(pod, "app"), "web");
                cr_expect(json_is_false(json_object_get(pod, "host_network")), "%s", line);
                /* protobufjs prints IPv6 uncompressed: compare the addresses, not the text */
                const char *ips = jstr(pod, "ips");
                char v6[64] = "";
                struct in6_addr want, got;
                cr_assert(ips && strncmp(ips, WEB_IP4 ",", strlen(WEB_IP4) + 1) == 0, "ips %s",
                          ips ? ips : "(none)");
                snprintf(v6, sizeof(v6), "%s", ips + strlen(WEB_IP4) + 1);
                cr_assert_eq(inet_pton(AF_INET6, WEB_IP6, &want), 1);
                cr_assert_eq(inet_pton(AF_INET6, v6, &got), 1, "ips %s", ips);
                cr_expect(memcmp(&want, &got, sizeof(want)) == 0, "ips %s", ips);
            }
            json_array_foreach(json_object_get(batch, "events"), i, ev)
            {
                if (json_integer_value(json_object_get(ev, "pid")) != pid)
                    continue;
                event = true;
                cr_expect_str_eq(jstr(ev, "k8s_pod_name"), web.name);
                cr_expect_str_eq(jstr(ev, "k8s_workload"), "web");
                cr_expect_str_eq(jstr(ev, "k8s_workload_kind"), "Deployment");
            }
            json_decref(m);
        }
        free(log);
    }
    cr_assert(entry, "no pod table entry for %s reached the npm client", web.name);
    cr_assert(event, "no event of pid %d reached the npm client", (int)pid);
}

/*
 * A process in a pod asks the test's DNS server for svc.test (answered
 * 127.0.0.1), then connects there: the dns event names the pod, and so does
 * the connection, with peer_dns svc.test; a process of another pod that
 * connects to the same address resolved nothing, so its connection has no
 * peer_dns (names are per pod).
 */
static pid_t resolve_and_connect(const struct pod *p, bool resolve)
{
    int go[2];
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 0) /* EOF once the parent has moved us */
            _exit(120);
        if (resolve) {
            static const uint8_t q[] = {0x5d, 0x5d, 1,   0, 0,   1,   0,   0,   0, 0, 0, 0, 3,
                                        's',  'v',  'c', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
            uint8_t a[512];
            struct sockaddr_in to = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)dns_port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int fd = socket(AF_INET, SOCK_DGRAM, 0);
            struct timeval tv = {.tv_sec = 5};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0 ||
                send(fd, q, sizeof(q), 0) != (ssize_t)sizeof(q) || recv(fd, a, sizeof(a), 0) < 17)
                _exit(2);
            close(fd);
        }
        struct sockaddr_in svc = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)listen_port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int s = socket(AF_INET, SOCK_STREAM, 0);
        _exit(connect(s, (struct sockaddr *)&svc, sizeof(svc)) == 0 ? 0 : 3);
    }
    close(go[0]);
    move_to_cgroup(pid, p->rel);
    close(go[1]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    return pid;
}

Test(e2e_k8s, dns_events_name_their_pod_and_peer_dns_stays_in_it)
{
    pid_t asker = resolve_and_connect(&web, true);
    json_t *ev = wait_event(asker, "dns");
    expect_pod(ev, &web, true);
    cr_expect_str_eq(jstr(ev, "query"), "svc.test");
    cr_expect_str_eq(jstr(ev, "status"), "answered");
    json_t *answers = json_object_get(ev, "answers");
    cr_expect_eq(json_array_size(answers), 1);
    cr_expect_str_eq(json_string_value(json_array_get(answers, 0)), "127.0.0.1");
    json_decref(ev);
    ev = wait_event(asker, "connection");
    expect_pod(ev, &web, true);
    cr_expect_str_eq(jstr(ev, "peer_dns"), "svc.test");
    json_decref(ev);

    pid_t other = resolve_and_connect(&apisrv, false);
    ev = wait_event(other, "connection");
    expect_pod(ev, &apisrv, true);
    cr_expect_null(json_object_get(ev, "peer_dns"), "another pod resolved nothing");
    json_decref(ev);
}

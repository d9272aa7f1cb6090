/*
 * End to end, as root: two real agents as two Kubernetes nodes. A real
 * nats-server; the test Kubernetes API server (tests/helpers/k8s_api_server.c)
 * serving both nodes' pods and answering each agent only its own node's
 * (fieldSelector=spec.nodeName); two real bin/ebpf-agent processes, node-a
 * and node-b, each capturing only its own node's kubepods subtree
 * (CAPTURE_CGROUP) and publishing under its own SUBJECT_PREFIX (ebpf.pa,
 * ebpf.pb); two real bin/ebpf-aggregator replicas in one cluster (same
 * QUEUE_GROUP and CONTROL_SUBJECT), replica 1 ingesting node A's batches,
 * replica 2 node B's, both in Kubernetes mode.
 *
 * Each node's pods live under a cgroup of their own,
 * <node cgroup>/kubepods/besteffort/pod<uid>/<container id>, and in a network
 * namespace of their own; a veth pair joins the two namespaces and each pod
 * routes to the other's IP over it. The client pod on node A first asks pod
 * B's DNS server for the Service's name and for pod B's own, then calls the server
 * pod on node B on its pod IP (4 bytes there, 6 back, a clean close), then a
 * closed port of pod B (refused), then Service shop/server, whose ClusterIP an
 * nftables rule in the client's namespace DNATs to pod B, as kube-proxy does.
 *
 * Asserted on both replicas' answers: the client's connection and close name
 * pod B as peer (agent A does not know pod B: the aggregator names it across
 * nodes), the server's accept and close name pod A; the call to the ClusterIP
 * has peer_service shop/server and, joined with the backend's accept, pod B;
 * the dns events name what their answers point at (the Service; pod B);
 * each agent reports only its own pod's events; /api/flows has the exact
 * edges (connections, established, failed by refused, bytes) and the same
 * answer from both replicas; promtool check metrics accepts both replicas'
 * /metrics.
 * Everything started here is stopped by PID; waits are on conditions.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures/k8s/kubepods.h"
#include "k8s_api_server.h"
#include "testutil.h"

#define WAIT_MS     30000
#define GROUP       "two-nodes-e2e"
#define POD_A_IP    "10.245.1.5"
#define POD_B_IP    "10.245.2.7"
#define SERVER_PORT 8080
#define CLOSED_PORT 9090
#define SVC_IP      "10.96.7.10" /* Service shop/server's ClusterIP, DNAT'ed to pod B */
#define SVC_PORT    80
#define DNS_SVC     "server.shop.svc.cluster.local"          /* answered with SVC_IP */
#define DNS_POD     "server-0.server.shop.svc.cluster.local" /* answered with POD_B_IP */
#define REQUEST     "ping"                                   /* client -> server */
#define REPLY       "pong!!"                                 /* server -> client */

/* A pod of the test: where it runs, what the API server says about it. */
struct tpod {
    const char *node, *name, *ns, *workload, *kind, *ip, *marker;
    char uid[37], cid[65];
    char node_cg[64];     /* the node's cgroup (its agent's CAPTURE_CGROUP) */
    char rel[KP_REL_MAX]; /* the container's cgroup, relative to the cgroup root */
    char netns[64];
    pid_t pid;               /* the pod's process */
    int go, report, proceed; /* pipes to and from it */
};

static struct tpod pod_a = {.node = "node-a",
                            .name = "client-x2k9p",
                            .ns = "shop",
                            .workload = "client",
                            .kind = "DaemonSet",
                            .ip = POD_A_IP,
                            .marker = "pod-a-start"};
static struct tpod pod_b = {.node = "node-b",
                            .name = "server-0",
                            .ns = "shop",
                            .workload = "server",
                            .kind = "StatefulSet",
                            .ip = POD_B_IP,
                            .marker = "pod-b-start"};

struct agg {
    pid_t pid;
    int port;
    char log[96];
};

static char cg_root[KP_ROOT_MAX], tmpdir[64], token[128], veth[16];
static struct kas kapi;
static bool api_started;
static pid_t nats = -1;
static int nats_port;
static struct tu_agent agent_a, agent_b;
static struct agg r1, r2;

/* Fails the test with every component's log. */
#define check(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            tu_dump_file(agent_a.log, 3000);                                                       \
            tu_dump_file(agent_b.log, 3000);                                                       \
            tu_dump_file(r1.log, 3000);                                                            \
            tu_dump_file(r2.log, 3000);                                                            \
            cr_assert_fail(__VA_ARGS__);                                                           \
        }                                                                                          \
    } while (0)

static void pod_stop(struct tpod *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    p->pid = 0;
    int *fds[] = {&p->go, &p->report, &p->proceed};
    for (size_t i = 0; i < 3; i++)
        if (*fds[i] > 0)
            close(*fds[i]);
    p->go = p->report = p->proceed = 0;
}

static void teardown(void)
{
    char cmd[256];

    pod_stop(&pod_a);
    pod_stop(&pod_b);
    tu_agent_stop(&agent_a);
    tu_agent_stop(&agent_b);
    if (agent_a.log[0])
        unlink(agent_a.log);
    if (agent_b.log[0])
        unlink(agent_b.log);
    if (r1.pid > 0)
        tu_stop(r1.pid, 10000);
    if (r2.pid > 0)
        tu_stop(r2.pid, 10000);
    r1.pid = r2.pid = 0;
    if (nats > 0)
        tu_stop(nats, 5000);
    nats = -1;
    if (api_started)
        kas_stop(&kapi);
    api_started = false;
    struct tpod *pods[] = {&pod_a, &pod_b};
    for (size_t i = 0; i < 2; i++) {
        struct tpod *p = pods[i];
        if (p->netns[0]) {
            snprintf(cmd, sizeof(cmd), "ip netns del %s", p->netns);
            tu_run(cmd, NULL); /* takes its end of the veth pair, and so the pair, with it */
            p->netns[0] = '\0';
        }
        /* A reaped process can pin its cgroup for a moment (EBUSY): retry briefly. */
        if (p->rel[0]) {
            char dir[KP_PATH_MAX];
            snprintf(dir, sizeof(dir), "%s/%s", cg_root, p->node_cg);
            for (uint64_t end = tu_mono_ms() + 3000; access(dir, F_OK) == 0; usleep(5000)) {
                kp_rmdirs(cg_root, p->rel);
                if (tu_mono_ms() > end)
                    break;
            }
            p->rel[0] = '\0';
        }
    }
    if (tmpdir[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        tu_run(cmd, NULL);
        tmpdir[0] = '\0';
    }
}

TestSuite(e2e_two_nodes, .fini = teardown, .timeout = 240);

/* ---- pods: cgroups, network namespaces, API objects ---- */

static void pod_init(struct tpod *p, const char *suffix)
{
    kp_random_uid(p->uid);
    kp_random_container_id(p->cid);
    /* "kubelet" at the top: where the agent's cgroup walk looks for kubepods (as on kind). */
    snprintf(p->node_cg, sizeof(p->node_cg), "kubelet-e2e2n-%d-%s", getpid(), suffix);
    snprintf(p->rel, sizeof(p->rel), "%s/kubepods/besteffort/pod%s/%s", p->node_cg, p->uid, p->cid);
    kp_mkdirs(cg_root, p->rel);
    snprintf(p->netns, sizeof(p->netns), "e2e2n-%d-%s", getpid(), suffix);
}

static char *pod_object(const struct tpod *p, const char *rv)
{
    char owner_uid[48];
    snprintf(owner_uid, sizeof(owner_uid), "owner-%s", p->uid);
    const struct kas_pod o = {.uid = p->uid,
                              .name = p->name,
                              .ns = p->ns,
                              .node = p->node,
                              .rv = rv,
                              .container_id = p->cid,
                              .labels = p == &pod_a ? "\"app\":\"client\"" : "\"app\":\"server\"",
                              .owner_kind = p->kind,
                              .owner_name = p->workload,
                              .owner_uid = owner_uid,
                              .ips = {p->ip, NULL}};
    char *s = kas_pod_object(&o);
    cr_assert_not_null(s);
    return s;
}

/* Two namespaces joined by a veth pair, each with its pod's IP and a route to the other's. */
static void network_up(void)
{
    char cmd[2048], *out = NULL;
    snprintf(veth, sizeof(veth), "v2n%d", getpid() % 1000000);
    snprintf(cmd, sizeof(cmd),
             "ip netns add %1$s && ip netns add %2$s && "
             "ip link add %3$sa netns %1$s type veth peer name %3$sb netns %2$s && "
             "ip -n %1$s link set lo up && ip -n %2$s link set lo up && "
             "ip -n %1$s link set %3$sa up && ip -n %2$s link set %3$sb up && "
             "ip -n %1$s addr add %4$s/32 dev %3$sa && ip -n %2$s addr add %5$s/32 dev %3$sb && "
             "ip -n %1$s route add %5$s/32 dev %3$sa && ip -n %2$s route add %4$s/32 dev %3$sb && "
             "ip -n %1$s route add %6$s/32 dev %3$sa",
             pod_a.netns, pod_b.netns, veth, POD_A_IP, POD_B_IP, SVC_IP);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "network setup failed (%d): %s", rc, out);
    free(out);
    /* The ClusterIP, DNAT'ed to its backend in the client's namespace, as kube-proxy does. */
    char rules[128];
    snprintf(rules, sizeof(rules), "%s/kube-proxy.nft", tmpdir);
    FILE *f = fopen(rules, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "table ip e2e-kube-proxy {\n"
            "  chain output {\n"
            "    type nat hook output priority -100;\n"
            "    ip daddr %s tcp dport %d dnat to %s:%d\n"
            "  }\n"
            "}\n",
            SVC_IP, SVC_PORT, POD_B_IP, SERVER_PORT);
    cr_assert_eq(fclose(f), 0);
    snprintf(cmd, sizeof(cmd), "ip netns exec %s nft -f %s", pod_a.netns, rules);
    rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "nft (%d): %s", rc, out);
    free(out);
}

/* ---- the pods' processes ---- */

static int addr_of(const char *ip, int port, struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

static bool io_full(int fd, void *buf, size_t n, bool wr)
{
    for (size_t done = 0; done < n;) {
        ssize_t r =
            wr ? write(fd, (char *)buf + done, n - done) : read(fd, (char *)buf + done, n - done);
        if (r <= 0)
            return false;
        done += (size_t)r;
    }
    return true;
}

/* A DNS query for name (type A, class IN) with id into q; its length. */
static size_t dns_query(uint8_t *q, uint16_t id, const char *name)
{
    size_t n = 12;
    memset(q, 0, n);
    q[0] = (uint8_t)(id >> 8);
    q[1] = (uint8_t)id;
    q[2] = 0x01; /* RD */
    q[5] = 1;    /* one question */
    for (const char *l = name; *l;) {
        const char *dot = strchr(l, '.');
        size_t len = dot ? (size_t)(dot - l) : strlen(l);
        q[n++] = (uint8_t)len;
        memcpy(q + n, l, len);
        n += len;
        l += len + (dot != NULL);
    }
    memcpy(q + n, "\0\0\1\0\1", 5); /* the root, type A, class IN */
    return n + 5;
}

/*
 * Pod B's DNS server on its IP, port 53: two queries, each answered with one
 * A record, pod B's own IP for a name under "server-0." (a StatefulSet pod's
 * name), the Service's ClusterIP otherwise.
 */
static void *dns_responder(void *arg)
{
    int fd = *(int *)arg;
    for (int i = 0; i < 2; i++) {
        uint8_t buf[512];
        struct sockaddr_in from;
        socklen_t flen = sizeof(from);
        ssize_t n = recvfrom(fd, buf, sizeof(buf) - 16, 0, (struct sockaddr *)&from, &flen);
        if (n < 13)
            break;
        bool pod = buf[12] == 8 && memcmp(buf + 13, "server-0", 8) == 0;
        buf[2] = 0x81; /* a response, RD */
        buf[3] = 0x80; /* RA, NOERROR */
        buf[7] = 1;    /* one answer */
        static const uint8_t rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4};
        memcpy(buf + n, rr, sizeof(rr));
        inet_pton(AF_INET, pod ? POD_B_IP : SVC_IP, buf + n + sizeof(rr));
        sendto(fd, buf, (size_t)n + sizeof(rr) + 4, 0, (struct sockaddr *)&from, flen);
    }
    return NULL;
}

/*
 * The server: its DNS server, then two connections, each a request, a
 * reply, the client's close, then its own.
 */
static int server_main(int report)
{
    struct sockaddr_in sa;
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0), d = socket(AF_INET, SOCK_DGRAM, 0);
    pthread_t dns;
    if (l < 0 || addr_of(POD_B_IP, SERVER_PORT, &sa) ||
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 4))
        return 20;
    if (d < 0 || addr_of(POD_B_IP, 53, &sa) || bind(d, (struct sockaddr *)&sa, sizeof(sa)) ||
        pthread_create(&dns, NULL, dns_responder, &d) != 0)
        return 25;
    int ready = 1;
    if (!io_full(report, &ready, sizeof(ready), true))
        return 21;
    for (int i = 0; i < 2; i++) {
        int c = accept(l, NULL, NULL);
        char buf[16];
        if (c < 0 || !io_full(c, buf, strlen(REQUEST), false) || memcmp(buf, REQUEST, 4) != 0)
            return 22;
        if (!io_full(c, REPLY, strlen(REPLY), true))
            return 23;
        if (read(c, buf, sizeof(buf)) != 0) /* the client closes first */
            return 24;
        close(c);
    }
    close(l);
    return 0;
}

/* A socket bound to the pod's IP (its port chosen now, so it is known even after a refusal). */
static int bound_socket(int *port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || addr_of(POD_A_IP, 0, &sa) || bind(s, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(s, (struct sockaddr *)&sa, &len))
        return -1;
    *port = ntohs(sa.sin_port);
    return s;
}

/* A call from a port of its own: request, reply, clean close; the port, or -1. */
static int call(const char *ip, int port)
{
    struct sockaddr_in dst;
    char buf[16];
    int local, s = bound_socket(&local);
    if (s < 0 || addr_of(ip, port, &dst) || connect(s, (struct sockaddr *)&dst, sizeof(dst)))
        return -1;
    if (!io_full(s, REQUEST, strlen(REQUEST), true) || !io_full(s, buf, strlen(REPLY), false) ||
        memcmp(buf, REPLY, strlen(REPLY)) != 0)
        return -1;
    close(s);
    return local;
}

/* Asks pod B's DNS server for name from a port of the pod's own; the port, or -1. */
static int resolve(const char *name, uint16_t id)
{
    struct sockaddr_in sa, dst;
    socklen_t len = sizeof(sa);
    uint8_t q[512], a[512];
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {.tv_sec = 10};
    size_t n = dns_query(q, id, name);
    if (s < 0 || addr_of(POD_A_IP, 0, &sa) || bind(s, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(s, (struct sockaddr *)&sa, &len) || addr_of(POD_B_IP, 53, &dst) ||
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
        sendto(s, q, n, 0, (struct sockaddr *)&dst, sizeof(dst)) != (ssize_t)n ||
        recv(s, a, sizeof(a), 0) != (ssize_t)n + 16)
        return -1;
    close(s);
    return ntohs(sa.sin_port);
}

/*
 * The client: two names from pod B's DNS server (the Service's, pod B's),
 * a call to the server pod's IP, one to a closed port of it, and one to the
 * Service's ClusterIP (reaching the same server).
 */
static int client_main(int report, int proceed)
{
    struct sockaddr_in dst;
    int ports[5];
    char c;

    if (read(proceed, &c, 1) != 1)
        return 30;
    if ((ports[3] = resolve(DNS_SVC, 0x5301)) < 0 || (ports[4] = resolve(DNS_POD, 0x5302)) < 0)
        return 37;
    if ((ports[0] = call(POD_B_IP, SERVER_PORT)) < 0)
        return 31;
    int s = bound_socket(&ports[1]);
    if (s < 0 || addr_of(POD_B_IP, CLOSED_PORT, &dst))
        return 33;
    if (connect(s, (struct sockaddr *)&dst, sizeof(dst)) == 0 || errno != ECONNREFUSED)
        return 34;
    close(s);
    if ((ports[2] = call(SVC_IP, SVC_PORT)) < 0)
        return 35;
    return io_full(report, ports, sizeof(ports), true) ? 0 : 36;
}

/*
 * Forks the pod's process, moves it into the pod's container cgroup before it
 * does anything, then it enters the pod's network namespace, runs the pod's
 * marker program (an exec in the pod, so its node's agent reports the pod)
 * and does its part.
 */
static void pod_start(struct tpod *p, bool server)
{
    int go[2], report[2], proceed[2];
    char marker[160], nspath[96];

    snprintf(marker, sizeof(marker), "%s/%s", tmpdir, p->marker);
    cr_assert_eq(symlink("/bin/true", marker), 0, "symlink: %s", strerror(errno));
    snprintf(nspath, sizeof(nspath), "/run/netns/%s", p->netns);
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(proceed, O_CLOEXEC), 0);
    p->pid = fork();
    cr_assert_geq(p->pid, 0);
    if (p->pid == 0) {
        char c;
        close(go[1]);
        close(report[0]);
        close(proceed[1]);
        if (read(go[0], &c, 1) != 0) /* EOF once the parent has moved us */
            _exit(10);
        int ns = open(nspath, O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNET) != 0)
            _exit(11);
        close(ns);
        pid_t m = fork();
        if (m == 0) {
            char *argv[] = {marker, NULL};
            execv(marker, argv);
            _exit(127);
        }
        int st = 0;
        if (m < 0 || waitpid(m, &st, 0) != m || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            _exit(12);
        _exit(server ? server_main(report[1]) : client_main(report[1], proceed[0]));
    }
    close(go[0]);
    close(report[1]);
    close(proceed[0]);
    char procs[KP_PATH_MAX + 16];
    snprintf(procs, sizeof(procs), "%s/%s/cgroup.procs", cg_root, p->rel);
    FILE *f = fopen(procs, "w");
    cr_assert_not_null(f, "open %s: %s", procs, strerror(errno));
    fprintf(f, "%d\n", (int)p->pid);
    cr_assert_eq(fclose(f), 0, "moving %d into %s: %s", (int)p->pid, p->rel, strerror(errno));
    close(go[1]);
    p->report = report[0];
    p->proceed = proceed[1];
}

/* Waits for the pod's process to exit 0. */
static void pod_wait(struct tpod *p)
{
    int status = tu_wait_exit(p->pid, WAIT_MS);
    p->pid = 0;
    check(status == 0, "the process of pod %s exited with %d", p->name, status);
}

/* ---- the monitor ---- */

static void agg_up(struct agg *r, const char *name, const char *prefix)
{
    char bin[256], listen[32], pfx[64], nats_url[64], api_env[64], token_env[160];
    r->port = tu_free_port();
    snprintf(r->log, sizeof(r->log), "%s/%s.log", tmpdir, name);
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", r->port);
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    snprintf(pfx, sizeof(pfx), "SUBJECT_PREFIX=%s", prefix);
    snprintf(api_env, sizeof(api_env), "K8S_API_URL=http://127.0.0.1:%d", kapi.port);
    snprintf(token_env, sizeof(token_env), "K8S_TOKEN_PATH=%s", token);
    char *argv[] = {bin,      "--listen-addr", listen, "--nats-url",
                    nats_url, "--queue-group", GROUP,  NULL};
    char *env[] = {pfx,
                   "DEPLOYMENT_MODE=kubernetes",
                   api_env,
                   token_env,
                   "CONTROL_SUBJECT=ebpf.control.two-nodes",
                   NULL};
    r->pid = tu_spawn(argv, env, r->log);
    check(tu_wait_http(r->port, "/ready", 200, 20000), "aggregator %s not ready", name);
}

static void agent_up(struct tu_agent *a, const struct tpod *p, const char *prefix)
{
    char nats_url[64], api_url[64];
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats_port);
    snprintf(api_url, sizeof(api_url), "http://127.0.0.1:%d", kapi.port);
    const char *const args[] = {"--nats-url",
                                nats_url,
                                "--deployment-mode",
                                "kubernetes",
                                "--k8s-api-url",
                                api_url,
                                "--k8s-token-path",
                                token,
                                "--subject-prefix",
                                prefix,
                                "--capture-cgroup",
                                p->node_cg,
                                "--flush-interval",
                                "100ms",
                                NULL};
    tu_agent_start(a, p->node, args);
}

static json_t *get(int port, const char *fmt, ...)
{
    char path[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    int status = 0;
    json_t *j = tu_get_json(port, path, &status);
    check(j && status == 200, "GET %s on :%d -> %d", path, port, status);
    return j;
}

static json_int_t jpath_int(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* The value of a metric line (name with its labels) in r's /metrics, -1 when absent. */
static long long metric(struct agg *r, const char *name)
{
    struct tu_http m;
    long long v = -1;
    cr_assert_eq(tu_http_get(r->port, "/metrics", NULL, &m), 0);
    size_t n = strlen(name);
    for (const char *l = m.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, name, n) == 0 && l[n] == ' ')
            v = atoll(l + n + 1);
    tu_http_free(&m);
    return v;
}

/* promtool check metrics on r's /metrics. */
static void promtool_clean(struct agg *r)
{
    struct tu_http m;
    char file[128], cmd[192], *out = NULL;
    cr_assert_eq(tu_http_get(r->port, "/metrics", NULL, &m), 0);
    check(m.status == 200, "/metrics on :%d -> %d", r->port, m.status);
    snprintf(file, sizeof(file), "%s/metrics-%d.txt", tmpdir, r->port);
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fwrite(m.body, 1, m.body_len, f);
    fclose(f);
    tu_http_free(&m);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", file);
    int rc = tu_run(cmd, &out);
    check(rc == 0, "promtool check metrics on :%d: %s", r->port, out);
    free(out);
}

/* ---- events ---- */

struct want {
    const char *type, *role;
    json_int_t sport, dport;
};

static bool match(json_t *ev, void *arg)
{
    struct want *w = arg;
    const char *type = tu_jstr(ev, "type"), *role = tu_jstr(ev, "role");
    return type && strcmp(type, w->type) == 0 && (!w->role || (role && !strcmp(role, w->role))) &&
           json_integer_value(json_object_get(ev, "source_port")) == w->sport &&
           json_integer_value(json_object_get(ev, "dest_port")) == w->dport;
}

/* Waits for the event on port's /api/events?node=...&type=... (an agent or a replica). */
static json_t *wait_event(int port, const char *node, struct want w)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/events?node=%s&type=%s&limit=1000", node, w.type);
    json_t *ev = tu_wait_event(port, path, match, &w, WAIT_MS);
    check(ev != NULL, "no %s%s%s event %" PRId64 " -> %" PRId64 " of %s on :%d", w.type,
          w.role ? " " : "", w.role ? w.role : "", (int64_t)w.sport, (int64_t)w.dport, node, port);
    return ev;
}

static void expect_str(json_t *ev, const char *key, const char *want)
{
    const char *got = tu_jstr(ev, key);
    if (!got || strcmp(got, want) != 0) {
        char *s = json_dumps(ev, JSON_COMPACT);
        check(false, "%s is %s, want %s, in %s", key, got ? got : "(absent)", want, s);
    }
}

static void expect_int(json_t *o, const char *key, json_int_t want, const char *what)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) != want) {
        char *s = json_dumps(o, JSON_COMPACT);
        check(false, "%s: %s is not %" PRId64 " in %s", what, key, (int64_t)want, s);
    }
}

/* The event is of pod own, and names pod peer as its peer. */
static void expect_pods(json_t *ev, const struct tpod *own, const struct tpod *peer)
{
    expect_str(ev, "k8s_pod_name", own->name);
    expect_str(ev, "k8s_node_name", own->node);
    expect_str(ev, "k8s_workload", own->workload);
    expect_str(ev, "peer_pod", peer->name);
    expect_str(ev, "peer_namespace", peer->ns);
    expect_str(ev, "peer_workload", peer->workload);
    expect_str(ev, "peer_workload_kind", peer->kind);
    expect_str(ev, "peer_node", peer->node);
}

/*
 * Every event agent a holds is of pod own: nothing of the other node's pod or
 * of the host. A packet_drop has no process; it is the pod whose socket the
 * packet was charged to (say a close purging a queue), which the agent
 * captures only for its own pods, so it names own too.
 */
static void expect_only_own(struct tu_agent *a, const struct tpod *own)
{
    json_t *all = get(a->port, "/api/events?limit=10000");
    json_t *evs = json_object_get(all, "events"), *ev;
    size_t i, n = 0, drops = 0;
    check(json_is_array(evs), "no events array from agent %s", own->node);
    json_array_foreach(evs, i, ev)
    {
        const char *pod = tu_jstr(ev, "k8s_pod_name"), *type = tu_jstr(ev, "type");
        if (!pod || strcmp(pod, own->name) != 0) {
            char *s = json_dumps(ev, JSON_COMPACT);
            check(false, "agent %s reports an event not of its pod %s: %s", own->node, own->name,
                  s);
        }
        if (type && strcmp(type, "packet_drop") == 0) {
            expect_str(ev, "k8s_workload", own->workload);
            check(tu_jstr(ev, "pid") == NULL && !json_object_get(ev, "pid"),
                  "a drop names no process");
            drops++;
        }
        n++;
    }
    check(n >= 4, "agent %s holds only %zu events", own->node, n);
    cr_log_info("agent %s: %zu events of pod %s, %zu of them drops", own->node, n, own->name,
                drops);
    json_decref(all);
}

/*
 * One call of pod A to pod B from client port sport to dst_ip:dport, as a
 * replica (port) answers it: the client's connection and close name pod B and
 * Service shop/server (pod B backs it: named so on its own IP too, SPEC: "a
 * Service whose ClusterIP, or whose backends, the peer is"), the server's
 * accept and close on 8080 name pod A and no Service; the bytes both ways.
 */
static void expect_call(int port, int sport, const char *dst_ip, int dport)
{
    json_t *ev = wait_event(port, "node-a", (struct want){"connection", NULL, sport, dport});
    expect_str(ev, "status", "established");
    expect_str(ev, "dest_ip", dst_ip);
    expect_str(ev, "peer_service", "shop/server");
    expect_pods(ev, &pod_a, &pod_b);
    json_decref(ev);
    ev = wait_event(port, "node-a", (struct want){"close", "client", sport, dport});
    expect_str(ev, "peer_service", "shop/server");
    expect_pods(ev, &pod_a, &pod_b);
    expect_int(ev, "bytes_sent", 4, "the client's close");
    expect_int(ev, "bytes_received", 6, "the client's close");
    json_decref(ev);
    ev = wait_event(port, "node-b", (struct want){"accept", NULL, sport, SERVER_PORT});
    expect_str(ev, "source_ip", POD_A_IP);
    expect_pods(ev, &pod_b, &pod_a);
    check(tu_jstr(ev, "peer_service") == NULL, "pod A backs no Service");
    json_decref(ev);
    ev = wait_event(port, "node-b", (struct want){"close", "server", sport, SERVER_PORT});
    expect_pods(ev, &pod_b, &pod_a);
    expect_int(ev, "bytes_sent", 6, "the server's close");
    expect_int(ev, "bytes_received", 4, "the server's close");
    json_decref(ev);
}

/* ---- flows ---- */

/* The edge client -> server on port in a /api/flows answer (group_by=workload), or NULL. */
static json_t *edge(json_t *flows, int port)
{
    json_t *edges = json_object_get(flows, "edges"), *e;
    size_t i;
    json_array_foreach(edges, i, e)
    {
        json_t *src = json_object_get(e, "source"), *dst = json_object_get(e, "destination");
        const char *sw = tu_jstr(src, "workload"), *dw = tu_jstr(dst, "workload");
        if (sw && dw && !strcmp(sw, pod_a.workload) && !strcmp(dw, pod_b.workload) &&
            json_integer_value(json_object_get(e, "port")) == port)
            return e;
    }
    return NULL;
}

static bool edges_complete(json_t *flows)
{
    json_t *ok = edge(flows, SERVER_PORT), *refused = edge(flows, CLOSED_PORT),
           *svc = edge(flows, SVC_PORT);
    return ok && refused && svc && jpath_int(flows, "replicas", "answered") == 2 &&
           json_integer_value(json_object_get(ok, "bytes_received")) > 0 &&
           json_integer_value(json_object_get(svc, "bytes_received")) > 0 &&
           json_integer_value(json_object_get(refused, "failed")) > 0;
}

static json_t *wait_flows(struct agg *r)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *f = get(r->port, "/api/flows?group_by=workload&namespace=shop");
        if (edges_complete(f))
            return f;
        char *s = json_dumps(f, JSON_COMPACT);
        json_decref(f);
        check(tu_mono_ms() < deadline, "no complete client -> server edges on :%d: %s", r->port, s);
        free(s);
        usleep(50000);
    }
}

/* ---- the test ---- */

static void cluster_up(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs, create cgroups and namespaces");
    kp_root_or_skip(cg_root, sizeof(cg_root));
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/e2e-two-nodes-%d", getpid());
    cr_assert(mkdir(tmpdir, 0700) == 0 || errno == EEXIST);
    snprintf(token, sizeof(token), "%s/token", tmpdir);
    FILE *f = fopen(token, "w");
    cr_assert_not_null(f);
    fputs("e2e-two-nodes-token\n", f);
    fclose(f);

    pod_init(&pod_a, "a");
    pod_init(&pod_b, "b");
    network_up();

    /* The API server: both nodes' pods (each agent lists only its own), Service shop/server. */
    char *items[2] = {pod_object(&pod_a, "900"), pod_object(&pod_b, "901")};
    char *list = kas_pod_list("1000", (const char *const *)items, 2);
    cr_assert_not_null(list);
    cr_assert_eq(kas_start(&kapi, kas_serve_pods, NULL), 0);
    api_started = true;
    kas_set_list(&kapi, list);
    free(list);
    free(items[0]);
    free(items[1]);
    const struct kas_pod backend = {
        .node = pod_b.node, .ns = pod_b.ns, .name = pod_b.name, .uid = pod_b.uid};
    char *svc = kas_service_json("shop", pod_b.workload, "902", SVC_IP, SVC_PORT);
    char *slice = kas_slice_json("shop", pod_b.workload, "903", POD_B_IP, &backend);
    cr_assert(svc && slice);
    char *svcs = kas_list_json("ServiceList", "v1", "1000", svc);
    char *slices = kas_list_json("EndpointSliceList", "discovery.k8s.io/v1", "1000", slice);
    cr_assert(svcs && slices);
    cr_assert_eq(kas_set_list_for(&kapi, "/api/v1/services", svcs), 0);
    cr_assert_eq(kas_set_list_for(&kapi, "/apis/discovery.k8s.io/v1/endpointslices", slices), 0);
    free(svc);
    free(slice);
    free(svcs);
    free(slices);

    char log[128];
    nats_port = tu_free_port();
    snprintf(log, sizeof(log), "%s/nats.log", tmpdir);
    nats = tu_nats_start(nats_port, NULL, log);
    cr_assert_gt(nats, 0, "nats-server did not start (see %s)", log);
    agg_up(&r1, "replica-1", "ebpf.pa");
    agg_up(&r2, "replica-2", "ebpf.pb");
    agent_up(&agent_a, &pod_a, "ebpf.pa");
    agent_up(&agent_b, &pod_b, "ebpf.pb");

    /* Each agent has its own node's pod, and only that one, in its cache. */
    struct tu_agent *agents[] = {&agent_a, &agent_b};
    for (size_t i = 0; i < 2; i++) {
        uint64_t deadline = tu_mono_ms() + WAIT_MS;
        for (;;) {
            json_t *st = get(agents[i]->port, "/api/stats");
            json_int_t cached = jpath_int(st, "kubernetes", "pods_cached");
            json_decref(st);
            if (cached == 1)
                break;
            check(tu_mono_ms() < deadline, "agent %d caches %" PRId64 " pods, want 1", (int)i,
                  (int64_t)cached);
            usleep(20000);
        }
    }
    /* Both replicas see each other, and each has the Service (the cluster's sum is 2). */
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *a = get(r1.port, "/api/stats"), *b = get(r2.port, "/api/stats");
        bool ok = jpath_int(a, "replicas", "answered") == 2 &&
                  jpath_int(b, "replicas", "answered") == 2 &&
                  jpath_int(a, "services", "services") == 2;
        json_decref(a);
        json_decref(b);
        if (ok)
            break;
        check(tu_mono_ms() < deadline, "the two replicas did not find each other");
        usleep(50000);
    }
}

Test(e2e_two_nodes, pods_on_two_nodes_name_each_other_through_the_aggregator)
{
    cluster_up();

    /* The pods start: each execs its marker, so its node's agent reports it. */
    pod_start(&pod_b, true);
    pod_start(&pod_a, false);
    int ready = 0;
    check(io_full(pod_b.report, &ready, sizeof(ready), false) && ready == 1,
          "the server pod did not start listening");
    json_t *ev = wait_event(agent_a.port, "node-a", (struct want){"exec", NULL, 0, 0});
    expect_str(ev, "command", pod_a.marker);
    expect_str(ev, "k8s_pod_name", pod_a.name);
    json_decref(ev);
    ev = wait_event(agent_b.port, "node-b", (struct want){"exec", NULL, 0, 0});
    expect_str(ev, "command", pod_b.marker);
    expect_str(ev, "k8s_pod_name", pod_b.name);
    json_decref(ev);

    /* Each replica holds both pods' addresses: its own node's, and the other's, announced. */
    struct agg *both[] = {&r1, &r2};
    for (size_t i = 0; i < 2; i++) {
        uint64_t deadline = tu_mono_ms() + WAIT_MS;
        while (metric(both[i], "ebpf_aggregator_peer_entries") < 2) {
            check(tu_mono_ms() < deadline, "replica %zu never held both pods' addresses", i + 1);
            usleep(20000);
        }
    }

    /* The traffic: pod A calls pod B, then a closed port of pod B. */
    int ports[5];
    check(write(pod_a.proceed, "g", 1) == 1, "the client pod is gone");
    check(io_full(pod_a.report, ports, sizeof(ports), false), "the client pod reported no ports");
    pod_wait(&pod_a);
    pod_wait(&pod_b);
    const int direct = ports[0], refused = ports[1], via_svc = ports[2], dns_svc = ports[3],
              dns_pod = ports[4];

    /* Each agent: its own side, with its own pod, and no peer: it knows only its node's pods. */
    ev = wait_event(agent_a.port, "node-a", (struct want){"connection", NULL, direct, SERVER_PORT});
    expect_str(ev, "status", "established");
    expect_str(ev, "k8s_pod_name", pod_a.name);
    check(tu_jstr(ev, "peer_pod") == NULL, "agent A named a pod of node B");
    json_decref(ev);
    ev = wait_event(agent_b.port, "node-b", (struct want){"accept", NULL, direct, SERVER_PORT});
    expect_str(ev, "k8s_pod_name", pod_b.name);
    check(tu_jstr(ev, "peer_pod") == NULL, "agent B named a pod of node A");
    json_decref(ev);
    ev = wait_event(agent_a.port, "node-a", (struct want){"close", "client", direct, SERVER_PORT});
    json_decref(ev);
    ev = wait_event(agent_b.port, "node-b", (struct want){"close", "server", direct, SERVER_PORT});
    json_decref(ev);
    ev =
        wait_event(agent_a.port, "node-a", (struct want){"connection", NULL, refused, CLOSED_PORT});
    json_decref(ev);
    ev = wait_event(agent_a.port, "node-a", (struct want){"dns", NULL, dns_pod, 53});
    expect_str(ev, "query", DNS_POD);
    check(tu_jstr(ev, "peer_pod") == NULL, "agent A named a pod of node B from a DNS answer");
    json_decref(ev);

    /* Both replicas answer the same: each side names the other node's pod as its peer. */
    for (size_t i = 0; i < 2; i++) {
        int port = both[i]->port;
        expect_call(port, direct, POD_B_IP, SERVER_PORT);
        /* Through the Service: its ClusterIP on the client's side, joined to the backend. */
        expect_call(port, via_svc, SVC_IP, SVC_PORT);
        ev = wait_event(port, "node-a", (struct want){"connection", NULL, refused, CLOSED_PORT});
        expect_str(ev, "status", "failed");
        expect_str(ev, "error", "refused");
        expect_pods(ev, &pod_a, &pod_b);
        json_decref(ev);
        /* DNS answers name what they point at: the Service's ClusterIP, pod B's IP. */
        ev = wait_event(port, "node-a", (struct want){"dns", NULL, dns_svc, 53});
        expect_str(ev, "query", DNS_SVC);
        expect_str(ev, "status", "answered");
        expect_str(ev, "k8s_pod_name", pod_a.name);
        expect_str(ev, "peer_service", "shop/server");
        check(tu_jstr(ev, "peer_pod") == NULL, "a ClusterIP names no pod");
        json_decref(ev);
        ev = wait_event(port, "node-a", (struct want){"dns", NULL, dns_pod, 53});
        expect_str(ev, "query", DNS_POD);
        expect_pods(ev, &pod_a, &pod_b);
        expect_str(ev, "peer_service", "shop/server");
        json_decref(ev);
    }

    /* Each agent reports its own pod only: never the other node's. */
    expect_only_own(&agent_a, &pod_a);
    expect_only_own(&agent_b, &pod_b);

    /* The flows: exact counts, the same answer from both replicas. */
    json_t *f1 = wait_flows(&r1), *f2 = wait_flows(&r2);
    /* An edge per port: the pod IP's, the closed port's, the ClusterIP's; accepts add none. */
    expect_int(f1, "count", 3, "/api/flows");
    json_t *ok = edge(f1, SERVER_PORT), *bad = edge(f1, CLOSED_PORT), *svc = edge(f1, SVC_PORT);
    json_t *both_ok[] = {ok, svc};
    for (size_t i = 0; i < 2; i++) {
        json_t *e = both_ok[i], *src = json_object_get(e, "source"),
               *dst = json_object_get(e, "destination");
        expect_str(src, "namespace", "shop");
        expect_str(src, "workload_kind", pod_a.kind);
        expect_str(dst, "namespace", "shop");
        expect_str(dst, "workload_kind", pod_b.kind);
        /* pod B backs shop/server: named so on its own IP too (SPEC: ClusterIP or backends) */
        expect_str(dst, "service", "shop/server");
        expect_int(e, "connections", 1, "edge to the server");
        expect_int(e, "established", 1, "edge to the server");
        expect_int(e, "failed", 0, "edge to the server");
        expect_int(e, "resets", 0, "edge to the server");
        expect_int(e, "bytes_sent", 4, "edge to the server");
        expect_int(e, "bytes_received", 6, "edge to the server");
    }
    expect_int(bad, "connections", 1, "edge to the closed port");
    expect_int(bad, "established", 0, "edge to the closed port");
    expect_int(bad, "failed", 1, "edge to the closed port");
    expect_int(json_object_get(bad, "failed_by_error"), "refused", 1, "edge to the closed port");
    json_t *e1 = json_object_get(f1, "edges"), *e2 = json_object_get(f2, "edges");
    if (!json_equal(e1, e2)) {
        char *a = json_dumps(e1, JSON_COMPACT), *b = json_dumps(e2, JSON_COMPACT);
        check(false, "the replicas' edges differ:\n%s\n%s", a, b);
    }
    json_decref(f1);
    json_decref(f2);

    promtool_clean(&r1);
    promtool_clean(&r2);
}

/*
 * The web page (SPEC section 10) in a real browser: Debian's chromium driven
 * by tests/js/ui_check.mjs (playwright-core) against a real aggregator (with
 * API_TOKEN) and a real agent (real eBPF) on a real nats-server. A marked exec
 * shows up in Live, a filter narrows the table and survives a reload, the Map
 * shows the connections this test makes (a client process of its own to a
 * loopback listener, and to a closed port) as edges with their exact counts,
 * Drops charts real packet drops and lists the dig queries this test sends
 * through a real dnsmasq (a known name, an NXDOMAIN one) with their counts,
 * and, for a Kubernetes node's batch published on the bus, a drop's workload
 * and the Service a queried name points at,
 * Nodes shows this node active with its loss counters, the agent's 256 KiB
 * outage buffer filling and overflowing while NATS is down (batches and events
 * dropped) and the aggregator's view of that node's loss once it is back, the
 * token prompt works, the agent serves the page for its node (gzipped, with
 * ETags), Live stays bounded under load (measured, not asserted), Live loads
 * the events of an outage of its stream (a TCP relay of the test's, cut),
 * Map says when the server kept only its busiest 1,000 edges, Drops & DNS
 * says when the history (an aggregator holding 300 events) does not reach
 * back over the window, no view
 * logs a console error, and stopping NATS, then the aggregator, puts a banner
 * up that says so; and the page over TLS from one more aggregator (HTTPS, a
 * self-signed certificate) loads, streams and asks nothing of another origin;
 * names made of markup, from processes and from the bus, stay text in every view.
 * Screenshots of each view, the programs' logs and the
 * measurements (first-load.json, live-load.json) go to build/ui/.
 *
 * Needs root (eBPF), node, chromium, dnsmasq, dig and the npm packages of tests/js (make deps).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "buf.h"
#include "event.h"
#include "event_json.h"
#include "intern.h"
#include "testutil.h"
#include "ui.h"

#define TOKEN     "ui-t\u00ebst-token" /* not ASCII: sent as its UTF-8 bytes */
#define CHROMIUM  "/usr/bin/chromium"
#define FLOW_OK   5 /* established connections the flow client makes */
#define FLOW_FAIL 2 /* connections it makes to a closed port */
#define DNS_OK    3 /* dig queries for a name dnsmasq knows */
#define DNS_NX    2 /* dig queries for a name under test. it does not know: NXDOMAIN */
#define AUTH      "Authorization: Bearer " TOKEN
/* An address outside the cluster, reached by a name (OUTSIDE_NAME) and without (publish_k8s_node).
 */
#define OUTSIDE_IP   "203.0.113.7"
#define OUTSIDE_NAME "ext.example"

static struct tu_monitor mon;
/* build/ui: the screenshots, the marker, and the three programs' logs, kept for a look after a run.
 */
static char dir[PATH_MAX];
/* dnsmasq on a loopback port the agent watches (DNS_PORTS), started by the browser test. */
static int dns_port;
static pid_t dnsmasq = -1;
/* The TLS case: an extra aggregator serving HTTPS, and the temp dir of its certificate. */
static pid_t tls_aggregator = -1;
/* An aggregator in a queue group of its own (every batch) that holds 300 events: a history
 * shorter than the page's window. */
static pid_t small_aggregator = -1;
static char tls_dir[64];
/* The refused-credentials case: a nats-server that wants a token, and an aggregator with the wrong
 * one. */
static pid_t auth_nats = -1, refused_aggregator = -1;

static void setup(void)
{
    static const char *const logs[] = {"nats.log", "ebpf-agent.log", "ebpf-aggregator.log"};

    cr_assert_eq(geteuid(), 0, "needs root: the agent loads eBPF programs");
    cr_assert_eq(system("command -v node >/dev/null 2>&1"), 0,
                 "node not found: install Node.js (make deps installs it)");
    cr_assert_eq(access(CHROMIUM, X_OK), 0, CHROMIUM " not found: run make deps");
    cr_assert_eq(access(tu_repo_path("tests/js/node_modules/playwright-core/package.json"), F_OK),
                 0, "npm packages of tests/js are missing: run make deps");
    cr_assert_eq(access("/usr/sbin/dnsmasq", X_OK), 0,
                 "/usr/sbin/dnsmasq not found: run make deps");
    cr_assert_eq(system("command -v dig >/dev/null 2>&1"), 0, "dig not found: run make deps");
    cr_assert_eq(access(tu_repo_path("build/bench/bench_load"), X_OK), 0,
                 "build/bench/bench_load missing: make build/bench/bench_load");
    snprintf(dir, sizeof(dir), "%s", tu_repo_path("build/ui"));
    cr_assert(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", dir, strerror(errno));
    for (size_t i = 0; i < sizeof(logs) / sizeof(logs[0]); i++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/%s", dir, logs[i]); /* this test's lines only */
        cr_assert(unlink(path) == 0 || errno == ENOENT, "unlink %s: %s", path, strerror(errno));
    }
    /* The agent watches dnsmasq's port for dns events, and keeps at most 256 KiB of batches
     * while NATS is down (the outage step's 6,000 events overflow it: a loss counter moves;
     * the map step's burst of 1,100 edges fits, however far the publisher falls behind). */
    dns_port = tu_free_port(); /* free for TCP too: dnsmasq binds both */
    cr_assert_gt(dns_port, 0);
    char dns_ports[32];
    snprintf(dns_ports, sizeof(dns_ports), "DNS_PORTS=%d", dns_port);
    const char *const agent_env[] = {dns_ports, "OUTAGE_BUFFER=256KiB", NULL};
    tu_monitor_start_env(&mon, agent_env, "API_TOKEN=" TOKEN, dir);
}

/* Stops *pid (one this test started) if it runs, and forgets it. */
static void stop_child(pid_t *pid, int timeout_ms)
{
    if (*pid > 0)
        tu_stop(*pid, timeout_ms);
    *pid = -1;
}

static void teardown(void)
{
    stop_child(&dnsmasq, 5000);
    stop_child(&tls_aggregator, 10000);
    stop_child(&small_aggregator, 10000);
    stop_child(&refused_aggregator, 10000);
    stop_child(&auth_nats, 5000);
    if (tls_dir[0]) {
        char cmd[96];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tls_dir);
        tu_run(cmd, NULL);
        tls_dir[0] = '\0';
    }
    tu_monitor_stop(&mon);
}

TestSuite(e2e_ui, .init = setup, .fini = teardown, .timeout = 180);

/* Each embedded file is the one in pkg/ui/, served at its route with its type, without a token. */
Test(e2e_ui, the_binaries_serve_the_files_of_pkg_ui)
{
    /* The page is pkg/ui/index.html as built: the files' URLs versioned (mk/install.mk). */
    static const char *const files[] = {"build/gen/ui/index.html", "pkg/ui/app.js",
                                        "pkg/ui/app.css"};
    size_t n;
    const struct ui_asset *a = ui_assets(&n);
    size_t total = 0;

    cr_assert_eq(n, sizeof(files) / sizeof(files[0]));
    for (size_t i = 0; i < n; i++) {
        char *file = tu_read_file(tu_repo_path(files[i]));
        cr_assert_not_null(file, "%s", files[i]);
        cr_expect(a[i].len == strlen(file) && memcmp(a[i].data, file, a[i].len) == 0,
                  "%s: the embedded copy differs from the file: rebuild", files[i]);
        int ports[] = {mon.aggregator_port, mon.agent_port};
        for (size_t p = 0; p < 2; p++) {
            struct tu_http r;
            cr_assert_eq(tu_http_get(ports[p], a[i].route, NULL, &r), 0);
            cr_expect_eq(r.status, 200, "%s: %d", a[i].route, r.status);
            cr_expect_str_eq(r.content_type, a[i].content_type, "%s", a[i].route);
            cr_expect(r.body_len == a[i].len && memcmp(r.body, file, r.body_len) == 0,
                      "%s: served body differs from %s", a[i].route, files[i]);
            tu_http_free(&r);
        }
        /* The gzipped copy is the one mk/install.mk made (the browser test unzips what is served).
         */
        char gzpath[PATH_MAX];
        snprintf(gzpath, sizeof(gzpath), "build/gen/ui/%s.gz", strrchr(files[i], '/') + 1);
        char *gz = tu_read_file(tu_repo_path(gzpath));
        cr_assert_not_null(gz, "%s", gzpath);
        cr_expect(a[i].gz_len > 18 && a[i].gz_len < a[i].len &&
                      memcmp(a[i].gz_data, gz, a[i].gz_len) == 0,
                  "%s: the embedded gzip copy differs from %s: rebuild", files[i], gzpath);
        cr_expect(strlen(a[i].etag) == 18 && strlen(a[i].gz_etag) == 21 && a[i].etag[0] == '"',
                  "%s: etags %s %s", files[i], a[i].etag, a[i].gz_etag);
        total += a[i].len;
        free(gz);
        free(file);
    }
    /* The page names each file under its version: its ETag's digits. */
    for (size_t i = 1; i < n; i++) {
        char url[64];
        snprintf(url, sizeof(url), "\"%s?v=%.16s\"", a[i].route + 1, a[i].etag + 1);
        cr_expect_not_null(memmem(a[0].data, a[0].len, url, strlen(url)),
                           "the page does not name %s", url);
    }
    /* SPEC section 10: nothing from outside; issue 12: first load at most 300 KB. */
    cr_expect_lt(total, 300 * 1024, "the page weighs %zu bytes", total);
    for (size_t i = 0; i < n; i++)
        cr_expect_null(memmem(a[i].data, a[i].len, "://", 3),
                       "%s names an absolute URL: the page must load nothing from elsewhere",
                       a[i].route);
}

/*
 * Connections for the Map, from a child process named name (its command, so
 * its workload outside Kubernetes): FLOW_OK to a loopback listener (the
 * kernel completes them from the backlog) and FLOW_FAIL to a closed port.
 */
static void make_flows(const char *name, int *ok_port, int *closed_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(lfd >= 0 && bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
                  listen(lfd, 16) == 0 && getsockname(lfd, (struct sockaddr *)&sa, &len) == 0,
              "listener: %s", strerror(errno));
    *ok_port = ntohs(sa.sin_port);
    *closed_port = tu_free_port();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_NAME, name);
        int bad = 0;
        for (int i = 0; i < FLOW_OK + FLOW_FAIL; i++) {
            struct sockaddr_in to = sa;
            to.sin_port = htons(i < FLOW_OK ? *ok_port : *closed_port);
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int rc = connect(fd, (struct sockaddr *)&to, sizeof(to));
            bad |= i < FLOW_OK ? rc != 0 : !(rc < 0 && errno == ECONNREFUSED);
            close(fd);
        }
        _exit(bad);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the flow client's connects did not go as planned");
    for (int i = 0; i < FLOW_OK; i++) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0)
            close(c);
    }
    close(lfd);
}

/* A real dnsmasq on 127.0.0.1:dns_port that knows name and answers NXDOMAIN for other .test
 * names; returns once it answers. */
static void dnsmasq_start(const char *name)
{
    char port[32], pidfile[PATH_MAX + 32], log[PATH_MAX + 32], record[64];
    snprintf(port, sizeof(port), "--port=%d", dns_port);
    snprintf(pidfile, sizeof(pidfile), "--pid-file=%s/dnsmasq.pid", dir);
    snprintf(log, sizeof(log), "%s/dnsmasq.log", dir);
    snprintf(record, sizeof(record), "--host-record=%s,127.0.0.9", name);
    unlink(log);
    char *argv[] = {"/usr/sbin/dnsmasq",
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    pidfile,
                    port,
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    record,
                    "--local=/test/",
                    NULL};
    dnsmasq = tu_spawn(argv, NULL, log);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "dig @127.0.0.1 -p %d +tries=1 +time=1 +short ready.test", dns_port);
    uint64_t deadline = tu_mono_ms() + 20000;
    while (tu_run(cmd, NULL) != 0) {
        char *text = tu_read_file(log);
        cr_assert(tu_mono_ms() < deadline, "dnsmasq does not answer; log:\n%s",
                  text ? text : "(none)");
        free(text);
        usleep(50000);
    }
}

/* n dig queries for name, each answered with status (NOERROR, NXDOMAIN). */
static void dig_n(const char *name, int n, const char *status)
{
    char cmd[160], want[48];
    snprintf(cmd, sizeof(cmd), "dig @127.0.0.1 -p %d +tries=1 +time=3 %s", dns_port, name);
    snprintf(want, sizeof(want), "status: %s", status);
    for (int i = 0; i < n; i++) {
        char *out;
        int rc = tu_run(cmd, &out);
        cr_assert(rc == 0 && strstr(out, want), "%s: exit %d, wanted %s:\n%s", cmd, rc, want, out);
        free(out);
    }
}

/* Waits until the aggregator holds n dns events for name. */
static void wait_dns(const char *name, int n)
{
    char path[128];
    snprintf(path, sizeof(path), "/api/events?type=dns&query=%s", name);
    uint64_t deadline = tu_mono_ms() + 20000;
    json_int_t count = -1;
    for (;;) {
        int status = 0;
        json_t *j = tu_get_json_hdr(mon.aggregator_port, path, AUTH, &status);
        if (status == 200 && j)
            count = tu_jint(j, "count");
        json_decref(j);
        if (count == n)
            return;
        cr_assert(count < n && tu_mono_ms() < deadline,
                  "the aggregator has %lld dns events for %s, wanted %d", (long long)count, name,
                  n);
        usleep(50000);
    }
}

/* Publishes the n events ev as the first JSON batch of node's agent, with its headers. */
static void publish_json_batch(const char *node, const struct event *ev, int n)
{
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < n; i++) {
        event_json_write(&b, &ev[i]);
        buf_puts(&b, "\n");
    }
    char url[64], subject[300], count[16];
    natsConnection *nc = NULL;
    natsMsg *m = NULL;
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", mon.nats_port);
    bus_node_subject("ebpf.events", node, subject, sizeof(subject));
    snprintf(count, sizeof(count), "%d", n);
    cr_assert_eq(natsConnection_ConnectTo(&nc, url), NATS_OK);
    cr_assert_eq(natsMsg_Create(&m, subject, NULL, b.data, (int)b.len), NATS_OK);
    natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON);
    natsMsgHeader_Set(m, BUS_HDR_NODE, node);
    natsMsgHeader_Set(m, BUS_HDR_INSTANCE, "ui-agent-of-a-test");
    natsMsgHeader_Set(m, BUS_HDR_SEQUENCE, "1");
    natsMsgHeader_Set(m, BUS_HDR_EVENTS, count);
    cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
    natsMsg_Destroy(m);
    natsConnection_Destroy(nc);
    buf_free(&b);
}

/*
 * What an agent on a Kubernetes node publishes (a JSON batch on its subject,
 * with its headers), which this machine cannot make with pods of its own: a
 * packet drop of pod shop/web's socket (SOCKET_RCVBUFF) and a query for
 * dns_name answered with Service shop/web's ClusterIP. The page names the
 * drop's workload and what the name points at. And connections of two
 * workloads to one address outside the cluster (OUTSIDE_IP), one reached by
 * the name OUTSIDE_NAME, one not: two endpoints on the Map.
 */
static void publish_k8s_node(const char *dns_name)
{
    static const char answers[] = "10.96.0.10";
    enum { N = 4 };
    struct event ev[N] = {0};
    uint64_t now = (uint64_t)time(NULL) * 1000000000ull;
    for (int i = 0; i < N; i++) {
        ev[i].id = 0x5e00000000000001ull + (uint64_t)i;
        ev[i].timestamp_ns = now;
        ev[i].node = intern("ui-k8s-node");
        ev[i].family = EVENT_FAMILY_IPV4;
        ev[i].protocol = 17;
    }
    ev[0].type = EVENT_PACKET_DROP;
    ev[0].k8s.namespace = intern("shop");
    ev[0].k8s.pod_name = intern("web-7d9c6b8f5d-x2k8p");
    ev[0].k8s.workload = intern("web");
    ev[0].k8s.workload_kind = intern("Deployment");
    ev[0].u.drop.reason = intern("SOCKET_RCVBUFF");
    ev[0].u.drop.reason_code = 6;
    ev[0].u.drop.location = intern("__udp_enqueue_schedule_skb+0x2c1");
    inet_pton(AF_INET, "10.1.0.9", ev[0].saddr);
    inet_pton(AF_INET, "10.1.0.5", ev[0].daddr);
    ev[1].type = EVENT_DNS;
    ev[1].status = EVENT_STATUS_ANSWERED;
    ev[1].pid = 4242;
    strcpy(ev[1].command, "curl");
    ev[1].k8s.namespace = intern("shop");
    ev[1].k8s.pod_name = intern("client-1");
    ev[1].peer.service = intern("shop/web");
    ev[1].u.dns.query = (char *)dns_name;
    ev[1].u.dns.query_type = 1;
    ev[1].u.dns.answers = (char *)answers;
    ev[1].u.dns.answers_len = sizeof(answers);
    ev[1].u.dns.transaction_id = 7;
    ev[1].u.dns.latency_ns = 250000;
    inet_pton(AF_INET, "10.1.0.9", ev[1].saddr);
    inet_pton(AF_INET, "10.96.0.53", ev[1].daddr);
    ev[1].sport = 40000;
    ev[1].dport = 53;
    for (int i = 2; i < N; i++) {
        ev[i].type = EVENT_CONNECTION;
        ev[i].status = EVENT_STATUS_ESTABLISHED;
        ev[i].protocol = 6;
        ev[i].pid = 4300 + i;
        strcpy(ev[i].command, "curl");
        ev[i].k8s.namespace = intern("shop");
        ev[i].k8s.pod_name = intern(i == 2 ? "named-1" : "unnamed-1");
        ev[i].k8s.workload = intern(i == 2 ? "named" : "unnamed");
        ev[i].k8s.workload_kind = intern("Deployment");
        inet_pton(AF_INET, i == 2 ? "10.1.0.11" : "10.1.0.12", ev[i].saddr);
        inet_pton(AF_INET, OUTSIDE_IP, ev[i].daddr);
        ev[i].sport = (uint16_t)(41000 + i);
        ev[i].dport = 443;
    }
    ev[2].peer.dns = intern(OUTSIDE_NAME);

    publish_json_batch("ui-k8s-node", ev, N);
}

Test(e2e_ui, the_page_works_in_a_real_browser)
{
    char flow_name[16];
    int flow_port, closed_port;
    snprintf(flow_name, sizeof(flow_name), "uiflow%d", (int)(getpid() % 100000));
    make_flows(flow_name, &flow_port, &closed_port);

    /* DNS for the Drops & DNS view: DNS_OK answered queries for one marked name, DNS_NX
     * NXDOMAIN for another, through the agent's capture to the aggregator. */
    char dns_name[32], dns_nx[32];
    snprintf(dns_name, sizeof(dns_name), "uidns%d.test", (int)(getpid() % 100000));
    snprintf(dns_nx, sizeof(dns_nx), "uinx%d.test", (int)(getpid() % 100000));
    dnsmasq_start(dns_name);
    dig_n(dns_name, DNS_OK, "NOERROR");
    dig_n(dns_nx, DNS_NX, "NXDOMAIN");
    wait_dns(dns_name, DNS_OK);
    wait_dns(dns_nx, DNS_NX);
    char k8s_name[48];
    snprintf(k8s_name, sizeof(k8s_name), "uiweb%d.shop.svc.cluster.local",
             (int)(getpid() % 100000));
    publish_k8s_node(k8s_name);
    wait_dns(k8s_name, 1);

    int small_port = tu_free_port();
    char small_listen[64], small_nats[64], small_group[48], small_log[PATH_MAX + 32];
    snprintf(small_listen, sizeof(small_listen), "LISTEN_ADDR=127.0.0.1:%d", small_port);
    snprintf(small_nats, sizeof(small_nats), "NATS_URL=nats://127.0.0.1:%d", mon.nats_port);
    snprintf(small_group, sizeof(small_group), "QUEUE_GROUP=ui-small-%d", (int)getpid());
    snprintf(small_log, sizeof(small_log), "%s/ebpf-aggregator-small.log", dir);
    unlink(small_log);
    char *small_argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), NULL};
    char *small_env[] = {small_listen,         small_nats,         small_group,
                         "DEPLOYMENT_MODE=vm", "HISTORY_SIZE=300", NULL};
    small_aggregator = tu_spawn(small_argv, small_env, small_log);
    cr_assert_gt(small_aggregator, 0);
    cr_assert(tu_wait_http(small_port, "/ready", 200, 30000), "the small aggregator is not ready");

    char marker[PATH_MAX + 32];
    char name[16];
    snprintf(name, sizeof(name), "uimark%d", (int)(getpid() % 100000));
    tu_marker_make(dir, name, marker, sizeof(marker));
    char *script = realpath(tu_repo_path("tests/js/ui_check.mjs"), NULL);
    cr_assert_not_null(script, "tests/js/ui_check.mjs not found");
    char *cmd;
    cr_assert_gt(
        asprintf(&cmd,
                 "AGGREGATOR_URL=http://127.0.0.1:%d AGENT_URL=http://127.0.0.1:%d TOKEN=" TOKEN
                 " MARKER='%s' MARKER_NAME='%s' SHOTS='%s' CHROMIUM=" CHROMIUM
                 " NATS_PID=%d NATS_PORT=%d AGGREGATOR_PID=%d BENCH_LOAD='%s' FLOW_CLIENT=%s"
                 " FLOW_PORT=%d FLOW_CLOSED_PORT=%d FLOW_OK=%d FLOW_FAIL=%d DNS_NAME=%s DNS_OK=%d"
                 " DNS_NX_NAME=%s DNS_NX=%d K8S_DNS_NAME=%s OUTSIDE_IP=" OUTSIDE_IP
                 " OUTSIDE_NAME=" OUTSIDE_NAME
                 " SMALL_AGGREGATOR_URL=http://127.0.0.1:%d node '%s'",
                 mon.aggregator_port, mon.agent_port, marker, name, dir, (int)mon.nats,
                 mon.nats_port, (int)mon.aggregator, tu_repo_path("build/bench/bench_load"),
                 flow_name, flow_port, closed_port, FLOW_OK, FLOW_FAIL, dns_name, DNS_OK, dns_nx,
                 DNS_NX, k8s_name, small_port, script),
        0);
    free(script);
    char *out;
    int rc = tu_run(cmd, &out);
    free(cmd);
    tu_stop(dnsmasq, 5000);
    dnsmasq = -1;
    cr_log_info("ui_check.mjs:\n%s", out);
    cr_assert_neq(rc, 3, "a tool or package is missing:\n%s", out);
    cr_assert_eq(rc, 0, "ui_check.mjs failed (exit %d):\n%s", rc, out);
    cr_assert_not_null(strstr(out, "ui: pass\n"), "no verdict:\n%s", out);
    free(out);
}

/* Runs a browser check (a command line ending in node tests/js/<name>): it exits 0 and prints
 * verdict; its output goes to the test's log. */
static void run_browser_check(const char *run, const char *name, const char *verdict)
{
    char *out;
    int rc = tu_run(run, &out);
    cr_log_info("%s:\n%s", name, out);
    cr_assert_neq(rc, 3, "a tool or package is missing:\n%s", out);
    cr_assert_eq(rc, 0, "%s failed (exit %d):\n%s", name, rc, out);
    cr_assert_not_null(strstr(out, verdict), "no verdict:\n%s", out);
    free(out);
}

/*
 * Issue 12: the page over TLS. One more real aggregator on the test's NATS,
 * with API_TOKEN and TLS_CERT/TLS_KEY (a self-signed certificate made here);
 * tests/js/ui_tls_check.mjs opens it over https, answers the token prompt,
 * sees a marked exec arrive through the stream and the node in Nodes, and
 * checks every request the page made went over https to the same origin.
 */
Test(e2e_ui, the_page_works_over_tls)
{
    char cert[96], key[96], cmd[512], *out;
    snprintf(tls_dir, sizeof(tls_dir), "/tmp/test_e2e_ui_tls.XXXXXX");
    cr_assert_not_null(mkdtemp(tls_dir), "mkdtemp: %s", strerror(errno));
    snprintf(cert, sizeof(cert), "%s/cert.pem", tls_dir);
    snprintf(key, sizeof(key), "%s/key.pem", tls_dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout '%s' -out '%s' -days 1 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1",
             key, cert);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "openssl req failed (exit %d):\n%s", rc, out);
    free(out);

    int port = tu_free_port();
    char listen[64], nats[64], tls_cert[128], tls_key[128], log[PATH_MAX + 32];
    snprintf(listen, sizeof(listen), "LISTEN_ADDR=127.0.0.1:%d", port);
    snprintf(nats, sizeof(nats), "NATS_URL=nats://127.0.0.1:%d", mon.nats_port);
    snprintf(tls_cert, sizeof(tls_cert), "TLS_CERT=%s", cert);
    snprintf(tls_key, sizeof(tls_key), "TLS_KEY=%s", key);
    snprintf(log, sizeof(log), "%s/ebpf-aggregator-tls.log", dir);
    unlink(log);
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), NULL};
    char *envp[] = {
        listen,  nats, "DEPLOYMENT_MODE=vm", "FLUSH_INTERVAL=100ms", "API_TOKEN=" TOKEN, tls_cert,
        tls_key, NULL};
    tls_aggregator = tu_spawn(argv, envp, log);
    cr_assert_gt(tls_aggregator, 0);
    /* Ready over https (/ready needs no token); plain HTTP gets no answer from a TLS port. */
    snprintf(cmd, sizeof(cmd),
             "curl -sk --max-time 2 -o /dev/null -w '%%{http_code} %%{scheme}' "
             "https://127.0.0.1:%d/ready",
             port);
    uint64_t deadline = tu_mono_ms() + 30000;
    for (;;) {
        rc = tu_run(cmd, &out);
        bool ready = rc == 0 && strcmp(out, "200 HTTPS") == 0;
        free(out);
        if (ready)
            break;
        char *text = tu_read_file(log);
        cr_assert(tu_mono_ms() < deadline, "the TLS aggregator is not ready; log:\n%s",
                  text ? text : "(none)");
        free(text);
        usleep(100000);
    }

    json_t *stats = tu_get_json(mon.agent_port, "/api/stats", NULL);
    cr_assert_not_null(stats, "the agent's /api/stats");
    char node[128];
    snprintf(node, sizeof(node), "%s", tu_jstr(stats, "node") ? tu_jstr(stats, "node") : "");
    json_decref(stats);
    cr_assert(node[0], "the agent's /api/stats names no node");

    char marker[PATH_MAX + 32], name[16];
    snprintf(name, sizeof(name), "uitls%d", (int)(getpid() % 100000));
    tu_marker_make(dir, name, marker, sizeof(marker));
    char *script = realpath(tu_repo_path("tests/js/ui_tls_check.mjs"), NULL);
    cr_assert_not_null(script, "tests/js/ui_tls_check.mjs not found");
    char *run;
    cr_assert_gt(asprintf(&run,
                          "TLS_URL=https://127.0.0.1:%d TOKEN=" TOKEN
                          " MARKER='%s' MARKER_NAME='%s'"
                          " NODE='%s' SHOTS='%s' CHROMIUM=" CHROMIUM " node '%s'",
                          port, marker, name, node, dir, script),
                 0);
    free(script);
    run_browser_check(run, "ui_tls_check.mjs", "ui-tls: pass\n");
    free(run);
    int st = tu_stop(tls_aggregator, 10000);
    tls_aggregator = -1;
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the TLS aggregator did not exit cleanly (status %d)", st);
}

/*
 * An aggregator whose NATS credentials the server refuses: the banner says why
 * (bus.last_error of /api/stats, "Authorization Violation"), not only that it is
 * not connected, so the operator looks at the credentials rather than the network.
 */
Test(e2e_ui, the_banner_says_why_nats_refuses_the_aggregator)
{
    int nats_port = tu_free_port(), port = tu_free_port();
    char nats_log[PATH_MAX + 32], log[PATH_MAX + 32];
    snprintf(nats_log, sizeof(nats_log), "%s/nats-auth.log", dir);
    snprintf(log, sizeof(log), "%s/ebpf-aggregator-refused.log", dir);
    unlink(nats_log);
    unlink(log);
    static const char *const auth[] = {"--auth", "the-right-token", NULL};
    auth_nats = tu_nats_start(nats_port, auth, nats_log);
    cr_assert_gt(auth_nats, 0, "nats-server with --auth did not start");

    char listen[64], nats[64];
    snprintf(listen, sizeof(listen), "LISTEN_ADDR=127.0.0.1:%d", port);
    snprintf(nats, sizeof(nats), "NATS_URL=nats://127.0.0.1:%d", nats_port);
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), NULL};
    char *envp[] = {listen, nats, "DEPLOYMENT_MODE=vm", "NATS_TOKEN=a-wrong-token", NULL};
    refused_aggregator = tu_spawn(argv, envp, log);
    cr_assert_gt(refused_aggregator, 0);
    cr_assert(tu_wait_http(port, "/health", 200, 30000), "the aggregator does not serve");
    /* The reason the page must show is the one the aggregator reports. */
    char reason[256] = "";
    for (uint64_t deadline = tu_mono_ms() + 15000; !reason[0]; usleep(100000)) {
        json_t *stats = tu_get_json(port, "/api/stats", NULL);
        snprintf(reason, sizeof(reason), "%s", tu_jpath_str(stats, "bus.last_error"));
        json_decref(stats);
        cr_assert(reason[0] || tu_mono_ms() < deadline, "no bus.last_error in /api/stats");
    }
    cr_assert_not_null(strstr(reason, "Authorization"), "bus.last_error: %s", reason);

    char *script = realpath(tu_repo_path("tests/js/ui_banner_check.mjs"), NULL);
    cr_assert_not_null(script, "tests/js/ui_banner_check.mjs not found");
    char *run;
    cr_assert_gt(asprintf(&run,
                          "URL=http://127.0.0.1:%d EXPECT='not connected to NATS (%s)'"
                          " CHROMIUM=" CHROMIUM " node '%s'",
                          port, reason, script),
                 0);
    free(script);
    run_browser_check(run, "ui_banner_check.mjs", "ui-banner: pass\n");
    free(run);
}

/*
 * Bytes a process controls, and bytes a batch on the bus can carry, are shown
 * as text. A program run through a link named like markup, with markup,
 * quotes, javascript:, bytes that are not UTF-8 and a 64 KiB word as its
 * arguments; a process that renamed itself (PR_SET_NAME) to markup making
 * connects that fail before a source address or port is chosen (in a network
 * namespace of its own, with no route) and one refused on ::1; and a
 * Kubernetes node's batch with markup for node, pod, namespace, workload, peer
 * and DNS names and a 1,000-byte workload. tests/js/ui_hostile_check.mjs
 * checks every view in chromium: no dialog, no element or handler injected,
 * the text there as it was sent, addresses without an empty port, and no view
 * wider than the window.
 */
#define HOSTILE_NODE     "<b>node</b>\"'&amp;"
#define HOSTILE_POD      "<img src=x onerror=alert(5)>"
#define HOSTILE_NS       "</script>"
#define HOSTILE_WORKLOAD "<svg onload=alert(6)>"
#define HOSTILE_PEER_DNS "javascript:alert(7)"
#define HOSTILE_QUERY    "<img src=x onerror=alert(8)>.test"
#define HOSTILE_CONNECT  "<i>'\"&lt;</i>" /* a command: at most 15 bytes */

static void hostile_exec(const char *link_dir, json_t *spec)
{
    static char big[64 * 1024];
    memset(big, 'w', sizeof(big) - 1);
    char link[PATH_MAX];
    snprintf(link, sizeof(link), "%s/<svg onload=alert(2)>", link_dir);
    cr_assert_eq(symlink("/bin/true", link), 0, "symlink %s: %s", link, strerror(errno));
    char *argv[] = {"<img src=x onerror=alert(1)>",
                    "</script><script>alert(3)</script>",
                    "\"'`quotes&amp;",
                    "javascript:alert(4)",
                    "bad\xff\xfeutf8",
                    big,
                    NULL};
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        execv(link, argv);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s did not run", link);
    json_object_set_new(spec, "exec_file", json_string(link));
    json_object_set_new(spec, "exec_comm", json_string("<svg onload=ale")); /* 15 bytes */
    json_t *args = json_array();
    for (int i = 0; i < 4; i++)
        json_array_append_new(args, json_string(argv[i]));
    json_object_set_new(spec, "exec_args", args);
    json_object_set_new(spec, "big_arg_len", json_integer((json_int_t)strlen(big)));
}

/* connect() to addr on port 80 or closed_port; 0 when it failed with want. */
static int connect_fails(int family, const char *addr, int port, int want)
{
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, addr, &in->sin_addr);
        len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, addr, &in6->sin6_addr);
        len = sizeof(*in6);
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = connect(fd, (struct sockaddr *)&ss, len);
    int err = errno;
    close(fd);
    return rc < 0 && err == want ? 0 : 1;
}

/* Failed connects of a process named HOSTILE_CONNECT: refused on ::1 (with its source), then,
 * in a network namespace with no route (and no IPv6 address), before any source is chosen. */
static void hostile_connects(int closed_port)
{
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_NAME, HOSTILE_CONNECT);
        int bad = connect_fails(AF_INET6, "::1", closed_port, ECONNREFUSED) << 0;
        if (unshare(CLONE_NEWNET) != 0)
            _exit(8);
        bad |= connect_fails(AF_INET, "10.77.50.5", 80, ENETUNREACH) << 1;
        bad |= connect_fails(AF_INET6, "fd77:50::5", 80, EADDRNOTAVAIL) << 2; /* no source */
        _exit(bad);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the connects did not fail as planned (status %d)", status);
}

/* A Kubernetes node's batch whose names are markup, one workload 1,000 bytes long. */
static void publish_hostile_node(json_t *spec)
{
    static char long_workload[1001];
    memset(long_workload, 'W', sizeof(long_workload) - 1);
    enum { N = 4 };
    struct event ev[N] = {0};
    uint64_t now = (uint64_t)time(NULL) * 1000000000ull;
    for (int i = 0; i < N; i++) {
        ev[i].id = 0x6e00000000000001ull + (uint64_t)i;
        ev[i].timestamp_ns = now;
        ev[i].node = intern(HOSTILE_NODE);
        ev[i].family = EVENT_FAMILY_IPV4;
        ev[i].protocol = 6;
        ev[i].pid = 5100 + i;
        strcpy(ev[i].command, "curl");
        ev[i].k8s.namespace = intern(HOSTILE_NS);
        ev[i].k8s.pod_name = intern(HOSTILE_POD);
        ev[i].k8s.workload = intern(HOSTILE_WORKLOAD);
        ev[i].k8s.workload_kind = intern("Deployment");
        inet_pton(AF_INET, "10.1.0.21", ev[i].saddr);
        inet_pton(AF_INET, "203.0.113.8", ev[i].daddr);
        ev[i].sport = (uint16_t)(42000 + i);
        ev[i].dport = 443;
    }
    ev[0].type = EVENT_CONNECTION;
    ev[0].status = EVENT_STATUS_ESTABLISHED;
    ev[0].peer.dns = intern(HOSTILE_PEER_DNS);
    ev[1].type = EVENT_CONNECTION;
    ev[1].status = EVENT_STATUS_FAILED;
    ev[1].u.conn.error = intern("refused");
    ev[1].k8s.workload = intern(long_workload);
    ev[2].type = EVENT_PACKET_DROP;
    ev[2].protocol = 17;
    ev[2].u.drop.reason = intern("SOCKET_RCVBUFF");
    ev[2].u.drop.reason_code = 6;
    ev[2].u.drop.location = intern("__udp_enqueue_schedule_skb+0x2c1");
    /* A query from a pod whose namespace is not known. */
    static const char answers[] = "10.96.0.11";
    ev[3].type = EVENT_DNS;
    ev[3].protocol = 17;
    ev[3].status = EVENT_STATUS_ANSWERED;
    ev[3].k8s.namespace = NULL;
    ev[3].k8s.workload = NULL;
    ev[3].k8s.workload_kind = NULL;
    ev[3].peer.service = intern(HOSTILE_NS "/" HOSTILE_WORKLOAD);
    ev[3].u.dns.query = HOSTILE_QUERY;
    ev[3].u.dns.query_type = 1;
    ev[3].u.dns.answers = (char *)answers;
    ev[3].u.dns.answers_len = sizeof(answers);
    ev[3].u.dns.transaction_id = 9;
    ev[3].u.dns.latency_ns = 250000;
    inet_pton(AF_INET, "10.96.0.53", ev[3].daddr);
    ev[3].dport = 53;
    publish_json_batch(HOSTILE_NODE, ev, N);
    json_object_set_new(spec, "node", json_string(HOSTILE_NODE));
    json_object_set_new(spec, "pod", json_string(HOSTILE_POD));
    json_object_set_new(spec, "namespace", json_string(HOSTILE_NS));
    json_object_set_new(spec, "workload", json_string(HOSTILE_WORKLOAD));
    json_object_set_new(spec, "long_workload", json_string(long_workload));
    json_object_set_new(spec, "peer_dns", json_string(HOSTILE_PEER_DNS));
    json_object_set_new(spec, "query", json_string(HOSTILE_QUERY));
}

Test(e2e_ui, hostile_names_are_shown_as_text)
{
    char tmp[] = "/tmp/test_e2e_ui_hostile.XXXXXX";
    cr_assert_not_null(mkdtemp(tmp), "mkdtemp: %s", strerror(errno));
    json_t *spec = json_object();
    hostile_exec(tmp, spec);
    int closed_port = tu_free_port();
    hostile_connects(closed_port);
    json_object_set_new(spec, "connect_comm", json_string(HOSTILE_CONNECT));
    json_object_set_new(spec, "closed_port", json_integer(closed_port));
    publish_hostile_node(spec);
    char spec_path[PATH_MAX];
    snprintf(spec_path, sizeof(spec_path), "%s/hostile.json", tmp);
    cr_assert_eq(json_dump_file(spec, spec_path, 0), 0);
    json_decref(spec);

    char *script = realpath(tu_repo_path("tests/js/ui_hostile_check.mjs"), NULL);
    cr_assert_not_null(script, "tests/js/ui_hostile_check.mjs not found");
    char *run;
    cr_assert_gt(asprintf(&run,
                          "AGGREGATOR_URL=http://127.0.0.1:%d TOKEN=" TOKEN
                          " HOSTILE='%s' SHOTS='%s' CHROMIUM=" CHROMIUM " node '%s'",
                          mon.aggregator_port, spec_path, dir, script),
                 0);
    free(script);
    run_browser_check(run, "ui_hostile_check.mjs", "ui-hostile: pass\n");
    free(run);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    tu_run(cmd, NULL);
}

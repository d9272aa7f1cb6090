/*
 * dns events end to end: a real nats-server, the real bin/ebpf-agent (VM
 * mode, real BPF: cgroup_skb programs on the cgroup v2 root), a real
 * bin/ebpf-aggregator, a real dnsmasq and real dig, plus two small servers of
 * the test's own (a responder that answers SERVFAIL or malformed messages, and
 * a UDP socket that never answers). DNS_PORTS lists the three servers' ports,
 * so nothing else on the machine is looked at.
 *
 * Every field of each dns event is checked against what was asked and what
 * the server answered (dig prints the transaction id it used), including the
 * process that asked; then peer_dns on a connection to an answered address,
 * the query/rcode filters, the timeout, and malformed answers (counted parse
 * errors, no crash, no event with a wrong name). Everything is started here
 * and stopped by PID; waits are on conditions.
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <resolv.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "event.h"
#include "testutil.h"

#define WAIT_MS        20000
#define SVC_ADDR       "127.0.0.77" /* svc.test: a loopback address a listener binds */
#define MANY_NET       "127.0.1."   /* many.test: MANY_NET 1 to MANY_ADDRS */
#define MANY_ADDRS     (EVENT_DNS_ANSWERS_MAX + 8)
#define MANY_FIRST_ARG 15         /* dnsmasq's arguments before them */
#define EDGE_ADDR      "10.9.8.7" /* every name under edge.test */
#define MARKER         "dnsq-marker"
#define TIMEOUT_MS     1000 /* DNS_TIMEOUT */

struct proc {
    pid_t pid;
    int port;
    char log[160];
};

static struct proc nats, agg, dnsmasq, responder, sub, tail;
static struct tu_agent agent;
static int silent_fd = -1, silent_port, tcp_fds[2] = {-1, -1};
static int closed_port; /* a DNS port nothing listens on */
static char nats_url[64];

static void stop_all(void)
{
    if (sub.pid > 0)
        tu_stop(sub.pid, 2000);
    if (tail.pid > 0)
        tu_stop(tail.pid, 2000);
    if (responder.pid > 0)
        tu_stop(responder.pid, 2000);
    if (dnsmasq.pid > 0)
        tu_stop(dnsmasq.pid, 5000);
    if (agg.pid > 0)
        tu_stop(agg.pid, 10000);
    tu_agent_stop(&agent);
    if (nats.pid > 0)
        tu_stop(nats.pid, 2000);
    if (silent_fd >= 0)
        close(silent_fd);
    for (int i = 0; i < 2; i++)
        if (tcp_fds[i] >= 0)
            close(tcp_fds[i]);
    char pidfile[96];
    snprintf(pidfile, sizeof(pidfile), "/tmp/e2e-dns-dnsmasq-%d.pid", getpid());
    unlink(pidfile);
}

/* The agent leaves cleanly (under ASan: without a leak of what the DNS path held). */
static void agent_exits_cleanly(void)
{
    int st = tu_agent_stop(&agent);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        tu_dump_file(agent.log, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "agent exit status %d", st);
}

/* After a pass: the logs are only worth keeping when something failed. */
static void remove_logs(void)
{
    unlink(agg.log);
    unlink(agent.log);
    unlink(nats.log);
    unlink(dnsmasq.log);
    if (tail.log[0])
        unlink(tail.log);
    if (sub.log[0])
        unlink(sub.log);
}

/* Waits until the file at path holds needle; true when it does. */
static bool wait_log(const char *path, const char *needle, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        char *s = tu_read_file(path);
        bool found = s && strstr(s, needle);
        free(s);
        if (found)
            return true;
        usleep(20000);
    } while (tu_mono_ms() < deadline);
    return false;
}

/* The independent readers of the bus: `ebpf-aggregator tail` with dns filters, and the npm
 * client (nats + protobufjs, tests/js/sub.mjs). */
static void bus_readers_up(void)
{
    char bin[256], script[256];
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(tail.log, sizeof(tail.log), "/tmp/e2e-dns-tail-%d.log", getpid());
    char *targv[] = {bin,      "tail",    "--nats",   nats_url, "--query",
                     "*.test", "--rcode", "NXDOMAIN", NULL};
    tail.pid = tu_spawn(targv, NULL, tail.log);
    cr_assert(wait_log(tail.log, "following", WAIT_MS), "tail did not subscribe");

    cr_assert_eq(access(tu_repo_path("tests/js/node_modules/nats"), F_OK), 0,
                 "tests/js/node_modules is missing: run make deps");
    snprintf(script, sizeof(script), "%s", tu_repo_path("tests/js/sub.mjs"));
    snprintf(sub.log, sizeof(sub.log), "/tmp/e2e-dns-sub-%d.log", getpid());
    char *sargv[] = {"/usr/bin/node", script,      "--server", nats_url, "--subject",
                     "ebpf.events.>", "--timeout", "80000",    NULL};
    sub.pid = tu_spawn(sargv, NULL, sub.log);
    cr_assert(wait_log(sub.log, "{\"ready\":true}", WAIT_MS), "sub.mjs did not subscribe");
}

/* The event with dns.query == query in the npm client's output (a new reference), or NULL. */
static json_t *sub_dns_event_now(const char *query)
{
    json_t *found = NULL;
    char *s = tu_read_file(sub.log);
    for (char *line = s ? strtok(s, "\n") : NULL; line && !found; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(json_object_get(j, "batch"), "events"), i, ev)
        {
            const char *q = tu_jstr(json_object_get(ev, "dns"), "query");
            if (!found && q && strcmp(q, query) == 0)
                found = json_incref(ev);
        }
        json_decref(j);
    }
    free(s);
    return found;
}

/* The event with dns.query == query in the npm client's output, once it is there (a new
 * reference). */
static json_t *sub_dns_event(const char *query)
{
    json_t *js = NULL;
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (!(js = sub_dns_event_now(query)) && tu_mono_ms() < deadline)
        usleep(50000);
    cr_assert(js, "sub.mjs decoded no dns event for %s", query);
    return js;
}

/* Whether port is free on addr (a sockaddr_in or _in6) for type (SOCK_DGRAM, SOCK_STREAM). */
static bool port_free(int family, int type, int port)
{
    struct sockaddr_in a4 = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6,
                              .sin6_port = htons((uint16_t)port),
                              .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int fd = socket(family, type | SOCK_CLOEXEC, 0);
    bool ok = fd >= 0 && (family == AF_INET ? bind(fd, (struct sockaddr *)&a4, sizeof(a4))
                                            : bind(fd, (struct sockaddr *)&a6, sizeof(a6))) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* A port free right now for UDP and TCP on 127.0.0.1 and ::1 (dnsmasq binds all four). */
static int free_dns_port(void)
{
    for (int tries = 0; tries < 50; tries++) {
        int port = tu_free_port();
        if (port > 0 && port_free(AF_INET6, SOCK_DGRAM, port) &&
            port_free(AF_INET6, SOCK_STREAM, port))
            return port;
    }
    cr_assert_fail("no free port for dnsmasq");
    return 0;
}

/* ---- DNS messages by hand (the responder and the test's own queries) ---- */

static size_t put_name(uint8_t *p, const char *name)
{
    size_t n = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        p[n++] = (uint8_t)l;
        memcpy(p + n, name, l);
        n += l;
        name += l + (dot ? 1 : 0);
    }
    p[n++] = 0;
    return n;
}

/* A query for name/type A with id; returns its length. */
static size_t make_query(uint8_t *buf, uint16_t id, const char *name)
{
    memset(buf, 0, 12);
    buf[0] = (uint8_t)(id >> 8), buf[1] = (uint8_t)id;
    buf[2] = 0x01; /* RD */
    buf[5] = 1;    /* qdcount */
    size_t n = 12 + put_name(buf + 12, name);
    buf[n++] = 0, buf[n++] = 1; /* A */
    buf[n++] = 0, buf[n++] = 1; /* IN */
    return n;
}

/* make_query() with an EDNS OPT record whose padding option (RFC 7830) makes it len bytes. */
static size_t make_padded_query(uint8_t *buf, uint16_t id, const char *name, size_t len)
{
    size_t n = make_query(buf, id, name);
    cr_assert_geq(len, n + 15);
    size_t pad = len - n - 15;
    buf[11] = 1; /* arcount */
    uint8_t opt[] = {0,
                     0,
                     41,
                     0x10,
                     0,
                     0,
                     0,
                     0,
                     0,
                     (uint8_t)((pad + 4) >> 8),
                     (uint8_t)(pad + 4),
                     0,
                     12,
                     (uint8_t)(pad >> 8),
                     (uint8_t)pad};
    memcpy(buf + n, opt, sizeof(opt));
    memset(buf + n + sizeof(opt), 0, pad);
    return len;
}

/* The question's name of a query, as text (no decompression: queries have none). */
static void query_name(const uint8_t *q, size_t len, char *out, size_t outlen)
{
    size_t i = 12, o = 0;
    while (i < len && q[i] && o + q[i] + 2 < outlen) {
        if (o)
            out[o++] = '.';
        memcpy(out + o, q + i + 1, q[i]);
        o += q[i];
        i += q[i] + 1;
    }
    out[o] = '\0';
}

/*
 * The responder's answer to query q by its name: servfail.* a SERVFAIL;
 * tc.* no records and the TC bit (too large for UDP: ask over TCP); trunc.* cut inside the
 * question; loop.* an answer record whose name is a
 * pointer to itself; biglabel.* one whose name starts with a 64-byte label.
 */
static size_t responder_answer(const uint8_t *q, size_t qlen, uint8_t *a)
{
    char name[256];
    query_name(q, qlen, name, sizeof(name));
    memcpy(a, q, qlen);
    a[2] = 0x81, a[3] = 0x80; /* QR, RD, RA; rcode 0 */
    if (strncmp(name, "servfail.", 9) == 0) {
        a[3] |= 2;
        return qlen;
    }
    if (strncmp(name, "trunc.", 6) == 0)
        return 12 + 4;
    if (strncmp(name, "tc.", 3) == 0) {
        a[2] |= 2;
        return qlen;
    }
    a[7] = 1; /* ancount */
    size_t n = qlen;
    if (strncmp(name, "split.", 6) == 0) { /* a well-formed answer: the question's name */
        a[n++] = 0xc0;
        a[n++] = 12;
        static const uint8_t ok[] = {0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1};
        memcpy(a + n, ok, sizeof(ok));
        return n + sizeof(ok);
    }
    if (strncmp(name, "loop.", 5) == 0) {
        a[n] = 0xc0, a[n + 1] = (uint8_t)n;
        n += 2;
    } else {
        a[n++] = 64;
        memset(a + n, 'x', 64);
        n += 64;
        a[n++] = 0;
    }
    static const uint8_t rr[] = {0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1};
    memcpy(a + n, rr, sizeof(rr));
    return n + sizeof(rr);
}

/* Over TCP, one query a connection, answered in two segments: the length prefix alone, then
 * the message 30 ms later (a server that writes them apart). */
static void responder_tcp(int l)
{
    uint8_t q[514], a[1024];
    size_t got = 0;
    int c = accept(l, NULL, NULL);
    if (c < 0)
        return;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (got < 2 || got < 2 + (((size_t)q[0] << 8) | q[1])) {
        ssize_t r = recv(c, q + got, sizeof(q) - got, 0);
        if (r <= 0 || (got += (size_t)r) == sizeof(q))
            break;
    }
    if (got >= 2 + 17) {
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        size_t alen = responder_answer(q + 2, got - 2, a + 2);
        a[0] = (uint8_t)(alen >> 8), a[1] = (uint8_t)alen;
        if (send(c, a, 2, 0) == 2) {
            usleep(30000);
            (void)!send(c, a + 2, alen, 0);
        }
    }
    close(c);
}

static void responder_up(void)
{
    int fd = tu_udp_socket(&responder.port, &tcp_fds[0]);
    responder.pid = fork();
    cr_assert(responder.pid >= 0);
    if (responder.pid == 0) {
        listen(tcp_fds[0], 8);
        for (;;) {
            struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
                                  {.fd = tcp_fds[0], .events = POLLIN}};
            if (poll(p, 2, -1) <= 0)
                continue;
            if (p[1].revents & POLLIN)
                responder_tcp(tcp_fds[0]);
            if (!(p[0].revents & POLLIN))
                continue;
            uint8_t q[512], a[1024];
            struct sockaddr_storage from;
            socklen_t fl = sizeof(from);
            ssize_t n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fl);
            if (n < 17)
                continue;
            size_t alen = responder_answer(q, (size_t)n, a);
            sendto(fd, a, alen, 0, (struct sockaddr *)&from, fl);
        }
    }
    close(fd);
}

/* Sends a hand-made query from the test process to 127.0.0.1:port; the answer (if any) is
 * read and dropped within 2 s. */
static void ask(int port, uint16_t id, const char *name, bool wait_answer)
{
    uint8_t q[512], a[1024];
    size_t n = make_query(q, id, name);
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    cr_assert_eq(send(fd, q, n, 0), (ssize_t)n);
    if (wait_answer)
        cr_assert_gt(recv(fd, a, sizeof(a), 0), 0, "no answer to %s", name);
    close(fd);
}

/* ---- the monitor ---- */

/*
 * dnsmasq on a port free for UDP and TCP on both loopbacks, started before
 * anything else of the test connects anywhere: a TCP connection's ephemeral
 * port (the agent's to NATS...) could otherwise take the port first.
 */
static void dnsmasq_up(void)
{
    dnsmasq.port = free_dns_port();
    char port_arg[32], pid_arg[96];
    snprintf(port_arg, sizeof(port_arg), "--port=%d", dnsmasq.port);
    snprintf(pid_arg, sizeof(pid_arg), "--pid-file=/tmp/e2e-dns-dnsmasq-%d.pid", getpid());
    snprintf(dnsmasq.log, sizeof(dnsmasq.log), "/tmp/e2e-dns-dnsmasq-%d.log", getpid());
    char *dargv[] = {"/usr/sbin/dnsmasq",
                     "--no-daemon",
                     "--no-resolv",
                     "--no-hosts",
                     pid_arg,
                     port_arg,
                     "--listen-address=127.0.0.1",
                     "--listen-address=::1",
                     "--bind-interfaces",
                     "--host-record=a.test,10.11.12.13,fd00::1234",
                     "--host-record=svc.test," SVC_ADDR,
                     "--address=/edge.test/" EDGE_ADDR,
                     "--cname=alias.test,a.test",
                     "--cname=www.test,alias.test",
                     "--local=/test/",
                     [MANY_FIRST_ARG + MANY_ADDRS] = NULL};
    /* many.test: more addresses than an event keeps (a headless Service's pods). */
    static char many[MANY_ADDRS][48];
    for (int i = 0; i < MANY_ADDRS; i++) {
        snprintf(many[i], sizeof(many[i]), "--host-record=many.test," MANY_NET "%d", i + 1);
        dargv[MANY_FIRST_ARG + i] = many[i];
    }
    dnsmasq.pid = tu_spawn(dargv, NULL, dnsmasq.log);
    /* Ready when it answers. */
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "dig @127.0.0.1 -p %d +tries=1 +time=1 +short ready.test",
             dnsmasq.port);
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (tu_run(cmd, NULL) != 0) {
        if (tu_mono_ms() > deadline) {
            tu_dump_file(dnsmasq.log, 0);
            cr_assert_fail("dnsmasq does not answer");
        }
        usleep(50000);
    }
}

/* The agent's RINGBUF_SIZE (a test that wants the kernel to lose records sets it first). */
static const char *ringbuf_size = "8MiB";

static void monitor_up_with(const char *node, const char *rate)
{
    char bin[256], listen[32], ports[64], types[] = "dns,connection";

    dnsmasq_up();
    nats.port = tu_free_port();
    snprintf(nats.log, sizeof(nats.log), "/tmp/e2e-dns-nats-%d.log", getpid());
    nats.pid = tu_nats_start(nats.port, NULL, nats.log);
    cr_assert_gt(nats.pid, 0, "nats-server did not start");
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", nats.port);

    responder_up();
    silent_fd = tu_udp_socket(&silent_port, &tcp_fds[1]);
    closed_port = free_dns_port();
    snprintf(ports, sizeof(ports), "%d,%d,%d,%d", dnsmasq.port, responder.port, silent_port,
             closed_port);
    const char *extra[] = {"--nats-url",
                           nats_url,
                           "--flush-interval",
                           "50ms",
                           "--event-types",
                           types,
                           "--dns-ports",
                           ports,
                           "--dns-timeout",
                           "1s",
                           "--dns-rate-limit",
                           rate,
                           "--ringbuf-size",
                           ringbuf_size,
                           NULL};
    tu_agent_start(&agent, node, extra);

    agg.port = tu_free_port();
    snprintf(agg.log, sizeof(agg.log), "/tmp/e2e-dns-agg-%d.log", getpid());
    snprintf(bin, sizeof(bin), "%s", tu_repo_path("bin/ebpf-aggregator"));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", agg.port);
    char group[64];
    snprintf(group, sizeof(group), "dns-%d", getpid());
    char *aargv[] = {bin,      "--listen-addr", listen, "--nats-url",
                     nats_url, "--queue-group", group,  NULL};
    agg.pid = tu_spawn(aargv, NULL, agg.log);
    if (!tu_wait_http(agg.port, "/ready", 200, WAIT_MS)) {
        tu_dump_file(agg.log, 0);
        cr_assert_fail("aggregator not ready");
    }
}

static void monitor_up(const char *node)
{
    monitor_up_with(node, "100000");
}

/* ---- dig ---- */

struct dig_result {
    pid_t pid;
    unsigned id;
    char status[16];
};

/* Runs dig with args (after the server and port), waits for it; its pid and the id it sent. */
static struct dig_result dig(const char *server, const char *args)
{
    struct dig_result r = {0};
    char cmdline[512], out_path[96];
    snprintf(out_path, sizeof(out_path), "/tmp/e2e-dns-dig-%d.out", getpid());
    snprintf(cmdline, sizeof(cmdline), "exec dig @%s -p %d +tries=1 +time=3 %s > %s 2>&1", server,
             dnsmasq.port, args, out_path);
    r.pid = fork();
    cr_assert(r.pid >= 0);
    if (r.pid == 0) {
        execl("/bin/sh", "sh", "-c", cmdline, (char *)NULL);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(r.pid, &st, 0), r.pid);
    char *out = tu_read_file(out_path);
    unlink(out_path);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dig %s failed: %s", args, out);
    const char *h = out ? strstr(out, "status: ") : NULL;
    cr_assert(h, "dig printed no header: %s", out);
    cr_assert_eq(sscanf(h, "status: %15[A-Z], id: %u", r.status, &r.id), 2, "%s", out);
    free(out);
    return r;
}

/* ---- events ---- */

struct want {
    const char *query;
    unsigned id;
};

static bool is_dns_event(json_t *ev, void *arg)
{
    const struct want *w = arg;
    const char *q = tu_jstr(ev, "query");
    return q && strcmp(q, w->query) == 0 &&
           json_integer_value(json_object_get(ev, "transaction_id")) == (json_int_t)w->id;
}

static json_t *wait_dns(int port, const char *query, unsigned id)
{
    struct want w = {query, id};
    char path[128];
    snprintf(path, sizeof(path), "/api/events?type=dns&limit=10000");
    json_t *ev = tu_wait_event(port, path, is_dns_event, &w, WAIT_MS);
    if (!ev) {
        tu_dump_file(agent.log, 0);
        cr_assert_fail("no dns event for %s id %u on :%d", query, id, port);
    }
    return ev;
}

/* The answers array as one comma-separated string. */
static void answers_text(json_t *ev, char *out, size_t len)
{
    size_t i, n = 0;
    json_t *a;
    out[0] = '\0';
    json_array_foreach(json_object_get(ev, "answers"), i, a)
    {
        n += (size_t)snprintf(out + n, len - n, "%s%s", i ? "," : "", json_string_value(a));
    }
}

static void check_answered(json_t *ev, const char *type, const char *rcode, const char *answers,
                           const char *server, const char *proto, const char *family)
{
    char got[512];
    char *s = json_dumps(ev, 0);
    cr_assert_str_eq(tu_jstr(ev, "type"), "dns", "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "status"), "answered", "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "query_type"), type, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "rcode"), rcode, "%s", s);
    answers_text(ev, got, sizeof(got));
    cr_assert_str_eq(got, answers, "%s", s);
    cr_assert_gt(tu_jint(ev, "latency_ns"), 0, "%s", s);
    cr_assert_lt(tu_jint(ev, "latency_ns"), 5000000000ll, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "dest_ip"), server, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "source_ip"), server, "%s", s); /* loopback to loopback */
    cr_assert_gt(tu_jint(ev, "source_port"), 0, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "protocol"), proto, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "family"), family, "%s", s);
    cr_assert_str_eq(tu_jstr(ev, "node"), "dns-node", "%s", s);
    free(s);
}

static void check_dig(json_t *ev, const struct dig_result *d, int port)
{
    char *s = json_dumps(ev, 0);
    cr_assert_eq(tu_jint(ev, "pid"), d->pid, "the query is dig's (pid %d): %s", d->pid, s);
    cr_assert(tu_jstr(ev, "command") && tu_jstr(ev, "command")[0], "%s", s);
    cr_assert_eq(tu_jint(ev, "transaction_id"), d->id, "%s", s);
    cr_assert_eq(tu_jint(ev, "dest_port"), port, "%s", s);
    free(s);
}

/* The same event, field for field, from another API (the aggregator). */
static void check_same(json_t *a, json_t *b)
{
    const char *keys[] = {"id",
                          "type",
                          "pid",
                          "command",
                          "query",
                          "query_type",
                          "rcode",
                          "status",
                          "dest_ip",
                          "dest_port",
                          "protocol",
                          "latency_ns",
                          "transaction_id",
                          "source_port"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        cr_assert(json_equal(json_object_get(a, keys[i]), json_object_get(b, keys[i])),
                  "field %s differs", keys[i]);
    cr_assert(json_equal(json_object_get(a, "answers"), json_object_get(b, "answers")));
}

/* Every field of a the same as b's, none more, none less. */
static void check_identical(json_t *a, json_t *b)
{
    char *ta = json_dumps(a, JSON_SORT_KEYS | JSON_COMPACT),
         *tb = json_dumps(b, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(ta, tb);
    free(ta);
    free(tb);
}

static json_int_t count_of(int port, const char *path)
{
    json_t *j = tu_fetch_json(port, path);
    cr_assert(j, "%s", path);
    json_int_t n = json_integer_value(json_object_get(j, "total_count"));
    json_decref(j);
    return n;
}

Test(e2e_dns, dig_over_udp_tcp_and_ipv6_every_field, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-node");
    bus_readers_up();
    int P = dnsmasq.port;

    /* Each dig, and every field of the event its query made. */
    static const struct {
        const char *server, *args, *query, *type, *rcode, *answers, *proto, *family;
    } digs[] = {
        {"127.0.0.1", "A.Test A", "a.test", "A", "NOERROR", "10.11.12.13", "udp", "ipv4"},
        {"127.0.0.1", "a.test AAAA", "a.test", "AAAA", "NOERROR", "fd00::1234", "udp", "ipv4"},
        {"127.0.0.1", "WWW.Test A", "www.test", "A", "NOERROR", "alias.test,a.test,10.11.12.13",
         "udp", "ipv4"},
        {"127.0.0.1", "nope.test A", "nope.test", "A", "NXDOMAIN", "", "udp", "ipv4"},
        {"127.0.0.1", "+tcp a.test A", "a.test", "A", "NOERROR", "10.11.12.13", "tcp", "ipv4"},
        {"::1", "a.test AAAA", "a.test", "AAAA", "NOERROR", "fd00::1234", "udp", "ipv6"},
    };
    enum { A, AAAA, CNAME, NX, TCP, V6, NDIGS };
    struct dig_result res[NDIGS];
    json_t *evs[NDIGS];
    for (int i = 0; i < NDIGS; i++) {
        res[i] = dig(digs[i].server, digs[i].args);
        cr_assert_str_eq(res[i].status, digs[i].rcode, "dig %s", digs[i].args);
        evs[i] = wait_dns(agent.port, digs[i].query, res[i].id);
        check_answered(evs[i], digs[i].type, digs[i].rcode, digs[i].answers, digs[i].server,
                       digs[i].proto, digs[i].family);
        check_dig(evs[i], &res[i], P);
    }
    json_t *evc = evs[CNAME], *evt = evs[TCP], *evv6 = evs[V6];
    struct dig_result cname = res[CNAME], nx = res[NX], tcp = res[TCP], v6 = res[V6];

    /* The same events through the bus on the aggregator. */
    json_t *onagg = wait_dns(agg.port, "www.test", cname.id);
    check_same(evc, onagg);
    json_t *onagg_t = wait_dns(agg.port, "a.test", tcp.id);
    check_same(evt, onagg_t);
    json_t *onagg_v6 = wait_dns(agg.port, "a.test", v6.id); /* the last: all are there now */
    check_same(evv6, onagg_v6);

    /* The npm client (protobufjs on pkg/events.proto) decodes the same event from the bus. */
    json_t *js = sub_dns_event("www.test");
    char *jss = json_dumps(js, 0);
    json_t *d = json_object_get(js, "dns");
    cr_assert_str_eq(tu_jstr(js, "type"), "EVENT_TYPE_DNS", "%s", jss);
    cr_assert_str_eq(tu_jstr(js, "id"), tu_jstr(evc, "id"), "%s", jss);
    cr_assert_str_eq(tu_jstr(d, "status"), "DNS_STATUS_ANSWERED", "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(d, "query_type")), 1, "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(d, "rcode")), 0, "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(d, "transaction_id")), cname.id, "%s", jss);
    cr_assert(json_equal(json_object_get(d, "answers"), json_object_get(evc, "answers")), "%s",
              jss);
    cr_assert_str_eq(tu_jstr(js, "dest_addr"), "127.0.0.1", "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(js, "dest_port")), P, "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(js, "protocol")), 17, "%s", jss);
    free(jss);
    json_decref(js);

    /* tail with --query '*.test' --rcode NXDOMAIN printed nope.test, and nothing answered
     * otherwise. */
    cr_assert(wait_log(tail.log, "\"query\":\"nope.test\"", WAIT_MS), "tail missed nope.test");
    char *tl = tu_read_file(tail.log);
    cr_assert_null(strstr(tl, "\"rcode\":\"NOERROR\""), "tail let through: %s", tl);
    cr_assert_null(strstr(tl, "\"type\":\"connection\""), "tail let through: %s", tl);
    free(tl);

    /* Filters, on both binaries: query exact (any case) or *.suffix, rcode by name or number. */
    char path[256];
    int ports[] = {agent.port, agg.port};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "/api/events?type=dns&query=NOPE.test&rcode=NXDOMAIN");
        cr_assert_eq(count_of(ports[i], path), 1, "%s", path);
        snprintf(path, sizeof(path), "/api/events?query=*.test&rcode=3&pid=%d", nx.pid);
        cr_assert_eq(count_of(ports[i], path), 1, "%s", path);
        snprintf(path, sizeof(path), "/api/events?query=a.test&rcode=NOERROR");
        cr_assert_eq(count_of(ports[i], path), 4, "%s", path);
        snprintf(path, sizeof(path), "/api/events?query=*.test&rcode=0");
        /* ready.test (NXDOMAIN) is the readiness probe's */
        cr_assert_eq(count_of(ports[i], path), 5, "%s", path);
        snprintf(path, sizeof(path), "/api/events?query=*.a.test");
        cr_assert_eq(count_of(ports[i], path), 0, "%s", path);
        int status = 0;
        json_t *bad = tu_get_json(ports[i], "/api/events?rcode=NOTACODE", &status);
        cr_assert_eq(status, 400);
        cr_assert(strstr(tu_jstr(bad, "error"), "'rcode'"), "%s", tu_jstr(bad, "error"));
        json_decref(bad);
        bad = tu_get_json(ports[i], "/api/events/stream?query=a..b", &status);
        cr_assert_eq(status, 400);
        cr_assert(strstr(tu_jstr(bad, "error"), "'query'"), "%s", tu_jstr(bad, "error"));
        json_decref(bad);
    }

    /* The kernel side counted what it sent, and /metrics has the per-workload series. */
    json_t *progs = tu_fetch_json(agent.port, "/api/programs");
    size_t i;
    json_t *p;
    int attached = 0;
    json_array_foreach(json_object_get(progs, "programs"), i, p)
    {
        const char *name = tu_jstr(p, "name");
        if (strncmp(name, "cgroup_skb__dns_", 16) != 0)
            continue;
        cr_assert_str_eq(tu_jstr(p, "status"), "attached", "%s", name);
        cr_assert_str_eq(tu_jstr(p, "event_type"), "dns");
        cr_assert_geq(tu_jint(p, "events"), 6, "%s", name);
        attached++;
    }
    cr_assert_eq(attached, 2);
    json_decref(progs);
    struct tu_http m;
    cr_assert_eq(tu_http_get(agent.port, "/metrics", NULL, &m), 0);
    cr_assert(strstr(m.body, "ebpf_agent_dns_queries_total{namespace=\"\",workload=\""), "%s",
              m.body);
    cr_assert(strstr(m.body, "status=\"answered\",rcode=\"NXDOMAIN\"}"));
    cr_assert(strstr(m.body, "ebpf_agent_dns_latency_seconds_bucket{"));
    char mfile[96], cmd[160];
    snprintf(mfile, sizeof(mfile), "/tmp/e2e-dns-metrics-%d.txt", getpid());
    FILE *fp = fopen(mfile, "w");
    cr_assert_not_null(fp);
    fwrite(m.body, 1, m.body_len, fp);
    fclose(fp);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", mfile);
    char *out = NULL;
    int prc = tu_run(cmd, &out);
    unlink(mfile);
    cr_assert_eq(prc, 0, "promtool check metrics: %s", out);
    free(out);
    tu_http_free(&m);

    for (int i = 0; i < NDIGS; i++)
        json_decref(evs[i]);
    json_decref(onagg), json_decref(onagg_t), json_decref(onagg_v6);
    agent_exits_cleanly();
    remove_logs();
}

/*
 * The marked child: resolves svc.test with the C library's resolver, then
 * connects there, and stays alive until hold is closed (so the agent can
 * read its parent while the test looks).
 */
static void marked_child(int dns_port, int svc_port, int hold)
{
    prctl(PR_SET_NAME, MARKER);
    struct __res_state st;
    if (res_ninit(&st) != 0)
        _exit(2);
    st.nsaddr_list[0].sin_family = AF_INET;
    st.nsaddr_list[0].sin_port = htons((uint16_t)dns_port);
    st.nsaddr_list[0].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    st.nscount = 1;
    uint8_t ans[512];
    if (res_nquery(&st, "svc.test", ns_c_in, ns_t_a, ans, sizeof(ans)) < 0)
        _exit(3);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)svc_port)};
    inet_pton(AF_INET, SVC_ADDR, &to.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0)
        _exit(4);
    close(fd);
    char c;
    while (read(hold, &c, 1) < 0 && errno == EINTR)
        ;
    _exit(0);
}

static bool is_marker_connection(json_t *ev, void *arg)
{
    const char *t = tu_jstr(ev, "type"), *c = tu_jstr(ev, "command"), *d = tu_jstr(ev, "dest_ip");
    return t && strcmp(t, "connection") == 0 && c && strcmp(c, MARKER) == 0 && d &&
           strcmp(d, SVC_ADDR) == 0 &&
           json_integer_value(json_object_get(ev, "pid")) == *(pid_t *)arg;
}

static json_int_t stat_dns(const char *key)
{
    json_t *j = tu_fetch_json(agent.port, "/api/stats");
    json_int_t n = json_integer_value(json_object_get(json_object_get(j, "dns"), key));
    json_decref(j);
    return n;
}

static bool is_timeout_of(json_t *ev, void *arg)
{
    return is_dns_event(ev, arg) && tu_jstr(ev, "status") &&
           strcmp(tu_jstr(ev, "status"), "timeout") == 0;
}

static bool is_unknown_of(json_t *ev, void *arg)
{
    return is_dns_event(ev, arg) && tu_jstr(ev, "status") &&
           strcmp(tu_jstr(ev, "status"), "unknown") == 0;
}

#define REFUSED_MARKER "dnsq-refused"

static json_int_t program_counter(const char *name, const char *key);
static void dns_settled(json_int_t *queries, json_int_t *answered);

/*
 * A child that asks for name, as glibc's resolver asks (a connected UDP socket), at
 * closed_port on 127.0.0.1 after trying a TCP connection there, then the same over IPv6
 * with a socket of its own: each is refused (an ICMP port unreachable, a RST), at once.
 */
static void refused_child(const char *name, const char *name6)
{
    prctl(PR_SET_NAME, REFUSED_MARKER);
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)closed_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int t = socket(AF_INET, SOCK_STREAM, 0);
    if (t < 0 || connect(t, (struct sockaddr *)&to, sizeof(to)) == 0 || errno != ECONNREFUSED)
        _exit(2);
    close(t);
    struct __res_state st;
    if (res_ninit(&st) != 0)
        _exit(3);
    st.nsaddr_list[0] = to;
    st.nscount = 1;
    st.retry = 1;
    uint8_t ans[512];
    if (res_nquery(&st, name, ns_c_in, ns_t_a, ans, sizeof(ans)) >= 0)
        _exit(4);
    struct sockaddr_in6 to6 = {.sin6_family = AF_INET6,
                               .sin6_port = htons((uint16_t)closed_port),
                               .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    uint8_t q[512];
    size_t n = make_query(q, 0x6006, name6);
    int u = socket(AF_INET6, SOCK_DGRAM, 0);
    if (u < 0 || connect(u, (struct sockaddr *)&to6, sizeof(to6)) != 0 ||
        send(u, q, n, 0) != (ssize_t)n)
        _exit(5);
    struct pollfd p = {.fd = u, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1 || recv(u, q, sizeof(q), 0) >= 0 || errno != ECONNREFUSED)
        _exit(6);
    _exit(0);
}

static bool is_query_of(json_t *ev, void *arg)
{
    const char *q = tu_jstr(ev, "query");
    return q && strcmp(q, arg) == 0;
}

/* The failed event of a query refused at once, from the refused child; the same on the
 * aggregator, through the bus. */
static void check_refused(const char *name, pid_t child, const char *dest_ip, const char *family)
{
    char path[160];
    snprintf(path, sizeof(path), "/api/events?type=dns&status=failed&pid=%d&limit=100", child);
    json_t *ev = tu_wait_event(agent.port, path, is_query_of, (void *)name, WAIT_MS);
    json_t *onagg = ev ? tu_wait_event(agg.port, path, is_query_of, (void *)name, WAIT_MS) : NULL;
    cr_assert(!ev || onagg, "the aggregator has no failed dns event for %s", name);
    if (!ev) {
        tu_dump_file(agent.log, 0);
        cr_assert_fail("no failed dns event for %s", name);
    }
    cr_assert_str_eq(tu_jstr(ev, "status"), "failed");
    cr_assert_str_eq(tu_jstr(ev, "error"), "refused");
    cr_assert_str_eq(tu_jstr(ev, "command"), REFUSED_MARKER);
    cr_assert_eq(tu_jint(ev, "ppid"), getpid());
    cr_assert_eq(tu_jint(ev, "dest_port"), closed_port);
    cr_assert_str_eq(tu_jstr(ev, "dest_ip"), dest_ip);
    cr_assert_str_eq(tu_jstr(ev, "protocol"), "udp");
    cr_assert_str_eq(tu_jstr(ev, "family"), family);
    cr_assert_str_eq(tu_jstr(ev, "query_type"), "A");
    /* The time to the refusal, a loopback round trip: far below DNS_TIMEOUT. */
    json_int_t latency = tu_jint(ev, "latency_ns");
    cr_assert(latency > 0 && latency < TIMEOUT_MS * 1000000ll / 2, "latency_ns %lld",
              (long long)latency);
    cr_assert_null(json_object_get(ev, "rcode"));
    cr_assert_null(json_object_get(ev, "answers"));
    check_identical(ev, onagg);
    json_decref(onagg);
    json_decref(ev);
}

static bool is_refused_connect(json_t *ev, void *arg)
{
    const char *t = tu_jstr(ev, "type"), *e = tu_jstr(ev, "error");
    return t && strcmp(t, "connection") == 0 && e && strcmp(e, "refused") == 0 &&
           tu_jint(ev, "dest_port") == closed_port;
}

/*
 * A query to a port where nothing listens: the kernel tells the client's connected socket
 * at once (ICMP port unreachable: ECONNREFUSED), and so does the event, status failed with
 * the error a refused connection has, not a timeout DNS_TIMEOUT later. A TCP connect there
 * sends no query: no dns event, only its connection's, refused.
 */
Test(e2e_dns, a_query_to_a_closed_port_fails_refused_at_once, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-node");
    bus_readers_up();
    json_int_t queries = stat_dns("queries");
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0)
        refused_child("refused.test", "refused6.test");
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "refused child failed: %d", st);

    check_refused("refused.test", child, "127.0.0.1", "ipv4");
    check_refused("refused6.test", child, "::1", "ipv6");
    /* The npm client (protobufjs on pkg/events.proto) decodes the failure from the bus. */
    json_t *js = sub_dns_event("refused.test");
    char *jss = json_dumps(js, 0);
    json_t *d = json_object_get(js, "dns");
    cr_assert_str_eq(tu_jstr(d, "status"), "DNS_STATUS_FAILED", "%s", jss);
    cr_assert_str_eq(tu_jstr(d, "error"), "refused", "%s", jss);
    const char *latency = tu_jstr(d, "latency_ns"); /* a 64-bit integer: a string in JSON */
    cr_assert(latency && strtoull(latency, NULL, 10) > 0, "%s", jss);
    cr_assert_eq(json_integer_value(json_object_get(js, "dest_port")), closed_port, "%s", jss);
    free(jss);
    json_decref(js);
    /* The TCP attempt: its connection refused, and no query of its own. */
    char path[160];
    snprintf(path, sizeof(path), "/api/events?type=connection&pid=%d&limit=100", child);
    json_t *conn = tu_wait_event(agent.port, path, is_refused_connect, NULL, WAIT_MS);
    cr_assert_not_null(conn, "no refused connection to the closed port");
    json_decref(conn);
    json_int_t now_queries, answered;
    dns_settled(&now_queries, &answered);
    cr_assert_eq(now_queries - queries, 2, "queries tracked: %lld",
                 (long long)(now_queries - queries));
    cr_assert_eq(stat_dns("failed"), 2);
    cr_assert_eq(program_counter("tp_btf__dns_sk_error_report", "drops"), 0);
    cr_assert_geq(program_counter("tp_btf__dns_sk_error_report", "events"), 2);
    /* Counted by status in /metrics, beside the timeouts. */
    struct tu_http m;
    cr_assert_eq(tu_http_get(agent.port, "/metrics", NULL, &m), 0);
    char series[160];
    snprintf(series, sizeof(series),
             "ebpf_agent_dns_queries_total{namespace=\"\",workload=\"%s\",status=\"failed\","
             "rcode=\"\"} 2\n",
             REFUSED_MARKER);
    cr_assert(strstr(m.body, series), "no %s in /metrics:\n%s", series, m.body);
    tu_http_free(&m);
}

/*
 * Messages that are no standard query (dig +opcode=: NOTIFY, UPDATE, IQUERY) are events
 * that say their opcode, by name, on the agent and through the bus on the aggregator; a
 * QUERY's event has none. dnsmasq answers them NOTIMP or REFUSED.
 */
Test(e2e_dns, a_message_of_another_opcode_says_it, .fini = stop_all, .timeout = 90)
{
    static const struct {
        const char *arg, *name;
    } cases[] = {{"+opcode=notify", "NOTIFY"},
                 {"+opcode=update", "UPDATE"},
                 {"+opcode=1", "IQUERY"},
                 {"+opcode=0", NULL}};
    monitor_up("dns-node");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char args[64];
        snprintf(args, sizeof(args), "%s a.test", cases[i].arg);
        struct dig_result r = dig("127.0.0.1", args);
        json_t *ev = wait_dns(agent.port, "a.test", r.id);
        json_t *onagg = wait_dns(agg.port, "a.test", r.id);
        if (cases[i].name)
            cr_assert_str_eq(tu_jstr(ev, "opcode"), cases[i].name, "%s", cases[i].arg);
        else
            cr_assert_null(json_object_get(ev, "opcode"), "a QUERY says no opcode");
        cr_assert_str_eq(tu_jstr(ev, "status"), "answered");
        cr_assert_str_eq(tu_jstr(ev, "rcode"), r.status, "%s", cases[i].arg);
        cr_assert_eq(tu_jint(ev, "pid"), r.pid);
        check_identical(ev, onagg);
        json_decref(onagg);
        json_decref(ev);
    }
}

/* A TCP socket for dnsmasq at *to, its reads given up after 5 s. */
static int dnsmasq_tcp_socket(struct sockaddr_in *to)
{
    *to = (struct sockaddr_in){.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)dnsmasq.port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Writes the n bytes of seg (length-prefixed queries) to dnsmasq over TCP in one write and
 * reads back answers messages, however they are cut into segments. */
static void tcp_exchange(const uint8_t *seg, size_t n, int answers_wanted)
{
    uint8_t buf[8192];
    size_t got = 0;
    struct sockaddr_in to;
    int fd = dnsmasq_tcp_socket(&to);
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0, "%s", strerror(errno));
    cr_assert_eq(send(fd, seg, n, 0), (ssize_t)n, "one write");
    for (int answers = 0; answers < answers_wanted;) {
        ssize_t r = recv(fd, buf + got, sizeof(buf) - got, 0);
        cr_assert_gt(r, 0, "dnsmasq answered %d of %d", answers, answers_wanted);
        got += (size_t)r;
        answers = 0;
        for (size_t off = 0; off + 2 <= got; answers++) {
            size_t l = ((size_t)buf[off] << 8) | buf[off + 1];
            if (off + 2 + l > got)
                break;
            off += 2 + l;
        }
    }
    close(fd);
}

/*
 * A resolver that pipelines its queries over TCP writes them in one segment:
 * each query makes its own event, with the answer dnsmasq gave it.
 */
Test(e2e_dns, pipelined_tcp_queries_each_make_an_event, .fini = stop_all, .timeout = 90)
{
    static const char *names[] = {"a.test", "www.test", "nope.test"};
    uint8_t seg[1024];
    size_t n = 0;

    monitor_up("dns-pipeline-node");
    for (int i = 0; i < 3; i++) {
        size_t l = make_query(seg + n + 2, (uint16_t)(0x5100 + i), names[i]);
        seg[n] = (uint8_t)(l >> 8), seg[n + 1] = (uint8_t)l;
        n += 2 + l;
    }
    tcp_exchange(seg, n, 3);
    for (int i = 0; i < 3; i++) {
        json_t *ev = wait_dns(agent.port, names[i], 0x5100 + (unsigned)i);
        cr_assert_str_eq(tu_jstr(ev, "protocol"), "tcp");
        cr_assert_str_eq(tu_jstr(ev, "status"), "answered");
        cr_assert_str_eq(tu_jstr(ev, "rcode"), i == 2 ? "NXDOMAIN" : "NOERROR");
        json_decref(ev);
    }
    stop_all();
    remove_logs();
}

/* A TCP query to port, id and name, written as given (cut after each byte count in cuts,
 * 30 ms apart, TCP_NODELAY); its answer read whole. */
static void ask_tcp(int port, uint16_t id, const char *name, const size_t *cuts, size_t ncuts)
{
    uint8_t q[514], a[1024];
    size_t n = make_query(q + 2, id, name), got = 0, sent = 0;
    q[0] = (uint8_t)(n >> 8), q[1] = (uint8_t)n;
    n += 2;
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0, "%s", strerror(errno));
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        cr_assert_eq(send(fd, q + sent, end - sent, 0), (ssize_t)(end - sent));
        sent = end;
        if (i < ncuts)
            usleep(30000);
    }
    while (got < 2 || got < 2 + (((size_t)a[0] << 8) | a[1])) {
        ssize_t r = recv(fd, a + got, sizeof(a) - got, 0);
        cr_assert_gt(r, 0, "no whole answer to %s", name);
        got += (size_t)r;
    }
    close(fd);
}

/*
 * DNS over TCP is a stream: a query written in pieces (its length prefix alone, then cut
 * inside the message), and an answer whose prefix comes alone, each make their event, as
 * when written whole.
 */
/*
 * A TCP query that leaves from softirq: the client fills the server's receive window, so
 * its query waits in the socket until the server reads and the window update lets it out,
 * in whatever task the interrupt found (here the server's, of the same cgroup). The event
 * names the client or no one, never the task that happened to be running.
 */
Test(e2e_dns, a_tcp_query_sent_from_softirq_names_no_other_process, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-softirq-node");
    int l = tcp_fds[1]; /* bound to silent_port, one of DNS_PORTS */
    int small = 1024;
    cr_assert_eq(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    cr_assert_eq(listen(l, 1), 0, "%s", strerror(errno));
    int report[2];
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        /* The client: padding messages until bytes wait unsent, then the query. */
        prctl(PR_SET_NAME, "dns-zwin-cli");
        struct sockaddr_in to = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)silent_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, unsent = 0;
        if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0)
            _exit(2);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        uint8_t pad[14] = {0, 12}, q[300];
        for (int i = 0; i < 20000 && unsent == 0; i++) {
            if (send(fd, pad, sizeof(pad), MSG_DONTWAIT) != (ssize_t)sizeof(pad))
                break;
            if (ioctl(fd, SIOCOUTQNSD, &unsent) != 0)
                _exit(3);
            usleep(500);
        }
        size_t n = make_query(q + 2, 0x5a5a, "zwin.test");
        q[0] = (uint8_t)(n >> 8), q[1] = (uint8_t)n;
        if (unsent == 0 || send(fd, q, n + 2, MSG_DONTWAIT) != (ssize_t)(n + 2))
            _exit(4);
        /* Still queued: it leaves when the server reads. */
        if (ioctl(fd, SIOCOUTQNSD, &unsent) != 0 || unsent < (int)(n + 2))
            _exit(5);
        if (write(report[1], "q", 1) != 1)
            _exit(6);
        char c;
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void)!recv(fd, &c, 1, 0); /* until the server closes */
        _exit(0);
    }
    close(report[1]);
    int c = accept(l, NULL, NULL);
    cr_assert_geq(c, 0, "%s", strerror(errno));
    char word;
    cr_assert_eq(read(report[0], &word, 1), 1, "the client could not queue its query");
    /* Read it all: the window opens and the query leaves. */
    uint8_t buf[65536];
    struct timeval tv = {.tv_sec = 2};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t got = 0;
    for (ssize_t r; (r = recv(c, buf, sizeof(buf), 0)) > 0;)
        got += (size_t)r;
    close(c);
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client: %d", st);
    cr_assert_gt(got, 0);

    json_t *ev = wait_dns(agent.port, "zwin.test", 0x5a5a);
    char *text = json_dumps(ev, JSON_COMPACT);
    json_t *pid = json_object_get(ev, "pid");
    cr_expect(pid == NULL || json_integer_value(pid) == child,
              "the query names pid %lld, not its sender %d (the server: %d): %s",
              (long long)json_integer_value(pid), child, getpid(), text);
    const char *command = tu_jstr(ev, "command");
    cr_expect(command == NULL || strcmp(command, "dns-zwin-cli") == 0, "%s", text);
    cr_log_info("the query: %s", text);
    free(text);
    json_decref(ev);
}

Test(e2e_dns, tcp_messages_in_several_segments_make_their_events, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-split-node");
    static const size_t prefix[] = {2}, inside[] = {1, 10};
    ask_tcp(dnsmasq.port, 0x5301, "a.test", prefix, 1);
    ask_tcp(dnsmasq.port, 0x5302, "www.test", inside, 2);
    ask_tcp(responder.port, 0x5303, "split.test", NULL, 0);
    static const char *names[] = {"a.test", "www.test", "split.test"};
    for (unsigned i = 0; i < 3; i++) {
        json_t *ev = wait_dns(agent.port, names[i], 0x5301 + i);
        cr_assert_str_eq(tu_jstr(ev, "protocol"), "tcp");
        cr_assert_str_eq(tu_jstr(ev, "status"), "answered", "%s", tu_jdump(ev));
        cr_assert_str_eq(tu_jstr(ev, "rcode"), "NOERROR");
        cr_assert_eq(tu_jint(ev, "pid"), getpid());
        char answers[256];
        answers_text(ev, answers, sizeof(answers));
        if (i == 2)
            cr_assert_str_eq(answers, "10.0.0.1");
        else
            cr_assert_neq(answers[0], '\0', "%s", tu_jdump(ev));
        cr_assert_geq(tu_jint(ev, "latency_ns"), i == 2 ? 30000000 : 1, "to the last byte");
        json_decref(ev);
    }
    /* The stats are a snapshot the agent takes as it expires queries: wait for it. */
    json_int_t reassembled = 0;
    for (uint64_t end = tu_mono_ms() + WAIT_MS;
         (reassembled = stat_dns("tcp_reassembled")) < 3 && tu_mono_ms() < end;)
        usleep(50000);
    cr_assert_geq(reassembled, 3, "two queries and an answer");
    stop_all();
    remove_logs();
}

static bool is_connection_to(json_t *ev, void *arg)
{
    const char *t = tu_jstr(ev, "type"), *d = tu_jstr(ev, "dest_ip");
    return t && strcmp(t, "connection") == 0 && d && strcmp(d, arg) == 0 &&
           json_integer_value(json_object_get(ev, "pid")) == getpid();
}

/*
 * An answer with more addresses than its event keeps: the event lists the
 * first EVENT_DNS_ANSWERS_MAX, and a connection to any of the addresses,
 * the last one too, carries the name.
 */
Test(e2e_dns, every_address_of_a_large_answer_names_its_connections, .fini = stop_all,
     .timeout = 90)
{
    monitor_up("dns-node");
    ask(dnsmasq.port, 0x3a11, "many.test", true);
    json_t *ev = wait_dns(agent.port, "many.test", 0x3a11);
    cr_assert_eq(json_array_size(json_object_get(ev, "answers")), EVENT_DNS_ANSWERS_MAX, "%s",
                 tu_jdump(ev));
    json_decref(ev);

    const int firsts[] = {1, MANY_ADDRS}; /* one the event lists, one past them */
    for (size_t i = 0; i < sizeof(firsts) / sizeof(firsts[0]); i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), MANY_NET "%d", firsts[i]);
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
        inet_pton(AF_INET, ip, &to.sin_addr);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_neq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0, "%s:9 answered", ip);
        close(fd);
        json_t *conn = tu_wait_event(agent.port, "/api/events?type=connection&limit=10000",
                                     is_connection_to, ip, WAIT_MS);
        cr_assert(conn, "no connection event to %s", ip);
        cr_expect_str_eq(tu_jstr(conn, "peer_dns"), "many.test", "%s", tu_jdump(conn));
        json_decref(conn);
    }
}

/* A flag of the event: true, or absent (never false). */
static bool has_flag(json_t *ev, const char *key)
{
    json_t *v = json_object_get(ev, key);
    cr_assert(!v || json_is_true(v), "%s: %s", key, tu_jdump(ev));
    return v != NULL;
}

/*
 * An answer the server truncated (the TC bit: the client asks again over TCP)
 * is no empty NOERROR: its event says `truncated`. One with more records than
 * the event lists says `answers_truncated`. Both cross the bus (protobuf) to
 * the aggregator; an answer with neither has neither key.
 */
Test(e2e_dns, a_truncated_answer_and_a_cut_answer_list_say_so, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-node");
    ask(responder.port, 0x7c01, "tc.test", true);
    ask(dnsmasq.port, 0x7c02, "many.test", true);
    ask(dnsmasq.port, 0x7c03, "a.test", true);

    int ports[] = {agent.port, agg.port};
    for (int i = 0; i < 2; i++) {
        json_t *tc = wait_dns(ports[i], "tc.test", 0x7c01);
        cr_assert_str_eq(tu_jstr(tc, "status"), "answered", "%s", tu_jdump(tc));
        cr_assert_str_eq(tu_jstr(tc, "rcode"), "NOERROR", "%s", tu_jdump(tc));
        cr_assert_eq(json_array_size(json_object_get(tc, "answers")), 0, "%s", tu_jdump(tc));
        cr_assert(has_flag(tc, "truncated"), "no TC flag on :%d: %s", ports[i], tu_jdump(tc));
        cr_assert_not(has_flag(tc, "answers_truncated"), "%s", tu_jdump(tc));

        json_t *many = wait_dns(ports[i], "many.test", 0x7c02);
        cr_assert_eq(json_array_size(json_object_get(many, "answers")), EVENT_DNS_ANSWERS_MAX, "%s",
                     tu_jdump(many));
        cr_assert(has_flag(many, "answers_truncated"), "%d answers, %d listed, not flagged: %s",
                  MANY_ADDRS, EVENT_DNS_ANSWERS_MAX, tu_jdump(many));
        cr_assert_not(has_flag(many, "truncated"), "%s", tu_jdump(many));

        json_t *a = wait_dns(ports[i], "a.test", 0x7c03);
        cr_assert_not(has_flag(a, "truncated"), "%s", tu_jdump(a));
        cr_assert_not(has_flag(a, "answers_truncated"), "%s", tu_jdump(a));
        json_decref(tc), json_decref(many), json_decref(a);
    }
    agent_exits_cleanly();
    remove_logs();
}

Test(e2e_dns, process_peer_dns_servfail_timeout_and_malformed_answers, .fini = stop_all,
     .timeout = 90)
{
    monitor_up("dns-node");

    /* peer_dns: a C resolver call, then a connection to the answer, from one marked child. */
    int svc_port, lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    inet_pton(AF_INET, SVC_ADDR, &sa.sin_addr);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    cr_assert_eq(listen(lfd, 4), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    svc_port = ntohs(sa.sin_port);
    int hold[2];
    cr_assert_eq(pipe(hold), 0);
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        close(hold[1]);
        marked_child(dnsmasq.port, svc_port, hold[0]);
    }
    close(hold[0]);

    /* The id is the resolver's own: the event is found by name and pid. */
    char path[256];
    snprintf(path, sizeof(path), "/api/events?type=dns&query=svc.test&pid=%d", child);
    json_t *doc = NULL;
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (tu_mono_ms() < deadline) {
        doc = tu_fetch_json(agent.port, path);
        if (doc && json_array_size(json_object_get(doc, "events")) == 1)
            break;
        json_decref(doc);
        doc = NULL;
        usleep(50000);
    }
    cr_assert(doc, "no dns event from the marked child");
    json_t *ev = json_array_get(json_object_get(doc, "events"), 0);
    check_answered(ev, "A", "NOERROR", SVC_ADDR, "127.0.0.1", "udp", "ipv4");
    cr_assert_str_eq(tu_jstr(ev, "command"), MARKER);
    cr_assert_eq(tu_jint(ev, "pid"), child);
    /* Every event has its ppid (SPEC §5), read from the sending task. */
    cr_assert_eq(tu_jint(ev, "ppid"), getpid());
    cr_assert_eq(tu_jint(ev, "dest_port"), dnsmasq.port);
    json_decref(doc);
    close(hold[1]);
    int st;
    cr_assert_eq(waitpid(child, &st, 0), child);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "marked child failed: %d", st);
    close(lfd);

    json_t *conn = tu_wait_event(agent.port, "/api/events?type=connection&limit=10000",
                                 is_marker_connection, &child, WAIT_MS);
    cr_assert(conn, "no connection event from the marked child");
    cr_assert_str_eq(tu_jstr(conn, "peer_dns"), "svc.test", "%s", json_dumps(conn, 0));
    json_decref(conn);

    /* SERVFAIL from the responder, asked by this process. */
    json_int_t errors_before = stat_dns("parse_errors");
    ask(responder.port, 0x5e01, "servfail.test", true);
    json_t *sf = wait_dns(agent.port, "servfail.test", 0x5e01);
    check_answered(sf, "A", "SERVFAIL", "", "127.0.0.1", "udp", "ipv4");
    cr_assert_eq(tu_jint(sf, "pid"), getpid());
    cr_assert_eq(tu_jint(sf, "dest_port"), responder.port);
    json_decref(sf);

    /* A server that never answers: status timeout after DNS_TIMEOUT. */
    uint64_t asked = tu_mono_ms();
    ask(silent_port, 0x7101, "silent.test", false);
    struct want silent = {"silent.test", 0x7101};
    json_t *to = tu_wait_event(agent.port, "/api/events?type=dns&status=timeout&limit=1000",
                               is_timeout_of, &silent, WAIT_MS);
    cr_assert(to, "no timeout event");
    cr_assert_geq(tu_mono_ms() - asked, TIMEOUT_MS - 100, "a timeout before DNS_TIMEOUT");
    cr_assert_eq(tu_jint(to, "pid"), getpid());
    cr_assert_eq(tu_jint(to, "dest_port"), silent_port);
    cr_assert_str_eq(tu_jstr(to, "query_type"), "A");
    cr_assert_null(json_object_get(to, "rcode"));
    cr_assert_null(json_object_get(to, "answers"));
    cr_assert_null(json_object_get(to, "latency_ns"));
    json_decref(to);

    /* A resolver that asks and exits at once, reaped before its query times out: the event
     * still names it and its parent, read in the kernel as it sent. */
    pid_t quick = fork();
    cr_assert(quick >= 0);
    if (quick == 0) {
        ask(silent_port, 0x7102, "gone.test", false);
        _exit(0);
    }
    int quick_status;
    cr_assert_eq(waitpid(quick, &quick_status, 0), quick);
    cr_assert(WIFEXITED(quick_status) && WEXITSTATUS(quick_status) == 0);
    struct want gone = {"gone.test", 0x7102};
    json_t *g = tu_wait_event(agent.port, "/api/events?type=dns&status=timeout&limit=1000",
                              is_timeout_of, &gone, WAIT_MS);
    cr_assert(g, "no timeout event for the resolver that exited");
    cr_assert_eq(tu_jint(g, "pid"), quick);
    cr_assert_eq(tu_jint(g, "ppid"), getpid());
    json_decref(g);

    /*
     * Malformed answers: each a counted parse error. One cut inside its question names no
     * question, so nothing answers its query; but it came to its socket with its ID, and may
     * well have been its answer: the query's outcome is unknown, not a timeout. One whose
     * records do not parse still answers its query (rcode, latency), with no answers, flagged
     * answers_truncated: nothing unreadable is guessed.
     */
    static const char *const bad[] = {"trunc.test", "loop.test", "biglabel.test"};
    for (unsigned k = 0; k < 3; k++)
        ask(responder.port, (uint16_t)(0xbad0 + k), bad[k], true);
    struct want cut = {bad[0], 0xbad0};
    json_t *t = tu_wait_event(agent.port, "/api/events?type=dns&status=unknown&limit=1000",
                              is_unknown_of, &cut, WAIT_MS);
    cr_assert(t, "the query for %s did not end unknown", bad[0]);
    cr_assert_null(json_object_get(t, "rcode"));
    json_decref(t);
    for (unsigned k = 1; k < 3; k++) {
        json_t *e = wait_dns(agent.port, bad[k], 0xbad0 + k);
        cr_assert_str_eq(tu_jstr(e, "status"), "answered", "%s", tu_jdump(e));
        cr_assert_str_eq(tu_jstr(e, "rcode"), "NOERROR");
        cr_assert_gt(tu_jint(e, "latency_ns"), 0);
        cr_assert_eq(json_array_size(json_object_get(e, "answers")), 0, "%s", tu_jdump(e));
        cr_assert(json_is_true(json_object_get(e, "answers_truncated")), "%s", tu_jdump(e));
        json_decref(e);
    }
    cr_assert_eq(stat_dns("parse_errors") - errors_before, 3);
    cr_assert_gt(agent.pid, 0);
    cr_assert_eq(kill(agent.pid, 0), 0, "the agent is still running");

    /* No dns event names anything but what was asked. */
    static const char *const asked_names[] = {"ready.test",  "svc.test",     "servfail.test",
                                              "silent.test", "gone.test",    "trunc.test",
                                              "loop.test",   "biglabel.test"};
    json_t *all = tu_fetch_json(agent.port, "/api/events?type=dns&limit=10000");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(all, "events"), i, e)
    {
        const char *name = tu_jstr(e, "query");
        bool known = false;
        for (size_t k = 0; k < sizeof(asked_names) / sizeof(asked_names[0]); k++)
            known = known || (name && strcmp(name, asked_names[k]) == 0);
        cr_assert(known, "an event with a name nobody asked for: %s", json_dumps(e, 0));
    }
    json_decref(all);
    agent_exits_cleanly();
    remove_logs();
}

static json_int_t program_counter(const char *name, const char *key)
{
    json_t *progs = tu_fetch_json(agent.port, "/api/programs");
    size_t i;
    json_t *p;
    json_int_t v = -1;
    json_array_foreach(json_object_get(progs, "programs"), i, p)
    {
        if (strcmp(tu_jstr(p, "name"), name) == 0)
            v = tu_jint(p, key);
    }
    json_decref(progs);
    cr_assert_geq(v, 0, "no program %s", name);
    return v;
}

/* A UDP socket connected to dnsmasq (127.0.0.1), whose receives wait at most 3 s. */
static int dnsmasq_socket(void)
{
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)dnsmasq.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    return fd;
}

/* A name under edge.test whose query (make_query: no EDNS) is exactly len bytes. */
static void edge_name(char *out, size_t len)
{
    /* 12 header + the name's wire form (labels with their length bytes, "edge", "test", the
     * root) + 4 type and class. */
    size_t left = len - 12 - 4 - (1 + 4) - (1 + 4) - 1, o = 0;
    while (left) {
        size_t l = left - 1 > 63 ? 63 : left - 1;
        if (left - (l + 1) == 1) /* a one-byte rest cannot be a label (its length byte alone) */
            l--;
        memset(out + o, 'a' + (char)(o % 26), l);
        o += l;
        out[o++] = '.';
        left -= l + 1;
    }
    strcpy(out + o, "edge.test");
}

/* An answer to query q of qlen bytes: one A record, ip, for the question's name. */
static size_t answer_a(const uint8_t *q, size_t qlen, const uint8_t ip[4], uint8_t *a)
{
    static const uint8_t rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
    memcpy(a, q, qlen);
    a[2] = 0x81, a[3] = 0x80; /* QR, RD, RA; rcode 0 */
    a[7] = 1;                 /* ancount */
    memcpy(a + qlen, rr, sizeof(rr));
    memcpy(a + qlen + sizeof(rr), ip, 4);
    return qlen + sizeof(rr) + 4;
}

static uint16_t csum_add(uint32_t sum, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (len & 1)
        sum += (uint32_t)(b[len - 1] << 8);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/*
 * Sends, from a raw socket, a TCP segment from 127.0.0.1:sport to 127.0.0.1:dport with
 * sequence number seq (PSH, ACK) carrying payload: one the receiving TCP throws away when seq
 * is outside its window, after the capture has seen it.
 */
static void inject_segment(uint16_t sport, uint16_t dport, uint32_t seq, const uint8_t *payload,
                           size_t len)
{
    uint8_t pkt[1500] = {0};
    size_t tl = 20 + len;
    cr_assert_leq(20 + tl, sizeof(pkt));
    uint8_t *ip = pkt, *tcp = pkt + 20;
    ip[0] = 0x45, ip[2] = (uint8_t)((20 + tl) >> 8), ip[3] = (uint8_t)(20 + tl);
    ip[8] = 64, ip[9] = IPPROTO_TCP;
    ip[12] = 127, ip[15] = 1, ip[16] = 127, ip[19] = 1;
    tcp[0] = (uint8_t)(sport >> 8), tcp[1] = (uint8_t)sport;
    tcp[2] = (uint8_t)(dport >> 8), tcp[3] = (uint8_t)dport;
    tcp[4] = (uint8_t)(seq >> 24), tcp[5] = (uint8_t)(seq >> 16), tcp[6] = (uint8_t)(seq >> 8);
    tcp[7] = (uint8_t)seq;
    tcp[12] = 5 << 4, tcp[13] = 0x18 /* PSH, ACK */, tcp[14] = 0xff, tcp[15] = 0xff;
    memcpy(tcp + 20, payload, len);
    uint8_t pseudo[12] = {127,        0, 0, 1, 127, 0, 0, 1, 0, IPPROTO_TCP, (uint8_t)(tl >> 8),
                          (uint8_t)tl};
    uint16_t sum = (uint16_t)~csum_add(csum_add(0, pseudo, sizeof(pseudo)), tcp, tl);
    tcp[16] = (uint8_t)(sum >> 8), tcp[17] = (uint8_t)sum;
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    cr_assert_geq(fd, 0, "raw socket: %s", strerror(errno));
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(fd, pkt, 20 + tl, 0, (struct sockaddr *)&to, sizeof(to)),
                 (ssize_t)(20 + tl), "%s", strerror(errno));
    close(fd);
}

/*
 * An answer forged outside the TCP window (anyone who can send to the client's address
 * and port may try it) reaches the capture before TCP throws it away: it makes no event,
 * it is counted, and the real answer, which comes after it, is the one the event shows.
 */
Test(e2e_dns, a_tcp_answer_forged_outside_the_window_is_not_taken, .fini = stop_all, .timeout = 90)
{
    monitor_up("dns-forged-node");
    int l = tcp_fds[1]; /* bound to silent_port, one of DNS_PORTS */
    cr_assert_eq(listen(l, 1), 0, "%s", strerror(errno));
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)silent_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    cr_assert_eq(connect(c, (struct sockaddr *)&to, sizeof(to)), 0, "%s", strerror(errno));
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in me;
    socklen_t mel = sizeof(me);
    cr_assert_eq(getsockname(c, (struct sockaddr *)&me, &mel), 0);
    int s = accept(l, NULL, NULL);
    cr_assert_geq(s, 0, "%s", strerror(errno));
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    uint8_t q[300], got[300], a[400], fake[400];
    size_t qn = make_query(q + 2, 0x5c5c, "forged.test");
    q[0] = (uint8_t)(qn >> 8), q[1] = (uint8_t)qn;
    cr_assert_eq(send(c, q, qn + 2, 0), (ssize_t)(qn + 2));
    size_t n = 0;
    for (ssize_t r; n < qn + 2 && (r = recv(s, got + n, qn + 2 - n, 0)) > 0;)
        n += (size_t)r;
    cr_assert_eq(n, qn + 2, "the server read %zu of %zu bytes", n, qn + 2);

    /* The forgery first, far from any sequence number the client waits for. */
    json_int_t skipped = stat_dns("tcp_not_next");
    size_t fn = answer_a(q + 2, qn, (const uint8_t[]){6, 6, 6, 6}, fake + 2);
    fake[0] = (uint8_t)(fn >> 8), fake[1] = (uint8_t)fn;
    uint32_t far = (uint32_t)tu_now_ns() ^ 0x80000000u;
    inject_segment((uint16_t)silent_port, ntohs(me.sin_port), far, fake, fn + 2);
    /* Then the real answer. */
    size_t an = answer_a(q + 2, qn, (const uint8_t[]){10, 0, 0, 1}, a + 2);
    a[0] = (uint8_t)(an >> 8), a[1] = (uint8_t)an;
    cr_assert_eq(send(s, a, an + 2, 0), (ssize_t)(an + 2));
    n = 0;
    for (ssize_t r; n < an + 2 && (r = recv(c, got + n, sizeof(got) - n, 0)) > 0;)
        n += (size_t)r;
    cr_assert(n == an + 2 && memcmp(got, a, n) == 0, "the client did not get the real answer");
    close(c);
    close(s);

    json_t *ev = wait_dns(agent.port, "forged.test", 0x5c5c);
    char text[64];
    answers_text(ev, text, sizeof(text));
    cr_expect_str_eq(text, "10.0.0.1", "the event shows the forged answer");
    cr_expect_str_eq(tu_jstr(ev, "status"), "answered");
    json_decref(ev);
    /* The counters are a snapshot the agent takes as it expires queries: wait for it. */
    json_int_t now = 0;
    for (uint64_t dl = tu_mono_ms() + WAIT_MS; (now = stat_dns("tcp_not_next")) <= skipped;
         usleep(50000))
        if (tu_mono_ms() > dl)
            break;
    cr_expect_gt(now, skipped, "the forged segment is not counted");
}

/*
 * A TCP query sent with its SYN (TCP Fast Open, without a cookie: the server, which does not
 * take data on a SYN, gets it again after the handshake), then a second one on the connection:
 * each answered, its process named; the copy after the handshake is skipped as bytes already
 * taken, and the second query's bytes follow the SYN's data (which comes after the SYN's own
 * sequence number).
 */
Test(e2e_dns, a_tcp_fast_open_query_and_the_next_on_its_connection_make_their_events,
     .fini = stop_all, .timeout = 90)
{
    const char *knob = "/proc/sys/net/ipv4/tcp_fastopen";
    char *saved = tu_read_file(knob);
    cr_assert_not_null(saved);
    FILE *f = fopen(knob, "w");
    cr_assert_not_null(f);
    fputs("5", f); /* client on, and without a cookie: data on every SYN */
    fclose(f);
    monitor_up("dns-tfo-node");
    uint8_t q[300], a[1024];
    size_t qn = make_query(q + 2, 0x5d5d, "a.test");
    q[0] = (uint8_t)(qn >> 8), q[1] = (uint8_t)qn;
    struct sockaddr_in to;
    int fd = dnsmasq_tcp_socket(&to);
    ssize_t sent = sendto(fd, q, qn + 2, MSG_FASTOPEN, (struct sockaddr *)&to, sizeof(to));
    int err = errno;
    f = fopen(knob, "w");
    if (f) {
        fputs(saved, f);
        fclose(f);
    }
    free(saved);
    cr_assert_eq(sent, (ssize_t)(qn + 2), "sendto(MSG_FASTOPEN): %s", strerror(err));
    /* Then a second query on the connection: its bytes follow the SYN's data. */
    for (int k = 0; k < 2; k++) {
        size_t got = 0;
        for (ssize_t r; (got < 2 || got < 2 + ((size_t)a[0] << 8 | a[1])) &&
                        (r = recv(fd, a + got, sizeof(a) - got, 0)) > 0;)
            got += (size_t)r;
        cr_assert_gt(got, 2, "no answer to query %d", k);
        if (k == 0) {
            qn = make_query(q + 2, 0x5d5e, "www.test");
            q[0] = (uint8_t)(qn >> 8), q[1] = (uint8_t)qn;
            cr_assert_eq(send(fd, q, qn + 2, 0), (ssize_t)(qn + 2));
        }
    }
    close(fd);
    const char *names[] = {"a.test", "www.test"};
    for (unsigned k = 0; k < 2; k++) {
        json_t *ev = wait_dns(agent.port, names[k], 0x5d5d + k);
        cr_assert_str_eq(tu_jstr(ev, "status"), "answered", "%s", names[k]);
        cr_assert_str_eq(tu_jstr(ev, "protocol"), "tcp");
        cr_assert_eq(tu_jint(ev, "pid"), getpid());
        json_decref(ev);
    }
    /* One event each: the copy after the handshake made no second query (a retry). */
    cr_assert_eq(count_of(agent.port, "/api/events?type=dns&limit=100"), 2);
}

/*
 * A TCP segment whose first message is longer than classic UDP's 512 bytes (an EDNS-padded
 * query) and goes on with another: both are seen, each makes its event.
 */
Test(e2e_dns, a_tcp_segment_with_a_long_message_then_another_makes_both_events, .fini = stop_all,
     .timeout = 90)
{
    uint8_t seg[2048];
    monitor_up("dns-long-node");
    size_t l1 = make_padded_query(seg + 2, 0x5200, "a.test", 700);
    seg[0] = (uint8_t)(l1 >> 8), seg[1] = (uint8_t)l1;
    size_t l2 = make_query(seg + 4 + l1, 0x5201, "www.test");
    seg[2 + l1] = (uint8_t)(l2 >> 8), seg[3 + l1] = (uint8_t)l2;
    size_t n = 4 + l1 + l2;
    tcp_exchange(seg, n, 2);
    const char *names[] = {"a.test", "www.test"};
    for (unsigned i = 0; i < 2; i++) {
        json_t *ev = wait_dns(agent.port, names[i], 0x5200 + i);
        cr_assert_str_eq(tu_jstr(ev, "status"), "answered");
        cr_assert_eq(tu_jint(ev, "pid"), getpid());
        json_decref(ev);
    }
}

/*
 * The dns programs copy a message into the smallest of five record sizes that
 * holds it (64, 128, 256, 512, 4096 bytes): queries and
 * answers of each size and one byte more arrive whole, names and answers
 * intact. An answer is its query plus one A record (16 bytes).
 */
Test(e2e_dns, messages_at_each_record_size_and_one_byte_more_arrive_whole, .fini = stop_all,
     .timeout = 90)
{
    monitor_up("dns-node");
    static const size_t sizes[] = {64, 65, 128, 129, 256, 257};
    uint8_t q[512], a[1024];
    int fd = dnsmasq_socket();
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (int answer_at_edge = 0; answer_at_edge < 2; answer_at_edge++) {
            char name[300];
            uint16_t id = (uint16_t)(0x4000 + i * 2 + (size_t)answer_at_edge);
            edge_name(name, sizes[i] - (answer_at_edge ? 16 : 0));
            size_t n = make_query(q, id, name);
            cr_assert_eq(n, sizes[i] - (answer_at_edge ? 16 : 0), "%s", name);
            cr_assert_eq(send(fd, q, n, 0), (ssize_t)n);
            ssize_t got = recv(fd, a, sizeof(a), 0);
            cr_assert_eq(got, (ssize_t)n + 16, "dnsmasq's answer to a %zu-byte query: %zd bytes", n,
                         got);
            json_t *ev = wait_dns(agent.port, name, id);
            char *js = json_dumps(ev, 0);
            cr_assert_str_eq(tu_jstr(ev, "status"), "answered", "%s", js);
            cr_assert_str_eq(tu_jstr(ev, "rcode"), "NOERROR", "%s", js);
            char answers[64];
            answers_text(ev, answers, sizeof(answers));
            cr_assert_str_eq(answers, EDGE_ADDR, "%zu-byte query, %zd-byte answer: %s", n, got, js);
            free(js);
            json_decref(ev);
        }
    }
    close(fd);
}

static bool is_storm_event(json_t *ev, void *arg)
{
    const char *q = tu_jstr(ev, "query");
    return q && strcmp(q, "a.test") == 0 && tu_jint(ev, "pid") == getpid();
}

/* Messages both dns programs suppressed (DNS_RATE_LIMIT), by their own counters. */
static json_int_t dns_programs_suppressed(void)
{
    return program_counter("cgroup_skb__dns_egress", "suppressed") +
           program_counter("cgroup_skb__dns_ingress", "suppressed");
}

/*
 * A storm of 400 queries against DNS_RATE_LIMIT=5: the kernel reports a few,
 * counts the rest as suppressed (per program, and in /api/stats and /metrics as
 * soon as it is over), and the other event types still get through.
 */
Test(e2e_dns, a_query_storm_is_rate_limited_and_counted, .fini = stop_all, .timeout = 90)
{
    monitor_up_with("dns-node", "5");
    enum { STORM = 400 };
    uint8_t q[512], a[1024];
    int fd = dnsmasq_socket();
    json_int_t before = program_counter("cgroup_skb__dns_egress", "suppressed");
    for (int i = 0; i < STORM; i++) {
        size_t n = make_query(q, (uint16_t)(0x8000 + i), "a.test");
        cr_assert_eq(send(fd, q, n, 0), (ssize_t)n);
        cr_assert_gt(recv(fd, a, sizeof(a), 0), 0, "dnsmasq did not answer query %d", i);
    }
    json_int_t suppressed = program_counter("cgroup_skb__dns_egress", "suppressed") - before;
    /* 5 a second per CPU, one second of burst: at most a few dozen got through. */
    cr_assert_gt(suppressed, STORM / 2, "only %lld of %d queries suppressed", (long long)suppressed,
                 STORM);

    /* Some were reported, far fewer than were sent. */
    json_t *ev = tu_wait_event(agent.port, "/api/events?type=dns&query=a.test&limit=10000",
                               is_storm_event, NULL, WAIT_MS);
    cr_assert(ev, "no query of the storm was reported");
    json_decref(ev);
    json_int_t reported =
        count_of(agent.port, "/api/events?type=dns&query=a.test&status=answered&limit=10000");
    cr_assert_lt(reported, STORM - suppressed + 1);

    close(fd);
    /* /api/stats and /metrics have the count at once: no DNS message comes after the storm to
     * carry it. (Read between two readings of the programs' counters, should other DNS traffic
     * of the machine move them.) */
    json_int_t t0 = dns_programs_suppressed();
    json_int_t in_stats = stat_dns("suppressed");
    struct tu_http m;
    cr_assert_eq(tu_http_get(agent.port, "/metrics", NULL, &m), 0);
    json_int_t t1 = dns_programs_suppressed();
    cr_assert(in_stats >= t0 && in_stats <= t1, "dns.suppressed %lld, the programs' %lld..%lld",
              (long long)in_stats, (long long)t0, (long long)t1);
    const char *metric = strstr(m.body, "\nebpf_agent_dns_suppressed_total ");
    cr_assert(metric, "no ebpf_agent_dns_suppressed_total in /metrics");
    long long in_metrics = strtoll(metric + strlen("\nebpf_agent_dns_suppressed_total "), NULL, 10);
    cr_assert(in_metrics >= t0 && in_metrics <= t1,
              "ebpf_agent_dns_suppressed_total %lld, the programs' %lld..%lld", in_metrics,
              (long long)t0, (long long)t1);
    tu_http_free(&m);

    /* Other event types are not starved: a connection right after the storm is reported. */
    pid_t self = getpid();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    inet_pton(AF_INET, SVC_ADDR, &sa.sin_addr);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(lfd, 1), 0);
    cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(c);
    close(lfd);
    char path[128];
    snprintf(path, sizeof(path), "/api/events?type=connection&pid=%d&limit=100", self);
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    while (count_of(agent.port, path) == 0) {
        cr_assert(tu_mono_ms() < deadline, "no connection event after the storm");
        usleep(50000);
    }
    agent_exits_cleanly();
    remove_logs();
}

/*
 * The agent's DNS counts once every query it tracked is settled (answered, or expired after
 * DNS_TIMEOUT, 1 s); the tiny ring holds little, so those are all it will see. *queries and
 * *answered as it counts them.
 */
static void dns_settled(json_int_t *queries, json_int_t *answered)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        json_t *st = tu_fetch_json(agent.port, "/api/stats");
        json_t *d = json_object_get(st, "dns");
        *queries = json_integer_value(json_object_get(d, "queries"));
        *answered = json_integer_value(json_object_get(d, "answered"));
        json_int_t settled = *answered + json_integer_value(json_object_get(d, "timeouts")) +
                             json_integer_value(json_object_get(d, "unknown")) +
                             json_integer_value(json_object_get(d, "failed")) +
                             json_integer_value(json_object_get(d, "evicted"));
        json_int_t pending = json_integer_value(json_object_get(d, "pending"));
        json_decref(st);
        if (*queries > 0 && pending == 0 && settled == *queries)
            return;
        cr_assert(tu_mono_ms() < deadline, "DNS queries not settled: %lld of %lld, %lld pending",
                  (long long)settled, (long long)*queries, (long long)pending);
        usleep(50000);
    }
}

/*
 * Bursts of a.test queries from fd to dnsmasq, each answer read: 10 rounds of 200 queries
 * sent back to back, then their 200 answers.
 */
static void bursts(int fd)
{
    enum { BURST = 200, ROUNDS = 10 };
    uint8_t q[512], a[1024];
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BURST; i++) {
            size_t n = make_query(q, (uint16_t)(r * BURST + i), "a.test");
            cr_assert_eq(send(fd, q, n, 0), (ssize_t)n);
        }
        for (int i = 0; i < BURST; i++)
            cr_assert_gt(recv(fd, a, sizeof(a), 0), 0, "dnsmasq did not answer (round %d)", r);
    }
}

/* The a.test events of this process with status. */
static json_int_t storm_events(const char *status)
{
    char path[160];
    snprintf(path, sizeof(path), "/api/events?type=dns&query=a.test&pid=%d&status=%s&limit=10000",
             getpid(), status);
    return count_of(agent.port, path);
}

/*
 * Answers the kernel could not pass on (a ring buffer far too small for bursts of queries)
 * leave their queries unanswered as far as the agent can see: those expire as "unknown",
 * never as "timeout", since dnsmasq answered every query here (the client got each answer).
 * Bursts go on until a query the agent tracked lost its answer (most often the first does;
 * a burst whose recorded queries all kept theirs shows nothing).
 */
Test(e2e_dns, queries_whose_answers_the_kernel_lost_are_not_timeouts, .fini = stop_all,
     .timeout = 120)
{
    ringbuf_size = "4KiB";
    monitor_up_with("dns-node", "100000");
    enum { TRIES = 10 };
    int fd = dnsmasq_socket();
    json_int_t queries = 0, answered = 0;
    for (int t = 0; t < TRIES && queries == answered; t++) {
        bursts(fd);
        dns_settled(&queries, &answered);
    }
    close(fd);
    json_int_t lost = program_counter("cgroup_skb__dns_ingress", "drops");
    cr_assert_gt(queries, answered,
                 "no tracked query lost its answer in %d bursts (%lld answers lost, %lld queries "
                 "tracked)",
                 TRIES, (long long)lost, (long long)queries);

    char path[160];
    snprintf(path, sizeof(path), "/api/events?type=dns&query=a.test&pid=%d&status=%s&limit=10000",
             getpid(), "timeout");
    json_int_t timeouts = count_of(agent.port, path);
    cr_assert_eq(timeouts, 0, "%lld answered queries reported as timeouts (%lld answers lost)",
                 (long long)timeouts, (long long)lost);
    snprintf(path, sizeof(path), "/api/events?type=dns&query=a.test&pid=%d&status=%s&limit=10000",
             getpid(), "unknown");
    json_int_t unknown = count_of(agent.port, path);
    cr_assert_gt(unknown, 0);
    cr_assert_geq(stat_dns("unknown"), unknown);
    agent_exits_cleanly();
    remove_logs();
}

/*
 * A socket whose answers the kernel loses (bursts through a 4 KiB ring) does not hide the
 * timeouts of the node's other sockets: socket B asks the test's silent server (it reads the
 * query and never answers) just before socket A's bursts, whose answers the kernel loses
 * while B's query is pending, well before it expires. B's event says "timeout"; A's queries
 * that lost their answers say "unknown" (their socket lost answers), never "timeout". Tries
 * go on until both happened: a loss of A's answers seen within half of DNS_TIMEOUT of B's
 * query, and a query of A tracked that lost its answer.
 */
Test(e2e_dns, answers_lost_to_a_flood_leave_other_sockets_timeouts, .fini = stop_all,
     .timeout = 150)
{
    ringbuf_size = "4KiB";
    monitor_up_with("dns-node", "100000");
    enum { TRIES = 10 };
    int fd = dnsmasq_socket();
    json_int_t queries = 0, answered = 0;
    bool shown = false; /* A lost answers while B's query was pending */
    for (int t = 0; t < TRIES && (!shown || queries == answered); t++) {
        char name[32];
        uint8_t got[512];
        uint16_t id = (uint16_t)(0x5100 + t);
        snprintf(name, sizeof(name), "silent-%d.test", t);
        uint64_t sent_ms = tu_mono_ms();
        ask(silent_port, id, name, false);
        json_int_t before = program_counter("cgroup_skb__dns_ingress", "drops");
        bursts(fd);
        json_int_t after = program_counter("cgroup_skb__dns_ingress", "drops");
        bool in_time = after > before && tu_mono_ms() - sent_ms < TIMEOUT_MS / 2;

        json_t *ev = wait_dns(agent.port, name, id);
        cr_assert_str_eq(tu_jstr(ev, "status"), "timeout",
                         "socket B's unanswered query is %s: %lld of socket A's answers lost "
                         "meanwhile (%s)",
                         tu_jstr(ev, "status"), (long long)(after - before),
                         in_time ? "while it was pending" : "maybe after it expired");
        cr_assert_eq(tu_jint(ev, "dest_port"), silent_port);
        json_decref(ev);
        cr_assert_gt(recv(silent_fd, got, sizeof(got), MSG_DONTWAIT), 0,
                     "the silent server did not get the query");
        shown |= in_time;
        dns_settled(&queries, &answered);
    }
    close(fd);
    cr_assert(shown, "no loss of socket A's answers came while socket B's query was pending");
    cr_assert_gt(queries, answered, "no tracked query of socket A lost its answer in %d tries",
                 TRIES);
    json_int_t timeouts = storm_events("timeout");
    cr_assert_eq(timeouts, 0, "%lld of socket A's answered queries reported as timeouts",
                 (long long)timeouts);
    cr_assert_gt(storm_events("unknown"), 0);
    agent_exits_cleanly();
    remove_logs();
}

/*
 * End to end: the real bin/ebpf-agent, real eBPF programs, real sockets and
 * processes made by this test, asserted over the real HTTP API.
 * Needs root (loads eBPF programs); skipped with a reason otherwise.
 */
#include <arpa/inet.h>
#include <sched.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static struct tu_agent agent;

static void start_agent(void)
{
    tu_agent_start(&agent, "e2e-node", NULL);
}

static void stop_agent(void)
{
    tu_agent_stop(&agent);
}

TestSuite(e2e_agent, .init = start_agent, .fini = stop_agent, .timeout = 120);

static json_t *wait_event(const char *query, tu_event_pred pred, void *arg, int timeout_ms)
{
    return tu_wait_event(agent.port, query, pred, arg, timeout_ms);
}

static void expect_common_fields(json_t *ev)
{
    const char *id = tu_jstr(ev, "id");
    cr_assert(id && strlen(id) == 16 && strspn(id, "0123456789abcdef") == 16, "id: %s", id);
    cr_expect_str_eq(tu_jstr(ev, "node"), "e2e-node");
    uint64_t ts = (uint64_t)tu_jint(ev, "timestamp");
    uint64_t now = tu_now_ns();
    cr_expect(ts <= now + 1000000000ull && ts + 120000000000ull > now,
              "timestamp %" PRIu64 " is not near now %" PRIu64, ts, now);
    const char *time = tu_jstr(ev, "time");
    cr_expect(time && strlen(time) == 30 && time[29] == 'Z', "time: %s", time);
    /* A drop freed in softirq has no task: then no process fields at all. */
    const char *type = tu_jstr(ev, "type");
    if (type && strcmp(type, "packet_drop") == 0 && !json_object_get(ev, "pid")) {
        cr_expect(!json_object_get(ev, "uid") && !json_object_get(ev, "command"));
        return;
    }
    cr_expect(json_is_integer(json_object_get(ev, "uid")));
    cr_expect(json_is_integer(json_object_get(ev, "ppid")));
}

struct net_match {
    const char *type;
    const char *status; /* NULL = any */
    const char *dest_ip;
    int dest_port;
    int source_port; /* 0 = any */
};

static bool match_net(json_t *ev, void *arg)
{
    struct net_match *m = arg;
    const char *status = tu_jstr(ev, "status");
    const char *dip = tu_jstr(ev, "dest_ip");
    json_t *dport = json_object_get(ev, "dest_port");
    json_t *sport = json_object_get(ev, "source_port");
    return tu_jstr(ev, "type") && strcmp(tu_jstr(ev, "type"), m->type) == 0 && dip &&
           strcmp(dip, m->dest_ip) == 0 && json_integer_value(dport) == m->dest_port &&
           (!m->status || (status && strcmp(status, m->status) == 0)) &&
           (!m->source_port || json_integer_value(sport) == m->source_port);
}

/* Opens a listener on addr (127.0.0.1 or ::1), connects and accepts; returns the ports. */
static void tcp_roundtrip(int family, const char *addr, int *listen_port, int *client_port)
{
    int l = socket(family, SOCK_STREAM, 0);
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &s4->sin_addr);
        len = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &s6->sin6_addr);
        len = sizeof(*s6);
    }
    cr_assert_eq(bind(l, (struct sockaddr *)&ss, len), 0, "bind %s: %s", addr, strerror(errno));
    cr_assert_eq(listen(l, 4), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&ss, &len), 0);
    *listen_port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                           : ((struct sockaddr_in6 *)&ss)->sin6_port);
    int c = socket(family, SOCK_STREAM, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
    struct sockaddr_storage cs;
    socklen_t clen = sizeof(cs);
    cr_assert_eq(getsockname(c, (struct sockaddr *)&cs, &clen), 0);
    *client_port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&cs)->sin_port
                                           : ((struct sockaddr_in6 *)&cs)->sin6_port);
    int a = accept(l, NULL, NULL);
    cr_assert(a >= 0, "accept: %s", strerror(errno));
    close(a);
    close(c);
    close(l);
}

static void check_tcp(int family, const char *addr, const char *fam_name)
{
    int lport, cport;
    tcp_roundtrip(family, addr, &lport, &cport);
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=connection,accept&pid=%d&limit=1000", getpid());

    struct net_match conn = {"connection", "established", addr, lport, cport};
    json_t *ev = wait_event(q, match_net, &conn, 10000);
    cr_assert(ev, "no established connection event to %s:%d", addr, lport);
    expect_common_fields(ev);
    cr_expect_eq(tu_jint(ev, "pid"), getpid());
    cr_expect_eq(tu_jint(ev, "ppid"), getppid());
    cr_expect_eq(tu_jint(ev, "uid"), getuid());
    cr_expect_str_eq(tu_jstr(ev, "protocol"), "tcp");
    cr_expect_str_eq(tu_jstr(ev, "family"), fam_name);
    cr_expect_str_eq(tu_jstr(ev, "source_ip"), addr);
    cr_expect_gt(tu_jint(ev, "latency_ns"), 0);
    cr_expect_lt(tu_jint(ev, "latency_ns"), 5000000000ll);
    json_decref(ev);

    /* The accepting process is this test; source = the peer (the client socket). */
    struct net_match acc = {"accept", NULL, addr, lport, cport};
    ev = wait_event(q, match_net, &acc, 10000);
    cr_assert(ev, "no accept event on %s:%d", addr, lport);
    expect_common_fields(ev);
    cr_expect_eq(tu_jint(ev, "pid"), getpid());
    cr_expect_str_eq(tu_jstr(ev, "source_ip"), addr);
    cr_expect_str_eq(tu_jstr(ev, "protocol"), "tcp");
    cr_expect_str_eq(tu_jstr(ev, "family"), fam_name);
    json_decref(ev);
}

Test(e2e_agent, tcp_connect_and_accept_ipv4)
{
    check_tcp(AF_INET, "127.0.0.1", "ipv4");
}

Test(e2e_agent, tcp_connect_and_accept_ipv6)
{
    check_tcp(AF_INET6, "::1", "ipv6");
}

Test(e2e_agent, tcp_connect_refused_is_failed)
{
    int port = tu_free_port();
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_neq(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(c);
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=connection&pid=%d", getpid());
    struct net_match m = {"connection", "failed", "127.0.0.1", port, 0};
    json_t *ev = wait_event(q, match_net, &m, 10000);
    cr_assert(ev, "no failed connection event to port %d", port);
    cr_expect_str_eq(tu_jstr(ev, "protocol"), "tcp");
    cr_expect_eq(tu_jint(ev, "pid"), getpid());
    json_decref(ev);
}

static bool match_drop(json_t *ev, void *arg)
{
    int port = *(int *)arg;
    const char *reason = tu_jstr(ev, "drop_reason");
    return reason && strcmp(reason, "NO_SOCKET") == 0 &&
           json_integer_value(json_object_get(ev, "dest_port")) == port;
}

Test(e2e_agent, udp_to_closed_port_is_a_no_socket_drop)
{
    int port = tu_free_port();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(s, "ping", 4, 0, (struct sockaddr *)&sa, sizeof(sa)), 4);
    close(s);
    json_t *ev = wait_event("/api/events?type=packet_drop&limit=1000", match_drop, &port, 10000);
    cr_assert(ev, "no NO_SOCKET packet_drop for udp port %d", port);
    expect_common_fields(ev);
    cr_expect_str_eq(tu_jstr(ev, "protocol"), "udp");
    cr_expect_str_eq(tu_jstr(ev, "dest_ip"), "127.0.0.1");
    cr_expect_str_eq(tu_jstr(ev, "source_ip"), "127.0.0.1");
    cr_expect_gt(tu_jint(ev, "drop_reason_code"), 1); /* 1 is SKB_CONSUMED, never a drop */
    const char *loc = tu_jstr(ev, "location");
    cr_expect(loc && strstr(loc, "+0x"), "location should be symbol+offset: %s", loc);
    json_decref(ev);
}

static bool match_noproto(json_t *ev, void *arg)
{
    const char *reason = tu_jstr(ev, "drop_reason"), *src = tu_jstr(ev, "source_ip");
    return reason && strcmp(reason, "IP_NOPROTO") == 0 && src && strcmp(src, arg) == 0;
}

/* A packet of an IP protocol nothing handles (IP_NOPROTO) says which: its number, as the
 * protocol has no name. */
Test(e2e_agent, a_packet_of_an_unhandled_protocol_names_its_number)
{
    /* By hand (IP_HDRINCL): a raw socket of the protocol itself would take the packet. */
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    cr_assert(s >= 0, "raw socket: %s", strerror(errno));
    uint8_t pkt[28] = {0x45, 0, 0, sizeof(pkt), 0, 0, 0, 0, 64, 253};
    inet_pton(AF_INET, "127.0.0.253", pkt + 12);
    inet_pton(AF_INET, "127.0.0.1", pkt + 16);
    memcpy(pkt + 20, "proto253", 8);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&to, sizeof(to)),
                 (ssize_t)sizeof(pkt), "sendto: %s", strerror(errno));
    close(s);
    json_t *ev =
        wait_event("/api/events?type=packet_drop&limit=1000", match_noproto, "127.0.0.253", 10000);
    cr_assert(ev, "no IP_NOPROTO packet_drop from 127.0.0.253");
    cr_expect_str_eq(tu_jstr(ev, "protocol"), "253", "%s", tu_jdump(ev));
    cr_expect_str_eq(tu_jstr(ev, "dest_ip"), "127.0.0.1");
    cr_expect_null(json_object_get(ev, "source_port"), "%s", tu_jdump(ev));
    json_decref(ev);
}

/*
 * The end of an ordinary teardown is no drop: the side that closed first gets the peer's
 * FIN on a socket no one reads any more, queued and then purged (QUEUE_PURGE) when the
 * socket goes to TIME_WAIT, on every such connection.
 */
Test(e2e_agent, an_ordinary_tcp_teardown_is_no_drop)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(l, 4), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    int port = ntohs(sa.sin_port);
    for (int i = 0; i < 3; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
        int a = accept(l, NULL, NULL);
        cr_assert_geq(a, 0);
        cr_assert_eq(write(a, "hi", 2), 2);
        close(a); /* the server first */
        char buf[8];
        ssize_t n, got = 0;
        while ((n = read(c, buf, sizeof(buf))) > 0)
            got += n;
        cr_assert_eq(got, 2);
        close(c); /* its FIN reaches the server's closed socket */
    }
    close(l);

    /* A drop after them, seen: the agent has read what came before it. */
    int marker = tu_free_port();
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ma = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)marker),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(sendto(u, "ping", 4, 0, (struct sockaddr *)&ma, sizeof(ma)), 4);
    close(u);
    json_t *ev = wait_event("/api/events?type=packet_drop&limit=1000", match_drop, &marker, 10000);
    cr_assert(ev, "no NO_SOCKET packet_drop for udp port %d", marker);
    json_decref(ev);
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=packet_drop&dest_port=%d", port);
    json_t *r = tu_get_json(agent.port, q, NULL);
    cr_assert(r);
    cr_expect_eq(json_array_size(json_object_get(r, "events")), 0, "%s", tu_jdump(r));
    json_decref(r);
}

static bool match_pid_type(json_t *ev, void *arg)
{
    const int *want = arg; /* [0] pid, [1] 1=exec 2=exit */
    const char *type = tu_jstr(ev, "type");
    return json_integer_value(json_object_get(ev, "pid")) == want[0] && type &&
           strcmp(type, want[1] == 1 ? "exec" : "exit") == 0;
}

/* Forks a child that execs /bin/sh -c 'exit 3' with a marker argument; returns its pid. */
static pid_t run_exit3(const char *marker)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "/bin/sh", "-c", "exit 3", marker, (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3);
    return pid;
}

Test(e2e_agent, exec_and_exit_of_a_child)
{
    pid_t child = run_exit3("e2e-marker");
    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=exec,exit&pid=%d", child);

    int want_exec[2] = {child, 1};
    json_t *ev = wait_event(q, match_pid_type, want_exec, 10000);
    cr_assert(ev, "no exec event for pid %d", child);
    expect_common_fields(ev);
    cr_expect_eq(tu_jint(ev, "ppid"), getpid());
    cr_expect_str_eq(tu_jstr(ev, "command"), "sh");
    cr_expect_str_eq(tu_jstr(ev, "filename"), "/bin/sh");
    json_t *args = json_object_get(ev, "args");
    cr_assert(json_is_array(args) && json_array_size(args) == 4, "args: %s", json_dumps(args, 0));
    cr_expect_str_eq(json_string_value(json_array_get(args, 0)), "/bin/sh");
    cr_expect_str_eq(json_string_value(json_array_get(args, 1)), "-c");
    cr_expect_str_eq(json_string_value(json_array_get(args, 2)), "exit 3");
    cr_expect_str_eq(json_string_value(json_array_get(args, 3)), "e2e-marker");
    cr_expect_gt(tu_jint(ev, "cgroup_id"), 0);
    cr_assert(json_is_integer(json_object_get(ev, "euid")), "no euid: %s", tu_jdump(ev));
    cr_expect_eq(tu_jint(ev, "euid"), getuid(), "a program without the set-user-ID bit");
    json_decref(ev);

    int want_exit[2] = {child, 2};
    ev = wait_event(q, match_pid_type, want_exit, 10000);
    cr_assert(ev, "no exit event for pid %d", child);
    expect_common_fields(ev);
    cr_expect_eq(tu_jint(ev, "exit_code"), 3);
    cr_expect_eq(tu_jint(ev, "signal"), 0);
    cr_expect_gt(tu_jint(ev, "duration_ns"), 0);
    cr_expect_lt(tu_jint(ev, "duration_ns"), 60000000000ll);
    cr_expect_eq(tu_jint(ev, "ppid"), getpid());
    json_decref(ev);
}

/* Standard padded base64, to compare with the API's _b64 fields. */
static void b64(const unsigned char *p, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < len ? p[i + 2] : 0);
        *out++ = a[v >> 18];
        *out++ = a[v >> 12 & 63];
        *out++ = i + 1 < len ? a[v >> 6 & 63] : '=';
        *out++ = i + 2 < len ? a[v & 63] : '=';
    }
    *out = '\0';
}

/*
 * GETs path and parses it with jansson's default flags, which reject invalid
 * UTF-8 anywhere in the text, as strict clients do. Returns the document.
 */
static json_t *get_strict(const char *path, char **raw)
{
    struct tu_http r;
    cr_assert_eq(tu_http_get(agent.port, path, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "%s: %d", path, r.status);
    json_error_t je;
    json_t *j = json_loadb(r.body, r.body_len, 0, &je);
    cr_assert(j, "%s is not strict JSON: %s (line %d column %d)", path, je.text, je.line,
              je.column);
    if (raw)
        *raw = r.body;
    else
        tu_http_free(&r);
    return j;
}

static json_t *fetch_strict(int port, const char *path)
{
    return get_strict(path, NULL);
}

/* Polls path (strictly parsed) for an event of pid and type; a new reference or NULL. */
static json_t *wait_strict(const char *path, int pid, int type, int timeout_ms)
{
    int want[2] = {pid, type};
    return tu_poll_event(fetch_strict, agent.port, path, match_pid_type, want, timeout_ms);
}

/* A copy of the program src at dir/name in a new directory (dir: a mkdtemp() template); its
 * path goes to path. */
static void copy_program(const char *src, char *dir, const char *name, char *path, size_t len)
{
    cr_assert(mkdtemp(dir));
    snprintf(path, len, "%s/%s", dir, name);
    FILE *in = fopen(src, "rb"), *out = fopen(path, "wb");
    cr_assert(in && out, "copy %s to %s: %s", src, path, strerror(errno));
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), in)) > 0)
        cr_assert_eq(fwrite(chunk, 1, n, out), n);
    fclose(in);
    cr_assert_eq(fclose(out), 0);
    cr_assert_eq(chmod(path, 0755), 0);
}

/*
 * Runs path as nobody (uid and gid 65534, no supplementary groups) with its
 * output read back; returns its pid. path is id(1) or a copy of it: out gets
 * what it printed.
 */
static pid_t run_as_nobody(const char *path, char *out, size_t len)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (dup2(p[1], STDOUT_FILENO) < 0 || setgroups(0, NULL) || setgid(65534) || setuid(65534))
            _exit(126);
        execl(path, "id", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    ssize_t n, got = 0;
    while ((n = read(p[0], out + got, len - 1 - (size_t)got)) > 0)
        got += n;
    out[got] = '\0';
    close(p[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s as nobody: status %d", path,
              status);
    return pid;
}

/* The exec event of pid: its uid and euid, which must be there. */
static void expect_exec_uids(pid_t pid, json_int_t uid, json_int_t euid)
{
    char q[128];
    int want[2] = {pid, 1};
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", pid);
    json_t *ev = wait_event(q, match_pid_type, want, 10000);
    cr_assert(ev, "no exec event for pid %d", pid);
    cr_assert(json_is_integer(json_object_get(ev, "euid")), "no euid: %s", tu_jdump(ev));
    cr_expect_eq(tu_jint(ev, "uid"), uid, "%s", tu_jdump(ev));
    cr_expect_eq(tu_jint(ev, "euid"), euid, "%s", tu_jdump(ev));
    json_decref(ev);
}

/*
 * A set-user-ID root program run by nobody, as passwd is by a user: its exec
 * says uid 65534 (who ran it) and euid 0 (what it runs as). The program
 * itself, run the same way without the bit, says 65534 twice.
 */
Test(e2e_agent, set_user_id_exec_gives_the_real_and_effective_uid)
{
    /* A mount with nosuid would leave the bit without effect: the first one that has none. */
    static const char *const bases[] = {"/tmp", "/var/tmp", "build"};
    const char *base = NULL;
    struct statvfs sv;
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]) && !base; i++)
        if (statvfs(bases[i], &sv) == 0 && !(sv.f_flag & ST_NOSUID))
            base = bases[i];
    if (!base)
        cr_skip_test("/tmp, /var/tmp and build/ are all on nosuid mounts");
    char dir[256], path[300], out[512];
    snprintf(dir, sizeof(dir), "%s/ebpf-e2e-suid-XXXXXX", base);
    copy_program("/usr/bin/id", dir, "id", path, sizeof(path));
    cr_assert_eq(chmod(dir, 0755), 0); /* for nobody to reach it */
    cr_assert_eq(chown(path, 0, 0), 0);
    cr_assert_eq(chmod(path, 04755), 0, "chmod 4755 %s: %s", path, strerror(errno));

    pid_t pid = run_as_nobody(path, out, sizeof(out));
    cr_assert(strstr(out, "uid=65534(") && strstr(out, "euid=0("),
              "the set-user-ID bit took no effect here: %s", out);
    expect_exec_uids(pid, 65534, 0);

    pid = run_as_nobody("/usr/bin/id", out, sizeof(out));
    cr_assert(!strstr(out, "euid="), "id says: %s", out);
    expect_exec_uids(pid, 65534, 65534);
    unlink(path);
    rmdir(dir);
}

/* Runs path $'\xff\x80\x80' to completion; returns its pid. */
static pid_t run_with_bad_argv(const char *path)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl(path, path, "\xff\x80\x80", (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the copy of /bin/true ran");
    return pid;
}

/* The reproducer: `/bin/true $'\xff\x80\x80'`, from a path that is not UTF-8 either. */
Test(e2e_agent, exec_with_invalid_utf8_is_strict_json_with_exact_bytes)
{
    char dir[] = "/tmp/ebpf-e2e-utf8-XXXXXX";
    static const char name[] = "tr\xffue\x80"; /* also the comm */
    char path[128];
    copy_program("/bin/true", dir, name, path, sizeof(path));
    pid_t pid = run_with_bad_argv(path);

    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", pid);
    json_t *ev = wait_strict(q, pid, 1, 10000);
    cr_assert(ev, "no exec event for pid %d", pid);

    char want[256], want_b64[256];
    snprintf(want, sizeof(want), "%s/tr\xef\xbf\xbdue\xef\xbf\xbd", dir);
    cr_expect_str_eq(tu_jstr(ev, "filename"), want);
    b64((const unsigned char *)path, strlen(path), want_b64);
    cr_expect_str_eq(tu_jstr(ev, "filename_b64"), want_b64);
    cr_expect_str_eq(tu_jstr(ev, "command"), "tr\xef\xbf\xbdue\xef\xbf\xbd");
    b64((const unsigned char *)name, strlen(name), want_b64);
    cr_expect_str_eq(tu_jstr(ev, "command_b64"), want_b64);
    json_t *args = json_object_get(ev, "args"), *raw = json_object_get(ev, "args_b64");
    cr_assert(json_array_size(args) == 2 && json_array_size(raw) == 2);
    cr_expect_str_eq(json_string_value(json_array_get(args, 0)), want);
    cr_expect_str_eq(json_string_value(json_array_get(args, 1)),
                     "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    b64((const unsigned char *)path, strlen(path), want_b64);
    cr_expect_str_eq(json_string_value(json_array_get(raw, 0)), want_b64);
    cr_expect_str_eq(json_string_value(json_array_get(raw, 1)), "/4CA");
    json_decref(ev);

    /* Found by its command as this answer shows it (as a user copies it), and by its bytes. */
    static const char *by[] = {"tr%EF%BF%BDue%EF%BF%BD", "tr%FFue%80"};
    for (size_t i = 0; i < sizeof(by) / sizeof(by[0]); i++) {
        snprintf(q, sizeof(q), "/api/events?type=exec&command=%s", by[i]);
        ev = wait_strict(q, pid, 1, 10000);
        cr_assert(ev, "%s: no exec event for pid %d", q, pid);
        json_decref(ev);
    }

    /* The whole history, every event in it, is still one strict document. */
    json_decref(get_strict("/api/events?limit=10000", NULL));
    unlink(path);
    rmdir(dir);
}

/* Opens the SSE stream at path with a raw HTTP/1.1 request and one more header line ("Name:
 * value", or NULL); returns the socket. */
static int sse_open_hdr(const char *path, const char *header)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)agent.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%s%s\r\n", path,
                     header ? header : "", header ? "\r\n" : "");
    cr_assert_eq(write(fd, req, (size_t)n), (ssize_t)n);
    return fd;
}

static int sse_open(const char *path)
{
    return sse_open_hdr(path, NULL);
}

/* Appends to buf (NUL-terminated, *len bytes held) what arrives within 200 ms. */
static void sse_poll(int fd, char *buf, size_t size, size_t *len)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 200) > 0) {
        ssize_t r = read(fd, buf + *len, size - *len - 1);
        cr_assert_gt(r, 0, "stream closed");
        *len += (size_t)r;
        buf[*len] = '\0';
    }
}

/* The event on the "data: {json}" line of buf that holds hit (a new reference). */
static json_t *sse_event_at(char *buf, char *hit)
{
    char *line = hit;
    while (line > buf && line[-1] != '\n')
        line--;
    cr_assert(strncmp(line, "data: {", 7) == 0, "line: %.80s", line);
    char *nl = strchr(line, '\n');
    cr_assert(nl, "unterminated line: %.80s", line);
    *nl = '\0';
    json_error_t je;
    json_t *ev = json_loads(line + 6, 0, &je);
    cr_assert(ev, "data line is not strict JSON (%s): %s", je.text, line);
    return ev;
}

/* The same event on the SSE stream: one "data:" line of strict JSON. */
Test(e2e_agent, sse_stream_of_invalid_utf8_is_strict_json)
{
    char dir[] = "/tmp/ebpf-e2e-utf8-XXXXXX", path[128];
    copy_program("/bin/true", dir, "t\xc0\xafrue", path, sizeof(path));
    int fd = sse_open("/api/events/stream?type=exec");

    static char buf[1 << 20];
    size_t len = 0;
    pid_t child = 0;
    char needle[64];
    uint64_t deadline = tu_mono_ms() + 10000;
    while (tu_mono_ms() < deadline && len + 1 < sizeof(buf)) {
        sse_poll(fd, buf, sizeof(buf), &len);
        if (!child && strstr(buf, "\r\n\r\n")) {
            child = run_with_bad_argv(path); /* after the subscription */
            snprintf(needle, sizeof(needle), "\"pid\":%d,", child);
        }
        if (child && strstr(buf, needle) && strchr(strstr(buf, needle), '\n'))
            break;
    }
    close(fd);
    cr_assert(child, "stream never answered");
    char *hit = strstr(buf, needle);
    cr_assert(hit, "exec of pid %d not streamed", child);
    json_t *ev = sse_event_at(buf, hit);
    json_t *raw = json_object_get(ev, "args_b64");
    cr_assert_eq(json_array_size(raw), 2);
    cr_expect_str_eq(json_string_value(json_array_get(raw, 1)), "/4CA");
    cr_expect(json_is_string(json_object_get(ev, "filename_b64")));
    json_decref(ev);
    unlink(path);
    rmdir(dir);
}

/* A password on a command line is replaced before anything is kept, served or counted. */
Test(e2e_agent, secrets_in_argv_are_redacted_before_storing)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "/bin/sh", "-c", "exit 0", "sh", "--password=hunter2", "--token",
              "tok-e2e-31337", "DB_PASSWORD=pw-e2e-4242", "postgres://app:pg-e2e-77@db/x",
              (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    char q[128];
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", pid);
    json_t *ev = wait_strict(q, pid, 1, 10000);
    cr_assert(ev, "no exec event for pid %d", pid);
    json_t *args = json_object_get(ev, "args");
    cr_assert_eq(json_array_size(args), 9, "args: %s", json_dumps(args, 0));
    static const char *const want[] = {"/bin/sh",
                                       "-c",
                                       "exit 0",
                                       "sh",
                                       "--password=***",
                                       "--token",
                                       "***",
                                       "DB_PASSWORD=***",
                                       "postgres://app:***@db/x"};
    for (size_t i = 0; i < 9; i++)
        cr_expect_str_eq(json_string_value(json_array_get(args, i)), want[i]);
    json_decref(ev);

    /* A real curl with a user's password, a bearer token and a JSON body (to a closed port). */
    pid = fork();
    if (pid == 0) {
        execl("/usr/bin/curl", "curl", "-s", "-o", "/dev/null", "-u", "admin:cu-e2e-5150", "-H",
              "Authorization: Bearer ab-e2e-8086", "-d",
              "{\"user\":\"a\",\"password\":\"js-e2e-6502\"}", "http://127.0.0.1:9/", (char *)NULL);
        _exit(127);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 127, "curl did not run");
    snprintf(q, sizeof(q), "/api/events?type=exec&pid=%d", pid);
    ev = wait_strict(q, pid, 1, 10000);
    cr_assert(ev, "no exec event for curl, pid %d", pid);
    args = json_object_get(ev, "args");
    static const char *const want_curl[] = {"curl",
                                            "-s",
                                            "-o",
                                            "/dev/null",
                                            "-u",
                                            "***",
                                            "-H",
                                            "Authorization: Bearer ***",
                                            "-d",
                                            "{\"user\":\"a\",\"password\":\"***\"}",
                                            "http://127.0.0.1:9/"};
    cr_assert_eq(json_array_size(args), 11, "args: %s", json_dumps(args, 0));
    for (size_t i = 0; i < 11; i++)
        cr_expect_str_eq(json_string_value(json_array_get(args, i)), want_curl[i]);
    json_decref(ev);

    char *raw;
    json_decref(get_strict("/api/events?limit=10000", &raw));
    static const char *const secrets[] = {"hunter2",    "tok-e2e-31337", "pw-e2e-4242",
                                          "pg-e2e-77",  "cu-e2e-5150",   "ab-e2e-8086",
                                          "js-e2e-6502"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        cr_expect_null(strstr(raw, secrets[i]), "%s is in /api/events", secrets[i]);
    free(raw);

    json_t *st = get_strict("/api/stats", NULL);
    cr_expect_geq(tu_jint(st, "args_redacted"), 7);
    cr_expect_eq(tu_jint(st, "args_redact_failed"), 0);
    json_decref(st);
    struct tu_http m;
    cr_assert_eq(tu_http_get(agent.port, "/metrics", NULL, &m), 0);
    const char *line = strstr(m.body, "\nebpf_agent_args_redacted_total ");
    cr_assert(line, "no ebpf_agent_args_redacted_total in /metrics");
    cr_expect_geq(strtoull(line + strlen("\nebpf_agent_args_redacted_total "), NULL, 10), 7);
    tu_http_free(&m);
}

static bool match_any(json_t *ev, void *arg)
{
    return true;
}

/* Collects every event of a paged walk with the given page size. */
static json_t *walk_pages(const char *base, int page)
{
    json_t *all = json_array();
    char q[512], cursor[128] = "";
    for (int guard = 0; guard < 1000; guard++) {
        snprintf(q, sizeof(q), "%s&limit=%d%s%s", base, page, cursor[0] ? "&cursor=" : "", cursor);
        int status;
        json_t *r = tu_get_json(agent.port, q, &status);
        cr_assert(r && status == 200, "GET %s -> %d", q, status);
        json_t *events = json_object_get(r, "events");
        cr_assert(json_array_size(events) <= (size_t)page);
        json_array_extend(all, events);
        json_t *next = json_object_get(r, "next_cursor");
        if (json_is_null(next)) {
            json_decref(r);
            return all;
        }
        cr_assert(json_is_string(next));
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        json_decref(r);
    }
    cr_assert_fail("paging did not end");
    return NULL;
}

Test(e2e_agent, filters_limit_cursor_and_time_window)
{
    uint64_t before = tu_now_ns();
    pid_t kids[5];
    for (int i = 0; i < 5; i++)
        kids[i] = run_exit3("window");
    uint64_t after = tu_now_ns();
    int want[2] = {kids[4], 2};
    char q[256];
    snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d", kids[4]);
    json_t *last = wait_event(q, match_pid_type, want, 10000);
    cr_assert(last, "exit of the last child not seen");
    json_decref(last);

    /* type + pid: exactly one exec and one exit per child. */
    for (int i = 0; i < 5; i++) {
        snprintf(q, sizeof(q), "/api/events?pid=%d&type=exec,exit", kids[i]);
        json_t *r = tu_get_json(agent.port, q, NULL);
        cr_assert(r);
        cr_expect_eq(json_integer_value(json_object_get(r, "count")), 2, "pid %d", kids[i]);
        cr_expect_eq(json_integer_value(json_object_get(r, "total_count")), 2);
        json_decref(r);
    }

    /* command + time window: the 5 execs of sh, exits too, nothing outside the window. */
    snprintf(q, sizeof(q), "/api/events?command=sh&type=exit&since=%" PRIu64 "&until=%" PRIu64,
             before, after);
    json_t *r = tu_get_json(agent.port, q, NULL);
    cr_assert(r);
    json_t *events = json_object_get(r, "events");
    size_t i;
    json_t *ev;
    int mine = 0;
    uint64_t prev = UINT64_MAX;
    json_array_foreach(events, i, ev)
    {
        uint64_t ts = (uint64_t)tu_jint(ev, "timestamp");
        cr_expect(ts >= before && ts <= after, "event outside the window");
        cr_expect_leq(ts, prev, "events must be newest first");
        prev = ts;
        cr_expect_str_eq(tu_jstr(ev, "command"), "sh");
        for (int k = 0; k < 5; k++)
            mine += tu_jint(ev, "pid") == kids[k];
    }
    cr_expect_eq(mine, 5, "all 5 exits inside the window");
    json_decref(r);

    /* RFC 3339 bounds select the same window as epoch ns. */
    char since_s[64], until_s[64];
    time_t bs = (time_t)(before / 1000000000ull), as = (time_t)(after / 1000000000ull) + 1;
    strftime(since_s, sizeof(since_s), "%Y-%m-%dT%H:%M:%SZ", gmtime(&bs));
    strftime(until_s, sizeof(until_s), "%Y-%m-%dT%H:%M:%SZ", gmtime(&as));
    snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d&since=%s&until=%s", kids[2], since_s,
             until_s);
    r = tu_get_json(agent.port, q, NULL);
    cr_expect_eq(json_integer_value(json_object_get(r, "count")), 1, "%s", q);
    json_decref(r);

    /* Paging with limit=1 and limit=3 walks the same events as one big page. */
    snprintf(q, sizeof(q), "/api/events?type=exec,exit&command=sh&since=%" PRIu64, before);
    json_t *one = walk_pages(q, 1), *three = walk_pages(q, 3), *big = walk_pages(q, 10000);
    cr_expect_geq(json_array_size(big), 10);
    cr_expect_eq(json_array_size(one), json_array_size(big));
    cr_expect_eq(json_array_size(three), json_array_size(big));
    for (i = 0; i < json_array_size(big); i++) {
        cr_expect_str_eq(tu_jstr(json_array_get(one, i), "id"),
                         tu_jstr(json_array_get(big, i), "id"));
        cr_expect_str_eq(tu_jstr(json_array_get(three, i), "id"),
                         tu_jstr(json_array_get(big, i), "id"));
    }
    json_decref(one);
    json_decref(three);
    json_decref(big);

    /* limit caps the page; total_count counts every match. */
    snprintf(q, sizeof(q), "/api/events?type=exit&command=sh&since=%" PRIu64 "&limit=2", before);
    r = tu_get_json(agent.port, q, NULL);
    cr_expect_eq(json_array_size(json_object_get(r, "events")), 2);
    cr_expect_eq(json_integer_value(json_object_get(r, "count")), 2);
    cr_expect_geq(json_integer_value(json_object_get(r, "total_count")), 5);
    cr_expect(json_is_string(json_object_get(r, "next_cursor")));
    json_decref(r);
    (void)match_any;
}

Test(e2e_agent, sse_stream_delivers_new_events_live)
{
    int fd = sse_open("/api/events/stream?type=exit");

    char buf[65536];
    size_t len = 0;
    bool connected = false;
    uint64_t deadline = tu_mono_ms() + 10000;
    pid_t child = 0;
    char needle[64];
    while (tu_mono_ms() < deadline) {
        sse_poll(fd, buf, sizeof(buf), &len);
        if (!connected && strstr(buf, "\r\n\r\n")) {
            cr_assert(strstr(buf, " 200 "), "stream status: %.100s", buf);
            cr_assert(strcasestr(buf, "text/event-stream"), "content type: %.300s", buf);
            connected = true;
            child = run_exit3("sse"); /* happens after the subscription */
            snprintf(needle, sizeof(needle), "\"pid\":%d,", child);
        }
        if (child && strstr(buf, needle))
            break;
    }
    close(fd);
    cr_assert(child, "stream never answered");
    char *hit = strstr(buf, needle);
    cr_assert(hit, "exit of pid %d not streamed; got:\n%s", child, buf);
    /* The event sits on one "data: {json}" line. */
    json_t *ev = sse_event_at(buf, hit);
    cr_expect_str_eq(tu_jstr(ev, "type"), "exit");
    cr_expect_eq(tu_jint(ev, "exit_code"), 3);
    json_decref(ev);
}

struct bad_param {
    char query[96];
    char name[24];
};

Test(e2e_agent, bad_parameters_are_400_naming_the_parameter)
{
    static const struct bad_param cases[] = {
        {"type=bogus", "type"},
        {"type=", "type"},
        {"pid=abc", "pid"},
        {"pid=-1", "pid"},
        {"pid=99999999999", "pid"},
        {"limit=0", "limit"},
        {"limit=10001", "limit"},
        {"limit=ten", "limit"},
        {"since=yesterday", "since"},
        {"until=2026-13-45T00:00:00Z", "until"},
        {"cursor=garbage", "cursor"},
        {"frobnicate=1", "frobnicate"},
        {"since=2000&until=1000", "since"},
        {"status=ok", "status"},
        {"dest_port=0", "dest_port"},
        {"peer_pod=", "peer_pod"},
        {"workload=", "workload"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[2048];
        snprintf(path, sizeof(path), "/api/events?%.*s", (int)sizeof(cases[i].query),
                 cases[i].query);
        int status = 0;
        json_t *r = tu_get_json(agent.port, path, &status);
        cr_expect_eq(status, 400, "%s -> %d", path, status);
        const char *msg = r ? tu_jstr(r, "error") : NULL;
        cr_expect(msg && strstr(msg, cases[i].name), "%s: error %s lacks '%s'", path, msg,
                  cases[i].name);
        json_decref(r);
    }
    int status;
    json_t *r = tu_get_json(agent.port, "/api/events/stream?type=nope", &status);
    cr_expect_eq(status, 400);
    json_decref(r);
    r = tu_get_json(agent.port, "/api/nothing-here", &status);
    cr_expect_eq(status, 404);
    json_decref(r);
    /* Every route refuses what it does not take, the probes and the scrape too. */
    const char *routes[] = {"/health", "/ready", "/metrics", "/api/stats", "/api/programs"};
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char path[64], want[96];
        snprintf(path, sizeof(path), "%s?x=1", routes[i]);
        snprintf(want, sizeof(want), "'x' (%s takes no parameters)", routes[i]);
        r = tu_get_json(agent.port, path, &status);
        cr_expect_eq(status, 400, "%s -> %d", path, status);
        const char *msg = r ? tu_jstr(r, "error") : NULL;
        cr_expect(msg && strstr(msg, want), "%s: error %s", path, msg);
        json_decref(r);
    }
}

static void *spin(void *arg)
{
    for (volatile unsigned long n = 0;; n++)
        ;
    return arg;
}

/* Forks a child whose threads spin on every CPU until it calls _exit(9); returns its pid. */
static pid_t run_threads_exit9(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        pthread_t t;
        for (int i = 0; i < 8; i++)
            if (pthread_create(&t, NULL, spin, NULL) != 0)
                _exit(127);
        usleep(5000);
        _exit(9); /* exit_group(): the threads leave at once, on every CPU */
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 9, "status %d", status);
    return pid;
}

/* Threads leaving at once can each see the process's last thread gone: still one exit event. */
Test(e2e_agent, threads_leaving_at_once_make_one_exit)
{
    enum { N = 20 };
    pid_t kids[N];
    char q[128];

    for (int i = 0; i < N; i++)
        kids[i] = run_threads_exit9();
    int want_exit[2] = {kids[N - 1], 2};
    snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d", kids[N - 1]);
    json_t *ev = wait_event(q, match_pid_type, want_exit, 10000);
    cr_assert(ev, "no exit event for pid %d", kids[N - 1]);
    json_decref(ev);
    usleep(300000); /* a repeat of the last one would have come with it */
    for (int i = 0; i < N; i++) {
        snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d", kids[i]);
        json_t *r = tu_get_json(agent.port, q, NULL);
        cr_assert(r);
        json_t *evs = json_object_get(r, "events");
        cr_expect_eq(json_array_size(evs), 1, "pid %d: %s", kids[i], tu_jdump(evs));
        ev = json_array_get(evs, 0);
        cr_expect_eq(tu_jint(ev, "exit_code"), 9);
        cr_expect_eq(tu_jint(ev, "signal"), 0);
        json_decref(r);
    }
    json_t *st = tu_get_json(agent.port, "/api/stats", NULL);
    cr_assert(st);
    json_t *dup = tu_jpath(st, "records_skipped.duplicate_exit");
    cr_expect(json_is_integer(dup), "records_skipped: %s",
              tu_jdump(json_object_get(st, "records_skipped")));
    cr_log_info("duplicate exit records: %" PRId64,
                tu_jpath_int(st, "records_skipped.duplicate_exit"));
    json_decref(st);
}

Test(e2e_agent, stats_programs_health_metrics)
{
    int status;
    json_t *r = tu_get_json(agent.port, "/health", &status);
    cr_expect_eq(status, 200);
    json_decref(r);

    r = tu_get_json(agent.port, "/api/programs", &status);
    cr_assert_eq(status, 200);
    json_t *progs = json_object_get(r, "programs");
    cr_assert(json_is_array(progs) && json_array_size(progs) >= 5);
    size_t i;
    json_t *p;
    int attached = 0;
    json_array_foreach(progs, i, p)
    {
        cr_expect(tu_jstr(p, "name") && tu_jstr(p, "hook") && tu_jstr(p, "status"));
        cr_expect(!strstr(tu_jstr(p, "hook"), "kprobe") && !strstr(tu_jstr(p, "hook"), "fentry"),
                  "hook %s", tu_jstr(p, "hook"));
        attached += strcmp(tu_jstr(p, "status"), "attached") == 0;
        cr_expect(json_is_integer(json_object_get(p, "events")));
        cr_expect(json_is_integer(json_object_get(p, "drops")));
    }
    cr_expect_eq(attached, (int)json_array_size(progs), "every program attaches here");
    json_decref(r);

    run_exit3("stats");
    r = tu_get_json(agent.port, "/api/stats", &status);
    cr_assert_eq(status, 200);
    cr_expect_str_eq(tu_jstr(r, "node"), "e2e-node");
    cr_expect(json_is_integer(json_object_get(r, "kernel_drops")));
    cr_expect(json_is_number(json_object_get(r, "uptime_seconds")));
    cr_expect(json_is_object(json_object_get(r, "events_by_type")));
    cr_expect(json_is_array(json_object_get(r, "programs")));
    /* The string table's refusals (names left unknown) on both pages, as on the aggregator. */
    json_t *strings = json_object_get(r, "strings");
    cr_expect(tu_jint(strings, "held") > 0 && tu_jint(strings, "bytes") > 0);
    cr_expect(json_is_integer(json_object_get(strings, "refused")));
    json_decref(r);

    struct tu_http m;
    cr_assert_eq(tu_http_get(agent.port, "/metrics", NULL, &m), 0);
    cr_expect(strstr(m.body, "ebpf_agent_intern_refused_total 0"));
    cr_expect(strstr(m.body, "ebpf_agent_intern_bytes "));
    cr_expect_eq(m.status, 200);
    cr_expect(strstr(m.content_type, "text/plain"));
    cr_expect(strstr(m.body, "ebpf_agent_events_total{type=\"exec\"}"));
    cr_expect(strstr(m.body, "ebpf_agent_kernel_drops_total"));
    cr_expect(strstr(m.body, "ebpf_agent_history_evicted_total"));
    tu_http_free(&m);
}

Test(e2e_agent, sigterm_detaches_every_program)
{
    int status;
    json_t *r = tu_get_json(agent.port, "/api/programs", &status);
    cr_assert_eq(status, 200);
    uint32_t ids[16];
    size_t n = 0, i;
    json_t *p;
    json_array_foreach(json_object_get(r, "programs"), i, p)
    {
        if (n < 16 && json_is_integer(json_object_get(p, "id")))
            ids[n++] = (uint32_t)tu_jint(p, "id");
    }
    json_decref(r);
    cr_assert_geq(n, 5, "programs report their kernel ids");
    for (size_t k = 0; k < n; k++)
        cr_assert(tu_bpf_prog_loaded(ids[k]), "program %u not loaded while running", ids[k]);

    int st = tu_agent_stop(&agent);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "agent exit status %d", st);

    /* The kernel frees a program shortly after its last reference goes (RCU). */
    uint64_t deadline = tu_mono_ms() + 5000;
    for (size_t k = 0; k < n; k++) {
        while (tu_bpf_prog_loaded(ids[k]) && tu_mono_ms() < deadline)
            usleep(20000);
        cr_expect(!tu_bpf_prog_loaded(ids[k]), "program id %u still loaded after SIGTERM", ids[k]);
    }
}

/*
 * The stream's connection filters: one port first accepts, then refuses.
 * With status=failed&dest_port=P only the refused attempt may arrive, and
 * it must be the first event on the stream (the established one came first).
 */
Test(e2e_agent, sse_stream_filters_by_status_and_dest_port)
{
    int port = tu_free_port();
    char stream[96];
    snprintf(stream, sizeof(stream),
             "/api/events/stream?type=connection&status=failed&dest_port=%d", port);
    int fd = sse_open(stream);

    char buf[65536] = "";
    size_t len = 0;
    bool connected = false;
    char needle[48];
    snprintf(needle, sizeof(needle), "\"dest_port\":%d,", port);
    uint64_t deadline = tu_mono_ms() + 10000;
    while (tu_mono_ms() < deadline && !(strstr(buf, needle) && strchr(strstr(buf, needle), '\n'))) {
        sse_poll(fd, buf, sizeof(buf), &len);
        if (!connected && strstr(buf, "\r\n\r\n")) {
            cr_assert(strstr(buf, " 200 "), "stream status: %.100s", buf);
            connected = true;
            /* Established, then refused, both to the same port. */
            struct sockaddr_in to = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int lfd = socket(AF_INET, SOCK_STREAM, 0);
            int one = 1;
            setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            cr_assert_eq(bind(lfd, (struct sockaddr *)&to, sizeof(to)), 0);
            cr_assert_eq(listen(lfd, 4), 0);
            int c = socket(AF_INET, SOCK_STREAM, 0);
            cr_assert_eq(connect(c, (struct sockaddr *)&to, sizeof(to)), 0);
            close(c);
            close(lfd);
            c = socket(AF_INET, SOCK_STREAM, 0);
            cr_assert_neq(connect(c, (struct sockaddr *)&to, sizeof(to)), 0);
            cr_assert_eq(errno, ECONNREFUSED);
            close(c);
        }
    }
    close(fd);
    cr_assert(connected, "stream never answered");
    char *hit = strstr(buf, needle);
    cr_assert(hit, "refused connect to port %d not streamed; got:\n%s", port, buf);
    json_t *ev = sse_event_at(buf, hit);
    cr_expect_str_eq(tu_jstr(ev, "type"), "connection");
    cr_expect_str_eq(tu_jstr(ev, "status"), "failed");
    cr_expect_str_eq(tu_jstr(ev, "error"), "refused");
    cr_expect_eq(tu_jint(ev, "dest_port"), port);
    json_decref(ev);

    int status = 0;
    json_t *r = tu_get_json(agent.port, "/api/events/stream?status=ok", &status);
    cr_expect_eq(status, 400);
    cr_expect(r && strstr(tu_jstr(r, "error"), "'status'"));
    json_decref(r);
}

/* LISTEN_ADDR with port 0: the kernel picks the port, and the log says which one it picked. */
Test(e2e_agent, listen_on_port_zero_logs_the_port_bound)
{
    char log[64];
    snprintf(log, sizeof(log), "/tmp/e2e-agent-port0-%d.log", getpid());
    char *argv[] = {
        "bin/ebpf-agent", "--listen-addr", "127.0.0.1:0", "--nats-url", "nats://127.0.0.1:1",
        "--event-types",  "exit",          "--node-name", "port-zero",  NULL};
    pid_t pid = tu_spawn(argv, NULL, log);
    const char *tag = "API on 127.0.0.1:";
    int port = 0;
    uint64_t deadline = tu_mono_ms() + 20000;
    while (port == 0 && tu_mono_ms() < deadline) {
        char *text = tu_read_file(log);
        const char *at = text ? strstr(text, tag) : NULL;
        if (at)
            port = atoi(at + strlen(tag));
        free(text);
        if (port == 0)
            usleep(50000);
    }
    cr_assert_gt(port, 0, "no \"%s<port>\" in the log", tag);
    struct tu_http r;
    cr_assert_eq(tu_http_get(port, "/api/stats", NULL, &r), 0, "nothing on port %d", port);
    cr_expect_eq(r.status, 200);
    tu_http_free(&r);
    cr_expect_eq(tu_stop(pid, 10000), 0);
    unlink(log);
}

/* ---- packet drops by reason, with the rate limit on ---- */

static struct tu_agent limited;

static void stop_limited(void)
{
    tu_agent_stop(&limited);
}

/* A counter of /proc/self/net/snmp's "Udp:" lines (this network namespace's). */
static long long udp_snmp(const char *name)
{
    char *s = tu_read_file("/proc/self/net/snmp");
    cr_assert_not_null(s);
    char *head = strstr(s, "\nUdp: "), *vals = head ? strstr(head + 1, "\nUdp: ") : NULL;
    cr_assert(head && vals, "no Udp lines: %s", s);
    long long v = -1;
    char *hs, *vs, *h = strtok_r(head + 6, " \n", &hs), *x = strtok_r(vals + 6, " \n", &vs);
    for (; h && x && strcmp(h, "Udp:") != 0;
         h = strtok_r(NULL, " \n", &hs), x = strtok_r(NULL, " \n", &vs))
        if (strcmp(h, name) == 0) {
            v = atoll(x);
            break;
        }
    free(s);
    cr_assert_geq(v, 0, "no Udp counter %s", name);
    return v;
}

/* ebpf_agent_packet_drops_total{reason="<reason>"} on port, 0 when absent. */
static long long drops_metric(int port, const char *reason)
{
    char key[96];
    struct tu_http m;
    long long v = 0;
    snprintf(key, sizeof(key), "ebpf_agent_packet_drops_total{reason=\"%s\"} ", reason);
    cr_assert_eq(tu_http_get(port, "/metrics", NULL, &m), 0);
    const char *p = strstr(m.body, key);
    if (p)
        v = atoll(p + strlen(key));
    tu_http_free(&m);
    return v;
}

/*
 * Drops the rate limit suppressed count under their own reason: a burst of NO_SOCKET
 * drops, then one of SOCKET_RCVBUFF, on one CPU with DROP_RATE_LIMIT=1, are each counted
 * in full under theirs, as this namespace's own counters (UdpNoPorts, UdpRcvbufErrors) say,
 * and not under the reason of whichever drop is let through next.
 */
Test(e2e_agent_drop_limit, suppressed_drops_count_under_their_own_reason, .fini = stop_limited,
     .timeout = 120)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs");
    /* A network namespace of the test's own: its UDP counters are the ground truth. */
    cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare: %s", strerror(errno));
    cr_assert_eq(tu_run("ip link set lo up", NULL), 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0); /* one CPU: one rate bucket */
    const char *extra[] = {"--drop-rate-limit", "1", "--event-types", "packet_drop", NULL};
    tu_agent_start(&limited, "drop-node", extra);

    long long noports = udp_snmp("NoPorts"), rcvbuf = udp_snmp("RcvbufErrors");
    int port = tu_free_port(), s = socket(AF_INET, SOCK_DGRAM, 0),
        r = socket(AF_INET, SOCK_DGRAM, 0);
    int small = 1;
    cr_assert(s >= 0 && r >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 200; i++)
        cr_assert_eq(sendto(s, "x", 1, 0, (struct sockaddr *)&sa, sizeof(sa)), 1);
    /* A receiver with no room: the datagrams past its first are SOCKET_RCVBUFF drops. */
    cr_assert_eq(setsockopt(r, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    cr_assert_eq(bind(r, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char big[1400] = {0};
    for (int i = 0; i < 200; i++)
        cr_assert_eq(sendto(s, big, sizeof(big), 0, (struct sockaddr *)&sa, sizeof(sa)),
                     (ssize_t)sizeof(big));
    noports = udp_snmp("NoPorts") - noports;
    rcvbuf = udp_snmp("RcvbufErrors") - rcvbuf;
    cr_assert_eq(noports, 200);
    cr_assert_gt(rcvbuf, 100, "the receiver took %lld of 200", 200 - rcvbuf);

    /* Others' drops may add to either reason: at least ours, soon. */
    long long got_np = 0, got_rb = 0;
    for (uint64_t end = tu_mono_ms() + 10000; tu_mono_ms() < end; usleep(50000)) {
        got_np = drops_metric(limited.port, "NO_SOCKET");
        got_rb = drops_metric(limited.port, "SOCKET_RCVBUFF");
        if (got_np >= noports && got_rb >= rcvbuf)
            break;
    }
    cr_assert_geq(got_np, noports, "NO_SOCKET: %lld counted of %lld", got_np, noports);
    cr_assert_geq(got_rb, rcvbuf, "SOCKET_RCVBUFF: %lld counted of %lld", got_rb, rcvbuf);
    close(s);
    close(r);
}

/* How many data lines of buf hold the exit of pid. */
static int sse_count_pid(const char *buf, pid_t pid)
{
    char needle[32];
    int n = 0;
    snprintf(needle, sizeof(needle), "\"pid\":%d,", pid);
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* The last "id: " field of buf, into out. */
static void sse_last_id(const char *buf, char *out, size_t outlen)
{
    out[0] = '\0';
    for (const char *p = buf; (p = strstr(p, "\nid: ")) != NULL; p++)
        snprintf(out, outlen, "%.33s", p + 5);
}

/*
 * A client sees one exit, goes away; two happen; it comes back with its last id: it gets
 * those two and a live one (made while its replay is asked), each once, and not the first.
 */
Test(e2e_agent, sse_stream_resumed_with_last_event_id_gets_what_it_missed_once)
{
    int fd = sse_open("/api/events/stream?type=exit&command=sh");
    char buf[65536];
    size_t len = 0;
    pid_t seen = 0;
    for (uint64_t dl = tu_mono_ms() + 10000; tu_mono_ms() < dl;) {
        sse_poll(fd, buf, sizeof(buf), &len);
        if (!seen && strstr(buf, ": connected"))
            seen = run_exit3("resume-seen");
        if (seen && sse_count_pid(buf, seen))
            break;
    }
    sse_poll(fd, buf, sizeof(buf), &len); /* the rest of its frame */
    close(fd);
    cr_assert(seen && sse_count_pid(buf, seen) == 1, "exit of %d not streamed:\n%s", seen, buf);
    char last[40], hdr[64];
    sse_last_id(buf, last, sizeof(last));
    cr_assert(last[0], "no id: field:\n%s", buf);

    pid_t missed1 = run_exit3("resume-missed"), missed2 = run_exit3("resume-missed");
    char q[96];
    int want[2] = {missed2, 2};
    snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d", missed2);
    json_decref(wait_event(q, match_pid_type, want, 10000));

    snprintf(hdr, sizeof(hdr), "Last-Event-ID: %s", last);
    fd = sse_open_hdr("/api/events/stream?type=exit&command=sh", hdr);
    len = 0;
    buf[0] = '\0';
    pid_t live = run_exit3("resume-live");
    for (uint64_t dl = tu_mono_ms() + 3000; tu_mono_ms() < dl;)
        sse_poll(fd, buf, sizeof(buf), &len);
    close(fd);
    cr_expect_eq(sse_count_pid(buf, seen), 0, "seen before, sent again:\n%s", buf);
    cr_expect_eq(sse_count_pid(buf, missed1), 1, "missed exit %d:\n%s", missed1, buf);
    cr_expect_eq(sse_count_pid(buf, missed2), 1, "missed exit %d:\n%s", missed2, buf);
    cr_expect_eq(sse_count_pid(buf, live), 1, "live exit %d:\n%s", live, buf);
    snprintf(q, sizeof(q), "\"pid\":%d,", missed1);
    const char *a = strstr(buf, q);
    snprintf(q, sizeof(q), "\"pid\":%d,", live);
    const char *b = strstr(buf, q);
    cr_expect(a && b && a < b, "the missed ones come before the live one:\n%s", buf);
    cr_expect_null(strstr(buf, ": missing"), "nothing is missing:\n%s", buf);
}

/* Test helpers; see testutil.h. */
#include "testutil.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

uint64_t tu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t tu_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000;
}

/* A loopback port free for TCP, or -1. */
static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* Whether port is free for UDP on loopback too (a DNS server binds both). */
static bool udp_port_free(int port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/*
 * Whether this process handed out port lately: a port is free until the
 * server it was meant for binds it, and the kernel may offer it again in
 * between (two replicas started one after the other were given the same).
 */
static bool port_given_lately(int port)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int given[64];
    static size_t next;
    bool seen = false;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < sizeof(given) / sizeof(given[0]) && !seen; i++)
        seen = given[i] == port;
    if (!seen)
        given[next++ % (sizeof(given) / sizeof(given[0]))] = port;
    pthread_mutex_unlock(&lock);
    return seen;
}

int tu_free_port(void)
{
    /* Ephemeral UDP ports of busy clients on the machine share the range: retry past them. */
    for (int tries = 0; tries < 64; tries++) {
        int port = free_tcp_port();
        if (port < 0)
            return port;
        if (udp_port_free(port) && !port_given_lately(port))
            return port;
    }
    return -1;
}

/* The build's bin directory (bin-asan for make SANITIZE=1), or $EBPF_MONITOR_BIN_DIR. */
#ifndef TU_BIN_DIR
#define TU_BIN_DIR "bin"
#endif

const char *tu_repo_path(const char *rel)
{
    /* Tests run from the repository root (make test) or from build/tests. */
    static __thread char path[PATH_MAX];
    static __thread char binrel[PATH_MAX];
    const char *prefixes[] = {"", "../../", NULL};
    if (strncmp(rel, "bin/", 4) == 0) {
        const char *dir = getenv("EBPF_MONITOR_BIN_DIR");
        snprintf(binrel, sizeof(binrel), "%s/%s", dir && *dir ? dir : TU_BIN_DIR, rel + 4);
        rel = binrel;
        if (rel[0] == '/')
            return rel;
    }
    for (int i = 0; prefixes[i]; i++) {
        snprintf(path, sizeof(path), "%s%s", prefixes[i], rel);
        if (access(path, F_OK) == 0)
            return path;
    }
    snprintf(path, sizeof(path), "%s", rel);
    return path;
}

pid_t tu_spawn(char *const argv[], char *const env[], const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* A failed assertion ends the test process: take its servers with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (log_path) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    }
    for (size_t i = 0; env && env[i]; i++)
        putenv(env[i]);
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static int wait_timeout(pid_t pid, int timeout_ms, int *status)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return 0;
        if (r < 0)
            return -1;
        if (tu_mono_ms() > deadline)
            return -1;
        usleep(5000);
    }
}

int tu_stop(pid_t pid, int timeout_ms)
{
    int status = -1;
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    if (wait_timeout(pid, timeout_ms, &status) < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    return status;
}

int tu_wait_exit(pid_t pid, int timeout_ms)
{
    int status;
    if (wait_timeout(pid, timeout_ms, &status) < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Decodes a chunked body in place; returns the new length. */
static size_t dechunk(char *body, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        char *end;
        unsigned long n = strtoul(body + in, &end, 16);
        char *crlf = strstr(body + in, "\r\n");
        if (!crlf || n == 0)
            break;
        in = (size_t)(crlf - body) + 2;
        if (in + n > len)
            n = len - in;
        memmove(body + out, body + in, n);
        out += n;
        in += n + 2;
        (void)end;
    }
    body[out] = '\0';
    return out;
}

int tu_http_get(int port, const char *path, const char *header, struct tu_http *out)
{
    memset(out, 0, sizeof(*out));
    int fd = connect_local(port);
    if (fd < 0)
        return -1;
    char req[4096];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%sConnection: close\r\n\r\n", path,
                     port, header ? header : "", header ? "\r\n" : "");
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *resp = malloc(cap);
    for (;;) {
        if (len + 4096 > cap)
            resp = realloc(resp, cap *= 2);
        ssize_t r = read(fd, resp + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    resp[len] = '\0';
    char *hend = strstr(resp, "\r\n\r\n");
    if (!hend || sscanf(resp, "HTTP/1.%*d %d", &out->status) != 1) {
        free(resp);
        return -1;
    }
    *hend = '\0';
    bool chunked = false;
    for (char *line = strstr(resp, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-type:", 13) == 0)
            sscanf(line + 2 + 13, " %127[^\r\n]", out->content_type);
        if (strncasecmp(line + 2, "transfer-encoding: chunked", 26) == 0)
            chunked = true;
    }
    char *body = hend + 4;
    out->body_len = len - (size_t)(body - resp);
    out->body = malloc(out->body_len + 1);
    memcpy(out->body, body, out->body_len);
    out->body[out->body_len] = '\0';
    if (chunked)
        out->body_len = dechunk(out->body, out->body_len);
    free(resp);
    return 0;
}

void tu_http_free(struct tu_http *r)
{
    free(r->body);
    r->body = NULL;
}

json_t *tu_get_json(int port, const char *path, int *status)
{
    struct tu_http r;
    if (tu_http_get(port, path, NULL, &r) < 0) {
        cr_log_error("GET %s: no response", path);
        return NULL;
    }
    if (status)
        *status = r.status;
    json_error_t je;
    json_t *j = json_loads(r.body, 0, &je);
    if (!j)
        cr_log_error("GET %s: body is not JSON (%s): %.200s", path, je.text, r.body);
    tu_http_free(&r);
    return j;
}

bool tu_wait_http(int port, const char *path, int want_status, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    while (tu_mono_ms() < deadline) {
        struct tu_http r;
        if (tu_http_get(port, path, NULL, &r) == 0) {
            int s = r.status;
            tu_http_free(&r);
            if (s == want_status)
                return true;
        }
        usleep(20000);
    }
    return false;
}

char *tu_read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    size_t r;
    while ((r = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len < 1024)
            s = realloc(s, cap *= 2);
    }
    s[len] = '\0';
    fclose(f);
    return s;
}

void tu_dump_file(const char *path, size_t max_bytes)
{
    char *s = tu_read_file(path);
    size_t len = s ? strlen(s) : 0;
    const char *from = s && max_bytes && len > max_bytes ? s + len - max_bytes : s;
    fprintf(stderr, "---- %s\n%s\n", path, from ? from : "(none)");
    free(s);
}

bool tu_bpf_prog_loaded(uint32_t id)
{
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

bool tu_wait_port(int port, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        int fd = connect_local(port);
        if (fd >= 0) {
            close(fd);
            return true;
        }
        usleep(10000);
    } while (tu_mono_ms() < deadline);
    return false;
}

pid_t tu_nats_start(int port, const char *const extra[], const char *log_path)
{
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    const char *argv[32] = {"/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", portstr};
    size_t n = 5;
    for (size_t i = 0; extra && extra[i] && n + 1 < sizeof(argv) / sizeof(argv[0]); i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    if (access(argv[0], X_OK) != 0)
        argv[0] = "/usr/bin/nats-server";
    pid_t pid = tu_spawn((char *const *)argv, NULL, log_path);
    if (pid <= 0)
        return -1;
    /* Wait for the port, but give up early if the server exited (bad flag, port taken). */
    uint64_t deadline = tu_mono_ms() + 10000;
    while (tu_mono_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return -1;
        if (tu_wait_port(port, 50))
            return pid;
    }
    tu_stop(pid, 2000);
    return -1;
}

json_t *tu_get_json_hdr(int port, const char *path, const char *header, int *status)
{
    struct tu_http r;
    if (tu_http_get(port, path, header, &r) < 0)
        return NULL;
    if (status)
        *status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    tu_http_free(&r);
    return j;
}

int tu_udp_socket(int *port, int *tcp_fd)
{
    for (int tries = 0; tries < 100; tries++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        cr_assert(fd >= 0, "socket: %s", strerror(errno));
        cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
        cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
        /* A TCP connection may hold this port number already: then another one. */
        int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(t >= 0, "socket: %s", strerror(errno));
        if (bind(t, (struct sockaddr *)&a, sizeof(a)) == 0) {
            *port = ntohs(a.sin_port);
            *tcp_fd = t;
            return fd;
        }
        close(t);
        close(fd);
    }
    cr_assert_fail("no port free for both UDP and TCP");
    return -1;
}

void tu_marker_make(const char *dir, const char *name, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", dir, name);
    unlink(path);
    cr_assert_eq(symlink("/bin/true", path), 0, "symlink %s: %s", path, strerror(errno));
}

pid_t tu_marker_run(const char *path, const char *name)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl(path, name, (char *)NULL);
        _exit(127);
    }
    cr_assert(pid > 0);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "marker %s did not run", path);
    return pid;
}

void tu_tcp_roundtrip(void)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert_eq(bind(l, (struct sockaddr *)&sa, len), 0);
    cr_assert_eq(listen(l, 4), 0);
    cr_assert_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&sa, len), 0);
    int a = accept(l, NULL, NULL);
    cr_assert(a >= 0);
    close(a);
    close(c);
    close(l);
}

int tu_run(const char *cmd, char **out)
{
    size_t cmdlen = strlen(cmd) + 16;
    char *full = malloc(cmdlen);
    cr_assert_not_null(full);
    snprintf(full, cmdlen, "( %s ) 2>&1", cmd);
    FILE *p = popen(full, "r");
    free(full);
    cr_assert_not_null(p, "cannot run: %s", cmd);
    size_t cap = 1 << 14, len = 0, n;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* tu_spawn, then waits for /ready on port; fails the test with the program's log otherwise. */
static pid_t spawn_ready(char *const argv[], char *const env[], const char *log_path, int port)
{
    pid_t pid = tu_spawn(argv, env, log_path);
    if (!tu_wait_http(port, "/ready", 200, 30000)) {
        char *text = tu_read_file(log_path);
        cr_assert_fail("%s not ready; log:\n%s", argv[0], text ? text : "(none)");
    }
    return pid;
}

static pid_t start_program(const char *bin, int port, int nats_port, const char *const extra_env[],
                           const char *log_dir)
{
    char listen[64], nats[64], log_path[PATH_MAX];
    snprintf(log_path, sizeof(log_path), "%s/%s.log", log_dir, strrchr(bin, '/') + 1);
    snprintf(listen, sizeof(listen), "LISTEN_ADDR=127.0.0.1:%d", port);
    snprintf(nats, sizeof(nats), "NATS_URL=nats://127.0.0.1:%d", nats_port);
    char *argv[] = {(char *)tu_repo_path(bin), NULL};
    char *env[16] = {listen, nats, "DEPLOYMENT_MODE=vm", "FLUSH_INTERVAL=100ms"};
    size_t n = 4;
    for (size_t i = 0; extra_env && extra_env[i]; i++) {
        cr_assert(n < sizeof(env) / sizeof(env[0]) - 1, "too many environment entries");
        env[n++] = (char *)extra_env[i];
    }
    return spawn_ready(argv, env, log_path, port);
}

void tu_monitor_start(struct tu_monitor *m, const char *aggregator_env, const char *log_dir)
{
    tu_monitor_start_env(m, NULL, aggregator_env, log_dir);
}

void tu_monitor_start_env(struct tu_monitor *m, const char *const agent_env[],
                          const char *aggregator_env, const char *log_dir)
{
    char log[PATH_MAX];
    const char *const agg_env[] = {aggregator_env, NULL};
    memset(m, 0, sizeof(*m));
    snprintf(log, sizeof(log), "%s/nats.log", log_dir);
    m->nats_port = tu_free_port();
    m->nats = tu_nats_start(m->nats_port, NULL, log);
    cr_assert_gt(m->nats, 0, "nats-server did not start: %s", log);
    m->agent_port = tu_free_port();
    m->agent = start_program("bin/ebpf-agent", m->agent_port, m->nats_port, agent_env, log_dir);
    m->aggregator_port = tu_free_port();
    m->aggregator =
        start_program("bin/ebpf-aggregator", m->aggregator_port, m->nats_port, agg_env, log_dir);
}

void tu_monitor_stop(struct tu_monitor *m)
{
    if (m->aggregator > 0)
        tu_stop(m->aggregator, 10000);
    if (m->agent > 0)
        tu_stop(m->agent, 10000);
    if (m->nats > 0)
        tu_stop(m->nats, 2000);
    memset(m, 0, sizeof(*m));
}

int tu_netns_socket(const char *name, int domain, int type)
{
    char path[128];
    snprintf(path, sizeof(path), "/run/netns/%s", name);
    int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(self >= 0 && ns >= 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(setns(ns, CLONE_NEWNET), 0, "setns %s: %s", path, strerror(errno));
    int fd = socket(domain, type, 0);
    int saved = errno;
    cr_assert_eq(setns(self, CLONE_NEWNET), 0, "setns back: %s", strerror(errno));
    close(ns);
    close(self);
    cr_assert(fd >= 0, "socket in %s: %s", name, strerror(saved));
    return fd;
}

void tu_agent_start(struct tu_agent *a, const char *node, const char *const extra[])
{
    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs");
    a->port = tu_free_port();
    snprintf(a->log, sizeof(a->log), "/tmp/ebpf-agent-%s-%d.log", node, getpid());
    unlink(a->log);
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", a->port);
    const char *argv[32] = {tu_repo_path("bin/ebpf-agent"), "--listen-addr", listen, "--node-name",
                            node};
    size_t n = 5;
    bool nats = false;
    for (size_t i = 0; extra && extra[i]; i++) {
        cr_assert(n < sizeof(argv) / sizeof(argv[0]) - 3, "too many agent arguments");
        nats |= strcmp(extra[i], "--nats-url") == 0;
        argv[n++] = extra[i];
    }
    /* Never the default (127.0.0.1:4222): a NATS server the machine runs is not the test's. */
    if (!nats) {
        argv[n++] = "--nats-url";
        argv[n++] = "nats://127.0.0.1:1";
    }
    a->pid = spawn_ready((char *const *)argv, NULL, a->log, a->port);
}

int tu_agent_stop(struct tu_agent *a)
{
    int st = 0;
    if (a->pid > 0)
        st = tu_stop(a->pid, 10000);
    a->pid = 0;
    return st;
}

json_t *tu_fetch_json(int port, const char *path)
{
    int status = 0;
    json_t *r = tu_get_json(port, path, &status);
    if (status != 200) {
        json_decref(r);
        return NULL;
    }
    return r;
}

json_t *tu_poll_event(tu_event_fetch fetch, int port, const char *path, tu_event_pred pred,
                      void *arg, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        json_t *r = fetch(port, path);
        size_t i;
        json_t *ev;
        json_array_foreach(json_object_get(r, "events"), i, ev)
        {
            if (pred(ev, arg)) {
                json_incref(ev);
                json_decref(r);
                return ev;
            }
        }
        json_decref(r);
        usleep(50000);
    } while (tu_mono_ms() < deadline);
    return NULL;
}

json_t *tu_wait_event(int port, const char *path, tu_event_pred pred, void *arg, int timeout_ms)
{
    return tu_poll_event(tu_fetch_json, port, path, pred, arg, timeout_ms);
}

const char *tu_jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

json_int_t tu_jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    cr_assert(json_is_integer(v), "field %s missing or not an integer", k);
    return json_integer_value(v);
}

json_t *tu_jpath(json_t *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *save = NULL;
    for (char *k = strtok_r(buf, ".", &save); k && o; k = strtok_r(NULL, ".", &save))
        o = json_object_get(o, k);
    return o;
}

int64_t tu_jpath_int(json_t *o, const char *path)
{
    json_t *v = tu_jpath(o, path);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

const char *tu_jpath_str(json_t *o, const char *path)
{
    json_t *v = tu_jpath(o, path);
    return json_is_string(v) ? json_string_value(v) : "";
}

const char *tu_jdump(json_t *j)
{
    static __thread char out[4096];
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    snprintf(out, sizeof(out), "%s", s ? s : "(null)");
    free(s);
    return out;
}

/*
 * End to end, as root: CAPTURE_CGROUP. Two cgroups made by the test under the
 * cgroup v2 root (detected: /sys/fs/cgroup, or /sys/fs/cgroup/unified on
 * hybrid hosts), one process moved into each before it does anything; each
 * process accepts a TCP connection it makes to itself, closes both ends and
 * execs a marker program. The real bin/ebpf-agent, publishing to a real
 * nats-server and told to capture only cgroup A, must report A's exec, exit,
 * connection, accept and both closes over its HTTP API, and nothing of B's.
 * A bad CAPTURE_CGROUP stops the agent with exit status 2 and a message naming
 * the key. Needs root (eBPF, cgroups); skipped otherwise.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "fixtures/k8s/kubepods.h"
#include "testutil.h"

#define WAIT_MS 10000

static char cg_root[256], cg_a[64], cg_b[64], tmpdir[64];
static struct tu_agent agent;
static pid_t nats = -1;

/* What one process in a cgroup did: its pid and the ports of its connection. */
struct run {
    pid_t pid;
    int listen_port, client_port;
    char marker[128]; /* the program it exec'd: its comm is the file name */
};

static void cg_path(char *buf, size_t len, const char *rel, const char *file)
{
    snprintf(buf, len, "%s/%s%s%s", cg_root, rel, file ? "/" : "", file ? file : "");
}

/* A reaped process can still pin its cgroup for a moment (EBUSY): retry briefly. */
static void cg_remove(const char *rel)
{
    char dir[512];

    cg_path(dir, sizeof(dir), rel, NULL);
    for (uint64_t end = tu_mono_ms() + 2000; rmdir(dir) != 0 && errno == EBUSY;) {
        if (tu_mono_ms() > end)
            break;
        usleep(5000);
    }
}

static void teardown(void)
{
    tu_agent_stop(&agent);
    if (nats > 0)
        tu_stop(nats, 5000);
    nats = -1;
    if (cg_a[0])
        cg_remove(cg_a);
    if (cg_b[0])
        cg_remove(cg_b);
    if (tmpdir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        tu_run(cmd, NULL);
    }
}

static void setup(void)
{
    char dir[512];

    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs and create cgroups");
    cr_assert_eq(cgroup_v2_root(cg_root, sizeof(cg_root)), 0, "no cgroup v2 mount");
    snprintf(cg_a, sizeof(cg_a), "ebpfmon-capture-%d-a", getpid());
    snprintf(cg_b, sizeof(cg_b), "ebpfmon-capture-%d-b", getpid());
    cg_path(dir, sizeof(dir), cg_a, NULL);
    cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
    cg_path(dir, sizeof(dir), cg_b, NULL);
    cr_assert_eq(mkdir(dir, 0755), 0, "mkdir %s: %s", dir, strerror(errno));
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ebpfmon-capture-%d", getpid());
    cr_assert(mkdir(tmpdir, 0700) == 0 || errno == EEXIST);
}

static void start_monitor(void)
{
    char url[64], log[128];

    setup();
    int port = tu_free_port();
    snprintf(log, sizeof(log), "%s/nats.log", tmpdir);
    nats = tu_nats_start(port, NULL, log);
    cr_assert_gt(nats, 0, "nats-server did not start (see %s)", log);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    const char *const args[] = {"--nats-url", url, "--capture-cgroup", cg_a, NULL};
    tu_agent_start(&agent, "capture-node", args);
}

TestSuite(capture_cgroup, .init = start_monitor, .fini = teardown, .timeout = 60);
TestSuite(capture_cgroup_config, .init = setup, .fini = teardown, .timeout = 30);

/* Child side of run_in_cgroup: a connection to itself, both ends closed, then the marker. */
static void child_work(int report, const char *marker)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int ports[2];
    int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), a;

    if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&sa, &len))
        _exit(10);
    ports[0] = ntohs(sa.sin_port);
    if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) || (a = accept(l, NULL, NULL)) < 0)
        _exit(11);
    len = sizeof(sa);
    if (getsockname(c, (struct sockaddr *)&sa, &len))
        _exit(12);
    ports[1] = ntohs(sa.sin_port);
    if (write(a, "x", 1) != 1)
        _exit(13);
    close(a);
    close(c);
    close(l);
    if (write(report, ports, sizeof(ports)) != (ssize_t)sizeof(ports))
        _exit(14);
    close(report);
    char *argv[] = {(char *)marker, NULL};
    execv(marker, argv);
    _exit(127);
}

/*
 * Forks a process, moves it into cgroup rel before it does anything, and lets
 * it run child_work; waits for it to exit 0.
 */
static void run_in_cgroup(const char *rel, const char *name, struct run *r)
{
    int go[2], report[2], ports[2], status = 0;
    char procs[512];
    char c;

    snprintf(r->marker, sizeof(r->marker), "%s/%s", tmpdir, name);
    unlink(r->marker);
    cr_assert_eq(symlink("/bin/true", r->marker), 0, "symlink: %s", strerror(errno));
    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    r->pid = fork();
    cr_assert_geq(r->pid, 0);
    if (r->pid == 0) {
        close(go[1]);
        close(report[0]);
        if (read(go[0], &c, 1) != 0) /* EOF once the parent has moved us */
            _exit(120);
        child_work(report[1], r->marker);
    }
    close(go[0]);
    close(report[1]);
    cg_path(procs, sizeof(procs), rel, "cgroup.procs");
    FILE *f = fopen(procs, "w");
    cr_assert_not_null(f, "open %s: %s", procs, strerror(errno));
    fprintf(f, "%d\n", (int)r->pid);
    cr_assert_eq(fclose(f), 0, "moving %d into %s: %s", (int)r->pid, rel, strerror(errno));
    close(go[1]);
    cr_assert_eq(read(report[0], ports, sizeof(ports)), (ssize_t)sizeof(ports),
                 "the child in %s reported no ports", rel);
    close(report[0]);
    r->listen_port = ports[0];
    r->client_port = ports[1];
    cr_assert_eq(waitpid(r->pid, &status, 0), r->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child in %s: status %#x", rel,
              status);
}

struct want {
    const char *type;
    const char *role; /* close only */
    pid_t pid;
};

static bool match_pid_type(json_t *ev, void *arg)
{
    struct want *w = arg;
    const char *type = tu_jstr(ev, "type"), *role = tu_jstr(ev, "role");

    return type && strcmp(type, w->type) == 0 &&
           json_integer_value(json_object_get(ev, "pid")) == w->pid &&
           (!w->role || (role && strcmp(role, w->role) == 0));
}

static json_t *wait_for(const char *type, const char *role, pid_t pid)
{
    char path[128];
    struct want w = {type, role, pid};

    snprintf(path, sizeof(path), "/api/events?pid=%d&limit=1000", (int)pid);
    json_t *ev = tu_wait_event(agent.port, path, match_pid_type, &w, WAIT_MS);
    cr_assert_not_null(ev, "no %s%s%s event of pid %d in cgroup A (agent log: %s)", type,
                       role ? " " : "", role ? role : "", (int)pid, agent.log);
    return ev;
}

static bool belongs_to(json_t *ev, const struct run *r)
{
    json_int_t pid = json_integer_value(json_object_get(ev, "pid"));
    json_int_t sp = json_integer_value(json_object_get(ev, "source_port"));
    json_int_t dp = json_integer_value(json_object_get(ev, "dest_port"));

    return pid == r->pid || sp == r->listen_port || dp == r->listen_port || sp == r->client_port ||
           dp == r->client_port;
}

/*
 * Counts the events the agent holds that belong to r (by pid, or by one of
 * its ports), and those that belong to neither r nor other; the first of each
 * kind is dumped.
 */
static void count_events(const struct run *r, const struct run *other, size_t *of_r,
                         size_t *neither, char **dump_r, char **dump_neither)
{
    json_t *all = tu_fetch_json(agent.port, "/api/events?limit=10000");
    json_t *evs = json_object_get(all, "events"), *ev;
    size_t i;

    cr_assert(json_is_array(evs), "/api/events answered no events array");
    *of_r = *neither = 0;
    *dump_r = *dump_neither = NULL;
    json_array_foreach(evs, i, ev)
    {
        if (belongs_to(ev, r)) {
            if (!*dump_r)
                *dump_r = json_dumps(ev, JSON_COMPACT);
            (*of_r)++;
        } else if (!belongs_to(ev, other)) {
            if (!*dump_neither)
                *dump_neither = json_dumps(ev, JSON_COMPACT);
            (*neither)++;
        }
    }
    json_decref(all);
}

Test(capture_cgroup, only_the_subtree_is_captured)
{
    struct run a, b;

    /* B first: once A's last event has been read, everything before it has been too. */
    run_in_cgroup(cg_b, "cg-b-marker", &b);
    run_in_cgroup(cg_a, "cg-a-marker", &a);

    json_t *ev = wait_for("exec", NULL, a.pid);
    cr_expect_str_eq(tu_jstr(ev, "command"), "cg-a-marker");
    json_decref(ev);
    ev = wait_for("connection", NULL, a.pid);
    cr_expect_eq(tu_jint(ev, "dest_port"), a.listen_port);
    cr_expect_eq(tu_jint(ev, "source_port"), a.client_port);
    cr_expect_str_eq(tu_jstr(ev, "status"), "established");
    json_decref(ev);
    ev = wait_for("accept", NULL, a.pid);
    cr_expect_eq(tu_jint(ev, "dest_port"), a.listen_port);
    cr_expect_eq(tu_jint(ev, "source_port"), a.client_port);
    json_decref(ev);
    ev = wait_for("close", "client", a.pid);
    cr_expect_eq(tu_jint(ev, "dest_port"), a.listen_port);
    cr_expect_eq(tu_jint(ev, "bytes_received"), 1);
    json_decref(ev);
    ev = wait_for("close", "server", a.pid);
    cr_expect_eq(tu_jint(ev, "source_port"), a.client_port);
    cr_expect_eq(tu_jint(ev, "bytes_sent"), 1);
    json_decref(ev);
    ev = wait_for("exit", NULL, a.pid);
    cr_expect_str_eq(tu_jstr(ev, "command"), "cg-a-marker");
    json_decref(ev);

    /* Nothing of B's, and nothing from outside A at all (this machine runs other work). */
    size_t of_b, outside;
    char *dump_b, *dump_outside;
    count_events(&b, &a, &of_b, &outside, &dump_b, &dump_outside);
    cr_expect_eq(of_b, 0, "%zu events of the process in cgroup B (pid %d), e.g. %s", of_b,
                 (int)b.pid, dump_b ? dump_b : "");
    cr_expect_eq(outside, 0, "%zu events from outside cgroup A, e.g. %s", outside,
                 dump_outside ? dump_outside : "");
    free(dump_b);
    free(dump_outside);
}

Test(capture_cgroup_config, a_missing_cgroup_is_a_configuration_error)
{
    char log[128], *text;
    int code;

    snprintf(log, sizeof(log), "%s/agent.log", tmpdir);
    char *const argv[] = {(char *)tu_repo_path("bin/ebpf-agent"), "--capture-cgroup",
                          "no-such-cgroup/below", NULL};
    pid_t pid = tu_spawn(argv, NULL, log);
    cr_assert_gt(pid, 0);
    code = tu_wait_exit(pid, 10000);
    cr_expect_eq(code, 2, "exit code %d", code);
    text = tu_read_file(log);
    cr_assert_not_null(text);
    cr_expect(strstr(text, "CAPTURE_CGROUP") && strstr(text, "no-such-cgroup/below"),
              "the message names neither the key nor the path: %s", text);
    cr_expect_eq(strchr(text, '\n'), text + strlen(text) - 1, "not one line: %s", text);
    free(text);
}

static bool exit_of(json_t *ev, void *arg)
{
    return tu_jint(ev, "pid") == *(pid_t *)arg;
}

/*
 * A node's kubepods tree below a directory of any name (a kind node's
 * container, a test's cgroup): with CAPTURE_CGROUP on that directory the
 * pods are found there, and a process of a pod carries its pod's UID and
 * container. No API server: the cgroup alone says which pod.
 */
Test(capture_cgroup_config, pods_are_found_below_the_captured_cgroup)
{
    char uid[37], suid[37], cid[65], rel[KP_REL_MAX];
    kp_random_uid(uid);
    kp_systemd_uid(uid, suid);
    kp_random_container_id(cid);
    snprintf(rel, sizeof(rel),
             "%s/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
             "cri-containerd-%s.scope",
             cg_a, suid, cid);
    const char *const args[] = {
        "--capture-cgroup", cg_a, "--deployment-mode", "kubernetes", "--event-types", "exit", NULL};
    unsetenv("KUBERNETES_SERVICE_HOST");
    tu_agent_start(&agent, "nested-node", args);
    struct kp_proc proc;
    kp_start(&proc, cg_root, rel);
    pid_t pid = proc.pid;
    int status;
    close(proc.wfd); /* it exits; its cgroup stays until the event is in */
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    char q[96];
    snprintf(q, sizeof(q), "/api/events?type=exit&pid=%d", pid);
    json_t *ev = tu_wait_event(agent.port, q, exit_of, &pid, 10000);
    cr_assert(ev, "no exit event of pid %d", pid);
    cr_expect_str_eq(tu_jstr(ev, "k8s_pod_uid"), uid, "%s", tu_jdump(ev));
    cr_expect_str_eq(tu_jstr(ev, "k8s_container_id"), cid);
    json_decref(ev);
    tu_agent_stop(&agent);
    kp_rmdirs(cg_root, rel);
}

/*
 * Child of held_start: connects (sock when the parent made it, else one of its own made in
 * the cgroup it was put in, before it moves itself to `then`), reports, and closes its end
 * at the parent's word.
 */
static void held_child(int sock, const char *then, int port, int report, int go)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    char procs[512], c;
    int ports[2];

    if (read(go, &c, 1) != 1) /* placed in its cgroup */
        _exit(120);
    if (sock < 0 && (sock = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        _exit(10);
    if (then) {
        cg_path(procs, sizeof(procs), then, "cgroup.procs");
        FILE *f = fopen(procs, "w");
        if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0)
            _exit(11);
    }
    if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(sock, (struct sockaddr *)&sa, &len))
        _exit(12);
    ports[0] = port;
    ports[1] = ntohs(sa.sin_port);
    if (write(report, ports, sizeof(ports)) != (ssize_t)sizeof(ports))
        _exit(13);
    if (read(go, &c, 1) != 1) /* the word to close */
        _exit(14);
    close(sock);
    _exit(0);
}

struct held {
    struct run run;
    int go;     /* write end: one byte once placed, one to close */
    int report; /* read end */
};

/* Forks held_child in cgroup rel (see there) and waits for its connection. */
static void held_start(struct held *h, int sock, const char *rel, const char *then, int port)
{
    int go[2], report[2], ports[2];
    char procs[512];

    cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(report, O_CLOEXEC), 0);
    h->run.pid = fork();
    cr_assert_geq(h->run.pid, 0);
    if (h->run.pid == 0) {
        close(go[1]);
        close(report[0]);
        held_child(sock, then, port, report[1], go[0]);
    }
    close(go[0]);
    close(report[1]);
    if (sock >= 0)
        close(sock); /* the child's from now on */
    cg_path(procs, sizeof(procs), rel, "cgroup.procs");
    FILE *f = fopen(procs, "w");
    cr_assert_not_null(f, "open %s: %s", procs, strerror(errno));
    fprintf(f, "%d\n", (int)h->run.pid);
    cr_assert_eq(fclose(f), 0, "moving %d into %s: %s", (int)h->run.pid, rel, strerror(errno));
    cr_assert_eq(write(go[1], "", 1), 1);
    cr_assert_eq(read(report[0], ports, sizeof(ports)), (ssize_t)sizeof(ports),
                 "the child in %s reported no connection", rel);
    h->run.listen_port = ports[0];
    h->run.client_port = ports[1];
    h->go = go[1];
    h->report = report[0];
}

static void held_close(struct held *h)
{
    int status = 0;

    cr_assert_eq(write(h->go, "", 1), 1);
    close(h->go);
    close(h->report);
    cr_assert_eq(waitpid(h->run.pid, &status, 0), h->run.pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "held child: status %#x", status);
}

/*
 * Connections already open when the agent starts are captured as they would have been
 * live: a client connection by the process that holds it (which connected), not by its
 * socket's cgroup, and a server connection by its socket's (its listener's). Here: one made
 * from inside cgroup A with a socket made outside (captured), one made from outside with a
 * socket made inside (not captured), and the accepted ends of both, outside (not captured).
 */
Test(capture_cgroup_config, connections_open_at_the_start_go_by_the_same_cgroup_rule)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(l >= 0 && bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(l, 8) == 0 &&
              getsockname(l, (struct sockaddr *)&sa, &len) == 0);
    int port = ntohs(sa.sin_port);

    struct held in, out;
    held_start(&in, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), cg_a, NULL, port);
    int a_in = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    held_start(&out, -1, cg_a, cg_b, port);
    int a_out = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    cr_assert(a_in >= 0 && a_out >= 0);

    const char *const args[] = {"--capture-cgroup", cg_a, NULL};
    tu_agent_start(&agent, "capture-node", args);

    /* The uncaptured ones first: once the captured close is read, theirs would have been. */
    held_close(&out);
    close(a_out);
    close(a_in);
    held_close(&in);
    json_t *ev = wait_for("close", "client", in.run.pid);
    cr_expect_eq(tu_jint(ev, "source_port"), in.run.client_port);
    cr_expect_null(json_object_get(ev, "duration_ns"), "open before the start");
    json_decref(ev);

    char path[128];
    snprintf(path, sizeof(path), "/api/events?type=close&dest_port=%d", port);
    json_t *all = tu_fetch_json(agent.port, path);
    size_t i;
    json_array_foreach(json_object_get(all, "events"), i, ev)
    {
        char *text = json_dumps(ev, JSON_COMPACT);
        cr_expect(tu_jint(ev, "source_port") == in.run.client_port &&
                      strcmp(tu_jstr(ev, "role"), "client") == 0,
                  "a close from outside cgroup A: %s", text);
        free(text);
    }
    cr_expect_eq(json_array_size(json_object_get(all, "events")), 1);
    json_decref(all);
    close(l);
}

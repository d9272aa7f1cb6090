/*
 * End-to-end tests of `ebpf-aggregator tail` and `ebpf-aggregator decode`:
 * the real binary against a real nats-server on a free port, fed with real
 * batches (protobuf and JSON lines, with the agents' headers).
 */
#include "buf.h"
#include "bus.h"
#include "event_json.h"
#include "event_pb.h"
#include "intern.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NODE "worker-1.example.com"

static char dir[] = "/tmp/ebpf-tail-XXXXXX";

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(nats_Open(-1), NATS_OK);
}

/* Children still running when a test ends (a failed assertion) are stopped here. */
static pid_t children[8];
static size_t nchildren;

static pid_t track(pid_t pid)
{
    if (pid > 0 && nchildren < sizeof(children) / sizeof(children[0]))
        children[nchildren++] = pid;
    return pid;
}

static void teardown(void)
{
    for (size_t i = 0; i < nchildren; i++)
        if (waitpid(children[i], NULL, WNOHANG) == 0) /* still our running child */
            tu_stop(children[i], 2000);
    char cmd[64 + sizeof(dir)];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

TestSuite(e2e_tail, .init = setup, .fini = teardown, .timeout = 60);

static const char *path(const char *name)
{
    static char p[8][256];
    static int i;
    char *out = p[i++ % 8];
    snprintf(out, sizeof(p[0]), "%s/%s", dir, name);
    return out;
}

/* Starts argv with stdin, stdout and stderr redirected to files (NULL: inherit). */
static pid_t spawn(char *const argv[], char *const env[], const char *in, const char *out,
                   const char *err)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid)
        return pid;
    const char *files[3] = {in, out, err};
    for (int fd = 0; fd < 3; fd++) {
        if (!files[fd])
            continue;
        int f = open(files[fd], fd ? O_WRONLY | O_CREAT | O_TRUNC : O_RDONLY, 0644);
        if (f < 0)
            _exit(126);
        dup2(f, fd);
        close(f);
    }
    for (size_t i = 0; env && env[i]; i++)
        putenv(env[i]);
    execv(argv[0], argv);
    _exit(127);
}

static size_t count_lines(const char *file)
{
    char *s = tu_read_file(file);
    size_t n = 0;
    for (char *p = s; p && *p; p++)
        n += *p == '\n';
    free(s);
    return n;
}

/* Waits until file holds at least n lines (or needle, when given). */
static bool wait_file(const char *file, size_t n, const char *needle, int timeout_ms)
{
    uint64_t deadline = tu_mono_ms() + (uint64_t)timeout_ms;
    do {
        if (needle) {
            char *s = tu_read_file(file);
            bool found = s && strstr(s, needle);
            free(s);
            if (found)
                return true;
        } else if (count_lines(file) >= n) {
            return true;
        }
        usleep(10000);
    } while (tu_mono_ms() < deadline);
    return false;
}

/* JSON lines of a file, parsed. */
static json_t *read_lines(const char *file)
{
    char *s = tu_read_file(file);
    cr_assert_not_null(s);
    json_t *arr = json_array();
    for (char *save = NULL, *line = strtok_r(s, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(line, 0, &e);
        cr_assert_not_null(j, "not JSON (%s): %s", e.text, line);
        json_array_append_new(arr, j);
    }
    free(s);
    return arr;
}

static void make_event(struct event *e, unsigned type, uint64_t id, uint32_t pid)
{
    memset(e, 0, sizeof(*e));
    e->type = (uint8_t)type;
    e->id = id;
    e->timestamp_ns = 1795698266000000000ull + id;
    e->pid = pid;
    e->ppid = 1;
    strcpy(e->command, type == EVENT_EXEC ? "ls" : "sleep");
    if (type == EVENT_EXEC) {
        e->u.exec.filename = strdup("/usr/bin/ls");
        e->u.exec.args = strdup("ls");
        e->u.exec.args_len = 3;
    } else if (type == EVENT_EXIT) {
        e->u.exit.exit_code = 1;
    }
}

/* A protobuf batch: exec (pid 10), exit (pid 11), exec (pid 12); events carry no node. */
static void protobuf_batch(struct buf *out, uint64_t seq)
{
    struct event ev[3];
    make_event(&ev[0], EVENT_EXEC, 1, 10);
    make_event(&ev[1], EVENT_EXIT, 2, 11);
    make_event(&ev[2], EVENT_EXEC, 3, 12);
    struct event_batch_meta meta = {
        .node = NODE, .agent_instance = "00112233aabbccdd", .sequence = seq};
    cr_assert_eq(event_batch_encode(&meta, ev, 3, out), 0);
    for (int i = 0; i < 3; i++)
        event_clear(&ev[i]);
}

static natsConnection *connect_to(int port)
{
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    natsConnection *nc = NULL;
    cr_assert_eq(natsConnection_ConnectTo(&nc, url), NATS_OK);
    return nc;
}

/* Publishes on the subject of the node the headers name, as an agent does (NODE's without). */
static void publish(natsConnection *nc, const void *data, size_t len, const char *const *hdrs)
{
    natsMsg *m = NULL;
    char subject[128];
    const char *node = NODE;
    for (const char *const *h = hdrs; h && h[0]; h += 2)
        if (strcmp(h[0], BUS_HDR_NODE) == 0)
            node = h[1];
    bus_node_subject("ebpf.events", node, subject, sizeof(subject));
    cr_assert_eq(natsMsg_Create(&m, subject, NULL, data, (int)len), NATS_OK);
    for (; hdrs && hdrs[0]; hdrs += 2)
        cr_assert_eq(natsMsgHeader_Set(m, hdrs[0], hdrs[1]), NATS_OK);
    cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 2000), NATS_OK);
    natsMsg_Destroy(m);
}

Test(e2e_tail, follows_both_encodings_with_a_filter)
{
    int port = tu_free_port();
    pid_t nats = track(tu_nats_start(port, NULL, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");

    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    char *argv[] = {
        (char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--nats", url, "--type=exec", NULL};
    pid_t tail = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    cr_assert(wait_file(path("err"), 0, "following", 10000), "tail did not subscribe");

    natsConnection *nc = connect_to(port);
    struct buf pb;
    buf_init(&pb);
    protobuf_batch(&pb, 1);
    const char *pb_hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_NODE, NODE,
                             NULL};
    publish(nc, pb.data, pb.len, pb_hdrs);

    /* Garbage in between: a warning on stderr, and tail keeps going. */
    publish(nc, "\xff\xff garbage", 10, NULL);

    const char *json_body = "{\"id\":\"00000000000000aa\",\"type\":\"exec\",\"timestamp\":"
                            "1795698266000000100,\"pid\":99,\"command\":\"sh\"}\n"
                            "{\"id\":\"00000000000000ab\",\"type\":\"exit\",\"timestamp\":"
                            "1795698266000000101,\"pid\":99,\"command\":\"sh\"}\n";
    const char *json_hdrs[] = {
        BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, "vm-7", BUS_HDR_INSTANCE,
        "ffeeddccbbaa9988",   BUS_HDR_SEQUENCE,      "1",          NULL};
    publish(nc, json_body, strlen(json_body), json_hdrs);

    cr_assert(wait_file(path("out"), 3, NULL, 10000), "expected 3 exec lines");
    cr_assert(wait_file(path("err"), 0, "malformed_protobuf", 10000), "no warning for garbage");

    cr_assert_eq(kill(tail, SIGINT), 0);
    cr_assert_eq(tu_wait_exit(tail, 5000), 0, "tail did not exit 0 on SIGINT");

    json_t *lines = read_lines(path("out"));
    cr_assert_eq(json_array_size(lines), 3);
    size_t i;
    json_t *e;
    const uint32_t want_pid[] = {10, 12, 99};
    const char *want_node[] = {NODE, NODE, "vm-7"};
    json_array_foreach(lines, i, e)
    {
        cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "exec");
        cr_assert_eq(json_integer_value(json_object_get(e, "pid")), want_pid[i]);
        cr_assert_str_eq(json_string_value(json_object_get(e, "node")), want_node[i]);
    }
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 0), "filename")),
                     "/usr/bin/ls");
    json_decref(lines);

    natsConnection_Destroy(nc);
    buf_free(&pb);
    tu_stop(nats, 5000);
}

/* Whoever may publish chooses a message's subject and headers: tail's warnings print them without
 * control characters, so a terminal escape sequence never reaches the operator's terminal. */
Test(e2e_tail, warnings_print_no_control_characters)
{
    int port = tu_free_port();
    pid_t nats = track(tu_nats_start(port, NULL, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");

    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--nats", url, NULL};
    pid_t tail = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    cr_assert(wait_file(path("err"), 0, "following", 10000), "tail did not subscribe");

    natsConnection *nc = connect_to(port);
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, "ebpf.events.\x1b]0;owned\x07\x1b[2J", NULL, "\xff\xff", 2),
                 NATS_OK);
    cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    natsMsg_Destroy(m);
    cr_assert_eq(natsMsg_Create(&m, "ebpf.events.n1", NULL, "x", 1), NATS_OK);
    cr_assert_eq(natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, "text/\x1b[31mred"), NATS_OK);
    cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    natsMsg_Destroy(m);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 2000), NATS_OK);

    cr_assert(wait_file(path("err"), 0, "unknown_encoding", 10000), "no warning for the header");
    cr_assert(wait_file(path("err"), 0, "malformed_protobuf", 10000), "no warning for garbage");
    cr_assert_eq(kill(tail, SIGINT), 0);
    cr_assert_eq(tu_wait_exit(tail, 5000), 0);

    FILE *f = fopen(path("err"), "r");
    cr_assert_not_null(f);
    int c;
    while ((c = fgetc(f)) != EOF)
        cr_assert(c >= 0x20 ? c != 0x7f : c == '\n', "control character 0x%02x on stderr", c);
    fclose(f);
    natsConnection_Destroy(nc);
    tu_stop(nats, 5000);
}

/*
 * Core NATS keeps nothing for a subscriber that is away or too slow: the batches a tail
 * missed are gaps in their agent's sequence numbers, and it says how many, of which node,
 * for either encoding; batches in order say nothing.
 */
Test(e2e_tail, missed_batches_are_reported)
{
    int port = tu_free_port();
    pid_t nats = track(tu_nats_start(port, NULL, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");

    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--nats", url, NULL};
    pid_t tail = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    cr_assert(wait_file(path("err"), 0, "following", 10000), "tail did not subscribe");

    natsConnection *nc = connect_to(port);
    const char *pb_hdrs[] = {BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF, BUS_HDR_NODE, NODE,
                             NULL};
    struct buf pb;
    buf_init(&pb);
    for (uint64_t seq = 1; seq <= 2; seq++) {
        buf_reset(&pb);
        protobuf_batch(&pb, seq);
        publish(nc, pb.data, pb.len, pb_hdrs);
    }
    cr_assert(wait_file(path("out"), 6, NULL, 10000), "the first two batches' events");
    char *err = tu_read_file(path("err"));
    cr_assert_null(strstr(err, "missed"), "batches in order are no loss: %s", err);
    free(err);

    buf_reset(&pb);
    protobuf_batch(&pb, 5); /* 3 and 4 never came */
    publish(nc, pb.data, pb.len, pb_hdrs);
    cr_assert(wait_file(path("err"), 0, "2 batch(es) of node " NODE " missed", 10000),
              "no word of the two missed batches");

    const char *json_body = "{\"id\":\"00000000000000aa\",\"type\":\"exec\",\"timestamp\":"
                            "1795698266000000100,\"pid\":99,\"command\":\"sh\"}\n";
    const char *seqs[] = {"7", "8", "10"};
    for (size_t i = 0; i < 3; i++) {
        const char *json_hdrs[] = {
            BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, "vm-7", BUS_HDR_INSTANCE,
            "ffeeddccbbaa9988",   BUS_HDR_SEQUENCE,      seqs[i],      NULL};
        publish(nc, json_body, strlen(json_body), json_hdrs);
    }
    cr_assert(wait_file(path("err"), 0, "1 batch(es) of node vm-7 missed", 10000),
              "no word of the missed JSON batch");
    cr_assert(wait_file(path("out"), 12, NULL, 10000), "every event that came is printed");

    cr_assert_eq(kill(tail, SIGINT), 0);
    cr_assert_eq(tu_wait_exit(tail, 5000), 0);
    err = tu_read_file(path("err"));
    cr_assert_not_null(strstr(err, "; 3 in all"), "the running total: %s", err);
    char *first = strstr(err, "missed");
    cr_assert(first && strstr(first + 1, "missed") &&
                  !strstr(strstr(first + 1, "missed") + 1, "missed"),
              "one warning per gap: %s", err);
    free(err);
    natsConnection_Destroy(nc);
    buf_free(&pb);
    tu_stop(nats, 5000);
}

Test(e2e_tail, credentials_from_the_environment_and_node_filter)
{
    int port = tu_free_port();
    const char *auth[] = {"--user", "tailer", "--pass", "s3cret", NULL};
    pid_t nats = track(tu_nats_start(port, auth, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");

    char url[64], env_url[80];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    snprintf(env_url, sizeof(env_url), "NATS_URL=%s", url);
    char *env[] = {env_url, "NATS_USER=tailer", "NATS_PASSWORD=s3cret", NULL};
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--node", "vm-7", NULL};
    pid_t tail = track(spawn(argv, env, NULL, path("out"), path("err")));
    cr_assert(wait_file(path("err"), 0, "following", 10000), "tail did not subscribe");

    char auth_url[96];
    snprintf(auth_url, sizeof(auth_url), "nats://tailer:s3cret@127.0.0.1:%d", port);
    natsConnection *nc = NULL;
    cr_assert_eq(natsConnection_ConnectTo(&nc, auth_url), NATS_OK);
    struct buf pb;
    buf_init(&pb);
    protobuf_batch(&pb, 1); /* node worker-1: filtered out */
    publish(nc, pb.data, pb.len, NULL);
    const char *body = "{\"id\":\"00000000000000aa\",\"type\":\"exit\",\"timestamp\":"
                       "1795698266000000100,\"pid\":99,\"command\":\"sh\"}\n";
    const char *hdrs[] = {BUS_HDR_NODE, "vm-7", BUS_HDR_INSTANCE, "ab", BUS_HDR_SEQUENCE,
                          "4",          NULL};
    publish(nc, body, strlen(body), hdrs);

    cr_assert(wait_file(path("out"), 1, NULL, 10000));
    cr_assert_eq(kill(tail, SIGTERM), 0);
    cr_assert_eq(tu_wait_exit(tail, 5000), 0);
    json_t *lines = read_lines(path("out"));
    cr_assert_eq(json_array_size(lines), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 0), "node")), "vm-7");
    json_decref(lines);

    /* The wrong password: the tail says why, every line under its own name, and exits 1. */
    char *bad_env[] = {env_url, "NATS_USER=tailer", "NATS_PASSWORD=wrong", NULL};
    pid_t refused = track(spawn(argv, bad_env, NULL, path("out2"), path("err2")));
    cr_assert_eq(tu_wait_exit(refused, 20000), 1);
    char *err = tu_read_file(path("err2"));
    /* In the server's words, or, when nats.c closed the connection before the tail heard them
     * (it may, before the subscription), as a refusal with what to check. */
    cr_assert(err && (strstr(err, "Authorization Violation") ||
                      strstr(err, "the NATS servers refused the connection (credentials")),
              "stderr: %s", err ? err : "");
    for (char *line = err; *line;) {
        char *nl = strchr(line, '\n');
        cr_assert(strncmp(line, "ebpf-aggregator tail: ", 22) == 0, "a line of stderr: %.*s",
                  (int)(nl ? nl - line : (ptrdiff_t)strlen(line)), line);
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(err);
    natsConnection_Destroy(nc);
    buf_free(&pb);
    tu_stop(nats, 5000);
}

Test(e2e_tail, bad_filter_is_one_line_and_exit_2)
{
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--pid", "abc", NULL};
    pid_t pid = spawn(argv, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    char *err = tu_read_file(path("err"));
    cr_assert_not_null(err);
    cr_assert(strstr(err, "invalid --pid: \"abc\""), "%s", err);
    cr_assert_eq(count_lines(path("err")), 1, "%s", err);
    free(err);

    /* Named as the option was given a value, in the command line's words. */
    char *empty[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--peer_pod=", NULL};
    pid = spawn(empty, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    err = tu_read_file(path("err"));
    cr_assert(err && strstr(err, "invalid --peer-pod: empty value (leave the option out instead)"),
              "%s", err ? err : "");
    free(err);

    /* Agents name no Service: a filter on it could only ever be silent. */
    char *service[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--peer-service",
                       "shop/web", NULL};
    pid = spawn(service, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    err = tu_read_file(path("err"));
    cr_assert(err && strstr(err, "--peer-service never matches") &&
                  strstr(err, "/api/events/stream") && count_lines(path("err")) == 1,
              "%s", err ? err : "");
    free(err);

    char *limit[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--limit", "5", NULL};
    pid = spawn(limit, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);

    /* An empty subject is no way to ask for the default. */
    char *subject[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--subject", "", NULL};
    pid = spawn(subject, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    err = tu_read_file(path("err"));
    cr_assert(err && strstr(err, "--subject") && count_lines(path("err")) == 1, "%s", err);
    free(err);

    /* An option given twice names the option (not a query parameter) and how to ask. */
    char *twice[] = {
        (char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--type", "exec", "--type=exit", NULL};
    pid = spawn(twice, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    err = tu_read_file(path("err"));
    cr_assert(err && strstr(err, "option --type given twice") && strstr(err, "commas") &&
                  count_lines(path("err")) == 1,
              "%s", err ? err : "");
    free(err);

    char *help[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--help", NULL};
    pid = spawn(help, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    cr_assert(wait_file(path("out"), 0, "--subject", 1000));
}

/* --check-config validates the tail's configuration and exits, as it does for the service. */
Test(e2e_tail, check_config_validates_and_exits)
{
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", tu_free_port()); /* nothing listens */
    char *argv[] = {
        (char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--check-config", "--nats", url, NULL};
    pid_t pid = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0, "the tail did not exit after --check-config");
    char *out = tu_read_file(path("out"));
    cr_expect(out && strstr(out, "configuration OK"), "%s", out ? out : "");
    free(out);

    char *bad[] = {(char *)tu_repo_path("bin/ebpf-aggregator"),
                   "tail",
                   "--check-config",
                   "--nats",
                   "foo://x:4222",
                   NULL};
    pid = track(spawn(bad, NULL, NULL, path("out"), path("err")));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    char *err = tu_read_file(path("err"));
    cr_expect(err && strstr(err, "NATS_URL") && count_lines(path("err")) == 1, "%s",
              err ? err : "");
    free(err);

    /* A subject NATS would refuse to subscribe to is refused here, not after "OK". */
    static const char *const subjects[] = {"ebpf..events", ".ebpf", "ebpf.events.", "ebpf.>.x",
                                           "ebpf\nevents.>"};
    for (size_t i = 0; i < sizeof(subjects) / sizeof(subjects[0]); i++) {
        char *sub[] = {(char *)tu_repo_path("bin/ebpf-aggregator"),
                       "tail",
                       "--check-config",
                       "--nats",
                       url,
                       "--subject",
                       (char *)subjects[i],
                       NULL};
        pid = track(spawn(sub, NULL, NULL, path("out"), path("err")));
        cr_expect_eq(tu_wait_exit(pid, 5000), 2, "--subject \"%s\" passed --check-config",
                     subjects[i]);
        err = tu_read_file(path("err"));
        cr_expect(err && strstr(err, "invalid --subject") && count_lines(path("err")) == 1, "%s",
                  err ? err : "");
        free(err);
    }
}

/* --until as on the stream: one in the past is refused, one ahead ends the tail after it. */
Test(e2e_tail, until_ends_the_tail_and_a_past_one_is_refused)
{
    char past[32], soon[32];
    snprintf(past, sizeof(past), "%" PRIu64, (uint64_t)(tu_now_ns() - 1000000000ull));
    char *argv_past[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--until", past,
                         NULL};
    pid_t pid = spawn(argv_past, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    char *err = tu_read_file(path("err"));
    cr_assert(err && strstr(err, "--until") && strstr(err, "past"), "%s", err ? err : "");
    free(err);

    int port = tu_free_port();
    pid_t nats = track(tu_nats_start(port, NULL, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");
    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    snprintf(soon, sizeof(soon), "%" PRIu64, (uint64_t)(tu_now_ns() + 1000000000ull));
    char *argv[] = {
        (char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--nats", url, "--until", soon, NULL};
    pid = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    /* until + the 3 s grace, with room for a loaded machine. */
    cr_assert_eq(tu_wait_exit(pid, 30000), 0, "the tail did not end after its --until");
    tu_stop(nats, 5000);
}

Test(e2e_tail, decode_reads_a_body_from_stdin)
{
    struct buf pb;
    buf_init(&pb);
    protobuf_batch(&pb, 1);
    FILE *f = fopen(path("batch.pb"), "w");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(pb.data, 1, pb.len, f), pb.len);
    fclose(f);

    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "decode", NULL};
    pid_t pid = spawn(argv, NULL, path("batch.pb"), path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    json_t *lines = read_lines(path("out"));
    cr_assert_eq(json_array_size(lines), 3);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 1), "type")), "exit");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 2), "node")), NODE);
    json_decref(lines);

    /* JSON lines pass through re-encoded. */
    f = fopen(path("batch.json"), "w");
    fputs("{\"id\":\"00000000000000aa\",\"type\":\"exit\",\"timestamp\":5,\"pid\":9}\n", f);
    fclose(f);
    pid = spawn(argv, NULL, path("batch.json"), path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    lines = read_lines(path("out"));
    cr_assert_eq(json_array_size(lines), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 0), "time")),
                     "1970-01-01T00:00:00.000000005Z");
    json_decref(lines);

    /* Truncated protobuf: one line on stderr, exit 1, nothing on stdout. */
    f = fopen(path("cut.pb"), "w");
    cr_assert_eq(fwrite(pb.data, 1, pb.len - 3, f), pb.len - 3);
    fclose(f);
    pid = spawn(argv, NULL, path("cut.pb"), path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 1);
    cr_assert_eq(count_lines(path("out")), 0);
    cr_assert_eq(count_lines(path("err")), 1);
    cr_assert(wait_file(path("err"), 0, "malformed_protobuf", 1000));
    buf_free(&pb);
}

/* A body's text, escaped in its JSON ("\u001b"), is quoted in decode's warnings without control
 * characters: a terminal escape sequence in a message never reaches the terminal. */
Test(e2e_tail, decode_warnings_print_no_control_characters)
{
    FILE *f = fopen(path("evil.json"), "w");
    cr_assert_not_null(f);
    fputs("{\"id\":\"00000000000000aa\",\"type\":\"\\u001b]0;owned\\u0007\\u001b[2J\","
          "\"timestamp\":5}\n"
          "{\"id\":\"00000000000000ab\",\"type\":\"exit\",\"timestamp\":5,\"pid\":9}\n",
          f);
    fclose(f);
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "decode", NULL};
    pid_t pid = spawn(argv, NULL, path("evil.json"), path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    cr_assert_eq(count_lines(path("out")), 1);
    cr_assert(wait_file(path("err"), 0, "unknown event type", 1000));
    f = fopen(path("err"), "r");
    cr_assert_not_null(f);
    int c;
    while ((c = fgetc(f)) != EOF)
        cr_assert(c >= 0x20 ? c != 0x7f : c == '\n', "control character 0x%02x on stderr", c);
    fclose(f);
}

/*
 * Bytes that are not UTF-8 in every string of a protobuf batch: decode
 * prints strict JSON (jansson's default loader rejects invalid UTF-8) with
 * the exact bytes in the _b64 fields, and that output, fed back as a JSON
 * batch, decodes to the same lines (the JSON bus round trip).
 */
Test(e2e_tail, decode_prints_invalid_utf8_as_strict_json_with_exact_bytes)
{
    struct event e;
    make_event(&e, EVENT_EXEC, 7, 70);
    strcpy(e.command, "ls\xff\xfe");
    free(e.u.exec.filename);
    e.u.exec.filename = strdup("/tmp/\xc0\xaf/ls");
    free(e.u.exec.args);
    static const char args[] = "ls\0\xff\x80\x80\0\xed\xa0\x80";
    e.u.exec.args = malloc(sizeof(args));
    memcpy(e.u.exec.args, args, sizeof(args));
    e.u.exec.args_len = sizeof(args);
    e.k8s.pod_name = intern("web-\xf8\x88");
    struct event_batch_meta meta = {
        .node = NODE, .agent_instance = "00112233aabbccdd", .sequence = 1};
    struct buf pb;
    buf_init(&pb);
    cr_assert_eq(event_batch_encode(&meta, &e, 1, &pb), 0);
    event_clear(&e);
    FILE *f = fopen(path("bytes.pb"), "w");
    cr_assert_eq(fwrite(pb.data, 1, pb.len, f), pb.len);
    fclose(f);
    buf_free(&pb);

    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "decode", NULL};
    pid_t pid = spawn(argv, NULL, path("bytes.pb"), path("bytes.json"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    json_t *lines = read_lines(path("bytes.json")); /* strict: fails on invalid UTF-8 */
    cr_assert_eq(json_array_size(lines), 1);
    json_t *ev = json_array_get(lines, 0);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "command")),
                     "ls\xef\xbf\xbd\xef\xbf\xbd");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "command_b64")), "bHP//g==");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "filename_b64")), "L3RtcC/Ary9scw==");
    cr_expect_str_eq(json_string_value(json_object_get(ev, "k8s_pod_name")),
                     "web-\xef\xbf\xbd\xef\xbf\xbd");
    json_t *raw = json_object_get(ev, "args_b64");
    cr_assert_eq(json_array_size(raw), 3);
    cr_expect_str_eq(json_string_value(json_array_get(raw, 1)), "/4CA");
    cr_expect_str_eq(json_string_value(json_array_get(raw, 2)), "7aCA");
    json_decref(lines);

    pid = spawn(argv, NULL, path("bytes.json"), path("again.json"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 0);
    char *first = tu_read_file(path("bytes.json")), *again = tu_read_file(path("again.json"));
    cr_assert(first && again);
    cr_expect_str_eq(again, first);
    free(first);
    free(again);
}

/* One JSON connection line; peer and workload fields as given ("" = absent). */
static void conn_line(struct buf *b, unsigned id, const char *status, unsigned dport,
                      const char *workload, const char *peer_pod)
{
    char line[512];
    int n = snprintf(
        line, sizeof(line),
        "{\"id\":\"%016x\",\"type\":\"connection\",\"timestamp\":%llu,\"pid\":7,"
        "\"command\":\"curl\",\"family\":\"ipv4\",\"protocol\":\"tcp\",\"source_ip\":\"10.0.0.1\","
        "\"source_port\":40000,\"dest_ip\":\"10.0.0.2\",\"dest_port\":%u,"
        "\"status\":\"%s\"%s",
        id, 1795698266000000000ull + id, dport, status,
        strcmp(status, "failed") == 0 ? ",\"error\":\"refused\"" : "");
    if (*workload)
        n += snprintf(line + n, sizeof(line) - (size_t)n,
                      ",\"k8s_workload\":\"%s\",\"k8s_workload_kind\":\"Deployment\"", workload);
    if (*peer_pod)
        n += snprintf(line + n, sizeof(line) - (size_t)n,
                      ",\"peer_pod\":\"%s\",\"peer_namespace\":\"data\"", peer_pod);
    snprintf(line + n, sizeof(line) - (size_t)n, "}\n");
    buf_append(b, line, strlen(line));
}

Test(e2e_tail, connection_and_peer_filters)
{
    int port = tu_free_port();
    pid_t nats = track(tu_nats_start(port, NULL, path("nats.log")));
    cr_assert_gt(nats, 0, "nats-server did not start");

    char url[64];
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
    /* Dashes and underscores name the same filters. */
    char *argv[] = {(char *)tu_repo_path("bin/ebpf-aggregator"),
                    "tail",
                    "--nats",
                    url,
                    "--status=failed",
                    "--dest-port",
                    "5432",
                    "--workload",
                    "web",
                    "--peer_pod",
                    "db-0",
                    "--peer-namespace=data",
                    NULL};
    pid_t tail = track(spawn(argv, NULL, NULL, path("out"), path("err")));
    cr_assert(wait_file(path("err"), 0, "following", 10000), "tail did not subscribe");

    /* Only the first and the last match; each other line misses one filter. */
    struct buf body;
    buf_init(&body);
    conn_line(&body, 1, "failed", 5432, "web", "db-0");
    conn_line(&body, 2, "established", 5432, "web", "db-0");
    conn_line(&body, 3, "failed", 5433, "web", "db-0");
    conn_line(&body, 4, "failed", 5432, "api", "db-0");
    conn_line(&body, 5, "failed", 5432, "", "db-0");
    conn_line(&body, 6, "failed", 5432, "web", "db-1");
    conn_line(&body, 7, "failed", 5432, "web", "");
    conn_line(&body, 8, "failed", 5432, "web", "db-0");
    natsConnection *nc = connect_to(port);
    const char *hdrs[] = {
        BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_JSON, BUS_HDR_NODE, "vm-7", BUS_HDR_INSTANCE,
        "ffeeddccbbaa9988",   BUS_HDR_SEQUENCE,      "1",          NULL};
    publish(nc, body.data, body.len, hdrs);

    cr_assert(wait_file(path("out"), 2, NULL, 10000), "expected 2 lines");
    cr_assert_eq(kill(tail, SIGINT), 0);
    cr_assert_eq(tu_wait_exit(tail, 5000), 0);
    json_t *lines = read_lines(path("out"));
    cr_assert_eq(json_array_size(lines), 2);
    const char *want_id[] = {"0000000000000001", "0000000000000008"};
    for (size_t i = 0; i < 2; i++) {
        json_t *e = json_array_get(lines, i);
        cr_assert_str_eq(json_string_value(json_object_get(e, "id")), want_id[i]);
        cr_assert_str_eq(json_string_value(json_object_get(e, "error")), "refused");
        cr_assert_str_eq(json_string_value(json_object_get(e, "peer_pod")), "db-0");
        cr_assert_str_eq(json_string_value(json_object_get(e, "k8s_workload")), "web");
    }
    json_decref(lines);

    char *bad[] = {(char *)tu_repo_path("bin/ebpf-aggregator"), "tail", "--status", "ok", NULL};
    pid_t pid = spawn(bad, NULL, NULL, path("out"), path("err"));
    cr_assert_eq(tu_wait_exit(pid, 5000), 2);
    cr_assert(wait_file(path("err"), 0, "invalid --status: \"ok\"", 1000));

    natsConnection_Destroy(nc);
    buf_free(&body);
    tu_stop(nats, 5000);
}

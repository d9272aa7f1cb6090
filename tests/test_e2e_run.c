/*
 * `make run` (scripts/run-local.sh) as a user runs it: a local nats-server, the
 * agent and the aggregator on free ports. Ctrl-C (SIGINT to the script's whole
 * process group, as a terminal sends it) stops the agent first, so its last
 * batch reaches the aggregator, then the aggregator, then NATS, and leaves
 * nothing running. With a NATS_URL nothing listens at, the script says NATS is
 * not reachable yet and goes on: both programs keep running and answering.
 *
 * Needs root (the agent loads eBPF programs), nats-server and the built bin/.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define WAIT_MS 60000

static pid_t script = -1; /* the script, leader of its own process group */
static char log_path[] = "/tmp/ebpf-run-XXXXXX.log";
static int agent_port, aggregator_port;

/* The script by its PID: its TERM trap stops what it started, by theirs. */
static void stop_script(void)
{
    if (script > 0)
        tu_stop(script, 30000);
    script = -1;
}

/* The script with both programs listening on host (127.0.0.1, [::1]) and nats_env set. */
static void start_run_at(const char *host, const char *nats_env)
{
    char agent_env[64], aggregator_env[64], nats[64];
    agent_port = tu_free_port();
    aggregator_port = tu_free_port();
    snprintf(agent_env, sizeof(agent_env), "AGENT_LISTEN_ADDR=%s:%d", host, agent_port);
    snprintf(aggregator_env, sizeof(aggregator_env), "AGGREGATOR_LISTEN_ADDR=%s:%d", host,
             aggregator_port);
    snprintf(nats, sizeof(nats), "%s", nats_env);
    int fd = mkstemps(log_path, 4);
    cr_assert_geq(fd, 0, "mkstemps");
    close(fd);
    pid_t parent = getpid();
    script = fork();
    cr_assert_geq(script, 0, "fork");
    if (script == 0) {
        setpgid(0, 0);
        /* The test stopped unexpectedly: the script's trap stops the rest. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        signal(SIGINT, SIG_DFL); /* as from a terminal */
        int out = open(log_path, O_WRONLY | O_APPEND);
        dup2(out, 1);
        dup2(out, 2);
        close(out);
        unsetenv("NATS_URL"); /* a local nats-server unless nats_env names one */
        putenv(agent_env);
        putenv(aggregator_env);
        putenv(nats);
        execl("/bin/bash", "bash", tu_repo_path("scripts/run-local.sh"), (char *)NULL);
        _exit(127);
    }
    setpgid(script, script);
}

static void start_run(const char *nats_env)
{
    start_run_at("127.0.0.1", nats_env);
}

/* Waits until the log has text; fails with the log after WAIT_MS. */
static void wait_log(const char *text)
{
    uint64_t deadline = tu_mono_ms() + WAIT_MS;
    for (;;) {
        char *log = tu_read_file(log_path);
        bool found = log && strstr(log, text);
        free(log);
        if (found)
            return;
        if (tu_mono_ms() > deadline) {
            tu_dump_file(log_path, 8192);
            cr_assert_fail("\"%s\" not in the output of make run", text);
        }
        usleep(100000);
    }
}

/* Ctrl-C: SIGINT to the whole group; the script exits once all is stopped. */
static char *ctrl_c(void)
{
    cr_assert_eq(kill(-script, SIGINT), 0);
    int rc = tu_wait_exit(script, WAIT_MS);
    script = -1;
    char *log = tu_read_file(log_path);
    cr_assert_not_null(log);
    cr_assert_neq(rc, -1, "make run did not stop after Ctrl-C:\n%s", log);
    cr_assert(strstr(log, "run: stopping"), "%s", log);
    cr_assert_not(tu_wait_port(agent_port, 0), "the agent still listens:\n%s", log);
    cr_assert_not(tu_wait_port(aggregator_port, 0), "the aggregator still listens:\n%s", log);
    return log;
}

static void fini(void)
{
    stop_script();
    unlink(log_path);
}

Test(e2e_run, ctrl_c_stops_the_agent_first_and_loses_no_batch, .fini = fini, .timeout = 150)
{
    char nats[32];
    int nats_port = tu_free_port();
    snprintf(nats, sizeof(nats), "RUN_NATS_PORT=%d", nats_port);
    start_run(nats);
    wait_log("run: ready.");
    /* Events in the agent's open batch when the signal comes: its last batch holds them. */
    tu_tcp_roundtrip();
    tu_tcp_roundtrip();
    char *log = ctrl_c();
    const char *agent = strstr(log, "ebpf-agent: SIGTERM received");
    const char *aggregator = strstr(log, "ebpf-aggregator: SIGTERM received");
    cr_assert(agent && aggregator && agent < aggregator,
              "the agent did not stop before the aggregator:\n%s", log);
    cr_assert_null(strstr(log, "not sent"), "batches lost at the stop:\n%s", log);
    cr_assert_not(tu_wait_port(nats_port, 0), "nats-server still listens:\n%s", log);
    free(log);
}

Test(e2e_run, a_nats_url_not_reachable_yet_is_said_and_both_keep_running, .fini = fini,
     .timeout = 150)
{
    char nats[64];
    snprintf(nats, sizeof(nats), "NATS_URL=nats://127.0.0.1:%d", tu_free_port());
    start_run(nats);
    wait_log("run: ready.");
    char *log = tu_read_file(log_path);
    cr_assert(log && strstr(log, "is not reachable yet"), "%s", log ? log : "");
    cr_assert_null(strstr(log, "did not start"), "%s", log);
    free(log);
    cr_assert(tu_wait_http(agent_port, "/health", 200, 5000), "the agent stopped");
    cr_assert(tu_wait_http(aggregator_port, "/health", 200, 5000), "the aggregator stopped");
    cr_assert(tu_wait_http(aggregator_port, "/ready", 503, 5000), "ready without NATS");
    free(ctrl_c());
}

/* Listen addresses of a host of their own (IPv6 loopback here, as a VM's own address would be):
 * make run waits for the programs there, not on 127.0.0.1 where nothing of theirs listens, and
 * its commands name that host. */
Test(e2e_run, listeners_on_a_host_of_their_own_are_waited_for_there, .fini = fini, .timeout = 150)
{
    char nats[32];
    snprintf(nats, sizeof(nats), "RUN_NATS_PORT=%d", tu_free_port());
    start_run_at("[::1]", nats);
    wait_log("run: ready.");
    char *log = tu_read_file(log_path);
    char hint[64];
    snprintf(hint, sizeof(hint), "curl -s [::1]:%d/api/nodes", aggregator_port);
    cr_assert(log && strstr(log, hint), "no \"%s\" in:\n%s", hint, log ? log : "");
    cr_assert_null(strstr(log, "did not start"), "%s", log);
    free(log);
    free(ctrl_c());
}

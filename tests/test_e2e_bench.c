/*
 * The benchmark suite cannot rot: runs `scripts/bench.sh --quick` (each
 * benchmark once, tiny sizes) and checks that build/bench/results.json parses
 * and that every measurement has a name, a unit, a command and a numeric
 * value, and that both the agent's and the aggregator's sections are there.
 * Asserts nothing about speed. Needs root (the agent part loads eBPF programs).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/*
 * The suite runs under timeout(1), well inside the test's own limit: a stage
 * that hangs then fails the test with the log's tail (each stage writes when
 * it starts), instead of a bare "timed out" that says nothing of where.
 */
#define QUICK_SUITE_LIMIT_S 480
#define LOG_TAIL_BYTES      6000

/* The last line of the log where a bench script says which stage it starts ("bench-x: ..."). */
static void last_stage(const char *log, char *out, size_t outlen)
{
    snprintf(out, outlen, "(none)");
    for (const char *line = log; line && *line;) {
        const char *end = strchrnul(line, '\n');
        if (strncmp(line, "bench", 5) == 0)
            snprintf(out, outlen, "%.*s", (int)(end - line), line);
        line = *end ? end + 1 : NULL;
    }
}

static json_t *run_quick_suite(void)
{
    char cmd[1024], log[64];
    json_error_t jerr;

    snprintf(log, sizeof(log), "/tmp/ebpf-e2e-bench-%d.log", getpid());
    snprintf(cmd, sizeof(cmd), "cd '%s' && timeout -k 10 %d scripts/bench.sh --quick >'%s' 2>&1",
             tu_repo_path("."), QUICK_SUITE_LIMIT_S, log);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        char *out = tu_read_file(log), stage[160];
        last_stage(out, stage, sizeof(stage));
        size_t len = out ? strlen(out) : 0;
        const char *tail = out ? out + (len > LOG_TAIL_BYTES ? len - LOG_TAIL_BYTES : 0) : "(none)";
        cr_assert_fail(
            "scripts/bench.sh --quick %s (status %d), last stage \"%s\"; the end of %s:\n%s",
            WIFEXITED(rc) && WEXITSTATUS(rc) == 124 ? "did not finish in its limit" : "failed", rc,
            stage, log, tail);
    }
    json_t *root = json_load_file(tu_repo_path("build/bench/results.json"), 0, &jerr);
    cr_assert_not_null(root, "results.json: %s (line %d)", jerr.text, jerr.line);
    unlink(log);
    return root;
}

Test(e2e_bench, quick_suite_writes_every_measurement, .timeout = 600)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: the agent benchmarks load eBPF programs");

    json_t *root = run_quick_suite();
    json_t *ms = json_object_get(root, "measurements");
    cr_assert(json_is_array(ms), "results.json has no measurements array");
    cr_assert_gt(json_array_size(ms), 10, "only %zu measurements", json_array_size(ms));

    bool agent = false, aggregator = false, zero_loss = false, kernel = false, dns = false;
    bool narrowed = false, hooks = false, dispatch = false;
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m)
    {
        const char *id = json_string_value(json_object_get(m, "id"));
        const char *section = json_string_value(json_object_get(m, "section"));
        cr_assert_not_null(id, "measurement %zu has no id", i);
        cr_assert_not_null(section, "%s has no section", id);
        cr_assert(json_is_number(json_object_get(m, "value")), "%s: value is not a number", id);
        cr_assert(json_is_string(json_object_get(m, "unit")), "%s: no unit", id);
        cr_assert(json_is_string(json_object_get(m, "command")), "%s: no command", id);
        json_t *met = json_object_get(m, "met");
        cr_assert(met == NULL || json_is_boolean(met) || json_is_null(met),
                  "%s: met is not a boolean", id);
        agent |= strcmp(section, "agent") == 0;
        aggregator |= strcmp(section, "aggregator") == 0;
        zero_loss |= strcmp(id, "pipeline.zero_loss_events_per_sec") == 0;
        kernel |= strncmp(id, "kernel.agent.", 13) == 0;
        dns |= strcmp(id, "dns.kernel.dns.egress.ns_per_packet") == 0;
        narrowed |= strcmp(id, "speed.tcp-connect.agent-no-dns-close") == 0;
        hooks |= strcmp(id, "dns.cpu.udp.agent_over_hooks") == 0;
        dispatch |= strcmp(id, "speed.tcp-connect.agent-no-dns-hooks") == 0;
    }
    cr_expect(agent, "no agent measurements");
    cr_expect(aggregator, "no aggregator measurements");
    cr_expect(zero_loss, "no zero-loss pipeline rate");
    cr_expect(kernel, "no in-kernel cost");
    cr_expect(dns, "no dns capture cost (scripts/bench-dns.sh)");
    cr_expect(narrowed, "no tcp-connect speed under the agent with EVENT_TYPES narrowed");
    cr_expect(hooks,
              "no throughput under empty programs on the dns hooks to compare the agent with");
    cr_expect(dispatch, "no tcp-connect speed under the agent with empty programs in place of dns");

    char *md = tu_read_file(tu_repo_path("build/bench/results.md"));
    cr_assert_not_null(md, "results.md missing");
    cr_expect(strstr(md, "| Measurement |") != NULL, "results.md has no table");
    free(md);
    json_decref(root);
}

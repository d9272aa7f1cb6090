/*
 * "Monitor the monitor": the Grafana dashboard (docs/grafana/) and the
 * Prometheus alert rules (docs/prometheus/) kept true against the real
 * /metrics of a running agent (real eBPF) and aggregator on a real
 * nats-server.
 *
 * - promtool check rules, and promtool test rules: each alert fires on the
 *   series that should fire it and stays quiet otherwise;
 * - promtool check metrics accepts both programs' /metrics;
 * - a real Prometheus scrapes both programs, and every query of the
 *   dashboard returns data and every rule's expression evaluates, so a
 *   renamed metric or a PromQL mistake fails here, not on an operator's
 *   screen.
 *
 * Needs root (eBPF) and promtool/prometheus (Debian prometheus, make deps).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

static struct tu_monitor mon;
static pid_t prom_pid;
static int prom_port;
static char workdir[64];

static char *repo_file(const char *rel)
{
    char *path = realpath(tu_repo_path(rel), NULL);
    cr_assert_not_null(path, "%s not found", rel);
    return path;
}

static void require_promtool(void)
{
    cr_assert_eq(tu_run("command -v promtool && command -v prometheus", NULL), 0,
                 "promtool/prometheus not found: install the Debian prometheus package (make "
                 "deps)");
}

static void setup(void)
{
    snprintf(workdir, sizeof(workdir), "/tmp/ebpf-e2e-monitoring-XXXXXX");
    cr_assert_not_null(mkdtemp(workdir));
}

static void teardown(void)
{
    if (prom_pid > 0)
        tu_stop(prom_pid, 10000);
    prom_pid = 0;
    tu_monitor_stop(&mon);
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", workdir);
    tu_run(cmd, NULL);
}

/* nats-server, agent and aggregator, each on a free port. */
static void start_monitor(void)
{
    cr_assert_eq(geteuid(), 0, "needs root: the agent loads eBPF programs");
    tu_monitor_start(&mon, NULL, workdir);
}

TestSuite(e2e_monitoring, .init = setup, .fini = teardown, .timeout = 90);

Test(e2e_monitoring, alert_rules_pass_promtool_check_and_unit_tests)
{
    require_promtool();
    char *dir = repo_file("docs/prometheus");
    char cmd[1024], *out;
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && promtool check rules ebpf-monitor.rules.yml && "
             "promtool test rules ebpf-monitor.rules.test.yml",
             dir);
    free(dir);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "promtool:\n%s", out);
    cr_expect_not_null(strstr(out, "SUCCESS: 13 rules found"), "%s", out);
    free(out);
}

Test(e2e_monitoring, both_programs_metrics_pass_promtool_check_metrics)
{
    require_promtool();
    start_monitor();
    int ports[] = {mon.agent_port, mon.aggregator_port};
    for (int i = 0; i < 2; i++) {
        char cmd[256], *out;
        snprintf(cmd, sizeof(cmd), "curl -sf http://127.0.0.1:%d/metrics | promtool check metrics",
                 ports[i]);
        int rc = tu_run(cmd, &out);
        cr_expect(rc == 0 && !out[0], "promtool check metrics on port %d (exit %d):\n%s", ports[i],
                  rc, out);
        free(out);
    }
}

/* Percent-encodes s for a URL query value. */
static void urlencode(const char *s, char *out, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s && n + 4 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("-_.~", c)) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
}

/* Instant query on the test's Prometheus: the result array's size, or -1 when the query failed. */
static int prom_query(const char *expr, char *err, size_t errlen)
{
    char enc[4096], path[4200];
    urlencode(expr, enc, sizeof(enc));
    snprintf(path, sizeof(path), "/api/v1/query?query=%s", enc);
    int status;
    json_t *r = tu_get_json(prom_port, path, &status);
    const char *st = json_string_value(json_object_get(r, "status"));
    int n = -1;
    if (st && strcmp(st, "success") == 0)
        n = (int)json_array_size(json_object_get(json_object_get(r, "data"), "result"));
    else
        snprintf(err, errlen, "%s", json_string_value(json_object_get(r, "error")) ?: "no answer");
    json_decref(r);
    return n;
}

/* Replaces the dashboard's variables the way Grafana would with "All" selected. */
static void expand(const char *expr, char *out, size_t len)
{
    static const char *const vars[][2] = {
        {"$__rate_interval", "1m"}, {"$instance", ".*"}, {"$node", ".*"}};
    size_t n = 0;
    while (*expr && n + 1 < len) {
        size_t i = 0;
        for (; i < sizeof(vars) / sizeof(vars[0]); i++)
            if (strncmp(expr, vars[i][0], strlen(vars[i][0])) == 0)
                break;
        if (i < sizeof(vars) / sizeof(vars[0])) {
            n += (size_t)snprintf(out + n, len - n, "%s", vars[i][1]);
            expr += strlen(vars[i][0]);
        } else {
            out[n++] = *expr++;
        }
    }
    out[n < len ? n : len - 1] = '\0';
}

/* Every "expr" of the dashboard's panels, in a JSON array (new reference). */
static json_t *dashboard_exprs(json_t *dash)
{
    json_t *exprs = json_array(), *panel, *target;
    size_t i, j;
    json_array_foreach(json_object_get(dash, "panels"), i, panel)
    {
        json_array_foreach(json_object_get(panel, "targets"), j, target)
        {
            json_array_append(exprs, json_object_get(target, "expr"));
        }
    }
    return exprs;
}

/*
 * A packet the kernel drops (UDP to a closed loopback port: NO_SOCKET), until the agent's
 * /metrics counts drops by reason, so the dashboard's drops-by-reason panel has a series.
 */
static void force_a_packet_drop(void)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0), closed = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert(s >= 0 && closed >= 0);
    cr_assert_eq(bind(closed, (struct sockaddr *)&sa, len), 0);
    cr_assert_eq(getsockname(closed, (struct sockaddr *)&sa, &len), 0);
    close(closed); /* the port is free again: nothing listens there */
    bool counted = false;
    for (uint64_t end = tu_mono_ms() + 20000; !counted && tu_mono_ms() < end;) {
        cr_assert_eq(sendto(s, "x", 1, 0, (struct sockaddr *)&sa, len), 1);
        struct tu_http r = {0};
        if (tu_http_get(mon.agent_port, "/metrics", NULL, &r) == 0 && r.body)
            counted = strstr(r.body, "ebpf_agent_packet_drops_total{reason=") != NULL;
        tu_http_free(&r);
        if (!counted)
            usleep(100 * 1000);
    }
    close(s);
    cr_assert(counted, "the agent's /metrics counts no packet drop by reason");
}

Test(e2e_monitoring, dashboard_queries_and_rules_evaluate_on_real_metrics, .timeout = 90)
{
    require_promtool();
    start_monitor();
    force_a_packet_drop();
    prom_port = tu_free_port();
    char config[128], data[128], listen[64], log[128], *text;
    snprintf(config, sizeof(config), "%s/prometheus.yml", workdir);
    FILE *f = fopen(config, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ebpf-agent\n"
            "    static_configs: [{targets: ['127.0.0.1:%d']}]\n"
            "  - job_name: ebpf-aggregator\n"
            "    static_configs: [{targets: ['127.0.0.1:%d']}]\n",
            mon.agent_port, mon.aggregator_port);
    fclose(f);
    snprintf(data, sizeof(data), "--storage.tsdb.path=%s/data", workdir);
    snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", prom_port);
    snprintf(log, sizeof(log), "%s/prometheus.log", workdir);
    char config_flag[160];
    snprintf(config_flag, sizeof(config_flag), "--config.file=%s", config);
    char *argv[] = {"/usr/bin/prometheus", config_flag, data, listen, NULL};
    prom_pid = tu_spawn(argv, NULL, log);
    cr_assert(tu_wait_http(prom_port, "/-/ready", 200, 20000), "prometheus did not start");

    /* Two scrapes of each program: rate() over them has a value. */
    char err[512];
    bool scraped = false;
    for (uint64_t end = tu_mono_ms() + 20000; !scraped && tu_mono_ms() < end;) {
        scraped = prom_query("count(rate(ebpf_agent_uptime_seconds[1m])) + "
                             "count(rate(ebpf_aggregator_uptime_seconds[1m]))",
                             err, sizeof(err)) == 1;
        if (!scraped)
            usleep(200 * 1000); /* the next scrape is at most 1 s away */
    }
    cr_assert(scraped, "prometheus did not scrape both programs twice");

    text = tu_read_file(tu_repo_path("docs/grafana/ebpf-monitor.json"));
    cr_assert_not_null(text, "docs/grafana/ebpf-monitor.json not found");
    json_error_t jerr;
    json_t *dash = json_loads(text, 0, &jerr);
    free(text);
    cr_assert_not_null(dash, "the dashboard is not JSON: %s (line %d)", jerr.text, jerr.line);
    json_t *exprs = dashboard_exprs(dash), *e;
    size_t i;
    cr_assert_gt(json_array_size(exprs), 20, "the dashboard has too few queries");
    json_array_foreach(exprs, i, e)
    {
        char expanded[2048];
        expand(json_string_value(e), expanded, sizeof(expanded));
        int n = prom_query(expanded, err, sizeof(err));
        cr_expect_geq(n, 0, "dashboard query fails: %s\n%s", expanded, err);
        cr_expect_neq(n, 0, "dashboard query returns no data on real metrics: %s", expanded);
    }
    json_decref(exprs);
    json_decref(dash);

    /* The rules' expressions evaluate against the same series (alerts need not fire). */
    text = tu_read_file(tu_repo_path("docs/prometheus/ebpf-monitor.rules.yml"));
    cr_assert_not_null(text);
    size_t rules = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *expr = strstr(line, "expr: ");
        if (!expr)
            continue;
        expr += 6;
        rules++;
        cr_expect_geq(prom_query(expr, err, sizeof(err)), 0, "rule expression fails: %s\n%s", expr,
                      err);
        /* Each metric a rule reads is one the programs export. */
        for (char *m = strstr(expr, "ebpf_"); m; m = strstr(m + 1, "ebpf_")) {
            char name[128], q[160];
            size_t len = strspn(m, "abcdefghijklmnopqrstuvwxyz0123456789_");
            snprintf(name, sizeof(name), "%.*s", (int)len, m);
            snprintf(q, sizeof(q), "count(%s)", name);
            cr_expect_eq(prom_query(q, err, sizeof(err)), 1,
                         "rule reads %s, which no program exports", name);
        }
    }
    free(text);
    cr_expect_eq(rules, 13, "found %zu rule expressions", rules);
}

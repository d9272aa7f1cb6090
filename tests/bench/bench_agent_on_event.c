/*
 * The agent's on_event path alone: what happens to an event after capture.c
 * has read its record from the ring buffer, decoded it and attributed it to a
 * pod (none of which this measures; the end-to-end ladder of
 * scripts/bench-agent.sh does). Synthetic events, shaped like decoded
 * records, go through the agent's own on_event (cmd/agent/events.c: id,
 * node, counters, publisher_add with a real NATS, http_server_publish,
 * flows_add, the history, a batch per poll) as fast as one thread can, with the agent's default
 * limits (HISTORY_SIZE, BATCH_SIZE, ENCODING... from the environment like the agent).
 *
 *   bench_agent_on_event [--events N] [--cpu K]
 *
 * NATS_URL (environment) names the server. --cpu pins the whole process
 * (capture loop, publisher and NATS threads) to one CPU, so the figure is
 * events per second per core. Prints one JSON object with events/s (wall),
 * process CPU-µs per event, capture-thread CPU-µs per event, events sent and
 * agent drops, and peak RSS.
 */
#include <inttypes.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "agent/agent.h"
#include "clock.h"
#include "intern.h"

static double clock_s(clockid_t id)
{
    return (double)clock_ns(id) / 1e9;
}

/* What capture.c fills for event i of a realistic mix: 96 UDP connects, 3 TCP, 1 exec. */
static void synth(struct event *e, uint64_t i, uint64_t now_ns)
{
    static const char args[] = "/bin/true\0--version\0";
    unsigned k = (unsigned)(i % 100);

    memset(e, 0, sizeof(*e));
    e->timestamp_ns = now_ns;
    e->pid = 1000 + (uint32_t)(i % 50);
    e->ppid = 1;
    e->uid = 0;
    e->cgroup_id = 4242;
    if (k < 99) {
        strcpy(e->command, "bench_load");
        e->type = EVENT_CONNECTION;
        e->family = EVENT_FAMILY_IPV4;
        e->protocol = k < 96 ? IPPROTO_UDP : IPPROTO_TCP;
        e->status = k < 96 ? EVENT_STATUS_ATTEMPTED : EVENT_STATUS_ESTABLISHED;
        e->saddr[0] = 127, e->saddr[3] = 1;
        /* 4,096 peers: a busy node's share of a cluster (each is a flow edge). */
        e->daddr[0] = 10, e->daddr[1] = 1, e->daddr[2] = (uint8_t)((i >> 8) & 0x0f),
        e->daddr[3] = (uint8_t)i;
        e->sport = (uint16_t)(32768 + i % 28000);
        e->dport = 53;
        e->u.conn.latency_ns = k < 96 ? 0 : 41000;
    } else {
        strcpy(e->command, "true");
        e->type = EVENT_EXEC;
        e->u.exec.filename = strdup("/bin/true");
        e->u.exec.args = malloc(sizeof(args) + 1);
        memcpy(e->u.exec.args, args, sizeof(args));
        e->u.exec.args_len = sizeof(args) - 1;
    }
}

static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;

    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmHWM:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

int main(int argc, char **argv)
{
    uint64_t n = 2000000;
    int cpu = -1;
    char err[512];
    struct agent a = {0};

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--events"))
            n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--cpu"))
            cpu = atoi(argv[i + 1]);
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof(set), &set); /* threads created later inherit it */
    }
    char *cargv[] = {"bench_agent_on_event", NULL};
    if (config_load(&a.cfg, CONFIG_AGENT, 1, cargv, err, sizeof(err)) != CONFIG_OK) {
        fprintf(stderr, "bench_agent_on_event: %s\n", err);
        return 1;
    }
    a.node = intern(a.cfg.node_name[0] ? a.cfg.node_name : "bench");
    event_id_gen_init(&a.ids);
    struct store_limits limits = {.max_events = a.cfg.history_size,
                                  .max_age_ns = a.cfg.history_max_age_ns};
    a.store = store_new(&limits);
    a.flows = flows_new(a.cfg.flow_retention_ns, a.cfg.flow_max_edges);
    struct http_server_config hc = {.listen_addr = "127.0.0.1:0"};
    a.http = http_server_new(&hc, err, sizeof(err));
    a.bus = bus_open(&a.cfg, "bench_agent_on_event", err, sizeof(err));
    if (!a.store || !a.flows || !a.http || !a.bus) {
        fprintf(stderr, "bench_agent_on_event: setup: %s\n", err);
        return 1;
    }
    bus_node_subject(a.cfg.subject_prefix, a.node, a.subject, sizeof(a.subject));
    struct publisher_config pc = {
        .node = a.node,
        .subject = a.subject,
        .encoding = a.cfg.encoding,
        .batch_size = a.cfg.batch_size,
        .flush_interval_ns = a.cfg.flush_interval_ns,
        .outage_buffer_bytes = a.cfg.outage_buffer_bytes,
    };
    a.pub = publisher_new(a.bus, &pc, err, sizeof(err));
    if (!a.pub) {
        fprintf(stderr, "bench_agent_on_event: %s\n", err);
        return 1;
    }
    for (int i = 0; i < 200 && !bus_connected(a.bus); i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = clock_s(CLOCK_MONOTONIC), th0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    uint64_t now = clock_monotonic_ns(), wall = (uint64_t)time(NULL) * 1000000000ull;
    for (uint64_t i = 0; i < n; i++) {
        struct event e;
        if ((i & 1023) == 0) {
            now = clock_monotonic_ns();
            publisher_tick(a.pub, now); /* the capture loop ticks once per poll */
        }
        synth(&e, i, wall + i);
        agent_on_event(&a, &e);
        if ((i & 1023) == 1023)
            agent_flush_store(&a); /* as the capture loop does after each poll */
    }
    agent_flush_store(&a);
    double th1 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    int flushed = publisher_flush(a.pub, 30ull * 1000000000ull);
    double t1 = clock_s(CLOCK_MONOTONIC);
    getrusage(RUSAGE_SELF, &ru1);

    struct publisher_stats ps;
    publisher_get_stats(a.pub, &ps);
    double cpu_s = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                   (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                   (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                   (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("{\"events\":%" PRIu64 ",\"seconds\":%.3f,\"events_per_sec\":%.0f,"
           "\"cpu_seconds\":%.3f,\"cpu_us_per_event\":%.3f,\"capture_thread_us_per_event\":%.3f,"
           "\"events_per_cpu_second\":%.0f,\"events_sent\":%" PRIu64 ",\"agent_drops\":%" PRIu64
           ",\"flushed\":%s,\"peak_rss_kib\":%ld,\"cpu\":%d}\n",
           n, t1 - t0, (double)n / (t1 - t0), cpu_s, cpu_s * 1e6 / (double)n,
           (th1 - th0) * 1e6 / (double)n, (double)n / cpu_s, ps.events_sent, ps.events_dropped,
           flushed == 0 ? "true" : "false", peak_rss_kib(), cpu);
    fflush(stdout);
    publisher_free(a.pub);
    bus_close(a.bus);
    http_server_free(a.http);
    store_free(a.store);
    flows_free(a.flows);
    return 0;
}

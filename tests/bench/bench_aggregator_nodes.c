/*
 * Aggregator cost against the number of distinct nodes (issue 15, item 4):
 * per-batch ingest cost and /api/stats cost at 100, 1,000 and 10,000 nodes,
 * and their ratio to the smallest step. The goal is a flat per-batch cost;
 * /api/stats lists every node, so its cost may grow linearly (a flat cost
 * per node), never faster.
 *
 *   --inproc: the aggregator's pieces in this process: bus_message_decode,
 *     nodes_observe and store_add_move per batch (as cmd/aggregator/ingest.c
 *     runs them), and the node-table work behind /api/stats (merging a
 *     replica's table, the merged view and its totals); CPU time only.
 *   --spawn: starts nats-server and bin/ebpf-aggregator on free loopback
 *     ports and measures the real process: its CPU time per batch ingested,
 *     and the wall time of GET /api/stats.
 *   --nats URL --http ADDR --pid PID: the same against a running aggregator
 *     (fresh: the node counts are this run's).
 *
 * Each step first grows the table to N nodes, a few small batches per new
 * node (how a fleet shows up), then times batches spread over all N nodes.
 *
 * Usage: bench_aggregator_nodes (--inproc | --spawn | --nats URL --http ADDR --pid PID)
 *        [--steps 100,1000,10000] [--batches N] [--prefix NAME]
 * Prints one JSON line per measurement (see bench_emit()).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_aggregator_events.h"
#include "bench_query_http.h"
#include "buf.h"
#include "bus.h"
#include "bus_message.h"
#include "event_pb.h"
#include "nodes.h"
#include "store.h"

#define PER_BATCH        10 /* events per batch: small, so the per-node work shows */
#define NEW_NODE_BATCHES 3
#define MAX_STEPS        8
#define STATS_ROUNDS     5
#define STATS_MIN_CPU_NS 200000000ull /* in process: 0.2 s of rounds per step */
#define INSTANCE         "0a1b2c3d4e5f6071"

static uint64_t *seqs; /* next sequence per node */
static uint64_t next_ts;

static void node_name(unsigned i, char *out, size_t len)
{
    snprintf(out, len, "bench-node-%05u.cluster.internal", i);
}

/* One encoded batch of node i, with its headers, as an agent publishes it. */
static natsMsg *make_batch(unsigned node, uint64_t *rng)
{
    char name[64], subject[128], v[24];
    struct event e;
    struct buf body;
    natsMsg *m = NULL;

    static struct event_pb_pods pods; /* the publisher's pod table: one per batch */

    node_name(node, name, sizeof(name));
    buf_init(&body);
    event_pb_pods_reset(&pods);
    for (size_t i = 0; i < PER_BATCH; i++) {
        bench_event_mix(&e, i, 0, next_ts++, rng, 0);
        e.node = intern(name);
        event_batch_append_event_pods(&body, &e, name, &pods);
        event_clear(&e);
    }
    struct event_batch_meta meta = {.node = name,
                                    .agent_instance = INSTANCE,
                                    .sequence = ++seqs[node],
                                    .sent_at_ns = bench_now_ns()};
    event_batch_append_meta(&body, &meta);
    bus_node_subject("ebpf.events", name, subject, sizeof(subject));
    natsMsg_Create(&m, subject, NULL, body.data, (int)body.len);
    natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF);
    natsMsgHeader_Set(m, BUS_HDR_NODE, name);
    natsMsgHeader_Set(m, BUS_HDR_INSTANCE, INSTANCE);
    snprintf(v, sizeof(v), "%" PRIu64, meta.sequence);
    natsMsgHeader_Set(m, BUS_HDR_SEQUENCE, v);
    snprintf(v, sizeof(v), "%d", PER_BATCH);
    natsMsgHeader_Set(m, BUS_HDR_EVENTS, v);
    buf_free(&body);
    return m;
}

static void emit_step(const char *prefix, const char *what, unsigned nodes, double value,
                      const char *unit)
{
    char name[160];
    snprintf(name, sizeof(name), "%s.nodes_%u.%s", prefix, nodes, what);
    bench_emit(name, value, unit, NULL, 0);
}

static void emit_ratios(const char *prefix, const unsigned *steps, size_t nsteps,
                        const double *batch, const double *stats)
{
    char name[160];
    /* A process's CPU time counts in clock ticks: too few batches can measure 0. */
    if (!(batch[0] > 0) || !(stats[0] > 0)) {
        fprintf(stderr,
                "bench_aggregator_nodes: %s: no CPU time measured at %u nodes; "
                "no ratios (use more --batches)\n",
                prefix, steps[0]);
        return;
    }
    for (size_t i = 1; i < nsteps; i++) {
        snprintf(name, sizeof(name), "%s.batch_cost_ratio_%u_to_%u", prefix, steps[i], steps[0]);
        /* Flat: within 2x over a 100-fold growth. */
        bench_emit(name, batch[i] / batch[0], "x", "<=", 2);
        /* /api/stats lists every node: its cost per node should be flat (linear in all). */
        snprintf(name, sizeof(name), "%s.stats_cost_ratio_%u_to_%u", prefix, steps[i], steps[0]);
        bench_emit(name, stats[i] / stats[0], "x", NULL, 0);
        snprintf(name, sizeof(name), "%s.stats_cost_per_node_ratio_%u_to_%u", prefix, steps[i],
                 steps[0]);
        bench_emit(name, (stats[i] / steps[i]) / (stats[0] / steps[0]), "x", "<=", 2);
    }
}

/* ---- in process ---- */

static void ingest_one(struct nodes *t, struct store *st, natsMsg *m)
{
    struct bus_batch batch = {0};
    char err[256];

    if (bus_message_decode(m, &batch, err, sizeof(err)) == BUS_OK) {
        nodes_observe(t, &batch.meta, batch.n, bench_now_ns());
        for (size_t i = 0; i < batch.n; i++)
            store_add_move(st, &batch.events[i]);
    }
    bus_batch_free(&batch);
}

/* The node-table work of one /api/stats on a two-replica cluster. */
static void stats_once(struct nodes *own, struct buf *peer_json)
{
    struct nodes *merged = nodes_new(65536);
    struct nodes_totals tot;
    struct buf out;

    buf_init(&out);
    nodes_merge_json(merged, peer_json->data, peer_json->len);
    nodes_merge(merged, own);
    nodes_write_json(merged, &out, bench_now_ns(), 60ull * 1000000000ull, &tot);
    buf_free(&out);
    nodes_free(merged);
}

static int run_inproc(const unsigned *steps, size_t nsteps, unsigned nbatches, const char *prefix)
{
    struct store_limits lim = {.max_events = 1000000, .max_age_ns = 24ull * 3600 * 1000000000ull};
    struct store *st = store_new(&lim);
    struct nodes *t = nodes_new(65536);
    double batch_ns[MAX_STEPS], stats_ns[MAX_STEPS];
    uint64_t rng = 5;
    unsigned have = 0;
    struct buf peer;

    buf_init(&peer);
    for (size_t s = 0; s < nsteps; s++) {
        uint64_t t0 = bench_cpu_ns();
        unsigned grown = 0;
        for (; have < steps[s]; have++, grown++) {
            for (int k = 0; k < NEW_NODE_BATCHES; k++) {
                natsMsg *m = make_batch(have, &rng);
                ingest_one(t, st, m);
                natsMsg_Destroy(m);
            }
        }
        if (grown)
            emit_step(prefix, "new_node_batch_cpu_ns", steps[s],
                      (double)(bench_cpu_ns() - t0) / (grown * NEW_NODE_BATCHES), "ns");

        /* Encoded beforehand: only the ingest path is timed. */
        natsMsg **msgs = calloc(nbatches, sizeof(*msgs));
        for (unsigned b = 0; b < nbatches; b++)
            msgs[b] = make_batch((unsigned)(bench_rand(&rng) % have), &rng);
        t0 = bench_cpu_ns();
        for (unsigned b = 0; b < nbatches; b++)
            ingest_one(t, st, msgs[b]);
        batch_ns[s] = (double)(bench_cpu_ns() - t0) / nbatches;
        for (unsigned b = 0; b < nbatches; b++)
            natsMsg_Destroy(msgs[b]);
        free(msgs);
        emit_step(prefix, "batch_cpu_ns", steps[s], batch_ns[s], "ns");

        /* The peer's table: the same nodes, as a second replica would report them. */
        buf_reset(&peer);
        nodes_to_json(t, &peer);
        /* At least STATS_MIN_CPU_NS of rounds: a few rounds on a small table last well under a
         * millisecond, where one page fault or cache refill weighs as much as the work. */
        unsigned rounds = 0;
        t0 = bench_cpu_ns();
        do {
            stats_once(t, &peer);
            rounds++;
        } while (rounds < STATS_ROUNDS || bench_cpu_ns() - t0 < STATS_MIN_CPU_NS);
        stats_ns[s] = (double)(bench_cpu_ns() - t0) / rounds;
        emit_step(prefix, "stats_nodes_cpu_ms", steps[s], stats_ns[s] / 1e6, "ms");
    }
    emit_ratios(prefix, steps, nsteps, batch_ns, stats_ns);
    buf_free(&peer);
    nodes_free(t);
    store_free(st);
    return 0;
}

/* ---- a real aggregator ---- */

/* utime + stime of a process in ns. */
static uint64_t proc_cpu_ns(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stime) != 2)
        return 0;
    return (uint64_t)(ut + stime) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* Batches stored so far, from the event count: /api/stats would cost as much as what is timed. */
static double total_batches(struct bench_http *h, struct buf *body)
{
    if (bench_http_get(h, "/api/events?limit=1", body) != 200)
        return -1;
    return bench_json_number(body->data, "total_count") / PER_BATCH;
}

/* Publishes msgs (destroying them) and waits until the aggregator counted them all. */
static int publish_and_wait(natsConnection *nc, struct bench_http *h, struct buf *body,
                            natsMsg **msgs, unsigned n, double *expect)
{
    for (unsigned i = 0; i < n; i++) {
        natsConnection_PublishMsg(nc, msgs[i]);
        natsMsg_Destroy(msgs[i]);
    }
    natsConnection_FlushTimeout(nc, 60000);
    *expect += n;
    /* Polling costs the aggregator too: slowly. */
    uint64_t deadline = bench_mono_ns() + 300ull * 1000000000ull;
    while (bench_mono_ns() < deadline) {
        double got = total_batches(h, body);
        if (got >= *expect)
            return 0;
        if (got < 0)
            return -1;
        usleep(100000);
    }
    fprintf(stderr, "bench_aggregator_nodes: the aggregator never counted %.0f batches\n", *expect);
    return -1;
}

static int run_nats(const char *url, const char *http, pid_t pid, const unsigned *steps,
                    size_t nsteps, unsigned nbatches, const char *prefix)
{
    natsConnection *nc = NULL;
    struct bench_http h;
    struct buf body;
    double batch_ns[MAX_STEPS], stats_ns[MAX_STEPS], expect;
    uint64_t rng = 9;
    unsigned have = 0;
    int rc = 1;

    buf_init(&body);
    if (natsConnection_ConnectTo(&nc, url) != NATS_OK || bench_http_open(&h, http) < 0) {
        fprintf(stderr, "bench_aggregator_nodes: cannot reach %s or %s\n", url, http);
        return 1;
    }
    if ((expect = total_batches(&h, &body)) < 0) {
        fprintf(stderr, "bench_aggregator_nodes: no aggregator API at %s\n", http);
        goto out;
    }
    for (size_t s = 0; s < nsteps; s++) {
        unsigned grow = steps[s] > have ? (steps[s] - have) * NEW_NODE_BATCHES : 0;
        natsMsg **msgs = calloc(grow + nbatches, sizeof(*msgs));
        unsigned k = 0;
        for (; have < steps[s]; have++)
            for (int j = 0; j < NEW_NODE_BATCHES; j++)
                msgs[k++] = make_batch(have, &rng);
        uint64_t cpu0 = proc_cpu_ns(pid);
        if (grow && publish_and_wait(nc, &h, &body, msgs, grow, &expect) < 0)
            goto out;
        if (grow)
            emit_step(prefix, "new_node_batch_cpu_ns", steps[s],
                      (double)(proc_cpu_ns(pid) - cpu0) / grow, "ns");

        for (unsigned b = 0; b < nbatches; b++)
            msgs[grow + b] = make_batch((unsigned)(bench_rand(&rng) % have), &rng);
        cpu0 = proc_cpu_ns(pid);
        if (publish_and_wait(nc, &h, &body, msgs + grow, nbatches, &expect) < 0)
            goto out;
        free(msgs);
        /* Includes the few polls of /api/events; a small share at these counts. */
        batch_ns[s] = (double)(proc_cpu_ns(pid) - cpu0) / nbatches;
        emit_step(prefix, "batch_cpu_ns", steps[s], batch_ns[s], "ns");

        uint64_t t0 = bench_mono_ns();
        cpu0 = proc_cpu_ns(pid);
        for (int r = 0; r < STATS_ROUNDS; r++)
            if (bench_http_get(&h, "/api/stats", &body) != 200)
                goto out;
        stats_ns[s] = (double)(bench_mono_ns() - t0) / STATS_ROUNDS;
        emit_step(prefix, "stats_wall_ms", steps[s], stats_ns[s] / 1e6, "ms");
        emit_step(prefix, "stats_cpu_ms", steps[s],
                  (double)(proc_cpu_ns(pid) - cpu0) / STATS_ROUNDS / 1e6, "ms");
        emit_step(prefix, "stats_bytes", steps[s], (double)body.len, "B");
    }
    emit_ratios(prefix, steps, nsteps, batch_ns, stats_ns);
    rc = 0;
out:
    buf_free(&body);
    bench_http_close(&h);
    natsConnection_Destroy(nc);
    return rc;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static pid_t spawn(char *const argv[], char *const env[])
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    for (size_t i = 0; env && env[i]; i++)
        putenv(env[i]);
    execvp(argv[0], argv);
    _exit(127);
}

static void stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
}

/* Polls until GET /ready answers 200, up to 10 s. */
static bool wait_ready(const char *http)
{
    struct bench_http h;
    struct buf body;
    bool ok = false;

    buf_init(&body);
    if (bench_http_open(&h, http) < 0)
        return false;
    for (int i = 0; i < 200 && !ok; i++) {
        ok = bench_http_get(&h, "/ready", &body) == 200;
        if (!ok) {
            bench_http_close(&h);
            bench_http_open(&h, http);
            usleep(50000);
        }
    }
    bench_http_close(&h);
    buf_free(&body);
    return ok;
}

static int run_spawn(const char *bin, const unsigned *steps, size_t nsteps, unsigned nbatches,
                     const char *prefix)
{
    char nport[16], url[64], http[64], listen[96], natsenv[96];
    int np = free_port(), hp = free_port();
    int rc = 1;

    snprintf(nport, sizeof(nport), "%d", np);
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", np);
    snprintf(http, sizeof(http), "127.0.0.1:%d", hp);
    snprintf(listen, sizeof(listen), "LISTEN_ADDR=%s", http);
    snprintf(natsenv, sizeof(natsenv), "NATS_URL=%s", url);
    char *nargv[] = {"nats-server", "-a", "127.0.0.1", "-p", nport, NULL};
    char *aargv[] = {(char *)bin, NULL};
    char *aenv[] = {listen, natsenv, "HISTORY_SIZE=1000000", NULL};
    pid_t nats = spawn(nargv, NULL);
    usleep(300000);
    pid_t agg = spawn(aargv, aenv);
    if (wait_ready(http))
        rc = run_nats(url, http, agg, steps, nsteps, nbatches, prefix);
    else
        fprintf(stderr, "bench_aggregator_nodes: %s never became ready on %s\n", bin, http);
    stop(agg);
    stop(nats);
    return rc;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *http = NULL, *prefix = "aggregator_nodes",
               *bin = "bin/ebpf-aggregator";
    unsigned steps[MAX_STEPS] = {100, 1000, 10000}, nbatches = 5000;
    size_t nsteps = 3;
    pid_t pid = 0;
    int mode = 0; /* 1 inproc, 2 spawn, 3 nats */

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--inproc"))
            mode = 1;
        else if (!strcmp(argv[i], "--spawn"))
            mode = 2;
        else if (!strcmp(argv[i], "--bin") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--nats") && i + 1 < argc)
            url = argv[++i], mode = 3;
        else if (!strcmp(argv[i], "--http") && i + 1 < argc)
            http = argv[++i];
        else if (!strcmp(argv[i], "--pid") && i + 1 < argc)
            pid = (pid_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            nbatches = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc)
            prefix = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            char *p = argv[++i];
            nsteps = 0;
            while (*p && nsteps < MAX_STEPS) {
                steps[nsteps++] = (unsigned)strtoul(p, &p, 10);
                if (*p == ',')
                    p++;
            }
        } else
            goto usage;
    }
    if (nsteps == 0 || nbatches == 0 || steps[0] == 0)
        goto usage;
    for (size_t i = 1; i < nsteps; i++)
        if (steps[i] <= steps[i - 1])
            goto usage;
    seqs = calloc(steps[nsteps - 1], sizeof(*seqs));
    next_ts = bench_now_ns() - 3600ull * 1000000000ull;
    nats_Open(-1);
    if (mode == 1)
        return run_inproc(steps, nsteps, nbatches, prefix);
    if (mode == 2)
        return run_spawn(bin, steps, nsteps, nbatches, prefix);
    if (mode == 3 && http && pid > 0)
        return run_nats(url, http, pid, steps, nsteps, nbatches, prefix);
usage:
    fprintf(stderr,
            "usage: %s (--inproc | --spawn [--bin PATH] | --nats URL --http ADDR --pid PID)"
            " [--steps 100,1000,10000] [--batches N] [--prefix NAME]\n",
            argv[0]);
    return 2;
}

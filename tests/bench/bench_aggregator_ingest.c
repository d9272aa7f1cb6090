/*
 * Aggregator ingest benchmark (issue 5, item 4): how many events per second
 * one core decodes and indexes, and how many bytes a stored event costs.
 *
 *   --inproc: the aggregator's ingest path (bus_message_decode, nodes_observe,
 *     learning the batch's pods and naming peers (pkg/peers), naming Services
 *     (pkg/k8s_services) and joining connections to a ClusterIP with their
 *     backend's accept (pkg/joins, announcements written but not sent),
 *     counting flows (pkg/flows, with the /metrics series, at the
 *     aggregator's defaults), store_add_move_batch, and storing the joined
 *     connections as they are released, as cmd/aggregator/ingest.c and
 *     join.c run it) in this process on pre-encoded protobuf batches in the
 *     agent's format (with the per-batch pod table); CPU time of that loop
 *     only, and the RSS growth of holding the events. Each pod backs a
 *     Service (see join_mix()).
 *   --nats URL --http ADDR --pid PID: the same batches published as fast as
 *     possible to a running aggregator process; reports what it stored
 *     against what was sent, its CPU time and its RSS growth.
 *
 * Usage: bench_aggregator_ingest (--inproc | --nats URL --http ADDR --pid PID)
 *        [--events N] [--rate EVENTS_PER_S] [--prefix NAME] [--publish-only] [--no-join]
 * --no-join: the mix without Services (as on VMs), for comparison.
 * Prints one JSON line per measurement (see bench_emit()).
 */
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench_aggregator_events.h"
#include "bench_query_http.h"
#include "buf.h"
#include "bus.h"
#include "bus_message.h"
#include "event_pb.h"
#include "flows.h"
#include "joins.h"
#include "k8s_services.h"
#include "nodes.h"
#include "peers.h"
#include "store.h"

#define BATCH    100
#define CHUNK    100000 /* events encoded at a time */
#define INSTANCE "0a1b2c3d4e5f6071"

struct chunk {
    struct buf *bodies; /* CHUNK / BATCH encoded EventBatch messages */
    unsigned *node;     /* node index of each */
    uint64_t *seq;
};

/* Events are BENCH_SPACING_NS apart, ending about now; the whole run fits the default max age. */
#define BENCH_SPACING_NS 100000ull

static uint64_t seqs[BENCH_NODES];

/*
 * The Services of the join: pod p backs Service default/svc-p, ClusterIP
 * 10.96.200.p, port 80 (the mix's own destinations, 10.96.x.y, are no
 * Service's). Half the TCP connections over IPv4 of a pod whose peer the
 * agent could not name (a tenth of all events) go to a Service instead: they
 * wait for the backend's accept. An accept of pod p (a twentieth of all
 * events) takes the oldest connection to svc-p not accepted yet, if any: its
 * source is that client's address and port, as kube-proxy leaves it. The
 * client's and the backend's batches come from different nodes, in either
 * order.
 */
#define JOIN_PORT    80
#define JOIN_PENDING 256 /* per pod: connections waiting for its accept */

struct join_pending {
    uint8_t ip[JOIN_PENDING][4];
    uint16_t port[JOIN_PENDING];
    unsigned head, n;
};
static struct join_pending join_pending[BENCH_PODS];
static bool with_join = true;

static void join_pod_ip(unsigned pod, uint8_t ip[4])
{
    ip[0] = 10, ip[1] = 0, ip[2] = (uint8_t)(pod / 8), ip[3] = (uint8_t)(pod + 2);
}

static void join_mix(struct event *e)
{
    if (!with_join)
        return;
    unsigned pod = (unsigned)(e->cgroup_id - 4000) % BENCH_PODS;
    if (e->type == EVENT_CONNECTION && !e->peer.pod && e->family == EVENT_FAMILY_IPV4 &&
        e->protocol == IPPROTO_TCP && e->id % 2) {
        unsigned svc = (unsigned)(e->id >> 8) % BENCH_PODS;
        struct join_pending *q = &join_pending[svc];
        uint8_t d[4] = {10, 96, 200, (uint8_t)svc};
        memcpy(e->daddr, d, 4);
        e->dport = JOIN_PORT;
        if (e->status == EVENT_STATUS_ESTABLISHED && q->n < JOIN_PENDING) {
            unsigned at = (q->head + q->n++) % JOIN_PENDING;
            memcpy(q->ip[at], e->saddr, 4);
            q->port[at] = e->sport;
        }
    } else if (e->type == EVENT_ACCEPT && join_pending[pod].n) {
        struct join_pending *q = &join_pending[pod];
        e->family = EVENT_FAMILY_IPV4;
        e->protocol = IPPROTO_TCP;
        memset(e->saddr, 0, sizeof(e->saddr));
        memset(e->daddr, 0, sizeof(e->daddr));
        memcpy(e->saddr, q->ip[q->head], 4);
        e->sport = q->port[q->head];
        join_pod_ip(pod, e->daddr);
        e->dport = JOIN_PORT;
        memset(&e->peer, 0, sizeof(e->peer)); /* the aggregator names the client */
        q->head = (q->head + 1) % JOIN_PENDING;
        q->n--;
    }
}

/* A ServiceList and an EndpointSliceList of the Services join_mix() uses, fed to s. */
static int join_services(struct k8s_services *s, char *err, size_t errlen)
{
    struct buf svc, sl;
    buf_init(&svc);
    buf_init(&sl);
    buf_printf(&svc, "{\"kind\":\"ServiceList\",\"apiVersion\":\"v1\",\"metadata\":"
                     "{\"resourceVersion\":\"1\"},\"items\":[");
    buf_printf(&sl, "{\"kind\":\"EndpointSliceList\",\"apiVersion\":\"discovery.k8s.io/v1\","
                    "\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[");
    for (unsigned p = 0; p < BENCH_PODS; p++) {
        uint8_t ip[4];
        join_pod_ip(p, ip);
        buf_printf(
            &svc,
            "%s{\"metadata\":{\"name\":\"svc-%u\",\"namespace\":\"default\"},\"spec\":"
            "{\"clusterIP\":\"10.96.200.%u\",\"ports\":[{\"port\":%d,\"protocol\":\"TCP\"}]}}",
            p ? "," : "", p, p, JOIN_PORT);
        buf_printf(&sl,
                   "%s{\"metadata\":{\"name\":\"svc-%u-x\",\"namespace\":\"default\",\"labels\":"
                   "{\"kubernetes.io/service-name\":\"svc-%u\"}},\"addressType\":\"IPv4\","
                   "\"endpoints\":[{\"addresses\":[\"%u.%u.%u.%u\"]}],"
                   "\"ports\":[{\"protocol\":\"TCP\",\"port\":%d}]}",
                   p ? "," : "", p, p, ip[0], ip[1], ip[2], ip[3], JOIN_PORT);
    }
    buf_printf(&svc, "]}");
    buf_printf(&sl, "]}");
    int rc = k8s_services_feed(s, false, false, svc.data, svc.len, err, errlen);
    if (rc == 0)
        rc = k8s_services_feed(s, true, false, sl.data, sl.len, err, errlen);
    buf_free(&svc);
    buf_free(&sl);
    return rc;
}

/*
 * Encodes events [first, first + CHUNK) of the run: batch b belongs to node
 * b % BENCH_NODES. Event k is stamped base_ts + k spacings, or with late_span
 * set at a random one of late_span spacings from base_ts (late events).
 */
static void chunk_encode(struct chunk *c, uint64_t first, uint64_t base_ts, uint64_t late_span,
                         uint64_t *rng)
{
    static struct event_pb_pods pods; /* the publisher's pod table: one per batch */
    struct event e;
    for (size_t b = 0; b < CHUNK / BATCH; b++) {
        unsigned node = (unsigned)((first / BATCH + b) % BENCH_NODES);
        struct buf *out = &c->bodies[b];
        buf_reset(out);
        event_pb_pods_reset(&pods);
        for (size_t i = 0; i < BATCH; i++) {
            uint64_t k = first + b * BATCH + i;
            uint64_t at = late_span ? bench_rand(rng) % late_span : k;
            bench_event(&e, k, (int)node, base_ts + at * BENCH_SPACING_NS, rng);
            join_mix(&e);
            event_batch_append_event_pods(out, &e, bench_node_name(node), &pods);
            event_clear(&e);
        }
        struct event_batch_meta meta = {.node = bench_node_name(node),
                                        .agent_instance = INSTANCE,
                                        .sequence = ++seqs[node],
                                        .sent_at_ns = bench_now_ns()};
        event_batch_append_meta(out, &meta);
        c->node[b] = node;
        c->seq[b] = meta.sequence;
    }
}

static natsMsg *make_msg(const struct chunk *c, size_t b)
{
    char subject[64], v[24];
    natsMsg *m = NULL;
    snprintf(subject, sizeof(subject), "ebpf.events.node-%u", c->node[b]);
    natsMsg_Create(&m, subject, NULL, c->bodies[b].data, (int)c->bodies[b].len);
    natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, BUS_CONTENT_TYPE_PROTOBUF);
    natsMsgHeader_Set(m, BUS_HDR_NODE, bench_node_name(c->node[b]));
    natsMsgHeader_Set(m, BUS_HDR_INSTANCE, INSTANCE);
    snprintf(v, sizeof(v), "%" PRIu64, c->seq[b]);
    natsMsgHeader_Set(m, BUS_HDR_SEQUENCE, v);
    natsMsgHeader_Set(m, BUS_HDR_EVENTS, "100");
    natsMsgHeader_Set(m, BUS_HDR_KERNEL_DROPS, "0");
    natsMsgHeader_Set(m, BUS_HDR_AGENT_DROPS, "0");
    return m;
}

static uint64_t rss_bytes(pid_t pid)
{
    char path[64], line[256];
    uint64_t kb = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %" SCNu64, &kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

/* Minor page faults of this process so far. */
static uint64_t minor_faults(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_minflt : 0;
}

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
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (uint64_t)(ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

static void chunk_init(struct chunk *c)
{
    c->bodies = calloc(CHUNK / BATCH, sizeof(*c->bodies));
    c->node = calloc(CHUNK / BATCH, sizeof(*c->node));
    c->seq = calloc(CHUNK / BATCH, sizeof(*c->seq));
    for (size_t b = 0; b < CHUNK / BATCH; b++)
        buf_init(&c->bodies[b]);
}

/*
 * CPU time of the ingest loop (total), and the split bench_emit() reports:
 * the time of each stage, summed over the batches it was taken on (split_n
 * events of them). A CPU-time read is a system call (~250 ns here), so the
 * total is read once a chunk (1,000 batches) and the stages once every
 * SPLIT_EVERY batches, prime so that every node's batches are among them
 * (batch b is node b % BENCH_NODES's): timing every stage of every batch
 * added ~12 ns to each event's total.
 */
#define SPLIT_EVERY 17

struct inproc_cpu {
    uint64_t total, decode, peers, services, joins, flows, split_n;
    uint64_t minor_faults; /* page faults the timed loop took (first touches of new memory) */
    uint64_t rejected, failed;
};

/* The aggregator's state the ingest path goes through. */
struct inproc {
    struct store *store;
    struct nodes *nodes;
    struct peers *peers;
    struct k8s_services *services;
    struct joins *joins;
    struct flows *flows;
    struct buf announcement;
    uint64_t released_ns; /* monotonic: the last join_release() */
};

/* As cmd/aggregator/join.c announces the server halves, without sending the message. */
static void join_announce(void *ctx, const struct joins_half *h, size_t n)
{
    struct inproc *a = ctx;
    buf_reset(&a->announcement);
    joins_announce_write(&a->announcement, "bench", h, n);
}

/* As cmd/aggregator/join.c's join_release(): what is done is counted in flows and stored. */
static uint64_t join_release(struct inproc *a, uint64_t now)
{
    struct event out[256];
    uint64_t failed = 0;
    size_t n;
    while ((n = joins_release(a->joins, now, out, 256)) > 0) {
        flows_add(a->flows, out, n, now);
        failed += store_add_move_batch(a->store, out, n);
    }
    return failed;
}

/*
 * Ingests events [first, first + n) of the run the way cmd/aggregator/ingest.c
 * does (decode, nodes, learning the batch's pods and naming peers, the
 * history), timing only that; encoding the batches is not counted.
 */
static void ingest_events(struct inproc *a, struct chunk *c, natsMsg **msgs, uint64_t first_event,
                          uint64_t n, uint64_t base, uint64_t late_span, uint64_t *rng,
                          struct inproc_cpu *cpu, char *err, size_t errlen)
{
    static struct peers_pod pods[PEERS_ANNOUNCE_MAX_PODS];
    static uint8_t sides[BATCH];
    for (uint64_t first = first_event; first < first_event + n; first += CHUNK) {
        chunk_encode(c, first, base, late_span, rng);
        for (size_t b = 0; b < CHUNK / BATCH; b++) {
            if (msgs[b])
                natsMsg_Destroy(msgs[b]);
            msgs[b] = make_msg(c, b);
        }
        uint64_t start = bench_cpu_ns(), faults = minor_faults();
        for (size_t b = 0; b < CHUNK / BATCH && first + b * BATCH < first_event + n; b++) {
            struct bus_batch batch = {0};
            bool split = b % SPLIT_EVERY == 0;
            uint64_t t0 = split ? bench_cpu_ns() : 0;
            if (bus_message_decode(msgs[b], &batch, err, errlen) != BUS_OK) {
                cpu->rejected++;
                continue;
            }
            uint64_t t1 = split ? bench_cpu_ns() : 0;
            uint64_t now = bench_now_ns();
            nodes_observe(a->nodes, &batch.meta, batch.n, now);
            uint64_t tp = split ? bench_cpu_ns() : 0;
            size_t np =
                peers_pods_from_events(batch.events, batch.n, now, pods, PEERS_ANNOUNCE_MAX_PODS);
            for (size_t k = 0; k < np; k++)
                peers_observe(a->peers, &pods[k]);
            peers_enrich(a->peers, batch.events, batch.n, now, true);
            uint64_t ts = split ? bench_cpu_ns() : 0;
            k8s_services_enrich(a->services, batch.events, batch.n, true, sides);
            size_t in = batch.n;
            uint64_t tj = split ? bench_cpu_ns() : 0;
            batch.n = joins_batch(a->joins, sides, batch.events, batch.n, now, join_announce, a);
            uint64_t tf = split ? bench_cpu_ns() : 0;
            flows_add(a->flows, batch.events, batch.n, now);
            if (split) {
                cpu->decode += t1 - t0;
                cpu->peers += ts - tp;
                cpu->services += tj - ts;
                cpu->joins += tf - tj;
                cpu->flows += bench_cpu_ns() - tf;
                cpu->split_n += in;
            }
            cpu->failed += store_add_move_batch(a->store, batch.events, batch.n);
            bus_batch_free(&batch);
            /* The aggregator's main loop releases them every 200 ms (cmd/aggregator/main.c). */
            if (bench_mono_ns() - a->released_ns >= 200000000ull) {
                cpu->failed += join_release(a, now);
                a->released_ns = bench_mono_ns();
            }
        }
        cpu->total += bench_cpu_ns() - start;
        cpu->minor_faults += minor_faults() - faults;
    }
}

static void emit_inproc(const char *prefix, const char *phase, const struct inproc_cpu *cpu,
                        uint64_t n, bool target)
{
    char name[128];
    snprintf(name, sizeof(name), "%s.inproc.%singest_rate_per_core", prefix, phase);
    bench_emit(name, (double)n * 1e9 / (double)cpu->total, "events/s", target ? ">=" : NULL, 1e6);
    snprintf(name, sizeof(name), "%s.inproc.%scpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->total / (double)n, "ns", NULL, 0);
    double split_n = cpu->split_n ? (double)cpu->split_n : 1.0;
    snprintf(name, sizeof(name), "%s.inproc.%sdecode_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->decode / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%sindex_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->total / (double)n - (double)cpu->decode / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%speers_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->peers / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%sservices_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->services / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%sjoins_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->joins / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%sflows_cpu_ns_per_event", prefix, phase);
    bench_emit(name, (double)cpu->flows / split_n, "ns", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.%sminor_faults_per_event", prefix, phase);
    bench_emit(name, (double)cpu->minor_faults / (double)n, "faults", NULL, 0);
}

/*
 * Three phases on one history of capacity nevents: filling it (every record
 * is new memory, so this phase also pays the kernel's first touch of each
 * page), then nevents more with the history full, as an aggregator runs once
 * its history has filled: each event added evicts the oldest one. The steady
 * phase is the ingest rate the target is for. Last, nevents / 4 late events,
 * each stamped at random within the held window (an agent whose clock
 * stepped back, a publisher sending any order): each goes into the middle of
 * its shard and of its type's time list.
 */
static int run_inproc(uint64_t nevents, const char *prefix)
{
    struct store_limits lim = {.max_events = nevents, .max_age_ns = 24ull * 3600 * 1000000000ull};
    struct inproc a = {.store = store_new(&lim),
                       .nodes = nodes_new(65536),
                       .peers = peers_new(262144, 600 * 1000000000ull, 30 * 1000000000ull)};
    /* FLOW_RETENTION, FLOW_MAX_EDGES, FLOW_METRICS_MAX_SERIES, STALE_AFTER and JOIN_WINDOW as
     * the aggregator defaults them (pkg/config.c), its bounds on Services and joins
     * (cmd/aggregator/aggregator.h). */
    a.flows = flows_new(24ull * 3600 * 1000000000ull, 1000000);
    flows_series_enable(a.flows, 10000, 30 * 1000000000ull);
    int rc = 0;
    unsetenv("KUBERNETES_SERVICE_HOST"); /* the Services come from join_services() only */
    a.services = k8s_services_new(NULL, 65536, &rc);
    a.joins = joins_new(65536, 65536, 2000000000ull);
    buf_init(&a.announcement);
    struct inproc_cpu fill = {0}, steady = {0}, late = {0};
    struct chunk c;
    natsMsg **msgs = calloc(CHUNK / BATCH, sizeof(*msgs));
    uint64_t rng = 7, base = bench_now_ns() - 2 * nevents * BENCH_SPACING_NS - 1000000000ull;
    char err[256] = "";

    if (!a.services || !a.joins || join_services(a.services, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_aggregator_ingest: the join's Services: %s\n", err);
        return 1;
    }

    chunk_init(&c);
    /* The benchmark's own input (a chunk of encoded batches and their messages) is made once
     * before the memory baseline, so the growth measured is the history's and the tables'. */
    uint64_t warm_rng = rng;
    chunk_encode(&c, 0, base, 0, &warm_rng);
    for (size_t b = 0; b < CHUNK / BATCH; b++)
        msgs[b] = make_msg(&c, b);
    memset(seqs, 0, sizeof(seqs));
    memset(join_pending, 0, sizeof(join_pending));
    uint64_t rss0 = rss_bytes(getpid());
    ingest_events(&a, &c, msgs, 0, nevents, base, 0, &rng, &fill, err, sizeof(err));
    uint64_t rss1 = rss_bytes(getpid());
    struct store_stats filled;
    store_get_stats(a.store, &filled);
    struct flows_stats filled_flows;
    flows_get_stats(a.flows, &filled_flows);
    ingest_events(&a, &c, msgs, nevents, nevents, base, 0, &rng, &steady, err, sizeof(err));
    struct store_stats ss;
    store_get_stats(a.store, &ss);
    uint64_t nlate = nevents / 4;
    ingest_events(&a, &c, msgs, 2 * nevents, nlate, base + nevents * BENCH_SPACING_NS, nevents,
                  &rng, &late, err, sizeof(err));

    /* The target is the shipped configuration's (a run under another MALLOC_CONF, say, is
     * named apart with --prefix, for comparison). */
    emit_inproc(prefix, "", &steady, nevents, strcmp(prefix, "aggregator") == 0);
    emit_inproc(prefix, "fill_", &fill, nevents, false);
    emit_inproc(prefix, "late_", &late, nlate, false);
    char name[128];
    snprintf(name, sizeof(name), "%s.inproc.stored", prefix);
    bench_emit(name, (double)ss.events, "events", NULL, 0);
    /* How the history is split: shards held after the steady phase, and made during it (a
     * shard emptied by evictions and needed again is made anew). */
    snprintf(name, sizeof(name), "%s.inproc.shards", prefix);
    bench_emit(name, (double)ss.shards, "shards", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.steady_shards_made", prefix);
    bench_emit(name, (double)(ss.shards_made - filled.shards_made), "shards", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.lost", prefix);
    bench_emit(name, (double)(2 * nevents - ss.events - ss.evicted_count), "events", NULL, 0);
    /* The join's outcome over the run: most connections to a Service meet their accept. */
    struct joins_stats js;
    joins_get_stats(a.joins, &js);
    snprintf(name, sizeof(name), "%s.inproc.joined", prefix);
    bench_emit(name, (double)js.joined, "events", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.unjoined", prefix);
    bench_emit(name, (double)(js.unjoined[JOINS_NO_SERVER_HALF] + js.unjoined[JOINS_SEVERAL]),
               "events", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.bytes_per_stored_event", prefix);
    bench_emit(name, (double)(rss1 - rss0) / (double)filled.events, "B", "<=", 200);
    /* Of which the flows' own allocations (FLOW_MAX_EDGES bounds them, not HISTORY_SIZE). */
    snprintf(name, sizeof(name), "%s.inproc.flows_bytes_per_stored_event", prefix);
    bench_emit(name, (double)filled_flows.bytes / (double)filled.events, "B", NULL, 0);
    snprintf(name, sizeof(name), "%s.inproc.index_bytes_per_stored_event", prefix);
    bench_emit(name, (double)filled.index_bytes / (double)filled.events, "B", NULL, 0);
    /* After the steady phase: with the evicted events' column entries the ring has not reached
     * yet, and the command ids not yet collected (pkg/store.c). */
    snprintf(name, sizeof(name), "%s.inproc.steady_index_bytes_per_stored_event", prefix);
    bench_emit(name, (double)ss.index_bytes / (double)ss.events, "B", NULL, 0);
    if (fill.rejected + steady.rejected + late.rejected ||
        fill.failed + steady.failed + late.failed)
        fprintf(stderr, "bench_aggregator_ingest: %" PRIu64 " rejected, %" PRIu64 " failed: %s\n",
                fill.rejected + steady.rejected + late.rejected,
                fill.failed + steady.failed + late.failed, err);

    for (size_t b = 0; b < CHUNK / BATCH; b++) {
        natsMsg_Destroy(msgs[b]);
        buf_free(&c.bodies[b]);
    }
    free(msgs);
    store_free(a.store);
    flows_free(a.flows);
    joins_free(a.joins);
    k8s_services_free(a.services);
    peers_free(a.peers);
    nodes_free(a.nodes);
    buf_free(&a.announcement);
    return 0;
}

/*
 * Events the aggregator at addr has ingested, across replicas (/api/stats
 * total_events: cheap to answer, so polling it costs the aggregator little
 * next to what it measures, unlike a history query).
 */
static double stored_count(struct bench_http *h, struct buf *body)
{
    if (bench_http_get(h, "/api/stats", body) != 200)
        return -1;
    return bench_json_number(body->data, "total_events");
}

static int run_nats(const char *url, const char *http, pid_t *pids, int npids, uint64_t nevents,
                    const char *prefix, bool publish_only, double rate)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s != NATS_OK) {
        fprintf(stderr, "bench_aggregator_ingest: NATS %s: %s\n", url, natsStatus_GetText(s));
        return 1;
    }
    struct bench_http h;
    struct buf body;
    buf_init(&body);
    if (bench_http_open(&h, http) < 0) {
        fprintf(stderr, "bench_aggregator_ingest: bad --http %s\n", http);
        return 1;
    }
    double before = stored_count(&h, &body);
    if (before < 0) {
        fprintf(stderr, "bench_aggregator_ingest: no aggregator API at %s\n", http);
        return 1;
    }

    /* Everything is encoded up front, so publishing is only the transport. */
    size_t nchunks = (nevents + CHUNK - 1) / CHUNK;
    struct chunk *cs = calloc(nchunks, sizeof(*cs));
    uint64_t rng = 11, base = bench_now_ns() - nevents * BENCH_SPACING_NS - 1000000000ull;
    /* Newer than anything held, so a run after another appends instead of inserting in the middle.
     */
    double newest = bench_http_get(&h, "/api/events?limit=1", &body) == 200
                        ? bench_json_number(body.data, "timestamp")
                        : -1;
    if (newest > 0 && (uint64_t)newest + BENCH_SPACING_NS > base)
        base = (uint64_t)newest + BENCH_SPACING_NS;
    for (size_t k = 0; k < nchunks; k++) {
        chunk_init(&cs[k]);
        chunk_encode(&cs[k], k * CHUNK, base, 0, &rng);
    }

    uint64_t rss0 = 0, cpu0 = 0;
    for (int i = 0; i < npids; i++) {
        rss0 += rss_bytes(pids[i]);
        cpu0 += proc_cpu_ns(pids[i]);
    }
    uint64_t t0 = bench_mono_ns(), sent = 0;
    for (size_t k = 0; k < nchunks; k++) {
        for (size_t b = 0; b < CHUNK / BATCH && sent < nevents; b++, sent += BATCH) {
            if (rate > 0) {
                /* Paced: never ahead of rate events/s since the start. */
                uint64_t due = t0 + (uint64_t)((double)sent * 1e9 / rate);
                uint64_t now = bench_mono_ns();
                if (due > now + 200000)
                    usleep((useconds_t)((due - now) / 1000));
            }
            natsMsg *m = make_msg(&cs[k], b);
            s = natsConnection_PublishMsg(nc, m);
            natsMsg_Destroy(m);
            if (s != NATS_OK) {
                fprintf(stderr, "bench_aggregator_ingest: publish: %s\n", natsStatus_GetText(s));
                break;
            }
        }
    }
    natsConnection_FlushTimeout(nc, 60000);
    uint64_t t_pub = bench_mono_ns() - t0;

    /* Wait until the stored count reaches what was sent or stops moving for a second. */
    double got = before, last = -1;
    uint64_t t_last_change = bench_mono_ns(), t_done = t_last_change;
    while (got - before < (double)sent) {
        got = stored_count(&h, &body);
        uint64_t now = bench_mono_ns();
        if (got != last) {
            last = got;
            t_last_change = now;
            t_done = now;
        } else if (now - t_last_change > 1000000000ull) {
            break;
        }
        usleep(100000); /* each poll is a request the aggregator serves: poll gently */
    }
    uint64_t cpu1 = 0, rss1 = 0;
    for (int i = 0; i < npids; i++) {
        rss1 += rss_bytes(pids[i]);
        cpu1 += proc_cpu_ns(pids[i]);
    }
    double stored = got - before;

    char name[128];
    if (!publish_only) {
        snprintf(name, sizeof(name), "%s.publish_rate", prefix);
        bench_emit(name, (double)sent * 1e9 / (double)t_pub, "events/s", NULL, 0);
        snprintf(name, sizeof(name), "%s.ingest_wall_rate", prefix);
        bench_emit(name, stored * 1e9 / (double)(t_done - t0), "events/s", NULL, 0);
        snprintf(name, sizeof(name), "%s.ingest_rate_per_core", prefix);
        bench_emit(name, stored * 1e9 / (double)(cpu1 - cpu0 ? cpu1 - cpu0 : 1), "events/s",
                   ">=", 1e6);
        snprintf(name, sizeof(name), "%s.sent", prefix);
        bench_emit(name, (double)sent, "events", NULL, 0);
        snprintf(name, sizeof(name), "%s.lost", prefix);
        bench_emit(name, (double)sent - stored, "events", NULL, 0);
        snprintf(name, sizeof(name), "%s.bytes_per_stored_event", prefix);
        bench_emit(name, ((double)rss1 - (double)rss0) / stored, "B", "<=", 200);
    } else {
        fprintf(stderr, "bench_aggregator_ingest: sent %" PRIu64 ", stored %.0f\n", sent, stored);
    }

    for (size_t k = 0; k < nchunks; k++) {
        for (size_t b = 0; b < CHUNK / BATCH; b++)
            buf_free(&cs[k].bodies[b]);
        free(cs[k].bodies);
        free(cs[k].node);
        free(cs[k].seq);
    }
    free(cs);
    buf_free(&body);
    bench_http_close(&h);
    natsConnection_Destroy(nc);
    return stored == (double)sent ? 0 : 3;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *http = NULL, *prefix = "aggregator";
    pid_t pids[4];
    int npids = 0;
    bool inproc = false, publish_only = false;
    double rate = 0;
    uint64_t nevents = 1000000;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--inproc"))
            inproc = true;
        else if (!strcmp(argv[i], "--no-join"))
            with_join = false;
        else if (!strcmp(argv[i], "--publish-only"))
            publish_only = true;
        else if (!strcmp(argv[i], "--nats") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--http") && i + 1 < argc)
            http = argv[++i];
        else if (!strcmp(argv[i], "--pid") && i + 1 < argc && npids < 4)
            pids[npids++] = (pid_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--events") && i + 1 < argc)
            nevents = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--prefix") && i + 1 < argc)
            prefix = argv[++i];
        else
            goto usage;
    }
    nats_Open(-1);
    nevents = (nevents + BATCH - 1) / BATCH * BATCH;
    if (nevents == 0)
        goto usage;
    if (inproc)
        return run_inproc(nevents, prefix);
    if (url && http && npids)
        return run_nats(url, http, pids, npids, nevents, prefix, publish_only, rate);
usage:
    fprintf(stderr,
            "usage: %s (--inproc | --nats URL --http ADDR --pid PID [--pid PID]) [--events N]"
            " [--rate R] [--prefix NAME] [--publish-only] [--no-join]\n",
            argv[0]);
    return 2;
}

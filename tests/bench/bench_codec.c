/*
 * A/B benchmark of the two protobuf codecs (pkg/event_pb_fast.c against
 * pkg/event_pb_ref.c, which is protobuf-c) on the agent's real batch
 * format: batches of the agent's default size (100 events) from one node,
 * the realistic event mix of bench_aggregator_events.h with every event
 * attributed to one of the node's pods, and the per-batch pod table the
 * publisher writes (each attribution once, events refer to it by index).
 *
 *   encode  fast: event_batch_append_event_pods() + event_batch_append_meta(),
 *                 as pkg/publisher.c does;
 *           protobuf-c: the same EventBatch (pod table, pod_ref) filled with
 *                 event_pb_from_event() and packed by protobuf-c.
 *   decode  both decode the same bytes (the fast encoder's):
 *           event_batch_decode_fast() against event_batch_decode_generic(),
 *           each including the release of the decoded events.
 *
 * Before timing, both encodings are decoded by both decoders and must give
 * the same events; a run where they do not is reported as invalid (exit 1).
 * Times are this process's CPU time (the benchmark is single-threaded, so
 * other work on a shared machine does not count against it), the best of
 * several rounds over the whole pool of batches.
 *
 * Usage: bench_codec [--quick] [--batch N] [--rounds R]
 *
 * Output, on stdout, one JSON object per line (diagnostics go to stderr):
 *   {"bench":"codec","case":"encode"|"decode","codec":"fast"|"protobuf-c",
 *    "batch_events":100,"events":50000,"rounds":7,
 *    "events_per_s":..., "ns_per_event":..., "bytes_per_event":...}
 *       one per case and codec: events is how many events one round
 *       encodes or decodes; events_per_s and ns_per_event are from the
 *       fastest round; bytes_per_event is the encoded size of the batches
 *       (metadata and pod tables included) over their events.
 *   {"bench":"codec","case":"encode"|"decode","speedup":...,"valid":true}
 *       one per case: the fast codec's events_per_s over protobuf-c's; valid
 *       says the two codecs agreed on every event of the pool.
 *   {"bench":"codec","valid":false}
 *       instead of any figure when they did not (and exit status 1).
 * --quick runs one short round on a small pool (for `make bench
 * BENCH_ARGS=--quick`); a default run takes about a second.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_aggregator_events.h"
#include "buf.h"
#include "event_pb.h"

#define NODE_INDEX 3 /* the agent's node in the mix */
#define INSTANCE   "5f0c3a9e1d2b4c68"
#define MAX_BATCH  1000 /* events per batch this benchmark accepts */

struct pool {
    size_t nbatches, batch;
    struct event *events; /* nbatches * batch */
    struct buf *wire;     /* per batch, as the fast encoder writes it */
    struct buf *wire_ref; /* per batch, as protobuf-c writes it */
    struct buf scratch;   /* encode target while timing */
    const char *node;
};

struct result {
    double events_per_s, ns_per_event, bytes_per_event;
};

static struct event_batch_meta batch_meta(const struct pool *p, size_t b)
{
    return (struct event_batch_meta){
        .node = p->node,
        .agent_instance = INSTANCE,
        .sequence = b + 1,
        .kernel_drops = 12,
        .agent_drops = 3,
        .sent_at_ns = 1795698266000000000ull + b * 1000000ull,
    };
}

/* ---- the two encoders ---- */

static int encode_fast(const struct pool *p, size_t b, struct buf *out)
{
    static struct event_pb_pods pods;
    struct event_batch_meta meta = batch_meta(p, b);
    const struct event *ev = &p->events[b * p->batch];
    event_pb_pods_reset(&pods);
    buf_reset(out);
    for (size_t i = 0; i < p->batch; i++)
        if (event_batch_append_event_pods(out, &ev[i], meta.node, &pods) != 0)
            return -1;
    return event_batch_append_meta(out, &meta);
}

/* One pod-table entry per distinct attribution, compared by pointer as the fast encoder does. */
static bool k8s_same(const struct event_k8s *a, const struct event_k8s *b)
{
    return a->node_name == b->node_name && a->pod_name == b->pod_name &&
           a->namespace == b->namespace && a->container_id == b->container_id &&
           a->pod_uid == b->pod_uid && a->workload == b->workload &&
           a->workload_kind == b->workload_kind && a->app == b->app && a->ips == b->ips &&
           a->host_network == b->host_network;
}

static char *pb_str(const char *s)
{
    return (char *)(s ? s : protobuf_c_empty_string);
}

/*
 * The same EventBatch through protobuf-c: every event filled by
 * event_pb_from_event(), the attribution moved to a pod table (found by
 * pointer, as the fast encoder does), then packed.
 */
static int encode_ref(const struct pool *p, size_t b, struct buf *out)
{
    enum { PODS = EVENT_PB_PODS_MAX };
    static Ebpfmonitor__Event msgs[MAX_BATCH], *ptrs[MAX_BATCH];
    static struct event_pb_scratch scratch[MAX_BATCH];
    static Ebpfmonitor__PodRef pod_msgs[PODS], *pod_ptrs[PODS];
    static struct event_pb_pod_scratch pod_scratch[PODS];
    static struct event_k8s pods[PODS];
    static const struct event_k8s none;
    struct event_batch_meta meta = batch_meta(p, b);
    const struct event *ev = &p->events[b * p->batch];
    size_t npods = 0, n = p->batch;
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        if ((rc = event_pb_from_event(&ev[i], meta.node, &msgs[i], &scratch[i])) != 0)
            break;
        ptrs[i] = &msgs[i];
        const struct event_k8s *k = &ev[i].k8s;
        if (k8s_same(k, &none))
            continue;
        size_t ref = 0;
        while (ref < npods && !k8s_same(&pods[ref], k))
            ref++;
        if (ref == npods && npods < PODS) {
            pods[npods] = *k;
            if ((rc = event_pb_podref_from_k8s(k, &pod_msgs[npods], &pod_scratch[npods])) != 0)
                break;
            pod_ptrs[npods] = &pod_msgs[npods];
            npods++;
        }
        if (ref < npods) {
            msgs[i].pod_ref = (uint32_t)ref + 1;
            msgs[i].k8s_node_name = msgs[i].k8s_pod_name = msgs[i].k8s_namespace =
                msgs[i].k8s_container_id = msgs[i].k8s_pod_uid = msgs[i].k8s_workload =
                    msgs[i].k8s_workload_kind = pb_str(NULL);
        }
    }
    if (rc == 0) {
        Ebpfmonitor__EventBatch batch = EBPFMONITOR__EVENT_BATCH__INIT;
        batch.node = pb_str(meta.node);
        batch.agent_instance = pb_str(meta.agent_instance);
        batch.sequence = meta.sequence;
        batch.n_events = n;
        batch.events = ptrs;
        batch.kernel_drops = meta.kernel_drops;
        batch.agent_drops = meta.agent_drops;
        batch.sent_at_ns = meta.sent_at_ns;
        batch.agent_pod_name = batch.agent_pod_namespace = pb_str(NULL);
        batch.n_pods = npods;
        batch.pods = pod_ptrs;
        size_t size = ebpfmonitor__event_batch__get_packed_size(&batch);
        buf_reset(out);
        if (!buf_reserve(out, size))
            rc = -ENOMEM;
        else
            out->len = ebpfmonitor__event_batch__pack(&batch, (uint8_t *)out->data);
    }
    for (size_t i = 0; i < n; i++)
        event_pb_scratch_release(&scratch[i]);
    for (size_t i = 0; i < npods; i++)
        event_pb_pod_scratch_release(&pod_scratch[i]);
    return rc;
}

/* ---- the two decoders ---- */

typedef int (*decode_fn)(const uint8_t *, size_t, struct event_batch_meta *, struct event **,
                         size_t *, char *, size_t);

static int decode_release(decode_fn decode, const struct buf *wire)
{
    struct event_batch_meta meta;
    struct event *ev;
    size_t n;
    if (decode((const uint8_t *)wire->data, wire->len, &meta, &ev, &n, NULL, 0) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        event_clear(&ev[i]);
    free(ev);
    return (int)n;
}

/* ---- set-up and the agreement check ---- */

static int pool_init(struct pool *p, size_t nbatches, size_t batch)
{
    uint64_t rng = 0x5eed;
    p->nbatches = nbatches;
    p->batch = batch;
    p->node = bench_node_name(NODE_INDEX);
    p->events = calloc(nbatches * batch, sizeof(*p->events));
    p->wire = calloc(nbatches, sizeof(*p->wire));
    p->wire_ref = calloc(nbatches, sizeof(*p->wire_ref));
    if (!p->events || !p->wire || !p->wire_ref)
        return -ENOMEM;
    buf_init(&p->scratch);
    uint64_t ts = 1795698266000000000ull;
    for (size_t i = 0; i < nbatches * batch; i++)
        bench_event_mix(&p->events[i], i, NODE_INDEX, ts + i * 1000, &rng, 1);
    for (size_t b = 0; b < nbatches; b++) {
        buf_init(&p->wire[b]);
        buf_init(&p->wire_ref[b]);
        if (encode_fast(p, b, &p->wire[b]) != 0 || encode_ref(p, b, &p->wire_ref[b]) != 0)
            return -EINVAL;
    }
    return 0;
}

static void pool_free(struct pool *p)
{
    for (size_t i = 0; p->events && i < p->nbatches * p->batch; i++)
        event_clear(&p->events[i]);
    for (size_t b = 0; p->wire && p->wire_ref && b < p->nbatches; b++) {
        buf_free(&p->wire[b]);
        buf_free(&p->wire_ref[b]);
    }
    buf_free(&p->scratch);
    free(p->events);
    free(p->wire);
    free(p->wire_ref);
}

/* Both encodings of every batch, through both decoders, give back the pool's events. */
static bool codecs_agree(const struct pool *p)
{
    decode_fn decoders[] = {event_batch_decode_fast, event_batch_decode_generic};
    const struct buf *wires[] = {p->wire, p->wire_ref};
    bool ok = true;
    for (size_t b = 0; ok && b < p->nbatches; b++) {
        for (int w = 0; ok && w < 2; w++) {
            for (int d = 0; ok && d < 2; d++) {
                struct event_batch_meta meta;
                struct event *ev;
                size_t n;
                char err[256] = "";
                if (decoders[d]((const uint8_t *)wires[w][b].data, wires[w][b].len, &meta, &ev, &n,
                                err, sizeof(err)) != 0) {
                    fprintf(stderr, "bench_codec: batch %zu (%s encoder, %s decoder): %s\n", b,
                            w ? "protobuf-c" : "fast", d ? "protobuf-c" : "fast",
                            *err ? err : "declined");
                    return false;
                }
                ok = n == p->batch && meta.rejected_events == 0 && meta.sequence == b + 1;
                for (size_t i = 0; ok && i < n; i++)
                    ok = event_equal(&ev[i], &p->events[b * p->batch + i]);
                if (!ok)
                    fprintf(stderr, "bench_codec: batch %zu (%s encoder, %s decoder) differs\n", b,
                            w ? "protobuf-c" : "fast", d ? "protobuf-c" : "fast");
                for (size_t i = 0; i < n; i++)
                    event_clear(&ev[i]);
                free(ev);
            }
        }
    }
    return ok;
}

/* ---- timing ---- */

enum codec { FAST, REF };
static const char *const codec_name[] = {"fast", "protobuf-c"};

/* One round over the pool; its CPU time in ns, 0 on failure. */
static uint64_t round_ns(struct pool *p, bool encode, enum codec c)
{
    uint64_t t0 = bench_cpu_ns();
    for (size_t b = 0; b < p->nbatches; b++) {
        int rc = encode ? (c == FAST ? encode_fast : encode_ref)(p, b, &p->scratch)
                        : decode_release(c == FAST ? event_batch_decode_fast
                                                   : event_batch_decode_generic,
                                         &p->wire[b]);
        if (rc < 0)
            return 0;
    }
    uint64_t t = bench_cpu_ns() - t0;
    return t ? t : 1;
}

static size_t wire_bytes(const struct pool *p, enum codec c)
{
    size_t n = 0;
    for (size_t b = 0; b < p->nbatches; b++)
        n += (c == FAST ? p->wire : p->wire_ref)[b].len;
    return n;
}

static int measure(struct pool *p, bool encode, enum codec c, int rounds, struct result *r)
{
    uint64_t best = 0;
    for (int i = 0; i < rounds; i++) {
        uint64_t t = round_ns(p, encode, c);
        if (!t)
            return -1;
        if (!best || t < best)
            best = t;
    }
    double events = (double)(p->nbatches * p->batch);
    r->ns_per_event = (double)best / events;
    r->events_per_s = events * 1e9 / (double)best;
    /* Decoding reads the fast encoder's bytes whichever decoder runs. */
    r->bytes_per_event = (double)wire_bytes(p, encode ? c : FAST) / events;
    printf("{\"bench\":\"codec\",\"case\":\"%s\",\"codec\":\"%s\",\"batch_events\":%zu,"
           "\"events\":%zu,\"rounds\":%d,\"events_per_s\":%.0f,\"ns_per_event\":%.1f,"
           "\"bytes_per_event\":%.1f}\n",
           encode ? "encode" : "decode", codec_name[c], p->batch, p->nbatches * p->batch, rounds,
           r->events_per_s, r->ns_per_event, r->bytes_per_event);
    fflush(stdout);
    return 0;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--quick] [--batch N (1..%d)] [--rounds R (1..100)]\n", argv0,
            MAX_BATCH);
    return 2;
}

int main(int argc, char **argv)
{
    size_t batch = 100, events = 50000;
    int rounds = 7;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            events = 2000;
            rounds = 1;
        } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            batch = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }
    if (batch < 1 || batch > MAX_BATCH || rounds < 1 || rounds > 100)
        return usage(argv[0]);

    struct pool p = {0};
    size_t nbatches = events / batch ? events / batch : 1;
    if (pool_init(&p, nbatches, batch) != 0) {
        fprintf(stderr, "bench_codec: building the batches failed\n");
        pool_free(&p);
        return 1;
    }
    bool valid = codecs_agree(&p);
    int rc = valid ? 0 : 1;
    for (int encode = 1; encode >= 0 && rc == 0; encode--) {
        struct result fast, ref;
        if (measure(&p, encode, FAST, rounds, &fast) != 0 ||
            measure(&p, encode, REF, rounds, &ref) != 0) {
            fprintf(stderr, "bench_codec: %s failed\n", encode ? "encoding" : "decoding");
            rc = 1;
            break;
        }
        printf("{\"bench\":\"codec\",\"case\":\"%s\",\"speedup\":%.2f,\"valid\":%s}\n",
               encode ? "encode" : "decode", fast.events_per_s / ref.events_per_s,
               valid ? "true" : "false");
        fflush(stdout);
    }
    if (!valid)
        printf("{\"bench\":\"codec\",\"valid\":false}\n"); /* and no figures */
    pool_free(&p);
    return rc;
}

/*
 * Transport benchmark (issue 5, item 3): the agent's publisher
 * (pkg/publisher.h, fed pre-built events in-process) against a bare nats.c
 * publisher sending the same pre-encoded batches, on a real nats-server; and
 * the bytes per event on the wire for protobuf and JSON at several batch
 * sizes next to the seed's one-JSON-object-per-event format.
 *
 * Two mixes: "k8s" (every event attributed to a pod, as on a cluster node)
 * and "vm" (no attribution). The seed baseline carries the same attribution
 * as JSON keys, so each ratio compares like with like. Protobuf is measured
 * as the agent sends it (a per-batch pod table) and, for reference, with the
 * attribution inline on every event ("protobuf_inline", the older layout).
 *
 * Usage: bench_transport --nats URL [--events N] [--rounds R] [--server-pid PID]
 * (with the nats-server's PID, CPU per event includes the server's share).
 * Prints one JSON line per measurement (see bench_emit()).
 */
#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_aggregator_events.h"
#include "buf.h"
#include "bus.h"
#include "config.h"
#include "event_json.h"
#include "event_pb.h"
#include "publisher.h"

#define POOL      20000 /* distinct events, cycled */
#define NODE_NAME "node-0"
#define INSTANCE  "5f0c3a9e1d2b4c68"
#define SUBJECT   "ebpf.events.node-0"

enum pb_layout { PB_PODS, PB_INLINE };

static struct event pool_k8s[POOL], pool_vm[POOL];
static int server_pid; /* 0 = unknown */

/* CPU time of this process plus the nats-server's (ns; the server's in clock ticks). */
static uint64_t pipeline_cpu_ns(void)
{
    uint64_t ns = bench_cpu_ns();
    if (server_pid > 0) {
        char path[64], line[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", server_pid);
        FILE *f = fopen(path, "r");
        if (f && fgets(line, sizeof(line), f)) {
            const char *p = strrchr(line, ')');
            unsigned long long ut = 0, st = 0;
            /* Fields 14 and 15 (utime, stime), counting from the state field (3) after ')'. */
            if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                            &st) == 2)
                ns += (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
        }
        if (f)
            fclose(f);
    }
    return ns;
}

/* Encoder cost alone, hand-written against protobuf-c's packer, on the same events. */
static void encode_cost(const struct event *pool, const char *mix)
{
    static struct event_pb_pods pods;
    const size_t n = 400000;
    struct buf b;
    char name[128];
    buf_init(&b);
    for (int mode = 0; mode < 2; mode++) {
        uint64_t t0 = bench_cpu_ns();
        for (size_t i = 0; i < n; i += 100) {
            buf_reset(&b);
            event_pb_pods_reset(&pods);
            for (size_t j = 0; j < 100; j++) {
                const struct event *e = &pool[(i + j) % POOL];
                if (mode == 0) {
                    event_batch_append_event_pods(&b, e, NODE_NAME, &pods);
                    continue;
                }
                Ebpfmonitor__Event m;
                struct event_pb_scratch sc;
                event_pb_from_event(e, NODE_NAME, &m, &sc);
                size_t len = ebpfmonitor__event__get_packed_size(&m);
                buf_reserve(&b, len + 11);
                uint8_t *p = (uint8_t *)b.data + b.len;
                *p++ = 0x22;
                size_t v = len, h = 1;
                for (; v >= 0x80; v >>= 7, h++)
                    *p++ = (uint8_t)(v | 0x80);
                *p++ = (uint8_t)v;
                ebpfmonitor__event__pack(&m, p);
                b.len += h + 1 + len;
                event_pb_scratch_release(&sc);
            }
        }
        snprintf(name, sizeof(name), "transport.%s.encode_ns_per_event.%s", mix,
                 mode ? "protobuf_c" : "protobuf");
        bench_emit(name, (double)(bench_cpu_ns() - t0) / (double)n, "ns", NULL, 0);
    }
    buf_free(&b);
}

/* Bytes of "NATS/1.0\r\nKey: value\r\n...\r\n" for the publisher's headers. */
static size_t header_bytes(const char *ctype, uint64_t seq, uint64_t nev)
{
    char v[32];
    size_t n = strlen("NATS/1.0\r\n") + 2;
    n += strlen(BUS_HDR_CONTENT_TYPE) + 4 + strlen(ctype);
    n += strlen(BUS_HDR_NODE) + 4 + strlen(NODE_NAME);
    n += strlen(BUS_HDR_INSTANCE) + 4 + strlen(INSTANCE);
    n += strlen(BUS_HDR_SEQUENCE) + 4 + (size_t)snprintf(v, sizeof(v), "%" PRIu64, seq);
    n += strlen(BUS_HDR_EVENTS) + 4 + (size_t)snprintf(v, sizeof(v), "%" PRIu64, nev);
    n += strlen(BUS_HDR_KERNEL_DROPS) + 4 + 1;
    n += strlen(BUS_HDR_AGENT_DROPS) + 4 + 1;
    return n;
}

/* "HPUB <subject> <hdr> <total>\r\n" ... "\r\n": the protocol framing of one message. */
static size_t framing_bytes(size_t hdr, size_t payload, bool with_headers)
{
    char line[128];
    int n = with_headers
                ? snprintf(line, sizeof(line), "HPUB %s %zu %zu\r\n", SUBJECT, hdr, hdr + payload)
                : snprintf(line, sizeof(line), "PUB %s %zu\r\n", SUBJECT, payload);
    return (size_t)n + 2;
}

static void encode_batch(const struct event *pool, enum config_encoding enc, enum pb_layout layout,
                         size_t first, size_t n, uint64_t seq, struct buf *out)
{
    static struct event_pb_pods pods;
    buf_reset(out);
    if (enc == CONFIG_ENCODING_JSON) {
        for (size_t i = 0; i < n; i++) {
            event_json_write(out, &pool[(first + i) % POOL]);
            buf_putc(out, '\n');
        }
        return;
    }
    event_pb_pods_reset(&pods);
    for (size_t i = 0; i < n; i++) {
        if (layout == PB_PODS)
            event_batch_append_event_pods(out, &pool[(first + i) % POOL], NODE_NAME, &pods);
        else
            event_batch_append_event(out, &pool[(first + i) % POOL], NODE_NAME);
    }
    struct event_batch_meta meta = {.node = NODE_NAME,
                                    .agent_instance = INSTANCE,
                                    .sequence = seq,
                                    .sent_at_ns = bench_now_ns()};
    event_batch_append_meta(out, &meta);
}

static void wire_sizes(const struct event *pool, const char *mix)
{
    static const unsigned sizes[] = {1, 10, 100, 1000};
    struct buf b;
    char name[128];
    buf_init(&b);

    double seed = 0;
    for (size_t i = 0; i < POOL; i++)
        seed += (double)bench_seed_json_len(&pool[i]);
    seed /= POOL;
    snprintf(name, sizeof(name), "transport.%s.bytes_per_event.seed_json.payload", mix);
    bench_emit(name, seed, "B", NULL, 0);
    double seed_wire = seed + (double)framing_bytes(0, (size_t)seed, false);
    snprintf(name, sizeof(name), "transport.%s.bytes_per_event.seed_json.wire", mix);
    bench_emit(name, seed_wire, "B", NULL, 0);

    for (int enc = 0; enc < 3; enc++) {
        enum config_encoding e = enc == 2 ? CONFIG_ENCODING_JSON : CONFIG_ENCODING_PROTOBUF;
        enum pb_layout layout = enc == 1 ? PB_INLINE : PB_PODS;
        const char *ename = enc == 2 ? "json" : enc == 1 ? "protobuf_inline" : "protobuf";
        const char *ctype = enc == 2 ? BUS_CONTENT_TYPE_JSON : BUS_CONTENT_TYPE_PROTOBUF;
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            size_t bs = sizes[k], total = 0, wire = 0, nev = 0;
            uint64_t seq = 1000;
            for (size_t first = 0; first + bs <= POOL; first += bs, seq++) {
                encode_batch(pool, e, layout, first, bs, seq, &b);
                size_t hdr = header_bytes(ctype, seq, bs);
                total += b.len;
                wire += b.len + hdr + framing_bytes(hdr, b.len, true);
                nev += bs;
            }
            double payload = (double)total / (double)nev;
            snprintf(name, sizeof(name), "transport.%s.bytes_per_event.%s.batch%zu.payload", mix,
                     ename, bs);
            bench_emit(name, payload, "B", NULL, 0);
            snprintf(name, sizeof(name), "transport.%s.bytes_per_event.%s.batch%zu.wire", mix,
                     ename, bs);
            bench_emit(name, (double)wire / (double)nev, "B", NULL, 0);
            if (e == CONFIG_ENCODING_PROTOBUF && bs == 100) {
                /* The target applies to what the agent sends; the inline layout is context. */
                const char *cmp = layout == PB_PODS ? "<=" : NULL;
                snprintf(name, sizeof(name), "transport.%s.%s_batch100_vs_seed_json.payload", mix,
                         ename);
                bench_emit(name, payload / seed, "ratio", cmp, 0.25);
                snprintf(name, sizeof(name), "transport.%s.%s_batch100_vs_seed_json.wire", mix,
                         ename);
                bench_emit(name, (double)wire / (double)nev / seed_wire, "ratio", cmp, 0.25);
            }
        }
    }
    buf_free(&b);
}

/* The bare publisher: the same batches, pre-encoded, with the same headers. */
static double raw_rate(natsConnection *nc, const struct event *pool, enum config_encoding enc,
                       size_t nevents)
{
    const size_t bs = 100, nb = POOL / bs;
    struct buf *batches = calloc(nb, sizeof(*batches));
    const char *ctype =
        enc == CONFIG_ENCODING_JSON ? BUS_CONTENT_TYPE_JSON : BUS_CONTENT_TYPE_PROTOBUF;
    for (size_t i = 0; i < nb; i++) {
        buf_init(&batches[i]);
        encode_batch(pool, enc, PB_PODS, i * bs, bs, i + 1, &batches[i]);
    }
    uint64_t t0 = bench_mono_ns();
    char v[24];
    for (size_t sent = 0, i = 0; sent < nevents; sent += bs, i++) {
        struct buf *b = &batches[i % nb];
        natsMsg *m = NULL;
        natsMsg_Create(&m, SUBJECT, NULL, b->data, (int)b->len);
        natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, ctype);
        natsMsgHeader_Set(m, BUS_HDR_NODE, NODE_NAME);
        natsMsgHeader_Set(m, BUS_HDR_INSTANCE, INSTANCE);
        snprintf(v, sizeof(v), "%zu", i + 1);
        natsMsgHeader_Set(m, BUS_HDR_SEQUENCE, v);
        natsMsgHeader_Set(m, BUS_HDR_EVENTS, "100");
        natsMsgHeader_Set(m, BUS_HDR_KERNEL_DROPS, "0");
        natsMsgHeader_Set(m, BUS_HDR_AGENT_DROPS, "0");
        natsStatus s = natsConnection_PublishMsg(nc, m);
        natsMsg_Destroy(m);
        if (s != NATS_OK) {
            fprintf(stderr, "bench_transport: publish: %s\n", natsStatus_GetText(s));
            break;
        }
    }
    natsConnection_FlushTimeout(nc, 30000);
    uint64_t dt = bench_mono_ns() - t0;
    for (size_t i = 0; i < nb; i++)
        buf_free(&batches[i]);
    free(batches);
    return (double)nevents * 1e9 / (double)dt;
}

/* The agent's publisher, fed the same events one by one (it encodes as it goes). */
static double agent_rate(struct bus *bus, const struct event *pool, enum config_encoding enc,
                         size_t nevents, uint64_t *dropped)
{
    struct publisher_config pc = {
        .node = NODE_NAME,
        .subject = SUBJECT,
        .encoding = enc,
        .batch_size = 100,
        .flush_interval_ns = 1000000000ull,
        .outage_buffer_bytes = 256ull << 20,
    };
    char err[256];
    struct publisher *p = publisher_new(bus, &pc, err, sizeof(err));
    if (!p) {
        fprintf(stderr, "bench_transport: publisher: %s\n", err);
        exit(1);
    }
    uint64_t t0 = bench_mono_ns();
    for (size_t i = 0; i < nevents; i++)
        publisher_add(p, &pool[i % POOL]);
    if (publisher_flush(p, 60ull * 1000000000ull) < 0)
        fprintf(stderr, "bench_transport: publisher flush timed out\n");
    uint64_t dt = bench_mono_ns() - t0;
    struct publisher_stats st;
    publisher_get_stats(p, &st);
    *dropped = st.events_dropped;
    publisher_free(p);
    return (double)nevents * 1e9 / (double)dt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    size_t nevents = 1000000;
    int rounds = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--nats") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--events") && i + 1 < argc)
            nevents = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--server-pid") && i + 1 < argc)
            server_pid = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --nats URL [--events N] [--rounds R]\n", argv[0]);
            return 2;
        }
    }
    if (!url || rounds < 1 || rounds > 15) {
        fprintf(stderr, "usage: %s --nats URL [--events N] [--rounds R]\n", argv[0]);
        return 2;
    }
    nevents = (nevents + 99) / 100 * 100;

    uint64_t rng = 42, ts = bench_now_ns() - POOL * 1000ull;
    for (size_t i = 0; i < POOL; i++)
        bench_event_mix(&pool_k8s[i], i, 0, ts + i * 1000, &rng, 1);
    rng = 42;
    for (size_t i = 0; i < POOL; i++)
        bench_event_mix(&pool_vm[i], i, 0, ts + i * 1000, &rng, 0);

    wire_sizes(pool_k8s, "k8s");
    wire_sizes(pool_vm, "vm");
    encode_cost(pool_k8s, "k8s");
    encode_cost(pool_vm, "vm");

    setenv("NATS_URL", url, 1);
    setenv("NODE_NAME", NODE_NAME, 1);
    struct config cfg;
    char err[512];
    char *cargv[] = {argv[0], NULL};
    if (config_load(&cfg, CONFIG_AGENT, 1, cargv, err, sizeof(err)) != CONFIG_OK) {
        fprintf(stderr, "bench_transport: config: %s\n", err);
        return 1;
    }
    struct bus *bus = bus_open(&cfg, "bench-transport", err, sizeof(err));
    if (!bus || !bus_connected(bus)) {
        fprintf(stderr, "bench_transport: NATS at %s: %s\n", url, bus ? "not connected" : err);
        return 1;
    }

    /* protobuf k8s (the target), protobuf vm, json k8s. */
    for (int run = 0; run < 3; run++) {
        enum config_encoding e = run == 2 ? CONFIG_ENCODING_JSON : CONFIG_ENCODING_PROTOBUF;
        const struct event *pool = run == 1 ? pool_vm : pool_k8s;
        const char *ename = run == 2 ? "json" : run == 1 ? "protobuf.vm" : "protobuf";
        int enc = run != 0; /* the target applies to the k8s protobuf run */
        double raw[15], agent[15], ratio[15];
        uint64_t dropped = 0, d, cpu_raw = 0, cpu_agent = 0;
        /* Alternate the two so drift on the machine hits both alike. */
        for (int r = 0; r < rounds; r++) {
            uint64_t c0 = pipeline_cpu_ns();
            raw[r] = raw_rate(bus_conn(bus), pool, e, nevents);
            uint64_t c1 = pipeline_cpu_ns();
            agent[r] = agent_rate(bus, pool, e, nevents, &d);
            cpu_raw += c1 - c0;
            cpu_agent += pipeline_cpu_ns() - c1;
            ratio[r] = agent[r] / raw[r];
            dropped += d;
        }
        qsort(raw, (size_t)rounds, sizeof(double), cmp_double);
        qsort(agent, (size_t)rounds, sizeof(double), cmp_double);
        qsort(ratio, (size_t)rounds, sizeof(double), cmp_double);
        char name[96];
        snprintf(name, sizeof(name), "transport.raw_publish_rate.%s.batch100", ename);
        bench_emit(name, raw[rounds / 2], "events/s", NULL, 0);
        snprintf(name, sizeof(name), "transport.agent_publish_rate.%s.batch100", ename);
        bench_emit(name, agent[rounds / 2], "events/s", NULL, 0);
        snprintf(name, sizeof(name), "transport.agent_vs_raw.%s.batch100", ename);
        bench_emit(name, ratio[rounds / 2], "ratio", enc ? NULL : ">=", 0.8);
        snprintf(name, sizeof(name), "transport.agent_dropped.%s", ename);
        bench_emit(name, (double)dropped, "events", NULL, 0);
        /*
         * CPU per event of the whole pipeline (publisher process, plus nats-server when its
         * PID is known). When the run saturates the machine's cores, the rate ratio cannot
         * exceed the inverse CPU ratio.
         */
        const char *who = server_pid > 0 ? "with_server" : "client";
        double total = (double)nevents * rounds;
        snprintf(name, sizeof(name), "transport.cpu_ns_per_event.%s.raw.%s", who, ename);
        bench_emit(name, (double)cpu_raw / total, "ns", NULL, 0);
        snprintf(name, sizeof(name), "transport.cpu_ns_per_event.%s.agent.%s", who, ename);
        bench_emit(name, (double)cpu_agent / total, "ns", NULL, 0);
    }

    bus_close(bus);
    for (size_t i = 0; i < POOL; i++) {
        event_clear(&pool_k8s[i]);
        event_clear(&pool_vm[i]);
    }
    return 0;
}

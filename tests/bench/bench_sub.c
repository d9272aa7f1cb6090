/*
 * Independent bus subscriber for the agent benchmarks: subscribes to a
 * subject, decodes every batch (protobuf or JSON) and counts the events it
 * holds, so delivered events are counted outside the agent.
 *
 *   bench_sub NATS_URL SUBJECT [--ready FILE] [--comm NAME] [--idle SEC] [--discard]
 *
 * --discard: count messages and bytes only, decoding nothing: a listener for
 * runs that measure the agent, not the bus (an agent holds what no one hears).
 *
 * Writes FILE once the subscription is registered with the server. Stops on
 * SIGINT/SIGTERM, or after --idle seconds without a message once one has
 * arrived. Prints one JSON object: messages, events, events whose command is
 * --comm ("matched", and "matched_by_type"), rejects, bytes, and the highest kernel_drops /
 * agent_drops carried by the batches; also on SIGUSR1, without stopping, so
 * a script can read the counts between load steps.
 */
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_message.h"

static volatile sig_atomic_t stop, report;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        report = 1;
    else
        stop = sig;
}

struct counts {
    uint64_t messages, events, matched, rejects, bytes, kdrops, adrops;
    uint64_t by_type[EVENT_TYPE_COUNT], matched_by_type[EVENT_TYPE_COUNT];
};

static void print_counts(const struct counts *c, natsSubscription *sub)
{
    int64_t dropped = 0;

    natsSubscription_GetDropped(sub, &dropped);
    printf("{\"messages\":%llu,\"events\":%llu,\"matched\":%llu,\"rejects\":%llu,\"bytes\":%llu,"
           "\"kernel_drops\":%llu,\"agent_drops\":%llu,\"client_dropped\":%lld",
           (unsigned long long)c->messages, (unsigned long long)c->events,
           (unsigned long long)c->matched, (unsigned long long)c->rejects,
           (unsigned long long)c->bytes, (unsigned long long)c->kdrops,
           (unsigned long long)c->adrops, (long long)dropped);
    printf(",\"by_type\":{");
    for (int t = 1; t < EVENT_TYPE_COUNT; t++)
        printf("%s\"%s\":%llu", t > 1 ? "," : "", event_type_name((unsigned)t),
               (unsigned long long)c->by_type[t]);
    printf("},\"matched_by_type\":{");
    for (int t = 1; t < EVENT_TYPE_COUNT; t++)
        printf("%s\"%s\":%llu", t > 1 ? "," : "", event_type_name((unsigned)t),
               (unsigned long long)c->matched_by_type[t]);
    printf("}}\n");
    fflush(stdout);
}

static double mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *ready = NULL, *comm = NULL;
    double idle = 0;
    bool discard = false;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsStatus s;

    if (argc < 3) {
        fprintf(stderr, "usage: bench_sub NATS_URL SUBJECT [--ready FILE] [--comm NAME] "
                        "[--idle SEC] [--discard]\n");
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--discard"))
            discard = true;
        else if (i + 1 == argc)
            break;
        else if (!strcmp(argv[i], "--ready"))
            ready = argv[++i];
        else if (!strcmp(argv[i], "--comm"))
            comm = argv[++i];
        else if (!strcmp(argv[i], "--idle"))
            idle = atof(argv[++i]);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);

    s = natsConnection_ConnectTo(&nc, argv[1]);
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&sub, nc, argv[2]);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Flush(nc);
    if (s != NATS_OK) {
        fprintf(stderr, "bench_sub: %s\n", natsStatus_GetText(s));
        return 1;
    }
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f)
            fclose(f);
    }

    struct counts c = {0};
    double last = 0;
    while (!stop) {
        natsMsg *msg = NULL;
        if (report) {
            report = 0;
            print_counts(&c, sub);
        }
        s = natsSubscription_NextMsg(&msg, sub, 50);
        if (s == NATS_TIMEOUT) {
            if (idle > 0 && c.messages > 0 && mono() - last > idle)
                break;
            continue;
        }
        if (s != NATS_OK)
            break;
        struct bus_batch b;
        char err[256];
        c.messages++;
        c.bytes += (uint64_t)natsMsg_GetDataLength(msg);
        last = mono();
        if (discard) {
            natsMsg_Destroy(msg);
            continue;
        }
        if (bus_message_decode(msg, &b, err, sizeof(err)) != BUS_OK) {
            c.rejects++;
        } else {
            c.events += b.n;
            for (size_t i = 0; i < b.n; i++) {
                if (b.events[i].type < EVENT_TYPE_COUNT)
                    c.by_type[b.events[i].type]++;
                if (comm && !strcmp(b.events[i].command, comm)) {
                    c.matched++;
                    if (b.events[i].type < EVENT_TYPE_COUNT)
                        c.matched_by_type[b.events[i].type]++;
                }
            }
            if (b.meta.kernel_drops > c.kdrops)
                c.kdrops = b.meta.kernel_drops;
            if (b.meta.agent_drops > c.adrops)
                c.adrops = b.meta.agent_drops;
            bus_batch_free(&b);
        }
        natsMsg_Destroy(msg);
    }
    print_counts(&c, sub);
    natsConnection_Close(nc); /* first: see bus_sub_end() in pkg/bus.h */
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    return 0;
}

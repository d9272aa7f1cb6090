/*
 * ebpf-aggregator: collects event batches from NATS (one share per replica,
 * through the queue group), keeps a bounded cluster-wide history correlated
 * by node, and serves the cluster-wide HTTP API; replicas answer for each
 * other over NATS. Also dispatches the `tail` and `decode` subcommands.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "aggregator.h"
#include "aggregator/commands.h"
#include "api.h"
#include "clock.h"
#include "cluster.h"
#include "netaddr.h"
#include "notify.h"

#define AGGREGATOR_DRAIN_MS 2000

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    stop_requested = sig;
}

/* 16 random hex chars, new per process: replicas tell each other apart by it. */
static void make_replica_id(char out[AGGREGATOR_REPLICA_ID_LEN])
{
    uint64_t r = 0;

    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (uint64_t)clock_realtime_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(out, AGGREGATOR_REPLICA_ID_LEN, "%016llx", (unsigned long long)r);
}

/*
 * Tells the live stream's clients when the batches' connection is lost and when it is back (a
 * comment line; the page and EventSource ignore it, curl shows it), and those who connect
 * meanwhile that nothing will come until then. Under said_lock.
 */
static void stream_say_nats(struct aggregator *a)
{
    bool up = bus_connected(a->bus);

    if (a->stream_nats_said == up)
        return;
    a->stream_nats_said = up;
    if (up)
        http_server_stream_notice(a->http, "NATS connected: events follow", false);
    else
        http_server_stream_notice(a->http, "NATS not connected: no events until it is back", true);
}

/*
 * bus_set_listener() of both NATS connections: says when the replica stops
 * being ready (either is lost) and when it is again (both are up), each change
 * once, as /ready answers.
 */
static void log_ready(void *ctx, bool connected)
{
    struct aggregator *a = ctx;
    struct cluster *c = __atomic_load_n(&a->cluster, __ATOMIC_ACQUIRE);

    pthread_mutex_lock(&a->said_lock);
    bool up = bus_connected(a->bus) && (c == NULL || cluster_bus_connected(c));
    stream_say_nats(a);
    if (a->ready_said != up) {
        a->ready_said = up;
        fprintf(stderr, up ? "ebpf-aggregator: NATS connected, ready\n"
                           : "ebpf-aggregator: NATS connection lost, retrying; not ready\n");
    }
    pthread_mutex_unlock(&a->said_lock);
}

/* A workload's flow series live while a pod of it names its address (flows_series_set_alive). */
static bool workload_alive(void *ctx, const char *namespace, const char *workload, uint64_t now_ns)
{
    return peers_workload_alive(ctx, namespace, workload, now_ns);
}

/* A node's address, which a hostNetwork pod reports, is no Service's by being a backend. */
static bool address_shared(void *ctx, unsigned family, const uint8_t addr[16])
{
    return peers_host_network(ctx, family, addr, clock_realtime_ns());
}

int main(int argc, char **argv)
{
    static struct aggregator a;
    char err[512];
    int rc = 1;

    if (argc > 1 && strcmp(argv[1], "tail") == 0)
        return aggregator_tail(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "decode") == 0)
        return aggregator_decode(argc - 1, argv + 1);

    int status = config_load_main(&a.cfg, CONFIG_AGGREGATOR, argc, argv);
    if (status >= 0)
        return status;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    make_replica_id(a.replica);
    a.started_mono_ns = clock_monotonic_ns();
    pthread_mutex_init(&a.stream_lock, NULL);
    pthread_mutex_init(&a.subs_lock, NULL);
    pthread_mutex_init(&a.said_lock, NULL);
    pthread_mutex_init(&a.ingest_gate.lock, NULL);
    pthread_cond_init(&a.ingest_gate.idle, NULL);

    struct store_limits limits = {.max_events = a.cfg.history_size,
                                  .max_age_ns = a.cfg.history_max_age_ns};
    a.store = store_new(&limits);
    a.nodes = nodes_new(AGGREGATOR_MAX_INSTANCES);
    /* From now on every batch is this replica's to hear (or its peers'): an agent that starts
     * later and is first heard at sequence N lost N - 1 batches, such as while NATS refused us. */
    if (a.nodes)
        nodes_set_heard_since(a.nodes, clock_realtime_ns());
    a.flows = flows_new(a.cfg.flow_retention_ns, a.cfg.flow_max_edges);
    a.peers = peers_new(a.cfg.peer_max_entries, a.cfg.peer_ttl_ns, a.cfg.peer_grace_ns);
    if (a.flows && a.peers) {
        flows_series_enable(a.flows, a.cfg.flow_metrics_max_series, a.cfg.stale_after_ns);
        flows_series_set_alive(a.flows, workload_alive, a.peers);
    }
    if (!a.store || !a.nodes || !a.flows || !a.peers) {
        fprintf(stderr, "ebpf-aggregator: cannot allocate the event history\n");
        goto out;
    }

    if (a.cfg.deployment_mode == CONFIG_MODE_KUBERNETES) {
        struct k8s_conn_options ko = {.api_url = a.cfg.k8s_api_url[0] ? a.cfg.k8s_api_url : NULL,
                                      .token_path =
                                          a.cfg.k8s_token_path[0] ? a.cfg.k8s_token_path : NULL,
                                      .ca_path = a.cfg.k8s_ca_path[0] ? a.cfg.k8s_ca_path : NULL};
        int kerr = 0;
        a.services = k8s_services_new(&ko, AGGREGATOR_MAX_SERVICES, &kerr);
        if (a.services) {
            k8s_services_set_shared(a.services, address_shared, a.peers);
            kerr = k8s_services_start(a.services);
        }
        if (!a.services || kerr < 0) {
            fprintf(stderr, "ebpf-aggregator: cannot watch Services (K8S_API_URL %s): %s\n",
                    a.cfg.k8s_api_url[0] ? a.cfg.k8s_api_url : "in-cluster", strerror(-kerr));
            goto out;
        }
        if (!k8s_services_has_api(a.services))
            fprintf(stderr, "ebpf-aggregator: no Kubernetes API server (K8S_API_URL unset and "
                            "KUBERNETES_SERVICE_HOST not set): Services are unknown, so no "
                            "peer_service and no ClusterIP join\n");
        a.joins = joins_new(AGGREGATOR_JOIN_HALVES, AGGREGATOR_JOIN_HELD, a.cfg.join_window_ns);
        if (!a.joins) {
            fprintf(stderr, "ebpf-aggregator: cannot allocate the ClusterIP join tables\n");
            goto out;
        }
    }

    a.http = api_server_new(&a.cfg, err, sizeof(err));
    if (!a.http) {
        fprintf(stderr, "ebpf-aggregator: %s\n", err);
        goto out;
    }

    /* No echo: a replica never hears its own heartbeats and queries. */
    char client_name[64];
    snprintf(client_name, sizeof(client_name), "ebpf-aggregator/%s", a.replica);
    struct bus_options bo = {.name = client_name, .no_echo = true};
    a.bus = bus_open_opts(&a.cfg, &bo, err, sizeof(err));
    if (!a.bus) {
        fprintf(stderr, "ebpf-aggregator: %s\n", err);
        goto out;
    }
    a.ready_said = bus_connected(a.bus);
    a.stream_nats_said = true; /* nothing said yet: a new client hears ": connected" alone */
    bus_set_listener(a.bus, log_ready, &a);
    pthread_mutex_lock(&a.said_lock);
    stream_say_nats(&a);
    pthread_mutex_unlock(&a.said_lock);
    struct cluster *cluster = NULL;
    if (ingest_start(&a, err, sizeof(err)) < 0 || !(cluster = cluster_new(&a, err, sizeof(err)))) {
        fprintf(stderr, "ebpf-aggregator: %s\n", err);
        goto out;
    }
    __atomic_store_n(&a.cluster, cluster, __ATOMIC_RELEASE);
    cluster_set_bus_listener(cluster, log_ready, &a);
    if (aggregator_api_register(&a) < 0 || http_server_start(a.http) < 0) {
        fprintf(stderr, "ebpf-aggregator: cannot start the HTTP server on %s\n", a.cfg.listen_addr);
        goto out;
    }
    char api[CONFIG_STR + 16];
    netaddr_with_port(a.cfg.listen_addr, http_server_port(a.http), api, sizeof(api));
    fprintf(stderr,
            "ebpf-aggregator: replica %s, subscribed to %s.> in queue group %s, API on %s%s%s\n",
            a.replica, a.cfg.subject_prefix, a.cfg.queue_group, api,
            a.cfg.tls_cert[0] ? " (TLS)" : "",
            bus_connected(a.bus) ? "" : "; NATS not connected yet, retrying (/api/stats bus)");
    int notified = notify_systemd("READY=1"); /* Type=notify units, images/systemd/ */
    if (notified < 0)
        fprintf(stderr, "ebpf-aggregator: cannot notify systemd (NOTIFY_SOCKET): %s\n",
                strerror(-notified));

    uint64_t last_expire = clock_monotonic_ns();
    while (!stop_requested) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t now = clock_monotonic_ns();
        if (now - last_expire > 1000000000ull) {
            store_expire(a.store, clock_realtime_ns());
            flows_add(a.flows, NULL, 0, clock_realtime_ns()); /* expires old minutes */
            last_expire = now;
        }
        join_release(&a, clock_realtime_ns());
    }
    fprintf(stderr, "ebpf-aggregator: %s received, leaving the cluster\n",
            config_stop_signal_text(stop_requested));
    notify_systemd("STOPPING=1");
    rc = 0;
out:
    /* Queued batches first, so every batch received is counted; then leave (the node table
     * goes to a peer, which keeps counting them as received); then reverse creation order. */
    if (a.bus) {
        bus_set_listener(a.bus, NULL, NULL); /* log_ready() reads the cluster freed below */
        ingest_stop(&a, AGGREGATOR_DRAIN_MS);
    }
    /* What is still held is stored unjoined, and counted into the flows handed over next. */
    join_release(&a, UINT64_MAX);
    cluster_leave(a.cluster);
    aggregator_api_stop(&a);
    /* log_ready() also tells the stream's clients, through the server freed next. */
    if (a.cluster)
        cluster_set_bus_listener(a.cluster, NULL, NULL);
    if (a.http)
        http_server_free(a.http);
    aggregator_api_free(&a);
    cluster_free(a.cluster);
    if (a.bus)
        bus_close(a.bus);
    if (a.nodes)
        nodes_free(a.nodes);
    if (a.store)
        store_free(a.store);
    flows_free(a.flows);
    peers_free(a.peers);
    k8s_services_free(a.services);
    joins_free(a.joins);
    pthread_mutex_destroy(&a.stream_lock);
    pthread_mutex_destroy(&a.subs_lock);
    pthread_mutex_destroy(&a.said_lock);
    return rc;
}

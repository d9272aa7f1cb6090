/*
 * ebpf-agent: captures kernel events with eBPF, keeps a bounded local
 * history, serves it over HTTP and publishes batches to NATS.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "api.h"
#include "clock.h"
#include "intern.h"
#include "netaddr.h"
#include "notify.h"

#define POLL_MAX_MS        200
#define KERNEL_DROPS_EVERY 100000000ull /* ns between reads of the programs' loss counters */
#define MAX_PROGRAMS       32
#define DNS_EXPIRE_EVERY   100000000ull /* ns between DNS timeout scans */

static volatile sig_atomic_t stop_requested;

/*
 * Removes every --verbose from argv (before the configuration parses the rest); true if any.
 * --verbose is the agent's own flag, not a configuration key (no environment or YAML form):
 * it only adds libbpf's debug log, for whoever is looking at a program that will not load
 * (config_print_help() lists it).
 */
static bool take_verbose(int *argc, char **argv)
{
    bool found = false;
    int n = 1;

    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--verbose") == 0)
            found = true;
        else
            argv[n++] = argv[i];
    }
    argv[n] = NULL;
    *argc = n;
    return found;
}

static void on_signal(int sig)
{
    stop_requested = sig;
}

static void on_dns_message(void *ctx, const struct records_dns *m)
{
    struct agent *a = ctx;

    dns_agent_message(a->dns, m);
}

/*
 * Ring-buffer losses and skipped runs summed over the programs: the
 * kernel_drops and kernel_missed every batch carries.
 */
static void publish_kernel_losses(struct agent *a)
{
    struct capture_program_info progs[MAX_PROGRAMS];
    size_t n = capture_programs(a->capture, progs, MAX_PROGRAMS);
    uint64_t drops = 0, missed = 0;
    for (size_t i = 0; i < n && i < MAX_PROGRAMS; i++) {
        drops += progs[i].drops;
        missed += progs[i].missed;
    }
    publisher_set_kernel_losses(a->pub, drops, missed);
}

/*
 * Batches the send queue dropped (OUTAGE_BUFFER full: NATS unreachable, no one subscribed,
 * or NATS slower than the capture), and events larger than the server's max_payload on
 * their own, are counted in /api/stats; the log says so too, each cause by its name, at
 * most every LOG_DROPS_EVERY.
 */
#define LOG_DROPS_EVERY 10000000000ull
static void log_queue_drops(struct agent *a, uint64_t now)
{
    static uint64_t logged_batches, logged_events, logged_large, logged_at;
    struct publisher_stats st;

    if (!a->pub || (logged_at && now - logged_at < LOG_DROPS_EVERY))
        return;
    publisher_get_stats(a->pub, &st);
    if (st.batches_dropped == logged_batches)
        return;
    const char *since = logged_at ? "the last report" : "the start";
    uint64_t large = st.batches_too_large - logged_large;
    uint64_t full = st.batches_dropped - logged_batches - large;
    if (large)
        fprintf(stderr,
                "ebpf-agent: %" PRIu64 " events dropped since %s: each larger on its own than "
                "the NATS server's max_payload (raise max_payload in its configuration)\n",
                large, since);
    if (full)
        fprintf(stderr,
                "ebpf-agent: the send queue is full (OUTAGE_BUFFER %" PRIu64 " bytes, NATS %s): "
                "%" PRIu64 " batches (%" PRIu64 " events) dropped, the oldest first, since %s\n",
                a->cfg.outage_buffer_bytes,
                !st.bus.connected ? "unreachable"
                : st.no_listener  ? "connected, but no one subscribed"
                                  : "connected",
                full, st.events_dropped - logged_events - large, since);
    logged_batches = st.batches_dropped;
    logged_events = st.events_dropped;
    logged_large = st.batches_too_large;
    logged_at = now;
}

/* Pods deleted since the last poll go out with the open batch (see k8s_take_gone). */
static void send_pods_gone(struct agent *a)
{
    struct peers_pod gone[PEERS_GONE_MAX_PODS];
    size_t n;

    if (!a->k8s || !a->pub)
        return;
    n = k8s_take_gone(a->k8s, gone, publisher_gone_room(a->pub));
    publisher_add_gone(a->pub, gone, n);
}

/*
 * Once the first LIST of the node's pods is in, their UIDs go out with the
 * open batch: the aggregators end the claims of pods deleted while no agent
 * watched the node (this agent restarting). Once per process.
 */
static void send_pods_present(struct agent *a)
{
    static bool done;
    static const char *uids[PEERS_PRESENT_MAX_PODS];
    uint64_t at_ns;
    int n;

    if (done || !a->k8s || !a->pub)
        return;
    n = k8s_take_present(a->k8s, uids, PEERS_PRESENT_MAX_PODS, &at_ns);
    if (n >= 0 && !publisher_set_present(a->pub, uids, (size_t)n, at_ns))
        fprintf(stderr, "ebpf-agent: out of memory for the node's pod list: the aggregators "
                        "name pods deleted while no agent ran until PEER_TTL\n");
    else if (n == -E2BIG)
        fprintf(stderr,
                "ebpf-agent: more pods on this node than a pod list carries (%d, or K8S_MAX_PODS "
                "left some out): the aggregators name pods deleted while no agent ran until "
                "PEER_TTL\n",
                PEERS_PRESENT_MAX_PODS);
    done = n != -EAGAIN;
}

/* Pod attribution: cgroup id -> pod UID/container id, plus names from the API server. */
static int open_kubernetes(struct agent *a)
{
    int err = 0;
    /* With CAPTURE_CGROUP, pods are looked for in that subtree: the only cgroups captured, and
     * where a node's kubepods tree may be nested under a directory of any name (a kind node's
     * container, say). */
    struct cgroup_resolver_options co = {
        .root = a->cfg.capture_cgroup[0] ? a->cfg.capture_cgroup_path
                : a->cfg.cgroup_root[0]  ? a->cfg.cgroup_root
                                         : NULL,
    };
    a->cgroups = cgroup_resolver_new(&co, &err);
    if (!a->cgroups) {
        fprintf(stderr, "ebpf-agent: no cgroup v2 hierarchy at %s (CGROUP_ROOT): %s\n",
                co.root ? co.root : "the detected mount", strerror(-err));
        return -1;
    }
    struct k8s_options ko = {
        .api_url = a->cfg.k8s_api_url[0] ? a->cfg.k8s_api_url : NULL,
        .token_path = a->cfg.k8s_token_path[0] ? a->cfg.k8s_token_path : NULL,
        .ca_path = a->cfg.k8s_ca_path[0] ? a->cfg.k8s_ca_path : NULL,
        .node_name = a->node,
        .tombstone_ttl_ms = (unsigned)(a->cfg.k8s_tombstone_ttl_ns / 1000000),
        .max_pods = a->cfg.k8s_max_pods,
    };
    a->k8s = k8s_new(&ko, &err);
    if (!a->k8s || k8s_start(a->k8s) < 0) {
        fprintf(stderr, "ebpf-agent: cannot start the Kubernetes pod watch: %s\n",
                strerror(err ? -err : EINVAL));
        return -1;
    }
    fprintf(stderr, "ebpf-agent: Kubernetes mode, cgroups at %s\n",
            cgroup_resolver_root(a->cgroups));
    if (!k8s_has_api(a->k8s))
        fprintf(stderr, "ebpf-agent: no Kubernetes API server (K8S_API_URL unset and "
                        "KUBERNETES_SERVICE_HOST not set): pods are known by UID and container "
                        "id only, without names, namespaces or workloads\n");
    return 0;
}

static int open_publisher(struct agent *a, char *err, size_t errlen)
{
    char name[CONFIG_STR + 16];
    snprintf(name, sizeof(name), "ebpf-agent %s", a->node);
    a->bus = bus_open(&a->cfg, name, err, errlen);
    if (!a->bus)
        return -1;
    bus_node_subject(a->cfg.subject_prefix, a->node, a->subject, sizeof(a->subject));
    struct publisher_config pc = {
        .node = a->node,
        .subject = a->subject,
        .pod_name = a->cfg.pod_name,
        .pod_namespace = a->cfg.pod_namespace,
        .encoding = a->cfg.encoding,
        .batch_size = a->cfg.batch_size,
        .flush_interval_ns = a->cfg.flush_interval_ns,
        .heartbeat_ns = a->cfg.heartbeat_ns,
        .outage_buffer_bytes = a->cfg.outage_buffer_bytes,
        .log_prefix = "ebpf-agent",
    };
    a->pub = publisher_new(a->bus, &pc, err, errlen);
    return a->pub ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct agent a = {0};
    char err[512];
    int rc = 1;

    bool verbose = take_verbose(&argc, argv);
    int status = config_load_main(&a.cfg, CONFIG_AGENT, argc, argv);
    if (status >= 0)
        return status;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    /* config_load() validated REDACT_ARGS, so only memory can fail here. */
    if (redact_new(a.cfg.redact_args, &a.redact, err, sizeof(err)) < 0) {
        fprintf(stderr, "ebpf-agent: REDACT_ARGS: %s\n", err);
        return 1;
    }
    a.node = intern(a.cfg.node_name);
    a.started_ns = clock_realtime_ns();
    a.started_mono_ns = clock_monotonic_ns();
    event_id_gen_init(&a.ids);

    struct store_limits limits = {.max_events = a.cfg.history_size,
                                  .max_age_ns = a.cfg.history_max_age_ns};
    a.store = store_new(&limits);
    a.flows = flows_new(a.cfg.flow_retention_ns, a.cfg.flow_max_edges);
    if (!a.store || !a.flows) {
        fprintf(stderr, "ebpf-agent: cannot allocate the event history\n");
        goto out;
    }

    a.http = api_server_new(&a.cfg, err, sizeof(err));
    if (!a.http) {
        fprintf(stderr, "ebpf-agent: %s\n", err);
        goto out;
    }

    if (a.cfg.deployment_mode == CONFIG_MODE_KUBERNETES && open_kubernetes(&a) < 0)
        goto out;

    if (a.cfg.event_types & EVENT_TYPE_BIT(EVENT_DNS)) {
        struct dns_agent_config dc = {
            .timeout_ns = a.cfg.dns_timeout_ns,
            .pending_max = a.cfg.dns_pending_max,
            .max_series = a.cfg.dns_metrics_max_series,
        };
        a.dns = dns_agent_new(&dc, agent_on_dns_event, &a);
        if (!a.dns) {
            fprintf(stderr, "ebpf-agent: cannot allocate the DNS query tracker\n");
            goto out;
        }
    }
    struct capture_config cc = {
        .event_types = a.cfg.event_types,
        .ringbuf_bytes = a.cfg.ringbuf_bytes,
        .drop_rate_per_sec = a.cfg.drop_rate_limit,
        .verbose = verbose,
        .cgroup_only = a.cfg.capture_cgroup[0] != '\0',
        .cgroup_id = a.cfg.capture_cgroup_id,
        .cgroup_level = a.cfg.capture_cgroup_level,
        .dns_rate_per_sec = a.cfg.dns_rate_limit,
        /* cgroup_skb programs see the sockets of the cgroup they attach to and below. */
        .cgroup_root = a.cfg.capture_cgroup[0] ? a.cfg.capture_cgroup_path
                       : a.cfg.cgroup_root[0]  ? a.cfg.cgroup_root
                                               : NULL,
        .dns_fn = a.dns ? on_dns_message : NULL,
        .dns_ctx = &a,
    };
    memcpy(cc.dns_ports, a.cfg.dns_ports, sizeof(cc.dns_ports));
    a.capture = capture_open(&cc, agent_on_event, &a, err, sizeof(err));
    if (!a.capture) {
        fprintf(stderr, "ebpf-agent: %s\n", err);
        goto out;
    }

    if (open_publisher(&a, err, sizeof(err)) < 0) {
        fprintf(stderr, "ebpf-agent: %s\n", err);
        goto out;
    }

    if (agent_api_register(&a) < 0 || http_server_start(a.http) < 0) {
        fprintf(stderr, "ebpf-agent: cannot start the HTTP server on %s\n", a.cfg.listen_addr);
        goto out;
    }
    char urls[CONFIG_URL], api[CONFIG_STR + 16];
    bus_redact_urls(a.cfg.nats_url, urls, sizeof(urls));
    netaddr_with_port(a.cfg.listen_addr, http_server_port(a.http), api, sizeof(api));
    fprintf(stderr,
            "ebpf-agent: node %s, %zu program%s attached, API on %s%s, publishing to %s on %s "
            "(%s)\n",
            a.node, capture_attached(a.capture), capture_attached(a.capture) == 1 ? "" : "s", api,
            a.cfg.tls_cert[0] ? " (TLS)" : "", a.subject, urls,
            config_encoding_name(a.cfg.encoding));
    if (cc.cgroup_only)
        fprintf(stderr,
                "ebpf-agent: capturing only cgroup %s (id %llu) and below (CAPTURE_CGROUP)\n",
                a.cfg.capture_cgroup, (unsigned long long)cc.cgroup_id);
    int notified = notify_systemd("READY=1"); /* Type=notify units, images/systemd/ */
    if (notified < 0)
        fprintf(stderr, "ebpf-agent: cannot notify systemd (NOTIFY_SOCKET): %s\n",
                strerror(-notified));

    uint64_t last_expire = clock_monotonic_ns(), last_drops = 0, last_dns_expire = 0;
    int timeout_ms = POLL_MAX_MS;
    while (!stop_requested) {
        int n = capture_poll(a.capture, timeout_ms);
        agent_flush_store(&a);
        if (n < 0 && n != -EINTR) {
            fprintf(stderr, "ebpf-agent: reading the ring buffer: %s\n", strerror(-n));
            goto out;
        }
        uint64_t now = clock_monotonic_ns();
        if (now - last_drops >= KERNEL_DROPS_EVERY) {
            publish_kernel_losses(&a);
            log_queue_drops(&a, now);
            last_drops = now;
        }
        send_pods_gone(&a);
        send_pods_present(&a);
        /* Wake up in time for the open batch's flush deadline. */
        uint64_t until_flush = publisher_tick(a.pub, now);
        uint64_t ms = (until_flush + 999999) / 1000000;
        timeout_ms = ms < POLL_MAX_MS ? (int)ms : POLL_MAX_MS;
        if (a.dns && now - last_dns_expire >= DNS_EXPIRE_EVERY) {
            /* Timeouts become events, after the answers lost until now are known: the clock is
             * read first, so no loss before it is missed. */
            uint64_t boot_ns = clock_ns(CLOCK_BOOTTIME);
            const struct dns_lost *lost;
            int ncpus = capture_dns_lost(a.capture, &lost);
            dns_agent_answers_lost(a.dns, lost, ncpus, boot_ns);
            dns_agent_expire(a.dns, boot_ns);
            agent_flush_store(&a);
            last_dns_expire = now;
        }
        if (now - last_expire > 1000000000ull) {
            store_expire(a.store, clock_realtime_ns());
            flows_add(a.flows, NULL, 0, clock_realtime_ns()); /* expires old minutes */
            last_expire = now;
        }
    }
    fprintf(stderr, "ebpf-agent: %s received, detaching programs\n",
            config_stop_signal_text(stop_requested));
    notify_systemd("STOPPING=1");
    rc = 0;
out:
    /*
     * Reverse order of creation, except that the HTTP thread goes first: it
     * reads the publisher, capture and store. The publisher then sends its
     * last batch (waiting up to ~2 s for NATS).
     */
    if (a.http)
        http_server_free(a.http);
    if (a.pub) {
        publish_kernel_losses(&a);
        publisher_free(a.pub);
    }
    if (a.bus)
        bus_close(a.bus);
    if (a.capture)
        capture_close(a.capture);
    dns_agent_free(a.dns);
    if (a.k8s)
        k8s_free(a.k8s);
    if (a.cgroups)
        cgroup_resolver_free(a.cgroups);
    if (a.store)
        store_free(a.store);
    flows_free(a.flows);
    redact_free(a.redact);
    return rc;
}

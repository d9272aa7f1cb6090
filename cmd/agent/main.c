/*
 * ebpf-agent: captures kernel events with eBPF, keeps a bounded local
 * history and serves it over HTTP.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "api.h"
#include "intern.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    stop_requested = sig;
}

/* Capture thread: the one place an event gets its id and node and enters the history. */
static void on_event(void *ctx, struct event *e)
{
    struct agent *a = ctx;
    e->id = event_id_next(&a->ids);
    e->node = a->node;
    __atomic_fetch_add(&a->events_total, 1, __ATOMIC_RELAXED);
    if (e->type < EVENT_TYPE_COUNT)
        __atomic_fetch_add(&a->events_by_type[e->type], 1, __ATOMIC_RELAXED);
    http_server_publish(a->http, e);
    if (store_add_move(a->store, e) < 0)
        __atomic_fetch_add(&a->store_failed, 1, __ATOMIC_RELAXED);
}

int main(int argc, char **argv)
{
    struct agent a = {0};
    char err[512];
    int rc = 1;

    switch (config_load(&a.cfg, CONFIG_AGENT, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_EXIT:
        return 0;
    default:
        fprintf(stderr, "ebpf-agent: %s\n", err);
        return 2;
    }
    if (a.cfg.check_only) {
        printf("ebpf-agent: configuration OK\n");
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    a.node = intern(a.cfg.node_name);
    a.started_ns = api_now_ns();
    a.started_mono_ns = api_monotonic_ns();
    event_id_gen_init(&a.ids);

    struct store_limits limits = {.max_events = a.cfg.history_size,
                                  .max_age_ns = a.cfg.history_max_age_ns};
    a.store = store_new(&limits);
    if (!a.store) {
        fprintf(stderr, "ebpf-agent: cannot allocate the event history\n");
        goto out;
    }

    struct http_server_config hc = {
        .listen_addr = a.cfg.listen_addr,
        .api_token = a.cfg.api_token[0] ? a.cfg.api_token : NULL,
        .tls_cert = a.cfg.tls_cert[0] ? a.cfg.tls_cert : NULL,
        .tls_key = a.cfg.tls_key[0] ? a.cfg.tls_key : NULL,
    };
    a.http = http_server_new(&hc, err, sizeof(err));
    if (!a.http) {
        fprintf(stderr, "ebpf-agent: %s\n", err);
        goto out;
    }

    struct capture_config cc = {
        .event_types = a.cfg.event_types,
        .ringbuf_bytes = a.cfg.ringbuf_bytes,
        .drop_rate_per_sec = a.cfg.drop_rate_limit,
    };
    a.capture = capture_open(&cc, on_event, &a, err, sizeof(err));
    if (!a.capture) {
        fprintf(stderr, "ebpf-agent: %s\n", err);
        goto out;
    }

    if (agent_api_register(&a) < 0 || http_server_start(a.http) < 0) {
        fprintf(stderr, "ebpf-agent: cannot start the HTTP server on %s\n", a.cfg.listen_addr);
        goto out;
    }
    fprintf(stderr, "ebpf-agent: node %s, %zu programs attached, API on %s%s\n", a.node,
            capture_attached(a.capture), a.cfg.listen_addr, a.cfg.tls_cert[0] ? " (TLS)" : "");

    uint64_t last_expire = api_monotonic_ns();
    while (!stop_requested) {
        int n = capture_poll(a.capture, 200);
        if (n < 0 && n != -EINTR) {
            fprintf(stderr, "ebpf-agent: reading the ring buffer: %s\n", strerror(-n));
            goto out;
        }
        uint64_t now = api_monotonic_ns();
        if (now - last_expire > 1000000000ull) {
            store_expire(a.store, api_now_ns());
            last_expire = now;
        }
    }
    fprintf(stderr, "ebpf-agent: %s received, detaching programs\n",
            stop_requested == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
out:
    /* Reverse order of creation: the HTTP thread reads capture and store. */
    if (a.http)
        http_server_free(a.http);
    if (a.capture)
        capture_close(a.capture);
    if (a.store)
        store_free(a.store);
    return rc;
}

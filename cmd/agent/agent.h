/*
 * The agent's state shared by its threads: the capture loop (main thread)
 * adds events to the store and the publisher; the HTTP thread reads the
 * store and the counters; the publisher thread sends batches to NATS.
 */
#ifndef EBPF_MONITOR_AGENT_H
#define EBPF_MONITOR_AGENT_H

#include <stdint.h>

#include "bus.h"
#include "capture.h"
#include "cgroup.h"
#include "config.h"
#include "dns_agent.h"
#include "event.h"
#include "http_server.h"
#include "k8s.h"
#include "publisher.h"
#include "redact.h"
#include "flows.h"
#include "store.h"

struct agent {
    struct config cfg;
    const char *node; /* interned NODE_NAME */
    struct event_id_gen ids;
    struct capture *capture;
    struct store *store;
    struct flows *flows; /* this node's edges behind /api/flows (locks internally) */
    struct http_server *http;
    struct bus *bus;
    struct publisher *pub;
    struct cgroup_resolver *cgroups; /* Kubernetes mode only */
    struct k8s *k8s;                 /* Kubernetes mode only */
    struct redact *redact;           /* REDACT_ARGS; NULL for "none" */
    struct dns_agent *dns;           /* dns in EVENT_TYPES only */
    char subject[CONFIG_STR * 2];    /* <SUBJECT_PREFIX>.<sanitised node> */
    uint64_t started_ns;             /* epoch */
    uint64_t started_mono_ns;        /* monotonic, for uptime */

    /* Capture thread only: events on their way into the history, added a batch at a time. */
#define AGENT_STORE_BATCH 64
    struct event store_pending[AGENT_STORE_BATCH];
    size_t store_npending;

    /* Written by the capture thread, read by the HTTP thread (relaxed atomics). */
    uint64_t events_total;
    uint64_t events_by_type[EVENT_TYPE_COUNT];
    /* packet_drop events by the kernel's core drop reason (enum skb_drop_reason below
     * AGENT_DROP_REASONS; the rest, subsystem reasons, in the last slot), with each slot's
     * name as the kernel's BTF gave it (interned; NULL until seen). */
#define AGENT_DROP_REASONS 256
    uint64_t drops_by_reason[AGENT_DROP_REASONS + 1];
    const char *drop_reason_name[AGENT_DROP_REASONS + 1];
    uint64_t store_failed;
    uint64_t args_redacted;      /* argument values replaced by REDACT_MASK */
    uint64_t args_redact_failed; /* exec events whose args were dropped (out of memory) */
};

/*
 * Capture thread (events.c): gives e its id, node and pod, then stores,
 * publishes, streams and counts it (the history takes e's strings). ctx is
 * the struct agent; a->cgroups, a->k8s and a->dns may be NULL.
 */
void agent_on_event(void *ctx, struct event *e);
/* The same for a `dns` event from the tracker: its names are learnt for peer_dns on the way. */
void agent_on_dns_event(void *ctx, struct event *e, uint32_t ttl_s);
/*
 * Capture thread: adds the events delivered since the last call to the
 * history (one lock and overlapping cache misses per batch; a batch is also
 * added as soon as it fills). The capture loop calls it after every poll.
 */
void agent_flush_store(struct agent *a);

/* Registers the agent's HTTP routes (api.c). */
int agent_api_register(struct agent *a);

#endif

/*
 * What happens to an event after capture: the capture thread's one path
 * (capture.c and the dns tracker call it), kept apart from main() so the
 * on_event benchmark runs exactly this code.
 */
#include <string.h>
#include <time.h>

#include "agent.h"
#include "clock.h"

/* packet_drop events by reason for /metrics; the drops the rate limit suppressed the kernel
 * counts by their own reason (capture_drops_suppressed()), not by the next one's. */
static void count_drop(struct agent *a, const struct event *e)
{
    uint32_t slot =
        e->u.drop.reason_code < AGENT_DROP_REASONS ? e->u.drop.reason_code : AGENT_DROP_REASONS;
    const char *name = slot < AGENT_DROP_REASONS ? e->u.drop.reason : "SUBSYSTEM";
    if (name && !__atomic_load_n(&a->drop_reason_name[slot], __ATOMIC_ACQUIRE))
        __atomic_store_n(&a->drop_reason_name[slot], name, __ATOMIC_RELEASE);
    __atomic_fetch_add(&a->drops_by_reason[slot], 1, __ATOMIC_RELAXED);
}

/*
 * When e happened on the boot clock the DNS names are kept on, so peer_dns is the name its
 * address had then: its wall-clock stamp less the offset the capture stamped it with (no
 * clock read per event). Events not from a capture (the benchmark's) read the clock.
 */
static uint64_t event_boot_ns(const struct agent *a, const struct event *e)
{
    if (a->capture) {
        uint64_t off = (uint64_t)capture_boot_to_real_ns(a->capture);
        if (e->timestamp_ns > off)
            return e->timestamp_ns - off;
    }
    return clock_ns(CLOCK_BOOTTIME);
}

/* Capture thread: the one place an event gets its id, node and pod. */
static void finish_event(struct agent *a, struct event *e)
{
    e->id = event_id_next(&a->ids);
    e->node = a->node;
    /* Before the event is published, streamed or stored: a secret goes nowhere. */
    int redacted = redact_event(a->redact, e);
    if (redacted > 0)
        __atomic_fetch_add(&a->args_redacted, (uint64_t)redacted, __ATOMIC_RELAXED);
    else if (redacted < 0)
        __atomic_fetch_add(&a->args_redact_failed, 1, __ATOMIC_RELAXED);
    /* A drop's cgroup is its packet's socket's (the capture reads it there, not
     * from the task that freed the packet), or none. */
    if (a->cgroups)
        k8s_enrich(a->k8s, a->cgroups, e);
    if (a->dns)
        dns_agent_fill_peer(a->dns, e, event_boot_ns(a, e));
}

/* Capture thread: a finished event enters the history and goes out. */
static void deliver_event(struct agent *a, struct event *e)
{
    __atomic_fetch_add(&a->events_total, 1, __ATOMIC_RELAXED);
    if (e->type < EVENT_TYPE_COUNT)
        __atomic_fetch_add(&a->events_by_type[e->type], 1, __ATOMIC_RELAXED);
    if (e->type == EVENT_PACKET_DROP)
        count_drop(a, e);
    publisher_add(a->pub, e); /* encodes a copy into the open batch; never blocks */
    http_server_publish(a->http, e);
    flows_add(a->flows, e, 1, e->timestamp_ns);
    /* The history takes e's strings; e is left empty as store_add_move() leaves it. */
    a->store_pending[a->store_npending++] = *e;
    memset(e, 0, sizeof(*e));
    if (a->store_npending == AGENT_STORE_BATCH)
        agent_flush_store(a);
}

void agent_flush_store(struct agent *a)
{
    if (a->store_npending == 0)
        return;
    size_t failed = store_add_move_batch(a->store, a->store_pending, a->store_npending);
    if (failed)
        __atomic_fetch_add(&a->store_failed, failed, __ATOMIC_RELAXED);
    a->store_npending = 0;
}

void agent_on_event(void *ctx, struct event *e)
{
    struct agent *a = ctx;

    finish_event(a, e);
    deliver_event(a, e);
}

/* A `dns` event from the tracker: its pod first, so its names are learnt in the right scope. */
void agent_on_dns_event(void *ctx, struct event *e, uint32_t ttl_s)
{
    struct agent *a = ctx;

    finish_event(a, e);
    dns_agent_learn(a->dns, e, ttl_s, clock_ns(CLOCK_BOOTTIME));
    dns_agent_count(a->dns, e);
    deliver_event(a, e);
}

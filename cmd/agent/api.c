/* The agent's HTTP routes: local history, stats, programs, health, metrics. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "api.h"
#include "clock.h"
#include "event_json.h"
#include "intern.h"
#include "openapi.h"
#include "ui.h"

#define MAX_PROGRAMS 32

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void handle_events(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    struct query q;
    char err[256];
    uint64_t start = clock_monotonic_ns();

    if (query_parse(&q, req->query, req->query_len, false, err, sizeof(err)) < 0) {
        http_response_error(res, 400, err);
        return;
    }
    struct store_result r;
    if (store_query(a->store, &q, &r) < 0) {
        http_response_error(res, 500, "out of memory running the query");
        return;
    }
    api_events_begin(&res->body, r.events, r.count, r.total_count,
                     r.has_next ? &r.next_cursor : NULL, clock_monotonic_ns() - start);
    api_events_end(&res->body);
    store_result_free(&r);
}

static void handle_flows(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    struct flows_result r = {0};
    struct flows_query q;
    char err[256], took[32];
    uint64_t start = clock_monotonic_ns();

    if (flows_query_parse(&q, req->query, req->query_len, clock_realtime_ns(), err, sizeof(err)) <
        0) {
        http_response_error(res, 400, err);
        return;
    }
    if (flows_query(a->flows, &q, &r) < 0) {
        flows_result_free(&r);
        http_response_error(res, 500, "out of memory running the flows query");
        return;
    }
    flows_result_finish(&r, q.status, q.limit);
    api_format_duration(clock_monotonic_ns() - start, took, sizeof(took));
    flows_response_begin(&res->body, &r, &q, took);
    buf_putc(&res->body, '}');
    flows_result_free(&r);
}

static const char *program_status_name(enum capture_program_status s)
{
    switch (s) {
    case CAPTURE_PROGRAM_ATTACHED:
        return "attached";
    case CAPTURE_PROGRAM_FAILED:
        return "failed";
    default:
        return "disabled";
    }
}

/* Kernel-side losses summed over the programs. */
struct kernel_losses {
    uint64_t drops, suppressed, missed;
    uint64_t dns_suppressed; /* of which the dns programs' (DNS_RATE_LIMIT) */
};

/* The dns programs' rate-limited messages: the kernel's count, current even when no DNS message
 * has come since (a record carries the count only of those before it). */
static uint64_t dns_suppressed(const struct capture_program_info *progs, size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        if (progs[i].event_type && strcmp(progs[i].event_type, event_type_name(EVENT_DNS)) == 0)
            sum += progs[i].suppressed;
    return sum;
}

/* Appends the programs array; sums their kernel-side losses into *sum. */
static void write_programs(struct agent *a, struct buf *b, struct kernel_losses *sum)
{
    struct capture_program_info progs[MAX_PROGRAMS];
    size_t n = capture_programs(a->capture, progs, MAX_PROGRAMS);
    if (n > MAX_PROGRAMS)
        n = MAX_PROGRAMS;
    *sum = (struct kernel_losses){0};
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        const struct capture_program_info *p = &progs[i];
        buf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        buf_json_cstr(b, p->name);
        buf_puts(b, ",\"hook\":");
        buf_json_cstr(b, p->hook);
        buf_puts(b, ",\"event_type\":");
        buf_json_cstr(b, p->event_type ? p->event_type : "");
        buf_puts(b, ",\"status\":");
        buf_json_cstr(b, program_status_name(p->status));
        buf_puts(b, ",\"serves\":[");
        for (int t = 0, k = 0; t < EVENT_TYPE_COUNT; t++)
            if (p->serves & EVENT_TYPE_BIT(t)) {
                if (k++)
                    buf_putc(b, ',');
                buf_json_cstr(b, event_type_name(t));
            }
        buf_putc(b, ']');
        if (p->prog_id)
            buf_printf(b, ",\"id\":%u", p->prog_id);
        if (p->status == CAPTURE_PROGRAM_FAILED) {
            buf_puts(b, ",\"error\":");
            buf_json_cstr(b, p->error);
        }
        buf_printf(b,
                   ",\"events\":%" PRIu64 ",\"drops\":%" PRIu64 ",\"suppressed\":%" PRIu64
                   ",\"untracked\":%" PRIu64 ",\"missed\":%" PRIu64 "}",
                   p->events, p->drops, p->suppressed, p->untracked, p->missed);
        sum->drops += p->drops;
        sum->suppressed += p->suppressed;
        sum->missed += p->missed;
    }
    sum->dns_suppressed = dns_suppressed(progs, n);
    buf_putc(b, ']');
}

static void handle_programs(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    struct kernel_losses unused;
    buf_puts(&res->body, "{\"programs\":");
    write_programs(ctx, &res->body, &unused);
    buf_putc(&res->body, '}');
}

/* The "bus" object of /api/stats: where batches go and how many made it. */
static void write_bus(struct agent *a, struct buf *b, const struct publisher_stats *ps)
{
    char urls[CONFIG_URL];
    bus_redact_urls(a->cfg.nats_url, urls, sizeof(urls));
    buf_printf(b, ",\"bus\":{\"connected\":%s,\"url\":", ps->bus.connected ? "true" : "false");
    buf_json_cstr(b, urls);
    if (ps->bus.server[0]) {
        buf_puts(b, ",\"server\":");
        buf_json_cstr(b, ps->bus.server);
    }
    buf_puts(b, ",\"last_error\":"); /* "" when none, as the aggregator's */
    buf_json_cstr(b, ps->bus.last_error);
    buf_puts(b, ",\"subject\":");
    buf_json_cstr(b, a->subject);
    buf_puts(b, ",\"encoding\":");
    buf_json_cstr(b, config_encoding_name(a->cfg.encoding));
    buf_puts(b, ",\"instance\":");
    buf_json_cstr(b, publisher_instance(a->pub));
    buf_printf(
        b,
        ",\"batch_size\":%u,\"flush_interval\":\"%" PRIu64 "ms\",\"flush_interval_ns\":%" PRIu64
        ",\"heartbeat_interval_ns\":%" PRIu64 ",\"heartbeats\":%" PRIu64
        ",\"outage_buffer_bytes\":%" PRIu64 ",\"sequence\":%" PRIu64 ",\"batches_sent\":%" PRIu64
        ",\"events_sent\":%" PRIu64 ",\"bytes_sent\":%" PRIu64 ",\"batches_dropped\":%" PRIu64
        ",\"batches_too_large\":%" PRIu64 ",\"agent_drops\":%" PRIu64 ",\"encode_failed\":%" PRIu64
        ",\"queue_batches\":%" PRIu64 ",\"queue_bytes\":%" PRIu64 ",\"publish_errors\":%" PRIu64
        ",\"disconnects\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"closed_for_good\":%" PRIu64
        ",\"async_errors\":%" PRIu64 ",\"batches_unheard\":%" PRIu64 ",\"listener\":%s}",
        a->cfg.batch_size, a->cfg.flush_interval_ns / 1000000, a->cfg.flush_interval_ns,
        a->cfg.heartbeat_ns, ps->heartbeats, a->cfg.outage_buffer_bytes, ps->sequence,
        ps->batches_sent, ps->events_sent, ps->bytes_sent, ps->batches_dropped,
        ps->batches_too_large, ps->events_dropped, ps->encode_failed, ps->queue_batches,
        ps->queue_bytes, ps->publish_errors, ps->bus.disconnects, ps->bus.reconnects,
        ps->bus.closed_for_good, ps->bus.async_errors, ps->batches_unheard,
        ps->no_listener ? "false" : "true");
}

/* Pod attribution health: whether pod names can be resolved, and why not. */
static void write_kubernetes(struct agent *a, struct buf *b)
{
    if (!a->cgroups)
        return;
    struct k8s_stats ks;
    struct cgroup_resolver_stats cs;
    struct publisher_stats ps;
    k8s_get_stats(a->k8s, &ks);
    cgroup_resolver_get_stats(a->cgroups, &cs);
    publisher_get_stats(a->pub, &ps);
    buf_printf(b, ",\"kubernetes\":{\"api_connected\":%s,\"last_error\":",
               ks.connected ? "true" : "false");
    buf_json_cstr(b, ks.last_error);
    buf_puts(b, ",\"cgroup_root\":");
    buf_json_cstr(b, cgroup_resolver_root(a->cgroups));
    buf_printf(b,
               ",\"pods_cached\":%" PRIu64 ",\"pods_deleted\":%" PRIu64 ",\"pods_evicted\":%" PRIu64
               ",\"pod_lookups\":%" PRIu64 ",\"pod_misses\":%" PRIu64 ",\"api_errors\":%" PRIu64
               ",\"relists\":%" PRIu64 ",\"cgroup_lookups\":%" PRIu64 ",\"cgroup_misses\":%" PRIu64
               ",\"cgroup_evictions\":%" PRIu64 ",\"cgroup_walks\":%" PRIu64,
               ks.pods_cached, ks.pods_deleted, ks.evicted, ks.lookups, ks.misses, ks.api_errors,
               ks.relists, cs.lookups, cs.misses, cs.evictions, cs.scans);
    buf_printf(b,
               ",\"job_lookups\":%" PRIu64 ",\"job_errors\":%" PRIu64 ",\"jobs_evicted\":%" PRIu64
               ",\"peer_lookups\":%" PRIu64 ",\"peer_hits\":%" PRIu64 ",\"peer_ambiguous\":%" PRIu64
               ",\"deletions_sent\":%" PRIu64 ",\"deletions_dropped\":%" PRIu64 "}",
               ks.job_lookups, ks.job_errors, ks.jobs_evicted, ks.peer_lookups, ks.peer_hits,
               ks.peer_ambiguous, ps.pods_gone, ks.deletions_dropped + ps.pods_gone_dropped);
}

static void handle_stats(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    struct buf *b = &res->body;
    struct store_stats ss;
    struct http_server_stats hs;
    struct publisher_stats ps;
    struct kernel_losses kl;
    if (http_refuse_params(req, res))
        return;
    store_get_stats(a->store, &ss);
    http_server_get_stats(a->http, &hs);
    publisher_get_stats(a->pub, &ps);

    buf_puts(b, "{\"node\":");
    buf_json_cstr(b, a->node);
    buf_puts(b, ",\"deployment_mode\":");
    buf_json_cstr(b, config_mode_name(a->cfg.deployment_mode));
    if (a->cfg.pod_name[0]) {
        buf_puts(b, ",\"pod_name\":");
        buf_json_cstr(b, a->cfg.pod_name);
        buf_puts(b, ",\"pod_namespace\":");
        buf_json_cstr(b, a->cfg.pod_namespace);
    }
    buf_puts(b, ",\"version\":");
    buf_json_cstr(b, EBPF_MONITOR_VERSION);
    uint64_t uptime = clock_monotonic_ns() - a->started_mono_ns;
    buf_printf(b, ",\"uptime_seconds\":%.3f,\"total_events\":%" PRIu64 ",\"events_by_type\":{",
               (double)uptime / 1e9, load(&a->events_total));
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        buf_printf(b, "%s\"%s\":%" PRIu64, t > 1 ? "," : "", event_type_name(t),
                   load(&a->events_by_type[t]));
    buf_puts(b, "},\"programs\":");
    write_programs(a, b, &kl);
    struct capture_record_losses rl;
    capture_record_losses(a->capture, &rl);
    buf_printf(b,
               ",\"kernel_drops\":%" PRIu64 ",\"kernel_missed\":%" PRIu64
               ",\"drops_suppressed\":%" PRIu64 ",\"records_skipped\":{\"malformed\":%" PRIu64
               ",\"no_memory\":%" PRIu64 ",\"duplicate_exit\":%" PRIu64 "},",
               kl.drops, kl.missed, kl.suppressed, rl.malformed, rl.no_memory, rl.duplicate_exit);
    struct capture_sockets_stats sk;
    capture_sockets_stats(a->capture, &sk);
    buf_printf(b,
               "\"sockets\":{\"capacity\":%" PRIu64 ",\"entries\":%" PRIu64 ",\"dead\":%" PRIu64
               ",\"reaped\":%" PRIu64 ",\"reap_races\":%" PRIu64 ",\"reap_errors\":%" PRIu64
               ",\"seeded\":%" PRIu64 ",\"seed_full\":%" PRIu64 ",\"seed_listeners_full\":%" PRIu64
               "},\"history\":",
               sk.capacity, sk.entries, sk.dead, sk.reaped, sk.reap_races, sk.reap_errors,
               sk.seeded, sk.seed_full, sk.seed_listeners_full);
    ss.failed += load(&a->store_failed);
    api_json_append(b, api_store_stats_json(&ss));
    buf_puts(b, ",\"flows\":");
    flows_stats_json(a->flows, b);
    buf_puts(b, ",\"stream\":");
    api_json_append(b, api_stream_stats_json(&hs));
    buf_printf(b, ",\"args_redacted\":%" PRIu64 ",\"args_redact_failed\":%" PRIu64,
               load(&a->args_redacted), load(&a->args_redact_failed));
    struct intern_stats is;
    intern_get_stats(&is);
    buf_printf(b,
               ",\"strings\":{\"held\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"refused\":%" PRIu64 "}",
               is.strings, is.bytes, is.refused);
    write_bus(a, b, &ps);
    write_kubernetes(a, b);
    if (a->dns) {
        buf_puts(b, ",\"dns\":");
        dns_agent_stats_json(a->dns, kl.dns_suppressed, b);
    }
    /* The agent is one node: the same per-node shape the aggregator reports. */
    buf_puts(b, ",\"nodes\":{");
    buf_json_cstr(b, a->node);
    buf_printf(b,
               ":{\"events\":%" PRIu64 ",\"batches\":%" PRIu64 ",\"lost_batches\":%" PRIu64
               ",\"kernel_drops\":%" PRIu64 ",\"kernel_missed\":%" PRIu64
               ",\"agent_drops\":%" PRIu64,
               load(&a->events_total), ps.batches_sent, ps.batches_dropped, kl.drops, kl.missed,
               ps.events_dropped);
    /* The newest event held: when this node was last heard from. */
    if (ss.newest_ns) {
        char when[40];
        event_format_time(ss.newest_ns, when);
        buf_puts(b, ",\"last_seen\":");
        buf_json_cstr(b, when);
    }
    buf_puts(b, "}}}");
}

static void handle_health(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    buf_puts(&res->body, "{\"status\":\"ok\"}");
}

static void handle_ready(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    if (http_refuse_params(req, res))
        return;
    size_t attached = capture_attached(a->capture);
    if (attached == 0)
        res->status = 503;
    buf_printf(&res->body, "{\"status\":\"%s\",\"programs_attached\":%zu}",
               attached ? "ready" : "not ready", attached);
}

static void handle_metrics(void *ctx, const struct http_request *req, struct http_response *res)
{
    if (http_refuse_params(req, res))
        return;
    struct agent *a = ctx;
    struct buf *b = &res->body;
    struct store_stats ss;
    struct http_server_stats hs;
    struct intern_stats is;
    struct capture_program_info progs[MAX_PROGRAMS];
    size_t n = capture_programs(a->capture, progs, MAX_PROGRAMS);
    if (n > MAX_PROGRAMS)
        n = MAX_PROGRAMS;
    store_get_stats(a->store, &ss);
    http_server_get_stats(a->http, &hs);
    intern_get_stats(&is);
    res->content_type = "text/plain; version=0.0.4; charset=utf-8";

    api_metric_header(b, "ebpf_agent_events_total", "counter", "Events captured, by type.");
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        api_metric_labelled(b, "ebpf_agent_events_total", "type", event_type_name(t),
                            load(&a->events_by_type[t]));
    api_metric_header(b, "ebpf_agent_packet_drops_total", "counter",
                      "Packets the kernel dropped, by its drop reason (reported and rate-limited "
                      "drops; SUBSYSTEM = a subsystem's own reasons).");
    _Static_assert(AGENT_DROP_REASONS + 1 == CAPTURE_DROP_REASON_SLOTS, "the same reason slots");
    uint64_t suppressed[CAPTURE_DROP_REASON_SLOTS];
    capture_drops_suppressed(a->capture, suppressed); /* zeroes on error: reported ones only */
    for (unsigned r = 0; r <= AGENT_DROP_REASONS; r++) {
        const char *name = __atomic_load_n(&a->drop_reason_name[r], __ATOMIC_ACQUIRE);
        uint64_t n = load(&a->drops_by_reason[r]) + suppressed[r];
        char code[16];
        if (!n)
            continue;
        if (!name && r == AGENT_DROP_REASONS)
            name = "SUBSYSTEM";
        else if (!name) /* only suppressed ones so far */
            name = capture_drop_reason_name(a->capture, r);
        if (!name) { /* no BTF names: the code */
            snprintf(code, sizeof(code), "%u", r);
            name = code;
        }
        api_metric_labelled(b, "ebpf_agent_packet_drops_total", "reason", name, n);
    }
    api_metric_header(b, "ebpf_agent_program_events_total", "counter",
                      "Records submitted by each eBPF program.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_program_events_total", "program", progs[i].name,
                            progs[i].events);
    api_metric_header(b, "ebpf_agent_kernel_drops_total", "counter",
                      "Events lost in the kernel (ring buffer full), by program.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_kernel_drops_total", "program", progs[i].name,
                            progs[i].drops);
    api_metric_header(
        b, "ebpf_agent_drops_suppressed_total", "counter",
        "Records not reported one by one because of a rate limit (packet drops: DROP_RATE_LIMIT, "
        "DNS messages: DNS_RATE_LIMIT), by program.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_drops_suppressed_total", "program", progs[i].name,
                            progs[i].suppressed);
    api_metric_header(b, "ebpf_agent_program_untracked_total", "counter",
                      "Connections a program could not follow: its kernel socket map was full.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_program_untracked_total", "program", progs[i].name,
                            progs[i].untracked);
    api_metric_header(b, "ebpf_agent_program_missed_total", "counter",
                      "Runs the kernel skipped because the program was already running on that "
                      "CPU (a softirq interrupting a run in process context).");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_program_missed_total", "program", progs[i].name,
                            progs[i].missed);
    struct capture_record_losses rl;
    capture_record_losses(a->capture, &rl);
    struct capture_sockets_stats sk;
    capture_sockets_stats(a->capture, &sk);
    api_metric(b, "ebpf_agent_socket_map_capacity", "gauge",
               "Entries the kernel map following TCP sockets holds at most.", sk.capacity);
    api_metric_header(b, "ebpf_agent_socket_map_entries", "gauge",
                      "Entries of the kernel socket map at its last reaping pass, by state.");
    api_metric_labelled(b, "ebpf_agent_socket_map_entries", "state", "followed",
                        sk.entries > sk.dead ? sk.entries - sk.dead : 0);
    api_metric_labelled(b, "ebpf_agent_socket_map_entries", "state", "dead", sk.dead);
    api_metric(b, "ebpf_agent_socket_map_reaped_total", "counter",
               "Entries of closed connections deleted from the kernel socket map.", sk.reaped);
    api_metric(b, "ebpf_agent_socket_map_reap_races_total", "counter",
               "Socket map entries a new socket took over while they were being deleted.",
               sk.reap_races);
    api_metric(b, "ebpf_agent_socket_map_reap_errors_total", "counter",
               "Failed reads or deletes of the kernel socket map.", sk.reap_errors);
    api_metric(b, "ebpf_agent_socket_map_seeded_total", "counter",
               "TCP connections open when the agent started, followed from then to their close.",
               sk.seeded);
    api_metric(b, "ebpf_agent_socket_map_seed_full_total", "counter",
               "TCP connections open when the agent started not followed: the map was full.",
               sk.seed_full);
    api_metric(b, "ebpf_agent_socket_map_seed_listeners_full_total", "counter",
               "Listening ports not noted when the agent started (their map was full): "
               "connections open then and accepted from them have their role read from "
               "their socket alone.",
               sk.seed_listeners_full);
    api_metric_header(b, "ebpf_agent_records_skipped_total", "counter",
                      "Kernel records that produced no event, by reason.");
    api_metric_labelled(b, "ebpf_agent_records_skipped_total", "reason", "malformed", rl.malformed);
    api_metric_labelled(b, "ebpf_agent_records_skipped_total", "reason", "no_memory", rl.no_memory);
    api_metric_labelled(b, "ebpf_agent_records_skipped_total", "reason", "duplicate_exit",
                        rl.duplicate_exit);
    api_metric_header(b, "ebpf_agent_program_attached", "gauge", "1 when the program is attached.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_program_attached", "program", progs[i].name,
                            progs[i].status == CAPTURE_PROGRAM_ATTACHED);
    ss.failed += load(&a->store_failed);
    api_store_metrics(b, "ebpf_agent", &ss);
    flows_stats_metrics(a->flows, "ebpf_agent", b);
    api_metric(b, "ebpf_agent_args_redacted_total", "counter",
               "Exec argument values replaced by *** (REDACT_ARGS).", load(&a->args_redacted));
    api_metric(b, "ebpf_agent_args_redact_failed_total", "counter",
               "Exec events whose arguments were dropped because redaction ran out of memory.",
               load(&a->args_redact_failed));
    api_http_metrics(b, "ebpf_agent", &hs, 0);
    api_metric(b, "ebpf_agent_intern_refused_total", "counter",
               "Strings not interned because the table was full.", is.refused);
    api_metric(b, "ebpf_agent_intern_bytes", "gauge",
               "Memory the string table takes (its names and slots), of INTERN_MAX_BYTES (64 MiB).",
               is.bytes);
    struct publisher_stats ps;
    publisher_get_stats(a->pub, &ps);
    api_metric(b, "ebpf_agent_bus_connected", "gauge", "1 while connected to NATS.",
               ps.bus.connected);
    api_metric(b, "ebpf_agent_bus_batches_sent_total", "counter", "Batches published to NATS.",
               ps.batches_sent);
    api_metric(b, "ebpf_agent_bus_events_sent_total", "counter", "Events published to NATS.",
               ps.events_sent);
    api_metric(b, "ebpf_agent_bus_bytes_sent_total", "counter",
               "Batch payload bytes published to NATS.", ps.bytes_sent);
    api_metric(b, "ebpf_agent_bus_dropped_batches_total", "counter",
               "Batches dropped: the outage buffer was full, or one event was larger than the "
               "server's max_payload.",
               ps.batches_dropped);
    api_metric(b, "ebpf_agent_bus_too_large_batches_total", "counter",
               "Batches of one event larger than the NATS server's max_payload, dropped "
               "(included in ebpf_agent_bus_dropped_batches_total).",
               ps.batches_too_large);
    api_metric(b, "ebpf_agent_bus_dropped_events_total", "counter",
               "Events never published (agent-side drops: outage buffer full, encoding failed).",
               ps.events_dropped);
    api_metric(b, "ebpf_agent_bus_queue_batches", "gauge", "Batches waiting to be published.",
               ps.queue_batches);
    api_metric(b, "ebpf_agent_bus_queue_bytes", "gauge",
               "Bytes of batches waiting to be published.", ps.queue_bytes);
    api_metric(b, "ebpf_agent_bus_publish_errors_total", "counter",
               "Publish attempts that failed (retried).", ps.publish_errors);
    api_metric(b, "ebpf_agent_bus_reconnects_total", "counter", "Reconnections to NATS.",
               ps.bus.reconnects);
    api_metric(b, "ebpf_agent_bus_closed_for_good_total", "counter",
               "Connections the NATS client closed for good (the servers refused the credentials, "
               "or another error such as max_connections); each is opened again.",
               ps.bus.closed_for_good);
    api_metric(b, "ebpf_agent_bus_unheard_batches_total", "counter",
               "Batches NATS delivered to no subscriber (no aggregator listening), queued again.",
               ps.batches_unheard);
    api_metric(b, "ebpf_agent_bus_listener", "gauge",
               "0 while batches reach no subscriber and are held; 1 otherwise.", !ps.no_listener);
    api_metric(b, "ebpf_agent_bus_async_errors_total", "counter",
               "Errors the NATS server reported on the connection (a subject not permitted, a "
               "slow consumer).",
               ps.bus.async_errors);
    if (a->cgroups) {
        struct k8s_stats ks;
        struct cgroup_resolver_stats cs;
        k8s_get_stats(a->k8s, &ks);
        cgroup_resolver_get_stats(a->cgroups, &cs);
        api_metric(b, "ebpf_agent_k8s_api_connected", "gauge",
                   "1 when the last Kubernetes API request succeeded.", ks.connected);
        api_metric(b, "ebpf_agent_k8s_pods_cached", "gauge", "Pods in the metadata cache.",
                   ks.pods_cached);
        api_metric(b, "ebpf_agent_k8s_pods_evicted_total", "counter",
                   "Pods dropped from the cache to stay within K8S_MAX_PODS.", ks.evicted);
        api_metric(b, "ebpf_agent_k8s_jobs_evicted_total", "counter",
                   "Jobs dropped from the cache before their CronJob was read: their pods say "
                   "kind Job.",
                   ks.jobs_evicted);
        api_metric(b, "ebpf_agent_k8s_pod_misses_total", "counter",
                   "Pod events whose pod was not in the cache (named by UID only).", ks.misses);
        api_metric(b, "ebpf_agent_k8s_api_errors_total", "counter",
                   "Failed Kubernetes API requests.", ks.api_errors);
        api_metric(b, "ebpf_agent_k8s_deletions_sent_total", "counter",
                   "Deleted pods' addresses put in batches for the aggregators.", ps.pods_gone);
        api_metric(b, "ebpf_agent_k8s_deletions_dropped_total", "counter",
                   "Deleted pods never sent (queue full, no memory): aggregators may name them "
                   "up to PEER_TTL.",
                   ks.deletions_dropped + ps.pods_gone_dropped);
        api_metric(b, "ebpf_agent_cgroup_cache_evictions_total", "counter",
                   "cgroup ids dropped from the resolver cache.", cs.evictions);
        api_metric(b, "ebpf_agent_cgroup_walks_total", "counter",
                   "Walks of the kubepods cgroup tree to resolve a new cgroup id.", cs.scans);
    }
    if (a->dns)
        dns_agent_metrics(a->dns, dns_suppressed(progs, n), b);
    api_metric(b, "ebpf_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
               (clock_monotonic_ns() - a->started_mono_ns) / 1000000000ull);
}

/* A resumed stream's history: this node's. */
static int replay_events(void *ctx, const char *qs, size_t qslen, const struct query *q,
                         struct http_replay *out)
{
    struct agent *a = ctx;
    struct store_result r;
    int rc = store_query(a->store, q, &r);

    *out = (struct http_replay){
        .events = r.events, .count = r.count, .total_count = r.total_count, .has_next = r.has_next};
    return rc;
}

int agent_api_register(struct agent *a)
{
    int rc = 0;
    rc |= http_server_stream(a->http, "/api/events/stream");
    http_server_on_stream_replay(a->http, replay_events, a);
    rc |= http_server_route(a->http, "/api/events", handle_events, a);
    rc |= http_server_route(a->http, "/api/flows", handle_flows, a);
    rc |= http_server_route(a->http, "/api/stats", handle_stats, a);
    rc |= http_server_route(a->http, "/api/programs", handle_programs, a);
    rc |= http_server_route(a->http, "/health", handle_health, a);
    rc |= http_server_route(a->http, "/ready", handle_ready, a);
    rc |= http_server_route(a->http, "/metrics", handle_metrics, a);
    rc |= openapi_register(a->http);
    rc |= ui_register(a->http);
    return rc ? -EINVAL : 0;
}

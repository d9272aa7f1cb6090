/* The agent's HTTP routes: local history, stats, programs, health, metrics. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "api.h"
#include "intern.h"

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
    uint64_t start = api_monotonic_ns();

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
                     r.has_next ? &r.next_cursor : NULL, api_monotonic_ns() - start);
    api_events_end(&res->body);
    store_result_free(&r);
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

/* Appends the programs array; sums kernel-side losses into *kernel_drops, *suppressed. */
static void write_programs(struct agent *a, struct buf *b, uint64_t *kernel_drops,
                           uint64_t *suppressed)
{
    struct capture_program_info progs[MAX_PROGRAMS];
    size_t n = capture_programs(a->capture, progs, MAX_PROGRAMS);
    if (n > MAX_PROGRAMS)
        n = MAX_PROGRAMS;
    *kernel_drops = *suppressed = 0;
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
        if (p->prog_id)
            buf_printf(b, ",\"id\":%u", p->prog_id);
        if (p->status == CAPTURE_PROGRAM_FAILED) {
            buf_puts(b, ",\"error\":");
            buf_json_cstr(b, p->error);
        }
        buf_printf(b, ",\"events\":%" PRIu64 ",\"drops\":%" PRIu64 ",\"suppressed\":%" PRIu64 "}",
                   p->events, p->drops, p->suppressed);
        *kernel_drops += p->drops;
        *suppressed += p->suppressed;
    }
    buf_putc(b, ']');
}

static void handle_programs(void *ctx, const struct http_request *req, struct http_response *res)
{
    uint64_t drops, suppressed;
    buf_puts(&res->body, "{\"programs\":");
    write_programs(ctx, &res->body, &drops, &suppressed);
    buf_putc(&res->body, '}');
}

static void handle_stats(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    struct buf *b = &res->body;
    struct store_stats ss;
    struct http_server_stats hs;
    uint64_t kernel_drops, suppressed;
    store_get_stats(a->store, &ss);
    http_server_get_stats(a->http, &hs);

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
    uint64_t uptime = api_monotonic_ns() - a->started_mono_ns;
    buf_printf(b, ",\"uptime_seconds\":%.3f,\"total_events\":%" PRIu64 ",\"events_by_type\":{",
               (double)uptime / 1e9, load(&a->events_total));
    for (unsigned t = 1; t < EVENT_TYPE_COUNT; t++)
        buf_printf(b, "%s\"%s\":%" PRIu64, t > 1 ? "," : "", event_type_name(t),
                   load(&a->events_by_type[t]));
    buf_puts(b, "},\"programs\":");
    write_programs(a, b, &kernel_drops, &suppressed);
    buf_printf(b,
               ",\"kernel_drops\":%" PRIu64 ",\"drops_suppressed\":%" PRIu64
               ",\"history\":{\"events\":%" PRIu64 ",\"capacity\":%" PRIu64
               ",\"evicted_count\":%" PRIu64 ",\"evicted_age\":%" PRIu64 ",\"failed\":%" PRIu64
               "},\"stream\":{\"clients\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"dropped\":%" PRIu64
               ",\"publish_dropped\":%" PRIu64 "}",
               kernel_drops, suppressed, ss.events, ss.capacity, ss.evicted_count, ss.evicted_age,
               ss.failed + load(&a->store_failed), hs.stream_clients, hs.stream_sent,
               hs.stream_dropped, hs.publish_dropped);
    /* The agent is one node: the same per-node shape the aggregator reports. */
    buf_puts(b, ",\"nodes\":{");
    buf_json_cstr(b, a->node);
    buf_printf(b, ":{\"events\":%" PRIu64 ",\"kernel_drops\":%" PRIu64 "}}}",
               load(&a->events_total), kernel_drops);
}

static void handle_health(void *ctx, const struct http_request *req, struct http_response *res)
{
    buf_puts(&res->body, "{\"status\":\"ok\"}");
}

static void handle_ready(void *ctx, const struct http_request *req, struct http_response *res)
{
    struct agent *a = ctx;
    size_t attached = capture_attached(a->capture);
    if (attached == 0)
        res->status = 503;
    buf_printf(&res->body, "{\"status\":\"%s\",\"programs_attached\":%zu}",
               attached ? "ready" : "not ready", attached);
}

static void handle_metrics(void *ctx, const struct http_request *req, struct http_response *res)
{
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
    api_metric_header(b, "ebpf_agent_drops_suppressed_total", "counter",
                      "Packet drops not reported individually because of the rate limit.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_drops_suppressed_total", "program", progs[i].name,
                            progs[i].suppressed);
    api_metric_header(b, "ebpf_agent_program_attached", "gauge", "1 when the program is attached.");
    for (size_t i = 0; i < n; i++)
        api_metric_labelled(b, "ebpf_agent_program_attached", "program", progs[i].name,
                            progs[i].status == CAPTURE_PROGRAM_ATTACHED);
    api_metric(b, "ebpf_agent_history_events", "gauge", "Events held in the local history.",
               ss.events);
    api_metric(b, "ebpf_agent_history_capacity", "gauge", "Local history limit (events).",
               ss.capacity);
    api_metric_header(b, "ebpf_agent_history_evicted_total", "counter",
                      "Events evicted from the local history, by limit.");
    api_metric_labelled(b, "ebpf_agent_history_evicted_total", "reason", "count", ss.evicted_count);
    api_metric_labelled(b, "ebpf_agent_history_evicted_total", "reason", "age", ss.evicted_age);
    api_metric(b, "ebpf_agent_history_failed_total", "counter",
               "Events that could not be stored (out of memory).",
               ss.failed + load(&a->store_failed));
    api_metric(b, "ebpf_agent_stream_clients", "gauge", "Connected /api/events/stream clients.",
               hs.stream_clients);
    api_metric(b, "ebpf_agent_stream_dropped_total", "counter",
               "Events a slow stream client missed.", hs.stream_dropped + hs.publish_dropped);
    api_metric(b, "ebpf_agent_http_requests_total", "counter", "HTTP requests served.",
               hs.requests);
    api_metric(b, "ebpf_agent_intern_refused_total", "counter",
               "Strings not interned because the table was full.", is.refused);
    api_metric(b, "ebpf_agent_uptime_seconds", "gauge", "Seconds since the agent started.",
               (api_monotonic_ns() - a->started_mono_ns) / 1000000000ull);
}

int agent_api_register(struct agent *a)
{
    int rc = 0;
    rc |= http_server_stream(a->http, "/api/events/stream");
    rc |= http_server_route(a->http, "/api/events", handle_events, a);
    rc |= http_server_route(a->http, "/api/stats", handle_stats, a);
    rc |= http_server_route(a->http, "/api/programs", handle_programs, a);
    rc |= http_server_route(a->http, "/health", handle_health, a);
    rc |= http_server_route(a->http, "/ready", handle_ready, a);
    rc |= http_server_route(a->http, "/metrics", handle_metrics, a);
    return rc ? -EINVAL : 0;
}

/* Shared HTTP API response helpers. */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "event_json.h"

struct http_server *api_server_new(const struct config *c, char *err, size_t errlen)
{
    struct http_server_config hc = {
        .listen_addr = c->listen_addr,
        .api_token = c->api_token[0] ? c->api_token : NULL,
        .tls_cert = c->tls_cert[0] ? c->tls_cert : NULL,
        .tls_key = c->tls_key[0] ? c->tls_key : NULL,
    };
    return http_server_new(&hc, err, errlen);
}

void api_format_duration(uint64_t ns, char *out, size_t len)
{
    if (ns < 1000)
        snprintf(out, len, "%" PRIu64 "ns", ns);
    else if (ns < 1000000)
        snprintf(out, len, "%.3gµs", (double)ns / 1e3);
    else if (ns < 1000000000)
        snprintf(out, len, "%.4gms", (double)ns / 1e6);
    else
        snprintf(out, len, "%.4gs", (double)ns / 1e9);
}

void api_events_begin(struct buf *b, const struct event *events, size_t count, uint64_t total_count,
                      const struct query_cursor *next, uint64_t query_ns)
{
    buf_puts(b, "{\"events\":[");
    for (size_t i = 0; i < count; i++) {
        if (i)
            buf_putc(b, ',');
        event_json_write(b, &events[i]);
    }
    buf_printf(b, "],\"count\":%zu,\"total_count\":%" PRIu64 ",\"next_cursor\":", count,
               total_count);
    if (next) {
        char cur[QUERY_CURSOR_LEN];
        query_cursor_format(next, cur);
        buf_json_cstr(b, cur);
    } else {
        buf_puts(b, "null");
    }
    char qt[32];
    api_format_duration(query_ns, qt, sizeof(qt));
    buf_puts(b, ",\"query_time\":");
    buf_json_cstr(b, qt);
}

void api_events_end(struct buf *b)
{
    buf_putc(b, '}');
}

void api_metric_header(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void api_metric(struct buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    api_metric_header(b, name, type, help);
    buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

void api_label_escape(struct buf *b, const char *value)
{
    size_t len = strlen(value);

    for (size_t i = 0; i < len;) {
        size_t n = buf_utf8_seq(value + i, len - i);
        if (n == 0) {
            /* A label value must be UTF-8 (a scraper rejects the whole page otherwise). */
            buf_puts(b, "\xef\xbf\xbd");
            i++;
            continue;
        }
        if (value[i] == '\\' || value[i] == '"')
            buf_putc(b, '\\');
        if (value[i] == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, value + i, n);
        i += n;
    }
}

void api_metric_labelled(struct buf *b, const char *name, const char *label, const char *value,
                         uint64_t v)
{
    buf_printf(b, "%s{%s=\"", name, label);
    api_label_escape(b, value);
    buf_printf(b, "\"} %" PRIu64 "\n", v);
}

void api_json_set_u64(json_t *o, const char *key, uint64_t v)
{
    json_object_set_new(o, key, json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v));
}

void api_json_append(struct buf *b, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        buf_puts(b, s);
    else
        b->oom = true;
    free(s);
    json_decref(j);
}

json_t *api_store_stats_json(const struct store_stats *ss)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    api_json_set_u64(o, "events", ss->events);
    api_json_set_u64(o, "capacity", ss->capacity);
    api_json_set_u64(o, "evicted_count", ss->evicted_count);
    api_json_set_u64(o, "evicted_age", ss->evicted_age);
    api_json_set_u64(o, "duplicates", ss->duplicates);
    api_json_set_u64(o, "failed", ss->failed);
    api_json_set_u64(o, "index_bytes", ss->index_bytes);
    api_json_set_u64(o, "shards", ss->shards);
    api_json_set_u64(o, "shards_made", ss->shards_made);
    return o;
}

json_t *api_stream_stats_json(const struct http_server_stats *hs)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    api_json_set_u64(o, "clients", hs->stream_clients);
    api_json_set_u64(o, "sent", hs->stream_sent);
    api_json_set_u64(o, "queued", hs->stream_queued);
    api_json_set_u64(o, "dropped", hs->stream_dropped + hs->publish_dropped);
    api_json_set_u64(o, "publish_dropped", hs->publish_dropped);
    return o;
}

/* prefix + suffix into out, the name of one metric family. */
static const char *metric_name(char *out, size_t len, const char *prefix, const char *suffix)
{
    snprintf(out, len, "%s_%s", prefix, suffix);
    return out;
}

void api_store_metrics(struct buf *b, const char *prefix, const struct store_stats *ss)
{
    char n[96];
    api_metric(b, metric_name(n, sizeof(n), prefix, "history_events"), "gauge",
               "Events held in the history.", ss->events);
    api_metric(b, metric_name(n, sizeof(n), prefix, "history_capacity"), "gauge",
               "History limit (events).", ss->capacity);
    metric_name(n, sizeof(n), prefix, "history_evicted_total");
    api_metric_header(b, n, "counter", "Events evicted from the history, by limit.");
    api_metric_labelled(b, n, "reason", "count", ss->evicted_count);
    api_metric_labelled(b, n, "reason", "age", ss->evicted_age);
    api_metric(b, metric_name(n, sizeof(n), prefix, "history_failed_total"), "counter",
               "Events that could not be stored (out of memory).", ss->failed);
}

void api_http_metrics(struct buf *b, const char *prefix, const struct http_server_stats *hs,
                      uint64_t upstream_dropped)
{
    char n[96];
    api_metric(b, metric_name(n, sizeof(n), prefix, "stream_clients"), "gauge",
               "Connected /api/events/stream clients.", hs->stream_clients);
    api_metric(b, metric_name(n, sizeof(n), prefix, "stream_dropped_total"), "counter",
               "Events stream clients missed (slow client, full queue, slow subscription).",
               hs->stream_dropped + hs->publish_dropped + upstream_dropped);
    api_metric(b, metric_name(n, sizeof(n), prefix, "http_requests_total"), "counter",
               "HTTP requests served.", hs->requests);
}

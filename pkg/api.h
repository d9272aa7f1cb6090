/*
 * Pieces of the HTTP API shared by the agent and the aggregator: the
 * /api/events response body and Prometheus text helpers.
 */
#ifndef EBPF_MONITOR_API_H
#define EBPF_MONITOR_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "http_server.h"
#include "store.h"

/* The HTTP server both programs serve: LISTEN_ADDR, API_TOKEN, TLS_CERT/TLS_KEY from c. */
struct http_server *api_server_new(const struct config *c, char *err, size_t errlen);

/* Formats a duration the way the API reports it: "734µs", "1.25ms", "2.5s". */
void api_format_duration(uint64_t ns, char *out, size_t len);

/*
 * Writes {"events":[...],"count":n,"total_count":t,"next_cursor":...|null,
 * "query_time":"..."} without the closing brace, so a caller can append
 * more members (the aggregator adds "replicas") before api_events_end().
 */
void api_events_begin(struct buf *b, const struct event *events, size_t count, uint64_t total_count,
                      const struct query_cursor *next, uint64_t query_ns);
void api_events_end(struct buf *b);

/* Prometheus text: "# HELP", "# TYPE" and one sample without labels. */
void api_metric(struct buf *b, const char *name, const char *type, const char *help, uint64_t v);
/* The "# HELP"/"# TYPE" header alone, for a family with labelled samples. */
void api_metric_header(struct buf *b, const char *name, const char *type, const char *help);
/* A label value as Prometheus text wants it (\\, \" and \n escaped, each byte of no valid UTF-8
 * sequence as U+FFFD), without the quotes. */
void api_label_escape(struct buf *b, const char *value);
/* One sample with a single label: name{label="value"} v */
void api_metric_labelled(struct buf *b, const char *name, const char *label, const char *value,
                         uint64_t v);

/*
 * The blocks of /api/stats and /metrics that both programs report the same
 * way. The JSON ones return a new object (NULL when out of memory); metric
 * names are prefix ("ebpf_agent", "ebpf_aggregator") + a fixed suffix.
 */
/* "history": {"events","capacity","evicted_count","evicted_age","duplicates","failed"}. */
json_t *api_store_stats_json(const struct store_stats *ss);
/* <prefix>_history_events, _history_capacity, _history_evicted_total{reason},
 * _history_failed_total. */
void api_store_metrics(struct buf *b, const char *prefix, const struct store_stats *ss);
/* "stream": {"clients","sent","dropped","publish_dropped"}; dropped counts both kinds of loss. */
json_t *api_stream_stats_json(const struct http_server_stats *hs);
/* <prefix>_stream_clients, _stream_dropped_total (plus upstream_dropped, events lost before
 * they reached the server), _http_requests_total. */
void api_http_metrics(struct buf *b, const char *prefix, const struct http_server_stats *hs,
                      uint64_t upstream_dropped);
/* Sets key to v, clamped to JSON's signed 64-bit integers. */
void api_json_set_u64(json_t *o, const char *key, uint64_t v);
/* Appends j compactly to b and releases it; marks b out of memory when j is NULL. */
void api_json_append(struct buf *b, json_t *j);

#endif

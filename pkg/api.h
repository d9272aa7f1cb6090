/*
 * Pieces of the HTTP API shared by the agent and the aggregator: the
 * /api/events response body and Prometheus text helpers.
 */
#ifndef EBPF_MONITOR_API_H
#define EBPF_MONITOR_API_H

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
/* One sample with a single label: name{label="value"} v */
void api_metric_labelled(struct buf *b, const char *name, const char *label, const char *value,
                         uint64_t v);

/* Current time in ns since the epoch (CLOCK_REALTIME) and monotonic ns: the
 * clock.h clocks under their older names; new code calls clock.h directly. */
uint64_t api_now_ns(void);
uint64_t api_monotonic_ns(void);

#endif

/*
 * The NATS side shared by the agent and the aggregator: connecting with the
 * configured servers, credentials and TLS (reconnecting forever, with
 * jitter), subject names, and the header names batches carry.
 */
#ifndef EBPF_MONITOR_BUS_H
#define EBPF_MONITOR_BUS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "event.h"

/* Headers on every batch message (so `nats sub` shows them). */
#define BUS_HDR_CONTENT_TYPE  "Content-Type"
#define BUS_HDR_NODE          "Ebpf-Node"
#define BUS_HDR_INSTANCE      "Ebpf-Instance"
#define BUS_HDR_SEQUENCE      "Ebpf-Sequence"
#define BUS_HDR_EVENTS        "Ebpf-Events"        /* events in the batch */
#define BUS_HDR_KERNEL_DROPS  "Ebpf-Kernel-Drops"  /* cumulative, this instance */
#define BUS_HDR_AGENT_DROPS   "Ebpf-Agent-Drops"   /* cumulative, this instance */
#define BUS_HDR_KERNEL_MISSED "Ebpf-Kernel-Missed" /* cumulative, this instance */
#define BUS_HDR_PODS_GONE     "Ebpf-Pods-Gone"     /* pods deleted since: peers_gone_write() */
/* The node's pods when the agent first listed them, once per instance: peers_present_write(). */
#define BUS_HDR_PODS_PRESENT "Ebpf-Pods-Present"
/* When the instance started and when the batch was sent, ns since the Unix epoch, by the
 * agent's clock (EventBatch.instance_started_ns, sent_at_ns). */
#define BUS_HDR_INSTANCE_STARTED "Ebpf-Instance-Started"
#define BUS_HDR_SENT_AT          "Ebpf-Sent-At"

#define BUS_CONTENT_TYPE_PROTOBUF "application/x-protobuf; messageType=ebpfmonitor.EventBatch"
#define BUS_CONTENT_TYPE_JSON     "application/x-ndjson"

/* Largest batch message a publisher sends and an aggregator accepts. */
#define BUS_MAX_MESSAGE_BYTES (8u << 20)
/* Largest number of events in one batch (the largest BATCH_SIZE). */
#define BUS_MAX_BATCH_EVENTS 10000
/* How far ahead of the receiver's clock an event's timestamp may be: EVENT_MAX_AHEAD_NS. */
#define BUS_MAX_AHEAD_NS EVENT_MAX_AHEAD_NS

/* Connection state counters, updated from nats.c's callback threads. */
struct bus_status {
    bool connected;
    bool closed; /* closed for good: nats.c gave up after the server refused our credentials;
                    a new connection is opened after a wait (bus_conn()) */
    uint64_t disconnects;
    uint64_t reconnects;
    uint64_t closed_for_good; /* connections nats.c closed for good (the servers refused the
                                 credentials, or another error such as max_connections) */
    uint64_t async_errors;    /* slow consumer, permissions... */
    char server[256];         /* the server connected to, without credentials; "" when not */
    char last_error[512];     /* the last connection or asynchronous error; "" when none */
};

struct bus;

struct bus_options {
    const char *name;     /* client name shown by the server (bytes other than printable ASCII,
                             '"' and '\\' shown as '_'); may be NULL */
    bool no_echo;         /* never receive our own publications (aggregator replicas) */
    bool send_asap;       /* write each publication at once, not on the next flush (latency-bound
                             traffic: queries and their answers) */
    bool no_reopen;       /* when nats.c closes the connection for good, leave it closed (a
                             command that reports it and exits) */
    const char *label;    /* tells this connection's log lines from another's of the process
                             ("NATS (label): ..."); may be NULL */
    const char *log_name; /* what the log lines start with; NULL: the program's name */
};

/*
 * Connects (or, when no server answers yet, keeps retrying in the
 * background: the caller can start without NATS). name is the client name
 * shown by the server. NULL with a one-line message in err for a bad
 * configuration (unreadable creds/TLS file, empty URL list, ...). A server
 * that refuses the credentials shows in bus_get_status() (last_error, and
 * closed once nats.c stops retrying, until the bus opens a new connection),
 * not as a failure here.
 */
struct bus *bus_open(const struct config *cfg, const char *name, char *err, size_t errlen);
/* bus_open() with more options (o may be NULL). */
struct bus *bus_open_opts(const struct config *cfg, const struct bus_options *o, char *err,
                          size_t errlen);
void bus_close(struct bus *b);
/*
 * Waits up to timeout_ms for nats.c to close the connection for good (its
 * closed callback has run, after a refused login or bus_close()); true once
 * it has, false on timeout. The reason is then in bus_get_status().last_error.
 */
bool bus_wait_closed(struct bus *b, unsigned timeout_ms);
/* Each client retries a lost server every BUS_RECONNECT_WAIT ms plus up to its jitter. */
#define BUS_RECONNECT_WAIT   250  /* ms */
#define BUS_RECONNECT_JITTER 250  /* ms, spreads a fleet of agents after an outage */
#define BUS_TLS_JITTER       1000 /* ms; TLS handshakes cost the server more */
/*
 * After a server comes back, the time within which every client that lost it
 * has reconnected, and re-subscribed, with a margin: two retry periods.
 */
#define BUS_SETTLE_MS (2 * (BUS_RECONNECT_WAIT + BUS_TLS_JITTER))
/* How long to give nats.c to report a refused login after a call failed on it. */
#define BUS_CLOSED_WAIT_MS 2000
/*
 * The current connection. Once nats.c closes one for good (the servers refused
 * the credentials twice, or answered another error), the bus opens a new one
 * after a wait (unless no_reopen): a caller fetches it for each call, never
 * keeps it. A connection replaced stays valid for a minute after it was.
 */
natsConnection *bus_conn(struct bus *b);
/* How many times the connection was replaced; subscriptions on an earlier one receive nothing. */
uint64_t bus_generation(struct bus *b);
/*
 * Called on the bus's thread right after a new connection replaced a closed one
 * (bus_conn() returns it): the owner subscribes again. It may be a while
 * before it connects; subscriptions made meanwhile are sent when it does. NULL
 * removes it; once bus_set_renew() returns, the old one is not running.
 */
typedef void (*bus_renew_fn)(void *ctx);
void bus_set_renew(struct bus *b, bus_renew_fn fn, void *ctx);
void bus_get_status(struct bus *b, struct bus_status *out);
bool bus_connected(struct bus *b);

/*
 * Publishes the server refused ("Permissions Violation for Publish to ..."),
 * counted as nats.c reports them, one per message, on its callback thread: a
 * little after the server's answer to a later PING. bus_publish_denied_last()
 * is whether such a refusal is the connection's last error, which nats.c
 * records before it reads on: true after a round trip when a message sent
 * before it was refused, and true until another error, also once the count
 * has caught up.
 */
#define BUS_PUBLISH_DENIED "Permissions Violation for Publish to"
uint64_t bus_publish_denied(struct bus *b);
bool bus_publish_denied_last(struct bus *b);

/*
 * Called from nats.c's threads on every change of connection state. One
 * listener per bus; it must not block nor call into the bus. NULL removes
 * it; once bus_set_listener() returns, the old listener is not running.
 */
typedef void (*bus_state_fn)(void *ctx, bool connected);
void bus_set_listener(struct bus *b, bus_state_fn fn, void *ctx);

/*
 * Ends sub, a subscription of connection nc, and frees it. nats.c 3.4 (Debian
 * 12) looks a message's subscription up and uses it after letting go of the
 * connection's lock, holding no reference (nats.c #637, fixed in 3.6): a
 * subscription destroyed while the connection's reader handles a message for
 * it is used after it is freed. So it is unsubscribed (no message finds it
 * any more), then the connection flushed: its reader handles the server's
 * answer only after the message it may have been handling. Messages still
 * queued for it are dropped; an asynchronous subscription's handler may still
 * be running when this returns. When the flush fails on a connection still
 * open (no answer within timeout_ms), sub is left allocated rather than risk
 * it: false. A connection closed for good has stopped its reader.
 */
bool bus_sub_end(natsConnection *nc, natsSubscription *sub, int timeout_ms);

/* config_redact_urls(). */
void bus_redact_urls(const char *urls, char *out, size_t len);

/* "<prefix>.<node>" with '.', '*', '>' and whitespace in node replaced by '_'. */
void bus_node_subject(const char *prefix, const char *node, char *out, size_t len);

#endif

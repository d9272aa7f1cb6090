/*
 * `ebpf-aggregator tail`: follows the bus live and prints every event as one
 * JSON line, whichever encoding the agents use.
 *
 * It is a plain (non-queue) subscriber, so it sees every batch without taking
 * any away from the aggregators. Filters are the API's, parsed by the same
 * query_parse() the stream endpoint uses, so they accept and reject exactly
 * the same values with the same messages.
 *
 * Core NATS delivers at most once: what is published while the tail is
 * disconnected, or what the server drops when the tail reads too slowly, is
 * gone. Batches carry a sequence number per agent instance, so the tail counts
 * the gaps as the aggregators do (pkg/nodes) and says on stderr how many
 * batches it missed, rather than let their events vanish unseen.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregator/commands.h"
#include "bus.h"
#include "clock.h"
#include "bus_message.h"
#include "config.h"
#include "errmsg.h"
#include "event_json.h"
#include "nodes.h"
#include "query.h"

#define TAIL_PROG          "ebpf-aggregator tail"
#define TAIL_MAX_INSTANCES 65536 /* agent instances whose sequence numbers are followed */

/* The API's filters, in the order --help lists them. */
static const char *const tail_filters[] = {
    "type",     "node",           "pod",           "namespace",    "workload",  "pid",    "command",
    "peer_pod", "peer_namespace", "peer_workload", "peer_service", "dest_port", "status", "query",
    "rcode",    "since",          "until",
};

static volatile sig_atomic_t tail_stop;

static void tail_on_signal(int sig)
{
    tail_stop = 1;
}

static void tail_usage(FILE *out)
{
    fprintf(out,
            "Usage: ebpf-aggregator tail [--nats URL] [--subject SUBJECT] [filters] [options]\n"
            "\n"
            "Follows the bus and prints every event as one JSON line (the API's format),\n"
            "decoding protobuf and JSON batches alike. Ctrl-C stops.\n"
            "\n"
            "  --nats URL          NATS server list (default: NATS_URL, nats://127.0.0.1:4222)\n"
            "  --subject SUBJECT   subject to follow (default: <SUBJECT_PREFIX>.>, i.e.\n"
            "                      ebpf.events.>; ebpf.events.NODE follows one node)\n"
            "\n"
            "Filters (as on /api/events/stream):\n"
            "  --type LIST         connection, accept, close, packet_drop, exec, exit, dns (comma "
            "list)\n"
            "  --node NAME         --pod NAME   --namespace NAME   --workload NAME\n"
            "  --pid PID           --command COMM\n"
            "  --peer-pod NAME     --peer-namespace NAME   --peer-workload NAME\n"
            "                      (the other end of a connection, accept or close)\n"
            "  --dest-port PORT    --status established|failed|attempted|answered|timeout|unknown\n"
            "  --query NAME        dns events for NAME, or *.SUFFIX for its subdomains\n"
            "  --rcode RCODE       answered dns events with this rcode (NXDOMAIN, 3, ...)\n"
            "  --since TIME        --until TIME (RFC 3339 or epoch nanoseconds, not seconds;\n"
            "                      a tail with --until ends 3 s after it, and one in the past\n"
            "                      is refused)\n"
            "  (peer_pod, dest_port... are accepted with '_' too)\n"
            "\n"
            "The bus carries events as agents publish them: peers on other nodes and\n"
            "Services are named by the aggregator, so --peer-* match only the pods an\n"
            "agent named on its own node, and there is no --peer-service (the\n"
            "aggregator's /api/events/stream has them all).\n"
            "\n"
            "NATS credentials come from NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS and\n"
            "NATS_TLS_* (environment, --config FILE, or flags such as --nats-creds FILE);\n"
            "--check-config checks them and the filters, and exits.\n"
            "Malformed messages are reported on stderr and skipped; so are batches missed\n"
            "(gaps in an agent's sequence numbers: while disconnected or too slow, NATS\n"
            "keeps nothing for this tail).\n");
}

/* The filter a flag names ("--peer-pod" or "--peer_pod"); NULL for other flags. */
static const char *tail_filter(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(tail_filters) / sizeof(tail_filters[0]); i++) {
        const char *f = tail_filters[i];
        if (strlen(f) != len)
            continue;
        size_t k = 0;
        while (k < len && (name[k] == f[k] || (name[k] == '-' && f[k] == '_')))
            k++;
        if (k == len)
            return f;
    }
    return NULL;
}

/* Appends "&name=value" to the query string, percent-encoding the value. */
static void tail_add_param(struct buf *qs, const char *name, size_t nlen, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    if (qs->len)
        buf_putc(qs, '&');
    buf_append(qs, name, nlen);
    buf_putc(qs, '=');
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~' || *p == ',' || *p == ':') {
            buf_putc(qs, (char)*p);
        } else {
            buf_putc(qs, '%');
            buf_putc(qs, hex[*p >> 4]);
            buf_putc(qs, hex[*p & 15]);
        }
    }
}

/*
 * Says what the API's parser refused ("invalid 'dest_port': ...") in the
 * words of the command line: "invalid --dest-port: ...".
 */
static void tail_filter_error(const char *err)
{
    const char *name = strncmp(err, "invalid '", 9) == 0 ? err + 9 : NULL;
    const char *end = name ? strchr(name, '\'') : NULL;
    if (!end || !tail_filter(name, (size_t)(end - name))) {
        fprintf(stderr, "%s: %s\n", TAIL_PROG, err);
        return;
    }
    fprintf(stderr, "%s: invalid --", TAIL_PROG);
    for (const char *c = name; c < end; c++)
        fputc(*c == '_' ? '-' : *c, stderr);
    const char *rest = end + 1, *param = strstr(rest, "leave the parameter out");
    if (param)
        fprintf(stderr, "%.*sleave the option out%s\n", (int)(param - rest), rest,
                param + strlen("leave the parameter out"));
    else
        fprintf(stderr, "%s\n", rest);
}

/* stdout went away (`| head`): not an error for a tail. */
static bool tail_write(const struct buf *out)
{
    if (!out->len)
        return true;
    if (fwrite(out->data, 1, out->len, stdout) != out->len || fflush(stdout) != 0)
        return false;
    return true;
}

/* nats.c gave up on the connection (a refused login): says why, not just that it did. */
static void tail_say_closed(struct bus *bus, natsStatus s)
{
    struct bus_status st;

    bus_wait_closed(bus, BUS_CLOSED_WAIT_MS);
    bus_get_status(bus, &st);
    fprintf(stderr, "%s: NATS connection closed: %s\n", TAIL_PROG,
            st.last_error[0] ? st.last_error : natsStatus_GetText(s));
}

static int tail_run(const struct config *cfg, const char *subject, const struct query *q)
{
    char err[512];
    char shown[256], why[512]; /* a message's subject and error, printable (errmsg_printable) */
    /* A refusal ends the tail with its reason: a person is watching. */
    struct bus_options bo = {
        .name = "ebpf-aggregator-tail", .no_reopen = true, .log_name = TAIL_PROG};
    struct bus *bus = bus_open_opts(cfg, &bo, err, sizeof(err));
    if (!bus) {
        fprintf(stderr, "%s: %s\n", TAIL_PROG, err);
        return 1;
    }
    char urls[CONFIG_URL];
    bus_redact_urls(cfg->nats_url, urls, sizeof(urls));

    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_SubscribeSync(&sub, bus_conn(bus), subject);
    if (s == NATS_CONNECTION_CLOSED) { /* refused before we could subscribe */
        tail_say_closed(bus, s);
        bus_close(bus);
        return 1;
    }
    if (s != NATS_OK) {
        fprintf(stderr, "%s: cannot subscribe to \"%s\": %s\n", TAIL_PROG, subject,
                natsStatus_GetText(s));
        bus_close(bus);
        return 2;
    }
    /* A tail is for people: buffer generously rather than drop under a burst. */
    natsSubscription_SetPendingLimits(sub, 1 << 20, 1 << 30);
    if (bus_connected(bus) && natsConnection_FlushTimeout(bus_conn(bus), 2000) == NATS_OK)
        fprintf(stderr, "%s: following \"%s\" on %s\n", TAIL_PROG, subject, urls);
    else
        fprintf(stderr, "%s: waiting for NATS at %s; will follow \"%s\"\n", TAIL_PROG, urls,
                subject);

    /* Batches the tail should hear from now on: NULL (no memory) leaves gaps uncounted. */
    struct nodes *heard = nodes_new(TAIL_MAX_INSTANCES);
    uint64_t missed_said = 0;
    if (heard)
        nodes_set_heard_since(heard, clock_realtime_ns());

    struct buf out;
    buf_init(&out);
    int64_t dropped_seen = 0;
    bool was_connected = bus_connected(bus);
    int rc = 0;
    while (!tail_stop) {
        natsMsg *msg = NULL;
        s = natsSubscription_NextMsg(&msg, sub, 250);

        bool connected = bus_connected(bus);
        if (connected && !was_connected)
            fprintf(stderr, "%s: connected to NATS at %s; following \"%s\"\n", TAIL_PROG, urls,
                    subject);
        else if (!connected && was_connected)
            fprintf(stderr, "%s: lost connection to NATS at %s; reconnecting\n", TAIL_PROG, urls);
        was_connected = connected;
        int64_t dropped = 0;
        if (natsSubscription_GetDropped(sub, &dropped) == NATS_OK && dropped > dropped_seen) {
            fprintf(stderr, "%s: warning: %lld messages dropped (output too slow)\n", TAIL_PROG,
                    (long long)(dropped - dropped_seen));
            dropped_seen = dropped;
        }
        if (q->until_ns != UINT64_MAX &&
            clock_realtime_ns() > q->until_ns + QUERY_STREAM_UNTIL_GRACE_MS * 1000000ull) {
            if (msg)
                natsMsg_Destroy(msg);
            break; /* as the HTTP stream ends */
        }
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            if (s == NATS_CONNECTION_CLOSED || s == NATS_INVALID_SUBSCRIPTION) {
                tail_say_closed(bus, s);
                rc = 1;
                break;
            }
            continue;
        }

        struct bus_batch batch;
        enum bus_reject r = bus_message_decode(msg, &batch, err, sizeof(err));
        if (r != BUS_OK) {
            fprintf(stderr, "%s: warning: skipped a message on \"%s\": %s: %s\n", TAIL_PROG,
                    errmsg_printable(natsMsg_GetSubject(msg), shown, sizeof(shown)),
                    bus_reject_name(r), errmsg_printable(err, why, sizeof(why)));
            natsMsg_Destroy(msg);
            continue;
        }
        if (heard) {
            struct nodes_totals t;
            nodes_observe(heard, &batch.meta, batch.n, clock_realtime_ns());
            nodes_get_totals(heard, &t);
            if (t.lost_batches > missed_said)
                fprintf(
                    stderr,
                    "%s: warning: %" PRIu64 " batch(es) of node %s missed (a gap in its "
                    "sequence numbers: lost while this tail was disconnected or too slow, "
                    "or dropped by the agent); %" PRIu64 " in all\n",
                    TAIL_PROG, t.lost_batches - missed_said,
                    errmsg_printable(batch.meta.node ? batch.meta.node : "?", shown, sizeof(shown)),
                    t.lost_batches);
            if (t.lost_batches > missed_said)
                missed_said = t.lost_batches;
        }
        if (batch.meta.rejected_events)
            fprintf(stderr, "%s: warning: skipped %" PRIu32 " undecodable event(s) on \"%s\": %s\n",
                    TAIL_PROG, batch.meta.rejected_events,
                    errmsg_printable(natsMsg_GetSubject(msg), shown, sizeof(shown)),
                    errmsg_printable(err, why, sizeof(why)));
        buf_reset(&out);
        for (size_t i = 0; i < batch.n; i++) {
            if (!query_match(q, &batch.events[i]))
                continue;
            event_json_write(&out, &batch.events[i]);
            buf_putc(&out, '\n');
        }
        bus_batch_free(&batch);
        natsMsg_Destroy(msg);
        if (out.oom) {
            fprintf(stderr, "%s: out of memory formatting a batch\n", TAIL_PROG);
            rc = 1;
            break;
        }
        if (!tail_write(&out))
            break; /* the reader went away */
    }
    buf_free(&out);
    nodes_free(heard);
    bus_sub_end(bus_conn(bus), sub, 1000);
    bus_close(bus);
    return rc;
}

int aggregator_tail(int argc, char **argv)
{
    /* Our own flags are taken out; the rest (NATS credentials, --config) go to config_load. */
    char *rest[argc + 2];
    int nrest = 0;
    char nats_flag[CONFIG_URL + 16];
    const char *subject = NULL;
    const char *given[sizeof(tail_filters) / sizeof(tail_filters[0])]; /* filters seen */
    size_t ngiven = 0;
    struct buf qs;
    char err[512];
    bool help = false;
    int rc = 2;

    buf_init(&qs);
    rest[nrest++] = "ebpf-aggregator";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            help = true; /* once every argument is known: "--help extra" is a slip */
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument \"%s\" (see --help)\n", TAIL_PROG, a);
            goto out;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *filter = tail_filter(name, nlen);
        bool ours = filter || (nlen == 4 && !strncmp(name, "nats", 4)) ||
                    (nlen == 7 && !strncmp(name, "subject", 7));
        if (!ours) {
            /* Every configuration flag but these takes a value, maybe as the next argument. */
            rest[nrest++] = argv[i];
            if (!eq && strcmp(a, "--check-config") && strcmp(a, "--version") && i + 1 < argc)
                rest[nrest++] = argv[++i];
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: option --%.*s needs a value (see --help)\n", TAIL_PROG,
                        (int)nlen, name);
                goto out;
            }
            value = argv[++i];
        }
        if (nlen == 4 && !strncmp(name, "nats", 4)) {
            snprintf(nats_flag, sizeof(nats_flag), "--nats-url=%s", value);
            rest[nrest++] = nats_flag;
        } else if (nlen == 7 && !strncmp(name, "subject", 7)) {
            /* As NATS checks it when subscribing, so --check-config refuses it too. */
            if (!config_subject_valid(value, true)) {
                char shown[256];
                fprintf(stderr,
                        "%s: invalid --subject \"%s\": a NATS subject such as ebpf.events.> "
                        "(no empty token, space or control character, '>' only last; leave it "
                        "out for <SUBJECT_PREFIX>.>)\n",
                        TAIL_PROG, errmsg_printable(value, shown, sizeof(shown)));
                goto out;
            }
            subject = value;
        } else {
            for (size_t k = 0; k < ngiven; k++) {
                if (given[k] == filter) {
                    fprintf(stderr, "%s: option --%.*s given twice (give it once%s)\n", TAIL_PROG,
                            (int)nlen, name,
                            strcmp(filter, "type") == 0 ? ", with the types separated by commas"
                                                        : "");
                    goto out;
                }
            }
            given[ngiven++] = filter;
            tail_add_param(&qs, filter, strlen(filter), value);
        }
    }
    rest[nrest] = NULL;
    if (help) {
        tail_usage(stdout);
        rc = 0;
        goto out;
    }

    struct query q;
    if (qs.oom || query_parse(&q, qs.data ? qs.data : "", qs.len, true, err, sizeof(err)) < 0) {
        if (qs.oom)
            fprintf(stderr, "%s: out of memory\n", TAIL_PROG);
        else
            tail_filter_error(err);
        goto out;
    }
    for (size_t k = 0; k < ngiven; k++) {
        if (strcmp(given[k], "peer_service") == 0) {
            fprintf(stderr,
                    "%s: --peer-service never matches on the bus: agents do not name Services, "
                    "the aggregator does (use its /api/events/stream?peer_service=...)\n",
                    TAIL_PROG);
            goto out;
        }
    }
    if (q.until_ns != UINT64_MAX && q.until_ns < clock_realtime_ns()) {
        fprintf(stderr, "%s: invalid --until: in the past, and a tail shows only new events\n",
                TAIL_PROG);
        goto out;
    }
    struct config cfg;
    switch (config_load(&cfg, CONFIG_AGGREGATOR, nrest, rest, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_EXIT:
        rc = 0;
        goto out;
    default:
        fprintf(stderr, "%s: %s\n", TAIL_PROG, err);
        goto out;
    }
    if (cfg.check_only) {
        printf("%s: configuration OK\n", TAIL_PROG);
        rc = 0;
        goto out;
    }
    char def_subject[CONFIG_STR + 4];
    if (!subject) {
        snprintf(def_subject, sizeof(def_subject), "%s.>", cfg.subject_prefix);
        subject = def_subject;
    }

    struct sigaction sa = {.sa_handler = tail_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = tail_run(&cfg, subject, &q);
out:
    buf_free(&qs);
    return rc;
}

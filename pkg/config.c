/*
 * Configuration loading: one table of keys drives defaults, the YAML file,
 * the environment, flags, validation and --help, so they cannot disagree.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <yaml.h>

#include "buf.h"
#include "cgroup.h"
#include "errmsg.h"
#include "event.h"
#include "netaddr.h"
#include "redact.h"
#include "strlist.h"

enum key_kind {
    KIND_STRING,
    KIND_FILE,     /* a path the program reads: checked once all sources are merged */
    KIND_NAME,     /* NODE_NAME, POD_NAME, POD_NAMESPACE: into subjects, batches, JSON and logs */
    KIND_UINT,     /* bounded integer */
    KIND_DURATION, /* "500ms" */
    KIND_BYTES,    /* "64MiB" */
    KIND_MODE,
    KIND_ENCODING,
    KIND_TYPES,
    KIND_LISTEN,
    KIND_REDACT,  /* argument redaction patterns (redact.h) */
    KIND_PORTS,   /* comma list of up to CONFIG_DNS_PORTS_MAX ports */
    KIND_TOKEN,   /* one NATS subject token (a queue group) */
    KIND_SUBJECT, /* a NATS subject: UTF-8, no wildcards, spaces or empty tokens */
};

struct key {
    const char *name; /* environment variable and YAML key */
    enum key_kind kind;
    unsigned roles;        /* CONFIG_AGENT | CONFIG_AGGREGATOR */
    size_t offset;         /* into struct config */
    size_t size;           /* of a string field */
    uint64_t min, max;     /* KIND_UINT / DURATION / BYTES bounds */
    const char *def_agent; /* default as text; NULL = empty */
    const char *def_agg;
    const char *help;
    const char *help_agg; /* the aggregator's --help, when it differs */
};

#define BOTH       (CONFIG_AGENT | CONFIG_AGGREGATOR)
#define AGENT      CONFIG_AGENT
#define AGG        CONFIG_AGGREGATOR
#define STR(field) offsetof(struct config, field), sizeof(((struct config *)0)->field)
#define NUM(field) offsetof(struct config, field), sizeof(((struct config *)0)->field)
#define SEC        1000000000ull
/* Keys the aggregator takes so that one configuration (or one set of downward-API variables)
 * serves both programs, but has no use for. */
#define UNUSED_BY_AGG "accepted as the agent takes it; the aggregator does not use it"

static const struct key keys[] = {
    {"DEPLOYMENT_MODE", KIND_MODE, BOTH, NUM(deployment_mode), 0, 0, "auto", "auto",
     "vm, kubernetes or auto (kubernetes when KUBERNETES_SERVICE_HOST is set or a service-account "
     "token exists)"},
    {"NODE_NAME", KIND_NAME, BOTH, STR(node_name), 0, 0, NULL, NULL,
     "the node this process reports as (default: hostname)", UNUSED_BY_AGG},
    {"POD_NAME", KIND_NAME, BOTH, STR(pod_name), 0, 0, NULL, NULL,
     "own pod name (Kubernetes downward API)", UNUSED_BY_AGG},
    {"POD_NAMESPACE", KIND_NAME, BOTH, STR(pod_namespace), 0, 0, NULL, NULL,
     "own pod namespace (Kubernetes downward API)", UNUSED_BY_AGG},
    {"NATS_URL", KIND_STRING, BOTH, STR(nats_url), 0, 0, "nats://127.0.0.1:4222",
     "nats://127.0.0.1:4222", "comma-separated NATS server list"},
    {"NATS_CREDS", KIND_FILE, BOTH, STR(nats_creds), 0, 0, NULL, NULL, "NATS credentials file"},
    {"NATS_TOKEN", KIND_STRING, BOTH, STR(nats_token), 0, 0, NULL, NULL,
     "NATS token (a flag shows in ps: prefer the environment or --config)"},
    {"NATS_USER", KIND_STRING, BOTH, STR(nats_user), 0, 0, NULL, NULL, "NATS user"},
    {"NATS_PASSWORD", KIND_STRING, BOTH, STR(nats_password), 0, 0, NULL, NULL,
     "NATS password (a flag shows in ps: prefer the environment or --config)"},
    {"NATS_TLS_CA", KIND_FILE, BOTH, STR(nats_tls_ca), 0, 0, NULL, NULL,
     "CA bundle to verify the NATS server"},
    {"NATS_TLS_CERT", KIND_FILE, BOTH, STR(nats_tls_cert), 0, 0, NULL, NULL,
     "client certificate for NATS"},
    {"NATS_TLS_KEY", KIND_FILE, BOTH, STR(nats_tls_key), 0, 0, NULL, NULL, "client key for NATS"},
    {"SUBJECT_PREFIX", KIND_SUBJECT, BOTH, STR(subject_prefix), 0, 0, "ebpf.events", "ebpf.events",
     "agents publish to <prefix>.<node>"},
    {"BATCH_SIZE", KIND_UINT, AGENT, NUM(batch_size), 1, 10000, "100", NULL,
     "events per batch on the bus (1-10000)"},
    {"FLUSH_INTERVAL", KIND_DURATION, AGENT, NUM(flush_interval_ns), 1000000ull, 3600 * SEC, "1s",
     NULL, "longest time an event waits in a batch (1ms-1h)"},
    {"HEARTBEAT_INTERVAL", KIND_DURATION, AGENT, NUM(heartbeat_ns), 0, 3600 * SEC, "10s", NULL,
     "an empty batch after this long without one, so an idle node stays active on the "
     "aggregators (keep it under their STALE_AFTER; 0 = never, 0-1h)"},
    {"ENCODING", KIND_ENCODING, AGENT, NUM(encoding), 0, 0, "protobuf", NULL,
     "bus encoding: protobuf or json"},
    {"OUTAGE_BUFFER", KIND_BYTES, AGENT, NUM(outage_buffer_bytes), 64 * 1024, 4ull << 30, "64MiB",
     NULL,
     "send queue: batches kept while NATS is unreachable, no one subscribes, or NATS is slower "
     "than the capture; oldest "
     "dropped beyond it (64KiB-4GiB)"},
    {"EVENT_TYPES", KIND_TYPES, AGENT, NUM(event_types), 0, 0, "all", NULL,
     "comma list of connection, accept, close, packet_drop, exec, exit, dns (or all)"},
    {"RINGBUF_SIZE", KIND_BYTES, AGENT, NUM(ringbuf_bytes), 4096, 1ull << 30, "8MiB", NULL,
     "kernel ring buffer size (a power of two, 4KiB-1GiB)"},
    {"DROP_RATE_LIMIT", KIND_UINT, AGENT, NUM(drop_rate_limit), 1, 1000000, "1000", NULL,
     "packet_drop events per second per CPU before suppression (1-1000000)"},
    {"DNS_PORTS", KIND_PORTS, AGENT, NUM(dns_ports), 0, 0, "53", NULL,
     "server ports whose traffic is DNS: comma list of up to 4 ports (1-65535)"},
    {"DNS_TIMEOUT", KIND_DURATION, AGENT, NUM(dns_timeout_ns), 100000000ull, 300 * SEC, "5s", NULL,
     "a DNS query with no answer for this long is a dns event with status timeout (100ms-5m)"},
    {"DNS_RATE_LIMIT", KIND_UINT, AGENT, NUM(dns_rate_limit), 1, 1000000, "5000", NULL,
     "DNS queries (and answers) per second per CPU before suppression (1-1000000)"},
    {"DNS_PENDING_MAX", KIND_UINT, AGENT, NUM(dns_pending_max), 16, 1000000, "8192", NULL,
     "DNS queries awaiting their answer; the oldest is evicted and counted beyond it "
     "(16-1000000)"},
    {"DNS_METRICS_MAX_SERIES", KIND_UINT, AGENT, NUM(dns_metrics_max_series), 1, 1000000, "1000",
     NULL, "DNS series on /metrics; more fold into workload=\"~other\" (1-1000000)"},
    {"REDACT_ARGS", KIND_REDACT, AGENT, STR(redact_args), 0, 0, "default", NULL,
     "argument values replaced by *** in exec events: comma list of --NAME, -X, -X+, "
     "PROG:OPTION, NAME=, NAME:, url, default; or none"},
    {"CGROUP_ROOT", KIND_STRING, AGENT, STR(cgroup_root), 0, 0, NULL, NULL,
     "cgroup v2 mount to resolve pods from (default: detected; in a pod, the host's, mounted)"},
    {"CAPTURE_CGROUP", KIND_STRING, AGENT, STR(capture_cgroup), 0, 0, NULL, NULL,
     "capture only processes and sockets in this cgroup v2 subtree: a path relative to "
     "CGROUP_ROOT (or absolute, inside it); default: every cgroup"},
    {"K8S_API_URL", KIND_STRING, BOTH, STR(k8s_api_url), 0, 0, NULL, NULL,
     "Kubernetes API server (default: in-cluster, from KUBERNETES_SERVICE_HOST/PORT)"},
    {"K8S_TOKEN_PATH", KIND_FILE, BOTH, STR(k8s_token_path), 0, 0, NULL, NULL,
     "service-account token (default: /var/run/secrets/kubernetes.io/serviceaccount/token)"},
    {"K8S_CA_PATH", KIND_FILE, BOTH, STR(k8s_ca_path), 0, 0, NULL, NULL,
     "API server CA bundle (default: the service account's ca.crt)"},
    {"K8S_TOMBSTONE_TTL", KIND_DURATION, AGENT, NUM(k8s_tombstone_ttl_ns), SEC, 24 * 3600 * SEC,
     "5m", NULL, "how long a deleted pod stays nameable (1s-24h)"},
    {"K8S_MAX_PODS", KIND_UINT, AGENT, NUM(k8s_max_pods), 16, 1000000, "4096", NULL,
     "pods kept in the metadata cache, deleted ones included (16-1000000)"},
    {"LISTEN_ADDR", KIND_LISTEN, BOTH, STR(listen_addr), 0, 0, ":8080", ":8081",
     "HTTP API address: :PORT, HOST:PORT or [V6]:PORT"},
    {"QUEUE_GROUP", KIND_TOKEN, AGG, STR(queue_group), 0, 0, NULL, "ebpf-aggregator",
     "NATS queue group shared by aggregator replicas"},
    {"CONTROL_SUBJECT", KIND_SUBJECT, AGG, STR(control_subject), 0, 0, NULL, "ebpf.control",
     "replicas talk on <subject>.<QUEUE_GROUP>.*; must be outside <SUBJECT_PREFIX>.>"},
    {"API_TOKEN", KIND_STRING, BOTH, STR(api_token), 0, 0, NULL, NULL,
     "when set, /api/* needs 'Authorization: Bearer <token>' (a flag shows in ps: prefer the "
     "environment or --config)"},
    {"TLS_CERT", KIND_FILE, BOTH, STR(tls_cert), 0, 0, NULL, NULL,
     "PEM certificate: serve the HTTP API over TLS"},
    {"TLS_KEY", KIND_FILE, BOTH, STR(tls_key), 0, 0, NULL, NULL, "PEM key for TLS_CERT"},
    {"HISTORY_SIZE", KIND_UINT, BOTH, NUM(history_size), 100, 100000000, "100000", "2000000",
     "events kept in the queryable history (100-100000000)"},
    {"HISTORY_MAX_AGE", KIND_DURATION, BOTH, NUM(history_max_age_ns), 0, 365 * 24 * 3600 * SEC,
     "1h", "24h", "oldest event kept in the history (0 = no age limit)"},
    {"STALE_AFTER", KIND_DURATION, AGG, NUM(stale_after_ns), SEC, 24 * 3600 * SEC, NULL, "30s",
     "a node that sent nothing for this long is stale"},
    {"QUERY_TIMEOUT", KIND_DURATION, AGG, NUM(query_timeout_ns), 10000000ull, 60 * SEC, NULL, "2s",
     "how long a query waits for other aggregator replicas (10ms-1m)"},
    {"FLOW_RETENTION", KIND_DURATION, BOTH, NUM(flow_retention_ns), 60 * SEC, 30 * 24 * 3600 * SEC,
     "24h", "24h", "how long per-minute flow buckets are kept (1m-30d)"},
    {"FLOW_MAX_EDGES", KIND_UINT, BOTH, NUM(flow_max_edges), 16, 100000000, "50000", "1000000",
     "edge-minutes kept for /api/flows, oldest evicted first (16-100000000)"},
    {"FLOW_METRICS_MAX_SERIES", KIND_UINT, AGG, NUM(flow_metrics_max_series), 1, 1000000, NULL,
     "10000", "flow series on /metrics; more fold into workload=\"~other\" (1-1000000)"},
    {"PEER_TTL", KIND_DURATION, AGG, NUM(peer_ttl_ns), SEC, 24 * 3600 * SEC, NULL, "10m",
     "a pod no node reported for this long no longer names its IP (1s-24h)"},
    {"PEER_GRACE", KIND_DURATION, AGG, NUM(peer_grace_ns), 0, 3600 * SEC, NULL, "30s",
     "a pod gone (or its IP taken over) still names its IP this long (0-1h)"},
    {"JOIN_WINDOW", KIND_DURATION, AGG, NUM(join_window_ns), 100000000ull, 60 * SEC, NULL, "2s",
     "Kubernetes mode: how long a connection to a ClusterIP waits for its backend's accept "
     "(100ms-60s)"},
    {"PEER_MAX_PODS", KIND_UINT, AGG, NUM(peer_max_entries), 16, 10000000, NULL, "262144",
     "pod addresses kept to name peers across nodes, least recently seen evicted (16-10000000)"},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

enum source {
    SRC_DEFAULT,
    SRC_FILE,
    SRC_ENV,
    SRC_FLAG,
    SRC_HOSTNAME, /* NODE_NAME's default */
};

static const char *const source_names[] = {"default", "config file", "environment", "flag",
                                           "hostname"};
_Static_assert(NKEYS <= CONFIG_KEYS_MAX, "struct config's key_source holds every key");

/* Where the value of the key named name came from, as an error says it. */
static const char *source_of(const struct config *c, const char *name);

/* Unit multipliers shared by durations and sizes. */
struct unit {
    const char *suffix;
    uint64_t mult;
};

static const struct unit duration_units[] = {
    {"ns", 1},       {"us", 1000},      {"µs", 1000},       {"ms", 1000000}, {"s", SEC},
    {"m", 60 * SEC}, {"h", 3600 * SEC}, {"d", 86400 * SEC}, {NULL, 0},
};

/*
 * ns in the largest unit that holds it whole ("30d", "1m", "500ms"), as a user would write it;
 * zero as "0", the one duration that needs no unit.
 */
static const char *format_duration(uint64_t ns, char out[32])
{
    static const struct unit order[] = {{"d", 86400 * SEC}, {"h", 3600 * SEC}, {"m", 60 * SEC},
                                        {"s", SEC},         {"ms", 1000000},   {"us", 1000},
                                        {"ns", 1}};
    size_t i = 0;

    if (ns == 0)
        return strcpy(out, "0");
    while (ns % order[i].mult != 0)
        i++;
    snprintf(out, 32, "%" PRIu64 "%s", ns / order[i].mult, order[i].suffix);
    return out;
}

static const struct unit byte_units[] = {
    {"", 1}, {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}, {NULL, 0},
};

/*
 * One "<digits>[.<digits>]" of unit mult, which must come out a whole number
 * (of nanoseconds, of bytes): "0.5ns" is no duration rather than 0, "no
 * limit". Decimal only: strtod() would take "0x10", "1e3", "inf" too. Returns
 * the end of the number, or NULL.
 */
static const char *parse_number(const char *p, uint64_t mult, unsigned __int128 *out)
{
    unsigned __int128 whole = 0, frac = 0, scale = 1;

    if (!isdigit((unsigned char)*p))
        return NULL;
    for (; isdigit((unsigned char)*p); p++)
        if ((whole = whole * 10 + (unsigned)(*p - '0')) > UINT64_MAX)
            return NULL;
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p))
            return NULL;
        for (; isdigit((unsigned char)*p); p++) {
            if (scale > UINT64_MAX)
                return NULL; /* 20 digits are more than a nanosecond or a byte needs */
            frac = frac * 10 + (unsigned)(*p - '0');
            scale *= 10;
        }
    }
    if (frac * mult % scale != 0)
        return NULL;
    *out = whole * mult + frac * mult / scale;
    return p;
}

/* Parses a sequence of <number><unit> terms ("1h30m"); "0" alone needs no unit. */
static int parse_units(const char *s, const struct unit *units, bool single, uint64_t *out)
{
    unsigned __int128 total = 0;
    const char *p = s;
    if (!*p)
        return -EINVAL;
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return 0;
    }
    while (*p) {
        const char *u = p + strspn(p, "0123456789.");
        size_t ulen = 0;
        while (u[ulen] && !isdigit((unsigned char)u[ulen]) && u[ulen] != '.')
            ulen++;
        const struct unit *match = NULL;
        for (const struct unit *x = units; x->suffix; x++)
            if (strlen(x->suffix) == ulen && strncmp(x->suffix, u, ulen) == 0)
                match = x;
        unsigned __int128 term;
        if (!match || parse_number(p, match->mult, &term) != u)
            return -EINVAL;
        if ((total += term) > UINT64_MAX)
            return -EINVAL;
        p = u + ulen;
        if (single && *p)
            return -EINVAL;
    }
    *out = (uint64_t)total;
    return 0;
}

int config_parse_duration(const char *s, uint64_t *out_ns)
{
    /* A bare number has no unit and is ambiguous: refuse it. */
    size_t n = strlen(s);
    if (n && isdigit((unsigned char)s[n - 1]) && strcmp(s, "0") != 0)
        return -EINVAL;
    return parse_units(s, duration_units, false, out_ns);
}

int config_parse_bytes(const char *s, uint64_t *out)
{
    return parse_units(s, byte_units, true, out);
}

const char *config_mode_name(enum config_mode m)
{
    return m == CONFIG_MODE_KUBERNETES ? "kubernetes" : "vm";
}

const char *config_encoding_name(enum config_encoding e)
{
    return e == CONFIG_ENCODING_JSON ? "json" : "protobuf";
}

static bool detect_kubernetes(void)
{
    const char *h = getenv("KUBERNETES_SERVICE_HOST");
    return (h && *h) || access("/var/run/secrets/kubernetes.io/serviceaccount/token", F_OK) == 0;
}

static int parse_types(const char *s, uint32_t *out)
{
    struct strlist items = strlist_start(s);
    uint32_t mask = 0;
    const char *p;
    size_t len;
    if (strcmp(s, "all") == 0) {
        *out = EVENT_TYPES_ALL;
        return 0;
    }
    /* Every item, an empty one too ("exec," or "exec,,exit"): no type is named "". */
    while (strlist_next(&items, &p, &len)) {
        enum event_type t = event_type_parse(p, len);
        if (t == EVENT_TYPE_NONE)
            return -EINVAL;
        mask |= EVENT_TYPE_BIT(t);
    }
    if (!mask)
        return -EINVAL;
    *out = mask;
    return 0;
}

/* :PORT, HOST:PORT or [IPV6]:PORT with a port 0-65535, as the HTTP server reads it
 * (netaddr_split()). */
static bool listen_valid(const char *s)
{
    char host[CONFIG_STR];
    long port;
    return netaddr_split(s, strlen(s), host, sizeof(host), &port) == 0 && port >= 0;
}

/*
 * Each comma-separated server: [nats|tls|ws|wss://][user[:pass]@]HOST[:PORT] with a port
 * 1-65535 (netaddr_split()): what the NATS client would refuse only when it connects.
 */
void config_redact_urls(const char *urls, char *out, size_t len)
{
    char tmp[CONFIG_URL];
    size_t o = 0;
    snprintf(tmp, sizeof(tmp), "%s", urls);
    if (!len)
        return;
    for (const char *p = tmp; *p && o + 1 < len;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *scheme = memmem(p, n, "://", 3);
        const char *host = scheme ? scheme + 3 : p;
        /* The last '@', as nats.c and nats_urls_valid() take it: a password may hold one. */
        const char *at = memrchr(host, '@', n - (size_t)(host - p));
        if (!comma && !at && strlen(urls) >= sizeof(tmp)) {
            /* cut short here: its '@' may be past the cut, so nothing after "scheme://" */
            snprintf(out + o, len - o, "%.*s...", (int)(host - p), p);
            return;
        }
        /* Copy "scheme://" then skip "user:pass@". */
        for (const char *q = p; q < p + n && o + 1 < len; q++) {
            if (at && q == host)
                q = at + 1;
            if (q < p + n)
                out[o++] = *q;
        }
        if (!comma)
            break;
        if (o + 1 < len)
            out[o++] = ',';
        p = comma + 1;
    }
    out[o] = '\0';
}

static bool nats_urls_valid(const char *list)
{
    static const char *const schemes[] = {"nats://", "tls://", "ws://", "wss://"};
    struct strlist items = strlist_start(list);
    const char *p;
    size_t len;
    while (strlist_next(&items, &p, &len)) {
        const char *sep = memmem(p, len, "://", 3);
        if (sep) {
            bool known = false;
            for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
                known |= (size_t)(sep + 3 - p) == strlen(schemes[i]) &&
                         strncmp(p, schemes[i], strlen(schemes[i])) == 0;
            if (!known)
                return false;
            len -= (size_t)(sep + 3 - p);
            p = sep + 3;
        }
        /* Credentials before the last '@' (a password may hold any other character). */
        for (size_t i = len; i > 0; i--)
            if (p[i - 1] == '@') {
                p += i;
                len -= i;
                break;
            }
        char host[CONFIG_STR];
        long port;
        if (netaddr_split(p, len, host, sizeof(host), &port) != 0 || !host[0] || port == 0)
            return false;
    }
    return true;
}

/* http:// or https://, a host with an optional port (1-65535), then an optional path (no query,
 * fragment or space: the client appends its own paths). */
static bool http_url_valid(const char *url)
{
    size_t skip = strncmp(url, "https://", 8) == 0 ? 8 : strncmp(url, "http://", 7) == 0 ? 7 : 0;
    if (!skip || strpbrk(url, "?# \t"))
        return false;
    const char *host = url + skip;
    size_t len = strcspn(host, "/");
    char name[CONFIG_STR];
    long port;
    if (memchr(host, '@', len) || netaddr_split(host, len, name, sizeof(name), &port) != 0 ||
        !name[0])
        return false;
    return port != 0; /* -1: none, the scheme's */
}

/* "53,5353" into CONFIG_DNS_PORTS_MAX slots (the rest zeroed); 0 or -EINVAL. */
static int parse_ports(const char *s, uint16_t out[CONFIG_DNS_PORTS_MAX])
{
    uint16_t ports[CONFIG_DNS_PORTS_MAX] = {0};
    size_t n = 0;

    for (;;) {
        char *end;
        unsigned long p;

        while (*s == ' ')
            s++;
        if (!isdigit((unsigned char)*s) || n == CONFIG_DNS_PORTS_MAX)
            return -EINVAL;
        errno = 0;
        p = strtoul(s, &end, 10);
        if (errno || p < 1 || p > 65535)
            return -EINVAL;
        for (size_t i = 0; i < n; i++)
            if (ports[i] == p)
                return -EINVAL; /* twice: a slip, and a slot the kernel's list would waste */
        ports[n++] = (uint16_t)p;
        s = end;
        while (*s == ' ')
            s++;
        if (*s == '\0')
            break;
        if (*s++ != ',')
            return -EINVAL;
    }
    memcpy(out, ports, sizeof(ports));
    return 0;
}

/*
 * s as it can be shown inside "..." on one line: printable UTF-8 as it is,
 * '"' and '\' escaped, any other byte (control characters, invalid UTF-8) as
 * \xHH; cut short with "..." when it would not fit in len (at least 8).
 */
static const char *quote_value(const char *s, char *out, size_t len)
{
    size_t n = strlen(s), o = 0;
    for (size_t i = 0; i < n;) {
        size_t seq = buf_utf8_seq(s + i, n - i), plen = seq;
        const char *piece = s + i;
        char esc[8];
        if (seq == 0 || buf_utf8_is_control(s + i, seq)) {
            snprintf(esc, sizeof(esc), "\\x%02x", (unsigned char)s[i]);
            piece = esc;
            plen = 4;
            seq = 1;
        } else if (s[i] == '"' || s[i] == '\\') {
            esc[0] = '\\';
            esc[1] = s[i];
            piece = esc;
            plen = 2;
        }
        if (o + plen + 4 > len) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, piece, plen);
        o += plen;
        i += seq;
    }
    out[o] = '\0';
    return out;
}

/*
 * LISTEN_ADDR's host, when it names one, resolved as the listener will (pkg/http_server.c):
 * a name no resolver knows is a bad value here, not a failure to listen after the start.
 */
static int check_listen_host(const char *addr, char *err, size_t errlen)
{
    char host[CONFIG_STR], shown[256];
    long port;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;

    if (netaddr_split(addr, strlen(addr), host, sizeof(host), &port) < 0 || !host[0])
        return 0;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc == 0) {
        freeaddrinfo(res);
        return 0;
    }
    return errmsg_set(err, errlen, "invalid LISTEN_ADDR=\"%s\": %s",
                      quote_value(addr, shown, sizeof(shown)), gai_strerror(rc));
}

int config_check_file(const char *key, const char *path, char *err, size_t errlen)
{
    char shown[256];
    const char *why = NULL;
    struct stat st;
    /* O_NONBLOCK: a FIFO must not hang the check. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0)
        why = strerror(errno);
    else if (S_ISDIR(st.st_mode))
        why = strerror(EISDIR);
    else if (!S_ISREG(st.st_mode))
        why = "not a regular file";
    if (fd >= 0)
        close(fd);
    if (!why)
        return 0;
    return errmsg_set(err, errlen, "invalid %s=\"%s\": must be a readable file: %s", key,
                      quote_value(path, shown, sizeof(shown)), why);
}

/* Whether s can be sent as an HTTP header value as it is: no control character, and no space
 * at either end (RFC 9110 section 5.5: those are not part of the value). */
static bool header_value_valid(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return n == 0 || (s[0] != ' ' && s[n - 1] != ' ');
}

bool config_subject_valid(const char *s, bool wildcards)
{
    size_t n = strlen(s), start = 0;
    if (n == 0)
        return false;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i < n && (ch <= ' ' || ch == 0x7f))
            return false;
        if (i < n && ch != '.') {
            if ((ch == '*' || ch == '>') && !wildcards)
                return false;
            continue;
        }
        if (i == start)
            return false; /* an empty token */
        if (i == start + 1 && s[start] == '>' && i < n)
            return false; /* '>' is only ever the last token */
        start = i + 1;
    }
    return true;
}

/* Keys whose values are secrets: a message names them, never shows them. */
static bool key_is_secret(const struct key *k)
{
    return strcmp(k->name, "API_TOKEN") == 0 || strcmp(k->name, "NATS_TOKEN") == 0 ||
           strcmp(k->name, "NATS_PASSWORD") == 0;
}

/* A refused value for a message, quoted: a secret (unless empty) by its length only, NATS_URL
 * without the credentials it may hold. */
static const char *shown_value(const struct key *k, const char *value, char *out, size_t len)
{
    char quoted[200], urls[CONFIG_URL];

    if (key_is_secret(k) && value[0]) {
        snprintf(out, len, "(%zu bytes, not shown)", strlen(value));
        return out;
    }
    if (strcmp(k->name, "NATS_URL") == 0) {
        config_redact_urls(value, urls, sizeof(urls));
        value = urls;
    }
    snprintf(out, len, "\"%s\"", quote_value(value, quoted, sizeof(quoted)));
    return out;
}

/* Stores value for key k into c; on error writes the one-line message. */
static int set_value(struct config *c, const struct key *k, const char *value, enum source src,
                     char *err, size_t errlen)
{
    char *field = (char *)c + k->offset;
    uint64_t v = 0;
    const char *allowed = NULL;
    char range[256], shown[208];

    c->key_source[k - keys] = (unsigned char)src;
    switch (k->kind) {
    case KIND_NAME:
        if (!event_node_name_valid(value, k->size - 1)) {
            snprintf(range, sizeof(range),
                     "1-%zu bytes of UTF-8 text without control characters or leading or "
                     "trailing spaces, such as a hostname or a Kubernetes name",
                     k->size - 1);
            allowed = range;
            break;
        }
        strcpy(field, value);
        return 0;
    case KIND_STRING:
    case KIND_FILE:
    case KIND_TOKEN:
    case KIND_SUBJECT:
        /* Empty is not "off": an unset Secret key must not quietly turn off a token or TLS. */
        if (!value[0]) {
            snprintf(range, sizeof(range), "a value (leave %s unset for %s)", k->name,
                     k->def_agent || k->def_agg ? "its default" : "none");
            allowed = range;
            break;
        }
        if (strlen(value) >= k->size) {
            snprintf(range, sizeof(range), "at most %zu characters", k->size - 1);
            allowed = range;
            break;
        }
        if (strcmp(k->name, "API_TOKEN") == 0 && !header_value_valid(value)) {
            allowed = "text without control characters (a line break...) or surrounding spaces: "
                      "a request could never present it";
            break;
        }
        /* A subject or queue group travels in the NATS protocol's lines and in logs: a control
         * character (a line break, an escape) or bytes that are not UTF-8 do not belong there. */
        if (k->kind == KIND_TOKEN && (strchr(value, '.') || !config_subject_valid(value, false) ||
                                      !event_node_name_valid(value, k->size - 1))) {
            allowed = "one subject token of UTF-8 text (no '.', '*', '>', spaces or control "
                      "characters)";
            break;
        }
        if (k->kind == KIND_SUBJECT &&
            (!config_subject_valid(value, false) || !event_node_name_valid(value, k->size - 1))) {
            allowed = "a NATS subject of UTF-8 text without wildcards, spaces, control characters "
                      "or empty tokens";
            break;
        }
        strcpy(field, value);
        return 0;
    case KIND_LISTEN:
        if (!listen_valid(value) || strlen(value) >= k->size) {
            allowed = ":PORT, HOST:PORT or [IPV6]:PORT with a port 0-65535";
            break;
        }
        strcpy(field, value);
        return 0;
    case KIND_UINT: {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(value, &end, 10);
        snprintf(range, sizeof(range), "an integer %" PRIu64 "-%" PRIu64, k->min, k->max);
        if (errno || end == value || *end || !isdigit((unsigned char)value[0]) || x < k->min ||
            x > k->max) {
            allowed = range;
            break;
        }
        v = x;
        goto store_num;
    }
    case KIND_DURATION:
        if (config_parse_duration(value, &v) < 0) {
            allowed = "a duration such as 500ms, 30s, 1m, 1h or 1d";
            break;
        }
        if (v < k->min || v > k->max) {
            char lo[32], hi[32];
            snprintf(range, sizeof(range), "a duration between %s and %s",
                     format_duration(k->min, lo), format_duration(k->max, hi));
            allowed = range;
            break;
        }
        goto store_num;
    case KIND_BYTES:
        if (config_parse_bytes(value, &v) < 0 || v < k->min || v > k->max) {
            snprintf(range, sizeof(range),
                     "a size such as 64MiB between %" PRIu64 " and %" PRIu64 " bytes", k->min,
                     k->max);
            allowed = range;
            break;
        }
        if (k->offset == offsetof(struct config, ringbuf_bytes) && (v & (v - 1))) {
            allowed = "a power of two such as 4MiB, 16MiB or 64MiB";
            break;
        }
        goto store_num;
    case KIND_MODE:
        if (strcmp(value, "vm") == 0)
            c->deployment_mode = CONFIG_MODE_VM;
        else if (strcmp(value, "kubernetes") == 0)
            c->deployment_mode = CONFIG_MODE_KUBERNETES;
        else if (strcmp(value, "auto") == 0)
            c->deployment_mode = detect_kubernetes() ? CONFIG_MODE_KUBERNETES : CONFIG_MODE_VM;
        else {
            allowed = "vm, kubernetes or auto";
            break;
        }
        return 0;
    case KIND_ENCODING:
        if (strcmp(value, "protobuf") == 0)
            c->encoding = CONFIG_ENCODING_PROTOBUF;
        else if (strcmp(value, "json") == 0)
            c->encoding = CONFIG_ENCODING_JSON;
        else {
            allowed = "protobuf or json";
            break;
        }
        return 0;
    case KIND_REDACT: {
        struct redact *r;
        char why[160];
        if (strlen(value) >= k->size) {
            snprintf(range, sizeof(range), "at most %zu characters", k->size - 1);
            allowed = range;
            break;
        }
        if (redact_new(value, &r, why, sizeof(why)) < 0) {
            snprintf(range, sizeof(range),
                     "a comma list of --NAME, -X, PROG:OPTION, NAME=, url, default, or none (%s)",
                     why);
            allowed = range;
            break;
        }
        redact_free(r);
        strcpy(field, value);
        return 0;
    }
    case KIND_PORTS:
        if (parse_ports(value, (uint16_t *)field) < 0) {
            allowed = "a comma list of 1 to 4 different ports, each 1-65535";
            break;
        }
        return 0;
    case KIND_TYPES:
        if (parse_types(value, &c->event_types) < 0) {
            allowed =
                "a comma list of connection, accept, close, packet_drop, exec, exit, dns, or all";
            break;
        }
        return 0;
    }
    errmsg_set(err, errlen, "invalid %s=%s (from %s): must be %s", k->name,
               shown_value(k, value, shown, sizeof(shown)), source_names[src], allowed);
    return -EINVAL;

store_num:
    switch (k->size) {
    case 4:
        *(uint32_t *)field = (uint32_t)v;
        break;
    default:
        *(uint64_t *)field = v;
        break;
    }
    return 0;
}

/*
 * Checks value for k as set_value() would, without keeping it: a value a
 * higher source overrides, or a key of the other binary (a configuration
 * shared by both) is still a value someone wrote, and a bad one is an error.
 */
static int check_value(const struct config *c, const struct key *k, const char *value,
                       enum source src, char *err, size_t errlen)
{
    struct config *scratch = malloc(sizeof(*scratch));
    if (!scratch)
        return errmsg_set(err, errlen, "out of memory checking %s", k->name);
    *scratch = *c;
    int rc = set_value(scratch, k, value, src, err, errlen);
    free(scratch);
    return rc;
}

static const struct key *find_key(const char *name, size_t len);

static const char *source_of(const struct config *c, const char *name)
{
    const struct key *k = find_key(name, strlen(name));
    return k ? source_names[c->key_source[k - keys]] : "default";
}

/* Finds a key by env/YAML name (any case, '-' or '_') or NULL. */
static const struct key *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const char *k = keys[i].name;
        if (strlen(k) != len)
            continue;
        size_t j = 0;
        for (; j < len; j++) {
            char a = (char)toupper((unsigned char)name[j]);
            if (a == '-')
                a = '_';
            if (a != k[j])
                break;
        }
        if (j == len)
            return &keys[i];
    }
    return NULL;
}

/* A plain (unquoted) YAML null: "KEY: null" or "KEY: ~" says no value, as "KEY:" does. */
static bool yaml_null(const yaml_node_t *n)
{
    static const char *const nulls[] = {"null", "Null", "NULL", "~"};
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strcmp((const char *)n->data.scalar.value, nulls[i]) == 0)
            return true;
    return false;
}

static int load_file(struct config *c, const char *path, bool *seen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    struct stat st;
    int e = !f ? errno : fstat(fileno(f), &st) < 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (e) {
        errmsg_set(err, errlen, "config file %s: %s", path, strerror(e));
        if (f)
            fclose(f);
        return -EINVAL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = 0;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        errmsg_set(err, errlen, "config file %s: line %zu: %s", path,
                   (size_t)parser.problem_mark.line + 1,
                   parser.problem ? parser.problem : "invalid YAML");
        yaml_parser_delete(&parser);
        fclose(f);
        return -EINVAL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) /* empty file: nothing to set */
        goto out;
    if (root->type != YAML_MAPPING_NODE) {
        errmsg_set(err, errlen, "config file %s: must be a mapping of KEY: value", path);
        rc = -EINVAL;
        goto out;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
        size_t line = kn->start_mark.line + 1;
        if (kn->type != YAML_SCALAR_NODE) {
            errmsg_set(err, errlen, "config file %s: line %zu: keys must be plain names", path,
                       line);
            rc = -EINVAL;
            goto out;
        }
        const char *name = (const char *)kn->data.scalar.value;
        const struct key *k = find_key(name, kn->data.scalar.length);
        if (!k) {
            errmsg_set(err, errlen, "config file %s: line %zu: unknown key \"%s\"", path, line,
                       name);
            rc = -EINVAL;
            goto out;
        }
        if (vn->type != YAML_SCALAR_NODE) {
            errmsg_set(err, errlen, "config file %s: line %zu: %s must be a single value", path,
                       line, k->name);
            rc = -EINVAL;
            goto out;
        }
        if (seen[k - keys]) {
            errmsg_set(err, errlen, "config file %s: line %zu: %s is set twice", path, line,
                       k->name);
            rc = -EINVAL;
            goto out;
        }
        seen[k - keys] = true;
        /* A quoted "\0" would end the value early: what follows it would be lost unseen. */
        if (memchr(vn->data.scalar.value, '\0', vn->data.scalar.length)) {
            errmsg_set(err, errlen, "config file %s: line %zu: %s must not contain a NUL byte",
                       path, line, k->name);
            rc = -EINVAL;
            goto out;
        }
        /* Shared configmaps carry both binaries' keys: the other one's are only checked. */
        const char *v = yaml_null(vn) ? "" : (const char *)vn->data.scalar.value;
        if ((k->roles & c->role ? set_value(c, k, v, SRC_FILE, err, errlen)
                                : check_value(c, k, v, SRC_FILE, err, errlen)) < 0) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, " [%s line %zu]", path, line);
            rc = -EINVAL;
            goto out;
        }
    }
    /* Keys after a "---" would be read by no one. */
    yaml_document_t next;
    if (!yaml_parser_load(&parser, &next)) {
        errmsg_set(err, errlen, "config file %s: line %zu: %s", path,
                   (size_t)parser.problem_mark.line + 1,
                   parser.problem ? parser.problem : "invalid YAML");
        rc = -EINVAL;
        goto out;
    }
    if (yaml_document_get_root_node(&next)) {
        errmsg_set(err, errlen,
                   "config file %s: line %zu: a second YAML document ('---'): put every key in "
                   "one",
                   path, (size_t)next.start_mark.line + 1);
        rc = -EINVAL;
    }
    yaml_document_delete(&next);
out:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

static void flag_name(const struct key *k, char *out, size_t len)
{
    size_t i = 0;
    for (; k->name[i] && i + 1 < len; i++)
        out[i] = k->name[i] == '_' ? '-' : (char)tolower((unsigned char)k->name[i]);
    out[i] = '\0';
}

void config_print_help(FILE *out, enum config_role role, const char *prog)
{
    fprintf(out, "Usage: %s [OPTIONS]\n", prog);
    if (role == CONFIG_AGGREGATOR)
        fprintf(out,
                "  or:  %s tail [--nats URL] [--subject S] [filters]\n"
                "  or:  %s decode < message\n",
                prog, prog);
    fputc('\n', out);
    fprintf(out, "%s\n\n",
            role == CONFIG_AGENT
                ? "Captures connections, accepts, closes, packet drops, DNS queries, execs and\n"
                  "exits with eBPF and serves them over HTTP; publishes batches to NATS."
                : "Collects event batches from NATS and serves the cluster-wide HTTP API.");
    fprintf(out, "Options (flag, environment variable, YAML key; flag > env > file > default):\n");
    fprintf(out, "  --config FILE            YAML config file (env CONFIG_FILE)\n");
    fprintf(out, "  --check-config           validate the configuration and exit\n");
    fprintf(out, "  --help                   this help\n");
    fprintf(out, "  --version                print the version\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (!(k->roles & role))
            continue;
        char flag[64];
        flag_name(k, flag, sizeof(flag));
        const char *def = role == CONFIG_AGENT ? k->def_agent : k->def_agg;
        const char *help = role == CONFIG_AGGREGATOR && k->help_agg ? k->help_agg : k->help;
        /* A default worked out at run time (the hostname, the cgroup mount) is in the text. */
        if (!def && strstr(help, "default: "))
            fprintf(out, "  --%-22s %s\n  %25s env %s\n", flag, help, "", k->name);
        else
            fprintf(out, "  --%-22s %s\n  %25s env %s; default: %s\n", flag, help, "", k->name,
                    def ? def : "(none)");
    }
    if (role == CONFIG_AGENT) /* the agent's own flag (cmd/agent), not a key */
        fprintf(out, "  --verbose                also log libbpf's debug messages (BTF, CO-RE "
                     "relocations, program loading)\n                            flag only (no "
                     "env or YAML); default: off\n");
}

static bool apply_defaults_and_env(struct config *c, bool *seen, bool env, char *err, size_t errlen)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (!(k->roles & c->role) || (seen[i] && !env))
            continue;
        const char *v =
            env ? getenv(k->name) : (c->role == CONFIG_AGENT ? k->def_agent : k->def_agg);
        if (!v)
            continue;
        if (seen[i]) { /* a flag overrides it: a bad value is an error all the same */
            if (check_value(c, k, v, SRC_ENV, err, errlen) < 0)
                return false;
            continue;
        }
        if (set_value(c, k, v, env ? SRC_ENV : SRC_DEFAULT, err, errlen) < 0)
            return false;
        seen[i] = env;
    }
    return true;
}

#define CGROUP2_MAGIC 0x63677270 /* CGROUP2_SUPER_MAGIC */

/* CGROUP_ROOT, when set: a directory on a cgroup v2 file system (what the agent opens for the
 * dns programs and walks for pods). */
static int check_cgroup_root(const char *root, char *err, size_t errlen)
{
    struct statfs fs;
    struct stat st;

    if (stat(root, &st) < 0 || statfs(root, &fs) < 0)
        return errmsg_set(err, errlen, "invalid CGROUP_ROOT=\"%s\": %s", root, strerror(errno));
    if (!S_ISDIR(st.st_mode) || fs.f_type != CGROUP2_MAGIC)
        return errmsg_set(err, errlen,
                          "invalid CGROUP_ROOT=\"%s\": not a cgroup v2 mount (such as "
                          "/sys/fs/cgroup or /sys/fs/cgroup/unified)",
                          root);
    return 0;
}

/*
 * CAPTURE_CGROUP: the subtree's directory under the cgroup v2 root
 * (CGROUP_ROOT or the detected mount) gives the id the kernel filter compares
 * (its inode number, which is what bpf_get_current_cgroup_id() returns) and
 * its depth below the root.
 */
static int resolve_capture_cgroup(struct config *c, char *err, size_t errlen)
{
    char root[CONFIG_STR], joined[2 * CONFIG_STR + 2], real_root[PATH_MAX], real[PATH_MAX];
    const char *path = c->capture_cgroup;
    struct statfs fs;
    struct stat st;
    size_t rlen;
    int rc;

    if (c->cgroup_root[0])
        snprintf(root, sizeof(root), "%s", c->cgroup_root);
    else if ((rc = cgroup_v2_root(root, sizeof(root))) < 0) {
        errmsg_set(err, errlen, "invalid CAPTURE_CGROUP=\"%s\": no cgroup v2 mount found: %s", path,
                   strerror(-rc));
        return -1;
    }
    if (path[0] == '/' && strncmp(path, root, strlen(root)) == 0)
        snprintf(joined, sizeof(joined), "%s", path);
    else
        snprintf(joined, sizeof(joined), "%s/%s", root, path[0] == '/' ? path + 1 : path);
    if (!realpath(root, real_root) || !realpath(joined, real) || stat(real, &st) < 0 ||
        statfs(real, &fs) < 0) {
        errmsg_set(err, errlen, "invalid CAPTURE_CGROUP=\"%s\": %s: %s", path, joined,
                   strerror(errno));
        return -1;
    }
    rlen = strlen(real_root);
    if (!S_ISDIR(st.st_mode) || fs.f_type != CGROUP2_MAGIC || strncmp(real, real_root, rlen) != 0 ||
        (real[rlen] != '/' && real[rlen] != '\0')) {
        errmsg_set(err, errlen,
                   "invalid CAPTURE_CGROUP=\"%s\": %s is not a cgroup in the cgroup v2 "
                   "hierarchy at %s",
                   path, real, real_root);
        return -1;
    }
    snprintf(c->capture_cgroup_path, sizeof(c->capture_cgroup_path), "%s", real);
    c->capture_cgroup_id = (uint64_t)st.st_ino;
    c->capture_cgroup_level = 0;
    for (const char *p = real + rlen; *p; p++)
        if (*p == '/' && p[1] && p[1] != '/')
            c->capture_cgroup_level++;
    return 0;
}

/* The flags that take no value: --check-config, --help, --version and the agent's --verbose
 * (which cmd/agent takes out of argv before this runs, unless it was given a value). */
static bool is_switch(const char *name, size_t nlen, enum config_role role)
{
    static const char *const switches[] = {"check-config", "help", "version", "verbose"};
    for (size_t i = 0; i < sizeof(switches) / sizeof(switches[0]); i++)
        if (strlen(switches[i]) == nlen && strncmp(name, switches[i], nlen) == 0)
            return i < 3 || role == CONFIG_AGENT;
    return false;
}

enum config_result config_load(struct config *c, enum config_role role, int argc, char **argv,
                               char *err, size_t errlen)
{
    bool from_flag[NKEYS] = {false}, from_higher[NKEYS] = {false};
    const char *prog = argc > 0 ? argv[0] : "ebpf-monitor";
    const char *slash = strrchr(prog, '/');
    prog = slash ? slash + 1 : prog;

    memset(c, 0, sizeof(*c));
    c->role = role;

    /* Pass 1: flags (highest precedence), remembered so lower sources skip them. */
    struct {
        const struct key *k;
        const char *v;
    } flags[argc > 0 ? argc : 1];
    size_t nflags = 0;
    const char *config_file = getenv("CONFIG_FILE");
    const char *info = NULL; /* the first of --help, -h and --version */
    bool config_flag = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strcmp(a, "--version") == 0) {
            info = info ? info : a;
            continue;
        }
        if (strcmp(a, "--check-config") == 0) {
            c->check_only = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            errmsg_set(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            return CONFIG_INVALID;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const char *value = eq ? eq + 1 : NULL;
        bool is_config = nlen == 6 && strncmp(name, "config", 6) == 0;
        if (value && is_switch(name, nlen, role)) {
            errmsg_set(err, errlen, "option --%.*s takes no value (see --help)", (int)nlen, name);
            return CONFIG_INVALID;
        }
        const struct key *k = is_config ? NULL : find_key(name, nlen);
        if (!is_config && (!k || !(k->roles & role) || memchr(name, '_', nlen))) {
            errmsg_set(err, errlen, "unknown option --%.*s (see --help)", (int)nlen, name);
            return CONFIG_INVALID;
        }
        if (!value) {
            if (i + 1 >= argc) {
                errmsg_set(err, errlen, "option --%.*s needs a value (see --help)", (int)nlen,
                           name);
                return CONFIG_INVALID;
            }
            value = argv[++i];
        }
        if (is_config) {
            config_file = value;
            config_flag = true;
            continue;
        }
        flags[nflags].k = k;
        flags[nflags].v = value;
        nflags++;
        from_flag[k - keys] = true;
    }
    /* Only once every argument is known: "--version extra" is a slip like "extra". */
    if (info && strcmp(info, "--version") == 0) {
        printf("%s %s\n", prog, EBPF_MONITOR_VERSION);
        return CONFIG_EXIT;
    }
    if (info) {
        config_print_help(stdout, role, prog);
        return CONFIG_EXIT;
    }

    /* An empty value is a bad value, never a way to say "no file" (as for every key). */
    if (config_file && !*config_file) {
        errmsg_set(err, errlen,
                   "invalid CONFIG_FILE=\"\" (from %s): must be a value (leave CONFIG_FILE unset "
                   "for no file)",
                   config_flag ? "flag" : "environment");
        return CONFIG_INVALID;
    }
    /* Defaults first, then each higher source overwrites. */
    if (!apply_defaults_and_env(c, from_higher, false, err, errlen))
        return CONFIG_INVALID;
    if (config_file) {
        snprintf(c->config_file, sizeof(c->config_file), "%s", config_file);
        bool file_seen[NKEYS] = {false};
        if (load_file(c, config_file, file_seen, err, errlen) < 0)
            return CONFIG_INVALID;
    }
    if (!apply_defaults_and_env(c, from_flag, true, err, errlen))
        return CONFIG_INVALID;
    for (size_t i = 0; i < nflags; i++)
        if (set_value(c, flags[i].k, flags[i].v, SRC_FLAG, err, errlen) < 0)
            return CONFIG_INVALID;

    if (!c->node_name[0]) {
        char host[CONFIG_STR] = "";
        if (gethostname(host, sizeof(host) - 1) < 0) {
            errmsg_set(err, errlen, "NODE_NAME is not set and the hostname is unavailable: %s",
                       strerror(errno));
            return CONFIG_INVALID;
        }
        if (set_value(c, find_key("NODE_NAME", 9), host, SRC_HOSTNAME, err, errlen) < 0)
            return CONFIG_INVALID;
    }
    if (role == CONFIG_AGGREGATOR) {
        size_t plen = strlen(c->subject_prefix);
        if (!c->control_subject[0] || strpbrk(c->control_subject, " \t*>") ||
            (strncmp(c->control_subject, c->subject_prefix, plen) == 0 &&
             (c->control_subject[plen] == '.' || c->control_subject[plen] == '\0'))) {
            errmsg_set(err, errlen,
                       "invalid CONTROL_SUBJECT=\"%s\" (from %s): must be a NATS subject without "
                       "wildcards outside SUBJECT_PREFIX \"%s\" (from %s)",
                       c->control_subject, source_of(c, "CONTROL_SUBJECT"), c->subject_prefix,
                       source_of(c, "SUBJECT_PREFIX"));
            return CONFIG_INVALID;
        }
        if (!c->queue_group[0] || strpbrk(c->queue_group, " \t*>.")) {
            errmsg_set(err, errlen,
                       "invalid QUEUE_GROUP=\"%s\" (from %s): must be one subject token (no '.', "
                       "'*', '>' or spaces)",
                       c->queue_group, source_of(c, "QUEUE_GROUP"));
            return CONFIG_INVALID;
        }
    }
    if (!nats_urls_valid(c->nats_url)) {
        char shown[CONFIG_URL]; /* without the passwords or tokens it may hold */
        config_redact_urls(c->nats_url, shown, sizeof(shown));
        errmsg_set(err, errlen,
                   "invalid NATS_URL=\"%s\" (from %s): must be a comma-separated list of servers "
                   "such as nats://HOST:4222, tls://HOST:4222 or HOST:4222",
                   shown, source_of(c, "NATS_URL"));
        return CONFIG_INVALID;
    }
    if (c->k8s_api_url[0] && !http_url_valid(c->k8s_api_url)) {
        errmsg_set(err, errlen,
                   "invalid K8S_API_URL=\"%s\" (from %s): must be https://HOST[:PORT] or "
                   "http://HOST[:PORT], with an optional path",
                   c->k8s_api_url, source_of(c, "K8S_API_URL"));
        return CONFIG_INVALID;
    }
    if (!c->tls_cert[0] != !c->tls_key[0]) {
        errmsg_set(err, errlen, "TLS_CERT and TLS_KEY must be set together (%s is missing)",
                   c->tls_cert[0] ? "TLS_KEY" : "TLS_CERT");
        return CONFIG_INVALID;
    }
    if (!c->nats_tls_cert[0] != !c->nats_tls_key[0]) {
        errmsg_set(err, errlen,
                   "NATS_TLS_CERT and NATS_TLS_KEY must be set together (%s is missing)",
                   c->nats_tls_cert[0] ? "NATS_TLS_KEY" : "NATS_TLS_CERT");
        return CONFIG_INVALID;
    }
    if (!c->nats_user[0] != !c->nats_password[0]) {
        errmsg_set(err, errlen, "NATS_USER and NATS_PASSWORD must be set together (%s is missing)",
                   c->nats_user[0] ? "NATS_PASSWORD" : "NATS_USER");
        return CONFIG_INVALID;
    }
    /* Only the paths in effect: one a higher source replaced is never read. */
    for (size_t i = 0; i < NKEYS; i++) {
        const char *path = (const char *)c + keys[i].offset;
        if (keys[i].kind == KIND_FILE && (keys[i].roles & role) && path[0] &&
            config_check_file(keys[i].name, path, err, errlen) < 0)
            return CONFIG_INVALID;
    }
    if (check_listen_host(c->listen_addr, err, errlen) < 0)
        return CONFIG_INVALID;
    if (role == CONFIG_AGENT && c->cgroup_root[0] &&
        check_cgroup_root(c->cgroup_root, err, errlen) < 0)
        return CONFIG_INVALID;
    if (role == CONFIG_AGENT && c->capture_cgroup[0] && resolve_capture_cgroup(c, err, errlen) < 0)
        return CONFIG_INVALID;
    return CONFIG_OK;
}

int config_load_main(struct config *c, enum config_role role, int argc, char **argv)
{
    char err[512];
    const char *prog = role == CONFIG_AGENT ? "ebpf-agent" : "ebpf-aggregator";

    switch (config_load(c, role, argc, argv, err, sizeof(err))) {
    case CONFIG_OK:
        break;
    case CONFIG_EXIT:
        return 0;
    default:
        fprintf(stderr, "%s: %s\n", prog, err);
        return 2;
    }
    if (c->check_only) {
        printf("%s: configuration OK\n", prog);
        return 0;
    }
    return -1;
}

const char *config_stop_signal_text(int sig)
{
    switch (sig) {
    case SIGINT:
        return "SIGINT";
    case SIGHUP:
        return "SIGHUP (no reload: the configuration is read at start; restart to apply a change)";
    default:
        return "SIGTERM";
    }
}

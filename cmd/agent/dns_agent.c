/*
 * DNS messages to `dns` events, names for `peer_dns`, and the DNS series of
 * /metrics. See dns_agent.h.
 */
#include "dns_agent.h"

#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "dns_events.h"
#include "intern.h"

/* Every rcode assigned so far, 0-23 (BADCOOKIE): the header's 4 bits and EDNS's extension. */
#define RCODE_SLOTS   24
#define BEYOND_SLOT   RCODE_SLOTS /* unassigned rcodes past those: rcode="~other" */
#define TIMEOUT_SLOT  (RCODE_SLOTS + 1)
#define UNKNOWN_SLOT  (RCODE_SLOTS + 2)
#define FAILED_SLOT   (RCODE_SLOTS + 3)
#define OTHER_NAME    "~other"
#define NSEC_PER_USEC 1000ull

/* Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf). */
static const uint64_t latency_bounds_us[DNS_AGENT_LATENCY_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};

/*
 * DNS over TCP is a byte stream: a message may come in several segments (its
 * length prefix alone, then the rest; a query written in pieces). Each
 * socket's unfinished message is held here, its first TCP_HOLD bytes (the
 * prefix and what a record copies of a segment), until its last byte comes;
 * at most TCP_STREAMS at once (the oldest dropped for a new one) and for
 * TCP_STREAM_TTL_NS, counted when dropped (tcp_partial_dropped).
 */
#define TCP_STREAMS       64
#define TCP_HOLD          (2 + DNS_RECORD_PAYLOAD_MAX)
#define TCP_STREAM_TTL_NS (10ull * 1000000000ull)

struct tcp_stream {
    bool used;
    struct records_dns first; /* the first segment's record (its payload not kept) */
    uint64_t last_boot_ns;
    size_t want;  /* 2 + the message's length, once the prefix is held (else 0) */
    size_t taken; /* bytes of the message seen so far (held, or past TCP_HOLD) */
    size_t held;
    uint8_t buf[TCP_HOLD];
};

/*
 * Where each socket's stream stands, per direction (its queries, its answers):
 * the sequence number of the next byte to take, and segments that came past a
 * gap (TCP keeps them out of order until the gap is filled, and they never pass
 * the capture again), taken once it is. TCP_CONNS at once (the least recently
 * fed dropped for a new one), TCP_AHEAD segments each, TCP_STREAM_TTL_NS each;
 * what never fits counts as lost messages (tcp_partial_dropped).
 */
#define TCP_CONNS 64
#define TCP_AHEAD 4

struct tcp_ahead {
    bool used;
    struct records_dns r; /* r.payload points at data */
    uint8_t data[DNS_RECORD_PAYLOAD_MAX];
};

struct tcp_conn {
    bool used;
    bool answer;
    uint64_t cookie;
    uint32_t next; /* the next byte's sequence number */
    uint64_t last_boot_ns;
    struct tcp_ahead ahead[TCP_AHEAD];
};

/* One /metrics series: the queries of one (namespace, workload). */
struct series {
    const char *namespace; /* interned; "" outside Kubernetes */
    const char *workload;  /* interned; the command outside Kubernetes; NULL = free slot */
    /* answered, by rcode; [BEYOND_SLOT]: past those; [TIMEOUT_SLOT]: timeouts; [UNKNOWN_SLOT]:
     * unknown outcomes; [FAILED_SLOT]: failed (an error on the socket) */
    uint64_t by_rcode[FAILED_SLOT + 1];
    uint64_t latency[DNS_AGENT_LATENCY_BUCKETS + 1]; /* answered, non-cumulative */
    uint64_t latency_sum_ns;
};

struct dns_agent {
    dns_agent_emit_fn emit;
    void *ctx;
    struct dns_tracker *tracker;
    struct dns_names *names;
    struct dns_message *msg; /* ~40 KB: one, reused for every message */
    bool emitting_answer;    /* msg is the answer of the event being emitted */

    uint64_t messages, suppressed, truncated; /* capture thread */
    uint64_t tcp_reassembled, tcp_partial_dropped, tcp_not_next;
    struct dns_lost *lost_seen; /* the kernel's rings of lost answers as last read */
    int lost_ncpus;
    struct tcp_stream streams[TCP_STREAMS];
    struct tcp_conn conns[TCP_CONNS];
    pthread_mutex_t lock; /* guards what follows */
    struct dns_agent_stats snapshot;
    struct series *series; /* open addressing, cap + 1 slots (the last for ~other) */
    size_t series_cap, series_used;
    struct series other;
    uint64_t series_folded;
};

static void snapshot(struct dns_agent *d)
{
    struct dns_agent_stats s = {0};

    dns_tracker_get_stats(d->tracker, &s.tracker);
    dns_names_get_stats(d->names, &s.names);
    s.messages = d->messages;
    s.suppressed = d->suppressed;
    s.truncated = d->truncated;
    s.tcp_reassembled = d->tcp_reassembled;
    s.tcp_partial_dropped = d->tcp_partial_dropped;
    s.tcp_not_next = d->tcp_not_next;
    pthread_mutex_lock(&d->lock);
    d->snapshot = s;
    pthread_mutex_unlock(&d->lock);
}

struct dns_agent *dns_agent_new(const struct dns_agent_config *cfg, dns_agent_emit_fn emit,
                                void *ctx)
{
    struct dns_agent *d = calloc(1, sizeof(*d));
    struct dns_tracker_config tc = {.max_pending = cfg->pending_max, .timeout_ns = cfg->timeout_ns};
    struct dns_names_config nc = {0};

    if (!d)
        return NULL;
    d->emit = emit;
    d->ctx = ctx;
    d->series_cap = cfg->max_series ? cfg->max_series : 1000;
    pthread_mutex_init(&d->lock, NULL);
    d->tracker = dns_tracker_new(&tc);
    d->names = dns_names_new(&nc);
    d->msg = malloc(sizeof(*d->msg));
    /* Twice the cap: the table stays at most half full, probes stay short. */
    d->series = calloc(d->series_cap * 2, sizeof(*d->series));
    if (!d->tracker || !d->names || !d->msg || !d->series) {
        dns_agent_free(d);
        return NULL;
    }
    snapshot(d);
    return d;
}

void dns_agent_free(struct dns_agent *d)
{
    if (!d)
        return;
    dns_tracker_free(d->tracker);
    dns_names_free(d->names);
    free(d->msg);
    free(d->series);
    free(d->lost_seen);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

static void emit_unanswered(struct event *e, void *arg)
{
    struct dns_agent *d = arg;

    d->emit(d->ctx, e, 0);
    event_clear(e);
}

/* The pending query key of an answer: its socket and the server it came from. */
static struct dns_key answer_key(const struct records_dns *m)
{
    struct dns_key k = {
        .cookie = m->cookie, .family = m->family, .protocol = m->protocol, .server_port = m->sport};
    memcpy(k.server, m->saddr, sizeof(k.server));
    return k;
}

/* One parsed message of m (in d->msg): a query to track, or an answer that may make an event. */
static void one_message(struct dns_agent *d, const struct records_dns *m)
{
    struct dns_key k = {.cookie = m->cookie, .family = m->family, .protocol = m->protocol};

    if (!m->answer) {
        struct event attr = {0};

        k.server_port = m->dport;
        memcpy(k.server, m->daddr, sizeof(k.server));
        attr.timestamp_ns = m->timestamp_ns;
        attr.pid = m->pid;
        attr.ppid = m->ppid;
        attr.uid = m->uid;
        memcpy(attr.command, m->command, sizeof(attr.command));
        attr.cgroup_id = m->cgroup_id;
        memcpy(attr.saddr, m->saddr, sizeof(attr.saddr));
        attr.sport = m->sport;
        dns_tracker_query(d->tracker, &k, d->msg, &attr, m->boot_ns);
        return;
    }
    k = answer_key(m);
    struct event e = {0};
    uint32_t ttl = 0;
    if (dns_tracker_answer(d->tracker, &k, d->msg, m->boot_ns, &e, &ttl) == 1) {
        d->emitting_answer = true; /* dns_agent_learn() takes its addresses past the event's */
        d->emit(d->ctx, &e, ttl);
        d->emitting_answer = false;
        event_clear(&e);
    }
}

/*
 * Takes d->msg, parsed with rc, as one of m's. A message that does not parse
 * is counted; an answer whose header and question did (its records did not)
 * still answers its query, with its rcode and latency and no answers, flagged
 * answers_truncated: the server did answer, and nothing of the unreadable
 * records is guessed.
 */
static void take_message(struct dns_agent *d, const struct records_dns *m, int rc)
{
    if (rc < 0) {
        dns_tracker_parse_error(d->tracker, rc);
        /* An answer whose header says whose it is, but not its question. */
        if (m->answer && d->msg->qr && !d->msg->qname[0]) {
            struct dns_key k = answer_key(m);
            dns_tracker_answer_unreadable(d->tracker, &k, d->msg->id);
        }
        if (!m->answer || !d->msg->qr || !d->msg->qname[0])
            return;
        d->msg->answer_count = 0;
        d->msg->truncated = d->msg->ancount > 0; /* an empty list alone reads as "no data" */
    }
    one_message(d, m);
}

/* Parses a length-prefixed message of len bytes at p (cut short: parsed as far as it goes)
 * and takes it as one of m's. */
static void tcp_message(struct dns_agent *d, const struct records_dns *m, const uint8_t *p,
                        size_t len)
{
    take_message(d, m, dns_parse_tcp(p, len, d->msg));
}

/*
 * Bytes of a TCP stream given up (counted): an answer among them may have been for a query of
 * that socket, which then expires as "unknown", not "timeout".
 */
static void tcp_lost(struct dns_agent *d, uint64_t cookie, bool answer, uint64_t now_boot_ns)
{
    d->tcp_partial_dropped++;
    if (answer)
        dns_tracker_socket_unsure(d->tracker, cookie, now_boot_ns);
}

static struct tcp_stream *stream_find(struct dns_agent *d, const struct records_dns *m)
{
    for (size_t i = 0; i < TCP_STREAMS; i++) {
        struct tcp_stream *s = &d->streams[i];
        if (s->used && s->first.cookie == m->cookie && s->first.answer == m->answer)
            return s;
    }
    return NULL;
}

/* A free stream, or the least recently fed one, dropped and counted. */
static struct tcp_stream *stream_new(struct dns_agent *d, uint64_t now_boot_ns)
{
    struct tcp_stream *oldest = &d->streams[0];
    for (size_t i = 0; i < TCP_STREAMS; i++) {
        if (!d->streams[i].used)
            return &d->streams[i];
        if (d->streams[i].last_boot_ns < oldest->last_boot_ns)
            oldest = &d->streams[i];
    }
    tcp_lost(d, oldest->first.cookie, oldest->first.answer, now_boot_ns);
    return oldest;
}

/*
 * Feeds stream s the segment bytes [*off, m->wire_len) of which m holds the
 * first payload_len; takes the message when its last byte is in, then frees
 * s. A message longer than TCP_HOLD is taken as far as held once its last byte
 * is in; one with bytes the capture did not copy, as far as they go.
 */
static void stream_feed(struct dns_agent *d, struct tcp_stream *s, const struct records_dns *m,
                        size_t *off)
{
    while (*off < m->wire_len && (!s->want || s->taken < s->want)) {
        size_t n = m->wire_len - *off;
        if (s->want && n > s->want - s->taken)
            n = s->want - s->taken;
        else if (!s->want && n > 2 - s->taken)
            n = 2 - s->taken; /* the prefix first: it says how much follows */
        /* Of those n bytes, the ones the record holds go to buf while there is room. */
        size_t copied = *off < m->payload_len ? m->payload_len - *off : 0;
        if (copied > n)
            copied = n;
        if (s->taken == s->held) {
            size_t room = TCP_HOLD - s->held;
            size_t k = copied < room ? copied : room;
            memcpy(s->buf + s->held, m->payload + *off, k);
            s->held += k; /* bytes the capture did not copy were counted with their record */
        }
        s->taken += n;
        *off += n;
        if (!s->want && s->taken == 2) {
            if (s->held < 2) {
                s->used = false; /* the prefix itself was not copied: nothing to go by */
                tcp_lost(d, s->first.cookie, s->first.answer, m->boot_ns);
                return;
            }
            s->want = 2 + ((size_t)s->buf[0] << 8 | s->buf[1]);
        }
    }
    s->last_boot_ns = m->boot_ns;
    if (!s->want || s->taken < s->want)
        return; /* more to come */
    /* A query is sent when its first byte is; an answer is in when its last byte is. */
    struct records_dns at = m->answer ? *m : s->first;
    s->used = false;
    d->tcp_reassembled++;
    tcp_message(d, &at, s->buf, s->held);
}

/*
 * Takes a segment's bytes from skip on (those before were taken): they continue the socket's
 * unfinished message, if any; then they may carry several length-prefixed messages (a resolver
 * that pipelines its queries, a server answering them together), each taken in turn, and start
 * one that ends in a later segment (held, stream_feed()).
 */
static void segment_take(struct dns_agent *d, const struct records_dns *m, size_t skip)
{
    struct tcp_stream *s = stream_find(d, m);
    size_t off = skip;

    if (s)
        stream_feed(d, s, m, &off);
    while (off < m->wire_len) {
        if (off + 2 <= m->payload_len) {
            size_t whole = 2 + ((size_t)m->payload[off] << 8 | m->payload[off + 1]);
            if (off + whole <= m->wire_len) {
                /* Within this segment: copied whole, or as far as the capture went. */
                size_t copied = m->payload_len - off < whole ? m->payload_len - off : whole;
                tcp_message(d, m, m->payload + off, copied);
                if (copied < whole && off + copied == m->payload_len && off + whole < m->wire_len)
                    return; /* the next message's bytes were not copied: nothing to go by */
                off += whole;
                continue;
            }
        } else if (off >= m->payload_len) {
            return; /* bytes the capture did not copy */
        }
        /* The message goes on in a later segment: held until its last byte. */
        s = stream_new(d, m->boot_ns);
        memset(s, 0, sizeof(*s));
        s->used = true;
        s->first = *m;
        s->first.payload = NULL;
        stream_feed(d, s, m, &off);
        return;
    }
}

static struct tcp_conn *conn_find(struct dns_agent *d, const struct records_dns *m)
{
    for (size_t i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *k = &d->conns[i];
        if (k->used && k->cookie == m->cookie && k->answer == m->answer)
            return k;
    }
    return NULL;
}

/* Forgets what k holds past a gap: messages lost. */
static void conn_drop_ahead(struct dns_agent *d, struct tcp_conn *k, uint64_t now_boot_ns)
{
    for (size_t i = 0; i < TCP_AHEAD; i++) {
        if (k->ahead[i].used)
            tcp_lost(d, k->cookie, k->answer, now_boot_ns);
        k->ahead[i].used = false;
    }
}

/* A free place, or the least recently fed socket's (what it held past a gap is lost). */
static struct tcp_conn *conn_new(struct dns_agent *d, const struct records_dns *m)
{
    struct tcp_conn *k = &d->conns[0];
    for (size_t i = 0; i < TCP_CONNS; i++) {
        if (!d->conns[i].used) {
            k = &d->conns[i];
            break;
        }
        if (d->conns[i].last_boot_ns < k->last_boot_ns)
            k = &d->conns[i];
    }
    if (k->used)
        conn_drop_ahead(d, k, m->boot_ns);
    k->used = true;
    k->cookie = m->cookie;
    k->answer = m->answer;
    return k;
}

/* Keeps a segment that came past a gap until the gap is filled (or counts it lost). */
static void conn_hold_ahead(struct dns_agent *d, struct tcp_conn *k, const struct records_dns *m)
{
    for (size_t i = 0; i < TCP_AHEAD; i++) {
        struct tcp_ahead *a = &k->ahead[i];
        if (a->used && a->r.tcp_seq != m->tcp_seq)
            continue;
        if (a->used && a->r.wire_len >= m->wire_len)
            return; /* a copy of one held */
        a->used = true;
        a->r = *m;
        /* At most a record's room (records_decode_dns() checked it): what goes past, if
         * anything ever did, counts as not copied. */
        if (a->r.payload_len > sizeof(a->data)) {
            a->r.payload_len = sizeof(a->data);
            a->r.truncated = true;
        }
        memcpy(a->data, m->payload, a->r.payload_len);
        a->r.payload = a->data;
        return;
    }
    tcp_lost(d, k->cookie, k->answer, m->boot_ns);
}

/* Takes m's bytes past k->next, and then what was held past the gap it fills. */
static void conn_take(struct dns_agent *d, struct tcp_conn *k, const struct records_dns *m)
{
    uint32_t skip = k->next - m->tcp_seq; /* m starts at or before k->next */

    if (skip >= m->wire_len) {
        d->tcp_not_next++; /* all taken already: a retransmission or a duplicate */
        return;
    }
    segment_take(d, m, skip);
    k->next = m->tcp_seq + (uint32_t)m->wire_len;
    for (bool more = true; more;) {
        more = false;
        for (size_t i = 0; i < TCP_AHEAD; i++) {
            struct tcp_ahead *a = &k->ahead[i];
            if (!a->used || (int32_t)(a->r.tcp_seq - k->next) > 0)
                continue;
            a->used = false;
            if ((int32_t)(a->r.tcp_seq + (uint32_t)a->r.wire_len - k->next) <= 0) {
                d->tcp_not_next++;
                continue;
            }
            segment_take(d, &a->r, k->next - a->r.tcp_seq);
            k->next = a->r.tcp_seq + (uint32_t)a->r.wire_len;
            more = true;
        }
    }
}

/*
 * TCP: each socket's bytes are taken once and in order, by their sequence numbers (the
 * kernel said where each segment stood against the socket's next byte when it saw it). A
 * retransmission or a duplicate is skipped, and so is a segment TCP itself throws away (out of
 * the window: forged), whose "answer" the client never saw (counted in tcp_not_next); a
 * segment past a gap waits for the one that fills it.
 */
static void tcp_segment(struct dns_agent *d, const struct records_dns *m)
{
    if (m->tcp_order == DNS_TCP_OLD || m->tcp_order == DNS_TCP_OUT_OF_WINDOW) {
        d->tcp_not_next++;
        return;
    }
    struct tcp_conn *k = conn_find(d, m);
    if (k == NULL) {
        k = conn_new(d, m);
        /* Its first segment seen: the socket's next byte as the kernel had it (where a
         * retransmission's new bytes start, or the gap before one ahead), or the segment's. */
        k->next = m->tcp_order == DNS_TCP_UNVERIFIED ? m->tcp_seq : m->tcp_next;
    } else if (m->tcp_order == DNS_TCP_NEXT && (int32_t)(m->tcp_next - k->next) > 0) {
        /* The socket is past bytes never seen here (rate-limited, or lost with a full ring):
         * what was held is lost, and the stream goes on from the kernel's next byte. */
        struct tcp_stream *s = stream_find(d, m);
        if (s) {
            s->used = false;
            tcp_lost(d, m->cookie, m->answer, m->boot_ns);
        }
        conn_drop_ahead(d, k, m->boot_ns);
        k->next = m->tcp_next;
    }
    k->last_boot_ns = m->boot_ns;
    if ((int32_t)(m->tcp_seq - k->next) > 0)
        conn_hold_ahead(d, k, m);
    else
        conn_take(d, k, m);
}

void dns_agent_message(struct dns_agent *d, const struct records_dns *m)
{
    if (m->error) {
        /* Not a message: the socket's queries failed (emitted as the timeouts are). */
        dns_tracker_socket_error(d->tracker, m->cookie, m->error, m->boot_ns, emit_unanswered, d);
        return;
    }
    d->messages++;
    d->suppressed += m->suppressed;
    d->truncated += m->truncated;
    if (m->protocol == IPPROTO_TCP) {
        struct records_dns seg = *m;
        if (seg.wire_len < seg.payload_len)
            seg.wire_len = seg.payload_len; /* a record made without it */
        tcp_segment(d, &seg);
        return;
    }
    take_message(d, m, dns_parse(m->payload, m->payload_len, d->msg));
}

/* A loss the kernel recorded: of the socket's answers, or of anyone's (cookie 0: none known). */
static void answer_lost(struct dns_agent *d, uint64_t cookie, uint64_t ts_ns)
{
    if (cookie)
        dns_tracker_socket_unsure(d->tracker, cookie, ts_ns);
    else
        dns_tracker_answers_lost(d->tracker, ts_ns);
}

/*
 * One CPU's ring against what it held at the last read: a slot that changed is a loss (or a
 * later loss of its socket). A slot read while the kernel wrote it may pair one loss's socket
 * with another's time; it reads right at the next call, 100 ms later: only a query whose
 * answer was lost that instant, at its DNS_TIMEOUT already, could expire in between. Past
 * DNS_LOST_SLOTS - DNS_LOST_RECENT new slots one may have been overwritten unread: every
 * query sent before now (or the ring's latest loss) is unsure.
 */
static void lost_ring_diff(struct dns_agent *d, const struct dns_lost *cur,
                           const struct dns_lost *seen, uint64_t now_boot_ns)
{
    uint64_t latest = now_boot_ns;

    for (size_t i = 0; i < DNS_LOST_SLOTS; i++) {
        const struct dns_lost_slot *s = &cur->slot[i];
        if (s->ts_ns > latest)
            latest = s->ts_ns;
        if (s->ts_ns && (s->ts_ns != seen->slot[i].ts_ns || s->cookie != seen->slot[i].cookie))
            answer_lost(d, s->cookie, s->ts_ns);
    }
    if (cur->written - seen->written > DNS_LOST_SLOTS - DNS_LOST_RECENT)
        dns_tracker_answers_lost(d->tracker, latest);
}

void dns_agent_answers_lost(struct dns_agent *d, const struct dns_lost *per_cpu, int ncpus,
                            uint64_t now_boot_ns)
{
    if (ncpus < 0 || !per_cpu) {
        if (ncpus != 0)
            dns_tracker_answers_lost(d->tracker, now_boot_ns);
        return;
    }
    if (ncpus != d->lost_ncpus) {
        /* The first read (or a new count of CPUs): what the rings hold is all new. */
        struct dns_lost *seen = calloc((size_t)ncpus, sizeof(*seen));
        if (!seen) {
            dns_tracker_answers_lost(d->tracker, now_boot_ns);
            return;
        }
        free(d->lost_seen);
        d->lost_seen = seen;
        d->lost_ncpus = ncpus;
    }
    for (int cpu = 0; cpu < ncpus; cpu++) {
        lost_ring_diff(d, &per_cpu[cpu], &d->lost_seen[cpu], now_boot_ns);
        d->lost_seen[cpu] = per_cpu[cpu];
    }
}

void dns_agent_expire(struct dns_agent *d, uint64_t now_boot_ns)
{
    for (size_t i = 0; i < TCP_STREAMS; i++) {
        struct tcp_stream *s = &d->streams[i];
        if (s->used && now_boot_ns > s->last_boot_ns + TCP_STREAM_TTL_NS) {
            s->used = false;
            tcp_lost(d, s->first.cookie, s->first.answer, now_boot_ns);
        }
    }
    for (size_t i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *k = &d->conns[i];
        if (k->used && now_boot_ns > k->last_boot_ns + TCP_STREAM_TTL_NS) {
            conn_drop_ahead(d, k, now_boot_ns); /* its gap was never filled */
            k->used = false;
        }
    }
    dns_tracker_expire(d->tracker, now_boot_ns, emit_unanswered, d);
    snapshot(d);
}

void dns_agent_learn(struct dns_agent *d, const struct event *e, uint32_t ttl_s,
                     uint64_t now_boot_ns)
{
    if (e->type != EVENT_DNS || e->status != EVENT_STATUS_ANSWERED)
        return;
    dns_names_add(d->names, dns_names_scope(e), e, ttl_s, now_boot_ns);
    if (d->emitting_answer)
        dns_names_add_more(d->names, dns_names_scope(e), e, d->msg, now_boot_ns);
}

void dns_agent_fill_peer(struct dns_agent *d, struct event *e, uint64_t now_boot_ns)
{
    const uint8_t *addr;
    const char *name;

    switch (e->type) {
    case EVENT_CONNECTION:
        addr = e->daddr;
        break;
    case EVENT_ACCEPT:
        addr = e->saddr;
        break;
    case EVENT_CLOSE:
        addr = e->u.close.role == EVENT_ROLE_SERVER ? e->saddr : e->daddr;
        break;
    default:
        return;
    }
    if (e->family == EVENT_FAMILY_NONE || e->peer.dns)
        return;
    name = dns_names_lookup(d->names, dns_names_scope(e), e->family, addr, now_boot_ns);
    if (name)
        e->peer.dns = intern_process(name); /* refused when full: none, counted */
}

/* FNV-1a over the two names' pointers: both are interned, so equal names are equal pointers. */
static size_t series_hash(const char *ns, const char *wl)
{
    uint64_t h = 1469598103934665603ull;
    uintptr_t v[2] = {(uintptr_t)ns, (uintptr_t)wl};
    const unsigned char *p = (const unsigned char *)v;

    for (size_t i = 0; i < sizeof(v); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (size_t)h;
}

/* The series of (ns, wl); the ~other series when the table is full. Under d->lock. */
static struct series *series_find(struct dns_agent *d, const char *ns, const char *wl)
{
    size_t slots = d->series_cap * 2;

    if (ns && wl) {
        for (size_t i = series_hash(ns, wl) % slots, n = 0; n < slots; i = (i + 1) % slots, n++) {
            struct series *s = &d->series[i];

            if (!s->workload) {
                if (d->series_used >= d->series_cap)
                    break;
                s->namespace = ns;
                s->workload = wl;
                d->series_used++;
                return s;
            }
            if (s->namespace == ns && s->workload == wl)
                return s;
        }
    }
    d->series_folded++;
    if (!d->other.workload) {
        d->other.namespace = "";
        d->other.workload = OTHER_NAME;
    }
    return &d->other;
}

void dns_agent_count(struct dns_agent *d, const struct event *e)
{
    const char *ns, *wl;
    struct series *s;
    size_t b = 0;

    if (e->type != EVENT_DNS)
        return;
    /* Outside Kubernetes a workload is its command, as in /api/flows. */
    ns = intern(e->k8s.namespace ? e->k8s.namespace : "");
    wl = e->k8s.workload ? e->k8s.workload : e->k8s.pod_name ? e->k8s.pod_name : e->command;
    wl = intern(wl);
    pthread_mutex_lock(&d->lock);
    s = series_find(d, ns, wl);
    if (e->status == EVENT_STATUS_TIMEOUT) {
        s->by_rcode[TIMEOUT_SLOT]++;
    } else if (e->status == EVENT_STATUS_UNKNOWN) {
        s->by_rcode[UNKNOWN_SLOT]++;
    } else if (e->status == EVENT_STATUS_FAILED) {
        s->by_rcode[FAILED_SLOT]++; /* no answer: not in the latency histogram */
    } else {
        s->by_rcode[e->u.dns.rcode < RCODE_SLOTS ? e->u.dns.rcode : BEYOND_SLOT]++;
        while (b < DNS_AGENT_LATENCY_BUCKETS &&
               e->u.dns.latency_ns > latency_bounds_us[b] * NSEC_PER_USEC)
            b++;
        s->latency[b]++;
        s->latency_sum_ns += e->u.dns.latency_ns;
    }
    pthread_mutex_unlock(&d->lock);
}

void dns_agent_get_stats(struct dns_agent *d, struct dns_agent_stats *out)
{
    pthread_mutex_lock(&d->lock);
    *out = d->snapshot;
    /* The series are counted under the lock: always current. */
    out->series = d->series_used + (d->other.workload != NULL);
    out->series_folded = d->series_folded;
    pthread_mutex_unlock(&d->lock);
}

void dns_agent_stats_json(struct dns_agent *d, uint64_t kernel_suppressed, struct buf *b)
{
    struct dns_agent_stats s;
    const struct dns_tracker_stats *t = &s.tracker;
    uint64_t parse_errors = 0;

    dns_agent_get_stats(d, &s);
    if (kernel_suppressed > s.suppressed)
        s.suppressed = kernel_suppressed;
    for (int i = 1; i < DNS_PARSE_ERRORS; i++)
        parse_errors += t->parse_errors[i];
    buf_printf(
        b,
        "{\"messages\":%" PRIu64 ",\"suppressed\":%" PRIu64 ",\"truncated\":%" PRIu64
        ",\"tcp_reassembled\":%" PRIu64 ",\"tcp_partial_dropped\":%" PRIu64
        ",\"tcp_not_next\":%" PRIu64 ",\"pending\":%" PRIu64 ",\"queries\":%" PRIu64
        ",\"answered\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"unknown\":%" PRIu64
        ",\"failed\":%" PRIu64 ",\"evicted\":%" PRIu64 ",\"unmatched\":%" PRIu64
        ",\"mismatched\":%" PRIu64 ",\"retries\":%" PRIu64 ",\"collisions\":%" PRIu64
        ",\"no_memory\":%" PRIu64 ",\"parse_errors\":%" PRIu64 ",\"parse_errors_by_reason\":{",
        s.messages, s.suppressed, s.truncated, s.tcp_reassembled, s.tcp_partial_dropped,
        s.tcp_not_next, t->pending, t->queries, t->answered, t->timeouts, t->unknown, t->failed,
        t->evicted, t->unmatched, t->mismatched, t->retries, t->collisions, t->oom, parse_errors);
    for (int i = 1; i < DNS_PARSE_ERRORS; i++)
        buf_printf(b, "%s\"%s\":%" PRIu64, i > 1 ? "," : "", dns_parse_error_name(-i),
                   t->parse_errors[i]);
    buf_printf(b,
               "},\"names\":{\"entries\":%" PRIu64 ",\"added\":%" PRIu64 ",\"updated\":%" PRIu64
               ",\"evicted\":%" PRIu64 ",\"expired\":%" PRIu64 ",\"hits\":%" PRIu64
               ",\"misses\":%" PRIu64 ",\"no_memory\":%" PRIu64 "},\"metric_series\":%" PRIu64
               ",\"metric_series_folded\":%" PRIu64 "}",
               s.names.entries, s.names.added, s.names.updated, s.names.evicted, s.names.expired,
               s.names.hits, s.names.misses, s.names.oom, s.series, s.series_folded);
}

static void series_labels(struct buf *b, const struct series *s)
{
    buf_puts(b, "namespace=\"");
    api_label_escape(b, s->namespace);
    buf_puts(b, "\",workload=\"");
    api_label_escape(b, s->workload);
    buf_putc(b, '"');
}

static void series_metrics(struct buf *b, const struct series *s, bool counts)
{
    char name[DNS_CODE_NAME_LEN];
    uint64_t cum = 0, total = 0;

    if (counts) {
        for (int r = 0; r <= FAILED_SLOT; r++) {
            if (!s->by_rcode[r])
                continue;
            buf_puts(b, "ebpf_agent_dns_queries_total{");
            series_labels(b, s);
            if (r == TIMEOUT_SLOT)
                buf_puts(b, ",status=\"timeout\",rcode=\"\"}");
            else if (r == UNKNOWN_SLOT)
                buf_puts(b, ",status=\"unknown\",rcode=\"\"}");
            else if (r == FAILED_SLOT)
                buf_puts(b, ",status=\"failed\",rcode=\"\"}");
            else if (r == BEYOND_SLOT)
                buf_puts(b, ",status=\"answered\",rcode=\"" OTHER_NAME "\"}");
            else
                buf_printf(b, ",status=\"answered\",rcode=\"%s\"}",
                           dns_rcode_name((uint16_t)r, name, sizeof(name)));
            buf_printf(b, " %" PRIu64 "\n", s->by_rcode[r]);
        }
        return;
    }
    for (int i = 0; i <= DNS_AGENT_LATENCY_BUCKETS; i++)
        total += s->latency[i];
    if (!total)
        return;
    for (int i = 0; i <= DNS_AGENT_LATENCY_BUCKETS; i++) {
        cum += s->latency[i];
        buf_puts(b, "ebpf_agent_dns_latency_seconds_bucket{");
        series_labels(b, s);
        if (i < DNS_AGENT_LATENCY_BUCKETS)
            buf_printf(b, ",le=\"%g\"} %" PRIu64 "\n", (double)latency_bounds_us[i] / 1e6, cum);
        else
            buf_printf(b, ",le=\"+Inf\"} %" PRIu64 "\n", cum);
    }
    buf_puts(b, "ebpf_agent_dns_latency_seconds_sum{");
    series_labels(b, s);
    buf_printf(b, "} %.9f\n", (double)s->latency_sum_ns / 1e9);
    buf_puts(b, "ebpf_agent_dns_latency_seconds_count{");
    series_labels(b, s);
    buf_printf(b, "} %" PRIu64 "\n", total);
}

void dns_agent_metrics(struct dns_agent *d, uint64_t kernel_suppressed, struct buf *b)
{
    struct dns_agent_stats s;

    dns_agent_get_stats(d, &s);
    if (kernel_suppressed > s.suppressed)
        s.suppressed = kernel_suppressed;
    api_metric_header(b, "ebpf_agent_dns_queries_total", "counter",
                      "DNS queries by namespace, workload, status and rcode.");
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->series_cap * 2; i++)
        if (d->series[i].workload)
            series_metrics(b, &d->series[i], true);
    if (d->other.workload)
        series_metrics(b, &d->other, true);
    api_metric_header(b, "ebpf_agent_dns_latency_seconds", "histogram",
                      "DNS query to answer latency by namespace and workload.");
    for (size_t i = 0; i < d->series_cap * 2; i++)
        if (d->series[i].workload)
            series_metrics(b, &d->series[i], false);
    if (d->other.workload)
        series_metrics(b, &d->other, false);
    pthread_mutex_unlock(&d->lock);
    api_metric(b, "ebpf_agent_dns_metric_series", "gauge",
               "(namespace, workload) series of the DNS metrics.", s.series);
    api_metric(b, "ebpf_agent_dns_metric_series_folded_total", "counter",
               "DNS events counted in the workload=\"~other\" series (series cap reached).",
               s.series_folded);
    api_metric(b, "ebpf_agent_dns_messages_total", "counter",
               "DNS messages (queries sent, answers received) read from the kernel.", s.messages);
    api_metric(b, "ebpf_agent_dns_suppressed_total", "counter",
               "DNS messages not captured because of DNS_RATE_LIMIT.", s.suppressed);
    api_metric(b, "ebpf_agent_dns_tcp_not_next_total", "counter",
               "DNS-over-TCP segments skipped: only bytes already taken (retransmitted, "
               "duplicated) or outside the TCP window (forged).",
               s.tcp_not_next);
    api_metric(b, "ebpf_agent_dns_truncated_total", "counter",
               "DNS messages the capture copied only in part (records past the copy are missing).",
               s.truncated);
    api_metric(b, "ebpf_agent_dns_tcp_partial_dropped_total", "counter",
               "DNS-over-TCP messages dropped unfinished: their last bytes never came, or did "
               "not fit.",
               s.tcp_partial_dropped);
    api_metric(b, "ebpf_agent_dns_no_memory_total", "counter",
               "DNS queries or events lost, and names not cached, for want of memory.",
               s.tracker.oom + s.names.oom);
    api_metric(b, "ebpf_agent_dns_pending", "gauge", "DNS queries awaiting their answer.",
               s.tracker.pending);
    api_metric(b, "ebpf_agent_dns_evicted_total", "counter",
               "Pending DNS queries dropped for room (DNS_PENDING_MAX).", s.tracker.evicted);
    api_metric(b, "ebpf_agent_dns_unmatched_total", "counter", "DNS answers with no pending query.",
               s.tracker.unmatched);
    api_metric(b, "ebpf_agent_dns_mismatched_total", "counter",
               "DNS answers under a pending query's ID for another question (not taken).",
               s.tracker.mismatched);
    api_metric(b, "ebpf_agent_dns_collisions_total", "counter",
               "DNS queries not tracked: another question was pending with their socket and ID.",
               s.tracker.collisions);
    api_metric_header(b, "ebpf_agent_dns_parse_errors_total", "counter",
                      "DNS messages that could not be parsed, by reason.");
    for (int i = 1; i < DNS_PARSE_ERRORS; i++)
        api_metric_labelled(b, "ebpf_agent_dns_parse_errors_total", "reason",
                            dns_parse_error_name(-i), s.tracker.parse_errors[i]);
    api_metric(b, "ebpf_agent_dns_names", "gauge", "Addresses in the peer_dns name cache.",
               s.names.entries);
    api_metric(b, "ebpf_agent_dns_names_evicted_total", "counter",
               "peer_dns names dropped for room before their TTL.", s.names.evicted);
}

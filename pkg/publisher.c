/*
 * The agent's batcher and publisher (see publisher.h).
 *
 * The capture thread owns the open batch and encodes straight into it, so
 * an event costs one encode and no copy. Closed batches are handed to the
 * "publisher" thread through a queue under a mutex that is never held across
 * a network call; that thread sleeps on a condition variable while the queue
 * is empty or NATS is unreachable, and the bus wakes it on reconnect.
 *
 * The hand-off is per batch, so it is kept cheap: sent batches go back on a
 * short free list and the capture thread reuses them (buffer and all, still
 * warm in cache) instead of a malloc on one thread and a free on the other,
 * and the capture thread signals the publisher only when it is asleep. A
 * batch that fills while the capture thread drains the ring does not wake it
 * at once: the wake waits for the next publisher_tick() (the capture loop
 * ticks after each drain) or for PUB_WAKE_BATCHES full batches. At high
 * event rates a wake per batch was a futex call and a context switch on both
 * sides every hundred events; this way it is one per drain.
 *
 * Protobuf batches get their metadata (sequence, drop counters, sent_at)
 * appended just before publishing, so the counters are current even for a
 * batch that waited out an outage; the sequence number is fixed when the
 * batch closes, so dropped batches show up as gaps.
 *
 * A batch is closed before it outgrows the server's max_payload, but that is
 * learned from the server: batches made before (at the start, or queued in an
 * outage before the first connection) may be larger. One the server refuses
 * for its size is split in two, the second half numbered anew and queued
 * last, until each part fits: only an event larger than max_payload on its
 * own is dropped.
 */
#include "publisher.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "clock.h"
#include "errmsg.h"
#include "event_json.h"
#include "event_pb.h"

#define PUB_DRAIN_ON_FREE_NS  (2000000000ull)
#define PUB_RETRY_WAIT_MS     100 /* after a failed publish */
#define PUB_SERVER_FLUSH_MS   1000
#define PUB_DEFAULT_MAXPAY    (1u << 20)  /* nats-server's default max_payload */
#define PUB_EVENT_HEADROOM    (16u << 10) /* room for one more event and the metadata */
#define PUB_INITIAL_BUF_BYTES (64u << 10)
#define PUB_FREE_BATCHES      4             /* sent batches kept for reuse */
#define PUB_REUSE_MAX_BYTES   (256u << 10)  /* larger buffers (rare) go back to malloc */
#define PUB_WAKE_BATCHES      8             /* full batches that wake the publisher before a tick */
#define PUB_CONFIRM_NS        (50000000ull) /* longest a sent batch waits for its confirmation */
#define PUB_CONFIRM_BYTES     (4u << 20)    /* most memory the batches waiting for it may hold */
#define PUB_PROBE_MS          1000 /* while no one listens: how often the first batch is tried */
#define PUB_UNHEARD_ROOT      "_EBPF_UNHEARD" /* reply subjects: <root>.<instance>.<sequence> */
#define PUB_DENIED_WAIT_MS    100 /* longest wait for nats.c to report a refusal it recorded */

struct batch {
    struct batch *next;
    struct buf body;   /* pb: `events` fields; json: one line per event */
    size_t events_len; /* body.len before the metadata was appended */
    uint32_t n_events;
    uint64_t sequence;
    uint64_t opened_ns; /* monotonic time of its first event (or deletion) */
    /* Sent in the BUS_HDR_PODS_GONE header: PEERS_GONE_MAX_PODS, allocated with the first
     * (deletions are rare; every queued batch paying for room would loosen the queue's bound). */
    struct peers_pod *gone;
    size_t n_gone;
    char *present;          /* BUS_HDR_PODS_PRESENT's value (publisher_set_present()), owned */
    bool heartbeat;         /* sent even empty (publisher_tick()) */
    bool unheard;           /* sent, and the server said no one subscribes to the subject */
    uint64_t denied_before; /* bus_publish_denied() when it was last published */
    bool came_back;         /* unheard at least once (counted in batches_unheard) */
};

struct publisher {
    struct bus *bus;
    struct publisher_config cfg;
    char *node, *subject, *pod_name, *pod_namespace, *log_prefix; /* owned copies */
    char instance[PUBLISHER_INSTANCE_LEN + 1];
    uint64_t started_ns; /* when the instance id was made, ns since the epoch */
    const char *content_type;

    /* Capture thread only. */
    struct batch *cur;
    struct batch *spare;       /* taken from the free list when a batch closes */
    uint64_t sequence;         /* taken under mu, by the publisher thread too (a split): atomic */
    struct event_pb_pods pods; /* the open batch's pod table (protobuf) */

    /* Shared: guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* publisher thread: work, connection change, stop */
    pthread_cond_t drained; /* flush waiters: queue empty and nothing in flight */
    struct batch *head, *tail;
    struct batch *inflight;
    /* Published, waiting for confirm_sent() to learn whether anyone heard them; oldest first. */
    struct batch *sent_head, *sent_tail;
    uint64_t sent_bytes, sent_mem; /* their events' bytes (as queue_bytes), their buffers' */
    uint64_t sent_oldest_ns;
    uint64_t unheard_done;      /* replies on_unheard() has handled */
    bool no_listener;           /* a batch came back unheard, and no later one was heard */
    bool refused;               /* ... and the server refused it (permissions), not unheard */
    uint64_t denied_seen;       /* publisher thread: bus_publish_denied() at the last confirm */
    bool denied_stale;          /* publisher thread: the refusal nats.c last recorded is old */
    struct batch *free_batches; /* sent, ready for reuse */
    unsigned n_free;
    bool publisher_idle;    /* waiting on wake for work: the only time a new batch signals */
    bool wake_deferred;     /* capture thread: a full batch waits for a tick to wake it */
    unsigned flush_waiters; /* waiting on drained */
    bool stopping;
    pthread_t thread;
    bool thread_started;

    /* Counters (relaxed atomics). */
    uint64_t batches_sent, events_sent, bytes_sent;
    uint64_t batches_dropped, events_dropped, encode_failed;
    uint64_t pods_gone_sent, pods_gone_dropped;
    uint64_t queue_batches, queue_bytes;
    uint64_t publish_errors;
    uint64_t kernel_drops, kernel_missed;
    uint64_t max_payload;       /* learned from the server */
    uint64_t batches_too_large; /* a single event over the server's max_payload: dropped */
    uint64_t heartbeats;
    uint64_t batches_unheard; /* came back unheard, queued again */
    uint64_t last_queued_ns;  /* monotonic: the last batch queued (capture thread only) */

    /* Publisher thread: where the server says a batch reached no subscriber. */
    natsSubscription *unheard_sub;
    uint64_t unheard_gen; /* bus_generation() it was made on */
    char reply_prefix[sizeof(PUB_UNHEARD_ROOT) + PUBLISHER_INSTANCE_LEN + 2];
};

static void add(uint64_t *c, uint64_t v)
{
    __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* "batch%s" in a log line: "" for one, "es" for any other count. */
static const char *es(uint64_t n)
{
    return n == 1 ? "" : "es";
}

/* Events, deletions or the pod list: the batch is no heartbeat. */
static bool batch_carries(const struct batch *b)
{
    return b->n_events || b->n_gone || b->present;
}

static void batch_free(struct batch *b)
{
    if (b) {
        buf_free(&b->body);
        free(b->gone);
        free(b->present);
        free(b);
    }
}

/*
 * A batch done with (sent or dropped), mu held: kept for reuse when there is
 * room, else returned for the caller to free after unlocking.
 */
static struct batch *batch_recycle(struct publisher *p, struct batch *b)
{
    if (p->n_free >= PUB_FREE_BATCHES || b->body.oom || b->body.cap > PUB_REUSE_MAX_BYTES)
        return b;
    buf_reset(&b->body);
    free(b->present);
    b->present = NULL;
    b->next = p->free_batches;
    p->free_batches = b;
    p->n_free++;
    return NULL;
}

/* ---- the queue (mu held) ---- */

static void queue_drop_oldest(struct publisher *p)
{
    struct batch *b = p->head;
    p->head = b->next;
    if (!p->head)
        p->tail = NULL;
    add(&p->batches_dropped, 1);
    add(&p->events_dropped, b->n_events);
    __atomic_fetch_sub(&p->queue_batches, 1, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&p->queue_bytes, b->events_len, __ATOMIC_RELAXED);
    batch_free(batch_recycle(p, b));
}

static void queue_push(struct publisher *p, struct batch *b)
{
    /* The in-flight batch counts against the bound but cannot be dropped. */
    while (p->head && get(&p->queue_bytes) + b->events_len > p->cfg.outage_buffer_bytes)
        queue_drop_oldest(p);
    b->next = NULL;
    if (p->tail)
        p->tail->next = b;
    else
        p->head = b;
    p->tail = b;
    add(&p->queue_batches, 1);
    add(&p->queue_bytes, b->events_len);
}

/* ---- capture thread ---- */

/* Wakes the publisher for the full batches whose wake was deferred. */
static void wake_deferred(struct publisher *p)
{
    /* Only this thread sets or clears it; the lock is for the publisher's idle flag. */
    if (!p->wake_deferred)
        return;
    pthread_mutex_lock(&p->mu);
    if (p->wake_deferred && p->publisher_idle)
        pthread_cond_signal(&p->wake);
    p->wake_deferred = false;
    pthread_mutex_unlock(&p->mu);
}

/*
 * Closes the open batch and queues it; defer: a full one (see the top of
 * this file). Without defer, full batches queued before are woken for too,
 * also when no batch is open.
 */
static void close_batch_queue(struct publisher *p, bool defer)
{
    struct batch *b = p->cur;
    p->cur = NULL;
    if (!b) {
        if (!defer)
            wake_deferred(p);
        return;
    }
    if (b->body.oom || (!batch_carries(b) && !b->heartbeat)) {
        /* Out of memory part-way: nothing of it can be sent. */
        add(&p->events_dropped, b->n_events);
        batch_free(b);
        if (!defer)
            wake_deferred(p);
        return;
    }
    p->last_queued_ns = clock_monotonic_ns();
    if (!batch_carries(b))
        add(&p->heartbeats, 1);
    b->events_len = b->body.len;
    pthread_mutex_lock(&p->mu);
    /* Numbered as queued, under mu as a split's second half is: the queue is in their order. */
    b->sequence = __atomic_add_fetch(&p->sequence, 1, __ATOMIC_RELAXED);
    queue_push(p, b);
    /* Awake, the publisher finds it on its next look at the queue. */
    if (p->publisher_idle && (!defer || get(&p->queue_batches) >= PUB_WAKE_BATCHES)) {
        pthread_cond_signal(&p->wake);
        p->wake_deferred = false;
    } else if (p->publisher_idle) {
        p->wake_deferred = true;
    }
    if (!p->spare && p->free_batches) {
        p->spare = p->free_batches;
        p->free_batches = p->spare->next;
        p->n_free--;
    }
    pthread_mutex_unlock(&p->mu);
}

static void close_batch(struct publisher *p)
{
    close_batch_queue(p, false);
}

/* The open batch, opened now when there is none; NULL without memory. */
static struct batch *batch_open(struct publisher *p)
{
    struct batch *b = p->cur;
    if (b)
        return b;
    if ((b = p->spare)) {
        /* Emptied by batch_recycle; its buffer is already the right size. */
        p->spare = NULL;
        b->next = NULL;
        b->events_len = 0;
        b->n_events = 0;
        b->sequence = 0;
        b->n_gone = 0;
        b->heartbeat = false;
        b->came_back = false;
    } else if ((b = calloc(1, sizeof(*b)))) {
        buf_init(&b->body);
        /* Most batches fit: a guess at ~200 bytes an event saves the doubling reallocs. */
        size_t guess = (size_t)p->cfg.batch_size * 200;
        buf_reserve(&b->body, guess < PUB_INITIAL_BUF_BYTES ? guess : PUB_INITIAL_BUF_BYTES);
    } else {
        return NULL;
    }
    b->opened_ns = clock_monotonic_ns();
    p->cur = b;
    event_pb_pods_reset(&p->pods);
    return b;
}

size_t publisher_gone_room(const struct publisher *p)
{
    return p->cur ? PEERS_GONE_MAX_PODS - p->cur->n_gone : PEERS_GONE_MAX_PODS;
}

size_t publisher_add_gone(struct publisher *p, const struct peers_pod *pods, size_t n)
{
    struct batch *b = n ? batch_open(p) : NULL;
    size_t taken = 0;

    if (b && !b->gone && !(b->gone = calloc(PEERS_GONE_MAX_PODS, sizeof(*b->gone))))
        b = NULL;
    for (; b && taken < n && b->n_gone < PEERS_GONE_MAX_PODS; taken++) {
        struct peers_pod *g = &b->gone[b->n_gone++];
        *g = pods[taken];
        if (!g->node)
            g->node = p->node;
    }
    add(&p->pods_gone_sent, taken);
    if (n && !b)
        add(&p->pods_gone_dropped, n); /* no memory for a batch */
    return taken;
}

bool publisher_set_present(struct publisher *p, const char *const *uids, size_t n, uint64_t at_ns)
{
    struct batch *b = batch_open(p);
    struct buf v;

    if (!b)
        return false;
    buf_init(&v);
    peers_present_write(&v, at_ns, uids, n);
    buf_putc(&v, '\0');
    free(b->present);
    b->present = v.oom ? NULL : strdup(v.data);
    buf_free(&v);
    return b->present != NULL;
}

int publisher_add(struct publisher *p, const struct event *e)
{
    struct batch *b = batch_open(p);
    if (!b) {
        add(&p->events_dropped, 1);
        add(&p->encode_failed, 1);
        return -ENOMEM;
    }

    size_t before = b->body.len;
    int rc = 0;
    if (p->cfg.encoding == CONFIG_ENCODING_JSON) {
        event_json_write(&b->body, e);
        buf_putc(&b->body, '\n');
        rc = b->body.oom ? -ENOMEM : 0;
    } else {
        rc = event_batch_append_event_pods(&b->body, e, p->node, &p->pods);
    }
    if (rc) {
        if (!b->body.oom)
            b->body.len = before;
        add(&p->events_dropped, 1);
        add(&p->encode_failed, 1);
        if (b->body.oom)
            close_batch(p);
        return rc;
    }
    b->n_events++;

    uint64_t limit = get(&p->max_payload);
    if (limit > BUS_MAX_MESSAGE_BYTES)
        limit = BUS_MAX_MESSAGE_BYTES;
    if (b->n_events >= p->cfg.batch_size || b->body.len + PUB_EVENT_HEADROOM > limit)
        close_batch_queue(p, true);
    return 0;
}

/*
 * With no batch open: after heartbeat_ns without a batch queued, an empty one
 * (its sequence number, the loss counters), so an idle node still reports in
 * and the aggregators tell it from a dead one. Returns the ns until the next
 * deadline.
 */
static uint64_t heartbeat_tick(struct publisher *p, uint64_t now)
{
    uint64_t every = p->cfg.heartbeat_ns, flush = p->cfg.flush_interval_ns;
    if (!every)
        return flush;
    uint64_t due = p->last_queued_ns + every;
    if (now < due)
        return due - now < flush ? due - now : flush;
    struct batch *b = batch_open(p);
    if (b) {
        b->heartbeat = true;
        close_batch(p);
    } else {
        p->last_queued_ns = now; /* no memory: try again after another interval */
    }
    return every < flush ? every : flush;
}

uint64_t publisher_tick(struct publisher *p, uint64_t now)
{
    struct batch *b = p->cur;
    wake_deferred(p);
    if (!b)
        return heartbeat_tick(p, now);
    /* An open batch is sent when its flush interval is up, or sooner when a heartbeat is due:
     * a node whose events trickle in under a long FLUSH_INTERVAL still reports in. */
    uint64_t due = b->opened_ns + p->cfg.flush_interval_ns;
    if (p->cfg.heartbeat_ns && p->last_queued_ns + p->cfg.heartbeat_ns < due)
        due = p->last_queued_ns + p->cfg.heartbeat_ns;
    if (now >= due) {
        close_batch(p);
        return p->cfg.heartbeat_ns && p->cfg.heartbeat_ns < p->cfg.flush_interval_ns
                   ? p->cfg.heartbeat_ns
                   : p->cfg.flush_interval_ns;
    }
    return due - now;
}

void publisher_set_kernel_losses(struct publisher *p, uint64_t drops, uint64_t missed)
{
    __atomic_store_n(&p->kernel_drops, drops, __ATOMIC_RELAXED);
    __atomic_store_n(&p->kernel_missed, missed, __ATOMIC_RELAXED);
}

int publisher_flush(struct publisher *p, uint64_t timeout_ns)
{
    close_batch(p);
    struct timespec until = clock_deadline_ms(timeout_ns / 1000000 + (timeout_ns % 1000000 != 0));
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    p->flush_waiters++;
    pthread_cond_signal(&p->wake); /* a publisher settling after an outage sends now */
    while ((p->head || p->inflight || p->sent_head) && rc == 0)
        rc = pthread_cond_timedwait(&p->drained, &p->mu, &until);
    p->flush_waiters--;
    bool empty = !p->head && !p->inflight && !p->sent_head;
    pthread_mutex_unlock(&p->mu);
    if (!empty)
        return -ETIMEDOUT;
    /* Handed to nats.c is not yet at the server: push its buffer out. */
    if (bus_connected(p->bus) &&
        natsConnection_FlushTimeout(bus_conn(p->bus), PUB_SERVER_FLUSH_MS) != NATS_OK)
        return -ETIMEDOUT;
    return 0;
}

/*
 * Publisher thread, b in flight: moves the second half of b's events into a
 * new batch, to be numbered and queued by the caller. Protobuf batches are
 * decoded and encoded again, as events refer to the batch's own pod table.
 * Returns the new batch, or NULL when b holds a single event, or on failure
 * (b unchanged).
 */
static struct batch *batch_split(struct publisher *p, struct batch *b)
{
    if (b->n_events < 2)
        return NULL;
    struct batch *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    buf_init(&c->body);

    if (p->cfg.encoding == CONFIG_ENCODING_JSON) {
        /* One event per line: cut after the first half's lines. */
        uint32_t keep = b->n_events / 2, lines = 0;
        size_t cut = 0;
        while (lines < keep && cut < b->events_len) {
            const char *nl = memchr(b->body.data + cut, '\n', b->events_len - cut);
            if (!nl)
                break;
            cut = (size_t)(nl - b->body.data) + 1;
            lines++;
        }
        if (lines != keep || cut >= b->events_len)
            goto fail;
        buf_append(&c->body, b->body.data + cut, b->events_len - cut);
        if (c->body.oom)
            goto fail;
        b->body.len = cut;
        b->body.data[cut] = '\0';
        c->n_events = b->n_events - keep;
        b->n_events = keep;
    } else {
        struct event_batch_meta meta;
        struct event *events = NULL;
        size_t n = 0;
        struct buf first;
        struct event_pb_pods *pods = malloc(sizeof(*pods));
        if (!pods)
            goto fail;
        /* As refused: the events and the metadata publish_batch() put after them. */
        if (event_batch_decode((const uint8_t *)b->body.data, b->body.len, &meta, &events, &n, NULL,
                               0) < 0 ||
            n != b->n_events) {
            for (size_t i = 0; i < n; i++)
                event_clear(&events[i]);
            free(events);
            free(pods);
            goto fail;
        }
        size_t keep = n / 2;
        int rc = 0;
        buf_init(&first);
        event_pb_pods_reset(pods);
        for (size_t i = 0; i < keep && rc == 0; i++)
            rc = event_batch_append_event_pods(&first, &events[i], p->node, pods);
        event_pb_pods_reset(pods);
        for (size_t i = keep; i < n && rc == 0; i++)
            rc = event_batch_append_event_pods(&c->body, &events[i], p->node, pods);
        for (size_t i = 0; i < n; i++)
            event_clear(&events[i]);
        free(events);
        free(pods);
        if (rc || first.oom || c->body.oom) {
            buf_free(&first);
            goto fail;
        }
        buf_free(&b->body);
        b->body = first;
        c->n_events = (uint32_t)(n - keep);
        b->n_events = (uint32_t)keep;
    }
    c->opened_ns = b->opened_ns;
    c->events_len = c->body.len;
    b->events_len = b->body.len;
    return c;
fail:
    batch_free(c);
    return NULL;
}

/* ---- publisher thread ---- */

static natsStatus set_header_u64(natsMsg *m, const char *key, uint64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%" PRIu64, v);
    return natsMsgHeader_Set(m, key, s);
}

static natsStatus publish_batch(struct publisher *p, struct batch *b)
{
    uint64_t kdrops = get(&p->kernel_drops), adrops = get(&p->events_dropped);
    uint64_t kmissed = get(&p->kernel_missed), sent_at = clock_realtime_ns();
    if (p->cfg.encoding == CONFIG_ENCODING_PROTOBUF) {
        struct event_batch_meta meta = {
            .node = p->node,
            .agent_instance = p->instance,
            .sequence = b->sequence,
            .kernel_drops = kdrops,
            .kernel_missed = kmissed,
            .agent_drops = adrops,
            .sent_at_ns = sent_at,
            .instance_started_ns = p->started_ns,
            .pod_name = p->pod_name,
            .pod_namespace = p->pod_namespace,
        };
        b->body.len = b->events_len; /* a retry replaces the old metadata */
        if (event_batch_append_meta(&b->body, &meta) < 0)
            return NATS_NO_MEMORY;
    }

    /* With a reply subject, the server answers "no responders" when no one subscribes. */
    char reply[sizeof(p->reply_prefix) + 24];
    if (p->unheard_sub)
        snprintf(reply, sizeof(reply), "%s%" PRIu64, p->reply_prefix, b->sequence);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, p->subject, p->unheard_sub ? reply : NULL, b->body.data,
                                  (int)b->body.len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, BUS_HDR_CONTENT_TYPE, p->content_type);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, BUS_HDR_NODE, p->node);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, BUS_HDR_INSTANCE, p->instance);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_SEQUENCE, b->sequence);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_EVENTS, b->n_events);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_KERNEL_DROPS, kdrops);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_AGENT_DROPS, adrops);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_KERNEL_MISSED, kmissed);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_INSTANCE_STARTED, p->started_ns);
    if (s == NATS_OK)
        s = set_header_u64(m, BUS_HDR_SENT_AT, sent_at);
    if (s == NATS_OK && b->n_gone) {
        struct buf gone;
        buf_init(&gone);
        peers_gone_write(&gone, b->gone, b->n_gone);
        buf_putc(&gone, '\0');
        s = gone.oom ? NATS_NO_MEMORY : natsMsgHeader_Set(m, BUS_HDR_PODS_GONE, gone.data);
        buf_free(&gone);
    }
    if (s == NATS_OK && b->present)
        s = natsMsgHeader_Set(m, BUS_HDR_PODS_PRESENT, b->present);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(bus_conn(p->bus), m);
    natsMsg_Destroy(m);
    return s;
}

/*
 * Knowing who hears a batch. Core NATS drops a message nobody subscribes to,
 * silently: a lone aggregator restarting, or every replica gone, would lose
 * what the agent sends meanwhile, and no one could count it. So each batch
 * goes with a reply subject of this instance's (PUB_UNHEARD_ROOT.<instance>.
 * <sequence>), to which the server sends a "no responders" status when the
 * batch reached no subscriber; the aggregators never answer. A published
 * batch is kept (sent list) until confirm_sent() knows: after a round trip to
 * the server (a flush) every such status for the batches before it has
 * arrived, and on_unheard() has marked them. The unheard ones go back to the
 * front of the queue; the publisher then holds the queue as in an outage and
 * tries its first batch every PUB_PROBE_MS until one is heard.
 */
static void on_unheard(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct publisher *p = closure;
    const char *subj = msg ? natsMsg_GetSubject(msg) : NULL;
    size_t plen = strlen(p->reply_prefix);
    uint64_t seq = 0;
    bool valid = subj && natsMsg_IsNoResponders(msg) && strncmp(subj, p->reply_prefix, plen) == 0;

    for (const char *c = valid ? subj + plen : ""; *c; c++) {
        if (*c < '0' || *c > '9' || seq > UINT64_MAX / 10 - 1) {
            valid = false;
            break;
        }
        seq = seq * 10 + (uint64_t)(*c - '0');
    }
    pthread_mutex_lock(&p->mu);
    for (struct batch *b = p->sent_head; valid && b; b = b->next)
        if (b->sequence == seq)
            b->unheard = true;
    /* The status may come back before the publisher has put its batch on the sent list. */
    if (valid && p->inflight && p->inflight->sequence == seq)
        p->inflight->unheard = true;
    p->unheard_done++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    natsMsg_Destroy(msg);
}

/*
 * Ends the reply subscription. nats.c 3.4 (Debian 12) may crash its reader
 * when a subscription is destroyed while a message for it is coming in
 * (nats.c #637, fixed in 3.6): drained first, the server has confirmed the
 * unsubscription and every status before it has been handled, so nothing is
 * in flight for it, and on_unheard() runs no more. A connection closed for
 * good delivers nothing: then it is destroyed at once.
 */
static void unheard_end(natsSubscription *sub)
{
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 2000);
    natsSubscription_Destroy(sub);
}

/* Subscribes to this instance's reply subjects on the current connection (mu not held). */
static void unheard_subscribe(struct publisher *p)
{
    uint64_t gen = bus_generation(p->bus);
    if (p->unheard_sub && p->unheard_gen == gen)
        return;
    if (p->unheard_sub) { /* made on a connection since replaced: it hears nothing */
        unheard_end(p->unheard_sub);
        p->unheard_sub = NULL;
    }
    char subj[sizeof(p->reply_prefix) + 1];
    snprintf(subj, sizeof(subj), "%s*", p->reply_prefix);
    natsSubscription *sub = NULL;
    if (natsConnection_Subscribe(&sub, bus_conn(p->bus), subj, on_unheard, p) != NATS_OK)
        return; /* tried again before the next batch */
    /* Statuses are few and small; never drop one as a slow consumer. */
    natsSubscription_SetPendingLimits(sub, -1, -1);
    pthread_mutex_lock(&p->mu);
    p->unheard_sub = sub;
    p->unheard_gen = gen;
    p->unheard_done = 0;
    pthread_mutex_unlock(&p->mu);
}

/* The sent list's batches from first to last (inclusive) leave it (mu held). */
static struct batch *sent_take(struct publisher *p, struct batch *last)
{
    struct batch *first = p->sent_head;
    p->sent_head = last->next;
    if (!p->sent_head)
        p->sent_tail = NULL;
    last->next = NULL;
    for (struct batch *b = first; b; b = b->next) {
        p->sent_bytes -= b->events_len;
        p->sent_mem -= b->body.cap;
    }
    p->sent_oldest_ns = clock_monotonic_ns();
    return first;
}

/*
 * How many publishes the server has refused, once nats.c has reported every
 * refusal of a message sent before the round trip just made (mu held, released
 * while waiting). One it recorded (bus_publish_denied_last()) but has not yet
 * reported is waited for, up to PUB_DENIED_WAIT_MS; one that does not come was
 * an old refusal (permissions changed since), not waited for again until the
 * server refuses another.
 */
static uint64_t denied_settled(struct publisher *p)
{
    uint64_t d = bus_publish_denied(p->bus);
    if (d == p->denied_seen && !p->denied_stale && bus_publish_denied_last(p->bus)) {
        for (int i = 0; i < PUB_DENIED_WAIT_MS / 5 && d == p->denied_seen; i++) {
            struct timespec step = clock_deadline_ms(5);
            pthread_cond_timedwait(&p->wake, &p->mu, &step);
            d = bus_publish_denied(p->bus);
        }
        p->denied_stale = d == p->denied_seen;
    } else if (d != p->denied_seen) {
        p->denied_stale = false;
    }
    p->denied_seen = d;
    return d;
}

/*
 * Learns which sent batches were heard (see on_unheard()); mu held, released
 * during the round trip. The heard ones are done; the unheard go back to the
 * front of the queue, in order, and the publisher holds it (no_listener).
 * Without an answer from the server (an outage), they count as heard: the
 * connection took them, as it always did.
 */
static void confirm_sent(struct publisher *p)
{
    struct batch *last = p->sent_tail;
    if (!last)
        return;
    natsSubscription *sub = p->unheard_sub;
    pthread_mutex_unlock(&p->mu);
    natsStatus s = natsConnection_FlushTimeout(bus_conn(p->bus), PUB_SERVER_FLUSH_MS);
    int pending = 0;
    int64_t delivered = 0;
    if (s == NATS_OK && sub &&
        natsSubscription_GetStats(sub, &pending, NULL, NULL, NULL, &delivered, NULL) != NATS_OK)
        s = NATS_ERR;
    pthread_mutex_lock(&p->mu);
    /* Every status sent before the server's answer is in the subscription: wait until
     * on_unheard() has seen each (delivered counts the one it is in). */
    struct timespec until = clock_deadline_ms(PUB_SERVER_FLUSH_MS);
    while (s == NATS_OK && sub && p->unheard_done < (uint64_t)delivered + (uint64_t)pending)
        if (pthread_cond_timedwait(&p->wake, &p->mu, &until) == ETIMEDOUT)
            s = NATS_TIMEOUT;
    /* A slow server, or this process starved: what the server said is not known yet. The
     * batches stay, and the next round trip tells. Only a connection lost with them makes
     * them count as heard, as any batch the connection took always did. */
    if (s != NATS_OK && bus_connected(p->bus))
        return;
    uint64_t denied = s == NATS_OK ? denied_settled(p) : 0;

    struct batch *first = sent_take(p, last), *back = NULL, **back_end = &back, *done = NULL;
    bool heard = false, refused = false;
    while (first) {
        struct batch *b = first;
        first = b->next;
        b->next = NULL;
        /* Refused by the server (a subject the user may not publish to): heard by no one. */
        if (s == NATS_OK && denied > b->denied_before)
            b->unheard = refused = true;
        if (s == NATS_OK && b->unheard) {
            b->unheard = false;
            if (!b->came_back) /* counted once, however often it is tried again */
                add(&p->batches_unheard, 1);
            b->came_back = true;
            *back_end = b;
            back_end = &b->next;
            continue;
        }
        heard = true;
        add(&p->batches_sent, 1);
        add(&p->events_sent, b->n_events);
        add(&p->bytes_sent, b->body.len);
        __atomic_fetch_sub(&p->queue_batches, 1, __ATOMIC_RELAXED);
        __atomic_fetch_sub(&p->queue_bytes, b->events_len, __ATOMIC_RELAXED);
        struct batch *f = batch_recycle(p, b);
        if (f) {
            f->next = done;
            done = f;
        }
    }
    if (back) {
        *back_end = p->head;
        p->head = back;
        if (!p->tail)
            for (p->tail = back; p->tail->next; p->tail = p->tail->next)
                ;
        __atomic_store_n(&p->no_listener, true, __ATOMIC_RELAXED);
        __atomic_store_n(&p->refused, refused, __ATOMIC_RELAXED);
    } else if (heard) {
        __atomic_store_n(&p->no_listener, false, __ATOMIC_RELAXED);
    }
    if (done) {
        pthread_mutex_unlock(&p->mu);
        while (done) {
            struct batch *b = done;
            done = b->next;
            batch_free(b);
        }
        pthread_mutex_lock(&p->mu);
    }
}

static void log_outage(struct publisher *p, bool *logged)
{
    if (!p->log_prefix || *logged)
        return;
    struct bus_status st;
    bus_get_status(p->bus, &st);
    uint64_t n = p->cfg.outage_buffer_bytes;
    const char *unit = "bytes";
    if (n && n % (1u << 20) == 0) {
        n >>= 20;
        unit = "MiB";
    } else if (n && n % 1024 == 0) {
        n >>= 10;
        unit = "KiB";
    }
    fprintf(stderr, "%s: NATS unreachable (%s), buffering up to %" PRIu64 " %s (OUTAGE_BUFFER)\n",
            p->log_prefix, st.last_error[0] ? st.last_error : "connection lost", n, unit);
    *logged = true;
}

/* Says when the batches stop being heard, and when they are again (mu not held). */
static void log_listener(struct publisher *p)
{
    struct bus_status st;
    if (__atomic_load_n(&p->no_listener, __ATOMIC_RELAXED) &&
        __atomic_load_n(&p->refused, __ATOMIC_RELAXED)) {
        bus_get_status(p->bus, &st);
        fprintf(stderr,
                "%s: NATS refuses the batches published to %s (%s: check SUBJECT_PREFIX and "
                "the user's publish permissions): holding batches, up to OUTAGE_BUFFER, and "
                "trying again every %d ms\n",
                p->log_prefix, p->subject, st.last_error, PUB_PROBE_MS);
    } else if (__atomic_load_n(&p->no_listener, __ATOMIC_RELAXED))
        fprintf(stderr,
                "%s: no one subscribes to %s (no aggregator listening): holding batches, up to "
                "OUTAGE_BUFFER, and trying again every %d ms\n",
                p->log_prefix, p->subject, PUB_PROBE_MS);
    else
        fprintf(stderr,
                "%s: %s has a subscriber now, sending the %" PRIu64 " batch%s still queued\n",
                p->log_prefix, p->subject, get(&p->queue_batches), es(get(&p->queue_batches)));
}

/*
 * Core NATS keeps nothing for a subject nobody subscribes to. After an outage
 * the aggregators reconnect as this agent did, each at its own moment within
 * a retry period: batches sent at once would go to a server that has not yet
 * heard their subscriptions again, and be lost. So nothing is sent until
 * every client has had time to come back (BUS_SETTLE_MS; less when stopping,
 * flushing or disconnected again); the batches wait in the queue meanwhile.
 */
static void settle_after_outage(struct publisher *p)
{
    struct timespec until = clock_deadline_ms(BUS_SETTLE_MS);

    while (!p->stopping && !p->flush_waiters && bus_connected(p->bus) &&
           pthread_cond_timedwait(&p->wake, &p->mu, &until) != ETIMEDOUT)
        ;
}

static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    bool outage_logged = false, outage = false;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        bool connected = bus_connected(p->bus);
        if (p->stopping)
            break;
        if (!connected)
            outage = true;
        if (connected && outage) {
            outage = false;
            settle_after_outage(p);
            continue;
        }
        if (!connected) {
            if (p->log_prefix && !outage_logged) {
                pthread_mutex_unlock(&p->mu);
                log_outage(p, &outage_logged);
                pthread_mutex_lock(&p->mu);
                continue;
            }
            pthread_cond_wait(&p->wake, &p->mu);
            continue;
        }
        if (outage_logged) {
            pthread_mutex_unlock(&p->mu);
            fprintf(stderr, "%s: NATS connection restored, %" PRIu64 " batch%s queued%s\n",
                    p->log_prefix, get(&p->queue_batches), es(get(&p->queue_batches)),
                    __atomic_load_n(&p->no_listener, __ATOMIC_RELAXED)
                        ? " (held while no one subscribes)"
                        : "");
            outage_logged = false;
            pthread_mutex_lock(&p->mu);
            continue;
        }
        if (p->unheard_gen != bus_generation(p->bus) || !p->unheard_sub) {
            pthread_mutex_unlock(&p->mu);
            unheard_subscribe(p);
            pthread_mutex_lock(&p->mu);
        }
        if (p->sent_head &&
            (!p->head || p->no_listener || p->flush_waiters || p->sent_mem >= PUB_CONFIRM_BYTES ||
             p->sent_bytes >= p->cfg.outage_buffer_bytes / 4 ||
             clock_monotonic_ns() - p->sent_oldest_ns >= PUB_CONFIRM_NS)) {
            bool was_heard = !p->no_listener;
            confirm_sent(p);
            if (p->log_prefix && was_heard != !p->no_listener) {
                pthread_mutex_unlock(&p->mu);
                log_listener(p);
                pthread_mutex_lock(&p->mu);
            }
            if (!p->head && !p->sent_head && p->flush_waiters)
                pthread_cond_broadcast(&p->drained);
            continue;
        }
        if (p->no_listener && p->head && !p->stopping) {
            /* No one heard the last batch: try the first again now and then. */
            struct timespec until = clock_deadline_ms(PUB_PROBE_MS);
            int rc = 0;
            while (!p->stopping && bus_connected(p->bus) && rc != ETIMEDOUT)
                rc = pthread_cond_timedwait(&p->wake, &p->mu, &until);
            if (rc != ETIMEDOUT)
                continue;
        }
        if (!p->head) {
            p->publisher_idle = true;
            pthread_cond_wait(&p->wake, &p->mu);
            p->publisher_idle = false;
            continue;
        }

        struct batch *b = p->head;
        p->head = b->next;
        if (!p->head)
            p->tail = NULL;
        b->unheard = false;
        p->inflight = b;
        pthread_mutex_unlock(&p->mu);

        int64_t maxpay = natsConnection_GetMaxPayload(bus_conn(p->bus));
        if (maxpay > 0)
            __atomic_store_n(&p->max_payload, (uint64_t)maxpay, __ATOMIC_RELAXED);
        b->denied_before = bus_publish_denied(p->bus);
        natsStatus s = publish_batch(p, b);
        uint64_t len_before = b->events_len;
        struct batch *half = s == NATS_MAX_PAYLOAD ? batch_split(p, b) : NULL;

        struct batch *done = NULL;
        pthread_mutex_lock(&p->mu);
        p->inflight = NULL;
        if (s == NATS_OK) {
            /* Done once confirm_sent() knows it was heard. */
            b->next = NULL;
            if (p->sent_tail)
                p->sent_tail->next = b;
            else
                p->sent_head = b, p->sent_oldest_ns = clock_monotonic_ns();
            p->sent_tail = b;
            p->sent_bytes += b->events_len;
            p->sent_mem += b->body.cap;
        } else if (half) {
            /*
             * The first half first in line again, the second numbered anew and queued last,
             * so batches still go out in the order of their numbers (a gap in them is a loss
             * to whoever counts: the aggregators, a tail). Each is split again if need be.
             */
            add(&p->publish_errors, 1);
            __atomic_fetch_sub(&p->queue_bytes, len_before, __ATOMIC_RELAXED);
            add(&p->queue_bytes, b->events_len);
            b->next = p->head;
            p->head = b;
            if (!p->tail)
                p->tail = b;
            half->sequence = __atomic_add_fetch(&p->sequence, 1, __ATOMIC_RELAXED);
            queue_push(p, half);
        } else if (s == NATS_MAX_PAYLOAD) {
            /* One event the server will never take; retrying would wedge the queue. */
            __atomic_fetch_sub(&p->queue_batches, 1, __ATOMIC_RELAXED);
            __atomic_fetch_sub(&p->queue_bytes, b->events_len, __ATOMIC_RELAXED);
            add(&p->publish_errors, 1);
            add(&p->batches_dropped, 1);
            add(&p->batches_too_large, 1);
            add(&p->events_dropped, b->n_events);
            done = batch_recycle(p, b);
        } else {
            /* Keep it first in line and retry shortly (or on reconnect). */
            add(&p->publish_errors, 1);
            b->next = p->head;
            p->head = b;
            if (!p->tail)
                p->tail = b;
            struct timespec until = clock_deadline_ms(PUB_RETRY_WAIT_MS);
            if (!p->stopping)
                pthread_cond_timedwait(&p->wake, &p->mu, &until);
        }
        if (done) {
            pthread_mutex_unlock(&p->mu);
            batch_free(done);
            pthread_mutex_lock(&p->mu);
        }
    }
    /* Stopping: what was sent is known once the server answers. */
    if (p->sent_head && bus_connected(p->bus))
        confirm_sent(p);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void on_bus_state(void *ctx, bool connected)
{
    struct publisher *p = ctx;
    pthread_mutex_lock(&p->mu);
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

/* ---- lifecycle ---- */

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

static void instance_id(char out[PUBLISHER_INSTANCE_LEN + 1])
{
    uint8_t r[PUBLISHER_INSTANCE_LEN / 2];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        /* No entropy yet (very early boot): time and address still differ per process. */
        uint64_t x = clock_realtime_ns() ^ ((uint64_t)(uintptr_t)out << 17) ^ clock_monotonic_ns();
        memcpy(r, &x, sizeof(r));
    }
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
}

struct publisher *publisher_new(struct bus *bus, const struct publisher_config *cfg, char *err,
                                size_t errlen)
{
    if (!cfg->node || !*cfg->node || !cfg->subject || !*cfg->subject || cfg->batch_size == 0 ||
        cfg->batch_size > BUS_MAX_BATCH_EVENTS || cfg->flush_interval_ns == 0) {
        errmsg_set(err, errlen,
                   "publisher: node, subject, batch size 1..%d and a flush interval "
                   "are required",
                   BUS_MAX_BATCH_EVENTS);
        return NULL;
    }
    struct publisher *p = calloc(1, sizeof(*p));
    if (!p) {
        errmsg_set(err, errlen, "publisher: out of memory");
        return NULL;
    }
    p->bus = bus;
    p->cfg = *cfg;
    p->last_queued_ns = clock_monotonic_ns();
    p->node = strdup(cfg->node);
    p->subject = strdup(cfg->subject);
    p->pod_name = dup_or_null(cfg->pod_name);
    p->pod_namespace = dup_or_null(cfg->pod_namespace);
    p->log_prefix = dup_or_null(cfg->log_prefix);
    p->content_type =
        cfg->encoding == CONFIG_ENCODING_JSON ? BUS_CONTENT_TYPE_JSON : BUS_CONTENT_TYPE_PROTOBUF;
    p->max_payload = PUB_DEFAULT_MAXPAY;
    instance_id(p->instance);
    snprintf(p->reply_prefix, sizeof(p->reply_prefix), "%s.%s.", PUB_UNHEARD_ROOT, p->instance);
    p->started_ns = clock_realtime_ns();

    pthread_mutex_init(&p->mu, NULL);
    clock_cond_init(&p->wake);
    clock_cond_init(&p->drained);

    if (!p->node || !p->subject) {
        errmsg_set(err, errlen, "publisher: out of memory");
        publisher_free(p);
        return NULL;
    }
    bus_set_listener(bus, on_bus_state, p);
    int rc = pthread_create(&p->thread, NULL, publisher_main, p);
    if (rc) {
        errmsg_set(err, errlen, "publisher: cannot start its thread: %s", strerror(rc));
        publisher_free(p);
        return NULL;
    }
    p->thread_started = true;
    pthread_setname_np(p->thread, "publisher");
    return p;
}

void publisher_free(struct publisher *p)
{
    if (!p)
        return;
    if (p->thread_started) {
        /* No one listening: nothing would drain (the batches are counted below). */
        if (bus_connected(p->bus) && !__atomic_load_n(&p->no_listener, __ATOMIC_RELAXED))
            publisher_flush(p, PUB_DRAIN_ON_FREE_NS);
        pthread_mutex_lock(&p->mu);
        p->stopping = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    bus_set_listener(p->bus, NULL, NULL);
    /* What could not be sent is lost with this process: no later batch will tell the
     * aggregators (its sequence numbers die with it), so say it here. */
    uint64_t unsent = 0, unsent_events = 0;
    for (struct batch *b = p->head; b; b = b->next)
        if (batch_carries(b))
            unsent++, unsent_events += b->n_events;
    if (p->cur && batch_carries(p->cur))
        unsent++, unsent_events += p->cur->n_events;
    if (unsent && p->log_prefix)
        fprintf(stderr,
                "%s: %" PRIu64 " batch%s (%" PRIu64 " event%s) not sent: NATS %s at exit; lost, "
                "and no aggregator can count them\n",
                p->log_prefix, unsent, es(unsent), unsent_events, unsent_events == 1 ? "" : "s",
                !bus_connected(p->bus)         ? "unreachable"
                : p->no_listener && p->refused ? "connected, but refusing them (permissions)"
                : p->no_listener               ? "connected, but no one subscribed"
                                               : "did not take them in time");
    batch_free(p->cur);
    batch_free(p->spare);
    if (p->unheard_sub)
        unheard_end(p->unheard_sub);
    uint64_t unconfirmed = 0, unconfirmed_events = 0;
    while (p->sent_head) { /* sent, the server's answer not had */
        struct batch *b = p->sent_head;
        p->sent_head = b->next;
        unconfirmed++;
        unconfirmed_events += b->n_events;
        batch_free(b);
    }
    if (unconfirmed && p->log_prefix)
        fprintf(stderr,
                "%s: %" PRIu64 " batch%s (%" PRIu64 " event%s) sent, but NATS did not say at exit "
                "whether anyone heard them: they may be lost\n",
                p->log_prefix, unconfirmed, es(unconfirmed), unconfirmed_events,
                unconfirmed_events == 1 ? "" : "s");
    while (p->head) {
        struct batch *b = p->head;
        p->head = b->next;
        batch_free(b);
    }
    while (p->free_batches) {
        struct batch *b = p->free_batches;
        p->free_batches = b->next;
        batch_free(b);
    }
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->drained);
    pthread_mutex_destroy(&p->mu);
    free(p->node);
    free(p->subject);
    free(p->pod_name);
    free(p->pod_namespace);
    free(p->log_prefix);
    free(p);
}

void publisher_get_stats(struct publisher *p, struct publisher_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->batches_sent = get(&p->batches_sent);
    out->events_sent = get(&p->events_sent);
    out->bytes_sent = get(&p->bytes_sent);
    out->batches_dropped = get(&p->batches_dropped);
    out->batches_too_large = get(&p->batches_too_large);
    out->events_dropped = get(&p->events_dropped);
    out->encode_failed = get(&p->encode_failed);
    out->pods_gone = get(&p->pods_gone_sent);
    out->pods_gone_dropped = get(&p->pods_gone_dropped);
    out->heartbeats = get(&p->heartbeats);
    out->batches_unheard = get(&p->batches_unheard);
    out->no_listener = __atomic_load_n(&p->no_listener, __ATOMIC_RELAXED);
    out->queue_batches = get(&p->queue_batches);
    out->queue_bytes = get(&p->queue_bytes);
    out->publish_errors = get(&p->publish_errors);
    out->sequence = __atomic_load_n(&p->sequence, __ATOMIC_RELAXED);
    out->kernel_drops = get(&p->kernel_drops);
    out->kernel_missed = get(&p->kernel_missed);
    bus_get_status(p->bus, &out->bus);
}

const char *publisher_instance(const struct publisher *p)
{
    return p->instance;
}

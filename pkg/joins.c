/*
 * The ClusterIP -> backend pod join (see joins.h).
 *
 * Server halves sit in an open-addressed table: a half goes within PROBE
 * slots of its home, into its own key's slot, a free one or an expired one,
 * else over the oldest of the range (counted). Nothing is ever deleted, so
 * a lookup walks the same range and stops at a never-used slot. Held client
 * halves are an array scanned on each release (every 200 ms).
 */
#include "joins.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errmsg.h"
#include "intern.h"
#include "k8s_services.h"
#include "peers.h"

#define PROBE 16

struct slot {
    struct joins_half h;
    bool used;
    bool several; /* another backend claimed this client address within the window */
};

struct held {
    struct event e;
    uint64_t deadline;
};

struct joins {
    pthread_mutex_t lock;
    uint64_t window_ns;
    struct slot *slots;
    uint32_t mask;
    struct held *held;
    uint32_t nheld, max_held;
    struct joins_stats st;
};

static const char *const unjoined_names[JOINS_UNJOINED_COUNT] = {
    [JOINS_NO_SERVER_HALF] = "no_server_half",
    [JOINS_SEVERAL] = "several_candidates",
    [JOINS_HELD_FULL] = "held_queue_full",
};

const char *joins_unjoined_name(enum joins_unjoined r)
{
    return (unsigned)r < JOINS_UNJOINED_COUNT ? unjoined_names[r] : NULL;
}

struct joins *joins_new(uint32_t max_halves, uint32_t max_held, uint64_t window_ns)
{
    struct joins *j = calloc(1, sizeof(*j));
    uint32_t n = PROBE;

    if (!j || max_halves == 0 || max_held == 0 || max_halves > (1u << 28)) {
        free(j);
        return NULL;
    }
    while (n < max_halves)
        n <<= 1;
    j->slots = calloc(n, sizeof(*j->slots));
    j->held = calloc(max_held, sizeof(*j->held));
    if (!j->slots || !j->held) {
        free(j->slots);
        free(j->held);
        free(j);
        return NULL;
    }
    pthread_mutex_init(&j->lock, NULL);
    j->mask = n - 1;
    j->max_held = max_held;
    j->window_ns = window_ns;
    return j;
}

void joins_free(struct joins *j)
{
    if (!j)
        return;
    for (uint32_t i = 0; i < j->nheld; i++)
        event_clear(&j->held[i].e);
    pthread_mutex_destroy(&j->lock);
    free(j->slots);
    free(j->held);
    free(j);
}

bool joins_event_key(const struct event *e, struct joins_key *out)
{
    bool side = e->type == EVENT_CONNECTION || e->type == EVENT_ACCEPT ||
                (e->type == EVENT_CLOSE && e->u.close.role != EVENT_ROLE_NONE);
    if (!side || e->protocol != 6 /* TCP */ ||
        (e->family != EVENT_FAMILY_IPV4 && e->family != EVENT_FAMILY_IPV6))
        return false;
    memset(out, 0, sizeof(*out));
    out->family = e->family;
    out->protocol = e->protocol;
    out->port = e->sport;
    memcpy(out->ip, e->saddr, e->family == EVENT_FAMILY_IPV4 ? 4 : 16);
    return true;
}

static bool key_eq(const struct joins_key *a, const struct joins_key *b)
{
    return a->family == b->family && a->protocol == b->protocol && a->port == b->port &&
           memcmp(a->ip, b->ip, 16) == 0;
}

static uint32_t key_home(const struct joins *j, const struct joins_key *k)
{
    uint64_t lo, hi;
    memcpy(&lo, k->ip, 8);
    memcpy(&hi, k->ip + 8, 8);
    uint64_t h = (lo ^ (hi * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)k->port << 40) ^ k->family) *
                 0xff51afd7ed558ccdull;
    /* Fold the high bits (the port's) down to the ones the mask keeps. */
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return (uint32_t)(h ^ (h >> 33)) & j->mask;
}

static bool expired(const struct joins *j, const struct slot *s, uint64_t now)
{
    return now > s->h.ts_ns + j->window_ns;
}

static void add_half_locked(struct joins *j, const struct joins_half *h, uint64_t now)
{
    uint32_t home = key_home(j, &h->key);
    struct slot *take = NULL, *oldest = NULL;
    for (uint32_t p = 0; p < PROBE; p++) {
        struct slot *s = &j->slots[(home + p) & j->mask];
        if (s->used && key_eq(&s->h.key, &h->key)) {
            if (!expired(j, s, now) && s->h.backend.pod != h->backend.pod)
                s->several = true;
            else if (expired(j, s, now))
                s->several = false;
            s->h = *h;
            return;
        }
        if (!take && (!s->used || expired(j, s, now)))
            take = s;
        if (!oldest || s->h.ts_ns < oldest->h.ts_ns)
            oldest = s;
    }
    if (!take) {
        take = oldest;
        j->st.halves_evicted++;
    }
    if (!take->used)
        j->st.halves++;
    take->h = *h;
    take->used = true;
    take->several = false;
}

void joins_add_half(struct joins *j, const struct joins_half *h, uint64_t now)
{
    pthread_mutex_lock(&j->lock);
    add_half_locked(j, h, now);
    pthread_mutex_unlock(&j->lock);
}

static const struct slot *find(const struct joins *j, const struct joins_key *k, uint64_t now)
{
    uint32_t home = key_home(j, k);
    for (uint32_t p = 0; p < PROBE; p++) {
        const struct slot *s = &j->slots[(home + p) & j->mask];
        if (!s->used)
            return NULL;
        if (key_eq(&s->h.key, k))
            return expired(j, s, now) ? NULL : s;
    }
    return NULL;
}

static bool hold_locked(struct joins *j, struct event *e, uint64_t now)
{
    bool ok = j->nheld < j->max_held;
    if (ok) {
        struct held *h = &j->held[j->nheld++];
        event_move(&h->e, e);
        h->deadline = now + j->window_ns;
    } else {
        j->st.unjoined[JOINS_HELD_FULL]++;
    }
    return ok;
}

bool joins_hold(struct joins *j, struct event *e, uint64_t now)
{
    pthread_mutex_lock(&j->lock);
    bool ok = hold_locked(j, e, now);
    pthread_mutex_unlock(&j->lock);
    return ok;
}

size_t joins_release(struct joins *j, uint64_t now, struct event *out, size_t max)
{
    size_t n = 0;
    uint32_t keep = 0;

    pthread_mutex_lock(&j->lock);
    for (uint32_t i = 0; i < j->nheld; i++) {
        struct held *h = &j->held[i];
        struct joins_key k;
        const struct slot *s = n < max && joins_event_key(&h->e, &k) ? find(j, &k, now) : NULL;
        bool done = n < max && (s != NULL || now >= h->deadline);
        if (!done) {
            if (keep != i)
                j->held[keep] = *h; /* a plain move: the slot it leaves is reused */
            keep++;
            continue;
        }
        if (s && !s->several) {
            peers_fill(&h->e.peer, &s->h.backend);
            j->st.joined++;
        } else {
            j->st.unjoined[s ? JOINS_SEVERAL : JOINS_NO_SERVER_HALF]++;
        }
        event_move(&out[n++], &h->e);
    }
    j->nheld = keep;
    pthread_mutex_unlock(&j->lock);
    return n;
}

void joins_get_stats(struct joins *j, struct joins_stats *out)
{
    pthread_mutex_lock(&j->lock);
    *out = j->st;
    out->held = j->nheld;
    pthread_mutex_unlock(&j->lock);
}

/* ---- announcements ---- */

void joins_announce_write(struct buf *out, const char *replica, const struct joins_half *h,
                          size_t n)
{
    char ip[INET6_ADDRSTRLEN];

    buf_puts(out, "{\"replica\":");
    buf_json_cstr(out, replica ? replica : "");
    buf_puts(out, ",\"halves\":[");
    for (size_t i = 0; i < n; i++) {
        const struct joins_half *x = &h[i];
        /* No printf: an announcement carries up to a batch's halves, at ingest. */
        buf_puts(out, i ? ",{\"ip\":\"" : "{\"ip\":\"");
        buf_puts(out, event_addr_str(x->key.family, x->key.ip, ip, sizeof(ip)));
        buf_puts(out, "\",\"port\":");
        buf_json_u64(out, x->key.port);
        buf_puts(out, ",\"protocol\":");
        buf_json_u64(out, x->key.protocol);
        buf_puts(out, ",\"ts_ns\":");
        buf_json_u64(out, x->ts_ns);
        peers_name_write(out, "pod", x->backend.pod);
        peers_name_write(out, "namespace", x->backend.namespace);
        peers_name_write(out, "workload", x->backend.workload);
        peers_name_write(out, "workload_kind", x->backend.workload_kind);
        peers_name_write(out, "node", x->backend.node);
        buf_putc(out, '}');
    }
    buf_puts(out, "]}");
}

static bool half_parse(json_t *o, struct joins_half *h)
{
    json_t *port = json_object_get(o, "port"), *proto = json_object_get(o, "protocol");
    json_t *ts = json_object_get(o, "ts_ns");
    const char *ip = json_string_value(json_object_get(o, "ip"));

    memset(h, 0, sizeof(*h));
    if (!json_is_object(o) || !ip || !json_is_integer(port) || !json_is_integer(proto) ||
        !json_is_integer(ts) || json_integer_value(port) < 0 || json_integer_value(port) > 65535 ||
        json_integer_value(proto) < 0 || json_integer_value(proto) > 255 ||
        json_integer_value(ts) <= 0)
        return false;
    if (strlen(ip) < INET6_ADDRSTRLEN && inet_pton(AF_INET, ip, h->key.ip) == 1)
        h->key.family = EVENT_FAMILY_IPV4;
    else if (strlen(ip) < INET6_ADDRSTRLEN && inet_pton(AF_INET6, ip, h->key.ip) == 1)
        h->key.family = EVENT_FAMILY_IPV6;
    else
        return false;
    h->key.port = (uint16_t)json_integer_value(port);
    h->key.protocol = (uint8_t)json_integer_value(proto);
    h->ts_ns = (uint64_t)json_integer_value(ts);
    return peers_name_read(o, "pod", true, &h->backend.pod) &&
           peers_name_read(o, "namespace", true, &h->backend.namespace) &&
           peers_name_read(o, "workload", false, &h->backend.workload) &&
           peers_name_read(o, "workload_kind", false, &h->backend.workload_kind) &&
           peers_name_read(o, "node", false, &h->backend.node);
}

int joins_announce_parse(const char *data, size_t len, char *replica, size_t replica_len,
                         struct joins_half *out, size_t max, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *halves = json_object_get(root, "halves"), *o;
    json_t *id = json_object_get(root, "replica");
    int rc = -EINVAL;
    size_t i;

    if (!root) {
        errmsg_set(err, errlen, "not JSON: %s", jerr.text);
        return -EINVAL;
    }
    if (!json_is_string(id) || !json_is_array(halves)) {
        errmsg_set(err, errlen, "an announcement needs a string replica and a halves array");
        goto out;
    }
    if (json_array_size(halves) > max || json_array_size(halves) > JOINS_ANNOUNCE_MAX) {
        errmsg_set(err, errlen, "%zu halves: at most %d in one announcement",
                   json_array_size(halves), JOINS_ANNOUNCE_MAX);
        goto out;
    }
    json_array_foreach(halves, i, o)
    {
        if (!half_parse(o, &out[i])) {
            errmsg_set(err, errlen,
                       "half %zu: needs ip, port 0-65535, protocol 0-255, a positive ts_ns "
                       "and string pod and namespace",
                       i);
            goto out;
        }
    }
    if (replica && replica_len)
        snprintf(replica, replica_len, "%s", json_string_value(id));
    rc = (int)json_array_size(halves);
out:
    json_decref(root);
    return rc;
}

/* ---- The join at ingest ---------------------------------------------------- */

/* An accept (or server close) of a pod that backs a Service: the half it makes. */
static bool server_half(const struct event *e, uint8_t side, uint64_t now, struct joins_half *h)
{
    if (side != K8S_SIDE_BACKEND || !e->k8s.pod_name || !joins_event_key(e, &h->key))
        return false;
    h->ts_ns = now;
    h->backend = (struct event_peer){.pod = e->k8s.pod_name,
                                     .namespace = e->k8s.namespace,
                                     .workload = e->k8s.workload,
                                     .workload_kind = e->k8s.workload_kind,
                                     .node = e->k8s.node_name ? e->k8s.node_name : e->node};
    return true;
}

/* A connection (or client close) to a ClusterIP whose backend is not named yet: its key. */
static bool client_half(const struct event *e, uint8_t side, struct joins_key *k)
{
    return side == K8S_SIDE_TO_CLUSTER_IP && !e->peer.pod && joins_event_key(e, k);
}

/*
 * A client half whose server half is here already is joined now, as
 * joins_release() would join it (or counted, when two backends claim its
 * address): true. False when it has to wait.
 */
static bool join_now_locked(struct joins *j, struct event *e, const struct joins_key *k,
                            uint64_t now)
{
    const struct slot *s = find(j, k, now);
    if (!s)
        return false;
    if (s->several) {
        j->st.unjoined[JOINS_SEVERAL]++;
    } else {
        peers_fill(&e->peer, &s->h.backend);
        j->st.joined++;
    }
    return true;
}

size_t joins_batch(struct joins *j, const uint8_t *sides, struct event *events, size_t n,
                   uint64_t now, joins_announce_fn *announce, void *ctx)
{
    static __thread struct joins_half halves[JOINS_ANNOUNCE_MAX];
    size_t nh = 0, kept = 0;

    pthread_mutex_lock(&j->lock);
    for (size_t i = 0; i < n; i++) {
        struct event *e = &events[i];
        struct joins_key k;
        if (server_half(e, sides[i], now, &halves[nh])) {
            add_half_locked(j, &halves[nh], now);
            if (++nh == JOINS_ANNOUNCE_MAX) {
                pthread_mutex_unlock(&j->lock);
                announce(ctx, halves, nh);
                nh = 0;
                pthread_mutex_lock(&j->lock);
            }
        }
        if (client_half(e, sides[i], &k) && !join_now_locked(j, e, &k, now) &&
            hold_locked(j, e, now))
            continue; /* moved out: the caller stores it when released */
        if (kept != i)
            events[kept] = *e; /* a move: slot i is past the batch's new end */
        kept++;
    }
    pthread_mutex_unlock(&j->lock);
    if (nh > 0)
        announce(ctx, halves, nh);
    return kept;
}

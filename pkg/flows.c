/*
 * Flows (flows.h): a chained hash of edges at pod granularity, each holding
 * its per-minute buckets sorted by minute, and one ring of edge pointers in
 * the order buckets were created, which is what eviction and retention pop.
 * Invariant: an edge appears in the ring exactly as often as it has buckets,
 * so an edge whose last bucket is popped has no ring entry left and is freed.
 */
#include "flows.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "errmsg.h"
#include "event_json.h"
#include "flows_internal.h"
#include "intern.h"
#include "query.h"

#define NS_PER_MIN (60ull * 1000000000ull)

/*
 * Minutes an edge keeps as plain structs: the newest and those before it
 * that late events may still reach and that the default window (15 minutes)
 * reads, so a default query decodes nothing. Older ones are compacted.
 */
#define FLOWS_HOT_MINUTES 16

/* Edges a query reads per hold of the lock (a few hundred microseconds over 24 hours). */
#define FLOWS_QUERY_STEP 64

/*
 * The names of one side of an edge (a flows_endpoint without its address),
 * held once however many edges share them (a pod talks to many peers), so
 * an edge's key is two pointers and the destination's address: 40 bytes
 * where the full key takes 168, with the hash and chain in the same cache
 * line. Counted references, one per edge side; freed with the last.
 */
struct flows_names {
    struct flows_names *next; /* hash chain */
    uint64_t hash;
    uint64_t refs;
    const char *namespace, *workload, *workload_kind, *pod, *node, *service, *dns;
};

/* An edge's key as the table holds it (node_key_of(), node_key_expand()). */
struct node_key {
    struct flows_names *src, *dst;
    uint8_t ip[16]; /* the destination's address (outside the cluster) */
    uint16_t port;
    uint8_t protocol;
    uint8_t family;
};

struct flows_node {
    struct node_key key;
    uint64_t hash;
    struct flows_node *next; /* hash chain */
    struct flows_seg *segs;  /* compacted minutes by hour, sorted, all older than the hot ones */
    uint32_t nsegs, segs_cap;
    uint32_t cold;                /* records in segs */
    struct flows_minute *minutes; /* hot: [start, count) live, sorted by minute */
    uint32_t start, count, cap;
};

_Static_assert(sizeof(struct node_key) == 40, "an edge's key is 40 bytes");
_Static_assert(offsetof(struct flows_node, next) < 64, "the key, hash and chain share a line");

struct flows {
    pthread_mutex_t lock;
    uint64_t retention_ns;
    struct flows_node **table;
    size_t table_cap, nodes;
    struct flows_names **names; /* chained hash of every edge's names */
    size_t names_cap, nnames;
    struct flows_node **ring; /* max_edge_minutes slots */
    size_t ring_cap, ring_head, ring_len;
    uint64_t held; /* bytes allocated for the table, ring and edges: see node_bytes() */
    struct flows_stats stats;
    struct flows_errtab errtab;
    /* Cumulative per-workload-pair counters for /metrics (flows_series_enable). */
    struct flows_result series;
    size_t max_series; /* 0: not kept */
    uint64_t series_folded;
    uint64_t series_stale_ns;  /* a series not counted into for this long goes away */
    uint64_t series_swept_min; /* the minute stale series were last removed */
    uint64_t series_removed;
    flows_alive_fn series_alive; /* NULL: a quiet series goes */
    void *series_alive_ctx;
    /* Packet drops per (workload, reason): src = the workload, dst.workload = the reason. */
    struct flows_result drops;
    uint64_t drops_folded;
    /* Interned once: "~other" (the series past the cap), "unknown" (a cause or reason not
     * given); and the key_hash() of each protocol's "~other" series (other_series_key()). */
    const char *other, *unknown;
    uint64_t other_hash[256];
    /* command -> interned, for Process endpoints: one intern() per new command, not per event */
    struct {
        char comm[EVENT_COMM_LEN];
        const char *name;
    } comms[64];
    /* Called between a query's steps, without the lock (flows_set_query_yield). */
    void (*query_yield)(void *ctx);
    void *query_yield_ctx;
};

/* ---- keys ---- */

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

/* Two independent chains (the names, the address), so their multiplications overlap. */
static uint64_t endpoint_hash(uint64_t h, const struct flows_endpoint *e)
{
    const char *s[] = {e->namespace, e->workload, e->workload_kind, e->pod, e->node,
                       e->service,   e->dns};
    uint64_t a, b;
    memcpy(&a, e->ip, 8);
    memcpy(&b, e->ip + 8, 8);
    uint64_t g = mix(mix(mix(h, e->family), a), b);
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        h = mix(h, (uint64_t)(uintptr_t)s[i]);
    return mix(h, g);
}

/* mix() moves entropy up, and tables index by the low bits: fold it back down (without
 * this, edges that differ only in an address byte share one chain). */
static uint64_t hash_fold(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static uint64_t key_hash(const struct flows_key *k)
{
    uint64_t h = mix(0, (uint64_t)k->port << 8 | k->protocol);
    /* Each side on its own, so the two chains overlap. */
    return hash_fold(mix(endpoint_hash(h, &k->src), endpoint_hash(h ^ 1, &k->dst)));
}

/* Strings are interned: equal strings are equal pointers. */
static bool endpoint_equal(const struct flows_endpoint *a, const struct flows_endpoint *b)
{
    return a->namespace == b->namespace && a->workload == b->workload &&
           a->workload_kind == b->workload_kind && a->pod == b->pod && a->node == b->node &&
           a->service == b->service && a->dns == b->dns && a->family == b->family &&
           memcmp(a->ip, b->ip, 16) == 0;
}

/* A flows_result index entry: the edge at position i, whose key hashes to h. */
static inline uint64_t index_entry(uint64_t h, size_t i)
{
    return (h & 0xffffffff00000000ull) | (uint32_t)(i + 1);
}

/* The position of the edge an entry names (entry != 0). */
static inline size_t index_pos(uint64_t entry)
{
    return (uint32_t)entry - 1;
}

static inline bool index_may_be(uint64_t entry, uint64_t h)
{
    return (entry >> 32) == (h >> 32);
}

static bool key_equal(const struct flows_key *a, const struct flows_key *b)
{
    return a->port == b->port && a->protocol == b->protocol && endpoint_equal(&a->src, &b->src) &&
           endpoint_equal(&a->dst, &b->dst);
}

/* name as the API shows it, each byte of invalid UTF-8 as U+FFFD, given to intern_fn (interned,
 * or found: intern_process_n(), intern_find_n()). */
static const char *shown_name(const char *name, size_t len,
                              const char *(*intern_fn)(const char *, size_t))
{
    struct buf b;
    const char *shown;

    if (buf_utf8_valid(name, len))
        return intern_fn(name, len);
    buf_init(&b);
    buf_utf8_show(&b, name, len);
    shown = b.oom ? NULL : intern_fn(b.data, b.len);
    buf_free(&b);
    return shown;
}

/*
 * A Process endpoint is named by the text its command shows as: the names replicas exchange
 * and hand over are JSON text, and one process must be one edge whichever replica counted it.
 */
static const char *command_name(struct flows *f, const char *command)
{
    char comm[EVENT_COMM_LEN] = {0};
    uint64_t h = 0;

    memcpy(comm, command, strnlen(command, sizeof(comm) - 1));
    for (size_t i = 0; i < sizeof(comm); i++)
        h = h * 31 + (uint8_t)comm[i];
    size_t slot = h % (sizeof(f->comms) / sizeof(f->comms[0]));
    if (f->comms[slot].name == NULL || memcmp(f->comms[slot].comm, comm, sizeof(comm)) != 0) {
        /* A process names itself: its commands take the table's process part only. */
        const char *name = shown_name(comm, strlen(comm), intern_process_n);
        if (name == NULL)
            return NULL;
        memcpy(f->comms[slot].comm, comm, sizeof(comm));
        f->comms[slot].name = name;
    }
    return f->comms[slot].name;
}

/* The workload an event's own side is (SPEC §8 endpoints). */
static void source_from_event(struct flows *f, const struct event *e, struct flows_endpoint *src)
{
    static const char *pod_kind, *process_kind;

    if (pod_kind == NULL) {
        pod_kind = intern("Pod");
        process_kind = intern("Process");
    }
    src->node = e->node;
    if (e->k8s.workload != NULL || e->k8s.pod_name != NULL) {
        src->namespace = e->k8s.namespace;
        src->workload = e->k8s.workload != NULL ? e->k8s.workload : e->k8s.pod_name;
        src->workload_kind = e->k8s.workload_kind != NULL ? e->k8s.workload_kind : pod_kind;
        src->pod = e->k8s.pod_name;
    } else {
        src->workload = command_name(f, e->command);
        src->workload_kind = process_kind;
    }
}

/* The edge a client-side event belongs to (SPEC §8 endpoints). */
static void key_from_event(struct flows *f, const struct event *e, struct flows_key *k)
{
    memset(k, 0, sizeof(*k));
    k->port = e->dport;
    k->protocol = e->protocol;
    source_from_event(f, e, &k->src);
    const struct event_peer *p = &e->peer;
    if (p->workload != NULL || p->pod != NULL) {
        k->dst.namespace = p->namespace;
        k->dst.workload = p->workload != NULL ? p->workload : p->pod;
        k->dst.workload_kind = p->workload_kind;
        k->dst.pod = p->pod;
        k->dst.node = p->node;
        k->dst.service = p->service;
    } else {
        k->dst.service = p->service;
        k->dst.dns = p->dns;
        k->dst.family = e->family;
        memcpy(k->dst.ip, e->daddr, 16);
    }
}

/* The key an edge is reported under when grouped by g. */
static void key_project(const struct flows_key *in, enum flows_group g, struct flows_key *out)
{
    *out = *in;
    if (g == FLOWS_GROUP_POD)
        return;
    /* A workload spans pods and nodes; a Process is named by its node. */
    out->src.pod = NULL;
    out->dst.pod = NULL;
    if (out->src.namespace != NULL)
        out->src.node = NULL;
    if (out->dst.namespace != NULL)
        out->dst.node = NULL;
    if (g == FLOWS_GROUP_SERVICE && in->dst.service != NULL) {
        /* The Service's own namespace ("shop/api"), not its backend pod's when that pod was
         * named too: whether it was must not split one Service into two edges. */
        const char *slash = strchr(in->dst.service, '/');
        struct flows_endpoint svc = {
            .namespace = slash ? intern_n(in->dst.service, (size_t)(slash - in->dst.service))
                               : in->dst.namespace,
            .service = in->dst.service};
        out->dst = svc;
    }
}

/* ---- edge names and the keys the table holds ---- */

static uint64_t names_hash(const struct flows_endpoint *e)
{
    /* Two independent chains, so their multiplications overlap. */
    uint64_t h = mix(mix(mix(0, (uint64_t)(uintptr_t)e->namespace), (uint64_t)(uintptr_t)e->pod),
                     (uint64_t)(uintptr_t)e->service);
    uint64_t g =
        mix(mix(mix(1, (uint64_t)(uintptr_t)e->workload), (uint64_t)(uintptr_t)e->workload_kind),
            (uint64_t)(uintptr_t)e->node);
    return hash_fold(mix(mix(h, (uint64_t)(uintptr_t)e->dns), g));
}

static bool names_equal(const struct flows_names *n, const struct flows_endpoint *e)
{
    return n->namespace == e->namespace && n->workload == e->workload &&
           n->workload_kind == e->workload_kind && n->pod == e->pod && n->node == e->node &&
           n->service == e->service && n->dns == e->dns;
}

/* The names of e, or NULL when no edge has them. */
static struct flows_names *names_find(const struct flows *f, const struct flows_endpoint *e,
                                      uint64_t h)
{
    struct flows_names *n = f->names[h & (f->names_cap - 1)];
    while (n != NULL && (n->hash != h || !names_equal(n, e)))
        n = n->next;
    return n;
}

static int names_grow(struct flows *f)
{
    size_t cap = f->names_cap * 2;
    struct flows_names **t = calloc(cap, sizeof(*t));

    if (t == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < f->names_cap; i++) {
        for (struct flows_names *n = f->names[i], *next; n != NULL; n = next) {
            next = n->next;
            n->next = t[n->hash & (cap - 1)];
            t[n->hash & (cap - 1)] = n;
        }
    }
    free(f->names);
    f->held += (cap - f->names_cap) * sizeof(*t);
    f->names = t;
    f->names_cap = cap;
    return 0;
}

/* e's names with one more reference (made when new), or NULL on ENOMEM. */
static struct flows_names *names_get(struct flows *f, const struct flows_endpoint *e, uint64_t h)
{
    struct flows_names *n = names_find(f, e, h);

    if (n == NULL) {
        if (f->nnames >= f->names_cap && names_grow(f) < 0)
            return NULL;
        if ((n = malloc(sizeof(*n))) == NULL)
            return NULL;
        struct flows_names **head = &f->names[h & (f->names_cap - 1)];
        *n = (struct flows_names){.next = *head,
                                  .hash = h,
                                  .namespace = e->namespace,
                                  .workload = e->workload,
                                  .workload_kind = e->workload_kind,
                                  .pod = e->pod,
                                  .node = e->node,
                                  .service = e->service,
                                  .dns = e->dns};
        *head = n;
        f->nnames++;
        f->held += sizeof(*n);
    }
    n->refs++;
    return n;
}

/* Drops a reference; the last frees the names. */
static void names_put(struct flows *f, struct flows_names *n)
{
    if (--n->refs > 0)
        return;
    struct flows_names **pp = &f->names[n->hash & (f->names_cap - 1)];
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    f->nnames--;
    f->held -= sizeof(*n);
    free(n);
}

static void names_expand(const struct flows_names *n, struct flows_endpoint *e)
{
    e->namespace = n->namespace;
    e->workload = n->workload;
    e->workload_kind = n->workload_kind;
    e->pod = n->pod;
    e->node = n->node;
    e->service = n->service;
    e->dns = n->dns;
}

/* The table's key for k, whose sides' names are src and dst (a source has no address). */
static void node_key_of(struct node_key *nk, struct flows_names *src, struct flows_names *dst,
                        const struct flows_key *k)
{
    memset(nk, 0, sizeof(*nk));
    nk->src = src;
    nk->dst = dst;
    memcpy(nk->ip, k->dst.ip, sizeof(nk->ip));
    nk->port = k->port;
    nk->protocol = k->protocol;
    nk->family = k->dst.family;
}

/*
 * The table's hash of an edge: from its sides' names_hash() (interned names
 * are unique, so equal keys have equal names and hashes), not from where its
 * names live, so an add can find the edge's slot before it looks the names up.
 */
static uint64_t node_hash(uint64_t hsrc, uint64_t hdst, const struct flows_key *k)
{
    uint64_t a, b;
    memcpy(&a, k->dst.ip, 8);
    memcpy(&b, k->dst.ip + 8, 8);
    uint64_t h = mix(mix(0, hsrc), hdst);
    h = mix(mix(mix(h, a), b),
            (uint64_t)k->port << 16 | (uint64_t)k->protocol << 8 | k->dst.family);
    return hash_fold(h);
}

static bool node_key_equal(const struct node_key *a, const struct node_key *b)
{
    return a->src == b->src && a->dst == b->dst && a->port == b->port &&
           a->protocol == b->protocol && a->family == b->family &&
           memcmp(a->ip, b->ip, sizeof(a->ip)) == 0;
}

/* The full key of an edge, as queries and results name it. */
static void node_key_expand(const struct node_key *nk, struct flows_key *k)
{
    memset(k, 0, sizeof(*k));
    names_expand(nk->src, &k->src);
    names_expand(nk->dst, &k->dst);
    k->dst.family = nk->family;
    memcpy(k->dst.ip, nk->ip, sizeof(k->dst.ip));
    k->port = nk->port;
    k->protocol = nk->protocol;
}

/* ---- the store ---- */

/* The key of the series that holds a protocol's events past the series cap. */
static void other_series_key(const struct flows *f, uint8_t protocol, struct flows_key *key)
{
    memset(key, 0, sizeof(*key));
    key->protocol = protocol;
    key->src.namespace = key->src.workload = f->other;
    key->dst.namespace = key->dst.workload = f->other;
}

struct flows *flows_new(uint64_t retention_ns, uint64_t max_edge_minutes)
{
    struct flows *f = calloc(1, sizeof(*f));

    if (f == NULL || max_edge_minutes == 0 || retention_ns == 0)
        goto fail;
    f->retention_ns = retention_ns;
    f->ring_cap = max_edge_minutes;
    f->ring = calloc(f->ring_cap, sizeof(*f->ring));
    f->table_cap = 1024;
    f->table = calloc(f->table_cap, sizeof(*f->table));
    f->names_cap = 256;
    f->names = calloc(f->names_cap, sizeof(*f->names));
    f->other = intern("~other");
    f->unknown = intern("unknown");
    if (f->ring == NULL || f->table == NULL || f->names == NULL || f->other == NULL ||
        f->unknown == NULL)
        goto fail;
    for (unsigned p = 0; p < 256; p++) {
        struct flows_key key;
        other_series_key(f, (uint8_t)p, &key);
        f->other_hash[p] = key_hash(&key);
    }
    f->stats.capacity = max_edge_minutes;
    f->held = f->ring_cap * sizeof(*f->ring) + f->table_cap * sizeof(*f->table) +
              f->names_cap * sizeof(*f->names);
    pthread_mutex_init(&f->lock, NULL);
    return f;
fail:
    if (f != NULL) {
        free(f->ring);
        free(f->table);
        free(f->names);
    }
    free(f);
    return NULL;
}

/*
 * What an edge allocated (without malloc's own overhead). flows.held is kept
 * up to date where these allocations change, so the statistics read one
 * counter instead of walking every edge under the lock ingestion takes.
 */
static uint64_t node_bytes(const struct flows_node *n)
{
    uint64_t b = sizeof(*n) + (uint64_t)n->cap * sizeof(*n->minutes) +
                 (uint64_t)n->segs_cap * sizeof(*n->segs);

    for (uint32_t s = 0; s < n->nsegs; s++)
        b += flows_seg_bytes(&n->segs[s]);
    return b;
}

static void node_free(struct flows_node *n)
{
    for (uint32_t i = 0; i < n->nsegs; i++)
        flows_seg_free(&n->segs[i]);
    free(n->segs);
    free(n->minutes);
    free(n);
}

void flows_free(struct flows *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->table_cap; i++) {
        struct flows_node *n = f->table[i], *next;
        for (; n != NULL; n = next) {
            next = n->next;
            node_free(n);
        }
    }
    for (size_t i = 0; i < f->names_cap; i++) {
        for (struct flows_names *n = f->names[i], *next; n != NULL; n = next) {
            next = n->next;
            free(n);
        }
    }
    free(f->names);
    free(f->table);
    free(f->ring);
    flows_result_free(&f->series);
    flows_result_free(&f->drops);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

static void node_unlink(struct flows *f, struct flows_node *n)
{
    struct flows_node **pp = &f->table[n->hash & (f->table_cap - 1)];
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    f->nodes--;
    f->held -= node_bytes(n);
    names_put(f, n->key.src);
    names_put(f, n->key.dst);
    node_free(n);
}

static uint32_t node_buckets(const struct flows_node *n)
{
    return n->cold + n->count - n->start;
}

/* The minute of n's oldest bucket; n holds one. */
static uint32_t node_oldest(const struct flows_node *n)
{
    return n->cold > 0 ? flows_seg_first_minute(&n->segs[0]) : n->minutes[n->start].minute;
}

/* Pops the ring's oldest entry: its edge loses its oldest bucket. */
static void ring_pop(struct flows *f)
{
    struct flows_node *n = f->ring[f->ring_head];

    f->ring_head = (f->ring_head + 1) % f->ring_cap;
    f->ring_len--;
    if (n->cold > 0) {
        flows_seg_pop_first(&n->segs[0], &f->errtab);
        n->cold--;
        if (n->segs[0].count == 0) {
            f->held -= flows_seg_bytes(&n->segs[0]);
            flows_seg_free(&n->segs[0]);
            memmove(n->segs, n->segs + 1, --n->nsegs * sizeof(*n->segs));
        }
        if (node_buckets(n) == 0)
            node_unlink(f, n);
        return;
    }
    n->start++;
    if (n->start == n->count) {
        node_unlink(f, n);
        return;
    }
    /* Compact once half the array is dead: amortized O(1) per pop. */
    if (n->start >= 16 && n->start * 2 >= n->count) {
        memmove(n->minutes, n->minutes + n->start, (n->count - n->start) * sizeof(*n->minutes));
        n->count -= n->start;
        n->start = 0;
    }
}

static void expire(struct flows *f, uint64_t now_ns)
{
    if (now_ns < f->retention_ns)
        return;
    uint64_t cutoff = (now_ns - f->retention_ns) / NS_PER_MIN;
    while (f->ring_len > 0) {
        if (node_oldest(f->ring[f->ring_head]) >= cutoff)
            break;
        ring_pop(f);
        f->stats.evicted_age++;
    }
}

static int table_grow(struct flows *f)
{
    size_t cap = f->table_cap * 2;
    struct flows_node **t = calloc(cap, sizeof(*t));

    if (t == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < f->table_cap; i++) {
        struct flows_node *n = f->table[i], *next;
        for (; n != NULL; n = next) {
            next = n->next;
            n->next = t[n->hash & (cap - 1)];
            t[n->hash & (cap - 1)] = n;
        }
    }
    free(f->table);
    f->held += (cap - f->table_cap) * sizeof(*t);
    f->table = t;
    f->table_cap = cap;
    return 0;
}

/*
 * An event's edge as flows_add() plans it: its key and the hashes that key
 * always has (names are interned, so these never change).
 */
struct add_plan {
    struct flows_key k;
    uint64_t hsrc, hdst; /* names_hash() of each side */
    uint64_t hnode;      /* node_hash(): where the table holds the edge */
    uint64_t hseries;    /* key_hash() of its /metrics series' key */
    bool counts;         /* false: ignored (see add_one()) */
    bool unnamed;        /* its Process endpoint's name was refused (intern.h): failed */
};

static struct flows_node *node_get(struct flows *f, const struct add_plan *p)
{
    const struct flows_key *k = &p->k;
    uint64_t hsrc = p->hsrc, hdst = p->hdst;
    struct flows_names *src = names_find(f, &k->src, hsrc), *dst = names_find(f, &k->dst, hdst);
    struct flows_node *n;
    struct node_key nk;

    uint64_t h = p->hnode;

    /* Names no edge has yet: a new edge. */
    if (src != NULL && dst != NULL) {
        node_key_of(&nk, src, dst, k);
        for (n = f->table[h & (f->table_cap - 1)]; n != NULL; n = n->next)
            if (n->hash == h && node_key_equal(&n->key, &nk))
                return n;
    }
    if (f->nodes >= f->table_cap && table_grow(f) < 0)
        return NULL;
    n = calloc(1, sizeof(*n));
    src = n != NULL ? names_get(f, &k->src, hsrc) : NULL;
    dst = src != NULL ? names_get(f, &k->dst, hdst) : NULL;
    if (dst == NULL) {
        if (src != NULL)
            names_put(f, src);
        free(n);
        return NULL;
    }
    f->held += sizeof(*n);
    node_key_of(&n->key, src, dst, k);
    n->hash = h;
    n->next = f->table[h & (f->table_cap - 1)];
    f->table[h & (f->table_cap - 1)] = n;
    f->nodes++;
    return n;
}

/* The bucket of minute in n, or NULL. */
static struct flows_minute *minute_find(struct flows_node *n, uint32_t minute)
{
    for (uint32_t i = n->count; i > n->start; i--) {
        if (n->minutes[i - 1].minute == minute)
            return &n->minutes[i - 1];
        if (n->minutes[i - 1].minute < minute)
            break;
    }
    return NULL;
}

/* A new bucket of n, the newest to evict (the caller made room). */
static void ring_push(struct flows *f, struct flows_node *n)
{
    f->ring[(f->ring_head + f->ring_len) % f->ring_cap] = n;
    f->ring_len++;
}

/* The bucket of minute in n, created when missing (the caller made room). */
static struct flows_minute *minute_get(struct flows *f, struct flows_node *n, uint32_t minute)
{
    uint32_t i = n->count;

    /* Events arrive nearly in order: search from the newest. */
    while (i > n->start && n->minutes[i - 1].minute > minute)
        i--;
    if (i > n->start && n->minutes[i - 1].minute == minute)
        return &n->minutes[i - 1];
    if (n->count == n->cap) {
        /* From one: an edge seen in one minute (most edges to addresses outside the
         * cluster) holds one plain struct. A busy edge holds up to twice FLOWS_HOT_MINUTES
         * between two moves (node_cool()), which doubling reaches exactly. */
        uint32_t cap = n->cap ? n->cap * 2 : 1;
        struct flows_minute *m = realloc(n->minutes, cap * sizeof(*m));
        if (m == NULL)
            return NULL;
        f->held += (uint64_t)(cap - n->cap) * sizeof(*m);
        n->minutes = m;
        n->cap = cap;
    }
    memmove(&n->minutes[i + 1], &n->minutes[i], (n->count - i) * sizeof(*n->minutes));
    n->count++;
    memset(&n->minutes[i], 0, sizeof(n->minutes[i]));
    n->minutes[i].minute = minute;
    ring_push(f, n);
    return &n->minutes[i];
}

/* The segment of the hour starting at minute hour, made in order when missing. */
static struct flows_seg *seg_get(struct flows *f, struct flows_node *n, uint32_t hour)
{
    uint32_t i = n->nsegs;

    while (i > 0 && n->segs[i - 1].total.minute > hour)
        i--;
    if (i > 0 && n->segs[i - 1].total.minute == hour)
        return &n->segs[i - 1];
    if (n->nsegs == n->segs_cap) {
        uint32_t cap = n->segs_cap ? n->segs_cap + n->segs_cap / 2 + 1 : 2;
        struct flows_seg *p = realloc(n->segs, cap * sizeof(*p));
        if (p == NULL)
            return NULL;
        f->held += (uint64_t)(cap - n->segs_cap) * sizeof(*p);
        n->segs = p;
        n->segs_cap = cap;
    }
    memmove(&n->segs[i + 1], &n->segs[i], (n->nsegs - i) * sizeof(*n->segs));
    memset(&n->segs[i], 0, sizeof(n->segs[i]));
    n->segs[i].total.minute = hour;
    n->nsegs++;
    return &n->segs[i];
}

/* Puts m among n's compacted minutes. 0 or -ENOMEM (nothing changed). */
static int cold_put(struct flows *f, struct flows_node *n, const struct flows_minute *m)
{
    struct flows_seg *seg = seg_get(f, n, m->minute - m->minute % 60);

    if (seg == NULL)
        return -ENOMEM;
    size_t before = flows_seg_bytes(seg);
    int rc = flows_seg_put(seg, m, &f->errtab);
    f->held = f->held - before + flows_seg_bytes(seg);
    if (rc == 0)
        return 0;
    if (seg->count == 0) {
        f->held -= flows_seg_bytes(seg);
        flows_seg_free(seg);
        n->nsegs--;
        memmove(seg, seg + 1, (size_t)(n->segs + n->nsegs - seg) * sizeof(*seg));
    }
    return -ENOMEM;
}

static void seen(void *ctx, const struct flows_minute *m)
{
    (void)m;
    *(bool *)ctx = true;
}

static bool cold_has(struct flows *f, const struct flows_node *n, uint32_t minute)
{
    bool found = false;

    for (uint32_t i = 0; i < n->nsegs && !found; i++)
        if (n->segs[i].total.minute == minute - minute % 60)
            flows_seg_each(&n->segs[i], &f->errtab, minute, minute, seen, &found);
    return found;
}

/* Compacts n's hot minutes too old to be the newest FLOWS_HOT_MINUTES once newest exists. */
static void node_cool(struct flows *f, struct flows_node *n, uint32_t newest)
{
    while (n->start < n->count && n->minutes[n->start].minute + FLOWS_HOT_MINUTES <= newest) {
        if (cold_put(f, n, &n->minutes[n->start]) < 0)
            break;
        n->start++;
        n->cold++;
    }
    if (n->start > 0 && n->start * 2 >= n->count) {
        memmove(n->minutes, n->minutes + n->start, (n->count - n->start) * sizeof(*n->minutes));
        n->count -= n->start;
        n->start = 0;
    }
}

static unsigned hist_bucket(uint64_t ns)
{
    if (ns < (1ull << 10))
        return 0;
    unsigned b = (unsigned)(63 - __builtin_clzll(ns)) - 9;
    return b < FLOWS_HIST_BUCKETS ? b : FLOWS_HIST_BUCKETS - 1;
}

/* Whether e counts, per the rules in flows.h. */
static bool counts(const struct event *e)
{
    if (e->type == EVENT_CONNECTION)
        return e->status != EVENT_STATUS_NONE;
    return e->type == EVENT_CLOSE && e->u.close.role == EVENT_ROLE_CLIENT;
}

/* A failed connection's cause (interned). */
static const char *error_name(const struct flows *f, const struct event *e)
{
    return e->u.conn.error != NULL ? e->u.conn.error : f->unknown;
}

static void minute_count(struct flows *f, struct flows_minute *m, const struct event *e)
{
    if (m->first_seen_ns == 0 || e->timestamp_ns < m->first_seen_ns)
        m->first_seen_ns = e->timestamp_ns;
    if (e->timestamp_ns > m->last_seen_ns)
        m->last_seen_ns = e->timestamp_ns;
    if (e->type == EVENT_CLOSE) {
        flows_add64(&m->bytes_sent, e->u.close.bytes_sent);
        flows_add64(&m->bytes_received, e->u.close.bytes_received);
        flows_add32(&m->retransmits, e->u.close.retransmits);
        if (e->u.close.reset != EVENT_RESET_NONE)
            flows_add32(&m->resets, 1);
        return;
    }
    flows_add32(&m->connections, 1);
    if (e->status == EVENT_STATUS_ESTABLISHED) {
        flows_add32(&m->established, 1);
        flows_add32(&m->hist[hist_bucket(e->u.conn.latency_ns)], 1);
    } else if (e->status == EVENT_STATUS_FAILED) {
        flows_add32(&m->failed, 1);
        flows_minute_error_add(m, flows_errtab_id(&f->errtab, error_name(f, e)), 1);
    }
}

static void series_key(const struct flows_key *k, struct flows_key *out);
static void series_count(struct flows *f, const struct add_plan *p, const struct event *e);
static void drop_count(struct flows *f, const struct event *e);

/* What goes into a bucket: an event (minute_count()) or a peer's minute (flows_minute_merge()). */
typedef void (*fill_fn)(struct flows *f, struct flows_minute *m, const void *what);

static void fill_event(struct flows *f, struct flows_minute *m, const void *e)
{
    minute_count(f, m, e);
}

/*
 * Counts what (fill's) in a minute *np holds only compacted, or in a new bucket
 * (made room for first, which may free the edge itself: *np follows). 0 or
 * -ENOMEM.
 */
static int add_elsewhere(struct flows *f, struct flows_node **np, const struct add_plan *p,
                         uint32_t minute, fill_fn fill, const void *what)
{
    struct flows_node *n = *np;
    bool to_cold = n->start < n->count && minute < n->minutes[n->start].minute;
    bool exists = to_cold && cold_has(f, n, minute);
    struct flows_minute one = {.minute = minute}, *m;

    if (!exists && f->ring_len == f->ring_cap) {
        bool gone = f->ring[f->ring_head] == n && node_buckets(n) == 1;
        ring_pop(f);
        f->stats.evicted_full++;
        if (gone && (n = *np = node_get(f, p)) == NULL)
            return -ENOMEM;
    }
    if (to_cold) {
        fill(f, &one, what);
        if (cold_put(f, n, &one) < 0)
            goto fail;
        if (!exists) {
            n->cold++;
            ring_push(f, n);
        }
        return 0;
    }
    if (n->start == n->count || minute > n->minutes[n->count - 1].minute)
        node_cool(f, n, minute);
    if ((m = minute_get(f, n, minute)) == NULL)
        goto fail;
    fill(f, m, what);
    return 0;
fail:
    if (node_buckets(n) == 0)
        node_unlink(f, n);
    return -ENOMEM;
}

/* Plans e (see struct add_plan); drops are counted here, as they need no edge. */
static void add_plan(struct flows *f, const struct event *e, uint64_t now_ns, struct add_plan *p)
{
    p->counts = p->unnamed = false;
    if (e->type == EVENT_PACKET_DROP && f->max_series > 0)
        drop_count(f, e);
    if (!counts(e) || e->timestamp_ns == 0 || e->timestamp_ns / NS_PER_MIN > UINT32_MAX ||
        (now_ns > f->retention_ns && e->timestamp_ns < now_ns - f->retention_ns))
        return;
    key_from_event(f, e, &p->k);
    /* A command the string table refused names no edge: counted, not an unnamed process. */
    p->unnamed = p->k.src.workload == NULL;
    p->counts = !p->unnamed;
    if (p->unnamed)
        return;
    p->hsrc = names_hash(&p->k.src);
    p->hdst = names_hash(&p->k.dst);
    p->hnode = node_hash(p->hsrc, p->hdst, &p->k);
    if (f->max_series > 0) {
        struct flows_key sk;
        series_key(&p->k, &sk);
        p->hseries = key_hash(&sk);
    }
}

static void add_one(struct flows *f, const struct event *e, const struct add_plan *p)
{
    if (p->unnamed) {
        f->stats.failed++;
        return;
    }
    if (!p->counts) {
        f->stats.ignored++;
        return;
    }
    uint32_t minute = (uint32_t)(e->timestamp_ns / NS_PER_MIN);
    struct flows_node *n = node_get(f, p);
    struct flows_minute *m = n != NULL ? minute_find(n, minute) : NULL;
    if (n == NULL || (m == NULL && add_elsewhere(f, &n, p, minute, fill_event, e) < 0)) {
        f->stats.failed++;
        return;
    }
    if (m != NULL)
        minute_count(f, m, e);
    f->stats.events++;
    if (f->max_series > 0)
        series_count(f, p, e);
}

/*
 * Adding in groups: an event's edge costs a few dependent cache misses in a
 * large table (its slot, the edge, the edge's newest minute; its /metrics
 * series' slot and entry). Taken one event at a time they are paid one after
 * the other; here a group is planned first and walks those chains level by
 * level, only prefetching, so the misses of the group overlap; then its
 * events are added one by one, finding everything again (the prefetches are
 * hints: an edge the group itself makes or frees is simply looked up). 64
 * events a group: in bench_aggregator_ingest, flows cost about 10% less per
 * event than with 16 (a batch is 100 events; the plans take 13 KiB of stack).
 */
#define FLOWS_ADD_GROUP 64

static void prefetch_group(const struct flows *f, const struct add_plan *p, size_t n)
{
    const struct flows_node *slot[FLOWS_ADD_GROUP] = {0};
    uint64_t series[FLOWS_ADD_GROUP] = {0};
    const struct flows_result *sr = &f->series;

    for (size_t i = 0; i < n; i++) {
        if (!p[i].counts)
            continue;
        /* Looking the names up here, not only in node_get(), is measurably faster (it
         * brings them into the cache while the slots' prefetches are on their way). */
        if (names_find(f, &p[i].k.src, p[i].hsrc) != NULL &&
            names_find(f, &p[i].k.dst, p[i].hdst) != NULL) {
            slot[i] = (const void *)&f->table[p[i].hnode & (f->table_cap - 1)];
            __builtin_prefetch(slot[i]);
        }
        if (f->max_series > 0 && sr->index_cap > 0)
            __builtin_prefetch(&sr->index[p[i].hseries & (sr->index_cap - 1)]);
    }
    for (size_t i = 0; i < n; i++) {
        if (!p[i].counts)
            continue;
        if (slot[i] && (slot[i] = *(struct flows_node *const *)slot[i]) != NULL)
            __builtin_prefetch(slot[i]);
        if (f->max_series > 0 && sr->index_cap > 0 &&
            (series[i] = sr->index[p[i].hseries & (sr->index_cap - 1)]) != 0 &&
            index_may_be(series[i], p[i].hseries))
            for (size_t off = 0; off < sizeof(struct flows_key); off += 64)
                __builtin_prefetch((const char *)&sr->edges[index_pos(series[i])] + off);
    }
    for (size_t i = 0; i < n; i++)
        if (slot[i] != NULL && slot[i]->count > 0)
            __builtin_prefetch(&slot[i]->minutes[slot[i]->count - 1], 1);
}

static void series_expire(struct flows *f, uint64_t now_ns);

void flows_add(struct flows *f, const struct event *events, size_t n, uint64_t now_ns)
{
    struct add_plan plan[FLOWS_ADD_GROUP];

    pthread_mutex_lock(&f->lock);
    expire(f, now_ns);
    series_expire(f, now_ns);
    for (size_t g = 0; g < n; g += FLOWS_ADD_GROUP) {
        size_t m = n - g < FLOWS_ADD_GROUP ? n - g : FLOWS_ADD_GROUP;
        for (size_t i = 0; i < m; i++)
            add_plan(f, &events[g + i], now_ns, &plan[i]);
        prefetch_group(f, plan, m);
        for (size_t i = 0; i < m; i++)
            add_one(f, &events[g + i], &plan[i]);
    }
    pthread_mutex_unlock(&f->lock);
}

uint64_t flows_bytes_recount(struct flows *f)
{
    pthread_mutex_lock(&f->lock);
    uint64_t b = f->ring_cap * sizeof(*f->ring) + f->table_cap * sizeof(*f->table) +
                 f->names_cap * sizeof(*f->names);
    for (size_t i = 0; i < f->table_cap; i++)
        for (const struct flows_node *n = f->table[i]; n != NULL; n = n->next)
            b += node_bytes(n);
    for (size_t i = 0; i < f->names_cap; i++)
        for (const struct flows_names *n = f->names[i]; n != NULL; n = n->next)
            b += sizeof(*n);
    pthread_mutex_unlock(&f->lock);
    return b;
}

void flows_get_stats(struct flows *f, struct flows_stats *out)
{
    pthread_mutex_lock(&f->lock);
    *out = f->stats;
    out->edges = f->nodes;
    out->edge_minutes = f->ring_len;
    out->bytes = f->held;
    pthread_mutex_unlock(&f->lock);
}

void flows_stats_json(struct flows *f, struct buf *out)
{
    struct flows_stats st;

    flows_get_stats(f, &st);
    buf_printf(out,
               "{\"edges\":%" PRIu64 ",\"edge_minutes\":%" PRIu64 ",\"bytes\":%" PRIu64
               ",\"capacity\":%" PRIu64 ",\"evicted_full\":%" PRIu64 ",\"evicted_age\":%" PRIu64
               ",\"events\":%" PRIu64 ",\"ignored\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
               st.edges, st.edge_minutes, st.bytes, st.capacity, st.evicted_full, st.evicted_age,
               st.events, st.ignored, st.failed);
}

void flows_stats_metrics(struct flows *f, const char *prefix, struct buf *b)
{
    struct flows_stats st;
    char n[96];

    flows_get_stats(f, &st);
    snprintf(n, sizeof(n), "%s_flow_buckets", prefix);
    api_metric(b, n, "gauge",
               "Per-minute flow buckets (edge-minutes) held for /api/flows, of FLOW_MAX_EDGES.",
               st.edge_minutes);
    snprintf(n, sizeof(n), "%s_flow_bytes", prefix);
    api_metric(b, n, "gauge", "Memory the flow buckets take, as allocated.", st.bytes);
    snprintf(n, sizeof(n), "%s_flow_evicted_total", prefix);
    api_metric_header(
        b, n, "counter",
        "Flow buckets evicted, by limit (FLOW_MAX_EDGES: full, FLOW_RETENTION: age).");
    api_metric_labelled(b, n, "reason", "full", st.evicted_full);
    api_metric_labelled(b, n, "reason", "age", st.evicted_age);
    snprintf(n, sizeof(n), "%s_flow_failed_total", prefix);
    api_metric(b, n, "counter",
               "Events not counted into the flows for want of memory or of a name (the string "
               "table full).",
               st.failed);
}

size_t flows_minute_bytes(void)
{
    return sizeof(struct flows_minute) + sizeof(struct flows_node *);
}

/* ---- counts ---- */

/* Connections neither established nor failed: UDP connects (no handshake to wait for). */
static uint64_t counts_attempted(const struct flows_counts *c)
{
    return c->connections > c->established + c->failed ? c->connections - c->established - c->failed
                                                       : 0;
}

static void counts_error_add(struct flows_counts *c, const char *error, uint64_t v)
{
    if (v == 0)
        return;
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS; i++) {
        if (c->errors[i].error == NULL)
            c->errors[i].error = error;
        if (c->errors[i].error == error) {
            flows_add64(&c->errors[i].count, v);
            return;
        }
    }
    flows_add64(&c->errors_other, v);
}

static void seen_merge(struct flows_counts *c, uint64_t first, uint64_t last)
{
    if (first != 0 && (c->first_seen_ns == 0 || first < c->first_seen_ns))
        c->first_seen_ns = first;
    if (last > c->last_seen_ns)
        c->last_seen_ns = last;
}

/*
 * Adds a minute of f (whose table names its failure causes) to counts that
 * hold only f's own minutes (an edge's, a series'), never a peer's. Its
 * 32-bit counts are summed with plain adds, which the compiler vectorizes:
 * a sum of fewer than 2^32 of them cannot pass 2^64, and one edge has one
 * minute per minute of retention (the hot ones, or an hour's total in their
 * place). Its byte counts are 64-bit and saturate.
 */
static void counts_add_minute(const struct flows *f, struct flows_counts *c,
                              const struct flows_minute *m)
{
    c->connections += m->connections;
    c->established += m->established;
    c->failed += m->failed;
    c->resets += m->resets;
    c->retransmits += m->retransmits;
    flows_add64(&c->bytes_sent, m->bytes_sent);
    flows_add64(&c->bytes_received, m->bytes_received);
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && m->errors[i] != 0; i++)
        counts_error_add(c, f->errtab.names[m->errors[i] - 1], m->error_counts[i]);
    c->errors_other += m->errors_other;
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        c->hist[i] += m->hist[i];
    seen_merge(c, m->first_seen_ns, m->last_seen_ns);
}

static void counts_add(struct flows_counts *c, const struct flows_counts *o)
{
    flows_add64(&c->connections, o->connections);
    flows_add64(&c->established, o->established);
    flows_add64(&c->failed, o->failed);
    flows_add64(&c->resets, o->resets);
    flows_add64(&c->retransmits, o->retransmits);
    flows_add64(&c->bytes_sent, o->bytes_sent);
    flows_add64(&c->bytes_received, o->bytes_received);
    flows_add64(&c->latency_sum_ns, o->latency_sum_ns);
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && o->errors[i].error != NULL; i++)
        counts_error_add(c, o->errors[i].error, o->errors[i].count);
    flows_add64(&c->errors_other, o->errors_other);
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        flows_add64(&c->hist[i], o->hist[i]);
    seen_merge(c, o->first_seen_ns, o->last_seen_ns);
}

uint64_t flows_hist_percentile(const uint64_t hist[FLOWS_HIST_BUCKETS], unsigned p)
{
    uint64_t total = 0, seen = 0;

    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        total += hist[i];
    if (total == 0 || p == 0)
        return 0;
    /* The rank of the p-th percentile, rounded up: at least 1. */
    uint64_t rank = (total / 100) * p + ((total % 100) * p + 99) / 100;
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank)
            return 1ull << (i + 10);
    }
    return 1ull << (FLOWS_HIST_BUCKETS + 9);
}

/* ---- results ---- */

static int result_reindex(struct flows_result *r, size_t cap)
{
    uint64_t *idx = calloc(cap, sizeof(*idx));

    if (idx == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < r->count; i++) {
        uint64_t h = key_hash(&r->edges[i].key);
        size_t s = h & (cap - 1);
        while (idx[s] != 0)
            s = (s + 1) & (cap - 1);
        idx[s] = index_entry(h, i);
    }
    free(r->index);
    r->index = idx;
    r->index_cap = cap;
    return 0;
}

/* flows_result_add() of an edge whose key_hash() is h. */
static int result_add_hashed(struct flows_result *r, const struct flows_edge *e, uint64_t h)
{
    if ((r->count + 1) * 2 > r->index_cap &&
        result_reindex(r, r->index_cap ? r->index_cap * 2 : 64) < 0)
        return -ENOMEM;
    size_t s = h & (r->index_cap - 1);
    for (; r->index[s] != 0; s = (s + 1) & (r->index_cap - 1)) {
        struct flows_edge *have = &r->edges[index_pos(r->index[s])];
        if (index_may_be(r->index[s], h) && key_equal(&have->key, &e->key)) {
            counts_add(&have->c, &e->c);
            return 0;
        }
    }
    if (r->count == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct flows_edge *p = realloc(r->edges, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        r->edges = p;
        r->cap = cap;
    }
    r->edges[r->count] = *e;
    r->index[s] = index_entry(h, r->count++);
    return 0;
}

int flows_result_add(struct flows_result *r, const struct flows_edge *e)
{
    return result_add_hashed(r, e, key_hash(&e->key));
}

static bool str_match(const char *filter, const char *s)
{
    return filter == NULL || filter == s;
}

/* Whether name (NULL: none) is shown as text, q's workload holding a U+FFFD. */
static bool shown_as(const char *name, const char *text)
{
    return name != NULL && buf_utf8_shows_as(name, strlen(name), text, strlen(text));
}

static bool key_match(const struct flows_query *q, const struct flows_key *k)
{
    if (q->protocol != 0 && k->protocol != q->protocol)
        return false;
    if (q->namespace != NULL && k->src.namespace != q->namespace &&
        k->dst.namespace != q->namespace)
        return false;
    if (q->workload != NULL && k->src.workload != q->workload && k->dst.workload != q->workload &&
        !(q->workload_shown &&
          (shown_as(k->src.workload, q->workload) || shown_as(k->dst.workload, q->workload))))
        return false;
    return str_match(q->node, k->src.node) || q->node == k->dst.node;
}

static bool status_match(uint8_t status, const struct flows_counts *c)
{
    switch (status) {
    case EVENT_STATUS_ESTABLISHED:
        return c->established > 0;
    case EVENT_STATUS_FAILED:
        return c->failed > 0;
    case EVENT_STATUS_ATTEMPTED:
        return c->connections > c->established + c->failed;
    default:
        return true;
    }
}

/* The first live bucket of n at or after minute lo (buckets are sorted). */
static uint32_t minute_lower_bound(const struct flows_node *n, uint64_t lo)
{
    uint32_t a = n->start, b = n->count;
    while (a < b) {
        uint32_t mid = a + (b - a) / 2;
        if (n->minutes[mid].minute < lo)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

/* What flows_seg_each() calls back with, to add compacted minutes. */
struct cold_counter {
    const struct flows *f;
    struct flows_counts *c;
};

static void count_minute(void *ctx, const struct flows_minute *m)
{
    const struct cold_counter *cc = ctx;
    counts_add_minute(cc->f, cc->c, m);
}

/*
 * Adds n's compacted minutes in [lo, hi]: an hour whose records all fall
 * inside by its total (also the current hour of a window ending now).
 */
static void cold_count(struct flows *f, const struct flows_node *n, uint64_t lo, uint64_t hi,
                       struct flows_counts *c)
{
    for (uint32_t i = 0; i < n->nsegs; i++) {
        const struct flows_seg *seg = &n->segs[i];
        uint64_t first = seg->total.minute, last = seg->last_minute;
        if (last < lo || first > hi)
            continue;
        if ((first >= lo || flows_seg_first_minute(seg) >= lo) && last <= hi)
            counts_add_minute(f, c, &seg->total);
        else
            flows_seg_each(seg, &f->errtab, lo, hi, count_minute,
                           &(struct cold_counter){.f = f, .c = c});
    }
}

/* Adds n's minutes in [lo, hi] to out as one edge of q's grouping, if it matches q. */
static int edge_count(struct flows *f, const struct flows_node *n, const struct flows_query *q,
                      uint64_t lo, uint64_t hi, struct flows_result *out)
{
    struct flows_edge e = {0};
    struct flows_key k;

    node_key_expand(&n->key, &k);
    if (!key_match(q, &k))
        return 0;
    cold_count(f, n, lo, hi, &e.c);
    for (uint32_t i = minute_lower_bound(n, lo); i < n->count && n->minutes[i].minute <= hi; i++)
        counts_add_minute(f, &e.c, &n->minutes[i]);
    if (e.c.first_seen_ns == 0)
        return 0;
    key_project(&k, q->group_by, &e.key);
    return flows_result_add(out, &e);
}

/*
 * The lock is taken for FLOWS_QUERY_STEP edges at a time, so ingest waits
 * for a step, not for the whole query. The query walks slices of the hash:
 * slice s is every edge whose hash is s modulo the table's size when the
 * query began. The table only grows, by doubling, so slice s is buckets s,
 * s + slices, s + 2 slices... whatever happened in between: an edge, whose
 * hash never changes, is read exactly once, as it stands when its slice is
 * read (edges made meanwhile in slices already read are not).
 */
int flows_query(struct flows *f, const struct flows_query *q, struct flows_result *out)
{
    uint64_t lo = q->since_ns / NS_PER_MIN, hi = q->until_ns / NS_PER_MIN;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&f->lock);
    size_t slices = f->table_cap;
    for (size_t s = 0; s < slices && rc == 0;) {
        for (size_t step = 0; s < slices && step < FLOWS_QUERY_STEP && rc == 0; s++)
            for (size_t b = s; b < f->table_cap && rc == 0; b += slices)
                for (struct flows_node *n = f->table[b]; n != NULL && rc == 0; n = n->next, step++)
                    rc = edge_count(f, n, q, lo, hi, out);
        if (s < slices && rc == 0) {
            void (*yield)(void *) = f->query_yield;
            void *ctx = f->query_yield_ctx;
            pthread_mutex_unlock(&f->lock);
            if (yield != NULL)
                yield(ctx);
            pthread_mutex_lock(&f->lock);
        }
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

void flows_set_query_yield(struct flows *f, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&f->lock);
    f->query_yield = fn;
    f->query_yield_ctx = ctx;
    pthread_mutex_unlock(&f->lock);
}

static int str_cmp(const char *a, const char *b)
{
    if (a == b)
        return 0;
    if (a == NULL || b == NULL)
        return a == NULL ? -1 : 1;
    return strcmp(a, b);
}

static int endpoint_cmp(const struct flows_endpoint *a, const struct flows_endpoint *b)
{
    const char *sa[] = {a->namespace, a->workload, a->workload_kind, a->pod, a->node,
                        a->service,   a->dns};
    const char *sb[] = {b->namespace, b->workload, b->workload_kind, b->pod, b->node,
                        b->service,   b->dns};
    for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++) {
        int c = str_cmp(sa[i], sb[i]);
        if (c != 0)
            return c;
    }
    if (a->family != b->family)
        return a->family < b->family ? -1 : 1;
    return memcmp(a->ip, b->ip, 16);
}

/* Most connections first, then most bytes, then by key: the same order on every replica. */
static int edge_cmp(const void *pa, const void *pb)
{
    const struct flows_edge *a = pa, *b = pb;
    uint64_t ba = a->c.bytes_sent + a->c.bytes_received, bb = b->c.bytes_sent + b->c.bytes_received;
    int c;

    if (a->c.connections != b->c.connections)
        return a->c.connections > b->c.connections ? -1 : 1;
    if (ba != bb)
        return ba > bb ? -1 : 1;
    if ((c = endpoint_cmp(&a->key.src, &b->key.src)) != 0)
        return c;
    if ((c = endpoint_cmp(&a->key.dst, &b->key.dst)) != 0)
        return c;
    if (a->key.port != b->key.port)
        return a->key.port < b->key.port ? -1 : 1;
    return (int)a->key.protocol - (int)b->key.protocol;
}

void flows_result_finish(struct flows_result *r, uint8_t status, uint32_t limit)
{
    if (status != EVENT_STATUS_NONE) {
        size_t kept = 0;
        for (size_t i = 0; i < r->count; i++)
            if (status_match(status, &r->edges[i].c))
                r->edges[kept++] = r->edges[i];
        r->count = kept;
    }
    if (r->count > 1)
        qsort(r->edges, r->count, sizeof(*r->edges), edge_cmp);
    r->total = r->count;
    if (r->count > limit)
        r->count = limit;
    /* The order changed: the index no longer applies. */
    free(r->index);
    r->index = NULL;
    r->index_cap = 0;
}

void flows_result_free(struct flows_result *r)
{
    free(r->edges);
    free(r->index);
    memset(r, 0, sizeof(*r));
}

/* ---- /metrics series ---- */

void flows_series_enable(struct flows *f, size_t max_series, uint64_t stale_after_ns)
{
    pthread_mutex_lock(&f->lock);
    f->max_series = max_series;
    f->series_stale_ns = stale_after_ns;
    pthread_mutex_unlock(&f->lock);
}

void flows_series_set_alive(struct flows *f, flows_alive_fn alive, void *ctx)
{
    pthread_mutex_lock(&f->lock);
    f->series_alive = alive;
    f->series_alive_ctx = ctx;
    pthread_mutex_unlock(&f->lock);
}

/* Whether r holds key k, whose key_hash() is h. */
/* r's edge of key k, whose key_hash() is h, or NULL. */
static struct flows_edge *result_find(const struct flows_result *r, const struct flows_key *k,
                                      uint64_t h)
{
    if (r->index_cap == 0)
        return NULL;
    for (size_t s = h & (r->index_cap - 1); r->index[s] != 0; s = (s + 1) & (r->index_cap - 1))
        if (index_may_be(r->index[s], h) && key_equal(&r->edges[index_pos(r->index[s])].key, k))
            return &r->edges[index_pos(r->index[s])];
    return NULL;
}

/* The series an event counts in: its labels and nothing else, so no two series look alike. */
static void series_key(const struct flows_key *k, struct flows_key *out)
{
    memset(out, 0, sizeof(*out));
    out->port = k->port;
    out->protocol = k->protocol;
    out->src.namespace = k->src.namespace;
    out->src.workload = k->src.workload;
    out->dst.namespace = k->dst.namespace;
    out->dst.workload = k->dst.workload;
    if (k->dst.workload == NULL) {
        out->dst.family = k->dst.family;
        memcpy(out->dst.ip, k->dst.ip, 16);
    }
}

/*
 * Counts e into a series' counts: what minute_count() and then
 * counts_add_minute() would add, without a minute in between (adding a
 * whole minute for one event reads and writes every histogram bucket of the
 * series), and without failure causes, which the series do not export.
 */
static void series_counts_add(struct flows_counts *c, const struct event *e)
{
    seen_merge(c, e->timestamp_ns, e->timestamp_ns);
    if (e->type == EVENT_CLOSE) {
        flows_add64(&c->bytes_sent, e->u.close.bytes_sent);
        flows_add64(&c->bytes_received, e->u.close.bytes_received);
        c->retransmits += e->u.close.retransmits;
        c->resets += e->u.close.reset != EVENT_RESET_NONE;
        return;
    }
    c->connections++;
    if (e->status == EVENT_STATUS_ESTABLISHED) {
        c->established++;
        c->hist[hist_bucket(e->u.conn.latency_ns)]++;
        flows_add64(&c->latency_sum_ns, e->u.conn.latency_ns);
    } else if (e->status == EVENT_STATUS_FAILED) {
        c->failed++;
    }
}

/* Counts e in its series; p->hseries is the hash of its key. */
static void series_count(struct flows *f, const struct add_plan *p, const struct event *e)
{
    struct flows_key key;
    uint64_t h = p->hseries;

    series_key(&p->k, &key);
    struct flows_edge *have = result_find(&f->series, &key, h);
    if (have == NULL && f->series.count >= f->max_series) {
        /* Past the cap: one series per protocol holds the rest, counted. */
        other_series_key(f, p->k.protocol, &key);
        f->series_folded++;
        have = result_find(&f->series, &key, h = f->other_hash[key.protocol]);
    }
    if (have == NULL) {
        struct flows_edge one = {.key = key};
        if (result_add_hashed(&f->series, &one, h) < 0) {
            f->stats.failed++;
            return;
        }
        have = result_find(&f->series, &key, h);
    }
    series_counts_add(&have->c, e);
}

static void drop_count(struct flows *f, const struct event *e)
{
    struct flows_edge one = {0};

    source_from_event(f, e, &one.key.src);
    one.key.src.pod = NULL;
    one.key.src.node = NULL;
    one.key.src.workload_kind = NULL;
    one.key.dst.workload = e->u.drop.reason != NULL ? e->u.drop.reason : f->unknown;
    if (f->drops.count >= f->max_series && !result_find(&f->drops, &one.key, key_hash(&one.key))) {
        one.key.src.namespace = one.key.src.workload = f->other;
        f->drops_folded++;
    }
    one.c.connections = 1;
    one.c.first_seen_ns = one.c.last_seen_ns = e->timestamp_ns;
    if (flows_result_add(&f->drops, &one) < 0)
        f->stats.failed++;
}

/* A Kubernetes workload endpoint that no longer runs (series_alive); the "~other" fold never. */
static bool endpoint_gone(const struct flows *f, const struct flows_endpoint *ep, uint64_t now_ns)
{
    if (ep->namespace == NULL || ep->workload == NULL || ep->workload == f->other)
        return false;
    return !f->series_alive(f->series_alive_ctx, ep->namespace, ep->workload, now_ns);
}

/*
 * Drops the entries of r last counted into before old, and those before quiet
 * whose workload is gone (either end; the source only for drops, whose
 * destination is a reason): all of those without series_alive. Returns how many.
 */
static size_t result_drop_before(const struct flows *f, struct flows_result *r, uint64_t quiet,
                                 uint64_t old, bool drops, uint64_t now_ns)
{
    size_t kept = 0, n = r->count;

    for (size_t i = 0; i < n; i++) {
        const struct flows_edge *e = &r->edges[i];
        uint64_t seen = e->c.last_seen_ns;
        bool gone =
            seen < old ||
            (seen < quiet && (f->series_alive == NULL || endpoint_gone(f, &e->key.src, now_ns) ||
                              (!drops && endpoint_gone(f, &e->key.dst, now_ns))));
        if (!gone)
            r->edges[kept++] = r->edges[i];
    }
    r->count = kept;
    if (kept < n && result_reindex(r, r->index_cap) < 0) {
        /* Out of memory for the index: the series start over (counters reset, which
         * Prometheus handles) rather than being looked up wrongly. */
        r->count = 0;
        memset(r->index, 0, r->index_cap * sizeof(*r->index));
        return n;
    }
    return n - kept;
}

/* Once a minute: series of workloads gone for STALE_AFTER go away (SPEC §8; series_alive). */
static void series_expire(struct flows *f, uint64_t now_ns)
{
    uint64_t minute = now_ns / NS_PER_MIN;

    if (f->max_series == 0 || f->series_stale_ns == 0 || minute == f->series_swept_min ||
        now_ns < f->series_stale_ns)
        return;
    f->series_swept_min = minute;
    uint64_t quiet = now_ns - f->series_stale_ns;
    uint64_t old = now_ns > f->retention_ns ? now_ns - f->retention_ns : 0;
    f->series_removed += result_drop_before(f, &f->series, quiet, old, false, now_ns);
    f->series_removed += result_drop_before(f, &f->drops, quiet, old, true, now_ns);
}

static void label_value(struct buf *b, const char *name, const char *v, bool first)
{
    buf_printf(b, "%s%s=\"", first ? "" : ",", name);
    api_label_escape(b, v != NULL ? v : "");
    buf_putc(b, '"');
}

static void series_labels(struct buf *b, const struct flows_key *k)
{
    char ip[INET6_ADDRSTRLEN + 1], port[8], proto[8];
    const char *pn = event_protocol_name(k->protocol);

    snprintf(port, sizeof(port), "%u", k->port);
    snprintf(proto, sizeof(proto), "%u", k->protocol);
    label_value(b, "src_namespace", k->src.namespace, true);
    label_value(b, "src_workload", k->src.workload, false);
    label_value(b, "dst_namespace", k->dst.namespace, false);
    label_value(b, "dst_workload",
                k->dst.workload != NULL ? k->dst.workload
                : k->dst.family != EVENT_FAMILY_NONE
                    ? event_addr_str(k->dst.family, k->dst.ip, ip, sizeof(ip))
                    : NULL,
                false);
    label_value(b, "dst_port", port, false);
    label_value(b, "protocol", pn != NULL ? pn : proto, false);
}

static void series_family(struct buf *b, const struct flows_result *r, const char *name,
                          const char *help, size_t field)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i < r->count; i++) {
        const struct flows_edge *e = &r->edges[i];
        uint64_t v;
        memcpy(&v, (const char *)&e->c + field, sizeof(v));
        buf_printf(b, "%s{", name);
        series_labels(b, &e->key);
        buf_printf(b, "} %" PRIu64 "\n", v);
    }
}

/* Nanoseconds as decimal seconds, exactly (a double would round 2^31 ns). */
static void buf_seconds(struct buf *b, uint64_t ns)
{
    buf_printf(b, "%" PRIu64 ".%09" PRIu64, ns / 1000000000u, ns % 1000000000u);
}

/*
 * The connect latency of each series as a Prometheus histogram: every
 * second log2 bucket bound of the flows histogram as an `le`, so counts
 * are exact (no bucket is split), and each bound is written exactly.
 */
static void latency_histograms(struct buf *b, const struct flows_result *r)
{
    const char *name = "ebpf_flow_connect_latency_seconds";

    buf_printf(b, "# HELP %s Connect latency of established connections.\n# TYPE %s histogram\n",
               name, name);
    for (size_t i = 0; i < r->count; i++) {
        const struct flows_counts *c = &r->edges[i].c;
        uint64_t cum = 0;
        for (size_t k = 0; k < FLOWS_HIST_BUCKETS; k++) {
            cum += c->hist[k];
            if (k % 2 == 0 || k == FLOWS_HIST_BUCKETS - 1)
                continue;
            buf_printf(b, "%s_bucket{", name);
            series_labels(b, &r->edges[i].key);
            buf_puts(b, ",le=\"");
            buf_seconds(b, 1ull << (k + 10));
            buf_printf(b, "\"} %" PRIu64 "\n", cum);
        }
        buf_printf(b, "%s_bucket{", name);
        series_labels(b, &r->edges[i].key);
        buf_printf(b, ",le=\"+Inf\"} %" PRIu64 "\n%s_sum{", c->established, name);
        series_labels(b, &r->edges[i].key);
        buf_puts(b, "} ");
        buf_seconds(b, c->latency_sum_ns);
        buf_printf(b, "\n%s_count{", name);
        series_labels(b, &r->edges[i].key);
        buf_printf(b, "} %" PRIu64 "\n", c->established);
    }
}

static void drop_series(struct buf *b, const struct flows_result *r)
{
    const char *name = "ebpf_flow_workload_drops_total";

    buf_printf(b,
               "# HELP %s Packet-drop events by the workload whose socket lost the packet and the "
               "kernel's reason (drops the agent rate-limited away are not attributed).\n"
               "# TYPE %s counter\n",
               name, name);
    for (size_t i = 0; i < r->count; i++) {
        const struct flows_key *k = &r->edges[i].key;
        buf_printf(b, "%s{", name);
        label_value(b, "namespace", k->src.namespace, true);
        label_value(b, "workload", k->src.workload, false);
        label_value(b, "reason", k->dst.workload, false);
        buf_printf(b, "} %" PRIu64 "\n", r->edges[i].c.connections);
    }
}

void flows_series_metrics(struct flows *f, struct buf *b)
{
    static const char *const status[] = {"established", "failed", "attempted"};
    const char *name = "ebpf_flow_connections_total";

    pthread_mutex_lock(&f->lock);
    const struct flows_result *r = &f->series;
    buf_printf(b,
               "# HELP %s Connections between workloads seen by this replica, by outcome.\n"
               "# TYPE %s counter\n",
               name, name);
    for (size_t i = 0; i < r->count; i++) {
        const struct flows_counts *c = &r->edges[i].c;
        uint64_t v[] = {c->established, c->failed, counts_attempted(c)};
        for (size_t s = 0; s < 3; s++) {
            buf_printf(b, "%s{", name);
            series_labels(b, &r->edges[i].key);
            buf_printf(b, ",status=\"%s\"} %" PRIu64 "\n", status[s], v[s]);
        }
    }
    series_family(b, r, "ebpf_flow_bytes_sent_total", "Bytes clients sent to servers.",
                  offsetof(struct flows_counts, bytes_sent));
    series_family(b, r, "ebpf_flow_bytes_received_total", "Bytes clients received from servers.",
                  offsetof(struct flows_counts, bytes_received));
    series_family(b, r, "ebpf_flow_retransmits_total", "Segments clients retransmitted.",
                  offsetof(struct flows_counts, retransmits));
    series_family(b, r, "ebpf_flow_resets_total", "Connections that ended with a RST.",
                  offsetof(struct flows_counts, resets));
    latency_histograms(b, r);
    drop_series(b, &f->drops);
    buf_printf(b,
               "# HELP ebpf_flow_series Flow series exported (FLOW_METRICS_MAX_SERIES caps them).\n"
               "# TYPE ebpf_flow_series gauge\nebpf_flow_series %zu\n"
               "# HELP ebpf_flow_series_folded_total Events counted into a ~other series, past "
               "the cap.\n# TYPE ebpf_flow_series_folded_total counter\n"
               "ebpf_flow_series_folded_total %" PRIu64 "\n"
               "# HELP ebpf_flow_series_removed_total Series removed after STALE_AFTER without "
               "events.\n# TYPE ebpf_flow_series_removed_total counter\n"
               "ebpf_flow_series_removed_total %" PRIu64 "\n",
               r->count + f->drops.count, f->series_folded + f->drops_folded, f->series_removed);
    pthread_mutex_unlock(&f->lock);
}

/* ---- JSON ---- */

static void put_str_member(struct buf *b, bool *first, const char *name, const char *v)
{
    if (v == NULL)
        return;
    buf_printf(b, "%s\"%s\":", *first ? "" : ",", name);
    buf_json_cstr(b, v);
    *first = false;
}

static void endpoint_json(struct buf *b, const struct flows_endpoint *e)
{
    bool first = true;
    char ip[INET6_ADDRSTRLEN + 1];

    buf_putc(b, '{');
    put_str_member(b, &first, "namespace", e->namespace);
    put_str_member(b, &first, "workload", e->workload);
    put_str_member(b, &first, "workload_kind", e->workload_kind);
    put_str_member(b, &first, "pod", e->pod);
    put_str_member(b, &first, "node", e->node);
    put_str_member(b, &first, "service", e->service);
    if (e->family != EVENT_FAMILY_NONE)
        put_str_member(b, &first, "ip", event_addr_str(e->family, e->ip, ip, sizeof(ip)));
    put_str_member(b, &first, "dns", e->dns);
    buf_putc(b, '}');
}

static void edge_json(struct buf *b, const struct flows_edge *e)
{
    const struct flows_counts *c = &e->c;
    const char *proto = event_protocol_name(e->key.protocol);
    char t[40];

    buf_puts(b, "{\"source\":");
    endpoint_json(b, &e->key.src);
    buf_puts(b, ",\"destination\":");
    endpoint_json(b, &e->key.dst);
    buf_printf(b, ",\"port\":%u,\"protocol\":", e->key.port);
    if (proto != NULL)
        buf_json_cstr(b, proto);
    else
        buf_printf(b, "\"%u\"", e->key.protocol);
    uint64_t attempted = counts_attempted(c);
    buf_printf(b,
               ",\"connections\":%" PRIu64 ",\"established\":%" PRIu64 ",\"failed\":%" PRIu64
               ",\"attempted\":%" PRIu64 ",\"failed_by_error\":{",
               c->connections, c->established, c->failed, attempted);
    bool first = true;
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && c->errors[i].error != NULL; i++) {
        buf_printf(b, "%s", first ? "" : ",");
        buf_json_cstr(b, c->errors[i].error);
        buf_printf(b, ":%" PRIu64, c->errors[i].count);
        first = false;
    }
    if (c->errors_other > 0)
        buf_printf(b, "%s\"other\":%" PRIu64, first ? "" : ",", c->errors_other);
    buf_printf(b,
               "},\"resets\":%" PRIu64 ",\"retransmits\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
               ",\"bytes_received\":%" PRIu64 ",\"latency_p50_ns\":%" PRIu64
               ",\"latency_p90_ns\":%" PRIu64 ",\"latency_p99_ns\":%" PRIu64,
               c->resets, c->retransmits, c->bytes_sent, c->bytes_received,
               flows_hist_percentile(c->hist, 50), flows_hist_percentile(c->hist, 90),
               flows_hist_percentile(c->hist, 99));
    event_format_time(c->first_seen_ns, t);
    buf_printf(b, ",\"first_seen\":\"%s\"", t);
    event_format_time(c->last_seen_ns, t);
    buf_printf(b, ",\"last_seen\":\"%s\"}", t);
}

void flows_result_json(const struct flows_result *r, struct buf *out)
{
    buf_putc(out, '[');
    for (size_t i = 0; i < r->count; i++) {
        if (i > 0)
            buf_putc(out, ',');
        edge_json(out, &r->edges[i]);
    }
    buf_putc(out, ']');
}

void flows_response_begin(struct buf *out, const struct flows_result *r,
                          const struct flows_query *q, const char *query_time)
{
    char since[40], until[40];
    /* What was counted: every minute the asked window overlaps, whole (flows_query()). */
    uint64_t last = q->until_ns / NS_PER_MIN * NS_PER_MIN;
    uint64_t end = last > UINT64_MAX - (NS_PER_MIN - 1) ? UINT64_MAX : last + NS_PER_MIN - 1;

    event_format_time(q->since_ns / NS_PER_MIN * NS_PER_MIN, since);
    event_format_time(end, until);
    buf_puts(out, "{\"edges\":");
    flows_result_json(r, out);
    buf_printf(out,
               ",\"count\":%zu,\"total_count\":%zu,\"window\":{\"since\":\"%s\",\"until\":"
               "\"%s\"},\"query_time\":",
               r->count, r->total > r->count ? r->total : r->count, since, until);
    buf_json_cstr(out, query_time);
}

/* ---- the exchange form ---- */

static void put_opt_str(struct buf *b, const char *s)
{
    if (s == NULL)
        buf_puts(b, "null");
    else
        buf_json_cstr(b, s);
}

static void endpoint_encode(struct buf *b, const struct flows_endpoint *e)
{
    const char *s[] = {e->namespace, e->workload, e->workload_kind, e->pod, e->node,
                       e->service,   e->dns};
    char ip[INET6_ADDRSTRLEN + 1];

    buf_putc(b, '[');
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
        put_opt_str(b, s[i]);
        buf_putc(b, ',');
    }
    put_opt_str(b, e->family != EVENT_FAMILY_NONE ? event_addr_str(e->family, e->ip, ip, sizeof(ip))
                                                  : NULL);
    buf_putc(b, ']');
}

static void edge_encode(struct buf *out, const struct flows_edge *e)
{
    const struct flows_counts *c = &e->c;
    buf_puts(out, "{\"s\":");
    endpoint_encode(out, &e->key.src);
    buf_puts(out, ",\"d\":");
    endpoint_encode(out, &e->key.dst);
    buf_printf(out,
               ",\"k\":[%u,%u],\"c\":[%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
               ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "],\"e\":{",
               e->key.port, e->key.protocol, c->connections, c->established, c->failed, c->resets,
               c->retransmits, c->bytes_sent, c->bytes_received, c->first_seen_ns, c->last_seen_ns,
               c->errors_other);
    for (size_t j = 0; j < FLOWS_ERROR_SLOTS && c->errors[j].error != NULL; j++) {
        buf_puts(out, j > 0 ? "," : "");
        buf_json_cstr(out, c->errors[j].error);
        buf_printf(out, ":%" PRIu64, c->errors[j].count);
    }
    buf_puts(out, "},\"h\":[");
    /* Sparse: bucket, count pairs. */
    bool first = true;
    for (size_t j = 0; j < FLOWS_HIST_BUCKETS; j++) {
        if (c->hist[j] == 0)
            continue;
        buf_printf(out, "%s%zu,%" PRIu64, first ? "" : ",", j, c->hist[j]);
        first = false;
    }
    buf_puts(out, "]}");
}

void flows_result_encode(const struct flows_result *r, struct buf *out)
{
    buf_puts(out, "{\"edges\":[");
    for (size_t i = 0; i < r->count; i++) {
        buf_puts(out, i > 0 ? "," : "");
        edge_encode(out, &r->edges[i]);
    }
    buf_puts(out, "]}");
}

/* A count a peer sent: a non-negative integer. */
static bool get_count(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* The longest name an edge holds as the exchange writes it (JSON text): an event's longest
 * (EVENT_NAME_MAX bytes; a DNS name's text is shorter), each byte a U+FFFD at worst. Not the
 * filters' bound: a name a peer counted must come through, or its whole answer is refused. */
#define FLOWS_NAME_TEXT_MAX (3 * EVENT_NAME_MAX)
_Static_assert(EVENT_DNS_NAME_MAX <= EVENT_NAME_MAX, "a DNS name is no longer than other names");

/* process: a name a monitored process chose (intern_process_n()). */
static bool get_opt_str(json_t *v, const char **out, bool process)
{
    if (json_is_null(v)) {
        *out = NULL;
        return true;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > FLOWS_NAME_TEXT_MAX ||
        strlen(json_string_value(v)) != json_string_length(v))
        return false;
    *out = process ? intern_process_n(json_string_value(v), json_string_length(v))
                   : intern(json_string_value(v));
    return *out != NULL;
}

static bool endpoint_decode(json_t *a, struct flows_endpoint *e)
{
    const char **s[] = {&e->namespace, &e->workload, &e->workload_kind, &e->pod, &e->node,
                        &e->service,   &e->dns};
    const size_t ns = sizeof(s) / sizeof(s[0]);
    const char *ip;

    if (!json_is_array(a) || json_array_size(a) != ns + 1)
        return false;
    /* The names a process chose: a Process endpoint's (its command) and a resolved one. */
    for (size_t i = 0; i < ns; i++)
        if (i != 1 && !get_opt_str(json_array_get(a, i), s[i], s[i] == &e->dns))
            return false;
    if (!get_opt_str(json_array_get(a, 1), &e->workload,
                     e->workload_kind && strcmp(e->workload_kind, "Process") == 0))
        return false;
    json_t *v = json_array_get(a, ns);
    if (json_is_null(v))
        return true;
    if (!json_is_string(v))
        return false;
    ip = json_string_value(v);
    if (inet_pton(AF_INET, ip, e->ip) == 1)
        e->family = EVENT_FAMILY_IPV4;
    else if (inet_pton(AF_INET6, ip, e->ip) == 1)
        e->family = EVENT_FAMILY_IPV6;
    else
        return false;
    return true;
}

static bool edge_decode(json_t *o, struct flows_edge *e)
{
    json_t *k = json_object_get(o, "k"), *c = json_object_get(o, "c");
    json_t *errs = json_object_get(o, "e"), *h = json_object_get(o, "h");
    uint64_t *cv[] = {&e->c.connections,    &e->c.established,   &e->c.failed,
                      &e->c.resets,         &e->c.retransmits,   &e->c.bytes_sent,
                      &e->c.bytes_received, &e->c.first_seen_ns, &e->c.last_seen_ns,
                      &e->c.errors_other};
    const size_t nc = sizeof(cv) / sizeof(cv[0]);
    uint64_t port, proto;

    memset(e, 0, sizeof(*e));
    if (!json_is_object(o) || json_object_size(o) != 6 || !json_is_array(k) ||
        json_array_size(k) != 2 || !json_is_array(c) || json_array_size(c) != nc ||
        !json_is_object(errs) || json_object_size(errs) > FLOWS_ERROR_SLOTS || !json_is_array(h) ||
        json_array_size(h) > 2 * FLOWS_HIST_BUCKETS || json_array_size(h) % 2 != 0)
        return false;
    if (!endpoint_decode(json_object_get(o, "s"), &e->key.src) ||
        !endpoint_decode(json_object_get(o, "d"), &e->key.dst))
        return false;
    if (!get_count(json_array_get(k, 0), &port) || port > UINT16_MAX ||
        !get_count(json_array_get(k, 1), &proto) || proto > UINT8_MAX)
        return false;
    e->key.port = (uint16_t)port;
    e->key.protocol = (uint8_t)proto;
    for (size_t i = 0; i < nc; i++)
        if (!get_count(json_array_get(c, i), cv[i]))
            return false;
    const char *name;
    json_t *v;
    size_t i = 0;
    json_object_foreach(errs, name, v)
    {
        if (strlen(name) == 0 || strlen(name) > FLOWS_NAME_TEXT_MAX ||
            !get_count(v, &e->c.errors[i].count) || (e->c.errors[i].error = intern(name)) == NULL)
            return false;
        i++;
    }
    for (size_t j = 0; j < json_array_size(h); j += 2) {
        uint64_t bucket, count;
        if (!get_count(json_array_get(h, j), &bucket) || bucket >= FLOWS_HIST_BUCKETS ||
            !get_count(json_array_get(h, j + 1), &count) || e->c.hist[bucket] != 0)
            return false;
        e->c.hist[bucket] = count;
    }
    return true;
}

int flows_result_decode_json(json_t *root, struct flows_result *r)
{
    json_t *edges = json_object_get(root, "edges");
    int rc = 0;

    memset(r, 0, sizeof(*r));
    if (!json_is_array(edges))
        return -EINVAL;
    for (size_t i = 0; i < json_array_size(edges) && rc == 0; i++) {
        struct flows_edge e;
        if (!edge_decode(json_array_get(edges, i), &e))
            rc = -EINVAL;
        else
            rc = flows_result_add(r, &e);
    }
    if (rc == -EINVAL)
        flows_result_free(r);
    return rc;
}

int flows_result_decode(const char *data, size_t len, struct flows_result *r)
{
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    int rc = flows_result_decode_json(root, r);

    json_decref(root);
    return rc;
}

/* ---- handing a stopping replica's minutes over ---- */

#define HANDOVER_OPEN "{\"minutes\":["

struct handover_enc {
    const struct flows *f;
    struct flows_key k; /* the edge whose minutes go now */
    struct flows_handover_chunk *chunks;
    size_t n, cap, chunk_max, total_max, total;
    uint64_t left;
    struct buf one; /* the minute being added */
    int err;
};

/* Adds one minute of h->k to the last chunk, or to a new one, or counts it left out. */
static void handover_put(struct handover_enc *h, const struct flows_minute *m)
{
    struct flows_edge e = {.key = h->k};
    counts_add_minute(h->f, &e.c, m);
    buf_reset(&h->one);
    buf_printf(&h->one, "[%" PRIu32 ",", m->minute);
    edge_encode(&h->one, &e);
    buf_putc(&h->one, ']');
    size_t need = h->one.len + 1; /* and a comma */
    if (h->one.oom || sizeof(HANDOVER_OPEN) + need + 2 > h->chunk_max ||
        h->total + need > h->total_max) {
        h->err = h->one.oom ? -ENOMEM : h->err;
        h->left++;
        return;
    }
    struct buf *c = h->n > 0 ? &h->chunks[h->n - 1].json : NULL;
    if (c == NULL || c->len + need + 2 > h->chunk_max) {
        if (h->n == h->cap) {
            size_t cap = h->cap ? h->cap * 2 : 4;
            struct flows_handover_chunk *v = realloc(h->chunks, cap * sizeof(*v));
            if (v == NULL) {
                h->err = -ENOMEM;
                h->left++;
                return;
            }
            h->chunks = v;
            h->cap = cap;
        }
        if (h->n > 0)
            buf_puts(&h->chunks[h->n - 1].json, "]}"); /* the array may have moved */
        h->chunks[h->n].minutes = 0;
        c = &h->chunks[h->n++].json;
        buf_init(c);
        buf_puts(c, HANDOVER_OPEN);
    } else {
        buf_putc(c, ',');
    }
    buf_append(c, h->one.data, h->one.len);
    h->chunks[h->n - 1].minutes++;
    h->total += need;
}

static void handover_put_cold(void *ctx, const struct flows_minute *m)
{
    handover_put(ctx, m);
}

/* A hot minute of an edge, to hand the newest over first. */
struct hot_ref {
    const struct flows_node *n;
    const struct flows_minute *m;
};

static int hot_newer_first(const void *a, const void *b)
{
    uint32_t x = ((const struct hot_ref *)a)->m->minute, y = ((const struct hot_ref *)b)->m->minute;
    return x > y ? -1 : x < y;
}

int flows_handover_encode(struct flows *f, size_t chunk_max, size_t total_max,
                          struct flows_handover_chunk **chunks, size_t *nchunks, uint64_t *left)
{
    struct handover_enc h = {.f = f, .chunk_max = chunk_max, .total_max = total_max};

    buf_init(&h.one);
    pthread_mutex_lock(&f->lock);
    /* The newest first, so a budget keeps what queries ask for most: the edges' hot minutes
     * (each edge's newest FLOWS_HOT_MINUTES) by time, then the compacted hours from the newest
     * back. */
    uint32_t newest_hour = 0, oldest_hour = UINT32_MAX;
    size_t nhot = 0, k = 0;
    for (size_t b = 0; b < f->table_cap; b++)
        for (const struct flows_node *n = f->table[b]; n != NULL; n = n->next)
            nhot += n->count - n->start;
    struct hot_ref *hot = malloc((nhot ? nhot : 1) * sizeof(*hot));
    for (size_t b = 0; b < f->table_cap; b++) {
        for (const struct flows_node *n = f->table[b]; n != NULL; n = n->next) {
            for (uint32_t i = n->start; hot != NULL && i < n->count; i++)
                hot[k++] = (struct hot_ref){.n = n, .m = &n->minutes[i]};
            for (uint32_t i = 0; i < n->nsegs; i++) {
                uint32_t hour = n->segs[i].total.minute;
                newest_hour = hour > newest_hour ? hour : newest_hour;
                oldest_hour = hour < oldest_hour ? hour : oldest_hour;
            }
        }
    }
    if (hot == NULL) {
        h.err = -ENOMEM;
        h.left += nhot;
    } else {
        qsort(hot, k, sizeof(*hot), hot_newer_first);
        for (size_t i = 0; i < k; i++) {
            node_key_expand(&hot[i].n->key, &h.k);
            handover_put(&h, hot[i].m);
        }
        free(hot);
    }
    for (uint32_t hour = newest_hour; oldest_hour <= newest_hour && hour >= oldest_hour;
         hour -= 60) {
        for (size_t b = 0; b < f->table_cap; b++) {
            for (const struct flows_node *n = f->table[b]; n != NULL; n = n->next) {
                for (uint32_t i = 0; i < n->nsegs; i++) {
                    if (n->segs[i].total.minute != hour)
                        continue;
                    node_key_expand(&n->key, &h.k);
                    flows_seg_each(&n->segs[i], &f->errtab, 0, UINT32_MAX, handover_put_cold, &h);
                }
            }
        }
        if (hour < 60)
            break;
    }
    pthread_mutex_unlock(&f->lock);
    buf_free(&h.one);
    for (size_t i = 0; i < h.n; i++) {
        buf_puts(&h.chunks[i].json, i + 1 == h.n ? "]}" : "");
        if (h.chunks[i].json.oom)
            h.err = -ENOMEM;
    }
    *chunks = h.chunks;
    *nchunks = h.n;
    *left = h.left;
    return h.err;
}

void flows_handover_free(struct flows_handover_chunk *chunks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf_free(&chunks[i].json);
    free(chunks);
}

static void fill_minute(struct flows *f, struct flows_minute *m, const void *in)
{
    (void)f;
    flows_minute_merge(m, in);
}

/* A peer's counts of one minute as a bucket of f (its failure causes in f's table). */
static void minute_from_counts(struct flows *f, const struct flows_counts *c, uint32_t minute,
                               struct flows_minute *m)
{
    memset(m, 0, sizeof(*m));
    m->minute = minute;
    flows_add32(&m->connections, c->connections);
    flows_add32(&m->established, c->established);
    flows_add32(&m->failed, c->failed);
    flows_add32(&m->resets, c->resets);
    flows_add32(&m->retransmits, c->retransmits);
    flows_add32(&m->errors_other, c->errors_other);
    m->bytes_sent = c->bytes_sent;
    m->bytes_received = c->bytes_received;
    for (size_t i = 0; i < FLOWS_ERROR_SLOTS && c->errors[i].error != NULL; i++)
        flows_minute_error_add(m, flows_errtab_id(&f->errtab, c->errors[i].error),
                               c->errors[i].count);
    for (size_t i = 0; i < FLOWS_HIST_BUCKETS; i++)
        flows_add32(&m->hist[i], c->hist[i]);
    m->first_seen_ns = c->first_seen_ns;
    m->last_seen_ns = c->last_seen_ns;
}

struct handover_minute {
    struct flows_edge e;
    uint32_t minute;
};

/* A chunk's minutes, all or nothing: -EINVAL when anything in it is malformed. */
static int handover_decode(const char *data, size_t len, struct handover_minute **out, size_t *n)
{
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *list = json_object_get(root, "minutes");
    int rc = 0;

    *out = NULL;
    *n = 0;
    if (!json_is_object(root) || json_object_size(root) != 1 || !json_is_array(list)) {
        json_decref(root);
        return -EINVAL;
    }
    size_t count = json_array_size(list);
    struct handover_minute *v = calloc(count ? count : 1, sizeof(*v));
    for (size_t i = 0; v != NULL && i < count && rc == 0; i++) {
        json_t *item = json_array_get(list, i);
        uint64_t minute;
        if (!json_is_array(item) || json_array_size(item) != 2 ||
            !get_count(json_array_get(item, 0), &minute) || minute > UINT32_MAX ||
            !edge_decode(json_array_get(item, 1), &v[i].e) || v[i].e.c.first_seen_ns == 0 ||
            v[i].e.c.first_seen_ns / NS_PER_MIN != minute ||
            v[i].e.c.last_seen_ns / NS_PER_MIN != minute)
            rc = -EINVAL; /* a minute's events are of that minute */
        else
            v[i].minute = (uint32_t)minute;
    }
    json_decref(root);
    if (v == NULL || rc < 0) {
        free(v);
        return v == NULL ? -ENOMEM : rc;
    }
    *out = v;
    *n = count;
    return 0;
}

int flows_handover_merge(struct flows *f, const char *data, size_t len, uint64_t now_ns,
                         uint64_t *merged)
{
    struct handover_minute *v;
    size_t n;
    int rc = handover_decode(data, len, &v, &n);

    *merged = 0;
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&f->lock);
    expire(f, now_ns);
    uint64_t cutoff = now_ns > f->retention_ns ? (now_ns - f->retention_ns) / NS_PER_MIN : 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].minute < cutoff)
            continue; /* past retention here: it would go at once */
        struct add_plan p = {.k = v[i].e.key, .counts = true};
        struct flows_minute in;
        p.hsrc = names_hash(&p.k.src);
        p.hdst = names_hash(&p.k.dst);
        p.hnode = node_hash(p.hsrc, p.hdst, &p.k);
        minute_from_counts(f, &v[i].e.c, v[i].minute, &in);
        struct flows_node *node = node_get(f, &p);
        struct flows_minute *m = node != NULL ? minute_find(node, v[i].minute) : NULL;
        if (node == NULL ||
            (m == NULL && add_elsewhere(f, &node, &p, v[i].minute, fill_minute, &in) < 0)) {
            f->stats.failed++;
            rc = -ENOMEM;
            continue;
        }
        if (m != NULL)
            flows_minute_merge(m, &in);
        (*merged)++;
    }
    pthread_mutex_unlock(&f->lock);
    free(v);
    return rc;
}

/* ---- the query string ---- */

enum flows_param {
    FP_SINCE,
    FP_UNTIL,
    FP_NAMESPACE,
    FP_WORKLOAD,
    FP_NODE,
    FP_GROUP_BY,
    FP_PROTOCOL,
    FP_STATUS,
    FP_LIMIT,
    FP_COUNT,
};

static const char *const flows_param_names[FP_COUNT] = {
    "since", "until", "namespace", "workload", "node", "group_by", "protocol", "status", "limit",
};

const char flows_name_none[] = "";

/* A filter's name: found in the string table, never added to it (a query is no event). */
static const char *filter_name(const char *v, size_t len)
{
    const char *name = intern_find_n(v, len);

    return name ? name : flows_name_none;
}

/* The workload filter: the name v shows as, interned when an event carried it; a shown text
 * (with a U+FFFD) also matches the names it shows, so it is kept as text when not interned. */
static int workload_filter(struct flows_query *q, const char *v, size_t len, char *err,
                           size_t errlen)
{
    struct buf b;

    buf_init(&b);
    buf_utf8_show(&b, v, len);
    if (b.oom) {
        buf_free(&b);
        return errmsg_set(err, errlen, "out of memory reading 'workload'");
    }
    const char *text = b.data ? b.data : "";

    q->workload_shown = buf_utf8_has_replacement(text);
    q->workload = intern_find_n(text, b.len);
    if (!q->workload && q->workload_shown && b.len < sizeof(q->workload_text)) {
        memcpy(q->workload_text, text, b.len + 1);
        q->workload = q->workload_text;
    }
    if (!q->workload)
        q->workload = flows_name_none;
    buf_free(&b);
    return 0;
}

static int set_param(struct flows_query *q, enum flows_param p, const char *v, size_t len,
                     char *err, size_t errlen)
{
    const char *name = flows_param_names[p];
    char quoted[QUERY_ERR_VALUE_MAX + 4], trimmed[FLOWS_QUERY_STR_MAX];
    uint64_t x;
    int rc;

    /* Numbers, times and keywords are read without surrounding spaces, as /api/events does;
     * names are matched as given. */
    if (p != FP_NAMESPACE && p != FP_WORKLOAD && p != FP_NODE) {
        query_trim(&v, &len);
        memmove(trimmed, v, len);
        trimmed[len] = '\0';
        v = trimmed;
    }
    query_quote(v, len, quoted);
    switch (p) {
    case FP_SINCE:
    case FP_UNTIL:
        if ((rc = query_parse_time(v, len, p == FP_SINCE ? &q->since_ns : &q->until_ns)) < 0) {
            char reason[192];
            return errmsg_set(err, errlen, "invalid '%s': \"%s\" (%s)", name, quoted,
                              query_time_reason(rc, v, len, reason, sizeof(reason)));
        }
        return 0;
    case FP_NAMESPACE:
        q->namespace = filter_name(v, len);
        return 0;
    case FP_WORKLOAD:
        /* Bytes of invalid UTF-8 find the Process they show as (command_name()). */
        return workload_filter(q, v, len, err, errlen);
    case FP_NODE:
        q->node = filter_name(v, len);
        return 0;
    case FP_GROUP_BY:
        if (strcasecmp(v, "workload") == 0)
            q->group_by = FLOWS_GROUP_WORKLOAD;
        else if (strcasecmp(v, "pod") == 0)
            q->group_by = FLOWS_GROUP_POD;
        else if (strcasecmp(v, "service") == 0)
            q->group_by = FLOWS_GROUP_SERVICE;
        else
            return errmsg_set(err, errlen,
                              "invalid 'group_by': \"%s\" (expected workload, pod or service)",
                              quoted);
        return 0;
    case FP_PROTOCOL:
        if (strcasecmp(v, "tcp") == 0)
            q->protocol = 6;
        else if (strcasecmp(v, "udp") == 0)
            q->protocol = 17;
        else
            return errmsg_set(err, errlen, "invalid 'protocol': \"%s\" (expected tcp or udp)",
                              quoted);
        return 0;
    case FP_STATUS:
        for (unsigned s = EVENT_STATUS_ESTABLISHED; s <= EVENT_STATUS_ATTEMPTED; s++)
            if (strcasecmp(v, event_status_name(s)) == 0) {
                q->status = (uint8_t)s;
                return 0;
            }
        return errmsg_set(err, errlen,
                          "invalid 'status': \"%s\" (expected established, failed or attempted)",
                          quoted);
    case FP_LIMIT:
        x = 0;
        for (size_t i = 0; i < len; i++) {
            if (v[i] < '0' || v[i] > '9' || x > FLOWS_MAX_LIMIT)
                return errmsg_set(err, errlen, "invalid 'limit': \"%s\" (expected 1-%u)", quoted,
                                  FLOWS_MAX_LIMIT);
            x = x * 10 + (uint64_t)(v[i] - '0');
        }
        if (x == 0 || x > FLOWS_MAX_LIMIT)
            return errmsg_set(err, errlen, "invalid 'limit': \"%s\" (expected 1-%u)", quoted,
                              FLOWS_MAX_LIMIT);
        q->limit = (uint32_t)x;
        return 0;
    default:
        return -EINVAL;
    }
}

int flows_query_parse(struct flows_query *q, const char *qs, size_t len, uint64_t now_ns, char *err,
                      size_t errlen)
{
    char name[FLOWS_QUERY_STR_MAX], value[FLOWS_QUERY_STR_MAX];
    bool given[FP_COUNT] = {false};
    size_t pos = 0;

    memset(q, 0, sizeof(*q));
    q->limit = FLOWS_DEFAULT_LIMIT;
    while (pos < len) {
        const char *seg = qs + pos;
        const char *amp = memchr(seg, '&', len - pos);
        size_t seglen = amp ? (size_t)(amp - seg) : len - pos;
        pos += seglen + 1;
        if (seglen == 0)
            continue;
        const char *eq = memchr(seg, '=', seglen);
        size_t namelen = eq ? (size_t)(eq - seg) : seglen;
        enum flows_param p = FP_COUNT;
        int nlen = query_form_decode(seg, namelen, name, sizeof(name));
        if (nlen >= 0)
            for (p = 0; p < FP_COUNT; p++)
                if (strcmp(name, flows_param_names[p]) == 0)
                    break;
        if (p == FP_COUNT) {
            char quoted[QUERY_ERR_VALUE_MAX + 4];
            return errmsg_set(err, errlen,
                              "unknown query parameter '%s' (allowed: since, until, namespace, "
                              "workload, node, group_by, protocol, status, limit)",
                              nlen >= 0 ? query_quote(name, (size_t)nlen, quoted)
                                        : query_quote(seg, namelen, quoted));
        }
        if (given[p])
            return errmsg_set(err, errlen, "duplicate query parameter '%s' (give it once)",
                              flows_param_names[p]);
        given[p] = true;
        const char *raw = eq ? eq + 1 : seg + seglen;
        size_t rawlen = (size_t)(seg + seglen - raw);
        int n = query_form_decode(raw, rawlen, value, sizeof(value));
        if (query_decode_error(flows_param_names[p], n, raw, rawlen, sizeof(value), err, errlen) <
            0)
            return -EINVAL;
        if (set_param(q, p, value, (size_t)n, err, errlen) < 0)
            return -EINVAL;
    }
    if (!given[FP_UNTIL])
        q->until_ns = now_ns;
    if (!given[FP_SINCE])
        q->since_ns =
            q->until_ns > FLOWS_DEFAULT_WINDOW_NS ? q->until_ns - FLOWS_DEFAULT_WINDOW_NS : 0;
    if (q->since_ns > q->until_ns)
        return errmsg_set(err, errlen,
                          given[FP_UNTIL] ? "invalid 'since': later than 'until'"
                                          : "invalid 'since': in the future, and the window ends "
                                            "now unless 'until' says otherwise");
    return 0;
}

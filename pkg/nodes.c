/*
 * Per-node accounting for the aggregator, mergeable across replicas.
 *
 * The table is keyed by (node, agent instance). Each record only holds
 * quantities that merge exactly: sums (batches, events), extremes (min and
 * max sequence, last seen) and the loss counters of the batch with the
 * highest sequence (they are cumulative per instance, so the newest batch has
 * the whole story). Lost batches are derived at read time from the merged
 * record, never stored, so merging replicas' tables gives the cluster's gaps.
 *
 * Bounded: when the table is full, the instance seen least recently is
 * evicted (counted in instances_dropped), so live agents keep being tracked
 * after old instances from restarts pile up.
 *
 * Costs stay flat as nodes pile up: a hash table that doubles with the
 * records (a lookup per batch), and a min-heap by last seen for eviction
 * (O(log n) per batch, instead of a scan of the table per new instance once
 * full). The API view sorts the records once per request.
 */
#include "nodes.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "event_json.h"

/*
 * Counters saturate here: replicas exchange them as JSON integers, which
 * readers (jansson, JavaScript) hold as signed 64-bit at most, and a peer may
 * claim anything up to it.
 */
#define NODES_COUNTER_MAX ((uint64_t)INT64_MAX)
#define NODES_NAME_MAX    1024 /* bytes of a node, instance or pod name from a peer */

static uint64_t sat(uint64_t v)
{
    return v > NODES_COUNTER_MAX ? NODES_COUNTER_MAX : v;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    a = sat(a);
    b = sat(b);
    return a > NODES_COUNTER_MAX - b ? NODES_COUNTER_MAX : a + b;
}

struct inst {
    struct inst *next; /* hash chain */
    uint64_t hash;
    size_t heap_pos; /* in nodes.heap */
    char *node;      /* owned */
    char *instance;  /* owned */
    char *pod_name;  /* owned, NULL when unknown */
    char *pod_namespace;
    uint64_t batches, events;
    uint64_t min_seq, max_seq; /* 0 = no sequenced batch yet */
    uint64_t kernel_drops, agent_drops, kernel_missed;
    uint64_t last_seen_ns;
};

struct nodes {
    pthread_mutex_t lock;
    struct inst **buckets;
    size_t nbuckets;    /* power of two; doubled when count passes it */
    struct inst **heap; /* min-heap by last_seen_ns: heap[0] is evicted first */
    size_t count, max;  /* count records, in the buckets and the heap */
    uint64_t dropped;
    uint64_t heard_since_ns; /* nodes_set_heard_since(); 0 = not set */
};

#define NODES_MIN_BUCKETS 16

struct nodes *nodes_new(size_t max_instances)
{
    struct nodes *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->max = max_instances ? max_instances : 1;
    t->nbuckets = NODES_MIN_BUCKETS;
    if (!(t->buckets = calloc(t->nbuckets, sizeof(*t->buckets)))) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    return t;
}

static void inst_free(struct inst *r)
{
    free(r->node);
    free(r->instance);
    free(r->pod_name);
    free(r->pod_namespace);
    free(r);
}

void nodes_free(struct nodes *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct inst *r = t->buckets[i], *next; r; r = next) {
            next = r->next;
            inst_free(r);
        }
    }
    free(t->buckets);
    free(t->heap);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull; /* FNV-1a */
    return (h ^ 0xff) * 0x100000001b3ull;
}

static uint64_t hash_key(const char *node, const char *instance)
{
    uint64_t h = hash_str(hash_str(0xcbf29ce484222325ull, node), instance);
    return (h ^ (h >> 29)) * 0x9e3779b97f4a7c15ull; /* FNV's low bits are weak */
}

static struct inst **slot(struct nodes *t, uint64_t h, const char *node, const char *instance)
{
    struct inst **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp &&
           ((*pp)->hash != h || strcmp((*pp)->node, node) || strcmp((*pp)->instance, instance)))
        pp = &(*pp)->next;
    return pp;
}

/* Doubles the buckets (keeps the old ones when out of memory: only chains grow). */
static void grow_buckets(struct nodes *t)
{
    size_t n = t->nbuckets * 2;
    struct inst **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct inst *r = t->buckets[i], *next; r; r = next) {
            next = r->next;
            r->next = b[r->hash & (n - 1)];
            b[r->hash & (n - 1)] = r;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

/* ---- the eviction heap (caller holds the lock) ---- */

static void heap_set(struct nodes *t, size_t pos, struct inst *r)
{
    t->heap[pos] = r;
    r->heap_pos = pos;
}

static void heap_up(struct nodes *t, size_t pos)
{
    struct inst *r = t->heap[pos];
    while (pos > 0) {
        size_t parent = (pos - 1) / 2;
        if (t->heap[parent]->last_seen_ns <= r->last_seen_ns)
            break;
        heap_set(t, pos, t->heap[parent]);
        pos = parent;
    }
    heap_set(t, pos, r);
}

static void heap_down(struct nodes *t, size_t pos)
{
    struct inst *r = t->heap[pos];
    for (;;) {
        size_t child = 2 * pos + 1;
        if (child >= t->count)
            break;
        if (child + 1 < t->count && t->heap[child + 1]->last_seen_ns < t->heap[child]->last_seen_ns)
            child++;
        if (t->heap[child]->last_seen_ns >= r->last_seen_ns)
            break;
        heap_set(t, pos, t->heap[child]);
        pos = child;
    }
    heap_set(t, pos, r);
}

/* Drops the record seen least recently to make room. */
static void evict_oldest(struct nodes *t)
{
    if (t->count == 0)
        return;
    struct inst *r = t->heap[0];
    struct inst **pp = &t->buckets[r->hash & (t->nbuckets - 1)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    if (--t->count > 0) {
        heap_set(t, 0, t->heap[t->count]);
        heap_down(t, 0);
    }
    inst_free(r);
    t->dropped++;
}

/* Finds or creates the record; NULL only when out of memory. */
static struct inst *lookup(struct nodes *t, const char *node, const char *instance)
{
    uint64_t h = hash_key(node, instance);
    struct inst **pp = slot(t, h, node, instance);
    if (*pp)
        return *pp;
    if (!t->heap && !(t->heap = malloc(t->max * sizeof(*t->heap))))
        return NULL;
    struct inst *r = calloc(1, sizeof(*r));
    if (!r || !(r->node = strdup(node)) || !(r->instance = strdup(instance))) {
        if (r)
            inst_free(r);
        return NULL;
    }
    r->hash = h;
    if (t->count >= t->max)
        evict_oldest(t);
    else if (t->count >= t->nbuckets && t->nbuckets < t->max)
        grow_buckets(t);
    /* The chain may have changed: link at its head. */
    pp = &t->buckets[h & (t->nbuckets - 1)];
    r->next = *pp;
    *pp = r;
    heap_set(t, t->count++, r); /* last_seen_ns 0: inst_add() moves it down */
    heap_up(t, r->heap_pos);
    return r;
}

static void set_str(char **dst, const char *s)
{
    if (!s || !*s || (*dst && strcmp(*dst, s) == 0))
        return;
    char *c = strdup(s);
    if (c) {
        free(*dst);
        *dst = c;
    }
}

/* Two reports of the same moment (or of unsequenced batches): the larger of each. */
static void counters_max(struct inst *r, const struct inst *o)
{
    if (o->kernel_drops > r->kernel_drops)
        r->kernel_drops = o->kernel_drops;
    if (o->agent_drops > r->agent_drops)
        r->agent_drops = o->agent_drops;
    if (o->kernel_missed > r->kernel_missed)
        r->kernel_missed = o->kernel_missed;
}

/* Folds one (partial) record into r: the merge rule shared by observe and merge. */
static void inst_add(struct inst *r, const struct inst *o)
{
    r->batches = sat_add(r->batches, o->batches);
    r->events = sat_add(r->events, o->events);
    if (o->max_seq) {
        if (!r->min_seq || o->min_seq < r->min_seq)
            r->min_seq = o->min_seq;
        /* Cumulative counters: the newest batch's are the instance's totals. */
        if (o->max_seq > r->max_seq) {
            r->max_seq = o->max_seq;
            r->kernel_drops = o->kernel_drops;
            r->agent_drops = o->agent_drops;
            r->kernel_missed = o->kernel_missed;
        } else if (o->max_seq == r->max_seq) {
            counters_max(r, o);
        }
    } else if (!r->max_seq) {
        counters_max(r, o);
    }
    if (o->last_seen_ns >= r->last_seen_ns) {
        r->last_seen_ns = o->last_seen_ns;
        set_str(&r->pod_name, o->pod_name);
        set_str(&r->pod_namespace, o->pod_namespace);
    }
}

static void merge_one(struct nodes *t, const struct inst *o)
{
    struct inst *r = lookup(t, o->node, o->instance);
    if (r) {
        inst_add(r, o);
        heap_down(t, r->heap_pos); /* last seen only grows */
    }
}

void nodes_set_heard_since(struct nodes *t, uint64_t now_ns)
{
    pthread_mutex_lock(&t->lock);
    t->heard_since_ns = now_ns;
    pthread_mutex_unlock(&t->lock);
}

void nodes_heard_since_earlier(struct nodes *t, uint64_t since_ns)
{
    pthread_mutex_lock(&t->lock);
    if (since_ns && (!t->heard_since_ns || since_ns < t->heard_since_ns))
        t->heard_since_ns = since_ns;
    pthread_mutex_unlock(&t->lock);
}

uint64_t nodes_heard_since(struct nodes *t)
{
    pthread_mutex_lock(&t->lock);
    uint64_t v = t->heard_since_ns;
    pthread_mutex_unlock(&t->lock);
    return v;
}

/*
 * Whether the instance of meta started after t began hearing the bus, with the margin to
 * spare: its age when it sent the batch (by its own clock) against how long t has been
 * listening when the batch arrived (by ours), so clock skew between nodes does not count.
 */
static bool heard_from_start(const struct nodes *t, const struct event_batch_meta *meta,
                             uint64_t now_ns)
{
    if (!t->heard_since_ns || !meta->instance_started_ns || !meta->sent_at_ns ||
        meta->sent_at_ns < meta->instance_started_ns || now_ns < t->heard_since_ns)
        return false;
    uint64_t age = meta->sent_at_ns - meta->instance_started_ns;
    uint64_t listening = now_ns - t->heard_since_ns;
    return listening >= NODES_HEARD_MARGIN_NS && age <= listening - NODES_HEARD_MARGIN_NS;
}

void nodes_observe(struct nodes *t, const struct event_batch_meta *meta, size_t events,
                   uint64_t now_ns)
{
    struct inst o = {
        .node = (char *)(meta->node ? meta->node : ""),
        .instance = (char *)(meta->agent_instance ? meta->agent_instance : ""),
        .pod_name = (char *)meta->pod_name,
        .pod_namespace = (char *)meta->pod_namespace,
        .batches = 1,
        .events = events,
        .min_seq = meta->sequence,
        .max_seq = meta->sequence,
        .kernel_drops = meta->kernel_drops,
        .agent_drops = meta->agent_drops,
        .kernel_missed = meta->kernel_missed,
        .last_seen_ns = now_ns,
    };
    pthread_mutex_lock(&t->lock);
    if (o.max_seq && heard_from_start(t, meta, now_ns))
        o.min_seq = 1; /* what no one heard of it is lost, not unknown */
    merge_one(t, &o);
    pthread_mutex_unlock(&t->lock);
}

static uint64_t inst_lost(const struct inst *r)
{
    if (!r->max_seq)
        return 0;
    uint64_t span = r->max_seq - r->min_seq; /* + 1, below: max_seq may be UINT64_MAX */
    return sat(span >= r->batches ? span - r->batches + 1 : 0);
}

/* ---- snapshots ---- */

/* Copies of every record (strings borrowed from the table: hold the lock). */
static struct inst *snapshot_locked(struct nodes *t, size_t *n)
{
    struct inst *v = malloc((t->count ? t->count : 1) * sizeof(*v));
    size_t k = 0;
    if (!v) {
        *n = 0;
        return NULL;
    }
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct inst *r = t->buckets[i]; r; r = r->next)
            v[k++] = *r;
    *n = k;
    return v;
}

static int cmp_inst(const void *a, const void *b)
{
    const struct inst *x = a, *y = b;
    int c = strcmp(x->node, y->node);
    return c ? c : strcmp(x->instance, y->instance);
}

int nodes_merge(struct nodes *dst, struct nodes *src)
{
    if (dst == src)
        return -EINVAL;
    /* Deep-copy src under its lock, then apply under dst's: never both locks at once. */
    pthread_mutex_lock(&src->lock);
    size_t n;
    struct inst *v = snapshot_locked(src, &n);
    int rc = v ? 0 : -ENOMEM;
    struct inst *copies = v ? calloc(n ? n : 1, sizeof(*copies)) : NULL;
    if (v && !copies)
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < n; i++) {
        copies[i] = v[i];
        copies[i].next = NULL;
        copies[i].node = strdup(v[i].node);
        copies[i].instance = strdup(v[i].instance);
        copies[i].pod_name = v[i].pod_name ? strdup(v[i].pod_name) : NULL;
        copies[i].pod_namespace = v[i].pod_namespace ? strdup(v[i].pod_namespace) : NULL;
        if (!copies[i].node || !copies[i].instance)
            rc = -ENOMEM;
    }
    uint64_t dropped = src->dropped;
    pthread_mutex_unlock(&src->lock);
    free(v);

    if (!rc) {
        pthread_mutex_lock(&dst->lock);
        for (size_t i = 0; i < n; i++)
            merge_one(dst, &copies[i]);
        dst->dropped = sat_add(dst->dropped, dropped);
        pthread_mutex_unlock(&dst->lock);
    }
    for (size_t i = 0; copies && i < n; i++) {
        free(copies[i].node);
        free(copies[i].instance);
        free(copies[i].pod_name);
        free(copies[i].pod_namespace);
    }
    free(copies);
    return rc;
}

/* ---- replica exchange format ---- */

void nodes_to_json(struct nodes *t, struct buf *out)
{
    pthread_mutex_lock(&t->lock);
    buf_puts(out, "{\"instances_dropped\":");
    buf_json_u64(out, sat(t->dropped));
    buf_puts(out, ",\"instances\":[");
    bool first = true;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct inst *r = t->buckets[i]; r; r = r->next) {
            buf_puts(out, first ? "{\"node\":" : ",{\"node\":");
            first = false;
            buf_json_cstr(out, r->node);
            buf_puts(out, ",\"instance\":");
            buf_json_cstr(out, r->instance);
            if (r->pod_name) {
                buf_puts(out, ",\"pod_name\":");
                buf_json_cstr(out, r->pod_name);
            }
            if (r->pod_namespace) {
                buf_puts(out, ",\"pod_namespace\":");
                buf_json_cstr(out, r->pod_namespace);
            }
            buf_printf(out,
                       ",\"batches\":%llu,\"events\":%llu,\"min_seq\":%llu,\"max_seq\":%llu,"
                       "\"kernel_drops\":%llu,\"agent_drops\":%llu,\"kernel_missed\":%llu,"
                       "\"last_seen_ns\":%llu}",
                       (unsigned long long)sat(r->batches), (unsigned long long)sat(r->events),
                       (unsigned long long)sat(r->min_seq), (unsigned long long)sat(r->max_seq),
                       (unsigned long long)sat(r->kernel_drops),
                       (unsigned long long)sat(r->agent_drops),
                       (unsigned long long)sat(r->kernel_missed),
                       (unsigned long long)sat(r->last_seen_ns));
        }
    }
    buf_puts(out, "]}");
    pthread_mutex_unlock(&t->lock);
}

static bool get_u64(json_t *o, const char *key, uint64_t *v)
{
    json_t *j = json_object_get(o, key);
    if (!j) {
        *v = 0;
        return true;
    }
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return false;
    *v = (uint64_t)json_integer_value(j);
    return true;
}

static bool get_opt_str(json_t *o, const char *key, const char **s, bool required)
{
    json_t *j = json_object_get(o, key);
    *s = NULL;
    if (!j)
        return !required;
    if (!json_is_string(j))
        return false;
    *s = json_string_value(j);
    if (json_string_length(j) > NODES_NAME_MAX || strlen(*s) != json_string_length(j))
        return false; /* too long, or an embedded NUL */
    return !required || **s;
}

int nodes_merge_json(struct nodes *t, const char *json, size_t len)
{
    json_t *root = json_loadb(json, len, 0, NULL);
    int rc = root ? nodes_merge_value(t, root) : -EINVAL;

    json_decref(root);
    return rc;
}

int nodes_merge_value(struct nodes *t, struct json_t *root)
{
    json_t *arr;
    uint64_t dropped;
    size_t n;
    int rc = 0;

    if (!root || !json_is_object(root) || !(arr = json_object_get(root, "instances")) ||
        !json_is_array(arr) || !get_u64(root, "instances_dropped", &dropped))
        return -EINVAL;
    /* More than any table holds: not a replica's table. */
    n = json_array_size(arr);
    if (n > t->max)
        return -EINVAL;
    /* Validate everything before touching t, so a bad answer changes nothing. */
    struct inst *v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *o = json_array_get(arr, i);
        struct inst *r = &v[i];
        const char *node, *inst, *pn, *pns;
        if (!json_is_object(o) || !get_opt_str(o, "node", &node, true) ||
            !get_opt_str(o, "instance", &inst, true) || !get_opt_str(o, "pod_name", &pn, false) ||
            !get_opt_str(o, "pod_namespace", &pns, false) || !get_u64(o, "batches", &r->batches) ||
            !get_u64(o, "events", &r->events) || !get_u64(o, "min_seq", &r->min_seq) ||
            !get_u64(o, "max_seq", &r->max_seq) || !get_u64(o, "kernel_drops", &r->kernel_drops) ||
            !get_u64(o, "agent_drops", &r->agent_drops) ||
            !get_u64(o, "kernel_missed", &r->kernel_missed) ||
            !get_u64(o, "last_seen_ns", &r->last_seen_ns) || r->min_seq > r->max_seq ||
            (!r->min_seq != !r->max_seq)) {
            rc = -EINVAL;
            break;
        }
        r->node = (char *)node;
        r->instance = (char *)inst;
        r->pod_name = (char *)pn;
        r->pod_namespace = (char *)pns;
    }
    if (!rc) {
        pthread_mutex_lock(&t->lock);
        for (size_t i = 0; i < n; i++)
            merge_one(t, &v[i]);
        t->dropped = sat_add(t->dropped, dropped);
        pthread_mutex_unlock(&t->lock);
    }
    free(v);
    return rc;
}

/* ---- the API view ---- */

static int cmp_inst_ptr(const void *a, const void *b)
{
    return cmp_inst(*(const struct inst *const *)a, *(const struct inst *const *)b);
}

/*
 * The view of the table, under its lock: the JSON of nodes_write_json() into
 * out (unless NULL) and the totals into tot. One sort of pointers to the
 * records, grouped by node. -ENOMEM or 0.
 */
static int view_locked(struct nodes *t, struct buf *out, uint64_t now_ns, uint64_t stale_after_ns,
                       struct nodes_totals *tot)
{
    size_t n = 0;
    const struct inst **v = malloc((t->count ? t->count : 1) * sizeof(*v));

    memset(tot, 0, sizeof(*tot));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (const struct inst *r = t->buckets[i]; r; r = r->next)
            v[n++] = r;
    qsort(v, n, sizeof(*v), cmp_inst_ptr);

    if (out)
        buf_putc(out, '{');
    for (size_t i = 0; i < n;) {
        uint64_t events = 0, batches = 0, lost = 0, adrops = 0, kdrops = 0, kmissed = 0;
        uint64_t last = 0;
        const char *pod = NULL, *pns = NULL;
        uint64_t pod_seen = 0;
        size_t j = i;
        for (; j < n && strcmp(v[j]->node, v[i]->node) == 0; j++) {
            events = sat_add(events, v[j]->events);
            batches = sat_add(batches, v[j]->batches);
            lost = sat_add(lost, inst_lost(v[j]));
            adrops = sat_add(adrops, v[j]->agent_drops);
            kdrops = sat_add(kdrops, v[j]->kernel_drops);
            kmissed = sat_add(kmissed, v[j]->kernel_missed);
            if (v[j]->last_seen_ns > last)
                last = v[j]->last_seen_ns;
            if (v[j]->pod_name && (!pod || v[j]->last_seen_ns >= pod_seen)) {
                pod = v[j]->pod_name;
                pns = v[j]->pod_namespace;
                pod_seen = v[j]->last_seen_ns;
            }
        }
        bool stale = now_ns > last && now_ns - last > stale_after_ns;
        tot->nodes++;
        tot->batches = sat_add(tot->batches, batches);
        tot->events = sat_add(tot->events, events);
        tot->lost_batches = sat_add(tot->lost_batches, lost);
        tot->agent_drops = sat_add(tot->agent_drops, adrops);
        tot->kernel_drops = sat_add(tot->kernel_drops, kdrops);
        tot->kernel_missed = sat_add(tot->kernel_missed, kmissed);
        if (stale)
            tot->stale++;
        else
            tot->active++;
        if (out) {
            char when[40];
            event_format_time(last, when);
            if (i)
                buf_putc(out, ',');
            buf_json_cstr(out, v[i]->node);
            buf_printf(out,
                       ":{\"events\":%llu,\"batches\":%llu,\"lost_batches\":%llu,"
                       "\"agent_drops\":%llu,\"kernel_drops\":%llu,\"kernel_missed\":%llu,"
                       "\"last_seen\":\"%s\",\"status\":\"%s\",\"instances\":%zu",
                       (unsigned long long)events, (unsigned long long)batches,
                       (unsigned long long)lost, (unsigned long long)adrops,
                       (unsigned long long)kdrops, (unsigned long long)kmissed, when,
                       stale ? "stale" : "active", j - i);
            if (pod) {
                buf_puts(out, ",\"agent_pod_name\":");
                buf_json_cstr(out, pod);
            }
            if (pns) {
                buf_puts(out, ",\"agent_pod_namespace\":");
                buf_json_cstr(out, pns);
            }
            buf_putc(out, '}');
        }
        i = j;
    }
    if (out)
        buf_putc(out, '}');
    tot->instances = n;
    tot->instances_dropped = t->dropped;
    free(v);
    return 0;
}

void nodes_write_json(struct nodes *t, struct buf *out, uint64_t now_ns, uint64_t stale_after_ns,
                      struct nodes_totals *totals)
{
    struct nodes_totals scratch;

    pthread_mutex_lock(&t->lock);
    if (view_locked(t, out, now_ns, stale_after_ns, totals ? totals : &scratch) < 0)
        out->oom = true;
    pthread_mutex_unlock(&t->lock);
}

void nodes_get_totals(struct nodes *t, struct nodes_totals *out)
{
    pthread_mutex_lock(&t->lock);
    view_locked(t, NULL, 0, 0, out);
    pthread_mutex_unlock(&t->lock);
}

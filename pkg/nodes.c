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
    char *node;        /* owned */
    char *instance;    /* owned */
    char *pod_name;    /* owned, NULL when unknown */
    char *pod_namespace;
    uint64_t batches, events;
    uint64_t min_seq, max_seq; /* 0 = no sequenced batch yet */
    uint64_t kernel_drops, agent_drops;
    uint64_t last_seen_ns;
};

struct nodes {
    pthread_mutex_t lock;
    struct inst **buckets;
    size_t nbuckets; /* power of two */
    size_t count, max;
    uint64_t dropped;
};

struct nodes *nodes_new(size_t max_instances)
{
    struct nodes *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->max = max_instances ? max_instances : 1;
    t->nbuckets = 16;
    while (t->nbuckets < t->max && t->nbuckets < (1u << 20))
        t->nbuckets <<= 1;
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
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull; /* FNV-1a */
    return (h ^ 0xff) * 0x100000001b3ull;
}

static struct inst **slot(struct nodes *t, const char *node, const char *instance)
{
    uint64_t h = hash_str(hash_str(0xcbf29ce484222325ull, node), instance);
    struct inst **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp && (strcmp((*pp)->node, node) || strcmp((*pp)->instance, instance)))
        pp = &(*pp)->next;
    return pp;
}

/* Drops the record seen least recently to make room. Caller holds the lock. */
static void evict_oldest(struct nodes *t)
{
    struct inst **victim = NULL;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct inst **pp = &t->buckets[i]; *pp; pp = &(*pp)->next)
            if (!victim || (*pp)->last_seen_ns < (*victim)->last_seen_ns)
                victim = pp;
    if (!victim)
        return;
    struct inst *r = *victim;
    *victim = r->next;
    inst_free(r);
    t->count--;
    t->dropped++;
}

/* Finds or creates the record; NULL only when out of memory. Caller holds the lock. */
static struct inst *lookup(struct nodes *t, const char *node, const char *instance)
{
    struct inst **pp = slot(t, node, instance);
    if (*pp)
        return *pp;
    struct inst *r = calloc(1, sizeof(*r));
    if (!r || !(r->node = strdup(node)) || !(r->instance = strdup(instance))) {
        if (r)
            inst_free(r);
        return NULL;
    }
    if (t->count >= t->max) {
        evict_oldest(t);
        pp = slot(t, node, instance); /* the chain may have changed */
    }
    *pp = r;
    t->count++;
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
        } else if (o->max_seq == r->max_seq) {
            if (o->kernel_drops > r->kernel_drops)
                r->kernel_drops = o->kernel_drops;
            if (o->agent_drops > r->agent_drops)
                r->agent_drops = o->agent_drops;
        }
    } else if (!r->max_seq) {
        if (o->kernel_drops > r->kernel_drops)
            r->kernel_drops = o->kernel_drops;
        if (o->agent_drops > r->agent_drops)
            r->agent_drops = o->agent_drops;
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
    if (r)
        inst_add(r, o);
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
        .last_seen_ns = now_ns,
    };
    pthread_mutex_lock(&t->lock);
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
                       "\"kernel_drops\":%llu,\"agent_drops\":%llu,\"last_seen_ns\":%llu}",
                       (unsigned long long)sat(r->batches), (unsigned long long)sat(r->events),
                       (unsigned long long)sat(r->min_seq), (unsigned long long)sat(r->max_seq),
                       (unsigned long long)sat(r->kernel_drops),
                       (unsigned long long)sat(r->agent_drops),
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

void nodes_write_json(struct nodes *t, struct buf *out, uint64_t now_ns, uint64_t stale_after_ns)
{
    pthread_mutex_lock(&t->lock);
    size_t n;
    struct inst *v = snapshot_locked(t, &n);
    if (!v) {
        pthread_mutex_unlock(&t->lock);
        out->oom = true;
        return;
    }
    qsort(v, n, sizeof(*v), cmp_inst);

    buf_putc(out, '{');
    for (size_t i = 0; i < n;) {
        uint64_t events = 0, batches = 0, lost = 0, adrops = 0, kdrops = 0, last = 0;
        const char *pod = NULL, *pns = NULL;
        uint64_t pod_seen = 0;
        size_t j = i;
        for (; j < n && strcmp(v[j].node, v[i].node) == 0; j++) {
            events = sat_add(events, v[j].events);
            batches = sat_add(batches, v[j].batches);
            lost = sat_add(lost, inst_lost(&v[j]));
            adrops = sat_add(adrops, v[j].agent_drops);
            kdrops = sat_add(kdrops, v[j].kernel_drops);
            if (v[j].last_seen_ns > last)
                last = v[j].last_seen_ns;
            if (v[j].pod_name && (!pod || v[j].last_seen_ns >= pod_seen)) {
                pod = v[j].pod_name;
                pns = v[j].pod_namespace;
                pod_seen = v[j].last_seen_ns;
            }
        }
        char when[40];
        event_format_time(last, when);
        bool stale = now_ns > last && now_ns - last > stale_after_ns;
        if (i)
            buf_putc(out, ',');
        buf_json_cstr(out, v[i].node);
        buf_printf(out,
                   ":{\"events\":%llu,\"batches\":%llu,\"lost_batches\":%llu,"
                   "\"agent_drops\":%llu,\"kernel_drops\":%llu,\"last_seen\":\"%s\","
                   "\"status\":\"%s\",\"instances\":%zu",
                   (unsigned long long)events, (unsigned long long)batches,
                   (unsigned long long)lost, (unsigned long long)adrops, (unsigned long long)kdrops,
                   when, stale ? "stale" : "active", j - i);
        if (pod) {
            buf_puts(out, ",\"agent_pod_name\":");
            buf_json_cstr(out, pod);
        }
        if (pns) {
            buf_puts(out, ",\"agent_pod_namespace\":");
            buf_json_cstr(out, pns);
        }
        buf_putc(out, '}');
        i = j;
    }
    buf_putc(out, '}');
    pthread_mutex_unlock(&t->lock);
    free(v);
}

void nodes_get_totals(struct nodes *t, struct nodes_totals *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&t->lock);
    size_t n;
    struct inst *v = snapshot_locked(t, &n);
    if (v) {
        qsort(v, n, sizeof(*v), cmp_inst);
        for (size_t i = 0; i < n; i++) {
            if (i == 0 || strcmp(v[i].node, v[i - 1].node))
                out->nodes++;
            out->batches = sat_add(out->batches, v[i].batches);
            out->events = sat_add(out->events, v[i].events);
            out->lost_batches = sat_add(out->lost_batches, inst_lost(&v[i]));
            out->agent_drops = sat_add(out->agent_drops, v[i].agent_drops);
            out->kernel_drops = sat_add(out->kernel_drops, v[i].kernel_drops);
        }
        out->instances = n;
    }
    out->instances_dropped = t->dropped;
    pthread_mutex_unlock(&t->lock);
    free(v);
}

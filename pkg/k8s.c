/*
 * Pod metadata from the Kubernetes API server (LIST + WATCH on a thread of
 * its own) into a bounded UID -> pod cache with an IP -> pod index, Jobs read
 * on the same thread to find their CronJob, and event enrichment. See k8s.h.
 */
#include "k8s.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "clock.h"
#include "errmsg.h"
#include "intern.h"
#include "k8s_watch.h"
#include "peers.h"

#define K8S_MAX_PODS_DEFAULT 4096
#define K8S_JOB_MAX_BYTES    (1u << 20) /* one Job object */
#define K8S_JOB_BATCH        32         /* Job GETs between two reads of the watch */
#define NIL                  UINT32_MAX

/* ---- pod cache ---- */

/* One of a pod's addresses in the IP index: IPv4 as v4-mapped IPv6. */
struct pod_ip {
    uint8_t addr[16];
    uint32_t next; /* hash chain by address: entry * K8S_POD_IPS_MAX + slot */
};

struct pod_entry {
    struct k8s_pod pod;
    const char *mirror;   /* static pods: the kubelet's UID, which their cgroups carry */
    const char *job_uid;  /* controller is this Job: workload from the Job cache */
    const char *job_name; /* its name, the workload when the Job says no CronJob */
    uint64_t deleted_ns;  /* when it became a tombstone */
    uint64_t list_gen;    /* the LIST that last saw it */
    uint32_t next_uid;    /* hash chain by uid; free list when unused */
    uint32_t next_mirror; /* hash chain by mirror */
    struct pod_ip ip[K8S_POD_IPS_MAX];
    uint8_t nips;
    bool used;
};

struct pod_cache {
    struct pod_entry *e;
    uint32_t *by_uid, *by_mirror, *by_ip;
    uint32_t mask, cap, count, deleted, free_head;
};

/* A Job that owns a pod: its CronJob once read (the watch thread reads it). */
struct job_entry {
    const char *uid, *namespace, *name; /* interned */
    const char *cronjob;                /* NULL: none, or the Job could not be read */
    uint64_t added;                     /* insertion order, for eviction */
    bool used, resolved;
};

struct k8s {
    /* configuration, immutable after k8s_new */
    const char *node_name; /* interned */
    uint64_t tombstone_ttl_ns;

    /* LIST + WATCH of the pods (k8s_watch.c); its callbacks run on its thread */
    struct k8s_watch *watch;
    uint64_t list_gen; /* watch thread only */

    /* shared with lookups, under lock */
    pthread_mutex_t lock;
    struct pod_cache cache;
    struct job_entry *jobs; /* max_pods entries */
    uint32_t jobs_cap;
    uint64_t jobs_added;
    struct k8s_stats stats;
    /* Deleted pods' addresses for the bus (k8s_take_gone): a ring, oldest first. */
    struct peers_pod gone[K8S_GONE_MAX];
    uint32_t gone_first, gone_n;
    /* k8s_take_present(): a LIST completed; the node's pods were handed out; a live pod was
     * left out of a full cache (the list would be incomplete). */
    bool listed, present_taken, live_refused;
};

/* FNV-1a */
static uint32_t bytes_hash(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

static uint32_t str_hash(const char *s)
{
    return bytes_hash(s, strlen(s));
}

static int cache_init(struct pod_cache *c, size_t cap)
{
    uint32_t nb = 1;
    while (nb < cap)
        nb <<= 1;
    c->cap = (uint32_t)cap;
    c->mask = nb - 1;
    c->e = calloc(cap, sizeof(*c->e));
    c->by_uid = malloc(nb * sizeof(uint32_t));
    c->by_mirror = malloc(nb * sizeof(uint32_t));
    c->by_ip = malloc(nb * sizeof(uint32_t));
    if (!c->e || !c->by_uid || !c->by_mirror || !c->by_ip)
        return -ENOMEM;
    memset(c->by_uid, 0xff, nb * sizeof(uint32_t));
    memset(c->by_mirror, 0xff, nb * sizeof(uint32_t));
    memset(c->by_ip, 0xff, nb * sizeof(uint32_t));
    for (uint32_t i = 0; i < c->cap; i++)
        c->e[i].next_uid = i + 1 < c->cap ? i + 1 : NIL;
    c->free_head = 0;
    return 0;
}

static void cache_destroy(struct pod_cache *c)
{
    free(c->e);
    free(c->by_uid);
    free(c->by_mirror);
    free(c->by_ip);
}

static uint32_t cache_find_uid(struct pod_cache *c, const char *uid)
{
    for (uint32_t i = c->by_uid[str_hash(uid) & c->mask]; i != NIL; i = c->e[i].next_uid)
        if (strcmp(c->e[i].pod.uid, uid) == 0)
            return i;
    return NIL;
}

static uint32_t cache_find_mirror(struct pod_cache *c, const char *mirror)
{
    for (uint32_t i = c->by_mirror[str_hash(mirror) & c->mask]; i != NIL; i = c->e[i].next_mirror)
        if (strcmp(c->e[i].mirror, mirror) == 0)
            return i;
    return NIL;
}

static void mirror_link(struct pod_cache *c, uint32_t i)
{
    uint32_t *b = &c->by_mirror[str_hash(c->e[i].mirror) & c->mask];
    c->e[i].next_mirror = *b;
    *b = i;
}

static void mirror_unlink(struct pod_cache *c, uint32_t i)
{
    uint32_t *link = &c->by_mirror[str_hash(c->e[i].mirror) & c->mask];
    while (*link != i)
        link = &c->e[*link].next_mirror;
    *link = c->e[i].next_mirror;
}

/* ---- IP index ---- */

static uint32_t ip_hash(const uint8_t a[16])
{
    return bytes_hash(a, 16);
}

static struct pod_ip *ip_node(struct pod_cache *c, uint32_t n)
{
    return &c->e[n / K8S_POD_IPS_MAX].ip[n % K8S_POD_IPS_MAX];
}

static void ips_link(struct pod_cache *c, uint32_t i)
{
    for (uint32_t s = 0; s < c->e[i].nips; s++) {
        uint32_t *b = &c->by_ip[ip_hash(c->e[i].ip[s].addr) & c->mask];
        c->e[i].ip[s].next = *b;
        *b = i * K8S_POD_IPS_MAX + s;
    }
}

static void ips_unlink(struct pod_cache *c, uint32_t i)
{
    for (uint32_t s = 0; s < c->e[i].nips; s++) {
        uint32_t n = i * K8S_POD_IPS_MAX + s;
        uint32_t *link = &c->by_ip[ip_hash(c->e[i].ip[s].addr) & c->mask];
        while (*link != n)
            link = &ip_node(c, *link)->next;
        *link = c->e[i].ip[s].next;
    }
    c->e[i].nips = 0;
}

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* The address as the index keys it: IPv4 (and v4-mapped IPv6) as ::ffff:a.b.c.d. */
static bool ip_key(unsigned family, const uint8_t addr[16], uint8_t key[16])
{
    if (family == EVENT_FAMILY_IPV4) {
        memcpy(key, v4_mapped, 12);
        memcpy(key + 12, addr, 4);
        return true;
    }
    if (family == EVENT_FAMILY_IPV6) {
        memcpy(key, addr, 16);
        return true;
    }
    return false;
}

static void cache_remove(struct pod_cache *c, uint32_t i)
{
    struct pod_entry *e = &c->e[i];
    uint32_t *link = &c->by_uid[str_hash(e->pod.uid) & c->mask];
    while (*link != i)
        link = &c->e[*link].next_uid;
    *link = e->next_uid;
    if (e->mirror)
        mirror_unlink(c, i);
    ips_unlink(c, i);
    if (e->pod.deleted)
        c->deleted--;
    c->count--;
    memset(e, 0, sizeof(*e));
    e->next_uid = c->free_head;
    c->free_head = i;
}

/* Drops tombstones past their TTL; with force, also the oldest one. Lock held. */
static void cache_expire(struct k8s *k, uint64_t now, bool force)
{
    struct pod_cache *c = &k->cache;
    uint32_t oldest = NIL;
    if (c->deleted == 0)
        return;
    for (uint32_t i = 0; i < c->cap; i++) {
        struct pod_entry *e = &c->e[i];
        if (!e->used || !e->pod.deleted)
            continue;
        if (now - e->deleted_ns >= k->tombstone_ttl_ns) {
            cache_remove(c, i);
            k->stats.expired++;
        } else if (oldest == NIL || e->deleted_ns < c->e[oldest].deleted_ns) {
            oldest = i;
        }
    }
    if (force && c->count == c->cap && oldest != NIL) {
        cache_remove(c, oldest);
        k->stats.evicted++;
    }
}

/* What a Pod object says, parsed before the lock is taken; strings interned. */
struct pod_meta {
    const char *uid, *name, *namespace, *node, *mirror;
    const char *workload, *workload_kind, *app, *ips;
    const char *job_uid, *job_name; /* controller is a Job: workload from the Job */
    uint8_t addr[K8S_POD_IPS_MAX][16];
    uint8_t naddrs;
    bool host_network;
};

/* A deleted pod with addresses goes to the ring for the bus; a full ring loses its oldest. */
static void gone_push(struct k8s *k, const struct k8s_pod *pod)
{
    struct peers_pod g = {
        .node = pod->node ? pod->node : k->node_name,
        .namespace = pod->namespace,
        .pod = pod->name,
        .uid = pod->uid,
        .workload = pod->workload,
        .workload_kind = pod->workload_kind,
        .host_network = pod->host_network,
    };

    if (!pod->name || !pod->namespace || !peers_pod_ips_parse(&g, pod->ips))
        return;
    g.gone_ns = g.seen_ns = clock_realtime_ns();
    if (k->gone_n == K8S_GONE_MAX) {
        k->gone_first = (k->gone_first + 1) % K8S_GONE_MAX;
        k->gone_n--;
        k->stats.deletions_dropped++;
    }
    k->gone[(k->gone_first + k->gone_n++) % K8S_GONE_MAX] = g;
    k->stats.deletions++;
}

static void cache_mark_deleted(struct k8s *k, uint32_t i, uint64_t now)
{
    struct pod_entry *e = &k->cache.e[i];
    if (!e->pod.deleted) {
        e->pod.deleted = true;
        e->deleted_ns = now;
        k->cache.deleted++;
        gone_push(k, &e->pod);
    }
}

size_t k8s_take_gone(struct k8s *k, struct peers_pod *out, size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&k->lock);
    while (n < max && k->gone_n) {
        out[n++] = k->gone[k->gone_first];
        k->gone_first = (k->gone_first + 1) % K8S_GONE_MAX;
        k->gone_n--;
    }
    pthread_mutex_unlock(&k->lock);
    return n;
}

int k8s_take_present(struct k8s *k, const char **uids, size_t max, uint64_t *at_ns)
{
    int rc = 0;

    pthread_mutex_lock(&k->lock);
    if (!k->node_name || !k->listed)
        rc = -EAGAIN;
    else if (k->present_taken)
        rc = -EALREADY;
    k->present_taken |= rc == 0;
    for (uint32_t i = 0; rc >= 0 && i < k->cache.cap; i++) {
        const struct pod_entry *e = &k->cache.e[i];
        if (!e->used || e->pod.deleted)
            continue;
        /* A static pod's cgroups carry the kubelet's UID, which its events report. */
        for (unsigned j = 0; j < 2 && rc >= 0; j++) {
            const char *uid = j ? e->mirror : e->pod.uid;
            if (!uid)
                continue;
            if ((size_t)rc == max)
                rc = -E2BIG;
            else
                uids[rc++] = uid;
        }
    }
    if (rc >= 0 && k->live_refused)
        rc = -E2BIG;
    *at_ns = clock_realtime_ns();
    pthread_mutex_unlock(&k->lock);
    return rc;
}

/* ---- Jobs: a Job-owned pod's workload is the Job's CronJob, when it has one ---- */

static void job_apply(struct pod_entry *e, const struct job_entry *j)
{
    e->pod.workload = j->cronjob ? j->cronjob : e->job_name;
    e->pod.workload_kind = intern(j->cronjob ? "CronJob" : "Job");
}

/* The Job's answer (or its absence) into every cached pod it owns. Lock held. */
static void job_resolved(struct k8s *k, struct job_entry *j)
{
    j->resolved = true;
    for (uint32_t i = 0; i < k->cache.cap; i++) {
        struct pod_entry *e = &k->cache.e[i];
        if (e->used && e->job_uid == j->uid)
            job_apply(e, j);
    }
}

static struct job_entry *job_find(struct k8s *k, const char *uid)
{
    for (uint32_t i = 0; i < k->jobs_cap; i++)
        if (k->jobs[i].used && k->jobs[i].uid == uid) /* interned: pointers compare */
            return &k->jobs[i];
    return NULL;
}

/* A Job to read: a free slot, or the oldest one's (counted). Lock held. */
static struct job_entry *job_add(struct k8s *k, const struct pod_meta *m)
{
    struct job_entry *slot = NULL;
    for (uint32_t i = 0; i < k->jobs_cap; i++) {
        struct job_entry *j = &k->jobs[i];
        if (!j->used) {
            slot = j;
            break;
        }
        if (!slot || j->added < slot->added)
            slot = j;
    }
    if (slot->used) {
        /* pods still waiting for this Job will not learn more: they say Job */
        k->stats.jobs_evicted++;
        slot->cronjob = NULL;
        job_resolved(k, slot);
    }
    *slot = (struct job_entry){.uid = m->job_uid,
                               .namespace = m->namespace,
                               .name = m->job_name,
                               .added = ++k->jobs_added,
                               .used = true,
                               /* nothing to read it from: it stays a Job */
                               .resolved = !k8s_watch_enabled(k->watch)};
    return slot;
}

/* Lock held. */
static void pod_set_workload(struct k8s *k, struct pod_entry *e, const struct pod_meta *m)
{
    e->job_uid = m->job_uid;
    e->job_name = m->job_name;
    e->pod.workload = m->workload;
    e->pod.workload_kind = m->workload_kind;
    if (!m->job_uid)
        return;
    struct job_entry *j = job_find(k, m->job_uid);
    if (!j)
        j = job_add(k, m);
    if (j->resolved) {
        job_apply(e, j);
    } else {
        /* unknown until the Job is read: absent, not guessed */
        e->pod.workload = NULL;
        e->pod.workload_kind = NULL;
    }
}

/* Inserts or updates a pod; deleted makes it a tombstone. Lock held. */
static void cache_upsert(struct k8s *k, const struct pod_meta *m, bool deleted)
{
    struct pod_cache *c = &k->cache;
    uint64_t now = clock_monotonic_ns();
    uint32_t i = cache_find_uid(c, m->uid);

    if (i == NIL) {
        if (deleted)
            return; /* never seen alive: nothing to remember it by */
        if (c->count == c->cap)
            cache_expire(k, now, true);
        if (c->count == c->cap) {
            /* full of live pods: max_pods is set below this node's pod count */
            k->stats.evicted++;
            k->live_refused = true;
            return;
        }
        i = c->free_head;
        c->free_head = c->e[i].next_uid;
        uint32_t *b = &c->by_uid[str_hash(m->uid) & c->mask];
        c->e[i] = (struct pod_entry){.used = true, .next_uid = *b, .next_mirror = NIL};
        c->e[i].pod.uid = m->uid;
        *b = i;
        c->count++;
    }
    struct pod_entry *e = &c->e[i];
    e->pod.name = m->name;
    e->pod.namespace = m->namespace;
    e->pod.node = m->node;
    e->pod.app = m->app;
    e->pod.host_network = m->host_network;
    e->list_gen = k->list_gen;
    pod_set_workload(k, e, m);
    /* A pod deleted after its sandbox went (the DELETED object lists no IPs any more) keeps
     * the ones it had: the aggregators must hear which addresses it gave up. */
    if (!(deleted && m->naddrs == 0)) {
        e->pod.ips = m->ips;
        ips_unlink(c, i);
        memset(e->ip, 0, sizeof(e->ip));
        for (uint8_t s = 0; s < m->naddrs; s++)
            memcpy(e->ip[s].addr, m->addr[s], 16);
        e->nips = m->naddrs;
        ips_link(c, i);
    }
    if (e->mirror != m->mirror) {
        if (e->mirror)
            mirror_unlink(c, i);
        e->mirror = m->mirror;
        if (e->mirror)
            mirror_link(c, i);
    }
    if (deleted) {
        cache_mark_deleted(k, i, now);
    } else if (e->pod.deleted) {
        e->pod.deleted = false;
        c->deleted--;
    }
}

int k8s_pod_cache_lookup(struct k8s *k, const char *uid, struct k8s_pod *out)
{
    int found = 0;
    memset(out, 0, sizeof(*out));
    if (!uid)
        return 0;
    pthread_mutex_lock(&k->lock);
    k->stats.lookups++;
    uint32_t i = cache_find_uid(&k->cache, uid);
    if (i == NIL)
        i = cache_find_mirror(&k->cache, uid);
    if (i != NIL) {
        struct pod_entry *e = &k->cache.e[i];
        if (e->pod.deleted && clock_monotonic_ns() - e->deleted_ns >= k->tombstone_ttl_ns) {
            cache_remove(&k->cache, i);
            k->stats.expired++;
        } else {
            *out = e->pod;
            found = 1;
        }
    }
    if (!found)
        k->stats.misses++;
    pthread_mutex_unlock(&k->lock);
    return found;
}

/*
 * How many pods hold the address (tombstones within their TTL count: the
 * address may still be the old pod's); *only is the one when there is one.
 * Lock held.
 */
static unsigned ip_holders(struct k8s *k, const uint8_t key[16], const struct pod_entry **only)
{
    struct pod_cache *c = &k->cache;
    uint64_t now = clock_monotonic_ns();
    unsigned n = 0;
    for (uint32_t i = c->by_ip[ip_hash(key) & c->mask]; i != NIL; i = ip_node(c, i)->next) {
        const struct pod_entry *e = &c->e[i / K8S_POD_IPS_MAX];
        if (memcmp(ip_node(c, i)->addr, key, 16) != 0)
            continue;
        if (e->pod.deleted && now - e->deleted_ns >= k->tombstone_ttl_ns)
            continue;
        *only = e;
        n++;
    }
    return n;
}

int k8s_peer_lookup(struct k8s *k, unsigned family, const uint8_t addr[16], struct event_peer *out)
{
    uint8_t key[16];
    const struct pod_entry *e = NULL;
    int found = 0;
    if (!ip_key(family, addr, key))
        return 0;
    pthread_mutex_lock(&k->lock);
    k->stats.peer_lookups++;
    unsigned n = ip_holders(k, key, &e);
    if (n > 1 || (n == 1 && e->pod.host_network)) {
        k->stats.peer_ambiguous++;
    } else if (n == 1 && !e->pod.deleted && e->pod.name) {
        /* A pod the API server sent without a name names nobody (never half a peer). */
        out->pod = e->pod.name;
        out->namespace = e->pod.namespace;
        out->workload = e->pod.workload;
        out->workload_kind = e->pod.workload_kind;
        out->node = e->pod.node ? e->pod.node : k->node_name;
        k->stats.peer_hits++;
        found = 1;
    }
    pthread_mutex_unlock(&k->lock);
    return found;
}

/* ---- stats ---- */

void k8s_get_stats(struct k8s *k, struct k8s_stats *out)
{
    struct k8s_watch_stats ws;

    k8s_watch_get_stats(k->watch, &ws);
    pthread_mutex_lock(&k->lock);
    *out = k->stats;
    out->pods_cached = k->cache.count;
    out->pods_deleted = k->cache.deleted;
    pthread_mutex_unlock(&k->lock);
    out->api_errors = ws.api_errors;
    out->lists = ws.lists;
    out->relists = ws.relists;
    out->watch_events = ws.watch_events;
    out->connected = ws.connected;
    memcpy(out->last_error, ws.last_error, sizeof(out->last_error));
}

/* ---- JSON ---- */

static const char *json_str(json_t *obj, const char *key)
{
    return k8s_json_text(json_object_get(obj, key));
}

/*
 * The workload from the controller owner reference. A ReplicaSet named
 * <deployment>-<pod-template-hash> is the Deployment's (the name the
 * Deployment controller gives it); a Job is looked up for its CronJob.
 */
static void owner_parse(json_t *meta, struct pod_meta *m)
{
    json_t *refs = json_object_get(meta, "ownerReferences"), *ref, *ctl = NULL;
    size_t i;
    json_array_foreach(refs, i, ref)
    {
        if (json_is_true(json_object_get(ref, "controller"))) {
            ctl = ref;
            break;
        }
    }
    const char *kind = json_str(ctl, "kind"), *name = json_str(ctl, "name");
    if (!kind || !*kind || !name || !*name) {
        m->workload = m->name;
        m->workload_kind = intern("Pod");
        return;
    }
    if (strcmp(kind, "ReplicaSet") == 0) {
        const char *hash = json_str(json_object_get(meta, "labels"), "pod-template-hash");
        size_t n = strlen(name), h = hash ? strlen(hash) : 0;
        if (h > 0 && n > h + 1 && name[n - h - 1] == '-' && strcmp(name + n - h, hash) == 0) {
            m->workload = intern_n(name, n - h - 1);
            m->workload_kind = intern("Deployment");
            return;
        }
    } else if (strcmp(kind, "Job") == 0) {
        const char *uid = json_str(ctl, "uid");
        m->job_uid = uid && *uid ? intern(uid) : NULL;
        m->job_name = intern(name);
        if (m->job_uid && m->job_name)
            return;
        m->job_uid = NULL;
    }
    m->workload = intern(name);
    m->workload_kind = intern(kind);
}

static void ip_add(struct pod_meta *m, const char *text)
{
    uint8_t a[16] = {0}, in4[16] = {0};
    if (!text || m->naddrs == K8S_POD_IPS_MAX)
        return;
    if (inet_pton(AF_INET, text, in4) == 1)
        ip_key(EVENT_FAMILY_IPV4, in4, a);
    else if (inet_pton(AF_INET6, text, a) != 1)
        return;
    for (uint8_t i = 0; i < m->naddrs; i++)
        if (memcmp(m->addr[i], a, 16) == 0)
            return;
    memcpy(m->addr[m->naddrs++], a, 16);
}

/*
 * status.podIPs (else status.podIP), parsed, and as text: "10.1.0.5,fd00::5".
 * None for a pod whose containers have all ended (phase Succeeded or Failed:
 * a completed Job's pod): the kubelet may leave its addresses in the object,
 * but they are free for the next pod, which would otherwise share them.
 */
static void ips_parse(json_t *status, struct pod_meta *m)
{
    json_t *ips = json_object_get(status, "podIPs"), *ip;
    size_t i;
    char text[K8S_POD_IPS_MAX * (INET6_ADDRSTRLEN + 1)] = "";
    size_t len = 0;
    const char *phase = json_str(status, "phase");
    if (phase && (strcmp(phase, "Succeeded") == 0 || strcmp(phase, "Failed") == 0))
        return;
    json_array_foreach(ips, i, ip) ip_add(m, json_str(ip, "ip"));
    if (m->naddrs == 0)
        ip_add(m, json_str(status, "podIP"));
    for (uint8_t n = 0; n < m->naddrs; n++) {
        bool v4 = memcmp(m->addr[n], v4_mapped, 12) == 0;
        if (n)
            text[len++] = ',';
        inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? m->addr[n] + 12 : m->addr[n], text + len,
                  sizeof(text) - len);
        len += strlen(text + len);
    }
    m->ips = len ? intern(text) : NULL;
}

/* Reads what the cache keeps from a Pod object. Returns false without a uid. */
static bool pod_meta_parse(json_t *pod, struct pod_meta *m)
{
    json_t *meta = json_object_get(pod, "metadata");
    json_t *spec = json_object_get(pod, "spec");
    json_t *labels = json_object_get(meta, "labels");
    const char *uid = json_str(meta, "uid");
    const char *app = json_str(labels, "app.kubernetes.io/name");
    memset(m, 0, sizeof(*m));
    if (!uid || !*uid)
        return false;
    m->uid = intern(uid);
    m->name = intern(json_str(meta, "name"));
    m->namespace = intern(json_str(meta, "namespace"));
    m->node = intern(json_str(spec, "nodeName"));
    m->mirror =
        intern(json_str(json_object_get(meta, "annotations"), "kubernetes.io/config.mirror"));
    m->app = intern(app ? app : json_str(labels, "app"));
    m->host_network = json_is_true(json_object_get(spec, "hostNetwork"));
    owner_parse(meta, m);
    ips_parse(json_object_get(pod, "status"), m);
    return m->uid != NULL;
}

/* ---- the pod watch's callbacks (k8s_watch.c, on its thread) ---- */

/* ?fieldSelector=spec.nodeName=<node> (or "?" for all pods), percent-encoded. */
static void pods_url(void *ctx, const char *api_url, struct buf *u)
{
    struct k8s *k = ctx;
    buf_printf(u, "%s/api/v1/pods?", api_url);
    if (k->node_name) {
        char *node = curl_easy_escape(NULL, k->node_name, 0);
        buf_printf(u, "fieldSelector=spec.nodeName%%3D%s&", node ? node : "");
        curl_free(node);
    }
}

static void pods_list_begin(void *ctx)
{
    struct k8s *k = ctx;
    k->list_gen++;
}

static void pods_list_item(void *ctx, json_t *pod)
{
    struct k8s *k = ctx;
    struct pod_meta m;
    pthread_mutex_lock(&k->lock);
    if (pod_meta_parse(pod, &m))
        cache_upsert(k, &m, false);
    pthread_mutex_unlock(&k->lock);
}

/* Pods the list no longer has were deleted while we were not watching. */
static void pods_list_end(void *ctx)
{
    struct k8s *k = ctx;
    uint64_t now = clock_monotonic_ns();
    pthread_mutex_lock(&k->lock);
    for (uint32_t i = 0; i < k->cache.cap; i++) {
        struct pod_entry *e = &k->cache.e[i];
        if (e->used && !e->pod.deleted && e->list_gen != k->list_gen)
            cache_mark_deleted(k, i, now);
    }
    cache_expire(k, now, false);
    k->listed = true;
    pthread_mutex_unlock(&k->lock);
}

static void pods_event(void *ctx, const char *type, json_t *obj)
{
    struct k8s *k = ctx;
    struct pod_meta m;
    bool deleted = strcmp(type, "DELETED") == 0;
    pthread_mutex_lock(&k->lock);
    if (strcmp(type, "BOOKMARK") != 0 && pod_meta_parse(obj, &m))
        cache_upsert(k, &m, deleted);
    if (deleted) /* keeps pods_deleted honest between lookups */
        cache_expire(k, clock_monotonic_ns(), false);
    pthread_mutex_unlock(&k->lock);
}

int k8s_feed(struct k8s *k, bool watch, const char *data, size_t len, char *err, size_t errlen)
{
    return k8s_watch_feed(k->watch, watch, data, len, err, errlen);
}

/*
 * GETs a Job: its CronJob (the controller owner reference of that kind) into
 * *cronjob, NULL when it has none. A Job of the same name but another UID is
 * not ours. 0, or -1 with err set.
 */
static int job_fetch(struct k8s *k, const struct job_entry *j, const char **cronjob, char *err,
                     size_t errlen)
{
    struct buf url, body;
    char *ns = curl_easy_escape(NULL, j->namespace ? j->namespace : "", 0);
    char *name = curl_easy_escape(NULL, j->name, 0);
    int rc = -1;

    *cronjob = NULL;
    buf_init(&url);
    buf_init(&body);
    buf_printf(&url, "%s/apis/batch/v1/namespaces/%s/jobs/%s", k8s_watch_api_url(k->watch),
               ns ? ns : "", name ? name : "");
    if (url.oom || !ns || !name) {
        errmsg_set(err, errlen, "out of memory");
    } else if (k8s_watch_get(k->watch, url.data, K8S_JOB_MAX_BYTES, &body, err, errlen) == 0) {
        json_t *job = json_loadb(body.data, body.len, JSON_ALLOW_NUL, NULL);
        json_t *meta = json_object_get(job, "metadata"), *ref;
        const char *uid = json_str(meta, "uid");
        size_t i;
        if (uid && strcmp(uid, j->uid) == 0) {
            rc = 0;
            json_array_foreach(json_object_get(meta, "ownerReferences"), i, ref)
            {
                const char *kind = json_str(ref, "kind"), *owner = json_str(ref, "name");
                if (json_is_true(json_object_get(ref, "controller")) && kind && owner && *owner &&
                    strcmp(kind, "CronJob") == 0)
                    *cronjob = intern(owner);
            }
        } else {
            errmsg_set(err, errlen, "GET %s: %s", url.data,
                       job ? "another Job (UID differs)" : "not JSON");
        }
        json_decref(job);
    }
    curl_free(ns);
    curl_free(name);
    buf_free(&url);
    buf_free(&body);
    return rc;
}

/*
 * Reads the Jobs that pods named and the cache does not know yet (at most
 * K8S_JOB_BATCH per call, so a watch is read between them). A Job that
 * cannot be read (gone, forbidden) leaves its pods' kind Job. Watch thread
 * (the watch's tick).
 */
static void jobs_resolve(void *ctx)
{
    struct k8s *k = ctx;
    for (int n = 0; n < K8S_JOB_BATCH && !k8s_watch_stopping(k->watch); n++) {
        struct job_entry want = {0};
        pthread_mutex_lock(&k->lock);
        for (uint32_t i = 0; i < k->jobs_cap && !want.uid; i++)
            if (k->jobs[i].used && !k->jobs[i].resolved)
                want = k->jobs[i];
        pthread_mutex_unlock(&k->lock);
        if (!want.uid)
            return;

        const char *cronjob = NULL;
        char err[sizeof(k->stats.last_error)];
        int rc = job_fetch(k, &want, &cronjob, err, sizeof(err));
        if (k8s_watch_stopping(k->watch))
            return;
        if (rc < 0)
            k8s_watch_note_error(k->watch, err);
        pthread_mutex_lock(&k->lock);
        k->stats.job_lookups++;
        if (rc < 0)
            k->stats.job_errors++;
        struct job_entry *j = job_find(k, want.uid);
        if (j && !j->resolved) {
            j->cronjob = cronjob;
            job_resolved(k, j);
        }
        pthread_mutex_unlock(&k->lock);
    }
}

static const struct k8s_watch_ops pods_ops = {
    .list_kind = "PodList",
    .url = pods_url,
    .list_begin = pods_list_begin,
    .list_item = pods_list_item,
    .list_end = pods_list_end,
    .event = pods_event,
    .tick = jobs_resolve,
};

/* ---- lifecycle ---- */

struct k8s *k8s_new(const struct k8s_options *opts, int *err)
{
    struct k8s_options o = opts ? *opts : (struct k8s_options){0};
    struct k8s *k = calloc(1, sizeof(*k));
    int rc = -ENOMEM;

    if (!k)
        goto fail;
    struct k8s_conn_options co = {.api_url = o.api_url,
                                  .token_path = o.token_path,
                                  .ca_path = o.ca_path,
                                  .backoff_min_ms = o.backoff_min_ms,
                                  .backoff_max_ms = o.backoff_max_ms,
                                  .watch_timeout_s = o.watch_timeout_s,
                                  .connect_timeout_ms = o.connect_timeout_ms};
    k->watch = k8s_watch_new(&co, &pods_ops, k, &rc);
    if (!k->watch)
        goto fail;
    rc = -ENOMEM;
    const char *node = o.node_name ? o.node_name : getenv("NODE_NAME");
    k->node_name = node && *node ? intern(node) : NULL;
    k->tombstone_ttl_ns =
        (uint64_t)(o.tombstone_ttl_ms ? o.tombstone_ttl_ms : 300000u) * 1000000ull;
    if (node && *node && !k->node_name)
        goto fail;
    if (cache_init(&k->cache, o.max_pods ? o.max_pods : K8S_MAX_PODS_DEFAULT) < 0)
        goto fail;
    k->jobs_cap = k->cache.cap;
    k->jobs = calloc(k->jobs_cap, sizeof(*k->jobs));
    if (!k->jobs)
        goto fail;
    pthread_mutex_init(&k->lock, NULL);
    return k;

fail:
    if (k) {
        k8s_watch_free(k->watch);
        free(k->jobs);
        cache_destroy(&k->cache);
        free(k);
    }
    if (err)
        *err = rc;
    return NULL;
}

bool k8s_has_api(const struct k8s *k)
{
    return k8s_watch_enabled(k->watch);
}

int k8s_start(struct k8s *k)
{
    return k8s_watch_start(k->watch, "k8s-watch");
}

void k8s_free(struct k8s *k)
{
    if (!k)
        return;
    k8s_watch_free(k->watch); /* joins the thread: no callback runs after this */
    pthread_mutex_destroy(&k->lock);
    cache_destroy(&k->cache);
    free(k->jobs);
    free(k);
}

const char *k8s_node_name(const struct k8s *k)
{
    return k ? k->node_name : NULL;
}

/* One of peers_event_resolve()'s lookups: a pod of this node that holds addr alone. */
static bool pod_lookup(void *ctx, unsigned family, const uint8_t addr[16], uint16_t port,
                       uint8_t protocol, struct event_peer *out)
{
    return k8s_peer_lookup(ctx, family, addr, out) == 1;
}

/*
 * The other end among this node's pods: a connection's destination, an
 * accept's source, a close's other side, what a dns answer's addresses are.
 */
static void enrich_peer(struct k8s *k, struct event *e)
{
    struct event_peer found;
    if (peers_event_resolve(e, pod_lookup, k, &found))
        peers_fill(&e->peer, &found);
}

int k8s_enrich(struct k8s *k, struct cgroup_resolver *cg, struct event *e)
{
    struct cgroup_pod cp;
    struct k8s_pod pod;
    int rc;

    memset(&e->k8s, 0, sizeof(e->k8s));
    if (k)
        enrich_peer(k, e);
    if (!cg || e->cgroup_id == 0)
        return 0;
    rc = cgroup_resolve(cg, e->cgroup_id, e->timestamp_ns, &cp);
    if (rc <= 0)
        return rc;
    e->k8s.pod_uid = cp.pod_uid;
    e->k8s.container_id = cp.container_id;
    if (!k)
        return 1;
    e->k8s.node_name = k->node_name;
    if (k8s_pod_cache_lookup(k, cp.pod_uid, &pod)) {
        e->k8s.pod_name = pod.name;
        e->k8s.namespace = pod.namespace;
        e->k8s.workload = pod.workload;
        e->k8s.workload_kind = pod.workload_kind;
        e->k8s.app = pod.app;
        /* A deleted pod's addresses may be another pod's already: its late events must not
         * claim them (the aggregator names peers by them). */
        e->k8s.ips = pod.deleted ? NULL : pod.ips;
        e->k8s.host_network = pod.host_network;
        if (pod.node)
            e->k8s.node_name = pod.node;
    }
    return 1;
}

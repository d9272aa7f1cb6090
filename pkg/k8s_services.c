/*
 * Services and EndpointSlices into an address -> Service index (see
 * k8s_services.h).
 *
 * Objects sit in two arrays (found by namespace and name, interned, so by
 * pointer); the address index is rebuilt from them on the first lookup
 * after a change: watch events are rare next to lookups, and a rebuild is
 * linear in the addresses held.
 */
#include "k8s_services.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errmsg.h"
#include "intern.h"
#include "peers.h"

struct addr {
    uint8_t family;
    uint8_t ip[16];
};

struct object {
    const char *namespace, *name; /* interned */
    const char *service;          /* interned "namespace/name" of the Service */
    struct addr *addrs;           /* ClusterIPs, or the slice's endpoint addresses */
    uint32_t n_addrs;
    uint32_t ports[K8S_SERVICES_MAX_PORTS]; /* Services: port << 8 | IP protocol */
    uint32_t n_ports;
    uint64_t gen; /* the LIST that last held it */
};

struct kind {
    struct k8s_services *s;
    bool slices;
    struct object *objs;
    size_t n;
    uint64_t gen;
    struct k8s_watch *watch;
};

/* One address of the index. */
struct slot {
    struct addr a;
    bool used;
    const struct object *cluster_ip; /* the Service whose ClusterIP this is */
    const char *backend;             /* the one Service it backs */
    bool backend_ambiguous;          /* it backs several */
};

struct k8s_services {
    pthread_mutex_t lock; /* everything below */
    size_t max;
    struct kind svcs, slices;
    struct slot *index;
    size_t index_cap; /* a power of two, or 0 */
    bool dirty;
    struct k8s_services_stats st;
    k8s_services_shared_fn shared; /* NULL: no address is known to be shared */
    void *shared_ctx;
};

/* ---- parsing ---- */

static const char *jstr(json_t *o, const char *k)
{
    return k8s_json_text(json_object_get(o, k));
}

static bool addr_parse(const char *text, struct addr *out)
{
    memset(out, 0, sizeof(*out));
    if (!text)
        return false;
    if (inet_pton(AF_INET, text, out->ip) == 1)
        out->family = EVENT_FAMILY_IPV4;
    else if (inet_pton(AF_INET6, text, out->ip) == 1)
        out->family = EVENT_FAMILY_IPV6;
    return out->family != 0;
}

static uint8_t protocol_parse(const char *p)
{
    if (!p || strcmp(p, "TCP") == 0) /* the API's default */
        return IPPROTO_TCP;
    if (strcmp(p, "UDP") == 0)
        return IPPROTO_UDP;
    if (strcmp(p, "SCTP") == 0)
        return IPPROTO_SCTP;
    return 0;
}

static bool add_addr(struct object *o, size_t cap, const char *text)
{
    if (o->n_addrs >= cap)
        return true;
    if (!addr_parse(text, &o->addrs[o->n_addrs]))
        return false;
    o->n_addrs++;
    return true;
}

/* The object's identity and addresses; false when it is not one we can use. */
static bool object_parse(bool slices, json_t *obj, struct object *o)
{
    json_t *meta = json_object_get(obj, "metadata");
    const char *ns = jstr(meta, "namespace"), *name = jstr(meta, "name");
    size_t i, j;
    json_t *v, *a;

    memset(o, 0, sizeof(*o));
    if (!ns || !name || !*ns || !*name)
        return false;
    o->namespace = intern(ns);
    o->name = intern(name);
    const char *svc =
        slices ? jstr(json_object_get(meta, "labels"), "kubernetes.io/service-name") : name;
    if (!o->namespace || !o->name || !svc || !*svc)
        return false;
    char full[512];
    snprintf(full, sizeof(full), "%s/%s", ns, svc);
    o->service = intern(full);
    if (!o->service)
        return false;
    if (!slices) {
        json_t *spec = json_object_get(obj, "spec");
        json_t *ips = json_object_get(spec, "clusterIPs");
        o->addrs = calloc(2, sizeof(*o->addrs));
        if (!o->addrs)
            return false;
        /* Headless ("None") and ExternalName Services have no ClusterIP. */
        if (json_is_array(ips) && json_array_size(ips) > 0) {
            json_array_foreach(ips, i, v) add_addr(o, 2, k8s_json_text(v));
        } else {
            add_addr(o, 2, jstr(spec, "clusterIP"));
        }
        json_array_foreach(json_object_get(spec, "ports"), i, v)
        {
            json_int_t port = json_integer_value(json_object_get(v, "port"));
            uint8_t proto = protocol_parse(jstr(v, "protocol"));
            if (port > 0 && port <= 65535 && proto && o->n_ports < K8S_SERVICES_MAX_PORTS)
                o->ports[o->n_ports++] = (uint32_t)port << 8 | proto;
        }
        return true;
    }
    const char *type = jstr(obj, "addressType");
    if (!type || (strcmp(type, "IPv4") != 0 && strcmp(type, "IPv6") != 0))
        return true; /* FQDN slices name no address */
    size_t want = 0;
    json_array_foreach(json_object_get(obj, "endpoints"), i, v)
    {
        want += json_array_size(json_object_get(v, "addresses"));
    }
    if (want > K8S_SERVICES_MAX_ADDRS)
        want = K8S_SERVICES_MAX_ADDRS;
    if (want == 0)
        return true;
    o->addrs = calloc(want, sizeof(*o->addrs));
    if (!o->addrs)
        return false;
    json_array_foreach(json_object_get(obj, "endpoints"), i, v)
    {
        json_array_foreach(json_object_get(v, "addresses"), j, a)
            add_addr(o, want, k8s_json_text(a));
    }
    return true;
}

/* ---- objects ---- */

static struct object *find(struct kind *k, const struct object *o)
{
    for (size_t i = 0; i < k->n; i++)
        if (k->objs[i].namespace == o->namespace && k->objs[i].name == o->name)
            return &k->objs[i];
    return NULL;
}

static void remove_at(struct kind *k, struct object *o)
{
    free(o->addrs);
    *o = k->objs[--k->n];
}

/* Takes o over (its addresses), replacing the object of the same name. Under lock. */
static void upsert(struct kind *k, struct object *o)
{
    struct k8s_services *s = k->s;
    struct object *cur = find(k, o);
    o->gen = k->gen;
    if (cur) {
        free(cur->addrs);
        *cur = *o;
    } else if (k->n < s->max) {
        k->objs[k->n++] = *o;
    } else {
        free(o->addrs);
        s->st.refused++;
        return;
    }
    s->dirty = true;
}

static void delete (struct kind *k, const struct object *o)
{
    struct object *cur = find(k, o);
    if (cur) {
        remove_at(k, cur);
        k->s->dirty = true;
    }
}

/* ---- the watches' callbacks ---- */

static void on_url(void *ctx, const char *api_url, struct buf *u)
{
    struct kind *k = ctx;
    buf_printf(u, k->slices ? "%s/apis/discovery.k8s.io/v1/endpointslices?" : "%s/api/v1/services?",
               api_url);
}

static void on_list_begin(void *ctx)
{
    struct kind *k = ctx;
    pthread_mutex_lock(&k->s->lock);
    k->gen++;
    pthread_mutex_unlock(&k->s->lock);
}

static void on_item(void *ctx, json_t *item)
{
    struct kind *k = ctx;
    struct object o;
    if (!object_parse(k->slices, item, &o)) {
        free(o.addrs);
        return;
    }
    pthread_mutex_lock(&k->s->lock);
    upsert(k, &o);
    pthread_mutex_unlock(&k->s->lock);
}

/* What the complete LIST did not hold was deleted while we were not watching. */
static void on_list_end(void *ctx)
{
    struct kind *k = ctx;
    pthread_mutex_lock(&k->s->lock);
    for (size_t i = k->n; i-- > 0;)
        if (k->objs[i].gen != k->gen) {
            remove_at(k, &k->objs[i]);
            k->s->dirty = true;
        }
    pthread_mutex_unlock(&k->s->lock);
}

static void on_event(void *ctx, const char *type, json_t *obj)
{
    struct kind *k = ctx;
    struct object o;
    if (strcmp(type, "BOOKMARK") == 0)
        return;
    if (!object_parse(k->slices, obj, &o)) {
        free(o.addrs);
        return;
    }
    pthread_mutex_lock(&k->s->lock);
    if (strcmp(type, "DELETED") == 0) {
        delete (k, &o);
        free(o.addrs);
    } else {
        upsert(k, &o);
    }
    pthread_mutex_unlock(&k->s->lock);
}

static const struct k8s_watch_ops services_ops = {
    .list_kind = "ServiceList",
    .url = on_url,
    .list_begin = on_list_begin,
    .list_item = on_item,
    .list_end = on_list_end,
    .event = on_event,
};

static const struct k8s_watch_ops slices_ops = {
    .list_kind = "EndpointSliceList",
    .url = on_url,
    .list_begin = on_list_begin,
    .list_item = on_item,
    .list_end = on_list_end,
    .event = on_event,
};

/* ---- the address index ---- */

static size_t addr_hash(const struct addr *a)
{
    uint64_t lo, hi;
    memcpy(&lo, a->ip, 8);
    memcpy(&hi, a->ip + 8, 8);
    uint64_t h = (lo * 0x9e3779b97f4a7c15ull) ^ (hi + a->family) * 0xc2b2ae3d27d4eb4full;
    return (size_t)(h ^ (h >> 29));
}

static struct slot *slot_for(struct slot *index, size_t cap, const struct addr *a, bool insert)
{
    size_t mask = cap - 1;
    for (size_t i = addr_hash(a) & mask, probe = 0; probe < cap; probe++, i = (i + 1) & mask) {
        struct slot *sl = &index[i];
        if (!sl->used) {
            if (!insert)
                return NULL;
            sl->used = true;
            sl->a = *a;
            return sl;
        }
        if (sl->a.family == a->family && memcmp(sl->a.ip, a->ip, 16) == 0)
            return sl;
    }
    return NULL;
}

/* Under lock. On allocation failure the old index stays (and stays dirty). */
static void index_rebuild(struct k8s_services *s)
{
    size_t total = 0, cap = 16;
    for (size_t i = 0; i < s->svcs.n; i++)
        total += s->svcs.objs[i].n_addrs;
    for (size_t i = 0; i < s->slices.n; i++)
        total += s->slices.objs[i].n_addrs;
    while (cap < 2 * total)
        cap <<= 1;
    struct slot *index = calloc(cap, sizeof(*index));
    if (!index)
        return;
    for (size_t i = 0; i < s->svcs.n; i++) {
        const struct object *o = &s->svcs.objs[i];
        for (uint32_t j = 0; j < o->n_addrs; j++)
            slot_for(index, cap, &o->addrs[j], true)->cluster_ip = o;
    }
    for (size_t i = 0; i < s->slices.n; i++) {
        const struct object *o = &s->slices.objs[i];
        for (uint32_t j = 0; j < o->n_addrs; j++) {
            struct slot *sl = slot_for(index, cap, &o->addrs[j], true);
            if (sl->backend && sl->backend != o->service)
                sl->backend_ambiguous = true;
            sl->backend = o->service;
        }
    }
    free(s->index);
    s->index = index;
    s->index_cap = cap;
    s->dirty = false;
}

static enum k8s_services_result lookup_locked(struct k8s_services *s, unsigned family,
                                              const uint8_t ip[16], uint16_t port, uint8_t protocol,
                                              const char **service)
{
    struct addr a = {.family = (uint8_t)family};

    if (s->dirty)
        index_rebuild(s);
    if (s->index_cap == 0 || (family != EVENT_FAMILY_IPV4 && family != EVENT_FAMILY_IPV6))
        return K8S_SVC_MISS;
    memcpy(a.ip, ip, family == EVENT_FAMILY_IPV4 ? 4 : 16);
    const struct slot *sl = slot_for(s->index, s->index_cap, &a, false);
    if (!sl)
        return K8S_SVC_MISS;
    if (sl->cluster_ip && port == 0 && protocol == 0) {
        /* An address a DNS answer gave: a ClusterIP is its Service's on every port. */
        *service = sl->cluster_ip->service;
        return K8S_SVC_CLUSTER_IP;
    }
    if (sl->cluster_ip) {
        uint32_t want = (uint32_t)port << 8 | protocol;
        for (uint32_t i = 0; i < sl->cluster_ip->n_ports; i++)
            if (sl->cluster_ip->ports[i] == want) {
                *service = sl->cluster_ip->service;
                return K8S_SVC_CLUSTER_IP;
            }
    }
    if (sl->backend_ambiguous)
        return K8S_SVC_AMBIGUOUS;
    if (sl->backend) {
        *service = sl->backend;
        return K8S_SVC_BACKEND;
    }
    return K8S_SVC_MISS;
}

enum k8s_services_result k8s_services_lookup(struct k8s_services *s, unsigned family,
                                             const uint8_t addr[16], uint16_t port,
                                             uint8_t protocol, const char **service)
{
    pthread_mutex_lock(&s->lock);
    enum k8s_services_result r = lookup_locked(s, family, addr, port, protocol, service);
    pthread_mutex_unlock(&s->lock);
    return r;
}

struct service_lookup {
    struct k8s_services *s;
    enum k8s_services_result r; /* the last address's, or the first that named none */
    bool looked;
};

static bool service_lookup(void *ctx, unsigned family, const uint8_t addr[16], uint16_t port,
                           uint8_t protocol, struct event_peer *out)
{
    struct service_lookup *l = ctx;
    const char *svc = NULL;
    l->r = lookup_locked(l->s, family, addr, port, protocol, &svc);
    if (l->r == K8S_SVC_BACKEND && l->s->shared && l->s->shared(l->s->shared_ctx, family, addr)) {
        l->r = K8S_SVC_AMBIGUOUS; /* a node's address: not only the backend is there */
        svc = NULL;
    }
    l->looked = true;
    out->service = svc;
    return svc != NULL;
}

/* Under lock: the join's side of e (enum k8s_services_side); peer_result: its peer's lookup. */
static uint8_t side_locked(struct k8s_services *s, const struct event *e, bool looked,
                           enum k8s_services_result peer_result)
{
    const char *svc = NULL;
    if (e->type == EVENT_ACCEPT || (e->type == EVENT_CLOSE && e->u.close.role == EVENT_ROLE_SERVER))
        return e->k8s.pod_name && lookup_locked(s, e->family, e->daddr, e->dport, e->protocol,
                                                &svc) == K8S_SVC_BACKEND
                   ? K8S_SIDE_BACKEND
                   : K8S_SIDE_NONE;
    if (e->type != EVENT_CONNECTION &&
        !(e->type == EVENT_CLOSE && e->u.close.role == EVENT_ROLE_CLIENT))
        return K8S_SIDE_NONE;
    /* A connect that failed reached no backend: no accept will ever join it. */
    if (e->type == EVENT_CONNECTION && e->status == EVENT_STATUS_FAILED)
        return K8S_SIDE_NONE;
    if (!looked) /* its peer_service came with it: the destination not looked up yet */
        peer_result = lookup_locked(s, e->family, e->daddr, e->dport, e->protocol, &svc);
    return peer_result == K8S_SVC_CLUSTER_IP ? K8S_SIDE_TO_CLUSTER_IP : K8S_SIDE_NONE;
}

/* The Service of each event's peer (a dns answer's: the one all its addresses belong to). */
void k8s_services_enrich(struct k8s_services *s, struct event *events, size_t n, bool count,
                         uint8_t *sides)
{
    if (sides)
        memset(sides, K8S_SIDE_NONE, n);
    pthread_mutex_lock(&s->lock);
    if (s->svcs.n + s->slices.n == 0 && !s->dirty) { /* VM mode, or nothing listed yet */
        pthread_mutex_unlock(&s->lock);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct event *e = &events[i];
        struct service_lookup l = {.s = s, .r = K8S_SVC_MISS, .looked = false};
        if (!e->peer.service) {
            struct event_peer found;
            if (peers_event_resolve(e, service_lookup, &l, &found))
                e->peer.service = found.service;
            if (count && l.looked) {
                s->st.lookups++;
                s->st.results[l.r]++;
            }
        }
        if (sides && e->type != EVENT_DNS &&
            (e->family == EVENT_FAMILY_IPV4 || e->family == EVENT_FAMILY_IPV6))
            sides[i] = side_locked(s, e, l.looked, l.r);
    }
    pthread_mutex_unlock(&s->lock);
}

void k8s_services_set_shared(struct k8s_services *s, k8s_services_shared_fn fn, void *ctx)
{
    pthread_mutex_lock(&s->lock);
    s->shared = fn;
    s->shared_ctx = ctx;
    pthread_mutex_unlock(&s->lock);
}

void k8s_services_get_stats(struct k8s_services *s, struct k8s_services_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->st;
    out->services = s->svcs.n;
    out->slices = s->slices.n;
    pthread_mutex_unlock(&s->lock);
    k8s_watch_get_stats(s->svcs.watch, &out->services_watch);
    k8s_watch_get_stats(s->slices.watch, &out->slices_watch);
}

int k8s_services_feed(struct k8s_services *s, bool slices, bool watch, const char *data, size_t len,
                      char *err, size_t errlen)
{
    return k8s_watch_feed(slices ? s->slices.watch : s->svcs.watch, watch, data, len, err, errlen);
}

/* ---- lifecycle ---- */

struct k8s_services *k8s_services_new(const struct k8s_conn_options *o, size_t max_objects,
                                      int *err)
{
    struct k8s_services *s = calloc(1, sizeof(*s));
    int rc = -ENOMEM;

    if (!s || max_objects == 0)
        goto fail;
    s->max = max_objects;
    s->svcs = (struct kind){.s = s, .slices = false};
    s->slices = (struct kind){.s = s, .slices = true};
    s->svcs.objs = calloc(max_objects, sizeof(struct object));
    s->slices.objs = calloc(max_objects, sizeof(struct object));
    if (!s->svcs.objs || !s->slices.objs)
        goto fail;
    pthread_mutex_init(&s->lock, NULL);
    s->svcs.watch = k8s_watch_new(o, &services_ops, &s->svcs, &rc);
    if (s->svcs.watch)
        s->slices.watch = k8s_watch_new(o, &slices_ops, &s->slices, &rc);
    if (!s->slices.watch) {
        k8s_services_free(s);
        if (err)
            *err = rc;
        return NULL;
    }
    return s;
fail:
    if (s) {
        free(s->svcs.objs);
        free(s->slices.objs);
        free(s);
    }
    if (err)
        *err = rc;
    return NULL;
}

bool k8s_services_has_api(const struct k8s_services *s)
{
    return k8s_watch_enabled(s->svcs.watch);
}

int k8s_services_start(struct k8s_services *s)
{
    int rc = k8s_watch_start(s->svcs.watch, "k8s-services");
    return rc < 0 ? rc : k8s_watch_start(s->slices.watch, "k8s-slices");
}

void k8s_services_free(struct k8s_services *s)
{
    if (!s)
        return;
    /* The watches first: no callback runs after they are freed. */
    k8s_watch_free(s->svcs.watch);
    k8s_watch_free(s->slices.watch);
    for (size_t i = 0; i < s->svcs.n; i++)
        free(s->svcs.objs[i].addrs);
    for (size_t i = 0; i < s->slices.n; i++)
        free(s->slices.objs[i].addrs);
    free(s->svcs.objs);
    free(s->slices.objs);
    free(s->index);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/*
 * The cluster-wide IP -> pod map (see peers.h for the lifetime rules).
 *
 * Claims live in one preallocated pool, chained per address in a hash table
 * twice the pool's size, and on an LRU list by last observation, so the
 * bound is a pool index and eviction is O(1). Stale claims are removed when
 * a lookup or observation walks past them ttl after their grace ended.
 */
#include "peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "errmsg.h"
#include "intern.h"

#define NIL 0u /* pool links are index + 1 */

struct claim {
    uint8_t ip[16];
    uint8_t family;
    bool host_network;
    const char *node, *namespace, *pod, *uid, *workload, *workload_kind;
    uint64_t first_seen, last_seen;
    uint64_t ended;     /* when a newer pod on the same node took the address; 0 = not */
    uint64_t announced; /* last announcement of this claim by any replica */
    bool reported;      /* its node reported the pod (not only its deletion): it may name */
    uint32_t next;      /* bucket chain, or free list */
    uint32_t lru_prev, lru_next;
};

#define PEERS_LIST_SLOTS 256

struct peers {
    pthread_mutex_t lock;
    uint64_t ttl_ns, grace_ns;
    uint32_t max;
    struct claim *pool; /* pool[i] is link i + 1 */
    uint32_t *buckets;
    uint32_t mask;
    uint32_t free_head;
    uint32_t lru_head, lru_tail; /* head: most recently observed */
    struct peers_stats st;
    /* (namespace, workload) of the valid claims, as of live_built (peers_workload_alive()):
     * open addressing over interned pointer pairs, live_cap slots (a power of two). */
    struct live_workload {
        const char *namespace, *workload;
    } * live;
    size_t live_cap;
    uint64_t live_built;
    bool live_ok;
    /* When each node's last pod list was applied (peers_node_present(), list_due()). */
    struct {
        const char *node;
        uint64_t at;
    } lists[PEERS_LIST_SLOTS];
};

static const char *const result_names[PEERS_RESULT_COUNT] = {
    [PEERS_MISS] = "miss",
    [PEERS_HIT] = "hit",
    [PEERS_AMBIGUOUS] = "ambiguous",
    [PEERS_STALE] = "stale",
    [PEERS_HOST_NETWORK] = "host_network",
};

const char *peers_result_name(enum peers_result r)
{
    return (unsigned)r < PEERS_RESULT_COUNT ? result_names[r] : NULL;
}

static struct claim *at(struct peers *p, uint32_t link)
{
    return link == NIL ? NULL : &p->pool[link - 1];
}

static uint32_t link_of(struct peers *p, const struct claim *c)
{
    return (uint32_t)(c - p->pool) + 1;
}

/* IPv4 uses the first 4 bytes; the rest must not change the key. */
static size_t addr_len(unsigned family)
{
    return family == EVENT_FAMILY_IPV4 ? 4 : 16;
}

static uint32_t bucket_of(const struct peers *p, unsigned family, const uint8_t ip[16])
{
    uint64_t lo = 0, hi = 0;
    memcpy(&lo, ip, 8);
    if (family == EVENT_FAMILY_IPV6)
        memcpy(&hi, ip + 8, 8);
    else
        lo &= 0xffffffffu;
    uint64_t h = (lo ^ (hi * 0x9e3779b97f4a7c15ull) ^ family) * 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h & p->mask;
}

struct peers *peers_new(uint32_t max_entries, uint64_t ttl_ns, uint64_t grace_ns)
{
    struct peers *p = calloc(1, sizeof(*p));
    uint32_t nb = 2;

    if (!p || max_entries == 0 || max_entries > (1u << 30)) {
        free(p);
        return NULL;
    }
    while (nb < 2 * (uint64_t)max_entries)
        nb <<= 1;
    p->pool = calloc(max_entries, sizeof(*p->pool));
    p->buckets = calloc(nb, sizeof(*p->buckets));
    if (!p->pool || !p->buckets) {
        peers_free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->mask = nb - 1;
    p->max = max_entries;
    p->ttl_ns = ttl_ns;
    p->grace_ns = grace_ns;
    p->st.capacity = max_entries;
    for (uint32_t i = 0; i < max_entries; i++)
        p->pool[i].next = i + 2 <= max_entries ? i + 2 : NIL;
    p->free_head = 1;
    return p;
}

void peers_free(struct peers *p)
{
    if (!p)
        return;
    if (p->pool && p->buckets)
        pthread_mutex_destroy(&p->lock);
    free(p->pool);
    free(p->buckets);
    free(p->live);
    free(p);
}

/* ---- pool, chains and LRU ---- */

static void lru_unlink(struct peers *p, struct claim *c)
{
    if (c->lru_prev)
        at(p, c->lru_prev)->lru_next = c->lru_next;
    else
        p->lru_head = c->lru_next;
    if (c->lru_next)
        at(p, c->lru_next)->lru_prev = c->lru_prev;
    else
        p->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NIL;
}

static void lru_push_head(struct peers *p, struct claim *c)
{
    uint32_t l = link_of(p, c);
    c->lru_prev = NIL;
    c->lru_next = p->lru_head;
    if (p->lru_head)
        at(p, p->lru_head)->lru_prev = l;
    else
        p->lru_tail = l;
    p->lru_head = l;
}

/* Unlinks c from its chain (walking from its bucket) and the LRU, and frees it. */
static void claim_remove(struct peers *p, struct claim *c)
{
    uint32_t l = link_of(p, c);
    uint32_t *pp = &p->buckets[bucket_of(p, c->family, c->ip)];
    while (*pp != NIL && *pp != l)
        pp = &at(p, *pp)->next;
    if (*pp == l)
        *pp = c->next;
    lru_unlink(p, c);
    memset(c, 0, sizeof(*c));
    c->next = p->free_head;
    p->free_head = l;
    p->st.entries--;
}

static struct claim *claim_alloc(struct peers *p)
{
    if (p->free_head == NIL) {
        claim_remove(p, at(p, p->lru_tail)); /* max >= 1: the tail exists */
        p->st.evicted++;
    }
    struct claim *c = at(p, p->free_head);
    p->free_head = c->next;
    c->next = NIL;
    p->st.entries++;
    return c;
}

/* ---- lifetime ---- */

/* When the claim stopped being alive: taken over, or its node stopped reporting it. */
static uint64_t claim_end(const struct peers *p, const struct claim *c)
{
    uint64_t quiet = c->last_seen + p->ttl_ns;
    return c->ended && c->ended < quiet ? c->ended : quiet;
}

/* A claim made only by a deletion never names its pod, nor makes an address ambiguous. */
static bool claim_valid(const struct peers *p, const struct claim *c, uint64_t now)
{
    return c->reported && now <= claim_end(p, c) + p->grace_ns;
}

/* Long past validity: nothing left to report about it. */
static bool claim_expired(const struct peers *p, const struct claim *c, uint64_t now)
{
    return now > claim_end(p, c) + p->grace_ns + p->ttl_ns;
}

static void claim_end_at(struct claim *c, uint64_t t)
{
    if (c->ended == 0 || t < c->ended)
        c->ended = t;
}

static bool same_addr(const struct claim *c, unsigned family, const uint8_t ip[16])
{
    return c->family == family && memcmp(c->ip, ip, addr_len(family)) == 0;
}

static bool same_pod(const struct claim *c, const struct peers_pod *pod)
{
    return c->node == pod->node && c->namespace == pod->namespace && c->pod == pod->pod &&
           c->uid == pod->uid;
}

/* ---- observing ---- */

/* pod's claim on the address, in bucket b; NULL when it has none. */
static struct claim *claim_find(struct peers *p, uint32_t b, const struct peers_pod *pod,
                                unsigned family, const uint8_t ip[16])
{
    for (struct claim *o = at(p, p->buckets[b]); o; o = at(p, o->next))
        if (same_addr(o, family, ip) && same_pod(o, pod))
            return o;
    return NULL;
}

/* A new claim of pod's on the address, chained in bucket b; its times are the caller's. */
static struct claim *claim_new(struct peers *p, uint32_t b, const struct peers_pod *pod,
                               unsigned family, const uint8_t ip[16])
{
    struct claim *c = claim_alloc(p);
    memcpy(c->ip, ip, addr_len(family));
    c->family = family;
    c->node = pod->node;
    c->namespace = pod->namespace;
    c->pod = pod->pod;
    c->uid = pod->uid;
    c->next = p->buckets[b];
    p->buckets[b] = link_of(p, c);
    return c;
}

/* One address of pod; true when the claim is new or changed. */
static bool observe_ip(struct peers *p, const struct peers_pod *pod, unsigned family,
                       const uint8_t ip[16], bool *due)
{
    uint32_t b = bucket_of(p, family, ip);
    struct claim *c = claim_find(p, b, pod, family, ip);
    bool changed = false;

    if (c == NULL) {
        c = claim_new(p, b, pod, family, ip);
        c->first_seen = c->last_seen = pod->seen_ns;
        c->reported = true;
        changed = true;
    } else {
        lru_unlink(p, c);
        c->reported = true;
        if (pod->seen_ns < c->first_seen)
            c->first_seen = pod->seen_ns;
        if (pod->seen_ns > c->last_seen)
            c->last_seen = pod->seen_ns;
    }
    lru_push_head(p, c);
    if (c->workload != pod->workload || c->workload_kind != pod->workload_kind ||
        c->host_network != pod->host_network) {
        c->workload = pod->workload;
        c->workload_kind = pod->workload_kind;
        c->host_network = pod->host_network;
        changed = true;
    }
    /* A node never holds two live pods with one address: the newer one ends the older. */
    for (struct claim *o = at(p, p->buckets[b]); o; o = at(p, o->next)) {
        if (o == c || !same_addr(o, family, ip) || o->node != c->node || o->host_network ||
            c->host_network)
            continue;
        if (o->first_seen < c->first_seen)
            claim_end_at(o, c->first_seen);
        else if (c->first_seen < o->first_seen)
            claim_end_at(c, o->first_seen);
    }
    if (changed || c->announced + p->ttl_ns / 4 <= pod->seen_ns)
        *due = true;
    return changed;
}

/* One address of a deleted pod: its claim ends at gone_ns; true when that changed it. */
static bool gone_ip(struct peers *p, const struct peers_pod *pod, unsigned family,
                    const uint8_t ip[16])
{
    uint32_t b = bucket_of(p, family, ip);
    struct claim *c = claim_find(p, b, pod, family, ip);

    if (c && c->ended && c->ended <= pod->gone_ns)
        return false;
    if (c == NULL) {
        /* Not seen yet: a batch from before the deletion may still come, and finds this
         * claim ended. first_seen 0: it never ends another pod's claim. */
        c = claim_new(p, b, pod, family, ip);
        c->workload = pod->workload;
        c->workload_kind = pod->workload_kind;
        c->host_network = pod->host_network;
        c->last_seen = pod->gone_ns;
        lru_push_head(p, c);
    }
    claim_end_at(c, pod->gone_ns);
    p->st.gone++;
    return true;
}

bool peers_observe(struct peers *p, const struct peers_pod *pod)
{
    bool due = false;

    if (!pod->node || !pod->namespace || !pod->pod)
        return false;
    pthread_mutex_lock(&p->lock);
    if (pod->gone_ns) {
        for (unsigned i = 0; i < pod->n_ips && i < PEERS_POD_MAX_IPS; i++)
            if (pod->family[i] == EVENT_FAMILY_IPV4 || pod->family[i] == EVENT_FAMILY_IPV6)
                due |= gone_ip(p, pod, pod->family[i], pod->ip[i]);
        pthread_mutex_unlock(&p->lock);
        return due;
    }
    for (unsigned i = 0; i < pod->n_ips && i < PEERS_POD_MAX_IPS; i++)
        if (pod->family[i] == EVENT_FAMILY_IPV4 || pod->family[i] == EVENT_FAMILY_IPV6)
            observe_ip(p, pod, pod->family[i], pod->ip[i], &due);
    if (due) {
        /* The caller announces it now; a replica applying it notes the same. */
        for (unsigned i = 0; i < pod->n_ips && i < PEERS_POD_MAX_IPS; i++) {
            uint32_t b = bucket_of(p, pod->family[i], pod->ip[i]);
            for (struct claim *o = at(p, p->buckets[b]); o; o = at(p, o->next))
                if (same_addr(o, pod->family[i], pod->ip[i]) && same_pod(o, pod) &&
                    o->announced < pod->seen_ns)
                    o->announced = pod->seen_ns;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return due;
}

/* ---- looking up ---- */

static enum peers_result lookup_locked(struct peers *p, unsigned family, const uint8_t addr[16],
                                       uint64_t now, struct event_peer *out)
{
    uint32_t *pp = &p->buckets[bucket_of(p, family, addr)];
    const struct claim *named = NULL;
    unsigned valid = 0;
    bool stale = false, host = false;

    while (*pp != NIL) {
        struct claim *c = at(p, *pp);
        if (!same_addr(c, family, addr)) {
            pp = &c->next;
            continue;
        }
        if (claim_expired(p, c, now)) {
            claim_remove(p, c); /* *pp now links the next one */
            p->st.expired++;
            stale = true;
            continue;
        }
        pp = &c->next;
        if (!claim_valid(p, c, now))
            stale = true;
        else if (c->host_network)
            host = true;
        else {
            valid++;
            named = c;
        }
    }
    if (host)
        return PEERS_HOST_NETWORK;
    if (valid > 1)
        return PEERS_AMBIGUOUS;
    if (valid == 1) {
        if (out) {
            out->pod = named->pod;
            out->namespace = named->namespace;
            out->workload = named->workload;
            out->workload_kind = named->workload_kind;
            out->node = named->node;
        }
        return PEERS_HIT;
    }
    return stale ? PEERS_STALE : PEERS_MISS;
}

/* c as a pod of one address, seen when last reported; ended: deleted at its end. */
static void claim_as_pod(const struct claim *c, struct peers_pod *o)
{
    *o = (struct peers_pod){.node = c->node,
                            .namespace = c->namespace,
                            .pod = c->pod,
                            .uid = c->uid,
                            .workload = c->workload,
                            .workload_kind = c->workload_kind,
                            .host_network = c->host_network,
                            .n_ips = 1,
                            .family = {c->family},
                            .seen_ns = c->last_seen,
                            .gone_ns = c->ended};
    memcpy(o->ip[0], c->ip, sizeof(o->ip[0]));
}

size_t peers_dump(struct peers *p, uint64_t now, uint32_t *cursor, struct peers_pod *out,
                  size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&p->lock);
    for (; *cursor < p->max && n < max; (*cursor)++) {
        const struct claim *c = &p->pool[*cursor];
        if (!c->node || claim_expired(p, c, now) || (!c->reported && !c->ended))
            continue;
        claim_as_pod(c, &out[n++]);
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

static int ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const char *const *)a, y = (uintptr_t) * (const char *const *)b;
    return x < y ? -1 : x > y;
}

/*
 * Whether node's pod list may be applied at now: not within a second of its last. Its entry is
 * one of 8 slots from its name's hash; with none its own, the stalest of them is taken over.
 * Lock held.
 */
static bool list_due(struct peers *p, const char *node, uint64_t now)
{
    size_t h = (size_t)(((uintptr_t)node * 0x9e3779b97f4a7c15ull) >> 56), take = h;

    for (size_t i = 0; i < 8; i++) {
        size_t j = (h + i) & (PEERS_LIST_SLOTS - 1);
        if (p->lists[j].node == node) {
            if (now >= p->lists[j].at && now - p->lists[j].at < 1000000000ull)
                return false;
            take = j;
            break;
        }
        if (!p->lists[j].node || p->lists[j].at < p->lists[take & (PEERS_LIST_SLOTS - 1)].at)
            take = j;
        if (!p->lists[j].node)
            break;
    }
    take &= PEERS_LIST_SLOTS - 1;
    p->lists[take].node = node;
    p->lists[take].at = now;
    return true;
}

size_t peers_node_present(struct peers *p, const char *node, const char *const *uids, size_t n,
                          uint64_t at_ns, uint64_t now, struct peers_pod *out, size_t max)
{
    const char **sorted = malloc((n ? n : 1) * sizeof(*sorted));
    size_t written = 0;

    if (!sorted || !node || !at_ns) {
        free(sorted);
        return 0; /* nothing ended: the claims run out as before */
    }
    memcpy(sorted, uids, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), ptr_cmp);
    pthread_mutex_lock(&p->lock);
    if (!list_due(p, node, now)) {
        p->st.lists_skipped++;
        pthread_mutex_unlock(&p->lock);
        free(sorted);
        return 0;
    }
    p->st.lists++;
    for (uint32_t i = 0; i < p->max; i++) {
        struct claim *c = &p->pool[i];
        if (c->node != node || !c->uid || !c->reported || c->first_seen >= at_ns ||
            (c->ended && c->ended <= at_ns) ||
            bsearch(&c->uid, sorted, n, sizeof(*sorted), ptr_cmp))
            continue;
        claim_end_at(c, at_ns);
        p->st.gone++;
        if (written < max)
            claim_as_pod(c, &out[written++]);
    }
    pthread_mutex_unlock(&p->lock);
    free(sorted);
    return written;
}

bool peers_host_network(struct peers *p, unsigned family, const uint8_t addr[16], uint64_t now)
{
    bool host = false;

    if (family != EVENT_FAMILY_IPV4 && family != EVENT_FAMILY_IPV6)
        return false;
    pthread_mutex_lock(&p->lock);
    for (struct claim *c = at(p, p->buckets[bucket_of(p, family, addr)]); c && !host;
         c = at(p, c->next))
        host = same_addr(c, family, addr) && c->host_network && claim_valid(p, c, now);
    pthread_mutex_unlock(&p->lock);
    return host;
}

enum peers_result peers_lookup(struct peers *p, unsigned family, const uint8_t addr[16],
                               uint64_t now, struct event_peer *out)
{
    struct event_peer found = {0};

    if (family != EVENT_FAMILY_IPV4 && family != EVENT_FAMILY_IPV6)
        return PEERS_MISS;
    pthread_mutex_lock(&p->lock);
    enum peers_result r = lookup_locked(p, family, addr, now, &found);
    p->st.lookups++;
    p->st.results[r]++;
    pthread_mutex_unlock(&p->lock);
    if (r == PEERS_HIT && out)
        *out = found;
    return r;
}

/* Fills only what is empty: the agent's own answer always stands. */
void peers_fill(struct event_peer *dst, const struct event_peer *src)
{
    if (!dst->pod)
        dst->pod = src->pod;
    if (!dst->namespace)
        dst->namespace = src->namespace;
    if (!dst->workload)
        dst->workload = src->workload;
    if (!dst->workload_kind)
        dst->workload_kind = src->workload_kind;
    if (!dst->node)
        dst->node = src->node;
}

bool peers_event_peer(const struct event *e, const uint8_t **addr, uint16_t *port)
{
    bool client = e->type == EVENT_CONNECTION ||
                  (e->type == EVENT_CLOSE && e->u.close.role == EVENT_ROLE_CLIENT);
    bool server =
        e->type == EVENT_ACCEPT || (e->type == EVENT_CLOSE && e->u.close.role == EVENT_ROLE_SERVER);
    if (!client && !server)
        return false;
    *addr = client ? e->daddr : e->saddr;
    *port = client ? e->dport : e->sport;
    return true;
}

/* Interned strings compare by pointer; the rest by content. */
static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/*
 * Empties each field of acc that one does not name the same, and what means
 * nothing without another: a workload is a namespace's, its kind the
 * workload's, a pod a namespace's, a node the pod's.
 */
static void agree(struct event_peer *acc, const struct event_peer *one)
{
    const char **a[] = {&acc->pod,  &acc->namespace, &acc->workload, &acc->workload_kind,
                        &acc->node, &acc->service,   &acc->dns};
    const char *const b[] = {one->pod,  one->namespace, one->workload, one->workload_kind,
                             one->node, one->service,   one->dns};
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
        if (!same_str(*a[i], b[i]))
            *a[i] = NULL;
    if (!acc->namespace)
        acc->workload = acc->pod = NULL;
    if (!acc->workload)
        acc->workload_kind = NULL;
    if (!acc->pod)
        acc->node = NULL;
}

bool peers_event_resolve(const struct event *e, peers_lookup_fn fn, void *ctx,
                         struct event_peer *out)
{
    const uint8_t *addr;
    uint16_t port;

    memset(out, 0, sizeof(*out));
    if (peers_event_peer(e, &addr, &port)) {
        if (e->family != EVENT_FAMILY_IPV4 && e->family != EVENT_FAMILY_IPV6)
            return false;
        if (fn(ctx, e->family, addr, port, e->protocol, out))
            return true;
        memset(out, 0, sizeof(*out));
        return false;
    }
    if (e->type != EVENT_DNS || e->status != EVENT_STATUS_ANSWERED || !e->u.dns.answers)
        return false;
    size_t named = 0;
    const char *a = e->u.dns.answers, *end = a + e->u.dns.answers_len, *nul;
    for (; a < end && (nul = memchr(a, '\0', (size_t)(end - a))) != NULL; a = nul + 1) {
        uint8_t ip[16];
        unsigned family = event_addr_parse(a, ip);
        if (family == EVENT_FAMILY_NONE)
            continue; /* a CNAME target */
        struct event_peer one = {0};
        if (!fn(ctx, family, ip, 0, 0, &one)) {
            memset(out, 0, sizeof(*out));
            return false;
        }
        if (named++ == 0)
            *out = one;
        else
            agree(out, &one);
    }
    return named > 0;
}

struct pods_lookup {
    struct peers *p;
    uint64_t now;
    enum peers_result r; /* the first address's that was not a hit, else PEERS_HIT */
};

static bool pods_lookup(void *ctx, unsigned family, const uint8_t addr[16], uint16_t port,
                        uint8_t protocol, struct event_peer *out)
{
    struct pods_lookup *l = ctx;
    enum peers_result r = lookup_locked(l->p, family, addr, l->now, out);
    if (r != PEERS_HIT)
        l->r = r;
    return r == PEERS_HIT;
}

void peers_enrich(struct peers *p, struct event *events, size_t n, uint64_t now, bool count)
{
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < n; i++) {
        struct event *e = &events[i];
        if (e->peer.pod != NULL)
            continue;
        struct pods_lookup l = {.p = p, .now = now, .r = PEERS_HIT};
        struct event_peer found;
        if (peers_event_resolve(e, pods_lookup, &l, &found))
            peers_fill(&e->peer, &found);
        else if (l.r == PEERS_HIT)
            continue; /* no peer address to look up */
        if (count) {
            p->st.lookups++;
            p->st.results[l.r]++;
        }
    }
    pthread_mutex_unlock(&p->lock);
}

/* ---- pods from events ---- */

bool peers_pod_ips_parse(struct peers_pod *pod, const char *text)
{
    char one[INET6_ADDRSTRLEN + 1];

    pod->n_ips = 0;
    while (text && *text && pod->n_ips < PEERS_POD_MAX_IPS) {
        const char *end = strchr(text, ',');
        size_t len = end ? (size_t)(end - text) : strlen(text);
        if (len > 0 && len < sizeof(one)) {
            memcpy(one, text, len);
            one[len] = '\0';
            uint8_t *ip = pod->ip[pod->n_ips];
            memset(ip, 0, 16);
            if (inet_pton(AF_INET, one, ip) == 1)
                pod->family[pod->n_ips++] = EVENT_FAMILY_IPV4;
            else if (inet_pton(AF_INET6, one, ip) == 1)
                pod->family[pod->n_ips++] = EVENT_FAMILY_IPV6;
        }
        text = end ? end + 1 : NULL;
    }
    return pod->n_ips > 0;
}

static bool pod_same_attr(const struct peers_pod *pod, const struct event *e, const char *node)
{
    return pod->pod == e->k8s.pod_name && pod->namespace == e->k8s.namespace &&
           pod->uid == e->k8s.pod_uid && pod->node == node;
}

#define POD_SLOTS 512 /* a power of two above PEERS_ANNOUNCE_MAX_PODS */

size_t peers_pods_from_events(const struct event *events, size_t n, uint64_t seen_ns,
                              struct peers_pod *out, size_t max)
{
    uint16_t slot[POD_SLOTS] = {0}; /* 1-based index into out, by pod name pointer */
    size_t got = 0;

    if (max > PEERS_ANNOUNCE_MAX_PODS)
        max = PEERS_ANNOUNCE_MAX_PODS;
    for (size_t i = 0; i < n; i++) {
        const struct event *e = &events[i];
        const char *node = e->k8s.node_name ? e->k8s.node_name : e->node;
        if (!e->k8s.pod_name || !e->k8s.namespace || !node || !e->k8s.ips)
            continue;
        /* Interned: the same pod has the same pointers. */
        unsigned h = (unsigned)(((uintptr_t)e->k8s.pod_name * 0x9e3779b97f4a7c15ull) >> 55);
        bool seen = false;
        for (;; h = (h + 1) & (POD_SLOTS - 1)) {
            if (slot[h] == 0 || (seen = pod_same_attr(&out[slot[h] - 1], e, node)))
                break;
        }
        if (seen || got == max)
            continue;
        struct peers_pod *pod = &out[got];
        memset(pod, 0, sizeof(*pod));
        if (!peers_pod_ips_parse(pod, e->k8s.ips))
            continue;
        pod->node = node;
        pod->namespace = e->k8s.namespace;
        pod->pod = e->k8s.pod_name;
        pod->uid = e->k8s.pod_uid;
        pod->workload = e->k8s.workload;
        pod->workload_kind = e->k8s.workload_kind;
        pod->host_network = e->k8s.host_network;
        pod->seen_ns = seen_ns;
        slot[h] = (uint16_t)++got;
    }
    return got;
}

/* ---- live workloads ---- */

static size_t live_slot(const struct peers *p, const char *ns, const char *wl)
{
    uint64_t h = (uintptr_t)ns * 0x9e3779b97f4a7c15ull ^ (uintptr_t)wl * 0xc2b2ae3d27d4eb4full;
    return (size_t)(h >> 32) & (p->live_cap - 1);
}

/* The set of workloads with a valid claim, now; live_ok false without memory. */
static void live_build(struct peers *p, uint64_t now)
{
    size_t cap = 16;
    while (cap < 2 * (size_t)p->st.entries + 2)
        cap *= 2;
    if (cap > p->live_cap) {
        struct live_workload *v = realloc(p->live, cap * sizeof(*v));
        if (!v) {
            p->live_ok = false;
            return;
        }
        p->live = v;
        p->live_cap = cap;
    }
    memset(p->live, 0, p->live_cap * sizeof(*p->live));
    for (uint32_t l = p->lru_head; l != NIL; l = at(p, l)->lru_next) {
        const struct claim *c = at(p, l);
        const char *wl = c->workload ? c->workload : c->pod;
        if (!c->namespace || !wl || !claim_valid(p, c, now))
            continue;
        size_t i = live_slot(p, c->namespace, wl);
        while (p->live[i].namespace &&
               (p->live[i].namespace != c->namespace || p->live[i].workload != wl))
            i = (i + 1) & (p->live_cap - 1);
        p->live[i] = (struct live_workload){c->namespace, wl};
    }
    p->live_built = now;
    p->live_ok = true;
}

bool peers_workload_alive(struct peers *p, const char *namespace, const char *workload,
                          uint64_t now)
{
    bool alive = true; /* without memory for the set, nothing is said gone */

    pthread_mutex_lock(&p->lock);
    if (!p->live_ok || now < p->live_built || now - p->live_built > 1000000000ull)
        live_build(p, now);
    if (p->live_ok) {
        size_t i = live_slot(p, namespace, workload);
        while (p->live[i].namespace &&
               (p->live[i].namespace != namespace || p->live[i].workload != workload))
            i = (i + 1) & (p->live_cap - 1);
        alive = p->live[i].namespace != NULL;
    }
    pthread_mutex_unlock(&p->lock);
    return alive;
}

/* ---- stats ---- */

void peers_get_stats(struct peers *p, struct peers_stats *out)
{
    pthread_mutex_lock(&p->lock);
    *out = p->st;
    pthread_mutex_unlock(&p->lock);
}

/* ---- announcements ---- */

void peers_name_write(struct buf *b, const char *key, const char *v)
{
    if (!v)
        return;
    buf_puts(b, ",\""); /* no printf: announcements write five per pod */
    buf_puts(b, key);
    buf_puts(b, "\":");
    buf_json_cstr(b, v);
}

/* "pods":[...]: the pod objects of announcements and of the deletions an agent sends. */
static void pods_write(struct buf *out, const struct peers_pod *pods, size_t n)
{
    char text[INET6_ADDRSTRLEN];

    buf_puts(out, "\"pods\":[");
    for (size_t i = 0; i < n; i++) {
        const struct peers_pod *pod = &pods[i];
        /* The fixed members first, so the object is valid whichever names are missing. */
        buf_printf(out, "%s{\"host_network\":%s,\"seen_ns\":%" PRIu64, i ? "," : "",
                   pod->host_network ? "true" : "false", pod->seen_ns);
        if (pod->gone_ns)
            buf_printf(out, ",\"gone_ns\":%" PRIu64, pod->gone_ns);
        peers_name_write(out, "node", pod->node);
        peers_name_write(out, "namespace", pod->namespace);
        peers_name_write(out, "pod", pod->pod);
        peers_name_write(out, "uid", pod->uid);
        peers_name_write(out, "workload", pod->workload);
        peers_name_write(out, "workload_kind", pod->workload_kind);
        buf_puts(out, ",\"ips\":[");
        for (unsigned j = 0; j < pod->n_ips && j < PEERS_POD_MAX_IPS; j++) {
            buf_puts(out, j ? "," : "");
            buf_json_cstr(out, event_addr_str(pod->family[j], pod->ip[j], text, sizeof(text)));
        }
        buf_puts(out, "]}");
    }
    buf_putc(out, ']');
}

void peers_announce_write(struct buf *out, const char *replica, const struct peers_pod *pods,
                          size_t n)
{
    buf_puts(out, "{\"replica\":");
    buf_json_cstr(out, replica ? replica : "");
    buf_putc(out, ',');
    pods_write(out, pods, n);
    buf_putc(out, '}');
}

void peers_gone_write(struct buf *out, const struct peers_pod *pods, size_t n)
{
    buf_putc(out, '{');
    pods_write(out, pods, n);
    buf_putc(out, '}');
}

bool peers_name_read(json_t *o, const char *key, bool required, const char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return !required;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > PEERS_NAME_MAX)
        return false;
    *out = intern_n(json_string_value(v), json_string_length(v));
    return *out != NULL;
}

static int parse_pod(json_t *o, struct peers_pod *pod, char *err, size_t errlen)
{
    json_t *ips = json_object_get(o, "ips");
    json_t *seen = json_object_get(o, "seen_ns");
    json_t *host = json_object_get(o, "host_network");
    json_t *gone = json_object_get(o, "gone_ns");
    size_t i;
    json_t *ip;

    memset(pod, 0, sizeof(*pod));
    if (!json_is_object(o) || !peers_name_read(o, "node", true, &pod->node) ||
        !peers_name_read(o, "namespace", true, &pod->namespace) ||
        !peers_name_read(o, "pod", true, &pod->pod) ||
        !peers_name_read(o, "uid", false, &pod->uid) ||
        !peers_name_read(o, "workload", false, &pod->workload) ||
        !peers_name_read(o, "workload_kind", false, &pod->workload_kind)) {
        errmsg_set(err, errlen, "a pod needs string node, namespace and pod (at most %d bytes)",
                   PEERS_NAME_MAX);
        return -EINVAL;
    }
    if (!json_is_integer(seen) || json_integer_value(seen) <= 0 ||
        (host != NULL && !json_is_boolean(host))) {
        errmsg_set(err, errlen, "a pod needs a positive seen_ns and a boolean host_network");
        return -EINVAL;
    }
    if (gone != NULL && (!json_is_integer(gone) || json_integer_value(gone) <= 0)) {
        errmsg_set(err, errlen, "a pod's gone_ns must be a positive integer");
        return -EINVAL;
    }
    pod->seen_ns = (uint64_t)json_integer_value(seen);
    pod->gone_ns = gone ? (uint64_t)json_integer_value(gone) : 0;
    pod->host_network = json_is_true(host);
    if (!json_is_array(ips) || json_array_size(ips) == 0 ||
        json_array_size(ips) > PEERS_POD_MAX_IPS) {
        errmsg_set(err, errlen, "a pod needs 1 to %d addresses in ips", PEERS_POD_MAX_IPS);
        return -EINVAL;
    }
    json_array_foreach(ips, i, ip)
    {
        const char *s = json_string_value(ip);
        uint8_t *dst = pod->ip[pod->n_ips];
        if (s && json_string_length(ip) < INET6_ADDRSTRLEN && inet_pton(AF_INET, s, dst) == 1)
            pod->family[pod->n_ips++] = EVENT_FAMILY_IPV4;
        else if (s && json_string_length(ip) < INET6_ADDRSTRLEN && inet_pton(AF_INET6, s, dst) == 1)
            pod->family[pod->n_ips++] = EVENT_FAMILY_IPV6;
        else {
            errmsg_set(err, errlen, "ips holds something that is not an IP address");
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * An object with a pods array of at most max (and limit) pods into out. An
 * announcement (!gone) also needs a string replica member, copied into
 * replica when one is given; a list of deletions (gone) needs a gone_ns in
 * every pod. Returns the pod count or -EINVAL.
 */
static int parse_pods(const char *data, size_t len, char *replica, size_t replica_len,
                      struct peers_pod *out, size_t max, size_t limit, bool gone, char *err,
                      size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *pods = json_object_get(root, "pods");
    json_t *id = json_object_get(root, "replica");
    const char *what = gone ? "a list of deleted pods" : "an announcement";
    int rc = -EINVAL;
    size_t i;
    json_t *o;

    if (root == NULL) {
        errmsg_set(err, errlen, "not JSON: %s", jerr.text);
        return -EINVAL;
    }
    if ((!gone && !json_is_string(id)) || !json_is_array(pods)) {
        errmsg_set(err, errlen, "%s needs %sa pods array", what,
                   gone ? "" : "a string replica and ");
        goto out;
    }
    if (json_array_size(pods) > max || json_array_size(pods) > limit) {
        errmsg_set(err, errlen, "%zu pods: at most %zu in %s", json_array_size(pods), limit, what);
        goto out;
    }
    json_array_foreach(pods, i, o)
    {
        if (parse_pod(o, &out[i], err, errlen) < 0)
            goto out;
        if (gone && out[i].gone_ns == 0) {
            errmsg_set(err, errlen, "a deleted pod needs a positive gone_ns");
            goto out;
        }
    }
    if (!gone && replica && replica_len)
        snprintf(replica, replica_len, "%s", json_string_value(id));
    rc = (int)json_array_size(pods);
out:
    json_decref(root);
    return rc;
}

int peers_announce_parse(const char *data, size_t len, char *replica, size_t replica_len,
                         struct peers_pod *out, size_t max, char *err, size_t errlen)
{
    return parse_pods(data, len, replica, replica_len, out, max, PEERS_ANNOUNCE_MAX_PODS, false,
                      err, errlen);
}

int peers_gone_parse(const char *data, size_t len, struct peers_pod *out, size_t max, char *err,
                     size_t errlen)
{
    return parse_pods(data, len, NULL, 0, out, max, PEERS_GONE_MAX_PODS, true, err, errlen);
}

void peers_present_write(struct buf *out, uint64_t at_ns, const char *const *uids, size_t n)
{
    buf_printf(out, "{\"at_ns\":%" PRIu64 ",\"uids\":[", at_ns);
    for (size_t i = 0; i < n; i++) {
        buf_puts(out, i ? "," : "");
        buf_json_cstr(out, uids[i]);
    }
    buf_puts(out, "]}");
}

int peers_present_parse(const char *data, size_t len, uint64_t *at_ns, const char **uids,
                        size_t max, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *at = json_object_get(root, "at_ns");
    json_t *list = json_object_get(root, "uids");
    int rc = -EINVAL;
    size_t i;
    json_t *v;

    if (root == NULL) {
        errmsg_set(err, errlen, "not JSON: %s", jerr.text);
        return -EINVAL;
    }
    if (!json_is_integer(at) || json_integer_value(at) <= 0 || !json_is_array(list)) {
        errmsg_set(err, errlen, "a pod list needs a positive at_ns and a uids array");
        goto out;
    }
    if (json_array_size(list) > max || json_array_size(list) > PEERS_PRESENT_MAX_PODS) {
        errmsg_set(err, errlen, "%zu pods: at most %d in a pod list", json_array_size(list),
                   PEERS_PRESENT_MAX_PODS);
        goto out;
    }
    json_array_foreach(list, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            json_string_length(v) > PEERS_NAME_MAX ||
            !(uids[i] = intern_n(json_string_value(v), json_string_length(v)))) {
            errmsg_set(err, errlen, "uids holds something that is not a UID (1 to %d bytes)",
                       PEERS_NAME_MAX);
            goto out;
        }
    }
    *at_ns = (uint64_t)json_integer_value(at);
    rc = (int)json_array_size(list);
out:
    json_decref(root);
    return rc;
}

/*
 * The bounded, indexed event history.
 *
 * Layout: one shard per (node, type, connection status, Kubernetes
 * attribution, peer identity, address size).
 * A shard is a growable circular deque of compact records sorted by
 * (timestamp, id) ascending, so the oldest event is at the front and new
 * events usually append at the back. Events that arrive out of order (per-CPU
 * ring buffers, batches from many nodes) are placed by binary search and a
 * shift of the shorter side.
 *
 * Compact records: what the shard key already says (node, type, status,
 * protocol, address family, the interned Kubernetes and peer strings; a
 * connection's status already implies its protocol, so the last two add few
 * shards) is kept once per
 * shard, not per event, and a record holds only the part of the event union
 * its type uses and only the address bytes its shard needs (none, 4 for
 * IPv4, 16 otherwise). That keeps a stored IPv4 connection at 80 bytes
 * instead of a 176-byte struct event.
 *
 * A shard whose last event is evicted leaves the key table and the lists
 * queries read and is reused for the next new key, so pods that come and go
 * do not leave empty shards behind for queries to walk.
 *
 * Time lists: every held event is also in the time list of its type, a
 * deque of (timestamp, id, shard) in that order. The globally oldest event
 * is the oldest of the lists' fronts, so eviction (count and age limits
 * alike) reads a few hot lines instead of sifting a heap over the shards.
 * A query whose only filters are types, time bounds and a cursor (the
 * newest events, a time window, a paged walk) binary-searches these lists
 * and reads only the events it returns, where the shard path below would
 * search every shard (tens of thousands in a large cluster).
 *
 * Adding in batches (store_add_move_batch()) prefetches what each event of a
 * group and the events it will evict touch, so their cache misses overlap.
 *
 * Other queries pick shards by the filters the key holds (type, node, pod,
 * namespace, workload, status, peer_*), binary-search each for the time
 * bounds and the cursor, and merge the ranges newest first with a max-heap.
 * Counting needs no scan for those filters.
 *
 * Per-event fields (pid, command, dest_port) have posting lists: one
 * time-ordered deque of (timestamp, id, shard) per value, appended on add. A
 * list is not touched when one of its events is evicted: eviction goes in
 * the order of that key, so an entry whose key is at or before the last
 * evicted one (store.gone) is dead, and a list's dead entries are the front
 * of it, which queries skip. The store counts them (an evicted record says
 * which lists it was in without looking them up), and whenever there are
 * more than an eighth of its capacity a sweep walks the lists' table on,
 * bucket by bucket (a bounded number per eviction), popping dead entries
 * and freeing the lists left empty, until half as many remain: the lists
 * stay bounded by the store, and a value no event holds any more keeps no
 * list for long. This spares
 * eviction three hash lookups and their cache misses per event where values
 * recur (a long-lived pid, a command, a port); where every event brings new
 * values the sweep frees about as many lists per eviction as eviction used
 * to. A query with such a filter walks the shortest of its lists, or the
 * selected shards when those hold fewer candidates.
 *
 * One rwlock: queries share it, adds and expiry take it exclusively, with
 * writers preferred so a stream of queries cannot starve ingestion.
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "tvec.h"

#define STORE_SHARD_MIN_CAP 1
/*
 * Blocks of the time lists: each holds a type's every event, so an event
 * placed in the middle (a late one) moves one entry per block after it;
 * 4096 entries (80 KiB) keep that to a few dozen blocks in a history of
 * millions.
 */
#define STORE_TIME_BLOCK_SHIFT 12
#define STORE_SHARD_SLAB       64
/* The largest record: the fixed part, the largest union member and two IPv6 addresses. */
#define STORE_REC_MAX (sizeof(struct store_rec) + sizeof(((struct event *)0)->u) + 32)

/*
 * The fixed part of a record; the type's union member and the addresses
 * follow it (see rec_pack()). Fields are copied in and out with memcpy, so
 * records need no alignment beyond 8 bytes. 56 bytes: a record's size is a
 * multiple of 8 and every union member and address size is too, so each
 * byte above 56 would cost 8.
 */
struct store_rec {
    uint64_t timestamp_ns;
    uint64_t id;
    uint64_t cgroup_id;
    uint32_t pid, ppid, uid;
    uint16_t sport, dport;
    char command[EVENT_COMM_LEN];
};

_Static_assert(sizeof(struct store_rec) == 56, "a record's fixed part is 56 bytes");

/*
 * A query reads every selected shard: what it needs of one without a name
 * filter (type, status, the records and the newest key) is its first cache
 * line; the names of the key follow.
 */
struct store_shard {
    uint8_t type;
    uint8_t status;
    uint8_t family;   /* the events' address family */
    uint8_t protocol; /* and IP protocol */
    uint8_t alen;     /* address bytes per record: 0, 4 or 16 */
    /* The key of the newest record (valid while recs.len > 0). */
    uint64_t newest_ts, newest_id;
    struct tvec recs; /* the records (recs.esz bytes each, a multiple of 8), oldest first */

    uint32_t index;    /* position in store.shards, what posting lists refer to */
    uint32_t live_pos; /* position in store.live, and in its type's list */
    uint32_t type_pos;
    uint64_t hash; /* store_hash() of its key */
    /* The rest of the key: everything its events share. Pointers are interned (compared by
     * value). */
    const char *node; /* NULL for events without a node */
    struct event_k8s k8s;
    struct event_peer peer;
    size_t u_size; /* bytes of the event union kept */
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct store_shard, index) <= 64, "a shard's query fields fill one line");

/* The per-event fields that have posting lists. */
enum post_field {
    POST_PID,
    POST_COMMAND,
    POST_DEST_PORT,
    POST_FIELDS,
};

/* One event in a posting list; lists sort by (timestamp, id, shard) ascending. */
struct post_entry {
    uint64_t timestamp_ns;
    uint64_t id;
    uint32_t shard;
} __attribute__((packed));

/*
 * The events holding one value of one field; freed when its last event is
 * evicted. Most values (a pid, a port) hold few events: up to POST_INLINE
 * entries live in the list itself; a list that outgrows them keeps a tiered
 * vector (pkg/tvec.h) in their place until it is empty.
 */
#define POST_INLINE 2

struct post_list {
    struct post_list *next; /* hash chain */
    uint64_t hash;
    uint8_t field;
    uint8_t value[EVENT_COMM_LEN]; /* the value's bytes, zero-padded */
    bool big;                      /* the entries are in tv */
    uint32_t len;
    union {
        struct tvec tv;
        struct post_entry inl[POST_INLINE];
    };
};

_Static_assert(sizeof(struct tvec) <= sizeof(struct post_entry[POST_INLINE]),
               "a list's tiered vector takes the place of its inline entries");

/* Bytes of a list's entries outside the list itself. */
static inline size_t post_heap_bytes(const struct post_list *l)
{
    return l->big ? tvec_bytes(&l->tv) : 0;
}

struct post_index {
    struct post_list **buckets;
    size_t nbuckets, nlists;
    size_t bytes; /* lists, their entries and the buckets */
    size_t sweep; /* the next bucket the sweep visits */
    size_t dead;  /* entries of evicted events still in lists */
    bool sweeping;
};

struct shard_list {
    struct store_shard **shards;
    size_t n, cap;
};

/* Room for at least n in *arr (*cap entries now), doubling from 16. 0 or -ENOMEM. */
static int shard_ptrs_reserve(struct store_shard ***arr, size_t *cap, size_t n)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    while (c < n)
        c *= 2;
    struct store_shard **p = realloc(*arr, c * sizeof(*p));
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

/* Room for one more in l. 0 or -ENOMEM. */
static int shard_list_reserve(struct shard_list *l)
{
    return shard_ptrs_reserve(&l->shards, &l->cap, l->n + 1);
}

struct store {
    pthread_rwlock_t lock;
    struct store_limits limits;

    /*
     * Every shard made, by index (stable: posting lists refer to it). A shard
     * whose last event goes is taken out of the key table and the lists below
     * and kept for the next new key (free), so the shards are bounded by the
     * most ever held at once, not by every key ever seen (pods come and go).
     */
    struct store_shard **shards;
    size_t nshards, shards_cap;
    struct shard_list live; /* the shards in the key table, which queries read */
    struct store_shard **free_shards;
    size_t nfree, free_cap;
    /* Shards are made STORE_SHARD_SLAB at a time (aligned, no allocation header each):
     * shard i is in slabs[i / STORE_SHARD_SLAB]. */
    struct store_shard **slabs;
    size_t slabs_cap;
    /* The same shards by event type, so a query for some types reads only theirs. */
    struct shard_list by_type[EVENT_TYPE_COUNT];
    struct store_shard **table; /* open addressing over the shard key; NULL = free */
    size_t table_cap;

    struct post_index post;
    /* Every held event by type, oldest first (big lists outside post's table; their memory
     * is counted in post.bytes). */
    struct post_list by_time[EVENT_TYPE_COUNT];

    size_t count;
    uint64_t newest_ns; /* of the events held: only evicting the last one can remove it */
    /* The key of the last event evicted (when any_gone): every event held is after it, and a
     * posting list entry at or before it is dead (see the top of this file). */
    struct post_entry gone;
    bool any_gone;
    struct store_stats st; /* counters only; events/capacity/oldest/newest filled on demand */
};

/* ---- keys and shards ---------------------------------------------------------------------- */

/* Ascending order: <0 when a is older than b. */
static int store_key_cmp(uint64_t ts_a, uint64_t id_a, uint64_t ts_b, uint64_t id_b)
{
    if (ts_a != ts_b)
        return ts_a < ts_b ? -1 : 1;
    if (id_a != id_b)
        return id_a < id_b ? -1 : 1;
    return 0;
}

/* Bytes of the event union a type uses (its owned pointers travel with them). */
static size_t union_size(uint8_t type)
{
    switch (type) {
    case EVENT_CONNECTION:
    case EVENT_ACCEPT:
        return sizeof(((struct event *)0)->u.conn);
    case EVENT_PACKET_DROP:
        return sizeof(((struct event *)0)->u.drop);
    case EVENT_EXEC:
        return sizeof(((struct event *)0)->u.exec);
    case EVENT_EXIT:
        return sizeof(((struct event *)0)->u.exit);
    case EVENT_CLOSE:
        return sizeof(((struct event *)0)->u.close);
    case EVENT_DNS:
        return sizeof(((struct event *)0)->u.dns);
    default:
        return sizeof(((struct event *)0)->u);
    }
}

static bool bytes_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Address bytes that hold data: 0 (none), 4 (IPv4-sized) or 16. */
static uint8_t event_alen(const struct event *e)
{
    if (!bytes_zero(e->saddr + 4, 12) || !bytes_zero(e->daddr + 4, 12))
        return 16;
    if (!bytes_zero(e->saddr, 4) || !bytes_zero(e->daddr, 4))
        return 4;
    return 0;
}

static inline unsigned char *shard_at(const struct store_shard *sh, size_t i)
{
    return tvec_at(&sh->recs, i);
}

static inline const struct store_rec *shard_rec(const struct store_shard *sh, size_t i)
{
    return (const struct store_rec *)shard_at(sh, i);
}

/* Packs e's per-event fields into rec (ownership of exec/dns strings moves with the union bytes).
 */
static inline void rec_pack(const struct store_shard *sh, unsigned char *rec, const struct event *e)
{
    struct store_rec *r = (struct store_rec *)rec;
    r->timestamp_ns = e->timestamp_ns;
    r->id = e->id;
    r->cgroup_id = e->cgroup_id;
    r->pid = e->pid;
    r->ppid = e->ppid;
    r->uid = e->uid;
    r->sport = e->sport;
    r->dport = e->dport;
    memcpy(r->command, e->command, sizeof(r->command));
    unsigned char *p = rec + sizeof(*r);
    memcpy(p, &e->u, sh->u_size);
    p += sh->u_size;
    memcpy(p, e->saddr, sh->alen);
    memcpy(p + sh->alen, e->daddr, sh->alen);
}

/* Rebuilds the event of a record; owned strings are borrowed from the record. */
static void rec_unpack(const struct store_shard *sh, const unsigned char *rec, struct event *e)
{
    const struct store_rec *r = (const struct store_rec *)rec;
    memset(e, 0, sizeof(*e));
    e->id = r->id;
    e->timestamp_ns = r->timestamp_ns;
    e->type = sh->type;
    e->family = sh->family;
    e->protocol = sh->protocol;
    e->status = sh->status;
    e->pid = r->pid;
    e->ppid = r->ppid;
    e->uid = r->uid;
    memcpy(e->command, r->command, sizeof(e->command));
    e->cgroup_id = r->cgroup_id;
    e->node = sh->node;
    e->k8s = sh->k8s;
    e->peer = sh->peer;
    e->sport = r->sport;
    e->dport = r->dport;
    const unsigned char *p = rec + sizeof(*r);
    memcpy(&e->u, p, sh->u_size);
    p += sh->u_size;
    memcpy(e->saddr, p, sh->alen);
    memcpy(e->daddr, p + sh->alen, sh->alen);
}

/* Frees what a record owns (exec and dns events own strings). */
static void rec_clear(const struct store_shard *sh, unsigned char *rec)
{
    if (sh->type != EVENT_EXEC && sh->type != EVENT_DNS)
        return;
    struct event e;
    rec_unpack(sh, rec, &e);
    event_clear(&e);
}

static inline int shard_cmp_at(const struct store_shard *sh, size_t i, uint64_t ts, uint64_t id)
{
    const struct store_rec *r = shard_rec(sh, i);
    return store_key_cmp(r->timestamp_ns, r->id, ts, id);
}

/* First index in [lo, hi) whose key is >= (ts, id); hi when none. */
static size_t shard_lower_bound_in(const struct store_shard *sh, size_t lo, size_t hi, uint64_t ts,
                                   uint64_t id)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (shard_cmp_at(sh, mid, ts, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* First index whose key is >= (ts, id); len when none. */
static size_t shard_lower_bound(const struct store_shard *sh, uint64_t ts, uint64_t id)
{
    return shard_lower_bound_in(sh, 0, sh->recs.len, ts, id);
}

/*
 * Narrows where a late key goes among n sorted ones to [*lo, *hi) by probing
 * back from the end 1, 2, 4... places (below(obj, i, key): whether the key at
 * i sorts before it). Late events are mostly just behind the newest few (an
 * agent's records that left the ring in another order than they were
 * stamped): a few reads near the end where a binary search of a long shard
 * or posting list misses the cache at every step. The caller binary-searches
 * the range.
 */
static inline void gallop_back(size_t n, bool (*below)(const void *obj, size_t i, const void *key),
                               const void *obj, const void *key, size_t *lo, size_t *hi)
{
    size_t step = 1;
    *lo = 0;
    *hi = n;
    while (step <= *hi) {
        size_t i = *hi - step;
        if (below(obj, i, key)) {
            *lo = i + 1;
            return;
        }
        *hi = i;
        step *= 2;
    }
}

struct rec_key {
    uint64_t ts, id;
};

static bool shard_below(const void *obj, size_t i, const void *key)
{
    const struct rec_key *k = key;
    return shard_cmp_at(obj, i, k->ts, k->id) < 0;
}

/* shard_lower_bound() for a key that is probably near the end. */
static size_t shard_lower_bound_late(const struct store_shard *sh, uint64_t ts, uint64_t id)
{
    size_t lo, hi;
    gallop_back(sh->recs.len, shard_below, sh, &(struct rec_key){ts, id}, &lo, &hi);
    return shard_lower_bound_in(sh, lo, hi, ts, id);
}

/*
 * Moves *e into its sorted place. Returns 0 with *pos set, 1 when an event
 * with the same (timestamp, id) is already held (e untouched), or -ENOMEM.
 */
static int shard_insert(struct store_shard *sh, struct event *e, size_t *pos)
{
    size_t p = sh->recs.len;
    uint64_t ts = e->timestamp_ns, id = e->id;
    /* The common case: newest so far. */
    if (p > 0 && store_key_cmp(sh->newest_ts, sh->newest_id, ts, id) >= 0) {
        p = shard_lower_bound_late(sh, ts, id);
        if (p < sh->recs.len && shard_cmp_at(sh, p, ts, id) == 0)
            return 1;
    }
    if (tvec_reserve(&sh->recs) < 0)
        return -ENOMEM;
    event_pack_strings(e);
    /* Packed in place when it goes last (most events); a late event is packed aside and moved. */
    if (p == sh->recs.len) {
        rec_pack(sh, tvec_append(&sh->recs), e);
        sh->newest_ts = ts;
        sh->newest_id = id;
    } else {
        unsigned char rec[STORE_REC_MAX] __attribute__((aligned(8)));
        rec_pack(sh, rec, e);
        tvec_insert(&sh->recs, p, rec);
    }
    /* The record owns e's strings now. */
    memset(&e->u, 0, sizeof(e->u));
    event_clear(e);
    *pos = p;
    return 0;
}

/* Frees the oldest event of a non-empty shard. */
static void shard_pop_oldest(struct store_shard *sh)
{
    rec_clear(sh, shard_at(sh, 0));
    tvec_remove(&sh->recs, 0);
}

/* The shard key of an event. */
struct shard_key {
    const char *node;
    uint8_t type, status, family, protocol, alen;
    struct event_k8s k8s;
    struct event_peer peer;
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    return (h ^ v) * 0x100000001b3ull;
}

static uint64_t store_hash(const struct shard_key *k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the node name, then the rest */
    for (const char *p = k->node ? k->node : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = mix(h, k->type | (uint64_t)k->alen << 8 | (uint64_t)k->status << 16 |
                   (uint64_t)k->k8s.host_network << 24 | (uint64_t)k->family << 32 |
                   (uint64_t)k->protocol << 40);
    const char *const ptrs[] = {
        k->k8s.node_name,      k->k8s.pod_name,   k->k8s.namespace,
        k->k8s.container_id,   k->k8s.pod_uid,    k->k8s.workload,
        k->k8s.workload_kind,  k->k8s.app,        k->k8s.ips,
        k->peer.pod,           k->peer.namespace, k->peer.workload,
        k->peer.workload_kind, k->peer.node,      k->peer.service,
        k->peer.dns,
    };
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++)
        h = mix(h, (uintptr_t)ptrs[i]);
    return (h ^ (h >> 29)) * 0x9e3779b97f4a7c15ull;
}

static bool store_node_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Interned strings: equal by pointer. */
static bool k8s_eq(const struct event_k8s *a, const struct event_k8s *b)
{
    return a->node_name == b->node_name && a->pod_name == b->pod_name &&
           a->namespace == b->namespace && a->container_id == b->container_id &&
           a->pod_uid == b->pod_uid && a->workload == b->workload &&
           a->workload_kind == b->workload_kind && a->app == b->app && a->ips == b->ips &&
           a->host_network == b->host_network;
}

static bool peer_eq(const struct event_peer *a, const struct event_peer *b)
{
    return a->pod == b->pod && a->namespace == b->namespace && a->workload == b->workload &&
           a->workload_kind == b->workload_kind && a->node == b->node && a->service == b->service &&
           a->dns == b->dns;
}

static bool shard_key_eq(const struct store_shard *sh, const struct shard_key *k)
{
    return sh->type == k->type && sh->status == k->status && sh->family == k->family &&
           sh->protocol == k->protocol && sh->alen == k->alen && k8s_eq(&sh->k8s, &k->k8s) &&
           peer_eq(&sh->peer, &k->peer) && store_node_eq(sh->node, k->node);
}

static int store_table_grow(struct store *s)
{
    size_t cap = s->table_cap ? s->table_cap * 2 : 64;
    struct store_shard **table = calloc(cap, sizeof(*table));
    if (!table)
        return -ENOMEM;
    for (size_t i = 0; i < s->live.n; i++) {
        size_t j = s->live.shards[i]->hash & (cap - 1);
        while (table[j])
            j = (j + 1) & (cap - 1);
        table[j] = s->live.shards[i];
    }
    free(s->table);
    s->table = table;
    s->table_cap = cap;
    return 0;
}

/* A shard struct for a new key: one let go before (its index kept), or a new one. */
static struct store_shard *shard_alloc(struct store *s)
{
    if (s->nfree > 0)
        return s->free_shards[--s->nfree];
    /* The free list can take every shard: no allocation when one is let go. */
    if (shard_ptrs_reserve(&s->shards, &s->shards_cap, s->nshards + 1) < 0 ||
        shard_ptrs_reserve(&s->free_shards, &s->free_cap, s->shards_cap) < 0)
        return NULL;
    size_t slab = s->nshards / STORE_SHARD_SLAB;
    if (s->nshards % STORE_SHARD_SLAB == 0) {
        if (shard_ptrs_reserve(&s->slabs, &s->slabs_cap, slab + 1) < 0)
            return NULL;
        s->slabs[slab] = aligned_alloc(64, STORE_SHARD_SLAB * sizeof(struct store_shard));
        if (!s->slabs[slab])
            return NULL;
    }
    struct store_shard *sh = &s->slabs[slab][s->nshards % STORE_SHARD_SLAB];
    sh->index = (uint32_t)s->nshards;
    s->shards[s->nshards++] = sh;
    return sh;
}

/* Finds or creates the shard for k; NULL on allocation failure. */
static struct store_shard *store_shard_get(struct store *s, const struct shard_key *k)
{
    uint64_t h = store_hash(k);
    if (s->table_cap) {
        size_t j = h & (s->table_cap - 1);
        for (struct store_shard *sh; (sh = s->table[j]); j = (j + 1) & (s->table_cap - 1))
            if (sh->hash == h && shard_key_eq(sh, k))
                return sh;
    }

    if (k->type >= EVENT_TYPE_COUNT)
        return NULL;
    struct shard_list *bt = &s->by_type[k->type];
    if (((s->live.n + 1) * 2 > s->table_cap && store_table_grow(s) < 0) ||
        shard_list_reserve(bt) < 0 || shard_list_reserve(&s->live) < 0)
        return NULL;
    struct store_shard *sh = shard_alloc(s);
    if (!sh)
        return NULL;
    uint32_t index = sh->index;
    memset(sh, 0, sizeof(*sh));
    sh->index = index;
    sh->hash = h;
    sh->node = k->node;
    sh->type = k->type;
    sh->status = k->status;
    sh->family = k->family;
    sh->protocol = k->protocol;
    sh->alen = k->alen;
    sh->k8s = k->k8s;
    sh->peer = k->peer;
    sh->u_size = union_size(k->type);
    tvec_init(&sh->recs, (sizeof(struct store_rec) + sh->u_size + 2u * sh->alen + 7) & ~(size_t)7,
              STORE_SHARD_MIN_CAP);
    sh->type_pos = (uint32_t)bt->n;
    bt->shards[bt->n++] = sh;
    sh->live_pos = (uint32_t)s->live.n;
    s->live.shards[s->live.n++] = sh;

    size_t j = h & (s->table_cap - 1);
    while (s->table[j])
        j = (j + 1) & (s->table_cap - 1);
    s->table[j] = sh;
    return sh;
}

/* Takes sh out of l at pos: the last one takes its place (and *pos of its own). */
static void shard_list_remove(struct shard_list *l, uint32_t pos, bool type_list)
{
    struct store_shard *last = l->shards[--l->n];
    l->shards[pos] = last;
    if (type_list)
        last->type_pos = pos;
    else
        last->live_pos = pos;
}

/*
 * Lets an empty shard go: out of the key table (linear probing: the entries
 * after it that would no longer be found move back), out of the lists
 * queries read, onto the free list. Nothing refers to it by then: posting
 * and time lists hold only held events.
 */
static void shard_release(struct store *s, struct store_shard *sh)
{
    size_t mask = s->table_cap - 1, j = sh->hash & mask;
    while (s->table[j] != sh)
        j = (j + 1) & mask;
    s->table[j] = NULL;
    for (size_t k = (j + 1) & mask; s->table[k]; k = (k + 1) & mask) {
        size_t home = s->table[k]->hash & mask;
        /* Moves back unless its home lies cyclically in (j, k]. */
        if (j <= k ? (home <= j || home > k) : (home <= j && home > k)) {
            s->table[j] = s->table[k];
            s->table[k] = NULL;
            j = k;
        }
    }
    shard_list_remove(&s->by_type[sh->type], sh->type_pos, true);
    shard_list_remove(&s->live, sh->live_pos, false);
    tvec_free(&sh->recs);
    s->free_shards[s->nfree++] = sh;
}

/* ---- posting lists ------------------------------------------------------------------------ */

struct post_key {
    uint8_t field;
    uint8_t value[EVENT_COMM_LEN];
    uint64_t hash;
};
_Static_assert(EVENT_COMM_LEN == 16, "post_key_set() hashes the value as two words");

/* The key of a value given as the two words of its 16 bytes (zero past the value's). */
static inline void post_key_words(struct post_key *k, enum post_field field, uint64_t lo,
                                  uint64_t hi)
{
    k->field = (uint8_t)field;
    memcpy(k->value, &lo, sizeof(lo));
    memcpy(k->value + sizeof(lo), &hi, sizeof(hi));
    /* Two words, two multiplies: this runs six times per stored event. */
    uint64_t h = (lo ^ ((uint64_t)field << 56) ^ 0x9e3779b97f4a7c15ull) * 0xff51afd7ed558ccdull;
    h = (h ^ (h >> 32) ^ hi) * 0xc4ceb9fe1a85ec53ull;
    k->hash = h ^ (h >> 29);
}

static void post_key_set(struct post_key *k, enum post_field field, const void *value, size_t len)
{
    unsigned char v[EVENT_COMM_LEN] = {0};
    uint64_t lo, hi;
    memcpy(v, value, len);
    memcpy(&lo, v, sizeof(lo));
    memcpy(&hi, v + sizeof(lo), sizeof(hi));
    post_key_words(k, field, lo, hi);
}

/* A command's key: its bytes up to the first NUL, the rest zero (as post_key_set() makes it),
 * with masks instead of a copy of variable length where the first bytes are the low ones. */
static void post_key_command(struct post_key *k, const char *command)
{
    size_t len = strnlen(command, EVENT_COMM_LEN);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t lo, hi;
    memcpy(&lo, command, sizeof(lo));
    memcpy(&hi, command + sizeof(lo), sizeof(hi));
    if (len < 8) {
        lo = len ? lo & (~0ull >> (64 - 8 * len)) : 0;
        hi = 0;
    } else if (len < 16) {
        hi = len > 8 ? hi & (~0ull >> (64 - 8 * (len - 8))) : 0;
    }
    post_key_words(k, POST_COMMAND, lo, hi);
#else
    post_key_set(k, POST_COMMAND, command, len);
#endif
}

/* The key of a record's field; false when the record has no value there (dest_port 0). */
static bool post_key_of(struct post_key *k, enum post_field field, const struct store_rec *r)
{
    switch (field) {
    case POST_PID:
        post_key_words(k, field, r->pid, 0);
        return true;
    case POST_COMMAND:
        post_key_command(k, r->command);
        return true;
    case POST_DEST_PORT:
        post_key_words(k, field, r->dport, 0);
        return r->dport != 0;
    default:
        return false;
    }
}

static struct post_list **post_slot(const struct post_index *ix, const struct post_key *k)
{
    struct post_list **pp = &ix->buckets[k->hash & (ix->nbuckets - 1)];
    while (*pp && ((*pp)->hash != k->hash || (*pp)->field != k->field ||
                   memcmp((*pp)->value, k->value, sizeof(k->value)) != 0))
        pp = &(*pp)->next;
    return pp;
}

static struct post_list *post_find(const struct post_index *ix, const struct post_key *k)
{
    return ix->nbuckets ? *post_slot(ix, k) : NULL;
}

static int post_rehash(struct post_index *ix)
{
    size_t n = ix->nbuckets ? ix->nbuckets * 2 : 256;
    struct post_list **b = calloc(n, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < ix->nbuckets; i++) {
        for (struct post_list *l = ix->buckets[i], *next; l; l = next) {
            next = l->next;
            l->next = b[l->hash & (n - 1)];
            b[l->hash & (n - 1)] = l;
        }
    }
    ix->bytes += (n - ix->nbuckets) * sizeof(*b);
    free(ix->buckets);
    ix->buckets = b;
    ix->nbuckets = n;
    return 0;
}

static inline struct post_entry *post_at(const struct post_list *l, size_t i)
{
    return l->big ? tvec_at(&l->tv, i) : (struct post_entry *)&l->inl[i];
}

static int post_entry_cmp(const struct post_entry *a, uint64_t ts, uint64_t id, uint32_t shard)
{
    int c = store_key_cmp(a->timestamp_ns, a->id, ts, id);
    if (c)
        return c;
    return a->shard < shard ? -1 : a->shard > shard;
}

/* First index in [lo, hi) whose entry is >= (ts, id, shard); hi when none. */
static size_t post_lower_bound_in(const struct post_list *l, size_t lo, size_t hi, uint64_t ts,
                                  uint64_t id, uint32_t shard)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (post_entry_cmp(post_at(l, mid), ts, id, shard) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* First index in [0, hi) whose entry is >= (ts, id, shard). */
static size_t post_lower_bound(const struct post_list *l, size_t hi, uint64_t ts, uint64_t id,
                               uint32_t shard)
{
    return post_lower_bound_in(l, 0, hi, ts, id, shard);
}

struct post_key_at {
    uint64_t ts, id;
    uint32_t shard;
};

static bool post_below(const void *obj, size_t i, const void *key)
{
    const struct post_key_at *k = key;
    return post_entry_cmp(post_at(obj, i), k->ts, k->id, k->shard) < 0;
}

/* Moves the inline entries of a full list into a tiered vector with room for one more. */
static int post_grow(struct post_index *ix, struct post_list *l)
{
    struct post_entry inl[POST_INLINE];
    struct tvec tv;
    memcpy(inl, l->inl, sizeof(inl));
    tvec_init(&tv, sizeof(struct post_entry), 2 * POST_INLINE);
    if (tvec_reserve(&tv) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < l->len; i++)
        memcpy(tvec_append(&tv), &inl[i], sizeof(inl[i]));
    l->tv = tv;
    l->big = true;
    ix->bytes += post_heap_bytes(l);
    return 0;
}

/* Unlinks l, which *pp points to, and frees it. */
static void post_unlink_free(struct post_index *ix, struct post_list **pp)
{
    struct post_list *l = *pp;
    *pp = l->next;
    ix->nlists--;
    ix->bytes -= sizeof(*l) + post_heap_bytes(l);
    if (l->big)
        tvec_free(&l->tv);
    free(l);
}

/* Unlinks and frees l when it holds no event. */
static void post_release_if_empty(struct post_index *ix, struct post_list *l)
{
    if (!l || l->len)
        return;
    struct post_key k = {.field = l->field, .hash = l->hash};
    memcpy(k.value, l->value, sizeof(k.value));
    post_unlink_free(ix, post_slot(ix, &k));
}

/* Room for one more entry in l. 0 or -ENOMEM. */
static int post_room(struct post_index *ix, struct post_list *l)
{
    if (l->big && !tvec_has_room(&l->tv)) {
        size_t before = tvec_bytes(&l->tv);
        int rc = tvec_reserve(&l->tv);
        ix->bytes = ix->bytes - before + tvec_bytes(&l->tv);
        return rc;
    }
    return !l->big && l->len == POST_INLINE ? post_grow(ix, l) : 0;
}

/* Places an entry in order; the list has room (post_reserve()). */
static void post_insert(struct post_list *l, uint64_t ts, uint64_t id, uint32_t shard)
{
    size_t p = l->len, lo, hi;
    if (p && post_entry_cmp(post_at(l, p - 1), ts, id, shard) > 0) {
        gallop_back(l->len, post_below, l, &(struct post_key_at){ts, id, shard}, &lo, &hi);
        p = post_lower_bound_in(l, lo, hi, ts, id, shard);
    }
    struct post_entry e = {.timestamp_ns = ts, .id = id, .shard = shard};
    if (l->big && p == l->len) {
        memcpy(tvec_append(&l->tv), &e, sizeof(e));
    } else if (l->big) {
        tvec_insert(&l->tv, p, &e);
    } else {
        for (size_t i = l->len; i > p; i--)
            l->inl[i] = l->inl[i - 1];
        l->inl[p] = e;
    }
    l->len++;
}

/* Removes an entry (the list is kept when empty); eviction takes the oldest event, so it is
 * normally the front. */
static void post_remove(struct post_index *ix, struct post_list *l, uint64_t ts, uint64_t id,
                        uint32_t shard)
{
    size_t p = 0;
    if (post_entry_cmp(post_at(l, 0), ts, id, shard) != 0)
        p = post_lower_bound(l, l->len, ts, id, shard);
    if (p >= l->len || post_entry_cmp(post_at(l, p), ts, id, shard) != 0)
        return;
    if (l->big) {
        size_t before = tvec_bytes(&l->tv);
        tvec_remove(&l->tv, p);
        ix->bytes = ix->bytes - before + tvec_bytes(&l->tv);
    } else {
        for (size_t i = p; i + 1 < l->len; i++)
            l->inl[i] = l->inl[i + 1];
    }
    l->len--;
}

static void post_free(struct post_index *ix)
{
    for (size_t i = 0; i < ix->nbuckets; i++) {
        for (struct post_list *l = ix->buckets[i], *next; l; l = next) {
            next = l->next;
            if (l->big)
                tvec_free(&l->tv);
            free(l);
        }
    }
    free(ix->buckets);
    memset(ix, 0, sizeof(*ix));
}

/* An entry whose event has been evicted (see struct store's gone). */
static bool post_entry_gone(const struct store *s, const struct post_entry *e)
{
    return s->any_gone && post_entry_cmp(e, s->gone.timestamp_ns, s->gone.id, s->gone.shard) <= 0;
}

/* The index of l's first live entry (its dead entries are the ones before). Galloping from the
 * front: a list's dead entries are usually few next to its live ones. */
static size_t post_live_from(const struct store *s, const struct post_list *l)
{
    if (l->len == 0 || !post_entry_gone(s, post_at(l, 0)))
        return 0;
    size_t dead = 0, step = 1, p = 1; /* dead: the last entry seen dead */
    while (p < l->len && post_entry_gone(s, post_at(l, p))) {
        dead = p;
        step *= 2;
        p = dead + step;
    }
    size_t lo = dead + 1, hi = p < l->len ? p : l->len;
    /* Entries before lo are dead; hi is live, or the end. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (post_entry_gone(s, post_at(l, mid)))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* How many of l's entries are live. */
static size_t post_live_len(const struct store *s, const struct post_list *l)
{
    return l->len - post_live_from(s, l);
}

/* Pops l's dead entries. */
static void post_trim(struct store *s, struct post_list *l)
{
    size_t n = post_live_from(s, l);
    if (n == 0)
        return;
    if (l->big) {
        size_t before = tvec_bytes(&l->tv);
        for (size_t i = 0; i < n; i++)
            tvec_remove(&l->tv, 0);
        s->post.bytes = s->post.bytes - before + tvec_bytes(&l->tv);
    } else {
        for (size_t i = n; i < l->len; i++)
            l->inl[i - n] = l->inl[i];
    }
    l->len -= (uint32_t)n;
    s->post.dead -= n;
}

/* How far ahead of the sweep its lists are prefetched, in buckets. */
#define POST_SWEEP_AHEAD 8
/* The most buckets one eviction's sweep visits (a bound on an add's latency). */
#define POST_SWEEP_MAX 256

/* The dead entries the lists may hold before the sweep starts (it then goes on until half as
 * many remain, so each list it visits has had time to gather dead entries). */
static size_t post_dead_max(const struct store *s)
{
    return 64 + s->limits.max_events / 8;
}

/* While sweeping, visits the next buckets of the lists' table: pops their lists' dead entries
 * and frees the lists left empty. */
static void post_sweep(struct store *s)
{
    struct post_index *ix = &s->post;
    size_t max = post_dead_max(s);
    if (ix->nbuckets == 0 || (!ix->sweeping && ix->dead <= max))
        return;
    ix->sweeping = true;
    for (size_t i = 0; i < POST_SWEEP_MAX && ix->dead > max / 2; i++) {
        const struct post_list *ahead =
            ix->buckets[(ix->sweep + POST_SWEEP_AHEAD) & (ix->nbuckets - 1)];
        if (ahead)
            __builtin_prefetch(ahead);
        struct post_list **pp = &ix->buckets[ix->sweep++ & (ix->nbuckets - 1)];
        while (*pp) {
            post_trim(s, *pp);
            if ((*pp)->len)
                pp = &(*pp)->next;
            else
                post_unlink_free(ix, pp);
        }
    }
    ix->sweeping = ix->dead > max / 2;
}

/* The list for k with room for one more entry, created when missing; NULL on ENOMEM. A full
 * list of inline entries drops its dead ones first rather than grow (they are in the line just
 * read; the entries of a larger list are left to the sweep). */
static struct post_list *post_reserve(struct store *s, const struct post_key *k)
{
    struct post_index *ix = &s->post;
    struct post_list *l = post_find(ix, k);
    if (l) {
        if (!l->big && l->len == POST_INLINE)
            post_trim(s, l);
    } else {
        if (ix->nlists >= ix->nbuckets && post_rehash(ix) < 0)
            return NULL;
        if (!(l = calloc(1, sizeof(*l))))
            return NULL;
        l->field = k->field;
        l->hash = k->hash;
        memcpy(l->value, k->value, sizeof(l->value));
        struct post_list **pp = &ix->buckets[k->hash & (ix->nbuckets - 1)];
        l->next = *pp;
        *pp = l;
        ix->nlists++;
        ix->bytes += sizeof(*l);
    }
    if (post_room(ix, l) < 0) {
        post_release_if_empty(ix, l);
        return NULL;
    }
    return l;
}

/* ---- time lists and eviction -------------------------------------------------------------- */

/*
 * The oldest of the time lists' entries at[t] (list t read from its entry
 * at[t] on), its type in *type; NULL when every list is past its end.
 */
static const struct post_entry *time_lists_min(const struct store *s, const size_t *at,
                                               size_t *type)
{
    const struct post_entry *best = NULL;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        const struct post_list *l = &s->by_time[t];
        if (at[t] >= l->len)
            continue;
        const struct post_entry *e = post_at(l, at[t]);
        if (!best || post_entry_cmp(e, best->timestamp_ns, best->id, best->shard) < 0) {
            best = e;
            *type = t;
        }
    }
    return best;
}

/* The time list with the globally oldest event at its front; NULL when the store is empty. */
static struct post_list *store_oldest_list(struct store *s)
{
    static const size_t fronts[EVENT_TYPE_COUNT];
    size_t t = 0;
    return time_lists_min(s, fronts, &t) ? &s->by_time[t] : NULL;
}

/* The key of the globally oldest event (a time list's front: no record read), or NULL. */
static const struct post_entry *store_oldest(struct store *s)
{
    const struct post_list *l = store_oldest_list(s);
    return l ? post_at(l, 0) : NULL;
}

/*
 * The entries of the next n events eviction takes, oldest first, into out
 * (a merge of the time lists' fronts); returns how many there are (<= n).
 */
static size_t store_next_oldest(struct store *s, const struct post_entry **out, size_t n)
{
    size_t at[EVENT_TYPE_COUNT] = {0}, m = 0, t = 0;
    const struct post_entry *e;
    while (m < n && (e = time_lists_min(s, at, &t))) {
        at[t]++;
        out[m++] = e;
    }
    return m;
}

/*
 * Evicts the globally oldest event: the front of its type's time list tl
 * (store_oldest_list()), and so the oldest record of its shard.
 */
static void store_evict_from(struct store *s, struct post_list *tl)
{
    s->gone = *post_at(tl, 0);
    s->any_gone = true;
    struct store_shard *sh = s->shards[s->gone.shard];
    post_remove(&s->post, tl, s->gone.timestamp_ns, s->gone.id, s->gone.shard);
    /* Its entries in the posting lists are dead now (post_key_of(): pid, command, and the
     * destination port when it has one). */
    s->post.dead += 2 + (shard_rec(sh, 0)->dport != 0);
    shard_pop_oldest(sh);
    if (--s->count == 0)
        s->newest_ns = 0;
    if (sh->recs.len == 0)
        shard_release(s, sh);
    post_sweep(s);
}

static void store_evict_oldest(struct store *s)
{
    store_evict_from(s, store_oldest_list(s));
}

/* Evicts every event older than cutoff_ns; returns how many. */
static size_t store_expire_locked(struct store *s, uint64_t cutoff_ns)
{
    size_t n = 0;
    const struct post_entry *e;
    while ((e = store_oldest(s)) && e->timestamp_ns < cutoff_ns) {
        store_evict_oldest(s);
        n++;
    }
    s->st.evicted_age += n;
    return n;
}

static uint64_t store_age_cutoff(const struct store *s, uint64_t now_ns)
{
    if (s->limits.max_age_ns == 0 || now_ns <= s->limits.max_age_ns)
        return 0;
    return now_ns - s->limits.max_age_ns;
}

/* ---- public API --------------------------------------------------------------------------- */

struct store *store_new(const struct store_limits *limits)
{
    if (!limits || limits->max_events == 0)
        return NULL;
    struct store *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->limits = *limits;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        s->by_time[t].big = true;
        tvec_init_blocks(&s->by_time[t].tv, sizeof(struct post_entry), 64, STORE_TIME_BLOCK_SHIFT);
    }

    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&s->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        free(s);
        return NULL;
    }
    return s;
}

void store_free(struct store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nshards; i++) {
        struct store_shard *sh = s->shards[i];
        for (size_t j = 0; j < sh->recs.len; j++)
            rec_clear(sh, shard_at(sh, j));
        tvec_free(&sh->recs);
    }
    for (size_t i = 0; i < (s->nshards + STORE_SHARD_SLAB - 1) / STORE_SHARD_SLAB; i++)
        free(s->slabs[i]);
    free(s->slabs);
    free(s->shards);
    free(s->live.shards);
    free(s->free_shards);
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++)
        free(s->by_type[t].shards);
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++)
        tvec_free(&s->by_time[t].tv);
    free(s->table);
    post_free(&s->post);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

static void shard_key_of_event(struct shard_key *k, const struct event *e)
{
    *k = (struct shard_key){.node = e->node,
                            .type = e->type,
                            .status = e->status,
                            .family = e->family,
                            .protocol = e->protocol,
                            .alen = event_alen(e),
                            .k8s = e->k8s,
                            .peer = e->peer};
}

/* Takes ownership of *e in every case; now_ns is the wall clock. Caller holds the write lock. */
static int store_add_locked(struct store *s, struct event *e, uint64_t now_ns)
{
    if (e->type == EVENT_TYPE_NONE || e->type >= EVENT_TYPE_COUNT) {
        s->st.failed++;
        event_clear(e);
        return -EINVAL;
    }

    if (s->limits.max_age_ns) {
        uint64_t cutoff = store_age_cutoff(s, now_ns);
        store_expire_locked(s, cutoff);
        if (e->timestamp_ns < cutoff) {
            /* Already past retention (e.g. replayed after an outage). */
            s->st.added++;
            s->st.evicted_age++;
            event_clear(e);
            return 0;
        }
    }

    /* Full: the list the oldest event is in, which stays so (a new event older than it is
     * refused here), so the eviction below need not look again. */
    struct post_list *oldest_list = s->count >= s->limits.max_events ? store_oldest_list(s) : NULL;
    const struct post_entry *oldest = oldest_list ? post_at(oldest_list, 0) : NULL;
    if ((oldest && store_key_cmp(e->timestamp_ns, e->id, oldest->timestamp_ns, oldest->id) < 0) ||
        (s->any_gone &&
         store_key_cmp(e->timestamp_ns, e->id, s->gone.timestamp_ns, s->gone.id) <= 0)) {
        /* It would be the one evicted, or it is no newer than an event already evicted (which
         * is also what keeps the posting lists' dead entries at their fronts). */
        s->st.added++;
        s->st.evicted_count++;
        event_clear(e);
        return 0;
    }

    struct shard_key key;
    shard_key_of_event(&key, e);
    struct store_shard *sh = store_shard_get(s, &key);

    /* Room in every posting list first, so nothing can fail once the event is in. */
    struct store_rec vals = {.pid = e->pid, .dport = e->dport};
    memcpy(vals.command, e->command, sizeof(vals.command));
    struct post_list *lists[POST_FIELDS] = {NULL};
    struct post_key pk;
    struct post_list *tl = &s->by_time[e->type];
    bool room = sh != NULL && post_room(&s->post, tl) == 0;
    for (int f = 0; room && f < POST_FIELDS; f++)
        if (post_key_of(&pk, f, &vals))
            room = (lists[f] = post_reserve(s, &pk)) != NULL;

    uint64_t ts = e->timestamp_ns, id = e->id;
    size_t pos;
    int rc = room ? shard_insert(sh, e, &pos) : -ENOMEM;
    if (rc != 0) {
        for (int f = 0; f < POST_FIELDS; f++)
            post_release_if_empty(&s->post, lists[f]);
        if (rc < 0)
            s->st.failed++;
        else
            s->st.duplicates++;
        event_clear(e);
        return rc < 0 ? rc : 0;
    }
    for (int f = 0; f < POST_FIELDS; f++)
        if (lists[f])
            post_insert(lists[f], ts, id, sh->index);
    post_insert(tl, ts, id, sh->index);
    s->st.added++;
    s->count++;
    if (ts > s->newest_ns)
        s->newest_ns = ts;

    while (s->count > s->limits.max_events) {
        store_evict_from(s, oldest_list ? oldest_list : store_oldest_list(s));
        oldest_list = NULL;
        s->st.evicted_count++;
    }
    return 0;
}

int store_add_move(struct store *s, struct event *e)
{
    uint64_t now = s->limits.max_age_ns ? clock_realtime_ns() : 0;
    pthread_rwlock_wrlock(&s->lock);
    int rc = store_add_locked(s, e, now);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/*
 * Batches: adding an event costs a handful of cache misses in a large store
 * (its shard's table slot, the shard, the shard's newest record, and for each
 * posting list its bucket, the list and its newest entry), each depending on
 * the one before. Taken one event at a time they are paid one after the
 * other; here a group of events walks those chains level by level, only
 * prefetching, so the misses of the whole group overlap, and then adds them
 * one by one as store_add_locked() does (the prefetches are hints: a shard
 * or list that does not exist yet, or a later slot of a probe chain, is
 * simply found again on add).
 */
#define STORE_ADD_GROUP 16

struct add_hint {
    struct store_shard *sh;
    struct post_list *lists[POST_FIELDS];
    uint64_t post_hash[POST_FIELDS];
    uint64_t shard_hash;
};

/* How many of the next events to evict a group prefetches. */
#define STORE_EVICT_HINTS (2 * STORE_ADD_GROUP)

/* A shard's first line: its records and newest key. */
static void prefetch_shard(const struct store_shard *sh)
{
    __builtin_prefetch(sh);
}

/* The lines of its key's names, which finding it by key compares. */
static void prefetch_shard_names(const struct store_shard *sh)
{
    for (size_t off = 64; off < sizeof(*sh); off += 64)
        __builtin_prefetch((const char *)sh + off);
}

/*
 * What evicting the oldest events of a full store will touch: their shards
 * and records (the posting lists are left to the sweep, see the top).
 */
static void prefetch_evictions(struct store *s, size_t n)
{
    const struct post_entry *next[STORE_EVICT_HINTS];
    struct store_shard *shs[STORE_EVICT_HINTS];
    if (s->count + n <= s->limits.max_events)
        return;
    n = 2 * (s->count + n - s->limits.max_events);
    n = store_next_oldest(s, next, n < STORE_EVICT_HINTS ? n : STORE_EVICT_HINTS);
    for (size_t j = 0; j < n; j++)
        prefetch_shard(shs[j] = s->shards[next[j]->shard]);
    for (size_t j = 0; j < n; j++)
        if (shs[j]->recs.len)
            __builtin_prefetch(shard_at(shs[j], 0));
}

static void prefetch_group(const struct store *s, const struct event *ev, size_t n,
                           struct add_hint *h)
{
    for (size_t i = 0; i < n; i++) {
        struct shard_key k;
        struct store_rec vals = {.pid = ev[i].pid, .dport = ev[i].dport};
        struct post_key pk;
        memcpy(vals.command, ev[i].command, sizeof(vals.command));
        shard_key_of_event(&k, &ev[i]);
        h[i].shard_hash = store_hash(&k);
        if (s->table_cap)
            __builtin_prefetch(&s->table[h[i].shard_hash & (s->table_cap - 1)]);
        for (int f = 0; f < POST_FIELDS; f++) {
            h[i].post_hash[f] = post_key_of(&pk, f, &vals) ? pk.hash : 0;
            if (h[i].post_hash[f] && s->post.nbuckets)
                __builtin_prefetch(&s->post.buckets[pk.hash & (s->post.nbuckets - 1)]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        h[i].sh = s->table_cap ? s->table[h[i].shard_hash & (s->table_cap - 1)] : NULL;
        if (h[i].sh) {
            prefetch_shard(h[i].sh);
            prefetch_shard_names(h[i].sh);
        }
        for (int f = 0; f < POST_FIELDS; f++) {
            h[i].lists[f] = h[i].post_hash[f] && s->post.nbuckets
                                ? s->post.buckets[h[i].post_hash[f] & (s->post.nbuckets - 1)]
                                : NULL;
            if (h[i].lists[f]) {
                __builtin_prefetch(h[i].lists[f]);
                __builtin_prefetch(&h[i].lists[f]->len);
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct store_shard *sh = h[i].sh;
        if (sh && tvec_has_room(&sh->recs))
            __builtin_prefetch(shard_at(sh, sh->recs.len), 1);
        for (int f = 0; f < POST_FIELDS; f++) {
            const struct post_list *l = h[i].lists[f];
            if (l && l->len)
                __builtin_prefetch(post_at(l, l->len - 1), 1);
        }
    }
}

size_t store_add_move_batch(struct store *s, struct event *ev, size_t n)
{
    struct add_hint hints[STORE_ADD_GROUP];
    size_t failed = 0;
    uint64_t now = s->limits.max_age_ns ? clock_realtime_ns() : 0;

    pthread_rwlock_wrlock(&s->lock);
    for (size_t g = 0; g < n; g += STORE_ADD_GROUP) {
        size_t m = n - g < STORE_ADD_GROUP ? n - g : STORE_ADD_GROUP;
        prefetch_group(s, &ev[g], m, hints);
        prefetch_evictions(s, m);
        for (size_t i = 0; i < m; i++)
            failed += store_add_locked(s, &ev[g + i], now) < 0;
    }
    pthread_rwlock_unlock(&s->lock);
    return failed;
}

int store_add(struct store *s, const struct event *e)
{
    struct event copy;
    if (event_copy(&copy, e) < 0) {
        pthread_rwlock_wrlock(&s->lock);
        s->st.failed++;
        pthread_rwlock_unlock(&s->lock);
        return -ENOMEM;
    }
    return store_add_move(s, &copy);
}

size_t store_expire(struct store *s, uint64_t now_ns)
{
    pthread_rwlock_wrlock(&s->lock);
    size_t n = store_expire_locked(s, store_age_cutoff(s, now_ns));
    pthread_rwlock_unlock(&s->lock);
    return n;
}

/* ---- queries ------------------------------------------------------------------------------ */

/* The part of one shard a query can return: indices [lo, hi), newest at hi - 1. */
/* Shards (or ranges) a query's loops prefetch ahead of the one they read. */
#define STORE_QUERY_PREFETCH 16

struct store_range {
    const struct store_shard *sh;
    size_t lo, hi;
    size_t hi_all; /* the time bound alone, for total_count */
    /* The key of record hi - 1 (range_key_load(), or the shard's newest: keyed), so the merge
     * heap compares without reading records: with thousands of shards each read is a cache
     * miss. */
    uint64_t timestamp_ns, id;
    bool keyed;
};

static void range_key_load(struct store_range *r)
{
    const struct store_rec *e = shard_rec(r->sh, r->hi - 1);
    r->timestamp_ns = e->timestamp_ns;
    r->id = e->id;
}

static bool range_newer(const struct store_range *a, const struct store_range *b)
{
    return store_key_cmp(a->timestamp_ns, a->id, b->timestamp_ns, b->id) > 0;
}

/*
 * Heap of ranges by their key: the newest on top (the merge), or with
 * oldest_top the oldest (ranges_keep_newest()).
 */
static inline bool range_above(const struct store_range *a, const struct store_range *b,
                               bool oldest_top)
{
    return oldest_top ? range_newer(b, a) : range_newer(a, b);
}

static inline void range_heap_down(struct store_range *h, size_t n, size_t pos, bool oldest_top)
{
    struct store_range r = h[pos];
    for (;;) {
        size_t child = 2 * pos + 1;
        if (child >= n)
            break;
        if (child + 1 < n && range_above(&h[child + 1], &h[child], oldest_top))
            child++;
        if (!range_above(&h[child], &r, oldest_top))
            break;
        h[pos] = h[child];
        pos = child;
    }
    h[pos] = r;
}

/*
 * Keeps the ranges that can hold one of the k newest events (every event
 * matching): those whose newest key is among the k newest of all ranges'.
 * The k ranges with the newest keys hold k events at least that new, so a
 * range whose newest is older holds none of the k newest. With thousands
 * of shards this spares the merge heap all the others. Returns the count.
 */
static size_t ranges_keep_newest(struct store_range *ranges, size_t n, size_t k)
{
    struct store_range *h;
    if (k == 0 || n <= 2 * k || !(h = malloc(k * sizeof(*h))))
        return n;
    memcpy(h, ranges, k * sizeof(*h));
    for (size_t i = k / 2; i-- > 0;)
        range_heap_down(h, k, i, true);
    for (size_t i = k; i < n; i++) {
        if (range_newer(&ranges[i], &h[0])) {
            h[0] = ranges[i];
            range_heap_down(h, k, 0, true);
        }
    }
    struct store_range t = h[0]; /* the k-th newest */
    free(h);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!range_newer(&t, &ranges[i]))
            ranges[m++] = ranges[i];
    return m;
}

/*
 * The shards a query selects from, a list per pass: every shard in one
 * pass, or with a type filter the shards of each of its types. False when
 * no pass is left.
 */
static bool query_shard_pass(const struct store *s, const struct query *q, size_t *pass,
                             struct store_shard *const **list, size_t *n)
{
    if (!q->types) {
        *list = s->live.shards;
        *n = s->live.n;
        return (*pass)++ == 0;
    }
    for (; *pass < EVENT_TYPE_COUNT; ++*pass) {
        if (q->types & EVENT_TYPE_BIT(*pass)) {
            *list = s->by_type[*pass].shards;
            *n = s->by_type[*pass].n;
            ++*pass;
            return true;
        }
    }
    return false;
}

/* The filters the shard key answers; names says whether q has a name filter. */
static bool store_shard_selected(const struct store_shard *sh, const struct query *q, bool names)
{
    if (sh->recs.len == 0)
        return false;
    if (q->types && !(q->types & EVENT_TYPE_BIT(sh->type)))
        return false;
    if (q->status && sh->status != q->status)
        return false;
    if (query_has_dns_filter(q) && sh->type != EVENT_DNS)
        return false;
    return !names || query_match_names(q, sh->node, &sh->k8s, &sh->peer);
}

/*
 * The residual filters (pid, command, dest_port, and the dns filters) on a
 * record, with query_match()'s semantics.
 */
static bool rec_match(const struct query *rq, const struct store_shard *sh,
                      const unsigned char *rec)
{
    const struct store_rec *r = (const struct store_rec *)rec;
    struct event e;
    if (query_has_dns_filter(rq)) {
        rec_unpack(sh, rec, &e); /* borrows the record's strings: only read here */
        return query_match(rq, &e);
    }
    memset(&e, 0, sizeof(e));
    e.timestamp_ns = r->timestamp_ns;
    e.pid = r->pid;
    e.dport = r->dport;
    memcpy(e.command, r->command, sizeof(e.command));
    return query_match(rq, &e);
}

/*
 * The posting lists of q's per-event filters into lists[] (shortest first);
 * returns how many, or -1 when a filter's value is held by no event.
 */
static int store_post_lists(const struct store *s, const struct query *q,
                            const struct post_list *lists[POST_FIELDS])
{
    struct post_key k;
    size_t live[POST_FIELDS];
    int n = 0;
    if (q->has_pid) {
        post_key_words(&k, POST_PID, q->pid, 0);
        if (!(lists[n++] = post_find(&s->post, &k)))
            return -1;
    }
    if (q->command[0]) {
        size_t len = strlen(q->command);
        if (len > EVENT_COMM_LEN)
            return -1;
        post_key_set(&k, POST_COMMAND, q->command, len);
        if (!(lists[n++] = post_find(&s->post, &k)))
            return -1;
    }
    if (q->has_dest_port) {
        post_key_words(&k, POST_DEST_PORT, q->dest_port, 0);
        if (!(lists[n++] = post_find(&s->post, &k)))
            return -1;
    }
    for (int i = 0; i < n; i++)
        if ((live[i] = post_live_len(s, lists[i])) == 0)
            return -1; /* only evicted events had it */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && live[j] < live[j - 1]; j--) {
            const struct post_list *t = lists[j];
            size_t tl = live[j];
            lists[j] = lists[j - 1];
            live[j] = live[j - 1];
            lists[j - 1] = t;
            live[j - 1] = tl;
        }
    return n;
}

/* [lo, hi_all) of a posting list's live entries within the time bounds; hi stops at the
 * cursor. */
static void post_bounds(const struct store *s, const struct post_list *l, const struct query *q,
                        size_t *lo, size_t *hi_all, size_t *hi)
{
    size_t live = post_live_from(s, l);
    *lo = q->since_ns ? post_lower_bound_in(l, live, l->len, q->since_ns, 0, 0) : live;
    *hi_all = q->until_ns == UINT64_MAX
                  ? l->len
                  : post_lower_bound_in(l, live, l->len, q->until_ns + 1, 0, 0);
    if (*hi_all < *lo)
        *hi_all = *lo;
    *hi = *hi_all;
    if (q->has_cursor)
        *hi = post_lower_bound(l, *hi_all, q->cursor.timestamp_ns, q->cursor.id, 0);
    if (*hi < *lo)
        *hi = *lo;
}

/* Appends the record at (ts, id) of sh to out, which has room. */
static int store_result_push(struct store_result *out, const struct store_shard *sh, uint64_t ts,
                             uint64_t id)
{
    struct event e;
    rec_unpack(sh, shard_at(sh, shard_lower_bound(sh, ts, id)), &e);
    if (event_copy(&out->events[out->count], &e) < 0)
        return -ENOMEM;
    out->count++;
    return 0;
}

/*
 * Answers q from its shortest posting list, newest first: each entry is
 * checked against the selected shards (every shard when selected is NULL)
 * and, binary-searched, the other lists.
 */
static int store_query_posting(struct store *s, const struct query *q,
                               const struct post_list *const *lists, int nlists,
                               const bool *selected, size_t limit, struct store_result *out)
{
    const struct post_list *l = lists[0];
    size_t lo, hi_all, hi;
    post_bounds(s, l, q, &lo, &hi_all, &hi);
    size_t cap = hi - lo < limit ? hi - lo : limit;
    if (cap && !(out->events = calloc(cap, sizeof(*out->events))))
        return -ENOMEM;

    /* Entries of the other lists at or past bound[k] are newer than any still to come. */
    size_t bound[POST_FIELDS];
    for (int k = 1; k < nlists; k++)
        bound[k] = lists[k]->len;
    uint64_t total = 0, after = 0;
    for (size_t j = hi_all; j-- > lo;) {
        const struct post_entry *pe = post_at(l, j);
        if (selected && !selected[pe->shard])
            continue;
        bool match = true;
        for (int k = 1; k < nlists && match; k++) {
            bound[k] = post_lower_bound(lists[k], bound[k], pe->timestamp_ns, pe->id, pe->shard);
            match = bound[k] < lists[k]->len &&
                    post_entry_cmp(post_at(lists[k], bound[k]), pe->timestamp_ns, pe->id,
                                   pe->shard) == 0;
        }
        if (!match)
            continue;
        total++;
        if (j >= hi)
            continue;
        after++;
        if (out->count < cap &&
            store_result_push(out, s->shards[pe->shard], pe->timestamp_ns, pe->id) < 0)
            return -ENOMEM;
    }
    out->total_count = total;
    out->has_next = after > out->count;
    return 0;
}

/*
 * Answers a query whose only filters are types, time bounds and a cursor
 * from the time lists: each selected type's list is binary-searched for the
 * bounds (the counts are the ranges' lengths) and the ranges are merged
 * newest first, reading only the records returned.
 */
static int store_query_by_time(struct store *s, const struct query *q, size_t limit,
                               struct store_result *out)
{
    struct {
        const struct post_list *l;
        size_t lo, hi;
    } r[EVENT_TYPE_COUNT];
    size_t n = 0;
    uint64_t total = 0, after = 0;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        const struct post_list *l = &s->by_time[t];
        if (l->len == 0 || (q->types && !(q->types & EVENT_TYPE_BIT(t))))
            continue;
        size_t lo, hi_all, hi;
        post_bounds(s, l, q, &lo, &hi_all, &hi);
        total += hi_all - lo;
        after += hi - lo;
        if (hi > lo) {
            r[n].l = l;
            r[n].lo = lo;
            r[n++].hi = hi;
        }
    }
    size_t want = after < limit ? (size_t)after : limit;
    if (want && !(out->events = calloc(want, sizeof(*out->events))))
        return -ENOMEM;
    while (out->count < want) {
        size_t k = 0;
        const struct post_entry *top = post_at(r[0].l, r[0].hi - 1);
        for (size_t i = 1; i < n; i++) {
            const struct post_entry *e = post_at(r[i].l, r[i].hi - 1);
            if (post_entry_cmp(e, top->timestamp_ns, top->id, top->shard) > 0) {
                top = e;
                k = i;
            }
        }
        if (store_result_push(out, s->shards[top->shard], top->timestamp_ns, top->id) < 0)
            return -ENOMEM;
        if (--r[k].hi == r[k].lo)
            r[k] = r[--n];
    }
    out->total_count = total;
    out->has_next = after > out->count;
    return 0;
}

int store_query(struct store *s, const struct query *q, struct store_result *out)
{
    memset(out, 0, sizeof(*out));
    size_t limit = q->limit ? q->limit : QUERY_LIMIT_DEFAULT;

    /* The filters the shard key does not cover, checked per event. */
    struct query rq;
    query_init(&rq);
    memcpy(rq.command, q->command, sizeof(rq.command));
    rq.has_pid = q->has_pid;
    rq.pid = q->pid;
    rq.has_dest_port = q->has_dest_port;
    rq.dest_port = q->dest_port;
    memcpy(rq.dns_query, q->dns_query, sizeof(rq.dns_query));
    rq.has_rcode = q->has_rcode;
    rq.rcode = q->rcode;
    bool residual = rq.has_pid || rq.command[0] || rq.has_dest_port || query_has_dns_filter(&rq);

    bool names = query_has_name_filter(q);
    pthread_rwlock_rdlock(&s->lock);
    int rc = 0;
    struct store_range *ranges = NULL;
    bool *selected = NULL;
    size_t nranges = 0;
    if (!residual && !names && !q->status) {
        rc = store_query_by_time(s, q, limit, out);
        goto cursor;
    }
    const struct post_list *lists[POST_FIELDS];
    /* The posting path checks only the posting lists' fields: the dns filters need a scan. */
    int nlists = residual && !query_has_dns_filter(q) ? store_post_lists(s, q, lists) : 0;
    if (nlists < 0)
        goto out; /* a value no held event has */
    if (nlists > 0 && !q->types && !q->status && !names) {
        /* Every shard is selected, so the lists alone answer (they hold fewer events than the
         * time range): no need to read every shard first. */
        rc = store_query_posting(s, q, lists, nlists, NULL, limit, out);
        goto cursor;
    }
    if (s->nshards && (!(ranges = malloc(s->nshards * sizeof(*ranges))) ||
                       !(selected = calloc(s->nshards, sizeof(*selected))))) {
        rc = -ENOMEM;
        goto out;
    }

    /* total_count ignores the cursor; `after` counts matches past it (what paging can reach). */
    uint64_t total = 0, after = 0, candidates = 0;
    struct store_shard *const *list;
    size_t nlist;
    for (size_t pass = 0; query_shard_pass(s, q, &pass, &list, &nlist);) {
        for (size_t i = 0; i < nlist; i++) {
            const struct store_shard *sh = list[i];
            if (i + STORE_QUERY_PREFETCH < nlist) {
                /* The shards ahead (their names too when the query compares them): a few
                 * misses in flight at once. */
                prefetch_shard(list[i + STORE_QUERY_PREFETCH]);
                if (names)
                    prefetch_shard_names(list[i + STORE_QUERY_PREFETCH]);
            }
            if (!store_shard_selected(sh, q, names))
                continue;
            selected[sh->index] = true;
            if (sh->newest_ts < q->since_ns)
                continue; /* all before the window */
            size_t lo = q->since_ns ? shard_lower_bound(sh, q->since_ns, 0) : 0;
            size_t hi_all = q->until_ns >= sh->newest_ts
                                ? sh->recs.len
                                : shard_lower_bound_in(sh, lo, sh->recs.len, q->until_ns + 1, 0);
            size_t hi = hi_all;
            if (q->has_cursor) {
                size_t c = shard_lower_bound(sh, q->cursor.timestamp_ns, q->cursor.id);
                if (c < hi)
                    hi = c;
            }
            if (hi < lo)
                hi = lo;
            if (hi_all <= lo)
                continue;
            candidates += hi_all - lo;
            struct store_range *r = &ranges[nranges++];
            *r = (struct store_range){.sh = sh, .lo = lo, .hi = hi, .hi_all = hi_all};
            /* Up to the shard's newest (most queries): its key is in the line just read. */
            if ((r->keyed = hi == sh->recs.len)) {
                r->timestamp_ns = sh->newest_ts;
                r->id = sh->newest_id;
            }
        }
    }

    if (nlists > 0) {
        size_t plo, phi_all, phi;
        post_bounds(s, lists[0], q, &plo, &phi_all, &phi);
        if (phi_all - plo < candidates) {
            rc = store_query_posting(s, q, lists, nlists, selected, limit, out);
            goto cursor;
        }
    }

    for (size_t i = 0; i < nranges; i++) {
        const struct store_range *r = &ranges[i];
        if (!residual) {
            total += r->hi_all - r->lo;
            after += r->hi - r->lo;
            continue;
        }
        for (size_t j = r->lo; j < r->hi_all; j++) {
            if (rec_match(&rq, r->sh, shard_at(r->sh, j))) {
                total++;
                after += j < r->hi;
            }
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < nranges; i++)
        if (ranges[i].hi > ranges[i].lo)
            ranges[n++] = ranges[i];
    nranges = n;
    for (size_t i = 0; i < nranges; i++) {
        if (i + STORE_QUERY_PREFETCH < nranges && !ranges[i + STORE_QUERY_PREFETCH].keyed) {
            const struct store_range *r = &ranges[i + STORE_QUERY_PREFETCH];
            __builtin_prefetch(shard_at(r->sh, r->hi - 1));
        }
        if (!ranges[i].keyed)
            range_key_load(&ranges[i]);
    }

    size_t want = after < limit ? (size_t)after : limit;
    if (want && !(out->events = calloc(want, sizeof(*out->events)))) {
        rc = -ENOMEM;
        goto out;
    }

    /* Skipping records (residual filters) could take more than want from a range. */
    if (!residual)
        nranges = ranges_keep_newest(ranges, nranges, want);
    for (size_t i = nranges / 2; i-- > 0;)
        range_heap_down(ranges, nranges, i, false);
    while (out->count < want && nranges) {
        struct store_range *top = &ranges[0];
        const struct store_shard *sh = top->sh;
        const unsigned char *rec = shard_at(sh, --top->hi);
        if (top->hi == top->lo)
            ranges[0] = ranges[--nranges];
        else
            range_key_load(top);
        if (nranges)
            range_heap_down(ranges, nranges, 0, false);
        if (residual && !rec_match(&rq, sh, rec))
            continue;
        struct event e;
        rec_unpack(sh, rec, &e);
        if (event_copy(&out->events[out->count], &e) < 0) {
            rc = -ENOMEM;
            goto out;
        }
        out->count++;
    }
    out->total_count = total;
    out->has_next = after > out->count;

cursor:
    if (rc == 0 && out->has_next && out->count) {
        const struct event *last = &out->events[out->count - 1];
        out->next_cursor.timestamp_ns = last->timestamp_ns;
        out->next_cursor.id = last->id;
    }
out:
    pthread_rwlock_unlock(&s->lock);
    free(ranges);
    free(selected);
    if (rc < 0)
        store_result_free(out);
    return rc;
}

void store_result_free(struct store_result *r)
{
    for (size_t i = 0; i < r->count; i++)
        event_clear(&r->events[i]);
    free(r->events);
    memset(r, 0, sizeof(*r));
}

void store_get_stats(struct store *s, struct store_stats *out)
{
    pthread_rwlock_rdlock(&s->lock);
    *out = s->st;
    out->events = s->count;
    out->capacity = s->limits.max_events;
    out->index_bytes = s->post.bytes;
    out->index_lists = s->post.nlists;
    out->index_dead = s->post.dead;
    out->shards = s->live.n;
    out->shards_made = s->nshards;
    const struct post_entry *oldest = store_oldest(s);
    out->oldest_ns = oldest ? oldest->timestamp_ns : 0;
    out->newest_ns = s->newest_ns;
    pthread_rwlock_unlock(&s->lock);
}

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
 * Per-event fields (pid, command, dest_port) are in columns: every event
 * added, in the order added, as parallel arrays of its key (timestamp, id,
 * shard) and those fields (30 bytes a slot; a command as a 4-byte id, see
 * struct comms), a ring of up to a quarter more slots than the store
 * holds. Adding writes the next slot, in order: no lookup per value and no
 * cache miss. Eviction does not touch them: it goes in the order of the
 * key, so an entry whose key is at or before the last evicted one
 * (store.gone) is gone, which queries skip; a full ring drops the gone
 * entries at its front and lets a held one there (stamped newer than the
 * events evicted since it was added) go round to the back, which moves
 * nothing: in a full ring the front slot is the next back one. A query with
 * such a filter scans the columns (one 4-byte column, or the 2-byte port,
 * compared until a slot matches), or reads the selected shards' records
 * when those hold few candidates.
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
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

    uint32_t index;    /* position in store.shards, what time lists and columns refer to */
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

/* An event's key in a time list; lists sort by (timestamp, id, shard) ascending. */
struct time_entry {
    uint64_t timestamp_ns;
    uint64_t id;
    uint32_t shard;
} __attribute__((packed));

/* Every held event of one type, oldest first. */
struct time_list {
    struct tvec tv; /* of struct time_entry */
};

/*
 * Every event held, in the order added, as columns (see the top of this
 * file): slots [start, start + len) modulo cap, oldest added first, each an
 * event's key and the per-event fields queries filter on. Entries of
 * evicted events stay until the front reaches them or the ring, growing,
 * is rebuilt without them.
 */
struct columns {
    unsigned char *mem; /* one allocation holding the columns below */
    uint64_t *ts, *id;
    uint32_t *shard, *pid;
    uint32_t *comm; /* the command's id in struct store's comms */
    uint16_t *dport;
    size_t cap, start, len;
};

/* Bytes of one slot of every column. */
#define COLS_SLOT_BYTES (2 * sizeof(uint64_t) + 3 * sizeof(uint32_t) + sizeof(uint16_t))

/*
 * The commands of the columns, by id: the columns hold a command as a
 * 4-byte id, which a command filter compares exactly. Ids of commands no
 * held event has any more are dropped by a collection that renumbers the
 * rest (comms_collect()), so the table is bounded by the commands held.
 */
struct comms {
    uint64_t (*words)[2]; /* comm_words() by id */
    uint32_t *table;      /* open addressing over comm_hash(): id + 1, 0 = free */
    size_t n, cap;        /* ids given, room in words */
    size_t tcap;          /* slots of table, a power of two, at least twice n */
    size_t collect_at;    /* n at which the next new command collects first */
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
     * Every shard made, by index (stable: time lists and columns refer to it). A shard
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

    struct columns cols;
    struct comms comms;
    /* Every held event by type, oldest first. */
    struct time_list by_time[EVENT_TYPE_COUNT];
    size_t time_bytes; /* the time lists' memory */

    size_t count;
    uint64_t newest_ns; /* of the events held: only evicting the last one can remove it */
    /* At or before every held event's timestamp (lowered by an older add, raised to the oldest
     * when store_expire_locked() looks), so the age limit's check on every add rarely needs to
     * look at the time lists. */
    uint64_t oldest_floor;
    /* The key of the last event evicted (when any_gone): every event held is after it, and a
     * column entry at or before it is gone (see the top of this file). */
    struct time_entry gone;
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

/* Address bytes that hold data: 0 (none), 4 (IPv4-sized) or 16. A word at a time: every event
 * added asks, twice. */
static uint8_t event_alen(const struct event *e)
{
    uint32_t s4, d4, s8, d8;
    uint64_t s16, d16;
    memcpy(&s4, e->saddr, 4);
    memcpy(&d4, e->daddr, 4);
    memcpy(&s8, e->saddr + 4, 4);
    memcpy(&d8, e->daddr + 4, 4);
    memcpy(&s16, e->saddr + 8, 8);
    memcpy(&d16, e->daddr + 8, 8);
    if (s8 | d8 | s16 | d16)
        return 16;
    return s4 | d4 ? 4 : 0;
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
    /* Only the union member owns anything: the rest of the record need not be unpacked. */
    struct event e;
    e.type = sh->type;
    memcpy(&e.u, rec + sizeof(struct store_rec), sh->u_size);
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
 * or time list misses the cache at every step. The caller binary-searches
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
    /* The node name by content (store_node_eq() compares it so), eight bytes at a time. */
    const char *node = k->node ? k->node : "";
    size_t len = strlen(node), i = 0;
    uint64_t h = 1469598103934665603ull ^ len, w;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, node + i, 8);
        h = mix(h, w);
    }
    for (w = 0; i < len; i++)
        w = w << 8 | (unsigned char)node[i];
    h = mix(h, w);
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
    /* Two independent chains, so their multiplications overlap. */
    _Static_assert(sizeof(ptrs) / sizeof(ptrs[0]) % 2 == 0, "pairs of names");
    uint64_t g = 0x9e3779b97f4a7c15ull;
    for (size_t j = 0; j < sizeof(ptrs) / sizeof(ptrs[0]); j += 2) {
        h = mix(h, (uintptr_t)ptrs[j]);
        g = mix(g, (uintptr_t)ptrs[j + 1]);
    }
    h = mix(h, g ^ (g >> 31));
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

/* Finds or creates the shard for k, whose store_hash() is h; NULL on allocation failure. */
static struct store_shard *store_shard_get(struct store *s, const struct shard_key *k, uint64_t h)
{
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
 * queries read, onto the free list. Nothing refers to it by then: time
 * lists hold only held events, and the columns' entries of its evicted
 * events are gone (queries check that first).
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

/* ---- time lists --------------------------------------------------------------------------- */

static inline struct time_entry *time_at(const struct time_list *l, size_t i)
{
    return tvec_at(&l->tv, i);
}

static int entry_cmp(const struct time_entry *a, uint64_t ts, uint64_t id, uint32_t shard)
{
    int c = store_key_cmp(a->timestamp_ns, a->id, ts, id);
    if (c)
        return c;
    return a->shard < shard ? -1 : a->shard > shard;
}

/* First index in [lo, hi) whose entry is >= (ts, id, shard); hi when none. */
static size_t time_lower_bound_in(const struct time_list *l, size_t lo, size_t hi, uint64_t ts,
                                  uint64_t id, uint32_t shard)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entry_cmp(time_at(l, mid), ts, id, shard) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* First index in [0, hi) whose entry is >= (ts, id, shard). */
static size_t time_lower_bound(const struct time_list *l, size_t hi, uint64_t ts, uint64_t id,
                               uint32_t shard)
{
    return time_lower_bound_in(l, 0, hi, ts, id, shard);
}

static bool time_below(const void *obj, size_t i, const void *key)
{
    const struct time_entry *k = key;
    return entry_cmp(time_at(obj, i), k->timestamp_ns, k->id, k->shard) < 0;
}

/* Room for one more entry in l. 0 or -ENOMEM. */
static int time_room(struct store *s, struct time_list *l)
{
    if (tvec_has_room(&l->tv))
        return 0;
    size_t before = tvec_bytes(&l->tv);
    int rc = tvec_grow(&l->tv);
    s->time_bytes = s->time_bytes - before + tvec_bytes(&l->tv);
    return rc;
}

/* Places an entry in order; the list has room (time_room()). */
static void time_insert(struct time_list *l, uint64_t ts, uint64_t id, uint32_t shard)
{
    struct time_entry e = {.timestamp_ns = ts, .id = id, .shard = shard};
    size_t p = l->tv.len, lo, hi;
    if (p && entry_cmp(time_at(l, p - 1), ts, id, shard) > 0) {
        gallop_back(l->tv.len, time_below, l, &e, &lo, &hi);
        p = time_lower_bound_in(l, lo, hi, ts, id, shard);
    }
    if (p == l->tv.len)
        memcpy(tvec_append(&l->tv), &e, sizeof(e));
    else
        tvec_insert(&l->tv, p, &e);
}

/* Removes the entry of an event held; eviction takes the oldest event, so it is normally the
 * front. */
static void time_remove(struct store *s, struct time_list *l, uint64_t ts, uint64_t id,
                        uint32_t shard)
{
    size_t p = 0;
    if (entry_cmp(time_at(l, 0), ts, id, shard) != 0)
        p = time_lower_bound(l, l->tv.len, ts, id, shard);
    if (p >= l->tv.len || entry_cmp(time_at(l, p), ts, id, shard) != 0)
        return;
    size_t before = tvec_bytes(&l->tv);
    tvec_remove(&l->tv, p);
    s->time_bytes = s->time_bytes - before + tvec_bytes(&l->tv);
}

/* ---- columns ------------------------------------------------------------------------------ */

#define COLS_MIN_CAP 1024

/* The slot of the i-th entry, oldest added first. */
static inline size_t col_slot(const struct columns *c, size_t i)
{
    size_t k = c->start + i;
    return k >= c->cap ? k - c->cap : k;
}

/* Whether an event with this key has been evicted (see struct store's gone). */
static inline bool key_gone(const struct store *s, uint64_t ts, uint64_t id, uint32_t shard)
{
    const struct time_entry *g = &s->gone;
    if (!s->any_gone || ts > g->timestamp_ns)
        return false;
    if (ts < g->timestamp_ns)
        return true;
    return id != g->id ? id < g->id : shard <= g->shard;
}

static inline bool col_gone(const struct store *s, size_t slot)
{
    const struct columns *c = &s->cols;
    return key_gone(s, c->ts[slot], c->id[slot], c->shard[slot]);
}

/*
 * A command as two words: its bytes up to the first NUL (at most
 * EVENT_COMM_LEN), the rest zero, with masks instead of a copy of variable
 * length where the first bytes are the low ones.
 */
static void comm_words(const char *command, uint64_t w[2])
{
    _Static_assert(EVENT_COMM_LEN == 16, "a command is two words");
    size_t len = strnlen(command, EVENT_COMM_LEN);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(w, command, EVENT_COMM_LEN);
    if (len < 8) {
        w[0] = len ? w[0] & (~0ull >> (64 - 8 * len)) : 0;
        w[1] = 0;
    } else if (len < 16) {
        w[1] = len > 8 ? w[1] & (~0ull >> (64 - 8 * (len - 8))) : 0;
    }
#else
    unsigned char v[EVENT_COMM_LEN] = {0};
    memcpy(v, command, len);
    memcpy(w, v, sizeof(v));
#endif
}

/* 32 bits of a command's words: equal for equal commands (and rarely for others). */
static inline uint32_t comm_hash(const uint64_t w[2])
{
    uint64_t h = (w[0] ^ 0x9e3779b97f4a7c15ull) * 0xff51afd7ed558ccdull;
    h = (h ^ (h >> 32) ^ w[1]) * 0xc4ceb9fe1a85ec53ull;
    return (uint32_t)(h >> 32);
}

/* The most slots: a quarter more than the store holds, so that in a full ring many entries
 * are gone ones that the front can drop. */
static size_t cols_max_cap(const struct store *s)
{
    size_t m = s->limits.max_events;
    return m > SIZE_MAX / 2 / COLS_SLOT_BYTES ? m : m + m / 4 + 64;
}

/* Moves the held entries, in order, to new columns of cap slots (more than are held). 0 or
 * -ENOMEM. */
static int cols_rebuild(struct store *s, size_t cap)
{
    struct columns *c = &s->cols, n = {.cap = cap};
    if (cap > SIZE_MAX / COLS_SLOT_BYTES || !(n.mem = malloc(cap * COLS_SLOT_BYTES)))
        return -ENOMEM;
    /* The 8-byte columns first, so each column is aligned. */
    n.ts = (uint64_t *)n.mem;
    n.id = n.ts + cap;
    n.shard = (uint32_t *)(n.id + cap);
    n.pid = n.shard + cap;
    n.comm = n.pid + cap;
    n.dport = (uint16_t *)(n.comm + cap);
    for (size_t i = 0; i < c->len; i++) {
        size_t k = col_slot(c, i);
        if (col_gone(s, k))
            continue;
        n.ts[n.len] = c->ts[k];
        n.id[n.len] = c->id[k];
        n.shard[n.len] = c->shard[k];
        n.pid[n.len] = c->pid[k];
        n.comm[n.len] = c->comm[k];
        n.dport[n.len++] = c->dport[k];
    }
    free(c->mem);
    *c = n;
    return 0;
}

/*
 * Room for one more entry. A full ring drops the gone entries at its front;
 * a held one there (added long ago but stamped newer than the events
 * evicted since) goes round to the back: in a full ring the front slot is
 * the next back one, so only start moves. A quarter more slots than the
 * store holds keeps that rare. Until the ring has its most slots, a held
 * front makes it grow instead (twice as many, without the gone entries).
 * 0 or -ENOMEM.
 */
static int cols_reserve(struct store *s)
{
    struct columns *c = &s->cols;
    size_t max = cols_max_cap(s);
    for (size_t turn = 0; c->len == c->cap && turn < c->cap; turn++) {
        bool gone = col_gone(s, c->start);
        if (!gone && c->cap < max)
            break;
        c->start = c->start + 1 == c->cap ? 0 : c->start + 1;
        c->len -= gone;
    }
    if (c->len < c->cap)
        return 0;
    if (c->cap >= max)
        return -ENOMEM; /* every entry held: only when the store holds more than max */
    size_t cap = c->cap ? 2 * c->cap : COLS_MIN_CAP;
    return cols_rebuild(s, cap < max ? cap : max);
}

/* ---- commands ----------------------------------------------------------------------------- */

/* An id no command has: the entries a collection found gone. */
#define COMM_NONE UINT32_MAX
/* New ids between collections, at least. */
#define COMMS_COLLECT_MIN 64

/* The id of command w (hash h), or -1 when it has none. */
static int64_t comms_find(const struct comms *d, const uint64_t w[2], uint32_t h)
{
    if (!d->tcap)
        return -1;
    for (size_t i = h & (d->tcap - 1);; i = (i + 1) & (d->tcap - 1)) {
        uint32_t v = d->table[i];
        if (!v)
            return -1;
        if (d->words[v - 1][0] == w[0] && d->words[v - 1][1] == w[1])
            return v - 1;
    }
}

static void comms_place(struct comms *d, uint32_t id)
{
    size_t i = comm_hash(d->words[id]) & (d->tcap - 1);
    while (d->table[i])
        i = (i + 1) & (d->tcap - 1);
    d->table[i] = id + 1;
}

/* Places every id in a table of at least twice cap slots. 0 or -ENOMEM (nothing changed). */
static int comms_table(struct comms *d, size_t cap)
{
    size_t tcap = 16;
    while (tcap < 2 * cap)
        tcap *= 2;
    uint32_t *t = calloc(tcap, sizeof(*t));
    if (!t)
        return -ENOMEM;
    free(d->table);
    d->table = t;
    d->tcap = tcap;
    for (uint32_t id = 0; id < d->n; id++)
        comms_place(d, id);
    return 0;
}

/*
 * Drops the ids of the commands no held event has: numbers the commands of
 * the held column entries again, in order, and rewrites their ids (a gone
 * entry gets COMM_NONE). One pass over the columns; it runs when the ids
 * given reach twice those kept by the last one (and COMMS_COLLECT_MIN
 * more), so it costs a bounded share of each new command. 0 or -ENOMEM
 * (nothing changed).
 */
static int comms_collect(struct store *s)
{
    struct comms *d = &s->comms;
    struct columns *c = &s->cols;
    uint32_t *remap = malloc(d->n * sizeof(*remap));
    uint64_t(*words)[2] = malloc(d->n * sizeof(*words));
    if (!remap || !words) {
        free(remap);
        free(words);
        return -ENOMEM;
    }
    memset(remap, 0xff, d->n * sizeof(*remap));
    size_t n = 0;
    for (size_t i = 0; i < c->len; i++) {
        size_t k = col_slot(c, i);
        uint32_t id = c->comm[k];
        if (id == COMM_NONE || col_gone(s, k)) {
            c->comm[k] = COMM_NONE;
            continue;
        }
        if (remap[id] == COMM_NONE) {
            memcpy(words[n], d->words[id], sizeof(words[n]));
            remap[id] = (uint32_t)n++;
        }
        c->comm[k] = remap[id];
    }
    free(remap);
    free(d->words);
    d->words = words;
    d->cap = d->n;
    d->n = n;
    d->collect_at = 2 * n + COMMS_COLLECT_MIN;
    memset(d->table, 0, d->tcap * sizeof(*d->table));
    for (uint32_t id = 0; id < n; id++)
        comms_place(d, id);
    return 0;
}

/* The id of command w, given when it has none. 0 or -ENOMEM. */
static int comms_id(struct store *s, const uint64_t w[2], uint32_t *id)
{
    struct comms *d = &s->comms;
    int64_t found = comms_find(d, w, comm_hash(w));
    if (found >= 0) {
        *id = (uint32_t)found;
        return 0;
    }
    if (d->n >= d->collect_at && comms_collect(s) < 0)
        return -ENOMEM;
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 64;
        uint64_t(*w2)[2] = cap < COMM_NONE ? realloc(d->words, cap * sizeof(*w2)) : NULL;
        if (!w2)
            return -ENOMEM;
        d->words = w2;
        d->cap = cap;
    }
    if (2 * (d->n + 1) > d->tcap && comms_table(d, d->cap) < 0)
        return -ENOMEM;
    memcpy(d->words[d->n], w, sizeof(d->words[0]));
    comms_place(d, (uint32_t)d->n);
    *id = (uint32_t)d->n++;
    return 0;
}

/* The fields of an event the columns keep, taken before the shard takes the event. */
struct col_vals {
    uint32_t comm; /* its id */
    uint32_t pid;
    uint16_t dport;
};

/* Appends an entry; the columns have room (cols_reserve()). */
static void cols_append(struct store *s, const struct col_vals *v, uint64_t ts, uint64_t id,
                        uint32_t shard)
{
    struct columns *c = &s->cols;
    size_t k = col_slot(c, c->len++);
    c->ts[k] = ts;
    c->id[k] = id;
    c->shard[k] = shard;
    c->pid[k] = v->pid;
    c->comm[k] = v->comm;
    c->dport[k] = v->dport;
}

/* ---- time lists and eviction -------------------------------------------------------------- */

/*
 * The oldest of the time lists' entries at[t] (list t read from its entry
 * at[t] on), its type in *type; NULL when every list is past its end.
 */
static const struct time_entry *time_lists_min(const struct store *s, const size_t *at,
                                               size_t *type)
{
    const struct time_entry *best = NULL;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        const struct time_list *l = &s->by_time[t];
        if (at[t] >= l->tv.len)
            continue;
        const struct time_entry *e = time_at(l, at[t]);
        if (!best || entry_cmp(e, best->timestamp_ns, best->id, best->shard) < 0) {
            best = e;
            *type = t;
        }
    }
    return best;
}

/* The time list with the globally oldest event at its front; NULL when the store is empty. */
static struct time_list *store_oldest_list(struct store *s)
{
    static const size_t fronts[EVENT_TYPE_COUNT];
    size_t t = 0;
    return time_lists_min(s, fronts, &t) ? &s->by_time[t] : NULL;
}

/* The key of the globally oldest event (a time list's front: no record read), or NULL. */
static const struct time_entry *store_oldest(struct store *s)
{
    const struct time_list *l = store_oldest_list(s);
    return l ? time_at(l, 0) : NULL;
}

/*
 * The entries of the next n events eviction takes, oldest first, into out
 * (a merge of the time lists' fronts); returns how many there are (<= n).
 * Each list's next entry is kept at hand, so a step reads one entry, not
 * every list's (as time_lists_min() does, with the same order on ties).
 */
static size_t store_next_oldest(struct store *s, const struct time_entry **out, size_t n)
{
    const struct time_entry *next[EVENT_TYPE_COUNT];
    size_t at[EVENT_TYPE_COUNT] = {0}, m = 0;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++)
        next[t] = s->by_time[t].tv.len ? time_at(&s->by_time[t], 0) : NULL;
    while (m < n) {
        size_t best = EVENT_TYPE_COUNT;
        for (size_t t = 0; t < EVENT_TYPE_COUNT; t++)
            if (next[t] &&
                (best == EVENT_TYPE_COUNT || entry_cmp(next[t], next[best]->timestamp_ns,
                                                       next[best]->id, next[best]->shard) < 0))
                best = t;
        if (best == EVENT_TYPE_COUNT)
            break;
        out[m++] = next[best];
        const struct time_list *l = &s->by_time[best];
        next[best] = ++at[best] < l->tv.len ? time_at(l, at[best]) : NULL;
    }
    return m;
}

/*
 * Evicts the globally oldest event: the front of its type's time list tl
 * (store_oldest_list()), and so the oldest record of its shard.
 */
static void store_evict_from(struct store *s, struct time_list *tl)
{
    s->gone = *time_at(tl, 0);
    s->any_gone = true;
    struct store_shard *sh = s->shards[s->gone.shard];
    time_remove(s, tl, s->gone.timestamp_ns, s->gone.id, s->gone.shard);
    shard_pop_oldest(sh);
    if (--s->count == 0)
        s->newest_ns = 0;
    if (sh->recs.len == 0)
        shard_release(s, sh);
}

static void store_evict_oldest(struct store *s)
{
    store_evict_from(s, store_oldest_list(s));
}

/* Evicts every event older than cutoff_ns; returns how many. */
static size_t store_expire_locked(struct store *s, uint64_t cutoff_ns)
{
    if (s->oldest_floor >= cutoff_ns)
        return 0; /* nothing held is older than the floor */
    size_t n = 0;
    const struct time_entry *e;
    while ((e = store_oldest(s)) && e->timestamp_ns < cutoff_ns) {
        store_evict_oldest(s);
        n++;
    }
    /* Empty, the cutoff will do: an add older than it is refused, a later one is not below it. */
    s->oldest_floor = e ? e->timestamp_ns : cutoff_ns;
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
    s->comms.collect_at = COMMS_COLLECT_MIN;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        tvec_init_blocks(&s->by_time[t].tv, sizeof(struct time_entry), 64, STORE_TIME_BLOCK_SHIFT);
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
    free(s->cols.mem);
    free(s->comms.words);
    free(s->comms.table);
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

/*
 * Takes ownership of *e in every case; now_ns is the wall clock; *hash is the store_hash() of
 * e's shard key when the caller has it (NULL: computed here). Caller holds the write lock.
 */
static int store_add_locked(struct store *s, struct event *e, uint64_t now_ns, const uint64_t *hash)
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
    struct time_list *oldest_list = s->count >= s->limits.max_events ? store_oldest_list(s) : NULL;
    const struct time_entry *oldest = oldest_list ? time_at(oldest_list, 0) : NULL;
    /* The shard the eviction below pops from, brought closer while this event goes in: the
     * batch's prefetch (prefetch_evictions()) ran a group earlier, and in a history of tens of
     * thousands of shards the line has left the nearest cache by now. */
    if (oldest)
        __builtin_prefetch(s->shards[oldest->shard]);
    if ((oldest && store_key_cmp(e->timestamp_ns, e->id, oldest->timestamp_ns, oldest->id) < 0) ||
        (s->any_gone &&
         store_key_cmp(e->timestamp_ns, e->id, s->gone.timestamp_ns, s->gone.id) <= 0)) {
        /* It would be the one evicted, or it is no newer than an event already evicted (which
         * is also what tells the columns' gone entries from the held ones). */
        s->st.added++;
        s->st.evicted_count++;
        event_clear(e);
        return 0;
    }

    struct shard_key key;
    shard_key_of_event(&key, e);
    struct store_shard *sh = store_shard_get(s, &key, hash ? *hash : store_hash(&key));

    /* Room in the columns and the time list first, so nothing can fail once the event is in. */
    struct col_vals vals = {.pid = e->pid, .dport = e->dport};
    uint64_t comm[2];
    comm_words(e->command, comm);
    struct time_list *tl = &s->by_time[e->type];
    bool room = sh != NULL && time_room(s, tl) == 0 && cols_reserve(s) == 0 &&
                comms_id(s, comm, &vals.comm) == 0;

    uint64_t ts = e->timestamp_ns, id = e->id;
    size_t pos;
    int rc = room ? shard_insert(sh, e, &pos) : -ENOMEM;
    if (rc != 0) {
        if (rc < 0)
            s->st.failed++;
        else
            s->st.duplicates++;
        event_clear(e);
        return rc < 0 ? rc : 0;
    }
    cols_append(s, &vals, ts, id, sh->index);
    time_insert(tl, ts, id, sh->index);
    if (ts < s->oldest_floor)
        s->oldest_floor = ts;
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
    int rc = store_add_locked(s, e, now, NULL);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/*
 * Batches: adding an event costs a handful of cache misses in a large store
 * (its shard's table slot, the shard, the shard's newest record; evicting
 * the oldest event, its shard and record), each depending on the one
 * before. Taken one event at a time they are paid one after the other; here
 * a group of events walks those chains level by level, only prefetching, so
 * the misses of the whole group overlap, and then adds them one by one as
 * store_add_locked() does (the prefetches are hints: a shard that does not
 * exist yet, or a later slot of a probe chain, is simply found again on
 * add). The columns and the time lists are written in order: no miss.
 */
#define STORE_ADD_GROUP 16

struct add_hint {
    struct store_shard *sh;
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
 * and records (their column entries are left in place, see the top).
 */
static void prefetch_evictions(struct store *s, size_t n)
{
    const struct time_entry *next[STORE_EVICT_HINTS];
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
        shard_key_of_event(&k, &ev[i]);
        h[i].shard_hash = store_hash(&k);
        if (s->table_cap)
            __builtin_prefetch(&s->table[h[i].shard_hash & (s->table_cap - 1)]);
    }
    for (size_t i = 0; i < n; i++) {
        h[i].sh = s->table_cap ? s->table[h[i].shard_hash & (s->table_cap - 1)] : NULL;
        if (h[i].sh) {
            prefetch_shard(h[i].sh);
            prefetch_shard_names(h[i].sh);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct store_shard *sh = h[i].sh;
        if (sh && tvec_has_room(&sh->recs))
            __builtin_prefetch(shard_at(sh, sh->recs.len), 1);
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
            failed += store_add_locked(s, &ev[g + i], now, &hints[i].shard_hash) < 0;
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
/*
 * A query with pid, command or dest_port filters scans the columns when the
 * selected shards hold more than 1/COLS_SCAN_COST of their entries: checking
 * a record costs several times a column slot, read in order.
 */
#define COLS_SCAN_COST 32
/* Matches whose keys a column scan prefetches before taking them. */
#define COLS_TAKE_GROUP 32

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
    e.type = sh->type;
    e.timestamp_ns = r->timestamp_ns;
    e.pid = r->pid;
    e.dport = r->dport;
    memcpy(e.command, r->command, sizeof(e.command));
    return query_match(rq, &e);
}

/* [lo, hi_all) of a time list's entries within the time bounds; hi stops at the cursor. */
static void time_bounds(const struct time_list *l, const struct query *q, size_t *lo,
                        size_t *hi_all, size_t *hi)
{
    size_t len = l->tv.len;
    *lo = q->since_ns ? time_lower_bound(l, len, q->since_ns, 0, 0) : 0;
    *hi_all =
        q->until_ns == UINT64_MAX ? len : time_lower_bound_in(l, *lo, len, q->until_ns + 1, 0, 0);
    *hi = *hi_all;
    if (q->has_cursor)
        *hi = time_lower_bound(l, *hi_all, q->cursor.timestamp_ns, q->cursor.id, 0);
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

/* Keys of a column scan's matches: a heap with the oldest on top, keeping the newest. */
static void entry_heap_down(struct time_entry *h, size_t n, size_t pos)
{
    struct time_entry e = h[pos];
    for (;;) {
        size_t child = 2 * pos + 1;
        if (child >= n)
            break;
        if (child + 1 < n &&
            entry_cmp(&h[child + 1], h[child].timestamp_ns, h[child].id, h[child].shard) < 0)
            child++;
        if (entry_cmp(&h[child], e.timestamp_ns, e.id, e.shard) >= 0)
            break;
        h[pos] = h[child];
        pos = child;
    }
    h[pos] = e;
}

static int entry_newer_first(const void *a, const void *b)
{
    const struct time_entry *y = b;
    return -entry_cmp(a, y->timestamp_ns, y->id, y->shard);
}

/* A column scan's filters: pid, command and dest_port, as query_match() has them. */
struct col_filter {
    bool pid, comm, dport;
    uint32_t pid_v, comm_v;
    uint16_t dport_v;
};

#ifdef __SSE2__
/* One bit per entry of the four at p that equal want's. */
static inline unsigned eq_mask_u32x4(const __m128i *p, __m128i want)
{
    return (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_loadu_si128(p), want)));
}
#endif

/*
 * The highest index below k (down to lo) where a[] holds v, or SIZE_MAX. With SSE2 (every
 * x86-64), sixteen entries a test: four compares and one mask, the highest set bit of which
 * is the match; elsewhere, or for the last few entries, one at a time. A column scan spends
 * most of its time here: a common command matches every few dozen slots, so each match
 * costs a block or two.
 */
static size_t find_back_u32(const uint32_t *a, size_t lo, size_t k, uint32_t v)
{
#ifdef __SSE2__
    const __m128i want = _mm_set1_epi32((int)v);

    while (k >= lo + 16) {
        const __m128i *p = (const __m128i *)(a + k - 16);
        unsigned bits = eq_mask_u32x4(p, want) | eq_mask_u32x4(p + 1, want) << 4 |
                        eq_mask_u32x4(p + 2, want) << 8 | eq_mask_u32x4(p + 3, want) << 12;
        if (bits)
            return k - 16 + (size_t)(31 - __builtin_clz(bits));
        k -= 16;
    }
#endif
    while (k > lo)
        if (a[--k] == v)
            return k;
    return SIZE_MAX;
}

/* The same for a column of 16-bit values: with SSE2, sixteen entries a test. */
static size_t find_back_u16(const uint16_t *a, size_t lo, size_t k, uint16_t v)
{
#ifdef __SSE2__
    const __m128i want = _mm_set1_epi16((short)v);

    while (k >= lo + 16) {
        const __m128i *p = (const __m128i *)(a + k - 16);
        /* Each compare gives a lane of all ones or zeros; packed to bytes, one bit each. */
        __m128i eq = _mm_packs_epi16(_mm_cmpeq_epi16(_mm_loadu_si128(p), want),
                                     _mm_cmpeq_epi16(_mm_loadu_si128(p + 1), want));
        unsigned bits = (unsigned)_mm_movemask_epi8(eq);
        if (bits)
            return k - 16 + (size_t)(31 - __builtin_clz(bits));
        k -= 16;
    }
#endif
    while (k > lo)
        if (a[--k] == v)
            return k;
    return SIZE_MAX;
}

/* The highest slot below k (down to lo) matching every filter of f, or SIZE_MAX. One column
 * is searched (pid, else the command's hash, else dest_port); a hit is checked against the
 * others. */
static size_t col_find_back(const struct columns *c, const struct col_filter *f, size_t lo,
                            size_t k)
{
    for (;;) {
        if (f->pid)
            k = find_back_u32(c->pid, lo, k, f->pid_v);
        else if (f->comm)
            k = find_back_u32(c->comm, lo, k, f->comm_v);
        else
            k = find_back_u16(c->dport, lo, k, f->dport_v);
        if (k == SIZE_MAX)
            return k;
        if ((!f->comm || c->comm[k] == f->comm_v) && (!f->dport || c->dport[k] == f->dport_v))
            return k;
    }
}

/* What a column scan gathers: the counts, and the newest matches before the cursor in a heap
 * with the oldest on top. */
struct col_scan {
    const struct query *q;
    const bool *selected;
    struct time_entry *heap;
    size_t n, limit;
    uint64_t total, after;
};

/* Takes the matching entry in slot k: held, within the bounds and a selected shard. Its id and
 * shard are read only when needed. */
static void col_take(const struct store *s, struct col_scan *sc, size_t k)
{
    const struct columns *c = &s->cols;
    const struct query *q = sc->q;
    /* A gone entry's shard may hold other events now, but it is still an index of s->shards:
     * selected[] can be read first, which spares the other shards' entries a read of ts. */
    if (sc->selected && !sc->selected[c->shard[k]])
        return;
    uint64_t ts = c->ts[k];
    if (ts < q->since_ns || ts > q->until_ns)
        return;
    if (s->any_gone && ts <= s->gone.timestamp_ns && key_gone(s, ts, c->id[k], c->shard[k]))
        return;
    sc->total++;
    if (q->has_cursor &&
        (ts > q->cursor.timestamp_ns || (ts == q->cursor.timestamp_ns && c->id[k] >= q->cursor.id)))
        return;
    sc->after++;
    if (sc->n == sc->limit && (sc->limit == 0 || ts < sc->heap[0].timestamp_ns ||
                               entry_cmp(&sc->heap[0], ts, c->id[k], c->shard[k]) >= 0))
        return;
    struct time_entry e = {.timestamp_ns = ts, .id = c->id[k], .shard = c->shard[k]};
    if (sc->n == sc->limit) {
        sc->heap[0] = e;
        entry_heap_down(sc->heap, sc->n, 0);
        return;
    }
    size_t j = sc->n++;
    while (j > 0 && entry_cmp(&sc->heap[(j - 1) / 2], ts, e.id, e.shard) > 0) {
        sc->heap[j] = sc->heap[(j - 1) / 2];
        j = (j - 1) / 2;
    }
    sc->heap[j] = e;
}

/*
 * Answers q by scanning the columns, newest added first: an entry whose
 * pid, command and dest_port match is checked for being held, the time
 * bounds and the selected shards (every shard when selected is NULL); the
 * limit newest before the cursor are kept in a heap, and only their
 * records are read.
 */
static int store_query_columns(struct store *s, const struct query *q, const bool *selected,
                               size_t limit, struct store_result *out)
{
    const struct columns *c = &s->cols;
    struct col_filter f = {.pid = q->has_pid,
                           .pid_v = q->pid,
                           .dport = q->has_dest_port,
                           .dport_v = q->dest_port,
                           .comm = q->command[0] != '\0'};
    if (f.comm) {
        uint64_t w[2];
        comm_words(q->command, w);
        int64_t id = comms_find(&s->comms, w, comm_hash(w));
        if (id < 0)
            return 0; /* no event held has it */
        f.comm_v = (uint32_t)id;
    }
    struct col_scan sc = {.q = q, .selected = selected, .limit = limit};
    if (!(sc.heap = malloc((limit ? limit : 1) * sizeof(*sc.heap))))
        return -ENOMEM;
    /* The ring as two runs of slots, the newer one first: [0, start + len - cap) when it wraps,
     * then [start, min(start + len, cap)). */
    size_t end = c->start + c->len;
    size_t runs[2][2] = {{0, end > c->cap ? end - c->cap : 0},
                         {c->start, end > c->cap ? c->cap : end}};
    /* Matches are gathered a group at a time and their keys prefetched before they are taken:
     * spread over the columns, each is a cache miss, and so their misses overlap. */
    size_t group[COLS_TAKE_GROUP], m = 0;
    for (int r = 0; r < 2; r++) {
        size_t k = runs[r][1];
        while (k > runs[r][0] && (k = col_find_back(c, &f, runs[r][0], k)) != SIZE_MAX) {
            __builtin_prefetch(selected ? (const void *)&c->shard[k] : (const void *)&c->ts[k]);
            group[m++] = k;
            if (m == COLS_TAKE_GROUP) {
                for (size_t j = 0; j < m; j++)
                    col_take(s, &sc, group[j]);
                m = 0;
            }
        }
    }
    for (size_t j = 0; j < m; j++)
        col_take(s, &sc, group[j]);

    qsort(sc.heap, sc.n, sizeof(*sc.heap), entry_newer_first);
    int rc = 0;
    if (sc.n && !(out->events = calloc(sc.n, sizeof(*out->events))))
        rc = -ENOMEM;
    for (size_t j = 0; rc == 0 && j < sc.n; j++)
        rc = store_result_push(out, s->shards[sc.heap[j].shard], sc.heap[j].timestamp_ns,
                               sc.heap[j].id);
    free(sc.heap);
    out->total_count = sc.total;
    out->has_next = sc.after > out->count;
    return rc;
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
        const struct time_list *l;
        size_t lo, hi;
    } r[EVENT_TYPE_COUNT];
    size_t n = 0;
    uint64_t total = 0, after = 0;
    for (size_t t = 0; t < EVENT_TYPE_COUNT; t++) {
        const struct time_list *l = &s->by_time[t];
        if (l->tv.len == 0 || (q->types && !(q->types & EVENT_TYPE_BIT(t))))
            continue;
        size_t lo, hi_all, hi;
        time_bounds(l, q, &lo, &hi_all, &hi);
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
        const struct time_entry *top = time_at(r[0].l, r[0].hi - 1);
        for (size_t i = 1; i < n; i++) {
            const struct time_entry *e = time_at(r[i].l, r[i].hi - 1);
            if (entry_cmp(e, top->timestamp_ns, top->id, top->shard) > 0) {
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
    rq.command_shown = q->command_shown;
    rq.has_pid = q->has_pid;
    rq.pid = q->pid;
    rq.has_dest_port = q->has_dest_port;
    rq.dest_port = q->dest_port;
    memcpy(rq.dns_query, q->dns_query, sizeof(rq.dns_query));
    rq.dns_query_suffix = q->dns_query_suffix;
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
    /* The columns hold only pid, command and dest_port: the dns filters need the records, and
     * so does pid=0 (which matches only events made by a process: event_has_process()), and a
     * command as shown (the columns compare a command's bytes). */
    bool cols =
        residual && !query_has_dns_filter(q) && !(q->has_pid && q->pid == 0) && !q->command_shown;
    if (cols && strnlen(q->command, EVENT_COMM_LEN + 1) > EVENT_COMM_LEN)
        goto out; /* longer than any command */
    if (cols && !q->types && !q->status && !names) {
        /* Every shard is selected: no need to read every shard first. */
        rc = store_query_columns(s, q, NULL, limit, out);
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

    if (cols && candidates > s->cols.len / COLS_SCAN_COST) {
        rc = store_query_columns(s, q, selected, limit, out);
        goto cursor;
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
    out->index_bytes = s->time_bytes + s->cols.cap * COLS_SLOT_BYTES +
                       s->comms.cap * sizeof(*s->comms.words) +
                       s->comms.tcap * sizeof(*s->comms.table);
    out->shards = s->live.n;
    out->shards_made = s->nshards;
    const struct time_entry *oldest = store_oldest(s);
    out->oldest_ns = oldest ? oldest->timestamp_ns : 0;
    out->newest_ns = s->newest_ns;
    pthread_rwlock_unlock(&s->lock);
}

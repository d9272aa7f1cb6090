/* Reaping dead entries of the `sockets` maps: see sockets_reap.h. */
#include "sockets_reap.h"
#include <bpf/bpf.h>
#include <errno.h>
#include <stdlib.h>
#include "common.h"
#include "net_events.h"

/* The kernel's own "not supported" (not in the uapi headers), which some bpf() commands return. */
#ifndef ENOTSUPP
#define ENOTSUPP 524
#endif

static void add_u64(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

int sockets_reaper_add(struct sockets_reaper *r, int fd)
{
    if (r->nmaps == SOCKETS_REAP_MAPS)
        return -ENOSPC;
    struct sockets_reap_map *m = &r->map[r->nmaps];
    *m = (struct sockets_reap_map){.fd = fd};
    m->keys = calloc(SOCKETS_REAP_BATCH, sizeof(*m->keys));
    m->vals = calloc(SOCKETS_REAP_BATCH, sizeof(*m->vals));
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        *m = (struct sockets_reap_map){0};
        return -ENOMEM;
    }
    r->nmaps++;
    return 0;
}

/*
 * Deletes the entry at key if it is still dead. Between reading it and
 * deleting it, the next socket at its address may have taken it over: the
 * value deleted says so, and it is put back (counted in reap_races; what
 * that socket wrote in the instant between may still be lost).
 */
static void reap_entry(struct sockets_reaper *r, int fd, uint64_t key)
{
    struct sock_life v;

    if (bpf_map_lookup_and_delete_elem(fd, &key, &v) == 0) {
        if (v.phase == LIFE_DEAD) {
            add_u64(&r->reaped, 1);
        } else {
            add_u64(&r->reap_races, 1);
            (void)bpf_map_update_elem(fd, &key, &v, BPF_NOEXIST);
        }
    } else if (errno == EINVAL || errno == ENOTSUPP || errno == EOPNOTSUPP) {
        /* Before 5.14 a hash map has no lookup-and-delete: delete what was read as dead. */
        if (bpf_map_delete_elem(fd, &key) == 0)
            add_u64(&r->reaped, 1);
    } else if (errno != ENOENT) {
        add_u64(&r->reap_errors, 1);
    }
}

/* One batch of one map's pass: reads up to SOCKETS_REAP_BATCH entries, reaps the long dead. */
static void reap_batch(struct sockets_reaper *r, struct sockets_reap_map *m, uint64_t now)
{
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    uint32_t n = SOCKETS_REAP_BATCH;
    uint64_t out = 0;
    int err = bpf_map_lookup_batch(m->fd, m->in_pass ? &m->token : NULL, &out, m->keys, m->vals, &n,
                                   &opts);
    bool done = err != 0; /* -ENOENT: the last batch (n may still be > 0); else an error */

    if (err && errno != ENOENT) {
        add_u64(&r->reap_errors, 1);
        n = 0;
    }
    if (!m->in_pass) {
        m->age_ns = m->seen > SOCKETS_MAX / 2 ? 0 : SOCKETS_REAP_AGE_NS; /* seen: the last pass */
        m->seen = m->dead = 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct sock_life *v = &m->vals[i];

        m->seen++;
        if (v->phase != LIFE_DEAD)
            continue;
        m->dead++;
        if (v->closed_ns + m->age_ns <= now) {
            reap_entry(r, m->fd, m->keys[i]);
            m->dead--;
        }
    }
    m->token = out;
    m->in_pass = !done;
}

void sockets_reaper_poll(struct sockets_reaper *r, uint64_t now)
{
    bool start = true, more = false;

    for (size_t i = 0; i < r->nmaps; i++)
        if (r->map[i].in_pass)
            start = false;
    if (start && now < r->next_pass_ns)
        return;
    for (size_t i = 0; i < r->nmaps; i++) {
        if (start || r->map[i].in_pass)
            reap_batch(r, &r->map[i], now);
        more |= r->map[i].in_pass;
    }
    if (more)
        return;
    uint64_t seen = 0, dead = 0;
    for (size_t i = 0; i < r->nmaps; i++)
        seen += r->map[i].seen, dead += r->map[i].dead;
    __atomic_store_n(&r->entries, seen, __ATOMIC_RELAXED);
    __atomic_store_n(&r->dead, dead, __ATOMIC_RELAXED);
    r->next_pass_ns = now + SOCKETS_REAP_EVERY_NS;
}

void sockets_reaper_stats(struct sockets_reaper *r, struct capture_sockets_stats *out)
{
    out->capacity = (uint64_t)SOCKETS_MAX * r->nmaps;
    out->entries = __atomic_load_n(&r->entries, __ATOMIC_RELAXED);
    out->dead = __atomic_load_n(&r->dead, __ATOMIC_RELAXED);
    out->reaped = __atomic_load_n(&r->reaped, __ATOMIC_RELAXED);
    out->reap_races = __atomic_load_n(&r->reap_races, __ATOMIC_RELAXED);
    out->reap_errors = __atomic_load_n(&r->reap_errors, __ATOMIC_RELAXED);
}

void sockets_reaper_free(struct sockets_reaper *r)
{
    for (size_t i = 0; i < r->nmaps; i++) {
        free(r->map[i].keys);
        free(r->map[i].vals);
    }
    r->nmaps = 0;
}

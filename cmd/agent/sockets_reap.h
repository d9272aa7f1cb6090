/*
 * Reaping the connection programs' `sockets` maps (struct sock_life in
 * bpf/net_events.h): an entry stays after its connection ends, for the next
 * socket the kernel allocates at the same address to take over in place
 * (no insert and no delete, each a locked map operation, per connection).
 * A socket's memory is handed out again within microseconds on a busy node,
 * so entries dead for longer than SOCKETS_REAP_AGE_NS are deleted here: the
 * dead ones are bounded by the sockets closed in the last second or two, and
 * once a pass finds a map more than half full, every dead entry is (the next
 * pass deletes regardless of age). A pass reads a map in batches of
 * SOCKETS_REAP_BATCH entries, one batch per poll, and starts at most every
 * SOCKETS_REAP_EVERY_NS.
 *
 * One thread polls (the capture thread); the statistics may be read from any.
 */
#ifndef EBPF_MONITOR_SOCKETS_REAP_H
#define EBPF_MONITOR_SOCKETS_REAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SOCKETS_REAP_AGE_NS   (1000000000ull)
#define SOCKETS_REAP_EVERY_NS (1000000000ull)
#define SOCKETS_REAP_BATCH    1024
#define SOCKETS_REAP_MAPS     16 /* maps at most: one per connections object a capture loads */

/*
 * The kernel map that follows each TCP connection from its connect or accept
 * to its close: its size, and the reaping of the entries connections left
 * behind. entries and dead are as of the last complete pass over the maps
 * (about every second).
 */
struct capture_sockets_stats {
    uint64_t capacity;    /* entries the maps hold at most (0: no connection programs) */
    uint64_t entries;     /* entries held: connections followed and dead ones not yet reaped */
    uint64_t dead;        /* of which dead: waiting for a socket at their address, or reaping */
    uint64_t reaped;      /* dead entries deleted */
    uint64_t reap_races;  /* entries taken over by a new socket while being reaped, put back */
    uint64_t reap_errors; /* failed map reads or deletes */
    uint64_t seeded;      /* connections open at the start, followed from then (capture.c) */
    uint64_t seed_full;   /* of those, not followed: the map was full */
    /* Listening ports not noted at the start (their map was full): connections accepted from
     * them are told a server's from their socket alone (capture.c) */
    uint64_t seed_listeners_full;
};

/* The pass over one map. */
struct sockets_reap_map {
    int fd;
    bool in_pass;        /* a pass is under way: token is where the next batch starts */
    uint64_t age_ns;     /* this pass deletes entries dead for longer */
    uint64_t token;      /* the kernel's batch cursor (a bucket index for a hash map) */
    uint64_t seen, dead; /* entries, and dead ones among them, read so far in the pass */
    uint64_t *keys;      /* SOCKETS_REAP_BATCH of them */
    struct sock_life *vals;
};

struct sockets_reaper {
    struct sockets_reap_map map[SOCKETS_REAP_MAPS];
    size_t nmaps;
    uint64_t next_pass_ns; /* boot clock: when the next pass may start */
    /* Published for other threads (atomics): as of the last complete pass, and totals. */
    uint64_t entries, dead, reaped, reap_races, reap_errors;
};

/* Reaps the map fd (a `sockets` map, SOCKETS_MAX entries) too; -ENOMEM, -ENOSPC (too many). */
int sockets_reaper_add(struct sockets_reaper *r, int fd);

/* On every poll: one batch of the pass under way, or a new pass when one is due. now: the boot
 * clock, the programs' bpf_ktime_get_boot_ns(). */
void sockets_reaper_poll(struct sockets_reaper *r, uint64_t now);

/* Fills out; thread-safe. */
void sockets_reaper_stats(struct sockets_reaper *r, struct capture_sockets_stats *out);

/* Frees what sockets_reaper_add allocated (the maps are not closed). */
void sockets_reaper_free(struct sockets_reaper *r);

#endif

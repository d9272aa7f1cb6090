/*
 * The reaping of the connection programs' `sockets` map (cmd/agent/sockets_reap.c)
 * on a real kernel hash map of the same size and layout, filled by the test:
 * which dead entries go (by age, and all of them once a pass finds the map
 * more than half full), which stay, and what the statistics say. The clock is
 * the test's: each poll is given the boot time it would have read. Needs root
 * (BPF_MAP_CREATE); the lifecycle suite covers the same code inside the agent.
 */
#include <bpf/bpf.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "net_events.h"
#include "../cmd/agent/sockets_reap.h"

#define SEC_NS   1000000000ull
#define KEY_BASE 0xffff888100000000ull /* keys look like the socket addresses they are */

static int map_fd = -1;
static struct sockets_reaper reaper;

static void setup(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: creates a BPF hash map");
    map_fd = bpf_map_create(BPF_MAP_TYPE_HASH, "sockets", sizeof(uint64_t),
                            sizeof(struct sock_life), SOCKETS_MAX, NULL);
    cr_assert_geq(map_fd, 0, "bpf_map_create: %s", strerror(errno));
    memset(&reaper, 0, sizeof(reaper));
    cr_assert_eq(sockets_reaper_add(&reaper, map_fd), 0);
}

static void teardown(void)
{
    sockets_reaper_free(&reaper);
    if (map_fd >= 0)
        close(map_fd);
    map_fd = -1;
}

TestSuite(sockets_reap, .init = setup, .fini = teardown);

/* Entries [first, first + n) in phase, dead or snapshot at closed_ns. */
static void put(uint64_t first, uint64_t n, enum sock_life_phase phase, uint64_t closed_ns)
{
    for (uint64_t i = first; i < first + n; i++) {
        uint64_t key = KEY_BASE + i * 64;
        struct sock_life v = {.phase = (uint8_t)phase, .closed_ns = closed_ns, .sport = 40000};
        cr_assert_eq(bpf_map_update_elem(map_fd, &key, &v, BPF_NOEXIST), 0,
                     "insert %" PRIu64 ": %s", i, strerror(errno));
    }
}

static bool present(uint64_t i)
{
    uint64_t key = KEY_BASE + i * 64;
    struct sock_life v;
    return bpf_map_lookup_elem(map_fd, &key, &v) == 0;
}

static uint64_t map_entries(void)
{
    uint64_t key, cur, n = 0;
    const uint64_t *prev = NULL;
    for (; bpf_map_get_next_key(map_fd, prev, &key) == 0; cur = key, prev = &cur)
        n++;
    return n;
}

/* Polls at now until the pass under way (or the one now starts) is over; the polls it took. */
static int pass(uint64_t now)
{
    int polls = 0;
    bool more;
    do {
        sockets_reaper_poll(&reaper, now);
        polls++;
        cr_assert_lt(polls, 1000, "a pass that does not end");
        more = false;
        for (size_t i = 0; i < reaper.nmaps; i++)
            more |= reaper.map[i].in_pass;
    } while (more);
    return polls;
}

static struct capture_sockets_stats stats(void)
{
    struct capture_sockets_stats s;
    sockets_reaper_stats(&reaper, &s);
    return s;
}

Test(sockets_reap, dead_entries_go_after_the_age_and_the_living_stay)
{
    const uint64_t t = 1000 * SEC_NS; /* a boot time well past zero */

    put(0, 100, LIFE_DEAD, t - 2 * SEC_NS);   /* dead for 2 s: due */
    put(100, 100, LIFE_DEAD, t - SEC_NS / 2); /* dead for 0.5 s: not yet */
    put(200, 100, LIFE_FOLLOWING, 0);
    put(300, 50, LIFE_FOLLOWING, t - 5 * SEC_NS); /* closed long ago, close record not written */
    put(350, 50, LIFE_CONNECTING, 0);

    pass(t);
    struct capture_sockets_stats s = stats();
    cr_expect_eq(s.capacity, SOCKETS_MAX);
    cr_expect_eq(s.reaped, 100);
    cr_expect_eq(s.entries, 400, "entries as read by the pass: %" PRIu64, s.entries);
    cr_expect_eq(s.dead, 100, "dead left: %" PRIu64, s.dead);
    cr_expect_eq(s.reap_races, 0);
    cr_expect_eq(s.reap_errors, 0);
    cr_expect_eq(map_entries(), 300);
    for (uint64_t i = 0; i < 400; i++)
        cr_expect_eq(present(i), i >= 100, "entry %" PRIu64 " %s", i,
                     i >= 100 ? "was reaped" : "is still there");

    /* Not due again within the pass interval, even with dead entries now old enough. */
    sockets_reaper_poll(&reaper, t + SOCKETS_REAP_EVERY_NS - 1);
    cr_expect_eq(stats().reaped, 100);
    cr_expect_eq(map_entries(), 300);

    /* The next pass: the rest of the dead are 1 s old, and go. */
    pass(t + SOCKETS_REAP_EVERY_NS);
    s = stats();
    cr_expect_eq(s.reaped, 200);
    cr_expect_eq(s.entries, 300);
    cr_expect_eq(s.dead, 0);
    cr_expect_eq(map_entries(), 200);
    for (uint64_t i = 200; i < 400; i++)
        cr_expect(present(i), "living entry %" PRIu64 " was reaped", i);
}

/* 40,000 entries (more than half of SOCKETS_MAX), all dead for less than the age. */
Test(sockets_reap, a_map_found_half_full_loses_every_dead_entry)
{
    const uint64_t t = 1000 * SEC_NS;
    const uint64_t dead = 40000, living = 10;

    put(0, dead, LIFE_DEAD, t + SEC_NS / 2); /* at the second pass, dead for 0.5 s */
    put(dead, living, LIFE_FOLLOWING, 0);

    int polls = pass(t);
    cr_expect_geq(polls, (int)((dead + living) / SOCKETS_REAP_BATCH), "a pass of %d polls", polls);
    struct capture_sockets_stats s = stats();
    cr_expect_eq(s.reaped, 0, "young entries reaped on the first pass: %" PRIu64, s.reaped);
    cr_expect_eq(s.entries, dead + living);
    cr_expect_eq(s.dead, dead);

    /* Half an age later: by age nothing is due, but the last pass saw the map half full. */
    pass(t + SOCKETS_REAP_EVERY_NS);
    s = stats();
    cr_expect_eq(s.reaped, dead, "reaped %" PRIu64 " of %" PRIu64, s.reaped, dead);
    cr_expect_eq(s.dead, 0);
    cr_expect_eq(s.reap_errors, 0);
    cr_expect_eq(map_entries(), living);
    for (uint64_t i = dead; i < dead + living; i++)
        cr_expect(present(i), "living entry %" PRIu64 " was reaped", i);
}

/* Below half full, young dead entries wait for their age. */
Test(sockets_reap, a_map_below_half_full_keeps_young_dead_entries)
{
    const uint64_t t = 1000 * SEC_NS;
    const uint64_t dead = SOCKETS_MAX / 2 - 100;

    put(0, dead, LIFE_DEAD, t + SEC_NS / 2); /* at the second pass, dead for 0.5 s */
    pass(t);
    cr_expect_eq(stats().entries, dead);
    pass(t + SOCKETS_REAP_EVERY_NS);
    cr_expect_eq(stats().reaped, 0);
    cr_expect_eq(map_entries(), dead);
}

Test(sockets_reap, an_empty_map_makes_empty_passes)
{
    pass(5 * SEC_NS);
    struct capture_sockets_stats s = stats();
    cr_expect_eq(s.entries, 0);
    cr_expect_eq(s.dead, 0);
    cr_expect_eq(s.reaped, 0);
    cr_expect_eq(s.reap_errors, 0);
}

Test(sockets_reap, capacity_counts_every_map)
{
    int fd2 = bpf_map_create(BPF_MAP_TYPE_HASH, "sockets", sizeof(uint64_t),
                             sizeof(struct sock_life), SOCKETS_MAX, NULL);
    cr_assert_geq(fd2, 0);
    cr_assert_eq(sockets_reaper_add(&reaper, fd2), 0);
    cr_expect_eq(stats().capacity, 2ull * SOCKETS_MAX);

    const uint64_t t = 1000 * SEC_NS;
    put(0, 5, LIFE_DEAD, t - 2 * SEC_NS);
    uint64_t key = KEY_BASE;
    struct sock_life v = {.phase = LIFE_DEAD, .closed_ns = t - 2 * SEC_NS};
    cr_assert_eq(bpf_map_update_elem(fd2, &key, &v, BPF_NOEXIST), 0);
    pass(t);
    cr_expect_eq(stats().reaped, 6);
    cr_expect_eq(stats().entries, 6);
    cr_expect_neq(bpf_map_lookup_elem(fd2, &key, &v), 0, "the second map's entry stayed");
    close(fd2);
}

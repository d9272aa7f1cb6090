/*
 * Fuzz target: a replica's server-half announcement for the ClusterIP join
 * (pkg/joins.c), which anyone who can publish on the control subjects can
 * send. What parses is added to a small table and joined against a held
 * connection, and writing it back and parsing again gives the same halves.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "joins.h"

#define FUZZ_TARGET "fuzz_joins"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct joins_half h[JOINS_ANNOUNCE_MAX], again[JOINS_ANNOUNCE_MAX];
    char replica[17], err[256];
    int n = joins_announce_parse((const char *)data, size, replica, sizeof(replica), h,
                                 JOINS_ANNOUNCE_MAX, err, sizeof(err));
    if (n < 0)
        return 0;
    struct joins *j = joins_new(16, 4, 2000000000ull);
    CHECK(j != NULL, "joins_new");
    for (int i = 0; i < n; i++)
        joins_add_half(j, &h[i], h[i].ts_ns);
    if (n > 0) {
        struct event e = {.type = EVENT_CONNECTION, .family = h[0].key.family, .protocol = 6};
        memcpy(e.saddr, h[0].key.ip, 16);
        e.sport = h[0].key.port;
        struct event out[4];
        CHECK(joins_hold(j, &e, h[0].ts_ns), "hold");
        size_t m = joins_release(j, h[0].ts_ns + 3000000000ull, out, 4);
        CHECK(m == 1, "%zu released", m);
        event_clear(&out[0]);
    }
    struct joins_stats st;
    joins_get_stats(j, &st);
    CHECK(st.halves <= 16, "%llu halves", (unsigned long long)st.halves);
    joins_free(j);

    struct buf b;
    buf_init(&b);
    joins_announce_write(&b, replica, h, (size_t)n);
    int m =
        joins_announce_parse(b.data, b.len, NULL, 0, again, JOINS_ANNOUNCE_MAX, err, sizeof(err));
    CHECK(m == n, "round trip: %d of %d (%s)", m, n, err);
    for (int i = 0; i < n; i++)
        CHECK(memcmp(&again[i].key, &h[i].key, sizeof(h[i].key)) == 0 &&
                  again[i].ts_ns == h[i].ts_ns && again[i].backend.pod == h[i].backend.pod,
              "half %d differs after a round trip", i);
    buf_free(&b);
    return 0;
}

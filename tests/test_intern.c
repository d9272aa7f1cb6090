/* pkg/intern: the string table's bound holds for what its names really cost. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <unistd.h>

#include "intern.h"

/* Resident memory of this process, in bytes. */
static size_t resident_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%lu %lu", &size, &resident), 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Short names are what a process can make most of (a new command for each connect): each
 * takes an allocation and a slot besides its bytes, and the table stays within its bound
 * counting those. */
Test(intern, short_names_fill_the_table_within_its_bound, .timeout = 60)
{
    struct intern_stats st;
    size_t before = resident_bytes();
    char name[16];
    unsigned long n = 0;

    do
        snprintf(name, sizeof(name), "%015lx", n++);
    while (intern(name) != NULL);
    intern_get_stats(&st);
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.strings, n - 1);
    cr_assert_leq(st.bytes, INTERN_MAX_BYTES);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* Some slack for the allocator's own bookkeeping, none for an unbounded cost per name (a
     * sanitizer's allocator has costs of its own, and shadow memory). */
    cr_assert_leq(resident_bytes() - before, INTERN_MAX_BYTES + INTERN_MAX_BYTES / 8,
                  "%zu MiB resident for %lu names", (resident_bytes() - before) >> 20, n - 1);
#endif
    /* Full: a name held is still found, a new one refused and counted. */
    cr_assert_not_null(intern("000000000000000"));
    cr_assert_null(intern("a new name"));
    intern_get_stats(&st);
    cr_assert_eq(st.refused, 2);
}

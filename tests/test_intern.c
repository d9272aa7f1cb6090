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

/* Fills the table's process part (intern_process_n()) with new names until it refuses one;
 * returns how many it took. */
static unsigned long fill_process_part(void)
{
    char name[16];
    unsigned long n = 0;

    do
        snprintf(name, sizeof(name), "p%014lx", n++);
    while (intern_process(name) != NULL);
    return n - 1;
}

/* A process that names itself anew for each connect, or resolves a new name each time, fills
 * only its part of the table: the names no process chooses still go in. */
Test(intern, process_names_fill_only_their_part, .timeout = 60)
{
    struct intern_stats st;
    unsigned long n = fill_process_part();

    intern_get_stats(&st);
    cr_assert_gt(n, 1000);
    cr_assert_eq(st.refused, 1);
    cr_assert_leq(st.bytes, INTERN_PROCESS_MAX_BYTES * 2, "slots included, within twice the part");
    /* A name held is still found; a new one refused and counted. */
    cr_assert_not_null(intern_process("p00000000000000"));
    cr_assert_null(intern_process("a new command"));
    /* The pods, workloads and nodes of the cluster keep their room. */
    for (int i = 0; i < 10000; i++) {
        char pod[32];
        snprintf(pod, sizeof(pod), "web-5d9c7b8f6d-%05d", i);
        cr_assert_not_null(intern(pod), "pod %d refused after the process part filled", i);
    }
    /* And a name a process chooses that the table holds already (here, a pod's) is found. */
    cr_assert_eq(intern_process("web-5d9c7b8f6d-00042"), intern("web-5d9c7b8f6d-00042"));
    intern_get_stats(&st);
    cr_assert_eq(st.refused, 2);
}

/* A lookup adds nothing. */
Test(intern, find_adds_nothing)
{
    struct intern_stats before, after;
    const char *held = intern("held");

    intern_get_stats(&before);
    cr_assert_null(intern_find_n("not held", 8));
    cr_assert_eq(intern_find_n("held!", 4), held);
    intern_get_stats(&after);
    cr_assert_eq(after.strings, before.strings);
    cr_assert_eq(after.refused, before.refused);
}

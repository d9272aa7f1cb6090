/*
 * A process-wide table of immutable strings (node names, drop reasons, kernel
 * symbols, pod names) so events can carry pointers instead of copies.
 * Thread-safe. Bounded: past INTERN_MAX_BYTES of memory (the strings as
 * allocated and the table's slots) new strings are refused (intern() returns
 * NULL) and counted, so a caller never gets a guess. A string is kept until
 * the process ends.
 */
#ifndef EBPF_MONITOR_INTERN_H
#define EBPF_MONITOR_INTERN_H

#include <stddef.h>
#include <stdint.h>

#define INTERN_MAX_BYTES (64u << 20)
/*
 * The part of it names a monitored process chooses may take (intern_process_n()): a command it
 * sets, a name it resolves. A process making new ones without end fills this part only, and the
 * names no process chooses (nodes, pods, workloads, drop locations) keep the rest.
 */
#define INTERN_PROCESS_MAX_BYTES (INTERN_MAX_BYTES / 4)

/* Returns the canonical copy of s (NUL-terminated), NULL when s is NULL or the table is full. */
const char *intern(const char *s);
/* Same for a string of len bytes that need not be NUL-terminated. */
const char *intern_n(const char *s, size_t len);
/* The same for a name a monitored process chose: refused once such names take
 * INTERN_PROCESS_MAX_BYTES (a name the table holds already is still found). */
const char *intern_process_n(const char *s, size_t len);
const char *intern_process(const char *s);
/* The canonical copy of the len bytes at s when the table holds it, NULL otherwise: adds
 * nothing (a query's filter: a name no event carried matches nothing, and costs no room). */
const char *intern_find_n(const char *s, size_t len);

struct intern_stats {
    uint64_t strings;
    uint64_t bytes;   /* memory taken: the strings' allocations and the slots */
    uint64_t refused; /* strings not interned because the table (or its process part) was full */
};
void intern_get_stats(struct intern_stats *out);

#endif

/*
 * The aggregator's jemalloc options (docs/architecture.md, "Memory
 * allocator"), read by jemalloc at its start; MALLOC_CONF in the environment
 * still overrides them (`MALLOC_CONF=thp:default` gives the kernel's own
 * choice back). Linked into the aggregator and its benchmarks; with glibc's
 * malloc (tests, sanitizer builds) nothing reads it.
 *
 * thp:always: the history, the flows' edges and their minutes grow by new
 * memory at every ingest, each 4 KiB page paid by a fault the first time it
 * is touched, a large share of an event's cost where faults are dear (in a
 * VM). Asking for transparent huge pages on jemalloc's extents (the kernel's
 * default, `madvise`, gives them only where asked) takes one fault per 2 MiB
 * instead, for a few percent more resident memory (the unused tail of each
 * huge page). metadata_thp:auto does the same for jemalloc's own metadata
 * once it is large.
 */
const char *malloc_conf = "thp:always,metadata_thp:auto";

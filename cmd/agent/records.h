/*
 * Kernel records to events: decodes one ring buffer record of the programs
 * in bpf/ (layouts in bpf/common.h, net_events.h, process_events.h) into a
 * struct event. Pure: no libbpf, no privileges, no I/O, so every record
 * shape is tested without root (tests/test_agent_records.c) and fuzzed
 * (tests/fuzz/fuzz_records.c). capture.c reads the ring buffer and calls it
 * on the capture thread.
 *
 * A new record kind: its struct in bpf/, one decode_<kind>() in records.c and
 * its row in kinds[] there, tests for every field and for its short forms, and
 * a seed in tests/fuzz/corpus/fuzz_records/.
 */
#ifndef EBPF_MONITOR_RECORDS_H
#define EBPF_MONITOR_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"

struct drop_reasons;
struct ksyms;

/*
 * What decoding needs besides the record, and what it could not decode. The
 * owner fills the inputs; records_decode() only adds to the counters (relaxed
 * atomics: another thread may read them while the capture thread decodes).
 */
struct records_decoder {
    int64_t boot_to_real_ns;            /* CLOCK_REALTIME - CLOCK_BOOTTIME; records carry boot
                                           time, events wall-clock time */
    const struct drop_reasons *reasons; /* drop reason names; NULL: codes only */
    const struct ksyms *ksyms;          /* drop locations; NULL: none */

    uint64_t malformed; /* records skipped: shorter than their kind, unknown kind, bad field */
    uint64_t no_memory; /* records lost for want of memory for their strings */
};

/*
 * Decodes the len bytes at data into out (zeroed first). Never reads past
 * data + len. Returns 0 with out filled: every field except id and node; an
 * exec event owns its filename and args (released by event_clear()).
 * Otherwise out is left zeroed, the matching counter is incremented, and the
 * return is -EINVAL (a malformed record, said why in err) or -ENOMEM.
 */
int records_decode(struct records_decoder *d, const void *data, size_t len, struct event *out,
                   char *err, size_t errlen);

#endif

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

#include <stdbool.h>
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

/*
 * The kernel reports a process's exit when its last thread leaves, which it
 * tells by the count of the process's live threads reaching zero. Threads
 * leaving at once (exit_group(), a fatal signal) each take themselves off the
 * count before they report, so more than one can find it zero: one process,
 * two exit records microseconds apart. Both name its pid and its start (the
 * timestamp less the lifetime, both read from the leader), which no other
 * process shares. records_exit_repeated() keeps the last exits by pid and
 * tells such a repeat. Owned by the capture thread; repeated is read by others
 * (a relaxed atomic).
 */
#define RECORDS_EXITS_KEPT 256 /* the repeat comes within a few records */

struct records_exits {
    struct {
        uint32_t pid;
        bool used;
        uint64_t start_ns;
    } slot[RECORDS_EXITS_KEPT];
    uint64_t repeated; /* exit events told apart as repeats, and dropped */
};

/* Whether e, a decoded exit event, repeats one of the last exits (counted); remembers it. */
bool records_exit_repeated(struct records_exits *x, const struct event *e);

/*
 * A DNS message a socket of this node sent (query) or received (answer), or
 * an error the kernel reported on a socket of a DNS server port, from a RECORD_DNS
 * (bpf/dns_events.h), for the DNS tracker (pkg/dns.h).
 */
struct records_dns {
    uint64_t timestamp_ns;   /* since the Unix epoch */
    uint64_t boot_ns;        /* CLOCK_BOOTTIME, the kernel's own timestamp */
    uint32_t pid, ppid, uid; /* the sending task of a query; 0 when unknown (every answer) */
    char command[EVENT_COMM_LEN];
    uint64_t cgroup_id;  /* the socket's cgroup */
    uint64_t cookie;     /* the socket's cookie: an answer comes back to its query's socket */
    uint64_t suppressed; /* DNS records rate-limited away just before this one */
    bool answer;         /* false: a query leaving the socket; true: an answer arriving */
    uint32_t error;   /* not 0: no message, the kernel reported this error (errno) on the socket */
    uint8_t family;   /* enum event_family */
    uint8_t protocol; /* IPPROTO_UDP / IPPROTO_TCP */
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport;
    /* The packet's payload as copied (points into the record): a DNS message, or over TCP
     * a segment that starts with the 2-byte length prefix (dns_parse_tcp()). */
    const uint8_t *payload;
    size_t payload_len;
    size_t wire_len;   /* the packet's payload bytes: payload_len, or more when truncated */
    bool truncated;    /* the packet carried more than payload_len bytes */
    uint32_t tcp_seq;  /* TCP: the segment's sequence number */
    uint32_t tcp_next; /* TCP: the socket's next one when the kernel saw it (dns_events.h) */
    uint8_t tcp_order; /* enum dns_tcp_order (DNS_TCP_NONE for UDP) */
};

/*
 * Decodes a RECORD_DNS of len bytes at data into out (zeroed first); out->msg
 * points into data. Never reads past data + len. Returns 0, or -EINVAL with
 * d->malformed incremented and the reason in err.
 */
int records_decode_dns(struct records_decoder *d, const void *data, size_t len,
                       struct records_dns *out, char *err, size_t errlen);

#endif

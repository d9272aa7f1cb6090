/*
 * What the two protobuf codecs share, private to pkg/event_pb*.c: the
 * reference codec (event_pb_ref.c, protobuf-c) and the fast one
 * (event_pb_fast.c, the wire format by hand) must turn the same bytes into
 * the same events, so the conversions both need live once, in event_pb.c.
 * Decoding entry points return 0, -EINVAL (why in err), -ENOMEM, or -E2BIG
 * when a batch holds more events than the caller's limit.
 */
#ifndef EBPF_MONITOR_EVENT_PB_INTERNAL_H
#define EBPF_MONITOR_EVENT_PB_INTERNAL_H

#include "event_pb.h"
#include "pb_wire.h"

#include <string.h>

/*
 * The Event fields of the details oneof (protobuf-c's case values are the
 * field numbers): 20..23, 25 and 35; pod_ref (24) and the attribution
 * fields (26..34) sit between them.
 */
#define EVENT_PB_POD_REF 24
#define EVENT_PB_DNS     EBPFMONITOR__EVENT__DETAILS_DNS /* 35 */

/* The last Event field number in the schema. */
#define EVENT_PB_MAX_FIELD 35
/*
 * The wire type of each Event field in the schema, by number (1..EVENT_PB_MAX_FIELD; 0 is no
 * field and holds PB_WT_VARINT, which no field 0 can have). test_event_pb checks it against
 * protobuf-c's descriptor of the message.
 */
extern const uint8_t event_pb_field_wt[EVENT_PB_MAX_FIELD + 1];

static inline bool event_pb_is_details_num(uint32_t num)
{
    return (num >= EBPFMONITOR__EVENT__DETAILS_CONNECTION &&
            num <= EBPFMONITOR__EVENT__DETAILS_EXIT) ||
           num == EBPFMONITOR__EVENT__DETAILS_CLOSE || num == EVENT_PB_DNS;
}

static inline bool event_pb_is_details(const struct pb_field *f)
{
    return event_pb_is_details_num(f->num) && f->wt == PB_WT_LEN;
}

/* The details field (protobuf-c's oneof case) an event of this type carries. */
Ebpfmonitor__Event__DetailsCase event_pb_details_field(unsigned type);

/* intern() behind a per-thread cache: a batch repeats the same few strings. */
const char *event_pb_intern(const char *s);
/* The same for len bytes of s (no NUL among them; s need not end there). */
const char *event_pb_intern_n(const char *s, size_t len);
/*
 * The same for len bytes that may hold a NUL: NULL when they do (or when the table is full). The
 * cache holds only strings without one, so a string found there is not searched for it.
 */
const char *event_pb_intern_checked(const char *s, size_t len);
/* event_pb_intern_n() for a name a monitored process chose (intern_process_n()): NULL when the
 * table's part for such names is full, and the name is then left out of its event. */
const char *event_pb_intern_process(const char *s, size_t len);

/* ExecDetails into e's filename/args (owned by e); -EINVAL or -ENOMEM with err. */
int event_pb_exec_to_event(const Ebpfmonitor__ExecDetails *x, struct event *e, char *err,
                           size_t errlen);

/*
 * DnsDetails into e (status, query and answers owned by e, the numbers);
 * -EINVAL (why in err) for a value out of range, a NUL byte, an empty answer
 * or more than EVENT_DNS_ANSWERS_MAX of them; -ENOMEM.
 */
int event_pb_dns_to_event(const Ebpfmonitor__DnsDetails *x, struct event *e, char *err,
                          size_t errlen);
/* DnsDetails.status for e->status, and back (EVENT_STATUS_NONE for 0 or an unknown value). */
Ebpfmonitor__DnsStatus event_pb_dns_status(unsigned status);

/* Each attribution field the event left empty comes from its pod_ref entry. */
void event_pb_pod_fill(struct event_k8s *k, const struct event_k8s *ref);

/*
 * PodRef.ips (4 or 16 bytes each, network order) as event_k8s.ips text,
 * "10.1.0.5,fd00::5", interned; NULL when n is 0. -EINVAL (which entry in
 * err) for an entry of another length, -ENOMEM.
 */
int event_pb_ips_to_text(const ProtobufCBinaryData *ips, size_t n, const char **text, char *err,
                         size_t errlen);

/*
 * The next address of event_k8s.ips text for PodRef.ips: *p walks the
 * comma-separated text; returns the address's length (4 or 16) in addr, 0
 * at the end. An entry that is not an address is left out.
 */
size_t event_pb_ips_next(const char **p, uint8_t addr[16]);

/* Counts an undecodable event in meta; the first one's reason goes to err. */
void event_pb_skip_event(struct event_batch_meta *meta, size_t index, const char *why, char *err,
                         size_t errlen);

/*
 * The event's list of strings, one element per call: an exec event's argv,
 * a dns event's answers (both NUL-separated). *p walks from the list's start
 * (event_pb_list()) to its end; false when there is none left. Inline: the
 * fast encoder calls it twice per element.
 */
static inline const char *event_pb_list(const struct event *e, uint32_t *len)
{
    if (e->type == EVENT_DNS) {
        *len = e->u.dns.answers_len;
        return e->u.dns.answers;
    }
    *len = e->type == EVENT_EXEC ? e->u.exec.args_len : 0;
    return e->type == EVENT_EXEC ? e->u.exec.args : NULL;
}

static inline bool event_pb_args_next(const struct event *e, const char **p, const char **arg,
                                      size_t *len)
{
    uint32_t list_len;
    const char *list = event_pb_list(e, &list_len);
    if (!list || !*p)
        return false;
    const char *end = list + list_len;
    if (*p >= end)
        return false;
    const char *nul = memchr(*p, '\0', (size_t)(end - *p));
    *arg = *p;
    *len = nul ? (size_t)(nul - *p) : (size_t)(end - *p);
    *p = nul ? nul + 1 : end;
    return true;
}

/* One Event message through protobuf-c, for the fast decoder's fallback. */
int event_pb_ref_decode_event(const uint8_t *data, size_t len, const char *batch_node,
                              const struct event_k8s *pods, size_t npods, struct event *e,
                              char *err, size_t errlen);

/* The halves of event_batch_decode_max(); _fast returns 1 when _ref must decide. */
int event_pb_fast_decode_batch(const uint8_t *data, size_t len, size_t max_events,
                               struct event_batch_meta *meta, struct event **events, size_t *n,
                               char *err, size_t errlen);
int event_pb_ref_decode_batch(const uint8_t *data, size_t len, size_t max_events,
                              struct event_batch_meta *meta, struct event **events, size_t *n,
                              char *err, size_t errlen);

#endif

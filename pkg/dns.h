/*
 * DNS without privileges: the pure part of the `dns` event (SPEC §9).
 *
 *   parser   bytes of one DNS message (a UDP payload, or a TCP segment with
 *            its 2-byte length prefix) -> struct dns_message; hostile input
 *            yields a named error, never a crash and never a wrong name.
 *   tracker  pending queries -> answers: a bounded table keyed by (socket
 *            cookie, transaction id, server address and port, protocol) that
 *            turns a query and its answer, or its absence, into one EVENT_DNS.
 *   names    a bounded cache (scope, address) -> the name a process asked
 *            for, with a TTL, so later connections carry `peer_dns`.
 *
 * Nothing here touches the kernel: the capture hands bytes and attribution
 * in, events come out, so every rule is testable without root.
 *
 * Threads: none of these objects locks. A tracker and a name cache each
 * belong to one thread (the agent's capture thread), by contract; the
 * parser and the name functions are reentrant.
 *
 * Time: every `ts_ns`/`now_ns` argument is CLOCK_MONOTONIC nanoseconds (the
 * clock of bpf_ktime_get_ns()); events keep the wall-clock timestamp_ns of
 * their template.
 */
#ifndef EBPF_MONITOR_DNS_H
#define EBPF_MONITOR_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"

/* ---- Names of query types and response codes ---------------------------- */

enum dns_type {
    DNS_TYPE_A = 1,
    DNS_TYPE_NS = 2,
    DNS_TYPE_CNAME = 5,
    DNS_TYPE_SOA = 6,
    DNS_TYPE_PTR = 12,
    DNS_TYPE_MX = 15,
    DNS_TYPE_TXT = 16,
    DNS_TYPE_AAAA = 28,
    DNS_TYPE_SRV = 33,
    DNS_TYPE_NAPTR = 35,
    DNS_TYPE_OPT = 41, /* EDNS pseudo-record (additional section) */
    DNS_TYPE_DS = 43,
    DNS_TYPE_RRSIG = 46,
    DNS_TYPE_DNSKEY = 48,
    DNS_TYPE_SVCB = 64,
    DNS_TYPE_HTTPS = 65,
    DNS_TYPE_AXFR = 252,
    DNS_TYPE_ANY = 255,
    DNS_TYPE_CAA = 257,
};

enum dns_rcode {
    DNS_RCODE_NOERROR = 0,
    DNS_RCODE_FORMERR = 1,
    DNS_RCODE_SERVFAIL = 2,
    DNS_RCODE_NXDOMAIN = 3,
    DNS_RCODE_NOTIMP = 4,
    DNS_RCODE_REFUSED = 5,
    DNS_RCODE_YXDOMAIN = 6,
    DNS_RCODE_YXRRSET = 7,
    DNS_RCODE_NXRRSET = 8,
    DNS_RCODE_NOTAUTH = 9,
    DNS_RCODE_NOTZONE = 10,
    DNS_RCODE_DSOTYPENI = 11,
    /* Extended (EDNS: the OPT record carries the upper 8 bits). */
    DNS_RCODE_BADVERS = 16,
    DNS_RCODE_BADKEY = 17,
    DNS_RCODE_BADTIME = 18,
    DNS_RCODE_BADMODE = 19,
    DNS_RCODE_BADNAME = 20,
    DNS_RCODE_BADALG = 21,
    DNS_RCODE_BADTRUNC = 22,
    DNS_RCODE_BADCOOKIE = 23,
};

/* Buffer size that holds any name dns_type_name()/dns_rcode_name() writes. */
#define DNS_CODE_NAME_LEN 8

/*
 * "A", "AAAA", "CNAME", "SRV", "PTR", "TXT", "MX", "NS", "SOA", "HTTPS",
 * "SVCB", "ANY", ... or the number in decimal ("65280") for a type without a
 * name. Returns buf (written, always NUL-terminated; len >= DNS_CODE_NAME_LEN
 * never truncates) or a static name.
 */
const char *dns_type_name(uint16_t type, char *buf, size_t len);
/* "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", ... or
 * the number in decimal; same contract as dns_type_name(). */
const char *dns_rcode_name(uint16_t rcode, char *buf, size_t len);
/*
 * The header's OPCODE: "QUERY", "IQUERY", "STATUS", "NOTIFY", "UPDATE", "DSO",
 * or the number in decimal; same contract as dns_type_name().
 */
const char *dns_opcode_name(uint8_t opcode, char *buf, size_t len);
/*
 * The inverse, for query filters: a name (any case: "aaaa", "AAAA") or a
 * decimal number ("28") of len bytes. 0 and *out set, or -EINVAL for
 * anything else (empty, unknown name, not a number, > 65535; rcodes > 4095,
 * the widest an EDNS answer carries).
 */
int dns_type_parse(const char *s, size_t len, uint16_t *out);
int dns_rcode_parse(const char *s, size_t len, uint16_t *out);
/* An opcode by name or number (0-15, the header's 4 bits). */
int dns_opcode_parse(const char *s, size_t len, uint16_t *out);

/* ---- Parser --------------------------------------------------------------- */

/*
 * Names in text form: labels joined by '.', lowercase, no trailing dot, the
 * root as ".". A label byte is escaped the way dig prints it: one that is
 * not printable ASCII, or a space, as `\DDD` in decimal; a '.' inside a
 * label, and each of `\ " ( ) ; @ $`, with a backslash (`\.`, `\@`). A
 * name is always printable ASCII (valid UTF-8, safe in JSON), two different
 * wire names never print the same, and a name prints as dig shows it.
 *
 * Limits (RFC 1035): a label is at most 63 bytes, a name at most 255 bytes
 * on the wire, hence at most 253 characters in text form when nothing needs
 * escaping; escapes take up to 4 characters per byte, so a name is at most
 * DNS_NAME_TEXT_MAX characters.
 */
#define DNS_LABEL_MAX     63
#define DNS_NAME_WIRE_MAX 255
#define DNS_NAME_MAX      253  /* text characters of a name with nothing escaped */
#define DNS_NAME_TEXT_MAX 1003 /* text characters of any name, escapes included */
_Static_assert(DNS_NAME_TEXT_MAX == EVENT_DNS_NAME_MAX, "the text bound differs from the event's");
#define DNS_ANSWERS_MAX     EVENT_DNS_ANSWERS_MAX
#define DNS_EXTRA_ADDRS_MAX 256 /* a 4096-byte capture holds fewer A records (16 bytes each) */
#define DNS_HEADER_LEN      12
#define DNS_POINTER_HOPS    64 /* compression pointers followed per name, at most */

/* Writes one label byte at out + o in text form (at most 4 characters, no NUL); returns the
 * new length. */
size_t dns_put_label_byte(char *out, size_t o, uint8_t c);

/*
 * Errors: each failure has its own negative code and a name
 * (dns_parse_error_name()), counted by reason in dns_tracker_stats.
 */
enum dns_parse_error {
    DNS_OK = 0,
    DNS_ERR_TRUNCATED = -1,       /* ends before the header or the question is complete */
    DNS_ERR_NO_QUESTION = -2,     /* qdcount is 0 */
    DNS_ERR_BAD_LABEL = -3,       /* a label type other than 0 (length) or 3 (pointer) */
    DNS_ERR_NAME_TOO_LONG = -4,   /* a name over 255 bytes on the wire */
    DNS_ERR_POINTER_LOOP = -5,    /* a pointer into the name being read, or too many hops */
    DNS_ERR_FORWARD_POINTER = -6, /* a pointer at or after itself (RFC 1035: prior occurrence) */
    DNS_ERR_POINTER_OUT_OF_BOUNDS = -7, /* a pointer past the end of the message */
    DNS_ERR_BAD_RDATA = -8, /* an A/AAAA of the wrong size, a CNAME/PTR not filling its rdata */
    DNS_ERR_BAD_TCP_LENGTH = -9, /* a TCP length prefix shorter than a DNS header */
};
#define DNS_PARSE_ERRORS 10 /* number of codes, DNS_OK included: index by -code */

/* "truncated", "no_question", "bad_label", "name_too_long", "pointer_loop",
 * "forward_pointer", "pointer_out_of_bounds", "bad_rdata", "bad_tcp_length";
 * "ok" for 0; NULL for anything else. Stable: used as metric labels. */
const char *dns_parse_error_name(int err);

/* One answer record the parser keeps: A, AAAA, CNAME, PTR, NS, MX or SRV (others are skipped). */
struct dns_answer {
    uint16_t type;    /* DNS_TYPE_A, _AAAA, _CNAME, _PTR, _NS, _MX or _SRV */
    uint16_t class;   /* 1 = IN */
    uint32_t ttl;     /* seconds, as sent */
    bool in_chain;    /* owner is the question's name or a CNAME target reached from it */
    uint8_t addr[16]; /* A: the first 4 bytes; AAAA: 16 bytes */
    char owner[DNS_NAME_TEXT_MAX + 1]; /* the record's name */
    char
        target[DNS_NAME_TEXT_MAX + 1]; /* the name a CNAME, PTR, NS, MX or SRV points at; else "" */
};

/*
 * One parsed message. Large (about 33 KB: names are fixed arrays so parsing
 * never allocates); keep one per thread, not one per packet on a small stack.
 * dns_parse() sets every field it documents, whatever it returns.
 */
struct dns_message {
    uint16_t id;
    bool qr;             /* true: a response */
    uint8_t opcode;      /* 0 = QUERY */
    bool aa, tc, rd, ra; /* header flags; tc: the server truncated the answer */
    uint16_t rcode;      /* RCODE: the header's 4 bits, with an OPT record's upper 8 (EDNS) */
    uint16_t qdcount, ancount, nscount, arcount; /* as the header says */

    /* The first question. */
    char qname[DNS_NAME_TEXT_MAX + 1];
    uint16_t qtype, qclass;

    /* A/AAAA/CNAME/PTR records of the answer section, in order, at most DNS_ANSWERS_MAX. */
    struct dns_answer answers[DNS_ANSWERS_MAX];
    unsigned answer_count;
    /*
     * true when the answer section was not read to its end: the bytes ended
     * first (a capture that copied only a prefix, or a TCP segment holding
     * only the start of a message), or the section held more records than
     * the DNS_ANSWERS_MAX kept. Everything above is still exact; records
     * past the cut are simply absent. (The authority and additional
     * sections are never read: a cut there does not set it.)
     */
    bool truncated;
    /*
     * Past the DNS_ANSWERS_MAX records kept, the answer section's further
     * in-chain A/AAAA records (a large answer: a headless Service's pods),
     * for the name cache only (dns_names_add_more()); at most
     * DNS_EXTRA_ADDRS_MAX, in order. The chain is the one the kept records
     * make: an address is in it when its owner is the question's name or a
     * kept in-chain CNAME's target.
     */
    struct dns_extra_addr {
        uint16_t type; /* DNS_TYPE_A or DNS_TYPE_AAAA */
        uint32_t ttl;
        uint8_t addr[16];
    } extra[DNS_EXTRA_ADDRS_MAX];
    unsigned extra_count;
    size_t wire_len; /* the message's length: len for UDP, the prefix's value for TCP */
};

/*
 * Parses one DNS message of len bytes (a UDP payload, starting with the
 * header). Returns DNS_OK or a negative enum dns_parse_error.
 *
 * A prefix of a message (the capture copies at most a fixed number of
 * bytes) parses as long as the header and the whole first question are in
 * it: the answer records that fit entirely are returned, and m->truncated is
 * set when one did not. A prefix that ends inside the header or the question is
 * DNS_ERR_TRUNCATED. Compression pointers must point strictly before the
 * part of the name being read (so every name ends within DNS_POINTER_HOPS
 * hops), which also means a prefix never holds a pointer whose target it
 * lacks. A malformed answer record fails the whole message (a name that
 * cannot be read is never guessed).
 */
int dns_parse(const uint8_t *p, size_t len, struct dns_message *m);

/*
 * The TCP form: p holds the start of a TCP segment's payload, a 2-byte
 * length prefix (network order) then the message. A segment holding the
 * whole message parses like dns_parse() (bytes after it, a pipelined next
 * message, are ignored; m->wire_len says where it ended: 2 + wire_len); one
 * holding only its start parses as a prefix (see dns_parse()). A prefix
 * below 12 is DNS_ERR_BAD_TCP_LENGTH; fewer than 2 + 12 bytes, or a question
 * cut short, DNS_ERR_TRUNCATED. The caller passes only segments that start a
 * message (the first of a connection, or following the end of the previous
 * one); a continuation segment fails as garbage would, counted, no event.
 * Some clients write the length prefix in a segment of its own: a 2-byte
 * segment (DNS_ERR_TRUNCATED here) is then followed by the bare message,
 * which the caller parses with dns_parse().
 */
int dns_parse_tcp(const uint8_t *p, size_t len, struct dns_message *m);

/* ---- Tracker: queries matched to answers --------------------------------- */

/* What identifies a DNS exchange on the wire, besides the message's ID. */
struct dns_key {
    uint64_t cookie;      /* bpf_get_socket_cookie() of the client's socket; 0 = unknown */
    uint8_t family;       /* enum event_family */
    uint8_t protocol;     /* IPPROTO_UDP or IPPROTO_TCP */
    uint16_t server_port; /* host order */
    uint8_t server[16];   /* IPv4 in the first 4 bytes; the rest must be 0 */
};

#define DNS_TIMEOUT_DEFAULT_NS  (5ull * 1000000000ull) /* DNS_TIMEOUT */
#define DNS_PENDING_MAX_DEFAULT 4096

struct dns_tracker_config {
    uint32_t max_pending; /* queries waiting for an answer; 0 = DNS_PENDING_MAX_DEFAULT */
    uint64_t timeout_ns;  /* DNS_TIMEOUT; 0 = DNS_TIMEOUT_DEFAULT_NS */
};

struct dns_tracker_stats {
    uint64_t pending;    /* queries waiting now (a gauge) */
    uint64_t queries;    /* distinct queries tracked (retransmissions not counted) */
    uint64_t answered;   /* queries matched to their answer: one event each */
    uint64_t timeouts;   /* queries expired without an answer: one event each */
    uint64_t unknown;    /* the same after an answer that may have been theirs was lost */
    uint64_t failed;     /* queries ended by an error on their socket: one event each */
    uint64_t evicted;    /* pending queries dropped for room, no event (see below) */
    uint64_t unmatched;  /* answers with no pending query of their key */
    uint64_t mismatched; /* answers whose question differs from their query's */
    uint64_t retries;    /* queries retransmitted with the key of a pending one */
    uint64_t oom;        /* queries or events lost to a failed allocation */
    uint64_t parse_errors[DNS_PARSE_ERRORS]; /* by -enum dns_parse_error; [0] unused */
    uint64_t collisions; /* queries with a pending one's key but another question: no event */
};

/*
 * The pending table: a fixed array of max_pending entries, allocated once,
 * plus a hash index, plus for each pending query a copy of its name
 * (malloc'd, <= DNS_NAME_TEXT_MAX + 1 bytes). Per entry: sizeof(struct
 * event) + about 64 bytes (dns_tracker_entry_size()) and the name.
 *
 * When the table is full, the oldest pending query is evicted and counted
 * in `evicted`; it is NOT emitted as a timeout: it did not time out, and
 * its answer may still come (then counted as unmatched). An eviction means
 * the table is too small for the query rate; the counter says so.
 */
struct dns_tracker;

/* NULL when out of memory. */
struct dns_tracker *dns_tracker_new(const struct dns_tracker_config *cfg);
/* Frees the tracker and every pending query (no events). NULL is allowed. */
void dns_tracker_free(struct dns_tracker *t);
/* Bytes of one pending entry, names aside. */
size_t dns_tracker_entry_size(void);

/*
 * A query was sent (m->qr false; a response is refused with -EINVAL, not
 * counted). attr is the event template: its id, timestamp_ns
 * (wall clock, when the query was sent), pid, ppid, uid, command,
 * cgroup_id, node, k8s, peer, saddr/sport (the client) are copied (strings
 * there are interned, copied as pointers); type, status, union, family,
 * protocol, daddr/dport are set by the tracker (from EVENT_DNS, the outcome
 * and the key). A query with the key (k, m->id) and the question (name and
 * type) of one already pending is a retransmission: it keeps the first
 * query's time and attribution, counted in `retries`. With that key but
 * another question it is a client reusing an ID before the first answer
 * came (rare: resolvers pick a random ID per query): counted in
 * `collisions` and not tracked (the first query keeps its key; the second's
 * answer will count as mismatched), returns 0. Returns 1 when tracked (new
 * or retry), -ENOMEM when its name could not be copied (counted in oom).
 */
int dns_tracker_query(struct dns_tracker *t, const struct dns_key *k, const struct dns_message *m,
                      const struct event *attr, uint64_t ts_ns);

/*
 * An answer arrived (m->qr true) for key k. When a query with (k, m->id) is
 * pending and its question is the same (name and type), the query leaves the
 * table and *out is the complete EVENT_DNS: query, query_type, rcode,
 * answers (the in-chain A/AAAA addresses, CNAME targets and PTR names, in the answer's
 * order), latency_ns = ts_ns - the query's ts_ns, status ANSWERED,
 * transaction_id. *out must hold no owned strings; the caller owns the
 * result (event_clear()). *ttl_s, when not NULL, is the smallest TTL of the
 * in-chain address records (0 when there are none), for dns_names_add().
 * Returns 1 with *out filled; 0 when nothing matched (counted as unmatched,
 * or as mismatched when the key matched but the question did not: the query
 * stays pending, and expires as unknown, not as a timeout); -ENOMEM when the
 * event could not be built (counted in oom, the query is dropped).
 */
int dns_tracker_answer(struct dns_tracker *t, const struct dns_key *k, const struct dns_message *m,
                       uint64_t ts_ns, struct event *out, uint32_t *ttl_s);

/*
 * Called with each expired query's event (status TIMEOUT or UNKNOWN,
 * latency_ns 0, no answers), or failed one (dns_tracker_socket_error()); the callback owns it
 * (event_clear() or event_move() it).
 */
typedef void (*dns_timeout_fn)(struct event *e, void *arg);

/*
 * Says that answers may have been lost (the capture dropped or suppressed
 * answers) at or before now_ns, and after the previous call: a query sent
 * before now_ns that expires unanswered may have had its answer among them,
 * so its event says UNKNOWN, not TIMEOUT. An answer comes after its query,
 * so a loss seen before a query was sent says nothing of it.
 */
void dns_tracker_answers_lost(struct dns_tracker *t, uint64_t now_ns);

/*
 * An answer for key k and transaction id came whose question could not be read: it may have
 * been the pending query's own (or a forgery), so that query, should nothing else answer it,
 * expires as UNKNOWN. Only that query: no other socket's.
 */
void dns_tracker_answer_unreadable(struct dns_tracker *t, const struct dns_key *k, uint16_t id);

/*
 * Answers to the socket cookie were lost at now_ns (a TCP stream given up, a loss in the
 * kernel): its queries sent before, should nothing answer them, expire as UNKNOWN. The last
 * 64 sockets with such losses are kept apart, each with its latest (a socket kept already
 * takes no new place); past that, a forgotten one that still concerns a pending query counts
 * as a loss of any socket's answers (dns_tracker_answers_lost()). Constant time, whatever is
 * pending.
 */
void dns_tracker_socket_unsure(struct dns_tracker *t, uint64_t cookie, uint64_t now_ns);

/*
 * The kernel reported error (an errno: ECONNREFUSED for an ICMP port unreachable,
 * EHOSTUNREACH, ECONNRESET, ...) on the socket cookie at now_ns: every query of that socket
 * sent at or before now_ns has failed, and leaves through fn as an event (status FAILED,
 * error named as a connection's, event_conn_error_name(); latency_ns = now_ns - the query's
 * time; no rcode, no answers), counted in `failed`, in the order the queries arrived. Costs a
 * walk of the pending queries: errors are rare (a socket has one per ICMP error, which senders
 * rate-limit). Returns how many.
 */
size_t dns_tracker_socket_error(struct dns_tracker *t, uint64_t cookie, unsigned error,
                                uint64_t now_ns, dns_timeout_fn fn, void *arg);

/*
 * Every query pending for the timeout or longer at now_ns becomes an event
 * through fn (TIMEOUT, or UNKNOWN, above), in the order the queries arrived;
 * the scan stops at the first one still in time. Returns how many. Call it
 * every few hundred ms.
 */
size_t dns_tracker_expire(struct dns_tracker *t, uint64_t now_ns, dns_timeout_fn fn, void *arg);

/* Counts a message the capture could not parse, by reason (err < 0). */
void dns_tracker_parse_error(struct dns_tracker *t, int err);

void dns_tracker_get_stats(const struct dns_tracker *t, struct dns_tracker_stats *out);

/* ---- Names for peer_dns -------------------------------------------------- */

/*
 * The name cache: (scope, family, address) -> the name a process asked for,
 * until the answer's TTL runs out. The name is the QUERY's name, what the
 * process asked for, even when the address came through a CNAME chain
 * (`peer_dns` shows "api.example.com", not "lb-7.cdn.example.net").
 *
 * Scope: an opaque 64-bit value from the caller; lookups see only their
 * scope's entries. dns_names_scope() gives the one the agent uses: the pod
 * when the asking process runs in a known Kubernetes pod (its containers
 * share it: a sidecar resolves, the app connects), else the process's
 * cgroup v2 id (a container, or a systemd unit on a host). Not the pid: a
 * resolver helper, a shell that runs `curl`, or a pool of workers resolve
 * in one process and connect in another of the same unit. Not node-wide:
 * two workloads may resolve different names to one shared address (CDNs,
 * virtual hosting), and one workload's names are no business of another's.
 * So in the cgroup v2 root, where a host whose processes have no cgroups of
 * their own keeps every one of them, it is the process: its pid, parent and
 * user (a pid reused within the TTL by a process of another parent or user
 * finds nothing).
 * Compute the scope of the dns event and of the later connection at the same
 * stage (after pod attribution), or a pod's entries are filed under its
 * cgroup and looked up under its UID.
 *
 * Bounds: at most max_entries entries; a full cache evicts its oldest entry
 * (counted). TTLs are clamped to [min_ttl_s, max_ttl_s] (default 5 s and
 * 600 s): TTL 0 answers still name the connection that follows them at
 * once, and a day-long TTL does not pin an address to a name its owner has
 * since moved. Per entry: dns_names_entry_size() bytes plus the name.
 */
#define DNS_NAMES_MAX_DEFAULT     16384
#define DNS_NAMES_MIN_TTL_DEFAULT 5
#define DNS_NAMES_MAX_TTL_DEFAULT 600

struct dns_names_config {
    uint32_t max_entries; /* 0 = DNS_NAMES_MAX_DEFAULT */
    uint32_t min_ttl_s;   /* 0 = DNS_NAMES_MIN_TTL_DEFAULT */
    uint32_t max_ttl_s;   /* 0 = DNS_NAMES_MAX_TTL_DEFAULT; raised to min_ttl_s if lower */
};

struct dns_names_stats {
    uint64_t entries; /* a gauge */
    uint64_t added;   /* new (scope, address) entries */
    uint64_t updated; /* entries refreshed by a later answer */
    uint64_t evicted; /* live entries dropped for room */
    uint64_t expired; /* entries dropped after their TTL */
    uint64_t hits, misses;
    uint64_t oom;
};

struct dns_names;

struct dns_names *dns_names_new(const struct dns_names_config *cfg); /* NULL: out of memory */
void dns_names_free(struct dns_names *c);                            /* NULL is allowed */
size_t dns_names_entry_size(void);

/* The cgroup v2 root's id (the kernel's: its kernfs node is the first). */
#define DNS_CGROUP_V2_ROOT_ID 1

/* The scope of the process an event describes (see above); 0 when unknown. */
uint64_t dns_names_scope(const struct event *e);

/*
 * Adds the A/AAAA answers of an answered EVENT_DNS (e->u.dns.answers entries
 * that parse as addresses; names are skipped) under scope, named
 * e->u.dns.query, for ttl_s seconds (clamped) from now_ns. Does nothing for
 * other events, timeouts or rcodes other than NOERROR. Returns the number of
 * addresses added or refreshed.
 */
size_t dns_names_add(struct dns_names *c, uint64_t scope, const struct event *e, uint32_t ttl_s,
                     uint64_t now_ns);

/*
 * Adds, like dns_names_add(), the addresses of m past the event's bounded
 * answers (m->extra: m is the answer e was made from), each for its own TTL
 * (clamped). Returns the number added or refreshed.
 */
size_t dns_names_add_more(struct dns_names *c, uint64_t scope, const struct event *e,
                          const struct dns_message *m, uint64_t now_ns);

/*
 * The name for addr (family EVENT_FAMILY_IPV4: the first 4 bytes) in scope,
 * or NULL when there is none or it expired (an expired entry found is
 * dropped). The pointer is valid until the next call on the cache; copy or
 * intern it.
 */
const char *dns_names_lookup(struct dns_names *c, uint64_t scope, unsigned family,
                             const uint8_t addr[16], uint64_t now_ns);

void dns_names_get_stats(const struct dns_names *c, struct dns_names_stats *out);

#endif

/*
 * The event model: the one C representation of an event that every part of
 * the pipeline carries (capture -> store -> HTTP/JSON -> bus/protobuf).
 *
 * Strings marked "interned" point into the process-wide intern table
 * (intern.h) and are never freed by the event; strings marked "owned" belong
 * to the event and are released by event_clear().
 */
#ifndef EBPF_MONITOR_EVENT_H
#define EBPF_MONITOR_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVENT_COMM_LEN        16
#define EVENT_FILENAME_MAX    256
#define EVENT_ARGS_MAX        1024 /* bytes of argv kept, NUL-separated */
#define EVENT_ARGC_MAX        32
#define EVENT_DNS_ANSWERS_MAX 16   /* dns: answers kept per event */
#define EVENT_NODE_MAX        255  /* bytes of a node name (NODE_NAME) */
#define EVENT_NAME_MAX        1024 /* bytes of any other interned name (pod, workload, ...) */
#define EVENT_DNS_NAME_MAX    1003 /* characters of a DNS name in text form (DNS_NAME_TEXT_MAX) */
/* How far ahead of the receiver's clock an event's timestamp may be (clock skew between
 * nodes); a later one is refused: it would head every newest-first answer until then. */
#define EVENT_MAX_AHEAD_NS (3600ull * 1000000000ull)

enum event_type {
    EVENT_TYPE_NONE = 0,
    EVENT_CONNECTION,
    EVENT_ACCEPT,
    EVENT_PACKET_DROP,
    EVENT_EXEC,
    EVENT_EXIT,
    EVENT_CLOSE,
    EVENT_DNS,
    EVENT_TYPE_COUNT,
};

#define EVENT_TYPE_BIT(t) (1u << (t))
#define EVENT_TYPES_ALL                                                                            \
    (EVENT_TYPE_BIT(EVENT_CONNECTION) | EVENT_TYPE_BIT(EVENT_ACCEPT) |                             \
     EVENT_TYPE_BIT(EVENT_PACKET_DROP) | EVENT_TYPE_BIT(EVENT_EXEC) | EVENT_TYPE_BIT(EVENT_EXIT) | \
     EVENT_TYPE_BIT(EVENT_CLOSE) | EVENT_TYPE_BIT(EVENT_DNS))

enum event_family {
    EVENT_FAMILY_NONE = 0,
    EVENT_FAMILY_IPV4,
    EVENT_FAMILY_IPV6,
};

enum event_status {
    EVENT_STATUS_NONE = 0,
    EVENT_STATUS_ESTABLISHED,
    EVENT_STATUS_FAILED, /* connection; dns: the kernel reported an error on its socket */
    EVENT_STATUS_ATTEMPTED,
    EVENT_STATUS_ANSWERED, /* dns: the server answered (whatever its rcode) */
    EVENT_STATUS_TIMEOUT,  /* dns: no answer within DNS_TIMEOUT */
    EVENT_STATUS_UNKNOWN,  /* dns: none seen, but the capture lost DNS records meanwhile */
};

/* close: which end of the connection this side is. */
enum event_role {
    EVENT_ROLE_NONE = 0,
    EVENT_ROLE_CLIENT,
    EVENT_ROLE_SERVER,
};

/* close: how a connection ended, when it ended with a RST. */
enum event_reset {
    EVENT_RESET_NONE = 0,
    EVENT_RESET_SENT,
    EVENT_RESET_RECEIVED,
};

/* Kubernetes attribution; every field interned, NULL when unknown. */
struct event_k8s {
    const char *node_name;
    const char *pod_name;
    const char *namespace;
    const char *container_id;
    const char *pod_uid;
    const char *workload;      /* the owning workload (Deployment, StatefulSet, ...) */
    const char *workload_kind; /* "Deployment", ..., "Pod" for a bare pod */
    /* The pod's, carried in the bus's pod table (not in an event's JSON): */
    const char *app; /* app.kubernetes.io/name or app label */
    const char *ips; /* status.podIPs as text, comma-separated */
    bool host_network;
};

/*
 * The other end of a connection, accept or close, when known for sure;
 * every field interned, NULL when unknown (never guessed).
 */
struct event_peer {
    const char *pod;
    const char *namespace;
    const char *workload;
    const char *workload_kind;
    const char *node;
    const char *service; /* the Service the peer was reached through */
    const char *dns;     /* the name this process resolved to the peer's address */
};

struct event {
    uint64_t id;           /* unique across the cluster, printed as 16 hex chars */
    uint64_t timestamp_ns; /* since the Unix epoch */
    uint8_t type;          /* enum event_type */
    uint8_t family;        /* enum event_family; NONE when the event has no addresses */
    uint8_t protocol;      /* IP protocol number (IPPROTO_TCP...), 0 = unknown */
    uint8_t status;        /* enum event_status (connection, dns) */
    uint32_t pid, ppid, uid;
    char command[EVENT_COMM_LEN]; /* NUL-terminated task comm */
    uint64_t cgroup_id;           /* cgroup v2 id of the task, 0 = unknown */
    const char *node;             /* interned; the reporting node */
    struct event_k8s k8s;
    struct event_peer peer;

    /* Addresses: IPv4 in the first 4 bytes of the array, network order. */
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport; /* host order */

    union {
        struct {
            uint64_t latency_ns; /* TCP: connect to outcome; 0 for UDP */
            const char *error;   /* interned; failed: "refused", "timeout", ... or an errno name */
        } conn;
        struct {
            uint8_t role;  /* enum event_role */
            uint8_t reset; /* enum event_reset */
            uint32_t retransmits;
            uint32_t srtt_us;     /* smoothed RTT at close */
            uint64_t duration_ns; /* established -> closed */
            uint64_t bytes_sent;  /* this side's view */
            uint64_t bytes_received;
        } close;
        struct {
            uint32_t reason_code;
            const char *reason;   /* interned; the kernel's enum skb_drop_reason name */
            const char *location; /* interned; "symbol+0xoff" */
            uint64_t suppressed;  /* drops rate-limited away just before this one */
        } drop;
        struct {
            char *filename; /* owned */
            char *args;     /* owned; args_len bytes of NUL-terminated strings */
            uint32_t args_len;
            uint32_t euid; /* the new image's effective uid, when has_euid */
            uint8_t args_truncated;
            uint8_t filename_truncated; /* the path was longer than EVENT_FILENAME_MAX - 1 */
            uint8_t has_euid; /* euid is known (agents before it sent none); euid 0 is root */
        } exec;
        struct {
            int32_t exit_code;
            int32_t signal;
            uint64_t duration_ns;
            uint8_t core_dumped; /* the kernel wrote a core dump as the signal ended it */
        } exit;
        /*
         * One DNS query and its outcome (pkg/dns.h builds it). The client is
         * saddr/sport, the server daddr/dport; protocol is TCP or UDP;
         * status is ANSWERED, TIMEOUT, UNKNOWN or FAILED (the kernel reported
         * an error on the query's socket: error names it, latency_ns is the
         * time to it). Unanswered, rcode and answers are 0/empty and carry no
         * meaning (codecs omit them), and so is latency_ns but for FAILED.
         */
        struct {
            char *query;   /* owned; lowercase, no trailing dot, "." for the root */
            char *answers; /* owned, may be NULL; answers_len bytes of NUL-terminated
                              strings, at most EVENT_DNS_ANSWERS_MAX, each an address in
                              text form ("10.0.0.1", "::1") or a name (a CNAME target) */
            uint32_t answers_len;
            uint16_t query_type;       /* DNS_TYPE_A, ...; dns_type_name() */
            uint16_t rcode;            /* 0 NOERROR, 3 NXDOMAIN, ...; dns_rcode_name() */
            uint16_t transaction_id;   /* the query's ID field */
            uint64_t latency_ns;       /* query sent -> answer received */
            uint8_t tc;                /* the answer had the TC bit: cut to fit (UDP) */
            uint8_t answers_truncated; /* the answer held records past those listed */
            const char *error;         /* interned; FAILED: as a connection's ("refused", ...) */
            uint8_t opcode; /* the query's OPCODE: 0 QUERY, 4 NOTIFY, ...; dns_opcode_name() */
        } dns;
    } u;
};

/* "connection", "accept", ...; NULL for an invalid type. */
const char *event_type_name(unsigned type);
/* Parses a type name of len bytes; returns the enum value or EVENT_TYPE_NONE. */
enum event_type event_type_parse(const char *s, size_t len);

const char *event_family_name(unsigned family);
/* An address in text form ("10.0.0.1", "fd00::1") into addr (16 bytes, IPv4 in the
 * first 4); its family, or EVENT_FAMILY_NONE (addr zeroed) when text is none. */
unsigned event_addr_parse(const char *text, uint8_t addr[16]);
const char *event_status_name(unsigned status);
const char *event_role_name(unsigned role);   /* "client", "server"; NULL for none */
const char *event_reset_name(unsigned reset); /* "sent", "received"; NULL for none */
/*
 * The `error` of a failed connection from the errno the kernel recorded:
 * "refused", "timeout", "unreachable", "reset", or the errno's name
 * ("EACCES"); NULL for 0.
 */
const char *event_conn_error_name(unsigned err);
/* "tcp", "udp", "icmp", ...; NULL for protocol 0 or one without a name. */
const char *event_protocol_name(unsigned protocol);

/*
 * A node name as NODE_NAME takes it: 1-max bytes of valid UTF-8 without
 * control characters or leading or trailing spaces. It travels as a NATS
 * subject token (with '.', '*', '>' and spaces mapped to '_'), in the
 * Ebpf-Node header (nats.c trims the spaces around a header value it
 * receives) and in JSON, and arrives the same through each of them.
 */
bool event_node_name_valid(const char *s, size_t max);

/*
 * Whether e was made by a process: false for a packet drop freed in softirq,
 * a server connection closed before any process accepted it, a DNS query
 * sent from softirq (pid 0, no command). Such an event shows no pid, and a
 * pid filter (pid=0 included) never matches it.
 */
static inline bool event_has_process(const struct event *e)
{
    return !((e->type == EVENT_PACKET_DROP || e->type == EVENT_CLOSE || e->type == EVENT_DNS) &&
             e->pid == 0 && !e->command[0]);
}

/*
 * Whether e stays within what an agent produces, for an event decoded from
 * the bus (hostile input: the decoders check the wire format, not the sizes
 * an agent keeps to): node names as event_node_name_valid(), every other
 * interned name at most EVENT_NAME_MAX bytes, an exec's filename at most
 * EVENT_FILENAME_MAX bytes and argv at most EVENT_ARGS_MAX bytes (and the NUL an agent adds to a
 * string the kernel cut there) in EVENT_ARGC_MAX strings, a dns event's names at most
 * EVENT_DNS_NAME_MAX characters. prev (or NULL): an event that passed, whose names e's equal
 * pointers to are not looked at again (a batch's events share a few pods).
 * 0, or -EINVAL with the field named in err.
 */
int event_check_bounds(const struct event *e, const struct event *prev, char *err, size_t errlen);

/* Frees owned strings and zeroes the event. */
void event_clear(struct event *e);
/*
 * Moves an exec event's filename, or a dns event's query, into the end of
 * its args or answers allocation, so the two strings cost one allocation
 * (what a long-held event saves: the history keeps many). The event stays
 * the same to every reader and to event_clear(); nothing changes when there
 * is only one string or memory is short.
 */
void event_pack_strings(struct event *e);
/* Deep copy; dst must not hold owned strings. Returns 0 or -ENOMEM. */
int event_copy(struct event *dst, const struct event *src);
/*
 * True when a and b are the same event: every field, strings compared by
 * value, and the union member of their type (the others are not looked at).
 */
bool event_equal(const struct event *a, const struct event *b);
/* Moves src into dst (dst must not hold owned strings); src is zeroed. */
void event_move(struct event *dst, struct event *src);

/*
 * Event ids: a 64-bit bijection of (instance seed + counter), so ids never
 * repeat within one agent and collide across agents only by chance (2^-64).
 */
struct event_id_gen {
    uint64_t seed;
    uint64_t counter;
};
void event_id_gen_init(struct event_id_gen *g); /* seeds from getrandom() */
uint64_t event_id_next(struct event_id_gen *g);

/* Writes a's dotted quad at p ("10.0.0.1", at most 15 bytes, no NUL); returns its end. */
char *event_put_ipv4(char *p, const uint8_t a[4]);
/* Writes the address as text ("10.0.0.1", "::1") into buf (>= 46 bytes). */
const char *event_addr_str(unsigned family, const uint8_t addr[16], char *buf, size_t len);

#endif

/*
 * The aggregator's cluster-wide map of pod addresses: which pod an IP is,
 * learned from the pod tables of every node's batches, so an event whose
 * peer runs on another node can be named (peer_pod, peer_namespace,
 * peer_workload, peer_workload_kind, peer_node).
 *
 * Pod IPs are reused, so the map holds claims (IP, pod) with a lifetime:
 * - a claim is alive while its node keeps reporting the pod (last seen
 *   within ttl) and no newer pod on the same node has claimed the address
 *   (a node never holds two live pods with one IP, so the newer one means
 *   the older is gone);
 * - after that it still names its pod for grace (events in flight from just
 *   before the pod went away), then it is stale: kept a while to tell
 *   "stale" from "unknown" in the counters, never used to name a peer;
 * - two pods whose claims on one IP are both valid (alive or in grace) make
 *   the IP ambiguous, and a hostNetwork pod's IP is the node's: neither is
 *   ever named.
 * Bounded at max_entries claims; past it the least recently seen claim is
 * evicted and counted.
 *
 * Announcements: the pods a replica learned from the batches it ingested,
 * as one JSON message for the other replicas (peers_announce_write and
 * peers_announce_parse, which takes hostile input).
 *
 * Threads: every function may be called from any thread (one mutex).
 * Strings handed in must be interned (intern.h); the map keeps pointers.
 */
#ifndef EBPF_MONITOR_PEERS_H
#define EBPF_MONITOR_PEERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"

#define PEERS_POD_MAX_IPS 4 /* a pod has at most one IPv4 and one IPv6 address; room to spare */

/* One pod as a node reported it. Strings interned; node, namespace and pod required. */
struct peers_pod {
    const char *node;
    const char *namespace;
    const char *pod;
    const char *uid;
    const char *workload;
    const char *workload_kind;
    bool host_network;
    uint8_t n_ips;
    uint8_t family[PEERS_POD_MAX_IPS]; /* enum event_family */
    uint8_t ip[PEERS_POD_MAX_IPS][16];
    uint64_t seen_ns; /* when the node reported it (realtime ns) */
    /* Not 0: the pod was deleted at this time (realtime ns), as its node's agent saw it
     * through the API server. Its claims end then: named for grace, then stale. */
    uint64_t gone_ns;
};

enum peers_result {
    PEERS_MISS = 0,     /* no claim on this address */
    PEERS_HIT,          /* exactly one valid pod: named */
    PEERS_AMBIGUOUS,    /* two or more valid pods claim it */
    PEERS_STALE,        /* only claims past their lifetime and grace */
    PEERS_HOST_NETWORK, /* a hostNetwork pod's (a node's) address */
    PEERS_RESULT_COUNT,
};

/* "miss", "hit", "ambiguous", "stale", "host_network". */
const char *peers_result_name(enum peers_result r);

struct peers_stats {
    uint64_t entries; /* claims held */
    uint64_t capacity;
    uint64_t lookups;
    uint64_t results[PEERS_RESULT_COUNT];
    uint64_t evicted;       /* claims pushed out by the bound */
    uint64_t gone;          /* claims ended by their pod's deletion (peers_observe with gone_ns) */
    uint64_t expired;       /* stale claims removed after their time */
    uint64_t lists;         /* nodes' pod lists applied (peers_node_present) */
    uint64_t lists_skipped; /* pod lists of a node that sent one less than a second before */
};

struct peers;

/* max_entries >= 1. NULL on allocation failure. */
struct peers *peers_new(uint32_t max_entries, uint64_t ttl_ns, uint64_t grace_ns);
void peers_free(struct peers *p);

/*
 * Learns (or refreshes) pod's claims at pod->seen_ns. Returns true when the
 * pod should be announced to the other replicas: it is new or changed, or
 * its last announcement is older than ttl/4, so replicas keep one another's
 * claims alive without repeating every batch. The claim is then taken as
 * announced at pod->seen_ns: the caller announces it, and a replica that
 * applies an announcement with this call learns that it was just announced.
 */
bool peers_observe(struct peers *p, const struct peers_pod *pod);
/*
 * With pod->gone_ns, peers_observe() ends the pod's claims at gone_ns instead
 * (a claim it does not hold yet is made, already ended, so a batch from
 * before the deletion that arrives after it cannot revive the pod), and
 * returns true when that changed a claim: the caller announces the deletion.
 */

/*
 * Whether a hostNetwork pod validly claims the address at now: it is a
 * node's, shared by everything on that node's host network. Not counted.
 */
bool peers_host_network(struct peers *p, unsigned family, const uint8_t addr[16], uint64_t now);

/* Who holds the address at now; fills *out (peer fields) on PEERS_HIT. Counted. */
enum peers_result peers_lookup(struct peers *p, unsigned family, const uint8_t addr[16],
                               uint64_t now, struct event_peer *out);

/*
 * The peer's side of a connection, accept or close: the destination of a
 * client side (connection, close as client), the source of a server side
 * (accept, close as server). Sets *addr and *port and returns true; false
 * for any other event.
 */
bool peers_event_peer(const struct event *e, const uint8_t **addr, uint16_t *port);

/*
 * One lookup of a peer address: fills out's fields (a pod, or a service) and
 * returns true when the address names one for sure. port and protocol are
 * 0 for an address a DNS answer gave (a name says nothing of ports).
 */
typedef bool (*peers_lookup_fn)(void *ctx, unsigned family, const uint8_t addr[16], uint16_t port,
                                uint8_t protocol, struct event_peer *out);

/*
 * Who e's peer is, by fn: the address of peers_event_peer() for a
 * connection, accept or close; for an answered dns event, the addresses its
 * answers hold (CNAME targets are names, not looked up), where the peer is
 * what every one of them names: a field is kept only when all agree (the
 * pods of one workload name the workload, not a pod), and nothing is named
 * when one names nobody. Fills *out and returns true when e has peer
 * addresses and all were named; false otherwise (*out then holds nothing).
 */
bool peers_event_resolve(const struct event *e, peers_lookup_fn fn, void *ctx,
                         struct event_peer *out);

/* Fills dst's empty pod, namespace, workload, workload_kind and node from src. */
void peers_fill(struct event_peer *dst, const struct event_peer *src);

/*
 * Names the peers of events[0..n) (connection, accept, close) at now: the
 * destination of a client side, the source of a server side. Only events
 * whose peer_pod is empty are looked up, and only empty fields are filled:
 * what the agent filled is never overwritten. count: false to leave the
 * counters alone (a second look at events already counted).
 */
void peers_enrich(struct peers *p, struct event *events, size_t n, uint64_t now, bool count);

/*
 * The pod claims carried by events[0..n) (their pod-table attribution:
 * k8s.pod_name with k8s.ips or host_network), one per distinct pod, at
 * seen_ns. Writes at most max (and at most PEERS_ANNOUNCE_MAX_PODS) into
 * out; returns how many.
 */
size_t peers_pods_from_events(const struct event *events, size_t n, uint64_t seen_ns,
                              struct peers_pod *out, size_t max);

void peers_get_stats(struct peers *p, struct peers_stats *out);

/*
 * Whether a pod of (namespace, workload) (both interned; a bare pod's workload
 * is its name) names its address now: reported, not deleted or taken over
 * (past PEER_GRACE), not quiet for PEER_TTL. What the flow series of a
 * workload live on (flows_series_set_alive()). The set is rebuilt at most
 * once a second, so a sweep over many series costs one pass over the pods.
 */
bool peers_workload_alive(struct peers *p, const char *namespace, const char *workload,
                          uint64_t now);

/* Parses "10.0.0.1,fd00::1" (struct event_k8s.ips) into pod's addresses; false when none parses. */
bool peers_pod_ips_parse(struct peers_pod *pod, const char *text);

/*
 * The claims held, for a replica that has just started (or reconnected) and
 * asked for them: from *cursor on, up to max of them as pods of one address
 * each, seen when last reported; a claim that has ended (deleted, taken over)
 * as its deletion at its end (gone_ns), so a late batch cannot revive it
 * there either. Claims long expired are skipped. Returns how many were
 * written; *cursor is where to go on (0 to start; done once it returns 0).
 * Strings are interned: they stay valid.
 */
size_t peers_dump(struct peers *p, uint64_t now, uint32_t *cursor, struct peers_pod *out,
                  size_t max);

/* Most pods one announcement carries (a batch holds at most 128 attributions). */
#define PEERS_ANNOUNCE_MAX_PODS 256

/*
 * {"replica":"<id>","pods":[{"node":..,"namespace":..,"pod":..,"uid":..,
 * "workload":..,"workload_kind":..,"host_network":bool,"ips":["10.0.0.1"],
 * "seen_ns":n},...]}; a deleted pod also has "gone_ns":n.
 */
void peers_announce_write(struct buf *out, const char *replica, const struct peers_pod *pods,
                          size_t n);
/*
 * Parses an announcement: at most max pods into out (strings interned),
 * the sender's id into replica (NUL-terminated, truncated to replica_len).
 * Returns the pod count, or -EINVAL with a message in err for anything
 * malformed (not JSON, wrong types, a missing name, a bad address, too many
 * pods or addresses, invalid UTF-8); nothing is half-applied.
 */
int peers_announce_parse(const char *data, size_t len, char *replica, size_t replica_len,
                         struct peers_pod *out, size_t max, char *err, size_t errlen);

/*
 * The deletions an agent sends with a batch (the BUS_HDR_PODS_GONE header):
 * {"pods":[...]} with the announcement's pod objects, each with a gone_ns.
 * At most PEERS_GONE_MAX_PODS. The parser takes hostile input like
 * peers_announce_parse(), and refuses a pod without gone_ns.
 */
#define PEERS_GONE_MAX_PODS 32
void peers_gone_write(struct buf *out, const struct peers_pod *pods, size_t n);
int peers_gone_parse(const char *data, size_t len, struct peers_pod *out, size_t max, char *err,
                     size_t errlen);

/*
 * The pods on its node an agent's pod list held (the BUS_HDR_PODS_PRESENT
 * header, sent once per agent instance, after its first LIST of the API
 * server): {"at_ns":n,"uids":["...",...]}, at_ns when the list was taken
 * (realtime ns, the agent's clock), the UIDs of every pod of the node it
 * knew then. A pod deleted while no agent watched the node (the agent
 * restarting) is not in it: peers_node_present() ends its claims. At most
 * PEERS_PRESENT_MAX_PODS UIDs (an agent that knows more sends none); the
 * parser takes hostile input and hands back interned UIDs.
 */
#define PEERS_PRESENT_MAX_PODS 1024
void peers_present_write(struct buf *out, uint64_t at_ns, const char *const *uids, size_t n);
int peers_present_parse(const char *data, size_t len, uint64_t *at_ns, const char **uids,
                        size_t max, char *err, size_t errlen);

/*
 * Ends, at at_ns, every claim of node (interned) whose pod's UID is not in
 * uids[0..n) (interned) and that was first seen before at_ns (a pod that came
 * after the list is not in it, and is left alone): the pod was gone when the
 * node's agent listed its pods. Writes the ended claims into out (at most
 * max, the rest still ended) as deletions of one address each, for the
 * caller to announce, and returns how many it wrote. Counted as gone.
 * Each list scans every claim held: a node's next list within a second of
 * its last (now, realtime ns) is skipped, counted (an agent sends one per
 * process; a flood of them would hold the map's lock).
 */
size_t peers_node_present(struct peers *p, const char *node, const char *const *uids, size_t n,
                          uint64_t at_ns, uint64_t now, struct peers_pod *out, size_t max);

/*
 * The names replicas announce to each other (here and pkg/joins.c): written
 * as `,"key":"v"` (nothing when v is NULL), read back interned. A name
 * member read is absent or null (NULL; false when required), or a string
 * of 1 to PEERS_NAME_MAX bytes (false otherwise).
 */
#define PEERS_NAME_MAX 512 /* longer than any Kubernetes name, node or kind */
struct json_t;
void peers_name_write(struct buf *b, const char *key, const char *v);
bool peers_name_read(struct json_t *o, const char *key, bool required, const char **out);

#endif

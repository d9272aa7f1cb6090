/*
 * Synthetic events for the transport and aggregator benchmarks: a realistic
 * mix (connections over IPv4 and IPv6, closes, execs with arguments, exits,
 * drops)
 * spread over nodes, pods and commands, with Kubernetes attribution so the
 * pod filter has something to find. Header-only: each benchmark is one file.
 */
#ifndef EBPF_MONITOR_BENCH_AGGREGATOR_EVENTS_H
#define EBPF_MONITOR_BENCH_AGGREGATOR_EVENTS_H

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"
#include "intern.h"

#define BENCH_NODES 8
#define BENCH_PODS  64

static const char *const bench_commands[] = {
    "curl",         "nginx",       "python3", "java", "node",    "postgres",
    "redis-server", "envoy",       "sh",      "bash", "kubelet", "containerd-shim",
    "coredns",      "grpc-server", "ls",      "cat",
};
#define BENCH_NCOMMANDS (sizeof(bench_commands) / sizeof(bench_commands[0]))

static __attribute__((unused)) uint64_t bench_rand(uint64_t *s)
{
    /* splitmix64: reproducible and fast. */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __attribute__((unused)) uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __attribute__((unused)) uint64_t bench_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __attribute__((unused)) uint64_t bench_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __attribute__((unused)) const char *bench_node_name(unsigned i)
{
    char s[32];
    snprintf(s, sizeof(s), "node-%u", i % BENCH_NODES);
    return intern(s);
}

static __attribute__((unused)) const char *bench_pod_name(unsigned i)
{
    char s[64];
    snprintf(s, sizeof(s), "app-%u-7d9f8b6c5d-x%02u", i % BENCH_PODS, i % BENCH_PODS);
    return intern(s);
}

/*
 * Event i of the mix (for node `node`, or spread over nodes when node < 0),
 * stamped ts. 40% connections (2/3 IPv4 TCP/UDP, 1/3 IPv6; 1 in 20 TCP
 * ones failed), 5% accepts, 15% closes, 15% execs with 1-4 arguments, 15%
 * exits, 10% drops. With k8s, every event carries its pod's Kubernetes
 * attribution (a cluster node: workload, app label and pod IP included), and
 * half the connections, accepts and closes know the pod at the other end;
 * without, none (a VM). Release with event_clear().
 */
static __attribute__((unused)) void bench_event_mix(struct event *e, uint64_t i, int node,
                                                    uint64_t ts, uint64_t *rng, int k8s)
{
    uint64_t r = bench_rand(rng);
    unsigned kind = (unsigned)(r % 100);
    unsigned nidx = node >= 0 ? (unsigned)node : (unsigned)(i % BENCH_NODES);
    /* Each pod runs on one node, as in a cluster: pod p lives on node p % BENCH_NODES. */
    unsigned pod = nidx + BENCH_NODES * (unsigned)((r >> 8) % (BENCH_PODS / BENCH_NODES));

    memset(e, 0, sizeof(*e));
    e->id = bench_rand(rng);
    e->timestamp_ns = ts;
    e->pid = 1000 + (uint32_t)((r >> 16) % 60000);
    e->ppid = 1 + (uint32_t)((r >> 32) % 1000);
    e->uid = (r >> 40) % 4 ? 0 : 1000;
    snprintf(e->command, sizeof(e->command), "%s", bench_commands[(r >> 44) % BENCH_NCOMMANDS]);
    e->cgroup_id = 4000 + pod;
    e->node = bench_node_name(nidx);
    if (k8s) {
        e->k8s.node_name = e->node;
        e->k8s.pod_name = bench_pod_name(pod);
        e->k8s.namespace = intern(pod % 4 ? "default" : "kube-system");
        char cid[96];
        snprintf(cid, sizeof(cid), "containerd://%064x", pod * 2654435761u);
        e->k8s.container_id = intern(cid);
        char uid[40];
        snprintf(uid, sizeof(uid), "6f1c2a3b-%04x-4c5d-8e9f-%012x", pod, pod * 7919u);
        e->k8s.pod_uid = intern(uid);
        char app[32], ip[32];
        snprintf(app, sizeof(app), "app-%u", pod);
        e->k8s.workload = e->k8s.app = intern(app);
        e->k8s.workload_kind = intern(pod % 8 ? "Deployment" : "StatefulSet");
        snprintf(ip, sizeof(ip), "10.0.%u.%u", pod / 8, (pod + 2) & 0xff);
        e->k8s.ips = intern(ip);
    }

    if (kind < 60) {
        e->type = kind < 40 ? EVENT_CONNECTION : kind < 45 ? EVENT_ACCEPT : EVENT_CLOSE;
        e->protocol = e->type == EVENT_CLOSE || (r >> 50) % 3 ? IPPROTO_TCP : IPPROTO_UDP;
        if (e->type == EVENT_CONNECTION)
            e->status =
                e->protocol == IPPROTO_TCP ? EVENT_STATUS_ESTABLISHED : EVENT_STATUS_ATTEMPTED;
        if (e->status == EVENT_STATUS_ESTABLISHED && (r >> 4) % 20 == 0) {
            e->status = EVENT_STATUS_FAILED;
            e->u.conn.error = intern((r >> 5) % 2 ? "refused" : "timeout");
        }
        if (k8s && (r >> 6) % 2) {
            unsigned peer = (pod + 1 + (unsigned)((r >> 7) % (BENCH_PODS - 1))) % BENCH_PODS;
            char app[32];
            snprintf(app, sizeof(app), "app-%u", peer);
            e->peer.pod = bench_pod_name(peer);
            e->peer.namespace = intern(peer % 4 ? "default" : "kube-system");
            e->peer.workload = intern(app);
            e->peer.workload_kind = intern(peer % 8 ? "Deployment" : "StatefulSet");
            e->peer.node = bench_node_name(peer % BENCH_NODES);
            if (e->type != EVENT_ACCEPT) {
                char svc[64];
                snprintf(svc, sizeof(svc), "%s.%s.svc.cluster.local", app, e->peer.namespace);
                e->peer.service = intern(app);
                e->peer.dns = intern(svc);
            }
        }
        if ((r >> 52) % 3) {
            e->family = EVENT_FAMILY_IPV4;
            uint8_t s[4] = {10, 0, (uint8_t)(pod / 8), (uint8_t)(pod + 2)};
            uint8_t d[4] = {10, 96, (uint8_t)(r >> 24), (uint8_t)(r >> 56)};
            memcpy(e->saddr, s, 4);
            memcpy(e->daddr, d, 4);
        } else {
            e->family = EVENT_FAMILY_IPV6;
            static const uint8_t pfx[8] = {0xfd, 0x00, 0x10, 0x96, 0, 0, 0, 0};
            memcpy(e->saddr, pfx, 8);
            memcpy(e->daddr, pfx, 8);
            uint64_t a = bench_rand(rng), b = bench_rand(rng);
            memcpy(e->saddr + 8, &a, 8);
            memcpy(e->daddr + 8, &b, 8);
        }
        e->sport = 32768 + (uint16_t)((r >> 12) % 28000);
        static const uint16_t ports[] = {443, 80, 53, 5432, 6379, 8080, 9090, 4222};
        e->dport = ports[(r >> 20) % 8];
        if (e->type == EVENT_CONNECTION && e->protocol == IPPROTO_TCP)
            e->u.conn.latency_ns = 50000 + (r >> 34) % 3000000;
        if (e->type == EVENT_CLOSE) {
            e->u.close.role = (r >> 8) % 3 ? EVENT_ROLE_CLIENT : EVENT_ROLE_SERVER;
            e->u.close.reset = (r >> 10) % 25 ? EVENT_RESET_NONE : EVENT_RESET_RECEIVED;
            e->u.close.duration_ns = (r >> 14) % 30000000000ull;
            e->u.close.bytes_sent = (r >> 22) % 200000;
            e->u.close.bytes_received = (r >> 30) % 2000000;
            e->u.close.srtt_us = 50 + (uint32_t)((r >> 40) % 20000);
            e->u.close.retransmits = (r >> 54) % 10 ? 0 : (uint32_t)((r >> 58) % 8);
        }
    } else if (kind < 75) {
        static const char *const files[] = {"/usr/bin/curl", "/bin/sh", "/usr/local/bin/python3",
                                            "/usr/bin/ls"};
        static const char *const argv[][4] = {
            {"curl", "-sf", "http://api.default.svc.cluster.local:8080/healthz", NULL},
            {"sh", "-c", "echo ready > /tmp/ready", NULL},
            {"python3", "/app/worker.py", "--queue=jobs", "--concurrency=4"},
            {"ls", "-la", NULL, NULL},
        };
        unsigned k = (unsigned)((r >> 20) % 4);
        e->type = EVENT_EXEC;
        e->u.exec.filename = strdup(files[k]);
        char args[256];
        size_t n = 0;
        for (unsigned a = 0; a < 4 && argv[k][a]; a++) {
            size_t l = strlen(argv[k][a]) + 1;
            memcpy(args + n, argv[k][a], l);
            n += l;
        }
        e->u.exec.args = malloc(n);
        memcpy(e->u.exec.args, args, n);
        e->u.exec.args_len = (uint32_t)n;
        e->u.exec.euid = e->uid; /* as agents report it: mostly no set-user-ID bit */
        e->u.exec.has_euid = 1;
    } else if (kind < 85) {
        e->type = EVENT_EXIT;
        e->u.exit.exit_code = (r >> 20) % 5 ? 0 : 1;
        e->u.exit.signal = (r >> 24) % 20 ? 0 : 9;
        e->u.exit.duration_ns = (r >> 28) % 5000000000ull;
    } else if (kind < 90) {
        /* A pod asking the cluster DNS for a service; one in ten NXDOMAIN (a search suffix). */
        static const char *const names[] = {
            "api.default.svc.cluster.local", "db.default.svc.cluster.local",
            "api.default.svc.cluster.local.default.svc.cluster.local",
            "metrics.kube-system.svc.cluster.local"};
        unsigned k = (unsigned)((r >> 20) % 4);
        uint8_t s[4] = {10, 0, (uint8_t)(pod / 8), (uint8_t)(pod + 2)};
        uint8_t d[4] = {10, 96, 0, 10};
        e->type = EVENT_DNS;
        e->family = EVENT_FAMILY_IPV4;
        e->protocol = IPPROTO_UDP;
        memcpy(e->saddr, s, 4);
        memcpy(e->daddr, d, 4);
        e->sport = 32768 + (uint16_t)((r >> 12) % 28000);
        e->dport = 53;
        e->ppid = 0; /* not known to the capture */
        e->status = (r >> 30) % 50 ? EVENT_STATUS_ANSWERED : EVENT_STATUS_TIMEOUT;
        e->u.dns.query = strdup(names[k]);
        e->u.dns.query_type = (r >> 24) % 2 ? 1 : 28;
        e->u.dns.transaction_id = (uint16_t)(r >> 40);
        if (e->status == EVENT_STATUS_ANSWERED) {
            e->u.dns.latency_ns = 100000 + (r >> 34) % 5000000;
            e->u.dns.rcode = k == 2 ? 3 : 0;
            if (!e->u.dns.rcode) {
                char ans[16];
                int n = snprintf(ans, sizeof(ans), "10.96.%u.%u", k, (unsigned)(r >> 48) & 0xff);
                e->u.dns.answers = malloc((size_t)n + 1);
                memcpy(e->u.dns.answers, ans, (size_t)n + 1);
                e->u.dns.answers_len = (uint32_t)n + 1;
            }
        }
    } else {
        static const char *const reasons[][2] = {
            {"NOT_SPECIFIED", "kfree_skb_reason+0x3c"},
            {"NETFILTER_DROP", "nf_hook_slow+0x9e"},
            {"TCP_INVALID_SEQUENCE", "tcp_validate_incoming+0x11d"},
            {"NO_SOCKET", "__udp4_lib_rcv+0x2b5"},
        };
        unsigned k = (unsigned)((r >> 20) % 4);
        static const uint32_t codes[] = {2, 7, 29, 3};
        e->type = EVENT_PACKET_DROP;
        e->family = EVENT_FAMILY_IPV4;
        e->protocol = k == 3 ? IPPROTO_UDP : IPPROTO_TCP;
        uint8_t s[4] = {10, 0, (uint8_t)(pod / 8), (uint8_t)(pod + 2)};
        uint8_t d[4] = {10, 0, 3, (uint8_t)(r >> 40)};
        memcpy(e->saddr, s, 4);
        memcpy(e->daddr, d, 4);
        e->sport = 40000 + (uint16_t)((r >> 12) % 20000);
        e->dport = 8080;
        e->u.drop.reason_code = codes[k];
        e->u.drop.reason = intern(reasons[k][0]);
        e->u.drop.location = intern(reasons[k][1]);
        if ((r >> 30) % 10 == 0)
            e->u.drop.suppressed = (r >> 36) % 500;
    }
}

/* The Kubernetes mix, as the aggregator benchmarks use it. */
static __attribute__((unused)) void bench_event(struct event *e, uint64_t i, int node, uint64_t ts,
                                                uint64_t *rng)
{
    bench_event_mix(e, i, node, ts, rng, 1);
}

/*
 * The seed's event format: one JSON object per event, as its README example
 * shows, written out for e. The example has no Kubernetes fields; so that
 * the comparison stays like for like, the attribution e carries is added as
 * plain JSON keys (k8s_pod_name...), the way a JSON-per-event format would
 * carry it.
 */
static __attribute__((unused)) size_t bench_seed_json_len(const struct event *e)
{
    char buf[2048], s[64], d[64];
    int n;
    time_t sec = (time_t)(e->timestamp_ns / 1000000000ull);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(buf, sizeof(buf),
                 "{\"id\":\"%016llx\",\"type\":\"%s\",\"pid\":%u,\"ppid\":%u,\"uid\":%u,"
                 "\"command\":\"%s\",\"timestamp\":%llu,\"time\":\"%s.%09lluZ\",\"node\":\"%s\"",
                 (unsigned long long)e->id, event_type_name(e->type), e->pid, e->ppid, e->uid,
                 e->command, (unsigned long long)e->timestamp_ns, when,
                 (unsigned long long)(e->timestamp_ns % 1000000000ull), e->node);
    size_t len = (size_t)n;
    const char *k8s_keys[] = {"k8s_node_name", "k8s_pod_name", "k8s_namespace", "k8s_container_id",
                              "k8s_pod_uid"};
    const char *k8s_vals[] = {e->k8s.node_name, e->k8s.pod_name, e->k8s.namespace,
                              e->k8s.container_id, e->k8s.pod_uid};
    for (int k = 0; k < 5; k++)
        if (k8s_vals[k])
            len += strlen(k8s_keys[k]) + strlen(k8s_vals[k]) + 6; /* ,"key":"value" */
    if (e->family != EVENT_FAMILY_NONE) {
        event_addr_str(e->family, e->saddr, s, sizeof(s));
        event_addr_str(e->family, e->daddr, d, sizeof(d));
        n = snprintf(buf, sizeof(buf),
                     ",\"source_ip\":\"%s\",\"source_port\":%u,\"dest_ip\":\"%s\",\"dest_port\":%u,"
                     "\"protocol\":\"%s\",\"family\":\"%s\"",
                     s, e->sport, d, e->dport,
                     event_protocol_name(e->protocol) ? event_protocol_name(e->protocol) : "",
                     event_family_name(e->family));
        len += (size_t)n;
    }
    switch (e->type) {
    case EVENT_CONNECTION:
        n = snprintf(buf, sizeof(buf), ",\"status\":\"%s\",\"latency_ns\":%llu",
                     event_status_name(e->status), (unsigned long long)e->u.conn.latency_ns);
        break;
    case EVENT_EXEC: {
        /* filename plus the argv as a JSON array of strings */
        n = snprintf(buf, sizeof(buf), ",\"filename\":\"%s\",\"args\":[", e->u.exec.filename);
        for (uint32_t o = 0; o < e->u.exec.args_len;) {
            size_t l = strlen(e->u.exec.args + o);
            n += (int)l + 3;
            o += (uint32_t)l + 1;
        }
        n += 1;
        break;
    }
    case EVENT_EXIT:
        n = snprintf(buf, sizeof(buf), ",\"exit_code\":%d,\"signal\":%d,\"duration_ns\":%llu",
                     e->u.exit.exit_code, e->u.exit.signal,
                     (unsigned long long)e->u.exit.duration_ns);
        break;
    case EVENT_PACKET_DROP:
        n = snprintf(buf, sizeof(buf), ",\"reason_code\":%u,\"reason\":\"%s\",\"location\":\"%s\"",
                     e->u.drop.reason_code, e->u.drop.reason, e->u.drop.location);
        break;
    default:
        n = 0;
    }
    return len + (size_t)n + 1; /* the closing brace */
}

#endif

#ifndef BENCH_EMIT_DEFINED
#define BENCH_EMIT_DEFINED
/*
 * One measurement as a JSON line on stdout: name, value, unit and, when cmp
 * is "<=" or ">=", the target and whether it is met. scripts/bench-aggregator.sh
 * collects these lines.
 */
static __attribute__((unused)) void bench_emit(const char *name, double value, const char *unit,
                                               const char *cmp, double target)
{
    printf("{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\"", name, value, unit);
    if (cmp) {
        int met = cmp[0] == '<' ? value <= target : value >= target;
        printf(",\"target\":\"%s %g\",\"met\":%s", cmp, target, met ? "true" : "false");
    }
    printf("}\n");
    fflush(stdout);
}
#endif

/*
 * Loads for the DNS capture's benchmark (scripts/bench-dns.sh): loopback
 * traffic that the cgroup_skb programs of bpf/dns.bpf.c see on every packet.
 *
 *   bench_dns_load udp [--size BYTES] --duration SEC   datagrams to a local socket
 *   bench_dns_load udp-inline [--size BYTES] --duration SEC
 *                                                      the same from one thread that
 *                                                      also receives them
 *   bench_dns_load tcp --duration SEC                  a bulk TCP stream (64 KiB writes)
 *   bench_dns_load dns --server IP:PORT [--name NAME] --duration SEC
 *                                                      one UDP query at a time, each
 *                                                      waiting for its answer
 *
 * udp and tcp are throughput tests that are not DNS (the programs' fast
 * path); dns is a query loop against a real server. In udp a second thread
 * receives, so the rate also depends on whether it keeps up and sleeps (each
 * wakeup costs the sender more than a datagram's own work on a VM);
 * udp-inline sends bursts of UDP_BURST datagrams and reads them back in the
 * same thread (over loopback a datagram is in the socket's queue when send()
 * returns), which no sleep or wakeup takes part in: its CPU per op is what
 * each datagram's path through the stack and the hooks costs. Prints one JSON object:
 * {"mode":..,"seconds":..,"ops":..,"ops_per_sec":..,"mb_per_sec":..,"lost":..,
 * "cpu_ns_per_op":..}: cpu_ns_per_op is this process's CPU time (user + system,
 * every thread, which includes loopback's softirq work done in its context) per op,
 * less sensitive than the rate to what else runs on the machine;
 * ops are datagrams received (udp, udp-inline), bytes received / 64 KiB (tcp) or answers
 * with the query's ID (dns); lost counts datagrams sent but not received
 * (udp) or queries unanswered within 1 s (dns).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

#define TCP_CHUNK (64 * 1024)

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_dns_load udp [--size BYTES] --duration SEC\n"
                    "       bench_dns_load udp-inline [--size BYTES] --duration SEC\n"
                    "       bench_dns_load tcp --duration SEC\n"
                    "       bench_dns_load dns --server IP:PORT [--name NAME] --duration SEC\n");
    exit(2);
}

/* A socket bound to a free loopback port; its address in *a. */
static int bound_socket(int type, struct sockaddr_in *a)
{
    socklen_t len = sizeof(*a);
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof(*a)) < 0 ||
        getsockname(fd, (struct sockaddr *)a, &len) < 0)
        die("bench_dns_load: bind");
    return fd;
}

struct sink {
    int fd;
    uint64_t packets, bytes;
};

/* Reads until the socket is shut down (tcp: the peer closes; udp: shutdown()). */
static void *sink_run(void *arg)
{
    static char buf[1 << 16];
    struct sink *s = arg;

    for (;;) {
        ssize_t n = recv(s->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) /* EOF or shutdown (udp datagrams here are never empty) */
            return NULL;
        s->packets++;
        s->bytes += (uint64_t)n;
    }
}

static double cpu_ns(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ((double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec) * 1e9 +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e3;
}

static double cpu_start;

static void print(const char *mode, double secs, uint64_t ops, uint64_t bytes, uint64_t lost)
{
    printf("{\"mode\":\"%s\",\"seconds\":%.3f,\"ops\":%llu,\"ops_per_sec\":%.1f,"
           "\"mb_per_sec\":%.2f,\"lost\":%llu,\"cpu_ns_per_op\":%.1f}\n",
           mode, secs, (unsigned long long)ops, (double)ops / secs, (double)bytes / secs / 1e6,
           (unsigned long long)lost, ops ? (cpu_ns() - cpu_start) / (double)ops : 0);
}

static void run_udp(size_t size, double duration)
{
    struct sockaddr_in a;
    struct sink s = {.fd = bound_socket(SOCK_DGRAM, &a)};
    int big = 8 << 20, tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char *buf = calloc(1, size);
    uint64_t sent = 0, start, deadline;
    pthread_t t;

    setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (tx < 0 || !buf || connect(tx, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("bench_dns_load: udp socket");
    pthread_create(&t, NULL, sink_run, &s);
    start = clock_monotonic_ns();
    deadline = start + (uint64_t)(duration * 1e9);
    while (clock_monotonic_ns() < deadline) {
        for (int i = 0; i < 64; i++)
            if (send(tx, buf, size, 0) == (ssize_t)size)
                sent++;
    }
    /* What is still queued is received, not lost: give the sink a moment to catch up. */
    for (int i = 0; i < 100 && __atomic_load_n(&s.packets, __ATOMIC_RELAXED) < sent; i++)
        usleep(1000);
    double secs = (double)(clock_monotonic_ns() - start) / 1e9;
    shutdown(s.fd, SHUT_RDWR);
    pthread_join(t, NULL);
    print("udp", secs, s.packets, s.bytes, sent > s.packets ? sent - s.packets : 0);
    free(buf);
}

#define UDP_BURST 64

static void run_udp_inline(size_t size, double duration)
{
    static char in[1 << 16];
    struct sockaddr_in a;
    int rx = bound_socket(SOCK_DGRAM, &a), tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char *buf = calloc(1, size);
    uint64_t sent = 0, received = 0, bytes = 0, start, deadline;

    if (tx < 0 || !buf || connect(tx, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("bench_dns_load: udp socket");
    start = clock_monotonic_ns();
    deadline = start + (uint64_t)(duration * 1e9);
    while (clock_monotonic_ns() < deadline) {
        for (int i = 0; i < UDP_BURST; i++)
            if (send(tx, buf, size, 0) == (ssize_t)size)
                sent++;
        /* Read until the queue is empty: a burst's datagrams are all there by now. */
        for (;;) {
            ssize_t n = recv(rx, in, sizeof(in), MSG_DONTWAIT);
            if (n <= 0)
                break;
            received++;
            bytes += (uint64_t)n;
        }
    }
    double secs = (double)(clock_monotonic_ns() - start) / 1e9;
    print("udp-inline", secs, received, bytes, sent > received ? sent - received : 0);
    free(buf);
    close(tx);
    close(rx);
}

static void run_tcp(double duration)
{
    static char buf[TCP_CHUNK];
    struct sockaddr_in a;
    int lfd = bound_socket(SOCK_STREAM, &a), fd;
    struct sink s;
    uint64_t start, deadline;
    pthread_t t;

    if (listen(lfd, 1) < 0 || (fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        (s.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0)
        die("bench_dns_load: tcp connection");
    s.packets = s.bytes = 0;
    pthread_create(&t, NULL, sink_run, &s);
    start = clock_monotonic_ns();
    deadline = start + (uint64_t)(duration * 1e9);
    while (clock_monotonic_ns() < deadline)
        if (send(fd, buf, sizeof(buf), 0) < 0 && errno != EINTR)
            die("bench_dns_load: tcp send");
    close(fd);
    pthread_join(t, NULL);
    double secs = (double)(clock_monotonic_ns() - start) / 1e9;
    print("tcp", secs, s.bytes / TCP_CHUNK, s.bytes, 0);
    close(s.fd);
    close(lfd);
}

/* A query for name (dotted) of type A with transaction id; returns its length. */
static size_t dns_query(uint8_t *q, size_t cap, const char *name, uint16_t id)
{
    size_t n = 12;
    const char *p = name;

    memset(q, 0, 12);
    q[0] = (uint8_t)(id >> 8);
    q[1] = (uint8_t)id;
    q[2] = 0x01; /* RD */
    q[5] = 1;    /* QDCOUNT */
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0 || len > 63 || n + len + 6 > cap) {
            fprintf(stderr, "bench_dns_load: bad name %s\n", name);
            exit(2);
        }
        q[n++] = (uint8_t)len;
        memcpy(q + n, p, len);
        n += len;
        p += len + (dot ? 1 : 0);
    }
    q[n++] = 0;
    q[n++] = 0, q[n++] = 1; /* QTYPE A */
    q[n++] = 0, q[n++] = 1; /* QCLASS IN */
    return n;
}

static void run_dns(const char *server, const char *name, double duration)
{
    char host[64];
    const char *colon = strrchr(server, ':');
    struct sockaddr_in a = {.sin_family = AF_INET};
    struct timeval tv = {.tv_sec = 1};
    uint8_t q[300], r[1500];
    uint64_t answered = 0, lost = 0, start, deadline;
    uint16_t id = (uint16_t)getpid();
    int fd;

    if (!colon || (size_t)(colon - server) >= sizeof(host))
        usage();
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = '\0';
    a.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        usage();
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("bench_dns_load: dns socket");
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    start = clock_monotonic_ns();
    deadline = start + (uint64_t)(duration * 1e9);
    while (clock_monotonic_ns() < deadline) {
        size_t len = dns_query(q, sizeof(q), name, ++id);
        ssize_t n;

        if (send(fd, q, len, 0) < 0)
            die("bench_dns_load: dns send");
        do
            n = recv(fd, r, sizeof(r), 0);
        while (n >= 2 && (r[0] != q[0] || r[1] != q[1])); /* a late answer to an earlier one */
        if (n >= 12)
            answered++;
        else
            lost++;
    }
    double secs = (double)(clock_monotonic_ns() - start) / 1e9;
    print("dns", secs, answered, 0, lost);
    close(fd);
}

int main(int argc, char **argv)
{
    const char *server = NULL, *name = "a.test";
    double duration = 0;
    size_t size = 1400;

    if (argc < 2)
        usage();
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--duration"))
            duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--size"))
            size = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--server"))
            server = argv[i + 1];
        else if (!strcmp(argv[i], "--name"))
            name = argv[i + 1];
        else
            usage();
    }
    if (duration <= 0 || size < 1 || size > 65507)
        usage();
    cpu_start = cpu_ns();
    if (!strcmp(argv[1], "udp"))
        run_udp(size, duration);
    else if (!strcmp(argv[1], "udp-inline"))
        run_udp_inline(size, duration);
    else if (!strcmp(argv[1], "tcp"))
        run_tcp(duration);
    else if (!strcmp(argv[1], "dns") && server)
        run_dns(server, name, duration);
    else
        usage();
    return 0;
}

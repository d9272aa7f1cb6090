/*
 * Workload generator for the agent benchmarks: loops of the operations the
 * BPF programs trace, on N threads, optionally held to a target total rate.
 *
 *   bench_load MODE [--threads N] [--rate OPS_PER_SEC] [--duration SEC] [--ops N]
 *
 * MODE: udp-connect (connect() of a UDP socket to 127.0.0.1: one connection
 * event each), tcp-connect (a TCP connect to a local listener, accepted and
 * closed with RST: a connection and an accept event), exec (posix_spawn of
 * /bin/true and wait: an exec and an exit event), drop (a UDP datagram to a
 * closed loopback port: one packet_drop), mix (per 100 operations: 96 UDP
 * connects, 3 TCP connects, 1 exec), io-uring (a no-op request submitted to
 * the thread's own io_uring and its completion waited for: one run of the
 * agent's io_uring_complete program, the path of every completion that is
 * no accept or connect).
 *
 * Prints one JSON object: {"mode":..,"threads":..,"ops":..,"seconds":..,
 * "ops_per_sec":..,"udp_connects":..,"tcp_connects":..,"execs":..}. A rate
 * of 0 runs as fast as possible.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum mode { MODE_UDP, MODE_TCP, MODE_EXEC, MODE_DROP, MODE_MIX, MODE_URING };

static enum mode mode;
static double rate_per_thread; /* 0 = unlimited */
static uint64_t deadline_ns;   /* 0 = none */
static uint64_t ops_per_thread;
static uint16_t tcp_port, udp_port, closed_port;
static volatile bool stopping;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A free port: bind to 0 and read it back (kept open when keep is set). */
static uint16_t bound_port(int fd)
{
    struct sockaddr_in a = loopback(0);
    socklen_t len = sizeof(a);

    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        perror("bench_load: bind");
        exit(1);
    }
    return ntohs(a.sin_port);
}

/* Accepts and closes with RST, so neither end lingers in TIME_WAIT. */
static void *acceptor(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(fd);
    }
}

/* A thread's io_uring, by raw system calls (no liburing): its rings mapped in place. */
struct ring {
    int fd;
    uint32_t *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail;
    struct io_uring_sqe *sqes;
};

struct worker {
    pthread_t tid;
    uint64_t ops, udp, tcp, exec;
    int udp_fd, drop_fd;
    struct ring ring;
};

static void ring_open(struct ring *r)
{
    struct io_uring_params p = {0};

    r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (r->fd < 0) {
        perror("bench_load: io_uring_setup (kernel.io_uring_disabled?)");
        exit(1);
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED) {
        perror("bench_load: mmap io_uring");
        exit(1);
    }
    r->sq_tail = (uint32_t *)(sq + p.sq_off.tail);
    r->sq_mask = (uint32_t *)(sq + p.sq_off.ring_mask);
    r->sq_array = (uint32_t *)(sq + p.sq_off.array);
    r->cq_head = (uint32_t *)(cq + p.cq_off.head);
    r->cq_tail = (uint32_t *)(cq + p.cq_off.tail);
}

/* One no-op request, submitted and waited for in one io_uring_enter. */
static void op_uring(struct worker *w)
{
    struct ring *r = &w->ring;
    uint32_t tail = *r->sq_tail, slot = tail & *r->sq_mask;

    memset(&r->sqes[slot], 0, sizeof(r->sqes[slot]));
    r->sqes[slot].opcode = IORING_OP_NOP;
    r->sq_array[slot] = slot;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        perror("bench_load: io_uring_enter");
    uint32_t head = *r->cq_head;
    if (head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
}

static void op_udp(struct worker *w)
{
    struct sockaddr_in a = loopback(udp_port);

    if (connect(w->udp_fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        perror("bench_load: udp connect");
}

static void op_tcp(void)
{
    struct sockaddr_in a = loopback(tcp_port);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != ECONNRESET)
        perror("bench_load: tcp connect");
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static void op_exec(void)
{
    char *argv[] = {"/bin/true", "bench", NULL};
    pid_t pid;

    if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) != 0) {
        perror("bench_load: posix_spawn");
        return;
    }
    waitpid(pid, NULL, 0);
}

static void op_drop(struct worker *w)
{
    static const char payload[32];
    struct sockaddr_in a = loopback(closed_port);

    sendto(w->drop_fd, payload, sizeof(payload), 0, (struct sockaddr *)&a, sizeof(a));
}

static void op(struct worker *w)
{
    switch (mode) {
    case MODE_UDP:
        op_udp(w);
        break;
    case MODE_TCP:
        op_tcp();
        break;
    case MODE_EXEC:
        op_exec();
        break;
    case MODE_DROP:
        op_drop(w);
        break;
    case MODE_URING:
        op_uring(w);
        break;
    case MODE_MIX: {
        unsigned k = (unsigned)(w->ops % 100);
        if (k < 96) {
            op_udp(w);
            w->udp++;
        } else if (k < 99) {
            op_tcp();
            w->tcp++;
        } else {
            op_exec();
            w->exec++;
        }
        return;
    }
    }
    /* Single-kind modes: count by kind too, for the subscriber's checks. */
    w->udp += mode == MODE_UDP;
    w->tcp += mode == MODE_TCP;
    w->exec += mode == MODE_EXEC;
}

/* Runs ops in steps of a few; sleeps whenever ahead of the target schedule. */
static void *work(void *arg)
{
    struct worker *w = arg;
    uint64_t start = now_ns();
    double ns_per_op = rate_per_thread > 0 ? 1e9 / rate_per_thread : 0;

    w->udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    w->drop_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (mode == MODE_URING)
        ring_open(&w->ring);
    while (!stopping) {
        for (int i = 0; i < 16; i++) {
            op(w);
            w->ops++;
        }
        if (ops_per_thread && w->ops >= ops_per_thread)
            break;
        uint64_t now = now_ns();
        if (deadline_ns && now >= deadline_ns)
            break;
        if (ns_per_op > 0) {
            uint64_t due = start + (uint64_t)(ns_per_op * (double)w->ops);
            if (due > now + 20000) {
                struct timespec ts = {.tv_sec = (time_t)((due - now) / 1000000000ull),
                                      .tv_nsec = (long)((due - now) % 1000000000ull)};
                nanosleep(&ts, NULL);
            }
        }
    }
    close(w->udp_fd);
    close(w->drop_fd);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_load udp-connect|tcp-connect|exec|drop|mix|io-uring [--threads N] "
            "[--rate OPS_PER_SEC] [--duration SEC] [--ops N_PER_THREAD]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int threads = 1;
    double rate = 0, duration = 0;
    const char *m;

    if (argc < 2)
        usage();
    m = argv[1];
    if (!strcmp(m, "udp-connect"))
        mode = MODE_UDP;
    else if (!strcmp(m, "tcp-connect"))
        mode = MODE_TCP;
    else if (!strcmp(m, "exec"))
        mode = MODE_EXEC;
    else if (!strcmp(m, "drop"))
        mode = MODE_DROP;
    else if (!strcmp(m, "mix"))
        mode = MODE_MIX;
    else if (!strcmp(m, "io-uring"))
        mode = MODE_URING;
    else
        usage();
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate"))
            rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration"))
            duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--ops"))
            ops_per_thread = strtoull(argv[i + 1], NULL, 10);
        else
            usage();
    }
    if (threads < 1 || threads > 256 || (duration <= 0 && ops_per_thread == 0))
        usage();
    rate_per_thread = rate / threads;

    /* Targets: a TCP listener (accepted on its own thread), a bound UDP port
     * (connect() needs no peer, but a real one keeps the route honest) and a
     * port bound then closed, so nothing listens there. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    tcp_port = bound_port(lfd);
    if (listen(lfd, 4096) < 0) {
        perror("bench_load: listen");
        return 1;
    }
    pthread_t acc;
    pthread_create(&acc, NULL, acceptor, (void *)(intptr_t)lfd);
    int ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    udp_port = bound_port(ufd);
    int cfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    closed_port = bound_port(cfd);
    close(cfd);

    struct worker *w = calloc((size_t)threads, sizeof(*w));
    uint64_t start = now_ns();
    if (duration > 0)
        deadline_ns = start + (uint64_t)(duration * 1e9);
    for (int i = 0; i < threads; i++)
        pthread_create(&w[i].tid, NULL, work, &w[i]);
    uint64_t ops = 0, udp = 0, tcp = 0, exec = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].tid, NULL);
        ops += w[i].ops;
        udp += w[i].udp;
        tcp += w[i].tcp;
        exec += w[i].exec;
    }
    double secs = (double)(now_ns() - start) / 1e9;
    printf("{\"mode\":\"%s\",\"threads\":%d,\"target_rate\":%.0f,\"ops\":%llu,\"seconds\":%.3f,"
           "\"ops_per_sec\":%.1f,\"udp_connects\":%llu,\"tcp_connects\":%llu,\"execs\":%llu}\n",
           m, threads, rate, (unsigned long long)ops, secs, (double)ops / secs,
           (unsigned long long)udp, (unsigned long long)tcp, (unsigned long long)exec);
    fflush(stdout);
    shutdown(lfd, SHUT_RDWR);
    close(ufd);
    free(w);
    _exit(0);
}

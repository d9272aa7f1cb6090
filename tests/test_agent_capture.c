/*
 * Tests for cmd/agent/capture against the running kernel (root only): real
 * TCP connects and accepts over IPv4 and IPv6, a refused connect, a UDP
 * connect, a UDP datagram dropped for want of a socket, and a child that
 * execs a shell and exits 3 must each come back as a fully filled event, and
 * a DNS query and its answer as two records of one socket;
 * per-type program selection (also within the sys_exit program UDP connects
 * and accepts share), drop rate limiting, the privilege error, libbpf's log
 * level, and that closing leaves nothing of ours loaded in the kernel.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <linux/io_uring.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cmd/agent/capture.h"
#include "../cmd/agent/records.h"
#include "cgroup.h"
#include "clock.h"
#include "dns.skel.h"
#include "dns_events.h"
#include "process_events.h"
#include "processes.skel.h"
#include "event.h"
#include "testutil.h"

#define DEADLINE_MS 5000

/* A DNS message as the capture delivered it: what the test checks. */
struct dns_seen {
    bool answer;
    uint32_t pid;
    char command[EVENT_COMM_LEN];
    uint64_t cookie;
    uint16_t sport, dport, id;
    uint8_t protocol, family;
    uint32_t error; /* an error record's (no message) */
};

struct collected {
    struct event *v;
    size_t n, cap;
    struct dns_seen dns[64];
    size_t ndns;
};

static void collect_dns(void *ctx, const struct records_dns *m)
{
    struct collected *c = ctx;
    struct dns_seen *d;

    if (c->ndns == 64 || (m->payload_len < 2 && !m->error))
        return;
    d = &c->dns[c->ndns++];
    d->error = m->error;
    d->answer = m->answer;
    d->pid = m->pid;
    memcpy(d->command, m->command, sizeof(d->command));
    d->cookie = m->cookie;
    d->sport = m->sport;
    d->dport = m->dport;
    d->id = m->error ? 0 : (uint16_t)(m->payload[0] << 8 | m->payload[1]);
    d->protocol = m->protocol;
    d->family = m->family;
}

/* The UDP socket the test answers DNS queries on; its port is the capture's DNS_PORTS. */
static int dns_fd = -1, dns_tcp_fd = -1, dns_port;

static void collect(void *ctx, struct event *e)
{
    struct collected *c = ctx;

    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->v = realloc(c->v, c->cap * sizeof(*c->v));
        cr_assert_not_null(c->v);
    }
    /* Take the owned strings: capture must not free what we moved away. */
    event_move(&c->v[c->n++], e);
}

static void collected_free(struct collected *c)
{
    for (size_t i = 0; i < c->n; i++)
        event_clear(&c->v[i]);
    free(c->v);
    memset(c, 0, sizeof(*c));
}

static void skip_unless_root(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to load eBPF programs");
}

static struct capture *open_capture(uint32_t types, uint32_t drop_rate, struct collected *out)
{
    struct capture_config cfg = {.event_types = types,
                                 .ringbuf_bytes = 1u << 22,
                                 .drop_rate_per_sec = drop_rate,
                                 .dns_fn = collect_dns,
                                 .dns_ctx = out};
    char err[256] = "";

    if (dns_fd < 0)
        dns_fd = tu_udp_socket(&dns_port, &dns_tcp_fd);
    cfg.dns_ports[0] = (uint16_t)dns_port;
    struct capture *c = capture_open(&cfg, collect, out, err, sizeof(err));

    cr_assert_not_null(c, "capture_open: %s", err);
    return c;
}

typedef bool (*match_fn)(const struct event *e, const void *arg);

/* Polls until an event matching m shows up; returns it (owned by out) or NULL at the deadline. */
static const struct event *wait_event(struct capture *c, struct collected *out, match_fn m,
                                      const void *arg)
{
    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;
    size_t seen = 0;

    for (;;) {
        for (; seen < out->n; seen++)
            if (m(&out->v[seen], arg))
                return &out->v[seen];
        if (clock_monotonic_ns() > deadline)
            return NULL;
        int n = capture_poll(c, 50);
        cr_assert(n >= 0 || n == -EINTR, "capture_poll: %d", n);
    }
}

static void read_comm(char *buf, size_t len)
{
    FILE *f = fopen("/proc/self/comm", "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(buf, (int)len, f));
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

static void assert_timestamp(const struct event *e)
{
    int64_t d = (int64_t)(clock_realtime_ns() - e->timestamp_ns);
    cr_assert(d > -5000000000ll && d < 5000000000ll, "%s timestamp %llu is %lld ns off the clock",
              event_type_name(e->type), (unsigned long long)e->timestamp_ns, (long long)d);
}

static void assert_our_process(const struct event *e)
{
    char comm[32];

    read_comm(comm, sizeof(comm));
    cr_assert_eq(e->pid, (uint32_t)getpid());
    cr_assert_eq(e->ppid, (uint32_t)getppid());
    cr_assert_eq(e->uid, (uint32_t)getuid());
    cr_assert_str_eq(e->command, comm);
    cr_assert_neq(e->cgroup_id, 0);
    assert_timestamp(e);
}

/* A flow as the test saw it from user space. */
struct flow {
    uint8_t type, family, protocol, status;
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport;
};

static bool match_flow(const struct event *e, const void *arg)
{
    const struct flow *f = arg;
    size_t alen = f->family == EVENT_FAMILY_IPV4 ? 4 : 16;

    return e->type == f->type && e->family == f->family && e->protocol == f->protocol &&
           (!f->status || e->status == f->status) && e->sport == f->sport && e->dport == f->dport &&
           memcmp(e->saddr, f->saddr, alen) == 0 && memcmp(e->daddr, f->daddr, alen) == 0;
}

static void sockaddr_parts(const struct sockaddr_storage *ss, uint8_t addr[16], uint16_t *port)
{
    memset(addr, 0, 16);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)ss;
        memcpy(addr, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const void *)ss;
        memcpy(addr, &in6->sin6_addr, 16);
        *port = ntohs(in6->sin6_port);
    }
}

static void local_end(int fd, uint8_t addr[16], uint16_t *port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    sockaddr_parts(&ss, addr, port);
}

static socklen_t loopback(int af, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (af == AF_INET) {
        struct sockaddr_in *in = (void *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof(*in);
    }
    struct sockaddr_in6 *in6 = (void *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    in6->sin6_addr = in6addr_loopback;
    return sizeof(*in6);
}

/* A port on loopback nothing listens on: bound, then released. */
static uint16_t closed_port(int af, int type)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(af, 0, &ss);
    int fd = socket(af, type, 0);
    uint8_t addr[16];
    uint16_t port;

    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0);
    local_end(fd, addr, &port);
    close(fd);
    return port;
}

/*
 * A TCP connection on loopback: *lfd listens, *cfd connected to it, *afd
 * accepted; f's addresses and ports are the client's (source) and the
 * listener's (destination).
 */
static void tcp_pair(int af, struct flow *f, int *lfd, int *cfd, int *afd)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(af, 0, &ss);

    *lfd = socket(af, SOCK_STREAM, 0);
    *cfd = socket(af, SOCK_STREAM, 0);
    cr_assert(*lfd >= 0 && *cfd >= 0);
    cr_assert_eq(bind(*lfd, (struct sockaddr *)&ss, len), 0);
    cr_assert_eq(listen(*lfd, 4), 0);
    local_end(*lfd, f->daddr, &f->dport);
    len = loopback(af, f->dport, &ss);
    cr_assert_eq(connect(*cfd, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
    *afd = accept(*lfd, NULL, NULL);
    cr_assert_geq(*afd, 0);
    local_end(*cfd, f->saddr, &f->sport);
}

/* Connects to a listener on loopback, accepts, and checks both events. */
static void check_tcp_roundtrip(struct capture *c, struct collected *out, int af)
{
    int lfd, cfd, afd;
    struct flow conn = {.type = EVENT_CONNECTION,
                        .family = af == AF_INET ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6,
                        .protocol = IPPROTO_TCP,
                        .status = EVENT_STATUS_ESTABLISHED};
    struct flow acc;
    const struct event *e;

    tcp_pair(af, &conn, &lfd, &cfd, &afd);

    e = wait_event(c, out, match_flow, &conn);
    cr_assert_not_null(e, "no established %s connection event for port %u",
                       af == AF_INET ? "IPv4" : "IPv6", conn.dport);
    assert_our_process(e);
    cr_assert_gt(e->u.conn.latency_ns, 0);
    cr_assert_lt(e->u.conn.latency_ns, 5000000000ull);

    /* Accept: the source is the peer (our client end). */
    acc = conn;
    acc.type = EVENT_ACCEPT;
    acc.status = 0;
    memcpy(acc.saddr, conn.saddr, 16);
    acc.sport = conn.sport;
    memcpy(acc.daddr, conn.daddr, 16);
    acc.dport = conn.dport;
    e = wait_event(c, out, match_flow, &acc);
    cr_assert_not_null(e, "no accept event for port %u", conn.dport);
    assert_our_process(e);
    cr_assert_eq(e->status, EVENT_STATUS_NONE);

    close(afd);
    close(cfd);
    close(lfd);
}

static bool match_failed(const struct event *e, const void *arg)
{
    const struct flow *f = arg;

    /* The kernel releases the source port on failure, so it is not known here. */
    return e->type == EVENT_CONNECTION && e->status == EVENT_STATUS_FAILED &&
           e->family == f->family && e->dport == f->dport && memcmp(e->daddr, f->daddr, 4) == 0;
}

static void check_tcp_refused(struct capture *c, struct collected *out)
{
    struct sockaddr_storage ss;
    struct flow f = {.family = EVENT_FAMILY_IPV4};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len;
    const struct event *e;

    f.dport = closed_port(AF_INET, SOCK_STREAM);
    len = loopback(AF_INET, f.dport, &ss);
    memcpy(f.daddr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), -1);
    cr_assert_eq(errno, ECONNREFUSED);

    e = wait_event(c, out, match_failed, &f);
    cr_assert_not_null(e, "no failed connection event for refused port %u", f.dport);
    assert_our_process(e);
    cr_assert_eq(e->protocol, IPPROTO_TCP);
    cr_assert_neq(e->sport, 0);
    cr_assert_eq(memcmp(e->saddr, f.daddr, 4), 0);
    cr_assert_gt(e->u.conn.latency_ns, 0);
    close(fd);
}

struct close_match {
    struct flow f;
    uint8_t role, reset;
};

static bool match_close(const struct event *e, const void *arg)
{
    const struct close_match *m = arg;

    return match_flow(e, &m->f) && e->u.close.role == m->role && e->u.close.reset == m->reset;
}

/* An abortive close (SO_LINGER 0): the client's close says it sent the RST, the server's that
 * it received it; both sides' close events carry the connection's own 4-tuple. */
static void check_tcp_reset(struct capture *c, struct collected *out)
{
    int lfd, cfd, afd;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    struct close_match m = {
        .f = {.type = EVENT_CLOSE, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP}};
    const struct event *e;
    char buf[8];

    tcp_pair(AF_INET, &m.f, &lfd, &cfd, &afd);
    cr_assert_eq(setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(cfd);
    cr_assert_eq(read(afd, buf, sizeof(buf)), -1, "the server sees the reset");
    cr_assert_eq(errno, ECONNRESET);
    close(afd);
    close(lfd);

    m.role = EVENT_ROLE_CLIENT;
    m.reset = EVENT_RESET_SENT;
    e = wait_event(c, out, match_close, &m);
    cr_assert_not_null(e, "no client close with reset sent for port %u", m.f.dport);
    assert_our_process(e);
    m.role = EVENT_ROLE_SERVER;
    m.reset = EVENT_RESET_RECEIVED;
    e = wait_event(c, out, match_close, &m);
    cr_assert_not_null(e, "no server close with reset received for port %u", m.f.dport);
    assert_our_process(e);
}

static void check_udp_connect(struct capture *c, struct collected *out)
{
    struct sockaddr_storage ss;
    struct flow f = {.type = EVENT_CONNECTION,
                     .family = EVENT_FAMILY_IPV4,
                     .protocol = IPPROTO_UDP,
                     .status = EVENT_STATUS_ATTEMPTED};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    socklen_t len = loopback(AF_INET, 5353, &ss);
    const struct event *e;

    f.dport = 5353;
    memcpy(f.daddr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
    local_end(fd, f.saddr, &f.sport);
    cr_assert_neq(f.sport, 0);
    e = wait_event(c, out, match_flow, &f);
    cr_assert_not_null(e, "no attempted UDP connection event from port %u", f.sport);
    assert_our_process(e);
    cr_assert_eq(e->u.conn.latency_ns, 0);
    close(fd);
}

static bool match_drop(const struct event *e, const void *arg)
{
    const struct flow *f = arg;
    size_t alen = f->family == EVENT_FAMILY_IPV4 ? 4 : 16;

    return e->type == EVENT_PACKET_DROP && e->family == f->family && e->protocol == f->protocol &&
           e->sport == f->sport && e->dport == f->dport && memcmp(e->saddr, f->saddr, alen) == 0 &&
           memcmp(e->daddr, f->daddr, alen) == 0;
}

/* A UDP socket on loopback and the flow its datagrams to a closed port make. */
static int udp_to_closed_port(int af, struct flow *f, struct sockaddr_storage *dst,
                              socklen_t *dstlen)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(af, 0, &ss);
    int fd = socket(af, SOCK_DGRAM, 0);

    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0);
    memset(f, 0, sizeof(*f));
    f->type = EVENT_PACKET_DROP;
    f->family = af == AF_INET ? EVENT_FAMILY_IPV4 : EVENT_FAMILY_IPV6;
    f->protocol = IPPROTO_UDP;
    local_end(fd, f->saddr, &f->sport);
    f->dport = closed_port(af, SOCK_DGRAM);
    *dstlen = loopback(af, f->dport, dst);
    memcpy(f->daddr, f->saddr, 16);
    return fd;
}

static void check_udp_drop(struct capture *c, struct collected *out, int af)
{
    struct sockaddr_storage dst;
    socklen_t dstlen;
    struct flow f;
    int fd = udp_to_closed_port(af, &f, &dst, &dstlen);
    const struct event *e;

    cr_assert_eq(sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, dstlen), 1);
    e = wait_event(c, out, match_drop, &f);
    cr_assert_not_null(e, "no packet_drop event for UDP %u -> %u", f.sport, f.dport);
    cr_assert_not_null(e->u.drop.reason);
    cr_assert_str_eq(e->u.drop.reason, "NO_SOCKET");
    cr_assert_eq(e->cgroup_id, 0, "no socket, so no owner");
    cr_assert_neq(e->u.drop.reason_code, 0);
    cr_assert_not_null(e->u.drop.location);
    cr_assert_not_null(strstr(e->u.drop.location, "+0x"), "location %s", e->u.drop.location);
    assert_timestamp(e);
    close(fd);
}

/* The cgroup v2 id of this process: its directory's inode number. */
static uint64_t own_cgroup_id(void)
{
    char line[4096], path[4200];
    struct stat st;
    FILE *f = fopen("/proc/self/cgroup", "r");

    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) && strncmp(line, "0::", 3) != 0)
        ;
    fclose(f);
    cr_assert_eq(strncmp(line, "0::", 3), 0, "no cgroup v2 line in /proc/self/cgroup");
    line[strcspn(line, "\n")] = '\0';
    snprintf(path, sizeof(path), "/sys/fs/cgroup%s", line + 3);
    if (stat(path, &st) != 0)
        snprintf(path, sizeof(path), "/sys/fs/cgroup/unified%s", line + 3);
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_ino;
}

/*
 * A TCP listener on IPv4 loopback (*lfd) and a client connected to it (returned), not accepted;
 * *f is the client's flow to it, as a packet_drop of its segments would name it.
 */
static int tcp_loopback_pair(int *lfd, struct flow *f)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(AF_INET, 0, &ss);
    int cfd = socket(AF_INET, SOCK_STREAM, 0);

    *lfd = socket(AF_INET, SOCK_STREAM, 0);
    *f = (struct flow){
        .type = EVENT_PACKET_DROP, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP};
    cr_assert(*lfd >= 0 && cfd >= 0);
    cr_assert_eq(bind(*lfd, (struct sockaddr *)&ss, len), 0);
    cr_assert_eq(listen(*lfd, 4), 0);
    local_end(*lfd, f->daddr, &f->dport);
    len = loopback(AF_INET, f->dport, &ss);
    cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
    local_end(cfd, f->saddr, &f->sport);
    return cfd;
}

/*
 * A drop charged to a socket is its owner's: data a client sent on a connection
 * no one accepted, purged (QUEUE_PURGE) when its listener closes. The drop names
 * no process (it runs wherever the kernel was), but its cgroup is the socket's
 * (an unaccepted one's is its listener's), so the pod the socket belongs to.
 */
static void check_tcp_drop_owner(struct capture *c, struct collected *out)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(AF_INET, 0, &ss);
    struct flow f;
    int lfd, cfd = tcp_loopback_pair(&lfd, &f), unacked = 1;
    const struct event *e;

    cr_assert_eq(write(cfd, "ping", 4), 4);
    /* Acknowledged: in the unaccepted socket's receive queue. */
    for (uint64_t end = clock_monotonic_ns() + 5000000000ull;
         unacked > 0 && clock_monotonic_ns() < end; usleep(1000))
        cr_assert_eq(ioctl(cfd, SIOCOUTQ, &unacked), 0);
    cr_assert_eq(unacked, 0, "the data was never acknowledged");
    close(lfd);
    close(cfd);

    e = wait_event(c, out, match_drop, &f);
    cr_assert_not_null(e, "no packet_drop of the unaccepted data %u -> %u", f.sport, f.dport);
    cr_assert_str_eq(e->u.drop.reason, "QUEUE_PURGE");
    cr_assert_eq(e->pid, 0, "a drop names no process");
    cr_assert_eq(e->cgroup_id, own_cgroup_id(), "the drop is the server socket's cgroup's");

    /*
     * A datagram its socket has no room for (SOCKET_RCVBUFF) is not charged to the socket
     * yet: the kernel names the receiving socket beside it (6.10+), and the drop is that
     * socket's cgroup's too.
     */
    struct flow u = {
        .type = EVENT_PACKET_DROP, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_UDP};
    int rfd = socket(AF_INET, SOCK_DGRAM, 0), sfd = socket(AF_INET, SOCK_DGRAM, 0), small = 1;
    char big[1400] = {0};
    cr_assert(rfd >= 0 && sfd >= 0);
    cr_assert_eq(setsockopt(rfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    len = loopback(AF_INET, 0, &ss);
    cr_assert_eq(bind(rfd, (struct sockaddr *)&ss, len), 0);
    local_end(rfd, u.daddr, &u.dport);
    len = loopback(AF_INET, u.dport, &ss);
    cr_assert_eq(connect(sfd, (struct sockaddr *)&ss, len), 0);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(send(sfd, big, sizeof(big), 0), (ssize_t)sizeof(big));
    local_end(sfd, u.saddr, &u.sport);
    e = wait_event(c, out, match_drop, &u);
    cr_assert_not_null(e, "no packet_drop of a datagram over the receive buffer");
    cr_assert_str_eq(e->u.drop.reason, "SOCKET_RCVBUFF");
    cr_assert_eq(e->cgroup_id, own_cgroup_id(), "the drop is the receiving socket's cgroup's");
    close(rfd);
    close(sfd);
}

/*
 * Waits until the socket of local port port in this network namespace is a TIME_WAIT one
 * (/proc/net/tcp: its timer is TIME_WAIT's, 3; its state the substate, FIN_WAIT2 until the
 * peer's FIN).
 */
static void wait_time_wait(uint16_t port)
{
    char line[512], want[16];
    snprintf(want, sizeof(want), ":%04X", port);
    for (uint64_t end = clock_monotonic_ns() + 5000000000ull;; usleep(1000)) {
        FILE *f = fopen("/proc/net/tcp", "r");
        bool found = false;
        cr_assert_not_null(f);
        while (!found && fgets(line, sizeof(line), f)) {
            char local[64], timer[32];
            found = sscanf(line, "%*s %63s %*s %*s %*s %31s", local, timer) == 2 &&
                    strchr(local, ':') && strcmp(strchr(local, ':'), want) == 0 &&
                    strncmp(timer, "03:", 3) == 0;
        }
        fclose(f);
        if (found)
            return;
        cr_assert_lt(clock_monotonic_ns(), end, "no TIME_WAIT socket on port %u", port);
    }
}

/*
 * Not a drop: the end of an ordinary teardown whose server closed first. The client's FIN
 * reaches the server's TIME_WAIT socket, which takes it (and answers its ACK); the kernel
 * then frees it through its drop path with no reason given. A UDP drop sent after it, once the
 * client's socket has seen that ACK, comes after any record of it: none must be there.
 */
static void check_teardown_is_no_drop(struct capture *c, struct collected *out)
{
    struct flow fin;
    int lfd, cfd = tcp_loopback_pair(&lfd, &fin), afd;
    char b;

    afd = accept(lfd, NULL, NULL);
    cr_assert_geq(afd, 0);
    close(afd);
    close(lfd);
    cr_assert_eq(read(cfd, &b, 1), 0, "the server's FIN");
    /* Its ACK now, not delayed into the client's FIN, and the server's socket in TIME_WAIT. */
    int one = 1;
    cr_assert_eq(setsockopt(cfd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one)), 0);
    wait_time_wait(fin.dport);
    cr_assert_eq(shutdown(cfd, SHUT_WR), 0);
    struct tcp_info ti;
    socklen_t tlen = sizeof(ti);
    uint64_t end = clock_monotonic_ns() + 5000000000ull;
    while (getsockopt(cfd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0 && ti.tcpi_state != TCP_CLOSE) {
        cr_assert_lt(clock_monotonic_ns(), end, "the client's FIN was never acknowledged");
        usleep(1000);
        tlen = sizeof(ti);
    }
    close(cfd);

    struct sockaddr_storage dst;
    socklen_t dstlen;
    struct flow marker;
    int ufd = udp_to_closed_port(AF_INET, &marker, &dst, &dstlen);
    cr_assert_eq(sendto(ufd, "x", 1, 0, (struct sockaddr *)&dst, dstlen), 1);
    cr_assert_not_null(wait_event(c, out, match_drop, &marker), "no drop of the marker datagram");
    close(ufd);
    for (size_t i = 0; i < out->n; i++)
        cr_assert(!match_drop(&out->v[i], &fin), "the teardown's FIN reported as a drop (%s at %s)",
                  out->v[i].u.drop.reason, out->v[i].u.drop.location);
}

struct child_match {
    pid_t pid;
    uint8_t type;
};

static bool match_child(const struct event *e, const void *arg)
{
    const struct child_match *m = arg;
    return e->type == m->type && e->pid == (uint32_t)m->pid;
}

static void check_exec_exit(struct capture *c, struct collected *out)
{
    static const char want_args[] = "sh\0-c\0exit 3";
    struct child_match m;
    const struct event *e;
    int status;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", "exit 3", (char *)NULL);
        _exit(127);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 3);

    m = (struct child_match){.pid = pid, .type = EVENT_EXEC};
    e = wait_event(c, out, match_child, &m);
    cr_assert_not_null(e, "no exec event for child %d", pid);
    cr_assert_eq(e->ppid, (uint32_t)getpid());
    cr_assert_str_eq(e->command, "sh");
    cr_assert_str_eq(e->u.exec.filename, "/bin/sh");
    cr_assert_eq(e->u.exec.args_len, sizeof(want_args), "args_len %u", e->u.exec.args_len);
    cr_assert_eq(memcmp(e->u.exec.args, want_args, sizeof(want_args)), 0);
    cr_assert_eq(e->u.exec.args_truncated, 0);
    cr_assert_neq(e->cgroup_id, 0);
    assert_timestamp(e);

    m.type = EVENT_EXIT;
    e = wait_event(c, out, match_child, &m);
    cr_assert_not_null(e, "no exit event for child %d", pid);
    cr_assert_eq(e->ppid, (uint32_t)getpid());
    cr_assert_str_eq(e->command, "sh");
    cr_assert_eq(e->u.exit.exit_code, 3);
    cr_assert_eq(e->u.exit.signal, 0);
    cr_assert_gt(e->u.exit.duration_ns, 0);
    cr_assert_lt(e->u.exit.duration_ns, 5000000000ull);
    assert_timestamp(e);
}

/* IPv4 over IPv6 sockets (v4-mapped) is reported as plain ipv4. */
static void check_tcp_v4_mapped(struct capture *c, struct collected *out)
{
    struct sockaddr_in6 any6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
    struct sockaddr_storage ss;
    int off = 0, lfd = socket(AF_INET6, SOCK_STREAM, 0), cfd = socket(AF_INET6, SOCK_STREAM, 0);
    struct flow conn = {.type = EVENT_CONNECTION,
                        .family = EVENT_FAMILY_IPV4,
                        .protocol = IPPROTO_TCP,
                        .status = EVENT_STATUS_ESTABLISHED};
    struct flow acc;
    uint8_t mapped[16];
    const struct event *e;
    int afd;

    cr_assert(lfd >= 0 && cfd >= 0);
    cr_assert_eq(setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)), 0);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&any6, sizeof(any6)), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    local_end(lfd, mapped, &conn.dport);

    struct sockaddr_in6 *dst = (void *)&ss;
    memset(&ss, 0, sizeof(ss));
    dst->sin6_family = AF_INET6;
    dst->sin6_port = htons(conn.dport);
    cr_assert_eq(inet_pton(AF_INET6, "::ffff:127.0.0.1", &dst->sin6_addr), 1);
    cr_assert_eq(connect(cfd, (struct sockaddr *)dst, sizeof(*dst)), 0);
    afd = accept(lfd, NULL, NULL);
    cr_assert_geq(afd, 0);
    local_end(cfd, mapped, &conn.sport);
    memset(conn.saddr, 0, 16);
    memcpy(conn.saddr, mapped + 12, 4); /* our end is ::ffff:127.0.0.1 too */
    memcpy(conn.daddr, conn.saddr, 16);

    e = wait_event(c, out, match_flow, &conn);
    cr_assert_not_null(e, "no ipv4 connection event for a v4-mapped connect to port %u",
                       conn.dport);
    acc = conn;
    acc.type = EVENT_ACCEPT;
    acc.status = 0;
    e = wait_event(c, out, match_flow, &acc);
    cr_assert_not_null(e, "no ipv4 accept event on a dual-stack listener");
    close(afd);
    close(cfd);
    close(lfd);
}

static void *thread_exit_early(void *arg)
{
    return arg;
}

/* One exit per process however many threads it had; death by signal gives the signal. */
static void check_exit_of_threaded_and_signalled(struct capture *c, struct collected *out)
{
    struct child_match m = {.type = EVENT_EXIT};
    const struct event *e;
    int status;
    pid_t threaded = fork(), killed;

    cr_assert_geq(threaded, 0);
    if (threaded == 0) {
        pthread_t t[3];
        for (int i = 0; i < 3; i++)
            if (pthread_create(&t[i], NULL, thread_exit_early, NULL))
                _exit(100);
        for (int i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        _exit(5);
    }
    killed = fork();
    cr_assert_geq(killed, 0);
    if (killed == 0) {
        raise(SIGTERM);
        _exit(0);
    }
    cr_assert_eq(waitpid(threaded, &status, 0), threaded);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 5);
    cr_assert_eq(waitpid(killed, &status, 0), killed);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);

    m.pid = killed;
    e = wait_event(c, out, match_child, &m);
    cr_assert_not_null(e, "no exit event for the signalled child");
    cr_assert_eq(e->u.exit.signal, SIGTERM);
    cr_assert_eq(e->u.exit.exit_code, 0);

    m.pid = threaded;
    e = wait_event(c, out, match_child, &m);
    cr_assert_not_null(e, "no exit event for the threaded child");
    cr_assert_eq(e->u.exit.exit_code, 5);
    /* Both exits are in; every thread exit would have arrived before the process exit. */
    size_t exits = 0;
    for (size_t i = 0; i < out->n; i++)
        exits += match_child(&out->v[i], &m);
    cr_assert_eq(exits, 1, "%zu exit events for one process with 4 threads", exits);
}

/*
 * A process a signal ends with a core dump says so (core_dumped), as wait() tells its parent;
 * one that dumped none does not. The shell dumps its core in a directory of its own: with a
 * core_pattern that names a file without a directory (the kernel's default, "core"), it lands
 * there and the dump must have happened; another pattern (a pipe to a collector) may or may
 * not take it, and the event must still agree with wait().
 */
static void check_exit_core_dumped(struct capture *c, struct collected *out)
{
    char dir[] = "/tmp/ebpfmon-core-XXXXXX", pattern[256] = "";
    struct child_match m = {.type = EVENT_EXIT};
    const struct event *e;
    int status;
    FILE *f;

    cr_assert_not_null(mkdtemp(dir));
    if ((f = fopen("/proc/sys/kernel/core_pattern", "r"))) {
        if (!fgets(pattern, sizeof(pattern), f))
            pattern[0] = '\0';
        fclose(f);
    }
    bool must_dump = pattern[0] != '|' && pattern[0] != '\0' && strchr(pattern, '/') == NULL;
    pid_t crashed = fork();
    cr_assert_geq(crashed, 0);
    if (crashed == 0) {
        struct rlimit unlimited = {RLIM_INFINITY, RLIM_INFINITY};
        if (chdir(dir) != 0 || setrlimit(RLIMIT_CORE, &unlimited) != 0)
            _exit(100);
        /* A small image to dump: the shell, which sends itself SIGQUIT (core by default). */
        execl("/bin/sh", "sh", "-c", "kill -QUIT $$", (char *)NULL);
        _exit(101);
    }
    cr_assert_eq(waitpid(crashed, &status, 0), crashed);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGQUIT, "status %#x", status);
    if (must_dump)
        cr_assert(WCOREDUMP(status), "no core dumped into %s with core_pattern %s", dir, pattern);
    m.pid = crashed;
    e = wait_event(c, out, match_child, &m);
    cr_assert_not_null(e, "no exit event for the child that dumped core");
    cr_assert_eq(e->u.exit.signal, SIGQUIT);
    cr_assert_eq(e->u.exit.core_dumped, WCOREDUMP(status) ? 1 : 0);

    /* The others of this run: a SIGTERM and normal exits dump nothing. */
    for (size_t i = 0; i < out->n; i++)
        if (out->v[i].type == EVENT_EXIT && out->v[i].pid != (uint32_t)crashed)
            cr_assert_eq(out->v[i].u.exit.core_dumped, 0, "pid %u: core_dumped", out->v[i].pid);

    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.')
            unlinkat(dirfd(d), de->d_name, 0);
    if (d)
        closedir(d);
    rmdir(dir);
}

/* Ids of the BPF programs this process holds open (from /proc/self/fdinfo). */
static size_t our_bpf_objects(uint32_t *prog_ids, size_t max, size_t *others)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    size_t n = 0;

    cr_assert_not_null(d);
    *others = 0;
    while ((de = readdir(d))) {
        char path[300], target[128], line[128];
        ssize_t len;
        FILE *f;

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        if (!strstr(target, "bpf"))
            continue;
        if (strcmp(target, "anon_inode:bpf-prog") != 0) {
            (*others)++; /* maps, links */
            continue;
        }
        snprintf(path, sizeof(path), "/proc/self/fdinfo/%s", de->d_name);
        f = fopen(path, "r");
        if (!f)
            continue;
        while (fgets(line, sizeof(line), f)) {
            unsigned id;
            if (sscanf(line, "prog_id: %u", &id) == 1 && n < max)
                prog_ids[n++] = id;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

/* True once the kernel no longer has program id (freed after the last reference). */
static bool prog_gone(uint32_t id)
{
    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;

    while (clock_monotonic_ns() < deadline) {
        int fd = bpf_prog_get_fd_by_id(id);
        if (fd < 0 && errno == ENOENT)
            return true;
        if (fd >= 0)
            close(fd);
        usleep(10000); /* kernel frees programs after an RCU grace period */
    }
    return false;
}

/* A DNS query from a socket of this process to the test's server, and its answer: a query
 * record with this process, an answer record from the server's port, one socket cookie. */
static void check_dns(struct capture *c, struct collected *out)
{
    static const uint8_t q[] = {0x4d, 0x4d, 1, 0,   0,   1,   0,   0, 0, 0, 0, 0,
                                1,    'a',  4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)dns_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    uint8_t buf[512];
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char comm[16] = "";

    cr_assert_eq(sendto(fd, q, sizeof(q), 0, (struct sockaddr *)&to, sizeof(to)), sizeof(q));
    ssize_t n = recvfrom(dns_fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
    cr_assert_eq(n, sizeof(q));
    buf[2] = 0x81, buf[3] = 0x80;
    cr_assert_eq(sendto(dns_fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl), n);
    cr_assert_eq(recv(fd, buf, sizeof(buf), 0), n);
    close(fd);

    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;
    const struct dns_seen *query = NULL, *answer = NULL;
    while ((!query || !answer) && clock_monotonic_ns() < deadline) {
        capture_poll(c, 50);
        for (size_t i = 0; i < out->ndns; i++) {
            const struct dns_seen *d = &out->dns[i];
            if (d->id != 0x4d4d)
                continue;
            if (!d->answer && d->dport == dns_port)
                query = d;
            if (d->answer && d->sport == dns_port)
                answer = d;
        }
    }
    cr_assert_not_null(query, "no dns query record");
    cr_assert_not_null(answer, "no dns answer record");
    FILE *f = fopen("/proc/self/comm", "r");
    cr_assert(f && fgets(comm, sizeof(comm), f));
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    cr_assert_eq(query->pid, (uint32_t)getpid());
    cr_assert_str_eq(query->command, comm);
    cr_assert_eq(answer->pid, 0, "an answer is nobody's (softirq)");
    cr_assert_eq(query->cookie, answer->cookie);
    cr_assert_neq(query->cookie, 0);
    cr_assert_eq(query->protocol, IPPROTO_UDP);
    cr_assert_eq(query->family, EVENT_FAMILY_IPV4);
    cr_assert_eq(answer->dport, query->sport);
}

/* A TCP connection to the DNS port refused (it is bound, not listening): the error program's
 * record of the socket, with its error and the server's port, and no message. */
static void check_dns_error(struct capture *c, struct collected *out)
{
    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)dns_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_neq(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    cr_assert_eq(errno, ECONNREFUSED);
    close(fd);

    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;
    const struct dns_seen *err = NULL;
    while (!err && clock_monotonic_ns() < deadline) {
        capture_poll(c, 50);
        for (size_t i = 0; i < out->ndns; i++)
            if (out->dns[i].error)
                err = &out->dns[i];
    }
    cr_assert_not_null(err, "no dns error record");
    cr_assert_eq(err->error, ECONNREFUSED);
    cr_assert_eq(err->protocol, IPPROTO_TCP);
    cr_assert_eq(err->dport, dns_port);
    cr_assert_neq(err->cookie, 0);
}

Test(capture, every_event_type_from_real_activity)
{
    struct collected out = {0};
    struct capture_program_info progs[16];
    uint32_t ids[32];
    size_t n, nids, others;
    struct capture *c;

    skip_unless_root();
    c = open_capture(EVENT_TYPES_ALL, 1000, &out);

    n = capture_programs(c, progs, 16);
    cr_assert_eq(n, SLOT_COUNT);
    cr_assert_eq(capture_attached(c), n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(progs[i].status, CAPTURE_PROGRAM_ATTACHED, "%s: %s", progs[i].name,
                     progs[i].error);

    check_tcp_roundtrip(c, &out, AF_INET);
    check_tcp_roundtrip(c, &out, AF_INET6);
    check_tcp_refused(c, &out);
    check_udp_connect(c, &out);
    check_udp_drop(c, &out, AF_INET);
    check_udp_drop(c, &out, AF_INET6);
    check_tcp_drop_owner(c, &out);
    check_teardown_is_no_drop(c, &out);
    check_tcp_v4_mapped(c, &out);
    check_exec_exit(c, &out);
    check_exit_of_threaded_and_signalled(c, &out);
    check_exit_core_dumped(c, &out);

    check_tcp_reset(c, &out);
    check_dns(c, &out);
    check_dns_error(c, &out);

    n = capture_programs(c, progs, 16);
    for (size_t i = 0; i < n; i++) {
        cr_assert_gt(progs[i].events, 0, "%s (%s) reported no events", progs[i].name,
                     progs[i].hook);
        cr_assert_not_null(progs[i].event_type);
        cr_assert_eq(progs[i].drops, 0);
    }

    /* UDP connect and accept share the one sys_exit program; the rest have one each. */
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            seen |= progs[j].prog_id == progs[i].prog_id;
        distinct += !seen;
        cr_assert_neq(progs[i].prog_id, 0, "%s has no kernel id", progs[i].name);
    }
    cr_assert_eq(distinct, SLOT_COUNT - 1, "%zu kernel programs for %zu entries", distinct, n);
    nids = our_bpf_objects(ids, 32, &others);
    cr_assert_geq(nids, distinct, "only %zu program fds open", nids);
    capture_close(c);
    collected_free(&out);

    /* Nothing of ours stays loaded or attached. */
    uint32_t after[32];
    cr_assert_eq(our_bpf_objects(after, 32, &others), 0);
    cr_assert_eq(others, 0, "%zu BPF map/link fds still open after close", others);
    for (size_t i = 0; i < nids; i++)
        cr_assert(prog_gone(ids[i]), "program id %u still loaded after close", ids[i]);
}

Test(capture, loads_only_the_requested_types)
{
    struct collected out = {0};
    struct capture_program_info progs[16];
    struct capture *c;
    size_t n;

    skip_unless_root();
    c = open_capture(EVENT_TYPE_BIT(EVENT_EXEC) | EVENT_TYPE_BIT(EVENT_EXIT), 0, &out);
    n = capture_programs(c, progs, 16);
    for (size_t i = 0; i < n; i++) {
        bool want =
            strcmp(progs[i].event_type, "exec") == 0 || strcmp(progs[i].event_type, "exit") == 0;
        cr_assert_eq(progs[i].status, want ? CAPTURE_PROGRAM_ATTACHED : CAPTURE_PROGRAM_DISABLED,
                     "%s", progs[i].name);
    }
    cr_assert_eq(capture_attached(c), 2);

    /* Network activity produces nothing; the exec still arrives. */
    {
        struct sockaddr_storage ss;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        socklen_t len = loopback(AF_INET, closed_port(AF_INET, SOCK_STREAM), &ss);
        cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), -1);
        close(fd);
    }
    check_exec_exit(c, &out);
    for (size_t i = 0; i < out.n; i++)
        cr_assert(out.v[i].type == EVENT_EXEC || out.v[i].type == EVENT_EXIT, "got a %s event",
                  event_type_name(out.v[i].type));
    capture_close(c);
    collected_free(&out);
}

/* The entry named name in progs. */
static const struct capture_program_info *find_prog(const struct capture_program_info *progs,
                                                    size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(progs[i].name, name) == 0)
            return &progs[i];
    cr_assert_fail("no program %s", name);
    return NULL;
}

/* A TCP connection accepted on loopback, with no event expectations. */
static void tcp_accept_once(void)
{
    struct sockaddr_storage ss;
    socklen_t len = loopback(AF_INET, 0, &ss);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), cfd = socket(AF_INET, SOCK_STREAM, 0), afd;
    uint8_t addr[16];
    uint16_t port;

    cr_assert(lfd >= 0 && cfd >= 0);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&ss, len), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    local_end(lfd, addr, &port);
    len = loopback(AF_INET, port, &ss);
    cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
    afd = accept(lfd, NULL, NULL);
    cr_assert_geq(afd, 0);
    close(afd);
    close(cfd);
    close(lfd);
}

static bool match_type(const struct event *e, const void *arg)
{
    return e->type == *(const enum event_type *)arg;
}

/*
 * The sys_exit program serves UDP connects and accepts; with only one of the
 * two types requested it must emit nothing of the other.
 */
Test(capture, shared_sys_exit_program_emits_only_requested_types)
{
    struct capture_program_info progs[16];
    const struct capture_program_info *conn, *acc;
    struct collected out = {0};
    enum event_type want = EVENT_ACCEPT;
    struct capture *c;
    size_t n;

    skip_unless_root();

    /* Accept only: a UDP connect, then an accept (whose event arrives after the connect's). */
    c = open_capture(EVENT_TYPE_BIT(EVENT_ACCEPT), 0, &out);
    n = capture_programs(c, progs, 16);
    conn = find_prog(progs, n, "tp_btf__sys_exit_connect");
    acc = find_prog(progs, n, "tp_btf__sys_exit_accept");
    cr_assert_eq(acc->status, CAPTURE_PROGRAM_ATTACHED, "%s", acc->error);
    cr_assert_eq(conn->status, CAPTURE_PROGRAM_DISABLED);
    cr_assert_neq(acc->prog_id, 0);
    {
        struct sockaddr_storage ss;
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        socklen_t len = loopback(AF_INET, 5353, &ss);
        cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
        close(fd);
    }
    tcp_accept_once();
    cr_assert_not_null(wait_event(c, &out, match_type, &want), "no accept event");
    for (size_t i = 0; i < out.n; i++)
        cr_assert_eq(out.v[i].type, EVENT_ACCEPT, "got a %s event", event_type_name(out.v[i].type));
    n = capture_programs(c, progs, 16);
    cr_assert_eq(find_prog(progs, n, "tp_btf__sys_exit_connect")->events, 0);
    cr_assert_gt(find_prog(progs, n, "tp_btf__sys_exit_accept")->events, 0);
    capture_close(c);
    collected_free(&out);

    /* Connections only: an accept, then a UDP connect (seen after the accept would be). */
    c = open_capture(EVENT_TYPE_BIT(EVENT_CONNECTION), 0, &out);
    n = capture_programs(c, progs, 16);
    conn = find_prog(progs, n, "tp_btf__sys_exit_connect");
    acc = find_prog(progs, n, "tp_btf__sys_exit_accept");
    cr_assert_eq(conn->status, CAPTURE_PROGRAM_ATTACHED, "%s", conn->error);
    cr_assert_eq(acc->status, CAPTURE_PROGRAM_DISABLED);
    tcp_accept_once();
    check_udp_connect(c, &out);
    for (size_t i = 0; i < out.n; i++)
        cr_assert_eq(out.v[i].type, EVENT_CONNECTION, "got a %s event",
                     event_type_name(out.v[i].type));
    n = capture_programs(c, progs, 16);
    cr_assert_eq(find_prog(progs, n, "tp_btf__sys_exit_accept")->events, 0);
    cr_assert_gt(find_prog(progs, n, "tp_btf__sys_exit_connect")->events, 0);
    capture_close(c);
    collected_free(&out);
}

static bool match_suppressed(const struct event *e, const void *arg)
{
    return e->type == EVENT_PACKET_DROP && e->u.drop.suppressed > 0;
}

Test(capture, drop_storms_are_rate_limited_and_counted)
{
    struct collected out = {0};
    struct capture_program_info progs[16];
    struct sockaddr_storage dst;
    socklen_t dstlen;
    struct flow f;
    struct capture *c;
    const struct event *e;
    uint64_t suppressed = 0;
    size_t ours = 0, n;
    int fd;

    skip_unless_root();
    c = open_capture(EVENT_TYPE_BIT(EVENT_PACKET_DROP), 2, &out);
    fd = udp_to_closed_port(AF_INET, &f, &dst, &dstlen);
    for (int i = 0; i < 200; i++)
        cr_assert_eq(sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, dstlen), 1);
    /* The suppressed count rides on the next drop let through, after a refill. */
    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;
    size_t seen = 0;
    for (e = NULL; !e && clock_monotonic_ns() < deadline;) {
        cr_assert_eq(sendto(fd, "x", 1, 0, (struct sockaddr *)&dst, dstlen), 1);
        capture_poll(c, 100);
        for (; seen < out.n && !e; seen++)
            if (match_suppressed(&out.v[seen], NULL))
                e = &out.v[seen];
    }
    cr_assert_not_null(e, "no drop event carried a suppressed count");

    for (size_t i = 0; i < out.n; i++)
        ours += match_drop(&out.v[i], &f);
    cr_assert_lt(ours, 100, "all %zu drops were emitted despite the limit", ours);
    n = capture_programs(c, progs, 16);
    for (size_t i = 0; i < n; i++)
        if (strcmp(progs[i].name, "tp_btf__kfree_skb") == 0)
            suppressed = progs[i].suppressed;
    cr_assert_geq(suppressed, 100, "suppressed %llu, emitted %zu", (unsigned long long)suppressed,
                  ours);
    close(fd);
    capture_close(c);
    collected_free(&out);
}

/* The statistics of the program named name. */
static struct capture_program_info program_info(struct capture *c, const char *name)
{
    struct capture_program_info progs[16];
    size_t n = capture_programs(c, progs, 16);

    for (size_t i = 0; i < n; i++)
        if (strcmp(progs[i].name, name) == 0)
            return progs[i];
    cr_assert_fail("no program %s", name);
    return (struct capture_program_info){0};
}

/*
 * A UDP connect() sends no packet, so a process makes them as fast as it makes syscalls,
 * faster than the agent reads them when it is short of CPU: that flood takes at most half
 * the ring, its loss counted as its program's drops, and the other records still find room.
 * Here nothing reads the ring while the flood fills it, then a TCP connection is made.
 */
Test(capture, a_udp_connect_flood_leaves_room_for_other_records)
{
    struct collected out = {0};
    struct sockaddr_storage ss;
    socklen_t len = loopback(AF_INET, 5353, &ss);
    struct flow conn = {.type = EVENT_CONNECTION,
                        .family = EVENT_FAMILY_IPV4,
                        .protocol = IPPROTO_TCP,
                        .status = EVENT_STATUS_ESTABLISHED};
    uint64_t deadline = clock_monotonic_ns() + DEADLINE_MS * 1000000ull;
    int fd, lfd, cfd, afd;

    skip_unless_root();
    struct capture *c = open_capture(EVENT_TYPE_BIT(EVENT_CONNECTION), 0, &out);
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    while (program_info(c, "tp_btf__sys_exit_connect").drops == 0) {
        cr_assert_lt(clock_monotonic_ns(), deadline, "the ring never filled");
        for (int i = 0; i < 1000; i++)
            cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
    }
    tcp_pair(AF_INET, &conn, &lfd, &cfd, &afd);
    cr_assert_not_null(wait_event(c, &out, match_flow, &conn),
                       "the TCP connection was lost behind the UDP flood (%" PRIu64 " drops)",
                       program_info(c, "tp_btf__inet_sock_set_state").drops);
    cr_assert_eq(program_info(c, "tp_btf__inet_sock_set_state").drops, 0);
    close(fd);
    close(lfd);
    close(cfd);
    close(afd);
    capture_close(c);
    collected_free(&out);
}

struct proto_match {
    pid_t pid;
    uint8_t protocol;
};

static bool match_connection(const struct event *e, const void *arg)
{
    const struct proto_match *m = arg;
    return e->type == EVENT_CONNECTION && e->pid == (uint32_t)m->pid && e->protocol == m->protocol;
}

/*
 * The process fields of a record are read from the task that connects: a
 * child with its own name, running as nobody, connects over UDP and TCP, and
 * both events name it (pid, parent, uid, command), not the test.
 */
Test(capture, connections_name_the_connecting_task)
{
    struct collected out = {0};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int status;

    skip_unless_root();
    struct capture *c = open_capture(EVENT_TYPE_BIT(EVENT_CONNECTION), 0, &out);
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(srv >= 0 && bind(srv, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
              listen(srv, 4) == 0);
    cr_assert_eq(getsockname(srv, (struct sockaddr *)&sa, &len), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET, SOCK_STREAM, 0);
        if (prctl(PR_SET_NAME, "conn-as-nobody") || setgid(65534) || setuid(65534))
            _exit(2);
        if (connect(u, (struct sockaddr *)&sa, sizeof(sa)) ||
            connect(t, (struct sockaddr *)&sa, sizeof(sa)))
            _exit(3);
        _exit(0);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    for (int i = 0; i < 2; i++) {
        struct proto_match m = {.pid = pid, .protocol = i ? IPPROTO_TCP : IPPROTO_UDP};
        const struct event *e = wait_event(c, &out, match_connection, &m);
        cr_assert_not_null(e, "no %s connection event for child %d", i ? "TCP" : "UDP", pid);
        cr_assert_eq(e->ppid, (uint32_t)getpid());
        cr_assert_eq(e->uid, 65534, "uid %u", e->uid);
        cr_assert_str_eq(e->command, "conn-as-nobody");
        cr_assert_neq(e->cgroup_id, 0);
        cr_assert_eq(e->dport, ntohs(sa.sin_port));
        assert_timestamp(e);
    }
    close(srv);
    capture_close(c);
    collected_free(&out);
}

Test(capture, refuses_without_privileges)
{
    pid_t pid;
    int status;

    skip_unless_root();
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct capture_config cfg = {.event_types = EVENT_TYPES_ALL, .ringbuf_bytes = 1 << 20};
        char err[256] = "";
        struct collected out = {0};

        if (setgid(65534) || setuid(65534))
            _exit(2);
        if (capture_open(&cfg, collect, &out, err, sizeof(err)))
            _exit(3);
        _exit(strstr(err, "needs root or CAP_BPF+CAP_PERFMON") ? 0 : 4);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "child status %d", WEXITSTATUS(status));
}

/* Execs /bin/true with argv and returns the exec event seen for it. */
static const struct event *exec_true(struct capture *c, struct collected *out, char **argv)
{
    struct child_match m = {.type = EVENT_EXEC};
    int status;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        execv("/bin/true", argv);
        _exit(127);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    m.pid = pid;
    return wait_event(c, out, match_child, &m);
}

Test(capture, exec_argv_is_bounded)
{
    struct collected out = {0};
    char *argv[EVENT_ARGC_MAX + 10], long_arg[3000], names[EVENT_ARGC_MAX + 10][8];
    const struct event *e;
    struct capture *c;
    size_t strings = 0;

    skip_unless_root();
    c = open_capture(EVENT_TYPE_BIT(EVENT_EXEC), 0, &out);

    /* More strings than EVENT_ARGC_MAX: the first EVENT_ARGC_MAX are kept. */
    argv[0] = "true";
    for (int i = 1; i < EVENT_ARGC_MAX + 9; i++) {
        snprintf(names[i], sizeof(names[i]), "a%d", i);
        argv[i] = names[i];
    }
    argv[EVENT_ARGC_MAX + 9] = NULL;
    e = exec_true(c, &out, argv);
    cr_assert_not_null(e);
    cr_assert_eq(e->u.exec.args_truncated, 1);
    for (uint32_t i = 0; i < e->u.exec.args_len; i++)
        strings += e->u.exec.args[i] == '\0';
    cr_assert_eq(strings, EVENT_ARGC_MAX);
    cr_assert_eq(e->u.exec.args[e->u.exec.args_len - 1], '\0');
    cr_assert_str_eq(e->u.exec.args, "true");

    /* More bytes than EVENT_ARGS_MAX: cut, still NUL-terminated. */
    memset(long_arg, 'x', sizeof(long_arg) - 1);
    long_arg[sizeof(long_arg) - 1] = '\0';
    argv[1] = long_arg;
    argv[2] = NULL;
    e = exec_true(c, &out, argv);
    cr_assert_not_null(e);
    cr_assert_eq(e->u.exec.args_truncated, 1);
    cr_assert_leq(e->u.exec.args_len, EVENT_ARGS_MAX + 1);
    cr_assert_gt(e->u.exec.args_len, EVENT_ARGS_MAX - 1);
    cr_assert_eq(e->u.exec.args[e->u.exec.args_len - 1], '\0');
    cr_assert_str_eq(e->u.exec.args, "true");
    cr_assert_eq(strspn(e->u.exec.args + 5, "x"), e->u.exec.args_len - 6);

    capture_close(c);
    collected_free(&out);
}

/*
 * A program whose path is longer than the kernel's copy: the first 255
 * bytes and filename_truncated; one that fits exactly (255 bytes) is whole
 * and not flagged.
 */
static const struct event *exec_path(struct capture *c, struct collected *out, const char *path)
{
    struct child_match m = {.type = EVENT_EXEC};
    int status;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        execl(path, "t", (char *)NULL);
        _exit(127);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: status %d", path, status);
    m.pid = pid;
    return wait_event(c, out, match_child, &m);
}

Test(capture, exec_filename_is_bounded_and_flagged)
{
    struct collected out = {0};
    char dir[300], path[600], fit[300];
    const struct event *e;

    skip_unless_root();
    /* /tmp/capture-fn-<pid>/ddd...d/eee...e/t: about 450 bytes. */
    int n = snprintf(dir, sizeof(dir), "/tmp/capture-fn-%d", getpid());
    cr_assert_eq(mkdir(dir, 0700), 0);
    dir[n++] = '/';
    memset(dir + n, 'd', 200);
    dir[n + 200] = '\0';
    cr_assert_eq(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/%0200d", dir, 0);
    cr_assert_eq(mkdir(path, 0700), 0);
    strcat(path, "/t");
    cr_assert_eq(symlink("/bin/true", path), 0);

    struct capture *c = open_capture(EVENT_TYPE_BIT(EVENT_EXEC), 0, &out);
    e = exec_path(c, &out, path);
    cr_assert_not_null(e);
    cr_expect_eq(e->u.exec.filename_truncated, 1);
    cr_expect_eq(strlen(e->u.exec.filename), EVENT_FILENAME_MAX - 1);
    cr_expect_eq(strncmp(e->u.exec.filename, path, EVENT_FILENAME_MAX - 1), 0);

    /* Exactly 255 bytes: /tmp/capture-fn-<pid>/ then a name that fills the rest. */
    n = snprintf(fit, sizeof(fit), "/tmp/capture-fn-%d/", getpid());
    memset(fit + n, 'f', (size_t)(EVENT_FILENAME_MAX - 1 - n));
    fit[EVENT_FILENAME_MAX - 1] = '\0';
    cr_assert_eq(symlink("/bin/true", fit), 0);
    e = exec_path(c, &out, fit);
    cr_assert_not_null(e);
    cr_expect_eq(e->u.exec.filename_truncated, 0);
    cr_expect_str_eq(e->u.exec.filename, fit);

    capture_close(c);
    collected_free(&out);
    unlink(fit);
    unlink(path);
    *strrchr(path, '/') = '\0';
    rmdir(path);
    rmdir(dir);
    *strrchr(dir, '/') = '\0';
    rmdir(dir);
}

/* Opens and closes a capture with stderr in a file; returns what was written there (malloc'd). */
static char *stderr_of_capture(bool verbose)
{
    struct capture_config cfg = {
        .event_types = EVENT_TYPE_BIT(EVENT_EXIT), .ringbuf_bytes = 1u << 20, .verbose = verbose};
    struct collected out = {0};
    char err[256] = "", *text;
    FILE *log = tmpfile();
    int saved = dup(STDERR_FILENO);
    struct capture *c;
    long len;

    cr_assert(log && saved >= 0);
    fflush(stderr);
    cr_assert_geq(dup2(fileno(log), STDERR_FILENO), 0);
    c = capture_open(&cfg, collect, &out, err, sizeof(err));
    capture_close(c);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    cr_assert_not_null(c, "capture_open: %s", err);
    collected_free(&out);

    len = ftell(log);
    cr_assert_geq(len, 0);
    text = calloc(1, (size_t)len + 1);
    cr_assert_not_null(text);
    rewind(log);
    cr_assert_eq(fread(text, 1, (size_t)len, log), (size_t)len);
    fclose(log);
    return text;
}

/* libbpf's debug log only when asked for; a load that works says nothing at all. */
Test(capture, libbpf_debug_log_only_when_verbose)
{
    char *quiet, *verbose;

    skip_unless_root();
    quiet = stderr_of_capture(false);
    cr_assert_str_eq(quiet, "", "a successful load logged: %s", quiet);
    verbose = stderr_of_capture(true);
    cr_assert_not_null(strstr(verbose, "libbpf: loading object 'processes_bpf'"),
                       "no libbpf debug log with verbose: %.400s", verbose);
    free(quiet);
    free(verbose);
}

/* What dns_sender_collect() kept of the first query record of its port. */
struct dns_sender {
    uint16_t port;
    bool seen;
    struct dns_record rec;
};

static int dns_sender_collect(void *ctx, void *data, size_t size)
{
    struct dns_sender *s = ctx;
    const struct dns_record *r = data;

    if (size < DNS_RECORD_SIZE(0) || r->hdr.kind != RECORD_DNS || s->seen ||
        r->direction != DNS_DIR_QUERY || r->dport != s->port)
        return 0;
    memcpy(&s->rec, r, size < sizeof(s->rec) ? size : sizeof(s->rec));
    s->seen = true;
    return 0;
}

/*
 * The dns egress program reads the sending task in one of two ways, chosen
 * before load: plain loads through the task's BTF pointer where the kernel
 * allows it for cgroup_skb programs (here), helper calls elsewhere. Both are
 * loaded here, on the cgroup v2 root, and must name the same sender of a
 * real query: a child with its own name running as nobody.
 */
Test(capture, dns_query_names_its_sender_with_either_reader)
{
    char root[256];

    skip_unless_root();
    cr_assert_eq(cgroup_v2_root(root, sizeof(root)), 0);
    int root_fd = open(root, O_RDONLY | O_DIRECTORY);
    cr_assert(root_fd >= 0, "%s: %s", root, strerror(errno));
    int btf_ok =
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_get_current_task_btf, NULL);
    cr_assert_eq(btf_ok, 1, "this kernel allows bpf_get_current_task_btf in cgroup_skb");
    for (int task_btf = 0; task_btf < 2; task_btf++) {
        struct dns_sender got = {0};
        int port = tu_free_port(), status;
        struct dns_bpf *s = dns_bpf__open();

        cr_assert_not_null(s);
        got.port = (uint16_t)port;
        memset((void *)s->rodata->dns_ports, 0, sizeof(s->rodata->dns_ports));
        ((uint16_t *)s->rodata->dns_ports)[0] = (uint16_t)port;
        s->rodata->sender_task_btf = task_btf;
        bpf_program__set_autoload(s->progs.cgroup_skb__dns_ingress, false);
        cr_assert_eq(dns_bpf__load(s), 0, "task_btf=%d: the verifier refused it", task_btf);
        struct bpf_link *l = bpf_program__attach_cgroup(s->progs.cgroup_skb__dns_egress, root_fd);
        cr_assert_not_null(l, "attach: %s", strerror(errno));
        struct ring_buffer *rb =
            ring_buffer__new(bpf_map__fd(s->maps.events), dns_sender_collect, &got, NULL);
        cr_assert_not_null(rb);

        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            /* A query for "a.test" (header, name, type A, class IN), to a port nobody serves. */
            static const unsigned char q[] = {0x12, 0x34, 1, 0,   0,   1,   0,   0, 0, 0, 0, 0,
                                              1,    'a',  4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
            struct sockaddr_in to = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int u = socket(AF_INET, SOCK_DGRAM, 0);
            if (prctl(PR_SET_NAME, "dns-as-nobody") || setgid(65534) || setuid(65534))
                _exit(2);
            _exit(sendto(u, q, sizeof(q), 0, (struct sockaddr *)&to, sizeof(to)) ==
                          (ssize_t)sizeof(q)
                      ? 0
                      : 3);
        }
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
        /* Records wake no reader (bpf/common.bpf.h): read the ring, as the agent does. */
        for (uint64_t end = tu_mono_ms() + 5000; !got.seen && tu_mono_ms() < end;) {
            ring_buffer__consume(rb);
            if (!got.seen)
                ring_buffer__poll(rb, 10);
        }
        cr_assert(got.seen, "task_btf=%d: no query record", task_btf);
        cr_assert_eq(got.rec.hdr.pid, (uint32_t)pid, "task_btf=%d", task_btf);
        cr_assert_eq(got.rec.hdr.ppid, (uint32_t)getpid(), "task_btf=%d", task_btf);
        cr_assert_eq(got.rec.hdr.uid, 65534, "task_btf=%d: uid %u", task_btf, got.rec.hdr.uid);
        cr_assert_eq(strncmp(got.rec.hdr.comm, "dns-as-nobody", sizeof(got.rec.hdr.comm)), 0,
                     "task_btf=%d: comm %.16s", task_btf, got.rec.hdr.comm);
        cr_assert_neq(got.rec.hdr.cgroup_id, 0);
        cr_assert_eq(got.rec.payload_len, 24, "task_btf=%d", task_btf);
        ring_buffer__free(rb);
        bpf_link__destroy(l);
        dns_bpf__destroy(s);
    }
    close(root_fd);
}

/* The exec and exit records of one process, as processes_collect() found them. */
struct process_records {
    uint32_t pid;
    bool exec_seen, exit_seen;
    struct exec_record exec;
    struct exit_record exit;
};

static int processes_collect(void *ctx, void *data, size_t size)
{
    struct process_records *p = ctx;
    const struct record_hdr *h = data;

    if (size < sizeof(*h) || h->pid != p->pid)
        return 0;
    if (h->kind == RECORD_EXEC && !p->exec_seen && size >= offsetof(struct exec_record, args)) {
        memcpy(&p->exec, data, size < sizeof(p->exec) ? size : sizeof(p->exec));
        p->exec_seen = true;
    } else if (h->kind == RECORD_EXIT && !p->exit_seen && size >= sizeof(p->exit)) {
        memcpy(&p->exit, data, sizeof(p->exit));
        p->exit_seen = true;
    }
    return 0;
}

/*
 * The process programs read the current task through its BTF pointer where
 * the kernel has bpf_get_current_task_btf() (here) and with helper calls
 * before it. Both forms, loaded here in turn, must give the same exec and
 * exit records of a child that runs as nobody and execs /bin/true.
 */
Test(capture, process_records_are_the_same_with_either_task_reader)
{
    struct process_records got[2] = {0};

    skip_unless_root();
    for (int helpers = 0; helpers < 2; helpers++) {
        struct process_records *g = &got[helpers];
        struct processes_bpf *s = processes_bpf__open();
        int status;

        cr_assert_not_null(s);
        s->rodata->task_helpers_only = helpers;
        cr_assert_eq(processes_bpf__load(s), 0, "helpers=%d: the verifier refused it", helpers);
        cr_assert_eq(processes_bpf__attach(s), 0);
        struct ring_buffer *rb =
            ring_buffer__new(bpf_map__fd(s->maps.events), processes_collect, g, NULL);
        cr_assert_not_null(rb);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            char *argv[] = {"true", NULL};
            if (setgid(65534) || setuid(65534))
                _exit(2);
            execv("/bin/true", argv);
            _exit(3);
        }
        g->pid = (uint32_t)pid;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
        for (uint64_t end = tu_mono_ms() + 5000;
             !(g->exec_seen && g->exit_seen) && tu_mono_ms() < end;) {
            ring_buffer__consume(rb);
            if (!(g->exec_seen && g->exit_seen))
                ring_buffer__poll(rb, 10);
        }
        cr_assert(g->exec_seen && g->exit_seen, "helpers=%d: exec %d, exit %d", helpers,
                  g->exec_seen, g->exit_seen);
        for (int k = 0; k < 2; k++) {
            const struct record_hdr *h = k ? &g->exit.hdr : &g->exec.hdr;
            cr_assert_eq(h->ppid, (uint32_t)getpid(), "helpers=%d", helpers);
            cr_assert_eq(h->uid, 65534, "helpers=%d: uid %u", helpers, h->uid);
            cr_assert_eq(strncmp(h->comm, "true", sizeof(h->comm)), 0, "helpers=%d: comm %.16s",
                         helpers, h->comm);
            cr_assert_neq(h->cgroup_id, 0);
        }
        cr_assert_str_eq(g->exec.filename, "/bin/true");
        cr_assert_eq(g->exec.euid, 65534, "helpers=%d: euid %u", helpers, g->exec.euid);
        cr_assert_eq(g->exit.exit_code, 0);
        ring_buffer__free(rb);
        processes_bpf__destroy(s);
    }
    /* The same process tree and cgroup, so the same cgroup id from either form. */
    cr_assert_eq(got[0].exec.hdr.cgroup_id, got[1].exec.hdr.cgroup_id);
    cr_assert_eq(got[0].exit.hdr.cgroup_id, got[1].exec.hdr.cgroup_id);
}

/* ---- io_uring --------------------------------------------------------------------------- */

/* A ring of a few entries, set up with the raw system calls; one request at a time. */
struct uring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static void uring_open(struct uring *u)
{
    struct io_uring_params p = {0};

    u->fd = (int)syscall(__NR_io_uring_setup, 4, &p);
    cr_assert_geq(u->fd, 0, "io_uring_setup: %s (kernel.io_uring_disabled?)", strerror(errno));
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    unsigned char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                             IORING_OFF_SQ_RING);
    unsigned char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                             IORING_OFF_CQ_RING);
    u->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQES);
    cr_assert(sq != MAP_FAILED && cq != MAP_FAILED && u->sqes != MAP_FAILED);
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static void uring_submit(struct uring *u, const struct io_uring_sqe *sqe)
{
    unsigned tail = *u->sq_tail, i = tail & *u->sq_mask;

    u->sqes[i] = *sqe;
    u->sq_array[i] = i;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    cr_assert_eq(syscall(__NR_io_uring_enter, u->fd, 1, 0, 0, NULL, 0), 1, "io_uring_enter: %s",
                 strerror(errno));
}

/* The result of the next completion, waited for. */
static int uring_wait(struct uring *u)
{
    unsigned head = *u->cq_head;

    while (head == __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE))
        cr_assert(syscall(__NR_io_uring_enter, u->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) >= 0 ||
                      errno == EINTR,
                  "io_uring_enter: %s", strerror(errno));
    int res = u->cqes[head & *u->cq_mask].res;
    __atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static bool match_close_of(const struct event *e, const void *arg)
{
    const struct flow *f = arg; /* the client's port, and the role */

    return e->type == EVENT_CLOSE && e->u.close.role == f->status &&
           (e->sport == f->sport || e->dport == f->sport);
}

/*
 * An accept or a UDP connect submitted to an io_uring returns through no accept or connect
 * syscall: its completion is seen instead. Each accept comes back as the same event a
 * syscall's would (the process's own command even from one of the ring's workers, which
 * IOSQE_ASYNC forces), the accepted connection's close names the process, a multishot
 * accept's every connection is an accept event, and a UDP connect is a connection event.
 */
Test(capture, io_uring_accepts_and_udp_connects_are_seen)
{
    struct collected out = {0};
    struct uring u;

    skip_unless_root();
    struct capture *c = open_capture(EVENT_TYPE_BIT(EVENT_CONNECTION) |
                                         EVENT_TYPE_BIT(EVENT_ACCEPT) | EVENT_TYPE_BIT(EVENT_CLOSE),
                                     0, &out);
    uring_open(&u);
    for (int async = 0; async < 2; async++) {
        struct flow acc = {
            .type = EVENT_ACCEPT, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP};
        struct sockaddr_storage ss;
        socklen_t len = loopback(AF_INET, 0, &ss);
        int lfd = socket(AF_INET, SOCK_STREAM, 0), cfd = socket(AF_INET, SOCK_STREAM, 0);

        cr_assert(lfd >= 0 && cfd >= 0);
        cr_assert_eq(bind(lfd, (struct sockaddr *)&ss, len), 0);
        cr_assert_eq(listen(lfd, 4), 0);
        local_end(lfd, acc.daddr, &acc.dport);
        struct io_uring_sqe sqe = {
            .opcode = IORING_OP_ACCEPT, .fd = lfd, .flags = async ? IOSQE_ASYNC : 0};
        uring_submit(&u, &sqe);
        len = loopback(AF_INET, acc.dport, &ss);
        cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
        local_end(cfd, acc.saddr, &acc.sport);
        int afd = uring_wait(&u);
        cr_assert_geq(afd, 0, "io_uring accept: %s", strerror(-afd));

        const struct event *e = wait_event(c, &out, match_flow, &acc);
        cr_assert_not_null(e, "no accept event for an io_uring accept%s (port %u)",
                           async ? " in a worker" : "", acc.dport);
        assert_our_process(e);
        close(afd);
        close(cfd);
        close(lfd);
        struct flow server = {.sport = acc.sport, .status = EVENT_ROLE_SERVER};
        e = wait_event(c, &out, match_close_of, &server);
        cr_assert_not_null(e, "no server-side close for the io_uring accept%s",
                           async ? " in a worker" : "");
        assert_our_process(e);
    }

    /* A multishot accept: one request, a completion per connection (all but the last
     * without their request, see connections.h). */
    {
        struct sockaddr_storage ss;
        socklen_t len = loopback(AF_INET, 0, &ss);
        struct flow acc = {
            .type = EVENT_ACCEPT, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP};
        int lfd = socket(AF_INET, SOCK_STREAM, 0), cfd[2], afd[2];
        cr_assert(lfd >= 0 && bind(lfd, (struct sockaddr *)&ss, len) == 0 && listen(lfd, 4) == 0);
        local_end(lfd, acc.daddr, &acc.dport);
        struct io_uring_sqe sqe = {
            .opcode = IORING_OP_ACCEPT, .fd = lfd, .ioprio = IORING_ACCEPT_MULTISHOT};
        uring_submit(&u, &sqe);
        len = loopback(AF_INET, acc.dport, &ss);
        for (int i = 0; i < 2; i++) {
            cfd[i] = socket(AF_INET, SOCK_STREAM, 0);
            cr_assert_eq(connect(cfd[i], (struct sockaddr *)&ss, len), 0);
            afd[i] = uring_wait(&u);
            cr_assert_geq(afd[i], 0, "multishot accept: %s", strerror(-afd[i]));
        }
        for (int i = 0; i < 2; i++) {
            local_end(cfd[i], acc.saddr, &acc.sport);
            const struct event *e = wait_event(c, &out, match_flow, &acc);
            cr_assert_not_null(e, "no accept event for connection %d of a multishot accept", i);
            assert_our_process(e);
            close(afd[i]);
            close(cfd[i]);
        }
        close(lfd);
    }

    /* More accepts complete than the ring's completion queue holds (8): the rest wait in the
     * kernel's overflow list, and are accepts all the same. */
    {
        enum { N = 20 };
        struct sockaddr_storage ss;
        socklen_t len = loopback(AF_INET, 0, &ss);
        struct flow acc = {
            .type = EVENT_ACCEPT, .family = EVENT_FAMILY_IPV4, .protocol = IPPROTO_TCP};
        int lfd = socket(AF_INET, SOCK_STREAM, 0), cfd[N];
        cr_assert(lfd >= 0 && bind(lfd, (struct sockaddr *)&ss, len) == 0 && listen(lfd, N) == 0);
        local_end(lfd, acc.daddr, &acc.dport);
        for (int i = 0; i < N; i++) {
            struct io_uring_sqe sqe = {.opcode = IORING_OP_ACCEPT, .fd = lfd};
            uring_submit(&u, &sqe);
        }
        len = loopback(AF_INET, acc.dport, &ss);
        for (int i = 0; i < N; i++) {
            cfd[i] = socket(AF_INET, SOCK_STREAM, 0);
            cr_assert_eq(connect(cfd[i], (struct sockaddr *)&ss, len), 0);
        }
        for (int i = 0; i < N; i++) {
            int afd = uring_wait(&u);
            cr_assert_geq(afd, 0, "accept %d: %s", i, strerror(-afd));
        }
        for (int i = 0; i < N; i++) {
            local_end(cfd[i], acc.saddr, &acc.sport);
            const struct event *e = wait_event(c, &out, match_flow, &acc);
            cr_assert_not_null(e, "no accept event for connection %d of %d (completion queue of 8)",
                               i, N);
            assert_our_process(e);
            close(cfd[i]);
        }
        close(lfd);
    }

    /*
     * TCP connects through the ring are the state program's: run by one of the ring's workers
     * (IOSQE_ASYNC), the event still names the process. And each leaves nothing behind for
     * the thread's next connect() syscall: a plain connect that fails before its SYN (no
     * route), on a socket that may well take the ring's socket's memory, is reported.
     */
    for (int i = 0; i < 4; i++) {
        struct flow refused = {.family = EVENT_FAMILY_IPV4,
                               .dport = closed_port(AF_INET, SOCK_STREAM)};
        struct sockaddr_storage ss;
        socklen_t len = loopback(AF_INET, refused.dport, &ss);
        memcpy(refused.daddr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        int t = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_geq(t, 0);
        struct io_uring_sqe sqe = {.opcode = IORING_OP_CONNECT,
                                   .fd = t,
                                   .flags = i % 2 ? IOSQE_ASYNC : 0,
                                   .addr = (uint64_t)(uintptr_t)&ss,
                                   .off = len};
        uring_submit(&u, &sqe);
        cr_assert_eq(uring_wait(&u), -ECONNREFUSED);
        close(t);
        const struct event *e = wait_event(c, &out, match_failed, &refused);
        cr_assert_not_null(e, "no failed connection for an io_uring connect (port %u)",
                           refused.dport);
        assert_our_process(e);

        struct flow unreachable = {.family = EVENT_FAMILY_IPV4, .dport = (uint16_t)(9 + i)};
        struct sockaddr_in mc = {.sin_family = AF_INET, .sin_port = htons(unreachable.dport)};
        inet_pton(AF_INET, "224.0.0.2", &mc.sin_addr);
        memcpy(unreachable.daddr, &mc.sin_addr, 4);
        t = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(t, (struct sockaddr *)&mc, sizeof(mc)), -1);
        cr_assert_eq(errno, ENETUNREACH, "connect to 224.0.0.2: %s", strerror(errno));
        close(t);
        e = wait_event(c, &out, match_failed, &unreachable);
        cr_assert_not_null(e,
                           "round %d: no failed connection for a connect() with no route after "
                           "an io_uring connect",
                           i);
        cr_assert_str_eq(e->u.conn.error, "unreachable");
    }

    /* UDP: a connect through the ring, to a port nothing needs to listen on. */
    struct flow conn = {.type = EVENT_CONNECTION,
                        .family = EVENT_FAMILY_IPV4,
                        .protocol = IPPROTO_UDP,
                        .status = EVENT_STATUS_ATTEMPTED};
    struct sockaddr_storage ss;
    socklen_t len = loopback(AF_INET, closed_port(AF_INET, SOCK_DGRAM), &ss);
    int ufd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert_geq(ufd, 0);
    sockaddr_parts(&ss, conn.daddr, &conn.dport);
    struct io_uring_sqe sqe = {
        .opcode = IORING_OP_CONNECT, .fd = ufd, .addr = (uint64_t)(uintptr_t)&ss, .off = len};
    uring_submit(&u, &sqe);
    cr_assert_eq(uring_wait(&u), 0, "io_uring connect");
    local_end(ufd, conn.saddr, &conn.sport);
    const struct event *e = wait_event(c, &out, match_flow, &conn);
    cr_assert_not_null(e, "no connection event for an io_uring UDP connect (port %u)", conn.dport);
    assert_our_process(e);
    close(ufd);
    close(u.fd);
    capture_close(c);
    collected_free(&out);
}

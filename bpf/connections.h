/*
 * The connection programs, built twice: connections.bpf.c for kernels with
 * the bpf_rdonly_cast kfunc (6.2+), whose sys_exit program reaches the socket
 * behind a file descriptor through BTF pointers (plain loads), and
 * connections_compat.bpf.c (CONNECTIONS_COMPAT) for older kernels (5.8+),
 * which read the same fields with one helper call each. cmd/agent/capture.c
 * picks one at start. Both have the same programs, maps and records.
 */
#ifndef EBPF_MONITOR_BPF_CONNECTIONS_H
#define EBPF_MONITOR_BPF_CONNECTIONS_H

#define IPPROTO_TCP   6
#define IPPROTO_UDP   17
#define IPPROTO_MPTCP 262
#define SOCK_DGRAM    2
#define S_IFMT        00170000
#define S_IFSOCK      0140000

/* errno values the kernel reports on a connect (asm-generic: x86 and arm64 alike). */
#define EPERM         1
#define EINTR         4
#define EEXIST        17
#define EALREADY      114
#define EINPROGRESS   115
#define EACCES        13
#define EADDRNOTAVAIL 99
#define ENETDOWN      100
#define ENETUNREACH   101
#define EHOSTUNREACH  113

/* enum tcp_state values; part of the uapi, stable. */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT    2
#define TCP_CLOSE       7

#if defined(__TARGET_ARCH_x86)
#define NR_CONNECT 42
#define NR_ACCEPT  43
#define NR_ACCEPT4 288
#define TS_COMPAT  0x0002
#elif defined(__TARGET_ARCH_arm64)
#define NR_CONNECT 203
#define NR_ACCEPT  202
#define NR_ACCEPT4 242
#else
#error "syscall numbers for this architecture are missing"
#endif

/* enum tcp_state values; part of the uapi, stable. */
#define TCP_SYN_RECV  3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_LAST_ACK  9
#define TCP_CLOSING   11

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, SOCKETS_MAX);
    __uint(map_flags, BPF_F_NO_PREALLOC); /* memory for the entries held only */
    __type(key, __u64);                   /* struct sock * */
    __type(value, struct sock_life);
} sockets SEC(".maps");

/*
 * The socket each thread's connect() took to SYN_SENT, so the connect's
 * sys_exit can tell a failure the state program reports (after SYN_SENT)
 * from one that happened before any packet (no route): only the latter is
 * reported there. Every connect's exit takes it (connect_thread_take()):
 * left behind by a connect that failed after its SYN, or is still in
 * progress, it would name the next socket given the same memory, whose
 * failure before the SYN would then go unreported. On the thread itself
 * (task local storage, 5.11+): found without a hash lookup, written without
 * a lock, freed with the thread. The compat build (older kernels) keeps it
 * in an LRU keyed by thread id, whose entries live for one syscall and whose
 * size bounds the rest.
 */
#ifndef CONNECTIONS_COMPAT
struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, __u64); /* struct sock * */
} connect_thread SEC(".maps");

/* cur: the current task as a BTF pointer, or NULL (asked for here). */
static __always_inline __u64 *connect_thread_slot(const struct task_struct *cur, bool create)
{
    if (!cur)
        cur = bpf_get_current_task_btf();
    /* A thread that never started a TCP connect has no local storage at all, which one load
     * tells: the connects of such a thread (UDP ones, most often) skip the helper call. */
    if (!create && !cur->bpf_storage)
        return NULL;
    return bpf_task_storage_get(&connect_thread, (struct task_struct *)cur, NULL,
                                create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}
#else
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);   /* thread id */
    __type(value, __u64); /* struct sock * */
} connect_thread SEC(".maps");

static __always_inline __u64 *connect_thread_slot(const struct task_struct *cur, bool create)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    __u64 zero = 0;

    if (create)
        bpf_map_update_elem(&connect_thread, &tid, &zero, BPF_ANY);
    return bpf_map_lookup_elem(&connect_thread, &tid);
}
#endif

/* The socket the current thread's connect() took to SYN_SENT, if any; the slot is cleared. */
static __always_inline __u64 connect_thread_take(const struct task_struct *cur)
{
    __u64 *started = connect_thread_slot(cur, false);
    __u64 sk = 0;

    if (started) {
        sk = *started;
        *started = 0;
    }
    return sk;
}

/* The reset programs write no record: their `events` are the connections they marked. */
static __always_inline void count_marked(__u32 slot)
{
    struct prog_stats *s = slot_stats(slot);

    if (s)
        __sync_fetch_and_add(&s->events, 1);
}

static __always_inline void count_untracked(__u32 slot)
{
    struct prog_stats *s = slot_stats(slot);

    if (s)
        __sync_fetch_and_add(&s->untracked, 1);
}

/*
 * Field access: sk (and the task, regs, file and socket on the way to it) are
 * BTF pointers, so their fields are read with plain loads that the verifier
 * guards (relocated by CO-RE like BPF_CORE_READ), not one helper call each:
 * these programs run on every connect and, for sys_exit, on every syscall.
 */

/* v4 or v6 address: four 32-bit words, network order. */
static __always_inline void copy_addr6(__u8 *dst, const struct in6_addr *a)
{
    __u32 *d = (__u32 *)dst;

    d[0] = a->in6_u.u6_addr32[0];
    d[1] = a->in6_u.u6_addr32[1];
    d[2] = a->in6_u.u6_addr32[2];
    d[3] = a->in6_u.u6_addr32[3];
}

/* Local address/port into s*, remote into d*; swapped when peer_is_source. */
static __always_inline void read_sock_addrs_to(const struct sock *sk, __u16 *family, __u16 *sport,
                                               __u16 *dport, __u8 *saddr, __u8 *daddr,
                                               bool peer_is_source)
{
    __u8 *local = peer_is_source ? daddr : saddr;
    __u8 *remote = peer_is_source ? saddr : daddr;
    __u16 lport = sk->__sk_common.skc_num;
    __u16 rport = bpf_ntohs(sk->__sk_common.skc_dport);

    /* A failed connect has released its port (skc_num = 0) before the CLOSE transition is
     * traced; inet_sport still holds the port the SYN went out from. */
    if (lport == 0)
        lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));

    *family = sk->__sk_common.skc_family;
    if (*family == AF_INET) {
        *(__u32 *)local = sk->__sk_common.skc_rcv_saddr;
        *(__u32 *)remote = sk->__sk_common.skc_daddr;
    } else {
        copy_addr6(local, &sk->__sk_common.skc_v6_rcv_saddr);
        copy_addr6(remote, &sk->__sk_common.skc_v6_daddr);
    }
    *sport = peer_is_source ? rport : lport;
    *dport = peer_is_source ? lport : rport;
}

static __always_inline void read_sock_addrs(const struct sock *sk, struct conn_record *r,
                                            bool peer_is_source)
{
    read_sock_addrs_to(sk, &r->family, &r->sport, &r->dport, r->saddr, r->daddr, peer_is_source);
}

#ifdef CONNECTIONS_COMPAT
/* The same for a socket reached through the file table (a plain address): helper reads. */
static __always_inline void read_sock_addrs_core(const struct sock *sk, struct conn_record *r,
                                                 bool peer_is_source)
{
    __u8 *local = peer_is_source ? r->daddr : r->saddr;
    __u8 *remote = peer_is_source ? r->saddr : r->daddr;
    struct sock_common skc;
    __u16 lport, rport;

    /* One helper read of the fields that sit together at the start of the socket instead
     * of one per field. Member accesses on the copy are CO-RE relocated like any access
     * through a vmlinux.h type; one beyond the copy fails verification, not silently. */
    if (bpf_probe_read_kernel(&skc, sizeof(skc), &sk->__sk_common))
        return;
    lport = skc.skc_num;
    rport = bpf_ntohs(skc.skc_dport);
    r->family = skc.skc_family;
    if (r->family == AF_INET) {
        *(__u32 *)local = skc.skc_rcv_saddr;
        *(__u32 *)remote = skc.skc_daddr;
    } else {
        copy_addr6(local, &skc.skc_v6_rcv_saddr);
        copy_addr6(remote, &skc.skc_v6_daddr);
    }
    r->sport = peer_is_source ? rport : lport;
    r->dport = peer_is_source ? lport : rport;
}
#endif

/*
 * What the programs emit, set by user space before load from the requested
 * event types (EVENT_TYPES): the verifier prunes the branches of a type that
 * was not asked for, so a user who does not want close events pays nothing
 * for them.
 */
const volatile bool emit_tcp_connect = true;
const volatile bool emit_udp_connect = true;
const volatile bool emit_accept = true;
const volatile bool track_close = true;

static __always_inline bool sock_flag(const struct sock *sk, int flag)
{
    return sk->__sk_common.skc_flags & (1ul << flag);
}

/*
 * Payload bytes this side sent, each byte once. tp->bytes_sent counts every
 * transmission TCP tried, also one that never left the host (a full qdisc, a
 * shaper, a netfilter drop on the way out): TCP sends those bytes again as new
 * data, not as a retransmission, so bytes_retrans does not take them out. The
 * sequence space is exact: snd_nxt moves only past what left, so bytes_acked
 * plus what is in flight is all that was sent, less the SYN (an active
 * opener's bytes_acked counts it) and this side's FIN once sent (queued in
 * FIN_WAIT1, FIN_WAIT2, CLOSING and LAST_ACK, the state still in place at the
 * change to TCP_CLOSE; sent when snd_nxt reached write_seq). At
 * tcp_destroy_sock that state is gone and a FIN is not known: the smaller of
 * the two counts is taken, exact unless bytes also failed to leave.
 */
static __always_inline __u64 life_bytes_sent(const struct sock *sk, const struct tcp_sock *tp,
                                             __u8 role)
{
    __u64 tried = tp->bytes_sent - tp->bytes_retrans;
    __u64 seq = tp->bytes_acked + (__u32)(tp->snd_nxt - tp->snd_una);
    __u8 state = sk->__sk_common.skc_state;

    if (role != CLOSE_ROLE_SERVER && seq)
        seq--;
    if ((state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
         state == TCP_LAST_ACK) &&
        tp->snd_nxt == tp->write_seq && seq)
        seq--;
    return seq < tried ? seq : tried;
}

/*
 * The close snapshot, taken when the socket reaches TCP_CLOSE: a close by
 * the application with SO_LINGER 0 or unread data (tcp_disconnect) zeroes
 * the addresses and counters right after this transition.
 */
static __always_inline void life_snapshot(const struct sock *sk, struct sock_life *l, __u64 now)
{
    struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
    __u16 family;

    read_sock_addrs_to(sk, &family, &l->sport, &l->dport, l->saddr, l->daddr,
                       l->role == CLOSE_ROLE_SERVER);
    l->family = family;
    l->closed_ns = now;
    if (tp) {
        l->bytes_sent = life_bytes_sent(sk, tp, l->role);
        /* bytes_received counts sequence space, so a FIN the peer sent (SOCK_DONE) is one. */
        l->bytes_received = tp->bytes_received;
        if (sock_flag(sk, bpf_core_enum_value(enum sock_flags, SOCK_DONE)) && l->bytes_received)
            l->bytes_received--;
        l->retransmits = tp->total_retrans;
        l->srtt_us = tp->srtt_us >> 3;
    } else {
        l->bytes_sent = l->bytes_received = 0;
        l->retransmits = l->srtt_us = 0;
    }
}

/*
 * The entry's connection is over (written, failed, or its socket gone):
 * kept for the next socket at this address, reaped by the agent after
 * SOCKETS_REAP_AGE_NS (see struct sock_life).
 */
static __always_inline void life_bury(struct sock_life *l, __u64 now)
{
    l->closed_ns = now;
    l->phase = LIFE_DEAD;
}

/* Writes the close record of a connection and stops following it. */
static __always_inline void life_emit(struct sock_life *l)
{
    struct close_record *r = record_reserve(SLOT_TCP_DESTROY_SOCK, sizeof(*r));

    if (r) {
        r->hdr = l->owner;
        r->hdr.kind = RECORD_CLOSE;
        r->hdr.ts_ns = l->closed_ns;
        r->family = l->family;
        r->role = l->role;
        r->reset = l->reset;
        r->sport = l->sport;
        r->dport = l->dport;
        __builtin_memcpy(r->saddr, l->saddr, sizeof(r->saddr));
        __builtin_memcpy(r->daddr, l->daddr, sizeof(r->daddr));
        r->retransmits = l->retransmits;
        r->srtt_us = l->srtt_us;
        /* 0: established before the agent followed it (iter__seed_sockets), unknown. */
        r->duration_ns = l->established_ns ? l->closed_ns - l->established_ns : 0;
        r->bytes_sent = l->bytes_sent;
        r->bytes_received = l->bytes_received;
        record_submit(r);
    }
    life_bury(l, l->closed_ns);
}

/*
 * Begins following an established connection. The owner is already in
 * place for a client (from its connect) and zero for a server connection
 * until a process accepts it.
 */
static __always_inline void life_start(struct sock_life *l, __u64 now, __u8 role)
{
    l->established_ns = now;
    l->closed_ns = 0;
    l->role = role;
    l->reset = CLOSE_RESET_NONE;
    l->phase = LIFE_FOLLOWING;
}

/*
 * At TCP_CLOSE. The close record is written now when nothing more can
 * happen to the connection: the application no longer holds the socket
 * (SOCK_DEAD), or the peer reset it, or the kernel gave up on it (sk_err).
 * Otherwise the application is closing it itself, possibly with a reset that
 * follows this transition (SO_LINGER 0, unread data): the record waits for
 * tcp_destroy_sock, which comes at the end of that same close. A server
 * connection still in its listener's queue (no owner yet, not SOCK_DEAD)
 * waits too: accept() still returns it, reset or not (a client that connects
 * and resets at once, as a load balancer's health check does), and the
 * process that takes it owns its record, written when it closes it (or
 * when the listener goes with it still queued). A connection dissolved with
 * connect(AF_UNSPEC) (tcp_disconnect: TCP_CLOSE, no tcp_destroy_sock) whose
 * socket connects again is written at that connect.
 */
static __always_inline void life_closed(const struct sock *sk, struct sock_life *l, __u64 now)
{
    bool dead;

    if (l->phase != LIFE_FOLLOWING || l->closed_ns)
        return;
    life_snapshot(sk, l, now);
    dead = sock_flag(sk, bpf_core_enum_value(enum sock_flags, SOCK_DEAD));
    if (!dead && l->role == CLOSE_ROLE_SERVER && !l->owner.kind)
        return;
    if (dead || l->reset == CLOSE_RESET_RECEIVED || sk->sk_err)
        life_emit(l);
}

/* Inserts a socket's entry; false (counted in slot) when the map is full. */
static __always_inline bool sock_life_insert(__u64 key, const struct sock_life *l, __u32 slot)
{
    if (bpf_map_update_elem(&sockets, &key, l, BPF_ANY) == 0)
        return true;
    count_untracked(slot);
    return false;
}

/*
 * The addresses at CLOSE->SYN_SENT, kept in the close snapshot's fields (unused while
 * connecting) for an outcome seen only after the socket lost them: a failed blocking
 * connect() ends with tcp_disconnect, which zeroes the destination port and an unbound
 * source address before its error report (see connect_outcome). The source port is not
 * chosen yet; the socket keeps it (inet_sport). A v4-mapped IPv6 socket has only its IPv4
 * source at this point.
 */
static __always_inline void connect_keep_dest(const struct sock *sk, struct sock_life *l)
{
    __u16 family;

    read_sock_addrs_to(sk, &family, &l->sport, &l->dport, l->saddr, l->daddr, false);
    l->family = family;
    if (family == AF_INET6) {
        __u32 *s = (__u32 *)l->saddr, *d = (__u32 *)l->daddr;

        if (d[0] == 0 && d[1] == 0 && d[2] == bpf_htonl(0xffff)) {
            s[0] = s[1] = 0;
            s[2] = bpf_htonl(0xffff);
            s[3] = sk->__sk_common.skc_rcv_saddr;
        }
    }
}

/*
 * The record of a failed connect whose outcome waited (LIFE_CONNECT_FAILED): from its
 * entry, the outcome's time in closed_ns and the addresses as connect_outcome() kept them.
 */
static __always_inline void connect_failed_record(struct sock_life *l, __u32 err)
{
    struct conn_record *r = record_reserve(SLOT_INET_SOCK_SET_STATE, sizeof(*r));

    if (r) {
        r->hdr = l->owner;
        r->hdr.ts_ns = l->closed_ns;
        r->family = l->family;
        r->protocol = IPPROTO_TCP;
        r->status = CONN_FAILED;
        r->sport = l->sport;
        r->dport = l->dport;
        __builtin_memcpy(r->saddr, l->saddr, sizeof(r->saddr));
        __builtin_memcpy(r->daddr, l->daddr, sizeof(r->daddr));
        r->latency_ns = l->closed_ns - l->owner.ts_ns;
        r->error = err;
        r->_pad = 0;
        record_submit(r);
    }
    life_bury(l, l->closed_ns);
}

#ifndef CONNECTIONS_COMPAT
#define PF_IO_WORKER 0x00000010
/* A record made in one of io_uring's threads (iou-wrk-N, iou-sqp-N) takes its process's command. */
#define IO_WORKER_COMM(io_worker, h)                                                               \
    do {                                                                                           \
        struct task_struct *t_ = bpf_get_current_task_btf();                                       \
        if ((io_worker) && (t_->flags & PF_IO_WORKER))                                             \
            hdr_comm_btf((h), t_->group_leader);                                                   \
    } while (0)
#else
#define IO_WORKER_COMM(io_worker, h) ((void)(io_worker))
#endif

/* CLOSE->SYN_SENT, in the connecting task. An entry already at this address (a dead one, most
 * often) is taken over in place. */
static __always_inline void connect_started(const struct sock *sk, __u64 key)
{
    struct sock_life *prev = bpf_map_lookup_elem(&sockets, &key);
    struct sock_life l = {};
    __u64 *started;

    if (!task_captured())
        return;

    /* A connection this socket had before (dissolved, see life_closed) is over, and so is a
     * failed connect still waiting for its errno (connect_outcome). */
    if (track_close && prev && prev->phase == LIFE_FOLLOWING && prev->closed_ns)
        life_emit(prev);
    if (prev && prev->phase == LIFE_CONNECT_FAILED)
        connect_failed_record(prev, 0);
    if (prev) {
        record_hdr_current(&prev->owner, RECORD_CONNECT);
        IO_WORKER_COMM(true, &prev->owner);
        prev->phase = LIFE_CONNECTING;
        prev->connect_error = 0;
        connect_keep_dest(sk, prev);
    } else {
        record_hdr_current(&l.owner, RECORD_CONNECT);
        IO_WORKER_COMM(true, &l.owner);
        l.phase = LIFE_CONNECTING;
        connect_keep_dest(sk, &l);
        if (!sock_life_insert(key, &l, SLOT_INET_SOCK_SET_STATE))
            return;
    }
    if (emit_tcp_connect) {
        started = connect_thread_slot(NULL, true);
        if (started)
            *started = key;
    }
}

/*
 * Why a connect failed. The kernel sets sk_err before the state change:
 * ECONNREFUSED (RST), ETIMEDOUT, EHOSTUNREACH (ICMP). An ICMP error that
 * arrives while the application holds the socket (a firewall's reject,
 * answered during the connect call itself) is kept in sk_err_soft and
 * reported with the socket still in SYN_SENT; a non-blocking application
 * reads it (SO_ERROR, which clears it) and closes the socket, which ends the
 * connect with no error left on it. The error report (see below) kept it in
 * the entry.
 */
static __always_inline __u32 connect_error(const struct sock *sk, const struct sock_life *l)
{
    int err = sk->sk_err;

    if (!err)
        err = l->connect_error;
    if (!err)
        err = sk->sk_err_soft;
    return err;
}

/*
 * SYN_SENT->ESTABLISHED or ->CLOSE: the connect's outcome. A failure with no error left
 * on the socket is one whose error the connect()'s caller has taken already (woken by the
 * change, on another CPU, before a late report: the state program's run skipped, see
 * inet_sk_error_report) or one dissolved or abandoned by the application: its record waits
 * for the connect()'s exit, which says the errno (connect_failed_exit()), or else for the
 * socket's next connect or its end (no error: ECONNABORTED, as the kernel says then). Only
 * with close events, whose tcp_destroy_sock program sees that end.
 */
static __always_inline void connect_outcome(const struct sock *sk, __u64 key, int newstate)
{
    struct sock_life *l = bpf_map_lookup_elem(&sockets, &key);
    struct conn_record *r;
    __u64 now;

    if (!l || l->phase != LIFE_CONNECTING)
        return; /* connect started before we attached, or untracked */
    now = bpf_ktime_get_boot_ns();
    if (track_close && emit_tcp_connect && l->owner.ts_ns && newstate == TCP_CLOSE &&
        !connect_error(sk, l)) {
        if (sk->__sk_common.skc_dport)
            connect_keep_dest(sk, l); /* the source port is chosen by now */
        l->closed_ns = now;
        l->phase = LIFE_CONNECT_FAILED;
        return;
    }
    if (emit_tcp_connect && l->owner.ts_ns) { /* 0: started before the attach (seeded) */
        r = record_reserve(SLOT_INET_SOCK_SET_STATE, sizeof(*r));
        if (r) {
            r->hdr = l->owner;
            r->hdr.ts_ns = now;
            r->protocol = IPPROTO_TCP;
            r->status = newstate == TCP_ESTABLISHED ? CONN_ESTABLISHED : CONN_FAILED;
            r->latency_ns = now - l->owner.ts_ns;
            r->error = newstate == TCP_CLOSE ? connect_error(sk, l) : 0;
            r->_pad = 0;
            read_sock_addrs(sk, r, false);
            if (r->dport == 0) {
                /* After tcp_disconnect: the addresses kept at SYN_SENT (connect_keep_dest). */
                r->family = l->family;
                r->dport = l->dport;
                __builtin_memcpy(r->saddr, l->saddr, sizeof(r->saddr));
                __builtin_memcpy(r->daddr, l->daddr, sizeof(r->daddr));
            }
            record_submit(r);
        }
    }
    if (track_close && newstate == TCP_ESTABLISHED)
        life_start(l, now, CLOSE_ROLE_CLIENT);
    else
        life_bury(l, now);
}

/*
 * A connect whose entry still waits for its outcome when its socket closes from past its
 * handshake (not from SYN_SENT, connect_outcome()'s case): its SYN_SENT->ESTABLISHED was not
 * seen. The kernel skipped the state program then (softirq over its run in a task on the same
 * CPU, counted in its recursion misses), or the seeding iterator read SYN_SENT just before the
 * change and wrote the entry after it. The connection record is lost with the skipped run; the
 * close is still written, as a client's, with no duration (its start unknown).
 */
static __always_inline void life_outcome_unseen(struct sock_life *l)
{
    life_start(l, 0, CLOSE_ROLE_CLIENT);
}

/* A socket this program starts following: TCP over IPv4 or IPv6. */
static __always_inline bool sock_is_inet_tcp(const struct sock *sk)
{
    __u16 family;

    if (sk->sk_protocol != IPPROTO_TCP)
        return false;
    family = sk->__sk_common.skc_family;
    return family == AF_INET || family == AF_INET6;
}

/*
 * Decided on the states first, which are arguments: most transitions
 * (LISTEN->SYN_RECV, the FIN states) are none of ours and return without
 * reading the socket. Only a socket that is about to get a `sockets` entry
 * is checked for TCP over IP; later transitions find that entry or nothing.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_btf__inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
    __u64 key = (__u64)sk;
    struct sock_life *l;

    if (newstate == TCP_SYN_SENT) {
        if (sock_is_inet_tcp(sk))
            connect_started(sk, key);
        return 0;
    }
    if (oldstate == TCP_SYN_SENT) {
        if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE)
            connect_outcome(sk, key, newstate);
        return 0;
    }
    /*
     * A connect that met its peer's SYN went SYN_SENT->SYN_RECV, and ends from there: a
     * simultaneous open, or a socket connected to its own address and port. Only a connect's
     * entry is connecting; to ESTABLISHED, only a socket with a struct socket is looked up
     * (still held by its application, where a server's new connection has none until
     * accept(); one taken before its handshake ends, TCP Fast Open's, has no connecting
     * entry). To CLOSE, the application may have closed it already (orphaned, no struct socket).
     */
    if (oldstate == TCP_SYN_RECV &&
        (newstate == TCP_CLOSE || (newstate == TCP_ESTABLISHED && sk->sk_socket))) {
        l = bpf_map_lookup_elem(&sockets, &key);
        if (l && l->phase == LIFE_CONNECTING) {
            connect_outcome(sk, key, newstate);
            return 0;
        }
    }
    if (!track_close)
        return 0;
    if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
        struct sock_life s = {};

        if (!sock_is_inet_tcp(sk) || !sock_captured(sk))
            return 0;
        /* A new server connection: its owner stays zero until a process accepts it. One
         * accepted before its handshake ended (TCP Fast Open: queued with the SYN's data) has
         * its owner and no start yet (life_accepted); it starts now. */
        l = bpf_map_lookup_elem(&sockets, &key);
        if (l && l->phase == LIFE_FOLLOWING && l->owner.kind && !l->established_ns) {
            l->established_ns = bpf_ktime_get_boot_ns();
        } else if (l) {
            __builtin_memset(&l->owner, 0, sizeof(l->owner));
            life_start(l, bpf_ktime_get_boot_ns(), CLOSE_ROLE_SERVER);
        } else {
            life_start(&s, bpf_ktime_get_boot_ns(), CLOSE_ROLE_SERVER);
            sock_life_insert(key, &s, SLOT_TCP_DESTROY_SOCK);
        }
    } else if (newstate == TCP_CLOSE) {
        l = bpf_map_lookup_elem(&sockets, &key);
        if (l && l->phase == LIFE_CONNECTING)
            life_outcome_unseen(l);
        if (l)
            life_closed(sk, l, bpf_ktime_get_boot_ns());
    }
    return 0;
}

/*
 * The kernel runs a tracing program at most once at a time per CPU: a state
 * change in softirq that comes in over the state program's run in process
 * context (a connect, a close) is skipped, counted in the program's
 * recursion misses (`missed` in /api/programs). A socket the kernel gave up
 * on (refused, timed out, unreachable, reset) is reported here too, after
 * its change to TCP_CLOSE, while the application still holds it: when the
 * state program missed that change, this runs it. Only socket errors come
 * here (a refused or failed connect, a reset): a connection closed with a FIN
 * costs it nothing. Not in the compat build: older kernels may lack the
 * tracepoint.
 */
#ifndef CONNECTIONS_COMPAT
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(tp_btf__inet_sk_error_report, const struct sock *sk)
{
    __u64 key = (__u64)sk;
    struct sock_life *l;

    if (!sock_is_inet_tcp(sk))
        return 0;
    l = bpf_map_lookup_elem(&sockets, &key);
    if (!l)
        return 0;
    if (sk->__sk_common.skc_state != TCP_CLOSE) {
        /* Still connecting: the error may be read and cleared before the connect ends. */
        if (l->phase == LIFE_CONNECTING) {
            int err = sk->sk_err;

            if (!err)
                err = sk->sk_err_soft;
            if (err)
                l->connect_error = err;
        }
        return 0;
    }
    if (l->phase == LIFE_CONNECTING)
        connect_outcome(sk, key, TCP_CLOSE);
    else if (track_close)
        life_closed(sk, l, bpf_ktime_get_boot_ns()); /* done already unless missed */
    return 0;
}
#endif

/* The end of a socket: a close record still waiting (see life_closed) is written now. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tp_btf__tcp_destroy_sock, struct sock *sk)
{
    __u64 key = (__u64)sk;
    struct sock_life *l = bpf_map_lookup_elem(&sockets, &key);

    if (!l || l->phase == LIFE_DEAD)
        return 0;
    if (l->phase == LIFE_CONNECT_FAILED) {
        connect_failed_record(l, 0); /* no connect() returned its errno */
        return 0;
    }
    if (l->phase == LIFE_CONNECTING) {
        struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

        /* Both its outcome and its TCP_CLOSE unseen, yet a SYN-ACK came (an RTT sample,
         * which a connect that failed cannot have): it was established. */
        if (tp && tp->srtt_us)
            life_outcome_unseen(l);
    }
    if (l->phase != LIFE_FOLLOWING) {
        life_bury(l, bpf_ktime_get_boot_ns()); /* destroyed while connecting */
        return 0;
    }
    if (!l->closed_ns)
        life_snapshot(sk, l, bpf_ktime_get_boot_ns());
    life_emit(l);
    return 0;
}

/*
 * Connections established (or connecting) before the programs were attached: their state
 * changes to ESTABLISHED (or SYN_SENT) were not seen, so nothing follows them to their close. The
 * agent runs this iterator right after attaching (cmd/agent/capture.c) over every file of every
 * process, twice. The first pass notes every listening port (with its network namespace); the
 * second gives each TCP socket a process holds that is past its handshake and not yet
 * closed an entry as if its start had been seen, owned by that process (the first one
 * found when several share it), without a start time: its close record has no duration
 * (a socket still in SYN_SENT: a connecting entry, below). A socket that has an entry
 * already (established since the attach) keeps it. Its role:
 * an accepted socket is a copy of its listener's (sk_clone_lock), so it carries the
 * listener's accept backlog, which a connecting socket never has; an accepted socket
 * whose listener said backlog 0 is found by its port, which a listener still holds.
 */
#ifndef CONNECTIONS_COMPAT
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN     10

/* A listening port: its network namespace (inode number) and port. */
struct listener_key {
    __u32 netns;
    __u32 port;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct listener_key);
    __type(value, __u8);
} seed_listeners SEC(".maps");

/* Set by the agent between the passes (the .bss map). */
__u32 seed_pass;           /* 0: listeners, 1: connections */
__u64 sockets_seeded;      /* entries made */
__u64 sockets_seed_full;   /* sockets not followed: the map was full */
__u64 seed_listeners_full; /* listening ports not noted: their map was full */

static __always_inline struct listener_key listener_of(const struct sock *sk)
{
    struct listener_key k = {.netns = sk->__sk_common.skc_net.net->ns.inum,
                             .port = sk->__sk_common.skc_num};
    return k;
}

SEC("iter/task_file")
int iter__seed_sockets(struct bpf_iter__task_file *ctx)
{
    struct task_struct *task = ctx->task;
    struct file *file = ctx->file;
    struct sock_life l = {};
    struct listener_key lk;
    struct socket *sock;
    struct sock *sk;
    __u8 one = 1;
    __u8 role;
    __u64 key;
    int state, err;

    if (!task || !file || !track_close)
        return 0;
    sock = bpf_sock_from_file(file);
    if (!sock)
        return 0;
    sk = sock->sk;
    if (!sk || !sock_is_inet_tcp(sk))
        return 0;
    state = sk->__sk_common.skc_state;
    if (seed_pass == 0) {
        if (state == TCP_LISTEN) {
            lk = listener_of(sk);
            if (bpf_map_update_elem(&seed_listeners, &lk, &one, BPF_ANY))
                seed_listeners_full++;
        }
        return 0;
    }
    if (state != TCP_SYN_SENT && state != TCP_ESTABLISHED && state != TCP_FIN_WAIT1 &&
        state != TCP_FIN_WAIT2 && state != TCP_CLOSE_WAIT && state != TCP_LAST_ACK &&
        state != TCP_CLOSING)
        return 0;
    role = CLOSE_ROLE_CLIENT;
    lk = listener_of(sk);
    if (state != TCP_SYN_SENT &&
        (sk->sk_max_ack_backlog || bpf_map_lookup_elem(&seed_listeners, &lk)))
        role = CLOSE_ROLE_SERVER;
    /* As when they are seen live: a server connection goes by its socket's cgroup (its
     * listener's), a client one by the task's, here the one holding it. */
    if (role == CLOSE_ROLE_SERVER ? !sock_captured(sk) : !cgroup_captured(task->cgroups->dfl_cgrp))
        return 0;
    l.owner.cgroup_id = task_cgroup_id_btf(task);
    hdr_task_btf(&l.owner, task);
    if (state == TCP_SYN_SENT) {
        /* Still connecting: followed from its outcome like a connect seen live, except that
         * its start was not seen (owner.ts_ns 0), so it makes no connection record. */
        l.owner.kind = RECORD_CONNECT;
        l.phase = LIFE_CONNECTING;
        connect_keep_dest(sk, &l);
    } else {
        l.owner.kind = RECORD_CLOSE;
        life_start(&l, 0, role);
    }
    key = (__u64)sk;
    err = bpf_map_update_elem(&sockets, &key, &l, BPF_NOEXIST);
    if (err == 0)
        sockets_seeded++;
    else if (err != -EEXIST)
        sockets_seed_full++;
    return 0;
}
#endif

/*
 * A server connection's owner: the process that accepted it (its header, taken once for
 * the accept record too). A connection with no entry to follow it (or only a dead one of
 * an earlier socket at its address) was established before the programs were attached and
 * waited in its listener's queue, held by no process at the start, or its ESTABLISHED was
 * skipped (recursion, `missed`): it is followed from here, without a start time. state is
 * the socket's; a connection the peer ended before the accept is left alone.
 */
static __always_inline void life_accepted(const struct sock *sk, int state,
                                          const struct record_hdr *h)
{
    __u64 key = (__u64)sk;
    struct sock_life *l = bpf_map_lookup_elem(&sockets, &key);
    struct sock_life s = {};

    if (l && l->phase == LIFE_FOLLOWING) {
        if (!l->owner.kind) {
            l->owner = *h;
            l->owner.kind = RECORD_CLOSE;
        }
        return;
    }
    if ((l && l->phase != LIFE_DEAD) || state == TCP_CLOSE || !sock_captured(sk))
        return;
    s.owner = *h;
    s.owner.kind = RECORD_CLOSE;
    life_start(&s, 0, CLOSE_ROLE_SERVER);
    if (l)
        *l = s;
    else
        bpf_map_update_elem(&sockets, &key, &s, BPF_NOEXIST);
}

static __always_inline void life_mark_reset(const struct sock *sk, __u8 reset, __u32 slot)
{
    __u64 key = (__u64)sk;
    struct sock_life *l = bpf_map_lookup_elem(&sockets, &key);

    if (l && l->phase == LIFE_FOLLOWING && l->reset == CLOSE_RESET_NONE) {
        l->reset = reset;
        count_marked(slot);
    }
}

/* Only the first argument: the later ones changed between kernels. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tp_btf__tcp_send_reset, const struct sock *sk)
{
    if (sk)
        life_mark_reset(sk, CLOSE_RESET_SENT, SLOT_TCP_SEND_RESET);
    return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tp_btf__tcp_receive_reset, struct sock *sk)
{
    life_mark_reset(sk, CLOSE_RESET_RECEIVED, SLOT_TCP_RECEIVE_RESET);
    return 0;
}

#if defined(__TARGET_ARCH_arm64)
struct pt_regs___arm64 {
    int syscallno;
} __attribute__((preserve_access_index));
#endif

#ifndef CONNECTIONS_COMPAT
/* Casts an address read from memory to a BTF pointer, so its fields are plain loads. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/*
 * The syscall number of a sys_exit, or -1 for 32-bit compat tasks (other numbering). For
 * a connect or an accept, *cur is set to the current task (a BTF pointer), taken once for
 * the rest of the run; other syscalls return without it.
 */
static __always_inline long syscall_nr(struct pt_regs *regs, const struct task_struct **cur)
{
#if defined(__TARGET_ARCH_x86)
    long nr = regs->orig_ax;

    /* Checked second: most syscalls are neither connect nor accept. */
    if (nr == NR_CONNECT || nr == NR_ACCEPT || nr == NR_ACCEPT4) {
        *cur = bpf_get_current_task_btf();
        if ((*cur)->thread_info.status & TS_COMPAT)
            return -1;
    }
    return nr;
#else
    long nr = BPF_CORE_READ((struct pt_regs___arm64 *)regs, syscallno);

    if (nr == NR_CONNECT || nr == NR_ACCEPT || nr == NR_ACCEPT4)
        *cur = bpf_get_current_task_btf();
    return nr;
#endif
}

/* The socket of a file (a BTF pointer), or NULL when it is not a socket. */
static __always_inline struct sock *file_sock(struct file *file)
{
    struct socket *sock;

    if ((file->f_inode->i_mode & S_IFMT) != S_IFSOCK)
        return NULL;
    sock = bpf_rdonly_cast(file->private_data, bpf_core_type_id_kernel(struct socket));
    return sock ? sock->sk : NULL;
}

/* The socket behind fd in the current task (cur, or NULL: asked for), or NULL when fd is not
 * a socket. */
static __always_inline struct sock *fd_sock(const struct task_struct *cur, long fd)
{
    const struct task_struct *task = cur ? cur : bpf_get_current_task_btf();
    struct fdtable *fdt = task->files->fdt;
    struct file *file = NULL;

    if (fd < 0 || fd >= fdt->max_fds)
        return NULL;
    /* An array element at a variable index: one helper read. */
    if (bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]) || !file)
        return NULL;
    return file_sock(bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file)));
}

/*
 * An accepted MPTCP socket's first subflow: the TCP socket whose handshake the state program
 * followed (NULL on a kernel without MPTCP, or one whose accepted socket does not keep it).
 */
static __always_inline struct sock *mptcp_first_subflow(struct sock *sk)
{
    struct mptcp_sock *msk;

    if (!bpf_core_type_exists(struct mptcp_sock))
        return NULL;
    msk = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct mptcp_sock));
    return msk->first;
}
#else
/* The syscall number of a sys_exit, or -1 for 32-bit compat tasks (other numbering). *cur
 * stays NULL: no BTF pointer to the task here. */
static __always_inline long syscall_nr(struct pt_regs *regs, const struct task_struct **cur)
{
#if defined(__TARGET_ARCH_x86)
    long nr = regs->orig_ax;

    /* Checked second: most syscalls are neither connect nor accept. */
    if (nr == NR_CONNECT || nr == NR_ACCEPT || nr == NR_ACCEPT4) {
        struct task_struct *task = (struct task_struct *)bpf_get_current_task();

        if (BPF_CORE_READ(task, thread_info.status) & TS_COMPAT)
            return -1;
    }
    return nr;
#else
    return BPF_CORE_READ((struct pt_regs___arm64 *)regs, syscallno);
#endif
}

/*
 * The socket behind fd in the current task, or NULL when fd is not a socket.
 * Read with helpers (only for connect/accept): the file table is not
 * reachable through BTF pointers on every kernel this supports (5.8+).
 */
static __always_inline struct sock *fd_sock(const struct task_struct *cur, long fd)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
    struct file **fds = BPF_CORE_READ(fdt, fd);
    unsigned int max_fds = BPF_CORE_READ(fdt, max_fds);
    struct file *file = NULL;
    struct socket *sock;

    if (fd < 0 || fd >= max_fds)
        return NULL;
    if (bpf_core_read(&file, sizeof(file), &fds[fd]) || !file)
        return NULL;
    if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
        return NULL;
    sock = BPF_CORE_READ(file, private_data);
    return sock ? BPF_CORE_READ(sock, sk) : NULL;
}

/* An accepted MPTCP socket's first subflow (as above), read with helpers. */
static __always_inline struct sock *mptcp_first_subflow(struct sock *sk)
{
    if (!bpf_core_field_exists(struct mptcp_sock, first))
        return NULL;
    return BPF_CORE_READ((struct mptcp_sock *)sk, first);
}
#endif

/* A socket from fd_sock: a BTF pointer, or a plain address in the compat build. */
#ifndef CONNECTIONS_COMPAT
#define SK_READ(sk, field)                ((sk)->field)
#define FD_SOCK_ADDRS(sk, r, peer_is_src) read_sock_addrs(sk, r, peer_is_src)
#else
#define SK_READ(sk, field)                BPF_CORE_READ(sk, field)
#define FD_SOCK_ADDRS(sk, r, peer_is_src) read_sock_addrs_core(sk, r, peer_is_src)
#endif

/*
 * A connect() that took its socket to SYN_SENT failed: when the outcome waits for its
 * errno (connect_outcome()), it is written now with it. A connect still under way
 * (EINPROGRESS, EALREADY, EINTR) says nothing of the outcome.
 */
static __always_inline void connect_failed_exit(__u64 key, long err)
{
    struct sock_life *l;

    if (err == EINPROGRESS || err == EALREADY || err == EINTR)
        return;
    l = bpf_map_lookup_elem(&sockets, &key);
    if (l && l->phase == LIFE_CONNECT_FAILED)
        connect_failed_record(l, err);
}

/*
 * A TCP connect() that failed before its SYN: no route (ENETUNREACH,
 * EHOSTUNREACH), refused by policy (EACCES, EPERM), no local port
 * (EADDRNOTAVAIL). The socket never reached SYN_SENT, so the state program
 * never saw it; the destination comes from the syscall's own argument.
 */
static __always_inline int tcp_connect_failed_early(const struct task_struct *cur,
                                                    struct pt_regs *regs, long err, __u64 syn_sent)
{
    struct sockaddr_in6 sa = {};
    struct conn_record *r;
    struct sock *sk;
    void *uaddr;
    __u16 family;
    long rc;

    if (err != ENETUNREACH && err != EHOSTUNREACH && err != EACCES && err != EPERM &&
        err != EADDRNOTAVAIL && err != ENETDOWN)
        return 0;
    if (!task_captured())
        return 0;
    sk = fd_sock(cur, PT_REGS_PARM1_CORE_SYSCALL(regs));
    if (!sk || SK_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    if (syn_sent == (__u64)sk)
        return 0; /* it reached SYN_SENT: the state program reported the outcome */
    family = SK_READ(sk, __sk_common.skc_family);
    uaddr = (void *)PT_REGS_PARM2_CORE_SYSCALL(regs);
    /*
     * Only the bytes the address has (16 for IPv4, 24 for IPv6 without its scope id, the
     * least the kernel takes): a longer read fails for an address at the end of its mapping.
     */
    if (family == AF_INET)
        rc = bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), uaddr);
    else if (family == AF_INET6)
        rc = bpf_probe_read_user(&sa, offsetof(struct sockaddr_in6, sin6_scope_id), uaddr);
    else
        return 0;
    if (rc || sa.sin6_family != family)
        return 0;
    r = record_reserve(SLOT_INET_SOCK_SET_STATE, sizeof(*r));
    if (!r)
        return 0;
    record_hdr_of(&r->hdr, RECORD_CONNECT, cur);
    r->family = family;
    r->protocol = IPPROTO_TCP;
    r->status = CONN_FAILED;
    r->latency_ns = 0;
    r->error = err;
    r->_pad = 0;
    /* The source, when the socket was bound; zero (unknown) otherwise. */
    __builtin_memset(r->saddr, 0, sizeof(r->saddr));
    __builtin_memset(r->daddr, 0, sizeof(r->daddr));
    r->sport = SK_READ(sk, __sk_common.skc_num);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&sa;

        *(__u32 *)r->saddr = SK_READ(sk, __sk_common.skc_rcv_saddr);
        *(__u32 *)r->daddr = sin->sin_addr.s_addr;
        r->dport = bpf_ntohs(sin->sin_port);
    } else {
        struct in6_addr src = SK_READ(sk, __sk_common.skc_v6_rcv_saddr);

        copy_addr6(r->saddr, &src);
        copy_addr6(r->daddr, &sa.sin6_addr);
        r->dport = bpf_ntohs(sa.sin6_port);
    }
    record_submit(r);
    return 0;
}

/*
 * A UDP connect() or an accept that gave the current task sk: its record (and for an
 * accepted connection, its owner for the close record). io_worker: the task may be one of
 * io_uring's workers (named iou-wrk-N), a thread of the process that asked: the record
 * then takes the process's command.
 */
static __always_inline int conn_report(const struct task_struct *cur, struct sock *sk, bool accept,
                                       bool io_worker)
{
    struct conn_record *r;
    __u64 waiting;
    __u16 family;

    family = SK_READ(sk, __sk_common.skc_family);
    if (family != AF_INET && family != AF_INET6)
        return 0;

    if (accept) {
        struct record_hdr h;

        /* An MPTCP connection (both ends asked for it) is its subflows' TCP connections. */
        if (SK_READ(sk, sk_protocol) == IPPROTO_MPTCP) {
            sk = mptcp_first_subflow(sk);
            if (!sk)
                return 0;
        }
        if (SK_READ(sk, sk_protocol) != IPPROTO_TCP)
            return 0;
        record_hdr_of(&h, RECORD_ACCEPT, cur);
        IO_WORKER_COMM(io_worker, &h);
        if (track_close)
            life_accepted(sk, SK_READ(sk, __sk_common.skc_state), &h);
        if (!emit_accept)
            return 0;
        r = record_reserve(SLOT_SYS_EXIT_ACCEPT, sizeof(*r));
        if (!r)
            return 0;
        r->hdr = h;
        r->protocol = IPPROTO_TCP;
        r->status = 0;
        r->latency_ns = 0;
        r->error = 0;
        r->_pad = 0;
        FD_SOCK_ADDRS(sk, r, true);
        record_submit(r);
        return 0;
    }

    if (SK_READ(sk, sk_protocol) != IPPROTO_UDP || SK_READ(sk, sk_type) != SOCK_DGRAM)
        return 0;
    if (SK_READ(sk, __sk_common.skc_dport) == 0)
        return 0; /* connect(AF_UNSPEC) dissolves the association */
    r = record_reserve_bulk(SLOT_SYS_EXIT_CONNECT, sizeof(*r), &waiting);
    if (!r)
        return 0;
    record_hdr_of(&r->hdr, RECORD_CONNECT, cur);
    IO_WORKER_COMM(io_worker, &r->hdr);
    r->protocol = IPPROTO_UDP;
    r->status = CONN_ATTEMPTED;
    r->latency_ns = 0;
    r->error = 0;
    r->_pad = 0;
    FD_SOCK_ADDRS(sk, r, false);
    record_submit_bulk(r, waiting, sizeof(*r));
    return 0;
}

/*
 * One program on sys_exit for both UDP connect() and accept()/accept4(): it
 * runs on every syscall of the machine, and each program attached to a hook
 * costs every syscall its own dispatch, so the two share one and branch on
 * the syscall number. Each kind still counts in its own statistics slot.
 *
 * UDP connect() is reported at syscall exit so both ends are real (the kernel
 * has chosen the source address and bound the source port by then); an
 * accept's new descriptor gives both ends of the accepted connection.
 */
SEC("tp_btf/sys_exit")
int BPF_PROG(tp_btf__sys_exit, struct pt_regs *regs, long ret)
{
    const struct task_struct *cur = NULL;
    struct sock *sk;
    bool accept;
    long nr, fd;

    if (ret < 0 && !emit_tcp_connect)
        return 0;
    nr = syscall_nr(regs, &cur);
    if (ret < 0) {
        __u64 syn_sent;

        if (nr != NR_CONNECT)
            return 0;
        syn_sent = connect_thread_take(cur);
        if (syn_sent && track_close)
            connect_failed_exit(syn_sent, -ret);
        return tcp_connect_failed_early(cur, regs, -ret, syn_sent);
    }
    if (nr == NR_CONNECT) {
        if (emit_tcp_connect)
            connect_thread_take(cur);
        if (!emit_udp_connect || ret != 0)
            return 0;
        accept = false;
        fd = PT_REGS_PARM1_SYSCALL(regs);
    } else if (nr == NR_ACCEPT || nr == NR_ACCEPT4) {
        if (!emit_accept && !track_close)
            return 0;
        accept = true;
        fd = ret;
    } else {
        return 0;
    }
    if (!task_captured())
        return 0;
    sk = fd_sock(cur, fd);
    if (!sk)
        return 0;
    return conn_report(cur, sk, accept, false);
}

/*
 * io_uring: an accept or a connect submitted to an io_uring never returns
 * through the accept or connect syscall. Its completion does pass this
 * tracepoint, in a task of the process that asked (the submitting thread,
 * or one of the ring's workers, iou-wrk-N, which share its files), with the
 * request: an accept's result is the new descriptor, a connect's 0. TCP
 * connects need nothing here (the state program sees them whoever issues
 * them); UDP connects and accepts get the records the sys_exit program
 * writes. An accept into a registered file (a direct descriptor, no file
 * descriptor in the process) is not reported. Attached with the sys_exit
 * program where the kernel has the tracepoint (cmd/agent/capture.c); every
 * other completion (reads, writes) returns after one load and two compares.
 */
#ifndef CONNECTIONS_COMPAT
#define IORING_CQE_F_BUFFER (1U << 0)
#define IORING_CQE_F_MORE   (1U << 1)
#define IORING_CQE_F_NOTIF  (1U << 3)

/*
 * Completions seen without their request, whose operation is unknown here: a multishot
 * request's but its last (the kernel posts them apart, with IORING_CQE_F_MORE), and any that
 * found the ring's completion queue full (they wait in its overflow list and reach the ring
 * later without passing io_uring_complete). An accept's is a descriptor of an accepted
 * connection no process has claimed yet (its entry has no owner; nothing but an accept puts
 * one in a process's files). Completions with a buffer (receives, reads) or a zero-copy
 * notification are none. Only with close events, whose entries say it.
 */
static __always_inline int io_uring_unnamed_complete(int res, __u32 flags)
{
    struct sock_life *l;
    struct sock *sk;
    __u64 key;

    if (!track_close || res < 0 || (flags & (IORING_CQE_F_BUFFER | IORING_CQE_F_NOTIF)) ||
        !task_captured())
        return 0;
    sk = fd_sock(NULL, res);
    if (!sk || sk->sk_protocol != IPPROTO_TCP)
        return 0;
    key = (__u64)sk;
    l = bpf_map_lookup_elem(&sockets, &key);
    if (!l || l->phase != LIFE_FOLLOWING || l->role != CLOSE_ROLE_SERVER || l->owner.kind)
        return 0;
    return conn_report(NULL, sk, true, true);
}

/* A completion the ring had no room for: kept aside by the kernel, seen only here. */
SEC("tp_btf/io_uring_cqe_overflow")
int BPF_PROG(tp_btf__io_uring_cqe_overflow, void *ctx_, __u64 user_data, __s32 res, __u32 cflags,
             void *ocqe)
{
    return io_uring_unnamed_complete(res, cflags);
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(tp_btf__io_uring_complete, void *ctx_, void *req, struct io_uring_cqe *cqe)
{
    struct io_kiocb *rq;
    struct sock *sk;
    __u8 op;
    int res;

    if (!req)
        return cqe->flags & IORING_CQE_F_MORE ? io_uring_unnamed_complete(cqe->res, cqe->flags) : 0;
    rq = bpf_rdonly_cast(req, bpf_core_type_id_kernel(struct io_kiocb));
    op = rq->opcode;

    if (op != bpf_core_enum_value(enum io_uring_op, IORING_OP_ACCEPT) &&
        op != bpf_core_enum_value(enum io_uring_op, IORING_OP_CONNECT))
        return 0;
    res = cqe->res;
    if (op == bpf_core_enum_value(enum io_uring_op, IORING_OP_ACCEPT)) {
        if (res < 0 || !task_captured())
            return 0;
        struct io_accept *acc =
            bpf_rdonly_cast(&rq->cmd, bpf_core_type_id_kernel(struct io_accept));

        if ((!emit_accept && !track_close) || acc->file_slot)
            return 0;
        sk = fd_sock(NULL, res);
        return sk ? conn_report(NULL, sk, true, true) : 0;
    }
    sk = rq->file ? file_sock(rq->file) : NULL;
    if (!sk)
        return 0;
    /* A TCP connect's SYN_SENT noted its socket for the connect() syscall's exit, which never
     * comes: taken here, or the thread's next connect() would take it for its own. */
    if (emit_tcp_connect) {
        __u64 *started = connect_thread_slot(NULL, false);

        if (started && *started == (__u64)sk)
            *started = 0;
    }
    if (!emit_udp_connect || res != 0 || !task_captured())
        return 0;
    return conn_report(NULL, sk, false, true);
}
#endif

#endif

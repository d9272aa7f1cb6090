/*
 * Kernel capture: loads the BPF objects of bpf/ (one per capability), attaches
 * every program on its own so one failure does not stop the rest, and reads
 * the ring buffer, handing each record to records_decode() (records.c, which
 * knows the record layouts) and each event to the caller.
 *
 * All programs share one ring buffer and one per-CPU statistics map, both
 * created here and handed to each object before load; so is the DNS programs'
 * per-CPU ring of lost answers (bpf/dns_events.h), however many objects they
 * load as.
 *
 * libbpf's own log goes through libbpf_log() below, at the agent's level.
 */
#include "capture.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "common.h"
#include "cgroup.h"
#include "dns_events.h"
#include "drop_reasons.h"
#include "errmsg.h"
#include "ksyms.h"
#include "net_events.h"
#include "records.h"

#include "connections.skel.h"
#include "connections_compat.skel.h"
#include "dns.skel.h"
#include "drops.skel.h"
#include "processes.skel.h"

_Static_assert(sizeof(((struct capture_config *)0)->dns_ports) == DNS_PORTS_MAX * sizeof(uint16_t),
               "DNS_PORTS bound differs between the kernel and the configuration");

#define CAPTURE_RINGBUF_DEFAULT (8u << 20)

/*
 * The BPF programs wake the reader only when a quarter of the ring is
 * waiting (record_submit in bpf/common.bpf.h: a wakeup costs the traced task
 * many times its record), so the reader looks at the ring on this timer: the
 * longest a record waits before it is read (20 idle wakeups a second, paid
 * by the agent, not by the traced tasks).
 */
#define CAPTURE_POLL_MAX_MS 50

enum capture_object {
    OBJ_CONNECTIONS,
    OBJ_DROPS,
    OBJ_PROCESSES,
    OBJ_DNS,
    OBJ_COUNT,
};

/*
 * A program as /api/programs lists it: one event type, its own statistics
 * slot. Usually one kernel program each; the UDP connect and accept entries
 * share the one sys_exit program (bpf/connections.h: each program on a hook
 * costs every syscall), so they share its kernel id and link.
 */
#define AUX_MAX 2

struct prog_spec {
    const char *name; /* as listed; the BPF function name unless shared */
    const char *prog; /* BPF function name */
    const char *hook;
    enum event_type type;
    enum capture_object object;
    const char *aux[AUX_MAX]; /* programs of the same object attached with it (or NULL) */
};

/* Not in the compat build, and loaded only where the kernel has io_uring's tracepoint. */
#define IO_URING_PROG          "tp_btf__io_uring_complete"
#define IO_URING_OVERFLOW_PROG "tp_btf__io_uring_cqe_overflow"
#define IO_URING_PROGS                                                                             \
    {                                                                                              \
        IO_URING_PROG, IO_URING_OVERFLOW_PROG                                                      \
    }

static const struct prog_spec prog_specs[SLOT_COUNT] = {
    /* With the state changes the kernel skipped for it that left a socket error (connections.h). */
    [SLOT_INET_SOCK_SET_STATE] = {"tp_btf__inet_sock_set_state",
                                  "tp_btf__inet_sock_set_state",
                                  "tp_btf/inet_sock_set_state",
                                  EVENT_CONNECTION,
                                  OBJ_CONNECTIONS,
                                  {"tp_btf__inet_sk_error_report"}},
    /* With the accepts and UDP connects that complete through io_uring (connections.h). */
    [SLOT_SYS_EXIT_CONNECT] = {"tp_btf__sys_exit_connect", "tp_btf__sys_exit", "tp_btf/sys_exit",
                               EVENT_CONNECTION, OBJ_CONNECTIONS, IO_URING_PROGS},
    [SLOT_SYS_EXIT_ACCEPT] = {"tp_btf__sys_exit_accept", "tp_btf__sys_exit", "tp_btf/sys_exit",
                              EVENT_ACCEPT, OBJ_CONNECTIONS, IO_URING_PROGS},
    [SLOT_KFREE_SKB] = {"tp_btf__kfree_skb", "tp_btf__kfree_skb", "tp_btf/kfree_skb",
                        EVENT_PACKET_DROP, OBJ_DROPS},
    [SLOT_SCHED_PROCESS_EXEC] = {"tp_btf__sched_process_exec", "tp_btf__sched_process_exec",
                                 "tp_btf/sched_process_exec", EVENT_EXEC, OBJ_PROCESSES},
    [SLOT_SCHED_PROCESS_EXIT] = {"tp_btf__sched_process_exit", "tp_btf__sched_process_exit",
                                 "tp_btf/sched_process_exit", EVENT_EXIT, OBJ_PROCESSES},
    [SLOT_TCP_DESTROY_SOCK] = {"tp_btf__tcp_destroy_sock", "tp_btf__tcp_destroy_sock",
                               "tp_btf/tcp_destroy_sock", EVENT_CLOSE, OBJ_CONNECTIONS},
    [SLOT_TCP_SEND_RESET] = {"tp_btf__tcp_send_reset", "tp_btf__tcp_send_reset",
                             "tp_btf/tcp_send_reset", EVENT_CLOSE, OBJ_CONNECTIONS},
    [SLOT_TCP_RECEIVE_RESET] = {"tp_btf__tcp_receive_reset", "tp_btf__tcp_receive_reset",
                                "tp_btf/tcp_receive_reset", EVENT_CLOSE, OBJ_CONNECTIONS},
    [SLOT_DNS_EGRESS] = {"cgroup_skb__dns_egress", "cgroup_skb__dns_egress", "cgroup_skb/egress",
                         EVENT_DNS, OBJ_DNS},
    [SLOT_DNS_INGRESS] = {"cgroup_skb__dns_ingress", "cgroup_skb__dns_ingress",
                          "cgroup_skb/ingress", EVENT_DNS, OBJ_DNS},
    [SLOT_DNS_ERROR] = {"tp_btf__dns_sk_error_report", "tp_btf__dns_sk_error_report",
                        "tp_btf/inet_sk_error_report", EVENT_DNS, OBJ_DNS},
};

/* The dns programs: they pair queries with answers and errors in user space (dns_fn). */
#define DNS_SLOTS ((1u << SLOT_DNS_EGRESS) | (1u << SLOT_DNS_INGRESS) | (1u << SLOT_DNS_ERROR))

/* Programs a slot needs besides its own: close events follow a connection from the state
 * changes (its start) and from accept (a server connection's owner). */
static uint32_t slot_needs(int slot)
{
    return slot == SLOT_TCP_DESTROY_SOCK
               ? (1u << SLOT_INET_SOCK_SET_STATE) | (1u << SLOT_SYS_EXIT_ACCEPT)
               : 0;
}

/* One loaded copy of a BPF object (a skeleton) with some of its programs. */
struct instance {
    enum capture_object object;
    bool compat; /* OBJ_CONNECTIONS: the connections_compat build */
    void *skel;
    struct bpf_object *obj;
};

struct capture_prog {
    enum capture_program_status status;
    char error[128];
    struct bpf_link *link;              /* NULL for the second of two slots sharing a program */
    uint32_t prog_id;                   /* kernel id, for `bpftool prog show id N` */
    int prog_fd;                        /* with link: the program's, for its run statistics */
    struct bpf_link *aux_link[AUX_MAX]; /* its prog_spec's aux programs' */
    int aux_fd[AUX_MAX];                /* those programs' */
};

_Static_assert(SLOT_COUNT <= SOCKETS_REAP_MAPS,
               "a connections object per slot needs a reaper each");

struct capture {
    capture_event_fn fn;
    void *ctx;
    capture_dns_fn dns_fn;
    void *dns_ctx;
    uint16_t dns_ports[DNS_PORTS_MAX];
    uint32_t dns_rate_per_sec;
    int cgroup_fd; /* the cgroup v2 root the cgroup_skb programs attach to, -1 = none */
    uint32_t drop_rate_per_sec;
    uint32_t event_types; /* EVENT_TYPE_BIT mask asked for */
    bool cgroup_only;     /* CAPTURE_CGROUP (capture_config) */
    uint64_t cgroup_id;
    uint32_t cgroup_level;
    int ringbuf_fd, stats_fd;
    int dns_lost_fd;               /* struct dns_lost per CPU, -1 without the DNS programs */
    int drop_suppressed_fd;        /* __u64 per CPU per DROP_REASON_SLOTS, -1 without drops */
    struct dns_lost *dns_lost;     /* its values as last read (capture_dns_lost()) */
    uint32_t ringbuf_wakeup_bytes; /* a quarter of the ring: records wake the reader past it */
    struct ring_buffer *rb;
    struct instance instances[SLOT_COUNT];
    size_t ninstances;
    struct capture_prog progs[SLOT_COUNT];
    struct records_decoder decoder; /* its ksyms and reasons are the two below */
    struct records_exits exits;     /* a process's exit reported twice is reported once */
    struct ksyms *ksyms;
    struct drop_reasons *reasons;
    int ncpus;
    bool conn_compat;             /* the kernel lacks what connections.bpf.c needs */
    bool drop_rx_sk;              /* skb:kfree_skb names the receiving socket (6.10+) */
    bool io_uring_tp;             /* the kernel has io_uring's io_uring_complete tracepoint */
    bool io_uring_overflow_tp;    /* and its io_uring_cqe_overflow one */
    struct sockets_reaper reaper; /* of each loaded connections object's `sockets` map */
    uint64_t sockets_seeded, sockets_seed_full; /* seed_sockets(), at the start */
    uint64_t seed_listeners_full;
};

/*
 * libbpf's log, at the agent's level as libbpf-tools do: warnings (what failed
 * to load, and why) always, its debug messages (BTF, CO-RE relocations, maps,
 * verifier) only with --verbose. libbpf has one logger per process.
 */
static bool log_verbose;
/* True during an object's load with all its programs: when that fails, each program is
 * loaded again on its own (object_start), and the one that fails says so once, then. */
static bool log_combined_load;

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (!log_verbose && (level == LIBBPF_DEBUG || log_combined_load))
        return 0;
    return vfprintf(stderr, fmt, ap);
}

/* Kernel timestamps are boot-clock; events carry wall-clock. Re-sampled on every poll so a
 * clock step (NTP, suspend) is followed within one poll. Returns the boot clock. */
static uint64_t sample_clock_offset(struct capture *c)
{
    int64_t boot1 = (int64_t)clock_ns(CLOCK_BOOTTIME);
    int64_t real = (int64_t)clock_realtime_ns();
    int64_t boot2 = (int64_t)clock_ns(CLOCK_BOOTTIME);

    c->decoder.boot_to_real_ns = real - (boot1 + (boot2 - boot1) / 2);
    return (uint64_t)boot2;
}

/* CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (tracing programs), in the effective set. */
static bool has_bpf_privileges(void)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2] = {0};

    if (syscall(SYS_capget, &hdr, data) != 0)
        return geteuid() == 0;
#define HAS_CAP(n) (data[(n) / 32].effective & (1u << ((n) % 32)))
    return HAS_CAP(21 /* CAP_SYS_ADMIN */) ||
           (HAS_CAP(39 /* CAP_BPF */) && HAS_CAP(38 /* CAP_PERFMON */));
#undef HAS_CAP
}

/*
 * connections.bpf.c reads sockets through BTF pointers with the
 * bpf_rdonly_cast kfunc (6.2+); without it the compat build (helper reads)
 * is loaded instead. See bpf/connections.h.
 */
static bool kernel_lacks_rdonly_cast(const struct btf *vmlinux)
{
    return !vmlinux || btf__find_by_name_kind(vmlinux, "bpf_rdonly_cast", BTF_KIND_FUNC) < 0;
}

/*
 * Whether skb:kfree_skb passes the socket that was receiving the packet
 * (rx_sk, its fourth argument, 6.10+): a drop on a socket's way in (its
 * receive buffer full, data on a closed socket) is then that socket's, whose
 * packet is not (yet) charged to it. btf_trace_kfree_skb is a pointer to the
 * tracepoint's prototype, whose first parameter is the probe's data.
 */
static bool kfree_skb_has_rx_sk(const struct btf *vmlinux)
{
    int id =
        vmlinux ? btf__find_by_name_kind(vmlinux, "btf_trace_kfree_skb", BTF_KIND_TYPEDEF) : -1;
    const struct btf_type *t = id > 0 ? btf__type_by_id(vmlinux, (__u32)id) : NULL;
    while (t && (btf_is_typedef(t) || btf_is_ptr(t)))
        t = btf__type_by_id(vmlinux, t->type);
    if (!t || !btf_is_func_proto(t) || btf_vlen(t) < 5)
        return false;
    const struct btf_param *p = btf_params(t) + 4;
    const struct btf_type *arg = btf__type_by_id(vmlinux, p->type);
    return arg && btf_is_ptr(arg);
}

/*
 * What capture_open learns from the kernel BTF: which connections build to
 * load and, when drops are wanted, the drop reason names. libbpf parses the
 * BTF (megabytes) on every call, so it is loaded once for both.
 */
static void read_vmlinux_btf(struct capture *c, bool want_drops)
{
    struct btf *vmlinux = btf__load_vmlinux_btf();
    int err = errno;

    c->conn_compat = kernel_lacks_rdonly_cast(vmlinux);
    c->drop_rx_sk = kfree_skb_has_rx_sk(vmlinux);
    /* And the request types the program reads (io_uring's internals, not a stable ABI). */
    c->io_uring_tp =
        vmlinux &&
        btf__find_by_name_kind(vmlinux, "btf_trace_io_uring_complete", BTF_KIND_TYPEDEF) > 0 &&
        btf__find_by_name_kind(vmlinux, "io_kiocb", BTF_KIND_STRUCT) > 0 &&
        btf__find_by_name_kind(vmlinux, "io_accept", BTF_KIND_STRUCT) > 0;
    c->io_uring_overflow_tp =
        c->io_uring_tp &&
        btf__find_by_name_kind(vmlinux, "btf_trace_io_uring_cqe_overflow", BTF_KIND_TYPEDEF) > 0;
    if (want_drops) {
        /* Without names a drop is still reported, with its code and address. */
        c->reasons = vmlinux ? drop_reasons_from_btf(vmlinux) : NULL;
        if (!c->reasons)
            fprintf(stderr, "capture: drop reason names unavailable (kernel BTF): %s\n",
                    strerror(vmlinux ? errno : err));
    }
    btf__free(vmlinux);
}

/*
 * Writes the dns programs' settings (values, by enum dns_setting) over their markers in
 * prog's instructions (DNS_SETTING_MARKER, bpf/dns.bpf.c's DNS_SETTING()), before load: what
 * the programs read on every packet then reads no memory. Only the program's own
 * instructions, not its subprograms', are there to write before load. Returns how many
 * were written, or -errno.
 */
static int dns_settings_to_insns(struct bpf_program *prog, const uint32_t values[DNS_SETTINGS])
{
    size_t n = bpf_program__insn_cnt(prog);
    struct bpf_insn *insns = malloc(n * sizeof(*insns));
    int written = 0, err;

    if (!insns)
        return -ENOMEM;
    memcpy(insns, bpf_program__insns(prog), n * sizeof(*insns));
    for (size_t i = 0; i + 1 < n; i++) {
        if (insns[i].code != (BPF_LD | BPF_IMM | BPF_DW))
            continue;
        uint32_t setting = (uint32_t)insns[i].imm - DNS_SETTING_MARKER(0);
        if (insns[i].src_reg == 0 && insns[i + 1].imm == 0 && setting < DNS_SETTINGS) {
            insns[i].imm = (int32_t)values[setting];
            written++;
        }
        i++; /* the load's second half */
    }
    err = written ? bpf_program__set_insns(prog, insns, n) : 0;
    free(insns);
    return err ? err : written;
}

/* CAPTURE_CGROUP and the ring's wakeup mark, in the rodata every object has
 * (bpf/common.bpf.h). */
#define SET_CGROUP_FILTER(skel, c)                                                                 \
    do {                                                                                           \
        (skel)->rodata->capture_cgroup_only = (c)->cgroup_only;                                    \
        (skel)->rodata->capture_cgroup_id = (c)->cgroup_id;                                        \
        (skel)->rodata->capture_cgroup_level = (c)->cgroup_level;                                  \
        (skel)->rodata->ringbuf_wakeup_bytes = (c)->ringbuf_wakeup_bytes;                          \
    } while (0)

static int instance_open(struct capture *c, struct instance *in, enum capture_object object,
                         uint32_t want)
{
    in->object = object;
    in->compat = false;
    switch (object) {
    case OBJ_CONNECTIONS: {
        if (c->conn_compat) {
            struct connections_compat_bpf *s = connections_compat_bpf__open();
            if (!s)
                return -errno;
            /* The shared sys_exit program emits only the kinds asked for. */
            s->rodata->emit_tcp_connect = c->event_types & EVENT_TYPE_BIT(EVENT_CONNECTION);
            s->rodata->emit_udp_connect = c->event_types & EVENT_TYPE_BIT(EVENT_CONNECTION);
            s->rodata->emit_accept = c->event_types & EVENT_TYPE_BIT(EVENT_ACCEPT);
            s->rodata->track_close = c->event_types & EVENT_TYPE_BIT(EVENT_CLOSE);
            SET_CGROUP_FILTER(s, c);
            in->compat = true;
            in->skel = s;
            in->obj = s->obj;
            break;
        }
        struct connections_bpf *s = connections_bpf__open();
        if (!s)
            return -errno;
        s->rodata->emit_tcp_connect = c->event_types & EVENT_TYPE_BIT(EVENT_CONNECTION);
        s->rodata->emit_udp_connect = c->event_types & EVENT_TYPE_BIT(EVENT_CONNECTION);
        s->rodata->emit_accept = c->event_types & EVENT_TYPE_BIT(EVENT_ACCEPT);
        s->rodata->track_close = c->event_types & EVENT_TYPE_BIT(EVENT_CLOSE);
        SET_CGROUP_FILTER(s, c);
        in->skel = s;
        in->obj = s->obj;
        break;
    }
    case OBJ_DROPS: {
        struct drops_bpf *s = drops_bpf__open();
        if (!s)
            return -errno;
        s->rodata->drop_rate_per_sec = c->drop_rate_per_sec;
        s->rodata->has_rx_sk = c->drop_rx_sk;
        SET_CGROUP_FILTER(s, c);
        in->skel = s;
        in->obj = s->obj;
        break;
    }
    case OBJ_PROCESSES: {
        struct processes_bpf *s = processes_bpf__open();
        if (!s)
            return -errno;
        SET_CGROUP_FILTER(s, c);
        in->skel = s;
        in->obj = s->obj;
        break;
    }
    case OBJ_DNS: {
        struct dns_bpf *s = dns_bpf__open();
        if (!s)
            return -errno;
        memcpy((void *)s->rodata->dns_ports, c->dns_ports, sizeof(c->dns_ports));
        s->rodata->dns_rate_per_sec = c->dns_rate_per_sec;
        s->rodata->sender_task_btf =
            libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_get_current_task_btf,
                                    NULL) == 1;
        s->rodata->ringbuf_wakeup_bytes = c->ringbuf_wakeup_bytes;
        /* A rate bucket per CPU, kmalloc'ed (bpf/dns.bpf.c, dns_buckets). */
        int err =
            c->ncpus > 0 ? bpf_map__set_max_entries(s->maps.dns_buckets, (uint32_t)c->ncpus) : 0;
        uint32_t settings[DNS_SETTINGS] = {
            [DNS_SETTING_RATE] = s->rodata->dns_rate_per_sec,
            [DNS_SETTING_WAKEUP_BYTES] = s->rodata->ringbuf_wakeup_bytes,
            [DNS_SETTING_TASK_BTF] = s->rodata->sender_task_btf,
        };
        for (int p = 0; p < DNS_PORTS_MAX; p++)
            settings[DNS_SETTING_PORT0 + p] = c->dns_ports[p];
        if (!err && (err = dns_settings_to_insns(s->progs.cgroup_skb__dns_egress, settings)) >= 0 &&
            (err = dns_settings_to_insns(s->progs.cgroup_skb__dns_ingress, settings)) >= 0)
            err = dns_settings_to_insns(s->progs.tp_btf__dns_sk_error_report, settings);
        if (err > 0)
            err = 0;
        if (err) {
            dns_bpf__destroy(s);
            return err;
        }
        in->skel = s;
        in->obj = s->obj;
        break;
    }
    default:
        return -EINVAL;
    }
    return 0;
}

static void instance_destroy(struct instance *in)
{
    switch (in->object) {
    case OBJ_CONNECTIONS:
        if (in->compat)
            connections_compat_bpf__destroy(in->skel);
        else
            connections_bpf__destroy(in->skel);
        break;
    case OBJ_DROPS:
        drops_bpf__destroy(in->skel);
        break;
    case OBJ_PROCESSES:
        processes_bpf__destroy(in->skel);
        break;
    case OBJ_DNS:
        dns_bpf__destroy(in->skel);
        break;
    default:
        break;
    }
    in->skel = NULL;
    in->obj = NULL;
}

/* The iterator that follows the connections open before the start (bpf/connections.h): loaded
 * with the close program, run once by seed_sockets(). */
#define SEED_PROG "iter__seed_sockets"

/* Whether the object's program name is attached with slot's program. */
static bool prog_is_aux(const char *name, int slot)
{
    for (int a = 0; a < AUX_MAX; a++)
        if (prog_specs[slot].aux[a] && strcmp(name, prog_specs[slot].aux[a]) == 0)
            return true;
    return false;
}

/* Whether the object's program name is slot's program, the one attached with it, or the
 * seeding iterator of the close program. */
static bool prog_serves(const char *name, int slot)
{
    return strcmp(name, prog_specs[slot].prog) == 0 || prog_is_aux(name, slot) ||
           (slot == SLOT_TCP_DESTROY_SOCK && strcmp(name, SEED_PROG) == 0);
}

/*
 * One run of an iterator whose output is empty: the iteration is the work. The
 * kernel stops a read after a million files without output (EAGAIN); the next
 * read goes on from there. Returns 0 or -errno.
 */
static int iter_run(struct bpf_program *prog)
{
    struct bpf_link *link = bpf_program__attach_iter(prog, NULL);
    int fd = link ? bpf_iter_create(bpf_link__fd(link)) : -1;
    int err = fd < 0 ? -errno : -EAGAIN;
    char buf[64];

    for (int stops = 0; fd >= 0 && err == -EAGAIN && stops < 10000; stops++) {
        ssize_t n = read(fd, buf, sizeof(buf));
        err = n == 0 ? 0 : n < 0 ? -errno : -EPROTO;
    }
    if (fd >= 0)
        close(fd);
    bpf_link__destroy(link);
    return err;
}

/*
 * Runs the seeding iterator of the connections object whose close program is
 * attached (the state programs attached before it, so a connection is either
 * established since, with its entry, or found here): a pass over the
 * listeners, then one over the connections (bpf/connections.h). Not in the
 * compat build (kernels before 6.2), whose connections open at the start end
 * without a close.
 */
static void seed_sockets(struct capture *c)
{
    for (size_t i = 0; i < c->ninstances; i++) {
        struct instance *in = &c->instances[i];
        if (in->object != OBJ_CONNECTIONS || in->compat)
            continue;
        struct bpf_program *prog = bpf_object__find_program_by_name(in->obj, SEED_PROG);
        if (!prog || bpf_program__fd(prog) < 0)
            continue;
        /* The counters and the pass in the .bss map: the object was loaded without the
         * skeleton's loader, which is what maps s->bss onto it. */
        struct connections_bpf *s = in->skel;
        uint32_t zero = 0;
        __typeof__(*s->bss) g = {0};
        int err = iter_run(prog);
        if (!err &&
            !(err = bpf_map__lookup_elem(s->maps.bss, &zero, sizeof(zero), &g, sizeof(g), 0))) {
            g.seed_pass = 1;
            err = bpf_map__update_elem(s->maps.bss, &zero, sizeof(zero), &g, sizeof(g), 0);
        }
        if (!err)
            err = iter_run(prog);
        if (!err)
            err = bpf_map__lookup_elem(s->maps.bss, &zero, sizeof(zero), &g, sizeof(g), 0);
        if (err)
            fprintf(stderr,
                    "capture: the connections open at the start are not followed to their "
                    "close: %s\n",
                    strerror(-err));
        c->sockets_seeded = g.sockets_seeded;
        c->sockets_seed_full = g.sockets_seed_full;
        c->seed_listeners_full = g.seed_listeners_full;
        if (g.sockets_seed_full || g.seed_listeners_full)
            fprintf(stderr,
                    "capture: of the connections open at the start, %" PRIu64
                    " are not followed (the socket map is full) and the role of those on %" PRIu64
                    " listening ports is read from their sockets alone\n",
                    (uint64_t)g.sockets_seed_full, (uint64_t)g.seed_listeners_full);
        /* The listeners were for the passes only. */
        int lfd = bpf_map__fd(s->maps.seed_listeners);
        uint64_t k; /* struct listener_key: two 32-bit words */
        while (bpf_map__key_size(s->maps.seed_listeners) == sizeof(k) &&
               bpf_map_get_next_key(lfd, NULL, &k) == 0 && bpf_map_delete_elem(lfd, &k) == 0)
            ;
        return;
    }
}

/* Loads one copy of object with exactly the programs in want (a mask of slots). */
static int instance_load(struct capture *c, struct instance *in, enum capture_object object,
                         uint32_t want)
{
    struct bpf_program *prog;
    struct bpf_map *map;
    int err;

    err = instance_open(c, in, object, want);
    if (err)
        return err;
    bpf_object__for_each_program(prog, in->obj)
    {
        bool load = false;
        for (int s = 0; s < SLOT_COUNT; s++)
            if ((want & (1u << s)) && prog_serves(bpf_program__name(prog), s))
                load = true;
        if ((!c->io_uring_tp && strcmp(bpf_program__name(prog), IO_URING_PROG) == 0) ||
            (!c->io_uring_overflow_tp &&
             strcmp(bpf_program__name(prog), IO_URING_OVERFLOW_PROG) == 0))
            load = false;
        bpf_program__set_autoload(prog, load);
    }
    err = -ENOENT;
    if (!(map = bpf_object__find_map_by_name(in->obj, "events")) ||
        (err = bpf_map__reuse_fd(map, c->ringbuf_fd)) ||
        !(map = bpf_object__find_map_by_name(in->obj, "stats")) ||
        (err = bpf_map__reuse_fd(map, c->stats_fd)) ||
        (object == OBJ_DNS && (!(map = bpf_object__find_map_by_name(in->obj, "dns_lost")) ||
                               (err = bpf_map__reuse_fd(map, c->dns_lost_fd)))) ||
        (object == OBJ_DROPS &&
         (!(map = bpf_object__find_map_by_name(in->obj, "drop_suppressed")) ||
          (err = bpf_map__reuse_fd(map, c->drop_suppressed_fd)))) ||
        (err = bpf_object__load(in->obj))) {
        instance_destroy(in);
        return err < 0 ? err : -ENOENT;
    }
    if (object == OBJ_CONNECTIONS && (map = bpf_object__find_map_by_name(in->obj, "sockets")) &&
        (err = sockets_reaper_add(&c->reaper, bpf_map__fd(map))))
        fprintf(stderr, "capture: the dead entries of a sockets map are not reaped: %s\n",
                strerror(-err));
    return 0;
}

void capture_sockets_stats(struct capture *c, struct capture_sockets_stats *out)
{
    sockets_reaper_stats(&c->reaper, out);
    out->seeded = c->sockets_seeded;
    out->seed_full = c->sockets_seed_full;
    out->seed_listeners_full = c->seed_listeners_full;
}

static void prog_fail(struct capture *c, int slot, const char *what, int err)
{
    struct capture_prog *p = &c->progs[slot];
    /* libbpf says ESRCH when the kernel BTF lacks the hook: say so in words. */
    const char *why = err == -ESRCH ? "hook not found in this kernel" : strerror(-err);

    p->status = CAPTURE_PROGRAM_FAILED;
    snprintf(p->error, sizeof(p->error), "%s: %s", what, why);
    fprintf(stderr, "capture: program %s (%s) failed to %s: %s\n", prog_specs[slot].name,
            prog_specs[slot].hook, what, why);
}

/* The slots in want served by the same BPF program as slot (slot included). */
static uint32_t sharing_slots(uint32_t want, int slot)
{
    uint32_t same = 0;

    for (int s = 0; s < SLOT_COUNT; s++)
        if ((want & (1u << s)) && strcmp(prog_specs[s].prog, prog_specs[slot].prog) == 0)
            same |= 1u << s;
    return same;
}

/*
 * Attaches the program of slot once for every slot in slots (those it serves);
 * the first slot owns the link.
 */
static void prog_attach(struct capture *c, struct instance *in, int slot, uint32_t slots)
{
    struct bpf_program *prog = bpf_object__find_program_by_name(in->obj, prog_specs[slot].prog);
    struct bpf_prog_info info = {0};
    __u32 len = sizeof(info);
    struct bpf_link *link;
    int err;

    if (!prog) {
        for (int s = 0; s < SLOT_COUNT; s++)
            if (slots & (1u << s))
                prog_fail(c, s, "find", -ENOENT);
        return;
    }
    /* cgroup_skb programs attach to the cgroup v2 root: every socket of the node. */
    if (bpf_program__type(prog) == BPF_PROG_TYPE_CGROUP_SKB)
        link = c->cgroup_fd >= 0 ? bpf_program__attach_cgroup(prog, c->cgroup_fd)
                                 : (errno = ENOENT, NULL); /* no cgroup v2 root (logged) */
    else
        link = bpf_program__attach(prog);
    if (!link) {
        err = -errno;
        for (int s = 0; s < SLOT_COUNT; s++)
            if (slots & (1u << s))
                prog_fail(c, s, "attach", err);
        return;
    }
    c->progs[slot].link = link;
    c->progs[slot].prog_fd = bpf_program__fd(prog);
    for (int a = 0; a < AUX_MAX; a++) {
        const char *aux = prog_specs[slot].aux[a];
        struct bpf_program *aux_prog = aux ? bpf_object__find_program_by_name(in->obj, aux) : NULL;
        c->progs[slot].aux_fd[a] = aux_prog ? bpf_program__fd(aux_prog) : -1;
        if (c->progs[slot].aux_fd[a] >= 0 &&
            !(c->progs[slot].aux_link[a] = bpf_program__attach(aux_prog)))
            fprintf(stderr, "capture: %s failed to attach (%s); %s runs without it\n", aux,
                    strerror(errno), prog_specs[slot].name);
    }
    if (bpf_obj_get_info_by_fd(c->progs[slot].prog_fd, &info, &len) != 0)
        info.id = 0;
    for (int s = 0; s < SLOT_COUNT; s++) {
        if (!(slots & (1u << s)))
            continue;
        c->progs[s].status = CAPTURE_PROGRAM_ATTACHED;
        c->progs[s].prog_id = info.id;
    }
}

/*
 * Loads every requested program of object together; when that fails (a
 * tracepoint this kernel lacks, a verifier rejection), loads each one alone so
 * the others still run and the failing one is named.
 */
static void object_start(struct capture *c, enum capture_object object, uint32_t want)
{
    struct instance *in = &c->instances[c->ninstances];
    int err;

    if (!want)
        return;
    log_combined_load = true;
    err = instance_load(c, in, object, want);
    log_combined_load = false;
    if (err == 0) {
        uint32_t done = 0;

        c->ninstances++;
        for (int s = 0; s < SLOT_COUNT; s++) {
            if (!(want & (1u << s)) || (done & (1u << s)))
                continue;
            done |= sharing_slots(want, s);
            prog_attach(c, in, s, sharing_slots(want, s));
        }
        return;
    }
    /* One BPF program at a time, with every slot it serves. */
    uint32_t done = 0;
    for (int s = 0; s < SLOT_COUNT; s++) {
        uint32_t slots;

        if (!(want & (1u << s)) || (done & (1u << s)))
            continue;
        slots = sharing_slots(want, s);
        done |= slots;
        in = &c->instances[c->ninstances];
        err = instance_load(c, in, object, slots);
        if (err && (c->io_uring_tp || c->io_uring_overflow_tp) && prog_is_aux(IO_URING_PROG, s)) {
            /* io_uring's internals differ on this kernel: the syscalls' program alone. */
            fprintf(stderr, "capture: %s or %s failed to load (%s); %s runs without them\n",
                    IO_URING_PROG, IO_URING_OVERFLOW_PROG, strerror(-err), prog_specs[s].name);
            c->io_uring_tp = c->io_uring_overflow_tp = false;
            err = instance_load(c, in, object, slots);
        }
        if (err) {
            for (int t = 0; t < SLOT_COUNT; t++)
                if (slots & (1u << t))
                    prog_fail(c, t, "load", err);
            continue;
        }
        c->ninstances++;
        prog_attach(c, in, s, slots);
    }
}

/*
 * A record records_decode() refused: counted in the decoder; logged the first
 * time and at every power of two after, so a flood is a few lines.
 */
static void log_skipped(const struct capture *c, int err, const char *why)
{
    uint64_t n = err == -ENOMEM ? c->decoder.no_memory : c->decoder.malformed;

    if ((n & (n - 1)) == 0)
        fprintf(stderr, "capture: %s record (%" PRIu64 " so far): %s\n",
                err == -ENOMEM ? "lost a" : "skipped a malformed", n, why);
}

static int handle_dns_record(struct capture *c, void *data, size_t size)
{
    struct records_dns m;
    char why[128];
    int err = records_decode_dns(&c->decoder, data, size, &m, why, sizeof(why));

    if (err < 0)
        log_skipped(c, err, why);
    else if (c->dns_fn)
        c->dns_fn(c->dns_ctx, &m);
    return 0;
}

static int handle_record(void *ctx, void *data, size_t size)
{
    struct capture *c = ctx;
    struct event e;
    char why[128];
    int err;

    if (size >= sizeof(struct record_hdr) && ((const struct record_hdr *)data)->kind == RECORD_DNS)
        return handle_dns_record(c, data, size);
    err = records_decode(&c->decoder, data, size, &e, why, sizeof(why));

    if (err < 0) {
        log_skipped(c, err, why);
        return 0;
    }
    if (e.type == EVENT_EXIT && records_exit_repeated(&c->exits, &e))
        return 0;
    c->fn(c->ctx, &e);
    event_clear(&e); /* whatever owned strings the callee did not take */
    return 0;
}

static uint32_t wanted_slots(const struct capture_config *cfg)
{
    uint32_t want = 0;

    for (int s = 0; s < SLOT_COUNT; s++)
        if (cfg->event_types & EVENT_TYPE_BIT(prog_specs[s].type))
            want |= (1u << s) | slot_needs(s);
    if (!cfg->dns_fn) /* nobody to pair queries with answers */
        want &= ~DNS_SLOTS;
    return want;
}

/* The cgroup v2 root, opened for the cgroup_skb programs; -1 with the reason logged. */
static int open_cgroup_root(const char *root)
{
    char path[4096];
    int err, fd;

    if (!root) {
        err = cgroup_v2_root(path, sizeof(path));
        if (err < 0) {
            fprintf(stderr, "capture: no cgroup v2 hierarchy for the dns programs: %s\n",
                    strerror(-err));
            return -1;
        }
        root = path;
    }
    fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        fprintf(stderr, "capture: opening the cgroup v2 root %s for the dns programs: %s\n", root,
                strerror(errno));
    return fd;
}

static size_t ringbuf_size(size_t want)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size = page;

    if (want == 0)
        want = CAPTURE_RINGBUF_DEFAULT;
    while (size < want)
        size <<= 1;
    return size;
}

struct capture *capture_open(const struct capture_config *cfg, capture_event_fn fn, void *ctx,
                             char *err, size_t errlen)
{
    struct capture *c;
    uint32_t want = wanted_slots(cfg);
    size_t rb_bytes = ringbuf_size(cfg->ringbuf_bytes);

    log_verbose = cfg->verbose;
    libbpf_set_print(libbpf_log);
    if (!has_bpf_privileges()) {
        errmsg_set(err, errlen, "capture: loading eBPF programs needs root or CAP_BPF+CAP_PERFMON");
        return NULL;
    }
    if (!want) {
        errmsg_set(err, errlen, "capture: no event types requested");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        errmsg_set(err, errlen, "capture: out of memory");
        return NULL;
    }
    c->fn = fn;
    c->ctx = ctx;
    c->drop_rate_per_sec = cfg->drop_rate_per_sec;
    c->event_types = cfg->event_types;
    c->cgroup_only = cfg->cgroup_only;
    c->cgroup_id = cfg->cgroup_id;
    c->cgroup_level = cfg->cgroup_level;
    c->dns_fn = cfg->dns_fn;
    c->dns_ctx = cfg->dns_ctx;
    c->dns_rate_per_sec = cfg->dns_rate_per_sec;
    memcpy(c->dns_ports, cfg->dns_ports, sizeof(c->dns_ports));
    if (!c->dns_ports[0] && !c->dns_ports[1] && !c->dns_ports[2] && !c->dns_ports[3])
        c->dns_ports[0] = 53;
    c->ringbuf_fd = c->stats_fd = c->cgroup_fd = c->dns_lost_fd = c->drop_suppressed_fd = -1;
    if (want & DNS_SLOTS)
        c->cgroup_fd = open_cgroup_root(cfg->cgroup_root);
    c->ncpus = libbpf_num_possible_cpus();
    for (int s = 0; s < SLOT_COUNT; s++)
        c->progs[s].status = CAPTURE_PROGRAM_DISABLED;
    sample_clock_offset(c);
    read_vmlinux_btf(c, want & (1u << SLOT_KFREE_SKB));
    if (want & (1u << SLOT_KFREE_SKB)) {
        c->ksyms = ksyms_load("/proc/kallsyms");
        if (!c->ksyms)
            fprintf(stderr, "capture: drop locations unavailable (/proc/kallsyms): %s\n",
                    strerror(errno));
    }
    c->decoder.reasons = c->reasons;
    c->decoder.ksyms = c->ksyms;

    c->ringbuf_fd =
        bpf_map_create(BPF_MAP_TYPE_RINGBUF, "ebpfmon_events", 0, 0, (uint32_t)rb_bytes, NULL);
    if (c->ringbuf_fd < 0) {
        int e = errno;
        errmsg_set(err, errlen, "capture: creating the %zu-byte ring buffer: %s%s", rb_bytes,
                   strerror(e), e == EPERM ? " (needs root or CAP_BPF+CAP_PERFMON)" : "");
        goto fail;
    }
    c->ringbuf_wakeup_bytes = (uint32_t)(rb_bytes / 4);
    c->stats_fd = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "ebpfmon_stats", sizeof(uint32_t),
                                 sizeof(struct prog_stats), SLOT_COUNT, NULL);
    if (c->stats_fd < 0) {
        errmsg_set(err, errlen, "capture: creating the statistics map: %s", strerror(errno));
        goto fail;
    }
    if (want & (1u << SLOT_KFREE_SKB)) {
        c->drop_suppressed_fd =
            bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "ebpfmon_dropsup", sizeof(uint32_t),
                           sizeof(uint64_t), DROP_REASON_SLOTS, NULL);
        if (c->drop_suppressed_fd < 0) {
            errmsg_set(err, errlen, "capture: creating the map of suppressed drops: %s",
                       strerror(errno));
            goto fail;
        }
    }
    if (want & DNS_SLOTS) {
        c->dns_lost_fd = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "ebpfmon_dns_lost",
                                        sizeof(uint32_t), sizeof(struct dns_lost), 1, NULL);
        c->dns_lost = calloc((size_t)(c->ncpus > 0 ? c->ncpus : 1), sizeof(*c->dns_lost));
        if (c->dns_lost_fd < 0 || !c->dns_lost) {
            errmsg_set(err, errlen, "capture: creating the map of lost DNS answers: %s",
                       c->dns_lost ? strerror(errno) : "out of memory");
            goto fail;
        }
    }

    for (int o = 0; o < OBJ_COUNT; o++) {
        uint32_t obj_want = 0;
        for (int s = 0; s < SLOT_COUNT; s++)
            if ((want & (1u << s)) && prog_specs[s].object == (enum capture_object)o)
                obj_want |= 1u << s;
        object_start(c, (enum capture_object)o, obj_want);
    }
    if (capture_attached(c) == 0) {
        errmsg_set(err, errlen, "capture: no eBPF program could be attached (see the log above)");
        goto fail;
    }
    if (c->progs[SLOT_TCP_DESTROY_SOCK].status == CAPTURE_PROGRAM_ATTACHED)
        seed_sockets(c);

    c->rb = ring_buffer__new(c->ringbuf_fd, handle_record, c, NULL);
    if (!c->rb) {
        errmsg_set(err, errlen, "capture: ring buffer reader: %s", strerror(errno));
        goto fail;
    }
    return c;
fail:
    capture_close(c);
    return NULL;
}

int capture_poll(struct capture *c, int timeout_ms)
{
    int n, more;
    uint64_t boot_ns = sample_clock_offset(c);

    if (timeout_ms < 0 || timeout_ms > CAPTURE_POLL_MAX_MS)
        timeout_ms = CAPTURE_POLL_MAX_MS;
    n = ring_buffer__poll(c->rb, timeout_ms);
    if (n < 0)
        return n;
    sockets_reaper_poll(&c->reaper, boot_ns);
    /* poll only reads a ring it was woken for; records submitted without a
     * wakeup are read here. */
    more = ring_buffer__consume(c->rb);
    return more < 0 ? more : n + more;
}

int64_t capture_boot_to_real_ns(const struct capture *c)
{
    return c->decoder.boot_to_real_ns;
}

void capture_close(struct capture *c)
{
    if (!c)
        return;
    ring_buffer__free(c->rb);
    for (int s = 0; s < SLOT_COUNT; s++) {
        for (int a = 0; a < AUX_MAX; a++)
            bpf_link__destroy(c->progs[s].aux_link[a]);
        bpf_link__destroy(c->progs[s].link);
    }
    for (size_t i = 0; i < c->ninstances; i++)
        instance_destroy(&c->instances[i]);
    sockets_reaper_free(&c->reaper);
    if (c->ringbuf_fd >= 0)
        close(c->ringbuf_fd);
    if (c->stats_fd >= 0)
        close(c->stats_fd);
    if (c->dns_lost_fd >= 0)
        close(c->dns_lost_fd);
    if (c->drop_suppressed_fd >= 0)
        close(c->drop_suppressed_fd);
    free(c->dns_lost);
    if (c->cgroup_fd >= 0)
        close(c->cgroup_fd);
    ksyms_free(c->ksyms);
    drop_reasons_free(c->reasons);
    free(c);
}

_Static_assert(CAPTURE_DROP_REASON_SLOTS == DROP_REASON_SLOTS, "one count per reason slot");

int capture_drops_suppressed(struct capture *c, uint64_t out[CAPTURE_DROP_REASON_SLOTS])
{
    memset(out, 0, DROP_REASON_SLOTS * sizeof(*out));
    if (c->progs[SLOT_KFREE_SKB].status != CAPTURE_PROGRAM_ATTACHED || c->ncpus <= 0)
        return -ENOENT;
    uint64_t *per_cpu = calloc((size_t)c->ncpus, sizeof(*per_cpu));
    if (!per_cpu)
        return -ENOMEM;
    int err = 0;
    for (uint32_t slot = 0; slot < DROP_REASON_SLOTS && !err; slot++) {
        if (bpf_map_lookup_elem(c->drop_suppressed_fd, &slot, per_cpu) != 0) {
            err = -errno;
            break;
        }
        for (int cpu = 0; cpu < c->ncpus; cpu++)
            out[slot] += per_cpu[cpu];
    }
    free(per_cpu);
    if (err)
        memset(out, 0, DROP_REASON_SLOTS * sizeof(*out));
    return err;
}

const char *capture_drop_reason_name(const struct capture *c, uint32_t code)
{
    return c->reasons ? drop_reasons_name(c->reasons, code) : NULL;
}

int capture_dns_lost(struct capture *c, const struct dns_lost **out)
{
    uint32_t key = 0;

    *out = NULL;
    if (c->progs[SLOT_DNS_INGRESS].status != CAPTURE_PROGRAM_ATTACHED &&
        c->progs[SLOT_DNS_ERROR].status != CAPTURE_PROGRAM_ATTACHED)
        return 0;
    if (c->ncpus <= 0)
        return -EINVAL;
    if (bpf_map_lookup_elem(c->dns_lost_fd, &key, c->dns_lost) != 0)
        return -errno;
    *out = c->dns_lost;
    return c->ncpus;
}

size_t capture_programs(struct capture *c, struct capture_program_info *out, size_t max)
{
    struct prog_stats *per_cpu = calloc((size_t)(c->ncpus > 0 ? c->ncpus : 1), sizeof(*per_cpu));

    for (size_t s = 0; s < SLOT_COUNT && s < max; s++) {
        struct capture_program_info *i = &out[s];
        uint32_t key = (uint32_t)s;

        memset(i, 0, sizeof(*i));
        snprintf(i->name, sizeof(i->name), "%s", prog_specs[s].name);
        snprintf(i->hook, sizeof(i->hook), "%s", prog_specs[s].hook);
        i->status = c->progs[s].status;
        i->prog_id = c->progs[s].prog_id;
        snprintf(i->error, sizeof(i->error), "%s", c->progs[s].error);
        i->event_type = event_type_name(prog_specs[s].type);
        for (int t = 0; t < SLOT_COUNT && c->progs[s].status == CAPTURE_PROGRAM_ATTACHED; t++)
            if ((t == (int)s || (slot_needs(t) & (1u << s))) &&
                (c->event_types & EVENT_TYPE_BIT(prog_specs[t].type)))
                i->serves |= EVENT_TYPE_BIT(prog_specs[t].type);
        if (per_cpu && c->stats_fd >= 0 && bpf_map_lookup_elem(c->stats_fd, &key, per_cpu) == 0) {
            for (int cpu = 0; cpu < c->ncpus; cpu++) {
                i->events += per_cpu[cpu].events;
                i->drops += per_cpu[cpu].drops;
                i->suppressed += per_cpu[cpu].suppressed;
                i->untracked += per_cpu[cpu].untracked;
            }
        }
        if (c->progs[s].link) {
            struct bpf_prog_info info = {0};
            __u32 len = sizeof(info);

            if (bpf_obj_get_info_by_fd(c->progs[s].prog_fd, &info, &len) == 0)
                i->missed = info.recursion_misses;
        }
        /* The programs attached with it run for it: their skipped runs are its own. */
        for (int a = 0; a < AUX_MAX; a++) {
            struct bpf_prog_info info = {0};
            __u32 len = sizeof(info);

            if (c->progs[s].aux_link[a] &&
                bpf_obj_get_info_by_fd(c->progs[s].aux_fd[a], &info, &len) == 0)
                i->missed += info.recursion_misses;
        }
    }
    free(per_cpu);
    return SLOT_COUNT;
}

void capture_record_losses(struct capture *c, struct capture_record_losses *out)
{
    out->malformed = __atomic_load_n(&c->decoder.malformed, __ATOMIC_RELAXED);
    out->no_memory = __atomic_load_n(&c->decoder.no_memory, __ATOMIC_RELAXED);
    out->duplicate_exit = __atomic_load_n(&c->exits.repeated, __ATOMIC_RELAXED);
}

size_t capture_attached(struct capture *c)
{
    size_t n = 0;

    for (int s = 0; s < SLOT_COUNT; s++)
        n += c->progs[s].status == CAPTURE_PROGRAM_ATTACHED;
    return n;
}

/*
 * bench_empty_progs OBJ READY: loads every program of the BPF object OBJ
 * (build/bench/empty_progs.bpf.o), attaches each to its hook, writes one
 * "id hook" line per program to READY (written whole, then renamed into
 * place) and holds them until SIGINT or SIGTERM. For scripts/bench-agent.sh.
 * A program whose tracepoint this kernel lacks is left out.
 */
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define MAX_PROGS 16

int main(int argc, char **argv)
{
    struct bpf_link *links[MAX_PROGS];
    struct bpf_program *p;
    size_t n = 0;
    char tmp[4096];
    sigset_t set;
    int sig;

    if (argc != 3) {
        fprintf(stderr, "usage: bench_empty_progs OBJ READY\n");
        return 2;
    }
    /* Blocked before any thread could exist, so sigwait() below takes them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);

    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (obj != NULL && vmlinux != NULL) {
        bpf_object__for_each_program(p, obj)
        {
            char tp[128];
            const char *hook = strchr(bpf_program__section_name(p), '/');
            snprintf(tp, sizeof(tp), "btf_trace_%s", hook != NULL ? hook + 1 : "");
            if (btf__find_by_name_kind(vmlinux, tp, BTF_KIND_TYPEDEF) < 0)
                bpf_program__set_autoload(p, false);
        }
    }
    btf__free(vmlinux);
    if (obj == NULL || bpf_object__load(obj) != 0) {
        fprintf(stderr, "bench_empty_progs: cannot load %s\n", argv[1]);
        return 1;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", argv[2]);
    FILE *out = fopen(tmp, "w");
    if (out == NULL) {
        perror("bench_empty_progs: READY");
        return 1;
    }
    bpf_object__for_each_program(p, obj)
    {
        if (!bpf_program__autoload(p))
            continue;
        struct bpf_prog_info info;
        __u32 len = sizeof(info);
        const char *hook = strchr(bpf_program__section_name(p), '/');

        memset(&info, 0, sizeof(info));
        if (n == MAX_PROGS || (links[n] = bpf_program__attach(p)) == NULL ||
            bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len) != 0) {
            fprintf(stderr, "bench_empty_progs: cannot attach %s\n", bpf_program__name(p));
            return 1;
        }
        n++;
        fprintf(out, "%u %s\n", info.id, hook != NULL ? hook + 1 : bpf_program__name(p));
    }
    if (fclose(out) != 0 || rename(tmp, argv[2]) != 0) {
        perror("bench_empty_progs: READY");
        return 1;
    }
    sigwait(&set, &sig);
    for (size_t i = 0; i < n; i++)
        bpf_link__destroy(links[i]);
    bpf_object__close(obj);
    return 0;
}

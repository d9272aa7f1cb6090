/*
 * The VM install: `make install` / `make uninstall`, the systemd units and
 * `make deb`, checked the way an operator meets them.
 *
 * - install: `make install` into a scratch PREFIX puts every file in place,
 *   keeps an edited configuration on reinstall, and `make uninstall` removes
 *   what it installed.
 * - units: `systemd-analyze verify` accepts the installed units (binaries,
 *   man pages and all), and each program runs under its unit's restrictions
 *   without systemd as PID 1: the capability set read from the unit
 *   (setpriv, as an unprivileged dynamic-range uid with no_new_privs), every
 *   mount read-only (ProtectSystem=strict), ProtectKernelTunables (hiding
 *   /proc/kallsyms) and ReadOnlyPaths= under /proc as the unit says, empty
 *   /home, /root (ProtectHome) and a private /tmp (PrivateTmp), in a mount
 *   namespace of its own. The agent must say READY=1 on $NOTIFY_SOCKET
 *   (Type=notify), capture a real exec into its HTTP API and publish to a
 *   real nats-server. The seccomp-based settings (RestrictAddressFamilies,
 *   MemoryDenyWriteExecute, ...) need systemd itself and are only verified.
 * - package: `make deb` builds a package whose Depends names the Debian
 *   package of every library the binaries link; apt installs it on this
 *   machine with the units in place and not enabled, and purge removes it.
 *
 * Needs root (namespaces, BPF, dpkg), help2man, systemd-analyze, setpriv,
 * unshare, dpkg-deb and apt: all from make deps.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <linux/capability.h>
#include <nats/nats.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define SANDBOX_UID 61184 /* the first uid systemd's DynamicUser= hands out */
#define STR_(x)     #x
#define STR(x)      STR_(x)

/* Bounded so that every command line built from them fits. */
#define DIR_MAX 1024
#ifndef INSTALL_MAKE_ARGS
#define INSTALL_MAKE_ARGS ""
#endif

static char repo[512];
static char scratch[DIR_MAX - 128];

/* tu_run() of a formatted command line. */
static int sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh(char **out, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return tu_run(cmd, out);
}

/* Runs a command that must succeed; returns its output (malloc'd). */
static char *must(const char *what, const char *cmd)
{
    char *out = NULL;
    int rc = sh(&out, "%s", cmd);
    cr_assert_eq(rc, 0, "%s failed (exit %d): %s\n%s", what, rc, cmd, out);
    return out;
}

static void require(const char *tool, const char *why)
{
    cr_assert_eq(sh(NULL, "command -v %s", tool), 0, "%s not found: %s (make deps installs it)",
                 tool, why);
}

static void setup(void)
{
    cr_assert_eq(geteuid(), 0, "needs root: mount namespaces, eBPF and dpkg");
    char *abs = realpath(tu_repo_path("GNUmakefile"), NULL);
    cr_assert_not_null(abs, "GNUmakefile not found: run from the repository root");
    snprintf(repo, sizeof(repo), "%.*s", (int)(strrchr(abs, '/') - abs), abs);
    free(abs);
    /* Not in the repository, which may be under /tmp (PrivateTmp) or /root
     * (ProtectHome): the sandbox hides both, and the programs run from the
     * scratch prefix. /var/lib is what a real install's state sits beside. */
    snprintf(scratch, sizeof(scratch), "/var/lib/ebpf-monitor-install-test-XXXXXX");
    cr_assert_not_null(mkdtemp(scratch), "mkdtemp %s: %s", scratch, strerror(errno));
    chmod(scratch, 0755); /* like /usr and /etc: the sandbox's unprivileged uid must get in */
    require("help2man", "make install generates the man pages with it");
    require("systemd-analyze", "the units are checked with systemd-analyze verify");
}

static void teardown(void)
{
    if (scratch[0])
        sh(NULL, "rm -rf '%s'", scratch);
}

TestSuite(e2e_install, .init = setup, .fini = teardown, .timeout = 120);

/* `make install` with everything under scratch/<name>, configuration included. */
static void install_to(const char *name, char *prefix, size_t len)
{
    snprintf(prefix, len, "%s/%s", scratch, name);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "make -s -C '%s' " INSTALL_MAKE_ARGS " install PREFIX='%s' SYSCONFDIR='%s/etc'", repo,
             prefix, prefix);
    free(must("make install", cmd));
}

static bool exists(const char *prefix, const char *rel)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", prefix, rel);
    return access(path, F_OK) == 0;
}

static unsigned file_mode(const char *prefix, const char *rel)
{
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", prefix, rel);
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_mode & 07777;
}

/* The value of the first `key=` line of a unit file (static storage), or "" when absent. */
static const char *unit_value(const char *unit_path, const char *key)
{
    static char value[1024];
    char *text = tu_read_file(unit_path);
    cr_assert_not_null(text, "cannot read %s", unit_path);
    size_t klen = strlen(key);
    value[0] = '\0';
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
            snprintf(value, sizeof(value), "%s", line + klen + 1);
            break;
        }
    }
    free(text);
    return value;
}

static const char *const installed_files[] = {
    "bin/ebpf-agent",
    "bin/ebpf-aggregator",
    "bin/ebpf-server",
    "lib/systemd/system/ebpf-agent.service",
    "lib/systemd/system/ebpf-aggregator.service",
    "share/man/man8/ebpf-agent.8",
    "share/man/man8/ebpf-aggregator.8",
    "share/man/man8/ebpf-server.8",
    "share/doc/ebpf-monitor/openapi.json",
    "etc/ebpf-monitor/agent.yaml",
    "etc/ebpf-monitor/aggregator.yaml",
    "etc/ebpf-monitor/agent.env",
    "etc/ebpf-monitor/aggregator.env",
};

/* Every relative link of the installed README (](target) or ](target#anchor)) names a file
 * installed beside it. */
static void readme_links_resolve(const char *prefix)
{
    char path[DIR_MAX + 64];
    snprintf(path, sizeof(path), "%s/share/doc/ebpf-monitor/README.md", prefix);
    char *text = tu_read_file(path);
    cr_assert_not_null(text, "no README.md installed");
    int links = 0;
    for (char *l = strstr(text, "]("); l; l = strstr(l + 2, "](")) {
        char target[256];
        size_t n = strcspn(l + 2, ")#");
        if (n == 0 || n >= sizeof(target) || strncmp(l + 2, "http", 4) == 0)
            continue;
        memcpy(target, l + 2, n);
        target[n] = '\0';
        char rel[300];
        snprintf(rel, sizeof(rel), "share/doc/ebpf-monitor/%s", target);
        cr_expect(exists(prefix, rel), "README links to %s, which is not installed", target);
        links++;
    }
    cr_expect_gt(links, 10, "only %d relative links found", links);
    free(text);
}

Test(e2e_install, make_install_and_uninstall)
{
    char prefix[DIR_MAX], cmd[8192];
    install_to("usr", prefix, sizeof(prefix));
    for (size_t i = 0; i < sizeof(installed_files) / sizeof(installed_files[0]); i++)
        cr_expect(exists(prefix, installed_files[i]), "make install did not install %s",
                  installed_files[i]);
    cr_expect_eq(file_mode(prefix, "etc/ebpf-monitor/agent.env"), 0600,
                 "agent.env may hold secrets: root only");
    cr_expect_eq(file_mode(prefix, "bin/ebpf-agent"), 0755);
    readme_links_resolve(prefix);

    /* The installed binaries run and accept the installed configuration. */
    snprintf(cmd, sizeof(cmd), "'%s/bin/ebpf-agent' --version", prefix);
    char *out = must("ebpf-agent --version", cmd);
    cr_expect(strncmp(out, "ebpf-agent ", 11) == 0, "--version printed: %s", out);
    free(out);
    /* Each command, subcommands too, says its version; each names itself in its usage. */
    for (const char *const *sub = (const char *const[]){"", " tail", " decode", NULL}; *sub;
         sub++) {
        snprintf(cmd, sizeof(cmd), "'%s/bin/ebpf-aggregator'%s --version", prefix, *sub);
        out = must("ebpf-aggregator --version", cmd);
        cr_expect(strncmp(out, "ebpf-aggregator ", 16) == 0, "%s printed: %s", cmd, out);
        free(out);
    }
    snprintf(cmd, sizeof(cmd), "'%s/bin/ebpf-server' --help", prefix);
    out = must("ebpf-server --help", cmd);
    cr_expect(strncmp(out, "Usage: ebpf-server ", 19) == 0, "%s printed: %.80s", cmd, out);
    free(out);
    snprintf(cmd, sizeof(cmd),
             "'%s/bin/ebpf-agent' --config '%s/etc/ebpf-monitor/agent.yaml' --check-config && "
             "'%s/bin/ebpf-aggregator' --config '%s/etc/ebpf-monitor/aggregator.yaml' "
             "--check-config",
             prefix, prefix, prefix, prefix);
    free(must("the default configuration", cmd));
    snprintf(cmd, sizeof(cmd), "MANWIDTH=80 man -l '%s/share/man/man8/ebpf-agent.8'", prefix);
    out = must("man ebpf-agent", cmd);
    cr_expect_not_null(strstr(out, "--config"), "the man page lacks the options:\n%s", out);
    free(out);
    /* The aggregator's page names its subcommands in SYNOPSIS, not in DESCRIPTION's text. */
    snprintf(cmd, sizeof(cmd), "MANWIDTH=80 man -l '%s/share/man/man8/ebpf-aggregator.8'", prefix);
    out = must("man ebpf-aggregator", cmd);
    char *synopsis = strstr(out, "SYNOPSIS"), *description = strstr(out, "DESCRIPTION");
    cr_assert(synopsis && description, "no SYNOPSIS or DESCRIPTION:\n%s", out);
    /* Each subcommand has a section with its own options. */
    char *tail = strstr(out, "\nTAIL\n"), *decode = strstr(out, "\nDECODE\n");
    cr_expect(tail && decode && strstr(tail, "--rcode") && strstr(tail, "--peer-pod") &&
                  strstr(decode, "nats sub --translate"),
              "no TAIL and DECODE sections with their options:\n%s", out);
    *description = '\0';
    cr_expect(strstr(synopsis, "ebpf-aggregator tail") &&
                  strstr(synopsis, "ebpf-aggregator decode"),
              "the SYNOPSIS lacks tail or decode:\n%s", synopsis);
    free(out);

    /* The units name this prefix's binaries and configuration. */
    char unit[PATH_MAX], want[PATH_MAX + 64];
    snprintf(unit, sizeof(unit), "%s/lib/systemd/system/ebpf-agent.service", prefix);
    snprintf(want, sizeof(want), "%s/bin/ebpf-agent --config %s/etc/ebpf-monitor/agent.yaml",
             prefix, prefix);
    cr_expect_str_eq(unit_value(unit, "ExecStart"), want);
    snprintf(want, sizeof(want), "-%s/etc/ebpf-monitor/agent.env", prefix);
    cr_expect_str_eq(unit_value(unit, "EnvironmentFile"), want);

    /* A configuration the program refuses is not restarted over and over: its exit status is the
     * unit's RestartPreventExitStatus=. */
    for (int i = 0; i < 2; i++) {
        const char *prog = i ? "ebpf-aggregator" : "ebpf-agent";
        snprintf(unit, sizeof(unit), "%s/lib/systemd/system/%s.service", prefix, prog);
        snprintf(cmd, sizeof(cmd), "'%s/bin/%s' --batch-size 0", prefix, prog);
        char *bad = NULL;
        int rc = sh(&bad, "%s", cmd);
        free(bad);
        char status[16];
        snprintf(status, sizeof(status), "%d", rc);
        cr_expect_str_eq(unit_value(unit, "RestartPreventExitStatus"), status,
                         "%s exits %d on a bad configuration", prog, rc);
    }

    /* An edited configuration survives a reinstall and an uninstall. */
    snprintf(cmd, sizeof(cmd), "echo 'NODE_NAME: edited' >> '%s/etc/ebpf-monitor/agent.yaml'",
             prefix);
    free(must("editing agent.yaml", cmd));
    install_to("usr", prefix, sizeof(prefix));
    snprintf(cmd, sizeof(cmd), "grep -q '^NODE_NAME: edited' '%s/etc/ebpf-monitor/agent.yaml'",
             prefix);
    free(must("reinstall keeps the edited agent.yaml", cmd));

    snprintf(cmd, sizeof(cmd),
             "make -s -C '%s' " INSTALL_MAKE_ARGS " uninstall PREFIX='%s' SYSCONFDIR='%s/etc'",
             repo, prefix, prefix);
    free(must("make uninstall", cmd));
    for (size_t i = 0; i < sizeof(installed_files) / sizeof(installed_files[0]); i++) {
        bool edited = strcmp(installed_files[i], "etc/ebpf-monitor/agent.yaml") == 0;
        cr_expect_eq(exists(prefix, installed_files[i]), edited, "%s after make uninstall: %s",
                     installed_files[i], edited ? "the edited file is gone" : "still there");
    }
}

Test(e2e_install, units_pass_systemd_analyze_verify)
{
    char prefix[DIR_MAX], cmd[4096];
    install_to("verify", prefix, sizeof(prefix));
    /* MANPATH: Documentation=man:... is checked against the installed pages. */
    snprintf(cmd, sizeof(cmd),
             "cd '%s/lib/systemd/system' && MANPATH='%s/share/man' systemd-analyze verify "
             "./ebpf-agent.service ./ebpf-aggregator.service",
             prefix, prefix);
    char *out = NULL;
    int rc = sh(&out, "%s", cmd);
    cr_assert_eq(rc, 0, "systemd-analyze verify failed (exit %d):\n%s", rc, out);
    /* Unknown keys and bad values are warnings with exit status 0. */
    cr_assert_str_empty(out, "systemd-analyze verify has findings:\n%s", out);
    free(out);

    /* And systemd's own hardening review rates both units well. */
    for (int i = 0; i < 2; i++) {
        const char *name = i ? "ebpf-aggregator.service" : "ebpf-agent.service";
        snprintf(cmd, sizeof(cmd),
                 "cd '%s/lib/systemd/system' && systemd-analyze security --offline=true "
                 "--threshold=%d ./%s",
                 prefix, i ? 32 : 35, name);
        rc = sh(&out, "%s", cmd);
        cr_expect_eq(rc, 0, "systemd-analyze security %s is over its threshold:\n%s", name, out);
        free(out);
    }
}

/* A datagram socket in the abstract namespace: $NOTIFY_SOCKET for the sandboxed process. */
static int notify_socket(char *name, size_t len)
{
    static int seq;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "ebpf-install-test-%d-%d",
                     (int)getpid(), seq++);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, (socklen_t)(sizeof(sa.sun_family) + 1 + n)), 0,
                 "bind: %s", strerror(errno));
    snprintf(name, len, "@%s", sa.sun_path + 1);
    return fd;
}

/* Waits for one notification datagram; returns it (static storage) or "" on timeout. */
static const char *notify_recv(int fd, int timeout_ms)
{
    static char msg[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    msg[0] = '\0';
    if (poll(&p, 1, timeout_ms) == 1) {
        ssize_t n = recv(fd, msg, sizeof(msg) - 1, 0);
        msg[n > 0 ? n : 0] = '\0';
    }
    return msg;
}

struct cap_name {
    const char *name;
    int bit;
};
static const struct cap_name cap_names[] = {
    {"CAP_BPF", CAP_BPF},
    {"CAP_PERFMON", CAP_PERFMON},
    {"CAP_SYSLOG", CAP_SYSLOG},
    {"CAP_NET_ADMIN", CAP_NET_ADMIN},
    {"CAP_SYS_ADMIN", CAP_SYS_ADMIN},
    {"CAP_SYS_RESOURCE", CAP_SYS_RESOURCE},
    {"CAP_NET_RAW", CAP_NET_RAW},
    {"CAP_DAC_READ_SEARCH", CAP_DAC_READ_SEARCH},
};

/*
 * The unit's AmbientCapabilities= as setpriv's list ("-all,+bpf,+perfmon")
 * and as a /proc/<pid>/status mask.
 */
static uint64_t unit_caps(const char *unit, char *setpriv_list, size_t len)
{
    char caps[1024];
    snprintf(caps, sizeof(caps), "%s", unit_value(unit, "AmbientCapabilities"));
    cr_assert_str_eq(unit_value(unit, "CapabilityBoundingSet"), caps,
                     "%s: the bounding set should be exactly the ambient set", unit);
    uint64_t mask = 0;
    size_t off = (size_t)snprintf(setpriv_list, len, "-all");
    for (char *c = strtok(caps, " "); c; c = strtok(NULL, " ")) {
        size_t i = 0;
        for (; i < sizeof(cap_names) / sizeof(cap_names[0]); i++)
            if (strcmp(cap_names[i].name, c) == 0)
                break;
        cr_assert_lt(i, sizeof(cap_names) / sizeof(cap_names[0]), "unknown capability %s", c);
        mask |= 1ull << cap_names[i].bit;
        char lower[64];
        size_t j = 0;
        for (const char *s = c + 4; *s && j + 1 < sizeof(lower); s++)
            lower[j++] = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
        lower[j] = '\0';
        off += (size_t)snprintf(setpriv_list + off, len - off, ",+%s", lower);
    }
    return mask;
}

/*
 * The unit's filesystem and privilege settings without systemd: a private
 * mount namespace where every mount except /dev and /proc becomes read-only
 * (ProtectSystem=strict; /sys too), /home, /root and /run/user become empty
 * and inaccessible (ProtectHome), /tmp and /var/tmp private (PrivateTmp);
 * ProtectKernelTunables=yes makes /proc/sys read-only and /proc/kallsyms and
 * /proc/kcore inaccessible (a mode 000 file over them, as systemd does), and
 * ReadOnlyPaths= under /proc is applied; then the variables of the unit's
 * EnvironmentFile, and setpriv drops to the dynamic-user range with exactly
 * the unit's capabilities and no_new_privs, exec'ing the program (same pid).
 */
/* Whether the rest of a mountinfo text mounts again on mnt (hiding the mount before it). */
static bool mount_shadowed(const char *rest, const char *mnt)
{
    char other[512];
    for (const char *line = rest; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "") {
        if (sscanf(line, "%*s %*s %*s %*s %511s", other) == 1 && strcmp(other, mnt) == 0)
            return true;
    }
    return false;
}

static const char sandbox_script[] =
    "set -e\n"
    "awk '$5 !~ /\\\\/ {print $5}' /proc/self/mountinfo | sort -u | while read -r m; do\n"
    "  case \"$m\" in /dev|/dev/*|/proc|/proc/*) continue ;; esac\n"
    "  mount -o remount,bind,ro \"$m\"\n"
    "done\n"
    "envfile=$1 caps=$2 tunables=$3 ropaths=$4; shift 4\n"
    "for d in /home /root /run/user; do\n"
    "  if [ -d \"$d\" ]; then mount -t tmpfs -o ro,mode=000 tmpfs \"$d\"; fi\n"
    "done\n"
    "mount -t tmpfs -o mode=1777 tmpfs /tmp\n"
    "mount -t tmpfs -o mode=1777 tmpfs /var/tmp\n"
    "if [ \"$tunables\" = yes ]; then\n"
    "  ropaths=\"$ropaths /proc/sys\"\n"
    "  mkdir -m 000 /tmp/.inaccessible && : > /tmp/.inaccessible/reg && chmod 000 "
    "/tmp/.inaccessible/reg\n"
    "  for f in /proc/kallsyms /proc/kcore; do\n"
    "    if [ -e \"$f\" ]; then mount --bind /tmp/.inaccessible/reg \"$f\"; fi\n"
    "  done\n"
    "fi\n"
    "for p in $ropaths; do\n"
    "  case \"$p\" in /proc/*) mount --bind \"$p\" \"$p\" && mount -o remount,bind,ro \"$p\" ;; "
    "esac\n"
    "done\n"
    "set -a; . \"$envfile\"; set +a\n"
    "exec setpriv --reuid=" STR(SANDBOX_UID) " --regid=" STR(
        SANDBOX_UID) " --clear-groups --no-new-privs --inh-caps=\"$caps\" --ambient-caps=\"$caps\" "
                     "--bounding-set=\"$caps\" --pdeathsig=KILL \"$@\"\n";

struct sandboxed {
    pid_t pid;
    int notify_fd;
    char log[PATH_MAX];
};

/*
 * Starts prog of an installed prefix the way its unit does: ExecStart's
 * command line, the EnvironmentFile (with extra variables appended), the
 * unit's capabilities, in the sandbox above. Returns the capability mask.
 */
static uint64_t sandbox_start(const char *prefix, const char *prog, const char *env_extra,
                              struct sandboxed *s)
{
    char unit[PATH_MAX], envfile[PATH_MAX], caps[256], cmd[PATH_MAX * 2], sock[108];
    snprintf(unit, sizeof(unit), "%s/lib/systemd/system/%s.service", prefix, prog);
    uint64_t mask = unit_caps(unit, caps, sizeof(caps));
    snprintf(envfile, sizeof(envfile), "%s", unit_value(unit, "EnvironmentFile") + 1);
    snprintf(cmd, sizeof(cmd), "printf '%%s\\n' %s >> '%s'", env_extra, envfile);
    free(must("writing the EnvironmentFile", cmd));

    s->notify_fd = notify_socket(sock, sizeof(sock));
    snprintf(s->log, sizeof(s->log), "%s/%s.log", scratch, prog);
    char execstart[PATH_MAX * 2];
    snprintf(execstart, sizeof(execstart), "%s", unit_value(unit, "ExecStart"));
    char tunables[16], ropaths[512];
    snprintf(tunables, sizeof(tunables), "%s", unit_value(unit, "ProtectKernelTunables"));
    snprintf(ropaths, sizeof(ropaths), "%s", unit_value(unit, "ReadOnlyPaths"));
    char *argv[20] = {"/usr/bin/unshare", "-m",    "/bin/sh", "-c",     (char *)sandbox_script,
                      "sandbox",          envfile, caps,      tunables, ropaths};
    size_t argc = 10;
    for (char *w = strtok(execstart, " "); w && argc < 19; w = strtok(NULL, " "))
        argv[argc++] = w;
    argv[argc] = NULL;
    char notify_env[160];
    snprintf(notify_env, sizeof(notify_env), "NOTIFY_SOCKET=%s", sock);
    char *env[] = {notify_env, NULL};
    s->pid = tu_spawn(argv, env, s->log);
    cr_assert_gt(s->pid, 0);
    return mask;
}

static void dump_log(const struct sandboxed *s)
{
    char *log = tu_read_file(s->log);
    cr_log_info("%s:\n%s", s->log, log ? log : "(none)");
    free(log);
}

/* notify_recv() that gives up as soon as the process has exited. */
static const char *sandbox_notified(struct sandboxed *s, int timeout_ms)
{
    for (uint64_t end = tu_mono_ms() + (uint64_t)timeout_ms; tu_mono_ms() < end;) {
        const char *msg = notify_recv(s->notify_fd, 100);
        if (msg[0])
            return msg;
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            dump_log(s);
            cr_assert_fail("the sandboxed process exited (status 0x%x) before READY=1", st);
        }
    }
    dump_log(s);
    return "";
}

/*
 * Stops the process with SIGHUP, which an operator may send out of habit (logrotate, "reload"):
 * a clean stop, logged, as for SIGTERM (which tu_stop() and the other suites send).
 */
static void sandbox_stop(struct sandboxed *s, const char *prog)
{
    kill(s->pid, SIGHUP);
    /* Waited for, not stopped: a SIGTERM on its heels would be the signal it reports. */
    int code = tu_wait_exit(s->pid, 10000);
    cr_expect_eq(code, 0, "the sandboxed process did not exit cleanly on SIGHUP (%d)", code);
    cr_expect_str_eq(notify_recv(s->notify_fd, 1000), "STOPPING=1");
    char *log = tu_read_file(s->log), want[64];
    snprintf(want, sizeof(want), "%s: SIGHUP (no reload", prog);
    cr_expect(log && strstr(log, want), "the log does not say SIGHUP stopped it:\n%s",
              log ? log : "");
    free(log);
    close(s->notify_fd);
}

/* A line of /proc/<pid>/status, e.g. "CapEff:\t0000004000000000" -> its value as text. */
static const char *proc_status(pid_t pid, const char *key)
{
    static char value[128];
    char path[64], *text;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    text = tu_read_file(path);
    cr_assert_not_null(text);
    value[0] = '\0';
    char *p = strstr(text, key);
    if (p) {
        p += strlen(key);
        p += strspn(p, ":\t ");
        snprintf(value, sizeof(value), "%.*s", (int)strcspn(p, "\n"), p);
    }
    free(text);
    return value;
}

/* What the sandboxed process really runs with: uid, capabilities, no_new_privs, read-only mounts.
 */
static void expect_restricted(pid_t pid, uint64_t caps)
{
    char want[32];
    snprintf(want, sizeof(want), "%016llx", (unsigned long long)caps);
    cr_expect_str_eq(proc_status(pid, "\nCapEff"), want);
    cr_expect_str_eq(proc_status(pid, "\nCapPrm"), want);
    cr_expect_str_eq(proc_status(pid, "\nCapBnd"), want);
    cr_expect_str_eq(proc_status(pid, "\nCapAmb"), want);
    cr_expect_str_eq(proc_status(pid, "\nNoNewPrivs"), "1");
    cr_expect(strncmp(proc_status(pid, "\nUid"), STR(SANDBOX_UID) "\t", 6) == 0, "runs as uid %s",
              proc_status(pid, "\nUid"));

    /*
     * Every mount it sees outside /dev, /proc and its private /tmp is read-only. Of mounts
     * stacked on one mount point (a bpffs over /sys/fs/bpf...) only the last is seen: the
     * ones under it are hidden, by the sandbox as by systemd, and not checked.
     */
    char path[64], *text;
    snprintf(path, sizeof(path), "/proc/%d/mountinfo", (int)pid);
    text = tu_read_file(path);
    cr_assert_not_null(text);
    const char *text_end = text + strlen(text);
    size_t checked = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char mnt[512], opts[256];
        const char *rest = line + strlen(line) < text_end ? line + strlen(line) + 1 : "";
        if (sscanf(line, "%*s %*s %*s %*s %511s %255s", mnt, opts) != 2)
            continue;
        if (mount_shadowed(rest, mnt))
            continue;
        /* /proc/sys too: with CAP_NET_ADMIN the agent could write the net.* sysctls. */
        if (!strncmp(mnt, "/dev", 4) || (!strncmp(mnt, "/proc", 5) && strcmp(mnt, "/proc/sys")) ||
            !strcmp(mnt, "/tmp") || !strcmp(mnt, "/var/tmp"))
            continue;
        cr_expect(strncmp(opts, "ro", 2) == 0 && (opts[2] == ',' || !opts[2]),
                  "%s is mounted %s in the sandbox", mnt, opts);
        checked++;
    }
    free(text);
    cr_expect_gt(checked, 0);
}

Test(e2e_install, agent_runs_under_its_unit_restrictions, .timeout = 60)
{
    char prefix[DIR_MAX], nats_log[PATH_MAX], env[512], path[96];
    install_to("sandbox", prefix, sizeof(prefix));
    int nats_port = tu_free_port(), api_port = tu_free_port();
    snprintf(nats_log, sizeof(nats_log), "%s/nats.log", scratch);
    pid_t nats = tu_nats_start(nats_port, NULL, nats_log);
    cr_assert_gt(nats, 0, "nats-server did not start");
    /* An aggregator's stand-in: batches no one subscribes to stay with the agent. */
    char url[64];
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", nats_port);
    cr_assert_eq(natsConnection_ConnectTo(&nc, url), NATS_OK);
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, "ebpf.events.>"), NATS_OK);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    snprintf(env, sizeof(env),
             "LISTEN_ADDR=127.0.0.1:%d NATS_URL=nats://127.0.0.1:%d FLUSH_INTERVAL=100ms", api_port,
             nats_port);
    struct sandboxed s;
    uint64_t caps = sandbox_start(prefix, "ebpf-agent", env, &s);
    const char *ready = sandbox_notified(&s, 20000);
    cr_assert_str_eq(ready, "READY=1", "the agent did not notify readiness");
    cr_expect(tu_wait_http(api_port, "/ready", 200, 1000), "/ready is not 200 after READY=1");
    expect_restricted(s.pid, caps);

    /* With the unit's capabilities every program attaches (the dns ones need CAP_NET_ADMIN). */
    int pst;
    json_t *progs = tu_get_json(api_port, "/api/programs", &pst);
    size_t pi;
    json_t *prog;
    json_array_foreach(json_object_get(progs, "programs"), pi, prog)
    {
        cr_expect_str_neq(tu_jstr(prog, "status"), "failed", "%s: %s", tu_jstr(prog, "name"),
                          tu_jstr(prog, "error"));
    }
    json_decref(progs);

    /* A real exec, seen through the HTTP API, and batches on the real bus. */
    char marker[PATH_MAX];
    tu_marker_make(scratch, "sbxmarker", marker, sizeof(marker));
    bool seen = false;
    for (uint64_t end = tu_mono_ms() + 10000; !seen && tu_mono_ms() < end;) {
        tu_marker_run(marker, "sbxmarker");
        snprintf(path, sizeof(path), "/api/events?type=exec&command=sbxmarker&limit=1");
        int status;
        json_t *r = tu_get_json(api_port, path, &status);
        seen = r && json_integer_value(json_object_get(r, "count")) > 0;
        json_decref(r);
    }
    cr_expect(seen, "no exec event of the marker in the sandboxed agent's API");
    bool published = false;
    for (uint64_t end = tu_mono_ms() + 5000; !published && tu_mono_ms() < end;) {
        int status;
        json_t *st = tu_get_json(api_port, "/api/stats", &status);
        json_t *sent = json_object_get(json_object_get(st, "bus"), "events_sent");
        published = json_integer_value(sent) > 0;
        json_decref(st);
        if (!published)
            usleep(50 * 1000); /* the next flush is at most FLUSH_INTERVAL away */
    }
    cr_expect(published, "the sandboxed agent published nothing to NATS");
    natsMsg *m = NULL;
    cr_expect_eq(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK, "no batch on the bus");
    natsMsg_Destroy(m);

    /* CAP_SYSLOG: kernel addresses in /proc/kallsyms name where packets drop. */
    char *log = tu_read_file(s.log);
    cr_expect(log && !strstr(log, "drop locations unavailable"), "%s", log ? log : "");
    free(log);
    sandbox_stop(&s, "ebpf-agent");
    natsConnection_Close(nc); /* first: see bus_sub_end() */
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    tu_stop(nats, 2000);
}

Test(e2e_install, aggregator_runs_under_its_unit_restrictions, .timeout = 60)
{
    char prefix[DIR_MAX], nats_log[PATH_MAX], env[512];
    install_to("sandbox-agg", prefix, sizeof(prefix));
    int nats_port = tu_free_port(), api_port = tu_free_port();
    snprintf(nats_log, sizeof(nats_log), "%s/nats.log", scratch);
    pid_t nats = tu_nats_start(nats_port, NULL, nats_log);
    cr_assert_gt(nats, 0, "nats-server did not start");

    snprintf(env, sizeof(env), "LISTEN_ADDR=127.0.0.1:%d NATS_URL=nats://127.0.0.1:%d", api_port,
             nats_port);
    struct sandboxed s;
    uint64_t caps = sandbox_start(prefix, "ebpf-aggregator", env, &s);
    cr_assert_eq(caps, 0, "the aggregator's unit grants capabilities");
    const char *ready = sandbox_notified(&s, 20000);
    cr_assert_str_eq(ready, "READY=1", "the aggregator did not notify readiness");
    cr_expect(tu_wait_http(api_port, "/ready", 200, 2000), "/ready is not 200 after READY=1");
    expect_restricted(s.pid, caps);
    sandbox_stop(&s, "ebpf-aggregator");
    tu_stop(nats, 2000);
}

/* `make deb`; returns the package's path (static storage) from make's last line. */
static const char *make_deb(void)
{
    static char deb[PATH_MAX];
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "make -s -C '%s' " INSTALL_MAKE_ARGS " deb | sed -n 's/^deb: //p' | tail -1", repo);
    char *out = must("make deb", cmd);
    out[strcspn(out, "\n")] = '\0';
    cr_assert(out[0], "make deb named no package");
    snprintf(deb, sizeof(deb), "%s%s%s", out[0] == '/' ? "" : repo, out[0] == '/' ? "" : "/", out);
    free(out);
    return deb;
}

/* Every package that holds a library the binary needs (objdump NEEDED, resolved by ldd; dpkg -S).
 */
static const char needed_packages[] =
    "for b in \"$@\"; do ldd \"$b\"; done | awk '$2 == \"=>\" && $3 ~ /^\\// {print $3}' | "
    "sort -u | while read -r lib; do\n"
    "  soname=$(basename \"$lib\")\n"
    "  for b in \"$@\"; do objdump -p \"$b\"; done | grep -q \"NEEDED *$soname\\$\" || continue\n"
    "  dpkg -S \"$lib\" 2>/dev/null || dpkg -S \"$(readlink -f \"$lib\")\" 2>/dev/null || "
    "dpkg -S \"/usr$lib\" || echo \"NOPACKAGE: $lib\"\n"
    "done | cut -d: -f1 | sort -u\n";

/* Whether the Depends field names package pkg (with or without a version). */
static bool depends_names(const char *depends, const char *pkg)
{
    size_t n = strlen(pkg);
    for (const char *p = depends; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t len = strcspn(p, " ,(\n");
        if (len == n && strncmp(p, pkg, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

Test(e2e_install, deb_installs_with_its_dependencies_and_purges, .timeout = 120)
{
    require("dpkg-deb", "make deb builds the package with it");
    require("apt-get", "the package is installed with apt");
    char cmd[PATH_MAX + 1024];
    const char *deb = make_deb();

    /* Depends names the package of every library the binaries link directly. */
    snprintf(cmd, sizeof(cmd), "dpkg-deb -f '%s' Depends", deb);
    char *depends = must("dpkg-deb -f Depends", cmd);
    snprintf(cmd, sizeof(cmd), "set -- '%s/bin/ebpf-agent' '%s/bin/ebpf-aggregator'; %s", repo,
             repo, needed_packages);
    char *needed = must("the packages of the linked libraries", cmd);
    size_t n = 0;
    for (char *p = strtok(needed, "\n"); p; p = strtok(NULL, "\n"), n++) {
        cr_expect(strncmp(p, "NOPACKAGE", 9) != 0, "%s belongs to no Debian package", p);
        cr_expect(depends_names(depends, p), "Depends lacks %s: %s", p, depends);
    }
    cr_expect_geq(n, 8, "found only %zu library packages", n);
    free(needed);
    free(depends);

    /* Installed on this machine the way the README says, then purged. */
    sh(NULL, "apt-get purge -y -qq -o DPkg::Lock::Timeout=120 ebpf-monitor");
    snprintf(cmd, sizeof(cmd),
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
             "-o DPkg::Lock::Timeout=120 '%s'",
             deb);
    free(must("apt-get install ./ebpf-monitor_*.deb", cmd));
    char *version = must("ebpf-agent --version", "/usr/bin/ebpf-agent --version");
    cr_expect(strncmp(version, "ebpf-agent ", 11) == 0, "%s", version);
    free(version);
    free(must("the unit files",
              "test -f /lib/systemd/system/ebpf-agent.service && "
              "test -f /lib/systemd/system/ebpf-aggregator.service && "
              "grep -qx 'ExecStart=/usr/bin/ebpf-agent --config /etc/ebpf-monitor/agent.yaml' "
              "/lib/systemd/system/ebpf-agent.service"));
    char *out = NULL;
    int rc = sh(&out, "systemd-analyze verify /lib/systemd/system/ebpf-agent.service "
                      "/lib/systemd/system/ebpf-aggregator.service");
    cr_expect(rc == 0 && !out[0], "systemd-analyze verify of the installed units:\n%s", out);
    free(out);
    rc = sh(&out, "ls /etc/systemd/system/*.wants/ebpf-* 2>/dev/null");
    cr_expect(rc != 0, "the package enabled a unit:\n%s", out);
    free(out);
    out = must("the package's conffiles", "dpkg-query -W -f='${Conffiles}' ebpf-monitor");
    cr_expect_not_null(strstr(out, "/etc/ebpf-monitor/agent.yaml"), "%s", out);
    cr_expect_not_null(strstr(out, "/etc/ebpf-monitor/agent.env"), "%s", out);
    free(out);
    free(must("apt-get purge", "apt-get purge -y -qq -o DPkg::Lock::Timeout=120 ebpf-monitor"));
    cr_expect_neq(access("/usr/bin/ebpf-agent", F_OK), 0, "purge left /usr/bin/ebpf-agent");
    cr_expect_neq(access("/etc/ebpf-monitor/agent.yaml", F_OK), 0,
                  "purge left /etc/ebpf-monitor/agent.yaml");
}

/*
 * Helpers for end-to-end tests: free ports, child processes stopped by PID,
 * a small HTTP/1.1 client, JSON access through jansson, the agent under test
 * and sockets in network namespaces.
 */
#ifndef EBPF_MONITOR_TESTUTIL_H
#define EBPF_MONITOR_TESTUTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A port on 127.0.0.1 free for both TCP and UDP right now. */
int tu_free_port(void);
/*
 * A UDP socket bound to 127.0.0.1 on a port the kernel picks (CLOEXEC); *port
 * receives it. The same port is bound for TCP too, in *tcp_fd (close it with
 * the socket): no TCP connection then takes the port as its local one, so a
 * test that makes the port a DNS server port (DNS_PORTS) sees no stray TCP
 * traffic (its HTTP polls, the bus) as DNS. Asserts.
 */
int tu_udp_socket(int *port, int *tcp_fd);

/*
 * Starts argv[0] with extra environment entries ("KEY=value", NULL-terminated,
 * may be NULL); stdout and stderr go to log_path (appended). Returns the pid.
 */
pid_t tu_spawn(char *const argv[], char *const env[], const char *log_path);
/* SIGTERM, wait up to timeout_ms, then SIGKILL; returns the exit status as from waitpid. */
int tu_stop(pid_t pid, int timeout_ms);
/* Waits for pid to exit on its own; returns its exit code, or -1 on timeout (then kills it). */
int tu_wait_exit(pid_t pid, int timeout_ms);

struct tu_http {
    int status;
    char content_type[128];
    char *body; /* malloc'd, NUL-terminated */
    size_t body_len;
};

/* GET http://127.0.0.1:port/path with an optional extra header line ("Authorization: ..."). */
int tu_http_get(int port, const char *path, const char *header, struct tu_http *out);
void tu_http_free(struct tu_http *r);
/* GET that parses the body as JSON; returns NULL (and fails the test) when it is not JSON. */
json_t *tu_get_json(int port, const char *path, int *status);

/* Polls GET path until it returns want_status or timeout_ms passes. */
bool tu_wait_http(int port, const char *path, int want_status, int timeout_ms);

/* Reads the whole file (malloc'd) or NULL. */
char *tu_read_file(const char *path);
/* Prints path's last max_bytes (0: all) to stderr under a "---- path" line, for a failing test. */
void tu_dump_file(const char *path, size_t max_bytes);

uint64_t tu_now_ns(void);
uint64_t tu_mono_ms(void);

/* True while the kernel has a BPF program with this id. */
bool tu_bpf_prog_loaded(uint32_t id);

/* True once something accepts TCP connections on 127.0.0.1:port (polls until timeout_ms). */
bool tu_wait_port(int port, int timeout_ms);

/*
 * Starts nats-server on 127.0.0.1:port with extra arguments (NULL-terminated,
 * may be NULL: e.g. {"--user", "u", "--pass", "p", NULL} or {"-c", file, NULL});
 * output goes to log_path. Waits until the port accepts connections. Returns
 * the pid (stop it with tu_stop), or -1 when the server did not come up.
 */
pid_t tu_nats_start(int port, const char *const extra[], const char *log_path);

/* Like tu_http_get, with the body parsed as JSON (NULL when it is not JSON). */
json_t *tu_get_json_hdr(int port, const char *path, const char *header, int *status);

/* The member at a dotted path ("history.events") of o; NULL when any step is missing. */
json_t *tu_jpath(json_t *o, const char *path);
/* Its integer value, or -1 when it is absent or not an integer. */
int64_t tu_jpath_int(json_t *o, const char *path);
/* Its string value, or "" when it is absent or not a string. */
const char *tu_jpath_str(json_t *o, const char *path);
/* j as compact JSON for a failure message (per-thread buffer, truncated to 4 KiB). */
const char *tu_jdump(json_t *j);

/*
 * Path of a file in the build tree: bin/ebpf-agent relative to the repo root.
 * "bin/" means the test build's own bin directory (bin-asan for a
 * `make SANITIZE=1` build) unless $EBPF_MONITOR_BIN_DIR names another.
 */
const char *tu_repo_path(const char *rel);

/*
 * Marker programs: dir/name as a symlink to /bin/true, so that running it
 * gives the task the comm `name` (an exec and an exit event to look for).
 * path receives dir/name. Asserts on failure.
 */
void tu_marker_make(const char *dir, const char *name, char *path, size_t pathlen);
/* Runs the marker once and waits for it to exit 0; returns the child's pid. */
pid_t tu_marker_run(const char *path, const char *name);

/* One TCP connection over IPv4 loopback, accepted and closed: a connection and an accept event. */
void tu_tcp_roundtrip(void);

/*
 * Runs a shell command line with stderr merged into stdout; returns its exit
 * status (128 + signal when killed) and, when out is not NULL, everything it
 * printed in *out (malloc'd, NUL-terminated). Asserts when it cannot start.
 */
int tu_run(const char *cmd, char **out);

/*
 * A whole monitor on loopback: nats-server, bin/ebpf-agent and
 * bin/ebpf-aggregator on free ports, in VM mode, batches flushed every
 * 100 ms; the aggregator gets aggregator_env too ("API_TOKEN=x" or NULL).
 * Logs go to log_dir/{nats,ebpf-agent,ebpf-aggregator}.log. Returns once
 * both answer /ready with 200; fails the test with the log otherwise.
 * tu_monitor_stop() stops whatever was started.
 */
struct tu_monitor {
    pid_t nats, agent, aggregator;
    int nats_port, agent_port, aggregator_port;
};
void tu_monitor_start(struct tu_monitor *m, const char *aggregator_env, const char *log_dir);
/* tu_monitor_start with extra environment entries for the agent ("KEY=value", NULL-terminated,
 * may be NULL). */
void tu_monitor_start_env(struct tu_monitor *m, const char *const agent_env[],
                          const char *aggregator_env, const char *log_dir);
void tu_monitor_stop(struct tu_monitor *m);

/*
 * A socket (socket(domain, type, 0)) created inside the network namespace
 * /run/netns/name: it stays there whatever process uses it, so a forked child
 * can connect or accept in that namespace without entering it. Asserts.
 */
int tu_netns_socket(const char *name, int domain, int type);

/* The real agent on 127.0.0.1, started and stopped by PID. */
struct tu_agent {
    pid_t pid;
    int port;
    char log[96];
};

/*
 * Starts bin/ebpf-agent with --node-name node and extra arguments
 * (NULL-terminated, may be NULL) and waits for /ready; fails the test with
 * the agent's log when it does not come up. Skips the test when not root.
 */
void tu_agent_start(struct tu_agent *a, const char *node, const char *const extra[]);
/* SIGTERM (then SIGKILL) and wait; returns the exit status as from waitpid, 0 if not running. */
int tu_agent_stop(struct tu_agent *a);

/* A predicate over one event of an /api/events answer. */
typedef bool (*tu_event_pred)(json_t *ev, void *arg);
/* One GET of path on port: the document, or NULL when there is none (yet). */
typedef json_t *(*tu_event_fetch)(int port, const char *path);

/* tu_get_json that answers NULL unless the status is 200. */
json_t *tu_fetch_json(int port, const char *path);
/*
 * Polls path until an element of its "events" satisfies pred or timeout_ms
 * passes; returns that event (a new reference) or NULL.
 */
json_t *tu_poll_event(tu_event_fetch fetch, int port, const char *path, tu_event_pred pred,
                      void *arg, int timeout_ms);
/* tu_poll_event with tu_fetch_json. */
json_t *tu_wait_event(int port, const char *path, tu_event_pred pred, void *arg, int timeout_ms);

/* o[k] as a string, or NULL when absent or not a string. */
const char *tu_jstr(json_t *o, const char *k);
/* o[k] as an integer; fails the test when it is absent or not an integer. */
json_int_t tu_jint(json_t *o, const char *k);

#endif

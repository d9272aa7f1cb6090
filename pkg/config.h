/*
 * Configuration for the agent and the aggregator (README.md, "Configuration").
 *
 * Precedence: command-line flag > environment variable > YAML file
 * (--config FILE or CONFIG_FILE) > default. Every key has one name used
 * everywhere: the environment variable (BATCH_SIZE), the YAML key (BATCH_SIZE
 * or batch_size) and the flag (--batch-size). A bad value is one line naming
 * the key, the value, where it came from and what is allowed.
 */
#ifndef EBPF_MONITOR_CONFIG_H
#define EBPF_MONITOR_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum config_role {
    CONFIG_AGENT = 1,
    CONFIG_AGGREGATOR = 2,
};

enum config_encoding {
    CONFIG_ENCODING_PROTOBUF,
    CONFIG_ENCODING_JSON,
};

enum config_mode {
    CONFIG_MODE_VM,
    CONFIG_MODE_KUBERNETES,
};

#define CONFIG_STR 256
#define CONFIG_URL 1024

/* Ports in DNS_PORTS (bpf/dns_events.h has the same bound). */
#define CONFIG_DNS_PORTS_MAX 4

#define CONFIG_KEYS_MAX 128

struct config {
    enum config_role role;
    char config_file[CONFIG_STR];

    enum config_mode deployment_mode;
    char node_name[CONFIG_STR];
    char pod_name[CONFIG_STR];
    char pod_namespace[CONFIG_STR];

    char nats_url[CONFIG_URL];
    char nats_creds[CONFIG_STR];
    char nats_token[CONFIG_STR];
    char nats_user[CONFIG_STR];
    char nats_password[CONFIG_STR];
    char nats_tls_ca[CONFIG_STR];
    char nats_tls_cert[CONFIG_STR];
    char nats_tls_key[CONFIG_STR];
    char subject_prefix[CONFIG_STR];
    uint32_t batch_size;
    uint64_t flush_interval_ns;
    uint64_t heartbeat_ns;
    enum config_encoding encoding;
    uint64_t outage_buffer_bytes;

    uint32_t event_types; /* EVENT_TYPE_BIT mask */
    uint64_t ringbuf_bytes;
    uint32_t drop_rate_limit;
    uint16_t dns_ports[CONFIG_DNS_PORTS_MAX]; /* DNS server ports, 0 = unused slot */
    uint64_t dns_timeout_ns;                  /* a query unanswered this long is a timeout */
    uint32_t dns_rate_limit;                  /* dns records per second per CPU and direction */
    uint32_t dns_pending_max;                 /* queries awaiting their answer */
    uint32_t dns_metrics_max_series;          /* (namespace, workload) DNS series on /metrics */
    char redact_args[CONFIG_URL]; /* REDACT_ARGS, validated; compile with redact_new() */

    char cgroup_root[CONFIG_STR];
    char capture_cgroup[CONFIG_STR];    /* CAPTURE_CGROUP as given; empty = every cgroup */
    uint64_t capture_cgroup_id;         /* resolved by config_load: the subtree's cgroup id */
    uint32_t capture_cgroup_level;      /* and its depth below the cgroup v2 root (root = 0) */
    char capture_cgroup_path[PATH_MAX]; /* and its absolute path (the dns programs attach there) */
    char k8s_api_url[CONFIG_URL];
    char k8s_token_path[CONFIG_STR];
    char k8s_ca_path[CONFIG_STR];
    uint64_t k8s_tombstone_ttl_ns;
    uint32_t k8s_max_pods;

    char listen_addr[CONFIG_STR];
    char queue_group[CONFIG_STR];
    char control_subject[CONFIG_STR];
    char api_token[CONFIG_STR];
    char tls_cert[CONFIG_STR];
    char tls_key[CONFIG_STR];

    uint64_t history_size;
    uint64_t history_max_age_ns;
    uint64_t stale_after_ns;
    uint64_t query_timeout_ns;
    uint64_t flow_retention_ns;
    uint32_t flow_max_edges;          /* edge-minutes held by pkg/flows */
    uint32_t flow_metrics_max_series; /* aggregator /metrics flow series */
    uint64_t peer_ttl_ns;             /* aggregator: pkg/peers claim lifetime without a report */
    uint64_t peer_grace_ns;
    uint32_t peer_max_entries; /* (IP, pod) claims in pkg/peers */
    uint64_t join_window_ns;   /* aggregator: the ClusterIP join's window (pkg/joins) */

    bool check_only; /* --check-config: validate and exit */
    /* Where each key's value came from, by key (config.c's table and sources): what an error
     * found after every source is read says. */
    unsigned char key_source[CONFIG_KEYS_MAX];
};

enum config_result {
    CONFIG_OK = 0,
    CONFIG_EXIT = 1,      /* --help or --version was printed: exit 0 */
    CONFIG_INVALID = -22, /* err holds the one-line message: exit 2 */
};

/*
 * Loads the configuration for role from argv (argv[0] is the program),
 * the environment and the YAML file. On CONFIG_INVALID err holds the message.
 */
enum config_result config_load(struct config *c, enum config_role role, int argc, char **argv,
                               char *err, size_t errlen);

/*
 * config_load() for a program's main(): prints errors as "<prog>: <message>"
 * and "configuration OK" for --check-config. Returns -1 when the program
 * should run, else its exit status (0 after --help, --version or a good
 * --check-config; 2 for a bad value).
 */
int config_load_main(struct config *c, enum config_role role, int argc, char **argv);

/*
 * Checks that path, the value of key (NATS_CREDS, TLS_CERT, ...), opens for
 * reading and is a regular file, without reading it. 0, or -EINVAL with a
 * one-line message naming the key, the path and why in err.
 */
int config_check_file(const char *key, const char *path, char *err, size_t errlen);

/*
 * Whether s is a subject NATS takes: tokens separated by '.', none empty, no space or control
 * character (a line break would end the protocol line it is sent on). With wildcards, '*' and
 * a last '>' as a subscription has them; without, neither character at all.
 */
bool config_subject_valid(const char *s, bool wildcards);

/* Prints --help for role. */
void config_print_help(FILE *out, enum config_role role, const char *prog);

/* Parses "500ms", "30s", "1m", "2h", "1h30m". 0 or -EINVAL. */
/* The comma list of URLs with any "user:password@" or "token@" removed (for logs, errors and
 * /api/stats). */
void config_redact_urls(const char *urls, char *out, size_t len);
int config_parse_duration(const char *s, uint64_t *out_ns);
/* Parses "64MiB", "512KiB", "1GiB", "1048576". 0 or -EINVAL. */
int config_parse_bytes(const char *s, uint64_t *out);

const char *config_mode_name(enum config_mode m);
const char *config_encoding_name(enum config_encoding e);

/*
 * How a stop by signal sig is logged: "SIGINT", "SIGTERM", or for SIGHUP, which
 * stops the programs as SIGTERM does (cleanly, rather than killing them
 * unlogged), a word that there is no reload.
 */
const char *config_stop_signal_text(int sig);

#endif

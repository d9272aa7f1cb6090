/*
 * DEPLOYMENT_MODE=kubernetes with no API server to ask (no K8S_API_URL, no
 * KUBERNETES_SERVICE_HOST): each binary still runs, and says at start what
 * it cannot name without one. Real binaries (the agent loads its programs);
 * NATS is not needed for this and is left unreachable.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

/* Starts bin with the Kubernetes mode and no API server, and checks its log says so. */
static void runs_and_says(const char *bin, const char *said)
{
    char listen[32], log[96];
    int port = tu_free_port();

    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    snprintf(log, sizeof(log), "/tmp/e2e-k8s-no-api-%d-%d.log", getpid(), port);
    unlink(log);
    char *argv[] = {(char *)tu_repo_path(bin), "--listen-addr", listen, NULL};
    char *env[] = {"DEPLOYMENT_MODE=kubernetes", "EVENT_TYPES=exec", "NATS_URL=nats://127.0.0.1:1",
                   NULL};
    pid_t pid = tu_spawn(argv, env, log);
    bool up = tu_wait_http(port, "/health", 200, 30000);
    tu_stop(pid, 10000);
    char *text = tu_read_file(log);
    cr_assert(up, "%s never answered /health; log:\n%s", bin, text ? text : "(none)");
    cr_assert(text != NULL && strstr(text, "no Kubernetes API server") != NULL &&
                  strstr(text, said) != NULL,
              "%s does not say it has no API server; log:\n%s", bin, text ? text : "(none)");
    free(text);
    unlink(log);
}

Test(e2e_k8s_no_api, both_binaries_say_what_they_cannot_name, .timeout = 90)
{
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("K8S_API_URL");
    runs_and_says("bin/ebpf-agent", "pods are known by UID and container id only");
    runs_and_says("bin/ebpf-aggregator", "Services are unknown");
}

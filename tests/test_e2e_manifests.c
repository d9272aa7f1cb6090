/*
 * Kubernetes manifests, images and deploy script: renders manifests/ with
 * kubectl's kustomize and checks the result against the Kubernetes schemas
 * (npm kubernetes-models) and against what the real binaries, Makefile and
 * Dockerfiles do. Each test runs one check of tests/k8s/check.mjs, which
 * prints a line per finding; see that file for the details.
 *
 * Needs node, kubectl and the npm packages of tests/k8s (scripts/deps-k8s.sh,
 * run by make deps). When one is missing the tests fail and say so: a silent
 * skip would let broken manifests through.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* True when cmd is an executable found in PATH. */
static bool in_path(const char *cmd)
{
    char line[256];
    snprintf(line, sizeof(line), "command -v %s >/dev/null 2>&1", cmd);
    return system(line) == 0;
}

/* Fails the test with a clear message when a prerequisite is missing. */
static void require_tools(void)
{
    cr_assert(in_path("node"), "node not found: install Node.js (make deps installs it)");
    cr_assert(in_path("kubectl"),
              "kubectl not found: the manifest tests render manifests/ with kubectl kustomize");
    cr_assert(access(tu_repo_path("tests/k8s/node_modules/kubernetes-models/package.json"), F_OK) ==
                  0,
              "npm packages of tests/k8s are missing: run scripts/deps-k8s.sh (part of make deps)");
    cr_assert(access(tu_repo_path("bin/ebpf-agent"), X_OK) == 0 &&
                  access(tu_repo_path("bin/ebpf-aggregator"), X_OK) == 0,
              "bin/ebpf-agent and bin/ebpf-aggregator must be built first (make)");
}

/* Runs one check; returns its exit code with its whole output in *out (malloc'd). */
static int run_check(const char *name, char **out)
{
    char script[4096];
    snprintf(script, sizeof(script), "%s", tu_repo_path("tests/k8s/check.mjs"));
    char *abs = realpath(script, NULL);
    cr_assert_not_null(abs, "tests/k8s/check.mjs not found");
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "node '%s' %s 2>&1", abs, name);
    free(abs);

    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s failed", cmd);
    size_t cap = 8192, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs a check and asserts it passed, showing its findings when it did not. */
static void check(const char *name)
{
    require_tools();
    char *out = NULL;
    int rc = run_check(name, &out);
    if (rc != 0)
        cr_log_error("check.mjs %s:\n%s", name, out);
    cr_assert_neq(rc, 3, "check %s: a tool or package is missing:\n%s", name, out);
    cr_assert_eq(rc, 0, "check %s failed (exit %d)", name, rc);
    /* A pass is the verdict line, after at least one positive finding. */
    char verdict[128];
    snprintf(verdict, sizeof(verdict), "%s: pass\n", name);
    cr_assert_not_null(strstr(out, verdict), "check %s printed no verdict:\n%s", name, out);
    cr_assert_not_null(strstr(out, "ok: "), "check %s checked nothing:\n%s", name, out);
    free(out);
}

TestSuite(e2e_manifests, .timeout = 120);

Test(e2e_manifests, kustomize_renders_the_seed_names)
{
    check("render");
}

Test(e2e_manifests, every_object_validates_against_the_kubernetes_schemas)
{
    check("schema");
}

Test(e2e_manifests, images_are_the_ones_make_docker_build_builds)
{
    check("images");
}

Test(e2e_manifests, every_container_has_requests_limits_and_probes)
{
    check("resources");
}

Test(e2e_manifests, probe_paths_are_served_and_agent_runs_with_daemonset_capabilities)
{
    check("probes");
}

Test(e2e_manifests, configmap_is_accepted_by_both_binaries)
{
    check("config");
}

Test(e2e_manifests, container_env_is_accepted_by_the_binaries)
{
    check("env");
}

Test(e2e_manifests, daemonset_not_privileged_and_rbac_network_least_privilege)
{
    check("security");
}

Test(e2e_manifests, policy_checks_reject_broken_manifests)
{
    check("selftest");
}

Test(e2e_manifests, nats_users_per_role_least_privilege_passwords_from_secrets)
{
    check("auth");
}

Test(e2e_manifests, nats_three_servers_routes_pdb_anti_affinity)
{
    check("ha");
}

Test(e2e_manifests, deploy_script_creates_keeps_and_rotates_the_nats_secrets)
{
    check("secrets");
}

Test(e2e_manifests, dockerfiles_build_with_make_and_ship_every_linked_library)
{
    check("dockerfiles");
}

Test(e2e_manifests, deploy_script_flags_take_effect)
{
    check("deploy");
}

Test(e2e_manifests, docs_commands_match_manifests_and_scripts)
{
    check("docs");
}

Test(e2e_manifests, missing_npm_packages_fail_with_a_clear_message)
{
    require_tools();
    /* A copy of check.mjs where its packages cannot be found. */
    char dir[] = "/tmp/ebpf-manifests-nodeps.XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cmd[8192];
    char *src = realpath(tu_repo_path("tests/k8s/check.mjs"), NULL);
    cr_assert_not_null(src);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/check.mjs' && cd / && node '%s/check.mjs' render 2>&1",
             src, dir, dir);
    free(src);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char buf[4096] = {0};
    size_t n = fread(buf, 1, sizeof(buf) - 1, p);
    buf[n] = '\0';
    int st = pclose(p);
    char rm[256];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    cr_assert_eq(system(rm), 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3, "expected exit 3, got %d: %s", st, buf);
    cr_assert_not_null(strstr(buf, "run scripts/deps-k8s.sh"), "unclear message: %s", buf);
}

#!/usr/bin/env bash
# Builds, pushes and deploys ebpf-monitor on Kubernetes; see docs/kubernetes.md.
#
# The images are $REGISTRY/ebpf-monitor:$TAG (agent) and
# $REGISTRY/ebpf-aggregator:$TAG, built by `make docker-build`. With the
# default registry, tag and namespace, deploy is exactly
# `kubectl apply -k manifests`; otherwise the manifests are rendered through a
# temporary kustomization that sets the images and the namespace.
#
# NATS is authenticated: deploy first creates the Secrets that hold the NATS
# passwords (random, when they do not exist yet); rotate-secrets replaces them
# and restarts everything that reads them.
set -euo pipefail

DEFAULT_REGISTRY=ghcr.io/ebpf-monitor
DEFAULT_TAG=latest
DEFAULT_NAMESPACE=ebpf-system
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300s}
# The NATS passwords, one Secret per role (key "password"); read by
# manifests/nats/statefulset.yaml, daemonset.yaml and aggregator-deployment.yaml.
SECRETS="nats-credentials-agent nats-credentials-aggregator nats-credentials-route"

KUBECTL=${KUBECTL:-kubectl}
DOCKER=${DOCKER:-docker}
MAKE=${MAKE:-make}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prog=$(basename "$0")

usage() {
    cat <<EOF
Usage: $prog COMMAND [OPTIONS]

Commands:
  build       build both images (make docker-build)
  push        push both images (build them first)
  deploy      create the NATS credentials when absent (as secrets does),
              apply the manifests and wait for the rollout
  secrets     create the Secrets that hold the NATS passwords, with random
              passwords, unless they exist (namespace included)
  rotate-secrets
              new random NATS passwords, then restart NATS, the aggregators
              and the agents so that they use them
  undeploy    delete everything the manifests created
  status      show the workloads, pods and services
  logs [agent|aggregator|nats]
              recent logs of every pod of that component (default: all three)
  render      print the manifests deploy would apply (no cluster needed)
  all         build, push, deploy

Options:
  --registry R    image registry/prefix (default $DEFAULT_REGISTRY)
  --tag T         image tag (default $DEFAULT_TAG)
  --namespace N   Kubernetes namespace (default $DEFAULT_NAMESPACE)
  --privileged    deploy the agent privileged (manifests/components/privileged)
  -h, --help      this help

Images: R/ebpf-monitor:T (agent) and R/ebpf-aggregator:T (aggregator).
Environment: KUBECTL, DOCKER, MAKE (the commands used), ROLLOUT_TIMEOUT
(deploy's wait, default 300s).
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 2
}

registry=$DEFAULT_REGISTRY
tag=$DEFAULT_TAG
namespace=$DEFAULT_NAMESPACE
privileged=0
command=""
component=""

while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --registry | --tag | --namespace)
        if [ $# -lt 2 ] || [ -z "$2" ]; then
            die "$1 needs a value (see --help)"
        fi
        case "$1" in
        --registry) registry=$2 ;;
        --tag) tag=$2 ;;
        --namespace) namespace=$2 ;;
        esac
        shift 2
        ;;
    --registry=* | --tag=* | --namespace=*)
        value=${1#*=}
        [ -n "$value" ] || die "${1%%=*} needs a value (see --help)"
        case "$1" in
        --registry=*) registry=$value ;;
        --tag=*) tag=$value ;;
        --namespace=*) namespace=$value ;;
        esac
        shift
        ;;
    --privileged)
        privileged=1
        shift
        ;;
    -*)
        die "unknown option $1 (see --help)"
        ;;
    *)
        if [ -z "$command" ]; then
            command=$1
        elif [ "$command" = logs ] && [ -z "$component" ]; then
            component=$1
        else
            die "unexpected argument $1 (see --help)"
        fi
        shift
        ;;
    esac
done

[ -n "$command" ] || {
    usage >&2
    exit 2
}

# Docker's reference grammar, simplified: lowercase host[:port]/path.
[[ $registry =~ ^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$ ]] ||
    die "invalid --registry \"$registry\": expected host[:port][/path] in lowercase, e.g. $DEFAULT_REGISTRY"
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
    die "invalid --tag \"$tag\": letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'"
[[ $namespace =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    die "invalid --namespace \"$namespace\": a DNS label (lowercase letters, digits, '-', at most 63)"
case "$component" in
"" | agent | aggregator | nats) ;;
*) die "invalid logs component \"$component\": agent, aggregator or nats" ;;
esac

agent_image=$registry/ebpf-monitor:$tag
aggregator_image=$registry/ebpf-aggregator:$tag

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH ($2)"
}

need_docker() {
    need "$DOCKER" "needed to build and push images"
    "$DOCKER" info >/dev/null 2>&1 ||
        die "$DOCKER cannot reach a container engine ('$DOCKER info' failed): start the Docker daemon or set DOCKER"
}

need_cluster() {
    need "$KUBECTL" "$1"
    "$KUBECTL" version --request-timeout=10s >/dev/null 2>&1 ||
        die "$KUBECTL cannot reach a Kubernetes cluster ('$KUBECTL version' failed): check KUBECONFIG and the current context"
}

defaults() {
    [ "$registry" = "$DEFAULT_REGISTRY" ] && [ "$tag" = "$DEFAULT_TAG" ] &&
        [ "$namespace" = "$DEFAULT_NAMESPACE" ] && [ "$privileged" = 0 ]
}

# Prints the manifests with the chosen images, namespace and variant.
render() {
    need "$KUBECTL" "kubectl with built-in kustomize renders the manifests"
    if defaults; then
        "$KUBECTL" kustomize "$ROOT/manifests"
        return
    fi
    local dir rel
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ebpf-monitor-deploy.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $dir is local
    trap "rm -rf '$dir'" RETURN
    # kustomize accepts only relative paths to other kustomizations.
    rel=$(realpath --relative-to="$dir" "$ROOT/manifests")
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "namespace: $namespace"
        echo "resources:"
        echo "  - $rel"
        if [ "$privileged" = 1 ]; then
            echo "components:"
            echo "  - $rel/components/privileged"
        fi
        echo "images:"
        echo "  - name: $DEFAULT_REGISTRY/ebpf-monitor"
        echo "    newName: $registry/ebpf-monitor"
        echo "    newTag: \"$tag\""
        echo "  - name: $DEFAULT_REGISTRY/ebpf-aggregator"
        echo "    newName: $registry/ebpf-aggregator"
        echo "    newTag: \"$tag\""
    } >"$dir/kustomization.yaml"
    "$KUBECTL" kustomize "$dir"
}

do_build() {
    need_docker
    "$MAKE" -C "$ROOT" --no-print-directory docker-build REGISTRY="$registry" TAG="$tag" DOCKER="$DOCKER"
}

do_push() {
    need_docker
    local image
    for image in "$agent_image" "$aggregator_image"; do
        "$DOCKER" image inspect "$image" >/dev/null 2>&1 ||
            die "image $image not built: run '$prog build --registry $registry --tag $tag' first"
    done
    for image in "$agent_image" "$aggregator_image"; do
        echo "$prog: pushing $image"
        "$DOCKER" push "$image"
    done
}

# A random password: 40 letters and digits, starting with a letter (nats-server
# reads an environment value as it would a config value: "12345" would be a
# number, not a password).
random_password() {
    local raw
    raw=$(head -c 96 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')
    while [[ $raw =~ ^[0-9] ]]; do raw=${raw:1}; done
    [ ${#raw} -ge 40 ] || die "could not read enough random bytes from /dev/urandom"
    printf '%s' "${raw:0:40}"
}

# Creates the Secret $1 with a new random password; with $2 = replace an
# existing one is replaced, else it is kept.
ensure_secret() {
    local name=$1 mode=${2:-keep} verb=create
    if [ "$mode" = keep ] && "$KUBECTL" -n "$namespace" get secret "$name" >/dev/null 2>&1; then
        echo "$prog: secret $name exists, kept"
        return
    fi
    [ "$mode" = replace ] && verb=replace
    # The password goes through stdin, never on a command line.
    "$KUBECTL" -n "$namespace" "$verb" -f - >/dev/null <<SECRET
apiVersion: v1
kind: Secret
metadata:
  name: $name
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: ebpf-monitor
type: Opaque
stringData:
  password: $(random_password)
SECRET
    echo "$prog: secret $name $([ "$mode" = replace ] && echo replaced || echo created) with a random password"
}

ensure_namespace() {
    "$KUBECTL" get namespace "$namespace" >/dev/null 2>&1 ||
        "$KUBECTL" create namespace "$namespace" --dry-run=client -o yaml |
        "$KUBECTL" apply -f - >/dev/null
}

do_secrets() {
    need_cluster "needed to create the NATS credentials"
    ensure_namespace
    local s
    for s in $SECRETS; do ensure_secret "$s"; done
}

do_rotate_secrets() {
    need_cluster "needed to rotate the NATS credentials"
    local s
    for s in $SECRETS; do
        "$KUBECTL" -n "$namespace" get secret "$s" >/dev/null 2>&1 ||
            die "secret $s does not exist in namespace $namespace: run '$prog deploy' first"
    done
    for s in $SECRETS; do ensure_secret "$s" replace; done
    # NATS first (each server reads the passwords when it starts), then the
    # clients; meanwhile the agents keep their batches (OUTAGE_BUFFER).
    echo "$prog: restarting NATS with the new passwords (timeout $ROLLOUT_TIMEOUT)"
    "$KUBECTL" -n "$namespace" rollout restart statefulset/nats
    "$KUBECTL" -n "$namespace" rollout status statefulset/nats --timeout="$ROLLOUT_TIMEOUT"
    echo "$prog: restarting the aggregators and the agents"
    "$KUBECTL" -n "$namespace" rollout restart deployment/ebpf-aggregator
    "$KUBECTL" -n "$namespace" rollout restart daemonset/ebpf-monitor
    "$KUBECTL" -n "$namespace" rollout status deployment/ebpf-aggregator --timeout="$ROLLOUT_TIMEOUT"
    "$KUBECTL" -n "$namespace" rollout status daemonset/ebpf-monitor --timeout="$ROLLOUT_TIMEOUT"
}

do_deploy() {
    need_cluster "needed to deploy"
    echo "$prog: deploying to namespace $namespace: $agent_image, $aggregator_image$([ "$privileged" = 1 ] && echo ' (privileged agent)')"
    do_secrets
    if defaults; then
        "$KUBECTL" apply -k "$ROOT/manifests"
    else
        local manifests
        manifests=$(render)
        "$KUBECTL" apply -f - <<<"$manifests"
    fi
    echo "$prog: waiting for the rollout (timeout $ROLLOUT_TIMEOUT)"
    "$KUBECTL" -n "$namespace" rollout status statefulset/nats --timeout="$ROLLOUT_TIMEOUT"
    "$KUBECTL" -n "$namespace" rollout status deployment/ebpf-aggregator --timeout="$ROLLOUT_TIMEOUT"
    "$KUBECTL" -n "$namespace" rollout status daemonset/ebpf-monitor --timeout="$ROLLOUT_TIMEOUT"
}

do_undeploy() {
    need_cluster "needed to undeploy"
    if defaults; then
        "$KUBECTL" delete --ignore-not-found -k "$ROOT/manifests"
    else
        local manifests
        manifests=$(render)
        "$KUBECTL" delete --ignore-not-found -f - <<<"$manifests"
    fi
}

do_status() {
    need_cluster "needed for status"
    "$KUBECTL" -n "$namespace" get daemonset,deployment,statefulset,poddisruptionbudget -o wide
    echo
    "$KUBECTL" -n "$namespace" get pods,services -o wide
}

do_logs() {
    need_cluster "needed for logs"
    local c label
    for c in ${component:-agent aggregator nats}; do
        case "$c" in
        agent) label=app=ebpf-monitor ;;
        aggregator) label=app=ebpf-aggregator ;;
        nats) label=app=nats ;;
        esac
        echo "=== $c ($label)"
        "$KUBECTL" -n "$namespace" logs -l "$label" --prefix --tail=100 --max-log-requests=50
    done
}

case "$command" in
build) do_build ;;
push) do_push ;;
deploy) do_deploy ;;
undeploy) do_undeploy ;;
status) do_status ;;
logs) do_logs ;;
render) render ;;
secrets) do_secrets ;;
rotate-secrets) do_rotate_secrets ;;
all)
    do_build
    do_push
    do_deploy
    ;;
*) die "unknown command \"$command\" (see --help)" ;;
esac

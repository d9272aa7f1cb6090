#!/usr/bin/env bash
# Installs the npm packages of tests/k8s (Kubernetes schema validation for
# the manifest tests), exactly as pinned in tests/k8s/package-lock.json.
# Idempotent: nothing runs when node_modules already matches the lock file.
# Needs Node.js and npm (installed from Debian packages when missing and run
# as root); the manifest tests also need kubectl (kustomize built in).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$root/tests/k8s

# Image builds copy the sources without tests/: nothing to install there.
if [ ! -f "$dir/package.json" ]; then
    echo "deps-k8s: no tests/k8s here; nothing to install"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps-k8s: node and npm are missing; run 'sudo make deps'" >&2
        exit 1
    fi
    echo "deps-k8s: installing nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm
fi

stamp=$dir/node_modules/.ebpf-monitor-lock.sha256
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "deps-k8s: tests/k8s npm packages present"
else
    echo "deps-k8s: npm ci in tests/k8s"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

if ! command -v kubectl >/dev/null 2>&1; then
    echo "deps-k8s: warning: kubectl not found; the manifest tests need it (kubectl kustomize)" >&2
fi

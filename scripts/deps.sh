#!/usr/bin/env bash
# Installs every build, test and run dependency from Debian 12 packages.
# Idempotent: packages already present are not touched, and apt is not
# consulted at all when nothing is missing.
set -euo pipefail

packages=(
  make gcc clang llvm pkg-config bpftool
  libbpf-dev libelf-dev zlib1g-dev
  libnats-dev nats-server
  protobuf-c-compiler libprotobuf-c-dev
  libh2o-evloop-dev libssl-dev
  libyaml-dev libcriterion-dev libjansson-dev
  clang-format curl jq iproute2 procps
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages: ${missing[*]}; run 'sudo make deps'" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Installs every build, test and run dependency: Debian 12 packages, then the
# npm packages of the tests' independent clients and browser driver (tests/js).
# Idempotent: packages already present are not touched, apt is not consulted
# at all when nothing is missing, and npm runs only when tests/js/node_modules
# is missing or older than its lock file. `deps.sh --list` prints the
# Debian packages only.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  make gcc clang llvm pkg-config bpftool
  libbpf-dev libelf-dev zlib1g-dev
  libnats-dev nats-server
  protobuf-c-compiler libprotobuf-c-dev
  libh2o-evloop-dev libh2o-dev-common libssl-dev # h2o.h and h2o/*.h are in -dev-common
  libcurl4-openssl-dev # pkg/k8s.c: the Kubernetes API client
  libjemalloc-dev # the aggregator's allocator (docs/architecture.md)
  openssl # tests: self-signed certificates for the HTTPS tests
  # Sanitizers: gcc's runtimes (make SANITIZE=...); clang's libFuzzer and
  # ASan/UBSan runtimes (make fuzz), only recommended by clang, which
  # --no-install-recommends skips.
  libasan8 libubsan1 libtsan2 libclang-rt-14-dev
  libyaml-dev libcriterion-dev libjansson-dev
  clang-format curl jq iproute2 procps
  nftables # tests/test_e2e_two_nodes.c: a ClusterIP DNAT'ed to its backend, as kube-proxy does
  wrk # scripts/bench-aggregator.sh: HTTP requests/s
  bpftrace linux-perf # scripts/bench-agent.sh: the tracer compared against; profiling
  libbpf-tools # scripts/bench-agent.sh: tcpstates, execsnoop, exitsnoop compared against
  python3 # scripts/bench-*.sh pick free ports
  # make install / make deb and tests/test_e2e_install.c: man pages from --help,
  # systemd-analyze verify, man, dpkg-shlibdeps for the package's Depends
  help2man systemd man-db dpkg-dev
  prometheus # tests/test_e2e_monitoring.c: promtool, and a Prometheus running the dashboard's queries
  chromium # tests/test_e2e_ui.c: the web page in a real browser, driven by playwright-core (tests/js)
  dnsmasq-base dnsutils # tests/test_dns.c, test_e2e_dns.c: a real DNS server; dig
  tcpdump # scripts/bench-dns.sh: the DNS capture compared against
)
# --list prints the Debian packages, one per line, and installs nothing
# (scripts/check-deps.sh checks the build's headers and libraries against it).
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${packages[@]}" nodejs npm
  exit 0
fi

# Node.js runs the tests' independent NATS client; any install that provides
# node and npm will do (Debian's nodejs + npm when there is none).
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${missing[*]}; run 'sudo make deps'" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=600
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
fi

# npm packages for tests/js, exactly as locked.
js=tests/js
if [ ! -d "$js/node_modules" ] || [ "$js/package-lock.json" -nt "$js/node_modules" ]; then
  echo "deps: npm ci in $js"
  npm ci --prefix "$js" --no-audit --no-fund --loglevel=error
  touch "$js/node_modules"
else
  echo "deps: $js/node_modules up to date"
fi

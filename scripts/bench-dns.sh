#!/usr/bin/env bash
# The cost of the dns capture (bpf/dns.bpf.c), as docs/architecture.md
# reports it. Needs root, dnsmasq (dnsmasq-base) and a built bin/ebpf-agent.
#
#   scripts/bench-dns.sh [--packets N]
#
# Starts nats-server, dnsmasq on a free port and the agent with
# EVENT_TYPES=dns and that port in DNS_PORTS, then, with the kernel's BPF
# run-time statistics held on (BPF_ENABLE_STATS, which adds two clock reads
# to every run), sends non-DNS UDP datagrams, a non-DNS TCP stream and DNS
# queries answered by dnsmasq, and prints each program's run_time_ns/run_cnt
# for each load; then the UDP and TCP loads' speed without the agent and with
# it (statistics off), and their ratio. Every process it starts is stopped by
# PID on exit. The figures are those of the machine as it is: on a shared one
# run it when it is quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKETS=200000
while [ $# -gt 0 ]; do
  case "$1" in
    --packets) PACKETS="$2"; shift 2 ;;
    *) echo "usage: $0 [--packets N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench-dns: needs root" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "bench-dns: dnsmasq missing (make deps)" >&2; exit 1; }
[ -x bin/ebpf-agent ] || { echo "bench-dns: bin/ebpf-agent missing (make build)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/bench-dns.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port)
API_PORT=$(free_port)
DNS_PORT=$(free_port)

nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
dnsmasq --no-daemon --no-resolv --no-hosts --port="$DNS_PORT" --listen-address=127.0.0.1 \
  --bind-interfaces --host-record=a.test,10.11.12.13 --local=/test/ \
  --pid-file="$TMP/dnsmasq.pid" >"$TMP/dnsmasq.log" 2>&1 &
PIDS+=($!)

# load.py MODE: runs one load and prints its rate; with --stats, prints each dns program's
# ns per run under each load instead.
cat >"$TMP/load.py" <<'EOF'
import ctypes, json, socket, subprocess, sys, threading, time, urllib.request

mode, api, dns_port, packets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def udp_load():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    t0 = time.perf_counter()
    for i in range(packets):
        tx.send(b"x" * 64)
        if i % 64 == 0:
            try:
                while True:
                    rx.recv(2048)
            except BlockingIOError:
                pass
    return packets / (time.perf_counter() - t0), "datagrams/s"

def tcp_load():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    def sink():
        c, _ = srv.accept()
        while c.recv(1 << 20):
            pass
    t = threading.Thread(target=sink)
    t.start()
    c = socket.create_connection(srv.getsockname())
    buf = b"y" * 65536
    n = max(packets // 32, 64)
    t0 = time.perf_counter()
    for _ in range(n):
        c.sendall(buf)
    c.close()
    t.join()
    return n * 65536 / (time.perf_counter() - t0) / 1e6, "MB/s"

def dns_load():
    q = bytes([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, ord("a"), 4]) + b"test" + bytes([0, 0, 1, 0, 1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", dns_port))
    s.settimeout(2)
    n = max(packets // 10, 100)
    t0 = time.perf_counter()
    for _ in range(n):
        s.send(q)
        s.recv(512)
    return n / (time.perf_counter() - t0), "queries/s"

LOADS = {"udp": udp_load, "tcp": tcp_load, "dns": dns_load}

def progs():
    d = json.load(urllib.request.urlopen(f"http://127.0.0.1:{api}/api/programs"))
    out = {}
    for p in d["programs"]:
        if p["name"].startswith("cgroup_skb__dns") and p.get("id"):
            s = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show", "id", str(p["id"])]))
            out[p["name"]] = (s.get("run_cnt", 0), s.get("run_time_ns", 0), p["events"])
    return out

if mode == "--stats":
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()  # bpf_attr.enable_stats.type = BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr))  # bpf(BPF_ENABLE_STATS)
    if fd < 0:
        sys.exit(f"BPF_ENABLE_STATS: errno {ctypes.get_errno()}")
    print("| load | program | runs | records | ns per run |")
    print("|---|---|---:|---:|---:|")
    for name in ("udp", "tcp", "dns"):
        a = progs()
        LOADS[name]()
        b = progs()
        for k in sorted(a):
            runs, ns, rec = (b[k][i] - a[k][i] for i in range(3))
            print(f"| {name} | {k} | {runs} | {rec} | {ns / runs if runs else 0:.1f} |")
else:
    rate, unit = LOADS[mode]()
    print(f"{rate:.1f} {unit}")
EOF

run_load() { python3 "$TMP/load.py" "$1" "$API_PORT" "$DNS_PORT" "$PACKETS"; }

echo "## without the agent"
UDP0=$(run_load udp); TCP0=$(run_load tcp)
echo "udp: $UDP0; tcp: $TCP0"

EVENT_TYPES=dns DNS_PORTS="$DNS_PORT" DNS_RATE_LIMIT=1000000 NATS_URL="nats://127.0.0.1:$NATS_PORT" \
  LISTEN_ADDR="127.0.0.1:$API_PORT" bin/ebpf-agent >"$TMP/agent.log" 2>&1 &
AGENT=$!
PIDS+=("$AGENT")
for _ in $(seq 100); do
  curl -sf -o /dev/null "127.0.0.1:$API_PORT/ready" && break
  sleep 0.1
done
curl -sf -o /dev/null "127.0.0.1:$API_PORT/ready" || { cat "$TMP/agent.log" >&2; exit 1; }

echo "## in-kernel cost (BPF run-time statistics on)"
python3 "$TMP/load.py" --stats "$API_PORT" "$DNS_PORT" "$PACKETS"

echo "## with the agent (statistics off)"
UDP1=$(run_load udp); TCP1=$(run_load tcp)
echo "udp: $UDP1; tcp: $TCP1"
awk -v a="${UDP0%% *}" -v b="${UDP1%% *}" -v c="${TCP0%% *}" -v d="${TCP1%% *}" \
  'BEGIN { printf "slowdown: udp %.3fx, tcp %.3fx\n", a / b, c / d }'

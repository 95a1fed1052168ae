#!/usr/bin/env bash
# kaprobe middlebox vs haproxy (mode tcp, one thread) vs a direct connection, side by side in
# one run, both relays pinned to the same single CPU:
#   1. throughput: wrk -t1 -c8 fetching a 1 MiB file from nginx through each path
#   2. added latency: wrk -t1 -c1 on a tiny response (average latency, requests/s)
#   3. memory per idle relayed connection: RSS delta of the relay over IDLE_CONNS idle ones
#   4. the relay's own CPU time (user + system, from /proc/PID/stat) per GiB relayed in 1 and
#      per request in 2: unlike throughput, it barely moves when other work shares the CPU
# Prints each figure and the ratio middlebox/haproxy. Needs nginx, haproxy, wrk, python3,
# taskset. Knobs: DUR (seconds per wrk run, default 8), ROUNDS (default 3; medians are
# printed), IDLE_CONNS (default 4000).
set -euo pipefail
DUR=${DUR:-8}
IDLE_CONNS=${IDLE_CONNS:-4000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for t in nginx haproxy wrk python3 taskset; do
  command -v "$t" >/dev/null || { echo "bench/middlebox.sh: needs $t" >&2; exit 1; }
done
cargo build --release -q -p kaprobe
KP="$ROOT/target/release/kaprobe"
W=$(mktemp -d)
chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time of a process (user + system) in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

UP=$(free_port); HP=$(free_port); MB=$(free_port)
head -c 1048576 /dev/urandom > "$W/1m.bin"
chmod 644 "$W/1m.bin"
cat > "$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 65536; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 1h;
  server { listen 127.0.0.1:$UP; root $W; location = / { return 200 "ok\n"; } }
}
EOF
taskset -c 0 nginx -c "$W/nginx.conf" -e "$W/nginx.err" &
PIDS+=($!)
cat > "$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen relay
  bind 127.0.0.1:$HP
  server up 127.0.0.1:$UP
EOF
taskset -c 1 haproxy -f "$W/haproxy.cfg" -db &
HP_PID=$!
PIDS+=($HP_PID)
taskset -c 1 "$KP" middlebox --listen "127.0.0.1:$MB" --upstream "127.0.0.1:$UP" --idle 1h --log off 2>"$W/mb.err" &
MB_PID=$!
PIDS+=($MB_PID)
wait_port "$UP"; wait_port "$HP"; wait_port "$MB"

# wrk's "Transfer/sec" in MiB/s, "Requests/sec", and the average latency in ms.
mib_s() { awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else {sub("MB","",v)}; print v}'; }
req_s() { awk '/Requests\/sec/ {print $2}'; }
# wrk's total: "N requests in Ts, X read" -> N, and X in MiB.
total_req() { awk '/requests in/ {print $1}'; }
total_mib() { awk '/requests in/ {v=$5; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else {sub("MB","",v)}; print v}'; }
lat_ms() { awk '/^ +Latency/ {v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}'; }

# ROUNDS rounds, the paths alternating within each, and the median of each figure: one
# run of a relay on a shared 2-CPU machine is too noisy to compare.
ROUNDS=${ROUNDS:-3}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A TP RPS LAT
declare -A CPUGIB CPUREQ
for path in direct haproxy middlebox; do : > "$W/tp.$path"; : > "$W/rps.$path"; : > "$W/lat.$path"; : > "$W/cpugib.$path"; : > "$W/cpureq.$path"; done
for round in $(seq "$ROUNDS"); do
  for path in direct haproxy middlebox; do
    case $path in direct) p=$UP; pid=;; haproxy) p=$HP; pid=$HP_PID;; middlebox) p=$MB; pid=$MB_PID;; esac
    c0=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    out=$(taskset -c 0 wrk -t1 -c8 -d"${DUR}s" "http://127.0.0.1:$p/1m.bin")
    c1=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    echo "$out" | mib_s >> "$W/tp.$path"
    # CPU seconds per GiB relayed.
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v m="$(echo "$out" | total_mib)" 'BEGIN { if (m > 0) printf "%.3f\n", c / hz / (m / 1024) }' >> "$W/cpugib.$path"
    c0=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    out=$(taskset -c 0 wrk -t1 -c1 -d"${DUR}s" "http://127.0.0.1:$p/")
    c1=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    echo "$out" | req_s >> "$W/rps.$path"
    echo "$out" | lat_ms >> "$W/lat.$path"
    # CPU microseconds per request.
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v n="$(echo "$out" | total_req)" 'BEGIN { if (n > 0) printf "%.2f\n", c / hz / n * 1e6 }' >> "$W/cpureq.$path"
  done
done
for path in direct haproxy middlebox; do
  TP[$path]=$(median < "$W/tp.$path")
  RPS[$path]=$(median < "$W/rps.$path")
  LAT[$path]=$(median < "$W/lat.$path")
  CPUGIB[$path]=$(median < "$W/cpugib.$path")
  CPUREQ[$path]=$(median < "$W/cpureq.$path")
done

# Idle connections: hold IDLE_CONNS open through a relay, read its RSS before and after.
hold_idle() { # port -> prints when all are connected, then waits on stdin
  python3 - "$1" "$IDLE_CONNS" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    socks.append(s)
time.sleep(1.0)
print("held", flush=True)
time.sleep(3.0)
PY
}
declare -A MEM
for path in haproxy middlebox; do
  case $path in haproxy) p=$HP; pid=$HP_PID;; middlebox) p=$MB; pid=$MB_PID;; esac
  before=$(rss_kb "$pid")
  coproc H { hold_idle "$p"; }
  read -r _ <&"${H[0]}"
  after=$(rss_kb "$pid")
  wait "$H_PID" 2>/dev/null || true
  MEM[$path]=$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN {printf "%.0f", (a-b)*1024/n}')
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a/b; else print "-" }'; }
echo
echo "relay on one CPU (taskset -c 1); nginx upstream and wrk on the other; medians of $ROUNDS rounds"
printf "%-34s %12s %12s %12s %16s\n" "" direct haproxy middlebox "middlebox/haproxy"
printf "%-34s %12s %12s %12s %16s\n" "throughput, 1 MiB GETs (MiB/s)" "${TP[direct]}" "${TP[haproxy]}" "${TP[middlebox]}" "$(ratio "${TP[middlebox]}" "${TP[haproxy]}")"
printf "%-34s %12s %12s %12s %16s\n" "one connection (requests/s)" "${RPS[direct]}" "${RPS[haproxy]}" "${RPS[middlebox]}" "$(ratio "${RPS[middlebox]}" "${RPS[haproxy]}")"
printf "%-34s %12s %12s %12s %16s\n" "average latency (ms)" "${LAT[direct]}" "${LAT[haproxy]}" "${LAT[middlebox]}" "$(ratio "${LAT[middlebox]}" "${LAT[haproxy]}")"
printf "%-34s %12s %12s %12s %16s\n" "relay CPU per GiB, 1 MiB GETs (s)" "-" "${CPUGIB[haproxy]}" "${CPUGIB[middlebox]}" "$(ratio "${CPUGIB[middlebox]}" "${CPUGIB[haproxy]}")"
printf "%-34s %12s %12s %12s %16s\n" "relay CPU per request, one conn (us)" "-" "${CPUREQ[haproxy]}" "${CPUREQ[middlebox]}" "$(ratio "${CPUREQ[middlebox]}" "${CPUREQ[haproxy]}")"
printf "%-34s %12s %12s %12s %16s\n" "memory per idle connection (bytes)" "-" "${MEM[haproxy]}" "${MEM[middlebox]}" "$(ratio "${MEM[middlebox]}" "${MEM[haproxy]}")"

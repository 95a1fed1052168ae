#!/usr/bin/env bash
# kaprobe serve --http2 vs nginx's HTTP/2 (h2c, `listen ... http2`), side by side in one run,
# same body ("ok\n"), one server thread / one worker each, both pinned to one CPU, h2load
# (nghttp2-client) pinned to the other:
#   1. many streams per connection: h2load -t1 -c10 -m10   (10 connections x 10 streams)
#   2. one stream at a time:        h2load -t1 -c50 -m1
# (A connection per request cannot be measured this way: h2load does not reconnect after a
# GOAWAY, it counts the client's remaining requests as failed.)
# For each: requests/s and the server's own CPU per request (utime+stime of the serving
# process over the run / requests done), medians of ROUNDS alternating rounds (the order of
# the two servers swapped every round: the machine is shared, single runs swing).
# Needs: nginx (with http_v2), h2load, python3, taskset.
# Usage: bench/serve_h2.sh [requests-per-run]   (env ROUNDS, default 5)
set -euo pipefail
N=${1:-200000}
ROUNDS=${ROUNDS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q -p kaprobe
KP="$ROOT/target/release/kaprobe"
TMP=$(mktemp -d)
chmod 755 "$TMP"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

SERVER_CPU=1
CLIENT_CPU=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_kaprobe() { # max-requests -> sets KP_PID KP_PORT
  local port; port=$(free_port)
  taskset -c $SERVER_CPU "$KP" serve --http2 --listen "127.0.0.1:$port" --keepalive-timeout 60s \
    --max-requests "$1" --max-concurrent-streams 128 --log off 2>"$TMP/kp.err" &
  KP_PID=$!; PIDS+=("$KP_PID"); KP_PORT=$port
  for _ in $(seq 100); do grep -q listening "$TMP/kp.err" 2>/dev/null && return; sleep 0.05; done
  echo "kaprobe did not start" >&2; exit 1
}

start_nginx() { # keepalive_requests -> sets NG_PID (worker) NG_PORT NG_MASTER
  local port; port=$(free_port)
  local d="$TMP/ng$port"; mkdir -p "$d"; chmod 755 "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid; error_log $d/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f;
  uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  keepalive_timeout 60s; keepalive_requests $1;
  http2_max_concurrent_streams 128;
  default_type text/plain;
  server { listen 127.0.0.1:$port http2 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
  taskset -c $SERVER_CPU nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' &
  local master=$!; PIDS+=("$master")
  for _ in $(seq 100); do
    curl -sf --http2-prior-knowledge "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05
  done
  NG_PID=$(pgrep -P "$master" | head -1); NG_PORT=$port; NG_MASTER=$master
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# run PORT PID h2load-args... -> "rps cpu_us_per_req"
run() {
  local port=$1 pid=$2; shift 2
  local t0 t1 out rps ok
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c $CLIENT_CPU h2load -t1 -n "$N" "$@" "http://127.0.0.1:$port/" 2>&1)
  t1=$(cpu_ticks "$pid")
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print int($4)}' <<<"$out")
  ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
  if [ -z "$rps" ] || [ "${ok:-0}" -lt "$N" ]; then
    echo "h2load against port $port did not finish its $N requests cleanly:" >&2
    echo "$out" >&2
    exit 1
  fi
  python3 -c "print($rps, round(($t1 - $t0) * $TICK_US / $ok, 3))"
}

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

declare -A RPS CPU
for k in MUX_KP MUX_NG ONE_KP ONE_NG; do RPS[$k]=""; CPU[$k]=""; done
keep() {
  [ -n "$2" ] || { echo "a run failed (see above)" >&2; exit 1; }
  RPS[$1]="${RPS[$1]} ${2% *}"; CPU[$1]="${CPU[$1]} ${2#* }"
}

echo "== h2load -n $N, $ROUNDS alternating rounds, medians; servers on cpu $SERVER_CPU, h2load on cpu $CLIENT_CPU"
start_kaprobe 0; start_nginx 1000000000
for i in $(seq "$ROUNDS"); do
  for who in KP NG; do
    [ $((i % 2)) -eq 0 ] && who=$([ "$who" = KP ] && echo NG || echo KP)
    if [ "$who" = KP ]; then port=$KP_PORT pid=$KP_PID; else port=$NG_PORT pid=$NG_PID; fi
    keep "MUX_$who" "$(run "$port" "$pid" -c10 -m10)"
    keep "ONE_$who" "$(run "$port" "$pid" -c50 -m1)"
  done
done
stop "$KP_PID"; stop "$NG_MASTER"

printf '%-36s %9s %9s %6s %s\n' metric kaprobe nginx ratio goal
for t in MUX ONE; do
  case $t in
    MUX) name="10 conns x 10 streams";;
    ONE) name="50 conns x 1 stream";;
  esac
  r_kp=$(median ${RPS[${t}_KP]}); r_ng=$(median ${RPS[${t}_NG]})
  c_kp=$(median ${CPU[${t}_KP]}); c_ng=$(median ${CPU[${t}_NG]})
  printf '%-36s %9.0f %9.0f %6s %s\n' "$name req/s" "$r_kp" "$r_ng" "$(ratio "$r_kp" "$r_ng")" ">= 1.00"
  printf '%-36s %9s %9s %6s %s\n' "$name CPU us/req" "$c_kp" "$c_ng" "$(ratio "$c_ng" "$c_kp")" ">= 1.00 (nginx/kaprobe)"
done

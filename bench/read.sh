#!/usr/bin/env bash
# kaprobe read vs tshark's keep-alive analysis vs tcpdump's stateless BPF pass, side by side.
#
# Builds a multi-million-packet capture from real loopback traffic: keep-alive connections
# with 1 s timers, a dead-peer set (in a throw-away network namespace) and wrk against a
# temporary nginx; then replicates it with rewritten addresses (4-tuples stay unique) and
# times each tool. tshark runs on a slice (it is slow) and is normalised to packets/s.
# Prints packets/s, ratios and peak RSS. Needs root, tcpdump, tshark (mergecap), nginx,
# wrk, iptables, iproute2. Takes a few minutes.
#
# Knobs: COPIES (default 6), WRK_SECS (5), KA_CONNS (200), DEAD_CONNS (50), SLICE (200000).
set -euo pipefail
cd "$(dirname "$0")/.."
COPIES=${COPIES:-6}
WRK_SECS=${WRK_SECS:-5}
KA_CONNS=${KA_CONNS:-200}
DEAD_CONNS=${DEAD_CONNS:-50}
SLICE=${SLICE:-200000}
[ "$(id -u)" = 0 ] || { echo "bench/read.sh: needs root (tcpdump, network namespace)" >&2; exit 1; }
for t in tcpdump tshark mergecap editcap nginx wrk iptables ip /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench/read.sh: needs $t" >&2; exit 1; }
done

W=$(mktemp -d /tmp/kaprobe-bench.XXXXXX)
chmod 755 "$W"
NS=kpbench-$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release -q -p kaprobe --bin kaprobe
cargo build --release -q -p kaprobe-capture --examples
BIN=$PWD/target/release/kaprobe
EX=$PWD/target/release/examples

wait_for_line() { # file pattern
  for _ in $(seq 1 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
free_port() {
  while :; do
    p=$((20000 + RANDOM % 30000))
    ss -ltnH "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

echo "== capturing loopback traffic: $KA_CONNS keep-alive conns (1 s timers), wrk ${WRK_SECS}s on nginx"
# Only our own ports: other programs on this machine's loopback stay out of the file.
KPORT=$(free_port)
NPORT=$(free_port)
while [ "$NPORT" = "$KPORT" ]; do NPORT=$(free_port); done
tcpdump -U -B 131072 -s 128 -n -i lo -w "$W/lo.pcap" "tcp port $KPORT or tcp port $NPORT" 2>"$W/tcpdump.err" &
DUMP=$!; PIDS+=("$DUMP")
wait_for_line "$W/tcpdump.err" "listening on"
HOLD=$((WRK_SECS + 5))
"$EX/ka_storm" server --port "$KPORT" --secs "$((HOLD + 1))" >"$W/srv.out" 2>/dev/null &
PIDS+=($!)
wait_for_line "$W/srv.out" "^port"
"$EX/ka_storm" client --port "$KPORT" --conns "$KA_CONNS" --secs "$HOLD" 2>/dev/null &
KC=$!; PIDS+=("$KC")
mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fcgi; uwsgi_temp_path $W/nginx/uwsgi; scgi_temp_path $W/nginx/scgi;
  server { listen 127.0.0.1:$NPORT; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$W/nginx/nginx.conf" -g 'daemon off;' &
NG=$!; PIDS+=("$NG")
for _ in $(seq 1 100); do ss -ltnH "sport = :$NPORT" | grep -q . && break; sleep 0.05; done
wrk -t1 -c50 -d"${WRK_SECS}s" "http://127.0.0.1:$NPORT/" | grep -E "Requests/sec" || true
wait "$KC" || true
kill "$NG" 2>/dev/null || true
kill -INT "$DUMP"; wait "$DUMP" 2>/dev/null || true
grep -E "captured|dropped by kernel" "$W/tcpdump.err" | tr '\n' ' '; echo

echo "== capturing a dead-peer set: $DEAD_CONNS conns, probes dropped by iptables in netns $NS"
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" tcpdump -U -s 128 -n -i lo -w "$W/dead.pcap" tcp 2>"$W/dead.err" &
DD=$!; PIDS+=("$DD")
wait_for_line "$W/dead.err" "listening on"
ip netns exec "$NS" "$EX/ka_storm" server --secs 8 >"$W/dsrv.out" 2>/dev/null &
PIDS+=($!)
wait_for_line "$W/dsrv.out" "^port"
DPORT=$(awk '/^port/{print $2}' "$W/dsrv.out")
ip netns exec "$NS" "$EX/ka_storm" client --port "$DPORT" --conns "$DEAD_CONNS" --idle 1 --intvl 1 --count 3 --secs 7 --drop 2>&1 | tail -1
kill -INT "$DD"; wait "$DD" 2>/dev/null || true

mergecap -F pcap -w "$W/base.pcap" "$W/lo.pcap" "$W/dead.pcap"
echo "== replicating x$COPIES with rewritten addresses"
"$EX/replicate" "$W/base.pcap" "$W/big.pcap" "$COPIES"
BIG=$("$BIN" read "$W/big.pcap" --json | tail -1 | sed -E 's/.*"frames":([0-9]+).*/\1/')
# tshark's slice (~SLICE frames): every keep-alive and dead-peer connection from its SYN
# (so both tools see whole conversations and must agree), plus the first HTTP load frames.
tcpdump -r "$W/big.pcap" -w "$W/ka.pcap" "not port $NPORT" 2>/dev/null
KAN=$("$BIN" read "$W/ka.pcap" --json | tail -1 | sed -E 's/.*"frames":([0-9]+).*/\1/')
tcpdump -r "$W/big.pcap" -c "$(( SLICE > KAN + 1 ? SLICE - KAN : 1 ))" -w "$W/load.pcap" "port $NPORT" 2>/dev/null
mergecap -F pcap -w "$W/slice.pcap" "$W/ka.pcap" "$W/load.pcap"
ls -l "$W/big.pcap" | awk '{printf "big.pcap: %.0f MB\n", $5/1048576}'

# measure NAME FRAMES CMD... -> prints a row (best of RUNS wall times, largest peak RSS),
# sets RATE. Best-of keeps the comparison fair on a busy machine.
RUNS=${RUNS:-3}
measure() {
  local name=$1 frames=$2 best="" kbmax=0; shift 2
  for _ in $(seq 1 "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; return 1; }
    read -r secs kb <"$W/time"
    best=$(awk -v a="$best" -v b="$secs" 'BEGIN{ print (a == "" || b < a) ? b : a }')
    kbmax=$(( kb > kbmax ? kb : kbmax ))
  done
  RATE=$(awk -v f="$frames" -v s="$best" 'BEGIN{ if (s < 0.01) s = 0.01; printf "%.0f", f / s }')
  printf "%-34s %10s frames %8.2f s %12s pkt/s %8.1f MB peak RSS\n" "$name" "$frames" "$best" "$RATE" "$(awk -v k="$kbmax" 'BEGIN{print k/1024}')"
}

SL=$("$BIN" read "$W/slice.pcap" --json | tail -1 | sed -E 's/.*"frames":([0-9]+).*/\1/')
cat "$W/big.pcap" >/dev/null # warm the page cache for every tool alike

echo "== results"
measure "kaprobe read (full file)" "$BIG" "$BIN" read "$W/big.pcap"; KR=$RATE
measure "tcpdump -r -w /dev/null tcp (full)" "$BIG" tcpdump -r "$W/big.pcap" -w /dev/null tcp; TR=$RATE
measure "kaprobe read (slice)" "$SL" "$BIN" read "$W/slice.pcap"; KS=$RATE
measure "tshark -Y keep_alive... (slice)" "$SL" tshark -n -r "$W/slice.pcap" -Y "tcp.analysis.keep_alive or tcp.analysis.keep_alive_ack"; SR=$RATE

KA=$("$BIN" read "$W/slice.pcap" --json | grep -c '"kind":"keepalive' || true)
TA=$(tshark -n -r "$W/slice.pcap" -Y "tcp.analysis.keep_alive or tcp.analysis.keep_alive_ack" | wc -l)
echo "slice: kaprobe classified $KA keep-alive packets/ACKs, tshark flagged $TA (they must match)"
"$BIN" read "$W/big.pcap" | tail -1
awk -v k="$KR" -v t="$TR" -v s="$SR" 'BEGIN{
  printf "kaprobe / tshark : %.0fx (target >= 50x)\n", k / s;
  printf "kaprobe / tcpdump: %.2fx (target >= 1x)\n", k / t }'

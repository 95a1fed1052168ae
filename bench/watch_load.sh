#!/usr/bin/env bash
# Is `kaprobe watch lo` cheap on a busy interface? A loopback load runs in a throw-away
# network namespace (so only it is on that lo) while `kaprobe watch lo` and
# `tcpdump -i lo -s SNAPLEN -w /dev/null` capture the same window. Prints the packet rate on
# lo, then for each capture: CPU seconds (user+system, from /proc/PID/stat), packets seen and
# packets dropped by the kernel, and the CPU ratio. Goal: >= 500k packets/s, watch uses no
# more CPU than tcpdump, zero drops. Needs root and tcpdump (wrk for LOAD=wrk). Not part of
# `cargo test`.
#
# LOAD=flood (default): examples/lo_flood sends TCP segments of FLOWS flows into lo through a
#   packet socket, as fast as the kernel takes them (the stack discards them: bad checksum).
# LOAD=wrk: wrk drives `kaprobe serve` (GET /bytes/BODY); the namespace's lo gets an
#   Ethernet MTU and no segmentation offload (gso_max_segs 1), so responses cross it as
#   MSS-sized packets, as they would cross a NIC. On a 2-core machine this reaches ~250-300k
#   packets/s: wrk, serve and both captures share the cores.
#
# Knobs: SECS (10), LOAD (flood), FLOWS (1000), PAYLOAD (100), CONNS (64), THREADS (2),
#        BODY (8192), MTU (1500), SNAPLEN (160, watch's default), BASE (another kaprobe
#        binary, say an older build, to run as a third capture in the same window).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
SNAPLEN=${SNAPLEN:-160}
BODY=${BODY:-8192}
LOAD=${LOAD:-flood}
FLOWS=${FLOWS:-1000}
PAYLOAD=${PAYLOAD:-100}
MTU=${MTU:-1500}
[ "$(id -u)" = 0 ] || { echo "bench/watch_load.sh: needs root" >&2; exit 1; }
for t in tcpdump $([ "$LOAD" = wrk ] && echo wrk); do
  command -v "$t" >/dev/null || { echo "bench/watch_load.sh: needs $t" >&2; exit 1; }
done
W=$(mktemp -d /tmp/kaprobe-load.XXXXXX)
NS=kpload-$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
cargo build --release -q -p kaprobe --bin kaprobe
cargo build --release -q -p kaprobe-capture --example lo_flood
BIN=$PWD/target/release/kaprobe
FLOOD=$PWD/target/release/examples/lo_flood
wait_for_line() {
  for _ in $(seq 1 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
in_ns() { ip netns exec "$NS" "$@"; }
lo_packets() { in_ns awk '/^ *lo:/{print $3}' /proc/net/dev; }
cpu_secs() { # utime+stime of a live pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
ip netns add "$NS"
# Background processes are started with `ip netns exec` itself (not a shell function), so
# $! is the process whose CPU time is read.
if [ "$LOAD" = wrk ]; then
  in_ns ip link set lo up mtu "$MTU" gso_max_size "$MTU" gso_max_segs 1
  ip netns exec "$NS" "$BIN" serve --listen 127.0.0.1:0 --max-requests 0 \
    --keepalive-timeout 60s --log off 2>"$W/serve.err" &
  PIDS+=($!)
  wait_for_line "$W/serve.err" "listening on"
  URL=$(grep -o 'http://[^ ]*' "$W/serve.err" | head -1)
  # Started first, so both captures see a steady load from their first second.
  ip netns exec "$NS" wrk -t"$THREADS" -c"$CONNS" -d"$((SECS + 4))s" "$URL/bytes/$BODY" \
    >"$W/load.out" 2>&1 &
else
  in_ns ip link set lo up
  ip netns exec "$NS" "$FLOOD" --secs "$((SECS + 4))" --flows "$FLOWS" --payload "$PAYLOAD" \
    >"$W/load.out" 2>&1 &
fi
LP=$!; PIDS+=("$LP")
sleep 1
ip netns exec "$NS" "$BIN" watch lo --json --snaplen "$SNAPLEN" >"$W/watch.json" 2>"$W/watch.err" &
WP=$!; PIDS+=("$WP")
ip netns exec "$NS" tcpdump -i lo -n -s "$SNAPLEN" -w /dev/null 2>"$W/tcpdump.err" &
TP=$!; PIDS+=("$TP")
if [ -n "${BASE:-}" ]; then
  ip netns exec "$NS" "$BASE" watch lo --json --snaplen "$SNAPLEN" >"$W/base.json" 2>"$W/base.err" &
  BP=$!; PIDS+=("$BP")
  wait_for_line "$W/base.json" '"start"'
fi
wait_for_line "$W/watch.json" '"start"'
wait_for_line "$W/tcpdump.err" "listening on"
P0=$(lo_packets); T0=$(date +%s.%N)
WC0=$(cpu_secs "$WP"); TC0=$(cpu_secs "$TP"); [ -n "${BASE:-}" ] && BC0=$(cpu_secs "$BP")
sleep "$SECS"
P1=$(lo_packets); T1=$(date +%s.%N)
WC1=$(cpu_secs "$WP"); TC1=$(cpu_secs "$TP"); [ -n "${BASE:-}" ] && BC1=$(cpu_secs "$BP")
kill -TERM "$WP" "$TP" ${BP:-}
wait "$WP" "$TP" ${BP:-} 2>/dev/null || true
wait "$LP" 2>/dev/null || true
STATS=$(tail -1 "$W/watch.json")
W_FRAMES=$(echo "$STATS" | sed -E 's/.*"frames":([0-9]+).*/\1/')
W_DROPS=$(echo "$STATS" | sed -E 's/.*"dropped":([0-9]+).*/\1/')
T_SEEN=$(awk '/packets captured/{print $1}' "$W/tcpdump.err")
T_DROPS=$(awk '/dropped by kernel/{print $1}' "$W/tcpdump.err")
grep -E "Requests/sec|^sent" "$W/load.out" || true
awk -v p0="$P0" -v p1="$P1" -v t0="$T0" -v t1="$T1" \
  -v wc="$(echo "$WC1 - $WC0" | bc -l)" -v tc="$(echo "$TC1 - $TC0" | bc -l)" \
  -v wf="$W_FRAMES" -v wd="$W_DROPS" -v tf="$T_SEEN" -v td="$T_DROPS" -v secs="$SECS" 'BEGIN{
  el = t1 - t0
  printf "load on lo: %.0f packets/s over %.1f s\n", (p1 - p0) / el, el
  printf "kaprobe watch: %.2f CPU s (%.0f%% of a core), %d packets seen in all, %d dropped by the kernel\n", wc, 100 * wc / el, wf, wd
  printf "tcpdump -s snap: %.2f CPU s (%.0f%% of a core), %d packets captured, %d dropped by the kernel\n", tc, 100 * tc / el, tf, td
  if (tc > 0) printf "CPU ratio watch/tcpdump: %.2f (goal <= 1), watch drops %d (goal 0)\n", wc / tc, wd
}'
if [ -n "${BASE:-}" ]; then
  B_STATS=$(tail -1 "$W/base.json")
  awk -v bc="$(echo "$BC1 - $BC0" | bc -l)" -v tc="$(echo "$TC1 - $TC0" | bc -l)" \
    -v bf="$(echo "$B_STATS" | sed -E 's/.*"frames":([0-9]+).*/\1/')" \
    -v bd="$(echo "$B_STATS" | sed -E 's/.*"dropped":([0-9]+).*/\1/')" 'BEGIN{
    printf "BASE watch: %.2f CPU s, %d packets seen in all, %d dropped; CPU ratio BASE/tcpdump: %.2f\n", bc, bf, bd, (tc > 0 ? bc / tc : 0)
  }'
fi

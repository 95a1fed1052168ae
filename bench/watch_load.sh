#!/usr/bin/env bash
# Is `kaprobe watch lo` cheap on a busy interface? wrk drives `kaprobe serve` over loopback
# in a throw-away network namespace (so only this load is on its lo) while `kaprobe watch
# lo` and `tcpdump -i lo -s SNAPLEN -w /dev/null` capture the same window. Prints the packet
# rate on lo, then for each capture: CPU seconds (user+system), packets seen and packets
# dropped by the kernel, and the CPU ratio. Goal: watch uses no more CPU than tcpdump, with
# zero drops. Needs root, wrk and tcpdump. Not part of `cargo test`.
#
# Knobs: SECS (10), CONNS (64), THREADS (2), SNAPLEN (160, watch's default).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
SNAPLEN=${SNAPLEN:-160}
[ "$(id -u)" = 0 ] || { echo "bench/watch_load.sh: needs root" >&2; exit 1; }
for t in wrk tcpdump; do
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
BIN=$PWD/target/release/kaprobe
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
in_ns ip link set lo up
in_ns "$BIN" serve --listen 127.0.0.1:0 --max-requests 0 --keepalive-timeout 60s --log off \
  2>"$W/serve.err" &
PIDS+=($!)
wait_for_line "$W/serve.err" "listening on"
URL=$(grep -o 'http://[^ ]*' "$W/serve.err" | head -1)
# Warm up, so both captures see a steady load from their first second.
in_ns wrk -t"$THREADS" -c"$CONNS" -d"$((SECS + 4))s" "$URL/" >"$W/wrk.out" 2>&1 &
WRK=$!; PIDS+=("$WRK")
sleep 1
in_ns "$BIN" watch lo --json --snaplen "$SNAPLEN" >"$W/watch.json" 2>"$W/watch.err" &
WP=$!; PIDS+=("$WP")
in_ns tcpdump -i lo -n -s "$SNAPLEN" -w /dev/null 2>"$W/tcpdump.err" &
TP=$!; PIDS+=("$TP")
wait_for_line "$W/watch.json" '"start"'
wait_for_line "$W/tcpdump.err" "listening on"
P0=$(lo_packets); T0=$(date +%s.%N)
WC0=$(cpu_secs "$WP"); TC0=$(cpu_secs "$TP")
sleep "$SECS"
P1=$(lo_packets); T1=$(date +%s.%N)
WC1=$(cpu_secs "$WP"); TC1=$(cpu_secs "$TP")
kill -INT "$WP" "$TP"
wait "$WP" "$TP" 2>/dev/null || true
wait "$WRK" 2>/dev/null || true
STATS=$(tail -1 "$W/watch.json")
W_FRAMES=$(echo "$STATS" | sed -E 's/.*"frames":([0-9]+).*/\1/')
W_DROPS=$(echo "$STATS" | sed -E 's/.*"dropped":([0-9]+).*/\1/')
T_SEEN=$(awk '/packets captured/{print $1}' "$W/tcpdump.err")
T_DROPS=$(awk '/dropped by kernel/{print $1}' "$W/tcpdump.err")
grep -E "Requests/sec" "$W/wrk.out" || true
awk -v p0="$P0" -v p1="$P1" -v t0="$T0" -v t1="$T1" \
  -v wc="$(echo "$WC1 - $WC0" | bc -l)" -v tc="$(echo "$TC1 - $TC0" | bc -l)" \
  -v wf="$W_FRAMES" -v wd="$W_DROPS" -v tf="$T_SEEN" -v td="$T_DROPS" -v secs="$SECS" 'BEGIN{
  el = t1 - t0
  printf "load on lo: %.0f packets/s over %.1f s\n", (p1 - p0) / el, el
  printf "kaprobe watch: %.2f CPU s (%.0f%% of a core), %d packets seen in all, %d dropped by the kernel\n", wc, 100 * wc / el, wf, wd
  printf "tcpdump -s snap: %.2f CPU s (%.0f%% of a core), %d packets captured, %d dropped by the kernel\n", tc, 100 * tc / el, tf, td
  if (tc > 0) printf "CPU ratio watch/tcpdump: %.2f (goal <= 1), watch drops %d (goal 0)\n", wc / tc, wd
}'

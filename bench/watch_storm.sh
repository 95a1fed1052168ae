#!/usr/bin/env bash
# Can `kaprobe watch lo` keep up with a keep-alive storm? CONNS loopback connections (default
# 10000) with 1 s keep-alive timers, in a throw-away network namespace so the kernel's own
# probe counter (TcpExtTCPKeepAlive, per namespace) is the reference. Prints probes sent by
# the kernel, probes reported by kaprobe, kernel drops, CPU and peak RSS. Needs root.
#
# The connections come up within a fraction of a second, so their timers fire in bursts of
# up to CONNS packets; the kernel's per-CPU input backlog (net.core.netdev_max_backlog,
# machine-wide, 1000 by default) would drop most of a burst on lo before any capture sees it
# (and the kernel still counts those probes as sent). The script raises it to BACKLOG for the
# run and puts the old value back on exit; BACKLOG=keep leaves it alone. Drops from the
# backlog are printed either way.
#
# Knobs: CONNS (10000), SECS (20), BACKLOG (100000, or keep), BIN (the kaprobe to run).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}
SECS=${SECS:-20}
[ "$(id -u)" = 0 ] || { echo "bench/watch_storm.sh: needs root" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
W=$(mktemp -d /tmp/kaprobe-storm.XXXXXX)
NS=kpstorm-$$
PIDS=()
BACKLOG=${BACKLOG:-100000}
OLD_BACKLOG=$(sysctl -n net.core.netdev_max_backlog)
cleanup() {
  sysctl -qw net.core.netdev_max_backlog="$OLD_BACKLOG" || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
if [ "$BACKLOG" != keep ]; then
  sysctl -qw net.core.netdev_max_backlog="$BACKLOG"
  echo "net.core.netdev_max_backlog: $OLD_BACKLOG -> $BACKLOG for this run"
fi
cargo build --release -q -p kaprobe --bin kaprobe
cargo build --release -q -p kaprobe-capture --examples
BIN=${BIN:-$PWD/target/release/kaprobe}
EX=$PWD/target/release/examples
wait_for_line() {
  for _ in $(seq 1 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
ip netns exec "$NS" sysctl -qw net.core.somaxconn=8192
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_max_syn_backlog=8192
ip netns exec "$NS" "$EX/ka_storm" server --secs "$((SECS + 4))" >"$W/srv.out" 2>/dev/null &
PIDS+=($!)
wait_for_line "$W/srv.out" "^port"
PORT=$(awk '/^port/{print $2}' "$W/srv.out")
ip netns exec "$NS" /usr/bin/time -f "%e %U %S %M" -o "$W/time" \
  "$BIN" watch lo --port "$PORT" --duration "${SECS}s" --json >"$W/watch.json" 2>"$W/watch.err" &
WP=$!; PIDS+=("$WP")
wait_for_line "$W/watch.json" '"start"'
ip netns exec "$NS" nstat -n
# Packets the kernel dropped from its per-CPU input backlog (net.core.netdev_max_backlog,
# all CPUs, whole machine): a probe lost there is counted as sent but reaches no capture.
softnet_drops() { local t=0; while read -r _ d _; do t=$((t + 16#$d)); done </proc/net/softnet_stat; echo "$t"; }
SD0=$(softnet_drops)
# Clients close (FIN) well before the watch ends, so every probe the kernel sent falls
# inside the watched window.
ip netns exec "$NS" "$EX/ka_storm" client --port "$PORT" --conns "$CONNS" --secs "$((SECS - 3))" 2>"$W/cli.err" &
PIDS+=($!)
wait "$WP"
KERNEL=$(ip netns exec "$NS" nstat -z TcpExtTCPKeepAlive | awk '/TcpExtTCPKeepAlive/{print $2}')
BACKLOG=$(($(softnet_drops) - SD0))
SEEN=$(grep -c '"kind":"keepalive"' "$W/watch.json" || true)
ACKS=$(grep -c '"kind":"keepalive_ack"' "$W/watch.json" || true)
DROPS=$(tail -1 "$W/watch.json" | sed -E 's/.*"dropped":([0-9]+).*/\1/')
read -r el us sy kb <"$W/time"
head -1 "$W/cli.err"
echo "kernel sent $KERNEL keep-alive probes while kaprobe watched ${SECS}s; kaprobe saw $SEEN probes and $ACKS ACKs; capture drops $DROPS"
echo "packets the kernel dropped from its input backlog before any capture saw them (whole machine): $BACKLOG"
awk -v k="$KERNEL" -v s="$SEEN" -v b="$BACKLOG" -v el="$el" -v us="$us" -v sy="$sy" -v kb="$kb" 'BEGIN{
  printf "kaprobe: %.1f%% of probes seen (%.1f%% of those not lost in the backlog), %.0f%% CPU, %.1f MB peak RSS\n", (k > 0 ? 100 * s / k : 0), (k - b > 0 ? 100 * s / (k - b) : 0), 100 * (us + sy) / el, kb / 1024 }'

#!/usr/bin/env bash
# Broadcast fan-out over WebSockets: kaprobe serve (/ws?room=bench, one thread) vs a Node `ws`
# broadcast server (bench/ws/broadcast.js, one thread), side by side in one run, same client:
#   - N idle WebSocket clients (default 10,000) over source addresses 127.0.0.1..8
#   - memory per idle WebSocket connection: server RSS delta / N
#   - M messages (default 20, one every 500 ms) sent by one more client and broadcast to all:
#     delivery latency p50/p99 (send to receive, one clock in one client process)
#   - then B messages (default 50) back to back: delivered messages/s over the burst
# Server and client are pinned to different CPUs. The client process reads every delivery,
# so on a 2-core machine it can be what limits the figures: compare the two columns, and
# pace (interval) so that one broadcast is read before the next is sent.
# Needs: node (v18+), npm (installs `ws` into a temp dir), python3, taskset.
# Usage: bench/ws_fanout.sh [clients] [messages] [interval-ms] [burst]
set -euo pipefail
CLIENTS=${1:-10000}
MESSAGES=${2:-20}
INTERVAL=${3:-500}
BURST=${4:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q -p kaprobe --bin kaprobe
cargo build --release -q -p kaprobe-tests --example ws_fanout
KP="$ROOT/target/release/kaprobe"
CLIENT="$ROOT/target/release/examples/ws_fanout"
TMP=$(mktemp -d)
chmod 755 "$TMP"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SERVER_CPU=1
CLIENT_CPU=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1)).close()" 2>/dev/null && return; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

(cd "$TMP" && npm init -y >/dev/null 2>&1 && npm install --silent --no-audit --no-fund ws@8 >/dev/null)
cp "$ROOT/bench/ws/broadcast.js" "$TMP/"
WS_VERSION=$(node -p "require('$TMP/node_modules/ws/package.json').version")

run_client() { # url pid -> JSON line
  taskset -c $CLIENT_CPU "$CLIENT" --url "$1" --pid "$2" --clients "$CLIENTS" \
    --messages "$MESSAGES" --interval-ms "$INTERVAL" --burst "$BURST"
}

port=$(free_port)
taskset -c $SERVER_CPU "$KP" serve --listen "127.0.0.1:$port" --log off 2>"$TMP/kp.err" &
KP_PID=$!; PIDS+=("$KP_PID")
wait_port "$port"
KP_JSON=$(run_client "ws://127.0.0.1:$port/ws?room=bench" "$KP_PID")
stop "$KP_PID"

port=$(free_port)
taskset -c $SERVER_CPU node "$TMP/broadcast.js" "$port" 2>"$TMP/node.err" &
NODE_PID=$!; PIDS+=("$NODE_PID")
wait_port "$port"
NODE_JSON=$(run_client "ws://127.0.0.1:$port/" "$NODE_PID")
stop "$NODE_PID"

python3 - "$KP_JSON" "$NODE_JSON" "$WS_VERSION" <<'PY'
import json, sys
k, n, ver = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
rows = [
  ("delivered / expected", f"{k['delivered']}/{k['expected']}", f"{n['delivered']}/{n['expected']}", None),
  ("latency p50 (ms)", f"{k['p50_ms']:.2f}", f"{n['p50_ms']:.2f}", n['p50_ms'] / k['p50_ms'] if k['p50_ms'] else None),
  ("latency p99 (ms)", f"{k['p99_ms']:.2f}", f"{n['p99_ms']:.2f}", n['p99_ms'] / k['p99_ms'] if k['p99_ms'] else None),
  ("delivered msgs/s", f"{k['msgs_per_s']:.0f}", f"{n['msgs_per_s']:.0f}", k['msgs_per_s'] / n['msgs_per_s'] if n['msgs_per_s'] else None),
  ("bytes per idle WebSocket", f"{k['bytes_per_idle_conn']:.0f}", f"{n['bytes_per_idle_conn']:.0f}", n['bytes_per_idle_conn'] / k['bytes_per_idle_conn'] if k['bytes_per_idle_conn'] else None),
  ("connect all (s)", f"{k['connect_s']:.2f}", f"{n['connect_s']:.2f}", None),
]
print(f"{k['clients']} WebSocket clients, {k['messages']} paced + {k['burst']} burst broadcast messages; anchor: node ws {ver}")
print(f"{'':28} {'kaprobe':>14} {'node ws':>14} {'ratio (kaprobe better if > 1)':>30}")
for name, a, b, r in rows:
    print(f"{name:28} {a:>14} {b:>14} {'' if r is None else f'{r:.2f}x':>30}")
PY

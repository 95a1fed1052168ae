#!/usr/bin/env bash
# Benchmark: how close `kaprobe probe` gets to the wire, and how fast it answers.
#
# Runs nginx (keepalive_timeout T) on loopback, captures the probe with tcpdump (the anchor),
# and compares, side by side in one run:
#   - kaprobe's observed idle timeout  vs  the wire: server FIN minus the server's last data
#     packet before it, per connection (median), from the capture;
#   - kaprobe's total time to answer   vs  T itself.
# Usage: bench/probe-accuracy.sh [T_seconds]   (needs root for tcpdump, nginx, tshark)
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-5}"
cargo build --release -q -p kaprobe
BIN=target/release/kaprobe
DIR=$(mktemp -d); chmod 755 "$DIR"; mkdir -p "$DIR/tmp"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/nginx.conf" <<CONF
worker_processes 1; pid $DIR/nginx.pid; error_log $DIR/error.log;
events { worker_connections 2048; }
http { access_log off; client_body_temp_path $DIR/tmp; proxy_temp_path $DIR/tmp;
  fastcgi_temp_path $DIR/tmp; uwsgi_temp_path $DIR/tmp; scgi_temp_path $DIR/tmp;
  server { listen 127.0.0.1:$PORT; keepalive_timeout ${T}s; location / { return 200 "bench\n"; } } }
CONF
nginx -p "$DIR" -c "$DIR/nginx.conf" -g 'daemon off;' & NGINX=$!
tcpdump -i lo -U -s 96 -w "$DIR/cap.pcap" "tcp port $PORT" 2>/dev/null & TCPDUMP=$!
trap 'kill $NGINX $TCPDUMP 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 1.5
"$BIN" probe "http://127.0.0.1:$PORT/" --max-wait "$((T * 3))s" --json > "$DIR/probe.json"
sleep 0.5; kill $TCPDUMP; wait $TCPDUMP 2>/dev/null || true
# Per stream: time of the server's FIN minus its last data packet before the FIN.
tshark -r "$DIR/cap.pcap" -T fields -e tcp.stream -e frame.time_epoch -e tcp.srcport \
  -e tcp.len -e tcp.flags.fin 2>/dev/null > "$DIR/pk.tsv"
python3 - "$DIR/probe.json" "$DIR/pk.tsv" "$PORT" "$T" <<'PY'
import json, sys, statistics
rep = json.load(open(sys.argv[1])); port = sys.argv[3]; T = float(sys.argv[4])
last, fins, client_closed = {}, [], set()
for line in open(sys.argv[2]):
    s, t, src, ln, fin = line.rstrip("\n").split("\t")
    is_fin = fin in ("1", "True")
    if src != port:
        if is_fin:
            client_closed.add(s)  # the server's FIN after this is an answer, not a timeout
        continue
    t = float(t)
    if is_fin and s in last and s not in client_closed:
        fins.append(t - last.pop(s))
    elif int(ln or 0) > 0:
        last[s] = t
# Only connections the server closed for idleness (not request-limit or HTTP/1.0 closes).
idle = [d for d in fins if d > 0.5 * T]
wire = statistics.median(idle)
obs = rep["idle"]["timeout_s"]
print(f"configured keepalive_timeout     {T:.3f} s")
print(f"wire (tcpdump, median of {len(idle):3d})   {wire:.4f} s")
print(f"kaprobe probe observed           {obs:.4f} s   ({rep['idle']['closes_seen']} closes, style {rep['idle']['close_style']})")
print(f"ratio kaprobe / wire             {obs / wire:.5f}   (difference {1000 * (obs - wire):+.2f} ms)")
print(f"kaprobe time to answer           {rep['elapsed_s']:.3f} s = {rep['elapsed_s'] / T:.3f} x the timeout")
PY

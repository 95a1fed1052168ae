#!/usr/bin/env bash
# Benchmark: `kaprobe sockets` against `ss -tno` over the same 10,000 loopback connections.
#
# Opens CONNS loopback connections (default 10,000 = 20,000 sockets, every client with a
# keep-alive timer) in HOLDERS helper processes (each pair costs 2 fds; the default limit is
# 20,000 per process), then times, in one run and on the same sockets:
#   kaprobe sockets            (table)
#   kaprobe sockets --json     (JSON lines)
#   ss -tno                    (the anchor: same sockets, timers shown)
#   ss -tnoi                   (for reference: ss also reading tcp_info, as kaprobe does)
# all with output to /dev/null, using hyperfine when installed (else a date +%s%N loop),
# and prints each mean and the ratio ss / kaprobe (> 1 means kaprobe is faster).
#
# Usage: bench/sockets.sh            (env: CONNS=10000 HOLDERS=2 RUNS=20)
set -euo pipefail

CONNS=${CONNS:-10000}
HOLDERS=${HOLDERS:-2}
RUNS=${RUNS:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "building (release)..." >&2
cargo build --release --quiet -p kaprobe --bin kaprobe
cargo build --release --quiet -p kaprobe-sock --example hold_pairs
target=${CARGO_TARGET_DIR:-$root/target}
kp=$target/release/kaprobe
holder=$target/release/examples/hold_pairs

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

per=$((CONNS / HOLDERS))
for i in $(seq 1 "$HOLDERS"); do
    mkfifo "$tmp/in$i"
    "$holder" "$per" 127.0.0.1:0 600 <"$tmp/in$i" >"$tmp/out$i" &
    pids+=($!)
    exec {fd}>"$tmp/in$i" # keep the holder's stdin open until we exit
done
for i in $(seq 1 "$HOLDERS"); do
    for _ in $(seq 1 600); do
        grep -q '^ready' "$tmp/out$i" 2>/dev/null && break
        kill -0 "${pids[$((i - 1))]}" 2>/dev/null || { echo "holder $i died" >&2; exit 1; }
        sleep 0.1
    done
    grep -q '^ready' "$tmp/out$i" || { echo "holder $i not ready" >&2; exit 1; }
done

n_kp=$("$kp" sockets --json | wc -l)
n_ss=$(ss -tnoH | wc -l)
echo "sockets held: $((CONNS * 2)) in $HOLDERS processes; kaprobe lists $n_kp, ss lists $n_ss"

cmds=("$kp sockets" "$kp sockets --json" "ss -tno" "ss -tnoi")
declare -A mean min
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 3 --runs "$RUNS" --output=null --export-json "$tmp/h.json" \
        "${cmds[@]}" >&2
    while IFS=$'\t' read -r c m lo; do mean[$c]=$m; min[$c]=$lo; done < <(
        python3 -c 'import json,sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(r["command"] + "\t" + str(r["mean"]) + "\t" + str(r["min"]))' "$tmp/h.json")
else
    for c in "${cmds[@]}"; do
        $c >/dev/null
        t0=$(date +%s%N)
        for _ in $(seq 1 "$RUNS"); do $c >/dev/null; done
        t1=$(date +%s%N)
        mean[$c]=$(awk -v a="$t0" -v b="$t1" -v n="$RUNS" 'BEGIN{print (b-a)/n/1e9}')
        min[$c]=${mean[$c]}
    done
fi

ms() { awk -v s="$1" 'BEGIN{printf "%.1f ms", s*1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo
echo "== kaprobe sockets vs ss -tno over $((CONNS * 2)) loopback sockets ($RUNS runs each) =="
printf '%-40s %10s %10s\n' command mean min
for c in "${cmds[@]}"; do
    printf '%-40s %10s %10s\n' "${c##*/}" "$(ms "${mean[$c]}")" "$(ms "${min[$c]}")"
done
echo "ratios of means (> 1: kaprobe faster); of minimums in brackets"
echo "ratio ss -tno / kaprobe sockets         : $(ratio "${mean["ss -tno"]}" "${mean["$kp sockets"]}") ($(ratio "${min["ss -tno"]}" "${min["$kp sockets"]}"))"
echo "ratio ss -tno / kaprobe sockets --json  : $(ratio "${mean["ss -tno"]}" "${mean["$kp sockets --json"]}") ($(ratio "${min["ss -tno"]}" "${min["$kp sockets --json"]}"))"
echo "ratio ss -tnoi / kaprobe sockets --json : $(ratio "${mean["ss -tnoi"]}" "${mean["$kp sockets --json"]}")"

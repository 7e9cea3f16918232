#!/usr/bin/env bash
# User-space instructions per proxied request (callgrind), with `x-user-id` and with
# JWT identity, 64 connections. Unlike time, which moves by 10 % and more from one
# minute to the next on a shared machine, the count moves by about 0.3 %: the figure
# to judge a small change of the request path by (run it before and after).
#   benches/load/instructions.sh [SECONDS]
set -euo pipefail
secs=${1:-5}
source "$(dirname "$0")/setup.sh"
need valgrind valgrind; need curl curl
# Instrumented only once warm: connections open, pools and caches filled.
RUST_LOG=warn taskset -c $proxy_cpu valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/callgrind.out" $bin serve --workers 1 --config "$work/switchyard.toml" \
  2>"$work/valgrind.err" &
vg=$!
load() { # seconds [tokens]: wrk's request count
  TOKENS=${2:-} taskset -c $load_cpu wrk -t1 -c64 -d"$1s" -s $here/users.lua http://127.0.0.1:18200/ |
    awk '/requests in/ {print $1}'
}
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18200/ && break; sleep 0.2; done
load 3 >/dev/null; load 3 "$work/tokens.txt" >/dev/null
callgrind_control -i on $vg >/dev/null 2>&1
for identity in x-user-id JWT; do
  tokens=""; [ $identity = JWT ] && tokens="$work/tokens.txt"
  n=$(load "$secs" "$tokens")
  # A dump writes the counts so far and starts them again from zero.
  callgrind_control -d $vg >/dev/null 2>&1
  dump=$(ls -t "$work"/callgrind.out* | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  echo "$identity: $n requests, $(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%.0f", i / n }') instructions per request"
done

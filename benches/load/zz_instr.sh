#!/usr/bin/env bash
# User-space instructions per proxied request (callgrind), with `x-user-id` and with
# JWT identity, 64 connections, for switchyard and for nginx doing the same rollout.
# Unlike time, which moves by 10 % and more from one minute to the next on a shared
# machine, the count moves by about 0.3 %: the figure to judge a small change of the
# request path by (run it before and after), and the user-space half of a comparison
# whose kernel half is the same four socket calls per request. Beside each count, the
# locked (atomic read-modify-write) instructions among them (locked.py): each costs
# about twenty plain ones, which the count does not show.
#   benches/load/instructions.sh [SECONDS]
set -euo pipefail
secs=${1:-5}
source "$(dirname "$0")/setup.sh"
need valgrind valgrind; need objdump binutils
load() { # port seconds [tokens]: wrk's request count
  TOKENS=${3:-} taskset -c $load_cpu wrk -t1 -c64 -d"$2s" -s $here/users.lua "http://127.0.0.1:$1/" |
    awk '/requests in/ {print $1}'
}
# count NAME X-USER-ID-PORT JWT-PORT COMMAND...: one line of instructions (and locked
# ones) per request, counted only once warm (connections open, pools and caches filled).
count() {
  local name=$1 port=$2 jwt_port=$3; shift 3
  RUST_LOG=warn taskset -c $proxy_cpu valgrind --tool=callgrind --instr-atstart=no \
    --dump-instr=yes --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$work/callgrind.$name" "$@" 2>"$work/valgrind.$name" &
  local vg=$!
  ready "$port"
  load "$port" 3 >/dev/null; load "$jwt_port" 3 "$work/tokens.txt" >/dev/null
  callgrind_control -i on $vg >/dev/null 2>&1
  local line="" n ir dump
  for run in "$port" "$jwt_port $work/tokens.txt"; do
    set -- $run
    n=$(load "$1" "$secs" "${2:-}")
    # A dump writes the counts so far and starts them again from zero.
    callgrind_control -d $vg >/dev/null 2>&1
    dump=$(ls -t "$work"/callgrind.$name* | head -1)
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    line="$line $(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%12.0f", i / n }')"
    line="$line $(printf '%8s' "$(python3 $here/locked.py "$dump" "$n" 40 > /tmp/m/locked.$name.$1; cp "$dump" /tmp/m/cg.$name.$1; head -1 /tmp/m/locked.$name.$1)")"
  done
  kill $vg; wait $vg 2>/dev/null || true
  printf "%-12s%s\n" "$name" "$line"
}
printf "%-12s%12s%9s%12s%9s\n" "" "x-user-id" "locked" "JWT" "locked"
count switchyard 18200 18200 ${B:-$bin} serve --workers 1 --config "$work/switchyard.toml"
# nginx's master process off: the one process that serves is the one counted.
exit 0; count nginx 18201 18203 nginx -c "$work/nginx-proxy.conf" -g 'daemon off; master_process off;'

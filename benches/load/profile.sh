#!/usr/bin/env bash
# Where switchyard's time goes per request, sampled (perf, cpu-clock) while wrk drives
# 64 connections, with `x-user-id` or with JWT identity. The counterpart of
# instructions.sh: an instruction count does not see cache misses or atomics, a time
# sample does. Prints user-space nanoseconds per request and the functions that take
# them; compare two builds by running it on each (B=path/to/switchyard), in turns.
#   benches/load/profile.sh [x-user-id|jwt] [SECONDS] [TOP]
set -euo pipefail
identity=${1:-x-user-id}
secs=${2:-6}
top=${3:-30}
source "$(dirname "$0")/setup.sh"
need perf linux-perf
start_switchyard "${B:-$bin}"
sy=$!
ready 18200
tokens=""; [ "$identity" = jwt ] && tokens="$work/tokens.txt"
load() { TOKENS=$tokens taskset -c $load_cpu wrk -t1 -c64 -d"$1s" -s $here/users.lua http://127.0.0.1:18200/; }
load 2 >/dev/null
# The load runs a second longer on each side of the sampled window.
load $((secs + 2)) >"$work/wrk.out" &
sleep 1
perf record -q -e cpu-clock -F 4999 -p $sy -o "$work/perf.data" -- sleep "$secs" >/dev/null 2>&1
wait $!
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
report() { perf report -i "$work/perf.data" --no-children --stdio --sort "$1" 2>/dev/null | grep '%'; }
# The proxy's core is saturated, so a request costs 1/rps of it; user space is its share.
user=$(report dso | grep -v kernel | awk '{s += $1} END {print s}')
echo "$identity: $rps requests/s while sampled, user space $user % of the proxy's time:" \
  "$(awk -v u="$user" -v r="$rps" 'BEGIN { printf "%.0f", u / 100 * 1e9 / r }') ns per request"
report sym | grep -v '\[k\]' | head -"$top" |
  awk -v r="$rps" '{ printf "%7.0f ns  %s\n", $1 / 100 * 1e9 / r, substr($0, index($0, $3)) }'

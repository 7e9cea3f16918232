#!/usr/bin/env bash
# What makes the latency tail at 64 connections, for switchyard and for nginx in turn:
# wrk's percentiles from p50 to the maximum; how late a real-time probe thread on each
# core wakes from a 1 ms sleep (late wake-ups are the virtual CPU itself held up); and,
# from `perf sched`, every run of some other thread longer than 1 ms on either core
# (a kernel thread holding the proxy's or the client's core holds every request in
# flight). A tail both proxies share, made of such runs, is the machine's.
#   benches/load/stalls.sh [SECONDS] [ROUNDS]
set -euo pipefail
secs=${1:-6}
rounds=${2:-1}
source "$(dirname "$0")/setup.sh"
need perf linux-perf
start_switchyard
start_nginx_proxy
ready 18200; ready 18201

cat > "$work/tail.lua" <<LUA
dofile("$here/users.lua")
done = function(summary, latency, requests)
  local t = {}
  for _, p in ipairs({50, 90, 95, 98, 99, 99.5, 99.9}) do
    t[#t + 1] = string.format("p%s %.2f", p, latency:percentile(p) / 1000)
  end
  io.write(table.concat(t, ", "), string.format(", max %.2f, mean %.3f ms\n", latency.max / 1000, latency.mean / 1000))
end
LUA
cat > "$work/probe.py" <<'PY'
import os, sys, time
cpu, secs = int(sys.argv[1]), float(sys.argv[2])
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
late, end = [], time.monotonic() + secs
while time.monotonic() < end:
    t = time.monotonic(); time.sleep(0.001); late.append(time.monotonic() - t - 0.001)
over = [x for x in late if x > 0.001]
print(f"  probe on core {cpu}: {len(late)} wake-ups, {len(over)} over 1 ms late "
      f"({sum(over) * 1e3:.0f} ms in all), the latest {max(late) * 1e3:.1f} ms")
PY

for round in $(seq "$rounds"); do
  for target in "switchyard 18200" "nginx 18201"; do
    set -- $target
    taskset -c $load_cpu wrk -t1 -c64 -d1s -s $here/users.lua "http://127.0.0.1:$2/" >/dev/null 2>&1
    perf sched record -q -o "$work/sched.data" -- sleep "$secs" >/dev/null 2>&1 &
    watchers=$!
    python3 "$work/probe.py" $proxy_cpu "$secs" >"$work/probe0" &
    watchers+=" $!"
    python3 "$work/probe.py" $load_cpu "$secs" >"$work/probe1" &
    watchers+=" $!"
    echo "round $round, $1: $(taskset -c $load_cpu wrk -t1 -c64 -d"${secs}s" -s "$work/tail.lua" \
      "http://127.0.0.1:$2/" 2>&1 | grep 'p50 ')"
    wait $watchers
    cat "$work/probe0" "$work/probe1"
    # timehist: time, [cpu], task, wait, scheduling delay, run time (ms).
    perf sched timehist -i "$work/sched.data" 2>/dev/null |
      awk 'NR > 3 && $NF + 0 > 1 && $3 !~ /^(switchyard|nginx|wrk|<idle>|python3|perf|sleep)/ {
             cpu = $2; gsub(/[^0-9]/, "", cpu); name = $3; sub(/\[[0-9\/]*\]$/, "", name)
             k = cpu + 0 " " name
             n[k]++; s[k] += $NF; if ($NF > m[k]) m[k] = $NF }
           END { for (k in n) printf "  other thread on core %s: %d runs over 1 ms, %.1f ms in all, the longest %.1f ms\n",
                 k, n[k], s[k], m[k] }' | sort
  done
done

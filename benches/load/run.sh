#!/usr/bin/env bash
# Load comparison on one machine, one run: nginx `return 200` as the v1 and v2
# backends, and in front of them (a) nothing, (b) switchyard, (c) nginx doing the same
# rollout (split_clients + proxy_pass with upstream keepalive), (d) HAProxy; and nginx
# given the JWT runs' requests too (split on the token: nginx cannot verify it). Each proxy
# gets one core and one worker, wrk the other core. Prints requests/s, p50, p99, the
# proxy's CPU time per request (from /proc), its RSS (with 1000 idle keep-alive
# connections, measured first, and after each load run), and switchyard/nginx ratios.
# Every target runs ROUNDS times, the rounds interleaved so that a slow minute of a
# shared machine hits all targets alike; the table shows each figure's median. Sixteen
# rounds by default (about half an hour): at 64 connections one round's p99 ratio swings
# from about 0.7 to 1.4 (the machine's own stalls, see docs/performance.md), so fewer rounds
# leave its median to chance. An even number, because the two proxies of a pair take
# turns going first and the first of a pair tends to do worse: with an odd number one
# of them would go first once more often.
#   benches/load/run.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
secs=${1:-10}
conns=${2:-64}
rounds=${3:-16}
source "$(dirname "$0")/setup.sh"
need haproxy haproxy
start_switchyard

# nginx as the rollout proxy (its config is setup.sh's).
start_nginx_proxy

# HAProxy doing the same, and sending the upstream the same headers.
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:18202
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-var(txn.p) req.hdr(x-user-id),crc32,mod(100)
  use_backend v2 if { var(txn.p) -m int lt 37 }
  default_backend v1
backend v1
  http-reuse always
  http-request set-header Host 127.0.0.1:18101
  server s1 127.0.0.1:18101
backend v2
  http-reuse always
  http-request set-header Host 127.0.0.1:18102
  server s2 127.0.0.1:18102
CONF
taskset -c $proxy_cpu haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
sleep 1.5

pid_of() { # the process listening on a port
  ss -ltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
tck=$(getconf CLK_TCK)
# Per core, the time the host ran something else while this virtual CPU had work
# (/proc/stat's steal column, in ticks): tells a busy host from a slow proxy.
steal_ticks() { awk -v c="cpu$1" '$1 == c {print $9}' /proc/stat; }

declare -A RPS P50 P99 CPU RSS
run() { # name port [tokens]
  local name=$1 port=$2 tokens=${3:-}
  local pid; pid=$(pid_of "$port")
  # The same warm-up for every target: connections opened, caches and pools filled.
  TOKENS=$tokens taskset -c $load_cpu wrk -t1 -c"$conns" -d1s -s $here/users.lua "http://127.0.0.1:$port/" >/dev/null 2>&1
  local before; before=$(cpu_ticks "$pid")
  local out
  out=$(TOKENS=$tokens taskset -c $load_cpu wrk -t1 -c"$conns" -d"${secs}s" --latency -s $here/users.lua "http://127.0.0.1:$port/" 2>&1)
  local after; after=$(cpu_ticks "$pid")
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local ms; ms() { echo "$out" | awk -v q="$1" '$1 == q { v=$2; if (v ~ /us$/) { sub(/us/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v=v*1000 } print v }'; }
  local p50; p50=$(ms 50%); local p99; p99=$(ms 99%)
  local cpu; cpu=$(awk -v a="$before" -v b="$after" -v n="$reqs" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / n }')
  local rss; rss=$(awk -v k="$(rss_kib "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')
  RPS[$name]+=" $rps"; P50[$name]+=" $p50"; P99[$name]+=" $p99"; CPU[$name]+=" $cpu"; RSS[$name]=$rss
  printf '  round %s: %-26s %10s req/s %9s ms p99 %8s us/req\n' "$round" "$name" "$rps" "$p99" "$cpu" >&2
}
median() { echo "$1" | tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Idle first: RSS is a high-water mark, so this is measured before any load.
idle_rss() { # port: MiB with 1000 idle keep-alive connections, each after one request
  awk -v k="$(python3 $here/hold.py "$1" 1000 "$(pid_of "$1")")" 'BEGIN { printf "%.1f", k / 1024 }'
}
IDLE_SY=$(idle_rss 18200); IDLE_NG=$(idle_rss 18201)
echo "RSS with 1000 idle keep-alive connections: switchyard $IDLE_SY MiB, nginx $IDLE_NG MiB"
targets=("backend direct" "switchyard (x-user-id)" "switchyard (JWT HS256)" "nginx split_clients" "nginx, JWT requests"
  "haproxy" "switchyard 1000 conns" "switchyard 1000 conns JWT" "nginx 1000 conns" "nginx 1000 conns JWT")
pair() { # name port name port [tokens]: the two compared targets back to back, in
  # turns first, so that neither always runs on the minute after the other
  if (( round % 2 )); then run "$1" "$2" "${5:-}"; run "$3" "$4" "${5:-}"
  else run "$3" "$4" "${5:-}"; run "$1" "$2" "${5:-}"; fi
}
# Every compared pair follows a run that kept the proxies' core busy (the backend-direct
# run loads only wrk's core; a discarded run on HAProxy's port warms round 1).
taskset -c $load_cpu wrk -t1 -c"$conns" -d"${secs}s" -s $here/users.lua http://127.0.0.1:18202/ >/dev/null 2>&1
started=$SECONDS
steal0=$(steal_ticks $proxy_cpu); steal1=$(steal_ticks $load_cpu)
for round in $(seq "$rounds"); do
  pair "switchyard (x-user-id)" 18200 "nginx split_clients" 18201
  pair "switchyard (JWT HS256)" 18200 "nginx, JWT requests" 18203 "$work/tokens.txt"
  run "backend direct" 18101
  run "haproxy" 18202
  conns_saved=$conns; conns=1000
  pair "switchyard 1000 conns" 18200 "nginx 1000 conns" 18201
  pair "switchyard 1000 conns JWT" 18200 "nginx 1000 conns JWT" 18203 "$work/tokens.txt"
  conns=$conns_saved
done
echo "medians of $rounds interleaved rounds of ${secs} s ($conns connections unless the name says 1000):"
printf '%-26s %10s %9s %9s %12s %9s\n' "target" "req/s" "p50 ms" "p99 ms" "cpu us/req" "RSS MiB"
for t in "${targets[@]}"; do
  printf '%-26s %10s %9s %9s %12s %9s\n' "$t" "$(median "${RPS[$t]}")" "$(median "${P50[$t]}")" \
    "$(median "${P99[$t]}")" "$(median "${CPU[$t]}")" "${RSS[$t]}"
done

# The ratio of each round's pair (run back to back), then the median and range over
# the rounds: steadier on a shared machine than a ratio of two medians.
paired() { # values_a values_b
  local r
  r=$(paste -d' ' <(echo "$1" | tr ' ' '\n' | sed '/^$/d') <(echo "$2" | tr ' ' '\n' | sed '/^$/d') |
    awk '$2 > 0 { print $1 / $2 }' | sort -g)
  printf '%.2f (%.2f-%.2f)' "$(median "$(echo $r)")" "$(echo "$r" | head -1)" "$(echo "$r" | tail -1)"
}
ratios() { # label a b
  echo "$1: throughput $(paired "${RPS[$2]}" "${RPS[$3]}"), p99 $(paired "${P99[$2]}" "${P99[$3]}")," \
    "cpu per request $(paired "${CPU[$2]}" "${CPU[$3]}")"
}
echo
echo "switchyard / nginx, median (and range) of the $rounds rounds' ratios:"
ratios "  x-user-id, $conns connections" "switchyard (x-user-id)" "nginx split_clients"
ratios "  JWT requests, $conns connections (nginx splits on the token)" "switchyard (JWT HS256)" "nginx, JWT requests"
ratios "  x-user-id, 1000 connections" "switchyard 1000 conns" "nginx 1000 conns"
ratios "  JWT requests, 1000 connections" "switchyard 1000 conns JWT" "nginx 1000 conns JWT"
awk -v a="$(( $(steal_ticks $proxy_cpu) - steal0 ))" -v b="$(( $(steal_ticks $load_cpu) - steal1 ))" -v t="$tck" \
  -v s="$(( SECONDS - started ))" 'BEGIN { printf "steal time in the %d s of rounds: proxies core %.1f s, wrk core %.1f s\n", s, a / t, b / t }'
echo "RSS after 1000 busy connections: switchyard ${RSS[switchyard 1000 conns JWT]} MiB, nginx ${RSS[nginx 1000 conns JWT]} MiB;" \
  "with 1000 idle ones $IDLE_SY MiB and $IDLE_NG MiB"

#!/usr/bin/env bash
# HTTPS load comparison on one machine, one run: switchyard and nginx each terminate
# TLS (the same ECDSA P-256 certificate, TLS 1.3) and split the same rollout over
# nginx `return 200` backends (setup.sh's). h2load (Debian's nghttp2-client) drives
# HTTP/2 (10 streams per connection) and HTTP/1.1 over TLS, then a handshake run (one
# request per connection). Each proxy gets one core and one worker, h2load the other.
# Per target: requests/s, p50 and p99 (from h2load's per-request log), the proxy's CPU
# time per request (from /proc), and for the handshake run handshakes per CPU-second
# of the proxy's core. Rounds interleaved, the two proxies taking turns going first;
# ratios are per round's pair, then their median and range.
#   benches/load/tls.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
secs=${1:-10}
conns=${2:-64}
rounds=${3:-6}
source "$(dirname "$0")/setup.sh"
need h2load nghttp2-client
need openssl openssl

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
# switchyard: HTTPS on 18443 beside its plain listener.
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
path = f"{work}/switchyard.toml"
text = open(path).read().replace(
    "[rollout]",
    f'[server.tls]\nlisten = "127.0.0.1:18443"\ncert_file = "{work}/cert.pem"\nkey_file = "{work}/key.pem"\n[rollout]', 1)
open(path, "w").write(text)
PY
start_switchyard
# nginx: the same split, terminating TLS on 18444 (HTTP/2 and HTTP/1.1 by ALPN).
sed -i "s|  server { listen 127.0.0.1:18201;|  server { listen 127.0.0.1:18444 ssl http2; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.2 TLSv1.3;\n    location / { proxy_pass http://\$cohort; add_header x-switchyard-backend \$cohort; } }\n  server { listen 127.0.0.1:18201;|" "$work/nginx-proxy.conf"
start_nginx_proxy
ready 18200; ready 18201
sleep 1

pid_of() { ss -ltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
median() { echo "$1" | tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# h2load's per-request logs go to a directory of their own: the proxy's config and
# certificate sit in $work, whose changes switchyard watches (each write there would be
# an event for its watcher to read and set aside, on the proxy's core).
mkdir -p "$work/runs"
declare -A RPS P50 P99 CPU
run() { # name port mode(h2|h1|handshake)
  local name=$1 port=$2 mode=$3 pid; pid=$(pid_of "$port")
  local args=(-t1 -H "x-user-id: user-$RANDOM" "https://localhost:$port/rest/v1/items")
  case $mode in
    h2) args+=(-c"$conns" -m10 -D"$secs") ;;
    h1) args+=(--h1 -c"$conns" -D"$secs") ;;
    handshake) args+=(-c200 -n200 -m1) ;;
  esac
  local before after log out; log=$(mktemp -p "$work/runs")
  before=$(cpu_ticks "$pid")
  out=$(taskset -c $load_cpu h2load --log-file="$log" "${args[@]}" 2>&1)
  after=$(cpu_ticks "$pid")
  local done; done=$(echo "$out" | awk '/^requests:/ {print $8}')
  local rps; rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  local q; q() { awk '{print $3}' "$log" | sort -n | awk -v q="$1" '{ v[NR] = $1 } END { i = int(NR * q); if (i < 1) i = 1; printf "%.2f", v[i] / 1000 }'; }
  local cpu; cpu=$(awk -v a="$before" -v b="$after" -v n="$done" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) / t * 1e6 / (n > 0 ? n : 1) }')
  RPS[$name]+=" $rps"; P50[$name]+=" $(q 0.50)"; P99[$name]+=" $(q 0.99)"; CPU[$name]+=" $cpu"
  printf '  round %s: %-24s %10s req/s %8s ms p99 %8s us/req (%s done)\n' "$round" "$name" "$rps" "$(q 0.99)" "$cpu" "$done" >&2
}
pair() { # mode: the two proxies back to back, taking turns going first
  if (( round % 2 )); then run "switchyard $1" 18443 "$1"; run "nginx $1" 18444 "$1"
  else run "nginx $1" 18444 "$1"; run "switchyard $1" 18443 "$1"; fi
}
for round in $(seq "$rounds"); do
  pair h2; pair h1; pair handshake
done

echo "medians of $rounds interleaved rounds ($secs s, $conns connections; handshake: 200 connections, one request each):"
printf '%-24s %10s %9s %9s %12s\n' target req/s "p50 ms" "p99 ms" "cpu us/req"
for t in "switchyard h2" "nginx h2" "switchyard h1" "nginx h1" "switchyard handshake" "nginx handshake"; do
  printf '%-24s %10s %9s %9s %12s\n' "$t" "$(median "${RPS[$t]}")" "$(median "${P50[$t]}")" "$(median "${P99[$t]}")" "$(median "${CPU[$t]}")"
done
paired() {
  local r; r=$(paste -d' ' <(echo "$1" | tr ' ' '\n' | sed '/^$/d') <(echo "$2" | tr ' ' '\n' | sed '/^$/d') |
    awk '$2 > 0 { print $1 / $2 }' | sort -g)
  printf '%.2f (%.2f-%.2f)' "$(median "$(echo $r)")" "$(echo "$r" | head -1)" "$(echo "$r" | tail -1)"
}
echo
echo "switchyard / nginx, median (and range) of the rounds' ratios:"
for m in h2 h1 handshake; do
  echo "  $m: throughput $(paired "${RPS[switchyard $m]}" "${RPS[nginx $m]}"), p99 $(paired "${P99[switchyard $m]}" "${P99[nginx $m]}"), cpu per request $(paired "${CPU[switchyard $m]}" "${CPU[nginx $m]}")"
done
for p in switchyard nginx; do
  awk -v c="$(median "${CPU[$p handshake]}")" -v p="$p" 'BEGIN { printf "%s: %.0f handshakes (with one request) per CPU-second of its core\n", p, 1e6 / c }'
done

#!/usr/bin/env bash
# A connection storm, side by side: 9,000 clients connect at once to switchyard (its
# default listen backlog, and 128 as the standard library's was), and to nginx (its
# default backlog, 511), each proxy on one core with one worker in front of the same
# backends. Prints, per proxy and round, how long the burst took to be answered and
# how many connections waited over a second (SYNs dropped by a full accept queue).
#   benches/load/storm.sh [CONNECTIONS] [ROUNDS]
set -euo pipefail
n=${1:-9000}
rounds=${2:-3}
source "$(dirname "$0")/setup.sh"
storm() { taskset -c $load_cpu python3 "$here/storm.py" "$1" "$n"; }
cp "$work/switchyard.toml" "$work/switchyard-128.toml"
sed -i 's/^admin_listen = ""/admin_listen = ""\nlisten_backlog = 128/; s/18200/18210/' "$work/switchyard-128.toml"
start_switchyard
RUST_LOG=warn taskset -c $proxy_cpu "$bin" serve --workers 1 --config "$work/switchyard-128.toml" 2>/dev/null &
start_nginx_proxy
ready 18200; ready 18210; ready 18201
for r in $(seq "$rounds"); do
  echo "round $r"
  printf "  switchyard (backlog 4096): "; storm 18200
  printf '  nginx (backlog 511):       '; storm 18201
  printf '  switchyard (backlog 128):  '; storm 18210
  sleep 2
done

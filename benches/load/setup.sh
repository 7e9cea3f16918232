#!/usr/bin/env bash
# Shared by the load scripts (sourced): a work directory, tools installed when
# missing, the release build, nginx `return 200` as the v1 and v2 backends on one
# core, switchyard's config (a JWT secret for v1), nginx's as the rollout proxy, and a
# thousand HS256 bearer tokens in "$work/tokens.txt". The caller starts what it measures.
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
here=benches/load
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq "$2" >/dev/null; }; }
# ready PORT: waits (20 s at most) until something answers HTTP on 127.0.0.1:PORT.
ready() {
  need curl curl
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.2; done
}
need nginx nginx; need wrk wrk
cargo build --release --quiet --bin switchyard
bin=target/release/switchyard
ncpu=$(nproc)
proxy_cpu=0
load_cpu=$(( ncpu > 1 ? 1 : 0 ))

# The proxies under test, each on the proxy core with one worker (started in the
# background: the caller's $! is the process). start_switchyard takes another build.
start_switchyard() {
  RUST_LOG=warn taskset -c $proxy_cpu "${1:-$bin}" serve --workers 1 --config "$work/switchyard.toml" 2>"$work/switchyard.err" &
}
start_nginx_proxy() { taskset -c $proxy_cpu nginx -c "$work/nginx-proxy.conf" -g 'daemon off;' & }

# Backends: one nginx, two servers.
cat > "$work/backend.conf" <<CONF
worker_processes 1; pid $work/backend.pid; error_log $work/backend.err;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:18101; location / { return 200 '[{"id":1,"project":"v1"}]'; } }
  server { listen 127.0.0.1:18102; location / { return 200 '[{"id":1,"project":"v2"}]'; } } }
CONF
taskset -c $load_cpu nginx -c "$work/backend.conf" -g 'daemon off;' &

# switchyard's config: v1 verifies JWTs (the x-user-id runs send none).
secret="load-test-secret-0123456789abcdef"
cat > "$work/switchyard.toml" <<CONF
[server]
listen = "127.0.0.1:18200"
admin_listen = ""
[rollout]
percentage = 37
[guard]
enabled = false
[limits]
max_connections = 20000
max_in_flight = 20000
[backends.v1]
url = "http://127.0.0.1:18101"
jwt_secret = "$secret"
issuer = "load"
[backends.v2]
url = "http://127.0.0.1:18102"
CONF

# nginx as the rollout proxy: x-user-id requests on 18201, the JWT runs' on 18203. It
# sends the upstream what switchyard does (the design's forwarding rule): `Host` the
# upstream's own (a Supabase project routes by it; mapped from the chosen upstream
# group's name), `X-Forwarded-For`, `-Proto` and `-Host` (the host the client asked for).
cat > "$work/nginx-proxy.conf" <<CONF
worker_processes 1; worker_cpu_affinity auto; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 100000;
  split_clients "\$http_x_user_id" \$cohort { 37% v2; * v1; }
  # The JWT runs' requests, split on the whole Authorization header: nginx cannot
  # verify a JWT (nor read its sub) without a module, but it handles the same bytes.
  split_clients "\$http_authorization" \$cohort_token { 37% v2; * v1; }
  map \$proxy_host \$upstream_host { v1 127.0.0.1:18101; v2 127.0.0.1:18102; }
  upstream v1 { server 127.0.0.1:18101; keepalive 256; }
  upstream v2 { server 127.0.0.1:18102; keepalive 256; }
  proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$upstream_host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$http_host;
  server { listen 127.0.0.1:18201;
    location / { proxy_pass http://\$cohort; add_header x-switchyard-backend \$cohort; } }
  server { listen 127.0.0.1:18203;
    location / { proxy_pass http://\$cohort_token; add_header x-switchyard-backend \$cohort_token; } } }
CONF

# Bearer tokens for the JWT runs (HS256, verified by switchyard).
python3 - "$secret" > "$work/tokens.txt" <<'PY'
import base64, hmac, hashlib, json, sys, time
secret = sys.argv[1].encode()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
for i in range(1000):
    claims = {"sub": f"user-{i}", "iss": "load", "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 3600}
    msg = head + "." + b64(json.dumps(claims).encode())
    print(msg + "." + b64(hmac.new(secret, msg.encode(), hashlib.sha256).digest()))
PY


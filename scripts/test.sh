#!/usr/bin/env bash
# The whole test suite, as CI runs it. Self-sufficient on a fresh machine: it installs
# what the tests need and is not already there: Debian's prometheus (promtool and a
# real Prometheus server) and postgresql, node with @supabase/supabase-js from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
rustup component add rustfmt clippy >/dev/null 2>&1 || true

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus (promtool + server) for the metrics tests"
  apt_install prometheus
fi
# A real PostgreSQL for the fleet tests: each starts a throwaway cluster of its own
# (initdb refuses root, so as root they run it as the package's postgres user).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing postgresql for the fleet tests"
  apt_install postgresql
fi
command -v runuser >/dev/null || apt_install util-linux
export SWITCHYARD_REQUIRE_POSTGRES=1
# ss (iproute2) reads the listen backlog the kernel gives switchyard's socket.
command -v ss >/dev/null || apt_install iproute2
# Prometheus' Debian service must not hold the ports the tests use.
pkill -x prometheus 2>/dev/null || true
export SWITCHYARD_REQUIRE_PROMETHEUS=1

# The real Supabase client for the end-to-end test, pinned by tests/node/package-lock.json.
if ! command -v npm >/dev/null; then
  echo "installing node and npm for the supabase-js test"
  apt_install nodejs npm
fi
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
export SWITCHYARD_REQUIRE_NODE=1

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

# Deployment files: Prometheus config and rules, YAML and JSON syntax.
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/rules.yml
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
python3 - <<'PY'
import json, pathlib, yaml
for p in pathlib.Path("deploy").rglob("*"):
    if p.suffix in (".yml", ".yaml"):
        list(yaml.safe_load_all(p.read_text()))
    elif p.suffix == ".json":
        json.loads(p.read_text())
print("deploy/: YAML and JSON parse")
PY

# Every fuzz target, briefly, from its committed corpus (longer runs: scripts/fuzz.sh 600).
scripts/fuzz.sh 15

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

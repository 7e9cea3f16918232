#!/usr/bin/env bash
# How long a committed rollout change takes to reach every replica of a fleet
# (docs/fleet.md): builds the release binary, then benches/fleet/convergence.py.
#   benches/fleet/run.sh [changes=200] [replicas=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
}
cargo build --release --quiet
python3 benches/fleet/convergence.py "${1:-200}" "${2:-3}"

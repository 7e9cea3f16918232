#!/usr/bin/env bash
# How long a handoff holds the moving band's writes, against the rows it moves
# (docs/handoff.md): builds the release binary, then benches/handoff/hold.py.
#   benches/handoff/run.sh [rows ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
}
cargo build --release --quiet
python3 benches/handoff/hold.py "$@"

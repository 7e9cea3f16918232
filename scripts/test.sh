#!/usr/bin/env bash
# The whole test suite, as CI runs it. Self-sufficient on a fresh machine: it installs
# what the tests need and is not already there.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --doc

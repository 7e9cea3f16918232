#!/usr/bin/env bash
# Bounded fuzzing of every cargo-fuzz target, each for SECONDS (default 60), starting
# from the committed corpus in fuzz/corpus/<target>. Stable toolchain: no sanitizer.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  # A scratch copy, so the committed corpus only changes when someone minimises it.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  cargo fuzz run "$target" --sanitizer none "$work" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 3
  rm -rf "$work"
done

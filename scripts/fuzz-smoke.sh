#!/usr/bin/env bash
# Builds every cargo-fuzz target with coverage instrumentation (on stable Rust: the flags
# cargo-fuzz passes, without the nightly-only sanitizer) and runs each for a short,
# deterministic smoke: 20,000 inputs from a fixed seed. A crash fails the run.
# Longer runs: scripts/fuzz-smoke.sh <seconds per target> (figures in fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-}"
host=$(rustc -vV | sed -n 's/^host: //p')
# (Build scripts and proc macros are not instrumented: --target keeps RUSTFLAGS off them.)
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --quiet --release --bins --locked --target "$host" --target-dir target/smoke
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^connect-plugin-fuzz$')
for target in $targets; do
  if [ -n "$seconds" ]; then
    args=(-max_total_time="$seconds" -print_final_stats=1)
  else
    args=(-runs=20000 -seed=1)
  fi
  out=$("target/smoke/$host/release/$target" -max_len=1024 "${args[@]}" 2>&1) \
    || { echo "$out" | tail -40; echo "fuzz target $target failed" >&2; exit 1; }
  echo "fuzz $target: $(echo "$out" | grep -E '^Done' | tail -1)"
done

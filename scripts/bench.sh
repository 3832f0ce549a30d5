#!/usr/bin/env bash
# Runs every benchmark and writes bench/RESULTS.md and bench/results.json (ratios measured
# side by side in one run). BENCH_QUICK=1 for a short, rough run.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=node_modules/.connect-plugin-lock.sha256
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(sha256sum package-lock.json | cut -d' ' -f1)" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  sha256sum package-lock.json | cut -d' ' -f1 > "$stamp"
fi
cargo build --release --quiet -p kv -p protoc-gen-connect-plugin
cargo bench --quiet -p connect-plugin-bench

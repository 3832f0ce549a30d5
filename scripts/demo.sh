#!/usr/bin/env bash
# The KV demo: kv-host launches the kv-plugin process and calls it through the typed client.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --package kv --bins
exec target/debug/kv-host "$@"

#!/usr/bin/env bash
# The platform demo: a host and three plugin processes (logger, cache, app) that call each
# other through the host.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --package platform --bins
exec target/debug/platform-host "$@"

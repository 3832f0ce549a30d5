#!/usr/bin/env bash
# Runs every test of the repository, as CI does. Installs what the tests need first:
# the pinned Node packages (buf CLI, connect-node peers) from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

# npm ci only when node_modules does not match the committed lock file.
stamp=node_modules/.connect-plugin-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> npm ci (buf, connect-node; pinned by package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> cargo test --workspace"
cargo test --workspace

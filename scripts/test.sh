#!/usr/bin/env bash
# Runs every test of the repository, as CI does. Installs what the tests need first:
# the pinned Node packages (buf CLI, connect-node peers, TypeScript) from package-lock.json, the Go
# programs (the official conformance runner, the connect-go peers) from the Go module proxy
# as their go.sum files pin them, and Debian's dnsmasq.
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

# The TypeScript plugin of the polyglot test (tests/ts-plugin), with the pinned tsc.
echo "==> tsc -p tests/ts-plugin (the TypeScript plugin)"
npx --no-install tsc -p tests/ts-plugin

# dnsmasq: the real DNS server the discovery tests query (Debian's dnsmasq-base, the binary
# alone, no system service).
if [ ! -x /usr/sbin/dnsmasq ] && ! command -v dnsmasq >/dev/null 2>&1; then
  echo "==> apt-get install dnsmasq-base (the DNS server of the discovery tests)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y -q dnsmasq-base >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dnsmasq-base >/dev/null; }
fi

# Go: the official Connect conformance runner and the Go peers of the interop tests. Go caches
# builds in its own cache (~/.cache/go-build), so a second run on a machine rebuilds nothing.
command -v go >/dev/null || { echo "Go is needed (the conformance runner and the Go peers)" >&2; exit 1; }
echo "==> go build: connectconformance (conformance/runner/go.sum), Go peers (tests/go/go.sum)"
mkdir -p target/go-tools
(cd conformance/runner && go build -o ../../target/go-tools/connectconformance \
  connectrpc.com/conformance/cmd/connectconformance)
(cd tests/go && test -z "$(gofmt -l cmd)" && go vet ./... \
  && go build -o ../../target/go-tools/go-peer ./cmd/peer) \
  || { echo "tests/go: gofmt, go vet or go build failed (gofmt -l: $(cd tests/go && gofmt -l cmd))" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> module layers: no import cycles; the Connect crate knows no plugin concept"
python3 scripts/check-layers.py
if cargo tree --quiet -p connect-plugin-rpc -e normal,build --prefix none | grep -q '^connect-plugin '; then
  echo "connect-plugin-rpc depends on connect-plugin: the Connect crate must not know the plugin system" >&2
  exit 1
fi

echo "==> cargo doc: both runtime crates, broken links are errors"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p connect-plugin-rpc -p connect-plugin

echo "==> fuzz targets: build with coverage, smoke-run each (scripts/fuzz-smoke.sh)"
bash scripts/fuzz-smoke.sh

echo "==> cargo test --workspace"
cargo test --workspace

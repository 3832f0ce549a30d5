#!/usr/bin/env bash
# Regenerates the Go peers' code (tests/go/gen) from the system's protos, the KV example's
# and the interop service's: protoc-gen-go and protoc-gen-connect-go at the versions
# tests/go/go.mod pins, run by the pinned buf (npm). The output is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/go-tools
(cd tests/go && go build -o ../../target/go-tools/ \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  connectrpc.com/connect/cmd/protoc-gen-connect-go)
npx --no-install buf generate --template buf.gen.go.yaml

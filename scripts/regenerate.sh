#!/usr/bin/env bash
# Rewrites every committed file the generator produces (the runtime's system protos, the
# golden fixtures, the interop, conformance and example code) from the current generator,
# templates and protos. The test command checks they are fresh; this refreshes them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q -p protoc-gen-connect-plugin --test generated_code_is_fresh \
  -- --ignored --exact regenerate_committed_code

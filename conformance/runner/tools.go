//go:build tools

// Package runner pins the official Connect conformance runner (connectconformance), which
// scripts/conformance.sh builds from this module so that go.sum fixes every dependency.
package runner

import _ "connectrpc.com/conformance/cmd/connectconformance"

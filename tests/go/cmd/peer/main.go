// Command peer is the Go side of the interop tests (tests/tests/go_peers.rs): connect-go
// servers and clients, and plugins, hosts and clients of the plugin system written with
// connect-go on the system's wire protos (connect-plugin-go itself is not served by the Go
// module proxy this project uses).
//
// Usage: peer <command> [args]; see the commands below. Servers print "LISTENING <url>" once
// they accept connections and stop when stdin closes. Clients check what they get, print
// "OK <n> checks" and exit 0, or print "FAILED: <why>" and exit 1.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "interop-server":
		interopServer()
	case "interop-client":
		need(args, 1)
		interopClient(args[0])
	case "kv-plugin":
		kvPlugin()
	case "kv-client":
		need(args, 1)
		kvClient(args[0])
	case "self-registering":
		selfRegistering()
	case "host":
		goHost()
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: peer <command>
  interop-server          serve interop.v1.InteropService (HTTP/1.1 and h2c on one port)
  interop-client <url>    the interop matrix against a server of it
  kv-plugin               a KV plugin: handshake and kv.v1.KVService, readiness line on stdout
  kv-client <url>         handshake with a KV plugin at <url>, then call it
  self-registering        joins $HOST_URL, registers "kv" (no provides), serves KV
  host                    a host: handshake, registry and lifecycle; prints registrations`)
	os.Exit(2)
}

func need(args []string, n int) {
	if len(args) < n {
		usage()
	}
}

var checks int

// expect fails the run with why unless cond holds.
func expect(cond bool, why string, args ...any) {
	if !cond {
		fmt.Printf("FAILED: "+why+"\n", args...)
		os.Exit(1)
	}
	checks++
}

func check(err error, what string) {
	if err != nil {
		fmt.Printf("FAILED: %s: %v\n", what, err)
		os.Exit(1)
	}
}

func done() {
	fmt.Printf("OK %d checks\n", checks)
	os.Exit(0)
}

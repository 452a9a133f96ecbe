//go:build pprof

package main

import (
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

// A profiling build (go build -tags pprof, as bench/ scripts may build
// lifeboat) serves net/http/pprof on LIFEBOAT_PPROF=127.0.0.1:PORT; the
// released binary has no such listener. Only loopback addresses are
// accepted: the profile shows memory contents indirectly.
func init() {
	addr := os.Getenv("LIFEBOAT_PPROF")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		slog.Error("LIFEBOAT_PPROF: want 127.0.0.1:PORT", "value", addr)
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		slog.Error("LIFEBOAT_PPROF: listen", "err", err)
		return
	}
	slog.Warn("profiling build: pprof served", "addr", ln.Addr().String())
	go http.Serve(ln, nil)
}

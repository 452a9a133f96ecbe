// Package faultinject holds fault-injection wrappers for tests. Only tests,
// and the files of cmd/lifeboat built with `-tags faultinject` (as the e2e
// tests build the binary), import it: the released binary contains none of
// it and reads no fault variable.
package faultinject

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// CorruptSegments is a middleware that flips one byte in the middle of the
// body of the first n segment uploads (POST .../segments), after TLS and
// before the process server's checks, as a bad NIC or a buggy proxy would.
// The server must refuse each of them (422) and the agent must resend.
// Install it with pipeline.Server.Middleware (or around Server.Handler).
func CorruptSegments(n int) func(http.Handler) http.Handler {
	var mu sync.Mutex
	left := n
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			hit := left > 0 && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/segments")
			if hit {
				left--
			}
			mu.Unlock()
			if hit {
				b, err := io.ReadAll(r.Body)
				if err == nil && len(b) > 0 {
					b[len(b)/2] ^= 0x40
				}
				r.Body = io.NopCloser(bytes.NewReader(b))
			}
			next.ServeHTTP(w, r)
		})
	}
}

// DelaySegments is a middleware that holds every segment upload (POST
// .../segments) for d before the process server sees it: a slow link, so
// that a test can act in the middle of a transfer.
func DelaySegments(d time.Duration) func(http.Handler) http.Handler {
	return DelaySegmentsBy(func() time.Duration { return d })
}

// DelaySegmentsBy is DelaySegments with the delay asked of delay at each
// upload, so that a test can slow the link and restore it while the
// server runs. A delay of 0 or less holds nothing.
func DelaySegmentsBy(delay func() time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/segments") {
				if d := delay(); d > 0 {
					select {
					case <-time.After(d):
					case <-r.Context().Done():
					}
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// DelayFromFile reads a delay from a file at each call: a Go duration
// ("8s"), or nothing (a missing or empty file, or one that does not parse)
// for no delay. For DelaySegmentsBy.
func DelayFromFile(path string) func() time.Duration {
	return func() time.Duration {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		d, err := time.ParseDuration(strings.TrimSpace(string(b)))
		if err != nil {
			return 0
		}
		return d
	}
}

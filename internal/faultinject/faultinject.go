// Package faultinject holds fault-injection wrappers for tests. Only tests,
// and the files of cmd/lifeboat built with `-tags faultinject` (as the e2e
// tests build the binary), import it: the released binary contains none of
// it and reads no fault variable.
package faultinject

import (
	"bytes"
	"io"
	"net/http"
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
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/segments") {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

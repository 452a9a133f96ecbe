package pipeline

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
)

// CorruptSegments is a fault-injection middleware for tests: it flips one
// byte in the middle of the body of the first n segment uploads, after TLS
// and before the server's checks, as a bad NIC or a buggy proxy would. The
// server must refuse each of them (422) and the agent must resend.
// `lifeboat server` installs it when LIFEBOAT_FAULT_CORRUPT_SEGMENTS=N is
// set in its environment, and says so in its log.
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

package faultinject_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"lifeboat/internal/faultinject"
)

// The first n segment uploads get one byte flipped in the middle; other
// requests and later uploads pass unchanged.
func TestCorruptSegments(t *testing.T) {
	body := []byte("0123456789abcdef")
	var got [][]byte
	h := faultinject.CorruptSegments(2)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b)
	}))
	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/v1/volumes/x/segments"},
		{http.MethodPost, "/v1/volumes/x/points"},
		{http.MethodPost, "/v1/volumes/x/segments"},
		{http.MethodPost, "/v1/volumes/x/segments"},
		{http.MethodPost, "/v1/volumes/x/segments"},
	} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(req.method, req.path, bytes.NewReader(body)))
	}
	corrupt := bytes.Clone(body)
	corrupt[len(body)/2] ^= 0x40
	want := [][]byte{body, body, corrupt, corrupt, body}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("request %d: handler got %q, want %q", i, got[i], want[i])
		}
	}
}

// DelaySegmentsBy asks for the delay at each segment upload: the file's
// duration while it holds one, none when it is empty or missing; other
// requests are never held.
func TestDelaySegmentsFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "delay")
	h := faultinject.DelaySegmentsBy(faultinject.DelayFromFile(f))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	took := func(method, path string) time.Duration {
		start := time.Now()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, path, nil))
		return time.Since(start)
	}
	if d := took(http.MethodPost, "/v1/volumes/x/segments"); d > 500*time.Millisecond {
		t.Errorf("no file: held %v, want no delay", d)
	}
	if err := os.WriteFile(f, []byte("1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d := took(http.MethodPost, "/v1/volumes/x/segments"); d < time.Second {
		t.Errorf("file says 1s: held %v", d)
	}
	if d := took(http.MethodGet, "/v1/volumes/x"); d > 500*time.Millisecond {
		t.Errorf("not an upload: held %v, want no delay", d)
	}
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if d := took(http.MethodPost, "/v1/volumes/x/segments"); d > 500*time.Millisecond {
		t.Errorf("empty file: held %v, want no delay", d)
	}
}

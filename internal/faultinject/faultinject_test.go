package faultinject_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

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

package control_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"testing"

	"lifeboat/control"
)

// The registration endpoint is the one any client reaches without a
// certificate. Whatever the body, it answers an error of the request (400,
// 403 for a proof that does not hold) and never issues a certificate, and
// the CSR check refuses what is not a self-signed P-256 request for the
// name, without panicking.
func FuzzRegisterRequest(f *testing.F) {
	s := newSite(f)
	s.srv.RegisterFailures = 1 << 30 // no rate limit: every input reaches the decoder
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web01"}}, key)
	f.Add([]byte(`{"name":"web01","csr":"AAAA","proof":"AAAA"}`), "web01", csr)
	f.Add([]byte(`{"name":"web01","role":"process-server","hosts":["127.0.0.1"],"url":"https://x:1","csr":"","proof":""}`), "web01", []byte{0x30, 0x03})
	f.Add([]byte(`{}`), "", []byte(nil))
	f.Add([]byte(`{"name":"a","unknown":1}`), "a", csr[:len(csr)/2])
	h := s.srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte, name string, der []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/register", bytes.NewReader(body)))
		if rec.Code != http.StatusBadRequest && rec.Code != http.StatusForbidden {
			t.Fatalf("POST /v1/register %q: %d %s, want 400 or 403", body, rec.Code, rec.Body)
		}
		if _, err := control.CheckCSRForTest(control.RegisterRequest{Name: name, CSR: der}); err == nil && name != "web01" {
			t.Fatalf("CSR for another name accepted as %q", name)
		}
	})
}

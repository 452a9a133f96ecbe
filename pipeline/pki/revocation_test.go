package pki_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/pipeline/pki"
)

// agentClient issues a recorded agent certificate and returns a client
// configuration that uses it, with its serial.
func agentClient(t *testing.T, dir, name string) (*tls.Config, string) {
	t.Helper()
	id, c := issue(t, dir, name, pki.RoleAgent, 0)
	cli, err := pki.ClientTLS(writeIdentity(t, id, name))
	if err != nil {
		t.Fatal(err)
	}
	return cli, pki.SerialText(c.SerialNumber)
}

// refused connects and checks that the handshake fails because the
// certificate of name (serial) was revoked; it returns the server's error.
func refused(t *testing.T, srv, cli *tls.Config, name, serial string) error {
	t.Helper()
	addr, seen := serve(t, srv)
	if err := dial(addr, cli); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("client of revoked %s: %v, want the server's bad certificate alert", name, err)
	}
	got := <-seen
	if !errors.Is(got.err, pki.ErrRevoked) {
		t.Fatalf("server: %q %v, want a handshake error wrapping ErrRevoked", got.name, got.err)
	}
	for _, w := range []string{name, "role agent", "serial " + serial, "revoked at", "lifeboat certs issue --name " + name} {
		if !strings.Contains(got.err.Error(), w) {
			t.Errorf("server error %q lacks %q", got.err, w)
		}
	}
	return got.err
}

func accepted(t *testing.T, srv, cli *tls.Config, name string) {
	t.Helper()
	addr, seen := serve(t, srv)
	if err := dial(addr, cli); err != nil {
		t.Errorf("%s: %v", name, err)
	}
	if got := <-seen; got.err != nil || got.name != name {
		t.Errorf("server saw %q %v, want %s", got.name, got.err, name)
	}
}

// A configuration made before the revocation refuses the revoked
// certificate at the next handshake: the changed ca.crl is picked up
// without a new configuration. Others are not affected.
func TestHandshakeRefusesRevoked(t *testing.T) {
	_, dir := initCA(t)
	web1, serial1 := agentClient(t, dir, "web01")
	web2, serial2 := agentClient(t, dir, "web02")
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	accepted(t, srv, web1, "web01")
	revoke(t, dir, pki.Revocation{Name: "web01"})
	refused(t, srv, web1, "web01", serial1)
	accepted(t, srv, web2, "web02")
	// A second revocation (a new ca.crl) is picked up as well.
	revoke(t, dir, pki.Revocation{Serial: serial2})
	refused(t, srv, web2, "web02", serial2)
	refused(t, srv, web1, "web01", serial1)
	// And a server that starts with the CRL refuses from the start.
	srv2, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	refused(t, srv2, web1, "web01", serial1)
}

// A TLS 1.3 client that resumes a session (no certificate sent again) is
// refused too: the check is VerifyConnection, which Go calls on
// resumption, not VerifyPeerCertificate, which it does not.
func TestRevokedResumedSessionRefused(t *testing.T) {
	_, dir := initCA(t)
	cli, serial := agentClient(t, dir, "web01")
	cli.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var resumed []bool
	check := srv.VerifyConnection
	srv.VerifyConnection = func(cs tls.ConnectionState) error {
		mu.Lock()
		resumed = append(resumed, cs.DidResume)
		mu.Unlock()
		return check(cs)
	}
	accepted(t, srv, cli, "web01")
	accepted(t, srv, cli, "web01")
	revoke(t, dir, pki.Revocation{Name: "web01"})
	refused(t, srv, cli, "web01", serial)
	mu.Lock()
	defer mu.Unlock()
	if len(resumed) != 3 || resumed[0] || !resumed[1] || !resumed[2] {
		t.Fatalf("handshakes resumed: %v, want [false true true] (the refused one a resumption)", resumed)
	}
}

// captureLog sends slog.Default to a buffer for the test.
func captureLog(t *testing.T) *syncBuffer {
	t.Helper()
	buf := &syncBuffer{}
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return buf
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A ca.crl that turns corrupt, is replaced by another CA's, or disappears
// is logged (once) and the revocations read before stay in force; a
// server does not start with a bad one.
func TestBadCRLKeepsLastGood(t *testing.T) {
	log := captureLog(t)
	_, dir := initCA(t)
	p := pki.Paths(dir)
	web1, serial1 := agentClient(t, dir, "web01")
	web2, _ := agentClient(t, dir, "web02")
	revoke(t, dir, pki.Revocation{Name: "web01"})
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(p.CRL)

	// Another CA's CRL, which revokes nothing of ours.
	_, other := initCA(t)
	issue(t, other, "x", pki.RoleAgent, 0)
	revoke(t, other, pki.Revocation{Name: "x"})
	foreign, _ := os.ReadFile(pki.Paths(other).CRL)

	for _, tt := range []struct {
		name    string
		replace func() error
		logged  string
		start   string // ServerTLS's error with it; "" if it starts
	}{
		{"corrupt", func() error { return os.WriteFile(p.CRL, good[:len(good)/2], 0o644) }, "no PEM X509 CRL", "no PEM X509 CRL"},
		{"another CA", func() error { return os.WriteFile(p.CRL, foreign, 0o644) }, "not signed by the site CA", "not signed by the site CA"},
		{"removed", func() error { return os.Remove(p.CRL) }, "was removed", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.replace(); err != nil {
				t.Fatal(err)
			}
			refused(t, srv, web1, "web01", serial1)
			accepted(t, srv, web2, "web02")
			refused(t, srv, web1, "web01", serial1)
			if n := strings.Count(log.String(), tt.logged); n != 1 {
				t.Errorf("log has %q %d times, want once:\n%s", tt.logged, n, log)
			}
			if !strings.Contains(log.String(), "certificate revocation list not reloaded") {
				t.Errorf("log:\n%s", log)
			}
			_, err := pki.ServerTLS(dir)
			if tt.start == "" && err != nil || tt.start != "" && (err == nil || !strings.Contains(err.Error(), tt.start) ||
				!strings.Contains(err.Error(), "restore ca.crl")) {
				t.Errorf("ServerTLS with a %s CRL: %v, want %q", tt.name, err, tt.start)
			}
			// The good one back: read again, still refused.
			if err := os.WriteFile(p.CRL, good, 0o644); err != nil {
				t.Fatal(err)
			}
			refused(t, srv, web1, "web01", serial1)
		})
	}
	if _, err := pki.Issued(dir, time.Now()); err != nil {
		t.Errorf("Issued with the good CRL back: %v", err)
	}
	os.WriteFile(p.CRL, foreign, 0o644)
	if _, err := pki.Issued(dir, time.Now()); err == nil || !strings.Contains(err.Error(), "not signed by the site CA") {
		t.Errorf("Issued with another CA's CRL: %v", err)
	}
}

// BenchmarkVerifyConnection is the cost the revocation check adds to a
// handshake or a request: a stat of ca.crl once it is older than a few
// seconds ("settled"); while it is new, a read and compare as well.
func BenchmarkVerifyConnection(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "data")
	if _, err := pki.Init(dir, nil); err != nil {
		b.Fatal(err)
	}
	ca, err := pki.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := ca.Issue(fmt.Sprintf("old%d", i), pki.RoleAgent, nil, 0); err != nil {
			b.Fatal(err)
		}
		if _, err := ca.Revoke(pki.Revocation{Name: fmt.Sprintf("old%d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	id, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	leaf, _ := id.Certificate()
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
	for _, settled := range []bool{false, true} {
		name := "fresh"
		if settled {
			name = "settled"
			old := time.Now().Add(-time.Minute)
			if err := os.Chtimes(pki.Paths(dir).CRL, old, old); err != nil {
				b.Fatal(err)
			}
		}
		srv, err := pki.ServerTLS(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if err := srv.VerifyConnection(cs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

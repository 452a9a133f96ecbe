package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline/pki"
)

// handshake is what the server saw of one connection.
type handshake struct {
	name string
	role pki.Role
	err  error
}

// serve accepts one TLS connection on 127.0.0.1 with cfg, reports who the
// peer was, and writes "ok" to it.
func serve(t *testing.T, cfg *tls.Config) (addr string, seen <-chan handshake) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan handshake, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- handshake{err: err}
			return
		}
		tc := tls.Server(c, cfg)
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			ch <- handshake{err: err}
			return
		}
		name, role, err := pki.Peer(tc.ConnectionState())
		if err == nil {
			_, err = tc.Write([]byte("ok"))
		}
		ch <- handshake{name, role, err}
	}()
	return ln.Addr().String(), ch
}

// dial connects with cfg and reads the server's "ok": with TLS 1.3 a
// client learns that the server refused its certificate on the first read.
func dial(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ok" {
		return errors.New("server sent " + string(buf))
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		return errors.New("negotiated " + tls.VersionName(v))
	}
	return nil
}

// writeIdentity writes id to a new directory and returns its three files.
func writeIdentity(t *testing.T, id pki.Identity, name string) (cert, key, ca string) {
	t.Helper()
	dir := t.TempDir()
	if err := id.Write(dir, name); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "ca.crt")
}

// rawClient builds a client configuration without ClientTLS's checks, to
// see what the server does with identities ClientTLS would refuse.
func rawClient(t *testing.T, id pki.Identity, trustPEM []byte) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(trustPEM)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if id.CertPEM != nil {
		pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

func TestHandshake(t *testing.T) {
	ca, dir := initCA(t)
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	if srv.MinVersion != tls.VersionTLS13 || srv.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("ServerTLS: MinVersion %x, ClientAuth %v", srv.MinVersion, srv.ClientAuth)
	}
	agent, err := ca.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile := writeIdentity(t, agent, "web01")
	p := pki.Paths(dir)
	for _, tt := range []struct {
		cert, key, ca string
		name          string
		role          pki.Role
	}{
		{certFile, keyFile, caFile, "web01", pki.RoleAgent},
		{p.AdminCert, p.AdminKey, p.CACert, "admin", pki.RoleAdmin},
	} {
		cli, err := pki.ClientTLS(tt.cert, tt.key, tt.ca)
		if err != nil {
			t.Fatalf("ClientTLS: %v", err)
		}
		addr, seen := serve(t, srv)
		if err := dial(addr, cli); err != nil {
			t.Fatalf("%s: handshake: %v", tt.name, err)
		}
		got := <-seen
		if got.err != nil || got.name != tt.name || got.role != tt.role {
			t.Errorf("server saw %q %q %v, want %q %q", got.name, got.role, got.err, tt.name, tt.role)
		}
	}
}

func TestHandshakeRefused(t *testing.T) {
	ca, dir := initCA(t)
	srv, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := os.ReadFile(pki.Paths(dir).CACert)
	otherCA, _ := initCA(t)
	foreign, _ := otherCA.Issue("web01", pki.RoleAgent, nil, 0)
	expired, err := ca.Issue("web01", pki.RoleAgent, nil, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	serverID, _ := ca.Issue("ps1", pki.RoleServer, []string{"ps1.example"}, 0)

	tests := []struct {
		name      string
		client    *tls.Config
		serverErr string // in the server's handshake error
		clientErr string // the alert the client receives
	}{
		{"no certificate", rawClient(t, pki.Identity{}, trust), "didn't provide a certificate", "certificate required"},
		{"another CA", rawClient(t, foreign, trust), "unknown authority", "unknown certificate authority"},
		{"expired", rawClient(t, expired, trust), "expired", "expired certificate"},
		{"server certificate as client", rawClient(t, serverID, trust), "incompatible key usage", "bad certificate"},
		{"TLS 1.2", func() *tls.Config {
			c := rawClient(t, good, trust)
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(), "unsupported versions", "protocol version not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, seen := serve(t, srv)
			if err := dial(addr, tt.client); err == nil || !strings.Contains(err.Error(), tt.clientErr) {
				t.Errorf("client: %v, want an error with %q", err, tt.clientErr)
			}
			got := <-seen
			if got.err == nil || !strings.Contains(got.err.Error(), tt.serverErr) {
				t.Errorf("server: %q %q %v, want a handshake error with %q", got.name, got.role, got.err, tt.serverErr)
			}
		})
	}
}

func TestClientRefusesOtherServer(t *testing.T) {
	ca, _ := initCA(t)
	_, otherDir := initCA(t)
	srv, err := pki.ServerTLS(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	agent, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	cli, err := pki.ClientTLS(writeIdentity(t, agent, "web01"))
	if err != nil {
		t.Fatal(err)
	}
	addr, seen := serve(t, srv)
	if err := dial(addr, cli); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("client accepted a server of another CA: %v", err)
	}
	<-seen
}

func TestClientTLSErrors(t *testing.T) {
	ca, _ := initCA(t)
	agent, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	cert, key, caFile := writeIdentity(t, agent, "web01")
	other, _ := ca.Issue("web02", pki.RoleAgent, nil, 0)
	otherCert, otherKey, _ := writeIdentity(t, other, "web02")
	expired, _ := ca.Issue("old", pki.RoleAgent, nil, time.Nanosecond)
	expCert, expKey, _ := writeIdentity(t, expired, "old")
	server, _ := ca.Issue("ps1", pki.RoleServer, []string{"ps1.example"}, 0)
	srvCert, srvKey, _ := writeIdentity(t, server, "ps1")
	otherCA, _ := initCA(t)
	foreign, _ := otherCA.Issue("web01", pki.RoleAgent, nil, 0)
	forCert, forKey, _ := writeIdentity(t, foreign, "web01")
	missing := filepath.Join(t.TempDir(), "nope.crt")

	tests := []struct {
		name, cert, key, ca string
		want                []string
	}{
		{"missing CA", cert, key, missing, []string{"nope.crt", "no such file", "copy ca.crt"}},
		{"CA not PEM", cert, key, key, []string{"no PEM CERTIFICATE"}},
		{"missing certificate", missing, key, caFile, []string{"certificate", "nope.crt"}},
		{"missing key", cert, missing, caFile, []string{"key", "nope.crt"}},
		{"mismatched key", cert, otherKey, caFile, []string{otherKey, "is not the key of", cert}},
		{"mismatched certificate", otherCert, key, caFile, []string{"is not the key of"}},
		{"another CA", forCert, forKey, caFile, []string{"not a client certificate issued by the CA", "lifeboat certs issue"}},
		{"server certificate", srvCert, srvKey, caFile, []string{"not a client certificate"}},
		{"expired", expCert, expKey, caFile, []string{"expired on", "lifeboat certs issue --name old"}},
	}
	for _, tt := range tests {
		_, err := pki.ClientTLS(tt.cert, tt.key, tt.ca)
		if err == nil {
			t.Errorf("%s: ClientTLS accepted it", tt.name)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want %q in it", tt.name, err, w)
			}
		}
	}
}

func TestServerTLSErrors(t *testing.T) {
	if _, err := pki.ServerTLS(t.TempDir()); !errors.Is(err, pki.ErrNoCA) || !strings.Contains(err.Error(), "server init") {
		t.Errorf("ServerTLS without a CA: %v", err)
	}
	_, dir := initCA(t)
	_, other := initCA(t)
	p, o := pki.Paths(dir), pki.Paths(other)
	for _, f := range [][2]string{{o.ServerCert, p.ServerCert}, {o.ServerKey, p.ServerKey}} {
		b, _ := os.ReadFile(f[0])
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pki.ServerTLS(dir); err == nil || !strings.Contains(err.Error(), "not a valid server certificate") {
		t.Errorf("ServerTLS with another CA's server certificate: %v", err)
	}
	os.Remove(p.ServerKey)
	if _, err := pki.ServerTLS(dir); err == nil || !strings.Contains(err.Error(), "server.key") {
		t.Errorf("ServerTLS without server.key: %v", err)
	}
}

func TestPeerWithoutCertificate(t *testing.T) {
	if _, _, err := pki.Peer(tls.ConnectionState{}); err == nil {
		t.Errorf("Peer of an unauthenticated connection: no error")
	}
}

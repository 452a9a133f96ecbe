package pki_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline/pki"
)

// issue issues a certificate from the CA loaded from dir (so that it is
// recorded) and returns it with its parsed certificate.
func issue(t *testing.T, dir, name string, role pki.Role, validity time.Duration) (pki.Identity, *x509.Certificate) {
	t.Helper()
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	if role == pki.RoleServer {
		hosts = []string{name + ".example"}
	}
	id, err := ca.Issue(name, role, hosts, validity)
	if err != nil {
		t.Fatal(err)
	}
	c, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return id, c
}

func revoke(t *testing.T, dir string, r pki.Revocation) []pki.IssuedCert {
	t.Helper()
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ca.Revoke(r)
	if err != nil {
		t.Fatalf("Revoke(%+v): %v", r, err)
	}
	return got
}

func issuedBySerial(t *testing.T, dir string) map[string]pki.IssuedCert {
	t.Helper()
	list, err := pki.Issued(dir, time.Now())
	if err != nil {
		t.Fatalf("Issued: %v", err)
	}
	m := map[string]pki.IssuedCert{}
	for _, c := range list {
		m[c.Serial] = c
	}
	return m
}

// Init and every Issue of a loaded CA record the certificate, and only
// the certificate, in DATA_DIR/pki/issued.
func TestRegistry(t *testing.T) {
	_, dir := initCA(t)
	p := pki.Paths(dir)
	_, web := issue(t, dir, "web01", pki.RoleAgent, 0)
	_, old := issue(t, dir, "old", pki.RoleAgent, time.Nanosecond)
	server, _ := pki.ReadCertificate(p.ServerCert)
	admin, _ := pki.ReadCertificate(p.AdminCert)

	entries, err := os.ReadDir(p.Issued)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Errorf("registry holds %d files, want 4 (server, admin, web01, old)", len(entries))
	}
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(p.Issued, e.Name()))
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key", e.Name())
		}
	}
	got := issuedBySerial(t, dir)
	for _, tt := range []struct {
		cert   *x509.Certificate
		holder string
		role   pki.Role
		status pki.Status
	}{
		{server, "server", pki.RoleServer, pki.StatusValid},
		{admin, "admin", pki.RoleAdmin, pki.StatusValid},
		{web, "web01", pki.RoleAgent, pki.StatusValid},
		{old, "old", pki.RoleAgent, pki.StatusExpired},
	} {
		serial := pki.SerialText(tt.cert.SerialNumber)
		c, ok := got[serial]
		if !ok {
			t.Errorf("%s (serial %s) is not in the registry", tt.holder, serial)
			continue
		}
		if c.Holder != tt.holder || c.Role != tt.role || c.Status != tt.status || !c.ExpiresAt.Equal(tt.cert.NotAfter) || c.RevokedAt != nil {
			t.Errorf("registry: %+v, want %s %s %s until %s", c, tt.holder, tt.role, tt.status, tt.cert.NotAfter)
		}
		if _, err := os.Stat(filepath.Join(p.Issued, serial+".crt")); err != nil {
			t.Errorf("%s: %v", tt.holder, err)
		}
	}

	// A file of another CA in the registry is an error naming it.
	otherCA, _ := initCA(t)
	foreign, _ := otherCA.Issue("intruder", pki.RoleAgent, nil, 0)
	if err := os.WriteFile(filepath.Join(p.Issued, "1234.crt"), foreign.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Issued(dir, time.Now()); err == nil || !strings.Contains(err.Error(), "1234.crt") {
		t.Errorf("Issued with a foreign certificate in the registry: %v", err)
	}
	if _, err := pki.Issued(t.TempDir(), time.Now()); !errors.Is(err, pki.ErrNoCA) {
		t.Errorf("Issued without a CA: %v", err)
	}
}

func TestParseSerial(t *testing.T) {
	for _, s := range []string{"3fa2", "3FA2", "0x3fa2", "3f:a2", " 3fa2\n"} {
		if n, err := pki.ParseSerial(s); err != nil || pki.SerialText(n) != "3fa2" {
			t.Errorf("ParseSerial(%q) = %v, %v", s, n, err)
		}
	}
	for _, s := range []string{"", "0", "xyz", "-1", "0x"} {
		if _, err := pki.ParseSerial(s); !errors.Is(err, pki.ErrSerial) {
			t.Errorf("ParseSerial(%q): %v, want ErrSerial", s, err)
		}
	}
}

// The CRL that Revoke writes is a standard X.509 CRL signed by the CA,
// keeps every earlier entry, and is what Issued reports.
func TestRevokeCRLRoundTrip(t *testing.T) {
	ca, dir := initCA(t)
	p := pki.Paths(dir)
	_, web1 := issue(t, dir, "web01", pki.RoleAgent, 0)
	_, web1b := issue(t, dir, "web01", pki.RoleAgent, 0)
	_, expired := issue(t, dir, "web01", pki.RoleAgent, time.Nanosecond)
	_, web2 := issue(t, dir, "web02", pki.RoleAgent, 0)
	_, alice := issue(t, dir, "alice", pki.RoleAdmin, 0)

	got := revoke(t, dir, pki.Revocation{Name: "web01", Reason: "disk stolen"})
	if len(got) != 2 {
		t.Fatalf("revoked %+v, want web01's two unexpired certificates", got)
	}
	want := map[string]bool{pki.SerialText(web1.SerialNumber): true, pki.SerialText(web1b.SerialNumber): true}
	for _, c := range got {
		if !want[c.Serial] || c.Status != pki.StatusRevoked || c.RevokedAt == nil || c.Reason != "disk stolen" {
			t.Errorf("revoked %+v", c)
		}
	}
	crl1 := readCRL(t, p.CRL, ca.Certificate())
	// By serial, as openssl prints it.
	aliceSerial := strings.ToUpper(pki.SerialText(alice.SerialNumber))
	revoke(t, dir, pki.Revocation{Serial: "0x" + aliceSerial})
	crl2 := readCRL(t, p.CRL, ca.Certificate())
	if crl2.Number.Cmp(crl1.Number) <= 0 {
		t.Errorf("CRL number %v after %v, want it to grow", crl2.Number, crl1.Number)
	}
	inCRL := map[string]bool{}
	for _, e := range crl2.RevokedCertificateEntries {
		inCRL[pki.SerialText(e.SerialNumber)] = true
	}
	for _, c := range []*x509.Certificate{web1, web1b, alice} {
		if !inCRL[pki.SerialText(c.SerialNumber)] {
			t.Errorf("serial %x (%s) is not in the CRL", c.SerialNumber, c.Subject.CommonName)
		}
	}
	if len(inCRL) != 3 {
		t.Errorf("CRL lists %d serials, want 3", len(inCRL))
	}

	list := issuedBySerial(t, dir)
	for serial, st := range map[string]pki.Status{
		pki.SerialText(web1.SerialNumber): pki.StatusRevoked, pki.SerialText(alice.SerialNumber): pki.StatusRevoked,
		pki.SerialText(expired.SerialNumber): pki.StatusExpired, pki.SerialText(web2.SerialNumber): pki.StatusValid,
	} {
		if list[serial].Status != st {
			t.Errorf("serial %s: %+v, want %s", serial, list[serial], st)
		}
	}
	if c := list[pki.SerialText(alice.SerialNumber)]; c.Reason != "" || c.RevokedAt == nil {
		t.Errorf("alice: %+v, want revoked without a reason", c)
	}
	checkOpenSSL(t, dir, web1, web2)
}

// checkOpenSSL has openssl judge revoked and valid against ca.crl: the
// CRL is standard, not only readable by Go.
func checkOpenSSL(t *testing.T, dir string, revoked, valid *x509.Certificate) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("LIFEBOAT_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("openssl is required (LIFEBOAT_REQUIRE_INTEGRATION=1): %v", err)
		}
		t.Skip("openssl not installed")
	}
	p := pki.Paths(dir)
	for _, tt := range []struct {
		cert *x509.Certificate
		ok   bool
	}{{revoked, false}, {valid, true}} {
		f := filepath.Join(t.TempDir(), "c.crt")
		os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tt.cert.Raw}), 0o644)
		out, err := exec.Command("openssl", "verify", "-crl_check", "-CAfile", p.CACert, "-CRLfile", p.CRL, f).CombinedOutput()
		if (err == nil) != tt.ok || !tt.ok && !strings.Contains(string(out), "revoked") {
			t.Errorf("openssl verify -crl_check of %s: %v\n%s", tt.cert.Subject.CommonName, err, out)
		}
	}
}

func readCRL(t *testing.T, path string, ca *x509.Certificate) *x509.RevocationList {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("%s: no PEM X509 CRL", path)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

func TestRevokeRefusals(t *testing.T) {
	_, dir := initCA(t)
	_, web := issue(t, dir, "web01", pki.RoleAgent, 0)
	issue(t, dir, "old", pki.RoleAgent, time.Nanosecond)
	revoke(t, dir, pki.Revocation{Name: "web01"})
	ca, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	server, _ := pki.ReadCertificate(pki.Paths(dir).ServerCert)
	before, _ := os.ReadFile(pki.Paths(dir).CRL)
	for _, tt := range []struct {
		name string
		r    pki.Revocation
		is   error
		want []string
	}{
		{"unknown name", pki.Revocation{Name: "web99"}, pki.ErrUnknown, []string{"web99", "lifeboat certs list --data-dir " + dir}},
		{"unknown serial", pki.Revocation{Serial: "abc"}, pki.ErrUnknown, []string{"serial abc", "lifeboat certs list"}},
		{"already revoked", pki.Revocation{Name: "web01"}, pki.ErrNothingToRevoke, []string{"revoked at", pki.SerialText(web.SerialNumber)}},
		{"revoked serial", pki.Revocation{Serial: pki.SerialText(web.SerialNumber)}, pki.ErrNothingToRevoke, []string{"revoked at"}},
		{"expired only", pki.Revocation{Name: "old"}, pki.ErrNothingToRevoke, []string{"expired"}},
		{"server", pki.Revocation{Serial: pki.SerialText(server.SerialNumber)}, pki.ErrNothingToRevoke, []string{"server certificate"}},
		{"bad serial", pki.Revocation{Serial: "nothex"}, pki.ErrSerial, nil},
		{"name and serial", pki.Revocation{Name: "web01", Serial: "abc"}, nil, []string{"not both"}},
		{"neither", pki.Revocation{}, nil, []string{"name or a serial"}},
		{"multi-line reason", pki.Revocation{Name: "admin", Reason: "a\nb"}, nil, []string{"one line"}},
	} {
		_, err := ca.Revoke(tt.r)
		if err == nil || tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.is)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want %q in it", tt.name, err, w)
			}
		}
	}
	if after, _ := os.ReadFile(pki.Paths(dir).CRL); !bytes.Equal(before, after) {
		t.Errorf("a refused revocation changed ca.crl")
	}
}

package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"lifeboat/pipeline/pki"
)

// initCA creates a CA in a new data directory.
func initCA(t *testing.T, hosts ...string) (*pki.CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	ca, err := pki.Init(dir, hosts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return ca, dir
}

func readFiles(t *testing.T, f pki.Files) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, p := range []string{f.CACert, f.CAKey, f.ServerCert, f.ServerKey, f.AdminCert, f.AdminKey} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = b
	}
	return out
}

func TestInitLoad(t *testing.T) {
	ca, dir := initCA(t, "backup.example.net", "10.1.2.3")
	loaded, err := pki.Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(loaded.Certificate().Raw, ca.Certificate().Raw) {
		t.Errorf("Load returned another CA certificate than Init")
	}
	c := loaded.Certificate()
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, KeyUsage %b", c.IsCA, c.KeyUsage)
	}
	if got, want := c.NotAfter.Sub(c.NotBefore), pki.DefaultCAValidity+time.Minute; got < want-2*time.Second || got > want+2*time.Second {
		t.Errorf("CA validity %v, want %v", got, want)
	}
	// The loaded CA can issue, and what it issues chains to the CA of Init.
	id, err := loaded.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	verifyFor(t, id, ca.Certificate(), x509.ExtKeyUsageClientAuth)

	p := pki.Paths(dir)
	server, err := pki.ReadCertificate(p.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range server.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, want := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if !slices.Contains(ips, want) {
			t.Errorf("server certificate IPs %v, want %s among them", ips, want)
		}
	}
	wantDNS := []string{"localhost", "backup.example.net"}
	if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, "_ ") {
		wantDNS = append(wantDNS, strings.ToLower(h))
	}
	for _, want := range wantDNS {
		if !slices.Contains(server.DNSNames, want) {
			t.Errorf("server certificate DNS names %v, want %s among them", server.DNSNames, want)
		}
	}
	if server.Subject.OrganizationalUnit[0] != "server" || !slices.Equal(server.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("server certificate OU %v, ExtKeyUsage %v", server.Subject.OrganizationalUnit, server.ExtKeyUsage)
	}
	admin, err := pki.ReadCertificate(p.AdminCert)
	if err != nil {
		t.Fatal(err)
	}
	if admin.Subject.CommonName != "admin" || admin.Subject.OrganizationalUnit[0] != "admin" ||
		!slices.Equal(admin.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("admin certificate %v, ExtKeyUsage %v", admin.Subject, admin.ExtKeyUsage)
	}
}

func TestInitTwiceRefuses(t *testing.T) {
	_, dir := initCA(t)
	p := pki.Paths(dir)
	before := readFiles(t, p)
	_, err := pki.Init(dir, []string{"other.example"})
	if !errors.Is(err, pki.ErrExists) || !strings.Contains(err.Error(), "lifeboat certs issue") {
		t.Fatalf("second Init: %v, want ErrExists that says how to issue", err)
	}
	after := readFiles(t, p)
	for path, b := range before {
		if !bytes.Equal(after[path], b) {
			t.Errorf("second Init changed %s", path)
		}
	}
	ents, _ := os.ReadDir(p.Dir)
	if len(ents) != 7 {
		t.Errorf("%s holds %d entries after a refused Init, want 7 (6 files and issued/, no temporary files)", p.Dir, len(ents))
	}
}

func TestInitRefusesLoneCAKey(t *testing.T) {
	_, dir := initCA(t)
	p := pki.Paths(dir)
	if err := os.Remove(p.CACert); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(p.CAKey)
	_, err := pki.Init(dir, nil)
	if !errors.Is(err, pki.ErrExists) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Init over a lone ca.key: %v, want ErrExists that explains it", err)
	}
	if now, _ := os.ReadFile(p.CAKey); !bytes.Equal(now, key) {
		t.Errorf("Init replaced a lone ca.key")
	}
	if _, err := pki.Load(dir); !errors.Is(err, pki.ErrNoCA) {
		t.Errorf("Load without ca.crt: %v, want ErrNoCA", err)
	}
}

func TestInitRejectsBadHost(t *testing.T) {
	dir := t.TempDir()
	for _, h := range []string{"host:9443", "", "bad_host", "-x.example", "https://x"} {
		if _, err := pki.Init(dir, []string{h}); !errors.Is(err, pki.ErrHost) {
			t.Errorf("Init(%q): %v, want ErrHost", h, err)
		}
	}
	if _, err := os.Stat(pki.Paths(dir).Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected Init created %s", pki.Paths(dir).Dir)
	}
}

func TestLoadNoCA(t *testing.T) {
	dir := t.TempDir()
	_, err := pki.Load(dir)
	if !errors.Is(err, pki.ErrNoCA) || !strings.Contains(err.Error(), "run 'lifeboat server init --data-dir "+dir+"' first") {
		t.Fatalf("Load of an empty directory: %v", err)
	}
}

func TestLoadMismatchedKey(t *testing.T) {
	_, dir := initCA(t)
	_, other := initCA(t)
	key, _ := os.ReadFile(pki.Paths(other).CAKey)
	if err := os.WriteFile(pki.Paths(dir).CAKey, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Load(dir); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Fatalf("Load with another CA's key: %v", err)
	}
}

func TestPermissions(t *testing.T) {
	_, dir := initCA(t)
	p := pki.Paths(dir)
	for _, f := range []string{p.CAKey, p.ServerKey, p.AdminKey} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	for _, d := range []string{dir, p.Dir} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", d, st.Mode().Perm())
		}
	}
}

func TestKeysArePKCS8P256(t *testing.T) {
	ca, dir := initCA(t)
	id, err := ca.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := os.ReadFile(pki.Paths(dir).CAKey)
	for name, data := range map[string][]byte{"ca.key": caKey, "issued": id.KeyPEM} {
		b, rest := pem.Decode(data)
		if b == nil || b.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("%s: want one PEM PRIVATE KEY block", name)
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if ek, ok := k.(*ecdsa.PrivateKey); !ok || ek.Curve != elliptic.P256() {
			t.Errorf("%s: %T, want an ECDSA P-256 key", name, k)
		}
	}
}

// verifyFor checks that id chains to ca for usage, and is its CN/OU.
func verifyFor(t *testing.T, id pki.Identity, ca *x509.Certificate, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	c, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Errorf("%s does not verify for %v: %v", c.Subject, usage, err)
	}
	if !bytes.Equal(id.CAPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})) {
		t.Errorf("Identity.CAPEM is not the issuing CA")
	}
	return c
}

func TestIssue(t *testing.T) {
	ca, _ := initCA(t)
	start := time.Now()
	agent, err := ca.Issue("web01", pki.RoleAgent, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := verifyFor(t, agent, ca.Certificate(), x509.ExtKeyUsageClientAuth)
	if c.Subject.CommonName != "web01" || !slices.Equal(c.Subject.OrganizationalUnit, []string{"agent"}) {
		t.Errorf("agent subject %v, want CN web01, OU agent", c.Subject)
	}
	if c.IsCA || len(c.DNSNames)+len(c.IPAddresses) != 0 {
		t.Errorf("agent certificate: IsCA %v, SANs %v %v", c.IsCA, c.DNSNames, c.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Errorf("an agent certificate verifies for ServerAuth")
	}
	if d := start.Add(-time.Minute).Sub(c.NotBefore); d < 0 || d > 2*time.Second {
		t.Errorf("NotBefore %v, want a minute before %v", c.NotBefore, start)
	}
	if d := c.NotAfter.Sub(start.Add(pki.DefaultValidity)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("NotAfter %v, want %v after %v", c.NotAfter, pki.DefaultValidity, start)
	}
	if c.SerialNumber.BitLen() < 100 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v has %d bits, want a random 128-bit number", c.SerialNumber, c.SerialNumber.BitLen())
	}
	again, _ := ca.Issue("web01", pki.RoleAgent, nil, 0)
	c2, _ := again.Certificate()
	if c2.SerialNumber.Cmp(c.SerialNumber) == 0 || bytes.Equal(again.KeyPEM, agent.KeyPEM) {
		t.Errorf("two certificates share a serial or a key")
	}

	server, err := ca.Issue("ps1", pki.RoleServer, []string{"ps1.example", "192.0.2.7"}, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := verifyFor(t, server, ca.Certificate(), x509.ExtKeyUsageServerAuth)
	for _, name := range []string{"ps1.example", "192.0.2.7"} {
		if err := s.VerifyHostname(name); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	if err := s.VerifyHostname("other.example"); err == nil {
		t.Errorf("server certificate verifies for a host it was not issued for")
	}
	if got := s.NotAfter.Sub(s.NotBefore); got < 48*time.Hour || got > 48*time.Hour+time.Minute+2*time.Second {
		t.Errorf("server validity %v, want 48h (and the minute of skew)", got)
	}

	// Never past the CA's own expiry.
	long, err := ca.Issue("web02", pki.RoleAgent, nil, 50*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := long.Certificate(); !l.NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Errorf("50-year certificate ends %v, want the CA's end %v", l.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestIssueRejects(t *testing.T) {
	ca, _ := initCA(t)
	tests := []struct {
		name     string
		role     pki.Role
		hosts    []string
		validity time.Duration
		want     error
	}{
		{"web01", "operator", nil, 0, pki.ErrRole},
		{"web01", "", nil, 0, pki.ErrRole},
		{"", pki.RoleAgent, nil, 0, pki.ErrName},
		{"../etc", pki.RoleAgent, nil, 0, pki.ErrName},
		{"a/b", pki.RoleAgent, nil, 0, pki.ErrName},
		{".hidden", pki.RoleAgent, nil, 0, pki.ErrName},
		{strings.Repeat("x", 65), pki.RoleAgent, nil, 0, pki.ErrName},
		{"web01", pki.RoleAgent, []string{"web01.example"}, 0, pki.ErrHost},
		{"ps1", pki.RoleServer, nil, 0, pki.ErrHost},
		{"ps1", pki.RoleServer, []string{"ps1:9443"}, 0, pki.ErrHost},
		{"web01", pki.RoleAgent, nil, -time.Hour, nil},
	}
	for _, tt := range tests {
		_, err := ca.Issue(tt.name, tt.role, tt.hosts, tt.validity)
		if err == nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("Issue(%q, %q, %q, %v) = %v, want %v", tt.name, tt.role, tt.hosts, tt.validity, err, tt.want)
		}
	}
	if _, err := ca.Issue("web-01.site_a", pki.RoleAgent, nil, 0); err != nil {
		t.Errorf("Issue with dots, dashes and underscores: %v", err)
	}
	if _, err := ca.Issue("ps1", pki.RoleServer, []string{"*.example", "::1", "2001:db8::1"}, 0); err != nil {
		t.Errorf("Issue with a wildcard and IPv6: %v", err)
	}
}

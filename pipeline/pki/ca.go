package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"time"
)

// CA is the site's certificate authority: its certificate and private key.
// A CA from Init or Load belongs to a data directory, where it records every
// certificate it issues (see Issue) and keeps its revocation list (Revoke).
// It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	dataDir string // "" for a CA not (yet) stored: it records nothing
}

// Certificate returns the CA certificate. The caller must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Init creates the site CA and the server's identities under DATA_DIR/pki
// (see Paths): ca.crt and ca.key; server.crt and server.key for 127.0.0.1,
// ::1, localhost, os.Hostname() and the given hosts (DNS names or IP
// addresses); admin.crt and admin.key, a client identity with RoleAdmin.
// Both certificates are recorded in the registry (issued/).
//
// Init never overwrites a CA, because every agent trusts it: if ca.crt or
// ca.key exists it returns an error wrapping ErrExists and changes nothing.
// ca.key is written first (exclusively, so that of two concurrent Inits only
// one proceeds) and ca.crt last: a DATA_DIR/pki without ca.crt holds no CA
// that anybody trusts, and an interrupted Init is repaired by removing it.
func Init(dataDir string, hosts []string) (*CA, error) {
	p := Paths(dataDir)
	if _, _, err := splitHosts(hosts); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := refuseExistingCA(p, dataDir); err != nil {
		return nil, err
	}
	all := append([]string{"127.0.0.1", "::1", "localhost"}, hosts...)
	if h, err := os.Hostname(); err == nil && validDNSName(h) {
		all = append(all, h)
	}
	ca, caKeyPEM, err := newCA(time.Now())
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue("server", RoleServer, all, DefaultValidity)
	if err != nil {
		return nil, err
	}
	admin, err := ca.Issue("admin", RoleAdmin, nil, DefaultValidity)
	if err != nil {
		return nil, err
	}
	if err := mkdirPrivate(p.Dir); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := os.Chmod(p.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := writeFile(p.CAKey, caKeyPEM, 0o600, true); err != nil {
		if errors.Is(err, ErrExists) {
			return nil, existsError(p, dataDir)
		}
		return nil, fmt.Errorf("init CA: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{p.ServerKey, server.KeyPEM, 0o600}, {p.ServerCert, server.CertPEM, 0o644},
		{p.AdminKey, admin.KeyPEM, 0o600}, {p.AdminCert, admin.CertPEM, 0o644},
	} {
		// Leftovers of an interrupted Init belong to a CA nobody trusts.
		if err := writeFile(f.path, f.data, f.perm, false); err != nil {
			return nil, fmt.Errorf("init CA: %w", err)
		}
	}
	for _, id := range []Identity{server, admin} {
		if err := recordIssued(p.Issued, id.CertPEM); err != nil {
			return nil, fmt.Errorf("init CA: %w", err)
		}
	}
	if err := writeFile(p.CACert, ca.certPEM, 0o644, true); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	ca.dataDir = dataDir
	return ca, nil
}

// refuseExistingCA returns an ErrExists error if DATA_DIR/pki holds a CA
// or the key of one.
func refuseExistingCA(p Files, dataDir string) error {
	for _, f := range []string{p.CACert, p.CAKey} {
		if _, err := os.Lstat(f); err == nil {
			return existsError(p, dataDir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("init CA: %w", err)
		}
	}
	return nil
}

func existsError(p Files, dataDir string) error {
	if _, err := os.Lstat(p.CACert); err != nil {
		return fmt.Errorf("%s %w without %s: an earlier init was interrupted, or ca.crt was removed; "+
			"if no agent trusts this CA, remove %s and run init again, otherwise restore ca.crt from an agent",
			p.CAKey, ErrExists, p.CACert, p.Dir)
	}
	return fmt.Errorf("a CA %w in %s; it is never overwritten, because every agent trusts it: "+
		"issue certificates from it with 'lifeboat certs issue --data-dir %s --name NAME --out DIR'",
		ErrExists, p.Dir, dataDir)
}

// newCA generates a CA valid for DefaultCAValidity from now, and returns
// it with its key in PEM.
func newCA(now time.Time) (*CA, []byte, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         fmt.Sprintf("Lifeboat site CA %s %s", host, now.UTC().Format("2006-01-02T15:04:05Z")),
			Organization:       []string{"Lifeboat"},
			OrganizationalUnit: []string{"ca"},
		},
		NotBefore:             now.Add(-notBeforeSkew),
		NotAfter:              now.Add(DefaultCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return &CA{cert: cert, certPEM: pemCert(der), key: key}, keyPEM, nil
}

// Load reads the CA that Init created in dataDir. Without one it returns
// an error wrapping ErrNoCA that says to run 'lifeboat server init'.
func Load(dataDir string) (*CA, error) {
	p := Paths(dataDir)
	certPEM, err := os.ReadFile(p.CACert)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s (no %s): run 'lifeboat server init --data-dir %s' first",
			ErrNoCA, p.Dir, caCertName, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := parseCertPEM(certPEM, p.CACert)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", p.CACert)
	}
	keyPEM, err := os.ReadFile(p.CAKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w key: %s is missing; certificates can only be issued where it is (the server that ran init)",
			ErrNoCA, p.CAKey)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := parseKeyPEM(keyPEM, p.CAKey)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s is not the key of %s", p.CAKey, p.CACert)
	}
	return &CA{cert: cert, certPEM: pemCert(cert.Raw), key: key, dataDir: dataDir}, nil
}

// Issue creates a certificate for name (its CN) and role (its OU), signed
// by the CA, with a new P-256 key and a random 128-bit serial. It is valid
// from a minute ago (clock skew) for validity (0 means DefaultValidity),
// but never past the CA's own expiry.
//
// A RoleServer certificate is for ServerAuth and needs hosts (DNS names or
// IP addresses, its SANs); agent and admin certificates are for ClientAuth
// and take no hosts.
//
// A CA from Init or Load records the certificate (never the key) in the
// registry, DATA_DIR/pki/issued/SERIAL.crt, durably before it returns: a
// certificate that could not be recorded is not handed out, because it
// could not be listed or revoked by name.
func (ca *CA) Issue(name string, role Role, hosts []string, validity time.Duration) (Identity, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return Identity{}, err
	}
	id, err := ca.IssueKey(name, role, hosts, validity, key.Public())
	if err != nil {
		return Identity{}, err
	}
	id.KeyPEM = keyPEM
	return id, nil
}

// IssueKey is Issue for a public key the holder generated and keeps (a
// registration's certificate signing request): the returned Identity has
// no KeyPEM.
func (ca *CA) IssueKey(name string, role Role, hosts []string, validity time.Duration, pub crypto.PublicKey) (Identity, error) {
	if err := checkName(name); err != nil {
		return Identity{}, fmt.Errorf("issue certificate: %w", err)
	}
	if !role.Valid() {
		return Identity{}, fmt.Errorf("issue certificate for %s: %w (got %q)", name, ErrRole, role)
	}
	if validity < 0 {
		return Identity{}, fmt.Errorf("issue certificate for %s: validity %v is negative", name, validity)
	}
	if validity == 0 {
		validity = DefaultValidity
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			CommonName:         name,
			Organization:       []string{"Lifeboat"},
			OrganizationalUnit: []string{string(role)},
		},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	switch role {
	case RoleServer:
		if len(hosts) == 0 {
			return Identity{}, fmt.Errorf("issue server certificate for %s: give the host names or IP addresses clients connect to: %w",
				name, ErrHost)
		}
		ips, dns, err := splitHosts(hosts)
		if err != nil {
			return Identity{}, fmt.Errorf("issue server certificate for %s: %w", name, err)
		}
		tmpl.IPAddresses, tmpl.DNSNames = ips, dns
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		if len(hosts) > 0 {
			return Identity{}, fmt.Errorf("issue %s certificate for %s: hosts %q are only for server certificates: %w",
				role, name, hosts, ErrHost)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-notBeforeSkew)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	if tmpl.NotBefore.Before(ca.cert.NotBefore) {
		tmpl.NotBefore = ca.cert.NotBefore
	}
	serial, err := newSerial()
	if err != nil {
		return Identity{}, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return Identity{}, fmt.Errorf("issue certificate for %s: %w", name, err)
	}
	if ca.dataDir != "" {
		if err := recordIssued(Paths(ca.dataDir).Issued, pemCert(der)); err != nil {
			return Identity{}, fmt.Errorf("issue certificate for %s: %w", name, err)
		}
	}
	return Identity{CertPEM: pemCert(der), CAPEM: append([]byte(nil), ca.certPEM...)}, nil
}

// newKey generates a P-256 key and returns it with its PKCS#8 PEM.
func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// newSerial returns a random serial number in [1, 2^128).
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

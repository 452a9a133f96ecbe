package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Status is what an issued certificate is good for today.
type Status string

// Statuses of an issued certificate.
const (
	StatusValid   Status = "valid"
	StatusExpired Status = "expired"
	StatusRevoked Status = "revoked" // whether or not it has expired since
)

// IssuedCert is a certificate of the registry (DATA_DIR/pki/issued) with
// its status: revoked if ca.crl lists it, else expired or valid.
type IssuedCert struct {
	Holder    string     `json:"holder"` // the subject's CN
	Role      Role       `json:"role"`   // the subject's OU
	Serial    string     `json:"serial"` // lower-case hexadecimal, as SerialText
	ValidFrom time.Time  `json:"valid_from"`
	ExpiresAt time.Time  `json:"expires_at"`
	Status    Status     `json:"status"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Reason    string     `json:"reason,omitempty"` // given to certs revoke, if any
}

// SerialText formats a serial number as the registry names it: lower-case
// hexadecimal without leading zeros, as `lifeboat certs issue` prints it.
func SerialText(n *big.Int) string { return n.Text(16) }

// ParseSerial reads a serial number in hexadecimal, with or without a 0x
// prefix and colons between bytes (as openssl prints it).
func ParseSerial(s string) (*big.Int, error) {
	t := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x"), ":", "")
	n, ok := new(big.Int).SetString(t, 16)
	if t == "" || !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("%w (got %q)", ErrSerial, s)
	}
	return n, nil
}

// recordIssued adds a certificate to the registry dir (created 0700 if
// missing) as SERIAL.crt, durably. A serial is recorded once: an existing
// file is an error wrapping ErrExists.
func recordIssued(dir string, certPEM []byte) error {
	c, err := parseCertPEM(certPEM, "issued certificate")
	if err != nil {
		return err
	}
	if err := mkdirPrivate(dir); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	if err := writeFile(filepath.Join(dir, SerialText(c.SerialNumber)+".crt"), certPEM, 0o644, true); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	return nil
}

// Issued lists the certificates the CA of dataDir issued, by holder, then
// oldest first, each with its status at now. It needs only ca.crt, the
// registry and ca.crl (not the CA key), so it also runs on a scale-out
// process server with a copy of DATA_DIR/pki. A ca.crl or a registry file
// that the CA did not sign is an error that names the file.
func Issued(dataDir string, now time.Time) ([]IssuedCert, error) {
	p := Paths(dataDir)
	ca, err := ReadCertificate(p.CACert)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s (no %s): run 'lifeboat server init --data-dir %s' first",
			ErrNoCA, p.Dir, caCertName, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	certs, _, err := issued(p, ca, now)
	return certs, err
}

// issued reads the registry and the CRL of p, checking both against ca,
// and returns the certificates with the CRL they were judged by (nil when
// there is no ca.crl).
func issued(p Files, ca *x509.Certificate, now time.Time) ([]IssuedCert, *x509.RevocationList, error) {
	crl, err := readCRL(p.CRL, ca)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("list certificates: %w; restore %s from a backup or from a process server's copy of %s",
			err, filepath.Base(p.CRL), p.Dir)
	}
	revoked := revokedSet(crl)
	entries, err := os.ReadDir(p.Issued)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("list certificates: %w", err)
	}
	var out []IssuedCert
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".crt") {
			continue // temporary files of an interrupted write, reasons
		}
		path := filepath.Join(p.Issued, name)
		c, err := ReadCertificate(path)
		if err != nil {
			return nil, nil, fmt.Errorf("list certificates: %w", err)
		}
		if err := c.CheckSignatureFrom(ca); err != nil {
			return nil, nil, fmt.Errorf("list certificates: %s was not issued by the CA in %s (%v): move it out of %s",
				path, p.CACert, err, p.Issued)
		}
		out = append(out, issuedCert(c, revoked, p.Issued, now))
	}
	slices.SortFunc(out, func(a, b IssuedCert) int {
		if a.Holder != b.Holder {
			return strings.Compare(a.Holder, b.Holder)
		}
		return a.ValidFrom.Compare(b.ValidFrom)
	})
	return out, crl, nil
}

// issuedCert describes c; revoked maps serials to revocation times.
func issuedCert(c *x509.Certificate, revoked map[string]time.Time, dir string, now time.Time) IssuedCert {
	ic := IssuedCert{Holder: c.Subject.CommonName, Serial: SerialText(c.SerialNumber),
		ValidFrom: c.NotBefore.UTC(), ExpiresAt: c.NotAfter.UTC(), Status: StatusValid}
	if ou := c.Subject.OrganizationalUnit; len(ou) > 0 {
		ic.Role = Role(ou[0])
	}
	if at, ok := revoked[ic.Serial]; ok {
		at = at.UTC()
		ic.Status, ic.RevokedAt = StatusRevoked, &at
		if b, err := os.ReadFile(filepath.Join(dir, ic.Serial+".reason")); err == nil {
			ic.Reason = strings.TrimSpace(string(b))
		}
	} else if now.After(c.NotAfter) {
		ic.Status = StatusExpired
	}
	return ic
}

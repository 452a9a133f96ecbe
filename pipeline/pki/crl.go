package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lifeboat/internal/dirlock"
)

// maxReasonLen bounds the reason text kept with a revocation.
const maxReasonLen = 1024

// Revocation says which certificates CA.Revoke revokes: with Name, every
// client certificate (agent or admin) of that holder that is neither
// expired nor revoked; with Serial (hexadecimal), exactly that one. Give
// one of the two. Reason is kept in the registry and shown by Issued.
type Revocation struct {
	Name   string
	Serial string
	Reason string
}

// Revoke adds the certificates r selects to the CA's revocation list,
// DATA_DIR/pki/ca.crl, and returns them. The list is a standard X.509 CRL
// signed by the CA (PEM "X509 CRL"), rewritten whole and atomically with
// every earlier entry kept and its number incremented; it is the one record
// of what is revoked, so what Issued shows is what the servers refuse.
// Servers built on ServerTLS pick it up at their next handshake or request.
//
// A name or serial the registry does not know is an error wrapping
// ErrUnknown; certificates that are all revoked or expired already, or a
// server certificate (no server checks a CRL for those; they cannot
// authenticate a client), an error wrapping ErrNothingToRevoke. Two
// Revokes at once are refused rather than one losing the other's entry.
func (ca *CA) Revoke(r Revocation) ([]IssuedCert, error) {
	if ca.dataDir == "" {
		return nil, errors.New("revoke: the CA was not loaded from a data directory (use Load)")
	}
	if (r.Name == "") == (r.Serial == "") {
		return nil, errors.New("revoke: give the holder's name or a serial number, not both")
	}
	r.Reason = strings.TrimSpace(r.Reason)
	if len(r.Reason) > maxReasonLen || strings.ContainsAny(r.Reason, "\n\r") {
		return nil, fmt.Errorf("revoke: the reason must be one line of at most %d bytes", maxReasonLen)
	}
	p := Paths(ca.dataDir)
	unlock, err := dirlock.Lock(filepath.Join(p.Dir, "revoke.lock"))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("revoke: another 'lifeboat certs revoke' is running on %s (%v); try again when it is done", p.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	defer unlock()
	now := time.Now()
	all, crl, err := issued(p, ca.cert, now)
	if err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	picked, err := pickRevocations(all, r, ca.dataDir)
	if err != nil {
		return nil, err
	}
	// Reasons first: one without a CRL entry (a crash in between) is
	// never shown, and the next revocation of that serial replaces it.
	for _, c := range picked {
		path := filepath.Join(p.Issued, c.Serial+".reason")
		if r.Reason == "" {
			err = os.Remove(path)
			if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		} else {
			err = writeFile(path, []byte(r.Reason+"\n"), 0o644, false)
		}
		if err != nil {
			return nil, fmt.Errorf("revoke: %w", err)
		}
	}
	if err := ca.writeCRL(p.CRL, crl, picked, now); err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	at := now.UTC()
	for i := range picked {
		picked[i].Status, picked[i].RevokedAt, picked[i].Reason = StatusRevoked, &at, r.Reason
	}
	return picked, nil
}

// pickRevocations returns the certificates of all that r revokes.
func pickRevocations(all []IssuedCert, r Revocation, dataDir string) ([]IssuedCert, error) {
	what, match := "holder "+r.Name, func(c IssuedCert) bool { return c.Holder == r.Name }
	if r.Serial != "" {
		n, err := ParseSerial(r.Serial)
		if err != nil {
			return nil, fmt.Errorf("revoke: %w", err)
		}
		what, match = "serial "+SerialText(n), func(c IssuedCert) bool { return c.Serial == SerialText(n) }
	}
	list := fmt.Sprintf("'lifeboat certs list --data-dir %s'", dataDir)
	var found, picked []IssuedCert
	for _, c := range all {
		if !match(c) {
			continue
		}
		found = append(found, c)
		if c.Role != RoleServer && (c.Status == StatusValid || r.Serial != "" && c.Status == StatusExpired) {
			picked = append(picked, c)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("revoke: %w with %s in %s: %s shows the holders and serials",
			ErrUnknown, what, filepath.Join(dataDir, "pki", "issued"), list)
	case len(picked) == 0:
		var states []string
		for _, c := range found {
			s := string(c.Status)
			if c.RevokedAt != nil {
				s += " at " + c.RevokedAt.Format(time.RFC3339)
			}
			if c.Role == RoleServer {
				s = "a server certificate (servers present it; it cannot authenticate a client, so no server checks it against the CRL)"
			}
			states = append(states, fmt.Sprintf("serial %s: %s", c.Serial, s))
		}
		return nil, fmt.Errorf("revoke: %w for %s: %s; see %s", ErrNothingToRevoke, what, strings.Join(states, "; "), list)
	}
	return picked, nil
}

// writeCRL writes the CRL old (nil: none yet) with add revoked at now,
// signed by the CA, atomically to path.
func (ca *CA) writeCRL(path string, old *x509.RevocationList, add []IssuedCert, now time.Time) error {
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now,
		// No CRL is scheduled: a new one is written at each revocation.
		NextUpdate: ca.cert.NotAfter}
	if !tmpl.NextUpdate.After(now) {
		tmpl.NextUpdate = now.Add(DefaultValidity)
	}
	if old != nil {
		tmpl.RevokedCertificateEntries = old.RevokedCertificateEntries
		if old.Number != nil {
			tmpl.Number = new(big.Int).Add(old.Number, big.NewInt(1))
		}
	}
	for _, c := range add {
		n, err := ParseSerial(c.Serial)
		if err != nil {
			return err
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: n, RevocationTime: now.UTC()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		return fmt.Errorf("sign the revocation list: %w", err)
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644, false)
}

// readCRL reads a PEM "X509 CRL" file and checks that ca signed it. A
// missing file is an error wrapping fs.ErrNotExist.
func readCRL(path string, ca *x509.Certificate) (*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseCRL(data, path, ca)
}

// parseCRL parses the PEM "X509 CRL" data read from path and checks that
// ca signed it.
func parseCRL(data []byte, path string, ca *x509.Certificate) (*x509.RevocationList, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "X509 CRL" {
		return nil, fmt.Errorf("%s: no PEM X509 CRL in it", path)
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("%s is not signed by the site CA %q: %w", path, ca.Subject.CommonName, err)
	}
	return crl, nil
}

// revokedSet maps the serials (SerialText) of crl to their revocation
// times; a nil crl revokes nothing.
func revokedSet(crl *x509.RevocationList) map[string]time.Time {
	set := map[string]time.Time{}
	if crl != nil {
		for _, e := range crl.RevokedCertificateEntries {
			set[SerialText(e.SerialNumber)] = e.RevocationTime
		}
	}
	return set
}

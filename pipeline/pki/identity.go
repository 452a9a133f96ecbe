package pki

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Identity is an issued certificate with its private key and the
// certificate of the CA that issued it, all PEM: what a peer needs to
// authenticate itself and to verify the other side.
type Identity struct {
	CertPEM []byte // "CERTIFICATE"
	KeyPEM  []byte // "PRIVATE KEY" (PKCS#8)
	CAPEM   []byte // "CERTIFICATE" of the issuing CA
}

// Certificate parses the identity's certificate.
func (id Identity) Certificate() (*x509.Certificate, error) {
	return parseCertPEM(id.CertPEM, "identity certificate")
}

// Write stores the identity as dir/NAME.crt, dir/NAME.key (0600) and
// dir/ca.crt, creating dir (0700) if needed, each file atomically.
//
// It never overwrites a key: if dir/NAME.key exists it returns an error
// wrapping ErrExists and writes nothing. It refuses a dir/ca.crt of another
// CA, which other identities in dir may rely on. NAME must be a valid name
// other than "ca".
func (id Identity) Write(dir, name string) error {
	if _, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM); err != nil {
		return fmt.Errorf("write identity %s: certificate and key do not belong together: %w", name, err)
	}
	caCert, err := parseCertPEM(id.CAPEM, "identity CA certificate")
	if err != nil {
		return fmt.Errorf("write identity %s: %w", name, err)
	}
	writeCA, err := checkWrite(dir, name, caCert)
	if err != nil {
		return err
	}
	certPath, keyPath, caPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, caCertName)
	if err := mkdirPrivate(dir); err != nil {
		return fmt.Errorf("write identity %s: %w", name, err)
	}
	if err := writeFile(keyPath, id.KeyPEM, 0o600, true); err != nil {
		if errors.Is(err, ErrExists) {
			return fmt.Errorf("write identity %s: %w; a key is never overwritten: remove it first if its certificate is no longer used, or write to another directory",
				name, err)
		}
		return fmt.Errorf("write identity %s: %w", name, err)
	}
	if err := writeFile(certPath, id.CertPEM, 0o644, false); err != nil {
		return fmt.Errorf("write identity %s: %w", name, err)
	}
	if writeCA {
		if err := writeFile(caPath, id.CAPEM, 0o644, false); err != nil {
			return fmt.Errorf("write identity %s: %w", name, err)
		}
	}
	return nil
}

// CheckWrite returns the error Write(dir, name) of an identity issued by
// ca would fail with for its name or its files (an invalid name, an
// existing NAME.key, a ca.crt of another CA), without writing anything.
// Check before issuing, so that no certificate is issued, and recorded,
// for files that cannot be written.
func CheckWrite(dir, name string, ca *x509.Certificate) error {
	_, err := checkWrite(dir, name, ca)
	return err
}

// checkWrite is CheckWrite; writeCA says that dir has no ca.crt yet.
func checkWrite(dir, name string, caCert *x509.Certificate) (writeCA bool, err error) {
	if err := checkName(name); err != nil {
		return false, fmt.Errorf("write identity: %w", err)
	}
	if name == "ca" {
		return false, fmt.Errorf("write identity: %w: %q is reserved for the CA certificate ca.crt", ErrName, name)
	}
	keyPath, caPath := filepath.Join(dir, name+".key"), filepath.Join(dir, caCertName)
	if _, err := os.Lstat(keyPath); err == nil {
		return false, fmt.Errorf("write identity %s: %s %w; a key is never overwritten: remove it first if its certificate is no longer used, or write to another directory",
			name, keyPath, ErrExists)
	}
	old, err := ReadCertificate(caPath)
	switch {
	case err == nil && !bytes.Equal(old.Raw, caCert.Raw):
		return false, fmt.Errorf("write identity %s: %s is the certificate of another CA (%q); write to another directory",
			name, caPath, old.Subject.CommonName)
	case err == nil:
		return false, nil
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	default:
		return false, fmt.Errorf("write identity %s: %w", name, err)
	}
}

// ReadCertificate reads the first certificate of a PEM file.
func ReadCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseCertPEM(data, path)
}

// parseCertPEM parses the first "CERTIFICATE" block of data; what names
// the source in errors.
func parseCertPEM(data []byte, what string) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no PEM CERTIFICATE in it", what)
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			return c, nil
		}
	}
}

// parseKeyPEM parses a "PRIVATE KEY" (PKCS#8) block; what names the
// source in errors.
func parseKeyPEM(data []byte, what string) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM PRIVATE KEY (PKCS#8) in it", what)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: a %T cannot sign", what, k)
	}
	return s, nil
}

// mkdirPrivate creates dir and its missing parents with mode 0700.
func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	return nil
}

// writeFile writes data to path atomically: a temporary file in the same
// directory, fsynced, then renamed over path (or, when exclusive, linked to
// path, failing with ErrExists if it exists), then the directory fsynced.
func writeFile(path string, data []byte, perm os.FileMode, exclusive bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if exclusive {
		if err := publishExclusive(tmp, path); err != nil {
			return err
		}
	} else if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

// publishExclusive moves tmp to path unless path exists. A hard link is
// atomic; on a file system without hard links it falls back to a check
// and a rename.
func publishExclusive(tmp, path string) error {
	err := os.Link(tmp, path)
	if err == nil {
		return os.Remove(tmp)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s %w", path, ErrExists)
	}
	if _, serr := os.Lstat(path); serr == nil {
		return fmt.Errorf("%s %w", path, ErrExists)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// syncDir makes the directory entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

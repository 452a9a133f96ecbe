package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// revocations is a server's view of ca.crl: the serials of the last good
// CRL it read, re-read when the file changes. ServerTLS installs its
// verifyConnection as the tls.Config's VerifyConnection.
//
// Checking the file's identity (device, inode, size, modification time)
// on every handshake costs one stat and picks up a revocation at once:
// CA.Revoke replaces the file by a rename. A file rewritten in place within
// one tick of the file system's clock (or a new one that got the inode
// number back) can keep its stamp, so while the stamp is younger than
// racyWindow before the last read the contents are compared as well (git's
// "racily clean" rule); after that a stat is proof enough.
//
// A CRL that cannot be read or is not signed by the CA is logged once (per
// change of the file) and the last good one stays in force; a ca.crl that
// disappears after it was read keeps its revocations too.
type revocations struct {
	path string
	ca   *x509.Certificate
	log  func() *slog.Logger

	mu      sync.Mutex
	seen    fileStamp            // of the file last read, good or bad
	raw     []byte               // what was read then
	readAt  time.Time            // when it was read (or compared) last
	lastErr string               // the last refresh error logged
	revoked map[string]time.Time // serial (SerialText) -> revoked at, of the last good CRL
}

// racyWindow is how long after its modification time a file's stamp is
// not trusted alone: more than the coarsest file system clock tick.
const racyWindow = 2 * time.Second

// fileStamp identifies a version of a file; the zero value is "no file".
type fileStamp struct {
	dev, ino    uint64
	size, mtime int64
}

func stampOf(fi os.FileInfo) fileStamp {
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino = uint64(sys.Dev), sys.Ino
	}
	if st == (fileStamp{}) {
		st.mtime = 1 // an empty file from 1970 is still a file
	}
	return st
}

// newRevocations reads ca.crl at path, if there is one; a CRL that is
// there but cannot be read or verified is an error (a server must not
// start without the revocations it is meant to enforce).
func newRevocations(path string, ca *x509.Certificate) (*revocations, error) {
	r := &revocations{path: path, ca: ca, log: slog.Default, revoked: map[string]time.Time{}}
	if err := r.refresh(); err != nil {
		return nil, fmt.Errorf("%w; a server does not start without the revocations it must enforce: "+
			"restore ca.crl from the server that holds the CA key (DATA_DIR/pki/ca.crl) or from a backup", err)
	}
	return r, nil
}

// refresh re-reads the CRL if the file changed since it was last read.
// On an error the last good CRL stays. r.mu must be held (or r unshared).
func (r *revocations) refresh() error {
	var st fileStamp
	fi, err := os.Stat(r.path)
	switch {
	case err == nil:
		st = stampOf(fi)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("revocation list: %w", err)
	}
	if st == r.seen && (st == fileStamp{} || time.Unix(0, st.mtime).Before(r.readAt.Add(-racyWindow))) {
		return nil
	}
	if st == (fileStamp{}) {
		r.seen, r.raw = st, nil
		return fmt.Errorf("revocation list %s was removed", r.path)
	}
	// Stamped before the read: a file replaced in between is read again.
	readAt := time.Now()
	data, err := os.ReadFile(r.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // replaced or removed meanwhile: the next stat says which
	}
	if err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	same := st == r.seen && bytes.Equal(data, r.raw)
	r.seen, r.raw, r.readAt = st, data, readAt
	if same {
		return nil
	}
	crl, err := parseCRL(data, r.path, r.ca)
	if err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	r.revoked = revokedSet(crl)
	return nil
}

// verifyConnection refuses a client whose certificate the CRL lists. Go
// calls it on every handshake, resumed TLS 1.3 sessions included, and
// pipeline.Server calls it again on every request of a connection.
func (r *revocations) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // no client certificate: ClientAuth decides
	}
	leaf := cs.PeerCertificates[0]
	serial := SerialText(leaf.SerialNumber)
	r.mu.Lock()
	if err := r.refresh(); err != nil {
		if err.Error() != r.lastErr {
			r.log().Error("certificate revocation list not reloaded; the revocations read before stay in force: "+
				"copy ca.crl again from the server that holds the CA key (DATA_DIR/pki/ca.crl)",
				"file", r.path, "revoked", len(r.revoked), "err", err)
		}
		r.lastErr = err.Error()
	} else {
		r.lastErr = ""
	}
	at, revoked := r.revoked[serial]
	r.mu.Unlock()
	if !revoked {
		return nil
	}
	role := "no role"
	if ou := leaf.Subject.OrganizationalUnit; len(ou) > 0 {
		role = ou[0]
	}
	return fmt.Errorf("%w: the certificate of %s (role %s, serial %s) was revoked at %s; "+
		"if it should connect again, issue it a new one with 'lifeboat certs issue --name %s'",
		ErrRevoked, leaf.Subject.CommonName, role, serial, at.UTC().Format(time.RFC3339), leaf.Subject.CommonName)
}

package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// ServerTLS returns the TLS configuration of a server of the site: TLS 1.3
// only, the server certificate of dataDir (server.crt, server.key), and
// client certificates required and verified against the site CA (ca.crt).
// Use Peer on a connection's state to learn who the client is.
//
// Client certificates that the CA revoked (ca.crl, see CA.Revoke) are
// refused by the configuration's VerifyConnection, which Go calls on every
// handshake, resumed TLS 1.3 sessions included; its error wraps ErrRevoked
// and names the holder, role and serial. It notices a new ca.crl at the
// next handshake (one stat per handshake; no restart, no signal). A server
// that keeps connections open calls VerifyConnection again on each request
// (pipeline.Server does). A ca.crl that is there but cannot be read or is
// not signed by the CA is an error here; later, one is logged and the last
// good list stays in force.
//
// It checks up front that the server certificate was issued by the CA and
// has not expired, so that a server does not start with an identity no
// agent will accept. The CA key is not needed.
func ServerTLS(dataDir string) (*tls.Config, error) {
	return serverTLS(Paths(dataDir), dataDir)
}

// ServerTLSFiles is ServerTLS with the server certificate, its key and the
// CA certificate in files of the admin's choice (a master target's, issued
// by the site's CA); the revocation list is ca.crl beside caFile.
func ServerTLSFiles(certFile, keyFile, caFile string) (*tls.Config, error) {
	dir := filepath.Dir(caFile)
	return serverTLS(Files{Dir: dir, CACert: caFile, ServerCert: certFile, ServerKey: keyFile, CRL: filepath.Join(dir, "ca.crl")}, filepath.Dir(dir))
}

func serverTLS(p Files, dataDir string) (*tls.Config, error) {
	pool, err := readPool(p.CACert)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("server TLS: %w in %s: run 'lifeboat server init --data-dir %s' first", ErrNoCA, p.Dir, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	caCert, err := ReadCertificate(p.CACert)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	revs, err := newRevocations(p.CRL, caCert)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	pair, err := readPair(p.ServerCert, p.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	leaf := pair.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("server TLS: %s (valid until %s) is not a valid server certificate of the CA in %s: %w; "+
			"move server.crt and server.key away and issue new ones with "+
			"'lifeboat certs issue --data-dir %s --role server --name server --host HOST --out %s'",
			p.ServerCert, leaf.NotAfter.Format(time.DateOnly), p.CACert, err, dataDir, p.Dir)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		VerifyConnection: revs.verifyConnection,
	}, nil
}

// ClientTLS returns the TLS configuration of an agent or admin client:
// TLS 1.3 only, the client certificate certFile with its key keyFile, and
// servers verified against the site CA in caFile (the server name is
// checked against the address dialled).
//
// It checks up front that the files exist, that the key belongs to the
// certificate, that the certificate is a client certificate issued by that
// CA, and that it has not expired, and says which of these is wrong.
// It does not reject a certificate that is not valid yet by the local
// clock: the server's clock decides that.
func ClientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	pool, err := readPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w; copy ca.crt from the server's DATA_DIR/pki", err)
	}
	pair, err := readPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	leaf := pair.Leaf
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: leaf.NotBefore,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, fmt.Errorf("client TLS: %s is not a client certificate issued by the CA in %s: %w; "+
			"issue one with 'lifeboat certs issue --name NAME' on the server", certFile, caFile, err)
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("client TLS: %s expired on %s; issue a new one with 'lifeboat certs issue --name %s' on the server",
			certFile, leaf.NotAfter.Format(time.RFC3339), leaf.Subject.CommonName)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
	}, nil
}

// Peer returns the name and role of the other side of a connection from
// its verified certificate (CN and OU). On a server configured by
// ServerTLS that is the authenticated client; a connection without a
// verified certificate is an error.
func Peer(cs tls.ConnectionState) (name string, role Role, err error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", "", errors.New("peer: no verified certificate on the connection (is the server configured by pki.ServerTLS?)")
	}
	leaf := cs.VerifiedChains[0][0]
	name = leaf.Subject.CommonName
	if err := checkName(name); err != nil {
		return "", "", fmt.Errorf("peer: %w", err)
	}
	if ou := leaf.Subject.OrganizationalUnit; len(ou) != 1 || !Role(ou[0]).Valid() {
		return "", "", fmt.Errorf("peer %s: %w (OU %q)", name, ErrRole, ou)
	}
	return name, Role(leaf.Subject.OrganizationalUnit[0]), nil
}

// readPool reads a PEM file of CA certificates.
func readPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA certificate %s: no PEM CERTIFICATE in it", caFile)
	}
	return pool, nil
}

// readPair reads a certificate and its key, saying which file is missing
// or that they do not belong together.
func readPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key: %w", err)
	}
	if _, err := parseCertPEM(certPEM, certFile); err != nil {
		return tls.Certificate{}, err
	}
	if _, err := parseKeyPEM(keyPEM, keyFile); err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s is not the key of %s: %w", keyFile, certFile, err)
	}
	if pair.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s: %w", certFile, err)
		}
	}
	return pair, nil
}

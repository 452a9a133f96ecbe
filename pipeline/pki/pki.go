// Package pki is the transport identity of Lifeboat: the site's own
// certificate authority, the certificates it issues, and the TLS
// configurations that use them.
//
// Every connection between an agent and a server (process server,
// configuration server) is HTTPS with TLS 1.3 only and mutual
// authentication: the server proves itself with a certificate for its host
// names, the agent with a client certificate whose subject names it (CN)
// and its role (OU). Both are issued by the site CA that
// `lifeboat server init` creates under DATA_DIR/pki:
//
//	DATA_DIR/pki/          0700
//	  ca.crt               the site CA; every agent trusts it (--ca)
//	  ca.key       0600    the CA private key; never overwritten
//	  server.crt           the server's certificate (ServerAuth, SANs)
//	  server.key   0600
//	  admin.crt            an admin identity for the CLI (ClientAuth)
//	  admin.key    0600
//	  issued/              every certificate the CA issued (never a key):
//	    SERIAL.crt         by serial number in lower-case hex
//	    SERIAL.reason      why it was revoked, if a reason was given
//	  ca.crl               the revoked certificates: an X.509 CRL signed by the CA
//
// Revocation (CA.Revoke) adds certificates to ca.crl; a server built on
// ServerTLS refuses them at the TLS handshake, re-reading ca.crl when it
// changes (see ServerTLS). A scale-out process server with a copy of
// DATA_DIR/pki uses the copy of ca.crl it has.
//
// The CA is a library, not only a command: a caller (the control plane's
// registration, later) loads it with Load and issues certificates with
// CA.Issue. Keys are ECDSA P-256, stored as PEM "PRIVATE KEY" (PKCS#8);
// every file is written atomically (temporary file, fsync, rename).
package pki

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// Role is what a certificate's holder may do; it is carried in the
// subject's OU.
type Role string

// Roles.
const (
	RoleServer Role = "server" // a process or configuration server (ServerAuth)
	RoleAgent  Role = "agent"  // a protected machine (ClientAuth)
	RoleAdmin  Role = "admin"  // a person or script using the CLI (ClientAuth)
	// RoleProcessServer is a scale-out process server's client identity,
	// for its heartbeats to the configuration server (ClientAuth); its
	// data port has a RoleServer certificate for the same key.
	RoleProcessServer Role = "process-server"
)

// Defaults.
const (
	DefaultDataPort   = 9443                      // the process server's HTTPS port
	DefaultValidity   = 365 * 24 * time.Hour      // of an issued certificate
	DefaultCAValidity = 10 * 365 * 24 * time.Hour // of the site CA
)

const (
	notBeforeSkew         = time.Minute // NotBefore is this far in the past, for clock skew
	maxNameLen            = 64          // the X.509 upper bound of a CN
	caCertName, caKeyName = "ca.crt", "ca.key"
)

// Errors. Callers match them with errors.Is; the wrapping error names the
// file or value and says what to do.
var (
	ErrExists = errors.New("already exists")
	ErrNoCA   = errors.New("no certificate authority")
	ErrRole   = errors.New("unknown role: use server, agent, admin or process-server")
	ErrName   = errors.New("invalid name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	ErrHost   = errors.New("invalid host: use a DNS name or an IP address, without a port")
	// ErrUnknown: no certificate in the registry matches a name or serial.
	ErrUnknown = errors.New("no such certificate")
	// ErrNothingToRevoke: the certificates that match are all revoked,
	// expired or server certificates already.
	ErrNothingToRevoke = errors.New("nothing to revoke")
	// ErrRevoked is wrapped by the error of a refused connection.
	ErrRevoked = errors.New("certificate revoked")
	// ErrSerial: a serial number that is not hexadecimal.
	ErrSerial = errors.New("invalid serial number: use the hexadecimal serial 'lifeboat certs list' shows")
)

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool {
	return r == RoleServer || r == RoleAgent || r == RoleAdmin || r == RoleProcessServer
}

// Files are the paths of a data directory's PKI.
type Files struct {
	Dir                   string // DATA_DIR/pki
	CACert, CAKey         string
	ServerCert, ServerKey string
	AdminCert, AdminKey   string
	Issued                string // the registry of issued certificates
	CRL                   string // the revocation list
}

// Paths returns where Init writes and Load and ServerTLS read.
func Paths(dataDir string) Files {
	d := filepath.Join(dataDir, "pki")
	return Files{
		Dir:    d,
		CACert: filepath.Join(d, caCertName), CAKey: filepath.Join(d, caKeyName),
		ServerCert: filepath.Join(d, "server.crt"), ServerKey: filepath.Join(d, "server.key"),
		AdminCert: filepath.Join(d, "admin.crt"), AdminKey: filepath.Join(d, "admin.key"),
		Issued: filepath.Join(d, "issued"), CRL: filepath.Join(d, "ca.crl"),
	}
}

// checkName accepts a certificate or file name: 1-64 of [A-Za-z0-9._-],
// starting with a letter or digit (so it is also a safe file name).
func checkName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%w: %q", ErrName, name)
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return fmt.Errorf("%w: %q", ErrName, name)
		}
	}
	return nil
}

// splitHosts sorts hosts into IP addresses and DNS names for the SANs of a
// server certificate, dropping duplicates.
func splitHosts(hosts []string) (ips []net.IP, dns []string, err error) {
	seen := map[string]bool{}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("%w: %q", ErrHost, h)
		}
		h = strings.ToLower(h)
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return ips, dns, nil
}

// validDNSName accepts host names (labels of letters, digits and '-', not
// starting or ending with '-') and a leading "*." wildcard.
func validDNSName(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

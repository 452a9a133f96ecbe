package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"lifeboat/pipeline/pki"
)

// RegisterParams is what an agent needs to derive the passphrase's key.
type RegisterParams struct {
	KDF KDF `json:"kdf"`
}

// RegisterRequest asks for a certificate: the name, the certificate
// signing request (DER; the key stays with the requester), and its proof
// of the passphrase (RequestProof over every field). Role is "" or
// "agent" for a machine, "process-server" for a scale-out process server,
// which also gives the host names of its data port and the URL agents
// reach it at.
type RegisterRequest struct {
	Name  string   `json:"name"`
	CSR   []byte   `json:"csr"`
	Role  string   `json:"role,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
	URL   string   `json:"url,omitempty"`
	Proof []byte   `json:"proof"`
}

// RegisterReply is the client certificate, for a process server its data
// port's certificate (for the same key), the site's CA, and ReplyProof
// over the three.
type RegisterReply struct {
	CertPEM       []byte `json:"cert_pem"`
	ServerCertPEM []byte `json:"server_cert_pem,omitempty"`
	CAPEM         []byte `json:"ca_pem"`
	Proof         []byte `json:"proof"`
}

// Registration roles.
const (
	RegisterAgent         = "agent"
	RegisterProcessServer = "process-server"
)

// DefaultRegisterFailures is how many wrong passphrases one address may
// send per minute.
const DefaultRegisterFailures = 5

func (s *Server) handleRegisterParams(w http.ResponseWriter, r *http.Request) {
	sp, err := s.Store.passphrase()
	if err != nil {
		s.refuse(w, r, http.StatusServiceUnavailable, "", err)
		return
	}
	writeJSON(w, http.StatusOK, RegisterParams{KDF: sp.KDF})
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	if wait := s.registerWait(host); wait > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		s.refuse(w, r, http.StatusTooManyRequests, "", fmt.Errorf("too many wrong passphrases from %s; try again in %v", host, wait.Round(time.Second)))
		return
	}
	var req RegisterRequest
	if err := decode(r, &req); err != nil {
		s.refuse(w, r, http.StatusBadRequest, "", err)
		return
	}
	sp, err := s.Store.passphrase()
	if err != nil {
		s.refuse(w, r, http.StatusServiceUnavailable, req.Name, err)
		return
	}
	if !hmac.Equal(req.Proof, RequestProof(sp.Key, req)) {
		s.registerFailed(host)
		// Only a valid name goes into the store: this endpoint is open
		// to anyone, and an event is kept for 30 days.
		name := req.Name
		if pki.CheckName(name) != nil {
			name = "(invalid name)"
		}
		s.Store.Event(CodeRegisterRefused, name, fmt.Sprintf("registration of %s from %s refused: wrong passphrase", name, host), s.now())
		s.refuse(w, r, http.StatusForbidden, req.Name, errors.New("wrong registration passphrase: use the one 'lifeboat server init' printed "+
			"(or make a new one with 'lifeboat server passphrase')"))
		return
	}
	pub, err := checkCSR(req)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, req.Name, err)
		return
	}
	if err := s.certificateNameFree(req.Name); err != nil {
		s.refuse(w, r, http.StatusConflict, req.Name, err)
		return
	}
	var reply RegisterReply
	switch req.Role {
	case "", RegisterAgent:
		reply, err = s.registerMachine(req, pub, host)
	case RegisterProcessServer:
		reply, err = s.registerProcessServer(req, pub, host)
	default:
		err = fmt.Errorf("%w: role %q: want agent or process-server", ErrInvalid, req.Role)
	}
	if err != nil {
		s.answer(w, r, req.Name, nil, err)
		return
	}
	var serverDER []byte
	if b, _ := pem.Decode(reply.ServerCertPEM); b != nil {
		serverDER = b.Bytes
	}
	certBlock, _ := pem.Decode(reply.CertPEM)
	caBlock, _ := pem.Decode(reply.CAPEM)
	reply.Proof = ReplyProof(sp.Key, certBlock.Bytes, serverDER, caBlock.Bytes)
	writeJSON(w, http.StatusOK, reply)
}

// registerMachine issues an agent certificate and records the machine.
func (s *Server) registerMachine(req RegisterRequest, pub any, host string) (RegisterReply, error) {
	if len(req.Hosts) > 0 || req.URL != "" {
		return RegisterReply{}, fmt.Errorf("%w: an agent registers without hosts or URL", ErrInvalid)
	}
	if err := s.Store.nameFree(req.Name); err != nil {
		return RegisterReply{}, err
	}
	id, err := s.CA.IssueKey(req.Name, pki.RoleAgent, nil, 0, pub)
	if err != nil {
		return RegisterReply{}, err
	}
	cert, _ := id.Certificate()
	m := Machine{Name: req.Name, Serial: pki.SerialText(cert.SerialNumber), RegisteredAt: s.now().UTC(),
		CertExpires: cert.NotAfter.UTC(), Address: host}
	if err := s.Store.AddMachine(m); err != nil {
		return RegisterReply{}, s.unissue(m.Serial, err)
	}
	s.log().Info("machine registered", "machine", req.Name, "remote", host, "serial", m.Serial)
	return RegisterReply{CertPEM: id.CertPEM, CAPEM: id.CAPEM}, nil
}

// unissue revokes a certificate whose holder could not be recorded, so
// that it cannot be used, and returns err with what went wrong.
func (s *Server) unissue(serial string, err error) error {
	if _, rerr := s.CA.Revoke(pki.Revocation{Serial: serial, Reason: "registration not recorded"}); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

// checkCSR parses and checks a registration's CSR: signed by its own
// P-256 key, for the name asked.
func checkCSR(req RegisterRequest) (any, error) {
	if err := pki.CheckName(req.Name); err != nil {
		return nil, fmt.Errorf("%w: machine name: %v", ErrInvalid, err)
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate signing request: %v", ErrInvalid, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: certificate signing request: %v", ErrInvalid, err)
	}
	if csr.Subject.CommonName != req.Name {
		return nil, fmt.Errorf("%w: the request is for %q, not %q", ErrInvalid, csr.Subject.CommonName, req.Name)
	}
	k, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: the key must be ECDSA P-256", ErrInvalid)
	}
	return k, nil
}

// registerWait is how long host must wait before it may try again.
func (s *Server) registerWait(host string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.RegisterFailures
	if limit == 0 {
		limit = DefaultRegisterFailures
	}
	now := s.now()
	recent := s.failures[host][:0]
	for _, t := range s.failures[host] {
		if now.Sub(t) < time.Minute {
			recent = append(recent, t)
		}
	}
	if len(recent) == 0 {
		delete(s.failures, host) // only addresses with recent failures are kept
	} else {
		s.failures[host] = recent
	}
	if len(recent) < limit {
		return 0
	}
	return time.Minute - now.Sub(recent[0])
}

func (s *Server) registerFailed(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures == nil {
		s.failures = map[string][]time.Time{}
	}
	s.failures[host] = append(s.failures[host], s.now())
}

// certificateNameFree refuses a name that a valid certificate of the site
// already carries (the admin's, a server's, an agent's from 'certs
// issue'): a certificate is its holder's identity on every port, so a
// registration must not give another holder the same name.
func (s *Server) certificateNameFree(name string) error {
	if s.DataDir == "" {
		return nil
	}
	certs, err := pki.Issued(s.DataDir, s.now())
	if err != nil {
		return err
	}
	for _, c := range certs {
		if c.Holder == name && c.Status == pki.StatusValid {
			return fmt.Errorf("%w: a valid certificate of the site (role %s, serial %s) is named %s; register under another --name, "+
				"or revoke that certificate first ('lifeboat certs revoke')", ErrExists, c.Role, c.Serial, name)
		}
	}
	return nil
}

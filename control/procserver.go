package control

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"lifeboat/pipeline/pki"
)

// ProcessServer is a registered scale-out process server. The site's own
// process server (the one in `lifeboat server`) is not recorded: it is
// SiteProcessServer, always there.
type ProcessServer struct {
	Name string `json:"name"`
	URL  string `json:"url"` // its data port, as agents reach it
	// Hosts are the names its data port's certificate may carry, as an
	// admin allowed them (process-server allow); Pending until it
	// registers with exactly these.
	Hosts        []string  `json:"hosts"`
	Pending      bool      `json:"pending,omitempty"`
	Serial       string    `json:"serial"`
	RegisteredAt time.Time `json:"registered_at"`
	CertExpires  time.Time `json:"certificate_expires"`
	Address      string    `json:"address"`
}

// SiteProcessServer names the process server of `lifeboat server` itself.
const SiteProcessServer = "site"

// ProcessServerView is a process server with its heartbeats and load (the
// site status's JSON).
type ProcessServerView struct {
	Name          string     `json:"name"`
	URL           string     `json:"url"`
	LastHeartbeat *time.Time `json:"last_heartbeat"`
	// ChurnBps is the bytes per second its items received recently.
	ChurnBps   float64 `json:"churn_bytes_per_second"`
	SpoolBytes int64   `json:"spool_bytes"`
	SpoolQuota int64   `json:"spool_quota"`
	Items      int     `json:"items"`
	Health     Health  `json:"health"`
	Reason     string  `json:"reason,omitempty"`
}

// nameFree refuses a name a machine or a process server has.
func (s *Store) nameFree(name string) error {
	return s.view(func(tx *bolt.Tx) error { return nameFreeTx(tx, name) })
}

func nameFreeTx(tx *bolt.Tx, name string) error {
	if name == SiteProcessServer {
		return fmt.Errorf("%w: %q names the site's own process server; choose another --name", ErrExists, name)
	}
	if tx.Bucket(bucketMachines).Get([]byte(name)) != nil {
		return fmt.Errorf("%w: a machine named %s is registered; remove it first ('lifeboat machine remove %s') or register under another --name",
			ErrExists, name, name)
	}
	if tx.Bucket(bucketPS).Get([]byte(name)) != nil {
		return fmt.Errorf("%w: a process server named %s is registered; register under another --name", ErrExists, name)
	}
	return nil
}

// AllowProcessServer records an admin's approval of a process server
// that has not registered yet: its name, hosts and URL.
func (s *Store) AllowProcessServer(ps ProcessServer) error {
	ps.Pending = true
	return s.update(func(tx *bolt.Tx) error {
		if err := nameFreeTx(tx, ps.Name); err != nil {
			return err
		}
		return put(tx, bucketPS, ps.Name, ps)
	})
}

// claimProcessServer completes an allowed process server's registration:
// the request must name exactly the hosts and URL an admin allowed.
func (s *Store) claimProcessServer(name string, hosts []string, url string, fill func(*ProcessServer)) error {
	return s.update(func(tx *bolt.Tx) error {
		var ps ProcessServer
		if err := get(tx, bucketPS, name, &ps); err != nil {
			return fmt.Errorf("%w: no process server %s is allowed; an admin allows it first on the site with "+
				"'lifeboat process-server allow %s --host HOST --advertise URL'", ErrForbidden, name, name)
		}
		if !ps.Pending {
			return fmt.Errorf("%w: process server %s is registered already; an admin removes it first ('lifeboat process-server remove %s')",
				ErrExists, name, name)
		}
		if !slices.Equal(ps.Hosts, hosts) || ps.URL != url {
			return fmt.Errorf("%w: process server %s was allowed with hosts %q and URL %s, not %q and %s",
				ErrForbidden, name, ps.Hosts, ps.URL, hosts, url)
		}
		fill(&ps)
		ps.Pending = false
		return put(tx, bucketPS, name, ps)
	})
}

// removeProcessServer deletes a process server's record.
func (s *Store) removeProcessServer(name string) (ProcessServer, error) {
	var ps ProcessServer
	err := s.update(func(tx *bolt.Tx) error {
		if err := get(tx, bucketPS, name, &ps); err != nil {
			return err
		}
		return tx.Bucket(bucketPS).Delete([]byte(name))
	})
	return ps, err
}

// processServer returns a registered or allowed process server.
func (s *Store) processServer(name string) (ProcessServer, error) {
	var ps ProcessServer
	err := s.view(func(tx *bolt.Tx) error { return get(tx, bucketPS, name, &ps) })
	return ps, err
}

// ProcessServers lists the registered process servers by name.
func (s *Store) ProcessServers() ([]ProcessServer, error) {
	var ps []ProcessServer
	err := s.view(func(tx *bolt.Tx) (err error) { ps, err = list[ProcessServer](tx, bucketPS); return })
	return ps, err
}

// registerProcessServer issues an allowed process server its data port's
// certificate (for the hosts an admin allowed) and its client certificate.
// The passphrase alone is not enough: it is given to every machine, and a
// server certificate of the site's CA is trusted by every agent.
func (s *Server) registerProcessServer(req RegisterRequest, pub any, host string) (RegisterReply, error) {
	u, err := url.Parse(req.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" {
		return RegisterReply{}, fmt.Errorf("%w: url %q: want https://HOST:PORT, where agents reach the process server", ErrInvalid, req.URL)
	}
	psURL := "https://" + u.Host
	allowed, err := s.Store.processServer(req.Name)
	switch {
	case err != nil:
		return RegisterReply{}, fmt.Errorf("%w: no process server %s is allowed; an admin allows it first on the site with "+
			"'lifeboat process-server allow %s --host HOST --advertise URL'", ErrForbidden, req.Name, req.Name)
	case !allowed.Pending:
		return RegisterReply{}, fmt.Errorf("%w: process server %s is registered already", ErrExists, req.Name)
	case !slices.Equal(allowed.Hosts, req.Hosts) || allowed.URL != psURL:
		return RegisterReply{}, fmt.Errorf("%w: process server %s was allowed with hosts %q and URL %s, not %q and %s",
			ErrForbidden, req.Name, allowed.Hosts, allowed.URL, req.Hosts, psURL)
	}
	srv, err := s.CA.IssueKey(req.Name, pki.RoleServer, req.Hosts, 0, pub)
	if err != nil {
		return RegisterReply{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	client, err := s.CA.IssueKey(req.Name, pki.RoleProcessServer, nil, 0, pub)
	if err != nil {
		return RegisterReply{}, err
	}
	cert, _ := client.Certificate()
	serial := pki.SerialText(cert.SerialNumber)
	err = s.Store.claimProcessServer(req.Name, req.Hosts, psURL, func(ps *ProcessServer) {
		ps.Serial, ps.RegisteredAt, ps.CertExpires, ps.Address = serial, s.now().UTC(), cert.NotAfter.UTC(), host
	})
	if err != nil {
		return RegisterReply{}, s.unissue(serial, err)
	}
	s.log().Info("process server registered", "process_server", req.Name, "url", psURL, "remote", host)
	return RegisterReply{CertPEM: client.CertPEM, ServerCertPEM: srv.CertPEM, CAPEM: client.CAPEM}, nil
}

// crlPEM is the site's revocation list, for process servers to refuse
// what the site revoked; nil when there is none.
func (s *Server) crlPEM() []byte {
	if s.CRLFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.CRLFile)
	if err != nil {
		return nil
	}
	return b
}

// AllowRequest is an admin's approval of a process server to come.
type AllowRequest struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
	URL   string   `json:"url"`
}

func (s *Server) handlePSAllow(w http.ResponseWriter, r *http.Request, peer string) {
	var req AllowRequest
	if err := decode(r, &req); err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	ps, err := s.allowProcessServer(req)
	if err == nil {
		s.log().Info("process server allowed", "process_server", ps.Name, "hosts", ps.Hosts, "url", ps.URL, "by", peer)
	}
	s.answer(w, r, peer, ps, err)
}

func (s *Server) allowProcessServer(req AllowRequest) (ProcessServer, error) {
	if err := pki.CheckName(req.Name); err != nil {
		return ProcessServer{}, fmt.Errorf("%w: process server name: %v", ErrInvalid, err)
	}
	u, err := url.Parse(req.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return ProcessServer{}, fmt.Errorf("%w: --advertise %q: want https://HOST:PORT, where agents reach the process server", ErrInvalid, req.URL)
	}
	if len(req.Hosts) == 0 || !slices.Contains(req.Hosts, u.Hostname()) {
		return ProcessServer{}, fmt.Errorf("%w: --host %q must include the host of --advertise (%s): agents check it in its certificate",
			ErrInvalid, req.Hosts, u.Hostname())
	}
	if err := s.certificateNameFree(req.Name); err != nil {
		return ProcessServer{}, err
	}
	ps := ProcessServer{Name: req.Name, Hosts: req.Hosts, URL: "https://" + u.Host}
	if err := s.Store.AllowProcessServer(ps); err != nil {
		return ProcessServer{}, err
	}
	ps.Pending = true
	return ps, nil
}

// RemovedProcessServer is the answer to a process server's removal.
type RemovedProcessServer struct {
	ProcessServer ProcessServer    `json:"process_server"`
	Revoked       []pki.IssuedCert `json:"revoked"`
}

// handlePSRemove revokes a process server's client certificate (its
// heartbeats stop being taken), forgets it, and lets reassign move its
// items. Its data port's certificate stays valid until it expires (a
// server certificate is not revocable here), but the site no longer sends
// agents to it.
func (s *Server) handlePSRemove(w http.ResponseWriter, r *http.Request, peer string) {
	name := r.PathValue("name")
	ps, err := s.Store.processServer(name)
	if err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	out := RemovedProcessServer{ProcessServer: ps, Revoked: []pki.IssuedCert{}}
	if ps.Serial != "" {
		revoked, err := s.CA.Revoke(pki.Revocation{Serial: ps.Serial, Reason: "process server removed by " + peer})
		if err != nil && !errors.Is(err, pki.ErrNothingToRevoke) {
			s.answer(w, r, peer, nil, err)
			return
		}
		out.Revoked = append(out.Revoked, revoked...)
	}
	if _, err := s.Store.removeProcessServer(name); err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	s.mu.Lock()
	delete(s.psBeats, name)
	s.mu.Unlock()
	s.log().Info("process server removed", "process_server", name, "by", peer)
	s.answer(w, r, peer, out, s.reassign(&ps))
}

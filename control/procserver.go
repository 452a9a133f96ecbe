package control

import (
	"fmt"
	"net/url"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"lifeboat/pipeline/pki"
)

// ProcessServer is a registered scale-out process server. The site's own
// process server (the one in `lifeboat server`) is not recorded: it is
// SiteProcessServer, always there.
type ProcessServer struct {
	Name         string    `json:"name"`
	URL          string    `json:"url"` // its data port, as agents reach it
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

// AddProcessServer records a registration; the name must be free.
func (s *Store) AddProcessServer(ps ProcessServer) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := nameFreeTx(tx, ps.Name); err != nil {
			return err
		}
		return put(tx, bucketPS, ps.Name, ps)
	})
}

// processServer returns a registered process server.
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

// registerProcessServer issues a process server its data port's
// certificate (for Hosts) and its client certificate, and records it.
func (s *Server) registerProcessServer(req RegisterRequest, pub any, host string) (RegisterReply, error) {
	u, err := url.Parse(req.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" {
		return RegisterReply{}, fmt.Errorf("%w: url %q: want https://HOST:PORT, where agents reach the process server", ErrInvalid, req.URL)
	}
	if len(req.Hosts) == 0 {
		return RegisterReply{}, fmt.Errorf("%w: give the host names or addresses agents reach the process server at (--host)", ErrInvalid)
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
	ps := ProcessServer{Name: req.Name, URL: "https://" + u.Host, Serial: pki.SerialText(cert.SerialNumber),
		RegisteredAt: s.now().UTC(), CertExpires: cert.NotAfter.UTC(), Address: host}
	if err := s.Store.AddProcessServer(ps); err != nil {
		return RegisterReply{}, s.unissue(ps.Serial, err)
	}
	s.log().Info("process server registered", "process_server", ps.Name, "url", ps.URL, "remote", host)
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

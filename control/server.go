package control

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// DefaultAddr is the configuration server's port.
const DefaultAddr = ":9440"

// Defaults of the agents' heartbeats.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatTimeout  = 60 * time.Second
)

// Server is the configuration server: an HTTPS JSON API over a Store.
// Registration needs no certificate (the passphrase proves the agent);
// agents use their own certificate for heartbeats, admins theirs for the
// rest. Every refusal is logged.
type Server struct {
	Store  *Store
	CA     *pki.CA
	Logger *slog.Logger
	// TLS is the data port's configuration (pki.ServerTLS); TLSConfig
	// derives the control port's from it.
	TLS *tls.Config
	// DataURL is the process server agents ship to unless an item names
	// another (https://HOST:PORT).
	DataURL string
	// Site returns the site's volumes (points, recovery state); nil: none.
	Site func() []pipeline.VolumeStatus
	// Encrypted says the site's target encrypts replicas with a key it
	// holds (a policy with encryption-key "site" needs it).
	Encrypted bool
	// SiteVolumes returns the volumes of the site's own process server
	// (received bytes, newest point) and its spool, for its load and its
	// events, as a scale-out process server reports them in heartbeats.
	SiteVolumes func() (vols []PSVolume, spool, quota int64)
	// CRLFile is the site's revocation list, passed on to process servers.
	CRLFile string
	// DataDir holds the site's PKI: registration refuses a name a valid
	// certificate of its registry has.
	DataDir string
	// Heartbeats: how often agents are told to send one, and how long
	// without one raises CodeNoHeartbeat.
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// RegisterFailures wrong passphrases from one address within a minute
	// are answered, later ones refused (429) until the minute has passed.
	RegisterFailures int
	Now              func() time.Time

	mu       sync.Mutex
	beats    map[string]beat        // by machine
	failures map[string][]time.Time // wrong passphrases by remote host
	stuck    map[string]progressAt  // initial replication progress by item
	psBeats  map[string]psBeat      // by process server name
	started  time.Time              // when Run started
}

// TLSConfig is the control port's TLS configuration: that of the data
// port, but a client certificate is optional (registration has none). A
// revoked one is still refused at the handshake.
func (s *Server) TLSConfig() *tls.Config {
	c := s.TLS.Clone()
	c.ClientAuth = tls.VerifyClientCertIfGiven
	return c
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Handler serves the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/register", s.handleRegisterParams)
	mux.HandleFunc("POST /v1/register", s.handleRegister)
	mux.Handle("POST /v1/agent/heartbeat", s.as(pki.RoleAgent, s.handleHeartbeat))
	mux.Handle("POST /v1/process-server/heartbeat", s.as(pki.RoleProcessServer, s.handlePSHeartbeat))
	admin := func(pattern string, h func(w http.ResponseWriter, r *http.Request, peer string)) {
		mux.Handle(pattern, s.as(pki.RoleAdmin, h))
	}
	admin("GET /v1/machines", s.handleMachines)
	admin("DELETE /v1/machines/{name}", s.handleMachineRemove)
	admin("GET /v1/policies", s.handlePolicies)
	admin("POST /v1/policies", s.handlePolicyCreate)
	admin("GET /v1/policies/{name}", s.handlePolicy)
	admin("PATCH /v1/policies/{name}", s.handlePolicyUpdate)
	admin("DELETE /v1/policies/{name}", s.handlePolicyDelete)
	admin("POST /v1/items", s.handleProtect)
	admin("DELETE /v1/items/{machine}/{volume}", s.handleUnprotect)
	admin("POST /v1/items/{machine}/{volume}/{action}", s.handleItemAction)
	admin("POST /v1/process-servers", s.handlePSAllow)
	admin("DELETE /v1/process-servers/{name}", s.handlePSRemove)
	admin("GET /v1/status", s.handleStatus)
	admin("GET /v1/events", s.handleEvents)
	admin("GET /v1/jobs", s.handleJobs)
	admin("GET /v1/jobs/{id}", s.handleJob)
	admin("POST /v1/passphrase", s.handlePassphrase)
	return mux
}

// as admits a request whose verified certificate has role, checking the
// revocation list again (a connection may outlive a revocation).
func (s *Server) as(role pki.Role, h func(w http.ResponseWriter, r *http.Request, peer string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			s.refuse(w, r, http.StatusForbidden, "", errors.New("not over TLS"))
			return
		}
		name, got, err := pki.Peer(*r.TLS)
		if err == nil && s.TLS.VerifyConnection != nil {
			err = s.TLS.VerifyConnection(*r.TLS)
		}
		if err != nil {
			s.refuse(w, r, http.StatusUnauthorized, name, fmt.Errorf("a valid client certificate is needed: %w", err))
			return
		}
		if got != role {
			s.refuse(w, r, http.StatusForbidden, name, fmt.Errorf("%s needs a certificate of role %s; %s has role %s", r.URL.Path, role, name, got))
			return
		}
		h(w, r, name)
	})
}

// refuse answers an error and logs the refusal with who asked.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, peer string, err error) {
	s.log().Warn("control request refused", "remote", r.RemoteAddr, "peer", peer, "method", r.Method, "path", r.URL.Path,
		"status", code, "err", err)
	writeError(w, code, err)
}

// APIError is the API's error body.
type APIError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, APIError{Error: err.Error()})
}

// answer writes v, or the status code err calls for.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, peer string, v any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, v)
		return
	}
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrExists), errors.Is(err, ErrInUse):
		code = http.StatusConflict
	case errors.Is(err, ErrForbidden):
		code = http.StatusForbidden
	}
	if code == http.StatusInternalServerError {
		s.log().Error("control request failed", "path", r.URL.Path, "peer", peer, "err", err)
	} else {
		s.log().Info("control request refused", "path", r.URL.Path, "peer", peer, "status", code, "err", err)
	}
	writeError(w, code, err)
}

// decode reads a JSON body of at most 1 MiB, refusing unknown fields.
func decode(r *http.Request, v any) error {
	d := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	return nil
}

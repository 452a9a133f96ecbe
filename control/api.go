package control

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"lifeboat/pipeline/pki"
)

func (s *Server) handleMachines(w http.ResponseWriter, r *http.Request, peer string) {
	views, err := s.MachineViews()
	s.answer(w, r, peer, views, err)
}

// MachineViews lists the machines with their heartbeats and health.
func (s *Server) MachineViews() ([]MachineView, error) {
	ms, err := s.Store.Machines()
	if err != nil {
		return nil, err
	}
	items, err := s.Store.Items()
	if err != nil {
		return nil, err
	}
	views := make([]MachineView, 0, len(ms))
	for _, m := range ms {
		v := MachineView{Machine: m, Health: Healthy}
		if b, ok := s.beat(m.Name); ok {
			t := b.At.UTC()
			v.LastHeartbeat, v.Version = &t, b.Version
		}
		for _, it := range items {
			if it.Machine == m.Name {
				v.Items++
			}
		}
		if reason := s.machineProblem(m, v.Items); reason != "" {
			v.Health = Critical
		}
		views = append(views, v)
	}
	return views, nil
}

// RemovedMachine is the answer to a machine's removal.
type RemovedMachine struct {
	Machine     Machine          `json:"machine"`
	Unprotected []string         `json:"unprotected"`
	Revoked     []pki.IssuedCert `json:"revoked"`
}

func (s *Server) handleMachineRemove(w http.ResponseWriter, r *http.Request, peer string) {
	name := r.PathValue("name")
	m, err := s.Store.Machine(name)
	if err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	// Revoke first: a machine that is gone from the store but whose
	// certificate still works would be worse than the reverse. Its own
	// certificate, by serial: another holder of the name (an admin's) is
	// not this machine.
	revoked, err := s.CA.Revoke(pki.Revocation{Serial: m.Serial, Reason: "machine removed by " + peer})
	if err != nil && !errors.Is(err, pki.ErrNothingToRevoke) && !errors.Is(err, pki.ErrUnknown) {
		s.answer(w, r, peer, nil, err)
		return
	}
	m, items, err := s.Store.RemoveMachine(name)
	if err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	s.forget(name)
	out := RemovedMachine{Machine: m, Revoked: revoked, Unprotected: []string{}}
	for _, it := range items {
		out.Unprotected = append(out.Unprotected, it.Key())
	}
	s.Store.Event(CodeMachineRemoved, name, fmt.Sprintf("machine %s removed by %s; its certificate is revoked", name, peer), s.now())
	s.log().Info("machine removed", "machine", name, "by", peer, "revoked", len(revoked), "unprotected", out.Unprotected)
	s.answer(w, r, peer, out, nil)
}

func (s *Server) handlePolicies(w http.ResponseWriter, r *http.Request, peer string) {
	ps, err := s.Store.Policies()
	if ps == nil {
		ps = []Policy{}
	}
	s.answer(w, r, peer, ps, err)
}

func (s *Server) handlePolicy(w http.ResponseWriter, r *http.Request, peer string) {
	p, err := s.Store.Policy(r.PathValue("name"))
	s.answer(w, r, peer, p, err)
}

func (s *Server) handlePolicyCreate(w http.ResponseWriter, r *http.Request, peer string) {
	var p Policy
	if err := decode(r, &p); err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	p, err := s.Store.CreatePolicy(p, s.now())
	s.answer(w, r, peer, p, err)
}

// PolicyChange is a policy update: the fields given change.
type PolicyChange struct {
	RPOThreshold  *Seconds              `json:"rpo_threshold_seconds,omitempty"`
	Retention     *Seconds              `json:"retention_seconds,omitempty"`
	CrashInterval *Seconds              `json:"crash_consistent_interval_seconds,omitempty"`
	Compression   *string               `json:"compression,omitempty"`
	EncryptionKey *string               `json:"encryption_key,omitempty"`
	Failback      *FailbackPolicyChange `json:"failback,omitempty"`
}

// FailbackPolicyChange changes a failback policy's fields given.
type FailbackPolicyChange struct {
	RPOThreshold  *Seconds `json:"rpo_threshold_seconds,omitempty"`
	CrashInterval *Seconds `json:"crash_consistent_interval_seconds,omitempty"`
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func (s *Server) handlePolicyUpdate(w http.ResponseWriter, r *http.Request, peer string) {
	var c PolicyChange
	if err := decode(r, &c); err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	if c.EncryptionKey != nil && *c.EncryptionKey == "site" && !s.Encrypted {
		s.answer(w, r, peer, nil, fmt.Errorf("%w: encryption-key site needs the site's encryption key, and this server's target has none "+
			"(start it with --encryption-key)", ErrInvalid))
		return
	}
	p, err := s.Store.UpdatePolicy(r.PathValue("name"), func(p *Policy) {
		setIf(&p.RPOThreshold, c.RPOThreshold)
		setIf(&p.Retention, c.Retention)
		setIf(&p.CrashInterval, c.CrashInterval)
		setIf(&p.Compression, c.Compression)
		setIf(&p.EncryptionKey, c.EncryptionKey)
		if c.Failback != nil {
			setIf(&p.Failback.RPOThreshold, c.Failback.RPOThreshold)
			setIf(&p.Failback.CrashInterval, c.Failback.CrashInterval)
		}
	}, s.now())
	s.answer(w, r, peer, p, err)
}

func (s *Server) handlePolicyDelete(w http.ResponseWriter, r *http.Request, peer string) {
	name := r.PathValue("name")
	err := s.Store.DeletePolicy(name)
	s.answer(w, r, peer, map[string]string{"deleted": name}, err)
}

// ProtectRequest protects a machine's volume.
type ProtectRequest struct {
	Machine       string `json:"machine"`
	Volume        string `json:"volume"`
	Path          string `json:"path"`
	Size          int64  `json:"size,omitempty"`
	Policy        string `json:"policy"`
	ProcessServer string `json:"process_server,omitempty"`
}

func (s *Server) handleProtect(w http.ResponseWriter, r *http.Request, peer string) {
	var req ProtectRequest
	if err := decode(r, &req); err != nil {
		s.answer(w, r, peer, nil, err)
		return
	}
	it, err := s.protect(req)
	s.answer(w, r, peer, it, err)
}

func (s *Server) protect(req ProtectRequest) (Item, error) {
	if err := pki.CheckName(req.Volume); err != nil {
		return Item{}, fmt.Errorf("%w: volume name: %v", ErrInvalid, err)
	}
	if req.Path == "" || req.Path[0] != '/' {
		return Item{}, fmt.Errorf("%w: path %q: want an absolute path on the machine", ErrInvalid, req.Path)
	}
	if req.Size < 0 {
		return Item{}, fmt.Errorf("%w: size %d is negative", ErrInvalid, req.Size)
	}
	p, err := s.Store.Policy(req.Policy)
	if err != nil {
		return Item{}, fmt.Errorf("%w: create it first with 'lifeboat policy create'", err)
	}
	if p.EncryptionKey == "site" && !s.Encrypted {
		return Item{}, fmt.Errorf("%w: policy %s needs the site's encryption key, and this server's target has none (start it with --encryption-key)",
			ErrInvalid, p.Name)
	}
	ps := req.ProcessServer
	switch {
	case ps == "":
		var err error
		if ps, err = s.assign(); err != nil {
			return Item{}, err
		}
	case ps == SiteProcessServer:
		ps = s.DataURL
	case !strings.Contains(ps, "://"):
		p, err := s.Store.processServer(ps)
		if err != nil {
			return Item{}, fmt.Errorf("%w: name a registered process server, %s, or give its URL", err, SiteProcessServer)
		}
		ps = p.URL
	}
	if u, err := url.Parse(ps); err != nil || u.Scheme != "https" || u.Host == "" {
		return Item{}, fmt.Errorf("%w: process server %q: want https://HOST:PORT", ErrInvalid, ps)
	}
	it := Item{Machine: req.Machine, Volume: req.Volume, Path: req.Path, Size: req.Size, Policy: req.Policy,
		ProcessServer: ps, Created: s.now().UTC()}
	if err := s.Store.Protect(it); err != nil {
		return Item{}, err
	}
	s.log().Info("volume protected", "item", it.Key(), "policy", it.Policy, "process_server", ps)
	return it, nil
}

func itemKey(r *http.Request) string { return r.PathValue("machine") + "/" + r.PathValue("volume") }

func (s *Server) handleUnprotect(w http.ResponseWriter, r *http.Request, peer string) {
	it, err := s.Store.Unprotect(itemKey(r))
	if err == nil {
		s.log().Info("volume unprotected", "item", it.Key(), "by", peer)
	}
	s.answer(w, r, peer, it, err)
}

// ResyncRequest is the body of a resync action.
type ResyncRequest struct {
	Full bool `json:"full"`
}

func (s *Server) handleItemAction(w http.ResponseWriter, r *http.Request, peer string) {
	action := r.PathValue("action")
	var req ResyncRequest
	if action == "resync" && r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			s.answer(w, r, peer, nil, err)
			return
		}
	}
	it, err := s.Store.UpdateItem(itemKey(r), func(it *Item) error {
		switch action {
		case "pause":
			it.Paused = true
		case "resume":
			it.Paused = false
		case "resync":
			it.Resync++
			if req.Full {
				it.ResyncFullAt = it.Resync // a later plain resync does not undo it
			}
		default:
			return fmt.Errorf("%w: action %q: want pause, resume or resync", ErrNotFound, action)
		}
		return nil
	})
	if err == nil {
		s.log().Info("item "+action, "item", it.Key(), "by", peer)
	}
	s.answer(w, r, peer, it, err)
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request, peer string) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			s.answer(w, r, peer, nil, fmt.Errorf("%w: since %q: want an RFC 3339 time", ErrInvalid, v))
			return
		}
		since = t
	}
	es, err := s.Store.Events(since)
	if es == nil {
		es = []Event{}
	}
	s.answer(w, r, peer, es, err)
}

// PassphraseReply is the answer to a passphrase change.
type PassphraseReply struct {
	Passphrase string `json:"passphrase"`
}

func (s *Server) handlePassphrase(w http.ResponseWriter, r *http.Request, peer string) {
	p, err := s.Store.SetPassphrase()
	if err == nil {
		s.log().Info("registration passphrase replaced", "by", peer)
	}
	s.answer(w, r, peer, PassphraseReply{Passphrase: p}, err)
}

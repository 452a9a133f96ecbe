package control

import (
	"fmt"
	"net/http"
	"time"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// Heartbeat is what an agent sends every HeartbeatInterval: its version
// and the state of each volume it was told to protect.
type Heartbeat struct {
	Version string         `json:"version"`
	Volumes []VolumeReport `json:"volumes"`
}

// VolumeReport is one volume's state on the agent.
type VolumeReport struct {
	Name   string `json:"name"`
	Paused bool   `json:"paused"`
	// ResyncDone is the last resync request the agent acted on.
	ResyncDone uint64 `json:"resync_done"`
	// Error says why the agent cannot protect the volume.
	Error   string                  `json:"error,omitempty"`
	Shipper *pipeline.ShipperStatus `json:"shipper,omitempty"`
}

// AgentConfig is the answer to a heartbeat: what the agent must protect.
type AgentConfig struct {
	HeartbeatIntervalMS int64          `json:"heartbeat_interval_ms"`
	Volumes             []VolumeConfig `json:"volumes"`
}

// VolumeConfig is one protected volume as the agent runs it.
type VolumeConfig struct {
	Name          string  `json:"name"`
	Path          string  `json:"path"`
	Size          int64   `json:"size,omitempty"`
	ProcessServer string  `json:"process_server"`
	TagInterval   Seconds `json:"tag_interval_seconds"`
	Compression   string  `json:"compression"`
	Paused        bool    `json:"paused"`
	Resync        uint64  `json:"resync_request"`
	ResyncFull    bool    `json:"resync_full,omitempty"`
}

// beat is the last heartbeat of a machine.
type beat struct {
	At      time.Time
	Version string
	Volumes map[string]VolumeReport
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request, machine string) {
	m, err := s.Store.Machine(machine)
	if err == nil {
		err = sameCertificate(r, m.Serial)
	}
	if err != nil {
		s.refuse(w, r, http.StatusForbidden, machine, err)
		return
	}
	var hb Heartbeat
	if err := decode(r, &hb); err != nil {
		s.answer(w, r, machine, nil, err)
		return
	}
	b := beat{At: s.now(), Version: hb.Version, Volumes: map[string]VolumeReport{}}
	for _, v := range hb.Volumes {
		b.Volumes[v.Name] = v
	}
	s.mu.Lock()
	if s.beats == nil {
		s.beats = map[string]beat{}
	}
	s.beats[machine] = b
	s.mu.Unlock()
	cfg, err := s.agentConfig(machine)
	s.answer(w, r, machine, cfg, err)
}

// agentConfig is what machine must protect now.
func (s *Server) agentConfig(machine string) (AgentConfig, error) {
	cfg := AgentConfig{HeartbeatIntervalMS: s.heartbeatInterval().Milliseconds(), Volumes: []VolumeConfig{}}
	items, err := s.Store.Items()
	if err != nil {
		return cfg, err
	}
	policies := map[string]Policy{}
	for _, it := range items {
		if it.Machine != machine {
			continue
		}
		p, ok := policies[it.Policy]
		if !ok {
			if p, err = s.Store.Policy(it.Policy); err != nil {
				return cfg, err
			}
			policies[it.Policy] = p
		}
		b, _ := s.beat(machine)
		done := b.Volumes[it.Volume].ResyncDone
		cfg.Volumes = append(cfg.Volumes, VolumeConfig{Name: it.Volume, Path: it.Path, Size: it.Size, ProcessServer: it.ProcessServer,
			TagInterval: p.CrashInterval, Compression: p.Compression, Paused: it.Paused, Resync: it.Resync,
			ResyncFull: it.ResyncFullAt > done})
	}
	return cfg, nil
}

func (s *Server) heartbeatInterval() time.Duration {
	if s.HeartbeatInterval > 0 {
		return s.HeartbeatInterval
	}
	return DefaultHeartbeatInterval
}

func (s *Server) heartbeatTimeout() time.Duration {
	if s.HeartbeatTimeout > 0 {
		return s.HeartbeatTimeout
	}
	return DefaultHeartbeatTimeout
}

// beat returns a machine's last heartbeat.
func (s *Server) beat(machine string) (beat, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.beats[machine]
	return b, ok
}

// forget drops what is known of a removed machine.
func (s *Server) forget(machine string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.beats, machine)
}

// sameCertificate refuses a request whose certificate is not the one its
// holder registered with (another certificate that carries its name).
func sameCertificate(r *http.Request, serial string) error {
	if len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return fmt.Errorf("no verified certificate")
	}
	if got := pki.SerialText(r.TLS.VerifiedChains[0][0].SerialNumber); got != serial {
		return fmt.Errorf("certificate serial %s is not the one this name registered with (%s)", got, serial)
	}
	return nil
}

package control

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"lifeboat/pipeline"
)

// PSHeartbeat is what a scale-out process server sends: where agents
// reach it, its spool, and each volume it received.
type PSHeartbeat struct {
	URL        string     `json:"url"`
	SpoolBytes int64      `json:"spool_bytes"`
	SpoolQuota int64      `json:"spool_quota"`
	Volumes    []PSVolume `json:"volumes"`
}

// PSVolume is a volume a process server has: what it received since it
// started, and its newest recovery point.
type PSVolume struct {
	Machine       string          `json:"machine"`
	Volume        string          `json:"volume"`
	ReceivedBytes int64           `json:"received_bytes"`
	LatestPoint   *pipeline.Point `json:"latest_point,omitempty"`
}

// PSConfig is the answer to a process server's heartbeat: the site's
// revocation list, which it enforces on its data port.
type PSConfig struct {
	HeartbeatIntervalMS int64  `json:"heartbeat_interval_ms"`
	CRLPEM              []byte `json:"crl_pem,omitempty"`
	// Retention is each item's retention (its policy's), by MACHINE/VOLUME.
	Retention map[string]Seconds `json:"retention_seconds"`
}

// psBeat is a process server's last heartbeat and the churn derived from
// the last two.
type psBeat struct {
	At       time.Time
	URL      string
	Spool    int64
	Quota    int64
	Received map[string]int64   // by item key, since the server started
	Churn    map[string]float64 // by item key, bytes per second
	Points   map[string]*pipeline.Point
}

func (s *Server) handlePSHeartbeat(w http.ResponseWriter, r *http.Request, name string) {
	ps, err := s.Store.processServer(name)
	if err == nil && ps.Pending {
		err = fmt.Errorf("process server %s is allowed but not registered", name)
	}
	if err == nil {
		err = sameCertificate(r, ps.Serial)
	}
	if err != nil {
		s.refuse(w, r, http.StatusForbidden, name, err)
		return
	}
	var hb PSHeartbeat
	if err := decode(r, &hb); err != nil {
		s.answer(w, r, name, nil, err)
		return
	}
	if hb.URL != ps.URL {
		s.log().Warn("process server reports another URL than it registered with; agents keep the registered one",
			"process_server", name, "registered", ps.URL, "reported", hb.URL)
	}
	s.recordPSBeat(name, ps.URL, hb)
	cfg := PSConfig{HeartbeatIntervalMS: s.heartbeatInterval().Milliseconds(), CRLPEM: s.crlPEM(), Retention: map[string]Seconds{}}
	items, err := s.Store.Items()
	for _, it := range items {
		if r, ok := s.RetentionFor(it.Machine, it.Volume); ok {
			cfg.Retention[it.Key()] = Seconds(r.Window / time.Second)
		}
	}
	s.answer(w, r, name, cfg, err)
}

// recordPSBeat keeps a heartbeat and the churn since the previous one.
func (s *Server) recordPSBeat(name, url string, hb PSHeartbeat) {
	now := s.now()
	b := psBeat{At: now, URL: url, Spool: hb.SpoolBytes, Quota: hb.SpoolQuota,
		Received: map[string]int64{}, Churn: map[string]float64{}, Points: map[string]*pipeline.Point{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, had := s.psBeats[name]
	for _, v := range hb.Volumes {
		key := v.Machine + "/" + v.Volume
		b.Received[key], b.Points[key] = v.ReceivedBytes, v.LatestPoint
		if had {
			if dt := now.Sub(prev.At).Seconds(); dt > 0 {
				if d := v.ReceivedBytes - prev.Received[key]; d >= 0 {
					b.Churn[key] = float64(d) / dt
				} else {
					b.Churn[key] = prev.Churn[key] // it restarted: counters from 0
				}
			}
		}
	}
	if s.psBeats == nil {
		s.psBeats = map[string]psBeat{}
	}
	s.psBeats[name] = b
}

// beatSite records the site's own process server as a heartbeat.
func (s *Server) beatSite() {
	if s.SiteVolumes == nil {
		return
	}
	hb := PSHeartbeat{URL: s.DataURL}
	hb.Volumes, hb.SpoolBytes, hb.SpoolQuota = s.SiteVolumes()
	s.recordPSBeat(SiteProcessServer, s.DataURL, hb)
}

// psUp reports whether a process server's heartbeat is recent; one not
// heard from yet has the heartbeat timeout from its registration or from
// the start of this server, whichever is later.
func (s *Server) psUp(ps ProcessServer) (psBeat, bool) {
	s.mu.Lock()
	b := s.psBeats[ps.Name]
	since := b.At
	for _, t := range []time.Time{s.started, ps.RegisteredAt} {
		if t.After(since) {
			since = t
		}
	}
	s.mu.Unlock()
	if ps.Name == SiteProcessServer {
		return b, true
	}
	return b, s.now().Sub(since) <= s.heartbeatTimeout()
}

// ProcessServerViews lists the site's process server and the registered
// ones with their load and health.
func (s *Server) ProcessServerViews() ([]ProcessServerView, error) {
	pss, err := s.Store.ProcessServers()
	if err != nil {
		return nil, err
	}
	items, err := s.Store.Items()
	if err != nil {
		return nil, err
	}
	all := []ProcessServer{{Name: SiteProcessServer, URL: s.DataURL}}
	for _, ps := range pss {
		if !ps.Pending { // allowed, not registered yet: not a process server yet
			all = append(all, ps)
		}
	}
	churn := s.itemChurn()
	views := make([]ProcessServerView, 0, len(all))
	for _, ps := range all {
		b, up := s.psUp(ps)
		v := ProcessServerView{Name: ps.Name, URL: ps.URL, Health: Healthy, SpoolBytes: b.Spool, SpoolQuota: b.Quota}
		if !b.At.IsZero() {
			t := b.At.UTC()
			v.LastHeartbeat = &t
		}
		for _, it := range items {
			if it.ProcessServer == ps.URL {
				v.Items++
				v.ChurnBps += churn[it.Key()]
			}
		}
		if !up {
			v.Health = Critical
			v.Reason = s.psDownReason(ps.Name, b)
		}
		views = append(views, v)
	}
	return views, nil
}

func (s *Server) psDownReason(name string, b psBeat) string {
	if b.At.IsZero() {
		return fmt.Sprintf("no heartbeat from process server %s since the configuration server started", name)
	}
	return fmt.Sprintf("no heartbeat from process server %s for %v (last at %s)", name,
		s.now().Sub(b.At).Round(time.Second), b.At.UTC().Format(time.RFC3339))
}

// leastLoaded picks the process server for a new or moved item: of those
// up, the one whose items received the fewest bytes per second recently,
// then the one with the fewest items, then by name.
func (s *Server) leastLoaded(views []ProcessServerView, exclude string) (ProcessServerView, bool) {
	var up []ProcessServerView
	for _, v := range views {
		if v.Health != Critical && v.URL != exclude {
			up = append(up, v)
		}
	}
	if len(up) == 0 {
		return ProcessServerView{}, false
	}
	slices.SortFunc(up, func(a, b ProcessServerView) int {
		switch {
		case a.ChurnBps != b.ChurnBps:
			if a.ChurnBps < b.ChurnBps {
				return -1
			}
			return 1
		case a.Items != b.Items:
			return a.Items - b.Items
		}
		return strings.Compare(a.Name, b.Name)
	})
	return up[0], true
}

// assign picks the process server URL of a new item.
func (s *Server) assign() (string, error) {
	views, err := s.ProcessServerViews()
	if err != nil {
		return "", err
	}
	if v, ok := s.leastLoaded(views, ""); ok {
		return v.URL, nil
	}
	return s.DataURL, nil
}

// reassign moves the items of process servers that are down to the least
// loaded one that is up, one at a time (each move changes the loads).
// The replicas stay on the shared target; the new process server takes
// each from the state it has, and the agent resends or resyncs what it
// lacks, so no recovery point is lost.
// gone, if not nil, is a process server just removed: its items move too.
func (s *Server) reassign(gone *ProcessServer) error {
	items, err := s.Store.Items()
	if err != nil {
		return err
	}
	for _, it := range items {
		views, err := s.ProcessServerViews()
		if err != nil {
			return err
		}
		var from *ProcessServerView
		for i := range views {
			if views[i].URL == it.ProcessServer && views[i].Health == Critical {
				from = &views[i]
			}
		}
		if from == nil && gone != nil && gone.URL == it.ProcessServer {
			from = &ProcessServerView{Name: gone.Name, URL: gone.URL, Reason: "process server " + gone.Name + " was removed"}
		}
		if from == nil {
			continue
		}
		to, ok := s.leastLoaded(views, from.URL)
		if !ok {
			continue
		}
		if _, err := s.Store.UpdateItem(it.Key(), func(x *Item) error { x.ProcessServer = to.URL; return nil }); err != nil {
			return err
		}
		msg := fmt.Sprintf("%s moved from process server %s to %s: %s", it.Key(), from.Name, to.Name, from.Reason)
		s.log().Warn("item moved to another process server", "item", it.Key(), "from", from.Name, "to", to.Name, "reason", from.Reason)
		if _, err := s.Store.Event(CodeItemMoved, it.Key(), msg, s.now()); err != nil {
			return err
		}
	}
	return nil
}

// itemChurn is each item's recent bytes per second, from the newest
// heartbeat that reports it: an item keeps its load when it moves to
// another process server, before that one has measured it, so moving
// several items does not pile them all onto one.
func (s *Server) itemChurn() map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, at := map[string]float64{}, map[string]time.Time{}
	for _, b := range s.psBeats {
		for key, c := range b.Churn {
			if b.At.After(at[key]) {
				out[key], at[key] = c, b.At
			}
		}
	}
	return out
}
